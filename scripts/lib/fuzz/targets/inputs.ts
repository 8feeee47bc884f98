// Seed-corpus helpers shared by the fuzz targets: deterministic bytes that look like real data.
import type { Rng } from '../../prng.js';

const WORDS = ['carryon', 'block', 'manifest', 'disk', 'laptop', 'server', 'checkout', 'persona', 'the', 'a', 'of', 'ext4', '\n', '\0\0\0\0'];

/** `n` bytes of compressible, text-like data from a small word list. */
export function textLike(rng: Rng, n: number): Buffer {
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    const w = WORDS[rng() % WORDS.length]! + ' ';
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, n);
}

/** `n` incompressible bytes. */
export function noise(rng: Rng, n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = rng() & 0xff;
  return out;
}
