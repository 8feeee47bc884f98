// Shared checks and helpers over any BlockStore: the put-side gate and verified reads.
import { CarryonError } from '../errors/index.js';
import { blockId, isBlockId, verifyPlain, type BlockId } from '../hash/index.js';
import { decodeVerified, encodeBlock, MAX_BLOCK_BYTES } from '../codec/index.js';
import type { BlockStore } from './block-store.js';

/**
 * The gate every backend runs in put before storing. With `plain` it costs one SHA-256, or none when
 * this process already checked that buffer against `id` (verifyPlain, decodeVerified, verifiedBlockId:
 * see src/hash), which is how the server's ingest hashes each uploaded block once. Without it, one
 * decode and one SHA-256.
 */
export function checkPut(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): void {
  if (!isBlockId(id)) throw new CarryonError('BAD_REQUEST', 'block id must be 64 lowercase hex characters');
  if (plain) {
    verifyPlain(id, plain);
  } else {
    decodeVerified(id, encoded);
  }
}

/** Read a block's plaintext, verified against its id. */
export async function getBlock(store: BlockStore, id: BlockId, maxBytes = MAX_BLOCK_BYTES): Promise<Buffer> {
  return decodeVerified(id, await store.getEncoded(id), maxBytes);
}

/** Encode and store plaintext; returns its id and stored size. */
export async function putBlock(store: BlockStore, plain: Uint8Array, level?: number): Promise<{ id: BlockId; encoded: Buffer }> {
  const id = blockId(plain);
  const encoded = encodeBlock(plain, level);
  await store.put(id, encoded, plain);
  return { id, encoded };
}

export function notFound(id: BlockId): CarryonError {
  return new CarryonError('BLOCK_NOT_FOUND', `block ${id.slice(0, 12)}… is not in the store`, { id });
}
