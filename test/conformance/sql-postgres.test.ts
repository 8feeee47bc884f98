// PostgresSql passes the Sql conformance suite against a real PostgreSQL 15: one private cluster per
// file (scripts/pg.sh, in a temp folder, on a free port), a fresh database per test. Also: the
// baseline schema matches SQLite's after migration 12, migrateSql lands there once even when two
// servers race, refuses a newer database, and connection failures are META_UNAVAILABLE.
// A machine without PostgreSQL fails here (apt-get install postgresql); it is never skipped.
import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { existsSync, promises as fs, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CarryonError, migrateSql, type Migration, type MigrationSet } from '../../src/index.js';
import * as serverMigrations from '../../server/migrations.js';
import { describeMetaUrl, isUniqueViolation, openSql } from '../../server/sql/open.js';
import { POSTGRES_BASELINE } from '../../server/sql/postgres-baseline.js';
import { numberPlaceholders, PostgresSql } from '../../server/sql/postgres.js';
import { runSqlConformance } from './sql.js';
import { freePort } from '../lib/pg-cluster.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const PG_SH = path.join(ROOT, 'scripts/pg.sh');

let dir = '';
let port = 0;
let admin: pg.Client;
let dbSeq = 0;

function serverBinariesPresent(): boolean {
  const base = '/usr/lib/postgresql';
  return existsSync(base) && readdirSync(base).some((v) => existsSync(path.join(base, v, 'bin/initdb')));
}

function dbUrl(name: string): string {
  return `postgres://carryon@127.0.0.1:${port}/${name}`;
}

/** A fresh, empty database owned by carryon; drop it with the returned cleanup. */
async function freshDatabase(): Promise<{ url: string; name: string; cleanup: () => Promise<void> }> {
  const name = `t${process.pid}_${++dbSeq}`;
  await admin.query(`CREATE DATABASE ${name} OWNER carryon`);
  return { url: dbUrl(name), name, cleanup: async () => void (await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)) };
}

beforeAll(async () => {
  if (!serverBinariesPresent()) {
    throw new Error('PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql (scripts/install-test-deps.sh installs it)');
  }
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-pg-'));
  port = await freePort();
  const t0 = performance.now();
  const { stdout } = await run('bash', [PG_SH, 'start', dir, String(port)]);
  console.log(`pg.sh start (initdb + start + role): ${Math.round(performance.now() - t0)} ms`);
  expect(stdout.trim()).toBe(dbUrl('carryon'));
  admin = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres` });
  await admin.connect();
});

afterAll(async () => {
  await admin?.end().catch(() => undefined);
  if (dir) {
    await run('bash', [PG_SH, 'stop', dir]).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
  }
});

runSqlConformance('PostgresSql', async () => {
  const db = await freshDatabase();
  return { sql: new PostgresSql(db.url), cleanup: db.cleanup };
});

/** The server's SQLite migrations, whichever shape server/migrations.ts has (`sql`, or `sqlite` in a MigrationSet). */
function sqliteMigrationSql(): string[] {
  const mod = serverMigrations as Record<string, unknown>;
  const list = (Array.isArray(mod.MIGRATIONS) ? mod.MIGRATIONS : Object.values(mod).find((v): v is MigrationSet => typeof v === 'object' && v !== null && Array.isArray((v as MigrationSet).migrations))?.migrations) as Array<{ version: number; sql?: string; sqlite?: string }>;
  return list.filter((m) => m.version <= 12).map((m) => (m.sqlite ?? m.sql)!);
}

/** A migration set like the server's: versions 1..12 exist in SQLite only, PostgreSQL starts at the baseline. */
function serverLikeSet(extra: Migration[] = []): MigrationSet {
  const migrations: Migration[] = Array.from({ length: 12 }, (_, i) => ({ version: i + 1, why: `step ${i + 1}`, sqlite: '-- sqlite only' }));
  return { what: 'server database', migrations: [...migrations, ...extra], baselines: [{ dialect: 'postgres', version: 12, sql: POSTGRES_BASELINE }] };
}

describe('POSTGRES_BASELINE', () => {
  it('has the tables and columns (names, order, nullability, type family, defaults) of SQLite after migration 12', async () => {
    const lite = new Database(':memory:');
    for (const s of sqliteMigrationSql()) lite.exec(s);
    const family = (t: string) => ({ INTEGER: 'integer', TEXT: 'text', BLOB: 'blob', REAL: 'real' })[t.toUpperCase()] ?? t;
    const pgFamily = (t: string) => ({ integer: 'integer', bigint: 'integer', text: 'text', bytea: 'blob', 'double precision': 'real' })[t] ?? t;
    const normDefault = (d: string | null) => (d === null ? null : d.replace(/::[a-z ]+$/, ''));
    const tables = (lite.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as Array<{ name: string }>).map((r) => r.name);
    const want: Record<string, unknown[]> = {};
    for (const t of tables) {
      want[t] = (lite.prepare(`PRAGMA table_info("${t}")`).all() as Array<{ name: string; type: string; notnull: number; dflt_value: string | null; pk: number }>).map((c) => ({
        name: c.name,
        nullable: c.notnull === 0 && c.pk === 0,
        type: family(c.type),
        default: c.pk > 0 ? null : c.dflt_value,
      }));
    }
    lite.close();
    expect(tables.length).toBe(18);

    const db = await freshDatabase();
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      await c.query(POSTGRES_BASELINE);
      const cols = (await c.query(`SELECT table_name, column_name, is_nullable, data_type, column_default, is_identity FROM information_schema.columns
        WHERE table_schema = 'public' ORDER BY table_name, ordinal_position`)).rows as Array<Record<string, string | null>>;
      const got: Record<string, unknown[]> = {};
      for (const r of cols) {
        (got[r.table_name!] ??= []).push({ name: r.column_name, nullable: r.is_nullable === 'YES', type: pgFamily(r.data_type!), default: normDefault(r.column_default) });
      }
      expect(got).toEqual(want);
      // Indexes SQLite names (the one-active-checkout partial index above all) exist under the same names.
      const idx = (await c.query("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")).rows as Array<{ indexname: string; indexdef: string }>;
      const byName = new Map(idx.map((i) => [i.indexname, i.indexdef]));
      expect(byName.get('checkouts_one_active')).toMatch(/CREATE UNIQUE INDEX checkouts_one_active ON public\.checkouts USING btree \(desktop_id\) WHERE \(state = 'active'::text\)/);
      expect(byName.get('admin_requests_checkout')).toMatch(/\(checkout_id\)/);
      expect(byName.get('restore_points_desktop')).toMatch(/\(desktop_id\)/);
      // Identity columns are exactly SQLite's INTEGER PRIMARY KEY (rowid alias) columns.
      const identity = cols.filter((r) => r.is_identity === 'YES').map((r) => r.table_name).sort();
      expect(identity).toEqual(['admin_requests', 'audit', 'desktops', 'images', 'restore_points', 'tokens', 'users']);
    } finally {
      await c.end();
      await db.cleanup();
    }
  });

  it('enforces one active checkout per desktop, CHECKs, foreign keys and the escrow cascade', async () => {
    const db = await freshDatabase();
    const sql = new PostgresSql(db.url);
    try {
      await sql.exec(POSTGRES_BASELINE);
      const t = new Date().toISOString();
      const user = (await sql.get<{ id: number }>('INSERT INTO users (name, created_at) VALUES (?, ?) RETURNING id', ['ann', t]))!.id;
      await sql.run('INSERT INTO manifests (id, size, block_size, block_count, data_bytes, encoded, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)', ['m1', 2 ** 40, 1 << 20, 2 ** 20, 2 ** 39, Buffer.from('x'), t]);
      const image = (await sql.get<{ id: number }>('INSERT INTO images (name, created_at) VALUES (?, ?) RETURNING id', ['win', t]))!.id;
      const desktop = (await sql.get<{ id: number }>('INSERT INTO desktops (name, user_id, image_id, image_version, version, created_at, updated_at) VALUES (?, ?, ?, 1, 1, ?, ?) RETURNING id', ['d1', user, image, t, t]))!.id;
      expect(await sql.get('SELECT file_policy, registry_policy, rollback_keeps_local, encryption FROM desktops')).toEqual({ file_policy: 'keep-both', registry_policy: 'newest', rollback_keeps_local: 0, encryption: null });
      expect(await sql.get('SELECT size, data_bytes FROM manifests')).toEqual({ size: 2 ** 40, data_bytes: 2 ** 39 });
      const checkout = (id: string, state: string) => sql.run("INSERT INTO checkouts (id, desktop_id, user_id, device, device_name, base_version, state, started_at) VALUES (?, ?, ?, 'dev', 'laptop', 1, ?, ?)", [id, desktop, user, state, t]);
      await checkout('c1', 'active');
      const second = await sql.run('SELECT 1').then(() => checkout('c2', 'active')).then(() => null, (e: unknown) => e);
      expect(isUniqueViolation(second)).toBe(true);
      await checkout('c3', 'committed');
      await checkout('c4', 'discarded');
      expect((await sql.run("UPDATE checkouts SET state = 'committed' WHERE id = 'c1'")).changes).toBe(1);
      await checkout('c5', 'active');
      expect(((await checkout('c6', 'lost').catch((e: unknown) => e)) as { code?: string }).code).toBe('23514');
      expect(((await sql.run('INSERT INTO devices (id, user_id, name, created_at) VALUES (?, ?, ?, ?)', ['dv', 999, 'x', t]).catch((e: unknown) => e)) as { code?: string }).code).toBe('23503');
      await sql.run('INSERT INTO checkout_escrows (checkout_id, sealed, key_check, created_at) VALUES (?, ?, ?, ?)', ['c5', Buffer.from([1, 2, 3]), 'abcd', t]);
      await sql.run("DELETE FROM checkouts WHERE id = 'c5'");
      expect(await sql.get('SELECT COUNT(*) AS c FROM checkout_escrows')).toEqual({ c: 0 });
    } finally {
      await sql.close();
      await db.cleanup();
    }
  });
});

describe('migrateSql on PostgreSQL', () => {
  it('lands a fresh database at version 12 with the baseline, and a second run changes nothing', async () => {
    const db = await freshDatabase();
    const sql = await openSql(db.url, serverLikeSet(), 'test');
    try {
      expect(await sql.all('SELECT version, by_carryon FROM schema_migrations')).toEqual([{ version: 12, by_carryon: 'test' }]);
      expect(await sql.get("SELECT COUNT(*) AS c FROM information_schema.tables WHERE table_schema = 'public'")).toEqual({ c: 19 });
      expect(await migrateSql(sql, serverLikeSet(), db.name, 'again')).toBe(12);
      expect(await sql.get('SELECT COUNT(*) AS c FROM schema_migrations')).toEqual({ c: 1 });
      // A later step with its postgres form applies on top.
      const v13: Migration = { version: 13, why: 'test', sqlite: 'ALTER TABLE users ADD COLUMN x TEXT', postgres: 'ALTER TABLE users ADD COLUMN x TEXT' };
      expect(await migrateSql(sql, serverLikeSet([v13]), db.name, 'test')).toBe(13);
      expect(await sql.all('SELECT version FROM schema_migrations ORDER BY version')).toEqual([{ version: 12 }, { version: 13 }]);
    } finally {
      await sql.close();
      await db.cleanup();
    }
  });

  it('refuses a database at a newer version with SCHEMA_TOO_NEW and leaves it unchanged', async () => {
    const db = await freshDatabase();
    const v13: Migration = { version: 13, why: 'from the future', postgres: 'CREATE TABLE future (id INTEGER)' };
    const newer = await openSql(db.url, serverLikeSet([v13]), 'newer');
    await newer.close();
    const snapshot = async () => {
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      const tables = (await c.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")).rows;
      const versions = (await c.query('SELECT version, applied_at, by_carryon FROM schema_migrations ORDER BY version')).rows;
      await c.end();
      return { tables, versions };
    };
    const before = await snapshot();
    try {
      const err = await openSql(db.url, serverLikeSet(), 'older').then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(CarryonError);
      expect((err as CarryonError).code).toBe('SCHEMA_TOO_NEW');
      expect((err as CarryonError).data).toEqual({ current: 13, known: 12 });
      expect(await snapshot()).toEqual(before);
    } finally {
      await db.cleanup();
    }
  });

  it('two servers migrating one fresh database at once both succeed, and the baseline is applied once', async () => {
    for (let round = 0; round < 5; round++) {
      const db = await freshDatabase();
      const a = new PostgresSql(db.url);
      const b = new PostgresSql(db.url);
      try {
        const results = await Promise.allSettled([migrateSql(a, serverLikeSet(), db.name, 'a'), migrateSql(b, serverLikeSet(), db.name, 'b')]);
        expect(results, JSON.stringify(results.map((r) => (r.status === 'rejected' ? String(r.reason) : r.value)))).toEqual([
          { status: 'fulfilled', value: 12 },
          { status: 'fulfilled', value: 12 },
        ]);
        expect(await a.all('SELECT version FROM schema_migrations')).toEqual([{ version: 12 }]);
      } finally {
        await a.close();
        await b.close();
        await db.cleanup();
      }
    }
  });
});

describe('PostgresSql specifics', () => {
  it('numbers ? outside strings, E-strings, quoted names, dollar quotes and nested comments', () => {
    expect(numberPlaceholders('SELECT ?, ?')).toEqual({ text: 'SELECT $1, $2', count: 2 });
    expect(numberPlaceholders("SELECT 'a?''?', E'\\'?', \"x?\" FROM t WHERE a = ?").text).toBe("SELECT 'a?''?', E'\\'?', \"x?\" FROM t WHERE a = $1");
    expect(numberPlaceholders('SELECT $$ ? $$, $tag$ ?$$ $tag$, ? /* ? /* ? */ ? */ -- ?\n, ?').text).toBe('SELECT $$ ? $$, $tag$ ?$$ $tag$, $1 /* ? /* ? */ ? */ -- ?\n, $2');
    expect(numberPlaceholders("SELECT name FROM t WHERE x = 'e?' AND y = ?").count).toBe(1);
    expect(numberPlaceholders('SELECT $1').count).toBe(0);
  });

  it('a value past 2^53 is an error, never a rounded number', async () => {
    const db = await freshDatabase();
    const sql = new PostgresSql(db.url);
    try {
      expect(await sql.get('SELECT 9007199254740991::bigint AS n')).toEqual({ n: Number.MAX_SAFE_INTEGER });
      expect(await sql.get('SELECT 9007199254740993::bigint AS n').catch((e: unknown) => e)).toBeInstanceOf(RangeError);
      expect(await sql.get('SELECT 1.5::numeric AS n')).toEqual({ n: 1.5 });
      // The pool goes on after a row it could not read.
      expect(await sql.get('SELECT 1 AS one')).toEqual({ one: 1 });
      // pg's global parsers are untouched: another pool still gets int8 as a string.
      const other = new pg.Client({ connectionString: db.url });
      await other.connect();
      expect((await other.query('SELECT 5::bigint AS n')).rows[0]).toEqual({ n: '5' });
      await other.end();
    } finally {
      await sql.close();
      await db.cleanup();
    }
  });

  it('a failed query that fn caught still aborts the transaction: nothing is committed and it says so', async () => {
    const db = await freshDatabase();
    const sql = new PostgresSql(db.url);
    try {
      await sql.exec('CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)');
      await sql.run("INSERT INTO kv VALUES ('a', 'x')");
      const err = await sql.transaction(async () => {
        await sql.run("INSERT INTO kv VALUES ('b', 'y')");
        await sql.run("INSERT INTO kv VALUES ('a', 'dup')").catch(() => undefined);
      }).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(CarryonError);
      expect(isUniqueViolation(err)).toBe(true);
      expect(await sql.all('SELECT k FROM kv')).toEqual([{ k: 'a' }]);
    } finally {
      await sql.close();
      await db.cleanup();
    }
  });

  it('gives up on a conflict after maxAttempts with a CarryonError naming the cause', async () => {
    const db = await freshDatabase();
    const sql = new PostgresSql(db.url, { maxAttempts: 1 });
    try {
      await sql.exec('CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)');
      const inc = () => sql.transaction(async () => {
        const { n } = (await sql.get<{ n: number }>('SELECT n FROM counter WHERE id = 1'))!;
        await new Promise((r) => setTimeout(r, 20));
        await sql.run('UPDATE counter SET n = ? WHERE id = 1', [n + 1]);
      });
      const results = await Promise.allSettled([inc(), inc(), inc()]);
      const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as CarryonError);
      expect(failures.length).toBeGreaterThan(0);
      for (const f of failures) {
        expect(f).toBeInstanceOf(CarryonError);
        expect(f.message).toMatch(/failed 1 times in a row on conflicts/);
        expect((f.cause as { code?: string }).code).toBe('40001');
      }
      expect(await sql.get('SELECT n FROM counter')).toEqual({ n: results.length - failures.length });
    } finally {
      await sql.close();
      await db.cleanup();
    }
  });

  it('a refused connection is META_UNAVAILABLE naming host:port, never the password', async () => {
    const closed = await freePort();
    const url = `postgres://carryon:sekret-pw@127.0.0.1:${closed}/carryon`;
    const sql = new PostgresSql(url, { connectAttempts: 2 });
    try {
      for (const call of [() => sql.get('SELECT 1'), () => sql.transaction(() => sql.get('SELECT 1')), () => sql.exec('SELECT 1')]) {
        const err = (await call().then(() => null, (e: unknown) => e)) as CarryonError;
        expect(err).toBeInstanceOf(CarryonError);
        expect(err.code).toBe('META_UNAVAILABLE');
        expect(err.message).toContain(`127.0.0.1:${closed}`);
        expect(JSON.stringify({ m: err.message, d: err.data })).not.toContain('sekret');
      }
      await expect(openSql(url, serverLikeSet(), 'x')).rejects.toMatchObject({ code: 'META_UNAVAILABLE' });
    } finally {
      await sql.close();
    }
    expect(describeMetaUrl(url)).toBe(`postgres://carryon@127.0.0.1:${closed}/carryon`);
    expect(describeMetaUrl('postgresql://u@h/db?password=pw&sslmode=require')).not.toContain('pw&');
    await expect(openSql('/var/lib/carryon/carryon.db', serverLikeSet(), 'x')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('a connection killed by the server: inside a transaction META_UNAVAILABLE (no crash), outside it the next query works', async () => {
    const db = await freshDatabase();
    const sql = new PostgresSql(db.url);
    const kill = () => admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [db.name]);
    try {
      await sql.exec('CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)');
      const err = (await sql.transaction(async () => {
        await sql.run("INSERT INTO kv VALUES ('a', 'x')");
        await kill();
        await new Promise((r) => setTimeout(r, 100));
        await sql.run("INSERT INTO kv VALUES ('b', 'y')");
      }).then(() => null, (e: unknown) => e)) as CarryonError;
      expect(err).toBeInstanceOf(CarryonError);
      expect(err.code).toBe('META_UNAVAILABLE');
      expect(await sql.all('SELECT k FROM kv')).toEqual([]);
      // Idle pooled connections killed: the pool drops them, the next queries open new ones.
      await Promise.all([sql.get('SELECT 1'), sql.get('SELECT 2'), sql.get('SELECT 3')]);
      await kill();
      await new Promise((r) => setTimeout(r, 100));
      expect(await Promise.all([sql.get('SELECT 1 AS n'), sql.get('SELECT 2 AS n')])).toEqual([{ n: 1 }, { n: 2 }]);
      expect(await sql.transaction(() => sql.run("INSERT INTO kv VALUES ('c', 'z')"))).toEqual({ changes: 1 });
    } finally {
      await sql.close();
      await db.cleanup();
    }
  });

  it('after the server restarts, the next query outside a transaction works again', async () => {
    const sql = new PostgresSql(dbUrl('carryon'));
    try {
      expect(await sql.get('SELECT 1 AS one')).toEqual({ one: 1 });
      await admin.end();
      await run('bash', [PG_SH, 'stop', dir]);
      const err = (await sql.get('SELECT 1 AS one').then(() => null, (e: unknown) => e)) as CarryonError;
      expect(err?.code).toBe('META_UNAVAILABLE');
      await run('bash', [PG_SH, 'start', dir, String(port)]);
      expect(await sql.get('SELECT 1 AS one')).toEqual({ one: 1 });
      expect(await sql.transaction(() => sql.get('SELECT 2 AS two'))).toEqual({ two: 2 });
    } finally {
      await sql.close();
      admin = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres` });
      await admin.connect();
    }
  });
});
