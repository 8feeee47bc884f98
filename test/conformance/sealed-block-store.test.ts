// The sealed cache of an encrypted copy passes the same contract, and what it writes reveals neither
// the blocks' bytes nor their ids.
import { promises as fs, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId, CarryonError, encodeBlock, getBlock, newDataKey, PackBlockStore, SealedBlockStore } from '../../src/index.js';
import { prng, randomBytes } from '../unit/helpers.js';
import { runBlockStoreConformance } from './block-store.js';

async function tempRoot(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-sealed-store-'));
  return { dir, cleanup: () => fs.rm(dir, { recursive: true, force: true }) };
}

runBlockStoreConformance('SealedBlockStore over PackBlockStore', async () => {
  const { dir, cleanup } = await tempRoot();
  return { store: new SealedBlockStore(new PackBlockStore(path.join(dir, 'store'), { opaque: true }), newDataKey()), cleanup };
});

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

describe('SealedBlockStore on disk', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ dir, cleanup } = await tempRoot()));
  afterEach(async () => cleanup());

  it('writes no plaintext sample and no block id; the same key reads it back, another key does not', async () => {
    const rng = prng(9);
    const blocks = Array.from({ length: 20 }, () => randomBytes(rng, 8192));
    const key = newDataKey();
    const one = new SealedBlockStore(new PackBlockStore(dir, { opaque: true }), key);
    // level 0 frames of random data hold the plaintext verbatim: only the seal can hide it
    for (const b of blocks) await one.put(blockId(b), encodeBlock(b, 1), b);
    await one.close();
    const bytes = Buffer.concat(filesUnder(dir).map((f) => readFileSync(f)));
    for (const b of blocks) {
      expect(bytes.includes(b.subarray(1000, 1064))).toBe(false);
      expect(bytes.includes(Buffer.from(blockId(b), 'hex'))).toBe(false);
      expect(bytes.includes(Buffer.from(blockId(b)))).toBe(false);
    }
    const two = new SealedBlockStore(new PackBlockStore(dir, { opaque: true }), key);
    for (const b of blocks) expect((await getBlock(two, blockId(b))).equals(b)).toBe(true);
    await two.close();
    const other = new SealedBlockStore(new PackBlockStore(dir, { opaque: true }), newDataKey());
    expect(await other.has(blockId(blocks[0]!))).toBe(false);
    await other.close();
    // the raw entries, read with the right names but another key, do not open
    const raw = new PackBlockStore(dir, { opaque: true });
    const names: string[] = [];
    for await (const n of raw.list()) names.push(n);
    expect(names.length).toBe(blocks.length);
    const wrong = new SealedBlockStore(raw, newDataKey());
    await expect((wrong as unknown as { open(n: string): Promise<unknown> }).open(names[0]!)).rejects.toThrow(CarryonError);
    await raw.close();
  });
});
