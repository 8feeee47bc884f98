// One migration runner for the server's database and the laptop's state: it records every version it
// applies, and refuses (SCHEMA_TOO_NEW, exit 8) a database a newer carryon has upgraded, changing nothing.
import Database from 'better-sqlite3';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { latestVersion } from '../../src/index.js';
import { SERVER_SCHEMA } from '../../server/migrations.js';
import { Laptop, removeTmp, TestServer, tmpDir } from './harness.js';

const LATEST = latestVersion(SERVER_SCHEMA);

function withDb<T>(file: string, f: (db: Database.Database) => T): T {
  const db = new Database(file);
  try {
    return f(db);
  } finally {
    db.close();
  }
}

describe('schema versions', () => {
  let dir: string;
  let server: TestServer;
  beforeAll(async () => {
    dir = tmpDir('schema');
    server = new TestServer(dir);
    await server.init();
  });
  afterAll(() => removeTmp(dir));

  it('init records each version it applied, with the carryon release that applied it', () => {
    const rows = withDb(path.join(server.data, 'carryon.db'), (db) => db.prepare('SELECT version, by_carryon FROM schema_migrations ORDER BY version').all()) as Array<{ version: number; by_carryon: string }>;
    expect(rows.map((r) => r.version)).toEqual(Array.from({ length: LATEST }, (_, i) => i + 1));
    expect(rows[0]!.by_carryon).toMatch(/^carryon-server \d+\.\d+\.\d+/);
  });

  it('a server database from a newer carryon is refused by every command, and left as it was', async () => {
    const file = path.join(server.data, 'carryon.db');
    const before = withDb(file, (db) => {
      db.pragma('user_version = 99');
      return db.prepare('SELECT COUNT(*) AS n FROM schema_migrations').get() as { n: number };
    });
    for (const args of [['status'], ['user', 'add', 'eve']]) {
      const r = await server.admin(args);
      expect(r.code).toBe(8);
      expect(r.json.error.code).toBe('SCHEMA_TOO_NEW');
      expect(r.json.error.message).toContain(`schema version 99, but this carryon knows versions up to ${LATEST}`);
      expect(r.stderr).toMatch(/a newer carryon has upgraded it/);
    }
    await expect(server.start()).rejects.toThrow(/exited with 8/);
    withDb(file, (db) => {
      expect(db.pragma('user_version', { simple: true })).toBe(99);
      expect(db.prepare('SELECT COUNT(*) AS n FROM schema_migrations').get()).toEqual(before);
      expect(db.prepare("SELECT COUNT(*) AS n FROM users WHERE name = 'eve'").get()).toEqual({ n: 0 });
      db.pragma(`user_version = ${LATEST}`);
    });
    expect((await server.admin(['status'])).code).toBe(0);
  });

  it('a database migrated before versions were recorded gets its version recorded once, as found', async () => {
    const file = path.join(server.data, 'carryon.db');
    withDb(file, (db) => db.exec('DROP TABLE schema_migrations'));
    expect((await server.admin(['status'])).code).toBe(0);
    expect((await server.admin(['status'])).code).toBe(0);
    const rows = withDb(file, (db) => db.prepare('SELECT version, by_carryon FROM schema_migrations').all()) as Array<{ version: number; by_carryon: string }>;
    expect(rows).toEqual([{ version: LATEST, by_carryon: 'an earlier carryon (found at this version)' }]);
  });

  it('laptop state from a newer carryon is refused the same way, and the copy is untouched', async () => {
    const laptop = new Laptop(path.join(dir, 'laptop'));
    expect((await laptop.cli(['status', '--json'])).code).toBe(0);
    const file = path.join(laptop.home, 'state.db');
    const versions = withDb(file, (db) => (db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as Array<{ version: number }>).map((r) => r.version));
    expect(versions).toEqual([1, 2, 3, 4, 5, 6, 7]);
    withDb(file, (db) => db.pragma('user_version = 40'));
    const r = await laptop.cli(['status', '--json']);
    expect(r.code).toBe(8);
    expect(r.json.error.code).toBe('SCHEMA_TOO_NEW');
    expect(r.json.error.message).toMatch(/laptop state at .*state\.db is at schema version 40, but this carryon knows versions up to 7/);
    expect(withDb(file, (db) => db.pragma('user_version', { simple: true }))).toBe(40);
  });
});
