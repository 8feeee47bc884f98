// Import then export is lossless. Precisely, for the bytes x of any file decodeRegFile accepts:
//   (1) decodeRegFile(encodeRegFile(decodeRegFile(x)), { encoding }) deep-equals decodeRegFile(x): the
//       version, encoding, BOM, every section in order, every value's name, type number and bytes;
//   (2) encodeRegFile is a fixed point from then on (canonical output re-encodes to the same bytes);
//   (3) a file in regedit's own layout comes back byte for byte (encode.test.ts).
// Comments, blank lines, blanks around tokens, hex case, line wrapping and line ends are layout, not
// data. The encoding of a BOM-less file is a guess, so it is passed back when reading our output.
// Checked here on curated odd inputs, seeded random models in every version and encoding, and a
// seeded fuzz of mutated files, which must each either parse (and then round-trip) or throw a
// CarryonError; never anything else.
import { describe, expect, it } from 'vitest';
import {
  CarryonError,
  decodeRegFile,
  encodeRegFile,
  type RegFileEncoding,
  type RegFileVersion,
  type RegSection,
  type RegValueEdit,
  type RegistryFile,
} from '../../../../src/index.js';
import { prng, randInt } from '../../helpers.js';
import { latin1, regeditExport, SAMPLE_KEYS, sz, utf16WithBom } from './fixtures.js';

function checkLossless(x: Uint8Array, options: { encoding?: RegFileEncoding } = {}): RegistryFile {
  const f = decodeRegFile(x, options);
  const y = encodeRegFile(f);
  const g = decodeRegFile(y, { encoding: f.encoding });
  expect(g).toEqual(f);
  expect(Buffer.from(encodeRegFile(g)).equals(Buffer.from(y))).toBe(true);
  return f;
}

const KEY = 'HKEY_CURRENT_USER\\Software\\Test';

const ODD_INPUTS: Array<[string, Buffer]> = [
  [
    'comments, blanks, CR and LF line ends, upper-case hex, hex(3), hex(4) and short dwords',
    utf16WithBom(
      `  Windows Registry Editor Version 5.00\n; comment\r[${KEY}] ; c\n\t"a" = "x" ;c\r\n"b"=hex(3):AB\r\n` +
        `"b"=hex(3):AB,cd,\\ ;c\r\n\r\n ;c\r\n  Ef\r\n"c"=hex(4):01,02,03,04\r\n"d"=dword:1\r\n""="default"\r\n@=-\r\n[-${KEY}\\Gone]\r\n`,
    ).subarray(0),
  ],
  ['REGEDIT4 in windows-1252 with ANSI string hex', latin1(`REGEDIT4\r\n[${KEY}\\\u00e9]\r\n"\u00e9"=hex(2):e9,80,00\r\n"m"=hex(7):61,00,00\r\n"s"=hex(1):00,61\r\n`)],
  ['REGEDIT4 in UTF-8 with ANSI string hex', Buffer.from(`REGEDIT4\r\n[${KEY}\\\u4e16]\r\n"\u4e16"=hex(2):e4,b8,96,00\r\n"s"="\ud83d\ude00"\r\n`)],
  ['v5 in UTF-8 without BOM', Buffer.from(`Windows Registry Editor Version 5.00\n[${KEY}]\n"a"=hex(2):41,00,00,00\n"q"=hex(b):01,02\n`)],
  ['v5 with a REGEDIT4 header in UTF-16LE', utf16WithBom(`REGEDIT4\r\n[${KEY}]\r\n"e"=hex(2):41,00\r\n`)],
  ['a file that ends after a continuation', utf16WithBom(`Windows Registry Editor Version 5.00\r\n[${KEY}]\r\n"x"=hex:01,\\`)],
  ['lone surrogates and line-break escapes', utf16WithBom(`Windows Registry Editor Version 5.00\r\n[${KEY}\\\udc00]\r\n"\ud800\\r\\n"="\udfff\\n"\r\n`)],
  ['regedit-style samples, v5', regeditExport(SAMPLE_KEYS)],
  ['a windows-1252 file whose only non-UTF-8 byte is in a comment', Buffer.concat([latin1(`REGEDIT4\r\n;\u00ff\r\n[${KEY}]\r\n"a"="`), Buffer.from('\u00c3\u00a9', 'latin1'), latin1('"\r\n')])],
];

describe('lossless: curated inputs', () => {
  for (const [what, x] of ODD_INPUTS) {
    it(`round-trips ${what}`, () => {
      const f = checkLossless(x);
      expect(f.sections.length).toBeGreaterThan(0);
    });
  }

  it('keeps the windows-1252 reading of a file whose re-encoding happens to be UTF-8', () => {
    // The comment held the only byte that is not UTF-8; our output has no comments, so it is read
    // back with the encoding passed along (auto-detection alone would see UTF-8 and "\u00e9").
    const x = ODD_INPUTS[ODD_INPUTS.length - 1]![1];
    const f = decodeRegFile(x);
    expect(f.encoding).toBe('windows-1252');
    expect(f.sections[0]).toMatchObject({ values: [{ data: sz('\u00c3\u00a9') }] });
    expect(decodeRegFile(encodeRegFile(f)).encoding).toBe('utf-8');
  });
});

// ---- seeded random models ----

type Rng = () => number;

const CP1252_EXTRA = '\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178\u0081\u008d\u008f\u0090\u009d';
const SPECIAL = ' \t"\\=[];#@-,:()\u00e9\u00ff';
const WIDE = ['\u4e16', '\ud83d\ude00', '\u2028', '\ufeff', '\ud800', '\udfff', '\r', '\n'];

function pick<T>(rng: Rng, xs: readonly T[]): T {
  return xs[randInt(rng, xs.length)]!;
}

/** A random string the encoding can hold; `forKey` leaves out backslash and line breaks. */
function randomText(rng: Rng, encoding: RegFileEncoding, min: number, max: number, forKey: boolean, allowNul = false): string {
  const n = min + randInt(rng, max - min + 1);
  let s = '';
  while (s.length < n) {
    const r = randInt(rng, 10);
    let ch: string;
    if (r < 4) ch = String.fromCharCode(0x41 + randInt(rng, 26) + (randInt(rng, 2) ? 0x20 : 0));
    else if (r < 7) ch = pick(rng, [...SPECIAL]);
    else if (r < 8) ch = encoding === 'windows-1252' ? pick(rng, [...CP1252_EXTRA]) : pick(rng, WIDE);
    else if (r < 9) ch = String.fromCharCode(0xa0 + randInt(rng, 0x60));
    else ch = allowNul && randInt(rng, 3) === 0 ? '\0' : String.fromCharCode(1 + randInt(rng, 0x1f));
    if (encoding === 'utf-8' && /[\ud800-\udfff]/.test(ch) && ch.length === 1) continue;
    if (forKey && /[\\\r\n]/.test(ch)) continue;
    if (!allowNul && ch === '\0') continue;
    s += ch;
  }
  return s;
}

function utf16le(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'utf16le'));
}

function randomBytes(rng: Rng, max: number): Uint8Array {
  const n = randInt(rng, 8) === 0 ? randInt(rng, 400) : randInt(rng, max + 1);
  return Uint8Array.from({ length: n }, () => randInt(rng, 256));
}

function randomValue(rng: Rng, version: RegFileVersion, encoding: RegFileEncoding): RegValueEdit {
  const name = randInt(rng, 6) === 0 ? null : randomText(rng, encoding, 1, 12, false);
  if (randInt(rng, 8) === 0) return { kind: 'delete', name };
  const type = pick(rng, [0, 1, 1, 1, 2, 3, 4, 4, 5, 7, 7, 11, randInt(rng, 0x10000), 0xffffffff]);
  const ansi = version === 'regedit4' && encoding !== 'utf-16le';
  let data: Uint8Array;
  if (type === 1 || type === 2 || type === 7) {
    const text = randomText(rng, encoding === 'utf-16le' ? 'utf-16le' : encoding, 0, 30, false, true);
    const r = randInt(rng, 4);
    if (ansi) data = utf16le(r === 0 ? text : `${text}\0`);
    else data = r === 0 ? randomBytes(rng, 20) : utf16le(r === 1 ? text : `${text}\0`);
  } else if (type === 4 && randInt(rng, 3) > 0) {
    data = Uint8Array.from({ length: 4 }, () => randInt(rng, 256));
  } else {
    data = randomBytes(rng, 60);
  }
  return { kind: 'set', name, type, data };
}

function randomPath(rng: Rng, encoding: RegFileEncoding, minDepth: number): string {
  const root = pick(rng, ['HKEY_LOCAL_MACHINE', 'HKEY_CURRENT_USER', 'HKEY_CLASSES_ROOT', 'HKEY_USERS', 'HKEY_CURRENT_CONFIG', 'hkey_current_user']);
  const depth = minDepth + randInt(rng, 4);
  const parts = [root];
  for (let i = 0; i < depth; i++) parts.push(randomText(rng, encoding, 1, 10, true));
  return parts.join('\\');
}

function randomFile(rng: Rng, version: RegFileVersion, encoding: RegFileEncoding, bom: boolean): RegistryFile {
  const sections: RegSection[] = [];
  const n = randInt(rng, 6);
  for (let i = 0; i < n; i++) {
    if (randInt(rng, 5) === 0) sections.push({ kind: 'delete-key', path: randomPath(rng, encoding, 1) });
    else sections.push({ kind: 'key', path: randomPath(rng, encoding, 0), values: Array.from({ length: randInt(rng, 6) }, () => randomValue(rng, version, encoding)) });
  }
  return { version, encoding, bom, sections };
}

describe('lossless: seeded random models', () => {
  const combos: Array<[RegFileVersion, RegFileEncoding, boolean]> = [
    ['v5', 'utf-16le', true],
    ['v5', 'utf-8', false],
    ['v5', 'utf-8', true],
    ['v5', 'windows-1252', false],
    ['regedit4', 'windows-1252', false],
    ['regedit4', 'utf-8', false],
    ['regedit4', 'utf-16le', true],
  ];
  for (const [version, encoding, bom] of combos) {
    it(`decode(encode(model)) = model for 150 models, ${version} in ${encoding}${bom ? ' with BOM' : ''}`, () => {
      const rng = prng(0x5eed + combos.findIndex((c) => c[0] === version && c[1] === encoding && c[2] === bom));
      let values = 0;
      for (let i = 0; i < 150; i++) {
        const f = randomFile(rng, version, encoding, bom);
        const y = encodeRegFile(f);
        const g = decodeRegFile(y, { encoding });
        expect(g).toEqual(f);
        expect(Buffer.from(encodeRegFile(g)).equals(Buffer.from(y))).toBe(true);
        values += f.sections.reduce((a, s) => a + (s.kind === 'key' ? s.values.length : 0), 0);
      }
      expect(values).toBeGreaterThan(500);
    });
  }
});

// ---- seeded fuzz of mutated files ----

const INSERTS = ['\\', '"', ',', '\r', '\n', '\r\n', ';', '[', ']', '=', '-', '@', '\0', ' ', '\t', 'hex(', 'dword:', ',\\\r\n  ', '\\\\', '\\"', '[-', 'ff', '\ud800', '\u00e9'];

function mutate(rng: Rng, seed: Buffer, wide: boolean): Buffer {
  let b: Buffer = Buffer.from(seed);
  const unit = wide ? 2 : 1;
  const at = (): number => Math.floor(randInt(rng, Math.floor(b.length / unit) + 1)) * unit;
  const edits = 1 + randInt(rng, 3);
  for (let e = 0; e < edits; e++) {
    const op = randInt(rng, 7);
    const i = at();
    if (op === 0 && b.length > 0) {
      b[Math.min(i, b.length - 1)] ^= 1 << randInt(rng, 8);
    } else if (op === 1) {
      const s = pick(rng, INSERTS);
      b = Buffer.concat([b.subarray(0, i), wide ? Buffer.from(s, 'utf16le') : Buffer.from(s, randInt(rng, 2) ? 'utf8' : 'latin1'), b.subarray(i)]);
    } else if (op === 2) {
      const j = Math.min(b.length, i + randInt(rng, 40) * unit);
      b = Buffer.concat([b.subarray(0, i), b.subarray(j)]);
    } else if (op === 3) {
      const j = Math.min(b.length, i + randInt(rng, 80) * unit);
      const k = at();
      b = Buffer.concat([b.subarray(0, k), b.subarray(i, j), b.subarray(k)]);
    } else if (op === 4) {
      b = b.subarray(0, i);
    } else if (op === 5) {
      b = Buffer.concat([b.subarray(0, i), Buffer.from([randInt(rng, 256)]), b.subarray(i)]);
    } else if (b.length > 0) {
      b[Math.min(i, b.length - 1)] = randInt(rng, 256);
    }
  }
  return b;
}

describe('fuzz: mutated files parse and round-trip, or fail with a CarryonError', () => {
  const seeds: Array<[string, Buffer, boolean]> = [
    ['a regedit v5 export', regeditExport(SAMPLE_KEYS), true],
    ['a REGEDIT4 export', regeditExport([{ path: KEY, values: [{ name: 'e', type: 2, data: sz('%PATH%;C:\\bin') }, { name: null, type: 4, data: Uint8Array.of(1, 0, 0, 0) }] }, { path: `${KEY}\\X`, values: [], deleted: true }], 'regedit4'), false],
    ['hand-written odd files', Buffer.concat([ODD_INPUTS[0]![1]]), true],
    ['a UTF-8 v5 file', ODD_INPUTS[3]![1], false],
  ];
  for (const [index, [what, seed, wide]] of seeds.entries()) {
    it(`1500 mutations of ${what}`, () => {
      const rng = prng(0xf022 + index);
      let parsed = 0;
      let refused = 0;
      for (let i = 0; i < 1500; i++) {
        const x = mutate(rng, seed, wide && randInt(rng, 4) > 0);
        let f: RegistryFile;
        try {
          f = decodeRegFile(x, { maxValueBytes: 1 << 20 });
        } catch (err) {
          if (!(err instanceof CarryonError)) throw new Error(`mutation ${i} threw ${String(err)}\ninput: ${x.toString('hex')}`);
          expect(['BAD_REQUEST', 'PAYLOAD_TOO_LARGE']).toContain(err.code);
          expect(err.message).toMatch(/^line \d+, column \d+: /);
          refused++;
          continue;
        }
        parsed++;
        const y = encodeRegFile(f);
        expect(decodeRegFile(y, { encoding: f.encoding })).toEqual(f);
      }
      // Both outcomes are exercised, so the fuzz is neither all garbage nor all harmless.
      expect(parsed).toBeGreaterThan(75);
      expect(refused).toBeGreaterThan(75);
    });
  }
});
