// Scanning a profile folder into snapshot entries and materializing entries into a folder
// (src/persona/tree.ts): a real tree copied from /usr/share/doc round-trips through a MemoryBlockStore
// with identical content, modes and mtimes; the quick check reads nothing unchanged; and nothing is
// ever read from or written outside the folder.
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId } from '../../../src/hash/index.js';
import {
  decodePersona,
  encodePersona,
  materializePersonaTree,
  PERSONA_CHUNK_BYTES,
  scanPersonaTree,
  type PersonaEntry,
  type PersonaScanProgress,
} from '../../../src/persona/index.js';
import { MemoryBlockStore, putBlock } from '../../../src/store/index.js';
import { expectCode, prng, randomBytes, tempDir } from '../helpers.js';

const DOC = '/usr/share/doc';
const MTIME = new Date('2024-03-01T12:00:00.123Z');

/**
 * Copy a deterministic selection of /usr/share/doc: package folders in name order (real folders
 * only), their files and subfolders, until 200 files or 6 MiB; names limited to a plain set so
 * the fixture never trips the path rules under test. Modes and mtimes are kept.
 */
async function copyDocSelection(dst: string): Promise<{ files: number; bytes: number }> {
  const plain = (n: string): boolean => /^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(n) && !n.endsWith('.');
  const total = { files: 0, bytes: 0 };
  const full = (): boolean => total.files >= 200 || total.bytes >= 6 * 1024 * 1024;
  const copyDir = async (from: string, to: string): Promise<void> => {
    await fs.mkdir(to, { recursive: true });
    const seen = new Set<string>();
    for (const n of (await fs.readdir(from)).sort()) {
      if (!plain(n) || seen.has(n.toLowerCase()) || full()) continue;
      seen.add(n.toLowerCase());
      const st = await fs.lstat(path.join(from, n));
      if (st.isDirectory()) {
        await copyDir(path.join(from, n), path.join(to, n));
      } else if (st.isFile() && st.size <= 2 * 1024 * 1024) {
        await fs.copyFile(path.join(from, n), path.join(to, n));
        await fs.chmod(path.join(to, n), st.mode & 0o777);
        await fs.utimes(path.join(to, n), st.atime, st.mtime);
        total.files++;
        total.bytes += st.size;
      }
    }
    const st = await fs.stat(from);
    await fs.chmod(to, st.mode & 0o777);
    await fs.utimes(to, st.atime, st.mtime);
  };
  await fs.mkdir(dst);
  for (const n of (await fs.readdir(DOC)).sort()) {
    if (full()) break;
    const st = await fs.lstat(path.join(DOC, n));
    if (st.isDirectory() && plain(n)) await copyDir(path.join(DOC, n), path.join(dst, 'doc', n));
  }
  return total;
}

/** Files carryon must carry beyond what /usr/share/doc offers: multi-chunk, zero chunk, empty, modes, links, Unicode. */
async function addSpecialFiles(root: string): Promise<{ big: Buffer }> {
  const rng = prng(4242);
  const big = Buffer.concat([randomBytes(rng, PERSONA_CHUNK_BYTES), Buffer.alloc(PERSONA_CHUNK_BYTES), randomBytes(rng, 300_000)]);
  await fs.mkdir(path.join(root, 'Documents/Übersicht'), { recursive: true });
  await fs.writeFile(path.join(root, 'Documents/big.bin'), big);
  await fs.writeFile(path.join(root, 'Documents/empty.txt'), '');
  await fs.writeFile(path.join(root, 'Documents/Übersicht/café notes.txt'), 'bonjour\n');
  await fs.writeFile(path.join(root, 'Documents/secret.txt'), 'mine\n', { mode: 0o600 });
  await fs.chmod(path.join(root, 'Documents/secret.txt'), 0o600);
  await fs.writeFile(path.join(root, 'Documents/run.sh'), '#!/bin/sh\necho hi\n');
  await fs.chmod(path.join(root, 'Documents/run.sh'), 0o755);
  await fs.mkdir(path.join(root, 'private'));
  await fs.writeFile(path.join(root, 'private/readonly.txt'), 'frozen\n');
  await fs.chmod(path.join(root, 'private/readonly.txt'), 0o444);
  await fs.chmod(path.join(root, 'private'), 0o555);
  await fs.mkdir(path.join(root, 'links'));
  await fs.symlink('../Documents/big.bin', path.join(root, 'links/to-big'));
  await fs.symlink('../Documents/Übersicht', path.join(root, 'links/to-folder'));
  await fs.symlink('missing-but-inside', path.join(root, 'links/dangling'));
  await fs.symlink('..', path.join(root, 'links/up-to-root'));
  for (const p of ['Documents/big.bin', 'Documents/empty.txt', 'Documents/Übersicht/café notes.txt', 'Documents/Übersicht', 'links']) {
    await fs.utimes(path.join(root, p), MTIME, MTIME);
  }
  await fs.lutimes(path.join(root, 'links/to-big'), MTIME, MTIME);
  await fs.utimes(path.join(root, 'Documents'), MTIME, MTIME);
  return { big };
}

interface Seen {
  kind: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  mtimeMs: number;
  content?: Buffer;
  target?: string;
}

/** Everything under root as lstat sees it, keyed by relative path. */
async function listTree(root: string): Promise<Map<string, Seen>> {
  const out = new Map<string, Seen>();
  const walk = async (rel: string): Promise<void> => {
    for (const n of (await fs.readdir(rel ? path.join(root, rel) : root)).sort()) {
      const r = rel ? `${rel}/${n}` : n;
      const abs = path.join(root, r);
      const st = await fs.lstat(abs);
      const base = { mode: st.mode & 0o777, mtimeMs: Math.round(st.mtimeMs) };
      if (st.isDirectory()) {
        out.set(r, { kind: 'dir', ...base });
        await walk(r);
      } else if (st.isFile()) out.set(r, { kind: 'file', ...base, content: await fs.readFile(abs) });
      else if (st.isSymbolicLink()) out.set(r, { kind: 'symlink', ...base, target: await fs.readlink(abs) });
      else out.set(r, { kind: 'other', ...base });
    }
  };
  await walk('');
  return out;
}

/** Compare two trees file by file: kind, content, mode (files, folders), mtime, symlink target. */
function expectSameTree(a: Map<string, Seen>, b: Map<string, Seen>): void {
  expect([...b.keys()]).toEqual([...a.keys()]);
  for (const [p, x] of a) {
    const y = b.get(p)!;
    expect(y.kind, p).toBe(x.kind);
    expect(y.mtimeMs, `${p} mtime`).toBe(x.mtimeMs);
    if (x.kind !== 'symlink') expect(y.mode, `${p} mode`).toBe(x.mode);
    if (x.kind === 'file') expect(y.content!.equals(x.content!), `${p} content`).toBe(true);
    if (x.kind === 'symlink') expect(y.target, `${p} target`).toBe(x.target);
  }
}

const fileEntry = (p: string, content: Buffer, mtimeMs = 1_700_000_000_000): PersonaEntry => {
  const chunks: string[] = [];
  for (let off = 0; off < content.length; off += PERSONA_CHUNK_BYTES) chunks.push(blockId(content.subarray(off, off + PERSONA_CHUNK_BYTES)));
  return { path: p, kind: 'file', mode: 0o644, mtimeMs, size: content.length, hash: blockId(content), chunks };
};
const dirEntry = (p: string): PersonaEntry => ({ path: p, kind: 'dir', mode: 0o755, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [] });
const linkEntry = (p: string, target: string): PersonaEntry => ({ path: p, kind: 'symlink', mode: 0o777, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [], target });

async function storeContent(store: MemoryBlockStore, content: Buffer): Promise<void> {
  for (let off = 0; off < content.length; off += PERSONA_CHUNK_BYTES) await putBlock(store, Buffer.from(content.subarray(off, off + PERSONA_CHUNK_BYTES)));
}

let tmp: { dir: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  tmp = await tempDir('carryon-persona-');
});
afterEach(async () => {
  // Read-only folders from the fixtures must be writable again before removal (the tests also run as non-root).
  await fs.chmod(path.join(tmp.dir, 'src/private'), 0o755).catch(() => undefined);
  await fs.chmod(path.join(tmp.dir, 'dst/private'), 0o755).catch(() => undefined);
  await tmp.cleanup();
});

describe('scanPersonaTree and materializePersonaTree round trip', () => {
  it('carries a real tree through a MemoryBlockStore with identical content, modes and mtimes', async () => {
    const src = path.join(tmp.dir, 'src');
    const copied = await copyDocSelection(src);
    expect(copied.files).toBeGreaterThan(20);
    const { big } = await addSpecialFiles(src);

    const store = new MemoryBlockStore();
    const progress: PersonaScanProgress[] = [];
    const scan = await scanPersonaTree(src, store, { onProgress: (p) => progress.push(p) });
    const files = scan.files;

    // Sorted, one entry per thing on disk, all kinds present.
    const before = await listTree(src);
    expect(files.map((f) => f.path)).toEqual([...files.map((f) => f.path)].sort());
    expect(files.map((f) => f.path).sort()).toEqual([...before.keys()].map((p) => p.normalize('NFC')).sort());
    expect(new Set(files.map((f) => f.kind))).toEqual(new Set(['file', 'dir', 'symlink']));
    const fileBytes = files.filter((f) => f.kind === 'file').reduce((n, f) => n + f.size, 0);
    expect(scan.bytesRead).toBe(fileBytes);
    // Every distinct chunk is stored once (identical files, such as common licence texts, share theirs).
    const distinct = new Set(files.flatMap((f) => f.chunks));
    expect(scan.newChunks).toBe(distinct.size);
    const stored: string[] = [];
    for await (const id of store.list()) stored.push(id);
    expect(stored.sort()).toEqual([...distinct].sort());
    expect(progress.length).toBe(files.length);
    expect(progress.at(-1)!.bytesRead).toBe(fileBytes);

    // The big file: three chunks, the middle one all zeros and stored like any other.
    const bigEntry = files.find((f) => f.path === 'Documents/big.bin')!;
    expect(bigEntry.size).toBe(big.length);
    expect(bigEntry.hash).toBe(blockId(big));
    expect(bigEntry.chunks).toHaveLength(3);
    expect(bigEntry.chunks[1]).toBe(blockId(Buffer.alloc(PERSONA_CHUNK_BYTES)));
    expect(await store.has(bigEntry.chunks[1]!)).toBe(true);
    expect(bigEntry.mtimeMs).toBe(MTIME.getTime());
    expect(files.find((f) => f.path === 'Documents/empty.txt')).toMatchObject({ size: 0, chunks: [], hash: blockId(Buffer.alloc(0)) });
    expect(files.find((f) => f.path === 'Documents/secret.txt')!.mode).toBe(0o600);
    expect(files.find((f) => f.path === 'private')!.mode).toBe(0o555);
    expect(files.find((f) => f.path === 'links/up-to-root')).toMatchObject({ kind: 'symlink', target: '..' });

    // The snapshot survives its own codec unchanged.
    expect(decodePersona(encodePersona({ files, registry: '' })).files).toEqual(files);

    const dst = path.join(tmp.dir, 'dst');
    const result = await materializePersonaTree(dst, files, store);
    expect(result).toEqual({ written: files.length, removed: 0 });
    expectSameTree(before, await listTree(dst));
    expect((await scanPersonaTree(dst, new MemoryBlockStore())).files).toEqual(files);
    // No temporary file is left behind.
    expect([...(await listTree(dst)).keys()].some((p) => p.includes('.carryon-tmp-'))).toBe(false);
  });

  it('records a decomposed (NFD) name in NFC and reads its content through the name on disk', async () => {
    const src = path.join(tmp.dir, 'src');
    await fs.mkdir(src);
    const nfd = 'Re\u0301sume\u0301.txt';
    await fs.writeFile(path.join(src, nfd), 'cv');
    const { files } = await scanPersonaTree(src, new MemoryBlockStore());
    expect(files).toHaveLength(1);
    expect(files[0]!.path).toBe('Résumé.txt');
    expect(files[0]!.hash).toBe(blockId(Buffer.from('cv')));
  });
});

describe('quick check', () => {
  it('reuses hash and chunks of unchanged files without reading them', async () => {
    const src = path.join(tmp.dir, 'src');
    await copyDocSelection(src);
    await addSpecialFiles(src);
    const store = new MemoryBlockStore();
    const first = await scanPersonaTree(src, store);
    expect(first.bytesRead).toBeGreaterThan(PERSONA_CHUNK_BYTES);

    const second = await scanPersonaTree(src, store, { previous: { files: first.files, registry: '' } });
    expect(second.bytesRead).toBe(0);
    expect(second.newChunks).toBe(0);
    expect(second.files).toEqual(first.files);

    // One file changes: only it is read again, and only its new chunk is stored.
    const changed = Buffer.from('a new version of the notes\n');
    await fs.writeFile(path.join(src, 'Documents/Übersicht/café notes.txt'), changed);
    await fs.utimes(path.join(src, 'Documents/Übersicht/café notes.txt'), MTIME, new Date(MTIME.getTime() + 5000));
    const third = await scanPersonaTree(src, store, { previous: { files: second.files, registry: '' } });
    expect(third.bytesRead).toBe(changed.length);
    expect(third.newChunks).toBe(1);
    expect(third.files.find((f) => f.path === 'Documents/Übersicht/café notes.txt')!.hash).toBe(blockId(changed));

    // Without previous everything is read again, but every chunk is already stored.
    const fourth = await scanPersonaTree(src, store);
    expect(fourth.bytesRead).toBe(first.bytesRead - 'bonjour\n'.length + changed.length);
    expect(fourth.newChunks).toBe(0);
    expect(fourth.files).toEqual(third.files);
  });

  it('reads a file again when its size changed even though its mtime did not', async () => {
    const src = path.join(tmp.dir, 'src');
    await fs.mkdir(src);
    await fs.writeFile(path.join(src, 'a.txt'), 'one');
    await fs.utimes(path.join(src, 'a.txt'), MTIME, MTIME);
    const store = new MemoryBlockStore();
    const first = await scanPersonaTree(src, store);
    await fs.writeFile(path.join(src, 'a.txt'), 'three');
    await fs.utimes(path.join(src, 'a.txt'), MTIME, MTIME);
    const second = await scanPersonaTree(src, store, { previous: { files: first.files, registry: '' } });
    expect(second.bytesRead).toBe(5);
    expect(second.files[0]!.hash).toBe(blockId(Buffer.from('three')));
  });
});

describe('scan refuses what cannot travel', () => {
  let src: string;
  beforeEach(async () => {
    src = path.join(tmp.dir, 'src');
    await fs.mkdir(path.join(src, 'sub'), { recursive: true });
    await fs.writeFile(path.join(src, 'sub/ok.txt'), 'ok');
  });

  it('refuses a FIFO, naming it', async () => {
    execFileSync('mkfifo', [path.join(src, 'sub/pipe')]);
    const err = await expectCode(() => scanPersonaTree(src, new MemoryBlockStore()), 'BAD_REQUEST');
    expect(err.message).toContain('"sub/pipe" is a FIFO');
    expect(err.data.rule).toBe('special-file');
  });

  it('refuses names that are one on a case-insensitive file system', async () => {
    await fs.writeFile(path.join(src, 'sub/README'), 'x');
    await fs.writeFile(path.join(src, 'sub/readme'), 'y');
    const err = await expectCode(() => scanPersonaTree(src, new MemoryBlockStore()), 'BAD_REQUEST');
    expect(err.data.rule).toBe('case-collision');
    expect(err.message).toContain('sub/README');
    expect(err.message).toContain('sub/readme');
  });

  it('refuses two spellings of one name (NFC and NFD)', async () => {
    await fs.writeFile(path.join(src, 'café'), 'x');
    await fs.writeFile(path.join(src, 'cafe\u0301'), 'y');
    expect((await expectCode(() => scanPersonaTree(src, new MemoryBlockStore()), 'BAD_REQUEST')).data.rule).toBe('case-collision');
  });

  it.each([['../../etc/passwd', 'escapes'], ['/etc/passwd', 'absolute'], ['x/../../..', 'dot-dot-after-name']])('refuses a symlink to %s', async (target, rule) => {
    await fs.symlink(target, path.join(src, 'sub/evil'));
    const err = await expectCode(() => scanPersonaTree(src, new MemoryBlockStore()), 'BAD_REQUEST');
    expect(err.data.rule).toBe(rule);
    expect(err.message).toContain('sub/evil');
  });

  it.each([['CON', 'reserved-name'], ['a:b', 'windows-char'], ['trailing.', 'trailing-dot-space'], ['back\\slash', 'backslash'], ['new\nline', 'control-char']])(
    'refuses a file named %j',
    async (name, rule) => {
      await fs.writeFile(path.join(src, 'sub', name), 'x');
      expect((await expectCode(() => scanPersonaTree(src, new MemoryBlockStore()), 'BAD_REQUEST')).data.rule).toBe(rule);
    },
  );

  it('refuses a name that is not UTF-8', async () => {
    const dirBuf = Buffer.from(path.join(src, 'sub') + '/');
    await fs.writeFile(Buffer.concat([dirBuf, Buffer.from([0x66, 0xff, 0x6f])]), 'x');
    const err = await expectCode(() => scanPersonaTree(src, new MemoryBlockStore()), 'BAD_REQUEST');
    expect(err.message).toContain('not valid UTF-8');
  });

  it('never follows a symlink: a link to a folder is recorded, not walked', async () => {
    await fs.mkdir(path.join(src, 'real'));
    await fs.writeFile(path.join(src, 'real/inside.txt'), 'in');
    await fs.symlink('real', path.join(src, 'alias'));
    const { files } = await scanPersonaTree(src, new MemoryBlockStore());
    expect(files.map((f) => f.path)).toEqual(['alias', 'real', 'real/inside.txt', 'sub', 'sub/ok.txt']);
    expect(files[0]).toMatchObject({ kind: 'symlink', target: 'real', size: 0, hash: null });
  });

  it('skips its own leftover temporary files', async () => {
    await fs.writeFile(path.join(src, 'sub/.carryon-tmp-0123456789abcdef'), 'half written');
    const { files } = await scanPersonaTree(src, new MemoryBlockStore());
    expect(files.map((f) => f.path)).toEqual(['sub', 'sub/ok.txt']);
  });

  it('refuses a root that is not a folder', async () => {
    await expectCode(() => scanPersonaTree(path.join(src, 'sub/ok.txt'), new MemoryBlockStore()), 'INVALID_ARGUMENT');
  });
});

describe('materializePersonaTree', () => {
  const A = Buffer.from('alpha\n');
  const B = Buffer.from('bravo\n');
  const C = Buffer.from('charlie\n');
  let store: MemoryBlockStore;
  let dst: string;
  let outside: string;
  let sentinel: string;
  beforeEach(async () => {
    store = new MemoryBlockStore();
    for (const c of [A, B, C]) await storeContent(store, c);
    dst = path.join(tmp.dir, 'dst');
    outside = path.join(tmp.dir, 'outside');
    sentinel = path.join(outside, 'sentinel.txt');
    await fs.mkdir(outside);
    await fs.writeFile(sentinel, 'do not touch\n');
  });
  async function expectOutsideUntouched(): Promise<void> {
    expect(await fs.readFile(sentinel, 'utf8')).toBe('do not touch\n');
    expect(await fs.readdir(outside)).toEqual(['sentinel.txt']);
    expect((await fs.readdir(tmp.dir)).sort()).toEqual(['dst', 'outside']);
  }

  /** Everything under dst as a comparable list: path, kind, content or target. */
  async function contents(): Promise<Array<[string, string, string]>> {
    const t = await listTree(dst);
    return [...t].map(([p, x]) => [p, x.kind, x.content?.toString('utf8') ?? x.target ?? '']);
  }

  const first = (): PersonaEntry[] => [
    dirEntry('docs'), fileEntry('docs/a.txt', A), fileEntry('docs/b.txt', B), linkEntry('docs/link', 'a.txt'), fileEntry('docs/old.txt', A), fileEntry('top.txt', C),
  ];
  // b changes, the link retargets, old.txt goes, new/c.txt appears (its folder implied), top.txt changes only mode and mtime.
  const second = (): PersonaEntry[] => [
    dirEntry('docs'), fileEntry('docs/a.txt', A), fileEntry('docs/b.txt', C), linkEntry('docs/link', 'b.txt'), fileEntry('new/c.txt', C),
    { ...fileEntry('top.txt', C, 1_700_000_009_000), mode: 0o600 },
  ];
  const afterSecond: Array<[string, string, string]> = [
    ['docs', 'dir', ''], ['docs/a.txt', 'file', 'alpha\n'], ['docs/b.txt', 'file', 'charlie\n'], ['docs/link', 'symlink', 'b.txt'],
    ['new', 'dir', ''], ['new/c.txt', 'file', 'charlie\n'], ['top.txt', 'file', 'charlie\n'],
  ];

  it('without previous, makes the folder match: replaces what differs, removes what is extra', async () => {
    expect(await materializePersonaTree(dst, first(), store)).toEqual({ written: 6, removed: 0 });
    await fs.writeFile(path.join(dst, 'stray.txt'), 'local');
    await fs.mkdir(path.join(dst, 'junk/deep'), { recursive: true });
    await fs.writeFile(path.join(dst, 'junk/deep/x'), 'x');
    execFileSync('mkfifo', [path.join(dst, 'docs/pipe')]);
    await fs.writeFile(path.join(dst, 'docs/.carryon-tmp-00000000deadbeef'), 'leftover');
    const r = await materializePersonaTree(dst, second(), store);
    // Written: a, b, top (no previous: every file is rewritten), link, new, new/c.
    // Removed: old, stray, junk, junk/deep, junk/deep/x, pipe, leftover.
    expect(r).toEqual({ written: 6, removed: 7 });
    expect(await contents()).toEqual(afterSecond);
    const top = await fs.stat(path.join(dst, 'top.txt'));
    expect(top.mode & 0o777).toBe(0o600);
    expect(Math.round(top.mtimeMs)).toBe(1_700_000_009_000);
    await expectOutsideUntouched();
  });

  it('with previous, leaves unchanged files alone (same inode) and only fixes their mode and mtime', async () => {
    await materializePersonaTree(dst, first(), store);
    const ino = async (p: string): Promise<number> => (await fs.stat(path.join(dst, p))).ino;
    const before = { a: await ino('docs/a.txt'), top: await ino('top.txt'), b: await ino('docs/b.txt') };
    const r = await materializePersonaTree(dst, second(), store, { previous: first() });
    expect(r).toEqual({ written: 4, removed: 1 });
    expect(await contents()).toEqual(afterSecond);
    expect(await ino('docs/a.txt')).toBe(before.a);
    expect(await ino('top.txt')).toBe(before.top);
    expect(await ino('docs/b.txt')).not.toBe(before.b);
    const top = await fs.stat(path.join(dst, 'top.txt'));
    expect(top.mode & 0o777).toBe(0o600);
    expect(Math.round(top.mtimeMs)).toBe(1_700_000_009_000);
    // Materializing the same snapshot again changes nothing.
    expect(await materializePersonaTree(dst, second(), store, { previous: second() })).toEqual({ written: 0, removed: 0 });
  });

  it.each([
    ['a file edited since the last scan', async (): Promise<void> => {
      await fs.writeFile(path.join(dst, 'docs/b.txt'), 'my local edit');
    }, 'docs/b.txt'],
    ['a file created since the last scan', async (): Promise<void> => {
      await fs.writeFile(path.join(dst, 'docs/mine.txt'), 'unsaved work');
    }, 'docs/mine.txt'],
    ['a symlink retargeted since the last scan', async (): Promise<void> => {
      await fs.unlink(path.join(dst, 'docs/link'));
      await fs.symlink('old.txt', path.join(dst, 'docs/link'));
    }, 'docs/link'],
  ])('with previous, refuses to overwrite %s and changes nothing', async (_what, edit, named) => {
    await materializePersonaTree(dst, first(), store);
    await edit();
    const snapshotBefore = await contents();
    const err = await expectCode(() => materializePersonaTree(dst, second(), store, { previous: first() }), 'LOCAL_PATH_CONFLICT');
    expect(err.message).toContain(named);
    expect(await contents()).toEqual(snapshotBefore);
  });

  it('refuses to write through a symlink planted where a folder belongs, leaving the outside untouched', async () => {
    await materializePersonaTree(dst, first(), store);
    await fs.rm(path.join(dst, 'docs'), { recursive: true });
    await fs.symlink(outside, path.join(dst, 'docs'));
    for (const previous of [undefined, first()]) {
      const err = await expectCode(() => materializePersonaTree(dst, first(), store, { previous }), 'LOCAL_PATH_CONFLICT');
      expect(err.message).toContain('"docs"');
      expect(err.message).toContain('symlink');
      await expectOutsideUntouched();
      expect((await fs.lstat(path.join(dst, 'docs'))).isSymbolicLink()).toBe(true);
    }
  });

  it('refuses a planted symlink where an implied folder belongs (relative target)', async () => {
    await fs.mkdir(dst);
    await fs.symlink('../outside', path.join(dst, 'new'));
    const err = await expectCode(() => materializePersonaTree(dst, [fileEntry('new/c.txt', C)], store), 'LOCAL_PATH_CONFLICT');
    expect(err.message).toContain('"new"');
    await expectOutsideUntouched();
  });

  it('replaces a planted symlink where a file belongs without writing to its target', async () => {
    await materializePersonaTree(dst, first(), store);
    await fs.unlink(path.join(dst, 'docs/a.txt'));
    await fs.symlink(sentinel, path.join(dst, 'docs/a.txt'));
    await materializePersonaTree(dst, first(), store);
    await expectOutsideUntouched();
    const st = await fs.lstat(path.join(dst, 'docs/a.txt'));
    expect(st.isFile()).toBe(true);
    expect(await fs.readFile(path.join(dst, 'docs/a.txt'), 'utf8')).toBe('alpha\n');
  });

  it('turns a symlink it created itself into a folder when the snapshot says so', async () => {
    const withLink = [...first(), linkEntry('alias', 'docs')];
    await materializePersonaTree(dst, withLink, store);
    const withDir = [...first(), dirEntry('alias'), fileEntry('alias/c.txt', C)];
    await materializePersonaTree(dst, withDir, store, { previous: withLink });
    expect((await fs.lstat(path.join(dst, 'alias'))).isDirectory()).toBe(true);
    expect(await fs.readFile(path.join(dst, 'alias/c.txt'), 'utf8')).toBe('charlie\n');
    expect(await fs.readdir(path.join(dst, 'docs'))).toEqual(['a.txt', 'b.txt', 'link', 'old.txt']);
  });

  it('writes into read-only folders and keeps their modes', async () => {
    const ro = (files: PersonaEntry[]): PersonaEntry[] => [{ ...dirEntry('private'), mode: 0o555 }, ...files.map((f) => ({ ...f, path: `private/${f.path}`, mode: 0o444 }))];
    const one = ro([fileEntry('x.txt', A)]);
    const two = ro([fileEntry('x.txt', B), fileEntry('y.txt', C)]);
    await materializePersonaTree(dst, one, store);
    await materializePersonaTree(dst, two, store, { previous: one });
    expect((await fs.stat(path.join(dst, 'private'))).mode & 0o777).toBe(0o555);
    expect((await fs.stat(path.join(dst, 'private/x.txt'))).mode & 0o777).toBe(0o444);
    expect(await fs.readFile(path.join(dst, 'private/x.txt'), 'utf8')).toBe('bravo\n');
    expect(await fs.readFile(path.join(dst, 'private/y.txt'), 'utf8')).toBe('charlie\n');
  });

  const badSnapshots: Array<[string, () => PersonaEntry[]]> = [
    ['a path with ..', () => [fileEntry('../escape.txt', A)]],
    ['an absolute path', () => [fileEntry(`${outside}/sentinel.txt`, A)]],
    ['a path through ..', () => [fileEntry('docs/../../outside/sentinel.txt', A)]],
    ['a backslash path', () => [fileEntry('..\\outside\\x', A)]],
    ['a reserved name', () => [fileEntry('docs/NUL', A)]],
    ['a symlink leaving the folder', () => [linkEntry('evil', '../outside')]],
    ['an absolute symlink', () => [linkEntry('evil', outside)]],
    ['an entry under a file', () => [fileEntry('top.txt', C), fileEntry('top.txt/inner', A)]],
    ['an entry under a symlink', () => [linkEntry('docs', '.'), fileEntry('docs/a.txt', A)]],
    ['a duplicate path', () => [fileEntry('a', A), fileEntry('a', B)]],
    ['a case collision', () => [fileEntry('A.txt', A), fileEntry('a.txt', B)]],
    ['a path not in NFC', () => [fileEntry('cafe\u0301', A)]],
    ['chunks that do not fit the size', () => [{ ...fileEntry('a', A), size: PERSONA_CHUNK_BYTES + 1 }]],
    ['a file without a hash', () => [{ ...fileEntry('a', A), hash: null }]],
  ];
  it.each(badSnapshots)('refuses a snapshot with %s before writing anything', async (_what, entries) => {
    await expectCode(() => materializePersonaTree(dst, entries(), store), 'BAD_REQUEST');
    expect(await fs.readdir(tmp.dir)).toEqual(['outside']);
    expect(await fs.readFile(sentinel, 'utf8')).toBe('do not touch\n');
  });

  it('fails with BLOCK_NOT_FOUND before changing anything when a chunk is missing', async () => {
    await materializePersonaTree(dst, first(), store);
    const before = await contents();
    const missing = Buffer.from('never stored');
    await expectCode(() => materializePersonaTree(dst, [...second(), fileEntry('docs/z.txt', missing)], store), 'BLOCK_NOT_FOUND');
    expect(await contents()).toEqual(before);
  });

  it('fails with MANIFEST_INVALID when the chunks do not make the entry, leaving no file behind', async () => {
    await fs.mkdir(dst);
    await expectCode(() => materializePersonaTree(dst, [{ ...fileEntry('a.txt', A), hash: blockId(B) }], store), 'MANIFEST_INVALID');
    await expectCode(() => materializePersonaTree(dst, [{ ...fileEntry('a.txt', A), size: 10 }], store), 'MANIFEST_INVALID');
    expect(await fs.readdir(dst)).toEqual([]);
  });

  it('refuses a folder holding a name that is not UTF-8 rather than guess what it is', async () => {
    await fs.mkdir(dst);
    await fs.writeFile(Buffer.concat([Buffer.from(`${dst}/`), Buffer.from([0x62, 0xfe])]), 'x');
    const err = await expectCode(() => materializePersonaTree(dst, [fileEntry('a.txt', A)], store), 'LOCAL_PATH_CONFLICT');
    expect(err.message).toContain('not valid UTF-8');
    expect((await fs.readdir(dst)).length).toBe(1);
  });

  it('creates the root folder when missing and refuses a root that is a file', async () => {
    const deep = path.join(dst, 'a/b');
    expect(await materializePersonaTree(deep, [fileEntry('f', A)], store)).toEqual({ written: 1, removed: 0 });
    expect(await fs.readFile(path.join(deep, 'f'), 'utf8')).toBe('alpha\n');
    await expectCode(() => materializePersonaTree(path.join(deep, 'f'), [], store), 'INVALID_ARGUMENT');
  });
});
