// The server's block answer (server/blocks.ts readAhead + writeEntriesChunked) on a real FsBlockStore:
// with scratch buffers reused across batches, every entry still carries its own block's bytes when the
// consumer copies it before asking for the next, the scratch goes back to its pool at the end (also when
// the answer is abandoned), and the tar written decodes to the blocks asked for.
import { PassThrough, Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId, BufferPool, decodeVerified, encodeBlock, FsBlockStore, unpackEntries, writeEntriesChunked, type BlockId, type TarEntry } from '../../../src/index.js';
import { readAhead, READ_AHEAD_SCRATCH } from '../../../server/blocks.js';
import { prng, randInt, randomBytes, tempDir } from '../helpers.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
let store: FsBlockStore;
const ids: BlockId[] = [];
const plains = new Map<BlockId, Buffer>();

beforeEach(async () => {
  tmp = await tempDir('carryon-answer-');
  store = new FsBlockStore(tmp.dir, { durability: 'batch' });
  const rng = prng(41);
  ids.length = 0;
  // 300 blocks: three read-ahead batches of 128 with the default window, so scratch buffers are reused.
  for (let i = 0; i < 300; i++) {
    const plain = randomBytes(rng, 1 + randInt(rng, 64 * 1024 - 1));
    if (i % 3 === 0) plain.fill(i & 0xff, 0, plain.length >> 1); // compressible ones too: frames of many sizes
    const id = blockId(plain);
    await store.put(id, encodeBlock(plain), plain);
    ids.push(id);
    plains.set(id, plain);
  }
  ids.push(ids[5]!, ids[200]!); // repeats
});

afterEach(async () => tmp.cleanup());

describe('readAhead with scratch (copies)', () => {
  it('every entry holds its own frame when copied before the next is asked for; the two scratch buffers go back to the pool', async () => {
    const pool = new BufferPool(READ_AHEAD_SCRATCH, 4);
    const taken: Buffer[] = [];
    const take = pool.take.bind(pool);
    pool.take = () => {
      const b = take();
      taken.push(b);
      return b;
    };
    const got: Array<{ name: string; data: Buffer }> = [];
    for await (const e of readAhead(store, ids, 16, { copies: pool })) got.push({ name: e.name, data: Buffer.from(e.data) });
    expect(got.map((e) => e.name)).toEqual(ids);
    for (const e of got) expect(decodeVerified(e.name as BlockId, e.data, plains.get(e.name as BlockId)!.length).equals(plains.get(e.name as BlockId)!)).toBe(true);
    expect(taken).toHaveLength(2);
    // Given back: the next answer takes the same two buffers.
    expect([pool.take(), pool.take()].every((b) => taken.includes(b))).toBe(true);
  });

  it('written with writeEntriesChunked: the tar holds every block asked for; an answer abandoned half-way gives its scratch back too', async () => {
    const pool = new BufferPool(READ_AHEAD_SCRATCH, 4);
    const chunks = new BufferPool(256 * 1024, 16);
    // A sink done with each chunk when it calls back, as a socket is (a PassThrough would still hold it).
    const parts: Buffer[] = [];
    const out = new Writable({ write: (c: Buffer, _e, cb) => void (parts.push(Buffer.from(c)), setImmediate(cb)) });
    await writeEntriesChunked(out, readAhead(store, ids, 16, { copies: pool }), 256 * 1024, chunks);
    const seen: TarEntry[] = [];
    await unpackEntries(new PassThrough().end(Buffer.concat(parts)), 1 << 20, (e) => void seen.push(e));
    expect(seen.map((e) => e.name)).toEqual(ids);
    for (const e of seen) expect(decodeVerified(e.name as BlockId, e.data, plains.get(e.name as BlockId)!.length).equals(plains.get(e.name as BlockId)!)).toBe(true);

    const first = pool.take();
    pool.give(first);
    const it = readAhead(store, ids, 16, { copies: pool });
    for (let i = 0; i < 150; i++) await it.next();
    await it.return(undefined);
    await new Promise((r) => setImmediate(r));
    expect([pool.take(), pool.take()]).toContain(first);
  });
});
