// Issue 10, items 2-5, with real processes: no writes lost around rollbacks (serve asks the server and
// refuses a rolled-back checkout; every command gives the same answer and status says what happened),
// a lease refusal that tells an offline traveller about lease codes, admin extensions and lease codes
// that say what the laptop knows (a code carries its lease end: the server and the laptop agree, and
// the server's lease moves only once the code is used), and one audit row per change from any entry point.
import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, makeExt4Image, qemuWrite, removeTmp, ROOT, run, spawnCli, TestServer, tmpDir } from './harness.js';

const DAY = 24 * 3600 * 1000;
const SERVER_BIN = path.join(ROOT, 'bin/carryon-server.js');

describe('admin actions lose no writes and say what they did', () => {
  const dir = tmpDir('admin-safety');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const laptop = new Laptop(path.join(dir, 'laptop'));
  let token = '';

  beforeAll(async () => {
    makeExt4Image(image, 16, 4);
    await server.init();
    token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['rb', 'rb2', 'away', 'coded', 'audited']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token', token, '--device-name', 'alice-laptop'])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  const checkoutIdOf = async (desktop: string): Promise<string> =>
    ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === desktop).checkoutId;

  /** Point the laptop's login at a closed port: the server is away, as on a plane. */
  function setServerUrl(url: string): void {
    const db = new Database(path.join(laptop.home, 'state.db'));
    db.prepare("UPDATE config SET value = ? WHERE key = 'url'").run(url);
    db.close();
  }

  it('a rolled-back checkout: serve asks the server and refuses (ROLLED_BACK); checkin and renew give the same answer; status says who, when and where the copy went', async () => {
    for (const d of ['rb', 'rb2']) expect((await laptop.cli(['checkout', d, '--json'])).code).toBe(0);
    const disk = path.join(laptop.home, 'desktops', 'rb', 'disk.raw');
    qemuWrite(disk, [[0x7a, 1024 * 1024, 65536]]);
    for (const d of ['rb', 'rb2']) expect((await server.admin(['admin', 'rollback', await checkoutIdOf(d)])).code).toBe(0);

    // The laptop has not heard of it yet; serve asks the server (reachable) before opening the disk.
    const serve = spawnCli(laptop, ['serve', 'rb']);
    const first = await Promise.race([serve.next('error'), serve.next('listening')]);
    if (first.event === 'listening') await serve.stop(); // today's bug: the VM could write on
    expect(first.error?.code).toBe('ROLLED_BACK');
    expect((await serve.exit).code).toBe(8);
    expect(first.error.message).toMatch(/rolled rb back at .*carryon agent/);
    expect(first.error.data.rolledBackBy).toMatch(/^cli:/);

    // Status says so (not a live checkout with a lease), in JSON and in words.
    const st = (await laptop.cli(['status', 'rb', '--json'])).json.desktops[0];
    expect(st).toMatchObject({ desktop: 'rb', state: 'rolled-back', rolledBack: { by: expect.stringMatching(/^cli:/), done: false } });
    expect(st.lease).toBeUndefined();
    const human = await laptop.cli(['status', 'rb']);
    expect(human.stdout).toMatch(/ROLLED BACK: an admin \(cli:.*\) rolled rb back at \S+; your copy at .*disk\.raw is no longer the desktop/);

    // A check-in before anything else learned of rb2's rollback: the server gives the same answer as renew.
    const checkin = await laptop.cli(['checkin', 'rb2', '--json']);
    expect(checkin.json.error.code).toBe('ROLLED_BACK');
    expect(checkin.json.error.message).toMatch(/rolled rb2 back/);
    const renew = await laptop.cli(['renew', 'rb2', '--json']);
    expect(renew.json.error.code).toBe('ROLLED_BACK');
    // Once known, it is the answer offline too.
    setServerUrl('http://127.0.0.1:1');
    try {
      const offline = await laptop.cli(['serve', 'rb2', '--json']);
      expect(offline.json.error.code).toBe('ROLLED_BACK');
    } finally {
      setServerUrl(server.url);
    }

    // The agent acts; status then says the copy was removed.
    const agent = await laptop.cli(['agent', '--once', '--json']);
    expect(agent.code, agent.stderr).toBe(0);
    expect(existsSync(disk)).toBe(false);
    const after = (await laptop.cli(['status', '--json'])).json.desktops as any[];
    expect(after.find((d) => d.desktop === 'rb')).toMatchObject({ state: 'rolled-back', rolledBack: { done: true, removed: true } });
    expect((await laptop.cli(['status', 'rb'])).stdout).toMatch(/rolled rb back at \S+; your copy was removed/);
    // A new checkout of the desktop starts afresh.
    expect((await laptop.cli(['checkout', 'rb', '--json'])).code).toBe(0);
    expect((await laptop.cli(['status', 'rb', '--json'])).json.desktops[0].state).toBe('active');
  }, 90_000);

  it('an expired lease, offline: the refusal and the status warning name the lease code as well as the office network', async () => {
    expect((await server.admin(['admin', 'lease-policy', 'desktop', 'away', '--days', '0.00002'])).code).toBe(0); // ~1.7 s
    expect((await laptop.cli(['checkout', 'away', '--json'])).code).toBe(0);
    await new Promise((r) => setTimeout(r, 2500));
    setServerUrl('http://127.0.0.1:1');
    try {
      const refused = await laptop.cli(['serve', 'away', '--json']);
      expect(refused.code).toBe(11);
      expect(refused.json.error.code).toBe('LEASE_EXPIRED');
      expect(refused.json.error.message).toMatch(/office network.*carryon renew away`.*admin.*lease code.*carryon renew away --code CODE/);
      const warning = (await laptop.cli(['status', 'away', '--json'])).json.desktops[0].lease.warning;
      expect(warning).toMatch(/carryon renew away --code CODE/);
    } finally {
      setServerUrl(server.url);
    }
  }, 60_000);

  it('admin extend says the laptop learns it at its next contact and offers a lease code; a code carries its end, which server and laptop agree on, and moves the server lease only once used', async () => {
    expect((await laptop.cli(['checkout', 'coded', '--json'])).code).toBe(0);
    const id = await checkoutIdOf('coded');
    const ext = await run(SERVER_BIN, ['admin', 'extend', id, '--days', '2', '--data', server.data]);
    expect(ext.code, ext.stderr).toBe(0);
    expect(ext.stdout).toMatch(/learns this only at its next contact/);
    expect(ext.stdout).toContain(`carryon-server admin lease-code ${id} --days N`);

    const before = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'coded').leaseExpiresAt;
    const code = await server.admin(['admin', 'lease-code', id, '--days', '3']);
    expect(code.code, code.stderr).toBe(0);
    expect(code.json.code).toMatch(/^[0-9A-Z]{7}-[0-9A-Z]{7}-[0-9A-Z]{7}$/);
    // Making a code does not move the server's lease.
    expect(((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'coded').leaseExpiresAt).toBe(before);

    // Offline, a day later by the laptop's clock: the lease ends exactly where the server said.
    setServerUrl('http://127.0.0.1:1');
    try {
      const db = new Database(path.join(laptop.home, 'state.db'));
      db.prepare("INSERT INTO config (key, value) VALUES ('clockHighWater', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(String(Date.now() + DAY));
      db.close();
      const used = await laptop.cli(['renew', 'coded', '--code', code.json.code, '--json']);
      expect(used.code, used.stderr).toBe(0);
      expect(used.json.leaseExpiresAt).toBe(code.json.leaseExpiresAt);
    } finally {
      setServerUrl(server.url);
    }
    // At the next contact the laptop reports the code; the server's lease is now at least the code's end.
    const renew = await laptop.cli(['renew', 'coded', '--json']);
    expect(renew.code, renew.stderr).toBe(0);
    const held = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'coded');
    expect(Date.parse(held.leaseExpiresAt)).toBeGreaterThanOrEqual(Date.parse(code.json.leaseExpiresAt));
    const audit = (await server.admin(['admin', 'audit', '--limit', '100'])).json.audit as any[];
    expect(audit.filter((a) => a.action === 'lease.code-used' && a.target === 'desktop:coded')).toHaveLength(1);
  }, 60_000);

  it('publishing an image, creating a desktop and changing merge policy are audited once, from the command line as from HTTP; the audit shows device names', async () => {
    const auditOf = async (): Promise<any[]> => (await server.admin(['admin', 'audit', '--limit', '1000'])).json.audit as any[];
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'fresh', '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    expect((await server.admin(['desktop', 'policy', 'audited', '--files', 'newest'])).code).toBe(0);
    expect((await server.admin(['desktop', 'policy', 'audited'])).code).toBe(0); // a look changes nothing
    const ops = await server.admin(['user', 'add', 'ops', '--admin']);
    const res = await fetch(`${server.url}/v1/admin/desktops/audited/policy`, { method: 'POST', headers: { authorization: `Bearer ${ops.json.token}`, 'content-type': 'application/json' }, body: JSON.stringify({ registry: 'server' }) });
    expect(res.status).toBe(200);
    const audit = await auditOf();
    const rows = (action: string, target: string) => audit.filter((a) => a.action === action && a.target === target);
    expect(rows('image.publish', 'image:golden')).toHaveLength(2); // beforeAll's and this one
    expect(rows('image.publish', 'image:golden')[0]).toMatchObject({ actor: expect.stringMatching(/^cli:/), detail: { version: 2 } });
    expect(rows('desktop.create', 'desktop:fresh')).toHaveLength(1);
    expect(rows('desktop.create', 'desktop:fresh')[0].detail).toMatchObject({ user: 'alice', image: 'golden' });
    const merge = rows('desktop.merge-policy', 'desktop:audited');
    expect(merge).toHaveLength(2);
    expect(merge.map((a) => a.actor)).toEqual(['ops', expect.stringMatching(/^cli:/)]);
    // Device names, not only ids.
    const start = audit.find((a) => a.action === 'checkout.start' && a.target === 'desktop:coded');
    expect(start.deviceName).toBe('alice-laptop');
    const text = await run(SERVER_BIN, ['admin', 'audit', '--data', server.data]);
    expect(text.stdout).toMatch(/alice on alice-laptop \([0-9a-f-]{36}\) from 127\.0\.0\.1: checkout\.start desktop:coded/);
  }, 60_000);
});
