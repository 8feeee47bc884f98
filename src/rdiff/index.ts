// rdiff: rsync-style deltas of whole files in librsync's formats, interchangeable with Debian's `rdiff`
// (librsync 2.3): a 200 MB mailbox with one new message sends kilobytes.
// Owns: the signature and delta formats (format.ts), their rolling and strong sums (RabinKarp, rollsum,
// BLAKE2b-256, MD4), and the streaming signature, delta and patch operations, with bounded memory and
// a patcher that treats every delta as hostile. Must not know: stores, manifests, HTTP, where the base
// or the new version lives. A delta proves nothing by itself: the caller checks the rebuilt file's hash.
// Key terms: base (the old version the receiver holds), signature (a weak and a strong sum per block of
// the base), weak sum (the rolling checksum, cheap to slide one byte), strong sum (the hash that
// confirms a weak match), delta (LITERAL bytes and COPY ranges of the base, then END), patch (applying
// a delta to the base).
//
// Flow: receiver createSignature(base) -> sender createDelta(signature, newVersion) -> receiver
// applyDelta(base, delta, out).
export {
  BLAKE2_SUM_LENGTH,
  DEFAULT_BLOCK_LENGTH,
  MAX_BLOCK_LENGTH,
  MD4_SUM_LENGTH,
  minimumStrongLength,
  recommendedBlockLength,
  RS_BLAKE2_SIG_MAGIC,
  RS_DELTA_MAGIC,
  RS_MD4_SIG_MAGIC,
  RS_RK_BLAKE2_SIG_MAGIC,
  RS_RK_MD4_SIG_MAGIC,
  type StrongSumKind,
  type WeakSumKind,
} from './format.js';
export { createSignature, parseSignature, type RdiffSignature, type SignatureOptions } from './signature.js';
export { createDelta } from './delta.js';
export { createAlignedDelta } from './aligned.js';
export { applyDelta, type ApplyDeltaOptions, type RandomAccessBase } from './patch.js';
export type { ByteSource } from './source.js';
