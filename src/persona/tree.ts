// A persona's profile folder on disk: scan it into snapshot entries, and make a folder match entries.
// Owns: the folder walk, the quick check (size + mtime) that skips unchanged files, the 1 MiB content
// chunks it puts into a BlockStore, and the guarded writes that never reach outside the folder.
// Must not know: HTTP, merges, the registry. Every path it reads or writes passes paths.ts first.
// Key terms: root = the profile folder; raw path = a name as it is on disk (maybe not NFC); path =
// its checked NFC form; previous = the entries the folder last held (the last scan or materialize).
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync, closeSync, constants as FS, fchmodSync, fstatSync, futimesSync, lstatSync, lutimesSync, mkdirSync, openSync, promises as fs, readdirSync, readlinkSync, readSync, renameSync, rmdirSync,
  rmSync, symlinkSync, unlinkSync, utimesSync, writeSync, fsync, type Stats,
} from 'node:fs';
import path from 'node:path';
import { decodeBlock } from '../codec/index.js';
import { CarryonError, type ErrorCode } from '../errors/index.js';
import { blockId, isBlockId, type BlockId } from '../hash/index.js';
import { getBlock, putBlock, syncFileSystem, type BlockStore } from '../store/index.js';
import { PERSONA_CHUNK_BYTES, type PersonaEntry, type PersonaEntryKind, type PersonaSnapshot } from './model.js';
import { checkPersonaPath, checkSymlinkTarget, findCaseCollisions } from './paths.js';

/**
 * Temporary files carryon writes beside their final name and renames into place. A scan skips them
 * (a crash may leave one behind) and materialize removes leftovers without asking.
 */
const TEMP_NAME = /^\.carryon-tmp-[0-9a-f]{16}$/;
/** ignoreBOM keeps a leading U+FEFF in a name instead of silently dropping it. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export interface PersonaScanProgress {
  /** The entry just scanned. */
  path: string;
  entries: number;
  bytesRead: number;
  newChunks: number;
}

export interface PersonaScanOptions {
  /** The last snapshot of this folder: a file with the same path, size and mtime reuses its hash and chunks unread. */
  previous?: PersonaSnapshot;
  onProgress?: (p: PersonaScanProgress) => void;
  /** Called for each chunk this scan put into the store (absent before), with the file it belongs to. */
  onNewChunk?: (c: { path: string; id: BlockId; size: number }) => void;
  /** zstd level for new chunks (the codec's default when omitted). */
  level?: number;
}

export interface PersonaScanResult {
  /** Sorted by path (code-unit order), as PersonaSnapshot.files. */
  files: PersonaEntry[];
  /** Chunks put into the store (absent before this scan). */
  newChunks: number;
  /** File content bytes read from disk. */
  bytesRead: number;
}

export interface PersonaMaterializeOptions {
  /**
   * What the folder held when last scanned or materialized. Files that still match it (size and
   * mtime) and whose hash equals the snapshot's are not rewritten. When given, it also guards local
   * work: a file or symlink that would be overwritten or removed but no longer matches it (changed or
   * created since) fails with LOCAL_PATH_CONFLICT before anything is touched. Without it the folder
   * is simply made to match: whatever differs is replaced, whatever is extra is removed.
   */
  previous?: readonly PersonaEntry[];
  /**
   * A chunk's plaintext when the caller already holds it, checked against its id (a check-out writing
   * files while their chunks arrive): then it is not read and decoded from the store again.
   */
  plainOf?: (id: BlockId) => Promise<Buffer | undefined>;
}

export interface PersonaMaterializeResult {
  /** Files written, symlinks and folders created. */
  written: number;
  /** Entries removed from the folder. */
  removed: number;
}

/** Integer milliseconds as the snapshot stores them. Rounded, not truncated: utimes(ms / 1000) reads back as ms - 0.001. */
function msOf(mtimeMs: number): number {
  return Math.max(0, Math.round(mtimeMs));
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

function byPath(a: { path: string }, b: { path: string }): number {
  return a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
}

function ioError(what: string, rel: string, err: unknown): CarryonError {
  if (err instanceof CarryonError) return err;
  const e = err as NodeJS.ErrnoException;
  return new CarryonError('IO_ERROR', `${what} ${JSON.stringify(rel)} failed: ${e?.message ?? String(err)}`, { path: rel, errno: e?.code }, err);
}

async function io<T>(what: string, rel: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    throw ioError(what, rel, err);
  }
}

/**
 * The same for a synchronous call. Scan and materialize make their many small file-system calls
 * synchronously (lstat, open, chmod, rename...): each asynchronous one was a thread-pool round trip,
 * and a 17,700-file profile spent seconds waiting on those (a check-out of 256 MiB idled 5 s of its
 * 18). They give the event loop a turn between folders and between files (yieldNow).
 */
function ioSync<T>(what: string, rel: string, op: () => T): T {
  try {
    return op();
  } catch (err) {
    throw ioError(what, rel, err);
  }
}

/** Let timers and sockets run (a scan inside `carryon serve`'s process must not stall its NBD clients). */
let lastYield = Date.now();
async function yieldNow(): Promise<void> {
  if (Date.now() - lastYield < 10) return;
  await new Promise<void>((resolve) => setImmediate(resolve));
  lastYield = Date.now();
}

function kindOf(st: Stats): PersonaEntryKind | 'other' {
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  return 'other';
}

function describeOther(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a file, folder or symlink';
}

/** The names in a folder, decoded strictly (a name that is not UTF-8 cannot be a persona path), sorted. */
function listNames(abs: string, rel: string, code: ErrorCode): string[] {
  const raw = ioSync('reading folder', rel || '.', () => readdirSync(abs, { encoding: 'buffer' }));
  return raw.map((b) => decodeName(b, rel, code, 'a name in')).sort();
}

function decodeName(b: Buffer, rel: string, code: ErrorCode, what: string): string {
  try {
    return UTF8.decode(b);
  } catch {
    const lossy = b.toString('utf8');
    throw new CarryonError(code, `${what} ${JSON.stringify(rel || '.')} is not valid UTF-8 (${JSON.stringify(lossy)}); rename it`, { path: rel, name: lossy });
  }
}

// ---------------------------------------------------------------------------------------------- scan

/**
 * Walk `root` (lstat only: symlinks are recorded, never followed) and describe it as snapshot entries.
 * New file content goes into `store` as PERSONA_CHUNK_BYTES chunks, one chunk in memory at a time.
 * Refused with BAD_REQUEST, naming the path: a path that fails checkPersonaPath, two names that are one
 * on a case-insensitive file system, a symlink whose target leaves the folder, a name or target that is
 * not UTF-8, and anything that is not a file, folder or symlink (FIFO, socket, device): such an entry
 * cannot travel to another machine, and skipping it silently would lose it without a word.
 * A file that keeps changing while it is read fails with IO_ERROR after three tries.
 */
export async function scanPersonaTree(root: string, store: BlockStore, opts: PersonaScanOptions = {}): Promise<PersonaScanResult> {
  const rootStat = await io('reading', root, () => fs.stat(root));
  if (!rootStat.isDirectory()) throw new CarryonError('INVALID_ARGUMENT', `${root} is not a folder`, { root });
  const previous = new Map((opts.previous?.files ?? []).map((e) => [e.path, e]));
  const files: PersonaEntry[] = [];
  const totals = { newChunks: 0, bytesRead: 0 };

  const walk = async (rawDir: string): Promise<void> => {
    await yieldNow();
    const names = listNames(rawDir ? path.join(root, rawDir) : root, rawDir, 'BAD_REQUEST').filter((n) => !TEMP_NAME.test(n));
    // Two full paths collide exactly when two siblings on the way do, so checking each folder suffices.
    const clash = findCaseCollisions(names.map((n) => n.normalize('NFC')))[0];
    if (clash) {
      const where = rawDir ? `${rawDir}/` : '';
      throw new CarryonError('BAD_REQUEST', `${JSON.stringify(where + clash[0])} and ${JSON.stringify(where + clash[1])} would be one file on a case-insensitive file system (Windows, macOS); rename one`, {
        path: where + clash[1], other: where + clash[0], rule: 'case-collision',
      });
    }
    for (const name of names) {
      const raw = rawDir ? `${rawDir}/${name}` : name;
      const rel = checkPersonaPath(raw);
      const abs = path.join(root, raw);
      const st = ioSync('reading', rel, () => lstatSync(abs));
      const kind = kindOf(st);
      const base = { path: rel, mode: st.mode & 0o777, mtimeMs: msOf(st.mtimeMs), size: 0, hash: null, chunks: [] as BlockId[] };
      if (kind === 'dir') {
        files.push({ ...base, kind });
        await walk(raw);
      } else if (kind === 'symlink') {
        const t = decodeName(ioSync('reading symlink', rel, () => readlinkSync(abs, { encoding: 'buffer' })), rel, 'BAD_REQUEST', 'the target of symlink');
        files.push({ ...base, kind, target: checkSymlinkTarget(rel, t) });
      } else if (kind === 'file') {
        const p = previous.get(rel);
        if (p && p.kind === 'file' && p.size === st.size && p.mtimeMs === base.mtimeMs && p.hash) {
          files.push({ ...base, kind, size: p.size, hash: p.hash, chunks: [...p.chunks] });
        } else {
          files.push(await readFileEntry(abs, rel, store, opts, totals));
        }
      } else {
        throw new CarryonError('BAD_REQUEST', `${JSON.stringify(rel)} is ${describeOther(st)}; a persona holds only files, folders and symlinks (move it out of the profile)`, { path: rel, rule: 'special-file' });
      }
      opts.onProgress?.({ path: rel, entries: files.length, bytesRead: totals.bytesRead, newChunks: totals.newChunks });
    }
  };
  await walk('');
  files.sort(byPath);
  return { files, newChunks: totals.newChunks, bytesRead: totals.bytesRead };
}

/** Read one file in chunks, store new chunks, and describe it. Retries when the file changes meanwhile. */
async function readFileEntry(abs: string, rel: string, store: BlockStore, opts: PersonaScanOptions, totals: { newChunks: number; bytesRead: number }): Promise<PersonaEntry> {
  for (let attempt = 1; ; attempt++) {
    // O_NOFOLLOW and O_NONBLOCK: if the name became a symlink or a FIFO since lstat, fail or return at once.
    const fd = ioSync('opening', rel, () => openSync(abs, FS.O_RDONLY | FS.O_NOFOLLOW | FS.O_NONBLOCK));
    try {
      const before = ioSync('reading', rel, () => fstatSync(fd));
      if (!before.isFile()) throw new CarryonError('BAD_REQUEST', `${JSON.stringify(rel)} stopped being a regular file while scanned`, { path: rel });
      // A file of one chunk hashes to its chunk's id: hashed once, not twice (most profile files).
      const whole = before.size > 0 && before.size <= PERSONA_CHUNK_BYTES ? null : createHash('sha256');
      const chunks: BlockId[] = [];
      let off = 0;
      let short = false;
      while (off < before.size && !short) {
        // A fresh buffer per chunk: the store may remember a plaintext buffer it has verified.
        const chunk = Buffer.allocUnsafe(Math.min(PERSONA_CHUNK_BYTES, before.size - off));
        let n = 0;
        while (n < chunk.length) {
          const bytesRead = ioSync('reading', rel, () => readSync(fd, chunk, n, chunk.length - n, off + n));
          if (bytesRead === 0) break;
          n += bytesRead;
        }
        totals.bytesRead += n;
        if (n < chunk.length) {
          short = true;
          break;
        }
        whole?.update(chunk);
        const id = blockId(chunk);
        if (!(await store.has(id))) {
          await putBlock(store, chunk, opts.level);
          totals.newChunks++;
          opts.onNewChunk?.({ path: rel, id, size: n });
        }
        chunks.push(id);
        off += n;
        await yieldNow();
      }
      const after = ioSync('reading', rel, () => fstatSync(fd));
      if (!short && after.size === before.size && after.mtimeMs === before.mtimeMs) {
        return { path: rel, kind: 'file', mode: before.mode & 0o777, mtimeMs: msOf(before.mtimeMs), size: before.size, hash: whole ? whole.digest('hex') : chunks[0]!, chunks };
      }
    } finally {
      try {
        closeSync(fd);
      } catch {
        // read-only: nothing to lose
      }
    }
    await yieldNow();
    if (attempt >= 3) throw new CarryonError('IO_ERROR', `${JSON.stringify(rel)} kept changing while carryon read it; close the program writing it and try again`, { path: rel });
  }
}

// ------------------------------------------------------------------------------------- materialize

interface DiskEntry {
  kind: PersonaEntryKind | 'other';
  size: number;
  mtimeMs: number;
  mode: number;
  target?: string;
}

/** What the snapshot wants at a path; entry null for a folder implied by a deeper path but not listed. */
interface Wanted {
  kind: PersonaEntryKind;
  entry: PersonaEntry | null;
}

function refuseSnapshot(e: { path: string }, why: string, code: ErrorCode = 'BAD_REQUEST'): CarryonError {
  return new CarryonError(code, `persona entry ${JSON.stringify(e.path)} is invalid: ${why}`, { path: e.path });
}

/** Check the entries again (defense in depth) and add the folders they imply. */
function planWanted(files: readonly PersonaEntry[]): Map<string, Wanted> {
  const want = new Map<string, Wanted>();
  for (const e of files) {
    if (checkPersonaPath(e.path) !== e.path) throw refuseSnapshot(e, 'the path is not in Unicode NFC');
    if (want.has(e.path)) throw refuseSnapshot(e, 'listed twice');
    if (!Number.isSafeInteger(e.mode) || e.mode < 0 || !Number.isSafeInteger(e.mtimeMs) || e.mtimeMs < 0) throw refuseSnapshot(e, 'mode or mtime is not a non-negative integer');
    if (e.kind === 'file') {
      if (!isBlockId(e.hash) || !e.chunks.every(isBlockId)) throw refuseSnapshot(e, 'hash or chunks are not block ids');
      if (!Number.isSafeInteger(e.size) || e.size < 0 || e.chunks.length !== Math.ceil(e.size / PERSONA_CHUNK_BYTES)) throw refuseSnapshot(e, `${e.chunks.length} chunks for ${e.size} bytes`);
    } else if (e.kind === 'symlink') {
      if (typeof e.target !== 'string' || checkSymlinkTarget(e.path, e.target) !== e.target) throw refuseSnapshot(e, 'the symlink target is missing or not in Unicode NFC');
    } else if (e.kind !== 'dir') {
      throw refuseSnapshot(e, 'unknown kind');
    }
    want.set(e.path, { kind: e.kind, entry: e });
  }
  const clash = findCaseCollisions([...want.keys()])[0];
  if (clash) throw refuseSnapshot({ path: clash[1] }, `it and ${JSON.stringify(clash[0])} would be one file on a case-insensitive file system`);
  for (const e of files) {
    for (let dir = parentOf(e.path); dir !== ''; dir = parentOf(dir)) {
      const w = want.get(dir);
      if (!w) want.set(dir, { kind: 'dir', entry: null });
      else if (w.kind !== 'dir') throw refuseSnapshot(e, `it lies under ${JSON.stringify(dir)}, which is a ${w.kind}`);
      else break;
    }
  }
  return want;
}

/** Every entry under root, by raw path, without following symlinks. */
async function walkDisk(root: string): Promise<Map<string, DiskEntry>> {
  const out = new Map<string, DiskEntry>();
  const walk = async (rawDir: string): Promise<void> => {
    await yieldNow();
    for (const name of listNames(rawDir ? path.join(root, rawDir) : root, rawDir, 'LOCAL_PATH_CONFLICT')) {
      const raw = rawDir ? `${rawDir}/${name}` : name;
      const abs = path.join(root, raw);
      const st = ioSync('reading', raw, () => lstatSync(abs));
      const d: DiskEntry = { kind: kindOf(st), size: st.size, mtimeMs: msOf(st.mtimeMs), mode: st.mode & 0o777 };
      if (d.kind === 'symlink') {
        const t = ioSync('reading symlink', raw, () => readlinkSync(abs, { encoding: 'buffer' }));
        // A target that is not UTF-8 gets a value no snapshot target can equal (they hold no NUL).
        try {
          d.target = UTF8.decode(t);
        } catch {
          d.target = '\0not utf-8';
        }
      }
      out.set(raw, d);
      if (d.kind === 'dir') await walk(raw);
    }
  };
  await walk('');
  return out;
}

function conflict(rel: string, why: string): CarryonError {
  return new CarryonError('LOCAL_PATH_CONFLICT', `${JSON.stringify(rel)} in the persona folder ${why}`, { path: rel });
}

/**
 * lstat every component of `relDir` under root: each must be a real folder, never a symlink, so that
 * nothing written below it can land outside root. Folders lacking owner write or search permission
 * are opened up (owner rwx) for the writes to come; `loosened` remembers their mode.
 */
function checkChain(root: string, relDir: string, loosened: Map<string, number>): string {
  let abs = root;
  let rel = '';
  for (const part of relDir === '' ? [] : relDir.split('/')) {
    rel = rel ? `${rel}/${part}` : part;
    abs = path.join(abs, part);
    const st = ioSync('reading', rel, () => lstatSync(abs));
    if (st.isSymbolicLink()) throw conflict(rel, 'is a symlink where a folder is needed; carryon never writes through a symlink');
    if (!st.isDirectory()) throw conflict(rel, 'is not a folder, but one is needed there');
  }
  const st = ioSync('reading', relDir || '.', () => lstatSync(abs));
  if ((st.mode & 0o300) !== 0o300 && !loosened.has(abs)) {
    loosened.set(abs, st.mode & 0o777);
    ioSync('changing mode of', relDir || '.', () => chmodSync(abs, (st.mode & 0o777) | 0o700));
  }
  return abs;
}

/**
 * Make the folder `root` hold exactly `files`: create folders, write files from their chunks (verified
 * reads; each file written to a temporary name beside it, synced, then renamed over, with its mode and
 * mtime), create symlinks, and remove what the snapshot does not list. Everything is checked before
 * anything changes: the entries again (paths, symlink targets, case collisions, nothing under a file or
 * symlink: BAD_REQUEST), every chunk present in the store (BLOCK_NOT_FOUND), and the folder itself
 * (LOCAL_PATH_CONFLICT: a symlink where the snapshot needs a folder, a name that is not UTF-8, or, with
 * `previous`, local changes that would be overwritten). Nothing is ever written outside root: before
 * each write or removal every folder on the way is lstat-ed and must be a real folder.
 * A content mismatch between chunks and the entry's size or hash is MANIFEST_INVALID.
 */
export async function materializePersonaTree(
  root: string,
  files: readonly PersonaEntry[],
  store: BlockStore,
  opts: PersonaMaterializeOptions = {},
): Promise<PersonaMaterializeResult> {
  const want = planWanted(files);
  const rootStat = await fs.stat(root).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw ioError('reading', root, err);
    return null;
  });
  if (rootStat && !rootStat.isDirectory()) throw new CarryonError('INVALID_ARGUMENT', `${root} is not a folder`, { root });
  if (!rootStat) await io('creating', root, () => fs.mkdir(root, { recursive: true }));
  const disk = await walkDisk(root);
  const previous = opts.previous ? new Map(opts.previous.map((e) => [e.path, e])) : null;

  /** With `previous`: does the disk entry still hold what carryon last saw there? */
  const vouched = (rel: string, d: DiskEntry): boolean => {
    if (!previous) return true;
    if (d.kind === 'dir') return true; // its contents are checked one by one
    const p = previous.get(rel);
    if (!p || p.kind !== d.kind) return false;
    if (d.kind === 'symlink') return p.target === d.target;
    return p.size === d.size && p.mtimeMs === d.mtimeMs;
  };

  const remove: string[] = [];
  const unchanged = new Set<string>();
  const conflicts: CarryonError[] = [];
  for (const [rel, d] of disk) {
    const w = want.get(rel);
    if (!w) {
      if (!TEMP_NAME.test(path.posix.basename(rel)) && !vouched(rel, d)) conflicts.push(conflict(rel, 'changed or appeared since the last scan and is not in the snapshot; scan and merge again'));
      remove.push(rel);
    } else if (w.kind !== d.kind) {
      if (d.kind === 'symlink' && w.kind === 'dir' && !(previous && vouched(rel, d))) {
        conflicts.push(conflict(rel, 'is a symlink where the snapshot has a folder; carryon never writes through a symlink (remove it, or move its contents into a real folder)'));
      } else if (!vouched(rel, d)) {
        conflicts.push(conflict(rel, `is a ${d.kind} changed since the last scan, and the snapshot has a ${w.kind} there; scan and merge again`));
      }
      remove.push(rel);
    } else if (d.kind === 'file' && w.entry) {
      const p = previous?.get(rel);
      if (p && p.kind === 'file' && p.hash === w.entry.hash && p.size === d.size && p.mtimeMs === d.mtimeMs) unchanged.add(rel);
      else if (!vouched(rel, d)) conflicts.push(conflict(rel, 'changed since the last scan, and the snapshot has other content; scan and merge again'));
    } else if (d.kind === 'symlink' && w.entry) {
      if (d.target === w.entry.target) unchanged.add(rel);
      else if (!vouched(rel, d)) conflicts.push(conflict(rel, 'is a symlink changed since the last scan; scan and merge again'));
    }
  }
  if (conflicts.length > 0) {
    const first = conflicts[0]!;
    if (conflicts.length === 1) throw first;
    throw new CarryonError('LOCAL_PATH_CONFLICT', `${first.message} (and ${conflicts.length - 1} more)`, { ...first.data, more: conflicts.slice(1, 20).map((c) => c.data.path) });
  }

  const toWrite = files.filter((e) => e.kind === 'file' && !unchanged.has(e.path));
  const needed = new Set(toWrite.flatMap((e) => e.chunks));
  for (const id of needed) {
    if (!(await store.has(id))) {
      const owner = toWrite.find((e) => e.chunks.includes(id))!;
      throw new CarryonError('BLOCK_NOT_FOUND', `chunk ${id.slice(0, 12)}… of ${JSON.stringify(owner.path)} is not in the store`, { id, path: owner.path });
    }
  }

  const loosened = new Map<string, number>();
  const touchedDirs = new Set<string>();
  let written = 0;
  let removed = 0;

  // Children sort after their folder, so descending order empties a folder before removing it.
  remove.sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
  for (const rel of remove) {
    await yieldNow();
    const absDir = checkChain(root, parentOf(rel), loosened);
    const abs = path.join(absDir, path.posix.basename(rel));
    const st = ioSync('reading', rel, () => lstatSync(abs));
    if (st.isDirectory()) ioSync('removing folder', rel, () => rmdirSync(abs));
    else ioSync('removing', rel, () => unlinkSync(abs));
    touchedDirs.add(absDir);
    removed++;
  }

  const ordered = [...want.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const removedSet = new Set(remove);
  for (const [rel, w] of ordered) {
    await yieldNow();
    const onDisk = disk.has(rel) && !removedSet.has(rel);
    const absDir = checkChain(root, parentOf(rel), loosened);
    const abs = path.join(absDir, path.posix.basename(rel));
    if (w.kind === 'dir') {
      if (!onDisk) {
        ioSync('creating folder', rel, () => mkdirSync(abs, 0o700));
        touchedDirs.add(absDir);
        written++;
      }
    } else if (w.kind === 'file') {
      const e = w.entry!;
      if (unchanged.has(rel)) {
        setFileMeta(abs, rel, e, disk.get(rel)!);
      } else {
        // A file that replaces one is synced before its rename (the old bytes must survive a crash);
        // new files are made durable all at once by the file-system sync at the end.
        await writeFileEntry(absDir, abs, e, store, disk.has(rel), opts.plainOf);
        touchedDirs.add(absDir);
        written++;
      }
    } else {
      const e = w.entry!;
      if (unchanged.has(rel)) {
        if (disk.get(rel)!.mtimeMs !== e.mtimeMs) ioSync('setting mtime of', rel, () => lutimesSync(abs, e.mtimeMs / 1000, e.mtimeMs / 1000));
      } else {
        writeSymlink(absDir, abs, e);
        touchedDirs.add(absDir);
        written++;
      }
    }
  }

  // Folder modes and mtimes last and deepest first: writing into a folder changes its mtime.
  for (const [rel, w] of ordered.reverse()) {
    if (w.kind !== 'dir') continue;
    await yieldNow();
    const absDir = checkChain(root, parentOf(rel), loosened);
    const abs = path.join(absDir, path.posix.basename(rel));
    const st = ioSync('reading', rel, () => lstatSync(abs));
    if (!st.isDirectory() || st.isSymbolicLink()) throw conflict(rel, 'stopped being a folder while carryon wrote the persona');
    if (w.entry) {
      ioSync('changing mode of', rel, () => chmodSync(abs, w.entry!.mode & 0o777));
      ioSync('setting mtime of', rel, () => utimesSync(abs, w.entry!.mtimeMs / 1000, w.entry!.mtimeMs / 1000));
    } else if (loosened.has(abs)) {
      ioSync('changing mode of', rel, () => chmodSync(abs, loosened.get(abs)!));
    }
    loosened.delete(abs);
  }
  const rootMode = loosened.get(root);
  if (rootMode !== undefined) ioSync('changing mode of', '.', () => chmodSync(root, rootMode));

  // New files, renames and removals become durable together: one sync of the file system instead of
  // an fsync per file and folder (a 20k-file profile spent minutes in those).
  if (touchedDirs.size > 0 || removed > 0) await io('syncing', '.', () => syncFileSystem(root));
  return { written, removed };
}

function setFileMeta(abs: string, rel: string, e: PersonaEntry, d: DiskEntry): void {
  if (d.mode === (e.mode & 0o777) && d.mtimeMs === e.mtimeMs) return;
  const st = ioSync('reading', rel, () => lstatSync(abs));
  if (!st.isFile()) throw conflict(rel, 'stopped being a file while carryon wrote the persona');
  ioSync('changing mode of', rel, () => chmodSync(abs, e.mode & 0o777));
  ioSync('setting mtime of', rel, () => utimesSync(abs, e.mtimeMs / 1000, e.mtimeMs / 1000));
}

/** Remove a temporary file on a failure path: the first error is the one to report. */
function removeQuietly(file: string): void {
  try {
    rmSync(file, { force: true });
  } catch {
    // a leftover temp name is skipped by scans and removed by the next materialize
  }
}

function tempName(absDir: string): string {
  return path.join(absDir, `.carryon-tmp-${randomBytes(8).toString('hex')}`);
}

/** Write a file's chunks to a temporary name beside it, check it, set mode and mtime, sync if asked, rename over. */
async function writeFileEntry(absDir: string, abs: string, e: PersonaEntry, store: BlockStore, sync: boolean, plainOf?: (id: BlockId) => Promise<Buffer | undefined>): Promise<void> {
  const rel = e.path;
  const tmp = tempName(absDir);
  const fd = ioSync('creating', rel, () => openSync(tmp, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600));
  let open = true;
  let renamed = false;
  try {
    // Each byte is hashed once: a one-chunk file's hash is its chunk's id (checked by getBlock); a longer
    // file's chunks are decoded unchecked and the whole-file hash vouches for all of them (on a mismatch
    // they are checked one by one, so a damaged chunk is still named). Hashing every chunk and then the
    // file cost a check-out of a 1 GiB profile two SHA-256 passes over it.
    const single = e.chunks.length === 1;
    if (single && e.hash !== e.chunks[0]) throw new CarryonError('MANIFEST_INVALID', `persona entry ${JSON.stringify(rel)}: its chunks do not add up to its content hash`, { path: rel });
    const whole = single ? null : createHash('sha256');
    // One decode target per file: each chunk is written out before the next is decoded into it.
    const scratch = single ? undefined : Buffer.allocUnsafe(PERSONA_CHUNK_BYTES);
    let off = 0;
    for (const id of e.chunks) {
      const plain = (await plainOf?.(id)) ?? (single ? await getBlock(store, id, PERSONA_CHUNK_BYTES) : decodeBlock(await store.getEncoded(id), PERSONA_CHUNK_BYTES, scratch));
      const expected = Math.min(PERSONA_CHUNK_BYTES, e.size - off);
      if (plain.length !== expected) {
        throw new CarryonError('MANIFEST_INVALID', `persona entry ${JSON.stringify(rel)}: chunk ${id.slice(0, 12)}… holds ${plain.length} bytes where ${expected} belong`, { path: rel, id });
      }
      whole?.update(plain);
      for (let done = 0; done < plain.length; ) {
        const bytesWritten = ioSync('writing', rel, () => writeSync(fd, plain, done, plain.length - done, off + done));
        done += bytesWritten;
      }
      off += plain.length;
    }
    if (whole && whole.digest('hex') !== e.hash) {
      for (const id of e.chunks) await getBlock(store, id, PERSONA_CHUNK_BYTES); // BLOCK_CORRUPT naming a damaged chunk
      throw new CarryonError('MANIFEST_INVALID', `persona entry ${JSON.stringify(rel)}: its chunks do not add up to its content hash`, { path: rel });
    }
    ioSync('changing mode of', rel, () => fchmodSync(fd, e.mode & 0o777));
    ioSync('setting mtime of', rel, () => futimesSync(fd, e.mtimeMs / 1000, e.mtimeMs / 1000));
    // The one call left asynchronous: an fsync can take long, and it is the only slow one here.
    if (sync) await io('syncing', rel, () => new Promise<void>((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve()))));
    open = false;
    ioSync('closing', rel, () => closeSync(fd));
    ioSync('renaming into place', rel, () => renameSync(tmp, abs));
    renamed = true;
  } finally {
    if (open) {
      try {
        closeSync(fd);
      } catch {
        // already failing
      }
    }
    if (!renamed) removeQuietly(tmp);
  }
}

/** Create the symlink under a temporary name and rename it over whatever is there. */
function writeSymlink(absDir: string, abs: string, e: PersonaEntry): void {
  const tmp = tempName(absDir);
  ioSync('creating symlink', e.path, () => symlinkSync(e.target!, tmp));
  try {
    ioSync('setting mtime of', e.path, () => lutimesSync(tmp, e.mtimeMs / 1000, e.mtimeMs / 1000));
    ioSync('renaming into place', e.path, () => renameSync(tmp, abs));
  } catch (err) {
    removeQuietly(tmp);
    throw err;
  }
}
