// Client updates from the company's own server (issue 14), end to end: the real server publishes real
// carryon releases (this repository's own build, repacked as `npm pack` would with another version),
// the real CLI checks the signed feed, installs and switches, and refuses a tampered tarball, a feed
// signed by another key, a replayed older feed, a release that does not start; an admin's pin rolls
// laptops back; the launcher goes back when a switched-to version no longer loads; the agent updates
// and exits for its service manager to restart it. Laptops reach the server through a loopback proxy
// that can play the attacker on the way (changing or replaying latest.yml).
import { createHash, generateKeyPairSync, sign } from 'node:crypto';
import { cpSync, existsSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import nodeHttp from 'node:http';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import Database from 'better-sqlite3';
import tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CARRYON_VERSION, feedStatementBytes, parseLatestYml, type FeedStatement } from '../../src/index.js';
import { Laptop, removeTmp, ROOT, spawnCli, TestServer, tmpDir, killSpawned } from './harness.js';

const [MAJ, MIN, PATCH] = CARRYON_VERSION.split('-')[0]!.split('.').map(Number) as [number, number, number];
/** A version n patches after this repository's. */
const ver = (n: number): string => `${MAJ}.${MIN}.${PATCH + n}`;

/** This repository's build as a release tarball of `version` (bin, dist, package.json, the native addon). `broken`: without dist/client/main.js. */
async function makeRelease(dir: string, version: string, broken = false): Promise<string> {
  const pack = tar.pack();
  const add = (name: string, data: Buffer, mode = 0o644): void => void pack.entry({ name: `package/${name}`, mode, size: data.length }, data);
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  pkg.version = version;
  add('package.json', Buffer.from(JSON.stringify(pkg, null, 2)));
  add('bin/carryon.js', readFileSync(path.join(ROOT, 'bin', 'carryon.js')), 0o755);
  add('bin/carryon-server.js', readFileSync(path.join(ROOT, 'bin', 'carryon-server.js')), 0o755);
  const walk = (rel: string): void => {
    for (const e of readdirSync(path.join(ROOT, rel), { withFileTypes: true })) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory()) walk(r);
      else if (e.isFile() && !(broken && r === 'dist/client/main.js')) add(r, readFileSync(path.join(ROOT, r)));
    }
  };
  for (const d of ['dist/src', 'dist/client', 'dist/server']) walk(d);
  const xts = path.join(ROOT, 'native', 'xts', 'build', 'Release', 'carryon_xts.node');
  if (existsSync(xts)) add('native/xts/build/Release/carryon_xts.node', readFileSync(xts), 0o755);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  const file = path.join(dir, `carryon-${version}${broken ? '-broken' : ''}.tgz`);
  writeFileSync(file, gzipSync(Buffer.concat(chunks)));
  return file;
}

type Mode = { kind: 'pass' } | { kind: 'replace'; text: string } | { kind: 'resign' };

/** A loopback proxy in front of the server; `mode` decides what it does to latest.yml. */
class Proxy {
  mode: Mode = { kind: 'pass' };
  lastFeed = '';
  private server: nodeHttp.Server | null = null;
  url = '';
  private readonly otherKey = generateKeyPairSync('ed25519').privateKey;

  constructor(private readonly target: () => string) {}

  async start(): Promise<void> {
    this.server = nodeHttp.createServer((req, res) => {
      const t = new URL(this.target());
      const up = nodeHttp.request({ host: t.hostname, port: t.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
        if (!req.url?.endsWith('/updates/latest.yml') || r.statusCode !== 200) {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
          return;
        }
        const parts: Buffer[] = [];
        r.on('data', (c: Buffer) => parts.push(c));
        r.on('end', () => {
          let text = Buffer.concat(parts).toString('utf8');
          this.lastFeed = text;
          if (this.mode.kind === 'replace') text = this.mode.text;
          if (this.mode.kind === 'resign') {
            // An attacker's own key: a feed that parses, for a version that exists, signed by the wrong key.
            const feed = parseLatestYml(text);
            const sig = sign(null, feedStatementBytes(feed.statement), this.otherKey).toString('base64');
            text = text.replace(/^carryonSignature: .*$/m, `carryonSignature: '${sig}'`);
          }
          res.writeHead(200, { 'content-type': 'text/yaml', 'content-length': Buffer.byteLength(text) });
          res.end(text);
        });
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server!.address() as { port: number }).port}`;
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

describe('client updates from the server (signed electron-updater feed)', () => {
  const dir = tmpDir('carryon-update-');
  const server = new TestServer(dir);
  const laptop = new Laptop(path.join(dir, 'laptop'));
  const proxy = new Proxy(() => server.url);
  const releases: Record<string, string> = {};
  let token = '';
  const version = async (): Promise<{ out: string; err: string }> => {
    const r = await laptop.cli(['--version']);
    expect(r.code).toBe(0);
    return { out: r.stdout.trim(), err: r.stderr };
  };

  beforeAll(async () => {
    await server.init();
    token = await server.addUser('alice');
    await server.start();
    await proxy.start();
    for (const [n, broken] of [[1, false], [2, false], [3, true], [4, false]] as const) releases[ver(n)] = await makeRelease(dir, ver(n), broken);
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, `${token}\n`);
    const r = await laptop.cli(['login', proxy.url, '--token-file', tokenFile, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.releaseKey).toBe(readFileSync(path.join(server.data, 'release', 'release.pub'), 'utf8').trim());
  }, 120_000);

  afterAll(async () => {
    killSpawned();
    await proxy.close();
    await server.stop();
    removeTmp(dir);
  });

  it('says plainly when nothing is published, and refuses tarballs that are not a carryon release', async () => {
    const none = await laptop.cli(['update', '--check', '--json']);
    expect(none.code).toBe(4);
    expect(none.json.error.code).toBe('RELEASE_NOT_FOUND');
    const junk = path.join(dir, 'junk.tgz');
    writeFileSync(junk, 'not a tarball\n');
    const a = await server.admin(['release', 'publish', junk, '--version', ver(1)]);
    expect(a.code).toBe(15);
    expect(a.json.error.code).toBe('RELEASE_INVALID');
    const wrong = await server.admin(['release', 'publish', releases[ver(1)]!, '--version', ver(9)]);
    expect(wrong.code).toBe(15);
    expect(wrong.json.error.message).toContain(`is carryon ${ver(1)}, not ${ver(9)}`);
    const list = await server.admin(['release', 'list']);
    expect(list.json.releases).toEqual([]);
  });

  it('publishes a signed release, and the laptop updates to it and runs it', async () => {
    const p = await server.admin(['release', 'publish', releases[ver(1)]!, '--version', ver(1)]);
    expect(p.code, p.stderr).toBe(0);
    expect(p.json.sha512).toBe(createHash('sha512').update(readFileSync(releases[ver(1)]!)).digest('base64'));
    const again = await server.admin(['release', 'publish', releases[ver(2)]!, '--version', ver(1)]);
    expect(again.code).not.toBe(0); // the tarball says ver(2): refused before it could replace anything
    const check = await laptop.cli(['update', '--check', '--json']);
    expect(check.code, check.stderr).toBe(0);
    expect(check.json).toMatchObject({ status: 'available', running: CARRYON_VERSION, offered: ver(1) });
    const up = await laptop.cli(['update', '--json']);
    expect(up.code, up.stderr).toBe(0);
    expect(up.json).toMatchObject({ status: 'updated', running: CARRYON_VERSION, offered: ver(1) });
    expect(readlinkSync(path.join(laptop.home, 'app', 'current'))).toBe(path.join('versions', ver(1)));
    expect((await version()).out).toBe(ver(1));
    const same = await laptop.cli(['update']);
    expect(same.code, same.stderr).toBe(0);
    expect(same.stdout).toContain(`carryon ${ver(1)} is the version the server offers: up to date`);
  });

  it("serves a feed electron-updater's own code reads, and downloads with its SHA-512 check", async () => {
    const { GenericProvider } = await import('electron-updater/out/providers/GenericProvider.js' as string) as any;
    const { HttpExecutor, CancellationToken, configureRequestUrl, configureRequestOptions } = await import('builder-util-runtime') as any;
    // electron-updater's executor takes Electron's net module; in plain Node the same base class gets
    // node:http, and a download goes through the base class's doDownload, whose pipes check the SHA-512.
    class NodeExecutor extends HttpExecutor {
      createRequest(options: any, callback: (res: any) => void): any {
        return nodeHttp.request(options, callback);
      }
      download(url: URL, destination: string, options: any): Promise<string> {
        return options.cancellationToken.createPromise((resolve: (d: string) => void, reject: (e: Error) => void, onCancel: any) => {
          const requestOptions: any = { headers: options.headers, redirect: 'manual' };
          configureRequestUrl(url, requestOptions);
          configureRequestOptions(requestOptions);
          (this as any).doDownload(requestOptions, { destination, options, onCancel, callback: (e: Error | null) => (e ? reject(e) : resolve(destination)), responseHandler: null }, 0);
        });
      }
    }
    const executor = new NodeExecutor();
    const updater = { channel: null, isAddNoCacheQuery: false };
    const provider = new GenericProvider({ provider: 'generic', url: `${server.url}/v1/updates/` }, updater, {
      isUseMultipleRangeRequest: false, platform: 'linux', executor,
    });
    provider.setRequestHeaders({ authorization: `Bearer ${token}` });
    const info = await provider.getLatestVersion();
    expect(info.version).toBe(ver(1));
    const sha = createHash('sha512').update(readFileSync(releases[ver(1)]!)).digest('base64');
    expect(info.files[0].sha512).toBe(sha);
    const files = provider.resolveFiles(info);
    expect(files[0].url.href).toBe(`${server.url}/v1/updates/carryon-${ver(1)}.tgz`);
    const headers = { authorization: `Bearer ${token}` };
    const dest = path.join(dir, 'eu-download.tgz');
    await executor.download(files[0].url, dest, { sha512: info.files[0].sha512, headers, cancellationToken: new CancellationToken() });
    expect(readFileSync(dest).equals(readFileSync(releases[ver(1)]!))).toBe(true);
    const other = createHash('sha512').update('other bytes').digest('base64');
    await expect(executor.download(files[0].url, path.join(dir, 'eu-bad.tgz'), { sha512: other, headers, cancellationToken: new CancellationToken() })).rejects.toThrow(/sha512 checksum mismatch/);
  });

  it('refuses a tarball altered on the server (SHA-512), and keeps running the old version', async () => {
    const p = await server.admin(['release', 'publish', releases[ver(2)]!, '--version', ver(2)]);
    expect(p.code, p.stderr).toBe(0);
    const db = new Database(path.join(server.data, 'carryon.db'));
    try {
      const row = db.prepare('SELECT bytes FROM client_releases WHERE version = ?').get(ver(2)) as { bytes: Buffer };
      const bad = Buffer.from(row.bytes);
      bad[bad.length - 100]! ^= 0xff;
      db.prepare('UPDATE client_releases SET bytes = ? WHERE version = ?').run(bad, ver(2));
      const r = await laptop.cli(['update', '--json']);
      expect(r.code).toBe(15);
      expect(r.json.error.code).toBe('UPDATE_REFUSED');
      expect(r.json.error.message).toContain("SHA-512 differs from the signed feed's");
      expect(r.json.error.message).toContain(`carryon ${ver(1)} keeps running`);
      expect(existsSync(path.join(laptop.home, 'app', 'versions', ver(2)))).toBe(false);
      expect((await version()).out).toBe(ver(1));
      db.prepare('UPDATE client_releases SET bytes = ? WHERE version = ?').run(row.bytes, ver(2));
    } finally {
      db.close();
    }
  });

  it('refuses a feed signed by another key', async () => {
    proxy.mode = { kind: 'resign' };
    try {
      const r = await laptop.cli(['update', '--json']);
      expect(r.code).toBe(15);
      expect(r.json.error.code).toBe('UPDATE_REFUSED');
      expect(r.json.error.message).toContain("not signed by this server's release key");
      expect((await version()).out).toBe(ver(1));
    } finally {
      proxy.mode = { kind: 'pass' };
    }
  });

  it('updates to the next release, and refuses a feed with a field changed on the way', async () => {
    // The feed as it was when ver(1) was current: validly signed, but older than what the laptop has seen.
    const old = await laptop.cli(['update', '--check', '--json']);
    expect(old.json.offered).toBe(ver(2));
    const feedV2 = proxy.lastFeed;
    const up = await laptop.cli(['update', '--json']);
    expect(up.code, up.stderr).toBe(0);
    expect(up.json).toMatchObject({ status: 'updated', running: ver(1), offered: ver(2) });
    expect((await version()).out).toBe(ver(2));
    // Any field changed on the way (here the serial, to pass for a newer feed) breaks the signature.
    expect(parseLatestYml(feedV2).statement.serial).toBeGreaterThan(1);
    proxy.mode = { kind: 'replace', text: proxy.lastFeed.replace(/carryonSerial: \d+/, 'carryonSerial: 999') };
    try {
      const r = await laptop.cli(['update', '--json']);
      expect(r.code).toBe(15);
      expect(r.json.error.code).toBe('UPDATE_REFUSED');
      expect(r.json.error.message).toContain('not signed');
    } finally {
      proxy.mode = { kind: 'pass' };
    }
    expect((await version()).out).toBe(ver(2));
  });

  it('goes back to an older version only when an admin pins it, and a replay of the pre-pin feed is refused', async () => {
    const before = (await laptop.cli(['update', '--check', '--json']));
    const feedBeforePin = proxy.lastFeed; // signed, serial N, offers ver(2)
    expect(before.json.status).toBe('up-to-date');
    const pin = await server.admin(['release', 'pin', ver(1)]);
    expect(pin.code, pin.stderr).toBe(0);
    expect(pin.json).toMatchObject({ pinned: ver(1), current: ver(1) });
    const back = await laptop.cli(['update', '--json']);
    expect(back.code, back.stderr).toBe(0);
    expect(back.json).toMatchObject({ status: 'rolled-back', running: ver(2), offered: ver(1), rollback: true });
    expect((await version()).out).toBe(ver(1));
    // The pre-pin feed, signed and valid once, offers ver(2) with a lower serial: a replay, refused.
    proxy.mode = { kind: 'replace', text: feedBeforePin };
    try {
      const r = await laptop.cli(['update', '--json']);
      expect(r.code).toBe(15);
      expect(r.json.error.message).toMatch(/older \(serial \d+\) than one this laptop already verified/);
    } finally {
      proxy.mode = { kind: 'pass' };
    }
    expect((await version()).out).toBe(ver(1));
    expect((await server.admin(['release', 'unpin'])).code).toBe(0);
  });

  it('does not switch to a release that fails to start, and does not try it again', async () => {
    const p = await server.admin(['release', 'publish', releases[ver(3)]!, '--version', ver(3)]);
    expect(p.code, p.stderr).toBe(0);
    const r = await laptop.cli(['update', '--json']);
    expect(r.code).toBe(15);
    expect(r.json.error.code).toBe('UPDATE_FAILED');
    expect(r.json.error.message).toContain(`carryon ${ver(3)} did not start`);
    expect((await version()).out).toBe(ver(1));
    expect(existsSync(path.join(laptop.home, 'app', 'versions', ver(3)))).toBe(false);
    const again = await laptop.cli(['update']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain(`carryon ${ver(3)} is offered but did not start on this laptop before`);
  });

  it('the launcher goes back when the version switched to no longer loads', async () => {
    const app = path.join(laptop.home, 'app');
    const brokenDir = path.join(app, 'versions', '9.9.9');
    cpSync(path.join(app, 'versions', ver(1)), brokenDir, { recursive: true, verbatimSymlinks: true });
    rmSync(path.join(brokenDir, 'dist', 'client', 'main.js'));
    rmSync(path.join(app, 'current'));
    symlinkSync(path.join('versions', '9.9.9'), path.join(app, 'current'));
    const v = await version();
    expect(v.out).toBe(CARRYON_VERSION);
    expect(v.err).toContain('the update to 9.9.9 does not start');
    expect(existsSync(path.join(app, 'current'))).toBe(false);
    const failed = JSON.parse(readFileSync(path.join(app, 'failed.json'), 'utf8')) as Array<{ version: string }>;
    expect(failed.map((f) => f.version)).toEqual([ver(3), '9.9.9']);
    expect(statSync(brokenDir).isDirectory()).toBe(true); // kept for a post-mortem
  });

  it('the agent installs what the feed offers and exits for its service manager to restart it', async () => {
    const p = await server.admin(['release', 'publish', releases[ver(4)]!, '--version', ver(4)]);
    expect(p.code, p.stderr).toBe(0);
    const agent = spawnCli(laptop, ['agent', '--interval', '1', '--json']);
    const ev = await agent.next('update');
    expect(ev).toMatchObject({ status: 'updated', running: CARRYON_VERSION, offered: ver(4) });
    expect((await agent.exit).code).toBe(0);
    expect((await version()).out).toBe(ver(4));
    const audit = await server.admin(['admin', 'audit', '--limit', '200']);
    expect(audit.code).toBe(0);
    const actions = (audit.json.audit as Array<{ action: string }>).map((a) => a.action);
    expect(actions.filter((a) => a === 'release.publish').length).toBe(4);
    expect(actions.filter((a) => a === 'release.pin').length).toBe(1);
    expect(actions.filter((a) => a === 'release.unpin').length).toBe(1);
  }, 120_000);

  it('an unauthenticated request gets no feed and no release', async () => {
    for (const p of ['/v1/updates/latest.yml', `/v1/updates/carryon-${ver(1)}.tgz`]) {
      const r = await fetch(server.url + p);
      expect(r.status).toBe(401);
    }
    const withToken = await fetch(`${server.url}/v1/updates/latest.yml`, { headers: { authorization: `Bearer ${token}` } });
    expect(withToken.status).toBe(200);
    const stmt: FeedStatement = parseLatestYml(await withToken.text()).statement;
    expect(stmt.version).toBe(ver(4));
  });
});
