// Delta application: rebuild the new version from a random-access base and a librsync delta. The delta
// is untrusted: every command is checked before it acts, COPY against the base's bounds, every length
// against the output limit, and nothing is allocated in proportion to a length the delta claims.
import type { FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { CarryonError } from '../errors/index.js';
import { INDEX_WIDTH, MAX_IMMEDIATE_LITERAL, OP_COPY_N1_N1, OP_END, OP_LITERAL_N1, OP_RESERVED_FIRST, RS_DELTA_MAGIC } from './format.js';
import { asBuffer, chunksOf, type ByteSource } from './source.js';

/** A base that can be read at any offset: a whole buffer, or an open file. */
export type RandomAccessBase = Uint8Array | FileHandle;

export interface ApplyDeltaOptions {
  /** Fail with PAYLOAD_TOO_LARGE rather than write more than this many bytes. Default: no limit. */
  maxOutputBytes?: number;
}

/** Output is written in pieces of up to this size; a COPY from a file is read in pieces this size. */
const OUT_CHUNK = 64 * 1024;
const FILE_READ_CHUNK = 1024 * 1024;

function corrupt(why: string, data: Record<string, unknown> = {}): CarryonError {
  return new CarryonError('BAD_REQUEST', `rdiff delta is invalid: ${why}`, data);
}

async function* only(data: Uint8Array): AsyncGenerator<Uint8Array, void, undefined> {
  if (data.length > 0) yield data;
}

/** The delta, read a chunk at a time, with the offset of the next byte for error messages. */
class DeltaReader {
  cur: Uint8Array = new Uint8Array(0);
  pos = 0;
  private before = 0; // delta bytes in chunks before `cur`
  private readonly it: AsyncIterator<Uint8Array>;

  constructor(src: ByteSource) {
    this.it = (src instanceof Uint8Array ? only(src) : chunksOf(src))[Symbol.asyncIterator]();
  }

  get offset(): number {
    return this.before + this.pos;
  }

  /** True when a byte is available at cur[pos]; false at the end of the delta. */
  async more(): Promise<boolean> {
    while (this.pos >= this.cur.length) {
      const r = await this.it.next();
      if (r.done) return false;
      this.before += this.cur.length;
      this.cur = r.value;
      this.pos = 0;
    }
    return true;
  }

  /** A big-endian unsigned integer of `width` bytes; one beyond 2^53 is rejected as absurd. */
  async uint(width: number, what: string): Promise<number> {
    let v = 0;
    for (let i = 0; i < width; i++) {
      if (this.pos >= this.cur.length && !(await this.more())) throw corrupt(`truncated inside a command's ${what}`, { offset: this.offset });
      v = v * 256 + this.cur[this.pos++]!;
    }
    if (!Number.isSafeInteger(v)) throw corrupt(`absurd ${what} ${v}`, { offset: this.offset });
    return v;
  }

  async close(): Promise<void> {
    await this.it.return?.();
  }
}

/** The output: small pieces gathered into OUT_CHUNK buffers, written with back-pressure. */
class OutputWriter {
  bytes = 0;
  private pending: Buffer[] = [];
  private buf = Buffer.allocUnsafe(OUT_CHUNK);
  private used = 0;

  constructor(
    private readonly out: Writable,
    private readonly max: number,
  ) {}

  /** Reserve `n` more output bytes against the limit. */
  claim(n: number): void {
    if (this.bytes + n > this.max) {
      throw new CarryonError('PAYLOAD_TOO_LARGE', `rdiff delta output exceeds the ${this.max}-byte limit`, { limit: this.max });
    }
    this.bytes += n;
  }

  put(src: Uint8Array, start: number, end: number): void {
    if (end - start >= OUT_CHUNK / 2) {
      this.cut();
      this.pending.push(asBuffer(src).subarray(start, end));
      return;
    }
    while (start < end) {
      const n = Math.min(end - start, OUT_CHUNK - this.used);
      this.buf.set(src.subarray(start, start + n), this.used);
      this.used += n;
      start += n;
      if (this.used === OUT_CHUNK) this.cut();
    }
  }

  get full(): boolean {
    return this.pending.length > 0;
  }

  private cut(): void {
    if (this.used === 0) return;
    this.pending.push(this.buf.subarray(0, this.used));
    this.buf = Buffer.allocUnsafe(OUT_CHUNK);
    this.used = 0;
  }

  async flush(all = false): Promise<void> {
    if (all) this.cut();
    const pieces = this.pending;
    this.pending = [];
    for (const piece of pieces) {
      if (!this.out.write(piece)) await drained(this.out);
    }
  }
}

function drained(out: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: unknown): void => {
      out.off('drain', onDrain);
      out.off('error', onError);
      out.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => done();
    const onError = (err: unknown): void => done(err);
    const onClose = (): void => done(new CarryonError('IO_ERROR', 'rdiff output closed before the delta was applied'));
    out.on('drain', onDrain);
    out.on('error', onError);
    out.on('close', onClose);
    if (out.destroyed) onClose();
  });
}

/** Copies base ranges into the output. */
interface BaseReader {
  readonly size: number;
  copy(w: OutputWriter, pos: number, len: number): Promise<void>;
}

async function openBase(base: RandomAccessBase): Promise<BaseReader> {
  if (base instanceof Uint8Array) {
    return {
      size: base.length,
      async copy(w, pos, len) {
        w.put(base, pos, pos + len);
        if (w.full) await w.flush();
      },
    };
  }
  const size = (await base.stat()).size;
  return {
    size,
    async copy(w, pos, len) {
      while (len > 0) {
        const n = Math.min(len, FILE_READ_CHUNK);
        const piece = Buffer.allocUnsafe(n);
        let got = 0;
        while (got < n) {
          const { bytesRead } = await base.read(piece, got, n - got, pos + got);
          if (bytesRead === 0) throw new CarryonError('IO_ERROR', `rdiff base file ended at ${pos + got} bytes; it was ${size} when the patch began`, { size });
          got += bytesRead;
        }
        w.put(piece, 0, n);
        await w.flush();
        pos += n;
        len -= n;
      }
    },
  };
}

/**
 * Apply a librsync delta to `base`, writing the new version to `out` (with back-pressure), then end
 * `out` and wait until it has finished. A malformed, truncated or hostile delta (bad magic, reserved
 * command, zero or absurd length, COPY outside the base, bytes after END) fails with BAD_REQUEST, more
 * output than `maxOutputBytes` with PAYLOAD_TOO_LARGE; `out` is then left open with part of the output
 * written, for the caller to destroy and discard. Memory stays at a few output chunks whatever the
 * delta claims.
 */
export async function applyDelta(base: RandomAccessBase, delta: ByteSource, out: Writable, opts: ApplyDeltaOptions = {}): Promise<{ bytes: number }> {
  const max = opts.maxOutputBytes ?? Number.MAX_SAFE_INTEGER;
  const b = await openBase(base);
  const r = new DeltaReader(delta);
  const w = new OutputWriter(out, max);
  try {
    if (!(await r.more())) throw corrupt('empty', { offset: 0 });
    const magic = await r.uint(4, 'magic');
    if (magic !== RS_DELTA_MAGIC) throw corrupt(`magic 0x${magic.toString(16).padStart(8, '0')} is not RS_DELTA_MAGIC`, { magic });
    for (;;) {
      // The `pos < length` tests spare an await per command while the current chunk lasts.
      if (r.pos >= r.cur.length && !(await r.more())) throw corrupt('truncated: it ends without an END command', { offset: r.offset });
      const op = r.cur[r.pos++]!;
      if (op === OP_END) break;
      if (op < OP_COPY_N1_N1) {
        let len = op;
        if (op > MAX_IMMEDIATE_LITERAL) {
          len = await r.uint(INDEX_WIDTH[op - OP_LITERAL_N1]!, 'literal length');
          if (len === 0) throw corrupt('LITERAL of length 0', { offset: r.offset });
        }
        w.claim(len);
        while (len > 0) {
          if (r.pos >= r.cur.length && !(await r.more())) throw corrupt('truncated inside literal data', { offset: r.offset, missing: len });
          const n = Math.min(len, r.cur.length - r.pos);
          w.put(r.cur, r.pos, r.pos + n);
          r.pos += n;
          len -= n;
          if (w.full) await w.flush();
        }
      } else if (op < OP_RESERVED_FIRST) {
        const k = op - OP_COPY_N1_N1;
        const pos = await r.uint(INDEX_WIDTH[k >> 2]!, 'copy offset');
        const len = await r.uint(INDEX_WIDTH[k & 3]!, 'copy length');
        if (len === 0) throw corrupt('COPY of length 0', { offset: r.offset });
        if (pos + len > b.size) throw corrupt(`COPY of ${len} bytes at ${pos} reads past the ${b.size}-byte base`, { offset: r.offset, copyOffset: pos, copyLength: len, baseSize: b.size });
        w.claim(len);
        await b.copy(w, pos, len);
      } else {
        throw corrupt(`reserved command byte 0x${op.toString(16)}`, { offset: r.offset - 1, op });
      }
    }
    if (await r.more()) throw corrupt('bytes after the END command', { offset: r.offset });
    await w.flush(true);
  } finally {
    await r.close();
  }
  out.end();
  await finished(out);
  return { bytes: w.bytes };
}
