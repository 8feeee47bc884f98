// A private PostgreSQL cluster for a test file (scripts/pg.sh in a temp folder, on a free port), and fresh
// databases in it. A machine without PostgreSQL fails the file (apt-get install postgresql), never skips.
import { execFile } from 'node:child_process';
import { existsSync, promises as fs, readdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);
const PG_SH = path.resolve(import.meta.dirname, '../../scripts/pg.sh');

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

export class PgCluster {
  private admin: pg.Client | null = null;
  private seq = 0;
  private constructor(readonly dir: string, readonly port: number) {}

  static async start(): Promise<PgCluster> {
    const base = '/usr/lib/postgresql';
    if (!(existsSync(base) && readdirSync(base).some((v) => existsSync(path.join(base, v, 'bin/initdb'))))) {
      throw new Error('PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql (scripts/install-test-deps.sh installs it)');
    }
    const c = new PgCluster(await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-pg-')), await freePort());
    await run('bash', [PG_SH, 'start', c.dir, String(c.port)]);
    c.admin = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${c.port}/postgres` });
    await c.admin.connect();
    return c;
  }

  url(db: string): string {
    return `postgres://carryon@127.0.0.1:${this.port}/${db}`;
  }

  /** A fresh, empty database owned by carryon. */
  async database(): Promise<{ url: string; drop: () => Promise<void> }> {
    const name = `t${process.pid}_${++this.seq}`;
    await this.admin!.query(`CREATE DATABASE ${name} OWNER carryon`);
    return { url: this.url(name), drop: async () => void (await this.admin!.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)) };
  }

  async stop(): Promise<void> {
    await this.admin?.end().catch(() => undefined);
    await run('bash', [PG_SH, 'stop', this.dir]).catch(() => undefined);
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}
