// DiskJournal: the crash-safe record, beside a checked-out disk, of which blocks differ from the
// version it was checked out at (dirty), and, while a streamed check-out is still arriving, which
// blocks are local (present) and which 4 KiB pages of a not-yet-local block the VM wrote itself.
// An append-only file of checksummed records (layout in docs/formats.md, "disk journal"):
// - a dirty or page mark is durable BEFORE the write it covers reaches the disk (write-ahead), so
//   after a kill -9 or a power cut the map covers every write, acknowledged or not: nothing needs a
//   full re-read, and only the marked blocks are hashed at check-in;
// - a present mark is appended only AFTER its block's bytes were fdatasync'ed;
// - a torn tail (a crash mid-append) fails its checksum and is cut off on open.
// Each new dirty block costs one record; group commit shares one fdatasync among concurrent writers.
import { closeSync, fdatasync, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, renameSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { CarryonError, type DiskManifest } from '../src/index.js';

const MAGIC = Buffer.from('CYDJ');
const VERSION = 1;
const HEADER_BYTES = 64;
/** The VM's write granularity we track inside a not-yet-local block (16 pages per 64 KiB block). */
export const PAGE_BYTES = 4096;

export const REC = { DIRTY: 1, PRESENT: 2, PAGES: 3, CLEAN: 4, SESSION: 5, UNTRUSTED: 6 } as const;

/** What identifies the disk file's last clean state: any write by anyone changes it. */
export interface DiskStamp {
  size: number;
  mtimeNs: bigint;
  ino: bigint;
}

export function stampOf(fd: number): DiskStamp {
  const st = fstatSync(fd, { bigint: true });
  return { size: Number(st.size), mtimeNs: st.mtimeNs, ino: st.ino };
}

export function sameStamp(a: DiskStamp, b: DiskStamp): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ino === b.ino;
}

/** Ties a journal to one checkout of one version: a journal left from another is never believed. */
export function journalKey(checkoutId: string, manifestId: string): Buffer {
  return createHash('sha256').update(`carryon-journal\n${checkoutId}\n${manifestId}`).digest();
}

export interface JournalTrust {
  trusted: boolean;
  /** Why a full scan is needed (when not trusted), or how the map was recovered. */
  reason: string | null;
  /** The last session ended without a clean close (kill, crash, power cut). */
  recovered: boolean;
}

export class DiskJournal {
  readonly dirty: Uint8Array;
  /** null once every block is local. */
  present: Uint8Array | null;
  /** Guest-written pages of blocks not yet present: bit p = page p of the block. */
  readonly pages = new Map<number, number>();
  dirtyCount = 0;
  presentCount = 0;
  private lastType = 0;
  private cleanStamp: DiskStamp | null = null;
  private untrusted: string | null = null;
  private tornTail = false;
  private end: number;
  private pending: Buffer[] = [];
  private appendSeq = 0;
  private durableSeq = 0;
  private syncing: Promise<void> | null = null;
  /** Sequence number of the record that last marked each block; a writer waits until it is durable. */
  private readonly markSeq: Uint32Array;
  private closed = false;
  private fdOpen = true;
  /** A failed write or fdatasync of the journal: its records may be lost, and an fdatasync cannot be
   *  retried safely (the kernel may have dropped the dirty pages). From then on every mark fails. */
  private failed: unknown = null;

  private constructor(readonly file: string, private readonly fd: number, readonly blockSize: number, readonly count: number, streaming: boolean, end: number) {
    this.dirty = new Uint8Array(count);
    this.present = streaming ? new Uint8Array(count) : null;
    this.markSeq = new Uint32Array(count);
    this.end = end;
  }

  /** Start a journal for a checkout: atomically replaces any older one. `streaming`: blocks arrive later. */
  static create(file: string, key: Buffer, manifest: DiskManifest, streaming: boolean, stamp: DiskStamp | null): DiskJournal {
    const tmp = `${file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      const h = Buffer.alloc(HEADER_BYTES);
      MAGIC.copy(h, 0);
      h.writeUInt32LE(VERSION, 4);
      h.writeUInt32LE(manifest.blockSize, 8);
      h.writeUInt32LE(manifest.count, 12);
      h.writeUInt32LE(streaming ? 1 : 0, 16);
      key.copy(h, 24, 0, 32);
      h.writeUInt32LE(crc32(h.subarray(0, 60)), 60);
      writeSync(fd, h, 0, HEADER_BYTES, 0);
      if (stamp) writeSync(fd, record(REC.CLEAN, stampPayload(stamp)), 0, undefined, HEADER_BYTES);
      // fsync'ed before it replaces the old journal: the rename never exposes an empty file.
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    syncDirSync(path.dirname(file));
    return DiskJournal.open(file, key, manifest);
  }

  /** Read a journal back, cutting off a torn tail. Fails when it belongs to another checkout or version. */
  /** `readOnly`: look without repairing (another process may be appending). */
  static open(file: string, key: Buffer, manifest: DiskManifest, readOnly = false): DiskJournal {
    const fd = openSync(file, readOnly ? 'r' : 'r+');
    try {
      const size = Number(fstatSync(fd).size);
      const h = Buffer.alloc(HEADER_BYTES);
      if (size < HEADER_BYTES || readSync(fd, h, 0, HEADER_BYTES, 0) !== HEADER_BYTES || !h.subarray(0, 4).equals(MAGIC) || h.readUInt32LE(60) !== crc32(h.subarray(0, 60))) {
        throw new CarryonError('JOURNAL_INVALID', `${file} is not a carryon disk journal`, { file });
      }
      if (h.readUInt32LE(4) !== VERSION) throw new CarryonError('JOURNAL_INVALID', `${file} has journal version ${h.readUInt32LE(4)}; this carryon reads ${VERSION}`, { file });
      if (!h.subarray(24, 56).equals(key) || h.readUInt32LE(8) !== manifest.blockSize || h.readUInt32LE(12) !== manifest.count) {
        throw new CarryonError('JOURNAL_INVALID', `${file} belongs to another checkout or version of this desktop`, { file });
      }
      const body = Buffer.allocUnsafe(size - HEADER_BYTES);
      let got = 0;
      while (got < body.length) {
        const n = readSync(fd, body, got, body.length - got, HEADER_BYTES + got);
        if (n === 0) break;
        got += n;
      }
      const j = new DiskJournal(file, fd, manifest.blockSize, manifest.count, h.readUInt32LE(16) === 1, HEADER_BYTES);
      if (j.present) {
        for (let i = 0; i < manifest.count; i++) if (manifest.isHole(i)) j.present[i] = 1;
        j.presentCount = j.present.reduce((n, v) => n + v, 0);
      }
      let off = 0;
      while (off + 12 <= got) {
        const len = body.readUInt32LE(off);
        const type = body[off + 4]!;
        if (off + 12 + len > got) break;
        const payload = body.subarray(off + 12, off + 12 + len);
        const sum = crc32(payload, crc32(body.subarray(off + 4, off + 8)));
        if (sum !== body.readUInt32LE(off + 8) || !j.apply(type, payload)) break;
        off += 12 + len;
      }
      j.end = HEADER_BYTES + off;
      j.checkComplete();
      if (j.end < size) {
        j.tornTail = true;
        // A crash can only tear the last group commit; a whole record after the break means damage.
        const damaged = hasRecordAfter(body.subarray(off + 1, got)) && j.untrusted === null;
        if (damaged) j.untrusted = 'the dirty map is damaged in the middle (not a torn tail)';
        if (readOnly) {
          j.closed = true; // appends would land after garbage
          return j;
        }
        ftruncateSync(fd, j.end);
        // The cut drops the whole records after the damage, marks among them: the verdict goes on file
        // too, or the next open would trust the shorter map.
        if (damaged) {
          const r = record(REC.UNTRUSTED, Buffer.from(j.untrusted!, 'utf8'));
          for (let done = 0; done < r.length;) {
            const n = writeSync(fd, r, done, r.length - done, j.end + done);
            if (n <= 0) throw new CarryonError('IO_ERROR', `short write to ${file}`, { file });
            done += n;
          }
          j.end += r.length;
          j.lastType = REC.UNTRUSTED;
        }
        fdatasyncSync(fd);
      }
      return j;
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Replays one record: all of it, or (when any part is invalid) none of it. A mark kept from a record
   *  that the repair then cuts would let markDirty skip the write-ahead record for that block. */
  private apply(type: number, p: Buffer): boolean {
    switch (type) {
      case REC.DIRTY:
      case REC.PRESENT:
        if (p.length % 4 !== 0) return false;
        for (let k = 0; k < p.length; k += 4) if (p.readUInt32LE(k) >= this.count) return false;
        for (let k = 0; k < p.length; k += 4) {
          const i = p.readUInt32LE(k);
          if (type === REC.DIRTY) this.setDirty(i);
          else this.setPresent(i);
        }
        break;
      case REC.PAGES:
        if (p.length % 6 !== 0) return false;
        for (let k = 0; k < p.length; k += 6) if (p.readUInt32LE(k) >= this.count) return false;
        for (let k = 0; k < p.length; k += 6) {
          const i = p.readUInt32LE(k);
          this.setDirty(i);
          if (this.present && !this.present[i]) this.pages.set(i, (this.pages.get(i) ?? 0) | p.readUInt16LE(k + 4));
        }
        break;
      case REC.CLEAN:
        if (p.length !== 24) return false;
        this.cleanStamp = { size: Number(p.readBigUInt64LE(0)), mtimeNs: p.readBigUInt64LE(8), ino: p.readBigUInt64LE(16) };
        break;
      case REC.SESSION:
        break;
      case REC.UNTRUSTED:
        this.untrusted = p.toString('utf8');
        break;
      default:
        return false;
    }
    this.lastType = type;
    return true;
  }

  private setDirty(i: number): void {
    if (!this.dirty[i]) {
      this.dirty[i] = 1;
      this.dirtyCount++;
    }
  }

  private setPresent(i: number): void {
    if (this.present && !this.present[i]) {
      this.present[i] = 1;
      this.presentCount++;
      this.pages.delete(i);
    }
  }

  private checkComplete(): void {
    if (this.present && this.presentCount === this.count) this.present = null;
  }

  /** Why the map was declared untrustworthy (persisted), or null. */
  get untrustedReason(): string | null {
    return this.untrusted;
  }

  get complete(): boolean {
    return this.present === null;
  }

  isPresent(i: number): boolean {
    return this.present === null || this.present[i] === 1;
  }

  /** Can the dirty map stand in for a full scan of the disk whose current stamp is `now`? */
  trust(now: DiskStamp): JournalTrust {
    const recovered = this.lastType !== REC.CLEAN || this.tornTail;
    if (this.untrusted) return { trusted: false, reason: this.untrusted, recovered };
    if (this.lastType === REC.CLEAN && this.cleanStamp && !sameStamp(this.cleanStamp, now)) {
      return { trusted: false, reason: 'the disk file was modified outside `carryon serve` since carryon last closed it', recovered };
    }
    return { trusted: true, reason: recovered ? 'recovered after an unclean stop: the write-ahead marks cover every write' : null, recovered };
  }

  private checkHealthy(): void {
    if (this.failed) throw new CarryonError('IO_ERROR', `the disk journal ${this.file} could not be written; stop and check the laptop's disk space`, { file: this.file }, this.failed);
  }

  private append(type: number, payload: Buffer): number {
    if (this.closed) throw new CarryonError('INTERNAL', 'disk journal used after close');
    this.checkHealthy();
    this.pending.push(record(type, payload));
    this.lastType = type;
    return ++this.appendSeq;
  }

  /** Mark blocks dirty; resolves when every mark covering them is durable (call before writing them). */
  markDirty(blocks: Iterable<number>): Promise<void> {
    const fresh: number[] = [];
    let need = 0;
    for (const i of blocks) {
      if (!this.dirty[i]) fresh.push(i);
      else need = Math.max(need, this.markSeq[i]!);
    }
    if (fresh.length > 0) {
      const seq = this.append(REC.DIRTY, u32s(fresh));
      for (const i of fresh) {
        this.setDirty(i);
        this.markSeq[i] = seq;
      }
      need = seq;
    }
    return this.durable(need);
  }

  /** markDirty for blocks a..b; null (no promise at all) when every one is already durably dirty. */
  markDirtyRange(a: number, b: number): Promise<void> | null {
    let need = 0;
    let fresh = false;
    for (let i = a; i <= b; i++) {
      if (!this.dirty[i]) fresh = true;
      else if (this.markSeq[i]! > need) need = this.markSeq[i]!;
    }
    if (!fresh && need <= this.durableSeq) return null;
    const list: number[] = [];
    for (let i = a; i <= b; i++) list.push(i);
    return this.markDirty(list);
  }

  /** Mark guest-written pages of blocks not yet present (and the blocks dirty); write-ahead like markDirty. */
  markPages(marks: Array<{ block: number; mask: number }>): Promise<void> {
    const fresh: Array<{ block: number; mask: number }> = [];
    let need = 0;
    for (const m of marks) {
      const old = this.pages.get(m.block) ?? 0;
      if ((old | m.mask) !== old || !this.dirty[m.block]) fresh.push(m);
      else need = Math.max(need, this.markSeq[m.block]!);
    }
    if (fresh.length > 0) {
      const p = Buffer.allocUnsafe(6 * fresh.length);
      fresh.forEach((m, k) => {
        p.writeUInt32LE(m.block, 6 * k);
        p.writeUInt16LE(m.mask, 6 * k + 4);
      });
      const seq = this.append(REC.PAGES, p);
      for (const m of fresh) {
        this.setDirty(m.block);
        if (this.present && !this.present[m.block]) this.pages.set(m.block, (this.pages.get(m.block) ?? 0) | m.mask); // as replay does
        this.markSeq[m.block] = seq;
      }
      need = seq;
    }
    return this.durable(need);
  }

  /** Record blocks as local. Call only after their bytes were fdatasync'ed. Durable with the next sync. */
  markPresent(blocks: number[]): void {
    const fresh = blocks.filter((i) => !this.isPresent(i));
    if (fresh.length === 0) return;
    this.append(REC.PRESENT, u32s(fresh));
    for (const i of fresh) this.setPresent(i);
    this.checkComplete();
  }

  /** A session begins: a crash from here on is not mistaken for a clean close. */
  async beginSession(): Promise<void> {
    await this.durable(this.append(REC.SESSION, Buffer.alloc(0)));
  }

  async markUntrusted(reason: string): Promise<void> {
    this.untrusted = reason;
    await this.durable(this.append(REC.UNTRUSTED, Buffer.from(reason, 'utf8')));
  }

  /** The disk was fdatasync'ed and is as the map says: record its stamp so outside writes are noticed. */
  async closeClean(stamp: DiskStamp): Promise<void> {
    this.cleanStamp = stamp;
    await this.durable(this.append(REC.CLEAN, stampPayload(stamp)));
  }

  /** Resolves once every record up to `seq` is on stable storage. */
  async durable(seq: number = this.appendSeq): Promise<void> {
    while (this.durableSeq < seq) {
      this.checkHealthy();
      if (this.syncing) {
        await this.syncing;
        continue;
      }
      this.syncing = this.syncRound().finally(() => {
        this.syncing = null;
      });
      await this.syncing;
    }
  }

  /** One group commit: everything appended so far, one write, one fdatasync. */
  private async syncRound(): Promise<void> {
    this.checkHealthy();
    const upTo = this.appendSeq;
    const bufs = this.pending;
    this.pending = [];
    try {
      if (bufs.length > 0) {
        const b = bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs);
        // Every byte, or a failure: a short write (ENOSPC) taken as whole would make a torn mark look durable.
        for (let done = 0; done < b.length;) {
          const n = writeSync(this.fd, b, done, b.length - done, this.end + done);
          if (n <= 0) throw new CarryonError('IO_ERROR', `short write to ${this.file}`, { file: this.file });
          done += n;
        }
        this.end += b.length;
      }
      await new Promise<void>((resolve, reject) => fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
    } catch (err) {
      this.failed = err;
      throw err;
    }
    this.durableSeq = Math.max(this.durableSeq, upTo);
  }

  async close(): Promise<void> {
    if (this.closed) {
      if (this.fdOpen) {
        this.fdOpen = false;
        closeSync(this.fd);
      }
      return;
    }
    await this.durable();
    this.fdOpen = false;
    this.closed = true;
    closeSync(this.fd);
  }

  dirtyBlocks(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.count; i++) if (this.dirty[i]) out.push(i);
    return out;
  }
}

/** Is there a whole, checksummed record anywhere in `tail` (scanning at most its first MiB)? */
function hasRecordAfter(tail: Buffer): boolean {
  const end = Math.min(tail.length, 1024 * 1024);
  for (let p = 0; p + 12 <= end; p++) {
    const len = tail.readUInt32LE(p);
    const type = tail.readUInt32LE(p + 4);
    if (type < REC.DIRTY || type > REC.UNTRUSTED || p + 12 + len > tail.length) continue;
    if (crc32(tail.subarray(p + 12, p + 12 + len), crc32(tail.subarray(p + 4, p + 8))) === tail.readUInt32LE(p + 8)) return true;
  }
  return false;
}

function record(type: number, payload: Buffer): Buffer {
  const r = Buffer.allocUnsafe(12 + payload.length);
  r.writeUInt32LE(payload.length, 0);
  r.writeUInt32LE(type, 4);
  payload.copy(r, 12);
  r.writeUInt32LE(crc32(payload, crc32(r.subarray(4, 8))), 8);
  return r;
}

function u32s(list: number[]): Buffer {
  const b = Buffer.allocUnsafe(4 * list.length);
  list.forEach((v, k) => b.writeUInt32LE(v, 4 * k));
  return b;
}

function stampPayload(s: DiskStamp): Buffer {
  const b = Buffer.allocUnsafe(24);
  b.writeBigUInt64LE(BigInt(s.size), 0);
  b.writeBigUInt64LE(s.mtimeNs, 8);
  b.writeBigUInt64LE(s.ino, 16);
  return b;
}

function syncDirSync(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
