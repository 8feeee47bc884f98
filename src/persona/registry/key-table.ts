// KeyTable: registry keys by identity (upper-cased path), each spelled as Windows spells it, for both
// registry models (Registry's values and RegistryLines' canonical lines). Owns: a key's display path
// (a new key reuses the spelling of any held key sharing a prefix: Windows keeps a key's first
// spelling) and deleting a key with every key below it. Must not know: values or their encodings.
import { canonicalRoot, keyPathId } from './names.js';

export class KeyTable<R extends { path: string }> {
  readonly records = new Map<string, R>();
  /** For every prefix id of a held key: the display path of that prefix and how many held keys share it. */
  private readonly prefixes = new Map<string, { path: string; count: number }>();

  get size(): number {
    return this.records.size;
  }

  /** The record of `path`; when not held, `make(display path)` makes it. */
  record(path: string, make: (display: string) => R): R {
    const id = keyPathId(path);
    const existing = this.records.get(id);
    if (existing) return existing;
    const parts = canonicalRoot(path).split('\\');
    let display = '';
    let prefixId = '';
    for (let k = 0; k < parts.length; k++) {
      const partId = keyPathId(parts[k]!);
      prefixId = k === 0 ? partId : `${prefixId}\\${partId}`;
      const known = this.prefixes.get(prefixId);
      display = known ? known.path : k === 0 ? parts[0]! : `${display}\\${parts[k]!}`;
      if (known) known.count++;
      else this.prefixes.set(prefixId, { path: display, count: 1 });
    }
    const r = make(display);
    this.records.set(id, r);
    return r;
  }

  /** Deletes the key and every key below it; returns how many held keys went. A missing key is fine. */
  deleteKey(path: string): number {
    const id = keyPathId(path);
    if (!this.prefixes.has(id)) return 0;
    const below = `${id}\\`;
    let removed = 0;
    for (const rid of [...this.records.keys()]) {
      if (rid !== id && !rid.startsWith(below)) continue;
      this.records.delete(rid);
      removed++;
      const parts = rid.split('\\');
      let prefixId = '';
      for (let k = 0; k < parts.length; k++) {
        prefixId = k === 0 ? parts[0]! : `${prefixId}\\${parts[k]!}`;
        const p = this.prefixes.get(prefixId)!;
        if (--p.count === 0) this.prefixes.delete(prefixId);
      }
    }
    return removed;
  }

  /** A copy holding `copy` of each record. */
  clone(copy: (r: R) => R): KeyTable<R> {
    const t = new KeyTable<R>();
    for (const [id, r] of this.records) t.records.set(id, copy(r));
    for (const [id, p] of this.prefixes) t.prefixes.set(id, { ...p });
    return t;
  }
}
