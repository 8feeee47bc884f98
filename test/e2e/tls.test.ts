// Hostile networks: HTTPS with certificates made by the openssl CLI at test time (a CA, a second CA,
// certificates valid, expired, not yet valid, for another host name), a renewal by SIGHUP, plain http://
// refused off this machine, tokens that never touch the command line, and X-Forwarded-For believed only
// from a trusted proxy. Real server and CLI processes; the TLS peer check uses node's tls.connect.
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID, X509Certificate } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { http, Laptop, ROOT, makeExt4Image, qemuWrite, removeTmp, requireTool, sha256File, TestServer, tmpDir } from './harness.js';

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

/** A CA (self-signed, P-256) in its own folder, with the database `openssl ca` signs from. */
function makeCa(dir: string, cn: string): string {
  const ca = path.join(dir, cn.replace(/\W+/g, '-'));
  spawnSync('mkdir', ['-p', path.join(ca, 'issued')]);
  writeFileSync(path.join(ca, 'index.txt'), '');
  writeFileSync(path.join(ca, 'serial'), '1000\n');
  // OpenSSL 3.0 (Debian 12) has no `x509 -not_before`: `openssl ca` takes -startdate/-enddate.
  writeFileSync(path.join(ca, 'ca.cnf'), [
    '[ca]', 'default_ca = test', '[test]', 'dir = .', 'database = index.txt', 'serial = serial', 'new_certs_dir = issued',
    'default_md = sha256', 'policy = any', 'unique_subject = no', '[any]', 'commonName = supplied', '',
  ].join('\n'));
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '3', '-subj', `/CN=${cn}`], ca);
  return ca;
}

/** A server certificate from `ca` for subjectAltName `san`, valid for two days or between two dates. */
function makeCert(ca: string, name: string, san: string, dates?: [start: string, end: string], eku = 'serverAuth'): { cert: string; key: string } {
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], ca);
  writeFileSync(path.join(ca, `${name}.ext`), `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=${eku}\n`);
  openssl(['ca', '-batch', '-notext', '-config', 'ca.cnf', '-cert', 'ca.pem', '-keyfile', 'ca.key', '-in', `${name}.csr`, '-out', `${name}.pem`, '-extfile', `${name}.ext`,
    ...(dates ? ['-startdate', dates[0], '-enddate', dates[1]] : ['-days', '2'])], ca);
  return { cert: path.join(ca, `${name}.pem`), key: path.join(ca, `${name}.key`) };
}

function fingerprint(certFile: string): string {
  return new X509Certificate(readFileSync(certFile)).fingerprint256;
}

/** The certificate a new TLS connection to the server gets. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(s.getPeerCertificate().fingerprint256);
      s.end();
    });
    s.on('error', reject);
  });
}

/** Wait until the server's log has `n` lines whose message starts so (the log is the server's answer to a SIGHUP). */
async function logged(server: TestServer, msg: string, n: number): Promise<any> {
  for (;;) {
    const file = path.join(server.dir, 'server.log');
    const lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(`"msg":"${msg}`)) : [];
    if (lines.length >= n) return JSON.parse(lines[n - 1]!);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** What a laptop home keeps of a login (nothing, after a refused one). */
function savedLogin(home: string): Record<string, string> {
  const file = path.join(home, 'state.db');
  if (!existsSync(file)) return {};
  const db = new Database(file, { readonly: true });
  try {
    const rows = db.prepare("SELECT key, value FROM config WHERE key IN ('url', 'token', 'ca', 'insecureHttp')").all() as Array<{ key: string; value: string }>;
    return Object.fromEntries(rows.map((r) => [r.key, r.value]));
  } catch {
    return {};
  } finally {
    db.close();
  }
}

describe('TLS, plain HTTP, tokens and proxies', () => {
  const dir = tmpDir('tls');
  const certs = path.join(dir, 'certs');
  const served = { cert: path.join(dir, 'served.pem'), key: path.join(dir, 'served.key') };
  const server = new TestServer(path.join(dir, 'https'));
  const plain = new TestServer(path.join(dir, 'plain'));
  const image = path.join(dir, 'golden.raw');
  let ca = '';
  let otherCa = '';
  let good = { cert: '', key: '' };
  let renewed = { cert: '', key: '' };
  let expired = { cert: '', key: '' };
  let future = { cert: '', key: '' };
  let wrongHost = { cert: '', key: '' };
  let token = '';
  let plainToken = '';
  let reloads = 0;
  /** A laptop left holding alice-desk over https by the cycle test. */
  let holder: Laptop | null = null;
  let n = 0;
  const laptop = (): Laptop => new Laptop(path.join(dir, `laptop-${++n}`));

  /** Serve another pair: copy it over the files the server was started with, SIGHUP, wait for the log. */
  async function serve(pair: { cert: string; key: string }): Promise<void> {
    copyFileSync(pair.cert, served.cert);
    copyFileSync(pair.key, served.key);
    process.kill(server.pid(), 'SIGHUP');
    await logged(server, 'TLS certificate reloaded', ++reloads);
  }

  beforeAll(async () => {
    requireTool('openssl');
    spawnSync('mkdir', ['-p', certs]);
    const caDir = makeCa(certs, 'carryon test CA');
    const otherDir = makeCa(certs, 'another CA');
    ca = path.join(caDir, 'ca.pem');
    otherCa = path.join(otherDir, 'ca.pem');
    good = makeCert(caDir, 'good', 'IP:127.0.0.1');
    renewed = makeCert(caDir, 'renewed', 'IP:127.0.0.1');
    expired = makeCert(caDir, 'expired', 'IP:127.0.0.1', ['20200101000000Z', '20200102000000Z']);
    future = makeCert(caDir, 'future', 'IP:127.0.0.1', ['20990101000000Z', '20991231000000Z']);
    wrongHost = makeCert(caDir, 'wrong-host', 'DNS:files.example.org,DNS:carryon.example.org');
    copyFileSync(good.cert, served.cert);
    copyFileSync(good.key, served.key);

    makeExt4Image(image, 16, 4);
    await server.init();
    token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'alice-desk', '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start({}, 0, ['--tls-cert', served.cert, '--tls-key', served.key]);
    await plain.init();
    plainToken = await plain.addUser('bob');
    await plain.start();
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    await plain.stop();
    removeTmp(dir);
  });

  it('serves https:// and says so', () => {
    expect(server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(plain.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('refuses a certificate from a CA the laptop does not trust, and saves nothing', async () => {
    const l = laptop();
    const r = await l.cli(['login', server.url, '--json'], { CARRYON_TOKEN: token });
    expect(r.code, r.stderr).toBe(13);
    expect(r.json.error.code).toBe('TLS_UNTRUSTED');
    expect(r.stderr).toMatch(/not signed by a certificate authority this laptop trusts/);
    expect(r.stderr).toContain(`carryon login ${server.url} --ca FILE`);
    expect(r.json.error.data.issuer).toBe('CN=carryon test CA');
    expect(savedLogin(l.home)).toEqual({});
    // The wrong CA given with --ca is no better.
    const w = await l.cli(['login', server.url, '--ca', otherCa, '--json'], { CARRYON_TOKEN: token });
    expect(w.code, w.stderr).toBe(13);
    expect(w.json.error.code).toBe('TLS_UNTRUSTED');
    expect(w.stderr).toMatch(/nor by the CA given with --ca/);
    expect(savedLogin(l.home)).toEqual({});
    // A file that is no certificate is refused before any connection.
    const k = await l.cli(['login', server.url, '--ca', good.key, '--json'], { CARRYON_TOKEN: token });
    expect(k.json.error.code).toBe('INVALID_ARGUMENT');
    expect(k.stderr).toMatch(/holds no PEM certificate/);
  });

  it('with --ca: login, then a check-out and check-in cycle over https, the CA kept for later commands', async () => {
    requireTool('qemu-io');
    const a = laptop();
    const r = await a.cli(['login', server.url, '--ca', ca, '--json'], { CARRYON_TOKEN: token });
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.ca).toEqual(['CN=carryon test CA']);
    expect(savedLogin(a.home).ca).toContain('-----BEGIN CERTIFICATE-----');
    const co = await a.cli(['checkout', 'alice-desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(sha256File(co.json.disk)).toBe(sha256File(image));
    qemuWrite(co.json.disk, [[0xab, 1 << 20, 200 * 1024], [0x5c, 9 << 20, 4096]]);
    const changed = sha256File(co.json.disk);
    const ci = await a.cli(['checkin', 'alice-desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.version).toBe(2);
    expect(ci.json.bytesSent).toBeGreaterThan(0);
    // A second laptop gets the new version, byte for byte, over https too.
    const b = laptop();
    expect((await b.cli(['login', server.url, '--ca', ca], { CARRYON_TOKEN: token })).code).toBe(0);
    const co2 = await b.cli(['checkout', 'alice-desk', '--json']);
    expect(co2.code, co2.stderr).toBe(0);
    expect(co2.json.version).toBe(2);
    expect(sha256File(co2.json.disk)).toBe(changed);
    holder = b;
  }, 120_000);

  it('refuses an expired certificate, saying when it expired', async () => {
    await serve(expired);
    try {
      const l = laptop();
      const r = await l.cli(['login', server.url, '--ca', ca, '--json'], { CARRYON_TOKEN: token });
      expect(r.code, r.stderr).toBe(13);
      expect(r.json.error.code).toBe('TLS_CERT_EXPIRED');
      expect(r.stderr).toMatch(/expired on 2020-01-02T00:00:00\.000Z/);
      expect(r.stderr).toMatch(/must renew it/);
      expect(r.json.error.data.expiredAt).toBe('2020-01-02T00:00:00.000Z');
      expect(savedLogin(l.home)).toEqual({});
      // The server said it serves an expired certificate.
      expect((await logged(server, 'TLS certificate reloaded, but it has EXPIRED: clients refuse it; renew it and send SIGHUP', 1)).level).toBe('warn');
    } finally {
      await serve(good);
    }
  });

  it('refuses a certificate that is not valid yet, pointing at the clock', async () => {
    await serve(future);
    try {
      const l = laptop();
      const r = await l.cli(['login', server.url, '--ca', ca, '--json'], { CARRYON_TOKEN: token });
      expect(r.code, r.stderr).toBe(13);
      expect(r.json.error.code).toBe('TLS_CERT_NOT_YET_VALID');
      expect(r.stderr).toMatch(/valid only from 2099-01-01T00:00:00\.000Z/);
      expect(r.stderr).toMatch(/clock/);
      expect(savedLogin(l.home)).toEqual({});
    } finally {
      await serve(good);
    }
  });

  it('refuses a certificate for another host name, naming the names it has', async () => {
    await serve(wrongHost);
    try {
      const l = laptop();
      const r = await l.cli(['login', server.url, '--ca', ca, '--json'], { CARRYON_TOKEN: token });
      expect(r.code, r.stderr).toBe(13);
      expect(r.json.error.code).toBe('TLS_HOSTNAME_MISMATCH');
      expect(r.stderr).toMatch(/a certificate for files\.example\.org, carryon\.example\.org, not for 127\.0\.0\.1/);
      expect(r.json.error.data.names).toEqual(['files.example.org', 'carryon.example.org']);
      expect(savedLogin(l.home)).toEqual({});
    } finally {
      await serve(good);
    }
  });

  it('refuses a certificate for another purpose (clients only), saying so', async () => {
    await serve(makeCert(path.dirname(ca), 'client-only', 'IP:127.0.0.1', undefined, 'clientAuth'));
    try {
      const l = laptop();
      const r = await l.cli(['login', server.url, '--ca', ca, '--json'], { CARRYON_TOKEN: token });
      expect(r.code, r.stderr).toBe(13);
      expect(r.json.error.code).toBe('TLS_UNTRUSTED');
      expect(r.stderr).toMatch(/unsuitable certificate purpose \(INVALID_PURPOSE\)/);
      expect(r.stderr).toMatch(/the server's admin must fix the certificate/);
      expect(savedLogin(l.home)).toEqual({});
    } finally {
      await serve(good);
    }
  });

  it('an impostor later (a captive portal, a man in the middle): commands are refused as untrusted, the agent waits as if offline', async () => {
    const b = holder!;
    const other = makeCert(path.dirname(otherCa), 'impostor', 'IP:127.0.0.1');
    await serve(other);
    try {
      const r = await b.cli(['checkin', 'alice-desk', '--json']);
      expect(r.code, r.stderr).toBe(13);
      expect(r.json.error.code).toBe('TLS_UNTRUSTED');
      expect(r.json.error.data.issuer).toBe('CN=another CA');
      const agent = await b.cli(['agent', '--once', '--json']);
      expect(agent.code, agent.stdout + agent.stderr).toBe(0);
      const events = agent.stdout.trim().split('\n').map((l) => JSON.parse(l));
      expect(events.find((e) => e.event === 'offline')).toMatchObject({ desktop: 'alice-desk', code: 'TLS_UNTRUSTED' });
    } finally {
      await serve(good);
    }
    // The real server again: the same laptop goes on, its CA kept.
    const d = await b.cli(['discard', 'alice-desk', '--yes', '--json']);
    expect(d.code, d.stderr).toBe(0);
  });

  it('SIGHUP with a renewed certificate: new connections get it; a bad pair keeps the old one serving', async () => {
    const port = server.port();
    expect(await servedFingerprint(port)).toBe(fingerprint(good.cert));
    await serve(renewed);
    const line = await logged(server, 'TLS certificate reloaded', reloads);
    expect(line.fingerprint256).toBe(fingerprint(renewed.cert));
    expect(await servedFingerprint(port)).toBe(fingerprint(renewed.cert));
    // A key that does not belong to the certificate: logged, and the renewed pair keeps serving.
    copyFileSync(good.cert, served.cert);
    copyFileSync(renewed.key, served.key);
    process.kill(server.pid(), 'SIGHUP');
    const failed = await logged(server, 'TLS certificate reload failed; the previous certificate keeps serving', 1);
    expect(failed.level).toBe('error');
    expect(failed.error).toMatch(/does not belong to the certificate/);
    expect(await servedFingerprint(port)).toBe(fingerprint(renewed.cert));
    const l = laptop();
    expect((await l.cli(['login', server.url, '--ca', ca], { CARRYON_TOKEN: token })).code).toBe(0);
    await serve(good);
    expect(await servedFingerprint(port)).toBe(fingerprint(good.cert));
  });

  it('https:// to a plain HTTP server says the server speaks plain HTTP', async () => {
    const l = laptop();
    const r = await l.cli(['login', plain.url.replace('http:', 'https:'), '--json'], { CARRYON_TOKEN: plainToken });
    expect(r.json.error.code).toBe('SERVER_UNREACHABLE');
    expect(r.stderr).toMatch(/TLS handshake .* failed/);
    expect(r.stderr).toMatch(/plain HTTP/);
  });

  it('http:// to 127.0.0.1 needs no flag; to another machine it is refused before connecting, and --insecure-http lets it try', async () => {
    const l = laptop();
    expect((await l.cli(['login', plain.url], { CARRYON_TOKEN: plainToken })).code).toBe(0);
    expect(savedLogin(l.home)).toMatchObject({ url: plain.url, insecureHttp: '0' });
    // A non-loopback address of this machine where nothing listens: refused at once when allowed, never leaving the machine.
    const own = Object.values(os.networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address ?? '10.255.255.1';
    const remote = `http://${own}:${plain.port()}`;
    const m = laptop();
    const r = await m.cli(['login', remote, '--json'], { CARRYON_TOKEN: 'cot_not_a_real_token' });
    expect(r.code, r.stderr).toBe(13);
    expect(r.json.error.code).toBe('INSECURE_HTTP');
    expect(r.stderr).toMatch(/the token and the desktop's disk would cross the network unencrypted/);
    expect(r.stderr).toContain(`Use https://${own}:${plain.port()}`);
    expect(r.stderr).toContain(`carryon login ${remote} --insecure-http`);
    expect(savedLogin(m.home)).toEqual({});
    const ok = await m.cli(['login', remote, '--insecure-http', '--json'], { CARRYON_TOKEN: 'cot_not_a_real_token' });
    expect(ok.json.error.code).toBe('SERVER_UNREACHABLE');
    expect(savedLogin(m.home)).toEqual({});
    // --insecure-http means nothing for https://, and says so.
    const h = await m.cli(['login', server.url, '--insecure-http', '--json'], { CARRYON_TOKEN: token });
    expect(h.json.error.code).toBe('INVALID_ARGUMENT');
  });

  describe('the token never needs the command line', () => {
    it('from --token-file (first line, trimmed), warning when others can read the file', async () => {
      const f = path.join(dir, 'token.txt');
      writeFileSync(f, `  ${plainToken}  \nsecond line ignored\n`, { mode: 0o600 });
      chmodSync(f, 0o600);
      const l = laptop();
      const r = await l.cli(['login', plain.url, '--token-file', f, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json.tokenFrom).toBe('file');
      expect(r.stderr).not.toMatch(/warning/);
      chmodSync(f, 0o644);
      const w = await laptop().cli(['login', plain.url, '--token-file', f, '--json']);
      expect(w.code, w.stderr).toBe(0);
      expect(w.stderr).toMatch(/warning: .*token\.txt is readable by other users \(mode 0644\): run `chmod 600/);
      // `-` reads stdin.
      const s = await laptop().cli(['login', plain.url, '--token-file', '-', '--json'], {}, `${plainToken}\n`);
      expect(s.code, s.stderr).toBe(0);
      const e = await laptop().cli(['login', plain.url, '--token-file', path.join(dir, 'nope.txt'), '--json']);
      expect(e.json.error.code).toBe('INVALID_ARGUMENT');
    });

    it('from CARRYON_TOKEN', async () => {
      const r = await laptop().cli(['login', plain.url, '--json'], { CARRYON_TOKEN: plainToken });
      expect(r.code, r.stderr).toBe(0);
      expect(r.json.tokenFrom).toBe('env');
      expect(r.json.user).toBe('bob');
    });

    it('with no token and no terminal: the error names the three ways', async () => {
      const l = laptop();
      const r = await l.cli(['login', plain.url, '--json'], { CARRYON_TOKEN: '' });
      expect(r.code).toBe(2);
      expect(r.json.error.code).toBe('INVALID_ARGUMENT');
      expect(r.stderr).toMatch(/--token-file FILE/);
      expect(r.stderr).toMatch(/CARRYON_TOKEN/);
      expect(r.stderr).toMatch(/on a terminal/);
      expect(savedLogin(l.home)).toEqual({});
    });

    it('prompts on a terminal without echoing what is typed', async () => {
      requireTool('script');
      const l = laptop();
      const env = { ...process.env, CARRYON_HOME: l.home };
      delete env.CARRYON_TOKEN;
      const cmd = `'${process.execPath}' '${path.join(ROOT, 'bin/carryon.js')}' login '${plain.url}'`;
      // util-linux script: the command runs on a pseudo-terminal that would echo a typed token unless the prompt turns echo off.
      const p = spawn('script', ['-qec', cmd, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let typed = false;
      p.stdout.on('data', (c) => {
        out += c;
        if (!typed && out.includes('not shown): ')) {
          typed = true;
          p.stdin.write(`${plainToken}\r`);
        }
      });
      const code = await new Promise<number | null>((resolve) => p.on('exit', resolve));
      expect(out).toMatch(/logged in to http:\/\/127\.0\.0\.1:\d+ as bob/);
      expect(out).not.toContain(plainToken);
      expect(code).toBe(0);
      expect(savedLogin(l.home).url).toBe(plain.url);
    });
  });

  describe('X-Forwarded-For', () => {
    const forged = async (xff: string): Promise<string | null> => {
      const device = randomUUID();
      const r = await http(plain.url, 'POST', '/v1/devices', plainToken, JSON.stringify({ device, name: 'proxy-test' }), { 'content-type': 'application/json', 'x-forwarded-for': xff });
      expect(r.status, JSON.stringify(r.json)).toBe(200);
      const audit = (await plain.admin(['admin', 'audit', '--limit', '20'])).json.audit as Array<{ action: string; target: string; address: string | null }>;
      return audit.find((a) => a.action === 'device.register' && a.target === `device:${device}`)!.address;
    };

    it('is ignored without --trust-proxy', async () => {
      expect(await forged('203.0.113.7')).toBe('127.0.0.1');
    });

    it('is believed from a trusted proxy: the right-most address that is not a trusted proxy', async () => {
      await plain.stop();
      await plain.start({}, 0, ['--trust-proxy', '127.0.0.1']);
      expect(await forged('203.0.113.7')).toBe('203.0.113.7');
      // A client's own forged entry sits left of what the proxy appended: not believed.
      expect(await forged('198.51.100.9, 203.0.113.7')).toBe('203.0.113.7');
      // Hops through trusted proxies are walked past; a malformed entry ends the walk.
      expect(await forged('203.0.113.7, 127.0.0.1')).toBe('203.0.113.7');
      expect(await forged('not-an-address')).toBe('127.0.0.1');
    });

    it('takes CIDRs from CARRYON_TRUST_PROXY, and refuses a bad list at start', async () => {
      await plain.stop();
      await plain.start({ CARRYON_TRUST_PROXY: '10.0.0.0/8, 127.0.0.0/8' });
      expect(await forged('192.0.2.44')).toBe('192.0.2.44');
      await plain.stop();
      const bad = new TestServer(plain.dir);
      await expect(bad.start({}, 0, ['--trust-proxy', '127.0.0.1/40'])).rejects.toThrow(/exited with 2/);
      const lines = readFileSync(path.join(plain.dir, 'server.log'), 'utf8');
      expect(lines).toMatch(/--trust-proxy: "127\.0\.0\.1\/40" is not an IP address or CIDR/);
      await plain.start();
      expect(await forged('203.0.113.7')).toBe('127.0.0.1');
    });
  });
});
