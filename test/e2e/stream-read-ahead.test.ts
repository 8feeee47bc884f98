// What a streamed check-out fetches when `carryon serve --no-download` exports it and a real NBD client
// (qemu-io) reads: scattered reads fetch only the blocks they touch; a sequential run of reads gets
// read-ahead, never more than twice the blocks read; CARRYON_READ_AHEAD=fixed:15 (the bench's peer,
// carryon's earlier policy) still fetches the 15 blocks after every miss, and a bad spelling is refused.
// The counts come from serve's `stopped` event (--json). Every 64 KiB block of the image holds its own
// byte value (block i is all i+1), so every block is data with its own id and qemu-io checks each read.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, removeTmp, requireTool, spawnCli, TestServer, tmpDir } from './harness.js';

const KiB = 1024;
const BS = 64 * KiB;
const BLOCKS = 200;

/** Run `carryon serve --no-download`, let qemu-io do `cmds` (each checks its bytes), stop it; the stopped event. */
async function serveAndRead(laptop: Laptop, desk: string, cmds: string[], env: Record<string, string> = {}): Promise<any> {
  const s = spawnCli(laptop, ['serve', desk, '--no-download', '--no-persona-share'], env);
  const l = await s.next('listening');
  expect(l.error, s.stderr()).toBeUndefined();
  const r = spawnSync('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), l.uri], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).not.toMatch(/Pattern verification failed|error/i);
  expect(await s.stop()).toBe(0);
  return s.next('stopped');
}

/** qemu-io: read `blocks` blocks from block `first`, `per` blocks per request, checking each block's byte. */
function readRun(first: number, blocks: number, per: number): string[] {
  const out: string[] = [];
  for (let i = first; i < first + blocks; i += per) for (let k = 0; k < per; k++) out.push(`read -P ${i + k + 1} ${(i + k) * BS} ${BS}`);
  return out;
}

describe('streamed disks fetch what the VM reads, and read ahead only of sequential runs', () => {
  const dir = tmpDir('readahead');
  const server = new TestServer(dir);
  const laptop = new Laptop(path.join(dir, 'laptop'));

  beforeAll(async () => {
    requireTool('qemu-io');
    const img = Buffer.alloc(BLOCKS * BS);
    for (let i = 0; i < BLOCKS; i++) img.fill(i + 1, i * BS, (i + 1) * BS);
    writeFileSync(path.join(dir, 'img.raw'), img);
    await server.init();
    const token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw'), '--block-size', String(BS)])).code).toBe(0);
    for (const d of ['d-policy', 'd-fixed']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  it('scattered reads fetch only their blocks; a sequential run triggers read-ahead within 2x of what it read', async () => {
    const co = await laptop.cli(['checkout', 'd-policy', '--stream', '--json']);
    expect(co.code, co.stderr).toBe(0);

    // Scattered 4 KiB reads, two of them in one block: five blocks touched, five fetched.
    const scattered = [150, 3, 77, 120, 41].map((b) => `read -P ${b + 1} ${b * BS + 8 * KiB} ${4 * KiB}`);
    const one = await serveAndRead(laptop, 'd-policy', [...scattered, `read -P 78 ${77 * BS + 40 * KiB} ${4 * KiB}`]);
    expect(one).toMatchObject({ readAhead: 'sequential', readBlocks: 5, readBlockBytes: 5 * BS, onDemandBlocks: 5, onDemandBytes: 5 * BS, readAheadBlocks: 0 });

    // A sequential run of 128 KiB reads over 40 blocks: read ahead as it goes, the last fetch at most as far past it as it read.
    const two = await serveAndRead(laptop, 'd-policy', readRun(10, 40, 2));
    expect(two.readBlocks).toBe(40);
    expect(two.readAheadBlocks).toBeGreaterThan(0);
    expect(two.onDemandBytes).toBeGreaterThan(two.readBlockBytes); // something past the run's end was fetched
    expect(two.onDemandBytes).toBeLessThanOrEqual(2 * two.readBlockBytes);
    // Read ahead means fewer fetches than the 20 misses a fetch per read would make.
    expect(two.onDemandFetches).toBeLessThan(20);

    // What was fetched ahead is local now: reading it again fetches nothing.
    const three = await serveAndRead(laptop, 'd-policy', readRun(10, 40, 2));
    expect(three).toMatchObject({ onDemandBlocks: 0, readBlocks: 40 });
  }, 120_000);

  it('CARRYON_READ_AHEAD=fixed:15 (the earlier policy) fetches the 15 blocks after every miss; a bad spelling is refused', async () => {
    const co = await laptop.cli(['checkout', 'd-fixed', '--stream', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const bad = spawnCli(laptop, ['serve', 'd-fixed', '--no-download'], { CARRYON_READ_AHEAD: 'lots' });
    expect((await bad.next('error')).error.code).toBe('INVALID_ARGUMENT');
    expect((await bad.exit).code).not.toBe(0);

    const st = await serveAndRead(laptop, 'd-fixed', [`read -P 11 ${10 * BS} 4096`, `read -P 101 ${100 * BS} 4096`], { CARRYON_READ_AHEAD: 'fixed:15' });
    expect(st).toMatchObject({ readAhead: 'fixed:15', readBlocks: 2, onDemandBlocks: 32, readAheadBlocks: 30 });
  }, 120_000);
});
