// BLAKE2b-256 (RFC 7693, unkeyed, 32-byte digest): librsync's strong hash. Node's crypto offers only
// BLAKE2b-512, whose first 32 bytes differ from BLAKE2b-256 (the digest length is hashed in), hence
// this implementation. 64-bit words are held as (low, high) int32 pairs.

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
const m = new Int32Array(32);
const tail = new Uint8Array(128);

/** Compress the 128-byte block at data[off] into h; `count` is the byte count so far including it.
 *  The 16 state words live in 32 local int32s and the eight G steps of a round are written out; a
 *  64-bit add is two int32 adds, the carry being the top bit of (a & b) | ((a | b) & ~sum). Measured on
 *  Node 20 (4 KiB inputs): a G function over a typed array ran 42 MB/s, this 90 MB/s; unrolling all 12
 *  rounds made the function too large for V8 to optimise (2 MB/s). */
function compress(data: Uint8Array, off: number, count: number, last: boolean): void {
  for (let i = 0; i < 32; i++) {
    const p = off + i * 4;
    m[i] = data[p]! | (data[p + 1]! << 8) | (data[p + 2]! << 16) | (data[p + 3]! << 24);
  }
  let v0l = h[0]!;
  let v0h = h[1]!;
  let v1l = h[2]!;
  let v1h = h[3]!;
  let v2l = h[4]!;
  let v2h = h[5]!;
  let v3l = h[6]!;
  let v3h = h[7]!;
  let v4l = h[8]!;
  let v4h = h[9]!;
  let v5l = h[10]!;
  let v5h = h[11]!;
  let v6l = h[12]!;
  let v6h = h[13]!;
  let v7l = h[14]!;
  let v7h = h[15]!;
  let v8l = IV[0]!;
  let v8h = IV[1]!;
  let v9l = IV[2]!;
  let v9h = IV[3]!;
  let v10l = IV[4]!;
  let v10h = IV[5]!;
  let v11l = IV[6]!;
  let v11h = IV[7]!;
  let v12l = IV[8]!;
  let v12h = IV[9]!;
  let v13l = IV[10]!;
  let v13h = IV[11]!;
  let v14l = IV[12]!;
  let v14h = IV[13]!;
  let v15l = IV[14]!;
  let v15h = IV[15]!;
  v12l ^= count; // count < 2^32: blocks are at most MAX_BLOCK_LENGTH
  if (last) {
    v14l = ~v14l;
    v14h = ~v14h;
  }
  let t: number; // sum or xor of the low words
  let u: number; // xor of the high words
  let x: number; // pair index of the message word
  let xl: number; // its low word
  for (let s = 0; s < 192; s += 16) {
    // G(a, b, c, d, x, y): a += b + x; d = rotr(d ^ a, 32); c += d; b = rotr(b ^ c, 24);
    //                      a += b + y; d = rotr(d ^ a, 16); c += d; b = rotr(b ^ c, 63)
    // G(v0, v4, v8, v12) columns
    t = (v0l + v4l) | 0; v0h = (v0h + v4h + (((v0l & v4l) | ((v0l | v4l) & ~t)) >>> 31)) | 0; v0l = t;
    x = SIGMA[s + 0]!; xl = m[x]!; t = (v0l + xl) | 0; v0h = (v0h + m[x + 1]! + (((v0l & xl) | ((v0l | xl) & ~t)) >>> 31)) | 0; v0l = t;
    t = v12h ^ v0h; v12h = v12l ^ v0l; v12l = t;
    t = (v8l + v12l) | 0; v8h = (v8h + v12h + (((v8l & v12l) | ((v8l | v12l) & ~t)) >>> 31)) | 0; v8l = t;
    t = v4l ^ v8l; u = v4h ^ v8h; v4l = (t >>> 24) | (u << 8); v4h = (u >>> 24) | (t << 8);
    t = (v0l + v4l) | 0; v0h = (v0h + v4h + (((v0l & v4l) | ((v0l | v4l) & ~t)) >>> 31)) | 0; v0l = t;
    x = SIGMA[s + 1]!; xl = m[x]!; t = (v0l + xl) | 0; v0h = (v0h + m[x + 1]! + (((v0l & xl) | ((v0l | xl) & ~t)) >>> 31)) | 0; v0l = t;
    t = v12l ^ v0l; u = v12h ^ v0h; v12l = (t >>> 16) | (u << 16); v12h = (u >>> 16) | (t << 16);
    t = (v8l + v12l) | 0; v8h = (v8h + v12h + (((v8l & v12l) | ((v8l | v12l) & ~t)) >>> 31)) | 0; v8l = t;
    t = v4l ^ v8l; u = v4h ^ v8h; v4l = (t << 1) | (u >>> 31); v4h = (u << 1) | (t >>> 31);
    // G(v1, v5, v9, v13)
    t = (v1l + v5l) | 0; v1h = (v1h + v5h + (((v1l & v5l) | ((v1l | v5l) & ~t)) >>> 31)) | 0; v1l = t;
    x = SIGMA[s + 2]!; xl = m[x]!; t = (v1l + xl) | 0; v1h = (v1h + m[x + 1]! + (((v1l & xl) | ((v1l | xl) & ~t)) >>> 31)) | 0; v1l = t;
    t = v13h ^ v1h; v13h = v13l ^ v1l; v13l = t;
    t = (v9l + v13l) | 0; v9h = (v9h + v13h + (((v9l & v13l) | ((v9l | v13l) & ~t)) >>> 31)) | 0; v9l = t;
    t = v5l ^ v9l; u = v5h ^ v9h; v5l = (t >>> 24) | (u << 8); v5h = (u >>> 24) | (t << 8);
    t = (v1l + v5l) | 0; v1h = (v1h + v5h + (((v1l & v5l) | ((v1l | v5l) & ~t)) >>> 31)) | 0; v1l = t;
    x = SIGMA[s + 3]!; xl = m[x]!; t = (v1l + xl) | 0; v1h = (v1h + m[x + 1]! + (((v1l & xl) | ((v1l | xl) & ~t)) >>> 31)) | 0; v1l = t;
    t = v13l ^ v1l; u = v13h ^ v1h; v13l = (t >>> 16) | (u << 16); v13h = (u >>> 16) | (t << 16);
    t = (v9l + v13l) | 0; v9h = (v9h + v13h + (((v9l & v13l) | ((v9l | v13l) & ~t)) >>> 31)) | 0; v9l = t;
    t = v5l ^ v9l; u = v5h ^ v9h; v5l = (t << 1) | (u >>> 31); v5h = (u << 1) | (t >>> 31);
    // G(v2, v6, v10, v14)
    t = (v2l + v6l) | 0; v2h = (v2h + v6h + (((v2l & v6l) | ((v2l | v6l) & ~t)) >>> 31)) | 0; v2l = t;
    x = SIGMA[s + 4]!; xl = m[x]!; t = (v2l + xl) | 0; v2h = (v2h + m[x + 1]! + (((v2l & xl) | ((v2l | xl) & ~t)) >>> 31)) | 0; v2l = t;
    t = v14h ^ v2h; v14h = v14l ^ v2l; v14l = t;
    t = (v10l + v14l) | 0; v10h = (v10h + v14h + (((v10l & v14l) | ((v10l | v14l) & ~t)) >>> 31)) | 0; v10l = t;
    t = v6l ^ v10l; u = v6h ^ v10h; v6l = (t >>> 24) | (u << 8); v6h = (u >>> 24) | (t << 8);
    t = (v2l + v6l) | 0; v2h = (v2h + v6h + (((v2l & v6l) | ((v2l | v6l) & ~t)) >>> 31)) | 0; v2l = t;
    x = SIGMA[s + 5]!; xl = m[x]!; t = (v2l + xl) | 0; v2h = (v2h + m[x + 1]! + (((v2l & xl) | ((v2l | xl) & ~t)) >>> 31)) | 0; v2l = t;
    t = v14l ^ v2l; u = v14h ^ v2h; v14l = (t >>> 16) | (u << 16); v14h = (u >>> 16) | (t << 16);
    t = (v10l + v14l) | 0; v10h = (v10h + v14h + (((v10l & v14l) | ((v10l | v14l) & ~t)) >>> 31)) | 0; v10l = t;
    t = v6l ^ v10l; u = v6h ^ v10h; v6l = (t << 1) | (u >>> 31); v6h = (u << 1) | (t >>> 31);
    // G(v3, v7, v11, v15)
    t = (v3l + v7l) | 0; v3h = (v3h + v7h + (((v3l & v7l) | ((v3l | v7l) & ~t)) >>> 31)) | 0; v3l = t;
    x = SIGMA[s + 6]!; xl = m[x]!; t = (v3l + xl) | 0; v3h = (v3h + m[x + 1]! + (((v3l & xl) | ((v3l | xl) & ~t)) >>> 31)) | 0; v3l = t;
    t = v15h ^ v3h; v15h = v15l ^ v3l; v15l = t;
    t = (v11l + v15l) | 0; v11h = (v11h + v15h + (((v11l & v15l) | ((v11l | v15l) & ~t)) >>> 31)) | 0; v11l = t;
    t = v7l ^ v11l; u = v7h ^ v11h; v7l = (t >>> 24) | (u << 8); v7h = (u >>> 24) | (t << 8);
    t = (v3l + v7l) | 0; v3h = (v3h + v7h + (((v3l & v7l) | ((v3l | v7l) & ~t)) >>> 31)) | 0; v3l = t;
    x = SIGMA[s + 7]!; xl = m[x]!; t = (v3l + xl) | 0; v3h = (v3h + m[x + 1]! + (((v3l & xl) | ((v3l | xl) & ~t)) >>> 31)) | 0; v3l = t;
    t = v15l ^ v3l; u = v15h ^ v3h; v15l = (t >>> 16) | (u << 16); v15h = (u >>> 16) | (t << 16);
    t = (v11l + v15l) | 0; v11h = (v11h + v15h + (((v11l & v15l) | ((v11l | v15l) & ~t)) >>> 31)) | 0; v11l = t;
    t = v7l ^ v11l; u = v7h ^ v11h; v7l = (t << 1) | (u >>> 31); v7h = (u << 1) | (t >>> 31);
    // G(v0, v5, v10, v15) diagonals
    t = (v0l + v5l) | 0; v0h = (v0h + v5h + (((v0l & v5l) | ((v0l | v5l) & ~t)) >>> 31)) | 0; v0l = t;
    x = SIGMA[s + 8]!; xl = m[x]!; t = (v0l + xl) | 0; v0h = (v0h + m[x + 1]! + (((v0l & xl) | ((v0l | xl) & ~t)) >>> 31)) | 0; v0l = t;
    t = v15h ^ v0h; v15h = v15l ^ v0l; v15l = t;
    t = (v10l + v15l) | 0; v10h = (v10h + v15h + (((v10l & v15l) | ((v10l | v15l) & ~t)) >>> 31)) | 0; v10l = t;
    t = v5l ^ v10l; u = v5h ^ v10h; v5l = (t >>> 24) | (u << 8); v5h = (u >>> 24) | (t << 8);
    t = (v0l + v5l) | 0; v0h = (v0h + v5h + (((v0l & v5l) | ((v0l | v5l) & ~t)) >>> 31)) | 0; v0l = t;
    x = SIGMA[s + 9]!; xl = m[x]!; t = (v0l + xl) | 0; v0h = (v0h + m[x + 1]! + (((v0l & xl) | ((v0l | xl) & ~t)) >>> 31)) | 0; v0l = t;
    t = v15l ^ v0l; u = v15h ^ v0h; v15l = (t >>> 16) | (u << 16); v15h = (u >>> 16) | (t << 16);
    t = (v10l + v15l) | 0; v10h = (v10h + v15h + (((v10l & v15l) | ((v10l | v15l) & ~t)) >>> 31)) | 0; v10l = t;
    t = v5l ^ v10l; u = v5h ^ v10h; v5l = (t << 1) | (u >>> 31); v5h = (u << 1) | (t >>> 31);
    // G(v1, v6, v11, v12)
    t = (v1l + v6l) | 0; v1h = (v1h + v6h + (((v1l & v6l) | ((v1l | v6l) & ~t)) >>> 31)) | 0; v1l = t;
    x = SIGMA[s + 10]!; xl = m[x]!; t = (v1l + xl) | 0; v1h = (v1h + m[x + 1]! + (((v1l & xl) | ((v1l | xl) & ~t)) >>> 31)) | 0; v1l = t;
    t = v12h ^ v1h; v12h = v12l ^ v1l; v12l = t;
    t = (v11l + v12l) | 0; v11h = (v11h + v12h + (((v11l & v12l) | ((v11l | v12l) & ~t)) >>> 31)) | 0; v11l = t;
    t = v6l ^ v11l; u = v6h ^ v11h; v6l = (t >>> 24) | (u << 8); v6h = (u >>> 24) | (t << 8);
    t = (v1l + v6l) | 0; v1h = (v1h + v6h + (((v1l & v6l) | ((v1l | v6l) & ~t)) >>> 31)) | 0; v1l = t;
    x = SIGMA[s + 11]!; xl = m[x]!; t = (v1l + xl) | 0; v1h = (v1h + m[x + 1]! + (((v1l & xl) | ((v1l | xl) & ~t)) >>> 31)) | 0; v1l = t;
    t = v12l ^ v1l; u = v12h ^ v1h; v12l = (t >>> 16) | (u << 16); v12h = (u >>> 16) | (t << 16);
    t = (v11l + v12l) | 0; v11h = (v11h + v12h + (((v11l & v12l) | ((v11l | v12l) & ~t)) >>> 31)) | 0; v11l = t;
    t = v6l ^ v11l; u = v6h ^ v11h; v6l = (t << 1) | (u >>> 31); v6h = (u << 1) | (t >>> 31);
    // G(v2, v7, v8, v13)
    t = (v2l + v7l) | 0; v2h = (v2h + v7h + (((v2l & v7l) | ((v2l | v7l) & ~t)) >>> 31)) | 0; v2l = t;
    x = SIGMA[s + 12]!; xl = m[x]!; t = (v2l + xl) | 0; v2h = (v2h + m[x + 1]! + (((v2l & xl) | ((v2l | xl) & ~t)) >>> 31)) | 0; v2l = t;
    t = v13h ^ v2h; v13h = v13l ^ v2l; v13l = t;
    t = (v8l + v13l) | 0; v8h = (v8h + v13h + (((v8l & v13l) | ((v8l | v13l) & ~t)) >>> 31)) | 0; v8l = t;
    t = v7l ^ v8l; u = v7h ^ v8h; v7l = (t >>> 24) | (u << 8); v7h = (u >>> 24) | (t << 8);
    t = (v2l + v7l) | 0; v2h = (v2h + v7h + (((v2l & v7l) | ((v2l | v7l) & ~t)) >>> 31)) | 0; v2l = t;
    x = SIGMA[s + 13]!; xl = m[x]!; t = (v2l + xl) | 0; v2h = (v2h + m[x + 1]! + (((v2l & xl) | ((v2l | xl) & ~t)) >>> 31)) | 0; v2l = t;
    t = v13l ^ v2l; u = v13h ^ v2h; v13l = (t >>> 16) | (u << 16); v13h = (u >>> 16) | (t << 16);
    t = (v8l + v13l) | 0; v8h = (v8h + v13h + (((v8l & v13l) | ((v8l | v13l) & ~t)) >>> 31)) | 0; v8l = t;
    t = v7l ^ v8l; u = v7h ^ v8h; v7l = (t << 1) | (u >>> 31); v7h = (u << 1) | (t >>> 31);
    // G(v3, v4, v9, v14)
    t = (v3l + v4l) | 0; v3h = (v3h + v4h + (((v3l & v4l) | ((v3l | v4l) & ~t)) >>> 31)) | 0; v3l = t;
    x = SIGMA[s + 14]!; xl = m[x]!; t = (v3l + xl) | 0; v3h = (v3h + m[x + 1]! + (((v3l & xl) | ((v3l | xl) & ~t)) >>> 31)) | 0; v3l = t;
    t = v14h ^ v3h; v14h = v14l ^ v3l; v14l = t;
    t = (v9l + v14l) | 0; v9h = (v9h + v14h + (((v9l & v14l) | ((v9l | v14l) & ~t)) >>> 31)) | 0; v9l = t;
    t = v4l ^ v9l; u = v4h ^ v9h; v4l = (t >>> 24) | (u << 8); v4h = (u >>> 24) | (t << 8);
    t = (v3l + v4l) | 0; v3h = (v3h + v4h + (((v3l & v4l) | ((v3l | v4l) & ~t)) >>> 31)) | 0; v3l = t;
    x = SIGMA[s + 15]!; xl = m[x]!; t = (v3l + xl) | 0; v3h = (v3h + m[x + 1]! + (((v3l & xl) | ((v3l | xl) & ~t)) >>> 31)) | 0; v3l = t;
    t = v14l ^ v3l; u = v14h ^ v3h; v14l = (t >>> 16) | (u << 16); v14h = (u >>> 16) | (t << 16);
    t = (v9l + v14l) | 0; v9h = (v9h + v14h + (((v9l & v14l) | ((v9l | v14l) & ~t)) >>> 31)) | 0; v9l = t;
    t = v4l ^ v9l; u = v4h ^ v9h; v4l = (t << 1) | (u >>> 31); v4h = (u << 1) | (t >>> 31);
  }
  h[0] = h[0]! ^ v0l ^ v8l;
  h[1] = h[1]! ^ v0h ^ v8h;
  h[2] = h[2]! ^ v1l ^ v9l;
  h[3] = h[3]! ^ v1h ^ v9h;
  h[4] = h[4]! ^ v2l ^ v10l;
  h[5] = h[5]! ^ v2h ^ v10h;
  h[6] = h[6]! ^ v3l ^ v11l;
  h[7] = h[7]! ^ v3h ^ v11h;
  h[8] = h[8]! ^ v4l ^ v12l;
  h[9] = h[9]! ^ v4h ^ v12h;
  h[10] = h[10]! ^ v5l ^ v13l;
  h[11] = h[11]! ^ v5h ^ v13h;
  h[12] = h[12]! ^ v6l ^ v14l;
  h[13] = h[13]! ^ v6h ^ v14h;
  h[14] = h[14]! ^ v7l ^ v15l;
  h[15] = h[15]! ^ v7h ^ v15h;
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
