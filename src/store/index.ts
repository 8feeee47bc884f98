// store: where encoded blocks live.
// Owns: the BlockStore contract, its memory, filesystem, pack and S3 backends, the registry that opens a store
// from a URL, and verified read/write helpers. Must not know: manifests, desktops, HTTP.
// Key terms: id = SHA-256 of plaintext; encoded = the codec's zstd frame, the form stored and sent.
import path from 'node:path';
import { CarryonError } from '../errors/index.js';
import type { BlockStore } from './block-store.js';
import { FsBlockStore, type FsBlockStoreOptions } from './fs-block-store.js';
import { MemoryBlockStore } from './memory-block-store.js';
import { PackBlockStore } from './pack-block-store.js';
import { S3BlockStore } from './s3-block-store.js';

export type { BlockStore } from './block-store.js';
export { FsBlockStore, syncFileSystem, type FsBlockStoreOptions } from './fs-block-store.js';
export { MemoryBlockStore } from './memory-block-store.js';
export { PackBlockStore, type CompactOptions, type CompactReport } from './pack-block-store.js';
export { SealedBlockStore } from './sealed-block-store.js';
export { S3Client, type S3Stats, type S3Object } from './s3-client.js';
export { S3BlockStore, parseS3Url, type S3BlockStoreOptions, type S3BlockStoreStats, type S3CompactOptions, type S3CompactReport } from './s3-block-store.js';
export { getBlock, putBlock, checkPut } from './verify.js';
export { diskSpace, type DiskSpace } from './disk-space.js';

/**
 * Open a store by URL scheme: `file:///path` or a bare path, `pack:///path`, `memory:`,
 * `s3://[KEY:SECRET@]host[:port]/bucket[/prefix][?region=R]` (https; keys otherwise from AWS_ACCESS_KEY_ID
 * and AWS_SECRET_ACCESS_KEY) or `s3+http://...` (loopback hosts only). A new backend adds one line.
 */
export function openBlockStore(url: string, opts: FsBlockStoreOptions = {}): BlockStore {
  const backends: Record<string, (rest: string) => BlockStore> = {
    'file:': (rest) => new FsBlockStore(rest, opts),
    'memory:': () => new MemoryBlockStore(),
    'pack:': (rest) => new PackBlockStore(rest),
    's3:': () => S3BlockStore.fromUrl(url),
    's3+http:': () => S3BlockStore.fromUrl(url),
  };
  const m = /^([a-z][a-z0-9+.-]*:)(?:\/\/)?(.*)$/.exec(url);
  if (!m) return new FsBlockStore(path.resolve(url), opts);
  const open = backends[m[1]!];
  if (!open) throw new CarryonError('INVALID_ARGUMENT', `unknown block store scheme ${m[1]}`, { url });
  return open(m[2]!);
}
