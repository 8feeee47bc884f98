// The verified helpers over any BlockStore (src/store/verify.ts). The backends themselves are covered by
// test/conformance/.
import { describe, expect, it } from 'vitest';
import { blockId, checkPut, decodeBlock, encodeBlock, getBlock, MemoryBlockStore, putBlock } from '../../src/index.js';
import { expectCode, prng, randomBytes, textBytes } from './helpers.js';

describe('checkPut', () => {
  const plain = textBytes(prng(601), 10_000);
  const id = blockId(plain);
  const encoded = encodeBlock(plain);

  it('passes a block whose plaintext hashes to its id, with or without plain', () => {
    expect(() => checkPut(id, encoded)).not.toThrow();
    expect(() => checkPut(id, encoded, plain)).not.toThrow();
  });

  it('fails with BLOCK_CORRUPT for other plaintext, with or without plain', async () => {
    const other = randomBytes(prng(602), 10_000);
    await expectCode(() => checkPut(id, encodeBlock(other)), 'BLOCK_CORRUPT');
    await expectCode(() => checkPut(id, encodeBlock(other), other), 'BLOCK_CORRUPT');
    await expectCode(() => checkPut(id, Buffer.from('junk')), 'BLOCK_CORRUPT');
  });

  it('fails with BAD_REQUEST for a malformed id', async () => {
    await expectCode(() => checkPut(id.toUpperCase(), encoded, plain), 'BAD_REQUEST');
    await expectCode(() => checkPut('', encoded), 'BAD_REQUEST');
  });
});

describe('putBlock / getBlock', () => {
  it('putBlock encodes, stores and returns the id; getBlock returns verified plaintext', async () => {
    const store = new MemoryBlockStore();
    const plain = textBytes(prng(603), 65536);
    const { id, encoded } = await putBlock(store, plain);
    expect(id).toBe(blockId(plain));
    expect((await store.getEncoded(id)).equals(encoded)).toBe(true);
    expect((await getBlock(store, id)).equals(plain)).toBe(true);
    // The level argument reaches the encoder: level 1 and level 19 frames differ and both decode.
    const { encoded: fast } = await putBlock(new MemoryBlockStore(), plain, 1);
    const { encoded: small } = await putBlock(new MemoryBlockStore(), plain, 19);
    expect(fast.equals(small)).toBe(false);
    expect(decodeBlock(fast).equals(plain)).toBe(true);
    expect(decodeBlock(small).equals(plain)).toBe(true);
  });

  it('getBlock enforces maxBytes with BLOCK_CORRUPT', async () => {
    const store = new MemoryBlockStore();
    const plain = randomBytes(prng(604), 5000);
    const { id } = await putBlock(store, plain);
    expect((await getBlock(store, id, 5000)).equals(plain)).toBe(true);
    await expectCode(() => getBlock(store, id, 4999), 'BLOCK_CORRUPT');
  });

  it('getBlock fails with BLOCK_NOT_FOUND for a missing id', async () => {
    await expectCode(() => getBlock(new MemoryBlockStore(), blockId(Buffer.from('none'))), 'BLOCK_NOT_FOUND');
  });
});
