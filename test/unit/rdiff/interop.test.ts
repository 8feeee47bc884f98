// Interoperability with Debian's `rdiff` (librsync 2.3), both ways, on temp files: its signatures
// parsed and reproduced byte for byte, our deltas applied by `rdiff patch`, its deltas applied by us,
// and our deltas equal to its own. Results are compared by SHA-256.
import { readFileSync, writeFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createDelta,
  createSignature,
  parseSignature,
  recommendedBlockLength,
  RS_BLAKE2_SIG_MAGIC,
  RS_MD4_SIG_MAGIC,
  RS_RK_BLAKE2_SIG_MAGIC,
  RS_RK_MD4_SIG_MAGIC,
  type SignatureOptions,
} from '../../../src/index.js';
import { prng, randomBytes, tempDir, textBytes } from '../helpers.js';
import { collect, deleteRange, insertAt, KiB, patchToBuffer, rdiff, realFiles, scatterEdits, sha256hex } from './helpers.js';

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
let n = 0;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('carryon-rdiff-interop-'));
});
afterAll(async () => {
  await cleanup();
});

/** Write data to a fresh temp file and return its path. */
function file(data: Uint8Array, name = 'f'): string {
  const p = path.join(dir, `${n++}-${name}`);
  writeFileSync(p, data);
  return p;
}

function fresh(name: string): string {
  return path.join(dir, `${n++}-${name}`);
}

/** rdiff signature options matching ours. */
const OPTION_SETS: Array<{ args: string[]; opts: SignatureOptions; magic: number }> = [
  { args: [], opts: {}, magic: RS_RK_BLAKE2_SIG_MAGIC },
  { args: ['-b', '1024', '-S', '8'], opts: { blockLength: 1024, strongLength: 8 }, magic: RS_RK_BLAKE2_SIG_MAGIC },
  { args: ['-S', '-1'], opts: { strongLength: 'min' }, magic: RS_RK_BLAKE2_SIG_MAGIC },
  { args: ['-R', 'rollsum'], opts: { weakSum: 'rollsum' }, magic: RS_BLAKE2_SIG_MAGIC },
  { args: ['-H', 'md4'], opts: { strongSum: 'md4' }, magic: RS_RK_MD4_SIG_MAGIC },
  { args: ['-H', 'md4', '-R', 'rollsum', '-b', '300', '-S', '-1'], opts: { strongSum: 'md4', weakSum: 'rollsum', blockLength: 300, strongLength: 'min' }, magic: RS_MD4_SIG_MAGIC },
];

/** One base/new pair checked every way against rdiff; returns our delta's size. */
async function checkBothWays(base: Buffer, next: Buffer, o: (typeof OPTION_SETS)[number], label: string): Promise<number> {
  const basePath = file(base, 'base');
  const nextPath = file(next, 'new');
  const want = sha256hex(next);

  // Signatures: rdiff's bytes equal ours, and parse.
  const theirSigPath = fresh('their.sig');
  rdiff(['-f', ...o.args, 'signature', basePath, theirSigPath]);
  const theirSig = readFileSync(theirSigPath);
  const ourSig = await createSignature(base, o.opts);
  expect(ourSig.equals(theirSig), `${label}: signature bytes`).toBe(true);
  const parsed = parseSignature(theirSig);
  expect(parsed.magic, label).toBe(o.magic);
  expect(parsed.blockCount, label).toBe(Math.ceil(base.length / parsed.blockLength));

  // Our delta: equal to rdiff's own, and `rdiff patch` rebuilds the new version from it.
  const theirDeltaPath = fresh('their.delta');
  rdiff(['-f', 'delta', theirSigPath, nextPath, theirDeltaPath]);
  const theirDelta = readFileSync(theirDeltaPath);
  const ourDelta = await collect(createDelta(parsed, next));
  if (base.length > 0) expect(ourDelta.equals(theirDelta), `${label}: delta bytes`).toBe(true); // (an empty signature makes rdiff cut literals by its buffer size)
  const ourDeltaPath = file(ourDelta, 'our.delta');
  const rebuiltByThem = fresh('rebuilt-by-rdiff');
  rdiff(['-f', 'patch', basePath, ourDeltaPath, rebuiltByThem]);
  expect(sha256hex(readFileSync(rebuiltByThem)), `${label}: rdiff patch of our delta`).toBe(want);

  // rdiff's delta made from OUR signature file, applied by us.
  const ourSigPath = file(ourSig, 'our.sig');
  const theirDelta2Path = fresh('their2.delta');
  rdiff(['-f', 'delta', ourSigPath, nextPath, theirDelta2Path]);
  expect(sha256hex(await patchToBuffer(base, readFileSync(theirDelta2Path))), `${label}: our patch of rdiff's delta`).toBe(want);
  expect(sha256hex(await patchToBuffer(base, theirDelta)), `${label}: our patch of rdiff's delta`).toBe(want);
  return ourDelta.length;
}

describe('rdiff interop', () => {
  it('rdiff is installed (scripts/install-test-deps.sh)', () => {
    rdiff(['--version']);
  });

  it('writes the signature rdiff writes, for every hash, rollsum, block and strong-length option', async () => {
    const base = textBytes(prng(1), 150_000);
    for (const o of OPTION_SETS) {
      const p = file(base, 'base');
      const sigPath = fresh('sig');
      rdiff(['-f', ...o.args, 'signature', p, sigPath]);
      const theirs = readFileSync(sigPath);
      expect((await createSignature(base, o.opts)).equals(theirs), o.args.join(' ')).toBe(true);
      const sig = parseSignature(theirs);
      expect(theirs.readUInt32BE(0)).toBe(o.magic);
      expect(sig.blockLength).toBe(o.opts.blockLength ?? recommendedBlockLength(base.length));
    }
  });

  it("picks rdiff's default block and strong lengths for every base size", async () => {
    const rng = prng(2);
    for (const size of [0, 1, 255, 256, 65_536, 65_537, 300_000, 1_048_576, 5_000_000]) {
      const base = randomBytes(rng, size);
      const p = file(base, 'base');
      for (const args of [[], ['-S', '-1']]) {
        const sigPath = fresh('sig');
        rdiff(['-f', ...args, 'signature', p, sigPath]);
        const theirs = readFileSync(sigPath);
        const ours = await createSignature(base, args.length ? { strongLength: 'min' } : {});
        expect(ours.subarray(0, 12).toString('hex'), `${size} ${args.join(' ')}`).toBe(theirs.subarray(0, 12).toString('hex'));
        expect(sha256hex(ours), `${size} ${args.join(' ')}`).toBe(sha256hex(theirs));
      }
    }
  });

  it('agrees with rdiff both ways on seeded edits, for every option set', async () => {
    const rng = prng(3);
    const base = randomBytes(rng, 200_000 + 77);
    const edits: Array<[string, Buffer]> = [
      ['identical', base],
      ['insert', insertAt(base, 12_345, randomBytes(rng, 1000))],
      ['delete', deleteRange(base, 54_321, 3000)],
      ['append', Buffer.concat([base, randomBytes(rng, 5000)])],
      ['prepend', Buffer.concat([randomBytes(rng, 5000), base])],
      ['scattered', scatterEdits(prng(4), base, 30)],
      ['unrelated', randomBytes(rng, 120_000)],
      ['empty new', Buffer.alloc(0)],
      ['one byte new', Buffer.from([9])],
    ];
    for (const o of OPTION_SETS) {
      for (const [what, next] of edits) {
        await checkBothWays(base, next, o, `${o.args.join(' ') || 'defaults'} / ${what}`);
      }
    }
  });

  it('agrees with rdiff on tiny, empty and block-multiple bases', async () => {
    const o = OPTION_SETS[0]!;
    const rng = prng(5);
    const cases: Array<[string, Buffer, Buffer]> = [
      ['empty base', Buffer.alloc(0), randomBytes(rng, 70_000)],
      ['empty both', Buffer.alloc(0), Buffer.alloc(0)],
      ['one-byte base, same', Buffer.from([1]), Buffer.from([1])],
      ['one-byte base, grown', Buffer.from([1]), Buffer.from([1, 2, 1])],
      ['block multiple', randomBytes(rng, 256 * 100), Buffer.alloc(0)],
    ];
    const blockMultiple = cases[4]![1];
    cases[4]![2] = Buffer.concat([blockMultiple.subarray(256 * 50), blockMultiple.subarray(0, 256 * 50)]);
    for (const [what, base, next] of cases) await checkBothWays(base, next, o, what);
  });

  it('agrees with rdiff both ways on real files from /usr/lib and /usr/share/doc', async () => {
    const rng = prng(6);
    for (const f of realFiles(7, 10, 4 * 1024 * KiB)) {
      const base = readFileSync(f);
      const next = scatterEdits(rng, base, 4);
      const size = await checkBothWays(base, next, OPTION_SETS[0]!, f);
      if (base.length > 512 * KiB) expect(size, f).toBeLessThan(base.length / 8);
    }
  });

  it('encodes COPY offsets beyond 4 GiB with 8-byte arguments, as rdiff does, and both apply them', async () => {
    // A signature claiming a 4 GiB + 1 MiB base whose block 4096 (offset 2^32) is X; a sparse file
    // plays that base.
    const MiB = 1024 * KiB;
    const x = randomBytes(prng(9), MiB);
    const sigX = await createSignature(x, { blockLength: MiB });
    const dummy = Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.alloc(32)]);
    const crafted = Buffer.concat([sigX.subarray(0, 12), ...Array<Buffer>(4096).fill(dummy), sigX.subarray(12)]);
    expect(parseSignature(crafted).blockCount).toBe(4097);
    const ours = await collect(createDelta(crafted, x));
    const copy8 = Buffer.alloc(13);
    copy8[0] = 0x53; // COPY_N8_N4
    copy8.writeUInt32BE(1, 1); // offset 2^32: high word 1, low word 0
    copy8.writeUInt32BE(MiB, 9);
    expect(ours.toString('hex')).toBe(Buffer.concat([Buffer.from('72730236', 'hex'), copy8, Buffer.from([0])]).toString('hex'));
    const theirs = fresh('their.delta');
    rdiff(['-f', 'delta', file(crafted, 'crafted.sig'), file(x, 'x'), theirs]);
    expect(readFileSync(theirs).equals(ours)).toBe(true);

    const basePath = fresh('sparse-base');
    const fh = await open(basePath, 'w+');
    try {
      await fh.truncate(2 ** 32 + MiB);
      await fh.write(x, 0, x.length, 2 ** 32);
      expect(sha256hex(await patchToBuffer(fh, ours))).toBe(sha256hex(x));
    } finally {
      await fh.close();
    }
    const out = fresh('out');
    rdiff(['-f', 'patch', basePath, file(ours, 'our.delta'), out]);
    expect(sha256hex(readFileSync(out))).toBe(sha256hex(x));
    await rm(basePath);
  });

  it('rebuilds one real file from another (a library and its neighbour) as rdiff does', async () => {
    const [a, b] = realFiles(8, 2, 2 * 1024 * KiB);
    await checkBothWays(readFileSync(a!), readFileSync(b!), OPTION_SETS[0]!, `${a} -> ${b}`);
  });
});
