// The at-rest primitives: XTS sectors checked against XTS built by its definition from AES blocks, holes, odd tails, seals bound to their place, the KDF, escrow and recovery codes.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  CarryonError, decodeRecoveryCode, deriveKek, encodeRecoveryCode, keyCheck, newDataKey, newEscrowKeyPair, newKdfParams, openEscrow, seal, sealToEscrow,
  SectorCipher, SECTOR_BYTES, subkey, tryOpen,
} from '../../../src/index.js';

/**
 * XTS by its definition (IEEE 1619-2007, 5.3) from AES-256-ECB blocks: T = E(K2, tweak), then for each
 * 16-byte block j: C = E(K1, P xor T) xor T, T = T * alpha. An independent reader of our disk format
 * (the openssl CLI has no XTS in `enc`). Whole 16-byte blocks only.
 */
function referenceXts(key: Buffer, sector: number, data: Buffer, decrypt = false): Buffer {
  const ecb = (k: Buffer, b: Buffer, dec: boolean): Buffer => {
    const c = dec ? createDecipheriv('aes-256-ecb', k, null) : createCipheriv('aes-256-ecb', k, null);
    c.setAutoPadding(false);
    return Buffer.concat([c.update(b), c.final()]);
  };
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64LE(BigInt(sector));
  let t = ecb(key.subarray(32), iv, false);
  const out = Buffer.alloc(data.length);
  for (let j = 0; j < data.length; j += 16) {
    const x = Buffer.alloc(16);
    for (let i = 0; i < 16; i++) x[i] = data[j + i]! ^ t[i]!;
    const y = ecb(key.subarray(0, 32), x, decrypt);
    for (let i = 0; i < 16; i++) out[j + i] = y[i]! ^ t[i]!;
    const n = Buffer.alloc(16);
    let carry = 0;
    for (let i = 0; i < 16; i++) {
      n[i] = ((t[i]! << 1) | carry) & 0xff;
      carry = t[i]! >> 7;
    }
    if (carry) n[0]! ^= 0x87;
    t = n;
  }
  return out;
}

describe('SectorCipher (AES-256-XTS, 4 KiB units)', () => {
  const dataKey = newDataKey();
  const xtsKey = subkey(dataKey, 'disk');
  const cipher = new SectorCipher(xtsKey);

  it('matches XTS by its definition sector by sector, the sector number as tweak', () => {
    const plain = randomBytes(3 * SECTOR_BYTES);
    const ct = Buffer.from(plain);
    cipher.encrypt(ct, 1000);
    for (let i = 0; i < 3; i++) {
      expect(ct.subarray(i * SECTOR_BYTES, (i + 1) * SECTOR_BYTES)).toEqual(referenceXts(xtsKey, 1000 + i, plain.subarray(i * SECTOR_BYTES, (i + 1) * SECTOR_BYTES)));
    }
    expect(ct.equals(plain)).toBe(false);
    cipher.decrypt(ct, 1000);
    expect(ct).toEqual(plain);
  });

  it('uses 64-bit sector numbers', () => {
    const plain = randomBytes(SECTOR_BYTES);
    const a = Buffer.alloc(SECTOR_BYTES);
    cipher.encrypt(plain, 2 ** 33 + 5, a);
    expect(a).toEqual(referenceXts(xtsKey, 2 ** 33 + 5, plain));
    const b = Buffer.alloc(SECTOR_BYTES);
    cipher.encrypt(plain, 5, b);
    expect(a.equals(b)).toBe(false);
  });

  it('keeps zero sectors zero both ways (holes stay sparse), and only those', () => {
    const buf = Buffer.concat([Buffer.alloc(SECTOR_BYTES), randomBytes(SECTOR_BYTES)]);
    const ct = Buffer.alloc(buf.length);
    cipher.encrypt(buf, 7, ct);
    expect(ct.subarray(0, SECTOR_BYTES).equals(Buffer.alloc(SECTOR_BYTES))).toBe(true);
    expect(ct.subarray(SECTOR_BYTES).equals(buf.subarray(SECTOR_BYTES))).toBe(false);
    const back = Buffer.alloc(buf.length);
    cipher.decrypt(ct, 7, back);
    expect(back).toEqual(buf);
  });

  it('encrypts a short last sector (ciphertext stealing) and a tail under 16 bytes, length-preserving', () => {
    for (const len of [1, 15, 16, 17, 511, 4095]) {
      const plain = randomBytes(len);
      plain[0] = 1; // never all zero
      const ct = Buffer.alloc(len);
      cipher.encrypt(plain, 3, ct);
      expect(ct.equals(plain)).toBe(false);
      if (len % 16 === 0) expect(ct).toEqual(referenceXts(xtsKey, 3, plain));
      const back = Buffer.alloc(len);
      cipher.decrypt(ct, 3, back);
      expect(back).toEqual(plain);
    }
  });

  it('maps a tiny tail that equals its pad to itself, never to zeros (which read back as a hole)', () => {
    const c = new SectorCipher(xtsKey);
    // Find the pad of sector 9's tail: the ciphertext of a tail whose plaintext is the pad would be zeros.
    const one = Buffer.from([1, 2, 3, 4, 5]);
    const ct = Buffer.alloc(5);
    c.encrypt(one, 9, ct);
    const pad = Buffer.from(ct.map((b, i) => b ^ one[i]!));
    const out = Buffer.alloc(5);
    c.encrypt(pad, 9, out);
    expect(out).toEqual(pad);
    const back = Buffer.alloc(5);
    c.decrypt(out, 9, back);
    expect(back).toEqual(pad);
  });

  it('refuses a key that is not 64 bytes', () => {
    expect(() => new SectorCipher(randomBytes(32))).toThrow(CarryonError);
  });
});

describe('seal (AES-256-GCM)', () => {
  const key = randomBytes(32);
  it('opens only with the same key and aad, and detects any flipped byte', () => {
    const s = seal(key, Buffer.from('secret token'), 'token');
    expect(tryOpen(key, s, 'token')?.toString()).toBe('secret token');
    expect(tryOpen(key, s, 'other')).toBeNull();
    expect(tryOpen(randomBytes(32), s, 'token')).toBeNull();
    for (let i = 0; i < s.length; i++) {
      const t = Buffer.from(s);
      t[i]! ^= 1;
      expect(tryOpen(key, t, 'token')).toBeNull();
    }
    expect(tryOpen(key, s.subarray(0, 10), 'token')).toBeNull();
  });
  it('never repeats a nonce for the same input', () => {
    expect(seal(key, Buffer.from('x'), 'a').equals(seal(key, Buffer.from('x'), 'a'))).toBe(false);
  });
});

describe('keys', () => {
  it('derives distinct subkeys per use and a stable check', () => {
    const k = newDataKey();
    const uses = ['disk', 'cache', 'cache-index', 'persona', 'persona-state', 'check'] as const;
    const hexes = uses.map((u) => subkey(k, u).toString('hex'));
    expect(new Set(hexes).size).toBe(uses.length);
    expect(subkey(k, 'disk').length).toBe(64);
    expect(keyCheck(k)).toBe(keyCheck(Buffer.from(k)));
    expect(keyCheck(k)).not.toBe(keyCheck(newDataKey()));
  });

  it('derives the same KEK from the same passphrase and parameters only', async () => {
    const p = newKdfParams(10);
    const a = await deriveKek('correct horse', p);
    expect(await deriveKek('correct horse', p)).toEqual(a);
    expect((await deriveKek('correct hors', p)).equals(a)).toBe(false);
    expect((await deriveKek('correct horse', newKdfParams(10))).equals(a)).toBe(false);
    // NFC: the same passphrase typed on two keyboards
    expect(await deriveKek('caf\u00e9', p)).toEqual(await deriveKek('cafe\u0301', p));
    await expect(deriveKek('x', { ...p, logN: 30 })).rejects.toThrow(CarryonError);
    expect(() => newKdfParams(4)).toThrow(CarryonError);
  });

  it('seals to an escrow public key that only its private key opens', () => {
    const pair = newEscrowKeyPair();
    const key = newDataKey();
    const sealed = sealToEscrow(pair.publicKey, key, 'checkout-1');
    expect(openEscrow(pair.privateKeyPem, sealed, 'checkout-1')).toEqual(key);
    expect(() => openEscrow(pair.privateKeyPem, sealed, 'checkout-2')).toThrow(CarryonError);
    expect(() => openEscrow(newEscrowKeyPair().privateKeyPem, sealed, 'checkout-1')).toThrow(CarryonError);
    expect(() => sealToEscrow(Buffer.from('junk').toString('base64'), key, 'x')).toThrow(CarryonError);
  });

  it('reads a recovery code back however it is typed, and catches typing errors', () => {
    const key = newDataKey();
    const code = encodeRecoveryCode(key);
    expect(code).toMatch(/^([0-9A-Z]{4}-){13}[0-9A-Z]{4}$/);
    expect(decodeRecoveryCode(code)).toEqual(key);
    expect(decodeRecoveryCode(code.toLowerCase().replace(/-/g, ' '))).toEqual(key);
    const typo = code.slice(0, 10) + (code[10] === 'A' ? 'B' : 'A') + code.slice(11);
    expect(() => decodeRecoveryCode(typo)).toThrow(/typing error/);
    expect(() => decodeRecoveryCode(code.slice(0, 20))).toThrow(/56 characters/);
  });
});

it('is read back by the reference XTS (decrypt direction)', () => {
  const key = newDataKey();
  const plain = randomBytes(SECTOR_BYTES);
  const ct = Buffer.alloc(SECTOR_BYTES);
  SectorCipher.fromDataKey(key).encrypt(plain, 42, ct);
  expect(referenceXts(subkey(key, 'disk'), 42, ct, true)).toEqual(plain);
});
