// The BlockStore conformance suite: every backend and wrapper runs it with one call. Each test checks
// one MUST sentence of src/store/block-store.ts against a fresh store from `setup`. After each test the
// suite calls the store's optional close(), then the setup's cleanup (which should remove its files).
import { mulberry32u32 } from '../../scripts/lib/prng.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  blockId,
  CarryonError,
  encodeBlock,
  getBlock,
  putBlock,
  type BlockId,
  type BlockStore,
  type ErrorCode,
} from '../../src/index.js';

export type BlockStoreSetup = () => Promise<{ store: BlockStore; cleanup?: () => Promise<void> }>;

/** Deterministic bytes for test blocks (no Math.random). */
const prng = mulberry32u32;

function bytes(rng: () => number, n: number): Buffer {
  const out = Buffer.alloc(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) out.writeUInt32LE(rng(), i);
  for (; i < n; i++) out[i] = rng() & 0xff;
  return out;
}

interface Sample {
  id: BlockId;
  plain: Buffer;
  encoded: Buffer;
}

function sample(rng: () => number, n: number): Sample {
  const plain = bytes(rng, n);
  return { id: blockId(plain), plain, encoded: encodeBlock(plain) };
}

async function rejection(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a failure, but the call succeeded');
}

async function expectCode(fn: () => Promise<unknown>, code: ErrorCode): Promise<CarryonError> {
  const err = await rejection(fn);
  expect(err).toBeInstanceOf(CarryonError);
  expect((err as CarryonError).code).toBe(code);
  return err as CarryonError;
}

async function listAll(store: BlockStore): Promise<BlockId[]> {
  const out: BlockId[] = [];
  for await (const id of store.list()) out.push(id);
  return out;
}

export function runBlockStoreConformance(name: string, setup: BlockStoreSetup): void {
  describe(`BlockStore conformance: ${name}`, () => {
    let store: BlockStore;
    let cleanup: (() => Promise<void>) | undefined;

    beforeEach(async () => {
      ({ store, cleanup } = await setup());
    });
    afterEach(async () => {
      try {
        await store.close?.(); // stores holding files or handles release them (BlockStore.close)
      } finally {
        await cleanup?.();
        cleanup = undefined;
      }
    });

    it('put then getEncoded returns the bytes as stored, and getBlock decodes them to the plaintext', async () => {
      const rng = prng(1);
      for (const n of [0, 1, 1000, 65536, 65536 + 17]) {
        const s = sample(rng, n);
        await store.put(s.id, s.encoded);
        expect((await store.getEncoded(s.id)).equals(s.encoded)).toBe(true);
        expect((await getBlock(store, s.id)).equals(s.plain)).toBe(true);
      }
    });

    it('getEncodedMany (when the store has it) returns what getEncoded does, in order, repeats included; a missing id fails with BLOCK_NOT_FOUND', async () => {
      if (!store.getEncodedMany) return void expect(store.getEncodedMany).toBeUndefined();
      const rng = prng(21);
      // Sizes around the reads a store may batch: empty, small, a whole 64 KiB block, a 4 MiB one.
      const samples = [0, 1, 3000, 65536, 65536 + 17, 200_000, 4 * 1024 * 1024, 40_000].map((n) => sample(rng, n));
      for (const x of samples) await store.put(x.id, x.encoded, x.plain);
      const ids = [...samples.map((x) => x.id), samples[2]!.id, samples[0]!.id];
      const got = await store.getEncodedMany(ids);
      expect(got.length).toBe(ids.length);
      for (let i = 0; i < ids.length; i++) expect(got[i]!.equals(await store.getEncoded(ids[i]!)), `entry ${i}`).toBe(true);
      // Enough 64 KiB blocks to fill more than one of a backend's read buffers.
      const many = Array.from({ length: 200 }, () => sample(rng, 65536));
      for (const x of many) await store.put(x.id, x.encoded, x.plain);
      const back = await store.getEncodedMany(many.map((x) => x.id));
      back.forEach((b, i) => expect(b.equals(many[i]!.encoded), `block ${i}`).toBe(true));
      expect(await store.getEncodedMany([])).toEqual([]);
      const absent = sample(rng, 100).id;
      await expectCode(() => store.getEncodedMany!([samples[1]!.id, absent]), 'BLOCK_NOT_FOUND');
    });

    it('round-trips the largest block (4 MiB) and compressible blocks, with and without plain', async () => {
      const big = sample(prng(2), 4 * 1024 * 1024);
      await store.put(big.id, big.encoded, big.plain);
      expect((await getBlock(store, big.id)).equals(big.plain)).toBe(true);
      const text = Buffer.from('carryon block '.repeat(5000));
      const { id, encoded } = await putBlock(store, text);
      expect(id).toBe(blockId(text));
      expect(encoded.length).toBeLessThan(text.length);
      expect((await getBlock(store, id)).equals(text)).toBe(true);
    });

    it('put of an encoded block of other plaintext fails with BLOCK_CORRUPT and stores nothing (no plain)', async () => {
      const rng = prng(3);
      const a = sample(rng, 5000);
      const b = sample(rng, 5000);
      await expectCode(() => store.put(a.id, b.encoded), 'BLOCK_CORRUPT');
      expect(await store.has(a.id)).toBe(false);
      expect(await store.has(b.id)).toBe(false);
      expect(await store.size(a.id)).toBeNull();
      expect(await listAll(store)).toEqual([]);
      await expectCode(() => store.getEncoded(a.id), 'BLOCK_NOT_FOUND');
    });

    it('put of bytes that are not an encoded block fails with BLOCK_CORRUPT and stores nothing', async () => {
      const rng = prng(4);
      const a = sample(rng, 3000);
      for (const junk of [Buffer.alloc(0), bytes(rng, 100), a.plain, a.encoded.subarray(0, a.encoded.length - 3)]) {
        await expectCode(() => store.put(a.id, junk), 'BLOCK_CORRUPT');
        expect(await store.has(a.id)).toBe(false);
      }
      expect(await listAll(store)).toEqual([]);
    });

    it('put with a plain argument whose hash is not the id fails with BLOCK_CORRUPT and stores nothing', async () => {
      const rng = prng(5);
      const a = sample(rng, 4096);
      const b = sample(rng, 4096);
      await expectCode(() => store.put(a.id, b.encoded, b.plain), 'BLOCK_CORRUPT');
      const flipped = Buffer.from(a.plain);
      flipped[100] ^= 1;
      await expectCode(() => store.put(a.id, a.encoded, flipped), 'BLOCK_CORRUPT');
      expect(await store.has(a.id)).toBe(false);
      expect(await store.has(b.id)).toBe(false);
      expect(await listAll(store)).toEqual([]);
    });

    it('put of corrupt bytes under an id already stored fails with BLOCK_CORRUPT and keeps the stored block', async () => {
      const rng = prng(6);
      const a = sample(rng, 2048);
      const b = sample(rng, 2048);
      await store.put(a.id, a.encoded);
      await expectCode(() => store.put(a.id, b.encoded), 'BLOCK_CORRUPT');
      await expectCode(() => store.put(a.id, b.encoded, b.plain), 'BLOCK_CORRUPT');
      expect((await store.getEncoded(a.id)).equals(a.encoded)).toBe(true);
      expect((await getBlock(store, a.id)).equals(a.plain)).toBe(true);
    });

    it('put rejects a malformed id with a CarryonError and stores nothing', async () => {
      const a = sample(prng(7), 1024);
      const malformed = [a.id.toUpperCase(), a.id.slice(0, 63), `${a.id}0`, `../${a.id.slice(3)}`, `${a.id.slice(0, 2)}/${a.id.slice(3)}`, ''];
      for (const bad of malformed) {
        const err = await rejection(() => store.put(bad, a.encoded, a.plain));
        expect(err).toBeInstanceOf(CarryonError);
        expect(['BAD_REQUEST', 'INVALID_ARGUMENT', 'BLOCK_CORRUPT']).toContain((err as CarryonError).code);
        expect(await store.has(bad)).toBe(false);
      }
      expect(await listAll(store)).toEqual([]);
    });

    it('put is idempotent: a second put of a stored id succeeds and changes nothing', async () => {
      // Compressible plaintext, so that two compression levels give different frames.
      const rng = prng(8);
      const plain = Buffer.from(Array.from({ length: 3000 }, () => `w${rng() % 97} `).join(''));
      const a: Sample = { id: blockId(plain), plain, encoded: encodeBlock(plain, 1) };
      await store.put(a.id, a.encoded);
      await store.put(a.id, a.encoded);
      await store.put(a.id, a.encoded, a.plain);
      // Same plaintext, different encoding (another level): the stored bytes stay the first ones.
      const other = encodeBlock(a.plain, 19);
      expect(other.equals(a.encoded)).toBe(false);
      await store.put(a.id, other, a.plain);
      expect((await store.getEncoded(a.id)).equals(a.encoded)).toBe(true);
      expect(await store.size(a.id)).toBe(a.encoded.length);
      expect(await listAll(store)).toEqual([a.id]);
    });

    it('getEncoded and getBlock of a missing id fail with BLOCK_NOT_FOUND', async () => {
      const a = sample(prng(9), 100);
      await expectCode(() => store.getEncoded(a.id), 'BLOCK_NOT_FOUND');
      await expectCode(() => getBlock(store, a.id), 'BLOCK_NOT_FOUND');
      await store.put(a.id, a.encoded);
      await store.delete(a.id);
      await expectCode(() => store.getEncoded(a.id), 'BLOCK_NOT_FOUND');
      await expectCode(() => getBlock(store, a.id), 'BLOCK_NOT_FOUND');
    });

    it('has is true exactly for stored ids', async () => {
      const rng = prng(10);
      const stored = Array.from({ length: 20 }, () => sample(rng, 500));
      const absent = Array.from({ length: 20 }, () => sample(rng, 500));
      for (const s of stored) await store.put(s.id, s.encoded);
      for (const s of stored) expect(await store.has(s.id)).toBe(true);
      for (const s of absent) expect(await store.has(s.id)).toBe(false);
      expect(await store.has('not-an-id')).toBe(false);
      await store.delete(stored[0]!.id);
      expect(await store.has(stored[0]!.id)).toBe(false);
      expect(await store.has(stored[1]!.id)).toBe(true);
    });

    it('size returns the encoded size of a stored block and null for a missing one', async () => {
      const rng = prng(11);
      const a = sample(rng, 7777);
      const b = sample(rng, 10);
      await store.put(a.id, a.encoded);
      expect(await store.size(a.id)).toBe(a.encoded.length);
      expect(await store.size(b.id)).toBeNull();
      await store.delete(a.id);
      expect(await store.size(a.id)).toBeNull();
    });

    it('delete removes a block and is idempotent', async () => {
      const rng = prng(12);
      const a = sample(rng, 1234);
      const b = sample(rng, 1234);
      await store.put(a.id, a.encoded);
      await store.put(b.id, b.encoded);
      await store.delete(a.id);
      await store.delete(a.id);
      await store.delete(sample(rng, 5).id); // never stored
      expect(await store.has(a.id)).toBe(false);
      expect(await listAll(store)).toEqual([b.id]);
      expect((await getBlock(store, b.id)).equals(b.plain)).toBe(true);
      // A deleted id can be stored again.
      await store.put(a.id, a.encoded);
      expect((await getBlock(store, a.id)).equals(a.plain)).toBe(true);
    });

    it('list yields every stored id exactly once (300 blocks, some put twice, some deleted)', async () => {
      expect(await listAll(store)).toEqual([]);
      const rng = prng(13);
      const blocks = Array.from({ length: 300 }, (_, i) => sample(rng, 64 + (i % 50) * 7));
      for (const [i, s] of blocks.entries()) {
        await store.put(s.id, s.encoded);
        if (i % 7 === 0) await store.put(s.id, s.encoded, s.plain);
      }
      const listed = await listAll(store);
      expect(listed.length).toBe(300);
      expect(new Set(listed).size).toBe(300);
      expect([...listed].sort()).toEqual(blocks.map((s) => s.id).sort());
      for (const s of blocks.slice(0, 25)) await store.delete(s.id);
      const after = await listAll(store);
      expect(after.length).toBe(275);
      expect([...after].sort()).toEqual(blocks.slice(25).map((s) => s.id).sort());
    });

    it('sync resolves, and blocks stay readable after it', async () => {
      await store.sync();
      const a = sample(prng(14), 3333);
      await store.put(a.id, a.encoded);
      await expect(store.sync()).resolves.toBeUndefined();
      expect((await getBlock(store, a.id)).equals(a.plain)).toBe(true);
    });

    it('concurrent puts of the same id (8 at once) all succeed and leave one readable block', async () => {
      const a = sample(prng(15), 100_000);
      await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? store.put(a.id, a.encoded, a.plain) : store.put(a.id, a.encoded))));
      expect(await listAll(store)).toEqual([a.id]);
      expect(await store.size(a.id)).toBe(a.encoded.length);
      expect((await getBlock(store, a.id)).equals(a.plain)).toBe(true);
    });

    it('concurrent puts of different ids all land', async () => {
      const rng = prng(16);
      const blocks = Array.from({ length: 64 }, () => sample(rng, 2000));
      await Promise.all(blocks.map((s) => store.put(s.id, s.encoded)));
      expect((await listAll(store)).sort()).toEqual(blocks.map((s) => s.id).sort());
      for (const s of blocks) expect((await getBlock(store, s.id)).equals(s.plain)).toBe(true);
    });

    it("later changes to the caller's buffers do not change the stored block", async () => {
      const a = sample(prng(17), 4000);
      const encoded = Buffer.from(a.encoded);
      await store.put(a.id, encoded);
      encoded.fill(0);
      const got = await store.getEncoded(a.id);
      expect(got.equals(a.encoded)).toBe(true);
      got.fill(0xff);
      expect((await store.getEncoded(a.id)).equals(a.encoded)).toBe(true);
      expect((await getBlock(store, a.id)).equals(a.plain)).toBe(true);
    });
  });
}
