import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  blockCountFor,
  blockId,
  checkBlockSize,
  decodeManifest,
  DEFAULT_BLOCK_SIZE,
  DiskManifest,
  encodeManifest,
  MANIFEST_MAGIC,
  MANIFEST_VERSION,
  manifestId,
  MAX_BLOCKS,
} from '../../src/index.js';
import { expectCode, prng, randInt, randomBytes } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A manifest with seeded ids and holes (every `holeEvery`-th block is a hole). */
function makeManifest(size: number, blockSize: number, seed: number, holeEvery = 3): DiskManifest {
  const rng = prng(seed);
  const m = new DiskManifest(size, blockSize);
  for (let i = 0; i < m.count; i++) m.setId(i, i % holeEvery === 1 ? null : blockId(randomBytes(rng, 16)));
  return m;
}

/** Recompute the trailing SHA-256 after editing the body, so only the edited field is wrong. */
function reseal(buf: Buffer): Buffer {
  const out = Buffer.from(buf);
  createHash('sha256').update(out.subarray(0, out.length - 32)).digest().copy(out, out.length - 32);
  return out;
}

function expectSame(a: DiskManifest, b: DiskManifest): void {
  expect(b.size).toBe(a.size);
  expect(b.blockSize).toBe(a.blockSize);
  expect(b.count).toBe(a.count);
  expect(b.ids.equals(a.ids)).toBe(true);
  for (let i = 0; i < a.count; i++) expect(b.idAt(i)).toBe(a.idAt(i));
}

describe('encodeManifest / decodeManifest', () => {
  it.each([
    ['holes and a short last block', 10 * 64 * KiB + 1234, 64 * KiB],
    ['an exact multiple of the block size', 16 * 4096, 4096],
    ['size 0', 0, 64 * KiB],
    ['a single short block', 1, 4096],
    ['4 MiB blocks', 3 * 4 * MiB + 5, 4 * MiB],
  ])('round-trips a manifest with %s', (_what, size, blockSize) => {
    const m = makeManifest(size, blockSize, size + blockSize);
    const enc = encodeManifest(m);
    expect(enc.length).toBe(32 + m.count * 32 + 32);
    const back = decodeManifest(enc);
    expectSame(m, back);
    // The encoding is canonical: encoding the decoded manifest gives the same bytes (the same id).
    expect(encodeManifest(back).equals(enc)).toBe(true);
  });

  it('keeps holes as holes and ids as ids', () => {
    const m = makeManifest(8 * 4096, 4096, 1);
    const back = decodeManifest(encodeManifest(m));
    for (let i = 0; i < m.count; i++) {
      expect(back.isHole(i)).toBe(i % 3 === 1);
      expect(back.idAt(i) === null).toBe(i % 3 === 1);
    }
  });

  it('writes the documented header layout', () => {
    const m = makeManifest(5 * 4096 + 7, 4096, 2);
    const enc = encodeManifest(m);
    expect(enc.subarray(0, 4).toString('ascii')).toBe('CYDM');
    expect(enc.subarray(0, 4).equals(MANIFEST_MAGIC)).toBe(true);
    expect(enc.readUInt16LE(4)).toBe(MANIFEST_VERSION);
    expect(MANIFEST_VERSION).toBe(1);
    expect(enc.readUInt16LE(6)).toBe(0);
    expect(enc.readUInt32LE(8)).toBe(4096);
    expect(enc.readUInt32LE(12)).toBe(0);
    expect(enc.readBigUInt64LE(16)).toBe(BigInt(5 * 4096 + 7));
    expect(enc.readBigUInt64LE(24)).toBe(6n);
    expect(enc.subarray(32, 32 + 6 * 32).equals(m.ids)).toBe(true);
    expect(enc.subarray(enc.length - 32).equals(createHash('sha256').update(enc.subarray(0, enc.length - 32)).digest())).toBe(true);
  });

  it('decodes from a Uint8Array view at an offset, and copies the ids out of it', () => {
    const m = makeManifest(9 * 4096, 4096, 3);
    const enc = encodeManifest(m);
    const arena = Buffer.concat([Buffer.alloc(13, 0xee), enc, Buffer.alloc(9, 0xdd)]);
    const back = decodeManifest(new Uint8Array(arena.buffer, arena.byteOffset + 13, enc.length));
    expectSame(m, back);
    arena.fill(0, 13 + 32, 13 + 64);
    expect(back.idAt(0)).toBe(m.idAt(0));
  });
});

describe('manifestId', () => {
  it('is the SHA-256 of the encoding, and changes with any block id', () => {
    const m = makeManifest(20 * 4096, 4096, 4);
    const enc = encodeManifest(m);
    expect(manifestId(enc)).toBe(createHash('sha256').update(enc).digest('hex'));
    expect(manifestId(enc)).toBe(blockId(enc));
    m.setId(7, blockId(Buffer.from('other')));
    expect(manifestId(encodeManifest(m))).not.toBe(manifestId(enc));
  });
});

describe('decodeManifest rejects bad input with MANIFEST_INVALID', () => {
  const m = makeManifest(10 * 4096 + 100, 4096, 5);
  const good = encodeManifest(m);

  const edit = (f: (b: Buffer) => void, seal = true): Buffer => {
    const b = Buffer.from(good);
    f(b);
    return seal ? reseal(b) : b;
  };

  it('accepts the good encoding the cases below break', () => {
    expectSame(m, decodeManifest(good));
  });

  it.each<[string, () => Buffer]>([
    ['wrong magic', () => edit((b) => b.write('CYDX', 0, 'ascii'))],
    ['lowercase magic', () => edit((b) => b.write('cydm', 0, 'ascii'))],
    ['unknown version 2', () => edit((b) => b.writeUInt16LE(2, 4))],
    ['version 0', () => edit((b) => b.writeUInt16LE(0, 4))],
    ['nonzero reserved u16 at 6', () => edit((b) => b.writeUInt16LE(1, 6))],
    ['nonzero reserved u32 at 12', () => edit((b) => b.writeUInt32LE(0x100, 12))],
    ['block size not a power of two', () => edit((b) => b.writeUInt32LE(4096 + 4096 / 2, 8))],
    ['block size below 4096', () => edit((b) => b.writeUInt32LE(2048, 8))],
    ['block size 0', () => edit((b) => b.writeUInt32LE(0, 8))],
    ['block size above 4 MiB', () => edit((b) => b.writeUInt32LE(8 * MiB, 8))],
    ['block count one more than the size needs', () => edit((b) => b.writeBigUInt64LE(12n, 24))],
    ['block count one less than the size needs', () => edit((b) => b.writeBigUInt64LE(10n, 24))],
    ['size that needs another block', () => edit((b) => b.writeBigUInt64LE(BigInt(11 * 4096 + 1), 16))],
    ['block count over MAX_BLOCKS', () => edit((b) => b.writeBigUInt64LE(BigInt(MAX_BLOCKS) + 1n, 24))],
    ['size over 2^53', () => edit((b) => b.writeBigUInt64LE(2n ** 60n, 16))],
    ['one id more than the count', () => reseal(Buffer.concat([good.subarray(0, good.length - 32), Buffer.alloc(32, 1), good.subarray(good.length - 32)]))],
    ['one id fewer than the count', () => reseal(Buffer.concat([good.subarray(0, good.length - 64), good.subarray(good.length - 32)]))],
    ['a flipped checksum byte', () => edit((b) => (b[b.length - 1] ^= 1), false)],
    ['a flipped id byte', () => edit((b) => (b[32 + 40] ^= 0x80), false)],
    ['a flipped size byte', () => edit((b) => (b[16] ^= 1), false)],
    ['truncated by one byte', () => good.subarray(0, good.length - 1)],
    ['truncated to the header', () => good.subarray(0, 32)],
    ['truncated inside the header', () => good.subarray(0, 20)],
    ['empty', () => Buffer.alloc(0)],
    ['garbage', () => randomBytes(prng(6), good.length)],
  ])('%s', async (_what, make) => {
    await expectCode(() => decodeManifest(make()), 'MANIFEST_INVALID');
  });

  it('every single flipped bit of a small manifest', async () => {
    const small = encodeManifest(makeManifest(3 * 4096 + 1, 4096, 7));
    for (let i = 0; i < small.length * 8; i += 3) {
      const b = Buffer.from(small);
      b[i >> 3] ^= 1 << (i & 7);
      await expectCode(() => decodeManifest(b), 'MANIFEST_INVALID');
    }
  });
});

describe('checkBlockSize', () => {
  it('accepts powers of two from 4 KiB to 4 MiB', () => {
    for (let n = 4096; n <= 4 * MiB; n *= 2) expect(checkBlockSize(n)).toBe(n);
    expect(checkBlockSize(DEFAULT_BLOCK_SIZE)).toBe(64 * KiB);
  });

  it.each([0, -4096, 1, 2048, 4095, 4097, 3 * 4096, 65535, 65537, 8 * MiB, 2 ** 31, 4096.5, Number.NaN, Number.POSITIVE_INFINITY])(
    'rejects %d with INVALID_ARGUMENT',
    async (n) => {
      await expectCode(() => checkBlockSize(n), 'INVALID_ARGUMENT');
    },
  );
});

describe('DiskManifest', () => {
  it('counts blocks and gives the length of a short last block', () => {
    const m = new DiskManifest(3 * 4096 + 100, 4096);
    expect(m.count).toBe(4);
    expect([0, 1, 2, 3].map((i) => m.lengthOf(i))).toEqual([4096, 4096, 4096, 100]);
    const exact = new DiskManifest(4 * 4096, 4096);
    expect(exact.count).toBe(4);
    expect(exact.lengthOf(3)).toBe(4096);
    expect(new DiskManifest(0, 4096).count).toBe(0);
    expect(new DiskManifest(1, 4 * MiB).lengthOf(0)).toBe(1);
    expect(blockCountFor(0, 4096)).toBe(0);
    expect(blockCountFor(4097, 4096)).toBe(2);
  });

  it('starts as all holes; setId and idAt round-trip; setId(null) makes a hole', () => {
    const m = new DiskManifest(5 * 4096, 4096);
    for (let i = 0; i < m.count; i++) expect(m.isHole(i)).toBe(true);
    expect(m.uniqueIds()).toEqual([]);
    expect(m.dataBytes()).toBe(0);
    const id = blockId(Buffer.from('x'));
    m.setId(2, id);
    expect(m.idAt(2)).toBe(id);
    expect(m.isHole(2)).toBe(false);
    expect(m.isHole(1)).toBe(true);
    expect(m.isHole(3)).toBe(true);
    m.setId(2, null);
    expect(m.idAt(2)).toBeNull();
  });

  it('uniqueIds dedups in first-occurrence order and skips holes; dataBytes counts non-holes', () => {
    const rng = prng(8);
    const ids = Array.from({ length: 4 }, () => blockId(randomBytes(rng, 8)));
    const m = new DiskManifest(9 * 4096 + 10, 4096);
    const layout = [ids[2], ids[0], null, ids[2], ids[1], ids[0], null, ids[3], ids[1], ids[3]];
    layout.forEach((id, i) => m.setId(i, id ?? null));
    expect(m.uniqueIds()).toEqual([ids[2], ids[0], ids[1], ids[3]]);
    expect(m.dataBytes()).toBe(7 * 4096 + 10);
  });

  it('rejects a bad block size with INVALID_ARGUMENT and bad sizes or tables with MANIFEST_INVALID', async () => {
    await expectCode(() => new DiskManifest(4096, 1000), 'INVALID_ARGUMENT');
    await expectCode(() => new DiskManifest(-1, 4096), 'MANIFEST_INVALID');
    await expectCode(() => new DiskManifest(1.5, 4096), 'MANIFEST_INVALID');
    await expectCode(() => new DiskManifest(2 ** 53, 4096), 'MANIFEST_INVALID');
    await expectCode(() => new DiskManifest(MAX_BLOCKS * 4096 + 1, 4096), 'MANIFEST_INVALID');
    await expectCode(() => new DiskManifest(2 * 4096, 4096, Buffer.alloc(32)), 'MANIFEST_INVALID');
    await expectCode(() => new DiskManifest(2 * 4096, 4096, Buffer.alloc(96)), 'MANIFEST_INVALID');
  });

  it('round-trips many seeded random manifests', () => {
    const rng = prng(9);
    for (let t = 0; t < 40; t++) {
      const blockSize = 4096 << randInt(rng, 11);
      const size = randInt(rng, 50) * blockSize + randInt(rng, blockSize);
      const m = makeManifest(size, blockSize, t, 2 + randInt(rng, 4));
      expectSame(m, decodeManifest(encodeManifest(m)));
    }
  });
});
