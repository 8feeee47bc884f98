// PersonaService: the server's persona work, for the HTTP routes and the CLI alike: serving a version
// and its chunks (only to a device allowed to hold them), taking uploaded chunks and rdiff deltas,
// committing a laptop's snapshot as a new version merged three ways with what the server received
// meanwhile (a push on its own, or inside a check-in's transaction), an admin's restore, with audit
// rows. Chunks enter the store through BlockIngest (verified, then indexed). Must not know: HTTP.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import {
  applyDelta, applySnapshotDelta, canonicalForm, CarryonError, checkRegistryText, decodeBlock, decodeVerified, lookupValueLines, MAX_PERSONA_ENTRY_BYTES,
  MAX_PERSONA_UPLOAD_BYTES, mergePersona, parseChunkDelta, parsePersonaUploadEntryName, PERSONA_CHUNK_BYTES, sameValueLine, unpackEntries, verifiedBlockId, verifyPlain, type BlockId,
  type BlockStore, type PersonaCommitResult, type PersonaEntry, type PersonaPushInfo, type PersonaSnapshot, type TarEntry,
} from '../../src/index.js';
import type { Actor } from '../audit.js';
import { BlockIngest, BlockScope, readAhead } from '../blocks.js';
import type { EscrowService } from '../escrow.js';
import type { FleetMeta } from '../fleet-meta.js';
import type { IngestLeases } from '../gc.js';
import type { Meta, User } from '../meta.js';
import type { PersonaMeta, PersonaVersionRow } from '../persona-meta.js';
import { scopeCommitRegistries } from './registry-scope.js';

/** What the chunk routes need of a snapshot, derived once: snapshots are immutable, named by their hash. */
interface SnapshotIndex {
  chunks: ReadonlySet<BlockId>;
  /** File entries by content hash: the bases an rdiff delta may name. */
  fileByHash: ReadonlyMap<BlockId, PersonaEntry>;
}

/** Snapshot indexes kept: a check-out asks for the same version's chunks in hundreds of requests. */
const INDEX_CACHE = 8;
/** Verified plaintext chunks stored with one index lookup (32 MiB at most held). */
const INGEST_GROUP = 32;
/** An encoded chunk may not be much larger than its plaintext could compress to at worst (zstd's bound). */
const MAX_ENCODED_CHUNK_BYTES = PERSONA_CHUNK_BYTES + 64 * 1024;

export class PersonaService {
  /** Snapshot id -> its index, least recently used first. Decoding a 20k-file snapshot costs ~0.1 s. */
  private readonly indexes = new Map<BlockId, SnapshotIndex>();

  constructor(private readonly meta: Meta, private readonly personas: PersonaMeta, private readonly fleet: FleetMeta, private readonly escrow: EscrowService,
    private readonly store: BlockStore, private readonly tmpRoot: string, private readonly needSpace: () => void = () => undefined, private readonly leases: IngestLeases | null = null) {}

  /** A version of the user's persona (default: the newest). */
  async get(user: User, version?: number): Promise<{ version: number; snapshot: PersonaSnapshot; createdAt: string }> {
    const current = await this.personas.current(user.id);
    const v = version === undefined ? current : await this.personas.version(user.id, version);
    if (!v) throw new CarryonError('NOT_FOUND', `persona version ${version} does not exist`, { version });
    return { version: v.version, snapshot: await this.personas.snapshot(v.snapshotId), createdAt: v.createdAt };
  }

  /**
   * Chunks (of those given) the user must send: every chunk not in their own scope (chunks they sent, or
   * that their persona versions held), whether or not another user's persona holds it.
   */
  missing(user: User, ids: Iterable<BlockId>): Promise<BlockId[]> {
    return new BlockScope(this.meta, user.id).missing(ids);
  }

  /**
   * A version for a device to download. The registry and file list are persona data too: not to a
   * device whose copy must be encrypted and has not escrowed its key yet.
   */
  async forDevice(user: User, device: string | undefined, version?: number): Promise<{ version: number; snapshot: PersonaSnapshot; createdAt: string }> {
    await this.escrow.requireEscrowForDevice(user.id, device);
    return this.get(user, version);
  }

  /**
   * forDevice, as the stored canonical encoding (what GET /persona sends): not decoded and encoded again,
   * which for a 100,000-key registry held ~150 MB more.
   */
  async encodedForDevice(user: User, device: string | undefined, version?: number): Promise<{ version: number; encoded: Buffer }> {
    await this.escrow.requireEscrowForDevice(user.id, device);
    const current = await this.personas.current(user.id);
    const v = version === undefined ? current : await this.personas.version(user.id, version);
    if (!v) throw new CarryonError('NOT_FOUND', `persona version ${version} does not exist`, { version });
    return { version: v.version, encoded: await this.personas.encoded(v.snapshotId) };
  }

  /** A version's chunk set and files by hash, from the cache when this snapshot was indexed lately. */
  private async indexOf(user: User, version: number): Promise<SnapshotIndex> {
    const current = await this.personas.current(user.id); // makes the empty version 1 of a new user
    const row = current.version === version ? current : await this.personas.version(user.id, version);
    if (!row) throw new CarryonError('NOT_FOUND', `persona version ${version} does not exist`, { version });
    let ix = this.indexes.get(row.snapshotId);
    if (ix) {
      this.indexes.delete(row.snapshotId); // re-inserted: most recently used last
    } else {
      const files = (await this.personas.snapshot(row.snapshotId)).files.filter((f) => f.kind === 'file');
      ix = { chunks: new Set(files.flatMap((f) => f.chunks)), fileByHash: new Map(files.map((f) => [f.hash!, f])) };
      if (this.indexes.size >= INDEX_CACHE) this.indexes.delete(this.indexes.keys().next().value!);
    }
    this.indexes.set(row.snapshotId, ix);
    return ix;
  }

  /** The encoded chunks of `ids`, each of which must belong to the given version. */
  async chunks(user: User, device: string | undefined, version: number, ids: BlockId[]): Promise<AsyncGenerator<TarEntry>> {
    await this.escrow.requireEscrowForDevice(user.id, device);
    const allowed = (await this.indexOf(user, version)).chunks;
    for (const id of ids) if (!allowed.has(id)) throw new CarryonError('BLOCK_NOT_FOUND', `chunk ${id.slice(0, 12)}… is not part of persona version ${version}`, { id });
    return readAhead(this.store, ids, 4); // 1 MiB chunks: a few in flight keep the disk busy
  }

  /**
   * Take `b/<chunk>` entries (a chunk's plaintext), `z/<chunk>` entries (a chunk as one zstd frame, kept
   * as sent once it decodes to its id) and `r/<file>/<base>` entries (an rdiff delta that rebuilds file
   * `file` from file `base` of persona version `baseVersion`). Every chunk is verified by its id; a
   * rebuilt file must hash to `file`. What arrived before a failure stays stored.
   */
  async ingest(user: User, baseVersion: number, body: NodeJS.ReadableStream): Promise<{ chunks: number; files: number }> {
    this.needSpace();
    const { fileByHash: baseFiles, chunks: baseChunks } = await this.indexOf(user, baseVersion);
    const ingest = new BlockIngest(this.meta, this.store, user.id, this.leases);
    let chunks = 0;
    let files = 0;
    // The tar and every rebuilt file count against one budget: see MAX_PERSONA_UPLOAD_BYTES.
    let budget = MAX_PERSONA_UPLOAD_BYTES;
    // Verified chunks wait here to be stored with one index lookup per group.
    let group: Array<{ id: BlockId; plain: Buffer; encoded?: Buffer }> = [];
    let groupBytes = 0;
    const store = async (): Promise<void> => {
      const g = group;
      group = [];
      groupBytes = 0;
      if (g.length > 0) await ingest.addMany(g);
    };
    try {
      await unpackEntries(body, MAX_PERSONA_ENTRY_BYTES, async ({ name, data }) => {
        budget -= data.length + 512;
        const e = parsePersonaUploadEntryName(name);
        if (e.kind === 'chunk') {
          if (data.length > PERSONA_CHUNK_BYTES) throw new CarryonError('BLOCK_CORRUPT', `chunk ${e.id.slice(0, 12)}… is larger than ${PERSONA_CHUNK_BYTES} bytes`);
          verifyPlain(e.id, data); // BLOCK_CORRUPT when it is not; remembered, so the store does not hash it again
          group.push({ id: e.id, plain: data });
          groupBytes += data.length;
          chunks++;
          if (group.length >= INGEST_GROUP || groupBytes >= INGEST_GROUP * PERSONA_CHUNK_BYTES) await store();
          return;
        }
        if (e.kind === 'encoded') {
          // Bounded: a frame padded with skippable frames would otherwise be stored padding and all.
          if (data.length > MAX_ENCODED_CHUNK_BYTES) throw new CarryonError('BLOCK_CORRUPT', `encoded chunk ${e.id.slice(0, 12)}… is larger than ${MAX_ENCODED_CHUNK_BYTES} bytes`, { id: e.id });
          const plain = decodeVerified(e.id, data, PERSONA_CHUNK_BYTES);
          budget -= plain.length;
          group.push({ id: e.id, plain, encoded: data });
          groupBytes += plain.length + data.length;
          chunks++;
          if (group.length >= INGEST_GROUP || groupBytes >= INGEST_GROUP * PERSONA_CHUNK_BYTES) await store();
          return;
        }
        if (e.kind === 'chunk-delta') {
          const { bases, delta } = parseChunkDelta(data);
          // Staging the bases and rebuilding count against the request's budget like a file delta's.
          budget -= bases.length * PERSONA_CHUNK_BYTES + PERSONA_CHUNK_BYTES;
          if (budget < 0) throw new CarryonError('PAYLOAD_TOO_LARGE', `this persona upload rebuilds more than ${MAX_PERSONA_UPLOAD_BYTES} bytes: send it in smaller parts`, { max: MAX_PERSONA_UPLOAD_BYTES });
          for (const b of bases) if (!baseChunks.has(b)) throw new CarryonError('BLOCK_NOT_FOUND', `delta base chunk ${b.slice(0, 12)}… is not in persona version ${baseVersion}`, { id: b });
          // Bases decoded, not verified: the chunk they rebuild is checked against its id below.
          const base = Buffer.concat(await Promise.all(bases.map(async (b) => decodeBlock(await this.store.getEncoded(b), PERSONA_CHUNK_BYTES))));
          const plain = await applyDeltaInMemory(base, delta, PERSONA_CHUNK_BYTES);
          // verifyPlain remembers the check: the store does not hash the chunk again.
          try {
            verifyPlain(e.id, plain);
          } catch {
            throw new CarryonError('BLOCK_CORRUPT', `chunk rebuilt from a delta does not match its hash ${e.id.slice(0, 12)}…`, { id: e.id });
          }
          group.push({ id: e.id, plain });
          groupBytes += plain.length;
          chunks++;
          if (group.length >= INGEST_GROUP || groupBytes >= INGEST_GROUP * PERSONA_CHUNK_BYTES) await store();
          return;
        }
        await store();
        const from = baseFiles.get(e.base);
        if (!from) throw new CarryonError('BLOCK_NOT_FOUND', `delta base file ${e.base.slice(0, 12)}… is not in persona version ${baseVersion}`, { id: e.base });
        // Staging the base file costs as much as its size: it counts too.
        budget -= from.size;
        if (budget < 0) throw new CarryonError('PAYLOAD_TOO_LARGE', `this persona upload rebuilds more than ${MAX_PERSONA_UPLOAD_BYTES} bytes: send it in smaller parts`, { max: MAX_PERSONA_UPLOAD_BYTES });
        const r = await this.rebuild(from.chunks, data, e.file, ingest, budget);
        budget -= r.bytes;
        chunks += r.chunks;
        files++;
      }, { maxTotalBytes: MAX_PERSONA_UPLOAD_BYTES });
      await store();
    } finally {
      await ingest.flush();
    }
    return { chunks, files };
  }

  /** Apply an rdiff delta to a base file staged from its chunks; store the result's chunks. */
  private async rebuild(baseChunks: BlockId[], delta: Buffer, expect: BlockId, ingest: BlockIngest, maxBytes: number): Promise<{ chunks: number; bytes: number }> {
    const dir = mkdtempSync(path.join(this.tmpRoot, 'rebuild-'));
    try {
      const staged = path.join(dir, 'base');
      const fh = await fs.open(staged, 'w+');
      try {
        // Decoded, not verified: the rebuilt file must hash to `expect` (a damaged base fails there).
        for (const id of baseChunks) await fh.write(decodeBlock(await this.store.getEncoded(id), PERSONA_CHUNK_BYTES));
        const whole = createHash('sha256');
        let pending: Buffer = Buffer.alloc(0);
        let stored = 0;
        let bytes = 0;
        const put = async (chunk: Buffer): Promise<void> => {
          await ingest.add(verifiedBlockId(chunk), chunk); // a fresh copy: its one hash, remembered for the put gate
          stored++;
        };
        const out = new Writable({
          write(data: Buffer, _e, cb) {
            whole.update(data);
            bytes += data.length;
            pending = pending.length ? Buffer.concat([pending, data]) : data;
            (async () => {
              while (pending.length >= PERSONA_CHUNK_BYTES) {
                await put(Buffer.from(pending.subarray(0, PERSONA_CHUNK_BYTES)));
                pending = pending.subarray(PERSONA_CHUNK_BYTES);
              }
            })().then(() => cb(), cb);
          },
          final(cb) {
            (pending.length > 0 ? put(Buffer.from(pending)) : Promise.resolve()).then(() => cb(), cb);
          },
        });
        await applyDelta(fh, delta, out, { maxOutputBytes: maxBytes });
        if (whole.digest('hex') !== expect) throw new CarryonError('BLOCK_CORRUPT', `file rebuilt from a delta does not match its hash ${expect.slice(0, 12)}…`, { id: expect });
        return { chunks: stored, bytes };
      } finally {
        await fh.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /**
   * The laptop's persona for a restore point: rebuilt from its base version and the delta, every chunk
   * present, stored content-addressed. No version is made (the restore point keeps the id).
   */
  async snapshotFor(user: User, delta: unknown, baseVersion: number): Promise<BlockId> {
    const baseRow = await this.personas.version(user.id, baseVersion);
    if (!baseRow) throw new CarryonError('BAD_REQUEST', `persona base version ${baseVersion} does not exist`);
    const { snapshot } = applySnapshotDelta(await this.personas.snapshot(baseRow.snapshotId), delta, baseRow.snapshotId);
    const missing = await this.missing(user, new Set(snapshot.files.flatMap((f) => f.chunks)));
    if (missing.length > 0) throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} persona chunk(s) the snapshot names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
    return (await this.personas.putSnapshot(snapshot)).id;
  }

  /**
   * An admin puts the user's persona back to an earlier version: a new version with that version's
   * snapshot (history is never rewritten), audited through `audit` in the same transaction. Refused when
   * that version's own registry is not valid (a persona stored before the server checked registries).
   */
  async restore(user: User, version: number, actor: Actor): Promise<{ user: string; version: number; restoredFrom: number; changed: boolean }> {
    return this.meta.db.transaction(async () => {
      const from = await this.personas.version(user.id, version);
      if (!from) throw new CarryonError('NOT_FOUND', `user ${user.name} has no persona version ${version}`, { user: user.name, version });
      try {
        checkRegistryText((await this.personas.snapshot(from.snapshotId)).registry);
      } catch (err) {
        throw new CarryonError('BAD_REQUEST', `persona version ${version} of ${user.name} cannot be restored: ${(err as Error).message}; pick an earlier version (carryon-server persona history ${user.name})`, { user: user.name, version });
      }
      const current = await this.personas.current(user.id);
      if (from.snapshotId === current.snapshotId) return { user: user.name, version: current.version, restoredFrom: version, changed: false };
      const v = await this.personas.addVersion(user.id, from.snapshotId, { source: 'restore', deviceName: null, checkoutId: null, mergeReport: null, restoredFrom: version });
      await this.fleet.audit(actor, 'persona.restore', `user:${user.name}`, { version: v, restoredFrom: version, previous: current.version });
      return { user: user.name, version: v, restoredFrom: version, changed: true };
    });
  }

  /** What an earlier commit of this checkout made of the persona (a commit repeated after a crash). */
  async committedBy(user: User, checkoutId: string): Promise<PersonaCommitResult> {
    const row = await this.personas.committedBy(user.id, checkoutId);
    if (!row) return { version: (await this.personas.current(user.id)).version, changed: false, merged: false, report: null };
    return { version: row.version, changed: true, merged: row.mergeReport !== null, report: row.mergeReport };
  }

  /**
   * Make a laptop's snapshot the user's next persona version; call inside the transaction that also
   * commits the disk, when there is one. When the server moved on since `info.baseVersion`, the three
   * versions are merged with the desktop's policies and the report is kept with the new version.
   */
  async commit(user: User, delta: unknown, info: PersonaPushInfo, checkoutId: string | null): Promise<PersonaCommitResult> {
    // The laptop sends what changed since its base version; rebuilt here, it must name the same snapshot.
    const baseRow = await this.personas.version(user.id, info.baseVersion);
    if (!baseRow) throw new CarryonError('BAD_REQUEST', `persona base version ${info.baseVersion} does not exist`);
    const baseSnap = await this.personas.snapshot(baseRow.snapshotId);
    const { snapshot: sent, registryTimes: timesOf } = applySnapshotDelta(baseSnap, delta, baseRow.snapshotId);
    const policies = await this.meta.desktopPolicies(user, info.desktop);
    const current = await this.personas.current(user.id);
    // HKEY_CURRENT_USER only, and the desktop's include/exclude lists: refused or dropped before any merge.
    const scoped = scopeCommitRegistries(baseSnap, sent, info.baseVersion === current.version ? baseSnap : await this.personas.snapshot(current.snapshotId), policies.registryScope);
    const ours = scoped.ours;
    const dropped = scoped.dropped ? { registryDropped: scoped.dropped } : {};
    let merged = ours;
    let report: unknown = null;
    if (info.baseVersion !== current.version) {
      const base = scoped.base;
      const theirs = scoped.theirs;
      try {
        checkRegistryText(theirs.registry);
      } catch (err) {
        throw new CarryonError('BAD_REQUEST', `${user.name}'s current persona version ${current.version} (stored before the server checked registries) cannot be merged: ${(err as Error).message}; ` +
          `nothing was committed and the laptop keeps its copy: an admin restores an earlier version (carryon-server persona restore ${user.name} VERSION), then run the command again`, { version: current.version });
      }
      // Per-value "newest wins": the laptop's time for each value it changed, the server's for each of
      // those values its side changed too (the commit time of the version that last changed it).
      const registryTimes = timesOf();
      const theirsTimes = policies.registryPolicy === 'newest' && registryTimes && registryTimes.size > 0
        ? await this.serverValueTimes(user.id, baseRow.version, current, base.registry, theirs.registry, registryTimes)
        : undefined;
      const r = mergePersona(base, ours, theirs, {
        filePolicy: policies.filePolicy, registryPolicy: policies.registryPolicy, device: info.deviceName, oursTime: info.editedAt, theirsTime: Date.parse(current.createdAt),
        ...(registryTimes ? { registryTimes: { ours: registryTimes, ...(theirsTimes ? { theirs: theirsTimes } : {}) } } : {}),
      });
      merged = r.merged;
      report = r.report;
    }
    const missing = await this.missing(user, new Set(merged.files.flatMap((f) => f.chunks)));
    if (missing.length > 0) {
      throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} persona chunk(s) the snapshot names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
    }
    const { id } = await this.personas.putSnapshot(merged);
    if (id === current.snapshotId) return { version: current.version, changed: false, merged: report !== null, report, ...dropped };
    const version = await this.personas.addVersion(user.id, id, { source: checkoutId ? 'checkin' : 'push', deviceName: info.deviceName, checkoutId, mergeReport: report });
    return { version, changed: true, merged: report !== null, report, ...dropped };
  }

  /**
   * For each value the laptop changed that the server's side changed too (differently from the base):
   * the commit time of the newest version after `baseVersion` that changed it. Versions are read one at
   * a time from the newest back, only as far as a value is still unresolved.
   */
  private async serverValueTimes(userId: number, baseVersion: number, current: PersonaVersionRow, baseText: string, theirsText: string, ours: ReadonlyMap<string, number>): Promise<Map<string, number>> {
    const wanted = new Set(ours.keys());
    const inBase = lookupValueLines(canonicalForm(baseText, 'base registry'), wanted);
    let later = lookupValueLines(canonicalForm(theirsText, "server's registry"), wanted);
    const open = new Set([...wanted].filter((k) => !sameValueLine(later.get(k), inBase.get(k))));
    const times = new Map<string, number>();
    let row = current;
    while (open.size > 0 && row.version > baseVersion + 1) {
      const prev = await this.personas.version(userId, row.version - 1);
      if (!prev) break;
      const earlier = prev.snapshotId === row.snapshotId ? later : lookupValueLines(canonicalForm((await this.personas.snapshot(prev.snapshotId)).registry, 'registry'), open);
      for (const k of [...open]) {
        if (sameValueLine(earlier.get(k), later.get(k))) continue;
        times.set(k, Date.parse(row.createdAt));
        open.delete(k);
      }
      later = earlier;
      row = prev;
    }
    for (const k of open) times.set(k, Date.parse(row.createdAt)); // changed by the first version after the base
    return times;
  }

  /** A persona push without a check-in (`carryon persona push`): the new version and its audit row together. */
  async push(user: User, delta: unknown, info: PersonaPushInfo, actor: Actor): Promise<PersonaCommitResult> {
    return this.meta.db.transaction(async () => {
      const r = await this.commit(user, delta, info, null);
      if (r.changed) await this.fleet.audit(actor, 'persona.push', `user:${user.name}`, { version: r.version, merged: r.merged, desktop: info.desktop });
      return r;
    });
  }

  /** Every version of a user's persona with its size, for `carryon-server persona history`. */
  async history(user: User): Promise<Array<PersonaVersionRow & { files: number; bytes: number; conflicts: number }>> {
    const out = [];
    for (const v of await this.personas.history(user.id)) {
      const s = await this.personas.snapshot(v.snapshotId);
      const conflicts = (v.mergeReport as { conflicts?: unknown[] } | null)?.conflicts?.length ?? 0;
      out.push({ ...v, files: s.files.filter((f) => f.kind === 'file').length, bytes: s.files.reduce((n, f) => n + f.size, 0), conflicts });
    }
    return out;
  }

  /** One version's row and contents (default: the newest). */
  async show(user: User, version?: number): Promise<PersonaVersionRow & { snapshot: PersonaSnapshot }> {
    const v = version === undefined ? await this.personas.current(user.id) : await this.personas.version(user.id, version);
    if (!v) throw new CarryonError('INVALID_ARGUMENT', `user ${user.name} has no persona version ${String(version)}`, { user: user.name, version });
    return { ...v, snapshot: await this.personas.snapshot(v.snapshotId) };
  }
}

/** Apply an rdiff delta to a base held in memory; more than `max` bytes of output is PAYLOAD_TOO_LARGE. */
async function applyDeltaInMemory(base: Buffer, delta: Buffer, max: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  const out = new Writable({
    write(data: Buffer, _e, cb) {
      parts.push(data);
      cb();
    },
  });
  await applyDelta(base, delta, out, { maxOutputBytes: max });
  return Buffer.concat(parts);
}
