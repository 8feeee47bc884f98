// Fleet control with real processes: laptops as devices with their own tokens, offline leases
// granted by policy and enforced on the laptop (also against a clock turned back), renewal, the
// admin's view of checkouts, lease extension, token revocation, and the audit log.
import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, makeExt4Image, qemuWrite, removeTmp, spawnCli, TestServer, tmpDir } from './harness.js';

const DAY = 24 * 3600 * 1000;

describe('fleet: devices, leases, admin, audit', () => {
  const dir = tmpDir('fleet');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  let token = '';

  beforeAll(async () => {
    makeExt4Image(image, 16, 4);
    await server.init();
    token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['desk', 'short', 'forced', 'gone', 'kept', 'doomed', 'midway']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
  }, 120_000);

  afterAll(async () => {
    killSpawned(); // whatever a failed test left running
    await server.stop();
    removeTmp(dir);
  });

  it('login registers the laptop as a device with its own token (stored hashed); the admin sees it', async () => {
    const r = await a.cli(['login', server.url, '--token', token, '--device-name', 'alice-laptop', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const db = new Database(path.join(a.home, 'state.db'), { readonly: true });
    const kept = (db.prepare("SELECT value FROM config WHERE key = 'token'").get() as { value: string }).value;
    db.close();
    expect(kept).not.toBe(token);
    expect(kept).toMatch(/^cod_/);
    const tokens = (await server.admin(['admin', 'tokens'])).json.tokens as any[];
    const dev = tokens.find((t) => t.device === r.json.device);
    expect(dev).toMatchObject({ user: 'alice', deviceName: 'alice-laptop', revokedAt: null });
    // Only hashes are stored: the secret appears nowhere in the server database.
    const sdb = new Database(path.join(server.data, 'carryon.db'), { readonly: true });
    const hashes = sdb.prepare('SELECT token_hash FROM tokens').all() as Array<{ token_hash: Buffer }>;
    sdb.close();
    expect(hashes.some((h) => h.token_hash.toString('utf8').includes(kept))).toBe(false);
    expect(hashes.every((h) => h.token_hash.length === 32)).toBe(true);
  });

  it('a checkout carries the offline lease of its policy (default 7 days); status shows it; the admin lists the checkout with it', async () => {
    const co = await a.cli(['checkout', 'desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const st = (await a.cli(['status', 'desk', '--json'])).json.desktops[0];
    const left = Date.parse(st.lease.expiresAt) - Date.now();
    expect(left).toBeGreaterThan(7 * DAY - 60_000);
    expect(left).toBeLessThanOrEqual(7 * DAY);
    expect(st.lease.warning).toBeNull();
    const list = (await server.admin(['admin', 'checkouts'])).json.checkouts as any[];
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ desktop: 'desk', user: 'alice', deviceName: expect.any(String), leaseExpiresAt: st.lease.expiresAt });
  });

  it('renew reports what the laptop has not sent and restarts the lease from the policy, which an admin can change', async () => {
    expect((await server.admin(['admin', 'lease-policy', 'desktop', 'desk', '--days', '0.5'])).code).toBe(0);
    const r = await a.cli(['renew', 'desk', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const left = Date.parse(r.json.leaseExpiresAt) - Date.now();
    expect(left).toBeGreaterThan(0.5 * DAY - 60_000);
    expect(left).toBeLessThanOrEqual(0.5 * DAY);
    // Half a day left: status warns.
    const st = (await a.cli(['status', 'desk', '--json'])).json.desktops[0];
    expect(st.lease.warning).toMatch(/carryon renew desk/);
    const list = (await server.admin(['admin', 'checkouts'])).json.checkouts as any[];
    expect(list[0]).toMatchObject({ leaseExpiresAt: r.json.leaseExpiresAt, pendingBytes: 0, pendingBlocks: 0, lastContactAt: expect.any(String) });
    // The admin pushes it out by 10 days.
    const ext = await server.admin(['admin', 'extend', list[0].checkoutId, '--days', '10']);
    expect(ext.code, ext.stderr).toBe(0);
    expect(Date.parse(ext.json.leaseExpiresAt) - Date.parse(r.json.leaseExpiresAt)).toBe(10 * DAY);
    // The device's next contact renews from the policy (half a day) but never below what the admin gave.
    const after = await a.cli(['renew', 'desk', '--json']);
    expect(after.code, after.stderr).toBe(0);
    expect(after.json.leaseExpiresAt).toBe(ext.json.leaseExpiresAt);
  });

  it('an expired lease keeps the disk closed offline (exit 11), and a clock turned back does not reopen it; online, serve renews it; a code from an admin extends it offline, once', async () => {
    expect((await server.admin(['admin', 'lease-policy', 'desktop', 'short', '--days', '0.00002'])).code).toBe(0); // ~1.7 s
    expect((await a.cli(['checkout', 'short', '--json'])).code).toBe(0);
    await new Promise((r) => setTimeout(r, 2500));
    const port = server.port();
    await server.stop();
    const st = (await a.cli(['status', 'short', '--json'])).json.desktops[0];
    expect(st.lease.expired).toBe(true);
    const refused = await a.cli(['serve', 'short', '--json']);
    expect(refused.code).toBe(11);
    expect(refused.json.error.code).toBe('LEASE_EXPIRED');
    expect(refused.json.error.message).toMatch(/carryon renew short/);
    // The agent's log says so too, and that the server is away.
    const agent = await a.cli(['agent', '--once', '--json']);
    expect(agent.code, agent.stdout + agent.stderr).toBe(0);
    const events = agent.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(events.find((e) => e.event === 'lease-warning' && e.desktop === 'short')).toMatchObject({ leaseExpiresAt: expect.any(String) });
    expect(events.some((e) => e.event === 'offline')).toBe(true);


    // The lease of `desk` has 10 days left; the laptop once saw a time 30 days ahead (its clock was then
    // set back): the latest time seen counts, so that lease has run out too.
    const db = new Database(path.join(a.home, 'state.db'));
    db.prepare("INSERT INTO config (key, value) VALUES ('clockHighWater', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(String(Date.now() + 30 * DAY));
    db.close();
    const back = await a.cli(['serve', 'desk', '--json']);
    expect(back.code).toBe(11);
    expect(back.json.error.code).toBe('LEASE_EXPIRED');

    // Back online: the server renews the lease of `short` when serve starts (its time is the truth).
    const db2 = new Database(path.join(a.home, 'state.db'));
    db2.prepare("DELETE FROM config WHERE key = 'clockHighWater'").run();
    db2.close();
    await server.start({}, port);
    expect((await server.admin(['admin', 'lease-policy', 'desktop', 'short', '--days', '3'])).code).toBe(0);
    const serve = spawnCli(a, ['serve', 'short']);
    expect((await serve.next('listening')).desktop).toBe('short');
    expect(await serve.stop()).toBe(0);
    const lease = (await a.cli(['status', 'short', '--json'])).json.desktops[0].lease;
    expect(lease.expired).toBe(false);
    expect(Date.parse(lease.expiresAt)).toBeGreaterThan(Date.now() + 3 * DAY - 60_000);

    // An admin can also read a code over the phone: it extends the lease without the network, once.
    const held = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'short');
    const code = await server.admin(['admin', 'lease-code', held.checkoutId, '--days', '2']);
    expect(code.code, code.stderr).toBe(0);
    expect(code.json.code).toMatch(/^[0-9A-Z]{7}-[0-9A-Z]{7}-[0-9A-Z]{7}$/);
    const typo = code.json.code.slice(0, -1) + (code.json.code.endsWith('0') ? '1' : '0');
    const wrong = await a.cli(['renew', 'short', '--code', typo, '--json']);
    expect(wrong.code).toBe(2);
    expect(wrong.json.error.code).toBe('LEASE_CODE_INVALID');
    const ok = await a.cli(['renew', 'short', '--code', code.json.code.toLowerCase(), '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    // The code carries its end: 2 days past the lease, to the whole hour, as the server said.
    expect(ok.json.leaseExpiresAt).toBe(code.json.leaseExpiresAt);
    expect(Date.parse(ok.json.leaseExpiresAt) - Date.parse(lease.expiresAt)).toBeGreaterThanOrEqual(2 * DAY);
    expect(Date.parse(ok.json.leaseExpiresAt) - Date.parse(lease.expiresAt)).toBeLessThan(2 * DAY + 3600 * 1000);
    expect((await a.cli(['status', 'short', '--json'])).json.desktops[0].lease.expired).toBe(false);
    const again = await a.cli(['renew', 'short', '--code', code.json.code, '--json']);
    expect(again.code).toBe(2);
    expect(again.json.error.message).toMatch(/used already/);
  }, 60_000);

  it('a lease that runs out while serving (and cannot be renewed): serve says so and refuses new clients', async () => {
    expect((await server.admin(['admin', 'lease-policy', 'desktop', 'midway', '--days', '0.00004'])).code).toBe(0); // ~3.5 s
    expect((await a.cli(['checkout', 'midway', '--json'])).code).toBe(0);
    const serve = spawnCli(a, ['serve', 'midway']);
    const events = serve.events;
    const uri = (await serve.next('listening')).uri as string;
    const port = server.port();
    await server.stop(); // the lease cannot be renewed
    await expect.poll(() => events.some((e) => e.event === 'lease-expired'), { timeout: 20_000 }).toBe(true);
    try {
      const info = spawnSync('nbdinfo', [uri], { encoding: 'utf8' });
      expect(info.status).not.toBe(0);
      await expect.poll(() => events.some((e) => e.event === 'refused'), { timeout: 10_000 }).toBe(true);
    } finally {
      await server.start({}, port);
    }
    expect(await serve.stop()).toBe(0);
  }, 60_000);

  it('a revoked device token is refused at once (exit 3); the audit log says who did what, when and from where', async () => {
    const tokens = (await server.admin(['admin', 'tokens'])).json.tokens as any[];
    const dev = tokens.find((t) => t.device !== null && t.revokedAt === null);
    const rv = await server.admin(['admin', 'revoke', String(dev.id)]);
    expect(rv.code, rv.stderr).toBe(0);
    expect(rv.json.revokedAt).toEqual(expect.any(String));
    const refused = await a.cli(['renew', 'desk', '--json']);
    expect(refused.code).toBe(3);
    expect(refused.json.error.code).toBe('UNAUTHORIZED');

    const audit = (await server.admin(['admin', 'audit', '--limit', '100'])).json.audit as any[];
    const actions = audit.map((e) => e.action);
    for (const want of ['user.add', 'device.register', 'checkout.start', 'desktop.lease-policy', 'lease.extend', 'token.revoke']) expect(actions).toContain(want);
    const start = audit.find((e) => e.action === 'checkout.start' && e.target === 'desktop:desk');
    expect(start).toMatchObject({ actor: 'alice', device: dev.device, address: '127.0.0.1' });
    expect(Date.parse(start.at)).toBeLessThanOrEqual(Date.now());
    const revoke = audit.find((e) => e.action === 'token.revoke');
    expect(revoke.actor).toMatch(/^cli:/);
    expect(revoke.detail).toMatchObject({ user: 'alice', device: dev.device });
  });

  /** `carryon agent --once --json` on laptop B: its events. */
  async function agentOnce(): Promise<any[]> {
    const r = await b.cli(['agent', '--once', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  }

  async function requestsOf(desktop: string): Promise<any[]> {
    return ((await server.admin(['admin', 'requests'])).json.requests as any[]).filter((q) => q.desktop === desktop);
  }

  it('force check-in: queued, waits while a VM has the disk, then the agent checks in at its next contact and the admin sees it done', async () => {
    expect((await b.cli(['login', server.url, '--token', token, '--device-name', 'bob-laptop'])).code).toBe(0);
    const co = await b.cli(['checkout', 'forced', '--json']);
    expect(co.code, co.stderr).toBe(0);
    qemuWrite(co.json.disk, [[0x5c, 2 * 1024 * 1024, 65536]]);
    const held = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'forced');
    const req = await server.admin(['admin', 'checkin', held.checkoutId]);
    expect(req.code, req.stderr).toBe(0);
    expect(req.json).toMatchObject({ kind: 'checkin', state: 'requested', requestedBy: expect.stringMatching(/^cli:/) });
    // Asking again does not queue a second one.
    expect((await server.admin(['admin', 'checkin', held.checkoutId])).json.id).toBe(req.json.id);

    // A VM has the disk open through carryon serve: the agent says so and waits.
    const serve = spawnCli(b, ['serve', 'forced']);
    await serve.next('listening');
    const waiting = await agentOnce();
    expect(waiting.find((e) => e.event === 'waiting')).toMatchObject({ desktop: 'forced', kind: 'checkin' });
    expect((await requestsOf('forced'))[0]).toMatchObject({ state: 'in-progress', detail: { waiting: expect.stringMatching(/in use by carryon serve/) } });
    expect(await serve.stop()).toBe(0);

    const done = await agentOnce();
    expect(done.find((e) => e.event === 'checkin-done')).toMatchObject({ desktop: 'forced', version: 2 });
    expect((await requestsOf('forced'))[0]).toMatchObject({ state: 'done', detail: { version: 2 } });
    expect(((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).some((c) => c.desktop === 'forced')).toBe(false);
    expect((await b.cli(['status', 'forced', '--json'])).json.desktops[0].state).toBe('checked-in');
    const audit = ((await server.admin(['admin', 'audit'])).json.audit as any[]).filter((e) => e.target === 'desktop:forced').map((e) => e.action);
    expect(audit).toEqual(expect.arrayContaining(['checkin.request', 'checkin.in-progress', 'checkin.done', 'checkout.commit']));
  }, 60_000);

  it('rollback: the desktop is free at once; at its next contact the device removes its copy (or keeps it aside when the policy says so)', async () => {
    for (const d of ['gone', 'kept']) expect((await b.cli(['checkout', d, '--json'])).code).toBe(0);
    expect((await server.admin(['admin', 'rollback-policy', 'kept', '--keep'])).code).toBe(0);
    const list = (await server.admin(['admin', 'checkouts'])).json.checkouts as any[];
    for (const d of ['gone', 'kept']) {
      const rb = await server.admin(['admin', 'rollback', list.find((c) => c.desktop === d).checkoutId]);
      expect(rb.code, rb.stderr).toBe(0);
      expect(rb.json).toMatchObject({ kind: 'rollback', state: 'requested' });
    }
    // Free to check out again at once, from another laptop, at the server's last version.
    const again = await a.cli(['login', server.url, '--token', token]);
    expect(again.code).toBe(0);
    const other = await a.cli(['checkout', 'gone', '--json']);
    expect(other.code, other.stderr).toBe(0);
    expect(other.json.version).toBe(1);

    const diskGone = path.join(b.home, 'desktops', 'gone', 'disk.raw');
    const diskKept = path.join(b.home, 'desktops', 'kept', 'disk.raw');
    expect(existsSync(diskGone) && existsSync(diskKept)).toBe(true);
    const events = await agentOnce();
    const done = events.filter((e) => e.event === 'rollback-done');
    expect(done.map((e) => e.desktop).sort()).toEqual(['gone', 'kept']);
    expect(existsSync(diskGone)).toBe(false);
    expect(existsSync(diskKept)).toBe(false);
    const keptAt = done.find((e) => e.desktop === 'kept').keptAt as string;
    expect(existsSync(path.join(keptAt, 'disk.raw'))).toBe(true);
    expect(done.find((e) => e.desktop === 'gone').keptAt).toBeNull();
    // The checkouts are gone; status says what happened to each copy.
    const st = (await b.cli(['status', '--json'])).json.desktops as any[];
    expect(st.find((d) => d.desktop === 'gone')).toMatchObject({ state: 'rolled-back', rolledBack: { done: true, removed: true } });
    expect(st.find((d) => d.desktop === 'kept')).toMatchObject({ state: 'rolled-back', rolledBack: { done: true, removed: false, keptAt } });
    for (const d of ['gone', 'kept']) expect((await requestsOf(d))[0]).toMatchObject({ kind: 'rollback', state: 'done' });
  }, 60_000);

  it('the HTTP API changes policies too, refuses nonsense with a clear code, and audits each change', async () => {
    const admin = await server.admin(['user', 'add', 'ops', '--admin']);
    const call = (p: string, body: unknown) => fetch(`${server.url}/v1${p}`, { method: 'POST', headers: { authorization: `Bearer ${admin.json.token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const ok = await call('/admin/desktops/desk/policy', { leaseDays: 2, replicateMinutes: 90, rollbackKeepsLocal: true, files: 'newest' });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ desktop: 'desk', leaseDays: 2, effectiveLeaseDays: 2, replicateMinutes: 90, rollbackKeepsLocal: true, files: 'newest' });
    for (const bad of [{ leaseDays: 'x' }, { leaseDays: 400 }, { files: 'whatever' }, { colour: 'red' }, { replicateMinutes: 0 }]) {
      const r = await call('/admin/desktops/desk/policy', bad);
      expect(r.status, JSON.stringify(bad)).toBe(400);
      expect(((await r.json()) as any).error.code).toMatch(/^(BAD_REQUEST|INVALID_ARGUMENT)$/);
    }
    expect((await (await call('/admin/desktops/desk/policy', {})).json()) as any).toMatchObject({ leaseDays: 2, replicateMinutes: 90 });
    const img = await call('/admin/images/golden/policy', { leaseDays: 3 });
    expect(await img.json()).toEqual({ image: 'golden', leaseDays: 3, encryption: null, effectiveEncryption: 'required' });
    const audit = ((await server.admin(['admin', 'audit'])).json.audit as any[]).filter((e) => e.actor === 'ops').map((e) => e.action);
    expect(audit).toEqual(expect.arrayContaining(['desktop.lease-policy', 'desktop.replicate-policy', 'desktop.rollback-policy', 'desktop.merge-policy', 'image.lease-policy']));
  });

  it('/metrics speaks Prometheus text: active checkouts, requests, bytes, failures, check-in durations; no names', async () => {
    const res = await fetch(`${server.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const value = (re: RegExp): number => Number(re.exec(text)?.[1] ?? NaN);
    const active = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).length;
    expect(value(/^carryon_active_checkouts (\d+)$/m)).toBe(active);
    expect(value(/^carryon_checkin_commit_seconds_count (\d+)$/m)).toBeGreaterThanOrEqual(1);
    expect(value(/^carryon_failures_total\{code="UNAUTHORIZED"\} (\d+)$/m)).toBeGreaterThanOrEqual(1);
    expect(value(/^carryon_http_requests_total\{method="POST",route="\/checkouts\/:id\/heartbeat",status="200"\} (\d+)$/m)).toBeGreaterThanOrEqual(1);
    expect(value(/^carryon_http_received_bytes_total (\d+)$/m)).toBeGreaterThan(0);
    expect(value(/^carryon_http_sent_bytes_total (\d+)$/m)).toBeGreaterThan(0);
    for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) expect(line).toMatch(/^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$/);
    expect(text).not.toMatch(/alice|forced|short|\bkept\b|alice-laptop|bob-laptop/);
  });

  it('the agent keeps running while the server is away and picks up again when it is back', async () => {
    expect((await b.cli(['checkout', 'doomed', '--json'])).code).toBe(0);
    const agent = spawnCli(b, ['agent', '--interval', '1']);
    const events = agent.events;
    const seen = (pred: (e: any) => boolean, from = 0): Promise<void> => expect.poll(() => events.slice(from).some(pred), { timeout: 20_000 }).toBe(true);
    await seen((e) => e.event === 'heartbeat' && e.desktop === 'doomed');
    const port = server.port();
    await server.stop();
    await seen((e) => e.event === 'offline');
    const mark = events.length;
    await server.start({}, port);
    await seen((e) => e.event === 'heartbeat' && e.desktop === 'doomed', mark);
    expect(await agent.stop()).toBe(0);
    expect(events.at(-1).event).toBe('stop');
  }, 60_000);

  it('an admin deletes a desktop only when nobody holds it; the deletion is audited', async () => {
    const held = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'doomed');
    const notYet = await server.admin(['admin', 'delete-desktop', 'doomed', '--yes']);
    expect(notYet.code).toBe(5);
    expect(notYet.json.error.code).toBe('CHECKOUT_CONFLICT');
    const noYes = await server.admin(['admin', 'delete-desktop', 'doomed']);
    expect(noYes.json.error.code).toBe('ABORTED');
    expect((await server.admin(['admin', 'rollback', held.checkoutId])).code).toBe(0);
    const del = await server.admin(['admin', 'delete-desktop', 'doomed', '--yes']);
    expect(del.code, del.stderr).toBe(0);
    expect(del.json.versions).toBe(1);
    expect((await a.cli(['checkout', 'doomed', '--json'])).json.error.code).toBe('DESKTOP_NOT_FOUND');
    expect(((await server.admin(['admin', 'audit'])).json.audit as any[]).some((e) => e.action === 'desktop.delete' && e.target === 'desktop:doomed')).toBe(true);
  });
});
