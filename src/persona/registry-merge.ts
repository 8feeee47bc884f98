// The three-way merge of registries at value granularity, in one pass over three canonical texts (see
// registry-text.ts): no registry model is built, so merging 100,000-key registries costs little more
// than the texts themselves. Pure: no I/O, no clock.
//
// Values merge by (key path, value name), both compared as Windows compares them. One side left a
// value as it was: the other side's value (or deletion) wins. Both changed it alike: that. Deleted on
// one side, changed on the other: the change wins. Changed differently on both: the policy decides;
// 'newest' compares the two sides' times of change for that value (per-value times when given, else
// the laptop's edit time against the server version's commit time), a tie going to the server.
import { RegTextCursor, RegTextWriter, lineHead, sameValueLine, valueKey, type TextKey, type TextValue } from './registry-text.js';

export type RegistrySide = 'ours' | 'theirs';

export interface RegistryMergeOptions {
  policy: 'newest' | 'server' | 'laptop';
  /** When the laptop's edits were made (ms): a value with no time of its own in `oursTimes`. */
  oursTime: number;
  /** When the server's current version was committed (ms): a value with no time of its own in `theirsTimes`. */
  theirsTime: number;
  /** Per value key (registry-text.ts valueKey): when the laptop changed that value. */
  oursTimes?: ReadonlyMap<string, number>;
  /** Per value key: when the server's side changed that value. */
  theirsTimes?: ReadonlyMap<string, number>;
  /** Write the merged text (false: only the report, when the caller knows the result already). */
  output: boolean;
}

export interface RegistryConflict {
  kind: 'registry';
  path: string;
  reason: 'both-modified' | 'both-added' | 'modify-delete' | 'key-deleted-value-modified';
  resolution: string;
  kept: RegistrySide;
}

export interface RegistryMergeStats {
  valuesFromOurs: number;
  valuesFromTheirs: number;
  valuesSameOnBoth: number;
  valuesDeleted: number;
  valuesUnchanged: number;
}

const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
const sideName = (s: RegistrySide): string => (s === 'ours' ? 'laptop' : 'server');
const otherSide = (s: RegistrySide): RegistrySide => (s === 'ours' ? 'theirs' : 'ours');

function valuePath(keyPath: string, v: TextValue): string {
  return `${keyPath}\\${lineHead(v.line).name ?? '@'}`;
}

function parentId(id: string): string | null {
  const i = id.lastIndexOf('\\');
  return i < 0 ? null : id.slice(0, i);
}

/** The values of three versions of one key, by name id in order. */
function* valueTriples(bk: TextKey | undefined, ok: TextKey | undefined, tk: TextKey | undefined): Generator<[string, TextValue | undefined, TextValue | undefined, TextValue | undefined]> {
  const lists = [bk?.values ?? [], ok?.values ?? [], tk?.values ?? []];
  const at = [0, 0, 0];
  for (;;) {
    let min: string | null = null;
    for (let s = 0; s < 3; s++) {
      const v = lists[s]![at[s]!];
      if (v && (min === null || v.id < min)) min = v.id;
    }
    if (min === null) return;
    const got = lists.map((l, s) => (l[at[s]!]?.id === min ? l[at[s]!++] : undefined));
    yield [min, got[0], got[1], got[2]];
  }
}

/** Merge canonical texts `base`, `ours` (the laptop's) and `theirs` (the server's current version). */
export function mergeRegistryText(base: string, ours: string, theirs: string, opts: RegistryMergeOptions): { text: string | null; conflicts: RegistryConflict[]; stats: RegistryMergeStats } {
  const stats: RegistryMergeStats = { valuesFromOurs: 0, valuesFromTheirs: 0, valuesSameOnBoth: 0, valuesDeleted: 0, valuesUnchanged: 0 };
  const conflicts: RegistryConflict[] = [];
  const cursors = [new RegTextCursor(base, 'base registry'), new RegTextCursor(ours, "laptop's registry"), new RegTextCursor(theirs, "server's registry")] as const;
  const w = new RegTextWriter(opts.output);
  const why = opts.policy === 'newest' ? ' (newer write)' : ' (policy)';
  const winner = (key: string): RegistrySide => {
    if (opts.policy !== 'newest') return opts.policy === 'laptop' ? 'ours' : 'theirs';
    const o = opts.oursTimes?.get(key) ?? opts.oursTime;
    const t = opts.theirsTimes?.get(key) ?? opts.theirsTime;
    return o > t ? 'ours' : 'theirs';
  };
  /** Base keys one side deleted while the other kept them: which side deleted them. */
  const deletedBy = new Map<string, RegistrySide>();
  /** The merged keys above the current one: id and whether the base held it. */
  const chain: Array<{ id: string; inBase: boolean }> = [];
  for (;;) {
    let order: string | null = null;
    for (const c of cursors) if (c.key && (order === null || c.key.order < order)) order = c.key.order;
    if (order === null) break;
    const [bk, ok, tk] = cursors.map((c) => (c.key?.order === order ? c.key : undefined));
    const id = (bk ?? ok ?? tk)!.id;
    const keyDeleter: RegistrySide | null = bk && !ok && tk ? 'ours' : bk && ok && !tk ? 'theirs' : null;
    if (keyDeleter) deletedBy.set(id, keyDeleter);
    // The key itself, three-way: a side that left its presence as it was follows the other side.
    const present = !!ok === !!bk ? !!tk : !!ok;
    const path = (tk ?? ok ?? bk)!.path;
    const lines: string[] = [];
    for (const [n, b, o, t] of valueTriples(bk, ok, tk)) {
      let kept: TextValue | undefined;
      let from: RegistrySide;
      if (sameValueLine(o, b) || sameValueLine(t, b)) {
        [kept, from] = sameValueLine(o, b) ? [t, 'theirs'] : [o, 'ours'];
        if (!kept) stats.valuesDeleted += b ? 1 : 0;
        else if (sameValueLine(kept, b)) stats.valuesUnchanged++;
        else if (from === 'ours') stats.valuesFromOurs++;
        else stats.valuesFromTheirs++;
      } else if (sameValueLine(o, t)) {
        [kept, from] = [t, 'theirs'];
        if (!kept) stats.valuesDeleted++;
        else stats.valuesSameOnBoth++;
      } else if (!o || !t) {
        [kept, from] = o ? [o, 'ours'] : [t!, 'theirs'];
        if (from === 'ours') stats.valuesFromOurs++;
        else stats.valuesFromTheirs++;
        if (keyDeleter === null) {
          conflicts.push({
            kind: 'registry', path: valuePath(path, kept), reason: 'modify-delete', kept: from,
            resolution: `kept the ${sideName(from)}'s changed value; the ${sideName(otherSide(from))} had deleted it`,
          });
        }
      } else {
        from = winner(valueKey(id, n));
        kept = from === 'ours' ? o : t;
        if (from === 'ours') stats.valuesFromOurs++;
        else stats.valuesFromTheirs++;
        conflicts.push({
          kind: 'registry', path: valuePath(path, kept), reason: b ? 'both-modified' : 'both-added', kept: from,
          resolution: `kept the ${sideName(from)}'s value${why}; the ${sideName(otherSide(from))}'s dropped`,
        });
      }
      if (!kept) continue;
      lines.push(kept.line);
      if (keyDeleter) {
        conflicts.push({
          kind: 'registry', path: valuePath(path, kept), reason: 'key-deleted-value-modified', kept: otherSide(keyDeleter),
          resolution: `kept the key with the ${sideName(otherSide(keyDeleter))}'s changed value; the ${sideName(keyDeleter)} had deleted the key`,
        });
      }
    }
    for (const c of cursors) if (c.key?.order === order) c.next();
    if (!(present || lines.length > 0)) continue;
    w.key(path, lines);
    // A key the other side added below a key one side deleted keeps that key alive (as its parent):
    // report the topmost such new key once.
    while (chain.length > 0 && !id.startsWith(`${chain[chain.length - 1]!.id}\\`)) chain.pop();
    const up = parentId(id);
    const parent = chain[chain.length - 1];
    if (!bk && !(parent && parent.id === up && !parent.inBase)) {
      for (let a = up; a !== null; a = parentId(a)) {
        const deleter = deletedBy.get(a);
        if (!deleter) continue;
        conflicts.push({
          kind: 'registry', path, reason: 'key-deleted-value-modified', kept: otherSide(deleter),
          resolution: `kept the ${sideName(otherSide(deleter))}'s new key, and so the key above it that the ${sideName(deleter)} had deleted`,
        });
        break;
      }
    }
    chain.push({ id, inBase: !!bk });
  }
  return { text: opts.output ? w.text() : null, conflicts, stats };
}
