// Authorization matrix: every route of server/http-server.ts against every kind of caller, on a real
// server (real SQLite, 127.0.0.1:0). Callers: no token, a wrong token, a revoked token, a device token
// claiming another device, another user (B) on A's desktop and checkout, a plain user on /admin, and
// the owner (or an admin). Another user's desktop or checkout answers *_NOT_FOUND, never FORBIDDEN
// (server/meta.ts); refused requests change nothing and write no audit rows; admin actions are audited
// with the admin's name and address. A route added to http-server.ts without a row here fails the
// first test.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import nodeHttp from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  API_PREFIX, blockId, CONTENT_MANIFEST, CONTENT_TAR, createCompressStream, decodeManifest, decodeRecoveryCode, DiskManifest, encodeManifest, encodeRecoveryCode, encodePersona, HEADER_DEVICE, keyCheck, manifestId,
  newDataKey, packEntries, personaId, sealToEscrow, sha256, type PersonaEntry, type PersonaSnapshot, type TarEntry,
} from '../../src/index.js';
import { gzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { removeTmp, ROOT, TestServer, tmpDir } from './harness.js';

/** npm pack's layout with only package.json: enough for the server to take it as a carryon release. */
async function releaseTarball(version: string): Promise<Buffer> {
  const pack = tarStream.pack();
  pack.entry({ name: 'package/package.json' }, JSON.stringify({ name: 'carryon', version }));
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const c of pack) parts.push(c as Buffer);
  return gzipSync(Buffer.concat(parts));
}

interface Res { status: number; json: any; body: Buffer; headers: nodeHttp.IncomingHttpHeaders }
interface Req { path: string; body?: Buffer | string; headers?: Record<string, string> }
interface Expect { status: number; code?: string; check?: (r: Res) => void }
type Scope = 'user' | 'desktop' | 'checkout' | 'persona' | 'admin';
interface Route {
  method: string;
  /** As registered in server/http-server.ts, without API_PREFIX. */
  route: string;
  scope: Scope;
  /** The owner's (for admin routes: an admin's) request on A's real resources; callers 1-4 send the same. */
  owner: () => Req & Expect & { token: () => string };
  /** User B's request against A's resources (admin routes: B is refused as not an admin). */
  other: () => Req & Expect;
}

// ---- identities and fixtures (fixed ids: the test is deterministic)
const dev = (n: number): string => `aaaaaaaa-0000-4000-8000-${String(n).padStart(12, '0')}`;
const D1 = dev(1); // alice's laptop: holds the checkouts
const D2 = dev(2); // alice's second laptop
const D_REV = dev(3); // alice's laptop whose token the admin revokes over HTTP
const D_NEW = dev(5); // registered by the owner row of POST /devices
const D_ADMIN = 'cccccccc-0000-4000-8000-000000000001'; // root's laptop
const D_ADMIN_REV = 'cccccccc-0000-4000-8000-000000000002'; // root's laptop whose token is revoked from the CLI
const D_OTHER = 'ffffffff-0000-4000-8000-00000000ffff'; // a device id nobody's token belongs to
const IMAGE_BYTES = 2 << 20;
const EPOCH_MS = 1_700_000_000_000;

const SECRET_TEXT = Buffer.from('alice persona secret: correct horse battery staple 0123456789\n');
const SECRET_PATH = 'Documents/alice-secret.txt';
const CHUNK_A = blockId(SECRET_TEXT);
const EMPTY_SNAP: PersonaSnapshot = { files: [], registry: '' };
const SNAP_A: PersonaSnapshot = {
  files: [
    { path: 'Documents', kind: 'dir', mode: 0o755, mtimeMs: EPOCH_MS, size: 0, hash: null, chunks: [] },
    { path: SECRET_PATH, kind: 'file', mode: 0o644, mtimeMs: EPOCH_MS, size: SECRET_TEXT.length, hash: sha256(SECRET_TEXT).toString('hex'), chunks: [CHUNK_A] } satisfies PersonaEntry,
  ],
  registry: '',
};
const snapId = (s: PersonaSnapshot): string => personaId(encodePersona(s));

async function tar(entries: TarEntry[], zstd = false): Promise<Buffer> {
  const parts: Buffer[] = [];
  const s = packEntries(entries);
  for await (const c of zstd ? s.pipe(createCompressStream(3)) : s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** A persona push body: the delta from `from` to `to`, and push.json. */
function pushBody(from: PersonaSnapshot, to: PersonaSnapshot, baseVersion: number, desktop: string): Promise<Buffer> {
  const delta = { baseId: snapId(from), id: snapId(to), upsert: to.files.filter((e) => !from.files.some((f) => f.path === e.path)), remove: [], registry: null };
  const push = { baseVersion, desktop, deviceName: 'a-laptop', editedAt: EPOCH_MS };
  return tar([{ name: 'persona-delta.json', data: Buffer.from(JSON.stringify(delta)) }, { name: 'push.json', data: Buffer.from(JSON.stringify(push)) }]);
}

describe('authorization matrix over every HTTP route', () => {
  const dir = tmpDir('authz');
  const server = new TestServer(dir);
  const image = path.join(dir, 'img.raw');
  const t = { alice: '', bob: '', root: '', d1: '', d2: '', rev: '', admin: '', adminRev: '' };
  let CO = ''; // alice's checkout of a-desk, held by D1
  let CO_SPARE = ''; // a-spare: the owner's DELETE discards it
  let CO_RB = ''; // a-rollback: the admin's rollback ends it
  let RID = 0; // the admin's forced check-in request on CO
  let RP_IDLE = 0; // a restore point of a-idle, which nobody holds: the admin's restore uses it
  let REV_ID = 0; // token id of D_REV, revoked over HTTP
  let ADMIN_REV_ID = 0; // token id of D_ADMIN_REV, revoked from the CLI
  let baseManifest: Buffer = Buffer.alloc(0);
  let aManifestId = '';
  let firstBlock = '';
  let emptyZstdTar: Buffer = Buffer.alloc(0);
  let missingManifest: Buffer = Buffer.alloc(0);
  let personaPushA: Buffer = Buffer.alloc(0); // alice's second push: unchanged
  let personaPushB: Buffer = Buffer.alloc(0); // bob's push naming alice's desktop
  let deltaOnAlicesFile: Buffer = Buffer.alloc(0); // bob's upload of an rdiff delta based on alice's file
  let before: any = null;
  let CO_BOB = ''; // bob's own checkout of b-desk
  const D_BOB = 'bbbbbbbb-0000-4000-8000-000000000001';
  const ALICE_BLOCK_BYTES = Buffer.alloc(65536, 0xa1); // only a-desk@2 holds it
  const ALICE_BLOCK = blockId(ALICE_BLOCK_BYTES);
  let bobNamingAlice: Buffer = Buffer.alloc(0); // bob's base manifest with block 2 set to ALICE_BLOCK
  let bobPushOfAlice: Buffer = Buffer.alloc(0); // bob's persona push naming alice's secret chunk
  let bobPatchOnAlice: Buffer = Buffer.alloc(0); // an upload of a patch whose base is ALICE_BLOCK
  const DATA_KEY_A = newDataKey(); // the data key of alice's copy of a-desk (CO), escrowed in the setup
  let escrowA = ''; // its escrow deposit body (sealed to the server's escrow key, aad CO)
  let escrowKey = ''; // the server's escrow public key, from the check-out answer

  /**
   * One request on a connection of its own (`Connection: close`), head and body in one write. Not the
   * harness's fetch: its keep-alive pool reuses a connection the server closes after refusing a request
   * whose body it did not read, which makes the next request fail now and then.
   */
  const send = (method: string, pathname: string, token: string | null, body?: Buffer | string, headers: Record<string, string> = {}): Promise<Res> =>
    new Promise((resolve, reject) => {
      const h: Record<string, string> = { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-length': String(Buffer.byteLength(body)) } : {}), ...headers };
      const q = nodeHttp.request(server.url + pathname, { method, agent: false, headers: h }, (res) => {
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
          resolve({ status: res.statusCode!, json, body: buf, headers: res.headers });
        });
      });
      q.on('error', reject);
      q.end(body);
    });
  const call = (method: string, token: string | null, r: Req, headers: Record<string, string> = {}): Promise<Res> =>
    send(method, API_PREFIX + r.path, token, r.body, { ...(r.headers ?? {}), ...headers });
  const ok = async (method: string, p: string, token: string, body?: unknown, headers: Record<string, string> = {}): Promise<any> => {
    const r = await send(method, API_PREFIX + p, token, body === undefined ? undefined : Buffer.isBuffer(body) ? body : JSON.stringify(body), headers);
    expect(r.status, `${method} ${p}: ${r.body.toString().slice(0, 300)}`).toBe(200);
    return r.json;
  };
  const errorOf = (r: Res) => ({ status: r.status, code: r.json?.error?.code as string | undefined });
  const asD1 = { [HEADER_DEVICE]: D1 };
  const asAdminDevice = { [HEADER_DEVICE]: D_ADMIN };
  const json = (v: unknown): string => JSON.stringify(v);

  /** What of alice's must never reach bob. */
  const secrets = (): string[] => ['alice', 'a-laptop', D1, CO, CO_SPARE, CO_RB, aManifestId, CHUNK_A, SECRET_PATH, SECRET_TEXT.toString().slice(0, 20)];

  const ROUTES: Route[] = [
    {
      method: 'GET', route: '/whoami', scope: 'user',
      owner: () => ({ token: () => t.d1, path: '/whoami', headers: asD1, status: 200, check: (r) => expect(r.json).toEqual({ user: 'alice', admin: false, device: D1, deviceName: expect.any(String) }) }),
      other: () => ({ path: '/whoami', status: 200, check: (r) => expect(r.json).toEqual({ user: 'bob', admin: false, device: null, deviceName: null }) }),
    },
    {
      // Client updates: the same for every user (nothing per user in them); a token is still required.
      method: 'GET', route: '/updates/key', scope: 'user',
      owner: () => ({ token: () => t.d1, path: '/updates/key', headers: asD1, status: 200, check: (r) => expect(r.json.publicKey).toMatch(/^[A-Za-z0-9+/]+=*$/) }),
      other: () => ({ path: '/updates/key', status: 200, check: (r) => expect(Object.keys(r.json)).toEqual(['publicKey']) }),
    },
    {
      method: 'GET', route: '/updates/:file', scope: 'user',
      owner: () => ({ token: () => t.d1, path: '/updates/latest.yml', headers: asD1, status: 200, check: (r) => expect(r.body.toString()).toContain("version: '0.0.1'") }),
      other: () => ({ path: '/updates/carryon-0.0.1.tgz', status: 200, check: (r) => expect(r.body.subarray(0, 2).equals(Buffer.from([0x1f, 0x8b]))).toBe(true) }),
    },
    {
      method: 'GET', route: '/desktops', scope: 'user',
      owner: () => ({ token: () => t.d1, path: '/desktops', headers: asD1, status: 200, check: (r) => expect(r.json.desktops.map((d: any) => d.name)).toEqual(['a-desk', 'a-idle', 'a-probe', 'a-rollback', 'a-spare']) }),
      other: () => ({ path: '/desktops', status: 200, check: (r) => expect(r.json.desktops.map((d: any) => d.name)).toEqual(['b-desk']) }),
    },
    {
      method: 'GET', route: '/desktops/:name', scope: 'desktop',
      owner: () => ({ token: () => t.d1, path: '/desktops/a-desk', headers: asD1, status: 200, check: (r) => expect(r.json.checkout).toMatchObject({ checkoutId: CO, user: 'alice', device: D1 }) }),
      other: () => ({ path: '/desktops/a-desk', status: 404, code: 'DESKTOP_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/desktops/:name/checkouts', scope: 'desktop',
      owner: () => ({ token: () => t.d1, path: '/desktops/a-desk/checkouts', body: json({ device: D1, deviceName: 'a-laptop' }), headers: asD1, status: 200, check: (r) => expect(r.json).toMatchObject({ checkoutId: CO, resumed: true }) }),
      // bob claims alice's device id as well: still nothing
      other: () => ({ path: '/desktops/a-desk/checkouts', body: json({ device: D1, deviceName: 'bob-laptop' }), headers: asD1, status: 404, code: 'DESKTOP_NOT_FOUND' }),
    },
    {
      method: 'GET', route: '/desktops/:name/restore-points', scope: 'desktop',
      owner: () => ({ token: () => t.d1, path: '/desktops/a-idle/restore-points', headers: asD1, status: 200, check: (r) => expect(r.json.restorePoints.map((x: any) => x.id)).toEqual([RP_IDLE]) }),
      other: () => ({ path: '/desktops/a-idle/restore-points', status: 404, code: 'DESKTOP_NOT_FOUND' }),
    },
    {
      method: 'GET', route: '/desktops/:name/boot-trace', scope: 'desktop',
      owner: () => ({ token: () => t.d1, path: '/desktops/a-idle/boot-trace', headers: asD1, status: 200, check: (r) => expect(r.json).toMatchObject({ image: 'img', imageVersion: 1 }) }),
      other: () => ({ path: '/desktops/a-idle/boot-trace', status: 404, code: 'DESKTOP_NOT_FOUND' }),
    },
    {
      method: 'PUT', route: '/desktops/:name/boot-trace', scope: 'desktop',
      owner: () => ({ token: () => t.d1, path: '/desktops/a-idle/boot-trace', body: json({ image: 'img', imageVersion: 1, blocks: [0] }), headers: asD1, status: 200, check: (r) => expect(r.json).toEqual({ image: 'img', imageVersion: 1, blocks: 1 }) }),
      // bob's desktop is on the same image version: the desktop named is still alice's, so nothing
      other: () => ({ path: '/desktops/a-idle/boot-trace', body: json({ image: 'img', imageVersion: 1, blocks: [0] }), status: 404, code: 'DESKTOP_NOT_FOUND' }),
    },
    {
      method: 'GET', route: '/checkouts/:id/manifest', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/manifest`, headers: asD1, status: 200, check: (r) => expect(manifestId(r.body)).toBe(aManifestId) }),
      other: () => ({ path: `/checkouts/${CO}/manifest`, headers: asD1, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/checkouts/:id/blocks/get', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/blocks/get`, body: json({ ids: [firstBlock] }), headers: asD1, status: 200, check: (r) => expect(r.body.toString('latin1')).toContain(firstBlock) }),
      other: () => ({ path: `/checkouts/${CO}/blocks/get`, body: json({ ids: [firstBlock] }), headers: asD1, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/checkouts/:id/blocks/missing', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/blocks/missing`, body: json({ ids: [firstBlock] }), headers: asD1, status: 200, check: (r) => expect(r.json).toEqual({ missing: [], frames: true }) }),
      other: () => ({ path: `/checkouts/${CO}/blocks/missing`, body: json({ ids: [firstBlock] }), headers: asD1, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      method: 'PUT', route: '/checkouts/:id/blocks', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/blocks`, body: emptyZstdTar, headers: { ...asD1, 'content-encoding': 'zstd' }, status: 200, check: (r) => expect(r.json).toMatchObject({ stored: 0 }) }),
      other: () => ({ path: `/checkouts/${CO}/blocks`, body: emptyZstdTar, headers: { ...asD1, 'content-encoding': 'zstd' }, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      // The owner's manifest names a block nobody uploaded: refused after the checkout was found as alice's.
      method: 'POST', route: '/checkouts/:id/commit', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/commit`, body: missingManifest, headers: { ...asD1, 'content-type': CONTENT_MANIFEST }, status: 409, code: 'BLOCKS_MISSING' }),
      // bob sends a valid manifest (alice's own) so that only the checkout lookup can refuse him
      other: () => ({ path: `/checkouts/${CO}/commit`, body: baseManifest, headers: { ...asD1, 'content-type': CONTENT_MANIFEST }, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      // the checked-out version itself, unchanged: every block is present
      method: 'POST', route: '/checkouts/:id/restore-points', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/restore-points`, body: baseManifest, headers: { ...asD1, 'content-type': CONTENT_MANIFEST }, status: 200, check: (r) => expect(r.json).toMatchObject({ checkoutId: CO, desktop: 'a-desk', blocksChanged: 0 }) }),
      other: () => ({ path: `/checkouts/${CO}/restore-points`, body: baseManifest, headers: { ...asD1, 'content-type': CONTENT_MANIFEST }, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      method: 'DELETE', route: '/checkouts/:id', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO_SPARE}`, headers: asD1, status: 200, check: (r) => expect(r.json).toEqual({ desktop: 'a-spare', already: false }) }),
      other: () => ({ path: `/checkouts/${CO}`, headers: asD1, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/checkouts/:id/heartbeat', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/heartbeat`, body: json({ pendingBytes: 1, pendingBlocks: 1 }), headers: asD1, status: 200, check: (r) => expect(r.json).toMatchObject({ checkoutId: CO }) }),
      other: () => ({ path: `/checkouts/${CO}/heartbeat`, body: json({ pendingBytes: 0, pendingBlocks: 0 }), headers: asD1, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      // the deposit made in the setup, again: idempotent
      method: 'PUT', route: '/checkouts/:id/escrow', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/escrow`, body: escrowA, headers: asD1, status: 200, check: (r) => expect(r.json).toMatchObject({ checkoutId: CO, keyCheck: keyCheck(DATA_KEY_A), already: true }) }),
      // bob would replace alice's escrowed key with one he knows
      other: () => ({ path: `/checkouts/${CO}/escrow`, body: escrowA, headers: asD1, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/checkouts/:id/requests/:rid', scope: 'checkout',
      owner: () => ({ token: () => t.d1, path: `/checkouts/${CO}/requests/${RID}`, body: json({ state: 'in-progress' }), headers: asD1, status: 200, check: (r) => expect(r.json).toMatchObject({ id: RID, checkoutId: CO, state: 'in-progress' }) }),
      other: () => ({ path: `/checkouts/${CO}/requests/${RID}`, body: json({ state: 'failed' }), headers: asD1, status: 404, code: 'CHECKOUT_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/devices', scope: 'user',
      // registering is what `carryon login` does with the user's own token
      owner: () => ({ token: () => t.alice, path: '/devices', body: json({ device: D_NEW, name: 'a-new-laptop' }), status: 200, check: (r) => expect(r.json).toMatchObject({ device: D_NEW, token: expect.stringMatching(/^cod_/) }) }),
      // bob tries to take over alice's registered device id (which would revoke her laptop's token)
      other: () => ({ path: '/devices', body: json({ device: D1, name: 'bob-laptop' }), status: 403, code: 'FORBIDDEN' }),
    },
    // ---- admin
    {
      method: 'GET', route: '/admin/checkouts', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/checkouts', headers: asAdminDevice, status: 200, check: (r) => expect(r.json.checkouts.map((c: any) => c.checkoutId)).toContain(CO) }),
      other: () => ({ path: '/admin/checkouts', status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/checkouts/:id/lease', scope: 'admin',
      owner: () => ({ token: () => t.root, path: `/admin/checkouts/${CO}/lease`, body: json({ days: 1 }), headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toMatchObject({ checkoutId: CO, user: 'alice' }) }),
      other: () => ({ path: `/admin/checkouts/${CO}/lease`, body: json({ days: 300 }), status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/checkouts/:id/checkin', scope: 'admin',
      // asking again hands back the open request
      owner: () => ({ token: () => t.root, path: `/admin/checkouts/${CO}/checkin`, headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toMatchObject({ id: RID, checkoutId: CO, kind: 'checkin' }) }),
      other: () => ({ path: `/admin/checkouts/${CO}/checkin`, status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/checkouts/:id/recovery-code', scope: 'admin',
      owner: () => ({ token: () => t.root, path: `/admin/checkouts/${CO}/recovery-code`, headers: asAdminDevice, status: 200, check: (r) => {
        expect(r.json).toMatchObject({ checkoutId: CO, desktop: 'a-desk', device: D1, deviceName: 'a-laptop', keyCheck: keyCheck(DATA_KEY_A) });
        expect(decodeRecoveryCode(r.json.code).equals(DATA_KEY_A)).toBe(true);
      } }),
      other: () => ({ path: `/admin/checkouts/${CO}/recovery-code`, status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/checkouts/:id/lease-code', scope: 'admin',
      owner: () => ({ token: () => t.root, path: `/admin/checkouts/${CO}/lease-code`, body: json({ days: 2 }), headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toMatchObject({ code: expect.any(String), days: 2, desktop: 'a-desk' }) }),
      other: () => ({ path: `/admin/checkouts/${CO}/lease-code`, body: json({ days: 300 }), status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/checkouts/:id/rollback', scope: 'admin',
      owner: () => ({ token: () => t.root, path: `/admin/checkouts/${CO_RB}/rollback`, headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toMatchObject({ checkoutId: CO_RB, kind: 'rollback' }) }),
      other: () => ({ path: `/admin/checkouts/${CO_RB}/rollback`, status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/desktops/:name/restore', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/desktops/a-idle/restore', body: json({ restorePoint: RP_IDLE }), headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toEqual({ desktop: 'a-idle', version: 2, restorePoint: RP_IDLE, personaVersion: null }) }),
      other: () => ({ path: '/admin/desktops/a-idle/restore', body: json({ restorePoint: RP_IDLE }), status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/desktops/:name/policy', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/desktops/a-spare/policy', body: json({ rollbackKeepsLocal: false }), headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toMatchObject({ desktop: 'a-spare', rollbackKeepsLocal: false, effectiveLeaseDays: 7 }) }),
      other: () => ({ path: '/admin/desktops/a-spare/policy', body: json({ leaseDays: 300 }), status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'POST', route: '/admin/images/:name/policy', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/images/img/policy', body: json({ leaseDays: 7 }), headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toEqual({ image: 'img', leaseDays: 7, encryption: null, effectiveEncryption: 'required' }) }),
      other: () => ({ path: '/admin/images/img/policy', body: json({ leaseDays: 300 }), status: 403, code: 'FORBIDDEN' }),
    },
    {
      // the admin deletes a desktop of its own made for this (bob would delete alice's idle one)
      method: 'DELETE', route: '/admin/desktops/:name', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/desktops/r-trash', headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toEqual({ desktop: 'r-trash', versions: 1, restorePoints: 0 }) }),
      other: () => ({ path: '/admin/desktops/a-idle', status: 403, code: 'FORBIDDEN' }),
    },
    {
      // r-fresh is version 1 of the image's only version: a refresh finds nothing to do (and changes nothing)
      method: 'POST', route: '/admin/desktops/:name/refresh', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/desktops/r-fresh/refresh', headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toMatchObject({ desktop: 'r-fresh', state: 'unchanged', imageVersion: 1 }) }),
      other: () => ({ path: '/admin/desktops/a-idle/refresh', status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'GET', route: '/admin/sharing', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/sharing', headers: asAdminDevice, status: 200, check: (r) => expect(r.json.images.map((i: any) => i.image)).toEqual(['img']) }),
      other: () => ({ path: '/admin/sharing', status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'GET', route: '/admin/requests', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/requests', headers: asAdminDevice, status: 200, check: (r) => expect(r.json.requests.map((q: any) => q.id)).toContain(RID) }),
      other: () => ({ path: '/admin/requests', status: 403, code: 'FORBIDDEN' }),
    },
    {
      // alice's newest version already is version 2: the restore changes nothing (and later rows see the same persona)
      method: 'POST', route: '/admin/users/:name/persona/restore', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/users/alice/persona/restore', body: json({ version: 2 }), headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toEqual({ user: 'alice', version: 2, restoredFrom: 2, changed: false }) }),
      other: () => ({ path: '/admin/users/alice/persona/restore', body: json({ version: 1 }), status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'GET', route: '/admin/tokens', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/tokens', headers: asAdminDevice, status: 200, check: (r) => expect(r.json.tokens.find((x: any) => x.id === REV_ID)).toMatchObject({ device: D_REV, revokedAt: expect.any(String) }) }),
      other: () => ({ path: '/admin/tokens', status: 403, code: 'FORBIDDEN' }),
    },
    {
      // revoking a revoked token answers the token as it is
      method: 'POST', route: '/admin/tokens/:id/revoke', scope: 'admin',
      owner: () => ({ token: () => t.root, path: `/admin/tokens/${REV_ID}/revoke`, headers: asAdminDevice, status: 200, check: (r) => expect(r.json).toMatchObject({ id: REV_ID, revokedAt: expect.any(String) }) }),
      // bob would revoke alice's working laptop token
      other: () => ({ path: `/admin/tokens/${tokenIdOf(D1)}/revoke`, status: 403, code: 'FORBIDDEN' }),
    },
    {
      method: 'GET', route: '/admin/audit', scope: 'admin',
      owner: () => ({ token: () => t.root, path: '/admin/audit?limit=5', headers: asAdminDevice, status: 200, check: (r) => expect(r.json.audit.length).toBe(5) }),
      other: () => ({ path: '/admin/audit', status: 403, code: 'FORBIDDEN' }),
    },
    // ---- persona: every route acts on the caller's own persona versions
    {
      method: 'GET', route: '/persona', scope: 'persona',
      owner: () => ({ token: () => t.d1, path: '/persona', headers: asD1, status: 200, check: (r) => expect(personaId(r.body)).toBe(snapId(SNAP_A)) }),
      // alice's version 2 does not exist for bob
      other: () => ({ path: '/persona?version=2', status: 404, code: 'NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/persona/chunks/get', scope: 'persona',
      owner: () => ({ token: () => t.d1, path: '/persona/chunks/get', body: json({ ids: [CHUNK_A], version: 2 }), headers: asD1, status: 200, check: (r) => expect(r.body.toString('latin1')).toContain(CHUNK_A) }),
      // alice's chunk named against bob's own version: ids are not capabilities
      other: () => ({ path: '/persona/chunks/get', body: json({ ids: [CHUNK_A], version: 1 }), status: 404, code: 'BLOCK_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/persona/chunks/missing', scope: 'persona',
      owner: () => ({ token: () => t.d1, path: '/persona/chunks/missing', body: json({ ids: [CHUNK_A] }), headers: asD1, status: 200, check: (r) => expect(r.json).toEqual({ missing: [] }) }),
      // (a global existence query by design: asked about an id nobody stored, bob learns only that)
      other: () => ({ path: '/persona/chunks/missing', body: json({ ids: [blockId(Buffer.from('nobody'))] }), status: 200, check: (r) => expect(r.json).toEqual({ missing: [blockId(Buffer.from('nobody'))] }) }),
    },
    {
      method: 'PUT', route: '/persona/blocks', scope: 'persona',
      owner: () => ({ token: () => t.d1, path: '/persona/blocks?base=2', body: emptyZstdTar, headers: { ...asD1, 'content-encoding': 'zstd' }, status: 200, check: (r) => expect(r.json).toEqual({ chunks: 0, files: 0 }) }),
      // an rdiff delta whose base is alice's file, against bob's own version
      other: () => ({ path: '/persona/blocks?base=1', body: deltaOnAlicesFile, status: 404, code: 'BLOCK_NOT_FOUND' }),
    },
    {
      method: 'POST', route: '/persona/push', scope: 'persona',
      owner: () => ({ token: () => t.d1, path: '/persona/push', body: personaPushA, headers: { ...asD1, 'content-type': CONTENT_TAR }, status: 200, check: (r) => expect(r.json).toMatchObject({ version: 2, changed: false }) }),
      // a valid push of bob's own persona naming alice's desktop (whose merge policies it would use)
      other: () => ({ path: '/persona/push', body: personaPushB, headers: { 'content-type': CONTENT_TAR }, status: 404, code: 'DESKTOP_NOT_FOUND' }),
    },
  ];
  const label = (r: Route): string => `${r.method} ${r.route}`;

  /**
   * Cross-user rows: user B, on his own checkout and persona, names A's blocks, chunks or manifest. A
   * hash is not a capability: B learns nothing of A's data (a "missing" answer says missing), cannot
   * read it, and cannot commit a version or persona that names it without sending its bytes.
   */
  const asBob = { [HEADER_DEVICE]: D_BOB };
  const CROSS: Record<string, Array<() => Req & Expect>> = {
    'POST /checkouts/:id/blocks/missing': [() => ({ path: `/checkouts/${CO_BOB}/blocks/missing`, body: json({ ids: [ALICE_BLOCK, firstBlock] }), headers: asBob, status: 200, check: (r) => expect(r.json).toEqual({ missing: [ALICE_BLOCK], frames: true }) })],
    'POST /checkouts/:id/blocks/get': [
      () => ({ path: `/checkouts/${CO_BOB}/blocks/get`, body: json({ ids: [ALICE_BLOCK] }), headers: asBob, status: 404, code: 'BLOCK_NOT_FOUND' }),
      // a patch against A's block: the base must be a block of B's own versions
      () => ({ path: `/checkouts/${CO_BOB}/blocks/get`, body: json({ ids: [firstBlock], bases: { [firstBlock]: ALICE_BLOCK }, baseVersion: 1 }), headers: asBob, status: 404, code: 'BLOCK_NOT_FOUND' }),
    ],
    'PUT /checkouts/:id/blocks': [() => ({ path: `/checkouts/${CO_BOB}/blocks`, body: bobPatchOnAlice, headers: { ...asBob, 'content-encoding': 'zstd' }, status: 404, code: 'BLOCK_NOT_FOUND' })],
    'POST /checkouts/:id/commit': [() => ({ path: `/checkouts/${CO_BOB}/commit`, body: bobNamingAlice, headers: { ...asBob, 'content-type': CONTENT_MANIFEST }, status: 409, code: 'BLOCKS_MISSING', check: (r) => expect(r.json.error.data).toMatchObject({ count: 1, ids: [ALICE_BLOCK] }) })],
    'POST /checkouts/:id/restore-points': [() => ({ path: `/checkouts/${CO_BOB}/restore-points`, body: bobNamingAlice, headers: { ...asBob, 'content-type': CONTENT_MANIFEST }, status: 409, code: 'BLOCKS_MISSING' })],
    'GET /desktops/:name/restore-points': [() => ({ path: '/desktops/a-desk/restore-points', headers: asBob, status: 404, code: 'DESKTOP_NOT_FOUND' })],
    'GET /checkouts/:id/manifest': [() => ({ path: `/checkouts/${CO}/manifest`, headers: asBob, status: 404, code: 'CHECKOUT_NOT_FOUND' })],
    'POST /persona/chunks/missing': [() => ({ path: '/persona/chunks/missing', body: json({ ids: [CHUNK_A] }), headers: asBob, status: 200, check: (r) => expect(r.json).toEqual({ missing: [CHUNK_A] }) })],
    'POST /persona/chunks/get': [() => ({ path: '/persona/chunks/get', body: json({ ids: [CHUNK_A], version: 1 }), headers: asBob, status: 404, code: 'BLOCK_NOT_FOUND' })],
    'PUT /persona/blocks': [() => ({ path: '/persona/blocks?base=1', body: deltaOnAlicesFile, headers: asBob, status: 404, code: 'BLOCK_NOT_FOUND' })],
    'POST /persona/push': [() => ({ path: '/persona/push', body: bobPushOfAlice, headers: { ...asBob, 'content-type': CONTENT_TAR }, status: 409, code: 'BLOCKS_MISSING', check: (r) => expect(r.json.error.data).toMatchObject({ ids: [CHUNK_A] }) })],
  };
  /** Answered before authentication (handle() in http-server.ts): static, or counts only, so nothing of anyone's. */
  const PUBLIC = [
    { method: 'GET', path: '/', type: /^text\/html/ },
    { method: 'GET', path: '/console', type: /^text\/html/ },
    { method: 'GET', path: '/metrics', type: /^text\/plain/ },
  ];
  let tokens: any[] = [];
  const tokenIdOf = (device: string): number => tokens.find((x) => x.device === device && x.revokedAt === null)?.id;

  /** What a refused request must not change: checkouts, leases, requests, tokens, audit, versions. */
  const snapshot = async () => {
    const strip = (o: any) => ({ ...o, lastUsedAt: undefined });
    const audit = (await ok('GET', '/admin/audit?limit=10000', t.root)).audit;
    return {
      checkouts: (await ok('GET', '/admin/checkouts', t.root)).checkouts,
      requests: (await ok('GET', '/admin/requests', t.root)).requests,
      tokens: (await ok('GET', '/admin/tokens', t.root)).tokens.map(strip),
      audit,
      desktops: (await ok('GET', '/desktops', t.root)).desktops,
      restorePoints: [(await ok('GET', '/desktops/a-desk/restore-points', t.root)).restorePoints, (await ok('GET', '/desktops/a-idle/restore-points', t.root)).restorePoints],
      persona: personaId((await send('GET', `${API_PREFIX}/persona`, t.d1)).body),
      status: { ...(await server.admin(['status'])).json, freeBytes: undefined }, // free space moves with everything else on this disk
    };
  };

  beforeAll(async () => {
    // A 2 MiB image of distinct blocks.
    const img = Buffer.alloc(IMAGE_BYTES);
    for (let i = 0; i < img.length; i += 32) createHash('sha256').update(`block-${i}`).digest().copy(img, i);
    writeFileSync(image, img);
    await server.init();
    t.alice = await server.addUser('alice');
    t.bob = await server.addUser('bob');
    const root = await server.admin(['user', 'add', 'root', '--admin']);
    expect(root.code, root.stderr).toBe(0);
    t.root = root.json.token;
    expect((await server.admin(['image', 'publish', 'img', image])).code).toBe(0);
    // A client release for the update routes (the smallest tarball the server takes as carryon 0.0.1).
    const release = path.join(dir, 'carryon-0.0.1.tgz');
    writeFileSync(release, await releaseTarball('0.0.1'));
    expect((await server.admin(['release', 'publish', release, '--version', '0.0.1'])).code).toBe(0);
    for (const [d, u] of [['a-desk', 'alice'], ['a-spare', 'alice'], ['a-rollback', 'alice'], ['a-probe', 'alice'], ['a-idle', 'alice'], ['b-desk', 'bob'], ['r-trash', 'root'], ['r-fresh', 'root']]) {
      const r = await server.admin(['desktop', 'create', d!, '--user', u!, '--image', 'img']);
      expect(r.code, r.stderr).toBe(0);
    }
    await server.start();

    // Devices, as `carryon login` registers them: with the user's own token.
    t.d1 = (await ok('POST', '/devices', t.alice, { device: D1, name: 'a-laptop' })).token;
    t.d2 = (await ok('POST', '/devices', t.alice, { device: D2, name: 'a-second-laptop' })).token;
    t.rev = (await ok('POST', '/devices', t.alice, { device: D_REV, name: 'a-stolen-laptop' })).token;
    t.admin = (await ok('POST', '/devices', t.root, { device: D_ADMIN, name: 'root-laptop' })).token;
    t.adminRev = (await ok('POST', '/devices', t.root, { device: D_ADMIN_REV, name: 'root-old-laptop' })).token;

    // Checkouts held by D1. First a-desk moves to a version 2 of its own (a-desk@1 is the image's manifest, which bob's desktop shares).
    const start = (desk: string) => ok('POST', `/desktops/${desk}/checkouts`, t.d1, { device: D1, deviceName: 'a-laptop' }, asD1);
    const first = (await start('a-desk')).checkoutId;
    const m1 = decodeManifest((await send('GET', `${API_PREFIX}/checkouts/${first}/manifest`, t.d1, undefined, asD1)).body);
    const own = Buffer.alloc(65536, 0xa1);
    expect(await ok('PUT', `/checkouts/${first}/blocks`, t.d1, await tar([{ name: `b/${blockId(own)}`, data: own }], true), { ...asD1, 'content-encoding': 'zstd' })).toMatchObject({ stored: 1 });
    m1.setId(2, blockId(own));
    expect(await ok('POST', `/checkouts/${first}/commit`, t.d1, encodeManifest(m1), { ...asD1, 'content-type': CONTENT_MANIFEST })).toMatchObject({ version: 2 });
    const coInfo = await start('a-desk');
    CO = coInfo.checkoutId;
    // alice's laptop escrows the data key of its copy of a-desk (the desktop does not require it: any copy may)
    escrowKey = coInfo.encryption.escrowKey;
    expect(coInfo.encryption).toEqual({ required: false, escrowKey: expect.stringMatching(/^[A-Za-z0-9+/]+=*$/) });
    escrowA = json({ sealed: sealToEscrow(escrowKey, DATA_KEY_A, CO).toString('base64'), keyCheck: keyCheck(DATA_KEY_A) });
    expect(await ok('PUT', `/checkouts/${CO}/escrow`, t.d1, Buffer.from(escrowA), asD1)).toMatchObject({ checkoutId: CO, already: false });
    CO_SPARE = (await start('a-spare')).checkoutId;
    CO_RB = (await start('a-rollback')).checkoutId;
    const m = await send('GET', `${API_PREFIX}/checkouts/${CO}/manifest`, t.d1, undefined, asD1);
    expect(m.status).toBe(200);
    baseManifest = m.body;
    aManifestId = manifestId(baseManifest);
    firstBlock = decodeManifest(baseManifest).idAt(0)!;
    expect(firstBlock).toMatch(/^[0-9a-f]{64}$/);
    const mm = new DiskManifest(IMAGE_BYTES, 65536, Buffer.from(decodeManifest(baseManifest).ids));
    mm.setId(1, blockId(Buffer.from('a block nobody uploaded')));
    missingManifest = encodeManifest(mm);
    emptyZstdTar = await tar([], true);
    // a-idle: a restore point sent from a checkout that then ended
    const idle = (await start('a-idle')).checkoutId;
    const idleManifest = (await send('GET', `${API_PREFIX}/checkouts/${idle}/manifest`, t.d1, undefined, asD1)).body;
    RP_IDLE = (await ok('POST', `/checkouts/${idle}/restore-points`, t.d1, idleManifest, { ...asD1, 'content-type': CONTENT_MANIFEST })).id;
    expect(await ok('DELETE', `/checkouts/${idle}`, t.d1, undefined, asD1)).toEqual({ desktop: 'a-idle', already: false });

    // Alice's persona version 2 holds a secret file.
    expect(await ok('PUT', '/persona/blocks?base=1', t.d1, await tar([{ name: `b/${CHUNK_A}`, data: SECRET_TEXT }]), asD1)).toEqual({ chunks: 1, files: 0 });
    expect(await ok('POST', '/persona/push', t.d1, await pushBody(EMPTY_SNAP, SNAP_A, 1, 'a-desk'), { ...asD1, 'content-type': CONTENT_TAR })).toMatchObject({ version: 2, changed: true });
    personaPushA = await pushBody(SNAP_A, SNAP_A, 2, 'a-desk');
    personaPushB = await pushBody(EMPTY_SNAP, EMPTY_SNAP, 1, 'a-desk');
    deltaOnAlicesFile = await tar([{ name: `r/${blockId(Buffer.from('what bob wants'))}/${SNAP_A.files[1]!.hash}`, data: Buffer.from('rs\x026') }]);

    CO_BOB = (await ok('POST', '/desktops/b-desk/checkouts', t.bob, { device: D_BOB, deviceName: 'bob-laptop' })).checkoutId;
    const mb = decodeManifest((await send('GET', `${API_PREFIX}/checkouts/${CO_BOB}/manifest`, t.bob)).body);
    mb.setId(2, ALICE_BLOCK);
    bobNamingAlice = encodeManifest(mb);
    bobPushOfAlice = await pushBody(EMPTY_SNAP, SNAP_A, 1, 'b-desk');
    bobPatchOnAlice = await tar([{ name: `p/${blockId(Buffer.alloc(65536, 0xa2))}/${ALICE_BLOCK}`, data: Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0xa2]) }], true);

    // The admin asks for a forced check-in of CO; revokes D_REV over HTTP and D_ADMIN_REV from the CLI.
    RID = (await ok('POST', `/admin/checkouts/${CO}/checkin`, t.root)).id;
    tokens = (await ok('GET', '/admin/tokens', t.root)).tokens;
    REV_ID = tokenIdOf(D_REV);
    ADMIN_REV_ID = tokenIdOf(D_ADMIN_REV);
    expect(REV_ID).toBeGreaterThan(0);
    expect(ADMIN_REV_ID).toBeGreaterThan(0);
    expect(await ok('POST', `/admin/tokens/${REV_ID}/revoke`, t.root)).toMatchObject({ id: REV_ID, user: 'alice', device: D_REV, revokedAt: expect.any(String) });
    const cliTokens = await server.admin(['admin', 'tokens']);
    expect(cliTokens.json.tokens.find((x: any) => x.id === ADMIN_REV_ID)).toMatchObject({ user: 'root', device: D_ADMIN_REV, revokedAt: null });
    const cli = await server.admin(['admin', 'revoke', String(ADMIN_REV_ID)]);
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.json).toMatchObject({ id: ADMIN_REV_ID, revokedAt: expect.any(String) });
    tokens = (await ok('GET', '/admin/tokens', t.root)).tokens;

    before = await snapshot();
  }, 60_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('the table lists every route registered in server/http-server.ts, and no other', () => {
    const src = readFileSync(path.join(ROOT, 'server/http-server.ts'), 'utf8');
    // Routes enter the table through r(...) only.
    expect(src.match(/\.routes\.push\(/g)).toHaveLength(1);
    const registered = [...src.matchAll(/\br\(\s*['"`]([A-Z]+)['"`]\s*,\s*['"`]([^'"`]+)['"`]/g)].map((m) => `${m[1]} ${m[2]}`);
    expect(src.match(/\br\(\s*['"`]/g)!.length).toBe(registered.length);
    expect(registered.length).toBeGreaterThanOrEqual(20);
    const table = ROUTES.map(label);
    expect(new Set(table).size).toBe(table.length);
    expect([...table].sort()).toEqual([...registered].sort());
    // Every /admin route goes through the admin(...) gate, and the table says so.
    const gated = [...src.matchAll(/\br\(\s*['"`]([A-Z]+)['"`]\s*,\s*['"`]([^'"`]+)['"`]\s*,\s*admin\(/g)].map((m) => `${m[1]} ${m[2]}`).sort();
    expect(gated).toEqual(registered.filter((x) => x.split(' ')[1]!.startsWith('/admin/')).sort());
    expect(ROUTES.filter((r) => r.scope === 'admin').map(label).sort()).toEqual(gated);
    // Pages answered before authentication, matched on url.pathname in handle().
    const open = [...src.matchAll(/url\.pathname\s*===\s*['"`]([^'"`]+)['"`]/g)].map((m) => m[1]!);
    expect(open.length).toBeGreaterThanOrEqual(1);
    expect([...new Set(open)].sort()).toEqual(PUBLIC.map((x) => x.path).sort());
  });

  describe('0. pages without a token: answered, and nothing of anyone in them', () => {
    it.each(PUBLIC)('$method $path', async (page) => {
      const r = await send(page.method, page.path, null);
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toMatch(page.type);
      expect(r.json).toBeNull();
      const text = r.body.toString('utf8');
      expect(secrets().concat(['bob', 'root', 'a-desk', 'b-desk', t.alice, t.d1, t.root, t.admin]).filter((x) => text.includes(x))).toEqual([]);
      expect(r.body.length).toBeGreaterThan(0);
    });
  });

  describe('1. no Authorization header: 401 UNAUTHORIZED', () => {
    it.each(ROUTES)('$method $route', async (route) => {
      const r = await call(route.method, null, route.owner());
      expect(errorOf(r)).toEqual({ status: 401, code: 'UNAUTHORIZED' });
    });
  });

  describe('2. a wrong token: 401 UNAUTHORIZED', () => {
    it.each(ROUTES)('$method $route', async (route) => {
      const o = route.owner();
      expect(errorOf(await call(route.method, `cod_${'A'.repeat(43)}`, o))).toEqual({ status: 401, code: 'UNAUTHORIZED' });
      expect(errorOf(await call(route.method, `${o.token()}x`, o))).toEqual({ status: 401, code: 'UNAUTHORIZED' });
      // the owner's valid token, but not as a bearer token
      expect(errorOf(await call(route.method, null, o, { authorization: `Token ${o.token()}` }))).toEqual({ status: 401, code: 'UNAUTHORIZED' });
    });
  });

  describe('3. a revoked device token (by the admin over HTTP; from the server CLI): 401 UNAUTHORIZED', () => {
    it.each(ROUTES)('$method $route', async (route) => {
      const o = route.owner();
      expect(errorOf(await call(route.method, t.rev, o, { [HEADER_DEVICE]: D_REV }))).toEqual({ status: 401, code: 'UNAUTHORIZED' });
      // an admin's revoked token opens no admin route either
      expect(errorOf(await call(route.method, t.adminRev, o, { [HEADER_DEVICE]: D_ADMIN_REV }))).toEqual({ status: 401, code: 'UNAUTHORIZED' });
    });
  });

  describe("the admin's own laptop token (a device token) is not the admin: 403 on every admin route", () => {
    it.each(ROUTES.filter((r) => r.scope === 'admin'))('$method $route', async (route) => {
      const r = await call(route.method, t.admin, route.owner(), { [HEADER_DEVICE]: D_ADMIN });
      expect(errorOf(r)).toEqual({ status: 403, code: 'FORBIDDEN' });
      expect(r.json.error.message).toMatch(/admin's own token/);
    });
  });

  describe('4. a device token claiming another device: 403 FORBIDDEN', () => {
    it.each(ROUTES)('$method $route', async (route) => {
      // a device token that passes with its own id: alice's laptop D1 (for /admin routes the admin's laptop)
      const token = route.scope === 'admin' ? t.admin : t.d1;
      for (const claimed of [D_OTHER, D2, '']) {
        const r = await call(route.method, token, route.owner(), { [HEADER_DEVICE]: claimed });
        expect(errorOf(r), `claiming ${JSON.stringify(claimed)}`).toEqual({ status: 403, code: 'FORBIDDEN' });
        expect(r.json.error.message).toMatch(/another device/);
      }
    });
  });

  describe("5. user B on A's resources: *_NOT_FOUND (never FORBIDDEN), nothing of A's in the answer", () => {
    it.each(ROUTES.filter((r) => r.scope !== 'admin'))('$method $route', async (route) => {
      const o = route.other();
      const r = await call(route.method, t.bob, o);
      expect(errorOf(r), r.body.toString().slice(0, 300)).toEqual({ status: o.status, code: o.code });
      o.check?.(r);
      if (route.scope === 'desktop') expect(r.json.error.code).toBe('DESKTOP_NOT_FOUND');
      if (route.scope === 'checkout') expect(r.json.error.code).toBe('CHECKOUT_NOT_FOUND');
      const sent = `${o.path} ${JSON.stringify(o.headers ?? {})} ${Buffer.isBuffer(o.body) ? o.body.toString('latin1') : (o.body ?? '')}`;
      const answer = r.body.toString('latin1');
      expect(secrets().filter((s) => !sent.includes(s) && answer.includes(s))).toEqual([]);
    });
  });

  it('5c. every route that names a block, chunk or manifest has cross-user rows', () => {
    const naming = ROUTES.map(label).filter((l) => /blocks|chunks|manifest|commit|restore-points$|persona\/push/.test(l) && !l.includes('/admin/'));
    expect(naming.length).toBeGreaterThanOrEqual(9);
    expect(naming.filter((l) => !(l in CROSS))).toEqual([]);
  });

  describe("5c. B on his own checkout and persona, naming A's blocks and chunks: nothing learned, read or committed", () => {
    it.each(Object.entries(CROSS).flatMap(([route, rows]) => rows.map((row, i) => ({ route, row, i }))))('$route #$i', async ({ route, row }) => {
      const o = row();
      const r = await call(route.split(' ')[0]!, t.bob, o);
      expect(errorOf(r), r.body.toString().slice(0, 300)).toEqual({ status: o.status, code: o.code });
      o.check?.(r);
      const sent = `${o.path} ${Buffer.isBuffer(o.body) ? o.body.toString('latin1') : (o.body ?? '')}`;
      expect(secrets().filter((x) => !sent.includes(x) && r.body.toString('latin1').includes(x))).toEqual([]);
    });
  });

  it("5b. B on his own checkout with A's request id: NOT_FOUND, and A's request is untouched", async () => {
    const r = await call('POST', t.bob, { path: `/checkouts/${CO_BOB}/requests/${RID}`, body: json({ state: 'done' }) });
    expect(errorOf(r)).toEqual({ status: 404, code: 'NOT_FOUND' });
    expect((await ok('GET', '/admin/requests', t.root)).requests.find((q: any) => q.id === RID)).toMatchObject({ checkoutId: CO, state: 'requested' });
  });

  describe('6. admin routes: a plain user (user token, device token) 403 FORBIDDEN', () => {
    it.each(ROUTES.filter((r) => r.scope === 'admin'))('$method $route', async (route) => {
      const o = route.other();
      expect(errorOf(await call(route.method, t.bob, o))).toEqual({ status: 403, code: 'FORBIDDEN' });
      expect(errorOf(await call(route.method, t.alice, route.owner()))).toEqual({ status: 403, code: 'FORBIDDEN' });
      const r = await call(route.method, t.d1, route.owner(), asD1);
      expect(errorOf(r)).toEqual({ status: 403, code: 'FORBIDDEN' });
      expect(r.json.error.message).toBe('alice is not an admin');
    });
  });

  it('none of the refused requests above changed anything or wrote an audit row', async () => {
    expect(await snapshot()).toEqual(before);
  });

  describe('7. the owner (admin routes: an admin) gets through', () => {
    it.each(ROUTES)('$method $route', async (route) => {
      const o = route.owner();
      const r = await call(route.method, o.token(), o);
      expect([401, 403, 404]).not.toContain(r.status);
      expect(errorOf(r), r.body.toString().slice(0, 300)).toEqual({ status: o.status, code: o.code });
      o.check?.(r);
    });
  });

  it('the audit log names the admin, the device and the address of every admin action; refused callers left no row', async () => {
    const audit = (await ok('GET', '/admin/audit?limit=10000', t.root)).audit as any[];
    const revoke = audit.filter((a) => a.action === 'token.revoke');
    expect(revoke).toHaveLength(2);
    expect(revoke.find((a) => a.target === `token:${REV_ID}`)).toMatchObject({ actor: 'root', address: expect.stringMatching(/^(::ffff:)?127\.0\.0\.1$/), detail: { user: 'alice', device: D_REV } });
    expect(revoke.find((a) => a.target === `token:${ADMIN_REV_ID}`)).toMatchObject({ actor: expect.stringMatching(/^cli:/), address: 'local', detail: { user: 'root', device: D_ADMIN_REV } });
    const one = (action: string) => {
      const rows = audit.filter((a) => a.action === action);
      expect(rows, action).toHaveLength(1);
      return rows[0];
    };
    const extend = audit.filter((a) => a.action === 'lease.extend');
    // A lease code does not extend the server's lease when made (only once the laptop used it): one extension.
    expect(extend.map((a) => a.detail.days).sort()).toEqual([1]);
    for (const a of extend) expect(a).toMatchObject({ actor: 'root', device: D_ADMIN, address: expect.stringMatching(/127\.0\.0\.1$/), target: `checkout:${CO}`, detail: { desktop: 'a-desk' } });
    expect(one('lease.code')).toMatchObject({ actor: 'root', device: D_ADMIN, detail: { checkoutId: CO, days: 2 } });
    expect(one('checkin.request')).toMatchObject({ actor: 'root', address: expect.stringMatching(/127\.0\.0\.1$/), detail: { checkoutId: CO, request: RID } });
    expect(one('checkout.rollback')).toMatchObject({ actor: 'root', device: D_ADMIN, target: 'desktop:a-rollback', detail: { checkoutId: CO_RB } });
    expect(audit.filter((a) => a.action === 'checkout.discard').map((a) => a.target).sort()).toEqual(['desktop:a-idle', 'desktop:a-spare']);
    expect(audit.find((a) => a.action === 'checkout.discard' && a.target === 'desktop:a-spare')).toMatchObject({ actor: 'alice', device: D1, detail: { checkoutId: CO_SPARE } });
    expect(audit.filter((a) => a.action === 'restore-point.create').map((a) => a.target).sort()).toEqual(['desktop:a-desk', 'desktop:a-idle']);
    expect(one('desktop.restore')).toMatchObject({ actor: 'root', device: D_ADMIN, address: expect.stringMatching(/127\.0\.0\.1$/), target: 'desktop:a-idle', detail: { restorePoint: RP_IDLE, version: 2 } });
    expect(one('checkin.in-progress')).toMatchObject({ actor: 'alice', device: D1, detail: { checkoutId: CO, request: RID } });
    // the setup's deposit (the owner's second one changed nothing), and the admin's one reveal
    expect(one('escrow.deposit')).toMatchObject({ actor: 'alice', device: D1, target: 'desktop:a-desk', detail: { checkoutId: CO, keyCheck: keyCheck(DATA_KEY_A) } });
    expect(one('escrow.reveal')).toMatchObject({ actor: 'root', device: D_ADMIN, address: expect.stringMatching(/127\.0\.0\.1$/), target: 'desktop:a-desk', detail: { checkoutId: CO, device: D1, keyCheck: keyCheck(DATA_KEY_A) } });
    // never the code itself
    expect(JSON.stringify(audit)).not.toContain(encodeRecoveryCode(DATA_KEY_A));
    expect(audit.filter((a) => a.action === 'device.register').map((a) => a.target).sort()).toEqual([D1, D2, D_REV, D_NEW, D_ADMIN, D_ADMIN_REV].map((d) => `device:${d}`).sort());
    // bob was refused everywhere: after the setup he appears nowhere
    expect(audit.filter((a) => a.id > before.audit[0].id && JSON.stringify(a).includes('bob'))).toEqual([]);
    expect(audit.filter((a) => a.actor === 'bob').map((a) => a.action)).toEqual(['checkout.start']);
    expect(audit.every((a) => typeof a.actor === 'string' && a.address !== null)).toBe(true);
    // alice still holds a-desk (at her version 2) from D1, and her laptop token works
    expect((await ok('GET', '/desktops/a-desk', t.d1, undefined, asD1)).checkout).toMatchObject({ checkoutId: CO, device: D1, baseVersion: 2 });
    expect((await ok('GET', '/admin/tokens', t.root)).tokens.find((x: any) => x.device === D1)).toMatchObject({ revokedAt: null });
  });

  // ---- Found by this matrix and fixed: a device token acts only for its own device, with or without
  // the header; only a user token registers devices; an early refusal says Connection: close.
  describe('a device token speaks for its own device even without x-carryon-device', () => {
    const P1 = dev(11); // holds CO_P
    const P2 = dev(12); // alice's other laptop
    const tp = { p1: '', p2: '' };
    let CO_P = '';
    let RID_P = 0;
    let probeManifest: Buffer = Buffer.alloc(0);
    beforeAll(async () => {
      tp.p1 = (await ok('POST', '/devices', t.alice, { device: P1, name: 'probe-holder' })).token;
      tp.p2 = (await ok('POST', '/devices', t.alice, { device: P2, name: 'probe-other' })).token;
      CO_P = (await ok('POST', '/desktops/a-probe/checkouts', tp.p1, { device: P1, deviceName: 'probe-holder' }, { [HEADER_DEVICE]: P1 })).checkoutId;
      RID_P = (await ok('POST', `/admin/checkouts/${CO_P}/checkin`, t.root)).id;
      probeManifest = (await send('GET', `${API_PREFIX}/checkouts/${CO_P}/manifest`, tp.p1, undefined, { [HEADER_DEVICE]: P1 })).body;
    });
    // With its own device id in the header P2 is refused (activeCheckout compares the header); without
    // the header the handlers compare nothing, though the token names its device (Ctx.device).
    const cases: Array<[string, string, () => string, () => Buffer | string | undefined, Record<string, string>]> = [
      ['POST', 'heartbeat', () => `/checkouts/${CO_P}/heartbeat`, () => json({ pendingBytes: 0, pendingBlocks: 0 }), {}],
      ['POST', 'blocks/get', () => `/checkouts/${CO_P}/blocks/get`, () => json({ ids: [firstBlock] }), {}],
      ['PUT', 'blocks (upload)', () => `/checkouts/${CO_P}/blocks`, () => emptyZstdTar, { 'content-encoding': 'zstd' }],
      ['POST', 'restore-points', () => `/checkouts/${CO_P}/restore-points`, () => probeManifest, { 'content-type': CONTENT_MANIFEST }],
      ['POST', 'requests/:rid (report on the admin\'s forced check-in)', () => `/checkouts/${CO_P}/requests/${RID_P}`, () => json({ state: 'done' }), {}],
      ['PUT', 'escrow (a key for the holder\'s copy)', () => `/checkouts/${CO_P}/escrow`, () => json({ sealed: sealToEscrow(escrowKey, DATA_KEY_A, CO_P).toString('base64'), keyCheck: keyCheck(DATA_KEY_A) }), {}],
    ];
    for (const [method, what, p, body, headers] of cases) {
      it(`control: ${method} ${what} with the other device's own id in the header is 403`, async () => {
        expect(errorOf(await send(method, API_PREFIX + p(), tp.p2, body(), { ...headers, [HEADER_DEVICE]: P2 }))).toEqual({ status: 403, code: 'FORBIDDEN' });
      });
      it(`${method} ${what} on another device's checkout, header left out: 403`, async () => {
        expect(errorOf(await send(method, API_PREFIX + p(), tp.p2, body(), headers))).toEqual({ status: 403, code: 'FORBIDDEN' });
      });
    }
    it("DELETE /checkouts/:id: another device of the user discards the holder's checkout: 403", async () => {
      const r = await send('DELETE', `${API_PREFIX}/checkouts/${CO_P}`, tp.p2, undefined, { [HEADER_DEVICE]: P2 });
      expect(errorOf(r)).toEqual({ status: 403, code: 'FORBIDDEN' });
    });
    // `carryon login` registers with the user's token; a device token minting more outlives its own revocation.
    it('POST /devices with a device token, for a new device id: 403', async () => {
      const r = await send('POST', `${API_PREFIX}/devices`, tp.p2, json({ device: dev(13), name: 'minted' }), { [HEADER_DEVICE]: P2 });
      expect(errorOf(r)).toEqual({ status: 403, code: 'FORBIDDEN' });
    });
    it("POST /devices with a device token, for the user's other registered device (revoking its token): 403, and the holder's token still works", async () => {
      const r = await send('POST', `${API_PREFIX}/devices`, tp.p2, json({ device: P1, name: 'taken-over' }), { [HEADER_DEVICE]: P2 });
      expect(errorOf(r)).toEqual({ status: 403, code: 'FORBIDDEN' });
      expect((await send('GET', `${API_PREFIX}/whoami`, tp.p1)).status).toBe(200);
    });
  });

  it('a refusal sent before the body was read says Connection: close, or the connection stays usable', async () => {
    const { port } = new URL(server.url);
    const sock = net.connect(Number(port), '127.0.0.1');
    let got: Buffer = Buffer.alloc(0);
    let closed = false;
    sock.on('data', (c: Buffer) => (got = Buffer.concat([got, c])));
    sock.on('close', () => (closed = true));
    sock.on('error', () => undefined);
    const response = async (from: number): Promise<string | null> => {
      for (let i = 0; i < 200; i++) {
        const text = got.subarray(from).toString('latin1');
        const head = text.indexOf('\r\n\r\n');
        const len = /content-length: (\d+)/i.exec(text);
        if (head >= 0 && len && text.length >= head + 4 + Number(len[1])) return text.slice(0, head + 4 + Number(len[1]));
        if (closed) return null;
        await new Promise((r) => setTimeout(r, 10));
      }
      return null;
    };
    try {
      sock.write(`POST ${API_PREFIX}/persona/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 10\r\n\r\n`);
      const first = await response(0);
      expect(first).toMatch(/^HTTP\/1\.1 401 /);
      if (/\r\nconnection: close\r\n/i.test(first!)) return;
      // it said keep-alive: the body, then a second request on the same connection, must be answered
      sock.write(`0123456789GET ${API_PREFIX}/whoami HTTP/1.1\r\nHost: x\r\n\r\n`);
      const second = await response(Buffer.byteLength(first!, 'latin1'));
      expect(second ?? 'the connection was closed: no answer').toMatch(/^HTTP\/1\.1 401 /);
    } finally {
      sock.destroy();
    }
  });

  it("B sends the bytes of A's block himself (proof of possession): stored once, not reported as already held, and then his to name", async () => {
    const before = (await server.admin(['status'])).json;
    const up = await call('PUT', t.bob, { path: `/checkouts/${CO_BOB}/blocks`, body: await tar([{ name: `b/${ALICE_BLOCK}`, data: ALICE_BLOCK_BYTES }], true), headers: { ...asBob, 'content-encoding': 'zstd' } });
    expect(up.status, up.body.toString()).toBe(200);
    expect(up.json).toEqual({ stored: 1, alreadyHad: 0, plainBytes: 65536, framesKept: 0 });
    const again = await call('POST', t.bob, { path: `/checkouts/${CO_BOB}/blocks/missing`, body: json({ ids: [ALICE_BLOCK] }), headers: asBob });
    expect(again.json).toEqual({ missing: [], frames: true });
    const after = (await server.admin(['status'])).json;
    expect(after.blocks).toBe(before.blocks); // deduplicated: no new block stored
    expect(after.storedBytes).toBe(before.storedBytes);
  });
});
