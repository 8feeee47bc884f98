// The server's data folder and database: layout, opening with WAL, and migrations.
// DATA/carryon.db (SQLite, WAL), DATA/store/ (FsBlockStore) and DATA/escrow/ (the escrow key pair, server/escrow.ts). Several processes may open it at once
// (the service and admin commands): WAL plus a busy timeout serialises their writes.
import Database from 'better-sqlite3';
import { chmodSync, existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { CarryonError, CARRYON_VERSION, FsBlockStore, migrateSqliteSync, type BlockStore } from '../src/index.js';
import { ensureEscrowKeys } from './escrow.js';
import { SERVER_SCHEMA } from './migrations.js';
import { SqliteSql } from './sql/sqlite.js';

export type Db = Database.Database;

export interface DataDir {
  root: string;
  /** The database through the async interface every repository uses. */
  sql: SqliteSql;
  store: BlockStore;
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
  if (existsSync(dbPath(root))) chmodSync(dbPath(root), 0o600);
}

export function initDataDir(root: string): { root: string; created: boolean; schemaVersion: number; escrowKey: string; escrowKeyCreated: boolean } {
  const abs = path.resolve(root);
  const created = !existsSync(dbPath(abs));
  mkdirSync(path.join(abs, 'store'), { recursive: true, mode: 0o700 });
  closeToOthers(abs);
  const db = openDb(dbPath(abs));
  try {
    const schemaVersion = migrate(db);
    const escrow = ensureEscrowKeys(abs);
    return { root: abs, created, schemaVersion, escrowKey: escrow.publicKey, escrowKeyCreated: escrow.created };
  } finally {
    db.close();
  }
}

export function openDataDir(root: string | undefined): DataDir {
  if (!root) throw new CarryonError('DATA_DIR_INVALID', 'no data folder: pass --data DIR or set CARRYON_DATA');
  const abs = path.resolve(root);
  if (!existsSync(dbPath(abs))) {
    throw new CarryonError('DATA_DIR_INVALID', `${abs} is not a carryon-server data folder: run \`carryon-server init --data ${abs}\` first`, { data: abs });
  }
  closeToOthers(abs);
  const db = openDb(dbPath(abs));
  migrate(db);
  // Batch durability: BlockIngest syncs the store before it indexes what it wrote.
  const store = new FsBlockStore(path.join(abs, 'store'), { durability: 'batch' });
  return { root: abs, sql: new SqliteSql(db), store };
}
