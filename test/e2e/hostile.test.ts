// Hostile input against a real server (issue 9): requests a curious or malicious user with a valid token
// can send. Each must end in a 4xx/5xx with a stable code and a JSON body the client can read, while the
// server stays up, keeps answering another user, stays under 512 MB resident (VmHWM) and changes
// nothing it stores. Requests are sent with node:http directly: the CLI would never send them.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import nodeHttp from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { API_PREFIX, blockId, createAlignedDelta, createCompressStream, encodeBlock, encodeChunkDelta, HEADER_DEVICE, packEntries, type TarEntry } from '../../src/index.js';
import { removeTmp, TestServer, tmpDir } from './harness.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 2 * MiB;
const DA = 'aaaaaaaa-0000-4000-8000-000000000009';
const DB = 'bbbbbbbb-0000-4000-8000-000000000009';

interface Answer {
  status: number | null;
  json: any;
  /** What the client's write side met, if anything (EPIPE, ECONNRESET) */
  writeError: string | null;
  /** Body bytes the client got onto the socket. */
  written: number;
}

/**
 * One request on a connection of its own. The body (a buffer or a stream of chunks) is written until it
 * ends, or (unless `keepWriting`) until the answer arrives, or until the socket fails.
 */
function send(url: string, method: string, pathname: string, token: string | null, body: Buffer | AsyncIterable<Buffer> | null, headers: Record<string, string> = {}, keepWriting = false): Promise<Answer> {
  return new Promise((resolve) => {
    const h = { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers };
    const req = nodeHttp.request(url + pathname, { method, agent: false, headers: h });
    let answered = false;
    let writeError: string | null = null;
    let written = 0;
    let writing: Promise<void> = Promise.resolve();
    // With keepWriting, the answer is reported once the writer has stopped too (its bytes counted).
    const done = (a: Omit<Answer, 'writeError' | 'written'>): void => void writing.then(() => resolve({ ...a, writeError, written }));
    req.on('response', (res) => {
      answered = true;
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('error', () => done({ status: res.statusCode!, json: null }));
      res.on('end', () => {
        let json: any = null;
        try {
          json = JSON.parse(Buffer.concat(parts).toString('utf8'));
        } catch {
          /* not JSON */
        }
        done({ status: res.statusCode!, json });
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      writeError ??= err.code ?? err.message;
      if (!answered) setTimeout(() => answered || done({ status: null, json: null }), 500);
    });
    if (body === null) return void req.end();
    if (Buffer.isBuffer(body)) return void req.end(body);
    writing = (async () => {
      for await (const c of body) {
        if (req.destroyed || (answered && !keepWriting)) return;
        written += c.length;
        if (!req.write(c)) {
          await new Promise<void>((r) => {
            req.once('drain', r);
            req.once('close', r);
          });
        }
      }
      if (!req.destroyed) req.end();
    })();
    if (!keepWriting) writing = Promise.resolve();
  });
}

/** `n` copies of `chunk`, lazily. */
async function* repeat(chunk: Buffer, n: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < n; i++) yield chunk;
}

async function tarBytes(entries: TarEntry[]): Promise<Buffer> {
  return buffer(packEntries(entries));
}

/** The tar of `entries` without its end-of-archive blocks, to repeat. */
async function tarBody(entries: TarEntry[]): Promise<Buffer> {
  const t = await tarBytes(entries);
  return t.subarray(0, t.length - 1024);
}

async function zstdOf(parts: AsyncIterable<Buffer> | Buffer[]): Promise<Buffer> {
  return buffer(Readable.from(parts).pipe(createCompressStream(1)));
}

function vmHWMkB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

describe('hostile requests against a real server', () => {
  const dir = tmpDir('hostile');
  const server = new TestServer(dir);
  const t = { alice: '', bob: '', da: '', db: '' };
  let CO = '';
  const ZERO_BLOCK = Buffer.alloc(65536);
  const ZERO_CHUNK = Buffer.alloc(MiB);
  let before: unknown = null;

  const url = (): string => server.url;
  const asA = { [HEADER_DEVICE]: DA };
  /** Bob's requests must go on being answered whatever alice's do. */
  const bobIsServed = async (): Promise<void> => {
    const r = await send(url(), 'GET', `${API_PREFIX}/whoami`, t.db, null, { [HEADER_DEVICE]: DB });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ user: 'bob', admin: false });
  };
  /** Everything the server stores that a refused request must leave as it was. */
  const state = async (): Promise<unknown> => {
    const status = (await server.admin(['status'])).json;
    const personas = await Promise.all(['alice', 'bob'].map(async (u) => (await server.admin(['persona', 'history', u])).json));
    return { status: { ...status, freeBytes: undefined, desktops: status.desktops.map((d: any) => ({ ...d, checkout: d.checkout?.checkoutId ?? null })) }, personas };
  };
  const expectRefused = (a: Answer, status: number, code: string): void => {
    expect({ status: a.status, code: a.json?.error?.code }, JSON.stringify(a)).toEqual({ status, code });
    expect(typeof a.json.error.message).toBe('string');
  };

  beforeAll(async () => {
    const image = path.join(dir, 'img.raw');
    const img = Buffer.alloc(IMAGE_BYTES);
    for (let i = 0; i < img.length; i += 32) createHash('sha256').update(`hostile-${i}`).digest().copy(img, i);
    writeFileSync(image, img);
    await server.init();
    t.alice = await server.addUser('alice');
    t.bob = await server.addUser('bob');
    expect((await server.admin(['image', 'publish', 'img', image])).code).toBe(0);
    for (const [d, u] of [['a-desk', 'alice'], ['b-desk', 'bob']]) expect((await server.admin(['desktop', 'create', d!, '--user', u!, '--image', 'img'])).code).toBe(0);
    await server.start();
    const ok = async (method: string, p: string, token: string, body: Buffer | string | null, headers: Record<string, string> = {}): Promise<any> => {
      const r = await send(url(), method, API_PREFIX + p, token, typeof body === 'string' ? Buffer.from(body) : body, { 'content-type': 'application/json', ...headers });
      expect(r.status, JSON.stringify(r.json)).toBe(200);
      return r.json;
    };
    t.da = (await ok('POST', '/devices', t.alice, JSON.stringify({ device: DA, name: 'a-laptop' }))).token;
    t.db = (await ok('POST', '/devices', t.bob, JSON.stringify({ device: DB, name: 'b-laptop' }))).token;
    CO = (await ok('POST', '/desktops/a-desk/checkouts', t.da, JSON.stringify({ device: DA, deviceName: 'a-laptop' }), asA)).checkoutId;
    // The zero block and chunk, sent once for real: the bombs below repeat them, so they add nothing.
    await ok('PUT', `/checkouts/${CO}/blocks`, t.da, await tarBytes([{ name: `b/${blockId(ZERO_BLOCK)}`, data: ZERO_BLOCK }]), { ...asA, 'content-type': 'application/x-tar' });
    await ok('PUT', '/persona/blocks?base=1', t.da, await tarBytes([{ name: `b/${blockId(ZERO_CHUNK)}`, data: ZERO_CHUNK }]), { ...asA, 'content-type': 'application/x-tar' });
    before = await state();
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('a chunked JSON body over the limit: 413 PAYLOAD_TOO_LARGE in JSON, three times, and the server lives', async () => {
    for (let i = 0; i < 3; i++) {
      const a = await send(url(), 'POST', `${API_PREFIX}/checkouts/${CO}/blocks/missing`, t.da, repeat(Buffer.alloc(64 * 1024, 0x20), 64), { ...asA, 'content-type': 'application/json' });
      expectRefused(a, 413, 'PAYLOAD_TOO_LARGE');
      await bobIsServed();
    }
  });

  it('a Content-Length over the limit: the client reads the 413 and its code, not a reset, while still sending', async () => {
    for (const [p, headers] of [
      [`/checkouts/${CO}/blocks/missing`, { 'content-type': 'application/json', 'content-length': String(100 * MiB) }],
      [`/checkouts/${CO}/blocks`, { 'content-type': 'application/x-tar', 'content-encoding': 'zstd', 'content-length': String(8 * 1024 * MiB) }],
    ] as const) {
      const a = await send(url(), p.startsWith('/checkouts') && p.endsWith('blocks') ? 'PUT' : 'POST', API_PREFIX + p, t.da, repeat(Buffer.alloc(MiB), 100), { ...asA, ...headers });
      expectRefused(a, 413, 'PAYLOAD_TOO_LARGE');
    }
    await bobIsServed();
  });

  it('framing errors get the JSON error body: a bad request line (400 BAD_REQUEST), headers over 16 KiB (431 HEADERS_TOO_LARGE)', async () => {
    const rawAnswer = (bytes: string): Promise<string> =>
      new Promise((resolve) => {
        const sock = net.connect(Number(new URL(url()).port), '127.0.0.1');
        let got = '';
        sock.on('data', (c) => (got += c.toString('latin1')));
        sock.on('error', () => undefined);
        sock.on('close', () => resolve(got));
        sock.write(bytes);
      });
    for (const [bytes, status, code] of [
      ['NOT HTTP AT ALL\r\n\r\n', 400, 'BAD_REQUEST'],
      [`GET ${API_PREFIX}/whoami HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'HEADERS_TOO_LARGE'],
      [`POST ${API_PREFIX}/whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello`, 400, 'BAD_REQUEST'],
    ] as const) {
      const text = await rawAnswer(bytes);
      expect(text).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
      expect(body.error.code).toBe(code);
    }
    await bobIsServed();
  });

  it('zstd bombs: a 1 GiB zero run after an empty tar ends at the tar; a tar that inflates past 1 GiB is 413 at the cap; other users are served meanwhile', async () => {
    // An empty tar, then zeros: the archive ends at its two zero blocks, and nothing after is decompressed.
    const zeros = await zstdOf(repeat(Buffer.alloc(8 * MiB), 128));
    expect(zeros.length).toBeLessThan(256 * 1024);
    const a1 = await send(url(), 'PUT', `${API_PREFIX}/checkouts/${CO}/blocks`, t.da, zeros, { ...asA, 'content-type': 'application/x-tar', 'content-encoding': 'zstd' });
    expect(a1.status, JSON.stringify(a1.json)).toBe(200);
    expect(a1.json).toEqual({ stored: 0, alreadyHad: 0, plainBytes: 0, framesKept: 0 });
    // 1.5 GiB of valid entries (the zero block again and again): refused once past the 1 GiB cap.
    const one = await tarBody(Array.from({ length: 16 }, () => ({ name: `b/${blockId(ZERO_BLOCK)}`, data: ZERO_BLOCK })));
    const bomb = await zstdOf(repeat(one, 1536));
    expect(bomb.length).toBeLessThan(2 * MiB);
    const served: Array<Promise<void>> = [];
    let bombing = true;
    const p = send(url(), 'PUT', `${API_PREFIX}/checkouts/${CO}/blocks`, t.da, bomb, { ...asA, 'content-type': 'application/x-tar', 'content-encoding': 'zstd' }).finally(() => (bombing = false));
    while (bombing && served.length < 200) {
      served.push(bobIsServed());
      await new Promise((r) => setTimeout(r, 20));
    }
    expectRefused(await p, 413, 'PAYLOAD_TOO_LARGE');
    await Promise.all(served);
    expect(served.length).toBeGreaterThanOrEqual(1); // at least one asked while the bomb was in flight
    // The same for a persona upload: 1 MiB zero chunks past the cap.
    const chunk = await tarBody(Array.from({ length: 4 }, () => ({ name: `b/${blockId(ZERO_CHUNK)}`, data: ZERO_CHUNK })));
    const a3 = await send(url(), 'PUT', `${API_PREFIX}/persona/blocks?base=1`, t.da, await zstdOf(repeat(chunk, 384)), { ...asA, 'content-type': 'application/x-tar', 'content-encoding': 'zstd' });
    expectRefused(a3, 413, 'PAYLOAD_TOO_LARGE');
    await bobIsServed();
  });

  it('an upload that fails at its first entry is not read on: answered, then the connection closes after a bounded rest', async () => {
    const bad = await tarBody([{ name: `b/${blockId(Buffer.from('another block'))}`, data: ZERO_BLOCK }]);
    const good = await tarBody(Array.from({ length: 16 }, () => ({ name: `b/${blockId(ZERO_BLOCK)}`, data: ZERO_BLOCK })));
    // A raw client that goes on sending after the answer (Node's own client would stop): 512 MiB more.
    const sock = net.connect(Number(new URL(url()).port), '127.0.0.1');
    let got = '';
    let closed = false;
    let written = 0;
    sock.on('data', (c) => (got += c.toString('latin1')));
    sock.on('error', () => undefined);
    sock.on('close', () => (closed = true));
    const total = bad.length + 512 * good.length;
    sock.write(`PUT ${API_PREFIX}/checkouts/${CO}/blocks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${t.da}\r\n${HEADER_DEVICE}: ${DA}\r\ncontent-type: application/x-tar\r\ncontent-length: ${total}\r\n\r\n`);
    sock.write(bad);
    for (let i = 0; i < 512 && !closed; i++) {
      written += good.length;
      if (!sock.write(good)) await new Promise<void>((r) => (sock.once('drain', r), sock.once('close', r)));
    }
    await new Promise<void>((r) => (closed ? r() : sock.once('close', r)));
    expect(got).toMatch(/^HTTP\/1\.1 422 /);
    expect(got.toLowerCase()).toContain('connection: close');
    expect(JSON.parse(got.slice(got.indexOf('\r\n\r\n') + 4)).error.code).toBe('BLOCK_CORRUPT');
    // The server read at most its linger allowance (64 MiB) past the answer, then closed: far from all 512 MiB.
    expect(written).toBeLessThan(160 * MiB);
    await bobIsServed();
  });

  it('JSON nested a million levels deep, in a body and in a 16 MB tar part: 400 BAD_REQUEST, refused before it is parsed', async () => {
    const deep = (n: number): Buffer => Buffer.from('['.repeat(n) + ']'.repeat(n));
    expectRefused(await send(url(), 'POST', `${API_PREFIX}/checkouts/${CO}/blocks/missing`, t.da, deep(1_000_000), { ...asA, 'content-type': 'application/json' }), 400, 'BAD_REQUEST');
    const push = await tarBytes([{ name: 'persona-delta.json', data: deep(8_000_000) }, { name: 'push.json', data: Buffer.from(JSON.stringify({ baseVersion: 1, desktop: 'a-desk', deviceName: 'x', editedAt: 0 })) }]);
    const a = await send(url(), 'POST', `${API_PREFIX}/persona/push`, t.da, await zstdOf([push]), { ...asA, 'content-type': 'application/x-tar', 'content-encoding': 'zstd' });
    expectRefused(a, 400, 'BAD_REQUEST');
    expect(a.json.error.message).toMatch(/nests deeper than/);
    await bobIsServed();
  });

  it('a body in an unknown content-encoding, and a zstd body that is not zstd: clear codes', async () => {
    expectRefused(await send(url(), 'PUT', `${API_PREFIX}/checkouts/${CO}/blocks`, t.da, Buffer.from('x'), { ...asA, 'content-encoding': 'gzip' }), 400, 'BAD_REQUEST');
    expectRefused(await send(url(), 'PUT', `${API_PREFIX}/checkouts/${CO}/blocks`, t.da, Buffer.alloc(4096, 0x41), { ...asA, 'content-encoding': 'zstd' }), 400, 'TAR_INVALID');
    await bobIsServed();
  });

  it('persona chunks sent encoded (z/) or as chunk deltas (c/) that do not check out: clear codes, nothing stored', async () => {
    const put = (entries: TarEntry[]): Promise<Answer> => tarBytes(entries).then((body) => send(url(), 'PUT', `${API_PREFIX}/persona/blocks?base=1`, t.da, body, { ...asA, 'content-type': 'application/x-tar' }));
    const other = Buffer.from('not the bytes this id names');
    // A frame that decodes to other bytes than its id names.
    expectRefused(await put([{ name: `z/${blockId(ZERO_CHUNK)}`, data: encodeBlock(other) }]), 422, 'BLOCK_CORRUPT');
    // A right frame padded with a zstd skippable frame far past a chunk: it would be stored padding and all.
    const skippable = Buffer.alloc(8 + 2 * MiB);
    skippable.writeUInt32LE(0x184d2a50, 0);
    skippable.writeUInt32LE(2 * MiB, 4);
    expectRefused(await put([{ name: `z/${blockId(ZERO_CHUNK)}`, data: Buffer.concat([encodeBlock(ZERO_CHUNK), skippable]) }]), 422, 'BLOCK_CORRUPT');
    // A chunk delta whose base is in alice's scope (she sent it) but not in the version it claims to diff against.
    const delta = createAlignedDelta(ZERO_CHUNK, other)!;
    expectRefused(await put([{ name: `c/${blockId(other)}`, data: encodeChunkDelta([blockId(ZERO_CHUNK)], delta) }]), 404, 'BLOCK_NOT_FOUND');
    // A chunk delta naming no base, or more than three.
    expectRefused(await put([{ name: `c/${blockId(other)}`, data: Buffer.concat([Buffer.from([0]), delta]) }]), 400, 'TAR_INVALID');
    expectRefused(await put([{ name: `c/${blockId(other)}`, data: encodeChunkDelta(Array.from({ length: 4 }, () => blockId(ZERO_CHUNK)), delta) }]), 400, 'TAR_INVALID');
    await bobIsServed();
  });

  it('after all of it: the server is up, stayed under 512 MB resident, and nothing it stores changed', async () => {
    await bobIsServed();
    const hwm = vmHWMkB(server.pid());
    if (process.env.CARRYON_REPORT) process.stdout.write(`server VmHWM ${hwm} kB\n`);
    expect(hwm).toBeLessThan(512 * 1024);
    expect(await state()).toEqual(before);
  });
});
