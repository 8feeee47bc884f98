// The NBD server side (src/nbd) over a real Unix socket: a raw-protocol client written here sends
// exact bytes and reads exact replies (handshake, option haggling, transmission, protocol errors),
// then libnbd's own tools (nbdinfo, nbdcopy) talk to the same server as real peers.
import { execFile, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_CONNECTION_BUDGET,
  NBD_ERRNO,
  NBD_INFO,
  NBD_MAX_PAYLOAD,
  NBD_OPT,
  NBD_REP,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_TFLAG,
  NbdIoError,
  nbdSocket,
  parseInfoRequest,
  serveNbdConnection,
  type NbdExport,
} from '../../src/index.js';
import { PassThrough } from 'node:stream';
import { prng, randomBytes, tempDir } from './helpers.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const DISK_SIZE = MiB + 3 * 4096 + 512; // not a multiple of the preferred block size
const RO_SIZE = 256 * KiB;
const BIG_SIZE = 2 ** 40; // virtual: only its bounds are exercised

// ---------------------------------------------------------------------------------------------
// In-memory exports

type Gate = Promise<void>;

/** A Buffer-backed export that records what the connection asked of it. */
class MemExport implements NbdExport {
  readonly data: Buffer;
  flushes = 0;
  writesDone = 0;
  /** writesDone at the moment each flush() was called. */
  readonly writesDoneAtFlush: number[] = [];
  readonly writes: Array<{ offset: number; length: number; fua: boolean }> = [];
  readonly zeros: Array<{ offset: number; length: number; fua: boolean; trim: boolean }> = [];
  readonly reads: Array<{ offset: number; length: number }> = [];
  /** Thrown (or rejected with) by the next call, then cleared. */
  failNext: { err: unknown; async: boolean } | null = null;
  /** Calls at these offsets wait for the gate. */
  readonly gates = new Map<number, Gate>();

  constructor(
    readonly name: string,
    readonly size: number,
    readonly readOnly: boolean,
    readonly preferredBlockSize = 4096,
    virtual = false,
  ) {
    this.data = Buffer.alloc(virtual ? 0 : size);
  }

  protected before(offset: number): Gate | null {
    const f = this.failNext;
    if (f) {
      this.failNext = null;
      if (!f.async) throw f.err;
      return Promise.reject(f.err);
    }
    return this.gates.get(offset) ?? null;
  }

  private copyOut(offset: number, length: number): Buffer {
    const b = Buffer.alloc(length);
    if (offset < this.data.length) this.data.copy(b, 0, offset, Math.min(offset + length, this.data.length));
    return b;
  }

  read(offset: number, length: number): Promise<Buffer> | Buffer {
    this.reads.push({ offset, length });
    const g = this.before(offset);
    return g ? g.then(() => this.copyOut(offset, length)) : this.copyOut(offset, length);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> | void {
    this.writes.push({ offset, length: data.length, fua });
    const land = (): void => {
      data.copy(this.data, offset);
      this.writesDone++;
    };
    const g = this.before(offset);
    return g ? g.then(land) : land();
  }

  zero(offset: number, length: number, fua: boolean, trim: boolean): Promise<void> | void {
    this.zeros.push({ offset, length, fua, trim });
    const land = (): void => {
      const end = this.data.length; // a virtual export holds no bytes
      this.data.fill(0, Math.min(offset, end), Math.min(offset + length, end));
    };
    const g = this.before(offset);
    return g ? g.then(land) : land();
  }

  async flush(): Promise<void> {
    this.writesDoneAtFlush.push(this.writesDone);
    this.flushes++;
    const g = this.before(-1);
    if (g) await g;
  }
}

/** The same with the optional readInto (the connection's reused-buffer read path). */
class MemExportInto extends MemExport {
  readonly readIntos: Array<{ offset: number; length: number }> = [];

  readInto(offset: number, length: number, into: Buffer, at: number): Promise<void> | void {
    this.readIntos.push({ offset, length });
    const land = (): void => {
      into.fill(0, at, at + length);
      if (offset < this.data.length) this.data.copy(into, at, offset, Math.min(offset + length, this.data.length));
    };
    const g = this.before(offset);
    return g ? g.then(land) : land();
  }
}

/** Byte equality without a deep diff of large buffers (slow): length, then the first differing offset. */
function expectBytes(got: Buffer, want: Buffer): void {
  expect(got.length).toBe(want.length);
  let at = -1;
  if (!got.equals(want)) for (at = 0; got[at] === want[at]; at++);
  expect(at, 'first differing byte').toBe(-1);
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

// ---------------------------------------------------------------------------------------------
// A raw NBD client: exact bytes out, exact bytes in.

class RawConn {
  private chunks: Buffer[] = [];
  private length = 0;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.length += c.length;
      this.wake();
    });
    this.closed = new Promise((resolve) => {
      sock.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      });
    });
    sock.on('error', () => undefined); // EPIPE/ECONNRESET after the server hangs up: seen as 'close'
  }

  static open(sockPath: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(sockPath);
      s.once('connect', () => resolve(new RawConn(s)));
      s.once('error', reject);
    });
  }

  get isClosed(): boolean {
    return this.ended;
  }

  private wake(): void {
    const w = this.want;
    if (!w) return;
    if (this.length >= w.n) {
      this.want = null;
      w.resolve(this.take(w.n));
    } else if (this.ended) {
      this.want = null;
      w.reject(new Error(`connection closed with ${this.length} of ${w.n} bytes`));
    }
  }

  private take(n: number): Buffer {
    const all = Buffer.concat(this.chunks);
    this.chunks = n < all.length ? [all.subarray(n)] : [];
    this.length -= n;
    return all.subarray(0, n);
  }

  read(n: number): Promise<Buffer> {
    if (this.want) throw new Error('one read at a time');
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.length >= n) return Promise.resolve(this.take(n));
    if (this.ended) return Promise.reject(new Error(`connection closed with ${this.length} of ${n} bytes`));
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
    });
  }

  write(b: Buffer): void {
    this.sock.write(b);
  }

  /** Wait until the server closes; returns every byte it sent that was not read. */
  async leftoverAtClose(): Promise<Buffer> {
    await this.closed;
    return this.take(this.length);
  }

  destroy(): void {
    this.sock.destroy();
  }
}

interface OptReply {
  option: number;
  type: number;
  data: Buffer;
}

interface SimpleReply {
  error: number;
  handle: bigint;
  data: Buffer;
}

const GREETING_BYTES = 18;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function optBytes(option: number, data: Buffer = Buffer.alloc(0), len = data.length): Buffer {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(len, 12);
  return Buffer.concat([h, data]);
}

/** NBD_OPT_INFO/GO payload: name length, name, number of info requests, requests. */
function infoPayload(name: string, requests: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const r = Buffer.alloc(2 + 2 * requests.length);
  r.writeUInt16BE(requests.length, 0);
  requests.forEach((q, k) => r.writeUInt16BE(q, 2 + 2 * k));
  return Buffer.concat([u32(n.length), n, r]);
}

async function readOptReply(c: RawConn): Promise<OptReply> {
  const h = await c.read(20);
  expect(h.readBigUInt64BE(0)).toBe(NBD_REP_MAGIC);
  const option = h.readUInt32BE(8);
  const type = h.readUInt32BE(12);
  const data = await c.read(h.readUInt32BE(16));
  return { option, type, data };
}

/** Option replies up to and including the first ACK or error. */
async function readOptReplies(c: RawConn): Promise<OptReply[]> {
  const out: OptReply[] = [];
  for (;;) {
    const r = await readOptReply(c);
    out.push(r);
    if (r.type === NBD_REP.ACK || r.type >= 0x80000000) return out;
  }
}

/** Connect and read the greeting; send the client flags (FIXED_NEWSTYLE|NO_ZEROES unless told). */
async function handshake(clientFlags = 3, at = sockPath): Promise<{ c: RawConn; greeting: Buffer }> {
  const c = await RawConn.open(at);
  conns.push(c);
  const greeting = await c.read(GREETING_BYTES);
  c.write(u32(clientFlags));
  return { c, greeting };
}

interface ExportInfo {
  size: number;
  flags: number;
  minBlock?: number;
  preferredBlock?: number;
  maxBlock?: number;
  name?: string;
}

function parseInfos(replies: OptReply[]): ExportInfo {
  const info: Partial<ExportInfo> = {};
  for (const r of replies) {
    if (r.type !== NBD_REP.INFO) continue;
    const kind = r.data.readUInt16BE(0);
    if (kind === NBD_INFO.EXPORT) {
      expect(r.data.length).toBe(12);
      info.size = Number(r.data.readBigUInt64BE(2));
      info.flags = r.data.readUInt16BE(10);
    } else if (kind === NBD_INFO.BLOCK_SIZE) {
      expect(r.data.length).toBe(14);
      info.minBlock = r.data.readUInt32BE(2);
      info.preferredBlock = r.data.readUInt32BE(6);
      info.maxBlock = r.data.readUInt32BE(10);
    } else if (kind === NBD_INFO.NAME) {
      info.name = r.data.subarray(2).toString('utf8');
    }
  }
  return info as ExportInfo;
}

/** A connection in the transmission phase of `name` (via NBD_OPT_GO), to the server under test unless told. */
async function openExport(name: string, at = sockPath): Promise<Client> {
  const { c } = await handshake(3, at);
  c.write(optBytes(NBD_OPT.GO, infoPayload(name)));
  const replies = await readOptReplies(c);
  expect(replies.at(-1)!.type).toBe(NBD_REP.ACK);
  return new Client(c);
}

/** Transmission-phase requests over a RawConn. */
class Client {
  private nextHandle = 0x1122334455660000n;

  constructor(readonly c: RawConn) {}

  send(type: number, offset: bigint | number, length: number, opts: { flags?: number; data?: Buffer; handle?: bigint; magic?: number } = {}): bigint {
    const handle = opts.handle ?? this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(opts.magic ?? NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.c.write(opts.data ? Buffer.concat([h, opts.data]) : h);
    return handle;
  }

  /** One simple reply; `dataLength(handle)` says how many data bytes follow a successful reply. */
  async reply(dataLength: (handle: bigint) => number = () => 0): Promise<SimpleReply> {
    const h = await this.c.read(16);
    expect(h.readUInt32BE(0)).toBe(NBD_SIMPLE_REPLY_MAGIC);
    const error = h.readUInt32BE(4);
    const handle = h.readBigUInt64BE(8);
    const data = error === 0 ? await this.c.read(dataLength(handle)) : Buffer.alloc(0);
    return { error, handle, data };
  }

  async read(offset: bigint | number, length: number): Promise<SimpleReply> {
    const handle = this.send(NBD_CMD.READ, offset, length);
    const r = await this.reply(() => length);
    expect(r.handle).toBe(handle);
    return r;
  }

  async cmd(type: number, offset: bigint | number, length: number, opts: { flags?: number; data?: Buffer } = {}): Promise<SimpleReply> {
    const handle = this.send(type, offset, length, opts);
    const r = await this.reply();
    expect(r.handle).toBe(handle);
    return r;
  }

  write(offset: bigint | number, data: Buffer, flags = 0): Promise<SimpleReply> {
    return this.cmd(NBD_CMD.WRITE, offset, data.length, { data, flags });
  }
}

// ---------------------------------------------------------------------------------------------
// The server under test

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
let sockPath = '';
let server: net.Server;
let exportsByName = new Map<string, MemExport>();
let disk: MemExportInto;
let ro: MemExport;
let big: MemExport;
const ioErrors: Array<{ err: unknown; errno: number }> = [];
/** onBackpressure calls of every connection, in order; a waiter for the next one. */
const pressure: boolean[] = [];
let onPressure: ((waiting: boolean) => void) | null = null;
const serves: Array<Promise<void>> = [];
let onNextServe: ((p: Promise<void>) => void) | null = null;
let conns: RawConn[] = [];
/** Per accepted connection: did nbdSocket re-create it (slab reads)? */
const adopted: boolean[] = [];

/** The serveNbdConnection promise of the next connection accepted (boxed: awaiting it must not wait for the connection's end). */
function nextServe(): Promise<{ done: Promise<void> }> {
  return new Promise((resolve) => {
    onNextServe = (done) => resolve({ done });
  });
}

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('carryon-nbd-'));
  sockPath = path.join(dir, 'nbd.sock');
  server = net.createServer((accepted) => {
    // As carryon serve does: the connection re-created to read into reused slabs.
    const sock = nbdSocket(accepted);
    adopted.push(sock !== accepted);
    const p = serveNbdConnection(sock, {
      lookup: (name) => (name === '' ? disk : exportsByName.get(name) ?? null),
      list: () => [...exportsByName.keys()],
      onError: (err, errno) => void ioErrors.push({ err, errno }),
      onBackpressure: (waiting) => {
        pressure.push(waiting);
        onPressure?.(waiting);
      },
    });
    serves.push(p);
    const cb = onNextServe;
    onNextServe = null;
    cb?.(p);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(sockPath, () => resolve());
  });
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  // serveNbdConnection never rejects: protocol violations and hang-ups end it quietly.
  const settled = await Promise.allSettled(serves);
  expect(settled.filter((s) => s.status === 'rejected')).toEqual([]);
  await cleanup();
});

beforeEach(() => {
  const rng = prng(7);
  disk = new MemExportInto('disk', DISK_SIZE, false, 4096);
  ro = new MemExport('ro', RO_SIZE, true, 65536);
  randomBytes(rng, RO_SIZE).copy(ro.data);
  big = new MemExport('big', BIG_SIZE, false, 4096, true);
  exportsByName = new Map<string, MemExport>([
    ['disk', disk],
    ['ro', ro],
    ['big', big],
  ]);
  ioErrors.length = 0;
  pressure.length = 0;
  onPressure = null;
});

afterEach(() => {
  for (const c of conns) c.destroy();
  conns = [];
});

const WRITABLE_FLAGS =
  NBD_TFLAG.HAS_FLAGS | NBD_TFLAG.SEND_FLUSH | NBD_TFLAG.SEND_FUA | NBD_TFLAG.SEND_TRIM | NBD_TFLAG.SEND_WRITE_ZEROES | NBD_TFLAG.CAN_MULTI_CONN;

// ---------------------------------------------------------------------------------------------

describe('nbd handshake and options', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES', async () => {
    const { greeting } = await handshake();
    expect(greeting.subarray(0, 8).toString('latin1')).toBe('NBDMAGIC');
    expect(greeting.subarray(8, 16).toString('latin1')).toBe('IHAVEOPT');
    expect(greeting.readUInt16BE(16)).toBe(1 | 2);
    expect(greeting.toString('hex')).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
  });

  it('NBD_OPT_GO on a named export: INFO_EXPORT (size, flags), INFO_BLOCK_SIZE, ACK, then transmission', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.GO, infoPayload('disk')));
    const replies = await readOptReplies(c);
    for (const r of replies) expect(r.option).toBe(NBD_OPT.GO);
    expect(replies.map((r) => r.type)).toEqual([NBD_REP.INFO, NBD_REP.INFO, NBD_REP.ACK]);
    expect(replies.at(-1)!.data.length).toBe(0);
    const info = parseInfos(replies);
    expect(info.size).toBe(DISK_SIZE);
    expect(info.flags & WRITABLE_FLAGS).toBe(WRITABLE_FLAGS);
    expect(info.flags & NBD_TFLAG.READ_ONLY).toBe(0);
    expect(info.minBlock).toBe(1);
    expect(info.preferredBlock).toBe(4096);
    expect(info.maxBlock).toBe(NBD_MAX_PAYLOAD);
    // In transmission now: a request gets a simple reply.
    const cl = new Client(c);
    const r = await cl.read(0, 16);
    expect(r.error).toBe(0);
    expect(r.data).toEqual(Buffer.alloc(16));
  });

  it("NBD_OPT_GO on '' reaches the default export", async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.GO, infoPayload('')));
    const replies = await readOptReplies(c);
    expect(replies.at(-1)!.type).toBe(NBD_REP.ACK);
    expect(parseInfos(replies).size).toBe(DISK_SIZE);
    const cl = new Client(c);
    const data = Buffer.from('default export bytes');
    expect((await cl.write(100, data)).error).toBe(0);
    expect(disk.data.subarray(100, 100 + data.length)).toEqual(data);
  });

  it('NBD_OPT_GO on the read-only export advertises READ_ONLY, and no TRIM or WRITE_ZEROES', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.GO, infoPayload('ro')));
    const replies = await readOptReplies(c);
    expect(replies.at(-1)!.type).toBe(NBD_REP.ACK);
    const info = parseInfos(replies);
    expect(info.size).toBe(RO_SIZE);
    expect(info.preferredBlock).toBe(65536);
    const want = NBD_TFLAG.HAS_FLAGS | NBD_TFLAG.READ_ONLY | NBD_TFLAG.SEND_FLUSH | NBD_TFLAG.SEND_FUA | NBD_TFLAG.CAN_MULTI_CONN;
    expect(info.flags & want).toBe(want);
    expect(info.flags & (NBD_TFLAG.SEND_TRIM | NBD_TFLAG.SEND_WRITE_ZEROES)).toBe(0);
  });

  it('NBD_OPT_GO answers an NBD_INFO_NAME request with the name', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.GO, infoPayload('', [NBD_INFO.NAME, NBD_INFO.BLOCK_SIZE])));
    const replies = await readOptReplies(c);
    expect(replies.at(-1)!.type).toBe(NBD_REP.ACK);
    expect(parseInfos(replies).name).toBe('disk');
  });

  it('NBD_OPT_INFO does not enter transmission: more options can follow', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.INFO, infoPayload('ro')));
    const info = await readOptReplies(c);
    expect(info.every((r) => r.option === NBD_OPT.INFO)).toBe(true);
    expect(info.at(-1)!.type).toBe(NBD_REP.ACK);
    expect(parseInfos(info).size).toBe(RO_SIZE);
    c.write(optBytes(NBD_OPT.INFO, infoPayload('disk')));
    expect(parseInfos(await readOptReplies(c)).size).toBe(DISK_SIZE);
    // Still haggling: LIST is answered as an option, not taken for a request.
    c.write(optBytes(NBD_OPT.LIST));
    const list = await readOptReplies(c);
    expect(list.at(-1)!.type).toBe(NBD_REP.ACK);
    c.write(optBytes(NBD_OPT.GO, infoPayload('ro')));
    expect((await readOptReplies(c)).at(-1)!.type).toBe(NBD_REP.ACK);
    const r = await new Client(c).read(0, 64);
    expect(r.data).toEqual(ro.data.subarray(0, 64));
  });

  it('an unknown export name gets NBD_REP_ERR_UNKNOWN and the connection stays usable', async () => {
    const { c } = await handshake();
    for (const opt of [NBD_OPT.GO, NBD_OPT.INFO]) {
      c.write(optBytes(opt, infoPayload('no-such-disk')));
      const r = await readOptReply(c);
      expect(r.option).toBe(opt);
      expect(r.type).toBe(NBD_REP.ERR_UNKNOWN);
      expect(r.data.toString('utf8')).toContain('no-such-disk');
    }
    c.write(optBytes(NBD_OPT.GO, infoPayload('disk')));
    expect((await readOptReplies(c)).at(-1)!.type).toBe(NBD_REP.ACK);
    expect((await new Client(c).read(0, 8)).error).toBe(0);
  });

  it('a malformed INFO/GO payload gets NBD_REP_ERR_INVALID and the connection stays usable', async () => {
    const good = infoPayload('disk', [NBD_INFO.NAME]);
    const bad: Buffer[] = [
      Buffer.alloc(0), // nothing
      Buffer.alloc(5), // shorter than name length + request count
      Buffer.concat([u32(100), Buffer.from('disk'), Buffer.alloc(2)]), // name longer than the payload
      Buffer.concat([good, Buffer.alloc(1)]), // a stray byte after the requests
      good.subarray(0, good.length - 1), // the last request cut short
      Buffer.concat([u32(0), Buffer.from([0, 3])]), // claims 3 requests, has none
    ];
    const { c } = await handshake();
    for (const p of bad) {
      expect(parseInfoRequest(p)).toBeNull();
      for (const opt of [NBD_OPT.INFO, NBD_OPT.GO]) {
        c.write(optBytes(opt, p));
        const r = await readOptReply(c);
        expect(r.option).toBe(opt);
        expect(r.type).toBe(NBD_REP.ERR_INVALID);
      }
    }
    expect(parseInfoRequest(good)).toEqual({ name: 'disk', requests: [NBD_INFO.NAME] });
    c.write(optBytes(NBD_OPT.GO, good));
    expect((await readOptReplies(c)).at(-1)!.type).toBe(NBD_REP.ACK);
  });

  it('unsupported options (STARTTLS, STRUCTURED_REPLY, meta contexts, unknown) get NBD_REP_ERR_UNSUP', async () => {
    const { c } = await handshake();
    for (const opt of [NBD_OPT.STARTTLS, NBD_OPT.STRUCTURED_REPLY, 9, 10, 0, 0x7fffffff]) {
      c.write(optBytes(opt, opt === 10 ? Buffer.from('some payload') : Buffer.alloc(0)));
      const r = await readOptReply(c);
      expect(r.option).toBe(opt);
      expect(r.type).toBe(NBD_REP.ERR_UNSUP);
    }
    c.write(optBytes(NBD_OPT.GO, infoPayload('disk')));
    expect((await readOptReplies(c)).at(-1)!.type).toBe(NBD_REP.ACK);
  });

  it('NBD_OPT_LIST names every export, then ACK; with a payload it is ERR_INVALID', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.LIST));
    const replies = await readOptReplies(c);
    expect(replies.at(-1)!.type).toBe(NBD_REP.ACK);
    const names = replies.slice(0, -1).map((r) => {
      expect(r.option).toBe(NBD_OPT.LIST);
      expect(r.type).toBe(NBD_REP.SERVER);
      const n = r.data.readUInt32BE(0);
      expect(r.data.length).toBe(4 + n);
      return r.data.subarray(4).toString('utf8');
    });
    expect(names).toEqual(['disk', 'ro', 'big']);
    c.write(optBytes(NBD_OPT.LIST, Buffer.from('x')));
    expect((await readOptReply(c)).type).toBe(NBD_REP.ERR_INVALID);
  });

  it('NBD_OPT_ABORT is ACKed and the server closes the connection', async () => {
    const served = nextServe();
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.ABORT));
    const r = await readOptReply(c);
    expect(r.option).toBe(NBD_OPT.ABORT);
    expect(r.type).toBe(NBD_REP.ACK);
    expect((await c.leftoverAtClose()).length).toBe(0);
    await expect((await served).done).resolves.toBeUndefined();
  });

  for (const noZeroes of [true, false]) {
    it(`NBD_OPT_EXPORT_NAME ${noZeroes ? 'with' : 'without'} NO_ZEROES: ${noZeroes ? 10 : 134} bytes of size and flags, then transmission`, async () => {
      const { c } = await handshake(noZeroes ? 3 : 1);
      c.write(optBytes(NBD_OPT.EXPORT_NAME, Buffer.from('ro')));
      const r = await c.read(noZeroes ? 10 : 134);
      expect(Number(r.readBigUInt64BE(0))).toBe(RO_SIZE);
      const flags = r.readUInt16BE(8);
      expect(flags & (NBD_TFLAG.HAS_FLAGS | NBD_TFLAG.READ_ONLY)).toBe(NBD_TFLAG.HAS_FLAGS | NBD_TFLAG.READ_ONLY);
      if (!noZeroes) expect(r.subarray(10)).toEqual(Buffer.alloc(124));
      // The very next bytes are a simple reply: the padding was exactly as long as it should be.
      const rd = await new Client(c).read(1000, 100);
      expect(rd.error).toBe(0);
      expect(rd.data).toEqual(ro.data.subarray(1000, 1100));
    });
  }

  it('NBD_OPT_EXPORT_NAME for the default export and for an unknown one (which closes: that option has no error reply)', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.EXPORT_NAME));
    const r = await c.read(10);
    expect(Number(r.readBigUInt64BE(0))).toBe(DISK_SIZE);
    expect(r.readUInt16BE(8) & WRITABLE_FLAGS).toBe(WRITABLE_FLAGS);

    const { c: c2 } = await handshake();
    c2.write(optBytes(NBD_OPT.EXPORT_NAME, Buffer.from('nope')));
    expect((await c2.leftoverAtClose()).length).toBe(0);
  });

  it('unknown client flags close the connection before any option', async () => {
    const served = nextServe();
    const { c } = await handshake(1 | 2 | 4);
    c.write(optBytes(NBD_OPT.LIST)); // must not be answered
    expect((await c.leftoverAtClose()).length).toBe(0);
    await expect((await served).done).resolves.toBeUndefined();
  });

  it('an option longer than 64 KiB closes the connection; the listener still accepts', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.GO, Buffer.alloc(0), 64 * KiB + 1));
    expect((await c.leftoverAtClose()).length).toBe(0);
    const cl = await openExport('disk');
    expect((await cl.read(0, 4)).error).toBe(0);
  });

  it('an option of exactly 64 KiB is read whole and answered', async () => {
    const { c } = await handshake();
    c.write(optBytes(NBD_OPT.STRUCTURED_REPLY, Buffer.alloc(64 * KiB, 7)));
    expect((await readOptReply(c)).type).toBe(NBD_REP.ERR_UNSUP);
    c.write(optBytes(NBD_OPT.INFO, Buffer.alloc(64 * KiB, 0)));
    expect((await readOptReply(c)).type).toBe(NBD_REP.ERR_INVALID);
  });

  it('bad option magic closes the connection', async () => {
    const { c } = await handshake();
    const bad = optBytes(NBD_OPT.LIST);
    bad.write('IHAVEOPX', 0, 'latin1');
    c.write(bad);
    expect((await c.leftoverAtClose()).length).toBe(0);
  });

  it('a client hanging up mid-handshake or mid-option ends the connection quietly', async () => {
    for (const bytes of [Buffer.alloc(0), Buffer.from([0, 0]), Buffer.concat([u32(3), optBytes(NBD_OPT.GO, Buffer.alloc(0), 20), Buffer.alloc(5)])]) {
      const served = nextServe();
      const c = await RawConn.open(sockPath);
      await c.read(GREETING_BYTES);
      c.write(bytes);
      c.sock.end();
      await c.closed;
      await expect((await served).done).resolves.toBeUndefined();
    }
  });
});

describe('nbd transmission', () => {
  it('write then read back returns the bytes written, across block boundaries and at the short end', async () => {
    const cl = await openExport('disk');
    const rng = prng(11);
    for (const [off, len] of [
      [0, 4096],
      [4000, 10_000],
      [65536 - 7, 65536 + 14],
      [DISK_SIZE - 513, 513],
      [DISK_SIZE - 1, 1],
    ] as const) {
      const data = randomBytes(rng, len);
      const w = await cl.write(off, data);
      expect(w.error).toBe(0);
      expect(w.data.length).toBe(0);
      const r = await cl.read(off, len);
      expect(r.error).toBe(0);
      expectBytes(r.data, data);
      expectBytes(disk.data.subarray(off, off + len), data);
    }
    expect(disk.writes.every((w) => !w.fua)).toBe(true);
    expect(disk.readIntos.length).toBeGreaterThan(0); // the export's readInto path served them
  });

  it('reads through an export without readInto (read path), and zero-length reads and writes', async () => {
    const cl = await openExport('ro');
    const r = await cl.read(RO_SIZE - 300, 300);
    expect(r.data).toEqual(ro.data.subarray(RO_SIZE - 300));
    expect(ro.reads).toContainEqual({ offset: RO_SIZE - 300, length: 300 });
    const z = await cl.read(RO_SIZE, 0);
    expect(z.error).toBe(0);
    expect(z.data.length).toBe(0);

    const dl = await openExport('disk');
    expect((await dl.read(DISK_SIZE, 0)).error).toBe(0);
    expect((await dl.write(DISK_SIZE, Buffer.alloc(0))).error).toBe(0);
    expect((await dl.read(5, 3)).data).toEqual(Buffer.alloc(3));
  });

  it('FUA reaches the export with the write', async () => {
    const cl = await openExport('disk');
    const data = Buffer.alloc(8192, 0x5a);
    expect((await cl.write(4096, data, NBD_CMD_FLAG.FUA)).error).toBe(0);
    expect((await cl.write(0, data.subarray(0, 10))).error).toBe(0);
    expect(disk.writes).toEqual([
      { offset: 4096, length: 8192, fua: true },
      { offset: 0, length: 10, fua: false },
    ]);
  });

  it('FLUSH calls the export flush after writes already in flight have finished', async () => {
    const cl = await openExport('disk');
    const gate = deferred();
    disk.gates.set(8192, gate.promise);
    const w = cl.send(NBD_CMD.WRITE, 8192, 4, { data: Buffer.from('abcd') });
    const f = cl.send(NBD_CMD.FLUSH, 0, 0);
    // A later read is answered while the write is held: the server has taken the FLUSH by then.
    const r = cl.send(NBD_CMD.READ, 0, 4);
    const first = await cl.reply((h) => (h === r ? 4 : 0));
    expect(first.handle).toBe(r);
    expect(disk.writesDone).toBe(0);
    gate.resolve();
    const rest = [await cl.reply(), await cl.reply()];
    expect(new Set(rest.map((x) => x.handle))).toEqual(new Set([w, f]));
    expect(rest.every((x) => x.error === 0)).toBe(true);
    expect(disk.flushes).toBe(1);
    expect(disk.writesDoneAtFlush).toEqual([1]); // the held write had landed before flush() ran
  });

  it('WRITE_ZEROES and TRIM zero their range (and say which they were); FUA is passed on', async () => {
    const cl = await openExport('disk');
    disk.data.fill(0xee);
    expect((await cl.cmd(NBD_CMD.WRITE_ZEROES, 1000, 5000)).error).toBe(0);
    expect((await cl.cmd(NBD_CMD.TRIM, 70_000, 3000, { flags: NBD_CMD_FLAG.FUA })).error).toBe(0);
    expect((await cl.cmd(NBD_CMD.WRITE_ZEROES, 0, 0)).error).toBe(0); // zero length: no call
    expect(disk.zeros).toEqual([
      { offset: 1000, length: 5000, fua: false, trim: false },
      { offset: 70_000, length: 3000, fua: true, trim: true },
    ]);
    const a = await cl.read(0, 8000);
    expect(a.data.subarray(0, 1000).every((b) => b === 0xee)).toBe(true);
    expect(a.data.subarray(1000, 6000).every((b) => b === 0)).toBe(true);
    expect(a.data.subarray(6000).every((b) => b === 0xee)).toBe(true);
    const b = await cl.read(69_999, 3002);
    expect(b.data[0]).toBe(0xee);
    expect(b.data.subarray(1, 3001).every((x) => x === 0)).toBe(true);
    expect(b.data[3001]).toBe(0xee);
  });

  it('CACHE is answered without data', async () => {
    const cl = await openExport('disk');
    const r = await cl.cmd(NBD_CMD.CACHE, 0, 65536);
    expect(r.error).toBe(0);
    expect((await cl.cmd(NBD_CMD.CACHE, DISK_SIZE - 10, 20)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.read(0, 4)).error).toBe(0); // still in step
  });

  it('out-of-range requests: read/trim/cache → EINVAL, write/zero → ENOSPC, with the connection still in step', async () => {
    const cl = await openExport('disk');
    expect((await cl.read(DISK_SIZE - 10, 11)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.read(DISK_SIZE + 1, 0)).error).toBe(NBD_ERRNO.EINVAL);
    // offset + length past 2^64 must not wrap into range
    expect((await cl.read(0xffffffffffffff00n, 0x200)).error).toBe(NBD_ERRNO.EINVAL);
    const w = await cl.write(DISK_SIZE - 3, Buffer.from('four'));
    expect(w.error).toBe(NBD_ERRNO.ENOSPC);
    expect((await cl.cmd(NBD_CMD.WRITE_ZEROES, DISK_SIZE, 1)).error).toBe(NBD_ERRNO.ENOSPC);
    // The spec's error values: ENOSPC for writes (and write zeroes) past the end, EINVAL for reads and trims.
    expect((await cl.cmd(NBD_CMD.TRIM, DISK_SIZE - 1, 2)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.cmd(NBD_CMD.TRIM, 0xfffffffffffffe00n, 0x400)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.cmd(NBD_CMD.WRITE_ZEROES, 0xfffffffffffffe00n, 0x400)).error).toBe(NBD_ERRNO.ENOSPC);
    expect((await cl.write(0x7ffffffffffffffen, Buffer.from('wrap'))).error).toBe(NBD_ERRNO.ENOSPC);
    expect(disk.writes).toEqual([]);
    expect(disk.zeros).toEqual([]);
    // The refused write's payload was consumed: the next request is parsed correctly.
    const ok = await cl.write(0, Buffer.from('ok'));
    expect(ok.error).toBe(0);
    expect(disk.data.subarray(0, 2).toString()).toBe('ok');
  });

  it('writes, zeroes and trims on a read-only export → EPERM; reads still work', async () => {
    const cl = await openExport('ro');
    const before = Buffer.from(ro.data);
    expect((await cl.write(0, Buffer.alloc(512, 1))).error).toBe(NBD_ERRNO.EPERM);
    expect((await cl.cmd(NBD_CMD.WRITE_ZEROES, 0, 512)).error).toBe(NBD_ERRNO.EPERM);
    expect((await cl.cmd(NBD_CMD.TRIM, 0, 512)).error).toBe(NBD_ERRNO.EPERM);
    expect(ro.writes).toEqual([]);
    expect(ro.zeros).toEqual([]);
    expectBytes(ro.data, before);
    const r = await cl.read(0, 512);
    expect(r.data).toEqual(before.subarray(0, 512));
  });

  it('an unknown command → EINVAL, and the connection keeps working', async () => {
    const cl = await openExport('disk');
    for (const type of [7, 8, 99, 0xffff]) {
      const r = await cl.cmd(type, 0, 0);
      expect(r.error).toBe(NBD_ERRNO.EINVAL);
    }
    expect((await cl.write(0, Buffer.from('x'))).error).toBe(0);
  });

  it('EINVAL for a read above the maximum payload (EOVERFLOW is only for DF or payload-less commands); a write above it closes the connection', async () => {
    const cl = await openExport('big');
    expectBytes((await cl.read(BIG_SIZE - 4096, 4096)).data, Buffer.alloc(4096));
    expect((await cl.read(0, NBD_MAX_PAYLOAD + 1)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.read(0, 0xffffffff)).error).toBe(NBD_ERRNO.EINVAL);
    expect(big.reads).toEqual([{ offset: BIG_SIZE - 4096, length: 4096 }]);
    expect((await cl.read(0, 16)).error).toBe(0);
    cl.send(NBD_CMD.WRITE, 0, NBD_MAX_PAYLOAD + 1); // payload never sent: the server cannot stay in step
    expect((await cl.c.leftoverAtClose()).length).toBe(0);
    expect(big.writes).toEqual([]);
  });

  it('an export throwing NbdIoError sends its errno; any other failure sends EIO; the connection keeps working', async () => {
    const cl = await openExport('disk');
    const cases: Array<{ err: unknown; async: boolean; errno: number; op: 'read' | 'write' | 'zero' | 'flush' }> = [
      { err: new NbdIoError(NBD_ERRNO.EIO, 'medium error'), async: false, errno: 5, op: 'read' },
      { err: new NbdIoError(NBD_ERRNO.EIO, 'medium error'), async: true, errno: 5, op: 'read' },
      { err: new NbdIoError(NBD_ERRNO.ENOSPC, 'full'), async: true, errno: 28, op: 'write' },
      { err: new NbdIoError(NBD_ERRNO.ENOSPC, 'full'), async: false, errno: 28, op: 'write' },
      { err: new NbdIoError(NBD_ERRNO.EPERM, 'no'), async: false, errno: 1, op: 'zero' },
      { err: new Error('plain'), async: false, errno: 5, op: 'read' },
      { err: new Error('plain'), async: true, errno: 5, op: 'write' },
      { err: 'a string', async: true, errno: 5, op: 'zero' },
      { err: new Error('flush failed'), async: true, errno: 5, op: 'flush' },
    ];
    for (const k of cases) {
      disk.failNext = k.err === undefined ? null : { err: k.err, async: k.async };
      let r: SimpleReply;
      if (k.op === 'read') r = await cl.read(0, 4096);
      else if (k.op === 'write') r = await cl.write(0, Buffer.alloc(10, 1));
      else if (k.op === 'zero') r = await cl.cmd(NBD_CMD.WRITE_ZEROES, 0, 10);
      else r = await cl.cmd(NBD_CMD.FLUSH, 0, 0);
      expect(r.error, `${k.op} ${String(k.err)}`).toBe(k.errno);
      expect(r.data.length).toBe(0);
      expect(disk.failNext).toBeNull();
      // and the next request on the same connection succeeds
      expect((await cl.read(0, 16)).error).toBe(0);
    }
    expect(ioErrors.map((e) => e.errno)).toEqual(cases.map((k) => k.errno));
    expect(ioErrors.map((e) => e.err)).toEqual(cases.map((k) => k.err));
    expect(disk.writesDone).toBe(0);
  });

  it('pipelined requests: replies come as they finish, matched by handle', async () => {
    const cl = await openExport('disk');
    const rng = prng(23);
    const blocks = Array.from({ length: 40 }, (_, i) => randomBytes(rng, 1000 + 37 * i));
    const at = (i: number): number => i * 20_000;
    // A held read at offset 0 is answered last, after everything sent behind it.
    disk.data.write('held', 0);
    const gate = deferred();
    disk.gates.set(0, gate.promise);
    const held = cl.send(NBD_CMD.READ, 0, 4);
    const writes = new Map<bigint, number>();
    blocks.forEach((b, i) => writes.set(cl.send(NBD_CMD.WRITE, at(i) + 8, b.length, { data: b }), i));
    const got = new Map<bigint, SimpleReply>();
    for (let k = 0; k < blocks.length; k++) {
      const r = await cl.reply();
      expect(r.error).toBe(0);
      expect(writes.has(r.handle)).toBe(true);
      got.set(r.handle, r);
    }
    expect(got.size).toBe(blocks.length);
    const reads = new Map<bigint, number>();
    blocks.forEach((b, i) => reads.set(cl.send(NBD_CMD.READ, at(i) + 8, b.length), i));
    gate.resolve();
    const lengths = (h: bigint): number => (h === held ? 4 : blocks[reads.get(h)!]!.length);
    const seen = new Set<bigint>();
    for (let k = 0; k < blocks.length + 1; k++) {
      const r = await cl.reply(lengths);
      expect(r.error).toBe(0);
      expect(seen.has(r.handle)).toBe(false);
      seen.add(r.handle);
      if (r.handle === held) expect(r.data.toString()).toBe('held');
      else expectBytes(r.data, blocks[reads.get(r.handle)!]!);
    }
    expect(seen.has(held)).toBe(true);
  });

  it('more requests in flight than the per-connection limit all get answered', async () => {
    const cl = await openExport('disk');
    const gates = Array.from({ length: 100 }, () => deferred());
    gates.forEach((g, i) => disk.gates.set(i * 512, g.promise));
    const handles = gates.map((_, i) => cl.send(NBD_CMD.WRITE, i * 512, 4, { data: u32(i) }));
    const probe = cl.send(NBD_CMD.READ, DISK_SIZE - 4, 4);
    // Release in reverse order; every write is answered exactly once, then the probe.
    for (const g of [...gates].reverse()) g.resolve();
    const seen = new Set<bigint>();
    for (let k = 0; k < handles.length + 1; k++) {
      const r = await cl.reply((h) => (h === probe ? 4 : 0));
      expect(r.error).toBe(0);
      seen.add(r.handle);
    }
    expect(seen).toEqual(new Set([...handles, probe]));
    for (let i = 0; i < 100; i++) expect(disk.data.readUInt32BE(i * 512)).toBe(i);
  });

  it('the handle is echoed exactly, whatever its bits', async () => {
    const cl = await openExport('disk');
    for (const handle of [0n, 0xffffffffffffffffn, 0x0102030405060708n]) {
      const h = cl.send(NBD_CMD.READ, 0, 1, { handle });
      const r = await cl.reply(() => 1);
      expect(r.handle).toBe(h);
      expect(r.handle).toBe(handle);
    }
  });

  it('DISC finishes requests in flight, then closes the socket', async () => {
    const served = nextServe();
    const cl = await openExport('disk');
    const gate = deferred();
    disk.gates.set(4096, gate.promise);
    const w = cl.send(NBD_CMD.WRITE, 4096, 3, { data: Buffer.from('end') });
    cl.send(NBD_CMD.DISC, 0, 0);
    await new Promise((r) => setImmediate(r));
    gate.resolve();
    const r = await cl.reply();
    expect(r.handle).toBe(w);
    expect(r.error).toBe(0);
    expect((await cl.c.leftoverAtClose()).length).toBe(0); // no reply to DISC itself
    expect(disk.data.subarray(4096, 4099).toString()).toBe('end');
    await expect((await served).done).resolves.toBeUndefined();
  });

  it('bad request magic closes the connection; the listener keeps accepting', async () => {
    const served = nextServe();
    const cl = await openExport('disk');
    cl.send(NBD_CMD.READ, 0, 4, { magic: 0x25609514 });
    expect((await cl.c.leftoverAtClose()).length).toBe(0);
    await expect((await served).done).resolves.toBeUndefined();
    const again = await openExport('disk');
    expect((await again.write(0, Buffer.from('still here'))).error).toBe(0);
    expect((await again.read(0, 10)).data.toString()).toBe('still here');
  });

  it('a client vanishing mid-request ends the connection quietly', async () => {
    const served = nextServe();
    const cl = await openExport('disk');
    const h = Buffer.alloc(28 + 100);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(NBD_CMD.WRITE, 6);
    h.writeUInt32BE(4096, 24); // promises 4096 bytes, sends 100
    cl.c.write(h);
    cl.c.sock.end();
    await cl.c.closed;
    await expect((await served).done).resolves.toBeUndefined();
    expect(disk.writes).toEqual([]);
  });
});

describe('nbd request checks: flags, lengths, reserved fields', () => {
  /** A WRITE_ZEROES request header: planted in a refused write's payload, it shows whether the payload was skipped or parsed. */
  function zeroRequestBytes(offset: number, length: number): Buffer {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(NBD_CMD.WRITE_ZEROES, 6);
    h.writeBigUInt64BE(0xdeadn, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return h;
  }

  it('unknown flag bits (0x8100) on WRITE and READ → EINVAL: the write is not applied, its payload is skipped, the read sends no data', async () => {
    const cl = await openExport('disk');
    disk.data.fill(0x11, 0, 8192);
    const payload = Buffer.alloc(4096, 0xab);
    zeroRequestBytes(0, 8192).copy(payload, 0);
    expect((await cl.write(0, payload, 0x8100)).error).toBe(NBD_ERRNO.EINVAL);
    const r = await cl.cmd(NBD_CMD.READ, 0, 4096, { flags: 0x8100 }); // reply() expects no data after an error
    expect(r.error).toBe(NBD_ERRNO.EINVAL);
    expect(disk.writes).toEqual([]);
    expect(disk.zeros).toEqual([]);
    expect(disk.readIntos).toEqual([]);
    // In step: the next replies match their requests, and the bytes are the old ones.
    const back = await cl.read(0, 8192);
    expect(back.error).toBe(0);
    expect(back.data.every((b) => b === 0x11)).toBe(true);
    expect((await cl.write(0, Buffer.from('ok'))).error).toBe(0);
    expect(disk.data.subarray(0, 3).toString('latin1')).toBe('ok\x11');
  });

  it('each command takes only what was negotiated: FUA on any command, NO_HOLE on WRITE_ZEROES; DF, REQ_ONE, FAST_ZERO and undefined bits → EINVAL, nothing done', async () => {
    const cl = await openExport('disk');
    const F = NBD_CMD_FLAG;
    const C = NBD_CMD;
    const send = async (type: number, flags: number): Promise<SimpleReply> => {
      if (type === C.FLUSH) return cl.cmd(type, 0, 0, { flags });
      if (type === C.WRITE) return cl.cmd(type, 8192, 512, { flags, data: Buffer.alloc(512, 0x77) });
      const handle = cl.send(type, 8192, 512, { flags });
      const r = await cl.reply(() => (type === C.READ ? 512 : 0));
      expect(r.handle).toBe(handle);
      return r;
    };
    const name = (type: number, flags: number): string => `${Object.entries(C).find(([, v]) => v === type)![0]} flags 0x${flags.toString(16)}`;
    // The spec: FUA is valid on every command once SEND_FUA is advertised (which it always is here).
    const accepted: Array<[number, number]> = [
      [C.READ, F.FUA], [C.WRITE, F.FUA], [C.FLUSH, F.FUA], [C.TRIM, F.FUA], [C.CACHE, F.FUA],
      [C.WRITE_ZEROES, F.FUA], [C.WRITE_ZEROES, F.NO_HOLE], [C.WRITE_ZEROES, F.FUA | F.NO_HOLE],
    ];
    for (const [type, flags] of accepted) expect((await send(type, flags)).error, name(type, flags)).toBe(0);
    const refused: Array<[number, number]> = [
      [C.READ, F.DF], // DF needs structured replies, which this server never negotiates
      [C.READ, F.NO_HOLE], [C.READ, F.REQ_ONE], [C.READ, F.FAST_ZERO],
      [C.WRITE, F.NO_HOLE], [C.WRITE, F.DF], [C.WRITE, F.FUA | F.FAST_ZERO],
      [C.WRITE_ZEROES, F.FAST_ZERO], // not advertised (no SEND_FAST_ZERO)
      [C.WRITE_ZEROES, F.NO_HOLE | F.FAST_ZERO], [C.WRITE_ZEROES, F.DF], [C.WRITE_ZEROES, F.REQ_ONE],
      [C.TRIM, F.NO_HOLE], [C.TRIM, F.FAST_ZERO], [C.FLUSH, F.NO_HOLE], [C.FLUSH, F.DF],
      [C.CACHE, F.DF], [C.CACHE, F.REQ_ONE], [C.CACHE, F.NO_HOLE],
    ];
    for (const type of [C.READ, C.WRITE, C.FLUSH, C.TRIM, C.CACHE, C.WRITE_ZEROES]) {
      for (let bit = 5; bit < 16; bit++) refused.push([type, 1 << bit]);
      refused.push([type, F.FUA | 0x8000]);
    }
    const calls = (): number[] => [disk.writes.length, disk.zeros.length, disk.reads.length, disk.readIntos.length, disk.flushes];
    const before = calls();
    for (const [type, flags] of refused) expect((await send(type, flags)).error, name(type, flags)).toBe(NBD_ERRNO.EINVAL);
    expect(calls()).toEqual(before);
    expect(disk.data.subarray(8192, 8192 + 512).every((b) => b === 0)).toBe(true); // the refused writes' bytes never landed
    expect((await cl.read(8192, 4)).error).toBe(0);
  });

  it('on a read-only export a WRITE with undefined flags is EINVAL (a malformed request), a well-formed one EPERM; FUA on a read is fine', async () => {
    const cl = await openExport('ro');
    expect((await cl.write(0, Buffer.alloc(100, 1), 0x0100)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.write(0, Buffer.alloc(100, 1), NBD_CMD_FLAG.FUA)).error).toBe(NBD_ERRNO.EPERM);
    expect((await cl.cmd(NBD_CMD.WRITE_ZEROES, 0, 100, { flags: NBD_CMD_FLAG.NO_HOLE })).error).toBe(NBD_ERRNO.EPERM);
    const h = cl.send(NBD_CMD.READ, 0, 16, { flags: NBD_CMD_FLAG.FUA });
    const r = await cl.reply(() => 16);
    expect(r.handle).toBe(h);
    expect(r.data).toEqual(ro.data.subarray(0, 16));
    expect(ro.writes).toEqual([]);
  });

  it('a refused WRITE of the maximum payload (32 MiB) is read through and dropped: the next request is parsed in step', async () => {
    const cl = await openExport('big');
    const payload = Buffer.alloc(NBD_MAX_PAYLOAD, 0xcd);
    for (let at = 0; at + 28 <= payload.length; at += 4 * MiB) zeroRequestBytes(at, 4096).copy(payload, at);
    expect((await cl.write(0, payload, 0x8100)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.read(0, 16)).error).toBe(0);
    expect(big.writes).toEqual([]);
    expect(big.zeros).toEqual([]);
  });

  it('FLUSH with a nonzero offset or length (reserved fields) → EINVAL without flushing', async () => {
    const cl = await openExport('disk');
    expect((await cl.cmd(NBD_CMD.FLUSH, 4096, 0)).error).toBe(NBD_ERRNO.EINVAL);
    expect((await cl.cmd(NBD_CMD.FLUSH, 0, 1)).error).toBe(NBD_ERRNO.EINVAL);
    expect(disk.flushes).toBe(0);
    expect((await cl.cmd(NBD_CMD.FLUSH, 0, 0)).error).toBe(0);
    expect(disk.flushes).toBe(1);
  });

  it('WRITE_ZEROES, TRIM and CACHE may ask for more than the maximum payload (no payload travels): done, CACHE reads at most one maximum', async () => {
    const cl = await openExport('big');
    expect((await cl.cmd(NBD_CMD.WRITE_ZEROES, 0, 0xffffffff)).error).toBe(0);
    expect((await cl.cmd(NBD_CMD.TRIM, 4096, 0xfffff000)).error).toBe(0);
    expect(big.zeros).toEqual([
      { offset: 0, length: 0xffffffff, fua: false, trim: false },
      { offset: 4096, length: 0xfffff000, fua: false, trim: true },
    ]);
    expect((await cl.cmd(NBD_CMD.CACHE, 0, 0xffffffff)).error).toBe(0);
    expect(big.reads).toEqual([{ offset: 0, length: NBD_MAX_PAYLOAD }]);
  });

  it('DISC closes the connection whatever its flags (it has no reply to carry an error)', async () => {
    const served = nextServe();
    const cl = await openExport('disk');
    cl.send(NBD_CMD.DISC, 0, 0, { flags: 0x8100 });
    expect((await cl.c.leftoverAtClose()).length).toBe(0);
    await expect((await served).done).resolves.toBeUndefined();
  });
});

describe('nbd reading sockets into reused slabs (nbdSocket)', () => {
  it('every connection of this suite is re-created to read into slabs; anything but a fresh socket is left as it is', () => {
    expect(adopted.length).toBeGreaterThan(10);
    expect(adopted.every(Boolean)).toBe(true);
    const stream = new PassThrough();
    expect(nbdSocket(stream)).toBe(stream);
    const loose = new net.Socket(); // never connected: no handle to take over
    expect(nbdSocket(loose)).toBe(loose);
  });

  /** Takes payloads as the views they arrived in (writev), and reads them only when its gate opens. */
  class VecExport extends MemExportInto {
    writev(offset: number, chunks: Buffer[], fua: boolean): Promise<void> | void {
      this.writes.push({ offset, length: chunks.reduce((n, c) => n + c.length, 0), fua });
      const land = (): void => {
        let at = offset;
        for (const c of chunks) at += c.copy(this.data, at);
        this.writesDone++;
      };
      const g = this.before(offset);
      return g ? g.then(land) : land();
    }
  }

  it('a write the export holds keeps its bytes (views of a slab) while later writes fill and reuse slabs', async () => {
    const vec = new VecExport('vec', DISK_SIZE, false, 4096);
    exportsByName.set('vec', vec);
    const disk = vec;
    const cl = await openExport('vec');
    const gate = deferred();
    disk.gates.set(0, gate.promise);
    const held = Buffer.alloc(256 * KiB, 0xa5);
    const first = cl.send(NBD_CMD.WRITE, 0, held.length, { data: held });
    // 24 MiB through the connection while the first write waits: many times the slab size.
    const rnd = prng(13);
    const last = new Map<number, Buffer>();
    for (let k = 0; k < 96; k++) {
      const offset = 256 * KiB * (1 + (k % 3));
      const data = randomBytes(rnd, 256 * KiB);
      const r = await cl.write(offset, data);
      expect(r.error).toBe(0);
      last.set(offset, data);
    }
    gate.resolve();
    const r = await cl.reply();
    disk.gates.delete(0);
    expect(r).toMatchObject({ handle: first, error: 0 });
    expect(disk.data.subarray(0, held.length).equals(held)).toBe(true);
    for (const [offset, data] of last) expect(disk.data.subarray(offset, offset + data.length).equals(data)).toBe(true);
    // Headers and payloads split across reads at any byte: one request per write() call, trickled.
    const payload = randomBytes(rnd, 3 * 4096 + 7);
    const h = Buffer.alloc(28);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(NBD_CMD.WRITE, 6);
    h.writeBigUInt64BE(0x77n, 8);
    h.writeBigUInt64BE(5000n, 16);
    h.writeUInt32BE(payload.length, 24);
    const bytes = Buffer.concat([h, payload]);
    for (let at = 0; at < bytes.length; at += 997) {
      cl.c.write(bytes.subarray(at, at + 997));
      await new Promise((res) => setTimeout(res, 1));
    }
    expect(await cl.reply()).toMatchObject({ handle: 0x77n, error: 0 });
    expect(disk.data.subarray(5000, 5000 + payload.length).equals(payload)).toBe(true);
  });
});

describe('nbd under a hostile client: what one connection may hold', () => {
  /** A virtual export whose writes wait until the test lets each one finish; it checks the budget at every call. */
  class SlowWriteExport extends MemExport {
    private readonly held: Array<{ length: number; release: () => void }> = [];
    private readonly started: Array<() => void> = [];
    calls = 0;
    maxHeldBytes = 0;

    constructor(name: string, size: number) {
      super(name, size, false, 4096, true);
    }

    override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
      this.writes.push({ offset, length: data.length, fua });
      this.calls++;
      const gate = deferred();
      this.held.push({ length: data.length, release: gate.resolve });
      this.maxHeldBytes = Math.max(this.maxHeldBytes, this.heldBytes());
      this.started.shift()?.();
      return gate.promise.then(() => {
        this.writesDone++;
      });
    }

    heldBytes(): number {
      return this.held.reduce((n, h) => n + h.length, 0);
    }

    /** Resolves once a write is waiting to be released. */
    async waiting(): Promise<void> {
      if (this.held.length > 0) return;
      await new Promise<void>((r) => this.started.push(r));
    }

    releaseOldest(): void {
      this.held.shift()!.release();
    }
  }

  it('writes to a slow export: the connection stops taking requests once the payloads it holds pass its budget, and takes them again as writes finish', async () => {
    const slow = new SlowWriteExport('slow', 2 ** 30);
    exportsByName.set('slow', slow);
    const cl = await openExport('slow');
    const n = 24;
    const len = 8 * MiB;
    const paused = new Promise<void>((resolve) => {
      onPressure = (waiting) => void (waiting && resolve());
    });
    const handles = Array.from({ length: n }, (_, i) => cl.send(NBD_CMD.WRITE, i * len, len, { data: Buffer.alloc(len, i) }));
    // The server says when it stops taking requests; a server without a budget takes all 24 (192 MiB) at once.
    let raced = false;
    const allTaken = (async (): Promise<void> => {
      while (!raced && slow.calls < n) await new Promise((r) => setTimeout(r, 20));
    })();
    await Promise.race([paused, allTaken]);
    raced = true;
    expect(slow.calls).toBeLessThan(n);
    expect(slow.heldBytes()).toBeGreaterThan(NBD_CONNECTION_BUDGET); // it took up to the budget...
    expect(slow.heldBytes()).toBeLessThanOrEqual(NBD_CONNECTION_BUDGET + len); // ...and one request past it, no more
    // Each finished write lets one more in; every write is answered and the budget held throughout.
    for (let done = 0; done < n; done++) {
      await slow.waiting();
      slow.releaseOldest();
    }
    const seen = new Set<bigint>();
    for (let k = 0; k < n; k++) {
      const r = await cl.reply();
      expect(r.error).toBe(0);
      seen.add(r.handle);
    }
    expect(seen).toEqual(new Set(handles));
    expect(slow.writes.map((w) => w.offset)).toEqual(handles.map((_, i) => i * len));
    expect(slow.maxHeldBytes).toBeLessThanOrEqual(NBD_CONNECTION_BUDGET + len);
    expect(pressure[0]).toBe(true);
    expect(pressure.at(-1)).toBe(false);
  });

  it('a client reading its replies slowly gets every 32 MiB read whole and in step after the connection waited for its socket', async () => {
    const cl = await openExport('big');
    cl.c.sock.pause(); // let the replies pile up in the server first
    const n = 8;
    const handles = Array.from({ length: n }, (_, i) => cl.send(NBD_CMD.READ, BIG_SIZE - (i + 1) * NBD_MAX_PAYLOAD, NBD_MAX_PAYLOAD));
    const probe = cl.send(NBD_CMD.READ, 0, 4);
    const paused = new Promise<void>((resolve) => {
      onPressure = (waiting) => void (waiting && resolve());
    });
    let raced = false;
    const allTaken = (async (): Promise<void> => {
      while (!raced && big.reads.length < n) await new Promise((r) => setTimeout(r, 20));
    })();
    await Promise.race([paused, allTaken]);
    raced = true;
    expect(big.reads.length).toBeLessThan(n);
    cl.c.sock.resume();
    const seen: bigint[] = [];
    for (let k = 0; k < n + 1; k++) {
      const r = await cl.reply((h) => (h === probe ? 4 : NBD_MAX_PAYLOAD));
      expect(r.error).toBe(0);
      expect(r.data.length).toBe(r.handle === probe ? 4 : NBD_MAX_PAYLOAD);
      seen.push(r.handle);
    }
    expect(seen).toEqual([...handles, probe]); // a synchronous export answers in order
    expect(pressure).toContain(false);
  });

  // The export runs in a child process (the module, which imports only node:net at run time, transpiled as it
  // stands; each connection re-created by nbdSocket, as carryon serve does), so its memory is measured
  // alone: VmHWM in /proc is the process's peak resident size.
  const CHILD = `
import net from 'node:net';
import readline from 'node:readline';
import { readFileSync } from 'node:fs';
import { nbdSocket, serveNbdConnection } from './nbd.mjs';
let reads = 0, pending = 0, waiting = 0;
const fill = (offset) => (offset / 4096) & 0xff;
const exp = {
  name: 'flood', size: 2 ** 40, readOnly: false, preferredBlockSize: 4096,
  read: (offset, length) => Buffer.alloc(length, fill(offset)),
  // Asynchronous, like carryon's reads of 128 KiB and more (thread pool); each fills its reply buffer.
  readInto(offset, length, into, at) {
    reads++;
    pending++;
    return new Promise((resolve) => setImmediate(() => {
      into.fill(fill(offset), at, at + length);
      pending--;
      resolve();
    }));
  },
  write() {}, zero() {}, flush() {},
};
net.createServer((s) => void serveNbdConnection(nbdSocket(s), {
  lookup: () => exp, list: () => ['flood'], onBackpressure: (w) => { waiting += w ? 1 : -1; },
})).listen(process.argv[2], () => process.stdout.write('listening\\n'));
readline.createInterface({ input: process.stdin }).on('line', () => {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kib = (k) => Number(new RegExp('^' + k + ':\\\\s+(\\\\d+) kB', 'm').exec(status)[1]);
  process.stdout.write(JSON.stringify({ hwmKiB: kib('VmHWM'), rssKiB: kib('VmRSS'), reads, pending, waiting }) + '\\n');
});
`;
  interface ChildStatus {
    hwmKiB: number;
    rssKiB: number;
    reads: number;
    pending: number;
    waiting: number;
  }

  async function startChildExport(): Promise<{ socket: string; status: () => Promise<ChildStatus>; kill: () => void }> {
    const ts = (await import('typescript')).default;
    const src = await fs.readFile(path.join(import.meta.dirname, '../../src/nbd/index.ts'), 'utf8');
    const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
    await fs.writeFile(path.join(dir, 'nbd.mjs'), js);
    await fs.writeFile(path.join(dir, 'child.mjs'), CHILD);
    const socket = path.join(dir, 'flood.sock');
    const child = spawn(process.execPath, [path.join(dir, 'child.mjs'), socket], { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines: string[] = [];
    const waiters: Array<(line: string) => void> = [];
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      const w = waiters.shift();
      if (w) w(line);
      else lines.push(line);
    });
    const next = (): Promise<string> => (lines.length > 0 ? Promise.resolve(lines.shift()!) : new Promise((r) => waiters.push(r)));
    const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(`child export exited (${code ?? signal})`)));
    const line = await Promise.race([next(), exited]);
    if (line !== 'listening') throw new Error(line);
    return {
      socket,
      status: async () => {
        child.stdin!.write('status\n');
        return JSON.parse(await Promise.race([next(), exited.then((m) => Promise.reject(new Error(m)))])) as ChildStatus;
      },
      kill: () => void child.kill('SIGKILL'),
    };
  }

  it('a client sending 200 READs of 32 MiB and never reading: the serving process stays under 400 MB and another connection is answered', async () => {
    const LIMIT_KIB = 400 * 1024;
    const child = await startChildExport();
    try {
      const before = await child.status();
      const flood = await openExport('flood', child.socket);
      flood.c.sock.pause(); // never read: the replies stay in the server, past the few KiB the kernel's socket buffers take
      for (let i = 0; i < 200; i++) flood.send(NBD_CMD.READ, i * NBD_MAX_PAYLOAD, NBD_MAX_PAYLOAD);
      // Until the server says it stopped taking requests and those it took are done (no timing: it reports),
      // or has already grown past the limit (a server without a budget takes 64 at once: 2 GiB).
      let s = await child.status();
      while (!(s.waiting === 1 && s.pending === 0) && s.hwmKiB < LIMIT_KIB) {
        await new Promise((r) => setTimeout(r, 50));
        s = await child.status();
      }
      expect(s.hwmKiB).toBeLessThan(LIMIT_KIB);
      expect(s.reads).toBeLessThanOrEqual(Math.ceil(NBD_CONNECTION_BUDGET / NBD_MAX_PAYLOAD) + 1);

      // Another connection is served meanwhile.
      const other = await openExport('flood', child.socket);
      const r = await other.read(7 * 4096, 4096);
      expect(r.error).toBe(0);
      expectBytes(r.data, Buffer.alloc(4096, 7));
      const after = await child.status();
      console.log(`nbd flood: VmHWM ${Math.round(before.hwmKiB / 1024)} MiB before, ${Math.round(after.hwmKiB / 1024)} MiB after; ${after.reads} of 200 reads taken`);
      expect(after.hwmKiB).toBeLessThan(LIMIT_KIB);

      // The flooding connection is still in step: its first reply arrives whole once it reads.
      flood.c.sock.resume();
      const first = await flood.reply(() => NBD_MAX_PAYLOAD);
      expect(first.error).toBe(0);
      expect(first.data.length).toBe(NBD_MAX_PAYLOAD);
      expect(first.handle).toBe(0x1122334455660000n);
    } finally {
      child.kill();
    }
  });
});

describe('nbd with libnbd tools (scripts/install-test-deps.sh installs libnbd-bin)', () => {
  async function tool(name: string, args: string[]): Promise<string> {
    try {
      const r = await run(name, args, { maxBuffer: 16 * MiB });
      return r.stdout;
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      if (e.code === 'ENOENT') throw new Error(`${name} is not installed: run scripts/install-test-deps.sh (it installs libnbd-bin)`);
      throw new Error(`${name} ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}`);
    }
  }
  const uri = (name: string): string => `nbd+unix:///${name}?socket=${sockPath}`;

  interface NbdinfoExport {
    'export-name': string;
    'export-size': number;
    is_read_only: boolean;
    can_flush: boolean;
    can_fua: boolean;
    can_trim: boolean;
    can_zero: boolean;
    can_multi_conn: boolean;
    block_size_minimum?: number;
    block_size_preferred?: number;
    block_size_maximum?: number;
  }

  it('nbdinfo --json reports each export’s size and flags', async () => {
    const w = JSON.parse(await tool('nbdinfo', ['--json', uri('disk')])) as { exports: NbdinfoExport[] };
    expect(w.exports).toHaveLength(1);
    const d = w.exports[0]!;
    expect(d['export-name']).toBe('disk');
    expect(d['export-size']).toBe(DISK_SIZE);
    expect(d.is_read_only).toBe(false);
    expect(d.can_flush).toBe(true);
    expect(d.can_fua).toBe(true);
    expect(d.can_trim).toBe(true);
    expect(d.can_zero).toBe(true);
    expect(d.can_multi_conn).toBe(true);
    expect(d.block_size_minimum).toBe(1);
    expect(d.block_size_preferred).toBe(4096);
    expect(d.block_size_maximum).toBe(NBD_MAX_PAYLOAD);

    const r = (JSON.parse(await tool('nbdinfo', ['--json', uri('ro')])) as { exports: NbdinfoExport[] }).exports[0]!;
    expect(r['export-size']).toBe(RO_SIZE);
    expect(r.is_read_only).toBe(true);
    expect(r.can_trim).toBe(false);
    expect(r.can_zero).toBe(false);

    const dflt = (JSON.parse(await tool('nbdinfo', ['--json', uri('')])) as { exports: NbdinfoExport[] }).exports[0]!;
    expect(dflt['export-size']).toBe(DISK_SIZE);
  });

  it('nbdinfo --list sees every export', async () => {
    const all = JSON.parse(await tool('nbdinfo', ['--list', '--json', uri('')])) as { exports: NbdinfoExport[] };
    const sizes = Object.fromEntries(all.exports.map((e) => [e['export-name'], e['export-size']]));
    expect(sizes).toEqual({ disk: DISK_SIZE, ro: RO_SIZE, big: BIG_SIZE });
  });

  it('nbdcopy copies a file into the export and back out, byte for byte', async () => {
    const rng = prng(99);
    const src = randomBytes(rng, DISK_SIZE);
    src.fill(0, 200 * KiB, 520 * KiB); // a zero run: nbdcopy may send it as WRITE_ZEROES
    src.fill(0, DISK_SIZE - 4096);
    const inFile = path.join(dir, 'in.img');
    const outFile = path.join(dir, 'out.img');
    await fs.writeFile(inFile, src);
    disk.data.fill(0xa5); // so zero ranges must really be written
    await tool('nbdcopy', ['--flush', inFile, uri('disk')]);
    expectBytes(disk.data, src);
    expect(disk.flushes).toBeGreaterThan(0);

    disk.data.write('changed after copy-in', 12345);
    await tool('nbdcopy', [uri('disk'), outFile]);
    const out = await fs.readFile(outFile);
    expect(out.length).toBe(DISK_SIZE);
    expectBytes(out, disk.data);
    expect(out.subarray(12345, 12345 + 21).toString()).toBe('changed after copy-in');

    const roOut = path.join(dir, 'ro.img');
    await tool('nbdcopy', [uri('ro'), roOut]);
    expectBytes(await fs.readFile(roOut), ro.data);
    await expect(tool('nbdcopy', [inFile, uri('ro')])).rejects.toThrow(/nbdcopy/);
    await fs.rm(inFile);
    await fs.rm(outFile);
    await fs.rm(roOut);
  });
});
