// Signatures: a weak and a truncated strong sum per block of the base, written and read in librsync's
// format (byte layout in format.ts).
import { CarryonError } from '../errors/index.js';
import { blake2b256 } from './blake2b.js';
import {
  BLAKE2_SUM_LENGTH,
  decodeSignatureHeader,
  encodeSignatureHeader,
  MAX_BLOCK_LENGTH,
  minimumStrongLength,
  recommendedBlockLength,
  SIGNATURE_HEADER_BYTES,
  signatureKindFor,
  type SignatureKind,
  type StrongSumKind,
  type WeakSumKind,
} from './format.js';
import { md4 } from './md4.js';
import { asBuffer, chunksOf, type ByteSource } from './source.js';
import { rabinKarpSum, rollsumSum } from './weak-sum.js';

/** A parsed, validated signature of a base. */
export interface RdiffSignature {
  readonly magic: number;
  readonly weakSum: WeakSumKind;
  readonly strongSum: StrongSumKind;
  /** Bytes per block; the base's last block may be shorter. */
  readonly blockLength: number;
  /** Bytes kept of each block's strong hash. */
  readonly strongLength: number;
  readonly blockCount: number;
  /** One weak sum per block, as stored (a rollsum raw, without mix32). */
  readonly weakSums: Int32Array;
  /** blockCount × strongLength bytes: block i's strong sum at i × strongLength. */
  readonly strongSums: Uint8Array;
}

export interface SignatureOptions {
  /** Bytes per block; 0 or absent: what `rdiff signature` picks for the base's size. */
  blockLength?: number;
  /** Bytes kept of each strong hash; 0 or absent: all of it (32 for BLAKE2, 16 for MD4, as
   *  `rdiff -S 0`); 'min': the smallest safe length for the base's size (as `rdiff -S -1`). */
  strongLength?: number | 'min';
  /** Rolling checksum; default 'rabinkarp' (`rdiff -R`). */
  weakSum?: WeakSumKind;
  /** Strong hash; default 'blake2' (`rdiff -H`). MD4 is for old peers only: it is broken. */
  strongSum?: StrongSumKind;
  /** The base's size when it is a stream, for choosing the defaults above (a buffer's length is used
   *  otherwise). Without it a stream gets librsync's size-unknown defaults: 2048-byte blocks. */
  baseSize?: number;
}

export type StrongHash = (data: Uint8Array, start: number, end: number, out: Uint8Array, outOff: number) => void;

export function strongHashOf(kind: StrongSumKind): StrongHash {
  return kind === 'blake2' ? blake2b256 : md4;
}

export interface ResolvedSignatureArgs {
  readonly kind: SignatureKind;
  readonly blockLength: number;
  readonly strongLength: number;
}

/** Resolve signature options the way `rdiff signature` resolves its -b, -S, -H and -R. */
export function resolveSignatureArgs(opts: SignatureOptions, size: number | undefined): ResolvedSignatureArgs {
  const kind = signatureKindFor(opts.weakSum ?? 'rabinkarp', opts.strongSum ?? 'blake2');
  if (!kind) throw new CarryonError('INVALID_ARGUMENT', `unknown rdiff sum kinds ${String(opts.weakSum)}/${String(opts.strongSum)}`);
  const bad = (what: string, value: unknown): CarryonError =>
    new CarryonError('INVALID_ARGUMENT', `invalid rdiff signature ${what}: ${String(value)}`, { [what]: value });
  if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) throw bad('baseSize', size);
  let blockLength = opts.blockLength ?? 0;
  if (!Number.isInteger(blockLength) || blockLength < 0 || blockLength > MAX_BLOCK_LENGTH) throw bad('blockLength', blockLength);
  if (blockLength === 0) blockLength = recommendedBlockLength(size);
  let strongLength: number;
  if (opts.strongLength === 'min') strongLength = Math.min(minimumStrongLength(size, blockLength), kind.maxStrongLength);
  else {
    strongLength = opts.strongLength ?? 0;
    if (!Number.isInteger(strongLength) || strongLength < 0 || strongLength > kind.maxStrongLength) throw bad('strongLength', strongLength);
    if (strongLength === 0) strongLength = kind.maxStrongLength;
  }
  return { kind, blockLength, strongLength };
}

/** Signs blocks one at a time into a growing list of output pieces. */
class Signer {
  private readonly weak: (data: Uint8Array, start: number, end: number) => number;
  private readonly strong: StrongHash;
  private readonly digest = new Uint8Array(BLAKE2_SUM_LENGTH);
  private readonly pieces: Buffer[] = [];
  private piece: Buffer;
  private used = 0;

  constructor(private readonly args: ResolvedSignatureArgs) {
    this.weak = args.kind.weak === 'rabinkarp' ? rabinKarpSum : rollsumSum;
    this.strong = strongHashOf(args.kind.strong);
    this.piece = encodeSignatureHeader(args);
    this.used = SIGNATURE_HEADER_BYTES;
  }

  block(data: Uint8Array, start: number, end: number): void {
    const entry = 4 + this.args.strongLength;
    if (this.piece.length - this.used < entry) {
      this.pieces.push(this.piece.subarray(0, this.used));
      this.piece = Buffer.allocUnsafe(Math.max(64 * 1024, entry));
      this.used = 0;
    }
    this.piece.writeInt32BE(this.weak(data, start, end), this.used);
    this.strong(data, start, end, this.digest, 0);
    this.piece.set(this.digest.subarray(0, this.args.strongLength), this.used + 4);
    this.used += entry;
  }

  result(): Buffer {
    this.pieces.push(this.piece.subarray(0, this.used));
    return this.pieces.length === 1 ? Buffer.from(this.pieces[0]!) : Buffer.concat(this.pieces);
  }
}

/**
 * The librsync signature of `base`, byte for byte what `rdiff signature` writes with the same options.
 * A stream is read once, holding one block at a time; the signature (4 + strongLength bytes per block)
 * is returned whole.
 */
export async function createSignature(base: ByteSource, opts: SignatureOptions = {}): Promise<Buffer> {
  if (base instanceof Uint8Array) {
    const args = resolveSignatureArgs(opts, base.length);
    const signer = new Signer(args);
    for (let off = 0; off < base.length; off += args.blockLength) signer.block(base, off, Math.min(off + args.blockLength, base.length));
    return signer.result();
  }
  const args = resolveSignatureArgs(opts, opts.baseSize);
  const bl = args.blockLength;
  const signer = new Signer(args);
  const block = Buffer.allocUnsafe(bl);
  let have = 0; // bytes of a partial block in `block`
  for await (const chunk of chunksOf(base)) {
    let off = 0;
    if (have > 0) {
      const n = Math.min(bl - have, chunk.length);
      block.set(chunk.subarray(0, n), have);
      have += n;
      off = n;
      if (have < bl) continue;
      signer.block(block, 0, bl);
      have = 0;
    }
    for (; chunk.length - off >= bl; off += bl) signer.block(chunk, off, off + bl);
    block.set(chunk.subarray(off), 0);
    have = chunk.length - off;
  }
  if (have > 0) signer.block(block, 0, have);
  return signer.result();
}

/** Parse a whole signature. Malformed or truncated -> BAD_REQUEST; a block length beyond
 *  MAX_BLOCK_LENGTH -> PAYLOAD_TOO_LARGE. The caller bounds the signature's own size. */
export function parseSignature(data: Uint8Array): RdiffSignature {
  const { kind, blockLength, strongLength } = decodeSignatureHeader(data);
  const buf = asBuffer(data);
  const body = buf.length - SIGNATURE_HEADER_BYTES;
  const entry = 4 + strongLength;
  if (body % entry !== 0) {
    throw new CarryonError('BAD_REQUEST', `rdiff signature is truncated: ${body} body bytes is not a whole number of ${entry}-byte block sums`, { bytes: buf.length, entry });
  }
  const blockCount = body / entry;
  const weakSums = new Int32Array(blockCount);
  const strongSums = new Uint8Array(blockCount * strongLength);
  for (let i = 0, p = SIGNATURE_HEADER_BYTES; i < blockCount; i++, p += entry) {
    weakSums[i] = buf.readInt32BE(p);
    strongSums.set(buf.subarray(p + 4, p + entry), i * strongLength);
  }
  return { magic: kind.magic, weakSum: kind.weak, strongSum: kind.strong, blockLength, strongLength, blockCount, weakSums, strongSums };
}
