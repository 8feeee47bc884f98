// A check-out worker thread: downloads a batch of blocks itself (its own HTTP connection), verifies
// each, stores it in the laptop cache and writes it into the disk being assembled; or takes blocks
// from the cache. Each worker owns a PackBlockStore instance (its own pack files, like a separate
// process). Doing the whole pipeline here keeps block bytes off the main thread: handing each block
// across threads cost more than decoding it (measured: postMessage 0.6 s of a 1 GiB check-out).
// One pass per block where it can: a block that extends the current disk run is decoded straight into
// it (runSpace), hashed there (SHA-256 against its id, then the cheap hash) and written with the run;
// its frame goes to the cache from the socket's own chunk (entries are transient views).
import { closeSync, fdatasync, fsyncSync, openSync, writeSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { parentPort, workerData } from 'node:worker_threads';
import {
  applyBlockPatch, asCarryonError, CarryonError, CheapHasher, decodeVerified, encodeBlock, getBlock, MAX_UPLOAD_ENTRY_BYTES, PackBlockStore, parseUploadEntryName, SealedBlockStore, SectorCipher, SECTOR_BYTES, verifyPlain,
  type BlockId, type BlockStore,
} from '../src/index.js';
import { CACHE_LEVEL } from './state.js';
import { ApiClient } from './api-client.js';
import { crashPoint } from './crash-point.js';

export interface BlockJob {
  id: BlockId;
  length: number;
  offsets: number[];
  /** A block of an older version this laptop holds in its cache, to receive `id` as a patch against. */
  base?: BlockId;
}

export type WorkerRequest = { kind: 'fetch' | 'cached'; seq: number; jobs: BlockJob[] } | { kind: 'close' };

export interface BlockDone {
  id: BlockId;
  /** Cheap hash of the plaintext; null when a cached block failed verification and must be fetched. */
  cheap: bigint | null;
  plainBytes: number;
}

export type WorkerReply =
  | { kind: 'progress'; seq: number; done: BlockDone[] }
  | { kind: 'finished'; seq: number; bytesReceived: number }
  | { kind: 'error'; seq: number; code: string; message: string; data: Record<string, unknown> }
  | { kind: 'closed'; code?: string; message?: string };

export interface WorkerInit {
  cacheRoot: string;
  disk: string;
  url: string;
  token: string;
  device: string;
  ca: string | null;
  insecureHttp: boolean;
  checkoutId: string;
  maxBlock: number;
  /** The desktop version the jobs' bases come from, when they have any. */
  baseVersion: number | null;
  /** An encrypted copy's data key (base64; in memory only): the disk gets XTS sectors, the cache is sealed. */
  dataKey: string | null;
}

const RETRIES = 4;
const init = workerData as WorkerInit;
const dataKey = init.dataKey ? Buffer.from(init.dataKey, 'base64') : null;
const cache: BlockStore = dataKey ? new SealedBlockStore(new PackBlockStore(init.cacheRoot, { opaque: true }), dataKey) : new PackBlockStore(init.cacheRoot);
const fd = openSync(init.disk, 'r+');
const cipher = dataKey ? SectorCipher.fromDataKey(dataKey) : null;
const hasher = new CheapHasher();
const scratch = Buffer.allocUnsafe(init.maxBlock);
const post = (m: WorkerReply): void => parentPort!.postMessage(m);

/** Start writing back what is written so far, so the final fsync waits for little. */
const WRITEBACK_EVERY = 64 * 1024 * 1024;
let unflushed = 0;
const writebacks: Array<Promise<void>> = [];

/** Consecutive blocks are gathered into one write of up to a MiB (a write per 64 KiB block cost more than its copy). */
const RUN_BYTES = 1024 * 1024;
const run = { buf: Buffer.allocUnsafe(RUN_BYTES), start: 0, len: 0 };

function writeRun(): void {
  if (run.len === 0) return;
  // Runs start at block boundaries and end at one (or at the disk's end): whole XTS sectors.
  cipher?.encrypt(run.buf.subarray(0, run.len), run.start / SECTOR_BYTES);
  writeSync(fd, run.buf, 0, run.len, run.start);
  unflushed += run.len;
  run.len = 0;
  if (unflushed >= WRITEBACK_EVERY) {
    unflushed = 0;
    writebacks.push(new Promise((resolve) => fdatasync(fd, () => resolve()))); // in the thread pool
  }
}

/**
 * Where a block of `length` bytes going to `offset` can be decoded straight into the run (it extends the
 * run and fits): the run's next bytes, or null. Decoding there saves copying each block into the run.
 */
function runSpace(offset: number, length: number): Buffer | null {
  if (length > RUN_BYTES) return null;
  if (run.len > 0 && (offset !== run.start + run.len || run.len + length > RUN_BYTES)) writeRun();
  if (run.len === 0) run.start = offset;
  return run.buf.subarray(run.len, run.len + length);
}

function writeAt(plain: Buffer, offset: number): void {
  if (plain.buffer === run.buf.buffer && plain.byteOffset === run.buf.byteOffset + run.len && offset === run.start + run.len) {
    run.len += plain.length; // decoded in place (runSpace)
    return;
  }
  if (run.len > 0 && (offset !== run.start + run.len || run.len + plain.length > RUN_BYTES)) writeRun();
  if (plain.length > RUN_BYTES) {
    const out = cipher ? Buffer.allocUnsafe(plain.length) : plain;
    cipher?.encrypt(plain, offset / SECTOR_BYTES, out);
    return void writeSync(fd, out, 0, out.length, offset);
  }
  if (run.len === 0) run.start = offset;
  plain.copy(run.buf, run.len);
  run.len += plain.length;
}

/** Blocks per progress message: a message per 32 blocks cost ~0.15 s of a 1 GiB check-out per worker. */
const REPORT_EVERY = 256;

/** Write a verified block everywhere it goes; report it in groups of REPORT_EVERY. */
function writer(seq: number) {
  let done: BlockDone[] = [];
  return {
    /** Where to decode this job's block: in place in the run when it goes to one offset, else scratch. */
    target(job: BlockJob): Buffer {
      return (job.offsets.length === 1 ? runSpace(job.offsets[0]!, job.length) : null) ?? scratch;
    },
    write(job: BlockJob, plain: Buffer): void {
      if (plain.length !== job.length) throw new CarryonError('BLOCK_CORRUPT', `block ${job.id.slice(0, 12)}… has ${plain.length} bytes, expected ${job.length}`);
      const cheap = hasher.hash(plain); // before a run is written (and, encrypted, sealed in place)
      for (const off of job.offsets) writeAt(plain, off);
      done.push({ id: job.id, cheap, plainBytes: plain.length });
      if (done.length >= REPORT_EVERY) this.flush();
    },
    skip(job: BlockJob): void {
      done.push({ id: job.id, cheap: null, plainBytes: 0 });
    },
    flush(): void {
      writeRun(); // reported blocks are on their way to the disk
      if (done.length) post({ kind: 'progress', seq, done });
      done = [];
    },
  };
}

async function fromCache(seq: number, jobs: BlockJob[]): Promise<void> {
  const w = writer(seq);
  for (const job of jobs) {
    let plain: Buffer;
    try {
      plain = await getBlock(cache, job.id, job.length);
    } catch (err) {
      // Lost or torn by a crash: the main thread has it fetched instead.
      if (!(err instanceof CarryonError) || (err.code !== 'BLOCK_CORRUPT' && err.code !== 'BLOCK_NOT_FOUND')) throw err;
      await cache.delete(job.id);
      w.skip(job);
      continue;
    }
    w.write(job, plain);
  }
  w.flush();
}

/** The request of a batch: its ids, and the bases of those that may come as patches. */
function blocksRequest(byId: Map<BlockId, BlockJob>): { ids: BlockId[]; patchBases?: { bases: Map<BlockId, BlockId>; baseVersion: number } } {
  const bases = new Map<BlockId, BlockId>();
  for (const j of byId.values()) if (j.base) bases.set(j.id, j.base);
  return { ids: [...byId.keys()], patchBases: init.baseVersion !== null && bases.size > 0 ? { bases, baseVersion: init.baseVersion } : undefined };
}

/** `early`: this batch's request, sent while the batch before it was being read (its answer is used by the first attempt). */
async function fetch(api: ApiClient, seq: number, jobs: BlockJob[], early: Promise<IncomingMessage> | null = null): Promise<void> {
  const byId = new Map(jobs.map((j) => [j.id, j]));
  const w = writer(seq);
  let stalled = 0;
  for (let attempt = 0; byId.size > 0; attempt++) {
    try {
      const { ids, patchBases } = blocksRequest(byId);
      const answer = attempt === 0 ? early ?? undefined : undefined;
      await api.getBlocks(init.checkoutId, ids, MAX_UPLOAD_ENTRY_BYTES, async ({ name, data }) => {
        const { id, plain, encoded } = patchBases ? await received(name, data, byId) : { id: name, plain: null, encoded: data };
        const job = byId.get(id);
        if (!job) throw new CarryonError('TAR_INVALID', `server sent block ${id.slice(0, 12)}… that was not asked for`);
        // Decoded into the run when it extends it (else scratch): consumed before the next block.
        const verified = plain ?? decodeVerified(id, encoded, job.length, w.target(job));
        if (plain) verifyPlain(id, plain);
        await cache.put(id, encoded ?? encodeBlock(verified, CACHE_LEVEL), verified);
        w.write(job, verified);
        byId.delete(id);
        crashPoint('checkout-block');
      }, patchBases, { transient: true, answer }); // nothing keeps an entry's bytes past its callback
      if (byId.size > 0) throw new CarryonError('TAR_INVALID', `server answered without ${byId.size} requested block(s)`);
    } catch (err) {
      w.flush();
      // Every block asked for arrived verified, and then the answer went wrong (more entries than asked
      // for, junk where its end belongs): a server that breaks the protocol is reported, not ignored
      // because nothing is left to ask for. Only a connection dropped after the last block is harmless.
      if (byId.size === 0) {
        if (err instanceof CarryonError && err.code === 'SERVER_UNREACHABLE') break;
        throw err;
      }
      const retriable = err instanceof CarryonError && (err.code === 'SERVER_UNREACHABLE' || err.code === 'TAR_INVALID');
      // A server that stopped answering gets one more chance, not RETRIES idle timeouts in a row.
      const stalls = err instanceof CarryonError && (err.data.reason === 'stalled' || err.data.reason === 'timeout') ? ++stalled : 0;
      if (!retriable || attempt + 1 >= RETRIES || stalls > 1) throw err;
      await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
    }
  }
  w.flush();
}

/**
 * An entry of a patched answer: a whole plaintext block, or a patch against a block of our cache. A base
 * the cache lost or holds torn is dropped from the jobs and the batch retried, so those come whole.
 */
async function received(name: string, data: Buffer, byId: Map<BlockId, BlockJob>): Promise<{ id: BlockId; plain: Buffer; encoded: null }> {
  const e = parseUploadEntryName(name);
  if (e.kind === 'block') return { id: e.id, plain: data, encoded: null };
  // Frames are an upload entry (laptop to server); a patched answer carries plaintext and patches only.
  if (e.kind === 'frame') throw new CarryonError('TAR_INVALID', `a block answer carries an upload frame entry ${name.slice(0, 80)}`);
  let base: Buffer;
  try {
    base = await getBlock(cache, e.base, init.maxBlock);
  } catch (err) {
    if (!(err instanceof CarryonError) || (err.code !== 'BLOCK_CORRUPT' && err.code !== 'BLOCK_NOT_FOUND')) throw err;
    await cache.delete(e.base);
    for (const j of byId.values()) if (j.base === e.base) delete j.base;
    throw new CarryonError('TAR_INVALID', `patch base ${e.base.slice(0, 12)}… failed verification in the local cache; fetching whole blocks`);
  }
  return { id: e.id, plain: applyBlockPatch(base, data, init.maxBlock), encoded: null };
}

/** The batches given to this worker, worked one after the other. */
let queue: Promise<void> = Promise.resolve();
const api = new ApiClient({ url: init.url, token: init.token, device: init.device, ca: init.ca, insecureHttp: init.insecureHttp });
parentPort!.on('message', (msg: WorkerRequest) => {
  if (msg.kind === 'close') {
    api.close();
    // A failure here (the disk full when the last appends are flushed) is reported, never left uncaught.
    void (async () => {
      let failure: CarryonError | null = null;
      for (const step of [async () => cache.close?.(), () => Promise.all(writebacks), async () => fsyncSync(fd)]) {
        try {
          await step();
        } catch (err) {
          failure ??= asCarryonError(err);
        }
      }
      closeSync(fd);
      post(failure ? { kind: 'closed', code: failure.code, message: failure.message } : { kind: 'closed' });
    })();
    return;
  }
  // Batches are worked one at a time, in the order they came; the pool sends a worker its next batch
  // before this one is done, and that batch's request goes out now: its answer is on the way (held back
  // by the connection's flow control) while this one is read, instead of a round trip and the server's
  // first reads between batches (idle gaps of ~10-35 ms per batch in profiles, ~0.5 s per worker per GiB).
  let early: Promise<IncomingMessage> | null = null;
  if (msg.kind === 'fetch') {
    const { ids, patchBases } = blocksRequest(new Map(msg.jobs.map((j) => [j.id, j])));
    early = api.requestBlocks(init.checkoutId, ids, patchBases);
    early.catch(() => undefined); // a failed early request is met again (and retried) by fetch
  }
  queue = queue.then(async () => {
    const before = api.bytesReceived;
    try {
      await (msg.kind === 'fetch' ? fetch(api, msg.seq, msg.jobs, early) : fromCache(msg.seq, msg.jobs));
      post({ kind: 'finished', seq: msg.seq, bytesReceived: api.bytesReceived - before });
    } catch (err) {
      const e = asCarryonError(err); // an fs error keeps its meaning (DISK_FULL, IO_ERROR) across the thread
      // The error's data crosses too (why a request failed: reason 'stalled'), as JSON like --json prints it.
      post({ kind: 'error', seq: msg.seq, code: e.code, message: e.code === 'INTERNAL' ? String((err as Error)?.message ?? err) : e.message, data: jsonData(e) });
    }
  });
});

function jsonData(e: CarryonError): Record<string, unknown> {
  try {
    return JSON.parse(JSON.stringify(e.data)) as Record<string, unknown>;
  } catch {
    return {};
  }
}
