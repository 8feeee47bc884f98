import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  blockId,
  CarryonError,
  CheapHasher,
  decodeCheap,
  DiskManifest,
  encodeCheap,
  scanImage,
  verifyPlain,
  type BlockId,
  type ScanResult,
} from '../../src/index.js';
import { caught, expectCode, prng, randomBytes, tempDir } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 64 * KiB;
// 9 MiB + 5000 bytes: 145 blocks, the last one short, crossing the scanner's 8 MiB read chunk.
const SIZE = 9 * MiB + 5000;
const COUNT = Math.ceil(SIZE / BS);
const DATA_BLOCKS = [0, 1, 2, 7, 50, 60, 61, 100, 127, 128, 129, 144];

let dir: string;
let cleanup: () => Promise<void>;
let file: string;
beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('carryon-disk-'));
  file = path.join(dir, 'disk.img');
});
afterEach(async () => cleanup());

/** A sparse image: data in DATA_BLOCKS, holes elsewhere; blocks 60 and 61 are equal; block 50 has one non-zero byte. */
async function makeImage(): Promise<void> {
  const rng = prng(401);
  const fh = await fs.open(file, 'w');
  try {
    await fh.truncate(SIZE);
    const same = randomBytes(rng, BS);
    for (const i of DATA_BLOCKS) {
      const len = Math.min(BS, SIZE - i * BS);
      let data: Buffer;
      if (i === 60 || i === 61) data = same;
      else if (i === 50) {
        data = Buffer.alloc(len);
        data[len - 1] = 1;
      } else data = randomBytes(rng, len);
      await fh.write(data, 0, len, i * BS);
    }
  } finally {
    await fh.close();
  }
}

async function writeAt(pos: number, data: Buffer): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    await fh.write(data, 0, data.length, pos);
  } finally {
    await fh.close();
  }
}

/** Expected ids, computed independently from the file's bytes: SHA-256 per block, null for all-zero blocks. */
async function expectedIds(blockSize = BS): Promise<Array<BlockId | null>> {
  const all = await fs.readFile(file);
  const out: Array<BlockId | null> = [];
  for (let off = 0; off < all.length; off += blockSize) {
    const b = all.subarray(off, Math.min(off + blockSize, all.length));
    out.push(b.every((x) => x === 0) ? null : createHash('sha256').update(b).digest('hex'));
  }
  return out;
}

function idsOf(m: DiskManifest): Array<BlockId | null> {
  return Array.from({ length: m.count }, (_, i) => m.idAt(i));
}

describe('scanImage without a previous scan', () => {
  it('gives the SHA-256 of every block, holes where the block is zero, and every data block as changed', async () => {
    await makeImage();
    const calls: Array<[number, BlockId, boolean]> = [];
    const progress: number[] = [];
    const r = await scanImage(file, {
      blockSize: BS,
      onChanged: (i, id, plain) => {
        calls.push([i, id, blockId(plain) === id && plain.length === Math.min(BS, SIZE - i * BS)]);
      },
      onProgress: (done, total) => {
        expect(total).toBe(SIZE);
        progress.push(done);
      },
    });
    const want = await expectedIds();
    expect(r.manifest.size).toBe(SIZE);
    expect(r.manifest.blockSize).toBe(BS);
    expect(r.manifest.count).toBe(COUNT);
    expect(idsOf(r.manifest)).toEqual(want);
    expect(want.filter((x) => x !== null).length).toBe(DATA_BLOCKS.length);
    expect(r.manifest.idAt(60)).toBe(r.manifest.idAt(61));
    expect(r.manifest.uniqueIds().length).toBe(DATA_BLOCKS.length - 1);
    expect(r.manifest.lengthOf(COUNT - 1)).toBe(5000);
    expect(r.changed).toEqual(DATA_BLOCKS);
    expect(calls.map((c) => c[0])).toEqual(DATA_BLOCKS);
    for (const [i, id, ok] of calls) {
      expect(ok).toBe(true);
      expect(id).toBe(want[i]);
    }
    // With the sparse addon only the data blocks are read (test/unit/disk-sparse.test.ts); without it, all.
    expect(r.bytesRead).toBe(r.holes === 'seek-data' ? DATA_BLOCKS.reduce((n, i) => n + Math.min(BS, SIZE - i * BS), 0) : SIZE);
    expect(r.cheap.length).toBe(COUNT);
    expect(progress.at(-1)).toBe(SIZE);
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);
  });

  it('fills the cheap table with CheapHasher hashes of each block', async () => {
    await makeImage();
    const r = await scanImage(file, { blockSize: BS });
    const all = await fs.readFile(file);
    const h = new CheapHasher();
    for (let i = 0; i < COUNT; i++) expect(r.cheap[i]).toBe(h.hash(all.subarray(i * BS, Math.min((i + 1) * BS, SIZE))));
  });

  it('works with 4 KiB and 4 MiB blocks on a non-multiple size', async () => {
    await makeImage();
    for (const blockSize of [4 * KiB, 4 * MiB]) {
      const r = await scanImage(file, { blockSize });
      expect(idsOf(r.manifest)).toEqual(await expectedIds(blockSize));
    }
  });

  it('scans an empty image to an empty manifest', async () => {
    await fs.writeFile(file, '');
    const r = await scanImage(file, { blockSize: BS, onChanged: () => { throw new Error('no blocks to report'); } });
    expect(r.manifest.count).toBe(0);
    expect(r.manifest.size).toBe(0);
    expect(r.changed).toEqual([]);
    expect(r.bytesRead).toBe(0);
  });

  it('gives an all-hole manifest for a fully sparse image', async () => {
    await fs.writeFile(file, '');
    await fs.truncate(file, 3 * MiB + 1);
    const r = await scanImage(file, { blockSize: BS });
    expect(r.manifest.uniqueIds()).toEqual([]);
    expect(r.changed).toEqual([]);
  });

  it('rejects a bad block size with INVALID_ARGUMENT and a missing file with an fs error', async () => {
    await makeImage();
    await expectCode(() => scanImage(file, { blockSize: 5000 }), 'INVALID_ARGUMENT');
    const err = await caught(() => scanImage(path.join(dir, 'missing.img'), { blockSize: BS }));
    expect((err as NodeJS.ErrnoException).code).toBe('ENOENT');
  });
});

describe('scanImage and the verified-plaintext memo', () => {
  it('vouches for a block only while onChanged runs: a view kept past it is checked again once its buffer is reused', async () => {
    // Three reads (data in three 8 MiB chunks; holes between them may be skipped): the first read
    // buffer is filled again by the third.
    const rng = prng(402);
    const fh = await fs.open(file, 'w');
    const first = randomBytes(rng, BS);
    try {
      await fh.truncate(17 * MiB);
      await fh.write(first, 0, BS, 0);
      await fh.write(randomBytes(rng, BS), 0, BS, 8 * MiB);
      await fh.write(randomBytes(rng, BS), 0, BS, 16 * MiB);
    } finally {
      await fh.close();
    }
    const kept: Array<{ id: BlockId; plain: Buffer; checkedDuring: boolean }> = [];
    await scanImage(file, {
      blockSize: BS,
      onChanged: (_i, id, plain) => {
        let checkedDuring = true;
        try {
          verifyPlain(id, plain);
        } catch {
          checkedDuring = false;
        }
        kept.push({ id, plain, checkedDuring });
      },
    });
    expect(kept.map((k) => k.checkedDuring)).toEqual([true, true, true]);
    expect(kept[0]!.id).toBe(blockId(first));
    // The view of block 0 now shows other bytes (block 256's): the old id must not pass on the memo.
    expect(kept[0]!.plain.equals(first)).toBe(false);
    await expectCode(() => verifyPlain(kept[0]!.id, kept[0]!.plain), 'BLOCK_CORRUPT');
  });
});

describe('scanImage with a previous scan', () => {
  async function first(): Promise<ScanResult> {
    await makeImage();
    return scanImage(file, { blockSize: BS });
  }

  it('reports nothing changed when nothing changed', async () => {
    const prev = await first();
    const calls: number[] = [];
    const r = await scanImage(file, { blockSize: BS, previous: prev, onChanged: (i) => void calls.push(i) });
    expect(r.changed).toEqual([]);
    expect(calls).toEqual([]);
    expect(r.manifest.ids.equals(prev.manifest.ids)).toBe(true);
  });

  it('reports exactly the modified blocks, a zeroed block (now a hole) and a filled hole; onChanged only for data', async () => {
    const prev = await first();
    const rng = prng(402);
    await writeAt(1 * BS + 100, Buffer.from('a few changed bytes'));
    await writeAt(128 * BS, randomBytes(rng, 3)); // first block of the second read chunk
    const last129 = (await fs.readFile(file))[129 * BS + BS - 1]!;
    await writeAt(129 * BS + BS - 1, Buffer.from([last129 ^ 0xff])); // last byte of a block
    await writeAt(144 * BS + 4999, Buffer.from([0x99])); // last byte of the short last block
    await writeAt(7 * BS, Buffer.alloc(BS)); // data -> hole
    await writeAt(20 * BS + 4096, randomBytes(rng, 512)); // hole -> data
    // Rewritten with the same bytes: not a change.
    const same = (await fs.readFile(file)).subarray(100 * BS, 101 * BS);
    await writeAt(100 * BS, Buffer.from(same));
    // Block 0 changed and changed back: not a change.
    const orig0 = (await fs.readFile(file)).subarray(0, 10);
    await writeAt(0, Buffer.alloc(10, 0xee));
    await writeAt(0, Buffer.from(orig0));

    const calls: Array<[number, BlockId, boolean]> = [];
    const r = await scanImage(file, {
      blockSize: BS,
      previous: { manifest: prev.manifest, cheap: prev.cheap },
      onChanged: (i, id, plain) => void calls.push([i, id, blockId(plain) === id]),
    });
    expect(r.changed).toEqual([1, 7, 20, 128, 129, 144]);
    expect(calls.map((c) => c[0])).toEqual([1, 20, 128, 129, 144]);
    expect(calls.every((c) => c[2])).toBe(true);
    expect(r.manifest.isHole(7)).toBe(true);
    expect(idsOf(r.manifest)).toEqual(await expectedIds());
    // The same result a fresh scan gives.
    const fresh = await scanImage(file, { blockSize: BS });
    expect(r.manifest.ids.equals(fresh.manifest.ids)).toBe(true);
    expect([...r.cheap]).toEqual([...fresh.cheap]);
  });

  it('reports the old short last block and the new blocks when the image grows', async () => {
    const prev = await first();
    await fs.appendFile(file, randomBytes(prng(403), 2 * BS));
    const r = await scanImage(file, { blockSize: BS, previous: prev });
    expect(r.manifest.count).toBe(COUNT + 2);
    expect(r.changed).toEqual([COUNT - 1, COUNT, COUNT + 1]);
    expect(idsOf(r.manifest)).toEqual(await expectedIds());
  });

  it('treats every data block as changed when the previous scan used another block size', async () => {
    await makeImage();
    const prev = await scanImage(file, { blockSize: 4 * KiB });
    const r = await scanImage(file, { blockSize: BS, previous: prev });
    expect(r.changed).toEqual(DATA_BLOCKS);
  });

  it('passes an error from onChanged through and stops', async () => {
    const prev = await first();
    await writeAt(2 * BS, Buffer.from('x'));
    await writeAt(129 * BS, Buffer.from('y'));
    const boom = new Error('consumer failed');
    const seen: number[] = [];
    const err = await caught(() =>
      scanImage(file, {
        blockSize: BS,
        previous: prev,
        onChanged: (i) => {
          seen.push(i);
          throw boom;
        },
      }),
    );
    expect(err).toBe(boom);
    expect(seen).toEqual([2]);
  });

  it('fails with DISK_CHANGED when the image shrinks during the scan', async () => {
    await makeImage();
    let truncated = false;
    const err = await caught(() =>
      scanImage(file, {
        blockSize: BS,
        onChanged: async () => {
          if (!truncated) {
            truncated = true;
            await fs.truncate(file, 2 * BS);
          }
        },
      }),
    );
    expect(err).toBeInstanceOf(CarryonError);
    expect((err as CarryonError).code).toBe('DISK_CHANGED');
  });

  it('stops with the abort reason when the signal is aborted', async () => {
    await makeImage();
    const ac = new AbortController();
    const reason = new Error('user interrupted');
    ac.abort(reason);
    expect(await caught(() => scanImage(file, { blockSize: BS, signal: ac.signal }))).toBe(reason);
  });
});

describe('encodeCheap / decodeCheap', () => {
  it('round-trips a cheap table, including from an unaligned buffer', () => {
    const rng = prng(404);
    for (const n of [0, 1, 145, 1000]) {
      const cheap = new BigUint64Array(n);
      for (let i = 0; i < n; i++) cheap[i] = (BigInt(rng()) << 32n) | BigInt(rng());
      const enc = encodeCheap(cheap);
      expect(enc.length).toBe(8 * n);
      expect([...decodeCheap(enc)]).toEqual([...cheap]);
      const unaligned = Buffer.concat([Buffer.alloc(3), enc]).subarray(3);
      expect([...decodeCheap(unaligned)]).toEqual([...cheap]);
    }
  });

  it('round-trips the table of a real scan, and decodeCheap copies its input', async () => {
    await makeImage();
    const r = await scanImage(file, { blockSize: BS });
    const enc = Buffer.from(encodeCheap(r.cheap));
    const back = decodeCheap(enc);
    expect([...back]).toEqual([...r.cheap]);
    enc.fill(0);
    expect([...back]).toEqual([...r.cheap]);
    // A scan with the decoded table as previous sees no change.
    const again = await scanImage(file, { blockSize: BS, previous: { manifest: r.manifest, cheap: back } });
    expect(again.changed).toEqual([]);
  });
});
