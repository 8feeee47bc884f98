// Fixture generator for .reg tests: writes files the way regedit exports them (v5: UTF-16LE with the
// BOM FF FE; REGEDIT4: one byte a character; CRLF; a blank line before each key and one at the end;
// hex data wrapped at regedit's 80 columns). It is written independently of src/persona/registry's
// encoder: the wrap rule is stated as chunk sizes (the first line holds max(1, ceil((77 - prefix) / 3))
// bytes, every later line 25), and the literal samples below pin it down by hand.
import { REG_BINARY, REG_DWORD, REG_EXPAND_SZ, REG_MULTI_SZ, REG_QWORD, REG_SZ } from '../../../../src/index.js';

export interface FixtureValue {
  name: string | null;
  type: number;
  data: Uint8Array;
}
export interface FixtureKey {
  path: string;
  values: FixtureValue[];
  deleted?: boolean;
}

export function utf16(text: string): Buffer {
  return Buffer.from(text, 'utf16le');
}

/** The bytes regedit writes for a v5 export: BOM FF FE, then UTF-16LE. */
export function utf16WithBom(text: string): Buffer {
  return Buffer.concat([Buffer.from([0xff, 0xfe]), utf16(text)]);
}

/** Text as one byte per character (code points up to 0xff), as a REGEDIT4 export in code page 1252 for these. */
export function latin1(text: string): Buffer {
  return Buffer.from(text, 'latin1');
}

export function sz(s: string): Uint8Array {
  return new Uint8Array(utf16(`${s}\0`));
}
export function multiSz(list: string[]): Uint8Array {
  return new Uint8Array(utf16(`${list.join('\0')}\0\0`));
}
export function dword(n: number): Uint8Array {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return new Uint8Array(b);
}
export function qword(n: bigint): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return new Uint8Array(b);
}
export function bytes(...b: number[]): Uint8Array {
  return Uint8Array.from(b);
}

function hex2(b: number): string {
  return b.toString(16).padStart(2, '0');
}

/** Hex data as regedit lays it out after `prefixLength` characters of `"name"=hex(N):`. */
export function regeditHex(data: Uint8Array, prefixLength: number): string {
  const all = [...data].map(hex2);
  if (all.length === 0) return '';
  const first = Math.max(1, Math.ceil((77 - prefixLength) / 3));
  const lines = [all.slice(0, first)];
  for (let i = first; i < all.length; i += 25) lines.push(all.slice(i, i + 25));
  return lines.map((l) => l.join(',')).join(',\\\r\n  ');
}

function quote(s: string): string {
  return s.replace(/[\\"]/g, (c) => `\\${c}`);
}

/** One value line the way regedit writes it (for data regedit writes without loss). */
export function regeditValue(v: FixtureValue, version: 'v5' | 'regedit4'): string {
  const head = v.name === null ? '@=' : `"${quote(v.name)}"=`;
  if (v.type === REG_SZ) return `${head}"${quote(utf16Text(v.data).slice(0, -1))}"`;
  if (v.type === REG_DWORD && v.data.length === 4) return `${head}dword:${hex2(v.data[3]!)}${hex2(v.data[2]!)}${hex2(v.data[1]!)}${hex2(v.data[0]!)}`;
  const tag = v.type === REG_BINARY ? 'hex:' : `hex(${v.type.toString(16)}):`;
  let data = v.data;
  if (version === 'regedit4' && (v.type === REG_EXPAND_SZ || v.type === REG_MULTI_SZ)) data = new Uint8Array(latin1(utf16Text(v.data)));
  return head + tag + regeditHex(data, head.length + tag.length);
}

function utf16Text(data: Uint8Array): string {
  return Buffer.from(data).toString('utf16le');
}

/** A whole export as text, regedit's layout. */
export function regeditText(keys: FixtureKey[], version: 'v5' | 'regedit4'): string {
  let out = version === 'v5' ? 'Windows Registry Editor Version 5.00\r\n' : 'REGEDIT4\r\n';
  for (const k of keys) {
    out += k.deleted ? `\r\n[-${k.path}]\r\n` : `\r\n[${k.path}]\r\n`;
    for (const v of k.values) out += `${regeditValue(v, version)}\r\n`;
  }
  return `${out}\r\n`;
}

/** A whole export as bytes: v5 in UTF-16LE with BOM, REGEDIT4 one byte a character. */
export function regeditExport(keys: FixtureKey[], version: 'v5' | 'regedit4' = 'v5'): Buffer {
  const text = regeditText(keys, version);
  return version === 'v5' ? utf16WithBom(text) : latin1(text);
}

const HKCU = 'HKEY_CURRENT_USER\\Software\\Carryon Test';

/** Every value type, odd names and long data, as a regedit export would have them. */
export const SAMPLE_KEYS: FixtureKey[] = [
  {
    path: HKCU,
    values: [
      { name: null, type: REG_SZ, data: sz('default value') },
      { name: 'String', type: REG_SZ, data: sz('C:\\Program Files\\"quoted" = [x]') },
      { name: 'Empty', type: REG_SZ, data: sz('') },
      { name: 'Unicode', type: REG_SZ, data: sz('h\u00e9llo \u4e16\u754c \ud83d\ude00') },
      { name: 'Expand', type: REG_EXPAND_SZ, data: sz('%USERPROFILE%\\AppData\\Local\\Programs\\Carryon\\bin;%SystemRoot%') },
      { name: 'Multi', type: REG_MULTI_SZ, data: multiSz(['first', 'second line', 'third']) },
      { name: 'Dword', type: REG_DWORD, data: dword(0xdeadbeef) },
      { name: 'Qword', type: REG_QWORD, data: qword(0x0123456789abcdefn) },
      { name: 'Binary', type: REG_BINARY, data: Uint8Array.from({ length: 100 }, (_, i) => (i * 37) & 0xff) },
      { name: 'None', type: 0, data: bytes(1, 2, 3) },
      { name: 'EmptyNone', type: 0, data: bytes() },
      { name: 'BigEndian', type: 5, data: bytes(0, 0, 1, 0) },
      { name: 'Unknown type', type: 0x100, data: bytes(0x25, 0x50, 0x41, 0x54, 0x48, 0x25, 0x00) },
      { name: 'Type ffffffff', type: 0xffffffff, data: bytes(0xff) },
    ],
  },
  {
    path: `${HKCU}\\Odd names`,
    values: [
      { name: 'with=equals', type: REG_SZ, data: sz('a') },
      { name: 'with]bracket[', type: REG_SZ, data: sz('b') },
      { name: 'say "hi"', type: REG_SZ, data: sz('c') },
      { name: '\\\\server\\share', type: REG_SZ, data: sz('d') },
      { name: '  spaced  ', type: REG_SZ, data: sz('  e  ') },
      { name: ';not a comment', type: REG_SZ, data: sz('; nor this') },
      { name: '@', type: REG_SZ, data: sz('not the default value') },
      { name: 'A name long enough that the first line of its hex data holds one byte only, as regedit does', type: REG_BINARY, data: bytes(1, 2, 3, 4) },
    ],
  },
  { path: `${HKCU}\\Subkey/with slash]and bracket`, values: [] },
  { path: `${HKCU}\\Obsolete`, values: [], deleted: true },
];
