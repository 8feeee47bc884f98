// The laptop's side of the persona: bring a version down into a folder, read the folder back into a
// snapshot, and upload what the server lacks. Layout of a persona folder (docs/persona.md):
//   profile/      the user's profile files, as the snapshot lists them
//   registry.reg  the whole registry, written as regedit writes it (UTF-16LE, CRLF); edit it, or use
//                 `carryon persona reg import`, and the next check-in or push takes it as it stands.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import {
  applyRegistryPatch, canonicalForm, canonicalRegistryText, CarryonError, checkRegistryText, createCompressStream, createDelta, createSignature, decodePersona, decodeVerified, getBlock,
  makeRegistryPatch, materializePersonaTree, MAX_GET_IDS, MAX_PERSONA_ENTRY_BYTES, MAX_PERSONA_UPLOAD_BYTES, MAX_QUERY_IDS, packEntries, PERSONA_CHUNK_BYTES, personaId, personaUploadEntryName,
  registryTextFileBytes, REG_TEXT_HEADER, scanPersonaTree, diffSnapshots, type BlockId, type BlockStore, type PersonaEntry, type PersonaPushInfo, type PersonaSnapshot, type RegistryPatch, type TarEntry,
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
  const wanted = [...new Set(snapshot.files.flatMap((f) => f.chunks))];
  const missing: BlockId[] = [];
  for (const id of wanted) if (!(await cache.has(id))) missing.push(id);
  // Two requests in flight: the server reads one batch while this side verifies the other.
  const queue = [...batchesOf(missing, () => PERSONA_CHUNK_BYTES, 32 * PERSONA_CHUNK_BYTES, MAX_GET_IDS)];
  await Promise.all([0, 1].map(async () => {
    for (let batch = queue.shift(); batch; batch = queue.shift()) {
      const pending = new Set(batch);
      await api.personaChunks(got.version, batch, async ({ name, data }) => {
        if (!pending.delete(name)) throw new CarryonError('TAR_INVALID', `server sent chunk ${name.slice(0, 12)}… that was not asked for`);
        await cache.put(name, data, decodeVerified(name, data, PERSONA_CHUNK_BYTES));
      });
      if (pending.size > 0) throw new CarryonError('TAR_INVALID', `server answered without ${pending.size} requested chunk(s)`);
    }
  }).map((p) => p.catch((err: unknown) => {
    queue.length = 0; // the other request stops after its batch
    throw err;
  })));
  await fs.mkdir(path.join(dir, PROFILE_DIR), { recursive: true });
  await materializePersonaTree(path.join(dir, PROFILE_DIR), snapshot.files, cache, previous ? { previous: previous.files } : {});
  await writeRegistryFile(path.join(dir, REGISTRY_FILE), regText);
  return { version: got.version, snapshot, encoded: got.encoded, chunksFetched: missing.length };
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
export async function scanPersona(state: LocalState, desktop: string, dir: string, base: PersonaSnapshot, baseId: string): Promise<LocalPersona> {
  const scan = await scanPersonaTree(path.join(dir, PROFILE_DIR), state.cacheOf(desktop), { previous: base });
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
  return { snapshot: { files: scan.files, registry }, editedAt: Math.round(editedAt), registryPatch: patch, registryTimes };
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
 * Send the server the file contents of `ours` it lacks: a changed file as an rdiff delta against its
 * base version when the server has that and the delta is small enough, else its chunks. Returns the
 * number of entries sent.
 */
export async function uploadPersona(state: LocalState, api: ApiClient, desktop: string, baseVersion: number, base: PersonaSnapshot, ours: PersonaSnapshot, dir: string): Promise<{ files: number; chunks: number; deltas: number }> {
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
  const sent = new Set<BlockId>();
  // What the server spends taking a request is capped (MAX_PERSONA_UPLOAD_BYTES counts the tar and every
  // file a delta rebuilds, with its staged base): uploads go in requests of at most UPLOAD_REQUEST_COST.
  const deltaWorthy = (f: PersonaEntry): PersonaEntry | null => {
    const old = baseByPath.get(f.path);
    return old && old.hash !== f.hash && old.size > 0 && old.size + f.size <= MAX_DELTA_REBUILD ? old : null;
  };
  // A changed file worth a delta is one unit; any other file's missing chunks are units of their own,
  // so a large new file is spread over several requests.
  type Unit = { file: PersonaEntry; old: PersonaEntry } | { chunk: BlockId; size: number };
  const units: Unit[] = [];
  for (const f of files) {
    const old = deltaWorthy(f);
    if (old) units.push({ file: f, old });
    else f.chunks.forEach((c, i) => missing.has(c) && units.push({ chunk: c, size: Math.min(PERSONA_CHUNK_BYTES, f.size - i * PERSONA_CHUNK_BYTES) }));
  }
  const costOf = (u: Unit): number => ('file' in u ? u.old.size + 2 * u.file.size : u.size);
  const chunkEntry = async (c: BlockId): Promise<TarEntry | null> => {
    if (!missing.has(c) || sent.has(c)) return null;
    sent.add(c);
    chunks++;
    return { name: personaUploadEntryName({ kind: 'chunk', id: c }), data: await getBlock(cache, c, PERSONA_CHUNK_BYTES) };
  };
  async function* entries(batch: Unit[]): AsyncGenerator<TarEntry> {
    for (const u of batch) {
      if ('chunk' in u) {
        const e = await chunkEntry(u.chunk);
        if (e) yield e;
        continue;
      }
      const f = u.file;
      const delta = await deltaOf(cache, u.old, path.join(dir, PROFILE_DIR, ...f.path.split('/')));
      if (delta && delta.length < f.size / 2) {
        deltas++;
        for (const c of f.chunks) sent.add(c);
        yield { name: personaUploadEntryName({ kind: 'delta', file: f.hash!, base: u.old.hash! }), data: delta };
        continue;
      }
      for (const c of f.chunks) {
        const e = await chunkEntry(c);
        if (e) yield e;
      }
    }
  }
  for (const batch of batchesOf(units, costOf, UPLOAD_REQUEST_COST)) {
    const tar = packEntries(entries(batch));
    const body = createCompressStream(3);
    tar.on('error', (err) => body.destroy(err));
    await api.personaUpload(baseVersion, tar.pipe(body));
  }
  return { files: files.length, chunks, deltas };
}

/** Per upload request, at most this much server work (half of MAX_PERSONA_UPLOAD_BYTES: room for tar overhead). */
const UPLOAD_REQUEST_COST = MAX_PERSONA_UPLOAD_BYTES / 2;
/** A changed file goes as a delta only when it and its base fit one request; a larger one sends its changed chunks. */
const MAX_DELTA_REBUILD = UPLOAD_REQUEST_COST / 2;

/** An rdiff delta turning the base file (from the cache) into the file on disk; null when too large to send as one entry. */
async function deltaOf(cache: BlockStore, base: PersonaEntry, file: string): Promise<Buffer | null> {
  async function* baseBytes(): AsyncGenerator<Buffer> {
    for (const c of base.chunks) yield await getBlock(cache, c, PERSONA_CHUNK_BYTES);
  }
  // The signature stays on the laptop, so its size costs nothing on the wire: 2 KiB blocks (librsync's
  // default is ~sqrt(size), 13.6 KB for a 185 MB mailbox) make each scattered edit cost 2 KiB, not 13.6
  // (measured by scripts/bench/persona-bench.ts: the inbox's 4-byte "read" flags alone cost 1.4 MB).
  // MD4 strong sums: 264 MB/s here against 83 MB/s for our TypeScript BLAKE2b. A collision cannot slip
  // through: the server checks the rebuilt file against its SHA-256 and refuses a mismatch.
  const signature = await createSignature(Readable.from(baseBytes()), {
    baseSize: base.size, blockLength: base.size > 4 * 1024 * 1024 ? 2048 : 0, strongSum: 'md4',
  });
  const parts: Buffer[] = [];
  let n = 0;
  for await (const piece of createDelta(signature, Readable.from((async function* () {
    const fh = await fs.open(file, 'r');
    try {
      const buf = Buffer.allocUnsafe(PERSONA_CHUNK_BYTES);
      for (let r; (r = await fh.read(buf, 0, buf.length, null)).bytesRead > 0; ) yield Buffer.from(buf.subarray(0, r.bytesRead));
    } finally {
      await fh.close();
    }
  })()))) {
    n += piece.length;
    if (n > MAX_PERSONA_ENTRY_BYTES) return null;
    parts.push(piece);
  }
  return Buffer.concat(parts, n);
}
