// The codec benchmark: why carryon uses zstd-napi for its blocks, SHA-256 for block ids and XXH3-64 for
// change detection, in numbers measured on this machine. Everything runs on one thread over the same
// real data: the 64 KiB blocks of a seeded selection of files from /usr/lib (all-zero blocks left out,
// as carryon never stores or sends them). Each row is timed over the whole sample several times and
// reports the median MB/s of plaintext (MB = 10^6 bytes).
// Rows: zstd via zstd-napi (the dependency) and via zstd-codec (Emscripten/wasm, the alternative) at
// levels 1, 3 and 19 (19 on an evenly spread subset); carryon's own encodeBlock/decodeBlock; hashes per
// block: node:crypto sha256, sha512-256, blake2b512, @node-rs/xxhash xxh3 (the streaming Xxh3 class as
// src/hash's CheapHasher uses it, and the one-shot functions), BLAKE3 from @napi-rs/blake-hash.
// zstd-codec and @napi-rs/blake-hash are not dependencies of the repo: install them in a scratch folder
// and pass their paths; their rows are skipped with a note otherwise.
//
// Usage: node dist/scripts/bench/codec-bench.js [--size 256M] [--l19-size 16M] [--reps 3] [--hash-reps 5]
//        [--seed N] [--root /usr/lib] [--json FILE]
//        [--zstd-codec /tmp/zc/node_modules/zstd-codec] [--blake3 /tmp/zc/node_modules/@napi-rs/blake-hash]

import { createHash, getHashes, hash as cryptoHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { decodeBlock, encodeBlock } from '../../src/codec/index.js';
import { CheapHasher } from '../../src/hash/index.js';
import { mib, parseSize, ratio, table } from '../lib/format.js';
import { listHostFiles } from '../lib/host-files.js';
import { seededRank } from '../lib/prng.js';
import { readArgs } from '../lib/args.js';

const require = createRequire(import.meta.url);
const zstd = require('zstd-napi') as typeof import('zstd-napi');
const zstdBinding = require('zstd-napi/binding') as { versionString(): string };
const { xxh3 } = require('@node-rs/xxhash') as typeof import('@node-rs/xxhash');

const BLOCK = 64 * 1024;
/** The seed src/hash's CheapHasher uses, so the streaming row hashes exactly as carryon does. */
const CHEAP_SEED = 0x63617272796f6e00n;

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  size: number;
  l19Size: number;
  reps: number;
  hashReps: number;
  seed: number;
  root: string;
  perFile: number;
  json?: string;
  zstdCodec?: string;
  blake3?: string;
}

const USAGE = `usage: codec-bench.js [--size 256M] [--l19-size 16M] [--reps 3] [--hash-reps 5] [--seed N] [--root /usr/lib]
                     [--per-file 4M] [--json FILE] [--zstd-codec PATH] [--blake3 PATH]
  --size        plaintext in the sample: 64 KiB blocks of files >= 64 KiB under --root (default 256M)
  --l19-size    evenly spread subset of the sample for zstd level 19 (default 16M)
  --reps        timed passes per compression row (default 3); --hash-reps for hash rows (default 5)
  --per-file    at most this much from one file, in blocks spread over it (default 4M)
  --json        also write every number (each pass, versions, the sample) to FILE
  --zstd-codec  folder of the zstd-codec package (e.g. /tmp/zc/node_modules/zstd-codec); row skipped without
  --blake3      folder of the @napi-rs/blake-hash package; BLAKE3 rows skipped without`;

function parseOptions(argv: string[]): Options {
  const o: Options = { size: 256 * 1024 ** 2, l19Size: 16 * 1024 ** 2, reps: 3, hashReps: 5, seed: 1, root: '/usr/lib', perFile: 4 * 1024 ** 2 };
  for (const { flag: a, value } of readArgs(argv, USAGE)) {
    const count = (): number => {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} needs a whole number >= 1`);
      return n;
    };
    if (a === '--size') o.size = parseSize(value());
    else if (a === '--l19-size') o.l19Size = parseSize(value());
    else if (a === '--reps') o.reps = count();
    else if (a === '--hash-reps') o.hashReps = count();
    else if (a === '--seed') o.seed = Number(value());
    else if (a === '--root') o.root = value();
    else if (a === '--per-file') o.perFile = parseSize(value());
    else if (a === '--json') o.json = value();
    else if (a === '--zstd-codec') o.zstdCodec = resolve(value());
    else if (a === '--blake3') o.blake3 = resolve(value());
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (o.size < BLOCK || o.l19Size < BLOCK || o.perFile < BLOCK) throw new Error('--size, --l19-size and --per-file must be at least 64K');
  return o;
}

// ---------------------------------------------------------------------------------------------
// The sample: real 64 KiB blocks, chosen by seed

interface Sample {
  blocks: Buffer[];
  bytes: number;
  files: number;
  candidates: number;
  zeroBlocksSkipped: number;
  /** SHA-256 over all blocks in order: the same value means the same data. */
  fingerprint: string;
}

/**
 * Files >= 64 KiB under `root` in seeded order; from each, up to `perFile` bytes of whole 64 KiB blocks
 * at evenly spread offsets (so one large library cannot fill the sample), until `size` is reached.
 */
function loadSample(root: string, size: number, perFile: number, seed: number): Sample {
  const want = Math.floor(size / BLOCK);
  const capBlocks = Math.floor(perFile / BLOCK);
  const files = listHostFiles([root])
    .filter((f) => f.size >= BLOCK)
    .map((f) => ({ path: f.path, size: f.size, rank: seededRank(seed, f.path) }))
    .sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0));
  const all = Buffer.alloc(want * BLOCK);
  const zero = Buffer.alloc(BLOCK);
  const blocks: Buffer[] = [];
  let used = 0;
  let zeroBlocksSkipped = 0;
  for (const f of files) {
    if (blocks.length >= want) break;
    let fd: number;
    try {
      fd = openSync(f.path, 'r');
    } catch {
      continue;
    }
    try {
      const nb = Math.floor(f.size / BLOCK);
      const take = Math.min(nb, capBlocks, want - blocks.length);
      const before = blocks.length;
      for (let k = 0; k < take; k++) {
        const idx = Math.floor((k * nb) / take);
        const dst = all.subarray(blocks.length * BLOCK, (blocks.length + 1) * BLOCK);
        if (readSync(fd, dst, 0, BLOCK, idx * BLOCK) !== BLOCK) break; // file shrank under us
        if (dst.equals(zero)) zeroBlocksSkipped++;
        else blocks.push(dst);
      }
      if (blocks.length > before) used++;
    } catch {
      // unreadable file: whatever it gave is kept, the rest skipped
    } finally {
      closeSync(fd);
    }
  }
  if (blocks.length === 0) throw new Error(`no readable blocks under ${root}`);
  const fp = createHash('sha256');
  for (const b of blocks) fp.update(b);
  return { blocks, bytes: blocks.length * BLOCK, files: used, candidates: files.length, zeroBlocksSkipped, fingerprint: fp.digest('hex') };
}

/** `n` blocks evenly spread over the sample, so the subset looks like the whole. */
function spread(blocks: Buffer[], n: number): Buffer[] {
  if (n >= blocks.length) return blocks;
  return Array.from({ length: n }, (_, k) => blocks[Math.floor((k * blocks.length) / n)]!);
}

// ---------------------------------------------------------------------------------------------
// Timing

function seconds(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function mbps(bytes: number, secs: number): number {
  return bytes / 1e6 / secs;
}

/** "256 MiB", or "512 KiB" below 1 MiB. */
function size(bytes: number): string {
  return bytes >= 1024 ** 2 ? mib(bytes) : `${Math.round(bytes / 1024)} KiB`;
}

function fmtRate(x: number | undefined): string {
  if (x === undefined) return '-';
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

/**
 * Passes over `items` with `fn` per item: one untimed warm-up on a few items, then `reps` timed ones,
 * each giving MB/s of `bytes` (the plaintext the items stand for).
 */
function passes<T>(items: T[], bytes: number, reps: number, fn: (item: T, i: number) => void): number[] {
  for (let i = 0; i < Math.min(64, items.length); i++) fn(items[i]!, i);
  const rates: number[] = [];
  for (let r = 0; r < reps; r++) {
    rates.push(
      mbps(
        bytes,
        seconds(() => {
          for (let i = 0; i < items.length; i++) fn(items[i]!, i);
        }),
      ),
    );
  }
  return rates;
}

// ---------------------------------------------------------------------------------------------
// Rows

interface Row {
  name: string;
  group: 'zstd' | 'hash';
  level?: number;
  sampleBytes: number;
  /** Median MB/s of plaintext: compressing for zstd rows, hashing for hash rows. */
  mbps?: number;
  decompressMbps?: number;
  /** Plaintext bytes / compressed bytes, every block compressed on its own. */
  ratio?: number;
  compressedBytes?: number;
  runs: { main?: number[]; decompress?: number[] };
  skipped?: string;
  note?: string;
}

interface Codec {
  compress(b: Buffer, level: number): Uint8Array;
  decompress(c: Uint8Array): Uint8Array;
}

/**
 * Compress every block at `level` `reps` times, then decompress `dReps` times (more passes on a small
 * subset, where one pass takes only milliseconds); check the round trip untimed.
 */
function zstdRow(name: string, codec: Codec, blocks: Buffer[], level: number, reps: number, note?: string, dReps = reps): Row {
  const sampleBytes = blocks.length * BLOCK;
  const out: Uint8Array[] = new Array(blocks.length);
  const c = passes(blocks, sampleBytes, reps, (b, i) => {
    out[i] = codec.compress(b, level);
  });
  let compressed = 0;
  for (const o of out) compressed += o.length;
  const d = passes(out, sampleBytes, dReps, (e) => {
    codec.decompress(e);
  });
  for (let i = 0; i < blocks.length; i++) {
    const back = codec.decompress(out[i]!);
    if (!Buffer.from(back.buffer, back.byteOffset, back.byteLength).equals(blocks[i]!)) {
      throw new Error(`${name} -${level}: block ${i} does not survive the round trip`);
    }
  }
  return {
    name,
    group: 'zstd',
    level,
    sampleBytes,
    mbps: median(c),
    decompressMbps: median(d),
    ratio: sampleBytes / compressed,
    compressedBytes: compressed,
    runs: { main: c, decompress: d },
    note,
  };
}

function hashRow(name: string, blocks: Buffer[], reps: number, fn: (b: Buffer) => unknown, note?: string): Row {
  let sink = 0;
  const h = passes(blocks, blocks.length * BLOCK, reps, (b) => {
    const r = fn(b);
    sink ^= typeof r === 'bigint' ? Number(r & 0xffn) : r instanceof Uint8Array ? r[0]! : String(r).length;
  });
  if (sink === -1) console.error('unreachable'); // keeps the results alive
  return { name, group: 'hash', sampleBytes: blocks.length * BLOCK, mbps: median(h), runs: { main: h }, note };
}

function skippedRow(name: string, group: Row['group'], why: string, level?: number): Row {
  return { name, group, level, sampleBytes: 0, runs: {}, skipped: why };
}

// ---------------------------------------------------------------------------------------------
// Optional packages, loaded from a folder outside the repo

interface ZstdCodecSimple {
  compress(u8: Uint8Array, level: number): Uint8Array | null;
  decompress(u8: Uint8Array): Uint8Array | null;
}
interface ZstdCodecModule {
  ZstdCodec: { run(cb: (z: { Simple: new () => ZstdCodecSimple }) => void): void };
}
interface BlakeHashModule {
  blake3(input: Uint8Array): Buffer;
  Blake3Hasher: new () => { update(input: Uint8Array): unknown; digestBuffer(): Buffer; reset(): void };
}

function packageVersion(folder: string): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(folder, 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

/** The folder holding a repo dependency's package.json (resolved from its main file). */
function depFolder(name: string): string {
  let dir = dirname(require.resolve(name));
  while (!dir.endsWith(`node_modules/${name}`) && dir !== dirname(dir)) dir = dirname(dir);
  return dir;
}

async function loadZstdCodec(path: string): Promise<ZstdCodecSimple> {
  const mod = require(path) as ZstdCodecModule;
  const z = await new Promise<{ Simple: new () => ZstdCodecSimple }>((res, rej) => {
    const timer = setTimeout(() => rej(new Error('ZstdCodec.run never called back')), 30_000);
    mod.ZstdCodec.run((zz) => {
      clearTimeout(timer);
      res(zz);
    });
  });
  return new z.Simple();
}

// ---------------------------------------------------------------------------------------------
// Main

function progress(msg: string): void {
  process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(5)} s] ${msg}\n`);
}
const started = performance.now();

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  progress(`reading the sample: ${size(o.size)} of 64 KiB blocks from files >= 64 KiB under ${o.root} (seed ${o.seed})`);
  const sample = loadSample(o.root, o.size, o.perFile, o.seed);
  const blocks = sample.blocks;
  const small = spread(blocks, Math.floor(o.l19Size / BLOCK));
  progress(`sample: ${blocks.length} blocks (${size(sample.bytes)}) from ${sample.files} of ${sample.candidates} files; ${sample.zeroBlocksSkipped} all-zero blocks left out; level-19 subset ${small.length} blocks`);

  const rows: Row[] = [];
  const notes: string[] = [];
  const versions: Record<string, string | undefined> = {
    node: process.versions.node,
    openssl: process.versions.openssl,
    'zstd-napi': packageVersion(depFolder('zstd-napi')),
    'libzstd (zstd-napi)': zstdBinding.versionString(),
    '@node-rs/xxhash': packageVersion(depFolder('@node-rs/xxhash')),
  };

  // --- zstd
  const napiCompressors = new Map<number, InstanceType<typeof zstd.Compressor>>();
  const napi: Codec = {
    compress: (b, level) => {
      let c = napiCompressors.get(level);
      if (!c) {
        c = new zstd.Compressor();
        c.setParameters({ compressionLevel: level });
        napiCompressors.set(level, c);
      }
      return c.compress(b);
    },
    decompress: (c) => zstd.decompress(c as Buffer),
  };
  let codecSimple: ZstdCodecSimple | undefined;
  let codecSkip: string | undefined;
  if (!o.zstdCodec) codecSkip = 'not measured: pass --zstd-codec PATH (npm install zstd-codec in a scratch folder)';
  else {
    try {
      codecSimple = await loadZstdCodec(o.zstdCodec);
      versions['zstd-codec'] = packageVersion(o.zstdCodec);
    } catch (e) {
      codecSkip = `could not load ${o.zstdCodec}: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
  const codec: Codec | undefined = codecSimple && {
    compress: (b, level) => {
      const r = codecSimple!.compress(b, level);
      if (!r) throw new Error(`zstd-codec compress failed at level ${level}`);
      return r;
    },
    decompress: (c) => {
      const r = codecSimple!.decompress(c);
      if (!r) throw new Error('zstd-codec decompress failed');
      return r;
    },
  };

  for (const level of [1, 3, 19]) {
    const set = level === 19 ? small : blocks;
    const reps = o.reps;
    const dReps = Math.min(5 * reps, Math.max(reps, Math.round((reps * blocks.length) / set.length)));
    progress(`zstd-napi -${level} on ${size(set.length * BLOCK)}`);
    rows.push(zstdRow('zstd-napi', napi, set, level, reps, undefined, dReps));
    if (codec) {
      progress(`zstd-codec -${level} on ${size(set.length * BLOCK)}`);
      rows.push(zstdRow('zstd-codec', codec, set, level, reps, undefined, dReps));
    } else rows.push(skippedRow('zstd-codec', 'zstd', codecSkip!, level));
  }
  // carryon's own path: encodeBlock (a Compressor with contentSize on, checksum off) and decodeBlock
  // (a DCtx decoding into a buffer sized from the frame header, bounded).
  progress(`carryon encodeBlock/decodeBlock -3 on ${size(sample.bytes)}`);
  rows.push(
    zstdRow('carryon encodeBlock/decodeBlock', { compress: (b, l) => encodeBlock(b, l), decompress: (c) => decodeBlock(c) }, blocks, 3, o.reps, 'src/codec: zstd-napi Compressor + raw DCtx into a sized buffer'),
  );
  // Both libraries write the same format: each decodes the other's frames.
  if (codec) {
    for (let i = 0; i < Math.min(256, blocks.length); i++) {
      const b = blocks[i]!;
      const a = codec.compress(b, 3);
      const n = napi.compress(b, 3);
      if (!decodeBlock(a).equals(b) || !Buffer.from(codec.decompress(n)).equals(b)) throw new Error(`block ${i}: zstd-napi and zstd-codec frames are not interchangeable`);
    }
    notes.push('zstd-napi and zstd-codec decode each other\'s frames (checked on 256 blocks at -3).');
  }
  const l3OnSmall = zstdRatio(napi, small, 3);
  notes.push(`Level 19 rows use an evenly spread ${size(small.length * BLOCK)} subset; zstd-napi -3 on that subset has ratio ${l3OnSmall.toFixed(2)}x.`);

  // --- hashes, one call per 64 KiB block
  const H = o.hashReps;
  progress('hashes');
  rows.push(hashRow('sha256 (createHash, as blockId)', blocks, H, (b) => createHash('sha256').update(b).digest()));
  if (typeof cryptoHash === 'function') rows.push(hashRow('sha256 (crypto.hash one-shot)', blocks, H, (b) => cryptoHash('sha256', b, 'buffer')));
  if (getHashes().includes('sha512-256')) rows.push(hashRow('sha512-256', blocks, H, (b) => createHash('sha512-256').update(b).digest()));
  else rows.push(skippedRow('sha512-256', 'hash', 'this OpenSSL has no sha512-256'));
  rows.push(hashRow('blake2b512', blocks, H, (b) => createHash('blake2b512').update(b).digest()));
  const stream = xxh3.Xxh3.withSeed(CHEAP_SEED);
  rows.push(
    hashRow('xxh3-64 Xxh3 class (update/digest/reset)', blocks, H, (b) => {
      stream.update(b);
      const d = stream.digest();
      stream.reset();
      return d;
    }),
  );
  rows.push(hashRow('xxh3.xxh64 one-shot', blocks, H, (b) => xxh3.xxh64(b, CHEAP_SEED)));
  rows.push(hashRow('xxh3.xxh128 one-shot', blocks, H, (b) => xxh3.xxh128(b)));
  const cheap = new CheapHasher();
  rows.push(hashRow('carryon CheapHasher', blocks, H, (b) => cheap.hash(b), 'src/hash: the Xxh3 class, seeded'));
  // The streaming class and the one-shot function must agree, or the rows measure different things.
  for (let i = 0; i < Math.min(256, blocks.length); i++) {
    if (cheap.hash(blocks[i]!) !== xxh3.xxh64(blocks[i]!, CHEAP_SEED)) throw new Error(`block ${i}: Xxh3 class and xxh3.xxh64 disagree`);
  }
  notes.push('The Xxh3 class (update/digest/reset) and xxh3.xxh64 give the same XXH3-64 values (checked on 256 blocks).');

  let blake: BlakeHashModule | undefined;
  let blakeSkip: string | undefined;
  if (!o.blake3) blakeSkip = 'not measured: pass --blake3 PATH (npm install @napi-rs/blake-hash in a scratch folder)';
  else {
    try {
      blake = require(o.blake3) as BlakeHashModule;
      if (blake.blake3(Buffer.from('abc')).toString('hex') !== '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85') throw new Error('blake3("abc") is wrong');
      versions['@napi-rs/blake-hash'] = packageVersion(o.blake3);
    } catch (e) {
      blake = undefined;
      blakeSkip = `could not load ${o.blake3}: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
  if (blake) {
    const b3 = blake;
    rows.push(hashRow('blake3 one-shot', blocks, H, (b) => b3.blake3(b)));
    const hasher = new b3.Blake3Hasher();
    rows.push(
      hashRow('blake3 Blake3Hasher (update/digest/reset)', blocks, H, (b) => {
        hasher.update(b);
        const d = hasher.digestBuffer();
        hasher.reset();
        return d;
      }),
    );
  } else rows.push(skippedRow('blake3', 'hash', blakeSkip!));

  // --- report
  const cpu = cpus()[0]?.model ?? 'unknown';
  console.log(`\ncodec-bench: ${cpu}, ${cpus().length} cores (one used), Node ${process.versions.node}`);
  console.log(`sample: ${blocks.length} blocks of 64 KiB (${size(sample.bytes)}) from ${sample.files} files under ${o.root}, seed ${o.seed}, fingerprint ${sample.fingerprint.slice(0, 16)}`);
  console.log(`median of ${o.reps} passes (zstd; up to ${5 * o.reps} decompress passes on the level-19 subset) / ${o.hashReps} passes (hashes); MB/s of plaintext, MB = 10^6 bytes; ratio = plaintext / compressed, each block its own frame\n`);
  const body = rows.map((r) => [
    r.group === 'zstd' ? `${r.name} -${r.level}` : r.name,
    r.skipped ? '-' : fmtRate(r.mbps),
    r.skipped ? '-' : fmtRate(r.decompressMbps),
    r.ratio === undefined ? '-' : ratio(r.ratio, 1),
    r.skipped ? '-' : size(r.sampleBytes),
    r.skipped ?? r.note ?? '',
  ]);
  console.log(table(['name', 'MB/s compress|hash', 'MB/s decompress', 'ratio', 'sample', 'note'], body));
  const versionLine = Object.entries(versions)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  console.log(`\nversions: ${versionLine}`);
  for (const n of notes) console.log(`note: ${n}`);

  if (o.json) {
    const report = {
      bench: 'codec-bench',
      date: new Date().toISOString(),
      machine: { cpu, cores: cpus().length, threadsUsed: 1 },
      versions,
      options: { ...o },
      sample: { blocks: blocks.length, blockBytes: BLOCK, bytes: sample.bytes, files: sample.files, candidateFiles: sample.candidates, zeroBlocksSkipped: sample.zeroBlocksSkipped, fingerprint: sample.fingerprint, l19Blocks: small.length },
      units: { rate: 'MB/s of plaintext, MB = 10^6 bytes, median over passes', ratio: 'plaintext bytes / compressed bytes' },
      rows,
      notes,
    };
    writeFileSync(o.json, JSON.stringify(report, null, 2) + '\n');
    console.log(`results written to ${o.json}`);
  }
  progress('done');
  return 0;
}

function zstdRatio(codec: Codec, blocks: Buffer[], level: number): number {
  let n = 0;
  for (const b of blocks) n += codec.compress(b, level).length;
  return (blocks.length * BLOCK) / n;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`\ncodec-bench failed: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  },
);
