// The persona snapshot: a user's profile folder as a file tree manifest, plus their registry.
// Owns: the entry and snapshot types, their validation, and the canonical encoding whose SHA-256 is a
// snapshot's id (so persona versions are content-addressed like disk manifests).
// Must not know: the file system, stores, HTTP. Paths here are already validated (see paths.ts).
import { CarryonError, shownValue } from '../errors/index.js';
import { parseJson } from '../json/index.js';
import { isBlockId, sha256, type BlockId } from '../hash/index.js';
import { checkPersonaPath, checkSymlinkTarget, personaPathKey } from './paths.js';
import { applyToRegistry, decodeRegFile, Registry } from './registry/index.js';

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

/** The canonical encoding: JSON with a fixed key order, entries sorted; its SHA-256 is the snapshot id. */
export function encodePersona(p: PersonaSnapshot): Buffer {
  const files = [...p.files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)).map((e) => ({
    path: e.path, kind: e.kind, mode: e.mode, mtimeMs: e.mtimeMs, size: e.size, hash: e.hash, chunks: e.chunks, ...(e.kind === 'symlink' ? { target: e.target } : {}),
  }));
  return Buffer.from(JSON.stringify({ format: PERSONA_FORMAT, version: PERSONA_VERSION, files, registry: p.registry }));
}

export function personaId(encoded: Uint8Array): BlockId {
  return sha256(encoded).toString('hex');
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
 * removed, and the registry when it changed. `baseId` and `id` name both ends, so the receiver can
 * check that applying it to its copy of the base rebuilds exactly the sender's snapshot.
 */
export interface PersonaDelta {
  baseId: BlockId;
  id: BlockId;
  upsert: PersonaEntry[];
  remove: string[];
  registry: string | null;
}

const sameEntry = (a: PersonaEntry, b: PersonaEntry): boolean =>
  a.kind === b.kind && a.mode === b.mode && a.mtimeMs === b.mtimeMs && a.size === b.size && a.hash === b.hash && a.target === b.target &&
  a.chunks.length === b.chunks.length && a.chunks.every((c, i) => c === b.chunks[i]);

export function diffSnapshots(base: PersonaSnapshot, next: PersonaSnapshot): PersonaDelta {
  const before = new Map(base.files.map((e) => [e.path, e]));
  const after = new Set(next.files.map((e) => e.path));
  return {
    baseId: personaId(encodePersona(base)),
    id: personaId(encodePersona(next)),
    upsert: next.files.filter((e) => !before.has(e.path) || !sameEntry(before.get(e.path)!, e)),
    remove: base.files.filter((e) => !after.has(e.path)).map((e) => e.path),
    registry: next.registry === base.registry ? null : next.registry,
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

/** Rebuild the sender's snapshot from our copy of the base; anything inconsistent is BAD_REQUEST. */
export function applySnapshotDelta(base: PersonaSnapshot, raw: unknown): { snapshot: PersonaSnapshot; encoded: Buffer } {
  const d = raw as Partial<PersonaDelta> | null;
  const bad = (why: string): CarryonError => new CarryonError('BAD_REQUEST', `persona delta is invalid: ${why}`);
  if (!d || !isBlockId(d.baseId) || !isBlockId(d.id) || !Array.isArray(d.upsert) || !Array.isArray(d.remove)) throw bad('missing fields');
  if (d.registry !== null && typeof d.registry !== 'string') throw bad('registry must be text or null');
  if (personaId(encodePersona(base)) !== d.baseId) throw bad('it was made against another base version');
  const files = new Map(base.files.map((e) => [e.path, e]));
  for (const p of d.remove) {
    if (typeof p !== 'string' || !files.delete(p)) throw bad(`removes ${JSON.stringify(shownValue(p, 200))}, which the base does not hold`);
  }
  for (const e of d.upsert) {
    if (typeof (e as PersonaEntry)?.path !== 'string') throw bad('an entry has no path');
    files.set((e as PersonaEntry).path, entryFields(e as unknown as Record<string, unknown>, bad));
  }
  // Re-encode and decode: the full validation (paths, kinds, chunk counts, collisions) runs on the result.
  const candidate = Buffer.from(JSON.stringify({ format: PERSONA_FORMAT, version: PERSONA_VERSION, files: [...files.values()], registry: d.registry ?? base.registry }));
  const snapshot = decodePersona(candidate);
  const encoded = encodePersona(snapshot);
  if (personaId(encoded) !== d.id) throw bad('applied to the base it does not give the snapshot it names');
  // A registry every later merge and check-out must parse: refused here, it never becomes a version.
  if (d.registry !== null) checkRegistryText(snapshot.registry);
  return { snapshot, encoded };
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
  try {
    registryFromText(text);
  } catch (err) {
    if (!(err instanceof CarryonError)) throw err;
    throw new CarryonError('BAD_REQUEST', `the persona's registry is not a valid .reg file: ${err.message}`, { ...err.data, cause: err.code }, err);
  }
}
