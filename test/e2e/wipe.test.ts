// Wipe (issue 10): a rollback or a discard frees the space the desktop took on the laptop, and its data
// is gone from every file under the laptop home. A real ext4 image whose files are incompressible (so
// the cache's zstd frames hold the plaintext, as they would for media, archives or encrypted files) is
// checked out; then an admin rolls it back and the agent acts, or the user discards it. The home is
// measured in allocated bytes (du), and every file under it is searched for 4 KiB samples of the disk.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prng, randomBytes } from '../unit/helpers.js';
import { allocatedUnder, filesUnder, killSpawned, Laptop, removeTmp, requireTool, TestServer, tmpDir } from './harness.js';

/** An ext4 image holding `payloadMiB` of seeded random files (plus directories and metadata). */
function makeRandomExt4(out: string, sizeMiB: number, payloadMiB: number): void {
  requireTool('mke2fs');
  const src = `${out}.files`;
  const rng = prng(4242);
  for (let i = 0; i < payloadMiB * 4; i++) {
    const d = path.join(src, `album-${i % 5}`);
    mkdirSync(d, { recursive: true });
    writeFileSync(path.join(d, `photo-${i}.jpg`), randomBytes(rng, 256 * 1024 - (i % 7) * 1000));
  }
  const r = spawnSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-U', '3b0e1a52-5a8e-4c1d-8e0f-2b7d9c4a6e11', '-E', 'root_owner=0:0', '-d', src, out, `${sizeMiB}M`], {
    env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' },
  });
  rmSync(src, { recursive: true, force: true });
  if (r.status !== 0) throw new Error(`mke2fs failed: ${r.stderr}`);
}

/** 4 KiB pages of the image that are file data (high entropy: ext4's metadata and zeros are not). */
function dataSamples(image: string, want: number): Buffer[] {
  const buf = readFileSync(image);
  const pages: Buffer[] = [];
  for (let o = 0; o + 4096 <= buf.length; o += 4096) {
    const p = buf.subarray(o, o + 4096);
    if (new Set(p).size >= 200) pages.push(p);
  }
  const step = Math.max(1, Math.floor(pages.length / want));
  return pages.filter((_, i) => i % step === 0).slice(0, want);
}

/** Files under `dir` holding at least one of the samples, with how many each holds. */
function filesHolding(dir: string, samples: Buffer[]): Record<string, number> {
  const hits: Record<string, number> = {};
  for (const f of filesUnder(dir)) {
    const c = readFileSync(f);
    const n = samples.filter((s) => c.includes(s)).length;
    if (n > 0) hits[path.relative(dir, f)] = n;
  }
  return hits;
}

const MiB = 1024 * 1024;

describe('wipe: a rollback or a discard frees the space and leaves no data behind', () => {
  const dir = tmpDir('wipe');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const laptop = new Laptop(path.join(dir, 'laptop'));
  let samples: Buffer[] = [];

  beforeAll(async () => {
    makeRandomExt4(image, 64, 24);
    samples = dataSamples(image, 400);
    await server.init();
    const token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'trip', '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  /** Check out `trip`; the home's size before and after, the cache's growth, and where the samples are. */
  async function checkout(): Promise<{ before: number; after: number; used: number }> {
    const before = allocatedUnder(laptop.home);
    const packs = path.join(laptop.home, 'cache', 'packs');
    const packsBefore = existsSync(packs) ? allocatedUnder(packs) : 0;
    const co = await laptop.cli(['checkout', 'trip', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const after = allocatedUnder(laptop.home);
    // What the desktop uses: its disk file and the cache's pack bytes for it (the cache's index and the
    // state database are the home's own, made at the first check-out, and stay).
    const used = statSync(co.json.disk).blocks * 512 + allocatedUnder(packs) - packsBefore;
    expect(samples.length).toBeGreaterThanOrEqual(300);
    // The control: the data is there, in the disk and in the cache's packs (zstd stores it as raw blocks).
    const hits = filesHolding(laptop.home, samples);
    expect(hits[path.relative(laptop.home, co.json.disk)]).toBe(samples.length);
    const inPacks = Object.entries(hits).filter(([f]) => f.startsWith(path.join('cache', 'packs'))).reduce((a, [, n]) => a + n, 0);
    expect(inPacks).toBeGreaterThanOrEqual(samples.length * 0.95); // a few straddle a zstd block header
    expect(used).toBeGreaterThan(40 * MiB);
    return { before, after, used };
  }

  it('rollback: the agent removes the copy, the home shrinks by at least what the desktop used, and no sample of its data is in any file', async () => {
    const { before, after, used } = await checkout();
    const held = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'trip');
    const rb = await server.admin(['admin', 'rollback', held.checkoutId]);
    expect(rb.code, rb.stderr).toBe(0);
    const agent = await laptop.cli(['agent', '--once']); // the human log goes to stderr
    expect(agent.code, agent.stderr).toBe(0);
    expect(agent.stderr).toMatch(/trip: rolled back by an admin: local copy removed/);
    const gone = allocatedUnder(laptop.home);
    const m = /trip: rolled back by an admin: local copy removed, (\d+) cache blocks removed, ([\d.]+) MiB freed/.exec(agent.stderr);
    console.log(`rollback: home ${after} B with the desktop (it used ${used} B: disk and cache packs), ${gone} B after the agent (${before} B before the check-out); agent: ${m?.[0]}`);
    expect(filesHolding(laptop.home, samples)).toEqual({});
    expect(after - gone).toBeGreaterThanOrEqual(used);
    expect(gone - before).toBeLessThan(256 * 1024); // what is left: the cache's empty index and the state database
    expect(m, agent.stderr).not.toBeNull();
    expect(Number(m![1])).toBeGreaterThan(300);
    expect(Number(m![2]) * MiB).toBeGreaterThanOrEqual(used - statSync(image).size); // the cache's part, at least
    const req = ((await server.admin(['admin', 'requests'])).json.requests as any[]).find((q) => q.desktop === 'trip');
    expect(req).toMatchObject({ kind: 'rollback', state: 'done', detail: { removedBlocks: Number(m![1]), freedBytes: expect.any(Number) } });
    expect(req.detail.freedBytes).toBeGreaterThan(20 * MiB);
  }, 120_000);

  it('discard: the same, and it says what it freed (human and --json)', async () => {
    const { before, after, used } = await checkout();
    const d = await laptop.cli(['discard', 'trip', '--yes', '--json']);
    expect(d.code, d.stderr).toBe(0);
    const gone = allocatedUnder(laptop.home);
    console.log(`discard: home ${after} B with the desktop (it used ${used} B: disk and cache packs), ${gone} B after discard (${before} B before the check-out); freedBytes ${d.json.freedBytes}`);
    expect(filesHolding(laptop.home, samples)).toEqual({});
    expect(after - gone).toBeGreaterThanOrEqual(used);
    expect(gone - before).toBeLessThan(256 * 1024);
    expect(d.json).toMatchObject({ desktop: 'trip', removed: true, removedBlocks: expect.any(Number), freedBytes: expect.any(Number) });
    expect(d.json.removedBlocks).toBeGreaterThan(300);
    expect(d.json.freedBytes).toBeGreaterThan(20 * MiB);
    // The human line.
    expect((await laptop.cli(['checkout', 'trip'])).code).toBe(0);
    const h = await laptop.cli(['discard', 'trip', '--yes']);
    expect(h.code, h.stderr).toBe(0);
    expect(h.stdout).toMatch(/discarded trip: removed .*disk\.raw( and .*persona)?; \d+ cache blocks removed, [\d.]+ MiB freed; server checkout released/);
    expect(filesHolding(laptop.home, samples)).toEqual({});
  }, 120_000);
});
