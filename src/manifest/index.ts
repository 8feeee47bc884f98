// manifest: the description of one version of a disk image.
// Owns: DiskManifest (image size, block size, one id or hole per block), its versioned binary encoding
// (docs/formats.md#disk-manifest), and validation of manifests from untrusted sources. The manifest id
// is the SHA-256 of its encoding, so manifests are content-addressed like blocks.
// Must not know: stores, the network, desktops.
import { CarryonError } from '../errors/index.js';
import { ID_BYTES, sha256, type BlockId } from '../hash/index.js';

export const MANIFEST_MAGIC = Buffer.from('CYDM', 'ascii');
export const MANIFEST_VERSION = 1;
const HEADER = 32;
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
export const MIN_BLOCK_SIZE = 4 * 1024;
export const MAX_BLOCK_SIZE = 4 * 1024 * 1024;
/** 2^26 blocks: 4 PiB at 64 KiB, a 2 GiB manifest at most; bounds what a decoder will accept. */
export const MAX_BLOCKS = 2 ** 26;
const HOLE = Buffer.alloc(ID_BYTES);

export function checkBlockSize(n: number): number {
  if (!Number.isInteger(n) || n < MIN_BLOCK_SIZE || n > MAX_BLOCK_SIZE || (n & (n - 1)) !== 0) {
    throw new CarryonError('INVALID_ARGUMENT', `block size must be a power of two from 4096 to 4194304, got ${n}`, { blockSize: n });
  }
  return n;
}

export function blockCountFor(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

export class DiskManifest {
  readonly size: number;
  readonly blockSize: number;
  readonly count: number;
  /** count × 32 bytes; all zero = hole. */
  readonly ids: Buffer;

  constructor(size: number, blockSize: number, ids?: Buffer) {
    checkBlockSize(blockSize);
    if (!Number.isSafeInteger(size) || size < 0) throw new CarryonError('MANIFEST_INVALID', `image size ${size} is not a valid byte count`);
    this.size = size;
    this.blockSize = blockSize;
    this.count = blockCountFor(size, blockSize);
    if (this.count > MAX_BLOCKS) throw new CarryonError('MANIFEST_INVALID', `image of ${size} bytes needs more than ${MAX_BLOCKS} blocks`);
    this.ids = ids ?? Buffer.alloc(this.count * ID_BYTES);
    if (this.ids.length !== this.count * ID_BYTES) throw new CarryonError('MANIFEST_INVALID', 'block table length does not match the block count');
  }

  /** Bytes of block i: blockSize except for a short last block. */
  lengthOf(i: number): number {
    return i === this.count - 1 ? this.size - i * this.blockSize : this.blockSize;
  }

  isHole(i: number): boolean {
    return this.ids.compare(HOLE, 0, ID_BYTES, i * ID_BYTES, (i + 1) * ID_BYTES) === 0;
  }

  /** The id of block i, or null for a hole. */
  idAt(i: number): BlockId | null {
    return this.isHole(i) ? null : this.ids.toString('hex', i * ID_BYTES, (i + 1) * ID_BYTES);
  }

  setId(i: number, id: BlockId | null): void {
    if (id === null) HOLE.copy(this.ids, i * ID_BYTES);
    else this.ids.write(id, i * ID_BYTES, ID_BYTES, 'hex');
  }

  /** Distinct non-hole ids, in first-occurrence order. */
  uniqueIds(): BlockId[] {
    const seen = new Set<BlockId>();
    for (let i = 0; i < this.count; i++) {
      const id = this.idAt(i);
      if (id !== null) seen.add(id);
    }
    return [...seen];
  }

  /** Plaintext bytes of non-hole blocks (what a full copy would move before compression). */
  dataBytes(): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) if (!this.isHole(i)) n += this.lengthOf(i);
    return n;
  }
}

export function encodeManifest(m: DiskManifest): Buffer {
  const out = Buffer.alloc(HEADER + m.ids.length + ID_BYTES);
  MANIFEST_MAGIC.copy(out, 0);
  out.writeUInt16LE(MANIFEST_VERSION, 4);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(m.blockSize, 8);
  out.writeUInt32LE(0, 12);
  out.writeBigUInt64LE(BigInt(m.size), 16);
  out.writeBigUInt64LE(BigInt(m.count), 24);
  m.ids.copy(out, HEADER);
  sha256(out.subarray(0, out.length - ID_BYTES)).copy(out, out.length - ID_BYTES);
  return out;
}

/** The manifest id: SHA-256 of the whole encoding. */
export function manifestId(encoded: Uint8Array): BlockId {
  return sha256(encoded).toString('hex');
}

/** Decode and validate a manifest from any source; every inconsistency is MANIFEST_INVALID. */
export function decodeManifest(buf: Uint8Array): DiskManifest {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const bad = (why: string, data: Record<string, unknown> = {}): CarryonError =>
    new CarryonError('MANIFEST_INVALID', `disk manifest is invalid: ${why}`, data);
  if (b.length < HEADER + ID_BYTES) throw bad('shorter than its header');
  if (!b.subarray(0, 4).equals(MANIFEST_MAGIC)) throw bad('wrong magic');
  const version = b.readUInt16LE(4);
  if (version !== MANIFEST_VERSION) throw bad(`unsupported format version ${version}`, { version });
  if (b.readUInt16LE(6) !== 0 || b.readUInt32LE(12) !== 0) throw bad('reserved fields are not zero');
  const blockSize = b.readUInt32LE(8);
  const size = b.readBigUInt64LE(16);
  const count = b.readBigUInt64LE(24);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('image size too large');
  if (count > BigInt(MAX_BLOCKS)) throw bad('block count too large', { count: count.toString() });
  try {
    checkBlockSize(blockSize);
  } catch {
    throw bad(`block size ${blockSize} is not a power of two from 4 KiB to 4 MiB`);
  }
  const expected = blockCountFor(Number(size), blockSize);
  if (Number(count) !== expected) throw bad(`block count ${count} does not match image size ${size} at block size ${blockSize} (expected ${expected})`);
  if (b.length !== HEADER + expected * ID_BYTES + ID_BYTES) throw bad(`length ${b.length} does not match block count ${expected}`);
  const sum = sha256(b.subarray(0, b.length - ID_BYTES));
  if (!sum.equals(b.subarray(b.length - ID_BYTES))) throw bad('checksum mismatch');
  return new DiskManifest(Number(size), blockSize, Buffer.from(b.subarray(HEADER, HEADER + expected * ID_BYTES)));
}
