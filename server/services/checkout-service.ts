// CheckoutService: a desktop's trip, from check-out to check-in, as the HTTP routes and the CLI see it.
// Owns: starting and resuming checkouts, which blocks a checkout may read or name, uploads, restore
// points, the atomic check-in (disk and persona in one transaction), heartbeats, escrow deposits and
// discards; with their validation and audit rows. Must not know: HTTP (callers hand it parsed input
// and stream what it returns), which engine holds the metadata.
import {
  BufferPool, CarryonError, decodeManifest, diskSpace, encodeBlockPatch, getBlock, manifestId, uploadEntryName, HEADER_DEVICE,
  type BlockId, type BlockStore, type CheckoutInfo, type CommitResult, type EscrowAnswer, type HeartbeatReply, type PersonaCommitResult, type PersonaPushInfo, type TarEntry, type UploadResult,
} from '../../src/index.js';
import type { Actor } from '../audit.js';
import { BlockScope, ingestUpload, ManifestCache, readAhead, READ_AHEAD_SCRATCH, type LoadedManifest } from '../blocks.js';
import { crashPoint } from '../crash-point.js';
import type { EscrowService } from '../escrow.js';
import type { FleetMeta } from '../fleet-meta.js';
import type { IngestLeases } from '../gc.js';
import type { CheckoutRow, Meta, User } from '../meta.js';
import type { PersonaService } from './persona-service.js';
import type { RecomposeService } from '../recompose.js';

/** Uploads are refused (DISK_FULL) while the data folder has less than this free (start --min-free). */
export const DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024;

/**
 * A check made before storing anything: refuse when the data folder's file system is nearly full (a
 * request would fail half-way anyway, and the last bytes are better left to the database's commits).
 */
export function spaceCheck(dataRoot: string | null, minFreeBytes = DEFAULT_MIN_FREE_BYTES): () => void {
  return () => {
    if (!dataRoot) return;
    const { free } = diskSpace(dataRoot);
    if (free < minFreeBytes) throw new CarryonError('DISK_FULL', `only ${free} bytes are free in the server's data folder, below the ${minFreeBytes} kept in reserve`, { free });
  };
}

/** The persona parts of a check-in or restore point: the delta from the laptop's base version, and what it is. */
export interface PersonaPart {
  delta: unknown;
  push: PersonaPushInfo;
}

/** What a block read streams: tar entries, zstd-compressed as a whole when they are patches. */
export interface BlockStream {
  entries: AsyncGenerator<TarEntry>;
  compressed: boolean;
}

export class CheckoutService {
  private readonly manifests: ManifestCache;
  /** Read-ahead scratch for block answers, kept for two answers at a time (~34 MiB): see readAhead. */
  private readonly readScratch = new BufferPool(READ_AHEAD_SCRATCH, 4);
  /** Test seam: runs between a commit's block checks and its transaction (where a collector may strike). */
  beforeCommitTransaction: (() => Promise<void>) | null = null;

  constructor(private readonly meta: Meta, private readonly fleet: FleetMeta, private readonly personas: PersonaService, private readonly escrow: EscrowService,
    private readonly store: BlockStore, private readonly needSpace: () => void, private readonly leases: IngestLeases | null = null, private readonly recompose: RecomposeService | null = null) {
    this.manifests = new ManifestCache(meta);
  }

  /** The checkout, active, held by `device` when one is named. */
  async active(user: User, id: string, device: string | undefined): Promise<CheckoutRow> {
    const co = await this.meta.checkoutFor(user, id);
    if (co.state !== 'active') throw await this.meta.endedError(co);
    if (device !== undefined && co.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${id} is held by another device`, { checkoutId: id });
    return co;
  }

  private async baseOf(co: { desktop_id: number; base_version: number }): Promise<LoadedManifest> {
    return this.manifests.get(await this.meta.versionManifest(co.desktop_id, co.base_version));
  }

  /** What a checkout may name without sending: its version, its desktop's image version, and its user's own blocks. */
  private async scopeOf(co: { desktop_id: number; base_version: number; user_id: number }): Promise<BlockScope> {
    return new BlockScope(this.meta, co.user_id, [await this.baseOf(co), await this.manifests.get(await this.meta.imageManifestOf(co.desktop_id))]);
  }

  /**
   * Start a checkout, or resume the one this device holds. One transaction: the checkout row, the
   * persona version it starts from, its lease and lease secret land together or not at all.
   */
  async start(user: User, desktop: string, device: string, deviceName: string, actor: Actor): Promise<CheckoutInfo> {
    return this.meta.db.transaction(async () => {
      const { row, resumed, manifestId: mid } = await this.meta.startCheckout(user, desktop, device, deviceName, actor);
      // The persona version the laptop gets with the disk: the base of its check-in's merge.
      const personaVersion = row.persona_base_version ?? await this.meta.setCheckoutPersonaBase(row.id, (await this.personas.get(user)).version);
      const leaseExpiresAt = await this.fleet.renewLease(row);
      return { checkoutId: row.id, desktop, version: row.base_version, manifestId: mid, resumed, personaVersion, leaseExpiresAt, leaseDays: await this.fleet.leaseDays(row.desktop_id),
        leaseSecret: (await this.fleet.leaseSecret(row.id)).toString('base64'), encryption: await this.escrow.checkoutEncryption(row),
        registryScope: (await this.meta.desktopPolicies(user, desktop)).registryScope };
    });
  }

  /** The laptop holding a checkout escrows its copy's data key, sealed to the server's escrow key. */
  async depositEscrow(user: User, id: string, device: string | undefined, sealed: Buffer, keyCheck: string, actor: Actor): Promise<EscrowAnswer> {
    const co = await this.active(user, id, device);
    // Only the holder's laptop: its device named, and the checkout its user's own (an admin's token does not deposit for another's copy).
    if (device === undefined) throw new CarryonError('BAD_REQUEST', `an escrow deposit needs the ${HEADER_DEVICE} header`);
    if (co.user_id !== user.id) throw new CarryonError('FORBIDDEN', `checkout ${co.id} is another user's: only the laptop holding it escrows its key`, { checkoutId: co.id });
    return this.escrow.deposit(co, sealed, keyCheck, actor);
  }

  /** A laptop's contact: the lease starts over, and the server learns what it has not sent yet. */
  async heartbeat(user: User, id: string, device: string | undefined, pending: { pendingBytes: number; pendingBlocks: number; leaseCodeSeq?: number }, actor: Actor): Promise<HeartbeatReply> {
    const ended = await this.meta.checkoutFor(user, id);
    const requests = async (cid: string) => (await this.fleet.requests(cid, true)).map((r) => ({ id: r.id, kind: r.kind, state: r.state, detail: r.detail }));
    // A rolled-back checkout has ended, but its device must still hear of it (once per contact until done).
    const rollback = await this.meta.rollbackOf(ended);
    if (rollback) {
      if (device !== undefined && ended.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${ended.id} is held by another device`, { checkoutId: ended.id });
      return { checkoutId: ended.id, leaseExpiresAt: null, leaseDays: 0, serverTime: new Date().toISOString(), rolledBack: true, rollback, requests: await requests(ended.id), replicateEveryMinutes: null, lastRestorePointAt: null };
    }
    const co = await this.active(user, id, device);
    return this.meta.db.transaction(async () => {
      // Lease codes used offline first: they are floors the renewal below respects.
      await this.fleet.useLeaseCodes(co, pending.leaseCodeSeq ?? 0, actor);
      const leaseExpiresAt = await this.fleet.renewLease(co, { bytes: pending.pendingBytes, blocks: pending.pendingBlocks });
      const last = (await this.fleet.checkout(co.id)).lastRestorePoint;
      return { checkoutId: co.id, leaseExpiresAt, leaseDays: await this.fleet.leaseDays(co.desktop_id), serverTime: new Date().toISOString(), rolledBack: false, requests: await requests(co.id),
        replicateEveryMinutes: await this.fleet.replicateMinutes(co.desktop_id), lastRestorePointAt: last?.at ?? null };
    });
  }

  /** End a checkout without a new version (the laptop's copy stays the laptop's). */
  async discard(user: User, id: string, device: string | undefined, actor: Actor): Promise<{ desktop: string; already: boolean }> {
    const held = await this.meta.checkoutFor(user, id);
    if (device !== undefined && held.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${held.id} is held by another device`, { checkoutId: held.id });
    return this.meta.db.transaction(async () => {
      const r = await this.meta.discardCheckout(user, id, actor);
      // A refresh or recompose queued while it was checked out: the checkout has ended, so now.
      if (!r.already) await this.recompose?.applyQueued(held.desktop_id, actor);
      return r;
    });
  }

  /** The laptop reports how far an admin request (forced check-in, rollback) got. */
  async updateRequest(user: User, id: string, requestId: number, device: string | undefined, state: Parameters<FleetMeta['updateRequest']>[2], detail: unknown, actor: Actor) {
    const co = await this.meta.checkoutFor(user, id);
    if (device !== undefined && co.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${co.id} is held by another device`, { checkoutId: co.id });
    return this.fleet.updateRequest(co.id, requestId, state, detail as Parameters<FleetMeta['updateRequest']>[3], actor);
  }

  /** The encoded manifest of the checked-out version. */
  async manifest(user: User, id: string): Promise<Buffer> {
    const co = await this.meta.checkoutFor(user, id);
    return this.meta.getManifest(await this.meta.versionManifest(co.desktop_id, co.base_version));
  }

  /**
   * Blocks of the checked-out version, each whole or (with `baseVersion`) as a patch against the
   * laptop's block of an older version of the same desktop. Checked before a byte is sent: ids are
   * not capabilities, and a copy that must be encrypted gets nothing before its key is escrowed.
   */
  async blocks(user: User, id: string, device: string | undefined, ids: BlockId[], bases: Map<BlockId, BlockId>, baseVersion: number | null): Promise<BlockStream> {
    const co = await this.active(user, id, device);
    await this.escrow.requireEscrow(co);
    const base = await this.baseOf(co);
    for (const b of ids) if (!base.ids.has(b)) throw new CarryonError('BLOCK_NOT_FOUND', `block ${b.slice(0, 12)}… is not part of this checkout`, { id: b });
    const store = this.store;
    const scratch = this.readScratch;
    if (baseVersion === null) {
      return {
        compressed: false,
        entries: (async function* encoded(): AsyncGenerator<TarEntry> {
          for await (const e of readAhead(store, ids, 16, { copies: scratch })) { // the answer copies each entry into its chunk
            yield e;
            crashPoint('serve-block');
          }
        })(),
      };
    }
    // Patch bases must come from a version of the same desktop the laptop can have held.
    if (baseVersion > co.base_version) throw new CarryonError('BAD_REQUEST', `baseVersion ${baseVersion} is newer than the checked-out version ${co.base_version}`);
    const held = await this.manifests.get(await this.meta.versionManifest(co.desktop_id, baseVersion));
    for (const b of bases.values()) if (!held.ids.has(b)) throw new CarryonError('BLOCK_NOT_FOUND', `base block ${b.slice(0, 12)}… is not part of version ${baseVersion}`, { id: b });
    const blockSize = base.manifest.blockSize;
    return {
      compressed: true,
      // Against the laptop's own older blocks: the changed byte ranges, in one zstd stream.
      entries: (async function* patched(): AsyncGenerator<TarEntry> {
        for (const b of ids) {
          const plain = await getBlock(store, b, blockSize);
          const from = bases.get(b);
          const patch = from === undefined ? null : encodeBlockPatch(await getBlock(store, from, blockSize), plain);
          yield patch !== null && patch.length < plain.length
            ? { name: uploadEntryName({ kind: 'patch', id: b, base: from! }), data: patch }
            : { name: uploadEntryName({ kind: 'block', id: b }), data: plain };
          crashPoint('serve-block');
        }
      })(),
    };
  }

  /** Of `ids`, those the server must be sent. Any state: a client killed after its commit landed asks again before re-committing. */
  async missing(user: User, id: string, ids: BlockId[]): Promise<BlockId[]> {
    return (await this.scopeOf(await this.meta.checkoutFor(user, id))).missing(ids);
  }

  async upload(user: User, id: string, device: string | undefined, body: NodeJS.ReadableStream): Promise<UploadResult> {
    const co = await this.active(user, id, device);
    this.needSpace();
    return ingestUpload(this.meta, this.store, this.leases, await this.baseOf(co), await this.scopeOf(co), body);
  }

  /** A restore point: like a commit's validation (every block present), but the checkout goes on. */
  async restorePoint(user: User, id: string, device: string | undefined, encoded: Buffer, persona: PersonaPart | null, actor: Actor) {
    const co = await this.active(user, id, device);
    const next = decodeManifest(encoded);
    const mid = manifestId(encoded);
    const base = await this.baseOf(co);
    if (next.blockSize !== base.manifest.blockSize || next.size !== base.manifest.size) {
      throw new CarryonError('MANIFEST_INVALID', 'a restore point must have the checked-out version\'s size and block size');
    }
    const { missing, owned } = await (await this.scopeOf(co)).split(next.uniqueIds());
    if (missing.length > 0) throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} block(s) the restore point names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
    await this.store.sync();
    await this.meta.putManifest(mid, encoded, next);
    let changed = 0;
    for (let i = 0; i < next.count; i++) if (next.ids.compare(base.manifest.ids, i * 32, i * 32 + 32, i * 32, i * 32 + 32) !== 0) changed++;
    return this.meta.db.transaction(async () => {
      await this.meta.putManifest(mid, encoded, next);
      const gone = await this.meta.unindexed(owned);
      if (gone.length > 0) throw new CarryonError('BLOCKS_MISSING', `the server lacks ${gone.length} block(s) the restore point names (removed by garbage collection meanwhile); upload them again`, { count: gone.length, ids: gone.slice(0, 16) });
      const personaSnapshot = persona ? await this.personas.snapshotFor(user, persona.delta, persona.push.baseVersion) : null;
      return this.fleet.addRestorePoint(co, mid, changed, actor, personaSnapshot);
    });
  }

  /**
   * The check-in: every block the new manifest names is present and readable by this user, then disk
   * and persona move together, in one transaction, or neither does. A repeated commit (the laptop
   * lost the answer) answers as the first did.
   */
  async commit(user: User, id: string, device: string | undefined, encoded: Buffer, persona: PersonaPart | null, actor: Actor): Promise<CommitResult> {
    if (!device) throw new CarryonError('BAD_REQUEST', `commit needs the ${HEADER_DEVICE} header`);
    const next = decodeManifest(encoded);
    const mid = manifestId(encoded);
    const co = await this.meta.checkoutFor(user, id);
    // The blocks named only through the user's own (not through the checked-out or image version): the
    // commit transaction checks they are still indexed (a garbage collection may have condemned one).
    let owned: BlockId[] = [];
    if (co.state === 'active') {
      const base = await this.baseOf(co);
      if (next.blockSize !== base.manifest.blockSize) {
        throw new CarryonError('MANIFEST_INVALID', `manifest block size ${next.blockSize} differs from the checked-out version's ${base.manifest.blockSize}`);
      }
      const split = await (await this.scopeOf(co)).split(next.uniqueIds());
      const missing = split.missing;
      owned = split.owned;
      if (missing.length > 0) {
        throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} block(s) the new version names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
      }
      await this.store.sync();
      await this.meta.putManifest(mid, encoded, next);
    }
    crashPoint('commit-before-transaction');
    await this.beforeCommitTransaction?.();
    return this.meta.db.transaction(async (): Promise<CommitResult> => {
      // Again inside: a collection may have removed the manifest row, which nothing named until now.
      if (co.state === 'active') await this.meta.putManifest(mid, encoded, next);
      const r = await this.meta.commitCheckout(user, co.id, device, mid);
      if (!r.already) {
        const gone = await this.meta.unindexed(owned);
        if (gone.length > 0) throw new CarryonError('BLOCKS_MISSING', `the server lacks ${gone.length} block(s) the new version names (removed by garbage collection meanwhile); upload them again`, { count: gone.length, ids: gone.slice(0, 16) });
      }
      let p: PersonaCommitResult | undefined;
      if (persona && r.already) p = await this.personas.committedBy(user, co.id);
      else if (persona) p = await this.personas.commit(user, persona.delta, persona.push, co.id);
      if (!r.already) await this.fleet.audit(actor, 'checkout.commit', `desktop:${r.desktop}`, { checkoutId: co.id, from: r.previousVersion, to: r.version, persona: p?.version ?? null });
      if (!r.already) await this.fleet.finishCheckinRequests(co.id, r.version, actor);
      // A refresh or recompose queued while it was checked out: after the check-in's own version, so what
      // the user changed stays there (restorable) and the laptop's next check-out fetches the new image.
      const moved = r.already ? null : await this.recompose?.applyQueued(co.desktop_id, actor);
      const recomposed = moved && moved.state === 'done' ? { image: moved.image, imageVersion: moved.imageVersion!, version: moved.version!, keptVersion: moved.keptVersion } : undefined;
      return { desktop: r.desktop, version: r.version, manifestId: mid, previousVersion: r.previousVersion, alreadyCommitted: r.already, ...(p ? { persona: p } : {}), ...(recomposed ? { recomposed } : {}) };
    });
  }
}
