// Key paths and value names: validation and the case-insensitive identities Windows compares by.
import { REG_MAX_KEY_DEPTH, REG_MAX_KEY_NAME_CHARS, REG_MAX_VALUE_NAME_CHARS, REG_ROOT_KEYS, type RegRootKey } from './types.js';

const ROOT_BY_UPPER = new Map<string, RegRootKey>(REG_ROOT_KEYS.map((r) => [r, r]));
const ABBREVIATIONS: Record<string, RegRootKey> = {
  HKLM: 'HKEY_LOCAL_MACHINE',
  HKCU: 'HKEY_CURRENT_USER',
  HKCR: 'HKEY_CLASSES_ROOT',
  HKU: 'HKEY_USERS',
  HKCC: 'HKEY_CURRENT_CONFIG',
};

/**
 * A name as Windows compares it: each UTF-16 code unit upper-cased on its own (simple, one-to-one
 * mappings only, as the kernel's upcase table does); surrogates are left alone.
 */
export function foldName(s: string): string {
  if (/^[\x00-\x7f]*$/.test(s)) return s.toUpperCase();
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ch = s[i]!;
    if (c >= 0xd800 && c <= 0xdfff) {
      out += ch;
      continue;
    }
    const u = ch.toUpperCase();
    out += u.length === 1 ? u : ch;
  }
  return out;
}

/** Identity of a key path: two paths name the same key exactly when their ids are equal. */
export function keyPathId(path: string): string {
  return foldName(path);
}

/** Identity of a value name within its key; the default value (null, or '') is ''. */
export function valueNameId(name: string | null): string {
  return name === null ? '' : foldName(name);
}

/** The root key a path starts with, in regedit's spelling, or null. */
export function rootKeyOf(path: string): RegRootKey | null {
  const slash = path.indexOf('\\');
  return ROOT_BY_UPPER.get(foldName(slash < 0 ? path : path.slice(0, slash))) ?? null;
}

export interface NameProblem {
  /** Offset in the checked string where the problem starts. */
  offset: number;
  message: string;
}

/** Why `path` is not a key path regedit accepts and the registry can hold, or null if it is one. */
export function keyPathProblem(path: string): NameProblem | null {
  const parts = path.split('\\');
  const root = parts[0]!;
  if (!ROOT_BY_UPPER.has(foldName(root))) {
    const full = ABBREVIATIONS[foldName(root)];
    if (full) return { offset: 0, message: `regedit does not accept the abbreviation '${root}' in .reg files; write ${full}` };
    if (root === '') return { offset: 0, message: 'expected a root key such as HKEY_CURRENT_USER' };
    return { offset: 0, message: `unknown root key '${clip(root)}'; expected one of ${REG_ROOT_KEYS.join(', ')}` };
  }
  if (parts.length - 1 > REG_MAX_KEY_DEPTH) return { offset: 0, message: `a key path may have at most ${REG_MAX_KEY_DEPTH} levels below the root` };
  let offset = root.length + 1;
  for (let k = 1; k < parts.length; k++) {
    const p = parts[k]!;
    if (p === '') return { offset: offset - 1, message: k === parts.length - 1 ? 'a key path must not end with a backslash' : 'empty key name between two backslashes' };
    if (p.length > REG_MAX_KEY_NAME_CHARS) return { offset, message: `a key name may have at most ${REG_MAX_KEY_NAME_CHARS} characters` };
    const bad = /[\r\n\0]/.exec(p);
    if (bad) return { offset: offset + bad.index, message: 'a key name cannot hold a line break or NUL character' };
    offset += p.length + 1;
  }
  return null;
}

/** Why `name` cannot be a value name in a .reg file, or null. Null and '' are the default value. */
export function valueNameProblem(name: string | null): NameProblem | null {
  if (name === null) return null;
  if (name.length > REG_MAX_VALUE_NAME_CHARS) return { offset: 0, message: `a value name may have at most ${REG_MAX_VALUE_NAME_CHARS} characters` };
  const nul = name.indexOf('\0');
  if (nul >= 0) return { offset: nul, message: 'a value name cannot hold a NUL character in a .reg file' };
  return null;
}

/** `path` with its root in regedit's spelling (upper case); the rest as written. */
export function canonicalRoot(path: string): string {
  const root = rootKeyOf(path);
  if (!root) return path;
  const slash = path.indexOf('\\');
  return slash < 0 ? root : root + path.slice(slash);
}

function clip(s: string): string {
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
}
