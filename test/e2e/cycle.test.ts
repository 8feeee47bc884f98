// The whole journey with real processes: publish, check out to laptop A, change the disk as a VM
// would, check in, check out on laptop B, compare bytes.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, makeExt4Image, qemuWrite, requireTool, sha256File, removeTmp, TestServer, tmpDir } from './harness.js';

describe('check-out / check-in cycle', () => {
  const dir = tmpDir('cycle');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  let token = '';
  let storedAfterPublish = 0;

  beforeAll(async () => {
    makeExt4Image(image, 48, 24);
    await server.init();
    token = await server.addUser('alice');
    const pub = await server.admin(['image', 'publish', 'golden', image]);
    expect(pub.code, pub.stderr).toBe(0);
    expect(pub.json.newBlocks).toBeGreaterThan(0);
    storedAfterPublish = (await server.admin(['status'])).json.storedBytes;
    for (const d of ['alice-desk', 'alice-second']) {
      const c = await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden']);
      expect(c.code, c.stderr).toBe(0);
    }
    await server.start();
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('a linked clone costs no block storage', async () => {
    const s = (await server.admin(['status'])).json;
    expect(s.storedBytes).toBe(storedAfterPublish);
    expect(s.logicalBytes).toBe(3 * statSync(image).size); // the image + two desktops
    expect(s.storedBytes).toBeLessThan(s.logicalDataBytes / 2);
  });

  it('checks out to laptop A as a sparse raw disk equal to the image', async () => {
    expect((await a.cli(['login', server.url, '--token', token])).code).toBe(0);
    const r = await a.cli(['checkout', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.desktop).toBe('alice-desk');
    expect(path.isAbsolute(r.json.disk)).toBe(true);
    expect(sha256File(r.json.disk)).toBe(sha256File(image));
    const st = statSync(r.json.disk);
    expect(st.blocks * 512).toBeLessThan(st.size); // holes stay holes
    // compressed blocks travel: less than the non-hole bytes of the image
    const status = (await server.admin(['status'])).json;
    expect(r.json.bytesReceived).toBeLessThan(status.logicalDataBytes / 3);
    expect(r.json.bytesReceived).toBeGreaterThan(status.storedBytes * 0.9);
  });

  it('a second desktop from the same image fetches nothing new', async () => {
    const r = await a.cli(['checkout', 'alice-second', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.blocksFetched).toBe(0);
    expect(r.json.blocksFromCache).toBeGreaterThan(0);
    // only the manifest (32 bytes a block) and a few small JSON answers
    const manifestBytes = 32 * Math.ceil(statSync(image).size / 65536) + 64;
    expect(r.json.bytesReceived).toBeLessThan(manifestBytes + 4096);
    expect(sha256File(r.json.disk)).toBe(sha256File(image));
  });

  it('status shows what changed; check-in sends only that', async () => {
    const disk = path.join(a.home, 'desktops', 'alice-desk', 'disk.raw');
    qemuWrite(disk, [[0xab, 1 << 20, 300 * 1024], [0x5c, 9 << 20, 4096], [0x11, 30 << 20, 70000]]);
    requireTool('debugfs');
    // A file edit inside the file system, as the guest OS would make it.
    const note = path.join(dir, 'note.txt');
    spawnSync('sh', ['-c', `printf 'carryon was here\\n%.0s' $(seq 1 500) > ${note}`]);
    const dbg = spawnSync('debugfs', ['-w', '-R', `write ${note} note.txt`, disk]);
    expect(dbg.status).toBe(0);
    const st = await a.cli(['status', 'alice-desk', '--json']);
    expect(st.code, st.stderr).toBe(0);
    const changed = st.json.desktops[0].blocksChanged;
    expect(changed).toBeGreaterThanOrEqual(8);

    const r = await a.cli(['checkin', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.version).toBe(2);
    expect(r.json.blocksChanged).toBe(changed);
    // ~400 KiB changed; patches and stream compression keep the upload far below that.
    expect(r.json.bytesSent).toBeLessThan(r.json.bytesChanged / 4);
    expect(r.json.blocksAsPatch).toBeGreaterThan(0);
    // The laptop's copy stays, read-only, and says it is checked in.
    expect(statSync(disk).mode & 0o222).toBe(0);
    const after = await a.cli(['status', 'alice-desk', '--json']);
    expect(after.json.desktops[0].state).toBe('checked-in');
  });

  it('laptop B checks out the new version byte-identical to A', async () => {
    expect((await b.cli(['login', server.url, '--token', token])).code).toBe(0);
    const r = await b.cli(['checkout', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.version).toBe(2);
    const aDisk = path.join(a.home, 'desktops', 'alice-desk', 'disk.raw');
    expect(spawnSync('cmp', [aDisk, r.json.disk]).status).toBe(0);
  });

  it('B checks in unchanged: the desktop stays at its version and the checkout ends', async () => {
    const r = await b.cli(['checkin', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.version).toBe(2);
    expect(r.json.blocksChanged).toBe(0);
    expect(r.json.blocksUploaded).toBe(0);
  });

  it('A checks out again in place, fetching only blocks it lacks', async () => {
    const r = await a.cli(['checkout', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.version).toBe(2);
    expect(r.json.blocksFetched).toBe(0); // A wrote those blocks itself
    expect(r.json.blocksWritten).toBe(0); // and its copy already holds them
    expect(existsSync(`${r.json.disk}.partial`)).toBe(false);
    expect(spawnSync('cmp', [r.json.disk, path.join(b.home, 'desktops', 'alice-desk', 'disk.raw')]).status).toBe(0);
  });

  it('after A checks in again, B updates its copy with patches against the blocks it holds', async () => {
    const diskA = path.join(a.home, 'desktops', 'alice-desk', 'disk.raw');
    // scattered small writes inside blocks that hold data: each block changes by a few KiB
    const ops: Array<[number, number, number]> = [];
    for (let k = 0; k < 24; k++) ops.push([0x30 + k, ((k * 29 + 5) % 700) * 65536 + 8192, 3000]);
    qemuWrite(diskA, ops);
    const ci = await a.cli(['checkin', 'alice-desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.version).toBe(3);
    const r = await b.cli(['checkout', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.version).toBe(3);
    expect(r.json.blocksFetched).toBe(ci.json.blocksChanged);
    // 24 blocks of 64 KiB changed by ~3 KB each: patches, not whole blocks, cross the wire
    expect(r.json.bytesReceived - 32 * Math.ceil(statSync(image).size / 65536)).toBeLessThan(24 * 8 * 1024);
    expect(spawnSync('cmp', [diskA, r.json.disk]).status).toBe(0);
    // A checks out again so the next test finds it holding the desktop
    expect((await a.cli(['checkout', 'alice-desk', '--json'])).code).toBe(5);
    expect((await b.cli(['checkin', 'alice-desk', '--json'])).code).toBe(0);
    expect((await a.cli(['checkout', 'alice-desk', '--json'])).code).toBe(0);
  });

  it('a second checkout of the same desktop on the same laptop is a no-op', async () => {
    const r = await a.cli(['checkout', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.alreadyCheckedOut).toBe(true);
  });
});
