// Meta: the desktop repository, over the async `Sql` interface (SQLite or PostgreSQL, server/sql).
// Owns: users and tokens, manifests, the block index, images, desktops and their versions, checkouts.
// Must not know: HTTP, the CLI, which engine it runs on. Multi-row changes run in one transaction each
// (joining the caller's when there is one). Services (server/services) call it; handlers do not.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { CarryonError, DEFAULT_ENCRYPTION_POLICY, type BlockId, type CheckoutHolder, type DesktopInfo, type DiskManifest, type EncryptionPolicy, type FileMergePolicy, type RegistryMergePolicy,
  parseKeyPatternList, registryScopeFromStored, type RegistryScope } from '../src/index.js';
import { appendAudit, type Actor } from './audit.js';
import type { Sql } from '../src/index.js';

export interface User {
  id: number;
  name: string;
  isAdmin: boolean;
}

interface DesktopRow {
  id: number;
  name: string;
  user_id: number;
  user_name: string;
  image_name: string;
  version: number;
  manifest_id: string;
  size: number;
  block_size: number;
  updated_at: string;
  /** Effective: the desktop's own, else its image's, else the default (migration 11). */
  encryption: EncryptionPolicy;
  /** JSON lists of key patterns, or NULL for the defaults (migration 14). */
  registry_include: string | null;
  registry_exclude: string | null;
}

export interface CheckoutRow {
  id: string;
  desktop_id: number;
  user_id: number;
  device: string;
  device_name: string;
  base_version: number;
  state: 'active' | 'committed' | 'discarded';
  started_at: string;
  ended_at: string | null;
  committed_version: number | null;
  committed_manifest: string | null;
  persona_base_version: number | null;
  /** Why an ended checkout ended, when not by commit or discard (migration 4): 'rollback'. */
  end_reason?: string | null;
}

const now = (): string => new Date().toISOString();
const hashToken = (token: string): Buffer => createHash('sha256').update(token).digest();

export class Meta {
  constructor(readonly db: Sql) {}

  // ---- users and tokens
  async addUser(name: string, admin: boolean, actor: Actor): Promise<{ user: string; token: string; admin: boolean }> {
    const token = `co_${randomBytes(32).toString('base64url')}`;
    await this.db.transaction(async () => {
      if ((await this.db.get('SELECT 1 FROM users WHERE name = ?', [name]))) {
        throw new CarryonError('ALREADY_EXISTS', `user ${name} already exists`, { user: name });
      }
      const r = (await this.db.get<{ id: number }>('INSERT INTO users (name, is_admin, created_at) VALUES (?, ?, ?) RETURNING id', [name, admin ? 1 : 0, now()]))!;
      await this.db.run('INSERT INTO tokens (user_id, token_hash, created_at) VALUES (?, ?, ?)', [r.id, hashToken(token), now()]);
      await appendAudit(this.db, actor, 'user.add', `user:${name}`, { admin });
    });
    return { user: name, token, admin };
  }

  async userByToken(token: string): Promise<User | null> {
    const row = (await this.db.get('SELECT u.id, u.name, u.is_admin FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND t.revoked_at IS NULL', [hashToken(token)])) as { id: number; name: string; is_admin: number } | undefined;
    return row ? { id: row.id, name: row.name, isAdmin: row.is_admin === 1 } : null;
  }

  async userByName(name: string): Promise<User> {
    const row = (await this.db.get('SELECT id, name, is_admin FROM users WHERE name = ?', [name])) as { id: number; name: string; is_admin: number } | undefined;
    if (!row) throw new CarryonError('USER_NOT_FOUND', `no user named ${name}`, { user: name });
    return { id: row.id, name: row.name, isAdmin: row.is_admin === 1 };
  }

  // ---- manifests and blocks
  async putManifest(id: BlockId, encoded: Buffer, m: DiskManifest): Promise<void> {
    await this.db.run('INSERT INTO manifests (id, size, block_size, block_count, data_bytes, encoded, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING', [id, m.size, m.blockSize, m.count, m.dataBytes(), encoded, now()]);
  }

  async getManifest(id: BlockId): Promise<Buffer> {
    const row = (await this.db.get('SELECT encoded FROM manifests WHERE id = ?', [id])) as { encoded: Buffer } | undefined;
    if (!row) throw new CarryonError('MANIFEST_NOT_FOUND', `manifest ${id.slice(0, 12)}… is not stored`, { id });
    return row.encoded;
  }

  /** An image version's manifest id (default: the newest version). */
  async imageVersion(name: string, version?: number): Promise<{ version: number; manifestId: BlockId }> {
    const row = (await this.db.get(version === undefined
      ? 'SELECT v.version, v.manifest_id FROM images i JOIN image_versions v ON v.image_id = i.id WHERE i.name = ? ORDER BY v.version DESC LIMIT 1'
      : 'SELECT v.version, v.manifest_id FROM images i JOIN image_versions v ON v.image_id = i.id WHERE i.name = ? AND v.version = ?', version === undefined ? [name] : [name, version])) as { version: number; manifest_id: string } | undefined;
    if (!row) throw new CarryonError('IMAGE_NOT_FOUND', version === undefined ? `no image named ${name}` : `image ${name} has no version ${version}`, { image: name, version: version ?? null });
    return { version: Number(row.version), manifestId: row.manifest_id };
  }

  async hasBlock(id: BlockId): Promise<boolean> {
    return (await this.db.get('SELECT 1 AS x FROM blocks WHERE id = ?', [id])) !== undefined;
  }

  /**
   * Index blocks already durable in the store and record `grant.ids` as sent by `grant.userId`, in one
   * transaction: a grant is written only for a block indexed (in this call or before), and marks it seen
   * (the sender relies on it). `lease`: the upload's ingest lease (server/gc.ts), which must still be
   * held: a collector that took it back may have swept bytes this upload found present.
   */
  async addBlocks(rows: Array<[BlockId, number, number]>, grant?: { userId: number; ids: BlockId[] }, lease?: string): Promise<void> {
    const t = now();
    await this.db.transaction(async () => {
      if (lease !== undefined && !(await this.db.get('SELECT 1 AS x FROM ingest_leases WHERE id = ?', [lease]))) {
        throw new CarryonError('SERVER_BUSY', 'this upload stalled for longer than its lease and the server reclaimed it; nothing was lost: run the command again', { lease });
      }
      for (const [id, plainSize, storedSize] of rows) {
        await this.db.run('INSERT INTO blocks (id, plain_size, stored_size, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING', [id, plainSize, storedSize, t]);
      }
      if (grant && grant.ids.length > 0) {
        for (let i = 0; i < grant.ids.length; i += 500) {
          const part = grant.ids.slice(i, i + 500);
          const marks = part.map(() => '?').join(', ');
          await this.db.run(`INSERT INTO user_blocks (user_id, block_id) SELECT ?, id FROM blocks WHERE id IN (${marks}) ON CONFLICT DO NOTHING`, [grant.userId, ...part]);
          await this.db.run(`UPDATE blocks SET seen_at = ? WHERE id IN (${marks})`, [t, ...part]);
        }
      }
    });
  }

  /** Mark blocks as relied upon now (a client was told it need not send them): GC spares them for its grace period. */
  async touchBlocks(ids: BlockId[]): Promise<void> {
    const t = now();
    for (let i = 0; i < ids.length; i += 500) {
      const part = ids.slice(i, i + 500);
      await this.db.run(`UPDATE blocks SET seen_at = ? WHERE id IN (${part.map(() => '?').join(', ')})`, [t, ...part]);
    }
  }

  /** Of `ids`, those without an index row (run inside a commit's transaction: a collector may have removed one). */
  async unindexed(ids: BlockId[]): Promise<BlockId[]> {
    const out: BlockId[] = [];
    for (let i = 0; i < ids.length; i += 500) {
      const part = ids.slice(i, i + 500);
      const have = new Set((await this.db.all<{ id: string }>(`SELECT id FROM blocks WHERE id IN (${part.map(() => '?').join(', ')})`, part)).map((r) => r.id));
      for (const id of part) if (!have.has(id)) out.push(id);
    }
    return out;
  }

  /** Which of `ids` the user sent (or their data held before migration 9): see server/blocks.ts BlockScope. */
  async userHolds(userId: number, ids: BlockId[]): Promise<Set<BlockId>> {
    const held = new Set<BlockId>();
    // In slices: one round trip per 500 ids (PostgreSQL is across the network), under SQLite's 32766-parameter limit.
    for (let i = 0; i < ids.length; i += 500) {
      const part = ids.slice(i, i + 500);
      const rows = await this.db.all<{ block_id: string }>(`SELECT block_id FROM user_blocks WHERE user_id = ? AND block_id IN (${part.map(() => '?').join(', ')})`, [userId, ...part]);
      for (const r of rows) held.add(r.block_id);
    }
    return held;
  }

  /** The manifest of the image version a desktop was made from. */
  async imageManifestOf(desktopId: number): Promise<BlockId> {
    const row = (await this.db.get('SELECT iv.manifest_id FROM desktops d JOIN image_versions iv ON iv.image_id = d.image_id AND iv.version = d.image_version WHERE d.id = ?', [desktopId])) as
      { manifest_id: string } | undefined;
    if (!row) throw new CarryonError('MANIFEST_NOT_FOUND', `the image version of desktop ${desktopId} is not stored`);
    return row.manifest_id;
  }

  // ---- images
  async publishImageVersion(name: string, manifestId: BlockId, actor: Actor, detail: Record<string, unknown> = {}): Promise<number> {
    return this.db.transaction(async () => {
      let img = (await this.db.get('SELECT id FROM images WHERE name = ?', [name])) as { id: number } | undefined;
      img ??= (await this.db.get<{ id: number }>('INSERT INTO images (name, created_at) VALUES (?, ?) RETURNING id', [name, now()]))!;
      const v = ((await this.db.get('SELECT COALESCE(MAX(version), 0) AS v FROM image_versions WHERE image_id = ?', [img.id])) as { v: number }).v + 1;
      (await this.db.run('INSERT INTO image_versions (image_id, version, manifest_id, created_at) VALUES (?, ?, ?, ?)', [img.id, v, manifestId, now()]));
      await appendAudit(this.db, actor, 'image.publish', `image:${name}`, { version: v, manifestId, ...detail });
      return v;
    });
  }

  // ---- desktops
  /** `encryption`: the desktop's own policy (default: none of its own, so it follows its image, then 'required'). */
  async createDesktop(name: string, userName: string, imageName: string, actor: Actor, encryption: EncryptionPolicy | null = null): Promise<DesktopInfo> {
    await this.db.transaction(async () => {
      const user = await this.userByName(userName);
      const img = (await this.db.get('SELECT i.id, v.version, v.manifest_id FROM images i JOIN image_versions v ON v.image_id = i.id WHERE i.name = ? ORDER BY v.version DESC LIMIT 1', [imageName])) as { id: number; version: number; manifest_id: string } | undefined;
      if (!img) throw new CarryonError('IMAGE_NOT_FOUND', `no image named ${imageName}`, { image: imageName });
      if ((await this.db.get('SELECT 1 FROM desktops WHERE name = ?', [name]))) {
        throw new CarryonError('ALREADY_EXISTS', `desktop ${name} already exists`, { desktop: name });
      }
      const t = now();
      const r = (await this.db.get<{ id: number }>('INSERT INTO desktops (name, user_id, image_id, image_version, version, created_at, updated_at, encryption) VALUES (?, ?, ?, ?, 1, ?, ?, ?) RETURNING id', [name, user.id, img.id, img.version, t, t, encryption]))!;
      // A linked clone: version 1 is the image's manifest itself, so it costs no block storage.
      (await this.db.run('INSERT INTO desktop_versions (desktop_id, version, manifest_id, created_at) VALUES (?, 1, ?, ?)', [r.id, img.manifest_id, t]));
      await appendAudit(this.db, actor, 'desktop.create', `desktop:${name}`, { user: userName, image: imageName, imageVersion: img.version });
    });
    return this.desktopInfo(await this.desktopByName(name));
  }

  private desktopSelect = `SELECT d.id, d.name, d.user_id, u.name AS user_name, i.name AS image_name, d.version, dv.manifest_id, m.size, m.block_size, d.updated_at,
    d.registry_include, d.registry_exclude, COALESCE(d.encryption, i.encryption, '${DEFAULT_ENCRYPTION_POLICY}') AS encryption
    FROM desktops d JOIN users u ON u.id = d.user_id JOIN images i ON i.id = d.image_id
    JOIN desktop_versions dv ON dv.desktop_id = d.id AND dv.version = d.version JOIN manifests m ON m.id = dv.manifest_id`;

  /** A desktop the user may see: their own, or any for an admin. Others' are reported as not found. */
  async desktopFor(user: User, name: string): Promise<DesktopRow> {
    const row = (await this.db.get(`${this.desktopSelect} WHERE d.name = ?`, [name])) as DesktopRow | undefined;
    if (!row || (!user.isAdmin && row.user_id !== user.id)) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name} for user ${user.name}`, { desktop: name });
    return row;
  }

  /** How a desktop's persona conflicts resolve (migration 2). */
  async desktopPolicies(user: User, name: string): Promise<{ filePolicy: FileMergePolicy; registryPolicy: RegistryMergePolicy; registryScope: RegistryScope }> {
    const d = await this.desktopFor(user, name);
    const row = (await this.db.get('SELECT file_policy, registry_policy FROM desktops WHERE id = ?', [d.id])) as { file_policy: FileMergePolicy; registry_policy: RegistryMergePolicy };
    return { filePolicy: row.file_policy, registryPolicy: row.registry_policy, registryScope: registryScopeFromStored(d.registry_include, d.registry_exclude) };
  }

  /**
   * Set a desktop's registry key lists (migration 14): `include` null = all of HKEY_CURRENT_USER,
   * `exclude` null = the default list. Patterns are checked here (parseKeyPatternList); a change is audited.
   */
  async setRegistryScope(name: string, include: string[] | null | undefined, exclude: string[] | null | undefined, actor: Actor): Promise<void> {
    if (include === undefined && exclude === undefined) return;
    const inc = include === undefined || include === null ? include : parseKeyPatternList(include, 'include');
    const exc = exclude === undefined || exclude === null ? exclude : parseKeyPatternList(exclude, 'exclude');
    if (inc && inc.length === 0) throw new CarryonError('INVALID_ARGUMENT', 'an empty include list would carry no registry at all: give at least one key pattern, or reset it to all of HKEY_CURRENT_USER (null; --registry-include-all)');
    await this.db.transaction(async () => {
      const d = await this.desktopByName(name);
      if (inc !== undefined) await this.db.run('UPDATE desktops SET registry_include = ? WHERE id = ?', [inc === null ? null : JSON.stringify(inc), d.id]);
      if (exc !== undefined) await this.db.run('UPDATE desktops SET registry_exclude = ? WHERE id = ?', [exc === null ? null : JSON.stringify(exc), d.id]);
      await appendAudit(this.db, actor, 'desktop.registry-scope', `desktop:${d.name}`, { ...(inc !== undefined ? { include: inc } : {}), ...(exc !== undefined ? { exclude: exc } : {}) });
    });
  }

  /** Set a desktop's merge policies; a change (not a mere look) is audited. */
  async setDesktopPolicies(name: string, files: FileMergePolicy | undefined, registry: RegistryMergePolicy | undefined, actor: Actor): Promise<{ desktop: string; filePolicy: FileMergePolicy; registryPolicy: RegistryMergePolicy }> {
    return this.db.transaction(async () => {
      const d = await this.desktopByName(name);
      if (files) (await this.db.run('UPDATE desktops SET file_policy = ? WHERE id = ?', [files, d.id]));
      if (registry) (await this.db.run('UPDATE desktops SET registry_policy = ? WHERE id = ?', [registry, d.id]));
      if (files || registry) await appendAudit(this.db, actor, 'desktop.merge-policy', `desktop:${d.name}`, { files: files ?? null, registry: registry ?? null });
      const row = (await this.db.get('SELECT file_policy, registry_policy FROM desktops WHERE id = ?', [d.id])) as { file_policy: FileMergePolicy; registry_policy: RegistryMergePolicy };
      return { desktop: d.name, filePolicy: row.file_policy, registryPolicy: row.registry_policy };
    });
  }

  async desktopByName(name: string): Promise<DesktopRow> {
    const row = (await this.db.get(`${this.desktopSelect} WHERE d.name = ?`, [name])) as DesktopRow | undefined;
    if (!row) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name}`, { desktop: name });
    return row;
  }

  async listDesktops(user: User | null): Promise<DesktopInfo[]> {
    const rows = (user && !user.isAdmin
      ? (await this.db.all(`${this.desktopSelect} WHERE d.user_id = ? ORDER BY d.name`, [user.id]))
      : (await this.db.all(`${this.desktopSelect} ORDER BY d.name`))) as DesktopRow[];
    const out: DesktopInfo[] = [];
    for (const r of rows) out.push(await this.desktopInfo(r));
    return out;
  }

  async desktopInfo(row: DesktopRow): Promise<DesktopInfo> {
    const co = await this.activeCheckout(row.id);
    return {
      name: row.name,
      user: row.user_name,
      image: row.image_name,
      version: row.version,
      manifestId: row.manifest_id,
      size: row.size,
      blockSize: row.block_size,
      updatedAt: row.updated_at,
      checkout: co ? await this.holder(co) : null,
      encryption: row.encryption,
      registryScope: registryScopeFromStored(row.registry_include, row.registry_exclude),
    };
  }

  async holder(co: CheckoutRow): Promise<CheckoutHolder> {
    const user = (await this.db.get('SELECT name FROM users WHERE id = ?', [co.user_id])) as { name: string };
    return { checkoutId: co.id, user: user.name, device: co.device, deviceName: co.device_name, since: co.started_at, baseVersion: co.base_version };
  }

  async versionManifest(desktopId: number, version: number): Promise<BlockId> {
    const row = (await this.db.get('SELECT manifest_id FROM desktop_versions WHERE desktop_id = ? AND version = ?', [desktopId, version])) as { manifest_id: string } | undefined;
    if (!row) throw new CarryonError('MANIFEST_NOT_FOUND', `desktop version ${version} not found`);
    return row.manifest_id;
  }

  // ---- checkouts
  async activeCheckout(desktopId: number): Promise<CheckoutRow | null> {
    return ((await this.db.get("SELECT * FROM checkouts WHERE desktop_id = ? AND state = 'active'", [desktopId])) as CheckoutRow | undefined) ?? null;
  }

  async checkoutFor(user: User, id: string): Promise<CheckoutRow> {
    const row = (await this.db.get('SELECT * FROM checkouts WHERE id = ?', [id])) as CheckoutRow | undefined;
    if (!row || (!user.isAdmin && row.user_id !== user.id)) throw new CarryonError('CHECKOUT_NOT_FOUND', `no checkout ${id}`, { checkoutId: id });
    return row;
  }

  /**
   * Who rolled a checkout back, when, and whether its laptop keeps its copy aside (from the rollback
   * request, migration 4); null when the checkout did not end by a rollback.
   */
  async rollbackOf(co: CheckoutRow): Promise<{ by: string; at: string; keepLocal: boolean } | null> {
    if (co.end_reason !== 'rollback') return null;
    const r = (await this.db.get("SELECT requested_by, created_at, detail FROM admin_requests WHERE checkout_id = ? AND kind = 'rollback' ORDER BY id DESC LIMIT 1", [co.id])) as
      { requested_by: string; created_at: string; detail: string | null } | undefined;
    const keepLocal = r?.detail ? (JSON.parse(r.detail) as { keepLocal?: boolean }).keepLocal === true : false;
    return { by: r?.requested_by ?? 'an admin', at: r?.created_at ?? co.ended_at ?? '', keepLocal };
  }

  /**
   * The one answer for a checkout that has ended, from every route that needs it active (blocks,
   * uploads, restore points, commit): a rollback is ROLLED_BACK, saying who and when; the rest CHECKOUT_NOT_FOUND.
   */
  async endedError(co: CheckoutRow): Promise<CarryonError> {
    const rb = await this.rollbackOf(co);
    const desktop = ((await this.db.get('SELECT name FROM desktops WHERE id = ?', [co.desktop_id])) as { name: string } | undefined)?.name ?? null;
    if (rb) {
      return new CarryonError('ROLLED_BACK', `${rb.by} rolled ${desktop ?? 'this desktop'} back at ${rb.at}: this checkout has ended and its copy can no longer be checked in`,
        { checkoutId: co.id, desktop, rolledBackBy: rb.by, rolledBackAt: rb.at, keepLocal: rb.keepLocal });
    }
    return new CarryonError('CHECKOUT_NOT_FOUND', `checkout ${co.id} has ended (${co.state})`, { checkoutId: co.id, state: co.state });
  }

  /** Start a checkout, or hand back the one this device already holds (a resumed check-out). */
  async startCheckout(user: User, desktopName: string, device: string, deviceName: string, actor: Actor): Promise<{ row: CheckoutRow; resumed: boolean; manifestId: BlockId }> {
    return this.db.transaction(async () => {
      const d = await this.desktopFor(user, desktopName);
      const held = await this.activeCheckout(d.id);
      if (held) {
        if (held.device === device && held.user_id === user.id) return { row: held, resumed: true, manifestId: await this.versionManifest(d.id, held.base_version) };
        const h = await this.holder(held);
        throw new CarryonError('CHECKOUT_CONFLICT', `desktop ${d.name} is already checked out by ${h.user} on device ${h.deviceName} since ${h.since}`, { desktop: d.name, holder: h });
      }
      const id = randomUUID();
      (await this.db.run("INSERT INTO checkouts (id, desktop_id, user_id, device, device_name, base_version, state, started_at) VALUES (?, ?, ?, ?, ?, ?, 'active', ?)", [id, d.id, user.id, device, deviceName, d.version, now()]));
      await appendAudit(this.db, { ...actor, device }, 'checkout.start', `desktop:${d.name}`, { checkoutId: id, version: d.version, deviceName });
      return { row: await this.checkoutFor(user, id), resumed: false, manifestId: d.manifest_id };
    });
  }

  async setCheckoutPersonaBase(checkoutId: string, version: number): Promise<number> {
    (await this.db.run('UPDATE checkouts SET persona_base_version = ? WHERE id = ? AND persona_base_version IS NULL', [version, checkoutId]));
    return ((await this.db.get('SELECT persona_base_version AS v FROM checkouts WHERE id = ?', [checkoutId])) as { v: number }).v;
  }

  /**
   * Move the desktop from the checkout's base version to a new one, in one transaction. The caller has
   * checked that every block is present. Re-committing the same manifest answers as the first time did.
   */
  async commitCheckout(user: User, checkoutId: string, device: string, manifestId: BlockId): Promise<{ version: number; previousVersion: number; already: boolean; desktop: string }> {
    return this.db.transaction(async () => {
      const co = await this.checkoutFor(user, checkoutId);
      const d = (await this.db.get('SELECT id, name, version FROM desktops WHERE id = ?', [co.desktop_id])) as { id: number; name: string; version: number };
      if (co.state === 'committed' && co.committed_manifest === manifestId) {
        return { version: co.committed_version!, previousVersion: co.base_version, already: true, desktop: d.name };
      }
      if (co.state !== 'active') throw await this.endedError(co);
      if (co.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${checkoutId} is held by another device`, { checkoutId });
      if (d.version !== co.base_version) {
        throw new CarryonError('VERSION_CONFLICT', `desktop ${d.name} is at version ${d.version}, not ${co.base_version} as when checked out`, { desktop: d.name });
      }
      const t = now();
      // An unchanged disk ends the checkout without a new version.
      const unchanged = manifestId === await this.versionManifest(d.id, d.version);
      const version = unchanged ? d.version : d.version + 1;
      if (!unchanged) {
        (await this.db.run('INSERT INTO desktop_versions (desktop_id, version, manifest_id, checkout_id, created_at) VALUES (?, ?, ?, ?, ?)', [d.id, version, manifestId, checkoutId, t]));
        (await this.db.run('UPDATE desktops SET version = ?, updated_at = ? WHERE id = ?', [version, t, d.id]));
      }
      (await this.db.run("UPDATE checkouts SET state = 'committed', ended_at = ?, committed_version = ?, committed_manifest = ? WHERE id = ?", [t, version, manifestId, checkoutId]));
      return { version, previousVersion: co.base_version, already: false, desktop: d.name };
    });
  }

  async discardCheckout(user: User, checkoutId: string, actor: Actor): Promise<{ desktop: string; already: boolean }> {
    return this.db.transaction(async () => {
      const co = await this.checkoutFor(user, checkoutId);
      const d = (await this.db.get('SELECT name FROM desktops WHERE id = ?', [co.desktop_id])) as { name: string };
      if (co.state !== 'active') return { desktop: d.name, already: true };
      (await this.db.run("UPDATE checkouts SET state = 'discarded', ended_at = ? WHERE id = ?", [now(), checkoutId]));
      await appendAudit(this.db, actor, 'checkout.discard', `desktop:${d.name}`, { checkoutId });
      return { desktop: d.name, already: false };
    });
  }

  // ---- reporting
  async stats() {
    const one = async (sql: string): Promise<number> => Number(((await this.db.get(sql)) as { n: number | null }).n ?? 0);
    return {
      users: await one('SELECT COUNT(*) AS n FROM users'),
      images: await one('SELECT COUNT(*) AS n FROM images'),
      imageVersions: await one('SELECT COUNT(*) AS n FROM image_versions'),
      desktops: await one('SELECT COUNT(*) AS n FROM desktops'),
      desktopVersions: await one('SELECT COUNT(*) AS n FROM desktop_versions'),
      activeCheckouts: await one("SELECT COUNT(*) AS n FROM checkouts WHERE state = 'active'"),
      blocks: await one('SELECT COUNT(*) AS n FROM blocks'),
      uniquePlainBytes: await one('SELECT SUM(plain_size) AS n FROM blocks'),
      storedBytes: await one('SELECT SUM(stored_size) AS n FROM blocks'),
      manifestBytes: await one('SELECT SUM(LENGTH(encoded)) AS n FROM manifests'),
      // What every image version and every desktop version would take as separate full copies.
      logicalBytes: await one(`SELECT SUM(m.size) AS n FROM (SELECT manifest_id FROM image_versions UNION ALL SELECT manifest_id FROM desktop_versions) v JOIN manifests m ON m.id = v.manifest_id`),
      logicalDataBytes: await one(`SELECT SUM(m.data_bytes) AS n FROM (SELECT manifest_id FROM image_versions UNION ALL SELECT manifest_id FROM desktop_versions) v JOIN manifests m ON m.id = v.manifest_id`),
    };
  }
}
