// BLAKE2b-256 (RFC 7693, unkeyed, 32-byte digest): librsync's strong hash. Node's crypto offers only
// BLAKE2b-512, whose first 32 bytes differ from BLAKE2b-256 (the digest length is hashed in), hence
// this implementation. 64-bit words are held as (low, high) uint32 pairs.

const IV = new Int32Array([
  0xf3bcc908, 0x6a09e667, 0x84caa73b, 0xbb67ae85, 0xfe94f82b, 0x3c6ef372, 0x5f1d36f1, 0xa54ff53a,
  0xade682d1, 0x510e527f, 0x2b3e6c1f, 0x9b05688c, 0xfb41bd6b, 0x1f83d9ab, 0x137e2179, 0x5be0cd19,
]);

// Message word schedule, rounds 0..11 (rounds 10 and 11 repeat 0 and 1), as indices of uint32 pairs.
const SIGMA = new Uint8Array(
  [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  ]
    .flat()
    .map((i) => i * 2),
);

const h = new Int32Array(16);
const v = new Int32Array(32);
const m = new Int32Array(32);
const tail = new Uint8Array(128);

/** The mixing function G on state words a, b, c, d (pair indices) with message words x, y. All
 *  arithmetic stays in int32 (V8 keeps it in registers); a carry is an unsigned compare. */
function g(a: number, b: number, c: number, d: number, x: number, y: number): void {
  let al = v[a]!;
  let ah = v[a + 1]!;
  let bl = v[b]!;
  let bh = v[b + 1]!;
  let cl = v[c]!;
  let ch = v[c + 1]!;
  let dl = v[d]!;
  let dh = v[d + 1]!;
  let t: number;
  let u: number;

  // a += b + m[x]; d = rotr64(d ^ a, 32)
  t = (al + bl) | 0;
  ah = (ah + bh + ((t >>> 0) < (al >>> 0) ? 1 : 0)) | 0;
  al = t;
  u = m[x]!;
  t = (al + u) | 0;
  ah = (ah + m[x + 1]! + ((t >>> 0) < (u >>> 0) ? 1 : 0)) | 0;
  al = t;
  t = dh ^ ah;
  dh = dl ^ al;
  dl = t;
  // c += d; b = rotr64(b ^ c, 24)
  t = (cl + dl) | 0;
  ch = (ch + dh + ((t >>> 0) < (cl >>> 0) ? 1 : 0)) | 0;
  cl = t;
  t = bl ^ cl;
  u = bh ^ ch;
  bl = (t >>> 24) | (u << 8);
  bh = (u >>> 24) | (t << 8);
  // a += b + m[y]; d = rotr64(d ^ a, 16)
  t = (al + bl) | 0;
  ah = (ah + bh + ((t >>> 0) < (al >>> 0) ? 1 : 0)) | 0;
  al = t;
  u = m[y]!;
  t = (al + u) | 0;
  ah = (ah + m[y + 1]! + ((t >>> 0) < (u >>> 0) ? 1 : 0)) | 0;
  al = t;
  t = dl ^ al;
  u = dh ^ ah;
  dl = (t >>> 16) | (u << 16);
  dh = (u >>> 16) | (t << 16);
  // c += d; b = rotr64(b ^ c, 63) = rotl64(b ^ c, 1)
  t = (cl + dl) | 0;
  ch = (ch + dh + ((t >>> 0) < (cl >>> 0) ? 1 : 0)) | 0;
  cl = t;
  t = bl ^ cl;
  u = bh ^ ch;
  bl = (t << 1) | (u >>> 31);
  bh = (u << 1) | (t >>> 31);

  v[a] = al;
  v[a + 1] = ah;
  v[b] = bl;
  v[b + 1] = bh;
  v[c] = cl;
  v[c + 1] = ch;
  v[d] = dl;
  v[d + 1] = dh;
}

/** Compress the 128-byte block at data[off] into h; `count` is the byte count so far including it. */
function compress(data: Uint8Array, off: number, count: number, last: boolean): void {
  for (let i = 0; i < 32; i++) {
    const p = off + i * 4;
    m[i] = data[p]! | (data[p + 1]! << 8) | (data[p + 2]! << 16) | (data[p + 3]! << 24);
  }
  for (let i = 0; i < 16; i++) {
    v[i] = h[i]!;
    v[i + 16] = IV[i]!;
  }
  v[24] = v[24]! ^ count; // count < 2^32: blocks are at most MAX_BLOCK_LENGTH
  if (last) {
    v[28] = ~v[28]!;
    v[29] = ~v[29]!;
  }
  for (let r = 0; r < 12; r++) {
    const s = r * 16;
    g(0, 8, 16, 24, SIGMA[s]!, SIGMA[s + 1]!);
    g(2, 10, 18, 26, SIGMA[s + 2]!, SIGMA[s + 3]!);
    g(4, 12, 20, 28, SIGMA[s + 4]!, SIGMA[s + 5]!);
    g(6, 14, 22, 30, SIGMA[s + 6]!, SIGMA[s + 7]!);
    g(0, 10, 20, 30, SIGMA[s + 8]!, SIGMA[s + 9]!);
    g(2, 12, 22, 24, SIGMA[s + 10]!, SIGMA[s + 11]!);
    g(4, 14, 16, 26, SIGMA[s + 12]!, SIGMA[s + 13]!);
    g(6, 8, 18, 28, SIGMA[s + 14]!, SIGMA[s + 15]!);
  }
  for (let i = 0; i < 16; i++) h[i] = h[i]! ^ v[i]! ^ v[i + 16]!;
}

/** Write BLAKE2b-256(data[start, end)) to out[outOff, outOff + 32). `end − start` must be < 2^32. */
export function blake2b256(data: Uint8Array, start: number, end: number, out: Uint8Array, outOff = 0): void {
  h.set(IV);
  h[0] = h[0]! ^ 0x01010020; // digest length 32, key length 0, fanout 1, depth 1
  const len = end - start;
  let done = 0;
  // Every full block but the last is compressed as it comes; the last (full or not) gets the flag.
  while (len - done > 128) {
    done += 128;
    compress(data, start + done - 128, done, false);
  }
  tail.fill(0);
  tail.set(data.subarray(start + done, end));
  compress(tail, 0, len, true);
  for (let i = 0; i < 8; i++) {
    const w = h[i]!;
    const p = outOff + i * 4;
    out[p] = w & 0xff;
    out[p + 1] = (w >>> 8) & 0xff;
    out[p + 2] = (w >>> 16) & 0xff;
    out[p + 3] = (w >>> 24) & 0xff;
  }
}
