// Full scans of sparse images by their data (native/sparse: lseek SEEK_DATA / SEEK_HOLE). The addon
// reports the data runs exactly as written with truncate + pwrite; a scan that skips holes gives the
// same manifest (byte for byte), cheap table and changed list as one that reads every byte, and as a
// scan of a dense copy of the image; and it reads only the blocks that hold data. The suite runs on the
// addon: a build without it fails here, unless CARRYON_SPARSE=read says it is meant.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadNativeSparse } from '../../src/disk/native-sparse.js';
import { defaultHoleMode, encodeCheap, encodeManifest, newDataKey, scanImage, SECTOR_BYTES, SectorCipher, subkey, type ScanOptions, type ScanResult } from '../../src/index.js';
import { expectCode, prng, randomBytes, tempDir } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 64 * KiB;

let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('carryon-sparse-'));
});
afterEach(async () => cleanup());

/** A sparse file of `size` bytes with `extents` [offset, bytes] written (truncate, then pwrite). */
async function sparseFile(file: string, size: number, extents: Array<[number, Buffer]>): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    await fh.truncate(size);
    for (const [at, data] of extents) await fh.write(data, 0, data.length, at);
  } finally {
    await fh.close();
  }
}

/** Every data run of the file, through the addon, asking `per` runs at a time. */
async function runsOf(file: string, per = 64): Promise<Array<[number, number]>> {
  const addon = loadNativeSparse().addon!;
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const out = new Float64Array(2 * per);
    const runs: Array<[number, number]> = [];
    for (let from = 0; ;) {
      const n = addon.dataRuns(fh.fd, from, size, out);
      for (let k = 0; k < n; k++) runs.push([out[2 * k]!, out[2 * k + 1]!]);
      if (n < per) return runs;
      from = runs.at(-1)![1];
    }
  } finally {
    await fh.close();
  }
}

/**
 * The image both kinds of scan must agree on, 41 MiB + 5000 bytes (a short last block): a 20 MiB data
 * run (over two 8 MiB read chunks), a 12 MiB hole (more than a chunk), 300 runs of 4-16 KiB every
 * 24 KiB (more than the 256 runs asked of the addon at once), data written as zeros (a data run that
 * reads as a hole), runs that start and end inside a block, and data in the last short block.
 */
async function makeImage(file: string, seed = 7): Promise<{ size: number; extents: Array<[number, Buffer]> }> {
  const rng = prng(seed);
  const size = 41 * MiB + 5000;
  const extents: Array<[number, Buffer]> = [];
  extents.push([0, randomBytes(rng, 20 * MiB)]);
  extents.push([20 * MiB + 4 * KiB, Buffer.alloc(8 * KiB)]); // written zeros: data to lseek, a hole to the manifest
  for (let k = 0; k < 300; k++) {
    const at = 32 * MiB + k * 24 * KiB + (k % 3) * 4 * KiB; // 4 KiB-aligned, often mid-block
    extents.push([at, randomBytes(rng, 4 * KiB * (1 + (k % 4)))]);
  }
  extents.push([size - 3000, randomBytes(rng, 3000)]);
  await sparseFile(file, size, extents);
  return { size, extents };
}

/** The bytes of the blocks (of `blockSize`) that some extent touches: what a scan by data reads. */
function touchedBytes(size: number, extents: Array<[number, Buffer]>, blockSize: number): { blocks: Set<number>; bytes: number } {
  const blocks = new Set<number>();
  for (const [at, d] of extents) for (let i = Math.floor(at / blockSize); i * blockSize < at + d.length; i++) blocks.add(i);
  return { blocks, bytes: [...blocks].reduce((n, i) => n + Math.min(blockSize, size - i * blockSize), 0) };
}

/** A dense copy: every byte written, zeros included. */
async function denseCopy(from: string, to: string): Promise<void> {
  await fs.writeFile(to, await fs.readFile(from));
}

function same(a: ScanResult, b: ScanResult): void {
  expect(encodeManifest(a.manifest).equals(encodeManifest(b.manifest))).toBe(true);
  expect(encodeCheap(a.cheap).equals(encodeCheap(b.cheap))).toBe(true);
  expect(a.changed).toEqual(b.changed);
}

describe('the sparse addon (native/sparse)', () => {
  it('is what full scans use here (CARRYON_SPARSE=read to run the suite reading holes on purpose)', () => {
    const { mode, detail } = defaultHoleMode();
    if (process.env.CARRYON_SPARSE === 'read') {
      expect(mode).toBe('read');
      return;
    }
    // A fallback must not pass silently: npm ci builds native/sparse; if it did not, this says why.
    expect(`${mode}: ${detail}`).toMatch(/^seek-data: .*carryon_sparse\.node$/);
  });
});

describe.skipIf(process.env.CARRYON_SPARSE === 'read')('data runs and scans by data', () => {
  it('reports the data runs exactly as written with truncate + pwrite, in batches', async () => {
    const file = path.join(dir, 'runs.img');
    const rng = prng(3);
    // 64 KiB-aligned extents (file systems allocate in blocks of at most that), one running to the end.
    const extents: Array<[number, Buffer]> = [[MiB, randomBytes(rng, 64 * KiB)], [5 * MiB, randomBytes(rng, 192 * KiB)], [9 * MiB, randomBytes(rng, 128 * KiB)], [16 * MiB - 64 * KiB, randomBytes(rng, 64 * KiB)]];
    await sparseFile(file, 16 * MiB, extents);
    const want = extents.map(([at, d]): [number, number] => [at, at + d.length]);
    expect(await runsOf(file)).toEqual(want);
    expect(await runsOf(file, 1)).toEqual(want); // one run per call, from where the last ended
    const addon = loadNativeSparse().addon!;
    const fh = await fs.open(file, 'r');
    try {
      const out = new Float64Array(8);
      // Clipped to [from, to): from inside a run, to inside another.
      expect(addon.dataRuns(fh.fd, MiB + 4 * KiB, 5 * MiB + 8 * KiB, out)).toBe(2);
      expect([...out.subarray(0, 4)]).toEqual([MiB + 4 * KiB, MiB + 64 * KiB, 5 * MiB, 5 * MiB + 8 * KiB]);
      // Only holes in range, and past the end: no runs.
      expect(addon.dataRuns(fh.fd, 2 * MiB, 5 * MiB, out)).toBe(0);
      expect(addon.dataRuns(fh.fd, 16 * MiB, 32 * MiB, out)).toBe(0);
      expect(() => addon.dataRuns(fh.fd, 5, 4, out)).toThrow(/from <= to/);
      expect(() => addon.dataRuns(fh.fd, 0, 4, new Float64Array(1))).toThrow(/Float64Array/);
    } finally {
      await fh.close();
    }
    const empty = path.join(dir, 'empty.img');
    await sparseFile(empty, 3 * MiB, []);
    expect(await runsOf(empty)).toEqual([]);
  });

  it('gives the same manifest, byte for byte, for a sparse image read by its data, read whole, and a dense copy', async () => {
    const sparse = path.join(dir, 'sparse.img');
    const dense = path.join(dir, 'dense.img');
    const { size, extents } = await makeImage(sparse);
    await denseCopy(sparse, dense);
    expect(await runsOf(dense)).toEqual([[0, size]]); // the copy really is dense
    for (const blockSize of [4 * KiB, BS, 4 * MiB]) {
      const seek = await scanImage(sparse, { blockSize, holes: 'seek-data' });
      const read = await scanImage(sparse, { blockSize, holes: 'read' });
      const denseSeek = await scanImage(dense, { blockSize, holes: 'seek-data' });
      const denseRead = await scanImage(dense, { blockSize, holes: 'read' });
      expect([seek.holes, read.holes, denseSeek.holes, denseRead.holes]).toEqual(['seek-data', 'read', 'seek-data', 'read']);
      same(seek, read);
      same(seek, denseSeek);
      same(seek, denseRead);
      expect(seek.manifest.uniqueIds().length).toBeGreaterThan(0);
      expect(read.bytesRead).toBe(size);
      expect(denseSeek.bytesRead).toBe(size);
      expect(seek.bytesRead).toBe(touchedBytes(size, extents, blockSize).bytes);
      expect(seek.bytesRead).toBeLessThan(size);
    }
  });

  it('reads exactly the blocks that meet a data run, and reports progress up to the size', async () => {
    const file = path.join(dir, 'sparse.img');
    const { size, extents } = await makeImage(file);
    const { blocks: touched, bytes: want } = touchedBytes(size, extents, BS);
    const progress: number[] = [];
    const changed: number[] = [];
    const r = await scanImage(file, { blockSize: BS, onProgress: (done, total) => (expect(total).toBe(size), progress.push(done)), onChanged: (i) => void changed.push(i) });
    expect(r.holes).toBe('seek-data');
    expect(r.bytesRead).toBe(want);
    expect(progress.at(-1)).toBe(size);
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);
    expect(changed).toEqual(r.changed);
    // The written zeros (block 320, in a run) are a hole; every changed block is one that holds data.
    expect(r.manifest.isHole(320)).toBe(true);
    for (const i of r.changed) expect(touched.has(i)).toBe(true);
  });

  it('with a previous scan: the same changed list and ids both ways, after writes into holes, over data and zeros over data', async () => {
    const file = path.join(dir, 'sparse.img');
    await makeImage(file);
    const base = await scanImage(file, { blockSize: BS });
    const previous = { manifest: base.manifest, cheap: base.cheap };
    const rng = prng(11);
    const fh = await fs.open(file, 'r+');
    try {
      await fh.write(randomBytes(rng, 8 * KiB), 0, 8 * KiB, 25 * MiB + 4 * KiB); // into the big hole
      await fh.write(randomBytes(rng, BS), 0, BS, 3 * BS); // over data
      await fh.write(Buffer.alloc(BS), 0, BS, 5 * BS); // zeros over data: becomes a hole
    } finally {
      await fh.close();
    }
    const seek = await scanImage(file, { blockSize: BS, previous, holes: 'seek-data' });
    const read = await scanImage(file, { blockSize: BS, previous, holes: 'read' });
    same(seek, read);
    expect(seek.changed).toEqual([3, 5, (25 * MiB) / BS]);
    // A previous scan with another block size: every data block changed, both ways.
    const other = await scanImage(file, { blockSize: 4 * KiB });
    same(await scanImage(file, { blockSize: BS, previous: { manifest: other.manifest, cheap: other.cheap }, holes: 'seek-data' }),
      await scanImage(file, { blockSize: BS, previous: { manifest: other.manifest, cheap: other.cheap }, holes: 'read' }));
  });

  it('an encrypted sparse copy: holes stay holes (zeros decrypt to zeros), the same manifest as the plaintext', async () => {
    const plainFile = path.join(dir, 'plain.img');
    const encFile = path.join(dir, 'enc.img');
    const { size, extents } = await makeImage(plainFile);
    const cipher = new SectorCipher(subkey(newDataKey(), 'disk'));
    // Encrypt whole sectors around each extent, as DiskIo writes them.
    const plain = await fs.readFile(plainFile);
    await sparseFile(encFile, size, extents.map(([at, d]) => {
      const a = Math.floor(at / SECTOR_BYTES) * SECTOR_BYTES;
      const b = Math.min(Math.ceil((at + d.length) / SECTOR_BYTES) * SECTOR_BYTES, size);
      const c = Buffer.from(plain.subarray(a, b));
      cipher.encrypt(c, a / SECTOR_BYTES);
      return [a, c];
    }));
    const decrypt: ScanOptions['decrypt'] = (data, position) => cipher.decrypt(data, position / SECTOR_BYTES);
    const enc = await scanImage(encFile, { blockSize: BS, decrypt, holes: 'seek-data' });
    same(enc, await scanImage(plainFile, { blockSize: BS, holes: 'read' }));
    same(enc, await scanImage(encFile, { blockSize: BS, decrypt, holes: 'read' }));
  });
});

describe('hole modes', () => {
  it("'read' reads every byte with or without the addon; 'seek-data' without the addon is INVALID_ARGUMENT", async () => {
    const file = path.join(dir, 'tiny.img');
    await sparseFile(file, 3 * BS, [[BS, Buffer.alloc(10, 1)]]);
    const r = await scanImage(file, { blockSize: BS, holes: 'read' });
    expect(r.holes).toBe('read');
    expect(r.bytesRead).toBe(3 * BS);
    if (!loadNativeSparse().addon) await expectCode(() => scanImage(file, { blockSize: BS, holes: 'seek-data' }), 'INVALID_ARGUMENT');
    else expect((await scanImage(file, { blockSize: BS, holes: 'seek-data' })).bytesRead).toBe(BS);
  });
});
