// Untrusted persona paths (src/persona/paths.ts) and their use in decodePersona: every rule with paths
// it must accept and paths it must refuse.
import { describe, expect, it } from 'vitest';
import { CarryonError } from '../../../src/errors/index.js';
import { blockId } from '../../../src/hash/index.js';
import {
  checkPersonaPath,
  checkSymlinkTarget,
  decodePersona,
  encodePersona,
  findCaseCollisions,
  PERSONA_MAX_DEPTH,
  type PersonaEntry,
} from '../../../src/persona/index.js';

/** The CarryonError `fn` throws (fails the test when it returns). */
function thrown(fn: () => unknown): CarryonError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CarryonError);
    return err as CarryonError;
  }
  throw new Error('expected a failure, but the call succeeded');
}

// 16 components of 254 bytes + separators = 4079 bytes; then '/' + 16 bytes = exactly 4096.
const LONG_4096 = [...Array.from({ length: 16 }, () => 'x'.repeat(254)), 'y'.repeat(16)].join('/');

describe('checkPersonaPath', () => {
  const good: string[] = [
    'a', 'a/b/c', 'Documents/Report 2024.docx', 'AppData/Roaming/Mozilla/Firefox/profiles.ini', '.hidden', 'a/.b',
    '..a', 'a.b.c', ' leading space', 'x/a b', 'CONSOLE', 'con_x', 'xcon', 'COM10', 'LPT', 'com', 'nul-ish.txt', 'aux_/y',
    'auxiliary.txt', 'café', '日本語/ファイル.txt', 'emoji 😀', 'a\u007fb', 'x'.repeat(255), 'é'.repeat(127),
    Array.from({ length: PERSONA_MAX_DEPTH }, () => 'd').join('/'), LONG_4096,
  ];
  it.each(good.map((p) => [p.length > 40 ? `${p.slice(0, 40)}… (${p.length})` : p, p]))('accepts %s', (_label, p) => {
    expect(checkPersonaPath(p)).toBe(p);
  });

  it('returns the NFC form of a decomposed path', () => {
    expect(checkPersonaPath('cafe\u0301/Übersicht'.normalize('NFD'))).toBe('café/Übersicht');
    expect(checkPersonaPath('cafe\u0301')).not.toBe('cafe\u0301');
  });

  const bad: Array<[string, string]> = [
    ['', 'empty'],
    ['/x', 'absolute'],
    ['/', 'absolute'],
    ['\\x', 'absolute'],
    ['//server/share/x', 'unc'],
    ['\\\\server\\share', 'unc'],
    ['C:', 'drive'],
    ['c:\\windows', 'drive'],
    ['C:/x', 'drive'],
    ['z:rel', 'drive'],
    ['.', 'dot-component'],
    ['..', 'dot-component'],
    ['a/..', 'dot-component'],
    ['a/../b', 'dot-component'],
    ['../x', 'dot-component'],
    ['a/./b', 'dot-component'],
    ['a//b', 'empty-component'],
    ['a/', 'empty-component'],
    ['a\\b', 'backslash'],
    ['a\u0000b', 'control-char'],
    ['a\nb', 'control-char'],
    ['tab\there', 'control-char'],
    ['x/\u001f', 'control-char'],
    ['CON', 'reserved-name'],
    ['con', 'reserved-name'],
    ['Prn.txt', 'reserved-name'],
    ['x/AUX', 'reserved-name'],
    ['a/Nul.txt', 'reserved-name'],
    ['nul.tar.gz', 'reserved-name'],
    ['aux .txt', 'reserved-name'],
    ['com1', 'reserved-name'],
    ['COM9.log', 'reserved-name'],
    ['COM0', 'reserved-name'],
    ['lpt1', 'reserved-name'],
    ['LPT9.tar.gz', 'reserved-name'],
    ['COM\u00b9', 'reserved-name'],
    ['lpt\u00b3.txt', 'reserved-name'],
    ['a<b', 'windows-char'],
    ['a>b', 'windows-char'],
    ['x/a:b', 'windows-char'],
    ['file.txt:stream', 'windows-char'],
    ['say "hi"', 'windows-char'],
    ['a|b', 'windows-char'],
    ['what?', 'windows-char'],
    ['*.txt', 'windows-char'],
    ['a.', 'trailing-dot-space'],
    ['...', 'trailing-dot-space'],
    ['a ', 'trailing-dot-space'],
    ['dir./x', 'trailing-dot-space'],
    ['x'.repeat(256), 'name-too-long'],
    ['é'.repeat(128), 'name-too-long'],
    [`ok/${'😀'.repeat(64)}`, 'name-too-long'],
    [`${LONG_4096}z`, 'path-too-long'],
    ['a/'.repeat(3000), 'path-too-long'],
    [Array.from({ length: PERSONA_MAX_DEPTH + 1 }, () => 'd').join('/'), 'too-deep'],
    ['\ud800x', 'not-unicode'],
    ['x\udc00', 'not-unicode'],
  ];
  it.each(bad.map(([p, rule]) => [JSON.stringify(p.length > 40 ? `${p.slice(0, 40)}…` : p), rule, p]))('refuses %s (%s)', (_label, rule, p) => {
    const err = thrown(() => checkPersonaPath(p));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.data.rule).toBe(rule);
    expect(err.message).toContain(JSON.stringify(Array.from(p).slice(0, 20).join('')).slice(0, -1));
    expect(err.message).toContain('refused');
  });

  it('refuses a value that is not text', () => {
    expect(thrown(() => checkPersonaPath(42 as unknown as string)).code).toBe('BAD_REQUEST');
  });
});

describe('findCaseCollisions', () => {
  it('finds names equal under case folding and normalization, in input order', () => {
    expect(findCaseCollisions(['Readme.txt', 'b', 'README.TXT'])).toEqual([['Readme.txt', 'README.TXT']]);
    expect(findCaseCollisions(['A/b', 'a/B'])).toEqual([['A/b', 'a/B']]);
    expect(findCaseCollisions(['café', 'cafe\u0301'])).toEqual([['café', 'cafe\u0301']]);
    expect(findCaseCollisions(['ÉTÉ', 'été'])).toEqual([['ÉTÉ', 'été']]);
    expect(findCaseCollisions(['x', 'x'])).toEqual([['x', 'x']]);
  });

  it('joins pairs that plain toLowerCase misses (full case folding)', () => {
    expect('straße'.toLowerCase()).not.toBe('STRASSE'.toLowerCase());
    expect(findCaseCollisions(['straße', 'STRASSE'])).toEqual([['straße', 'STRASSE']]);
    expect(findCaseCollisions(['\u212aelvin', 'kelvin'])).toEqual([['\u212aelvin', 'kelvin']]);
    expect(findCaseCollisions(['\u017fun', 'sun'])).toEqual([['\u017fun', 'sun']]);
  });

  it('reports every later duplicate against the first name', () => {
    expect(findCaseCollisions(['a', 'A', 'b', 'a'])).toEqual([['a', 'A'], ['a', 'a']]);
  });

  it('finds nothing among distinct names', () => {
    expect(findCaseCollisions(['a', 'b', 'ab', 'a/b', 'a.b', 'é', 'e', 'ss', 's'])).toEqual([]);
    expect(findCaseCollisions([])).toEqual([]);
  });
});

describe('checkSymlinkTarget', () => {
  const good: Array<[string, string]> = [
    ['link', 'b'],
    ['link', 'x/y/z'],
    ['link', '.'],
    ['a/link', '..'],
    ['a/link', '../x'],
    ['a/b/link', '../../x'],
    ['a/b/link', '../../'],
    ['a/link', './b/'],
    ['a/link', 'b//c'],
    ['d/y', '..'],
  ];
  it.each(good)('accepts %s -> %s', (link, target) => {
    expect(checkSymlinkTarget(link, target)).toBe(target);
  });

  it('returns the target in NFC', () => {
    expect(checkSymlinkTarget('link', 'cafe\u0301')).toBe('café');
  });

  const bad: Array<[string, string, string]> = [
    ['link', '../../etc/passwd', 'escapes'],
    ['link', '..', 'escapes'],
    ['a/link', '../../x', 'escapes'],
    ['a/b/link', '../../../x', 'escapes'],
    ['a/link', 'a/../../x', 'dot-dot-after-name'],
    ['a/link', 'b/../c', 'dot-dot-after-name'],
    // d/y -> '..' is the profile root; through it, y/../.. would leave the profile though it looks inside.
    ['d/x', 'y/../..', 'dot-dot-after-name'],
    ['link', '/etc/passwd', 'absolute'],
    ['a/link', '/', 'absolute'],
    ['link', '\\\\server\\share', 'absolute'],
    ['link', 'C:\\Windows', 'drive'],
    ['link', 'c:x', 'drive'],
    ['link', '', 'empty'],
    ['link', 'a\\b', 'backslash'],
    ['link', 'a\u0000b', 'control-char'],
    ['link', 'x'.repeat(5000), 'path-too-long'],
    ['link', 'CON', 'reserved-name'],
    ['a/link', '../what?', 'windows-char'],
    ['link', '\ud800', 'not-unicode'],
  ];
  it.each(bad)('refuses %s -> %s (%s)', (link, target, rule) => {
    const err = thrown(() => checkSymlinkTarget(link, target));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.data.rule).toBe(rule);
    expect(err.message).toContain(JSON.stringify(link));
  });
});

describe('decodePersona path checks', () => {
  const h = blockId(Buffer.from('hello'));
  const file = (p: string): PersonaEntry => ({ path: p, kind: 'file', mode: 0o644, mtimeMs: 1_700_000_000_000, size: 5, hash: h, chunks: [h] });
  const dir = (p: string): PersonaEntry => ({ path: p, kind: 'dir', mode: 0o755, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [] });
  const link = (p: string, target: string): PersonaEntry => ({ path: p, kind: 'symlink', mode: 0o777, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [], target });
  const enc = (files: PersonaEntry[]): Buffer => encodePersona({ files, registry: '' });

  it('accepts a snapshot with good paths and links, unchanged', () => {
    const files = [dir('Documents'), file('Documents/café.txt'), link('Documents/latest', 'café.txt'), link('Desktop/up', '../Documents')];
    const got = decodePersona(enc(files));
    const byPath = (a: PersonaEntry, b: PersonaEntry): number => (a.path < b.path ? -1 : 1);
    expect(got.files.map((f) => [f.path, f.target])).toEqual([...files].sort(byPath).map((f) => [f.path, f.target]));
  });

  const badPaths = ['../x', '/etc/passwd', 'a\\b', 'CON', 'a//b', 'C:/x', 'x/..', 'a:b', 'trailing.'];
  it.each(badPaths)('refuses entry path %s with BAD_REQUEST naming it', (p) => {
    const err = thrown(() => decodePersona(enc([file('ok.txt'), file(p)])));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.message).toContain('persona snapshot is invalid');
    expect(err.message).toContain(JSON.stringify(p).slice(1, -1));
    expect(err.data.rule).toBeTypeOf('string');
  });

  it('refuses a path that is not in NFC', () => {
    const err = thrown(() => decodePersona(enc([file('cafe\u0301.txt')])));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.message).toContain('NFC');
  });

  it.each([['l', '../../etc/passwd'], ['a/l', '/etc/passwd'], ['a/l', 'b/../../x'], ['l', 'C:\\x']])('refuses symlink %s -> %s', (p, t) => {
    const err = thrown(() => decodePersona(enc([link(p, t)])));
    expect(err.code).toBe('BAD_REQUEST');
    expect(err.message).toContain('symlink');
  });

  it('refuses names that are one under case folding', () => {
    expect(thrown(() => decodePersona(enc([file('Readme'), file('README')]))).code).toBe('BAD_REQUEST');
    expect(thrown(() => decodePersona(enc([file('STRASSE'), file('straße')]))).message).toContain('case-insensitively');
  });
});
