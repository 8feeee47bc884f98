// The server's persona work: serving a version and its chunks, taking uploaded chunks and rdiff
// deltas, and committing a laptop's snapshot as a new version, merged three ways with what the
// server received meanwhile. Chunks enter the store through BlockIngest (verified, then indexed).
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import {
  applyDelta, applySnapshotDelta, blockId, CarryonError, checkRegistryText, getBlock, mergePersona, MAX_PERSONA_ENTRY_BYTES, MAX_PERSONA_UPLOAD_BYTES, parsePersonaUploadEntryName, PERSONA_CHUNK_BYTES,
  unpackEntries, type BlockId, type BlockStore, type PersonaCommitResult, type PersonaPushInfo, type PersonaSnapshot, type TarEntry,
} from '../src/index.js';
import { BlockIngest, BlockScope, readAhead } from './blocks.js';
import type { SqliteMeta, User } from './meta.js';
import type { SqlitePersonaMeta } from './persona-meta.js';

export class PersonaService {
  constructor(private readonly meta: SqliteMeta, private readonly personas: SqlitePersonaMeta, private readonly store: BlockStore, private readonly tmpRoot: string) {}

  /** A version of the user's persona (default: the newest). */
  get(user: User, version?: number): { version: number; snapshot: PersonaSnapshot; createdAt: string } {
    const current = this.personas.current(user.id);
    const v = version === undefined ? current : this.personas.version(user.id, version);
    if (!v) throw new CarryonError('NOT_FOUND', `persona version ${version} does not exist`, { version });
    return { version: v.version, snapshot: this.personas.snapshot(v.snapshotId), createdAt: v.createdAt };
  }

  /**
   * Chunks (of those given) the user must send: every chunk not in their own scope (chunks they sent, or
   * that their persona versions held), whether or not another user's persona holds it.
   */
  missing(user: User, ids: Iterable<BlockId>): BlockId[] {
    return new BlockScope(this.meta, user.id).missing(ids);
  }

  /** The encoded chunks of `ids`, each of which must belong to the given version. */
  chunks(user: User, version: number, ids: BlockId[]): AsyncGenerator<TarEntry> {
    const { snapshot } = this.get(user, version);
    const allowed = new Set(snapshot.files.flatMap((f) => f.chunks));
    for (const id of ids) if (!allowed.has(id)) throw new CarryonError('BLOCK_NOT_FOUND', `chunk ${id.slice(0, 12)}… is not part of persona version ${version}`, { id });
    return readAhead(this.store, ids, 4); // 1 MiB chunks: a few in flight keep the disk busy
  }

  /**
   * Take `b/<chunk>` entries (a chunk's plaintext) and `r/<file>/<base>` entries (an rdiff delta that
   * rebuilds file `file` from file `base` of persona version `baseVersion`). Every chunk is verified
   * by its id; a rebuilt file must hash to `file`. What arrived before a failure stays stored.
   */
  async ingest(user: User, baseVersion: number, body: NodeJS.ReadableStream): Promise<{ chunks: number; files: number }> {
    const { snapshot: base } = this.get(user, baseVersion);
    const baseFiles = new Map(base.files.filter((f) => f.kind === 'file').map((f) => [f.hash!, f]));
    const ingest = new BlockIngest(this.meta, this.store, user.id);
    let chunks = 0;
    let files = 0;
    // The tar and every rebuilt file count against one budget: see MAX_PERSONA_UPLOAD_BYTES.
    let budget = MAX_PERSONA_UPLOAD_BYTES;
    try {
      await unpackEntries(body, MAX_PERSONA_ENTRY_BYTES, async ({ name, data }) => {
        budget -= data.length + 512;
        const e = parsePersonaUploadEntryName(name);
        if (e.kind === 'chunk') {
          if (data.length > PERSONA_CHUNK_BYTES) throw new CarryonError('BLOCK_CORRUPT', `chunk ${e.id.slice(0, 12)}… is larger than ${PERSONA_CHUNK_BYTES} bytes`);
          if (blockId(data) !== e.id) throw new CarryonError('BLOCK_CORRUPT', `chunk ${e.id.slice(0, 12)}… does not match its hash`, { id: e.id });
          await ingest.add(e.id, data);
          chunks++;
          return;
        }
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
        for (const id of baseChunks) await fh.write(await getBlock(this.store, id, PERSONA_CHUNK_BYTES));
        const whole = createHash('sha256');
        let pending: Buffer = Buffer.alloc(0);
        let stored = 0;
        let bytes = 0;
        const put = async (chunk: Buffer): Promise<void> => {
          await ingest.add(blockId(chunk), chunk);
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
  snapshotFor(user: User, delta: unknown, baseVersion: number): BlockId {
    const baseRow = this.personas.version(user.id, baseVersion);
    if (!baseRow) throw new CarryonError('BAD_REQUEST', `persona base version ${baseVersion} does not exist`);
    const { snapshot } = applySnapshotDelta(this.personas.snapshot(baseRow.snapshotId), delta);
    const missing = this.missing(user, new Set(snapshot.files.flatMap((f) => f.chunks)));
    if (missing.length > 0) throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} persona chunk(s) the snapshot names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
    return this.personas.putSnapshot(snapshot).id;
  }

  /**
   * An admin puts the user's persona back to an earlier version: a new version with that version's
   * snapshot (history is never rewritten), audited through `audit` in the same transaction. Refused when
   * that version's own registry is not valid (a persona stored before the server checked registries).
   */
  restore(user: User, version: number, audit: (detail: Record<string, unknown>) => void): { user: string; version: number; restoredFrom: number; changed: boolean } {
    return this.meta.db.transaction(() => {
      const from = this.personas.version(user.id, version);
      if (!from) throw new CarryonError('NOT_FOUND', `user ${user.name} has no persona version ${version}`, { user: user.name, version });
      try {
        checkRegistryText(this.personas.snapshot(from.snapshotId).registry);
      } catch (err) {
        throw new CarryonError('BAD_REQUEST', `persona version ${version} of ${user.name} cannot be restored: ${(err as Error).message}; pick an earlier version (carryon-server persona history ${user.name})`, { user: user.name, version });
      }
      const current = this.personas.current(user.id);
      if (from.snapshotId === current.snapshotId) return { user: user.name, version: current.version, restoredFrom: version, changed: false };
      const v = this.personas.addVersion(user.id, from.snapshotId, { source: 'restore', deviceName: null, checkoutId: null, mergeReport: null, restoredFrom: version });
      audit({ version: v, restoredFrom: version, previous: current.version });
      return { user: user.name, version: v, restoredFrom: version, changed: true };
    })();
  }

  /** What an earlier commit of this checkout made of the persona (a commit repeated after a crash). */
  committedBy(user: User, checkoutId: string): PersonaCommitResult {
    const row = this.meta.db.prepare('SELECT version, merge_report FROM persona_versions WHERE user_id = ? AND checkout_id = ?').get(user.id, checkoutId) as
      { version: number; merge_report: string | null } | undefined;
    if (!row) return { version: this.personas.current(user.id).version, changed: false, merged: false, report: null };
    return { version: row.version, changed: true, merged: row.merge_report !== null, report: row.merge_report === null ? null : JSON.parse(row.merge_report) };
  }

  /**
   * Make a laptop's snapshot the user's next persona version; call inside the transaction that also
   * commits the disk, when there is one. When the server moved on since `info.baseVersion`, the three
   * versions are merged with the desktop's policies and the report is kept with the new version.
   */
  commit(user: User, delta: unknown, info: PersonaPushInfo, checkoutId: string | null): PersonaCommitResult {
    // The laptop sends what changed since its base version; rebuilt here, it must name the same snapshot.
    const baseRow = this.personas.version(user.id, info.baseVersion);
    if (!baseRow) throw new CarryonError('BAD_REQUEST', `persona base version ${info.baseVersion} does not exist`);
    const { snapshot: ours } = applySnapshotDelta(this.personas.snapshot(baseRow.snapshotId), delta);
    const policies = this.meta.desktopPolicies(user, info.desktop);
    const current = this.personas.current(user.id);
    let merged = ours;
    let report: unknown = null;
    if (info.baseVersion !== current.version) {
      const base = this.personas.snapshot(baseRow.snapshotId);
      const theirs = this.personas.snapshot(current.snapshotId);
      try {
        checkRegistryText(theirs.registry);
      } catch (err) {
        throw new CarryonError('BAD_REQUEST', `${user.name}'s current persona version ${current.version} (stored before the server checked registries) cannot be merged: ${(err as Error).message}; ` +
          `nothing was committed and the laptop keeps its copy: an admin restores an earlier version (carryon-server persona restore ${user.name} VERSION), then run the command again`, { version: current.version });
      }
      const r = mergePersona(base, ours, theirs, {
        filePolicy: policies.filePolicy, registryPolicy: policies.registryPolicy, device: info.deviceName, oursTime: info.editedAt, theirsTime: Date.parse(current.createdAt),
      });
      merged = r.merged;
      report = r.report;
    }
    const missing = this.missing(user, new Set(merged.files.flatMap((f) => f.chunks)));
    if (missing.length > 0) {
      throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} persona chunk(s) the snapshot names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
    }
    const { id } = this.personas.putSnapshot(merged);
    if (id === current.snapshotId) return { version: current.version, changed: false, merged: report !== null, report };
    const version = this.personas.addVersion(user.id, id, { source: checkoutId ? 'checkin' : 'push', deviceName: info.deviceName, checkoutId, mergeReport: report });
    return { version, changed: true, merged: report !== null, report };
  }
}
