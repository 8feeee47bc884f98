// LocalState: the laptop's own record, in HOME/state.db (SQLite). Owns: the login (server URL, token,
// device id, the extra CA from --ca and the --insecure-http choice), and one row per desktop checked out on this laptop with the manifest it materialized
// and the cheap hash of every block as written. HOME/cache is the block cache shared by all desktops
// (a PackBlockStore: one file per block was the bottleneck of a check-out).
// The token is a secret: the home folder is created 0700.
import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CARRYON_VERSION, CarryonError, migrateSqliteSync, PackBlockStore, seal, SealedBlockStore, subkey, tryOpen, type BlockId, type BlockStore, type MigrationSet } from '../src/index.js';
import { KeyRing } from './keyring.js';

/** streaming: checked out with --stream; the disk is usable (through `carryon serve`) while blocks still arrive. */
export type LocalCheckoutState = 'downloading' | 'streaming' | 'active' | 'checked-in';

/** zstd level of blocks the laptop compresses for its cache (blocks from the server keep their frames):
 *  a fast negative level (~2x level 1's speed here); the cache is read back rarely, as patch bases. */
export const CACHE_LEVEL = -3;

export interface LocalCheckout {
  desktop: string;
  server: string;
  checkoutId: string;
  state: LocalCheckoutState;
  version: number;
  manifestId: BlockId;
  manifest: Buffer;
  cheap: Buffer | null;
  diskPath: string;
  startedAt: string;
  updatedAt: string;
  /** When the offline lease runs out (null: granted by a server without leases). */
  leaseExpiresAt?: string | null;
}

export interface Login {
  url: string;
  token: string;
  device: string;
  deviceName: string;
  user: string;
  /** A CA certificate (PEM) trusted besides the system store, from `carryon login --ca`. */
  ca: string | null;
  /** The user chose plain http:// to a non-loopback server (`carryon login --insecure-http`). */
  insecureHttp: boolean;
}

const MIGRATIONS = [
  // 1: login settings as key/value; checkouts keyed by desktop name (one per desktop per laptop).
  `CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   CREATE TABLE checkouts (
     desktop TEXT PRIMARY KEY, server TEXT NOT NULL, checkout_id TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('downloading', 'active', 'checked-in')),
     version INTEGER NOT NULL, manifest_id TEXT NOT NULL, manifest BLOB NOT NULL, cheap BLOB,
     disk_path TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL);`,
  // 2: the persona copy of a desktop (with its disk, or alone for --persona-only): the version it is
  // based on, that version's snapshot (the base of the next merge), and its folder.
  `CREATE TABLE personas (
     desktop TEXT PRIMARY KEY, server TEXT NOT NULL, version INTEGER NOT NULL, snapshot BLOB NOT NULL,
     dir TEXT NOT NULL, with_disk INTEGER NOT NULL, updated_at TEXT NOT NULL);`,
  // 3: the 'streaming' state (checkout --stream). SQLite cannot alter a CHECK constraint: copy the table.
  `CREATE TABLE checkouts_v3 (
     desktop TEXT PRIMARY KEY, server TEXT NOT NULL, checkout_id TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('downloading', 'streaming', 'active', 'checked-in')),
     version INTEGER NOT NULL, manifest_id TEXT NOT NULL, manifest BLOB NOT NULL, cheap BLOB,
     disk_path TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL);
   INSERT INTO checkouts_v3 SELECT * FROM checkouts;
   DROP TABLE checkouts;
   ALTER TABLE checkouts_v3 RENAME TO checkouts;`,
  // 4: the offline lease of each checkout, as the server last granted it.
  `ALTER TABLE checkouts ADD COLUMN lease_expires_at TEXT;`,
  // 5: the checkout's secret for offline lease codes, and the last code number used (each works once).
  `ALTER TABLE checkouts ADD COLUMN lease_secret BLOB;
   ALTER TABLE checkouts ADD COLUMN lease_code_seq INTEGER NOT NULL DEFAULT 0;`,
  // 6: rollbacks this laptop learned of (from any command's contact with the server), kept after the agent
  // removed the copy, so `carryon status` says who rolled the desktop back, when, and where the copy went.
  // A new checkout of the same desktop replaces its row.
  `CREATE TABLE rollbacks (
     desktop TEXT PRIMARY KEY, checkout_id TEXT NOT NULL, rolled_back_by TEXT NOT NULL, rolled_back_at TEXT NOT NULL,
     keep_local INTEGER NOT NULL, disk_path TEXT NOT NULL, learned_at TEXT NOT NULL, done_at TEXT, kept_at TEXT);`,
  // 7: encryption at rest: each encrypted copy's data key, wrapped by the passphrase's KEK (client/keyring.ts).
  // Its own table: the key outlives a check-in (the copy stays encrypted for the next trip) and dies with
  // the copy (rollback, discard), which deletes the row (crypto-shredding).
  `CREATE TABLE copy_keys (desktop TEXT PRIMARY KEY, wrapped BLOB NOT NULL, key_check TEXT NOT NULL, created_at TEXT NOT NULL);`,
];

const LAPTOP_SCHEMA: MigrationSet = { what: 'laptop state', migrations: MIGRATIONS.map((sql, i) => ({ version: i + 1, why: '', sqlite: sql })) };

/** A rollback this laptop learned of; doneAt is set once the agent removed (or kept aside) the copy. */
export interface LocalRollback {
  desktop: string;
  checkoutId: string;
  by: string;
  at: string;
  keepLocal: boolean;
  diskPath: string;
  learnedAt: string;
  doneAt: string | null;
  keptAt: string | null;
}

export interface LocalPersonaCopy {
  desktop: string;
  server: string;
  version: number;
  snapshot: Buffer;
  dir: string;
  withDisk: boolean;
}

/** A persona snapshot sealed under the copy's data key ('persona-state' subkey): file names and the registry are persona data too. */
const SEALED_SNAPSHOT = Buffer.from('carryon-sealed-persona-v1:');

export function homeOf(opt: string | undefined): string {
  return path.resolve(opt ?? process.env.CARRYON_HOME ?? path.join(os.homedir(), '.carryon'));
}

export class LocalState {
  readonly home: string;
  readonly db: Database.Database;
  readonly cache: PackBlockStore;
  readonly keys: KeyRing;
  private readonly vaultCaches = new Map<string, SealedBlockStore>();

  constructor(home: string) {
    this.home = home;
    mkdirSync(home, { recursive: true, mode: 0o700 });
    chmodSync(home, 0o700); // a home made by an older carryon under umask 022 is closed to others too
    this.db = new Database(path.join(home, 'state.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 10000');
    // Deleted rows (a shredded key, a replaced token) are zeroed in the file, not left in free pages.
    this.db.pragma('secure_delete = ON');
    migrateSqliteSync(this.db, LAPTOP_SCHEMA, path.join(home, 'state.db'), `carryon ${CARRYON_VERSION}`);
    this.cache = new PackBlockStore(path.join(home, 'cache'));
    this.keys = new KeyRing(this.db, home);
  }

  /**
   * The block cache of a desktop's copy: the shared cache for a plaintext copy; for an encrypted one,
   * its own sealed cache (HOME/vaults/NAME/cache), removed whole when the copy is shredded.
   */
  cacheOf(desktop: string): BlockStore {
    const key = this.keys.dataKey(desktop);
    if (!key) return this.cache;
    let c = this.vaultCaches.get(desktop);
    if (!c) {
      c = new SealedBlockStore(new PackBlockStore(this.vaultCacheRoot(desktop), { opaque: true }), key);
      this.vaultCaches.set(desktop, c);
    }
    return c;
  }

  /** Close an encrypted copy's cache (before its folder is removed). */
  async closeVault(desktop: string): Promise<void> {
    const c = this.vaultCaches.get(desktop);
    this.vaultCaches.delete(desktop);
    await c?.close();
  }

  vaultRoot(desktop: string): string {
    return path.join(this.home, 'vaults', desktop);
  }

  vaultCacheRoot(desktop: string): string {
    return path.join(this.home, 'vaults', desktop, 'cache');
  }

  async close(): Promise<void> {
    for (const c of this.vaultCaches.values()) await c.close();
    this.vaultCaches.clear();
    await this.cache.close();
    this.db.close();
  }

  private get(key: string): string | undefined {
    return (this.db.prepare('SELECT value FROM config WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  private set(key: string, value: string): void {
    this.db.prepare('INSERT INTO config (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  /** This laptop's device id: made once per home, sent with every checkout. */
  deviceId(): string {
    let d = this.get('device');
    if (!d) {
      d = randomUUID();
      this.set('device', d);
    }
    return d;
  }

  /** A login replaces the previous one whole: its URL, token, extra CA and --insecure-http choice. */
  saveLogin(l: Omit<Login, 'device'>): Login {
    this.db.transaction(() => {
      // Another server's feed serials say nothing about this one's.
      if (this.get('url') !== l.url) this.db.prepare("DELETE FROM config WHERE key = 'feedSerial'").run();
      this.set('url', l.url);
      this.set('token', this.keys.storedToken(l.token));
      this.set('deviceName', l.deviceName);
      this.set('user', l.user);
      if (l.ca) this.set('ca', l.ca);
      else this.db.prepare("DELETE FROM config WHERE key = 'ca'").run();
      this.set('insecureHttp', l.insecureHttp ? '1' : '0');
    })();
    return { ...l, device: this.deviceId() };
  }

  /** The server's release public key (client updates), kept from login; null when the server had none. */
  releaseKey(): string | null {
    return this.get('releaseKey') ?? null;
  }

  setReleaseKey(key: string | null): void {
    if (key) this.set('releaseKey', key);
    else this.db.prepare("DELETE FROM config WHERE key = 'releaseKey'").run();
  }

  /** The highest update-feed serial this laptop has verified: an older feed is refused (a replay). */
  feedSerial(): number {
    return Number(this.get('feedSerial') ?? '0');
  }

  setFeedSerial(n: number): void {
    if (n > this.feedSerial()) this.set('feedSerial', String(n));
  }

  /** When the agent last checked the update feed (ISO), null: never. */
  updateCheckedAt(): string | null {
    return this.get('updateCheckedAt') ?? null;
  }

  setUpdateCheckedAt(at: string): void {
    this.set('updateCheckedAt', at);
  }

  login(): Login {
    const url = this.get('url');
    const token = this.get('token');
    if (!url || !token) throw new CarryonError('NOT_LOGGED_IN', `no server login in ${this.home}: run \`carryon login URL\` first`);
    return { url, token: this.keys.openToken(token), device: this.deviceId(), deviceName: this.get('deviceName') ?? os.hostname(), user: this.get('user') ?? '', ca: this.get('ca') ?? null, insecureHttp: this.get('insecureHttp') === '1' };
  }

  checkout(desktop: string): LocalCheckout | null {
    const r = this.db.prepare('SELECT * FROM checkouts WHERE desktop = ?').get(desktop) as Record<string, unknown> | undefined;
    return r ? rowToCheckout(r) : null;
  }

  checkouts(): LocalCheckout[] {
    return (this.db.prepare('SELECT * FROM checkouts ORDER BY desktop').all() as Record<string, unknown>[]).map(rowToCheckout);
  }

  putCheckout(c: Omit<LocalCheckout, 'updatedAt'>): void {
    this.db
      .prepare(`INSERT INTO checkouts (desktop, server, checkout_id, state, version, manifest_id, manifest, cheap, disk_path, started_at, updated_at, lease_expires_at)
        VALUES (@desktop, @server, @checkoutId, @state, @version, @manifestId, @manifest, @cheap, @diskPath, @startedAt, @updatedAt, @leaseExpiresAt)
        ON CONFLICT(desktop) DO UPDATE SET server = excluded.server, checkout_id = excluded.checkout_id, state = excluded.state, version = excluded.version,
          manifest_id = excluded.manifest_id, manifest = excluded.manifest, cheap = excluded.cheap, disk_path = excluded.disk_path,
          started_at = excluded.started_at, updated_at = excluded.updated_at, lease_expires_at = COALESCE(excluded.lease_expires_at, checkouts.lease_expires_at)`)
      .run({ ...c, leaseExpiresAt: c.leaseExpiresAt ?? null, updatedAt: new Date().toISOString() });
    // A new checkout of a desktop rolled back before: the old rollback is history.
    this.db.prepare('DELETE FROM rollbacks WHERE desktop = ? AND checkout_id <> ?').run(c.desktop, c.checkoutId);
  }

  /** Record that an admin rolled this laptop's checkout back (learned at any contact); the first report wins. */
  recordRollback(desktop: string, checkoutId: string, info: { by: string; at: string; keepLocal: boolean }): LocalRollback | null {
    const local = this.checkout(desktop);
    if (!local || local.checkoutId !== checkoutId) return this.rollback(desktop);
    this.db.prepare(`INSERT INTO rollbacks (desktop, checkout_id, rolled_back_by, rolled_back_at, keep_local, disk_path, learned_at) VALUES (?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT(desktop) DO UPDATE SET checkout_id = excluded.checkout_id, rolled_back_by = excluded.rolled_back_by, rolled_back_at = excluded.rolled_back_at,
        keep_local = excluded.keep_local, disk_path = excluded.disk_path, learned_at = excluded.learned_at, done_at = NULL, kept_at = NULL
      WHERE rollbacks.checkout_id <> excluded.checkout_id`)
      .run(desktop, checkoutId, info.by, info.at, info.keepLocal ? 1 : 0, local.diskPath, new Date().toISOString());
    return this.rollback(desktop);
  }

  /** The agent carried the rollback out: the copy was removed, or kept aside at keptAt. */
  finishRollback(desktop: string, checkoutId: string, keptAt: string | null): void {
    this.db.prepare('UPDATE rollbacks SET done_at = ?, kept_at = ? WHERE desktop = ? AND checkout_id = ?').run(new Date().toISOString(), keptAt, desktop, checkoutId);
  }

  rollback(desktop: string): LocalRollback | null {
    const r = this.db.prepare('SELECT * FROM rollbacks WHERE desktop = ?').get(desktop) as Record<string, unknown> | undefined;
    return r ? rowToRollback(r) : null;
  }

  rollbacks(): LocalRollback[] {
    return (this.db.prepare('SELECT * FROM rollbacks ORDER BY desktop').all() as Record<string, unknown>[]).map(rowToRollback);
  }

  persona(desktop: string): LocalPersonaCopy | null {
    const r = this.db.prepare('SELECT * FROM personas WHERE desktop = ?').get(desktop) as Record<string, unknown> | undefined;
    return r ? this.rowToPersona(r) : null;
  }

  personas(): LocalPersonaCopy[] {
    return (this.db.prepare('SELECT * FROM personas ORDER BY desktop').all() as Record<string, unknown>[]).map((r) => this.rowToPersona(r));
  }

  /** The snapshot of an encrypted copy is opened when first read (it needs the key; dir and version do not). */
  private rowToPersona(r: Record<string, unknown>): LocalPersonaCopy {
    const desktop = r.desktop as string;
    const stored = r.snapshot as Buffer;
    const copy = { desktop, server: r.server as string, version: r.version as number, dir: r.dir as string, withDisk: r.with_disk === 1 } as LocalPersonaCopy;
    let opened: Buffer | null = null;
    Object.defineProperty(copy, 'snapshot', { enumerable: true, get: () => (opened ??= this.openSnapshot(desktop, stored)) });
    return copy;
  }

  private sealSnapshot(desktop: string, snapshot: Buffer): Buffer {
    const key = this.keys.dataKey(desktop);
    if (!key) return snapshot;
    return Buffer.concat([SEALED_SNAPSHOT, seal(subkey(key, 'persona-state'), snapshot, `persona:${desktop}`)]);
  }

  private openSnapshot(desktop: string, stored: Buffer): Buffer {
    if (!stored.subarray(0, SEALED_SNAPSHOT.length).equals(SEALED_SNAPSHOT)) return stored;
    const key = this.keys.dataKey(desktop);
    const plain = key ? tryOpen(subkey(key, 'persona-state'), stored.subarray(SEALED_SNAPSHOT.length), `persona:${desktop}`) : null;
    if (!plain) throw new CarryonError('KEYS_LOCKED', `the persona record of ${desktop} is encrypted and its key is gone or wrong: discard the copy (\`carryon discard ${desktop}\`) and check it out again`, { desktop });
    return plain;
  }

  putPersona(p: LocalPersonaCopy): void {
    this.db
      .prepare(`INSERT INTO personas (desktop, server, version, snapshot, dir, with_disk, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT(desktop) DO UPDATE SET server = excluded.server, version = excluded.version, snapshot = excluded.snapshot, dir = excluded.dir,
          with_disk = excluded.with_disk, updated_at = excluded.updated_at`)
      .run(p.desktop, p.server, p.version, this.sealSnapshot(p.desktop, p.snapshot), p.dir, p.withDisk ? 1 : 0, new Date().toISOString());
  }

  removePersona(desktop: string): void {
    this.db.prepare('DELETE FROM personas WHERE desktop = ?').run(desktop);
  }

  /** A new checkout's secret starts its code numbers over; the same secret again (a resumed checkout) keeps them. */
  setLeaseSecret(desktop: string, secret: Buffer): void {
    this.db.prepare('UPDATE checkouts SET lease_code_seq = CASE WHEN lease_secret = ? THEN lease_code_seq ELSE 0 END, lease_secret = ? WHERE desktop = ?').run(secret, secret, desktop);
  }

  leaseSecret(desktop: string): { secret: Buffer | null; seq: number } {
    const r = this.db.prepare('SELECT lease_secret, lease_code_seq FROM checkouts WHERE desktop = ?').get(desktop) as { lease_secret: Buffer | null; lease_code_seq: number } | undefined;
    return { secret: r?.lease_secret ?? null, seq: r?.lease_code_seq ?? 0 };
  }

  /** Record a lease code as used, with the lease it granted; false when a code this new was used already. */
  useLeaseCode(desktop: string, seq: number, leaseExpiresAt: string): boolean {
    return this.db.prepare('UPDATE checkouts SET lease_code_seq = ?, lease_expires_at = ? WHERE desktop = ? AND lease_code_seq < ?').run(seq, leaseExpiresAt, desktop, seq).changes === 1;
  }

  setLease(desktop: string, leaseExpiresAt: string): void {
    this.db.prepare('UPDATE checkouts SET lease_expires_at = ? WHERE desktop = ?').run(leaseExpiresAt, desktop);
  }

  /**
   * The laptop's idea of now, which never goes backwards: the latest of the wall clock and every time
   * seen before (kept in the state), so turning the clock back does not stretch a lease.
   */
  monotonicNow(): number {
    const seen = Number(this.get('clockHighWater') ?? 0);
    const t = Math.max(Date.now(), seen);
    if (t > seen) this.set('clockHighWater', String(t));
    return t;
  }

  /**
   * The server's time is the truth: after a contact the latest time seen becomes it, so a clock that
   * once ran ahead (a bad RTC) stops locking leases out once the laptop has talked to the server.
   */
  syncClock(serverTime: string): void {
    const t = Date.parse(serverTime);
    if (Number.isFinite(t)) this.set('clockHighWater', String(t));
  }

  /** Where a checkout's disk journal (dirty map) lives: beside the state, not the disk (which may be anywhere). */
  journalPath(desktop: string): string {
    return path.join(this.home, 'journals', `${desktop}.cydj`);
  }

  removeCheckout(desktop: string): void {
    this.db.prepare('DELETE FROM checkouts WHERE desktop = ?').run(desktop);
  }
}

function rowToRollback(r: Record<string, unknown>): LocalRollback {
  return {
    desktop: r.desktop as string, checkoutId: r.checkout_id as string, by: r.rolled_back_by as string, at: r.rolled_back_at as string, keepLocal: r.keep_local === 1,
    diskPath: r.disk_path as string, learnedAt: r.learned_at as string, doneAt: (r.done_at as string | null) ?? null, keptAt: (r.kept_at as string | null) ?? null,
  };
}

function rowToCheckout(r: Record<string, unknown>): LocalCheckout {
  return {
    desktop: r.desktop as string,
    server: r.server as string,
    checkoutId: r.checkout_id as string,
    state: r.state as LocalCheckoutState,
    version: r.version as number,
    manifestId: r.manifest_id as string,
    manifest: r.manifest as Buffer,
    cheap: (r.cheap as Buffer | null) ?? null,
    diskPath: r.disk_path as string,
    startedAt: r.started_at as string,
    updatedAt: r.updated_at as string,
    leaseExpiresAt: (r.lease_expires_at as string | null) ?? null,
  };
}
