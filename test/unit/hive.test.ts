// Registry hives through Debian's hivex (client/hive.ts), against real hive files: a Windows user's
// NTUSER.DAT (test/fixtures/hives/README.md says where it comes from) read whole; a persona merged into
// hivex's minimal empty hive and into a copy of the NTUSER.DAT reads back with equal values; names a
// persona cannot carry (a NUL inside) are left out and listed; damaged hives are refused with hivex's words.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readHive, withoutNulNames, writeHive } from '../../client/hive.js';
import { decodeRegDword, decodeRegSz, encodeRegDword, encodeRegSz, Registry, registryChanges, REG_DWORD, REG_SZ, type RegistryKey } from '../../src/index.js';
import { ROOT } from '../e2e/harness.js';
import { expectCode } from './helpers.js';

const FIX = path.join(ROOT, 'test/fixtures/hives');
const dir = mkdtempSync(path.join(os.tmpdir(), 'carryon-hive-'));
const NTUSER = path.join(dir, 'NTUSER.DAT');
writeFileSync(NTUSER, execFileSync('xz', ['-dc', path.join(FIX, 'regipy-NTUSER.DAT.xz')], { maxBuffer: 16 << 20 }));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Keys with values, as comparable data (a key that is only a parent may be implicit on one side). */
function valuesOf(reg: Registry): Array<{ path: string; values: Array<{ name: string | null; type: number; data: string }> }> {
  return reg.keys().filter((k: RegistryKey) => k.values.length > 0)
    .map((k) => ({ path: k.path, values: k.values.map((v) => ({ name: v.name, type: v.type, data: Buffer.from(v.data).toString('hex') })) }));
}

describe('hives through hivexregedit', () => {
  it("reads a real NTUSER.DAT under HKEY_CURRENT_USER: every key, string and dword values as Windows stored them", async () => {
    expect(readFileSync(NTUSER).subarray(0, 4).toString('latin1')).toBe('regf');
    const reg = (await readHive(NTUSER)).registry;
    expect(reg.size).toBe(1811); // every key but the hive's root (it holds no values)
    expect(reg.keys().every((k) => k.path.startsWith('HKEY_CURRENT_USER\\'))).toBe(true);
    expect(decodeRegSz(reg.getValue('HKEY_CURRENT_USER\\AppEvents\\EventLabels\\.Default', null)!.data)).toBe('Default Beep');
    expect(decodeRegSz(reg.getValue('HKEY_CURRENT_USER\\AppEvents\\EventLabels\\.Default', 'DispFileName')!.data)).toBe('@mmres.dll,-5824');
    const values = reg.keys().reduce((n, k) => n + k.values.length, 0);
    expect(values).toBeGreaterThan(3000);
  });

  it('hive -> persona -> hive: merged into an empty hive, every value reads back equal', async () => {
    const reg = (await readHive(NTUSER)).registry;
    const out = path.join(dir, 'rebuilt.DAT');
    const empty = (await readHive(path.join(FIX, 'hivex-minimal'))).registry;
    expect(empty.size).toBe(0);
    await writeHive(path.join(FIX, 'hivex-minimal'), out, registryChanges(empty, reg), empty);
    const back = (await readHive(out)).registry;
    expect(valuesOf(back)).toEqual(valuesOf(reg));
    expect(back.size).toBe(reg.size);
  });

  it('a persona with edits merged into a copy of the user hive: set, changed, deleted values and a deleted key come out as the persona has them', async () => {
    const hive = (await readHive(NTUSER)).registry;
    const persona = hive.clone();
    const K = 'HKEY_CURRENT_USER\\Software\\Carryon Test\\Ünïcode ключ';
    persona.setValue(K, { name: 'Color', type: REG_SZ, data: encodeRegSz('grün') });
    persona.setValue(K, { name: null, type: REG_DWORD, data: encodeRegDword(7) });
    persona.setValue('HKEY_CURRENT_USER\\AppEvents\\EventLabels\\.Default', { name: null, type: REG_SZ, data: encodeRegSz('Changed Beep') });
    persona.deleteValue('HKEY_CURRENT_USER\\AppEvents\\EventLabels\\.Default', 'DispFileName');
    const deletedKey = 'HKEY_CURRENT_USER\\AppEvents\\EventLabels\\ActivatingDocument';
    expect(persona.deleteKey(deletedKey)).toBeGreaterThan(0);
    const out = path.join(dir, 'edited.DAT');
    copyFileSync(NTUSER, path.join(dir, 'base.DAT'));
    const changes = registryChanges(hive, persona);
    expect(changes.sections.length).toBeLessThan(10); // only what changed
    await writeHive(path.join(dir, 'base.DAT'), out, changes, hive);
    const back = (await readHive(out)).registry;
    expect(decodeRegSz(back.getValue(K, 'Color')!.data)).toBe('grün');
    expect(decodeRegDword(back.getValue(K, null)!.data)).toBe(7);
    expect(back.getValue('HKEY_CURRENT_USER\\AppEvents\\EventLabels\\.Default', 'DispFileName')).toBeUndefined();
    expect(back.hasKey(deletedKey)).toBe(false);
    expect(valuesOf(back)).toEqual(valuesOf(persona));
    // the base hive itself was not touched
    expect(readFileSync(path.join(dir, 'base.DAT')).equals(readFileSync(NTUSER))).toBe(true);
  });

  it("a hive written by Windows XP's regedit: Latin-1 and other non-ASCII names read right; a key with a NUL in its name is left out and listed", async () => {
    const { registry, skipped } = await readHive(path.join(FIX, 'hivex-special'));
    expect(skipped).toEqual(['[HKEY_CURRENT_USER\\zero\\0key]']);
    expect(registry.keys().map((k) => k.path)).toEqual(['HKEY_CURRENT_USER\\abcd_äöüß', 'HKEY_CURRENT_USER\\weird™']);
    expect(registry.getValue('HKEY_CURRENT_USER\\abcd_äöüß', 'abcd_äöüß')!.type).toBe(REG_DWORD);
    expect(registry.getValue('HKEY_CURRENT_USER\\weird™', 'symbols $£₤₧€')).toBeDefined();
  });

  it('withoutNulNames drops a key with its values, or one value, and lists them', () => {
    const r = withoutNulNames('[HKEY_CURRENT_USER\\a]\n"ok"=dword:00000001\n"b\0ad"=dword:00000002\n\n[HKEY_CURRENT_USER\\z\0k]\n"v"=dword:00000003\n\n[HKEY_CURRENT_USER\\c]\n');
    expect(r.text).toBe('[HKEY_CURRENT_USER\\a]\n"ok"=dword:00000001\n\n[HKEY_CURRENT_USER\\c]\n');
    expect(r.skipped).toEqual(['[HKEY_CURRENT_USER\\a] "b\\0ad"', '[HKEY_CURRENT_USER\\z\\0k]']);
  });

  it('a damaged hive is refused with hivex\'s words and advice', async () => {
    const bad = path.join(dir, 'damaged.DAT');
    const bytes = readFileSync(NTUSER);
    writeFileSync(bad, Buffer.concat([bytes.subarray(0, 4), Buffer.alloc(8188)]));
    const err = await expectCode(() => readHive(bad), 'REG_FILE_UNSUPPORTED');
    expect(err.message).toMatch(/starts like a registry hive but hivex cannot read it \(.+\).*logged off/);
  });
});
