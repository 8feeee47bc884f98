// MemoryBlockStore: a BlockStore in a Map, for tests and short-lived tools.
import type { BlockId } from '../hash/index.js';
import type { BlockStore } from './block-store.js';
import { checkPut, notFound } from './verify.js';

export class MemoryBlockStore implements BlockStore {
  private readonly blocks = new Map<BlockId, Buffer>();

  async put(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): Promise<void> {
    checkPut(id, encoded, plain);
    if (this.blocks.has(id)) return;
    this.blocks.set(id, Buffer.from(encoded));
  }
  async getEncoded(id: BlockId): Promise<Buffer> {
    const b = this.blocks.get(id);
    if (!b) throw notFound(id);
    return Buffer.from(b);
  }
  async has(id: BlockId): Promise<boolean> {
    return this.blocks.has(id);
  }
  async size(id: BlockId): Promise<number | null> {
    return this.blocks.get(id)?.length ?? null;
  }
  async delete(id: BlockId): Promise<void> {
    this.blocks.delete(id);
  }
  async *list(): AsyncIterable<BlockId> {
    yield* [...this.blocks.keys()];
  }
  async sync(): Promise<void> {}
}
