// Fleet control with real processes: laptops as devices with their own tokens, offline leases
// granted by policy and enforced on the laptop (also against a clock turned back), renewal, the
// admin's view of checkouts, lease extension, token revocation, and the audit log.
import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, makeExt4Image, removeTmp, ROOT, TestServer, tmpDir } from './harness.js';

const DAY = 24 * 3600 * 1000;

describe('fleet: devices, leases, admin, audit', () => {
  const dir = tmpDir('fleet');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  let token = '';

  beforeAll(async () => {
    makeExt4Image(image, 16, 4);
    await server.init();
    token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['desk', 'short']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
  }, 120_000);

  afterAll(async () => {
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
  });

  it('an expired lease keeps the disk closed offline (exit 11), and a clock turned back does not reopen it; online, serve renews it', async () => {
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
    const serve = spawn(process.execPath, [path.join(ROOT, 'bin/carryon.js'), 'serve', 'short', '--json'], { env: { ...process.env, CARRYON_HOME: a.home }, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => serve.once('exit', (code) => r(code)));
    const listening = await new Promise<any>((resolve, reject) => {
      let out = '';
      serve.stdout!.on('data', (c) => {
        out += c;
        const line = out.split('\n').find((l) => l.includes('"listening"'));
        if (line) resolve(JSON.parse(line));
      });
      void exited.then((code) => reject(new Error(`serve exited with ${code}: ${out}`)));
    });
    expect(listening.desktop).toBe('short');
    serve.kill('SIGTERM');
    expect(await exited).toBe(0);
    const lease = (await a.cli(['status', 'short', '--json'])).json.desktops[0].lease;
    expect(lease.expired).toBe(false);
    expect(Date.parse(lease.expiresAt)).toBeGreaterThan(Date.now() + 3 * DAY - 60_000);
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
});
