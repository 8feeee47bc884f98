// Fuzz targets for src/rdiff: deltas applied to a base (applyDelta, from a buffer and from a file, fed
// whole and in chunks) and signatures (parseSignature, then createDelta against them, whose delta must
// apply to a base of the signature's shape and give back the new version).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { crc32 } from 'node:zlib';
import { applyDelta, createDelta, createSignature, MAX_BLOCK_LENGTH, parseSignature, type RandomAccessBase } from '../../../../src/rdiff/index.js';
import { check, type TargetSpec } from '../harness.js';
import type { IntField } from '../mutate.js';
import { mulberry32u32 } from '../../prng.js';
import { textLike } from './inputs.js';

const KiB = 1024;

class Sink extends Writable {
  parts: Buffer[] = [];
  ended = false;
  override _write(c: Buffer, _e: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.parts.push(c);
    cb();
  }
  override _final(cb: (err?: Error | null) => void): void {
    this.ended = true;
    cb();
  }
  result(): Buffer {
    return Buffer.concat(this.parts);
  }
}

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of chunks) parts.push(c);
  return Buffer.concat(parts);
}

/** `data` cut into pieces whose sizes follow from its own checksum: the same input, the same cuts. */
export async function* piecesOf(data: Buffer): AsyncGenerator<Buffer> {
  const rng = mulberry32u32(crc32(data));
  const sizes = [1, 7, 512, 4096, 65536];
  for (let off = 0; off < data.length;) {
    const n = sizes[rng() % sizes.length]!;
    yield data.subarray(off, off + n);
    off += n;
  }
}

/** The integer arguments of a delta's commands, as far as they can be walked. */
function deltaFields(b: Buffer): IntField[] {
  const out: IntField[] = [{ offset: 0, width: 4, littleEndian: false }];
  const widths = [1, 2, 4, 8] as const;
  let p = 4;
  while (p < b.length && out.length < 64) {
    const op = b[p++]!;
    if (op === 0) break;
    if (op <= 0x40) p += op;
    else if (op <= 0x44) {
      const w = widths[op - 0x41]!;
      if (p + w > b.length) break;
      out.push({ offset: p, width: w, littleEndian: false });
      const len = b.readUIntBE(p, Math.min(w, 6));
      p += w + len;
    } else if (op <= 0x54) {
      const k = op - 0x45;
      const w1 = widths[k >> 2]!;
      const w2 = widths[k & 3]!;
      out.push({ offset: p, width: w1, littleEndian: false }, { offset: p + w1, width: w2, littleEndian: false });
      p += w1 + w2;
    } else break;
  }
  return out;
}

const DELTA_MAX = 256 * KiB;

async function patch(base: RandomAccessBase, delta: Buffer | AsyncIterable<Buffer>): Promise<Buffer> {
  const sink = new Sink();
  const { bytes } = await applyDelta(base, delta, sink, { maxOutputBytes: DELTA_MAX });
  const out = sink.result();
  check(bytes === out.length, `applyDelta reported ${bytes} bytes and wrote ${out.length}`);
  check(sink.ended, 'applyDelta did not end its output');
  check(out.length <= DELTA_MAX, 'output over maxOutputBytes');
  return out;
}

export const rdiffDeltaTarget: TargetSpec = {
  name: 'rdiff-delta',
  about: 'applyDelta (src/rdiff) against a 20 KiB base with a 256 KiB output limit; whole and chunked, buffer and file base agree',
  create: async () => {
    const base = textLike(mulberry32u32(21), 20 * KiB);
    const dir = mkdtempSync(path.join(tmpdir(), 'carryon-fuzz-rdiff-'));
    const file = path.join(dir, 'base');
    writeFileSync(file, base);
    let fh: FileHandle | null = null;
    return {
      codes: ['BAD_REQUEST', 'PAYLOAD_TOO_LARGE'],
      async corpus() {
        const rng = mulberry32u32(22);
        const nexts = [Buffer.from(base), Buffer.alloc(0), textLike(rng, 3000), Buffer.concat([base.subarray(5000), textLike(rng, 100), base.subarray(0, 5000)]), Buffer.concat([base, base, base])];
        const out: Buffer[] = [];
        for (const [i, next] of nexts.entries()) {
          const sig = await createSignature(base, { blockLength: [256, 2048, 1000, 64, 4096][i]! });
          out.push(await collect(createDelta(sig, next)));
        }
        return out;
      },
      hints: { fields: deltaFields, dictionary: [Buffer.from([0x72, 0x73, 0x02, 0x36]), Buffer.from([0]), Buffer.from([0x41, 0xff]), Buffer.from([0x54]), Buffer.from([0x55])] },
      async run(input) {
        const whole = await patch(base, input);
        const chunked = await patch(base, piecesOf(input));
        check(chunked.equals(whole), 'a delta fed in pieces gives other bytes than fed whole');
        fh ??= await open(file, 'r');
        check((await patch(fh, input)).equals(whole), 'a file base gives other bytes than a buffer base');
      },
      allocationCap: (input) => 2 * input.length + 2 * base.length + 1024 * KiB,
      async close() {
        await fh?.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};

const SIG_FIELDS: IntField[] = [{ offset: 0, width: 4, littleEndian: false }, { offset: 4, width: 4, littleEndian: false }, { offset: 8, width: 4, littleEndian: false }];
/** Largest base rebuilt to check a delta made from a fuzzed signature. */
const SIG_BASE_MAX = 2 * 1024 * KiB;

export const rdiffSignatureTarget: TargetSpec = {
  name: 'rdiff-signature',
  about: 'parseSignature (src/rdiff), then createDelta against it: the delta applies to a base of the signature\'s shape and rebuilds the new version',
  create: () => {
    const rng = mulberry32u32(23);
    const base = textLike(rng, 12 * KiB);
    const next = Buffer.concat([base.subarray(3000), textLike(rng, 500), base.subarray(0, 3000)]);
    return {
      codes: ['BAD_REQUEST', 'PAYLOAD_TOO_LARGE'],
      async corpus() {
        const opts = [{}, { blockLength: 64 }, { blockLength: 1000, strongLength: 8 }, { weakSum: 'rollsum' as const, strongSum: 'md4' as const }, { strongSum: 'md4' as const, strongLength: 'min' as const }, { blockLength: 20000 }];
        const out = await Promise.all(opts.map((o) => createSignature(base, o)));
        out.push(await createSignature(Buffer.alloc(0)));
        return out;
      },
      hints: { fields: () => SIG_FIELDS, dictionary: [Buffer.from([0x72, 0x73, 0x01, 0x47]), Buffer.from([0x72, 0x73, 0x01, 0x36])] },
      async run(input) {
        const sig = parseSignature(input);
        check(sig.blockCount * (4 + sig.strongLength) + 12 === input.length, 'block count does not match the signature length');
        check(sig.weakSums.length === sig.blockCount && sig.strongSums.length === sig.blockCount * sig.strongLength, 'sum tables out of shape');
        const delta = await collect(createDelta(sig, next));
        // Every COPY names whole blocks of the base the signature describes: rebuild on zeros of its shape.
        const size = sig.blockCount * sig.blockLength;
        if (size > SIG_BASE_MAX) return;
        const sink = new Sink();
        await applyDelta(Buffer.alloc(size), delta, sink);
        const rebuilt = sink.result();
        check(rebuilt.length === next.length, `the delta rebuilds ${rebuilt.length} bytes, not the ${next.length} of the new version`);
        if (input.equals(await createSignature(base, { blockLength: sig.blockLength, strongLength: sig.strongLength, weakSum: sig.weakSum, strongSum: sig.strongSum }))) {
          const real = new Sink();
          await applyDelta(base, delta, real);
          check(real.result().equals(next), 'a delta against the true signature does not rebuild the new version');
        }
      },
      allocationCap: (input) => {
        const bl = input.length >= 12 ? Math.min(input.readUInt32BE(4), MAX_BLOCK_LENGTH) : 0;
        return 2 * bl + SIG_BASE_MAX + 16 * input.length + 1024 * KiB;
      },
    };
  },
};
