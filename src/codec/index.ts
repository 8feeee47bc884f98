// codec: how a block's bytes are encoded at rest and on the wire.
// Owns: the encoded block form (one zstd frame of the plaintext, content size in the header), bounded
// decoding (never allocates past the expected size, so a hostile frame cannot balloon memory), and the
// stream compressor used for upload bodies. Must not know: stores, manifests, HTTP.
// Decision (docs/decisions.md): zstd-napi, measured here 2.0-2.1x faster to compress (levels 1 and 3)
// and 2.2-2.3x faster to decompress than zstd-codec, with identical frames.
import { createRequire } from 'node:module';
import { Duplex, Writable, type Transform } from 'node:stream';
import { CarryonError } from '../errors/index.js';
import { verifyPlain, type BlockId } from '../hash/index.js';

const require = createRequire(import.meta.url);
const zstd = require('zstd-napi') as typeof import('zstd-napi');
// The raw binding gives bounded decoding into a buffer we size ourselves (the wrapper allocates
// whatever a frame header claims).
const binding = require('zstd-napi/binding') as {
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  getFrameContentSize(frame: Uint8Array): number | null;
};

/** Largest plaintext a block may have (the largest allowed block size). */
export const MAX_BLOCK_BYTES = 4 * 1024 * 1024;
/** Default level for blocks at rest: 3 costs ~21% of compression speed against 1 for 3% smaller stores. */
export const DEFAULT_BLOCK_LEVEL = 3;

const compressors = new Map<number, InstanceType<typeof zstd.Compressor>>();
function compressorFor(level: number): InstanceType<typeof zstd.Compressor> {
  let c = compressors.get(level);
  if (!c) {
    c = new zstd.Compressor();
    c.setParameters({ compressionLevel: level, contentSizeFlag: true, checksumFlag: false });
    compressors.set(level, c);
  }
  return c;
}
const dctx = new binding.DCtx();

export function encodeBlock(plain: Uint8Array, level = DEFAULT_BLOCK_LEVEL): Buffer {
  return compressorFor(level).compress(plain);
}

/**
 * Decode an encoded block into its plaintext. `maxBytes` bounds the output: a frame that claims or
 * produces more fails with BLOCK_CORRUPT instead of allocating.
 */
export function decodeBlock(encoded: Uint8Array, maxBytes = MAX_BLOCK_BYTES, scratch?: Buffer): Buffer {
  let size: number | null;
  try {
    size = binding.getFrameContentSize(encoded);
  } catch (err) {
    throw new CarryonError('BLOCK_CORRUPT', 'encoded block is not a zstd frame', {}, err);
  }
  if (size === null || size > maxBytes) {
    throw new CarryonError('BLOCK_CORRUPT', 'encoded block has no or an oversized content size', { size, maxBytes });
  }
  // A caller that consumes each block before decoding the next passes a scratch buffer: no allocation
  // (and no garbage) per block.
  const out = scratch && scratch.length >= size ? scratch.subarray(0, size) : Buffer.allocUnsafe(size);
  let n: number;
  try {
    n = dctx.decompress(out, encoded);
  } catch (err) {
    throw new CarryonError('BLOCK_CORRUPT', 'encoded block does not decompress', {}, err);
  }
  if (n !== size) throw new CarryonError('BLOCK_CORRUPT', 'encoded block is shorter than its header says', { size, n });
  return out;
}

/** Decode and check the plaintext against its id: the one gate every received or stored block passes. */
export function decodeVerified(id: BlockId, encoded: Uint8Array, maxBytes = MAX_BLOCK_BYTES, scratch?: Buffer): Buffer {
  const plain = decodeBlock(encoded, maxBytes, scratch);
  verifyPlain(id, plain);
  return plain;
}

/** Feed the compressor at least this much at a time: tar writes 512-byte headers, and zstd-napi
 *  measured 2.7x slower at level 1 (1.6x at level 3) fed 512-byte writes than 64 KiB ones. */
const COMPRESS_FEED = 1024 * 1024;

/** A zstd compressing transform for streamed request bodies (one frame for the whole stream). */
export function createCompressStream(level = 3): Duplex {
  const z = new zstd.CompressStream({ compressionLevel: level });
  let parts: Buffer[] = [];
  let held = 0;
  const release = (): void => {
    if (held === 0) return;
    z.write(parts.length === 1 ? parts[0] : Buffer.concat(parts, held));
    parts = [];
    held = 0;
  };
  const feed = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(chunk);
      held += chunk.length;
      if (held < COMPRESS_FEED) return cb();
      release();
      // backpressure: wait while the compressor's output is not being read
      if (z.writableNeedDrain) z.once('drain', () => cb());
      else cb();
    },
    final(cb) {
      release();
      z.end(cb);
    },
    destroy(err, cb) {
      z.destroy(err ?? undefined);
      cb(err);
    },
  });
  z.on('error', (err) => feed.destroy(err));
  return Duplex.from({ writable: feed, readable: z });
}

/** A zstd decompressing transform; windowLogMax bounds the decoder's memory against hostile input. */
export function createDecompressStream(): Transform {
  return new zstd.DecompressStream({ windowLogMax: 27 });
}
