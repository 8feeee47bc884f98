// The persona's registry as canonical .reg text, worked on line by line: building it from .reg files,
// walking it key by key, and the registry patch (what changed from one registry to the next, as a .reg
// file of changes) made on the laptop and applied on the server.
// Owns: the canonical text's layout (below), RegistryLines (a registry held as value lines, not value
// objects), RegTextCursor, makeRegistryPatch/applyRegistryPatch. Must not know: snapshots, merges,
// HTTP. The .reg codec (registry/) parses and writes every line; this module only cuts and orders them.
//
// Canonical text: what exportRegistry writes as v5 UTF-8 without BOM, '' for an empty registry:
//   "Windows Registry Editor Version 5.00\r\n" then per key "\r\n[PATH]\r\n" and one line per value
//   ("name"=... or @=..., a long hex value continued by "\\\r\n  "), then a final "\r\n". Keys sorted by
//   their id with '\' as the lowest character (parents first), values by name id (default first).
// Why lines: a 100,000-key registry held as Registry objects (one Uint8Array a value) took ~900 MB to
// import; as one string per value it takes a tenth of that, and two canonical texts compare key by key
// in one pass with no model at all.
// Terms: key id = keyPathId(path); value key = key id + NUL + value name id (NUL is in neither), the
// identity the per-value edit times are kept under.
import { CarryonError } from '../errors/index.js';
import { KeyTable } from './registry/key-table.js';
import { canonicalRoot, decodeRegSections, encodeRegValueLine, foldName, keyPathId, valueNameId, type RegDecodeOptions, type RegSection } from './registry/index.js';

export const REG_TEXT_HEADER = 'Windows Registry Editor Version 5.00\r\n';

/** The identity of a value: key id + NUL + value name id. */
export function valueKey(keyId: string, nameId: string): string {
  return `${keyId}\0${nameId}`;
}

/** Sort order of key ids: parents before children ('\' sorts lowest), then code-unit order. */
export function keyOrder(id: string): string {
  return id.replaceAll('\\', '\0');
}

const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** A canonical value line's head (`@=` or `"name"=`): its length, the name and the name's id. */
export function lineHead(line: string): { len: number; name: string | null; id: string } {
  if (line.charCodeAt(0) === 0x40) return { len: 2, name: null, id: '' };
  let name = '';
  let seg = 1;
  let i = 1;
  for (;;) {
    const c = line.charCodeAt(i);
    if (Number.isNaN(c)) throw new CarryonError('BAD_REQUEST', 'registry value line without a closing quote after its name');
    if (c === 0x22) break;
    if (c === 0x5c) {
      name += line.slice(seg, i);
      const e = line[i + 1];
      name += e === 'r' ? '\r' : e === 'n' ? '\n' : (e ?? '');
      i += 2;
      seg = i;
      continue;
    }
    i++;
  }
  name += line.slice(seg, i);
  if (line.charCodeAt(i + 1) !== 0x3d) throw new CarryonError('BAD_REQUEST', "registry value line without '=' after its name");
  return { len: i + 2, name: name === '' ? null : name, id: valueNameId(name) };
}

/** `line` written under the name spelling of `like` (a line for the same name id, so a head of the same length). */
function respell(line: string, like: string): string {
  const h = lineHead(like).len;
  return line.startsWith(like.slice(0, h)) ? line : like.slice(0, h) + line.slice(h);
}

// ---------------------------------------------------------------------------------------------------
// Building: .reg files applied as regedit applies them, held as lines

interface LineKey {
  path: string;
  /** Value name id -> canonical line. */
  values: Map<string, string>;
}

/**
 * A registry as regedit leaves it after importing .reg files, each value held as its canonical line.
 * The same semantics as Registry (names matched case-insensitively, a key's and a value's first
 * spelling kept, parents implicit), so `text()` equals exportRegistry's v5 UTF-8 output.
 */
/**
 * A key's value lines after edits: `base` (sorted by value id) with each of `edits` ([value id, line or
 * null for a deletion], sorted) put in, replacing the base's line of that id (keeping its spelling).
 */
function overlayValueLines(base: ReadonlyArray<{ id: string; line: string }>, edits: ReadonlyArray<readonly [string, string | null]>): string[] {
  const lines: string[] = [];
  for (let p = 0, q = 0; p < base.length || q < edits.length; ) {
    const x = base[p];
    const y = edits[q];
    const d = !y ? -1 : !x ? 1 : cmp(x.id, y[0]);
    if (d < 0) {
      lines.push(x!.line);
      p++;
    } else {
      if (y![1] !== null) lines.push(d === 0 ? respell(y![1], x!.line) : y![1]);
      if (d === 0) p++;
      q++;
    }
  }
  return lines;
}

export class RegistryLines {
  private readonly table = new KeyTable<LineKey>();

  private get keys(): Map<string, LineKey> {
    return this.table.records;
  }

  get size(): number {
    return this.keys.size;
  }

  private record(path: string): LineKey {
    return this.table.record(path, (display) => ({ path: display, values: new Map() }));
  }

  private deleteKey(path: string): void {
    this.table.deleteKey(path);
  }

  /** One decoded section, as regedit imports it. */
  apply(section: RegSection): void {
    if (section.kind === 'delete-key') {
      this.deleteKey(section.path);
      return;
    }
    const r = this.record(section.path);
    for (const v of section.values) {
      const id = valueNameId(v.name);
      if (v.kind === 'delete') {
        r.values.delete(id);
        continue;
      }
      const line = encodeRegValueLine(v, 'utf-8');
      const old = r.values.get(id);
      r.values.set(id, old === undefined ? line : respell(line, old));
    }
  }

  /** Apply a whole .reg file (any format regedit reads), one section at a time. */
  applyFile(bytes: Uint8Array, options: RegDecodeOptions = {}): this {
    decodeRegSections(bytes, (s) => this.apply(s), options);
    return this;
  }

  /** The canonical text; '' when no key is held. */
  text(): string {
    if (this.keys.size === 0) return '';
    const order = [...this.keys.keys()].map((id) => [keyOrder(id), id] as const).sort((a, b) => cmp(a[0], b[0]));
    // Paths are already spelled consistently (record), so the writer's respelling changes nothing.
    const w = new TextWriter();
    for (const [, id] of order) {
      const k = this.keys.get(id)!;
      w.key(k.path, [...k.values.keys()].sort(cmp).map((n) => k.values.get(n)!));
    }
    return w.text();
  }
}

/**
 * Any .reg file (either format, any encoding) as canonical registry text; '' when it holds no key.
 * A file whose keys come in canonical order (ours, and regedit's exports: Windows enumerates subkeys
 * sorted) with no `[-key]` goes straight to text, one key at a time; any other is built in a
 * RegistryLines first.
 */
export function canonicalRegistryText(bytes: Uint8Array, options: RegDecodeOptions = {}, count?: { sections: number }): string {
  const sorted = sortedFileText(bytes, options, count);
  if (sorted !== null) return sorted;
  const lines = new RegistryLines();
  if (count) count.sections = 0;
  decodeRegSections(bytes, (s) => {
    if (count) count.sections++;
    lines.apply(s);
  }, options);
  return lines.text();
}

const UNSORTED = new Error('unsorted');

/** canonicalRegistryText of a file in canonical key order, or null when it is not in that order. */
function sortedFileText(bytes: Uint8Array, options: RegDecodeOptions, count?: { sections: number }): string | null {
  const w = new TextWriter();
  let cur: { path: string; id: string; order: string; values: Map<string, string> } | null = null;
  const flush = (): void => {
    if (cur) w.key(cur.path, [...cur.values.entries()].sort((a, b) => cmp(a[0], b[0])).map((e) => e[1]));
  };
  try {
    decodeRegSections(bytes, (s) => {
      if (count) count.sections++;
      if (s.kind === 'delete-key') throw UNSORTED;
      const id = keyPathId(s.path);
      if (cur?.id !== id) {
        const order = keyOrder(id);
        if (cur && !(cur.order < order)) throw UNSORTED;
        flush();
        cur = { path: s.path, id, order, values: new Map() };
      }
      for (const v of s.values) {
        const n = valueNameId(v.name);
        if (v.kind === 'delete') {
          cur.values.delete(n);
          continue;
        }
        const line = encodeRegValueLine(v, 'utf-8');
        const old = cur.values.get(n);
        cur.values.set(n, old === undefined ? line : respell(line, old));
      }
    }, options);
  } catch (err) {
    if (err === UNSORTED) return null;
    throw err;
  }
  flush();
  return w.text();
}

/** Canonical text as regedit writes a file: UTF-16LE with a BOM (the same text, so the same CRLF layout). */
export function registryTextFileBytes(text: string): Buffer {
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text === '' ? REG_TEXT_HEADER + '\r\n' : text, 'utf16le')]);
}

// ---------------------------------------------------------------------------------------------------
// Walking canonical text

export interface TextValue {
  /** Value name id. */
  id: string;
  /** Length of the line's head (`"name"=`): the data part is line.slice(head). */
  head: number;
  line: string;
}

export interface TextKey {
  id: string;
  order: string;
  path: string;
  values: TextValue[];
}

/** The same value data (type and bytes), whatever the name's spelling; missing equals missing. */
export function sameValueLine(a: TextValue | undefined, b: TextValue | undefined): boolean {
  if (!a || !b) return a === b;
  if (a.line === b.line) return true;
  return a.line.length - a.head === b.line.length - b.head && a.line.slice(a.head) === b.line.slice(b.head);
}

function notCanonical(what: string, at: number, why: string): CarryonError {
  return new CarryonError('BAD_REQUEST', `${what} is not canonical registry text (offset ${at}: ${why})`, { offset: at, notCanonical: true });
}

/**
 * fn(text), or when text turns out not to be canonical, fn(its canonical form): canonical text (all
 * that carryon writes) is walked once instead of checked first and walked again.
 */
export function withCanonical<T>(text: string, what: string, fn: (canonical: string) => T): T {
  try {
    return fn(text);
  } catch (err) {
    if (!(err instanceof CarryonError && err.data.notCanonical === true)) throw err;
    return fn(canonicalForm(text, what));
  }
}

/** Key by key through canonical text, checking its layout and order as it goes. */
export class RegTextCursor {
  private pos = 0;
  key: TextKey | null = null;

  constructor(private readonly text: string, private readonly what = 'registry') {
    if (text !== '') {
      if (!text.startsWith(REG_TEXT_HEADER)) throw notCanonical(what, 0, 'no v5 header line');
      this.pos = REG_TEXT_HEADER.length;
    }
    this.next();
  }

  /** Moves to the next key; null after the last. */
  next(): TextKey | null {
    const t = this.text;
    const prev = this.key;
    if (t === '' || (this.pos === t.length - 2 && t.endsWith('\r\n'))) {
      if (t !== '' && prev === null && this.pos === REG_TEXT_HEADER.length) throw notCanonical(this.what, this.pos, 'a header with no key');
      this.pos = t.length;
      return (this.key = null);
    }
    if (!t.startsWith('\r\n[', this.pos)) throw notCanonical(this.what, this.pos, "expected a blank line and '['");
    const lineEnd = t.indexOf('\r\n', this.pos + 3);
    if (lineEnd < 0 || t.charCodeAt(lineEnd - 1) !== 0x5d) throw notCanonical(this.what, this.pos, "a key line without ']'");
    const path = t.slice(this.pos + 3, lineEnd - 1);
    this.pos = lineEnd + 2;
    const values: TextValue[] = [];
    while (this.pos < t.length && t.charCodeAt(this.pos) !== 0x0d) {
      let end = t.indexOf('\r\n', this.pos);
      while (end > 0 && t.charCodeAt(end - 1) === 0x5c && t.startsWith('  ', end + 2)) end = t.indexOf('\r\n', end + 2);
      if (end < 0) throw notCanonical(this.what, this.pos, 'a value line without CRLF');
      const line = t.slice(this.pos, end);
      const c = line.charCodeAt(0);
      if (c !== 0x22 && c !== 0x40) throw notCanonical(this.what, this.pos, 'a line that is neither a key nor a value');
      const h = lineHead(line);
      if (values.length > 0 && !(values[values.length - 1]!.id < h.id)) throw notCanonical(this.what, this.pos, 'values out of order');
      values.push({ id: h.id, head: h.len, line });
      this.pos = end + 2;
    }
    const id = keyPathId(path);
    const order = keyOrder(id);
    if (prev && !(prev.order < order)) throw notCanonical(this.what, lineEnd, 'keys out of order');
    return (this.key = { id, order, path, values });
  }
}

/** Whether `text` is canonical registry text in layout and order (values are not re-encoded to check). */
export function isCanonicalRegistryText(text: string): boolean {
  try {
    for (const c = new RegTextCursor(text); c.key; c.next());
    return true;
  } catch (err) {
    if (err instanceof CarryonError) return false;
    throw err;
  }
}

/**
 * `text` itself when it is canonical, else its canonical form (text stored before the layout was
 * relied on, or written by hand); a parse error is BAD_REQUEST prefixed with `what`.
 */
export function canonicalForm(text: string, what: string): string {
  if (isCanonicalRegistryText(text)) return text;
  try {
    return canonicalRegistryText(Buffer.from(text, 'utf8'), { encoding: 'utf-8' });
  } catch (err) {
    if (err instanceof CarryonError) throw new CarryonError('BAD_REQUEST', `${what}: ${err.message}`, { ...err.data, cause: err.code }, err);
    throw err;
  }
}

/**
 * Writes canonical text key by key. A key's path takes, for each leading component it shares with
 * the key written just before (case-insensitively), that key's spelling; then with `peek` (the next
 * key of the registry it is added to), that one's: so a prefix keeps one spelling, as in Registry.
 */
class TextWriter {
  private readonly parts: string[] = [REG_TEXT_HEADER];
  /** Joined runs of parts: lines become garbage young instead of living until the end (~100 MB less at 100,000 keys). */
  private readonly chunks: string[] = [];
  private keys = 0;
  private prevIds: string[] = [];
  private prevParts: string[] = [];

  constructor(private readonly enabled = true) {}

  key(path: string, lines: readonly string[], peek?: string): void {
    if (!this.enabled) return;
    this.parts.push('\r\n[', this.spell(path, peek), ']\r\n');
    for (const l of lines) this.parts.push(l, '\r\n');
    this.keys++;
    if (this.parts.length >= 8192) {
      this.chunks.push(this.parts.join(''));
      this.parts.length = 0;
    }
  }

  /** The path as the next key would be written (see the class comment); it becomes the key written before. */
  spell(path: string, peek?: string): string {
    const parts = canonicalRoot(path).split('\\');
    const ids = parts.map(foldName);
    let k = 0;
    while (k < parts.length && k < this.prevIds.length && ids[k] === this.prevIds[k]) {
      parts[k] = this.prevParts[k]!;
      k++;
    }
    if (peek !== undefined && k < parts.length) {
      const pp = peek.split('\\');
      let m = 0;
      while (m < parts.length && m < pp.length && foldName(pp[m]!) === ids[m]) m++;
      for (let j = k; j < m; j++) parts[j] = pp[j]!;
    }
    this.prevIds = ids;
    this.prevParts = parts;
    return parts.join('\\');
  }

  text(): string {
    if (this.keys === 0) return '';
    this.parts.push('\r\n');
    this.chunks.push(this.parts.join(''));
    this.parts.length = 0;
    return this.chunks.join('');
  }
}

export { TextWriter as RegTextWriter };

// ---------------------------------------------------------------------------------------------------
// The patch

/** One value edit of a patch, in patch order: the value key and its new line, or null for a deletion. */
export interface RegistryPatchEdit {
  key: string;
  line: string | null;
}

export interface RegistryPatch {
  /** A .reg file (v5, UTF-8, CRLF) of `[-key]` deletions and `[key]` sections of `"name"=...` and `"name"=-`; '' when nothing changed. */
  text: string;
  /** Its value edits in file order (the per-value edit times go in this order). */
  edits: RegistryPatchEdit[];
  /**
   * Applying it to the base gives `ours` exactly (no spelling of ours that applying would change), so
   * the caller may take `ours` instead of applying.
   */
  exact: boolean;
}

/**
 * What turns canonical text `base` into `ours`: keys only in base deleted (`[-key]`, which deletes
 * the subtree, so a key of ours below one is written whole after it), keys only in ours written
 * whole, values changed or added set, values gone deleted. A key's or value's spelling is not a
 * change (Windows compares names case-insensitively; applying keeps the base's spelling).
 */
export function makeRegistryPatch(baseText: string, oursText: string): RegistryPatch {
  const b = new RegTextCursor(baseText, 'base registry');
  const o = new RegTextCursor(oursText, "laptop's registry");
  const parts: string[] = [];
  const edits: RegistryPatchEdit[] = [];
  let deleted: string | null = null; // order of the last key deleted whole, + NUL
  // The spelling applying would give each key of ours (registry-text's writer rules), to tell `exact`.
  const speller = new TextWriter(false);
  let exact = true;
  const under = (order: string): boolean => deleted !== null && order.startsWith(deleted);
  while (b.key || o.key) {
    const bk = b.key;
    const ok = o.key;
    const c = !ok ? -1 : !bk ? 1 : cmp(bk.order, ok.order);
    if (c < 0) {
      if (!under(bk!.order)) {
        parts.push('\r\n[-', bk!.path, ']\r\n');
        deleted = `${bk!.order}\0`;
      }
      b.next();
      continue;
    }
    if (c > 0 || under(ok!.order)) {
      if (c === 0) b.next();
      if (speller.spell(ok!.path, b.key?.path) !== ok!.path) exact = false;
      parts.push('\r\n[', ok!.path, ']\r\n');
      for (const v of ok!.values) {
        parts.push(v.line, '\r\n');
        edits.push({ key: valueKey(ok!.id, v.id), line: v.line });
      }
      o.next();
      continue;
    }
    if (speller.spell(bk!.path) !== ok!.path) exact = false;
    const lines: string[] = [];
    const bv = bk!.values;
    const ov = ok!.values;
    for (let i = 0, j = 0; i < bv.length || j < ov.length; ) {
      const x = bv[i];
      const y = ov[j];
      const d = !y ? -1 : !x ? 1 : cmp(x.id, y.id);
      if (d < 0) {
        lines.push(`${x!.line.slice(0, x!.head)}-`);
        edits.push({ key: valueKey(bk!.id, x!.id), line: null });
        i++;
      } else if (d > 0) {
        lines.push(y!.line);
        edits.push({ key: valueKey(ok!.id, y!.id), line: y!.line });
        j++;
      } else {
        if (x!.head !== y!.head || !y!.line.startsWith(x!.line.slice(0, x!.head))) exact = false;
        if (!sameValueLine(x, y)) {
          lines.push(y!.line);
          edits.push({ key: valueKey(ok!.id, y!.id), line: y!.line });
        }
        i++;
        j++;
      }
    }
    if (lines.length > 0) {
      parts.push('\r\n[', ok!.path, ']\r\n');
      for (const l of lines) parts.push(l, '\r\n');
    }
    b.next();
    o.next();
  }
  if (parts.length === 0) return { text: '', edits: [], exact };
  parts.unshift(REG_TEXT_HEADER);
  parts.push('\r\n');
  return { text: parts.join(''), edits, exact };
}

interface PatchKey {
  path: string;
  id: string;
  order: string;
  /** Value name id -> new line, or null: deleted. */
  values: Map<string, string | null>;
}

/**
 * Applies a registry patch (untrusted: parsed strictly, every value re-encoded canonically) to the
 * canonical text `base`, as regedit would import it, giving canonical text. Also returns the patch's
 * value edits in file order. The patch must be a v5 .reg file in UTF-8; '' changes nothing.
 */
export function applyRegistryPatch(baseText: string, patch: string, opts: { edits?: boolean } = {}): AppliedChanges {
  if (patch === '') return { text: baseText, edits: [], editCount: 0 };
  return applyRegChanges(baseText, Buffer.from(patch, 'utf8'), { encoding: 'utf-8' }, true, undefined, opts.edits ?? true);
}

/** What applying a file of changes gave: the text, and the value edits in file order (only their number when not asked for). */
export interface AppliedChanges {
  text: string;
  edits: RegistryPatchEdit[];
  editCount: number;
}

/** The value keys a patch edits, in its order (its times go with them). */
export function registryPatchEditKeys(patch: string): string[] {
  const keys: string[] = [];
  if (patch === '') return keys;
  decodeRegSections(Buffer.from(patch, 'utf8'), (s) => {
    if (s.kind === 'key') for (const v of s.values) keys.push(valueKey(keyPathId(s.path), valueNameId(v.name)));
  }, { encoding: 'utf-8' });
  return keys;
}

/**
 * A .reg file of changes (any format regedit reads: `carryon persona reg import`) applied to canonical
 * text as regedit imports it; parse errors pass through with their line and column. `only`: sections
 * it returns false for are skipped (keys outside a desktop's registry scope); it may see a section twice.
 */
export function applyRegFileToText(baseText: string, bytes: Uint8Array, options: RegDecodeOptions = {}, count?: { sections: number }, only?: (s: RegSection) => boolean): string {
  return applyRegChanges(baseText, bytes, options, false, count, false, only).text;
}

function applyRegChanges(baseText: string, bytes: Uint8Array, options: RegDecodeOptions, isPatch: boolean, count?: { sections: number }, keep = true, only?: (s: RegSection) => boolean): AppliedChanges {
  try {
    const sorted = applySorted(baseText, bytes, options, isPatch, count, keep, only);
    if (sorted) return sorted;
  } catch (err) {
    if (isPatch && err instanceof CarryonError) throw new CarryonError('BAD_REQUEST', `the registry patch is not a valid .reg file: ${err.message}`, { ...err.data, cause: err.code }, err);
    throw err;
  }
  if (count) count.sections = 0;
  return applyOverlay(baseText, bytes, options, isPatch, count, keep, only);
}

/** decodeRegSections, passing on only the sections `only` keeps. */
function decodeSome(bytes: Uint8Array, onSection: (s: RegSection) => void, options: RegDecodeOptions, only?: (s: RegSection) => boolean): ReturnType<typeof decodeRegSections> {
  return decodeRegSections(bytes, only ? (s) => {
    if (only(s)) onSection(s);
  } : onSection, options);
}

/**
 * applyRegChanges for a file whose sections come in canonical key order, each key once (what
 * makeRegistryPatch writes): one pass over the base and the file together, holding no overlay. Null
 * when the file is not in that order (after which the overlay does the work).
 */
function applySorted(baseText: string, bytes: Uint8Array, options: RegDecodeOptions, isPatch: boolean, count: { sections: number } | undefined, keep: boolean, only?: (s: RegSection) => boolean): AppliedChanges | null {
  const b = new RegTextCursor(baseText, 'base registry');
  const w = new TextWriter();
  const edits: RegistryPatchEdit[] = [];
  let editCount = 0;
  const edit = (key: string, n: string, line: string | null): void => {
    editCount++;
    if (keep) edits.push({ key: valueKey(key, n), line });
  };
  /** Orders of the `[-key]` sections whose subtree the walk is in, outermost first. */
  const deleted: string[] = [];
  const under = (order: string): boolean => {
    while (deleted.length > 0) {
      const top = deleted[deleted.length - 1]!;
      if (order === top || order.startsWith(`${top}\0`)) return true;
      deleted.pop();
    }
    return false;
  };
  const emitBaseBefore = (order: string | null): void => {
    for (let k = b.key; k && (order === null || k.order < order); k = b.next()) if (!under(k.order)) w.key(k.path, k.values.map((v) => v.line));
  };
  let prev: string | null = null;
  let version: string;
  try {
    ({ version } = decodeSome(bytes, (s) => {
      if (count) count.sections++;
      const id = keyPathId(s.path);
      const order = keyOrder(id);
      if (prev !== null && !(prev < order)) throw UNSORTED;
      prev = order;
      emitBaseBefore(order);
      if (s.kind === 'delete-key') {
        under(order);
        deleted.push(order);
        return;
      }
      const mine = new Map<string, string | null>();
      for (const v of s.values) {
        const n = valueNameId(v.name);
        if (v.kind === 'delete') {
          mine.set(n, null);
          edit(id, n, null);
          continue;
        }
        const old = mine.get(n);
        const line = old ? respell(encodeRegValueLine(v, 'utf-8'), old) : encodeRegValueLine(v, 'utf-8');
        mine.set(n, line);
        edit(id, n, line);
      }
      const ev = [...mine.entries()].sort((x, y) => cmp(x[0], y[0]));
      const bk = b.key?.order === order ? b.key : undefined;
      const gone = under(order);
      const bv = bk && !gone ? bk.values : [];
      const lines = overlayValueLines(bv, ev);
      if (bk) b.next();
      w.key(bk && !gone ? bk.path : canonicalRoot(s.path), lines, bk && !gone ? undefined : b.key?.path);
    }, options, only));
  } catch (err) {
    if (err === UNSORTED) return null;
    throw err;
  }
  if (isPatch && version !== 'v5') throw new CarryonError('BAD_REQUEST', 'the registry patch must be a "Windows Registry Editor Version 5.00" file');
  emitBaseBefore(null);
  return { text: w.text(), edits, editCount };
}

function applyOverlay(baseText: string, bytes: Uint8Array, options: RegDecodeOptions, isPatch: boolean, count: { sections: number } | undefined, keep: boolean, only?: (s: RegSection) => boolean): AppliedChanges {
  const keys = new Map<string, PatchKey>();
  const deletions = new Set<string>();
  const edits: RegistryPatchEdit[] = [];
  let editCount = 0;
  const edit = (key: string, n: string, line: string | null): void => {
    editCount++;
    if (keep) edits.push({ key: valueKey(key, n), line });
  };
  const deletedAt = (id: string): boolean => {
    if (deletions.size === 0) return false;
    for (let a = id; ; ) {
      if (deletions.has(a)) return true;
      const i = a.lastIndexOf('\\');
      if (i < 0) return false;
      a = a.slice(0, i);
    }
  };
  let version: string;
  try {
    ({ version } = decodeSome(bytes, (s) => {
      if (count) count.sections++;
      const id = keyPathId(s.path);
      if (s.kind === 'delete-key') {
        for (const k of [...keys.keys()]) if (k === id || k.startsWith(`${id}\\`)) keys.delete(k);
        deletions.add(id);
        return;
      }
      let k = keys.get(id);
      if (!k) keys.set(id, (k = { path: canonicalRoot(s.path), id, order: keyOrder(id), values: new Map() }));
      for (const v of s.values) {
        const n = valueNameId(v.name);
        if (v.kind === 'delete') {
          k.values.set(n, null);
          edit(id, n, null);
          continue;
        }
        const old = k.values.get(n);
        const line = old ? respell(encodeRegValueLine(v, 'utf-8'), old) : encodeRegValueLine(v, 'utf-8');
        k.values.set(n, line);
        edit(id, n, line);
      }
    }, options, only));
  } catch (err) {
    if (isPatch && err instanceof CarryonError) throw new CarryonError('BAD_REQUEST', `the registry patch is not a valid .reg file: ${err.message}`, { ...err.data, cause: err.code }, err);
    throw err;
  }
  if (isPatch && version !== 'v5') throw new CarryonError('BAD_REQUEST', 'the registry patch must be a "Windows Registry Editor Version 5.00" file');
  const sorted = [...keys.values()].sort((x, y) => cmp(x.order, y.order));
  const b = new RegTextCursor(baseText, 'base registry');
  const w = new TextWriter();
  let i = 0;
  while (b.key || i < sorted.length) {
    const bk = b.key;
    const e = sorted[i];
    const c = !e ? -1 : !bk ? 1 : cmp(bk.order, e.order);
    if (c < 0) {
      if (!deletedAt(bk!.id)) w.key(bk!.path, bk!.values.map((v) => v.line));
      b.next();
      continue;
    }
    if (c > 0) {
      const lines = [...e!.values.entries()].filter(([, l]) => l !== null).sort((x, y) => cmp(x[0], y[0])).map(([, l]) => l!);
      w.key(e!.path, lines, bk?.path);
      i++;
      continue;
    }
    const gone = deletedAt(bk!.id);
    const bv = gone ? [] : bk!.values;
    const ev = [...e!.values.entries()].sort((x, y) => cmp(x[0], y[0]));
    const lines = overlayValueLines(bv, ev);
    b.next();
    w.key(gone ? e!.path : bk!.path, lines, gone ? b.key?.path : undefined);
    i++;
  }
  return { text: w.text(), edits, editCount };
}

/** How many keys canonical text holds. */
export function countRegistryKeys(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\r\n\r\n['); i >= 0; i = text.indexOf('\r\n\r\n[', i + 4)) n++;
  return n;
}

/**
 * The lines of the given values in canonical text (value key -> line; absent: no such value), in one
 * pass that keeps only those.
 */
export function lookupValueLines(text: string, wanted: ReadonlySet<string>, what = 'registry'): Map<string, TextValue> {
  const out = new Map<string, TextValue>();
  if (wanted.size === 0) return out;
  const keyIds = new Set([...wanted].map((k) => k.slice(0, k.indexOf('\0'))));
  for (const c = new RegTextCursor(text, what); c.key; c.next()) {
    if (!keyIds.has(c.key.id)) continue;
    for (const v of c.key.values) {
      const k = valueKey(c.key.id, v.id);
      if (wanted.has(k)) out.set(k, v);
    }
  }
  return out;
}
