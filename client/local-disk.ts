// LocalDisk: a checked-out disk as a VM sees it through `carryon serve` (it implements NbdExport),
// and as a check-in or a finishing check-out drives it. Owns: the rules that keep the raw file, the
// dirty map and (while a streamed check-out is arriving) the map of local blocks consistent:
// - a write marks its blocks dirty in the journal, durably, before its bytes reach the file;
// - a block not yet local is fetched (cache, then server) before a read touches it; offline, that
//   read fails with EIO: never zeros, never stale bytes;
// - besides the blocks a read touches, only what the read-ahead policy (client/read-ahead.ts) asks for
//   is fetched: by default blocks ahead of sequential streams of reads, never more than each stream read;
// - a write to a block not yet local records which 4 KiB pages the VM wrote; the download later
//   fills only the other pages, so it never overwrites the VM's data (a write smaller than a page
//   needs the block first: read-modify-write);
// - a block counts as local in the journal only after its bytes were fdatasync'ed.
// Disk I/O is synchronous on purpose: each request's bookkeeping and its pwrite happen in one turn of
// the event loop, so a download landing in between cannot interleave with a VM write. Page-cache
// reads and writes of 64 KiB-1 MiB take tens of microseconds here; only fsyncs, and reads of 128 KiB
// and more (at most two at a time for a plaintext copy), go to the thread pool. A plaintext, complete
// disk served by `carryon serve` is read and written by native threads instead (client/nbd-native.ts):
// they ask prepareWrite for the marks first, exactly as write does; no download can land any more.
import { closeSync, fdatasync, openSync } from 'node:fs';
import { blockId, CarryonError, CheapHasher, DiskManifest, encodeBlock, isAllZero, NbdIoError, NBD_ERRNO, type BlockId, type NbdExport, type SectorCipherImplementation } from '../src/index.js';
import { CACHE_LEVEL } from './state.js';
import { crashPoint } from './crash-point.js';
import { PAGE_BYTES, stampOf, type DiskJournal } from './disk-journal.js';
import { DiskIo } from './disk-io.js';
import { SequentialReadAhead, type AheadRange, type ReadAheadPolicy } from './read-ahead.js';

/** Where blocks that are not local yet come from (the laptop cache, then the server). */
export interface BlockSource {
  /** Verified plaintext of each id, through onBlock, as it arrives. Rejects when the server is unreachable. */
  fetch(ids: BlockId[], onBlock: (id: BlockId, plain: Buffer) => void): Promise<void>;
}

/** Background download batches (plaintext): one HTTP request each. */
const BACKGROUND_BATCH_BYTES = 16 * 1024 * 1024;
/** The largest block a streamed disk can have: 16 pages, one bit each in a PAGES record. */
export const MAX_STREAM_BLOCK = 16 * PAGE_BYTES;
/** Reads this large use the thread pool (measured below). */
const ASYNC_READ_BYTES = 128 * 1024;
/**
 * Large reads in the thread pool at once; past that the serving thread reads itself (issue 13, measured on
 * this 2-core machine against nbdkit: 2 in the pool beat all in the pool, 1, 3 and none; the serving
 * thread's own pread replaces a hand-off to a pool thread and back, and the reply goes out at once).
 */
const MAX_POOL_READS = 2;
/** On-demand blocks become durable-local this long after they land (one fdatasync for many). */
const PRESENT_COMMIT_MS = 200;

export interface DownloadProgress {
  localBytes: number;
  totalBytes: number;
}

export class LocalDisk implements NbdExport {
  readonly size: number;
  readonly readOnly = false;
  readonly preferredBlockSize = 4096;
  private readonly fd: number;
  /** Reads and writes of the file: decrypted and encrypted here when the copy is encrypted at rest. */
  private readonly io: DiskIo;
  private readonly bs: number;
  private readonly hasher = new CheapHasher();
  /** Blocks whose bytes are in the file (maybe not yet fdatasync'ed); the journal's present map lags it. */
  private readonly written: Uint8Array;
  private readonly inflight = new Map<number, Promise<void>>();
  private demand = new Set<number>();
  /** Blocks to fetch ahead of the VM's reads, in a request of their own (unless the policy joins them to the reads'). */
  private ahead = new Set<number>();
  /** Why the last fetch of a block failed: reported with the EIO, rethrown to a check-in. */
  private readonly failures = new Map<number, unknown>();
  private demandScheduled = false;
  private presentQueue: number[] = [];
  private presentTimer: NodeJS.Timeout | null = null;
  private committing: Promise<void> | null = null;
  private closed = false;
  /** Which blocks to fetch ahead of the VM's reads while the disk is arriving. */
  private readAhead: ReadAheadPolicy;
  /** Blocks the VM has read while the disk was arriving (1 = read at least once): the measure of what on-demand fetching owes. */
  private readonly readSeen: Uint8Array;
  /** Blocks asked for ahead of the VM's reads (1): when the VM then reads one, the guess was good. */
  private readonly askedAhead: Uint8Array;
  /**
   * Bytes the VM's requests moved; blocks (and their bytes) fetched on demand, in how many fetches, of them read ahead
   * (and of those, read by the VM since); blocks
   * fetched in the background; blocks (and their bytes, each counted once) the VM's reads touched while
   * the disk was arriving; milliseconds the VM's reads waited for fetches, summed over reads (for logs and --json).
   */
  stats = { readBytes: 0, writeBytes: 0, flushes: 0, onDemandBlocks: 0, onDemandBytes: 0, onDemandFetches: 0, readAheadBlocks: 0, readAheadUsed: 0, backgroundBlocks: 0, readBlocks: 0, readBlockBytes: 0, readWaitMs: 0 };

  constructor(readonly name: string, readonly file: string, readonly manifest: DiskManifest, readonly journal: DiskJournal, readonly cheap: BigUint64Array,
    private source: BlockSource | null, dataKey: Buffer | null = null) {
    // Page masks are 16 bits (the journal's PAGES record): streaming needs blocks of at most 16 pages.
    if (!journal.complete && manifest.blockSize > MAX_STREAM_BLOCK) {
      throw new CarryonError('INVALID_ARGUMENT', `${name}: a streamed disk needs blocks of at most ${MAX_STREAM_BLOCK / 1024} KiB; this image has ${manifest.blockSize / 1024} KiB blocks: check it out without --stream`);
    }
    this.fd = openSync(file, 'r+');
    this.size = manifest.size;
    this.io = DiskIo.forKey(this.fd, manifest.size, dataKey, file);
    this.bs = manifest.blockSize;
    this.written = new Uint8Array(manifest.count);
    this.readSeen = new Uint8Array(journal.complete ? 0 : manifest.count);
    this.askedAhead = new Uint8Array(journal.complete ? 0 : manifest.count);
    this.readAhead = new SequentialReadAhead(manifest.count, manifest.blockSize);
  }

  /** Where the blocks the VM first reads go, in order (a boot trace for the server: client/boot-trace.ts); null: not recorded. */
  firstReads: { note(block: number): void } | null = null;

  /** Replace the read-ahead policy (benchmarks compare them: CARRYON_READ_AHEAD in `carryon serve`). */
  setReadAhead(policy: ReadAheadPolicy): void {
    this.readAhead = policy;
  }

  get readAheadName(): string {
    return this.readAhead.name;
  }

  /** The copy's disk cipher: null for a plaintext copy, else 'native' (the XTS addon) or 'js' (the slower fallback). */
  get cipher(): SectorCipherImplementation | null {
    return this.io.cipher?.implementation ?? null;
  }

  setSource(source: BlockSource | null): void {
    this.source = source;
  }

  get complete(): boolean {
    return this.journal.complete;
  }

  /** Bytes of the disk that are local (holes count as local). */
  progress(): DownloadProgress {
    if (this.journal.complete) return { localBytes: this.size, totalBytes: this.size };
    let local = 0;
    for (let i = 0; i < this.manifest.count; i++) if (this.isLocal(i)) local += this.manifest.lengthOf(i);
    return { localBytes: local, totalBytes: this.size };
  }

  private isLocal(i: number): boolean {
    return this.journal.isPresent(i) || this.written[i] === 1 || this.fullMask(i) === this.journal.pages.get(i);
  }

  private fullMask(i: number): number {
    return (1 << Math.ceil(this.manifest.lengthOf(i) / PAGE_BYTES)) - 1;
  }

  /** Can bytes [from, to) of block i be read from the file as they are? */
  private readable(i: number, from: number, to: number): boolean {
    if (this.journal.isPresent(i) || this.written[i] === 1) return true;
    const mask = this.journal.pages.get(i) ?? 0;
    for (let p = Math.floor(from / PAGE_BYTES); p * PAGE_BYTES < to; p++) if (!(mask & (1 << p))) return false;
    return true;
  }

  private blocksOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.bs), Math.floor((offset + length - 1) / this.bs)];
  }

  read(offset: number, length: number): Promise<Buffer> | Buffer {
    const buf = Buffer.allocUnsafe(length);
    const r = this.readInto(offset, length, buf, 0);
    return r instanceof Promise ? r.then(() => buf) : buf;
  }

  /** Synchronous when every block of the range is local (the common case): no promise per request. */
  readInto(offset: number, length: number, into: Buffer, at: number): Promise<void> | void {
    if (this.journal.complete) {
      // An encrypted copy's large reads all go to the pool: there the addon decrypts off the serving thread too.
      const pool = length >= ASYNC_READ_BYTES && (this.poolReads < MAX_POOL_READS || this.io.encrypted);
      return pool ? this.readPool(offset, length, into, at) : this.readLocal(offset, length, into, at);
    }
    const [a, b] = this.blocksOf(offset, length);
    const need: number[] = [];
    for (let i = a; i <= b; i++) {
      if (this.readSeen[i] === 0) {
        this.readSeen[i] = 1;
        this.firstReads?.note(i);
        this.stats.readBlocks++;
        this.stats.readBlockBytes += this.manifest.lengthOf(i);
        if (this.askedAhead[i] === 1) this.stats.readAheadUsed++;
      }
      const s = i * this.bs;
      if (!this.readable(i, Math.max(offset, s) - s, Math.min(offset + length, s + this.manifest.lengthOf(i)) - s)) need.push(i);
    }
    const ahead = this.readAhead.onRead(a, b, need.length > 0);
    if (ahead) this.fetchAhead(ahead); // joins this read's fetch when it has one (same turn)
    if (need.length === 0) return this.readLocal(offset, length, into, at);
    const t0 = performance.now();
    return this.ensure(need).then(() => {
      this.stats.readWaitMs += Math.round(performance.now() - t0);
      this.readLocal(offset, length, into, at);
    });
  }

  /**
   * Ask for the blocks of `r` (a range, or a list in fetch order) that are neither local nor on their way, within the policy's budget: blocks
   * fetched ahead and not read (yet) at most aheadBudget times the blocks read. Nobody waits for them.
   */
  private fetchAhead(r: AheadRange | readonly number[]): void {
    let room = this.readAhead.aheadBudget * this.stats.readBlocks - (this.stats.readAheadBlocks - this.stats.readAheadUsed);
    let added = 0;
    const list = 'from' in r ? null : r;
    const from = list ? 0 : (r as AheadRange).from;
    const to = list ? list.length - 1 : (r as AheadRange).to;
    for (let k = from; k <= to && room >= 1; k++) {
      const i = list ? list[k]! : k;
      if (i < 0 || i >= this.manifest.count || this.manifest.isHole(i)) continue; // holes are local already
      if (this.journal.isPresent(i) || this.written[i] || this.inflight.has(i) || this.demand.has(i) || this.ahead.has(i)) continue;
      (this.readAhead.joinAhead ? this.demand : this.ahead).add(i);
      this.askedAhead[i] = 1;
      added++;
      room--;
    }
    if (added === 0) return;
    this.stats.readAheadBlocks += added;
    this.scheduleDemand();
  }

  /**
   * Requests arriving in the same turn share one fetch; blocks asked for ahead go in a second one beside
   * it, so a read waits only for its own blocks.
   */
  private scheduleDemand(): void {
    if (this.demandScheduled) return;
    this.demandScheduled = true;
    setImmediate(() => {
      this.demandScheduled = false;
      const list = [...this.demand];
      const ahead = [...this.ahead].filter((i) => !this.demand.has(i));
      this.demand = new Set();
      this.ahead = new Set();
      for (const l of [list, ahead]) {
        if (l.length === 0) continue;
        this.stats.onDemandBlocks += l.length;
        this.stats.onDemandFetches++;
        for (const i of l) this.stats.onDemandBytes += this.manifest.lengthOf(i);
        // A failure is recorded per block (failures) and reported to the reads that wait for them.
        void this.fetchBlocks(l).catch(() => undefined);
      }
    });
  }

  /** Reads in the thread pool now (at most MAX_POOL_READS). */
  private poolReads = 0;

  /** Large reads go to the thread pool: the copy out of the page cache then overlaps the socket sends. */
  private async readPool(offset: number, length: number, buf: Buffer, at: number): Promise<void> {
    this.poolReads++;
    try {
      await this.io.read(buf, at, length, offset);
    } finally {
      this.poolReads--;
    }
    this.stats.readBytes += length;
  }

  private readLocal(offset: number, length: number, buf: Buffer, at: number): void {
    this.io.readSync(buf, at, length, offset); // a sparse tail past the file's end reads as zeros
    this.stats.readBytes += length;
  }

  /** The payload as it arrived from the socket: one writev, no copy into a single buffer. */
  writev(offset: number, chunks: Buffer[], fua: boolean): Promise<void> | void {
    if (!this.journal.complete) return this.write(offset, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), fua);
    const length = chunks.reduce((n, c) => n + c.length, 0);
    const marked = this.mark(offset, length);
    const land = (): Promise<void> | void => {
      if (this.closed) throw new NbdIoError(NBD_ERRNO.ESHUTDOWN, `${this.name} is closing`);
      crashPoint('nbd-write'); // tests: die with the marks durable and the bytes not written
      this.io.writevSync(chunks, offset);
      this.stats.writeBytes += length;
      if (fua) return this.syncFile();
    };
    return marked ? marked.then(land) : land();
  }

  /**
   * The file's descriptor for the native data path (client/nbd-native.ts), which dups it: only while the
   * disk is plaintext and fully local (its writes then need nothing but durable dirty marks), else null.
   */
  get nativeFd(): number | null {
    return this.journal.complete && !this.io.encrypted && !this.closed ? this.fd : null;
  }

  /**
   * For the native data path: make the dirty marks of a write of [offset, offset+length) durable; the
   * caller writes the bytes once this returns or resolves, and acknowledges after that.
   */
  prepareWrite(offset: number, length: number): Promise<void> | void {
    const after = (): void => {
      if (this.closed) throw new NbdIoError(NBD_ERRNO.ESHUTDOWN, `${this.name} is closing`);
      crashPoint('nbd-write'); // tests: die with the marks durable and the bytes not written
    };
    const marked = this.mark(offset, length);
    return marked ? marked.then(after) : after();
  }

  /** Synchronous when the blocks are already durably dirty and no FUA is asked (the common case). */
  write(offset: number, data: Buffer, fua: boolean): Promise<void> | void {
    const marked = this.mark(offset, data.length);
    const land = (): Promise<void> | void => {
      if (this.closed) throw new NbdIoError(NBD_ERRNO.ESHUTDOWN, `${this.name} is closing`);
      crashPoint('nbd-write');
      this.io.writeSync(data, 0, data.length, offset);
      this.stats.writeBytes += data.length;
      this.afterWrite(offset, data.length);
      if (fua) return this.syncFile();
    };
    return marked ? marked.then(land) : land();
  }

  private static zeros = Buffer.alloc(1024 * 1024);

  /** Zeroes are written, not punched (Node has no fallocate); all-zero blocks become holes in the next manifest. */
  async zero(offset: number, length: number, fua: boolean): Promise<void> {
    await this.mark(offset, length);
    for (let done = 0; done < length;) {
      const n = Math.min(LocalDisk.zeros.length, length - done);
      this.io.writeSync(LocalDisk.zeros, 0, n, offset + done);
      done += n;
    }
    this.afterWrite(offset, length);
    if (fua) await this.syncFile();
  }

  async flush(): Promise<void> {
    this.stats.flushes++;
    await this.journal.durable();
    await this.syncFile();
  }

  /** Make the dirty marks (and page marks for blocks not yet local) of a write durable before it lands. */
  private mark(offset: number, length: number): Promise<void> | null {
    if (this.closed) throw new NbdIoError(NBD_ERRNO.ESHUTDOWN, `${this.name} is closing`);
    const [a, b] = this.blocksOf(offset, length);
    if (this.journal.complete) return this.journal.markDirtyRange(a, b);
    return this.markStreaming(offset, length, a, b);
  }

  private async markStreaming(offset: number, length: number, a: number, b: number): Promise<void> {
    // Sub-page edges of a block whose base bytes are not in the file: fetch it first (read-modify-write).
    const rmw: number[] = [];
    for (let i = a; i <= b; i++) {
      if (this.journal.isPresent(i)) continue;
      const { from, to } = this.within(i, offset, length);
      // Only what the journal records counts: bytes landed but not yet fdatasync'ed and marked present could
      // be lost by a power cut, so a partial page over them must go through the read-modify-write path.
      const edge = (x: number): boolean => x % PAGE_BYTES !== 0 && x !== this.manifest.lengthOf(i) && !(((this.journal.pages.get(i) ?? 0) >>> Math.floor(x / PAGE_BYTES)) & 1);
      if (edge(from) || edge(to)) rmw.push(i);
    }
    if (rmw.length > 0) {
      await this.ensure(rmw);
      await this.commitPresent(); // their base bytes durable and recorded: a crash cannot leave a torn page marked as the VM's
    }
    const dirty: number[] = [];
    const pages: Array<{ block: number; mask: number }> = [];
    for (let i = a; i <= b; i++) {
      if (this.journal.isPresent(i)) dirty.push(i);
      else {
        const { from, to } = this.within(i, offset, length);
        let mask = 0;
        for (let p = Math.floor(from / PAGE_BYTES); p * PAGE_BYTES < to; p++) mask |= 1 << p;
        pages.push({ block: i, mask });
      }
    }
    await Promise.all([this.journal.markDirty(dirty), this.journal.markPages(pages)]);
  }

  private within(i: number, offset: number, length: number): { from: number; to: number } {
    const s = i * this.bs;
    return { from: Math.max(offset, s) - s, to: Math.min(offset + length, s + this.manifest.lengthOf(i)) - s };
  }

  /** Blocks the VM has now written whole need no download: local once the write is synced. */
  private afterWrite(offset: number, length: number): void {
    if (this.journal.complete) return;
    const [a, b] = this.blocksOf(offset, length);
    for (let i = a; i <= b; i++) {
      if (!this.journal.isPresent(i) && !this.written[i] && this.journal.pages.get(i) === this.fullMask(i)) {
        this.written[i] = 1;
        this.queuePresent(i);
      }
    }
  }

  /** The first failed fdatasync: the kernel may have dropped the data, and says so only once, so every later flush must fail too. */
  private syncFailure: unknown = null;

  private syncFile(): Promise<void> {
    if (this.syncFailure) return Promise.reject(this.syncFailure);
    return new Promise((resolve, reject) => fdatasync(this.fd, (err) => {
      if (err) {
        this.syncFailure ??= err;
        reject(err);
      } else resolve();
    }));
  }

  /** Put base bytes of block i into the file, around the pages the VM wrote itself. */
  private land(i: number, plain: Buffer): void {
    if (this.journal.isPresent(i) || this.written[i]) return;
    if (plain.length !== this.manifest.lengthOf(i)) throw new CarryonError('BLOCK_CORRUPT', `block ${i} has ${plain.length} bytes, expected ${this.manifest.lengthOf(i)}`);
    const mask = this.journal.pages.get(i) ?? 0;
    const base = i * this.bs;
    if (mask === 0) this.writeAll(plain, 0, plain.length, base);
    else {
      // Runs of pages the VM did not write.
      const pagesN = Math.ceil(plain.length / PAGE_BYTES);
      for (let p = 0; p < pagesN;) {
        if (mask & (1 << p)) {
          p++;
          continue;
        }
        let q = p;
        while (q < pagesN && !(mask & (1 << q))) q++;
        const from = p * PAGE_BYTES;
        const to = Math.min(q * PAGE_BYTES, plain.length);
        this.writeAll(plain, from, to - from, base + from);
        p = q;
      }
    }
    this.cheap[i] = mask === 0 ? this.hasher.hash(plain) : 0n; // 0: unknown, the next full scan hashes it
    this.written[i] = 1;
    this.queuePresent(i);
  }

  /** pwrite until every byte is written (a short write, e.g. at ENOSPC, must not pass for a whole one). */
  private writeAll(buf: Buffer, from: number, length: number, position: number): void {
    if (this.closed) throw new NbdIoError(NBD_ERRNO.ESHUTDOWN, `${this.name} is closing`);
    this.io.writeSync(buf, from, length, position);
  }

  private queuePresent(i: number): void {
    this.presentQueue.push(i);
    if (!this.presentTimer && !this.closed) this.presentTimer = setTimeout(() => void this.commitPresent().catch(() => undefined), PRESENT_COMMIT_MS);
  }

  /** fdatasync the file, then record the blocks landed so far as local. */
  async commitPresent(): Promise<void> {
    if (this.presentTimer) {
      clearTimeout(this.presentTimer);
      this.presentTimer = null;
    }
    while (this.committing) await this.committing;
    if (this.presentQueue.length === 0) return;
    const list = this.presentQueue;
    this.presentQueue = [];
    this.committing = (async () => {
      try {
        await this.syncFile();
      } catch (err) {
        this.presentQueue.unshift(...list); // not recorded: they stay to be committed (or reported)
        throw err;
      }
      this.journal.markPresent(list);
      void this.journal.durable().catch(() => undefined); // progress survives a crash; nobody waits for it
    })().finally(() => {
      this.committing = null;
    });
    await this.committing;
  }

  /** Fetch the blocks of `blocks` that are not local yet, and record them as local. */
  async fetchMissing(blocks: number[]): Promise<void> {
    const missing = blocks.filter((i) => !this.journal.isPresent(i) && !this.written[i]);
    try {
      for (let k = 0; k < missing.length; k += 256) await this.ensure(missing.slice(k, k + 256));
    } catch (err) {
      throw err instanceof NbdIoError && err.cause instanceof CarryonError ? err.cause : err;
    }
    await this.commitPresent();
  }

  /** Make blocks readable: fetch those not local, waiting for fetches under way. */
  private async ensure(blocks: number[]): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const i of blocks) {
      if (this.journal.isPresent(i) || this.written[i]) continue;
      const p = this.inflight.get(i);
      if (p) waits.push(p);
      else this.demand.add(i);
    }
    if (this.demand.size > 0) {
      this.scheduleDemand();
      await new Promise((r) => setImmediate(r));
      for (const i of blocks) {
        const p = this.inflight.get(i);
        if (p) waits.push(p);
      }
    }
    await Promise.all(waits);
    for (const i of blocks) {
      if (!this.journal.isPresent(i) && !this.written[i]) {
        const cause = this.failures.get(i);
        throw new NbdIoError(NBD_ERRNO.EIO, `block ${i} of ${this.name} is not on this laptop yet${cause instanceof Error ? `: ${cause.message}` : ''}`, { cause });
      }
    }
  }

  /** One fetch for a list of blocks; each index's in-flight promise settles when the fetch does. */
  private fetchBlocks(list: number[]): Promise<void> {
    const byId = new Map<BlockId, number[]>();
    for (const i of list) {
      const id = this.manifest.idAt(i);
      if (id === null) continue; // holes are always local
      const l = byId.get(id);
      if (l) l.push(i);
      else byId.set(id, [i]);
    }
    const source = this.source;
    const p = (async () => {
      if (!source) throw new CarryonError('DISK_INCOMPLETE', `${this.name}: ${list.length} block(s) are not on this laptop yet and there is no server login`);
      try {
        await source.fetch([...byId.keys()], (id, plain) => {
          for (const i of byId.get(id) ?? []) this.land(i, plain);
        });
      } catch (err) {
        const e = err instanceof CarryonError && err.code === 'SERVER_UNREACHABLE'
          ? new CarryonError('DISK_INCOMPLETE', `${this.name}: block(s) not on this laptop yet, and the server cannot be reached`, { blocks: list.length }, err) : err;
        throw e;
      }
    })();
    const settled = p.then(() => {
      for (const i of list) this.failures.delete(i);
    }, (err: unknown) => {
      for (const i of list) this.failures.set(i, err);
    });
    for (const i of list) this.inflight.set(i, settled);
    void settled.then(() => {
      for (const i of list) if (this.inflight.get(i) === settled) this.inflight.delete(i);
    });
    return p;
  }

  /**
   * Download every block not yet local, in order, beside on-demand reads. Resolves when the disk is
   * complete; rejects on the first failure (the caller decides whether to retry).
   */
  async download(onProgress?: (p: DownloadProgress) => void, signal?: AbortSignal): Promise<void> {
    let cursor = 0;
    for (;;) {
      signal?.throwIfAborted();
      const batch: number[] = [];
      let bytes = 0;
      for (; cursor < this.manifest.count && bytes < BACKGROUND_BATCH_BYTES; cursor++) {
        const i = cursor;
        if (this.journal.isPresent(i) || this.written[i] || this.inflight.has(i) || this.manifest.isHole(i)) continue;
        batch.push(i);
        bytes += this.manifest.lengthOf(i);
      }
      if (batch.length === 0) {
        // Skipped blocks were being fetched on demand: wait, then go round once more for any that failed.
        await Promise.all([...this.inflight.values()]);
        await this.commitPresent();
        if (this.journal.complete) break;
        cursor = 0;
        await new Promise((r) => setTimeout(r, 50)); // let the VM's requests and signals in
        continue;
      }
      this.stats.backgroundBlocks += batch.length;
      await this.fetchBlocks(batch);
      await this.commitPresent();
      onProgress?.(this.progress());
    }
    await this.journal.durable();
    onProgress?.(this.progress());
  }

  /**
   * A point-in-time copy of the blocks written since check-out, for a restore point while the VM runs:
   * each dirty block is read, hashed and put in the laptop cache in one synchronous pass, so no VM
   * write lands in the middle (the VM's I/O waits for the pass: ~1 s per GB of changed blocks here).
   * Needs every dirty block local (a streamed disk still arriving is refused).
   */
  snapshot(cache: { put(id: BlockId, encoded: Uint8Array, plain: Uint8Array): Promise<void> }): { manifest: DiskManifest; changed: number[]; stored: Promise<unknown> } {
    const base = this.manifest;
    const next = new DiskManifest(base.size, base.blockSize, Buffer.from(base.ids));
    const changed: number[] = [];
    const buf = Buffer.allocUnsafe(this.bs);
    const puts: Array<Promise<void>> = [];
    for (const i of this.journal.dirtyBlocks()) {
      if (!this.journal.isPresent(i) && !this.written[i]) {
        throw new CarryonError('DISK_INCOMPLETE', `${this.name}: block ${i} was written but its other bytes have not arrived yet; replicate once the download completes`, { block: i });
      }
      const len = base.lengthOf(i);
      const plain = buf.subarray(0, len);
      this.readLocal(i * this.bs, len, plain, 0);
      const id = isAllZero(plain) ? null : blockId(plain);
      next.setId(i, id);
      if (id !== base.idAt(i)) changed.push(i);
      // PackBlockStore.put does its work before its first await: the pass stays synchronous.
      if (id !== null) puts.push(cache.put(id, encodeBlock(plain, CACHE_LEVEL), plain));
    }
    return { manifest: next, changed, stored: Promise.all(puts) };
  }

  /** Flush everything and record the clean stamp: the next open can tell if anyone else wrote the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.inflight.values()]);
    await this.commitPresent();
    await this.syncFile();
    await this.journal.closeClean(stampOf(this.fd));
    await this.journal.close();
    closeSync(this.fd);
  }

  /** Stop without the clean record (tests of crash recovery use kill -9 instead; this is for errors). */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.presentTimer) clearTimeout(this.presentTimer);
    closeSync(this.fd);
  }
}
