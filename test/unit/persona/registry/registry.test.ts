// The Registry snapshot imports .reg files as regedit does (case-insensitive names that keep their
// first spelling, key deletion taking subkeys along) and exports a canonical, deterministic file.
import { describe, expect, it } from 'vitest';
import {
  applyToRegistry,
  decodeRegDword,
  decodeRegFile,
  decodeRegMultiSz,
  decodeRegQword,
  decodeRegSz,
  encodeRegDword,
  encodeRegMultiSz,
  encodeRegQword,
  encodeRegSz,
  exportRegistry,
  keyPathId,
  Registry,
  registryToFile,
  REG_BINARY,
  REG_DWORD,
  REG_SZ,
  valueNameId,
} from '../../../../src/index.js';
import { expectCode } from '../../helpers.js';
import { bytes, dword, multiSz, qword, regeditExport, SAMPLE_KEYS, sz, utf16WithBom } from './fixtures.js';

function v5(text: string): Buffer {
  return utf16WithBom(`Windows Registry Editor Version 5.00\r\n\r\n${text}`);
}
function load(text: string, reg = new Registry()): Registry {
  return applyToRegistry(reg, decodeRegFile(v5(text)));
}
function paths(reg: Registry): string[] {
  return reg.keys().map((k) => k.path);
}

describe('applyToRegistry', () => {
  it('creates keys, empty ones too, and sets values', () => {
    const reg = load('[HKEY_CURRENT_USER\\A]\r\n"x"="1"\r\n\r\n[HKEY_CURRENT_USER\\A\\Empty]\r\n');
    expect(paths(reg)).toEqual(['HKEY_CURRENT_USER\\A', 'HKEY_CURRENT_USER\\A\\Empty']);
    expect(reg.getValue('HKEY_CURRENT_USER\\A', 'x')).toEqual({ name: 'x', type: REG_SZ, data: sz('1') });
    expect(reg.getKey('HKEY_CURRENT_USER\\A\\Empty')).toEqual({ path: 'HKEY_CURRENT_USER\\A\\Empty', values: [] });
  });

  it('does not hold parents no file names (Windows creates them on import)', () => {
    const reg = load('[HKEY_CURRENT_USER\\A\\B\\C]\r\n');
    expect(reg.size).toBe(1);
    expect(reg.hasKey('HKEY_CURRENT_USER\\A\\B')).toBe(false);
  });

  it('replaces the type and data of a value set twice, and deletes values', () => {
    const reg = load('[HKEY_CURRENT_USER\\A]\r\n"x"="1"\r\n"y"="2"\r\n"x"=dword:00000005\r\n"y"=-\r\n"never"=-\r\n@="d"\r\n@=-\r\n');
    expect(reg.getKey('HKEY_CURRENT_USER\\A')!.values).toEqual([{ name: 'x', type: REG_DWORD, data: dword(5) }]);
  });

  it('deletes a key with all its subkeys, and nothing that merely shares a prefix', () => {
    const reg = load(
      '[HKEY_CURRENT_USER\\A]\r\n[HKEY_CURRENT_USER\\A\\B]\r\n[HKEY_CURRENT_USER\\A\\B\\C]\r\n[HKEY_CURRENT_USER\\AB]\r\n[HKEY_CURRENT_USER\\A B]\r\n[HKEY_LOCAL_MACHINE\\A\\B]\r\n' +
        '[-HKEY_CURRENT_USER\\a\\b]\r\n[-HKEY_CURRENT_USER\\Missing\\Key]\r\n',
    );
    expect(paths(reg)).toEqual(['HKEY_CURRENT_USER\\A', 'HKEY_CURRENT_USER\\A B', 'HKEY_CURRENT_USER\\AB', 'HKEY_LOCAL_MACHINE\\A\\B']);
    expect(reg.deleteKey('HKEY_CURRENT_USER\\A')).toBe(1);
    expect(reg.deleteKey('HKEY_CURRENT_USER\\A')).toBe(0);
  });

  it('deletes held subkeys even when the deleted key itself was never named', () => {
    const reg = load('[HKEY_CURRENT_USER\\P\\Q\\R]\r\n"v"="1"\r\n[HKEY_CURRENT_USER\\P\\S]\r\n[-HKEY_CURRENT_USER\\P]\r\n');
    expect(reg.size).toBe(0);
    // The key can come back afterwards, with a new spelling.
    load('[HKEY_CURRENT_USER\\p\\q]\r\n', reg);
    expect(paths(reg)).toEqual(['HKEY_CURRENT_USER\\p\\q']);
  });

  it('matches key and value names case-insensitively and keeps their first spelling', () => {
    const reg = load('[hkey_current_user\\Software\\MyApp]\r\n"Name"="1"\r\n\r\n[HKEY_CURRENT_USER\\SOFTWARE\\myapp]\r\n"NAME"="2"\r\n');
    expect(reg.keys()).toEqual([{ path: 'HKEY_CURRENT_USER\\Software\\MyApp', values: [{ name: 'Name', type: REG_SZ, data: sz('2') }] }]);
    expect(reg.getValue('HKEY_CURRENT_USER\\software\\MYAPP', 'nAmE')?.data).toEqual(sz('2'));
  });

  it('spells a new key like the held keys that share its prefix, above or below it', () => {
    const reg = load('[HKEY_CURRENT_USER\\Software\\Vendor\\App]\r\n[HKEY_CURRENT_USER\\SOFTWARE\\VENDOR\\Other]\r\n[HKEY_CURRENT_USER\\software\\vendor]\r\n');
    expect(paths(reg)).toEqual(['HKEY_CURRENT_USER\\Software\\Vendor', 'HKEY_CURRENT_USER\\Software\\Vendor\\App', 'HKEY_CURRENT_USER\\Software\\Vendor\\Other']);
  });

  it('folds non-ASCII letters one code unit at a time, as Windows does', () => {
    const reg = load('[HKEY_CURRENT_USER\\\u00c9t\u00e9]\r\n"\u00e9"="1"\r\n"stra\u00dfe"="2"\r\n[HKEY_CURRENT_USER\\\u00e9T\u00c9]\r\n"\u00c9"="3"\r\n"STRASSE"="4"\r\n');
    expect(reg.keys()).toHaveLength(1);
    expect(reg.getValue('HKEY_CURRENT_USER\\\u00c9T\u00c9', '\u00e9')!.data).toEqual(sz('3'));
    expect(reg.getKey('HKEY_CURRENT_USER\\\u00c9t\u00e9')!.values).toHaveLength(3);
    expect(keyPathId('a\\\u00df')).toBe('A\\\u00df');
    expect(valueNameId(null)).toBe(valueNameId(''));
    expect(valueNameId('@')).not.toBe(valueNameId(null));
  });
});

describe('Registry methods', () => {
  it('copies value bytes on set, so a caller cannot change them afterwards', () => {
    const reg = new Registry();
    const data = bytes(1, 2, 3);
    reg.setValue('HKEY_USERS\\S-1\\K', { name: 'b', type: REG_BINARY, data });
    data[0] = 9;
    expect(reg.getValue('HKEY_USERS\\S-1\\K', 'b')!.data).toEqual(bytes(1, 2, 3));
  });

  it('treats the name "" as the default value', () => {
    const reg = new Registry();
    reg.setValue('HKEY_USERS\\K', { name: '', type: REG_SZ, data: sz('d') });
    expect(reg.getValue('HKEY_USERS\\K', null)).toEqual({ name: null, type: REG_SZ, data: sz('d') });
  });

  it('clones independently', () => {
    const a = load('[HKEY_CURRENT_USER\\A]\r\n"x"="1"\r\n');
    const b = a.clone();
    b.setValue('HKEY_CURRENT_USER\\A', { name: 'y', type: REG_SZ, data: sz('2') });
    b.deleteKey('HKEY_CURRENT_USER\\A');
    b.createKey('HKEY_CURRENT_USER\\a\\b');
    expect(a.keys()).toEqual([{ path: 'HKEY_CURRENT_USER\\A', values: [{ name: 'x', type: REG_SZ, data: sz('1') }] }]);
    expect(paths(b)).toEqual(['HKEY_CURRENT_USER\\a\\b']);
  });

  it('refuses invalid paths, names and types', async () => {
    const reg = new Registry();
    await expectCode(() => reg.createKey('HKCU\\Software'), 'INVALID_ARGUMENT');
    await expectCode(() => reg.createKey('HKEY_CURRENT_USER\\a\\'), 'INVALID_ARGUMENT');
    await expectCode(() => reg.deleteKey('HKEY_CURRENT_USER'), 'INVALID_ARGUMENT');
    await expectCode(() => reg.setValue('HKEY_USERS\\K', { name: 'a\0', type: REG_SZ, data: sz('') }), 'INVALID_ARGUMENT');
    await expectCode(() => reg.setValue('HKEY_USERS\\K', { name: 'a', type: 1.5, data: sz('') }), 'INVALID_ARGUMENT');
    expect(reg.size).toBe(0);
  });
});

describe('exportRegistry', () => {
  it('writes keys parents first, siblings and values in upper-cased order, default value first', () => {
    const reg = load(
      '[HKEY_CURRENT_USER\\b]\r\n"z"="1"\r\n"A"="2"\r\n@="3"\r\n"_"="4"\r\n' +
        '[HKEY_CURRENT_USER\\A B]\r\n[HKEY_CURRENT_USER\\a\\c]\r\n[HKEY_CURRENT_USER\\a]\r\n[HKEY_LOCAL_MACHINE\\X]\r\n[HKEY_CLASSES_ROOT\\.txt]\r\n',
    );
    const text = Buffer.from(exportRegistry(reg)).subarray(2).toString('utf16le');
    expect(text).toBe(
      'Windows Registry Editor Version 5.00\r\n\r\n' +
        '[HKEY_CLASSES_ROOT\\.txt]\r\n\r\n' +
        '[HKEY_CURRENT_USER\\a]\r\n\r\n' +
        '[HKEY_CURRENT_USER\\a\\c]\r\n\r\n' +
        '[HKEY_CURRENT_USER\\A B]\r\n\r\n' +
        '[HKEY_CURRENT_USER\\b]\r\n@="3"\r\n"A"="2"\r\n"z"="1"\r\n"_"="4"\r\n\r\n' +
        '[HKEY_LOCAL_MACHINE\\X]\r\n\r\n',
    );
  });

  it('gives the same bytes for the same registry however it was built', () => {
    const a = load('[HKEY_CURRENT_USER\\A]\r\n"x"="1"\r\n"y"=dword:00000002\r\n[HKEY_CURRENT_USER\\B]\r\n');
    const b = load('[HKEY_CURRENT_USER\\B]\r\n[HKEY_CURRENT_USER\\A]\r\n"y"=dword:00000002\r\n"x"="0"\r\n"x"="1"\r\n[HKEY_CURRENT_USER\\C]\r\n[-HKEY_CURRENT_USER\\C]\r\n');
    expect(Buffer.from(exportRegistry(b)).equals(Buffer.from(exportRegistry(a)))).toBe(true);
  });

  it('exports what imports back to the same registry, in v5 and REGEDIT4', () => {
    const reg = applyToRegistry(new Registry(), decodeRegFile(regeditExport(SAMPLE_KEYS)));
    expect(reg.size).toBe(3);
    const again = applyToRegistry(new Registry(), decodeRegFile(exportRegistry(reg)));
    expect(again.keys()).toEqual(reg.keys());
    const ansi = new Registry();
    ansi.setValue('HKEY_LOCAL_MACHINE\\SOFTWARE\\Caf\u00e9', { name: 'Path', type: 2, data: sz('%SystemRoot%\\\u00e9\u20ac') });
    ansi.setValue('HKEY_LOCAL_MACHINE\\SOFTWARE\\Caf\u00e9', { name: 'On', type: REG_DWORD, data: dword(1) });
    const bytes4 = exportRegistry(ansi, { version: 'regedit4' });
    expect(Buffer.from(bytes4).toString('latin1').startsWith('REGEDIT4\r\n')).toBe(true);
    expect(registryToFile(ansi, { version: 'regedit4' })).toMatchObject({ encoding: 'windows-1252', bom: false });
    expect(applyToRegistry(new Registry(), decodeRegFile(bytes4, { encoding: 'windows-1252' })).keys()).toEqual(ansi.keys());
  });

  it('refuses REGEDIT4 for string data its code page cannot hold', async () => {
    const reg = applyToRegistry(new Registry(), decodeRegFile(regeditExport(SAMPLE_KEYS)));
    await expectCode(() => exportRegistry(reg, { version: 'regedit4' }), 'INVALID_ARGUMENT');
  });
});

describe('typed views of value data', () => {
  it('REG_SZ: UTF-16LE with one NUL; reads stop at the first NUL', () => {
    expect(encodeRegSz('h\u00e9')).toEqual(bytes(0x68, 0, 0xe9, 0, 0, 0));
    for (const s of ['', 'x', 'C:\\Program Files', '\ud83d\ude00']) expect(decodeRegSz(encodeRegSz(s))).toBe(s);
    expect(decodeRegSz(sz('a\0b'))).toBe('a');
    expect(decodeRegSz(bytes(0x61, 0))).toBe('a');
    expect(decodeRegSz(bytes())).toBe('');
  });

  it('REG_MULTI_SZ: strings each NUL-terminated, one more NUL at the end', () => {
    expect(encodeRegMultiSz(['a', 'bc'])).toEqual(multiSz(['a', 'bc']));
    expect(encodeRegMultiSz([])).toEqual(bytes(0, 0));
    for (const list of [[], ['x'], ['one', 'two', 'three']]) expect(decodeRegMultiSz(encodeRegMultiSz(list))).toEqual(list);
    expect(decodeRegMultiSz(sz('a\0b'))).toEqual(['a', 'b']); // no final terminator
    expect(decodeRegMultiSz(bytes())).toEqual([]);
    expect(decodeRegMultiSz(multiSz(['a', '', 'b']))).toEqual(['a']); // an empty string ends the list
  });

  it('REG_DWORD and REG_QWORD: little-endian', () => {
    expect(encodeRegDword(0x12345678)).toEqual(bytes(0x78, 0x56, 0x34, 0x12));
    expect(decodeRegDword(dword(0xffffffff))).toBe(0xffffffff);
    expect(encodeRegQword(0x0102030405060708n)).toEqual(bytes(8, 7, 6, 5, 4, 3, 2, 1));
    expect(decodeRegQword(qword(0xffffffffffffffffn))).toBe(0xffffffffffffffffn);
  });

  it('refuses shapes that do not fit', async () => {
    await expectCode(() => decodeRegSz(bytes(1)), 'INVALID_ARGUMENT');
    await expectCode(() => encodeRegSz('a\0'), 'INVALID_ARGUMENT');
    await expectCode(() => encodeRegMultiSz(['a', '']), 'INVALID_ARGUMENT');
    await expectCode(() => decodeRegMultiSz(bytes(1, 2, 3)), 'INVALID_ARGUMENT');
    await expectCode(() => encodeRegDword(-1), 'INVALID_ARGUMENT');
    await expectCode(() => encodeRegDword(2 ** 32), 'INVALID_ARGUMENT');
    await expectCode(() => decodeRegDword(bytes(1, 2, 3)), 'INVALID_ARGUMENT');
    await expectCode(() => encodeRegQword(-1n), 'INVALID_ARGUMENT');
    await expectCode(() => decodeRegQword(bytes(1)), 'INVALID_ARGUMENT');
  });
});
