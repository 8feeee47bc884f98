// The admin web console in a real browser (Debian's chromium, driven by playwright-core): log in with
// an admin token, see the checkout with its lease countdown, press "Force check-in", watch the
// laptop's agent complete it; extend a lease; a plain user's token is refused.
import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, makeExt4Image, qemuWrite, removeTmp, requireTool, spawnCli, TestServer, tmpDir } from './harness.js';

const CHROMIUM = '/usr/bin/chromium';

describe('admin console (chromium)', () => {
  const dir = tmpDir('console');
  const server = new TestServer(dir);
  const laptop = new Laptop(path.join(dir, 'laptop'));
  let adminToken = '';
  let userToken = '';
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    requireTool('chromium');
    expect(existsSync(CHROMIUM), 'chromium is not installed: run scripts/install-test-deps.sh').toBe(true);
    const image = path.join(dir, 'golden.raw');
    makeExt4Image(image, 16, 4);
    await server.init();
    userToken = await server.addUser('alice');
    const adm = await server.admin(['user', 'add', 'root', '--admin']);
    adminToken = adm.json.token;
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['desk', 'other']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'secret', '--user', 'alice', '--image', 'golden', '--encryption', 'required'])).code).toBe(0);
    await server.start();
    expect((await laptop.cli(['login', server.url, '--token', userToken, '--device-name', 'alice-laptop'])).code).toBe(0);
    for (const d of ['desk', 'other']) expect((await laptop.cli(['checkout', d])).code).toBe(0);
    const enc = await laptop.cli(['checkout', 'secret'], { CARRYON_PASSPHRASE: 'console test passphrase', CARRYON_KDF_LOG_N: '10' });
    expect(enc.code, enc.stderr).toBe(0);
    qemuWrite(path.join(laptop.home, 'desktops', 'desk', 'disk.raw'), [[0x3c, 3 * 1024 * 1024, 65536]]);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
    page = await browser.newPage();
  }, 180_000);

  afterAll(async () => {
    killSpawned();
    await browser?.close();
    await server.stop();
    removeTmp(dir);
  });

  async function logIn(token: string): Promise<void> {
    await page.goto(`${server.url}/console`);
    await page.fill('#token', token);
    await page.click('#login-button');
  }

  it("a plain user's token does not open the console", async () => {
    await logIn(userToken);
    await expect.poll(async () => (await page.textContent('#login-error')) ?? '').toMatch(/not an admin/);
    expect(await page.isVisible('#app')).toBe(false);
  });

  it("an admin's device token (from `carryon login` on a laptop) is refused at login with a sentence, not accepted and then failing every poll", async () => {
    const adminLaptop = new Laptop(path.join(dir, 'admin-laptop'));
    expect((await adminLaptop.cli(['login', server.url, '--token', adminToken, '--device-name', 'root-laptop'])).code).toBe(0);
    const db = new Database(path.join(adminLaptop.home, 'state.db'), { readonly: true });
    const deviceToken = (db.prepare("SELECT value FROM config WHERE key = 'token'").get() as { value: string }).value;
    db.close();
    const failed: string[] = [];
    const onResponse = (r: { status(): number; url(): string }): void => { if (r.status() === 403) failed.push(r.url()); };
    page.on('response', onResponse);
    try {
      await logIn(deviceToken);
      await expect.poll(async () => (await page.textContent('#login-error')) ?? '').toMatch(/token of the laptop .root-laptop. \(a device token.*carryon-server user add root --admin/);
      expect(await page.isVisible('#app')).toBe(false);
      expect(await page.isVisible('#login')).toBe(true);
      expect(failed).toEqual([]); // no admin call was even tried
    } finally {
      page.off('response', onResponse);
    }
  });

  it('an admin sees every checkout with a live lease countdown and the device', async () => {
    await logIn(adminToken);
    await page.waitForSelector('#checkouts tr[data-desktop="desk"]');
    const row = page.locator('#checkouts tr[data-desktop="desk"]');
    await expect.poll(() => row.locator('td').nth(2).textContent()).toBe('alice-laptop');
    const first = await row.locator('td.lease').textContent();
    expect(first).toMatch(/^[67]d \d+h \d+m \d+s$/); // the default lease: 7 days
    // It counts down (a live countdown, not a time printed once).
    await expect.poll(() => row.locator('td.lease').textContent(), { timeout: 15_000 }).not.toBe(first);
    expect(await page.locator('#checkouts tr[data-desktop="other"]').count()).toBe(1);
  });

  it('shows what sharing saves: the totals, each image and each desktop', async () => {
    await expect.poll(async () => (await page.locator('#sharing-totals').textContent()) ?? '').toMatch(/stored as .*: \d+\.\d% saved/);
    const desktops = await page.locator('#sharing-desktops tbody tr').count();
    expect(desktops).toBeGreaterThanOrEqual(2);
    expect(await page.locator('#sharing-images tbody tr td').first().textContent()).toBeTruthy();
  });

  it('"Refresh" says what survives before it acts, and what it did after', async () => {
    const row = page.locator('#sharing-desktops tr[data-desktop="desk"]');
    let asked = '';
    page.once('dialog', (d) => {
      asked = d.message();
      void d.accept();
    });
    await row.locator('button[name="refresh"]').click();
    await expect.poll(async () => (await page.locator('#notice').textContent()) ?? '').toMatch(/desk (is checked out: it moves|is already on image|is now version)/);
    expect(asked).toContain("What survives: each user's persona");
    expect(asked).toContain('admin restore DESKTOP --version N');
  });

  it('shows which copies are encrypted; "Recovery code" reads out the code and the command, audited', async () => {
    const row = page.locator('#checkouts tr[data-desktop="secret"]');
    await expect.poll(async () => (await row.locator('td.encryption').textContent()) ?? '').toMatch(/^encrypted \(key check [0-9a-f]{16}\)$/);
    expect(await page.locator('#checkouts tr[data-desktop="desk"] td.encryption').textContent()).toBe('plaintext copy');
    expect(await page.locator('#checkouts tr[data-desktop="desk"] button[name="recovery-code"]').count()).toBe(0);
    page.once('dialog', (d) => void d.accept());
    await row.locator('button[name="recovery-code"]').click();
    await expect.poll(async () => (await page.textContent('#notice')) ?? '').toMatch(/Recovery code for secret on alice-laptop .*carryon unlock secret --recovery-code CODE/);
    expect(await page.locator('#notice code').textContent()).toMatch(/^([0-9A-Z]{4}-){13}[0-9A-Z]{4}$/);
    await expect.poll(async () => (await page.locator('#audit tbody').textContent()) ?? '').toMatch(/escrow\.reveal/);
  });

  it('"Extend lease" pushes the lease out; the audit log shows who did it', async () => {
    const row = page.locator('#checkouts tr[data-desktop="other"]');
    const before = Date.parse((await row.locator('td.lease').getAttribute('data-expires'))!);
    page.once('dialog', (d) => void d.accept('3'));
    await row.locator('button[name="extend"]').click();
    await expect.poll(async () => Date.parse((await page.locator('#checkouts tr[data-desktop="other"] td.lease').getAttribute('data-expires'))!) - before).toBe(3 * 86400 * 1000);
    // The console says the laptop learns it only at its next contact, and offers a lease code.
    await expect.poll(async () => (await page.textContent('#notice')) ?? '').toMatch(/learns this only at its next contact.*Lease code/);
    await expect.poll(async () => (await page.locator('#audit tbody').textContent()) ?? '').toMatch(/lease\.extend/);
    expect(await page.locator('#audit tbody tr', { hasText: 'lease.extend' }).first().textContent()).toContain('root');
  });

  it('"Lease code" shows a code and the command the user types; the server lease does not move until the code is used', async () => {
    const row = page.locator('#checkouts tr[data-desktop="other"]');
    const before = await row.locator('td.lease').getAttribute('data-expires');
    page.once('dialog', (d) => void d.accept('2'));
    await row.locator('button[name="lease-code"]').click();
    await expect.poll(async () => (await page.textContent('#notice')) ?? '').toMatch(/Lease code for other: [0-9A-Z]{7}-[0-9A-Z]{7}-[0-9A-Z]{7} .*carryon renew other --code [0-9A-Z-]{23}/);
    expect(await page.locator('#notice code').textContent()).toMatch(/^[0-9A-Z]{7}-[0-9A-Z]{7}-[0-9A-Z]{7}$/);
    await expect.poll(async () => (await page.locator('#audit tbody').textContent()) ?? '').toMatch(/lease\.code/);
    expect(await page.locator('#checkouts tr[data-desktop="other"] td.lease').getAttribute('data-expires')).toBe(before);
  });

  it('"Force check-in" is queued; the agent on the laptop completes it; the console shows requested, then done', async () => {
    const row = page.locator('#checkouts tr[data-desktop="desk"]');
    await row.locator('button[name="checkin"]').click();
    await expect.poll(async () => (await page.locator('#requests tbody').textContent()) ?? '').toMatch(/checkin.*desk.*requested/);
    // The laptop's agent, as its systemd unit would run it.
    // This laptop holds an encrypted copy too: its token is sealed, so the agent needs the passphrase.
    spawnCli(laptop, ['agent', '--interval', '1'], { CARRYON_PASSPHRASE: 'console test passphrase' });
    await expect.poll(async () => (await page.locator('#requests tbody tr', { hasText: 'desk' }).first().textContent()) ?? '', { timeout: 30_000 }).toMatch(/done.*checked in as version 2; .* sent; (read only the blocks written|scanned the whole disk)/);
    // Details are sentences, not JSON.
    expect((await page.locator('#requests tbody').textContent()) ?? '').not.toMatch(/[{}"]/);
    // The checkout is gone from the list: the desktop is back on the server, at version 2.
    await expect.poll(() => page.locator('#checkouts tr[data-desktop="desk"]').count(), { timeout: 10_000 }).toBe(0);
    const audit = (await page.locator('#audit tbody').textContent()) ?? '';
    for (const a of ['checkin.request', 'checkin.done', 'checkout.commit']) expect(audit).toContain(a);
    const status = (await laptop.cli(['status', 'desk', '--json'])).json.desktops[0];
    expect(status).toMatchObject({ state: 'checked-in', version: 2 });
  }, 60_000);
});
