// How many versions of a golden image to keep (issue 15): an admin sets `image policy NAME
// --keep-versions N` (images.keep_versions, migration 17; NULL: all). The garbage collector then removes
// the image versions past the newest N that no desktop is on and no queued refresh or recompose names,
// with an audit row each (image.version-expired); their blocks go with the next sweep when nothing else
// names them (desktop versions made from them keep theirs). Must not know: HTTP, the CLI.
import { CarryonError, type Sql } from '../src/index.js';
import { appendAudit, type Actor } from './audit.js';

export interface ExpiredVersion {
  image: string;
  imageId: number;
  version: number;
  manifestId: string;
}

export async function setKeepVersions(db: Sql, image: string, keep: number | null, actor: Actor): Promise<{ image: string; keepVersions: number | null }> {
  if (keep !== null && !(Number.isSafeInteger(keep) && keep >= 1 && keep <= 10_000)) throw new CarryonError('INVALID_ARGUMENT', '--keep-versions must be 1 to 10000, or all');
  return db.transaction(async () => {
    const r = await db.run('UPDATE images SET keep_versions = ? WHERE name = ?', [keep, image]);
    if (r.changes === 0) throw new CarryonError('IMAGE_NOT_FOUND', `no image named ${image}`, { image });
    await appendAudit(db, actor, 'image.retention', `image:${image}`, { keepVersions: keep });
    return { image, keepVersions: keep };
  });
}

export async function keepVersionsOf(db: Sql, image: string): Promise<number | null> {
  const r = await db.get<{ keep_versions: number | null }>('SELECT keep_versions FROM images WHERE name = ?', [image]);
  if (!r) throw new CarryonError('IMAGE_NOT_FOUND', `no image named ${image}`, { image });
  return r.keep_versions === null ? null : Number(r.keep_versions);
}

/** The image versions past their image's retention that nothing holds on to. */
export async function expiredVersions(db: Sql): Promise<ExpiredVersion[]> {
  const rows = await db.all<{ image_id: number; name: string; keep: number; version: number; manifest_id: string }>(
    `SELECT i.id AS image_id, i.name, i.keep_versions AS keep, v.version, v.manifest_id FROM images i JOIN image_versions v ON v.image_id = i.id
     WHERE i.keep_versions IS NOT NULL ORDER BY i.id, v.version DESC`);
  const out: ExpiredVersion[] = [];
  const rank = new Map<number, number>();
  for (const r of rows) {
    const n = (rank.get(r.image_id) ?? 0) + 1;
    rank.set(r.image_id, n);
    if (n <= Number(r.keep)) continue;
    const used = await db.get(
      `SELECT 1 AS x FROM desktops WHERE image_id = ? AND image_version = ?
       UNION SELECT 1 FROM desktop_recompose WHERE image_id = ? AND (image_version = ? OR image_version IS NULL)`, [r.image_id, r.version, r.image_id, r.version]);
    if (!used) out.push({ image: r.name, imageId: Number(r.image_id), version: Number(r.version), manifestId: r.manifest_id });
  }
  return out;
}

/** Remove the expired versions (each in its own transaction, checked again inside); returns those removed. */
export async function expireVersions(db: Sql, actor: Actor): Promise<ExpiredVersion[]> {
  const removed: ExpiredVersion[] = [];
  for (const v of await expiredVersions(db)) {
    const gone = await db.transaction(async () => {
      // Still expired under the lock: a desktop may have been created or recomposed onto it meanwhile.
      if (!(await expiredVersions(db)).some((x) => x.imageId === v.imageId && x.version === v.version)) return false;
      await db.run('DELETE FROM boot_traces WHERE image_id = ? AND image_version = ?', [v.imageId, v.version]);
      await db.run('DELETE FROM image_versions WHERE image_id = ? AND version = ?', [v.imageId, v.version]);
      await appendAudit(db, actor, 'image.version-expired', `image:${v.image}`, { version: v.version, manifestId: v.manifestId });
      return true;
    });
    if (gone) removed.push(v);
  }
  return removed;
}
