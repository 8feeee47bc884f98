import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId, encodeBlock, getBlock, openBlockStore, PackBlockStore } from '../../src/index.js';
import { prng, randomBytes } from '../unit/helpers.js';
import { runBlockStoreConformance } from './block-store.js';

async function tempRoot(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-pack-store-'));
  return { dir, cleanup: () => fs.rm(dir, { recursive: true, force: true }) };
}

// The suite closes the store after each test; cleanup removes the files.
runBlockStoreConformance('PackBlockStore', async () => {
  const { dir, cleanup } = await tempRoot();
  return { store: new PackBlockStore(path.join(dir, 'store')), cleanup };
});

describe('PackBlockStore on disk', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await tempRoot()));
  afterEach(async () => cleanup());

  it('a store reopened on the same root after close() lists and reads the blocks', async () => {
    const rng = prng(701);
    const blocks = Array.from({ length: 40 }, () => randomBytes(rng, 3000));
    const one = new PackBlockStore(dir);
    for (const b of blocks) await one.put(blockId(b), encodeBlock(b), b);
    await one.close();
    const two = new PackBlockStore(dir);
    try {
      const listed: string[] = [];
      for await (const id of two.list()) listed.push(id);
      expect(listed.sort()).toEqual(blocks.map((b) => blockId(b)).sort());
      for (const b of blocks) expect((await getBlock(two, blockId(b))).equals(b)).toBe(true);
    } finally {
      await two.close();
    }
  });

  it('openBlockStore opens pack:///path as a PackBlockStore rooted at that path', async () => {
    const store = openBlockStore(`pack://${dir}`);
    try {
      expect(store).toBeInstanceOf(PackBlockStore);
      expect((store as PackBlockStore).root).toBe(dir);
    } finally {
      await store.close?.();
    }
  });
});
