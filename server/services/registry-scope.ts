// The registry scope at the server boundary: before a laptop's persona (a push or a check-in) is
// merged and stored, its registry must hold HKEY_CURRENT_USER alone, and keys the desktop's include
// and exclude lists leave out are dropped (and reported), from the laptop's registry and from the two
// it is merged with, so they are never stored again. Owns that rule; PersonaService calls it.
// Must not know: HTTP, which database.
// Old versions: a version stored before the rule may hold other root keys. Its keys are tolerated as
// long as the laptop sends them back unchanged (they came from the server); they are dropped from the
// new version. A key outside HKEY_CURRENT_USER the laptop added or changed is refused with its line.
import {
  CarryonError, exportRegistry, filterRegistry, HKCU, keyPathId, registryFromText, rootKeyOf, ScopeFilter, type PersonaSnapshot, type Registry, type RegistryScope,
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
export function lineOfKey(text: string, path: string): number | null {
  const id = keyPathId(path);
  let line = 0;
  for (const raw of text.split('\n')) {
    line++;
    const l = raw.replace(/\r$/, '').trim();
    if (l.startsWith('[') && l.endsWith(']') && keyPathId(l.slice(1, -1)) === id) return line;
  }
  return null;
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

/**
 * Applies `scope` to a commit's three registries. Nothing happens when the laptop's registry equals its
 * base's (it sent no registry change). REGISTRY_OUTSIDE_HKCU when the laptop added or changed a key
 * under another root; a text is rewritten only when a key is dropped from it.
 */
export function scopeCommitRegistries(base: PersonaSnapshot, ours: PersonaSnapshot, theirs: PersonaSnapshot, scope: RegistryScope): ScopedCommit {
  if (ours.registry === base.registry) return { base, ours, theirs };
  const filter = new ScopeFilter(scope);
  const oursReg = registryFromText(ours.registry);
  const baseReg = registryFromText(base.registry);
  for (const k of oursReg.keys()) {
    if (rootKeyOf(k.path) === HKCU || sameKey(oursReg, baseReg, k.path)) continue;
    const line = lineOfKey(ours.registry, k.path);
    throw new CarryonError('REGISTRY_OUTSIDE_HKCU', `${line !== null ? `line ${line} of the persona's registry: ` : ''}key [${k.path}] is outside ${HKCU}: a persona holds the user's own registry alone; ` +
      `nothing was stored: remove the sections under ${rootKeyOf(k.path) ?? 'that root'} from registry.reg and run the command again`, { line, key: k.path.slice(0, 300) });
  }
  const scoped = (snap: PersonaSnapshot, reg: Registry): { snap: PersonaSnapshot; dropped: string[] } => {
    const r = filterRegistry(reg, filter);
    return r.kept.size === reg.size ? { snap, dropped: [] } : { snap: { ...snap, registry: canonical(r.kept) }, dropped: r.dropped.map((d) => d.path) };
  };
  const o = scoped(ours, oursReg);
  const b = scoped(base, baseReg);
  let t = b;
  if (theirs !== base) {
    // A current version that cannot be parsed is left as it is: the merge refuses it with its own advice.
    let theirsReg: Registry | null = null;
    try {
      theirsReg = registryFromText(theirs.registry);
    } catch {
      theirsReg = null;
    }
    t = theirsReg ? scoped(theirs, theirsReg) : { snap: theirs, dropped: [] };
  }
  // Report what the laptop sent that is not stored; keys it merely carried back from an old version are
  // dropped without a word about each (they were not the user's edits).
  const sent = o.dropped.filter((p) => !sameKey(oursReg, baseReg, p));
  return {
    base: b.snap, ours: o.snap, theirs: t.snap,
    ...(sent.length > 0 ? { dropped: { count: sent.length, keys: sent.slice(0, LISTED) } } : {}),
  };
}
