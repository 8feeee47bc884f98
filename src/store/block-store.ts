// The BlockStore contract. Every backend and wrapper passes test/conformance/block-store.ts.
import type { BlockId } from '../hash/index.js';

/**
 * A content-addressed store of encoded blocks (see src/codec): the key is the SHA-256 of the plaintext.
 *
 * - put MUST fail with BLOCK_CORRUPT, storing nothing, when the block does not decode to plaintext
 *   whose SHA-256 is `id`. When the caller passes `plain` (the plaintext it just encoded or decoded),
 *   the store MAY check SHA-256(plain) instead of decoding `encoded` again.
 * - put MUST be idempotent: storing an id already present succeeds and changes nothing.
 * - put MUST be atomic: a reader sees the whole block or none of it, never a partial file.
 * - get of a missing id MUST fail with BLOCK_NOT_FOUND.
 * - getEncoded returns the stored bytes as stored; callers that use them decode through
 *   codec.decodeVerified (the store never hands out unverified plaintext through getBlock).
 * - has MUST be true exactly for ids a get would find.
 * - delete MUST be idempotent; list MUST yield every stored id exactly once.
 * - sync MUST make every put that returned before it durable against a power cut.
 */
export interface BlockStore {
  put(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): Promise<void>;
  getEncoded(id: BlockId): Promise<Buffer>;
  has(id: BlockId): Promise<boolean>;
  delete(id: BlockId): Promise<void>;
  list(): AsyncIterable<BlockId>;
  sync(): Promise<void>;
  /** Size in bytes of the stored (encoded) block, or null when absent. */
  size(id: BlockId): Promise<number | null>;
  /**
   * The encoded blocks of `ids`, in the same order, as getEncoded would return them one by one. Optional:
   * a store whose reads cost a request each (S3) joins neighbouring blocks into one read; callers that
   * read many blocks use it when present (server/blocks.ts readAhead). With `scratch`, the store MAY
   * return views of it instead of new buffers: the caller then gives the same scratch again only once it
   * is done with every buffer of the earlier call (a server reusing two scratch buffers, not one new set a batch).
   */
  getEncodedMany?(ids: readonly BlockId[], scratch?: Buffer): Promise<Buffer[]>;
  /** Release files and handles (sync first). Optional: stores holding nothing open omit it. */
  close?(): Promise<void>;
}
