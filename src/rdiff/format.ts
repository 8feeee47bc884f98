// The librsync 2.3 signature and delta formats: magic numbers, command bytes, header parsing and the
// default-argument rules of `rdiff signature`. All integers are big-endian.
//
// Signature:
//   u32 magic            RS_*_SIG_MAGIC: which weak (rolling) sum and which strong hash
//   u32 block_len        bytes per block of the base; the last block may be shorter
//   u32 strong_len       bytes kept of each strong hash (its first bytes)
//   then ceil(base_len / block_len) × { u32 weak_sum; u8[strong_len] strong_sum }
// Rollsum signatures store the raw rollsum; matching compares mix32(rollsum) on both sides.
//
// Delta:
//   u32 magic = RS_DELTA_MAGIC, then commands, each one command byte and big-endian arguments:
//   0x00           END
//   0x01..0x40     LITERAL of that many bytes, which follow
//   0x41..0x44     LITERAL_N1/N2/N4/N8: a 1/2/4/8-byte length, then that many bytes
//   0x45..0x54     COPY_Nw_Nl: a w-byte base offset then an l-byte length, w and l in 1,2,4,8
//                  (0x45 + 4·index(w) + index(l), index: 1→0, 2→1, 4→2, 8→3)
//   0x55..0xff     reserved: a delta holding one is corrupt
import { CarryonError } from '../errors/index.js';

export const RS_DELTA_MAGIC = 0x72730236;
export const RS_MD4_SIG_MAGIC = 0x72730136;
export const RS_BLAKE2_SIG_MAGIC = 0x72730137;
export const RS_RK_MD4_SIG_MAGIC = 0x72730146;
export const RS_RK_BLAKE2_SIG_MAGIC = 0x72730147;

export type WeakSumKind = 'rollsum' | 'rabinkarp';
export type StrongSumKind = 'blake2' | 'md4';

export const OP_END = 0x00;
export const OP_LITERAL_N1 = 0x41;
export const OP_COPY_N1_N1 = 0x45;
export const OP_RESERVED_FIRST = 0x55;

/** Longest literal a LITERAL_1..64 command carries without a length argument. */
export const MAX_IMMEDIATE_LITERAL = 64;
/** librsync 2.3.2 cuts a run of unmatched bytes into literals of at most this many bytes. */
export const MAX_MISS_LITERAL = 32768;

/** Hash lengths in bytes (librsync's RS_BLAKE2_SUM_LENGTH and RS_MD4_SUM_LENGTH). */
export const BLAKE2_SUM_LENGTH = 32;
export const MD4_SUM_LENGTH = 16;
/** librsync's RS_DEFAULT_BLOCK_LEN, used when the base's size is unknown. */
export const DEFAULT_BLOCK_LENGTH = 2048;
/** librsync's RS_DEFAULT_MIN_STRONG_LEN, the minimum strong length when the base's size is unknown. */
export const DEFAULT_MIN_STRONG_LENGTH = 12;
/** Largest block we accept: delta and signature work holds one block in memory. librsync's own
 *  recommendation (sqrt of the base size) stays below this for bases up to 256 TiB. */
export const MAX_BLOCK_LENGTH = 16 * 1024 * 1024;
export const SIGNATURE_HEADER_BYTES = 12;

export interface SignatureKind {
  readonly magic: number;
  readonly weak: WeakSumKind;
  readonly strong: StrongSumKind;
  /** Full length of the strong hash; a signature keeps at most this many bytes of it. */
  readonly maxStrongLength: number;
}

const KINDS: readonly SignatureKind[] = [
  { magic: RS_RK_BLAKE2_SIG_MAGIC, weak: 'rabinkarp', strong: 'blake2', maxStrongLength: BLAKE2_SUM_LENGTH },
  { magic: RS_BLAKE2_SIG_MAGIC, weak: 'rollsum', strong: 'blake2', maxStrongLength: BLAKE2_SUM_LENGTH },
  { magic: RS_RK_MD4_SIG_MAGIC, weak: 'rabinkarp', strong: 'md4', maxStrongLength: MD4_SUM_LENGTH },
  { magic: RS_MD4_SIG_MAGIC, weak: 'rollsum', strong: 'md4', maxStrongLength: MD4_SUM_LENGTH },
];

export function signatureKindOf(magic: number): SignatureKind | undefined {
  return KINDS.find((k) => k.magic === magic);
}

export function signatureKindFor(weak: WeakSumKind, strong: StrongSumKind): SignatureKind | undefined {
  return KINDS.find((k) => k.weak === weak && k.strong === strong);
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

export interface SignatureHeader {
  readonly kind: SignatureKind;
  readonly blockLength: number;
  readonly strongLength: number;
}

/** Validate the 12-byte header of a signature. Malformed -> BAD_REQUEST; a block longer than we hold
 *  in memory -> PAYLOAD_TOO_LARGE. */
export function decodeSignatureHeader(buf: Uint8Array): SignatureHeader {
  if (buf.length < SIGNATURE_HEADER_BYTES) {
    throw new CarryonError('BAD_REQUEST', `rdiff signature is truncated: ${buf.length} bytes is shorter than its 12-byte header`, { bytes: buf.length });
  }
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = b.readUInt32BE(0);
  const kind = signatureKindOf(magic);
  if (!kind) {
    const what = magic === RS_DELTA_MAGIC ? ' (that is a delta, not a signature)' : '';
    throw new CarryonError('BAD_REQUEST', `not an rdiff signature: magic ${hex(magic)}${what}`, { magic: hex(magic) });
  }
  const blockLength = b.readUInt32BE(4);
  const strongLength = b.readUInt32BE(8);
  if (blockLength < 1) throw new CarryonError('BAD_REQUEST', 'rdiff signature has a block length of 0', { blockLength });
  if (blockLength > MAX_BLOCK_LENGTH) {
    throw new CarryonError('PAYLOAD_TOO_LARGE', `rdiff signature block length ${blockLength} exceeds the ${MAX_BLOCK_LENGTH} carryon accepts`, { blockLength, max: MAX_BLOCK_LENGTH });
  }
  if (strongLength < 1 || strongLength > kind.maxStrongLength) {
    throw new CarryonError('BAD_REQUEST', `rdiff signature strong sum length ${strongLength} is not in 1..${kind.maxStrongLength} for ${kind.strong}`, { strongLength, max: kind.maxStrongLength });
  }
  return { kind, blockLength, strongLength };
}

export function encodeSignatureHeader(h: SignatureHeader): Buffer {
  const out = Buffer.allocUnsafe(SIGNATURE_HEADER_BYTES);
  out.writeUInt32BE(h.kind.magic, 0);
  out.writeUInt32BE(h.blockLength, 4);
  out.writeUInt32BE(h.strongLength, 8);
  return out;
}

/** floor(log2(v)) for v >= 1, 0 for v < 2 (librsync's rs_long_ln2). */
function ln2(v: number): number {
  let n = 0;
  while (v >= 2) {
    v = Math.floor(v / 2);
    n++;
  }
  return n;
}

/** floor(sqrt(v)) exactly, for v up to 2^53. */
function isqrt(v: number): number {
  let r = Math.floor(Math.sqrt(v));
  while (r * r > v) r--;
  while ((r + 1) * (r + 1) <= v) r++;
  return r;
}

/** The block length `rdiff signature` picks for a base of `size` bytes (unknown size: 2048):
 *  256 up to 64 KiB, then sqrt(size) rounded down to a multiple of 128. */
export function recommendedBlockLength(size: number | undefined): number {
  if (size === undefined) return DEFAULT_BLOCK_LENGTH;
  if (size <= 256 * 256) return 256;
  const root = isqrt(size);
  return Math.min(root - (root % 128), MAX_BLOCK_LENGTH);
}

/** The strong length `rdiff signature -S -1` picks: enough bits that a 16 MiB longer new version with
 *  no matches has about a 2^-32 chance of one false match (librsync's rs_sig_args). */
export function minimumStrongLength(size: number | undefined, blockLength: number): number {
  if (size === undefined) return DEFAULT_MIN_STRONG_LENGTH;
  return 2 + Math.floor((ln2(size + 2 ** 24) + ln2(Math.floor(size / blockLength) + 1) + 7) / 8);
}

/** Bytes needed to hold `v` as one of the command argument widths 1, 2, 4, 8 (librsync's rs_int_len). */
export function intWidth(v: number): 1 | 2 | 4 | 8 {
  if (v < 0x100) return 1;
  if (v < 0x10000) return 2;
  if (v < 0x100000000) return 4;
  return 8;
}

export const WIDTH_INDEX: Record<1 | 2 | 4 | 8, number> = { 1: 0, 2: 1, 4: 2, 8: 3 };
export const INDEX_WIDTH = [1, 2, 4, 8] as const;
