// The benchmark's alternative XTS computation (scripts/lib/xts-alternatives.ts) gives the bytes of
// carryon's disk format: compared with createCipheriv('aes-256-xts') per 4 KiB sector and with SectorCipher.
import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SECTOR_BYTES, SectorCipher, newDataKey, subkey } from '../../../src/index.js';
import { EcbXts } from '../../../scripts/lib/xts-alternatives.js';

function opensslXts(key: Buffer, sector: number, plain: Buffer): Buffer {
  const tweak = Buffer.alloc(16);
  tweak.writeBigUInt64LE(BigInt(sector));
  const c = createCipheriv('aes-256-xts', key, tweak);
  return Buffer.concat([c.update(plain), c.final()]);
}

describe('EcbXts (tweaks in JavaScript, two ECB calls)', () => {
  const key = subkey(newDataKey(), 'disk');
  const alt = new EcbXts(key);

  it('matches createCipheriv aes-256-xts sector by sector, including 64-bit sector numbers', () => {
    for (const first of [0, 1, 1000, 2 ** 32 - 2, 2 ** 33 + 5]) {
      const plain = randomBytes(5 * SECTOR_BYTES);
      const ct = Buffer.alloc(plain.length);
      alt.encrypt(plain, first, ct);
      for (let i = 0; i < 5; i++) {
        expect(ct.subarray(i * SECTOR_BYTES, (i + 1) * SECTOR_BYTES)).toEqual(opensslXts(key, first + i, plain.subarray(i * SECTOR_BYTES, (i + 1) * SECTOR_BYTES)));
      }
      const back = Buffer.alloc(plain.length);
      alt.decrypt(ct, first, back);
      expect(back).toEqual(plain);
    }
  });

  it('gives SectorCipher\'s bytes, holes staying zero, in place too', () => {
    const plain = Buffer.concat([randomBytes(SECTOR_BYTES), Buffer.alloc(SECTOR_BYTES), randomBytes(14 * SECTOR_BYTES)]);
    const a = Buffer.from(plain);
    const b = Buffer.from(plain);
    new SectorCipher(key).encrypt(a, 77);
    alt.encrypt(b, 77);
    expect(b).toEqual(a);
    expect(b.subarray(SECTOR_BYTES, 2 * SECTOR_BYTES).equals(Buffer.alloc(SECTOR_BYTES))).toBe(true);
    alt.decrypt(b, 77);
    expect(b).toEqual(plain);
  });
});
