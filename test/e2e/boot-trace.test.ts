// Boot traces end to end (real server, the real CLI as processes, qemu-io as the VM): the first streamed
// boot of an image version records the order its VM first read blocks and `carryon serve` reports it when
// it stops; the next streamed check-out of a desktop on that version gets it and `serve` reads ahead by
// it (its stopped event says so: readAhead 'trace', blocks read ahead and then read, fewer fetches). A
// hostile trace (too long, past the image's end, a repeated block, another image version, another user's
// desktop) is refused with its code and changes nothing. Every 64 KiB block of the image holds its own
// byte value (block i is all i+1), so every block is data with its own id and qemu-io checks each read.
// A session that reads less than half of the trace it had does not replace it.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { http, killSpawned, Laptop, removeTmp, requireTool, spawnCli, TestServer, tmpDir } from './harness.js';

const KiB = 1024;
const BS = 64 * KiB;
const BLOCKS = 200;
/** The "boot": scattered 4 KiB reads, as a guest's page faults and config reads are. */
const BOOT = [150, 3, 77, 120, 41, 9, 180, 60, 33, 101, 14, 170, 88, 5, 140, 66, 27, 191, 52, 111];

async function serveAndRead(laptop: Laptop, desk: string, blocks: number[]): Promise<any> {
  const s = spawnCli(laptop, ['serve', desk, '--no-download', '--no-persona-share']);
  const l = await s.next('listening');
  expect(l.error, s.stderr()).toBeUndefined();
  const r = spawnSync('qemu-io', ['-f', 'raw', ...blocks.flatMap((b) => ['-c', `read -P ${b + 1} ${b * BS + 8 * KiB} 4096`]), l.uri], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).not.toMatch(/Pattern verification failed|error/i);
  expect(await s.stop()).toBe(0);
  return s.next('stopped');
}

describe('streamed boots read ahead by what earlier boots of the image version read', () => {
  const dir = tmpDir('boottrace');
  const server = new TestServer(dir);
  const laptop = new Laptop(path.join(dir, 'laptop'));
  let alice = '';
  let bob = '';

  beforeAll(async () => {
    requireTool('qemu-io');
    const img = Buffer.alloc(BLOCKS * BS);
    for (let i = 0; i < BLOCKS; i++) img.fill(i + 1, i * BS, (i + 1) * BS);
    writeFileSync(path.join(dir, 'img.raw'), img);
    await server.init();
    alice = await server.addUser('alice');
    bob = await server.addUser('bob');
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw'), '--block-size', String(BS)])).code).toBe(0);
    expect((await server.admin(['image', 'publish', 'other', path.join(dir, 'img.raw'), '--block-size', String(BS)])).code).toBe(0);
    for (const d of ['d-first', 'd-second']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'img', '--encryption', 'off'])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'd-other', '--user', 'alice', '--image', 'other', '--encryption', 'off'])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'b-desk', '--user', 'bob', '--image', 'img', '--encryption', 'off'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token', alice])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  const put = (token: string, desk: string, body: unknown) => http(server.url, 'PUT', `/v1/desktops/${desk}/boot-trace`, token, JSON.stringify(body), { 'content-type': 'application/json' });
  const get = (token: string, desk: string) => http(server.url, 'GET', `/v1/desktops/${desk}/boot-trace`, token);

  it('the first boot records its reads; a second streamed check-out of the image version prefetches them', async () => {
    expect((await get(alice, 'd-first')).json).toEqual({ image: 'img', imageVersion: 1, blocks: [] });
    const co1 = await laptop.cli(['checkout', 'd-first', '--stream', '--json']);
    expect(co1.code, co1.stderr).toBe(0);
    expect(co1.json.streaming).toMatchObject({ bootTraceBlocks: 0 });
    const first = await serveAndRead(laptop, 'd-first', [...BOOT, BOOT[0]!]);
    // No trace yet: today's policy, a fetch per scattered read; the order goes to the server.
    expect(first).toMatchObject({ readAhead: 'sequential', traceBlocks: 0, readBlocks: BOOT.length, onDemandBlocks: BOOT.length, readAheadBlocks: 0, bootTrace: { reported: BOOT.length } });
    expect((await get(alice, 'd-second')).json).toEqual({ image: 'img', imageVersion: 1, blocks: BOOT });

    const co2 = await laptop.cli(['checkout', 'd-second', '--stream', '--json']);
    expect(co2.code, co2.stderr).toBe(0);
    expect(co2.json.streaming).toMatchObject({ bootTraceBlocks: BOOT.length });
    const second = await serveAndRead(laptop, 'd-second', BOOT);
    expect(second).toMatchObject({ readAhead: 'trace', traceBlocks: BOOT.length, readBlocks: BOOT.length, onDemandBlocks: BOOT.length });
    // Most blocks came ahead of the reads (as many as the budget let: at most one unread per block read),
    // every guess was read, and the reads found them: far fewer fetches.
    expect(second.readAheadBlocks).toBeGreaterThanOrEqual(BOOT.length / 2);
    expect(second.readAheadUsed).toBe(second.readAheadBlocks);
    expect(second.onDemandFetches).toBeLessThan(first.onDemandFetches / 2);
    expect(second.onDemandBytes).toBeLessThanOrEqual(2 * second.readBlockBytes);
    expect(second.bootTrace).toEqual({ reported: BOOT.length });

    // A session that reads less than half of the trace (a peek, a VM stopped early) does not replace it.
    const peek = await serveAndRead(laptop, 'd-second', [77, 3]);
    expect(peek.bootTrace).toBeUndefined();
    expect((await get(alice, 'd-second')).json.blocks).toEqual(BOOT);
  }, 180_000);

  it('a hostile trace is refused with its code and changes nothing; only users on the image version read or replace it', async () => {
    const before = (await get(alice, 'd-first')).json;
    expect(before.blocks).toEqual(BOOT);
    const cases: Array<[string, unknown, number, string]> = [
      ['too long for the image', { image: 'img', imageVersion: 1, blocks: Array.from({ length: BLOCKS + 1 }, (_, i) => i) }, 400, 'BOOT_TRACE_INVALID'],
      ['too long for any image', { image: 'img', imageVersion: 1, blocks: Array.from({ length: 65_537 }, (_, i) => i) }, 400, 'BOOT_TRACE_INVALID'],
      ['past the end of the image', { image: 'img', imageVersion: 1, blocks: [1, BLOCKS] }, 400, 'BOOT_TRACE_INVALID'],
      ['a block twice', { image: 'img', imageVersion: 1, blocks: [4, 4] }, 400, 'BOOT_TRACE_INVALID'],
      ['not indices', { image: 'img', imageVersion: 1, blocks: ['a'] }, 400, 'BOOT_TRACE_INVALID'],
      ['another image', { image: 'other', imageVersion: 1, blocks: [1, 2] }, 409, 'BOOT_TRACE_WRONG_IMAGE'],
      ['another version', { image: 'img', imageVersion: 2, blocks: [1, 2] }, 409, 'BOOT_TRACE_WRONG_IMAGE'],
    ];
    for (const [what, body, status, code] of cases) {
      const r = await put(alice, 'd-first', body);
      expect({ what, status: r.status, code: r.json?.error?.code }).toEqual({ what, status, code });
    }
    // Alice's desktop on the other image cannot write img's trace, nor bob on alice's desktop (not found, not forbidden).
    expect((await put(alice, 'd-other', { image: 'img', imageVersion: 1, blocks: [1] })).json.error.code).toBe('BOOT_TRACE_WRONG_IMAGE');
    expect((await put(bob, 'd-first', { image: 'img', imageVersion: 1, blocks: [1] })).json.error.code).toBe('DESKTOP_NOT_FOUND');
    expect((await get(bob, 'd-first')).json.error.code).toBe('DESKTOP_NOT_FOUND');
    expect((await get(alice, 'd-first')).json).toEqual(before);
    expect((await get(alice, 'd-other')).json).toEqual({ image: 'other', imageVersion: 1, blocks: [] });
    // Bob's own desktop on img reads the same trace (indices only: blocks of his own disk).
    expect((await get(bob, 'b-desk')).json).toEqual(before);
    // The server keeps serving, and a good trace still replaces the old one.
    expect((await put(bob, 'b-desk', { image: 'img', imageVersion: 1, blocks: [7, 2] })).json).toEqual({ image: 'img', imageVersion: 1, blocks: 2 });
    expect((await get(alice, 'd-first')).json.blocks).toEqual([7, 2]);
  }, 120_000);
});
