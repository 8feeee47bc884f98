// The metadata conformance suite on SQLite, the embedded default: a fresh data folder per test, opened
// as `carryon-server` opens it (WAL, migrations through the one runner).
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initDataDir, openDataDir } from '../../server/db.js';
import { runMetaConformance } from './meta.js';

runMetaConformance('SQLite', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-meta-'));
  await initDataDir(dir);
  const d = await openDataDir(dir);
  return {
    sql: d.sql,
    connect: async () => d.sql,
    cleanup: () => fs.rm(dir, { recursive: true, force: true }),
  };
});
