// Check-in uploads whole blocks as zstd frames (`z/<id>`) to a server that advertises it, and the server
// stores each frame as sent; a laptop talking to a server that does not (an older one, played here by a
// proxy that drops `frames` from the missing answer) sends plaintext in one zstd stream, as older laptops
// do, and the server encodes those itself. Both end byte-identical on a second laptop.
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockId, createDecompressStream, encodeBlock, unpackEntries } from '../../src/index.js';
import { Laptop, makeExt4Image, removeTmp, TestServer, tmpDir } from './harness.js';

const BS = 64 * 1024;

/** One 64 KiB block of text that compresses, different for each seed (so no block repeats). */
function textBlock(seed: number): Buffer {
  const lines: string[] = [];
  for (let i = 0; lines.join('').length < BS; i++) lines.push(`${seed}.${i}: the quick brown fox ${(seed * 7919 + i * 104729) % 100003} jumps over ${i % 13} lazy dogs\n`);
  return Buffer.from(lines.join('')).subarray(0, BS);
}

/** Overwrite whole blocks of a raw disk (as a VM's writes would), returning what was written. */
function writeBlocks(disk: string, at: number[], seed: number): Buffer[] {
  const fd = openSync(disk, 'r+');
  try {
    return at.map((b, k) => {
      const data = textBlock(seed + k);
      writeSync(fd, data, 0, BS, b * BS);
      return data;
    });
  } finally {
    closeSync(fd);
  }
}

/**
 * Servers older than frames, in front of the real one. 'old': its missing answers lose `frames`.
 * 'mixed' (a fleet upgraded server by server): the missing answer comes from a new server, the upload
 * reaches an old one, which refuses `z/<id>` entries as TAR_INVALID before storing anything, as servers
 * before frames did. The upload entry names of every block upload are recorded (decompressed as the
 * server would).
 */
class OldServerProxy {
  readonly uploadNames: string[][] = [];
  private server: http.Server | null = null;
  url = '';

  constructor(private readonly target: string, private readonly mode: 'old' | 'mixed') {}

  async start(): Promise<void> {
    const target = new URL(this.target);
    this.server = http.createServer((req, res) => {
      const forward = (body: Buffer | null): void => {
        const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
          if (this.mode === 'mixed' || !/\/blocks\/missing$/.test(req.url ?? '')) {
            res.writeHead(answer.statusCode!, answer.headers);
            answer.pipe(res);
            return;
          }
          const parts: Buffer[] = [];
          answer.on('data', (c: Buffer) => parts.push(c));
          answer.on('end', () => {
            const json = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
            delete json.frames;
            const out = Buffer.from(JSON.stringify(json));
            res.writeHead(answer.statusCode!, { 'content-type': 'application/json', 'content-length': String(out.length) });
            res.end(out);
          });
        });
        if (body) up.end(body);
        else req.pipe(up);
      };
      if (!(req.method === 'PUT' && /\/blocks$/.test(req.url ?? ''))) return forward(null);
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        const body = Buffer.concat(parts);
        const names: string[] = [];
        this.uploadNames.push(names);
        unpackEntries(Readable.from([body]).pipe(createDecompressStream()), 8 * 1024 * 1024, ({ name }) => {
          names.push(name);
        }).then(() => {
          if (this.mode === 'mixed' && names.some((n) => n.startsWith('z/'))) {
            const out = Buffer.from(JSON.stringify({ error: { code: 'TAR_INVALID', message: 'upload entry name is neither b/<id> nor p/<id>/<base>', data: {} } }));
            res.writeHead(400, { 'content-type': 'application/json', 'content-length': String(out.length) });
            res.end(out);
            return;
          }
          forward(body);
        }, (err: unknown) => {
          res.writeHead(500);
          res.end(String(err));
        });
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    await new Promise((r) => this.server?.close(r));
  }
}

describe('check-in as zstd frames', () => {
  const dir = tmpDir('frames');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  let old: OldServerProxy;
  let mixed: OldServerProxy;
  let token = '';
  const storedFrame = (plain: Buffer): Buffer => {
    const id = blockId(plain);
    return readFileSync(path.join(server.data, 'store', 'blocks', id.slice(0, 2), id));
  };

  beforeAll(async () => {
    makeExt4Image(image, 32, 16);
    await server.init();
    token = await server.addUser('alice');
    const pub = await server.admin(['image', 'publish', 'golden', image]);
    expect(pub.code, pub.stderr).toBe(0);
    for (const d of ['new-desk', 'old-desk', 'mixed-desk']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    old = new OldServerProxy(server.url, 'old');
    await old.start();
    mixed = new OldServerProxy(server.url, 'mixed');
    await mixed.start();
  }, 120_000);

  afterAll(async () => {
    await old?.stop();
    await mixed?.stop();
    await server.stop();
    removeTmp(dir);
  });

  it('sends new whole blocks as frames, which the server keeps exactly as sent', async () => {
    const a = new Laptop(path.join(dir, 'a'));
    expect((await a.cli(['login', server.url, '--token', token])).code).toBe(0);
    const co = await a.cli(['checkout', 'new-desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const written = writeBlocks(co.json.disk, [40, 41, 42, 100, 200, 300], 1);
    const ci = await a.cli(['checkin', 'new-desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.blocksUploaded).toBe(6);
    expect(ci.json.blocksAsFrames).toBe(6);
    expect(ci.json.blocksAsPatch).toBe(0);
    // Stored as the laptop made it (level 6), not re-encoded by the server at its own level 3.
    const differs = written.filter((p) => !encodeBlock(p, 6).equals(encodeBlock(p, 3)));
    expect(differs.length).toBeGreaterThan(0);
    for (const p of written) expect(storedFrame(p).equals(encodeBlock(p, 6))).toBe(true);
    // Compressed once, for the wire too: less than a third of the 384 KiB of text went over it.
    expect(ci.json.bytesSent).toBeLessThan(6 * BS / 3);

    const b = new Laptop(path.join(dir, 'b'));
    expect((await b.cli(['login', server.url, '--token', token])).code).toBe(0);
    const co2 = await b.cli(['checkout', 'new-desk', '--json']);
    expect(co2.code, co2.stderr).toBe(0);
    expect(co2.json.version).toBe(2);
    expect(spawnSync('cmp', [co.json.disk, co2.json.disk]).status).toBe(0);
  });

  it('to a server that does not take frames, sends plaintext in one zstd stream (an older laptop\'s upload), which the server encodes', async () => {
    const c = new Laptop(path.join(dir, 'c'));
    expect((await c.cli(['login', old.url, '--token', token])).code).toBe(0);
    const co = await c.cli(['checkout', 'old-desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const written = writeBlocks(co.json.disk, [50, 51, 150, 250], 101);
    const ci = await c.cli(['checkin', 'old-desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.blocksUploaded).toBe(4);
    expect(ci.json.blocksAsFrames).toBe(0);
    expect(old.uploadNames.length).toBe(1);
    expect(old.uploadNames[0]!.length).toBe(4);
    for (const n of old.uploadNames[0]!) expect(n).toMatch(/^b\/[0-9a-f]{64}$/);
    for (const p of written) expect(storedFrame(p).equals(encodeBlock(p, 3))).toBe(true);

    const d = new Laptop(path.join(dir, 'd'));
    expect((await d.cli(['login', server.url, '--token', token])).code).toBe(0);
    const co2 = await d.cli(['checkout', 'old-desk', '--json']);
    expect(co2.code, co2.stderr).toBe(0);
    expect(co2.json.version).toBe(2);
    expect(spawnSync('cmp', [co.json.disk, co2.json.disk]).status).toBe(0);
  });
  it('when an old server refuses the frames (TAR_INVALID), sends the batch again as plaintext and checks in', async () => {
    const e = new Laptop(path.join(dir, 'e'));
    expect((await e.cli(['login', mixed.url, '--token', token])).code).toBe(0);
    const co = await e.cli(['checkout', 'mixed-desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const written = writeBlocks(co.json.disk, [60, 160, 260], 201);
    const ci = await e.cli(['checkin', 'mixed-desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.version).toBe(2);
    expect(ci.json.blocksUploaded).toBe(3);
    expect(ci.json.blocksAsFrames).toBe(0);
    // First the frames (refused), then the same blocks as plaintext.
    expect(mixed.uploadNames.map((names) => names.map((n) => n.slice(0, 2)))).toEqual([['z/', 'z/', 'z/'], ['b/', 'b/', 'b/']]);
    for (const p of written) expect(storedFrame(p).equals(encodeBlock(p, 3))).toBe(true);
  });
});
