// Per-value registry sync with the real CLI and server: a one-value change of a large registry sends a
// few hundred bytes, not the registry; and "newest wins" is decided per value, by when the laptop first
// saw each value change (registry.reg's mtime at a scan), against when the server's side changed it.
import { spawnSync } from 'node:child_process';
import { statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generatedKeyPath, generatedRegistryFile, oneValueEdit } from '../../scripts/fixtures/registry.js';
import { Laptop, removeTmp, TestServer, tmpDir } from './harness.js';

/** A .reg file as regedit writes it: UTF-16LE with a BOM, CRLF. */
function regFile(lines: string[]): Buffer {
  const text = ['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n');
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);
}

const KEYS = 30_000;
const DEMO = 'HKEY_CURRENT_USER\\Software\\Demo';

describe('registry sync: only changed values travel, newest wins per value', () => {
  const dir = tmpDir('registry-sync');
  const server = new TestServer(dir);
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'device-b'));
  const regA = path.join(a.home, 'desktops', 'desk', 'persona', 'registry.reg');
  const file = (name: string, bytes: Buffer): string => {
    const p = path.join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };

  beforeAll(async () => {
    await server.init();
    const token = await server.addUser('alice');
    spawnSync('truncate', ['-s', '4M', path.join(dir, 'img.raw')]);
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img', '--encryption', 'off'])).code).toBe(0);
    await server.start();
    expect((await a.cli(['login', server.url, '--token', token, '--device-name', 'laptop-A'])).code).toBe(0);
    expect((await b.cli(['login', server.url, '--token', token, '--device-name', 'device-B'])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it(`a one-dword change of a ${KEYS}-key registry sends under 4 KB more than a check-in with no registry change`, async () => {
    expect((await a.cli(['checkout', 'desk', '--json'])).code).toBe(0);
    const whole = file('whole.reg', generatedRegistryFile(KEYS, 7));
    const imp = await a.cli(['persona', 'reg', 'import', 'desk', whole, '--json']);
    expect(imp.code, imp.stderr + imp.stdout).toBe(0);
    expect(imp.json.keys).toBe(KEYS);
    expect((await a.cli(['persona', 'reg', 'import', 'desk', file('seed.reg', oneValueEdit(123, 'Counter', 0))])).code).toBe(0);
    const first = await a.cli(['checkin', 'desk', '--json']);
    expect(first.code, first.stderr + first.stdout).toBe(0);
    expect(first.json.bytesSent).toBeGreaterThan(500_000); // the whole registry, once

    expect((await a.cli(['checkout', 'desk', '--json'])).code).toBe(0);
    const none = await a.cli(['checkin', 'desk', '--json']);
    expect(none.code, none.stderr).toBe(0);
    expect(none.json.persona.changed).toBe(false);

    expect((await a.cli(['checkout', 'desk', '--json'])).code).toBe(0);
    expect((await a.cli(['persona', 'reg', 'import', 'desk', file('one.reg', oneValueEdit(123, 'Counter', 0xbeef))])).code).toBe(0);
    const st = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json.registryChanged).toBe(true);
    const one = await a.cli(['checkin', 'desk', '--json']);
    expect(one.code, one.stderr).toBe(0);
    expect(one.json.persona.changed).toBe(true);
    const extra = one.json.bytesSent - none.json.bytesSent;
    expect(extra).toBeGreaterThan(0);
    expect(extra).toBeLessThan(4096);
    expect(statSync(regA).size).toBeGreaterThan(1000 * extra); // the file itself is megabytes

    const show = await server.admin(['persona', 'show', 'alice']);
    expect(show.json.registry).toContain(`[${generatedKeyPath(123)}]`);
    expect(show.json.registry).toContain('"Counter"=dword:0000beef');
    expect(show.json.registry.split('\r\n\r\n[').length - 1).toBe(KEYS);
  }, 300_000);

  it('two values edited on the laptop at different times, both changed on the server in between: one resolves to each side', async () => {
    expect((await a.cli(['checkout', 'desk', '--json'])).code).toBe(0);
    expect((await b.cli(['checkout', 'desk', '--persona-only', '--json'])).code).toBe(0);
    // Laptop A edits "Early" and carryon sees it (a scan) with registry.reg dated an hour back.
    expect((await a.cli(['persona', 'reg', 'import', 'desk', file('a1.reg', regFile([`[${DEMO}]`, '"Early"="laptop"']))])).code).toBe(0);
    const hourAgo = new Date(Date.now() - 3600_000);
    utimesSync(regA, hourAgo, hourAgo);
    expect((await a.cli(['persona', 'status', 'desk', '--json'])).json.registryChanged).toBe(true);
    // Device B changes both values and pushes: the server's side changes them now.
    expect((await b.cli(['persona', 'reg', 'import', 'desk', file('b.reg', regFile([`[${DEMO}]`, '"Early"="server"', '"Late"="server"']))])).code).toBe(0);
    const push = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    await new Promise((r) => setTimeout(r, 1100)); // registry.reg's next mtime is after the push's commit
    // Then A edits "Late": seen at the check-in's scan, dated by the file's new mtime; "Early" keeps its hour-old time.
    expect((await a.cli(['persona', 'reg', 'import', 'desk', file('a2.reg', regFile([`[${DEMO}]`, '"Late"="laptop"']))])).code).toBe(0);
    const ci = await a.cli(['checkin', 'desk', '--json']);
    expect(ci.code, ci.stderr + ci.stdout).toBe(0);
    expect(ci.json.persona.merged).toBe(true);
    const conflicts = ci.json.persona.report.conflicts.map((c: { path: string; kept: string; reason: string }) => [c.path, c.kept, c.reason]);
    expect(conflicts).toEqual([[`${DEMO}\\Early`, 'theirs', 'both-added'], [`${DEMO}\\Late`, 'ours', 'both-added']]);
    const show = await server.admin(['persona', 'show', 'alice']);
    expect(show.json.registry).toContain(`[${DEMO}]\r\n"Early"="server"\r\n"Late"="laptop"\r\n`);
  }, 300_000);
});
