// A 10 GiB image must not need 10 GiB of memory anywhere: publish, check out, change and check in a
// sparse 10 GiB disk, and bound the peak memory of the CLI and the server. Nor 10 GiB of reading: the
// publish and the full scan of the check-in read only the data (SEEK_DATA), not the holes.
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, qemuWrite, removeTmp, TestServer, tmpDir } from './harness.js';

const GiB = 1024 ** 3;
const LIMIT = 400 * 1024 * 1024;

function serverPeakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

describe('a 10 GiB sparse image', () => {
  const dir = tmpDir('big');
  const server = new TestServer(dir);
  const image = path.join(dir, 'big.raw');
  const laptop = new Laptop(path.join(dir, 'laptop'));
  let token = '';

  beforeAll(async () => {
    spawnSync('truncate', ['-s', String(10 * GiB), image]);
    // data scattered over the whole range, as an OS install would leave it
    const ops: Array<[number, number, number]> = [];
    for (let k = 0; k < 64; k++) ops.push([0x10 + k, Math.floor((k * 10 * GiB) / 64 / 65536) * 65536, 1 << 20]);
    qemuWrite(image, ops);
    await server.init();
    token = await server.addUser('alice');
    const pub = await server.admin(['image', 'publish', 'big', image]);
    expect(pub.code, pub.stderr).toBe(0);
    expect(pub.json.blocks).toBe(163840);
    // Publish read the 64 MiB of data and skipped the holes (native/sparse), instead of reading 10 GiB.
    expect(pub.json.scanHoles).toBe('seek-data');
    expect(pub.json.scanBytesRead).toBe(64 * 1024 * 1024);
    expect((await server.admin(['desktop', 'create', 'big-desk', '--user', 'alice', '--image', 'big'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 300_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('checks out, changes and checks in with bounded memory on both sides', async () => {
    const co = await laptop.cli(['checkout', 'big-desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(statSync(co.json.disk).size).toBe(10 * GiB);
    expect(statSync(co.json.disk).blocks * 512).toBeLessThan(256 * 1024 * 1024); // sparse
    expect(co.json.maxRssBytes).toBeLessThan(LIMIT);
    qemuWrite(co.json.disk, [[0xee, 3 * GiB, 4 << 20], [0xef, 9 * GiB + 12345 * 4096, 8192]]);
    const ci = await laptop.cli(['checkin', 'big-desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.version).toBe(2);
    expect(ci.json.blocksChanged).toBe(65);
    // Written outside `carryon serve`: a full scan, of the data only (64 MiB, and the 4 MiB + one block written into holes).
    expect(ci.json.scanMode).toBe('full');
    expect(ci.json.scanHoles).toBe('seek-data');
    expect(ci.json.scanBytesRead).toBe(68 * 1024 * 1024 + 65536);
    expect(ci.json.maxRssBytes).toBeLessThan(LIMIT);
    expect(serverPeakRss(server.pid())).toBeLessThan(LIMIT);
    const again = await new Laptop(path.join(dir, 'laptop-2'));
    expect((await again.cli(['login', server.url, '--token', token])).code).toBe(0);
    const co2 = await again.cli(['checkout', 'big-desk', '--json']);
    expect(co2.code, co2.stderr).toBe(0);
    expect(spawnSync('cmp', [co.json.disk, co2.json.disk]).status).toBe(0);
  });
});
