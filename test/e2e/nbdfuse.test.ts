// `carryon serve --file DIR`: the export as a plain file through Debian's nbdfuse (FUSE), for
// hypervisors that need a file (VirtualBox, VMware). Plain programs (dd, qemu-io with O_DIRECT) write
// into the file; the writes are in the dirty map and reach the server at check-in; the file lives where
// the user said, never under the carryon home; stopping waits for the file to be closed, a second
// signal forces it, a killed nbdfuse leaves no mount; a machine without FUSE gets FUSE_UNAVAILABLE.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { filesUnder, killSpawned, Laptop, makeExt4Image, removeTmp, requireTool, sha256File, spawnCli, TestServer, tmpDir, type CliProcess } from './harness.js';
import { seededBytes } from '../unit/helpers.js';

/** Bytes nobody else writes. */
const pattern = (seed: number, length: number): Buffer => seededBytes(length, seed);

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;

interface Served extends CliProcess {
  file: string;
  listening: any;
}

function serveFile(laptop: Laptop, desktop: string, dir: string): Promise<Served> {
  const p = spawnCli(laptop, ['serve', desktop, '--file', dir]);
  return Promise.race([
    p.next('listening').then((l) => ({ ...p, file: l.file, listening: l })),
    p.next('error').then((e) => Promise.reject(new Error(`serve failed: ${JSON.stringify(e)}`))),
    p.exit.then(({ code }) => Promise.reject(new Error(`serve exited with ${code}: ${p.stderr()}`))),
  ]);
}

function tool(cmd: string, args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Mount points of this machine (from /proc/self/mountinfo) with their file system type. */
function mounts(): Array<{ point: string; fstype: string }> {
  return readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\n').map((line) => {
    const f = line.split(' ');
    const sep = f.indexOf('-');
    return { point: f[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), fstype: f[sep + 1]! };
  });
}

function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

describe('carryon serve --file: the disk as a plain file through nbdfuse', () => {
  const dir = tmpDir('nbdfuse');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  const vmFiles = path.join(dir, 'vm-files'); // the user's own folder, outside the carryon home
  let size = 0;

  beforeAll(async () => {
    // A missing tool or device is a failure, never a skip: CI installs them (scripts/install-test-deps.sh).
    for (const t of ['nbdfuse', 'fusermount3', 'qemu-io', 'dd', 'cmp']) requireTool(t);
    if (!existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing: the FUSE tests need it (modprobe fuse, or pass the device into the container)');
    makeExt4Image(image, 48, 24);
    size = statSync(image).size;
    await server.init();
    const token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['f-io', 'f-stop', 'f-refuse']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    for (const l of [a, b]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 180_000);

  afterAll(async () => {
    killSpawned();
    for (const m of mounts()) if (m.point.startsWith(dir)) tool('fusermount3', ['-u', '-z', m.point]);
    await server.stop();
    removeTmp(dir);
  });

  it('dd and qemu-io write into the file; the writes are in the dirty map and reach the server; the file never lands under the home', async () => {
    const co = await a.cli(['checkout', 'f-io', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const mountDir = path.join(vmFiles, 'f-io'); // does not exist yet: serve creates it, and removes it at stop
    const s = await serveFile(a, 'f-io', mountDir);
    expect(s.file).toBe(path.join(mountDir, 'f-io.raw'));
    expect(mounts().find((m) => m.point === mountDir)?.fstype).toMatch(/^fuse/);
    expect(statSync(s.file).size).toBe(size);
    // The file reads as the checked-out disk.
    expect(tool('cmp', [s.file, image]).code).toBe(0);

    const expected = path.join(dir, 'expected-io.raw');
    copyFileSync(image, expected);
    // dd through the page cache (unaligned, two blocks), dd with O_DSYNC (each write then a flush),
    // dd with O_DIRECT, and qemu-io with cache=none (O_DIRECT) as a hypervisor opens its disk.
    const writes: Array<{ off: number; data: Buffer; flags: string[] }> = [
      { off: 3 * MiB + 1000, data: pattern(1, 70_000), flags: ['bs=70000'] },
      { off: 9 * MiB, data: pattern(2, 4 * 4096), flags: ['bs=4096', 'oflag=dsync'] },
      { off: 17 * MiB, data: pattern(3, MiB), flags: ['bs=1048576', 'oflag=direct'] },
    ];
    for (const [k, w] of writes.entries()) {
      const src = path.join(dir, `pattern-${k}.bin`);
      writeFileSync(src, w.data);
      const bs = Number(w.flags[0]!.slice(3));
      const oflag = ['seek_bytes', ...w.flags.filter((f) => f.startsWith('oflag=')).map((f) => f.slice(6))].join(',');
      const r = tool('dd', [`if=${src}`, `of=${s.file}`, w.flags[0]!, `seek=${w.off}`, `oflag=${oflag}`, 'conv=notrunc,nocreat', 'status=none']);
      expect(r.code, r.stderr).toBe(0);
      expect(w.data.length % bs).toBe(0);
      expect(tool('dd', [`if=${src}`, `of=${expected}`, `bs=${bs}`, `seek=${w.off}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']).code).toBe(0);
    }
    const io = [`write -P 0x5a ${25 * MiB} ${256 * 1024}`, `write -P 0x5b ${size - 8192} 8192`, 'flush'];
    const q = tool('qemu-io', ['-f', 'raw', '-t', 'none', ...io.flatMap((c) => ['-c', c]), s.file]);
    expect(q.code, q.stderr).toBe(0);
    expect(tool('qemu-io', ['-f', 'raw', ...io.flatMap((c) => ['-c', c]), expected]).code).toBe(0);
    // Read back through the file: exactly the expected disk.
    expect(tool('cmp', [s.file, expected]).code).toBe(0);

    // Where the plain file is: in the user's folder, and no mount and no copy under the carryon home.
    expect(mounts().filter((m) => m.point.startsWith(a.home + path.sep) || m.point === a.home)).toEqual([]);
    const homeFiles = filesUnder(a.home);
    expect(homeFiles.filter((f) => path.basename(f).endsWith('.raw') && f !== path.join(a.home, 'desktops', 'f-io', 'disk.raw'))).toEqual([]);
    // The written bytes are in no file of the home but the checked-out disk itself (which the coming
    // encryption at rest turns into ciphertext): nbdfuse keeps nothing on disk.
    const samples = writes.map((w) => w.data.subarray(4096, 8192));
    for (const f of homeFiles) {
      if (f === path.join(a.home, 'desktops', 'f-io', 'disk.raw')) continue;
      const bytes = readFileSync(f);
      for (const smp of samples) expect(bytes.indexOf(smp), f).toBe(-1);
    }

    s.proc.kill('SIGTERM');
    expect((await s.exit).code, s.stderr()).toBe(0);
    expect(s.events.map((e) => e.event)).not.toContain('file-busy');
    const stopped = s.events.find((e) => e.event === 'stopped');
    expect(stopped.flushes).toBeGreaterThanOrEqual(5); // 4 O_DSYNC writes and qemu-io's flush reached the export
    expect(mounts().find((m) => m.point === mountDir)).toBeUndefined();
    expect(existsSync(mountDir)).toBe(false); // serve made it, serve removed it: nothing left to write a plain file into

    // The dirty map counts exactly the blocks those writes touched.
    const touched = new Set<number>();
    const ranges: Array<[number, number]> = [...writes.map((w): [number, number] => [w.off, w.data.length]), [25 * MiB, 256 * 1024], [size - 8192, 8192]];
    for (const [off, len] of ranges) for (let i = Math.floor(off / BLOCK); i <= Math.floor((off + len - 1) / BLOCK); i++) touched.add(i);
    const st = (await a.cli(['status', 'f-io', '--json'])).json.desktops[0];
    expect(st.dirtyMap.trusted).toBe(true);
    expect(st.blocksWritten).toBe(touched.size);
    expect(readFileSync(path.join(a.home, 'desktops', 'f-io', 'disk.raw')).equals(readFileSync(expected))).toBe(true);

    const ci = await a.cli(['checkin', 'f-io', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('dirty-map');
    expect(ci.json.scanBytesRead).toBe(st.bytesWritten);
    expect(ci.json.blocksChanged).toBe(touched.size);
    const onServer = await b.cli(['checkout', 'f-io', '--json']);
    expect(onServer.code, onServer.stderr).toBe(0);
    expect(sha256File(onServer.json.disk)).toBe(sha256File(expected));
  }, 150_000);

  it('stop waits while the file is open, a second signal forces it; a killed nbdfuse stops serve and leaves no mount', async () => {
    expect((await a.cli(['checkout', 'f-stop', '--json'])).code).toBe(0);
    const mountDir = path.join(vmFiles, 'f-stop');
    mkdirSync(mountDir, { recursive: true }); // the user's own empty folder: kept after the stop

    // 1. A "VM" holds the file open: SIGTERM waits (file-busy) and serve stops by itself once it closes.
    let s = await serveFile(a, 'f-stop', mountDir);
    let vm = spawn('sh', ['-c', `exec 3<>"$0"; exec sleep 30`, s.file], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 300));
    s.proc.kill('SIGTERM');
    const busy = await s.next('file-busy');
    expect(busy.file).toBe(s.file);
    expect(s.proc.exitCode).toBe(null); // still serving the open file
    expect(statSync(s.file).size).toBe(size);
    vm.kill('SIGKILL');
    expect((await s.exit).code, s.stderr()).toBe(0);
    expect(s.events.map((e) => e.event)).not.toContain('file-forced');
    expect(mounts().find((m) => m.point === mountDir)).toBeUndefined();
    expect(readdirSync(mountDir)).toEqual([]);

    // 2. The same, and a second SIGTERM forces the unmount: the holder's next write fails.
    s = await serveFile(a, 'f-stop', mountDir);
    vm = spawn('sh', ['-c', `exec 3<>"$0"; exec sleep 30`, s.file], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 300));
    s.proc.kill('SIGTERM');
    await s.next('file-busy');
    s.proc.kill('SIGTERM');
    expect((await s.exit).code, s.stderr()).toBe(0);
    expect(s.events.map((e) => e.event)).toContain('file-forced');
    vm.kill('SIGKILL');
    expect(mounts().find((m) => m.point === mountDir)).toBeUndefined();

    // 3. nbdfuse killed: serve says so (IO_ERROR, exit 9), closes the map cleanly, and no mount is left.
    s = await serveFile(a, 'f-stop', mountDir);
    const nbdfuse = childPids(s.proc.pid!).filter((p) => readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'nbdfuse');
    expect(nbdfuse.length).toBe(1);
    process.kill(nbdfuse[0]!, 'SIGKILL');
    expect((await s.exit).code).toBe(9);
    expect(s.events.find((e) => e.event === 'file-exited')).toMatchObject({ signal: 'SIGKILL' });
    expect(s.events.find((e) => e.error)?.error.code).toBe('IO_ERROR');
    expect(s.events.find((e) => e.event === 'stopped')).toBeTruthy();
    for (let k = 0; k < 50 && mounts().some((m) => m.point === mountDir); k++) await new Promise((r) => setTimeout(r, 100));
    expect(mounts().find((m) => m.point === mountDir)).toBeUndefined();
    const st = (await a.cli(['status', 'f-stop', '--json'])).json.desktops[0];
    expect(st.dirtyMap.trusted).toBe(true);

    // 4. The user unmounts it (fusermount3 -u): serve stops cleanly, exit 0.
    s = await serveFile(a, 'f-stop', mountDir);
    expect(tool('fusermount3', ['-u', mountDir]).code).toBe(0);
    expect((await s.exit).code, s.stderr()).toBe(0);
    expect(s.events.map((e) => e.event)).toContain('file-unmounted');
  }, 150_000);

  it('refuses with FUSE_UNAVAILABLE without nbdfuse, and a mount folder inside the home or not empty', async () => {
    expect((await a.cli(['checkout', 'f-refuse', '--json'])).code).toBe(0);
    // No nbdfuse or fusermount3 on the PATH (serve itself needs no other program).
    const empty = path.join(dir, 'empty-bin');
    mkdirSync(empty, { recursive: true });
    const r = await a.cli(['serve', 'f-refuse', '--file', path.join(vmFiles, 'nofuse'), '--json'], { PATH: empty });
    expect(r.code).toBe(9);
    expect(r.json.error.code).toBe('FUSE_UNAVAILABLE');
    expect(r.json.error.data.missing).toEqual(['nbdfuse', 'fusermount3']);
    expect(r.stderr).toMatch(/libnbd-bin/);
    expect(existsSync(path.join(vmFiles, 'nofuse'))).toBe(false);

    const inHome = await a.cli(['serve', 'f-refuse', '--file', path.join(a.home, 'mnt'), '--json']);
    expect(inHome.code).toBe(2);
    expect(inHome.json.error.code).toBe('INVALID_ARGUMENT');
    expect(inHome.json.error.message).toMatch(/outside the carryon home/);
    expect(existsSync(path.join(a.home, 'mnt'))).toBe(false);

    const full = path.join(vmFiles, 'full');
    mkdirSync(full, { recursive: true });
    writeFileSync(path.join(full, 'notes.txt'), 'mine');
    const notEmpty = await a.cli(['serve', 'f-refuse', '--file', full, '--json']);
    expect(notEmpty.code).toBe(2);
    expect(notEmpty.json.error.message).toMatch(/must be empty/);

    // None of these took the disk: a plain serve starts at once.
    const s = spawnCli(a, ['serve', 'f-refuse']);
    await s.next('listening');
    expect(await s.stop()).toBe(0);
  }, 60_000);
});
