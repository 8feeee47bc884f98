// Images of any size and any allowed block size: a short last block, a 4 KiB block size, republishing
// the same image, and a rejected block size.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, qemuWrite, sha256File, removeTmp, TestServer, tmpDir } from './harness.js';

describe('odd sizes and block sizes', () => {
  const dir = tmpDir('odd');
  const server = new TestServer(dir);
  const image = path.join(dir, 'odd.raw');
  const laptop = new Laptop(path.join(dir, 'laptop'));
  const other = new Laptop(path.join(dir, 'other'));
  const size = 5 * 1024 * 1024 + 1234;

  beforeAll(async () => {
    // real bytes (a system library) at the start, a hole in the middle, real bytes up to the odd end
    const lib = readFileSync('/usr/bin/qemu-io').subarray(0, 2 << 20);
    const img = Buffer.alloc(size);
    lib.copy(img, 0);
    lib.copy(img, size - lib.length);
    writeFileSync(image, img);
    await server.init();
    const token = await server.addUser('alice');
    await server.start();
    for (const l of [laptop, other]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('refuses a block size that is not a power of two from 4 KiB to 4 MiB', async () => {
    for (const bs of ['1000', '2048', '8388608', 'abc']) {
      const r = await server.admin(['image', 'publish', 'bad', image, '--block-size', bs]);
      expect(r.code).toBe(2);
      expect(r.json.error.code).toBe('INVALID_ARGUMENT');
    }
    expect((await server.admin(['status'])).json.images).toBe(0);
  });

  it('republishing the same image stores no block twice', async () => {
    const first = await server.admin(['image', 'publish', 'odd', image, '--block-size', '4096']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.json.blocks).toBe(Math.ceil(size / 4096));
    expect(first.json.holes).toBeGreaterThan(0);
    const again = await server.admin(['image', 'publish', 'odd', image, '--block-size', '4096']);
    expect(again.json.version).toBe(2);
    expect(again.json.newBlocks).toBe(0);
    expect(again.json.manifestId).toBe(first.json.manifestId);
  });

  it('a short last block and 4 KiB blocks go through a full cycle', async () => {
    expect((await server.admin(['desktop', 'create', 'odd-desk', '--user', 'alice', '--image', 'odd'])).code).toBe(0);
    const co = await laptop.cli(['checkout', 'odd-desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(sha256File(co.json.disk)).toBe(sha256File(image));
    qemuWrite(co.json.disk, [[0x99, size - 1000, 1000], [0x98, 3 << 20, 10000]]);
    const ci = await laptop.cli(['checkin', 'odd-desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.blocksChanged).toBe(1 + Math.ceil(((3 << 20) % 4096 + 10000) / 4096));
    const co2 = await other.cli(['checkout', 'odd-desk', '--json']);
    expect(co2.code, co2.stderr).toBe(0);
    expect(spawnSync('cmp', [co.json.disk, co2.json.disk]).status).toBe(0);
  });
});
