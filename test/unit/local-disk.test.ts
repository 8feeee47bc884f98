// LocalDisk's streaming rules on real files: a write smaller than a page over bytes that landed but are
// not yet recorded as local goes through read-modify-write (so a power cut cannot leave a torn page
// marked as the VM's), and blocks larger than 16 pages cannot stream. The blocks come from an in-memory
// BlockSource (the server's role), the journal and the disk file are real. Also: a complete copy sends
// at most two large reads to the thread pool at once, and reads the others itself.
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DiskJournal, journalKey } from '../../client/disk-journal.js';
import { LocalDisk, type BlockSource } from '../../client/local-disk.js';
import { blockId, CarryonError, DiskManifest, type BlockId } from '../../src/index.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'carryon-localdisk-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function streamed(blockSize: number, blocks: number): { disk: LocalDisk; file: string; jfile: string; manifest: DiskManifest; key: Buffer; data: Buffer[] } {
  const data = Array.from({ length: blocks }, (_, i) => Buffer.alloc(blockSize, 0x41 + i));
  const manifest = new DiskManifest(blockSize * blocks, blockSize);
  data.forEach((d, i) => manifest.setId(i, blockId(d)));
  const file = path.join(dir, `disk-${blockSize}-${Math.random().toString(36).slice(2)}.raw`);
  writeFileSync(file, Buffer.alloc(0));
  truncateSync(file, manifest.size); // sparse, as a streamed check-out makes it
  const jfile = `${file}.cydj`;
  const key = journalKey('co', 'm');
  const journal = DiskJournal.create(jfile, key, manifest, true, null);
  const byId = new Map<BlockId, Buffer>(data.map((d) => [blockId(d), d]));
  const source: BlockSource = { async fetch(ids, onBlock) { for (const id of ids) onBlock(id, byId.get(id)!); } };
  return { disk: new LocalDisk('t', file, manifest, journal, new BigUint64Array(blocks), source), file, jfile, manifest, key, data };
}

describe('LocalDisk (streaming)', () => {
  it('a sub-page write over landed-but-unrecorded bytes records the block as local first, never as the VM page alone', async () => {
    const { disk, jfile, manifest, key, data } = streamed(65536, 4);
    // Block 0 lands through a read (on demand); its present mark is not committed yet.
    const first = await disk.read(0, 4096);
    expect(first.equals(data[0]!.subarray(0, 4096))).toBe(true);
    await disk.write(100, Buffer.alloc(512, 0xee), false);
    await disk.flush();
    disk.abandon(); // as a crash would: no clean close
    await disk.journal.close();
    const j = DiskJournal.open(jfile, key, manifest);
    expect(j.isPresent(0)).toBe(true); // recorded as local before the VM's partial page was marked
    expect(j.pages.get(0)).toBeUndefined();
    expect(j.dirty[0]).toBe(1);
    await j.close();
  });

  it('a whole-page write to a block not yet local needs no download, and the download keeps the VM page', async () => {
    const { disk, data } = streamed(65536, 2);
    await disk.write(65536 + 8192, Buffer.alloc(4096, 0x77), false);
    await disk.download();
    const back = await disk.read(65536, 65536);
    expect(back.subarray(8192, 12288).equals(Buffer.alloc(4096, 0x77))).toBe(true);
    expect(back.subarray(0, 8192).equals(data[1]!.subarray(0, 8192))).toBe(true);
    expect(back.subarray(12288).equals(data[1]!.subarray(12288))).toBe(true);
    await disk.close();
  });

  it('blocks of more than 16 pages cannot stream (page masks are 16 bits)', () => {
    let code = '';
    try {
      streamed(131072, 2);
    } catch (e) {
      code = (e as CarryonError).code;
    }
    expect(code).toBe('INVALID_ARGUMENT');
  });
});

describe('LocalDisk (complete copy): large reads', () => {
  it('at most two large reads run in the thread pool at once; the others are read at once on the calling thread, with the same bytes', async () => {
    const { disk, data } = streamed(65536, 16);
    await disk.download(); // every block local: the journal is complete
    expect(disk.complete).toBe(true);
    const n = 6;
    const bufs = Array.from({ length: n }, () => Buffer.alloc(256 * 1024));
    const results = bufs.map((b, k) => disk.readInto((k % 4) * 256 * 1024, b.length, b, 0));
    // The first two went to the pool (promises); the rest were done before readInto returned.
    expect(results.map((r) => r instanceof Promise)).toEqual([true, true, false, false, false, false]);
    await Promise.all(results);
    bufs.forEach((b, k) => {
      const first = (k % 4) * 4; // 256 KiB = 4 blocks of 64 KiB
      for (let i = 0; i < 4; i++) expect(b.subarray(i * 65536, (i + 1) * 65536).equals(data[first + i]!)).toBe(true);
    });
    // Once they finished, the pool takes large reads again.
    const again = disk.readInto(0, 256 * 1024, bufs[0]!, 0);
    expect(again instanceof Promise).toBe(true);
    await again;
    await disk.close();
  });
});
