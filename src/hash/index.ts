// hash: content ids and change-detection hashes.
// Owns: the block id (SHA-256 of the plaintext, lowercase hex), the all-zero test that makes a block a
// hole, and the cheap per-block hash a laptop keeps to find changed blocks without SHA-256.
// Must not know: stores, manifests, the network.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { CarryonError } from '../errors/index.js';

const require = createRequire(import.meta.url);
// Loaded through require: the package is CommonJS with a namespace export ESM cannot name statically.
const { xxh3 } = require('@node-rs/xxhash') as typeof import('@node-rs/xxhash');

/** A block or manifest id: SHA-256 of the plaintext as 64 lowercase hex characters. */
export type BlockId = string;
export const ID_BYTES = 32;
const ID_RE = /^[0-9a-f]{64}$/;

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

export function blockId(data: Uint8Array): BlockId {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Plaintext buffers whose id this process computed, so a store need not hash them again. Only
 * fresh buffers that no one writes to afterwards are entered (see verifyPlain's callers).
 */
const verified = new WeakMap<Uint8Array, BlockId>();

/** Check plaintext against its id (BLOCK_CORRUPT if it differs) and remember the result. */
export function verifyPlain(id: BlockId, plain: Uint8Array): void {
  if (verified.get(plain) === id) return;
  if (blockId(plain) !== id) throw new CarryonError('BLOCK_CORRUPT', `block ${id.slice(0, 12)}… does not match its hash`, { id });
  verified.set(plain, id);
}

/**
 * The id of plaintext this process is about to store, remembered as checked (as verifyPlain does), so
 * the store's put gate does not hash it again. One SHA-256 either way; only for fresh buffers no one
 * writes to afterwards (a reused read buffer would keep a stale entry: see forgetVerified).
 */
export function verifiedBlockId(plain: Uint8Array): BlockId {
  const id = blockId(plain);
  verified.set(plain, id);
  return id;
}

/** Drop what verifyPlain or verifiedBlockId remembered of `plain`: its bytes are about to be reused. */
export function forgetVerified(plain: Uint8Array): void {
  verified.delete(plain);
}

export function isBlockId(s: unknown): s is BlockId {
  return typeof s === 'string' && ID_RE.test(s);
}

/** Parse an id from untrusted input (URL, JSON, tar entry name). */
export function parseBlockId(s: unknown, what = 'block id'): BlockId {
  if (!isBlockId(s)) throw new CarryonError('BAD_REQUEST', `${what} must be 64 lowercase hex characters`, { value: String(s).slice(0, 80) });
  return s;
}

const ZEROS = Buffer.alloc(4 * 1024 * 1024);

/** True when every byte is zero: such a block is a hole, never stored nor sent. */
export function isAllZero(data: Uint8Array): boolean {
  for (let off = 0; off < data.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - off);
    if (!ZEROS.subarray(0, n).equals(data.subarray(off, off + n))) return false;
  }
  return true;
}

/**
 * Change-detection hash: XXH3-64 through the streaming class, measured at ~10 GB/s per core on 64 KiB
 * blocks here, against 1.5-2 GB/s for the package's one-shot functions and 1.46 GB/s for SHA-256.
 * It only decides which blocks to SHA-256 again; a missed change needs a 2^-64 accident on a block the
 * VM wrote (not an adversary: the laptop hashes its own disk).
 */
export class CheapHasher {
  private readonly h = xxh3.Xxh3.withSeed(0x63617272796f6e00n);
  hash(data: Uint8Array): bigint {
    this.h.update(data);
    const d = this.h.digest();
    this.h.reset();
    return d;
  }
}
