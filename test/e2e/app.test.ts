// The traveller's app (`carryon app`) in a real browser (Debian's chromium, driven by playwright-core),
// against a real server and a real laptop home: the secret refused when wrong or missing (401, nothing
// of the laptop in the answer), Host and Origin checks; check out with the keyboard, see progress reach
// "ready to travel"; the lease countdown, a bad lease code refused in plain words with its code, an
// online renewal; check in and see the merge report of a conflict made by a second laptop's push, with
// both copies' paths. Screenshots at normal size and at 200% zoom go to the test's tmp dir (and, with
// CARRYON_APP_SHOTS=DIR, to DIR: how docs/app/ was made).
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, makeExt4Image, qemuWrite, removeTmp, requireTool, ROOT, spawnCli, TestServer, tmpDir, type CliProcess } from './harness.js';

const CHROMIUM = '/usr/bin/chromium';

describe("the traveller's app (chromium)", () => {
  const dir = tmpDir('app');
  const server = new TestServer(dir);
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  const profileA = path.join(a.home, 'desktops', 'desk', 'persona', 'profile');
  const profileB = path.join(b.home, 'desktops', 'desk', 'persona', 'profile');
  const shots = path.join(dir, 'shots');
  let app: CliProcess;
  let openUrl = '';
  let baseUrl = '';
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;

  async function shot(p: Page, name: string): Promise<void> {
    mkdirSync(shots, { recursive: true });
    const file = path.join(shots, `${name}.png`);
    await p.screenshot({ path: file, fullPage: true });
    const out = process.env.CARRYON_APP_SHOTS;
    if (out) {
      mkdirSync(out, { recursive: true });
      copyFileSync(file, path.join(out, `${name}.png`));
    }
  }

  beforeAll(async () => {
    requireTool('chromium');
    expect(existsSync(CHROMIUM), 'chromium is not installed: run scripts/install-test-deps.sh').toBe(true);
    const image = path.join(dir, 'golden.raw');
    makeExt4Image(image, 48, 24);
    await server.init();
    const token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['desk', 'spare', 'roam']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    expect((await a.cli(['login', server.url, '--token', token, '--device-name', 'laptop-A'])).code).toBe(0);
    expect((await b.cli(['login', server.url, '--token', token, '--device-name', 'device-B'])).code).toBe(0);
    // A first persona version with a file in it, pushed from a second device (persona-only: no lock).
    expect((await b.cli(['checkout', 'desk', '--persona-only'])).code).toBe(0);
    mkdirSync(path.join(profileB, 'Documents'), { recursive: true });
    writeFileSync(path.join(profileB, 'Documents', 'notes.txt'), 'line one\n');
    const push = await b.cli(['persona', 'push', 'desk']);
    expect(push.code, push.stderr).toBe(0);

    app = spawnCli(a, ['app', '--no-open']);
    const listening = await Promise.race([app.next('listening'), app.exit.then(() => { throw new Error(`carryon app exited: ${app.stderr()}`); })]);
    openUrl = listening.openUrl;
    baseUrl = listening.url;
    expect(openUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/\?secret=[A-Za-z0-9_-]{43}$/);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
    context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    page = await context.newPage();
  }, 180_000);

  afterAll(async () => {
    await app?.stop();
    killSpawned();
    await browser?.close();
    await server.stop();
    removeTmp(dir);
  });

  it('the secret is made once, 0600, and is what the printed URL carries', () => {
    const file = path.join(a.home, 'app-secret');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(openUrl).toContain(`secret=${readFileSync(file, 'utf8').trim()}`);
  });

  it('a second `carryon app` for the same home (the desktop entry) points at the running one and exits', async () => {
    const again = await a.cli(['app', '--no-open', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json).toMatchObject({ event: 'already-running', openUrl });
  });

  it('a missing or wrong secret is refused with 401 and nothing of the laptop leaks', async () => {
    for (const [pathname, headers] of [
      ['/', {}], ['/api/overview', {}], ['/api/events', {}], ['/?secret=wrong', {}],
      ['/api/overview', { cookie: 'carryon_app=not-the-session' }], ['/', { cookie: 'carryon_app=' }],
    ] as Array<[string, Record<string, string>]>) {
      const r = await fetch(baseUrl.replace(/\/$/, '') + pathname, { headers, redirect: 'manual' });
      const text = await r.text();
      expect(r.status, pathname).toBe(401);
      expect(r.headers.get('set-cookie')).toBeNull();
      for (const secretish of ['desk', 'spare', 'laptop-A', a.home, server.url, 'alice']) expect(text, `${pathname} leaks ${secretish}`).not.toContain(secretish);
    }
    const post = await fetch(`${baseUrl}api/desktops/desk/checkout`, { method: 'POST', headers: { origin: baseUrl.replace(/\/$/, ''), 'content-type': 'application/json' }, body: '{}' });
    expect(post.status).toBe(401);
    // Nothing was started: the laptop holds no checkout.
    expect(existsSync(path.join(a.home, 'desktops', 'desk', 'disk.raw'))).toBe(false);
  });

  it('the secret in the URL becomes an HttpOnly SameSite=Strict cookie, and the address bar loses it', async () => {
    await page.goto(openUrl);
    expect(page.url()).toBe(baseUrl);
    const cookies = await context.cookies();
    expect(cookies).toHaveLength(1);
    expect(cookies[0]).toMatchObject({ name: 'carryon_app', httpOnly: true, sameSite: 'Strict' });
    expect(cookies[0]!.value).not.toContain(readFileSync(path.join(a.home, 'app-secret'), 'utf8').trim());
    await page.waitForSelector('section[data-desktop="desk"]');
    expect(await page.textContent('#who')).toContain('laptop-A');
  });

  it('a request under another Host name (DNS rebinding) or from another Origin is refused, even with the cookie', async () => {
    const cookie = `carryon_app=${(await context.cookies())[0]!.value}`;
    const port = new URL(baseUrl).port;
    const rebinding = await new Promise<number>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/api/overview', headers: { host: `evil.example:${port}`, cookie } }, (res) => { res.resume(); resolve(res.statusCode!); }).on('error', reject);
    });
    expect(rebinding).toBe(403);
    const csrf = await fetch(`${baseUrl}api/desktops/desk/checkout`, { method: 'POST', headers: { cookie, origin: 'http://evil.example', 'content-type': 'application/json' }, body: '{}' });
    expect(csrf.status).toBe(403);
    const noOrigin = await fetch(`${baseUrl}api/desktops/desk/checkout`, { method: 'POST', headers: { cookie, 'content-type': 'application/json' }, body: '{}' });
    expect(noOrigin.status).toBe(403);
    const ok = await fetch(`${baseUrl}api/overview`, { headers: { cookie } });
    expect(ok.status).toBe(200);
    expect(existsSync(path.join(a.home, 'desktops', 'desk', 'disk.raw'))).toBe(false);
  });

  it('bad requests with the session are refused with a code and change nothing', async () => {
    const cookie = `carryon_app=${(await context.cookies())[0]!.value}`;
    const origin = baseUrl.replace(/\/$/, '');
    const post = async (pathname: string, body: string, type = 'application/json') => {
      const r = await fetch(baseUrl + pathname, { method: 'POST', headers: { cookie, origin, 'content-type': type }, body });
      return { status: r.status, code: ((await r.json()) as { error: { code: string } }).error.code };
    };
    expect(await post('api/desktops/desk/checkout', 'x=1', 'application/x-www-form-urlencoded')).toEqual({ status: 400, code: 'INVALID_ARGUMENT' });
    expect(await post('api/desktops/desk/renew', '{"code": 5}')).toEqual({ status: 400, code: 'INVALID_ARGUMENT' });
    expect(await post('api/desktops/desk/renew', '[1]')).toEqual({ status: 400, code: 'INVALID_ARGUMENT' });
    expect(await post('api/desktops/desk/renew', 'not json')).toEqual({ status: 400, code: 'INVALID_ARGUMENT' });
    expect(await post('api/desktops/desk/renew', JSON.stringify({ code: 'x'.repeat(5000) }))).toEqual({ status: 413, code: 'PAYLOAD_TOO_LARGE' });
    expect(await post('api/desktops/%E0%A4%A/checkout', '{}')).toEqual({ status: 400, code: 'INVALID_ARGUMENT' });
    expect(await post('api/desktops/desk/explode', '{}')).toEqual({ status: 404, code: 'NOT_FOUND' });
    // Renewing what is not checked out here: the CLI's own error.
    expect(await post('api/desktops/desk/renew', '{}')).toEqual({ status: 409, code: 'NOT_CHECKED_OUT' });
    expect(existsSync(path.join(a.home, 'desktops', 'desk', 'disk.raw'))).toBe(false);
  });

  it('lists the desktops with size, what the laptop holds and the estimate to fetch', async () => {
    const desk = page.locator('section[data-desktop="desk"]');
    expect(await desk.locator('h2').textContent()).toBe('desk');
    expect(await desk.locator('dd.holds').textContent()).toBe('nothing yet');
    expect(await desk.locator('dd.to-fetch').textContent()).toMatch(/^48\.0 MiB \(at most/);
    expect(await page.locator('section[data-desktop="spare"] #checkout-spare').textContent()).toBe('Check out');
    expect(await page.locator('section[data-desktop="spare"] #stream-spare').textContent()).toBe('Check out, streamed');
  });

  it('check-out from the keyboard: Tab to the button, Enter; progress reaches 100% and "ready to travel"', async () => {
    // Record every progress sentence the page shows (the aria-live region), to see it ran, not only finished.
    await page.evaluate(() => {
      const seen: string[] = ((window as any).seen = []);
      new MutationObserver(() => {
        const t = document.getElementById('progress-text-desk')?.textContent;
        if (t && seen[seen.length - 1] !== t) seen.push(t);
      }).observe(document.getElementById('desktops')!, { subtree: true, childList: true, characterData: true });
    });
    await page.focus('body');
    let reached = false;
    for (let i = 0; i < 40 && !reached; i++) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(() => document.activeElement?.id === 'checkout-desk');
    }
    expect(reached, 'Tab never reached the check-out button of desk').toBe(true);
    expect(await page.evaluate(() => document.activeElement?.getAttribute('aria-label'))).toBe('Check out desk');
    await page.keyboard.press('Enter');
    const travel = page.locator('#travel-desk');
    await expect.poll(() => travel.textContent(), { timeout: 60_000 }).toBe('Ready to travel: every block of desk is on this laptop.');
    expect(await travel.getAttribute('class')).toBe('ready');
    expect(await page.locator('#progress-desk').evaluate((p: HTMLProgressElement) => p.value)).toBe(100);
    const seen: string[] = await page.evaluate(() => (window as any).seen);
    expect(seen.some((t) => /^Check-out running \(checkout desk\): \d+%, .* of \d+\.\d MiB, .*\/s, /.test(t)), seen.join('\n')).toBe(true);
    expect(seen[seen.length - 1]).toMatch(/^Check-out finished: 100%/);
    expect(await page.locator('#progress-text-desk').getAttribute('aria-live')).toBeNull(); // the live region is its parent
    expect(await page.locator('#job-desk').getAttribute('aria-live')).toBe('polite');
    // The same facts as `carryon status`.
    const st = await a.cli(['status', 'desk', '--json']);
    expect(st.json.desktops[0]).toMatchObject({ desktop: 'desk', state: 'active', readyToTravel: true });
    expect(await page.locator('section[data-desktop="desk"] dd.travel-state').textContent()).toBe('yes: every block is on this laptop');
    expect(await page.locator('section[data-desktop="desk"] pre.qemu').textContent()).toContain(`nbd:unix:${path.join(a.home, 'run', 'desk.nbd')}:exportname=desk`);
    await shot(page, 'app-ready-to-travel');
  }, 90_000);

  it("serves the disk from the app (carryon serve as its child): serve's state, the QEMU line, blocks written through NBD; stopped cleanly", async () => {
    await page.click('#serve-desk');
    const vm = page.locator('section[data-desktop="desk"] dd.vm-state');
    await expect.poll(() => vm.textContent(), { timeout: 30_000 }).toMatch(/^carryon serve \(pid \d+\) is serving the disk$/);
    const sock = path.join(a.home, 'run', 'desk.nbd');
    expect(await page.locator('section[data-desktop="desk"] pre.qemu').textContent()).toContain(`nbd:unix:${sock}:exportname=desk`);
    expect(await page.locator('section[data-desktop="desk"] details').getAttribute('open')).toBe('');
    // The disk is busy: a check-in from the CLI is refused with the CLI's own lock error.
    expect((await a.cli(['checkin', 'desk', '--json'])).json.error.code).toBe('DISK_IN_USE');
    qemuWrite(`nbd+unix:///desk?socket=${sock}`, [[0x33, 4 * 1024 * 1024, 128 * 1024]]);
    await page.click('#stop-serve-desk');
    await expect.poll(() => vm.textContent()).toBe('not running');
    expect(existsSync(sock)).toBe(false);
    expect(await page.locator('section[data-desktop="desk"] dd.written').textContent()).toMatch(/^[1-9]\d* blocks \(/);
    expect(await page.locator('#serve-desk').count()).toBe(1);
  }, 90_000);

  it('"Make a restore point" sends one, as `carryon replicate` does', async () => {
    await page.click('#replicate-desk');
    await expect.poll(() => page.locator('#progress-text-desk').textContent(), { timeout: 60_000 }).toMatch(/^Restore point #\d+ sent: [1-9]\d* blocks changed since check-out, /);
    const points = await server.admin(['admin', 'restore-points', 'desk']);
    expect(points.code, points.stderr).toBe(0);
    expect(JSON.stringify(points.json)).toMatch(/"blocksChanged":[1-9]/);
  }, 90_000);

  it('a streamed check-out is not "ready to travel" until every block is here; "Download the rest" gets it there', async () => {
    await page.click('#stream-roam');
    const travel = page.locator('#travel-roam');
    await expect.poll(() => page.locator('#progress-text-roam').textContent(), { timeout: 60_000 }).toMatch(/^Streamed check-out ready: /);
    expect(await travel.textContent()).toMatch(/^Not ready to travel yet/);
    expect(await travel.getAttribute('class')).toBe('warning');
    expect(await page.locator('section[data-desktop="roam"] dd.stream-state').textContent()).toMatch(/ local \(\d+\.\d%\); paused: start carryon serve roam/);
    await page.click('#finish-roam');
    await expect.poll(() => travel.textContent(), { timeout: 60_000 }).toBe('Ready to travel: every block of roam is on this laptop.');
    expect((await a.cli(['status', 'roam', '--json'])).json.desktops[0]).toMatchObject({ state: 'active', readyToTravel: true });
  }, 120_000);

  it('the lease counts down; a wrong code is refused in plain words with its code; renewing online works; an admin\'s code works once', async () => {
    const lease = page.locator('#lease-desk');
    const first = await lease.textContent();
    expect(first).toMatch(/^[67] d \d+ h \d+ min \d+ s left$/);
    await expect.poll(() => lease.textContent(), { timeout: 10_000 }).not.toBe(first);
    await page.fill('#code-desk', 'AAAA-BBBB-CCCC');
    await page.click('#use-code-desk');
    await expect.poll(async () => (await page.textContent('#error')) ?? '').toMatch(/\(error LEASE_CODE_INVALID\)$/);
    expect(await page.textContent('#error')).not.toMatch(/at .*\.js:\d+/); // no stack trace
    await page.click('#renew-desk');
    await expect.poll(async () => (await page.locator('#result-desk').textContent()) ?? '').toMatch(/The offline lease of desk now runs until \d{4}-/);
    expect(await page.textContent('#error')).toBe('');
    // A code an admin reads out (works offline): typed into the labelled field, used once.
    const held = (await server.admin(['admin', 'checkouts'])).json.checkouts.find((c: { desktop: string }) => c.desktop === 'desk');
    const lc = await server.admin(['admin', 'lease-code', held.checkoutId, '--days', '30']);
    expect(lc.code, lc.stderr).toBe(0);
    await page.fill('#code-desk', lc.json.code);
    await page.click('#use-code-desk');
    await expect.poll(async () => (await page.locator('#result-desk').textContent()) ?? '').toMatch(new RegExp(`The offline lease of desk now runs until ${lc.json.leaseExpiresAt.slice(0, 13)}.*\\(code #${lc.json.seq}; `));
    // The countdown follows: the code's end (30 days past the server's lease), not the 7 days before.
    const days = Math.floor((Date.parse(lc.json.leaseExpiresAt) - Date.now()) / 86_400_000);
    await expect.poll(() => lease.textContent()).toMatch(new RegExp(`^(${days - 1}|${days}) d `));
    expect(days).toBeGreaterThan(29);
    await page.fill('#code-desk', lc.json.code);
    await page.click('#use-code-desk');
    await expect.poll(async () => (await page.textContent('#error')) ?? '').toMatch(/used already on this laptop.*\(error LEASE_CODE_INVALID\)$/);
  });

  it('a second check-out of the same desktop while one runs is refused; another desktop is not', async () => {
    const cookie = `carryon_app=${(await context.cookies())[0]!.value}`;
    const origin = baseUrl.replace(/\/$/, '');
    const post = (name: string, what: string) => fetch(`${baseUrl}api/desktops/${name}/${what}`, { method: 'POST', headers: { cookie, origin, 'content-type': 'application/json' }, body: '{}' });
    const first = await post('spare', 'checkout');
    expect(first.status).toBe(202);
    const second = await post('spare', 'checkout');
    // Either still running (refused by the app) or already done (nothing to do): never two at once.
    if (second.status !== 202) expect((await second.json()).error.code).toBe('DISK_IN_USE');
    const bad = await post('..%2Fetc', 'checkout');
    expect(bad.status).toBe(400);
    expect((await bad.json()).error.code).toBe('INVALID_ARGUMENT');
    await expect.poll(async () => (await a.cli(['status', 'spare', '--json'])).json?.desktops?.[0]?.state, { timeout: 60_000 }).toBe('active');
  }, 90_000);

  it('what an admin asked: a forced check-in pending shows once the app has been in touch (Renew lease)', async () => {
    const list = await server.admin(['admin', 'checkouts']);
    const held = list.json.checkouts.find((c: { desktop: string }) => c.desktop === 'spare');
    const req = await server.admin(['admin', 'checkin', held.checkoutId]);
    expect(req.code, req.stderr).toBe(0);
    await page.reload();
    await page.click('#renew-spare');
    const asked = page.locator('section[data-desktop="spare"] .admin-request');
    await expect.poll(async () => (await asked.count()) > 0 ? asked.first().textContent() : '').toMatch(new RegExp(`^Your admin asked for a check-in of spare \\(request #${req.json.id}, requested\\)`));
    // The CLI says the same after a renewal.
    const cli = await a.cli(['renew', 'spare']);
    expect(cli.stdout).toMatch(/an admin asked for a check-in \(#\d+, requested\)/);
    // The update line: the client version and what the server offers (no release published here), never a stack.
    await expect.poll(async () => (await page.textContent('#update')) ?? '').not.toBe('');
    expect(await page.textContent('#update')).not.toMatch(/\.js:\d+/);
  });

  it('check-in shows progress and the merge report: the conflict with both copies\' paths', async () => {
    // The persona came with the check-out; device B edits the same file and pushes first.
    expect(readFileSync(path.join(profileA, 'Documents', 'notes.txt'), 'utf8')).toBe('line one\n');
    writeFileSync(path.join(profileB, 'Documents', 'notes.txt'), 'line one\nfrom B\n');
    const push = await b.cli(['persona', 'push', 'desk']);
    expect(push.code, push.stderr).toBe(0);
    writeFileSync(path.join(profileA, 'Documents', 'notes.txt'), 'line one\nfrom A\n');
    // And the VM wrote to the disk (the disk's version moves too).
    qemuWrite(path.join(a.home, 'desktops', 'desk', 'disk.raw'), [[0x5a, 8 * 1024 * 1024, 256 * 1024]]);
    await page.reload();
    await page.click('#checkin-desk');
    const li = page.locator('#result-desk ul.conflicts > li');
    await expect.poll(() => li.count(), { timeout: 60_000 }).toBe(1);
    expect(await li.getAttribute('data-path')).toBe('Documents/notes.txt');
    const at = (await li.locator('code.at').textContent())!;
    const kept = (await li.locator('code.kept').textContent())!;
    expect(at).toBe(path.join(profileA, 'Documents', 'notes.txt'));
    expect(kept).toMatch(new RegExp(`^${profileA.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/Documents/notes \\(conflict laptop-A .*\\)\\.txt$`));
    // Both copies are where the report says.
    expect(readFileSync(at, 'utf8')).toBe('line one\nfrom B\n');
    expect(readFileSync(kept, 'utf8')).toBe('line one\nfrom A\n');
    expect(await page.locator('#progress-text-desk').textContent()).toMatch(/^Checked in: version 1 → 2, [1-9]\d* blocks changed, /);
    expect(await page.locator('#result-desk .merge-summary').textContent()).toMatch(/^1 conflict: /);
    expect(await page.locator('section[data-desktop="desk"] dd.holds').textContent()).toMatch(/read-only copy of version 2/);
    await shot(page, 'app-merge-report');
  }, 90_000);

  it('what an admin did: a rollback carried out by the agent, and where the kept copy is', async () => {
    expect((await server.admin(['admin', 'rollback-policy', 'roam', '--keep'])).code).toBe(0);
    const held = (await server.admin(['admin', 'checkouts'])).json.checkouts.find((c: { desktop: string }) => c.desktop === 'roam');
    expect((await server.admin(['admin', 'rollback', held.checkoutId])).code).toBe(0);
    const agent = await a.cli(['agent', '--once', '--json']);
    expect(agent.code, agent.stderr).toBe(0);
    await page.reload();
    const note = page.locator('section[data-desktop="roam"] p.warning', { hasText: 'rolled this desktop back' });
    await expect.poll(async () => (await note.count()) > 0 ? note.textContent() : '').toMatch(new RegExp(`^An admin rolled this desktop back: an admin \\(.+\\) rolled roam back at .*; your copy was kept at ${a.home.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/kept/`));
    expect(await page.locator('section[data-desktop="roam"] dd.holds').textContent()).toBe('rolled back by an admin');
    // Free to check out again, as the sentence says; the old check-out's "ready to travel" is gone.
    expect(await page.locator('#checkout-roam').count()).toBe(1);
    expect(await page.locator('#travel-roam').textContent()).toBe('');
    // The same agent round carried out the forced check-in of spare asked for above: no request left.
    expect(await page.locator('section[data-desktop="spare"] dd.holds').textContent()).toMatch(/^a read-only copy of version \d+ \(checked in\)$/);
    expect(await page.locator('section[data-desktop="spare"] .admin-request').count()).toBe(0);
  });

  it('the shipped desktop entry validates and starts `carryon app`; the systemd unit runs it without a browser', () => {
    requireTool('desktop-file-validate');
    const entry = path.join(ROOT, 'share', 'carryon.desktop');
    const v = spawnSync('desktop-file-validate', [entry], { encoding: 'utf8' });
    expect(v.status, v.stdout + v.stderr).toBe(0);
    expect(readFileSync(entry, 'utf8')).toMatch(/^Exec=carryon app$/m);
    const unit = readFileSync(path.join(ROOT, 'share', 'carryon-app.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/env carryon app --port \d+ --no-open$/m);
    // The README shows the same unit.
    expect(readFileSync(path.join(ROOT, 'README.md'), 'utf8')).toContain(unit.slice(unit.indexOf('[Unit]')).trim());
    expect((JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { files: string[] }).files).toContain('share');
  });

  it('reads at 200% zoom: one column, no sideways scrolling, controls labelled', async () => {
    const zoomed = await context.newPage();
    await zoomed.setViewportSize({ width: 550, height: 900 }); // 1100 px wide at 200%: 550 CSS px
    await zoomed.goto(baseUrl);
    await zoomed.waitForSelector('#desktops[aria-busy="false"] section[data-desktop="spare"]');
    expect(await zoomed.evaluate(() => document.documentElement.scrollWidth <= document.documentElement.clientWidth)).toBe(true);
    // Every control has a name a screen reader reads.
    const unnamed = await zoomed.evaluate(() => [...document.querySelectorAll('button, input')].filter((e) => !(e.getAttribute('aria-label') || (e as HTMLInputElement).labels?.length)).map((e) => e.outerHTML));
    expect(unnamed).toEqual([]);
    const shotPage = await browser.newPage({ viewport: { width: 550, height: 900 }, deviceScaleFactor: 2 });
    await shotPage.context().addCookies(await context.cookies());
    await shotPage.goto(baseUrl);
    await shotPage.waitForSelector('#desktops[aria-busy="false"] section[data-desktop="spare"]');
    await shot(shotPage, 'app-zoom-200');
    await shotPage.close();
    await zoomed.close();
  });

  it('with the server gone, the page shows what the laptop holds and says why in plain words', async () => {
    await server.stop();
    await page.reload();
    await expect.poll(async () => (await page.textContent('#offline')) ?? '', { timeout: 20_000 }).toMatch(/^The server cannot be reached now, so only what this laptop holds is shown: .*\(error SERVER_UNREACHABLE\)$/);
    expect(await page.locator('section[data-desktop="desk"] dd.holds').textContent()).toBe('a read-only copy of version 2 (checked in)');
    expect(await page.textContent('#offline')).not.toMatch(/\.js:\d+/);
  });
});
