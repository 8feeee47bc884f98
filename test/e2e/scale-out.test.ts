// Two carryon-server instances on one PostgreSQL and one Ceph RGW, behind HAProxy (scripts/scale-out.sh),
// driven by the real CLI as separate processes: laptops racing for one desktop through both instances,
// check-ins whose upload and commit go through different instances, a lease code and a forced check-in
// reported to both at once, and an audit log that holds exactly what the test did. Every rule checked
// here is enforced by the database, never by an instance's memory (server/README.md).
import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { chmodSync, cpSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../lib/pg-cluster.js';
import { Laptop, makeExt4Image, qemuWrite, removeTmp, requireTool, ROOT, run, sha256File, tmpDir, type RunResult } from './harness.js';
import { mulberry32 } from '../../scripts/lib/prng.js';

const execFileP = promisify(execFile);
const SCALE_OUT = path.join(ROOT, 'scripts/scale-out.sh');
const SERVER_BIN = path.join(ROOT, 'bin/carryon-server.js');
const MiB = 1024 * 1024;

interface Setup {
  url: string;
  instances: Array<{ name: string; url: string; data: string; log: string }>;
  meta: string;
  haproxy: { log: string };
}

describe('scale-out: two instances, PostgreSQL, Ceph RGW, HAProxy', () => {
  const dir = tmpDir('scale-out');
  const setupDir = path.join(dir, 'setup');
  const image = path.join(dir, 'golden.raw');
  let so: Setup;
  let token = '';
  let db: pg.Client;
  const rand = mulberry32(20261202); // the same writes every run
  /** Audit rows the test caused, by action: compared with the database at the end. */
  const did = new Map<string, number>();
  const count = (action: string, n = 1): void => void did.set(action, (did.get(action) ?? 0) + n);
  /** The last image checked in per desktop (sha256) and the number of check-ins that made a version. */
  const last = new Map<string, { sha: string; version: number }>();

  /** carryon-server on instance N's data folder (0 or 1), --json. */
  const admin = (args: string[], n = 0): Promise<RunResult> => run(SERVER_BIN, [...args, '--data', so.instances[n]!.data, '--json']);
  const laptop = (name: string): Laptop => new Laptop(path.join(dir, name));

  async function login(l: Laptop, url: string): Promise<void> {
    const r = await l.cli(['login', url, '--token', token, '--device-name', path.basename(l.home), '--json']);
    expect(r.code, r.stderr).toBe(0);
    count('device.register');
  }

  /** Point a laptop home at another URL, as if that address were its server (no new device). */
  function pointAt(l: Laptop, url: string): void {
    const s = new Database(path.join(l.home, 'state.db'));
    s.prepare("UPDATE config SET value = ? WHERE key = 'url'").run(url);
    s.close();
  }

  /** A copy of a laptop home (same device, same checkout, its own disk file), talking to `url`. */
  function cloneHome(from: Laptop, name: string, url: string): Laptop {
    const to = laptop(name);
    cpSync(from.home, to.home, { recursive: true });
    const s = new Database(path.join(to.home, 'state.db'));
    s.prepare("UPDATE config SET value = ? WHERE key = 'url'").run(url);
    s.prepare('UPDATE checkouts SET disk_path = replace(disk_path, ?, ?)').run(from.home, to.home);
    s.prepare('UPDATE personas SET dir = replace(dir, ?, ?)').run(from.home, to.home);
    s.close();
    return to;
  }

  async function checkout(l: Laptop, desktop: string): Promise<any> {
    const r = await l.cli(['checkout', desktop, '--json']);
    expect(r.code, r.stderr).toBe(0);
    count('checkout.start');
    return r.json;
  }

  /** A VM's writes: a few seeded extents, 4 KiB aligned, 64 KiB to 1 MiB each. */
  function vmWrites(disk: string): void {
    const size = 24 * MiB;
    const ops: Array<[number, number, number]> = [];
    for (let i = 0; i < 3; i++) {
      const len = (16 + Math.floor(rand() * 240)) * 4096;
      ops.push([1 + Math.floor(rand() * 254), Math.floor(rand() * ((size - len) / 4096)) * 4096, len]);
    }
    qemuWrite(disk, ops);
  }

  /** Check in and record what went up: the version must be the previous one plus one. */
  async function checkin(l: Laptop, desktop: string, disk: string, env: Record<string, string> = {}): Promise<any> {
    const r = await l.cli(['checkin', desktop, '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const before = last.get(desktop)?.version ?? 1;
    expect(r.json.previousVersion).toBe(before);
    expect(r.json.version).toBe(before + 1);
    count('checkout.commit');
    last.set(desktop, { sha: sha256File(disk), version: r.json.version });
    return r.json;
  }

  async function checkoutIdOf(desktop: string): Promise<string> {
    const list = (await admin(['admin', 'checkouts'])).json.checkouts as any[];
    return list.find((c) => c.desktop === desktop).checkoutId;
  }

  /** Request lines of an instance's JSON log. */
  function requestsOf(n: number): Array<{ method: string; path: string; status: number }> {
    return readFileSync(so.instances[n]!.log, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((e) => e.method);
  }

  beforeAll(async () => {
    requireTool('qemu-io'); // mke2fs by makeExt4Image; HAProxy, PostgreSQL and Ceph by scale-out.sh (naming the apt-get line)
    makeExt4Image(image, 24, 8);
    const port = await freePort();
    chmodSync(dir, 0o711); // PostgreSQL runs as the postgres user: it must reach setup/pg
    try {
      await execFileP('bash', [SCALE_OUT, 'start', setupDir, String(port)], { timeout: 170_000 });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; message: string };
      throw new Error(`scripts/scale-out.sh start failed: ${e.stderr || e.message}\n${e.stdout ?? ''}`);
    }
    so = JSON.parse(readFileSync(path.join(setupDir, 'scale-out.json'), 'utf8')) as Setup;
    db = new pg.Client({ connectionString: so.meta });
    await db.connect();
    const u = await admin(['user', 'add', 'alice']);
    expect(u.code, u.stderr).toBe(0);
    token = u.json.token;
    count('user.add');
    // Published through instance 2's folder: both folders are views of the same metadata and store.
    const pub = await admin(['image', 'publish', 'golden', image], 1);
    expect(pub.code, pub.stderr).toBe(0);
    count('image.publish');
    for (const d of ['race', 'hop', 'pair-a', 'pair-b', 'lease', 'forced', 'forced-2', 'doomed']) {
      const c = await admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden', '--encryption', 'off'], d.length % 2);
      expect(c.code, c.stderr).toBe(0);
      count('desktop.create');
    }
  }, 180_000);

  afterAll(async () => {
    await db?.end().catch(() => undefined);
    await execFileP('bash', [SCALE_OUT, 'stop', setupDir], { timeout: 60_000 }).catch(() => undefined);
    removeTmp(dir);
  }, 90_000);

  it('both instances share one escrow key pair, and HAProxy sees both up', async () => {
    const pub = so.instances.map((i) => readFileSync(path.join(i.data, 'escrow/escrow.pub'), 'utf8'));
    expect(pub[1]).toBe(pub[0]);
    const status = await execFileP('bash', [SCALE_OUT, 'status', setupDir]);
    expect(status.stdout).toMatch(/haproxy sees instance1: UP/);
    expect(status.stdout).toMatch(/haproxy sees instance2: UP/);
    // A second start changes nothing and says so.
    const again = await execFileP('bash', [SCALE_OUT, 'start', setupDir], { timeout: 60_000 });
    expect(again.stdout).toMatch(/instance1 .* already running/);
    expect(again.stdout).toMatch(/haproxy .* already running/);
  });

  it('one checkout per desktop: six laptops race through both instances, one wins, five get CHECKOUT_CONFLICT (exit 5)', async () => {
    const racers = Array.from({ length: 6 }, (_, i) => laptop(`racer-${i}`));
    await Promise.all(racers.map((l, i) => login(l, so.instances[i % 2]!.url)));
    for (let round = 0; round < 3; round++) {
      const results = await Promise.all(racers.map((l) => l.cli(['checkout', 'race', '--json'])));
      const won = results.filter((r) => r.code === 0);
      const lost = results.filter((r) => r.code !== 0);
      expect(won, results.map((r) => r.stderr).join('\n')).toHaveLength(1);
      count('checkout.start');
      for (const r of lost) {
        expect(r.code, r.stderr).toBe(5);
        expect(r.json.error.code).toBe('CHECKOUT_CONFLICT');
      }
      expect(((await admin(['admin', 'checkouts'], round % 2)).json.checkouts as any[]).filter((c) => c.desktop === 'race')).toHaveLength(1);
      // The winner lets go; the next round races again.
      const winner = racers[results.indexOf(won[0]!)]!;
      const d = await winner.cli(['discard', 'race', '--yes', '--json']);
      expect(d.code, d.stderr).toBe(0);
      count('checkout.discard');
    }
    // Both instances answered check-outs.
    for (const n of [0, 1]) expect(requestsOf(n).some((e) => e.method === 'POST' && e.path === '/v1/desktops/race/checkouts')).toBe(true);
  }, 120_000);

  it('a check-in uploaded through instance 1 and committed through instance 2 lands once, as version N+1', async () => {
    const l = laptop('hopper');
    await login(l, so.instances[0]!.url);
    const co = await checkout(l, 'hop');
    vmWrites(co.disk);
    const id = await checkoutIdOf('hop');
    // Killed right before the commit: the blocks are on the server (through instance 1), nothing is committed.
    const crashed = await l.cli(['checkin', 'hop', '--json'], { CARRYON_CRASH_AT: 'checkin-before-commit:1' });
    expect(crashed.signal).toBe('SIGKILL');
    expect((await admin(['admin', 'checkouts'], 1)).json.checkouts.some((c: any) => c.desktop === 'hop')).toBe(true);
    pointAt(l, so.instances[1]!.url);
    const r = await checkin(l, 'hop', co.disk);
    expect(r.blocksUploaded).toBe(0); // instance 2 found every block instance 1 took in
    const put = (n: number) => requestsOf(n).filter((e) => e.method === 'PUT' && e.path === `/v1/checkouts/${id}/blocks` && e.status === 200);
    const commit = (n: number) => requestsOf(n).filter((e) => e.method === 'POST' && e.path === `/v1/checkouts/${id}/commit` && e.status === 200);
    expect(put(0).length).toBeGreaterThan(0);
    expect(put(1)).toHaveLength(0);
    expect(commit(1)).toHaveLength(1);
    expect(commit(0)).toHaveLength(0);
  }, 60_000);

  it('check-ins through HAProxy, round-robin per request: upload and commit on different instances, many times', async () => {
    const l = laptop('hopper');
    pointAt(l, so.url);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const co = await checkout(l, 'hop');
      ids.push(await checkoutIdOf('hop'));
      vmWrites(co.disk);
      await checkin(l, 'hop', co.disk);
    }
    // HAProxy's log names the instance of each request.
    const lines = readFileSync(so.haproxy.log, 'utf8').split('\n');
    const via = (id: string, what: RegExp) => lines.filter((x) => x.includes(`/v1/checkouts/${id}/`) && what.test(x)).map((x) => /carryon\/(instance\d)/.exec(x)?.[1]);
    let crossed = 0;
    for (const id of ids) {
      const uploads = via(id, /"PUT \/v1\/checkouts\/[^/]+\/blocks /);
      const commits = via(id, /"POST \/v1\/checkouts\/[^/]+\/commit /);
      expect(uploads.length).toBeGreaterThan(0);
      expect(commits).toHaveLength(1);
      if (uploads.some((u) => u !== commits[0])) crossed++;
    }
    expect(crossed).toBeGreaterThan(0);
  }, 90_000);

  it('two laptops check in two desktops at once, one through each instance, while garbage collection runs from both instances\' folders', async () => {
    const pa = laptop('pair-a');
    const pb = laptop('pair-b');
    await login(pa, so.instances[0]!.url);
    await login(pb, so.instances[1]!.url);
    // A desktop with blocks of its own, deleted: what the collector finds to remove while the others check in.
    const doomer = laptop('doomer');
    await login(doomer, so.url);
    const dc = await checkout(doomer, 'doomed');
    vmWrites(dc.disk);
    await checkin(doomer, 'doomed', dc.disk);
    expect((await admin(['admin', 'delete-desktop', 'doomed', '--yes'], 1)).code).toBe(0);
    count('desktop.delete');
    await new Promise((r) => setTimeout(r, 1100)); // past the collector's 1 s grace
    const cycle = async (l: Laptop, desktop: string): Promise<void> => {
      for (let i = 0; i < 3; i++) {
        const co = await checkout(l, desktop);
        vmWrites(co.disk);
        await checkin(l, desktop, co.disk);
      }
    };
    // A collector with a 1 s grace: blocks uploaded and not yet committed are fair game; the check-ins must
    // still land whole (the laptop re-sends what a collection removed), checked at the end on a fresh laptop.
    let stop = false;
    let runs = 0;
    let swept = 0;
    const collector = (async () => {
      for (let n = 0; !stop; n++) {
        const g = await admin(['gc', '--grace', '1s'], n % 2);
        expect(g.code === 0 || g.json?.error?.code === 'SERVER_BUSY', g.stderr).toBe(true);
        if (g.code === 0) {
          runs++;
          swept += g.json.swept.blocks as number;
          count('gc.run');
        }
        await new Promise((r) => setTimeout(r, 1500));
      }
    })();
    try {
      await Promise.all([cycle(pa, 'pair-a'), cycle(pb, 'pair-b')]);
    } finally {
      stop = true;
      await collector;
    }
    expect(runs).toBeGreaterThan(0);
    expect(swept).toBeGreaterThan(0); // the deleted desktop's own blocks
    console.log(`garbage collection during the check-ins: ${runs} runs, ${swept} blocks swept`);
  }, 150_000);

  it('a lease code works once, though the laptop reports it to instance 1 and instance 2 at the same time', async () => {
    const l = laptop('leaser');
    await login(l, so.url);
    await checkout(l, 'lease');
    const id = await checkoutIdOf('lease');
    const code = await admin(['admin', 'lease-code', id, '--days', '3']);
    expect(code.code, code.stderr).toBe(0);
    count('lease.code');
    // Offline: the code is checked on the laptop alone.
    pointAt(l, `http://127.0.0.1:${await freePort()}`);
    const used = await l.cli(['renew', 'lease', '--code', code.json.code, '--json']);
    expect(used.code, used.stderr).toBe(0);
    expect(used.json.leaseExpiresAt).toBe(code.json.leaseExpiresAt);
    // Back online: four copies of this laptop report it at once, two to each instance.
    const copies = [0, 1, 2, 3].map((i) => cloneHome(l, `leaser-${i}`, so.instances[i % 2]!.url));
    const renewals = await Promise.all(copies.map((c) => c.cli(['renew', 'lease', '--json'])));
    for (const r of renewals) expect(r.code, r.stderr).toBe(0);
    count('lease.code-used');
    const rows = (await db.query("SELECT detail FROM audit WHERE action = 'lease.code-used' AND target = 'desktop:lease'")).rows;
    expect(rows).toHaveLength(1);
    expect((await db.query('SELECT used_at FROM lease_codes WHERE checkout_id = $1', [id])).rows.map((r) => r.used_at !== null)).toEqual([true]);
    const held = ((await admin(['admin', 'checkouts'], 1)).json.checkouts as any[]).find((c) => c.desktop === 'lease');
    expect(Date.parse(held.leaseExpiresAt)).toBeGreaterThanOrEqual(Date.parse(code.json.leaseExpiresAt));
  }, 60_000);

  /** The audit rows of a desktop's forced check-in, by state. */
  async function requestRows(desktop: string): Promise<Record<string, number>> {
    const rows = (await db.query("SELECT action, COUNT(*)::int AS n FROM audit WHERE target = $1 AND action LIKE 'checkin.%' GROUP BY action", [`desktop:${desktop}`])).rows;
    return Object.fromEntries(rows.map((r) => [r.action, r.n]));
  }

  /** A laptop holding `desktop` with the VM's writes on its disk, and an admin's forced check-in queued through instance 2's folder. */
  async function forcedSetup(name: string, desktop: string): Promise<{ l: Laptop; disk: string }> {
    const l = laptop(name);
    await login(l, so.instances[0]!.url);
    const co = await checkout(l, desktop);
    vmWrites(co.disk);
    const req = await admin(['admin', 'checkin', await checkoutIdOf(desktop)], 1);
    expect(req.code, req.stderr).toBe(0);
    expect(req.json.state).toBe('requested');
    count('checkin.request');
    return { l, disk: co.disk };
  }

  async function requestOf(desktop: string): Promise<any> {
    const requests = ((await admin(['admin', 'requests'])).json.requests as any[]).filter((q) => q.desktop === desktop);
    expect(requests).toHaveLength(1);
    return requests[0];
  }

  it('a forced check-in moves once: two agents (copies of one laptop) carry it out through instance 1 and instance 2 at once', async () => {
    const { l, disk } = await forcedSetup('forced', 'forced');
    // The same laptop twice over (same device, same disk bytes), each copy's agent talking to one instance.
    const other = cloneHome(l, 'forced-copy', so.instances[1]!.url);
    const runs = await Promise.all([l.cli(['agent', '--once', '--json']), other.cli(['agent', '--once', '--json'])]);
    for (const r of runs) expect(r.code, r.stderr).toBe(0);
    const events = runs.flatMap((r) => r.stdout.trim().split('\n').map((x) => JSON.parse(x)));
    // One or both carried it out; a second commit of the same manifest answers as the first.
    const done = events.filter((e) => e.event === 'checkin-done');
    expect(done.length).toBeGreaterThan(0);
    for (const e of done) expect(e.version).toBe(2);
    // A copy that was still uploading when the other's commit ended the checkout is told so; nothing else goes wrong.
    for (const e of events.filter((x) => x.event === 'checkin-error')) expect(e.error.code).toBe('CHECKOUT_NOT_FOUND');
    count('checkout.commit');
    last.set('forced', { sha: sha256File(disk), version: 2 });
    expect(await requestOf('forced')).toMatchObject({ state: 'done', detail: { version: 2 } });
    expect(await requestRows('forced')).toEqual({ 'checkin.request': 1, 'checkin.in-progress': 1, 'checkin.done': 1 });
    count('checkin.in-progress');
    count('checkin.done');
  }, 90_000);

  it('a forced check-in moves once when the user checks in by hand (instance 2) while the agent of a copy acts on it (instance 1)', async () => {
    const { l, disk } = await forcedSetup('by-hand', 'forced-2');
    const copy = cloneHome(l, 'by-hand-copy', so.instances[0]!.url);
    pointAt(l, so.instances[1]!.url);
    const [hand, agent] = await Promise.all([l.cli(['checkin', 'forced-2', '--json']), copy.cli(['agent', '--once', '--json'])]);
    // The hand check-in lands (or finds the commit landed), unless the agent's commit ended the checkout while it uploaded.
    if (hand.code === 0) expect(hand.json.version).toBe(2);
    else expect(hand.json.error.code, hand.stderr).toBe('CHECKOUT_NOT_FOUND');
    expect(agent.code, agent.stderr).toBe(0);
    count('checkout.commit');
    last.set('forced-2', { sha: sha256File(disk), version: 2 });
    expect(await requestOf('forced-2')).toMatchObject({ state: 'done', detail: { version: 2 } });
    // The agent may have reported "in progress" before the commit landed, or found the request done already.
    const rows = await requestRows('forced-2');
    expect(rows).toMatchObject({ 'checkin.request': 1, 'checkin.done': 1 });
    expect(rows['checkin.in-progress'] ?? 0).toBeLessThanOrEqual(1);
    count('checkin.in-progress', rows['checkin.in-progress'] ?? 0);
    count('checkin.done');
  }, 90_000);

  it('every desktop checks out on a fresh laptop byte-identical to its last check-in, at version N+1', async () => {
    const fresh = laptop('fresh');
    await login(fresh, so.url);
    const imageSha = sha256File(image);
    for (const desktop of ['race', 'hop', 'pair-a', 'pair-b', 'forced', 'forced-2']) {
      const co = await checkout(fresh, desktop);
      const want = last.get(desktop) ?? { sha: imageSha, version: 1 };
      expect(co.version, desktop).toBe(want.version);
      expect(sha256File(co.disk), desktop).toBe(want.sha);
      const v = (await db.query('SELECT MAX(dv.version)::int AS v, COUNT(*)::int AS n FROM desktop_versions dv JOIN desktops d ON d.id = dv.desktop_id WHERE d.name = $1', [desktop])).rows[0];
      expect(v, desktop).toEqual({ v: want.version, n: want.version });
    }
    expect(last.get('hop')!.version).toBe(7); // one crossed check-in, five through HAProxy
  }, 90_000);

  it('the audit log holds exactly the rows for what the test did', async () => {
    const rows = (await db.query('SELECT action, COUNT(*)::int AS n FROM audit GROUP BY action ORDER BY action')).rows as Array<{ action: string; n: number }>;
    const got = Object.fromEntries(rows.map((r) => [r.action, r.n]));
    const want = Object.fromEntries([...did.entries()].sort());
    expect(got).toEqual(want);
    // The CLI's view is the same log, read through either folder.
    const viaCli = (await admin(['admin', 'audit', '--limit', '1000'], 1)).json.audit as any[];
    expect(viaCli).toHaveLength(rows.reduce((a, r) => a + r.n, 0));
  });
});
