// The laptop's side of the persona: bring a version down into a folder, read the folder back into a
// snapshot, and upload what the server lacks. Layout of a persona folder (docs/persona.md):
//   profile/      the user's profile files, as the snapshot lists them
//   registry.reg  the whole registry, written as regedit writes it (UTF-16LE, CRLF); edit it, or use
//                 `carryon persona reg import`, and the next check-in or push takes it as it stands.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import {
  applyToRegistry, CarryonError, createAlignedDelta, decodeBlock, createCompressStream, createDelta, createSignature, decodePersona, encodeChunkDelta, MAX_CHUNK_DELTA_BASES, decodeRegFile, decodeVerified, exportRegistry, getBlock,
  materializePersonaTree, registryFromText, MAX_GET_IDS, MAX_PERSONA_UPLOAD_BYTES, MAX_QUERY_IDS, packEntries, PERSONA_CHUNK_BYTES, personaId, personaUploadEntryName, Registry,
  scanPersonaTree, diffSnapshots, type BlockId, type BlockStore, type PersonaEntry, type PersonaPushInfo, type PersonaSnapshot, type TarEntry,
} from '../src/index.js';
import type { ApiClient } from './api-client.js';
import { batchesOf } from './batches.js';
import type { LocalState } from './state.js';

export const REGISTRY_FILE = 'registry.reg';
export const PROFILE_DIR = 'profile';

/** The snapshot's registry (canonical UTF-8 .reg text) as regedit writes a file: UTF-16LE with BOM, CRLF. */
function registryFileBytes(text: string): Uint8Array {
  return exportRegistry(registryFromText(text), { version: 'v5', encoding: 'utf-16le', bom: true });
}

/** Any .reg file (either format, any encoding) as the snapshot's canonical registry text; '' when empty. */
export function canonicalRegistry(bytes: Uint8Array): string {
  const reg = applyToRegistry(new Registry(), decodeRegFile(bytes));
  if (reg.size === 0) return '';
  return Buffer.from(exportRegistry(reg, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
}

/** Download a persona version (default: the newest) into `dir`, fetching only chunks the laptop cache lacks. */
export async function fetchPersona(state: LocalState, api: ApiClient, desktop: string, version: number | undefined, dir: string, previous: PersonaSnapshot | null):
  Promise<{ version: number; snapshot: PersonaSnapshot; encoded: Buffer; chunksFetched: number }> {
  const got = await api.persona(version);
  if (personaId(got.encoded) !== got.id) throw new CarryonError('BAD_REQUEST', 'the persona received does not match its id');
  const snapshot = decodePersona(got.encoded);
  // Checked before anything is fetched or written: a version this laptop cannot use changes nothing here.
  let regBytes: Uint8Array;
  try {
    regBytes = registryFileBytes(snapshot.registry);
  } catch (err) {
    throw new CarryonError('BAD_REQUEST', `the server's persona version ${got.version} holds a registry that cannot be read (${(err as Error).message}); nothing was changed on this laptop: ` +
      'ask an admin to put your persona back to an earlier version (carryon-server persona restore USER VERSION)', { version: got.version });
  }
  // An encrypted copy's chunks go into its own sealed cache, a plaintext copy's into the shared one.
  const cache = state.cacheOf(desktop);
  // Each chunk's real size: most profile files are far smaller than a chunk, and batches counted as
  // whole chunks made a check-out of 18k small files ~600 requests (each one a snapshot lookup).
  const sizes = new Map<BlockId, number>();
  for (const f of snapshot.files) f.chunks.forEach((c, i) => sizes.set(c, Math.min(PERSONA_CHUNK_BYTES, f.size - i * PERSONA_CHUNK_BYTES)));
  const missing: BlockId[] = [];
  for (const id of sizes.keys()) if (!(await cache.has(id))) missing.push(id);
  // Two requests in flight: the server reads one batch while this side verifies the other.
  const queue = [...batchesOf(missing, (id) => sizes.get(id)! + 512, 32 * PERSONA_CHUNK_BYTES, MAX_GET_IDS)];
  const arriving = new ArrivingChunks(cache, missing);
  const fetchAll = Promise.all([0, 1].map(async () => {
    for (let batch = queue.shift(); batch; batch = queue.shift()) {
      const pending = new Set(batch);
      await api.personaChunks(got.version, batch, async ({ name, data }) => {
        if (!pending.delete(name)) throw new CarryonError('TAR_INVALID', `server sent chunk ${name.slice(0, 12)}… that was not asked for`);
        const plain = decodeVerified(name, data, PERSONA_CHUNK_BYTES);
        await cache.put(name, data, plain);
        arriving.arrived(name, plain);
      });
      if (pending.size > 0) throw new CarryonError('TAR_INVALID', `server answered without ${pending.size} requested chunk(s)`);
    }
  }).map((p) => p.catch((err: unknown) => {
    queue.length = 0; // the other request stops after its batch
    arriving.fail(err);
    throw err;
  })));
  fetchAll.catch(() => undefined); // awaited below, after a few awaits: a fast failure must not go unhandled meanwhile
  const root = path.join(dir, PROFILE_DIR);
  // Into an empty folder (a first check-out), files are written while their chunks arrive, in the order
  // both take (the snapshot's path order): the download and the writing overlap. A failure then leaves
  // some files in a folder that held nothing, and no record of a copy, so the next attempt starts over.
  // A folder that holds anything gets it all first: a failure there must change nothing.
  if (!previous && (await isEmptyOrAbsent(root))) {
    await fs.mkdir(root, { recursive: true });
    const written = materializePersonaTree(root, snapshot.files, arriving, { plainOf: (id) => arriving.take(id) });
    const [f, w] = await Promise.allSettled([fetchAll, written.catch((err: unknown) => {
      queue.length = 0;
      throw err;
    })]);
    if (f.status === 'rejected') throw f.reason;
    if (w.status === 'rejected') throw w.reason;
  } else {
    await fetchAll;
    await fs.mkdir(root, { recursive: true });
    await materializePersonaTree(root, snapshot.files, cache, previous ? { previous: previous.files } : {});
  }
  await writeAtomically(path.join(dir, REGISTRY_FILE), regBytes);
  return { version: got.version, snapshot, encoded: got.encoded, chunksFetched: missing.length };
}

const HELD_PLAIN_BYTES = 64 * 1024 * 1024;

async function isEmptyOrAbsent(dir: string): Promise<boolean> {
  try {
    return (await fs.readdir(dir)).length === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
}

/**
 * The cache as materialize sees it while a download is under way: a chunk being fetched counts as
 * present, and reading it waits until it is in the cache (verified). A failed download fails the waits.
 * Up to HELD_PLAIN_BYTES of arrived plaintext is kept for materialize to take, so most chunks are
 * decoded once, not again from the cache (two decodes were ~2 s of a 1 GiB check-out); past that, new
 * arrivals are not kept (never waited for: the download must not stall behind a chunk it brings).
 */
class ArrivingChunks implements BlockStore {
  private readonly expected: Set<BlockId>;
  private readonly waits = new Map<BlockId, Array<{ resolve: () => void; reject: (err: unknown) => void }>>();
  private failure: { err: unknown } | null = null;
  private readonly plain = new Map<BlockId, Buffer>();
  private held = 0;

  constructor(private readonly cache: BlockStore, expected: readonly BlockId[]) {
    this.expected = new Set(expected);
  }

  arrived(id: BlockId, plain: Buffer): void {
    if (this.held + plain.length <= HELD_PLAIN_BYTES && !this.plain.has(id)) {
      this.plain.set(id, plain);
      this.held += plain.length;
    }
    this.expected.delete(id);
    for (const w of this.waits.get(id) ?? []) w.resolve();
    this.waits.delete(id);
  }

  /** The verified plaintext of a chunk once it arrived, once (later reads go to the cache); undefined when not kept. */
  async take(id: BlockId): Promise<Buffer | undefined> {
    if (this.expected.has(id)) await this.arrival(id);
    const p = this.plain.get(id);
    if (p) {
      this.plain.delete(id);
      this.held -= p.length;
    }
    return p;
  }

  fail(err: unknown): void {
    this.failure ??= { err };
    for (const ws of this.waits.values()) for (const w of ws) w.reject(err);
    this.waits.clear();
  }

  async has(id: BlockId): Promise<boolean> {
    return this.expected.has(id) || this.cache.has(id);
  }

  async getEncoded(id: BlockId): Promise<Buffer> {
    if (this.expected.has(id)) await this.arrival(id);
    return this.cache.getEncoded(id);
  }

  private async arrival(id: BlockId): Promise<void> {
    if (this.failure) throw this.failure.err;
    await new Promise<void>((resolve, reject) => {
      const ws = this.waits.get(id) ?? [];
      ws.push({ resolve, reject });
      this.waits.set(id, ws);
    });
  }

  put(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): Promise<void> {
    return this.cache.put(id, encoded, plain);
  }

  delete(id: BlockId): Promise<void> {
    return this.cache.delete(id);
  }

  list(): AsyncIterable<BlockId> {
    return this.cache.list();
  }

  sync(): Promise<void> {
    return this.cache.sync();
  }

  size(id: BlockId): Promise<number | null> {
    return this.cache.size(id);
  }
}

async function writeAtomically(file: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, bytes);
  await fs.rename(tmp, file);
}

export interface LocalPersona {
  snapshot: PersonaSnapshot;
  /** Newest modification among what changed since the base (ms): "newest wins" compares it. */
  editedAt: number;
  /** Chunks of new files already sent while scanning (scanPersona with `upload`). */
  chunksSentEarly: number;
}

/** Read the persona folder back into a snapshot; new file contents go into the laptop cache as chunks. */
export async function scanPersona(state: LocalState, desktop: string, dir: string, base: PersonaSnapshot, upload?: { api: ApiClient; baseVersion: number }): Promise<LocalPersona> {
  const early = upload ? new EarlyUpload(upload.api, upload.baseVersion, state.cacheOf(desktop), base) : null;
  let scan: Awaited<ReturnType<typeof scanPersonaTree>>;
  try {
    scan = await scanPersonaTree(path.join(dir, PROFILE_DIR), state.cacheOf(desktop), { previous: base, level: PERSONA_CHUNK_LEVEL, onNewChunk: early ? (c) => early.add(c) : undefined });
  } catch (err) {
    await early?.finish(true); // the upload under way ends with what it holds; nothing more is sent
    throw err;
  }
  await early?.finish(false);
  const regPath = path.join(dir, REGISTRY_FILE);
  const regBytes = await fs.readFile(regPath).catch(() => null);
  const registry = regBytes ? canonicalRegistry(regBytes) : '';
  const baseByPath = new Map(base.files.map((f) => [f.path, f]));
  let editedAt = 0;
  for (const f of scan.files) {
    const b = baseByPath.get(f.path);
    if (!b || b.hash !== f.hash || b.kind !== f.kind || b.target !== f.target) editedAt = Math.max(editedAt, f.mtimeMs);
  }
  if (registry !== base.registry && regBytes) editedAt = Math.max(editedAt, (await fs.stat(regPath)).mtimeMs);
  if (scan.files.length < base.files.length || editedAt === 0) editedAt = Math.max(editedAt, Date.now());
  return { snapshot: { files: scan.files, registry }, editedAt: Math.round(editedAt), chunksSentEarly: early?.sent ?? 0 };
}

/**
 * zstd level of the chunks a scan puts into the cache, which a push then sends as they are: 1 compressed
 * 264 MB of /usr documents and libraries at 360-408 MB/s against 230-287 MB/s for 3, 2.5% larger
 * (149.6 MB against 146.0). Compressing was the largest share of a 1 GiB first push (13 s of 41).
 */
const PERSONA_CHUNK_LEVEL = 1;

/**
 * Chunks of new files sent while the scan goes on (a first push of a whole profile): the laptop hashes
 * and compresses while the server verifies and stores, instead of one waiting for the other. Only files
 * the base lacks, and only past BULK_CHUNK_BYTES of them (a few new files go in uploadPersona's zstd
 * stream, where they compress better); a changed file's chunks wait for uploadPersona, which sends them
 * as deltas. Chunks sent before a failure stay on the server unreferenced, as those of any interrupted
 * upload do, until its garbage collection; uploadPersona then sends whatever is still missing.
 */
class EarlyUpload {
  private readonly queue: Array<{ id: BlockId; size: number }> = [];
  private held = 0;
  private wake: (() => void) | null = null;
  private done = false;
  private running: Promise<void> | null = null;
  private error: unknown = null;
  private readonly inBase: Set<string>;
  /** Chunks put into an upload body (the server has them once the request succeeded). */
  sent = 0;

  constructor(private readonly api: ApiClient, private readonly baseVersion: number, private readonly cache: BlockStore, base: PersonaSnapshot) {
    this.inBase = new Set(base.files.map((f) => f.path));
  }

  add(c: { path: string; id: BlockId; size: number }): void {
    if (this.inBase.has(c.path) || this.error) return;
    this.queue.push(c);
    this.held += c.size;
    if (!this.running && this.held >= BULK_CHUNK_BYTES) {
      this.running = this.run().catch((err: unknown) => {
        this.error = err; // uploadPersona sends what did not arrive
      });
    }
    this.wake?.();
  }

  async finish(failed: boolean): Promise<void> {
    if (failed) this.queue.length = 0;
    this.done = true;
    this.wake?.();
    await this.running;
  }

  /** The next ids to ask about: up to 256 once that many are queued, or what is left when the scan ended. */
  private async next(): Promise<Array<{ id: BlockId; size: number }>> {
    while (this.queue.length < 256 && !this.done) await new Promise<void>((resolve) => (this.wake = resolve));
    this.wake = null;
    return this.queue.splice(0, 256);
  }

  private async run(): Promise<void> {
    for (;;) {
      let cost = 0;
      let more = true;
      const self = this;
      // One request until UPLOAD_REQUEST_COST, then the next: each body streams while the scan feeds it.
      async function* entries(): AsyncGenerator<TarEntry> {
        while (cost < UPLOAD_REQUEST_COST) {
          const batch = await self.next();
          if (batch.length === 0) {
            more = false;
            return;
          }
          const missing = new Set(await self.api.personaMissing(batch.map((c) => c.id)));
          for (const c of batch) {
            if (!missing.delete(c.id)) continue;
            cost += c.size + 1024;
            self.sent++;
            yield { name: personaUploadEntryName({ kind: 'encoded', id: c.id }), data: await self.cache.getEncoded(c.id) };
          }
        }
      }
      await this.api.personaUpload(this.baseVersion, packEntries(entries()), false);
      if (!more) return;
    }
  }
}

/** The parts of a push or check-in commit: what changed since the base snapshot, and who and when. */
export function personaPushParts(base: PersonaSnapshot, ours: PersonaSnapshot, push: PersonaPushInfo): TarEntry[] {
  return [
    { name: 'persona-delta.json', data: Buffer.from(JSON.stringify(diffSnapshots(base, ours))) },
    { name: 'push.json', data: Buffer.from(JSON.stringify(push)) },
  ];
}

export interface PersonaDiff {
  added: string[];
  changed: string[];
  deleted: string[];
  registryChanged: boolean;
}

export function diffPersona(base: PersonaSnapshot, ours: PersonaSnapshot): PersonaDiff {
  const b = new Map(base.files.map((f) => [f.path, f]));
  const o = new Map(ours.files.map((f) => [f.path, f]));
  const same = (x: PersonaEntry, y: PersonaEntry): boolean => x.kind === y.kind && x.hash === y.hash && x.target === y.target && x.mode === y.mode;
  return {
    added: ours.files.filter((f) => !b.has(f.path)).map((f) => f.path),
    changed: ours.files.filter((f) => b.has(f.path) && !same(b.get(f.path)!, f)).map((f) => f.path),
    deleted: base.files.filter((f) => !o.has(f.path)).map((f) => f.path),
    registryChanged: base.registry !== ours.registry,
  };
}

/**
 * Send the server the file contents of `ours` it lacks. A chunk of a changed file goes as an rdiff delta
 * against the chunk at the same place in the file's base version (or that chunk and its neighbours,
 * when an insertion shifted the bytes) when that is smaller; any other missing chunk goes whole.
 * Returns what was sent.
 */
export async function uploadPersona(state: LocalState, api: ApiClient, desktop: string, baseVersion: number, base: PersonaSnapshot, ours: PersonaSnapshot, _dir: string): Promise<{ files: number; chunks: number; deltas: number }> {
  const cache = state.cacheOf(desktop);
  // Only chunks the base version lacks can be missing on the server (it holds every chunk of a version).
  const inBase = new Set(base.files.flatMap((f) => f.chunks));
  const all = [...new Set(ours.files.flatMap((f) => f.chunks))].filter((id) => !inBase.has(id));
  const missing = new Set<BlockId>();
  for (let k = 0; k < all.length; k += MAX_QUERY_IDS) for (const id of await api.personaMissing(all.slice(k, k + MAX_QUERY_IDS))) missing.add(id);
  if (missing.size === 0) return { files: 0, chunks: 0, deltas: 0 };
  const baseByPath = new Map(base.files.filter((f) => f.kind === 'file').map((f) => [f.path, f]));
  const files = ours.files.filter((f) => f.kind === 'file' && f.chunks.some((c) => missing.has(c)));
  let chunks = 0;
  let deltas = 0;
  // One unit per missing chunk, each sent once; `old` when the file has a base version to diff against.
  type Unit = { id: BlockId; size: number; index: number; old: PersonaEntry | null };
  const units: Unit[] = [];
  const queued = new Set<BlockId>();
  for (const f of files) {
    const b = baseByPath.get(f.path);
    const old = b && b.hash !== f.hash && b.chunks.length > 0 ? b : null;
    f.chunks.forEach((c, i) => {
      if (!missing.has(c) || queued.has(c)) return;
      queued.add(c);
      units.push({ id: c, size: Math.min(PERSONA_CHUNK_BYTES, f.size - i * PERSONA_CHUNK_BYTES), index: i, old });
    });
  }
  // What the server spends taking a request is capped (MAX_PERSONA_UPLOAD_BYTES counts the tar and what a
  // delta makes it stage and rebuild): uploads go in requests of at most UPLOAD_REQUEST_COST.
  const costOf = (u: Unit): number => (u.old ? (MAX_CHUNK_DELTA_BASES + 1) * PERSONA_CHUNK_BYTES : u.size + 1024);
  const plainEntry = async (u: Unit): Promise<TarEntry> => {
    chunks++;
    return { name: personaUploadEntryName({ kind: 'chunk', id: u.id }), data: await getBlock(cache, u.id, PERSONA_CHUNK_BYTES) };
  };
  async function* entries(batch: Unit[]): AsyncGenerator<TarEntry> {
    for (const u of batch) {
      if (!u.old) {
        yield await plainEntry(u);
        continue;
      }
      const next = await cachedPlain(cache, u.id);
      const d = await chunkDeltaOf(cache, u.old, u.index, next);
      if (d) {
        deltas++;
        yield { name: personaUploadEntryName({ kind: 'chunk-delta', id: u.id }), data: encodeChunkDelta(d.bases, d.delta) };
      } else {
        chunks++;
        yield { name: personaUploadEntryName({ kind: 'chunk', id: u.id }), data: next };
      }
    }
  }
  // Many whole chunks (a first push, a new large file) go as the zstd frames the cache holds, in a body
  // sent as is: compressing them again for the wire, and the server compressing them again to store
  // them, was most of a first push's time. A few go in the one zstd stream with the deltas, where the
  // stream's shared context makes small files smaller.
  const whole = units.filter((u) => !u.old);
  const bulk = whole.reduce((n, u) => n + u.size, 0) >= BULK_CHUNK_BYTES;
  async function* encodedEntries(batch: Unit[]): AsyncGenerator<TarEntry> {
    for (const u of batch) {
      chunks++;
      yield { name: personaUploadEntryName({ kind: 'encoded', id: u.id }), data: await cache.getEncoded(u.id) };
    }
  }
  if (bulk) {
    for (const batch of batchesOf(whole, costOf, UPLOAD_REQUEST_COST)) await api.personaUpload(baseVersion, packEntries(encodedEntries(batch)), false);
  }
  // Two requests in flight: this side makes the next request's deltas while the server rebuilds and
  // stores the last one's chunks (one after the other, a 1 GiB profile's check-in waited ~1.5 s each time).
  const queue = [...batchesOf(bulk ? units.filter((u) => u.old) : units, costOf, UPLOAD_REQUEST_COST)];
  await Promise.all([0, 1].map(async () => {
    for (let batch = queue.shift(); batch; batch = queue.shift()) {
      const tar = packEntries(entries(batch));
      const body = createCompressStream(3);
      tar.on('error', (err) => body.destroy(err));
      await api.personaUpload(baseVersion, tar.pipe(body), true);
    }
  }).map((p) => p.catch((err: unknown) => {
    queue.length = 0;
    throw err;
  })));
  return { files: files.length, chunks, deltas };
}

/**
 * A chunk from the laptop cache for making a delta, decoded without the SHA-256 check: the server
 * rebuilds the chunk from its own copy of the base and checks the result against its id, so damaged
 * cache bytes can only make the upload fail (BLOCK_CORRUPT), never store wrong bytes. The two checks
 * per changed chunk were ~0.6 s of a 1 GiB profile's check-in.
 */
async function cachedPlain(cache: BlockStore, id: BlockId): Promise<Buffer> {
  return decodeBlock(await cache.getEncoded(id), PERSONA_CHUNK_BYTES);
}

/** Per upload request, at most this much server work (half of MAX_PERSONA_UPLOAD_BYTES: room for tar overhead). */
const UPLOAD_REQUEST_COST = MAX_PERSONA_UPLOAD_BYTES / 2;
/** From this many bytes of whole chunks on, an upload sends them as stored (see uploadPersona). */
const BULK_CHUNK_BYTES = 8 * 1024 * 1024;

/**
 * The smallest delta that makes chunk `index` of a changed file (`next`, its plaintext) from its base
 * version `old`, or null when none is smaller than the chunk itself. First by position (an edit in place
 * or an append: the changed bytes exactly, at memory-compare speed), then, when more than half the
 * chunk differs in place, an rdiff delta against the base's chunks around that index (an insertion or
 * deletion shifts what follows it by less than a chunk, so it is still found there).
 */
async function chunkDeltaOf(cache: BlockStore, old: PersonaEntry, index: number, next: Buffer): Promise<{ bases: BlockId[]; delta: Buffer } | null> {
  let best: { bases: BlockId[]; delta: Buffer } | null = null;
  if (index < old.chunks.length) {
    const same = old.chunks[index]!;
    const delta = createAlignedDelta(await cachedPlain(cache, same), next, next.length / 2);
    if (delta) best = { bases: [same], delta };
  }
  if (!best) {
    const lo = Math.max(0, Math.min(index, old.chunks.length) - 1);
    const bases = old.chunks.slice(lo, Math.min(old.chunks.length, lo + MAX_CHUNK_DELTA_BASES));
    const window = Buffer.concat(await Promise.all(bases.map((b) => cachedPlain(cache, b))));
    // The signature never leaves the laptop: MD4 strong sums (264 MB/s here against 83 MB/s for our
    // TypeScript BLAKE2b); the server checks the rebuilt chunk against its id, so a collision can only fail.
    const signature = await createSignature(window, { baseSize: window.length, strongSum: 'md4' });
    const parts: Buffer[] = [];
    for await (const piece of createDelta(signature, next)) parts.push(piece);
    best = { bases, delta: Buffer.concat(parts) };
  }
  // A delta goes through the same zstd stream as a whole chunk would: it pays when it is smaller.
  return best.delta.length + 1 + 32 * best.bases.length < next.length ? best : null;
}
