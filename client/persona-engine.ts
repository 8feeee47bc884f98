// The laptop's side of the persona: bring a version down into a folder, read the folder back into a
// snapshot, and upload what the server lacks. Layout of a persona folder (docs/persona.md):
// profile/ the user's profile files, as the snapshot lists them
// registry.reg the whole registry, written as regedit writes it (UTF-16LE, CRLF); edit it, or use
// `carryon persona reg import`, and the next check-in or push takes it as it stands.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import {
  applyRegistryPatch, canonicalForm, canonicalRegistryText, CarryonError, checkRegistryText, createAlignedDelta, createCompressStream, createDelta,
  createSignature, decodeBlock, decodePersona, decodeVerified, diffSnapshots, encodeChunkDelta, getBlock, makeRegistryPatch, materializePersonaTree,
  MAX_CHUNK_DELTA_BASES, MAX_GET_IDS, MAX_PERSONA_UPLOAD_BYTES, MAX_QUERY_IDS, packEntries, PERSONA_CHUNK_BYTES, personaId, personaUploadEntryName,
  REG_TEXT_HEADER, registryTextFileBytes, scanPersonaTree, type BlockId, type BlockStore, type PersonaEntry, type PersonaPushInfo,
  type PersonaSnapshot, type RegistryPatch, type TarEntry,
} from '../src/index.js';
import type { ApiClient } from './api-client.js';
import { batchesOf } from './batches.js';
import type { LocalState } from './state.js';

export const REGISTRY_FILE = 'registry.reg';
export const PROFILE_DIR = 'profile';

/**
 * Per-value times of change, beside registry.reg (inside the vault for an encrypted copy, as registry
 * names are persona data): for each value changed since the base version, a hash of its line and when
 * carryon first saw it so. Reset by moving to another base (its id is in the file).
 */
export const REGISTRY_TIMES_FILE = 'registry-times.json';

/**
 * Write canonical registry text as regedit writes a file (UTF-16LE with BOM, CRLF: registryTextFileBytes),
 * a slice at a time through a temp file and a rename: 44 MB of UTF-16 for a 100,000-key registry is
 * never held at once.
 */
export async function writeRegistryFile(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await fs.open(tmp, 'w');
  try {
    if (text === '') await fh.write(registryTextFileBytes(''));
    else {
      await fh.write(Buffer.from([0xff, 0xfe]));
      for (let i = 0; i < text.length; i += READ_PIECE) await fh.write(Buffer.from(text.slice(i, i + READ_PIECE), 'utf16le'));
    }
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}

/** Any .reg file (either format, any encoding) as the snapshot's canonical registry text; '' when empty. */
export function canonicalRegistry(bytes: Uint8Array): string {
  return canonicalRegistryText(bytes);
}

/** Download a persona version (default: the newest) into `dir`, fetching only chunks the laptop cache lacks. */
export async function fetchPersona(state: LocalState, api: ApiClient, desktop: string, version: number | undefined, dir: string, previous: PersonaSnapshot | null):
  Promise<{ version: number; snapshot: PersonaSnapshot; encoded: Buffer; chunksFetched: number }> {
  const got = await api.persona(version);
  if (personaId(got.encoded) !== got.id) throw new CarryonError('BAD_REQUEST', 'the persona received does not match its id');
  const snapshot = decodePersona(got.encoded);
  // Checked before anything is fetched or written: a version this laptop cannot use changes nothing here.
  let regText: string;
  try {
    checkRegistryText(snapshot.registry);
    regText = canonicalForm(snapshot.registry, 'registry');
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
  await writeRegistryFile(path.join(dir, REGISTRY_FILE), regText);
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
  /** The profile as scanned; its registry is what the patch makes of the base's (a spelling-only edit is no change). */
  snapshot: PersonaSnapshot;
  /** Newest modification among what changed since the base (ms): "newest wins" compares it for files. */
  editedAt: number;
  /** The registry's changes since the base. */
  registryPatch: RegistryPatch;
  /** Per value edit of the patch, in its order: when carryon first saw the value as it is now (ms). */
  registryTimes: number[];
  /** Chunks of new files already sent while scanning (scanPersona with `upload`). */
  chunksSentEarly: number;
}

interface TimesFile {
  format: 'carryon-registry-times';
  version: 1;
  /** The base snapshot id the times are relative to. */
  base: string;
  /** [value key, first 32 hex digits of the SHA-256 of its line (null: deleted), ms]. */
  values: Array<[string, string | null, number]>;
}

/** Beyond this many changed values, per-value times are not kept across scans (see registryEditTimes). */
export const MAX_TIMED_EDITS = 10_000;

const lineHash = (line: string | null): string | null => (line === null ? null : createHash('sha256').update(line).digest('hex').slice(0, 32));

/**
 * The time of each value edit: kept from the last scan when the value is still as it was then, else
 * `seenAt` (registry.reg's mtime: the edit is at most that old). Writes the times file when it changed.
 */
async function registryEditTimes(dir: string, baseId: string, patch: RegistryPatch, seenAt: number): Promise<number[]> {
  const file = path.join(dir, REGISTRY_TIMES_FILE);
  // A whole registry's worth of edits (a first import): all dated by the file, none remembered (the file
  // would hold a hash a value, ~25 MB for 250,000 values); the next base starts the record afresh.
  if (patch.edits.length > MAX_TIMED_EDITS) {
    await fs.rm(file, { force: true });
    return patch.edits.map(() => seenAt);
  }
  const known = new Map<string, { h: string | null; t: number }>();
  try {
    const old = JSON.parse(await fs.readFile(file, 'utf8')) as TimesFile;
    if (old.format === 'carryon-registry-times' && old.base === baseId && Array.isArray(old.values)) {
      for (const [k, h, t] of old.values) if (typeof k === 'string' && Number.isSafeInteger(t)) known.set(k, { h, t });
    }
  } catch {
    // none yet, or unreadable: every edit is dated now
  }
  const values: TimesFile['values'] = patch.edits.map((e) => {
    const h = lineHash(e.line);
    const was = known.get(e.key);
    return [e.key, h, was && was.h === h ? was.t : seenAt];
  });
  const changed = values.length !== known.size || values.some(([k, h, t]) => known.get(k)?.h !== h || known.get(k)?.t !== t);
  if (changed) {
    // Best effort: a folder this process cannot write to still scans; its edits are then dated anew each time.
    await (values.length === 0 ? fs.rm(file, { force: true }) : writeAtomically(file, Buffer.from(JSON.stringify({ format: 'carryon-registry-times', version: 1, base: baseId, values } satisfies TimesFile))))
      .catch(() => undefined);
  }
  return values.map(([, , t]) => t);
}

const READ_PIECE = 1 << 20;

/**
 * registry.reg as canonical text. The file as checkout wrote it is UTF-16LE, and its text usually
 * ASCII: such a file is read a piece at a time into its ASCII half (never 44 MB of UTF-16 beside its
 * text). When that is the base's text itself (no edit since checkout) nothing is parsed; when it differs
 * from it in a stretch of keys, only those keys are parsed and spliced into the base's text (`spliced`:
 * the caller's walk checks the result is in canonical order, and reads the file whole if not). Any
 * other file is read whole and parsed as it is.
 */
export async function readRegistryText(file: string, size: number, baseText: string): Promise<{ text: string; spliced: boolean }> {
  const whole = async (): Promise<{ text: string; spliced: boolean }> => ({ text: canonicalRegistryText(await fs.readFile(file)), spliced: false });
  if (size < 4 || size % 2 !== 0) return whole();
  const fh = await fs.open(file, 'r');
  let ascii: Buffer;
  try {
    const bom = Buffer.alloc(2);
    await fh.read(bom, 0, 2, 0);
    if (bom[0] !== 0xff || bom[1] !== 0xfe) return await whole();
    ascii = Buffer.allocUnsafe((size - 2) / 2);
    const piece = Buffer.allocUnsafe(READ_PIECE);
    let at = 0;
    for (let pos = 2; pos < size; ) {
      const { bytesRead } = await fh.read(piece, 0, Math.min(READ_PIECE, size - pos), pos);
      if (bytesRead === 0 || bytesRead % 2 !== 0) return await whole();
      for (let i = 0; i < bytesRead; i += 2) {
        const lo = piece[i]!;
        if (piece[i + 1] !== 0 || lo >= 0x80) return await whole();
        ascii[at++] = lo;
      }
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  // ASCII reads the same as UTF-8; a REGEDIT4 header is left to the full reader (its strings are ANSI).
  if (!ascii.subarray(0, 40).toString('latin1').trimStart().startsWith(REG_TEXT_HEADER.trimEnd())) return whole();
  const spliced = baseText === '' ? null : spliceEdits(ascii, baseText);
  if (spliced !== null) return { text: spliced, spliced: spliced !== baseText };
  return { text: canonicalRegistryText(ascii, { encoding: 'utf-8' }), spliced: false };
}

/**
 * The base's canonical text with the keys where `file` (ASCII .reg text) differs from it replaced by
 * those keys of the file, canonical; the base itself when they are equal; null when the difference
 * touches the header or the text's end.
 */
function spliceEdits(file: Buffer, base: string): string | null {
  const n = Math.min(file.length, base.length);
  let p = 0;
  while (p < n && file[p] === base.charCodeAt(p)) p++;
  if (p === file.length && p === base.length) return base;
  let q = 0;
  while (q < n - p && file[file.length - 1 - q] === base.charCodeAt(base.length - 1 - q)) q++;
  // Whole key sections ("\r\n[" starts one in canonical text: no value line starts with '[').
  const start = base.lastIndexOf('\r\n[', p - 3);
  if (start < REG_TEXT_HEADER.length || q < 2) return null;
  const endBase = base.length - q;
  let end = base.indexOf('\r\n[', endBase);
  if (end < 0) end = base.length - 2;
  if (end < endBase) return null;
  const region = file.subarray(start, end + file.length - base.length);
  const text = canonicalRegistryText(Buffer.concat([Buffer.from(REG_TEXT_HEADER), region, Buffer.from('\r\n')]), { encoding: 'utf-8' });
  const keys = text === '' ? '' : text.slice(REG_TEXT_HEADER.length, -2);
  return base.slice(0, start) + keys + base.slice(end);
}

/** Read the persona folder back into a snapshot; new file contents go into the laptop cache as chunks. */
export async function scanPersona(state: LocalState, desktop: string, dir: string, base: PersonaSnapshot, baseId: string, upload?: { api: ApiClient; baseVersion: number }): Promise<LocalPersona> {
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
  const regStat = await fs.stat(regPath).catch(() => null);
  const baseText = canonicalForm(base.registry, "this copy's base registry");
  const ours = regStat ? await readRegistryText(regPath, regStat.size, baseText) : { text: '', spliced: false };
  let patch: RegistryPatch;
  try {
    patch = makeRegistryPatch(baseText, ours.text);
  } catch (err) {
    // Keys edited out of order (or added twice): the splice is not canonical; the whole file is.
    if (!(ours.spliced && err instanceof CarryonError && err.data.notCanonical === true)) throw err;
    patch = makeRegistryPatch(baseText, canonicalRegistryText(await fs.readFile(regPath)));
  }
  const registryTimes = await registryEditTimes(dir, baseId, patch, Math.round(regStat?.mtimeMs ?? Date.now()));
  // Ours is what the patch makes of the base unless it spells a name otherwise (then it is applied; the
  // edits' lines, slices of the file's text, are dropped first so that text is free by then).
  patch.edits = [];
  const registry = patch.text === '' ? base.registry : patch.exact ? ours.text : applyRegistryPatch(baseText, patch.text, { edits: false }).text;
  const baseByPath = new Map(base.files.map((f) => [f.path, f]));
  let editedAt = 0;
  for (const f of scan.files) {
    const b = baseByPath.get(f.path);
    if (!b || b.hash !== f.hash || b.kind !== f.kind || b.target !== f.target) editedAt = Math.max(editedAt, f.mtimeMs);
  }
  if (registry !== base.registry && regStat) editedAt = Math.max(editedAt, regStat.mtimeMs);
  if (scan.files.length < base.files.length || editedAt === 0) editedAt = Math.max(editedAt, Date.now());
  return { snapshot: { files: scan.files, registry }, editedAt: Math.round(editedAt), registryPatch: patch, registryTimes, chunksSentEarly: early?.sent ?? 0 };
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

/** The parts of a push or check-in commit: what changed since the base snapshot (id `baseId`), and who and when. */
export function personaPushParts(base: PersonaSnapshot, baseId: string, ours: LocalPersona, push: PersonaPushInfo): TarEntry[] {
  const delta = diffSnapshots(base, ours.snapshot, { baseId, patch: ours.registryPatch, times: ours.registryTimes });
  return [
    { name: 'persona-delta.json', data: Buffer.from(JSON.stringify(delta)) },
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
