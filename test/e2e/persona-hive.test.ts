// The registry as Windows has it, through the real CLIs: a user's NTUSER.DAT imported into the persona
// (hivex), .reg files outside HKEY_CURRENT_USER refused with their line at import and at the server (a
// hand-edited registry.reg pushed: nothing stored), an admin's include/exclude lists (CLI and HTTP,
// audited) reaching the laptop with the check-out so `persona status` names what will be dropped, the
// server dropping and reporting excluded keys, and the persona written back for a Windows guest: a
// hive merged into the user's NTUSER.DAT, and a changes file with regedit's deletions.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readHive } from '../../client/hive.js';
import { applyToRegistry, decodeRegDword, decodeRegFile, decodeRegSz, Registry } from '../../src/index.js';
import { Laptop, removeTmp, ROOT, TestServer, tmpDir } from './harness.js';

function regFile(lines: string[]): Buffer {
  const text = ['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n');
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);
}
const registryOf = (bytes: Buffer): Registry => applyToRegistry(new Registry(), decodeRegFile(bytes));

describe('persona registry: hives, HKEY_CURRENT_USER only, include/exclude lists, guest export', () => {
  const dir = tmpDir('persona-hive');
  const server = new TestServer(dir);
  const a = new Laptop(path.join(dir, 'laptop'));
  const personaDir = path.join(a.home, 'desktops', 'desk', 'persona');
  const regPath = path.join(personaDir, 'registry.reg');
  const ntuser = path.join(dir, 'NTUSER.DAT');
  let adminToken = '';
  let aliceToken = '';

  beforeAll(async () => {
    writeFileSync(ntuser, execFileSync('xz', ['-dc', path.join(ROOT, 'test/fixtures/hives/regipy-NTUSER.DAT.xz')], { maxBuffer: 16 << 20 }));
    await server.init();
    const token = await server.addUser('alice');
    aliceToken = token;
    adminToken = (await server.admin(['user', 'add', 'ops', '--admin'])).json.token;
    spawnSync('truncate', ['-s', '4M', path.join(dir, 'img.raw')]);
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    expect((await a.cli(['login', server.url, '--token', token, '--device-name', 'laptop'])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('an admin sets the lists from the command line and over HTTP; bad patterns are refused; both are audited', async () => {
    const bad = await server.admin(['desktop', 'policy', 'desk', '--registry-include', 'HKEY_LOCAL_MACHINE\\SOFTWARE']);
    expect(bad.code).toBe(2);
    expect(bad.json.error.code).toBe('INVALID_ARGUMENT');
    const set = await server.admin(['desktop', 'policy', 'desk', '--registry-exclude', '@default', '--registry-exclude', 'HKCU\\Software\\Vendor\\Cache']);
    expect(set.code, set.stderr).toBe(0);
    expect(set.json.registryExclude).toEqual(['@default', 'Software\\Vendor\\Cache']);
    expect(set.json.registryScope.exclude).toContain('Software\\**\\*MRU*');
    expect(set.json.registryInclude).toBeNull();
    const badHttp = await fetch(`${server.url}/v1/admin/desktops/desk/policy`, { method: 'POST', headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ registryInclude: 'Software' }) });
    expect(badHttp.status).toBe(400);
    const res = await fetch(`${server.url}/v1/admin/desktops/desk/policy`, { method: 'POST', headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ registryInclude: ['Software', 'Control Panel', 'Console', 'AppEvents'] }) });
    expect(res.status).toBe(200);
    expect(((await res.json()) as any).registryInclude).toEqual(['Software', 'Control Panel', 'Console', 'AppEvents']);
    const audit = (await server.admin(['admin', 'audit', '--limit', '100'])).json.audit as any[];
    expect(audit.filter((r) => r.action === 'desktop.registry-scope' && r.target === 'desktop:desk')).toHaveLength(2);
  });

  it('a check-out brings the lists; importing the NTUSER.DAT fills the registry, within them', async () => {
    const co = await a.cli(['checkout', 'desk', '--persona-only', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const scope = JSON.parse(readFileSync(path.join(personaDir, 'registry-scope.json'), 'utf8'));
    expect(scope.include).toEqual(['Software', 'Control Panel', 'Console', 'AppEvents']);
    expect(scope.exclude).toContain('Software\\Vendor\\Cache');
    const imp = await a.cli(['persona', 'reg', 'import', 'desk', ntuser, '--json']);
    expect(imp.code, imp.stderr).toBe(0);
    expect(imp.json).toMatchObject({ kind: 'hive', replaced: true });
    expect(imp.json.dropped).toBeGreaterThan(0); // Environment, Keyboard Layout, ... and the MRU lists
    const reg = registryOf(readFileSync(regPath));
    expect(reg.size).toBe(imp.json.keys);
    expect(decodeRegSz(reg.getValue('HKEY_CURRENT_USER\\AppEvents\\EventLabels\\.Default', null)!.data)).toBe('Default Beep');
    expect(reg.keys().some((k) => /MRU/i.test(k.path))).toBe(false);
    expect(reg.keys().some((k) => k.path.startsWith('HKEY_CURRENT_USER\\Environment'))).toBe(false);
    const push = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.version).toBe(2);
    expect(push.json.registryDropped).toBeUndefined();
  }, 60_000);

  it('a .reg outside HKEY_CURRENT_USER is refused at import with its line; a ZIP is named; registry.reg is untouched', async () => {
    const before = readFileSync(regPath);
    writeFileSync(path.join(dir, 'hklm.reg'), regFile(['[HKEY_CURRENT_USER\\Software\\Vendor]', '"a"=dword:00000001', '', '[HKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\Vendor]', '"b"=dword:00000001']));
    const r = await a.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'hklm.reg'), '--json']);
    expect(r.code).toBe(2);
    expect(r.json.error.code).toBe('REGISTRY_OUTSIDE_HKCU');
    expect(r.json.error.message).toMatch(/^line 6, column 2: key HKEY_LOCAL_MACHINE is outside HKEY_CURRENT_USER/);
    writeFileSync(path.join(dir, 'export.zip'), Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(100)]));
    const z = await a.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'export.zip'), '--json']);
    expect(z.code).toBe(2);
    expect(z.json.error.code).toBe('REG_FILE_UNSUPPORTED');
    expect(z.json.error.message).toMatch(/looks like a ZIP archive.*NTUSER\.DAT/);
    expect(readFileSync(regPath).equals(before)).toBe(true);
  });

  it('the server refuses a registry.reg edited by hand to hold HKEY_LOCAL_MACHINE: nothing stored', async () => {
    const good = readFileSync(regPath);
    const text = good.toString('utf16le', 2) + '[HKEY_LOCAL_MACHINE\\SOFTWARE\\Evil]\r\n"Run"="calc.exe"\r\n\r\n';
    writeFileSync(regPath, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]));
    const push = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code).toBe(2);
    expect(push.json.error.code).toBe('REGISTRY_OUTSIDE_HKCU');
    expect(push.json.error.message).toMatch(/^line \d+ of the persona's registry: key \[HKEY_LOCAL_MACHINE\\SOFTWARE\\Evil\] is outside HKEY_CURRENT_USER/);
    const history = (await server.admin(['persona', 'history', 'alice'])).json;
    expect((history.versions ?? history).length).toBe(2);
    writeFileSync(regPath, good);
  });

  it('persona status names excluded keys before a push; the server drops and reports them; the laptop follows the stored version', async () => {
    const edits = path.join(dir, 'edits.reg');
    writeFileSync(edits, regFile(['[HKEY_CURRENT_USER\\Software\\Vendor]', '"Theme"="dark"', '"Gone"=dword:00000001']));
    expect((await a.cli(['persona', 'reg', 'import', 'desk', edits])).code).toBe(0);
    // a key the import would have left out, added by hand: status warns, the server drops it
    const text = readFileSync(regPath).toString('utf16le', 2) + '[HKEY_CURRENT_USER\\Software\\Vendor\\Cache\\Thumbs]\r\n"x"=hex:01,02\r\n\r\n';
    writeFileSync(regPath, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]));
    const st = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json.registryDropped).toEqual([{ key: 'HKEY_CURRENT_USER\\Software\\Vendor\\Cache\\Thumbs', reason: 'excluded' }]);
    const push = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.registryDropped).toEqual({ count: 1, keys: ['HKEY_CURRENT_USER\\Software\\Vendor\\Cache\\Thumbs'] });
    const stored = (await server.admin(['persona', 'show', 'alice'])).json.registry as string;
    expect(stored).toContain('"Theme"="dark"');
    expect(stored).not.toContain('Cache\\Thumbs');
    expect(registryOf(readFileSync(regPath)).hasKey('HKEY_CURRENT_USER\\Software\\Vendor\\Cache\\Thumbs')).toBe(false);
    const after = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(after.json.registryChanged).toBe(false);
  }, 60_000);

  it('writes the persona back for the guest: a hive merged into the NTUSER.DAT, and a changes file with regedit deletions', async () => {
    // The guest had the NTUSER.DAT as it is, with "Gone" set; the persona since dropped "Gone".
    writeFileSync(path.join(dir, 'drop.reg'), regFile(['[HKEY_CURRENT_USER\\Software\\Vendor]', '"Gone"=-']));
    expect((await a.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'drop.reg')])).code).toBe(0);
    const out = path.join(dir, 'NTUSER.out.DAT');
    const hx = await a.cli(['persona', 'reg', 'export', 'desk', out, '--base', ntuser, '--json']);
    expect(hx.code, hx.stderr).toBe(0);
    expect(hx.json.valuesSet).toBe(1); // Theme: the rest of the hive already matches the persona
    const hive = (await readHive(out)).registry;
    expect(decodeRegSz(hive.getValue('HKEY_CURRENT_USER\\Software\\Vendor', 'Theme')!.data)).toBe('dark');
    expect(hive.keys().some((k) => k.path.startsWith('HKEY_CURRENT_USER\\Environment'))).toBe(true); // outside the lists: kept as the guest had it
    // the guest's last logoff export had Gone=1 and an old key: the changes delete both, regedit style
    const guest = path.join(dir, 'guest-logoff.reg');
    writeFileSync(guest, regFile(['[HKEY_CURRENT_USER\\Software\\Vendor]', '"Theme"="light"', '"Gone"=dword:00000001', '', '[HKEY_CURRENT_USER\\Software\\Vendor\\Old]', '"o"="1"']));
    const changes = path.join(dir, 'registry-changes.reg');
    const ch = await a.cli(['persona', 'reg', 'export', 'desk', changes, '--changes-since', guest, '--json']);
    expect(ch.code, ch.stderr).toBe(0);
    const bytes = readFileSync(changes);
    expect([...bytes.subarray(0, 2)]).toEqual([0xff, 0xfe]);
    const t = bytes.toString('utf16le', 2);
    expect(t).toContain('[-HKEY_CURRENT_USER\\Software\\Vendor\\Old]\r\n');
    expect(t).toContain('[HKEY_CURRENT_USER\\Software\\Vendor]\r\n"Theme"="dark"\r\n"Gone"=-\r\n');
    expect(ch.json).toMatchObject({ kind: 'changes', valuesDeleted: 1, keysDeleted: 1 });
    expect(decodeRegDword(registryOf(readFileSync(path.join(dir, 'guest-logoff.reg'))).getValue('HKEY_CURRENT_USER\\Software\\Vendor', 'Gone')!.data)).toBe(1);
  }, 60_000);

  it("a guest's logoff export (reg.exe's layout) replaces the registry within the lists; the next changes file for that guest is empty", async () => {
    const logoff = path.join(personaDir, 'registry-logoff.reg');
    writeFileSync(logoff, readFileSync(path.join(ROOT, 'test/fixtures/reg-exe/hkcu-export.reg')));
    const imp = await a.cli(['persona', 'reg', 'import', 'desk', logoff, '--replace', '--json']);
    expect(imp.code, imp.stderr).toBe(0);
    expect(imp.json).toMatchObject({ kind: 'reg', replaced: true, dropped: 1 }); // Environment: not in the include list
    const reg = registryOf(readFileSync(regPath));
    expect(reg.getValue('HKEY_CURRENT_USER\\Software\\Vendor', 'Theme')).toBeUndefined(); // the guest no longer had it
    expect(decodeRegSz(reg.getValue('HKEY_CURRENT_USER\\Software\\Vendor\\Editor', null)!.data)).toBe('default value');
    expect(reg.hasKey('HKEY_CURRENT_USER\\Environment')).toBe(false);
    const st = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json.registryChanged).toBe(true);
    expect(st.json.registryDropped).toEqual([]);
    const ch = await a.cli(['persona', 'reg', 'export', 'desk', path.join(personaDir, 'registry-changes.reg'), '--changes-since', logoff, '--json']);
    expect(ch.code, ch.stderr).toBe(0);
    expect(ch.json).toMatchObject({ valuesSet: 0, valuesDeleted: 0, keysDeleted: 0 });
  }, 60_000);

  it('a check-out into a folder where a Windows guest logged off writes registry-changes.reg for its next logon', async () => {
    writeFileSync(path.join(dir, 'font.reg'), regFile(['[HKEY_CURRENT_USER\\Software\\Vendor\\Editor]', '"Font"="Mono"', '"Empty"=-']));
    expect((await a.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'font.reg')])).code).toBe(0);
    const push = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    const co = await a.cli(['checkout', 'desk', '--persona-only', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.guestChanges).toBe(1);
    const t = readFileSync(path.join(personaDir, 'registry-changes.reg')).toString('utf16le', 2);
    expect(t).toBe('Windows Registry Editor Version 5.00\r\n\r\n[HKEY_CURRENT_USER\\Software\\Vendor\\Editor]\r\n"Font"="Mono"\r\n"Empty"=-\r\n\r\n');
  }, 60_000);

  it('a disk check-out brings the lists with the checkout itself', async () => {
    const b = new Laptop(path.join(dir, 'laptop-b'));
    expect((await b.cli(['login', server.url, '--token', aliceToken, '--device-name', 'laptop-b'])).code).toBe(0);
    const co = await b.cli(['checkout', 'desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const scope = JSON.parse(readFileSync(path.join(co.json.persona.dir, 'registry-scope.json'), 'utf8'));
    expect(scope).toEqual({ include: ['Software', 'Control Panel', 'Console', 'AppEvents'], exclude: expect.arrayContaining(['Software\\Vendor\\Cache', 'Software\\**\\*MRU*']) });
  }, 60_000);
});
