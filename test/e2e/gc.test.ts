// Garbage collection on the embedded default, with the real CLI: a deleted desktop's blocks leave the
// store (the bytes of DATA/store drop by exactly what gc reports), a dry run changes nothing, and every
// desktop still checks out byte-identical afterwards.
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, makeExt4Image, qemuWrite, removeTmp, sha256File, TestServer, tmpDir } from './harness.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Sum of the file sizes under a folder (the block store's bytes). */
function bytesUnder(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) n += statSync(path.join(e.parentPath, e.name)).size;
  }
  return n;
}

describe('carryon-server gc', () => {
  const dir = tmpDir('gc');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const laptop = new Laptop(path.join(dir, 'laptop'));
  const fresh = new Laptop(path.join(dir, 'fresh'));
  const store = path.join(dir, 'data', 'store');
  const checkedIn: Record<string, string> = {};

  beforeAll(async () => {
    makeExt4Image(image, 24, 8);
    await server.init();
    const token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['keep', 'drop']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token', token])).code).toBe(0);
    expect((await fresh.cli(['login', server.url, '--token', token])).code).toBe(0);
    // Each desktop gets data of its own (a pattern fill: one distinct block per write, deduplicated).
    for (const [d, seed] of [['keep', 0x21], ['drop', 0x77]] as const) {
      const r = await laptop.cli(['checkout', d, '--json']);
      expect(r.code, r.stderr).toBe(0);
      qemuWrite(r.json.disk, [[seed, 2 << 20, 1 << 20], [seed + 1, 12 << 20, 512 * 1024]]);
      const c = await laptop.cli(['checkin', d, '--json']);
      expect(c.code, c.stderr).toBe(0);
      checkedIn[d] = sha256File(r.json.disk);
    }
  }, 180_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('nothing is collected while every block is named', async () => {
    const before = bytesUnder(store);
    const r = await server.admin(['gc', '--grace', '0s']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.condemned.blocks).toBe(0);
    expect(r.json.swept).toEqual({ blocks: 0, bytes: 0, orphans: 0, orphanBytes: 0 });
    expect(bytesUnder(store)).toBe(before);
  });

  it('a deleted desktop: the dry run reports, the run frees exactly that, and says so', async () => {
    expect((await server.admin(['admin', 'delete-desktop', 'drop', '--yes'])).code).toBe(0);
    const before = bytesUnder(store);
    const dry = await server.admin(['gc', '--dry-run', '--grace', '0s']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.json.condemned.blocks).toBeGreaterThanOrEqual(2); // the blocks only its own writes made
    expect(dry.json.condemned.bytes).toBeGreaterThan(0);
    expect(bytesUnder(store)).toBe(before);
    // With the default grace (6 h), blocks this young are spared.
    const young = await server.admin(['gc']);
    expect(young.json.condemned.blocks).toBe(0);
    expect(young.json.spared.blocks).toBe(dry.json.condemned.blocks);
    const r = await server.admin(['gc', '--grace', '0s']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.condemned).toEqual(dry.json.condemned);
    expect(r.json.swept.blocks).toBe(dry.json.condemned.blocks);
    expect(r.json.swept.bytes).toBe(dry.json.condemned.bytes);
    expect(before - bytesUnder(store)).toBe(r.json.swept.bytes + r.json.swept.orphanBytes);
    expect(r.json.storedBytesBefore - r.json.storedBytesAfter).toBe(r.json.condemned.bytes);
    const again = await server.admin(['gc', '--grace', '0s']);
    expect(again.json.condemned.blocks).toBe(0);
    const audit = (await server.admin(['admin', 'audit', '--limit', '100'])).json.audit as Array<{ action: string }>;
    expect(audit.filter((a) => a.action === 'gc.run')).toHaveLength(4);
  });

  it('the kept desktop and the image still check out byte-identical on a fresh laptop', async () => {
    const r = await fresh.cli(['checkout', 'keep', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(sha256File(r.json.disk)).toBe(checkedIn.keep);
    expect((await server.admin(['desktop', 'create', 'again', '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    const g = await fresh.cli(['checkout', 'again', '--json']);
    expect(g.code, g.stderr).toBe(0);
    expect(sha256File(g.json.disk)).toBe(sha256File(image));
  });

  it('a collection between a check-in\'s upload and its commit: the laptop sends the removed blocks again and the check-in lands whole', async () => {
    expect((await fresh.cli(['checkin', 'keep', '--json'])).code).toBe(0); // the previous test's copy, unchanged: frees the desktop
    const co = await laptop.cli(['checkout', 'keep', '--json']);
    expect(co.code, co.stderr).toBe(0);
    qemuWrite(co.json.disk, [[0x3c, 5 << 20, 256 * 1024], [0x3d, 7 << 20, 64 * 1024]]);
    const marker = path.join(dir, 'pause-commit');
    const checkin = laptop.cli(['checkin', 'keep', '--json'], { CARRYON_PAUSE_AT: `checkin-before-commit:${marker}` });
    while (!existsSync(marker)) await sleep(50);
    const g = await server.admin(['gc', '--grace', '0s']);
    expect(g.code, g.stderr).toBe(0);
    expect(g.json.swept.blocks).toBeGreaterThanOrEqual(2); // the blocks just uploaded, named by no version yet
    rmSync(marker);
    const r = await checkin;
    expect(r.code, r.stderr).toBe(0);
    const want = sha256File(co.json.disk);
    const f = await fresh.cli(['checkout', 'keep', '--json']);
    expect(f.code, f.stderr).toBe(0);
    expect(sha256File(f.json.disk)).toBe(want);
  });
});
