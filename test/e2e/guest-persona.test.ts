// The persona inside a real Linux guest: Debian's kernel (scripts/fetch-test-kernel.sh) boots under QEMU
// (TCG) with a busybox initramfs built here, its disk over NBD from `carryon serve` and the profile shared
// by the exact QEMU arguments serve emitted. In the guest, the shipped guest/linux scripts make the share
// the user's home (mount mode, then sync mode); the guest writes its disk, edits, adds and deletes profile
// files. Meanwhile a second device pushes an edit to another file. The real CLI checks in: the new persona
// version holds exactly the guest's edits plus the other device's, and nothing else changed.
// The guest console goes to DIR/console.log (CARRYON_KEEP_TMP=1 keeps it).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, removeTmp, requireTool, ROOT, spawnCli, TestServer, tmpDir } from './harness.js';

const KERNEL_DIR = process.env.CARRYON_TEST_KERNEL_DIR ?? path.join(ROOT, '.cache', 'test-kernel');
const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Debian's kernel and modules as scripts/fetch-test-kernel.sh left them; a missing kernel fails the test. */
function kernel(): { vmlinuz: string; modules: string; order: string[] } {
  const cur = path.join(KERNEL_DIR, 'current');
  if (!existsSync(cur)) throw new Error(`no test kernel in ${KERNEL_DIR}: run scripts/install-test-deps.sh (it runs scripts/fetch-test-kernel.sh)`);
  const dir = path.join(KERNEL_DIR, readFileSync(cur, 'utf8').trim());
  const modules = path.join(dir, 'modules');
  return { vmlinuz: path.join(dir, 'vmlinuz'), modules, order: readFileSync(path.join(modules, 'order'), 'utf8').trim().split(/\s+/) };
}

/** An ELF64 executable with no PT_INTERP program header: it needs no loader or libraries (the initramfs has none). */
function staticElf(file: string): boolean {
  const b = readFileSync(file);
  if (b.readUInt32BE(0) !== 0x7f454c46) return false;
  const phoff = Number(b.readBigUInt64LE(0x20));
  const size = b.readUInt16LE(0x36);
  for (let i = 0; i < b.readUInt16LE(0x38); i++) if (b.readUInt32LE(phoff + i * size) === 3) return false;
  return true;
}

/** The start of every guest's /init: busybox's applets, the kernel's folders, the modules in order. */
const INIT_HEAD = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
fail() { echo "CARRYON-GUEST-FAIL $*"; poweroff -f; }
for m in $(cat /modules/order); do insmod /modules/$m.ko || fail "insmod $m"; done
`;

/** Write the disk, then two sessions through the shipped scripts: mount mode, then sync mode. */
const INIT = `${INIT_HEAD}mkdir -p /disk /run /var/lib
mount -t ext4 /dev/vda /disk || fail "mount the NBD disk"
echo "written inside the guest" > /disk/from-guest.txt
umount /disk || fail "umount the disk"
H=/home/alice
# Session 1, mount mode: the share is the home.
/carryon/carryon-logon.sh alice || fail "logon (mount)"
awk -v h=$H '$2 == h { print "CARRYON-GUEST-HOME", $3 }' /proc/mounts
printf 'edited in the guest\\n' >> $H/Documents/notes.txt
printf 'new in the guest\\n' > $H/Documents/new.txt
rm $H/Documents/old.txt || fail "rm old.txt"
/carryon/carryon-logoff.sh alice || fail "logoff (mount)"
[ ! -e $H/Documents ] || fail "the home is still mounted after logoff"
# Session 2, sync mode: a local copy of the profile, copied back at logoff.
CARRYON_MODE=sync /carryon/carryon-logon.sh alice || fail "logon (sync)"
grep -q 'edited in the guest' $H/Documents/notes.txt || fail "session 1's edit is not in session 2's copy"
[ ! -e $H/Documents/old.txt ] || fail "old.txt came back"
CARRYON_MODE=sync /carryon/carryon-logon.sh alice 2>/dev/null && fail "a second logon overwrote an open sync session"
mkdir $H/Music && printf 'added in sync mode\\n' > $H/Music/list.txt
CARRYON_MODE=sync /carryon/carryon-logoff.sh alice || fail "logoff (sync)"
echo CARRYON-GUEST-DONE
poweroff -f
`;

/** A busybox-static initramfs (cpio newc) with the modules, the shipped guest scripts and INIT. */
function buildInitramfs(dir: string, k: ReturnType<typeof kernel>, init: string): string {
  const root = path.join(dir, `initramfs-${sha(init).slice(0, 8)}`);
  for (const d of ['bin', 'modules', 'carryon', 'etc', 'proc', 'sys', 'dev', 'home']) mkdirSync(path.join(root, d), { recursive: true });
  copyFileSync('/bin/busybox', path.join(root, 'bin', 'busybox'));
  chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  for (const m of [...k.order.map((m) => `${m}.ko`), 'order']) copyFileSync(path.join(k.modules, m), path.join(root, 'modules', m));
  for (const f of readdirSync(path.join(ROOT, 'guest', 'linux'))) copyFileSync(path.join(ROOT, 'guest', 'linux', f), path.join(root, 'carryon', f));
  // alice has the laptop user's uid, as docs/hypervisors.md asks (mount mode refuses a different one).
  writeFileSync(path.join(root, 'etc', 'passwd'), `root:x:0:0:root:/root:/bin/sh\nalice:x:${process.getuid!()}:${process.getgid!()}:Alice:/home/alice:/bin/sh\n`);
  writeFileSync(path.join(root, 'init'), init, { mode: 0o755 });
  const out = `${root}.cpio`;
  const r = spawnSync('sh', ['-c', `cd "${root}" && find . | cpio -o -H newc -R 0:0 --quiet > "${out}"`]);
  if (r.status !== 0) throw new Error(`cpio failed: ${r.stderr}`);
  return out;
}

/**
 * Boot Debian's kernel with `init` as /init and `vmArgs` (what serve emitted); the guest's console goes to
 * `log`. Resolves with the console once the guest powered off having printed CARRYON-GUEST-DONE.
 */
async function bootGuest(init: string, vmArgs: string[], log: string): Promise<string> {
  const k = kernel();
  const initrd = buildInitramfs(path.dirname(log), k, init);
  const qemu = spawn('qemu-system-x86_64', ['-accel', 'tcg', '-nodefaults', '-nographic', '-no-reboot', '-m', '256', '-serial', `file:${log}`,
    '-kernel', k.vmlinuz, '-initrd', initrd, '-append', 'console=ttyS0 quiet panic=-1', ...vmArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  let qemuErr = '';
  qemu.stderr!.on('data', (c) => (qemuErr += c));
  const guardian = setTimeout(() => qemu.kill('SIGKILL'), 150_000); // a hung guest fails the test, it does not hang it
  const code = await new Promise<number | null>((resolve) => qemu.once('exit', (c) => resolve(c)));
  clearTimeout(guardian);
  const out = existsSync(log) ? readFileSync(log, 'utf8') : '';
  expect(out, `guest console (${log}):\n${out.slice(-3000)}\nqemu: ${qemuErr}`).toContain('CARRYON-GUEST-DONE');
  expect(out).not.toContain('CARRYON-GUEST-FAIL');
  expect(code).toBe(0);
  return out;
}

describe('the persona inside a Linux guest (real kernel under QEMU)', () => {
  const dir = tmpDir('guest');
  const server = new TestServer(dir);
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'device-b'));
  const profileA = path.join(a.home, 'desktops', 'desk', 'persona', 'profile');
  const profileB = path.join(b.home, 'desktops', 'desk', 'persona', 'profile');
  const consoleLog = path.join(dir, 'console.log');

  beforeAll(async () => {
    for (const t of ['qemu-system-x86_64', 'cpio', 'mke2fs', 'debugfs']) requireTool(t);
    if (!existsSync('/bin/busybox') || !staticElf('/bin/busybox')) throw new Error('/bin/busybox must be busybox-static: run scripts/install-test-deps.sh');
    kernel();
    await server.init();
    const token = await server.addUser('alice');
    // The desktop's disk: a small ext4 the guest mounts and writes.
    mkdirSync(path.join(dir, 'img-files'));
    writeFileSync(path.join(dir, 'img-files', 'hello.txt'), 'from the image\n');
    const mk = spawnSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-d', path.join(dir, 'img-files'), path.join(dir, 'img.raw'), '16M']);
    expect(mk.status, mk.stderr?.toString()).toBe(0);
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    expect((await a.cli(['login', server.url, '--token', token, '--device-name', 'laptop-A'])).code).toBe(0);
    expect((await b.cli(['login', server.url, '--token', token, '--device-name', 'device-B'])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  it('guest edits through the shared profile come back in the check-in, merged with another device\'s push', async () => {
    // Version 2, from device B: the profile the guest will find.
    expect((await b.cli(['checkout', 'desk', '--persona-only', '--json'])).code).toBe(0);
    mkdirSync(path.join(profileB, 'Documents'), { recursive: true });
    mkdirSync(path.join(profileB, '.config'), { recursive: true });
    writeFileSync(path.join(profileB, 'Documents', 'notes.txt'), 'line one\n');
    writeFileSync(path.join(profileB, 'Documents', 'old.txt'), 'to be deleted in the guest\n');
    writeFileSync(path.join(profileB, 'Documents', 'keep.txt'), 'nobody touches this\n');
    writeFileSync(path.join(profileB, '.config', 'app.conf'), 'theme=light\n');
    const p2 = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(p2.code, p2.stderr).toBe(0);
    expect(p2.json.version).toBe(2);
    const v2 = (await server.admin(['persona', 'show', 'alice', '2'])).json;

    const co = await a.cli(['checkout', 'desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.persona.version).toBe(2);

    const serve = spawnCli(a, ['serve', 'desk']);
    const ev = await serve.next('listening');
    expect(ev.error, serve.stderr()).toBeUndefined();
    const realProfile = realpathSync(profileA);
    expect(ev.personaShare).toEqual({ path: realProfile, tag: 'carryon-profile', transport: '9p', securityModel: 'none' });
    expect(ev.qemuArgs).toEqual([
      '-drive', `file=nbd:unix:${ev.socket}:exportname=desk,format=raw,if=virtio,cache=none,discard=unmap`,
      '-virtfs', `local,path=${realProfile},mount_tag=carryon-profile,security_model=none,id=carryon-profile`,
    ]);
    expect(ev.libvirtXml).toContain(`<source dir='${realProfile}'/>`);
    expect(ev.libvirtXml).toContain(`<host transport='unix' socket='${ev.socket}'/>`);

    const guest = bootGuest(INIT, ev.qemuArgs, consoleLog);

    // Meanwhile, before the guest's check-in, device B changes another file.
    writeFileSync(path.join(profileB, '.config', 'app.conf'), 'theme=dark\n');
    const p3 = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(p3.code, p3.stderr).toBe(0);
    expect(p3.json.version).toBe(3);

    const out = await guest;
    expect(out).toMatch(/CARRYON-GUEST-HOME 9p/); // the home was the share itself in session 1
    expect(await serve.stop()).toBe(0);

    // The laptop's folder holds the guest's edits before anything is sent.
    const diff = await a.cli(['persona', 'diff', 'desk', '--json']);
    expect(diff.json.added).toEqual(['Documents/new.txt', 'Music', 'Music/list.txt']);
    expect(diff.json.changed).toEqual(['Documents/notes.txt']);
    expect(diff.json.deleted).toEqual(['Documents/old.txt']);

    const ci = await a.cli(['checkin', 'desk', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.version).toBe(ci.json.previousVersion + 1); // the disk the guest wrote moved on too
    expect(ci.json.persona.version).toBe(4);
    expect(ci.json.persona.merged).toBe(true);
    expect(ci.json.persona.report.conflicts).toEqual([]);

    // Version 4 = version 2 + the guest's edit, add and delete + B's edit; every other entry as it was.
    const v4 = (await server.admin(['persona', 'show', 'alice', '4'])).json;
    const files = (v: { files: Array<{ path: string; kind: string; hash: string | null; mode: number }> }) => new Map(v.files.map((f) => [f.path, f]));
    const before = files(v2);
    const after = files(v4);
    expect([...after.keys()].sort()).toEqual(['.config', '.config/app.conf', 'Documents', 'Documents/keep.txt', 'Documents/new.txt', 'Documents/notes.txt', 'Music', 'Music/list.txt']);
    expect(after.get('Documents/notes.txt')!.hash).toBe(sha('line one\nedited in the guest\n'));
    expect(after.get('Documents/new.txt')!.hash).toBe(sha('new in the guest\n'));
    expect(after.get('Music/list.txt')!.hash).toBe(sha('added in sync mode\n'));
    expect(after.get('Music')!.kind).toBe('dir');
    expect(after.get('.config/app.conf')!.hash).toBe(sha('theme=dark\n'));
    for (const p of ['Documents/keep.txt', 'Documents', '.config']) {
      expect({ kind: after.get(p)!.kind, hash: after.get(p)!.hash, mode: after.get(p)!.mode }).toEqual({ kind: before.get(p)!.kind, hash: before.get(p)!.hash, mode: before.get(p)!.mode });
    }
    expect(v4.registry).toBe(v2.registry);
    // The laptop's folder now shows the merged version, B's edit included.
    expect(readFileSync(path.join(profileA, '.config', 'app.conf'), 'utf8')).toBe('theme=dark\n');
  }, 240_000);

  it('--no-persona-share leaves the profile out of the lines', async () => {
    const co = await a.cli(['checkout', 'desk', '--json']);
    expect(co.code, co.stderr).toBe(0);
    // The new disk version holds what the guest wrote to its disk over NBD.
    const cat = spawnSync('debugfs', ['-R', 'cat /from-guest.txt', co.json.disk], { encoding: 'utf8' });
    expect(cat.stdout).toBe('written inside the guest\n');
    const serve = spawnCli(a, ['serve', 'desk', '--no-persona-share']);
    const ev = await serve.next('listening');
    expect(ev.personaShare).toBeNull();
    expect(ev.qemuArgs).toHaveLength(2);
    expect(ev.qemuArgs.join(' ')).not.toContain('virtfs');
    expect(ev.libvirtXml).not.toContain('<filesystem');
    expect(await serve.stop()).toBe(0);
  });

  it('what a guest plants that leaves the profile (symlinks out, a FIFO) stops the check-in, named, and changes nothing', async () => {
    const serve = spawnCli(a, ['serve', 'desk']);
    const ev = await serve.next('listening');
    expect(ev.personaShare.path).toBe(realpathSync(profileA));
    const out = await bootGuest(`${INIT_HEAD}
mkdir -p /run /var/lib
/carryon/carryon-logon.sh alice || fail "logon"
H=/home/alice
ln -s /etc/passwd $H/passwd-link
ln -s ../../../registry.reg $H/Documents/up-link
if mkfifo $H/pipe; then echo CARRYON-GUEST-FIFO created; else echo CARRYON-GUEST-FIFO refused; fi
printf 'fine\\n' > $H/Documents/fine.txt
/carryon/carryon-logoff.sh alice || fail "logoff"
echo CARRYON-GUEST-DONE
poweroff -f
`, ev.qemuArgs, path.join(dir, 'plant', 'console.log'));
    expect(await serve.stop()).toBe(0);
    // 9p with security_model=none keeps a guest symlink a symlink on the laptop (mapped-xattr would turn it
    // into a plain file holding the target): what the check-in scans is what the guest sees.
    expect(readlinkSync(path.join(profileA, 'passwd-link'))).toBe('/etc/passwd');
    // QEMU 7.2's 9p answers mknod of a FIFO with ENXIO here; should a later one create it, the scan refuses it.
    const fifo = /CARRYON-GUEST-FIFO created/.test(out);
    expect(fifo ? lstatSync(path.join(profileA, 'pipe')).isFIFO() : !existsSync(path.join(profileA, 'pipe'))).toBe(true);
    const history = async () => (await server.admin(['persona', 'history', 'alice'])).json.versions.length as number;
    const before = await history();
    const named = new Set<string>();
    for (;;) {
      const ci = await a.cli(['checkin', 'desk', '--json']);
      if (ci.code === 0) break;
      expect(ci.code, ci.stderr).toBe(2);
      expect(ci.json.error.code).toBe('BAD_REQUEST');
      const p = ci.json.error.data.path as string;
      expect(['passwd-link', 'Documents/up-link', 'pipe']).toContain(p);
      expect(named.has(p)).toBe(false);
      named.add(p);
      expect(await history()).toBe(before);
      rmSync(path.join(profileA, ...p.split('/'))); // what the user does: take it out of the profile
    }
    expect([...named].sort()).toEqual(['Documents/up-link', 'passwd-link', ...(fifo ? ['pipe'] : [])]);
    const latest = (await server.admin(['persona', 'show', 'alice'])).json;
    expect(latest.version).toBe(before + 1);
    expect(latest.files.map((f: { path: string }) => f.path)).toContain('Documents/fine.txt');
  }, 240_000);
});
