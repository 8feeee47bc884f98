// Check-in: find what changed on the laptop's disk, upload only blocks the server lacks (as patches
// against the checked-out version where that is smaller, all in one zstd stream per request), then
// commit the new manifest. Re-running after a failure sends only what has not arrived; a commit that
// landed before a crash is recognised by the server and not repeated.
import { promises as fs } from 'node:fs';
import {
  CarryonError, createCompressStream, decodeCheap, decodeManifest, encodeBlock, encodeBlockPatch, encodeCheap, encodeManifest, getBlock, manifestId,
  MAX_QUERY_IDS, packEntries, rescanBlocks, scanImage, SectorCipher, SECTOR_BYTES, uploadEntryName, verifyPlain, decodePersona, encodePersona, personaId, personaSnapshotId, type PersonaCommitResult, type CommitResult, type PersonaPushInfo, type PersonaSnapshot, type BlockId, type BlockStore, type DiskManifest, type HoleMode, type ScanResult, type TarEntry,
} from '../src/index.js';
import type { ApiClient } from './api-client.js';
import { batchesOf } from './batches.js';
import { crashPoint, pausePoint } from './crash-point.js';
import { maxRss } from './checkout-engine.js';
import { diffPersona, fetchPersona, personaPushParts, scanPersona, uploadPersona, type PersonaDiff } from './persona-engine.js';
import { personaFolder } from './persona-vault.js';
import { Progress } from './progress.js';
import { CACHE_LEVEL, type LocalCheckout, type LocalState, type Login } from './state.js';
import { ServerBlockSource } from './block-source.js';
import { DiskLock } from './disk-lock.js';
import { DiskIo } from './disk-io.js';
import { sameStamp, type DiskStamp } from './disk-journal.js';
import { describeWriters, diskWriters } from './disk-users.js';
import { decryptorOf, diskStampOf, openJournal, openLocalDisk, refuseDiskWriters, removeJournal, requireCheckedOut, stampBeforeRead, startJournal } from './disk-session.js';
import type { BlockSource } from './local-disk.js';

export interface CheckinResult {
  desktop: string;
  version: number;
  previousVersion: number;
  manifestId: BlockId;
  blocksChanged: number;
  bytesChanged: number;
  blocksUploaded: number;
  blocksAsPatch: number;
  /** Whole blocks sent as zstd frames, stored by the server as sent (0 to a server that does not take them). */
  blocksAsFrames: number;
  plainBytesUploaded: number;
  bytesSent: number;
  bytesReceived: number;
  scanSeconds: number;
  /** How changes were found: from the dirty map, or by reading the whole disk (and why). */
  scanMode: 'dirty-map' | 'full';
  fullScanReason: string | null;
  scanBytesRead: number;
  /** A full scan's holes: skipped unread by SEEK_DATA (native/sparse), or read and found zero; null on the dirty-map path. */
  scanHoles: HoleMode | null;
  seconds: number;
  alreadyCommitted: boolean;
  maxRssBytes: number;
  persona: (PersonaCommitResult & { changes: PersonaDiff | null }) | null;
  /** An admin's refresh or recompose that waited for this check-in (see CommitResult.recomposed). */
  recomposed: CommitResult['recomposed'] | null;
}

/**
 * zstd level of the frames a check-in sends to a server that takes them (and keeps in the laptop cache).
 * Each 64 KiB block is compressed alone, without the context one stream over all blocks had: at level
 * 3 that cost 5-19% more bytes on real files; level 6 measured level with the stream
 * (docs/performance.md, "Server work per block").
 */
const UPLOAD_FRAME_LEVEL = 6;

/** Upload requests carry up to this much plaintext: a dropped connection costs at most one. */
const UPLOAD_BATCH_BYTES = 256 * 1024 * 1024;

export interface ScanSummary {
  manifest: DiskManifest;
  cheap: BigUint64Array;
  changed: number[];
  bytesChanged: number;
  seconds: number;
  /** dirty-map: only blocks the journal marked were read; full: the whole disk was read. */
  mode: 'dirty-map' | 'full';
  /** Why a full scan was needed, or how the map was recovered. */
  reason: string | null;
  bytesRead: number;
  /** Full scans: how holes were found (see ScanResult.holes); null for the dirty map. */
  holes: HoleMode | null;
  /** Not every block is on this laptop (a streamed check-out): the copy must not be reused as a base. */
  incomplete: boolean;
  /** The disk's stamp taken before any of it was read: the scan holds for the file only while it is unchanged. */
  stamp: DiskStamp;
}


/**
 * What changed on the laptop's disk since check-out. With a trustworthy dirty map only the blocks it
 * marks are read (time grows with the change); otherwise the whole disk is scanned (cheap hash per
 * block, SHA-256 where it differs) and the reason is reported. A streamed disk first gets the base
 * bytes of partly written blocks (or, without a usable map, every block) from the server.
 */
export async function scanChanges(state: LocalState, name: string, quiet: boolean, source?: BlockSource): Promise<ScanSummary> {
  let local = requireCheckedOut(state, name);
  const base = decodeManifest(local.manifest);
  const t0 = Date.now();
  if (!(await fs.stat(local.diskPath).catch(() => null))) {
    throw new CarryonError('NOT_CHECKED_OUT', `the disk of ${name} is gone from ${local.diskPath}: run \`carryon discard ${name}\` to give the checkout up`, { desktop: name, disk: local.diskPath });
  }
  let incomplete = false;
  if (local.state === 'streaming') {
    if (!source) throw new CarryonError('DISK_INCOMPLETE', `${name} is still streaming: its changes can be listed once \`carryon serve\` or \`carryon checkout ${name}\` has brought every block`, { desktop: name });
    const { disk, trust } = await openLocalDisk(state, local, source);
    try {
      const progress = new Progress(`fetch ${name}`, disk.size, quiet);
      if (trust.trusted) await disk.fetchMissing(disk.journal.dirtyBlocks());
      else await disk.download((p) => progress.update(p.localBytes)); // a full scan needs every block
      progress.finish();
      incomplete = !disk.complete;
      await disk.close();
    } catch (err) {
      disk.abandon();
      throw err;
    }
    if (!incomplete) {
      state.putCheckout({ ...local, state: 'active', cheap: encodeCheap(disk.cheap) });
      local = state.checkout(name)!;
    }
  }
  // Stamped before reading: a write during the scan changes it, and the check-in then refuses to commit.
  const stamp = await stampBeforeRead(local.diskPath);
  const opened = openJournal(state, local);
  const previous = { manifest: base, cheap: local.cheap ? decodeCheap(local.cheap) : new BigUint64Array(base.count) };
  if (opened.journal && opened.trust.trusted) {
    const blocks = opened.journal.dirtyBlocks();
    await opened.journal.close();
    const progress = new Progress(`scan ${name} (dirty map)`, blocks.reduce((n, i) => n + base.lengthOf(i), 0), quiet);
    const scan = await rescanBlocks(local.diskPath, blocks, previous, (d) => progress.update(d), decryptorOf(state, name));
    progress.finish();
    return summary(scan, 'dirty-map', opened.trust.reason, incomplete, t0, stamp);
  }
  if (opened.journal) await opened.journal.close();
  const reason = opened.journal ? opened.trust.reason : opened.reason;
  const size = (await fs.stat(local.diskPath)).size;
  const progress = new Progress(`scan ${name} (full: ${reason})`, size, quiet);
  const scan = await scanImage(local.diskPath, { blockSize: base.blockSize, previous, decrypt: decryptorOf(state, name), onProgress: (d) => {
    progress.update(d);
    pausePoint('full-scan'); // tests: a write in the middle of the scan
  } });
  progress.finish();
  return summary(scan, 'full', reason, incomplete, t0, stamp);
}

function summary(scan: ScanResult, mode: ScanSummary['mode'], reason: string | null, incomplete: boolean, t0: number, stamp: DiskStamp): ScanSummary {
  let bytesChanged = 0;
  for (const i of scan.changed) bytesChanged += scan.manifest.lengthOf(i);
  return { manifest: scan.manifest, cheap: scan.cheap, changed: scan.changed, bytesChanged, seconds: (Date.now() - t0) / 1000, mode, reason, bytesRead: scan.bytesRead, holes: mode === 'full' ? scan.holes : null, incomplete, stamp };
}

export async function checkinDesktop(state: LocalState, api: ApiClient, login: Login, name: string, opts: { quiet: boolean }): Promise<CheckinResult> {
  const local = requireCheckedOut(state, name);
  // No `carryon serve` may write while we read, nor a VM run straight on the file (an open handle for
  // writing, or QEMU's lock); a writer that escapes both is caught by the stamp checks.
  const lock = DiskLock.acquire(state.home, name, 'check-in');
  try {
    refuseDiskWriters(local.diskPath, name, 'a check-in now');
    return await checkinLocked(state, api, login, name, opts);
  } finally {
    lock.release();
  }
}

async function checkinLocked(state: LocalState, api: ApiClient, login: Login, name: string, opts: { quiet: boolean }): Promise<CheckinResult> {
  const t0 = Date.now();
  const pre = state.checkout(name)!;
  const scan = await scanChanges(state, name, opts.quiet, new ServerBlockSource(state.cacheOf(name), () => api, pre.checkoutId, decodeManifest(pre.manifest).blockSize));
  const before = scan.stamp;
  const local = state.checkout(name)!;
  const base = decodeManifest(local.manifest);
  const next = scan.manifest;

  const up = await uploadChanges(state, api, local, base, next, scan.changed, `checkin ${name}`, opts.quiet);

  // A write since the scan began may be missing from the new version while the laptop copy keeps it.
  requireUnchanged(local.diskPath, before);
  // The persona goes in the same commit: disk and persona become new versions together, or neither.
  const held = state.persona(name);
  let personaParts: TarEntry[] | undefined;
  let personaDiff: PersonaDiff | null = null;
  let scanned: PersonaSnapshot | null = null;
  if (held?.withDisk) {
    const dir = await personaFolder(state, held);
    const base = decodePersona(held.snapshot);
    const baseId = personaId(held.snapshot);
    const ours = await scanPersona(state, name, dir, base, baseId);
    scanned = ours.snapshot;
    personaDiff = diffPersona(base, ours.snapshot);
    await uploadPersona(state, api, name, held.version, base, ours.snapshot, dir);
    const push: PersonaPushInfo = { baseVersion: held.version, desktop: name, deviceName: login.deviceName, editedAt: ours.editedAt };
    personaParts = personaPushParts(base, baseId, ours, push);
  }
  const encoded = encodeManifest(next);
  crashPoint('checkin-before-commit');
  pausePoint('checkin-before-commit'); // tests: a garbage collection between the upload and the commit
  let commit: Awaited<ReturnType<ApiClient['commit']>>;
  try {
    commit = await api.commit(local.checkoutId, encoded, personaParts);
  } catch (err) {
    // The server's garbage collection removed a block between our upload and the commit (it keeps
    // nothing it cannot name): ask again what it lacks, send that, and commit once more.
    if (!(err instanceof CarryonError && err.code === 'BLOCKS_MISSING')) throw err;
    await uploadChanges(state, api, local, base, next, scan.changed, `checkin ${name} (again)`, opts.quiet);
    requireUnchanged(local.diskPath, before);
    commit = await api.commit(local.checkoutId, encoded, personaParts);
  }
  crashPoint('checkin-after-commit');
  if (commit.manifestId !== manifestId(encoded)) throw new CarryonError('INTERNAL', 'server committed a different manifest than sent');
  // An incomplete streamed copy keeps no cheap hashes: a later check-out must not take its missing blocks as current.
  state.putCheckout({ ...local, state: 'checked-in', version: commit.version, manifestId: commit.manifestId, manifest: encoded, cheap: scan.incomplete ? null : encodeCheap(scan.cheap) });
  // The copy as checked in, stamped as it was before the scan (and still was after the upload): a later
  // write to the file is noticed by `status` and by a re-check-out in place, never taken for this version.
  if (scan.incomplete) removeJournal(state, name);
  else await startJournal(state, { desktop: name, checkoutId: local.checkoutId, manifestId: commit.manifestId }, next, false, before).close();
  // The copy stays as a read-only reference; the desktop now lives on the server.
  await fs.chmod(local.diskPath, 0o400);
  if (held?.withDisk && commit.persona) {
    if (commit.persona.merged || commit.persona.registryDropped) {
      // Bring the folder to what the server now holds (merged edits from elsewhere, conflict copies,
      // registry keys outside the desktop's scope dropped).
      const p = await fetchPersona(state, api, name, commit.persona.version, held.dir, scanned);
      state.putPersona({ ...held, version: p.version, snapshot: p.encoded });
    } else {
      // Nothing was merged in: the new version is the folder as scanned; no need to download it.
      // Unchanged since the base: its stored encoding is the new version's (no 26 MB re-encoding for a 100,000-key registry).
      state.putPersona({ ...held, version: commit.persona.version, snapshot: personaSnapshotId(scanned!) === personaId(held.snapshot) ? held.snapshot : encodePersona(scanned!) });
    }
  }
  return {
    desktop: name, version: commit.version, previousVersion: commit.previousVersion, manifestId: commit.manifestId, blocksChanged: scan.changed.length,
    bytesChanged: scan.bytesChanged, blocksUploaded: up.blocksUploaded, blocksAsPatch: up.asPatch, blocksAsFrames: up.asFrame, plainBytesUploaded: up.plainUploaded, bytesSent: api.bytesSent,
    bytesReceived: api.bytesReceived, scanSeconds: scan.seconds, scanMode: scan.mode, fullScanReason: scan.mode === 'full' ? scan.reason : null, scanBytesRead: scan.bytesRead, scanHoles: scan.holes, seconds: (Date.now() - t0) / 1000, alreadyCommitted: commit.alreadyCommitted, maxRssBytes: maxRss(),
    persona: commit.persona ? { ...commit.persona, changes: personaDiff } : null,
    recomposed: commit.recomposed ?? null,
  };
}

/**
 * Send the server what it lacks of a scan's changed blocks: each as a patch against the block it
 * replaces where that is smaller, all in one zstd stream per request, kept in the laptop cache too.
 * Shared by check-in and replication.
 */
export async function uploadChanges(state: LocalState, api: ApiClient, local: LocalCheckout, base: DiskManifest, next: DiskManifest, changed: number[], label: string, quiet: boolean,
  readBlock?: (index: number, id: BlockId) => Promise<Buffer>): Promise<{ blocksUploaded: number; asPatch: number; asFrame: number; plainUploaded: number }> {
  // The first block index of each new id: where to read it and which base block to patch against.
  const firstIndex = new Map<BlockId, number>();
  for (const i of changed) {
    const id = next.idAt(i);
    if (id !== null && !firstIndex.has(id)) firstIndex.set(id, i);
  }
  const candidates = [...firstIndex.keys()];
  const missing: BlockId[] = [];
  // Whole blocks go as zstd frames only to a server that says it takes them (older ones refuse `z/<id>`).
  let frames = candidates.length > 0;
  for (let k = 0; k < candidates.length; k += MAX_QUERY_IDS) {
    const a = await api.missing(local.checkoutId, candidates.slice(k, k + MAX_QUERY_IDS));
    missing.push(...a.missing);
    frames &&= a.frames;
  }

  const totalPlain = missing.reduce((n, id) => n + next.lengthOf(firstIndex.get(id)!), 0);
  const progress = new Progress(label, totalPlain, quiet);
  let asPatch = 0;
  let asFrame = 0;
  let plainUploaded = 0;
  const fh = readBlock ? null : await fs.open(local.diskPath, 'r');
  const io = fh ? DiskIo.forKey(fh.fd, base.size, state.keys.dataKey(local.desktop), local.diskPath) : null;
  try {
    for (const batch of batchesOf(missing, (id) => next.lengthOf(firstIndex.get(id)!), UPLOAD_BATCH_BYTES)) {
      for (;;) {
        // Counted once the batch is taken: a batch sent again as plaintext (below) counts once.
        const sent = { asPatch: 0, asFrame: 0, plain: 0 };
        const framed = frames;
        async function* entries(): AsyncGenerator<TarEntry> {
          for (const id of batch) {
            const i = firstIndex.get(id)!;
            let plain: Buffer;
            if (readBlock) plain = await readBlock(i, id);
            else {
              plain = Buffer.allocUnsafe(next.lengthOf(i));
              await io!.read(plain, 0, plain.length, i * next.blockSize);
            }
            if (!isVerified(id, plain)) {
              throw new CarryonError('DISK_CHANGED', `block ${i} of ${local.diskPath} changed while it was being sent: stop the VM using it and try again`, { block: i });
            }
            // Keep the new block locally: the next check-in patches against it, a re-check-out reuses it.
            // To a server that takes frames, the one frame made here is both the cache entry and what is
            // sent: the server decodes and hashes it once and stores it as is (no compression there).
            const frame = encodeBlock(plain, framed ? UPLOAD_FRAME_LEVEL : CACHE_LEVEL);
            await state.cacheOf(local.desktop).put(id, frame, plain);
            const baseId = base.blockSize === next.blockSize && i < base.count ? base.idAt(i) : null;
            let entry: TarEntry = framed ? { name: uploadEntryName({ kind: 'frame', id }), data: frame } : { name: uploadEntryName({ kind: 'block', id }), data: plain };
            const basePlain = baseId === null ? null : await cachedBlock(state.cacheOf(local.desktop), baseId, base.blockSize);
            if (basePlain !== null && baseId !== null) {
              const patch = encodeBlockPatch(basePlain, plain);
              if (patch.length < plain.length) {
                entry = { name: uploadEntryName({ kind: 'patch', id, base: baseId }), data: patch };
                sent.asPatch++;
              }
            }
            if (entry.data === frame) sent.asFrame++;
            sent.plain += plain.length;
            progress.add(plain.length);
            crashPoint('checkin-upload-block');
            yield entry;
          }
        }
        const tar = packEntries(entries());
        // Single-threaded on purpose: libzstd worker threads hold whole multi-MiB jobs back, so a dropped
        // connection would lose blocks the server could otherwise have kept.
        const body = createCompressStream(3);
        tar.on('error', (err) => body.destroy(err));
        try {
          await api.upload(local.checkoutId, tar.pipe(body));
        } catch (err) {
          // A fleet upgraded server by server may answer "missing" from a new one and take the upload on
          // an old one, which refuses `z/<id>` names (TAR_INVALID): send this batch and the rest as
          // plaintext. What it stored before refusing stays; the server counts it as already had.
          if (framed && sent.asFrame > 0 && err instanceof CarryonError && err.code === 'TAR_INVALID') {
            frames = false;
            continue;
          }
          throw err;
        }
        asPatch += sent.asPatch;
        asFrame += sent.asFrame;
        plainUploaded += sent.plain;
        break;
      }
    }
  } finally {
    await fh?.close();
  }
  progress.finish();
  return { blocksUploaded: missing.length, asPatch, asFrame, plainUploaded };
}


/** A block from the laptop cache, or null when it is absent or fails verification (then the block goes whole). */
async function cachedBlock(cache: BlockStore, id: BlockId, maxBytes: number): Promise<Buffer | null> {
  try {
    return await getBlock(cache, id, maxBytes);
  } catch (err) {
    if (err instanceof CarryonError && (err.code === 'BLOCK_NOT_FOUND' || err.code === 'BLOCK_CORRUPT')) return null;
    throw err;
  }
}

function isVerified(id: BlockId, plain: Buffer): boolean {
  try {
    verifyPlain(id, plain);
    return true;
  } catch {
    return false;
  }
}

/** DISK_CHANGED (nothing committed) when the disk's stamp is no longer the one taken before the scan. */
function requireUnchanged(file: string, before: DiskStamp): void {
  let now: DiskStamp | null = null;
  try {
    now = diskStampOf(file);
  } catch {
    /* gone */
  }
  if (now && sameStamp(now, before)) return;
  const writers = diskWriters(file);
  throw new CarryonError('DISK_CHANGED', `${file} was written while the check-in read it${writers.length > 0 ? ` (${describeWriters(file, writers)})` : ''}, so nothing was committed: ` +
    'shut down the VM (or stop the process) using it, then run the check-in again', { disk: file, writers });
}
