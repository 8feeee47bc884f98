// MD4 (RFC 1320): the strong hash of librsync's older signature formats. Broken as a cryptographic hash
// (a crafted base can make blocks collide), kept only to read and write those formats; Node's OpenSSL 3
// no longer offers it by default.

const x = new Int32Array(16);
const tail = new Uint8Array(128);

function rotl(v: number, s: number): number {
  return (v << s) | (v >>> (32 - s));
}

function block(data: Uint8Array, off: number, st: Int32Array): void {
  for (let i = 0; i < 16; i++) {
    const p = off + i * 4;
    x[i] = data[p]! | (data[p + 1]! << 8) | (data[p + 2]! << 16) | (data[p + 3]! << 24);
  }
  let a = st[0]!;
  let b = st[1]!;
  let c = st[2]!;
  let d = st[3]!;
  // Round 1: F(b,c,d) = (b & c) | (~b & d)
  for (let i = 0; i < 16; i += 4) {
    a = rotl((a + ((b & c) | (~b & d)) + x[i]!) | 0, 3);
    d = rotl((d + ((a & b) | (~a & c)) + x[i + 1]!) | 0, 7);
    c = rotl((c + ((d & a) | (~d & b)) + x[i + 2]!) | 0, 11);
    b = rotl((b + ((c & d) | (~c & a)) + x[i + 3]!) | 0, 19);
  }
  // Round 2: G(b,c,d) = majority, constant 0x5a827999, words by column
  for (let i = 0; i < 4; i++) {
    a = rotl((a + ((b & c) | (b & d) | (c & d)) + x[i]! + 0x5a827999) | 0, 3);
    d = rotl((d + ((a & b) | (a & c) | (b & c)) + x[i + 4]! + 0x5a827999) | 0, 5);
    c = rotl((c + ((d & a) | (d & b) | (a & b)) + x[i + 8]! + 0x5a827999) | 0, 9);
    b = rotl((b + ((c & d) | (c & a) | (d & a)) + x[i + 12]! + 0x5a827999) | 0, 13);
  }
  // Round 3: H = parity, constant 0x6ed9eba1, words in bit-reversed order
  const order = [0, 2, 1, 3];
  for (const i of order) {
    a = rotl((a + (b ^ c ^ d) + x[i]! + 0x6ed9eba1) | 0, 3);
    d = rotl((d + (a ^ b ^ c) + x[i + 8]! + 0x6ed9eba1) | 0, 9);
    c = rotl((c + (d ^ a ^ b) + x[i + 4]! + 0x6ed9eba1) | 0, 11);
    b = rotl((b + (c ^ d ^ a) + x[i + 12]! + 0x6ed9eba1) | 0, 15);
  }
  st[0] = (st[0]! + a) | 0;
  st[1] = (st[1]! + b) | 0;
  st[2] = (st[2]! + c) | 0;
  st[3] = (st[3]! + d) | 0;
}

const state = new Int32Array(4);

/** Write MD4(data[start, end)) to out[outOff, outOff + 16). */
export function md4(data: Uint8Array, start: number, end: number, out: Uint8Array, outOff = 0): void {
  state[0] = 0x67452301;
  state[1] = 0xefcdab89 | 0;
  state[2] = 0x98badcfe | 0;
  state[3] = 0x10325476;
  const len = end - start;
  let p = start;
  for (; end - p >= 64; p += 64) block(data, p, state);
  const rest = end - p;
  tail.fill(0);
  tail.set(data.subarray(p, end));
  tail[rest] = 0x80;
  const padded = rest < 56 ? 64 : 128;
  // Message length in bits, 64-bit little-endian.
  const bitsLo = (len * 8) >>> 0;
  const bitsHi = Math.floor((len * 8) / 0x100000000) >>> 0;
  for (let i = 0; i < 4; i++) {
    tail[padded - 8 + i] = (bitsLo >>> (8 * i)) & 0xff;
    tail[padded - 4 + i] = (bitsHi >>> (8 * i)) & 0xff;
  }
  block(tail, 0, state);
  if (padded === 128) block(tail, 64, state);
  for (let i = 0; i < 4; i++) {
    const w = state[i]!;
    const q = outOff + i * 4;
    out[q] = w & 0xff;
    out[q + 1] = (w >>> 8) & 0xff;
    out[q + 2] = (w >>> 16) & 0xff;
    out[q + 3] = (w >>> 24) & 0xff;
  }
}
