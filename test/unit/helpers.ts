// Shared helpers for the unit tests: a seeded PRNG, temp dirs, and error assertions.
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import { mulberry32u32 } from '../../scripts/lib/prng.js';
import { CarryonError, type ErrorCode } from '../../src/index.js';

/** mulberry32: a tiny deterministic PRNG yielding uint32 values (shared with the fixtures). */
export const prng = mulberry32u32;

/** `n` seeded bytes (xorshift32), the same on every run: data no other test writes. */
export function seededBytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** A random integer in [0, n). */
export function randInt(rng: () => number, n: number): number {
  return n <= 0 ? 0 : rng() % n;
}

/** n pseudo-random bytes. */
export function randomBytes(rng: () => number, n: number): Buffer {
  const out = Buffer.alloc(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) out.writeUInt32LE(rng(), i);
  for (; i < n; i++) out[i] = rng() & 0xff;
  return out;
}

/** n bytes of compressible text made from a small word list. */
export function textBytes(rng: () => number, n: number): Buffer {
  const words = ['carryon', 'block', 'manifest', 'disk', 'laptop', 'server', 'checkout', 'persona', 'the', 'a', 'of'];
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    const w = words[randInt(rng, words.length)]! + (randInt(rng, 8) === 0 ? '\n' : ' ');
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join(''), 'utf8').subarray(0, n);
}

/** A fresh temp dir; remove it with the returned cleanup. */
export async function tempDir(prefix = 'carryon-test-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rm(dir, { recursive: true, force: true }) };
}

/** The value `fn` throws or rejects with; fails the test when it succeeds. */
export async function caught(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a failure, but the call succeeded');
}

/** Assert `fn` fails with a CarryonError of `code`, and return it. */
export async function expectCode(fn: () => unknown, code: ErrorCode): Promise<CarryonError> {
  const err = await caught(fn);
  expect(err).toBeInstanceOf(CarryonError);
  expect((err as CarryonError).code).toBe(code);
  return err as CarryonError;
}
