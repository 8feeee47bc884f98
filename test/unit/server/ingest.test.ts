// The server's upload ingest (server/blocks.ts) on a real data folder (SQLite + FsBlockStore): each
// uploaded block is hashed once on its way in, and that one check is the gate: a block whose bytes are
// not its id, or a patch rebuilt from a damaged stored base, is refused and nothing of it is stored.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId, decodeVerified, encodeBlock, encodeBlockPatch, packEntries, uploadEntryName, type BlockStore, type TarEntry } from '../../../src/index.js';
import { BlockScope, ingestUpload, ManifestCache, publishImage, type LoadedManifest } from '../../../server/blocks.js';
import { initDataDir, openDataDir, type DataDir } from '../../../server/db.js';
import { Meta } from '../../../server/meta.js';
import { expectCode, prng, randomBytes, tempDir } from '../helpers.js';

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
    expect(r).toEqual({ stored: 2, alreadyHad: 0, plainBytes: 2 * BS });
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

describe('publishImage', () => {
  it('stores every data block of the image once, each verified against its id', async () => {
    for (let i = 0; i < 4; i++) {
      const id = base.manifest.idAt(i)!;
      expect(id).toBe(blockId(blockOf(i)));
      expect(decodeVerified(id, await store.getEncoded(id)).equals(blockOf(i))).toBe(true);
    }
  });
});
