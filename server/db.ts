// The server's data folder and database: layout, opening with WAL, and migrations.
// DATA/carryon.db (SQLite, WAL) and DATA/store/ (FsBlockStore). Several processes may open it at once
// (the service and admin commands): WAL plus a busy timeout serialises their writes.
import Database from 'better-sqlite3';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { CarryonError, FsBlockStore, type BlockStore } from '../src/index.js';
import { MIGRATIONS } from './migrations.js';

export type Db = Database.Database;

export interface DataDir {
  root: string;
  db: Db;
  store: BlockStore;
  close(): void;
}

export function dbPath(root: string): string {
  return path.join(root, 'carryon.db');
}

export function migrate(db: Db): number {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (const m of MIGRATIONS) {
    if (m.version <= current) continue;
    db.transaction(() => {
      db.exec(m.sql);
      m.fill?.(db);
      db.pragma(`user_version = ${m.version}`);
    })();
  }
  return MIGRATIONS[MIGRATIONS.length - 1]!.version;
}

function openDb(file: string): Db {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 10000');
  return db;
}

export function initDataDir(root: string): { root: string; created: boolean; schemaVersion: number } {
  const abs = path.resolve(root);
  const created = !existsSync(dbPath(abs));
  mkdirSync(path.join(abs, 'store'), { recursive: true });
  const db = openDb(dbPath(abs));
  try {
    return { root: abs, created, schemaVersion: migrate(db) };
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
  const db = openDb(dbPath(abs));
  migrate(db);
  // Batch durability: BlockIngest syncs the store before it indexes what it wrote.
  const store = new FsBlockStore(path.join(abs, 'store'), { durability: 'batch' });
  return { root: abs, db, store, close: () => db.close() };
}
