// Opening a metadata database by URL. postgres:// and postgresql:// open a PostgresSql and bring its
// schema up to date (migrateSql: the baseline, then each later step, under a lock so that servers
// starting together migrate once). SQLite files are opened by server/db.ts, not here. The migration
// set is a parameter, so this module knows no tables.
import { CarryonError, migrateSql, type MigrationSet, type Sql } from '../../src/index.js';
import { PostgresSql, redactUrl, type PostgresSqlOptions } from './postgres.js';

export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//i.test(url);
}

/** The URL without its password, for logs and messages. */
export function describeMetaUrl(url: string): string {
  return isPostgresUrl(url) ? redactUrl(url) : url;
}

/**
 * Open the metadata database at `url` and migrate it with `set` (`by`: the carryon version recorded
 * with each step). Fails with META_UNAVAILABLE when it cannot be reached, SCHEMA_TOO_NEW when a newer
 * carryon has migrated it, INVALID_ARGUMENT for a URL that is not PostgreSQL's.
 */
export async function openSql(url: string, set: MigrationSet, by: string, options: PostgresSqlOptions = {}): Promise<Sql> {
  if (!isPostgresUrl(url)) {
    throw new CarryonError('INVALID_ARGUMENT', `not a PostgreSQL URL: ${describeMetaUrl(url)} (postgres://USER@HOST:PORT/DB; a SQLite file is opened by path)`);
  }
  const sql = new PostgresSql(url, options);
  try {
    await migrateSql(sql, set, describeMetaUrl(url), by);
  } catch (err) {
    await sql.close().catch(() => undefined);
    throw err;
  }
  return sql;
}

/** A unique (or primary key) violation, from either engine: the rule a constraint holds across servers. */
export function isUniqueViolation(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') return true;
  }
  return false;
}
