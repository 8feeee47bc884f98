// The wipe after a rollback or a discard: the cache blocks of the dropped desktop that nothing else on
// this laptop uses (no other checkout's disk, no other persona copy) leave the index, then the cache is
// compacted so their bytes leave the pack files and the space comes back (src/store/pack-block-store.ts).
// Call it before removing the checkout's row: the row's manifest says which blocks were the desktop's.
import { decodeManifest, decodePersona, type BlockId } from '../src/index.js';
import type { LocalState } from './state.js';

export interface WipeResult {
  /** Cache blocks dropped from the index. */
  removedBlocks: number;
  /** Bytes the cache gave back (its files before minus after the compaction). */
  freedBytes: number;
  /** Cache packs left for later because a live carryon process still appends to them. */
  packsBusy: number;
}

/** Blocks of a disk manifest (holes excluded). */
function manifestIds(manifest: Buffer, into: Set<BlockId>): void {
  const m = decodeManifest(manifest);
  for (let i = 0; i < m.count; i++) {
    const id = m.idAt(i);
    if (id) into.add(id);
  }
}

function personaIds(snapshot: Buffer, into: Set<BlockId>): void {
  for (const f of decodePersona(snapshot).files) for (const c of f.chunks) into.add(c);
}

/**
 * Drop the cache blocks of `desktop`'s disk (and of its persona copy, when `persona` is the snapshot of
 * a copy that goes too) that no other checkout or persona copy on this laptop uses, then compact the
 * cache. Call it while the checkout's row is still there (its manifest names the disk's blocks).
 */
export async function wipeDesktopBlocks(state: LocalState, desktop: string, persona: Buffer | null): Promise<WipeResult> {
  const mine = new Set<BlockId>();
  const others = new Set<BlockId>();
  for (const c of state.checkouts()) manifestIds(c.manifest, c.desktop === desktop ? mine : others);
  if (persona) personaIds(persona, mine);
  // An encrypted copy's chunks live in its own vault, never in the shared cache: skip it (its record is sealed).
  for (const p of state.personas()) if (!(persona && p.desktop === desktop) && !state.keys.isEncrypted(p.desktop)) personaIds(p.snapshot, others);
  let removedBlocks = 0;
  for (const id of mine) {
    if (others.has(id) || !(await state.cache.has(id))) continue;
    await state.cache.delete(id);
    removedBlocks++;
  }
  const r = await state.cache.compact();
  return { removedBlocks, freedBytes: r.freedBytes, packsBusy: r.packsBusy };
}
