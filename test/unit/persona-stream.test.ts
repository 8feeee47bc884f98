// client/persona-stream.ts's Hydrator on a real laptop state (SQLite, pack cache) and real files, with no
// server: chunks already in the cache are made whole offline; one that is not reads as EIO with the
// message the user needs; a file changed outside the mount is never overwritten by a fetch; the
// hydration log survives a restart; a temp file left by a crash is not taken as a file of the profile.
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, statSync, utimesSync, writeFileSync, chmodSync, ftruncateSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CarryonError, encodePersona, scanPersonaTree, type PersonaEntry } from '../../src/index.js';
import { checkNesting, Hydrator, STREAM_DIR } from '../../client/persona-stream.js';
import { LocalState } from '../../client/state.js';
import { seededBytes, tempDir } from './helpers.js';

describe('Hydrator', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let state: LocalState;
  let copy: string;
  let entries: PersonaEntry[];
  const events: Array<{ event: string; fields: Record<string, unknown>; human: string }> = [];
  const offline = (): never => {
    throw new CarryonError('SERVER_UNREACHABLE', 'could not connect to 127.0.0.1:9 (test: no server)');
  };
  const log = (event: string, fields: Record<string, unknown>, human: string): void => void events.push({ event, fields, human });

  /** A placeholder as checkout --stream makes it: sparse, the entry's size, mode and mtime. */
  function placeholder(e: PersonaEntry): void {
    const abs = path.join(copy, 'profile', e.path);
    mkdirSync(path.dirname(abs), { recursive: true });
    const fd = openSync(abs, 'w');
    ftruncateSync(fd, e.size);
    closeSync(fd);
    chmodSync(abs, e.mode);
    utimesSync(abs, e.mtimeMs / 1000, e.mtimeMs / 1000);
  }

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('carryon-pstream-'));
    state = new LocalState(path.join(dir, 'home'));
    // The source profile, scanned into this laptop's cache: its chunks are local, as after `persona fetch`.
    const src = path.join(dir, 'src');
    mkdirSync(path.join(src, 'Documents'), { recursive: true });
    writeFileSync(path.join(src, 'Documents', 'big.bin'), seededBytes(3 * 1024 * 1024 + 5, 7));
    writeFileSync(path.join(src, 'Documents', 'small.txt'), 'hello\n');
    chmodSync(path.join(src, 'Documents', 'small.txt'), 0o640);
    entries = (await scanPersonaTree(src, state.cacheOf('desk'))).files;
    copy = path.join(dir, 'copy');
    mkdirSync(path.join(copy, STREAM_DIR), { recursive: true });
    writeFileSync(path.join(copy, STREAM_DIR, 'hydrated'), '');
    for (const e of entries) if (e.kind === 'file') placeholder(e);
    state.putPersona({ desktop: 'desk', server: 'http://127.0.0.1:9', version: 2, snapshot: encodePersona({ files: entries, registry: '' }), dir: copy, withDisk: false });
    events.length = 0;
  });

  afterEach(async () => {
    await state.close();
    await cleanup();
  });

  it('makes a placeholder whole from the cache, offline: same bytes, mode and mtime; logged', async () => {
    const h = new Hydrator(state, offline, 'desk', copy, log);
    expect(await h.ensure('Documents/big.bin')).toBe(0);
    const abs = path.join(copy, 'profile', 'Documents', 'big.bin');
    expect(readFileSync(abs).equals(seededBytes(3 * 1024 * 1024 + 5, 7))).toBe(true);
    const e = entries.find((x) => x.path === 'Documents/big.bin')!;
    expect(Math.round(statSync(abs).mtimeMs)).toBe(e.mtimeMs);
    expect(statSync(abs).mode & 0o777).toBe(e.mode);
    expect(readFileSync(path.join(copy, STREAM_DIR, 'hydrated'), 'utf8')).toBe(`${Buffer.from('Documents/big.bin').toString('hex')}\n`);
    expect(events.map((x) => x.event)).toEqual(['hydrated']);
    // No temp file left beside it; the scanner takes it (and the other placeholder) as unchanged.
    expect(readdirSync(path.join(copy, 'profile', 'Documents')).sort()).toEqual(['big.bin', 'small.txt']);
    const rescan = await scanPersonaTree(path.join(copy, 'profile'), state.cacheOf('desk'), { previous: { files: entries, registry: '' } });
    const files = (xs: PersonaEntry[]) => xs.filter((x) => x.kind === 'file'); // a rename moves the folder's mtime
    expect(files(rescan.files)).toEqual(files(entries));
    expect(rescan.bytesRead).toBe(0);
  });

  it('offline with a chunk missing: EIO, the file stays a placeholder, and the message says what to do', async () => {
    const e = entries.find((x) => x.path === 'Documents/small.txt')!;
    await state.cacheOf('desk').delete(e.chunks[0]!);
    const h = new Hydrator(state, offline, 'desk', copy, log);
    expect(await h.ensure('Documents/small.txt')).toBe(5); // EIO
    const ev = events.find((x) => x.event === 'unavailable')!;
    expect(ev.fields).toMatchObject({ path: 'Documents/small.txt', chunks: 1 });
    expect(ev.fields.cause).toMatch(/^SERVER_UNREACHABLE/);
    expect(ev.human).toContain('`carryon persona fetch desk`');
    expect(lstatSync(path.join(copy, 'profile', 'Documents', 'small.txt')).blocks).toBe(0);
    expect(readFileSync(path.join(copy, STREAM_DIR, 'hydrated'), 'utf8')).toBe('');
  });

  it('never overwrites a file changed outside the mount; a logged path is not fetched again after a restart', async () => {
    const abs = path.join(copy, 'profile', 'Documents', 'small.txt');
    writeFileSync(abs, 'my own edit\n');
    const h = new Hydrator(state, offline, 'desk', copy, log);
    expect(await h.ensure('Documents/small.txt')).toBe(0);
    expect(readFileSync(abs, 'utf8')).toBe('my own edit\n');
    // Removed through the mount, then a new file of the same size and mtime as the old entry:
    // after a restart the log still says it is not a placeholder, so it is left alone.
    expect(await h.gone('Documents/big.bin')).toBe(0);
    const e = entries.find((x) => x.path === 'Documents/big.bin')!;
    writeFileSync(path.join(copy, 'profile', e.path), Buffer.alloc(e.size, 1));
    utimesSync(path.join(copy, 'profile', e.path), e.mtimeMs / 1000, e.mtimeMs / 1000);
    const again = new Hydrator(state, offline, 'desk', copy, log);
    expect(await again.ensure('Documents/big.bin')).toBe(0);
    expect(readFileSync(path.join(copy, 'profile', e.path)).equals(Buffer.alloc(e.size, 1))).toBe(true);
    expect(events.filter((x) => x.event === 'hydrated')).toEqual([]);
  });

  it('a folder rename makes every placeholder under it whole first', async () => {
    const h = new Hydrator(state, offline, 'desk', copy, log);
    expect(await h.ensureUnder('Documents')).toBe(0);
    expect(events.filter((x) => x.event === 'hydrated').map((x) => x.fields.path).sort()).toEqual(['Documents/big.bin', 'Documents/small.txt']);
    expect(readFileSync(path.join(copy, 'profile', 'Documents', 'small.txt'), 'utf8')).toBe('hello\n');
    expect(existsSync(path.join(copy, 'profile', 'Documents', 'big.bin'))).toBe(true);
  });
});

describe('checkNesting (a streamed check-out writes placeholders straight from the snapshot)', () => {
  const entry = (p: string, kind: PersonaEntry['kind']): PersonaEntry => ({ path: p, kind, mode: 0o644, mtimeMs: 0, size: 0, hash: null, chunks: [], ...(kind === 'symlink' ? { target: 'x' } : {}) });
  it('accepts files under folders, listed or not', () => {
    expect(() => checkNesting([entry('a', 'dir'), entry('a/b', 'file'), entry('c/d/e', 'file')])).not.toThrow();
  });
  it('refuses anything under a symlink or a file, with BAD_REQUEST naming it', () => {
    for (const up of ['symlink', 'file'] as const) {
      let err: unknown = null;
      try {
        checkNesting([entry('a', up), entry('a/b/c', 'file')]);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(CarryonError);
      expect((err as CarryonError).code).toBe('BAD_REQUEST');
      expect((err as CarryonError).data.path).toBe('a/b/c');
    }
  });
});
