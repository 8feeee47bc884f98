// S3BlockStore against a real Ceph RGW (scripts/rgw.sh), started once for this file: the conformance
// suite on a fresh key prefix per test, then what only an object store has: a second instance finding
// blocks through its index refresh, reopening, a crash between pack and index, compaction freeing the
// bytes, request counts, credentials kept out of errors, and an RGW restart in the middle of a sync.
// Missing Ceph binaries fail the file (install them with scripts/install-test-deps.sh), never skip it.
import { execFile, spawn } from 'node:child_process';
import { randomBytes as cryptoRandom } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockId, CarryonError, encodeBlock, getBlock, openBlockStore, S3BlockStore, type BlockId, type S3BlockStoreOptions } from '../../src/index.js';
import { S3Client } from '../../src/store/s3-client.js';
import { readAhead } from '../../server/blocks.js';
import { randomBytesSeeded } from '../../scripts/lib/prng.js';
import { runBlockStoreConformance } from './block-store.js';

const run = promisify(execFile);
const RGW_SH = path.join(import.meta.dirname, '../../scripts/rgw.sh');
const KiB = 1024;

let dir = '';
let env: Record<string, string> = {};

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-rgw-'));
  try {
    await run(RGW_SH, ['start', dir, String(await freePort())], { timeout: 150_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`scripts/rgw.sh could not start Ceph RGW (needs \`apt-get install -y ceph-mon ceph-osd radosgw\`): ${e.stderr || e.message}`);
  }
  const { stdout } = await run(RGW_SH, ['env', dir]);
  env = Object.fromEntries(stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}, 180_000);

afterAll(async () => {
  if (dir) {
    await run(RGW_SH, ['stop', dir], { timeout: 60_000 }).catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
  }
}, 90_000);

function opts(prefix: string, more: Partial<S3BlockStoreOptions> = {}): S3BlockStoreOptions {
  return {
    endpoint: env.CARRYON_S3_ENDPOINT!,
    bucket: env.CARRYON_S3_BUCKET!,
    prefix,
    accessKeyId: env.AWS_ACCESS_KEY_ID!,
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
    ...more,
  };
}

function freshPrefix(): string {
  return `t/${cryptoRandom(6).toString('hex')}`;
}

function rawClient(): S3Client {
  return new S3Client({
    endpoint: env.CARRYON_S3_ENDPOINT!,
    bucket: env.CARRYON_S3_BUCKET!,
    region: 'us-east-1',
    credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID!, secretAccessKey: env.AWS_SECRET_ACCESS_KEY! },
  });
}

/** Objects and bytes under a prefix, by kind. */
async function census(prefix: string): Promise<{ packs: number; indexes: number; bytes: number }> {
  const c = rawClient();
  try {
    const out = { packs: 0, indexes: 0, bytes: 0 };
    for await (const o of c.list(`${prefix}/`)) {
      if (o.key.includes('/packs/')) out.packs++;
      if (o.key.includes('/index/')) out.indexes++;
      out.bytes += o.size;
    }
    return out;
  } finally {
    c.close();
  }
}

interface Block {
  id: BlockId;
  plain: Buffer;
  encoded: Buffer;
}

function randomBlocks(seed: number, count: number, size = 64 * KiB): Block[] {
  return Array.from({ length: count }, (_, i) => {
    const plain = randomBytesSeeded(seed, i, size);
    return { id: blockId(plain), plain, encoded: encodeBlock(plain) };
  });
}

async function listAll(store: S3BlockStore): Promise<BlockId[]> {
  const out: BlockId[] = [];
  for await (const id of store.list()) out.push(id);
  return out.sort();
}

// Each test gets its own prefix; a short refresh interval keeps the suite's misses quick.
runBlockStoreConformance('S3BlockStore (Ceph RGW)', async () => ({ store: new S3BlockStore(opts(freshPrefix(), { refreshIntervalMs: 100 })) }));

describe('S3BlockStore on Ceph RGW', () => {
  it('a second instance on the same bucket finds a block the first wrote and synced, through its refresh; a flood of misses costs few LISTs', async () => {
    const prefix = freshPrefix();
    const a = new S3BlockStore(opts(prefix));
    const b = new S3BlockStore(opts(prefix, { refreshIntervalMs: 1000 }));
    try {
      const [x, y] = randomBlocks(11, 2);
      expect(await b.has(x!.id)).toBe(false); // b has loaded its (empty) index
      await a.put(x!.id, x!.encoded, x!.plain);
      await a.sync();
      // getEncoded waits for a refresh that began after the call: it finds x although b listed just now.
      expect((await getBlock(b, x!.id)).equals(x!.plain)).toBe(true);
      expect(await b.has(x!.id)).toBe(true);
      const listsBefore = b.stats().list;
      const absent = randomBlocks(12, 200, 100);
      const answers = await Promise.all(absent.map((s) => b.has(s.id)));
      for (const s of absent) answers.push(await b.has(s.id));
      expect(answers.every((v) => v === false)).toBe(true);
      expect(b.stats().list - listsBefore).toBeLessThanOrEqual(2);
      // A delete on one instance, seen by the other after a refresh.
      await a.put(y!.id, y!.encoded);
      await a.sync();
      expect(await listAll(b)).toEqual([x!.id, y!.id].sort());
      await a.delete(x!.id);
      await a.sync();
      expect(await listAll(b)).toEqual([y!.id]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a store reopened after close() lists and reads its blocks and keeps its deletes', async () => {
    const prefix = freshPrefix();
    const blocks = randomBlocks(21, 40, 3000);
    const one = new S3BlockStore(opts(prefix));
    for (const s of blocks) await one.put(s.id, s.encoded, s.plain);
    await one.delete(blocks[0]!.id); // still in the open batch: never indexed
    await one.sync();
    await one.delete(blocks[1]!.id); // indexed: a tombstone, written by close()
    await one.close();
    const keys = `${encodeURIComponent(env.AWS_ACCESS_KEY_ID!)}:${encodeURIComponent(env.AWS_SECRET_ACCESS_KEY!)}`;
    const two = openBlockStore(`s3+http://${keys}@${new URL(env.CARRYON_S3_ENDPOINT!).host}/${env.CARRYON_S3_BUCKET}/${prefix}?region=us-east-1`) as S3BlockStore;
    try {
      expect(two).toBeInstanceOf(S3BlockStore);
      expect(await listAll(two)).toEqual(blocks.slice(2).map((s) => s.id).sort());
      expect(await two.has(blocks[1]!.id)).toBe(false);
      const got = await two.getEncodedMany(blocks.slice(2).map((s) => s.id));
      got.forEach((g, i) => expect(g.equals(blocks[i + 2]!.encoded)).toBe(true));
      expect(two.stats().get).toBeLessThanOrEqual(1 + (await census(prefix)).indexes); // the index objects, then one coalesced read
    } finally {
      await two.close();
    }
  });

  it('a crash between pack and index upload leaves no visible block, and compact() removes the orphan pack', async () => {
    const prefix = freshPrefix();
    const [s] = randomBlocks(31, 1, 5000);
    const c = rawClient();
    // What a crash after the pack PUT and before the index PUT leaves behind.
    await c.put(`${prefix}/packs/${'ab'.repeat(16)}`, [s!.encoded]);
    c.close();
    const store = new S3BlockStore(opts(prefix));
    try {
      expect(await store.has(s!.id)).toBe(false);
      expect(await listAll(store)).toEqual([]);
      const kept = await store.compact(); // the default grace period keeps a young orphan: it may be a batch in flight
      expect(kept.orphansDeleted).toBe(0);
      expect((await census(prefix)).packs).toBe(1);
      const report = await store.compact({ orphanGraceMs: 0 });
      expect(report.orphansDeleted).toBe(1);
      expect(await census(prefix)).toEqual({ packs: 0, indexes: 0, bytes: 0 });
    } finally {
      await store.close();
    }
  });

  it('delete + compact gives the bytes back; what is live stays readable, also after reopening', async () => {
    const prefix = freshPrefix();
    const blocks = randomBlocks(41, 96);
    const store = new S3BlockStore(opts(prefix));
    try {
      for (const [i, s] of blocks.entries()) {
        await store.put(s.id, s.encoded, s.plain);
        if (i % 32 === 31) await store.sync(); // three packs of 2 MiB
      }
      const before = await census(prefix);
      expect(before.packs).toBe(3);
      expect(before.bytes).toBeGreaterThan(96 * 64 * KiB);
      // Pack 1: all dead. Pack 2: 24 of 32 dead (rewritten). Pack 3: 4 dead (kept as it is).
      const dead = [...blocks.slice(0, 32), ...blocks.slice(32, 56), ...blocks.slice(64, 68)];
      for (const s of dead) await store.delete(s.id);
      await store.sync();
      const report = await store.compact({ smallPackBytes: 0 });
      expect(report).toMatchObject({ packsRewritten: 1, packsDeleted: 2, blocksMoved: 8 });
      const after = await census(prefix);
      expect(after.packs).toBe(2);
      const liveBytes = (96 - dead.length) * (64 * KiB + 16);
      expect(after.bytes).toBeLessThan(liveBytes + 4 * 64 * KiB + 64 * KiB); // pack 3 keeps its 4 dead blocks
      expect(report.bytesBefore - report.bytesAfter).toBeGreaterThan(50 * 64 * KiB);
      for (const s of dead.slice(0, 5)) expect(await store.has(s.id)).toBe(false);
      const live = blocks.filter((s) => !dead.includes(s));
      const got = await store.getEncodedMany(live.map((s) => s.id));
      got.forEach((g, i) => expect(g.equals(live[i]!.encoded)).toBe(true));
    } finally {
      await store.close();
    }
    const again = new S3BlockStore(opts(prefix));
    try {
      expect(await listAll(again)).toEqual(blocks.filter((s, i) => !(i < 56 || (i >= 64 && i < 68))).map((s) => s.id).sort());
      // A second compaction finds nothing to do.
      expect(await again.compact({ smallPackBytes: 0 })).toMatchObject({ packsRewritten: 0, packsDeleted: 0, indexesDeleted: 0 });
    } finally {
      await again.close();
    }
  });

  it('a compaction that crashes after either step loses no live block, and the next one finishes the job', async () => {
    for (const crashAt of ['copied', 'unindexed'] as const) {
      const prefix = freshPrefix();
      const blocks = randomBlocks(crashAt === 'copied' ? 71 : 72, 16, 20_000);
      const one = new S3BlockStore(opts(prefix));
      for (const s of blocks) await one.put(s.id, s.encoded, s.plain);
      await one.sync();
      for (const s of blocks.slice(0, 12)) await one.delete(s.id); // 4 of 16 live: the pack is rewritten
      await one.sync();
      const crash = await one.compact({ smallPackBytes: 0, onStep: (step) => {
        if (step === crashAt) throw new Error(`crash after ${step}`);
      } }).then(() => null, (e: unknown) => e);
      expect((crash as Error).message).toBe(`crash after ${crashAt}`);
      await one.close();
      const two = new S3BlockStore(opts(prefix));
      try {
        const live = blocks.slice(12);
        expect(await listAll(two)).toEqual(live.map((s) => s.id).sort());
        for (const s of live) expect((await two.getEncoded(s.id)).equals(s.encoded)).toBe(true);
        for (const s of blocks.slice(0, 12)) expect(await two.has(s.id)).toBe(false);
        await two.compact({ smallPackBytes: 0, orphanGraceMs: 0 });
        const c = await census(prefix);
        expect(c.packs).toBe(1); // only the rewritten one
        expect(c.indexes).toBe(1);
        expect(await listAll(two)).toEqual(live.map((s) => s.id).sort());
        for (const s of live) expect((await two.getEncoded(s.id)).equals(s.encoded)).toBe(true);
      } finally {
        await two.close();
      }
    }
  });

  it('checking in 64 MiB of 64 KiB random blocks with a sync every 256 blocks makes at most one PUT per 8 MiB; checking out reads ~8 MiB a GET', async () => {
    const prefix = freshPrefix();
    const blocks = randomBlocks(51, 1024);
    const store = new S3BlockStore(opts(prefix));
    try {
      for (const [i, s] of blocks.entries()) {
        await store.put(s.id, s.encoded, s.plain);
        if (i % 256 === 255) await store.sync(); // as server/blocks.ts BlockIngest does
      }
      await store.sync();
      const w = store.stats();
      expect(w.put).toBeLessThanOrEqual(64 / 8);
      expect(w.list).toBe(1); // the open
      expect(w.retries).toBe(0);
      const reader = new S3BlockStore(opts(prefix));
      try {
        // The server's check-out path: readAhead asks for 128 blocks at a time when the store has getEncodedMany.
        let n = 0;
        for await (const e of readAhead(reader, blocks.map((s) => s.id))) {
          expect(e.name).toBe(blocks[n]!.id);
          expect(e.data.equals(blocks[n]!.encoded)).toBe(true);
          n++;
        }
        expect(n).toBe(blocks.length);
        const r = reader.stats();
        expect(r.list).toBe(1);
        expect(r.get).toBeLessThanOrEqual(4 + 64 / 8); // 4 index objects, then one GET per 128 blocks asked for
        expect(r.put).toBe(0);
      } finally {
        await reader.close();
      }
    } finally {
      await store.close();
    }
  });

  it('refuses plain http to a non-loopback host, and never puts credentials in errors', async () => {
    expect(() => openBlockStore('s3+http://AKEY:SSECRET@10.1.2.3:7480/bucket')).toThrow(/loopback/);
    try {
      openBlockStore('s3+http://AKEY:SSECRET@10.1.2.3:7480/bucket');
    } catch (err) {
      expect(JSON.stringify((err as CarryonError).toJSON()) + (err as Error).message).not.toMatch(/AKEY|SSECRET/);
    }
    const wrong = new S3BlockStore(opts(freshPrefix(), { secretAccessKey: 'WRONGSECRETwrongsecret', accessKeyId: 'NOSUCHKEYID' }));
    const e1 = await wrong.has(blockId(Buffer.from('x'))).then(() => null, (e: unknown) => e);
    expect(e1).toBeInstanceOf(CarryonError);
    expect((e1 as CarryonError).code).toBe('IO_ERROR');
    expect((e1 as CarryonError).message).toMatch(/refused.*403/);
    expect(JSON.stringify((e1 as CarryonError).toJSON()) + (e1 as Error).message + String((e1 as Error).stack)).not.toMatch(/WRONGSECRET|NOSUCHKEYID/);
    await wrong.close();
    const port = await freePort(); // nothing listens there
    const down = new S3BlockStore({ ...opts(freshPrefix(), { retryBudgetMs: 500 }), endpoint: `http://127.0.0.1:${port}` });
    const e2 = await down.getEncoded(blockId(Buffer.from('y'))).then(() => null, (e: unknown) => e);
    expect((e2 as CarryonError).code).toBe('IO_ERROR');
    expect((e2 as CarryonError).message).toMatch(/object store .* is unreachable: ECONNREFUSED/);
    expect((e2 as CarryonError).message).not.toMatch(/carryontest/);
    await down.close().catch(() => undefined);
  });

  it('a sync survives an RGW restart in the middle (connection refused, then retried)', async () => {
    const prefix = freshPrefix();
    const store = new S3BlockStore(opts(prefix));
    try {
      const blocks = randomBlocks(61, 8);
      await store.put(blocks[0]!.id, blocks[0]!.encoded);
      await store.sync(); // open and one batch while RGW is up
      const pid = Number(readFileSync(path.join(dir, 'run/rgw.pid'), 'utf8'));
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(pid, 0);
          await new Promise((r) => setTimeout(r, 100));
        } catch {
          break;
        }
      }
      for (const s of blocks.slice(1)) await store.put(s.id, s.encoded);
      const syncing = store.sync();
      await new Promise((r) => setTimeout(r, 1000));
      const rgw = spawn('radosgw', ['-c', path.join(dir, 'ceph.conf'), '-n', 'client.rgw.carryon'], { stdio: 'ignore' });
      await new Promise((r) => rgw.on('exit', r)); // it daemonizes once it reached the mon
      await syncing;
      expect(store.stats().retries).toBeGreaterThan(0);
      const again = new S3BlockStore(opts(prefix));
      try {
        expect(await listAll(again)).toEqual(blocks.map((s) => s.id).sort());
      } finally {
        await again.close();
      }
    } finally {
      await store.close();
    }
  });
});
