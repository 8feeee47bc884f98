// The read-ahead policy of a streamed disk (client/read-ahead.ts), alone and inside LocalDisk with a
// real journal and disk file: scattered reads fetch only their own blocks; a sequential run gets a
// window that grows with it and never fetches more ahead than the run read; the earlier fixed policy
// is still what CARRYON_READ_AHEAD=fixed:N names. The blocks come from an in-memory BlockSource that
// records what was asked (the server's role in test/e2e/stream-read-ahead.test.ts).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { streamedDisk } from './streamed-disk.js';
import { FixedReadAhead, MAX_WINDOW_BYTES, readAheadPolicy, SequentialReadAhead } from '../../client/read-ahead.js';

const KiB = 1024;
const dir = mkdtempSync(path.join(os.tmpdir(), 'carryon-readahead-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Every range a policy returns for a list of reads (each read a..b). */
function feed(p: { onRead(a: number, b: number, missed: boolean): { from: number; to: number } | null }, reads: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [a, b] of reads) {
    const r = p.onRead(a, b, true);
    if (r) out.push([r.from, r.to]);
  }
  return out;
}

describe('SequentialReadAhead', () => {
  it('scattered reads and a lone read of a run get no read-ahead', () => {
    const p = new SequentialReadAhead(10_000, 64 * KiB);
    expect(feed(p, [[500, 500], [20, 20], [9000, 9001], [300, 300], [7, 8], [4000, 4000]])).toEqual([]);
  });

  it('re-reads inside one block are not a stream', () => {
    const p = new SequentialReadAhead(100, 64 * KiB);
    expect(feed(p, [[5, 5], [5, 5], [5, 5], [5, 5]])).toEqual([]);
  });

  it('a sequential run gets a window as long as the run, doubling up to the cap, asked for when half of it is used', () => {
    const p = new SequentialReadAhead(10_000, 64 * KiB);
    // 128 KiB reads (two blocks each), as a guest's page cache sends them.
    const reads: Array<[number, number]> = [];
    for (let i = 0; i < 100; i++) reads.push([100 + 2 * i, 101 + 2 * i]);
    const got = feed(p, reads);
    expect(got[0]).toEqual([104, 107]); // after the second read: run 4, window 4
    // Contiguous windows, never overlapping, never a gap.
    for (let k = 1; k < got.length; k++) expect(got[k]![0]).toBe(got[k - 1]![1] + 1);
    const cap = MAX_WINDOW_BYTES / (64 * KiB);
    const lastRead = 299;
    expect(got.at(-1)![1] - lastRead).toBeLessThanOrEqual(cap);
    // Never more ahead than read: at every point the window's end is within the run's length past its end.
    let fetchedAhead = 0;
    for (const [f, t] of got) fetchedAhead += t - f + 1;
    expect(fetchedAhead - (lastRead - 100 + 1)).toBeLessThanOrEqual(cap);
  });

  it('what it fetches past the end of a run that stops is at most what the run read', () => {
    for (const n of [2, 3, 5, 8, 13, 40]) {
      const p = new SequentialReadAhead(10_000, 64 * KiB);
      const reads: Array<[number, number]> = Array.from({ length: n }, (_, i) => [50 + i, 50 + i]);
      const got = feed(p, reads);
      expect(got.length).toBeGreaterThan(0);
      const wasted = got.at(-1)![1] - (50 + n - 1); // fetched, never read
      expect(wasted).toBeGreaterThan(0);
      expect(wasted).toBeLessThanOrEqual(n);
    }
  });

  it('with around:N (a measured variant), a miss that continues no stream also asks for the N blocks after it; a hit does not', () => {
    const p = new SequentialReadAhead(10_000, 64 * KiB, { around: 4 });
    expect(p.onRead(500, 500, true)).toEqual({ from: 501, to: 504 });
    expect(p.onRead(900, 900, false)).toBeNull();
    expect(new SequentialReadAhead(10_000, 64 * KiB).onRead(500, 500, true)).toBeNull();
  });

  it('follows interleaved streams separately', () => {
    const p = new SequentialReadAhead(10_000, 64 * KiB);
    const got = feed(p, [[100, 101], [5000, 5001], [102, 103], [5002, 5003]]);
    expect(got).toEqual([[104, 107], [5004, 5007]]);
  });

  it('stops at the end of the disk', () => {
    const p = new SequentialReadAhead(10, 64 * KiB);
    expect(feed(p, [[6, 7], [8, 9], [9, 9]])).toEqual([]);
    const q = new SequentialReadAhead(12, 64 * KiB);
    expect(feed(q, [[6, 7], [8, 9]])).toEqual([[10, 11]]);
  });

  it('caps the window in bytes: larger blocks mean fewer blocks ahead', () => {
    const p = new SequentialReadAhead(100_000, 1024 * KiB);
    const reads: Array<[number, number]> = Array.from({ length: 40 }, (_, i) => [i, i]);
    for (const [f, t] of feed(p, reads)) expect(t - f + 1).toBeLessThanOrEqual(MAX_WINDOW_BYTES / (1024 * KiB));
  });

  it('forgets the least recently used stream beyond its limit, and keeps following the busy ones', () => {
    const p = new SequentialReadAhead(1_000_000, 64 * KiB);
    p.onRead(10, 11, true);
    for (let s = 1; s <= 40; s++) p.onRead(s * 10_000, s * 10_000, true);
    expect(p.onRead(12, 13, true)).toBeNull(); // stream 10-11 was forgotten: 12-13 starts a new one
    expect(p.onRead(400_001, 400_001, true)).toEqual({ from: 400_002, to: 400_003 }); // a recent one is still known
  });
});

describe('FixedReadAhead and the CARRYON_READ_AHEAD spellings', () => {
  it('fixed:N fetches N blocks after every miss, nothing after a hit', () => {
    const p = new FixedReadAhead(100, 15);
    expect(p.onRead(10, 10, true)).toEqual({ from: 11, to: 25 });
    expect(p.onRead(10, 10, false)).toBeNull();
    expect(p.onRead(95, 96, true)).toEqual({ from: 97, to: 99 });
  });

  it('parses sequential (and its measured variants), fixed:N and off, and refuses anything else', () => {
    expect(readAheadPolicy(undefined, 10, 4096)!.name).toBe('sequential');
    expect(readAheadPolicy('sequential', 10, 4096)).toMatchObject({ name: 'sequential', aheadBudget: 1, joinAhead: true });
    expect(readAheadPolicy('sequential+around:4', 10, 4096)!.name).toBe('sequential+around:4');
    expect(readAheadPolicy('sequential+around:4+split', 10, 4096)).toMatchObject({ name: 'sequential+around:4+split', joinAhead: false });
    expect(readAheadPolicy('fixed:15', 10, 4096)).toMatchObject({ aheadBudget: Infinity, joinAhead: true });
    expect(readAheadPolicy('fixed:15', 10, 4096)!.name).toBe('fixed:15');
    expect(readAheadPolicy('off', 10, 4096)!.onRead(1, 1, true)).toBeNull();
    for (const bad of ['fixed', 'fixed:-1', 'fixed:99999', 'kernel', 'fixed:1x', 'sequential+', 'sequential+around:', 'sequential+split+around:4', 'sequential+joined']) expect(readAheadPolicy(bad, 10, 4096)).toBeNull();
  });
});

const streamed = (blocks: number): ReturnType<typeof streamedDisk> => streamedDisk(dir, blocks);

describe('LocalDisk fetches what the read-ahead policy asks, and counts it', () => {
  it('scattered reads fetch only the blocks they touch', async () => {
    const { disk, asked } = streamed(256);
    const blocks = [200, 3, 77, 150, 41, 9, 250, 120];
    for (const i of blocks) {
      const got = await disk.read(i * 64 * KiB + 4096, 8192);
      expect(got.every((x) => x === (i & 0xff))).toBe(true); // bytes of block i, past its header
    }
    expect([...asked].sort((x, y) => x - y)).toEqual([...blocks].sort((x, y) => x - y));
    expect(disk.stats).toMatchObject({ onDemandBlocks: 8, onDemandBytes: 8 * 64 * KiB, readAheadBlocks: 0, readBlocks: 8, readBlockBytes: 8 * 64 * KiB });
    await disk.close();
  });

  it('a sequential run triggers read-ahead, the next reads are local, and fetched bytes stay within 2x of those read', async () => {
    const { disk, asked } = streamed(512);
    for (let i = 0; i < 64; i++) {
      const got = await disk.read((100 + 2 * i) * 64 * KiB, 128 * KiB);
      expect(got.readUInt32LE(0)).toBe(100 + 2 * i);
      expect(got.readUInt32LE(64 * KiB)).toBe(101 + 2 * i);
    }
    await disk.commitPresent();
    expect(disk.stats.readBlocks).toBe(128);
    expect(disk.stats.readAheadBlocks).toBeGreaterThan(64);
    expect(asked).toContain(104); // fetched ahead of the reads, after the second one
    expect(disk.stats.onDemandBlocks).toBe(new Set(asked).size);
    expect(disk.stats.onDemandBytes).toBeLessThanOrEqual(2 * disk.stats.readBlockBytes);
    // Misses: the first two reads, then the window stays ahead (each fetch is one BlockSource call's worth).
    expect(disk.stats.onDemandBlocks).toBeGreaterThan(128);
    await disk.close();
  });

  it('blocks fetched ahead and not read never outnumber the blocks read (the budget), whatever the policy asks', async () => {
    const { disk, asked } = streamed(256);
    disk.setReadAhead(readAheadPolicy('sequential+around:15', 256, 64 * KiB)!);
    await disk.read(10 * 64 * KiB, 4096); // 1 block read: 1 block of budget for its 15 asked
    await disk.read(100 * 64 * KiB, 4096); // 2 read, 1 ahead so far: 1 more
    await disk.commitPresent();
    expect(disk.stats).toMatchObject({ readBlocks: 2, readAheadBlocks: 2, onDemandBlocks: 4 });
    expect([...asked].sort((x, y) => x - y)).toEqual([10, 11, 100, 101]);
    // Good guesses cost nothing: blocks 11 and 101 read, so 4 blocks read and none ahead unread: 4 of room.
    await disk.read(11 * 64 * KiB, 4096);
    await disk.read(101 * 64 * KiB, 4096);
    await disk.read(200 * 64 * KiB, 4096); // 5 read: room for 5 of the 15 asked
    await disk.commitPresent();
    expect(disk.stats).toMatchObject({ readBlocks: 5, readAheadUsed: 2, readAheadBlocks: 7 });
    expect([...asked].sort((x, y) => x - y)).toEqual([10, 11, 100, 101, 200, 201, 202, 203, 204, 205]);
    await disk.close();
  });

  it('a window asked for by a read that missed goes in the read\'s request (+split: in one of its own beside it)', async () => {
    for (const [spec, fetches] of [['sequential', 2], ['sequential+split', 3]] as const) {
      const { disk } = streamed(64);
      disk.setReadAhead(readAheadPolicy(spec, 64, 64 * KiB)!);
      await disk.read(0, 128 * KiB);
      await disk.read(128 * KiB, 128 * KiB); // a miss that starts the window: blocks 2-3 for the read, 4-7 ahead
      await disk.commitPresent();
      expect(disk.stats.onDemandBlocks).toBe(8);
      expect(disk.stats.onDemandFetches).toBe(fetches);
      await disk.close();
    }
  });

  it('fixed:15 (the earlier policy) fetches 15 blocks after every miss, scattered or not', async () => {
    const { disk, asked } = streamed(256);
    disk.setReadAhead(new FixedReadAhead(256, 15));
    for (const i of [10, 100, 200]) await disk.read(i * 64 * KiB, 4096);
    expect(asked.length).toBe(48);
    expect(disk.stats).toMatchObject({ onDemandBlocks: 48, readAheadBlocks: 45, readBlocks: 3 });
    await disk.close();
  });
});
