// Encryption at rest on the laptop (docs/encryption.md): a real ext4 image checked out encrypted,
// served over NBD to qemu-io and nbdcopy, written, checked in; no 4 KiB sample of its plaintext and
// not the device token is found in any file under the laptop home; the passphrase's refusals; the
// agent holding the key for the session; a discard destroys the key and gives the space back.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allocatedUnder, filesUnder, killSpawned, Laptop, makeExt4Image, removeTmp, requireTool, ROOT, sha256File, spawnCli, TestServer, tmpDir } from './harness.js';

const SECTOR = 4096;
const PASS = 'correct horse battery staple';
// A cheap keyring KDF for the test (the default costs 2^17); the passphrase comes from the environment.
const KEYS = { CARRYON_PASSPHRASE: PASS, CARRYON_KDF_LOG_N: '12' };

/** Which of the needles occur in any file under dir (each file read whole). */
function foundUnder(dir: string, needles: Buffer[]): Array<{ file: string; needle: number }> {
  const hits: Array<{ file: string; needle: number }> = [];
  for (const f of filesUnder(dir)) {
    const data = readFileSync(f);
    needles.forEach((n, k) => {
      if (data.includes(n)) hits.push({ file: path.relative(dir, f), needle: k });
    });
  }
  return hits;
}

function varied(s: Buffer): boolean {
  if (new Set(s).size < 64) return false;
  let run = 1;
  for (let i = 1; i < s.length; i++) {
    run = s[i] === s[i - 1] ? run + 1 : 1;
    if (run >= 8) return false;
  }
  return true;
}

/** Distinct non-zero 4 KiB sectors of a file, spread over it: what a thief would look for. */
function samplesOf(file: string, count: number): Buffer[] {
  const data = readFileSync(file);
  const candidates: Buffer[] = [];
  const seen = new Set<string>();
  for (let o = 0; o + SECTOR <= data.length; o += SECTOR) {
    const s = data.subarray(o, o + SECTOR);
    // Real content only: sectors with runs of one byte (padding, metadata) would also match unrelated
    // files, and make a substring search crawl through zeros.
    if (!varied(s)) continue;
    const k = s.toString('base64');
    if (seen.has(k)) continue;
    seen.add(k);
    candidates.push(Buffer.from(s));
  }
  const step = Math.max(1, Math.floor(candidates.length / count));
  return candidates.filter((_, i) => i % step === 0).slice(0, count);
}

/** The export's `listening` event, or the reason serve exited instead. */
async function listening(p: ReturnType<typeof spawnCli>): Promise<any> {
  return Promise.race([
    p.next('listening'),
    p.exit.then(({ code }) => Promise.reject(new Error(`serve exited with ${code}: ${p.stderr()}`))),
  ]);
}

describe('encryption at rest on the laptop', () => {
  const dir = tmpDir('encryption');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  const patch = randomBytes(1024 * 1024);
  let token = '';
  let expected = '';

  beforeAll(async () => {
    for (const t of ['qemu-io', 'nbdcopy', 'mke2fs']) requireTool(t);
    makeExt4Image(image, 48, 24);
    await server.init();
    token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['enc', 'enc2']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    for (const l of [a, b]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
    writeFileSync(path.join(dir, 'patch.bin'), patch);
    // The disk as it must be after the writes below.
    const want = readFileSync(image);
    patch.copy(want, 8 * 1024 * 1024);
    patch.copy(want, 12345, 0, SECTOR); // unaligned: read-modify-write of two sectors
    writeFileSync(path.join(dir, 'expected.raw'), want);
    expected = sha256File(path.join(dir, 'expected.raw'));
  }, 180_000);

  afterAll(async () => {
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  it('checks out encrypted, serves and takes writes over NBD, checks in; no plaintext sample nor the token under the home', async () => {
    const co = await a.cli(['checkout', 'enc', '--encrypt', '--json'], KEYS);
    expect(co.code, co.stderr).toBe(0);
    const disk = co.json.disk as string;
    // The file holds ciphertext from the start: the image's sectors are not in it.
    const samples = samplesOf(image, 48);
    expect(samples.length).toBeGreaterThanOrEqual(32);
    expect(foundUnder(a.home, samples)).toEqual([]);

    const serve = spawnCli(a, ['serve', 'enc'], KEYS);
    const l = await listening(serve);
    // The native XTS addon serves it (npm ci builds it); the JavaScript fallback only when asked for.
    expect(l.cipher).toBe(process.env.CARRYON_XTS === 'js' ? 'js' : 'native');
    expect(l.dataPath).toBe('js'); // encrypted at rest: the native data path is for plaintext copies
    const w = spawnSync('qemu-io', ['-f', 'raw', '-c', `write -s ${path.join(dir, 'patch.bin')} ${8 * 1024 * 1024} ${patch.length}`, '-c', `write -s ${path.join(dir, 'patch.bin')} 12345 ${SECTOR}`, l.uri], { encoding: 'utf8' });
    expect(w.status, w.stderr).toBe(0);
    const back = path.join(dir, 'back.raw');
    const r = spawnSync('nbdcopy', [l.uri, back], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(sha256File(back)).toBe(expected);
    expect(await serve.stop()).toBe(0);

    const written = [...Array(patch.length / SECTOR).keys()].filter((i) => i % 16 === 0).map((i) => patch.subarray(i * SECTOR, (i + 1) * SECTOR));
    expect(foundUnder(a.home, [...samples, ...written])).toEqual([]);
    expect(readFileSync(disk).subarray(8 * 1024 * 1024, 8 * 1024 * 1024 + SECTOR).equals(patch.subarray(0, SECTOR))).toBe(false);

    const ci = await a.cli(['checkin', 'enc', '--json'], KEYS);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.scanMode).toBe('dirty-map');
    // What was sent is the plaintext: a plain copy on another laptop is the expected disk.
    const cob = await b.cli(['checkout', 'enc', '--json']);
    expect(cob.code, cob.stderr).toBe(0);
    expect(sha256File(cob.json.disk)).toBe(expected);

    // After the check-in (its blocks went into the sealed cache): still nothing, and never the token.
    expect(foundUnder(a.home, [...samples, ...written, Buffer.from(token)])).toEqual([]);
    // The plain laptop, by contrast, holds the samples (the search finds what it looks for).
    expect(foundUnder(b.home, samples).length).toBeGreaterThan(samples.length / 2);
    expect((await b.cli(['checkin', 'enc'])).code).toBe(0);
  }, 180_000);

  it('refuses a wrong or missing passphrase with a clear error and changes nothing', async () => {
    const co = await a.cli(['checkout', 'enc', '--json'], KEYS); // again, in place: the copy stays encrypted
    expect(co.code, co.stderr).toBe(0);
    const disk = co.json.disk as string;
    const before = sha256File(disk);
    const locked = await a.cli(['checkin', 'enc'], { CARRYON_PASSPHRASE: '' });
    expect(locked.code).toBe(14);
    expect(locked.stderr).toMatch(/KEYS_LOCKED/);
    expect(locked.stderr).toMatch(/carryon unlock/);
    const wrong = await a.cli(['checkin', 'enc'], { CARRYON_PASSPHRASE: 'not the passphrase' });
    expect(wrong.code).toBe(14);
    expect(wrong.stderr).toMatch(/WRONG_PASSPHRASE/);
    expect(wrong.stderr).toMatch(/recovery code/);
    expect(sha256File(disk)).toBe(before);
    // status works locked: it reads no data
    const st = await a.cli(['status', 'enc']);
    expect(st.code, st.stderr).toBe(0);
    expect(st.stdout).toMatch(/encrypted at rest/);
    expect(st.stdout).toMatch(/encrypted and locked: `carryon unlock`/);
    const open = await a.cli(['status', 'enc', '--json'], KEYS);
    expect(open.json.desktops[0].encryption).toEqual({ encrypted: true, locked: false });
    expect(open.json.diskCipher.implementation).toBe(process.env.CARRYON_XTS === 'js' ? 'js' : 'native');
  }, 120_000);

  it('the agent holds the key for the session: unlock once, then commands need no passphrase; lock closes again', async () => {
    const agent = spawnCli(a, ['agent', '--interval', '3600'], { CARRYON_PASSPHRASE: '' });
    await agent.next('start');
    const passFile = path.join(dir, 'pass.txt');
    writeFileSync(passFile, `${PASS}\n`, { mode: 0o600 });
    const un = await a.cli(['unlock', '--passphrase-file', passFile]);
    expect(un.code, un.stderr).toBe(0);
    expect(un.stdout).toMatch(/agent holds the key/);
    const serve = spawnCli(a, ['serve', 'enc'], { CARRYON_PASSPHRASE: '' });
    await listening(serve);
    expect(await serve.stop()).toBe(0);
    const lock = await a.cli(['lock']);
    expect(lock.code, lock.stderr).toBe(0);
    const after = await a.cli(['serve', 'enc'], { CARRYON_PASSPHRASE: '' });
    expect(after.code).toBe(14);
    expect(after.stderr).toMatch(/KEYS_LOCKED/);
    expect(await agent.stop()).toBe(0);
  }, 120_000);

  it('a desktop whose policy requires encryption is encrypted without asking, its key escrowed; a recovery code from an admin opens it when the passphrase is forgotten', async () => {
    for (const n of ['req', 'req2']) expect((await server.admin(['desktop', 'create', n, '--user', 'alice', '--image', 'golden', '--encryption', 'required'])).code).toBe(0);
    const c = new Laptop(path.join(dir, 'laptop-c'));
    const d = new Laptop(path.join(dir, 'laptop-d'));
    for (const l of [c, d]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
    // No passphrase and no terminal: refused before any block comes down, with what to do.
    const none = await d.cli(['checkout', 'req2']);
    expect(none.code).toBe(14);
    expect(none.stderr).toMatch(/KEYS_LOCKED.*must be encrypted.*--passphrase-file/s);
    expect(filesUnder(d.home).some((f) => f.endsWith('disk.raw') || f.endsWith('disk.raw.partial'))).toBe(false);

    const co = await c.cli(['checkout', 'req', '--json'], KEYS);
    expect(co.code, co.stderr).toBe(0);
    expect(foundUnder(c.home, samplesOf(image, 16))).toEqual([]);
    const list = await server.admin(['admin', 'checkouts']);
    expect(JSON.stringify(list.json)).toMatch(/"keyCheck":"[0-9a-f]{16}"/);

    // The passphrase is forgotten: an admin reads out the recovery code, the user sets a new passphrase.
    const rc = await server.admin(['admin', 'recovery-code', 'req']);
    expect(rc.code, rc.stderr).toBe(0);
    const code = rc.json.code as string;
    expect(code).toMatch(/^([0-9A-Z]{4}-){13}[0-9A-Z]{4}$/);
    const forgot = await c.cli(['serve', 'req'], { CARRYON_PASSPHRASE: 'a brand new passphrase' });
    expect(forgot.code).toBe(14);
    const NEW = { CARRYON_PASSPHRASE: 'a brand new passphrase', CARRYON_KDF_LOG_N: '12' };
    const typo = await c.cli(['unlock', 'req', '--recovery-code', code.replace(/^./, (ch) => (ch === 'A' ? 'B' : 'A'))], NEW);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toMatch(/RECOVERY_CODE_INVALID/);
    const un = await c.cli(['unlock', 'req', '--recovery-code', code.toLowerCase()], NEW);
    expect(un.code, un.stderr).toBe(0);
    expect(un.stdout).toMatch(/req recovered under the new passphrase/);
    // The copy opens under the new passphrase: what the export serves is the desktop.
    const serve = spawnCli(c, ['serve', 'req'], NEW);
    const l = await listening(serve);
    const back = path.join(dir, 'recovered.raw');
    const r = spawnSync('nbdcopy', [l.uri, back], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(sha256File(back)).toBe(sha256File(image));
    expect(await serve.stop()).toBe(0);
  }, 180_000);

  it('an admin rollback of an encrypted copy: the agent destroys its key at once, removes it and its vault; the home shrinks by what it used', async () => {
    expect((await server.admin(['desktop', 'create', 'enc3', '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    const co = await a.cli(['checkout', 'enc3', '--encrypt', '--json'], KEYS);
    expect(co.code, co.stderr).toBe(0);
    const used = statSync(co.json.disk).blocks * 512 + allocatedUnder(path.join(a.home, 'vaults', 'enc3'));
    const before = allocatedUnder(a.home);
    const held = ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === 'enc3');
    expect((await server.admin(['admin', 'rollback', held.checkoutId])).code).toBe(0);
    const agent = await a.cli(['agent', '--once'], KEYS);
    expect(agent.code, agent.stderr).toBe(0);
    expect(agent.stderr).toMatch(/enc3: rolled back by an admin: local copy removed.*its encryption key destroyed/);
    expect(before - allocatedUnder(a.home)).toBeGreaterThanOrEqual(used);
    expect(filesUnder(a.home).some((f) => f.includes(`${path.sep}vaults${path.sep}enc3`))).toBe(false);
    expect(readFileSync(path.join(a.home, 'state.db')).includes(Buffer.from('copy:enc3'))).toBe(false);
    const st = await a.cli(['status', 'enc3']);
    expect(st.stdout + st.stderr).toMatch(/ROLLED BACK: an admin/);
  }, 120_000);

  it('on a terminal, the first encrypted check-out asks for a new passphrase twice (not echoed); later commands ask once', async () => {
    requireTool('script');
    expect((await server.admin(['desktop', 'create', 'tty', '--user', 'alice', '--image', 'golden', '--encryption', 'required'])).code).toBe(0);
    const e = new Laptop(path.join(dir, 'laptop-e'));
    expect((await e.cli(['login', server.url, '--token', token])).code).toBe(0);
    const env: NodeJS.ProcessEnv = { ...process.env, CARRYON_HOME: e.home, CARRYON_KDF_LOG_N: '12' };
    delete env.CARRYON_PASSPHRASE;
    const secret = 'typed at the prompt 42';
    /** Run the CLI on a pseudo-terminal (util-linux script), answering each prompt as it appears. */
    const onTerminal = async (args: string, answers: Array<[prompt: string, reply: string]>): Promise<{ code: number | null; out: string }> => {
      const p = spawn('script', ['-qec', `'${process.execPath}' '${path.join(ROOT, 'bin/carryon.js')}' ${args}`, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let next = 0;
      let from = 0; // each prompt is looked for after the previous answer
      p.stdout.on('data', (c) => {
        out += c;
        const at = next < answers.length ? out.indexOf(answers[next]![0], from) : -1;
        if (at >= 0) {
          from = at + answers[next]![0].length;
          p.stdin.write(`${answers[next++]![1]}\r`);
        }
      });
      const code = await new Promise<number | null>((resolve) => p.on('exit', resolve));
      return { code, out };
    };
    const co = await onTerminal('checkout tty', [['new passphrase (not shown): ', secret], ['the same again: ', secret]]);
    expect(co.out).toMatch(/must be encrypted on this laptop.*choose a passphrase/s);
    expect(co.out).toMatch(/checked out tty/);
    expect(co.out).not.toContain(secret);
    expect(co.code).toBe(0);
    const st = await onTerminal('status tty', [["passphrase for this laptop's encrypted desktops (not shown): ", secret]]);
    expect(st.code, st.out).toBe(0);
    expect(st.out).toMatch(/tty version 1 .*encrypted at rest/);
    expect(st.out).not.toMatch(/locked/);
    const bad = await onTerminal('status tty', [["passphrase for this laptop's encrypted desktops (not shown): ", 'not it at all']]);
    expect(bad.code).toBe(14);
    expect(bad.out).toMatch(/WRONG_PASSPHRASE/);
  }, 120_000);

  it('a desktop whose policy turns to required: the next check-out encrypts the copy and takes its plaintext out of the laptop', async () => {
    expect((await server.admin(['desktop', 'create', 'flip', '--user', 'alice', '--image', 'golden', '--encryption', 'off'])).code).toBe(0);
    const f = new Laptop(path.join(dir, 'laptop-f'));
    expect((await f.cli(['login', server.url, '--token', token])).code).toBe(0);
    const samples = samplesOf(image, 32);
    expect((await f.cli(['checkout', 'flip'])).code).toBe(0);
    expect(foundUnder(f.home, samples).length).toBeGreaterThan(0); // plaintext, as the policy allowed
    expect((await f.cli(['checkin', 'flip'])).code).toBe(0);
    expect((await server.admin(['desktop', 'policy', 'flip', '--encryption', 'required'])).code).toBe(0);
    const co = await f.cli(['checkout', 'flip', '--json'], KEYS);
    expect(co.code, co.stderr).toBe(0);
    expect(foundUnder(f.home, samples)).toEqual([]);
    const st = await f.cli(['status', 'flip', '--json'], KEYS);
    expect(st.json.desktops[0].encryption).toEqual({ encrypted: true, locked: false });
  }, 120_000);

  it('a discard destroys the key and removes the encrypted cache: the home shrinks by what the desktop used', async () => {
    const co = await a.cli(['checkout', 'enc2', '--encrypt', '--json'], KEYS);
    expect(co.code, co.stderr).toBe(0);
    const before = allocatedUnder(a.home);
    const used = statSync(co.json.disk).blocks * 512 + allocatedUnder(path.join(a.home, 'vaults', 'enc2'));
    expect(used).toBeGreaterThan(24 * 1024 * 1024);
    const d = await a.cli(['discard', 'enc2', '--yes', '--json'], KEYS);
    expect(d.code, d.stderr).toBe(0);
    expect(d.json.keyShredded).toBe(true);
    const after = allocatedUnder(a.home);
    // The disk file and its sealed cache are gone: the home shrank by at least what the desktop used.
    expect(before - after).toBeGreaterThanOrEqual(used);
    expect(filesUnder(a.home).some((f) => f.includes(`${path.sep}vaults${path.sep}enc2`))).toBe(false);
    // The key's row is gone from the laptop state (its key check no longer there).
    const db = readFileSync(path.join(a.home, 'state.db'));
    expect(db.includes(Buffer.from('copy:enc2'))).toBe(false);
    const again = await a.cli(['discard', 'enc2', '--yes'], KEYS);
    expect(again.code).toBe(8);
  }, 120_000);
});
