import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId, CarryonError, packEntries, unpackEntries, writeEntriesChunked, type TarEntry } from '../../../src/index.js';
import { caught, expectCode, prng, randInt, randomBytes, tempDir } from '../helpers.js';

const require = createRequire(import.meta.url);
const tarStream = require('tar-stream') as typeof import('tar-stream');

const MiB = 1024 * 1024;

async function packToBuffer(entries: TarEntry[]): Promise<Buffer> {
  return buffer(packEntries(entries));
}

async function unpackAll(input: NodeJS.ReadableStream, max: number): Promise<{ entries: TarEntry[]; count: number }> {
  const entries: TarEntry[] = [];
  const count = await unpackEntries(input, max, (e) => void entries.push(e));
  return { entries, count };
}

/** A readable that delivers `buf` in chunks of `size` bytes. */
function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let off = 0; off < buf.length; off += size) parts.push(buf.subarray(off, off + size));
  return Readable.from(parts, { objectMode: false });
}

function sampleEntries(seed: number): TarEntry[] {
  const rng = prng(seed);
  const sizes = [1, 2, 511, 512, 513, 1000, 4096, 65536, 65537, MiB + 7, 4 * MiB];
  for (let i = 0; i < 150; i++) sizes.push(1 + randInt(rng, 3000));
  return sizes.map((n) => {
    const data = randomBytes(rng, n);
    return { name: `b/${blockId(data)}`, data };
  });
}

/** Tar bytes with one entry of `type` made by tar-stream directly, after a good file entry. */
async function tarWith(header: Record<string, unknown>): Promise<Buffer> {
  const pack = tarStream.pack();
  const out = buffer(pack as unknown as Readable);
  pack.entry({ name: 'b/ok', size: 3 }, Buffer.from('abc'));
  pack.entry(header as never);
  pack.finalize();
  return out;
}

describe('packEntries / unpackEntries round trip', () => {
  it('round-trips 161 entries from 1 byte to 4 MiB, in order', async () => {
    const entries = sampleEntries(501);
    const tar = await packToBuffer(entries);
    const { entries: got, count } = await unpackAll(Readable.from([tar]), 4 * MiB);
    expect(count).toBe(entries.length);
    expect(got.map((e) => e.name)).toEqual(entries.map((e) => e.name));
    got.forEach((e, i) => expect(e.data.equals(entries[i]!.data), e.name).toBe(true));
  });

  it('round-trips through a live stream fed in small chunks, with a slow async consumer', async () => {
    const entries = sampleEntries(502).slice(0, 60);
    const packed = await packToBuffer(entries);
    const got: TarEntry[] = [];
    const count = await unpackEntries(chunked(packed, 777), 4 * MiB, async (e) => {
      await new Promise((r) => setImmediate(r));
      got.push(e);
    });
    expect(count).toBe(60);
    got.forEach((e, i) => expect(e.data.equals(entries[i]!.data)).toBe(true));
    // And straight from packEntries, without buffering.
    const live: TarEntry[] = [];
    await unpackEntries(packEntries(entries), 4 * MiB, (e) => void live.push(e));
    expect(live.map((e) => e.name)).toEqual(entries.map((e) => e.name));
  });

  it('packs from an async generator and packs zero entries as an empty archive', async () => {
    async function* gen(): AsyncGenerator<TarEntry> {
      for (let i = 0; i < 20; i++) yield { name: `e${i}`, data: Buffer.alloc(i + 1, i) };
    }
    const { entries } = await unpackAll(packEntries(gen()), 100);
    expect(entries.map((e) => e.data.length)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect((await unpackAll(packEntries([]), 100)).count).toBe(0);
  });

  it('accepts an entry of exactly the limit', async () => {
    const data = Buffer.alloc(5000, 1);
    const { count } = await unpackAll(Readable.from([await packToBuffer([{ name: 'x', data }])]), 5000);
    expect(count).toBe(1);
  });
});

/** What tar-stream's pack (packEntries' encoder before) wrote for the same entries. */
async function tarStreamBytes(entries: TarEntry[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const out = buffer(pack as unknown as Readable);
  for (const e of entries) pack.entry({ name: e.name, size: e.data.length, mode: 0o644, mtime: new Date(0) }, e.data);
  pack.finalize();
  return out;
}

describe('packEntries: our own ustar headers', () => {

  it('writes the bytes tar-stream wrote: sizes around records and chunks, a 131-byte patch name split into a ustar prefix', async () => {
    const entries = sampleEntries(503);
    const rng = prng(504);
    const a = randomBytes(rng, 32).toString('hex');
    const b = randomBytes(rng, 32).toString('hex');
    entries.push({ name: `p/${a}/${b}`, data: randomBytes(rng, 700) }, { name: 'empty', data: Buffer.alloc(0) });
    // Enough 64 KiB entries to fill several chunks, the way a check-out's answer does.
    for (let i = 0; i < 40; i++) entries.push({ name: `b${i}`, data: randomBytes(rng, 20_000 + randInt(rng, 45_000)) });
    const theirs = await tarStreamBytes(entries);
    expect((await packToBuffer(entries)).equals(theirs)).toBe(true);
    expect((await packToBuffer([])).equals(await tarStreamBytes([]))).toBe(true);
  });

  it('each entry goes out as it comes: an upload sends what it has, rather than gathering a chunk', async () => {
    // An entry is out when at most one more was asked for (the stream reads one ahead).
    let asked = 0;
    const seen: number[] = [];
    async function* slow(): AsyncGenerator<TarEntry> {
      for (let i = 0; i < 3; i++) {
        asked++;
        yield { name: `s${i}`, data: Buffer.alloc(700, i) };
      }
    }
    const tar = packEntries(slow());
    await unpackEntries(tar, MiB, () => void seen.push(asked));
    seen.forEach((n, i) => expect(n).toBeLessThanOrEqual(i + 2));
  });

  it('refuses a name ustar cannot hold (INTERNAL): over 100 bytes without a slash, or not ASCII', async () => {
    for (const name of ['x'.repeat(101), 'é']) {
      const err = await caught(() => packToBuffer([{ name, data: Buffer.alloc(1) }]));
      expect(err).toBeInstanceOf(CarryonError);
      expect((err as CarryonError).code).toBe('INTERNAL');
    }
  });
});

describe('writeEntriesChunked', () => {
  /** A sink that copies what it is given and finishes each write later (as a socket does). */
  function sink(): { out: Writable; bytes: () => Buffer; writes: Buffer[] } {
    const got: Buffer[] = [];
    const writes: Buffer[] = [];
    const out = new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, cb) {
        writes.push(chunk);
        got.push(Buffer.from(chunk));
        setImmediate(cb);
      },
    });
    return { out, bytes: () => Buffer.concat(got), writes };
  }

  it('writes the bytes packEntries (and tar-stream) make, in chunks of at most max, used again once written; a producer may reuse an entry\'s bytes', async () => {
    const rng = prng(909);
    const entries: TarEntry[] = [{ name: 'empty', data: Buffer.alloc(0) }];
    for (let i = 0; i < 120; i++) entries.push({ name: `b${i}`, data: randomBytes(rng, 20_000 + randInt(rng, 45_000)) });
    entries.splice(60, 0, { name: 'big', data: randomBytes(rng, 2 * MiB) });
    const want = await tarStreamBytes(entries);
    expect((await buffer(packEntries(entries))).equals(want)).toBe(true);
    // The producer hands out one buffer, refilled for each entry: only a copy taken before the next entry is asked for survives.
    const shared = Buffer.alloc(3 * MiB);
    async function* reused(): AsyncGenerator<TarEntry> {
      for (const e of entries) {
        e.data.copy(shared);
        yield { name: e.name, data: shared.subarray(0, e.data.length) };
        shared.fill(0xee);
      }
    }
    const s = sink();
    await writeEntriesChunked(s.out, reused(), 256 * 1024);
    expect(s.bytes().equals(want)).toBe(true);
    expect(s.out.writableFinished).toBe(true);
    // ~7.5 MiB went out through a few chunk buffers, not one new buffer per chunk.
    // Chunks of at most max, growing from 64 KiB; the entry larger than a chunk goes as its own buffer.
    expect(Math.max(...s.writes.map((w) => w.length).filter((n) => n !== 2 * MiB))).toBeLessThanOrEqual(256 * 1024);
    expect(s.writes[0]!.length).toBeLessThanOrEqual(64 * 1024);
    expect(s.writes.some((w) => w.length === 2 * MiB)).toBe(true);
    const distinct = new Set(s.writes.filter((w) => w.length <= 256 * 1024).map((w) => w.buffer));
    expect(s.writes.length).toBeGreaterThan(20);
    expect(distinct.size).toBeLessThan(8);
    const empty = sink();
    await writeEntriesChunked(empty.out, [], 256 * 1024);
    expect(empty.bytes().equals(await tarStreamBytes([]))).toBe(true);
  });

  it('stops with ERR_STREAM_PREMATURE_CLOSE when the stream closes first, and abandons the entries', async () => {
    const s = sink();
    let finished = false;
    let asked = 0;
    async function* endless(): AsyncGenerator<TarEntry> {
      try {
        for (;;) {
          asked++;
          if (asked === 50) s.out.destroy();
          yield { name: `b${asked}`, data: Buffer.alloc(60_000, asked) };
        }
      } finally {
        finished = true;
      }
    }
    const err = await caught(() => writeEntriesChunked(s.out, endless(), 256 * 1024));
    expect((err as NodeJS.ErrnoException).code).toBe('ERR_STREAM_PREMATURE_CLOSE');
    expect(finished).toBe(true);
    expect(asked).toBeLessThan(60);
  });
});

describe('unpackEntries: transient entries', () => {
  it('hands out views of the stream\'s chunks when transient, copies of small slices otherwise; the same bytes both ways', async () => {
    const rng = prng(506);
    const entries = Array.from({ length: 30 }, (_, i) => ({ name: `b${i}`, data: randomBytes(rng, 1 + randInt(rng, 20_000)) }));
    const packed = await packToBuffer(entries);
    for (const transient of [true, false]) {
      const views: boolean[] = [];
      const same: boolean[] = [];
      let i = 0;
      // 64 KiB chunks, as a socket delivers them: most entries lie inside one chunk, some span two.
      await unpackEntries(chunked(packed, 64 * 1024), MiB, (e) => {
        views.push(e.data.buffer.byteLength >= 64 * 1024 && e.data.length < 64 * 1024 && e.data.buffer.byteLength !== e.data.length);
        same.push(e.data.equals(entries[i++]!.data));
      }, { transient });
      expect(same.every(Boolean)).toBe(true);
      if (transient) expect(views.filter(Boolean).length).toBeGreaterThan(20);
      else expect(views.some(Boolean)).toBe(false);
    }
  });
});

describe('tar CLI interoperability', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await tempDir('carryon-tar-')));
  afterEach(async () => cleanup());

  it('writes archives the tar CLI lists and extracts', async () => {
    const entries = sampleEntries(503).slice(0, 20);
    const file = path.join(dir, 'out.tar');
    await fs.writeFile(file, await packToBuffer(entries));
    const list = spawnSync('tar', ['-tf', file]);
    expect(list.status, list.stderr.toString()).toBe(0);
    expect(list.stdout.toString().trim().split('\n')).toEqual(entries.map((e) => e.name));
    const x = path.join(dir, 'x');
    await fs.mkdir(x);
    expect(spawnSync('tar', ['-xf', file, '-C', x]).status).toBe(0);
    for (const e of entries) expect((await fs.readFile(path.join(x, e.name))).equals(e.data)).toBe(true);
  });

  it('reads regular files from an archive the tar CLI wrote', async () => {
    const src = path.join(dir, 'src');
    await fs.mkdir(src);
    const rng = prng(504);
    const files = Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, data: randomBytes(rng, 100 + i * 5000) }));
    for (const f of files) await fs.writeFile(path.join(src, f.name), f.data);
    const file = path.join(dir, 'cli.tar');
    expect(spawnSync('tar', ['-cf', file, '-C', src, ...files.map((f) => f.name)]).status).toBe(0);
    const { entries } = await unpackAll(Readable.from([await fs.readFile(file)]), MiB);
    expect(entries.map((e) => e.name)).toEqual(files.map((f) => f.name));
    entries.forEach((e, i) => expect(e.data.equals(files[i]!.data)).toBe(true));
  });

  it('rejects a directory and a symlink entry the tar CLI wrote with TAR_INVALID', async () => {
    const src = path.join(dir, 'src');
    await fs.mkdir(path.join(src, 'sub'), { recursive: true });
    await fs.writeFile(path.join(src, 'sub', 'f'), 'data');
    await fs.symlink('sub/f', path.join(src, 'link'));
    const dirTar = path.join(dir, 'dir.tar');
    const linkTar = path.join(dir, 'link.tar');
    expect(spawnSync('tar', ['-cf', dirTar, '-C', src, 'sub']).status).toBe(0);
    expect(spawnSync('tar', ['-cf', linkTar, '-C', src, 'link']).status).toBe(0);
    for (const t of [dirTar, linkTar]) {
      const tar = await fs.readFile(t);
      const calls: string[] = [];
      await expectCode(() => unpackEntries(Readable.from([tar]), MiB, (e) => void calls.push(e.name)), 'TAR_INVALID');
      expect(calls).toEqual([]);
    }
  });
});

describe('unpackEntries rejects bad streams', () => {
  const entries = [
    { name: 'a', data: Buffer.alloc(1000, 1) },
    { name: 'b', data: Buffer.alloc(3000, 2) },
  ];
  // Layout: header a @0, data a @512 (1000 -> 1024), header b @1536, data b @2048 (3000 -> 3072), end @5120, 2 zero blocks.

  it('a stream cut in the middle of an entry or a header: TAR_INVALID', async () => {
    const tar = await packToBuffer(entries);
    // [cut, the entries complete before the cut]
    const cuts: Array<[number, string[]]> = [
      [100, []], // inside header a
      [511, []],
      [513, []], // inside data a
      [1000, []],
      [1600, ['a']], // inside header b
      [2047, ['a']],
      [2049, ['a']], // inside data b
      [3548, ['a']],
      [5047, ['a']], // one byte short of b's data
    ];
    for (const [cut, complete] of cuts) {
      const calls: string[] = [];
      await expectCode(() => unpackEntries(chunked(tar.subarray(0, cut), 256), MiB, (e) => void calls.push(e.name)), 'TAR_INVALID');
      expect(calls, `cut at ${cut}`).toEqual(complete);
    }
  });

  it('a stream cut at an entry boundary, without the end-of-archive blocks: TAR_INVALID', async () => {
    const tar = await packToBuffer(entries);
    expect(tar.length).toBeGreaterThanOrEqual(5120 + 1024);
    for (const cut of [1536, 5120]) {
      await expectCode(() => unpackEntries(Readable.from([tar.subarray(0, cut)]), MiB, () => {}), 'TAR_INVALID');
    }
  });

  it('garbage bytes: TAR_INVALID', async () => {
    const rng = prng(505);
    for (const junk of [randomBytes(rng, 512), randomBytes(rng, 4096), Buffer.alloc(1024, 0x41)]) {
      await expectCode(() => unpackEntries(Readable.from([junk]), MiB, () => {}), 'TAR_INVALID');
    }
  });

  it('a header with a broken checksum: TAR_INVALID', async () => {
    const tar = await packToBuffer(entries);
    tar[1536 + 10] ^= 0x01; // inside entry b's name field
    await expectCode(() => unpackEntries(Readable.from([tar]), MiB, () => {}), 'TAR_INVALID');
  });

  it('an entry over the limit: PAYLOAD_TOO_LARGE, after the entries before it', async () => {
    const tar = await packToBuffer(entries);
    const calls: string[] = [];
    await expectCode(() => unpackEntries(Readable.from([tar]), 2999, (e) => void calls.push(e.name)), 'PAYLOAD_TOO_LARGE');
    expect(calls).toEqual(['a']);
  });

  it.each<[string, Record<string, unknown>]>([
    ['a directory', { name: 'dir/', type: 'directory' }],
    ['a symlink', { name: 'link', type: 'symlink', linkname: 'b/ok' }],
    ['a hard link', { name: 'hard', type: 'link', linkname: 'b/ok' }],
    ['a fifo', { name: 'fifo', type: 'fifo' }],
    ['a character device', { name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 }],
  ])('%s entry (tar-stream): TAR_INVALID', async (_what, header) => {
    const tar = await tarWith(header);
    const calls: string[] = [];
    await expectCode(() => unpackEntries(Readable.from([tar]), MiB, (e) => void calls.push(e.name)), 'TAR_INVALID');
    expect(calls).toEqual(['b/ok']);
  });

  it('stops reading at the first failure: the rest of the input stays unread', async () => {
    const tar = await packToBuffer(sampleEntries(506).slice(0, 30));
    const input = chunked(tar, 1000);
    await expectCode(() => unpackEntries(input, 10, () => {}), 'PAYLOAD_TOO_LARGE');
    expect(input.readableEnded).toBe(false);
    let left = 0;
    for await (const c of input) left += (c as Buffer).length;
    expect(left).toBeGreaterThan(tar.length - 4 * 1000); // a few chunks in flight at most
  });

  /** An endless stream: `head` first, then `fill` forever; counts what was read. */
  function endless(head: Buffer, fill: (n: number) => Buffer): { stream: Readable; read: () => number } {
    let read = 0;
    let sentHead = false;
    const stream = new Readable({
      read() {
        const c = sentHead ? fill(64 * 1024) : head;
        sentHead = true;
        read += c.length;
        this.push(c);
      },
    });
    return { stream, read: () => read };
  }

  it('endless random bytes after the entries: TAR_INVALID at the next header, without reading on', async () => {
    const good = await packToBuffer(entries);
    const rng = prng(507);
    const { stream, read } = endless(good.subarray(0, 5120), (n) => randomBytes(rng, n));
    const seen: string[] = [];
    await expectCode(() => unpackEntries(stream, MiB, (e) => void seen.push(e.name)), 'TAR_INVALID');
    expect(seen).toEqual(['a', 'b']);
    expect(read()).toBeLessThan(1024 * 1024);
  });

  it('endless zeros: the archive ends at its two zero blocks and the rest is not read', async () => {
    const good = await packToBuffer(entries);
    const { stream, read } = endless(good.subarray(0, 5120), (n) => Buffer.alloc(n));
    expect(await unpackEntries(stream, MiB, () => {})).toBe(2);
    expect(read()).toBeLessThan(1024 * 1024);
  });

  it('an endless stream of entries: PAYLOAD_TOO_LARGE at maxTotalBytes', async () => {
    const one = (await packToBuffer([{ name: 'x', data: Buffer.alloc(4096, 7) }])).subarray(0, 512 + 4096);
    const { stream, read } = endless(one, () => one);
    let n = 0;
    await expectCode(() => unpackEntries(stream, MiB, () => void n++, { maxTotalBytes: 4 * MiB }), 'PAYLOAD_TOO_LARGE');
    expect(n).toBeGreaterThan(900);
    expect(n).toBeLessThan(1024);
    expect(read()).toBeLessThan(5 * MiB);
  });

  it('a lone zero block followed by more data: TAR_INVALID', async () => {
    const good = await packToBuffer(entries);
    const bad = Buffer.concat([good.subarray(0, 5120), Buffer.alloc(512), good.subarray(0, 512)]);
    await expectCode(() => unpackEntries(Readable.from([bad]), MiB, () => {}), 'TAR_INVALID');
  });

  it('a size in base-256 or with junk digits: TAR_INVALID, checked before any byte is buffered', async () => {
    const good = await packToBuffer(entries);
    for (const field of [Buffer.from([0x80, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]), Buffer.from('0000000009x\0')]) {
      const bad = Buffer.from(good);
      field.copy(bad, 124);
      // a valid checksum, so only the size field is wrong
      Buffer.from('        ').copy(bad, 148);
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += bad[i]!;
      Buffer.from(`${sum.toString(8).padStart(6, '0')}\0 `).copy(bad, 148);
      await expectCode(() => unpackEntries(Readable.from([bad]), MiB, () => {}), 'TAR_INVALID');
    }
  });

  it('a CarryonError from the input stream passes through', async () => {
    const tar = await packToBuffer(entries);
    const input = new PassThrough();
    input.write(tar.subarray(0, 2000));
    const p = unpackEntries(input, MiB, () => {});
    const sent = new CarryonError('SERVER_UNREACHABLE', 'the connection dropped');
    setImmediate(() => input.destroy(sent));
    expect(await caught(() => p)).toBe(sent);
  });
});

describe('unpackEntries and errors from onEntry', () => {
  const entries = [
    { name: 'a', data: Buffer.alloc(10, 1) },
    { name: 'b', data: Buffer.alloc(10, 2) },
    { name: 'c', data: Buffer.alloc(10, 3) },
  ];

  it('passes a CarryonError thrown by onEntry through unchanged and stops', async () => {
    const tar = await packToBuffer(entries);
    const mine = new CarryonError('BLOCK_CORRUPT', 'entry b is bad', { name: 'b' });
    const seen: string[] = [];
    const err = await caught(() =>
      unpackEntries(Readable.from([tar]), MiB, (e) => {
        seen.push(e.name);
        if (e.name === 'b') throw mine;
      }),
    );
    expect(err).toBe(mine);
    expect(seen).toEqual(['a', 'b']);
  });

  it('passes a CarryonError from an async onEntry through unchanged', async () => {
    const tar = await packToBuffer(entries);
    const mine = new CarryonError('IO_ERROR', 'disk full');
    const err = await caught(() =>
      unpackEntries(Readable.from([tar]), MiB, async () => {
        await new Promise((r) => setImmediate(r));
        throw mine;
      }),
    );
    expect(err).toBe(mine);
  });

  it('passes a plain Error thrown by onEntry through unchanged (documented: errors from onEntry pass through)', async () => {
    const tar = await packToBuffer(entries);
    const mine = new RangeError('consumer bug');
    const err = await caught(() =>
      unpackEntries(Readable.from([tar]), MiB, () => {
        throw mine;
      }),
    );
    expect(err).toBe(mine);
  });
});
