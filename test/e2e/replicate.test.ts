// Replication while checked out, with real processes: a restore point taken while `carryon serve`
// exports the disk (a point-in-time snapshot), then the laptop is "lost": the admin rolls the checkout
// back to that restore point and another laptop gets exactly the disk as it was at that instant.
// Also: the agent's scheduled restore points, and a second restore point sending only what is new.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, makeExt4Image, qemuWrite, removeTmp, requireTool, sha256File, spawnCli, TestServer, tmpDir } from './harness.js';

const MiB = 1024 * 1024;

function qemuIo(target: string, cmds: string[]): number | null {
  return spawnSync('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), target]).status;
}

describe('replication: restore points while checked out', () => {
  const dir = tmpDir('replicate');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));

  beforeAll(async () => {
    requireTool('qemu-io');
    makeExt4Image(image, 32, 8);
    await server.init();
    const token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['rep', 'sched']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    for (const l of [a, b]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  it('a restore point taken while serving holds the disk as the VM saw it then; a lost laptop is rolled back to it', async () => {
    expect((await a.cli(['checkout', 'rep', '--json'])).code).toBe(0);
    const serve = spawnCli(a, ['serve', 'rep']);
    const uri = (await serve.next('listening')).uri as string;
    try {
      const first = [`write -P 0x61 ${MiB} ${256 * 1024}`, `write -P 0x62 ${9 * MiB + 100} 5000`, 'flush'];
      expect(qemuIo(uri, first)).toBe(0);
      const expected = path.join(dir, 'expected-rp1.raw');
      copyFileSync(image, expected);
      expect(qemuIo(expected, first)).toBe(0);

      // The persona goes with the restore point: a profile file written on the laptop.
      const profile = path.join(a.home, 'desktops', 'rep', 'persona', 'profile');
      mkdirSync(path.join(profile, 'Documents'), { recursive: true });
      writeFileSync(path.join(profile, 'Documents', 'trip-notes.txt'), 'flight LH 123, seat 14C\n');
      const r1 = await a.cli(['replicate', 'rep', '--json']);
      expect(r1.code, r1.stderr).toBe(0);
      expect(r1.json).toMatchObject({ via: 'serve-snapshot', blocksChanged: 5, withPersona: true });
      // Edited after the restore point: lost with the laptop.
      writeFileSync(path.join(profile, 'Documents', 'trip-notes.txt'), 'changed later\n');
      expect(r1.json.blocksUploaded).toBeGreaterThan(0);
      // Nothing new: the next restore point sends no block.
      const r2 = await a.cli(['replicate', 'rep', '--json']);
      expect(r2.json).toMatchObject({ blocksChanged: 5, blocksUploaded: 0 });

      // Written after the restore point: lost with the laptop.
      expect(qemuIo(uri, [`write -P 0x63 ${20 * MiB} ${MiB}`, 'flush'])).toBe(0);

      const points = (await server.admin(['admin', 'restore-points', 'rep'])).json.restorePoints as any[];
      expect(points.map((p) => p.id)).toEqual([r2.json.restorePoint, r1.json.restorePoint]);
      const held = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'rep');
      expect(held.lastRestorePoint.id).toBe(r2.json.restorePoint);

      // The laptop is lost: the admin rolls the checkout back to the first restore point.
      const rb = await server.admin(['admin', 'rollback', held.checkoutId, '--to-point', String(r1.json.restorePoint)]);
      expect(rb.code, rb.stderr).toBe(0);
      const onB = await b.cli(['checkout', 'rep', '--json']);
      expect(onB.code, onB.stderr).toBe(0);
      expect(onB.json.version).toBe(2);
      expect(sha256File(onB.json.disk)).toBe(sha256File(expected));
      expect(readFileSync(path.join(onB.json.persona.dir, 'profile', 'Documents', 'trip-notes.txt'), 'utf8')).toBe('flight LH 123, seat 14C\n');
      const audit = ((await server.admin(['admin', 'audit'])).json.audit as any[]).map((e) => e.action);
      expect(audit).toEqual(expect.arrayContaining(['restore-point.create', 'checkout.rollback', 'desktop.restore']));
    } finally {
      await serve.stop();
    }
  }, 90_000);

  it("the agent sends restore points on the desktop's schedule, reading the disk when no VM holds it", async () => {
    expect((await server.admin(['admin', 'replicate-policy', 'sched', '--minutes', '30'])).code).toBe(0);
    const co = await a.cli(['checkout', 'sched', '--json']);
    expect(co.code, co.stderr).toBe(0);
    qemuWrite(co.json.disk, [[0x71, 3 * MiB, 65536]]);
    const once = async (): Promise<any[]> => {
      const r = await a.cli(['agent', '--once', '--json']);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    };
    const ev = (await once()).filter((e) => e.event === 'restore-point');
    expect(ev).toHaveLength(1);
    expect(ev[0]).toMatchObject({ desktop: 'sched', via: 'disk', blocksChanged: 1 });
    // Not due again for 30 minutes.
    expect((await once()).filter((e) => e.event === 'restore-point')).toHaveLength(0);
    expect(((await server.admin(['admin', 'restore-points', 'sched'])).json.restorePoints as any[])).toHaveLength(1);
  }, 60_000);
});
