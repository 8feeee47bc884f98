// The sums under the formats: BLAKE2b-256 and MD4 against published vectors and coreutils' b2sum,
// and the two weak sums rolled byte by byte against their from-scratch values.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { blake2b256 } from '../../../src/rdiff/blake2b.js';
import { md4 } from '../../../src/rdiff/md4.js';
import {
  mix32,
  RABINKARP_ADJ,
  RABINKARP_INVM,
  RABINKARP_MULT,
  rabinKarpPow,
  rabinKarpSum,
  ROLLSUM_CHAR_OFFSET,
  rollsumState,
  rollsumSum,
} from '../../../src/rdiff/weak-sum.js';
import { prng, randomBytes } from '../helpers.js';

function b2(data: Uint8Array): string {
  const out = Buffer.alloc(32);
  blake2b256(data, 0, data.length, out);
  return out.toString('hex');
}

function md4hex(data: Uint8Array): string {
  const out = Buffer.alloc(16);
  md4(data, 0, data.length, out);
  return out.toString('hex');
}

describe('BLAKE2b-256', () => {
  it('matches the published vectors', () => {
    expect(b2(Buffer.alloc(0))).toBe('0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8');
    expect(b2(Buffer.from('abc'))).toBe('bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319');
  });

  it('equals `b2sum -l 256` around every 128-byte block boundary and for large inputs', () => {
    const rng = prng(11);
    const sizes = [1, 127, 128, 129, 255, 256, 257, 1000, 2048, 65_536 + 7, 1_000_003];
    const datas = sizes.map((n) => randomBytes(rng, n));
    const r = spawnSync('b2sum', ['-l', '256'], { input: Buffer.concat(datas) });
    expect(r.status).toBe(0);
    expect(b2(Buffer.concat(datas))).toBe(r.stdout.toString().split(' ')[0]);
    for (const d of datas) {
      const one = spawnSync('b2sum', ['-l', '256'], { input: d });
      expect(b2(d), `${d.length} bytes`).toBe(one.stdout.toString().split(' ')[0]);
    }
  });

  it('hashes a sub-range of a larger buffer and writes at an offset', () => {
    const data = randomBytes(prng(12), 5000);
    const out = Buffer.alloc(40, 0xee);
    blake2b256(data, 100, 4100, out, 4);
    expect(out.subarray(4, 36).toString('hex')).toBe(b2(data.subarray(100, 4100)));
    expect(out.subarray(0, 4).equals(Buffer.alloc(4, 0xee))).toBe(true);
    expect(out.subarray(36).equals(Buffer.alloc(4, 0xee))).toBe(true);
  });
});

describe('MD4', () => {
  it('matches the RFC 1320 test suite', () => {
    const vectors: Array<[string, string]> = [
      ['', '31d6cfe0d16ae931b73c59d7e0c089c0'],
      ['a', 'bde52cb31de33e46245e05fbdbd6fb24'],
      ['abc', 'a448017aaf21d8525fc10ae87aa6729d'],
      ['message digest', 'd9130a8164549fe818874806e1c7014b'],
      ['abcdefghijklmnopqrstuvwxyz', 'd79e1c308aa5bbcdeea8ed63df412da9'],
      ['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', '043f8582f241db351ce627e153e7f0e4'],
      ['1234567890'.repeat(8), 'e33b4ddc9c38f2199c3e7b164fcc0536'],
    ];
    for (const [text, hex] of vectors) expect(md4hex(Buffer.from(text)), JSON.stringify(text)).toBe(hex);
  });

  it('pads correctly around the 56- and 64-byte boundaries (same digest for a copy at an offset)', () => {
    const data = randomBytes(prng(13), 300);
    for (const n of [55, 56, 57, 63, 64, 65, 119, 120, 128]) {
      const out = Buffer.alloc(16);
      md4(data, 7, 7 + n, out);
      expect(out.toString('hex')).toBe(md4hex(Buffer.from(data.subarray(7, 7 + n))));
      expect(out.toString('hex')).not.toBe(md4hex(Buffer.from(data.subarray(7, 6 + n))));
    }
  });
});

describe('weak sums', () => {
  it('RabinKarp: rolling one byte in and out equals the sum of the new window', () => {
    const data = randomBytes(prng(14), 5000);
    const n = 700;
    const multN = rabinKarpPow(n);
    let h = rabinKarpSum(data, 0, n);
    for (let p = 0; p + n < data.length; p++) {
      h = (Math.imul(h, RABINKARP_MULT) + data[p + n]! - Math.imul(multN, data[p]! + RABINKARP_ADJ)) | 0;
      if (p % 97 === 0) expect(h).toBe(rabinKarpSum(data, p + 1, p + 1 + n));
    }
    // Rolling out only (the end of the input) shrinks the window.
    let mult = multN;
    h = rabinKarpSum(data, 1000, 1000 + n);
    for (let k = 0; k < n; k++) {
      mult = Math.imul(mult, RABINKARP_INVM);
      h = (h - Math.imul(mult, data[1000 + k]! + RABINKARP_ADJ)) | 0;
      if (k % 50 === 0) expect(h).toBe(rabinKarpSum(data, 1001 + k, 1000 + n));
    }
    expect(h).toBe(rabinKarpSum(data, 0, 0)); // the empty window: the seed
  });

  it('RabinKarp: M^n and its inverse agree, and the seed makes zero blocks of different lengths differ', () => {
    expect(Math.imul(RABINKARP_MULT, RABINKARP_INVM)).toBe(1);
    expect(rabinKarpPow(0)).toBe(1);
    expect(rabinKarpPow(3)).toBe(Math.imul(Math.imul(RABINKARP_MULT, RABINKARP_MULT), RABINKARP_MULT));
    expect(rabinKarpSum(Buffer.alloc(10), 0, 10)).not.toBe(rabinKarpSum(Buffer.alloc(11), 0, 11));
  });

  it('rollsum: rolling equals the sum of the new window; the raw digest packs (s2 << 16) | s1', () => {
    const data = randomBytes(prng(15), 5000);
    const n = 513;
    let { s1, s2 } = rollsumState(data, 0, n);
    for (let p = 0; p + n < data.length; p++) {
      const out = data[p]!;
      s1 = (s1 + data[p + n]! - out) & 0xffff;
      s2 = (s2 + s1 - Math.imul(n, out + ROLLSUM_CHAR_OFFSET)) & 0xffff;
      if (p % 89 === 0) expect((s2 << 16) | s1).toBe(rollsumSum(data, p + 1, p + 1 + n));
    }
    // rsync's definition, directly: s1 = Σ (b + 31), s2 = Σ of the running s1, both mod 2^16.
    const block = data.subarray(0, 300);
    let a = 0;
    let b = 0;
    for (const x of block) {
      a += x + 31;
      b += a;
    }
    expect(rollsumSum(block, 0, block.length) >>> 0).toBe((((b & 0xffff) << 16) | (a & 0xffff)) >>> 0);
  });

  it('mix32 is the MurmurHash3 finaliser', () => {
    expect(mix32(0)).toBe(0);
    expect(mix32(1) >>> 0).toBe(0x514e28b7);
    expect(mix32(0xdeadbeef) >>> 0).toBe(0x0de5c6a9);
  });
});
