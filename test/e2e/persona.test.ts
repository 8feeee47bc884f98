// The persona travels with the desktop and comes back merged: laptop A checks out and goes offline,
// device B (a persona-only copy) pushes edits, A edits other registry values and the same file, A
// checks in: the merged persona has everything, the conflict copy exists, the report lists it.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodePersona, packEntries, personaId } from '../../src/index.js';
import { Laptop, removeTmp, TestServer, tmpDir } from './harness.js';

/** A .reg file as regedit writes it: UTF-16LE with a BOM, CRLF. */
function regFile(lines: string[]): Buffer {
  const text = ['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n');
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);
}

describe('persona check-out, push, check-in and merge', () => {
  const dir = tmpDir('persona');
  const server = new TestServer(dir);
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'device-b'));
  const profileA = path.join(a.home, 'desktops', 'desk', 'persona', 'profile');
  const profileB = path.join(b.home, 'desktops', 'desk', 'persona', 'profile');

  beforeAll(async () => {
    await server.init();
    const token = await server.addUser('alice');
    writeFileSync(path.join(dir, 'token-alice'), token);
    spawnSync('truncate', ['-s', '4M', path.join(dir, 'img.raw')]);
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    expect((await a.cli(['login', server.url, '--token', token, '--device-name', 'laptop-A'])).code).toBe(0);
    expect((await b.cli(['login', server.url, '--token', token, '--device-name', 'device-B'])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('a persona-only copy takes no lock and pushes a first version', async () => {
    const co = await b.cli(['checkout', 'desk', '--persona-only', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.version).toBe(1);
    mkdirSync(path.join(profileB, 'Documents'), { recursive: true });
    writeFileSync(path.join(profileB, 'Documents', 'notes.txt'), 'line one\n');
    writeFileSync(path.join(profileB, 'Documents', 'mail.mbox'), readFileSync('/usr/share/common-licenses/GPL-3').toString().repeat(8));
    writeFileSync(path.join(dir, 'first.reg'), regFile(['[HKEY_CURRENT_USER\\Software\\Demo]', '"Color"="blue"', '"Size"=dword:00000010', '"Path"=hex(2):25,00,54,00,00,00']));
    expect((await b.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'first.reg')])).code).toBe(0);
    const st = await b.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json.added).toEqual(['Documents', 'Documents/mail.mbox', 'Documents/notes.txt']);
    expect(st.json.registryChanged).toBe(true);
    const push = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.version).toBe(2);
    expect(push.json.merged).toBe(false);
  });

  it('laptop A checks out disk and persona; B pushes more; A edits the same file and other values; A checks in', async () => {
    const co = await a.cli(['checkout', 'desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.persona.version).toBe(2);
    expect(readFileSync(path.join(profileA, 'Documents', 'notes.txt'), 'utf8')).toBe('line one\n');
    expect(readFileSync(path.join(a.home, 'desktops', 'desk', 'persona', 'registry.reg')).subarray(0, 2)).toEqual(Buffer.from([0xff, 0xfe]));

    // device B, online: edits the file and one value, pushes (the mailbox gets one new message)
    writeFileSync(path.join(profileB, 'Documents', 'notes.txt'), 'line one\nfrom B\n');
    writeFileSync(path.join(profileB, 'Documents', 'mail.mbox'), readFileSync(path.join(profileB, 'Documents', 'mail.mbox'), 'utf8') + 'From b@x\nnew message\n');
    writeFileSync(path.join(dir, 'b.reg'), regFile(['[HKEY_CURRENT_USER\\Software\\Demo]', '"Color"="green"']));
    expect((await b.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'b.reg')])).code).toBe(0);
    const push = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.version).toBe(3);
    expect(push.json.sent.deltas).toBe(1); // the mailbox went as an rdiff delta
    expect(push.json.bytesSent).toBeLessThan(20_000);

    // laptop A, offline meanwhile: the same file, another value, a new file, a deleted value
    writeFileSync(path.join(profileA, 'Documents', 'notes.txt'), 'line one\nfrom A\n');
    writeFileSync(path.join(profileA, 'Documents', 'todo.txt'), 'pack\n');
    writeFileSync(path.join(dir, 'a.reg'), regFile(['[HKEY_CURRENT_USER\\Software\\Demo]', '"Size"=dword:00000020', '"Path"=-']));
    expect((await a.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'a.reg')])).code).toBe(0);
    const diff = await a.cli(['persona', 'diff', 'desk', '--json']);
    expect(diff.json.changed).toEqual(['Documents/notes.txt']);
    expect(diff.json.added).toEqual(['Documents/todo.txt']);

    const ci = await a.cli(['checkin', 'desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.persona.version).toBe(4);
    expect(ci.json.persona.merged).toBe(true);
    const conflicts = ci.json.persona.report.conflicts;
    expect(conflicts).toHaveLength(1);
    expect(conflicts[0]).toMatchObject({ kind: 'file', path: 'Documents/notes.txt', reason: 'both-modified', kept: 'both' });
    const copy = conflicts[0].keptCopy as string;
    expect(copy).toMatch(/^Documents\/notes \(conflict laptop-A \d{4}-\d\d-\d\d \d{6}\)\.txt$/);

    // the server's merged version has everything; A's folder now shows it too
    const show = await server.admin(['persona', 'show', 'alice']);
    expect(show.json.version).toBe(4);
    const paths = show.json.files.map((f: { path: string }) => f.path);
    expect(paths).toEqual(expect.arrayContaining(['Documents/notes.txt', copy, 'Documents/todo.txt', 'Documents/mail.mbox']));
    expect(show.json.registry).toContain('"Color"="green"');
    expect(show.json.registry).toContain('"Size"=dword:00000020');
    expect(show.json.registry).not.toContain('"Path"');
    expect(show.json.mergeReport.conflicts).toHaveLength(1);
    expect(readFileSync(path.join(profileA, 'Documents', 'notes.txt'), 'utf8')).toBe('line one\nfrom B\n');
    expect(readFileSync(path.join(profileA, ...copy.split('/')), 'utf8')).toBe('line one\nfrom A\n');
    expect(readFileSync(path.join(profileA, 'Documents', 'mail.mbox'), 'utf8')).toContain('new message');
    const hist = await server.admin(['persona', 'history', 'alice']);
    expect(hist.json.versions.map((v: { source: string }) => v.source)).toEqual(['initial', 'push', 'push', 'checkin']);
  });

  it('a desktop whose policy is "laptop" keeps the pushing laptop\'s file and reports the conflict', async () => {
    const pol = await server.admin(['desktop', 'policy', 'desk', '--files', 'laptop']);
    expect(pol.json).toMatchObject({ filePolicy: 'laptop', registryPolicy: 'newest' });
    writeFileSync(path.join(profileA, 'Documents', 'notes.txt'), 'A again\n');
    const pa = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(pa.code, pa.stderr).toBe(0);
    expect(pa.json.merged).toBe(false); // A's copy was at the newest version
    writeFileSync(path.join(profileB, 'Documents', 'notes.txt'), 'B again\n');
    const pb = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(pb.code, pb.stderr).toBe(0);
    expect(pb.json.merged).toBe(true);
    expect(pb.json.report.conflicts).toEqual([expect.objectContaining({ path: 'Documents/notes.txt', reason: 'both-modified', kept: 'ours' })]);
    expect(readFileSync(path.join(profileB, 'Documents', 'notes.txt'), 'utf8')).toBe('B again\n');
    const show = await server.admin(['persona', 'show', 'alice']);
    expect(show.json.files.filter((f: { path: string }) => f.path.startsWith('Documents/notes (conflict'))).toHaveLength(1); // only the earlier one
  });

  it('a server killed before the commit leaves disk and persona at their old versions; the re-run moves both', async () => {
    const co = await a.cli(['checkout', 'desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    spawnSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 65536 4096', co.json.disk]);
    writeFileSync(path.join(profileA, 'Documents', 'crash.txt'), 'written before the crash\n');
    const versions = async () => {
      const st = (await server.admin(['status'])).json;
      const ph = (await server.admin(['persona', 'history', 'alice'])).json;
      return { disk: st.desktops[0].version as number, persona: ph.versions.length as number };
    };
    const before = await versions();
    const port = server.port();
    await server.stop();
    await server.start({ CARRYON_CRASH_AT: 'commit-before-transaction:1' }, port);
    const killed = await a.cli(['checkin', 'desk', '--json']);
    expect(killed.code).toBe(7);
    expect((await server.exited()).signal).toBe('SIGKILL');
    expect(await versions()).toEqual(before);
    await server.start({}, port);
    const again = await a.cli(['checkin', 'desk', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(await versions()).toEqual({ disk: before.disk + 1, persona: before.persona + 1 });
    expect((await server.admin(['persona', 'show', 'alice'])).json.files.map((f: { path: string }) => f.path)).toContain('Documents/crash.txt');
  });

  it('a file name Windows cannot hold stops a push with a clear error, and nothing changes', async () => {
    const before = (await server.admin(['persona', 'history', 'alice'])).json.versions.length;
    writeFileSync(path.join(profileA, 'Documents', 'aux.txt'), 'reserved on Windows\n');
    const r = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(r.code).toBe(2);
    expect(r.json.error.code).toBe('BAD_REQUEST');
    expect(r.json.error.message).toMatch(/Documents\/aux\.txt/);
    expect((await server.admin(['persona', 'history', 'alice'])).json.versions.length).toBe(before);
    rmSync(path.join(profileA, 'Documents', 'aux.txt'));
  });

  it('a case-only rename on one laptop and an edit of the same file on another both survive', async () => {
    writeFileSync(path.join(profileB, 'Documents', 'todo.txt'), 'pack\npassport\n');
    const pb = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(pb.code, pb.stderr).toBe(0);
    // A, still on the version before B's push, renames the file (case only) and pushes.
    const { renameSync } = await import('node:fs');
    renameSync(path.join(profileA, 'Documents', 'todo.txt'), path.join(profileA, 'Documents', 'ToDo.txt'));
    const pa = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(pa.code, pa.stderr).toBe(0);
    expect(pa.json.merged).toBe(true);
    expect(pa.json.report.conflicts).toEqual([]);
    const show = await server.admin(['persona', 'show', 'alice']);
    const paths = show.json.files.map((f: { path: string }) => f.path);
    expect(paths).toContain('Documents/ToDo.txt');
    expect(paths).not.toContain('Documents/todo.txt');
    expect(readFileSync(path.join(profileA, 'Documents', 'ToDo.txt'), 'utf8')).toBe('pack\npassport\n');
    expect(spawnSync('test', ['-e', path.join(profileA, 'Documents', 'todo.txt')]).status).toBe(1);
  });

  it('discard throws away the persona copy with the disk', async () => {
    const d = await b.cli(['discard', 'desk', '--yes', '--json']);
    expect(d.code, d.stderr).toBe(0);
    expect(d.json.persona).toBe(path.dirname(profileB));
    expect(spawnSync('test', ['-e', profileB]).status).toBe(1);
    const st = await b.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json.error.code).toBe('NOT_CHECKED_OUT');
  });

  it('refuses a persona snapshot with a path that escapes the profile, and changes nothing', async () => {
    const before = (await server.admin(['persona', 'history', 'alice'])).json.versions.length;
    // a delta against version 1 (the empty persona) adding an entry outside the profile
    const emptyId = personaId(encodePersona({ files: [], registry: '' }));
    const bad = JSON.stringify({ baseId: emptyId, id: emptyId, registry: null, remove: [], upsert: [{ path: '../../etc/passwd', kind: 'dir', mode: 493, mtimeMs: 0, size: 0, hash: null, chunks: [] }] });
    const parts: Buffer[] = [];
    for await (const c of packEntries([{ name: 'persona-delta.json', data: Buffer.from(bad) }, { name: 'push.json', data: Buffer.from(JSON.stringify({ baseVersion: 1, desktop: 'desk', deviceName: 'x', editedAt: 1 })) }])) parts.push(c as Buffer);
    const token = readFileSync(path.join(dir, 'token-alice'), 'utf8');
    const res = await fetch(`${server.url}/v1/persona/push`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/x-tar' }, body: Buffer.concat(parts) });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('BAD_REQUEST');
    expect(body.error.message).toMatch(/\.\.\/\.\.\/etc\/passwd/);
    expect((await server.admin(['persona', 'history', 'alice'])).json.versions.length).toBe(before);
  });
});
