// FleetMeta: devices and their tokens, offline leases, and the audit log (migration 3).
// Owns: minting device tokens (stored as SHA-256 only), listing and revoking tokens, computing a
// checkout's lease from policy, heartbeats, and appending audit rows. Must not know: HTTP, the CLI.
import { createHash, randomBytes } from 'node:crypto';
import { CarryonError, DEFAULT_ENCRYPTION_POLICY, encodeLeaseCode, fmtBytes, leaseCodeEnd, registryScopeFromStored, type EncryptionPolicy, type RegistryScope } from '../src/index.js';
import { grantOutsideImage } from './recompose.js';
import { appendAudit, type Actor } from './audit.js';
import type { Sql } from '../src/index.js';
import { PersonaMeta } from './persona-meta.js';
import type { CheckoutRow, User } from './meta.js';

/** Offline lease when neither the desktop nor its image sets one. */
export const DEFAULT_LEASE_DAYS = 7;
const DAY_MS = 24 * 3600 * 1000;

const now = (): string => new Date().toISOString();
export const hashToken = (token: string): Buffer => createHash('sha256').update(token).digest();

export type { Actor } from './audit.js';

export interface TokenInfo {
  id: number;
  user: string;
  device: string | null;
  deviceName: string | null;
  createdAt: string;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

export interface CheckoutSummary {
  checkoutId: string;
  desktop: string;
  user: string;
  device: string;
  deviceName: string;
  since: string;
  baseVersion: number;
  leaseExpiresAt: string | null;
  lastContactAt: string | null;
  pendingBytes: number | null;
  pendingBlocks: number | null;
  /** The newest restore point this checkout sent: what a lost laptop would still have. */
  lastRestorePoint: { id: number; at: string } | null;
  /** Admin requests not finished yet (force check-in). */
  openRequests: Array<{ id: number; kind: RequestKind; state: RequestState }>;
  /** Whether this checkout must be encrypted (decided from the policy when it started; migration 11). */
  encryptionRequired: boolean;
  /** The escrowed data key's public fingerprint, once the laptop deposited it. */
  escrow: { keyCheck: string; depositedAt: string } | null;
}

export type RequestKind = 'checkin' | 'rollback';
export type RequestState = 'requested' | 'in-progress' | 'done' | 'failed';

export interface AdminRequest {
  id: number;
  checkoutId: string;
  desktop: string;
  kind: RequestKind;
  state: RequestState;
  requestedBy: string;
  detail: unknown;
  /** The detail as a sentence for the admin (CLI and console). */
  summary: string;
  createdAt: string;
  updatedAt: string;
}

export interface RestorePoint {
  id: number;
  desktop: string;
  checkoutId: string;
  baseVersion: number;
  manifestId: string;
  deviceName: string;
  blocksChanged: number;
  createdAt: string;
  /** The persona (profile and registry) was captured too. */
  withPersona: boolean;
}

export interface AuditRow {
  id: number;
  at: string;
  actor: string;
  device: string | null;
  /** The name the device registered with (null for the server's command line or a user token without a device). */
  deviceName: string | null;
  address: string | null;
  action: string;
  target: string | null;
  detail: unknown;
}

export class FleetMeta {
  /** Token ids whose last_used_at was written recently: one write per token per minute, not per request. */
  private readonly touched = new Map<number, number>();

  constructor(readonly db: Sql) {}

  audit(actor: Actor, action: string, target: string | null, detail: Record<string, unknown> = {}): Promise<void> {
    return appendAudit(this.db, actor, action, target, detail);
  }

  async auditLog(limit = 200, since?: number): Promise<AuditRow[]> {
    const rows = (await this.db.all('SELECT a.*, dv.name AS device_name FROM audit a LEFT JOIN devices dv ON dv.id = a.device WHERE a.id > ? ORDER BY a.id DESC LIMIT ?', [since ?? 0, Math.min(Math.max(1, limit), 10_000)])) as Array<Omit<AuditRow, 'detail' | 'deviceName'> & { detail: string | null; device_name: string | null }>;
    return rows.map(({ device_name, ...r }) => ({ ...r, deviceName: device_name, detail: r.detail ? (JSON.parse(r.detail) as unknown) : null }));
  }

  /** The user (and device, for a device token) behind a bearer token; null when unknown or revoked. */
  async authenticate(token: string, address: string | null): Promise<{ user: User; tokenId: number; device: string | null } | null> {
    const row = (await this.db.get(`SELECT t.id AS token_id, t.device_id, u.id, u.name, u.is_admin FROM tokens t JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = ? AND t.revoked_at IS NULL`, [hashToken(token)])) as { token_id: number; device_id: string | null; id: number; name: string; is_admin: number } | undefined;
    if (!row) return null;
    const t = Date.now();
    if ((this.touched.get(row.token_id) ?? 0) < t - 60_000) {
      this.touched.set(row.token_id, t);
      const at = new Date(t).toISOString();
      (await this.db.run('UPDATE tokens SET last_used_at = ? WHERE id = ?', [at, row.token_id]));
      if (row.device_id) (await this.db.run('UPDATE devices SET last_seen_at = ?, last_address = ? WHERE id = ?', [at, address, row.device_id]));
    }
    return { user: { id: row.id, name: row.name, isAdmin: row.is_admin === 1 }, tokenId: row.token_id, device: row.device_id };
  }

  /**
   * Register a laptop as a device of `user` and mint its own token. A device id already registered to
   * another user is refused; registering again (a new login) replaces the device's old tokens.
   */
  async registerDevice(user: User, deviceId: string, name: string, actor: Actor): Promise<{ device: string; token: string }> {
    const token = `cod_${randomBytes(32).toString('base64url')}`;
    await this.db.transaction(async () => {
      const existing = (await this.db.get('SELECT user_id FROM devices WHERE id = ?', [deviceId])) as { user_id: number } | undefined;
      if (existing && existing.user_id !== user.id) throw new CarryonError('FORBIDDEN', `device ${deviceId} belongs to another user`, { device: deviceId });
      const t = now();
      if (existing) {
        (await this.db.run('UPDATE devices SET name = ? WHERE id = ?', [name, deviceId]));
        (await this.db.run('UPDATE tokens SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL', [t, deviceId]));
      } else {
        (await this.db.run('INSERT INTO devices (id, user_id, name, created_at) VALUES (?, ?, ?, ?)', [deviceId, user.id, name, t]));
      }
      (await this.db.run('INSERT INTO tokens (user_id, token_hash, created_at, device_id) VALUES (?, ?, ?, ?)', [user.id, hashToken(token), t, deviceId]));
      await this.audit(actor, 'device.register', `device:${deviceId}`, { user: user.name, name, again: existing !== undefined });
    });
    return { device: deviceId, token };
  }

  async deviceName(id: string): Promise<string | null> {
    return ((await this.db.get('SELECT name FROM devices WHERE id = ?', [id])) as { name: string } | undefined)?.name ?? null;
  }

  async tokens(): Promise<TokenInfo[]> {
    const rows = (await this.db.all(`SELECT t.id, u.name AS user, t.device_id AS device, d.name AS device_name, t.created_at, t.last_used_at, t.revoked_at
        FROM tokens t JOIN users u ON u.id = t.user_id LEFT JOIN devices d ON d.id = t.device_id ORDER BY t.id`)) as Array<{ id: number; user: string; device: string | null; device_name: string | null; created_at: string; last_used_at: string | null; revoked_at: string | null }>;
    return rows.map((r) => ({ id: r.id, user: r.user, device: r.device, deviceName: r.device_name, createdAt: r.created_at, lastUsedAt: r.last_used_at, revokedAt: r.revoked_at }));
  }

  async revokeToken(id: number, actor: Actor): Promise<TokenInfo> {
    return this.db.transaction(async () => {
      const t = (await this.tokens()).find((x) => x.id === id);
      if (!t) throw new CarryonError('TOKEN_NOT_FOUND', `no token with id ${id}`, { token: id });
      if (!t.revokedAt) {
        (await this.db.run('UPDATE tokens SET revoked_at = ? WHERE id = ?', [now(), id]));
        await this.audit(actor, 'token.revoke', `token:${id}`, { user: t.user, device: t.device });
      }
      return (await this.tokens()).find((x) => x.id === id)!;
    });
  }

  /** Lease length of a desktop's checkouts: the desktop's policy, else its image's, else the default. */
  async leaseDays(desktopId: number): Promise<number> {
    const r = (await this.db.get('SELECT d.lease_days AS d, i.lease_days AS i FROM desktops d JOIN images i ON i.id = d.image_id WHERE d.id = ?', [desktopId])) as { d: number | null; i: number | null };
    return r.d ?? r.i ?? DEFAULT_LEASE_DAYS;
  }

  async setLeaseDays(kind: 'desktop' | 'image', name: string, days: number | null, actor: Actor): Promise<void> {
    if (days !== null && !(days > 0 && days <= 365)) throw new CarryonError('INVALID_ARGUMENT', 'lease days must be more than 0 and at most 365');
    const r = (await this.db.run(`UPDATE ${kind === 'desktop' ? 'desktops' : 'images'} SET lease_days = ? WHERE name = ?`, [days, name]));
    if (r.changes === 0) throw new CarryonError(kind === 'desktop' ? 'DESKTOP_NOT_FOUND' : 'IMAGE_NOT_FOUND', `no ${kind} named ${name}`, { [kind]: name });
    await this.audit(actor, `${kind}.lease-policy`, `${kind}:${name}`, { leaseDays: days });
  }

  /** Encryption policy of a desktop: its own setting, else its image's, else required (migration 11). */
  async encryptionPolicy(desktopId: number): Promise<{ own: EncryptionPolicy | null; image: EncryptionPolicy | null; effective: EncryptionPolicy }> {
    const r = (await this.db.get('SELECT d.encryption AS d, i.encryption AS i FROM desktops d JOIN images i ON i.id = d.image_id WHERE d.id = ?', [desktopId])) as
      { d: EncryptionPolicy | null; i: EncryptionPolicy | null } | undefined;
    if (!r) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop with id ${desktopId}`);
    return { own: r.d, image: r.i, effective: r.d ?? r.i ?? DEFAULT_ENCRYPTION_POLICY };
  }

  /** Whether laptops must encrypt their copies of a desktop, or of an image's desktops (null: follow the image, then the default). Applies to check-outs that start from now on. */
  async setEncryption(kind: 'desktop' | 'image', name: string, policy: EncryptionPolicy | null, actor: Actor): Promise<void> {
    if (policy !== null && policy !== 'required' && policy !== 'off') throw new CarryonError('INVALID_ARGUMENT', 'encryption must be required or off (or cleared)');
    await this.db.transaction(async () => {
      const r = (await this.db.run(`UPDATE ${kind === 'desktop' ? 'desktops' : 'images'} SET encryption = ? WHERE name = ?`, [policy, name]));
      if (r.changes === 0) throw new CarryonError(kind === 'desktop' ? 'DESKTOP_NOT_FOUND' : 'IMAGE_NOT_FOUND', `no ${kind} named ${name}`, { [kind]: name });
      await this.audit(actor, `${kind}.encryption-policy`, `${kind}:${name}`, { encryption: policy });
    });
  }

  /** Start (or restart, on contact) a checkout's lease: now + its policy. */
  async renewLease(co: CheckoutRow, pending?: { bytes: number; blocks: number }): Promise<string> {
    const floor = ((await this.db.get('SELECT lease_floor AS f FROM checkouts WHERE id = ?', [co.id])) as { f: string | null } | undefined)?.f;
    const expires = new Date(Math.max(Date.now() + await this.leaseDays(co.desktop_id) * DAY_MS, floor ? Date.parse(floor) : 0)).toISOString();
    if (pending) {
      (await this.db.run('UPDATE checkouts SET lease_expires_at = ?, last_contact_at = ?, pending_bytes = ?, pending_blocks = ? WHERE id = ?', [expires, now(), pending.bytes, pending.blocks, co.id]));
    } else {
      (await this.db.run('UPDATE checkouts SET lease_expires_at = ?, last_contact_at = ? WHERE id = ?', [expires, now(), co.id]));
    }
    return expires;
  }

  /** The checkout's secret for offline lease codes, made on first use (migration 5). */
  async leaseSecret(checkoutId: string): Promise<Buffer> {
    const row = (await this.db.get('SELECT lease_secret FROM checkouts WHERE id = ?', [checkoutId])) as { lease_secret: Buffer | null } | undefined;
    if (!row) throw new CarryonError('CHECKOUT_NOT_FOUND', `no checkout ${checkoutId}`, { checkoutId });
    if (row.lease_secret) return row.lease_secret;
    const secret = randomBytes(16);
    (await this.db.run('UPDATE checkouts SET lease_secret = ? WHERE id = ? AND lease_secret IS NULL', [secret, checkoutId]));
    return ((await this.db.get('SELECT lease_secret FROM checkouts WHERE id = ?', [checkoutId])) as { lease_secret: Buffer }).lease_secret;
  }

  /**
   * A code the user types on the laptop, offline, to extend its lease (read over the phone). It carries
   * the new end itself (`days` from the later of now and the lease's end, to the whole hour), so both
   * sides agree on it. The server's lease does not move until the laptop reports the code used (useLeaseCodes).
   */
  async leaseCode(checkoutId: string, days: number, actor: Actor): Promise<{ code: string; days: number; seq: number; leaseExpiresAt: string; desktop: string; checkoutId: string; serverLeaseExpiresAt: string | null; lastContactAt: string | null }> {
    if (!Number.isInteger(days) || days < 1 || days > 255) throw new CarryonError('INVALID_ARGUMENT', 'a lease code extends by 1 to 255 whole days');
    return this.db.transaction(async () => {
      const co = await this.checkout(checkoutId);
      const seq = ((await this.db.get('SELECT lease_code_seq AS s FROM checkouts WHERE id = ?', [checkoutId])) as { s: number }).s + 1;
      const until = leaseCodeEnd(Math.max(Date.now(), co.leaseExpiresAt ? Date.parse(co.leaseExpiresAt) : 0) + days * DAY_MS);
      const code = encodeLeaseCode(await this.leaseSecret(checkoutId), checkoutId, until, seq);
      const leaseExpiresAt = new Date(until).toISOString();
      (await this.db.run('UPDATE checkouts SET lease_code_seq = ? WHERE id = ?', [seq, checkoutId]));
      (await this.db.run('INSERT INTO lease_codes (checkout_id, seq, days, lease_expires_at, issued_by, issued_at) VALUES (?, ?, ?, ?, ?, ?)', [checkoutId, seq, days, leaseExpiresAt, actor.name, now()]));
      await this.audit(actor, 'lease.code', `desktop:${co.desktop}`, { checkoutId, days, seq, leaseExpiresAt });
      return { code, days, seq, leaseExpiresAt, desktop: co.desktop, checkoutId, serverLeaseExpiresAt: co.leaseExpiresAt, lastContactAt: co.lastContactAt };
    });
  }

  /**
   * The laptop reports the newest lease code it used (at any contact): codes up to it not applied yet
   * become the lease's floor now. A code never shortens a lease.
   */
  async useLeaseCodes(co: CheckoutRow, usedSeq: number, actor: Actor): Promise<void> {
    if (!(usedSeq > 0)) return;
    await this.db.transaction(async () => {
      const codes = (await this.db.all('SELECT seq, lease_expires_at AS until FROM lease_codes WHERE checkout_id = ? AND seq <= ? AND used_at IS NULL ORDER BY seq', [co.id, usedSeq])) as Array<{ seq: number; until: string }>;
      for (const c of codes) {
        const r = (await this.db.get('SELECT lease_expires_at AS e, lease_floor AS f FROM checkouts WHERE id = ?', [co.id])) as { e: string | null; f: string | null };
        const later = (a: string | null): string => (a && Date.parse(a) > Date.parse(c.until) ? a : c.until);
        (await this.db.run('UPDATE checkouts SET lease_expires_at = ?, lease_floor = ? WHERE id = ?', [later(r.e), later(r.f), co.id]));
        (await this.db.run('UPDATE lease_codes SET used_at = ? WHERE checkout_id = ? AND seq = ?', [now(), co.id, c.seq]));
        const desktop = ((await this.db.get('SELECT name FROM desktops WHERE id = ?', [co.desktop_id])) as { name: string }).name;
        await this.audit(actor, 'lease.code-used', `desktop:${desktop}`, { checkoutId: co.id, seq: c.seq, leaseExpiresAt: c.until });
      }
    });
  }

  /** An admin pushes a lease out by `days` from the later of now and its current expiry. */
  async extendLease(checkoutId: string, days: number, actor: Actor): Promise<CheckoutSummary> {
    if (!(days > 0 && days <= 365)) throw new CarryonError('INVALID_ARGUMENT', 'days must be more than 0 and at most 365');
    return this.db.transaction(async () => {
      const co = await this.checkout(checkoutId);
      const from = Math.max(Date.now(), co.leaseExpiresAt ? Date.parse(co.leaseExpiresAt) : 0);
      const expires = new Date(from + days * DAY_MS).toISOString();
      (await this.db.run('UPDATE checkouts SET lease_expires_at = ?, lease_floor = ? WHERE id = ?', [expires, expires, checkoutId]));
      await this.audit(actor, 'lease.extend', `checkout:${checkoutId}`, { desktop: co.desktop, days, leaseExpiresAt: expires });
      return await this.checkout(checkoutId);
    });
  }

  private summarySelect = `SELECT c.id, d.name AS desktop, u.name AS user, c.device, c.device_name, c.started_at, c.base_version,
      c.lease_expires_at, c.last_contact_at, c.pending_bytes, c.pending_blocks, c.encryption_required, e.key_check AS escrow_key_check, e.created_at AS escrow_at
    FROM checkouts c JOIN desktops d ON d.id = c.desktop_id JOIN users u ON u.id = c.user_id LEFT JOIN checkout_escrows e ON e.checkout_id = c.id`;

  private async toSummary(r: Record<string, unknown>): Promise<CheckoutSummary> {
    return {
      checkoutId: r.id as string, desktop: r.desktop as string, user: r.user as string, device: r.device as string, deviceName: r.device_name as string,
      since: r.started_at as string, baseVersion: r.base_version as number, leaseExpiresAt: (r.lease_expires_at as string | null) ?? null,
      lastContactAt: (r.last_contact_at as string | null) ?? null, pendingBytes: (r.pending_bytes as number | null) ?? null, pendingBlocks: (r.pending_blocks as number | null) ?? null,
      openRequests: (await this.requests(r.id as string, true)).map((q) => ({ id: q.id, kind: q.kind, state: q.state })),
      lastRestorePoint: ((p) => (p ? { id: p.id, at: p.created_at } : null))((await this.db.get('SELECT id, created_at FROM restore_points WHERE checkout_id = ? ORDER BY id DESC LIMIT 1', [r.id as string])) as { id: number; created_at: string } | undefined),
      encryptionRequired: r.encryption_required === 1,
      escrow: r.escrow_key_check ? { keyCheck: r.escrow_key_check as string, depositedAt: r.escrow_at as string } : null,
    };
  }

  private requestSelect = `SELECT r.*, d.name AS desktop FROM admin_requests r JOIN checkouts c ON c.id = r.checkout_id JOIN desktops d ON d.id = c.desktop_id`;

  private toRequest(r: Record<string, unknown>): AdminRequest {
    const detail = r.detail ? (JSON.parse(r.detail as string) as unknown) : null;
    return {
      id: r.id as number, checkoutId: r.checkout_id as string, desktop: r.desktop as string, kind: r.kind as RequestKind, state: r.state as RequestState,
      requestedBy: r.requested_by as string, detail, summary: describeRequest(r.kind as RequestKind, r.state as RequestState, detail), createdAt: r.created_at as string, updatedAt: r.updated_at as string,
    };
  }

  async requests(checkoutId?: string, openOnly = false): Promise<AdminRequest[]> {
    const where = [checkoutId ? 'r.checkout_id = ?' : null, openOnly ? "r.state IN ('requested', 'in-progress')" : null].filter(Boolean);
    const sql = `${this.requestSelect}${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY r.id DESC LIMIT 500`;
    return ((await this.db.all(sql, [...(checkoutId ? [checkoutId] : [])])) as Array<Record<string, unknown>>).map((r) => this.toRequest(r));
  }

  async request(id: number): Promise<AdminRequest> {
    const r = (await this.db.get(`${this.requestSelect} WHERE r.id = ?`, [id])) as Record<string, unknown> | undefined;
    if (!r) throw new CarryonError('NOT_FOUND', `no admin request ${id}`, { request: id });
    return this.toRequest(r);
  }

  /** Queue a forced check-in: the device's agent checks in at its next contact. Asking twice queues it once. */
  async requestCheckin(checkoutId: string, actor: Actor): Promise<AdminRequest> {
    return this.db.transaction(async () => {
      const co = await this.checkout(checkoutId);
      const open = (await this.requests(checkoutId, true)).find((r) => r.kind === 'checkin');
      if (open) return open;
      const t = now();
      const id = (await this.db.get<{ id: number }>("INSERT INTO admin_requests (checkout_id, kind, state, requested_by, created_at, updated_at) VALUES (?, 'checkin', 'requested', ?, ?, ?) RETURNING id", [checkoutId, actor.name, t, t]))!.id;
      await this.audit(actor, 'checkin.request', `desktop:${co.desktop}`, { checkoutId, request: id });
      return await this.request(id);
    });
  }

  /**
   * Roll a checkout back: it ends now, the desktop stays at (returns to) its last server version and is
   * free to check out again; the device is told at its next contact to remove its copy.
   */
  async rollback(checkoutId: string, actor: Actor, restorePoint?: number): Promise<AdminRequest> {
    return this.db.transaction(async () => {
      const co = await this.checkout(checkoutId);
      if (restorePoint !== undefined && (await this.restorePoint(restorePoint)).desktop !== co.desktop) throw new CarryonError('NOT_FOUND', `restore point ${restorePoint} is not of desktop ${co.desktop}`, { restorePoint });
      const t = now();
      (await this.db.run("UPDATE checkouts SET state = 'discarded', ended_at = ?, end_reason = 'rollback' WHERE id = ? AND state = 'active'", [t, checkoutId]));
      // A forced check-in still waiting can no longer happen.
      (await this.db.run("UPDATE admin_requests SET state = 'failed', detail = ?, updated_at = ? WHERE checkout_id = ? AND kind = 'checkin' AND state IN ('requested', 'in-progress')", [JSON.stringify({ reason: 'rolled back' }), t, checkoutId]));
      const keep = ((await this.db.get('SELECT rollback_keeps_local AS k FROM desktops d JOIN checkouts c ON c.desktop_id = d.id WHERE c.id = ?', [checkoutId])) as { k: number }).k === 1;
      const id = (await this.db.get<{ id: number }>("INSERT INTO admin_requests (checkout_id, kind, state, requested_by, detail, created_at, updated_at) VALUES (?, 'rollback', 'requested', ?, ?, ?, ?) RETURNING id", [checkoutId, actor.name, JSON.stringify({ keepLocal: keep }), t, t]))!.id;
      await this.audit(actor, 'checkout.rollback', `desktop:${co.desktop}`, { checkoutId, request: id, version: co.baseVersion, keepLocal: keep, restorePoint: restorePoint ?? null });
      if (restorePoint !== undefined) await this.restoreDesktop(co.desktop, restorePoint, actor);
      return await this.request(id);
    });
  }

  /** The device reports progress on a request of one of its checkouts. */
  async updateRequest(checkoutId: string, id: number, state: RequestState, detail: Record<string, unknown>, actor: Actor): Promise<AdminRequest> {
    return this.db.transaction(async () => {
      const r = await this.request(id);
      if (r.checkoutId !== checkoutId) throw new CarryonError('NOT_FOUND', `no admin request ${id} for checkout ${checkoutId}`, { request: id });
      // Final: a late report changes nothing, except that the agent's own "done" may add what it sent to a
      // request the commit closed first (finishCheckinRequests), without a second audit row.
      if (r.state === 'failed' || (r.state === 'done' && state !== 'done')) return r;
      const merged = { ...((r.detail as Record<string, unknown> | null) ?? {}), ...detail };
      (await this.db.run('UPDATE admin_requests SET state = ?, detail = ?, updated_at = ? WHERE id = ?', [state, JSON.stringify(merged), now(), id]));
      if (state !== r.state) await this.audit(actor, `${r.kind}.${state}`, `desktop:${r.desktop}`, { checkoutId, request: id, ...detail });
      return await this.request(id);
    });
  }

  /**
   * A check-in committed: the checkout's open forced check-in is done, whoever checked in (the agent for
   * the request, or the user with `carryon checkin`). In the commit's transaction, so it moves once
   * however many instances hear of it; the agent's own report afterwards finds it final.
   */
  async finishCheckinRequests(checkoutId: string, version: number, actor: Actor): Promise<void> {
    for (const r of (await this.requests(checkoutId, true)).filter((q) => q.kind === 'checkin')) await this.updateRequest(checkoutId, r.id, 'done', { version }, actor);
  }

  // ---- restore points (migration 6)
  private rpSelect = 'SELECT r.*, d.name AS desktop FROM restore_points r JOIN desktops d ON d.id = r.desktop_id';

  private async toRestorePoint(r: Record<string, unknown>): Promise<RestorePoint> {
    return { id: r.id as number, desktop: r.desktop as string, checkoutId: r.checkout_id as string, baseVersion: r.base_version as number, manifestId: r.manifest_id as string,
      deviceName: r.device_name as string, blocksChanged: r.blocks_changed as number, createdAt: r.created_at as string, withPersona: r.persona_snapshot_id !== null && r.persona_snapshot_id !== undefined };
  }

  async addRestorePoint(co: CheckoutRow, manifestId: string, blocksChanged: number, actor: Actor, personaSnapshotId: string | null = null): Promise<RestorePoint> {
    return this.db.transaction(async () => {
      const t = now();
      const id = (await this.db.get<{ id: number }>('INSERT INTO restore_points (desktop_id, checkout_id, base_version, manifest_id, device_name, blocks_changed, created_at, persona_snapshot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id', [co.desktop_id, co.id, co.base_version, manifestId, co.device_name, blocksChanged, t, personaSnapshotId]))!.id;
      const rp = await this.restorePoint(id);
      await this.audit(actor, 'restore-point.create', `desktop:${rp.desktop}`, { checkoutId: co.id, restorePoint: id, blocksChanged });
      return rp;
    });
  }

  async restorePoint(id: number): Promise<RestorePoint> {
    const r = (await this.db.get(`${this.rpSelect} WHERE r.id = ?`, [id])) as Record<string, unknown> | undefined;
    if (!r) throw new CarryonError('NOT_FOUND', `no restore point ${id}`, { restorePoint: id });
    return await this.toRestorePoint(r);
  }

  async restorePoints(desktopId: number): Promise<RestorePoint[]> {
    return Promise.all(((await this.db.all(`${this.rpSelect} WHERE r.desktop_id = ? ORDER BY r.id DESC`, [desktopId])) as Array<Record<string, unknown>>).map((r) => this.toRestorePoint(r)));
  }

  /**
   * Make a restore point the desktop's next version (for a lost laptop: after a rollback, or when the
   * checkout already ended). Refused while someone holds the desktop: roll that checkout back first.
   */
  async restoreDesktop(desktopName: string, pointId: number, actor: Actor): Promise<{ desktop: string; version: number; restorePoint: number; personaVersion: number | null }> {
    return this.db.transaction(async () => {
      const rp = await this.restorePoint(pointId);
      if (rp.desktop !== desktopName) throw new CarryonError('NOT_FOUND', `restore point ${pointId} is not of desktop ${desktopName}`, { restorePoint: pointId });
      const d = (await this.db.get('SELECT id, version FROM desktops WHERE name = ?', [desktopName])) as { id: number; version: number };
      const held = (await this.db.get("SELECT id FROM checkouts WHERE desktop_id = ? AND state = 'active'", [d.id])) as { id: string } | undefined;
      if (held) throw new CarryonError('CHECKOUT_CONFLICT', `${desktopName} is checked out (${held.id}): roll that checkout back to this restore point instead`, { desktop: desktopName, checkoutId: held.id });
      // A point taken before a refresh or recompose names blocks of the image the desktop had then.
      await grantOutsideImage(this.db, d.id, rp.manifestId);
      const version = d.version + 1;
      const t = now();
      (await this.db.run('INSERT INTO desktop_versions (desktop_id, version, manifest_id, checkout_id, created_at, restore_point_id) VALUES (?, ?, ?, NULL, ?, ?)', [d.id, version, rp.manifestId, t, pointId]));
      (await this.db.run('UPDATE desktops SET version = ?, updated_at = ? WHERE id = ?', [version, t, d.id]));
      // The persona captured with the point becomes the user's next persona version.
      const snap = ((await this.db.get('SELECT persona_snapshot_id AS s FROM restore_points WHERE id = ?', [pointId])) as { s: string | null }).s;
      let personaVersion: number | null = null;
      if (snap) {
        const userId = ((await this.db.get('SELECT user_id AS u FROM desktops WHERE id = ?', [d.id])) as { u: number }).u;
        personaVersion = await new PersonaMeta(this.db).addVersion(userId, snap, { source: 'push', deviceName: `restore point #${pointId}`, checkoutId: null, mergeReport: null });
      }
      await this.audit(actor, 'desktop.restore', `desktop:${desktopName}`, { restorePoint: pointId, version, from: d.version, personaVersion });
      return { desktop: desktopName, version, restorePoint: pointId, personaVersion };
    });
  }

  async replicateMinutes(desktopId: number): Promise<number | null> {
    return ((await this.db.get('SELECT replicate_minutes AS m FROM desktops WHERE id = ?', [desktopId])) as { m: number | null }).m;
  }

  async setReplicateMinutes(desktop: string, minutes: number | null, actor: Actor): Promise<void> {
    if (minutes !== null && !(minutes >= 1 && minutes <= 7 * 24 * 60)) throw new CarryonError('INVALID_ARGUMENT', 'minutes must be 1 to 10080');
    const r = (await this.db.run('UPDATE desktops SET replicate_minutes = ? WHERE name = ?', [minutes, desktop]));
    if (r.changes === 0) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${desktop}`, { desktop });
    await this.audit(actor, 'desktop.replicate-policy', `desktop:${desktop}`, { minutes });
  }

  /**
   * Delete a desktop with its history (versions, checkouts, restore points, requests). Refused while it
   * is checked out: roll that back (or let it check in) first. Blocks stay in the store (shared).
   */
  async deleteDesktop(name: string, actor: Actor): Promise<{ desktop: string; versions: number; restorePoints: number }> {
    return this.db.transaction(async () => {
      const d = (await this.db.get('SELECT id FROM desktops WHERE name = ?', [name])) as { id: number } | undefined;
      if (!d) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name}`, { desktop: name });
      const held = (await this.db.get("SELECT id FROM checkouts WHERE desktop_id = ? AND state = 'active'", [d.id])) as { id: string } | undefined;
      if (held) throw new CarryonError('CHECKOUT_CONFLICT', `${name} is checked out (${held.id}): roll it back or let it check in first`, { desktop: name, checkoutId: held.id });
      (await this.db.run('DELETE FROM desktop_recompose WHERE desktop_id = ?', [d.id]));
      const versions = (await this.db.run('DELETE FROM desktop_versions WHERE desktop_id = ?', [d.id])).changes;
      (await this.db.run('DELETE FROM admin_requests WHERE checkout_id IN (SELECT id FROM checkouts WHERE desktop_id = ?)', [d.id]));
      const restorePoints = (await this.db.run('DELETE FROM restore_points WHERE desktop_id = ?', [d.id])).changes;
      (await this.db.run('DELETE FROM checkouts WHERE desktop_id = ?', [d.id]));
      (await this.db.run('DELETE FROM desktops WHERE id = ?', [d.id]));
      await this.audit(actor, 'desktop.delete', `desktop:${name}`, { versions, restorePoints });
      return { desktop: name, versions, restorePoints };
    });
  }

  /** A desktop's fleet and merge policies, as set (null: the default applies). */
  async desktopPolicy(name: string): Promise<{ desktop: string; leaseDays: number | null; effectiveLeaseDays: number; replicateMinutes: number | null; rollbackKeepsLocal: boolean; files: string; registry: string;
    encryption: EncryptionPolicy | null; effectiveEncryption: EncryptionPolicy; registryInclude: string[] | null; registryExclude: string[] | null; registryScope: RegistryScope }> {
    const r = (await this.db.get('SELECT id, lease_days, replicate_minutes, rollback_keeps_local, file_policy, registry_policy, registry_include, registry_exclude FROM desktops WHERE name = ?', [name])) as
      { id: number; lease_days: number | null; replicate_minutes: number | null; rollback_keeps_local: number; file_policy: string; registry_policy: string; registry_include: string | null; registry_exclude: string | null } | undefined;
    if (!r) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${name}`, { desktop: name });
    const enc = await this.encryptionPolicy(r.id);
    return { desktop: name, leaseDays: r.lease_days, effectiveLeaseDays: await this.leaseDays(r.id), replicateMinutes: r.replicate_minutes, rollbackKeepsLocal: r.rollback_keeps_local === 1, files: r.file_policy, registry: r.registry_policy,
      encryption: enc.own, effectiveEncryption: enc.effective,
      registryInclude: r.registry_include === null ? null : (JSON.parse(r.registry_include) as string[]),
      registryExclude: r.registry_exclude === null ? null : (JSON.parse(r.registry_exclude) as string[]),
      registryScope: registryScopeFromStored(r.registry_include, r.registry_exclude) };
  }

  /** An image's own policies (its desktops follow them unless they set their own). */
  async imagePolicy(name: string): Promise<{ image: string; leaseDays: number | null; encryption: EncryptionPolicy | null; effectiveEncryption: EncryptionPolicy }> {
    const r = (await this.db.get('SELECT lease_days, encryption FROM images WHERE name = ?', [name])) as { lease_days: number | null; encryption: EncryptionPolicy | null } | undefined;
    if (!r) throw new CarryonError('IMAGE_NOT_FOUND', `no image named ${name}`, { image: name });
    return { image: name, leaseDays: r.lease_days, encryption: r.encryption, effectiveEncryption: r.encryption ?? DEFAULT_ENCRYPTION_POLICY };
  }

  async setRollbackKeepsLocal(desktop: string, keep: boolean, actor: Actor): Promise<void> {
    const r = (await this.db.run('UPDATE desktops SET rollback_keeps_local = ? WHERE name = ?', [keep ? 1 : 0, desktop]));
    if (r.changes === 0) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${desktop}`, { desktop });
    await this.audit(actor, 'desktop.rollback-policy', `desktop:${desktop}`, { keepLocal: keep });
  }

  async activeCheckouts(): Promise<CheckoutSummary[]> {
    return Promise.all(((await this.db.all(`${this.summarySelect} WHERE c.state = 'active' ORDER BY c.started_at`)) as Array<Record<string, unknown>>).map((r) => this.toSummary(r)));
  }

  async checkout(id: string): Promise<CheckoutSummary> {
    const r = (await this.db.get(`${this.summarySelect} WHERE c.id = ? AND c.state = 'active'`, [id])) as Record<string, unknown> | undefined;
    if (!r) throw new CarryonError('CHECKOUT_NOT_FOUND', `no active checkout ${id}`, { checkoutId: id });
    return await this.toSummary(r);
  }
}

/**
 * A request's detail (reported by the device, parsed at the boundary as a bounded JSON object) as a
 * sentence: what happened, and for a failure what the device said.
 */
export function describeRequest(kind: RequestKind, state: RequestState, detail: unknown): string {
  const d = (detail && typeof detail === 'object' && !Array.isArray(detail) ? detail : {}) as Record<string, unknown>;
  const str = (v: unknown): string | null => (typeof v === 'string' && v.length > 0 ? v.slice(0, 500) : null);
  const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const parts: string[] = [];
  if (kind === 'rollback' && typeof d.keepLocal === 'boolean') parts.push(d.keepLocal ? 'the laptop keeps its copy aside' : 'the laptop deletes its copy');
  if (str(d.reason)) parts.push(`ended: ${str(d.reason)}`);
  if (str(d.waiting)) parts.push(`waiting: ${str(d.waiting)}`);
  if (str(d.startedAt) && state === 'in-progress') parts.push(`started ${str(d.startedAt)}`);
  if (num(d.version) !== null) parts.push(`checked in as version ${num(d.version)}`);
  if (num(d.bytesSent) !== null) parts.push(`${fmtBytes(num(d.bytesSent)!)} sent`);
  if (str(d.scanMode)) parts.push(d.scanMode === 'dirty-map' ? 'read only the blocks written' : 'scanned the whole disk');
  if (kind === 'rollback' && state === 'done') parts.push(str(d.keptAt) ? `copy kept at ${str(d.keptAt)} on the laptop` : 'copy removed from the laptop');
  if (num(d.removedBlocks) !== null) parts.push(`${num(d.removedBlocks)} cache blocks removed`);
  const err = d.error && typeof d.error === 'object' ? (d.error as Record<string, unknown>) : null;
  if (err) parts.push(`${state === 'failed' ? 'failed' : 'last try failed'}: ${str(err.code) ?? 'error'}: ${str(err.message) ?? ''}`.trim());
  if (parts.length === 0) return state === 'requested' ? 'waiting for the laptop\'s next contact' : '';
  return parts.join('; ');
}
