// The native NBD data path (native/nbd-data through client/nbd-native.ts) over a real Unix socket and a
// real file: src/nbd does the handshake, then a C thread answers. A raw client sends exact bytes; the
// disk here records every dirty-mark request and lets the test hold it, so the rule the check-in relies
// on is checked byte by byte: a write's bytes reach the file, and the client hears "done", only after
// its blocks' marks are durable. Then bad input (each must leave the connection in step or close it,
// never the server), and nbdcopy with 4 connections as a real peer.
import { execFile } from 'node:child_process';
import { closeSync, ftruncateSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { NBD_CMD, NBD_CMD_FLAG, NBD_ERRNO, NBD_MAX_PAYLOAD, NBD_OPT, NBD_REP, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NbdIoError, nbdSocket, serveNbdConnection } from '../../src/index.js';
import { loadNbdData, NbdDataPath, type NativeDisk } from '../../client/nbd-native.js';
import { prng, randomBytes, tempDir } from './helpers.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const SIZE = 4 * MiB + 3 * 4096 + 512; // the last block is short

interface Mark {
  offset: number;
  length: number;
  release: (err?: Error) => void;
}

/** A file served as an export, recording what the data path asks of it. */
class FileDisk implements NativeDisk {
  readonly name = 'disk';
  readonly size = SIZE;
  readonly readOnly = false;
  readonly preferredBlockSize = 4096;
  readonly manifest = { blockSize: BLOCK };
  readonly stats = { readBytes: 0, writeBytes: 0 };
  marks: Mark[] = [];
  /** When set, prepareWrite waits until the test releases it. */
  hold = false;
  flushes = 0;
  zeroes: Array<{ offset: number; length: number; fua: boolean; trim: boolean }> = [];
  fd: number | null;
  onMark: ((m: Mark) => void) | null = null;

  constructor(readonly file: string) {
    this.fd = openSync(file, 'r+');
  }

  get nativeFd(): number | null {
    return this.fd;
  }

  prepareWrite(offset: number, length: number): Promise<void> | void {
    if (!this.hold) {
      this.marks.push({ offset, length, release: () => undefined });
      return;
    }
    return new Promise<void>((resolve, reject) => {
      const m = { offset, length, release: (err?: Error) => (err ? reject(err) : resolve()) };
      this.marks.push(m);
      this.onMark?.(m);
    });
  }

  read(): Buffer {
    throw new Error('the native path reads the file itself');
  }

  write(): void {
    throw new Error('the native path writes the file itself');
  }

  zero(offset: number, length: number, fua: boolean, trim: boolean): void {
    this.zeroes.push({ offset, length, fua, trim });
    writeSync(this.fd!, Buffer.alloc(length), 0, length, offset);
  }

  flush(): void {
    this.flushes++;
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

/** A raw NBD client: exact bytes out, exact bytes in. */
class Raw {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  ended = false;
  readonly closed: Promise<void>;

  constructor(readonly sock: net.Socket) {
    sock.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.waiter?.();
    });
    sock.on('error', () => undefined);
    this.closed = new Promise((r) => sock.on('close', () => {
      this.ended = true;
      this.waiter?.();
      r();
    }));
  }

  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`closed with ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => {
        this.waiter = r;
      });
      this.waiter = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  get buffered(): number {
    return this.buf.length;
  }
}

function request(type: number, offset: number, length: number, handle: bigint, flags = 0, data?: Buffer, magic = NBD_REQUEST_MAGIC): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(magic, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(handle, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return data ? Buffer.concat([h, data]) : h;
}

function goOption(): Buffer {
  const name = Buffer.from('disk');
  const data = Buffer.alloc(4 + name.length + 2);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(NBD_OPT.GO, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

class Client {
  private next = 1n;
  constructor(readonly raw: Raw) {}

  send(type: number, offset: number, length: number, opts: { flags?: number; data?: Buffer; magic?: number } = {}): bigint {
    const handle = this.next++;
    this.raw.sock.write(request(type, offset, length, handle, opts.flags ?? 0, opts.data, opts.magic));
    return handle;
  }

  async reply(dataLength = 0): Promise<{ error: number; handle: bigint; data: Buffer }> {
    const h = await this.raw.read(16);
    expect(h.readUInt32BE(0)).toBe(NBD_SIMPLE_REPLY_MAGIC);
    const error = h.readUInt32BE(4);
    const data = error === 0 ? await this.raw.read(dataLength) : Buffer.alloc(0);
    return { error, handle: h.readBigUInt64BE(8), data };
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const h = this.send(NBD_CMD.READ, offset, length);
    const r = await this.reply(length);
    expect(r.handle).toBe(h);
    expect(r.error).toBe(0);
    return r.data;
  }

  async cmd(type: number, offset: number, length: number, opts: { flags?: number; data?: Buffer } = {}): Promise<number> {
    const h = this.send(type, offset, length, opts);
    const r = await this.reply();
    expect(r.handle).toBe(h);
    return r.error;
  }
}

const addon = loadNbdData().addon;
let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
let sockPath = '';
let server: net.Server;
let file = '';
let disk: FileDisk;
let dataPath: NbdDataPath;
let ioErrors: number[] = [];
const serves: Array<Promise<void>> = [];
let raws: Raw[] = [];

async function connect(firstRequests?: Buffer): Promise<Client> {
  const sock = net.createConnection(sockPath);
  await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
  const raw = new Raw(sock);
  raws.push(raw);
  await raw.read(18);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(3);
  // The option and, when given, the first requests in one write: they reach serve before the hand-over.
  sock.write(Buffer.concat([flags, goOption(), ...(firstRequests ? [firstRequests] : [])]));
  for (;;) {
    const h = await raw.read(20);
    const type = h.readUInt32BE(12);
    await raw.read(h.readUInt32BE(16));
    if (type === NBD_REP.ACK) break;
    expect(type).toBe(NBD_REP.INFO);
  }
  return new Client(raw);
}

function fileBytes(offset: number, length: number): Buffer {
  return readFileSync(file).subarray(offset, offset + length);
}

/** Wait until the data path has no connection left (each thread ended and was joined). */
async function drained(): Promise<void> {
  for (let k = 0; k < 500 && dataPath.connections > 0; k++) await new Promise((r) => setTimeout(r, 10));
  expect(dataPath.connections).toBe(0);
}

// A build without the addon fails here (serve would answer on its JavaScript thread), unless
// CARRYON_NBD_DATA=js says that is meant.
describe('the native data path is built', () => {
  it('loads (CARRYON_NBD_DATA=js to run without it on purpose)', () => {
    if (process.env.CARRYON_NBD_DATA === 'js') expect(loadNbdData()).toEqual({ addon: null, reason: 'CARRYON_NBD_DATA=js' });
    else expect(loadNbdData().reason).toMatch(/carryon_nbd_data\.node$/);
  });
});

describe.skipIf(process.env.CARRYON_NBD_DATA === 'js')('native NBD data path (native/nbd-data)', () => {
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('carryon-nbd-native-'));
    sockPath = path.join(dir, 'nbd.sock');
    file = path.join(dir, 'disk.raw');
    server = net.createServer((accepted) => {
      const sock = nbdSocket(accepted);
      serves.push(serveNbdConnection(sock, { lookup: (n) => (n === 'disk' || n === '' ? disk : null), list: () => ['disk'], handOver: dataPath }));
    });
    await new Promise<void>((r) => server.listen(sockPath, r));
  });

  beforeEach(() => {
    writeFileSync(file, randomBytes(prng(11), SIZE));
    disk = new FileDisk(file);
    ioErrors = [];
    dataPath = new NbdDataPath(addon!, disk, (_err, errno) => void ioErrors.push(errno));
  });

  afterEach(async () => {
    for (const r of raws) r.sock.destroy();
    raws = [];
    await dataPath.stopAll();
    disk.close();
  });

  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    expect((await Promise.allSettled(serves)).filter((s) => s.status === 'rejected')).toEqual([]);
    await cleanup();
  });

  it('reads return the file\'s bytes, across blocks and to the short end; the connection is counted until it ends', async () => {
    const c = await connect();
    expect(dataPath.connections).toBe(1);
    expect((await c.read(0, 4096)).equals(fileBytes(0, 4096))).toBe(true);
    expect((await c.read(BLOCK - 100, 3 * BLOCK)).equals(fileBytes(BLOCK - 100, 3 * BLOCK))).toBe(true);
    expect((await c.read(SIZE - 5000, 5000)).equals(fileBytes(SIZE - 5000, 5000))).toBe(true);
    expect((await c.read(0, 0)).length).toBe(0);
    c.send(NBD_CMD.DISC, 0, 0);
    await c.raw.closed;
    await drained();
    expect(disk.stats.readBytes).toBe(4096 + 3 * BLOCK + 5000);
  });

  it('a write to blocks not yet marked: no byte reaches the file and no reply comes until the marks are durable', async () => {
    disk.hold = true;
    const c = await connect();
    const data = randomBytes(prng(3), 2 * BLOCK);
    const marked = new Promise<Mark>((r) => {
      disk.onMark = r;
    });
    const h = c.send(NBD_CMD.WRITE, BLOCK + 512, data.length, { data });
    const m = await marked;
    expect({ offset: m.offset, length: m.length }).toEqual({ offset: BLOCK + 512, length: data.length });
    await new Promise((r) => setTimeout(r, 100));
    expect(c.raw.buffered).toBe(0); // no reply yet
    expect(fileBytes(BLOCK + 512, data.length).equals(data)).toBe(false);
    m.release();
    const r = await c.reply();
    expect(r).toMatchObject({ handle: h, error: 0 });
    expect(fileBytes(BLOCK + 512, data.length).equals(data)).toBe(true);
    // The same blocks again: known durable now, written without asking.
    const again = randomBytes(prng(4), 4096);
    expect(await c.cmd(NBD_CMD.WRITE, 2 * BLOCK, again.length, { data: again })).toBe(0);
    expect(disk.marks.length).toBe(1);
    expect(fileBytes(2 * BLOCK, 4096).equals(again)).toBe(true);
    // A write reaching one more block asks again, for its whole range.
    const wider = randomBytes(prng(5), BLOCK);
    const marked2 = new Promise<Mark>((r) => {
      disk.onMark = r;
    });
    const h2 = c.send(NBD_CMD.WRITE, 3 * BLOCK + 4096, wider.length, { data: wider }); // blocks 3 (marked) and 4 (not)
    const m2 = await marked2;
    expect({ offset: m2.offset, length: m2.length }).toEqual({ offset: 3 * BLOCK + 4096, length: BLOCK });
    m2.release();
    expect(await c.reply()).toMatchObject({ handle: h2, error: 0 });
    expect(fileBytes(3 * BLOCK + 4096, BLOCK).equals(wider)).toBe(true);
  });

  it('a large write to marked blocks (read and written in pieces) lands whole; stats count the bytes', async () => {
    const c = await connect();
    const first = randomBytes(prng(8), 3 * MiB + 5);
    expect(await c.cmd(NBD_CMD.WRITE, 4096 + 3, first.length, { data: first })).toBe(0); // asks for the marks
    const again = randomBytes(prng(9), 3 * MiB + 5);
    expect(await c.cmd(NBD_CMD.WRITE, 4096 + 3, again.length, { data: again })).toBe(0); // known dirty: the fast path
    expect(disk.marks.length).toBe(1);
    expect(fileBytes(4096 + 3, again.length).equals(again)).toBe(true);
    expect((await c.read(4096 + 3, again.length)).equals(again)).toBe(true);
    c.send(NBD_CMD.DISC, 0, 0);
    await c.raw.closed;
    await drained();
    expect(disk.stats.writeBytes).toBe(2 * again.length);
  });

  it('a mark that fails: its errno is sent, the file is untouched, the block is not taken as marked, the connection goes on', async () => {
    disk.hold = true;
    const c = await connect();
    const before = fileBytes(0, 8192);
    disk.onMark = (m) => m.release(new NbdIoError(NBD_ERRNO.ENOSPC, 'journal full'));
    expect(await c.cmd(NBD_CMD.WRITE, 0, 8192, { data: Buffer.alloc(8192, 0xab) })).toBe(NBD_ERRNO.ENOSPC);
    expect(ioErrors).toEqual([NBD_ERRNO.ENOSPC]);
    expect(fileBytes(0, 8192).equals(before)).toBe(true);
    disk.onMark = (m) => m.release(new Error('disk on fire'));
    expect(await c.cmd(NBD_CMD.WRITE, 0, 8192, { data: Buffer.alloc(8192, 0xac) })).toBe(NBD_ERRNO.EIO);
    expect(fileBytes(0, 8192).equals(before)).toBe(true);
    disk.onMark = (m) => m.release();
    expect(await c.cmd(NBD_CMD.WRITE, 0, 8192, { data: Buffer.alloc(8192, 0xad) })).toBe(0);
    expect(fileBytes(0, 8192).equals(Buffer.alloc(8192, 0xad))).toBe(true);
    expect(disk.marks.length).toBe(3);
  });

  it('more writes waiting for marks than the thread keeps in flight: every one is answered, with its own bytes', async () => {
    disk.hold = true;
    const pending: Mark[] = [];
    disk.onMark = (m) => pending.push(m);
    const c = await connect();
    const n = 100; // above the thread's 64 jobs: it stops reading until marks are answered
    const datas: Buffer[] = [];
    for (let k = 0; k < n; k++) {
      datas.push(Buffer.alloc(4096, k));
      c.send(NBD_CMD.WRITE, k * BLOCK / 4, 4096, { data: datas[k] });
    }
    for (let k = 0; k < 500 && pending.length < 64; k++) await new Promise((r) => setTimeout(r, 10));
    expect(pending.length).toBe(64);
    disk.hold = false;
    for (const m of pending.splice(0)) m.release();
    const handles = new Set<bigint>();
    for (let k = 0; k < n; k++) {
      const r = await c.reply();
      expect(r.error).toBe(0);
      handles.add(r.handle);
    }
    expect(handles.size).toBe(n);
    for (let k = 0; k < n; k++) expect(fileBytes(k * BLOCK / 4, 4096).equals(datas[k]!)).toBe(true);
  });

  it('FUA and FLUSH go to the disk\'s flush before their reply; WRITE_ZEROES and TRIM to its zero', async () => {
    const c = await connect();
    expect(await c.cmd(NBD_CMD.WRITE, 4096, 4096, { data: Buffer.alloc(4096, 7), flags: NBD_CMD_FLAG.FUA })).toBe(0);
    expect(disk.flushes).toBe(1);
    expect(await c.cmd(NBD_CMD.WRITE, 4096, 4096, { data: Buffer.alloc(4096, 8), flags: NBD_CMD_FLAG.FUA })).toBe(0); // marked already: the fast path, still synced
    expect(disk.flushes).toBe(2);
    expect(await c.cmd(NBD_CMD.FLUSH, 0, 0)).toBe(0);
    expect(disk.flushes).toBe(3);
    expect(await c.cmd(NBD_CMD.WRITE_ZEROES, 3 * BLOCK, 10000, { flags: NBD_CMD_FLAG.NO_HOLE | NBD_CMD_FLAG.FUA })).toBe(0);
    expect(await c.cmd(NBD_CMD.TRIM, 5 * BLOCK, 4096)).toBe(0);
    expect(disk.zeroes).toEqual([{ offset: 3 * BLOCK, length: 10000, fua: true, trim: false }, { offset: 5 * BLOCK, length: 4096, fua: false, trim: true }]);
    expect((await c.read(3 * BLOCK, 10000)).equals(Buffer.alloc(10000))).toBe(true);
    expect(await c.cmd(NBD_CMD.CACHE, 0, 2 * BLOCK)).toBe(0);
  });

  it('bad requests get their errno and the connection stays in step (the payload of a refused write is skipped)', async () => {
    const c = await connect();
    expect(await c.cmd(NBD_CMD.READ, SIZE - 10, 11)).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(NBD_CMD.READ, Number.MAX_SAFE_INTEGER, 1)).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(NBD_CMD.WRITE, SIZE - 10, 11, { data: Buffer.alloc(11, 1) })).toBe(NBD_ERRNO.ENOSPC);
    expect(await c.cmd(NBD_CMD.WRITE_ZEROES, SIZE, 1)).toBe(NBD_ERRNO.ENOSPC);
    expect(await c.cmd(NBD_CMD.TRIM, SIZE, 1)).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(NBD_CMD.CACHE, SIZE - 1, 2)).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(NBD_CMD.FLUSH, 0, 1)).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(NBD_CMD.READ, 0, 4096, { flags: NBD_CMD_FLAG.NO_HOLE })).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(NBD_CMD.WRITE, 0, 4, { data: Buffer.alloc(4), flags: 0x40 })).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(9, 0, 0)).toBe(NBD_ERRNO.EINVAL);
    expect(await c.cmd(NBD_CMD.READ, 0, NBD_MAX_PAYLOAD + 1)).toBe(NBD_ERRNO.EINVAL);
    expect(disk.marks).toEqual([]);
    expect((await c.read(SIZE - 10, 10)).equals(fileBytes(SIZE - 10, 10))).toBe(true);
    expect(await c.cmd(NBD_CMD.WRITE, 0, 0)).toBe(0);
  });

  it('requests that arrive with the handshake (before the hand-over) are served in order', async () => {
    const data = Buffer.alloc(3000, 0x5a);
    const original = fileBytes(8192, 4096);
    // The read first: answered at once; the write after it, once its marks are durable (replies may come in any order).
    const c = await connect(Buffer.concat([request(NBD_CMD.READ, 8192, 4096, 78n), request(NBD_CMD.WRITE, 100, data.length, 77n, 0, data)]));
    const r = await c.reply(4096);
    expect(r).toMatchObject({ handle: 78n, error: 0 });
    expect(r.data.equals(original)).toBe(true);
    expect(await c.reply()).toMatchObject({ handle: 77n, error: 0 });
    expect((await c.read(100, 3000)).equals(data)).toBe(true);
  });

  it('a bad magic, or a write above the maximum payload, closes that connection; others and new ones are served', async () => {
    const other = await connect();
    const c = await connect();
    c.send(NBD_CMD.READ, 0, 4096, { magic: 0x12345678 });
    await c.raw.closed;
    const d = await connect();
    d.raw.sock.write(request(NBD_CMD.WRITE, 0, NBD_MAX_PAYLOAD + 1, 1n));
    await d.raw.closed;
    expect((await other.read(0, 100)).equals(fileBytes(0, 100))).toBe(true);
    const e = await connect();
    expect((await e.read(4096, 100)).equals(fileBytes(4096, 100))).toBe(true);
  });

  it('a client hanging up mid-payload or with a mark pending ends its thread; nothing half-written is acknowledged', async () => {
    const c = await connect();
    c.raw.sock.write(request(NBD_CMD.WRITE, 0, 65536, 1n, 0, Buffer.alloc(1000, 1)));
    c.raw.sock.destroy();
    disk.hold = true;
    const d = await connect();
    const marked = new Promise<Mark>((r) => {
      disk.onMark = r;
    });
    d.send(NBD_CMD.WRITE, 8 * BLOCK, 4096, { data: Buffer.alloc(4096, 9) });
    const m = await marked;
    d.raw.sock.destroy();
    await new Promise((r) => setTimeout(r, 50));
    expect(dataPath.connections).toBe(1); // the thread waits for what it asked
    m.release();
    await drained();
    expect(fileBytes(0, 1000).equals(Buffer.alloc(1000, 1))).toBe(false);
  });

  it('DISC: writes waiting for marks are finished and answered, then the connection closes', async () => {
    disk.hold = true;
    const c = await connect();
    const marked = new Promise<Mark>((r) => {
      disk.onMark = r;
    });
    const h = c.send(NBD_CMD.WRITE, 9 * BLOCK, 4096, { data: Buffer.alloc(4096, 0x33) });
    const m = await marked;
    c.send(NBD_CMD.DISC, 0, 0);
    await new Promise((r) => setTimeout(r, 50));
    expect(c.raw.ended).toBe(false);
    m.release();
    expect(await c.reply()).toMatchObject({ handle: h, error: 0 });
    await c.raw.closed;
    expect(fileBytes(9 * BLOCK, 4096).equals(Buffer.alloc(4096, 0x33))).toBe(true);
    await drained();
  });

  it('stopAll ends idle and busy connections; the clients see the end', async () => {
    const a = await connect();
    const b = await connect();
    expect(dataPath.connections).toBe(2);
    await dataPath.stopAll();
    await a.raw.closed;
    await b.raw.closed;
    expect(dataPath.connections).toBe(0);
  });

  it('while the gate is closed (a snapshot) no write lands; it lands once the gate opens', async () => {
    const c = await connect();
    expect(await c.cmd(NBD_CMD.WRITE, 0, 4096, { data: Buffer.alloc(4096, 1) })).toBe(0); // marked: later writes take the fast path
    const before = fileBytes(0, 4096);
    const fd = (c.raw.sock as unknown as { _handle: { fd: number } })._handle.fd;
    const seen = dataPath.gated(() => {
      // Sent from inside the gate (straight to the client's socket): the thread reads it and must wait.
      writeSync(fd, request(NBD_CMD.WRITE, 0, 4096, 99n, 0, Buffer.alloc(4096, 2)));
      const until = Date.now() + 150;
      let same = true;
      while (Date.now() < until) if (!fileBytes(0, 4096).equals(before)) same = false;
      return same;
    });
    expect(seen).toBe(true);
    expect(await c.reply()).toMatchObject({ handle: 99n, error: 0 });
    expect(fileBytes(0, 4096).equals(Buffer.alloc(4096, 2))).toBe(true);
  });

  it('nbdcopy with 4 connections writes the whole disk and reads it back, byte for byte', async () => {
    const src = path.join(dir, 'src.raw');
    const back = path.join(dir, 'back.raw');
    const want = randomBytes(prng(21), SIZE);
    writeFileSync(src, want);
    const fd = openSync(back, 'w');
    ftruncateSync(fd, 0);
    closeSync(fd);
    const uri = `nbd+unix:///disk?socket=${sockPath}`;
    await run('nbdcopy', ['--connections=4', '--threads=4', src, uri]);
    expect(readFileSync(file).equals(want)).toBe(true);
    await run('nbdcopy', ['--connections=4', '--threads=4', uri, back]);
    expect(readFileSync(back).equals(want)).toBe(true);
    await drained();
    // Every written block was marked before its bytes landed; each at most a few times (concurrent first writes).
    const marked = new Set<number>();
    for (const m of disk.marks) for (let b = Math.floor(m.offset / BLOCK); b <= Math.floor((m.offset + m.length - 1) / BLOCK); b++) marked.add(b);
    expect(marked.size).toBe(Math.ceil(SIZE / BLOCK));
  });

  it('a handle of the other kind is refused, not read as one (an export where a connection is expected)', () => {
    const ex = addon!.openExport(SIZE, BLOCK);
    for (const call of [() => addon!.complete(ex, 1, 0), () => addon!.stop(ex), () => addon!.join(ex)]) expect(call).toThrow(/nbd-data/);
    expect(() => addon!.gate({}, true)).toThrow(/nbd-data: gate/);
  });
});
