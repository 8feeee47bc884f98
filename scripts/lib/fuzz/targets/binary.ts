// Fuzz targets for carryon's binary formats read from outside: disk manifests (decodeManifest), block
// patches (applyBlockPatch, and encodeBlockPatch on what it rebuilt) and zstd block frames (decodeBlock).
import { decodeBlock, encodeBlock, MAX_BLOCK_BYTES } from '../../../../src/codec/index.js';
import { applyBlockPatch, encodeBlockPatch } from '../../../../src/delta/index.js';
import { blockId, sha256 } from '../../../../src/hash/index.js';
import { decodeManifest, DiskManifest, encodeManifest, manifestId } from '../../../../src/manifest/index.js';
import { check, type TargetSpec } from '../harness.js';
import type { IntField } from '../mutate.js';
import { mulberry32u32 } from '../../prng.js';
import { textLike } from './inputs.js';

const KiB = 1024;

// ---- manifests

const MANIFEST_FIELDS: IntField[] = [
  { offset: 4, width: 2, littleEndian: true }, // version
  { offset: 6, width: 2, littleEndian: true }, // reserved
  { offset: 8, width: 4, littleEndian: true }, // block size
  { offset: 12, width: 4, littleEndian: true }, // reserved
  { offset: 16, width: 8, littleEndian: true }, // image size
  { offset: 24, width: 8, littleEndian: true }, // block count
];

/** A manifest's trailing SHA-256 recomputed, so a mutation reaches the checks behind it. */
export function fixManifestChecksum(b: Buffer): Buffer {
  if (b.length < 64) return b;
  const out = Buffer.from(b);
  sha256(out.subarray(0, out.length - 32)).copy(out, out.length - 32);
  return out;
}

export const manifestTarget: TargetSpec = {
  name: 'manifest',
  about: 'decodeManifest (src/manifest); accepted manifests re-encode to the same bytes',
  create: () => ({
    codes: ['MANIFEST_INVALID'],
    corpus() {
      const rng = mulberry32u32(7);
      const shapes: Array<[number, number]> = [[0, 4096], [1, 4096], [4096, 4096], [3 * 64 * KiB + 5, 64 * KiB], [10 * 64 * KiB, 64 * KiB], [4 * 1024 * KiB + 1, 4 * 1024 * KiB], [2 ** 40, 4 * 1024 * KiB]];
      return shapes.filter(([size, bs]) => Math.ceil(size / bs) <= 4096).map(([size, bs]) => {
        const m = new DiskManifest(size, bs);
        for (let i = 0; i < m.count; i++) if (rng() % 3 !== 0) m.setId(i, blockId(Buffer.from([i & 0xff, rng() & 0xff])));
        return encodeManifest(m);
      });
    },
    hints: { fields: () => MANIFEST_FIELDS, dictionary: [Buffer.from('CYDM'), Buffer.alloc(32)] },
    fixup: fixManifestChecksum,
    run(input) {
      const m = decodeManifest(input);
      check(m.ids.length === m.count * 32, 'block table length is not count × 32');
      check(m.count === Math.ceil(m.size / m.blockSize), 'count does not match size and block size');
      if (m.count > 0) check(m.lengthOf(m.count - 1) > 0 && m.lengthOf(m.count - 1) <= m.blockSize, 'last block length out of range');
      const again = encodeManifest(m);
      check(again.equals(input), 'an accepted manifest does not re-encode to the same bytes');
      check(manifestId(again) === manifestId(input), 'manifest id changed');
    },
    allocationCap: (input) => 2 * input.length + 64 * KiB,
  }),
};

// ---- block patches

/** The integer fields of a block patch: its header and each range header it can walk to. */
function patchFields(b: Buffer): IntField[] {
  const out: IntField[] = [{ offset: 0, width: 4, littleEndian: true }, { offset: 4, width: 4, littleEndian: true }];
  let q = 8;
  while (q + 8 <= b.length && out.length < 64) {
    out.push({ offset: q, width: 4, littleEndian: true }, { offset: q + 4, width: 4, littleEndian: true });
    q += 8 + b.readUInt32LE(q + 4);
  }
  return out;
}

const PATCH_MAX = 128 * KiB;

export const blockPatchTarget: TargetSpec = {
  name: 'block-patch',
  about: 'applyBlockPatch (src/delta) against a 64 KiB base; what it rebuilds round-trips through encodeBlockPatch',
  create: () => {
    const base = textLike(mulberry32u32(11), 64 * KiB);
    return {
      codes: ['BLOCK_CORRUPT'],
      corpus() {
        const rng = mulberry32u32(12);
        const nexts: Buffer[] = [Buffer.from(base), Buffer.alloc(0), base.subarray(0, 1000), Buffer.concat([base, textLike(rng, 5000)]), Buffer.alloc(64 * KiB)];
        for (let k = 0; k < 6; k++) {
          const n = Buffer.from(base);
          for (let e = 0; e < 1 + (rng() % 8); e++) textLike(rng, 1 + (rng() % 6000)).copy(n, rng() % n.length);
          nexts.push(n);
        }
        return nexts.map((n) => encodeBlockPatch(base, n));
      },
      hints: { fields: patchFields },
      run(input) {
        const out = applyBlockPatch(base, input, PATCH_MAX);
        check(out.length <= PATCH_MAX, 'rebuilt block over maxBytes');
        const again = encodeBlockPatch(base, out);
        check(applyBlockPatch(base, again, PATCH_MAX).equals(out), 'encodeBlockPatch of a rebuilt block does not apply back to it');
      },
      allocationCap: (input) => PATCH_MAX + 2 * input.length + 64 * KiB,
    };
  },
};

// ---- zstd block frames

/** The frame content size field of a zstd frame header, when the header holds one. */
function frameFields(b: Buffer): IntField[] {
  if (b.length < 6 || b.readUInt32LE(0) !== 0xfd2fb528) return [];
  const fhd = b[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const dictBytes = [0, 1, 2, 4][fhd & 3]!;
  const fcsBytes = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag]!;
  const at = 5 + (single ? 0 : 1) + dictBytes;
  const out: IntField[] = [];
  if (fcsBytes === 1 || fcsBytes === 2 || fcsBytes === 4 || fcsBytes === 8) out.push({ offset: at, width: fcsBytes, littleEndian: true });
  out.push({ offset: 4, width: 1, littleEndian: true });
  return out;
}

const FRAME_MAX = 256 * KiB;

export const codecTarget: TargetSpec = {
  name: 'codec',
  about: 'decodeBlock (src/codec) with a 256 KiB limit, with and without a scratch buffer; accepted frames round-trip',
  create: () => {
    const scratch = Buffer.alloc(FRAME_MAX);
    return {
      codes: ['BLOCK_CORRUPT'],
      corpus() {
        const rng = mulberry32u32(13);
        const plains = [Buffer.alloc(0), Buffer.from('a'), Buffer.alloc(64 * KiB), textLike(rng, 64 * KiB), textLike(rng, 4096 + 17), Buffer.from(Array.from({ length: 3000 }, () => rng() & 0xff)), textLike(rng, FRAME_MAX)];
        return plains.flatMap((p, i) => [encodeBlock(p, 1 + (i % 3)), ...(i === 3 ? [encodeBlock(p, 19)] : [])]);
      },
      hints: { fields: frameFields, dictionary: [Buffer.from([0x28, 0xb5, 0x2f, 0xfd])] },
      run(input) {
        const plain = decodeBlock(input, FRAME_MAX);
        check(plain.length <= FRAME_MAX, 'decoded block over maxBytes');
        const viaScratch = decodeBlock(input, FRAME_MAX, scratch);
        check(viaScratch.equals(plain), 'decoding into a scratch buffer gives other bytes');
        check(decodeBlock(encodeBlock(plain), MAX_BLOCK_BYTES).equals(plain), 'an accepted frame does not round-trip');
      },
      allocationCap: () => FRAME_MAX + 64 * KiB,
    };
  },
};
