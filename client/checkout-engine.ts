// Check-out: bring a desktop's disk to this laptop, downloading only blocks the local cache lacks.
// The disk is assembled in PATH.partial and renamed to PATH only when every block is written, synced
// and verified, so PATH is never a half-written disk. Re-running after a kill or a dropped connection
// resumes: verified blocks are already in the cache and are not fetched again.
import { fetchBootTrace } from './boot-trace.js';
import { closeSync, constants as fsc, existsSync, fdatasyncSync, ftruncateSync, openSync, promises as fs, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import {
  CarryonError, CheapHasher, diskSpace, keyCheck, sealToEscrow, fmtBytes, decodeManifest, type CheckoutInfo, decodePersona, personaId, encodeCheap, decodeCheap, manifestId, MAX_GET_IDS, type BlockId, type DiskManifest, type PersonaSnapshot, type RegistryScope,
} from '../src/index.js';
import type { ApiClient } from './api-client.js';
import { batchesOf } from './batches.js';
import { CheckoutPool, type BlockJob } from './checkout-pool.js';
import { diffPersona, fetchPersona, scanPersona } from './persona-engine.js';
import { GUEST_CHANGES_FILE, GUEST_LOGOFF_FILE, writeGuestChanges, writeRegistryScope } from './persona-registry.js';
import { checkMountPoint, closePersonaVault, defaultPersonaMount, isPersonaVault, openPersonaVault, requirePersonaVault } from './persona-vault.js';
import { Progress } from './progress.js';
import { ServerBlockSource } from './block-source.js';
import { DiskLock } from './disk-lock.js';
import { requireLease } from './lease.js';
import { MAX_STREAM_BLOCK } from './local-disk.js';
import { diskStampOf, openLocalDisk, outsideChanges, refuseDiskWriters, startJournal } from './disk-session.js';
import type { LocalCheckout, LocalState, Login } from './state.js';
import { defaultSources } from './keyring.js';
import { wipeDesktopBlocks } from './wipe.js';

export interface CheckoutResult {
  desktop: string;
  disk: string;
  version: number;
  manifestId: BlockId;
  size: number;
  blocks: number;
  blocksFetched: number;
  blocksFromCache: number;
  blocksWritten: number;
  bytesReceived: number;
  resumed: boolean;
  alreadyCheckedOut: boolean;
  seconds: number;
  /** Peak resident memory of this process: stays bounded whatever the image size. */
  maxRssBytes: number;
  persona: { dir: string; version: number; files: number; chunksFetched: number } | null;
  /** checkout --stream: how much is local when the command returns; the blocks of the image version's boot trace (null: the server could not say). */
  streaming?: { localBlocks: number; blocks: number; bootTraceBlocks: number | null };
  /**
   * A copy updated in place had been written outside carryon after its check-in: those blocks were
   * kept and marked for the next check-in (the desktop was still at the version checked in), or
   * replaced by the new version's (it had moved on). Null when the copy was as checked in.
   */
  outsideWrites?: { blocks: number; kept: boolean; reason: string } | null;
}

/** Blocks of a checked-in copy written outside carryon since, and whether the re-check-out keeps them. */
interface Stray {
  blocks: Set<number>;
  cheap: BigUint64Array;
  keep: boolean;
  reason: string;
}

/** Fetch batches of up to this much plaintext: big enough to amortise a request, small enough to retry. */
const BATCH_BYTES = 16 * 1024 * 1024;

export async function checkoutDesktop(state: LocalState, api: ApiClient, login: Login, name: string,
  opts: { to?: string; personaTo?: string; quiet: boolean; stream?: boolean; passphraseFile?: string; encrypt?: boolean }): Promise<CheckoutResult> {
  const t0 = Date.now();
  const local = state.checkout(name);
  if (local?.state === 'streaming' && !opts.stream) return finishStream(state, api, local, opts.quiet, t0);
  if (local?.state === 'active' || local?.state === 'streaming') {
    return { desktop: name, disk: local.diskPath, version: local.version, manifestId: local.manifestId, size: decodeManifest(local.manifest).size, blocks: 0, blocksFetched: 0,
      blocksFromCache: 0, blocksWritten: 0, bytesReceived: 0, resumed: false, alreadyCheckedOut: true, seconds: 0, maxRssBytes: maxRss(), persona: null };
  }
  const disk = path.resolve(opts.to ?? local?.diskPath ?? path.join(state.home, 'desktops', name, 'disk.raw'));
  const partial = `${disk}.partial`;
  // Only files this laptop made for this desktop may be overwritten.
  const ours = local !== null && local.diskPath === disk;
  if (!ours && (await exists(disk))) throw new CarryonError('LOCAL_PATH_CONFLICT', `${disk} already exists and is not a copy of ${name} made by carryon: choose another --to`, { path: disk });
  if (!ours && (await exists(partial)) && local?.state !== 'downloading') {
    throw new CarryonError('LOCAL_PATH_CONFLICT', `${partial} exists and is not carryon's: remove it or choose another --to`, { path: partial });
  }
  // A checked-in copy to update in place: nothing may be writing it, and writes made to it since its
  // check-in are found now (never taken for the version's bytes).
  const inPlace = ours && local.state === 'checked-in' && local.cheap !== null && (await exists(disk));
  let outside: Awaited<ReturnType<typeof outsideChanges>> = null;
  if (inPlace) {
    refuseDiskWriters(disk, name, 'updating it in place now');
    const progress = new Progress(`check ${name} (written after check-in?)`, decodeManifest(local.manifest).size, opts.quiet);
    outside = await outsideChanges(state, local, (d) => progress.update(d));
    progress.finish();
  }

  // An encrypted copy's persona needs gocryptfs: say so before the server opens a checkout.
  if (opts.encrypt === true || state.keys.isEncrypted(name)) {
    requirePersonaVault();
    if (opts.personaTo !== undefined) checkMountPoint(state.home, opts.personaTo);
  }
  const info = await api.startCheckout(name, login.deviceName);
  const encoded = await api.manifest(info.checkoutId);
  if (manifestId(encoded) !== info.manifestId) throw new CarryonError('MANIFEST_INVALID', 'the manifest received does not match its id');
  const manifest = decodeManifest(encoded);
  if (opts.stream && manifest.blockSize > MAX_STREAM_BLOCK) {
    throw new CarryonError('INVALID_ARGUMENT', `${name} has ${manifest.blockSize / 1024} KiB blocks; a streamed check-out needs ${MAX_STREAM_BLOCK / 1024} KiB or less: check it out without --stream`, { blockSize: manifest.blockSize });
  }

  // Encryption at rest: a copy keeps its key across trips; the policy can require one for a new copy.
  const enc = await prepareEncryption(state, api, name, info, opts.passphraseFile, opts.encrypt === true);
  if (enc.key) {
    // Its persona will need gocryptfs and a mount point outside the home: refuse now, before any download.
    requirePersonaVault();
    if (opts.personaTo !== undefined) checkMountPoint(state.home, opts.personaTo);
  }
  const startOver = enc.fresh && ours && (await exists(disk));
  if (startOver) {
    // A plaintext copy from an earlier trip cannot be updated in place under a new key: start over, and
    // take its plaintext blocks out of the shared cache too (nothing of this desktop stays readable).
    await fs.rm(disk, { force: true });
    await fs.rm(partial, { force: true });
    await wipeDesktopBlocks(state, name, null);
  }
  const cache = state.cacheOf(name);

  // What is already on disk: a checked-in copy of this desktop at the same path is updated in place.
  let prior: { manifest: DiskManifest; cheap: BigUint64Array } | null = null;
  let stray: Stray | null = null;
  if (outside && outside.blocks.length > 0) {
    // Still the version checked in: the outside writes are the desktop's newest bytes, kept and sent at
    // the next check-in. A newer version: they were made to a copy that is no longer the desktop, and
    // its blocks replace them (as do all of a copy started over).
    const keep = !startOver && info.manifestId === local!.manifestId && outside.size === manifest.size;
    stray = { blocks: new Set(outside.blocks), cheap: outside.cheap, keep, reason: outside.reason };
  }
  if (inPlace && !startOver) {
    prior = { manifest: decodeManifest(local.manifest), cheap: decodeCheap(local.cheap!) };
    await fs.chmod(disk, 0o600);
    await fs.rename(disk, partial);
  }
  const resumed = info.resumed || local?.state === 'downloading';
  const lease = { leaseExpiresAt: info.leaseExpiresAt ?? null };
  const keepSecret = (): void => {
    if (info.leaseSecret) state.setLeaseSecret(name, Buffer.from(info.leaseSecret, 'base64'));
  };
  if (opts.stream) {
    const r = await startStream(state, api, login, name, { info, encoded, manifest, disk, prior, stray, local, personaTo: opts.personaTo, resumed, t0 });
    keepSecret();
    return r;
  }
  state.putCheckout({ desktop: name, server: login.url, checkoutId: info.checkoutId, state: 'downloading', version: info.version, manifestId: info.manifestId,
    manifest: encoded, cheap: null, diskPath: disk, startedAt: new Date().toISOString(), ...lease });
  keepSecret();

  await fs.mkdir(path.dirname(disk), { recursive: true });
  const fd = openSync(partial, fsc.O_RDWR | fsc.O_CREAT, 0o600);
  const hasher = new CheapHasher();
  const cheap = new BigUint64Array(manifest.count);
  const zeroHashes = new Map<number, bigint>();
  const zeroHash = (len: number): bigint => {
    let h = zeroHashes.get(len);
    if (h === undefined) zeroHashes.set(len, (h = hasher.hash(Buffer.alloc(len))));
    return h;
  };
  // Which block indices must be written, grouped by id.
  const where = new Map<BlockId, number[]>();
  const zeroIdx: number[] = [];
  try {
    ftruncateSync(fd, manifest.size);
    const samePrior = prior && prior.manifest.blockSize === manifest.blockSize ? prior : null;
    for (let i = 0; i < manifest.count; i++) {
      const id = manifest.idAt(i);
      const unchanged = samePrior && i < samePrior.manifest.count && samePrior.manifest.lengthOf(i) === manifest.lengthOf(i) &&
        samePrior.manifest.ids.compare(manifest.ids, i * 32, i * 32 + 32, i * 32, i * 32 + 32) === 0;
      const outsideWrite = samePrior !== null && stray !== null && stray.blocks.has(i);
      if (unchanged && (!outsideWrite || stray!.keep)) {
        cheap[i] = outsideWrite ? stray!.cheap[i]! : samePrior.cheap[i]!;
        continue;
      }
      if (id === null) {
        // A hole: a fresh file reads zeros already; an old copy needs them written.
        if (samePrior && i < samePrior.manifest.count && (!samePrior.manifest.isHole(i) || outsideWrite)) zeroIdx.push(i);
        cheap[i] = zeroHash(manifest.lengthOf(i));
        continue;
      }
      const list = where.get(id);
      if (list) list.push(i);
      else where.set(id, [i]);
    }
    const zeros = Buffer.alloc(manifest.blockSize);
    for (const i of zeroIdx) writeSync(fd, zeros, 0, manifest.lengthOf(i), i * manifest.blockSize);
  } finally {
    closeSync(fd);
  }

  const cached: BlockId[] = [];
  const toFetch: BlockId[] = [];
  for (const id of where.keys()) ((await cache.has(id)) ? cached : toFetch).push(id);
  const plainOf = (id: BlockId): number => manifest.lengthOf(where.get(id)![0]!);
  const totalBytes = [...where.keys()].reduce((n, id) => n + plainOf(id), 0);
  const progress = new Progress(`checkout ${name}`, totalBytes, opts.quiet);
  let bytesDone = 0;
  const refetch: BlockId[] = [];
  let written = 0;
  let fetched = 0;
  // Blocks that replace a block this laptop holds (a re-check-out in place) can come as patches against it.
  const baseOf = new Map<BlockId, BlockId>();
  const samePriorBs = prior && prior.manifest.blockSize === manifest.blockSize ? prior : null;
  if (samePriorBs && local) {
    for (const id of toFetch) {
      const i = where.get(id)![0]!;
      const old = i < samePriorBs.manifest.count && samePriorBs.manifest.lengthOf(i) === manifest.lengthOf(i) ? samePriorBs.manifest.idAt(i) : null;
      if (old !== null && (await cache.has(old))) baseOf.set(id, old);
    }
  }
  // A disk that cannot hold the blocks still to write fails now, not half-way (the cache needs about as
  // much again, compressed; a full disk later is reported the same way and resumes).
  needSpace(name, partial, [...where.keys()].reduce((n, id) => n + plainOf(id) * where.get(id)!.length, 0));
  const cacheRoot = enc.key ? state.vaultCacheRoot(name) : state.cache.root;
  const pool = new CheckoutPool({ cacheRoot, dataKey: enc.key ? enc.key.toString('base64') : null, disk: partial, url: login.url, token: login.token, device: login.device, ca: login.ca, insecureHttp: login.insecureHttp, checkoutId: info.checkoutId,
    maxBlock: manifest.blockSize, baseVersion: baseOf.size > 0 ? local!.version : null }, (d) => {
    if (d.cheap === null) return void refetch.push(d.id);
    for (const i of where.get(d.id)!) cheap[i] = d.cheap;
    progress.add(d.plainBytes);
    bytesDone += d.plainBytes;
    written++;
  });
  const jobs = (ids: BlockId[]): BlockJob[][] =>
    [...batchesOf(ids, plainOf, BATCH_BYTES, MAX_GET_IDS)].map((b) => b.map((id) => ({ id, length: plainOf(id), offsets: where.get(id)!.map((i) => i * manifest.blockSize), base: baseOf.get(id) })));
  try {
    await pool.run('cached', jobs(cached));
    toFetch.push(...refetch); // cached blocks that failed verification
    const before = written;
    await pool.run('fetch', jobs(toFetch));
    fetched = written - before;
    await pool.close(); // commits the workers' cache index and fsyncs the disk
  } catch (err) {
    await pool.close().catch(() => undefined); // the first failure is the one to report
    throw diskFullHint(err, name, [disk, cacheRoot], totalBytes - bytesDone);
  } finally {
    api.bytesReceived += pool.bytesReceived;
  }
  progress.finish();
  const result = { desktop: name, disk, version: info.version, manifestId: info.manifestId, size: manifest.size, blocks: manifest.count,
    blocksFetched: fetched, blocksFromCache: written - fetched, blocksWritten: [...where.values()].reduce((n, l) => n + l.length, 0) + zeroIdx.length,
    resumed, alreadyCheckedOut: false };
  // The cache is not fsynced: a block lost to a power cut fails verification and is fetched again.
  await fs.rename(partial, disk);
  await syncDir(path.dirname(disk));
  // The dirty map starts empty (but for outside writes kept), stamped with the disk as written: writes by
  // anything but `carryon serve` are noticed.
  const journal = startJournal(state, { desktop: name, checkoutId: info.checkoutId, manifestId: info.manifestId }, manifest, false, null);
  if (stray?.keep) await journal.markDirty([...stray.blocks].sort((x, y) => x - y));
  await journal.closeClean(diskStampOf(disk));
  await journal.close();
  // The persona comes with the disk: the version the server recorded with this checkout.
  const personaDir = path.resolve(opts.personaTo ?? path.join(path.dirname(disk), 'persona'));
  const persona = await checkoutPersona(state, api, login, name, info.personaVersion, personaDir, true, opts.personaTo, info.registryScope);
  state.putCheckout({ desktop: name, server: login.url, checkoutId: info.checkoutId, state: 'active', version: info.version, manifestId: info.manifestId,
    manifest: encoded, cheap: encodeCheap(cheap), diskPath: disk, startedAt: local?.state === 'downloading' ? local.startedAt : new Date().toISOString() });
  return { ...result, bytesReceived: api.bytesReceived, seconds: (Date.now() - t0) / 1000, maxRssBytes: maxRss(), persona, outsideWrites: strayReport(stray) };
}

function strayReport(stray: Stray | null): CheckoutResult['outsideWrites'] {
  return stray ? { blocks: stray.blocks.size, kept: stray.keep, reason: stray.reason } : null;
}

/**
 * The copy's data key: the one it has (a copy stays encrypted), or a new one when the desktop's policy
 * requires encryption (making the laptop's keyring first if it has none). The key is deposited with
 * the server, sealed to its escrow key, before any block comes down: the server refuses blocks of a
 * required-encrypted checkout until then.
 */
async function prepareEncryption(state: LocalState, api: ApiClient, name: string, info: CheckoutInfo, passphraseFile: string | undefined, asked: boolean): Promise<{ key: Buffer | null; fresh: boolean }> {
  let key = state.keys.isEncrypted(name) ? state.keys.dataKey(name) : null;
  let fresh = false;
  if (!key && (info.encryption.required || asked)) {
    await state.keys.ensure(defaultSources(passphraseFile), info.encryption.required ? `${name} must be encrypted on this laptop (your admin's policy)` : `${name} is to be encrypted on this laptop (--encrypt)`);
    key = state.keys.createDataKey(name);
    fresh = true;
  }
  if (key && info.encryption.escrowKey) {
    await api.depositEscrow(info.checkoutId, { sealed: sealToEscrow(info.encryption.escrowKey, key, info.checkoutId).toString('base64'), keyCheck: keyCheck(key) });
  }
  return { key, fresh };
}

/** Bring a persona version (default: the newest) into `dir` and record it as this laptop's copy. */
/**
 * Bring a persona version (default: the newest) into its folder and record it as this laptop's copy.
 * A plaintext copy goes into `plainDir`. An encrypted copy's persona goes into its gocryptfs vault,
 * mounted at `to` (--persona-to), where it was mounted before, or the default mount point outside the home.
 */
export async function checkoutPersona(state: LocalState, api: ApiClient, login: Login, name: string, version: number | undefined, plainDir: string, withDisk: boolean, to?: string,
  registryScope?: RegistryScope) {
  const held = state.persona(name);
  let dir = plainDir;
  let previous: PersonaSnapshot | null = null;
  let plainLeftover: string | null = null;
  if (state.keys.isEncrypted(name)) {
    const heldVault = held && isPersonaVault(state, name) ? held.dir : null;
    dir = path.resolve(to ?? heldVault ?? defaultPersonaMount(state.home, name));
    if (heldVault && heldVault !== dir) {
      const c = await closePersonaVault(state, heldVault, false);
      if (c.busy) throw new CarryonError('LOCAL_PATH_CONFLICT', `the persona of ${name} is mounted at ${heldVault} and in use there (${c.busy}): close what uses it, then run the check-out again`, { path: heldVault });
    }
    if (held && !heldVault) {
      // A plaintext persona folder from before this copy was encrypted: its edits must not be lost.
      const base = decodePersona(held.snapshot);
      const d = diffPersona(base, (await scanPersona(state, name, held.dir, base, personaId(held.snapshot))).snapshot);
      if (d.added.length + d.changed.length + d.deleted.length > 0 || d.registryChanged) {
        throw new CarryonError('LOCAL_PATH_CONFLICT', `${held.dir} holds persona edits not sent yet, and ${name} is now encrypted on this laptop: ` +
          `run \`carryon persona push ${name}\` first (or discard them), then check out again`, { path: held.dir });
      }
      plainLeftover = held.dir;
    }
    await openPersonaVault(state, name, dir);
    if (heldVault && held && heldVault === dir) previous = decodePersona(held.snapshot);
  } else if (held && held.dir === dir) {
    previous = decodePersona(held.snapshot);
  }
  const p = await fetchPersona(state, api, name, version, dir, previous);
  state.putPersona({ desktop: name, server: login.url, version: p.version, snapshot: p.encoded, dir, withDisk });
  // The desktop's registry scope as the checkout (or the desktop's info) gave it, for `carryon persona
  // status` and `reg import/export` offline; absent from an older server: the default is assumed.
  await writeRegistryScope(dir, registryScope);
  // A Windows guest that logged off into this folder gets what changed since, at its next logon. The
  // persona is in place already: a logoff file that cannot be read is reported, not a failed check-out.
  const guestChanges = await writeGuestChanges(dir).catch((err: Error) => ({ error: `${GUEST_LOGOFF_FILE} was not turned into ${GUEST_CHANGES_FILE}: ${err.message}` }));
  if (plainLeftover) await fs.rm(plainLeftover, { recursive: true, force: true });
  return { dir, version: p.version, files: p.snapshot.files.filter((f) => f.kind === 'file').length, chunksFetched: p.chunksFetched, guestChanges };
}

export function maxRss(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.lstat(p);
    return true;
  } catch {
    return false;
  }
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export type { LocalCheckout };

interface StreamStart {
  info: CheckoutInfo;
  encoded: Buffer;
  manifest: DiskManifest;
  disk: string;
  prior: { manifest: DiskManifest; cheap: BigUint64Array } | null;
  stray: Stray | null;
  local: LocalCheckout | null;
  personaTo: string | undefined;
  resumed: boolean;
  t0: number;
}

/**
 * checkout --stream: return as soon as the manifest and the persona are local. The disk file is made
 * at full size (sparse); `carryon serve` fetches blocks as the VM reads them and downloads the rest.
 * A checked-in copy at the same path keeps its unchanged blocks (they count as local at once).
 */
async function startStream(state: LocalState, api: ApiClient, login: Login, name: string, s: StreamStart): Promise<CheckoutResult> {
  const { manifest, disk, info } = s;
  // A copy renamed aside by the caller comes back: in streaming mode the file is used in place.
  const partial = `${disk}.partial`;
  const reuse = s.prior && s.prior.manifest.blockSize === manifest.blockSize && (await exists(partial)) ? s.prior : null;
  const stray = reuse ? s.stray : null;
  state.putCheckout({ desktop: name, server: login.url, checkoutId: info.checkoutId, state: 'downloading', version: info.version, manifestId: info.manifestId,
    manifest: s.encoded, cheap: null, diskPath: disk, startedAt: new Date().toISOString(), leaseExpiresAt: info.leaseExpiresAt ?? null });
  await fs.mkdir(path.dirname(disk), { recursive: true });
  if (reuse) await fs.rename(partial, disk);
  const fd = openSync(disk, reuse ? 'r+' : 'w', 0o600);
  const cheap = new BigUint64Array(manifest.count);
  const local: number[] = [];
  try {
    ftruncateSync(fd, manifest.size);
    if (reuse) {
      const zeros = Buffer.alloc(manifest.blockSize);
      for (let i = 0; i < manifest.count; i++) {
        const was = i < reuse.manifest.count && reuse.manifest.lengthOf(i) === manifest.lengthOf(i);
        const outsideWrite = stray !== null && stray.blocks.has(i);
        if (was && reuse.manifest.ids.compare(manifest.ids, i * 32, i * 32 + 32, i * 32, i * 32 + 32) === 0 && (!outsideWrite || stray!.keep)) {
          cheap[i] = outsideWrite ? stray!.cheap[i]! : reuse.cheap[i]!;
          local.push(i);
        } else if (manifest.isHole(i)) writeSync(fd, zeros, 0, manifest.lengthOf(i), i * manifest.blockSize); // old bytes where the new version has a hole
      }
    }
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const journal = startJournal(state, { desktop: name, checkoutId: info.checkoutId, manifestId: info.manifestId }, manifest, true, null);
  journal.markPresent(local);
  if (stray?.keep) await journal.markDirty([...stray.blocks].sort((x, y) => x - y)); // kept outside writes go up at the next check-in
  await journal.closeClean(diskStampOf(disk));
  await journal.close();
  const personaDir = path.resolve(s.personaTo ?? path.join(path.dirname(disk), 'persona'));
  const persona = await checkoutPersona(state, api, login, name, info.personaVersion, personaDir, true, s.personaTo, info.registryScope);
  // What earlier streamed boots of this image version read first: `carryon serve` reads ahead by it.
  const trace = await fetchBootTrace(state.home, api, name);
  state.putCheckout({ desktop: name, server: login.url, checkoutId: info.checkoutId, state: 'streaming', version: info.version, manifestId: info.manifestId,
    manifest: s.encoded, cheap: encodeCheap(cheap), diskPath: disk, startedAt: s.local?.state === 'downloading' ? s.local.startedAt : new Date().toISOString() });
  return { desktop: name, disk, version: info.version, manifestId: info.manifestId, size: manifest.size, blocks: manifest.count, blocksFetched: 0, blocksFromCache: 0,
    blocksWritten: 0, bytesReceived: api.bytesReceived, resumed: s.resumed, alreadyCheckedOut: false, seconds: (Date.now() - s.t0) / 1000, maxRssBytes: maxRss(), persona,
    streaming: { localBlocks: local.length + countHoles(manifest), blocks: manifest.count, bootTraceBlocks: trace ? trace.blocks.length : null }, outsideWrites: strayReport(s.stray && (reuse ? s.stray : { ...s.stray, keep: false })) };
}

function countHoles(m: DiskManifest): number {
  let n = 0;
  for (let i = 0; i < m.count; i++) if (m.isHole(i)) n++;
  return n;
}

/** `carryon checkout NAME` on a streamed checkout: download what is still missing, here and now. */
async function finishStream(state: LocalState, api: ApiClient, local: LocalCheckout, quiet: boolean, t0: number): Promise<CheckoutResult> {
  await requireLease(state, local, api);
  const lock = DiskLock.acquire(state.home, local.desktop, 'checkout');
  try {
    const manifest = decodeManifest(local.manifest);
    const { disk } = await openLocalDisk(state, local, new ServerBlockSource(state.cacheOf(local.desktop), () => api, local.checkoutId, manifest.blockSize));
    const progress = new Progress(`checkout ${local.desktop}`, disk.size, quiet);
    try {
      await disk.download((p) => progress.update(p.localBytes));
      progress.finish();
      await disk.close();
    } catch (err) {
      disk.abandon();
      throw err;
    }
    state.putCheckout({ ...local, state: 'active', cheap: encodeCheap(disk.cheap) });
    return { desktop: local.desktop, disk: local.diskPath, version: local.version, manifestId: local.manifestId, size: manifest.size, blocks: manifest.count,
      blocksFetched: disk.stats.backgroundBlocks, blocksFromCache: 0, blocksWritten: disk.stats.backgroundBlocks, bytesReceived: api.bytesReceived, resumed: true,
      alreadyCheckedOut: false, seconds: (Date.now() - t0) / 1000, maxRssBytes: maxRss(), persona: null };
  } finally {
    lock.release();
  }
}

/** Refuse early when the file system of `file` lacks room for `bytes` of data (what `file` already holds counts). */
function needSpace(name: string, file: string, bytes: number): void {
  let held = 0;
  try {
    held = statSync(file).blocks * 512;
  } catch {
    /* not there yet */
  }
  const { free } = diskSpace(path.dirname(file));
  const need = bytes - held;
  if (need > free) {
    throw new CarryonError('DISK_FULL', `checking out ${name} needs about ${fmtBytes(need)} more on ${path.dirname(file)}, and ${fmtBytes(free)} is free: ` +
      `free space (or choose another place with --to) and run \`carryon checkout ${name}\` again`, { needBytes: need, freeBytes: free, path: path.dirname(file) });
  }
}

/** A full disk met half-way: say how much is still to come and that a re-run resumes. */
function diskFullHint(err: unknown, name: string, dirs: string[], remaining: number): unknown {
  if (!(err instanceof CarryonError) || err.code !== 'DISK_FULL' || err.data.needBytes !== undefined) return err;
  const free = dirs.map((d) => `${fmtBytes(diskSpace(existsSync(d) ? d : path.dirname(d)).free)} free on ${path.dirname(d)}`).join(', ');
  return new CarryonError('DISK_FULL', `no space left on this laptop while checking out ${name}: about ${fmtBytes(remaining)} of the disk is still to come (and its compressed copy in the cache); ` +
    `${free}. What arrived is kept: free space and run \`carryon checkout ${name}\` again to resume`, { needBytes: remaining, desktop: name }, err);
}
