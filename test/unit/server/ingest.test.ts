// The server's upload ingest (server/blocks.ts) on a real data folder (SQLite + FsBlockStore): each
// uploaded block is hashed once on its way in, and that one check is the gate: a block whose bytes are
// not its id, or a patch rebuilt from a damaged stored base, is refused and nothing of it is stored.
// Blocks sent as zstd frames (`z/<id>`) are decoded once, bounded before decoding, hashed once and stored
// exactly as sent; a bomb, a truncated or padded frame, or one of other bytes is refused.
import { createRequire } from 'node:module';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId, decodeVerified, encodeBlock, encodeBlockPatch, packEntries, uploadEntryName, type BlockStore, type TarEntry } from '../../../src/index.js';
import { BlockScope, ingestUpload, ManifestCache, publishImage, type LoadedManifest } from '../../../server/blocks.js';
import { initDataDir, openDataDir, type DataDir } from '../../../server/db.js';
import { Meta } from '../../../server/meta.js';
import { expectCode, prng, randomBytes, tempDir } from '../helpers.js';

const zstd = createRequire(import.meta.url)('zstd-napi') as typeof import('zstd-napi');

const BS = 64 * 1024;
const actor = { name: 'cli:test' };

let tmp: { dir: string; cleanup: () => Promise<void> };
let data: DataDir;
let meta: Meta;
let store: BlockStore;
let base: LoadedManifest;
let scope: BlockScope;
let image: Buffer;

beforeEach(async () => {
  tmp = await tempDir('carryon-ingest-');
  await initDataDir(path.join(tmp.dir, 'server'));
  data = await openDataDir(path.join(tmp.dir, 'server'));
  meta = new Meta(data.sql);
  store = data.store;
  await meta.addUser('alice', false, actor);
  const user = await meta.userByName('alice');
  image = randomBytes(prng(7), 4 * BS);
  const file = path.join(tmp.dir, 'v0.img');
  await fs.writeFile(file, image);
  const pub = await publishImage(meta, store, null, 'golden', file, BS, actor);
  base = await new ManifestCache(meta).get(pub.manifestId);
  scope = new BlockScope(meta, user.id, [base]);
});

afterEach(async () => {
  await store.close?.();
  await data.sql.close();
  await tmp.cleanup();
});

const upload = (entries: TarEntry[]) => ingestUpload(meta, store, null, base, scope, packEntries(entries));
const blockOf = (i: number): Buffer => image.subarray(i * BS, (i + 1) * BS);

describe('ingestUpload', () => {
  it('stores whole blocks and blocks rebuilt from patches, each readable and verified', async () => {
    const whole = randomBytes(prng(8), BS);
    const edited = Buffer.from(blockOf(1));
    edited.fill(0x5a, 1000, 3000);
    const r = await upload([
      { name: uploadEntryName({ kind: 'block', id: blockId(whole) }), data: whole },
      { name: uploadEntryName({ kind: 'patch', id: blockId(edited), base: base.manifest.idAt(1)! }), data: encodeBlockPatch(blockOf(1), edited) },
    ]);
    expect(r).toEqual({ stored: 2, alreadyHad: 0, plainBytes: 2 * BS, framesKept: 0 });
    expect(decodeVerified(blockId(whole), await store.getEncoded(blockId(whole))).equals(whole)).toBe(true);
    expect(decodeVerified(blockId(edited), await store.getEncoded(blockId(edited))).equals(edited)).toBe(true);
    expect(await meta.unindexed([blockId(whole), blockId(edited)])).toEqual([]);
  });

  it('refuses a block whose bytes are not its id, storing nothing of it', async () => {
    const sent = randomBytes(prng(9), BS);
    const claimed = blockId(randomBytes(prng(10), BS));
    await expectCode(() => upload([{ name: uploadEntryName({ kind: 'block', id: claimed }), data: sent }]), 'BLOCK_CORRUPT');
    expect(await store.has(claimed)).toBe(false);
    expect(await store.has(blockId(sent))).toBe(false);
    expect(await meta.unindexed([claimed])).toEqual([claimed]);
  });

  it('refuses a patch whose stored base is damaged: the rebuilt block fails its one check', async () => {
    const baseId = base.manifest.idAt(2)!;
    // The base's file now holds a valid frame of other bytes (bit rot that still decodes).
    const file = path.join(data.root, 'store', 'blocks', baseId.slice(0, 2), baseId);
    await fs.writeFile(file, encodeBlock(randomBytes(prng(11), BS)));
    const edited = Buffer.from(blockOf(2));
    edited.fill(0xa5, 0, 512);
    const id = blockId(edited);
    await expectCode(() => upload([{ name: uploadEntryName({ kind: 'patch', id, base: baseId }), data: encodeBlockPatch(blockOf(2), edited) }]), 'BLOCK_CORRUPT');
    expect(await store.has(id)).toBe(false);
    expect(await meta.unindexed([id])).toEqual([id]);
  });

  it('keeps the blocks verified before a refused one (a retry need not send them)', async () => {
    const good = randomBytes(prng(12), BS);
    const bad = randomBytes(prng(13), BS);
    await expectCode(() => upload([
      { name: uploadEntryName({ kind: 'block', id: blockId(good) }), data: good },
      { name: uploadEntryName({ kind: 'block', id: blockId(randomBytes(prng(14), 16)) }), data: bad },
    ]), 'BLOCK_CORRUPT');
    expect(decodeVerified(blockId(good), await store.getEncoded(blockId(good))).equals(good)).toBe(true);
    expect(await meta.unindexed([blockId(good)])).toEqual([]);
  });
});

describe('ingestUpload of zstd frames (z/<id>)', () => {
  /** A compressible block of real-looking bytes (text repeated with a counter). */
  const textBlock = (seed: number): Buffer => Buffer.from(Array.from({ length: 4000 }, (_, i) => `line ${seed}:${i} of a document\n`).join('')).subarray(0, BS);
  const frameEntry = (id: string, frame: Buffer): TarEntry => ({ name: uploadEntryName({ kind: 'frame', id }), data: frame });
  /** Nothing of `id` reached the store or the index. */
  const expectAbsent = async (id: string): Promise<void> => {
    expect(await store.has(id)).toBe(false);
    expect(await meta.unindexed([id])).toEqual([id]);
  };

  it('stores a good frame exactly as sent (no second compression), indexed and readable', async () => {
    const plain = textBlock(1);
    const id = blockId(plain);
    // Level 19: not what the server would make (level 3), so "as sent" is visible in the stored bytes.
    const frame = encodeBlock(plain, 19);
    expect(frame.equals(encodeBlock(plain))).toBe(false);
    const r = await upload([frameEntry(id, frame)]);
    expect(r).toEqual({ stored: 1, alreadyHad: 0, plainBytes: BS, framesKept: 1 });
    expect((await store.getEncoded(id)).equals(frame)).toBe(true);
    expect(decodeVerified(id, await store.getEncoded(id)).equals(plain)).toBe(true);
    expect(await meta.unindexed([id])).toEqual([]);
  });

  it('takes frames, plaintext blocks and patches in one upload', async () => {
    const a = textBlock(2);
    const b = randomBytes(prng(20), BS);
    const edited = Buffer.from(blockOf(3));
    edited.fill(0x11, 100, 900);
    const r = await upload([
      frameEntry(blockId(a), encodeBlock(a, 6)),
      { name: uploadEntryName({ kind: 'block', id: blockId(b) }), data: b },
      { name: uploadEntryName({ kind: 'patch', id: blockId(edited), base: base.manifest.idAt(3)! }), data: encodeBlockPatch(blockOf(3), edited) },
    ]);
    expect(r).toEqual({ stored: 3, alreadyHad: 0, plainBytes: 3 * BS, framesKept: 1 });
    for (const p of [a, b, edited]) expect(decodeVerified(blockId(p), await store.getEncoded(blockId(p))).equals(p)).toBe(true);
  });

  it('refuses a frame of other bytes than its id (BLOCK_CORRUPT), storing nothing of it', async () => {
    const plain = textBlock(3);
    const claimed = blockId(textBlock(4));
    await expectCode(() => upload([frameEntry(claimed, encodeBlock(plain))]), 'BLOCK_CORRUPT');
    await expectAbsent(claimed);
    await expectAbsent(blockId(plain));
  });

  it('refuses a frame whose content is larger than the block size, before decoding it', async () => {
    const plain = Buffer.concat([textBlock(5), textBlock(6)]); // 2 blocks' worth
    const id = blockId(plain);
    await expectCode(() => upload([frameEntry(id, encodeBlock(plain))]), 'BLOCK_CORRUPT');
    await expectAbsent(id);
  });

  it('refuses an entry larger than any frame of one block can be (padding)', async () => {
    const plain = randomBytes(prng(21), BS);
    const id = blockId(plain);
    const frame = encodeBlock(plain);
    // A skippable frame after the block's frame: ZSTD_decompress would skip it, the store would keep it.
    const skip = Buffer.alloc(8 + 200_000);
    skip.writeUInt32LE(0x184d2a50, 0);
    skip.writeUInt32LE(200_000, 4);
    await expectCode(() => upload([frameEntry(id, Buffer.concat([frame, skip]))]), 'BLOCK_CORRUPT');
    await expectAbsent(id);
  });

  it('refuses a frame followed by anything (a small skippable frame, a second frame)', async () => {
    const plain = textBlock(7);
    const id = blockId(plain);
    const frame = encodeBlock(plain);
    const skip = Buffer.alloc(16);
    skip.writeUInt32LE(0x184d2a50, 0);
    skip.writeUInt32LE(8, 4);
    await expectCode(() => upload([frameEntry(id, Buffer.concat([frame, skip]))]), 'BLOCK_CORRUPT');
    await expectCode(() => upload([frameEntry(id, Buffer.concat([frame, encodeBlock(Buffer.alloc(0))]))]), 'BLOCK_CORRUPT');
    await expectAbsent(id);
  });

  it('refuses a zstd bomb: 256 MiB of zeros in a ~8 KB frame, by its header, and the server goes on', async () => {
    const bomb = encodeBlock(Buffer.alloc(256 * 1024 * 1024), 1);
    expect(bomb.length).toBeLessThan(64 * 1024);
    const id = blockId(Buffer.alloc(BS));
    await expectCode(() => upload([frameEntry(id, bomb)]), 'BLOCK_CORRUPT');
    await expectAbsent(id);
    // Without a content size in its header (a streamed frame) it is refused too: the size is not bounded.
    const stream = new zstd.CompressStream({ compressionLevel: 1 });
    const parts: Buffer[] = [];
    stream.on('data', (d: Buffer) => parts.push(d));
    await new Promise<void>((resolve, reject) => stream.end(Buffer.alloc(BS), () => resolve()).on('error', reject));
    await new Promise((r) => setImmediate(r));
    const unsized = Buffer.concat(parts);
    expect(unsized.length).toBeGreaterThan(0);
    await expectCode(() => upload([frameEntry(id, unsized)]), 'BLOCK_CORRUPT');
    await expectAbsent(id);
    // The next upload is taken as usual.
    const plain = textBlock(8);
    expect((await upload([frameEntry(blockId(plain), encodeBlock(plain))])).framesKept).toBe(1);
  });

  it('refuses a frame whose header claims less than it inflates to', async () => {
    const plain = Buffer.alloc(2 * BS, 0x61);
    const frame = encodeBlock(plain);
    // Frame header: magic (4), descriptor (1); single-segment frames carry no window byte; a 4-byte
    // content size (descriptor bits 7-6 = 2) follows. Claim one block instead of two.
    const fhd = frame[4]!;
    expect(fhd >> 6).toBe(2);
    expect((fhd >> 5) & 1).toBe(1);
    const lying = Buffer.from(frame);
    lying.writeUInt32LE(BS, 5);
    const id = blockId(plain.subarray(0, BS));
    await expectCode(() => upload([frameEntry(id, lying)]), 'BLOCK_CORRUPT');
    await expectAbsent(id);
  });

  it('counts the blocks frames and patches make against the request budget (PAYLOAD_TOO_LARGE past it)', async () => {
    // Tiny frames inflate 64 KiB each: without a budget on what they make, a 1 GiB tar of them would
    // have the server decode and hash ~64 GiB. The blocks before the limit stay (valid, not re-sent).
    const blocks = [textBlock(31), textBlock(32), textBlock(33)];
    const small = blocks.map((p) => encodeBlock(p, 19));
    for (const f of small) expect(f.length).toBeLessThan(BS / 8);
    await expectCode(() => ingestUpload(meta, store, null, base, scope, packEntries(blocks.map((p, k) => frameEntry(blockId(p), small[k]!))), 2 * BS), 'PAYLOAD_TOO_LARGE');
    expect(await store.has(blockId(blocks[0]!))).toBe(true);
    expect(await store.has(blockId(blocks[1]!))).toBe(true);
    await expectAbsent(blockId(blocks[2]!));
  });

  it('refuses a truncated frame and bytes that are not zstd at all', async () => {
    const plain = textBlock(9);
    const id = blockId(plain);
    const frame = encodeBlock(plain);
    await expectCode(() => upload([frameEntry(id, frame.subarray(0, frame.length - 7))]), 'BLOCK_CORRUPT');
    await expectCode(() => upload([frameEntry(id, frame.subarray(0, 3))]), 'BLOCK_CORRUPT');
    await expectCode(() => upload([frameEntry(id, plain)]), 'BLOCK_CORRUPT'); // plaintext named as a frame
    await expectAbsent(id);
  });
});

describe('publishImage', () => {
  it('stores every data block of the image once, each verified against its id', async () => {
    for (let i = 0; i < 4; i++) {
      const id = base.manifest.idAt(i)!;
      expect(id).toBe(blockId(blockOf(i)));
      expect(decodeVerified(id, await store.getEncoded(id)).equals(blockOf(i))).toBe(true);
    }
  });
});
