// FsBlockStore: one file per block under ROOT/blocks/<first two hex>/<id>, written to ROOT/tmp then
// renamed into place, so a reader never sees a partial block.
// Durability: 'fsync' syncs each file before its rename (the server: a committed version must never
// point at a block lost in a power cut). 'batch' skips the per-file fsync and syncs the whole file
// system in sync() (measured here: 3.4k files/s with per-file fsync, 6k without; the laptop cache
// calls sync() once per checkout, and every read is verified, so a block torn by a crash is refetched).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, promises as fs, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { isBlockId, type BlockId } from '../hash/index.js';
import type { BlockStore } from './block-store.js';
import { checkPut, getBlock, notFound } from './verify.js';

const run = promisify(execFile);

export interface FsBlockStoreOptions {
  durability?: 'fsync' | 'batch';
}

export class FsBlockStore implements BlockStore {
  readonly root: string;
  private readonly durability: 'fsync' | 'batch';
  private readonly madeDirs = new Set<string>();
  private readonly tmpTag = randomBytes(6).toString('hex');
  private tmpCount = 0;

  constructor(root: string, opts: FsBlockStoreOptions = {}) {
    this.root = path.resolve(root);
    this.durability = opts.durability ?? 'fsync';
  }

  private pathOf(id: BlockId): string {
    return path.join(this.root, 'blocks', id.slice(0, 2), id);
  }

  private ensureDir(dir: string): void {
    if (this.madeDirs.has(dir)) return;
    mkdirSync(dir, { recursive: true });
    this.madeDirs.add(dir);
  }

  async put(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): Promise<void> {
    checkPut(id, encoded, plain);
    const final = this.pathOf(id);
    // A file left by a crash before a batch sync may be torn: keep it only if it verifies.
    if (existsSync(final) && (this.durability === 'fsync' || (await this.verifies(id)))) return;
    const tmpDir = path.join(this.root, 'tmp');
    this.ensureDir(tmpDir);
    this.ensureDir(path.dirname(final));
    // Unique across processes (a random tag per instance) and within one (a counter): no random
    // bytes drawn per block.
    const tmp = path.join(tmpDir, `${id}.${this.tmpTag}${(this.tmpCount++).toString(36)}`);
    // Synchronous I/O, as in getEncoded: five small syscalls beat five thread-pool round trips.
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeSync(fd, encoded);
      if (this.durability === 'fsync') fsyncSync(fd);
    } catch (err) {
      closeSync(fd);
      rmSync(tmp, { force: true });
      throw err;
    }
    closeSync(fd);
    renameSync(tmp, final);
  }

  async getEncoded(id: BlockId): Promise<Buffer> {
    if (!isBlockId(id)) throw notFound(String(id));
    try {
      // Asynchronous, so callers can keep several reads in flight: 12k block files read 16 at a time
      // took 3.4 s from a cold page cache against 10.9 s one by one with readFileSync (warm: 0.33 s
      // against 0.27 s).
      return await fs.readFile(this.pathOf(id));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(id);
      throw err;
    }
  }

  private async verifies(id: BlockId): Promise<boolean> {
    try {
      await getBlock(this, id);
      return true;
    } catch {
      return false;
    }
  }

  async has(id: BlockId): Promise<boolean> {
    return isBlockId(id) && existsSync(this.pathOf(id));
  }

  async size(id: BlockId): Promise<number | null> {
    if (!isBlockId(id)) return null;
    try {
      return (await fs.stat(this.pathOf(id))).size;
    } catch {
      return null;
    }
  }

  async delete(id: BlockId): Promise<void> {
    if (!isBlockId(id)) return;
    await fs.rm(this.pathOf(id), { force: true });
  }

  async *list(): AsyncIterable<BlockId> {
    const top = path.join(this.root, 'blocks');
    let shards: string[];
    try {
      shards = (await fs.readdir(top)).sort();
    } catch {
      return;
    }
    for (const shard of shards) {
      if (!/^[0-9a-f]{2}$/.test(shard)) continue; // a stray file (.DS_Store) is not a shard
      for (const name of (await fs.readdir(path.join(top, shard))).sort()) {
        if (isBlockId(name) && name.startsWith(shard)) yield name;
      }
    }
  }

  async sync(): Promise<void> {
    if (this.durability === 'batch') {
      await fs.mkdir(this.root, { recursive: true });
      await syncFileSystem(this.root);
    }
  }
}

/** Make everything written to the file system holding `dir` durable: one syncfs(2), through coreutils'
 *  `sync -f` as Node exposes no syncfs. */
export async function syncFileSystem(dir: string): Promise<void> {
  await run('sync', ['-f', dir]);
}
