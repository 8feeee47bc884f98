// PackBlockStore compaction (src/store/pack-block-store.ts): dropped entries' bytes leave every file,
// the space comes back, every indexed block stays readable across a crash at each step (a real
// SIGKILL of a child process), and packs a live writer owns are never touched.
import { spawn, spawnSync } from 'node:child_process';
import { promises as fs, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockId, encodeBlock, getBlock, PackBlockStore, type BlockId } from '../../src/index.js';
import { prng, randomBytes } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = path.join(ROOT, 'dist/src/index.js');

/** Incompressible blocks: zstd stores them raw, so their plaintext is findable in a pack. */
function blocks(seed: number, n: number, size = 16 * 1024): Array<{ id: BlockId; plain: Buffer }> {
  const rng = prng(seed);
  return Array.from({ length: n }, () => {
    const plain = randomBytes(rng, size);
    return { id: blockId(plain), plain };
  });
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

/** How many of the needles (4 KiB samples, or ids) occur in some file under `dir`. */
function found(dir: string, needles: Buffer[]): number {
  const contents = filesUnder(dir).map((f) => readFileSync(f));
  return needles.filter((n) => contents.some((c) => c.includes(n))).length;
}

const samples = (bs: Array<{ plain: Buffer }>): Buffer[] => bs.map((b) => b.plain.subarray(4096, 8192));
const ids = (bs: Array<{ id: BlockId }>): Buffer[] => bs.map((b) => Buffer.from(b.id, 'hex'));
const packFiles = (dir: string): string[] => readdirSync(path.join(dir, 'packs'));
const packBytes = (dir: string): number => packFiles(dir).reduce((a, f) => a + statSync(path.join(dir, 'packs', f)).size, 0);

async function fill(dir: string, bs: Array<{ id: BlockId; plain: Buffer }>): Promise<void> {
  const s = new PackBlockStore(dir);
  for (const b of bs) await s.put(b.id, encodeBlock(b.plain), b.plain);
  await s.close();
}

async function expectReadable(dir: string, bs: Array<{ id: BlockId; plain: Buffer }>): Promise<void> {
  const s = new PackBlockStore(dir);
  try {
    for (const b of bs) expect((await getBlock(s, b.id)).equals(b.plain)).toBe(true);
  } finally {
    await s.close();
  }
}

describe('PackBlockStore.compact', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'carryon-compact-'));
  });
  afterEach(async () => fs.rm(dir, { recursive: true, force: true }));

  it('rewrites a pack holding dropped entries: the space comes back, no dropped byte or id stays in any file, the rest reads', async () => {
    const keep = blocks(1001, 40);
    const drop = blocks(1002, 40);
    await fill(dir, [...keep, ...drop].sort((a, b) => a.id.localeCompare(b.id))); // interleaved in one pack
    const s = new PackBlockStore(dir);
    try {
      for (const b of drop) await s.delete(b.id);
      expect(found(dir, samples(drop))).toBe(drop.length); // delete alone leaves every byte in place (today's bug)
      const before = packBytes(dir);
      const r = await s.compact();
      expect(r).toMatchObject({ packsRewritten: 1, blocksMoved: keep.length, skipped: false });
      expect(r.freedBytes).toBeGreaterThanOrEqual(drop.length * 16 * 1024);
      expect(before - packBytes(dir)).toBeGreaterThanOrEqual(drop.length * 16 * 1024);
      expect(found(dir, samples(drop))).toBe(0);
      expect(found(dir, ids(drop))).toBe(0); // secure_delete + a truncated WAL: the ids are gone from the index files too
      expect(found(dir, samples(keep))).toBe(keep.length);
      for (const b of keep) expect((await getBlock(s, b.id)).equals(b.plain)).toBe(true);
      for (const b of drop) expect(await s.has(b.id)).toBe(false);
      // Nothing left to do: a second compaction changes nothing.
      expect(await s.compact()).toMatchObject({ packsRewritten: 0, packsDeleted: 0, blocksMoved: 0 });
      // The store goes on: new puts land in a new pack and read back.
      const more = blocks(1003, 5);
      for (const b of more) await s.put(b.id, encodeBlock(b.plain), b.plain);
      for (const b of [...keep, ...more]) expect((await getBlock(s, b.id)).equals(b.plain)).toBe(true);
    } finally {
      await s.close();
    }
    await expectReadable(dir, keep);
  });

  it('unlinks a pack with no live entry at once, and seals and compacts its own pack', async () => {
    const s = new PackBlockStore(dir);
    try {
      const bs = blocks(1004, 20);
      for (const b of bs) await s.put(b.id, encodeBlock(b.plain), b.plain); // still this instance's open pack
      for (const b of bs) await s.delete(b.id);
      const r = await s.compact();
      expect(r.packsDeleted).toBe(1);
      expect(packFiles(dir)).toEqual([]);
      expect(found(dir, samples(bs))).toBe(0);
    } finally {
      await s.close();
    }
  });

  for (const step of ['copied', 'committed'] as const) {
    it(`a crash (SIGKILL) after the '${step}' step leaves every indexed block readable; the next open cleans the leftovers and the next compaction wipes`, async () => {
      const keep = blocks(1010, 30);
      const drop = blocks(1011, 30);
      await fill(dir, [...keep, ...drop].sort((a, b) => a.id.localeCompare(b.id)));
      const packsBefore = packFiles(dir);
      // A child process drops the blocks, starts a compaction and is killed at the step.
      const script = `import { PackBlockStore } from ${JSON.stringify(DIST)};
        const s = new PackBlockStore(${JSON.stringify(dir)});
        for (const id of ${JSON.stringify(drop.map((b) => b.id))}) await s.delete(id);
        await s.compact({ onStep: (st) => { if (st === ${JSON.stringify(step)}) process.kill(process.pid, 'SIGKILL'); } });
        console.log('not killed');`;
      const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
      expect(child.signal, child.stderr).toBe('SIGKILL');
      // Both packs are on disk at the moment of the crash: the old one and the copy.
      expect(packFiles(dir).length).toBe(2);
      await expectReadable(dir, keep);
      // Opening swept the leftover: the uncommitted copy (its writer is dead, nothing points at it)
      // or the old pack (no row names it any more).
      const after = packFiles(dir);
      expect(after.length).toBe(1);
      if (step === 'copied') {
        expect(after).toEqual(packsBefore);
        expect(found(dir, samples(drop))).toBe(drop.length); // not yet compacted
        const s = new PackBlockStore(dir);
        try {
          const r = await s.compact();
          expect(r.packsRewritten).toBe(1);
        } finally {
          await s.close();
        }
      } else {
        expect(after).not.toEqual(packsBefore);
      }
      expect(found(dir, samples(drop))).toBe(0);
      expect(found(dir, samples(keep))).toBe(keep.length);
      await expectReadable(dir, keep);
    });
  }

  it('never touches a pack a live writer owns; readers holding the old pack or none keep reading across a compaction', async () => {
    const old = blocks(1020, 20);
    await fill(dir, old);
    const reader = new PackBlockStore(dir);
    const writer = new PackBlockStore(dir);
    const compactor = new PackBlockStore(dir);
    try {
      expect((await getBlock(reader, old[0]!.id)).equals(old[0]!.plain)).toBe(true); // the reader holds the old pack open
      const fresh = blocks(1021, 10);
      for (const b of fresh) await writer.put(b.id, encodeBlock(b.plain), b.plain);
      await writer.sync();
      await compactor.delete(fresh[0]!.id);
      await compactor.delete(old[0]!.id);
      const r = await compactor.compact();
      expect(r.packsBusy).toBe(1); // the writer's pack: it may still append to it
      expect(r.packsRewritten).toBe(1); // the sealed one
      // The writer goes on appending to its pack and reading from it.
      const later = blocks(1022, 5);
      for (const b of later) await writer.put(b.id, encodeBlock(b.plain), b.plain);
      for (const b of [...fresh.slice(1), ...later]) expect((await getBlock(writer, b.id)).equals(b.plain)).toBe(true);
      // Readers: through the old descriptor, and fresh lookups that find the moved rows.
      for (const b of old.slice(1)) expect((await getBlock(reader, b.id)).equals(b.plain)).toBe(true);
      for (const b of old.slice(1)) expect((await getBlock(compactor, b.id)).equals(b.plain)).toBe(true);
      expect(found(dir, samples(old.slice(0, 1)))).toBe(0);
      expect(found(dir, samples(fresh.slice(0, 1)))).toBe(1); // still in the live writer's pack
      await writer.close(); // sealed
      const r2 = await compactor.compact();
      expect(r2.packsBusy).toBe(0);
      expect(r2.packsRewritten).toBe(1);
      expect(found(dir, samples(fresh.slice(0, 1)))).toBe(0);
      for (const b of [...fresh.slice(1), ...later, ...old.slice(1)]) expect((await getBlock(reader, b.id)).equals(b.plain)).toBe(true);
    } finally {
      await reader.close();
      await compactor.close();
    }
  });

  it('waits for another live compaction (or gives up, skipped); a lock left by a dead process is taken over', async () => {
    const bs = blocks(1030, 4);
    await fill(dir, bs);
    const lock = path.join(dir, 'compact.lock');
    const s = new PackBlockStore(dir);
    try {
      await s.delete(bs[0]!.id);
      writeFileSync(lock, `${process.ppid}:`); // a live process (vitest's parent)
      const busy = await s.compact({ lockWaitMs: 200 });
      expect(busy.skipped).toBe(true);
      expect(found(dir, samples(bs.slice(0, 1)))).toBe(1);
      // The holder releases it while we wait.
      setTimeout(() => void fs.rm(lock), 150);
      expect((await s.compact({ lockWaitMs: 5000 })).packsRewritten).toBe(1);
      // A dead holder: taken over at once.
      const dead = spawn(process.execPath, ['-e', '']);
      await new Promise((r) => dead.once('exit', r));
      writeFileSync(lock, `${dead.pid}:`);
      await s.delete(bs[1]!.id);
      expect(await s.compact({ lockWaitMs: 0 })).toMatchObject({ skipped: false, packsRewritten: 1 });
      expect(found(dir, samples(bs.slice(0, 2)))).toBe(0);
    } finally {
      await s.close();
    }
  });
});
