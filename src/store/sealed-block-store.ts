// SealedBlockStore: a BlockStore whose backend sees only ciphertext and meaningless names: the cache
// of an encrypted copy on a laptop (docs/encryption.md). Each entry is AES-256-GCM
// `seal(cacheKey, id(32) | encoded, aad = name)` stored under name = HMAC-SHA-256(indexKey, id), so
// neither the bytes nor the block ids (SHA-256 of plaintext, which would confirm a guessed file)
// are readable without the copy's data key. The wrapper checks puts itself (the backend is opaque).
import { keyedName, SEAL_OVERHEAD, seal, subkey, tryOpen } from '../crypto/index.js';
import { CarryonError } from '../errors/index.js';
import { isBlockId, type BlockId } from '../hash/index.js';
import type { BlockStore } from './block-store.js';
import { checkPut, notFound } from './verify.js';

export class SealedBlockStore implements BlockStore {
  private readonly key: Buffer;
  private readonly indexKey: Buffer;

  constructor(readonly inner: BlockStore, dataKey: Buffer) {
    this.key = subkey(dataKey, 'cache');
    this.indexKey = subkey(dataKey, 'cache-index');
  }

  private nameOf(id: BlockId): string {
    return keyedName(this.indexKey, Buffer.from(id, 'hex')).toString('hex');
  }

  async put(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): Promise<void> {
    checkPut(id, encoded, plain);
    const name = this.nameOf(id);
    // Sealed and handed on before any await: a caller's synchronous pass (serve's snapshot) stays one.
    // The inner put is idempotent, so a block stored twice keeps one index row.
    await this.inner.put(name, seal(this.key, [Buffer.from(id, 'hex'), encoded], name));
  }

  private async open(name: string): Promise<{ id: BlockId; encoded: Buffer }> {
    const body = tryOpen(this.key, await this.inner.getEncoded(name), name);
    // A torn or altered entry: callers treat BLOCK_CORRUPT as absent (fetch again).
    if (!body || body.length < 32) throw new CarryonError('BLOCK_CORRUPT', 'a sealed cache entry does not open (torn by a crash, or altered)', { name });
    return { id: body.subarray(0, 32).toString('hex'), encoded: body.subarray(32) };
  }

  async getEncoded(id: BlockId): Promise<Buffer> {
    if (!isBlockId(id)) throw notFound(String(id));
    const name = this.nameOf(id);
    if (!(await this.inner.has(name))) throw notFound(id);
    const e = await this.open(name);
    if (e.id !== id) throw new CarryonError('BLOCK_CORRUPT', `a sealed cache entry holds another block than ${id.slice(0, 12)}…`, { id });
    return e.encoded;
  }

  async has(id: BlockId): Promise<boolean> {
    return isBlockId(id) && this.inner.has(this.nameOf(id));
  }

  async size(id: BlockId): Promise<number | null> {
    if (!isBlockId(id)) return null;
    const n = await this.inner.size(this.nameOf(id));
    return n === null ? null : n - SEAL_OVERHEAD - 32;
  }

  async delete(id: BlockId): Promise<void> {
    if (isBlockId(id)) await this.inner.delete(this.nameOf(id));
  }

  async *list(): AsyncIterable<BlockId> {
    // Names first: opening entries reads the backend, which may not be used while its own listing runs.
    const names: string[] = [];
    for await (const name of this.inner.list()) names.push(name);
    for (const name of names) {
      try {
        yield (await this.open(name)).id;
      } catch {
        /* a torn entry names nothing */
      }
    }
  }

  sync(): Promise<void> {
    return this.inner.sync();
  }

  async close(): Promise<void> {
    await this.inner.close?.();
  }
}
