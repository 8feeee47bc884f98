// Opening a checked-out disk for use: its journal (dirty map), the trust we place in it, and the
// LocalDisk over both. Also the journal's start at check-out. Callers hold the DiskLock.
import { existsSync, mkdirSync, openSync, closeSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { CarryonError, decodeCheap, decodeManifest, type DiskManifest } from '../src/index.js';
import { DiskJournal, journalKey, stampOf, type DiskStamp, type JournalTrust } from './disk-journal.js';
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
