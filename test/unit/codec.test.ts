import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import {
  blockId,
  createCompressStream,
  createDecompressStream,
  decodeBlock,
  decodeFrame,
  decodeVerified,
  encodeBlock,
  MAX_BLOCK_BYTES,
  maxFrameBytes,
} from '../../src/index.js';
import { expectCode, prng, randomBytes, tempDir, textBytes } from './helpers.js';

const MiB = 1024 * 1024;
const SIZES = [0, 1, 2, 100, 4095, 4096, 4097, 65535, 65536, 65537, MiB + 3, 4 * MiB];
const KINDS = {
  random: (n: number, seed: number) => randomBytes(prng(seed), n),
  zero: (n: number) => Buffer.alloc(n),
  text: (n: number, seed: number) => textBytes(prng(seed), n),
};

/** Decompress with the zstd CLI: proof that the encoding is standard zstd. */
function zstdCli(frame: Buffer): Buffer {
  const r = spawnSync('zstd', ['-d', '-c', '-q'], { input: frame, maxBuffer: 64 * MiB });
  expect(r.status, r.stderr?.toString()).toBe(0);
  return r.stdout;
}

describe('decodeFrame (a block received as its frame)', () => {
  const plain = textBytes(prng(210), 65536);
  const frame = encodeBlock(plain, 6);

  it('decodes exactly one frame of at most maxBytes', () => {
    expect(decodeFrame(frame, 65536).equals(plain)).toBe(true);
    expect(maxFrameBytes(65536)).toBeGreaterThan(65536);
  });

  it.each([
    ['a larger content size than allowed', () => encodeBlock(plain.subarray(0, 40000), 3), 32768],
    ['a truncated frame', () => frame.subarray(0, frame.length - 1), 65536],
    ['a second frame after it', () => Buffer.concat([frame, encodeBlock(Buffer.from('x'))]), 65536],
    ['a skippable frame after it', () => Buffer.concat([frame, Buffer.from([0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0])]), 65536],
    ['a skippable frame alone', () => Buffer.from([0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]), 65536],
    ['plaintext', () => plain, 65536],
    ['more bytes than any frame of maxBytes', () => Buffer.concat([frame, Buffer.alloc(maxFrameBytes(65536))]), 65536],
    ['three bytes', () => Buffer.from([0x28, 0xb5, 0x2f]), 65536],
  ])('refuses %s with BLOCK_CORRUPT', async (_what, make, max) => {
    await expectCode(() => decodeFrame(make(), max), 'BLOCK_CORRUPT');
  });
});

describe('encodeBlock / decodeBlock', () => {
  for (const [kind, make] of Object.entries(KINDS)) {
    it.each(SIZES)(`round-trips a ${kind} block of %i bytes`, (n) => {
      const plain = make(n, 200 + n);
      expect(plain.length).toBe(n);
      const enc = encodeBlock(plain);
      const dec = decodeBlock(enc);
      expect(dec.equals(plain)).toBe(true);
      expect(decodeVerified(blockId(plain), enc).equals(plain)).toBe(true);
      if (kind !== 'random' && n >= 4096) expect(enc.length).toBeLessThan(n / 2);
    });
  }

  it('round-trips at other compression levels', () => {
    const plain = textBytes(prng(201), 100_000);
    for (const level of [-5, 1, 3, 9, 19]) expect(decodeBlock(encodeBlock(plain, level)).equals(plain)).toBe(true);
  });

  it('accepts a Uint8Array view into a larger buffer', () => {
    const big = randomBytes(prng(202), 10_000);
    const view = new Uint8Array(big.buffer, big.byteOffset + 1000, 5000);
    const enc = encodeBlock(view);
    expect(decodeBlock(new Uint8Array(enc)).equals(big.subarray(1000, 6000))).toBe(true);
  });

  it('writes standard zstd frames that the zstd CLI decodes', () => {
    const rng = prng(203);
    for (const plain of [Buffer.alloc(0), randomBytes(rng, 70_000), textBytes(rng, 4 * MiB), Buffer.alloc(65536)]) {
      expect(zstdCli(encodeBlock(plain)).equals(plain)).toBe(true);
    }
  });

  it('decodes a frame written by the zstd CLI (with its content size)', async () => {
    const plain = textBytes(prng(204), 50_000);
    const { dir, cleanup } = await tempDir();
    try {
      const file = path.join(dir, 'plain.bin');
      writeFileSync(file, plain);
      const r = spawnSync('zstd', ['-q', '-f', '-o', `${file}.zst`, file]);
      expect(r.status).toBe(0);
      expect(decodeBlock(readFileSync(`${file}.zst`)).equals(plain)).toBe(true);
    } finally {
      await cleanup();
    }
  });
});

describe('decodeBlock rejects bad input with BLOCK_CORRUPT', () => {
  const plain = textBytes(prng(210), 20_000);
  const enc = encodeBlock(plain);

  it('a frame whose content size exceeds maxBytes', async () => {
    expect(decodeBlock(enc, plain.length).equals(plain)).toBe(true);
    await expectCode(() => decodeBlock(enc, plain.length - 1), 'BLOCK_CORRUPT');
    await expectCode(() => decodeBlock(enc, 0), 'BLOCK_CORRUPT');
  });

  it('a frame over the default limit (MAX_BLOCK_BYTES + 1)', async () => {
    const big = Buffer.alloc(MAX_BLOCK_BYTES + 1, 7);
    await expectCode(() => decodeBlock(encodeBlock(big)), 'BLOCK_CORRUPT');
  });

  it('a frame without a content size (zstd CLI from a pipe)', async () => {
    const r = spawnSync('zstd', ['-q', '-c'], { input: plain });
    expect(r.status).toBe(0);
    expect(zstdCli(r.stdout).equals(plain)).toBe(true); // a valid frame, just no size
    await expectCode(() => decodeBlock(r.stdout), 'BLOCK_CORRUPT');
  });

  it('garbage bytes', async () => {
    const rng = prng(211);
    for (const junk of [Buffer.alloc(0), Buffer.alloc(1), Buffer.from('not zstd at all'), randomBytes(rng, 4096), plain]) {
      await expectCode(() => decodeBlock(junk), 'BLOCK_CORRUPT');
    }
  });

  it('a truncated frame, cut anywhere', async () => {
    for (const n of [1, 4, 5, 6, 8, enc.length >> 1, enc.length - 1]) {
      await expectCode(() => decodeBlock(enc.subarray(0, n)), 'BLOCK_CORRUPT');
    }
  });

  it('trailing bytes after the frame, or a second frame that overflows the size', async () => {
    await expectCode(() => decodeBlock(Buffer.concat([enc, Buffer.from('xx')])), 'BLOCK_CORRUPT');
    await expectCode(() => decodeBlock(Buffer.concat([enc, enc])), 'BLOCK_CORRUPT');
  });

  it('a damaged frame never decodes to other plaintext through decodeVerified', async () => {
    const rng = prng(212);
    const id = blockId(plain);
    for (let i = 0; i < 50; i++) {
      const bad = Buffer.from(enc);
      const at = 6 + (rng() % (bad.length - 6));
      bad[at] ^= 1 + (rng() % 255);
      await expectCode(() => decodeVerified(id, bad), 'BLOCK_CORRUPT');
    }
  });
});

describe('decodeVerified', () => {
  it('rejects a valid frame of other plaintext with BLOCK_CORRUPT, carrying the id', async () => {
    const rng = prng(220);
    const a = randomBytes(rng, 1000);
    const b = randomBytes(rng, 1000);
    const err = await expectCode(() => decodeVerified(blockId(a), encodeBlock(b)), 'BLOCK_CORRUPT');
    expect(err.data.id).toBe(blockId(a));
    expect(decodeVerified(blockId(b), encodeBlock(b)).equals(b)).toBe(true);
  });

  it('honours maxBytes', async () => {
    const a = randomBytes(prng(221), 5000);
    await expectCode(() => decodeVerified(blockId(a), encodeBlock(a), 4999), 'BLOCK_CORRUPT');
  });
});

describe('stream codec', () => {
  it('round-trips chunked data through createCompressStream and createDecompressStream', async () => {
    const rng = prng(230);
    const parts = Array.from({ length: 40 }, (_, i) => (i % 3 ? textBytes(rng, 30_000) : randomBytes(rng, 10_000)));
    const compressed = await buffer(Readable.from(parts).pipe(createCompressStream()));
    const whole = Buffer.concat(parts);
    expect(compressed.length).toBeLessThan(whole.length);
    expect(zstdCli(compressed).equals(whole)).toBe(true);
    const chunks: Buffer[] = [];
    await pipeline(Readable.from([compressed]), createDecompressStream(), async function* (src) {
      for await (const c of src) chunks.push(c as Buffer);
    });
    expect(Buffer.concat(chunks).equals(whole)).toBe(true);
  });

  /** A small zstd frame of `n` zero bytes, made by the zstd CLI (as an attacker would). */
  function zeroBomb(n: number): Buffer {
    const r = spawnSync('sh', ['-c', `head -c ${n} /dev/zero | zstd -3 -q -c`], { maxBuffer: 64 * MiB });
    expect(r.status).toBe(0);
    return r.stdout;
  }

  it('a frame that inflates to 1 GiB is decoded a chunk at a time, as slowly as its reader reads', async () => {
    const bomb = zeroBomb(1024 * MiB);
    expect(bomb.length).toBeLessThan(64 * 1024);
    const d = createDecompressStream();
    Readable.from([bomb]).pipe(d);
    // Read 64 MiB slowly; the decoder must not run ahead of the reader: what it holds for the reader
    // stays within a few output chunks (a process-wide memory figure would count garbage not yet collected).
    let got = 0;
    let peak = 0;
    for await (const c of d) {
      got += (c as Buffer).length;
      peak = Math.max(peak, d.readableLength);
      if (got >= 64 * MiB) break;
      await new Promise((r) => setImmediate(r));
    }
    expect(got).toBeGreaterThanOrEqual(64 * MiB);
    expect(peak).toBeLessThanOrEqual(MiB);
  });

  it('maxOutputBytes: PAYLOAD_TOO_LARGE as soon as the output passes it', async () => {
    const d = createDecompressStream({ maxOutputBytes: 8 * MiB });
    Readable.from([zeroBomb(1024 * MiB)]).pipe(d);
    let got = 0;
    const err = await (async () => {
      for await (const c of d) got += (c as Buffer).length;
    })().then(() => null, (e: unknown) => e);
    expect((err as { code?: string }).code).toBe('PAYLOAD_TOO_LARGE');
    expect(got).toBeLessThanOrEqual(8 * MiB);
  });

  it('a stream cut inside a frame: TAR_INVALID', async () => {
    const frame = encodeBlock(randomBytes(prng(231), 300_000));
    const err = await buffer(Readable.from([frame.subarray(0, frame.length - 10)]).pipe(createDecompressStream())).then(() => null, (e: unknown) => e);
    expect((err as { code?: string }).code).toBe('TAR_INVALID');
  });

  it('several frames in a row decode as one stream', async () => {
    const a = randomBytes(prng(232), 70_000);
    const b = textBytes(prng(233), 90_000);
    const out = await buffer(Readable.from([Buffer.concat([encodeBlock(a), encodeBlock(b)])]).pipe(createDecompressStream()));
    expect(out.equals(Buffer.concat([a, b]))).toBe(true);
  });

  it('fails to decompress garbage', async () => {
    const err = await pipeline(Readable.from([Buffer.from('definitely not zstd data')]), createDecompressStream(), async function* (src) {
      for await (const _ of src) yield _;
    }).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
  });
});
