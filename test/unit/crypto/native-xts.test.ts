// The native XTS addon (native/xts) gives carryon's disk format byte for byte: against
// createCipheriv('aes-256-xts') per 4 KiB sector and against SectorCipher's JavaScript loop, for random
// buffers, holes, short last units, tails under 16 bytes, 64-bit sector numbers, in place and not. And
// the suite runs on it: a build that fell back to JavaScript fails here, unless CARRYON_XTS=js says so.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CarryonError, SECTOR_BYTES, SectorCipher, newDataKey, sectorCipherImplementation, subkey } from '../../../src/index.js';
import { seededBytes as bytes } from '../helpers.js';

/** carryon's format from Node's crypto directly: one createCipheriv per sector; >= 16 bytes per unit. */
function perSector(key: Buffer, first: number, data: Buffer, decrypt = false): Buffer {
  const out = Buffer.alloc(data.length);
  for (let at = 0, n = first; at < data.length; at += SECTOR_BYTES, n++) {
    const unit = data.subarray(at, Math.min(at + SECTOR_BYTES, data.length));
    if (unit.every((b) => b === 0)) continue;
    const tweak = Buffer.alloc(16);
    tweak.writeBigUInt64LE(BigInt(n));
    const c = decrypt ? createDecipheriv('aes-256-xts', key, tweak) : createCipheriv('aes-256-xts', key, tweak);
    Buffer.concat([c.update(unit), c.final()]).copy(out, at);
  }
  return out;
}

describe('the native XTS addon', () => {
  it('is what SectorCipher uses here (CARRYON_XTS=js to run the suite on the JavaScript loop on purpose)', () => {
    const { implementation, detail } = sectorCipherImplementation();
    if (process.env.CARRYON_XTS === 'js') {
      expect(implementation).toBe('js');
      return;
    }
    // A fallback must not pass silently: npm ci builds native/xts; if it did not, this says why.
    expect(`${implementation}: ${detail}`).toMatch(/^native: /);
    expect(new SectorCipher(subkey(newDataKey(), 'disk')).implementation).toBe('native');
  });
});

describe.skipIf(process.env.CARRYON_XTS === 'js')('SectorCipher native against createCipheriv and the JavaScript loop', () => {
  const key = subkey(newDataKey(), 'disk');
  const native = new SectorCipher(key, { implementation: 'native' });
  const js = new SectorCipher(key, { implementation: 'js' });

  function check(plain: Buffer, first: number): void {
    const a = Buffer.alloc(plain.length);
    native.encrypt(plain, first, a);
    const b = Buffer.alloc(plain.length);
    js.encrypt(plain, first, b);
    expect(a.equals(b)).toBe(true);
    const last = plain.length % SECTOR_BYTES;
    if (last === 0 || last >= 16) expect(a.equals(perSector(key, first, plain))).toBe(true);
    // In place gives the same bytes.
    const inPlace = Buffer.from(plain);
    native.encrypt(inPlace, first);
    expect(inPlace.equals(a)).toBe(true);
    // Both directions, both ways, in place and into another buffer.
    const back = Buffer.alloc(plain.length);
    native.decrypt(a, first, back);
    expect(back.equals(plain)).toBe(true);
    js.decrypt(inPlace, first);
    expect(inPlace.equals(plain)).toBe(true);
    if (last === 0 || last >= 16) expect(perSector(key, first, a, true).equals(plain)).toBe(true);
  }

  it('random buffers of 1 to 64 sectors', () => {
    for (const [i, sectors] of [1, 2, 3, 16, 64].entries()) check(bytes(sectors * SECTOR_BYTES, 100 + i), 1000 * i);
    check(randomBytes(256 * 1024), 7);
  });

  it('holes: zero sectors stay zero both ways, among others, and only zero sectors', () => {
    const plain = Buffer.concat([Buffer.alloc(SECTOR_BYTES), bytes(SECTOR_BYTES, 1), Buffer.alloc(2 * SECTOR_BYTES), bytes(SECTOR_BYTES, 2), Buffer.alloc(SECTOR_BYTES)]);
    check(plain, 50);
    const ct = Buffer.from(plain);
    native.encrypt(ct, 50);
    for (const z of [0, 2, 3, 5]) expect(ct.subarray(z * SECTOR_BYTES, (z + 1) * SECTOR_BYTES).every((b) => b === 0)).toBe(true);
    expect(ct.subarray(SECTOR_BYTES, 2 * SECTOR_BYTES).equals(plain.subarray(SECTOR_BYTES, 2 * SECTOR_BYTES))).toBe(false);
    // A sector with one non-zero byte (first or last) is not a hole.
    for (const at of [0, SECTOR_BYTES - 1]) {
      const one = Buffer.alloc(SECTOR_BYTES);
      one[at] = 1;
      check(one, 9);
      const c = Buffer.from(one);
      native.encrypt(c, 9);
      expect(c.every((b) => b === 0)).toBe(false);
    }
    // An all-zero ciphertext sector reads back as zeros.
    const z = Buffer.alloc(3 * SECTOR_BYTES);
    native.decrypt(z, 4);
    expect(z.every((b) => b === 0)).toBe(true);
  });

  it('short last units: ciphertext stealing from 16 bytes, the JavaScript tail under 16, zero tails', () => {
    for (const len of [1, 15, 16, 17, 31, 33, 511, 4095]) {
      for (const whole of [0, 1, 3]) {
        const plain = bytes(whole * SECTOR_BYTES + len, len * 7 + whole);
        plain[plain.length - 1] = 1; // the tail is never all zero
        check(plain, 12345);
        const zeroTail = Buffer.from(plain);
        zeroTail.fill(0, whole * SECTOR_BYTES);
        check(zeroTail, 12345);
      }
    }
  });

  it('64-bit sector numbers: across the 2^32 carry, and up to 2^53', () => {
    for (const first of [2 ** 32 - 2, 2 ** 33 + 5, 2 ** 48 + 3, Number.MAX_SAFE_INTEGER - 8]) check(bytes(5 * SECTOR_BYTES + 100, first % 1000), first);
    const a = Buffer.alloc(SECTOR_BYTES);
    const b = Buffer.alloc(SECTOR_BYTES);
    native.encrypt(bytes(SECTOR_BYTES, 3), 2 ** 32 + 5, a);
    native.encrypt(bytes(SECTOR_BYTES, 3), 5, b);
    expect(a.equals(b)).toBe(false);
  });

  it('in place and into separate buffers, at offsets inside a larger ArrayBuffer', () => {
    const big = bytes(10 * SECTOR_BYTES + 64, 77);
    const plain = Buffer.from(big.subarray(32, 32 + 8 * SECTOR_BYTES));
    const expected = perSector(key, 600, plain);
    const view = big.subarray(32, 32 + 8 * SECTOR_BYTES);
    native.encrypt(view, 600);
    expect(view.equals(expected)).toBe(true);
    expect(big.subarray(0, 32).equals(bytes(10 * SECTOR_BYTES + 64, 77).subarray(0, 32))).toBe(true); // untouched around it
    const u8 = new Uint8Array(plain.length);
    native.encrypt(new Uint8Array(plain.buffer, plain.byteOffset, plain.length), 600, u8);
    expect(Buffer.from(u8).equals(expected)).toBe(true);
  });

  it('refuses overlapping buffers, bad sector numbers and a short output', () => {
    const buf = bytes(4 * SECTOR_BYTES, 5);
    expect(() => native.encrypt(buf.subarray(0, 2 * SECTOR_BYTES), 0, buf.subarray(SECTOR_BYTES, 3 * SECTOR_BYTES))).toThrow(CarryonError);
    for (const bad of [-1, 1.5, Number.NaN, 2 ** 53]) expect(() => native.encrypt(buf, bad)).toThrow(CarryonError);
    expect(() => native.encrypt(buf, 0, Buffer.alloc(10))).toThrow(CarryonError);
  });

  it('refuses a key with equal halves (OpenSSL\'s weak XTS key)', () => {
    const half = randomBytes(32);
    expect(() => new SectorCipher(Buffer.concat([half, half]), { implementation: 'native' })).toThrow(CarryonError);
  });
});

describe.skipIf(process.env.CARRYON_XTS === 'js')('SectorCipher.preadDecrypt (read and decrypt on a worker thread)', () => {
  it('gives the plaintext of any sector-aligned range, zeros past the end, and an odd tail decrypted', async () => {
    const { mkdtempSync, openSync, writeSync, closeSync } = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const cipher = SectorCipher.fromDataKey(newDataKey());
    // 7 sectors, one of them a hole, then a 5-byte tail: an odd-sized disk.
    const plain = Buffer.concat([bytes(3 * SECTOR_BYTES, 5), Buffer.alloc(SECTOR_BYTES), bytes(3 * SECTOR_BYTES + 5, 6)]);
    const stored = Buffer.alloc(plain.length);
    cipher.encrypt(plain, 0, stored);
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'xts-pread-')), 'disk');
    const fd = openSync(file, 'w+');
    writeSync(fd, stored, 0, stored.length, 0);
    try {
      const whole = Buffer.alloc(plain.length);
      const p = cipher.preadDecrypt(fd, whole, 0);
      expect(p).not.toBeNull(); // the addon is in use (this file runs only on the native path)
      await p;
      expect(whole).toEqual(plain);
      const mid = Buffer.alloc(2 * SECTOR_BYTES);
      await cipher.preadDecrypt(fd, mid, 2 * SECTOR_BYTES);
      expect(mid).toEqual(plain.subarray(2 * SECTOR_BYTES, 4 * SECTOR_BYTES));
      // The tail unit as the file ends (callers clamp reads to the disk's size): decrypted by the JS side.
      const tail = Buffer.alloc(5);
      await cipher.preadDecrypt(fd, tail, 7 * SECTOR_BYTES);
      expect(tail).toEqual(plain.subarray(7 * SECTOR_BYTES));
      // Past the end of the file: zeros, a hole.
      const past = Buffer.alloc(2 * SECTOR_BYTES, 0xee);
      await cipher.preadDecrypt(fd, past, 8 * SECTOR_BYTES);
      expect(past.every((b) => b === 0)).toBe(true);
      expect(cipher.preadDecrypt(fd, Buffer.alloc(16), 100)).toBeNull(); // not a sector boundary: the caller's
    } finally {
      closeSync(fd);
    }
    await expect(cipher.preadDecrypt(fd, Buffer.alloc(SECTOR_BYTES), 0)).rejects.toMatchObject({ code: 'EBADF', syscall: 'pread' });
  });
});
