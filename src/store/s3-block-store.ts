// S3BlockStore: encoded blocks packed into objects of an S3 bucket (Ceph RGW, AWS S3, ...), found through
// small index objects that every instance lists and caches in memory. restic's repository layout is
// the model (packs plus separate index files); the details below are ours.
// Why packs: an object costs a request to write and, on RGW, ~10 ms and a RADOS object; 64 KiB blocks
// stored one per object are 16,384 PUTs per GiB. Measured here against RGW (scripts/bench/s3-bench.ts,
// 256 MiB of random 64 KiB blocks): packs took 128 PUTs per GiB checked in (49 MB/s) and 192 GETs per
// GiB checked out (64 index objects, 128 coalesced ranges; 77 MB/s), where one object per block took
// 16,384 PUTs (17 MB/s) and 16,384 GETs (30 MB/s).
//
// Layout under `<bucket>/<prefix>`:
//   packs/<P>   the encoded blocks of one upload batch, concatenated, nothing else (P = 32 random hex).
//   index/<P>   the index of pack P, binary (INDEX_MAGIC "CRYS3IX1"): u32 LE entry count N, u32 LE
//               tombstone count T; N x (block id 32 bytes, offset u32 LE, length u32 LE) for pack P;
//               T x (block id 32 bytes, pack 16 bytes): entries of *other* packs that are deleted; then
//               the SHA-256 of everything before it. N = 0 means there is no pack P (an index object
//               that carries only tombstones, written by a sync that had deletes but no puts).
//
// Writes: put() verifies (checkPut) and appends a copy to the open batch in memory; a batch is sealed
// when it reaches `packBytes` (16 MiB) or at sync(), and sealed batches upload one at a time, in order:
// first packs/<P>, then index/<P>. sync() returns when every batch sealed so far is uploaded, so the
// server's "sync, then record the blocks in the database" (server/blocks.ts BlockIngest, every 256
// blocks) maps to one pack and one index PUT per 256 blocks. Uploads of full batches run in the
// background while puts go on; at most MAX_SEALED batches wait (then put waits: memory is bounded).
// Crash safety: an index object is written only after its pack is whole (S3 PUTs are atomic), so a
// crash between the two leaves an unreferenced pack, invisible to readers, which compact() deletes
// once it is older than `orphanGraceMs` (a pack younger than that may be another instance's batch
// whose index is still on its way). A batch whose upload failed stays queued; the next sync() retries it.
//
// Reads: at open, the store LISTs index/ and fetches every index object into a map id -> locations.
// A block read is one ranged GET of its pack. getEncodedMany() groups the ids of one pack, sorts them
// by offset and joins neighbours (gap <= 64 KiB, range <= 16 MiB) into one GET: a check-out of blocks
// written together reads as much a request as the caller asks for at once (readAhead: 8 MiB). Blocks still in memory (not uploaded yet) are served from it.
// Refresh: another instance may have written a block since. A miss in has/size/getEncoded LISTs
// index/ again and fetches only index objects not seen before (and forgets ones that are gone). Misses
// share one refresh in flight, and a new one starts at most every `refreshIntervalMs` (1 s): a flood
// of misses costs one LIST a second, not one a miss. has() and size() answer from what is known when
// a refresh is not due; getEncoded() waits for a refresh that began after it was called, so a block
// another instance synced before the call is always found. A read whose pack is gone (a compaction
// elsewhere moved the block) refreshes and looks again.
//
// Deletes: delete() drops every location of the id this instance knows and records tombstones (id,
// pack) that go out in the next index object (at sync() or close(); a sync with deletes only writes an
// index object with N = 0). A tombstone names a copy, not an id, so a later put of the same id (a new
// copy in a new pack) is live again without any clock. A copy another instance wrote concurrently and
// this one has not seen survives the delete (it is a valid block; the server's GC decides from its
// database and runs again).
//
// Compaction (compact(), for GC): after a sync and a full refresh, every pack whose live bytes are below
// `maxLiveFraction` (0.5) of its size, or that is smaller than `smallPackBytes` (when there are two or
// more such), is rewritten: its live blocks that have no live copy in a kept pack are read (one GET a
// pack), verified, and written into new packs with their indexes. Packs with nothing live, and
// orphans older than the grace period, are deleted. Order, each step durable before the next:
//   1. PUT the new packs, then their index objects (which also carry the still-needed tombstones of the
//      index objects about to go). A crash here leaves duplicate copies: both valid.
//   2. DELETE the index objects of the packs being dropped (and tombstone-only ones consolidated in 1).
//      From here the old packs are unreferenced; a crash leaves orphans for the next compaction.
//   3. DELETE the dropped packs and old orphans.
// So at every moment each live block has an index entry pointing at a whole pack. One compaction at a
// time per bucket (GC runs it from one place); a second concurrent one wastes work but needs no lock for
// the live blocks, since each only deletes what its own step 1 already copied or what was dead.
//
// Limits: the index lives in memory (~200 bytes a block: ~3 GiB per TiB of 64 KiB blocks); a bucket
// larger than that wants the index in SQLite as PackBlockStore keeps it.
// Errors: a missing block is BLOCK_NOT_FOUND; a damaged index object or a short read is IO_ERROR; the
// network and the object store fail as IO_ERROR "object store ... is unreachable" after retries (see
// s3-client.ts). Credentials never appear in a message or in error data.
import { createHash, randomBytes } from 'node:crypto';
import { CarryonError } from '../errors/index.js';
import { isBlockId, type BlockId } from '../hash/index.js';
import type { BlockStore } from './block-store.js';
import { S3Client, type S3Object, type S3Stats } from './s3-client.js';
import { checkPut, notFound } from './verify.js';

const INDEX_MAGIC = Buffer.from('CRYS3IX1', 'ascii');
const ENTRY_BYTES = 40;
const TOMB_BYTES = 48;
const MAX_SEALED = 2;
const COALESCE_GAP = 64 * 1024;
const COALESCE_MAX = 16 * 1024 * 1024;
const FETCH_CONCURRENCY = 8;

export interface S3BlockStoreOptions {
  /** `http://127.0.0.1:7480` or `https://s3.example.com`. */
  endpoint: string;
  bucket: string;
  /** Key prefix inside the bucket ('' or 'a/b'); a trailing slash is added. */
  prefix?: string;
  region?: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** A batch is sealed and uploaded when it holds this many bytes (default 16 MiB). */
  packBytes?: number;
  /** A miss starts at most one index refresh per this many ms (default 1000). */
  refreshIntervalMs?: number;
  /** How long transient failures are retried (default 30 s). */
  retryBudgetMs?: number;
}

export interface S3CompactOptions {
  /** Rewrite a pack whose live bytes are below this fraction of its size (default 0.5). */
  maxLiveFraction?: number;
  /** Packs smaller than this are merged when there are two or more (default 4 MiB; 0: never). */
  smallPackBytes?: number;
  /** Unreferenced packs (and index objects whose pack is gone) older than this are deleted (default 1 h). */
  orphanGraceMs?: number;
  /** Test hook: called after step 1 (copies uploaded) and step 2 (old index objects deleted); a throw there is a crash. */
  onStep?: (step: 'copied' | 'unindexed') => void;
}

export interface S3CompactReport {
  packsRewritten: number;
  packsDeleted: number;
  orphansDeleted: number;
  indexesDeleted: number;
  blocksMoved: number;
  /** Packs left alone because a live entry failed verification (reported, never copied). */
  packsCorrupt: number;
  /** Sizes of all pack and index objects under the prefix before and after. */
  bytesBefore: number;
  bytesAfter: number;
}

/** Requests by kind and bytes moved, for benchmarks (requests per GiB). */
export type S3BlockStoreStats = S3Stats;

interface Loc {
  pack: string;
  offset: number;
  length: number;
}

interface IndexEntry {
  id: BlockId;
  offset: number;
  length: number;
}

interface IndexInfo {
  entries: IndexEntry[];
  tombstones: Array<{ id: BlockId; pack: string }>;
  size: number;
  lastModified: number;
}

interface Batch {
  pack: string;
  entries: Map<BlockId, Buffer>;
  bytes: number;
  tombstones: Array<{ id: BlockId; pack: string }>;
  /** Set when sealed: the pack body and the index body. */
  body?: Buffer[];
  index?: Buffer;
  offsets?: Map<BlockId, Loc>;
}

function newPackId(): string {
  return randomBytes(16).toString('hex');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Run `fn` over items with at most `n` in flight. */
async function each<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

export function encodeS3Index(entries: readonly IndexEntry[], tombstones: ReadonlyArray<{ id: BlockId; pack: string }>): Buffer {
  const body = Buffer.alloc(16 + entries.length * ENTRY_BYTES + tombstones.length * TOMB_BYTES + 32);
  INDEX_MAGIC.copy(body, 0);
  body.writeUInt32LE(entries.length, 8);
  body.writeUInt32LE(tombstones.length, 12);
  let o = 16;
  for (const e of entries) {
    body.write(e.id, o, 'hex');
    body.writeUInt32LE(e.offset, o + 32);
    body.writeUInt32LE(e.length, o + 36);
    o += ENTRY_BYTES;
  }
  for (const t of tombstones) {
    body.write(t.id, o, 'hex');
    body.write(t.pack, o + 32, 'hex');
    o += TOMB_BYTES;
  }
  createHash('sha256').update(body.subarray(0, o)).digest().copy(body, o);
  return body;
}

export function decodeS3Index(buf: Buffer, name: string): { entries: IndexEntry[]; tombstones: Array<{ id: BlockId; pack: string }> } {
  const bad = (why: string): CarryonError => new CarryonError('IO_ERROR', `index object ${name} in the object store is damaged (${why})`, { index: name });
  if (buf.length < 48 || !buf.subarray(0, 8).equals(INDEX_MAGIC)) throw bad('no index header');
  const n = buf.readUInt32LE(8);
  const t = buf.readUInt32LE(12);
  const end = 16 + n * ENTRY_BYTES + t * TOMB_BYTES;
  if (buf.length !== end + 32) throw bad('wrong length');
  if (!createHash('sha256').update(buf.subarray(0, end)).digest().equals(buf.subarray(end))) throw bad('checksum mismatch');
  const entries: IndexEntry[] = [];
  const tombstones: Array<{ id: BlockId; pack: string }> = [];
  let o = 16;
  for (let i = 0; i < n; i++, o += ENTRY_BYTES) entries.push({ id: buf.toString('hex', o, o + 32), offset: buf.readUInt32LE(o + 32), length: buf.readUInt32LE(o + 36) });
  for (let i = 0; i < t; i++, o += TOMB_BYTES) tombstones.push({ id: buf.toString('hex', o, o + 32), pack: buf.toString('hex', o + 32, o + 48) });
  return { entries, tombstones };
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * Parse `s3://[ACCESS:SECRET@]host[:port]/bucket[/prefix][?region=R]` (https) or `s3+http://...`
 * (plain http, loopback hosts only). Keys missing from the URL come from AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY; the region from `?region=`, AWS_REGION, or us-east-1. Keys in a URL are
 * percent-encoded. Messages never repeat the keys.
 */
export function parseS3Url(url: string, env: NodeJS.ProcessEnv = process.env): S3BlockStoreOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CarryonError('INVALID_ARGUMENT', 'an S3 block store URL is s3://[KEY:SECRET@]host[:port]/bucket[/prefix][?region=R] (or s3+http:// for a loopback host)');
  }
  const shown = `${u.protocol}//${u.host}${u.pathname}`;
  let scheme: 'http' | 'https';
  if (u.protocol === 's3:') scheme = 'https';
  else if (u.protocol === 's3+http:') scheme = 'http';
  else throw new CarryonError('INVALID_ARGUMENT', `not an S3 block store URL: ${shown}`);
  if (!u.hostname) throw new CarryonError('INVALID_ARGUMENT', `an S3 block store URL needs a host: ${shown}`);
  if (scheme === 'http' && !isLoopback(u.hostname)) {
    throw new CarryonError('INVALID_ARGUMENT', `s3+http:// (plain http) is only for a loopback host; use s3:// (https) for ${u.host}`, { host: u.host });
  }
  const [bucket, ...rest] = u.pathname.replace(/^\/+/, '').split('/');
  if (!bucket || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) throw new CarryonError('INVALID_ARGUMENT', `an S3 block store URL names a bucket after the host (3-63 lowercase letters, digits, dots or hyphens, as S3 requires): ${shown}`);
  const accessKeyId = u.username ? decodeURIComponent(u.username) : env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = u.password ? decodeURIComponent(u.password) : env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new CarryonError('INVALID_ARGUMENT', `no S3 credentials for ${shown}: put KEY:SECRET@ in the URL or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY`);
  }
  return {
    endpoint: `${scheme}://${u.host}`,
    bucket,
    prefix: rest.filter(Boolean).map(decodeURIComponent).join('/'),
    region: u.searchParams.get('region') ?? env.AWS_REGION ?? 'us-east-1',
    accessKeyId,
    secretAccessKey,
  };
}

export class S3BlockStore implements BlockStore {
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly packBytes: number;
  private readonly refreshIntervalMs: number;

  /** Locations of indexed, live copies. */
  private readonly live = new Map<BlockId, Loc[]>();
  /** Index objects seen, by pack id. */
  private readonly indexes = new Map<string, IndexInfo>();
  /** Deleted copies: `${pack}/${id}`. */
  private readonly tombs = new Set<string>();
  /** Blocks put but not yet indexed in the store: in the open batch or a sealed one. */
  private readonly pending = new Map<BlockId, { batch: Batch; data: Buffer }>();
  private current: Batch;
  private readonly sealed: Batch[] = [];
  private draining: Promise<void> | null = null;

  private opened: Promise<void> | null = null;
  private refreshing: Promise<void> | null = null;
  private refreshStartedAt = 0;
  private lastRefreshStart = -Infinity;
  private closed = false;

  constructor(opts: S3BlockStoreOptions) {
    const p = (opts.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.prefix = p ? `${p}/` : '';
    this.packBytes = opts.packBytes ?? 16 * 1024 * 1024;
    this.refreshIntervalMs = opts.refreshIntervalMs ?? 1000;
    this.client = new S3Client({
      endpoint: opts.endpoint,
      bucket: opts.bucket,
      region: opts.region ?? 'us-east-1',
      credentials: { accessKeyId: opts.accessKeyId, secretAccessKey: opts.secretAccessKey },
      retryBudgetMs: opts.retryBudgetMs,
    });
    this.current = this.newBatch();
  }

  static fromUrl(url: string, extra: Partial<S3BlockStoreOptions> = {}): S3BlockStore {
    return new S3BlockStore({ ...parseS3Url(url), ...extra });
  }

  /** Requests made so far by kind, and bytes up and down. */
  stats(): S3BlockStoreStats {
    return this.client.stats();
  }

  private newBatch(): Batch {
    return { pack: newPackId(), entries: new Map(), bytes: 0, tombstones: [] };
  }

  private key(kind: 'packs' | 'index', pack: string): string {
    return `${this.prefix}${kind}/${pack}`;
  }

  /** The first call loads the index; a failed load is tried again by the next call. */
  private ready(): Promise<void> {
    if (this.closed) return Promise.reject(new CarryonError('IO_ERROR', 'the S3 block store is closed'));
    if (!this.opened) {
      this.opened = this.refreshNow();
      this.opened.catch(() => {
        this.opened = null;
      });
    }
    return this.opened;
  }

  // ----- the in-memory index

  private addLoc(id: BlockId, loc: Loc): void {
    if (this.tombs.has(`${loc.pack}/${id}`)) return;
    const locs = this.live.get(id);
    if (!locs) this.live.set(id, [loc]);
    else if (!locs.some((l) => l.pack === loc.pack)) locs.push(loc);
  }

  private dropLoc(id: BlockId, pack: string): void {
    const locs = this.live.get(id);
    if (!locs) return;
    const kept = locs.filter((l) => l.pack !== pack);
    if (kept.length === 0) this.live.delete(id);
    else if (kept.length !== locs.length) this.live.set(id, kept);
  }

  private applyIndex(pack: string, info: IndexInfo): void {
    this.indexes.set(pack, info);
    for (const t of info.tombstones) {
      this.tombs.add(`${t.pack}/${t.id}`);
      this.dropLoc(t.id, t.pack);
    }
    for (const e of info.entries) this.addLoc(e.id, { pack, offset: e.offset, length: e.length });
  }

  private dropIndex(pack: string): void {
    const info = this.indexes.get(pack);
    if (!info) return;
    this.indexes.delete(pack);
    for (const e of info.entries) this.dropLoc(e.id, pack);
  }

  /** LIST index/, fetch the index objects not seen before, forget the ones gone. */
  private async refreshOnce(): Promise<void> {
    const known = new Set(this.indexes.keys()); // ours uploaded while the LIST runs are not "gone"
    const listed = new Map<string, S3Object>();
    const dir = `${this.prefix}index/`;
    for await (const o of this.client.list(dir)) {
      const name = o.key.slice(dir.length);
      if (/^[0-9a-f]{32}$/.test(name)) listed.set(name, o);
    }
    for (const name of known) if (!listed.has(name)) this.dropIndex(name);
    const fresh = [...listed.values()].filter((o) => !this.indexes.has(o.key.slice(dir.length)));
    await each(fresh, FETCH_CONCURRENCY, async (o) => {
      const name = o.key.slice(dir.length);
      const buf = await this.client.get(o.key);
      if (buf === null) return; // deleted since the LIST (a compaction): its replacement is listed too, or next time
      const { entries, tombstones } = decodeS3Index(buf, name);
      this.applyIndex(name, { entries, tombstones, size: o.size, lastModified: o.lastModified });
    });
  }

  /** A refresh now, or the one in flight if it began at or after `since` (performance.now()). Its failure is the caller's. */
  private refreshNow(since = performance.now()): Promise<void> {
    const inflight = this.refreshing;
    if (inflight) {
      if (this.refreshStartedAt >= since) return inflight;
      return inflight.catch(() => undefined).then(() => this.refreshNow(since));
    }
    this.refreshStartedAt = this.lastRefreshStart = performance.now();
    const p: Promise<void> = this.refreshOnce().finally(() => {
      if (this.refreshing === p) this.refreshing = null;
    });
    this.refreshing = p;
    return p;
  }

  /**
   * After a miss: a refresh that began at or after `since`, rate-limited to one per refreshIntervalMs
   * (misses in the meantime share the one in flight). With `wait` false, returns when none is due;
   * with true, waits for the next slot.
   */
  private async refreshAfterMiss(since: number, wait: boolean): Promise<void> {
    for (;;) {
      const inflight = this.refreshing;
      if (inflight) {
        if (this.refreshStartedAt >= since || !wait) return inflight;
        await inflight.catch(() => undefined);
        continue;
      }
      const due = this.lastRefreshStart + this.refreshIntervalMs - performance.now();
      if (due > 0) {
        if (!wait) return;
        await sleep(due);
        continue;
      }
      return this.refreshNow(since);
    }
  }

  private lookup(id: BlockId): { data: Buffer } | Loc | null {
    const p = this.pending.get(id);
    if (p) return { data: p.data };
    return this.live.get(id)?.[0] ?? null;
  }

  // ----- writes

  async put(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): Promise<void> {
    checkPut(id, encoded, plain);
    await this.ready();
    if (this.pending.has(id) || this.live.has(id)) return;
    const data = Buffer.from(encoded); // a copy: the caller may reuse its buffer
    this.current.entries.set(id, data);
    this.current.bytes += data.length;
    this.pending.set(id, { batch: this.current, data });
    if (this.current.bytes >= this.packBytes) {
      this.seal();
      const d = this.drain();
      d.catch(() => undefined); // surfaces at sync()
      if (this.sealed.length > MAX_SEALED) await d;
    }
  }

  /** Close the open batch (if it holds anything) and queue it for upload. */
  private seal(): void {
    const b = this.current;
    if (b.entries.size === 0 && b.tombstones.length === 0) return;
    this.current = this.newBatch();
    this.sealBatch(b);
  }

  /** Fix a batch's pack and index bodies and queue it. */
  private sealBatch(b: Batch): void {
    const entries: IndexEntry[] = [];
    const offsets = new Map<BlockId, Loc>();
    const body: Buffer[] = [];
    let offset = 0;
    for (const [id, data] of b.entries) {
      entries.push({ id, offset, length: data.length });
      offsets.set(id, { pack: b.pack, offset, length: data.length });
      body.push(data);
      offset += data.length;
    }
    b.body = body;
    b.offsets = offsets;
    b.index = encodeS3Index(entries, b.tombstones);
    this.sealed.push(b);
  }

  /** Upload the sealed batches in order; one drain at a time. */
  private drain(): Promise<void> {
    if (this.draining) return this.draining;
    const run = async (): Promise<void> => {
      try {
        while (this.sealed.length > 0) {
          const b = this.sealed[0]!;
          if (b.entries.size > 0) await this.client.put(this.key('packs', b.pack), b.body!);
          await this.client.put(this.key('index', b.pack), [b.index!]); // only after the pack is whole
          this.sealed.shift();
          const info: IndexInfo = { entries: [], tombstones: b.tombstones, size: b.index!.length, lastModified: Date.now() };
          for (const [id, loc] of b.offsets!) {
            info.entries.push({ id, offset: loc.offset, length: loc.length });
            if (this.pending.get(id)?.batch === b) this.pending.delete(id);
          }
          this.applyIndex(b.pack, info);
          b.body = undefined;
          b.entries.clear();
        }
      } finally {
        this.draining = null;
      }
    };
    this.draining = run();
    return this.draining;
  }

  async sync(): Promise<void> {
    await this.ready();
    this.seal();
    // A drain already running may have started before this seal and stop after its last batch: loop.
    while (this.sealed.length > 0) await this.drain();
  }

  async delete(id: BlockId): Promise<void> {
    if (!isBlockId(id)) return;
    await this.ready();
    const p = this.pending.get(id);
    if (p) {
      this.pending.delete(id);
      if (p.batch === this.current) {
        this.current.entries.delete(id);
        this.current.bytes -= p.data.length;
      } else {
        this.tombstone(id, p.batch.pack); // sealed: its index will name it, this cancels it
      }
    }
    for (const loc of this.live.get(id) ?? []) this.tombstone(id, loc.pack);
    this.live.delete(id);
  }

  private tombstone(id: BlockId, pack: string): void {
    this.tombs.add(`${pack}/${id}`);
    this.current.tombstones.push({ id, pack });
  }

  // ----- reads

  async has(id: BlockId): Promise<boolean> {
    return (await this.size(id)) !== null;
  }

  async size(id: BlockId): Promise<number | null> {
    if (!isBlockId(id)) return null;
    const since = performance.now();
    await this.ready();
    let hit = this.lookup(id);
    if (!hit) {
      await this.refreshAfterMiss(since, false);
      hit = this.lookup(id);
    }
    if (!hit) return null;
    return 'data' in hit ? hit.data.length : hit.length;
  }

  async getEncoded(id: BlockId): Promise<Buffer> {
    if (!isBlockId(id)) throw notFound(String(id));
    const since = performance.now();
    await this.ready();
    for (let attempt = 0; ; attempt++) {
      let hit = this.lookup(id);
      if (!hit) {
        await this.refreshAfterMiss(since, true);
        hit = this.lookup(id);
        if (!hit) throw notFound(id);
      }
      if ('data' in hit) return Buffer.from(hit.data);
      const buf = await this.client.get(this.key('packs', hit.pack), { offset: hit.offset, length: hit.length });
      if (buf !== null) return this.checkLength(buf, hit, id);
      // The pack is gone: a compaction moved the block (or deleted it). Look again from a new listing.
      this.dropLoc(id, hit.pack);
      if (attempt >= 2) throw notFound(id);
      await this.refreshNow();
    }
  }

  private checkLength(buf: Buffer, loc: Loc, id: BlockId): Buffer {
    if (buf.length !== loc.length) {
      throw new CarryonError('IO_ERROR', `the object store returned ${buf.length} bytes of block ${id.slice(0, 12)}… (pack ${loc.pack}), expected ${loc.length}`, { id, pack: loc.pack });
    }
    return buf;
  }

  /**
   * The encoded blocks of `ids`, in order, reading neighbouring blocks of one pack with one ranged GET
   * (gaps up to 64 KiB are read and dropped, ranges up to 16 MiB). A missing id fails as getEncoded does.
   */
  async getEncodedMany(ids: readonly BlockId[]): Promise<Buffer[]> {
    await this.ready();
    const out = new Array<Buffer | undefined>(ids.length);
    const byPack = new Map<string, Array<{ i: number; loc: Loc }>>();
    const slow: number[] = [];
    ids.forEach((id, i) => {
      const hit = isBlockId(id) ? this.lookup(id) : null;
      if (!hit) slow.push(i);
      else if ('data' in hit) out[i] = Buffer.from(hit.data);
      else {
        const list = byPack.get(hit.pack) ?? [];
        list.push({ i, loc: hit });
        byPack.set(hit.pack, list);
      }
    });
    const ranges: Array<{ pack: string; offset: number; end: number; parts: Array<{ i: number; loc: Loc }> }> = [];
    for (const [pack, parts] of byPack) {
      parts.sort((a, b) => a.loc.offset - b.loc.offset);
      let r: (typeof ranges)[number] | null = null;
      for (const p of parts) {
        const end = p.loc.offset + p.loc.length;
        if (r && p.loc.offset - r.end <= COALESCE_GAP && end - r.offset <= COALESCE_MAX) {
          r.end = Math.max(r.end, end);
          r.parts.push(p);
        } else {
          r = { pack, offset: p.loc.offset, end, parts: [p] };
          ranges.push(r);
        }
      }
    }
    await each(ranges, 4, async (r) => {
      const buf = await this.client.get(this.key('packs', r.pack), { offset: r.offset, length: r.end - r.offset });
      if (buf === null || buf.length !== r.end - r.offset) {
        for (const p of r.parts) slow.push(p.i); // the pack moved or came back short: one by one, with a refresh
        return;
      }
      for (const p of r.parts) out[p.i] = buf.subarray(p.loc.offset - r.offset, p.loc.offset - r.offset + p.loc.length);
    });
    for (const i of slow) out[i] = await this.getEncoded(ids[i]!);
    return out as Buffer[];
  }

  async *list(): AsyncIterable<BlockId> {
    await this.ready();
    await this.refreshNow();
    const seen = new Set<BlockId>();
    for (const id of [...this.pending.keys(), ...this.live.keys()]) {
      if (seen.has(id)) continue;
      seen.add(id);
      yield id;
    }
  }

  /** Upload what is buffered (a failure is thrown: those blocks and deletes are not durable), then release the sockets. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (this.opened) await this.sync();
    } finally {
      this.closed = true;
      this.client.close();
    }
  }

  // ----- compaction

  /** Pack and index objects under the prefix, by pack id. */
  private async listObjects(kind: 'packs' | 'index'): Promise<Map<string, S3Object>> {
    const dir = `${this.prefix}${kind}/`;
    const out = new Map<string, S3Object>();
    for await (const o of this.client.list(dir)) out.set(o.key.slice(dir.length), o);
    return out;
  }

  /** Rewrite sparse and small packs, delete dead packs, orphans and stale index objects (see the header for the order). */
  async compact(opts: S3CompactOptions = {}): Promise<S3CompactReport> {
    const maxLive = opts.maxLiveFraction ?? 0.5;
    const small = opts.smallPackBytes ?? 4 * 1024 * 1024;
    const grace = opts.orphanGraceMs ?? 3_600_000;
    const report: S3CompactReport = { packsRewritten: 0, packsDeleted: 0, orphansDeleted: 0, indexesDeleted: 0, blocksMoved: 0, packsCorrupt: 0, bytesBefore: 0, bytesAfter: 0 };
    await this.sync();
    await this.refreshNow();
    const packObjs = await this.listObjects('packs');
    const indexObjs = await this.listObjects('index');
    const now = Date.now();
    for (const o of [...packObjs.values(), ...indexObjs.values()]) report.bytesBefore += o.size;

    const drop = new Set<string>(); // packs whose index and object go
    const rewrite: string[] = [];
    const smallOnes: string[] = [];
    const staleIndexes: string[] = [];
    const tombOnly: string[] = [];
    for (const [pack, info] of this.indexes) {
      if (!indexObjs.has(pack)) continue; // ours, not listed yet
      if (info.entries.length === 0) {
        tombOnly.push(pack);
        continue;
      }
      const obj = packObjs.get(pack);
      if (!obj) {
        if (now - info.lastModified > grace) staleIndexes.push(pack);
        continue;
      }
      let liveBytes = 0;
      for (const e of info.entries) if (!this.tombs.has(`${pack}/${e.id}`)) liveBytes += e.length;
      if (liveBytes === 0) drop.add(pack);
      else if (liveBytes < obj.size * maxLive) rewrite.push(pack);
      else if (obj.size < small) smallOnes.push(pack);
    }
    if (smallOnes.length >= 2) rewrite.push(...smallOnes);
    for (const p of rewrite) drop.add(p);

    // 1. Copy what must survive into new packs (through the normal upload path: pack, then index).
    const copied = new Set<BlockId>();
    const batches: Batch[] = [];
    let batch = this.newBatch();
    for (const pack of rewrite) {
      const info = this.indexes.get(pack)!;
      const need = info.entries.filter((e) => !this.tombs.has(`${pack}/${e.id}`) && !copied.has(e.id)
        && !(this.live.get(e.id) ?? []).some((l) => !drop.has(l.pack))); // a live copy in a kept pack is enough
      if (need.length === 0) continue;
      const buf = await this.client.get(this.key('packs', pack));
      if (buf === null) {
        drop.delete(pack); // gone meanwhile (another compaction): nothing to copy, nothing to delete
        continue;
      }
      const blocks: Array<[BlockId, Buffer]> = [];
      let corrupt = false;
      for (const e of need) {
        const data = buf.subarray(e.offset, e.offset + e.length);
        try {
          if (data.length !== e.length) throw new Error('short');
          checkPut(e.id, data);
        } catch {
          corrupt = true;
          break;
        }
        blocks.push([e.id, Buffer.from(data)]);
      }
      if (corrupt) {
        report.packsCorrupt++;
        drop.delete(pack); // kept as it is: nothing is deleted on the strength of a bad read
        continue;
      }
      for (const [id, data] of blocks) {
        if (batch.bytes >= this.packBytes) {
          batches.push(batch);
          batch = this.newBatch();
        }
        batch.entries.set(id, data);
        batch.bytes += data.length;
        copied.add(id);
      }
      report.packsRewritten++;
    }
    // Tombstones in the index objects that go, whose copies stay: carried into the new index.
    const goingIndexes = [...drop, ...staleIndexes];
    if (tombOnly.length >= 2 || goingIndexes.length > 0) goingIndexes.push(...tombOnly);
    const carried = new Map<string, { id: BlockId; pack: string }>();
    for (const pack of goingIndexes) {
      for (const t of this.indexes.get(pack)?.tombstones ?? []) {
        if (drop.has(t.pack) || !(packObjs.has(t.pack) || this.indexes.has(t.pack))) continue;
        carried.set(`${t.pack}/${t.id}`, t);
      }
    }
    batch.tombstones.push(...carried.values());
    batches.push(batch);
    for (const b of batches) if (b.entries.size > 0 || b.tombstones.length > 0) this.sealBatch(b);
    while (this.sealed.length > 0) await this.drain();
    report.blocksMoved = copied.size;
    opts.onStep?.('copied');

    // 2. The index objects of the dropped packs (and the consolidated ones) go: their packs are unreferenced.
    const indexesToDelete = goingIndexes.filter((p) => indexObjs.has(p));
    await each(indexesToDelete, FETCH_CONCURRENCY, async (pack) => {
      await this.client.delete(this.key('index', pack));
      this.dropIndex(pack);
    });
    report.indexesDeleted = indexesToDelete.length;
    opts.onStep?.('unindexed');
    // 3. Then the packs, and orphans (a pack without an index, older than the grace period).
    const own = new Set(this.sealed.map((b) => b.pack));
    const orphans = [...packObjs.keys()].filter((p) => !this.indexes.has(p) && !drop.has(p) && !own.has(p) && now - packObjs.get(p)!.lastModified > grace);
    const packsToDelete = [...drop].filter((p) => packObjs.has(p));
    await each([...packsToDelete, ...orphans], FETCH_CONCURRENCY, (pack) => this.client.delete(this.key('packs', pack)));
    report.packsDeleted = packsToDelete.length;
    report.orphansDeleted = orphans.length;

    for (const o of (await this.listObjects('packs')).values()) report.bytesAfter += o.size;
    for (const o of (await this.listObjects('index')).values()) report.bytesAfter += o.size;
    return report;
  }
}
