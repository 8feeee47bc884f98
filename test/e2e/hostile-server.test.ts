// The laptop against a broken or malicious server (issue 9). The real `carryon login` and `carryon
// checkout` run as processes against a small fake server written here (node:http on 127.0.0.1:0). It
// speaks what a check-out needs of the API (src/wire/api.ts, docs/protocol.md) with real data made by
// the src/ encoders, so its honest answers complete a check-out (the control test), and per desktop (per
// laptop for the persona) it can be told to answer the way a hostile server could: zstd bombs, endless
// bodies, a stall, tar entries that are not plain files or that name paths, bad manifests, blocks that
// do not match their ids, endless JSON, a poisoned persona.
// Every hostile run must end in its stable error code (the exit code of src/errors) with one sentence on
// stderr and no stack trace, peak under 300 MB resident (GNU time's %M: the whole process, its check-out
// workers included), write nothing outside the laptop home, and leave the disk of an earlier check-out
// and the block cache as they were; after it an honest check-out of the same desktop completes and its
// disk matches the image byte for byte.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import path from 'node:path';
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  blockId, CONTENT_MANIFEST, CONTENT_PERSONA, CONTENT_TAR, DiskManifest, encodeBlock, encodeManifest, encodePersona, exitCodeOf, HEADER_DEVICE, HEADER_PERSONA_ID,
  HEADER_PERSONA_VERSION, httpStatusOf, manifestId, packEntries, personaId, type BlockId, type CheckoutInfo, type ErrorCode, type PersonaEntry,
} from '../../src/index.js';
import { removeTmp, ROOT, sha256File, tmpDir } from './harness.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const BS = 64 * 1024;
const CLIENT_BIN = path.join(ROOT, 'bin/carryon.js');
/** Peak resident memory allowed to a hostile run (KiB). */
const MAX_RSS_KIB = 300 * 1024;
/** What the fake may manage to write of an endless answer before the laptop stops reading it. */
const MAX_WRITTEN = 64 * MiB;

/** A path the hostile answers name outside every home: it must never exist. */
const ESCAPE = `/tmp/carryon-escape-${process.pid}`;

/** Deterministic bytes that do not compress: SHA-256 of seed/counter. */
function seeded(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let k = 0, i = 0; i < n; k++, i += 32) createHash('sha256').update(`${seed}/${k}`).digest().copy(out, i);
  return out;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A disk image of 17 blocks (the last one short), one of them a hole. */
function makeImage(seed: string): Buffer {
  const img = seeded(seed, 16 * BS + 12345);
  img.fill(0, 5 * BS, 6 * BS);
  return img;
}

// ---- raw tar and zstd, for answers our encoders would never produce

/** A ustar header: any name, type flag ('0' file, '1' hard link, '2' symlink, '5' folder), size up to 8 GiB - 1. */
function tarHeader(name: string, size: number, type = '0', linkname = ''): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'utf8');
  b.write('0000644\0', 100);
  b.write('0000000\0', 108);
  b.write('0000000\0', 116);
  b.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  b.write('00000000000\0', 136);
  b.write(type, 156);
  b.write(linkname, 157, 100, 'utf8');
  b.write('ustar\0', 257);
  b.write('00', 263);
  b.write('        ', 148);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return b;
}

function tarEntry(name: string, data: Buffer, type = '0', linkname = ''): Buffer {
  const pad = (512 - (data.length % 512)) % 512;
  return Buffer.concat([tarHeader(name, data.length, type, linkname), data, Buffer.alloc(pad)]);
}

type ZBlock = { raw: Buffer } | { rle: number };

/**
 * A zstd frame built by hand: raw blocks and RLE blocks (one zero byte repeated), so a 128 KiB frame
 * can inflate to 4 GiB. With `contentSize` the header declares it (single segment), whatever the blocks hold.
 */
function zstdFrame(blocks: ZBlock[], opts: { contentSize?: number; windowLog?: number } = {}): Buffer {
  const parts = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd])];
  if (opts.contentSize !== undefined) {
    const h = Buffer.alloc(9);
    h[0] = (3 << 6) | (1 << 5); // an 8-byte content size, single segment
    h.writeBigUInt64LE(BigInt(opts.contentSize), 1);
    parts.push(h);
  } else {
    parts.push(Buffer.from([0x00, ((opts.windowLog ?? 17) - 10) << 3])); // no content size; window 2^windowLog
  }
  blocks.forEach((b, i) => {
    const last = i === blocks.length - 1 ? 1 : 0;
    const h = Buffer.alloc(3);
    h.writeUIntLE(last | (('raw' in b ? 0 : 1) << 1) | (('raw' in b ? b.raw.length : b.rle) << 3), 0, 3);
    parts.push(h, 'raw' in b ? b.raw : Buffer.alloc(1));
  });
  return Buffer.concat(parts);
}

/** `total` zero bytes as 128 KiB RLE blocks: 4 bytes of frame per 128 KiB. */
function zeroRun(total: number): ZBlock[] {
  const out: ZBlock[] = [];
  for (let left = total; left > 0; left -= 128 * 1024) out.push({ rle: Math.min(left, 128 * 1024) });
  return out;
}

// ---- the fake server

interface Ctx {
  res: http.ServerResponse;
  body: any;
}
type Hook = (c: Ctx) => Promise<void> | void;

/** How a desktop's routes answer; each unset one answers honestly. */
interface DesktopHostility {
  checkout?: Hook;
  info?: (i: CheckoutInfo) => CheckoutInfo;
  manifest?: Hook;
  blocks?: (c: Ctx & { ids: BlockId[] }) => Promise<void> | void;
}

interface PersonaHostility {
  persona?: Hook;
  chunks?: (c: Ctx & { ids: BlockId[] }) => Promise<void> | void;
}

class FakeDesktop {
  readonly manifest: DiskManifest;
  readonly encodedManifest: Buffer;
  readonly manifestId: BlockId;
  /** Encoded blocks by id, as the real server stores and sends them. */
  readonly blocks = new Map<BlockId, Buffer>();
  readonly sha: string;
  hostile: DesktopHostility = {};
  /** blocks/get requests answered, and body bytes the hostile answers managed to write. */
  blockGets = 0;
  written = 0;

  constructor(readonly name: string, readonly image: Buffer) {
    this.manifest = new DiskManifest(image.length, BS);
    for (let i = 0; i < this.manifest.count; i++) {
      const plain = image.subarray(i * BS, Math.min(image.length, (i + 1) * BS));
      if (plain.every((x) => x === 0)) continue;
      const id = blockId(plain);
      this.manifest.setId(i, id);
      this.blocks.set(id, encodeBlock(plain));
    }
    this.encodedManifest = encodeManifest(this.manifest);
    this.manifestId = manifestId(this.encodedManifest);
    this.sha = sha256(image);
  }

  /** The honest answer to blocks/get: a tar of the encoded blocks named by id (our own packer). */
  tar(ids: BlockId[]): Promise<Buffer> {
    return buffer(packEntries(ids.map((id) => ({ name: id, data: this.blocks.get(id)! }))));
  }

  /** The same tar without its end-of-archive blocks. */
  async tarBody(ids: BlockId[]): Promise<Buffer> {
    const t = await this.tar(ids);
    expect(t.subarray(t.length - 1024).every((x) => x === 0)).toBe(true);
    return t.subarray(0, t.length - 1024);
  }

  /** Block i's plaintext. */
  plain(i: number): Buffer {
    return this.image.subarray(i * BS, Math.min(this.image.length, (i + 1) * BS));
  }
}

class FakePersona {
  readonly encoded: Buffer;
  readonly id: BlockId;
  readonly chunks = new Map<BlockId, Buffer>();

  /** `files`: path → content (folders on the way are listed too, unless `extra` has that path); `extra`: entries as they are. */
  constructor(files: Record<string, Buffer>, extra: PersonaEntry[] = []) {
    const entries: PersonaEntry[] = [...extra];
    const dirs = new Set<string>();
    for (const [p, content] of Object.entries(files)) {
      const parts = p.split('/');
      for (let k = 1; k < parts.length; k++) dirs.add(parts.slice(0, k).join('/'));
      const chunks: BlockId[] = [];
      for (let o = 0; o < content.length; o += MiB) {
        const c = content.subarray(o, o + MiB);
        chunks.push(blockId(c));
        this.chunks.set(blockId(c), encodeBlock(c));
      }
      entries.push({ path: p, kind: 'file', mode: 0o644, mtimeMs: 1_700_000_000_000, size: content.length, hash: sha256(content), chunks });
    }
    for (const d of dirs) if (!extra.some((e) => e.path === d)) entries.push({ path: d, kind: 'dir', mode: 0o755, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [] });
    this.encoded = encodePersona({ files: entries, registry: '' });
    this.id = personaId(this.encoded);
  }
}

class FakeServer {
  url = '';
  readonly desktops = new Map<string, FakeDesktop>();
  /** Per laptop (device id): the persona it is served, and how. */
  readonly personas = new Map<string, { p: FakePersona; hostile: PersonaHostility }>();
  /** Requests for routes the fake does not know: a check-out must need none. */
  readonly unknown: string[] = [];
  private readonly checkoutIds = new Map<string, string>();
  private readonly checkouts = new Map<string, FakeDesktop>();
  private readonly sockets = new Set<Socket>();
  private readonly server = http.createServer((req, res) => {
    this.handle(req, res).catch((err: Error) => {
      if (!res.headersSent) this.error(res, 'INTERNAL', `fake server: ${err.message}`);
      else res.destroy();
    });
  });

  constructor(readonly persona: FakePersona) {}

  add(d: FakeDesktop): FakeDesktop {
    this.desktops.set(d.name, d);
    return d;
  }

  async start(): Promise<void> {
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Stop, also closing connections a stalled answer keeps open. */
  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  error(res: http.ServerResponse, code: ErrorCode, message: string): void {
    const text = JSON.stringify({ error: { code, message, data: {} } });
    res.writeHead(httpStatusOf(code), { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  json(res: http.ServerResponse, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const p = new URL(req.url!, this.url).pathname;
    const raw = await buffer(req);
    const body = raw.length > 0 ? JSON.parse(raw.toString('utf8')) : null;
    const device = String(req.headers[HEADER_DEVICE] ?? '');
    const ctx: Ctx = { res, body };
    const route = `${req.method} ${p}`;
    let m: RegExpExecArray | null;
    if (route === 'GET /v1/whoami') return this.json(res, { user: 'alice', admin: false });
    // A server without client updates (its login asks for the release key): nothing to verify feeds with.
    if (route === 'GET /v1/updates/key') return this.json(res, { publicKey: null });
    if (route === 'POST /v1/devices') return this.json(res, { device: body.device, token: `cod_fake_${body.device}` });
    if (req.method === 'POST' && (m = /^\/v1\/desktops\/([^/]+)\/checkouts$/.exec(p))) {
      const d = this.desktops.get(decodeURIComponent(m[1]!));
      if (!d) return this.error(res, 'DESKTOP_NOT_FOUND', 'no such desktop');
      // The same device asking again gets its checkout back, as from the real server.
      const key = `${d.name}/${device}`;
      const resumed = this.checkoutIds.has(key);
      if (!resumed) this.checkoutIds.set(key, `co-${this.checkoutIds.size + 1}`);
      const id = this.checkoutIds.get(key)!;
      this.checkouts.set(id, d);
      if (d.hostile.checkout) return d.hostile.checkout(ctx);
      const info: CheckoutInfo = {
        checkoutId: id, desktop: d.name, version: 1, manifestId: d.manifestId, resumed, personaVersion: 1,
        leaseExpiresAt: new Date(Date.now() + 30 * 86_400_000).toISOString(), leaseDays: 30, leaseSecret: seeded('lease', 32).toString('base64'),
      };
      return this.json(res, d.hostile.info ? d.hostile.info(info) : info);
    }
    if ((m = /^\/v1\/checkouts\/([^/]+)\/(manifest|blocks\/get)$/.exec(p))) {
      const d = this.checkouts.get(m[1]!);
      if (!d) return this.error(res, 'CHECKOUT_NOT_FOUND', 'no such active checkout');
      if (route.startsWith('GET') && m[2] === 'manifest') {
        if (d.hostile.manifest) return d.hostile.manifest(ctx);
        res.writeHead(200, { 'content-type': CONTENT_MANIFEST, 'content-length': d.encodedManifest.length });
        return void res.end(d.encodedManifest);
      }
      if (route.startsWith('POST') && m[2] === 'blocks/get') {
        const ids = body.ids as BlockId[];
        d.blockGets++;
        for (const id of ids) if (!d.blocks.has(id)) return this.error(res, 'BLOCK_NOT_FOUND', 'not a block of this checkout');
        if (d.hostile.blocks) return d.hostile.blocks({ ...ctx, ids });
        res.writeHead(200, { 'content-type': CONTENT_TAR });
        return void res.end(await d.tar(ids));
      }
    }
    const persona = this.personas.get(device) ?? { p: this.persona, hostile: {} };
    if (route === 'GET /v1/persona') {
      if (persona.hostile.persona) return persona.hostile.persona(ctx);
      res.writeHead(200, { 'content-type': CONTENT_PERSONA, 'content-length': persona.p.encoded.length, [HEADER_PERSONA_VERSION]: '1', [HEADER_PERSONA_ID]: persona.p.id });
      return void res.end(persona.p.encoded);
    }
    if (route === 'POST /v1/persona/chunks/get') {
      const ids = body.ids as BlockId[];
      for (const id of ids) if (!persona.p.chunks.has(id)) return this.error(res, 'BLOCK_NOT_FOUND', 'not a chunk of this persona version');
      if (persona.hostile.chunks) return persona.hostile.chunks({ ...ctx, ids });
      res.writeHead(200, { 'content-type': CONTENT_TAR });
      return void res.end(await buffer(packEntries(ids.map((id) => ({ name: id, data: persona.p.chunks.get(id)! })))));
    }
    this.unknown.push(route);
    return this.error(res, 'NOT_FOUND', `no route ${route}`);
  }
}

/** Write `chunk` again and again until the laptop closes the connection (or 2 GiB: the test then fails on the count). */
async function endless(res: http.ServerResponse, chunk: Buffer, count: (n: number) => void): Promise<void> {
  let closed = false;
  res.once('close', () => (closed = true));
  for (let sent = 0; !closed && sent < 2 * GiB; sent += chunk.length) {
    count(chunk.length);
    // A write the socket takes at once returns true: yield anyway, or a fast reader keeps this loop (and
    // every other laptop's answers) from the event loop.
    if (res.write(chunk)) await new Promise(setImmediate);
    else {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    }
  }
  if (!closed) res.end();
}

// ---- laptops

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  json: any;
  /** Peak resident memory of the CLI process, KiB (GNU time %M). */
  maxRssKiB: number;
}

let runs = 0;

/**
 * A laptop: its home, and beside it a sentinel folder a hostile answer might aim at. Nothing may appear
 * in its root but the home and the sentinel.
 */
class Lap {
  readonly root: string;
  readonly home: string;
  readonly sentinel: string;
  device = '';
  /** The disk of the honest check-out made first, and its SHA-256. */
  baseDisk = '';
  baseSha = '';

  constructor(dir: string, readonly name: string, private readonly timeDir: string) {
    this.root = path.join(dir, name);
    this.home = path.join(this.root, 'home');
    this.sentinel = path.join(this.root, 'sentinel');
    mkdirSync(this.sentinel, { recursive: true });
    writeFileSync(path.join(this.sentinel, 'keep.txt'), 'sentinel\n');
  }

  /**
   * The CLI through GNU time. The idle timeout is 10 s (a stalled answer fails in seconds, not a minute);
   * the stall case makes it 2 s.
   */
  cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
    const timeFile = path.join(this.timeDir, `run-${++runs}.txt`);
    return new Promise((resolve) => {
      const p = spawn('/usr/bin/time', ['-f', '%M', '-o', timeFile, process.execPath, CLIENT_BIN, ...args], {
        env: { ...process.env, CARRYON_HOME: this.home, CARRYON_IDLE_TIMEOUT: '10', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (c) => (stdout += c));
      p.stderr.on('data', (c) => (stderr += c));
      p.on('close', (code) => {
        let json: any = null;
        try {
          json = JSON.parse(stdout.trim().split('\n').pop() ?? '');
        } catch {
          /* not JSON */
        }
        const maxRssKiB = Number(readFileSync(timeFile, 'utf8').trim().split('\n').pop());
        resolve({ code, stdout, stderr, json, maxRssKiB });
      });
    });
  }

  /** Everything under the root but the home: only the sentinel, as it was. */
  outsideHome(): string[] {
    const out: string[] = [];
    const walk = (rel: string): void => {
      for (const e of readdirSync(path.join(this.root, rel), { withFileTypes: true })) {
        const r = path.join(rel, e.name);
        if (r === 'home') continue;
        out.push(r);
        if (e.isDirectory()) walk(r);
      }
    };
    walk('');
    return out.sort();
  }

  /** Nothing outside the home changed, nothing appeared at the escape path, the first disk is as it was. */
  expectIntact(): void {
    expect(this.outsideHome()).toEqual(['sentinel', 'sentinel/keep.txt']);
    expect(readFileSync(path.join(this.sentinel, 'keep.txt'), 'utf8')).toBe('sentinel\n');
    expect(existsSync(ESCAPE)).toBe(false);
    expect(sha256File(this.baseDisk)).toBe(this.baseSha);
  }
}

describe('the laptop against a hostile server', () => {
  const dir = tmpDir('hostile-server');
  const timeDir = path.join(dir, 'time');
  mkdirSync(timeDir);
  const fake = new FakeServer(new FakePersona({ 'Documents/notes.txt': seeded('notes', 100_000) }));
  const baseImage = makeImage('base');
  const desktop = (name: string, seed = name): FakeDesktop => fake.add(new FakeDesktop(name, makeImage(seed)));
  desktop('base');

  beforeAll(async () => {
    await fake.start();
  });

  afterAll(async () => {
    await fake.stop();
    removeTmp(dir);
  });

  /**
   * One laptop's run of hostile cases, in order, against desktops of its own: it logs in and checks out
   * `base` honestly first; each case then leaves that disk, the sentinel and the cache as they were.
   */
  function laptop(name: string, cases: (lap: Lap) => void): void {
    describe(`laptop ${name}`, { concurrent: true }, () => {
      const lap = new Lap(dir, name, timeDir);

      beforeAll(async () => {
        const login = await lap.cli(['login', fake.url, '--json', '--device-name', name], { CARRYON_TOKEN: 'cou_alice' });
        expect(login.code, login.stderr).toBe(0);
        lap.device = login.json.device;
        const r = await lap.cli(['checkout', 'base', '--json']);
        expect(r.code, r.stderr).toBe(0);
        lap.baseDisk = r.json.disk;
        lap.baseSha = sha256File(lap.baseDisk);
        expect(lap.baseSha).toBe(fake.desktops.get('base')!.sha);
      });

      cases(lap);

      it.sequential('afterwards: the first disk is unchanged, and the cache serves a copy of it without a download', async () => {
        lap.expectIntact();
        const copy = fake.desktops.get(`copy-${name}`) ?? fake.add(new FakeDesktop(`copy-${name}`, baseImage));
        const r = await lap.cli(['checkout', copy.name, '--json']);
        expect(r.code, r.stderr).toBe(0);
        expect({ fetched: r.json.blocksFetched, fromCache: r.json.blocksFromCache }).toEqual({ fetched: 0, fromCache: copy.blocks.size });
        expect(sha256File(r.json.disk)).toBe(lap.baseSha);
        expect(copy.blockGets).toBe(0);
        expect(fake.unknown).toEqual([]);
      });
    });
  }

  /** A check-out that must fail with `code`: one sentence, bounded memory, nothing touched outside the home. */
  async function refused(lap: Lap, name: string, code: ErrorCode, opts: { maxRssKiB?: number; env?: Record<string, string> } = {}): Promise<Run> {
    const maxRssKiB = opts.maxRssKiB ?? MAX_RSS_KIB;
    const r = await lap.cli(['checkout', name, '--json'], opts.env);
    expect({ exit: r.code, code: r.json?.error?.code }, r.stderr).toEqual({ exit: exitCodeOf(code), code });
    expect(r.stderr).toMatch(new RegExp(`^carryon: error ${code}: \\S.*\\n$`));
    expect(r.stderr).not.toContain('    at ');
    expect(r.maxRssKiB).toBeGreaterThan(0);
    expect(r.maxRssKiB, `peak RSS ${r.maxRssKiB} KiB`).toBeLessThan(maxRssKiB);
    lap.expectIntact();
    return r;
  }

  /** The server turns honest again: the same desktop checks out, its disk is the image. */
  async function recovers(lap: Lap, d: FakeDesktop): Promise<Run> {
    d.hostile = {};
    const r = await lap.cli(['checkout', d.name, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(sha256File(r.json.disk)).toBe(d.sha);
    lap.expectIntact();
    return r;
  }

  /** A 200 answer to blocks/get: `bytes` as the whole body (counted as written). */
  const answer = (d: FakeDesktop, bytes: Buffer, zstd = false) => ({ res }: Ctx): void => {
    res.writeHead(200, { 'content-type': CONTENT_TAR, ...(zstd ? { 'content-encoding': 'zstd' } : {}) });
    d.written += bytes.length;
    res.end(bytes);
  };

  laptop('a', (lap) => {
    it.sequential('control: the fake is good enough for an honest check-out, disk and persona', async () => {
      const d = desktop('control');
      const r = await recovers(lap, d);
      expect(r.json.blocksFetched).toBe(d.blocks.size);
      expect(r.json.persona.files).toBe(1);
      expect(readFileSync(path.join(r.json.persona.dir, 'profile', 'Documents', 'notes.txt'))).toEqual(seeded('notes', 100_000));
      expect(d.blockGets).toBe(1);
      expect(fake.unknown).toEqual([]);
    });

    it.sequential('zstd bombs for blocks: 1 GiB of zeros in 32 KiB, 4 GiB in 128 KiB behind an 8 GiB entry header, a 2 GiB window: refused at once, memory bounded', async () => {
      const d = desktop('bombs');
      // An empty tar and then what is never read: the answer holds none of the blocks (retried, then refused).
      const zeros = zstdFrame(zeroRun(GiB));
      expect(zeros.length).toBeLessThan(40 * 1024);
      d.hostile = { blocks: answer(d, zeros, true) };
      expect((await refused(lap, d.name, 'TAR_INVALID')).json.error.message).toMatch(/answered without \d+ requested block/);
      expect(d.blockGets).toBeLessThanOrEqual(4);
      // A requested block's header claiming 8 GiB, then 4 GiB of zeros: refused from the header.
      d.blockGets = 0;
      const bomb = (ids: BlockId[]): Buffer => zstdFrame([{ raw: tarHeader(ids[0]!, 8 * GiB - 1) }, ...zeroRun(4 * GiB)]);
      expect(bomb([d.manifest.idAt(0)!]).length).toBeLessThan(160 * 1024);
      d.hostile = { blocks: (c) => answer(d, bomb(c.ids), true)(c) };
      const r = await refused(lap, d.name, 'PAYLOAD_TOO_LARGE');
      expect(r.json.error.message).toMatch(/over the \d+ limit/);
      expect(d.blockGets).toBe(1);
      // A frame that asks for a 2 GiB window: the decoder refuses it before allocating.
      d.blockGets = 0;
      d.hostile = { blocks: answer(d, zstdFrame(zeroRun(GiB), { windowLog: 31 }), true) };
      expect((await refused(lap, d.name, 'TAR_INVALID')).json.error.message).toMatch(/not a valid zstd stream/);
      expect(d.blockGets).toBeLessThanOrEqual(4);
      await recovers(lap, d);
    });

    it.sequential('an answer that stalls half-way: SERVER_UNREACHABLE (stalled) after the idle timeout, asked again once only', async () => {
      const d = desktop('stall');
      // Half of the tar, then nothing: the connection stays open.
      d.hostile = { blocks: async ({ res, ids }) => {
        const t = await d.tar(ids);
        res.writeHead(200, { 'content-type': CONTENT_TAR });
        res.write(t.subarray(0, Math.floor(t.length / 2)));
      } };
      const r = await refused(lap, d.name, 'SERVER_UNREACHABLE', { env: { CARRYON_IDLE_TIMEOUT: '2' } });
      expect(r.json.error.message).toMatch(/stopped sending in the middle of an answer/);
      expect(r.json.error.data).toMatchObject({ reason: 'stalled', idleSeconds: 2 });
      expect(d.blockGets).toBeLessThanOrEqual(2);
      // What arrived whole before the stall was kept: the re-run asks only for the rest.
      const again = await recovers(lap, d);
      expect(again.json.blocksFetched).toBeLessThan(d.blocks.size);
    });
  });

  laptop('b', (lap) => {
    it.sequential('tar entries that are not a block: a name with .., an absolute name, a symlink, a hard link, a folder: TAR_INVALID, nothing written outside', async () => {
      const d = desktop('tarnames');
      const variants: Array<(ids: BlockId[]) => Buffer> = [
        (ids) => tarEntry(`../../sentinel/${ids[0]}`, d.blocks.get(ids[0]!)!),
        (ids) => tarEntry(`${ESCAPE}/${ids[0]}`, d.blocks.get(ids[0]!)!),
        (ids) => tarEntry(ids[0]!, Buffer.alloc(0), '2', ESCAPE),
        (ids) => tarEntry(ids[0]!, Buffer.alloc(0), '1', '../../sentinel/keep.txt'),
        (ids) => tarEntry(`${ids[0]}/`, Buffer.alloc(0), '5'),
      ];
      for (const first of variants) {
        d.blockGets = 0;
        // The hostile entry first, then every block as it should be.
        d.hostile = { blocks: async (c) => answer(d, Buffer.concat([first(c.ids), await d.tar(c.ids)]))(c) };
        const r = await refused(lap, d.name, 'TAR_INVALID');
        expect(r.json.error.message).toMatch(/not asked for|not a regular file/);
        expect(d.blockGets).toBeLessThanOrEqual(4);
      }
      await recovers(lap, d);
    });
  });

  laptop('c', (lap) => {
    it.sequential('bad manifests: longer than its block count, a block table for a larger disk than its size, a bad checksum, an id other than the checkout named: MANIFEST_INVALID, nothing written', async () => {
      const d = desktop('manifest');
      /** `d`'s manifest with `table` as its block table and the size and count fields given, its checksum made right again. */
      const forged = (table: Buffer, size = d.image.length, count = table.length / 32): Buffer => {
        const m = Buffer.concat([d.encodedManifest.subarray(0, 32), table, Buffer.alloc(32)]);
        m.writeBigUInt64LE(BigInt(size), 16);
        m.writeBigUInt64LE(BigInt(count), 24);
        createHash('sha256').update(m.subarray(0, m.length - 32)).digest().copy(m, m.length - 32);
        return m;
      };
      const table = d.encodedManifest.subarray(32, d.encodedManifest.length - 32);
      const flipped = Buffer.from(d.encodedManifest);
      flipped[40]! ^= 1;
      const send = (bytes: Buffer, id = manifestId(bytes)): DesktopHostility => ({
        info: (i) => ({ ...i, manifestId: id }),
        manifest: ({ res }) => {
          res.writeHead(200, { 'content-type': CONTENT_MANIFEST, 'content-length': bytes.length });
          res.end(bytes);
        },
      });
      for (const [h, why] of [
        [send(Buffer.concat([d.encodedManifest, Buffer.alloc(64 * 1024)])), /length \d+ does not match block count/],
        [send(forged(Buffer.concat([table, table.subarray(0, 32)]))), /block count 18 does not match image size/],
        [send(flipped), /checksum mismatch/],
        [send(d.encodedManifest, fake.desktops.get('base')!.manifestId), /does not match its id/],
      ] as Array<[DesktopHostility, RegExp]>) {
        d.hostile = h;
        const r = await refused(lap, d.name, 'MANIFEST_INVALID');
        expect(r.json.error.message).toMatch(why);
        expect(existsSync(path.join(lap.home, 'desktops', d.name))).toBe(false);
        expect(d.blockGets).toBe(0);
      }
      // An endless manifest: read up to the laptop's cap for one (256 MiB, the manifest of a 512 GiB disk
      // of 64 KiB blocks; a manifest is held whole in memory), then refused: the peak is that cap higher.
      d.hostile = { manifest: ({ res }) => {
        res.writeHead(200, { 'content-type': CONTENT_MANIFEST });
        return endless(res, Buffer.alloc(MiB), (n) => (d.written += n));
      } };
      const r = await refused(lap, d.name, 'PAYLOAD_TOO_LARGE', { maxRssKiB: MAX_RSS_KIB + 256 * 1024 });
      expect(r.json.error.message).toMatch(/server response over 268435456 bytes/);
      expect(d.written).toBeLessThan(256 * MiB + MAX_WRITTEN);
      expect(existsSync(path.join(lap.home, 'desktops', d.name))).toBe(false);
      await recovers(lap, d);
    });

    it.sequential('blocks that do not match their ids: other bytes, a frame shorter than its header says, a header claiming 5 GiB: BLOCK_CORRUPT, never written', async () => {
      const d = desktop('corrupt');
      const partial = path.join(lap.home, 'desktops', d.name, 'disk.raw.partial');
      const plain0 = d.plain(0);
      for (const bad of [
        encodeBlock(seeded('other', BS)),
        zstdFrame([{ raw: plain0.subarray(0, BS / 2) }], { contentSize: BS }),
        zstdFrame([{ raw: plain0 }], { contentSize: 5 * GiB }),
      ]) {
        d.blockGets = 0;
        // Block 0 as `bad`, then the others as they should be.
        d.hostile = { blocks: async (c) => {
          expect(c.ids[0]).toBe(d.manifest.idAt(0));
          answer(d, Buffer.concat([tarEntry(c.ids[0]!, bad), await d.tar(c.ids.slice(1))]))(c);
        } };
        const r = await refused(lap, d.name, 'BLOCK_CORRUPT');
        expect(d.blockGets).toBe(1);
        expect(r.json.error.message).toMatch(/does not match its hash|does not decompress|shorter than its header|oversized content size/);
        // Each block of the disk being assembled is still zeros or its true bytes: nothing else was written.
        const got = readFileSync(partial);
        expect(got.length).toBe(d.image.length);
        for (let i = 0; i < d.manifest.count; i++) {
          const block = got.subarray(i * BS, (i + 1) * BS);
          expect(block.every((x) => x === 0) || block.equals(d.plain(i)), `block ${i}`).toBe(true);
        }
      }
      await recovers(lap, d);
    });


    it.sequential('endless random bytes instead of the tar, or where its end belongs: TAR_INVALID; after its end: ignored; the laptop stops reading each', async () => {
      const d = desktop('endless');
      const junk = seeded('junk', MiB);
      d.hostile = { blocks: ({ res }) => {
        res.writeHead(200, { 'content-type': CONTENT_TAR });
        return endless(res, junk, (n) => (d.written += n));
      } };
      await refused(lap, d.name, 'TAR_INVALID');
      expect(d.blockGets).toBeLessThanOrEqual(4);
      expect(d.written).toBeLessThan(MAX_WRITTEN);
      // Every requested block, then junk where the end of the archive belongs.
      d.written = 0;
      d.blockGets = 0;
      d.hostile = { blocks: async ({ res, ids }) => {
        const body = await d.tarBody(ids);
        res.writeHead(200, { 'content-type': CONTENT_TAR });
        d.written += body.length;
        res.write(body);
        await endless(res, junk, (n) => (d.written += n));
      } };
      await refused(lap, d.name, 'TAR_INVALID');
      expect(d.blockGets).toBe(1);
      expect(d.written).toBeLessThan(MAX_WRITTEN);
      await recovers(lap, d);
      // Junk after a whole archive, its end-of-archive blocks included: every block is there, so the
      // check-out succeeds, and what follows the end is not read.
      const after = desktop('endless-after-end');
      after.hostile = { blocks: async ({ res, ids }) => {
        const body = await after.tar(ids);
        res.writeHead(200, { 'content-type': CONTENT_TAR });
        after.written += body.length;
        res.write(body);
        await endless(res, junk, (n) => (after.written += n));
      } };
      const r = await lap.cli(['checkout', after.name, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(sha256File(r.json.disk)).toBe(after.sha);
      expect(after.written).toBeLessThan(MAX_WRITTEN);
      lap.expectIntact();
    });
  });

  laptop('d', (lap) => {
    it.sequential('answers to POST checkouts: endless JSON read up to its cap (PAYLOAD_TOO_LARGE), an endless error body up to its cap, a proxy page, fields of the wrong types: a sentence each, nothing written', async () => {
      const d = desktop('json');
      const endlessAnswer = (status: number, head: string): Hook => ({ res }) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.write(head);
        return endless(res, Buffer.alloc(MiB, 'a'), (n) => (d.written += n));
      };
      d.hostile = { checkout: endlessAnswer(200, '{"checkoutId":"') };
      await refused(lap, d.name, 'PAYLOAD_TOO_LARGE');
      expect(d.written).toBeLessThan(64 * MiB + MAX_WRITTEN); // the JSON cap, and what the socket buffers held
      d.written = 0;
      d.hostile = { checkout: endlessAnswer(500, '{"error":{"code":"') };
      await refused(lap, d.name, 'INTERNAL');
      expect(d.written).toBeLessThan(MAX_WRITTEN);
      d.hostile = { checkout: ({ res }) => {
        res.writeHead(502, { 'content-type': 'text/html' });
        res.end('<html><body><h1>502 Bad Gateway</h1></body></html>');
      } };
      const r = await refused(lap, d.name, 'INTERNAL');
      expect(r.json.error.message).toMatch(/HTTP 502 without a carryon error body/);
      expect(existsSync(path.join(lap.home, 'desktops', d.name))).toBe(false);
      // An answer of the wrong types: refused before anything is written (a number for the lease secret
      // crashed with a stack trace after the checkout was recorded; a version "1; …" was recorded as is).
      for (const [change, field] of [[{ leaseSecret: 42 }, 'leaseSecret'], [{ version: '1; DROP TABLE checkouts' }, 'version'], [{ checkoutId: '../../persona' }, 'checkoutId']] as const) {
        d.hostile = { info: (i) => ({ ...i, ...change }) as unknown as CheckoutInfo };
        const r2 = await refused(lap, d.name, 'INTERNAL');
        expect(r2.json.error.message).toMatch(/check-out answer is malformed/);
        expect(r2.json.error.data.field).toBe(field);
        expect(existsSync(path.join(lap.home, 'desktops', d.name))).toBe(false);
      }
      await recovers(lap, d);
    });

    it.sequential('a hostile persona: paths leaving the profile, a symlink out, a file under a symlink, chunks that do not match, a wrong id, an endless snapshot: refused, nothing outside the persona folder', async () => {
      const d = desktop('pdesk');
      const notes = seeded('notes', 100_000);
      const fresh = seeded('fresh', 300_000);
      const honest = new FakePersona({ 'Documents/notes.txt': notes, 'Documents/new.txt': fresh });
      const entry = (p: string, kind: PersonaEntry['kind'] = 'file', target?: string): PersonaEntry => (kind === 'file'
        ? { path: p, kind, mode: 0o644, mtimeMs: 1_700_000_000_000, size: fresh.length, hash: sha256(fresh), chunks: [blockId(fresh)] }
        : { path: p, kind, mode: 0o777, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [], target });
      const personaDir = path.join(lap.home, 'desktops', d.name, 'persona');
      const allowed = ['profile', 'profile/Documents', 'profile/Documents/notes.txt', 'profile/Documents/new.txt', 'registry.reg'];
      const cases: Array<[string, FakePersona, PersonaHostility, ErrorCode, RegExp]> = [
        ['a path with ..', new FakePersona({ 'Documents/notes.txt': notes }, [entry('../x')]), {}, 'BAD_REQUEST', /has a "\.\." component/],
        ['a symlink out', new FakePersona({ 'Documents/notes.txt': notes }, [entry('Documents/out', 'symlink', '../../../../../sentinel')]), {}, 'BAD_REQUEST', /leaves the profile folder/],
        ['a file under a symlink', new FakePersona({ 'Documents/notes.txt': notes, 'link/evil.txt': seeded('evil', 1000) }, [entry('link', 'symlink', 'Documents')]), {}, 'BAD_REQUEST', /lies under "link", which is a symlink/],
        ['a chunk of other bytes', honest, { chunks: (c) => {
          c.res.writeHead(200, { 'content-type': CONTENT_TAR });
          c.res.end(Buffer.concat([...c.ids.map((id) => tarEntry(id, encodeBlock(seeded('not-it', 1000)))), Buffer.alloc(1024)]));
        } }, 'BLOCK_CORRUPT', /does not match its hash/],
        ['a wrong id', honest, { persona: ({ res }) => {
          res.writeHead(200, { 'content-type': CONTENT_PERSONA, [HEADER_PERSONA_VERSION]: '1', [HEADER_PERSONA_ID]: fake.persona.id });
          res.end(honest.encoded);
        } }, 'BAD_REQUEST', /does not match its id/],
        ['an endless snapshot', honest, { persona: ({ res }) => {
          res.writeHead(200, { 'content-type': CONTENT_PERSONA, [HEADER_PERSONA_VERSION]: '1', [HEADER_PERSONA_ID]: honest.id });
          res.write('{"format":"carryon-persona","version":1,"files":[');
          return endless(res, Buffer.from(`${JSON.stringify(entry('Documents/x'))},`.repeat(1000)), () => undefined);
        } }, 'PAYLOAD_TOO_LARGE', /over \d+ bytes/],
      ];
      for (const [what, p, hostile, code, why] of cases) {
        fake.personas.set(lap.device, { p, hostile });
        const r = await refused(lap, d.name, code);
        expect(r.json.error.message, what).toMatch(why);
        const inPersona = existsSync(personaDir) ? walk(personaDir) : [];
        expect(inPersona.filter((f) => !allowed.includes(f)), what).toEqual([]);
      }
      fake.personas.set(lap.device, { p: honest, hostile: {} });
      const r = await recovers(lap, d);
      expect(readFileSync(path.join(personaDir, 'profile', 'Documents', 'new.txt'))).toEqual(fresh);
      expect(walk(personaDir)).toEqual(allowed.slice().sort());
      expect(r.json.persona.files).toBe(2);
    });
  });
});

/** Every path under `root`, relative, sorted. */
function walk(root: string): string[] {
  const out: string[] = [];
  const go = (rel: string): void => {
    for (const e of readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      if (e.isDirectory()) go(r);
    }
  };
  go('');
  return out.sort();
}
