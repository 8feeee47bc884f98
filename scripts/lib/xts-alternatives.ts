// Other ways to compute carryon's disk cipher, for the benchmark to measure against src/crypto's
// SectorCipher (AES-256-XTS per 4 KiB sector: the native addon, and its fallback of one
// `createCipheriv('aes-256-xts')` per sector) in the same run.
// Owns: the alternatives and an in-process micro-benchmark of them. Nothing here is used by carryon
// itself; an alternative moves into src/crypto only when it is measurably faster and gives the same
// bytes (test/unit/scripts/xts-alternatives.test.ts checks that against createCipheriv).
//
// - EcbXts: the same format (4 KiB data units, the sector number as tweak), computed as IEEE 1619 by its
//   definition: T_0 = E_K2(sector) for every sector in one AES-256-ECB call, T_{j+1} = T_j * alpha in
//   GF(2^128) in JavaScript, then C = E_K1(P xor T_j) xor T_j with one ECB call over the whole buffer.
//   Two OpenSSL calls per request instead of three per sector, but two JavaScript passes over the data.
// - xtsUnits: XTS with larger data units (e.g. 64 KiB): fewer calls, but a different on-disk format, and
//   a 4 KiB write becomes read-decrypt-modify-encrypt-write of a whole unit. Measured, not adoptable.
// - xtsNoFinal: the JavaScript loop without the (empty) final() per sector.

import { createCipheriv, createDecipheriv } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { SECTOR_BYTES, SectorCipher } from '../../src/crypto/index.js';
import { loadNativeXts } from '../../src/crypto/native-xts.js';

const WORDS_PER_SECTOR = SECTOR_BYTES / 4;

/** AES-256-XTS over 4 KiB sectors, as SectorCipher (holes included), from two AES-256-ECB calls per buffer. */
export class EcbXts {
  private readonly k1: Buffer;
  private readonly k2: Buffer;
  private tweaks = new Uint32Array(0);

  constructor(xtsKey: Buffer) {
    if (xtsKey.length !== 64) throw new Error('an XTS key is 64 bytes');
    this.k1 = xtsKey.subarray(0, 32);
    this.k2 = xtsKey.subarray(32);
  }

  encrypt(src: Buffer, sector: number, dst: Buffer = src): void {
    this.run(true, src, sector, dst);
  }

  decrypt(src: Buffer, sector: number, dst: Buffer = src): void {
    this.run(false, src, sector, dst);
  }

  /** Whole sectors, 4-byte aligned buffers (the callers here allocate them). */
  private run(enc: boolean, src: Buffer, sector: number, dst: Buffer): void {
    const len = src.length;
    if (len % SECTOR_BYTES !== 0 || src.byteOffset % 4 !== 0 || dst.byteOffset % 4 !== 0) throw new Error('EcbXts: whole, aligned sectors only');
    const n = len / SECTOR_BYTES;
    const words = len >> 2;
    // Which sectors are holes (all zero): they stay zero, as in SectorCipher.
    const zero = new Uint8Array(n);
    const numbers = Buffer.alloc(16 * n);
    for (let i = 0; i < n; i++) {
      zero[i] = isZero(src, i * SECTOR_BYTES) ? 1 : 0;
      const v = sector + i;
      numbers.writeUInt32LE(v >>> 0, 16 * i);
      numbers.writeUInt32LE(Math.floor(v / 0x100000000), 16 * i + 4);
    }
    const t0b = createCipheriv('aes-256-ecb', this.k2, null).setAutoPadding(false).update(numbers);
    const t0 = new Uint32Array(t0b.buffer, t0b.byteOffset, 4 * n);
    if (this.tweaks.length < words) this.tweaks = new Uint32Array(words);
    const w = this.tweaks;
    const s32 = new Uint32Array(src.buffer, src.byteOffset, words);
    const x = Buffer.allocUnsafe(len);
    const x32 = new Uint32Array(x.buffer, x.byteOffset, words);
    for (let i = 0; i < n; i++) {
      let a = t0[4 * i]!, b = t0[4 * i + 1]!, c = t0[4 * i + 2]!, d = t0[4 * i + 3]!;
      let o = i * WORDS_PER_SECTOR;
      for (let j = 0; j < SECTOR_BYTES / 16; j++, o += 4) {
        w[o] = a; w[o + 1] = b; w[o + 2] = c; w[o + 3] = d;
        x32[o] = s32[o]! ^ a; x32[o + 1] = s32[o + 1]! ^ b; x32[o + 2] = s32[o + 2]! ^ c; x32[o + 3] = s32[o + 3]! ^ d;
        // T * alpha: shift the 128-bit little-endian value left by one, fold the carry with x^7+x^2+x+1.
        const carry = d >>> 31;
        d = (d << 1) | (c >>> 31);
        c = (c << 1) | (b >>> 31);
        b = (b << 1) | (a >>> 31);
        a = (a << 1) ^ (carry * 0x87);
      }
    }
    const e = (enc ? createCipheriv('aes-256-ecb', this.k1, null) : createDecipheriv('aes-256-ecb', this.k1, null)).setAutoPadding(false).update(x);
    const e32 = new Uint32Array(e.buffer, e.byteOffset, words);
    const d32 = new Uint32Array(dst.buffer, dst.byteOffset, words);
    for (let i = 0; i < n; i++) {
      const o0 = i * WORDS_PER_SECTOR;
      if (zero[i]) d32.fill(0, o0, o0 + WORDS_PER_SECTOR);
      else for (let o = o0; o < o0 + WORDS_PER_SECTOR; o++) d32[o] = e32[o]! ^ w[o]!;
    }
  }
}

function isZero(b: Buffer, at: number): boolean {
  return b.compare(ZERO, 0, SECTOR_BYTES, at, at + SECTOR_BYTES) === 0;
}
const ZERO = Buffer.alloc(SECTOR_BYTES);

/**
 * SectorCipher's loop without the final() call per sector: XTS returns the whole data unit from
 * update(), final() returns nothing. The same bytes; a candidate when it measures faster.
 */
export function xtsNoFinal(key: Buffer, buf: Buffer, sector: number): void {
  const tweak = Buffer.alloc(16);
  for (let at = 0, n = sector; at < buf.length; at += SECTOR_BYTES, n++) {
    const unit = buf.subarray(at, at + SECTOR_BYTES);
    if (unit.equals(ZERO)) continue;
    tweak.writeUInt32LE(n >>> 0, 0);
    tweak.writeUInt32LE(Math.floor(n / 0x100000000), 4);
    const c = createCipheriv('aes-256-xts', key, tweak);
    c.update(unit).copy(unit);
  }
}

/** XTS with `unitBytes` data units (unit number as tweak): the 64 KiB-unit alternative. Not carryon's format. */
export function xtsUnits(enc: boolean, key: Buffer, unitBytes: number, buf: Buffer, firstUnit: number): void {
  const tweak = Buffer.alloc(16);
  for (let at = 0, u = firstUnit; at < buf.length; at += unitBytes, u++) {
    const unit = buf.subarray(at, at + unitBytes);
    tweak.writeUInt32LE(u >>> 0, 0);
    const c = enc ? createCipheriv('aes-256-xts', key, tweak) : createDecipheriv('aes-256-xts', key, tweak);
    c.update(unit).copy(unit);
  }
}

// ---------------------------------------------------------------------------------------------
// Micro-benchmark: MB/s of each way on buffers of NBD request sizes, and 4 KiB random writes to a file

export interface CipherBenchRow {
  what: string;
  bytes: number;
  /** MB/s per round (MB = 10^6 bytes), rounds interleaved across the ways. */
  mbPerSec: number[];
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export function cipherMedian(r: CipherBenchRow): number {
  return median(r.mbPerSec);
}

function rate(bytes: number, f: () => void): number {
  const t0 = process.hrtime.bigint();
  f();
  return bytes / 1e6 / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/**
 * Encrypt `totalBytes` in buffers of each size with each way, `rounds` times, interleaved (so load from
 * other processes falls on all of them alike). Random, non-zero data (no hole shortcut).
 */
export function cipherBench(key: Buffer, sizes: number[], totalBytes: number, rounds: number, random: (n: number) => Buffer): CipherBenchRow[] {
  const sc = new SectorCipher(key, { implementation: 'js' });
  const native = loadNativeXts().addon ? new SectorCipher(key, { implementation: 'native' }) : null;
  const ecb = new EcbXts(key);
  const rows: CipherBenchRow[] = [];
  for (const size of sizes) {
    const buf = Buffer.alloc(size);
    random(size).copy(buf);
    const count = Math.max(1, Math.floor(totalBytes / size));
    const ways: [string, () => void][] = [
      ...(native ? [['SectorCipher native (one addon call per buffer)', () => { for (let i = 0; i < count; i++) native.encrypt(buf, i * 64); }] as [string, () => void]] : []),
      ['SectorCipher js (createCipheriv per 4 KiB)', () => { for (let i = 0; i < count; i++) sc.encrypt(buf, i * 64); }],
      ['createCipheriv per 4 KiB without final() (same bytes)', () => { for (let i = 0; i < count; i++) xtsNoFinal(key, buf, i * 64); }],
      ['EcbXts (2 ECB calls per buffer, tweaks in JS; same bytes)', () => { for (let i = 0; i < count; i++) ecb.encrypt(buf, i * 64); }],
      ...(size >= 65536 ? [['XTS with 64 KiB units (other format)', () => { for (let i = 0; i < count; i++) xtsUnits(true, key, 65536, buf, i * 4); }] as [string, () => void]] : []),
    ];
    const mine = ways.map(([what]) => ({ what: `${what}, ${size / 1024} KiB buffers`, bytes: count * size, mbPerSec: [] as number[] }));
    for (const [, f] of ways) f(); // warm-up (JIT)
    for (let r = 0; r < rounds; r++) ways.forEach(([, f], i) => mine[i]!.mbPerSec.push(rate(count * size, f)));
    rows.push(...mine);
  }
  return rows;
}

/**
 * 4 KiB writes at random 4 KiB offsets of `file` (page cache warm): with 4 KiB units each is one
 * encrypt and one pwrite; with 64 KiB units, pread of the unit, decrypt, copy in, encrypt, pwrite.
 * Returns writes per second per round, both ways interleaved.
 */
export function randomWriteBench(key: Buffer, file: string, fileBytes: number, writes: number, rounds: number, random: (n: number) => Buffer): { sector4k: number[]; unit64k: number[] } {
  const sc = new SectorCipher(key);
  const fd = openSync(file, 'r+');
  try {
    const data = random(4096);
    data[0] = 1;
    const offsets = Array.from({ length: writes }, (_, i) => ((i * 2654435761) % (fileBytes / 4096)) * 4096);
    const unit = Buffer.alloc(65536);
    const page = Buffer.alloc(4096);
    const fourK = (): void => {
      for (const off of offsets) {
        data.copy(page);
        sc.encrypt(page, off / 4096);
        writeSync(fd, page, 0, 4096, off);
      }
    };
    const sixtyFourK = (): void => {
      for (const off of offsets) {
        const u = Math.floor(off / 65536);
        readSync(fd, unit, 0, 65536, u * 65536);
        xtsUnits(false, key, 65536, unit, u);
        data.copy(unit, off - u * 65536);
        xtsUnits(true, key, 65536, unit, u);
        writeSync(fd, unit, 0, 65536, u * 65536);
      }
    };
    const out = { sector4k: [] as number[], unit64k: [] as number[] };
    fourK();
    sixtyFourK();
    const perSec = (f: () => void): number => {
      const t0 = process.hrtime.bigint();
      f();
      return writes / (Number(process.hrtime.bigint() - t0) / 1e9);
    };
    for (let r = 0; r < rounds; r++) {
      out.sector4k.push(perSec(fourK));
      out.unit64k.push(perSec(sixtyFourK));
    }
    return out;
  } finally {
    closeSync(fd);
  }
}
