// The laptop agent's work, one round at a time: for each checkout on this laptop, contact the server
// (the lease starts over; it learns the bytes not sent yet), send a restore point when the desktop's
// replication policy says one is due, then carry out what an admin asked:
// a forced check-in (a real check-in: nothing is lost; it waits while a VM has the disk open) or a
// rollback (the copy is removed, or kept aside when the desktop's policy says so; either way the cache
// blocks no other checkout on this laptop uses are wiped: dropped, then the cache compacted so their
// bytes leave the pack files, client/wipe.ts). An unreachable server is not an error: next round.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { asCarryonError, CarryonError, fmtBytes, type DeviceRequest } from '../src/index.js';
import { shredCopy } from './shred.js';
import { closePersonaVault, isPersonaVault, personaCipherDir } from './persona-vault.js';
import type { ApiClient } from './api-client.js';
import { checkinDesktop } from './checkin-engine.js';
import { DiskLock } from './disk-lock.js';
import { pendingChanges, removeJournal } from './disk-session.js';
import { describeWriters, diskWriters } from './disk-users.js';
import { leaseStatus } from './lease.js';
import { replicateDesktop } from './replicate.js';
import { noteRollback } from './rollback.js';
import type { LocalCheckout, LocalState, Login } from './state.js';
import { isTlsRefusal } from './tls.js';
import { wipeDesktopBlocks } from './wipe.js';

export type AgentLog = (event: string, fields: Record<string, unknown>, human: string) => void;

export interface RoundReport {
  contacted: number;
  offline: boolean;
  checkins: number;
  rollbacks: number;
  restorePoints: number;
}


export async function agentRound(state: LocalState, api: ApiClient, login: Login, log: AgentLog): Promise<RoundReport> {
  const report: RoundReport = { contacted: 0, offline: false, checkins: 0, rollbacks: 0, restorePoints: 0 };
  const held = state.checkouts().filter((c) => c.state === 'active' || c.state === 'streaming');
  // Lease warnings first: they matter most when the server cannot be reached.
  for (const local of held) {
    const lease = leaseStatus(state, local);
    if (lease.warning) log('lease-warning', { desktop: local.desktop, leaseExpiresAt: lease.expiresAt }, lease.warning);
  }
  for (const local of held) {
    const pending = pendingChanges(state, local);
    let reply;
    try {
      reply = await api.heartbeat(local.checkoutId, { ...pending, leaseCodeSeq: state.leaseSecret(local.desktop).seq });
    } catch (err) {
      const e = asCarryonError(err);
      // A certificate refused (a captive portal, an expired certificate) is offline too, until someone fixes it.
      if (e.code === 'SERVER_UNREACHABLE' || isTlsRefusal(e.code)) {
        report.offline = true;
        log('offline', { desktop: local.desktop, error: e.message, code: e.code }, `${local.desktop}: ${e.code === 'SERVER_UNREACHABLE' ? 'server unreachable' : e.code} (${e.message}); will try again`);
        break; // the same for every checkout this round
      }
      log('heartbeat-error', { desktop: local.desktop, error: e.toJSON() }, `${local.desktop}: ${e.code}: ${e.message}`);
      continue;
    }
    report.contacted++;
    state.syncClock(reply.serverTime);
    if (reply.rolledBack) noteRollback(state, local.desktop, local.checkoutId, reply.rollback);
    if (reply.leaseExpiresAt) state.setLease(local.desktop, reply.leaseExpiresAt);
    log('heartbeat', { desktop: local.desktop, leaseExpiresAt: reply.leaseExpiresAt, ...pending, requests: reply.requests.length },
      `${local.desktop}: lease until ${reply.leaseExpiresAt ?? '-'}; ${pending.pendingBlocks} blocks not sent yet`);
    // Scheduled replication: a restore point when the desktop's policy says one is due.
    const every = reply.replicateEveryMinutes;
    const due = every !== null && every !== undefined && !reply.rolledBack && reply.requests.length === 0 &&
      (!reply.lastRestorePointAt || Date.now() - Date.parse(reply.lastRestorePointAt) >= every * 60_000);
    if (due) {
      try {
        const r = await replicateDesktop(state, api, local.desktop, true);
        report.restorePoints++;
        log('restore-point', { desktop: local.desktop, restorePoint: r.restorePoint, blocksChanged: r.blocksChanged, bytesSent: r.bytesSent, via: r.via, pauseMs: r.pauseMs },
          `${local.desktop}: restore point #${r.restorePoint} sent (${r.blocksChanged} blocks changed since check-out, ${r.bytesSent} bytes)`);
      } catch (err) {
        const e = asCarryonError(err);
        log('replicate-error', { desktop: local.desktop, error: e.toJSON() }, `${local.desktop}: replication failed: ${e.code}: ${e.message}`);
      }
    }
    for (const req of reply.requests) {
      if (req.kind === 'rollback') {
        if (await rollbackLocal(state, api, local, req, log)) report.rollbacks++;
      } else if (req.kind === 'checkin' && !reply.rolledBack) {
        if (await forcedCheckin(state, api, login, local, req, log)) report.checkins++;
      }
    }
  }
  return report;
}

async function tell(api: ApiClient, local: LocalCheckout, req: DeviceRequest, state: 'in-progress' | 'done' | 'failed', detail: Record<string, unknown>, log: AgentLog): Promise<void> {
  try {
    await api.updateRequest(local.checkoutId, req.id, state, detail);
  } catch (err) {
    log('report-error', { desktop: local.desktop, request: req.id, error: asCarryonError(err).toJSON() }, `${local.desktop}: could not report request #${req.id}: ${asCarryonError(err).message}`);
  }
}

/**
 * A VM still has the disk: say so to the admin and wait for the next round. `writers`: also wait while
 * any other process has the disk file open for writing (a VM run on the raw file), not only carryon serve.
 */
async function busy(home: string, api: ApiClient, local: LocalCheckout, req: DeviceRequest, log: AgentLog, writers = false): Promise<boolean> {
  const owner = DiskLock.owner(home, local.desktop);
  let waiting: string;
  let fields: Record<string, unknown>;
  if (owner) {
    waiting = `the disk is in use by carryon ${owner.purpose} (pid ${owner.pid}): it runs when the VM is shut down`;
    fields = { owner };
  } else {
    const users = writers ? diskWriters(local.diskPath) : [];
    if (users.length === 0) return false;
    waiting = `${describeWriters(local.diskPath, users)}: it runs once that is closed (the VM shut down)`;
    fields = { writers: users };
  }
  log('waiting', { desktop: local.desktop, request: req.id, kind: req.kind, ...fields, waiting }, `${local.desktop}: ${req.kind} requested by an admin; waiting: ${waiting}`);
  await tell(api, local, req, 'in-progress', { waiting }, log);
  return true;
}

async function forcedCheckin(state: LocalState, api: ApiClient, login: Login, local: LocalCheckout, req: DeviceRequest, log: AgentLog): Promise<boolean> {
  if (await busy(state.home, api, local, req, log, true)) return false;
  await tell(api, local, req, 'in-progress', { startedAt: new Date().toISOString() }, log);
  log('checkin', { desktop: local.desktop, request: req.id }, `${local.desktop}: checking in, as an admin asked (#${req.id})`);
  try {
    const r = await checkinDesktop(state, api, login, local.desktop, { quiet: true });
    await tell(api, local, req, 'done', { version: r.version, bytesSent: r.bytesSent, scanMode: r.scanMode }, log);
    log('checkin-done', { desktop: local.desktop, request: req.id, version: r.version, bytesSent: r.bytesSent }, `${local.desktop}: checked in as version ${r.version}`);
    return true;
  } catch (err) {
    const e = asCarryonError(err);
    // A dropped connection or a VM that grabbed the disk: try again next round. Anything else: the admin must look.
    const retry = e.code === 'SERVER_UNREACHABLE' || isTlsRefusal(e.code) || e.code === 'DISK_IN_USE' || e.code === 'DISK_CHANGED';
    await tell(api, local, req, retry ? 'in-progress' : 'failed', { error: e.toJSON() }, log);
    log('checkin-error', { desktop: local.desktop, request: req.id, error: e.toJSON(), retry }, `${local.desktop}: forced check-in ${retry ? 'will be retried' : 'failed'}: ${e.code}: ${e.message}`);
    return false;
  }
}

async function rollbackLocal(state: LocalState, api: ApiClient, local: LocalCheckout, req: DeviceRequest, log: AgentLog): Promise<boolean> {
  // Not under a running VM either (one on the raw file included): the user copies out what they need first.
  if (await busy(state.home, api, local, req, log, true)) return false;
  const lock = DiskLock.acquire(state.home, local.desktop, 'rollback');
  try {
    await tell(api, local, req, 'in-progress', {}, log);
    const keep = (req.detail as { keepLocal?: boolean } | null)?.keepLocal === true;
    const persona = state.persona(local.desktop);
    let keptAt: string | null = null;
    // An encrypted persona is unmounted first: its vault is kept aside or destroyed below.
    const vaulted = persona?.withDisk === true && isPersonaVault(state, local.desktop);
    if (vaulted) await closePersonaVault(state, persona!.dir, true);
    if (keep) {
      keptAt = path.join(state.home, 'kept', `${local.desktop}-${new Date().toISOString().replace(/[:.]/g, '-')}`);
      await fs.mkdir(keptAt, { recursive: true });
      await moveIfThere(local.diskPath, path.join(keptAt, path.basename(local.diskPath)));
      // Kept encrypted: the ciphertext folder, which the copy's key (kept too) opens with gocryptfs.
      if (vaulted) await moveIfThere(personaCipherDir(state, local.desktop), path.join(keptAt, 'persona.enc'));
      else if (persona?.withDisk) await moveIfThere(persona.dir, path.join(keptAt, 'persona'));
    }
    await fs.rm(local.diskPath, { force: true });
    await fs.rm(`${local.diskPath}.partial`, { force: true });
    if (persona?.withDisk) {
      await fs.rm(persona.dir, { recursive: true, force: true });
      state.removePersona(local.desktop);
    }
    removeJournal(state, local.desktop);
    await fs.rm(path.join(state.home, 'run', `${local.desktop}.progress.json`), { force: true });
    // Cache blocks of this copy that no other checkout here needs: out of the index, then out of the packs.
    const wipe = await wipeDesktopBlocks(state, local.desktop, persona?.withDisk && !state.keys.isEncrypted(local.desktop) ? persona.snapshot : null);
    const { removedBlocks, freedBytes } = wipe;
    // An encrypted copy: its key goes at once (unless the copy is kept aside, which still needs it) and
    // with it the copy's own sealed cache.
    const shred = keptAt ? { shredded: false, freedBytes: 0 } : await shredCopy(state, local.desktop);
    state.finishRollback(local.desktop, local.checkoutId, keptAt);
    state.removeCheckout(local.desktop);
    await tell(api, local, req, 'done', { keptAt, removedBlocks, freedBytes: freedBytes + shred.freedBytes, keyShredded: shred.shredded }, log);
    log('rollback-done', { desktop: local.desktop, request: req.id, keptAt, removedBlocks, freedBytes: freedBytes + shred.freedBytes, packsBusy: wipe.packsBusy, keyShredded: shred.shredded },
      `${local.desktop}: rolled back by an admin: local copy ${keptAt ? `kept aside in ${keptAt}` : 'removed'}, ${removedBlocks} cache blocks removed, ${fmtBytes(freedBytes + shred.freedBytes)} freed` +
      (shred.shredded ? '; its encryption key destroyed (crypto-shredding)' : '') +
      (wipe.packsBusy > 0 ? ` (${wipe.packsBusy} cache packs in use by another carryon process are compacted later)` : ''));
    return true;
  } catch (err) {
    const e = err instanceof CarryonError ? err : asCarryonError(err);
    await tell(api, local, req, 'failed', { error: e.toJSON() }, log);
    log('rollback-error', { desktop: local.desktop, request: req.id, error: e.toJSON() }, `${local.desktop}: rollback failed: ${e.message}`);
    return false;
  } finally {
    lock.release();
  }
}

async function moveIfThere(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
