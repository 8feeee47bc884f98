// The server's data folder and database: layout, opening with WAL, and migrations.
// DATA/carryon.db (SQLite, WAL) or --meta postgres://..., DATA/store/ (FsBlockStore) or --store URL
// (recorded in DATA/backends.json by init), DATA/escrow/ (the escrow key pair, server/escrow.ts). Several processes may open it at once
// (the service and admin commands): WAL plus a busy timeout serialises their writes.
import Database from 'better-sqlite3';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CarryonError, CARRYON_VERSION, FsBlockStore, migrateSqliteSync, openBlockStore, type BlockStore, type Sql } from '../src/index.js';
import { describeMetaUrl, isPostgresUrl, openSql } from './sql/open.js';
import { ensureEscrowKeys } from './escrow.js';
import { ensureReleaseKeys } from './release.js';
import { SERVER_SCHEMA } from './migrations.js';
import { SqliteSql } from './sql/sqlite.js';

export type Db = Database.Database;

export interface DataDir {
  root: string;
  /** The database through the async interface every repository uses. */
  sql: Sql;
  store: BlockStore;
  /** Where the metadata and blocks are, without secrets: for logs and status. */
  meta: string;
  storeUrl: string;
}

export function dbPath(root: string): string {
  return path.join(root, 'carryon.db');
}

export function migrate(db: Db, where = db.name): number {
  return migrateSqliteSync(db, SERVER_SCHEMA, where, `carryon-server ${CARRYON_VERSION}`);
}

function openDb(file: string): Db {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 10000');
  return db;
}

/**
 * The data folder is this user's alone (a folder made under umask 022 by an older version is closed too).
 * Root working on another user's folder would leave root-owned 0600 files the service cannot read: refused.
 */
function closeToOthers(root: string): void {
  const owner = statSync(root).uid;
  if (process.getuid?.() === 0 && owner !== 0) {
    throw new CarryonError('DATA_DIR_INVALID', `${root} belongs to user id ${owner}: run carryon-server as that user (for example sudo -u '#${owner}' carryon-server ...), so that what it writes stays readable by the service`, { data: root, owner });
  }
  chmodSync(root, 0o700);
}

/**
 * Where the metadata and the blocks live. Undefined: the data folder's own (DATA/carryon.db, DATA/store).
 * `meta`: postgres://USER[:PASSWORD]@HOST:PORT/DB; `store`: any openBlockStore URL (file://, s3://...).
 */
export interface Backends {
  meta?: string;
  store?: string;
}

const BACKENDS_FILE = 'backends.json';

/** The backends for this folder: given (flag) over the environment over what init recorded. */
function resolveBackends(root: string, given: Backends): Backends {
  let recorded: Backends = {};
  const file = path.join(root, BACKENDS_FILE);
  if (existsSync(file)) {
    try {
      recorded = JSON.parse(readFileSync(file, 'utf8')) as Backends;
    } catch (err) {
      throw new CarryonError('DATA_DIR_INVALID', `${file} is not valid JSON (${(err as Error).message}): fix it or run carryon-server init again with --meta/--store`, { data: root });
    }
  }
  return {
    meta: given.meta ?? process.env.CARRYON_META ?? recorded.meta,
    store: given.store ?? process.env.CARRYON_STORE ?? recorded.store,
  };
}

async function openMeta(root: string, meta: string | undefined): Promise<{ sql: Sql; schemaVersion: number; where: string }> {
  if (meta === undefined || meta.startsWith('sqlite:') || !/^[a-z][a-z0-9+.-]*:/i.test(meta)) {
    const file = meta === undefined ? dbPath(root) : path.resolve(meta.replace(/^sqlite:(\/\/)?/, ''));
    const db = openDb(file);
    try {
      if (file === dbPath(root)) chmodSync(file, 0o600);
      const schemaVersion = migrate(db, file);
      return { sql: new SqliteSql(db), schemaVersion, where: file };
    } catch (err) {
      db.close();
      throw err;
    }
  }
  if (!isPostgresUrl(meta)) throw new CarryonError('INVALID_ARGUMENT', `--meta must be a postgres:// URL or a SQLite file, got ${describeMetaUrl(meta)}`);
  const sql = await openSql(meta, SERVER_SCHEMA, `carryon-server ${CARRYON_VERSION}`);
  const v = (await sql.get<{ v: number }>('SELECT MAX(version) AS v FROM schema_migrations'))?.v ?? 0;
  return { sql, schemaVersion: v, where: describeMetaUrl(meta) };
}

function openStore(root: string, store: string | undefined): BlockStore {
  // Batch durability: BlockIngest syncs the store before it indexes what it wrote.
  if (store === undefined) return new FsBlockStore(path.join(root, 'store'), { durability: 'batch' });
  return openBlockStore(store, { durability: 'batch' });
}

export async function initDataDir(root: string, given: Backends = {}): Promise<{ root: string; created: boolean; schemaVersion: number; escrowKey: string; escrowKeyCreated: boolean; releaseKey: string; releaseKeyCreated: boolean; meta: string; store: string }> {
  const abs = path.resolve(root);
  const created = !existsSync(dbPath(abs)) && !existsSync(path.join(abs, BACKENDS_FILE));
  mkdirSync(abs, { recursive: true, mode: 0o700 });
  closeToOthers(abs);
  const b = resolveBackends(abs, given);
  if (b.store === undefined) mkdirSync(path.join(abs, 'store'), { recursive: true, mode: 0o700 });
  const { sql, schemaVersion, where } = await openMeta(abs, b.meta);
  try {
    const store = openStore(abs, b.store);
    await store.close?.();
    // Recorded (0600: a URL may carry a password) so that start and admin commands find them.
    if (b.meta !== undefined || b.store !== undefined) writeFileSync(path.join(abs, BACKENDS_FILE), `${JSON.stringify({ meta: b.meta, store: b.store }, null, 2)}\n`, { mode: 0o600 });
    const escrow = ensureEscrowKeys(abs);
    const release = ensureReleaseKeys(abs);
    return { root: abs, created, schemaVersion, escrowKey: escrow.publicKey, escrowKeyCreated: escrow.created, releaseKey: release.publicKey, releaseKeyCreated: release.created, meta: where, store: b.store === undefined ? path.join(abs, 'store') : describeStoreUrl(b.store) };
  } finally {
    await sql.close();
  }
}

export async function openDataDir(root: string | undefined, given: Backends = {}): Promise<DataDir> {
  if (!root) throw new CarryonError('DATA_DIR_INVALID', 'no data folder: pass --data DIR or set CARRYON_DATA');
  const abs = path.resolve(root);
  if (!existsSync(dbPath(abs)) && !existsSync(path.join(abs, BACKENDS_FILE))) {
    throw new CarryonError('DATA_DIR_INVALID', `${abs} is not a carryon-server data folder: run \`carryon-server init --data ${abs}\` first`, { data: abs });
  }
  closeToOthers(abs);
  const b = resolveBackends(abs, given);
  const { sql, where } = await openMeta(abs, b.meta);
  try {
    return { root: abs, sql, store: openStore(abs, b.store), meta: where, storeUrl: b.store === undefined ? path.join(abs, 'store') : describeStoreUrl(b.store) };
  } catch (err) {
    await sql.close();
    throw err;
  }
}

/** A store URL without credentials, for logs and messages. */
export function describeStoreUrl(url: string): string {
  return url.replace(/\/\/[^/@]*@/, '//');
}
