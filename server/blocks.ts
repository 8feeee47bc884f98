// The server's block work: publishing an image, accepting uploaded blocks and patches, checking a
// commit's blocks, and the scopes that decide which blocks a caller may read or name.
// Every block enters the store verified, and enters the index only after its file is durable.
// Storage is deduplicated across users; knowledge is not: a hash is not a capability (BlockScope).
import {
  applyBlockPatch, CarryonError, type BufferPool, decodeBlock, decodeFrame, decodeManifest, encodeBlock, encodeManifest, manifestId, parseUploadEntryName, scanImage, unpackEntries, verifyPlain,
  MAX_UPLOAD_ENTRY_BYTES, MAX_UPLOAD_REQUEST_BYTES, type BlockId, type BlockStore, type DiskManifest, type HoleMode, type TarEntry, type UploadResult,
} from '../src/index.js';
import type { Meta } from './meta.js';
import type { Actor } from './audit.js';
import { crashPoint } from './crash-point.js';
import type { IngestLease, IngestLeases } from './gc.js';

export interface LoadedManifest {
  id: BlockId;
  manifest: DiskManifest;
  ids: Set<BlockId>;
}

/** Decoded manifests with their id sets, kept for the few checkouts in flight. */
export class ManifestCache {
  private readonly map = new Map<BlockId, LoadedManifest>();
  constructor(private readonly meta: Meta, private readonly max = 8) {}

  async get(id: BlockId): Promise<LoadedManifest> {
    const hit = this.map.get(id);
    if (hit) {
      this.map.delete(id);
      this.map.set(id, hit);
      return hit;
    }
    const manifest = decodeManifest(await this.meta.getManifest(id));
    const loaded = { id, manifest, ids: new Set(manifest.uniqueIds()) };
    this.map.set(id, loaded);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value!);
    return loaded;
  }
}

/**
 * What a user may name without sending its bytes: the blocks of the manifests given (their checked-out
 * version, the image version their desktop derives from) and the blocks they have sent themselves or
 * that their data held (user_blocks). Every "missing" answer and every commit check is computed here, so
 * a user learns nothing of, and can reference nothing from, another user's data: a block outside the
 * scope is "missing" even when the store holds it, and sending it (proof of possession) adds it to the
 * scope, while the store keeps one copy.
 */
export class BlockScope {
  constructor(private readonly meta: Meta, readonly userId: number, private readonly manifests: LoadedManifest[] = []) {}

  /**
   * Ids (of those given) outside the scope: the ones to send. Those in scope through the user's own
   * blocks are marked seen: the caller will rely on them, so GC spares them for its grace period (blocks
   * of the scope's manifests are referenced by live versions already).
   */
  async missing(ids: Iterable<BlockId>): Promise<BlockId[]> {
    return (await this.split(ids)).missing;
  }

  /** `missing`, and the ids in scope only through the user's own blocks (not through the scope's manifests). */
  async split(ids: Iterable<BlockId>): Promise<{ missing: BlockId[]; owned: BlockId[] }> {
    const rest: BlockId[] = [];
    for (const id of ids) if (!this.manifests.some((m) => m.ids.has(id))) rest.push(id);
    if (rest.length === 0) return { missing: rest, owned: [] };
    const held = await this.meta.userHolds(this.userId, rest);
    const owned = rest.filter((id) => held.has(id));
    if (owned.length > 0) await this.meta.touchBlocks(owned);
    return { missing: rest.filter((id) => !held.has(id)), owned };
  }
}

/** Scratch per block of a read-ahead batch: a 64 KiB block's frame and its slack (larger frames get buffers of their own). */
const SCRATCH_PER_BLOCK = 66 * 1024;
/** The size of readAhead's scratch buffers (`copies`): a batch of 128 blocks (window 16). */
export const READ_AHEAD_SCRATCH = 128 * SCRATCH_PER_BLOCK;

/** Uploaded blocks are looked up in the index this many at a time (≤ 4 MiB of 64 KiB blocks held). */
const UPLOAD_LOOKUP_BATCH = 64;

/**
 * Index rows are committed after a store sync every this many new blocks (and at the end), or sooner
 * once they hold INDEX_BATCH_BYTES. Each sync of an FsBlockStore is a `sync -f` child process, ~6 ms of
 * the server's CPU to start here: every 256 blocks that was 64 per GiB of 64 KiB blocks received,
 * ~0.4 s/GiB (docs/performance.md, "Server work per block"). A crash loses at most one unindexed batch.
 */
const INDEX_BATCH = 1024;
const INDEX_BATCH_BYTES = 64 * 1024 * 1024;

/**
 * Puts verified blocks into the store and their rows into the index. The store writes without a
 * per-file fsync; every INDEX_BATCH blocks one sync of the store's file system makes them durable and
 * only then are their rows committed, in one transaction. So a row always means a durable block, and
 * a crash loses at most the last unindexed batch, which a re-run sends again. (Per-file fsync plus an
 * autocommit per row measured ~3.4 s for 2,000 uploaded blocks here.) With `grantTo`, every block added
 * (new or already stored) joins that user's scope in the same transaction as its index row.
 */
export class BlockIngest {
  private rows: Array<[BlockId, number, number]> = [];
  /** Stored bytes of `rows`. */
  private rowBytes = 0;
  private grants: BlockId[] = [];
  /** Ids stored but not yet indexed (this batch and the ones whose sync is under way). */
  private readonly unindexed = new Set<BlockId>();
  /** The sync and index commit of earlier batches, chained so rows are committed in order. */
  private indexing: Promise<void> = Promise.resolve();

  /** The ingest lease (server/gc.ts) this upload holds from its first block to its flush. */
  private lease: Promise<IngestLease> | null = null;

  constructor(private readonly meta: Meta, private readonly store: BlockStore, private readonly grantTo: number | null = null, private readonly leases: IngestLeases | null = null) {}

  /** Store a block unless the index or this ingest has it; returns its stored size, or 0 when it was there. */
  async add(id: BlockId, plain: Buffer): Promise<number> {
    return (await this.addMany([{ id, plain }]))[0]!;
  }

  /**
   * `add` for several blocks with one index lookup (a round trip each to PostgreSQL: per block, they
   * were most of a check-in's transactions).
   */
  async addMany(blocks: Array<{ id: BlockId; plain: Buffer; encoded?: Buffer }>): Promise<number[]> {
    // No store write before the lease: a collector sweeping now must finish first, or it could delete
    // bytes this upload finds present.
    if (this.leases) await (this.lease ??= this.leases.acquire());
    const ask = [...new Set(blocks.map((b) => b.id).filter((id) => !this.unindexed.has(id)))];
    const absent = new Set(ask.length > 0 ? await this.meta.unindexed(ask) : []);
    const sizes: number[] = [];
    for (const { id, plain, encoded: given } of blocks) {
      if (this.grantTo !== null) this.grants.push(id);
      if (this.unindexed.has(id) || !absent.has(id)) {
        sizes.push(0);
        continue;
      }
      // A frame the caller decoded and verified (a persona chunk sent encoded) is kept as it came: no
      // second compression.
      const encoded = given ?? encodeBlock(plain);
      await this.store.put(id, encoded, plain);
      this.rows.push([id, plain.length, encoded.length]);
      this.rowBytes += encoded.length;
      this.unindexed.add(id);
      sizes.push(encoded.length);
    }
    if (this.rows.length >= INDEX_BATCH || this.rowBytes >= INDEX_BATCH_BYTES || this.grants.length >= INDEX_BATCH) this.startIndexing();
    return sizes;
  }

  /**
   * Sync and index the current batch in the background: ingestion goes on meanwhile (a sync waited on
   * inline stalled the upload ~0.1-0.2 s per batch). A failure surfaces at flush().
   */
  private startIndexing(): void {
    const rows = this.rows;
    const grants = this.grants;
    this.rows = [];
    this.rowBytes = 0;
    this.grants = [];
    const next = this.indexing.then(async () => {
      if (rows.length > 0) await this.store.sync();
      const lease = this.lease ? (await this.lease).id : undefined;
      await this.meta.addBlocks(rows, this.grantTo === null ? undefined : { userId: this.grantTo, ids: grants }, lease);
      for (const [id] of rows) this.unindexed.delete(id);
    });
    next.catch(() => undefined); // not unhandled: flush() rethrows it
    this.indexing = next;
  }

  /** Wait until every block added so far is durable and indexed; the lease is given back either way. */
  async flush(): Promise<void> {
    try {
      if (this.rows.length > 0 || this.grants.length > 0) this.startIndexing();
      await this.indexing;
    } finally {
      const lease = this.lease;
      this.lease = null;
      if (lease) await lease.then((l) => l.release(), () => undefined);
    }
  }
}

export interface PublishResult {
  image: string;
  version: number;
  manifestId: BlockId;
  size: number;
  blockSize: number;
  blocks: number;
  holes: number;
  newBlocks: number;
  newPlainBytes: number;
  storedBytes: number;
  /** Bytes of the image read: only the blocks that hold data when holes were skipped (scanHoles 'seek-data'). */
  scanBytesRead: number;
  scanHoles: HoleMode;
}

export async function publishImage(meta: Meta, store: BlockStore, leases: IngestLeases | null, name: string, file: string, blockSize: number, actor: Actor, onProgress?: (done: number, total: number) => void): Promise<PublishResult> {
  let newBlocks = 0;
  let newPlainBytes = 0;
  let storedBytes = 0;
  const ingest = new BlockIngest(meta, store, null, leases);
  const { manifest, bytesRead, holes: holeMode } = await scanImage(file, {
    blockSize,
    onProgress,
    onChanged: async (_i, id, plain) => {
      const stored = await ingest.add(id, plain);
      if (stored === 0) return;
      newBlocks++;
      newPlainBytes += plain.length;
      storedBytes += stored;
    },
  });
  await ingest.flush();
  const encoded = encodeManifest(manifest);
  const id = manifestId(encoded);
  await meta.putManifest(id, encoded, manifest);
  const version = await meta.publishImageVersion(name, id, actor, { size: manifest.size, blockSize, newBlocks });
  let holes = 0;
  for (let i = 0; i < manifest.count; i++) if (manifest.isHole(i)) holes++;
  return { image: name, version, manifestId: id, size: manifest.size, blockSize, blocks: manifest.count, holes, newBlocks, newPlainBytes, storedBytes, scanBytesRead: bytesRead, scanHoles: holeMode };
}

/**
 * Read an upload tar (already decompressed) and store each block: `b/<id>` carries the plaintext,
 * `z/<id>` the block's zstd frame (decoded once, bounded, hashed once, then stored as sent: no second
 * compression here), `p/<id>/<base>` a patch against a block of the checkout's base version. Nothing
 * unverified is stored; an entry that fails stops the upload, and blocks stored before it stay (they
 * are valid and a retry need not send them again).
 */
export async function ingestUpload(meta: Meta, store: BlockStore, leases: IngestLeases | null, base: LoadedManifest, scope: BlockScope, body: NodeJS.ReadableStream,
  maxPlainBytes = MAX_UPLOAD_REQUEST_BYTES): Promise<UploadResult> {
  const result: UploadResult = { stored: 0, alreadyHad: 0, plainBytes: 0, framesKept: 0 };
  // Frames and patches inflate: a 1 GiB tar of ~1 KB entries could make the server decode and hash ~64
  // GiB. The blocks one request makes count against the same budget as its tar (the laptop sends 256 MiB).
  let plainBudget = maxPlainBytes;
  const maxBlock = base.manifest.blockSize;
  const ingest = new BlockIngest(meta, store, scope.userId, leases);
  // Verified blocks wait here to be looked up and stored UPLOAD_LOOKUP_BATCH at a time.
  let pending: Array<{ id: BlockId; plain: Buffer; encoded?: Buffer }> = [];
  const drain = async (): Promise<void> => {
    const batch = pending;
    pending = [];
    if (batch.length === 0) return;
    // "Already had" only for what the sender could name before: whether another user's data holds it is not said.
    const missing = new Set((await scope.split(batch.map((b) => b.id))).missing);
    await ingest.addMany(batch);
    for (const b of batch) {
      if (missing.has(b.id)) {
        result.stored++;
        if (b.encoded) result.framesKept!++;
      } else result.alreadyHad++;
      result.plainBytes += b.plain.length;
      crashPoint('upload-block-stored');
    }
  };
  try {
    await unpackEntries(body, MAX_UPLOAD_ENTRY_BYTES, async ({ name, data }) => {
      const e = parseUploadEntryName(name);
      let plain: Buffer;
      let encoded: Buffer | undefined;
      if (e.kind === 'block') {
        if (data.length > maxBlock) throw new CarryonError('BLOCK_CORRUPT', `block ${e.id.slice(0, 12)}… is larger than the block size ${maxBlock}`, { id: e.id });
        plain = data;
      } else if (e.kind === 'frame') {
        // One frame and nothing else, its content size checked against the block size before it is
        // decoded: a bomb or padding is refused (BLOCK_CORRUPT) before costing memory or disk.
        try {
          plain = decodeFrame(data, maxBlock);
        } catch (err) {
          throw new CarryonError('BLOCK_CORRUPT', `uploaded frame of block ${e.id.slice(0, 12)}… is refused: ${(err as Error).message}`, { id: e.id }, err);
        }
        encoded = data;
      } else {
        if (!base.ids.has(e.base)) { // a block of a committed version is in the store by construction
          throw new CarryonError('BLOCK_NOT_FOUND', `patch base ${e.base.slice(0, 12)}… is not a block of the checked-out version`, { id: e.base });
        }
        // The base is decoded, not verified: the block it rebuilds is, so a damaged base cannot
        // enter the store (it fails the check below as BLOCK_CORRUPT, as a failed getBlock would).
        plain = applyBlockPatch(decodeBlock(await store.getEncoded(e.base), maxBlock), data, maxBlock);
      }
      plainBudget -= plain.length;
      if (plainBudget < 0) {
        throw new CarryonError('PAYLOAD_TOO_LARGE', `this upload makes more than ${maxPlainBytes} bytes of blocks: send it in smaller requests`, { max: maxPlainBytes });
      }
      // The one SHA-256 of this block on the server: verifyPlain remembers it, so the store's put gate
      // (checkPut) does not hash it again.
      try {
        verifyPlain(e.id, plain);
      } catch {
        throw new CarryonError('BLOCK_CORRUPT', `uploaded block ${e.id.slice(0, 12)}… does not match its hash`, { id: e.id });
      }
      pending.push(encoded ? { id: e.id, plain, encoded } : { id: e.id, plain });
      if (pending.length >= UPLOAD_LOOKUP_BATCH) await drain();
    }, { maxTotalBytes: MAX_UPLOAD_REQUEST_BYTES });
    await drain();
  } finally {
    // What arrived whole and verified before a failure is kept (best effort: the failure is what the
    // client hears): a retry need not send it again.
    await drain().catch(() => undefined);
    await ingest.flush();
  }
  return result;
}

/**
 * The encoded blocks of `ids` as tar entries, read a window ahead of the consumer so the disk and the
 * socket are busy at once (16 reads in flight: 3x faster than one by one from a cold page cache).
 * `copies`: the consumer is done with an entry's bytes once it asks for the next (writeEntriesChunked
 * copies them), so a store that reads batches reads them into two scratch buffers in turn, taken from
 * this pool (of buffers of READ_AHEAD_SCRATCH bytes) and given back at the end.
 */
export async function* readAhead(store: BlockStore, ids: BlockId[], window = 16, opts: { copies?: BufferPool } = {}): AsyncGenerator<TarEntry> {
  if (store.getEncodedMany) {
    // A store that joins neighbouring blocks into one read (S3: one GET per ~8 MiB instead of one per
    // block; files: synchronous reads into shared buffers, no thread-pool round trips) gets them window*8
    // at a time (8 MiB of 64 KiB blocks), the next batch read while this one is sent. With `copies`,
    // batch k reads into scratch k % 2: batch k+2 is asked for only after every entry of batch k was taken.
    const batch = window * 8;
    const pool = opts.copies && opts.copies.size >= batch * SCRATCH_PER_BLOCK ? opts.copies : null;
    const scratch = pool && ids.length > 0 ? [pool.take(), pool.take()] : null;
    let next: Promise<Buffer[]> | null = null;
    const read = (i: number): Promise<Buffer[]> => {
      const p = store.getEncodedMany!(ids.slice(i, i + batch), scratch?.[(i / batch) % 2]);
      p.catch(() => undefined); // awaited below, unless the connection closed first
      return p;
    };
    try {
      next = ids.length > 0 ? read(0) : null;
      for (let i = 0; next; i += batch) {
        const got = await next;
        next = i + batch < ids.length ? read(i + batch) : null;
        for (let j = 0; j < got.length; j++) yield { name: ids[i + j]!, data: got[j]! };
      }
    } finally {
      // A read still under way (the connection closed mid-answer) may write into its scratch: that one
      // is left to the garbage collector.
      const pending = next;
      if (scratch) {
        if (pending === null) scratch.forEach((b) => pool!.give(b));
        else void pending.then(() => scratch.forEach((b) => pool!.give(b)), () => undefined);
      }
    }
    return;
  }
  const ahead: Array<Promise<Buffer>> = [];
  let next = 0;
  for (const id of ids) {
    while (ahead.length < window && next < ids.length) {
      const p = store.getEncoded(ids[next++]!);
      p.catch(() => undefined); // awaited below; this only silences reads abandoned by a closed connection
      ahead.push(p);
    }
    yield { name: id, data: await ahead.shift()! };
  }
}
