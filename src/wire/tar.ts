// Tar framing of block transfers, both directions. Bounded: one entry in memory at a time, with a
// size limit checked from the header before any byte is buffered; reading stops at the end of the
// archive and at the first error.
import { Readable, type Writable } from 'node:stream';
import { CarryonError } from '../errors/index.js';
import { isAllZero } from '../hash/index.js';
import type { BufferPool } from './buffer-pool.js';

/** Tar's unit: headers and padded entry data come in records of 512 bytes. */
const RECORD = 512;
/** A tar archive ends with two 512-byte zero records. */
const END_BYTES = 1024;


export interface TarEntry {
  name: string;
  data: Buffer;
}

/**
 * The chunk size of a check-out's block answer (writeEntriesChunked): ten 64 KiB blocks' frames to a
 * stream write amortise its cost, and a server that dies loses at most this much already read (the
 * crash tests resume from what arrived).
 */
export const PACK_CHUNK_BYTES = 256 * 1024;
/** The first chunk of a chunked answer without a pool; each next one is twice as large, up to `max`. */
const FIRST_CHUNK = 64 * 1024;

/**
 * A tar stream of the entries, produced as the consumer reads (backpressure through Readable.from).
 * Headers are our own ustar encoding (the bytes tar-stream wrote: mode 644, uid/gid 0, mtime 0): a
 * check-out's answer of 64 KiB blocks was three stream writes and a 512-byte allocation per block
 * through tar-stream, which cost the server more than copying the bytes once into chunks does
 * (writeEntriesChunked, below; docs/performance.md, cold check-out). Here each entry goes out as it
 * comes (header, bytes, padding; the bytes not copied: the producer must not change them), which an
 * upload wants: a chunk would wait until full, and a killed upload must have sent what it could. A name ustar
 * cannot hold (over 100 bytes with no '/' to split at, non-ASCII) fails: unpackEntries reads no other
 * kind of header.
 */
export function packEntries(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Readable {
  return Readable.from(packEach(entries), { objectMode: false });
}

async function* packEach(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): AsyncGenerator<Buffer> {
  for await (const e of entries) {
    const size = e.data.length;
    const pad = Math.ceil(size / RECORD) * RECORD - size;
    yield encodeHeader(e.name, size);
    if (size > 0) yield e.data;
    if (pad > 0) yield ZERO_RECORD.subarray(0, pad);
  }
  yield Buffer.alloc(END_BYTES);
}

/**
 * The bytes `packEntries(entries)` produces, gathered into chunks of up to `max` bytes and written to `out` as it drains, from chunk
 * buffers that are used again once `out` has written them (its write callback): a cold check-out's
 * answer took ~1,100 new 256 KiB chunks per GiB through packEntries, memory outside V8's heap whose
 * growth set off most of the server's garbage collections (docs/performance.md, cold check-out).
 * Each entry's bytes are copied into a chunk before the next entry is asked for, so a producer may reuse
 * them then. With `pool` (buffers of `max` bytes), chunks are taken from it and go back to it once
 * written; without, chunks grow from 64 KiB and are reused within this answer. `out` must be done with
 * a chunk's bytes when it calls its write back: a socket or an HTTP response is (the kernel has them), a
 * PassThrough is not (it hands the same buffer on). Ends `out`. Fails with the stream's error, or ERR_STREAM_PREMATURE_CLOSE when `out` closes
 * first (the entries are abandoned: their generator's finally blocks run).
 */
export async function writeEntriesChunked(out: Writable, entries: AsyncIterable<TarEntry> | Iterable<TarEntry>, max: number, pool?: BufferPool): Promise<void> {
  // Chunks come from `pool` when given (its buffers of `max` bytes, shared by all answers), else from a free list of this answer's own.
  const own: Buffer[] = [];
  const give = (c: Buffer): void => void (pool && c.length === pool.size ? pool.give(c) : own.push(c));
  let chunk: Buffer | null = null;
  let used = 0;
  let cap = Math.min(FIRST_CHUNK, max);
  const send = async (buf: Buffer, reuse: Buffer | null): Promise<void> => {
    if (out.destroyed || out.writableEnded) throw prematureClose();
    const more = out.write(buf, reuse ? (err?: Error | null) => void (err ? undefined : give(reuse)) : undefined);
    if (!more) await drained(out);
  };
  const take = (need: number): Buffer => {
    const c = own.pop();
    if (c && c.length >= need) return c;
    if (pool && pool.size === max) return pool.take();
    const made = Buffer.allocUnsafe(Math.max(cap, need));
    cap = Math.min(cap * 2, max);
    return made;
  };
  for await (const e of entries) {
    const size = e.data.length;
    const need = RECORD + Math.ceil(size / RECORD) * RECORD;
    if (chunk && used + need > chunk.length) {
      const c = chunk;
      chunk = null;
      if (used > 0) await send(c.subarray(0, used), c);
    }
    if (need > max) {
      await send(encodeHeader(e.name, size), null);
      await send(Buffer.from(e.data), null); // the producer may reuse its bytes once asked for the next entry
      if (need - RECORD > size) await send(ZERO_RECORD.subarray(0, need - RECORD - size), null);
      continue;
    }
    if (!chunk) {
      chunk = take(need);
      used = 0;
    }
    encodeHeader(e.name, size, chunk, used);
    e.data.copy(chunk, used + RECORD);
    chunk.fill(0, used + RECORD + size, used + need);
    used += need;
  }
  if (!chunk || used + END_BYTES > chunk.length) {
    if (chunk && used > 0) await send(chunk.subarray(0, used), null);
    chunk = Buffer.allocUnsafe(END_BYTES);
    used = 0;
  }
  chunk.fill(0, used, used + END_BYTES);
  if (out.destroyed) throw prematureClose();
  await new Promise<void>((resolve, reject) => {
    const onClose = (): void => reject(prematureClose());
    out.once('error', reject);
    out.once('close', onClose);
    out.end(chunk!.subarray(0, used + END_BYTES), () => {
      out.off('error', reject);
      out.off('close', onClose);
      resolve();
    });
  });
}

function prematureClose(): Error {
  return Object.assign(new Error('the stream closed before the answer was written'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}

/** Until `out` wants more ('drain'); fails when it closes or errors first. */
function drained(out: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | null): void => {
      out.off('drain', onDrain);
      out.off('close', onClose);
      out.off('error', onError);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => done(null);
    const onClose = (): void => done(prematureClose());
    const onError = (err: Error): void => done(err);
    out.on('drain', onDrain);
    out.on('close', onClose);
    out.on('error', onError);
  });
}

const ZERO_RECORD = Buffer.alloc(RECORD);

/**
 * A ustar header of a regular file (mode 0644, owner 0, mtime 0), as tar-stream encoded it: written
 * into `into` at `at` when given (the 512 bytes there are overwritten), else into a new buffer.
 */
export function encodeHeader(fullName: string, size: number, into?: Buffer, at = 0): Buffer {
  let name = fullName;
  let prefix = '';
  if (!/^[\x20-\x7e]*$/.test(name)) throw new CarryonError('INTERNAL', `tar entry name ${JSON.stringify(name.slice(0, 200))} is not printable ASCII`);
  while (name.length > 100) {
    const i = name.indexOf('/');
    if (i === -1) break;
    prefix += prefix ? `/${name.slice(0, i)}` : name.slice(0, i);
    name = name.slice(i + 1);
  }
  if (name.length > 100 || prefix.length > 155) throw new CarryonError('INTERNAL', `tar entry name ${JSON.stringify(fullName.slice(0, 200))} does not fit a ustar header`);
  if (!Number.isSafeInteger(size) || size < 0 || size > 0o77777777777) throw new CarryonError('INTERNAL', `tar entry of ${size} bytes does not fit a ustar header`);
  const b = into ? into.subarray(at, at + RECORD) : Buffer.allocUnsafe(RECORD);
  b.fill(0);
  b.write(name, 0, 'latin1');
  b.write('000644 \0', 100, 'latin1');
  b.write('000000 \0', 108, 'latin1');
  b.write('000000 \0', 116, 'latin1');
  b.write(`${size.toString(8).padStart(11, '0')} `, 124, 'latin1');
  b.write('00000000000 ', 136, 'latin1');
  b[156] = 0x30; // '0': a regular file
  b.write('ustar\0' + '00', 257, 'latin1');
  b.write('000000 \0', 329, 'latin1');
  b.write('000000 \0', 337, 'latin1');
  if (prefix) b.write(prefix, 345, 'latin1');
  let sum = 8 * 0x20;
  for (let i = 0; i < 148; i++) sum += b[i]!;
  for (let i = 156; i < RECORD; i++) sum += b[i]!;
  b.write(`${sum.toString(8).padStart(6, '0')} `, 148, 'latin1'); // then a NUL, as tar-stream
  return b;
}

export interface UnpackOptions {
  /** Stop with PAYLOAD_TOO_LARGE once the archive passes this many bytes (headers, data and padding). */
  maxTotalBytes?: number;
  /**
   * The consumer keeps no entry's data after its onEntry settles: entries may be views of the stream's
   * own chunks. Otherwise an entry that is a small part of a larger chunk is copied out, so a kept
   * entry does not pin the whole chunk in memory.
   */
  transient?: boolean;
}

/**
 * Read a tar stream entry by entry, with our own reader (tar-stream's skips zero blocks and reads on
 * after an error, so an endless or hostile stream kept it busy). Only regular files are accepted; a
 * truncated stream (also one cut between entries) or a malformed header fails with TAR_INVALID, an
 * entry over `maxEntryBytes` or an archive over `maxTotalBytes` with PAYLOAD_TOO_LARGE, both from the
 * header, before its bytes are buffered. Errors thrown by `onEntry` pass through unchanged.
 * Reading stops at the end-of-archive blocks and at the first error: the rest of the input is left
 * unread (never destroyed, so an HTTP server can still answer on the connection; the caller decides).
 */
export async function unpackEntries(
  input: NodeJS.ReadableStream,
  maxEntryBytes: number,
  onEntry: (e: TarEntry) => Promise<void> | void,
  opts: UnpackOptions = {},
): Promise<number> {
  const src = new ByteSource(input as Readable, opts.transient === true);
  const maxTotal = opts.maxTotalBytes ?? Number.MAX_SAFE_INTEGER;
  let total = 0;
  let count = 0;
  try {
    for (;;) {
      const block = await src.exactly(RECORD, 'a header');
      if (isAllZero(block)) {
        // The end: a second zero block. Anything after it is not read.
        if (!isAllZero(await src.exactly(RECORD, 'the end-of-archive blocks'))) throw new CarryonError('TAR_INVALID', 'tar stream has a lone zero block');
        return count;
      }
      const h = parseHeader(block);
      if (h.size > maxEntryBytes) throw new CarryonError('PAYLOAD_TOO_LARGE', `tar entry ${JSON.stringify(h.name)} is ${h.size} bytes, over the ${maxEntryBytes} limit`, { max: maxEntryBytes });
      const padded = Math.ceil(h.size / RECORD) * RECORD;
      total += RECORD + padded;
      if (total + END_BYTES > maxTotal) throw new CarryonError('PAYLOAD_TOO_LARGE', `tar stream is over the ${maxTotal} byte limit`, { max: maxTotal });
      const data = await src.exactly(h.size, `entry ${JSON.stringify(h.name)}`);
      if (padded > h.size) await src.exactly(padded - h.size, `entry ${JSON.stringify(h.name)}`);
      await onEntry({ name: h.name, data });
      count++;
    }
  } finally {
    src.release();
  }
}

const TYPE_FILE = new Set([0x30, 0x00]); // '0', and NUL from pre-POSIX tars

/** A ustar (or GNU) header of a regular file: its name and size; anything else is TAR_INVALID. */
function parseHeader(b: Buffer): { name: string; size: number } {
  const stored = octal(b.subarray(148, 156), 'checksum');
  let sum = 0;
  for (let i = 0; i < RECORD; i++) sum += i >= 148 && i < 156 ? 0x20 : b[i]!;
  if (sum !== stored) throw new CarryonError('TAR_INVALID', 'tar header checksum does not match (not a tar stream, or a damaged one)');
  const ustar = b.toString('latin1', 257, 263) === 'ustar\0'; // POSIX: a name prefix at 345; GNU ('ustar  ') has none
  const name = (ustar && b[345] !== 0 ? `${cstring(b.subarray(345, 500))}/` : '') + cstring(b.subarray(0, 100));
  if (!TYPE_FILE.has(b[156]!)) throw new CarryonError('TAR_INVALID', `tar entry ${JSON.stringify(name.slice(0, 200))} is not a regular file`);
  return { name, size: octal(b.subarray(124, 136), 'size') };
}

function cstring(field: Buffer): string {
  const end = field.indexOf(0);
  return field.toString('utf8', 0, end < 0 ? field.length : end);
}

/** An octal number field (leading spaces or zeros, ended by NUL or space); base-256 sizes are refused. */
function octal(field: Buffer, what: string): number {
  const text = field.toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (!/^[0-7]{1,12}$/.test(text)) throw new CarryonError('TAR_INVALID', `tar header has a malformed ${what} field`);
  return parseInt(text, 8);
}

/**
 * Exact-length reads from a byte stream in paused mode: the stream is read only as fast as the tar
 * needs, and never past the point where reading stopped. Each read asks the stream for exactly the
 * bytes wanted (`read(n)`), so bytes inside one of its chunks come out as a view (no copy), and only
 * bytes that span chunks are joined; `read()` without a size joined everything buffered, which cost a
 * check-out worker ~0.1-0.2 s of copies per GiB (docs/performance.md, cold check-out).
 */
class ByteSource {
  /** Object-mode streams only (their reads return whole objects): bytes read but not yet taken. */
  private held: Buffer[] = [];
  private heldBytes = 0;
  private wake: (() => void) | null = null;
  private ended = false;
  private error: unknown = null;
  private readonly onReadable = (): void => this.poke();
  private readonly onEnd = (): void => {
    this.ended = true;
    this.poke();
  };
  private readonly onError = (err: unknown): void => {
    this.error ??= err;
    this.poke();
  };
  private readonly onClose = (): void => {
    this.ended = true;
    this.poke();
  };

  constructor(private readonly s: Readable, private readonly transient: boolean) {
    s.on('readable', this.onReadable);
    s.on('end', this.onEnd);
    s.on('error', this.onError);
    s.on('close', this.onClose);
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** The next `n` bytes; TAR_INVALID if the stream ends first. */
  async exactly(n: number, what: string): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    const objects = this.s.readableObjectMode;
    for (;;) {
      if (this.error !== null) throw streamError(this.error);
      if (objects && this.heldBytes >= n) return this.keep(this.takeHeld(n));
      // Bytes: n when the stream holds them, fewer (what is left) once it has ended, else null.
      // Objects: the next one, whatever its size.
      const c = this.s.read(objects ? undefined : n) as Buffer | string | null;
      if (c !== null) {
        const buf = typeof c === 'string' ? Buffer.from(c) : c;
        if (objects) {
          this.held.push(buf);
          this.heldBytes += buf.length;
          continue;
        }
        if (buf.length < n) break;
        return this.keep(buf);
      }
      if (this.ended || this.s.readableEnded) break;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    if (this.error !== null) throw streamError(this.error);
    if (this.s.errored) throw streamError(this.s.errored);
    throw new CarryonError('TAR_INVALID', `tar stream is truncated: it ends inside ${what}`);
  }

  private takeHeld(n: number): Buffer {
    const all = this.held.length === 1 ? this.held[0]! : Buffer.concat(this.held, this.heldBytes);
    const rest = all.subarray(n);
    this.held = rest.length > 0 ? [rest] : [];
    this.heldBytes = rest.length;
    return all.subarray(0, n);
  }

  /** A small slice of a large read would pin the whole read in a kept entry: copy it out (unless transient). */
  private keep(buf: Buffer): Buffer {
    return !this.transient && buf.length < buf.buffer.byteLength / 2 ? Buffer.from(buf) : buf;
  }

  /** Stop listening; bytes not yet taken stay in the stream (or are dropped with this reader). */
  release(): void {
    this.s.off('readable', this.onReadable);
    this.s.off('end', this.onEnd);
    this.s.off('close', this.onClose);
    // A later error (the peer going away while nobody reads) must not become an uncaught one.
    this.s.off('error', this.onError);
    this.s.on('error', ignore);
  }
}

function ignore(): void {}

function streamError(err: unknown): CarryonError {
  if (err instanceof CarryonError) return err;
  return new CarryonError('TAR_INVALID', `tar stream is invalid: ${(err as Error)?.message ?? String(err)}`, {}, err);
}
