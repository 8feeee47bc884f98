// Every bad input is rejected with a CarryonError: malformed and truncated signatures, bad options,
// and hostile deltas (bad magic, reserved commands, zero and absurd lengths, COPY outside the base,
// missing END, trailing bytes, output over the limit), also against a file base. A seeded fuzz of
// mutated and truncated deltas never escapes as another kind of error.
import { writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  applyDelta,
  CarryonError,
  createDelta,
  createSignature,
  MAX_BLOCK_LENGTH,
  parseSignature,
  RS_DELTA_MAGIC,
  RS_RK_BLAKE2_SIG_MAGIC,
  RS_RK_MD4_SIG_MAGIC,
} from '../../../src/index.js';
import { expectCode, prng, randInt, randomBytes, tempDir, textBytes } from '../helpers.js';
import { collect, MemorySink, patchToBuffer, scatterEdits } from './helpers.js';

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

function sigHeader(magic: number, blockLength: number, strongLength: number): Buffer {
  return Buffer.concat([u32(magic), u32(blockLength), u32(strongLength)]);
}

/** A delta from raw command bytes. */
function delta(...parts: Array<number[] | Buffer>): Buffer {
  return Buffer.concat([u32(RS_DELTA_MAGIC), ...parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)))]);
}

const base = textBytes(prng(1), 10_000);

async function apply(d: Buffer, b: Uint8Array = base, maxOutputBytes?: number): Promise<Buffer> {
  return patchToBuffer(b, d, maxOutputBytes === undefined ? {} : { maxOutputBytes });
}

describe('parseSignature rejects bad signatures', () => {
  it('accepts a well-formed one (the control)', () => {
    const sig = parseSignature(Buffer.concat([sigHeader(RS_RK_BLAKE2_SIG_MAGIC, 2048, 8), u32(5), Buffer.alloc(8, 1)]));
    expect(sig.blockCount).toBe(1);
    expect(sig.weakSums[0]).toBe(5);
  });

  it('rejects a short header, a wrong or delta magic, and zero lengths', async () => {
    await expectCode(() => parseSignature(Buffer.alloc(0)), 'BAD_REQUEST');
    await expectCode(() => parseSignature(sigHeader(RS_RK_BLAKE2_SIG_MAGIC, 2048, 8).subarray(0, 11)), 'BAD_REQUEST');
    await expectCode(() => parseSignature(sigHeader(0x72730148, 2048, 8)), 'BAD_REQUEST');
    const e = await expectCode(() => parseSignature(sigHeader(RS_DELTA_MAGIC, 2048, 8)), 'BAD_REQUEST');
    expect(e.message).toMatch(/delta/);
    await expectCode(() => parseSignature(sigHeader(RS_RK_BLAKE2_SIG_MAGIC, 0, 8)), 'BAD_REQUEST');
    await expectCode(() => parseSignature(sigHeader(RS_RK_BLAKE2_SIG_MAGIC, 2048, 0)), 'BAD_REQUEST');
  });

  it('rejects strong lengths beyond the hash and absurd block lengths', async () => {
    await expectCode(() => parseSignature(sigHeader(RS_RK_BLAKE2_SIG_MAGIC, 2048, 33)), 'BAD_REQUEST');
    await expectCode(() => parseSignature(sigHeader(RS_RK_MD4_SIG_MAGIC, 2048, 17)), 'BAD_REQUEST');
    await expectCode(() => parseSignature(sigHeader(RS_RK_BLAKE2_SIG_MAGIC, 2048, 0xffffffff)), 'BAD_REQUEST');
    await expectCode(() => parseSignature(sigHeader(RS_RK_BLAKE2_SIG_MAGIC, MAX_BLOCK_LENGTH + 1, 8)), 'PAYLOAD_TOO_LARGE');
    await expectCode(() => parseSignature(sigHeader(RS_RK_BLAKE2_SIG_MAGIC, 0xffffffff, 8)), 'PAYLOAD_TOO_LARGE');
  });

  it('rejects a signature truncated or extended by any number of bytes short of a block sum', async () => {
    const sig = await createSignature(base, { blockLength: 1000 });
    expect(parseSignature(sig).blockCount).toBe(10);
    for (let cut = 1; cut < 36; cut++) await expectCode(() => parseSignature(sig.subarray(0, sig.length - cut)), 'BAD_REQUEST');
    await expectCode(() => parseSignature(Buffer.concat([sig, Buffer.from([0])])), 'BAD_REQUEST');
  });

  it('stays fast and correct on a crafted signature whose blocks all share one weak sum', async () => {
    // 20,000 blocks with the weak sum of a 64-byte window of `next`, each with a different strong sum.
    // The chain per weak sum is capped (delta.ts MAX_CHAIN), keeping its construction linear; the
    // result must still be right.
    const next = randomBytes(prng(9), 200_000);
    const sig = await createSignature(next.subarray(0, 64), { blockLength: 64 });
    const weak = sig.subarray(12, 16);
    const entries: Buffer[] = [];
    for (let i = 0; i < 20_000; i++) entries.push(weak, randomBytes(prng(i), 32));
    const crafted = Buffer.concat([sig.subarray(0, 12), ...entries]);
    expect(parseSignature(crafted).blockCount).toBe(20_000);
    const d = await collect(createDelta(crafted, next));
    expect((await patchToBuffer(Buffer.alloc(0), d)).equals(next)).toBe(true); // all literal: nothing matched
  });

  it('makes createDelta fail with the same error on a bad signature', async () => {
    await expectCode(() => collect(createDelta(sigHeader(0x12345678, 2048, 8), base)), 'BAD_REQUEST');
  });
});

describe('createSignature rejects bad options and inputs', () => {
  it('rejects invalid block and strong lengths', async () => {
    for (const blockLength of [-1, 1.5, MAX_BLOCK_LENGTH + 1, Number.NaN]) await expectCode(() => createSignature(base, { blockLength }), 'INVALID_ARGUMENT');
    for (const strongLength of [-1, 33, 2.5]) await expectCode(() => createSignature(base, { strongLength }), 'INVALID_ARGUMENT');
    await expectCode(() => createSignature(base, { strongSum: 'md4', strongLength: 17 }), 'INVALID_ARGUMENT');
    await expectCode(() => createSignature(base, { weakSum: 'adler' as never }), 'INVALID_ARGUMENT');
    await expectCode(() => createSignature(Readable.from(['text']), {}), 'INVALID_ARGUMENT');
  });
});

describe('applyDelta rejects hostile deltas', () => {
  it('applies a hand-made valid delta (the control)', async () => {
    const out = await apply(delta([3], Buffer.from('abc'), [0x45, 10, 5], [0x41, 65], Buffer.alloc(65, 0x61), [0x4a, 0, 0, 0, 1], [0]));
    expect(out.equals(Buffer.concat([Buffer.from('abc'), base.subarray(10, 15), Buffer.alloc(65, 0x61), base.subarray(0, 1)]))).toBe(true);
  });

  it('rejects an empty delta, a short magic and a wrong magic', async () => {
    await expectCode(() => apply(Buffer.alloc(0)), 'BAD_REQUEST');
    await expectCode(() => apply(u32(RS_DELTA_MAGIC).subarray(0, 3)), 'BAD_REQUEST');
    await expectCode(() => apply(Buffer.concat([u32(RS_RK_BLAKE2_SIG_MAGIC), Buffer.from([0])])), 'BAD_REQUEST');
  });

  it('rejects every reserved command byte', async () => {
    for (let op = 0x55; op <= 0xff; op++) await expectCode(() => apply(delta([op, 0, 0, 0, 0, 0, 0, 0, 0, 0])), 'BAD_REQUEST');
  });

  it('rejects a delta without END, or truncated inside a command', async () => {
    await expectCode(() => apply(delta()), 'BAD_REQUEST');
    await expectCode(() => apply(delta([3], Buffer.from('abc'))), 'BAD_REQUEST');
    await expectCode(() => apply(delta([5], Buffer.from('abc'))), 'BAD_REQUEST');
    await expectCode(() => apply(delta([0x42, 1])), 'BAD_REQUEST');
    await expectCode(() => apply(delta([0x4f, 0, 0, 0, 0, 0, 0])), 'BAD_REQUEST');
  });

  it('rejects zero lengths', async () => {
    await expectCode(() => apply(delta([0x41, 0], [0])), 'BAD_REQUEST');
    await expectCode(() => apply(delta([0x45, 0, 0], [0])), 'BAD_REQUEST');
  });

  it('rejects a COPY that reads past the end of the base, before writing anything of it', async () => {
    await expectCode(() => apply(delta([0x49, 0x27, 0x10, 1], [0])), 'BAD_REQUEST'); // offset 10000, the base's length
    await expectCode(() => apply(delta([0x4a, 0x27, 0x0f, 0, 2], [0])), 'BAD_REQUEST'); // 9999 + 2
    await expectCode(() => apply(delta([0x45, 0, 1], [0]), Buffer.alloc(0)), 'BAD_REQUEST');
    const e = await expectCode(() => apply(delta([0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], [0])), 'BAD_REQUEST');
    expect(e.data).toMatchObject({ copyOffset: 0, copyLength: 0xffffffff, baseSize: 10_000 });
    // The in-bounds edge is fine.
    expect((await apply(delta([0x4a, 0x27, 0x0f, 0, 1], [0]))).equals(base.subarray(9999))).toBe(true);
  });

  it('rejects absurd 8-byte lengths and offsets without allocating them', async () => {
    const huge = [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    await expectCode(() => apply(delta([0x44, ...huge], [0])), 'BAD_REQUEST');
    await expectCode(() => apply(delta([0x54, ...huge, ...huge], [0])), 'BAD_REQUEST');
    await expectCode(() => apply(delta([0x48, 0, ...huge], [0])), 'BAD_REQUEST');
    // 2^52: a safe integer, so it must fail on the missing bytes (or the output limit), not by allocating.
    const big = [0, 0x10, 0, 0, 0, 0, 0, 0];
    await expectCode(() => apply(delta([0x44, ...big], Buffer.from('only a few bytes'))), 'BAD_REQUEST');
    await expectCode(() => apply(delta([0x44, ...big]), base, 1_000_000), 'PAYLOAD_TOO_LARGE');
  });

  it('rejects bytes after END', async () => {
    await expectCode(() => apply(delta([0], [0])), 'BAD_REQUEST');
    await expectCode(() => apply(delta([1, 0x61], [0], Buffer.from('junk'))), 'BAD_REQUEST');
  });

  it('enforces maxOutputBytes on literals and copies', async () => {
    const good = await collect(createDelta(await createSignature(base), scatterEdits(prng(2), base, 3)));
    const out = await apply(good);
    expect((await apply(good, base, out.length)).equals(out)).toBe(true);
    await expectCode(() => apply(good, base, out.length - 1), 'PAYLOAD_TOO_LARGE');
    await expectCode(() => apply(delta([0x46, 0, 0x27, 0x10], [0]), base, 9999), 'PAYLOAD_TOO_LARGE'); // COPY(0, 10000)
  });

  it('checks COPY against a file base too, and leaves the output open on failure', async () => {
    const { dir, cleanup } = await tempDir('carryon-rdiff-hostile-');
    try {
      const p = path.join(dir, 'base');
      writeFileSync(p, base);
      const fh = await open(p, 'r');
      try {
        const sink = new MemorySink();
        await expectCode(() => applyDelta(fh, delta([0x4a, 0x27, 0x0f, 0, 2], [0]), sink), 'BAD_REQUEST');
        expect(sink.ended).toBe(false);
        const ok = new MemorySink();
        await applyDelta(fh, delta([0x4a, 0x27, 0x0f, 0, 1], [0]), ok);
        expect(ok.result().equals(base.subarray(9999))).toBe(true);
      } finally {
        await fh.close();
      }
    } finally {
      await cleanup();
    }
  });

  it('fails cleanly on every truncation and on seeded mutations of a real delta', async () => {
    // Blocks of the base in a shuffled order, plus edits: a delta dense in COPY commands.
    const r = prng(3);
    const blocks: Buffer[] = [];
    for (let off = 0; off < base.length; off += 64) blocks.push(base.subarray(off, off + 64));
    for (let i = blocks.length - 1; i > 0; i--) {
      const j = randInt(r, i + 1);
      [blocks[i], blocks[j]] = [blocks[j]!, blocks[i]!];
    }
    const next = scatterEdits(r, Buffer.concat(blocks), 4);
    const good = await collect(createDelta(await createSignature(base, { blockLength: 64 }), next));
    expect((await apply(good)).equals(next)).toBe(true);
    for (let cut = 0; cut < good.length; cut++) await expectCode(() => apply(good.subarray(0, cut)), 'BAD_REQUEST');
    const rng = prng(4);
    let rejected = 0;
    for (let i = 0; i < 300; i++) {
      const bad = Buffer.from(good);
      for (let k = 1 + randInt(rng, 3); k > 0; k--) bad[4 + randInt(rng, bad.length - 4)] = randInt(rng, 256);
      try {
        const out = await apply(bad, base, 1_000_000);
        expect(out.length).toBeLessThanOrEqual(1_000_000);
      } catch (err) {
        expect(err).toBeInstanceOf(CarryonError);
        expect(['BAD_REQUEST', 'PAYLOAD_TOO_LARGE']).toContain((err as CarryonError).code);
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(100);
  });

  it('fails cleanly on random garbage after a valid magic', async () => {
    const rng = prng(5);
    for (let i = 0; i < 200; i++) {
      const bad = delta(randomBytes(rng, randInt(rng, 64)));
      try {
        await apply(bad, base, 1_000_000);
      } catch (err) {
        expect(err).toBeInstanceOf(CarryonError);
      }
    }
  });
});
