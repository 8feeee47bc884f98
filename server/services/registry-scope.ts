// The registry scope at the server boundary: before a laptop's persona (a push or a check-in) is
// merged and stored, its registry must hold HKEY_CURRENT_USER alone, and keys the desktop's include
// and exclude lists leave out are dropped (and reported), from the laptop's registry and from the two
// it is merged with, so they are never stored again. Owns that rule; PersonaService calls it.
// Must not know: HTTP, which database.
// Old versions: a version stored before the rule may hold other root keys. Its keys are tolerated as
// long as the laptop sends them back unchanged (they came from the server); they are dropped from the
// new version. A key outside HKEY_CURRENT_USER the laptop added or changed is refused with its line.
import {
  CarryonError, filterRegistryText, forEachRegKeyLine, HKCU, keyPathId, regKeyLines as keyHeaders, RegTextCursor, rootKeyOf, sameValueLine, ScopeFilter, withCanonical,
  type PersonaSnapshot, type RegistryScope, type RegKeyLine as Header, type TextValue,
} from '../../src/index.js';

const LISTED = 50;

export interface ScopedCommit {
  base: PersonaSnapshot;
  ours: PersonaSnapshot;
  theirs: PersonaSnapshot;
  dropped?: { count: number; keys: string[] };
}

/** Line (1-based) of the `[path]` line naming `path` in .reg text, or null. */
export { keyHeaders };

export function lineOfKey(text: string, path: string): number | null {
  const id = keyPathId(path);
  return keyHeaders(text).find((h) => keyPathId(h.path) === id)?.line ?? null;
}

/** The value lines of the keys `ids` (key ids) in registry text, in one walk that keeps only those. */
function keyValues(text: string, ids: ReadonlySet<string>): Map<string, TextValue[]> {
  const out = new Map<string, TextValue[]>();
  if (ids.size === 0) return out;
  withCanonical(text, 'registry', (t) => {
    out.clear();
    for (const c = new RegTextCursor(t); c.key; c.next()) if (ids.has(c.key.id)) out.set(c.key.id, c.key.values);
  });
  return out;
}

/** The same values (names matched case-insensitively, then type and data); a missing key matches nothing. */
function sameValues(x: TextValue[] | undefined, y: TextValue[] | undefined): boolean {
  if (!x || !y || x.length !== y.length) return false;
  return x.every((v, i) => v.id === y[i]!.id && sameValueLine(v, y[i]));
}

/** Whether a key line names a key outside the scope (an empty key merely not included does not count). */
function outside(h: Header, filter: ScopeFilter): boolean {
  const r = filter.reason(h.path);
  return r !== null && (r !== 'not-included' || h.values > 0);
}

/** Whether any key of the text lies outside the scope: a line scan that keeps no list of 100,000 keys. */
function anyOutside(text: string, filter: ScopeFilter): boolean {
  let found = false;
  forEachRegKeyLine(text, (h) => (found = outside(h, filter)));
  return found;
}

/**
 * Applies `scope` to a commit's three registries. Nothing happens when the laptop's registry equals its
 * base's (it sent no registry change). REGISTRY_OUTSIDE_HKCU when the laptop added or changed a key
 * under another root. Works on the canonical text, key by key (registry-text-scope.ts): a commit whose
 * registries are all inside the scope costs a line scan of each; one with keys to drop, a walk that
 * writes the text without them (never a Registry of value objects: ~900 MB at 100,000 keys).
 */
export function scopeCommitRegistries(base: PersonaSnapshot, ours: PersonaSnapshot, theirs: PersonaSnapshot, scope: RegistryScope): ScopedCommit {
  if (ours.registry === base.registry) return { base, ours, theirs };
  const filter = new ScopeFilter(scope);
  // One scan of the laptop's text: its keys under another root (with their lines), and whether any key is outside the scope.
  const foreign: Header[] = [];
  let oursOutside = false;
  forEachRegKeyLine(ours.registry, (h) => {
    if (rootKeyOf(h.path) !== HKCU) foreign.push(h);
    if (!oursOutside && outside(h, filter)) oursOutside = true;
  });
  if (foreign.length > 0) {
    const ids = new Set(foreign.map((h) => keyPathId(h.path)));
    const mine = keyValues(ours.registry, ids);
    const stored = keyValues(base.registry, ids);
    for (const h of foreign) {
      // A key the laptop carried back unchanged from an old version is tolerated; a `[-key]` line, or a key added or changed, is not.
      const id = keyPathId(h.path);
      if (sameValues(mine.get(id), stored.get(id))) continue;
      throw new CarryonError('REGISTRY_OUTSIDE_HKCU', `line ${h.line} of the persona's registry: key [${h.path}] is outside ${HKCU}: a persona holds the user's own registry alone; ` +
        `nothing was stored: remove the sections under ${rootKeyOf(h.path) ?? 'that root'} from registry.reg and run the command again`, { line: h.line, key: h.path.slice(0, 300) });
    }
  }
  const scoped = (snap: PersonaSnapshot, isOutside: boolean | null): { snap: PersonaSnapshot; dropped: Map<string, TextValue[]> | null; paths: string[] } => {
    if (!(isOutside ?? anyOutside(snap.registry, filter))) return { snap, dropped: null, paths: [] };
    let r;
    try {
      r = filterRegistryText(snap.registry, filter);
    } catch {
      // A stored version that cannot be parsed is left as it is: the merge refuses it with its own advice.
      return { snap, dropped: null, paths: [] };
    }
    return { snap: { ...snap, registry: r.text }, dropped: new Map(r.dropped.map((d) => [keyPathId(d.path), d.values])), paths: r.dropped.map((d) => d.path) };
  };
  const o = scoped(ours, oursOutside);
  const b = scoped(base, null);
  const t = theirs === base ? b : scoped(theirs, null);
  // Report what the laptop sent that is not stored; keys it merely carried back from an old version are
  // dropped without a word about each (they were not the user's edits).
  // (b.dropped is set exactly when the base itself had keys outside the scope: else every one is new.)
  const sent = b.dropped && o.dropped ? o.paths.filter((p) => !sameValues(o.dropped!.get(keyPathId(p)), b.dropped!.get(keyPathId(p)))) : o.paths;
  return {
    base: b.snap, ours: o.snap, theirs: t.snap,
    ...(sent.length > 0 ? { dropped: { count: sent.length, keys: sent.slice(0, LISTED) } } : {}),
  };
}
