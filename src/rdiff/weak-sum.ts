// The two weak (rolling) sums of librsync, computed from scratch over a block. The delta scanner rolls
// them one byte at a time with the same constants, inline in its loop (delta.ts).
//
// RabinKarp: h = SEED·M^n + Σ b[i]·M^(n-1-i) mod 2^32. Rolling one byte: h' = h·M + in − M^n·(out + ADJ).
// Rollsum (rsync's Adler-like sum): s1 = Σ (b[i] + 31), s2 = Σ prefix sums of s1, both mod 2^16,
// digest (s2 << 16) | s1. Signatures store it raw; matching uses mix32 of it to spread the values.

export const RABINKARP_SEED = 1;
export const RABINKARP_MULT = 0x08104225;
/** RABINKARP_MULT^-1 mod 2^32. */
export const RABINKARP_INVM = 0x98f009ad | 0;
/** (RABINKARP_MULT − 1) · RABINKARP_SEED: rolling a byte out also rolls the seed's share out. */
export const RABINKARP_ADJ = 0x08104224;
export const ROLLSUM_CHAR_OFFSET = 31;

/** RABINKARP_MULT^n mod 2^32, as an int32. */
export function rabinKarpPow(n: number): number {
  let result = 1;
  let base = RABINKARP_MULT;
  while (n > 0) {
    if (n & 1) result = Math.imul(result, base);
    base = Math.imul(base, base);
    n = Math.floor(n / 2);
  }
  return result | 0;
}

/** RabinKarp sum of data[start, end), as an int32. */
export function rabinKarpSum(data: Uint8Array, start: number, end: number): number {
  let h = RABINKARP_SEED;
  for (let i = start; i < end; i++) h = (Math.imul(h, RABINKARP_MULT) + data[i]!) | 0;
  return h;
}

/** Raw rollsum of data[start, end) as stored in a signature, as an int32. */
export function rollsumSum(data: Uint8Array, start: number, end: number): number {
  let s1 = 0;
  let s2 = 0;
  for (let i = start; i < end; i++) {
    s1 = (s1 + data[i]! + ROLLSUM_CHAR_OFFSET) & 0xffff;
    s2 = (s2 + s1) & 0xffff;
  }
  return (s2 << 16) | s1;
}

/** The rollsum state (s1, s2) of data[start, end), for rolling on. */
export function rollsumState(data: Uint8Array, start: number, end: number): { s1: number; s2: number } {
  const d = rollsumSum(data, start, end);
  return { s1: d & 0xffff, s2: (d >>> 16) & 0xffff };
}

/** librsync's mix32 (the MurmurHash3 finaliser), applied to rollsums before matching. */
export function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}
