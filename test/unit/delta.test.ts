import { describe, expect, it } from 'vitest';
import { applyBlockPatch, encodeBlockPatch } from '../../src/index.js';
import { expectCode, prng, randInt, randomBytes } from './helpers.js';

const KiB = 1024;
const MAX = 4 * 1024 * KiB;

/** Build a patch by hand: nextLength, then (offset, length, bytes) per range. */
function buildPatch(nextLength: number, ranges: Array<[number, Buffer | number]>, count = ranges.length): Buffer {
  const parts: Buffer[] = [Buffer.alloc(8)];
  parts[0]!.writeUInt32LE(nextLength, 0);
  parts[0]!.writeUInt32LE(count, 4);
  for (const [off, data] of ranges) {
    const h = Buffer.alloc(8);
    const bytes = typeof data === 'number' ? Buffer.alloc(data, 0x5a) : data;
    h.writeUInt32LE(off, 0);
    h.writeUInt32LE(bytes.length, 4);
    parts.push(h, bytes);
  }
  return Buffer.concat(parts);
}

function roundTrip(base: Buffer, next: Buffer): Buffer {
  const patch = encodeBlockPatch(base, next);
  const rebuilt = applyBlockPatch(base, patch, Math.max(next.length, 1));
  expect(rebuilt.length).toBe(next.length);
  expect(rebuilt.equals(next)).toBe(true);
  return patch;
}

describe('encodeBlockPatch / applyBlockPatch round trip', () => {
  it('rebuilds next after scattered random edits (300 seeded cases)', () => {
    const rng = prng(301);
    for (let t = 0; t < 300; t++) {
      const size = [4096, 65536, 1 + randInt(rng, 70_000)][t % 3]!;
      const base = randomBytes(rng, size);
      const next = Buffer.from(base);
      const edits = 1 + randInt(rng, 12);
      for (let e = 0; e < edits; e++) {
        const off = randInt(rng, size);
        const len = Math.min(size - off, 1 + randInt(rng, t % 2 ? 16 : 3000));
        randomBytes(rng, len).copy(next, off);
      }
      roundTrip(base, next);
    }
  });

  it('rebuilds next when it grows past a shorter base (appends), with and without edits', () => {
    const rng = prng(302);
    for (let t = 0; t < 60; t++) {
      const baseLen = randInt(rng, 20_000);
      const base = randomBytes(rng, baseLen);
      const extra = 1 + randInt(rng, 50_000);
      const next = Buffer.concat([base, t % 4 === 0 ? Buffer.alloc(extra) : randomBytes(rng, extra)]);
      if (t % 2 && baseLen > 0) next[randInt(rng, baseLen)] ^= 0xff;
      roundTrip(base, next);
    }
  });

  it('rebuilds next when it shrinks', () => {
    const rng = prng(303);
    for (let t = 0; t < 60; t++) {
      const base = randomBytes(rng, 1 + randInt(rng, 65536));
      const next = Buffer.from(base.subarray(0, randInt(rng, base.length)));
      if (t % 2 && next.length > 0) next[randInt(rng, next.length)] ^= 0x0f;
      roundTrip(base, next);
    }
  });

  it('encodes identical blocks as an empty patch', () => {
    const base = randomBytes(prng(304), 65536);
    const patch = roundTrip(base, Buffer.from(base));
    expect(patch.length).toBe(8);
    expect(patch.readUInt32LE(0)).toBe(65536);
    expect(patch.readUInt32LE(4)).toBe(0);
  });

  it('rebuilds an all-different block', () => {
    const rng = prng(305);
    const base = randomBytes(rng, 65536);
    const next = Buffer.from(base.map((b) => b ^ 0xff));
    const patch = roundTrip(base, next);
    expect(patch.length).toBe(8 + 8 + 65536);
  });

  it('rebuilds from an empty base, and to an empty next', () => {
    const rng = prng(306);
    roundTrip(Buffer.alloc(0), randomBytes(rng, 10_000));
    roundTrip(Buffer.alloc(0), Buffer.alloc(0));
    roundTrip(randomBytes(rng, 5000), Buffer.alloc(0));
    // next of zeros past an empty base: still rebuilt exactly.
    roundTrip(Buffer.alloc(0), Buffer.alloc(4096));
  });

  it('keeps a patch small for a small edit: a 100-byte edit in 64 KiB is under 1 KiB', () => {
    const rng = prng(307);
    for (let t = 0; t < 50; t++) {
      const base = randomBytes(rng, 65536);
      const next = Buffer.from(base);
      randomBytes(rng, 100).copy(next, randInt(rng, 65536 - 100));
      expect(roundTrip(base, next).length).toBeLessThan(KiB);
    }
  });

  it('keeps a patch near the edited bytes for a few scattered 4 KiB page writes', () => {
    const rng = prng(308);
    const base = randomBytes(rng, 65536);
    const next = Buffer.from(base);
    for (const page of [1, 5, 12]) randomBytes(rng, 4096).copy(next, page * 4096);
    const patch = roundTrip(base, next);
    expect(patch.length).toBeLessThanOrEqual(8 + 3 * (8 + 4096));
  });

  it('works on Uint8Array views with nonzero offsets', () => {
    const rng = prng(309);
    const arena = randomBytes(rng, 200_000);
    const base = new Uint8Array(arena.buffer, arena.byteOffset + 3, 65536);
    const nextBuf = Buffer.from(arena.subarray(3, 3 + 65536));
    nextBuf[777] ^= 1;
    const arena2 = Buffer.concat([Buffer.alloc(5), nextBuf]);
    const next = new Uint8Array(arena2.buffer, arena2.byteOffset + 5, 65536);
    const patch = encodeBlockPatch(base, next);
    expect(patch.length).toBeLessThan(200);
    expect(applyBlockPatch(base, new Uint8Array(patch), 65536).equals(nextBuf)).toBe(true);
  });
});

describe('applyBlockPatch rejects bad patches with BLOCK_CORRUPT', () => {
  const base = randomBytes(prng(320), 4096);

  it('accepts the hand-built good patch the cases below break', () => {
    const out = applyBlockPatch(base, buildPatch(4096, [[0, 10], [100, 20]]), 4096);
    expect(out.subarray(0, 10).equals(Buffer.alloc(10, 0x5a))).toBe(true);
    expect(out.subarray(10, 100).equals(base.subarray(10, 100))).toBe(true);
    expect(out.subarray(100, 120).equals(Buffer.alloc(20, 0x5a))).toBe(true);
    expect(out.subarray(120).equals(base.subarray(120))).toBe(true);
  });

  it('a patch shorter than its header', async () => {
    for (const n of [0, 1, 4, 7]) await expectCode(() => applyBlockPatch(base, Buffer.alloc(n), 4096), 'BLOCK_CORRUPT');
  });

  it('a patch truncated anywhere after the header', async () => {
    const good = buildPatch(4096, [[0, 10], [100, 20]]);
    for (let n = 8 + 1; n < good.length; n++) {
      await expectCode(() => applyBlockPatch(base, good.subarray(0, n), 4096), 'BLOCK_CORRUPT');
    }
    const real = encodeBlockPatch(base, Buffer.concat([base, Buffer.alloc(100, 1)]));
    await expectCode(() => applyBlockPatch(base, real.subarray(0, real.length - 1), 8192), 'BLOCK_CORRUPT');
  });

  it('a range count larger than the ranges present', async () => {
    await expectCode(() => applyBlockPatch(base, buildPatch(4096, [[0, 10]], 2), 4096), 'BLOCK_CORRUPT');
    await expectCode(() => applyBlockPatch(base, buildPatch(4096, [], 0xffffffff), 4096), 'BLOCK_CORRUPT');
  });

  it('a range out of bounds of nextLength', async () => {
    await expectCode(() => applyBlockPatch(base, buildPatch(4096, [[4090, 7]]), 4096), 'BLOCK_CORRUPT');
    await expectCode(() => applyBlockPatch(base, buildPatch(100, [[100, 1]]), 4096), 'BLOCK_CORRUPT');
    await expectCode(() => applyBlockPatch(base, buildPatch(4096, [[0xfffffff0, 0]]), 4096), 'BLOCK_CORRUPT');
    // A length field far past the patch itself.
    const huge = buildPatch(4096, [[0, 0]]);
    huge.writeUInt32LE(0xffffffff, 12);
    await expectCode(() => applyBlockPatch(base, huge, 4096), 'BLOCK_CORRUPT');
  });

  it('overlapping or out-of-order ranges', async () => {
    await expectCode(() => applyBlockPatch(base, buildPatch(4096, [[0, 10], [5, 10]]), 4096), 'BLOCK_CORRUPT');
    await expectCode(() => applyBlockPatch(base, buildPatch(4096, [[200, 4], [0, 4]]), 4096), 'BLOCK_CORRUPT');
    await expectCode(() => applyBlockPatch(base, buildPatch(4096, [[0, 10], [20, 10], [15, 1]]), 4096), 'BLOCK_CORRUPT');
  });

  it('trailing bytes after the last range', async () => {
    const good = buildPatch(4096, [[0, 10]]);
    await expectCode(() => applyBlockPatch(base, Buffer.concat([good, Buffer.alloc(1)]), 4096), 'BLOCK_CORRUPT');
    await expectCode(() => applyBlockPatch(base, Buffer.concat([buildPatch(4096, []), Buffer.alloc(8)]), 4096), 'BLOCK_CORRUPT');
  });

  it('a rebuilt size over maxBytes', async () => {
    await expectCode(() => applyBlockPatch(base, buildPatch(4097, []), 4096), 'BLOCK_CORRUPT');
    await expectCode(() => applyBlockPatch(base, buildPatch(0xffffffff, []), MAX), 'BLOCK_CORRUPT');
    const real = encodeBlockPatch(base, Buffer.concat([base, base]));
    await expectCode(() => applyBlockPatch(base, real, 8191), 'BLOCK_CORRUPT');
    expect(applyBlockPatch(base, real, 8192).equals(Buffer.concat([base, base]))).toBe(true);
  });
});
