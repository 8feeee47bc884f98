// An rdiff delta made by comparing the new version with the base at the same offsets, no signature:
// for edits that keep their place (bytes overwritten, bytes appended) it finds exactly the changed bytes
// at memory-compare speed, where the signature path hashes every block of both versions (MD4 and a
// rolling sum in TypeScript, ~250 MB/s). The output is an ordinary delta in librsync's format (COPY of
// the unchanged ranges, LITERAL of the changed ones), applied by applyDelta or `rdiff patch`.
import { DeltaWriter } from './delta.js';

/** First compare step: most of a changed chunk is equal in these. */
const COARSE = 4096;
/** Second step inside a differing coarse block; then byte by byte at the two ends. */
const FINE = 64;
/** Equal runs shorter than this between two changes go as literal: a COPY command costs up to 9 bytes. */
const MERGE_GAP = 16;

/**
 * The delta turning `base` into `next` by position, or null when more than `maxLiteral` bytes of `next`
 * differ from `base` at the same offsets (an insertion shifts everything after it: use a signature).
 */
export function createAlignedDelta(base: Uint8Array, next: Uint8Array, maxLiteral = Number.MAX_SAFE_INTEGER): Buffer | null {
  const b = Buffer.from(base.buffer, base.byteOffset, base.length);
  const n = Buffer.from(next.buffer, next.byteOffset, next.length);
  const common = Math.min(b.length, n.length);
  const ranges: Array<[number, number]> = [];
  let literal = 0;
  const add = (s: number, e: number): boolean => {
    const last = ranges[ranges.length - 1];
    if (last && s - last[1] < MERGE_GAP) {
      literal += e - last[1];
      last[1] = e;
    } else {
      literal += e - s;
      ranges.push([s, e]);
    }
    return literal <= maxLiteral;
  };
  for (let o = 0; o < common; o += COARSE) {
    const oe = Math.min(o + COARSE, common);
    if (b.subarray(o, oe).equals(n.subarray(o, oe))) continue;
    for (let p = o; p < oe; p += FINE) {
      const pe = Math.min(p + FINE, oe);
      if (b.subarray(p, pe).equals(n.subarray(p, pe))) continue;
      let s = p;
      while (b[s] === n[s]) s++;
      let e = pe;
      while (b[e - 1] === n[e - 1]) e--;
      if (!add(s, e)) return null;
    }
  }
  if (n.length > common && !add(common, n.length)) return null;
  const w = new DeltaWriter();
  w.magic();
  const out: Buffer[] = [];
  let pos = 0;
  for (const [s, e] of ranges) {
    if (s > pos) w.copy(pos, s - pos);
    w.literal(n, s, e);
    out.push(...w.take());
    pos = e;
  }
  if (pos < n.length) w.copy(pos, n.length - pos);
  out.push(...w.end());
  return Buffer.concat(out);
}
