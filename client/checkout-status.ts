// What a laptop holds, for `carryon status` and the traveller's app (client/app/): each checkout's state,
// how much of it is local (ready to travel), its lease, who serves or writes its disk, what changed since
// check-out; rollbacks an admin carried out; streamed personas. Facts only: the callers word them.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { decodeManifest, defaultHoleMode, sectorCipherImplementation } from '../src/index.js';
import { scanChanges } from './checkin-engine.js';
import { DiskLock } from './disk-lock.js';
import { leaseStatus } from './lease.js';
import { openJournal, outsideChanges } from './disk-session.js';
import { describeWriters, diskWriters } from './disk-users.js';
import { knownRollback, rollbackSentence } from './rollback.js';
import type { LocalCheckout, LocalRollback, LocalState } from './state.js';
import { isStreamed, mountRecord, streamProgress, type StreamProgress } from './persona-stream.js';

export type StreamedPersonaStatus = { desktop: string; dir: string; version: number; mountedAt: string | null } & StreamProgress;

export interface LaptopStatus {
  home: string;
  diskCipher: ReturnType<typeof sectorCipherImplementation>;
  scanHoles: ReturnType<typeof defaultHoleMode>;
  desktops: Array<Record<string, unknown>>;
  streamedPersonas: StreamedPersonaStatus[];
  note?: string;
}

/**
 * Every checkout on this laptop (or only `desktop`'s). `quiet`: no progress line for a full scan.
 * `scan` false: never scan a whole disk to count changes (the app refreshes often; the CLI scans).
 */
export async function laptopStatus(state: LocalState, desktop: string | undefined, quiet: boolean, scan = true): Promise<LaptopStatus> {
  const rows = desktop ? [state.checkout(desktop)].filter((r) => r !== null) : state.checkouts();
  const desktops: Array<Record<string, unknown>> = [];
  for (const r of rows) desktops.push(await describe(state, r, quiet, scan));
  // Rollbacks the agent has carried out: the checkout is gone, the traveller still needs to know why and where the copy went.
  for (const rb of state.rollbacks()) {
    if (rb.doneAt && (!desktop || rb.desktop === desktop) && !desktops.some((d) => d.desktop === rb.desktop)) {
      desktops.push({ desktop: rb.desktop, state: 'rolled-back', disk: rb.diskPath, rolledBack: rollbackJson(rb), message: rollbackSentence(rb) });
    }
  }
  // How an encrypted copy's sectors are (de)crypted in this install: 'native' (the XTS addon) or 'js'.
  const diskCipher = sectorCipherImplementation();
  // How a full scan finds holes in this install: 'seek-data' (native/sparse, skipped unread) or 'read'.
  const scanHoles = defaultHoleMode();
  // Streamed personas: how much is local, whether one is shown through a mount now.
  const streamed = await streamedPersonas(state, desktop);
  return { home: state.home, diskCipher, scanHoles, desktops, streamedPersonas: streamed, ...(desktop && desktops.length === 0 && streamed.length === 0 ? { note: `${desktop} is not checked out on this laptop` } : {}) };
}

async function describe(state: LocalState, r: LocalCheckout, quiet: boolean, scan: boolean): Promise<Record<string, unknown>> {
  const m = decodeManifest(r.manifest);
  const entry: Record<string, unknown> = { desktop: r.desktop, state: r.state, version: r.version, disk: r.diskPath, server: r.server, size: m.size, since: r.startedAt };
  // Encrypted at rest, and whether this command holds the key (a locked copy can be listed, not read).
  const encrypted = state.keys.isEncrypted(r.desktop);
  const locked = encrypted && !state.keys.isUnlocked();
  entry.encryption = { encrypted, locked };
  if (!locked && r.state === 'checked-in' && r.cheap && existsSync(r.diskPath)) {
    // The copy must still be the version checked in: a write since is not on the server.
    const o = await outsideChanges(state, r, undefined, { withoutRecord: false });
    entry.changedAfterCheckin = o && { reason: o.reason, blocksChanged: o.blocks.length, bytesChanged: o.blocks.reduce((n, i) => n + m.lengthOf(i), 0), sizeChanged: o.size !== m.size };
  }
  if (r.state !== 'active' && r.state !== 'streaming') return entry;
  // Rolled back by an admin: the lease means nothing any more; say what happened and what comes next.
  const rb = knownRollback(state, r.desktop);
  if (rb) return { ...entry, state: 'rolled-back', rolledBack: rollbackJson(rb), message: rollbackSentence(rb) };
  const lease = leaseStatus(state, r);
  entry.lease = lease;
  const owner = DiskLock.owner(state.home, r.desktop);
  entry.servedBy = owner?.purpose === 'serve' ? owner.pid : null;
  // A VM run on the raw file (or any other process writing it): a check-in waits for it.
  const writers = diskWriters(r.diskPath, { exclude: owner && owner.pid > 0 ? [owner.pid] : [] });
  entry.openForWriting = writers;
  if (writers.length > 0) entry.openForWritingText = describeWriters(r.diskPath, writers);
  const opened = openJournal(state, r, true);
  if (opened.journal) {
    const j = opened.journal;
    let local = 0;
    for (let i = 0; i < m.count; i++) if (j.isPresent(i) || j.pages.get(i) === (1 << Math.ceil(m.lengthOf(i) / 4096)) - 1) local += m.lengthOf(i);
    entry.localBytes = local;
    entry.readyToTravel = local === m.size;
    entry.dirtyMap = opened.trust;
    entry.blocksWritten = j.dirtyCount;
    entry.bytesWritten = j.dirtyBlocks().reduce((n, i) => n + m.lengthOf(i), 0);
    await j.close();
    if (r.state === 'streaming') {
      const p = readProgress(state, r.desktop);
      const rate = p && owner?.purpose === 'serve' ? p.rateBytesPerSec : 0;
      entry.rateBytesPerSec = rate;
      entry.etaSeconds = rate > 0 ? Math.round((m.size - local) / rate) : null;
    }
  } else {
    entry.localBytes = r.state === 'active' ? m.size : 0;
    entry.readyToTravel = r.state === 'active';
    entry.dirtyMap = { trusted: false, reason: opened.reason, recovered: false };
  }
  // Without a usable map, and with nobody writing, a full scan gives the exact change.
  if (scan && r.state === 'active' && !(entry.dirtyMap as { trusted: boolean }).trusted && !owner && !locked) {
    const s = await scanChanges(state, r.desktop, quiet);
    Object.assign(entry, { blocksChanged: s.changed.length, bytesChanged: s.bytesChanged });
  }
  return entry;
}

async function streamedPersonas(state: LocalState, desktop: string | undefined): Promise<StreamedPersonaStatus[]> {
  const out = [];
  for (const p of state.personas()) {
    if ((desktop && p.desktop !== desktop) || !isStreamed(p.dir)) continue;
    out.push({ desktop: p.desktop, dir: p.dir, version: p.version, mountedAt: mountRecord(p.dir)?.at ?? null, ...(await streamProgress(state, p.desktop)) });
  }
  return out;
}

function readProgress(state: LocalState, desktop: string): { rateBytesPerSec: number } | null {
  try {
    return JSON.parse(readFileSync(path.join(state.home, 'run', `${desktop}.progress.json`), 'utf8')) as { rateBytesPerSec: number };
  } catch {
    return null;
  }
}

function rollbackJson(rb: LocalRollback): Record<string, unknown> {
  return { by: rb.by, at: rb.at, keepLocal: rb.keepLocal, done: rb.doneAt !== null, keptAt: rb.keptAt, removed: rb.doneAt !== null && rb.keptAt === null };
}

