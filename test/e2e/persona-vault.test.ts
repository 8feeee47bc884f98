// An encrypted copy's persona is encrypted at rest (docs/encryption.md, "The persona"): checked out with
// --encrypt, it lives in a gocryptfs vault under HOME/vaults/NAME/persona.enc and is seen through a mount
// outside the home. The user edits profile files and the registry through the mount, checks in, and a
// second laptop sees the edits; no 4 KiB sample of the persona's plaintext is found in any file under
// the laptop home; `carryon lock` unmounts, a persona command mounts again, and after a discard the vault
// is gone and nothing is mounted. Without gocryptfs: PERSONA_VAULT_UNAVAILABLE before the server opens a
// checkout. gocryptfs and fusermount3 are required: missing, this test fails.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, removeTmp, requireTool, TestServer, tmpDir } from './harness.js';

/** A .reg file as regedit writes it: UTF-16LE with a BOM, CRLF. */
function regFile(lines: string[]): Buffer {
  const text = ['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n');
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);
}

/** Deterministic incompressible bytes (zstd stores them raw: a plaintext cache would hold them as they are). */
function noise(seed: number, n: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** 4 KiB samples of a file's bytes (start, middle, end); a smaller file is its own sample. */
function samplesOf(bytes: Buffer): Buffer[] {
  if (bytes.length < 4096) return bytes.length >= 48 ? [bytes] : [];
  const mid = Math.floor((bytes.length - 4096) / 2);
  return [bytes.subarray(0, 4096), bytes.subarray(mid, mid + 4096), bytes.subarray(bytes.length - 4096)];
}

/** Every regular file under `root`, read whole; mount points (another device) are not entered. */
function findSamples(root: string, samples: Buffer[]): string[] {
  const dev = statSync(root).dev;
  const hits: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const p = path.join(dir, name);
      const st = lstatSync(p);
      if (st.isDirectory()) {
        if (st.dev === dev) walk(p);
      } else if (st.isFile()) {
        const data = readFileSync(p);
        samples.forEach((s, i) => {
          if (data.indexOf(s) >= 0) hits.push(`${path.relative(root, p)} holds sample ${i}`);
        });
      }
    }
  };
  walk(root);
  return hits;
}

function mountsUnder(prefix: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(prefix));
}

describe('the persona of an encrypted copy is encrypted at rest', () => {
  const dir = tmpDir('persona-vault');
  const server = new TestServer(dir);
  const seed = new Laptop(path.join(dir, 'seed'));
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const c = new Laptop(path.join(dir, 'laptop-c'));
  const d = new Laptop(path.join(dir, 'laptop-d'));
  const runA = path.join(dir, 'run-a'); // laptop A's $XDG_RUNTIME_DIR: outside its home
  const envA = { CARRYON_PASSPHRASE: 'correct horse battery', CARRYON_KDF_LOG_N: '12', XDG_RUNTIME_DIR: runA };
  // Under the runtime folder, one folder per carryon home (8 hex of SHA-256 of its real path), then the desktop.
  const homeTag = createHash('sha256').update(path.join(realpathSync(dir), 'laptop-a')).digest('hex').slice(0, 8);
  const mountA = path.join(runA, 'carryon', homeTag, 'desk', 'persona');
  const seedProfile = path.join(seed.home, 'desktops', 'desk', 'persona', 'profile');
  const files: Record<string, Buffer> = {
    'Documents/notes.txt': Buffer.from('line one\n'.repeat(40)),
    'Documents/mail.mbox': Buffer.from(readFileSync('/usr/share/common-licenses/GPL-3').toString().repeat(4)),
    'AppData/blob.bin': noise(7, 200 * 1024),
  };
  const seedReg = regFile(['[HKEY_CURRENT_USER\\Software\\Demo]', '"Color"="blue, a distinctive value of the seeded registry"', '"Size"=dword:00000010']);

  beforeAll(async () => {
    // Required peers: a missing one fails the test, never skips it.
    requireTool('gocryptfs');
    requireTool('fusermount3');
    expect(existsSync('/dev/fuse'), '/dev/fuse').toBe(true);
    await server.init();
    const token = await server.addUser('alice');
    spawnSync('truncate', ['-s', '4M', path.join(dir, 'img.raw')]);
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    for (const [l, n] of [[seed, 'seed'], [a, 'laptop-A'], [c, 'laptop-C'], [d, 'laptop-D']] as const) {
      const r = await l.cli(['login', server.url, '--token', token, '--device-name', n]);
      expect(r.code, r.stderr).toBe(0);
    }
    // A persona with real files, pushed from a persona-only copy.
    expect((await seed.cli(['checkout', 'desk', '--persona-only', '--json'])).code).toBe(0);
    for (const [rel, bytes] of Object.entries(files)) {
      mkdirSync(path.dirname(path.join(seedProfile, rel)), { recursive: true });
      writeFileSync(path.join(seedProfile, rel), bytes);
    }
    writeFileSync(path.join(dir, 'seed.reg'), seedReg);
    expect((await seed.cli(['persona', 'reg', 'import', 'desk', path.join(dir, 'seed.reg')])).code).toBe(0);
    const push = await seed.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.version).toBe(2);
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    // Never leave a mount behind (removing the temp folder would recurse into it).
    for (const m of mountsUnder(dir)) spawnSync('fusermount3', ['-u', '-z', m]);
    removeTmp(dir);
  });

  it('without gocryptfs: PERSONA_VAULT_UNAVAILABLE, before the server opens a checkout', async () => {
    const r = await d.cli(['checkout', 'desk', '--encrypt', '--json'], { ...envA, XDG_RUNTIME_DIR: path.join(dir, 'run-d'), PATH: path.join(dir, 'no-tools') });
    expect(r.code, r.stderr).toBe(9);
    expect(r.json.error.code).toBe('PERSONA_VAULT_UNAVAILABLE');
    expect(r.stderr).toContain('gocryptfs');
    expect(existsSync(path.join(d.home, 'desktops', 'desk'))).toBe(false);
    // No checkout was opened for D: laptop A's check-out below would otherwise be refused.
  });

  it('a mount point inside the home is refused', async () => {
    const r = await d.cli(['checkout', 'desk', '--encrypt', '--persona-to', path.join(d.home, 'p'), '--json'], { ...envA, XDG_RUNTIME_DIR: path.join(dir, 'run-d') });
    expect(r.code, r.stderr).toBe(2);
    expect(r.json.error.code).toBe('INVALID_ARGUMENT');
    expect(r.stderr).toContain('inside the carryon home');
  });

  it('checks out encrypted, edits through the mount, checks in; another laptop sees the edits; no plaintext in the home', async () => {
    const co = await a.cli(['checkout', 'desk', '--encrypt', '--json'], envA);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.persona).toMatchObject({ dir: mountA, version: 2, files: 3 });
    expect(mountsUnder(mountA)).toEqual([mountA]);
    expect(existsSync(path.join(a.home, 'vaults', 'desk', 'persona.enc', 'gocryptfs.conf'))).toBe(true);
    expect(existsSync(path.join(a.home, 'desktops', 'desk', 'persona'))).toBe(false);
    for (const [rel, bytes] of Object.entries(files)) expect(readFileSync(path.join(mountA, 'profile', rel)).equals(bytes), rel).toBe(true);

    // The user edits a profile file, adds one, and rewrites the registry, all through the mount.
    const edited = Buffer.concat([files['AppData/blob.bin']!, noise(11, 64 * 1024)]);
    writeFileSync(path.join(mountA, 'profile', 'AppData', 'blob.bin'), edited);
    writeFileSync(path.join(mountA, 'profile', 'Documents', 'notes.txt'), 'line one\nfrom the encrypted laptop\n');
    const added = noise(13, 96 * 1024);
    writeFileSync(path.join(mountA, 'profile', 'Documents', 'scan.bin'), added);
    const newReg = regFile(['[HKEY_CURRENT_USER\\Software\\Demo]', '"Color"="green, set on the encrypted laptop through its mount"', '"Size"=dword:00000010', '"Added"="yes"']);
    writeFileSync(path.join(mountA, 'registry.reg'), newReg);
    const st = await a.cli(['persona', 'status', 'desk', '--json'], envA);
    expect(st.code, st.stderr).toBe(0);
    expect(st.json).toMatchObject({ added: ['Documents/scan.bin'], changed: ['AppData/blob.bin', 'Documents/notes.txt'], deleted: [], registryChanged: true });

    const ci = await a.cli(['checkin', 'desk', '--json'], envA);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.persona.version).toBe(3);

    // Laptop C (plaintext) sees everything.
    const cc = await c.cli(['checkout', 'desk', '--json']);
    expect(cc.code, cc.stderr).toBe(0);
    const profileC = path.join(c.home, 'desktops', 'desk', 'persona', 'profile');
    expect(readFileSync(path.join(profileC, 'AppData', 'blob.bin')).equals(edited)).toBe(true);
    expect(readFileSync(path.join(profileC, 'Documents', 'scan.bin')).equals(added)).toBe(true);
    expect(readFileSync(path.join(profileC, 'Documents', 'notes.txt'), 'utf8')).toBe('line one\nfrom the encrypted laptop\n');
    expect(readFileSync(path.join(profileC, 'Documents', 'mail.mbox')).equals(files['Documents/mail.mbox']!)).toBe(true);
    const show = await server.admin(['persona', 'show', 'alice']);
    expect(show.json.registry).toContain('"Color"="green, set on the encrypted laptop through its mount"');
    expect(show.json.registry).toContain('"Added"="yes"');
    expect(readFileSync(path.join(c.home, 'desktops', 'desk', 'persona', 'registry.reg')).toString('utf16le')).toContain('"Added"="yes"');

    // No 4 KiB sample of any persona file (as seeded and as edited), of registry.reg as the user sees it, or
    // of the registry as carryon records it, in any file under laptop A's home.
    const v2 = await server.admin(['persona', 'show', 'alice', '2']);
    const samples = [
      ...Object.values(files).flatMap(samplesOf), ...samplesOf(edited), ...samplesOf(added),
      ...samplesOf(readFileSync(path.join(mountA, 'registry.reg'))), ...samplesOf(seedReg),
      // the registry as text, and as a snapshot (JSON) holds it
      ...[show.json.registry as string, v2.json.registry as string].flatMap((t) => [...samplesOf(Buffer.from(t)), ...samplesOf(Buffer.from(JSON.stringify(t).slice(1, -1)))]),
    ];
    expect(samples.length).toBeGreaterThan(15);
    // The search finds them where they are in plaintext (laptop C's home): it works.
    expect(findSamples(c.home, samples).length).toBeGreaterThan(0);
    expect(findSamples(a.home, samples)).toEqual([]);
  }, 120_000);

  it('lock unmounts; a persona command mounts again; discard removes the vault and leaves nothing mounted', async () => {
    const lock = await a.cli(['lock', '--json'], envA);
    expect(lock.code, lock.stderr).toBe(0);
    expect(lock.json.personas).toEqual([{ desktop: 'desk', dir: mountA, unmounted: true, busy: null }]);
    expect(mountsUnder(mountA)).toEqual([]);
    expect(readdirSync(mountA)).toEqual([]); // the mount point holds nothing itself

    const st = await a.cli(['persona', 'status', 'desk', '--json'], envA);
    expect(st.code, st.stderr).toBe(0);
    expect(st.json).toMatchObject({ added: [], changed: [], deleted: [], registryChanged: false });
    expect(mountsUnder(mountA)).toEqual([mountA]);
    expect(readFileSync(path.join(mountA, 'profile', 'Documents', 'notes.txt'), 'utf8')).toBe('line one\nfrom the encrypted laptop\n');

    const dc = await a.cli(['discard', 'desk', '--yes', '--json'], envA);
    expect(dc.code, dc.stderr).toBe(0);
    expect(dc.json.keyShredded).toBe(true);
    expect(mountsUnder(dir)).toEqual([]);
    expect(existsSync(path.join(a.home, 'vaults', 'desk'))).toBe(false);
    expect(existsSync(mountA)).toBe(false);
  }, 60_000);

  it('a persona-only copy of a desktop whose policy requires encryption is encrypted too', async () => {
    expect((await server.admin(['desktop', 'create', 'desk-req', '--user', 'alice', '--image', 'img', '--encryption', 'required'])).code).toBe(0);
    const runD = path.join(dir, 'run-d');
    const envD = { ...envA, XDG_RUNTIME_DIR: runD };
    const co = await d.cli(['checkout', 'desk-req', '--persona-only', '--json'], envD);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.dir.startsWith(runD)).toBe(true);
    expect(mountsUnder(co.json.dir)).toEqual([co.json.dir]);
    expect(readFileSync(path.join(co.json.dir, 'profile', 'Documents', 'notes.txt')).length).toBeGreaterThan(0);
    expect(findSamples(d.home, Object.values(files).flatMap(samplesOf))).toEqual([]);
    const dc = await d.cli(['discard', 'desk-req', '--yes', '--json'], envD);
    expect(dc.code, dc.stderr).toBe(0);
    expect(dc.json.keyShredded).toBe(true);
    expect(mountsUnder(runD)).toEqual([]);
  }, 60_000);
});
