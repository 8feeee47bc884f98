// Refresh and recompose (issue 15): a desktop's disk moves to its image's newest version (refresh) or to
// another image version (recompose); the user's persona is the user's, not the disk's, and is untouched.
// Owns: the move itself (a new desktop version whose manifest is the image version's, the desktop's
// image reference, grants keeping the previous disk readable for a restore), the queue of moves waiting
// for a checkout to end (desktop_recompose, migration 16), and their audit rows (desktop.refresh,
// desktop.recompose, desktop.recompose-queued). Must not know: HTTP, the CLI.
// Nothing is destroyed: the previous version stays in desktop_versions and `admin restore DESKTOP
// --version N` makes it the desktop's next version again.
import { CarryonError, decodeManifest, type BlockId, type Sql } from '../src/index.js';
import { appendAudit, type Actor } from './audit.js';

/** What a refresh or recompose keeps, as the command's confirmation and the console say it. */
export const RECOMPOSE_SURVIVES = "What survives: each user's persona (profile files and registry: it is the user's, not the disk's). " +
  'What does not: changes made on the disk itself (installed programs, files outside the profile); the previous disk stays as a version of the desktop, ' +
  'and `carryon-server admin restore DESKTOP --version N` brings it back. A desktop that is checked out moves when its checkout ends, after its check-in is in.';

export type RecomposeKind = 'refresh' | 'recompose';

export interface RecomposeTarget {
  kind: RecomposeKind;
  /** recompose: the image to move to (refresh: the desktop's own). */
  image?: string;
  /** recompose: the image version (default: its newest). */
  imageVersion?: number;
}

export interface RecomposeOutcome {
  desktop: string;
  /** done: moved now; queued: checked out, moved when the checkout ends; unchanged: already on that image version. */
  state: 'done' | 'queued' | 'unchanged';
  image: string;
  /** The image version moved to (queued refresh: null, the newest when applied). */
  imageVersion: number | null;
  /** The desktop version the previous disk stays as (restorable). */
  keptVersion: number;
  /** The desktop's version after the move (done), null otherwise. */
  version: number | null;
}

const now = (): string => new Date().toISOString();
const GRANT_BATCH = 500;

/** The image (id, name) and version a target names for a desktop; the version null for a refresh, resolved when applied. */
async function resolveTarget(db: Sql, desktopImageId: number, t: RecomposeTarget): Promise<{ imageId: number; imageName: string; version: number | null }> {
  if (t.kind === 'refresh') {
    const img = (await db.get<{ id: number; name: string }>('SELECT id, name FROM images WHERE id = ?', [desktopImageId]))!;
    return { imageId: img.id, imageName: img.name, version: null };
  }
  const img = await db.get<{ id: number; name: string }>('SELECT id, name FROM images WHERE name = ?', [t.image!]);
  if (!img) throw new CarryonError('IMAGE_NOT_FOUND', `no image named ${t.image}`, { image: t.image });
  if (t.imageVersion !== undefined && !(await db.get('SELECT 1 AS x FROM image_versions WHERE image_id = ? AND version = ?', [img.id, t.imageVersion]))) {
    throw new CarryonError('IMAGE_NOT_FOUND', `image ${t.image} has no version ${t.imageVersion}`, { image: t.image, version: t.imageVersion });
  }
  return { imageId: img.id, imageName: img.name, version: t.imageVersion ?? null };
}

async function imageVersionRow(db: Sql, imageId: number, version: number | null): Promise<{ version: number; manifestId: BlockId }> {
  const row = await db.get<{ version: number; manifest_id: string }>(version === null
    ? 'SELECT version, manifest_id FROM image_versions WHERE image_id = ? ORDER BY version DESC LIMIT 1'
    : 'SELECT version, manifest_id FROM image_versions WHERE image_id = ? AND version = ?', version === null ? [imageId] : [imageId, version]);
  if (!row) throw new CarryonError('IMAGE_NOT_FOUND', 'the image has no published version');
  return { version: Number(row.version), manifestId: row.manifest_id };
}

/** Move desktop `desktopId` now (inside the caller's transaction): its next version is the image version's manifest. */
async function moveNow(db: Sql, desktopId: number, kind: RecomposeKind, imageId: number, imageName: string, wanted: number | null, actor: Actor, queued: boolean): Promise<RecomposeOutcome> {
  const d = (await db.get<{ name: string; version: number; user_id: number; image_id: number; image_version: number }>('SELECT name, version, user_id, image_id, image_version FROM desktops WHERE id = ?', [desktopId]))!;
  const target = await imageVersionRow(db, imageId, wanted);
  const current = (await db.get<{ manifest_id: string }>('SELECT manifest_id FROM desktop_versions WHERE desktop_id = ? AND version = ?', [desktopId, d.version]))!.manifest_id;
  if (current === target.manifestId && d.image_id === imageId && d.image_version === target.version) {
    return { desktop: d.name, state: 'unchanged', image: imageName, imageVersion: target.version, keptVersion: d.version, version: d.version };
  }
  const version = d.version + 1;
  const t = now();
  await db.run('INSERT INTO desktop_versions (desktop_id, version, manifest_id, created_at) VALUES (?, ?, ?, ?)', [desktopId, version, target.manifestId, t]);
  await db.run('UPDATE desktops SET version = ?, image_id = ?, image_version = ?, updated_at = ? WHERE id = ?', [version, imageId, target.version, t, desktopId]);
  await db.run('DELETE FROM desktop_recompose WHERE desktop_id = ?', [desktopId]);
  await appendAudit(db, actor, `desktop.${kind}`, `desktop:${d.name}`, { image: imageName, imageVersion: target.version, from: d.version, to: version, keptVersion: d.version, queued });
  return { desktop: d.name, state: 'done', image: imageName, imageVersion: target.version, keptVersion: d.version, version };
}

/**
 * Before a desktop's earlier disk (a version, a restore point) becomes its next version: the blocks of
 * `manifestId` its current image does not name are granted to the desktop's user, so the user's laptop
 * may read them. They were readable through the image the desktop had then; after a refresh or
 * recompose, that is no longer its image.
 */
export async function grantOutsideImage(db: Sql, desktopId: number, manifestId: string): Promise<number> {
  const d = (await db.get<{ user_id: number; image_id: number; image_version: number }>('SELECT user_id, image_id, image_version FROM desktops WHERE id = ?', [desktopId]))!;
  const ids = async (id: string): Promise<string[]> => decodeManifest((await db.get<{ encoded: Buffer }>('SELECT encoded FROM manifests WHERE id = ?', [id]))!.encoded).uniqueIds();
  const image = (await db.get<{ manifest_id: string }>('SELECT manifest_id FROM image_versions WHERE image_id = ? AND version = ?', [d.image_id, d.image_version]))!.manifest_id;
  if (image === manifestId) return 0;
  const inImage = new Set(await ids(image));
  const outside = (await ids(manifestId)).filter((id) => !inImage.has(id));
  for (let i = 0; i < outside.length; i += GRANT_BATCH) {
    const part = outside.slice(i, i + GRANT_BATCH);
    await db.run(`INSERT INTO user_blocks (user_id, block_id) SELECT ?, id FROM blocks WHERE id IN (${part.map(() => '?').join(', ')}) ON CONFLICT DO NOTHING`, [d.user_id, ...part]);
  }
  return outside.length;
}

export class RecomposeService {
  constructor(private readonly db: Sql) {}

  /** The desktops `--all-of-image NAME` means: every desktop made from (or moved to) that image. */
  async desktopsOfImage(image: string): Promise<string[]> {
    const img = await this.db.get<{ id: number }>('SELECT id FROM images WHERE name = ?', [image]);
    if (!img) throw new CarryonError('IMAGE_NOT_FOUND', `no image named ${image}`, { image });
    return (await this.db.all<{ name: string }>('SELECT name FROM desktops WHERE image_id = ? ORDER BY name', [img.id])).map((r) => r.name);
  }

  /**
   * Refresh or recompose each desktop, each in its own transaction: now when it is not checked out, else
   * queued for when its checkout ends. Unknown desktops are refused before any is moved.
   */
  async apply(names: string[], t: RecomposeTarget, actor: Actor): Promise<RecomposeOutcome[]> {
    if (names.length === 0) throw new CarryonError('INVALID_ARGUMENT', 'name at least one desktop, or --all-of-image IMAGE');
    const ids: Array<{ id: number; name: string; image_id: number; version: number }> = [];
    for (const name of names) {
      const d = await this.db.get<{ id: number; name: string; image_id: number; version: number }>('SELECT id, name, image_id, version FROM desktops WHERE name = ?', [name]);
      if (!d) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name}`, { desktop: name });
      ids.push(d);
    }
    const out: RecomposeOutcome[] = [];
    for (const d of ids) {
      out.push(await this.db.transaction(async () => {
        const target = await resolveTarget(this.db, d.image_id, t);
        const held = await this.db.get<{ id: string }>("SELECT id FROM checkouts WHERE desktop_id = ? AND state = 'active'", [d.id]);
        if (!held) return moveNow(this.db, d.id, t.kind, target.imageId, target.imageName, target.version, actor, false);
        await this.db.run('DELETE FROM desktop_recompose WHERE desktop_id = ?', [d.id]);
        await this.db.run('INSERT INTO desktop_recompose (desktop_id, kind, image_id, image_version, requested_by, requested_at) VALUES (?, ?, ?, ?, ?, ?)',
          [d.id, t.kind, target.imageId, target.version, actor.name, now()]);
        await appendAudit(this.db, actor, 'desktop.recompose-queued', `desktop:${d.name}`, { kind: t.kind, image: target.imageName, imageVersion: target.version, checkoutId: held.id });
        return { desktop: d.name, state: 'queued' as const, image: target.imageName, imageVersion: target.version, keptVersion: d.version, version: null };
      }));
    }
    return out;
  }

  /** Inside the transaction that ends a checkout (commit, discard): carry out a queued move, if any. */
  async applyQueued(desktopId: number, actor: Actor): Promise<RecomposeOutcome | null> {
    const q = await this.db.get<{ kind: RecomposeKind; image_id: number; image_version: number | null; requested_by: string }>('SELECT kind, image_id, image_version, requested_by FROM desktop_recompose WHERE desktop_id = ?', [desktopId]);
    if (!q) return null;
    const img = (await this.db.get<{ name: string }>('SELECT name FROM images WHERE id = ?', [q.image_id]))!;
    return moveNow(this.db, desktopId, q.kind, q.image_id, img.name, q.image_version === null ? null : Number(q.image_version), { ...actor, name: `${actor.name} (queued by ${q.requested_by})` }, true);
  }

  /** A desktop's earlier version made its next one (the way back from a refresh or recompose). */
  async restoreVersion(name: string, version: number, actor: Actor): Promise<{ desktop: string; version: number; from: number; restoredVersion: number }> {
    return this.db.transaction(async () => {
      const d = await this.db.get<{ id: number; version: number }>('SELECT id, version FROM desktops WHERE name = ?', [name]);
      if (!d) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name}`, { desktop: name });
      const held = await this.db.get<{ id: string }>("SELECT id FROM checkouts WHERE desktop_id = ? AND state = 'active'", [d.id]);
      if (held) throw new CarryonError('CHECKOUT_CONFLICT', `${name} is checked out (${held.id}): it can be restored once that checkout ends`, { desktop: name, checkoutId: held.id });
      const row = await this.db.get<{ manifest_id: string }>('SELECT manifest_id FROM desktop_versions WHERE desktop_id = ? AND version = ?', [d.id, version]);
      if (!row) throw new CarryonError('NOT_FOUND', `${name} has no version ${version} (its versions run 1 to ${d.version})`, { desktop: name, version });
      await grantOutsideImage(this.db, d.id, row.manifest_id);
      const next = d.version + 1;
      const t = now();
      await this.db.run('INSERT INTO desktop_versions (desktop_id, version, manifest_id, created_at) VALUES (?, ?, ?, ?)', [d.id, next, row.manifest_id, t]);
      await this.db.run('UPDATE desktops SET version = ?, updated_at = ? WHERE id = ?', [next, t, d.id]);
      await appendAudit(this.db, actor, 'desktop.restore-version', `desktop:${name}`, { from: d.version, to: next, restoredVersion: version });
      return { desktop: name, version: next, from: d.version, restoredVersion: version };
    });
  }
}
