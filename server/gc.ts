// Garbage collection of the block store: blocks no live version, image, restore point or persona names
// (deleted desktops, restore points and image versions, failed uploads) are removed, while check-ins go
// on, on any number of instances. Owns: the collector (mark, condemn, sweep, report) and the ingest
// leases uploads hold. Must not know: HTTP. The design and its proof are in docs/storage.md, "Garbage
// collection"; in short:
//
// 1. Mark: every block id named by a live manifest (desktop_versions, image_versions, restore_points)
//    or a live persona snapshot (persona_versions, restore_points).
// 2. Condemn: delete the index rows (and user grants) of unmarked blocks created and last seen before
//    now - grace, in small transactions whose WHERE re-checks created_at and seen_at, each first marking
//    what versions created since the collection began (less a margin) name. A client is only
//    ever told it may skip sending a block through a live manifest (marked) or through its own blocks,
//    and that answer sets seen_at (BlockScope.split, BlockIngest): such a block is spared. A check-in
//    re-reads, inside its commit transaction, that every block it names outside its base manifests still
//    has its row (CheckoutService.commit): serializable transactions put it wholly before or after a
//    condemnation, so a version never names a condemned block.
// 3. Sweep: delete the bytes of condemned blocks, and of stored blocks that have no row at all (an upload
//    that stopped between storing and indexing), only while no upload is in progress: uploads hold a
//    lease (ingest_leases) from their first block to their last index row, the sweep starts only when no
//    lease is live (expired ones are dropped), and no lease starts while it runs (gc_state.phase =
//    'sweep'; an upload waits). A block whose row came back meanwhile is kept. An upload whose lease
//    was dropped (it stalled past it) fails at its next index commit, which checks the lease: it stored
//    nothing anyone names.
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { CarryonError, decodeManifest, decodePersona, type BlockId, type BlockStore, type Sql } from '../src/index.js';
import type { Actor } from './audit.js';
import { appendAudit } from './audit.js';
import { Meta } from './meta.js';
import { expiredVersions, expireVersions, type ExpiredVersion } from './image-retention.js';

/** How long an ingest lease lasts without renewal; renewed every third of it while the upload runs. */
export const LEASE_MS = 120_000;
/** How long an upload waits for a sweep to finish before it gives up with SERVER_BUSY. */
const SWEEP_WAIT_MS = 120_000;
/** How long the collector holds gc_state without renewing it (a dead collector's hold expires). */
const GC_HOLD_MS = 10 * 60_000;
/**
 * Versions created this long before a collection started are read again inside each condemnation: covers a
 * commit transaction still open when the mark read its lists, and clocks of instances that differ by less.
 */
const RECENT_MARGIN_MS = 10 * 60_000;
/** Default grace: a block younger than this, or seen more recently, is never collected. */
export const DEFAULT_GRACE_MS = 6 * 3600_000;

const iso = (ms: number): string => new Date(ms).toISOString();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Let the server's requests run between batches: SQLite's queries resolve without a turn of the event loop. */
const breathe = (): Promise<void> => new Promise((r) => setImmediate(r));

export interface IngestLease {
  id: string;
  release(): Promise<void>;
}

/** Leases uploads take so that a sweep never runs under them. */
export class IngestLeases {
  constructor(private readonly sql: Sql, private readonly holder = `${os.hostname()}:${process.pid}`) {}

  async acquire(): Promise<IngestLease> {
    const id = randomUUID();
    const until = Date.now() + SWEEP_WAIT_MS;
    for (;;) {
      const got = await this.sql.transaction(async () => {
        const gc = await this.sql.get<{ phase: string | null; expires_at: string | null }>('SELECT phase, expires_at FROM gc_state WHERE id = 1');
        if (gc?.phase === 'sweep' && gc.expires_at !== null && Date.parse(gc.expires_at) > Date.now()) return false;
        const t = Date.now();
        await this.sql.run('INSERT INTO ingest_leases (id, holder, started_at, expires_at) VALUES (?, ?, ?, ?)', [id, this.holder, iso(t), iso(t + LEASE_MS)]);
        return true;
      });
      if (got) break;
      if (Date.now() > until) throw new CarryonError('SERVER_BUSY', 'the server is deleting unreferenced blocks (garbage collection) and took longer than expected; nothing was sent or lost: run the command again in a minute');
      await sleep(250);
    }
    const timer = setInterval(() => {
      void this.sql.run('UPDATE ingest_leases SET expires_at = ? WHERE id = ?', [iso(Date.now() + LEASE_MS), id]).catch(() => undefined);
    }, LEASE_MS / 3);
    timer.unref();
    return {
      id,
      release: async () => {
        clearInterval(timer);
        await this.sql.run('DELETE FROM ingest_leases WHERE id = ?', [id]).catch(() => undefined);
      },
    };
  }
}

export interface GcOptions {
  /** Blocks created or seen more recently than this are spared. */
  graceMs?: number;
  /** Report what would be freed; change nothing. */
  dryRun?: boolean;
  /** How long the sweep waits for uploads in progress to finish before it is left to the next run. */
  sweepWaitMs?: number;
}

export interface GcReport {
  dryRun: boolean;
  startedAt: string;
  finishedAt: string;
  graceSeconds: number;
  /** Live manifests and persona snapshots read, and the distinct blocks they name. */
  liveManifests: number;
  livePersonaSnapshots: number;
  referencedBlocks: number;
  /** Index rows removed now (or that would be, in a dry run): unreferenced, older than the grace. */
  condemned: { blocks: number; bytes: number };
  /** Unreferenced blocks spared because they are younger than the grace, or were seen within it. */
  spared: { blocks: number; bytes: number };
  /** Manifests and persona snapshots no longer named by anything (metadata rows), removed. */
  manifestsRemoved: number;
  personaSnapshotsRemoved: number;
  /** Bytes deleted from the store: condemned blocks (this run's and earlier ones') and orphans (stored, never indexed). */
  swept: { blocks: number; bytes: number; orphans: number; orphanBytes: number };
  /** The sweep did not run: uploads were in progress for all of sweepWaitMs (it runs at the next GC). */
  sweepPostponed: boolean;
  /** What the store's own compaction reported (pack stores: bytes of packs rewritten or deleted). */
  compaction: unknown;
  storedBytesBefore: number;
  storedBytesAfter: number;
  /** Image versions past their image's retention removed first (dry run: that would be), so their blocks can go. */
  imageVersionsExpired: Array<{ image: string; version: number }>;
}

type Compactable = BlockStore & { compact?: (opts?: unknown) => Promise<unknown> };

export class GarbageCollector {
  private readonly holder = `${os.hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;

  private readonly meta: Meta;

  constructor(private readonly sql: Sql, private readonly store: Compactable) {
    this.meta = new Meta(sql);
  }

  /** One collection. Refused (SERVER_BUSY) while another collector, on any instance, holds gc_state. */
  async run(actor: Actor, opts: GcOptions = {}): Promise<GcReport> {
    const grace = opts.graceMs ?? DEFAULT_GRACE_MS;
    const dryRun = opts.dryRun === true;
    const started = Date.now();
    const storedBefore = await this.storedBytes();
    if (!dryRun) await this.hold();
    try {
      const cutoff = iso(started - grace);
      // Image versions past their retention go first (a dry run leaves them and marks as if they were gone).
      const expired: ExpiredVersion[] = dryRun ? await expiredVersions(this.sql) : await expireVersions(this.sql, actor);
      const { referenced, manifests, snapshots } = await this.mark(dryRun ? new Set(expired.map((v) => `${v.imageId}:${v.version}`)) : new Set());
      // Unreferenced rows, split by the grace rule.
      const condemn: Array<{ id: BlockId; size: number }> = [];
      const spared = { blocks: 0, bytes: 0 };
      for (const r of await this.sql.all<{ id: string; stored_size: number; created_at: string; seen_at: string | null }>('SELECT id, stored_size, created_at, seen_at FROM blocks')) {
        if (referenced.has(r.id)) continue;
        if (r.created_at < cutoff && (r.seen_at === null || r.seen_at < cutoff)) condemn.push({ id: r.id, size: r.stored_size });
        else {
          spared.blocks++;
          spared.bytes += r.stored_size;
        }
      }
      const report: GcReport = {
        dryRun, startedAt: iso(started), finishedAt: '', graceSeconds: Math.round(grace / 1000), liveManifests: manifests.size, livePersonaSnapshots: snapshots.size,
        referencedBlocks: referenced.size, condemned: { blocks: 0, bytes: 0 }, spared, manifestsRemoved: 0, personaSnapshotsRemoved: 0,
        swept: { blocks: 0, bytes: 0, orphans: 0, orphanBytes: 0 }, sweepPostponed: false, compaction: null, storedBytesBefore: storedBefore, storedBytesAfter: storedBefore,
        imageVersionsExpired: expired.map((v) => ({ image: v.image, version: v.version })),
      };
      if (dryRun) {
        report.condemned = { blocks: condemn.length, bytes: condemn.reduce((n, c) => n + c.size, 0) };
        const dead = await this.deadMetadata(manifests, snapshots, cutoff, true);
        report.manifestsRemoved = dead.manifests;
        report.personaSnapshotsRemoved = dead.snapshots;
        report.finishedAt = iso(Date.now());
        return report;
      }
      // Condemn in small transactions, each re-checking the grace rule against what is committed now.
      const at = iso(Date.now());
      for (let i = 0; i < condemn.length; i += 200) {
        const part = condemn.slice(i, i + 200).map((c) => c.id);
        const gone = await this.sql.transaction(async () => {
          // Versions committed since the mark read its lists name blocks the mark did not see: mark them
          // too, in this transaction (a commit racing it then conflicts with it, or is seen by it).
          await this.markRecent(referenced, manifests, snapshots, iso(started - RECENT_MARGIN_MS));
          const keep = part.filter((id) => !referenced.has(id));
          if (keep.length === 0) return [];
          const m1 = keep.map(() => '?').join(', ');
          const rows = await this.sql.all<{ id: string; stored_size: number }>(
            `DELETE FROM blocks WHERE id IN (${m1}) AND created_at < ? AND (seen_at IS NULL OR seen_at < ?) RETURNING id, stored_size`, [...keep, cutoff, cutoff]);
          if (rows.length === 0) return rows;
          const ids = rows.map((r) => r.id);
          const m2 = ids.map(() => '?').join(', ');
          await this.sql.run(`DELETE FROM user_blocks WHERE block_id IN (${m2})`, ids);
          for (const r of rows) await this.sql.run('INSERT INTO gc_condemned (block_id, stored_size, condemned_at) VALUES (?, ?, ?) ON CONFLICT (block_id) DO NOTHING', [r.id, r.stored_size, at]);
          return rows;
        });
        report.condemned.blocks += gone.length;
        report.condemned.bytes += gone.reduce((n, r) => n + r.stored_size, 0);
        await this.renew();
        await breathe();
      }
      const dead = await this.deadMetadata(manifests, snapshots, cutoff, false);
      report.manifestsRemoved = dead.manifests;
      report.personaSnapshotsRemoved = dead.snapshots;
      // Orphan candidates: stored ids without a row, listed before the sweep (an id stored after the
      // listing is not a candidate; one listed is deleted only if it still has no row under the sweep).
      const listed: BlockId[] = [];
      for await (const id of this.store.list()) listed.push(id);
      const orphanCandidates = await this.meta.unindexed(listed);
      if (await this.startSweep(opts.sweepWaitMs ?? 60_000)) {
        try {
          const handled = new Set<BlockId>();
          for (const c of await this.sql.all<{ block_id: string; stored_size: number }>('SELECT block_id, stored_size FROM gc_condemned')) {
            handled.add(c.block_id);
            // A row back since (the block was uploaded again): its bytes stay.
            if ((await this.meta.unindexed([c.block_id])).length === 1) {
              await this.store.delete(c.block_id);
              report.swept.blocks++;
              report.swept.bytes += c.stored_size;
            }
            await this.sql.run('DELETE FROM gc_condemned WHERE block_id = ?', [c.block_id]);
            if (handled.size % 100 === 0) {
              await this.renew();
              await breathe();
            }
          }
          for (const id of await this.meta.unindexed(orphanCandidates)) {
            if (handled.has(id)) continue; // condemned: deleted above
            const size = (await this.store.size(id)) ?? 0;
            await this.store.delete(id);
            report.swept.orphans++;
            report.swept.orphanBytes += size;
          }
          await this.store.sync();
          if (typeof this.store.compact === 'function') report.compaction = await this.store.compact();
        } finally {
          await this.endSweep();
        }
      } else {
        report.sweepPostponed = true;
      }
      report.storedBytesAfter = await this.storedBytes();
      report.finishedAt = iso(Date.now());
      await this.sql.transaction(async () => {
        await this.sql.run('INSERT INTO gc_runs (started_at, finished_at, by_whom, dry_run, report) VALUES (?, ?, ?, 0, ?)', [report.startedAt, report.finishedAt, actor.name, JSON.stringify(report)]);
        await appendAudit(this.sql, actor, 'gc.run', null, { condemned: report.condemned, swept: report.swept, sweepPostponed: report.sweepPostponed });
      });
      return report;
    } finally {
      if (!dryRun) await this.release();
    }
  }

  /** Add what versions, image versions, restore points and persona versions created since `since` name. */
  private async markRecent(referenced: Set<BlockId>, manifests: Set<string>, snapshots: Set<string>, since: string): Promise<void> {
    const ms = await this.sql.all<{ id: string }>(
      'SELECT manifest_id AS id FROM desktop_versions WHERE created_at >= ? UNION SELECT manifest_id FROM image_versions WHERE created_at >= ? UNION SELECT manifest_id FROM restore_points WHERE created_at >= ?',
      [since, since, since]);
    for (const { id } of ms) {
      if (manifests.has(id)) continue;
      manifests.add(id);
      const row = await this.sql.get<{ encoded: Buffer }>('SELECT encoded FROM manifests WHERE id = ?', [id]);
      if (row) for (const b of decodeManifest(row.encoded).uniqueIds()) referenced.add(b);
    }
    const ss = await this.sql.all<{ id: string }>(
      'SELECT snapshot_id AS id FROM persona_versions WHERE created_at >= ? UNION SELECT persona_snapshot_id FROM restore_points WHERE created_at >= ? AND persona_snapshot_id IS NOT NULL', [since, since]);
    for (const { id } of ss) {
      if (snapshots.has(id)) continue;
      snapshots.add(id);
      const row = await this.sql.get<{ encoded: Buffer }>('SELECT encoded FROM persona_snapshots WHERE id = ?', [id]);
      if (row) for (const f of decodePersona(row.encoded).files) for (const c of f.chunks) referenced.add(c);
    }
  }

  /** Every block id a live manifest or persona snapshot names. */
  private async mark(skipImageVersions: Set<string>): Promise<{ referenced: Set<BlockId>; manifests: Set<string>; snapshots: Set<string> }> {
    const manifests = new Set((await this.sql.all<{ id: string }>(
      'SELECT manifest_id AS id FROM desktop_versions UNION SELECT manifest_id FROM restore_points')).map((r) => r.id));
    for (const r of await this.sql.all<{ image_id: number; version: number; manifest_id: string }>('SELECT image_id, version, manifest_id FROM image_versions')) {
      if (!skipImageVersions.has(`${r.image_id}:${r.version}`)) manifests.add(r.manifest_id);
    }
    const snapshots = new Set((await this.sql.all<{ id: string }>(
      'SELECT snapshot_id AS id FROM persona_versions UNION SELECT persona_snapshot_id FROM restore_points WHERE persona_snapshot_id IS NOT NULL')).map((r) => r.id));
    const referenced = new Set<BlockId>();
    for (const id of manifests) {
      await breathe();
      const row = await this.sql.get<{ encoded: Buffer }>('SELECT encoded FROM manifests WHERE id = ?', [id]);
      if (!row) continue;
      for (const b of decodeManifest(row.encoded).uniqueIds()) referenced.add(b);
    }
    for (const id of snapshots) {
      const row = await this.sql.get<{ encoded: Buffer }>('SELECT encoded FROM persona_snapshots WHERE id = ?', [id]);
      if (!row) continue;
      for (const f of decodePersona(row.encoded).files) for (const c of f.chunks) referenced.add(c);
    }
    return { referenced, manifests, snapshots };
  }

  /** Manifest and persona snapshot rows nothing names, older than the cutoff (a commit stores its manifest before naming it). */
  private async deadMetadata(manifests: Set<string>, snapshots: Set<string>, cutoff: string, dryRun: boolean): Promise<{ manifests: number; snapshots: number }> {
    let m = 0;
    let s = 0;
    for (const r of await this.sql.all<{ id: string }>('SELECT id FROM manifests WHERE created_at < ?', [cutoff])) {
      if (manifests.has(r.id)) continue;
      // Checkouts keep the id of what they committed (committed_manifest): a name, not a reference to keep.
      if (!dryRun) {
        const gone = await this.sql.transaction(async () => {
          const live = await this.sql.get('SELECT 1 AS x FROM desktop_versions WHERE manifest_id = ? UNION SELECT 1 FROM image_versions WHERE manifest_id = ? UNION SELECT 1 FROM restore_points WHERE manifest_id = ?', [r.id, r.id, r.id]);
          if (live) return 0;
          return (await this.sql.run('DELETE FROM manifests WHERE id = ?', [r.id])).changes;
        });
        m += gone;
      } else m++;
    }
    for (const r of await this.sql.all<{ id: string }>('SELECT id FROM persona_snapshots WHERE created_at < ?', [cutoff])) {
      if (snapshots.has(r.id)) continue;
      if (!dryRun) {
        const gone = await this.sql.transaction(async () => {
          const live = await this.sql.get('SELECT 1 AS x FROM persona_versions WHERE snapshot_id = ? UNION SELECT 1 FROM restore_points WHERE persona_snapshot_id = ?', [r.id, r.id]);
          if (live) return 0;
          return (await this.sql.run('DELETE FROM persona_snapshots WHERE id = ?', [r.id])).changes;
        });
        s += gone;
      } else s++;
    }
    return { manifests: m, snapshots: s };
  }

  private async storedBytes(): Promise<number> {
    return Number((await this.sql.get<{ n: number | null }>('SELECT SUM(stored_size) AS n FROM blocks'))?.n ?? 0);
  }

  private async hold(): Promise<void> {
    const t = Date.now();
    const r = await this.sql.run("UPDATE gc_state SET holder = ?, phase = 'mark', started_at = ?, expires_at = ? WHERE id = 1 AND (holder IS NULL OR expires_at < ?)", [this.holder, iso(t), iso(t + GC_HOLD_MS), iso(t)]);
    if (r.changes === 0) {
      const g = await this.sql.get<{ holder: string; started_at: string }>('SELECT holder, started_at FROM gc_state WHERE id = 1');
      throw new CarryonError('SERVER_BUSY', `another garbage collection is running (${g?.holder ?? '?'}, since ${g?.started_at ?? '?'}); run this one after it`, { holder: g?.holder ?? null });
    }
  }

  private async renew(): Promise<void> {
    await this.sql.run('UPDATE gc_state SET expires_at = ? WHERE id = 1 AND holder = ?', [iso(Date.now() + GC_HOLD_MS), this.holder]);
  }

  private async release(): Promise<void> {
    await this.sql.run('UPDATE gc_state SET holder = NULL, phase = NULL, started_at = NULL, expires_at = NULL WHERE id = 1 AND holder = ?', [this.holder]).catch(() => undefined);
  }

  /** Enter the sweep once no upload holds a live lease; false when uploads kept running for `waitMs`. */
  private async startSweep(waitMs: number): Promise<boolean> {
    const until = Date.now() + waitMs;
    for (;;) {
      const ok = await this.sql.transaction(async () => {
        const t = Date.now();
        await this.sql.run('DELETE FROM ingest_leases WHERE expires_at < ?', [iso(t)]);
        const n = (await this.sql.get<{ n: number }>('SELECT COUNT(*) AS n FROM ingest_leases'))!.n;
        if (n > 0) return false;
        const r = await this.sql.run("UPDATE gc_state SET phase = 'sweep', expires_at = ? WHERE id = 1 AND holder = ?", [iso(t + GC_HOLD_MS), this.holder]);
        if (r.changes === 0) throw new CarryonError('SERVER_BUSY', 'this garbage collection lost its hold on gc_state (it stalled past its expiry); nothing was swept');
        return true;
      });
      if (ok) return true;
      if (Date.now() > until) return false;
      await sleep(250);
    }
  }

  private async endSweep(): Promise<void> {
    await this.sql.run("UPDATE gc_state SET phase = 'mark' WHERE id = 1 AND holder = ?", [this.holder]);
  }
}
