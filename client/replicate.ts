// Replication while checked out: the blocks changed since check-out go to the server as a restore
// point, and the checkout goes on (the dirty map is not reset: the server dedupes what it already has,
// so each restore point sends only what is new since the last). With the disk free, the blocks are
// read straight from it; while `carryon serve` runs, serve takes a point-in-time snapshot into the
// laptop cache (its control socket), so the restore point is what the VM saw at one instant.
import net from 'node:net';
import path from 'node:path';
import { CarryonError, decodeManifest, decodePersona, encodeManifest, personaId, getBlock, type BlockId, type DiskManifest, type TarEntry } from '../src/index.js';
import { personaPushParts, scanPersona, uploadPersona } from './persona-engine.js';
import { personaFolder } from './persona-vault.js';
import type { ApiClient } from './api-client.js';
import { ServerBlockSource } from './block-source.js';
import { scanChanges, uploadChanges } from './checkin-engine.js';
import { DiskLock } from './disk-lock.js';
import { requireCheckedOut } from './disk-session.js';
import type { LocalState } from './state.js';

export interface ReplicateResult {
  desktop: string;
  restorePoint: number;
  createdAt: string;
  /** The persona (profile and registry) went with it. */
  withPersona: boolean;
  blocksChanged: number;
  blocksUploaded: number;
  bytesSent: number;
  /** How the blocks were read: from the disk file, or from a snapshot taken by `carryon serve`. */
  via: 'disk' | 'serve-snapshot';
  /** How long the VM's I/O waited for the snapshot (serve only). */
  pauseMs: number | null;
  seconds: number;
}

export async function replicateDesktop(state: LocalState, api: ApiClient, name: string, quiet: boolean): Promise<ReplicateResult> {
  const t0 = Date.now();
  const local = requireCheckedOut(state, name);
  const base = decodeManifest(local.manifest);
  const sentBefore = api.bytesSent;
  const owner = DiskLock.owner(state.home, name);
  let next: DiskManifest;
  let changed: number[];
  let up;
  let pauseMs: number | null = null;
  if (owner?.purpose === 'serve') {
    const snap = await askServe(path.join(state.home, 'run', `${name}.ctl`));
    next = decodeManifest(Buffer.from(snap.manifest, 'base64'));
    changed = snap.changed;
    pauseMs = snap.pauseMs;
    up = await uploadChanges(state, api, local, base, next, changed, `replicate ${name}`, quiet, (i: number, id: BlockId) => getBlock(state.cacheOf(name), id, base.lengthOf(i)));
  } else {
    const lock = DiskLock.acquire(state.home, name, 'replicate');
    try {
      const scan = await scanChanges(state, name, quiet, new ServerBlockSource(state.cacheOf(name), () => api, local.checkoutId, base.blockSize));
      next = scan.manifest;
      changed = scan.changed;
      up = await uploadChanges(state, api, state.checkout(name)!, base, next, changed, `replicate ${name}`, quiet);
    } finally {
      lock.release();
    }
  }
  // The persona goes with it: its chunks first, then its snapshot (as a delta from the version held).
  let personaParts: TarEntry[] | undefined;
  const held = state.persona(name);
  if (held?.withDisk) {
    const dir = await personaFolder(state, held);
    const pbase = decodePersona(held.snapshot);
    const pbaseId = personaId(held.snapshot);
    const ours = await scanPersona(state, name, dir, pbase, pbaseId);
    await uploadPersona(state, api, name, held.version, pbase, ours.snapshot, dir);
    personaParts = personaPushParts(pbase, pbaseId, ours, { baseVersion: held.version, desktop: name, deviceName: state.login().deviceName, editedAt: ours.editedAt });
  }
  const rp = await api.restorePoint(local.checkoutId, encodeManifest(next), personaParts);
  return { desktop: name, restorePoint: rp.id, createdAt: rp.createdAt, withPersona: rp.withPersona, blocksChanged: changed.length, blocksUploaded: up.blocksUploaded, bytesSent: api.bytesSent - sentBefore,
    via: owner?.purpose === 'serve' ? 'serve-snapshot' : 'disk', pauseMs, seconds: (Date.now() - t0) / 1000 };
}

function askServe(ctl: string): Promise<{ manifest: string; changed: number[]; pauseMs: number }> {
  return new Promise((resolve, reject) => {
    const c = net.connect(ctl, () => c.write(`${JSON.stringify({ op: 'snapshot' })}\n`));
    let buf = '';
    c.on('data', (d) => (buf += d));
    c.on('error', (err) => reject(new CarryonError('DISK_IN_USE', `carryon serve holds the disk but its control socket did not answer: ${err.message}`, { ctl }, err)));
    c.on('end', () => {
      try {
        const r = JSON.parse(buf) as { manifest?: string; changed?: number[]; pauseMs?: number; error?: { code: string; message: string } };
        if (r.error) return reject(new CarryonError(r.error.code as never, r.error.message));
        resolve(r as { manifest: string; changed: number[]; pauseMs: number });
      } catch {
        reject(new CarryonError('INTERNAL', 'carryon serve sent an unreadable snapshot reply'));
      }
    });
  });
}
