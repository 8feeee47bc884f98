import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { blockId, CheapHasher, forgetVerified, isAllZero, isBlockId, parseBlockId, sha256, verifiedBlockId, verifyPlain } from '../../src/index.js';
import { expectCode, prng, randomBytes } from './helpers.js';

const MiB = 1024 * 1024;

describe('blockId and sha256', () => {
  it('matches the published SHA-256 vectors', () => {
    expect(blockId(Buffer.from('abc'))).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(blockId(Buffer.alloc(0))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(sha256(Buffer.from('abc')).toString('hex')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('equals node:crypto SHA-256 for seeded data of many sizes, as lowercase hex', () => {
    const rng = prng(101);
    for (const n of [1, 63, 64, 65, 4096, 65536, 65537, MiB + 3]) {
      const data = randomBytes(rng, n);
      const id = blockId(data);
      expect(id).toBe(createHash('sha256').update(data).digest('hex'));
      expect(id).toMatch(/^[0-9a-f]{64}$/);
      expect(sha256(data).equals(createHash('sha256').update(data).digest())).toBe(true);
    }
  });

  it('equals the sha256sum CLI', () => {
    const data = randomBytes(prng(102), 100_000);
    const r = spawnSync('sha256sum', ['-'], { input: data });
    expect(r.status).toBe(0);
    expect(blockId(data)).toBe(r.stdout.toString().split(' ')[0]);
  });

  it('hashes a Uint8Array view the same as a Buffer of its bytes', () => {
    const big = randomBytes(prng(103), 1000);
    const view = new Uint8Array(big.buffer, big.byteOffset + 10, 500);
    expect(blockId(view)).toBe(blockId(Buffer.from(big.subarray(10, 510))));
  });
});

describe('isBlockId and parseBlockId', () => {
  const good = blockId(Buffer.from('abc'));

  it('accepts 64 lowercase hex characters', () => {
    expect(isBlockId(good)).toBe(true);
    expect(parseBlockId(good)).toBe(good);
  });

  it.each([
    ['uppercase', good.toUpperCase()],
    ['one uppercase letter', `${good.slice(0, 63)}A`],
    ['short', good.slice(0, 63)],
    ['long', `${good}0`],
    ['empty', ''],
    ['non-hex', `${good.slice(0, 63)}g`],
    ['with whitespace', ` ${good.slice(1)}`],
    ['with a newline', `${good}\n`],
    ['a path', `../${good.slice(3)}`],
  ])('rejects %s with BAD_REQUEST', async (_what, s) => {
    expect(isBlockId(s)).toBe(false);
    await expectCode(() => parseBlockId(s), 'BAD_REQUEST');
  });

  it('rejects non-strings', async () => {
    for (const v of [null, undefined, 42, {}, [good], Buffer.from(good)]) {
      expect(isBlockId(v)).toBe(false);
      await expectCode(() => parseBlockId(v), 'BAD_REQUEST');
    }
  });
});

describe('isAllZero', () => {
  const sizes = [0, 1, 7, 4096, 65536, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 9 * MiB + 5];

  it.each(sizes)('is true for %i zero bytes', (n) => {
    expect(isAllZero(Buffer.alloc(n))).toBe(true);
    expect(isAllZero(new Uint8Array(n))).toBe(true);
  });

  it.each(sizes.filter((n) => n > 0))('is false for %i bytes with one non-zero byte at the start, middle or end', (n) => {
    for (const at of [0, n >> 1, n - 1]) {
      const b = Buffer.alloc(n);
      b[at] = 1;
      expect(isAllZero(b)).toBe(false);
      expect(isAllZero(new Uint8Array(b.buffer, b.byteOffset, b.length))).toBe(false);
    }
  });

  it('is false for a non-zero byte in the second 4 MiB stretch', () => {
    const b = Buffer.alloc(8 * MiB + 100);
    b[4 * MiB + 50] = 0x80;
    expect(isAllZero(b)).toBe(false);
    b[4 * MiB + 50] = 0;
    b[8 * MiB + 99] = 0xff;
    expect(isAllZero(b)).toBe(false);
  });

  it('looks only at the view, not the rest of its buffer', () => {
    const b = Buffer.alloc(100, 1);
    b.fill(0, 10, 90);
    expect(isAllZero(b.subarray(10, 90))).toBe(true);
    expect(isAllZero(b.subarray(9, 90))).toBe(false);
  });
});

describe('CheapHasher', () => {
  it('is deterministic: the same bytes give the same hash, on one hasher and across hashers', () => {
    const rng = prng(104);
    const blocks = [Buffer.alloc(0), Buffer.alloc(65536), randomBytes(rng, 1), randomBytes(rng, 65536), randomBytes(rng, 100_001)];
    const h1 = new CheapHasher();
    const first = blocks.map((b) => h1.hash(b));
    const again = blocks.map((b) => h1.hash(b));
    const other = blocks.map((b) => new CheapHasher().hash(b));
    expect(again).toEqual(first);
    expect(other).toEqual(first);
    for (const h of first) expect(typeof h).toBe('bigint');
    // Interleaving other inputs changes nothing (no state leaks between calls).
    const h2 = new CheapHasher();
    expect(blocks.map((b) => (h2.hash(Buffer.from('noise')), h2.hash(b)))).toEqual(first);
  });

  it('differs when one byte changes, anywhere, or when the length changes', () => {
    const h = new CheapHasher();
    const base = randomBytes(prng(105), 65536);
    const hb = h.hash(base);
    for (const at of [0, 1, 4095, 32768, 65535]) {
      const c = Buffer.from(base);
      c[at] ^= 1;
      expect(h.hash(c)).not.toBe(hb);
    }
    expect(h.hash(base.subarray(0, 65535))).not.toBe(hb);
    expect(h.hash(Buffer.alloc(4096))).not.toBe(h.hash(Buffer.alloc(8192)));
  });
});

describe('verifiedBlockId and forgetVerified', () => {
  it('gives the block id and spares verifyPlain a second hash until the buffer is forgotten', async () => {
    const plain = randomBytes(prng(103), 65536);
    const id = verifiedBlockId(plain);
    expect(id).toBe(blockId(plain));
    verifyPlain(id, plain);
    // A different id for the same buffer is never taken on trust.
    await expectCode(() => verifyPlain(blockId(Buffer.from('other')), plain), 'BLOCK_CORRUPT');
    // Reused: the caller forgets it before writing, so the old id no longer passes.
    forgetVerified(plain);
    plain[0]! ^= 1;
    await expectCode(() => verifyPlain(id, plain), 'BLOCK_CORRUPT');
  });
});
