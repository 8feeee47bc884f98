// Delta encoding: scan the new version with a rolling weak sum the size of the signature's blocks; where
// the weak sum and then the strong sum match a base block, emit COPY, elsewhere LITERAL.
//
// The scan makes librsync 2.3.2's decisions (delta.c), so our delta equals `rdiff delta`'s byte for
// byte (but for an empty signature, where rdiff cuts literals by its I/O buffer size). At each
// position the window is the next block_len bytes (fewer at the end of the input); on a match the
// lowest-numbered matching block is copied and the scan jumps past the window; a COPY that continues
// the previous one extends it; unmatched bytes are cut into literals of at most 32 KiB.
import { CarryonError } from '../errors/index.js';
import { BLAKE2_SUM_LENGTH, intWidth, MAX_IMMEDIATE_LITERAL, MAX_MISS_LITERAL, OP_COPY_N1_N1, OP_END, OP_LITERAL_N1, RS_DELTA_MAGIC, WIDTH_INDEX } from './format.js';
import { parseSignature, strongHashOf, type RdiffSignature, type StrongHash } from './signature.js';
import { chunksOf, type ByteSource } from './source.js';
import {
  mix32,
  RABINKARP_ADJ,
  RABINKARP_INVM,
  RABINKARP_MULT,
  rabinKarpPow,
  rabinKarpSum,
  ROLLSUM_CHAR_OFFSET,
  rollsumState,
} from './weak-sum.js';

/** Size of the chunks the delta is yielded in. */
const OUT_CHUNK = 64 * 1024;
/** Blocks kept per weak sum value. Real data almost never has two distinct blocks with one weak sum;
 *  a crafted signature with thousands would make every lookup (and building the chains) slow, so the
 *  extra ones are never matched: the delta only grows. */
const MAX_CHAIN = 64;
/** Fibonacci hashing multiplier: spreads a weak sum's bits into the filter index. */
const GOLDEN = 0x9e3779b1 | 0;

/** Delta bytes, gathered into OUT_CHUNK-sized buffers. */
export class DeltaWriter {
  ready: Buffer[] = [];
  private buf = Buffer.allocUnsafe(OUT_CHUNK);
  private used = 0;

  private room(n: number): void {
    if (OUT_CHUNK - this.used < n) this.flushPartial();
  }

  private flushPartial(): void {
    if (this.used > 0) this.ready.push(this.buf.subarray(0, this.used));
    this.buf = Buffer.allocUnsafe(OUT_CHUNK);
    this.used = 0;
  }

  private uint(v: number, width: 1 | 2 | 4 | 8): void {
    if (width === 8) {
      this.buf.writeUInt32BE(Math.floor(v / 0x100000000), this.used);
      this.buf.writeUInt32BE(v >>> 0, this.used + 4);
    } else {
      this.buf.writeUIntBE(v, this.used, width);
    }
    this.used += width;
  }

  magic(): void {
    this.room(4);
    this.uint(RS_DELTA_MAGIC, 4);
  }

  end(): Buffer[] {
    this.room(1);
    this.buf[this.used++] = OP_END;
    this.flushPartial();
    return this.take();
  }

  copy(pos: number, len: number): void {
    const wp = intWidth(pos);
    const wl = intWidth(len);
    this.room(1 + wp + wl);
    this.buf[this.used++] = OP_COPY_N1_N1 + 4 * WIDTH_INDEX[wp] + WIDTH_INDEX[wl];
    this.uint(pos, wp);
    this.uint(len, wl);
  }

  literal(data: Uint8Array, start: number, end: number): void {
    const len = end - start;
    if (len <= MAX_IMMEDIATE_LITERAL) {
      this.room(1);
      this.buf[this.used++] = len;
    } else {
      const w = intWidth(len);
      this.room(1 + w);
      this.buf[this.used++] = OP_LITERAL_N1 + WIDTH_INDEX[w];
      this.uint(len, w);
    }
    while (start < end) {
      if (this.used === OUT_CHUNK) this.flushPartial();
      const n = Math.min(end - start, OUT_CHUNK - this.used);
      this.buf.set(data.subarray(start, start + n), this.used);
      this.used += n;
      start += n;
    }
    if (this.used === OUT_CHUNK) this.flushPartial();
  }

  take(): Buffer[] {
    const r = this.ready;
    this.ready = [];
    return r;
  }
}

/**
 * The scan state. Positions are indices into the caller's current buffer: `lit` starts the pending
 * literal (lit <= p), `p` is the scan position, the window is [p, p + wcount). At most one of a pending
 * literal and a pending COPY is non-empty.
 */
class Scanner {
  p = 0;
  lit = 0;
  readonly out = new DeltaWriter();
  private readonly bl: number;
  private readonly rabinKarp: boolean;
  private readonly strongLength: number;
  private readonly strongSums: Uint8Array;
  private readonly strong: StrongHash;
  private readonly digestBuf = new Uint8Array(BLAKE2_SUM_LENGTH);
  /** One bit per filter slot: set when some block's weak sum hashes there. */
  private readonly filter: Uint8Array;
  private readonly shift: number;
  /** weak sum (as matched) -> lowest block index with it; `next` chains the others in ascending order,
   *  leaving out blocks whose strong sum repeats an earlier one's (librsync keeps only the first too). */
  private readonly head = new Map<number, number>();
  private readonly next: Int32Array;
  /** RABINKARP_MULT^blockLength, the rolling factor of a full window. */
  private readonly multFull: number;

  // The weak sum of the window: RabinKarp hash h and M^wcount, or rollsum s1, s2.
  private wcount = 0;
  private h = 0;
  private mult = 1;
  private s1 = 0;
  private s2 = 0;
  private copyPos = 0;
  private copyLen = 0;

  constructor(sig: RdiffSignature) {
    this.bl = sig.blockLength;
    this.rabinKarp = sig.weakSum === 'rabinkarp';
    this.strongLength = sig.strongLength;
    this.strongSums = sig.strongSums;
    this.strong = strongHashOf(sig.strongSum);
    this.multFull = rabinKarpPow(this.bl);
    let bits = 1 << 12;
    while (bits < sig.blockCount * 16 && bits < 1 << 27) bits *= 2;
    this.filter = new Uint8Array(bits >>> 3);
    this.shift = 32 - Math.log2(bits);
    this.next = new Int32Array(sig.blockCount).fill(-1);
    for (let i = 0; i < sig.blockCount; i++) {
      const w = this.rabinKarp ? sig.weakSums[i]! : mix32(sig.weakSums[i]!);
      const first = this.head.get(w);
      if (first === undefined) {
        this.head.set(w, i);
        const k = Math.imul(w, GOLDEN) >>> this.shift;
        this.filter[k >>> 3]! |= 1 << (k & 7);
        continue;
      }
      // Append to the chain unless an earlier block has the same strong sum too (it would always win).
      let last = first;
      let length = 1;
      let duplicate = this.sameStrong(i, first);
      while (!duplicate && this.next[last]! >= 0) {
        last = this.next[last]!;
        length++;
        duplicate = this.sameStrong(i, last);
      }
      if (!duplicate && length < MAX_CHAIN) this.next[last] = i;
    }
  }

  private sameStrong(a: number, b: number): boolean {
    const sl = this.strongLength;
    const sums = this.strongSums;
    for (let j = 0; j < sl; j++) if (sums[a * sl + j] !== sums[b * sl + j]) return false;
    return true;
  }

  private startWindow(buf: Uint8Array, p: number, n: number): void {
    this.wcount = n;
    if (this.rabinKarp) {
      this.h = rabinKarpSum(buf, p, p + n);
      this.mult = n === this.bl ? this.multFull : rabinKarpPow(n);
    } else {
      const s = rollsumState(buf, p, p + n);
      this.s1 = s.s1;
      this.s2 = s.s2;
    }
  }

  /** The lowest block whose weak and strong sums match the window at p, or -1. */
  private match(buf: Uint8Array, p: number): number {
    const w = this.rabinKarp ? this.h : mix32((this.s2 << 16) | this.s1);
    const k = Math.imul(w, GOLDEN) >>> this.shift;
    if ((this.filter[k >>> 3]! & (1 << (k & 7))) === 0) return -1;
    let i = this.head.get(w);
    if (i === undefined) return -1;
    const d = this.digestBuf;
    const sl = this.strongLength;
    const sums = this.strongSums;
    this.strong(buf, p, p + this.wcount, d, 0);
    for (; i >= 0; i = this.next[i]!) {
      let j = 0;
      const base = i * sl;
      while (j < sl && d[j] === sums[base + j]) j++;
      if (j === sl) return i;
    }
    return -1;
  }

  /** Move the window one byte on: roll `buf[p + bl]` in, or at the end of the input, only roll out. */
  private roll(buf: Uint8Array, p: number, len: number): void {
    const out = buf[p]!;
    if (p + this.bl < len) {
      const inb = buf[p + this.bl]!;
      if (this.rabinKarp) this.h = (Math.imul(this.h, RABINKARP_MULT) + inb - Math.imul(this.mult, out + RABINKARP_ADJ)) | 0;
      else {
        this.s1 = (this.s1 + inb - out) & 0xffff;
        this.s2 = (this.s2 + this.s1 - Math.imul(this.wcount, out + ROLLSUM_CHAR_OFFSET)) & 0xffff;
      }
    } else {
      if (this.rabinKarp) {
        this.mult = Math.imul(this.mult, RABINKARP_INVM);
        this.h = (this.h - Math.imul(this.mult, out + RABINKARP_ADJ)) | 0;
      } else {
        this.s1 = (this.s1 - out - ROLLSUM_CHAR_OFFSET) & 0xffff;
        this.s2 = (this.s2 - Math.imul(this.wcount, out + ROLLSUM_CHAR_OFFSET)) & 0xffff;
      }
      this.wcount--;
    }
  }

  /**
   * Skip, from p, positions whose full window the filter rules out, rolling as it goes; stop before
   * `stop`. The hot loop of a delta: one multiply-rotate and one filter probe per byte.
   */
  private skip(buf: Uint8Array, p: number, stop: number): number {
    const bl = this.bl;
    const filter = this.filter;
    const shift = this.shift;
    if (this.rabinKarp) {
      let h = this.h;
      const mult = this.mult;
      for (; p < stop; p++) {
        const k = Math.imul(h, GOLDEN) >>> shift;
        if ((filter[k >>> 3]! & (1 << (k & 7))) !== 0) break;
        h = (Math.imul(h, RABINKARP_MULT) + buf[p + bl]! - Math.imul(mult, buf[p]! + RABINKARP_ADJ)) | 0;
      }
      this.h = h;
    } else {
      let s1 = this.s1;
      let s2 = this.s2;
      for (; p < stop; p++) {
        const k = Math.imul(mix32((s2 << 16) | s1), GOLDEN) >>> shift;
        if ((filter[k >>> 3]! & (1 << (k & 7))) !== 0) break;
        const out = buf[p]!;
        s1 = (s1 + buf[p + bl]! - out) & 0xffff;
        s2 = (s2 + s1 - Math.imul(bl, out + ROLLSUM_CHAR_OFFSET)) & 0xffff;
      }
      this.s1 = s1;
      this.s2 = s2;
    }
    return p;
  }

  /**
   * Scan buf[p, len) as far as it can be decided: to the end when `eof`, else while a byte follows the
   * window. Stops early once a chunk of output is ready, so the caller can pass it on.
   */
  scan(buf: Uint8Array, len: number, eof: boolean): void {
    const bl = this.bl;
    const limit = eof ? len : len - bl;
    let p = this.p;
    let lit = this.lit;
    while (p < limit && this.out.ready.length === 0) {
      if (this.wcount === 0) this.startWindow(buf, p, Math.min(bl, len - p));
      if (this.copyLen === 0 && this.wcount === bl) {
        // Every position before `stop` can only miss or be a filter hit: no COPY to flush, no literal
        // to cut, and a byte to roll in.
        p = this.skip(buf, p, Math.min(len - bl, lit + MAX_MISS_LITERAL));
        if (p >= limit) break;
      }
      const i = this.match(buf, p);
      if (i >= 0) {
        const pos = i * bl;
        if (this.copyLen > 0 && this.copyPos + this.copyLen === pos) this.copyLen += this.wcount;
        else {
          if (this.copyLen > 0) this.out.copy(this.copyPos, this.copyLen);
          else if (p > lit) this.out.literal(buf, lit, p);
          this.copyPos = pos;
          this.copyLen = this.wcount;
        }
        p += this.wcount;
        lit = p;
        this.wcount = 0;
      } else {
        if (this.copyLen > 0) {
          this.out.copy(this.copyPos, this.copyLen);
          this.copyLen = 0;
        } else if (p - lit >= MAX_MISS_LITERAL) {
          this.out.literal(buf, lit, p);
          lit = p;
        }
        this.roll(buf, p, len);
        p++;
      }
    }
    this.p = p;
    this.lit = lit;
  }

  /** After the whole input is scanned: the pending COPY or literal, then END. */
  finish(buf: Uint8Array): Buffer[] {
    if (this.copyLen > 0) this.out.copy(this.copyPos, this.copyLen);
    else if (this.p > this.lit) this.out.literal(buf, this.lit, this.p);
    return this.out.end();
  }
}

/**
 * The librsync delta that turns the base `signature` describes into `newData`: `rdiff patch` (or
 * applyDelta) of the base with it gives newData. A stream is read once; memory holds the signature's
 * lookup tables, one block plus a 32 KiB pending literal plus a read chunk, and one 64 KiB output
 * chunk, never the whole new version. Yields the delta in chunks of up to 64 KiB.
 */
export async function* createDelta(signature: RdiffSignature | Uint8Array, newData: ByteSource): AsyncGenerator<Buffer, void, undefined> {
  const sig = signature instanceof Uint8Array ? parseSignature(signature) : signature;
  const sc = new Scanner(sig);
  sc.out.magic();
  const bl = sig.blockLength;

  if (newData instanceof Uint8Array) {
    // A whole buffer: scan it in place.
    while (sc.p < newData.length) {
      sc.scan(newData, newData.length, true);
      yield* sc.out.take();
    }
    yield* sc.finish(newData);
    return;
  }

  let buf: Buffer = Buffer.alloc(0);
  let len = 0;
  let eof = false;
  const input = chunksOf(newData)[Symbol.asyncIterator]();
  try {
    for (;;) {
      while (!eof && len - sc.p <= bl) {
        const r = await input.next();
        if (r.done) {
          eof = true;
          break;
        }
        // Keep the pending literal and the window, drop what is before them, then append.
        const chunk = r.value;
        const keep = len - sc.lit;
        if (keep + chunk.length > buf.length) {
          const grown = Buffer.allocUnsafe(Math.max(keep + chunk.length, 2 * bl + MAX_MISS_LITERAL + 256 * 1024));
          buf.copy(grown, 0, sc.lit, len);
          buf = grown;
        } else if (sc.lit > 0) {
          buf.copy(buf, 0, sc.lit, len);
        }
        buf.set(chunk, keep);
        len = keep + chunk.length;
        sc.p -= sc.lit;
        sc.lit = 0;
      }
      sc.scan(buf, len, eof);
      yield* sc.out.take();
      if (eof && sc.p >= len) break;
    }
  } finally {
    if (!eof) await input.return?.();
  }
  if (sc.p !== len) throw new CarryonError('INTERNAL', 'rdiff delta scan ended before its input');
  yield* sc.finish(buf);
}
