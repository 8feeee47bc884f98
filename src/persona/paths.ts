// Untrusted relative paths inside a persona (profile folder): the one gate every path from a snapshot,
// a laptop folder or the network passes before carryon uses it.
// Owns: the path rules, the case-collision key and the symlink-target rule. Must not know: the file
// system (these are pure string checks; src/persona/tree.ts checks what is really on disk).
// Key terms: a path is '/'-separated components relative to the profile root, in Unicode NFC; a rule
// is one of the named reasons a path is refused (the `rule` field of the error's data).
import { CarryonError } from '../errors/index.js';

/** Longest path, in UTF-8 bytes (Linux PATH_MAX). */
export const PERSONA_MAX_PATH_BYTES = 4096;
/** Longest component, in UTF-8 bytes (Linux NAME_MAX; Windows allows 255 UTF-16 units, never fewer). */
export const PERSONA_MAX_NAME_BYTES = 255;
/** Most components in one path. */
export const PERSONA_MAX_DEPTH = 256;

/**
 * Names Windows reserves for devices, with or without an extension (`nul.txt` is the device too).
 * The list is Microsoft's "Naming Files, Paths, and Namespaces": it names COM0/LPT0 and the
 * superscript-digit forms (COM¹ …) as well as COM1-9 and LPT1-9.
 */
const RESERVED_NAME = /^(con|prn|aux|nul|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3])$/i;
const WINDOWS_BAD_CHARS = /[<>:"|?*]/;
const CONTROL_CHARS = /[\u0000-\u001f]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** A short, printable form of an untrusted path for messages and error data. */
function shown(p: string): string {
  return JSON.stringify(p.length > 200 ? `${p.slice(0, 200)}…` : p);
}

function refuse(p: string, rule: string, why: string, extra: Record<string, unknown> = {}): CarryonError {
  return new CarryonError('BAD_REQUEST', `persona path ${shown(p)} is refused: ${why}`, { path: p.slice(0, 300), rule, ...extra });
}

/** Why one component is not a portable file name, or null when it is fine. */
function componentProblem(name: string): { rule: string; why: string } | null {
  if (name === '') return { rule: 'empty-component', why: 'it has an empty component (a doubled, leading or trailing "/")' };
  if (name === '.' || name === '..') return { rule: 'dot-component', why: `it has a "${name}" component` };
  if (name.includes('\\')) return { rule: 'backslash', why: 'it contains a backslash (a Windows separator)' };
  if (CONTROL_CHARS.test(name)) return { rule: 'control-char', why: 'it contains NUL or a control character' };
  if (WINDOWS_BAD_CHARS.test(name)) return { rule: 'windows-char', why: `component ${shown(name)} contains one of < > : " | ? * (invalid on Windows)` };
  if (name.endsWith('.') || name.endsWith(' ')) return { rule: 'trailing-dot-space', why: `component ${shown(name)} ends with a dot or a space (invalid on Windows)` };
  // Windows ignores trailing spaces before the extension too ("nul .txt" is the device).
  const stem = name.split('.')[0]!.replace(/ +$/, '');
  if (RESERVED_NAME.test(stem)) return { rule: 'reserved-name', why: `component ${shown(name)} is a Windows device name` };
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > PERSONA_MAX_NAME_BYTES) return { rule: 'name-too-long', why: `a component is ${bytes} UTF-8 bytes, over ${PERSONA_MAX_NAME_BYTES}` };
  return null;
}

/**
 * Check an untrusted relative path and return it in normal form (Unicode NFC, '/' separators).
 * Throws BAD_REQUEST naming the path and the rule (also in `data.rule`) when it is empty, absolute
 * (`/x`, `\x`), a drive (`C:`) or UNC path, has `.`, `..` or empty components, a backslash, NUL or a
 * control character, a name Windows refuses (device names such as CON or com1.txt, any of `<>:"|?*`,
 * a trailing dot or space), a component over PERSONA_MAX_NAME_BYTES, or is over PERSONA_MAX_PATH_BYTES or
 * PERSONA_MAX_DEPTH components. Text that is not valid Unicode (a lone surrogate) is refused too.
 */
export function checkPersonaPath(p: string): string {
  if (typeof p !== 'string') throw new CarryonError('BAD_REQUEST', 'persona path is not text', { rule: 'not-text' });
  if (p.length === 0) throw refuse(p, 'empty', 'it is empty');
  // Bound the work before normalising: NFC never more than triples the length.
  if (p.length > PERSONA_MAX_PATH_BYTES) throw refuse(p, 'path-too-long', `it is over ${PERSONA_MAX_PATH_BYTES} bytes`);
  if (LONE_SURROGATE.test(p)) throw refuse(p, 'not-unicode', 'it is not valid Unicode (a lone surrogate)');
  if (p.startsWith('//') || p.startsWith('\\\\')) throw refuse(p, 'unc', 'it is a UNC path');
  if (p.startsWith('/') || p.startsWith('\\')) throw refuse(p, 'absolute', 'it is absolute');
  if (/^[A-Za-z]:/.test(p)) throw refuse(p, 'drive', 'it starts with a drive letter');
  const n = p.normalize('NFC');
  const bytes = Buffer.byteLength(n, 'utf8');
  if (bytes > PERSONA_MAX_PATH_BYTES) throw refuse(p, 'path-too-long', `it is ${bytes} UTF-8 bytes, over ${PERSONA_MAX_PATH_BYTES}`);
  const parts = n.split('/');
  if (parts.length > PERSONA_MAX_DEPTH) throw refuse(p, 'too-deep', `it has ${parts.length} components, over ${PERSONA_MAX_DEPTH}`);
  for (const part of parts) {
    const problem = componentProblem(part);
    if (problem) throw refuse(p, problem.rule, problem.why);
  }
  return n;
}

/**
 * The key under which two paths name the same file on a case-insensitive file system (NTFS, APFS).
 * NFC, then upper case, then lower case: plain toLowerCase misses pairs that Unicode case folding
 * joins (`ß`/`ss`, long `ſ`/`s`, Kelvin sign/`k`); going through upper case joins them. It may join
 * a few names NTFS keeps apart (`ß` and `ss`); refusing such a rare pair is the safe side.
 */
export function personaPathKey(p: string): string {
  return p.normalize('NFC').toUpperCase().toLowerCase().normalize('NFC');
}

/**
 * Pairs of paths that would be one file on a case- or normalization-insensitive file system:
 * each pair is [the first path with that key, a later one], in input order. Equal strings count too.
 */
export function findCaseCollisions(paths: readonly string[]): Array<[string, string]> {
  const first = new Map<string, string>();
  const out: Array<[string, string]> = [];
  for (const p of paths) {
    const key = personaPathKey(p);
    const prev = first.get(key);
    if (prev === undefined) first.set(key, p);
    else out.push([prev, p]);
  }
  return out;
}

/**
 * Check the target of the symlink at `linkPath` (a checked persona path) and return it in NFC.
 * The target must be relative, non-empty, free of backslashes and control characters, and stay inside
 * the profile when resolved from the link's folder. `..` components may only lead the target
 * (`../../docs/x`, at most as many as the link's folder is deep): a `..` after a name (`a/../x`) is
 * refused even when it looks harmless, because `a` may itself be a symlink, and then the kernel
 * resolves `..` from a's target, not lexically. With leading `..` only, every symlink resolves from
 * the real folder it lives in, so no chain of links leaves the profile. What the target names after
 * the leading `..` must be a valid persona path (or nothing: a link to an ancestor folder).
 */
export function checkSymlinkTarget(linkPath: string, target: string): string {
  const bad = (rule: string, why: string): CarryonError =>
    new CarryonError('BAD_REQUEST', `symlink ${shown(linkPath)} -> ${typeof target === 'string' ? shown(target) : '?'} is refused: ${why}; a persona's symlinks stay inside the profile: remove it, or make it a relative link to something in the profile`, {
      path: linkPath.slice(0, 300), target: typeof target === 'string' ? target.slice(0, 300) : null, rule,
    });
  if (typeof target !== 'string') throw bad('not-text', 'the target is not text');
  if (target.length === 0) throw bad('empty', 'the target is empty');
  if (target.length > PERSONA_MAX_PATH_BYTES || Buffer.byteLength(target, 'utf8') > PERSONA_MAX_PATH_BYTES) throw bad('path-too-long', `the target is over ${PERSONA_MAX_PATH_BYTES} bytes`);
  if (LONE_SURROGATE.test(target)) throw bad('not-unicode', 'the target is not valid Unicode');
  if (target.startsWith('/') || target.startsWith('\\')) throw bad('absolute', 'the target is absolute');
  if (/^[A-Za-z]:/.test(target)) throw bad('drive', 'the target starts with a drive letter');
  if (target.includes('\\')) throw bad('backslash', 'the target contains a backslash');
  if (CONTROL_CHARS.test(target)) throw bad('control-char', 'the target contains NUL or a control character');
  const n = target.normalize('NFC');
  const depth = linkPath.split('/').length - 1;
  let ups = 0;
  const rest: string[] = [];
  for (const part of n.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (rest.length > 0) throw bad('dot-dot-after-name', 'a ".." follows a name (only leading ".." are allowed)');
      ups++;
      if (ups > depth) throw bad('escapes', 'the target leaves the profile folder');
    } else {
      rest.push(part);
    }
  }
  if (rest.length > 0) {
    const kept = linkPath.split('/').slice(0, depth - ups);
    try {
      checkPersonaPath([...kept, ...rest].join('/'));
    } catch (err) {
      const rule = err instanceof CarryonError ? String(err.data.rule) : 'invalid';
      throw bad(rule, `the target does not name a valid persona path (${err instanceof Error ? err.message : String(err)})`);
    }
  }
  return n;
}
