// The three-way persona merge, files side: every case of the table, conflict copy names,
// case-insensitive matching, a consistent merged tree, determinism, and seeded properties.
import { describe, expect, it } from 'vitest';
import {
  conflictCopyPath,
  conflictDeviceLabel,
  conflictTimeLabel,
  formatMergeReport,
  mergePersona,
  splitExtension,
  type MergeConflict,
  type MergeOptions,
} from '../../../src/persona/index.js';
import type { PersonaEntry, PersonaSnapshot } from '../../../src/persona/model.js';
import { checkPersonaPath, PERSONA_MAX_PATH_BYTES } from '../../../src/persona/paths.js';
import { expectCode, prng, randInt } from '../helpers.js';
import { consistencyProblems, DEVICE, dir, file, hashOf, link, opts, regText, snap, STAMP_OURS, STAMP_THEIRS, T_OURS, tree } from './merge-fixtures.js';

const COPY = `Docs/a (conflict ${DEVICE} ${STAMP_OURS}).txt`;

interface FileCase {
  name: string;
  base: PersonaEntry[];
  ours: PersonaEntry[];
  theirs: PersonaEntry[];
  opts?: Partial<MergeOptions>;
  /** path -> hash, 'dir', or '->target'. */
  merged: Record<string, string>;
  conflicts: Array<Pick<MergeConflict, 'path' | 'reason' | 'kept'> & { keptCopy?: string }>;
  /** Extra checks on the merged entries. */
  check?: (files: PersonaEntry[]) => void;
}

const D = dir('Docs');
const A0 = file('Docs/a.txt', 'base', 1000);
const AO = file('Docs/a.txt', 'ours', 3000);
const AT = file('Docs/a.txt', 'theirs', 2000);
const h = hashOf;
const at = (files: PersonaEntry[], path: string): PersonaEntry => {
  const e = files.find((f) => f.path === path);
  if (!e) throw new Error(`no entry ${path}`);
  return e;
};

const FILE_CASES: FileCase[] = [
  { name: 'unchanged on both sides: base', base: [D, A0], ours: [D, A0], theirs: [D, A0], merged: { Docs: 'dir', 'Docs/a.txt': h('base') }, conflicts: [] },
  { name: 'changed on the laptop only: laptop version', base: [D, A0], ours: [D, AO], theirs: [D, A0], merged: { Docs: 'dir', 'Docs/a.txt': h('ours') }, conflicts: [], check: (f) => expect(at(f, 'Docs/a.txt').mtimeMs).toBe(3000) },
  { name: 'changed on the server only: server version', base: [D, A0], ours: [D, A0], theirs: [D, AT], merged: { Docs: 'dir', 'Docs/a.txt': h('theirs') }, conflicts: [], check: (f) => expect(at(f, 'Docs/a.txt').mtimeMs).toBe(2000) },
  {
    name: 'same change on both: no conflict, newer mtime', base: [D, A0], ours: [D, file('Docs/a.txt', 'same', 5000)], theirs: [D, file('Docs/a.txt', 'same', 4000)],
    merged: { Docs: 'dir', 'Docs/a.txt': h('same') }, conflicts: [], check: (f) => expect(at(f, 'Docs/a.txt').mtimeMs).toBe(5000),
  },
  {
    name: 'mtime-only change on the laptop is not a change: server content and mtime win', base: [D, A0], ours: [D, file('Docs/a.txt', 'base', 9000)], theirs: [D, AT],
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs') }, conflicts: [], check: (f) => expect(at(f, 'Docs/a.txt').mtimeMs).toBe(2000),
  },
  {
    name: 'mtime-only change on the laptop alone is kept', base: [D, A0], ours: [D, file('Docs/a.txt', 'base', 9000)], theirs: [D, A0],
    merged: { Docs: 'dir', 'Docs/a.txt': h('base') }, conflicts: [], check: (f) => expect(at(f, 'Docs/a.txt').mtimeMs).toBe(9000),
  },
  {
    name: 'mode change is a change: conflicts with a content change', base: [D, A0], ours: [D, file('Docs/a.txt', 'base', 1000, 0o600)], theirs: [D, AT],
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs'), [COPY]: h('base') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-modified', kept: 'both', keptCopy: COPY }],
    check: (f) => expect(at(f, COPY).mode).toBe(0o600),
  },
  {
    name: 'both modified, keep-both: server at the path, laptop copy beside it', base: [D, A0], ours: [D, AO], theirs: [D, AT],
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs'), [COPY]: h('ours') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-modified', kept: 'both', keptCopy: COPY }],
    check: (f) => {
      expect(at(f, COPY).mtimeMs).toBe(3000);
      expect(at(f, COPY).chunks).toEqual(AO.chunks);
      expect(at(f, 'Docs/a.txt').mtimeMs).toBe(2000);
    },
  },
  {
    name: 'both modified, newest: laptop newer', base: [D, A0], ours: [D, AO], theirs: [D, AT], opts: { filePolicy: 'newest' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('ours') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-modified', kept: 'ours' }],
  },
  {
    name: 'both modified, newest: server newer', base: [D, A0], ours: [D, file('Docs/a.txt', 'ours', 1500)], theirs: [D, AT], opts: { filePolicy: 'newest' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-modified', kept: 'theirs' }],
  },
  {
    name: 'both modified, newest: a tie goes to the server', base: [D, A0], ours: [D, file('Docs/a.txt', 'ours', 2000)], theirs: [D, AT], opts: { filePolicy: 'newest' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-modified', kept: 'theirs' }],
  },
  {
    name: 'both modified, server policy', base: [D, A0], ours: [D, AO], theirs: [D, AT], opts: { filePolicy: 'server' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-modified', kept: 'theirs' }],
  },
  {
    name: 'both modified, laptop policy', base: [D, A0], ours: [D, AO], theirs: [D, AT], opts: { filePolicy: 'laptop' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('ours') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-modified', kept: 'ours' }],
  },
  {
    name: 'deleted on the laptop, modified on the server: the edit wins', base: [D, A0], ours: [D], theirs: [D, AT], opts: { filePolicy: 'laptop' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs') }, conflicts: [{ path: 'Docs/a.txt', reason: 'modify-delete', kept: 'theirs' }],
  },
  {
    name: 'deleted on the server, modified on the laptop: the edit wins', base: [D, A0], ours: [D, AO], theirs: [D], opts: { filePolicy: 'server' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('ours') }, conflicts: [{ path: 'Docs/a.txt', reason: 'modify-delete', kept: 'ours' }],
  },
  { name: 'deleted on the laptop, unchanged on the server: deleted', base: [D, A0], ours: [D], theirs: [D, A0], merged: { Docs: 'dir' }, conflicts: [] },
  { name: 'deleted on the server, unchanged on the laptop: deleted', base: [D, A0], ours: [D, file('Docs/a.txt', 'base', 7000)], theirs: [D], merged: { Docs: 'dir' }, conflicts: [] },
  { name: 'deleted on both: deleted', base: [D, A0], ours: [D], theirs: [D], merged: { Docs: 'dir' }, conflicts: [] },
  { name: 'added on the laptop only', base: [D], ours: [D, AO], theirs: [D], merged: { Docs: 'dir', 'Docs/a.txt': h('ours') }, conflicts: [] },
  { name: 'added on both with the same content: no conflict', base: [D], ours: [D, file('Docs/a.txt', 'x', 5)], theirs: [D, file('Docs/a.txt', 'x', 6)], merged: { Docs: 'dir', 'Docs/a.txt': h('x') }, conflicts: [] },
  {
    name: 'added on both with different content: like both modified', base: [D], ours: [D, AO], theirs: [D, AT],
    merged: { Docs: 'dir', 'Docs/a.txt': h('theirs'), [COPY]: h('ours') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-added', kept: 'both', keptCopy: COPY }],
  },
  {
    name: 'added on both, laptop policy', base: [D], ours: [D, AO], theirs: [D, AT], opts: { filePolicy: 'laptop' },
    merged: { Docs: 'dir', 'Docs/a.txt': h('ours') }, conflicts: [{ path: 'Docs/a.txt', reason: 'both-added', kept: 'ours' }],
  },
  {
    name: 'symlink retargeted on both: keep-both copies the laptop link', base: [D, link('Docs/l', 'a.txt')], ours: [D, link('Docs/l', 'o.txt')], theirs: [D, link('Docs/l', 't.txt')],
    merged: { Docs: 'dir', 'Docs/l': '->t.txt', [`Docs/l (conflict ${DEVICE} ${STAMP_OURS})`]: '->o.txt' },
    conflicts: [{ path: 'Docs/l', reason: 'both-modified', kept: 'both', keptCopy: `Docs/l (conflict ${DEVICE} ${STAMP_OURS})` }],
  },
  {
    name: 'type clash, laptop folder vs server file, keep-both: the folder and its contents move to the copy name',
    base: [D, file('Docs/x', 'base')], ours: [D, dir('Docs/x'), file('Docs/x/y.txt', 'new')], theirs: [D, file('Docs/x', 'theirs')],
    merged: { Docs: 'dir', 'Docs/x': h('theirs'), [`Docs/x (conflict ${DEVICE} ${STAMP_OURS})`]: 'dir', [`Docs/x (conflict ${DEVICE} ${STAMP_OURS})/y.txt`]: h('new') },
    conflicts: [{ path: 'Docs/x', reason: 'type-clash', kept: 'both', keptCopy: `Docs/x (conflict ${DEVICE} ${STAMP_OURS})` }],
  },
  {
    name: 'type clash, a folder name keeps its dots (no extension)',
    base: [D], ours: [D, dir('Docs/photos.2019'), file('Docs/photos.2019/p.jpg', 'p')], theirs: [D, file('Docs/photos.2019', 't')],
    merged: { Docs: 'dir', 'Docs/photos.2019': h('t'), [`Docs/photos.2019 (conflict ${DEVICE} ${STAMP_OURS})`]: 'dir', [`Docs/photos.2019 (conflict ${DEVICE} ${STAMP_OURS})/p.jpg`]: h('p') },
    conflicts: [{ path: 'Docs/photos.2019', reason: 'type-clash', kept: 'both', keptCopy: `Docs/photos.2019 (conflict ${DEVICE} ${STAMP_OURS})` }],
  },
  {
    name: 'type clash, laptop file vs server folder, keep-both: laptop file saved beside',
    base: [D], ours: [D, file('Docs/x.md', 'ours')], theirs: [D, dir('Docs/x.md'), file('Docs/x.md/y', 'y')],
    merged: { Docs: 'dir', 'Docs/x.md': 'dir', 'Docs/x.md/y': h('y'), [`Docs/x (conflict ${DEVICE} ${STAMP_OURS}).md`]: h('ours') },
    conflicts: [{ path: 'Docs/x.md', reason: 'type-clash', kept: 'both', keptCopy: `Docs/x (conflict ${DEVICE} ${STAMP_OURS}).md` }],
  },
  {
    name: 'type clash, laptop policy: laptop file wins, the server folder contents are set aside',
    base: [D], ours: [D, file('Docs/x', 'ours')], theirs: [D, dir('Docs/x'), file('Docs/x/y', 'y')], opts: { filePolicy: 'laptop' },
    merged: { Docs: 'dir', 'Docs/x': h('ours'), [`Docs/x (conflict server ${STAMP_THEIRS})`]: 'dir', [`Docs/x (conflict server ${STAMP_THEIRS})/y`]: h('y') },
    conflicts: [{ path: 'Docs/x', reason: 'type-clash', kept: 'both', keptCopy: `Docs/x (conflict server ${STAMP_THEIRS})` }],
  },
  {
    name: 'type clash, server policy, laptop folder with no surviving contents: the server file alone',
    base: [D, file('Docs/x', 'base')], ours: [D, dir('Docs/x')], theirs: [D, file('Docs/x', 'theirs')], opts: { filePolicy: 'server' },
    merged: { Docs: 'dir', 'Docs/x': h('theirs') }, conflicts: [{ path: 'Docs/x', reason: 'type-clash', kept: 'theirs' }],
  },
  {
    name: 'folders differing only in mode: one mode kept, contents merged',
    base: [dir('Docs', 1, 0o755), file('Docs/b', 'b')], ours: [dir('Docs', 1, 0o700), file('Docs/b', 'b'), file('Docs/o', 'o')], theirs: [dir('Docs', 1, 0o750), file('Docs/b', 'b'), file('Docs/t', 't')],
    merged: { Docs: 'dir', 'Docs/b': h('b'), 'Docs/o': h('o'), 'Docs/t': h('t') }, conflicts: [{ path: 'Docs', reason: 'both-modified', kept: 'theirs' }],
    check: (f) => expect(at(f, 'Docs').mode).toBe(0o750),
  },
  {
    name: 'folder deleted on the laptop while the server added a file inside: file and folder survive',
    base: [D, A0], ours: [], theirs: [D, A0, file('Docs/new.txt', 'new')],
    merged: { Docs: 'dir', 'Docs/new.txt': h('new') }, conflicts: [{ path: 'Docs', reason: 'modify-delete', kept: 'theirs' }],
  },
  {
    name: 'deep folder deleted on the server while the laptop changed a file inside: reported once at the top',
    base: [D, dir('Docs/p'), dir('Docs/p/q'), file('Docs/p/q/f', 'base'), file('Docs/p/g', 'g')], ours: [D, dir('Docs/p'), dir('Docs/p/q'), file('Docs/p/q/f', 'ours'), file('Docs/p/g', 'g')], theirs: [D],
    merged: { Docs: 'dir', 'Docs/p': 'dir', 'Docs/p/q': 'dir', 'Docs/p/q/f': h('ours') },
    conflicts: [{ path: 'Docs/p', reason: 'modify-delete', kept: 'ours' }, { path: 'Docs/p/q/f', reason: 'modify-delete', kept: 'ours' }],
  },
  {
    name: 'folder replaced by a file on the server while the laptop changed a file inside: contents set aside',
    base: [D, dir('Docs/x'), file('Docs/x/y', 'base')], ours: [D, dir('Docs/x'), file('Docs/x/y', 'ours')], theirs: [D, file('Docs/x', 'file')],
    merged: { Docs: 'dir', 'Docs/x': h('file'), [`Docs/x (conflict ${DEVICE} ${STAMP_OURS})`]: 'dir', [`Docs/x (conflict ${DEVICE} ${STAMP_OURS})/y`]: h('ours') },
    conflicts: [
      { path: 'Docs/x', reason: 'type-clash', kept: 'both', keptCopy: `Docs/x (conflict ${DEVICE} ${STAMP_OURS})` },
      { path: `Docs/x (conflict ${DEVICE} ${STAMP_OURS})/y`, reason: 'modify-delete', kept: 'ours' },
    ],
  },
  {
    name: 'edits to different files both survive', base: [D, A0, file('Docs/b', 'b')], ours: [D, AO, file('Docs/b', 'b')], theirs: [D, A0, file('Docs/b', 'b2'), file('Docs/c', 'c')],
    merged: { Docs: 'dir', 'Docs/a.txt': h('ours'), 'Docs/b': h('b2'), 'Docs/c': h('c') }, conflicts: [],
  },
];

describe('mergePersona: files', () => {
  for (const c of FILE_CASES) {
    it(c.name, () => {
      const { merged, report } = mergePersona(snap(c.base), snap(c.ours), snap(c.theirs), opts(c.opts));
      expect(tree(merged)).toEqual(c.merged);
      expect(consistencyProblems(merged)).toEqual([]);
      const got = report.conflicts.map((x) => ({ path: x.path, reason: x.reason, kept: x.kept, ...(x.keptCopy ? { keptCopy: x.keptCopy } : {}) }));
      expect(got).toEqual(c.conflicts);
      for (const x of report.conflicts) {
        expect(x.kind).toBe('file');
        expect(x.resolution.length).toBeGreaterThan(10);
        if (x.keptCopy) expect(x.resolution).toContain(x.keptCopy);
      }
      expect(report.stats.fileConflicts).toBe(c.conflicts.length);
      c.check?.(merged.files);
    });
  }

  it('counts where each entry came from', () => {
    const base = snap([D, file('Docs/u', 'u'), file('Docs/o', 'o'), file('Docs/t', 't'), file('Docs/s', 's'), file('Docs/del', 'd'), A0]);
    const ours = snap([D, file('Docs/u', 'u'), file('Docs/o', 'o2'), file('Docs/t', 't'), file('Docs/s', 's2'), AO, file('Docs/new', 'n')]);
    const theirs = snap([D, file('Docs/u', 'u'), file('Docs/o', 'o'), file('Docs/t', 't2'), file('Docs/s', 's2'), file('Docs/del', 'd'), AT]);
    const { report } = mergePersona(base, ours, theirs, opts());
    expect(report.stats).toMatchObject({ filesFromOurs: 3, filesFromTheirs: 2, filesSameOnBoth: 1, filesDeleted: 1, filesUnchanged: 2, fileConflicts: 1 });
  });

  it('does not count a folder brought back as deleted', () => {
    const { report } = mergePersona(snap([D, A0, file('Docs/b', 'b')]), snap([D, AO, file('Docs/b', 'b')]), snap([]), opts());
    expect(report.stats).toMatchObject({ filesFromOurs: 1, filesFromTheirs: 0, filesDeleted: 1, filesUnchanged: 1, fileConflicts: 2 });
  });
});

describe('mergePersona: case-insensitive paths', () => {
  it('an edit of Doc.txt and a case-only rename to doc.txt are one file: the edit is kept under the new name', () => {
    const base = snap([file('Doc.txt', 'base')]);
    const { merged, report } = mergePersona(base, snap([file('Doc.txt', 'ours', 5)]), snap([file('doc.txt', 'base')]), opts());
    expect(tree(merged)).toEqual({ 'doc.txt': h('ours') });
    expect(report.conflicts).toEqual([]);
  });

  it('keeps the laptop\'s case-only rename of a file the server edited', () => {
    const base = snap([file('Notes.txt', 'base')]);
    const { merged, report } = mergePersona(base, snap([file('notes.txt', 'base')]), snap([file('Notes.txt', 'theirs', 5)]), opts());
    expect(tree(merged)).toEqual({ 'notes.txt': h('theirs') });
    expect(report.conflicts).toEqual([]);
  });

  it('keeps a folder\'s case-only rename when the other side edits a file inside it', () => {
    const base = snap([dir('Docs'), file('Docs/a', 'a')]);
    const ours = snap([dir('docs'), file('docs/a', 'a')]);
    const theirs = snap([dir('Docs'), file('Docs/a', 'a2'), file('Docs/b', 'b')]);
    const { merged } = mergePersona(base, ours, theirs, opts());
    expect(tree(merged)).toEqual({ docs: 'dir', 'docs/a': h('a2'), 'docs/b': h('b') });
    expect(consistencyProblems(merged)).toEqual([]);
  });

  it('edits of Doc.txt and doc.txt on the two sides conflict as one file', () => {
    const base = snap([file('Doc.txt', 'base')]);
    const { merged, report } = mergePersona(base, snap([file('DOC.TXT', 'ours')]), snap([file('doc.txt', 'theirs')]), opts());
    expect(tree(merged)).toEqual({ 'doc.txt': h('theirs'), [`DOC (conflict ${DEVICE} ${STAMP_OURS}).TXT`]: h('ours') });
    expect(report.conflicts.map((c) => [c.path, c.reason])).toEqual([['doc.txt', 'both-modified']]);
  });

  it('children take their merged parent folder spelling', () => {
    const base = snap([dir('Docs'), file('Docs/a', 'a')]);
    const ours = snap([dir('Docs'), file('Docs/a', 'a'), file('Docs/new', 'n')]);
    const theirs = snap([dir('docs'), file('docs/a', 'a')]);
    const { merged } = mergePersona(base, ours, theirs, opts());
    expect(tree(merged)).toEqual({ docs: 'dir', 'docs/a': h('a'), 'docs/new': h('n') });
    expect(consistencyProblems(merged)).toEqual([]);
  });

  it('rejects a snapshot holding two entries that differ only in case', async () => {
    const bad = snap([file('a', '1'), file('A', '2')]);
    await expectCode(() => mergePersona(snap([]), bad, snap([]), opts()), 'INVALID_ARGUMENT');
  });
});

describe('conflict copy names', () => {
  const name = (p: string, n = 1, isDir = false): string => conflictCopyPath(p, DEVICE, T_OURS, n, isDir);

  it('puts device and UTC time before the extension', () => {
    expect(conflictTimeLabel(T_OURS)).toBe(STAMP_OURS);
    expect(conflictTimeLabel(Date.UTC(1999, 11, 31, 23, 59, 59, 999))).toBe('1999-12-31 235959');
    expect(name('Docs/report.docx')).toBe(`Docs/report (conflict ${DEVICE} ${STAMP_OURS}).docx`);
    expect(name('report.docx')).toBe(`report (conflict ${DEVICE} ${STAMP_OURS}).docx`);
    expect(name('x/y/My Notes.v2.txt')).toBe(`x/y/My Notes.v2 (conflict ${DEVICE} ${STAMP_OURS}).txt`);
  });

  it('handles .tar.gz, no extension, dotfiles, trailing dots and dotted folders', () => {
    expect(name('a.tar.gz')).toBe(`a (conflict ${DEVICE} ${STAMP_OURS}).tar.gz`);
    expect(name('b.TAR.XZ')).toBe(`b (conflict ${DEVICE} ${STAMP_OURS}).TAR.XZ`);
    expect(name('Makefile')).toBe(`Makefile (conflict ${DEVICE} ${STAMP_OURS})`);
    expect(name('.bashrc')).toBe(`.bashrc (conflict ${DEVICE} ${STAMP_OURS})`);
    expect(name('.config.json')).toBe(`.config (conflict ${DEVICE} ${STAMP_OURS}).json`);
    expect(name('odd.')).toBe(`odd. (conflict ${DEVICE} ${STAMP_OURS})`);
    expect(name('notes. final draft')).toBe(`notes. final draft (conflict ${DEVICE} ${STAMP_OURS})`);
    expect(name('photos.2019', 1, true)).toBe(`photos.2019 (conflict ${DEVICE} ${STAMP_OURS})`);
    expect(splitExtension('.tar.gz')).toEqual({ stem: '.tar', ext: '.gz' });
  });

  it('adds a counter from 2 on', () => {
    expect(name('a.txt', 2)).toBe(`a (conflict ${DEVICE} ${STAMP_OURS} 2).txt`);
    expect(name('a.txt', 13)).toBe(`a (conflict ${DEVICE} ${STAMP_OURS} 13).txt`);
  });

  it('makes the device name safe on Windows and Unix', () => {
    expect(conflictDeviceLabel('my:laptop/1 "x"')).toBe('my_laptop_1-_x_');
    expect(conflictDeviceLabel('a\\b|c?d*e<f>g\u0001')).toBe('a_b_c_d_e_f_g_');
    expect(conflictDeviceLabel('')).toBe('laptop');
    expect(conflictDeviceLabel('...')).toBe('laptop');
    expect(conflictDeviceLabel('x'.repeat(100))).toHaveLength(40);
    expect(Buffer.byteLength(conflictDeviceLabel('\u{1f600}'.repeat(40)))).toBeLessThanOrEqual(64);
    expect(conflictDeviceLabel('a\ud800b')).toBe('a_b');
    expect(conflictDeviceLabel('Cafe\u0301')).toBe('Caf\u00e9');
    const p = conflictCopyPath('d/a.txt', 'evil/../:dev', T_OURS);
    expect(p.split('/')).toHaveLength(2);
    expect(p).not.toMatch(/[:\\]/);
  });

  it('keeps a long name within 255 UTF-8 bytes and a long path within the path limit, extension intact', () => {
    const long = `${'é'.repeat(200)}.docx`;
    const p = name(long);
    expect(Buffer.byteLength(p)).toBeLessThanOrEqual(255);
    expect(p.endsWith(`(conflict ${DEVICE} ${STAMP_OURS}).docx`)).toBe(true);
    expect(checkPersonaPath(p)).toBe(p);
    const deep = `${Array.from({ length: 39 }, () => 'd'.repeat(100)).join('/')}/${'f'.repeat(120)}.txt`;
    expect(Buffer.byteLength(deep)).toBeGreaterThan(PERSONA_MAX_PATH_BYTES - 50);
    expect(Buffer.byteLength(deep)).toBeLessThanOrEqual(PERSONA_MAX_PATH_BYTES);
    const q = name(deep);
    expect(Buffer.byteLength(q)).toBeLessThanOrEqual(PERSONA_MAX_PATH_BYTES);
    expect(q.endsWith(`(conflict ${DEVICE} ${STAMP_OURS}).txt`)).toBe(true);
    expect(checkPersonaPath(q)).toBe(q);
    // A suffix too long to be an extension is part of the stem.
    expect(splitExtension(`x.${'e'.repeat(40)}`)).toEqual({ stem: `x.${'e'.repeat(40)}`, ext: '' });
  });

  it('never reuses a name any side holds, compared case-insensitively', () => {
    const taken = `docs/A (CONFLICT ${DEVICE.toLowerCase()} ${STAMP_OURS}).TXT`;
    const base = snap([D, A0]);
    const theirs = snap([D, AT, file(taken, 'already here')]);
    const { merged, report } = mergePersona(base, snap([D, AO]), theirs, opts());
    const second = `Docs/a (conflict ${DEVICE} ${STAMP_OURS} 2).txt`;
    expect(tree(merged)).toEqual({ Docs: 'dir', 'Docs/a.txt': h('theirs'), [`Docs/A (CONFLICT ${DEVICE.toLowerCase()} ${STAMP_OURS}).TXT`]: h('already here'), [second]: h('ours') });
    expect(report.conflicts[0]!.keptCopy).toBe(second);
  });

  it('gives two conflicts in one merge distinct names', () => {
    // Docs/a.txt and a laptop file already named like its copy: both conflict.
    const first = `Docs/a (conflict ${DEVICE} ${STAMP_OURS}).txt`;
    const base = snap([D, A0, file(first, 'f0')]);
    const { merged, report } = mergePersona(base, snap([D, AO, file(first, 'f1')]), snap([D, AT, file(first, 'f2')]), opts());
    expect(consistencyProblems(merged)).toEqual([]);
    const copies = report.conflicts.map((c) => c.keptCopy);
    expect(new Set(copies).size).toBe(2);
    expect(copies).toContain(`Docs/a (conflict ${DEVICE} ${STAMP_OURS} 2).txt`);
    expect(merged.files).toHaveLength(1 + 2 + 2);
  });
});

describe('mergePersona: options and report', () => {
  it('refuses unknown policies and bad times', async () => {
    const s = snap([]);
    await expectCode(() => mergePersona(s, s, s, opts({ filePolicy: 'theirs' as never })), 'INVALID_ARGUMENT');
    await expectCode(() => mergePersona(s, s, s, opts({ registryPolicy: 'keep-both' as never })), 'INVALID_ARGUMENT');
    await expectCode(() => mergePersona(s, s, s, opts({ oursTime: Number.NaN })), 'INVALID_ARGUMENT');
    await expectCode(() => mergePersona(s, s, s, opts({ theirsTime: -1 })), 'INVALID_ARGUMENT');
  });

  it('formats a readable summary that names every conflict and copy', () => {
    const { report } = mergePersona(snap([D, A0]), snap([D, AO]), snap([D, AT]), opts());
    const text = formatMergeReport(report);
    expect(text).toContain('Merged with 1 conflict (1 in files, 0 in the registry).');
    expect(text).toContain('file Docs/a.txt: changed on both sides; kept the server');
    expect(text).toContain(COPY);
    expect(formatMergeReport(mergePersona(snap([D]), snap([D]), snap([D]), opts()).report)).toMatch(/^Merged with no conflicts\.\n/);
  });
});

// ---------------------------------------------------------------------------------------------------
// Seeded generators

type Rng = () => number;

function randomBase(rng: Rng): PersonaSnapshot {
  const files: PersonaEntry[] = [];
  const ndirs = 3 + randInt(rng, 4);
  for (let d = 0; d < ndirs; d++) {
    const dname = `D${d}`;
    files.push(dir(dname, 100 + d));
    for (let s = 0; s < randInt(rng, 3); s++) {
      files.push(dir(`${dname}/sub${s}`, 200));
      for (let f = 0; f < randInt(rng, 4); f++) files.push(file(`${dname}/sub${s}/f${f}.txt`, `b${d}.${s}.${f}`, 300 + f));
    }
    for (let f = 0; f < 1 + randInt(rng, 5); f++) files.push(file(`${dname}/file${f}.dat`, `b${d}.${f}`, 400 + f));
  }
  for (let f = 0; f < randInt(rng, 4); f++) files.push(file(`top${f}.ini`, `t${f}`, 500));
  return snap(files);
}

/**
 * Random edits by one side to the top-level names `mine` owns: change content, mode or mtime, delete a
 * file or a whole folder, add files and folders (named with `tag`, so the two sides never add the same).
 */
function randomEdits(rng: Rng, base: PersonaSnapshot, mine: (top: string) => boolean, tag: string): PersonaSnapshot {
  const top = (p: string): string => p.split('/')[0]!;
  const deletedDirs: string[] = [];
  const out: PersonaEntry[] = [];
  for (const e of base.files) {
    if (!mine(top(e.path))) {
      out.push(e);
      continue;
    }
    if (deletedDirs.some((d) => e.path.startsWith(`${d}/`))) continue;
    const r = randInt(rng, 10);
    if (e.kind === 'dir') {
      if (r === 0) deletedDirs.push(e.path);
      else out.push(r === 1 ? { ...e, mode: 0o700 } : e);
      continue;
    }
    if (r === 0) continue; // deleted
    if (r === 1) out.push({ ...file(e.path, `${tag}:${e.path}`, 9000 + randInt(rng, 100)) });
    else if (r === 2) out.push({ ...e, mtimeMs: e.mtimeMs + 1 });
    else if (r === 3) out.push({ ...e, mode: 0o600 });
    else out.push(e);
  }
  const dirs = new Set(out.filter((e) => e.kind === 'dir').map((e) => e.path));
  for (const d of [...dirs].sort()) {
    if (!mine(top(d)) || randInt(rng, 3) !== 0) continue;
    out.push(file(`${d}/${tag}-new${randInt(rng, 1000)}.txt`, `${tag}:new:${d}`, 7000));
    if (randInt(rng, 2) === 0) {
      out.push(dir(`${d}/${tag}-dir`, 7000));
      out.push(file(`${d}/${tag}-dir/inner.bin`, `${tag}:inner:${d}`, 7001));
    }
  }
  out.push(dir(`${tag}-top`, 7000), file(`${tag}-top/x`, `${tag}:x`, 7002));
  return snap(out);
}

function keyed(s: PersonaSnapshot): Map<string, PersonaEntry> {
  return new Map(s.files.map((e) => [e.path, e]));
}

describe('mergePersona: properties (seeded)', () => {
  it('edits to disjoint paths all survive, with no conflicts', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rng = prng(seed);
      const base = randomBase(rng);
      const tops = [...new Set(base.files.map((e) => e.path.split('/')[0]!))];
      const owner = new Map(tops.map((t) => [t, randInt(rng, 3)])); // 0 nobody, 1 laptop, 2 server
      const ours = randomEdits(rng, base, (t) => owner.get(t) === 1 || t.startsWith('o-'), 'o');
      const theirs = randomEdits(rng, base, (t) => owner.get(t) === 2 || t.startsWith('t-'), 't');
      const { merged, report } = mergePersona(base, ours, theirs, opts());
      expect(report.conflicts, `seed ${seed}`).toEqual([]);
      // Expected: each top-level name as its owner left it.
      const expected = [...ours.files.filter((e) => owner.get(e.path.split('/')[0]!) !== 2), ...theirs.files.filter((e) => owner.get(e.path.split('/')[0]!) === 2 || e.path.startsWith('t-'))];
      expect(merged.files, `seed ${seed}`).toEqual(snap(expected).files);
      expect(consistencyProblems(merged), `seed ${seed}`).toEqual([]);
    }
  });

  it('ours == base gives theirs exactly; theirs == base gives ours exactly', () => {
    for (let seed = 1000; seed < 1100; seed++) {
      const rng = prng(seed);
      const base = { ...randomBase(rng), registry: regText({ 'HKEY_CURRENT_USER\\Software\\A': { x: '1' } }) };
      const edited = { ...randomEdits(rng, base, () => true, 'e'), registry: regText({ 'HKEY_CURRENT_USER\\Software\\A': { x: '2', y: String(seed) } }) };
      for (const policy of ['keep-both', 'newest', 'server', 'laptop'] as const) {
        const a = mergePersona(base, base, edited, opts({ filePolicy: policy }));
        expect(a.merged, `seed ${seed}`).toEqual(edited);
        expect(a.report.conflicts).toEqual([]);
        const b = mergePersona(base, edited, base, opts({ filePolicy: policy }));
        expect(b.merged, `seed ${seed}`).toEqual(edited);
        expect(b.report.conflicts).toEqual([]);
      }
    }
  });

  it('overlapping random edits: a consistent tree, and under keep-both no changed file content is lost', () => {
    let conflicts = 0;
    for (let seed = 2000; seed < 2300; seed++) {
      const rng = prng(seed);
      const base = randomBase(rng);
      const ours = randomEdits(rng, base, () => true, 'o');
      // The server edits the same names, sometimes turning a folder into a file or a file into a folder.
      let theirs = randomEdits(rng, base, () => true, 't');
      const flip = theirs.files.filter((e) => e.path.split('/').length === 2)[randInt(rng, 8)];
      if (flip) {
        const rest = theirs.files.filter((e) => e.path !== flip.path && !e.path.startsWith(`${flip.path}/`));
        const replaced = flip.kind === 'dir' ? [file(flip.path, `t:flip:${flip.path}`, 8000)] : [dir(flip.path, 8000), file(`${flip.path}/in`, `t:in:${flip.path}`, 8000)];
        theirs = snap([...rest, ...replaced]);
      }
      for (const policy of ['keep-both', 'newest', 'server', 'laptop'] as const) {
        const { merged, report } = mergePersona(base, ours, theirs, opts({ filePolicy: policy }));
        expect(consistencyProblems(merged), `seed ${seed} ${policy}`).toEqual([]);
        for (const e of merged.files) expect(checkPersonaPath(e.path)).toBe(e.path);
        conflicts += report.conflicts.length;
        if (policy !== 'keep-both') continue;
        const hashes = new Set(merged.files.map((e) => e.hash));
        const b = keyed(base);
        for (const side of [ours, theirs]) {
          for (const e of side.files) {
            if (e.kind === 'file' && b.get(e.path)?.hash !== e.hash) expect(hashes.has(e.hash), `seed ${seed}: ${e.path} lost`).toBe(true);
          }
        }
      }
    }
    expect(conflicts).toBeGreaterThan(100);
  });

  it('is deterministic: the same inputs give identical bytes, whatever order the inputs list entries in', () => {
    let conflicts = 0;
    for (let seed = 70; seed < 90; seed++) {
      const rng = prng(seed);
      const base = { ...randomBase(rng), registry: regText({ 'HKEY_CURRENT_USER\\A': { x: '1', y: '1' }, 'HKEY_CURRENT_USER\\B': { z: '1' } }) };
      const ours = { ...randomEdits(rng, base, () => true, 'o'), registry: regText({ 'HKEY_CURRENT_USER\\A': { x: '2', y: '1' }, 'HKEY_CURRENT_USER\\C': { n: String(seed) } }) };
      const theirs = { ...randomEdits(rng, base, () => true, 't'), registry: regText({ 'HKEY_CURRENT_USER\\A': { x: '3' }, 'HKEY_CURRENT_USER\\B': { z: '2' } }) };
      const one = JSON.stringify(mergePersona(base, ours, theirs, opts()));
      const two = JSON.stringify(mergePersona(structuredClone(base), structuredClone(ours), structuredClone(theirs), opts()));
      const reversed = (s: PersonaSnapshot): PersonaSnapshot => ({ ...s, files: [...s.files].reverse() });
      const three = JSON.stringify(mergePersona(reversed(base), reversed(ours), reversed(theirs), opts()));
      expect(two, `seed ${seed}`).toBe(one);
      expect(three, `seed ${seed}`).toBe(one);
      conflicts += (JSON.parse(one) as { report: { conflicts: unknown[] } }).report.conflicts.length;
    }
    expect(conflicts).toBeGreaterThan(20);
  });
});
