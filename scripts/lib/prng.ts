// Seeded randomness for fixtures and workloads: the same seed gives the same image and the same edits on
// every run, so benchmark numbers are comparable between runs and between tools.
// mulberry32 drives choices (offsets, sizes, which file); bulk "random" bytes come from an AES-CTR
// keystream because a JS loop is ~20x slower and the bytes only need to be incompressible.

import { createCipheriv, createHash } from 'node:crypto';

export type Rng = () => number;

/** mulberry32: a tiny 32-bit PRNG yielding uint32 values (tests use it for deterministic bytes). */
export function mulberry32u32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** mulberry32 as floats in [0, 1), good enough for picking offsets. */
export function mulberry32(seed: number): Rng {
  const next = mulberry32u32(seed);
  return () => next() / 4294967296;
}

/** Integer in [lo, hi] inclusive. */
export function randInt(rng: Rng, lo: number, hi: number): number {
  return lo + Math.floor(rng() * (hi - lo + 1));
}

export function pick<T>(rng: Rng, items: readonly T[]): T {
  if (items.length === 0) throw new Error('pick from an empty list');
  return items[Math.floor(rng() * items.length)]!;
}

/** Fisher-Yates on a copy. */
export function shuffled<T>(rng: Rng, items: readonly T[]): T[] {
  const a = items.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** A stable rank for a name under a seed: sorting by it gives a seeded, path-independent spread. */
export function seededRank(seed: number, name: string): string {
  return createHash('sha256').update(`${seed}\0${name}`).digest('hex').slice(0, 16);
}

/** `length` incompressible bytes, a pure function of (seed, stream). */
export function randomBytesSeeded(seed: number, stream: number, length: number): Buffer {
  const key = createHash('sha256').update(`carryon-random:${seed}`).digest();
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(stream >>> 0, 0);
  const cipher = createCipheriv('aes-256-ctr', key, iv);
  return cipher.update(Buffer.alloc(length));
}
