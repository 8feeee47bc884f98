// The server's parts, opened once per process: the metadata database behind `Sql`, the block store,
// the repositories over them and the services the HTTP routes and the CLI commands both call.
// Owns: which engine backs what (the data folder's SQLite file and store by default) and the order of
// closing. Must not know: HTTP, commander.
import os from 'node:os';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import type { BlockStore, Sql } from '../../src/index.js';
import { openDataDir, type Backends } from '../db.js';
import { EscrowService } from '../escrow.js';
import { FleetMeta } from '../fleet-meta.js';
import { GarbageCollector, IngestLeases } from '../gc.js';
import { Meta } from '../meta.js';
import { PersonaMeta } from '../persona-meta.js';
import { CheckoutService, spaceCheck } from './checkout-service.js';
import { DesktopService } from './desktop-service.js';
import { PersonaService } from './persona-service.js';
import { ReleaseService } from '../release.js';
import { RecomposeService } from '../recompose.js';
import { SharingService } from '../sharing.js';
import { BootTraceService } from '../boot-traces.js';

export interface ServerParts {
  /** The data folder: escrow key pair, staging space (tmp/), and by default the database and store. */
  root: string;
  sql: Sql;
  store: BlockStore;
  meta: Meta;
  fleet: FleetMeta;
  personaMeta: PersonaMeta;
  escrow: EscrowService;
  personas: PersonaService;
  desktops: DesktopService;
  checkouts: CheckoutService;
  /** Removes blocks nothing references (server/gc.ts); one at a time across instances. */
  gc: GarbageCollector;
  /** Client releases and the signed update feed (server/release.ts). */
  releases: ReleaseService;
  /** Refresh and recompose of desktops onto image versions (server/recompose.ts). */
  recompose: RecomposeService;
  /** Stored against logical bytes, per image and per desktop (server/sharing.ts). */
  sharing: SharingService;
  /** What streamed boots of each image version read first, in order (server/boot-traces.ts). */
  bootTraces: BootTraceService;
  close(): Promise<void>;
}

export interface PartsOptions {
  /** Uploads are refused (DISK_FULL) while the data folder has less than this free (default 64 MiB). */
  minFreeBytes?: number;
}

/**
 * Every repository and service over one metadata database and one block store. `root`: the data folder
 * (escrow keys, staging); null for a server without one (the conformance suites).
 */
export function buildParts(sql: Sql, store: BlockStore, root: string | null, opts: PartsOptions = {}): ServerParts {
  const tmp = root ? path.join(root, 'tmp') : os.tmpdir();
  if (root) mkdirSync(tmp, { recursive: true, mode: 0o700 });
  const meta = new Meta(sql);
  const fleet = new FleetMeta(sql);
  const personaMeta = new PersonaMeta(sql);
  const escrow = new EscrowService(sql, root, fleet);
  const needSpace = spaceCheck(root, opts.minFreeBytes);
  const leases = new IngestLeases(sql);
  const personas = new PersonaService(meta, personaMeta, fleet, escrow, store, tmp, needSpace, leases);
  const desktops = new DesktopService(meta, fleet, store, leases, tmp);
  const recompose = new RecomposeService(sql);
  const checkouts = new CheckoutService(meta, fleet, personas, escrow, store, needSpace, leases, recompose);
  return {
    root: root ?? '', sql, store, meta, fleet, personaMeta, escrow, personas, desktops, checkouts, gc: new GarbageCollector(sql, store), releases: new ReleaseService(sql, root), recompose, sharing: new SharingService(sql), bootTraces: new BootTraceService(sql, meta),
    close: async () => {
      await store.close?.();
      await sql.close();
    },
  };
}

/** Open the data folder and its backends (migrating the database) and build every service over them. */
export async function openParts(dataRoot: string | undefined, opts: PartsOptions & Backends = {}): Promise<ServerParts & { where: { meta: string; store: string } }> {
  const d = await openDataDir(dataRoot, { meta: opts.meta, store: opts.store });
  return { ...buildParts(d.sql, d.store, d.root, opts), where: { meta: d.meta, store: d.storeUrl } };
}
