// SqliteSql passes the Sql conformance suite: a fresh database file per test, opened as the server
// opens its own (WAL, busy_timeout, foreign keys).
import Database from 'better-sqlite3';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SqliteSql } from '../../server/sql/sqlite.js';
import { runSqlConformance } from './sql.js';

runSqlConformance('SqliteSql', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-sql-sqlite-'));
  const db = new Database(path.join(dir, 'meta.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 10000');
  return { sql: new SqliteSql(db), cleanup: () => fs.rm(dir, { recursive: true, force: true }) };
});
