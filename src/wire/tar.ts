// Tar framing of block transfers, both directions. Bounded: one entry in memory at a time, with a
// size limit checked from the header before any byte is buffered; reading stops at the end of the
// archive and at the first error.
import { Readable } from 'node:stream';
import { createRequire } from 'node:module';
import { CarryonError } from '../errors/index.js';
import { isAllZero } from '../hash/index.js';

/** A tar archive ends with two 512-byte zero records. */
const END_BYTES = 1024;

const require = createRequire(import.meta.url);
const tar = require('tar-stream') as typeof import('tar-stream');

export interface TarEntry {
  name: string;
  data: Buffer;
}

/** A tar stream of the entries, produced as the consumer reads (backpressure through tar-stream). */
export function packEntries(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Readable {
  const pack = tar.pack();
  (async () => {
    for await (const e of entries) {
      if (pack.destroyed) return; // the reader went away (a closed connection): stop producing
      await new Promise<void>((resolve, reject) => {
        const sink = pack.entry({ name: e.name, size: e.data.length, mode: 0o644, mtime: new Date(0) }, e.data, (err) => (err ? reject(err) : resolve()));
        // The callback reports a failed entry; without a listener the sink's own 'error' would crash the process.
        sink.on('error', () => undefined);
      });
    }
    pack.finalize();
  })().catch((err: Error) => pack.destroy(err));
  return Readable.from(pack as unknown as AsyncIterable<Buffer>, { objectMode: false });
}

export interface UnpackOptions {
  /** Stop with PAYLOAD_TOO_LARGE once the archive passes this many bytes (headers, data and padding). */
  maxTotalBytes?: number;
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
  const src = new ByteSource(input as Readable);
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

const RECORD = 512;
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
 * needs, and never past the point where reading stopped.
 */
class ByteSource {
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

  constructor(private readonly s: Readable) {
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
    while (this.heldBytes < n) {
      if (this.error !== null) throw streamError(this.error);
      const c = this.s.read() as Buffer | string | null;
      if (c !== null) {
        const buf = typeof c === 'string' ? Buffer.from(c) : c;
        this.held.push(buf);
        this.heldBytes += buf.length;
        continue;
      }
      if (this.ended || this.s.readableEnded) {
        if (this.s.errored) throw streamError(this.s.errored);
        throw new CarryonError('TAR_INVALID', `tar stream is truncated: it ends inside ${what}`);
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    const all = this.held.length === 1 ? this.held[0]! : Buffer.concat(this.held, this.heldBytes);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.held = rest.length > 0 ? [rest] : [];
    this.heldBytes = rest.length;
    // A block that is a small slice of a large read would pin the whole read: copy it out.
    return out.length < all.length / 2 ? Buffer.from(out) : out;
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
