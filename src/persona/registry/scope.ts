// What part of the registry a persona holds: HKEY_CURRENT_USER alone, narrowed by a desktop's
// include and exclude key patterns. Owns the pattern syntax, the default exclude list (known noise),
// filtering a registry by a scope, and the changes between two registries as a .reg file that regedit
// applies (sets, `"name"=-`, `[-Key]`), so a guest gets only what changed.
// Patterns are relative to HKEY_CURRENT_USER, backslash-separated, case-insensitive as Windows
// compares names: `*` matches any run of characters inside one key name, `?` one character, and a
// whole component `**` any number of key levels (none included). A pattern names a key and
// everything below it.
import { CarryonError } from '../../errors/index.js';
import { foldName, keyPathId, rootKeyOf, valueNameId } from './names.js';
import { Registry, type RegistryKey, type RegistryValue } from './registry.js';
import type { RegKeySection, RegSection, RegistryFile } from './types.js';

export const HKCU = 'HKEY_CURRENT_USER';

/**
 * Keys that change on every logon or click and mean nothing on another machine: shipping them costs
 * bytes and conflicts, and Windows rebuilds them. Each line says why (docs/persona.md lists them).
 */
export const DEFAULT_REGISTRY_EXCLUDES: readonly string[] = [
  // recently opened documents, per extension: Explorer rewrites it on every open
  'Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RecentDocs',
  // most-recently-used lists (Run box, typed paths, open/save dialogs, Office, ...): history, not settings
  'Software\\**\\*MRU*',
  // program launch counters (ROT13 names, binary counts): rewritten at every start of a program
  'Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\UserAssist',
  // shell bags: window positions per folder, keyed by shell item ids of this machine's disks
  'Software\\Microsoft\\Windows\\Shell\\BagMRU',
  'Software\\Microsoft\\Windows\\Shell\\Bags',
  'Software\\Classes\\Local Settings\\Software\\Microsoft\\Windows\\Shell',
  // per-session and per-volume state that names this machine's sessions and disks
  'Volatile Environment',
  'Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\SessionInfo',
  'Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\MountPoints2',
  // thumbnail and search caches, rebuilt on demand
  'Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\FeatureUsage',
  'Software\\Microsoft\\Windows\\CurrentVersion\\Search\\RecentApps',
  'Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\TypedPaths',
  'Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\WordWheelQuery',
];

/** Written in an exclude list, stands for DEFAULT_REGISTRY_EXCLUDES (so an admin can add to it). */
export const DEFAULT_EXCLUDES_TOKEN = '@default';

export const MAX_SCOPE_PATTERNS = 256;
const MAX_PATTERN_CHARS = 1024;

/** A desktop's registry scope. `include` null: all of HKEY_CURRENT_USER. Patterns as described above. */
export interface RegistryScope {
  include: readonly string[] | null;
  exclude: readonly string[];
}

/** The scope of a desktop with no lists set: all of HKEY_CURRENT_USER but the default excludes. */
export const DEFAULT_REGISTRY_SCOPE: RegistryScope = { include: null, exclude: DEFAULT_REGISTRY_EXCLUDES };

function bad(message: string, data: Record<string, unknown> = {}): never {
  throw new CarryonError('INVALID_ARGUMENT', message, data);
}

/**
 * A pattern as the admin typed it, checked and normalised: an optional leading `HKEY_CURRENT_USER\`
 * (or `HKCU\`) is dropped, single backslashes separate names. INVALID_ARGUMENT when unusable.
 */
export function parseKeyPattern(raw: string): string {
  if (typeof raw !== 'string') bad('a registry key pattern must be text');
  let p = raw.trim();
  if (p.length === 0) bad('a registry key pattern cannot be empty; use * for all of HKEY_CURRENT_USER');
  if (p.length > MAX_PATTERN_CHARS) bad(`a registry key pattern may have at most ${MAX_PATTERN_CHARS} characters`);
  const first = foldName(p.split('\\')[0]!);
  if (first === 'HKCU' || first === HKCU) p = p.slice(p.indexOf('\\') + 1 || p.length);
  else if (rootKeyOf(p) || /^HK(LM|CR|U|CC)$/.test(first)) {
    bad(`registry key pattern '${raw}' names another root key: a persona holds HKEY_CURRENT_USER alone, and patterns are relative to it (write Software\\Vendor)`, { pattern: raw });
  }
  if (p === '') bad('a registry key pattern needs a key below HKEY_CURRENT_USER; use * for all of it');
  if (/[\r\n\0]/.test(p)) bad('a registry key pattern cannot hold a line break or NUL character', { pattern: raw });
  const parts = p.split('\\');
  if (parts.some((c) => c === '')) bad(`registry key pattern '${raw}' has an empty key name (two backslashes in a row, or one at either end)`, { pattern: raw });
  return parts.join('\\');
}

/** An admin's list: each pattern checked, `@default` kept as the token (expanded by effectiveExcludes), duplicates dropped. */
export function parseKeyPatternList(raw: readonly string[], what: 'include' | 'exclude'): string[] {
  if (!Array.isArray(raw)) bad(`registry ${what} must be a list of key patterns`);
  if (raw.length > MAX_SCOPE_PATTERNS) bad(`registry ${what} may hold at most ${MAX_SCOPE_PATTERNS} patterns`);
  const out: string[] = [];
  for (const r of raw) {
    const p = what === 'exclude' && typeof r === 'string' && r.trim() === DEFAULT_EXCLUDES_TOKEN ? DEFAULT_EXCLUDES_TOKEN : parseKeyPattern(r);
    if (!out.some((o) => foldName(o) === foldName(p))) out.push(p);
  }
  return out;
}

/** An exclude list as stored (null: the default) with `@default` expanded. */
export function effectiveExcludes(stored: readonly string[] | null): string[] {
  if (stored === null) return [...DEFAULT_REGISTRY_EXCLUDES];
  return stored.flatMap((p) => (p === DEFAULT_EXCLUDES_TOKEN ? DEFAULT_REGISTRY_EXCLUDES : [p]));
}

/** A desktop's stored lists (JSON text or NULL, migration 14) as the scope in force. */
export function registryScopeFromStored(include: string | null, exclude: string | null): RegistryScope {
  return { include: include === null ? null : (JSON.parse(include) as string[]), exclude: effectiveExcludes(exclude === null ? null : (JSON.parse(exclude) as string[])) };
}

type Matcher = (names: readonly string[]) => boolean;

function globRegex(component: string): RegExp {
  const src = [...foldName(component)].map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&'))).join('');
  return new RegExp(`^${src}$`, 's');
}

/** Whether some leading run of `names` (folded key names below HKCU) matches the whole pattern. */
function compile(pattern: string): Matcher {
  const comps = pattern.split('\\').map((c) => (c === '**' ? null : globRegex(c)));
  const match = (pi: number, ni: number, names: readonly string[]): boolean => {
    if (pi === comps.length) return true; // the pattern is used up: this key is at or below it
    const c = comps[pi]!;
    if (c === null) {
      for (let k = ni; k <= names.length; k++) if (match(pi + 1, k, names)) return true;
      return false;
    }
    return ni < names.length && c.test(names[ni]!) && match(pi + 1, ni + 1, names);
  };
  return (names) => match(0, 0, names);
}

/** Decides whether keys are in a scope. Build once per scope; `has` is called for every key. */
export class ScopeFilter {
  private readonly includes: Matcher[] | null;
  private readonly excludes: Matcher[];
  constructor(readonly scope: RegistryScope) {
    this.includes = scope.include === null ? null : scope.include.map(compile);
    this.excludes = scope.exclude.filter((p) => p !== DEFAULT_EXCLUDES_TOKEN).map(compile);
  }

  /** Why a key (full path) is outside the scope: 'root' (not HKCU), 'excluded', 'not-included'; null when inside. */
  reason(path: string): 'root' | 'excluded' | 'not-included' | null {
    if (rootKeyOf(path) !== HKCU) return 'root';
    const names = foldName(path).split('\\').slice(1);
    if (this.excludes.some((m) => m(names))) return 'excluded';
    if (this.includes && !this.includes.some((m) => m(names))) return 'not-included';
    return null;
  }

  has(path: string): boolean {
    return this.reason(path) === null;
  }
}

export interface ScopedRegistry {
  kept: Registry;
  /** Keys left out (full paths, as held), each with why and how many values it had; empty keys merely not included are not listed. */
  dropped: Array<{ path: string; reason: 'root' | 'excluded' | 'not-included'; values: number }>;
}

/** The keys of `reg` inside the scope (`reg` itself when all are; else a copy), and what was left out. */
export function filterRegistry(reg: Registry, scope: RegistryScope | ScopeFilter): ScopedRegistry {
  const f = scope instanceof ScopeFilter ? scope : new ScopeFilter(scope);
  // Most registries lie wholly inside their scope: then `reg` itself is the answer, not a copy.
  const keys = reg.keys();
  if (keys.every((k) => f.has(k.path))) return { kept: reg, dropped: [] };
  const kept = new Registry();
  const dropped: ScopedRegistry['dropped'] = [];
  for (const k of keys) {
    const reason = f.reason(k.path);
    if (reason) {
      // An empty key outside the include list (the root, a parent of an included key) loses nothing.
      if (reason !== 'not-included' || k.values.length > 0) dropped.push({ path: k.path, reason, values: k.values.length });
      continue;
    }
    kept.createKey(k.path);
    for (const v of k.values) kept.setValue(k.path, v);
  }
  return { kept, dropped };
}

function sameValue(a: RegistryValue, b: RegistryValue): boolean {
  return a.type === b.type && Buffer.from(a.data).equals(Buffer.from(b.data));
}

/**
 * What turns registry `from` (what the guest has) into `to` (the persona), as a .reg file regedit
 * applies: new and changed values set, values gone as `"name"=-`, keys gone as `[-Key]` (the topmost
 * one only; it takes its subkeys). Only keys inside `scope` are touched: a key outside it is neither
 * set nor deleted, so the guest keeps what the persona does not carry. Keys in `to` with nothing to
 * change are left out. Applying the result to `from` with applyToRegistry gives `to` within scope.
 */
export function registryChanges(from: Registry, to: Registry, scope: RegistryScope | ScopeFilter = { include: null, exclude: [] }): RegistryFile {
  const f = scope instanceof ScopeFilter ? scope : new ScopeFilter(scope);
  const sections: RegSection[] = [];
  const toKeys = new Map<string, RegistryKey>(to.keys().filter((k) => f.has(k.path)).map((k) => [keyPathId(k.path), k]));
  // Keys gone: a key of `from` in scope that `to` lacks, and that no key of `to` lies below (else the
  // child would go too: then only its values are deleted). Skip those below a key already deleted.
  const below = new Set<string>();
  for (const id of toKeys.keys()) {
    const parts = id.split('\\');
    for (let k = 1; k < parts.length; k++) below.add(parts.slice(0, k).join('\\'));
  }
  // Keys with a key outside the scope below them: a [-Key] would delete that one too.
  const fromKeys = from.keys();
  for (const k of fromKeys) {
    if (f.has(k.path)) continue;
    const parts = keyPathId(k.path).split('\\');
    for (let n = 1; n < parts.length; n++) below.add(parts.slice(0, n).join('\\'));
  }
  let deletedPrefix: string | null = null;
  for (const k of fromKeys) {
    const id = keyPathId(k.path);
    if (deletedPrefix !== null && id.startsWith(`${deletedPrefix}\\`)) continue;
    if (!f.has(k.path) || toKeys.has(id) || !k.path.includes('\\')) continue;
    if (below.has(id)) {
      // Keep the key (something below it stays): delete its own values.
      if (k.values.length > 0) sections.push({ kind: 'key', path: k.path, values: k.values.map((v) => ({ kind: 'delete', name: v.name })) });
      continue;
    }
    sections.push({ kind: 'delete-key', path: k.path });
    deletedPrefix = id;
  }
  const fromById = new Map(fromKeys.map((k) => [keyPathId(k.path), k]));
  for (const [id, k] of toKeys) {
    const old = fromById.get(id);
    const oldValues = new Map((old?.values ?? []).map((v) => [valueNameId(v.name), v]));
    const edits: RegKeySection['values'] = [];
    for (const v of k.values) {
      const o = oldValues.get(valueNameId(v.name));
      oldValues.delete(valueNameId(v.name));
      if (!o || !sameValue(o, v)) edits.push({ kind: 'set', name: v.name, type: v.type, data: v.data });
    }
    for (const o of oldValues.values()) edits.push({ kind: 'delete', name: o.name });
    if (edits.length > 0 || !old) sections.push({ kind: 'key', path: k.path, values: edits });
  }
  return { version: 'v5', encoding: 'utf-16le', bom: true, sections };
}
