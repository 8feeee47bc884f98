// A streamed LocalDisk for read-ahead tests: `blocks` distinct 64 KiB blocks behind a BlockSource in
// memory that records every block it is asked for, in order.
import { truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { DiskJournal, journalKey } from '../../client/disk-journal.js';
import { LocalDisk, type BlockSource } from '../../client/local-disk.js';
import { blockId, DiskManifest, type BlockId } from '../../src/index.js';

const BS = 64 * 1024;

/** The disk's file and journal go in `dir`; `asked` records every block fetched, in order. */
export function streamedDisk(dir: string, blocks: number): { disk: LocalDisk; asked: number[] } {
  const data = Array.from({ length: blocks }, (_, i) => {
    const b = Buffer.alloc(BS, i & 0xff);
    b.writeUInt32LE(i, 0);
    return b;
  });
  const manifest = new DiskManifest(BS * blocks, BS);
  data.forEach((d, i) => manifest.setId(i, blockId(d)));
  const file = path.join(dir, `disk-${Math.random().toString(36).slice(2)}.raw`);
  writeFileSync(file, Buffer.alloc(0));
  truncateSync(file, manifest.size);
  const journal = DiskJournal.create(`${file}.cydj`, journalKey('co', 'm'), manifest, true, null);
  const index = new Map<BlockId, number>(data.map((d, i) => [blockId(d), i]));
  const asked: number[] = [];
  const source: BlockSource = {
    async fetch(ids, onBlock) {
      for (const id of ids) {
        asked.push(index.get(id)!);
        onBlock(id, data[index.get(id)!]!);
      }
    },
  };
  return { disk: new LocalDisk('t', file, manifest, journal, new BigUint64Array(blocks), source), asked };
}
