// The streamed persona, end to end with the real CLI, the real server and a real FUSE mount
// (native/persona-fuse, fusermount3): a 1 GiB profile pushed by one device; a laptop checks it out with
// --persona-only --stream and mounts it. Listing shows every file with its size and fetches nothing;
// opening one file fetches exactly that file's chunks; offline, a file never fetched reads as EIO with a
// logged message; an edit through the mount is what the next push carries; a crash mid-fetch leaves no
// partial file taken as an edit; `persona fetch` and the background download bring the copy to 100%,
// and its content equals the server's.
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, removeTmp, requireTool, spawnCli, TestServer, tmpDir, type CliProcess } from './harness.js';

const MiB = 1024 * 1024;
const FILES = 128;
/** 128 files of 8 MiB and a few KiB more (so most end in a partial chunk): 1.03 GiB, 1,152 distinct chunks. */
const sizeOf = (i: number): number => 8 * MiB + i * 4099;
const relOf = (i: number): string => `Documents/d${i % 8}/file${i}.bin`;

/** Seeded bytes, fast (AES-256-CTR of zeros): every file, and so every chunk, distinct. */
function seeded(seed: number, n: number): Buffer {
  const key = createHash('sha256').update(`persona-stream-${seed}`).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Every path under `root` with its lstat, as a mount shows it. */
function walk(root: string, rel = ''): Map<string, { size: number; mtimeMs: number; dir: boolean }> {
  const out = new Map<string, { size: number; mtimeMs: number; dir: boolean }>();
  for (const name of readdirSync(path.join(root, rel))) {
    const r = rel ? `${rel}/${name}` : name;
    const st = lstatSync(path.join(root, r));
    out.set(r, { size: st.size, mtimeMs: Math.round(st.mtimeMs), dir: st.isDirectory() });
    if (st.isDirectory()) for (const [k, v] of walk(root, r)) out.set(k, v);
  }
  return out;
}

/** Is something mounted at `dir` (another device than its parent's)? */
function mounted(dir: string): boolean {
  try {
    return statSync(dir).dev !== statSync(path.dirname(dir)).dev;
  } catch {
    return true; // ENOTCONN: a dead mount is still a mount
  }
}

/** The pids whose parent is `pid` (from /proc: the mount process's FUSE helper). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(name));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

describe('streamed persona (FUSE, just in time)', () => {
  const dir = tmpDir('pstream');
  const server = new TestServer(dir);
  const source = new Laptop(path.join(dir, 'source'));
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const c = new Laptop(path.join(dir, 'laptop-c'));
  const sourceProfile = path.join(source.home, 'desktops', 'desk', 'persona', 'profile');
  const mountA = path.join(dir, 'view-a');
  const mountC = path.join(dir, 'view-c');
  const expected = new Map<string, string>(); // path -> sha256 of what the server holds
  let totalChunks = 0;
  let mountProc: CliProcess | null = null;
  let token = '';

  beforeAll(async () => {
    for (const t of ['fusermount3', 'ls']) requireTool(t);
    await server.init();
    token = await server.addUser('alice');
    spawnSync('truncate', ['-s', '4M', path.join(dir, 'img.raw')]);
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    for (const [l, n] of [[source, 'source'], [a, 'laptop-A'], [c, 'laptop-C']] as const) {
      expect((await l.cli(['login', server.url, '--token', token, '--device-name', n])).code).toBe(0);
    }
    // The 1 GiB profile, pushed by another device.
    expect((await source.cli(['checkout', 'desk', '--persona-only'])).code).toBe(0);
    for (let i = 0; i < FILES; i++) {
      mkdirSync(path.dirname(path.join(sourceProfile, relOf(i))), { recursive: true });
      const bytes = seeded(i, sizeOf(i));
      writeFileSync(path.join(sourceProfile, relOf(i)), bytes);
      expected.set(relOf(i), sha(bytes));
      totalChunks += Math.ceil(sizeOf(i) / MiB);
    }
    writeFileSync(path.join(sourceProfile, 'Documents', 'notes.txt'), 'line one\n');
    expected.set('Documents/notes.txt', sha(Buffer.from('line one\n')));
    totalChunks += 1;
    const push = await source.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.version).toBe(2);
  }, 600_000);

  afterAll(async () => {
    killSpawned();
    for (const m of [mountA, mountC]) if (mounted(m)) spawnSync('fusermount3', ['-u', '-z', m]);
    await server.stop();
    removeTmp(dir);
  });

  const progress = async (l: Laptop) => {
    const st = await l.cli(['status', 'desk', '--json']);
    expect(st.code, st.stderr).toBe(0);
    return st.json.streamedPersonas[0];
  };

  it('checkout --persona-only --stream lists the profile and fetches nothing', async () => {
    const co = await a.cli(['checkout', 'desk', '--persona-only', '--stream', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json).toMatchObject({ version: 2, files: FILES + 1, chunksFetched: 0, streamed: true });
    const p = await progress(a);
    expect(p).toMatchObject({ chunks: totalChunks, chunksLocal: 0, readyToTravel: false, mountedAt: null });
    // A scan of the backing folder reads no placeholder: no edits, nothing fetched.
    const st = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json).toMatchObject({ added: [], changed: [], deleted: [], registryChanged: false });
    expect((await progress(a)).chunksLocal).toBe(0);
  });

  it('the mount lists every file with its size and mtime without fetching; one file read fetches its chunks and no others', async () => {
    mountProc = spawnCli(a, ['persona', 'mount', 'desk', '--at', mountA, '--no-download']);
    const m = await mountProc.next('mounted');
    expect(m).toMatchObject({ event: 'mounted', at: mountA, chunks: totalChunks, chunksLocal: 0 });

    const seen = walk(mountA);
    const src = walk(sourceProfile);
    expect([...seen.keys()].sort()).toEqual([...src.keys()].sort());
    for (const [rel, s] of src) if (!s.dir) expect(seen.get(rel), rel).toEqual(s);
    const ls = spawnSync('ls', ['-lR', mountA], { encoding: 'utf8' });
    expect(ls.status, ls.stderr).toBe(0);
    expect(ls.stdout.split('\n').filter((l) => l.startsWith('-')).length).toBe(FILES + 1);
    expect(ls.stdout).toContain(` ${sizeOf(77)} `);
    expect((await progress(a)).chunksLocal).toBe(0); // listing fetched nothing

    const one = readFileSync(path.join(mountA, relOf(5)));
    expect(sha(one)).toBe(expected.get(relOf(5)));
    expect(await mountProc.next('hydrated')).toMatchObject({ path: relOf(5), chunks: Math.ceil(sizeOf(5) / MiB) });
    const p = await progress(a);
    expect(p.chunksLocal).toBe(Math.ceil(sizeOf(5) / MiB)); // exactly that file's 9 chunks
    expect(p.bytesLocal).toBe(sizeOf(5));
  }, 120_000);

  it('offline, a file never fetched reads as EIO and the mount says why and what to do', async () => {
    const port = server.port();
    await server.stop();
    let code = '';
    try {
      readFileSync(path.join(mountA, relOf(6)));
    } catch (err) {
      code = (err as NodeJS.ErrnoException).code ?? '';
    }
    expect(code).toBe('EIO');
    const ev = await mountProc!.next('unavailable');
    expect(ev.path).toBe(relOf(6));
    expect(ev.cause).toMatch(/^SERVER_UNREACHABLE/);
    expect(ev.message).toContain('`carryon persona fetch desk`');
    // A file fetched before still opens offline.
    expect(sha(readFileSync(path.join(mountA, relOf(5))))).toBe(expected.get(relOf(5)));
    // Saving over files never fetched needs nothing from the server: an open with O_TRUNC, and a
    // save through a temp file renamed over the old one.
    writeFileSync(path.join(mountA, relOf(10)), 'saved offline\n');
    writeFileSync(path.join(mountA, 'Documents', 'report.tmp'), 'renamed over\n');
    renameSync(path.join(mountA, 'Documents', 'report.tmp'), path.join(mountA, relOf(11)));
    expected.set(relOf(10), sha(Buffer.from('saved offline\n')));
    expected.set(relOf(11), sha(Buffer.from('renamed over\n')));
    expect(readFileSync(path.join(mountA, relOf(11)), 'utf8')).toBe('renamed over\n');
    expect(mountProc!.events.filter((e) => e.event === 'unavailable').map((e) => e.path)).toEqual([relOf(6)]);
    await server.start({}, port);
  }, 120_000);

  it('edits through the mount are what the next push carries', async () => {
    // An application edits a big file in the middle (made whole first), appends to a text file, adds one.
    const fd = openSync(path.join(mountA, relOf(9)), 'r+');
    writeSync(fd, Buffer.from('EDITED IN THE MIDDLE'), 0, 20, 3 * MiB + 17);
    closeSync(fd);
    writeFileSync(path.join(mountA, 'Documents', 'notes.txt'), 'line one\nfrom the mount\n');
    writeFileSync(path.join(mountA, 'Documents', 'new.txt'), 'new file\n');
    const edited = seeded(9, sizeOf(9));
    Buffer.from('EDITED IN THE MIDDLE').copy(edited, 3 * MiB + 17);
    expected.set(relOf(9), sha(edited));
    expected.set('Documents/notes.txt', sha(Buffer.from('line one\nfrom the mount\n')));
    expected.set('Documents/new.txt', sha(Buffer.from('new file\n')));

    const st = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(st.code, st.stderr).toBe(0);
    expect(st.json).toMatchObject({ added: ['Documents/new.txt'], changed: ['Documents/d1/file9.bin', relOf(10), relOf(11), 'Documents/notes.txt'], deleted: [] });
    const push = await a.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json).toMatchObject({ version: 3, merged: false });
    // new.txt; file9 and notes.txt each swapped one chunk for another; file10 and file11 went from 9 to 1.
    totalChunks += 1 - 2 * (Math.ceil(sizeOf(10) / MiB) - 1);
    // Only what changed went up: the edited file as a delta or its changed chunk, and four small files.
    expect(push.json.bytesSent).toBeLessThan(2 * MiB);
    // The files never opened are still placeholders: the push read none of them.
    // Version 3's chunks on this laptop: file5's 9, file9's 9 (8 fetched, 1 new), notes, new.txt,
    // file10 and file11 (the push fetched their old chunks as delta bases: not part of version 3).
    expect((await progress(a)).chunksLocal).toBe(22);

    expect(await mountProc!.stop()).toBe(0);
    expect(mountProc!.events.find((e) => e.event === 'stopped')).toMatchObject({ lazy: false });
    expect(mounted(mountA)).toBe(false);
  }, 300_000);

  it('a crash while a file is being made whole leaves the placeholder, no partial file, and no edit', async () => {
    const crashing = spawnCli(a, ['persona', 'mount', 'desk', '--at', mountA, '--no-download'], { CARRYON_CRASH_AT: 'persona-hydrate-rename:1' });
    await crashing.next('mounted');
    let failed = false;
    try {
      readFileSync(path.join(mountA, relOf(20)));
    } catch {
      failed = true;
    }
    expect(failed).toBe(true);
    expect((await crashing.exit).signal).toBe('SIGKILL');
    // The helper saw its parent die and left; fusermount3 (auto_unmount) took the mount down.
    await expect.poll(() => mounted(mountA), { timeout: 30_000 }).toBe(false);
    const st = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json).toMatchObject({ version: 3, added: [], changed: [], deleted: [] });
    // The placeholder is intact, and the fetched copy left under a temp name is no file of the profile.
    const backing = path.join(a.home, 'desktops', 'desk', 'persona', 'profile');
    expect(lstatSync(path.join(backing, relOf(20))).blocks).toBe(0);
  }, 120_000);

  it('the FUSE helper killed: the mount goes away and the mount process fails with IO_ERROR, saying what to do', async () => {
    const m = spawnCli(a, ['persona', 'mount', 'desk', '--at', mountA, '--no-download']);
    await m.next('mounted');
    const helper = childrenOf(m.proc.pid!);
    expect(helper).toHaveLength(1);
    process.kill(helper[0]!, 'SIGKILL');
    expect((await m.exit).code).toBe(9);
    expect((await m.next('error')).error).toMatchObject({ code: 'IO_ERROR' });
    expect(m.events.find((e) => e.event === 'helper-exited')).toMatchObject({ signal: 'SIGKILL' });
    expect((await m.next('error')).error.message).toContain('carryon persona mount desk');
    await expect.poll(() => mounted(mountA), { timeout: 30_000 }).toBe(false);
  }, 120_000);

  it('`carryon persona fetch` downloads the rest; every file then opens, equal to the server\'s', async () => {
    const before = await progress(a);
    const f = await a.cli(['persona', 'fetch', 'desk', '--json']);
    expect(f.code, f.stderr).toBe(0);
    expect(f.json).toMatchObject({ chunks: totalChunks, chunksLocal: totalChunks, readyToTravel: true, fetched: before.chunks - before.chunksLocal });
    expect(await progress(a)).toMatchObject({ readyToTravel: true, chunksLocal: totalChunks });

    mountProc = spawnCli(a, ['persona', 'mount', 'desk', '--at', mountA]);
    await mountProc.next('mounted');
    const seen = walk(mountA);
    for (const [rel, hash] of expected) {
      expect(seen.has(rel), rel).toBe(true);
      expect(sha(readFileSync(path.join(mountA, rel))), rel).toBe(hash);
    }
    expect(mountProc.events.filter((e) => e.event === 'unavailable')).toEqual([]);
    expect(await mountProc.stop()).toBe(0);
    const st = await a.cli(['persona', 'status', 'desk', '--json']);
    expect(st.json).toMatchObject({ added: [], changed: [], deleted: [] });
  }, 300_000);

  it('another laptop streams version 3 with the background download to 100%, equal to the server\'s', async () => {
    const co = await c.cli(['checkout', 'desk', '--persona-only', '--stream', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.version).toBe(3);
    const m = spawnCli(c, ['persona', 'mount', 'desk', '--at', mountC]);
    expect(await m.next('mounted')).toMatchObject({ chunksLocal: 0 });
    await m.next('complete');
    expect(await progress(c)).toMatchObject({ readyToTravel: true, mountedAt: mountC });
    for (const [rel, hash] of expected) expect(sha(readFileSync(path.join(mountC, rel))), rel).toBe(hash);
    // `carryon persona unmount` from another shell: the mount process stops on its own, cleanly.
    const u = await c.cli(['persona', 'unmount', 'desk', '--json']);
    expect(u.code, u.stderr).toBe(0);
    expect(u.json).toMatchObject({ unmounted: true, at: mountC });
    expect(await m.exit).toEqual({ code: 0, signal: null });
    expect(m.events.find((e) => e.event === 'stopped')).toMatchObject({ lazy: false, chunksLocal: totalChunks });
    expect(mounted(mountC)).toBe(false);
    expect((await progress(c)).mountedAt).toBeNull();
  }, 300_000);

  it('bad input: clear errors, stable codes, nothing changed', async () => {
    // A whole copy is not streamed: nothing to mount or fetch; and a stream is not made over it.
    const whole = await source.cli(['persona', 'mount', 'desk', '--at', path.join(dir, 'view-src'), '--json']);
    expect(whole.code).not.toBe(0);
    expect(whole.json.error.code).toBe('INVALID_ARGUMENT');
    expect(whole.json.error.message).toMatch(/whole copy, not streamed/);
    const over = await source.cli(['checkout', 'desk', '--persona-only', '--stream', '--json']);
    expect(over.json.error.code).toBe('LOCAL_PATH_CONFLICT');
    // Not on this laptop at all.
    const none = await new Laptop(path.join(dir, 'laptop-x')).cli(['persona', 'fetch', 'desk', '--json']);
    expect(none.json.error.code).toBe('NOT_CHECKED_OUT');
    // A mount folder that holds files is refused; the folder is left as it was.
    const busy = path.join(dir, 'busy');
    mkdirSync(busy);
    writeFileSync(path.join(busy, 'mine.txt'), 'keep');
    const r = await a.cli(['persona', 'mount', 'desk', '--at', busy, '--json']);
    expect(r.json.error.code).toBe('INVALID_ARGUMENT');
    expect(r.json.error.message).toMatch(/not empty/);
    expect(readdirSync(busy)).toEqual(['mine.txt']);
    expect(mounted(busy)).toBe(false);
    // A streamed check-out into a folder that holds files is refused before anything is fetched.
    const d = new Laptop(path.join(dir, 'laptop-d'));
    expect((await d.cli(['login', server.url, '--token', token, '--device-name', 'laptop-D'])).code).toBe(0);
    const into = await d.cli(['checkout', 'desk', '--persona-only', '--stream', '--persona-to', busy, '--json']);
    expect(into.json.error.code).toBe('LOCAL_PATH_CONFLICT');
    expect(readdirSync(busy)).toEqual(['mine.txt']);
    // An encrypted copy cannot be streamed (yet): refused, nothing made.
    const enc = await d.cli(['checkout', 'desk', '--persona-only', '--stream', '--encrypt', '--persona-to', path.join(dir, 'enc'), '--json']);
    expect(enc.json.error.code).toBe('INVALID_ARGUMENT');
    expect(enc.json.error.message).toMatch(/without --stream/);
    expect(existsSync(path.join(dir, 'enc'))).toBe(false);
    expect((await d.cli(['status', '--json'])).json.streamedPersonas).toEqual([]);
  }, 120_000);

  it('discard of a mounted streamed persona unmounts it; the mount process stops', async () => {
    const m = spawnCli(a, ['persona', 'mount', 'desk', '--at', mountA, '--no-download']);
    await m.next('mounted');
    expect(mounted(mountA)).toBe(true);
    const r = await a.cli(['discard', 'desk', '--yes', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(await m.exit).toEqual({ code: 0, signal: null });
    expect(mounted(mountA)).toBe(false);
    expect((await a.cli(['status', '--json'])).json.streamedPersonas).toEqual([]);
    expect(existsSync(path.join(a.home, 'desktops', 'desk', 'persona'))).toBe(false);
  }, 120_000);
});
