// Reading ahead by a boot trace (client/read-ahead.ts TraceReadAhead, client/boot-trace.ts, the wire
// parser): the policy alone, then inside LocalDisk with a real journal and disk file (blocks from an
// in-memory BlockSource that records what was asked, as in read-ahead.test.ts): a trace that matches the
// VM's reads turns later reads into local ones, in trace order; a trace that does not (stale or
// hostile) costs at most as many blocks as the VM read; the recorder keeps first reads, in order, capped.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { LocalDisk } from '../../client/local-disk.js';
import { streamedDisk } from './streamed-disk.js';
import { MIN_TRACE_GUESSES, readAheadPolicy, TRACE_WINDOW, TraceReadAhead } from '../../client/read-ahead.js';
import { BootTraceRecorder, RECORD_MS } from '../../client/boot-trace.js';
import { CarryonError, MAX_BOOT_TRACE_BLOCKS, parseBootTrace } from '../../src/index.js';
import { mulberry32, shuffled } from '../../scripts/lib/prng.js';

const KiB = 1024;
const BS = 64 * KiB;
const dir = mkdtempSync(path.join(os.tmpdir(), 'carryon-boottrace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A fixed scattered order over `n` of `count` blocks (seeded). */
function scatteredOrder(count: number, n: number, seed = 7): number[] {
  return shuffled(mulberry32(seed), Array.from({ length: count }, (_, i) => i)).slice(0, n);
}

describe('TraceReadAhead', () => {
  it('a read of a traced block asks for the next TRACE_WINDOW blocks of the trace, in trace order', () => {
    const trace = scatteredOrder(10_000, 500);
    const p = new TraceReadAhead(10_000, BS, trace);
    expect(p.onRead(trace[0]!, trace[0]!, true)).toEqual(trace.slice(1, 1 + TRACE_WINDOW));
    // Hits inside the first half of that window ask for nothing more (the blocks are on their way).
    for (let k = 1; k < TRACE_WINDOW / 2; k++) expect(p.onRead(trace[k]!, trace[k]!, false)).toBeNull();
    // Half a window on: the next one, from there.
    const k = TRACE_WINDOW / 2;
    expect(p.onRead(trace[k]!, trace[k]!, false)).toEqual(trace.slice(k + 1, k + 1 + TRACE_WINDOW));
    // A miss means the VM is ahead of the fetches: ask again from where it is.
    expect(p.onRead(trace[k + 3]!, trace[k + 3]!, true)).toEqual(trace.slice(k + 4, k + 4 + TRACE_WINDOW));
  });

  it('reads outside the trace get sequential read-ahead only; the end of the trace asks for nothing more', () => {
    const p = new TraceReadAhead(10_000, BS, [5, 900, 40]);
    expect(p.onRead(7000, 7000, true)).toBeNull(); // scattered, not traced
    expect(p.onRead(7001, 7001, true)).toEqual({ from: 7002, to: 7003 }); // sequential: the run's own window
    expect(p.onRead(40, 40, true)).toEqual([]); // the last traced block
    // A sequential run inside the trace: the trace says what comes next, no window past it.
    const q = new TraceReadAhead(10_000, BS, [100, 101, 500]);
    expect(q.onRead(100, 100, true)).toEqual([101, 500]);
    expect(q.onRead(101, 101, false)).toBeNull();
    // Past the trace, a stream of its own: a window once a second read continues it.
    expect(q.onRead(102, 102, true)).toBeNull();
    expect(q.onRead(103, 103, true)).toEqual({ from: 104, to: 105 });
  });

  it('a trace whose guesses the VM does not read is dropped for the sequential rule; one it follows is kept', () => {
    const hostile = scatteredOrder(10_000, 10_000, 99);
    const p = new TraceReadAhead(10_000, BS, hostile);
    // The VM reads a sequential run of its own: every read is in the (whole-disk) trace, no guess is read.
    let firstRange: number | null = null;
    for (let i = 0; i < 600; i++) {
      const r = p.onRead(2000 + i, 2000 + i, true);
      if (firstRange === null && r && !Array.isArray(r)) firstRange = i;
    }
    expect(p.trusted).toBe(false);
    // Distrusted after MIN_TRACE_GUESSES guesses (a guess window per miss), then the run's own windows.
    expect(firstRange).not.toBeNull();
    expect(firstRange!).toBeLessThanOrEqual(MIN_TRACE_GUESSES / TRACE_WINDOW + 2);
    const good = scatteredOrder(10_000, 2000, 5);
    const q = new TraceReadAhead(10_000, BS, good);
    for (const i of good) q.onRead(i, i, false);
    expect(q.trusted).toBe(true);
  });

  it('drops indices past the disk and repeats; a trace with none left is no trace', () => {
    const p = new TraceReadAhead(100, BS, [3, 250, 3, 7, -1, 1.5, 99]);
    expect(p.traceLength).toBe(3);
    expect(p.onRead(3, 3, true)).toEqual([7, 99]);
    expect(readAheadPolicy(undefined, 100, BS, [3, 7])!.name).toBe('trace');
    expect(readAheadPolicy('trace', 100, BS, [3, 7])).toMatchObject({ name: 'trace', aheadBudget: 1, joinAhead: false });
    expect(readAheadPolicy(undefined, 100, BS, [])!.name).toBe('sequential'); // the image's first boot: today's policy
    expect(readAheadPolicy(undefined, 100, BS, [100, 5000])!.name).toBe('sequential');
    expect(readAheadPolicy('trace', 100, BS)!.name).toBe('sequential');
    expect(readAheadPolicy('sequential', 100, BS, [3, 7])!.name).toBe('sequential'); // the bench's first boot
  });
});

const streamed = (blocks: number): ReturnType<typeof streamedDisk> => streamedDisk(dir, blocks);

async function readBlock(disk: LocalDisk, i: number): Promise<void> {
  const got = await disk.read(i * BS + 4096, 4096);
  expect(got.every((x) => x === (i & 0xff))).toBe(true);
}

describe('LocalDisk reads ahead by a boot trace', () => {
  it('a second boot that reads what the first one did finds most blocks local, fetched in trace order, within 2x', async () => {
    const order = scatteredOrder(2048, 400);
    const { disk, asked } = streamed(2048);
    disk.setReadAhead(readAheadPolicy(undefined, 2048, BS, order)!);
    for (const i of order) await readBlock(disk, i);
    await disk.commitPresent();
    expect(disk.stats.readBlocks).toBe(400);
    expect(disk.stats.readAheadUsed).toBeGreaterThan(350); // guesses the VM then read
    expect(disk.stats.onDemandFetches).toBeLessThan(100); // against 400 without the trace
    // The traced blocks came once each, in the trace's order, and nothing else (no sequential windows inside it).
    expect(asked).toEqual(order);
    expect((disk as unknown as { readAhead: TraceReadAhead }).readAhead.trusted).toBe(true);
    expect(disk.stats.onDemandBytes).toBeLessThanOrEqual(2 * disk.stats.readBlockBytes);
    await disk.close();
  });

  it('a trace that is wrong (stale or hostile: every block of the disk) fetches at most as many blocks ahead as the VM read', async () => {
    const { disk } = streamed(2048);
    const hostile = scatteredOrder(2048, 2048, 99);
    const reads = scatteredOrder(2048, 300, 3);
    disk.setReadAhead(readAheadPolicy(undefined, 2048, BS, hostile)!);
    for (const i of reads) await readBlock(disk, i);
    await disk.commitPresent();
    expect(disk.stats.readAheadBlocks).toBeGreaterThan(0);
    expect(disk.stats.readAheadBlocks - disk.stats.readAheadUsed).toBeLessThanOrEqual(disk.stats.readBlocks);
    expect(disk.stats.onDemandBlocks).toBeLessThanOrEqual(2 * disk.stats.readBlocks);
    // and the trace is dropped once its guesses prove wrong: far fewer than the budget's worth fetched ahead.
    expect((disk as unknown as { readAhead: TraceReadAhead }).readAhead.trusted).toBe(false);
    expect(disk.stats.readAheadBlocks).toBeLessThan(disk.stats.readBlocks);
    await disk.close();
  });

  it('records the blocks the VM reads for the first time, in order, each once', async () => {
    const { disk } = streamed(64);
    const rec = new BootTraceRecorder();
    disk.firstReads = rec;
    for (const i of [9, 3, 9, 40, 3, 41]) await readBlock(disk, i);
    await disk.read(20 * BS + BS - 4096, 8192); // one read over two blocks
    expect(rec.blocks).toEqual([9, 3, 40, 41, 20, 21]);
    await disk.close();
  });
});

describe('BootTraceRecorder and parseBootTrace', () => {
  it('stops at its limit, and RECORD_MS after the first read', () => {
    const r = new BootTraceRecorder(3);
    for (const i of [1, 2, 3, 4, 5]) r.note(i);
    expect(r.blocks).toEqual([1, 2, 3]);
    let t = 1000;
    const s = new BootTraceRecorder(100, () => t);
    s.note(1);
    t += RECORD_MS;
    s.note(2);
    t += 1;
    s.note(3);
    expect(s.blocks).toEqual([1, 2]);
  });

  it('accepts a trace of distinct indices and refuses everything else with BOOT_TRACE_INVALID', () => {
    expect(parseBootTrace({ image: 'win11', imageVersion: 2, blocks: [5, 0, 9] })).toEqual({ image: 'win11', imageVersion: 2, blocks: [5, 0, 9] });
    const bad: unknown[] = [
      null, [], { image: 'w', imageVersion: 1 }, { image: '', imageVersion: 1, blocks: [] }, { image: 'w', imageVersion: 0, blocks: [] },
      { image: 'w', imageVersion: '1', blocks: [] }, { image: 'w', imageVersion: 1, blocks: [1, 1] }, { image: 'w', imageVersion: 1, blocks: [-1] },
      { image: 'w', imageVersion: 1, blocks: [1.5] }, { image: 'w', imageVersion: 1, blocks: ['3'] }, { image: 'w', imageVersion: 1, blocks: [2 ** 31] },
      { image: 'w', imageVersion: 1, blocks: Array.from({ length: MAX_BOOT_TRACE_BLOCKS + 1 }, (_, i) => i) },
    ];
    for (const b of bad) {
      let err: unknown = null;
      try {
        parseBootTrace(b);
      } catch (e) {
        err = e;
      }
      expect(err instanceof CarryonError && err.code, JSON.stringify(b)?.slice(0, 80)).toBe('BOOT_TRACE_INVALID');
    }
  });
});
