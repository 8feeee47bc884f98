// PersonaMeta: the server's persona versions, over the async `Sql` interface. Each user has a chain of immutable versions, each
// naming a content-addressed snapshot (src/persona/model.ts); version 1 is the empty persona, made the
// first time a user's persona is asked for.
import { decodePersona, encodePersona, personaSnapshotId, type BlockId, type PersonaSnapshot } from '../src/index.js';
import type { Sql } from '../src/index.js';

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

export class PersonaMeta {
  constructor(readonly db: Sql) {}

  /** Store a snapshot (content-addressed: one already stored is not encoded again). */
  async putSnapshot(p: PersonaSnapshot): Promise<{ id: BlockId }> {
    const id = personaSnapshotId(p);
    if (await this.db.get('SELECT 1 AS one FROM persona_snapshots WHERE id = ?', [id])) return { id };
    const encoded = encodePersona(p);
    await this.db.run('INSERT INTO persona_snapshots (id, encoded, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING', [id, encoded, new Date().toISOString()]);
    return { id };
  }

  /** A stored snapshot's canonical encoding, as stored (its SHA-256 is `id`). */
  async encoded(id: BlockId): Promise<Buffer> {
    const row = (await this.db.get('SELECT encoded FROM persona_snapshots WHERE id = ?', [id])) as { encoded: Buffer } | undefined;
    if (!row) throw new Error(`persona snapshot ${id} is missing`); // the schema's references make this a bug
    return row.encoded;
  }

  async snapshot(id: BlockId): Promise<PersonaSnapshot> {
    const row = (await this.db.get('SELECT encoded FROM persona_snapshots WHERE id = ?', [id])) as { encoded: Buffer } | undefined;
    if (!row) throw new Error(`persona snapshot ${id} is missing`); // the schema's references make this a bug
    return decodePersona(row.encoded);
  }

  /** The user's newest version, creating the empty version 1 when there is none yet. */
  async current(userId: number): Promise<PersonaVersionRow> {
    const row = (await this.db.get('SELECT * FROM persona_versions WHERE user_id = ? ORDER BY version DESC LIMIT 1', [userId])) as Row | undefined;
    if (row) return toVersion(row);
    return this.db.transaction(async () => {
      const again = (await this.db.get('SELECT * FROM persona_versions WHERE user_id = ? ORDER BY version DESC LIMIT 1', [userId])) as Row | undefined;
      if (again) return toVersion(again);
      const { id } = await this.putSnapshot({ files: [], registry: '' });
      (await this.db.run("INSERT INTO persona_versions (user_id, version, snapshot_id, source, created_at) VALUES (?, 1, ?, 'initial', ?)", [userId, id, new Date().toISOString()]));
      return (await this.version(userId, 1))!;
    });
  }

  async version(userId: number, version: number): Promise<PersonaVersionRow | null> {
    const row = (await this.db.get('SELECT * FROM persona_versions WHERE user_id = ? AND version = ?', [userId, version])) as Row | undefined;
    return row ? toVersion(row) : null;
  }

  async history(userId: number): Promise<PersonaVersionRow[]> {
    await this.current(userId);
    return ((await this.db.all('SELECT * FROM persona_versions WHERE user_id = ? ORDER BY version', [userId])) as Row[]).map(toVersion);
  }

  /** Append a version; run inside the caller's transaction when it goes with a disk commit. */
  async addVersion(userId: number, snapshotId: BlockId, v: { source: 'checkin' | 'push' | 'restore'; deviceName: string | null; checkoutId: string | null; mergeReport: unknown; restoredFrom?: number }): Promise<number> {
    const next = (await this.current(userId)).version + 1;
    (await this.db.run('INSERT INTO persona_versions (user_id, version, snapshot_id, source, device_name, checkout_id, merge_report, created_at, restored_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)', [userId, next, snapshotId, v.source, v.deviceName, v.checkoutId, v.mergeReport === null ? null : JSON.stringify(v.mergeReport), new Date().toISOString(), v.restoredFrom ?? null]));
    return next;
  }

  /** The version an earlier commit of this checkout made, with its merge report; null when it made none. */
  async committedBy(userId: number, checkoutId: string): Promise<{ version: number; mergeReport: unknown } | null> {
    const row = await this.db.get<{ version: number; merge_report: string | null }>('SELECT version, merge_report FROM persona_versions WHERE user_id = ? AND checkout_id = ?', [userId, checkoutId]);
    return row ? { version: row.version, mergeReport: row.merge_report === null ? null : JSON.parse(row.merge_report) } : null;
  }
}
