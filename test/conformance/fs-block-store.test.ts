import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  blockId,
  CarryonError,
  encodeBlock,
  FsBlockStore,
  getBlock,
  MemoryBlockStore,
  openBlockStore,
  type BlockStore,
} from '../../src/index.js';
import { caught, expectCode, prng, randomBytes } from '../unit/helpers.js';
import { runBlockStoreConformance } from './block-store.js';

async function tempRoot(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-fs-store-'));
  return { dir, cleanup: () => fs.rm(dir, { recursive: true, force: true }) };
}

for (const durability of ['fsync', 'batch'] as const) {
  runBlockStoreConformance(`FsBlockStore (${durability})`, async () => {
    const { dir, cleanup } = await tempRoot();
    // The root itself does not exist yet: the store creates what it needs.
    return { store: new FsBlockStore(path.join(dir, 'store'), { durability }), cleanup };
  });
}

async function listAll(store: BlockStore): Promise<string[]> {
  const out: string[] = [];
  for await (const id of store.list()) out.push(id);
  return out;
}

function sample(seed: number, n: number): { id: string; plain: Buffer; encoded: Buffer } {
  const plain = randomBytes(prng(seed), n);
  return { id: blockId(plain), plain, encoded: encodeBlock(plain) };
}

describe('FsBlockStore on disk', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  let store: FsBlockStore;
  beforeEach(async () => {
    ({ dir: root, cleanup } = await tempRoot());
    store = new FsBlockStore(root);
  });
  afterEach(async () => cleanup());

  it('keeps a block at ROOT/blocks/<first two hex>/<id> holding the encoded bytes', async () => {
    const a = sample(1, 5000);
    await store.put(a.id, a.encoded);
    const file = path.join(root, 'blocks', a.id.slice(0, 2), a.id);
    expect((await fs.readFile(file)).equals(a.encoded)).toBe(true);
    expect(await fs.readdir(path.join(root, 'tmp'))).toEqual([]);
  });

  it('does not list leftover files in ROOT/tmp, even ones named like a block id', async () => {
    const a = sample(2, 3000);
    const b = sample(3, 3000);
    await store.put(a.id, a.encoded);
    await fs.writeFile(path.join(root, 'tmp', `${b.id}.0123456789ab`), b.encoded);
    await fs.writeFile(path.join(root, 'tmp', b.id), b.encoded);
    expect(await listAll(store)).toEqual([a.id]);
    expect(await store.has(b.id)).toBe(false);
    await expectCode(() => store.getEncoded(b.id), 'BLOCK_NOT_FOUND');
    // A later put of that id still works.
    await store.put(b.id, b.encoded);
    expect((await getBlock(store, b.id)).equals(b.plain)).toBe(true);
  });

  it('does not list files in a shard that are not block ids of that shard', async () => {
    const a = sample(4, 3000);
    const b = sample(5, 3000);
    await store.put(a.id, a.encoded);
    const shard = path.join(root, 'blocks', a.id.slice(0, 2));
    await fs.writeFile(path.join(shard, `${a.id}.partial`), 'x');
    const wrongShard = b.id.slice(0, 2) === a.id.slice(0, 2) ? null : b.id;
    if (wrongShard) await fs.writeFile(path.join(shard, wrongShard), b.encoded);
    expect(await listAll(store)).toEqual([a.id]);
  });

  it('getBlock fails with BLOCK_CORRUPT, never wrong data, when a block file is damaged on disk', async () => {
    const a = sample(6, 64 * 1024);
    const other = sample(7, 64 * 1024);
    const file = path.join(root, 'blocks', a.id.slice(0, 2), a.id);
    const damages: Array<[string, (buf: Buffer) => Buffer]> = [
      ['flipped byte in the middle', (buf) => {
        const c = Buffer.from(buf);
        c[c.length >> 1] ^= 0x55;
        return c;
      }],
      ['overwritten run of bytes', (buf) => {
        const c = Buffer.from(buf);
        c.fill(0xab, 20, 60);
        return c;
      }],
      ['truncated file', (buf) => buf.subarray(0, buf.length - 100)],
      ['empty file', () => Buffer.alloc(0)],
      ['a valid frame of other plaintext', () => other.encoded],
    ];
    await store.put(a.id, a.encoded);
    for (const [what, damage] of damages) {
      await fs.writeFile(file, damage(a.encoded));
      const err = await caught(() => getBlock(store, a.id));
      expect(err, what).toBeInstanceOf(CarryonError);
      expect((err as CarryonError).code, what).toBe('BLOCK_CORRUPT');
    }
  });

  it('a block written by one store instance is read by another on the same root', async () => {
    const a = sample(8, 10000);
    await store.put(a.id, a.encoded);
    const again = new FsBlockStore(root, { durability: 'batch' });
    expect(await listAll(again)).toEqual([a.id]);
    expect((await getBlock(again, a.id)).equals(a.plain)).toBe(true);
  });
});

describe('openBlockStore registry', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await tempRoot()));
  afterEach(async () => cleanup());

  it('opens file:///path as an FsBlockStore rooted at that path', async () => {
    const store = openBlockStore(`file://${dir}`);
    expect(store).toBeInstanceOf(FsBlockStore);
    expect((store as FsBlockStore).root).toBe(dir);
    const a = sample(9, 2000);
    await store.put(a.id, a.encoded);
    const direct = new FsBlockStore(dir);
    expect((await getBlock(direct, a.id)).equals(a.plain)).toBe(true);
  });

  it('opens a bare path as an FsBlockStore', () => {
    const store = openBlockStore(path.join(dir, 'bare'));
    expect(store).toBeInstanceOf(FsBlockStore);
    expect((store as FsBlockStore).root).toBe(path.join(dir, 'bare'));
  });

  it('opens memory: as a fresh MemoryBlockStore each time', async () => {
    const one = openBlockStore('memory:');
    const two = openBlockStore('memory:');
    expect(one).toBeInstanceOf(MemoryBlockStore);
    expect(two).toBeInstanceOf(MemoryBlockStore);
    const a = sample(10, 100);
    await one.put(a.id, a.encoded);
    expect(await one.has(a.id)).toBe(true);
    expect(await two.has(a.id)).toBe(false);
  });

  it('rejects an unknown scheme with INVALID_ARGUMENT', async () => {
    for (const url of ['s3://bucket/prefix', 'http://example.com/blocks', 'ftp:x']) {
      await expectCode(() => openBlockStore(url), 'INVALID_ARGUMENT');
    }
  });
});
