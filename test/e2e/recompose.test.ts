// Golden images over time (issue 15): two real versions of an ext4 image (v2 = v1 after a debugfs
// session that replaces, edits, adds and deletes files, as a patch would) and 20 desktops of alice's.
// `desktop refresh --all-of-image` moves 19 at once and queues the one a laptop holds; the laptop's
// check-in lands first (kept as its own version), then the desktop moves; the laptop's next check-out
// fetches about the blocks that differ between v1 and v2, not the image; the server stores one image
// delta, not twenty; the persona survives; an earlier version comes back with `admin restore --version`.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_BLOCK_SIZE } from '../../src/index.js';
import { makeExt4Image } from '../../scripts/fixtures/ext4-image.js';
import { debugfsSession } from '../../scripts/fixtures/workloads.js';
import { http, Laptop, removeTmp, TestServer, tmpDir } from './harness.js';

const MiB = 1024 * 1024;
const DESKTOPS = Array.from({ length: 20 }, (_, i) => `d${String(i).padStart(2, '0')}`);

/** Bytes under a folder (the server's block store). */
function bytesUnder(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) n += statSync(path.join(e.parentPath ?? (e as any).path, e.name)).size;
  return n;
}

/** Blocks (at the desktop block size) whose bytes differ between two files of the same size, and their bytes. */
function differingBlocks(a: string, b: string): { blocks: number; bytes: number } {
  const x = readFileSync(a);
  const y = readFileSync(b);
  let blocks = 0;
  let bytes = 0;
  for (let o = 0; o < x.length; o += DEFAULT_BLOCK_SIZE) {
    const end = Math.min(o + DEFAULT_BLOCK_SIZE, x.length);
    if (!x.subarray(o, end).equals(y.subarray(o, end))) {
      blocks++;
      bytes += end - o;
    }
  }
  return { blocks, bytes };
}

describe('refresh and recompose: 20 desktops onto a new image version', () => {
  const dir = tmpDir('carryon-recompose-');
  const server = new TestServer(dir);
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  const v1 = path.join(dir, 'v1.raw');
  const v2 = path.join(dir, 'v2.raw');
  let token = '';
  let v2Manifest = '';
  let v1Manifest = '';
  let v2Stored = 0;
  const diskOf = (l: Laptop, d: string): string => path.join(l.home, 'desktops', d, 'disk.raw');

  beforeAll(async () => {
    await makeExt4Image({ out: v1, sizeBytes: 96 * MiB, payloadBytes: 40 * MiB, seed: 3 });
    copyFileSync(v1, v2);
    await debugfsSession(v2, { seed: 9, budgetBytes: 3 * MiB });
    await server.init();
    token = await server.addUser('alice');
    const p = await server.admin(['image', 'publish', 'base', v1]);
    expect(p.code, p.stderr).toBe(0);
    v1Manifest = p.json.manifestId;
    for (const d of DESKTOPS) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'base'])).code).toBe(0);
    await server.start();
    for (const l of [a, b]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 240_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('laptop A checks d00 out on v1, changes the disk and the persona', async () => {
    const r = await a.cli(['checkout', 'd00', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(diskOf(a, 'd00')).equals(readFileSync(v1))).toBe(true);
    // The user's own disk change (two blocks) and a profile file.
    spawnSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x7e 80M 128k', diskOf(a, 'd00')]);
    const profile = path.join(a.home, 'desktops', 'd00', 'persona', 'profile');
    mkdirSync(profile, { recursive: true });
    writeFileSync(path.join(profile, 'notes.txt'), 'travel notes\n');
  }, 120_000);

  it('publishes v2 and says what a refresh keeps before doing it', async () => {
    const before = bytesUnder(path.join(server.data, 'store'));
    const p = await server.admin(['image', 'publish', 'base', v2]);
    expect(p.code, p.stderr).toBe(0);
    v2Manifest = p.json.manifestId;
    v2Stored = bytesUnder(path.join(server.data, 'store')) - before;
    expect(v2Stored).toBeGreaterThan(0);
    const dry = await server.admin(['desktop', 'refresh', '--all-of-image', 'base']);
    expect(dry.code).toBe(10);
    expect(dry.json.error.code).toBe('ABORTED');
    expect(dry.json.error.message).toContain("What survives: each user's persona");
    expect(dry.json.error.message).toContain('admin restore DESKTOP --version N');
    expect(dry.json.error.data.desktops).toEqual(DESKTOPS);
    const info = await http(server.url, 'GET', '/v1/desktops/d05', token);
    expect(info.json.manifestId).toBe(v1Manifest); // nothing moved
  }, 120_000);

  it('moves the 19 free desktops at once, queues the checked-out one, and stores no second copy', async () => {
    const before = bytesUnder(path.join(server.data, 'store'));
    const r = await server.admin(['desktop', 'refresh', '--all-of-image', 'base', '--yes']);
    expect(r.code, r.stderr).toBe(0);
    const states = Object.fromEntries((r.json.desktops as Array<{ desktop: string; state: string }>).map((o) => [o.desktop, o.state]));
    expect(states.d00).toBe('queued');
    expect(Object.values(states).filter((s) => s === 'done').length).toBe(19);
    for (const d of DESKTOPS.slice(1)) {
      const info = await http(server.url, 'GET', `/v1/desktops/${d}`, token);
      expect(info.json).toMatchObject({ manifestId: v2Manifest, version: 2 });
    }
    // Twenty desktops on v2 cost the blocks v2 added once (at publish) and nothing more.
    expect(bytesUnder(path.join(server.data, 'store'))).toBe(before);
    expect((await http(server.url, 'GET', '/v1/desktops/d00', token)).json.manifestId).toBe(v1Manifest);
  }, 120_000);

  it("d00's check-in lands first, then it moves; the next check-out fetches about the v1-to-v2 delta", async () => {
    const ci = await a.cli(['checkin', 'd00', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.version).toBe(2);
    expect(ci.json.recomposed).toEqual({ image: 'base', imageVersion: 2, version: 3, keptVersion: 2 });
    expect((await http(server.url, 'GET', '/v1/desktops/d00', token)).json).toMatchObject({ manifestId: v2Manifest, version: 3 });
    const co = await a.cli(['checkout', 'd00', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(readFileSync(diskOf(a, 'd00')).equals(readFileSync(v2))).toBe(true);
    const delta = differingBlocks(v1, v2);
    // What the laptop lacked: the blocks v2 changed, plus the two it had overwritten itself.
    expect(co.json.blocksFetched).toBeLessThanOrEqual(delta.blocks + 2);
    expect(co.json.blocksFetched).toBeGreaterThanOrEqual(Math.floor(delta.blocks * 0.5));
    expect(co.json.bytesReceived).toBeLessThan(delta.bytes + 2 * DEFAULT_BLOCK_SIZE + 256 * 1024);
    // eslint-disable-next-line no-console
    console.log(`recompose: v1->v2 differs in ${delta.blocks} blocks (${delta.bytes} B); the laptop fetched ${co.json.blocksFetched} blocks, ${co.json.bytesReceived} B over the wire; publish of v2 stored ${v2Stored} B for 20 desktops`);
    // The persona survived the move: the profile file is there on the disk's new version.
    expect(readFileSync(path.join(a.home, 'desktops', 'd00', 'persona', 'profile', 'notes.txt'), 'utf8')).toBe('travel notes\n');
    expect((await a.cli(['checkin', 'd00'])).code).toBe(0);
  }, 180_000);

  it('every desktop equals v2 plus the persona on another laptop, and an earlier version comes back', async () => {
    const r = await b.cli(['checkout', 'd07', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(diskOf(b, 'd07')).equals(readFileSync(v2))).toBe(true);
    expect(readFileSync(path.join(b.home, 'desktops', 'd07', 'persona', 'profile', 'notes.txt'), 'utf8')).toBe('travel notes\n');
    expect((await b.cli(['checkin', 'd07'])).code).toBe(0);
    // d00's disk as laptop A checked it in (version 2) is restorable, although d00 is now on v2 of the image.
    const back = await server.admin(['admin', 'restore', 'd00', '--version', '2']);
    expect(back.code, back.stderr).toBe(0);
    expect(back.json).toMatchObject({ desktop: 'd00', version: 4 });
    const again = await b.cli(['checkout', 'd00', '--json']);
    expect(again.code, again.stderr).toBe(0);
    const disk = readFileSync(diskOf(b, 'd00'));
    const want = readFileSync(v1);
    expect(disk.subarray(80 * MiB, 80 * MiB + 128 * 1024).every((x) => x === 0x7e)).toBe(true);
    expect(disk.subarray(0, 80 * MiB).equals(want.subarray(0, 80 * MiB))).toBe(true);
    const audit = await server.admin(['admin', 'audit', '--limit', '100']);
    const actions = (audit.json.audit as Array<{ action: string }>).map((x) => x.action);
    expect(actions.filter((x) => x === 'desktop.refresh').length).toBe(20);
    expect(actions.filter((x) => x === 'desktop.recompose-queued').length).toBe(1);
    expect(actions.filter((x) => x === 'desktop.restore-version').length).toBe(1);
  }, 180_000);

  it('status and /metrics show what sharing saves, per image and per desktop', async () => {
    const st = await server.admin(['status']);
    expect(st.code, st.stderr).toBe(0);
    const sh = st.json.sharing;
    const by = Object.fromEntries((sh.desktops as Array<{ desktop: string }>).map((x) => [x.desktop, x])) as Record<string, any>;
    // d07 is v2 as published: every block shared with its image, none its own.
    expect(by.d07).toMatchObject({ image: 'base', imageVersion: 2, unique: { blocks: 0, bytes: 0 } });
    expect(by.d07.sharedWithImage.bytes).toBe(by.d07.logicalBytes);
    // d00 is back on the disk laptop A checked in: its 2 written blocks are its own; v1 blocks v2 dropped are its own too now.
    expect(by.d00.unique.blocks).toBeGreaterThanOrEqual(2);
    expect(sh.images).toEqual([expect.objectContaining({ image: 'base', versions: 2, newestVersion: 2, desktops: 20 })]);
    // 21 disks' worth of data (the image and 20 desktops) in little more than the two image versions.
    expect(sh.totals.saving).toBeGreaterThan(0.9);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^carryon_sharing_saving_ratio 0\.9\d*$/m);
    expect(metrics).toContain(`carryon_desktop_bytes{held="unique-to-desktop"} ${sh.totals.uniqueToDesktopsBytes}`);
    expect(metrics).not.toContain('d07');
  }, 60_000);

  it('recompose names the image and version; unknown ones change nothing', async () => {
    const bad = await server.admin(['desktop', 'recompose', 'd01', '--image', 'base', '--image-version', '9', '--yes']);
    expect(bad.code).toBe(4);
    expect(bad.json.error.code).toBe('IMAGE_NOT_FOUND');
    const r = await server.admin(['desktop', 'recompose', 'd01', 'd02', '--image', 'base', '--image-version', '1', '--yes']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.desktops.map((o: { state: string }) => o.state)).toEqual(['done', 'done']);
    expect((await http(server.url, 'GET', '/v1/desktops/d01', token)).json).toMatchObject({ manifestId: v1Manifest, version: 3 });
    const same = await server.admin(['desktop', 'recompose', 'd01', '--image', 'base', '--image-version', '1', '--yes']);
    expect(same.json.desktops[0].state).toBe('unchanged');
  }, 60_000);

  it('gc removes image versions past the retention that no desktop is on, and then their blocks', async () => {
    // Two more versions: v3 never used by any desktop, v4 the newest.
    const files: string[] = [];
    for (const seed of [11, 12]) {
      const f = path.join(dir, `v${seed}.raw`);
      copyFileSync(v2, f);
      await debugfsSession(f, { seed, budgetBytes: 2 * MiB });
      files.push(f);
    }
    const p3 = await server.admin(['image', 'publish', 'base', files[0]!]);
    const p4 = await server.admin(['image', 'publish', 'base', files[1]!]);
    expect([p3.json.version, p4.json.version]).toEqual([3, 4]);
    const pol = await server.admin(['image', 'policy', 'base', '--keep-versions', '1']);
    expect(pol.code, pol.stderr).toBe(0);
    expect(pol.json.keepVersions).toBe(1);
    const dry = await server.admin(['gc', '--dry-run', '--grace', '1s']);
    expect(dry.code, dry.stderr).toBe(0);
    // v1 (d01 and d02 are on it) and v2 (the others) are in use; v4 is the newest kept.
    expect(dry.json.imageVersionsExpired).toEqual([{ image: 'base', version: 3 }]);
    expect((await server.admin(['status'])).json.imageVersions).toBe(4); // a dry run changes nothing
    await new Promise((r) => setTimeout(r, 1100));
    const storeBefore = bytesUnder(path.join(server.data, 'store'));
    const gc = await server.admin(['gc', '--grace', '1s']);
    expect(gc.code, gc.stderr).toBe(0);
    expect(gc.json.imageVersionsExpired).toEqual([{ image: 'base', version: 3 }]);
    expect(gc.json.swept.blocks).toBeGreaterThan(0);
    expect(storeBefore - bytesUnder(path.join(server.data, 'store'))).toBe(gc.json.swept.bytes);
    const st = await server.admin(['status']);
    expect(st.json.sharing.images[0]).toMatchObject({ versions: 3, newestVersion: 4 });
    // Every desktop is still whole: one more check-out from the server, on the other laptop.
    const co = await a.cli(['checkout', 'd05', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(readFileSync(diskOf(a, 'd05')).equals(readFileSync(v2))).toBe(true);
  }, 180_000);
});
