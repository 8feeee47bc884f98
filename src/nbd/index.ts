// nbd: the server side of the Network Block Device protocol (doc/proto.md of NetworkBlockDevice/nbd):
// the fixed newstyle handshake, option haggling (GO, INFO, EXPORT_NAME, LIST, ABORT), and the
// transmission phase with simple replies (READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, CACHE, DISC; FUA,
// NO_HOLE), each request's flags, lengths and range checked against what was negotiated.
// Owns: parsing every byte a client sends (untrusted) and encoding replies; the NbdExport interface;
// what one connection may hold in memory (its byte budget), whatever its client does.
// Must not know: files, checkouts, HTTP. It never opens a listener: the caller accepts connections
// and hands each socket to serveNbdConnection, first re-created by nbdSocket so that it reads into
// large reused slabs (one read per ~200 KB instead of a fresh 64 KiB buffer per read): a payload is
// then a view of a slab, valid until its write settles, and the slab is reused once every byte of it
// was given back. A caller may take a connection's transmission phase elsewhere once the handshake is
// done (NbdConnectionOptions.handOver: carryon serve's C threads, client/nbd-native.ts).
// Key terms: slab, release (a byte given back), budget (what one connection may hold), hand-over.
import net from 'node:net';
import type { Duplex } from 'node:stream';

export const NBD_MAGIC = Buffer.from('NBDMAGIC');
export const NBD_OPT_MAGIC = Buffer.from('IHAVEOPT');
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;

export const NBD_FLAG_FIXED_NEWSTYLE = 1;
export const NBD_FLAG_NO_ZEROES = 2;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1;
export const NBD_FLAG_C_NO_ZEROES = 2;

export const NBD_OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8 } as const;
export const NBD_REP = {
  ACK: 1, SERVER: 2, INFO: 3,
  ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006, ERR_TOO_BIG: 0x80000009,
} as const;
export const NBD_INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const NBD_TFLAG = {
  HAS_FLAGS: 1, READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, ROTATIONAL: 16, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128, CAN_MULTI_CONN: 256,
  SEND_CACHE: 1024, SEND_FAST_ZERO: 2048,
} as const;
export const NBD_CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6 } as const;
export const NBD_CMD_FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;
export const NBD_ERRNO = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** Largest READ/WRITE payload we accept (advertised as the maximum block size). */
export const NBD_MAX_PAYLOAD = 32 * 1024 * 1024;
/** Option data above this closes the connection: no option we support needs more than a name. */
const MAX_OPTION_BYTES = 64 * 1024;
/** Requests handled at once per connection; the next header is read when one finishes. */
const MAX_IN_FLIGHT = 64;
/**
 * Bytes one connection may hold before it stops taking requests: replies queued on its socket, plus
 * the payloads and reply buffers of requests being handled. Checked before each request, so one
 * request (at most NBD_MAX_PAYLOAD) can go past it. Twice the largest request: a client pipelining
 * maximum-size reads keeps one being read while one is sent, and a client that never reads its
 * replies costs no more than this (then it waits: other connections go on).
 */
export const NBD_CONNECTION_BUDGET = 2 * NBD_MAX_PAYLOAD;

/** What a connection reads and writes. Flags, offsets and lengths are checked (against `size`) before any call. */
export interface NbdExport {
  readonly name: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** Bytes the client should align to for speed (advertised as the preferred block size). */
  readonly preferredBlockSize: number;
  read(offset: number, length: number): Promise<Buffer> | Buffer;
  /** Optional faster read into the caller's buffer (the connection reuses its buffers); may finish synchronously. */
  readInto?(offset: number, length: number, into: Buffer, at: number): Promise<void> | void;
  /**
   * `data` is the connection's until the call returns or its promise settles: it may be a view of a
   * buffer the connection reuses afterwards, so an export copies what it keeps (LocalDisk writes it).
   */
  write(offset: number, data: Buffer, fua: boolean): Promise<void> | void;
  /** Optional: the payload as the chunks it arrived in, saving a copy (the same rule as write's `data`). */
  writev?(offset: number, chunks: Buffer[], fua: boolean): Promise<void> | void;
  /** Zeroes a range; later reads return zeros. `trim`: the client gave the range up (NBD_CMD_TRIM). */
  zero(offset: number, length: number, fua: boolean, trim: boolean): Promise<void> | void;
  /** Every write completed before this call is durable when it resolves. */
  flush(): Promise<void> | void;
}

/** An export's failure with the errno to send; any other thrown value is sent as EIO. */
export class NbdIoError extends Error {
  constructor(readonly errno: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface NbdConnectionOptions {
  /** The export for a name the client asked for ('' is the default export), or null when unknown. */
  lookup(name: string): NbdExport | null;
  /** Names for NBD_OPT_LIST. */
  list(): string[];
  /** Told of each request that failed, with the errno sent (for logs). */
  onError?(err: unknown, errno: number): void;
  /** Told when the connection stops taking requests (its budget or request limit is reached) and when it takes them again. */
  onBackpressure?(waiting: boolean): void;
  /**
   * Optional: serve the transmission phase elsewhere (carryon serve's native data path). Asked once the
   * client has picked `exp`; when it says yes the connection stops reading, its handshake replies reach
   * the kernel, and `take` gets the socket's descriptor, the transmission flags and the bytes already
   * read past the handshake (the first requests, maybe part of one). `take` must dup the descriptor:
   * the socket is destroyed (its own descriptor closed) right after it returns. A throw from `take`
   * closes the connection.
   */
  handOver?: { wants(exp: NbdExport): boolean; take(exp: NbdExport, fd: number, tflags: number, leftover: Buffer): void };
}

const EMPTY = Buffer.alloc(0);

/** Bytes arriving on a socket, taken in exact sizes. */
class ByteQueue {
  private chunks: Buffer[] = [];
  /** Set when the socket reads into slabs: bytes taken from here must be given back (release). */
  private readonly slab: SlabReader | null;
  private length = 0;
  /** A reader waiting for n bytes; take: false only waits (readChunks takes them without a copy). */
  private want: { n: number; take: boolean; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended: Error | null = null;

  constructor(private readonly socket: Duplex) {
    const onChunk = (c: Buffer): boolean => {
      this.chunks.push(c);
      this.length += c.length;
      this.wake();
      if (this.length > 2 * NBD_MAX_PAYLOAD) {
        socket.pause(); // a client far ahead of us
        return false;
      }
      return true;
    };
    this.slab = slabReaders.get(socket) ?? null;
    if (this.slab) this.slab.attach(onChunk);
    else socket.on('data', onChunk);
    const end = (err?: Error): void => {
      this.ended ??= err ?? new Error('connection closed');
      this.wake();
    };
    socket.on('end', () => end());
    socket.on('close', () => end());
    socket.on('error', (e) => end(e));
  }

  private wake(): void {
    const w = this.want;
    if (!w) return;
    if (this.length >= w.n) {
      this.want = null;
      w.resolve(w.take ? this.take(w.n) : EMPTY);
    } else if (this.ended) {
      this.want = null;
      w.reject(this.ended);
    }
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        this.slab?.release(c.subarray(0, k)); // copied out: those bytes are done with
        off += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.length -= n;
    if (this.length <= NBD_MAX_PAYLOAD && this.socket.isPaused()) this.socket.resume();
    return out;
  }

  /** n bytes as the chunks they arrived in (no copy into one buffer). */
  readChunks(n: number): Promise<Buffer[]> | Buffer[] {
    if (this.length < n) {
      if (this.ended) return Promise.reject(this.ended);
      return new Promise<Buffer>((resolve, reject) => {
        this.want = { n, take: false, resolve, reject };
      }).then(() => this.readChunks(n));
    }
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const c = this.chunks[0]!;
      if (c.length <= left) {
        out.push(c);
        this.chunks.shift();
        left -= c.length;
      } else {
        out.push(c.subarray(0, left));
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.length -= n;
    if (this.length <= NBD_MAX_PAYLOAD && this.socket.isPaused()) this.socket.resume();
    return out;
  }

  /** Give back what read or readChunks returned, once nothing uses it any more (a slab is then reused). */
  release(bufs: Buffer | Buffer[]): void {
    if (!this.slab) return;
    if (Array.isArray(bufs)) for (const b of bufs) this.slab.release(b);
    else this.slab.release(bufs);
  }

  /** Everything queued, in a buffer of its own (the hand-over's leftover): the queue is empty after. */
  drain(): Buffer {
    const out = Buffer.concat(this.chunks, this.length);
    for (const c of this.chunks) this.slab?.release(c);
    this.chunks = [];
    this.length = 0;
    return out;
  }

  /** n bytes in a buffer of their own (a copy when they are a view of a slab): nothing to release. */
  async readOwned(n: number): Promise<Buffer> {
    const b = await this.read(n);
    if (!this.slab || n === 0) return b;
    const own = Buffer.from(b);
    this.slab.release(b);
    return own;
  }

  read(n: number): Promise<Buffer> {
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    if (this.length >= n) return Promise.resolve(this.take(n));
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.want = { n, take: true, resolve, reject };
    });
  }
}

/** Each read of an adopted socket lands in a slab of this size (the next one when less than SLAB_MIN_READ is left). */
export const NBD_SLAB_BYTES = 1024 * 1024;
const SLAB_MIN_READ = 128 * 1024;
/** Released slabs kept for reuse per connection. */
const SLABS_KEPT = 4;

interface Slab {
  buf: Buffer;
  /** Bytes read into it that are still in use (queued, or a request's payload not yet written). */
  pending: number;
  /** No more reads go into it: once nothing is pending it can be reused. */
  sealed: boolean;
}

/**
 * Reads of one socket into large, reused slabs. Node's stream layer allocates a fresh 64 KiB buffer
 * per read and hands each over as an event: over a GiB of writes that is ~16,000 buffers of external
 * memory, and V8 answers external memory with full mark-compact collections (perf: ~25% of serve's CPU
 * on the write path). Here consecutive reads fill one slab, each as large as the kernel has (up to what
 * is left of it), and each read's bytes are handed on as a view, never copied. The ByteQueue gives
 * every byte back (release) once it is done with it: headers at once, a write's payload when the write
 * has landed. A slab is reused only when it is full and every byte of it was given back (or, the slab
 * being read into, from its start when nothing of it is in use); a byte never given back only means
 * its slab is left to the garbage collector, never that it is overwritten while in use.
 */
class SlabReader {
  private cur: Slab = { buf: Buffer.allocUnsafeSlow(NBD_SLAB_BYTES), pending: 0, sealed: false };
  private used = 0;
  private readonly free: Slab[] = [];
  private readonly slabs = new Map<ArrayBufferLike, Slab>([[this.cur.buf.buffer, this.cur]]);
  private sink: ((chunk: Buffer) => boolean) | null = null;
  private early: Buffer[] = [];

  /** The region the next read may fill. */
  next = (): Buffer => {
    if (this.cur.pending === 0) this.used = 0; // nothing of it in use: start over, cache-warm
    else if (this.cur.buf.length - this.used < SLAB_MIN_READ) {
      this.cur.sealed = true;
      this.cur = this.free.pop() ?? this.newSlab();
      this.cur.sealed = false;
      this.used = 0;
    }
    return this.cur.buf.subarray(this.used);
  };

  private newSlab(): Slab {
    const slab: Slab = { buf: Buffer.allocUnsafeSlow(NBD_SLAB_BYTES), pending: 0, sealed: false };
    this.slabs.set(slab.buf.buffer, slab);
    return slab;
  }

  /** Called by the socket with the bytes just read into the region `next` gave. */
  onRead = (n: number, region: Uint8Array): boolean => {
    const chunk = Buffer.from(region.buffer, region.byteOffset, n);
    this.used += n;
    this.cur.pending += n;
    if (this.sink) return this.sink(chunk);
    this.early.push(chunk);
    return true;
  };

  attach(sink: (chunk: Buffer) => boolean): void {
    this.sink = sink;
    const early = this.early;
    this.early = [];
    for (const c of early) sink(c);
  }

  /** These bytes (views this reader handed out, or parts of them) are no longer used. Anything else is ignored. */
  release(b: Buffer): void {
    const slab = this.slabs.get(b.buffer);
    if (!slab) return;
    slab.pending -= b.length;
    if (slab.pending === 0 && slab.sealed) {
      slab.sealed = false;
      if (this.free.length < SLABS_KEPT) this.free.push(slab);
      else this.slabs.delete(slab.buf.buffer);
    }
  }
}

const slabReaders = new WeakMap<Duplex, SlabReader>();

/**
 * A socket accepted by net.Server, re-created to read into large slabs (Node's `onread` option, which
 * only sockets created by hand take; accepted ones are built by Node). Call it in the 'connection'
 * handler, before any data was read: the new socket takes over the connection's handle, the old one is
 * retired (destroyed without closing the connection). Anything else is returned as it is, and
 * serveNbdConnection then reads it through its 'data' events.
 */
export function nbdSocket(accepted: Duplex): Duplex {
  const old = accepted as net.Socket & { _handle?: { readStop?(): number; reading?: boolean } | null };
  const handle = old._handle;
  if (!(old instanceof net.Socket) || !handle || typeof handle.readStop !== 'function' || old.bytesRead > 0 || old.readableLength > 0) return accepted;
  const reader = new SlabReader();
  // Node started reading when it accepted the connection: stop, so the new socket can start again.
  handle.readStop();
  handle.reading = false;
  old._handle = null;
  // `handle` and `onread` are documented options of net.Socket and socket.connect(); the types only know them on connect().
  const socket = new net.Socket({ handle, allowHalfOpen: old.allowHalfOpen, readable: true, writable: true, onread: { buffer: reader.next, callback: reader.onRead } } as net.SocketConstructorOpts);
  old.destroy(); // no handle left: only its bookkeeping (the server's count of connections) ends
  slabReaders.set(socket, reader);
  return socket;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function optReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.allocUnsafe(20);
  h.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(type >>> 0, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
}

function transmissionFlags(e: NbdExport): number {
  const f = NBD_TFLAG.HAS_FLAGS | NBD_TFLAG.SEND_FLUSH | NBD_TFLAG.SEND_FUA | NBD_TFLAG.CAN_MULTI_CONN | NBD_TFLAG.SEND_CACHE;
  return e.readOnly ? f | NBD_TFLAG.READ_ONLY : f | NBD_TFLAG.SEND_TRIM | NBD_TFLAG.SEND_WRITE_ZEROES;
}

/**
 * Haggle over one connection, then serve requests until the client disconnects. Resolves when the
 * connection is over (never rejects: protocol violations close the connection).
 */
export async function serveNbdConnection(socket: Duplex, opts: NbdConnectionOptions): Promise<void> {
  const q = new ByteQueue(socket);
  const send = (b: Buffer): void => void socket.write(b);
  try {
    const hello = Buffer.allocUnsafe(18);
    NBD_MAGIC.copy(hello, 0);
    NBD_OPT_MAGIC.copy(hello, 8);
    hello.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    send(hello);
    const clientFlags = (await q.readOwned(4)).readUInt32BE(0);
    if ((clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) return void socket.destroy(); // unknown flags: spec says close
    const noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
    const exp = await haggle(q, send, opts, noZeroes);
    if (!exp) return void socket.end();
    if (opts.handOver?.wants(exp) && await handOver(q, socket, exp, opts.handOver)) return;
    await transmit(q, socket, exp, opts);
  } catch {
    socket.destroy();
  }
}

/**
 * Give the connection's transmission phase to `to` (see NbdConnectionOptions.handOver). False when the
 * socket has no descriptor of its own to give (a stream that is not a socket): the caller serves it.
 */
async function handOver(q: ByteQueue, socket: Duplex, exp: NbdExport, to: NonNullable<NbdConnectionOptions['handOver']>): Promise<boolean> {
  const s = socket as net.Socket & { _handle?: { fd?: number; readStop?(): number; reading?: boolean } | null };
  const handle = s._handle;
  if (!(socket instanceof net.Socket) || !handle || typeof handle.fd !== 'number' || handle.fd < 0 || typeof handle.readStop !== 'function') return false;
  // No more reads here: what the kernel holds past this point is the new owner's to read.
  handle.readStop();
  handle.reading = false;
  // The handshake's replies must reach the kernel before anyone else writes to the socket.
  while (s.writableLength > 0 && !s.destroyed) {
    await new Promise<void>((r) => {
      const done = (): void => {
        s.off('drain', done);
        s.off('close', done);
        r();
      };
      s.once('drain', done);
      s.once('close', done);
    });
  }
  if (s.destroyed || s._handle !== handle) return true; // the client went away meanwhile: nothing to serve
  try {
    to.take(exp, handle.fd, transmissionFlags(exp), q.drain());
  } finally {
    s.destroy(); // closes this side's descriptor only; the new owner holds its own duplicate
  }
  return true;
}

async function haggle(q: ByteQueue, send: (b: Buffer) => void, opts: NbdConnectionOptions, noZeroes: boolean): Promise<NbdExport | null> {
  for (;;) {
    const h = await q.readOwned(16);
    if (!h.subarray(0, 8).equals(NBD_OPT_MAGIC)) throw new Error('bad option magic');
    const option = h.readUInt32BE(8);
    const len = h.readUInt32BE(12);
    if (len > MAX_OPTION_BYTES) throw new Error('option too large');
    const data = await q.readOwned(len);
    switch (option) {
      case NBD_OPT.EXPORT_NAME: {
        const e = opts.lookup(data.toString('utf8'));
        if (!e) return null; // this option has no error reply: the spec says close
        const r = Buffer.alloc(noZeroes ? 10 : 134);
        r.writeBigUInt64BE(BigInt(e.size), 0);
        r.writeUInt16BE(transmissionFlags(e), 8);
        send(r);
        return e;
      }
      case NBD_OPT.ABORT:
        send(optReply(option, NBD_REP.ACK));
        return null;
      case NBD_OPT.LIST:
        if (len !== 0) {
          send(optReply(option, NBD_REP.ERR_INVALID));
          break;
        }
        for (const name of opts.list()) {
          const n = Buffer.from(name, 'utf8');
          send(optReply(option, NBD_REP.SERVER, Buffer.concat([u32(n.length), n])));
        }
        send(optReply(option, NBD_REP.ACK));
        break;
      case NBD_OPT.INFO:
      case NBD_OPT.GO: {
        const parsed = parseInfoRequest(data);
        if (!parsed) {
          send(optReply(option, NBD_REP.ERR_INVALID, Buffer.from('malformed NBD_OPT_INFO/GO request')));
          break;
        }
        const e = opts.lookup(parsed.name);
        if (!e) {
          send(optReply(option, NBD_REP.ERR_UNKNOWN, Buffer.from(`no export named "${parsed.name}"; try: ${opts.list().join(', ')}`)));
          break;
        }
        const exportInfo = Buffer.allocUnsafe(12);
        exportInfo.writeUInt16BE(NBD_INFO.EXPORT, 0);
        exportInfo.writeBigUInt64BE(BigInt(e.size), 2);
        exportInfo.writeUInt16BE(transmissionFlags(e), 10);
        send(optReply(option, NBD_REP.INFO, exportInfo));
        const bs = Buffer.allocUnsafe(14);
        bs.writeUInt16BE(NBD_INFO.BLOCK_SIZE, 0);
        bs.writeUInt32BE(1, 2);
        bs.writeUInt32BE(e.preferredBlockSize, 6);
        bs.writeUInt32BE(NBD_MAX_PAYLOAD, 10);
        send(optReply(option, NBD_REP.INFO, bs));
        if (parsed.requests.includes(NBD_INFO.NAME)) {
          const n = Buffer.from(e.name, 'utf8');
          const b = Buffer.allocUnsafe(2);
          b.writeUInt16BE(NBD_INFO.NAME, 0);
          send(optReply(option, NBD_REP.INFO, Buffer.concat([b, n])));
        }
        send(optReply(option, NBD_REP.ACK));
        if (option === NBD_OPT.GO) return e;
        break;
      }
      default:
        // STARTTLS, STRUCTURED_REPLY, meta contexts and anything newer: simple replies only, no TLS on a local socket.
        send(optReply(option, NBD_REP.ERR_UNSUP));
    }
  }
}

export function parseInfoRequest(data: Buffer): { name: string; requests: number[] } | null {
  if (data.length < 6) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > 4096 || 4 + nameLen + 2 > data.length) return null;
  const name = data.subarray(4, 4 + nameLen).toString('utf8');
  const n = data.readUInt16BE(4 + nameLen);
  if (data.length !== 4 + nameLen + 2 + 2 * n) return null;
  const requests: number[] = [];
  for (let k = 0; k < n; k++) requests.push(data.readUInt16BE(4 + nameLen + 2 + 2 * k));
  return { name, requests };
}

/**
 * The errno for a request this server must refuse before doing anything, or 0. Flags are checked
 * against what this connection negotiated: FUA (advertised on every export) is valid on any command;
 * NO_HOLE only on WRITE_ZEROES; FAST_ZERO, DF and REQ_ONE never (no SEND_FAST_ZERO, no structured
 * replies, no BLOCK_STATUS). Lengths were checked against NBD_MAX_PAYLOAD where a payload follows.
 */
function checkRequest(exp: NbdExport, tflags: number, type: number, flags: number, offset: number, length: number): number {
  let allowed = tflags & NBD_TFLAG.SEND_FUA ? NBD_CMD_FLAG.FUA : 0;
  switch (type) {
    case NBD_CMD.READ:
      if (tflags & NBD_TFLAG.SEND_DF) allowed |= NBD_CMD_FLAG.DF;
      break;
    case NBD_CMD.WRITE_ZEROES:
      allowed |= NBD_CMD_FLAG.NO_HOLE; // must be accepted wherever WRITE_ZEROES is; zeros are written, never punched
      if (tflags & NBD_TFLAG.SEND_FAST_ZERO) allowed |= NBD_CMD_FLAG.FAST_ZERO;
      break;
    case NBD_CMD.WRITE:
    case NBD_CMD.FLUSH:
    case NBD_CMD.TRIM:
    case NBD_CMD.CACHE:
      break;
    default:
      return NBD_ERRNO.EINVAL; // unknown, or not negotiated (BLOCK_STATUS)
  }
  if ((flags & ~allowed) !== 0) return NBD_ERRNO.EINVAL;
  if (type === NBD_CMD.FLUSH) return offset === 0 && length === 0 ? 0 : NBD_ERRNO.EINVAL; // reserved fields
  // A simple reply carries `length` bytes: above the advertised maximum it cannot be sent.
  if (type === NBD_CMD.READ && length > NBD_MAX_PAYLOAD) return NBD_ERRNO.EINVAL;
  const writes = type === NBD_CMD.WRITE || type === NBD_CMD.WRITE_ZEROES || type === NBD_CMD.TRIM;
  if (writes && exp.readOnly) return NBD_ERRNO.EPERM;
  // offset is a Number: past 2^53 it rounds, but stays above any export size.
  if (offset + length > exp.size) return type === NBD_CMD.WRITE || type === NBD_CMD.WRITE_ZEROES ? NBD_ERRNO.ENOSPC : NBD_ERRNO.EINVAL;
  return 0;
}

async function transmit(q: ByteQueue, socket: Duplex, exp: NbdExport, opts: NbdConnectionOptions): Promise<void> {
  const tflags = transmissionFlags(exp);
  const running = new Set<Promise<void>>();
  // Bytes of requests being handled (payloads, reply buffers not yet given to the socket); with the
  // socket's queue and the pending small replies, what the budget bounds.
  let held = 0;
  let waiter: (() => void) | null = null;
  const wake = (): void => {
    const w = waiter;
    waiter = null;
    w?.();
  };
  socket.on('drain', wake);
  socket.on('close', wake);
  // Replies without data (writes, flushes, errors) are gathered and sent once per turn of the event
  // loop: one 16-byte write per request measured as a large share of the write path's time.
  let small: Buffer[] = [];
  const sendSmall = (): void => {
    const list = small;
    small = [];
    if (list.length > 0 && !socket.destroyed) socket.write(list.length === 1 ? list[0]! : Buffer.concat(list));
  };
  const reply = (handle: Buffer, errno: number, data?: Buffer): void => {
    const h = Buffer.allocUnsafe(16);
    h.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(errno, 4);
    handle.copy(h, 8);
    if (data && errno === 0) {
      sendSmall(); // keep replies in the order they were produced
      socket.cork();
      socket.write(h);
      socket.write(data, wake);
      process.nextTick(() => socket.uncork());
      return;
    }
    if (small.push(h) === 1) setImmediate(sendSmall);
  };
  const fail = (handle: Buffer, err: unknown): void => {
    const errno = err instanceof NbdIoError ? err.errno : NBD_ERRNO.EIO;
    opts.onError?.(err, errno);
    reply(handle, errno);
  };
  const track = (p: Promise<void>, cost: number): void => {
    held += cost;
    running.add(p);
    void p.finally(() => {
      held -= cost;
      running.delete(p);
      wake();
    });
  };
  // A read whose data is not exactly the length asked would put the stream out of step: EIO instead.
  const answer = (handle: Buffer, out: Buffer | void, expect: number): void => {
    if (out && out.length !== expect) return fail(handle, new NbdIoError(NBD_ERRNO.EIO, `export returned ${out.length} bytes for a read of ${expect}`));
    reply(handle, 0, out ?? undefined);
  };
  /** `cost`: bytes the request holds until it is answered (its payload, or its reply's data). */
  /** `after`: called once the work is over (its inputs no longer used), before the answer. */
  const run = (handle: Buffer, work: () => Promise<Buffer | void> | Buffer | void, expect = 0, cost = 0, after?: () => void): void => {
    let out: Promise<Buffer | void> | Buffer | void;
    try {
      out = work();
    } catch (err) {
      after?.();
      return fail(handle, err);
    }
    // Most requests finish synchronously (page-cache I/O): answer at once, no promise to track.
    if (!(out instanceof Promise)) {
      after?.();
      return answer(handle, out, expect);
    }
    track(out.then((b) => {
      after?.();
      answer(handle, b, expect);
    }, (err: unknown) => {
      after?.();
      fail(handle, err);
    }), cost);
  };
  // Read replies are built in reused buffers: header and data in one write, no garbage per request.
  const pool = new ReplyPool();
  const readReply = (handle: Buffer, offset: number, length: number): void => {
    const buf = pool.take(16 + length);
    buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
    buf.writeUInt32BE(0, 4);
    handle.copy(buf, 8);
    const send = (): void => {
      sendSmall();
      // From here the socket's queue counts these bytes; the callback frees them once the kernel has them.
      socket.write(buf, () => {
        pool.give(buf);
        wake();
      });
    };
    let r: Promise<void> | void;
    try {
      r = exp.readInto!(offset, length, buf, 16);
    } catch (err) {
      pool.give(buf);
      return fail(handle, err);
    }
    if (!(r instanceof Promise)) return send();
    track(r.then(send, (err: unknown) => {
      pool.give(buf);
      fail(handle, err);
    }), buf.length);
  };
  const overBudget = (): boolean => held + socket.writableLength + 16 * small.length > NBD_CONNECTION_BUDGET;
  try {
    for (;;) {
      if (running.size >= MAX_IN_FLIGHT || overBudget()) {
        // Stop taking requests (their bytes wait in the socket, and the ByteQueue pauses it) until replies
        // reach the kernel or requests finish. A client that never reads its replies stays here.
        opts.onBackpressure?.(true);
        while (running.size >= MAX_IN_FLIGHT || overBudget()) {
          if (socket.destroyed) return;
          if (small.length > 0) {
            sendSmall(); // gathered replies must reach the socket before we wait for it to drain
            continue;
          }
          await new Promise<void>((r) => {
            waiter = r;
          });
        }
        opts.onBackpressure?.(false);
      }
      const h = await q.read(28);
      const magic = h.readUInt32BE(0);
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const handle = Buffer.from(h.subarray(8, 16));
      const offset = Number(h.readBigUInt64BE(16));
      const length = h.readUInt32BE(24);
      q.release(h);
      if (magic !== NBD_REQUEST_MAGIC) throw new Error('bad request magic');
      if (type === NBD_CMD.DISC) {
        // No reply whatever its flags (nbdkit does the same): finish what is in flight, then close.
        await Promise.allSettled([...running]);
        sendSmall();
        socket.end();
        return;
      }
      const fua = (flags & NBD_CMD_FLAG.FUA) !== 0;
      if (type === NBD_CMD.WRITE) {
        // The payload follows whatever we answer, so it is read even when refused (the stream stays in
        // step). Above the maximum we would have to read and drop up to 4 GiB: the spec lets us close.
        if (length > NBD_MAX_PAYLOAD) throw new Error('write payload too large');
        const got = exp.writev ? q.readChunks(length) : q.read(length);
        const payload = got instanceof Promise ? await got : got;
        const errno = checkRequest(exp, tflags, type, flags, offset, length);
        // The payload's bytes are given back once the write is over, whichever way it ends.
        const done = (): void => q.release(payload);
        if (errno !== 0) {
          done();
          reply(handle, errno);
        } else if (Array.isArray(payload)) run(handle, () => (length === 0 ? undefined : exp.writev!(offset, payload, fua)), 0, pinnedBytes(payload, length), done);
        else run(handle, () => (length === 0 ? undefined : exp.write(offset, payload, fua)), 0, pinnedBytes([payload], length), done);
        continue;
      }
      const errno = checkRequest(exp, tflags, type, flags, offset, length);
      if (errno !== 0) {
        reply(handle, errno);
        continue;
      }
      switch (type) {
        case NBD_CMD.READ:
          if (exp.readInto && length > 0) readReply(handle, offset, length);
          else run(handle, () => (length === 0 ? undefined : exp.read(offset, length)), length, 16 + length);
          break;
        case NBD_CMD.FLUSH: {
          // Covers every write answered before it arrived; wait for those still running too (stricter, simpler).
          const before = [...running];
          run(handle, async () => {
            await Promise.allSettled(before);
            await exp.flush();
          });
          break;
        }
        case NBD_CMD.TRIM:
        case NBD_CMD.WRITE_ZEROES:
          // No payload travels, so any length up to the export's end is taken (the spec allows it).
          run(handle, () => (length === 0 ? undefined : exp.zero(offset, length, fua, type === NBD_CMD.TRIM)));
          break;
        case NBD_CMD.CACHE: {
          // A hint: warm (or, streaming, fetch) at most one maximum-size read of it, counted while it runs.
          const n = Math.min(length, NBD_MAX_PAYLOAD);
          run(handle, async () => void (n === 0 ? undefined : await exp.read(offset, n)), 0, n);
          break;
        }
      }
    }
  } finally {
    socket.off('drain', wake);
    socket.off('close', wake);
  }
}

/**
 * What a payload keeps alive while its request runs: the memory its chunks are views of (a slab, or
 * the stream's buffers), each counted once; at least its length.
 */
function pinnedBytes(chunks: Buffer[], length: number): number {
  if (chunks.length === 1) return Math.max(length, chunks[0]!.buffer.byteLength);
  const seen = new Set<ArrayBufferLike>();
  let n = 0;
  for (const c of chunks) {
    if (seen.has(c.buffer)) continue;
    seen.add(c.buffer);
    n += c.buffer.byteLength;
  }
  return Math.max(length, n);
}

/** Reply buffers by size, reused once the socket has sent them (bounded: at most 64 MiB kept). */
class ReplyPool {
  private readonly free = new Map<number, Buffer[]>();
  private kept = 0;

  take(size: number): Buffer {
    const list = this.free.get(size);
    const b = list?.pop();
    if (b) {
      this.kept -= size;
      return b;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  give(b: Buffer): void {
    if (this.kept + b.length > 64 * 1024 * 1024) return;
    const list = this.free.get(b.length);
    if (list) list.push(b);
    else this.free.set(b.length, [b]);
    this.kept += b.length;
  }
}
