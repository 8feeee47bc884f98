// PersonaVault: the persona copy of an encrypted desktop, kept at rest only as gocryptfs ciphertext
// (HOME/vaults/NAME/persona.enc, so shredding the copy's vault removes it) and seen by the user through a
// FUSE mount OUTSIDE the home ($XDG_RUNTIME_DIR/carryon/HOMETAG/NAME/persona by default): every edit goes
// through gocryptfs straight into ciphertext, and a search of the home never reads through the mount.
// gocryptfs's password is hex(subkey(dataKey, 'persona')), given on stdin, never written anywhere.
// Owns: the cipher folder, mounting and unmounting, the default mount point. Must not know: snapshots,
// merges, the server. docs/encryption.md ("The persona") has the reasons.
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { accessSync, constants as fsc, existsSync, lstatSync, mkdirSync, openSync, closeSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CarryonError, subkey } from '../src/index.js';
import type { LocalState } from './state.js';

const CONF = 'gocryptfs.conf';
/**
 * gocryptfs's own scrypt cost (log2 N) for the config that wraps its master key. Its minimum: the
 * password is already a random 256-bit key (a passphrase's KDF ran once, for the KEK), and the default
 * 2^16 would add ~0.2 s to every mount for nothing.
 */
const SCRYPT_LOG_N = 10;

export function personaCipherDir(state: LocalState, desktop: string): string {
  return path.join(state.vaultRoot(desktop), 'persona.enc');
}

/** The persona copy of this desktop lives in a gocryptfs vault (an encrypted copy made since vaults exist). */
export function isPersonaVault(state: LocalState, desktop: string): boolean {
  return state.keys.isEncrypted(desktop) && existsSync(path.join(personaCipherDir(state, desktop), CONF));
}

/**
 * Where an encrypted copy's persona is mounted unless --persona-to says otherwise: the session's runtime
 * folder ($XDG_RUNTIME_DIR, else /run/user/UID: a per-user tmpfs), else a 0700 folder of this user in
 * the temp folder. The mount point itself holds nothing: what it shows is the vault's.
 */
export function defaultPersonaMount(home: string, desktop: string): string {
  const uid = process.getuid?.() ?? 0;
  // One folder per carryon home: two homes of one user (two servers, tests) may hold desktops of one name.
  const tag = createHash('sha256').update(realOrSelf(home)).digest('hex').slice(0, 8);
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'carryon', tag, desktop, 'persona');
  if (existsSync(`/run/user/${uid}`)) return path.join(`/run/user/${uid}`, 'carryon', tag, desktop, 'persona');
  const own = path.join(os.tmpdir(), `carryon-${uid}`);
  mkdirSync(own, { recursive: true, mode: 0o700 });
  const st = lstatSync(own);
  // Another user could have made this name first in a shared /tmp: never mount where they can look.
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0) {
    throw new CarryonError('LOCAL_PATH_CONFLICT', `${own} is not a private folder of this user, and there is no $XDG_RUNTIME_DIR: give the persona's place with --persona-to DIR (outside the carryon home)`, { path: own });
  }
  return path.join(own, tag, desktop, 'persona');
}

/** A mount point inside the home would let anything that reads the home (a backup, a search) read the plaintext. */
export function checkMountPoint(home: string, dir: string): string {
  const abs = path.resolve(dir);
  const rel = path.relative(realOrSelf(home), realOrSelf(abs));
  if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) {
    throw new CarryonError('INVALID_ARGUMENT', `${abs} is inside the carryon home ${home}: an encrypted copy's persona is shown through a mount, which must be outside it (anything that reads the home would read the plaintext through it); choose another --persona-to`, { path: abs });
  }
  return abs;
}

function realOrSelf(p: string): string {
  // The deepest existing ancestor, resolved (symlinks, /tmp -> /private/tmp), then the rest as given.
  const rest: string[] = [];
  let cur = path.resolve(p);
  for (;;) {
    try {
      return path.join(realpathSync(cur), ...rest.reverse());
    } catch {
      const parent = path.dirname(cur);
      if (parent === cur) return path.resolve(p);
      rest.push(path.basename(cur));
      cur = parent;
    }
  }
}

function onPath(tool: string): boolean {
  for (const d of (process.env.PATH ?? '').split(':')) {
    if (!d) continue;
    try {
      accessSync(path.join(d, tool), fsc.X_OK);
      return true;
    } catch {
      /* not here */
    }
  }
  return false;
}

/** Refuse before anything is written when gocryptfs cannot work here. */
export function requirePersonaVault(): void {
  const missing: string[] = [];
  if (!onPath('gocryptfs')) missing.push('gocryptfs (Debian package gocryptfs)');
  if (!onPath('fusermount3')) missing.push('fusermount3 (Debian package fuse3)');
  if (!existsSync('/dev/fuse')) missing.push('/dev/fuse (modprobe fuse; in a container, --device /dev/fuse)');
  if (missing.length > 0) {
    throw new CarryonError('PERSONA_VAULT_UNAVAILABLE', `an encrypted copy keeps its persona in a gocryptfs vault, and this laptop lacks ${missing.join(', ')}: ` +
      'install it (sudo apt install gocryptfs fuse3), then run the command again; nothing of the persona was written in plaintext', { missing });
  }
}

interface MountEntry { mountPoint: string; fsType: string; source: string }

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

function mountAt(dir: string): MountEntry | null {
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return null;
  }
  const want = realOrSelf(dir);
  let found: MountEntry | null = null;
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const mp = unescapeMount(left.split(' ')[4] ?? '');
    if (mp !== want && mp !== path.resolve(dir)) continue;
    const [fsType, source] = right.split(' ');
    found = { mountPoint: mp, fsType: fsType ?? '', source: unescapeMount(source ?? '') }; // the last one is on top
  }
  return found;
}

export function isMounted(dir: string): boolean {
  return mountAt(dir) !== null;
}

/** A mount whose gocryptfs died answers ENOTCONN. */
function alive(dir: string): boolean {
  try {
    statSync(dir);
    return true;
  } catch {
    return false;
  }
}

async function runTool(state: LocalState, tool: string, args: string[], input: string | null): Promise<{ code: number | null; stderr: string }> {
  // gocryptfs forks a daemon that keeps the mount for the session and inherits stderr: a file (it may
  // write to it later), not a pipe the CLI would wait on. Read back for the message of a failure.
  const runDir = path.join(state.home, 'run');
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const logFile = path.join(runDir, `${tool}.${process.pid}.log`);
  const fd = openSync(logFile, 'w', 0o600);
  // The daemon needs none of carryon's variables (the passphrase may be one of them).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CARRYON_')));
  try {
    const code = await new Promise<number | null>((resolve, reject) => {
      const p = spawn(tool, args, { stdio: ['pipe', 'ignore', fd], cwd: '/', env });
      p.once('error', reject);
      p.once('exit', (c) => resolve(c));
      p.stdin!.on('error', () => undefined);
      p.stdin!.end(input ?? '');
    });
    return { code, stderr: readFileSync(logFile, 'utf8').trim() };
  } finally {
    closeSync(fd);
    await fs.rm(logFile, { force: true });
  }
}

/**
 * Make sure the persona vault of `desktop` is mounted at `mountPoint` (creating the vault on first
 * use). The copy's data key must be available (unlocked). Returns whether it was mounted now.
 */
export async function openPersonaVault(state: LocalState, desktop: string, mountPoint: string): Promise<{ mountPoint: string; mountedNow: boolean }> {
  const dir = checkMountPoint(state.home, mountPoint);
  const key = state.keys.dataKey(desktop);
  if (!key) throw new CarryonError('INTERNAL', `${desktop} has no data key: its persona is not kept in a vault`, { desktop });
  requirePersonaVault();
  const password = subkey(key, 'persona').toString('hex');
  const cipher = personaCipherDir(state, desktop);
  if (!existsSync(path.join(cipher, CONF))) {
    // No config: nothing in the folder can be decrypted (an interrupted first use): start it afresh.
    await fs.rm(cipher, { recursive: true, force: true });
    await fs.mkdir(cipher, { recursive: true, mode: 0o700 });
    const r = await runTool(state, 'gocryptfs', ['-init', '-q', '-nosyslog', '-scryptn', String(SCRYPT_LOG_N), cipher], password);
    if (r.code !== 0) throw new CarryonError('PERSONA_VAULT_UNAVAILABLE', `gocryptfs could not create the persona vault ${cipher}: ${r.stderr || `exit ${r.code}`}`, { exitCode: r.code });
  }
  const m = mountAt(dir);
  if (m) {
    if (m.fsType === 'fuse.gocryptfs' && realOrSelf(m.source) === realOrSelf(cipher)) {
      if (alive(dir)) return { mountPoint: dir, mountedNow: false };
      await runTool(state, 'fusermount3', ['-u', '-z', dir], null); // its gocryptfs died: mount afresh
    } else {
      throw new CarryonError('LOCAL_PATH_CONFLICT', `${dir} is already a mount point (${m.fsType} of ${m.source}), not this copy's persona vault: choose another --persona-to`, { path: dir });
    }
  }
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const left = await fs.readdir(dir);
  if (left.length > 0) {
    // Written while the vault was not mounted (after `carryon lock`): mounting would hide these files, and
    // they are not part of the persona. Never hide or drop them: the user moves them.
    throw new CarryonError('LOCAL_PATH_CONFLICT', `${dir} holds ${left.length} file(s) written while the encrypted persona was not mounted there (${left.slice(0, 3).join(', ')}${left.length > 3 ? ', ...' : ''}): ` +
      'they are not part of the persona, and mounting over them would hide them. Move them elsewhere, run the command again, then copy them into the mounted persona', { path: dir, files: left.slice(0, 20) });
  }
  const r = await runTool(state, 'gocryptfs', ['-q', '-nosyslog', cipher, dir], password);
  if (r.code !== 0) {
    throw new CarryonError('PERSONA_VAULT_UNAVAILABLE', `gocryptfs could not mount the persona vault of ${desktop} at ${dir}: ${r.stderr || `exit ${r.code}`}`, { desktop, path: dir, exitCode: r.code });
  }
  return { mountPoint: dir, mountedNow: true };
}

/**
 * Unmount a persona vault. `lazy`: detach it even while files in it are open (discard, rollback: the
 * vault is about to be destroyed); else a busy mount stays and the reason is returned.
 */
export async function closePersonaVault(state: LocalState, mountPoint: string, lazy: boolean): Promise<{ unmounted: boolean; busy: string | null }> {
  const m = mountAt(mountPoint);
  if (!m || m.fsType !== 'fuse.gocryptfs') return { unmounted: false, busy: null };
  const r = await runTool(state, 'fusermount3', ['-u', mountPoint], null);
  if (r.code === 0) return { unmounted: true, busy: null };
  if (!lazy) return { unmounted: false, busy: r.stderr || `fusermount3 exit ${r.code}` };
  const z = await runTool(state, 'fusermount3', ['-u', '-z', mountPoint], null);
  if (z.code !== 0) throw new CarryonError('PERSONA_VAULT_UNAVAILABLE', `cannot unmount the persona at ${mountPoint}: ${z.stderr || `fusermount3 exit ${z.code}`}`, { path: mountPoint });
  return { unmounted: true, busy: null };
}

/** The folder a persona copy is read and written in: for a vault, mounted first. */
export async function personaFolder(state: LocalState, held: { desktop: string; dir: string }): Promise<string> {
  if (isPersonaVault(state, held.desktop)) await openPersonaVault(state, held.desktop, held.dir);
  return held.dir;
}
