// The metadata conformance suite: every engine behind `Sql` (SQLite, PostgreSQL) runs it with one call,
// through the server's own services (no SQL here), so the rules the service layer promises hold on each:
// one active checkout per desktop, an atomic check-in (version N or N+1, never both, never mixed), a
// lease code used once, admin requests moving through their states once, an audit row for every change.
// `setup` gives a fresh, migrated database; `connect` opens one more connection to the same database
// (another server instance: a new pool for PostgreSQL; SQLite serves one process, so it hands back the
// same connection and the races run on its in-process queue).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  blockId, CarryonError, DiskManifest, encodeBlock, encodeManifest, manifestId, MemoryBlockStore, packEntries, uploadEntryName, type BlockStore, type ErrorCode, type Sql,
} from '../../src/index.js';
import { buildParts, type ServerParts } from '../../server/services/parts.js';
import { decodeManifest, DEFAULT_REGISTRY_EXCLUDES } from '../../src/index.js';

const decodeManifestOf = (b: Buffer): DiskManifest => decodeManifest(b);
import type { User } from '../../server/meta.js';
import { IngestLeases } from '../../server/gc.js';

export interface MetaSetup {
  sql: Sql;
  connect: () => Promise<Sql>;
  cleanup: () => Promise<void>;
}

const actor = { name: 'conformance', device: null, address: 'local' };

async function codeOf(p: Promise<unknown>): Promise<ErrorCode | 'ok'> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    if (err instanceof CarryonError) return err.code;
    throw err;
  }
}

/** A manifest of `n` distinct 4 KiB blocks (stored in `store`), stored in the metadata too. */
async function manifestOf(parts: ServerParts, store: BlockStore, seed: number, n = 4): Promise<{ id: string; encoded: Buffer; m: DiskManifest }> {
  const m = new DiskManifest(n * 4096, 4096);
  const rows: Array<[string, number, number]> = [];
  for (let i = 0; i < n; i++) {
    const plain = Buffer.alloc(4096, (seed * 31 + i) & 0xff);
    plain.writeUInt32LE(seed, 0);
    plain.writeUInt32LE(i, 4);
    const id = blockId(plain);
    const enc = encodeBlock(plain);
    await store.put(id, enc, plain);
    rows.push([id, plain.length, enc.length]);
    m.setId(i, id);
  }
  await parts.meta.addBlocks(rows);
  const encoded = encodeManifest(m);
  const id = manifestId(encoded);
  await parts.meta.putManifest(id, encoded, m);
  return { id, encoded, m };
}

export function runMetaConformance(name: string, setup: () => Promise<MetaSetup>): void {
  describe(`metadata conformance: ${name}`, () => {
    let env: MetaSetup;
    let store: MemoryBlockStore;
    let a: ServerParts;
    let extra: Sql[];
    let alice: User;

    /** A second server instance over the same database and store. */
    async function instance(): Promise<ServerParts> {
      const sql = await env.connect();
      if (sql !== env.sql) extra.push(sql);
      return buildParts(sql, store, null);
    }

    /** An image, and a desktop `name` of alice's made from it (encryption off: no escrow involved). */
    async function desktop(name: string, seed = 1): Promise<void> {
      const img = await manifestOf(a, store, seed);
      await a.meta.publishImageVersion(`img-${name}`, img.id, actor);
      await a.desktops.createDesktop(name, 'alice', `img-${name}`, actor, 'off');
    }

    async function auditCount(action: string): Promise<number> {
      return (await a.fleet.auditLog(10_000)).filter((r) => r.action === action).length;
    }

    beforeEach(async () => {
      env = await setup();
      store = new MemoryBlockStore();
      extra = [];
      a = buildParts(env.sql, store, null);
      await a.desktops.addUser('alice', false, actor);
      await a.desktops.addUser('root', true, actor);
      alice = await a.meta.userByName('alice');
    });

    afterEach(async () => {
      for (const s of extra) await s.close();
      await env.sql.close();
      await env.cleanup();
    });

    it('users: a name is taken once; a token finds its user; a revoked token finds nobody', async () => {
      expect(await codeOf(a.desktops.addUser('alice', false, actor))).toBe('ALREADY_EXISTS');
      const { token } = await a.desktops.addUser('bob', false, actor);
      const who = await a.fleet.authenticate(token, '127.0.0.1');
      expect(who?.user.name).toBe('bob');
      await a.fleet.revokeToken(who!.tokenId, actor);
      expect(await a.fleet.authenticate(token, '127.0.0.1')).toBeNull();
      expect(await a.fleet.authenticate('co_not-a-token', null)).toBeNull();
      expect(await auditCount('user.add')).toBe(3);
      expect(await auditCount('token.revoke')).toBe(1);
    });

    it('integers past 2^31 and binary values come back as they went in', async () => {
      const big = new DiskManifest(3 * 2 ** 32 + 4096, 4 * 1024 * 1024);
      const encoded = encodeManifest(big);
      const id = manifestId(encoded);
      await a.meta.putManifest(id, encoded, big);
      await a.meta.putManifest(id, encoded, big); // idempotent
      expect((await a.meta.getManifest(id)).equals(encoded)).toBe(true);
      await a.meta.publishImageVersion('huge', id, actor);
      await a.desktops.createDesktop('huge-1', 'alice', 'huge', actor, 'off');
      expect((await a.desktops.info(alice, 'huge-1')).size).toBe(3 * 2 ** 32 + 4096);
      expect((await a.desktops.stats()).logicalBytes).toBe(2 * (3 * 2 ** 32 + 4096));
    });

    it('boot traces: one per image version, replaced whole; a refused one changes nothing; another user sees none of it', async () => {
      await desktop('bt');
      const blocks = (await a.desktops.info(alice, 'bt')).size / (await a.desktops.info(alice, 'bt')).blockSize;
      expect(await a.bootTraces.get(alice, 'bt')).toEqual({ image: 'img-bt', imageVersion: 1, blocks: [] });
      const order = [blocks - 1, 0, 2];
      expect(await a.bootTraces.put(alice, 'bt', { image: 'img-bt', imageVersion: 1, blocks: order })).toEqual({ image: 'img-bt', imageVersion: 1, blocks: 3 });
      expect(await codeOf(a.bootTraces.put(alice, 'bt', { image: 'img-bt', imageVersion: 1, blocks: [blocks] }))).toBe('BOOT_TRACE_INVALID');
      expect(await codeOf(a.bootTraces.put(alice, 'bt', { image: 'img-bt', imageVersion: 2, blocks: [1] }))).toBe('BOOT_TRACE_WRONG_IMAGE');
      expect(await codeOf(a.bootTraces.put(alice, 'bt', { image: 'other', imageVersion: 1, blocks: [1] }))).toBe('BOOT_TRACE_WRONG_IMAGE');
      await a.desktops.addUser('carol', false, actor);
      const carol = await a.meta.userByName('carol');
      expect(await codeOf(a.bootTraces.get(carol, 'bt'))).toBe('DESKTOP_NOT_FOUND');
      expect(await codeOf(a.bootTraces.put(carol, 'bt', { image: 'img-bt', imageVersion: 1, blocks: [1] }))).toBe('DESKTOP_NOT_FOUND');
      expect((await a.bootTraces.get(alice, 'bt')).blocks).toEqual(order);
      // A second instance reads and replaces the same row.
      const b = await instance();
      await b.bootTraces.put(alice, 'bt', { image: 'img-bt', imageVersion: 1, blocks: [3] });
      expect((await a.bootTraces.get(alice, 'bt')).blocks).toEqual([3]);
    });

    it('desktops: unique names; a user sees only their own; policies change together and are audited', async () => {
      await desktop('d1');
      expect(await codeOf(a.desktops.createDesktop('d1', 'alice', 'img-d1', actor))).toBe('ALREADY_EXISTS');
      await a.desktops.addUser('carol', false, actor);
      const carol = await a.meta.userByName('carol');
      expect(await a.desktops.list(carol)).toEqual([]);
      expect(await codeOf(a.desktops.info(carol, 'd1'))).toBe('DESKTOP_NOT_FOUND');
      expect((await a.desktops.list(alice)).map((d) => d.name)).toEqual(['d1']);
      const p = await a.desktops.setDesktopPolicy('d1', { leaseDays: 3, files: 'laptop', encryption: 'required' }, actor);
      expect(p).toMatchObject({ leaseDays: 3, files: 'laptop', encryption: 'required', effectiveEncryption: 'required' });
      // All or nothing: a bad lease length leaves the merge policy as it was too.
      expect(await codeOf(a.desktops.setDesktopPolicy('d1', { files: 'server', leaseDays: 9999 }, actor))).toBe('INVALID_ARGUMENT');
      expect((await a.desktops.desktopPolicy('d1')).files).toBe('laptop');
      expect(await auditCount('desktop.lease-policy')).toBe(1);
      expect(await auditCount('desktop.merge-policy')).toBe(1);
      expect(await auditCount('desktop.encryption-policy')).toBe(1);
      // Registry lists (migration 14): defaults until set; a bad pattern changes nothing, the merge policy included.
      expect((await a.desktops.desktopPolicy('d1')).registryScope).toEqual({ include: null, exclude: [...DEFAULT_REGISTRY_EXCLUDES] });
      expect(await codeOf(a.desktops.setDesktopPolicy('d1', { files: 'server', registryExclude: ['HKEY_USERS\\S-1-5-21'] }, actor))).toBe('INVALID_ARGUMENT');
      expect((await a.desktops.desktopPolicy('d1')).files).toBe('laptop');
      const r = await a.desktops.setDesktopPolicy('d1', { registryInclude: ['Software\\Vendor'], registryExclude: ['@default', 'Software\\Vendor\\Cache'] }, actor);
      expect(r).toMatchObject({ registryInclude: ['Software\\Vendor'], registryExclude: ['@default', 'Software\\Vendor\\Cache'] });
      expect(r.registryScope.exclude).toEqual([...DEFAULT_REGISTRY_EXCLUDES, 'Software\\Vendor\\Cache']);
      expect((await a.desktops.info(alice, 'd1')).registryScope).toEqual(r.registryScope);
      expect((await a.meta.desktopPolicies(alice, 'd1')).registryScope).toEqual(r.registryScope);
      await a.desktops.setDesktopPolicy('d1', { registryInclude: null, registryExclude: null }, actor);
      expect((await a.desktops.desktopPolicy('d1')).registryScope).toEqual({ include: null, exclude: [...DEFAULT_REGISTRY_EXCLUDES] });
      expect(await auditCount('desktop.registry-scope')).toBe(2);
    });

    it('one active checkout per desktop, however many devices race for it (two instances)', async () => {
      await desktop('race');
      const b = await instance();
      const tries = Array.from({ length: 12 }, (_, i) => codeOf((i % 2 ? b : a).checkouts.start(alice, 'race', `dev-${i}`, `laptop ${i}`, actor)));
      const codes = await Promise.all(tries);
      expect(codes.filter((c) => c === 'ok')).toHaveLength(1);
      expect(codes.filter((c) => c === 'CHECKOUT_CONFLICT')).toHaveLength(11);
      expect(await a.fleet.activeCheckouts()).toHaveLength(1);
      expect(await auditCount('checkout.start')).toBe(1);
      // The holder resumes; nobody else gets in.
      const holder = (await a.fleet.activeCheckouts())[0]!;
      const again = await b.checkouts.start(alice, 'race', holder.device, holder.deviceName, actor);
      expect(again.resumed).toBe(true);
      expect(again.checkoutId).toBe(holder.checkoutId);
    });

    it('a check-in moves the desktop from N to N+1 once; repeats answer the same; a stale checkout gets VERSION_CONFLICT', async () => {
      await desktop('ci');
      const b = await instance();
      const co = await a.checkouts.start(alice, 'ci', 'dev-a', 'laptop a', actor);
      const next = await manifestOf(a, store, 99);
      // The user must hold the blocks they name: sent by them (proof of possession).
      await a.meta.addBlocks([], { userId: alice.id, ids: next.m.uniqueIds() });
      const commits = await Promise.all([a, b, a, b].map((p) => p.checkouts.commit(alice, co.checkoutId, 'dev-a', next.encoded, null, actor)));
      expect(new Set(commits.map((c) => c.version))).toEqual(new Set([2]));
      expect(commits.filter((c) => !c.alreadyCommitted)).toHaveLength(1);
      const info = await a.desktops.info(alice, 'ci');
      expect(info.version).toBe(2);
      expect(info.manifestId).toBe(next.id);
      expect(info.checkout).toBeNull();
      expect(await auditCount('checkout.commit')).toBe(1);
      // A block the user cannot name: BLOCKS_MISSING, and nothing moves.
      const co2 = await a.checkouts.start(alice, 'ci', 'dev-a', 'laptop a', actor);
      const foreign = await manifestOf(a, store, 7);
      expect(await codeOf(a.checkouts.commit(alice, co2.checkoutId, 'dev-a', foreign.encoded, null, actor))).toBe('BLOCKS_MISSING');
      expect((await a.desktops.info(alice, 'ci')).version).toBe(2);
      // Another device cannot commit this checkout.
      expect(await codeOf(a.checkouts.commit(alice, co2.checkoutId, 'dev-b', next.encoded, null, actor))).toBe('FORBIDDEN');
    });

    it('an offline lease code works once, even reported to two instances at once', async () => {
      await desktop('lease');
      const b = await instance();
      const co = await a.checkouts.start(alice, 'lease', 'dev-a', 'laptop a', actor);
      const code = await a.fleet.leaseCode(co.checkoutId, 30, actor);
      expect(code.seq).toBe(1);
      const beats = await Promise.all([a, b, a, b].map((p) => p.checkouts.heartbeat(alice, co.checkoutId, 'dev-a', { pendingBytes: 0, pendingBlocks: 0, leaseCodeSeq: 1 }, actor)));
      for (const h of beats) expect(Date.parse(h.leaseExpiresAt!)).toBeGreaterThanOrEqual(Date.parse(code.leaseExpiresAt));
      expect(await auditCount('lease.code-used')).toBe(1);
      expect(await auditCount('lease.code')).toBe(1);
    });

    it('an admin request moves through its states once, whichever instance hears of it', async () => {
      await desktop('req');
      const b = await instance();
      const co = await a.checkouts.start(alice, 'req', 'dev-a', 'laptop a', actor);
      const r = await a.fleet.requestCheckin(co.checkoutId, actor);
      expect(r.state).toBe('requested');
      // A second request while one is open is the same request.
      expect((await b.fleet.requestCheckin(co.checkoutId, actor)).id).toBe(r.id);
      await Promise.all([a, b, a].map((p) => p.checkouts.updateRequest(alice, co.checkoutId, r.id, 'dev-a', 'in-progress', {}, actor)));
      await Promise.all([b, a, b].map((p) => p.checkouts.updateRequest(alice, co.checkoutId, r.id, 'dev-a', 'done', { version: 1 }, actor)));
      expect((await a.fleet.request(r.id)).state).toBe('done');
      expect(await auditCount('checkin.request')).toBe(1);
      expect(await auditCount('checkin.in-progress')).toBe(1);
      expect(await auditCount('checkin.done')).toBe(1);
    });

    it('a check-in by hand finishes the open forced check-in, once, while the agent\'s late reports change nothing', async () => {
      await desktop('req-hand');
      const b = await instance();
      const co = await a.checkouts.start(alice, 'req-hand', 'dev-a', 'laptop a', actor);
      const r = await a.fleet.requestCheckin(co.checkoutId, actor);
      const next = await manifestOf(a, store, 98);
      await a.meta.addBlocks([], { userId: alice.id, ids: next.m.uniqueIds() });
      await Promise.all([a, b, a, b].map((p) => p.checkouts.commit(alice, co.checkoutId, 'dev-a', next.encoded, null, actor)));
      expect(await a.fleet.request(r.id)).toMatchObject({ state: 'done', detail: { version: 2 } });
      await Promise.all([a, b].map((p) => p.checkouts.updateRequest(alice, co.checkoutId, r.id, 'dev-a', 'in-progress', {}, actor)));
      expect((await b.fleet.request(r.id)).state).toBe('done');
      expect(await auditCount('checkin.in-progress')).toBe(0);
      expect(await auditCount('checkin.done')).toBe(1);
    });

    it('a user\'s first persona version is made once under concurrent first reads', async () => {
      const b = await instance();
      const got = await Promise.all([a, b, a, b, a].map((p) => p.personas.get(alice)));
      expect(new Set(got.map((g) => g.version))).toEqual(new Set([1]));
      expect(await a.personaMeta.history(alice.id)).toHaveLength(1);
    });

    it('a rolled-back checkout ends at once; the desktop is free; deleting it is refused while held and audited when done', async () => {
      await desktop('rb');
      const co = await a.checkouts.start(alice, 'rb', 'dev-a', 'laptop a', actor);
      expect(await codeOf(a.desktops.deleteDesktop('rb', actor))).toBe('CHECKOUT_CONFLICT');
      await a.fleet.rollback(co.checkoutId, actor);
      expect(await codeOf(a.checkouts.heartbeat(alice, co.checkoutId, 'dev-b', { pendingBytes: 0, pendingBlocks: 0 }, actor))).toBe('FORBIDDEN');
      const hb = await a.checkouts.heartbeat(alice, co.checkoutId, 'dev-a', { pendingBytes: 0, pendingBlocks: 0 }, actor);
      expect(hb.rolledBack).toBe(true);
      expect((await a.desktops.info(alice, 'rb')).checkout).toBeNull();
      const del = await a.desktops.deleteDesktop('rb', actor);
      expect(del.desktop).toBe('rb');
      expect(await codeOf(a.desktops.info(alice, 'rb'))).toBe('DESKTOP_NOT_FOUND');
      expect(await auditCount('checkout.rollback')).toBe(1);
      expect(await auditCount('desktop.delete')).toBe(1);
    });

    it('a failed change leaves nothing behind: no row, no audit', async () => {
      await desktop('tx');
      const before = (await a.fleet.auditLog(10_000)).length;
      expect(await codeOf(a.desktops.createDesktop('tx2', 'nobody', 'img-tx', actor))).toBe('USER_NOT_FOUND');
      expect(await codeOf(a.desktops.createDesktop('tx2', 'alice', 'no-image', actor))).toBe('IMAGE_NOT_FOUND');
      expect(await codeOf(a.desktops.setImagePolicy('img-tx', { leaseDays: 2, encryption: 'bogus' as never }, actor))).toBe('INVALID_ARGUMENT');
      expect((await a.desktops.imagePolicy('img-tx')).leaseDays).toBeNull();
      expect((await a.fleet.auditLog(10_000)).length).toBe(before);
      expect((await a.desktops.list(null)).map((d) => d.name)).toEqual(['tx']);
    });

    /** New content for desktop `name`: its checked-out version with blocks [from, from+n) replaced, uploaded as a laptop would, then committed. */
    async function checkIn(p: ServerParts, name: string, device: string, seed: number): Promise<{ version: number; ids: string[] }> {
      for (let attempt = 0; ; attempt++) {
        const co = await p.checkouts.start(alice, name, device, device, actor);
        const base = decodeManifestOf(await p.checkouts.manifest(alice, co.checkoutId));
        const next = new DiskManifest(base.size, base.blockSize, Buffer.from(base.ids));
        const blocks: Array<{ id: string; plain: Buffer }> = [];
        for (let i = 0; i < 2; i++) {
          const plain = Buffer.alloc(base.blockSize, (seed + i) & 0xff);
          plain.writeUInt32LE(seed, 8);
          plain.writeUInt32LE(i, 12);
          blocks.push({ id: blockId(plain), plain });
          next.setId(i, blockId(plain));
        }
        const missing = await p.checkouts.missing(alice, co.checkoutId, blocks.map((b) => b.id));
        const body = packEntries(blocks.filter((b) => missing.includes(b.id)).map((b) => ({ name: uploadEntryName({ kind: 'block', id: b.id }), data: b.plain })));
        await p.checkouts.upload(alice, co.checkoutId, device, body);
        try {
          const r = await p.checkouts.commit(alice, co.checkoutId, device, encodeManifest(next), null, actor);
          return { version: r.version, ids: next.uniqueIds() };
        } catch (err) {
          // A collection removed a block between the upload and the commit: the laptop sends it again.
          if (!(err instanceof CarryonError && err.code === 'BLOCKS_MISSING') || attempt > 5) throw err;
        }
      }
    }

    it('gc: a deleted desktop\'s own blocks go (rows and bytes), the image\'s stay; a dry run changes nothing', async () => {
      await desktop('keep', 11);
      await desktop('drop', 12);
      await checkIn(a, 'keep', 'dev-k', 100);
      const gone = await checkIn(a, 'drop', 'dev-d', 200);
      const imageIds = new Set(decodeManifestOf(await a.meta.getManifest(await a.meta.imageManifestOf((await a.meta.desktopByName('drop')).id))).uniqueIds());
      const own = gone.ids.filter((id) => !imageIds.has(id));
      expect(own).toHaveLength(2);
      await a.desktops.deleteDesktop('drop', actor);
      const dry = await a.gc.run(actor, { graceMs: 0, dryRun: true });
      expect(dry.condemned.blocks).toBe(2);
      for (const id of own) expect(await store.has(id)).toBe(true);
      const before = (await a.desktops.stats()).storedBytes;
      const r = await a.gc.run(actor, { graceMs: 0 });
      expect(r.condemned).toEqual(dry.condemned);
      expect(r.swept.blocks).toBe(2);
      expect(r.storedBytesAfter).toBe(before - r.condemned.bytes);
      for (const id of own) expect(await store.has(id)).toBe(false);
      // Everything still named is readable: the kept desktop and the deleted one's image.
      for (const m of [await a.meta.versionManifest((await a.meta.desktopByName('keep')).id, 2), await a.meta.imageManifestOf((await a.meta.desktopByName('keep')).id)]) {
        for (const id of decodeManifestOf(await a.meta.getManifest(m)).uniqueIds()) expect(await store.has(id), id).toBe(true);
      }
      expect(await auditCount('gc.run')).toBe(1);
      // Nothing left to do.
      expect((await a.gc.run(actor, { graceMs: 0 })).condemned.blocks).toBe(0);
    });

    it('gc: spares what is younger than the grace, and deletes bytes stored but never indexed (an upload that died)', async () => {
      await desktop('young', 21);
      await checkIn(a, 'young', 'dev-y', 300);
      await a.desktops.deleteDesktop('young', actor);
      const plain = Buffer.alloc(4096, 7);
      await store.put(blockId(plain), encodeBlock(plain), plain);
      const r = await a.gc.run(actor, { graceMs: 3600_000 });
      expect(r.condemned.blocks).toBe(0);
      expect(r.spared.blocks).toBeGreaterThanOrEqual(2);
      expect(r.swept.orphans).toBe(1);
      expect(await store.has(blockId(plain))).toBe(false);
    });

    it('gc: the sweep waits for uploads in progress (their lease), and never deletes under one', async () => {
      await desktop('lease-gc', 31);
      await checkIn(a, 'lease-gc', 'dev-l', 400);
      await a.desktops.deleteDesktop('lease-gc', actor);
      const lease = await new IngestLeases(env.sql).acquire();
      const r = await a.gc.run(actor, { graceMs: 0, sweepWaitMs: 300 });
      expect(r.condemned.blocks).toBe(2); // its own two (the image's blocks stay: the image is live)
      expect(r.sweepPostponed).toBe(true);
      expect(r.swept.blocks).toBe(0);
      await lease.release();
      const again = await a.gc.run(actor, { graceMs: 0 });
      expect(again.sweepPostponed).toBe(false);
      expect(again.swept.blocks).toBe(2);
    });

    it('gc racing check-ins on two instances (grace 0, the worst case) never loses a block a version names', async () => {
      const b = await instance();
      const c = await instance();
      for (const n of ['r1', 'r2', 'r3']) await desktop(n, n.charCodeAt(1));
      const done = { stop: false, runs: 0 };
      const collector = (async () => {
        while (!done.stop) {
          try {
            await c.gc.run(actor, { graceMs: 0, sweepWaitMs: 50 });
            done.runs++;
          } catch (err) {
            if (!(err instanceof CarryonError && err.code === 'SERVER_BUSY')) throw err;
          }
          await new Promise((r) => setTimeout(r, 5)); // a scheduled collector runs now and then, not in a tight loop
        }
      })();
      const versions: Record<string, number> = {};
      await Promise.all(['r1', 'r2', 'r3'].map(async (n, k) => {
        for (let round = 0; round < 6; round++) {
          const p = (round + k) % 2 ? a : b;
          versions[n] = (await checkIn(p, n, `dev-${n}`, 1000 * (k + 1) + round)).version;
        }
      }));
      done.stop = true;
      await collector;
      const last = await a.gc.run(actor, { graceMs: 0 });
      expect(done.runs + 1).toBeGreaterThan(1);
      for (const n of ['r1', 'r2', 'r3']) {
        const d = await a.meta.desktopByName(n);
        expect(d.version).toBe(versions[n]);
        expect(d.version).toBe(7);
        for (const m of [d.manifest_id, await a.meta.imageManifestOf(d.id)]) {
          for (const id of decodeManifestOf(await a.meta.getManifest(m)).uniqueIds()) {
            expect(await store.has(id), `${n}: ${id}`).toBe(true);
            expect(await a.meta.hasBlock(id), `${n}: ${id}`).toBe(true);
          }
        }
      }
      // Every version is history that stays: per desktop its image's 4 blocks and 2 per check-in.
      expect(last.referencedBlocks).toBe(3 * (4 + 6 * 2));
      expect(last.condemned.blocks).toBe(0);
    });

    it('gc: a collection between a check-in\'s block checks and its commit makes the commit fail (BLOCKS_MISSING), never name a removed block', async () => {
      await desktop('window', 41);
      a.checkouts.beforeCommitTransaction = async () => {
        a.checkouts.beforeCommitTransaction = null;
        await new Promise((r) => setTimeout(r, 5)); // the uploaded blocks are older than the collector's cutoff
        const r = await a.gc.run(actor, { graceMs: 0 });
        expect(r.condemned.blocks).toBe(2); // uploaded, checked, not yet named by any version
      };
      const co = await a.checkouts.start(alice, 'window', 'dev-w', 'dev-w', actor);
      const base = decodeManifestOf(await a.checkouts.manifest(alice, co.checkoutId));
      const next = new DiskManifest(base.size, base.blockSize, Buffer.from(base.ids));
      const blocks = [0, 1].map((i) => {
        const plain = Buffer.alloc(base.blockSize, 0x40 + i);
        next.setId(i, blockId(plain));
        return { id: blockId(plain), plain };
      });
      const send = () => a.checkouts.upload(alice, co.checkoutId, 'dev-w', packEntries(blocks.map((b) => ({ name: uploadEntryName({ kind: 'block', id: b.id }), data: b.plain }))));
      await send();
      expect(await codeOf(a.checkouts.commit(alice, co.checkoutId, 'dev-w', encodeManifest(next), null, actor))).toBe('BLOCKS_MISSING');
      expect((await a.meta.desktopByName('window')).version).toBe(1);
      // The laptop sends them again and commits: every block of the new version is there.
      await send();
      expect((await a.checkouts.commit(alice, co.checkoutId, 'dev-w', encodeManifest(next), null, actor)).version).toBe(2);
      for (const b of blocks) expect(await store.has(b.id)).toBe(true);
    });
  });
}
