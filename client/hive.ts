// Registry hives (regf files such as NTUSER.DAT) through Debian's hivex: reading one as canonical
// registry text (or a Registry, for tests and tools) under HKEY_CURRENT_USER, and merging a .reg
// change set into a copy of one. Owns the command lines of `hivexregedit` and the two spots where its .reg dialect differs from regedit's: it writes the
// hive's root as `[HKEY_CURRENT_USER\]`, and it creates a key only when its parent exists. Must not
// know: personas, servers, where the files come from. Hive parsing itself is hivex's (a well-kept
// C library, fuzzed upstream): no regf parser of our own.
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  canonicalRegistryText, CarryonError, decodeRegFile, HKCU, keyPathId, REG_MAX_FILE_BYTES, REG_DWORD, Registry, registryFromText, selectKeys, type RegistryFile, type RegSection,
} from '../src/index.js';

export const HIVEXREGEDIT = 'hivexregedit';

/**
 * hivexregedit prints names through Perl without an output encoding: Latin-1 names come out as
 * Latin-1 bytes and others as UTF-8, mixed in one file. PERL_UNICODE=SDA makes every stream and
 * argument UTF-8, in and out, so the text is plain UTF-8 both ways.
 */
const PERL_ENV = { PERL_UNICODE: 'SDA' };

interface Run {
  stdout: Buffer;
  stderr: string;
  code: number | null;
}

async function runHivex(args: string[], maxOut: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(HIVEXREGEDIT, args, { env: { ...process.env, ...PERL_ENV }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let outBytes = 0;
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      outBytes += d.length;
      if (outBytes > maxOut) {
        child.kill();
        reject(new CarryonError('PAYLOAD_TOO_LARGE', `the hive's registry is larger than ${maxOut} bytes as .reg text`, { limit: maxOut }));
        return;
      }
      out.push(d);
    });
    child.stderr.on('data', (d: Buffer) => {
      if (err.length < 4096) err += d.toString('utf8');
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(e.code === 'ENOENT'
        ? new CarryonError('HIVEX_UNAVAILABLE', `${HIVEXREGEDIT} is not installed: registry hives are read and written with Debian's hivex (apt-get install libwin-hivex-perl libhivex-bin)`)
        : e);
    });
    child.on('close', (code) => resolve({ stdout: Buffer.concat(out), stderr: err.trim(), code }));
  });
}

/** hivex's own words, cut to a line or two. */
function said(stderr: string): string {
  return stderr.split('\n').filter((l) => l.trim() !== '').slice(0, 3).join(' / ').slice(0, 400) || 'no message';
}

export interface HiveContent {
  registry: Registry;
  /**
   * Keys and values the hive holds that a persona cannot carry (a NUL inside a name: Windows allows it
   * through the native API, the .reg form cannot hold it), left out: `[key]` or `[key] "value"`, NUL shown as \0.
   */
  skipped: string[];
}

/** The hive's keys and values, under HKEY_CURRENT_USER (an NTUSER.DAT is that user's HKEY_CURRENT_USER). */
export async function readHive(file: string): Promise<HiveContent> {
  const h = await readHiveText(file);
  return { registry: registryFromText(h.text), skipped: h.skipped };
}

/** readHive as canonical registry text (src/persona/registry-text.ts), never a Registry of value objects. */
export async function readHiveText(file: string): Promise<{ text: string; skipped: string[] }> {
  const r = await runHivex(['--export', '--prefix', HKCU, file, '\\'], REG_MAX_FILE_BYTES);
  if (r.code !== 0) {
    throw new CarryonError('REG_FILE_UNSUPPORTED', `${file} starts like a registry hive but hivex cannot read it (${said(r.stderr)}): is it damaged, or was it copied while Windows had it loaded? ` +
      'Copy NTUSER.DAT while the user is logged off, or use `reg export HKCU FILE` inside Windows instead', { file });
  }
  const { text, skipped } = withoutNulNames(r.stdout.toString('utf8'));
  try {
    // (the hive's root key, named with no values, is not a key of the persona: hivexExportToFile's rule)
    const all = canonicalRegistryText(hivexFixedRoot(text), { encoding: 'utf-8', onlyRoot: HKCU });
    return { text: selectKeys(all, (k) => k.values.length > 0 || k.path.includes('\\')), skipped };
  } catch (err) {
    // The position is in hivex's text, which the user never sees: name the key instead.
    const line = err instanceof CarryonError ? (err.data.line as number | undefined) : undefined;
    if (line === undefined) throw err;
    const lines = text.split('\n');
    let k = line - 1;
    while (k > 0 && !lines[k]!.startsWith('[')) k--;
    const shown = (lines[k] ?? '').slice(0, 200);
    throw new CarryonError('REG_FILE_UNSUPPORTED', `${file}: the hive holds a key or value a persona cannot carry, at ${shown}: ${(err as Error).message.replace(/^line \d+, column \d+: /, '')}`, { file, key: shown });
  }
}

/**
 * hivex's export without the keys and values whose names hold a NUL (a key line with one drops the
 * key and its values; a value line with one, that value). Data never holds a raw NUL in the text:
 * hivex writes every value as hex.
 */
export function withoutNulNames(text: string): { text: string; skipped: string[] } {
  if (!text.includes('\0')) return { text, skipped: [] };
  const skipped: string[] = [];
  const out: string[] = [];
  let inSkipped = false;
  let header = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('[')) {
      header = line;
      inSkipped = line.includes('\0');
      if (inSkipped) skipped.push(line.replace(/\0/g, '\\0'));
      else out.push(line);
    } else if (inSkipped) {
      continue;
    } else if (line.includes('\0')) {
      skipped.push(`${header} ${line.slice(0, line.indexOf('=')).replace(/\0/g, '\\0')}`);
    } else {
      out.push(line);
    }
  }
  return { text: out.join('\n'), skipped };
}

/** hivexregedit --export's text (UTF-8, LF) as a RegistryFile; the hive root, when it holds no values, is left out. */
export function hivexExportToFile(text: Buffer): RegistryFile {
  const fixed = hivexFixedRoot(text.toString('utf8'));
  const file = decodeRegFile(fixed, { encoding: 'utf-8', onlyRoot: HKCU });
  file.sections = file.sections.filter((s) => !(s.kind === 'key' && s.values.length === 0 && !s.path.includes('\\')));
  return file;
}

/**
 * hivex's export with its root line fixed: it comes out as `[HKEY_CURRENT_USER\]`, which regedit (and
 * our parser) reads as a key path ending in a backslash: the root key is HKEY_CURRENT_USER itself.
 */
function hivexFixedRoot(text: string): Buffer {
  return Buffer.from(text.replace(/^\[HKEY_CURRENT_USER\\\]$/m, `[${HKCU}]`), 'utf8');
}

/**
 * The .reg text hivexregedit --merge reads: UTF-8 with LF, every value as hex(N) (bytes exact, no
 * string encoding guessed), every missing parent key named before its child (hivex refuses to create
 * a key whose parent does not exist, where regedit creates the parents).
 */
export function encodeForHivexMerge(file: RegistryFile, existing: (path: string) => boolean): Buffer {
  const lines: string[] = ['Windows Registry Editor Version 5.00', ''];
  const named = new Set<string>();
  const q = (s: string): string => {
    if (/[\r\n]/.test(s)) throw new CarryonError('INVALID_ARGUMENT', 'a value name with a line break cannot be written into a hive by hivexregedit', { name: s });
    return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
  };
  const ensureParents = (p: string): void => {
    const parts = p.split('\\');
    for (let k = 2; k < parts.length; k++) {
      const parent = parts.slice(0, k).join('\\');
      const id = keyPathId(parent);
      if (named.has(id) || existing(parent)) continue;
      named.add(id);
      lines.push(`[${parent}]`, '');
    }
  };
  for (const s of file.sections as RegSection[]) {
    if (s.kind === 'delete-key') {
      lines.push(`[-${s.path}]`, '');
      continue;
    }
    if (!s.path.includes('\\')) {
      // The hive's root: hivex names it with a trailing backslash.
      if (s.values.length === 0) continue;
    } else ensureParents(s.path);
    named.add(keyPathId(s.path));
    lines.push(s.path.includes('\\') ? `[${s.path}]` : `[${s.path}\\]`);
    for (const v of s.values) {
      const name = v.name === null ? '@' : q(v.name);
      if (v.kind === 'delete') lines.push(`${name}=-`);
      else if (v.type === REG_DWORD && v.data.length === 4) lines.push(`${name}=dword:${Buffer.from(v.data).readUInt32LE(0).toString(16).padStart(8, '0')}`);
      else lines.push(`${name}=hex(${v.type.toString(16)}):${Buffer.from(v.data).toString('hex').replace(/(..)(?!$)/g, '$1,')}`);
    }
    lines.push('');
  }
  return Buffer.from(lines.join('\n'), 'utf8');
}

/**
 * Writes `out`: a copy of the hive `base` with `changes` merged in (hivexregedit --merge, as regedit
 * /s would apply them). The copy is written beside `out` and renamed over it only when hivex succeeded.
 */
// `baseRegistry` holds readHive(base)'s keys (a Registry, or a set of key ids from its text): hivex's
// export names every key of a hive, so its keys tell which parents exist.
export async function writeHive(base: string, out: string, changes: RegistryFile, baseRegistry: { hasKey(path: string): boolean }): Promise<void> {
  const tmp = `${out}.${process.pid}.tmp`;
  const regFile = `${out}.${process.pid}.reg`;
  try {
    await fs.copyFile(base, tmp);
    await fs.writeFile(regFile, encodeForHivexMerge(changes, (p) => baseRegistry.hasKey(p)));
    const r = await runHivex(['--merge', '--prefix', HKCU, tmp, regFile], 1024 * 1024);
    if (r.code !== 0) throw new CarryonError('HIVEX_UNAVAILABLE', `hivexregedit could not merge the registry into a copy of ${path.basename(base)} (${said(r.stderr)}); ${out} was not written`, { base, out });
    await fs.rename(tmp, out);
  } finally {
    await fs.rm(tmp, { force: true });
    await fs.rm(regFile, { force: true });
  }
}
