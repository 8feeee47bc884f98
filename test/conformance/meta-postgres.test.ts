// The metadata conformance suite on PostgreSQL: a fresh database per test in a private cluster, migrated
// as `carryon-server --meta postgres://...` migrates it (baseline, then steps). Its races run on two
// pools, as two server instances would.
import { afterAll, beforeAll } from 'vitest';
import { CARRYON_VERSION } from '../../src/index.js';
import { SERVER_SCHEMA } from '../../server/migrations.js';
import { openSql } from '../../server/sql/open.js';
import { PgCluster } from '../lib/pg-cluster.js';
import { runMetaConformance } from './meta.js';

let cluster: PgCluster;
beforeAll(async () => {
  cluster = await PgCluster.start();
}, 60_000);
afterAll(async () => cluster?.stop());

runMetaConformance('PostgreSQL', async () => {
  const db = await cluster.database();
  const by = `carryon-server ${CARRYON_VERSION}`;
  return {
    sql: await openSql(db.url, SERVER_SCHEMA, by),
    connect: () => openSql(db.url, SERVER_SCHEMA, by),
    cleanup: db.drop,
  };
});
