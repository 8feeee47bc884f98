// Encryption at rest, the server's side (issue 10): the encryption policy of images and desktops, the
// escrow key pair in the data folder, a laptop's escrow deposit, the ESCROW_MISSING gate in front of
// disk blocks and persona data, and an admin's recovery code, all on the real server over HTTP. The
// laptop CLI does not encrypt or escrow yet, so deposits are raw requests made as a laptop would make
// them (src/crypto sealToEscrow, aad = the checkout id).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import nodeHttp from 'node:http';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  API_PREFIX, blockId, CONTENT_MANIFEST, CONTENT_TAR, DiskManifest, decodeManifest, decodeRecoveryCode, encodeManifest, encodePersona, encodeRecoveryCode, HEADER_DEVICE, keyCheck, manifestId, MAX_ESCROW_BYTES,
  newDataKey, newEscrowKeyPair, packEntries, personaId, sealToEscrow, sha256, type PersonaSnapshot, type TarEntry,
} from '../../src/index.js';
import { MIGRATIONS } from '../../server/migrations.js';
import { Laptop, removeTmp, ROOT, run, TestServer, tmpDir } from './harness.js';

interface Res { status: number; json: any; body: Buffer }

const dev = (n: number): string => `eeeeeeee-0000-4000-8000-${String(n).padStart(12, '0')}`;
const D1 = dev(1); // alice's laptop: holds the checkouts
const D2 = dev(2); // alice's second laptop: holds nothing
const EPOCH_MS = 1_700_000_000_000;
const SECRET = Buffer.from('alice persona: the profile file that must not reach an unencrypted laptop\n');
const CHUNK = blockId(SECRET);
const EMPTY: PersonaSnapshot = { files: [], registry: '' };
const SNAP: PersonaSnapshot = {
  files: [{ path: 'notes.txt', kind: 'file', mode: 0o644, mtimeMs: EPOCH_MS, size: SECRET.length, hash: sha256(SECRET).toString('hex'), chunks: [CHUNK] }],
  registry: '',
};

/** One request on its own connection (a refusal may close it before the body is read). */
function send(url: string, method: string, pathname: string, token: string | null, body?: Buffer | string, headers: Record<string, string> = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string> = { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-length': String(Buffer.byteLength(body)) } : {}), ...headers };
    const q = nodeHttp.request(url + API_PREFIX + pathname, { method, agent: false, headers: h }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const buf = Buffer.concat(parts);
        let json: any = null;
        try {
          json = JSON.parse(buf.toString('utf8'));
        } catch {
          /* binary */
        }
        resolve({ status: res.statusCode!, json, body: buf });
      });
    });
    q.on('error', reject);
    q.end(body);
  });
}

async function tar(entries: TarEntry[]): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of packEntries(entries)) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const snapId = (s: PersonaSnapshot): string => personaId(encodePersona(s));

describe('escrow of laptop data keys (server side)', () => {
  const dir = tmpDir('escrow');
  const server = new TestServer(dir, { encryption: 'required' });
  const escrowDir = path.join(server.data, 'escrow');
  const t = { alice: '', bob: '', root: '', d1: '', d2: '' };
  const asD1 = { [HEADER_DEVICE]: D1 };
  const asD2 = { [HEADER_DEVICE]: D2 };
  let pub = '';
  let firstBlock = '';
  const call = (method: string, p: string, token: string | null, body?: unknown, headers: Record<string, string> = {}): Promise<Res> =>
    send(server.url, method, p, token, body === undefined ? undefined : Buffer.isBuffer(body) || typeof body === 'string' ? body : JSON.stringify(body), headers);
  const ok = async (method: string, p: string, token: string, body?: unknown, headers: Record<string, string> = {}): Promise<any> => {
    const r = await call(method, p, token, body, headers);
    expect(r.status, `${method} ${p}: ${r.body.toString().slice(0, 400)}`).toBe(200);
    return r.json;
  };
  const errorOf = (r: Res) => ({ status: r.status, code: r.json?.error?.code as string | undefined });
  const checkOut = (desk: string, token = t.d1, device = D1) => ok('POST', `/desktops/${desk}/checkouts`, token, { device, deviceName: device === D1 ? 'alice-laptop' : 'alice-other' }, { [HEADER_DEVICE]: device });
  const deposit = (co: string, key: Buffer, token = t.d1, headers: Record<string, string> = asD1) =>
    call('PUT', `/checkouts/${co}/escrow`, token, { sealed: sealToEscrow(pub, key, co).toString('base64'), keyCheck: keyCheck(key) }, headers);
  const audit = async (): Promise<any[]> => (await server.admin(['admin', 'audit', '--limit', '10000'])).json.audit;
  const checkoutRow = async (co: string): Promise<any> => (await server.admin(['admin', 'checkouts'])).json.checkouts.find((c: any) => c.checkoutId === co);
  const firstManifestBlock = async (co: string): Promise<string> => {
    const m = await call('GET', `/checkouts/${co}/manifest`, t.d1, undefined, asD1);
    expect(m.status).toBe(200);
    return decodeManifest(m.body).idAt(0)!;
  };

  beforeAll(async () => {
    const img = Buffer.alloc(1 << 20);
    for (let i = 0; i < img.length; i += 32) createHash('sha256').update(`escrow-${i}`).digest().copy(img, i);
    writeFileSync(path.join(dir, 'img.raw'), img);
    const init = await server.admin(['init']);
    expect(init.code, init.stderr).toBe(0);
    expect(init.json).toMatchObject({ escrowKeyCreated: true, escrowKey: expect.stringMatching(/^[A-Za-z0-9+/]+=*$/) });
    t.alice = await server.addUser('alice');
    t.bob = await server.addUser('bob');
    t.root = (await server.admin(['user', 'add', 'root', '--admin'])).json.token;
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    for (const d of ['desk', 'other', 'cli-desk']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'img'])).code).toBe(0);
    // neither its own setting nor its image's: the default
    const plain = await server.admin(['desktop', 'create', 'plain', '--user', 'alice', '--image', 'img', '--encryption', 'default']);
    expect(plain.code, plain.stderr).toBe(0);
    expect((await server.admin(['desktop', 'create', 'bob-desk', '--user', 'bob', '--image', 'img'])).code).toBe(0);
    await server.start();
    pub = readFileSync(path.join(escrowDir, 'escrow.pub'), 'utf8').trim();
    t.d1 = (await ok('POST', '/devices', t.alice, { device: D1, name: 'alice-laptop' })).token;
    t.d2 = (await ok('POST', '/devices', t.alice, { device: D2, name: 'alice-other' })).token;
    // alice's persona version 2 holds a file, sent before any checkout
    expect(await ok('PUT', '/persona/blocks?base=1', t.d1, await tar([{ name: `b/${CHUNK}`, data: SECRET }]), asD1)).toEqual({ chunks: 1, files: 0 });
    const delta = { baseId: snapId(EMPTY), id: snapId(SNAP), upsert: SNAP.files, remove: [], registry: null };
    const push = { baseVersion: 1, desktop: 'desk', deviceName: 'alice-laptop', editedAt: EPOCH_MS };
    const body = await tar([{ name: 'persona-delta.json', data: Buffer.from(JSON.stringify(delta)) }, { name: 'push.json', data: Buffer.from(JSON.stringify(push)) }]);
    expect(await ok('POST', '/persona/push', t.d1, body, { ...asD1, 'content-type': CONTENT_TAR })).toMatchObject({ version: 2, changed: true });
  }, 60_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('init made the escrow key pair: escrow.pub (X25519 SPKI, base64) and escrow.key (PEM, 0600) in a 0700 folder; init again keeps it', async () => {
    expect(statSync(escrowDir).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(escrowDir, 'escrow.key')).mode & 0o777).toBe(0o600);
    expect(readFileSync(path.join(escrowDir, 'escrow.key'), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(Buffer.from(pub, 'base64')).toHaveLength(44);
    const again = await server.admin(['init']);
    expect(again.json).toMatchObject({ created: false, escrowKeyCreated: false, escrowKey: pub });
  });

  it('a new desktop requires encryption by default; the listings and the admin API say so', async () => {
    const p = await server.admin(['desktop', 'policy', 'plain']);
    expect(p.json).toMatchObject({ desktop: 'plain', encryption: null, effectiveEncryption: 'required' });
    expect(p.code).toBe(0);
    expect((await ok('GET', '/desktops/plain', t.d1, undefined, asD1)).encryption).toBe('required');
    expect((await ok('POST', '/admin/desktops/plain/policy', t.root, {})).effectiveEncryption).toBe('required');
    expect((await server.admin(['status'])).json.desktops.find((d: any) => d.name === 'plain').encryption).toBe('required');
  });

  it('the check-out answer of a desktop that requires it: required, with the escrow public key', async () => {
    const co = await checkOut('desk');
    expect(co.encryption).toEqual({ required: true, escrowKey: pub });
    expect(await checkoutRow(co.checkoutId)).toMatchObject({ desktop: 'desk', encryptionRequired: true, escrow: null });
    firstBlock = await firstManifestBlock(co.checkoutId);
  });

  it('before the escrow: blocks/get, the persona and its chunks answer 409 ESCROW_MISSING with what to do; another device of the user still gets the persona', async () => {
    const co = (await checkOut('desk')).checkoutId; // resumed
    const blocks = await call('POST', `/checkouts/${co}/blocks/get`, t.d1, { ids: [firstBlock] }, asD1);
    expect(errorOf(blocks)).toEqual({ status: 409, code: 'ESCROW_MISSING' });
    expect(blocks.json.error.message).toContain('update carryon on this laptop; it must encrypt this desktop');
    expect(blocks.json.error.data).toEqual({ checkoutId: co, desktop: 'desk' });
    expect(blocks.body.toString('latin1')).not.toContain(CHUNK);
    const chunks = await call('POST', '/persona/chunks/get', t.d1, { ids: [CHUNK], version: 2 }, asD1);
    expect(errorOf(chunks)).toEqual({ status: 409, code: 'ESCROW_MISSING' });
    expect(chunks.body.toString('latin1')).not.toContain(CHUNK);
    expect(errorOf(await call('GET', '/persona', t.d1, undefined, asD1))).toEqual({ status: 409, code: 'ESCROW_MISSING' });
    // the laptop that holds no checkout is not this copy
    const d2 = await call('POST', '/persona/chunks/get', t.d2, { ids: [CHUNK], version: 2 }, asD2);
    expect(d2.status).toBe(200);
    expect(d2.body.toString('latin1')).toContain(CHUNK); // the tar entry of the chunk
    // what a laptop may still do: its manifest, the lease, giving the checkout up
    expect((await call('POST', `/checkouts/${co}/heartbeat`, t.d1, { pendingBytes: 0, pendingBlocks: 0 }, asD1)).status).toBe(200);
  });

  // The deposit through the CLI, with a passphrase, is in encryption.test.ts (the audit checks below count deposits here).
  it('the laptop CLI must encrypt such a desktop: without a passphrase it stops before the checkout gets any block (KEYS_LOCKED, exit 14)', async () => {
    const laptop = new Laptop(path.join(dir, 'laptop'));
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, `${t.alice}\n`, { mode: 0o600 });
    expect((await laptop.cli(['login', server.url, '--token-file', tokenFile, '--device-name', 'cli-laptop'])).code).toBe(0);
    const locked = await laptop.cli(['checkout', 'cli-desk']);
    expect(locked.code, locked.stderr).toBe(14);
    expect(locked.stderr).toContain('error KEYS_LOCKED');
    expect(locked.stderr).toContain('must be encrypted on this laptop');
    expect(existsSync(path.join(laptop.home, 'desktops', 'cli-desk', 'disk.raw.partial'))).toBe(false);
  });

  it('bad deposits answer 400 with the reason and store nothing', async () => {
    const co = (await checkOut('desk')).checkoutId;
    const key = newDataKey();
    const good = sealToEscrow(pub, key, co);
    const bads: Array<[string, unknown, RegExp]> = [
      ['oversized', { sealed: Buffer.alloc(MAX_ESCROW_BYTES + 1, 7).toString('base64'), keyCheck: keyCheck(key) }, /longer than an escrowed key|more than an escrowed key/],
      ['far oversized', { sealed: 'A'.repeat(1 << 20), keyCheck: keyCheck(key) }, /longer than an escrowed key/],
      ['garbage base64', { sealed: '!!not*base64!!', keyCheck: keyCheck(key) }, /not base64/],
      ['base64 with a space', { sealed: `${good.toString('base64').slice(0, 8)} ${good.toString('base64').slice(8)}`, keyCheck: keyCheck(key) }, /not base64/],
      ['random bytes', { sealed: Buffer.alloc(good.length, 0x5a).toString('base64'), keyCheck: keyCheck(key) }, /not a data key sealed to the escrow key/],
      ['truncated', { sealed: good.subarray(0, 60).toString('base64'), keyCheck: keyCheck(key) }, /not a data key sealed/],
      ['empty', { sealed: '', keyCheck: keyCheck(key) }, /not a data key sealed/],
      ['a number', { sealed: 12, keyCheck: keyCheck(key) }, /sealed must be the base64/],
      ['no key check', { sealed: good.toString('base64') }, /keyCheck must be 16 lowercase hex/],
      ['key check upper case', { sealed: good.toString('base64'), keyCheck: keyCheck(key).toUpperCase() }, /keyCheck must be 16 lowercase hex/],
      ['extra field', { sealed: good.toString('base64'), keyCheck: keyCheck(key), key: key.toString('hex') }, /unknown escrow field "key"/],
      ['an array', [good.toString('base64')], /must be a JSON object/],
    ];
    for (const [what, body, message] of bads) {
      const r = await call('PUT', `/checkouts/${co}/escrow`, t.d1, body, asD1);
      expect(errorOf(r), what).toEqual({ status: 400, code: 'BAD_REQUEST' });
      expect(r.json.error.message, what).toMatch(message);
    }
    const notJson = await call('PUT', `/checkouts/${co}/escrow`, t.d1, '{"sealed": ', asD1);
    expect(errorOf(notJson)).toEqual({ status: 400, code: 'BAD_REQUEST' });
    // a user token must say which device deposits; an admin does not deposit for alice's copy
    expect(errorOf(await deposit(co, key, t.alice, {}))).toEqual({ status: 400, code: 'BAD_REQUEST' });
    expect(errorOf(await deposit(co, key, t.root, asD1))).toEqual({ status: 403, code: 'FORBIDDEN' });
    expect(errorOf(await deposit(co, key, t.d2, asD2))).toEqual({ status: 403, code: 'FORBIDDEN' });
    expect(errorOf(await deposit(co, key, t.bob, asD1))).toEqual({ status: 404, code: 'CHECKOUT_NOT_FOUND' });
    expect((await checkoutRow(co)).escrow).toBeNull();
    expect((await audit()).filter((a) => a.action === 'escrow.deposit')).toEqual([]);
    const gate = await call('POST', `/checkouts/${co}/blocks/get`, t.d1, { ids: [firstBlock] }, asD1);
    expect(errorOf(gate), JSON.stringify(gate.json)).toEqual({ status: 409, code: 'ESCROW_MISSING' });
  });

  const deskKey = newDataKey();
  it('a deposit is kept once: the same bytes or the same key re-sealed answer already; another key is refused (409); audited once', async () => {
    const co = (await checkOut('desk')).checkoutId;
    const body = JSON.stringify({ sealed: sealToEscrow(pub, deskKey, co).toString('base64'), keyCheck: keyCheck(deskKey) });
    const first = await ok('PUT', `/checkouts/${co}/escrow`, t.d1, body, asD1);
    expect(first).toMatchObject({ checkoutId: co, keyCheck: keyCheck(deskKey), already: false, depositedAt: expect.any(String) });
    expect(await ok('PUT', `/checkouts/${co}/escrow`, t.d1, body, asD1)).toEqual({ ...first, already: true });
    expect(await ok('PUT', `/checkouts/${co}/escrow`, t.d1, { sealed: sealToEscrow(pub, deskKey, co).toString('base64'), keyCheck: keyCheck(deskKey) }, asD1)).toEqual({ ...first, already: true });
    const other = newDataKey();
    const refused = await deposit(co, other);
    expect(errorOf(refused)).toEqual({ status: 409, code: 'CHECKOUT_CONFLICT' });
    expect(refused.json.error.message).toContain(`already has an escrowed key (key check ${keyCheck(deskKey)}`);
    expect(refused.json.error.message).toContain('discard the checkout and check out again');
    expect((await checkoutRow(co)).escrow).toEqual({ keyCheck: keyCheck(deskKey), depositedAt: first.depositedAt });
    const rows = (await audit()).filter((a) => a.action === 'escrow.deposit');
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ actor: 'alice', device: D1, target: 'desktop:desk', detail: { checkoutId: co, keyCheck: keyCheck(deskKey) } });
    expect(JSON.stringify(rows)).not.toContain(body.slice(12, 60)); // not the sealed key either
    const cli = await server.admin(['admin', 'checkouts']);
    expect(cli.json.checkouts.find((c: any) => c.checkoutId === co)).toMatchObject({ encryptionRequired: true, escrow: { keyCheck: keyCheck(deskKey) } });
  });

  it('after the escrow: blocks and persona chunks are served', async () => {
    const co = (await checkOut('desk')).checkoutId;
    const blocks = await call('POST', `/checkouts/${co}/blocks/get`, t.d1, { ids: [firstBlock] }, asD1);
    expect(blocks.body.toString('latin1')).toContain(firstBlock);
    const chunks = await call('POST', '/persona/chunks/get', t.d1, { ids: [CHUNK], version: 2 }, asD1);
    expect(chunks.status).toBe(200);
    expect(chunks.body.toString('latin1')).toContain(CHUNK);
    expect((await call('GET', '/persona', t.d1, undefined, asD1)).status).toBe(200);
  });

  it('admin recovery-code (CLI): the code decodes to the key that was sealed, with its key check, the device, and what the user types; audited', async () => {
    const co = (await checkOut('desk')).checkoutId;
    const r = await server.admin(['admin', 'recovery-code', 'desk']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json).toEqual({ checkoutId: co, desktop: 'desk', device: D1, deviceName: 'alice-laptop', keyCheck: keyCheck(deskKey), code: encodeRecoveryCode(deskKey) });
    expect(decodeRecoveryCode(r.json.code).equals(deskKey)).toBe(true);
    // the sentence an admin reads
    const human = (await run(path.join(ROOT, 'bin/carryon-server.js'), ['admin', 'recovery-code', 'desk', '--data', server.data])).stdout;
    expect(human).toContain(encodeRecoveryCode(deskKey));
    expect(human).toContain('alice-laptop');
    expect(human).toContain(keyCheck(deskKey));
    expect(human).toContain(`carryon unlock desk --recovery-code ${encodeRecoveryCode(deskKey)}`);
    const reveals = (await audit()).filter((a) => a.action === 'escrow.reveal');
    expect(reveals).toHaveLength(2);
    for (const a of reveals) expect(a).toMatchObject({ actor: expect.stringMatching(/^cli:/), address: 'local', target: 'desktop:desk', detail: { checkoutId: co, device: D1, keyCheck: keyCheck(deskKey) } });
    expect(JSON.stringify(reveals)).not.toContain(encodeRecoveryCode(deskKey));
  });

  it('admin recovery-code (HTTP): the same answer for admins only; audited with the admin and the address', async () => {
    const co = (await checkOut('desk')).checkoutId;
    const r = await ok('POST', `/admin/checkouts/${co}/recovery-code`, t.root);
    expect(decodeRecoveryCode(r.code).equals(deskKey)).toBe(true);
    expect(r).toMatchObject({ checkoutId: co, desktop: 'desk', device: D1, deviceName: 'alice-laptop', keyCheck: keyCheck(deskKey) });
    expect(errorOf(await call('POST', `/admin/checkouts/${co}/recovery-code`, t.alice))).toEqual({ status: 403, code: 'FORBIDDEN' });
    expect(errorOf(await call('POST', `/admin/checkouts/${co}/recovery-code`, t.d1, undefined, asD1))).toEqual({ status: 403, code: 'FORBIDDEN' });
    expect(errorOf(await call('POST', `/admin/checkouts/${co}/recovery-code`, null))).toEqual({ status: 401, code: 'UNAUTHORIZED' });
    const reveals = (await audit()).filter((a) => a.action === 'escrow.reveal');
    expect(reveals).toHaveLength(3);
    expect(reveals[0]).toMatchObject({ actor: 'root', address: expect.stringMatching(/127\.0\.0\.1$/), detail: { checkoutId: co } });
    // a checkout without an escrow, a desktop without any, a checkout of another desktop
    const otherCo = (await checkOut('other')).checkoutId;
    expect(errorOf(await call('POST', `/admin/checkouts/${otherCo}/recovery-code`, t.root))).toEqual({ status: 409, code: 'ESCROW_MISSING' });
    const none = await server.admin(['admin', 'recovery-code', 'plain']);
    expect(none.code).toBe(14);
    expect(none.json.error).toMatchObject({ code: 'ESCROW_MISSING', message: expect.stringContaining('desktop plain has no escrowed key') });
    expect((await server.admin(['admin', 'recovery-code', 'desk', '--checkout', otherCo])).json.error.code).toBe('CHECKOUT_NOT_FOUND');
    expect((await audit()).filter((a) => a.action === 'escrow.reveal')).toHaveLength(3);
  });

  it("the default copy: the desktop's current checkout when it has an escrow, else its latest one that has", async () => {
    const co = (await checkOut('desk')).checkoutId;
    const manifest = (await call('GET', `/checkouts/${co}/manifest`, t.d1, undefined, asD1)).body;
    expect(await ok('POST', `/checkouts/${co}/commit`, t.d1, manifest, { ...asD1, 'content-type': CONTENT_MANIFEST })).toMatchObject({ alreadyCommitted: false });
    const next = (await checkOut('desk')).checkoutId;
    expect(next).not.toBe(co);
    // the new checkout has no escrow yet: the code is the committed copy's (the laptop still holds it)
    expect((await server.admin(['admin', 'recovery-code', 'desk'])).json).toMatchObject({ checkoutId: co, keyCheck: keyCheck(deskKey) });
    const nextKey = newDataKey();
    expect((await deposit(next, nextKey)).status).toBe(200);
    expect((await server.admin(['admin', 'recovery-code', 'desk'])).json).toMatchObject({ checkoutId: next, keyCheck: keyCheck(nextKey), code: encodeRecoveryCode(nextKey) });
    expect((await server.admin(['admin', 'recovery-code', 'desk', '--checkout', co])).json).toMatchObject({ checkoutId: co, code: encodeRecoveryCode(deskKey) });
  });

  it('escrow.key moved offline: a clear ESCROW_KEY_ABSENT (CLI and HTTP) naming the file and --escrow-key; with --escrow-key the code comes; start keeps escrow.pub', async () => {
    const offline = path.join(dir, 'offline');
    mkdirSync(offline, { mode: 0o700 });
    const moved = path.join(offline, 'escrow.key');
    renameSync(path.join(escrowDir, 'escrow.key'), moved);
    const before = (await audit()).filter((a) => a.action === 'escrow.reveal').length;
    const cli = await server.admin(['admin', 'recovery-code', 'desk']);
    expect(cli.code).toBe(14);
    expect(cli.json.error.code).toBe('ESCROW_KEY_ABSENT');
    expect(cli.json.error.message).toContain(path.join(escrowDir, 'escrow.key'));
    expect(cli.json.error.message).toContain('--escrow-key FILE');
    const co = (await checkOut('desk')).checkoutId;
    const http = await call('POST', `/admin/checkouts/${co}/recovery-code`, t.root);
    expect(errorOf(http)).toEqual({ status: 409, code: 'ESCROW_KEY_ABSENT' });
    expect((await audit()).filter((a) => a.action === 'escrow.reveal')).toHaveLength(before);
    const got = await server.admin(['admin', 'recovery-code', 'desk', '--escrow-key', moved]);
    expect(got.code, got.stderr).toBe(0);
    expect(got.json).toMatchObject({ checkoutId: co });
    // another server's key, or a file that is not a key: refused with the reason
    const stranger = path.join(offline, 'stranger.key');
    writeFileSync(stranger, newEscrowKeyPair().privateKeyPem);
    const wrong = await server.admin(['admin', 'recovery-code', 'desk', '--escrow-key', stranger]);
    expect(wrong.json.error).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('is not the private key that copy was sealed to') });
    expect((await server.admin(['admin', 'recovery-code', 'desk', '--escrow-key', path.join(offline, 'nope')])).json.error).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('no such file') });
    expect((await server.admin(['admin', 'recovery-code', 'desk', '--escrow-key', path.join(escrowDir, 'escrow.pub')])).json.error.code).toBe('INVALID_ARGUMENT');
    // a restart does not make a new pair while escrow.pub is there
    await server.stop();
    await server.start();
    expect(existsSync(path.join(escrowDir, 'escrow.key'))).toBe(false);
    expect(readFileSync(path.join(escrowDir, 'escrow.pub'), 'utf8').trim()).toBe(pub);
    expect((await checkOut('desk')).encryption).toEqual({ required: true, escrowKey: pub });
    renameSync(moved, path.join(escrowDir, 'escrow.key'));
  });

  it('policy changes (desktop and image, CLI and HTTP) are audited, apply to new check-outs, and refuse nonsense', async () => {
    const off = await server.admin(['desktop', 'policy', 'plain', '--encryption', 'off']);
    expect(off.json).toMatchObject({ desktop: 'plain', encryption: 'off', effectiveEncryption: 'off' });
    const co = await checkOut('plain');
    expect(co.encryption).toEqual({ required: false, escrowKey: pub }); // the key is always sent
    const block = await firstManifestBlock(co.checkoutId);
    expect((await call('POST', `/checkouts/${co.checkoutId}/blocks/get`, t.d1, { ids: [block] }, asD1)).status).toBe(200);
    // a checkout keeps the requirement it started under
    expect((await ok('POST', '/admin/desktops/plain/policy', t.root, { encryption: 'required' })).effectiveEncryption).toBe('required');
    expect((await call('POST', `/checkouts/${co.checkoutId}/blocks/get`, t.d1, { ids: [block] }, asD1)).status).toBe(200);
    // back to the image's, then the image's own setting
    expect((await ok('POST', '/admin/desktops/plain/policy', t.root, { encryption: null })).encryption).toBeNull();
    expect(await ok('POST', '/admin/images/img/policy', t.root, { encryption: 'off' })).toEqual({ image: 'img', leaseDays: null, encryption: 'off', effectiveEncryption: 'off' });
    expect((await ok('GET', '/desktops/plain', t.d1, undefined, asD1)).encryption).toBe('off');
    expect((await server.admin(['image', 'policy', 'img', '--encryption', 'default'])).json).toMatchObject({ image: 'img', encryption: null, effectiveEncryption: 'required' });
    const rows = (await audit()).filter((a) => /\.encryption-policy$/.test(a.action)).reverse().map((a) => [a.actor.replace(/^cli:.*/, 'cli'), a.action, a.target, a.detail.encryption]);
    expect(rows).toEqual([
      ['cli', 'desktop.encryption-policy', 'desktop:plain', 'off'],
      ['root', 'desktop.encryption-policy', 'desktop:plain', 'required'],
      ['root', 'desktop.encryption-policy', 'desktop:plain', null],
      ['root', 'image.encryption-policy', 'image:img', 'off'],
      ['cli', 'image.encryption-policy', 'image:img', null],
    ]);
    // nonsense
    const bad = await call('POST', '/admin/desktops/plain/policy', t.root, { encryption: 'maybe' });
    expect(errorOf(bad)).toEqual({ status: 400, code: 'BAD_REQUEST' });
    expect(bad.json.error.message).toContain('encryption must be one of required, off');
    expect(errorOf(await call('POST', '/admin/images/img/policy', t.root, { files: 'newest' }))).toEqual({ status: 400, code: 'BAD_REQUEST' });
    const cliBad = await server.admin(['desktop', 'policy', 'plain', '--encryption', 'yes']);
    expect(cliBad.code).toBe(2);
    expect(cliBad.json.error.code).toBe('INVALID_ARGUMENT');
    expect((await server.admin(['desktop', 'create', 'x', '--user', 'alice', '--image', 'img', '--encryption', 'on'])).json.error.code).toBe('INVALID_ARGUMENT');
    expect((await server.admin(['image', 'policy', 'nope', '--encryption', 'off'])).json.error.code).toBe('IMAGE_NOT_FOUND');
    expect((await audit()).filter((a) => /\.encryption-policy$/.test(a.action))).toHaveLength(5);
  });
});

describe('a data folder made before encryption at rest', () => {
  const dir = tmpDir('escrow-upgrade');
  const server = new TestServer(dir);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it("migration 11 sets its desktops to 'off' (their laptops hold plaintext copies) and its checkouts to not required; start makes the escrow key pair; new desktops require encryption", async () => {
    // Schema version 10, as the previous release left it: a desktop with an active checkout.
    mkdirSync(path.join(server.data, 'store'), { recursive: true, mode: 0o700 });
    const db = new Database(path.join(server.data, 'carryon.db'));
    db.pragma('journal_mode = WAL');
    for (const m of MIGRATIONS.filter((x) => x.version <= 10)) {
      db.exec(m.sqlite!);
      m.fill?.(db);
    }
    db.pragma('user_version = 10');
    const encoded = encodeManifest(new DiskManifest(65536, 65536));
    const mid = manifestId(encoded);
    const at = new Date().toISOString();
    db.prepare("INSERT INTO users (id, name, is_admin, created_at) VALUES (1, 'alice', 0, ?)").run(at);
    db.prepare('INSERT INTO manifests (id, size, block_size, block_count, data_bytes, encoded, created_at) VALUES (?, 65536, 65536, 1, 0, ?, ?)').run(mid, encoded, at);
    db.prepare("INSERT INTO images (id, name, created_at) VALUES (1, 'img', ?)").run(at);
    db.prepare('INSERT INTO image_versions (image_id, version, manifest_id, created_at) VALUES (1, 1, ?, ?)').run(mid, at);
    db.prepare("INSERT INTO desktops (id, name, user_id, image_id, image_version, version, created_at, updated_at) VALUES (1, 'old', 1, 1, 1, 1, ?, ?)").run(at, at);
    db.prepare('INSERT INTO desktop_versions (desktop_id, version, manifest_id, created_at) VALUES (1, 1, ?, ?)').run(mid, at);
    db.prepare("INSERT INTO checkouts (id, desktop_id, user_id, device, device_name, base_version, state, started_at) VALUES ('old-checkout', 1, 1, ?, 'old-laptop', 1, 'active', ?)").run(dev(9), at);
    db.close();
    expect(existsSync(path.join(server.data, 'escrow'))).toBe(false);

    await server.start();
    expect(statSync(path.join(server.data, 'escrow', 'escrow.key')).mode & 0o777).toBe(0o600);
    const pub = readFileSync(path.join(server.data, 'escrow', 'escrow.pub'), 'utf8').trim();
    expect((await server.admin(['desktop', 'policy', 'old'])).json).toMatchObject({ encryption: 'off', effectiveEncryption: 'off' });
    expect((await server.admin(['admin', 'checkouts'])).json.checkouts).toEqual([expect.objectContaining({ checkoutId: 'old-checkout', encryptionRequired: false, escrow: null })]);
    const token = (await server.admin(['user', 'add', 'ops', '--admin'])).json.token;
    expect((await server.admin(['desktop', 'create', 'new', '--user', 'alice', '--image', 'img', '--encryption', 'default'])).json.encryption).toBe('required');
    const info = (await send(server.url, 'GET', '/desktops', token)).json.desktops.map((d: any) => [d.name, d.encryption]);
    expect(info).toEqual([['new', 'required'], ['old', 'off']]);
    expect(Buffer.from(pub, 'base64')).toHaveLength(44);
    // the old checkout's blocks still flow without an escrow (the laptop that holds it cannot encrypt)
    const blocks = await send(server.url, 'POST', '/checkouts/old-checkout/blocks/get', token, JSON.stringify({ ids: [] }));
    expect(blocks.status).toBe(200);
  });
});
