// Fuzz target for the laptop's disk journal (client/disk-journal.ts, DiskJournal.open): the dirty map
// a crash, a full disk or a bad sector may leave damaged. A journal made by the real DiskJournal is
// damaged, with its checksums repaired half the time (so the damage reaches the record parser), and
// opened three times: read-only, then read-write (which cuts a torn tail), then read-write again.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { DiskJournal, journalKey, type DiskStamp } from '../../../../client/disk-journal.js';
import { DiskManifest, manifestId, encodeManifest } from '../../../../src/manifest/index.js';
import { blockId } from '../../../../src/hash/index.js';
import { check, type TargetSpec } from '../harness.js';
import type { IntField } from '../mutate.js';
import { deepEqual } from './equal.js';

const KiB = 1024;
const HEADER = 64;
const COUNT = 40;
const STAMP: DiskStamp = { size: COUNT * 64 * KiB - 100, mtimeNs: 1_700_000_000_123_456_789n, ino: 4242n };

/** The record layout: [u32 length][u32 type][u32 crc32(type bytes ‖ payload)][payload]. */
function records(b: Buffer): Array<{ at: number; len: number; type: number }> {
  const out: Array<{ at: number; len: number; type: number }> = [];
  for (let off = HEADER; off + 12 <= b.length && out.length < 4096;) {
    const len = b.readUInt32LE(off);
    if (off + 12 + len > b.length) break;
    out.push({ at: off, len, type: b.readUInt32LE(off + 4) });
    off += 12 + len;
  }
  return out;
}

/** Header and record checksums recomputed. */
export function fixJournalChecksums(b: Buffer): Buffer {
  if (b.length < HEADER) return b;
  const out = Buffer.from(b);
  out.writeUInt32LE(crc32(out.subarray(0, 60)), 60);
  for (const r of records(out)) out.writeUInt32LE(crc32(out.subarray(r.at + 12, r.at + 12 + r.len), crc32(out.subarray(r.at + 4, r.at + 8))), r.at + 8);
  return out;
}

function journalFields(b: Buffer): IntField[] {
  const f: IntField[] = [4, 8, 12, 16].map((offset) => ({ offset, width: 4, littleEndian: true }));
  for (const r of records(b)) {
    f.push({ offset: r.at, width: 4, littleEndian: true }, { offset: r.at + 4, width: 4, littleEndian: true });
    if (r.len >= 4) f.push({ offset: r.at + 12, width: 4, littleEndian: true });
    if (r.type === 3 && r.len >= 6) f.push({ offset: r.at + 16, width: 2, littleEndian: true });
  }
  return f;
}

/** Everything a journal tells its users, for comparing two opens. */
function stateOf(j: DiskJournal): unknown {
  const present = j.present ? [...j.present] : null;
  return {
    dirty: j.dirtyBlocks(), dirtyCount: j.dirtyCount, present, presentCount: j.presentCount, complete: j.complete,
    pages: [...j.pages.entries()].sort((a, b) => a[0] - b[0]), untrusted: j.untrustedReason, trust: j.trust(STAMP),
  };
}

function checkConsistent(j: DiskJournal, m: DiskManifest): void {
  const dirty = j.dirtyBlocks();
  check(dirty.length === j.dirtyCount && dirty.every((i) => i >= 0 && i < m.count), 'dirty count or indices out of step');
  if (j.present) {
    check(j.present.reduce((n, v) => n + v, 0) === j.presentCount && j.presentCount < m.count, 'present count out of step');
    for (let i = 0; i < m.count; i++) if (m.isHole(i)) check(j.isPresent(i), 'a hole is not present');
  }
  for (const [i, mask] of j.pages) {
    // A zero mask (only a damaged record with a valid checksum holds one) reads as "no pages": harmless.
    check(!j.isPresent(i) && j.dirty[i] === 1 && mask >= 0 && mask <= 0xffff, 'guest pages recorded for a present or clean block');
  }
}

export const journalTarget: TargetSpec = {
  name: 'disk-journal',
  about: 'DiskJournal.open (client/disk-journal.ts): read-only and read-write opens agree, repair only cuts and is idempotent, counts match the maps',
  create: () => {
    // Every read-write open of a torn journal fdatasyncs it: a RAM-backed folder keeps that cheap.
    const dir = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'carryon-fuzz-journal-'));
    const file = path.join(dir, 'disk.journal');
    const m = new DiskManifest(STAMP.size, 64 * KiB);
    for (let i = 0; i < m.count; i++) if (i % 3 !== 0) m.setId(i, blockId(Buffer.from([i])));
    const key = journalKey('checkout-fuzz', manifestId(encodeManifest(m)));
    const opened: DiskJournal[] = [];
    const openJournal = (readOnly: boolean): DiskJournal => {
      const j = DiskJournal.open(file, key, m, readOnly);
      opened.push(j);
      return j;
    };
    const closeAll = async (): Promise<void> => {
      for (const j of opened.splice(0)) await j.close();
    };
    return {
      codes: ['JOURNAL_INVALID'],
      async corpus() {
        const out: Buffer[] = [];
        const make = async (streaming: boolean, stamp: DiskStamp | null, work: (j: DiskJournal) => Promise<void>): Promise<void> => {
          const j = DiskJournal.create(file, key, m, streaming, stamp);
          await work(j);
          await j.close();
          out.push(readFileSync(file));
        };
        await make(false, STAMP, async (j) => {
          await j.beginSession();
          await j.markDirty([1, 2, 3]);
          await j.markDirty([5, 39]);
          await j.closeClean(STAMP);
        });
        await make(true, null, async (j) => {
          await j.beginSession();
          await j.markPages([{ block: 4, mask: 0x5 }, { block: 7, mask: 0x8000 }]);
          j.markPresent([1, 2, 4]);
          await j.markDirty([2, 8]);
          await j.markUntrusted('an outside write');
        });
        await make(true, STAMP, async (j) => {
          j.markPresent(Array.from({ length: COUNT }, (_, i) => i));
          await j.markDirty([10]);
          await j.closeClean(STAMP);
        });
        await make(false, null, async () => undefined);
        out.push(Buffer.concat([out[0]!, Buffer.from([7, 0, 0, 0, 1])])); // a torn tail
        return out;
      },
      hints: { fields: journalFields },
      fixup: fixJournalChecksums,
      async run(input) {
        writeFileSync(file, input);
        try {
          const ro = openJournal(true);
          checkConsistent(ro, m);
          const seen = stateOf(ro);
          const rw = openJournal(false);
          checkConsistent(rw, m);
          check(deepEqual(stateOf(rw), seen), 'a read-write open reads another map than a read-only one');
          await closeAll();
          const after = readFileSync(file);
          // The repair cuts the tail, then (for damage in the middle) appends an UNTRUSTED record.
          const last = records(after).at(-1);
          const kept = last && last.type === 6 && last.at + 12 + last.len === after.length && after.subarray(last.at + 12).toString('utf8').includes('damaged in the middle') ? last.at : after.length;
          check(kept <= input.length && after.subarray(0, kept).equals(input.subarray(0, kept)), 'repair did more than cut the tail and append its verdict');
          const again = openJournal(false);
          // The cut tail is gone now, so whether the last session was "recovered" (which a torn tail
          // shows) may differ; the map and whether it can be trusted may not.
          const withoutRecovery = (s: unknown): unknown => {
            const { trust, ...rest } = s as { trust: { trusted: boolean } };
            return { ...rest, trusted: trust.trusted };
          };
          check(deepEqual(withoutRecovery(stateOf(again)), withoutRecovery(seen)), 'opening a repaired journal gives another map');
          check(readFileSync(file).equals(after), 'a second repair changed the file again');
        } finally {
          await closeAll();
        }
      },
      allocationCap: (input) => 2 * input.length + 16 * COUNT + 64 * KiB,
      close() {
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
