// sql: the one interface server metadata is written against, and the one migration runner of both sides.
// Owns: `Sql` (async queries and transaction(fn)), the dialect list, and the migration runner that
// records applied versions and refuses a database newer than the code. Must not know: the server's
// tables, HTTP, which engine a deployment runs (server/sql opens SQLite or PostgreSQL behind `Sql`).
// Key terms: dialect = 'sqlite' | 'postgres'; SQL text uses `?` placeholders in both (the PostgreSQL
// driver numbers them), the portable subset both engines share (INSERT ... ON CONFLICT, RETURNING).
import type Database from 'better-sqlite3';
import { CarryonError } from '../errors/index.js';

export type Dialect = 'sqlite' | 'postgres';
export type SqlValue = string | number | bigint | Buffer | Uint8Array | null;

/**
 * Async queries against one metadata database.
 * - transaction(fn) runs fn atomically: every query fn makes (through this object, from any depth of
 *   calls, found by async context) sees and commits together, or none does when fn throws. A
 *   transaction opened inside another joins it. The engine may run fn more than once (PostgreSQL
 *   retries a serialization failure), so fn must do nothing but queries and pure computation.
 * - A query that fails inside fn must fail fn (PostgreSQL aborts the whole transaction at the first
 *   failed statement): never catch a constraint violation to carry on; write ON CONFLICT DO NOTHING.
 * - Transactions of one database are serializable: the result is as if they ran one at a time.
 * - Integer columns come back as JS numbers, BLOB/BYTEA columns as Buffers.
 */
export interface Sql {
  readonly dialect: Dialect;
  all<T = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  get<T = Record<string, unknown>>(sql: string, params?: readonly SqlValue[]): Promise<T | undefined>;
  /** Rows changed by an INSERT, UPDATE or DELETE. */
  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }>;
  /** Several statements without parameters (schema changes). */
  exec(sql: string): Promise<void>;
  transaction<T>(fn: () => Promise<T>): Promise<T>;
  readonly inTransaction: boolean;
  close(): Promise<void>;
}

/** One schema step. Each dialect's SQL is given, or the step does not exist for it (see Baseline). */
export interface Migration {
  version: number;
  why: string;
  sqlite?: string;
  postgres?: string;
  /** Rows computed from encoded data, in the same transaction as the SQL (SQLite-only history steps). */
  fill?: (db: Database.Database) => void;
  fillAsync?: (sql: Sql) => Promise<void>;
}

/** A dialect that joined late starts from the schema as of `version`, in one step. */
export interface Baseline {
  dialect: Dialect;
  version: number;
  sql: string;
}

export interface MigrationSet {
  /** Which database this is, for messages: 'server database', 'laptop state'. */
  what: string;
  migrations: Migration[];
  baselines?: Baseline[];
}

export function latestVersion(set: MigrationSet): number {
  return set.migrations[set.migrations.length - 1]?.version ?? 0;
}

/**
 * The steps to bring a database at `current` up to date, in order. Refuses a database a newer carryon
 * has already migrated: this code would misread tables it does not know.
 */
export function planMigrations(set: MigrationSet, dialect: Dialect, current: number, where: string): { baseline: Baseline | null; steps: Migration[] } {
  const latest = latestVersion(set);
  if (current > latest) {
    throw new CarryonError('SCHEMA_TOO_NEW', `the ${set.what} at ${where} is at schema version ${current}, but this carryon knows versions up to ${latest}: a newer carryon has upgraded it. Run that newer version (or later); this one changed nothing`, { current, known: latest });
  }
  const baseline = current === 0 ? set.baselines?.find((b) => b.dialect === dialect) ?? null : null;
  const from = baseline ? baseline.version : current;
  const steps = set.migrations.filter((m) => m.version > from);
  for (const m of steps) {
    if (m[dialect] === undefined) throw new CarryonError('INTERNAL', `migration ${m.version} of the ${set.what} has no ${dialect} form`);
  }
  return { baseline, steps };
}

const HISTORY_SQLITE = 'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, by_carryon TEXT NOT NULL)';
const HISTORY_POSTGRES = 'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, by_carryon TEXT NOT NULL)';

/**
 * SQLite, synchronously (the laptop's state and the server's SQLite file): PRAGMA user_version is the
 * version (what older carryon releases read), schema_migrations the history. One transaction per step.
 */
export function migrateSqliteSync(db: Database.Database, set: MigrationSet, where: string, by: string): number {
  const current = db.pragma('user_version', { simple: true }) as number;
  const { baseline, steps } = planMigrations(set, 'sqlite', current, where);
  const record = (v: number): void => {
    db.exec(HISTORY_SQLITE);
    db.prepare('INSERT INTO schema_migrations (version, applied_at, by_carryon) VALUES (?, ?, ?) ON CONFLICT (version) DO NOTHING').run(v, new Date().toISOString(), by);
    db.pragma(`user_version = ${v}`);
  };
  // A database migrated before the history was kept: its version is recorded once, as found.
  if (current > 0 && !db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").get()) {
    db.transaction(() => {
      db.exec(HISTORY_SQLITE);
      db.prepare('INSERT INTO schema_migrations (version, applied_at, by_carryon) VALUES (?, ?, ?)').run(current, new Date().toISOString(), 'an earlier carryon (found at this version)');
    })();
  }
  if (baseline) db.transaction(() => { db.exec(baseline.sql); record(baseline.version); })();
  for (const m of steps) {
    db.transaction(() => {
      db.exec(m.sqlite!);
      m.fill?.(db);
      record(m.version);
    })();
  }
  return Math.max(current, latestVersion(set));
}

/**
 * Any dialect through `Sql`. PostgreSQL keeps the version in schema_migrations, read under a lock so two
 * instances starting together apply each step once.
 */
export async function migrateSql(sql: Sql, set: MigrationSet, where: string, by: string): Promise<number> {
  if (sql.dialect === 'sqlite') throw new CarryonError('INTERNAL', 'SQLite databases migrate through migrateSqliteSync');
  // Two instances starting on a fresh database race here: CREATE TABLE IF NOT EXISTS is not atomic in
  // PostgreSQL (the loser fails with 23505 on a catalog index, 42P07, or 42710 on the row type). The
  // table exists either way; the lock below orders everything after it.
  await sql.exec(HISTORY_POSTGRES).catch((err: unknown) => {
    const code = (err as { code?: unknown }).code;
    if (code !== '23505' && code !== '42P07' && code !== '42710') throw err;
  });
  return sql.transaction(async () => {
    // One migrator at a time across instances; the lock ends with the transaction. It must be the
    // first statement: under SERIALIZABLE the snapshot is taken at the first query, and one taken
    // before the lock could read an empty history and apply the baseline a second time.
    await sql.exec('LOCK TABLE schema_migrations IN EXCLUSIVE MODE');
    const row = await sql.get<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations');
    const current = row?.v ?? 0;
    const { baseline, steps } = planMigrations(set, sql.dialect, current, where);
    const record = (v: number) => sql.run('INSERT INTO schema_migrations (version, applied_at, by_carryon) VALUES (?, ?, ?)', [v, new Date().toISOString(), by]);
    if (baseline) {
      await sql.exec(baseline.sql);
      await record(baseline.version);
    }
    for (const m of steps) {
      await sql.exec(m[sql.dialect]!);
      await m.fillAsync?.(sql);
      await record(m.version);
    }
    return Math.max(current, latestVersion(set));
  });
}
