// DiskIo: every byte carryon reads from or writes to a checked-out disk file goes through here, so a
// copy encrypted at rest (AES-256-XTS per 4 KiB sector, src/crypto) and a plaintext one take the same
// paths. Owns: sector alignment (a write that covers part of a sector is read-modify-write), zeros
// past the end of the file, and short reads and writes. The file's bytes are ciphertext; callers only
// ever see plaintext.
import { read as fsRead, readSync, writeSync, writevSync } from 'node:fs';
import { CarryonError, SECTOR_BYTES, SectorCipher } from '../src/index.js';

/** Scratch for encrypted writes up to this size is kept and reused (writes are synchronous); larger ones allocate. */
const SCRATCH_MAX = 4 * 1024 * 1024;

export class DiskIo {
  private scratch: Buffer | null = null;

  constructor(readonly fd: number, readonly size: number, readonly cipher: SectorCipher | null, private readonly file: string) {}

  static forKey(fd: number, size: number, dataKey: Buffer | null, file: string): DiskIo {
    return new DiskIo(fd, size, dataKey ? SectorCipher.fromDataKey(dataKey) : null, file);
  }

  get encrypted(): boolean {
    return this.cipher !== null;
  }

  /** The whole sectors around [pos, pos+len), clamped to the file's size. */
  private span(pos: number, len: number): { a: number; b: number } {
    const a = Math.floor(pos / SECTOR_BYTES) * SECTOR_BYTES;
    const b = Math.min(Math.ceil((pos + len) / SECTOR_BYTES) * SECTOR_BYTES, Math.max(this.size, pos + len));
    return { a, b };
  }

  private rawReadSync(buf: Buffer, at: number, len: number, pos: number): void {
    let got = 0;
    while (got < len) {
      const n = readSync(this.fd, buf, at + got, len - got, pos + got);
      if (n === 0) break;
      got += n;
    }
    if (got < len) buf.fill(0, at + got, at + len); // sparse tail past the file's end: zeros (a hole both ways)
  }

  private async rawRead(buf: Buffer, at: number, len: number, pos: number): Promise<void> {
    let got = 0;
    while (got < len) {
      const n = await new Promise<number>((resolve, reject) => fsRead(this.fd, buf, at + got, len - got, pos + got, (err, k) => (err ? reject(err) : resolve(k))));
      if (n === 0) break;
      got += n;
    }
    if (got < len) buf.fill(0, at + got, at + len);
  }

  private rawWriteSync(buf: Buffer, at: number, len: number, pos: number): void {
    for (let done = 0; done < len;) {
      const n = writeSync(this.fd, buf, at + done, len - done, pos + done);
      if (n <= 0) throw new CarryonError('IO_ERROR', `short write to ${this.file}`, { file: this.file });
      done += n;
    }
  }

  readSync(buf: Buffer, at: number, len: number, pos: number): void {
    if (!this.cipher) return this.rawReadSync(buf, at, len, pos);
    const { a, b } = this.span(pos, len);
    if (a === pos && b === pos + len) {
      this.rawReadSync(buf, at, len, pos);
      this.cipher.decrypt(buf.subarray(at, at + len), a / SECTOR_BYTES);
      return;
    }
    const tmp = Buffer.allocUnsafe(b - a);
    this.rawReadSync(tmp, 0, tmp.length, a);
    this.cipher.decrypt(tmp, a / SECTOR_BYTES);
    tmp.copy(buf, at, pos - a, pos - a + len);
  }

  /** The same, with the file read in the thread pool (large reads overlap other work). */
  async read(buf: Buffer, at: number, len: number, pos: number): Promise<void> {
    if (!this.cipher) return this.rawRead(buf, at, len, pos);
    const { a, b } = this.span(pos, len);
    if (a === pos && b === pos + len) {
      // With the addon, the read and its decryption both happen on a worker thread.
      const off = this.cipher.preadDecrypt(this.fd, buf.subarray(at, at + len), pos);
      if (off) return off;
      await this.rawRead(buf, at, len, pos);
      this.cipher.decrypt(buf.subarray(at, at + len), a / SECTOR_BYTES);
      return;
    }
    const tmp = Buffer.allocUnsafe(b - a);
    await this.rawRead(tmp, 0, tmp.length, a);
    this.cipher.decrypt(tmp, a / SECTOR_BYTES);
    tmp.copy(buf, at, pos - a, pos - a + len);
  }

  /** A buffer of n bytes for ciphertext about to be written (reused: its bytes are dead once the write returns). */
  private tmp(n: number): Buffer {
    if (n > SCRATCH_MAX) return Buffer.allocUnsafe(n);
    if (!this.scratch || this.scratch.length < n) this.scratch = Buffer.allocUnsafe(Math.max(n, 64 * 1024));
    return this.scratch.subarray(0, n);
  }

  /** Write all of buf[at, at+len) at pos (never a short write: throws). The caller's buffer is not changed. */
  writeSync(buf: Buffer, at: number, len: number, pos: number): void {
    if (!this.cipher) return this.rawWriteSync(buf, at, len, pos);
    const { a, b } = this.span(pos, len);
    const tmp = this.tmp(b - a);
    if (a === pos && b === pos + len) {
      // Whole sectors: encrypted straight from the caller's buffer into the scratch.
      this.cipher.encrypt(buf.subarray(at, at + len), a / SECTOR_BYTES, tmp);
    } else {
      // Part of a sector: its other bytes come from the file (read-modify-write).
      this.rawReadSync(tmp, 0, tmp.length, a);
      this.cipher.decrypt(tmp, a / SECTOR_BYTES);
      buf.copy(tmp, pos - a, at, at + len);
      this.cipher.encrypt(tmp, a / SECTOR_BYTES);
    }
    this.rawWriteSync(tmp, 0, tmp.length, a);
  }

  /** Several buffers back to back from pos: one writev for a plaintext file. */
  writevSync(chunks: Buffer[], pos: number): void {
    if (this.cipher) {
      if (chunks.length === 1) return this.writeSync(chunks[0]!, 0, chunks[0]!.length, pos);
      const len = chunks.reduce((n, c) => n + c.length, 0);
      const { a, b } = this.span(pos, len);
      if (a !== pos || b !== pos + len) {
        const all = Buffer.concat(chunks, len);
        return this.writeSync(all, 0, len, pos);
      }
      // Whole sectors (socket chunks need not be): gathered into the scratch once, encrypted there in place.
      const tmp = this.tmp(len);
      let at = 0;
      for (const c of chunks) at += c.copy(tmp, at);
      this.cipher.encrypt(tmp, pos / SECTOR_BYTES);
      return this.rawWriteSync(tmp, 0, len, pos);
    }
    let list = chunks;
    while (list.length > 0) {
      const n = writevSync(this.fd, list, pos);
      pos += n;
      list = skipBytes(list, n);
    }
  }

  /**
   * Encrypt a buffer about to be written at a sector boundary, in place (the check-out workers gather
   * runs of blocks and write them themselves).
   */
  sealInPlace(buf: Buffer, pos: number): void {
    if (!this.cipher) return;
    if (pos % SECTOR_BYTES !== 0) throw new CarryonError('INTERNAL', 'disk writes of whole blocks start at a sector boundary');
    this.cipher.encrypt(buf, pos / SECTOR_BYTES);
  }
}

function skipBytes(list: Buffer[], n: number): Buffer[] {
  let i = 0;
  while (i < list.length && n >= list[i]!.length) n -= list[i++]!.length;
  if (i === list.length) return [];
  return n > 0 ? [list[i]!.subarray(n), ...list.slice(i + 1)] : list.slice(i);
}
