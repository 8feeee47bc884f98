// kill -9 at chosen moments (CARRYON_CRASH_AT, see client/crash-point.ts), then re-run: the desktop is
// at the old or the new version, never a mix, and the re-run finishes without re-sending what arrived.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, makeExt4Image, qemuWrite, sha256File, removeTmp, TestServer, tmpDir } from './harness.js';
import { prng, randomBytes } from '../unit/helpers.js';

describe('crashes and dropped connections', () => {
  const dir = tmpDir('crash');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  let token = '';
  const versionOf = async (name: string): Promise<number> => (await server.admin(['status'])).json.desktops.find((d: any) => d.name === name).version;

  beforeAll(async () => {
    makeExt4Image(image, 64, 40);
    await server.init();
    token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['d1', 'd2', 'd3', 'd4', 'd5', 'd6']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  const laptop = async (name: string): Promise<Laptop> => {
    const l = new Laptop(path.join(dir, name));
    expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
    return l;
  };

  it('a check-out killed mid-download resumes without fetching again what it verified', async () => {
    const l = await laptop('resume-checkout');
    const killed = await l.cli(['checkout', 'd1', '--json'], { CARRYON_CRASH_AT: 'checkout-block:300' });
    expect(killed.signal).toBe('SIGKILL');
    const disk = path.join(l.home, 'desktops', 'd1', 'disk.raw');
    expect(existsSync(disk)).toBe(false); // never a half-written disk under the real name
    const st = await l.cli(['status', 'd1', '--json']);
    expect(st.json.desktops[0].state).toBe('downloading');
    const again = await l.cli(['checkout', 'd1', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.resumed).toBe(true);
    expect(again.json.blocksFromCache).toBeGreaterThanOrEqual(256); // a worker commits its cache index every 256 blocks
    const full = await (await laptop('full-checkout')).cli(['checkout', 'd2', '--json']);
    expect(again.json.bytesReceived).toBeLessThan(full.json.bytesReceived);
    expect(sha256File(disk)).toBe(sha256File(image));
  });

  it('a server that dies mid-download: the client says so; after a restart the re-run completes', async () => {
    const l = await laptop('server-dies');
    const port = server.port();
    await server.stop();
    await server.start({ CARRYON_CRASH_AT: 'serve-block:150' }, port);
    const r = await l.cli(['checkout', 'd3', '--json']);
    expect((await server.exited()).signal).toBe('SIGKILL');
    expect(r.code).toBe(7);
    expect(r.json.error.code).toBe('SERVER_UNREACHABLE');
    expect(existsSync(path.join(l.home, 'desktops', 'd3', 'disk.raw'))).toBe(false);
    await server.start({}, port);
    const again = await l.cli(['checkout', 'd3', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.resumed).toBe(true);
    expect(again.json.blocksFromCache).toBeGreaterThanOrEqual(100);
    expect(sha256File(again.json.disk)).toBe(sha256File(image));
  });

  it('a client killed mid-upload, then re-run, sends only what had not arrived', async () => {
    const l = await laptop('upload-kill');
    const co = await l.cli(['checkout', 'd4', '--json']);
    expect(co.code, co.stderr).toBe(0);
    // Seeded random bytes, not a fill pattern: what reaches the server before the kill is bounded in
    // bytes (the upload stream's 1 MiB feed), and 30 blocks of a fill pattern sent as frames are a few
    // KB, so none would have left the laptop yet.
    const rng = prng(4);
    const fd = openSync(co.json.disk, 'r+');
    for (let k = 0; k < 40; k++) writeSync(fd, randomBytes(rng, 65536 + 4096 * (k % 5)), 0, undefined, (k * 1531 + 7) * 4096 % (60 << 20));
    closeSync(fd);
    const expected = sha256File(co.json.disk);
    const killed = await l.cli(['checkin', 'd4', '--json'], { CARRYON_CRASH_AT: 'checkin-upload-block:30' });
    expect(killed.signal).toBe('SIGKILL');
    expect(await versionOf('d4')).toBe(1);
    const again = await l.cli(['checkin', 'd4', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.version).toBe(2);
    expect(again.json.blocksUploaded).toBeLessThan(again.json.blocksChanged);
    const check = await (await laptop('upload-kill-verify')).cli(['checkout', 'd4', '--json']);
    expect(sha256File(check.json.disk)).toBe(expected);
  });

  it('a server killed mid-upload and before its commit keeps the old version; re-runs finish', async () => {
    const l = await laptop('server-kill');
    const port = server.port();
    const co = await l.cli(['checkout', 'd5', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const ops: Array<[number, number, number]> = [];
    for (let k = 0; k < 40; k++) ops.push([0x40 + k, (k * 977 + 3) * 4096 % (60 << 20), 65536]);
    qemuWrite(co.json.disk, ops);
    const expected = sha256File(co.json.disk);

    await server.stop();
    await server.start({ CARRYON_CRASH_AT: 'upload-block-stored:20' }, port);
    const first = await l.cli(['checkin', 'd5', '--json']);
    expect(first.code).toBe(7);
    expect((await server.exited()).signal).toBe('SIGKILL');
    await server.start({ CARRYON_CRASH_AT: 'commit-before-transaction:1' }, port);
    const second = await l.cli(['checkin', 'd5', '--json']);
    expect(second.code).toBe(7);
    expect((await server.exited()).signal).toBe('SIGKILL');
    expect(await versionOf('d5')).toBe(1);

    await server.start({}, port);
    const third = await l.cli(['checkin', 'd5', '--json']);
    expect(third.code, third.stderr).toBe(0);
    expect(third.json.version).toBe(2);
    expect(third.json.blocksUploaded).toBe(0); // everything had arrived before the crashes
    const check = await (await laptop('server-kill-verify')).cli(['checkout', 'd5', '--json']);
    expect(sha256File(check.json.disk)).toBe(expected);
  });

  it('a client killed right after the server committed recognises the landed commit', async () => {
    const l = await laptop('after-commit');
    const co = await l.cli(['checkout', 'd6', '--json']);
    expect(co.code, co.stderr).toBe(0);
    qemuWrite(co.json.disk, [[0x77, 12 << 20, 200000]]);
    const killed = await l.cli(['checkin', 'd6', '--json'], { CARRYON_CRASH_AT: 'checkin-after-commit:1' });
    expect(killed.signal).toBe('SIGKILL');
    expect(await versionOf('d6')).toBe(2);
    const again = await l.cli(['checkin', 'd6', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.version).toBe(2);
    expect(again.json.alreadyCommitted).toBe(true);
    expect(await versionOf('d6')).toBe(2);
    expect(spawnSync('cmp', [co.json.disk, co.json.disk]).status).toBe(0);
  });
});
