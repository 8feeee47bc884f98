// The three-way merge of persona snapshots done at check-in: base (the version checked out), ours (the
// laptop's snapshot) and theirs (the server's current version). Pure: no I/O, no clock, no randomness;
// the same inputs give the same merged snapshot and the same report, byte for byte.
//
// Files merge by path, compared case-insensitively as Windows compares them; a change is a change of
// kind, content hash, symlink target or mode (a new mtime alone is not). Registry values merge by
// (key path, value name), both compared as Windows compares them. Edits to different things all survive;
// an edit beats a deletion; two different edits of the same thing are settled by a policy, and every
// such conflict is listed in the MergeReport.
import { CarryonError } from '../errors/index.js';
import type { PersonaEntry, PersonaSnapshot } from './model.js';
import { PERSONA_MAX_NAME_BYTES, PERSONA_MAX_PATH_BYTES, personaPathKey } from './paths.js';
import { mergeRegistryText } from './registry-merge.js';
import { canonicalForm } from './registry-text.js';

/** Same file changed differently on both sides: keep both (the laptop's copy renamed), the newer, the server's, or the laptop's. */
export type FileMergePolicy = 'keep-both' | 'newest' | 'server' | 'laptop';
/** Same registry value changed differently on both sides: the newer write (by commit time), the server's, or the laptop's. */
export type RegistryMergePolicy = 'newest' | 'server' | 'laptop';

export const FILE_MERGE_POLICIES: readonly FileMergePolicy[] = ['keep-both', 'newest', 'server', 'laptop'];
export const REGISTRY_MERGE_POLICIES: readonly RegistryMergePolicy[] = ['newest', 'server', 'laptop'];

export interface MergeOptions {
  filePolicy: FileMergePolicy;
  registryPolicy: RegistryMergePolicy;
  /** The laptop's device name; it goes into the names of saved conflict copies. */
  device: string;
  /** When the laptop's edits were made / checked in, ms since the epoch. */
  oursTime: number;
  /** When the server's current version was committed, ms since the epoch. */
  theirsTime: number;
  /**
   * Per registry value (registry-text.ts valueKey): when each side changed it, for 'newest'. A value
   * with no time here falls back to oursTime / theirsTime.
   */
  registryTimes?: { ours?: ReadonlyMap<string, number>; theirs?: ReadonlyMap<string, number> };
}

export type MergeConflictReason = 'both-modified' | 'modify-delete' | 'both-added' | 'type-clash' | 'key-deleted-value-modified';

export interface MergeConflict {
  kind: 'file' | 'registry';
  /**
   * Files: the path in conflict. Registry: key path + '\' + value name ('@' for the default value), or a
   * bare key path for a key the other side added inside a key one side deleted.
   */
  path: string;
  reason: MergeConflictReason;
  /** What was kept, in words for the user. */
  resolution: string;
  /** Whose version is at `path` in the merged snapshot; 'both': the other side's is saved at `keptCopy`. */
  kept: 'ours' | 'theirs' | 'both';
  /** Where the losing side's version was saved, when it was (keep-both, or a folder moved aside). */
  keptCopy?: string;
}

export interface MergeStats {
  /** Merged file entries carrying a change made only on the laptop (conflict copies included). */
  filesFromOurs: number;
  /** Merged file entries carrying a change made only on the server. */
  filesFromTheirs: number;
  /** File entries both sides changed the same way. */
  filesSameOnBoth: number;
  /** Base entries deleted (by either side, or both). */
  filesDeleted: number;
  filesUnchanged: number;
  fileConflicts: number;
  valuesFromOurs: number;
  valuesFromTheirs: number;
  valuesSameOnBoth: number;
  valuesDeleted: number;
  valuesUnchanged: number;
  registryConflicts: number;
}

export interface MergeReport {
  /** Files first, then registry; each sorted by path (case-insensitively, then exactly). */
  conflicts: MergeConflict[];
  stats: MergeStats;
}

export interface MergeResult {
  merged: PersonaSnapshot;
  report: MergeReport;
}

type Side = 'ours' | 'theirs';

const LAPTOP = 'laptop';
const SERVER = 'server';
const sideName = (s: Side): string => (s === 'ours' ? LAPTOP : SERVER);
const otherSide = (s: Side): Side => (s === 'ours' ? 'theirs' : 'ours');

function checkOptions(opts: MergeOptions): void {
  const bad = (message: string): never => {
    throw new CarryonError('INVALID_ARGUMENT', message);
  };
  if (!FILE_MERGE_POLICIES.includes(opts.filePolicy)) bad(`unknown file merge policy '${String(opts.filePolicy)}'; expected one of ${FILE_MERGE_POLICIES.join(', ')}`);
  if (!REGISTRY_MERGE_POLICIES.includes(opts.registryPolicy)) bad(`unknown registry merge policy '${String(opts.registryPolicy)}'; expected one of ${REGISTRY_MERGE_POLICIES.join(', ')}`);
  if (typeof opts.device !== 'string') bad('the device name must be a string');
  for (const k of ['oursTime', 'theirsTime'] as const) {
    const t = opts[k];
    if (!Number.isSafeInteger(t) || t < 0 || t > 8.64e15) bad(`${k} must be a time in integer milliseconds since the epoch, not ${String(t)}`);
  }
}

/** Code-unit order, the order snapshots are sorted in. */
function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------------
// Conflict copy names

/** Characters Windows refuses in a file name (and '/'), and control characters. */
const UNSAFE_NAME_CHARS = /[<>:"/\\|?*\x00-\x1f\x7f]/g;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const MAX_DEVICE_CHARS = 40;
const MAX_DEVICE_BYTES = 64;
/** A longer dot-suffix is not taken for an extension. */
const MAX_EXTENSION_CHARS = 16;

/** The device name as it appears in a conflict copy's name: safe on Windows and Unix, no spaces, never empty. */
export function conflictDeviceLabel(device: string): string {
  const s = device
    .replace(LONE_SURROGATE, '_')
    .normalize('NFC')
    .replace(UNSAFE_NAME_CHARS, '_')
    .replace(/\s+/g, '-');
  let chars = Array.from(s).slice(0, MAX_DEVICE_CHARS);
  while (Buffer.byteLength(chars.join('')) > MAX_DEVICE_BYTES) chars = chars.slice(0, -1);
  const clipped = chars.join('').replace(/[.\-]+$/, '');
  return clipped === '' ? 'laptop' : clipped;
}

/** `YYYY-MM-DD HHMMSS`, UTC. */
export function conflictTimeLabel(ms: number): string {
  const iso = new Date(ms).toISOString(); // 2024-05-01T13:45:01.123Z
  return `${iso.slice(0, 10)} ${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}`;
}

/**
 * A file name's stem and extension as a user sees them: the extension is the last dot-suffix, or
 * '.tar.<x>' for a compressed tar; a leading dot (`.bashrc`) starts no extension, and a suffix with a
 * space in it, or longer than 16 characters, is not one. Folders have no extension.
 */
export function splitExtension(name: string, isDir = false): { stem: string; ext: string } {
  const dot = name.lastIndexOf('.');
  if (isDir || dot <= 0 || dot === name.length - 1 || name.length - dot > MAX_EXTENSION_CHARS || /\s/.test(name.slice(dot))) return { stem: name, ext: '' };
  const stem = name.slice(0, dot);
  if (stem.length > 4 && stem.slice(-4).toLowerCase() === '.tar') return { stem: stem.slice(0, -4), ext: name.slice(dot - 4) };
  return { stem, ext: name.slice(dot) };
}

/**
 * The path a conflict copy of `path` is saved under, in the same folder:
 * `<stem> (conflict <device> <YYYY-MM-DD HHMMSS>)<ext>`, with ` <n>` before the ')' for n >= 2.
 * The stem is shortened (never the extension) so that the name fits in PERSONA_MAX_NAME_BYTES and the
 * path in PERSONA_MAX_PATH_BYTES; the result passes checkPersonaPath when `path` does.
 */
export function conflictCopyPath(path: string, device: string, timeMs: number, n = 1, isDir = false): string {
  const slash = path.lastIndexOf('/');
  const dir = slash < 0 ? '' : path.slice(0, slash + 1);
  const { stem, ext } = splitExtension(path.slice(slash + 1), isDir);
  const tag = ` (conflict ${conflictDeviceLabel(device)} ${conflictTimeLabel(timeMs)}${n > 1 ? ` ${n}` : ''})`;
  let chars = Array.from(stem);
  const name = (): string => (chars.join('') + tag + ext).normalize('NFC');
  const fits = (): boolean => Buffer.byteLength(name()) <= PERSONA_MAX_NAME_BYTES && Buffer.byteLength(dir + name()) <= PERSONA_MAX_PATH_BYTES;
  while (!fits() && chars.length > 1) chars = chars.slice(0, -1);
  return dir + name();
}

// ---------------------------------------------------------------------------------------------------
// Files

type Origin = Side | 'base';

interface Slot {
  entry: PersonaEntry;
  /** Which side's version this is ('base' when both sides left it as it was). */
  origin: Origin;
}

const keyOf = personaPathKey;
const depthOf = (path: string): number => path.split('/').length;

function sameChunks(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((c, i) => c === b[i]);
}

/** Same content: kind, hash, symlink target and mode. Missing equals missing. */
function sameContent(a: PersonaEntry | undefined, b: PersonaEntry | undefined): boolean {
  if (!a || !b) return a === b;
  return a.kind === b.kind && a.hash === b.hash && (a.target ?? null) === (b.target ?? null) && a.mode === b.mode;
}

/** Same in every field, spelling and mtime included. */
function identical(a: PersonaEntry | undefined, b: PersonaEntry | undefined): boolean {
  if (!a || !b) return a === b;
  return sameContent(a, b) && a.path === b.path && a.mtimeMs === b.mtimeMs && a.size === b.size && sameChunks(a.chunks, b.chunks);
}

function describeKind(e: PersonaEntry): string {
  return e.kind === 'dir' ? 'folder' : e.kind === 'symlink' ? 'link' : 'file';
}

class FileMerge {
  private readonly base: Map<string, PersonaEntry>;
  private readonly ours: Map<string, PersonaEntry>;
  private readonly theirs: Map<string, PersonaEntry>;
  readonly merged = new Map<string, Slot>();
  readonly conflicts = new Map<string, MergeConflict>();
  /** Lower-cased names in use anywhere (all three sides and every copy made), so a new name never collides. */
  private readonly taken = new Set<string>();
  /** Folders brought back because the other side put something inside them. */
  private readonly restored = new Set<string>();
  /** Folders of ours renamed by keep-both: their merged contents move with them once every path is resolved. */
  private readonly pendingMoves: Array<{ key: string; to: string }> = [];
  readonly stats = { filesFromOurs: 0, filesFromTheirs: 0, filesSameOnBoth: 0, filesDeleted: 0, filesUnchanged: 0 };

  constructor(
    base: PersonaSnapshot,
    ours: PersonaSnapshot,
    theirs: PersonaSnapshot,
    private readonly opts: MergeOptions,
  ) {
    const index = (s: PersonaSnapshot): Map<string, PersonaEntry> => {
      const m = new Map<string, PersonaEntry>();
      for (const e of s.files) {
        const k = keyOf(e.path);
        if (m.has(k)) throw new CarryonError('INVALID_ARGUMENT', `persona snapshot has two entries named ${e.path} (compared case-insensitively)`, { path: e.path });
        m.set(k, e);
        this.taken.add(k);
      }
      return m;
    };
    this.base = index(base);
    this.ours = index(ours);
    this.theirs = index(theirs);
  }

  private side(s: Origin): Map<string, PersonaEntry> {
    return s === 'ours' ? this.ours : s === 'theirs' ? this.theirs : this.base;
  }

  run(): PersonaEntry[] {
    const keys = [...new Set([...this.base.keys(), ...this.ours.keys(), ...this.theirs.keys()])].sort(cmp);
    for (const k of keys) this.mergePath(k);
    for (const m of this.pendingMoves) this.moveContents(m.key, m.to);
    this.makeConsistent();
    return [...this.merged.values()].map((s) => s.entry).sort((a, b) => cmp(a.path, b.path));
  }

  private put(entry: PersonaEntry | undefined, origin: Origin): void {
    if (entry) this.merged.set(keyOf(entry.path), { entry, origin });
  }

  private report(key: string, c: MergeConflict): void {
    this.conflicts.set(key, c);
  }

  /** A fresh name for a copy of `path` made for `side`, unused case-insensitively. */
  private copyName(path: string, side: Side, isDir: boolean): string {
    const device = side === 'ours' ? this.opts.device : SERVER;
    const time = side === 'ours' ? this.opts.oursTime : this.opts.theirsTime;
    for (let n = 1; ; n++) {
      const p = conflictCopyPath(path, device, time, n, isDir);
      if (!this.taken.has(keyOf(p))) {
        this.taken.add(keyOf(p));
        return p;
      }
    }
  }

  private mergePath(k: string): void {
    const b = this.base.get(k);
    const o = this.ours.get(k);
    const t = this.theirs.get(k);
    const s = this.stats;
    // One side left the entry exactly as it was: take the other side's, whatever it is.
    if (identical(o, b) || identical(t, b)) {
      const [winner, origin]: [PersonaEntry | undefined, Side] = identical(o, b) ? [t, 'theirs'] : [o, 'ours'];
      this.put(winner, origin);
      if (!winner) s.filesDeleted += b ? 1 : 0;
      else if (sameContent(winner, b)) s.filesUnchanged++;
      else if (origin === 'ours') s.filesFromOurs++;
      else s.filesFromTheirs++;
      return;
    }
    // Both touched it and ended with the same content: keep the newer metadata (tie: the server's).
    if (sameContent(o, t)) {
      if (!o || !t) {
        s.filesDeleted++;
        return;
      }
      this.put(o.mtimeMs > t.mtimeMs ? o : t, o.mtimeMs > t.mtimeMs ? 'ours' : 'theirs');
      if (sameContent(t, b)) s.filesUnchanged++;
      else s.filesSameOnBoth++;
      return;
    }
    // Only one side changed the content (the other touched mtime or the name's case): take that side,
    // under the other side's new spelling when only that side renamed it, so an edit and a case-only
    // rename (Notes.txt to notes.txt) both survive.
    if (sameContent(o, b) || sameContent(t, b)) {
      const [winner, origin]: [PersonaEntry | undefined, Side] = sameContent(o, b) ? [t, 'theirs'] : [o, 'ours'];
      const renamer = origin === 'ours' ? t : o;
      const respelled = winner && renamer && b && winner.path === b.path && renamer.path !== b.path;
      this.put(respelled ? { ...winner, path: renamer.path } : winner, origin);
      if (!winner) s.filesDeleted++;
      else if (origin === 'ours') s.filesFromOurs++;
      else s.filesFromTheirs++;
      return;
    }
    this.conflict(k, b, o, t);
  }

  private conflict(k: string, b: PersonaEntry | undefined, o: PersonaEntry | undefined, t: PersonaEntry | undefined): void {
    const s = this.stats;
    if (!o || !t) {
      // Deleted on one side, changed on the other: the change wins.
      const [kept, side] = o ? ([o, 'ours'] as const) : ([t!, 'theirs'] as const);
      this.put(kept, side);
      if (side === 'ours') s.filesFromOurs++;
      else s.filesFromTheirs++;
      this.report(k, {
        kind: 'file', path: kept.path, reason: 'modify-delete', kept: side,
        resolution: `kept the ${sideName(side)}'s changed ${describeKind(kept)}; the ${sideName(otherSide(side))} had deleted it`,
      });
      return;
    }
    const reason: MergeConflictReason = o.kind !== t.kind ? 'type-clash' : b ? 'both-modified' : 'both-added';
    const policy = this.opts.filePolicy;
    const byPolicy: Side = policy === 'laptop' ? 'ours' : policy === 'server' ? 'theirs' : policy === 'newest' && o.mtimeMs > t.mtimeMs ? 'ours' : 'theirs';
    const why = policy === 'newest' ? ' (newer)' : policy === 'keep-both' ? '' : ' (policy)';
    if (o.kind === 'dir' && t.kind === 'dir') {
      // Two folders differ only in their mode: their contents merge path by path; keep one mode.
      const side = policy === 'keep-both' ? 'theirs' : byPolicy;
      const kept = side === 'ours' ? o : t;
      this.put(kept, side);
      if (side === 'ours') s.filesFromOurs++;
      else s.filesFromTheirs++;
      this.report(k, {
        kind: 'file', path: t.path, reason, kept: side,
        resolution: `kept the ${sideName(side)}'s folder permissions (${kept.mode.toString(8)})${why}; the ${sideName(otherSide(side))}'s (${(side === 'ours' ? t : o).mode.toString(8)}) dropped; the folders' contents were merged`,
      });
      return;
    }
    if (policy === 'keep-both') {
      // The server's version stays at the path; the laptop's is saved beside it under a conflict name.
      this.put(t, 'theirs');
      s.filesFromTheirs++;
      const copy = this.copyName(o.path, 'ours', o.kind === 'dir');
      if (o.kind === 'dir') this.pendingMoves.push({ key: k, to: copy });
      this.put({ ...o, path: copy }, 'ours');
      s.filesFromOurs++;
      this.report(k, {
        kind: 'file', path: t.path, reason, kept: 'both', keptCopy: copy,
        resolution: `kept the server's ${describeKind(t)}; the laptop's ${describeKind(o)} saved as ${copy}`,
      });
      return;
    }
    const kept = byPolicy === 'ours' ? o : t;
    const lost = byPolicy === 'ours' ? t : o;
    this.put(kept, byPolicy);
    if (byPolicy === 'ours') s.filesFromOurs++;
    else s.filesFromTheirs++;
    // A losing folder whose contents survive elsewhere in the merge is moved aside by makeConsistent().
    this.report(k, {
      kind: 'file', path: kept.path, reason, kept: byPolicy,
      resolution: `kept the ${sideName(byPolicy)}'s ${describeKind(kept)}${why}; the ${sideName(otherSide(byPolicy))}'s ${describeKind(lost)} dropped`,
    });
  }

  /** Move every merged entry inside folder `key` to the same place inside folder `to`. */
  private moveContents(key: string, to: string): number {
    const prefix = `${key}/`;
    const depth = depthOf(to);
    let moved = 0;
    for (const [k, slot] of [...this.merged.entries()].sort((x, y) => cmp(x[0], y[0]))) {
      if (!k.startsWith(prefix)) continue;
      this.merged.delete(k);
      const rest = slot.entry.path.split('/').slice(depth);
      const path = [to, ...rest].join('/');
      this.taken.add(keyOf(path));
      this.merged.set(keyOf(path), { entry: { ...slot.entry, path }, origin: slot.origin });
      const c = this.conflicts.get(k);
      if (c) {
        this.conflicts.delete(k);
        this.conflicts.set(keyOf(path), { ...c, path, resolution: `${c.resolution}; moved with its folder to ${path}` });
      }
      moved++;
    }
    return moved;
  }

  /** A folder entry for `key`, from `prefer` if it has one there, else any side that has; else a new one. */
  private folderFor(key: string, path: string, prefer: Origin, like: PersonaEntry): Slot {
    for (const side of [prefer, 'theirs', 'ours', 'base'] as const) {
      const e = this.side(side).get(key);
      if (e?.kind === 'dir') return { entry: { ...e, path }, origin: side };
    }
    return { entry: { path, kind: 'dir', mode: 0o755, mtimeMs: like.mtimeMs, size: 0, hash: null, chunks: [] }, origin: prefer };
  }

  /**
   * Every entry's parent must be a folder entry, spelled as the entry spells it. A missing parent (one
   * side deleted the folder, the other put something in it) is brought back; a file or link where a
   * folder is needed stays, and the folder's merged contents move to a conflict copy beside it.
   */
  private makeConsistent(): void {
    for (let again = true; again; ) {
      again = false;
      const slots = [...this.merged.values()].sort((x, y) => depthOf(x.entry.path) - depthOf(y.entry.path) || cmp(keyOf(x.entry.path), keyOf(y.entry.path)));
      scan: for (const slot of slots) {
        const parts = slot.entry.path.split('/');
        let parent = '';
        for (let i = 0; i < parts.length - 1; i++) {
          const path = parent === '' ? parts[i]! : `${parent}/${parts[i]!}`;
          const key = keyOf(path);
          let dir = this.merged.get(key);
          if (dir && dir.entry.kind !== 'dir') {
            this.setAside(key, dir);
            again = true;
            break scan;
          }
          if (!dir) dir = this.restore(key, path, slot);
          parent = dir.entry.path;
        }
        if (parent !== '') {
          const path = `${parent}/${parts[parts.length - 1]!}`;
          if (path !== slot.entry.path) slot.entry = { ...slot.entry, path };
        }
      }
    }
  }

  private restore(key: string, path: string, cause: Slot): Slot {
    const prefer: Origin = cause.origin;
    const dir = this.folderFor(key, path, prefer, cause.entry);
    this.merged.set(key, dir);
    const parentKey = keyOf(path.split('/').slice(0, -1).join('/'));
    const b = this.base.get(key);
    if (b && this.stats.filesDeleted > 0) {
      // Its deletion was counted when its own path was merged; it is back.
      this.stats.filesDeleted--;
      if (sameContent(dir.entry, b)) this.stats.filesUnchanged++;
      else if (dir.origin === 'ours') this.stats.filesFromOurs++;
      else this.stats.filesFromTheirs++;
    }
    if (b && !this.restored.has(parentKey) && !this.conflicts.has(key)) {
      const deleter: Side = this.ours.get(key)?.kind === 'dir' ? 'theirs' : 'ours';
      const keeper = otherSide(deleter);
      this.report(key, {
        kind: 'file', path: dir.entry.path, reason: 'modify-delete', kept: keeper,
        resolution: `kept the folder, which the ${sideName(deleter)} deleted, because the ${sideName(keeper)} changed ${cause.entry.path} inside it`,
      });
    }
    this.restored.add(key);
    return dir;
  }

  /** `key` holds a file or link but merged entries lie inside it: save them under a conflict-named folder. */
  private setAside(key: string, blocker: Slot): void {
    const prefix = `${key}/`;
    const inside = [...this.merged.entries()].filter(([k]) => k.startsWith(prefix)).map(([, s]) => s);
    const side: Side = inside.some((s) => s.origin === 'ours') ? 'ours' : blocker.origin === 'ours' ? 'theirs' : inside.some((s) => s.origin === 'theirs') ? 'theirs' : 'ours';
    const copy = this.copyName(blocker.entry.path, side, true);
    const dir = this.folderFor(key, copy, side, inside[0]!.entry);
    const n = this.moveContents(key, copy);
    this.merged.set(keyOf(copy), { entry: dir.entry, origin: side });
    const note = `the ${sideName(side)}'s folder contents (${n} ${n === 1 ? 'entry' : 'entries'}) saved as ${copy}`;
    const c = this.conflicts.get(key);
    if (c) {
      this.conflicts.set(key, { ...c, kept: 'both', keptCopy: copy, resolution: `${c.resolution}; ${note}` });
    } else {
      this.report(key, {
        kind: 'file', path: blocker.entry.path, reason: 'type-clash', kept: 'both', keptCopy: copy,
        resolution: `kept the ${sideName(blocker.origin === 'ours' ? 'ours' : 'theirs')}'s ${describeKind(blocker.entry)}; ${note}`,
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The whole persona

function sortConflicts(list: MergeConflict[]): MergeConflict[] {
  return list.sort((a, b) => cmp(a.kind, b.kind) || cmp(a.path.toLowerCase(), b.path.toLowerCase()) || cmp(a.path, b.path) || cmp(a.reason, b.reason));
}

/**
 * Three-way merge of persona snapshots. `base` is the version the laptop checked out, `ours` the
 * laptop's snapshot, `theirs` the server's current version. Returns the merged snapshot (files sorted,
 * every entry's parent a folder entry; registry as canonical .reg text) and the report of every conflict.
 * When one side's registry text equals the base's, the other side's text is returned as it is.
 */
export function mergePersona(base: PersonaSnapshot, ours: PersonaSnapshot, theirs: PersonaSnapshot, opts: MergeOptions): MergeResult {
  checkOptions(opts);
  const fm = new FileMerge(base, ours, theirs, opts);
  const files = fm.run();
  const fileConflicts = sortConflicts([...fm.conflicts.values()]);
  // One side left the text as it was: the other side's text is the result, as it is; the walk still
  // counts the values for the report.
  const same = ours.registry === base.registry || ours.registry === theirs.registry ? theirs.registry : theirs.registry === base.registry ? ours.registry : null;
  const reg = mergeRegistryText(
    canonicalForm(base.registry, 'base registry'), canonicalForm(ours.registry, "laptop's registry"), canonicalForm(theirs.registry, "server's registry"),
    { policy: opts.registryPolicy, oursTime: opts.oursTime, theirsTime: opts.theirsTime, oursTimes: opts.registryTimes?.ours, theirsTimes: opts.registryTimes?.theirs, output: same === null },
  );
  const registryConflicts = sortConflicts(reg.conflicts);
  const registry = same ?? reg.text!;
  return {
    merged: { files, registry },
    report: {
      conflicts: [...fileConflicts, ...registryConflicts],
      stats: { ...fm.stats, fileConflicts: fileConflicts.length, ...reg.stats, registryConflicts: registryConflicts.length },
    },
  };
}

const REASON_TEXT: Record<MergeConflictReason, string> = {
  'both-modified': 'changed on both sides',
  'modify-delete': 'changed on one side, deleted on the other',
  'both-added': 'added on both sides with different contents',
  'type-clash': 'a file on one side, a folder on the other',
  'key-deleted-value-modified': 'key deleted on one side, changed inside on the other',
};

/** The report in words, one conflict a line, for the user and the server's log. */
export function formatMergeReport(report: MergeReport): string {
  const s = report.stats;
  const n = report.conflicts.length;
  const lines = [
    n === 0 ? 'Merged with no conflicts.' : `Merged with ${n} conflict${n === 1 ? '' : 's'} (${s.fileConflicts} in files, ${s.registryConflicts} in the registry).`,
    `Files: ${s.filesFromOurs} from the laptop, ${s.filesFromTheirs} from the server, ${s.filesSameOnBoth} changed alike on both, ${s.filesDeleted} deleted, ${s.filesUnchanged} unchanged.`,
    `Registry values: ${s.valuesFromOurs} from the laptop, ${s.valuesFromTheirs} from the server, ${s.valuesSameOnBoth} changed alike on both, ${s.valuesDeleted} deleted, ${s.valuesUnchanged} unchanged.`,
  ];
  if (n > 0) lines.push('Conflicts:');
  for (const c of report.conflicts) lines.push(`  ${c.kind === 'file' ? 'file' : 'registry'} ${c.path}: ${REASON_TEXT[c.reason]}; ${c.resolution}.`);
  return `${lines.join('\n')}\n`;
}
