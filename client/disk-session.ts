// Opening a checked-out disk for use: its journal (dirty map), the trust we place in it, and the
// LocalDisk over both. Also the journal's start at check-out. Callers hold the DiskLock.
import { existsSync, mkdirSync, openSync, closeSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { CarryonError, decodeCheap, decodeManifest, scanImage, SectorCipher, SECTOR_BYTES, type DiskManifest } from '../src/index.js';
import { DiskJournal, journalKey, stampOf, type DiskStamp, type JournalTrust } from './disk-journal.js';
import { describeWriters, diskWriters } from './disk-users.js';
import { LocalDisk, type BlockSource } from './local-disk.js';
import type { LocalCheckout, LocalState } from './state.js';
import { knownRollback, rolledBackError } from './rollback.js';

export function diskStampOf(file: string): DiskStamp {
  const fd = openSync(file, 'r');
  try {
    return stampOf(fd);
  } finally {
    closeSync(fd);
  }
}

/** File times move in coarse ticks (jiffies, a few ms): a stamp younger than this may be "racy". */
const RACY_STAMP_MS = 20;

/**
 * The disk's stamp, to be taken BEFORE its bytes are read: if it is the same after the read, nothing
 * wrote the file meanwhile. A write in the same clock tick as the file's last modification leaves its
 * mtime unchanged, so a stamp that recent waits until the clock has moved past it and is taken again:
 * from then on every write changes the mtime.
 */
export async function stampBeforeRead(file: string): Promise<DiskStamp> {
  for (let tries = 0; ; tries++) {
    const s = diskStampOf(file);
    const ageMs = Number(BigInt(Date.now()) * 1_000_000n - s.mtimeNs) / 1e6;
    if (ageMs < 0 || ageMs > RACY_STAMP_MS || tries >= 20) return s;
    await new Promise((r) => setTimeout(r, RACY_STAMP_MS - ageMs + 2));
  }
}

/** Refuse (DISK_IN_USE, naming them) when another process has the disk open for writing: a VM run on the raw file. */
export function refuseDiskWriters(file: string, desktop: string, what: string): void {
  const writers = diskWriters(file);
  if (writers.length === 0) return;
  throw new CarryonError('DISK_IN_USE', `${describeWriters(file, writers)}: ${what} would miss its later writes; shut down the VM (or stop the process) using it, then try again`,
    { desktop, disk: file, writers });
}

/**
 * Blocks of a checked-in copy whose bytes are no longer those checked in: the copy was written outside
 * carryon after its check-in. The journal left by the check-in vouches for an untouched copy (its clean
 * stamp still matches) without reading it; otherwise the whole copy is read and each block's cheap
 * hash compared with the one recorded at check-in (`withoutRecord: false`: not when the record is missing).
 */
export async function outsideChanges(state: LocalState, local: LocalCheckout, onProgress?: (bytes: number) => void, opts: { withoutRecord?: boolean } = {}): Promise<{ blocks: number[]; cheap: BigUint64Array; size: number; reason: string } | null> {
  const manifest = decodeManifest(local.manifest);
  const previous = { manifest, cheap: decodeCheap(local.cheap!) };
  const opened = openJournal(state, local, true);
  let reason: string;
  if (opened.journal) {
    const j = opened.journal;
    await j.close();
    if (opened.trust.trusted && !opened.trust.recovered && j.dirtyCount === 0) return null;
    reason = opened.trust.trusted ? 'its record of the check-in was not closed cleanly' : `the disk file was modified outside carryon after it was checked in as version ${local.version}`;
  } else if (opts.withoutRecord === false) return null; // a copy checked in by an older carryon: not read just to look
  else reason = `there is no record of the copy as checked in (${opened.reason})`;
  const scan = await scanImage(local.diskPath, { blockSize: manifest.blockSize, previous, decrypt: decryptorOf(state, local.desktop), onProgress: onProgress ? (d) => onProgress(d) : undefined });
  return { blocks: scan.changed.filter((i) => i < manifest.count), cheap: scan.cheap, size: scan.manifest.size, reason };
}

/** How a scan reads an encrypted copy's file (undefined: plaintext). */
export function decryptorOf(state: LocalState, desktop: string): ((data: Buffer, position: number) => void) | undefined {
  const key = state.keys.dataKey(desktop);
  if (!key) return undefined;
  const cipher = SectorCipher.fromDataKey(key);
  return (data, position) => cipher.decrypt(data, position / SECTOR_BYTES);
}

/** A fresh journal for a checkout just made: complete (`stamp` = the disk as written) or streaming. */
export function startJournal(state: LocalState, c: Pick<LocalCheckout, 'desktop' | 'checkoutId' | 'manifestId'>, manifest: DiskManifest, streaming: boolean, stamp: DiskStamp | null): DiskJournal {
  const file = state.journalPath(c.desktop);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  return DiskJournal.create(file, journalKey(c.checkoutId, c.manifestId), manifest, streaming, stamp);
}

export function removeJournal(state: LocalState, desktop: string): void {
  try {
    unlinkSync(state.journalPath(desktop));
  } catch {
    /* none */
  }
}

/** The journal of a checkout, or why it cannot be used. */
export function openJournal(state: LocalState, local: LocalCheckout, readOnly = false): { journal: DiskJournal; trust: JournalTrust } | { journal: null; reason: string } {
  const manifest = decodeManifest(local.manifest);
  const file = state.journalPath(local.desktop);
  if (!existsSync(file)) return { journal: null, reason: 'this checkout has no dirty map (made by an older carryon, or its journal was removed)' };
  let journal: DiskJournal;
  try {
    journal = DiskJournal.open(file, journalKey(local.checkoutId, local.manifestId), manifest, readOnly);
  } catch (err) {
    if (err instanceof CarryonError && err.code === 'JOURNAL_INVALID') return { journal: null, reason: err.message };
    throw err;
  }
  return { journal, trust: journal.trust(diskStampOf(local.diskPath)) };
}

/**
 * Open a checkout's disk for serving or finishing. A dirty map that cannot be trusted is replaced by
 * one marked untrusted (so a later clean close cannot launder it): the next check-in scans the whole
 * disk. A streamed disk without its journal cannot go on: which blocks are local is unknown.
 */
export async function openLocalDisk(state: LocalState, local: LocalCheckout, source: BlockSource | null): Promise<{ disk: LocalDisk; trust: JournalTrust }> {
  const manifest = decodeManifest(local.manifest);
  const opened = openJournal(state, local);
  let journal: DiskJournal;
  let trust: JournalTrust;
  if (opened.journal === null) {
    if (local.state === 'streaming') {
      throw new CarryonError('JOURNAL_INVALID', `${local.desktop}: the record of which blocks are local is unusable (${opened.reason}); run \`carryon discard ${local.desktop}\` and check it out again`, { desktop: local.desktop });
    }
    journal = startJournal(state, local, manifest, false, null);
    await journal.markUntrusted(opened.reason);
    trust = { trusted: false, reason: opened.reason, recovered: false };
  } else {
    journal = opened.journal;
    trust = opened.trust;
    if (!trust.trusted && journal.untrustedReason === null) await journal.markUntrusted(trust.reason!);
  }
  const cheap = local.cheap ? decodeCheap(local.cheap) : new BigUint64Array(manifest.count);
  // An encrypted copy's key (KEYS_LOCKED when the keyring is locked): every byte goes through XTS.
  return { disk: new LocalDisk(local.desktop, local.diskPath, manifest, journal, cheap, source, state.keys.dataKey(local.desktop)), trust };
}

/** The checkout of `name` that is in use on this laptop (active or streaming), or NOT_CHECKED_OUT saying why not. */
export function requireCheckedOut(state: LocalState, name: string): LocalCheckout {
  const local = state.checkout(name);
  if (!local || (local.state !== 'active' && local.state !== 'streaming')) {
    const why = !local ? 'it is not checked out on this laptop'
      : local.state === 'downloading' ? `its check-out is incomplete: run \`carryon checkout ${name}\` to finish it`
      : `it was checked in already (version ${local.version}); check it out again to use it`;
    throw new CarryonError('NOT_CHECKED_OUT', `${name}: ${why}`, { desktop: name, state: local?.state ?? null });
  }
  // Rolled back by an admin (learned earlier, perhaps by another command): the copy is no longer the desktop.
  const rb = knownRollback(state, name);
  if (rb) throw rolledBackError(rb);
  return local;
}

/** What the laptop has not sent since check-out: the blocks its dirty map marks (an upper bound). */
export function pendingChanges(state: LocalState, local: LocalCheckout): { pendingBytes: number; pendingBlocks: number } {
  const opened = openJournal(state, local, true);
  if (!opened.journal) return { pendingBytes: 0, pendingBlocks: 0 };
  const m = decodeManifest(local.manifest);
  let pendingBytes = 0;
  let pendingBlocks = 0;
  for (const i of opened.journal.dirtyBlocks()) {
    pendingBlocks++;
    pendingBytes += m.lengthOf(i);
  }
  void opened.journal.close();
  return { pendingBytes, pendingBlocks };
}
