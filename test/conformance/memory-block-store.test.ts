import { MemoryBlockStore } from '../../src/index.js';
import { runBlockStoreConformance } from './block-store.js';

runBlockStoreConformance('MemoryBlockStore', async () => ({ store: new MemoryBlockStore() }));
