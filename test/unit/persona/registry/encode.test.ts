// encodeRegFile writes regedit's layout byte for byte (wrapping included), picks a lossless form
// for data regedit itself would mangle, and refuses models it cannot write.
import { describe, expect, it } from 'vitest';
import {
  CarryonError,
  decodeRegFile,
  encodeRegFile,
  REG_BINARY,
  REG_DWORD,
  REG_EXPAND_SZ,
  REG_MULTI_SZ,
  REG_QWORD,
  REG_SZ,
  wrapHexData,
  type RegistryFile,
  type RegValueEdit,
} from '../../../../src/index.js';
import { expectCode } from '../../helpers.js';
import { bytes, dword, latin1, multiSz, regeditExport, regeditHex, regeditText, SAMPLE_KEYS, sz, utf16WithBom, type FixtureKey } from './fixtures.js';

const KEY = 'HKEY_CURRENT_USER\\Software\\Test';

function file(values: RegValueEdit[], over: Partial<RegistryFile> = {}): RegistryFile {
  return { version: 'v5', encoding: 'utf-16le', bom: true, sections: [{ kind: 'key', path: KEY, values }], ...over };
}

/** The text of an encoded file (BOM dropped). */
function textOf(f: RegistryFile): string {
  const b = Buffer.from(encodeRegFile(f));
  if (f.encoding === 'utf-16le') return b.subarray(2).toString('utf16le');
  return f.encoding === 'utf-8' ? b.subarray(f.bom ? 3 : 0).toString('utf8') : b.toString('latin1');
}

/** The value lines of an encoded one-key file. */
function valueLines(f: RegistryFile): string {
  const t = textOf(f);
  const start = t.indexOf(']\r\n') + 3;
  return t.slice(start, t.length - 4); // drop the final "\r\n\r\n"
}

describe('encodeRegFile: regedit layout, literally', () => {
  it('writes header, blank lines and CRLF exactly as regedit', () => {
    const f: RegistryFile = {
      version: 'v5',
      encoding: 'utf-16le',
      bom: true,
      sections: [
        { kind: 'key', path: KEY, values: [{ kind: 'set', name: 'a', type: REG_SZ, data: sz('b') }] },
        { kind: 'key', path: `${KEY}\\Sub`, values: [] },
      ],
    };
    const out = Buffer.from(encodeRegFile(f));
    expect(out.subarray(0, 2)).toEqual(Buffer.from([0xff, 0xfe]));
    expect(out.subarray(2).toString('utf16le')).toBe(`Windows Registry Editor Version 5.00\r\n\r\n[${KEY}]\r\n"a"="b"\r\n\r\n[${KEY}\\Sub]\r\n\r\n`);
    expect(textOf({ ...f, version: 'regedit4', encoding: 'windows-1252', bom: false }).startsWith('REGEDIT4\r\n\r\n[')).toBe(true);
  });

  it('wraps ShellState as a Windows export does: 20 bytes after a 17-character prefix', () => {
    const data = Buffer.from('240000003428000000000000000000000000000001000000130000000000000072000000', 'hex');
    expect(valueLines(file([{ kind: 'set', name: 'ShellState', type: REG_BINARY, data: new Uint8Array(data) }]))).toBe(
      '"ShellState"=hex:24,00,00,00,34,28,00,00,00,00,00,00,00,00,00,00,00,00,00,00,\\\r\n' + '  01,00,00,00,13,00,00,00,00,00,00,00,72,00,00,00',
    );
  });

  it('wraps at 17 bytes after a 26-character prefix, then 25 bytes a line', () => {
    const data = Uint8Array.from({ length: 45 }, (_, i) => i);
    const line1 = '"Multiple strings"=hex(7):00,01,02,03,04,05,06,07,08,09,0a,0b,0c,0d,0e,0f,10,\\';
    const line2 = '  11,12,13,14,15,16,17,18,19,1a,1b,1c,1d,1e,1f,20,21,22,23,24,25,26,27,28,29,\\';
    const line3 = '  2a,2b,2c';
    expect(line1.length).toBe(78);
    expect(line2.length).toBe(78);
    expect(valueLines(file([{ kind: 'set', name: 'Multiple strings', type: REG_MULTI_SZ, data }]))).toBe([line1, line2, line3].join('\r\n'));
  });

  it('does not wrap before the last byte, even when the line is full', () => {
    // 20 bytes fill "ShellState"'s first line; a 21st goes to the next line, alone.
    const twenty = valueLines(file([{ kind: 'set', name: 'ShellState', type: REG_BINARY, data: new Uint8Array(20) }]));
    expect(twenty).toBe(`"ShellState"=hex:${Array(20).fill('00').join(',')}`);
    const more = valueLines(file([{ kind: 'set', name: 'ShellState', type: REG_BINARY, data: new Uint8Array(21) }]));
    expect(more).toBe(`"ShellState"=hex:${Array(20).fill('00').join(',')},\\\r\n  00`);
  });

  it('puts one byte a first line after a name too long for more', () => {
    const name = 'n'.repeat(80);
    expect(valueLines(file([{ kind: 'set', name, type: REG_BINARY, data: bytes(1, 2, 3) }]))).toBe(`"${name}"=hex:01,\\\r\n  02,03`);
  });
});

describe('encodeRegFile: the wrap rule matches the fixture generator everywhere', () => {
  it('for every prefix length 0..100 and data length 0..90', () => {
    for (let prefix = 0; prefix <= 100; prefix++) {
      for (let n = 0; n <= 90; n++) {
        const data = Uint8Array.from({ length: n }, (_, i) => (i * 7 + prefix) & 0xff);
        const got = wrapHexData(data, prefix);
        if (got !== regeditHex(data, prefix)) expect({ prefix, n, got }).toEqual({ prefix, n, got: regeditHex(data, prefix) });
      }
    }
  });

  it('keeps every line within 80 columns after a short prefix', () => {
    const lines = wrapHexData(new Uint8Array(1000), 20).split('\r\n');
    expect(lines.length).toBe(41);
    for (const l of lines) expect(l.length).toBeLessThanOrEqual(78);
    expect(lines.slice(1, -1).every((l) => l.length === 78)).toBe(true);
  });
});

describe('encodeRegFile: byte-for-byte round trip of regedit exports', () => {
  it('gives back a v5 (UTF-16LE) export unchanged', () => {
    const original = regeditExport(SAMPLE_KEYS, 'v5');
    expect(Buffer.from(encodeRegFile(decodeRegFile(original))).equals(original)).toBe(true);
  });

  it('gives back a REGEDIT4 (windows-1252) export unchanged, string hex in ANSI', () => {
    const keys: FixtureKey[] = [
      {
        path: 'HKEY_LOCAL_MACHINE\\SOFTWARE\\Caf\u00e9',
        values: [
          { name: null, type: REG_SZ, data: sz('\u00e9t\u00e9 \u00ff') },
          { name: 'Path', type: REG_EXPAND_SZ, data: sz('%SystemRoot%\\system32;%SystemRoot%;%SystemRoot%\\System32\\Wbem;%USERPROFILE%\\bin') },
          { name: 'List', type: REG_MULTI_SZ, data: multiSz(['one', 'two']) },
          { name: 'Flags', type: REG_DWORD, data: dword(7) },
          { name: 'Blob', type: REG_BINARY, data: Uint8Array.from({ length: 60 }, (_, i) => 255 - i) },
          { name: 'Big', type: REG_QWORD, data: bytes(1, 2, 3, 4, 5, 6, 7, 8) },
        ],
      },
    ];
    const original = regeditExport(keys, 'regedit4');
    // 14 characters of prefix leave room for 21 bytes on the first line.
    expect(original.toString('latin1')).toContain('"Path"=hex(2):25,53,79,73,74,65,6d,52,6f,6f,74,25,5c,73,79,73,74,65,6d,33,32,\\\r\n  3b,25,');
    expect(original.toString('latin1')).toContain('"List"=hex(7):6f,6e,65,00,74,77,6f,00,00\r\n');
    const f = decodeRegFile(original, { encoding: 'windows-1252' });
    expect(Buffer.from(encodeRegFile(f)).equals(original)).toBe(true);
  });

  it('gives back a hand-written canonical UTF-8 v5 file unchanged', () => {
    const text = regeditText(SAMPLE_KEYS, 'v5');
    const original = Buffer.from(text, 'utf8');
    const f = decodeRegFile(original);
    expect(f.encoding).toBe('utf-8');
    expect(Buffer.from(encodeRegFile(f)).equals(original)).toBe(true);
    const withBom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), original]);
    expect(Buffer.from(encodeRegFile(decodeRegFile(withBom))).equals(withBom)).toBe(true);
  });
});

describe('encodeRegFile: lossless forms for data regedit would mangle', () => {
  const cases: Array<[string, number, Uint8Array, string]> = [
    ['REG_SZ without its terminator', REG_SZ, bytes(0x61, 0), '"v"=hex(1):61,00'],
    ['REG_SZ with an embedded NUL', REG_SZ, sz('a\0b'), '"v"=hex(1):61,00,00,00,62,00,00,00'],
    ['REG_SZ with no bytes at all', REG_SZ, bytes(), '"v"=hex(1):'],
    ['REG_SZ with an odd length', REG_SZ, bytes(0x61, 0, 0), '"v"=hex(1):61,00,00'],
    ['REG_SZ with a line break', REG_SZ, sz('a\r\nb'), '"v"=hex(1):61,00,0d,00,0a,00,62,00,00,00'],
    ['REG_DWORD of 3 bytes', REG_DWORD, bytes(1, 2, 3), '"v"=hex(4):01,02,03'],
    ['REG_DWORD of no bytes', REG_DWORD, bytes(), '"v"=hex(4):'],
    ['REG_QWORD', REG_QWORD, bytes(1, 0, 0, 0, 0, 0, 0, 0), '"v"=hex(b):01,00,00,00,00,00,00,00'],
    ['REG_EXPAND_SZ', REG_EXPAND_SZ, sz('%A%'), '"v"=hex(2):25,00,41,00,25,00,00,00'],
    ['a big type number', 0xabcd1234, bytes(9), '"v"=hex(abcd1234):09'],
  ];
  for (const [what, type, data, line] of cases) {
    it(`writes ${what} as ${line.slice(4, 12)}... and reads it back`, () => {
      const f = file([{ kind: 'set', name: 'v', type, data }]);
      expect(valueLines(f)).toBe(line);
      expect(decodeRegFile(encodeRegFile(f))).toEqual(f);
    });
  }

  it('writes an unpaired surrogate quoted in UTF-16LE but as hex(1) in UTF-8', () => {
    const data = sz('x\ud800');
    expect(valueLines(file([{ kind: 'set', name: 'v', type: REG_SZ, data }]))).toBe('"v"="x\ud800"');
    const f8 = file([{ kind: 'set', name: 'v', type: REG_SZ, data }], { encoding: 'utf-8', bom: false });
    expect(valueLines(f8)).toBe('"v"=hex(1):78,00,00,d8,00,00');
    expect(decodeRegFile(encodeRegFile(f8))).toEqual(f8);
  });

  it('writes a string windows-1252 cannot hold as UTF-16LE hex in a v5 file', () => {
    const f = file([{ kind: 'set', name: 'v', type: REG_SZ, data: sz('\u4e16') }], { encoding: 'windows-1252', bom: false });
    expect(valueLines(f)).toBe('"v"=hex(1):16,4e,00,00');
    expect(decodeRegFile(encodeRegFile(f), { encoding: 'windows-1252' })).toEqual(f);
  });

  it('escapes \\, " and line breaks in names, and writes the default value as @', () => {
    const f = file([
      { kind: 'set', name: 'a\\b"c\r\nd', type: REG_SZ, data: sz('x') },
      { kind: 'delete', name: null },
    ]);
    expect(valueLines(f)).toBe('"a\\\\b\\"c\\r\\nd"="x"\r\n@=-');
    expect(decodeRegFile(encodeRegFile(f))).toEqual(f);
    expect(valueLines(file([{ kind: 'set', name: '', type: REG_DWORD, data: dword(1) }]))).toBe('@=dword:00000001');
  });

  it('writes key deletions', () => {
    const f: RegistryFile = { version: 'v5', encoding: 'utf-16le', bom: true, sections: [{ kind: 'delete-key', path: `${KEY}\\Old` }] };
    expect(textOf(f)).toBe(`Windows Registry Editor Version 5.00\r\n\r\n[-${KEY}\\Old]\r\n\r\n`);
  });
});

describe('encodeRegFile: refuses what it cannot write losslessly', () => {
  const set = (over: Partial<{ name: string | null; type: number; data: Uint8Array }>): RegValueEdit => ({ kind: 'set', name: 'v', type: REG_BINARY, data: bytes(), ...over });
  const cases: Array<[string, RegistryFile, RegExp]> = [
    ['an abbreviated root', { ...file([]), sections: [{ kind: 'key', path: 'HKCU\\X', values: [] }] }, /abbreviation 'HKCU'/],
    ['a key path with a line break', { ...file([]), sections: [{ kind: 'key', path: `${KEY}\\a\nb`, values: [] }] }, /line break/],
    ['the deletion of a root key', { ...file([]), sections: [{ kind: 'delete-key', path: 'HKEY_USERS' }] }, /root key cannot be deleted/],
    ['a value name with a NUL', file([set({ name: 'a\0b' })]), /NUL/],
    ['a negative type', file([set({ type: -1 })]), /type must be an integer/],
    ['a type over 32 bits', file([set({ type: 2 ** 32 })]), /type must be an integer/],
    ['data that is not bytes', file([set({ data: [1, 2] as unknown as Uint8Array })]), /must be a Uint8Array/],
    ['UTF-16LE without a BOM', file([], { bom: false }), /byte-order mark/],
    ['windows-1252 with a BOM', file([], { encoding: 'windows-1252' }), /no byte-order mark/],
    ['an unknown version', file([], { version: 'v6' as 'v5' }), /unknown \.reg version/],
    ['a key path windows-1252 cannot hold', { ...file([], { encoding: 'windows-1252', bom: false }), sections: [{ kind: 'key', path: `${KEY}\\\u4e16`, values: [] }] }, /cannot be written in windows-1252/],
    ['a value name UTF-8 cannot hold', file([set({ name: '\udc00' })], { encoding: 'utf-8', bom: false }), /cannot be written in utf-8/],
    ['REGEDIT4 string data its code page cannot hold', file([set({ type: REG_EXPAND_SZ, data: sz('\u4e16') })], { version: 'regedit4', encoding: 'windows-1252', bom: false }), /REGEDIT4 file writes string data in its code page/],
    ['REGEDIT4 string data of odd length', file([set({ type: REG_SZ, data: bytes(0x41) })], { version: 'regedit4', encoding: 'utf-8', bom: false }), /REGEDIT4 file writes string data/],
  ];
  for (const [what, f, message] of cases) {
    it(`refuses ${what}`, async () => {
      const e = await expectCode(() => encodeRegFile(f), 'INVALID_ARGUMENT');
      expect(e.message).toMatch(message);
    });
  }

  it('names the section and value at fault', () => {
    try {
      encodeRegFile(file([set({}), set({ name: 'x\0' })]));
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(CarryonError);
      expect((e as CarryonError).data).toMatchObject({ section: 0, value: 1, path: KEY });
    }
  });
});

describe('encodeRegFile: other encodings', () => {
  it('writes UTF-8 with and without a BOM, and windows-1252 one byte a character', () => {
    const values: RegValueEdit[] = [{ kind: 'set', name: '\u00e9', type: REG_SZ, data: sz('\u20ac') }];
    const withBom = Buffer.from(encodeRegFile(file(values, { encoding: 'utf-8', bom: true })));
    expect(withBom.subarray(0, 3)).toEqual(Buffer.from([0xef, 0xbb, 0xbf]));
    expect(withBom.subarray(3).toString('utf8')).toContain('"\u00e9"="\u20ac"');
    const ansi = Buffer.from(encodeRegFile(file(values, { version: 'regedit4', encoding: 'windows-1252', bom: false })));
    expect(ansi.includes(Buffer.from([0x22, 0xe9, 0x22, 0x3d, 0x22, 0x80, 0x22]))).toBe(true);
    expect(ansi.equals(latin1(ansi.toString('latin1')))).toBe(true);
  });

  it('writes REGEDIT4 string hex in UTF-8 when that is the code page', () => {
    const f = file([{ kind: 'set', name: 'e', type: REG_EXPAND_SZ, data: sz('\u00e9') }], { version: 'regedit4', encoding: 'utf-8', bom: false });
    expect(valueLines(f)).toBe('"e"=hex(2):c3,a9,00');
    expect(decodeRegFile(encodeRegFile(f), { encoding: 'utf-8' })).toEqual(f);
    // Read without the encoding, all-ASCII REGEDIT4 text is taken for regedit's ANSI.
    expect(decodeRegFile(encodeRegFile(f)).sections[0]).toMatchObject({ values: [{ data: sz('\u00c3\u00a9') }] });
  });

  it('reads back what it writes as v5 UTF-16LE with the fixture layout', () => {
    const out = Buffer.from(encodeRegFile(file([{ kind: 'set', name: 'a', type: REG_SZ, data: sz('b') }])));
    expect(out.equals(utf16WithBom(`Windows Registry Editor Version 5.00\r\n\r\n[${KEY}]\r\n"a"="b"\r\n\r\n`))).toBe(true);
  });
});
