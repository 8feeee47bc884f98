// codec: how a block's bytes are encoded at rest and on the wire.
// Owns: the encoded block form (one zstd frame of the plaintext, content size in the header), bounded
// decoding (never allocates past the expected size, so a hostile frame cannot balloon memory), and the
// stream compressor used for upload bodies. Must not know: stores, manifests, HTTP.
// Decision (docs/decisions.md): zstd-napi, measured here 2.0-2.1x faster to compress (levels 1 and 3)
// and 2.2-2.3x faster to decompress than zstd-codec, with identical frames.
import { createRequire } from 'node:module';
import { Duplex, Writable } from 'node:stream';
import { CarryonError } from '../errors/index.js';
import { verifyPlain, type BlockId } from '../hash/index.js';

const require = createRequire(import.meta.url);
const zstd = require('zstd-napi') as typeof import('zstd-napi');
// The raw binding gives bounded decoding into a buffer we size ourselves (the wrapper allocates
// whatever a frame header claims).
const binding = require('zstd-napi/binding') as {
  DCtx: new () => {
    decompress(dst: Uint8Array, src: Uint8Array): number;
    decompressStream(dst: Uint8Array, src: Uint8Array): [hint: number, produced: number, consumed: number];
    setParameter(param: number, value: number): void;
  };
  DParameter: { windowLogMax: number };
  getFrameContentSize(frame: Uint8Array): number | null;
  findFrameCompressedSize(frame: Uint8Array): number;
  compressBound(size: number): number;
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

/** The zstd frame magic number, little-endian at offset 0 of every encoded block. */
const ZSTD_MAGIC = 0xfd2fb528;

/** Most bytes one frame of a block of up to `maxBytes` may take: zstd's own bound for incompressible input. */
export function maxFrameBytes(maxBytes: number): number {
  return binding.compressBound(maxBytes);
}

/**
 * Decode bytes received as one block's zstd frame, as strictly as the stores keep it: exactly one zstd
 * frame (no skippable frames, nothing after it, so nothing but the frame would be stored), at most
 * maxFrameBytes(maxBytes) long, with a content size of at most `maxBytes` in its header, checked before
 * anything is decoded (decodeBlock), so a frame that would inflate past it (a zstd bomb) costs nothing.
 * Fails with BLOCK_CORRUPT.
 */
export function decodeFrame(encoded: Uint8Array, maxBytes: number, scratch?: Buffer): Buffer {
  if (encoded.length > maxFrameBytes(maxBytes)) {
    throw new CarryonError('BLOCK_CORRUPT', `an encoded block of ${encoded.length} bytes is larger than a frame of ${maxBytes} bytes can be`, { size: encoded.length, maxBytes });
  }
  if (encoded.length < 4 || Buffer.from(encoded.buffer, encoded.byteOffset, 4).readUInt32LE(0) !== ZSTD_MAGIC) {
    throw new CarryonError('BLOCK_CORRUPT', 'encoded block is not a zstd frame');
  }
  let frameBytes: number;
  try {
    frameBytes = binding.findFrameCompressedSize(encoded);
  } catch (err) {
    throw new CarryonError('BLOCK_CORRUPT', 'encoded block is not a whole zstd frame (truncated?)', {}, err);
  }
  if (frameBytes !== encoded.length) throw new CarryonError('BLOCK_CORRUPT', 'encoded block has bytes after its zstd frame', { frameBytes, size: encoded.length });
  return decodeBlock(encoded, maxBytes, scratch);
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
      // Only a failure stops the compressor: a plain destroy is autoDestroy after 'finish', which comes
      // while the compressor may still hold the frame's last bytes for a slow reader (destroying it then
      // cut uploads short with ERR_STREAM_PREMATURE_CLOSE now and then).
      if (err) z.destroy(err);
      cb(err);
    },
  });
  z.on('error', (err) => feed.destroy(err));
  return Duplex.from({ writable: feed, readable: z });
}

/** Output chunk of the stream decoder: the most it inflates before its reader takes the bytes. */
const DECODE_CHUNK = 256 * 1024;
/** Output between two turns of the event loop. */
const YIELD_BYTES = 4 * 1024 * 1024;
/** Largest zstd window a stream may ask for (128 MiB): bounds the decoder's own memory. */
const WINDOW_LOG_MAX = 27;

export interface DecompressStreamOptions {
  /** Fail with PAYLOAD_TOO_LARGE once the output passes this many bytes (a decompression bomb). */
  maxOutputBytes?: number;
}

/**
 * A zstd decompressing stream that never holds more than one output chunk beyond what its reader
 * buffers: it inflates DECODE_CHUNK at a time and waits for the reader before the next, so a frame that
 * inflates a thousandfold costs memory only as fast as the consumer takes it, and never past
 * `maxOutputBytes` in all. (zstd-napi's DecompressStream inflates each input chunk whole, ignoring
 * backpressure: a 32 KB frame of a 1 GiB zero run took ~3 GB of memory.) Input that is not zstd, or
 * that ends inside a frame, fails with TAR_INVALID: every stream this decodes carries a tar.
 */
export function createDecompressStream(opts: DecompressStreamOptions = {}): Duplex {
  return new BoundedDecompressStream(opts.maxOutputBytes ?? Number.MAX_SAFE_INTEGER);
}

class BoundedDecompressStream extends Duplex {
  private readonly dctx = new binding.DCtx();
  private input: Buffer | null = null;
  private inputDone: ((err?: Error | null) => void) | null = null;
  private wanted = false;
  private produced = 0;
  /** ZSTD_decompressStream's last hint: 0 once a frame is complete, so a stream may end there. */
  private hint = 0;
  private readonly out = Buffer.allocUnsafe(DECODE_CHUNK);
  private yielding = false;

  constructor(private readonly maxOutput: number) {
    super({ readableHighWaterMark: DECODE_CHUNK, writableHighWaterMark: DECODE_CHUNK });
    this.dctx.setParameter(binding.DParameter.windowLogMax, WINDOW_LOG_MAX);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.input = chunk;
    this.inputDone = cb;
    if (!this.yielding) this.pump();
  }

  override _read(): void {
    this.wanted = true;
    if (!this.yielding) this.pump();
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.hint !== 0) return cb(new CarryonError('TAR_INVALID', 'the zstd stream ends inside a frame (truncated body)'));
    this.push(null);
    cb();
  }

  /**
   * Inflate while there is input and the reader wants bytes; hand the input back once it is used up.
   * Every YIELD_BYTES of output it lets the event loop run: a reader that takes each chunk synchronously
   * would otherwise keep one inflating body on the CPU while other requests wait.
   */
  private pump(): void {
    let sinceYield = 0;
    while (this.input !== null && this.wanted) {
      if (sinceYield >= YIELD_BYTES) {
        if (!this.yielding) {
          this.yielding = true;
          setImmediate(() => {
            this.yielding = false;
            this.pump();
          });
        }
        return;
      }
      let produced: number;
      let consumed: number;
      try {
        [this.hint, produced, consumed] = this.dctx.decompressStream(this.out, this.input);
      } catch (err) {
        return this.fail(new CarryonError('TAR_INVALID', `the body is not a valid zstd stream: ${(err as Error).message}`, {}, err));
      }
      this.input = this.input.subarray(consumed);
      if (produced > 0) {
        this.produced += produced;
        sinceYield += produced;
        if (this.produced > this.maxOutput) {
          return this.fail(new CarryonError('PAYLOAD_TOO_LARGE', `the body decompresses to more than ${this.maxOutput} bytes`, { max: this.maxOutput }));
        }
        this.wanted = this.push(Buffer.from(this.out.subarray(0, produced)));
      }
      // Output not full: the decoder has flushed everything it can make from this input.
      if (this.input.length === 0 && produced < this.out.length) {
        const done = this.inputDone!;
        this.input = null;
        this.inputDone = null;
        done();
      } else if (produced === 0 && consumed === 0) {
        return this.fail(new CarryonError('TAR_INVALID', 'the zstd stream makes no progress'));
      }
    }
  }

  private fail(err: CarryonError): void {
    const done = this.inputDone;
    this.input = null;
    this.inputDone = null;
    if (done) done(err);
    else this.destroy(err);
  }
}
