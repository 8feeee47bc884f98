// Signature -> delta -> patch round trips on our side alone: edits of many kinds, odd sizes, real
// files, both weak sums and both strong hashes, streams cut into awkward chunks, and bounded buffering.
import { createWriteStream, readFileSync } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  applyDelta,
  createDelta,
  createSignature,
  parseSignature,
  RS_BLAKE2_SIG_MAGIC,
  RS_MD4_SIG_MAGIC,
  RS_RK_BLAKE2_SIG_MAGIC,
  RS_RK_MD4_SIG_MAGIC,
  type SignatureOptions,
} from '../../../src/index.js';
import { prng, randInt, randomBytes, tempDir, textBytes } from '../helpers.js';
import { collect, deleteRange, inChunks, insertAt, KiB, MemorySink, patchToBuffer, realFiles, roundTrip, scatterEdits, sha256hex } from './helpers.js';

/** Parse a delta into its commands, to check what the encoder chose. */
function commands(delta: Buffer): Array<{ op: 'literal'; len: number } | { op: 'copy'; pos: number; len: number }> {
  const out: Array<{ op: 'literal'; len: number } | { op: 'copy'; pos: number; len: number }> = [];
  const widths = [1, 2, 4, 8];
  let p = 4;
  const uint = (w: number): number => {
    let v = 0;
    for (let i = 0; i < w; i++) v = v * 256 + delta[p++]!;
    return v;
  };
  for (;;) {
    const op = delta[p++]!;
    if (op === 0) break;
    if (op <= 0x40) {
      out.push({ op: 'literal', len: op });
      p += op;
    } else if (op <= 0x44) {
      const len = uint(widths[op - 0x41]!);
      out.push({ op: 'literal', len });
      p += len;
    } else {
      const k = op - 0x45;
      const pos = uint(widths[k >> 2]!);
      out.push({ op: 'copy', pos, len: uint(widths[k & 3]!) });
    }
  }
  expect(p).toBe(delta.length);
  return out;
}

const KINDS: Array<{ name: string; opts: SignatureOptions; magic: number }> = [
  { name: 'rabinkarp+blake2', opts: {}, magic: RS_RK_BLAKE2_SIG_MAGIC },
  { name: 'rollsum+blake2', opts: { weakSum: 'rollsum' }, magic: RS_BLAKE2_SIG_MAGIC },
  { name: 'rabinkarp+md4', opts: { strongSum: 'md4' }, magic: RS_RK_MD4_SIG_MAGIC },
  { name: 'rollsum+md4', opts: { weakSum: 'rollsum', strongSum: 'md4' }, magic: RS_MD4_SIG_MAGIC },
];

describe('rdiff round trips', () => {
  const rng = prng(2024);
  const base = randomBytes(rng, 300_000 + 123); // not a multiple of the 512-byte blocks used below
  const bl = 512;
  // [what, new version, largest delta we accept]: a changed region costs its bytes plus the rest of the
  // blocks it cuts (under a block on either side), plus a few command bytes.
  const edits: Array<[string, Buffer, number]> = [
    ['identical', base, 20],
    ['one byte inserted at the start', insertAt(base, 0, Buffer.from([7])), 20],
    ['prepended 10 KiB', Buffer.concat([randomBytes(rng, 10 * KiB), base]), 10 * KiB + 20],
    ['appended 10 KiB', Buffer.concat([base, randomBytes(rng, 10 * KiB)]), 10 * KiB + bl + 20],
    ['inserted in the middle', insertAt(base, 150_001, randomBytes(rng, 777)), 777 + 2 * bl + 20],
    ['deleted from the middle', deleteRange(base, 100_003, 5000), 2 * bl + 20],
    ['truncated to a block multiple', base.subarray(0, 200 * bl), 20],
    ['truncated mid-block', base.subarray(0, 200 * bl + 17), 17 + 20],
    ['last byte changed', Buffer.concat([base.subarray(0, base.length - 1), Buffer.from([base[base.length - 1]! ^ 1])]), bl + 20],
    ['blocks reordered', Buffer.concat([base.subarray(200_000), base.subarray(0, 200_000)]), 3 * bl + 40],
    ['a block repeated', Buffer.concat([base.subarray(0, 50 * bl), base.subarray(10 * bl, 11 * bl), base.subarray(50 * bl)]), 40],
    ['scattered edits', scatterEdits(prng(7), base, 40), 40 * (2 * bl + 320)],
    ['unrelated data', randomBytes(rng, 100_000), 100_000 + 20],
    ['empty', Buffer.alloc(0), 5],
    ['one byte', Buffer.from([base[0]!]), 7],
  ];

  for (const [what, next, maxDelta] of edits) {
    it(`rebuilds the new version exactly: ${what}`, async () => {
      const { delta, rebuilt } = await roundTrip(base, next, { blockLength: bl });
      expect(sha256hex(rebuilt)).toBe(sha256hex(next));
      expect(rebuilt.length).toBe(next.length);
      // Whatever the base shares with the new version travels as COPY: the delta stays small.
      expect(delta.length).toBeLessThanOrEqual(maxDelta);
    });
  }

  it('sends an identical file as one COPY, and finds a 1-byte shift with every sum kind', async () => {
    for (const k of KINDS) {
      const sig = await createSignature(base, { ...k.opts, blockLength: bl });
      expect(sig.readUInt32BE(0), k.name).toBe(k.magic);
      const same = commands(await collect(createDelta(sig, base)));
      expect(same, k.name).toEqual([{ op: 'copy', pos: 0, len: base.length }]);
      const shifted = insertAt(base, 0, Buffer.from([42]));
      const d = await collect(createDelta(sig, shifted));
      const cmds = commands(d);
      expect(cmds[0], k.name).toEqual({ op: 'literal', len: 1 });
      expect(cmds[1], k.name).toEqual({ op: 'copy', pos: 0, len: base.length });
      expect((await patchToBuffer(base, d)).equals(shifted), k.name).toBe(true);
    }
  });

  it('copies the lowest-numbered of identical blocks and extends consecutive COPYs', async () => {
    const zeros = Buffer.alloc(64 * bl);
    const next = Buffer.concat([zeros.subarray(0, 10 * bl), Buffer.from('x'), zeros.subarray(0, 3 * bl)]);
    const sig = await createSignature(zeros, { blockLength: bl });
    expect(parseSignature(sig).blockCount).toBe(64);
    const cmds = commands(await collect(createDelta(sig, next)));
    // Every zero block matches block 0, so runs of them are COPY(0, bl) repeated, never extended
    // (block 0 does not follow block 0) — librsync behaves the same.
    expect(cmds.filter((c) => c.op === 'copy').every((c) => c.op === 'copy' && c.pos === 0 && c.len === bl)).toBe(true);
    expect(cmds.filter((c) => c.op === 'literal')).toEqual([{ op: 'literal', len: 1 }]);
    const counting = Buffer.alloc(64 * bl);
    for (let i = 0; i < counting.length; i += 4) counting.writeUInt32BE(i, i);
    const sig2 = await createSignature(counting, { blockLength: bl });
    const cmds2 = commands(await collect(createDelta(sig2, counting.subarray(bl, 40 * bl))));
    expect(cmds2).toEqual([{ op: 'copy', pos: bl, len: 39 * bl }]);
  });

  it('cuts unmatched runs into literals of at most 32 KiB, as librsync 2.3.2 does', async () => {
    const next = randomBytes(prng(8), 100_000);
    const cmds = commands(await collect(createDelta(await createSignature(base, { blockLength: bl }), next)));
    expect(cmds).toEqual([
      { op: 'literal', len: 32768 },
      { op: 'literal', len: 32768 },
      { op: 'literal', len: 32768 },
      { op: 'literal', len: 100_000 - 3 * 32768 },
    ]);
  });

  it('handles tiny and empty files on either side, with every block length edge', async () => {
    const cases: Array<[Buffer, Buffer, number]> = [
      [Buffer.alloc(0), Buffer.alloc(0), 0],
      [Buffer.alloc(0), Buffer.from('hello'), 0],
      [Buffer.from('hello'), Buffer.alloc(0), 0],
      [Buffer.from([1]), Buffer.from([1]), 1],
      [Buffer.from([1]), Buffer.from([2]), 1],
      [Buffer.from([1]), Buffer.from([1, 1, 1]), 1],
      [Buffer.from('abcdef'), Buffer.from('defabc'), 3],
      [Buffer.from('abcdefg'), Buffer.from('gabcdef'), 3],
      [textBytes(prng(9), 1000), textBytes(prng(9), 1001), 1000],
      [textBytes(prng(9), 1000), textBytes(prng(9), 999), 1000],
      [textBytes(prng(9), 1000), textBytes(prng(9), 1000), 4096],
    ];
    for (const [a, b, blockLength] of cases) {
      const { rebuilt, sig } = await roundTrip(a, b, { blockLength });
      expect(rebuilt.equals(b), `${a.length} -> ${b.length} @${blockLength}`).toBe(true);
      const expectedBlocks = blockLength === 0 ? Math.ceil(a.length / 256) : Math.ceil(a.length / blockLength);
      expect(parseSignature(sig).blockCount).toBe(expectedBlocks);
    }
  });

  it('rebuilds seeded random edits of random sizes, for every sum kind and several strong lengths', async () => {
    const r = prng(31337);
    for (let i = 0; i < 24; i++) {
      const k = KINDS[i % KINDS.length]!;
      const a = randomBytes(r, randInt(r, 40_000));
      const b = scatterEdits(r, a, randInt(r, 8));
      const blockLength = 1 + randInt(r, 3000);
      const strongLength = i % 3 === 0 ? 'min' : 1 + randInt(r, k.opts.strongSum === 'md4' ? 16 : 32);
      const { rebuilt } = await roundTrip(a, b, { ...k.opts, blockLength, strongLength });
      expect(sha256hex(rebuilt), `case ${i}`).toBe(sha256hex(b));
    }
  });

  it('round-trips real files with edits', async () => {
    const files = realFiles(77, 8, 3 * 1024 * 1024);
    const r = prng(78);
    for (const f of files) {
      const a = readFileSync(f);
      const b = scatterEdits(r, a, 5);
      const { delta, rebuilt } = await roundTrip(a, b);
      expect(sha256hex(rebuilt), f).toBe(sha256hex(b));
      if (a.length > 256 * KiB) expect(delta.length, f).toBeLessThan(a.length / 4);
    }
  });
});

describe('rdiff streaming', () => {
  const rng = prng(99);
  const base = textBytes(rng, 200_000);
  const next = scatterEdits(prng(100), base, 20);

  it('gives the same signature and delta for a buffer, a Readable and awkward chunkings', async () => {
    const sig = await createSignature(base, { blockLength: 700 });
    const delta = await collect(createDelta(sig, next));
    for (const sizes of [[1], [7, 1, 4096], [699, 700, 701], [65_536]]) {
      expect((await createSignature(inChunks(base, sizes), { blockLength: 700 })).equals(sig), sizes.join(',')).toBe(true);
      expect((await collect(createDelta(sig, inChunks(next, sizes)))).equals(delta), sizes.join(',')).toBe(true);
      expect((await patchToBuffer(base, inChunks(delta, sizes))).equals(next), sizes.join(',')).toBe(true);
    }
    expect((await createSignature(Readable.from([base]), { blockLength: 700 })).equals(sig)).toBe(true);
    expect((await collect(createDelta(parseSignature(sig), Readable.from(inChunks(next, [5000]))))).equals(delta)).toBe(true);
  });

  it('uses the size hint of a stream to pick the block length rdiff would', async () => {
    const sized = await createSignature(inChunks(base, [4096]), { baseSize: base.length });
    expect(sized.equals(await createSignature(base))).toBe(true);
    expect(parseSignature(sized).blockLength).toBe(384); // sqrt(200000) = 447, rounded down to 128s
    expect(parseSignature(await createSignature(inChunks(base, [4096]))).blockLength).toBe(2048);
  });

  it('patches from an open file as base, into a file', async () => {
    const { dir, cleanup } = await tempDir('carryon-rdiff-');
    try {
      await writeFile(path.join(dir, 'base'), base);
      const delta = await collect(createDelta(await createSignature(base), next));
      const fh = await open(path.join(dir, 'base'), 'r');
      try {
        const { bytes } = await applyDelta(fh, delta, createWriteStream(path.join(dir, 'out')));
        expect(bytes).toBe(next.length);
      } finally {
        await fh.close();
      }
      expect(sha256hex(readFileSync(path.join(dir, 'out')))).toBe(sha256hex(next));
    } finally {
      await cleanup();
    }
  });

  it('emits delta output while reading, holding about a block and a literal, not the whole input', async () => {
    const sig = await createSignature(randomBytes(prng(5), 64 * KiB), { blockLength: 4096 });
    let fed = 0;
    const total = 16 * 1024 * KiB;
    async function* unrelated(): AsyncGenerator<Uint8Array> {
      const r = prng(6);
      for (; fed < total; fed += 16 * KiB) yield randomBytes(r, 16 * KiB);
    }
    let firstOutputAt = -1;
    let outBytes = 0;
    for await (const chunk of createDelta(sig, unrelated())) {
      if (firstOutputAt < 0) firstOutputAt = fed;
      outBytes += chunk.length;
    }
    expect(firstOutputAt).toBeGreaterThan(0);
    expect(firstOutputAt).toBeLessThanOrEqual(64 * KiB + 4096 + 32 * KiB + 16 * KiB);
    expect(outBytes).toBeGreaterThan(total); // all literal, plus command bytes
  });

  it('writes patch output while the delta is still arriving', async () => {
    const big = randomBytes(prng(4), 4 * 1024 * KiB);
    const delta = await collect(createDelta(await createSignature(Buffer.alloc(0)), big));
    let fed = 0;
    async function* slowly(): AsyncGenerator<Uint8Array> {
      for await (const c of inChunks(delta, [8 * KiB])) {
        fed += c.length;
        yield c;
      }
    }
    const sink = new MemorySink();
    let fedAtFirstWrite = -1;
    const origWrite = sink._write.bind(sink);
    sink._write = (chunk, enc, cb) => {
      if (fedAtFirstWrite < 0) fedAtFirstWrite = fed;
      origWrite(chunk, enc, cb);
    };
    await applyDelta(Buffer.alloc(0), slowly(), sink);
    expect(sink.result().equals(big)).toBe(true);
    expect(fedAtFirstWrite).toBeGreaterThan(0);
    expect(fedAtFirstWrite).toBeLessThanOrEqual(128 * KiB);
  });
});
