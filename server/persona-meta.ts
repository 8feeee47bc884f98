// SqlitePersonaMeta: the server's persona versions. Each user has a chain of immutable versions, each
// naming a content-addressed snapshot (src/persona/model.ts); version 1 is the empty persona, made the
// first time a user's persona is asked for.
import { decodePersona, encodePersona, personaId, type BlockId, type PersonaSnapshot } from '../src/index.js';
import type { Db } from './db.js';

export interface PersonaVersionRow {
  version: number;
  snapshotId: BlockId;
  source: 'initial' | 'checkin' | 'push' | 'restore';
  /** For source 'restore': the version whose snapshot this one copies (migration 10). */
  restoredFrom: number | null;
  deviceName: string | null;
  checkoutId: string | null;
  mergeReport: unknown;
  createdAt: string;
}

interface Row {
  version: number;
  snapshot_id: string;
  source: PersonaVersionRow['source'];
  device_name: string | null;
  checkout_id: string | null;
  merge_report: string | null;
  created_at: string;
  restored_from: number | null;
}

const toVersion = (r: Row): PersonaVersionRow => ({
  version: r.version, snapshotId: r.snapshot_id, source: r.source, restoredFrom: r.restored_from ?? null, deviceName: r.device_name, checkoutId: r.checkout_id,
  mergeReport: r.merge_report === null ? null : JSON.parse(r.merge_report), createdAt: r.created_at,
});

export class SqlitePersonaMeta {
  constructor(readonly db: Db) {}

  putSnapshot(p: PersonaSnapshot): { id: BlockId; encoded: Buffer } {
    const encoded = encodePersona(p);
    const id = personaId(encoded);
    this.db.prepare('INSERT OR IGNORE INTO persona_snapshots (id, encoded, created_at) VALUES (?, ?, ?)').run(id, encoded, new Date().toISOString());
    return { id, encoded };
  }

  snapshot(id: BlockId): PersonaSnapshot {
    const row = this.db.prepare('SELECT encoded FROM persona_snapshots WHERE id = ?').get(id) as { encoded: Buffer } | undefined;
    if (!row) throw new Error(`persona snapshot ${id} is missing`); // the schema's references make this a bug
    return decodePersona(row.encoded);
  }

  /** The user's newest version, creating the empty version 1 when there is none yet. */
  current(userId: number): PersonaVersionRow {
    const row = this.db.prepare('SELECT * FROM persona_versions WHERE user_id = ? ORDER BY version DESC LIMIT 1').get(userId) as Row | undefined;
    if (row) return toVersion(row);
    return this.db.transaction(() => {
      const again = this.db.prepare('SELECT * FROM persona_versions WHERE user_id = ? ORDER BY version DESC LIMIT 1').get(userId) as Row | undefined;
      if (again) return toVersion(again);
      const { id } = this.putSnapshot({ files: [], registry: '' });
      this.db.prepare("INSERT INTO persona_versions (user_id, version, snapshot_id, source, created_at) VALUES (?, 1, ?, 'initial', ?)").run(userId, id, new Date().toISOString());
      return this.version(userId, 1)!;
    })();
  }

  version(userId: number, version: number): PersonaVersionRow | null {
    const row = this.db.prepare('SELECT * FROM persona_versions WHERE user_id = ? AND version = ?').get(userId, version) as Row | undefined;
    return row ? toVersion(row) : null;
  }

  history(userId: number): PersonaVersionRow[] {
    this.current(userId);
    return (this.db.prepare('SELECT * FROM persona_versions WHERE user_id = ? ORDER BY version').all(userId) as Row[]).map(toVersion);
  }

  /** Append a version; run inside the caller's transaction when it goes with a disk commit. */
  addVersion(userId: number, snapshotId: BlockId, v: { source: 'checkin' | 'push' | 'restore'; deviceName: string | null; checkoutId: string | null; mergeReport: unknown; restoredFrom?: number }): number {
    const next = this.current(userId).version + 1;
    this.db
      .prepare('INSERT INTO persona_versions (user_id, version, snapshot_id, source, device_name, checkout_id, merge_report, created_at, restored_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(userId, next, snapshotId, v.source, v.deviceName, v.checkoutId, v.mergeReport === null ? null : JSON.stringify(v.mergeReport), new Date().toISOString(), v.restoredFrom ?? null);
    return next;
  }
}
