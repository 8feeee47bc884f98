// decodeRegFile reads what regedit reads: both headers, all three encodings, every value type,
// escapes, odd names, whitespace, comments, line continuations, deletions and the default value.
import { describe, expect, it } from 'vitest';
import {
  decodeRegFile,
  REG_BINARY,
  REG_DWORD,
  REG_EXPAND_SZ,
  REG_MULTI_SZ,
  REG_QWORD,
  REG_SZ,
  type RegKeySection,
  type RegValueSet,
  type RegistryFile,
} from '../../../../src/index.js';
import { bytes, dword, latin1, multiSz, qword, regeditExport, SAMPLE_KEYS, sz, utf16WithBom } from './fixtures.js';

const KEY = 'HKEY_CURRENT_USER\\Software\\Test';

/** A v5 file (UTF-16LE with BOM) holding `body` after `[KEY]`. */
function v5(body: string, head = `[${KEY}]\r\n`): Buffer {
  return utf16WithBom(`Windows Registry Editor Version 5.00\r\n\r\n${head}${body}`);
}
function r4(body: string, head = `[${KEY}]\r\n`): Buffer {
  return latin1(`REGEDIT4\r\n\r\n${head}${body}`);
}
function section(f: RegistryFile, i = 0): RegKeySection {
  const s = f.sections[i]!;
  if (s.kind !== 'key') throw new Error(`section ${i} is a deletion`);
  return s;
}
/** The one value set in a one-key file. */
function only(buf: Buffer): RegValueSet {
  const vals = section(decodeRegFile(buf)).values;
  expect(vals).toHaveLength(1);
  const v = vals[0]!;
  if (v.kind !== 'set') throw new Error('not a set');
  return v;
}

describe('decodeRegFile: a regedit v5 export', () => {
  const file = decodeRegFile(regeditExport(SAMPLE_KEYS));

  it('reads the header, encoding and every key in order', () => {
    expect(file.version).toBe('v5');
    expect(file.encoding).toBe('utf-16le');
    expect(file.bom).toBe(true);
    expect(file.sections.map((s) => [s.kind, s.path])).toEqual(SAMPLE_KEYS.map((k) => [k.deleted ? 'delete-key' : 'key', k.path]));
  });

  it('reads every value with its type number and exact bytes, wrapped hex included', () => {
    for (const [i, k] of SAMPLE_KEYS.entries()) {
      if (k.deleted) continue;
      expect(section(file, i).values).toEqual(k.values.map((v) => ({ kind: 'set', name: v.name, type: v.type, data: v.data })));
    }
  });
});

describe('decodeRegFile: value types', () => {
  it('reads quoted strings as REG_SZ with a terminating NUL', () => {
    expect(only(v5('"a"="x"\r\n'))).toEqual({ kind: 'set', name: 'a', type: REG_SZ, data: sz('x') });
    expect(only(v5('"a"=""\r\n')).data).toEqual(sz(''));
  });

  it('reads dword: as 4 little-endian bytes, with 1 to 8 digits in either case', () => {
    expect(only(v5('"d"=dword:0000ABcd\r\n'))).toEqual({ kind: 'set', name: 'd', type: REG_DWORD, data: dword(0xabcd) });
    expect(only(v5('"d"=dword:1\r\n')).data).toEqual(dword(1));
    expect(only(v5('"d"=dword:ffffffff\r\n')).data).toEqual(dword(0xffffffff));
  });

  it('reads hex:, hex(0), hex(2), hex(7), hex(b) and hex(N) for any 32-bit type number', () => {
    expect(only(v5('"b"=hex:00,ff,7F\r\n'))).toMatchObject({ type: REG_BINARY, data: bytes(0, 0xff, 0x7f) });
    expect(only(v5('"n"=hex(0):01\r\n'))).toMatchObject({ type: 0, data: bytes(1) });
    expect(only(v5('"e"=hex(2):25,00,41,00,25,00,00,00\r\n'))).toMatchObject({ type: REG_EXPAND_SZ, data: sz('%A%') });
    expect(only(v5('"m"=hex(7):61,00,00,00,62,00,00,00,00,00\r\n'))).toMatchObject({ type: REG_MULTI_SZ, data: multiSz(['a', 'b']) });
    expect(only(v5('"q"=hex(b):ef,cd,ab,89,67,45,23,01\r\n'))).toMatchObject({ type: REG_QWORD, data: qword(0x0123456789abcdefn) });
    expect(only(v5('"u"=hex(100):56\r\n'))).toMatchObject({ type: 0x100, data: bytes(0x56) });
    expect(only(v5('"u"=hex(FFFFFFFF):56\r\n'))).toMatchObject({ type: 0xffffffff });
    expect(only(v5('"u"=hex(0003):56\r\n'))).toMatchObject({ type: REG_BINARY });
  });

  it('reads empty hex data and single-digit bytes', () => {
    expect(only(v5('"x"=hex:\r\n')).data).toEqual(bytes());
    expect(only(v5('"x"=hex(1):\r\n'))).toMatchObject({ type: REG_SZ, data: bytes() });
    expect(only(v5('"x"=hex:1,2,a\r\n')).data).toEqual(bytes(1, 2, 10));
  });

  it('keeps string-typed hex data exactly, with no terminator added', () => {
    expect(only(v5('"x"=hex(2):41,00\r\n')).data).toEqual(bytes(0x41, 0));
    expect(only(v5('"x"=hex(1):00,00,61,00\r\n')).data).toEqual(bytes(0, 0, 0x61, 0));
  });
});

describe('decodeRegFile: names and escapes', () => {
  it('reads @ and "" as the default value (null)', () => {
    expect(only(v5('@="d"\r\n')).name).toBeNull();
    expect(only(v5('""="d"\r\n')).name).toBeNull();
    expect(only(v5('"@"="d"\r\n')).name).toBe('@');
  });

  it('unescapes \\\\ and \\" in names and strings, and \\n and \\r as regedit does', () => {
    expect(only(v5('"a\\\\b\\"c"="x\\\\y\\"z"\r\n'))).toMatchObject({ name: 'a\\b"c', data: sz('x\\y"z') });
    expect(only(v5('"nl"="one\\r\\ntwo"\r\n')).data).toEqual(sz('one\r\ntwo'));
  });

  it('takes =, ], [, ; and # inside quotes as text', () => {
    expect(only(v5('"k=v]x[;#"="a=b ;not a comment # nor this"\r\n'))).toMatchObject({ name: 'k=v]x[;#', data: sz('a=b ;not a comment # nor this') });
  });

  it('keeps spaces and tabs inside quotes', () => {
    expect(only(v5('"  name\t"="\t value  "\r\n'))).toMatchObject({ name: '  name\t', data: sz('\t value  ') });
  });

  it('takes the key path up to the last ] on the line, so key names may hold ] and ;', () => {
    const f = decodeRegFile(v5('', `[${KEY}\\a]b;c]\r\n`));
    expect(f.sections[0]!.path).toBe(`${KEY}\\a]b;c`);
  });

  it('keeps the case of roots and names as written, and trailing spaces of a key name', () => {
    const f = decodeRegFile(v5('"VaLuE"="x"\r\n', '[hkey_Current_user\\SoftWare\\Sub ]\r\n'));
    expect(f.sections[0]!.path).toBe('hkey_Current_user\\SoftWare\\Sub ');
    expect((section(f).values[0] as RegValueSet).name).toBe('VaLuE');
  });

  it('accepts every root key regedit does, and a root key alone', () => {
    for (const root of ['HKEY_LOCAL_MACHINE', 'HKEY_CURRENT_USER', 'HKEY_CLASSES_ROOT', 'HKEY_USERS', 'HKEY_CURRENT_CONFIG']) {
      expect(decodeRegFile(v5('', `[${root}\\X]\r\n[${root}]\r\n`)).sections.map((s) => s.path)).toEqual([`${root}\\X`, root]);
    }
  });
});

describe('decodeRegFile: layout', () => {
  it('skips blank lines and ; comments, and allows blanks around the parts of a line', () => {
    const f = decodeRegFile(
      v5(
        '; a comment\r\n\r\n   \t\r\n  ; indented comment\r\n\t "a" \t=\t "x" \t; trailing comment\r\n @ = dword: 00000002 ;c\r\n"c"=-  ;gone\r\n"d"=hex:01,02 ;c\r\n',
        ` \t[${KEY}] ; key comment\r\n`,
      ),
    );
    expect(section(f).values).toEqual([
      { kind: 'set', name: 'a', type: REG_SZ, data: sz('x') },
      { kind: 'set', name: null, type: REG_DWORD, data: dword(2) },
      { kind: 'delete', name: 'c' },
      { kind: 'set', name: 'd', type: REG_BINARY, data: bytes(1, 2) },
    ]);
  });

  it('accepts a comment right after the data, as regedit does', () => {
    expect(only(v5('"a"="x";c\r\n')).data).toEqual(sz('x'));
    expect(only(v5('"a"=dword:1234;5678\r\n')).data).toEqual(dword(0x1234));
    expect(only(v5('"a"=hex:01,02;c\r\n')).data).toEqual(bytes(1, 2));
  });

  it('reads LF, CR and CRLF line ends, and a last line without one', () => {
    const text = `Windows Registry Editor Version 5.00\n[${KEY}]\r"a"="1"\r\n"b"="2"`;
    const f = decodeRegFile(utf16WithBom(text));
    expect(section(f).values.map((v) => v.name)).toEqual(['a', 'b']);
  });

  it('accepts a header indented by blanks', () => {
    expect(decodeRegFile(latin1(' \tREGEDIT4\r\n')).version).toBe('regedit4');
  });

  it('reads an empty file body and keys without values', () => {
    expect(decodeRegFile(utf16WithBom('Windows Registry Editor Version 5.00\r\n')).sections).toEqual([]);
    expect(decodeRegFile(v5('')).sections).toEqual([{ kind: 'key', path: KEY, values: [] }]);
  });

  it('keeps repeated keys and values in file order', () => {
    const f = decodeRegFile(v5(`"a"="1"\r\n"A"="2"\r\n[${KEY}]\r\n"a"=-\r\n`));
    expect(f.sections).toHaveLength(2);
    expect(section(f, 0).values.map((v) => v.name)).toEqual(['a', 'A']);
    expect(section(f, 1).values).toEqual([{ kind: 'delete', name: 'a' }]);
  });
});

describe('decodeRegFile: deletions', () => {
  it('reads [-key] and "name"=- and @=-', () => {
    const f = decodeRegFile(v5('"x"=-\r\n@=-\r\n\r\n[-HKEY_CURRENT_USER\\Software\\Old]\r\n'));
    expect(f.sections).toEqual([
      { kind: 'key', path: KEY, values: [{ kind: 'delete', name: 'x' }, { kind: 'delete', name: null }] },
      { kind: 'delete-key', path: 'HKEY_CURRENT_USER\\Software\\Old' },
    ]);
  });
});

describe('decodeRegFile: continued hex lines', () => {
  it('joins lines ending in ",\\" with the next, leading blanks or not', () => {
    expect(only(v5('"x"=hex:01,02,\\\r\n  03,04,\\\r\n05\r\n')).data).toEqual(bytes(1, 2, 3, 4, 5));
    expect(only(v5('"x"=hex:01,\t\\\r\n\t 02\r\n')).data).toEqual(bytes(1, 2));
  });

  it('allows blanks and a ; comment after the backslash', () => {
    expect(only(v5('"x"=hex:01,02,  \\  ;comment\r\n  03\r\n')).data).toEqual(bytes(1, 2, 3));
  });

  it('skips blank lines and ; comment lines between continued lines', () => {
    expect(only(v5('"x"=hex(7):41,00,\\\r\n\r\n  ; note\r\n;note\r\n  \t\r\n  00,00,00,00\r\n')).data).toEqual(multiSz(['A']));
  });

  it('allows the backslash right after the type tag', () => {
    expect(only(v5('"x"=hex(2):\\\r\n  41,00,00,00\r\n')).data).toEqual(sz('A'));
  });

  it('ends the data at a trailing comma without a backslash', () => {
    expect(only(v5('"x"=hex:01,02,\r\n')).data).toEqual(bytes(1, 2));
  });

  it('keeps the bytes read so far when the file ends after a backslash, as regedit does', () => {
    expect(only(v5('"x"=hex:01,02,\\')).data).toEqual(bytes(1, 2));
    expect(only(v5('"x"=hex:01,02,\\\r\n\r\n; nothing more\r\n')).data).toEqual(bytes(1, 2));
  });

  it('goes on with the next value after the continued one', () => {
    const vals = section(decodeRegFile(v5('"x"=hex:01,\\\r\n  02\r\n"y"="z"\r\n'))).values;
    expect(vals).toEqual([
      { kind: 'set', name: 'x', type: REG_BINARY, data: bytes(1, 2) },
      { kind: 'set', name: 'y', type: REG_SZ, data: sz('z') },
    ]);
  });
});

describe('decodeRegFile: encodings', () => {
  it('reads v5 as UTF-8 with and without a BOM', () => {
    const text = `Windows Registry Editor Version 5.00\r\n\r\n[${KEY}\\\u00c9t\u00e9]\r\n"\u4e16"="\ud83d\ude00"\r\n`;
    for (const [buf, bom] of [
      [Buffer.from(text, 'utf8'), false],
      [Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(text, 'utf8')]), true],
    ] as const) {
      const f = decodeRegFile(buf);
      expect([f.version, f.encoding, f.bom]).toEqual(['v5', 'utf-8', bom]);
      expect(f.sections[0]!.path).toBe(`${KEY}\\\u00c9t\u00e9`);
      expect(section(f).values[0]).toEqual({ kind: 'set', name: '\u4e16', type: REG_SZ, data: sz('\ud83d\ude00') });
    }
  });

  it('reads a BOM-less file that is not UTF-8 as windows-1252, 0x80-0x9f included', () => {
    const f = decodeRegFile(Buffer.concat([latin1(`REGEDIT4\r\n\r\n[${KEY}]\r\n"a"="`), Buffer.from([0x80, 0x99, 0xe9, 0x81]), latin1('"\r\n')]));
    expect(f.encoding).toBe('windows-1252');
    expect(section(f).values[0]).toMatchObject({ data: sz('\u20ac\u2122\u00e9\u0081') });
  });

  it('guesses an all-ASCII file as windows-1252 for REGEDIT4 (regedit writes ANSI) and UTF-8 for v5', () => {
    const r4file = latin1(`REGEDIT4\r\n\r\n[${KEY}]\r\n"e"=hex(2):e9,00\r\n`);
    expect(decodeRegFile(r4file).encoding).toBe('windows-1252');
    expect(section(decodeRegFile(r4file)).values[0]).toMatchObject({ data: sz('\u00e9') });
    expect(decodeRegFile(latin1(` \tREGEDIT4\r\n`)).encoding).toBe('windows-1252');
    expect(decodeRegFile(latin1(`Windows Registry Editor Version 5.00\r\n`)).encoding).toBe('utf-8');
  });

  it('reads a file as the encoding it is told', () => {
    const buf = latin1(`REGEDIT4\r\n\r\n[${KEY}]\r\n"a"="x"\r\n`);
    expect(decodeRegFile(buf, { encoding: 'utf-8' }).encoding).toBe('utf-8');
    expect(decodeRegFile(buf, { encoding: 'windows-1252' }).encoding).toBe('windows-1252');
  });

  it('converts REGEDIT4 hex(1), hex(2) and hex(7) from the ANSI code page to UTF-16LE', () => {
    const f = decodeRegFile(r4('"e"=hex(2):25,50,41,54,48,25,00\r\n"m"=hex(7):61,00,e9,00,00\r\n"s"=hex(1):80,00\r\n"b"=hex:e9\r\n'), { encoding: 'windows-1252' });
    expect(section(f).values).toEqual([
      { kind: 'set', name: 'e', type: REG_EXPAND_SZ, data: sz('%PATH%') },
      { kind: 'set', name: 'm', type: REG_MULTI_SZ, data: multiSz(['a', '\u00e9']) },
      { kind: 'set', name: 's', type: REG_SZ, data: sz('\u20ac') },
      { kind: 'set', name: 'b', type: REG_BINARY, data: bytes(0xe9) },
    ]);
  });

  it('reads REGEDIT4 string hex as UTF-8 in a UTF-8 file, and v5 string hex as UTF-16LE in any file', () => {
    expect(only(Buffer.from(`REGEDIT4\r\n[${KEY}\\\u00c9]\r\n"e"=hex(2):c3,a9,00\r\n`)).data).toEqual(sz('\u00e9'));
    expect(only(Buffer.from(`Windows Registry Editor Version 5.00\r\n[${KEY}]\r\n"e"=hex(2):e9,00,00,00\r\n`)).data).toEqual(sz('\u00e9'));
  });

  it('reads a REGEDIT4 header in a UTF-16LE file with string hex as UTF-16LE (the file is Unicode)', () => {
    const f = decodeRegFile(utf16WithBom(`REGEDIT4\r\n[${KEY}]\r\n"e"=hex(2):41,00,00,00\r\n`));
    expect([f.version, f.encoding]).toEqual(['regedit4', 'utf-16le']);
    expect(section(f).values[0]).toMatchObject({ data: sz('A') });
  });

  it('keeps unpaired surrogates of a UTF-16LE file', () => {
    expect(only(v5('"\ud800"="\udc00x"\r\n'))).toMatchObject({ name: '\ud800', data: sz('\udc00x') });
  });
});
