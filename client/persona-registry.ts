// The registry side of a persona copy on the laptop: reading whatever the user gives as a registry (a
// .reg file in any of regedit's encodings, or a hive such as NTUSER.DAT through hivex), the desktop's
// registry scope as the server last said it (registry-scope.json beside registry.reg), the persona's
// registry.reg itself, and the two files a Windows guest's scripts exchange through the shared folder
// (registry-logoff.reg from the guest, registry-changes.reg for it). Must not know: HTTP, the upload path.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  canonicalRegistryText, CarryonError, DEFAULT_REGISTRY_SCOPE, encodeRegFile, HKCU, parseKeyPatternList, registryChangesFile, ScopeFilter,
  sniffRegistryInput, type RegistryScope,
} from '../src/index.js';
import { readHiveText } from './hive.js';
import { REGISTRY_FILE, writeRegistryFile } from './persona-engine.js';

/** Beside registry.reg: the desktop's include/exclude lists, written at check-out (absent: the defaults). */
export const SCOPE_FILE = 'registry-scope.json';
/** Beside registry.reg, written by the Windows guest's logoff script: its HKEY_CURRENT_USER (`reg export HKCU`). */
export const GUEST_LOGOFF_FILE = 'registry-logoff.reg';
/** Beside registry.reg, for the Windows guest's logon script: what turns the guest's registry into the persona's. */
export const GUEST_CHANGES_FILE = 'registry-changes.reg';

/**
 * When a Windows guest left its logoff export in the persona folder, writes the changes from it to
 * the persona (registryChanges within the scope: sets, "name"=- and [-Key]) for its next logon, and
 * returns how many sections; null when there is no logoff export (no Windows guest uses this folder).
 */
export async function writeGuestChanges(dir: string): Promise<number | null> {
  const logoff = path.join(dir, GUEST_LOGOFF_FILE);
  const bytes = await fs.readFile(logoff).catch(() => null);
  if (!bytes) return null;
  const guest = canonicalRegistryText(bytes, { onlyRoot: HKCU });
  const { scope } = await readRegistryScope(dir);
  const changes = registryChangesFile(guest, await readPersonaRegistryText(dir), new ScopeFilter(scope));
  const file = path.join(dir, GUEST_CHANGES_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, encodeRegFile(changes));
  await fs.rename(tmp, file);
  return changes.sections.length;
}

export async function writeRegistryScope(dir: string, scope: RegistryScope | undefined): Promise<void> {
  const file = path.join(dir, SCOPE_FILE);
  // The server's answer is checked like any input from it; an older server sends none, and one that
  // sends lists this carryon cannot read gets the default scope assumed, not an old answer kept.
  let checked: RegistryScope | null = null;
  try {
    if (scope) checked = { include: scope.include === null ? null : parseKeyPatternList(scope.include, 'include'), exclude: parseKeyPatternList(scope.exclude, 'exclude') };
  } catch {
    checked = null;
  }
  if (!checked) {
    await fs.rm(file, { force: true });
    return;
  }
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, `${JSON.stringify({ include: checked.include, exclude: checked.exclude }, null, 2)}\n`);
  await fs.rename(tmp, file);
}

/** The scope the server gave at the last check-out; the default scope when there is none (or it is unreadable). */
export async function readRegistryScope(dir: string): Promise<{ scope: RegistryScope; fromServer: boolean }> {
  const raw = await fs.readFile(path.join(dir, SCOPE_FILE), 'utf8').catch(() => null);
  if (raw === null) return { scope: DEFAULT_REGISTRY_SCOPE, fromServer: false };
  try {
    const o = JSON.parse(raw) as { include: string[] | null; exclude: string[] };
    return { scope: { include: o.include === null ? null : parseKeyPatternList(o.include, 'include'), exclude: parseKeyPatternList(o.exclude, 'exclude') }, fromServer: true };
  } catch {
    return { scope: DEFAULT_REGISTRY_SCOPE, fromServer: false };
  }
}

/** The copy's registry.reg as canonical text ('' when absent). Read as it is: an old version's other root keys are tolerated here. */
export async function readPersonaRegistryText(dir: string): Promise<string> {
  const bytes = await fs.readFile(path.join(dir, REGISTRY_FILE)).catch(() => null);
  return bytes ? canonicalRegistryText(bytes) : '';
}

/** Canonical registry text written as the copy's registry.reg (UTF-16LE, as regedit writes it). */
export async function writePersonaRegistryText(dir: string, text: string): Promise<string> {
  const target = path.join(dir, REGISTRY_FILE);
  await writeRegistryFile(target, text);
  return target;
}

export interface RegistryInput {
  kind: 'reg' | 'hive';
  /** A .reg file's bytes (decoded where they are applied, section by section: never held as value objects). */
  bytes: Buffer | null;
  /** A hive's whole registry, as canonical text. */
  text: string | null;
  /** A hive's keys and values left out (names with a NUL inside; see readHive). */
  skipped: string[];
}

/**
 * A registry the user gives: a hive (regf) through hivex, else a .reg file, which must name only
 * HKEY_CURRENT_USER keys (REGISTRY_OUTSIDE_HKCU naming the line otherwise). Anything else is
 * REG_FILE_UNSUPPORTED saying what it looks like.
 */
export async function readRegistryInput(file: string): Promise<RegistryInput> {
  const fh = await fs.open(file, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new CarryonError('INVALID_ARGUMENT', `cannot read ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`, { file });
  });
  let head: Buffer;
  try {
    const buf = Buffer.alloc(512);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    head = buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  if (sniffRegistryInput(head, file) === 'hive') {
    const h = await readHiveText(file);
    return { kind: 'hive', bytes: null, text: h.text, skipped: h.skipped };
  }
  return { kind: 'reg', bytes: await fs.readFile(file), text: null, skipped: [] };
}

/** The registry the input stands for when taken whole, as canonical text: a hive's, or a .reg file applied to an empty registry. */
export function wholeRegistryText(input: RegistryInput): string {
  if (input.text !== null) return input.text;
  return canonicalRegistryText(input.bytes!, { onlyRoot: HKCU });
}
