// A full disk, on the server or on the laptop: a stable code (DISK_FULL, HTTP 507, exit 12) with a
// sentence saying how much room is needed and what to do; nothing lost, the server serving on, and the
// re-run after space is freed finishing the job. Each side runs on a small tmpfs mounted for the test
// (root, as .ci/run is).
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { API_PREFIX } from '../../src/index.js';
import { http, Laptop, removeTmp, sha256File, TestServer, tmpDir } from './harness.js';

const MiB = 1024 * 1024;

function mountTmpfs(dir: string, mib: number): void {
  mkdirSync(dir, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m,mode=0700`, 'tmpfs', dir]);
  if (r.status !== 0) throw new Error(`mount tmpfs on ${dir} failed (these tests need root, as .ci/run has): ${r.stderr}`);
}

function resizeTmpfs(dir: string, mib: number): void {
  const r = spawnSync('mount', ['-o', `remount,size=${mib}m`, dir]);
  if (r.status !== 0) throw new Error(`remount failed: ${r.stderr}`);
}

/** An image of `sizeMiB` whose first `dataMiB` are random (incompressible), the rest a hole. */
function makeImage(file: string, sizeMiB: number, dataMiB: number): void {
  const fd = openSync(file, 'w');
  try {
    for (let i = 0; i < dataMiB; i++) writeSync(fd, randomBytes(MiB), 0, MiB, i * MiB);
  } finally {
    closeSync(fd);
  }
  spawnSync('truncate', ['-s', `${sizeMiB}M`, file]);
}

function walk(d: string): string[] {
  return readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
}

function writeRandom(file: string, offset: number, bytes: number): void {
  const fd = openSync(file, 'r+');
  try {
    for (let o = 0; o < bytes; o += MiB) writeSync(fd, randomBytes(MiB), 0, MiB, offset + o);
  } finally {
    closeSync(fd);
  }
}

describe('a full disk', () => {
  const dir = tmpDir('disk-full');
  const mounts: string[] = [];
  const mount = (name: string, mib: number): string => {
    const m = path.join(dir, name);
    mountTmpfs(m, mib);
    mounts.push(m);
    return m;
  };

  afterAll(() => {
    if (process.env.CARRYON_KEEP_TMP === '1') return; // mounts kept for a post-mortem
    for (const m of mounts) spawnSync('umount', ['-l', m]);
    removeTmp(dir);
  });

  describe('on the server', () => {
    let fsDir = '';
    let server: TestServer;
    const laptop = new Laptop(path.join(dir, 'laptop-s'));
    let token = '';

    beforeAll(async () => {
      fsDir = mount('server-fs', 40);
      server = new TestServer(fsDir);
      makeImage(path.join(dir, 'img-s.raw'), 64, 8);
      await server.init();
      token = await server.addUser('alice');
      expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img-s.raw')])).code).toBe(0);
      expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
      await server.start({ CARRYON_MIN_FREE: String(MiB) });
      expect((await laptop.cli(['login', server.url, '--token', token])).code).toBe(0);
      expect((await laptop.cli(['checkout', 'desk'])).code).toBe(0);
    }, 120_000);

    afterAll(async () => {
      await server.stop();
    });

    it('a check-in larger than the free space: DISK_FULL (exit 12) saying so; the server serves on, stores nothing half, and the laptop keeps its copy', async () => {
      const disk = path.join(laptop.home, 'desktops', 'desk', 'disk.raw');
      writeRandom(disk, 16 * MiB, 40 * MiB);
      const before = (await server.admin(['status'])).json;
      const r = await laptop.cli(['checkin', 'desk', '--json']);
      expect(r.code, r.stderr).toBe(12);
      expect(r.json.error.code).toBe('DISK_FULL');
      expect(r.json.error.message).toMatch(/the server has no space left.*nothing was lost.*free space on the server/);
      expect(r.stderr).not.toMatch(/SqliteError|    at /); // no stack trace
      // The server answers, its status says how little is free, and the desktop did not move.
      expect((await http(server.url, 'GET', `${API_PREFIX}/whoami`, token)).status).toBe(200);
      const after = (await server.admin(['status'])).json;
      expect(after.freeBytes).toBeLessThan(8 * MiB);
      expect(after.desktops[0].version).toBe(before.desktops[0].version);
      const metrics = (await http(server.url, 'GET', '/metrics', null)).body.toString();
      expect(metrics).toMatch(/^carryon_data_free_bytes \d+$/m);
      // No half-written block files are left behind in the store's temp folder.
      const tmp = path.join(server.data, 'store', 'tmp');
      expect(existsSync(tmp) ? readdirSync(tmp) : []).toEqual([]);
      // The laptop still holds every change.
      const st = await laptop.cli(['status', 'desk', '--json']);
      expect(st.code, st.stderr).toBe(0);
    });

    it('with space freed, the same check-in finishes, sending only what the server lacks', async () => {
      resizeTmpfs(fsDir, 160);
      const r = await laptop.cli(['checkin', 'desk', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json.version).toBe(2);
      // Block files the failed attempt wrote were taken up by the retry: every file in the store is an
      // indexed block, and the store holds exactly the bytes the index counts.
      const files = walk(path.join(server.data, 'store', 'blocks'));
      const status = (await server.admin(['status'])).json;
      expect(files.length).toBe(status.blocks);
      expect(files.reduce((n, f) => n + statSync(f).size, 0)).toBe(status.storedBytes);
      const b = new Laptop(path.join(dir, 'laptop-s2'));
      expect((await b.cli(['login', server.url, '--token', token])).code).toBe(0);
      expect((await b.cli(['checkout', 'desk'])).code).toBe(0);
      expect(sha256File(path.join(b.home, 'desktops', 'desk', 'disk.raw'))).toBe(sha256File(path.join(laptop.home, 'desktops', 'desk', 'disk.raw')));
      expect((await b.cli(['discard', 'desk', '--yes'])).code).toBe(0);
    });

    it('below the reserve (start --min-free), uploads are refused before any byte is stored', async () => {
      const port = server.port(); // the laptop's login names it
      await server.stop();
      await server.start({ CARRYON_MIN_FREE: String(1024 * MiB) }, port);
      expect((await laptop.cli(['checkout', 'desk'])).code).toBe(0);
      writeRandom(path.join(laptop.home, 'desktops', 'desk', 'disk.raw'), 0, MiB);
      const r = await laptop.cli(['checkin', 'desk', '--json']);
      expect(r.code).toBe(12);
      expect(r.json.error.code).toBe('DISK_FULL');
    });
  });

  describe('on the laptop', () => {
    let fsDir = '';
    const server = new TestServer(path.join(dir, 'server-l'));
    let laptop: Laptop;
    const image = path.join(dir, 'img-l.raw');

    beforeAll(async () => {
      mkdirSync(server.dir, { recursive: true });
      makeImage(image, 32, 16);
      await server.init();
      const token = await server.addUser('bob');
      expect((await server.admin(['image', 'publish', 'img', image])).code).toBe(0);
      expect((await server.admin(['desktop', 'create', 'desk', '--user', 'bob', '--image', 'img'])).code).toBe(0);
      await server.start();
      fsDir = mount('laptop-fs', 12);
      laptop = new Laptop(path.join(fsDir, 'home'));
      expect((await laptop.cli(['login', server.url, '--token', token])).code).toBe(0);
    }, 120_000);

    afterAll(async () => {
      await server.stop();
    });

    it('too little room for the disk: refused before the download, saying how much is needed', async () => {
      const r = await laptop.cli(['checkout', 'desk', '--json']);
      expect(r.code, r.stderr).toBe(12);
      expect(r.json.error.code).toBe('DISK_FULL');
      expect(r.json.error.message).toMatch(/needs about 1\d(\.\d)? MiB more on .* is free: free space .*carryon checkout desk/);
      expect(r.json.error.data.needBytes).toBeGreaterThanOrEqual(16 * MiB);
    });

    it('room for the disk but not for the cache too: DISK_FULL half-way with no stack trace; with space freed the re-run resumes and the disk equals the image', async () => {
      resizeTmpfs(fsDir, 24);
      const r = await laptop.cli(['checkout', 'desk', '--json']);
      expect(r.code, r.stderr).toBe(12);
      expect(r.json.error.code).toBe('DISK_FULL');
      expect(r.json.error.message).toMatch(/no space left on this laptop while checking out desk: about .* still to come.*run `carryon checkout desk` again to resume/);
      expect(r.stderr).not.toMatch(/    at /);
      resizeTmpfs(fsDir, 64);
      const again = await laptop.cli(['checkout', 'desk', '--json']);
      expect(again.code, again.stderr).toBe(0);
      expect(again.json.resumed).toBe(true);
      expect(sha256File(path.join(laptop.home, 'desktops', 'desk', 'disk.raw'))).toBe(sha256File(image));
    });
  });
});
