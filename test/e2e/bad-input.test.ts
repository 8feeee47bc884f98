// Every rejected input: a clear error with a stable code, and nothing changed on the server or laptop.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  blockId, createCompressStream, DiskManifest, encodeBlock, encodeBlockPatch, encodeManifest, packEntries, sha256, type TarEntry,
} from '../../src/index.js';
import { http, Laptop, makeExt4Image, qemuWrite, removeTmp, sha256File, TestServer, tmpDir } from './harness.js';

async function zstdTar(entries: TarEntry[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of packEntries(entries).pipe(createCompressStream(3))) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe('bad input is refused with a stable code and changes nothing', () => {
  const dir = tmpDir('bad');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  let alice = '';
  let bob = '';
  const device = 'raw-device-0001';
  let checkoutId = '';
  let baseManifest: Buffer;

  const state = async () => {
    const s = (await server.admin(['status'])).json;
    return { blocks: s.blocks, storedBytes: s.storedBytes, versions: s.desktops.map((d: any) => `${d.name}@${d.version}`).join(',') };
  };

  beforeAll(async () => {
    makeExt4Image(image, 16, 6);
    await server.init();
    alice = await server.addUser('alice');
    bob = await server.addUser('bob');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['alice-desk', 'alice-raw', 'alice-corrupt', 'alice-gone']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    expect((await a.cli(['login', server.url, '--token', alice])).code).toBe(0);
    expect((await b.cli(['login', server.url, '--token', alice, '--device-name', 'laptop-b'])).code).toBe(0);
    const co = await http(server.url, 'POST', '/v1/desktops/alice-raw/checkouts', alice, JSON.stringify({ device, deviceName: 'raw' }));
    expect(co.status).toBe(200);
    checkoutId = co.json.checkoutId;
    baseManifest = (await http(server.url, 'GET', `/v1/checkouts/${checkoutId}/manifest`, alice)).body;
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('no token, a wrong token, another user: 401, 401, 404', async () => {
    const none = await http(server.url, 'GET', '/v1/desktops', null);
    expect(none.status).toBe(401);
    expect(none.json.error.code).toBe('UNAUTHORIZED');
    const wrong = await http(server.url, 'GET', '/v1/desktops', 'co_not-a-token');
    expect(wrong.status).toBe(401);
    expect(wrong.json.error.code).toBe('UNAUTHORIZED');
    const other = await http(server.url, 'GET', '/v1/desktops/alice-desk', bob);
    expect(other.status).toBe(404);
    expect(other.json.error.code).toBe('DESKTOP_NOT_FOUND');
    const badPath = await http(server.url, 'GET', '/v1/desktops/%E0%A4%A', alice);
    expect(badPath.status).toBe(400);
    expect(badPath.json.error.code).toBe('BAD_REQUEST');
    const noRoute = await http(server.url, 'GET', '/v2/desktops', alice);
    expect(noRoute.status).toBe(404);
    expect(noRoute.json.error.code).toBe('NOT_FOUND');
    const list = await http(server.url, 'GET', '/v1/desktops', bob);
    expect(list.json.desktops).toEqual([]);
    const blocks = await http(server.url, 'POST', `/v1/checkouts/${checkoutId}/blocks/get`, bob, JSON.stringify({ ids: [] }), { 'x-carryon-device': device });
    expect(blocks.status).toBe(404);
    expect(blocks.json.error.code).toBe('CHECKOUT_NOT_FOUND');
  });

  it('login with a wrong token fails with exit 3 and saves nothing', async () => {
    const c = new Laptop(path.join(dir, 'laptop-c'));
    const r = await c.cli(['login', server.url, '--token', 'co_wrong', '--json']);
    expect(r.code).toBe(3);
    expect(r.json.error.code).toBe('UNAUTHORIZED');
    const co = await c.cli(['checkout', 'alice-desk', '--json']);
    expect(co.code).toBe(3);
    expect(co.json.error.code).toBe('NOT_LOGGED_IN');
  });

  it('an unknown server address is SERVER_UNREACHABLE, exit 7', async () => {
    const c = new Laptop(path.join(dir, 'laptop-d'));
    const r = await c.cli(['login', 'http://127.0.0.1:9', '--token', alice, '--json']);
    expect(r.code).toBe(7);
    expect(r.json.error.code).toBe('SERVER_UNREACHABLE');
  });

  it('an unknown desktop: exit 4, nothing written on the laptop', async () => {
    const r = await a.cli(['checkout', 'no-such-desk', '--json']);
    expect(r.code).toBe(4);
    expect(r.json.error.code).toBe('DESKTOP_NOT_FOUND');
    expect(existsSync(path.join(a.home, 'desktops', 'no-such-desk'))).toBe(false);
    const bad = await a.cli(['checkout', '../etc', '--json']);
    expect(bad.code).toBe(2);
    expect(bad.json.error.code).toBe('INVALID_ARGUMENT');
  });

  it('a second check-out from another laptop names the holder and since when', async () => {
    const first = await a.cli(['checkout', 'alice-desk', '--json']);
    expect(first.code, first.stderr).toBe(0);
    const before = sha256File(first.json.disk);
    const second = await b.cli(['checkout', 'alice-desk', '--json']);
    expect(second.code).toBe(5);
    expect(second.json.error.code).toBe('CHECKOUT_CONFLICT');
    expect(second.json.error.message).toMatch(/checked out by alice on device \S+ since \d{4}-\d\d-\d\dT/);
    expect(second.json.error.data.holder.user).toBe('alice');
    expect(existsSync(path.join(b.home, 'desktops', 'alice-desk'))).toBe(false);
    expect(sha256File(first.json.disk)).toBe(before);
  });

  it('refuses to overwrite a file that is not its own', async () => {
    const target = path.join(dir, 'precious.raw');
    writeFileSync(target, 'my thesis');
    const r = await b.cli(['checkout', 'alice-corrupt', '--to', target, '--json']);
    expect(r.code).toBe(8);
    expect(r.json.error.code).toBe('LOCAL_PATH_CONFLICT');
    expect(sha256File(target)).toBe(sha256(Buffer.from('my thesis')).toString('hex'));
  });

  const upload = (body: Buffer, headers: Record<string, string> = {}) =>
    http(server.url, 'PUT', `/v1/checkouts/${checkoutId}/blocks`, alice, body, { 'content-encoding': 'zstd', 'x-carryon-device': device, ...headers });

  it('rejects a truncated tar, a corrupt zstd stream and a bad entry name', async () => {
    const before = await state();
    const plain = randomBytes(65536);
    const good = await zstdTar([{ name: `b/${blockId(plain)}`, data: plain }]);
    const truncated = await upload(good.subarray(0, Math.floor(good.length / 2)));
    expect(truncated.status).toBe(400);
    expect(truncated.json.error.code).toBe('TAR_INVALID');
    const garbage = await upload(randomBytes(5000));
    expect(garbage.status).toBe(400);
    expect(garbage.json.error.code).toBe('TAR_INVALID');
    const name = await upload(await zstdTar([{ name: '../../etc/passwd', data: plain }]));
    expect(name.status).toBe(400);
    expect(name.json.error.code).toBe('TAR_INVALID');
    const plainTar = await upload(Buffer.from('not a tar at all'.repeat(64)), { 'content-encoding': 'identity' });
    expect(plainTar.status).toBe(400);
    expect(plainTar.json.error.code).toBe('TAR_INVALID');
    expect(await state()).toEqual(before);
  });

  it('rejects a block whose bytes do not match its name, and a patch on a foreign base', async () => {
    const before = await state();
    const plain = randomBytes(65536);
    const lie = await upload(await zstdTar([{ name: `b/${blockId(randomBytes(16))}`, data: plain }]));
    expect(lie.status).toBe(422);
    expect(lie.json.error.code).toBe('BLOCK_CORRUPT');
    const foreignBase = blockId(randomBytes(64));
    const patch = encodeBlockPatch(Buffer.alloc(0), plain);
    const p = await upload(await zstdTar([{ name: `p/${blockId(plain)}/${foreignBase}`, data: patch }]));
    expect(p.status).toBe(404);
    expect(p.json.error.code).toBe('BLOCK_NOT_FOUND');
    const big = Buffer.alloc(65536 * 2, 7);
    const tooBig = await upload(await zstdTar([{ name: `b/${blockId(big)}`, data: big }]));
    expect(tooBig.status).toBe(422);
    expect(tooBig.json.error.code).toBe('BLOCK_CORRUPT');
    const otherDevice = await upload(await zstdTar([]), { 'x-carryon-device': 'someone-else-01' });
    expect(otherDevice.status).toBe(403);
    expect(otherDevice.json.error.code).toBe('FORBIDDEN');
    expect(await state()).toEqual(before);
    expect((await http(server.url, 'GET', '/v1/whoami', alice)).status).toBe(200);
  });

  it('refuses a block sent as a bad zstd frame (a bomb, a truncated or padded frame, one of other bytes), storing nothing and serving on', async () => {
    const before = await state();
    const plain = Buffer.from('a block of text, compressible. '.repeat(2200)).subarray(0, 65536);
    const id = blockId(plain);
    const frame = encodeBlock(plain, 6);
    const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
    for (const data of [
      encodeBlock(Buffer.alloc(64 * 1024 * 1024), 1), // 64 MiB of zeros in a few KB: refused by its header
      frame.subarray(0, frame.length - 5),
      Buffer.concat([frame, skippable]),
      encodeBlock(randomBytes(65536)),
    ]) {
      const r = await upload(await zstdTar([{ name: `z/${id}`, data }]));
      expect(r.status, r.body.toString()).toBe(422);
      expect(r.json.error.code).toBe('BLOCK_CORRUPT');
    }
    expect(await state()).toEqual(before);
    expect((await http(server.url, 'GET', '/v1/whoami', alice)).status).toBe(200);
  });

  const commit = (body: Buffer) =>
    http(server.url, 'POST', `/v1/checkouts/${checkoutId}/commit`, alice, body, { 'x-carryon-device': device, 'content-type': 'application/vnd.carryon.manifest' });

  it('rejects manifests that are malformed, inconsistent or name missing blocks', async () => {
    const before = await state();
    const garbage = await commit(randomBytes(200));
    expect(garbage.status).toBe(422);
    expect(garbage.json.error.code).toBe('MANIFEST_INVALID');
    // size field says one block more than the table holds (checksum recomputed so only the count is wrong)
    const wrongSize = Buffer.from(baseManifest);
    wrongSize.writeBigUInt64LE(wrongSize.readBigUInt64LE(16) + 65536n, 16);
    sha256(wrongSize.subarray(0, wrongSize.length - 32)).copy(wrongSize, wrongSize.length - 32);
    const ws = await commit(wrongSize);
    expect(ws.status).toBe(422);
    expect(ws.json.error.code).toBe('MANIFEST_INVALID');
    expect(ws.json.error.message).toMatch(/block count/);
    const wrongCount = Buffer.from(baseManifest);
    wrongCount.writeBigUInt64LE(wrongCount.readBigUInt64LE(24) - 1n, 24);
    sha256(wrongCount.subarray(0, wrongCount.length - 32)).copy(wrongCount, wrongCount.length - 32);
    expect((await commit(wrongCount)).json.error.code).toBe('MANIFEST_INVALID');
    const flipped = Buffer.from(baseManifest);
    flipped[40]! ^= 1;
    expect((await commit(flipped)).json.error.code).toBe('MANIFEST_INVALID');
    const m = new DiskManifest(16 * 1024 * 1024, 65536);
    m.setId(3, blockId(randomBytes(100)));
    const missing = await commit(encodeManifest(m));
    expect(missing.status).toBe(409);
    expect(missing.json.error.code).toBe('BLOCKS_MISSING');
    expect(missing.json.error.data.count).toBe(1);
    const otherBs = await commit(encodeManifest(new DiskManifest(16 * 1024 * 1024, 4096)));
    expect(otherBs.json.error.code).toBe('MANIFEST_INVALID');
    expect(await state()).toEqual(before);
  });

  it('a block corrupted in the server store is never written to a laptop disk', async () => {
    const storeDir = path.join(server.data, 'store', 'blocks');
    const shard = readdirSync(storeDir)[0]!;
    const file = path.join(storeDir, shard, readdirSync(path.join(storeDir, shard))[0]!);
    const original = readFileSync(file);
    writeFileSync(file, encodeBlock(randomBytes(65536)));
    try {
      const c = new Laptop(path.join(dir, 'laptop-e'));
      expect((await c.cli(['login', server.url, '--token', alice])).code).toBe(0);
      const r = await c.cli(['checkout', 'alice-corrupt', '--json']);
      expect(r.code).toBe(6);
      expect(r.json.error.code).toBe('BLOCK_CORRUPT');
      expect(existsSync(path.join(c.home, 'desktops', 'alice-corrupt', 'disk.raw'))).toBe(false);
    } finally {
      writeFileSync(file, original);
    }
    expect((await http(server.url, 'GET', '/v1/whoami', alice)).status).toBe(200);
  });

  it('discard asks, and without --yes on a non-terminal does nothing', async () => {
    const disk = path.join(a.home, 'desktops', 'alice-desk', 'disk.raw');
    const before = sha256File(disk);
    const no = await a.cli(['discard', 'alice-desk', '--json']);
    expect(no.code).toBe(10);
    expect(no.json.error.code).toBe('ABORTED');
    expect(sha256File(disk)).toBe(before);
    const yes = await a.cli(['discard', 'alice-desk', '--yes', '--json']);
    expect(yes.code, yes.stderr).toBe(0);
    expect(existsSync(disk)).toBe(false);
    // the desktop is free again
    const r = await b.cli(['checkout', 'alice-desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(sha256File(r.json.disk)).toBe(sha256File(image));
  });

  it('a check-in while the server is down fails with exit 7 and keeps the laptop copy', async () => {
    const disk = path.join(b.home, 'desktops', 'alice-desk', 'disk.raw');
    qemuWrite(disk, [[0x42, 2 << 20, 8192]]);
    const before = sha256File(disk);
    const port = server.port();
    await server.stop();
    const r = await b.cli(['checkin', 'alice-desk', '--json']);
    expect(r.code).toBe(7);
    expect(r.json.error.code).toBe('SERVER_UNREACHABLE');
    expect(sha256File(disk)).toBe(before);
    await server.start({}, port);
    const again = await b.cli(['checkin', 'alice-desk', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.version).toBe(2);
  });

  it('a disk file deleted behind carryon\'s back: the check-in says what happened and what to do', async () => {
    const c = new Laptop(path.join(dir, 'laptop-f'));
    expect((await c.cli(['login', server.url, '--token', alice])).code).toBe(0);
    const co = await c.cli(['checkout', 'alice-gone', '--json']);
    expect(co.code, co.stderr).toBe(0);
    rmSync(co.json.disk);
    const r = await c.cli(['checkin', 'alice-gone', '--json']);
    expect(r.code).toBe(8);
    expect(r.json.error.code).toBe('NOT_CHECKED_OUT');
    expect(r.json.error.message).toMatch(/is gone from .*carryon discard alice-gone/);
    expect((await c.cli(['discard', 'alice-gone', '--yes'])).code).toBe(0);
  });

  it('the server read nothing wrong into its store', async () => {
    const s = (await server.admin(['status'])).json;
    expect(s.desktops.find((d: any) => d.name === 'alice-raw').version).toBe(1);
  });
});
