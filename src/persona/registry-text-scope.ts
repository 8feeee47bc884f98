// The registry scope (registry/scope.ts: which keys a persona holds) applied to canonical registry
// text (registry-text.ts), key by key, with no Registry of value objects: filtering a registry by a
// scope (with the report of what was left out), joining two registries that hold different keys, and
// the changes that turn one registry into another as regedit applies them (registryChanges' rules).
// Why: the Registry model costs ~9 KB a key (100,000 keys: ~900 MB, seconds); a walk over the text
// keeps only the text being written.
// Must not know: snapshots, HTTP, files.
import { decodeRegFile, ScopeFilter, type RegistryFile, type RegistryScope } from './registry/index.js';
import { REG_TEXT_HEADER, RegTextCursor, RegTextWriter, sameValueLine, withCanonical, type TextKey, type TextValue } from './registry-text.js';

export type ScopeReason = 'root' | 'excluded' | 'not-included';

export interface DroppedTextKey {
  path: string;
  reason: ScopeReason;
  /** Its value lines (canonical), so a caller can compare them with another registry's. */
  values: TextValue[];
}

export interface ScopedRegistryText {
  /** Canonical text of the keys inside the scope (the input itself when nothing was left out). */
  text: string;
  /** Keys left out, in text order; empty keys merely not included are not listed (they lose nothing). */
  dropped: DroppedTextKey[];
}

const filterOf = (scope: RegistryScope | ScopeFilter): ScopeFilter => (scope instanceof ScopeFilter ? scope : new ScopeFilter(scope));

/**
 * The keys of registry text inside `scope`, as canonical text, and those left out (filterRegistry's
 * rules). `keepText: false` only lists what is left out (the text returned is then the input).
 */
export function filterRegistryText(text: string, scope: RegistryScope | ScopeFilter, opts: { keepText?: boolean } = {}): ScopedRegistryText {
  const f = filterOf(scope);
  const keepText = opts.keepText ?? true;
  return withCanonical(text, 'registry', (t) => {
    const dropped: DroppedTextKey[] = [];
    let outside = false;
    for (const c = new RegTextCursor(t); c.key; c.next()) {
      const reason = f.reason(c.key.path);
      if (reason === null) continue;
      outside = true;
      if (reason !== 'not-included' || c.key.values.length > 0) dropped.push({ path: c.key.path, reason, values: c.key.values });
    }
    // Most registries lie wholly inside their scope: then the text itself is the answer.
    if (!outside || !keepText) return { text: t, dropped };
    return { text: selectKeys(t, (k) => f.has(k.path)), dropped };
  });
}

/** The keys of canonical text for which `keep` holds, as canonical text ('' when none). */
export function selectKeys(text: string, keep: (key: TextKey) => boolean): string {
  const w = new RegTextWriter();
  for (const c = new RegTextCursor(text); c.key; c.next()) if (keep(c.key)) w.key(c.key.path, c.key.values.map((v) => v.line));
  return w.text();
}

/**
 * Two canonical texts that hold different keys (the inside and the outside of a scope) as one; a key
 * in both is taken from `a`. A shared parent path keeps the spelling of the key written first.
 */
export function joinRegistryTexts(a: string, b: string): string {
  if (a === '') return b;
  if (b === '') return a;
  const x = new RegTextCursor(a);
  const y = new RegTextCursor(b);
  const w = new RegTextWriter();
  while (x.key || y.key) {
    const c = !y.key ? -1 : !x.key ? 1 : x.key.order < y.key.order ? -1 : x.key.order > y.key.order ? 1 : 0;
    const k = c <= 0 ? x.key! : y.key!;
    if (c <= 0) x.next();
    if (c >= 0) y.next();
    w.key(k.path, k.values.map((v) => v.line));
  }
  return w.text();
}

/** Ancestor ids of a key id (not itself). */
function addAncestors(set: Set<string>, id: string): void {
  for (let i = id.indexOf('\\'); i >= 0; i = id.indexOf('\\', i + 1)) set.add(id.slice(0, i));
}

/**
 * registryChanges on canonical texts: what turns registry `from` (what the guest has) into `to` (the
 * persona), as .reg text (v5, UTF-8, CRLF; '' when nothing changes) regedit applies: keys gone as
 * `[-Key]` (the topmost only; not when a key of `to` or a key outside the scope lies below it: then its
 * values go as `"name"=-`), then keys new or changed with the values set, values gone deleted. Keys
 * outside `scope` are neither set nor deleted.
 */
export function registryChangesText(fromText: string, toText: string, scope: RegistryScope | ScopeFilter = { include: null, exclude: [] }): string {
  const f = filterOf(scope);
  return withCanonical(fromText, 'registry', (from) => withCanonical(toText, 'registry', (to) => {
    // Keys that must stay because something stays below them.
    const below = new Set<string>();
    for (const c = new RegTextCursor(to); c.key; c.next()) if (f.has(c.key.path)) addAncestors(below, c.key.id);
    for (const c = new RegTextCursor(from); c.key; c.next()) if (!f.has(c.key.path)) addAncestors(below, c.key.id);
    const deletions: string[] = [];
    const sets: string[] = [];
    let deletedPrefix: string | null = null;
    const x = new RegTextCursor(from);
    const y = new RegTextCursor(to);
    while (x.key || y.key) {
      const c = !y.key ? -1 : !x.key ? 1 : x.key.order < y.key.order ? -1 : x.key.order > y.key.order ? 1 : 0;
      if (c < 0) {
        const k = x.key!;
        x.next();
        if (deletedPrefix !== null && k.id.startsWith(`${deletedPrefix}\\`)) continue;
        if (!f.has(k.path) || !k.path.includes('\\')) continue;
        if (below.has(k.id)) {
          if (k.values.length > 0) deletions.push('\r\n[', k.path, ']\r\n', ...k.values.map((v) => `${v.line.slice(0, v.head)}-\r\n`));
          continue;
        }
        deletions.push('\r\n[-', k.path, ']\r\n');
        deletedPrefix = k.id;
        continue;
      }
      const k = y.key!;
      const old = c === 0 ? x.key! : null;
      y.next();
      if (c === 0) x.next();
      if (!f.has(k.path)) {
        // `from` has it and the scope leaves it out: untouched, as with a key of `from` alone.
        continue;
      }
      // Values set first (in name order), then those gone: the order registryChanges writes them in.
      const lines: string[] = [];
      const gone: string[] = [];
      const ov = old?.values ?? [];
      for (let i = 0, j = 0; i < ov.length || j < k.values.length; ) {
        const o = ov[i];
        const v = k.values[j];
        const d = !v ? -1 : !o ? 1 : o.id < v.id ? -1 : o.id > v.id ? 1 : 0;
        if (d < 0) {
          gone.push(`${o!.line.slice(0, o!.head)}-`);
          i++;
        } else if (d > 0) {
          lines.push(v!.line);
          j++;
        } else {
          if (!sameValueLine(o, v)) lines.push(v!.line);
          i++;
          j++;
        }
      }
      lines.push(...gone);
      if (lines.length > 0 || !old) sets.push('\r\n[', k.path, ']\r\n', ...lines.map((l) => `${l}\r\n`));
    }
    if (deletions.length === 0 && sets.length === 0) return '';
    return [REG_TEXT_HEADER, ...deletions, ...sets, '\r\n'].join('');
  }));
}

/** registryChangesText as a RegistryFile for regedit (UTF-16LE with BOM): only the changes are ever decoded into values. */
export function registryChangesFile(fromText: string, toText: string, scope: RegistryScope | ScopeFilter = { include: null, exclude: [] }): RegistryFile {
  const text = registryChangesText(fromText, toText, scope);
  const sections = text === '' ? [] : decodeRegFile(Buffer.from(text, 'utf8'), { encoding: 'utf-8' }).sections;
  return { version: 'v5', encoding: 'utf-16le', bom: true, sections };
}
