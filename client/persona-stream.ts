// The streamed persona ("just in time"): the whole profile is visible at once, and a file's chunks come
// down from the server when it is first opened. Owns: making the backing folder of placeholders at
// check-out, the hydration log, making a file whole ("hydrating" it) on the FUSE helper's request, the
// chunk download to 100% (background or `carryon persona fetch`), progress, and running and stopping the
// helper (native/persona-fuse: passthrough I/O in C, it asks this process before a file is used).
// Must not know: merges, uploads, the wire format (it calls ApiClient; push and check-in read the backing
// folder as they read any persona folder).
// Terms:
//   backing folder  DIR/profile, the real profile folder that scan, push and check-in read as for any copy.
//   placeholder     a file of the base snapshot never fetched: a sparse file with the entry's size, mode and
//                   mtime. The scanner's quick check (size + mtime) takes it as the unchanged base entry
//                   without reading it, so a scan never touches the network.
//   hydrate         write the file's real bytes to a temp name beside it (`.carryon-tmp-...`, which scans
//                   skip), check its SHA-256, set mode and mtime, rename it over the placeholder, then log
//                   the path. A crash leaves either the placeholder or the whole file, never a part.
//   hydration log   DIR/.carryon-stream/hydrated: hex paths that are no longer placeholders (made whole,
//                   removed or replaced through the mount). A path is a placeholder when the snapshot lists
//                   it as a file, the log does not, and the file still has the entry's size and mtime.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, promises as fs } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  CarryonError, decodePersona, canonicalForm, decodeVerified, getBlock, MAX_GET_IDS, PERSONA_CHUNK_BYTES, registryTextFileBytes, personaId, type BlockId, type BlockStore, type PersonaEntry, type PersonaSnapshot,
} from '../src/index.js';
import type { ApiClient } from './api-client.js';
import { crashPoint } from './crash-point.js';
import { PROFILE_DIR, REGISTRY_FILE } from './persona-engine.js';
import { defaultPersonaMount } from './persona-vault.js';
import type { LocalState, Login } from './state.js';

export const STREAM_DIR = '.carryon-stream';
const LOG_FILE = 'hydrated';
const MOUNT_FILE = 'mount.json';
const ERRNO = { EIO: 5, ENOENT: 2 } as const;

type Log = (event: string, fields: Record<string, unknown>, human: string) => void;

/** Whether the persona copy in `dir` is streamed (has placeholders that may still need fetching). */
export function isStreamed(dir: string): boolean {
  return existsSync(path.join(dir, STREAM_DIR));
}

/** The FUSE helper built by `npm install` (native/build.cjs); CARRYON_PERSONA_FUSE overrides it. */
export function helperPath(): string {
  return process.env.CARRYON_PERSONA_FUSE ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../native/persona-fuse/build/carryon-persona-fuse');
}

/** FUSE_UNAVAILABLE naming what a streamed persona's mount lacks. */
export function requirePersonaFuse(): void {
  const missing: string[] = [];
  if (!existsSync(helperPath())) missing.push(`the helper ${helperPath()} (install libfuse3-dev, then \`npm run build:native\`)`);
  if (spawnSync('fusermount3', ['--version'], { stdio: 'ignore' }).error) missing.push('fusermount3 (apt install fuse3)');
  if (!existsSync('/dev/fuse')) missing.push('/dev/fuse (modprobe fuse; in a container, pass the device in)');
  if (missing.length > 0) {
    throw new CarryonError('FUSE_UNAVAILABLE', `a streamed persona needs ${missing.join(' and ')}; or check the persona out without --stream (every file downloaded now)`, { missing });
  }
}

/**
 * checkout --persona-only --stream: the snapshot and the registry now, every file as a placeholder.
 * No chunk is fetched. Refused for an encrypted copy (a streamed persona is plaintext on this laptop).
 */
export async function checkoutStreamedPersona(state: LocalState, api: ApiClient, login: Login, name: string, dir: string, encrypted: boolean) {
  if (encrypted) {
    throw new CarryonError('INVALID_ARGUMENT', `the persona of ${name} is encrypted on this laptop, and a streamed persona is not (yet): check it out without --stream`, { desktop: name });
  }
  const held = state.persona(name);
  if (held && !(held.dir === dir && isStreamed(dir))) {
    throw new CarryonError('LOCAL_PATH_CONFLICT', `the persona of ${name} is already on this laptop in ${held.dir}, whole: use it there (\`carryon persona status ${name}\`)`, { path: held.dir });
  }
  if (held) {
    const snap = decodePersona(held.snapshot);
    return { dir, version: held.version, files: snap.files.filter((f) => f.kind === 'file').length, chunksFetched: 0, streamed: true, already: true };
  }
  if (existsSync(dir) && readdirSync(dir).length > 0) {
    throw new CarryonError('LOCAL_PATH_CONFLICT', `${dir} is not empty: give an empty or new folder with --persona-to`, { path: dir });
  }
  const got = await api.persona();
  if (personaId(got.encoded) !== got.id) throw new CarryonError('BAD_REQUEST', 'the persona received does not match its id');
  const snapshot = decodePersona(got.encoded);
  checkNesting(snapshot.files);
  // Canonical text as regedit writes it (no Registry of value objects: ~900 MB at 100,000 keys).
  const regBytes = registryTextFileBytes(canonicalForm(snapshot.registry, "the persona's registry"));
  const root = path.join(dir, PROFILE_DIR);
  await fs.mkdir(path.join(dir, STREAM_DIR), { recursive: true });
  await fs.mkdir(root, { recursive: true });
  // Folders first (open for writing while filled), then files and symlinks, then the folders' own mode
  // and mtime, deepest first (filling a folder changes its mtime).
  const dirs = snapshot.files.filter((e) => e.kind === 'dir');
  for (const e of dirs) await fs.mkdir(path.join(root, ...e.path.split('/')), { recursive: true, mode: 0o700 });
  for (const e of snapshot.files) {
    const abs = path.join(root, ...e.path.split('/'));
    if (e.kind === 'file') {
      const fh = await fs.open(abs, 'wx', 0o600);
      try {
        await fh.truncate(e.size); // sparse: no data blocks
      } finally {
        await fh.close();
      }
      await fs.chmod(abs, e.mode);
      await fs.utimes(abs, e.mtimeMs / 1000, e.mtimeMs / 1000);
    } else if (e.kind === 'symlink') {
      await fs.symlink(e.target!, abs);
      await fs.lutimes(abs, e.mtimeMs / 1000, e.mtimeMs / 1000);
    }
  }
  for (const e of [...dirs].reverse()) {
    const abs = path.join(root, ...e.path.split('/'));
    await fs.chmod(abs, e.mode);
    await fs.utimes(abs, e.mtimeMs / 1000, e.mtimeMs / 1000);
  }
  const tmp = path.join(dir, `${REGISTRY_FILE}.${process.pid}.tmp`);
  await fs.writeFile(tmp, regBytes);
  await fs.rename(tmp, path.join(dir, REGISTRY_FILE));
  await fs.writeFile(path.join(dir, STREAM_DIR, LOG_FILE), '');
  state.putPersona({ desktop: name, server: login.url, version: got.version, snapshot: got.encoded, dir, withDisk: false });
  return { dir, version: got.version, files: snapshot.files.filter((f) => f.kind === 'file').length, chunksFetched: 0, streamed: true, already: false };
}

/**
 * Nothing may sit under a file or a symlink (decodePersona checks each path alone): placeholders are
 * written straight from the snapshot, and a symlink on the way would take a write elsewhere.
 */
export function checkNesting(files: readonly PersonaEntry[]): void {
  const kinds = new Map(files.map((f) => [f.path, f.kind]));
  for (const f of files) {
    for (let i = f.path.indexOf('/'); i > 0; i = f.path.indexOf('/', i + 1)) {
      const up = kinds.get(f.path.slice(0, i));
      if (up !== undefined && up !== 'dir') {
        throw new CarryonError('BAD_REQUEST', `persona snapshot is invalid: ${JSON.stringify(f.path)} is under a ${up}; nothing was written on this laptop`, { path: f.path });
      }
    }
  }
}

/** The held copy of a streamed persona, or NOT_CHECKED_OUT / INVALID_ARGUMENT saying what to do. */
export function heldStream(state: LocalState, name: string) {
  const held = state.persona(name);
  if (!held) throw new CarryonError('NOT_CHECKED_OUT', `the persona of ${name} is not on this laptop: \`carryon checkout ${name} --persona-only --stream\` brings it`, { desktop: name });
  if (!isStreamed(held.dir)) throw new CarryonError('INVALID_ARGUMENT', `the persona of ${name} in ${held.dir} is a whole copy, not streamed: every file is there already`, { desktop: name });
  return held;
}

/** Distinct chunks of the held snapshot with their plaintext lengths. */
function chunksOf(files: readonly PersonaEntry[]): Map<BlockId, number> {
  const out = new Map<BlockId, number>();
  for (const f of files) if (f.kind === 'file') f.chunks.forEach((c, i) => out.set(c, Math.min(PERSONA_CHUNK_BYTES, f.size - i * PERSONA_CHUNK_BYTES)));
  return out;
}

export interface StreamProgress {
  chunks: number;
  chunksLocal: number;
  bytes: number;
  bytesLocal: number;
  /** Every chunk is in the laptop cache: any file opens offline. */
  readyToTravel: boolean;
}

export async function streamProgress(state: LocalState, name: string): Promise<StreamProgress> {
  const held = heldStream(state, name);
  const cache = state.cacheOf(name);
  let chunksLocal = 0;
  let bytes = 0;
  let bytesLocal = 0;
  const all = chunksOf(decodePersona(held.snapshot).files);
  for (const [id, len] of all) {
    bytes += len;
    if (await cache.has(id)) {
      chunksLocal++;
      bytesLocal += len;
    }
  }
  return { chunks: all.size, chunksLocal, bytes, bytesLocal, readyToTravel: chunksLocal === all.size };
}

/** Fetch chunks into the cache, `MAX_GET_IDS` per request, verifying each against its id. */
async function fetchChunks(api: ApiClient, cache: BlockStore, version: number, ids: readonly BlockId[]): Promise<void> {
  for (let k = 0; k < ids.length; k += 32) {
    const batch = ids.slice(k, k + Math.min(32, MAX_GET_IDS));
    const pending = new Set(batch);
    await api.personaChunks(version, batch, async ({ name, data }) => {
      if (!pending.delete(name)) throw new CarryonError('TAR_INVALID', `server sent chunk ${name.slice(0, 12)}… that was not asked for`);
      await cache.put(name, data, decodeVerified(name, data, PERSONA_CHUNK_BYTES));
    });
    if (pending.size > 0) throw new CarryonError('TAR_INVALID', `server answered without ${pending.size} requested chunk(s)`);
  }
  await cache.sync(); // other carryon processes (status) see them at once
}

/**
 * Download every chunk of the held snapshot the cache lacks (`carryon persona fetch`, and the mount's
 * background download). Stops early when `signal` aborts. Returns how many were fetched.
 */
export async function fetchAllChunks(state: LocalState, api: ApiClient, name: string, onProgress?: (p: { chunks: number; chunksLocal: number }) => void, signal?: AbortSignal): Promise<number> {
  const held = heldStream(state, name);
  const cache = state.cacheOf(name);
  const all = [...chunksOf(decodePersona(held.snapshot).files).keys()];
  const missing: BlockId[] = [];
  for (const id of all) if (!(await cache.has(id))) missing.push(id);
  let done = all.length - missing.length;
  for (let k = 0; k < missing.length && !signal?.aborted; k += 32) {
    // A chunk a hydration fetched meanwhile is not asked for twice.
    const batch: BlockId[] = [];
    for (const id of missing.slice(k, k + 32)) if (!(await cache.has(id))) batch.push(id);
    if (batch.length > 0) await fetchChunks(api, cache, held.version, batch);
    done += Math.min(32, missing.length - k);
    onProgress?.({ chunks: all.length, chunksLocal: done });
  }
  return missing.length;
}

/**
 * Before a streamed copy is pushed: the base chunks of every file changed since the base, fetched when
 * the cache lacks them (a file replaced whole through the mount was never fetched), so the upload can
 * send it as a delta. Returns how many were fetched.
 */
export async function fetchDeltaBases(state: LocalState, api: ApiClient, name: string, version: number, base: PersonaSnapshot, ours: PersonaSnapshot): Promise<number> {
  const cache = state.cacheOf(name);
  const now = new Map(ours.files.map((f) => [f.path, f]));
  const missing = new Set<BlockId>();
  for (const b of base.files) {
    const o = now.get(b.path);
    if (b.kind !== 'file' || !o || o.kind !== 'file' || o.hash === b.hash) continue;
    for (const c of b.chunks) if (!missing.has(c) && !(await cache.has(c))) missing.add(c);
  }
  if (missing.size > 0) await fetchChunks(api, cache, version, [...missing]);
  return missing.size;
}

/** What the mount process knows of the copy: reloaded when a push or check-in moved it to another version. */
interface Current {
  version: number;
  files: Map<string, PersonaEntry>;
}

/**
 * Makes placeholders whole on request. One per mount process; the hydration log is its memory across
 * crashes. Every decision re-reads the held version, so a push made meanwhile by another carryon
 * command (which rewrites the backing folder and moves the copy on) is followed.
 */
export class Hydrator {
  private current: Current | null = null;
  private readonly logged = new Set<string>();
  private readonly inflight = new Map<string, Promise<number>>();
  private readonly logPath: string;
  private readonly root: string;
  hydratedNow = 0;
  chunksFetched = 0;

  constructor(private readonly state: LocalState, private readonly api: () => ApiClient, private readonly name: string, private readonly dir: string, private readonly log: Log) {
    this.logPath = path.join(dir, STREAM_DIR, LOG_FILE);
    this.root = path.join(dir, PROFILE_DIR);
    for (const line of readFileSync(this.logPath, 'utf8').split('\n')) if (line) this.logged.add(Buffer.from(line, 'hex').toString('utf8'));
  }

  private snapshot(): Current {
    const row = this.state.db.prepare('SELECT version FROM personas WHERE desktop = ?').get(this.name) as { version: number } | undefined;
    if (!row) throw new CarryonError('NOT_CHECKED_OUT', `the persona of ${this.name} was discarded on this laptop`, { desktop: this.name });
    if (!this.current || this.current.version !== row.version) {
      const held = this.state.persona(this.name)!;
      this.current = { version: held.version, files: new Map(decodePersona(held.snapshot).files.map((f) => [f.path, f])) };
    }
    return this.current;
  }

  /**
   * Log `rel` as no longer a placeholder. `durable` (a removal or replacement) syncs the log: its content
   * may come to match the entry's size and mtime again (cp -p), and only the log then tells it is not a
   * placeholder. A file made whole needs no sync: lost, the next open rewrites the same bytes.
   */
  private async record(rel: string, durable = true): Promise<void> {
    if (this.logged.has(rel)) return;
    this.logged.add(rel);
    const fh = await fs.open(this.logPath, 'a');
    try {
      await fh.write(`${Buffer.from(rel, 'utf8').toString('hex')}\n`);
      if (durable) await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /** Is `rel` still a placeholder? Its entry when so. */
  private async placeholder(rel: string): Promise<PersonaEntry | null> {
    if (this.logged.has(rel)) return null;
    const e = this.snapshot().files.get(rel);
    if (!e || e.kind !== 'file') return null;
    const st = await fs.lstat(path.join(this.root, ...rel.split('/'))).catch(() => null);
    if (!st || !st.isFile()) return null;
    if (st.size !== e.size || Math.round(st.mtimeMs) !== e.mtimeMs) {
      await this.record(rel); // changed outside the mount: real content now
      return null;
    }
    return e;
  }

  /** Helper request O: make `rel` whole. Resolves to an errno (0 = done). */
  ensure(rel: string): Promise<number> {
    const running = this.inflight.get(rel);
    if (running) return running;
    const p = this.hydrate(rel).finally(() => this.inflight.delete(rel));
    this.inflight.set(rel, p);
    return p;
  }

  /** Helper request D: every placeholder under folder `rel` made whole (it is being renamed). */
  async ensureUnder(rel: string): Promise<number> {
    const prefix = rel === '.' ? '' : `${rel}/`;
    for (const p of [...this.snapshot().files.keys()]) {
      if (!p.startsWith(prefix)) continue;
      const err = await this.ensure(p);
      if (err !== 0) return err;
    }
    return 0;
  }

  /**
   * Helper request R: `rel`'s content is about to be replaced whole (a rename over it, an open with
   * O_TRUNC, a truncate to 0): nothing to fetch, even offline. The push fetches the old content's chunks
   * then, as the base of its delta (fetchDeltaBases).
   */
  replaced(rel: string): Promise<number> {
    return this.gone(rel);
  }

  /** Helper request G: `rel` is being removed or replaced; it is no longer a placeholder. */
  async gone(rel: string): Promise<number> {
    if (this.snapshot().files.has(rel)) await this.record(rel);
    return 0;
  }

  private async hydrate(rel: string): Promise<number> {
    let e: PersonaEntry | null;
    try {
      e = await this.placeholder(rel);
    } catch (err) {
      this.log('hydrate-error', { path: rel, message: (err as Error).message }, `carryon persona: ${rel}: ${(err as Error).message}`);
      return ERRNO.EIO;
    }
    if (!e) return 0;
    const cur = this.current!;
    const cache = this.state.cacheOf(this.name);
    const abs = path.join(this.root, ...rel.split('/'));
    try {
      if (e.size > 0) {
        const missing: BlockId[] = [];
        for (const c of new Set(e.chunks)) if (!(await cache.has(c))) missing.push(c);
        if (missing.length > 0) {
          try {
            await fetchChunks(this.api(), cache, cur.version, missing);
          } catch (err) {
            const why = err instanceof CarryonError ? `${err.code}: ${err.message}` : (err as Error).message;
            const message = `${JSON.stringify(rel)} was never downloaded to this laptop and the server could not send it (${why}); ` +
              `it reads as an I/O error (EIO) until you are online. Before travelling, run \`carryon persona fetch ${this.name}\``;
            this.log('unavailable', { path: rel, chunks: missing.length, cause: why, message }, `carryon persona: ${message}`);
            return ERRNO.EIO;
          }
          this.chunksFetched += missing.length;
        }
      }
      const tmp = path.join(path.dirname(abs), `.carryon-tmp-${randomBytes(8).toString('hex')}`);
      const fh = await fs.open(tmp, 'wx', 0o600);
      try {
        const h = createHash('sha256');
        for (const c of e.chunks) {
          const bytes = await getBlock(cache, c, PERSONA_CHUNK_BYTES);
          h.update(bytes);
          await fh.write(bytes);
        }
        if (h.digest('hex') !== e.hash) throw new CarryonError('MANIFEST_INVALID', `the chunks of ${JSON.stringify(rel)} do not add up to its SHA-256`, { path: rel });
        await fh.chmod(e.mode);
        await fh.utimes(e.mtimeMs / 1000, e.mtimeMs / 1000);
        await fh.sync();
      } catch (err) {
        await fh.close();
        await fs.rm(tmp, { force: true });
        throw err;
      }
      await fh.close();
      // Still the placeholder? (A write outside the mount meanwhile wins: the fetched copy is dropped.)
      if (!(await this.placeholder(rel))) {
        await fs.rm(tmp, { force: true });
        return 0;
      }
      crashPoint('persona-hydrate-rename'); // tests: a crash with the whole file written under its temp name
      await fs.rename(tmp, abs);
      await this.record(rel, false);
      this.hydratedNow++;
      this.log('hydrated', { path: rel, size: e.size, chunks: e.chunks.length }, `carryon persona: fetched ${rel} (${e.size} bytes)`);
      return 0;
    } catch (err) {
      const why = err instanceof CarryonError ? `${err.code}: ${err.message}` : (err as Error).message;
      this.log('hydrate-error', { path: rel, message: why }, `carryon persona: could not make ${rel} whole (${why}); it reads as an I/O error`);
      return ERRNO.EIO;
    }
  }
}

/** The default mount point of a streamed persona's profile: outside the home, beside where a vault would mount. */
export function defaultStreamMount(home: string, name: string): string {
  return path.join(path.dirname(defaultPersonaMount(home, name)), 'profile');
}

/** The mount point must be an empty folder, not a mount already; made when absent. */
export function checkStreamMount(at: string): string {
  const abs = path.resolve(at);
  let st;
  try {
    st = statSync(abs, { throwIfNoEntry: false });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') throw new CarryonError('INVALID_ARGUMENT', `a FUSE mount whose program died is left at ${abs}: run fusermount3 -u ${abs} first`, { path: abs });
    throw err;
  }
  if (!st) {
    mkdirSync(abs, { recursive: true, mode: 0o700 });
    return abs;
  }
  if (!st.isDirectory()) throw new CarryonError('INVALID_ARGUMENT', `${abs} is not a folder: give an empty folder with --at`, { path: abs });
  if (readdirSync(abs).length > 0) throw new CarryonError('INVALID_ARGUMENT', `${abs} is not empty (is the persona mounted there already?): give an empty folder with --at`, { path: abs });
  if (statSync(path.dirname(abs)).dev !== st.dev) throw new CarryonError('INVALID_ARGUMENT', `something is mounted at ${abs} already (fusermount3 -u ${abs}?)`, { path: abs });
  return abs;
}

export interface MountRecord {
  pid: number;
  at: string;
}

export function mountRecord(dir: string): MountRecord | null {
  try {
    const r = JSON.parse(readFileSync(path.join(dir, STREAM_DIR, MOUNT_FILE), 'utf8')) as MountRecord;
    process.kill(r.pid, 0); // a crashed mount's record is stale
    return r;
  } catch {
    return null;
  }
}

/** The running helper: spawned, mounted, answering its questions through a Hydrator. */
export class PersonaMount {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private stderr = '';

  private constructor(readonly at: string, private readonly proc: ChildProcess) {
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    proc.stderr!.on('data', (c) => (this.stderr = (this.stderr + c).slice(-2000)));
  }

  static async start(dir: string, at: string, hydrator: Hydrator): Promise<PersonaMount> {
    // Its own process group: Ctrl-C reaches only this process, which unmounts cleanly (waiting while an
    // application has a file open); if this process dies, the helper sees its stdin close and exits.
    const proc = spawn(helperPath(), [path.join(dir, PROFILE_DIR), at], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const m = new PersonaMount(at, proc);
    const ready = new Promise<void>((resolve, reject) => {
      proc.once('error', reject);
      m.exited.then(({ code, signal }) => reject(new CarryonError('FUSE_UNAVAILABLE', `the persona's FUSE helper stopped before mounting (${signal ?? `code ${code}`}): ${m.stderr.trim() || 'no message'}`, { code, signal })));
      readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
        const [idText, op, hex] = line.split(' ');
        if (op === 'READY') return resolve();
        const rel = Buffer.from(hex ?? '', 'hex').toString('utf8');
        const answer = op === 'O' ? hydrator.ensure(rel) : op === 'D' ? hydrator.ensureUnder(rel) : op === 'G' ? hydrator.gone(rel) : op === 'R' ? hydrator.replaced(rel) : Promise.resolve(ERRNO.EIO);
        void answer.catch(() => ERRNO.EIO).then((errno) => {
          if (!proc.stdin!.destroyed) proc.stdin!.write(`${idText} ${errno}\n`);
        });
      });
    });
    proc.stdin!.on('error', () => undefined); // the helper gone: its exit says why
    await ready;
    await fs.writeFile(path.join(dir, STREAM_DIR, MOUNT_FILE), JSON.stringify({ pid: process.pid, at } satisfies MountRecord));
    return m;
  }

  lastWords(): string {
    return this.stderr.trim();
  }

  /** fusermount3 -u; busy (an application has a file open): a lazy unmount, done when it closes them. */
  async unmount(): Promise<{ lazy: boolean }> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return { lazy: false };
    if (await fusermount(['-u', this.at])) {
      await this.exited;
      return { lazy: false };
    }
    await fusermount(['-u', '-z', this.at]);
    await this.exited;
    return { lazy: true };
  }
}

/** Unmount the recorded mount of the copy in `dir`; `lazy` (the copy is being discarded) even while in use. */
export async function unmountRecorded(dir: string, lazy = false): Promise<MountRecord | null> {
  const r = mountRecord(dir);
  if (!r) return null;
  if (!(await fusermount(['-u', r.at])) && !(lazy && (await fusermount(['-u', '-z', r.at])))) {
    throw new CarryonError('LOCAL_PATH_CONFLICT', `the persona mounted at ${r.at} is in use: close the applications using it, then run this again`, { path: r.at });
  }
  return r;
}

export async function clearMountRecord(dir: string): Promise<void> {
  await fs.rm(path.join(dir, STREAM_DIR, MOUNT_FILE), { force: true });
}

function fusermount(args: string[]): Promise<boolean> {
  return new Promise((resolve) => {
    const p = spawn('fusermount3', args, { stdio: 'ignore' });
    p.on('error', () => resolve(false));
    p.on('close', (code) => resolve(code === 0));
  });
}
