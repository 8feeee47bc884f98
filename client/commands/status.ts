// carryon status [NAME]: what is checked out on this laptop, how much of a streamed disk or persona is local,
// and what changed since check-out (from the dirty map when it can be trusted, else by a full scan);
// for a checked-in copy, whether it was written outside carryon after its check-in.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { decodeManifest, defaultHoleMode, fmtDuration, parseName, sectorCipherImplementation } from '../../src/index.js';
import { scanChanges } from '../checkin-engine.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { DiskLock } from '../disk-lock.js';
import { leaseStatus, type LeaseStatus } from '../lease.js';
import { openJournal, outsideChanges } from '../disk-session.js';
import { describeWriters, diskWriters } from '../disk-users.js';
import { fmtBytes } from '../progress.js';
import { knownRollback, rollbackSentence } from '../rollback.js';
import type { LocalCheckout, LocalRollback, LocalState } from '../state.js';
import { isStreamed, mountRecord, streamProgress, type StreamProgress } from '../persona-stream.js';

export function registerStatus(program: Command): void {
  withCommonOptions(program.command('status [desktop]').description('show checkouts on this laptop: download progress, changes since check-out')).action(async (desktop: string | undefined, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, async ({ state }) => {
      const rows = desktop ? [state.checkout(parseName(desktop, 'desktop'))].filter((r) => r !== null) : state.checkouts();
      const desktops: Array<Record<string, unknown>> = [];
      for (const r of rows) desktops.push(await describe(state, r, opts.json === true));
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
    }, (r) => {
      if (r.desktops.length === 0 && r.streamedPersonas.length === 0) return r.note ?? `nothing checked out on this laptop (${r.home})`;
      return [...r.desktops.map(human), ...r.streamedPersonas.map(humanStream)].join('\n');
    });
  });
}

async function describe(state: LocalState, r: LocalCheckout, quiet: boolean): Promise<Record<string, unknown>> {
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
  if (r.state === 'active' && !(entry.dirtyMap as { trusted: boolean }).trusted && !owner && !locked) {
    const s = await scanChanges(state, r.desktop, quiet);
    Object.assign(entry, { blocksChanged: s.changed.length, bytesChanged: s.bytesChanged });
  }
  return entry;
}

async function streamedPersonas(state: LocalState, desktop: string | undefined): Promise<Array<{ desktop: string; dir: string; version: number; mountedAt: string | null } & StreamProgress>> {
  const out = [];
  for (const p of state.personas()) {
    if ((desktop && p.desktop !== desktop) || !isStreamed(p.dir)) continue;
    out.push({ desktop: p.desktop, dir: p.dir, version: p.version, mountedAt: mountRecord(p.dir)?.at ?? null, ...(await streamProgress(state, p.desktop)) });
  }
  return out;
}

function humanStream(p: { desktop: string; dir: string; version: number; mountedAt: string | null } & StreamProgress): string {
  const pct = p.bytes === 0 ? 100 : (100 * p.bytesLocal) / p.bytes;
  return `persona of ${p.desktop} version ${p.version}, streamed, in ${p.dir}${p.mountedAt ? `; shown at ${p.mountedAt}` : '; not mounted (`carryon persona mount ' + p.desktop + '`)'}\n` +
    (p.readyToTravel ? '  every file is local: ready to travel'
      : `  NOT ready to travel: ${fmtBytes(p.bytesLocal)} of ${fmtBytes(p.bytes)} local (${pct.toFixed(1)}%); files never opened need the server: \`carryon persona fetch ${p.desktop}\``);
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

function human(d: Record<string, unknown>): string {
  if (d.state === 'rolled-back') return `${d.desktop}: ROLLED BACK: ${d.message as string}`;
  const enc = d.encryption as { encrypted: boolean; locked: boolean } | undefined;
  const head = `${d.desktop} version ${d.version} at ${d.disk} (${fmtBytes(d.size as number)}${enc?.encrypted ? ', encrypted at rest' : ''})`;
  const lockedLine = enc?.locked ? '\n  encrypted and locked: `carryon unlock` (or give the passphrase) to use it' : '';
  if (d.state === 'downloading') return `${head}: check-out incomplete: run \`carryon checkout ${d.desktop}\` again to resume`;
  if (d.state === 'checked-in') {
    const line = `${head}: checked in (the file is a read-only copy of that version)`;
    const c = d.changedAfterCheckin as { reason: string; blocksChanged: number; bytesChanged: number; sizeChanged: boolean } | null | undefined;
    if (!c) return line + lockedLine;
    if (c.blocksChanged === 0 && !c.sizeChanged) return line; // touched, but every block still holds the version
    return `${line}\n  WARNING: ${c.reason}: ${c.blocksChanged} blocks (${fmtBytes(c.bytesChanged)})${c.sizeChanged ? ' and its size' : ''} differ from that version, and these writes are NOT on the server.\n` +
      `  \`carryon checkout ${d.desktop}\` updates the copy in place: while the desktop is still at version ${d.version} it keeps these writes and the next check-in sends them; ` +
      'if the desktop has moved on, the newer version\'s blocks replace them';
  }
  const lines = [`${head}: checked out since ${d.since}${d.servedBy ? `; served over NBD by pid ${d.servedBy}` : ''}`];
  if (d.openForWritingText) lines.push(`  in use: ${d.openForWritingText} (a check-in waits until it is closed)`);
  const lease = d.lease as LeaseStatus;
  if (lease.warning) lines.push(`  WARNING: ${lease.warning}`);
  else if (lease.expiresAt) lines.push(`  offline lease until ${lease.expiresAt} (${fmtDuration(lease.remainingMs! / 1000)} left)`);
  const size = d.size as number;
  const local = d.localBytes as number;
  if (d.readyToTravel) lines.push('  every block is local: ready to travel');
  else {
    const eta = d.etaSeconds === null || d.etaSeconds === undefined ? (d.servedBy ? 'estimating' : 'paused: run `carryon serve` or `carryon checkout` to continue') : `about ${fmtDuration(d.etaSeconds as number)} left at ${fmtBytes(d.rateBytesPerSec as number)}/s`;
    lines.push(`  NOT ready to travel: ${fmtBytes(local)} of ${fmtBytes(size)} local (${((100 * local) / size).toFixed(1)}%), ${fmtBytes(size - local)} left; ${eta}`);
  }
  const map = d.dirtyMap as { trusted: boolean; reason: string | null; recovered: boolean };
  if (d.blocksChanged !== undefined) lines.push(`  ${d.blocksChanged} blocks changed (${fmtBytes(d.bytesChanged as number)}) since check-out (full scan: ${map.reason})`);
  else if (map.trusted) lines.push(`  ${d.blocksWritten} blocks written (${fmtBytes(d.bytesWritten as number)}) since check-out; the check-in reads only these${map.recovered && !d.servedBy ? ' (map recovered after an unclean stop)' : ''}`);
  else if (d.blocksChanged === undefined && enc?.locked) lines.push(`  the next check-in scans the whole disk: ${map.reason} (not counted while locked)`);
  else lines.push(`  the next check-in scans the whole disk: ${map.reason}`);
  return lines.join('\n') + lockedLine;
}
