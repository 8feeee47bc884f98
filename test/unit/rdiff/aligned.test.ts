// createAlignedDelta: a delta by position (no signature) for edits in place and appends. Its output is
// an ordinary librsync delta: applyDelta and Debian's `rdiff patch` rebuild the new version from it.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAlignedDelta } from '../../../src/index.js';
import { prng, randomBytes, tempDir, textBytes } from '../helpers.js';
import { insertAt, KiB, MiB, patchToBuffer, rdiff, sha256hex } from './helpers.js';

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('carryon-rdiff-aligned-'));
});
afterAll(async () => {
  await cleanup();
});

/** Rebuild `next` from the delta both with applyDelta and with `rdiff patch`. */
async function rebuildsBothWays(base: Buffer, next: Buffer, delta: Buffer, label: string): Promise<void> {
  expect(sha256hex(await patchToBuffer(base, delta)), `${label}: applyDelta`).toBe(sha256hex(next));
  const b = path.join(dir, `${label}.base`);
  const d = path.join(dir, `${label}.delta`);
  const out = path.join(dir, `${label}.out`);
  writeFileSync(b, base);
  writeFileSync(d, delta);
  rdiff(['-f', 'patch', b, d, out]);
  expect(sha256hex(readFileSync(out)), `${label}: rdiff patch`).toBe(sha256hex(next));
}

describe('createAlignedDelta', () => {
  const rng = prng(12);
  const base = Buffer.concat([textBytes(rng, 600 * KiB), randomBytes(rng, MiB - 600 * KiB)]);

  it('sends exactly the bytes overwritten in place, wherever they fall', async () => {
    const next = Buffer.from(base);
    const edits: Array<[number, Buffer]> = [[0, Buffer.from('From ')], [4095, Buffer.from('XY')], [300_000, randomBytes(rng, 3000)], [MiB - 4, Buffer.from('0001')]];
    for (const [at, bytes] of edits) bytes.copy(next, at);
    const delta = createAlignedDelta(base, next)!;
    // 5 + 2 + 3000 + 4 literal bytes, a few command bytes each: nowhere near a 2 KiB block per edit.
    expect(delta.length).toBeLessThan(3011 + 64);
    await rebuildsBothWays(base, next, delta, 'in-place');
  });

  it('sends an append as one literal after one copy, and a truncation as a shorter copy', async () => {
    const appended = Buffer.concat([base.subarray(0, 700 * KiB), textBytes(rng, 10 * KiB)]);
    const shortBase = base.subarray(0, 700 * KiB);
    const delta = createAlignedDelta(shortBase, appended)!;
    expect(delta.length).toBeLessThan(10 * KiB + 32);
    await rebuildsBothWays(shortBase, appended, delta, 'append');
    const cut = base.subarray(0, 123_457);
    const d2 = createAlignedDelta(base, cut)!;
    expect(d2.length).toBeLessThan(32);
    await rebuildsBothWays(base, cut, d2, 'truncate');
  });

  it('is a valid delta for identical, empty and entirely new versions', async () => {
    await rebuildsBothWays(base, base, createAlignedDelta(base, base)!, 'same');
    await rebuildsBothWays(base, Buffer.alloc(0), createAlignedDelta(base, Buffer.alloc(0))!, 'empty-next');
    const fresh = randomBytes(rng, 5000);
    await rebuildsBothWays(Buffer.alloc(0), fresh, createAlignedDelta(Buffer.alloc(0), fresh)!, 'empty-base');
  });

  it('gives up (null) past maxLiteral: an insertion shifts every byte after it', () => {
    const shifted = insertAt(base, 1000, Buffer.from('inserted text'));
    expect(createAlignedDelta(base, shifted, shifted.length / 2)).toBeNull();
    expect(createAlignedDelta(base, shifted)).not.toBeNull();
  });
});
