// DiskIo on an encrypted copy: whatever the shape of a write (whole sectors, part of one, socket chunks
// that do not fall on sector boundaries, a short last sector), the file holds createCipheriv's XTS of
// the plaintext per 4 KiB sector, the caller's buffers are not changed, and reads give the plaintext back.
import { createCipheriv } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DiskIo } from '../../client/disk-io.js';
import { newDataKey, SECTOR_BYTES, subkey } from '../../src/index.js';
import { seededBytes as bytes } from './helpers.js';

/** The file an encrypted copy of `plain` must be: XTS per sector, zero sectors left zero (>= 16-byte tails only). */
function expectedFile(key: Buffer, plain: Buffer): Buffer {
  const out = Buffer.alloc(plain.length);
  for (let at = 0; at < plain.length; at += SECTOR_BYTES) {
    const unit = plain.subarray(at, Math.min(at + SECTOR_BYTES, plain.length));
    if (unit.every((b) => b === 0)) continue;
    const tweak = Buffer.alloc(16);
    tweak.writeBigUInt64LE(BigInt(at / SECTOR_BYTES));
    createCipheriv('aes-256-xts', key, tweak).update(unit).copy(out, at);
  }
  return out;
}

describe('DiskIo, encrypted', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'carryon-disk-io-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const dataKey = newDataKey();
  const key = subkey(dataKey, 'disk');

  it('writes of every shape land as XTS per sector; reads give the plaintext; the caller\'s buffers stay as they were', async () => {
    const size = 64 * SECTOR_BYTES + 100; // a short last sector (ciphertext stealing)
    const file = path.join(dir, 'disk.raw');
    writeFileSync(file, Buffer.alloc(size));
    const fd = openSync(file, 'r+');
    try {
      const io = DiskIo.forKey(fd, size, dataKey, file);
      const plain = Buffer.alloc(size);
      const put = (data: Buffer, pos: number): void => void data.copy(plain, pos);
      // Whole sectors, one buffer.
      const w1 = bytes(8 * SECTOR_BYTES, 1);
      const w1copy = Buffer.from(w1);
      io.writeSync(w1, 0, w1.length, 0);
      put(w1, 0);
      expect(w1.equals(w1copy)).toBe(true);
      // Whole sectors from socket-sized chunks that cut sectors anywhere.
      const w2 = bytes(16 * SECTOR_BYTES, 2);
      const chunks = [w2.subarray(0, 1000), w2.subarray(1000, 70_000), w2.subarray(70_000)];
      io.writevSync(chunks, 16 * SECTOR_BYTES);
      put(w2, 16 * SECTOR_BYTES);
      expect(Buffer.concat(chunks).equals(w2)).toBe(true);
      // Part of sectors (read-modify-write), as one buffer and as chunks.
      const w3 = bytes(5000, 3);
      io.writeSync(w3, 0, w3.length, 3 * SECTOR_BYTES + 123);
      put(w3, 3 * SECTOR_BYTES + 123);
      const w4 = bytes(9000, 4);
      io.writevSync([w4.subarray(0, 10), w4.subarray(10)], 40 * SECTOR_BYTES + 7);
      put(w4, 40 * SECTOR_BYTES + 7);
      // The short last sector, whole and then in part.
      const w5 = bytes(SECTOR_BYTES + 100, 5);
      io.writeSync(w5, 0, w5.length, 63 * SECTOR_BYTES);
      put(w5, 63 * SECTOR_BYTES);
      const w6 = bytes(30, 6);
      io.writeSync(w6, 0, w6.length, 64 * SECTOR_BYTES + 50);
      put(w6, 64 * SECTOR_BYTES + 50);
      // A large write (past the reused scratch) and zeros over data (a hole again).
      const big = bytes(5 * 1024 * 1024, 7);
      const bigFile = path.join(dir, 'big.raw');
      writeFileSync(bigFile, Buffer.alloc(big.length));
      const fd2 = openSync(bigFile, 'r+');
      try {
        DiskIo.forKey(fd2, big.length, dataKey, bigFile).writevSync([big.subarray(0, 3), big.subarray(3)], 0);
      } finally {
        closeSync(fd2);
      }
      expect(readFileSync(bigFile).equals(expectedFile(key, big))).toBe(true);
      io.writeSync(Buffer.alloc(2 * SECTOR_BYTES), 0, 2 * SECTOR_BYTES, 20 * SECTOR_BYTES);
      plain.fill(0, 20 * SECTOR_BYTES, 22 * SECTOR_BYTES);

      const onDisk = readFileSync(file);
      expect(onDisk.equals(expectedFile(key, plain))).toBe(true);
      expect(onDisk.subarray(20 * SECTOR_BYTES, 22 * SECTOR_BYTES).every((b) => b === 0)).toBe(true);
      const back = Buffer.alloc(size);
      io.readSync(back, 0, size, 0);
      expect(back.equals(plain)).toBe(true);
      const part = Buffer.alloc(7000);
      await io.read(part, 0, 7000, 2 * SECTOR_BYTES + 1);
      expect(part.equals(plain.subarray(2 * SECTOR_BYTES + 1, 2 * SECTOR_BYTES + 7001))).toBe(true);
    } finally {
      closeSync(fd);
    }
  });
});
