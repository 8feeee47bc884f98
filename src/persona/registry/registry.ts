// A registry snapshot: keys and their values, as regedit leaves them after importing .reg files.
import { CarryonError } from '../../errors/index.js';
import { encodeRegFile } from './encode.js';
import { KeyTable } from './key-table.js';
import { keyPathId, keyPathProblem, valueNameId, valueNameProblem } from './names.js';
import type { RegFileEncoding, RegFileVersion, RegKeySection, RegistryFile } from './types.js';

/** One value: its name as first written (null for the default value), type number and raw bytes. */
export interface RegistryValue {
  readonly name: string | null;
  readonly type: number;
  readonly data: Uint8Array;
}

/** One key: its full path (root in upper case, other names as first written) and its values, sorted. */
export interface RegistryKey {
  readonly path: string;
  readonly values: readonly RegistryValue[];
}

interface KeyRecord {
  path: string;
  values: Map<string, RegistryValue>;
}

function bad(message: string, data: Record<string, unknown> = {}): never {
  throw new CarryonError('INVALID_ARGUMENT', message, data);
}

function checkPath(path: string): void {
  const problem = typeof path === 'string' ? keyPathProblem(path) : { message: 'a key path must be a string' };
  if (problem) bad(`invalid key path: ${problem.message}`, { path });
}

/** Sort order of key ids: parents before children, siblings by upper-cased name (code unit order). */
function keyOrder(id: string): string {
  return id.replaceAll('\\', '\0');
}

/**
 * The keys named by the .reg files applied to it, with their values. Names match case-insensitively,
 * as Windows matches them, and keep the case they were first written in. A key's parents exist
 * implicitly (Windows creates them on import) and are held only if a file names them.
 */
export class Registry {
  private table = new KeyTable<KeyRecord>();

  private get records(): Map<string, KeyRecord> {
    return this.table.records;
  }

  /** Number of keys held. */
  get size(): number {
    return this.records.size;
  }

  hasKey(path: string): boolean {
    return this.records.has(keyPathId(path));
  }

  getKey(path: string): RegistryKey | undefined {
    const r = this.records.get(keyPathId(path));
    return r && { path: r.path, values: sortedValues(r) };
  }

  /** Every key held, parents before children, siblings in Windows' (upper-cased) name order. */
  keys(): RegistryKey[] {
    return [...this.records.entries()]
      .map(([id, r]) => ({ order: keyOrder(id), r }))
      .sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0))
      .map(({ r }) => ({ path: r.path, values: sortedValues(r) }));
  }

  /** Creates the key if it is not held; returns its path as held. */
  createKey(path: string): string {
    checkPath(path);
    return this.record(path).path;
  }

  private record(path: string): KeyRecord {
    return this.table.record(path, (display) => ({ path: display, values: new Map() }));
  }

  /** Deletes the key and every key below it; returns how many held keys went. A missing key is fine. */
  deleteKey(path: string): number {
    checkPath(path);
    if (!path.includes('\\')) bad('a root key cannot be deleted', { path });
    return this.table.deleteKey(path);
  }

  getValue(path: string, name: string | null): RegistryValue | undefined {
    return this.records.get(keyPathId(path))?.values.get(valueNameId(name));
  }

  /**
   * Sets a value, creating its key; an existing value of that name (in any case) keeps its name's
   * spelling and takes the new type and data. The bytes are copied. '' names the default value.
   */
  setValue(path: string, value: RegistryValue): void {
    checkPath(path);
    const nameProblem = valueNameProblem(value.name);
    if (nameProblem) bad(`invalid value name: ${nameProblem.message}`, { path, name: value.name });
    if (!Number.isInteger(value.type) || value.type < 0 || value.type > 0xffffffff) bad(`value type must be an integer from 0 to 0xffffffff, not ${value.type}`, { path, name: value.name });
    if (!(value.data instanceof Uint8Array)) bad('value data must be a Uint8Array', { path, name: value.name });
    const r = this.record(path);
    const id = valueNameId(value.name);
    const name = r.values.get(id)?.name ?? (value.name === '' ? null : value.name);
    r.values.set(id, { name, type: value.type, data: value.data.slice() });
  }

  /** Deletes a value; true if it was there. */
  deleteValue(path: string, name: string | null): boolean {
    return this.records.get(keyPathId(path))?.values.delete(valueNameId(name)) ?? false;
  }

  /** A deep copy (value bytes are shared: they are never changed in place). */
  clone(): Registry {
    const copy = new Registry();
    copy.table = this.table.clone((r) => ({ path: r.path, values: new Map(r.values) }));
    return copy;
  }
}

function sortedValues(r: KeyRecord): RegistryValue[] {
  return [...r.values.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v);
}

/**
 * Applies a .reg file to `reg` as regedit imports it: `[path]` creates the key, `"name"=data` sets a
 * value (replacing type and data), `"name"=-` deletes one, `[-path]` deletes the key and its subkeys.
 * Returns `reg`.
 */
export function applyToRegistry(reg: Registry, file: RegistryFile): Registry {
  for (const section of file.sections) {
    if (section.kind === 'delete-key') {
      reg.deleteKey(section.path);
      continue;
    }
    reg.createKey(section.path);
    for (const v of section.values) {
      if (v.kind === 'delete') reg.deleteValue(section.path, v.name);
      else reg.setValue(section.path, { name: v.name, type: v.type, data: v.data });
    }
  }
  return reg;
}

export interface RegExportOptions {
  /** Default 'v5'. */
  version?: RegFileVersion;
  /** Default: 'utf-16le' for v5 (as regedit writes it), 'windows-1252' for REGEDIT4. */
  encoding?: RegFileEncoding;
  /** Default: true for UTF-16LE, false otherwise. */
  bom?: boolean;
}

/** The registry as a .reg file model: every key in `keys()` order, its values sorted by name (default first). */
export function registryToFile(reg: Registry, options: RegExportOptions = {}): RegistryFile {
  const version = options.version ?? 'v5';
  const encoding = options.encoding ?? (version === 'v5' ? 'utf-16le' : 'windows-1252');
  const bom = options.bom ?? encoding === 'utf-16le';
  const sections: RegKeySection[] = reg.keys().map((k) => ({
    kind: 'key',
    path: k.path,
    values: k.values.map((v) => ({ kind: 'set', name: v.name, type: v.type, data: v.data })),
  }));
  return { version, encoding, bom, sections };
}

/** The registry as canonical .reg bytes: deterministic for equal registries, in regedit's layout. */
export function exportRegistry(reg: Registry, options: RegExportOptions = {}): Uint8Array {
  return encodeRegFile(registryToFile(reg, options));
}
