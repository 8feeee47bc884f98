// ServerBlockSource: where a streamed disk's missing blocks come from: the laptop's block cache
// first (a block this laptop already holds for another desktop or version), then the server, with
// every block verified against its id and kept in the cache for the next check-in's patches.
import { CarryonError, decodeVerified, getBlock, MAX_UPLOAD_ENTRY_BYTES, type BlockId, type BlockStore } from '../src/index.js';
import type { ApiClient } from './api-client.js';
import type { BlockSource } from './local-disk.js';

export class ServerBlockSource implements BlockSource {
  constructor(private readonly cache: BlockStore, private readonly api: () => ApiClient, private readonly checkoutId: string, private readonly maxBlock: number) {}

  async fetch(ids: BlockId[], onBlock: (id: BlockId, plain: Buffer) => void): Promise<void> {
    const remote: BlockId[] = [];
    for (const id of ids) {
      if (await this.cache.has(id)) {
        try {
          onBlock(id, await getBlock(this.cache, id, this.maxBlock));
          continue;
        } catch (err) {
          if (!(err instanceof CarryonError) || (err.code !== 'BLOCK_CORRUPT' && err.code !== 'BLOCK_NOT_FOUND')) throw err;
          await this.cache.delete(id); // torn by a crash: fetch it again
        }
      }
      remote.push(id);
    }
    if (remote.length === 0) return;
    const want = new Set(remote);
    await this.api().getBlocks(this.checkoutId, remote, MAX_UPLOAD_ENTRY_BYTES, async ({ name, data }) => {
      if (!want.has(name)) throw new CarryonError('TAR_INVALID', `server sent block ${name.slice(0, 12)}… that was not asked for`);
      const plain = decodeVerified(name, data, this.maxBlock);
      await this.cache.put(name, data, plain);
      want.delete(name);
      onBlock(name, plain);
    });
    if (want.size > 0) throw new CarryonError('TAR_INVALID', `server answered without ${want.size} requested block(s)`);
  }
}
