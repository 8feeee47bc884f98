// The registry scope at the server boundary: before a laptop's persona (a push or a check-in) is
// merged and stored, its registry must hold HKEY_CURRENT_USER alone, and keys the desktop's include
// and exclude lists leave out are dropped (and reported), from the laptop's registry and from the two
// it is merged with, so they are never stored again. Owns that rule; PersonaService calls it.
// Must not know: HTTP, which database.
// Old versions: a version stored before the rule may hold other root keys. Its keys are tolerated as
// long as the laptop sends them back unchanged (they came from the server); they are dropped from the
// new version. A key outside HKEY_CURRENT_USER the laptop added or changed is refused with its line.
import {
  CarryonError, exportRegistry, filterRegistry, HKCU, keyPathId, regKeyLines as keyHeaders, registryFromText, rootKeyOf, ScopeFilter, type PersonaSnapshot, type Registry, type RegistryScope, type RegKeyLine as Header,
} from '../../src/index.js';

const LISTED = 50;

export interface ScopedCommit {
  base: PersonaSnapshot;
  ours: PersonaSnapshot;
  theirs: PersonaSnapshot;
  dropped?: { count: number; keys: string[] };
}

function canonical(reg: Registry): string {
  return reg.size === 0 ? '' : Buffer.from(exportRegistry(reg, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
}

/** Line (1-based) of the `[path]` line naming `path` in .reg text, or null. */
export { keyHeaders };

export function lineOfKey(text: string, path: string): number | null {
  const id = keyPathId(path);
  return keyHeaders(text).find((h) => keyPathId(h.path) === id)?.line ?? null;
}

function sameKey(a: Registry, b: Registry, path: string): boolean {
  const x = a.getKey(path);
  const y = b.getKey(path);
  if (!x || !y || x.values.length !== y.values.length) return false;
  return x.values.every((v, i) => {
    const w = y.values[i]!;
    return (v.name ?? '').toUpperCase() === (w.name ?? '').toUpperCase() && v.type === w.type && Buffer.from(v.data).equals(Buffer.from(w.data));
  });
}

/** Whether any key of the text lies outside the scope (an empty key merely not included does not count). */
function anyOutside(headers: Header[], filter: ScopeFilter): boolean {
  return headers.some((h) => {
    const r = filter.reason(h.path);
    return r !== null && (r !== 'not-included' || h.values > 0);
  });
}

/**
 * Applies `scope` to a commit's three registries. Nothing happens when the laptop's registry equals its
 * base's (it sent no registry change). REGISTRY_OUTSIDE_HKCU when the laptop added or changed a key
 * under another root; a text is parsed and rewritten only when a key is dropped from it, so a commit
 * whose registries are all inside the scope costs a line scan of each.
 */
export function scopeCommitRegistries(base: PersonaSnapshot, ours: PersonaSnapshot, theirs: PersonaSnapshot, scope: RegistryScope): ScopedCommit {
  if (ours.registry === base.registry) return { base, ours, theirs };
  const filter = new ScopeFilter(scope);
  const oursHeaders = keyHeaders(ours.registry);
  const foreign = oursHeaders.filter((h) => rootKeyOf(h.path) !== HKCU);
  let oursReg: Registry | null = null;
  let baseReg: Registry | null = null;
  if (foreign.length > 0) {
    oursReg = registryFromText(ours.registry);
    baseReg = registryFromText(base.registry);
    const deletions = new Set(keyHeaders(ours.registry).filter((h) => !oursReg!.hasKey(h.path)).map((h) => h.path));
    for (const h of foreign) {
      if (!deletions.has(h.path) && sameKey(oursReg, baseReg, h.path)) continue;
      throw new CarryonError('REGISTRY_OUTSIDE_HKCU', `line ${h.line} of the persona's registry: key [${h.path}] is outside ${HKCU}: a persona holds the user's own registry alone; ` +
        `nothing was stored: remove the sections under ${rootKeyOf(h.path) ?? 'that root'} from registry.reg and run the command again`, { line: h.line, key: h.path.slice(0, 300) });
    }
  }
  const scoped = (snap: PersonaSnapshot, headers: Header[] | null, parsed: Registry | null): { snap: PersonaSnapshot; dropped: string[]; reg: Registry | null } => {
    if (!anyOutside(headers ?? keyHeaders(snap.registry), filter)) return { snap, dropped: [], reg: parsed };
    let reg = parsed;
    try {
      reg ??= registryFromText(snap.registry);
    } catch {
      // A stored version that cannot be parsed is left as it is: the merge refuses it with its own advice.
      return { snap, dropped: [], reg: null };
    }
    const r = filterRegistry(reg, filter);
    return { snap: { ...snap, registry: canonical(r.kept) }, dropped: r.dropped.map((d) => d.path), reg };
  };
  const o = scoped(ours, oursHeaders, oursReg);
  const b = scoped(base, null, baseReg);
  const t = theirs === base ? b : scoped(theirs, null, null);
  // Report what the laptop sent that is not stored; keys it merely carried back from an old version are
  // dropped without a word about each (they were not the user's edits).
  // (b.reg is parsed exactly when the base itself had keys outside the scope: else every one is new.)
  const sent = b.reg && o.reg ? o.dropped.filter((p) => !sameKey(o.reg!, b.reg!, p)) : o.dropped;
  return {
    base: b.snap, ours: o.snap, theirs: t.snap,
    ...(sent.length > 0 ? { dropped: { count: sent.length, keys: sent.slice(0, LISTED) } } : {}),
  };
}
