// delta: sub-block patches between two versions of the same disk block.
// Owns: the block patch format (the byte ranges of `next` that differ from `base`) and its bounded,
// validating decoder. Must not know: stores, manifests, HTTP. A patch proves nothing by itself: the
// caller checks the rebuilt block against its id.
//
// Why: a VM rewrites 4 KiB pages inside 64 KiB blocks; sending whole changed blocks measured 1.2-1.4x
// the floor here (shared/NOTES.md), sending the changed ranges inside one compressed stream reaches it.
//
// Layout (all integers little-endian u32):
//   nextLength, rangeCount, then rangeCount × (offset, length, `length` bytes of next)
// Bytes of next outside every range equal base at the same offset, or zero past base's end.
import { CarryonError } from '../errors/index.js';

/** Compare in units of this many bytes: small enough to skip untouched sectors inside a page, large
 *  enough that a range header (8 bytes) stays small beside the bytes it carries. */
const UNIT = 64;

export function encodeBlockPatch(base: Uint8Array, next: Uint8Array): Buffer {
  const ranges: Array<[number, number]> = [];
  const b = Buffer.from(base.buffer, base.byteOffset, base.byteLength);
  const n = Buffer.from(next.buffer, next.byteOffset, next.byteLength);
  let runStart = -1;
  for (let off = 0; off < n.length; off += UNIT) {
    const end = Math.min(off + UNIT, n.length);
    const same = end <= b.length ? b.compare(n, off, end, off, end) === 0 : false;
    if (!same && runStart < 0) runStart = off;
    if (same && runStart >= 0) {
      ranges.push([runStart, off - runStart]);
      runStart = -1;
    }
  }
  if (runStart >= 0) ranges.push([runStart, n.length - runStart]);
  let size = 8;
  for (const [, len] of ranges) size += 8 + len;
  const out = Buffer.allocUnsafe(size);
  out.writeUInt32LE(n.length, 0);
  out.writeUInt32LE(ranges.length, 4);
  let p = 8;
  for (const [off, len] of ranges) {
    out.writeUInt32LE(off, p);
    out.writeUInt32LE(len, p + 4);
    n.copy(out, p + 8, off, off + len);
    p += 8 + len;
  }
  return out;
}

/** Rebuild `next` from `base` and a patch; every field is checked against `maxBytes` and the patch length. */
export function applyBlockPatch(base: Uint8Array, patch: Uint8Array, maxBytes: number): Buffer {
  const p = Buffer.from(patch.buffer, patch.byteOffset, patch.byteLength);
  const bad = (why: string): CarryonError => new CarryonError('BLOCK_CORRUPT', `block patch is invalid: ${why}`);
  if (p.length < 8) throw bad('shorter than its header');
  const nextLength = p.readUInt32LE(0);
  const count = p.readUInt32LE(4);
  if (nextLength > maxBytes) throw bad(`rebuilt block of ${nextLength} bytes exceeds ${maxBytes}`);
  const out = Buffer.alloc(nextLength);
  Buffer.from(base.buffer, base.byteOffset, base.byteLength).copy(out, 0, 0, Math.min(base.byteLength, nextLength));
  let q = 8;
  let prevEnd = 0;
  for (let i = 0; i < count; i++) {
    if (q + 8 > p.length) throw bad('truncated range header');
    const off = p.readUInt32LE(q);
    const len = p.readUInt32LE(q + 4);
    q += 8;
    if (off < prevEnd || off + len > nextLength) throw bad('range out of order or out of bounds');
    if (q + len > p.length) throw bad('truncated range bytes');
    p.copy(out, off, q, q + len);
    q += len;
    prevEnd = off + len;
  }
  if (q !== p.length) throw bad('trailing bytes');
  return out;
}
