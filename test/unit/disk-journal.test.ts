// DiskJournal (client/disk-journal.ts): the crash-safe dirty map beside a checked-out disk. Real files
// in a temp dir: marks survive close/open, write-ahead marks are on file before their promise
// resolves, a crash mid-append (the file cut at every byte) replays to a prefix of what was written,
// damage stops replay, trust() follows the disk's stamp, and streamed check-outs track present
// blocks and guest-written pages. Records are read back here with an independent parser of the
// layout: [u32 LE payload length][u32 LE type][u32 LE crc32(type bytes ‖ payload)][payload].
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, openSync, readFileSync, renameSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DiskManifest, type BlockId } from '../../src/index.js';
import { DiskJournal, journalKey, PAGE_BYTES, REC, stampOf, type DiskStamp } from '../../client/disk-journal.js';
import { expectCode, tempDir } from './helpers.js';

const BS = 64 * 1024;
const COUNT = 24;
const SIZE = COUNT * BS - 1000; // the last block is short
const DATA = [0, 1, 2, 5, 8, 9, 13, 20, 23]; // every other block is a hole
const HOLES = Array.from({ length: COUNT }, (_, i) => i).filter((i) => !DATA.includes(i));
const HEADER = 64;
const KEY = journalKey('checkout-1', 'a'.repeat(64));

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
let jfile = '';
let disk = '';
const open: DiskJournal[] = [];

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('carryon-journal-'));
  jfile = path.join(dir, 'disk.journal');
  disk = path.join(dir, 'disk.img');
  writeFileSync(disk, '');
  truncateSync(disk, SIZE);
});
afterEach(async () => {
  for (const j of open.splice(0)) await j.close();
  await cleanup();
});

function idOf(i: number): BlockId {
  return createHash('sha256').update(`block ${i}`).digest('hex');
}

function manifest(size = SIZE, blockSize = BS, data = DATA): DiskManifest {
  const m = new DiskManifest(size, blockSize);
  for (const i of data) m.setId(i, idOf(i));
  return m;
}

function stampFile(file: string): DiskStamp {
  const fd = openSync(file, 'r');
  try {
    return stampOf(fd);
  } finally {
    closeSync(fd);
  }
}

function track(j: DiskJournal): DiskJournal {
  open.push(j);
  return j;
}

function create(streaming: boolean, stamp: DiskStamp | null, file = jfile, m = manifest()): DiskJournal {
  return track(DiskJournal.create(file, KEY, m, streaming, stamp));
}

function reopen(file = jfile, readOnly = false, m = manifest()): DiskJournal {
  return track(DiskJournal.open(file, KEY, m, readOnly));
}

async function closeAll(): Promise<void> {
  for (const j of open.splice(0)) await j.close();
}

// --- an independent reader of the record layout --------------------------------------------------

interface Rec {
  start: number;
  end: number;
  type: number;
  payload: Buffer;
}

/** Whole, checksummed records after the header, up to the first that is cut short or fails its crc. */
function records(bytes: Buffer): Rec[] {
  const out: Rec[] = [];
  let off = HEADER;
  while (off + 12 <= bytes.length) {
    const len = bytes.readUInt32LE(off);
    if (off + 12 + len > bytes.length) break;
    const typeBytes = bytes.subarray(off + 4, off + 8);
    const payload = bytes.subarray(off + 12, off + 12 + len);
    if (crc32(Buffer.concat([typeBytes, payload])) !== bytes.readUInt32LE(off + 8)) break;
    out.push({ start: off, end: off + 12 + len, type: typeBytes.readUInt32LE(0), payload: Buffer.from(payload) });
    off += 12 + len;
  }
  return out;
}

function u32list(p: Buffer): number[] {
  const out: number[] = [];
  for (let k = 0; k < p.length; k += 4) out.push(p.readUInt32LE(k));
  return out;
}

/** Blocks named by every DIRTY record on file now. */
function dirtyOnFile(file = jfile): Set<number> {
  const s = new Set<number>();
  for (const r of records(readFileSync(file))) if (r.type === REC.DIRTY) for (const i of u32list(r.payload)) s.add(i);
  return s;
}

interface MapState {
  dirty: number[];
  present: number[];
  pages: Array<[number, number]>;
  untrusted: string | null;
}

/** What replaying `recs` must give, by the rules the journal documents. */
function model(recs: Rec[], streaming: boolean): MapState {
  const dirty = new Set<number>();
  const present = new Set<number>(streaming ? HOLES : Array.from({ length: COUNT }, (_, i) => i));
  const pages = new Map<number, number>();
  let untrusted: string | null = null;
  for (const r of recs) {
    if (r.type === REC.DIRTY) for (const i of u32list(r.payload)) dirty.add(i);
    else if (r.type === REC.PRESENT)
      for (const i of u32list(r.payload)) {
        present.add(i);
        pages.delete(i);
      }
    else if (r.type === REC.PAGES)
      for (let k = 0; k < r.payload.length; k += 6) {
        const i = r.payload.readUInt32LE(k);
        dirty.add(i);
        if (!present.has(i)) pages.set(i, (pages.get(i) ?? 0) | r.payload.readUInt16LE(k + 4));
      }
    else if (r.type === REC.UNTRUSTED) untrusted = r.payload.toString('utf8');
  }
  return {
    dirty: [...dirty].sort((a, b) => a - b),
    present: [...present].sort((a, b) => a - b),
    pages: [...pages].sort((a, b) => a[0] - b[0]),
    untrusted,
  };
}

function stateOf(j: DiskJournal): MapState {
  return {
    dirty: j.dirtyBlocks(),
    present: Array.from({ length: COUNT }, (_, i) => i).filter((i) => j.isPresent(i)),
    pages: [...j.pages].sort((a, b) => a[0] - b[0]),
    untrusted: j.untrustedReason,
  };
}

/** A streamed check-out's journal with every kind of record, each in its own group commit. */
async function busyStreamingJournal(): Promise<{ bytes: Buffer; recs: Rec[] }> {
  const j = create(true, null);
  await j.beginSession();
  j.markPresent([0, 1]);
  await j.durable();
  await j.markDirty([0]);
  await j.markPages([
    { block: 5, mask: 0b101 },
    { block: 8, mask: 0b1 },
  ]);
  await j.markPages([{ block: 5, mask: 0b10 }]);
  j.markPresent([8]);
  await j.durable();
  await j.markDirty([1, 2]);
  await j.markPages([{ block: 23, mask: 0xffff }]);
  await j.markUntrusted('a reason with ünïcode');
  await j.closeClean(stampFile(disk));
  await closeAll();
  const bytes = readFileSync(jfile);
  const recs = records(bytes);
  expect(recs.at(-1)!.end).toBe(bytes.length); // the parser agrees with the writer
  expect(recs.map((r) => r.type)).toEqual([
    REC.SESSION,
    REC.PRESENT,
    REC.DIRTY,
    REC.PAGES,
    REC.PAGES,
    REC.PRESENT,
    REC.DIRTY,
    REC.PAGES,
    REC.UNTRUSTED,
    REC.CLEAN,
  ]);
  return { bytes, recs };
}

// --------------------------------------------------------------------------------------------------

describe('DiskJournal: the dirty map', () => {
  it('create, markDirty, close, open: the same dirty set', async () => {
    const j = create(false, stampFile(disk));
    expect(j.complete).toBe(true);
    expect(j.dirtyCount).toBe(0);
    await j.markDirty([3, 7]);
    await j.markDirty([7, 0, 23]);
    await j.markDirty([]);
    expect(j.dirtyBlocks()).toEqual([0, 3, 7, 23]);
    await closeAll();

    const k = reopen();
    expect(k.dirtyBlocks()).toEqual([0, 3, 7, 23]);
    expect(k.dirtyCount).toBe(4);
    expect(Array.from(k.dirty)).toEqual(Array.from({ length: COUNT }, (_, i) => ([0, 3, 7, 23].includes(i) ? 1 : 0)));
    expect(k.complete).toBe(true);
    expect(k.pages.size).toBe(0);
    for (let i = 0; i < COUNT; i++) expect(k.isPresent(i)).toBe(true);
    expect(k.blockSize).toBe(BS);
    expect(k.count).toBe(COUNT);
    // and it goes on: more marks after a reopen are kept too
    await k.markDirty([12]);
    await closeAll();
    expect(reopen().dirtyBlocks()).toEqual([0, 3, 7, 12, 23]);
  });

  it('markDirty resolves only once its record is on file (concurrent writers, and a block whose mark is still pending)', async () => {
    const j = create(false, null);
    const seen: Array<[number[], boolean]> = [];
    const check = (blocks: number[]) => (): void => {
      const onFile = dirtyOnFile();
      seen.push([blocks, blocks.every((i) => onFile.has(i))]);
    };
    const a = j.markDirty([4]).then(check([4]));
    const b = j.markDirty([9, 10]).then(check([9, 10]));
    const c = j.markDirty([4]).then(check([4])); // already dirty in memory, its record not yet durable
    const d = j.markDirty([11, 4]).then(check([11, 4]));
    await Promise.all([a, b, c, d]);
    expect(seen).toHaveLength(4);
    for (const [blocks, ok] of seen) expect(ok, `blocks ${blocks.join(',')} on file when their promise resolved`).toBe(true);
    expect([...dirtyOnFile()].sort((x, y) => x - y)).toEqual([4, 9, 10, 11]);
  });

  it('marking blocks already durably dirty appends nothing; a mixed call appends only the fresh ones', async () => {
    const j = create(false, null);
    await j.markDirty([1, 2, 3]);
    const size = statSync(jfile).size;
    await j.markDirty([3, 1, 2]);
    expect(statSync(jfile).size).toBe(size);
    await j.markDirty([2, 4, 3]);
    const recs = records(readFileSync(jfile)).filter((r) => r.type === REC.DIRTY);
    expect(recs.map((r) => u32list(r.payload))).toEqual([[1, 2, 3], [4]]);
    expect(j.dirtyCount).toBe(4);
  });

  it('create replaces an older journal whole, and leaves no temp file', async () => {
    const j = create(false, null);
    await j.markDirty([5, 6]);
    await j.markUntrusted('old');
    await closeAll();
    const k = create(false, stampFile(disk));
    expect(k.dirtyBlocks()).toEqual([]);
    expect(k.untrustedReason).toBeNull();
    await closeAll();
    expect(reopen().dirtyBlocks()).toEqual([]);
    expect(existsSync(`${jfile}.tmp`)).toBe(false);
  });

  it('a journal of another checkout, version, block size or block count is refused with JOURNAL_INVALID', async () => {
    const j = create(false, null);
    await j.markDirty([1]);
    await closeAll();
    const m = manifest();
    await expectCode(() => DiskJournal.open(jfile, journalKey('checkout-2', 'a'.repeat(64)), m), 'JOURNAL_INVALID');
    await expectCode(() => DiskJournal.open(jfile, journalKey('checkout-1', 'b'.repeat(64)), m), 'JOURNAL_INVALID');
    await expectCode(() => DiskJournal.open(jfile, KEY, manifest(SIZE + BS)), 'JOURNAL_INVALID'); // one block more
    await expectCode(() => DiskJournal.open(jfile, KEY, manifest(SIZE, BS / 2, [])), 'JOURNAL_INVALID'); // other block size
    // the same key and shape is still fine
    expect(reopen().dirtyBlocks()).toEqual([1]);
  });

  it('a file that is not a journal, a damaged header, a cut header or another version is refused with JOURNAL_INVALID', async () => {
    create(false, null);
    await closeAll();
    const good = readFileSync(jfile);
    const other = path.join(dir, 'other.journal');
    const cases: Array<[string, Buffer]> = [
      ['empty', Buffer.alloc(0)],
      ['text', Buffer.from('this is not a journal at all, but it is long enough to hold a header of 64 bytes')],
      ['zeros', Buffer.alloc(200)],
    ];
    for (let n = 0; n < HEADER; n += 7) cases.push([`header cut at ${n}`, good.subarray(0, n)]);
    for (const at of [0, 4, 8, 12, 16, 24, 55, 60]) {
      const b = Buffer.from(good);
      b[at] ^= 0x01;
      cases.push([`header byte ${at} flipped`, b]);
    }
    const v2 = Buffer.from(good);
    v2.writeUInt32LE(2, 4);
    v2.writeUInt32LE(crc32(v2.subarray(0, 60)), 60);
    cases.push(['version 2', v2]);
    for (const [what, bytes] of cases) {
      writeFileSync(other, bytes);
      const err = await expectCode(() => DiskJournal.open(other, KEY, manifest()), 'JOURNAL_INVALID');
      expect(err.message, what).toContain(other);
    }
    writeFileSync(other, good);
    expect(track(DiskJournal.open(other, KEY, manifest())).dirtyCount).toBe(0);
  });
});

describe('DiskJournal: crash safety', () => {
  it('a journal cut at every byte of its records opens to a prefix of its marks, and is truncated to the last whole record', async () => {
    const { bytes, recs } = await busyStreamingJournal();
    const cut = path.join(dir, 'cut.journal');
    const ends = new Set([HEADER, ...recs.map((r) => r.end)]);
    let torn = 0;
    for (let len = HEADER; len <= bytes.length; len++) {
      writeFileSync(cut, bytes.subarray(0, len));
      const whole = recs.filter((r) => r.end <= len);
      const lastEnd = whole.at(-1)?.end ?? HEADER;
      const j = track(DiskJournal.open(cut, KEY, manifest()));
      expect(stateOf(j), `cut at ${len}`).toEqual(model(whole, true));
      expect(statSync(cut).size, `cut at ${len}`).toBe(lastEnd);
      expect(readFileSync(cut).equals(bytes.subarray(0, lastEnd))).toBe(true);
      if (!ends.has(len)) {
        torn++;
        expect(j.trust(stampFile(disk)).recovered, `cut at ${len}`).toBe(true);
      }
      // A cut journal takes new marks after its last whole record, and they replay.
      await j.markDirty([13]);
      await closeAll();
      const again = track(DiskJournal.open(cut, KEY, manifest()));
      expect(again.dirty[13]).toBe(1);
      expect(stateOf(again).dirty).toEqual([...new Set([...model(whole, true).dirty, 13])].sort((a, b) => a - b));
      await closeAll();
    }
    expect(torn).toBe(bytes.length - HEADER - recs.length);
    // and the uncut journal gives everything
    expect(stateOf(track(DiskJournal.open(jfile, KEY, manifest())))).toEqual(model(recs, true));
    expect(model(recs, true)).toEqual({
      dirty: [0, 1, 2, 5, 8, 23],
      present: [...HOLES, 0, 1, 8].sort((a, b) => a - b),
      pages: [
        [5, 0b111],
        [23, 0xffff],
      ],
      untrusted: 'a reason with ünïcode',
    });
  });

  it('zeros or garbage after the last record (a crash that extended the file) are cut off', async () => {
    const j = create(false, null);
    await j.beginSession();
    await j.markDirty([2, 9]);
    await closeAll();
    const good = readFileSync(jfile);
    const tails = [Buffer.alloc(1), Buffer.alloc(12), Buffer.alloc(4096), Buffer.from('garbage garbage garbage'), Buffer.alloc(40, 0xff)];
    for (const tail of tails) {
      writeFileSync(jfile, Buffer.concat([good, tail]));
      const k = reopen();
      expect(k.dirtyBlocks()).toEqual([2, 9]);
      expect(statSync(jfile).size).toBe(good.length);
      expect(k.trust(stampFile(disk))).toMatchObject({ trusted: true, recovered: true });
      await closeAll();
    }
  });

  it('a flipped byte anywhere in a record stops replay at that record; with whole records after it, the map is untrusted (damage, not a torn tail)', async () => {
    const { bytes, recs } = await busyStreamingJournal();
    const bad = path.join(dir, 'bad.journal');
    for (const k of [0, 3, 6, recs.length - 1]) {
      const r = recs[k]!;
      for (let at = r.start; at < r.end; at++) {
        const b = Buffer.from(bytes);
        b[at] ^= 0x40;
        writeFileSync(bad, b);
        const j = track(DiskJournal.open(bad, KEY, manifest()));
        const want = model(recs.slice(0, k), true);
        const damaged = k < recs.length - 1;
        if (damaged) want.untrusted = 'the dirty map is damaged in the middle (not a torn tail)';
        expect(stateOf(j), `record ${k}, byte ${at - r.start}`).toEqual(want);
        // Cut at the damage; the verdict is appended as an UNTRUSTED record.
        expect(statSync(bad).size).toBe(damaged ? r.start + 12 + Buffer.byteLength(want.untrusted!) : r.start);
        await closeAll();
      }
    }
  });

  // Found by the fuzz target disk-journal: the repair cut the whole records after the damage (DIRTY
  // marks among them) but kept the "damaged" verdict in memory only, so the next open trusted the
  // shorter map, and a check-in would have skipped blocks the VM wrote.
  it('damage in the middle stays untrusted after the repair: the next open does not trust the shorter map', async () => {
    const { bytes, recs } = await busyStreamingJournal();
    const k = recs.findIndex((r) => r.type === REC.DIRTY);
    expect(k).toBeGreaterThanOrEqual(0);
    const b = Buffer.from(bytes);
    b[recs[k]!.start + 12] ^= 0x01; // a flipped bit in the payload of a DIRTY record
    const bad = path.join(dir, 'bad.journal');
    writeFileSync(bad, b);
    const first = track(DiskJournal.open(bad, KEY, manifest()));
    expect(first.untrustedReason).toMatch(/damaged in the middle/);
    expect(first.trust(stampFile(disk)).trusted).toBe(false);
    await closeAll();
    for (const readOnly of [false, true]) {
      const again = track(DiskJournal.open(bad, KEY, manifest(), readOnly));
      expect(again.untrustedReason, `readOnly ${readOnly}`).toMatch(/damaged in the middle/);
      expect(again.trust(stampFile(disk)).trusted).toBe(false);
      await closeAll();
    }
    // Appends after the verdict land after it and keep it.
    const more = track(DiskJournal.open(bad, KEY, manifest()));
    await more.markDirty([3]);
    await closeAll();
    expect(track(DiskJournal.open(bad, KEY, manifest())).untrustedReason).toMatch(/damaged in the middle/);
    await closeAll();
  });

  // Found by the fuzz target disk-journal: a checksummed DIRTY record naming [2, a block past the end]
  // stopped replay, but only after marking block 2. The repair cut the record, so block 2 was dirty in
  // memory with no mark on file: markDirty([2]) then wrote nothing ahead of the VM's write, and after a
  // crash the next open forgot block 2.
  it('a record with one bad block index is refused whole: no block of it is marked', async () => {
    const j = create(false, null);
    await j.markDirty([9]);
    await closeAll();
    const payload = Buffer.alloc(8);
    payload.writeUInt32LE(2, 0);
    payload.writeUInt32LE(COUNT + 5, 4);
    const type = Buffer.alloc(4);
    type.writeUInt32LE(REC.DIRTY);
    const head = Buffer.alloc(12);
    head.writeUInt32LE(payload.length, 0);
    type.copy(head, 4);
    head.writeUInt32LE(crc32(Buffer.concat([type, payload])), 8);
    writeFileSync(jfile, Buffer.concat([readFileSync(jfile), head, payload]));
    for (const readOnly of [true, false]) {
      expect(reopen(jfile, readOnly).dirtyBlocks(), `readOnly ${readOnly}`).toEqual([9]);
      await closeAll();
    }
    const k = reopen();
    await k.markDirty([2]);
    expect(dirtyOnFile()).toEqual(new Set([2, 9]));
    await closeAll();
  });

  it('a read-only open of a torn journal leaves the file as it was and takes no marks', async () => {
    const { bytes, recs } = await busyStreamingJournal();
    const r = recs[4]!;
    const torn = bytes.subarray(0, r.start + 7); // cut inside record 4
    writeFileSync(jfile, torn);
    const before = statSync(jfile);
    const j = reopen(jfile, true);
    expect(stateOf(j)).toEqual(model(recs.slice(0, 4), true));
    expect(j.trust(stampFile(disk)).recovered).toBe(true);
    await expectCode(() => j.markDirty([20]), 'INTERNAL');
    await closeAll();
    expect(readFileSync(jfile).equals(torn)).toBe(true);
    const after = statSync(jfile);
    expect(after.size).toBe(before.size);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    // a read-only open of a whole journal does not change it either
    writeFileSync(jfile, bytes);
    const k = reopen(jfile, true);
    expect(stateOf(k)).toEqual(model(recs, true));
    await closeAll();
    expect(readFileSync(jfile).equals(bytes)).toBe(true);
  });
});

describe('DiskJournal: trust', () => {
  it('a journal closed clean with the disk unchanged is trusted, not recovered', async () => {
    const j = create(false, stampFile(disk));
    expect(j.trust(stampFile(disk))).toEqual({ trusted: true, reason: null, recovered: false });
    await closeAll();
    expect(reopen().trust(stampFile(disk))).toEqual({ trusted: true, reason: null, recovered: false });
  });

  it('a disk written, resized or replaced since the clean close is not trusted, with a reason', async () => {
    const T = new Date('2020-02-02T02:02:02.123Z');
    utimesSync(disk, T, T);
    const j = create(false, stampFile(disk));
    await closeAll();

    // written: same size and inode, other mtime
    writeFileSync(disk, Buffer.alloc(SIZE, 1));
    utimesSync(disk, T, new Date('2021-01-01T00:00:00Z'));
    let t = reopen().trust(stampFile(disk));
    expect(t.trusted).toBe(false);
    expect(t.reason).toMatch(/modified/);
    expect(t.recovered).toBe(false);
    await closeAll();

    // resized, mtime put back
    truncateSync(disk, SIZE + 1);
    utimesSync(disk, T, T);
    t = reopen().trust(stampFile(disk));
    expect(t.trusted).toBe(false);
    await closeAll();

    // replaced by another file of the same size and mtime: only the inode differs
    truncateSync(disk, SIZE);
    utimesSync(disk, T, T);
    const clean = stampFile(disk);
    expect(reopen().trust(clean).trusted).toBe(true);
    const copy = path.join(dir, 'copy.img');
    copyFileSync(disk, copy);
    utimesSync(copy, T, T);
    renameSync(copy, disk);
    const now = stampFile(disk);
    expect(now.size).toBe(clean.size);
    expect(now.mtimeNs).toBe(clean.mtimeNs);
    expect(now.ino).not.toBe(clean.ino);
    t = reopen().trust(now);
    expect(t.trusted).toBe(false);
    expect(t.reason).toBeTruthy();
    expect(j.file).toBe(jfile);
  });

  it('a session that never closed (a crash) is trusted as recovered, whatever the disk stamp', async () => {
    const j = create(false, stampFile(disk));
    await j.beginSession();
    await j.markDirty([8, 9]);
    // What a kill -9 leaves: the file as it is now, with the journal still open.
    const crashed = path.join(dir, 'crashed.journal');
    copyFileSync(jfile, crashed);
    writeFileSync(disk, Buffer.alloc(SIZE, 2)); // the writes the marks cover
    const k = track(DiskJournal.open(crashed, KEY, manifest()));
    const t = k.trust(stampFile(disk));
    expect(t.trusted).toBe(true);
    expect(t.recovered).toBe(true);
    expect(t.reason).toMatch(/recovered/);
    expect(k.dirtyBlocks()).toEqual([8, 9]);
  });

  it('a session closed clean is trusted against the new stamp, not recovered, and keeps its marks', async () => {
    const j = create(false, stampFile(disk));
    await j.beginSession();
    await j.markDirty([20]);
    writeFileSync(disk, Buffer.alloc(SIZE, 3));
    utimesSync(disk, new Date(), new Date('2022-03-03T00:00:00Z'));
    await j.closeClean(stampFile(disk));
    await closeAll();
    const k = reopen();
    expect(k.trust(stampFile(disk))).toEqual({ trusted: true, reason: null, recovered: false });
    expect(k.dirtyBlocks()).toEqual([20]);
  });

  it('a torn record after a clean close: recovered, and still checked against the stamp', async () => {
    const T = new Date('2020-05-05T05:05:05Z');
    utimesSync(disk, T, T);
    const j = create(false, stampFile(disk));
    await closeAll();
    const bytes = readFileSync(jfile);
    writeFileSync(jfile, Buffer.concat([bytes, Buffer.from([12, 0, 0, 0, REC.DIRTY, 0])])); // a record begun, never finished
    expect(reopen().trust(stampFile(disk))).toMatchObject({ trusted: true, recovered: true });
    await closeAll();
    writeFileSync(jfile, Buffer.concat([bytes, Buffer.from([12, 0, 0, 0, REC.DIRTY, 0])]));
    utimesSync(disk, T, new Date('2020-06-06T00:00:00Z'));
    expect(reopen().trust(stampFile(disk))).toMatchObject({ trusted: false, recovered: true });
    expect(j.file).toBe(jfile);
  });

  it('markUntrusted persists across reopen, and a later clean close does not launder it', async () => {
    const j = create(false, stampFile(disk));
    await j.markDirty([1]);
    await j.markUntrusted('the map was lost');
    expect(j.untrustedReason).toBe('the map was lost');
    expect(j.trust(stampFile(disk))).toMatchObject({ trusted: false, reason: 'the map was lost' });
    await closeAll();

    const k = reopen();
    expect(k.untrustedReason).toBe('the map was lost');
    expect(k.trust(stampFile(disk))).toMatchObject({ trusted: false, reason: 'the map was lost' });
    await k.beginSession();
    await k.closeClean(stampFile(disk));
    await closeAll();

    const l = reopen();
    expect(l.trust(stampFile(disk))).toMatchObject({ trusted: false, reason: 'the map was lost' });
    expect(l.dirtyBlocks()).toEqual([1]);
  });
});

describe('DiskJournal: streamed check-outs', () => {
  it('holes count as present; data blocks are not; not complete until they are', async () => {
    const j = create(true, null);
    expect(j.complete).toBe(false);
    expect(j.presentCount).toBe(HOLES.length);
    for (let i = 0; i < COUNT; i++) expect(j.isPresent(i), `block ${i}`).toBe(HOLES.includes(i));
    await closeAll();
    const k = reopen();
    expect(k.complete).toBe(false);
    expect(k.presentCount).toBe(HOLES.length);
    for (let i = 0; i < COUNT; i++) expect(k.isPresent(i)).toBe(HOLES.includes(i));
  });

  it('markPresent records blocks once (holes and present blocks append nothing); durable with the next sync', async () => {
    const j = create(true, null);
    const size0 = statSync(jfile).size;
    j.markPresent([HOLES[0]!, HOLES[1]!]);
    await j.durable();
    expect(statSync(jfile).size).toBe(size0);
    j.markPresent([0, 5, HOLES[2]!]);
    expect(j.isPresent(0)).toBe(true);
    expect(j.isPresent(5)).toBe(true);
    expect(j.presentCount).toBe(HOLES.length + 2);
    await j.durable();
    const recs = records(readFileSync(jfile));
    expect(recs.map((r) => [r.type, u32list(r.payload)])).toEqual([[REC.PRESENT, [0, 5]]]);
    const size1 = statSync(jfile).size;
    j.markPresent([5, 0]);
    await j.durable();
    expect(statSync(jfile).size).toBe(size1);
    await closeAll();
    const k = reopen();
    expect(k.presentCount).toBe(HOLES.length + 2);
    expect(stateOf(k).present).toEqual([...HOLES, 0, 5].sort((a, b) => a - b));
    expect(k.dirtyCount).toBe(0); // present is not dirty
  });

  it('markPages ORs page masks of blocks not yet present and marks them dirty; markPresent clears them', async () => {
    const j = create(true, null);
    await j.markPages([
      { block: 2, mask: 0b0011 },
      { block: 9, mask: 0x8000 },
    ]);
    await j.markPages([{ block: 2, mask: 0b0110 }]);
    expect(j.pages.get(2)).toBe(0b0111);
    expect(j.pages.get(9)).toBe(0x8000);
    expect(j.dirtyBlocks()).toEqual([2, 9]);
    expect(j.isPresent(2)).toBe(false);
    // pages already recorded: nothing appended
    const size = statSync(jfile).size;
    await j.markPages([{ block: 2, mask: 0b0101 }]);
    expect(statSync(jfile).size).toBe(size);
    // durable before the promise resolves, like markDirty
    let onFile = false;
    await j.markPages([{ block: 13, mask: 1 << 7 }]).then(() => {
      onFile = records(readFileSync(jfile)).some((r) => r.type === REC.PAGES && r.payload.readUInt32LE(0) === 13 && r.payload.readUInt16LE(4) === 1 << 7);
    });
    expect(onFile).toBe(true);
    await closeAll();

    const k = reopen();
    expect([...k.pages].sort((a, b) => a[0] - b[0])).toEqual([
      [2, 0b0111],
      [9, 0x8000],
      [13, 1 << 7],
    ]);
    expect(k.dirtyBlocks()).toEqual([2, 9, 13]);
    k.markPresent([2]);
    expect(k.pages.has(2)).toBe(false);
    expect(k.dirty[2]).toBe(1); // still written by the guest: still dirty
    await closeAll();

    const l = reopen();
    expect(l.pages.has(2)).toBe(false);
    expect(l.pages.get(9)).toBe(0x8000);
    expect(l.isPresent(2)).toBe(true);
    expect(l.dirtyBlocks()).toEqual([2, 9, 13]);
    expect(BS / PAGE_BYTES).toBe(16); // one bit per page of a 64 KiB block fits the u16 mask
  });

  it('a page record for a block already present is replayed as dirty, not as pages', async () => {
    const j = create(true, null);
    j.markPresent([1]);
    await j.durable();
    await j.markDirty([1]);
    await closeAll();
    // The record a writer would have appended (written here by hand: the layout is the contract).
    const payload = Buffer.alloc(6);
    payload.writeUInt32LE(1, 0);
    payload.writeUInt16LE(0b11, 4);
    const type = Buffer.alloc(4);
    type.writeUInt32LE(REC.PAGES, 0);
    const head = Buffer.alloc(12);
    head.writeUInt32LE(payload.length, 0);
    type.copy(head, 4);
    head.writeUInt32LE(crc32(Buffer.concat([type, payload])), 8);
    const full = Buffer.concat([readFileSync(jfile), head, payload]);
    writeFileSync(jfile, full);
    const k = reopen();
    expect(k.pages.has(1)).toBe(false);
    expect(k.dirty[1]).toBe(1);
    expect(k.isPresent(1)).toBe(true);
    expect(statSync(jfile).size).toBe(full.length); // the record was whole: nothing cut
    expect(records(readFileSync(jfile)).at(-1)!.type).toBe(REC.PAGES);
  });

  it('complete becomes true when every block is present, live and after reopen', async () => {
    const j = create(true, null);
    const data = [...DATA];
    j.markPresent(data.slice(0, 4));
    expect(j.complete).toBe(false);
    await j.durable();
    await closeAll();

    const k = reopen();
    expect(k.complete).toBe(false);
    k.markPresent(data.slice(4, -1));
    expect(k.complete).toBe(false);
    expect(k.isPresent(data.at(-1)!)).toBe(false);
    k.markPresent(data.slice(-1));
    expect(k.complete).toBe(true);
    expect(k.present).toBeNull();
    for (let i = 0; i < COUNT; i++) expect(k.isPresent(i)).toBe(true);
    await closeAll();

    const l = reopen();
    expect(l.complete).toBe(true);
    expect(l.presentCount).toBe(COUNT);
  });

  it('a streamed check-out of an image that is all holes is complete from the start', async () => {
    const m = manifest(SIZE, BS, []);
    const j = track(DiskJournal.create(jfile, KEY, m, true, null));
    expect(j.complete).toBe(true);
    await closeAll();
    expect(track(DiskJournal.open(jfile, KEY, m)).complete).toBe(true);
  });
});
