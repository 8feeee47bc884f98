// SqliteMeta: every query the server makes against its database, in one place.
// Owns: users and tokens, manifests, the block index, images, desktops and their versions, checkouts.
// Must not know: HTTP, the CLI. Multi-row changes run in one transaction each.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { CarryonError, DEFAULT_ENCRYPTION_POLICY, type BlockId, type CheckoutHolder, type DesktopInfo, type DiskManifest, type EncryptionPolicy, type FileMergePolicy, type RegistryMergePolicy } from '../src/index.js';
import type { Statement } from 'better-sqlite3';
import { appendAudit, type Actor } from './audit.js';
import type { Db } from './db.js';

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

export class SqliteMeta {
  constructor(readonly db: Db) {}

  // ---- users and tokens
  addUser(name: string, admin: boolean, actor: Actor): { user: string; token: string; admin: boolean } {
    const token = `co_${randomBytes(32).toString('base64url')}`;
    this.db.transaction(() => {
      if (this.db.prepare('SELECT 1 FROM users WHERE name = ?').get(name)) {
        throw new CarryonError('ALREADY_EXISTS', `user ${name} already exists`, { user: name });
      }
      const r = this.db.prepare('INSERT INTO users (name, is_admin, created_at) VALUES (?, ?, ?)').run(name, admin ? 1 : 0, now());
      this.db.prepare('INSERT INTO tokens (user_id, token_hash, created_at) VALUES (?, ?, ?)').run(r.lastInsertRowid, hashToken(token), now());
      appendAudit(this.db, actor, 'user.add', `user:${name}`, { admin });
    })();
    return { user: name, token, admin };
  }

  userByToken(token: string): User | null {
    const row = this.db
      .prepare('SELECT u.id, u.name, u.is_admin FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND t.revoked_at IS NULL')
      .get(hashToken(token)) as { id: number; name: string; is_admin: number } | undefined;
    return row ? { id: row.id, name: row.name, isAdmin: row.is_admin === 1 } : null;
  }

  userByName(name: string): User {
    const row = this.db.prepare('SELECT id, name, is_admin FROM users WHERE name = ?').get(name) as { id: number; name: string; is_admin: number } | undefined;
    if (!row) throw new CarryonError('USER_NOT_FOUND', `no user named ${name}`, { user: name });
    return { id: row.id, name: row.name, isAdmin: row.is_admin === 1 };
  }

  // ---- manifests and blocks
  putManifest(id: BlockId, encoded: Buffer, m: DiskManifest): void {
    this.db
      .prepare('INSERT OR IGNORE INTO manifests (id, size, block_size, block_count, data_bytes, encoded, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(id, m.size, m.blockSize, m.count, m.dataBytes(), encoded, now());
  }

  getManifest(id: BlockId): Buffer {
    const row = this.db.prepare('SELECT encoded FROM manifests WHERE id = ?').get(id) as { encoded: Buffer } | undefined;
    if (!row) throw new CarryonError('MANIFEST_NOT_FOUND', `manifest ${id.slice(0, 12)}… is not stored`, { id });
    return row.encoded;
  }

  private hasBlockStmt?: ReturnType<Db['prepare']>;
  hasBlock(id: BlockId): boolean {
    this.hasBlockStmt ??= this.db.prepare('SELECT 1 FROM blocks WHERE id = ?');
    return this.hasBlockStmt.get(id) !== undefined;
  }

  /**
   * Index blocks already durable in the store and record `grant.ids` as sent by `grant.userId`, in one
   * transaction: a grant is written only once its block is indexed (in this call or before).
   */
  addBlocks(rows: Array<[BlockId, number, number]>, grant?: { userId: number; ids: BlockId[] }): void {
    const ins = this.db.prepare('INSERT OR IGNORE INTO blocks (id, plain_size, stored_size, created_at) VALUES (?, ?, ?, ?)');
    const g = this.db.prepare('INSERT OR IGNORE INTO user_blocks (user_id, block_id) VALUES (?, ?)');
    const t = now();
    this.db.transaction(() => {
      for (const [id, plainSize, storedSize] of rows) ins.run(id, plainSize, storedSize, t);
      if (grant) for (const id of grant.ids) g.run(grant.userId, id);
    })();
  }

  private holdsStmt?: Statement<[number, string]>;
  /** Whether the user sent this block (or their data held it before migration 9): see server/blocks.ts BlockScope. */
  userHolds(userId: number, id: BlockId): boolean {
    this.holdsStmt ??= this.db.prepare<[number, string]>('SELECT 1 FROM user_blocks WHERE user_id = ? AND block_id = ?');
    return this.holdsStmt.get(userId, id) !== undefined;
  }

  /** The manifest of the image version a desktop was made from. */
  imageManifestOf(desktopId: number): BlockId {
    const row = this.db.prepare('SELECT iv.manifest_id FROM desktops d JOIN image_versions iv ON iv.image_id = d.image_id AND iv.version = d.image_version WHERE d.id = ?').get(desktopId) as
      { manifest_id: string } | undefined;
    if (!row) throw new CarryonError('MANIFEST_NOT_FOUND', `the image version of desktop ${desktopId} is not stored`);
    return row.manifest_id;
  }

  // ---- images
  publishImageVersion(name: string, manifestId: BlockId, actor: Actor, detail: Record<string, unknown> = {}): number {
    return this.db.transaction(() => {
      let img = this.db.prepare('SELECT id FROM images WHERE name = ?').get(name) as { id: number } | undefined;
      if (!img) img = { id: Number(this.db.prepare('INSERT INTO images (name, created_at) VALUES (?, ?)').run(name, now()).lastInsertRowid) };
      const v = (this.db.prepare('SELECT COALESCE(MAX(version), 0) AS v FROM image_versions WHERE image_id = ?').get(img.id) as { v: number }).v + 1;
      this.db.prepare('INSERT INTO image_versions (image_id, version, manifest_id, created_at) VALUES (?, ?, ?, ?)').run(img.id, v, manifestId, now());
      appendAudit(this.db, actor, 'image.publish', `image:${name}`, { version: v, manifestId, ...detail });
      return v;
    })();
  }

  // ---- desktops
  /** `encryption`: the desktop's own policy (default: none of its own, so it follows its image, then 'required'). */
  createDesktop(name: string, userName: string, imageName: string, actor: Actor, encryption: EncryptionPolicy | null = null): DesktopInfo {
    this.db.transaction(() => {
      const user = this.userByName(userName);
      const img = this.db
        .prepare('SELECT i.id, v.version, v.manifest_id FROM images i JOIN image_versions v ON v.image_id = i.id WHERE i.name = ? ORDER BY v.version DESC LIMIT 1')
        .get(imageName) as { id: number; version: number; manifest_id: string } | undefined;
      if (!img) throw new CarryonError('IMAGE_NOT_FOUND', `no image named ${imageName}`, { image: imageName });
      if (this.db.prepare('SELECT 1 FROM desktops WHERE name = ?').get(name)) {
        throw new CarryonError('ALREADY_EXISTS', `desktop ${name} already exists`, { desktop: name });
      }
      const t = now();
      const r = this.db
        .prepare('INSERT INTO desktops (name, user_id, image_id, image_version, version, created_at, updated_at, encryption) VALUES (?, ?, ?, ?, 1, ?, ?, ?)')
        .run(name, user.id, img.id, img.version, t, t, encryption);
      // A linked clone: version 1 is the image's manifest itself, so it costs no block storage.
      this.db.prepare('INSERT INTO desktop_versions (desktop_id, version, manifest_id, created_at) VALUES (?, 1, ?, ?)').run(r.lastInsertRowid, img.manifest_id, t);
      appendAudit(this.db, actor, 'desktop.create', `desktop:${name}`, { user: userName, image: imageName, imageVersion: img.version });
    })();
    return this.desktopInfo(this.desktopByName(name));
  }

  private desktopSelect = `SELECT d.id, d.name, d.user_id, u.name AS user_name, i.name AS image_name, d.version, dv.manifest_id, m.size, m.block_size, d.updated_at,
    COALESCE(d.encryption, i.encryption, '${DEFAULT_ENCRYPTION_POLICY}') AS encryption
    FROM desktops d JOIN users u ON u.id = d.user_id JOIN images i ON i.id = d.image_id
    JOIN desktop_versions dv ON dv.desktop_id = d.id AND dv.version = d.version JOIN manifests m ON m.id = dv.manifest_id`;

  /** A desktop the user may see: their own, or any for an admin. Others' are reported as not found. */
  desktopFor(user: User, name: string): DesktopRow {
    const row = this.db.prepare(`${this.desktopSelect} WHERE d.name = ?`).get(name) as DesktopRow | undefined;
    if (!row || (!user.isAdmin && row.user_id !== user.id)) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name} for user ${user.name}`, { desktop: name });
    return row;
  }

  /** How a desktop's persona conflicts resolve (migration 2). */
  desktopPolicies(user: User, name: string): { filePolicy: FileMergePolicy; registryPolicy: RegistryMergePolicy } {
    const d = this.desktopFor(user, name);
    const row = this.db.prepare('SELECT file_policy, registry_policy FROM desktops WHERE id = ?').get(d.id) as { file_policy: FileMergePolicy; registry_policy: RegistryMergePolicy };
    return { filePolicy: row.file_policy, registryPolicy: row.registry_policy };
  }

  /** Set a desktop's merge policies; a change (not a mere look) is audited. */
  setDesktopPolicies(name: string, files: FileMergePolicy | undefined, registry: RegistryMergePolicy | undefined, actor: Actor): { desktop: string; filePolicy: FileMergePolicy; registryPolicy: RegistryMergePolicy } {
    return this.db.transaction(() => {
      const d = this.desktopByName(name);
      if (files) this.db.prepare('UPDATE desktops SET file_policy = ? WHERE id = ?').run(files, d.id);
      if (registry) this.db.prepare('UPDATE desktops SET registry_policy = ? WHERE id = ?').run(registry, d.id);
      if (files || registry) appendAudit(this.db, actor, 'desktop.merge-policy', `desktop:${d.name}`, { files: files ?? null, registry: registry ?? null });
      const row = this.db.prepare('SELECT file_policy, registry_policy FROM desktops WHERE id = ?').get(d.id) as { file_policy: FileMergePolicy; registry_policy: RegistryMergePolicy };
      return { desktop: d.name, filePolicy: row.file_policy, registryPolicy: row.registry_policy };
    })();
  }

  desktopByName(name: string): DesktopRow {
    const row = this.db.prepare(`${this.desktopSelect} WHERE d.name = ?`).get(name) as DesktopRow | undefined;
    if (!row) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name}`, { desktop: name });
    return row;
  }

  listDesktops(user: User | null): DesktopInfo[] {
    const rows = (user && !user.isAdmin
      ? this.db.prepare(`${this.desktopSelect} WHERE d.user_id = ? ORDER BY d.name`).all(user.id)
      : this.db.prepare(`${this.desktopSelect} ORDER BY d.name`).all()) as DesktopRow[];
    return rows.map((r) => this.desktopInfo(r));
  }

  desktopInfo(row: DesktopRow): DesktopInfo {
    const co = this.activeCheckout(row.id);
    return {
      name: row.name,
      user: row.user_name,
      image: row.image_name,
      version: row.version,
      manifestId: row.manifest_id,
      size: row.size,
      blockSize: row.block_size,
      updatedAt: row.updated_at,
      checkout: co ? this.holder(co) : null,
      encryption: row.encryption,
    };
  }

  holder(co: CheckoutRow): CheckoutHolder {
    const user = this.db.prepare('SELECT name FROM users WHERE id = ?').get(co.user_id) as { name: string };
    return { checkoutId: co.id, user: user.name, device: co.device, deviceName: co.device_name, since: co.started_at, baseVersion: co.base_version };
  }

  versionManifest(desktopId: number, version: number): BlockId {
    const row = this.db.prepare('SELECT manifest_id FROM desktop_versions WHERE desktop_id = ? AND version = ?').get(desktopId, version) as { manifest_id: string } | undefined;
    if (!row) throw new CarryonError('MANIFEST_NOT_FOUND', `desktop version ${version} not found`);
    return row.manifest_id;
  }

  // ---- checkouts
  activeCheckout(desktopId: number): CheckoutRow | null {
    return (this.db.prepare("SELECT * FROM checkouts WHERE desktop_id = ? AND state = 'active'").get(desktopId) as CheckoutRow | undefined) ?? null;
  }

  checkoutFor(user: User, id: string): CheckoutRow {
    const row = this.db.prepare('SELECT * FROM checkouts WHERE id = ?').get(id) as CheckoutRow | undefined;
    if (!row || (!user.isAdmin && row.user_id !== user.id)) throw new CarryonError('CHECKOUT_NOT_FOUND', `no checkout ${id}`, { checkoutId: id });
    return row;
  }

  /**
   * Who rolled a checkout back, when, and whether its laptop keeps its copy aside (from the rollback
   * request, migration 4); null when the checkout did not end by a rollback.
   */
  rollbackOf(co: CheckoutRow): { by: string; at: string; keepLocal: boolean } | null {
    if (co.end_reason !== 'rollback') return null;
    const r = this.db.prepare("SELECT requested_by, created_at, detail FROM admin_requests WHERE checkout_id = ? AND kind = 'rollback' ORDER BY id DESC LIMIT 1").get(co.id) as
      { requested_by: string; created_at: string; detail: string | null } | undefined;
    const keepLocal = r?.detail ? (JSON.parse(r.detail) as { keepLocal?: boolean }).keepLocal === true : false;
    return { by: r?.requested_by ?? 'an admin', at: r?.created_at ?? co.ended_at ?? '', keepLocal };
  }

  /**
   * The one answer for a checkout that has ended, from every route that needs it active (blocks,
   * uploads, restore points, commit): a rollback is ROLLED_BACK, saying who and when; the rest CHECKOUT_NOT_FOUND.
   */
  endedError(co: CheckoutRow): CarryonError {
    const rb = this.rollbackOf(co);
    const desktop = (this.db.prepare('SELECT name FROM desktops WHERE id = ?').get(co.desktop_id) as { name: string } | undefined)?.name ?? null;
    if (rb) {
      return new CarryonError('ROLLED_BACK', `${rb.by} rolled ${desktop ?? 'this desktop'} back at ${rb.at}: this checkout has ended and its copy can no longer be checked in`,
        { checkoutId: co.id, desktop, rolledBackBy: rb.by, rolledBackAt: rb.at, keepLocal: rb.keepLocal });
    }
    return new CarryonError('CHECKOUT_NOT_FOUND', `checkout ${co.id} has ended (${co.state})`, { checkoutId: co.id, state: co.state });
  }

  /** Start a checkout, or hand back the one this device already holds (a resumed check-out). */
  startCheckout(user: User, desktopName: string, device: string, deviceName: string, actor: Actor): { row: CheckoutRow; resumed: boolean; manifestId: BlockId } {
    return this.db.transaction(() => {
      const d = this.desktopFor(user, desktopName);
      const held = this.activeCheckout(d.id);
      if (held) {
        if (held.device === device && held.user_id === user.id) return { row: held, resumed: true, manifestId: this.versionManifest(d.id, held.base_version) };
        const h = this.holder(held);
        throw new CarryonError('CHECKOUT_CONFLICT', `desktop ${d.name} is already checked out by ${h.user} on device ${h.deviceName} since ${h.since}`, { desktop: d.name, holder: h });
      }
      const id = randomUUID();
      this.db
        .prepare("INSERT INTO checkouts (id, desktop_id, user_id, device, device_name, base_version, state, started_at) VALUES (?, ?, ?, ?, ?, ?, 'active', ?)")
        .run(id, d.id, user.id, device, deviceName, d.version, now());
      appendAudit(this.db, { ...actor, device }, 'checkout.start', `desktop:${d.name}`, { checkoutId: id, version: d.version, deviceName });
      return { row: this.checkoutFor(user, id), resumed: false, manifestId: d.manifest_id };
    })();
  }

  setCheckoutPersonaBase(checkoutId: string, version: number): number {
    this.db.prepare('UPDATE checkouts SET persona_base_version = ? WHERE id = ? AND persona_base_version IS NULL').run(version, checkoutId);
    return (this.db.prepare('SELECT persona_base_version AS v FROM checkouts WHERE id = ?').get(checkoutId) as { v: number }).v;
  }

  /**
   * Move the desktop from the checkout's base version to a new one, in one transaction. The caller has
   * checked that every block is present. Re-committing the same manifest answers as the first time did.
   */
  commitCheckout(user: User, checkoutId: string, device: string, manifestId: BlockId): { version: number; previousVersion: number; already: boolean; desktop: string } {
    return this.db.transaction(() => {
      const co = this.checkoutFor(user, checkoutId);
      const d = this.db.prepare('SELECT id, name, version FROM desktops WHERE id = ?').get(co.desktop_id) as { id: number; name: string; version: number };
      if (co.state === 'committed' && co.committed_manifest === manifestId) {
        return { version: co.committed_version!, previousVersion: co.base_version, already: true, desktop: d.name };
      }
      if (co.state !== 'active') throw this.endedError(co);
      if (co.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${checkoutId} is held by another device`, { checkoutId });
      if (d.version !== co.base_version) {
        throw new CarryonError('VERSION_CONFLICT', `desktop ${d.name} is at version ${d.version}, not ${co.base_version} as when checked out`, { desktop: d.name });
      }
      const t = now();
      // An unchanged disk ends the checkout without a new version.
      const unchanged = manifestId === this.versionManifest(d.id, d.version);
      const version = unchanged ? d.version : d.version + 1;
      if (!unchanged) {
        this.db.prepare('INSERT INTO desktop_versions (desktop_id, version, manifest_id, checkout_id, created_at) VALUES (?, ?, ?, ?, ?)').run(d.id, version, manifestId, checkoutId, t);
        this.db.prepare('UPDATE desktops SET version = ?, updated_at = ? WHERE id = ?').run(version, t, d.id);
      }
      this.db
        .prepare("UPDATE checkouts SET state = 'committed', ended_at = ?, committed_version = ?, committed_manifest = ? WHERE id = ?")
        .run(t, version, manifestId, checkoutId);
      return { version, previousVersion: co.base_version, already: false, desktop: d.name };
    })();
  }

  discardCheckout(user: User, checkoutId: string, actor: Actor): { desktop: string; already: boolean } {
    return this.db.transaction(() => {
      const co = this.checkoutFor(user, checkoutId);
      const d = this.db.prepare('SELECT name FROM desktops WHERE id = ?').get(co.desktop_id) as { name: string };
      if (co.state !== 'active') return { desktop: d.name, already: true };
      this.db.prepare("UPDATE checkouts SET state = 'discarded', ended_at = ? WHERE id = ?").run(now(), checkoutId);
      appendAudit(this.db, actor, 'checkout.discard', `desktop:${d.name}`, { checkoutId });
      return { desktop: d.name, already: false };
    })();
  }

  // ---- reporting
  stats() {
    const one = (sql: string): number => Number((this.db.prepare(sql).get() as { n: number | null }).n ?? 0);
    return {
      users: one('SELECT COUNT(*) AS n FROM users'),
      images: one('SELECT COUNT(*) AS n FROM images'),
      imageVersions: one('SELECT COUNT(*) AS n FROM image_versions'),
      desktops: one('SELECT COUNT(*) AS n FROM desktops'),
      desktopVersions: one('SELECT COUNT(*) AS n FROM desktop_versions'),
      activeCheckouts: one("SELECT COUNT(*) AS n FROM checkouts WHERE state = 'active'"),
      blocks: one('SELECT COUNT(*) AS n FROM blocks'),
      uniquePlainBytes: one('SELECT SUM(plain_size) AS n FROM blocks'),
      storedBytes: one('SELECT SUM(stored_size) AS n FROM blocks'),
      manifestBytes: one('SELECT SUM(LENGTH(encoded)) AS n FROM manifests'),
      // What every image version and every desktop version would take as separate full copies.
      logicalBytes: one(`SELECT SUM(m.size) AS n FROM (SELECT manifest_id FROM image_versions UNION ALL SELECT manifest_id FROM desktop_versions) v JOIN manifests m ON m.id = v.manifest_id`),
      logicalDataBytes: one(`SELECT SUM(m.data_bytes) AS n FROM (SELECT manifest_id FROM image_versions UNION ALL SELECT manifest_id FROM desktop_versions) v JOIN manifests m ON m.id = v.manifest_id`),
    };
  }
}
