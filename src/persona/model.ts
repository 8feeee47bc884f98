// The persona snapshot: a user's profile folder as a file tree manifest, plus their registry.
// Owns: the entry and snapshot types, their validation, and the canonical encoding whose SHA-256 is a
// snapshot's id (so persona versions are content-addressed like disk manifests).
// Must not know: the file system, stores, HTTP. Paths here are already validated (see paths.ts).
import { createHash } from 'node:crypto';
import { CarryonError, shownValue } from '../errors/index.js';
import { parseJson } from '../json/index.js';
import { isBlockId, sha256, type BlockId } from '../hash/index.js';
import { checkPersonaPath, checkSymlinkTarget, personaPathKey } from './paths.js';
import { applyToRegistry, decodeRegFile, decodeRegSections, keyPathId, Registry, valueNameId } from './registry/index.js';
import { applyRegistryPatch, canonicalForm, registryPatchEditKeys, withCanonical, isCanonicalRegistryText, makeRegistryPatch, valueKey, type RegistryPatch } from './registry-text.js';

export const PERSONA_FORMAT = 'carryon-persona';
export const PERSONA_VERSION = 1;
/** File contents are stored as chunks of this size (the last one shorter), each a content-addressed block. */
export const PERSONA_CHUNK_BYTES = 1024 * 1024;

export type PersonaEntryKind = 'file' | 'dir' | 'symlink';

export interface PersonaEntry {
  /** Relative to the profile root, '/'-separated, NFC, no '.', '..' or empty components. */
  path: string;
  kind: PersonaEntryKind;
  /** Permission bits (mode & 0o777). */
  mode: number;
  /** Modification time, integer milliseconds since the epoch. */
  mtimeMs: number;
  /** Files: content length in bytes; directories and symlinks: 0. */
  size: number;
  /** Files: SHA-256 of the whole content; others: null. */
  hash: BlockId | null;
  /** Files: ids of the content's PERSONA_CHUNK_BYTES chunks, in order (empty for an empty file). */
  chunks: BlockId[];
  /** Symlinks: the target, relative, resolving inside the profile. */
  target?: string;
}

export interface PersonaSnapshot {
  /** Sorted by path (code-unit order), unique case-insensitively. */
  files: PersonaEntry[];
  /** The registry as canonical .reg text (UTF-8 "Windows Registry Editor Version 5.00"), or '' for none. */
  registry: string;
}

/**
 * The canonical encoding's pieces, in order: JSON with a fixed key order, entries sorted, the registry
 * last and escaped a slice at a time, so a large registry is never held twice more as one JSON string.
 */
function* encodedPieces(p: PersonaSnapshot): Generator<Buffer> {
  const files = [...p.files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)).map((e) => ({
    path: e.path, kind: e.kind, mode: e.mode, mtimeMs: e.mtimeMs, size: e.size, hash: e.hash, chunks: e.chunks, ...(e.kind === 'symlink' ? { target: e.target } : {}),
  }));
  const head = JSON.stringify({ format: PERSONA_FORMAT, version: PERSONA_VERSION, files });
  yield Buffer.from(`${head.slice(0, -1)},"registry":"`);
  const r = p.registry;
  for (let i = 0; i < r.length; ) {
    let end = Math.min(r.length, i + REGISTRY_SLICE_CHARS);
    // Never between the halves of a surrogate pair: JSON.stringify would escape each half alone.
    const last = r.charCodeAt(end - 1);
    if (end < r.length && last >= 0xd800 && last <= 0xdbff) end--;
    yield Buffer.from(JSON.stringify(r.slice(i, end)).slice(1, -1));
    i = end;
  }
  yield Buffer.from('"}');
}

const REGISTRY_SLICE_CHARS = 1 << 20;

/**
 * The canonical encoding: JSON with a fixed key order, entries sorted; its SHA-256 is the snapshot id.
 * Two passes over the pieces (measure, then copy) so only the result is held, not it and its pieces.
 */
export function encodePersona(p: PersonaSnapshot): Buffer {
  let n = 0;
  for (const piece of encodedPieces(p)) n += piece.length;
  const out = Buffer.allocUnsafe(n);
  let at = 0;
  for (const piece of encodedPieces(p)) at += piece.copy(out, at);
  return out;
}

export function personaId(encoded: Uint8Array): BlockId {
  return sha256(encoded).toString('hex');
}

/** personaId(encodePersona(p)) without holding the encoding. */
export function personaSnapshotId(p: PersonaSnapshot): BlockId {
  const h = createHash('sha256');
  for (const piece of encodedPieces(p)) h.update(piece);
  return h.digest('hex');
}

/** Decode and validate a snapshot from an untrusted source; every problem is BAD_REQUEST naming the entry. */
export function decodePersona(buf: Uint8Array, maxBytes = 256 * 1024 * 1024): PersonaSnapshot {
  const bad = (why: string, data: Record<string, unknown> = {}): CarryonError => new CarryonError('BAD_REQUEST', `persona snapshot is invalid: ${why}`, data);
  if (buf.length > maxBytes) throw new CarryonError('PAYLOAD_TOO_LARGE', `persona snapshot of ${buf.length} bytes is over ${maxBytes}`);
  let raw: unknown;
  try {
    raw = parseJson(buf, 'persona snapshot');
  } catch (err) {
    throw bad((err as Error).message.replace(/^persona snapshot /, ''));
  }
  const o = raw as { format?: unknown; version?: unknown; files?: unknown; registry?: unknown };
  if (o?.format !== PERSONA_FORMAT) throw bad('wrong format name');
  if (o.version !== PERSONA_VERSION) throw bad(`unsupported version ${shownValue(o.version)}`);
  if (!Array.isArray(o.files)) throw bad('files is not a list');
  if (typeof o.registry !== 'string') throw bad('registry is not text');
  const seen = new Set<string>();
  const files: PersonaEntry[] = o.files.map((f: unknown, i: number) => {
    const e = f as Record<string, unknown>;
    const where = { index: i, path: typeof e?.path === 'string' ? e.path.slice(0, 300) : null };
    if (typeof e?.path !== 'string' || e.path.length === 0) throw bad(`entry ${i} has no path`, where);
    const checked = (check: () => string): string => {
      try {
        return check();
      } catch (err) {
        if (!(err instanceof CarryonError)) throw err;
        throw bad(`entry ${i}: ${err.message}`, { ...where, rule: err.data.rule });
      }
    };
    if (checked(() => checkPersonaPath(e.path as string)) !== e.path) throw bad(`${e.path}: path is not in Unicode NFC`, where);
    if (e.kind !== 'file' && e.kind !== 'dir' && e.kind !== 'symlink') throw bad(`${e.path}: unknown kind`, where);
    for (const k of ['mode', 'mtimeMs', 'size'] as const) if (!Number.isSafeInteger(e[k]) || (e[k] as number) < 0) throw bad(`${e.path}: ${k} is not a non-negative integer`, where);
    const hash = e.hash ?? null;
    const chunks = e.chunks ?? [];
    if (e.kind === 'file') {
      if (!isBlockId(hash)) throw bad(`${e.path}: file without a content hash`, where);
      if (!Array.isArray(chunks) || !chunks.every(isBlockId)) throw bad(`${e.path}: chunks are not block ids`, where);
      if (chunks.length !== Math.ceil((e.size as number) / PERSONA_CHUNK_BYTES)) throw bad(`${e.path}: ${chunks.length} chunks for ${String(e.size)} bytes`, where);
    } else if (hash !== null || !Array.isArray(chunks) || chunks.length > 0 || e.size !== 0) {
      throw bad(`${e.path}: only files have content`, where);
    }
    if (e.kind === 'symlink' && typeof e.target !== 'string') throw bad(`${e.path}: symlink without a target`, where);
    if (e.kind === 'symlink' && checked(() => checkSymlinkTarget(e.path as string, e.target as string)) !== e.target) throw bad(`${e.path}: symlink target is not in Unicode NFC`, where);
    const key = personaPathKey(e.path);
    if (seen.has(key)) throw bad(`${e.path}: two entries with this name (compared case-insensitively)`, where);
    seen.add(key);
    return {
      path: e.path, kind: e.kind, mode: (e.mode as number) & 0o777, mtimeMs: e.mtimeMs as number, size: e.size as number,
      hash: hash as BlockId | null, chunks: chunks as BlockId[], ...(e.kind === 'symlink' ? { target: e.target as string } : {}),
    };
  });
  return { files, registry: o.registry };
}

/**
 * What changed from one snapshot to the next, for sending: the entries added or changed, the paths
 * removed, and the registry's changes as a patch (registry-text.ts: a .reg file of values set and
 * deleted and keys deleted) with each value edit's time of change. `baseId` and `id` name both ends,
 * so the receiver can check that applying it to its copy of the base rebuilds exactly the sender's
 * snapshot. The sender's registry must be what the patch makes of the base's (scanPersona makes it so).
 * Version 1 of this format (before registryPatch) carried `registry`: the whole text, or null when
 * unchanged; applySnapshotDelta still reads it, its values all dated by push.json's editedAt.
 */
export interface PersonaDelta {
  baseId: BlockId;
  id: BlockId;
  upsert: PersonaEntry[];
  remove: string[];
  /** The registry patch; '' when the registry did not change. */
  registryPatch: string;
  /** Per value edit of the patch, in its order: when the laptop first saw that value change (ms since the epoch). */
  registryTimes: number[];
}

const sameEntry = (a: PersonaEntry, b: PersonaEntry): boolean =>
  a.kind === b.kind && a.mode === b.mode && a.mtimeMs === b.mtimeMs && a.size === b.size && a.hash === b.hash && a.target === b.target &&
  a.chunks.length === b.chunks.length && a.chunks.every((c, i) => c === b.chunks[i]);

/**
 * The delta from `base` to `next`. `opts.baseId` spares encoding the base again; `opts.patch` and
 * `opts.times` give the registry patch and its times when the caller has them (else the patch is
 * made here and every value edit is dated `opts.time`, default 0).
 */
export function diffSnapshots(base: PersonaSnapshot, next: PersonaSnapshot, opts: { baseId?: BlockId; patch?: RegistryPatch; times?: number[]; time?: number } = {}): PersonaDelta {
  const before = new Map(base.files.map((e) => [e.path, e]));
  const after = new Set(next.files.map((e) => e.path));
  const patch = opts.patch ?? (next.registry === base.registry ? { text: '', edits: [], exact: true } : makeRegistryPatch(canonicalForm(base.registry, 'base registry'), canonicalForm(next.registry, "laptop's registry")));
  return {
    baseId: opts.baseId ?? personaSnapshotId(base),
    id: personaSnapshotId(next),
    upsert: next.files.filter((e) => !before.has(e.path) || !sameEntry(before.get(e.path)!, e)),
    remove: base.files.filter((e) => !after.has(e.path)).map((e) => e.path),
    registryPatch: patch.text,
    registryTimes: opts.times ?? patch.edits.map(() => opts.time ?? 0),
  };
}

const ENTRY_FIELDS = ['path', 'kind', 'mode', 'mtimeMs', 'size', 'hash', 'chunks', 'target'] as const;

/**
 * An upserted entry cut down to the fields of an entry, each a JSON primitive (chunks: a list of them),
 * before the candidate is written out as JSON: other fields, and values nested thousands deep (which
 * overflow JSON.stringify's stack), never reach it. decodePersona then checks the values themselves.
 */
function entryFields(e: Record<string, unknown>, bad: (why: string) => CarryonError): PersonaEntry {
  const flat = (v: unknown): boolean => v === null || typeof v !== 'object';
  const out: Record<string, unknown> = {};
  for (const k of ENTRY_FIELDS) {
    const v = e[k];
    if (v === undefined) continue;
    if (!(flat(v) || (k === 'chunks' && Array.isArray(v) && v.every(flat)))) throw bad(`entry ${JSON.stringify(shownValue(e.path, 200))}: ${k} is not a ${k === 'chunks' ? 'list of ' : ''}plain value`);
    out[k] = v;
  }
  return out as unknown as PersonaEntry;
}

/** What applySnapshotDelta rebuilt: the sender's snapshot, its encoding, and its registry values' times of change. */
export interface AppliedDelta {
  snapshot: PersonaSnapshot;
  /** Its id (personaId of its encoding). */
  id: BlockId;
  /**
   * Per value key the patch changed: when the laptop changed it; null for a version 1 delta (no
   * per-value times). Built on demand: only a merge needs it.
   */
  registryTimes: () => Map<string, number> | null;
}

/**
 * Rebuild the sender's snapshot from our copy of the base; anything inconsistent is BAD_REQUEST.
 * `baseId`: the base's id when the caller knows it (else the base is encoded again to get it).
 */
export function applySnapshotDelta(base: PersonaSnapshot, raw: unknown, baseId?: BlockId): AppliedDelta {
  const d = raw as Partial<PersonaDelta & { registry: unknown }> | null;
  const bad = (why: string): CarryonError => new CarryonError('BAD_REQUEST', `persona delta is invalid: ${why}`);
  if (!d || !isBlockId(d.baseId) || !isBlockId(d.id) || !Array.isArray(d.upsert) || !Array.isArray(d.remove)) throw bad('missing fields');
  const v2 = 'registryPatch' in d;
  if (v2 && (typeof d.registryPatch !== 'string' || !Array.isArray(d.registryTimes) || !d.registryTimes.every((t) => Number.isSafeInteger(t) && t >= 0))) {
    throw bad('registryPatch must be text and registryTimes a list of times in ms');
  }
  if (!v2 && d.registry !== null && typeof d.registry !== 'string') throw bad('registry must be text or null');
  if ((baseId ?? personaSnapshotId(base)) !== d.baseId) throw bad('it was made against another base version');
  const files = new Map(base.files.map((e) => [e.path, e]));
  for (const p of d.remove) {
    if (typeof p !== 'string' || !files.delete(p)) throw bad(`removes ${JSON.stringify(shownValue(p, 200))}, which the base does not hold`);
  }
  for (const e of d.upsert) {
    if (typeof (e as PersonaEntry)?.path !== 'string') throw bad('an entry has no path');
    files.set((e as PersonaEntry).path, entryFields(e as unknown as Record<string, unknown>, bad));
  }
  // Re-encode and decode: the full validation (paths, kinds, chunk counts, collisions) runs on the result.
  // The registry stays out of that round trip (tens of MB for a large one): it is rebuilt below.
  const checked = decodePersona(Buffer.from(JSON.stringify({ format: PERSONA_FORMAT, version: PERSONA_VERSION, files: [...files.values()], registry: '' })));
  let registry = base.registry;
  let registryTimes: () => Map<string, number> | null = () => null;
  if (v2) {
    const times = d.registryTimes!;
    if (d.registryPatch !== '') {
      const patch = d.registryPatch!;
      const applied = withCanonical(base.registry, 'the base version\'s registry', (b) => applyRegistryPatch(b, patch, { edits: false }));
      if (applied.editCount !== times.length) throw bad(`registryTimes holds ${times.length} times for the patch's ${applied.editCount} value edits`);
      registry = applied.text;
      registryTimes = () => new Map(registryPatchEditKeys(patch).map((k, i) => [k, times[i]!]));
    } else if (times.length > 0) throw bad(`registryTimes holds ${times.length} times for an empty patch`);
    else registryTimes = () => new Map();
  } else if (typeof d.registry === 'string') {
    // A registry every later merge and check-out must parse: refused here, it never becomes a version.
    checkRegistryText(d.registry);
    if (!isCanonicalRegistryText(d.registry)) throw bad('registry is not canonical .reg text');
    registry = d.registry;
  }
  const snapshot: PersonaSnapshot = { files: checked.files, registry };
  if (personaSnapshotId(snapshot) !== d.id) throw bad('applied to the base it does not give the snapshot it names');
  return { snapshot, id: d.id, registryTimes };
}

/** Value keys (registry-text.ts valueKey) by their key path and value name, for tests and tools. */
export function registryValueKey(keyPath: string, name: string | null): string {
  return valueKey(keyPathId(keyPath), valueNameId(name));
}

/** A snapshot's registry text (canonical UTF-8 .reg; '' is empty) as a registry; the parser's errors pass through. */
export function registryFromText(text: string): Registry {
  const reg = new Registry();
  return text === '' ? reg : applyToRegistry(reg, decodeRegFile(Buffer.from(text, 'utf8'), { encoding: 'utf-8' }));
}

/**
 * Check that a snapshot's registry is .reg text the persona merge can read ('' is an empty registry):
 * BAD_REQUEST naming the line and column otherwise, with the parser's own code kept in `data.cause`.
 */
export function checkRegistryText(text: string): void {
  if (text === '') return;
  try {
    // Parsed section by section and dropped: no registry model (a 100,000-key one took ~900 MB).
    decodeRegSections(Buffer.from(text, 'utf8'), () => undefined, { encoding: 'utf-8' });
  } catch (err) {
    if (!(err instanceof CarryonError)) throw err;
    throw new CarryonError('BAD_REQUEST', `the persona's registry is not a valid .reg file: ${err.message}`, { ...err.data, cause: err.code }, err);
  }
}
