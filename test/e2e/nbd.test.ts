// `carryon serve` with real NBD clients from Debian (qemu-io, nbdcopy, nbdinfo, qemu-img): writes
// through the export, reads back, check-in from the dirty map; kill -9 of the export and of the
// client mid-workload; streamed check-outs read while blocks arrive, and offline.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, makeExt4Image, qemuWrite, removeTmp, requireTool, sha256File, spawnCli, TestServer, tmpDir, type CliProcess } from './harness.js';

const MiB = 1024 * 1024;

interface Served extends CliProcess {
  socket: string;
  uri: string;
  listening: any;
}

/** Start `carryon serve` as its own process and wait until it listens. */
function serve(laptop: Laptop, desktop: string, args: string[] = [], env: Record<string, string> = {}): Promise<Served> {
  const p = spawnCli(laptop, ['serve', desktop, ...args], env);
  return Promise.race([
    p.next('listening').then((l) => ({ ...p, socket: l.socket, uri: l.uri, listening: l })),
    p.next('error').then((e) => Promise.reject(new Error(`serve failed: ${JSON.stringify(e)}`))),
    p.exit.then(({ code }) => Promise.reject(new Error(`serve exited with ${code}: ${p.stderr()}`))),
  ]);
}

async function stopServe(s: Served): Promise<void> {
  s.proc.kill('SIGTERM');
  const { code } = await s.exit;
  expect(code).toBe(0);
}

function tool(cmd: string, args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** qemu-io commands against a target: a file ('-f raw FILE') or the export's NBD URI. */
function qemuIo(target: string, cmds: string[]): { code: number | null; stdout: string; stderr: string } {
  return tool('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), target]);
}

function same(a: string, b: string): boolean {
  return tool('cmp', [a, b]).code === 0;
}

describe('carryon serve: the disk over NBD', () => {
  const dir = tmpDir('nbd');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  // Streams start from an empty block cache, so blocks really come from the server.
  const c = new Laptop(path.join(dir, 'laptop-c'));
  const d = new Laptop(path.join(dir, 'laptop-d'));
  const desks = ['d-io', 'd-crash-export', 'd-crash-client', 'd-stream', 'd-offline', 'd-outside', 'd-read'];
  let size = 0;
  const dense = path.join(dir, 'golden-dense.raw');
  let pubSparse: { json: any } = { json: null };
  let pubDense: { json: any } = { json: null };

  beforeAll(async () => {
    for (const t of ['qemu-io', 'qemu-img', 'nbdcopy', 'nbdinfo', 'cmp']) requireTool(t);
    makeExt4Image(image, 48, 24);
    size = readFileSync(image).length;
    await server.init();
    const token = await server.addUser('alice');
    pubSparse = await server.admin(['image', 'publish', 'golden', image]);
    expect(pubSparse.code, pubSparse.stderr).toBe(0);
    // The same bytes, every one of them allocated (mke2fs leaves the image sparse).
    expect(tool('cp', ['--sparse=never', image, dense]).code).toBe(0);
    pubDense = await server.admin(['image', 'publish', 'golden-dense', dense]);
    expect(pubDense.code, pubDense.stderr).toBe(0);
    for (const d of desks) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    for (const l of [a, b, c, d]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 180_000);

  it('without native/sparse (CARRYON_SPARSE=read) a full scan reads every byte, says so, and commits the same disk', async () => {
    const env = { CARRYON_SPARSE: 'read' };
    expect((await a.cli(['checkout', 'd-read', '--json'])).code).toBe(0);
    const disk = path.join(a.home, 'desktops', 'd-read', 'disk.raw');
    expect((await a.cli(['status', '--json'], env)).json.scanHoles).toEqual({ mode: 'read', detail: 'CARRYON_SPARSE=read' });
    qemuWrite(disk, [[0x73, 2 * MiB, 65536]]);
    const ci = await a.cli(['checkin', 'd-read'], env);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.stdout).toMatch(/note: the full scan read the disk's holes too \(CARRYON_SPARSE=read\)/);
    const co = await a.cli(['checkout', 'd-read', '--json']);
    expect(co.code, co.stderr).toBe(0);
    qemuWrite(disk, [[0x74, 3 * MiB, 65536]]);
    const ci2 = await a.cli(['checkin', 'd-read', '--json'], env);
    expect(ci2.code, ci2.stderr).toBe(0);
    expect(ci2.json).toMatchObject({ scanMode: 'full', scanHoles: 'read', scanBytesRead: size, blocksChanged: 1 });
    expect(sha256File(await serverCopy('d-read'))).toBe(sha256File(disk));
  }, 120_000);

  it('publish reads a sparse image by its data: the same manifest as a dense copy of it, from fewer bytes read', () => {
    expect(statSync(dense).blocks * 512).toBeGreaterThanOrEqual(size);
    expect(statSync(image).blocks * 512).toBeLessThan(size);
    expect(pubSparse.json.scanHoles).toBe('seek-data');
    expect(pubDense.json.scanHoles).toBe('seek-data');
    expect(pubSparse.json.manifestId).toBe(pubDense.json.manifestId);
    expect(pubDense.json.newBlocks).toBe(0);
    expect(pubDense.json.scanBytesRead).toBe(size);
    expect(pubSparse.json.scanBytesRead).toBeLessThan(size);
  });

  afterAll(async () => {
    killSpawned(); // a failed test's export
    await server.stop();
    removeTmp(dir);
  });

  /** Check a desktop out on laptop B and return its disk: the server's newest version. */
  async function serverCopy(desktop: string): Promise<string> {
    const r = await b.cli(['checkout', desktop, '--json']);
    expect(r.code, r.stderr).toBe(0);
    return r.json.disk as string;
  }

  it('qemu-io writes through the export; nbdcopy and qemu-img read back exactly those bytes; the check-in reads only dirty blocks', async () => {
    const co = await a.cli(['checkout', 'd-io', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const s = await serve(a, 'd-io');
    expect(s.listening.size).toBe(size);
    expect(s.listening.dirtyMap.trusted).toBe(true);
    expect(s.listening.cipher).toBeNull(); // a plaintext copy
    expect(s.listening.dataPath).toBe('native'); // plaintext and fully local: C threads answer after the handshake
    const info = JSON.parse(tool('nbdinfo', ['--json', s.uri]).stdout);
    expect(info.exports[0]['export-size']).toBe(size);
    expect(info.exports[0].can_flush && info.exports[0].can_fua && info.exports[0].can_trim && info.exports[0].can_zero).toBe(true);

    // Unaligned and aligned writes, a write at the very end, a FUA write, data then zeroes, data then a trim.
    const cmds = ['write -P 0xa1 1000 3000', `write -P 0xa2 ${5 * MiB + 123} 70000`, `write -P 0xa3 ${20 * MiB} ${MiB}`, `write -P 0xa4 ${size - 4096} 4096`,
      `write -f -P 0xa7 ${12 * MiB + 4096} 8192`, `write -P 0xa5 ${30 * MiB} ${256 * 1024}`, `write -z ${30 * MiB} ${256 * 1024}`, `write -P 0xa6 ${34 * MiB} ${128 * 1024}`, `discard ${34 * MiB} ${128 * 1024}`, 'flush'];
    const w = qemuIo(s.uri, cmds);
    expect(w.code, w.stderr).toBe(0);
    const expected = path.join(dir, 'expected-io.raw');
    copyFileSync(image, expected);
    expect(qemuIo(expected, cmds).code).toBe(0);

    const viaNbdcopy = path.join(dir, 'nbdcopy-io.raw');
    expect(tool('nbdcopy', [s.uri, viaNbdcopy]).code).toBe(0);
    expect(same(viaNbdcopy, expected)).toBe(true);
    const viaQemuImg = path.join(dir, 'qemu-img-io.raw');
    expect(tool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.uri, viaQemuImg]).code).toBe(0);
    expect(same(viaQemuImg, expected)).toBe(true);

    // While served, a check-in is refused (it would race the VM) and so is a second export.
    const busy = await a.cli(['checkin', 'd-io', '--json']);
    expect(busy.code).toBe(8);
    expect(busy.json.error.code).toBe('DISK_IN_USE');
    await expect(serve(a, 'd-io')).rejects.toThrow(/DISK_IN_USE/);
    await stopServe(s);

    const st = await a.cli(['status', 'd-io', '--json']);
    expect(st.json.desktops[0].dirtyMap.trusted).toBe(true);
    expect(st.json.desktops[0].blocksWritten).toBeGreaterThan(5);
    const ci = await a.cli(['checkin', 'd-io', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('dirty-map');
    expect(ci.json.scanBytesRead).toBe(st.json.desktops[0].bytesWritten);
    expect(ci.json.scanBytesRead).toBeLessThan(size / 10);
    const onServer = await serverCopy('d-io');
    expect(sha256File(onServer)).toBe(sha256File(expected));
    // The zeroed and the trimmed ranges became holes in the new version (not stored as zero blocks).
    const map = JSON.parse(tool('qemu-img', ['map', '--output=json', '-f', 'raw', onServer]).stdout) as Array<{ start: number; length: number; data: boolean }>;
    for (const off of [30 * MiB, 34 * MiB]) expect(map.find((e) => e.start <= off && off < e.start + e.length)!.data).toBe(false);
  }, 120_000);

  it('kill -9 of the export mid-workload: after a restart the check-in holds every flushed write and equals the laptop copy', async () => {
    expect((await a.cli(['checkout', 'd-crash-export', '--json'])).code).toBe(0);
    const expected = path.join(dir, 'expected-crash-export.raw');
    copyFileSync(image, expected);
    // The export dies at its 25th write, after marking it in the journal and before the bytes land.
    const s = await serve(a, 'd-crash-export', [], { CARRYON_CRASH_AT: 'nbd-write:25' });
    const flushed: string[][] = [];
    for (let k = 0; k < 40; k++) {
      const cmds = [`write -P 0x${(0xb0 + k).toString(16)} ${k * MiB + 4096 * k} ${64 * 1024 + 512 * k}`, 'flush'];
      const r = qemuIo(s.uri, cmds);
      if (r.code !== 0) break;
      flushed.push(cmds);
    }
    expect((await s.exit).signal).toBe('SIGKILL');
    expect(flushed.length).toBeGreaterThan(10);
    expect(flushed.length).toBeLessThan(40);
    for (const cmds of flushed) expect(qemuIo(expected, cmds).code).toBe(0);

    const again = await serve(a, 'd-crash-export');
    expect(again.listening.dirtyMap).toMatchObject({ trusted: true, recovered: true });
    await stopServe(again);
    const ci = await a.cli(['checkin', 'd-crash-export', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('dirty-map');
    const local = path.join(a.home, 'desktops', 'd-crash-export', 'disk.raw');
    const onServer = await serverCopy('d-crash-export');
    // The new version is the laptop's disk, byte for byte (the map covered the write that was cut off too)...
    expect(sha256File(onServer)).toBe(sha256File(local));
    // ...and every write the client had flushed is in it; only the range of the interrupted write may differ.
    const got = readFileSync(onServer);
    const want = readFileSync(expected);
    const k = flushed.length;
    const cutFrom = k * MiB + 4096 * k;
    const cutTo = cutFrom + 64 * 1024 + 512 * k;
    expect(got.subarray(0, cutFrom).equals(want.subarray(0, cutFrom))).toBe(true);
    expect(got.subarray(cutTo).equals(want.subarray(cutTo))).toBe(true);
  }, 120_000);

  it('kill -9 of the NBD client mid-workload: the export keeps serving; the check-in equals the laptop copy', async () => {
    expect((await a.cli(['checkout', 'd-crash-client', '--json'])).code).toBe(0);
    const s = await serve(a, 'd-crash-client');
    const expected = path.join(dir, 'expected-crash-client.raw');
    copyFileSync(image, expected);
    const first = [`write -P 0xc1 ${2 * MiB} ${MiB}`, `write -P 0xc2 ${9 * MiB + 512} 5000`, 'flush'];
    expect(qemuIo(s.uri, first).code).toBe(0);
    expect(qemuIo(expected, first).code).toBe(0);
    // A client writing 4 KiB requests all over 16 MiB (one round trip each), killed while it runs.
    const many: string[] = [];
    for (let k = 0; k < 12000; k++) many.push('-c', `write -P 0xdd ${24 * MiB + ((k * 7919) % 4096) * 4096} 4096`);
    const victim = spawn('qemu-io', ['-f', 'raw', ...many, s.uri], { stdio: 'ignore' });
    const victimExit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => victim.once('exit', (code, signal) => r({ code, signal })));
    await new Promise((r) => setTimeout(r, 300));
    victim.kill('SIGKILL');
    expect((await victimExit).signal).toBe('SIGKILL'); // it was still writing
    // The export is still up for the next client.
    expect(JSON.parse(tool('nbdinfo', ['--json', s.uri]).stdout).exports[0]['export-size']).toBe(size);
    await stopServe(s);
    const ci = await a.cli(['checkin', 'd-crash-client', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('dirty-map');
    const onServer = await serverCopy('d-crash-client');
    expect(sha256File(onServer)).toBe(sha256File(path.join(a.home, 'desktops', 'd-crash-client', 'disk.raw')));
    const got = readFileSync(onServer);
    const want = readFileSync(expected);
    expect(got.subarray(0, 12 * MiB).equals(want.subarray(0, 12 * MiB))).toBe(true); // the flushed writes
  }, 120_000);

  it('checkout --stream returns before the disk is here; reads through the export fetch blocks on demand, the background download completes it', async () => {
    const co = await c.cli(['checkout', 'd-stream', '--stream', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.streaming.localBlocks).toBeLessThan(co.json.streaming.blocks);
    const st0 = (await c.cli(['status', 'd-stream', '--json'])).json.desktops[0];
    expect(st0.state).toBe('streaming');
    expect(st0.readyToTravel).toBe(false);
    expect(st0.localBytes).toBeLessThan(size);

    // On demand only: what the VM reads arrives, nothing else; the bytes are the image's.
    const s1 = await serve(c, 'd-stream', ['--no-download']);
    expect(s1.listening.dataPath).toBe('js'); // still arriving: every request through JavaScript
    const part = [`write -P 0xe1 ${3 * MiB} ${64 * 1024}`, `write -P 0xe2 ${7 * MiB + 100} 300`, 'flush'];
    expect(qemuIo(s1.uri, part).code).toBe(0);
    const expected = path.join(dir, 'expected-stream.raw');
    copyFileSync(image, expected);
    expect(qemuIo(expected, part).code).toBe(0);
    const head = path.join(dir, 'stream-head.raw');
    expect(tool('qemu-img', ['dd', '-f', 'raw', '-O', 'raw', `if=${s1.uri}`, `of=${head}`, 'bs=1M', 'count=2']).code).toBe(0);
    expect(readFileSync(head).equals(readFileSync(expected).subarray(0, 2 * MiB))).toBe(true);
    await stopServe(s1);
    const st1 = (await c.cli(['status', 'd-stream', '--json'])).json.desktops[0];
    expect(st1.localBytes).toBeGreaterThan(st0.localBytes);
    expect(st1.localBytes).toBeLessThan(size);

    // With the background download: read everything while it runs, then wait until it says the disk is complete.
    const s2 = await serve(c, 'd-stream');
    const during = path.join(dir, 'stream-read-2.raw');
    expect(tool('nbdcopy', [s2.uri, during]).code).toBe(0);
    expect(same(during, expected)).toBe(true);
    await s2.next('complete');
    const st2 = (await c.cli(['status', 'd-stream', '--json'])).json.desktops[0];
    expect(st2).toMatchObject({ state: 'active', readyToTravel: true, localBytes: size });
    await stopServe(s2);
    const ci = await c.cli(['checkin', 'd-stream', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('dirty-map');
    expect(sha256File(await serverCopy('d-stream'))).toBe(sha256File(expected));
  }, 120_000);

  it('offline with a streamed disk: a read of a block not yet here is an I/O error (never zeros), writes still work, the check-in completes it later', async () => {
    expect((await d.cli(['checkout', 'd-offline', '--stream', '--json'])).code).toBe(0);
    const port = server.port();
    await server.stop();
    const s = await serve(d, 'd-offline');
    // Block 0 (the ext4 superblock) is data, and not local yet.
    const r = qemuIo(s.uri, ['read -P 0 0 4096']);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/Input\/output error/);
    // Whole pages of a missing block are the VM's own data: no download needed to write or read them back.
    const w = [`write -P 0xf1 ${65536} 8192`, 'flush'];
    expect(qemuIo(s.uri, w).code).toBe(0);
    expect(qemuIo(s.uri, [`read -P 0xf1 ${65536} 8192`]).code).toBe(0);
    // The background download says why it waits, and keeps retrying.
    expect((await s.next('download-error')).error.code).toBe('DISK_INCOMPLETE');
    await stopServe(s);

    await server.start({}, port);
    const ci = await d.cli(['checkin', 'd-offline', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('dirty-map');
    const expected = path.join(dir, 'expected-offline.raw');
    copyFileSync(image, expected);
    expect(qemuIo(expected, w).code).toBe(0);
    expect(sha256File(await serverCopy('d-offline'))).toBe(sha256File(expected));
  }, 120_000);

  it('a disk written outside `carryon serve` is noticed: the check-in falls back to a full scan and says why', async () => {
    expect((await a.cli(['checkout', 'd-outside', '--json'])).code).toBe(0);
    const disk = path.join(a.home, 'desktops', 'd-outside', 'disk.raw');
    const s = await serve(a, 'd-outside');
    // Garbage on the socket closes that connection only.
    await new Promise<void>((resolve) => {
      const c = net.connect(s.socket, () => c.write(Buffer.alloc(4096, 0x5a)));
      c.resume(); // read the greeting, so 'close' can follow
      c.on('close', () => resolve());
      c.on('error', () => undefined);
    });
    // At most 16 clients at once (each may hold the per-connection budget): the 17th is turned away and
    // says so; those connected keep being served.
    const held: net.Socket[] = [];
    for (let i = 0; i < 16; i++) {
      const c = net.connect(s.socket);
      c.on('error', () => undefined);
      await new Promise<void>((resolve) => c.once('data', () => resolve())); // the server's greeting
      held.push(c);
    }
    const turnedAway = net.connect(s.socket);
    turnedAway.on('error', () => undefined);
    let greeted = false;
    turnedAway.on('data', () => (greeted = true));
    await new Promise<void>((resolve) => turnedAway.on('close', () => resolve()));
    expect(greeted).toBe(false);
    expect(await s.next('refused')).toMatchObject({ reason: 'too-many-connections', max: 16 });
    for (const c of held) c.destroy();
    // Once the server has seen those go, a new client is greeted again.
    let back = false;
    for (let i = 0; i < 100 && !back; i++) {
      back = await new Promise<boolean>((resolve) => {
        const c = net.connect(s.socket);
        c.on('error', () => resolve(false));
        c.once('data', () => (c.destroy(), resolve(true)));
        c.once('close', () => resolve(false));
      });
      if (!back) await new Promise((r) => setTimeout(r, 20));
    }
    expect(back).toBe(true);
    expect(qemuIo(s.uri, [`write -P 0x71 ${MiB} 4096`]).code).toBe(0);
    await stopServe(s);
    // On request the export listens on 127.0.0.1:PORT instead of a Unix socket.
    const tcp = await serve(a, 'd-outside', ['--port', '0']);
    expect(tcp.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/d-outside$/);
    expect(tcp.socket).toBeNull();
    expect(JSON.parse(tool('nbdinfo', ['--json', tcp.uri]).stdout).exports[0]['export-size']).toBe(size);
    expect(tcp.listening.dataPath).toBe('native'); // a TCP connection is handed over the same way
    expect(qemuIo(tcp.uri, [`write -P 0x7a ${2 * MiB} 8192`, `read -P 0x7a ${2 * MiB} 8192`]).code).toBe(0);
    await stopServe(tcp);
    const js = await serve(a, 'd-outside', [], { CARRYON_NBD_DATA: 'js' });
    expect(js.listening.dataPath).toBe('js');
    expect(qemuIo(js.uri, [`read -P 0x7a ${2 * MiB} 8192`]).code).toBe(0);
    await stopServe(js);
    qemuWrite(disk, [[0x72, 6 * MiB, 65536]]);
    const st = (await a.cli(['status', 'd-outside', '--json'])).json.desktops[0];
    expect(st.dirtyMap.trusted).toBe(false);
    expect(st.blocksChanged).toBeGreaterThanOrEqual(2);
    const ci = await a.cli(['checkin', 'd-outside', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('full');
    expect(ci.json.fullScanReason).toMatch(/outside `carryon serve`/);
    // The scan read the disk's data and skipped its holes (native/sparse): exactly the 64 KiB blocks
    // that are not all zeros (the check-out leaves hole blocks unwritten; every write here is non-zero).
    expect(ci.json.scanHoles).toBe('seek-data');
    const bytes = readFileSync(disk);
    let dataBytes = 0;
    for (let at = 0; at < size; at += 65536) if (bytes.subarray(at, Math.min(at + 65536, size)).some((x) => x !== 0)) dataBytes += Math.min(65536, size - at);
    expect(dataBytes).toBeLessThan(size);
    expect(ci.json.scanBytesRead).toBe(dataBytes);
    expect(sha256File(await serverCopy('d-outside'))).toBe(sha256File(disk));
    expect((await a.cli(['status', '--json'])).json.scanHoles).toMatchObject({ mode: 'seek-data' });
  }, 120_000);
});
