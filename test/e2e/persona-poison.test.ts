// A persona with a registry that is not a .reg file must never become a version (every later check-in
// and check-out would fail on it), and an admin can put a user's persona back to an earlier version:
// for a persona poisoned before the server checked registries, and for any other bad push.
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { API_PREFIX, decodePersona, encodePersona, packEntries, personaId, type PersonaSnapshot } from '../../src/index.js';
import { http, Laptop, removeTmp, TestServer, tmpDir } from './harness.js';

function regFile(lines: string[]): Buffer {
  const text = ['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n');
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);
}

async function tar(entries: Array<{ name: string; data: Buffer }>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of packEntries(entries)) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe('a poisoned persona registry: refused, and repaired by an admin', () => {
  const dir = tmpDir('persona-poison');
  const server = new TestServer(dir);
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const c = new Laptop(path.join(dir, 'laptop-c'));
  let token = '';

  const history = async (): Promise<any[]> => (await server.admin(['persona', 'history', 'alice'])).json.versions;
  /** A push of `to` made from `from` (version `baseVersion`), as the laptop's tar of persona-delta.json and push.json. */
  const pushBody = (from: PersonaSnapshot, to: PersonaSnapshot, baseVersion: number): Promise<Buffer> => {
    const delta = { baseId: personaId(encodePersona(from)), id: personaId(encodePersona(to)), upsert: [], remove: [], registry: to.registry };
    const push = { baseVersion, desktop: 'desk', deviceName: 'hostile', editedAt: Date.now() };
    return tar([{ name: 'persona-delta.json', data: Buffer.from(JSON.stringify(delta)) }, { name: 'push.json', data: Buffer.from(JSON.stringify(push)) }]);
  };

  beforeAll(async () => {
    await server.init();
    token = await server.addUser('alice');
    spawnSync('truncate', ['-s', '4M', path.join(dir, 'img.raw')]);
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    for (const l of [a, c]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
    // version 2: a good registry and a file
    expect((await a.cli(['checkout', 'desk', '--persona-only'])).code).toBe(0);
    const profile = path.join(a.home, 'desktops', 'desk', 'persona', 'profile');
    mkdirSync(path.join(profile, 'Documents'), { recursive: true });
    writeFileSync(path.join(profile, 'Documents', 'notes.txt'), 'notes\n');
    writeFileSync(path.join(dir, 'good.reg'), regFile(['[HKEY_CURRENT_USER\\Software\\Demo]', '"Color"="blue"']));
    expect((await a.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'good.reg')])).code).toBe(0);
    const push = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.version).toBe(2);
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('a push whose registry is not a .reg file is refused with BAD_REQUEST naming the line, and makes no version', async () => {
    const v2 = decodePersona((await http(server.url, 'GET', `${API_PREFIX}/persona`, token)).body);
    for (const registry of ['this is not a registry file', 'Windows Registry Editor Version 5.00\r\n\r\n[HKEY_CURRENT_USER\\Software\r\n"x"=dword:zz\r\n']) {
      const r = await http(server.url, 'POST', `${API_PREFIX}/persona/push`, token, await pushBody(v2, { ...v2, registry }, 2), { 'content-type': 'application/x-tar' });
      expect(r.status, r.body.toString()).toBe(400);
      expect(r.json.error.code).toBe('BAD_REQUEST');
      expect(r.json.error.message).toMatch(/registry is not a valid \.reg file: line \d+, column \d+/);
    }
    expect((await history()).map((v) => v.version)).toEqual([1, 2]);
  });

  it('a version poisoned before the server checked: check-outs fail until the admin restores version 2; then they work and a push merges onto it', async () => {
    // What an older server stored: version 3 with a registry no parser reads.
    const v2 = decodePersona((await http(server.url, 'GET', `${API_PREFIX}/persona`, token)).body);
    const bad = encodePersona({ ...v2, registry: 'this is not a registry file' });
    const db = new Database(path.join(server.data, 'carryon.db'));
    try {
      db.prepare('INSERT INTO persona_snapshots (id, encoded, created_at) VALUES (?, ?, ?)').run(personaId(bad), bad, new Date().toISOString());
      db.prepare("INSERT INTO persona_versions (user_id, version, snapshot_id, source, device_name, created_at) SELECT id, 3, ?, 'push', 'old-server', ? FROM users WHERE name = 'alice'").run(personaId(bad), new Date().toISOString());
    } finally {
      db.close();
    }
    const broken = await c.cli(['checkout', 'desk', '--persona-only', '--json']);
    expect(broken.code).not.toBe(0);
    expect(broken.json.error.message).toMatch(/persona version 3 holds a registry that cannot be read.*nothing was changed on this laptop: ask an admin .*persona restore/);

    // Restoring the poisoned version itself is refused, and says what to do.
    const refused = await server.admin(['persona', 'restore', 'alice', '3']);
    expect(refused.code).toBe(2);
    expect(refused.json.error.message).toMatch(/cannot be restored.*pick an earlier version/);

    const restored = await server.admin(['persona', 'restore', 'alice', '2']);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.json).toEqual({ user: 'alice', version: 4, restoredFrom: 2, changed: true });
    const h = await history();
    expect(h.map((v) => [v.version, v.source, v.restoredFrom])).toEqual([[1, 'initial', null], [2, 'push', null], [3, 'push', null], [4, 'restore', 2]]);
    const audit = (await server.admin(['admin', 'audit'])).json.audit;
    expect(audit.find((x: any) => x.action === 'persona.restore')).toMatchObject({ target: 'user:alice', detail: { version: 4, restoredFrom: 2, previous: 3 } });

    const fixed = await c.cli(['checkout', 'desk', '--persona-only', '--json']);
    expect(fixed.code, fixed.stderr).toBe(0);
    expect(fixed.json.version).toBe(4);
    // laptop A, still on version 2, edits and pushes: merged onto the restored version
    writeFileSync(path.join(a.home, 'desktops', 'desk', 'persona', 'profile', 'Documents', 'notes.txt'), 'notes\nmore\n');
    const push = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.version).toBe(5);
  });
});
