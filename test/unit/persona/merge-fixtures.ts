// Builders for the persona merge tests: entries, snapshots, registry text, and the default options.
import { createHash } from 'node:crypto';
import {
  applyToRegistry,
  decodeRegFile,
  decodeRegSz,
  encodeRegSz,
  exportRegistry,
  Registry,
  REG_SZ,
  type MergeOptions,
} from '../../../src/persona/index.js';
import type { PersonaEntry, PersonaSnapshot } from '../../../src/persona/model.js';

export const T_OURS = Date.UTC(2024, 4, 1, 13, 45, 1, 500); // 2024-05-01 134501 UTC
export const T_THEIRS = Date.UTC(2024, 4, 1, 12, 0, 0); // 2024-05-01 120000 UTC
export const STAMP_OURS = '2024-05-01 134501';
export const STAMP_THEIRS = '2024-05-01 120000';
export const DEVICE = 'LAPTOP-1';

export function opts(over: Partial<MergeOptions> = {}): MergeOptions {
  return { filePolicy: 'keep-both', registryPolicy: 'newest', device: DEVICE, oursTime: T_OURS, theirsTime: T_THEIRS, ...over };
}

export function hashOf(content: string): string {
  return createHash('sha256').update(content).digest('hex');
}

export function file(path: string, content: string, mtimeMs = 1000, mode = 0o644): PersonaEntry {
  const size = Buffer.byteLength(content);
  return { path, kind: 'file', mode, mtimeMs, size, hash: hashOf(content), chunks: size === 0 ? [] : [hashOf(`chunk:${content}`)] };
}

export function dir(path: string, mtimeMs = 1000, mode = 0o755): PersonaEntry {
  return { path, kind: 'dir', mode, mtimeMs, size: 0, hash: null, chunks: [] };
}

export function link(path: string, target: string, mtimeMs = 1000): PersonaEntry {
  return { path, kind: 'symlink', mode: 0o777, mtimeMs, size: 0, hash: null, chunks: [], target };
}

export function snap(files: PersonaEntry[], registry = ''): PersonaSnapshot {
  return { files: [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)), registry };
}

/** Registry as { keyPath: { valueName ('@' = default): string } }, as canonical .reg text. */
export type RegSpec = Record<string, Record<string, string>>;

export function regText(spec: RegSpec): string {
  const reg = new Registry();
  for (const [path, values] of Object.entries(spec)) {
    reg.createKey(path);
    for (const [name, s] of Object.entries(values)) reg.setValue(path, { name: name === '@' ? null : name, type: REG_SZ, data: encodeRegSz(s) });
  }
  return reg.size === 0 ? '' : Buffer.from(exportRegistry(reg, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
}

/** The inverse of regText, for string values: keys as held, value names as spelled. */
export function regSpec(text: string): RegSpec {
  if (text === '') return {};
  const reg = applyToRegistry(new Registry(), decodeRegFile(Buffer.from(text, 'utf8'), { encoding: 'utf-8' }));
  const out: RegSpec = {};
  for (const k of reg.keys()) out[k.path] = Object.fromEntries(k.values.map((v) => [v.name ?? '@', decodeRegSz(v.data)]));
  return out;
}

/** path -> hash (or kind for non-files), for compact assertions on a merged file list. */
export function tree(s: PersonaSnapshot): Record<string, string> {
  return Object.fromEntries(s.files.map((e) => [e.path, e.kind === 'file' ? e.hash! : e.kind === 'dir' ? 'dir' : `->${e.target!}`]));
}

/** Every entry's parent is a dir entry spelled exactly as in the child's path; keys unique; sorted. */
export function consistencyProblems(s: PersonaSnapshot): string[] {
  const problems: string[] = [];
  const byPath = new Map(s.files.map((e) => [e.path, e]));
  const keys = new Set<string>();
  for (const [i, e] of s.files.entries()) {
    if (i > 0 && !(s.files[i - 1]!.path < e.path)) problems.push(`not sorted at ${e.path}`);
    const k = e.path.toLowerCase();
    if (keys.has(k)) problems.push(`duplicate ${e.path}`);
    keys.add(k);
    const slash = e.path.lastIndexOf('/');
    if (slash < 0) continue;
    const parent = byPath.get(e.path.slice(0, slash));
    if (!parent) problems.push(`no parent for ${e.path}`);
    else if (parent.kind !== 'dir') problems.push(`parent of ${e.path} is a ${parent.kind}`);
  }
  return problems;
}
