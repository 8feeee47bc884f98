// The S3 benchmark: how many requests (and how fast) S3BlockStore checks N MiB of 64 KiB blocks in and
// out of a real Ceph RGW, next to the obvious alternative measured in the same run: one object per block.
// Blocks are seeded random bytes (incompressible, so no block is smaller than 64 KiB), encoded before
// any timing starts: the rows time the store and the object store, not zstd.
//
// Rows:
//   packs, check-in    put() each block, sync() every 256 blocks (as server/blocks.ts BlockIngest does)
//   packs, check-out   a fresh S3BlockStore (its open LISTs index/ and GETs the index objects), then
//                      getEncodedMany 128 blocks at a time, the next batch read while one is checked
//                      (as server/blocks.ts readAhead does)
//   packs, one GET per block  the same reads with getEncoded, 16 in flight (the path without coalescing)
//   object per block, in/out  PUT and GET `peer/<id>` per block, 16 in flight
// Every check-out is compared with the blocks checked in.
//
// Usage: node dist/scripts/bench/s3-bench.js [--size 256M] [--seed N] [--url s3+http://127.0.0.1:PORT/bucket] [--json FILE]
// Without --url (or CARRYON_S3_URL), it starts a private RGW with scripts/rgw.sh in a temp folder and
// stops it at the end (needs ceph-mon ceph-osd radosgw from Debian). Keys come from the URL or
// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blockId, encodeBlock, parseS3Url, S3BlockStore, S3Client, type BlockId, type S3Stats } from '../../src/index.js';
import { readArgs } from '../lib/args.js';
import { mb, parseSize, table } from '../lib/format.js';
import { randomBytesSeeded } from '../lib/prng.js';

const BLOCK = 64 * 1024;
const SYNC_EVERY = 256;
const GiB = 1024 ** 3;
const RGW_SH = join(import.meta.dirname, '../../../scripts/rgw.sh');

const USAGE = `usage: s3-bench.js [--size 256M] [--seed N] [--url s3+http://127.0.0.1:PORT/bucket] [--json FILE]
  --size   data checked in and out, in 64 KiB random blocks (default 256M)
  --url    an S3 bucket (default: CARRYON_S3_URL, else a private RGW started with scripts/rgw.sh)
  --json   also write every number to FILE`;

interface Options {
  size: number;
  seed: number;
  url?: string;
  json?: string;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { size: 256 * 1024 * 1024, seed: 1, url: process.env.CARRYON_S3_URL };
  for (const a of readArgs(argv, USAGE)) {
    if (a.flag === '--size') o.size = parseSize(a.value());
    else if (a.flag === '--seed') o.seed = Number(a.value());
    else if (a.flag === '--url') o.url = a.value();
    else if (a.flag === '--json') o.json = a.value();
    else if (a.flag === '--help' || a.flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a.flag}\n${USAGE}`);
  }
  return o;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

interface Row {
  name: string;
  bytes: number;
  seconds: number;
  put: number;
  get: number;
  list: number;
  retries: number;
}

function delta(after: S3Stats, before: S3Stats): Pick<Row, 'put' | 'get' | 'list' | 'retries'> {
  return { put: after.put - before.put, get: after.get - before.get, list: after.list - before.list, retries: after.retries - before.retries };
}

async function each<T>(items: readonly T[], n: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i]!, i);
    }
  }));
}

function check(got: Buffer, want: Buffer, id: BlockId): void {
  if (!got.equals(want)) throw new Error(`block ${id} came back different`);
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  let rgwDir: string | null = null;
  let url = o.url;
  if (!url) {
    rgwDir = mkdtempSync(join(tmpdir(), 'carryon-s3-bench-'));
    const port = await freePort();
    console.log(`starting a private RGW on 127.0.0.1:${port} (scripts/rgw.sh) ...`);
    execFileSync(RGW_SH, ['start', rgwDir, String(port)], { stdio: ['ignore', 'inherit', 'inherit'] });
    const env = execFileSync(RGW_SH, ['env', rgwDir], { encoding: 'utf8' });
    for (const line of env.trim().split('\n')) process.env[line.slice(0, line.indexOf('='))] = line.slice(line.indexOf('=') + 1);
    url = process.env.CARRYON_S3_URL!;
  }
  try {
    await bench(o, url);
  } finally {
    if (rgwDir) {
      execFileSync(RGW_SH, ['stop', rgwDir], { stdio: 'ignore' });
      rmSync(rgwDir, { recursive: true, force: true });
    }
  }
}

async function bench(o: Options, url: string): Promise<void> {
  const base = parseS3Url(url);
  const prefix = `${base.prefix ? `${base.prefix}/` : ''}s3-bench/${randomBytes(6).toString('hex')}`;
  const count = Math.max(1, Math.floor(o.size / BLOCK));
  console.log(`making ${count} random 64 KiB blocks (seed ${o.seed}) ...`);
  const blocks = Array.from({ length: count }, (_, i) => {
    const plain = randomBytesSeeded(o.seed, i, BLOCK);
    return { id: blockId(plain), plain, encoded: encodeBlock(plain) };
  });
  const ids = blocks.map((b) => b.id);
  const plainBytes = count * BLOCK;
  const rows: Row[] = [];

  // Packs: check-in.
  const writer = new S3BlockStore({ ...base, prefix: `${prefix}/packs-store` });
  await writer.sync(); // the open (one LIST) outside the timing
  let s0 = writer.stats();
  let t0 = performance.now();
  for (const [i, b] of blocks.entries()) {
    await writer.put(b.id, b.encoded, b.plain);
    if (i % SYNC_EVERY === SYNC_EVERY - 1) await writer.sync();
  }
  await writer.sync();
  rows.push({ name: 'packs, check-in (sync every 256)', bytes: plainBytes, seconds: (performance.now() - t0) / 1000, ...delta(writer.stats(), s0) });
  await writer.close();

  // Packs: check-out through a fresh instance, coalesced.
  t0 = performance.now();
  const reader = new S3BlockStore({ ...base, prefix: `${prefix}/packs-store` });
  const batch = 128;
  const read = (i: number): Promise<Buffer[]> => reader.getEncodedMany(ids.slice(i, i + batch));
  let next: Promise<Buffer[]> | null = read(0);
  for (let i = 0; next; i += batch) {
    const got: Buffer[] = await next;
    next = i + batch < count ? read(i + batch) : null;
    got.forEach((g, j) => check(g, blocks[i + j]!.encoded, ids[i + j]!));
  }
  rows.push({ name: 'packs, check-out (open + getEncodedMany x128)', bytes: plainBytes, seconds: (performance.now() - t0) / 1000, ...delta(reader.stats(), { put: 0, get: 0, list: 0, delete: 0, retries: 0, bytesUp: 0, bytesDown: 0 }) });

  // Packs: one ranged GET per block, 16 in flight.
  s0 = reader.stats();
  t0 = performance.now();
  await each(blocks, 16, async (b) => check(await reader.getEncoded(b.id), b.encoded, b.id));
  rows.push({ name: 'packs, check-out, one GET per block', bytes: plainBytes, seconds: (performance.now() - t0) / 1000, ...delta(reader.stats(), s0) });
  await reader.close();

  // The peer: one object per block, 16 in flight each way.
  const client = new S3Client({ endpoint: base.endpoint, bucket: base.bucket, region: base.region ?? 'us-east-1', credentials: { accessKeyId: base.accessKeyId, secretAccessKey: base.secretAccessKey } });
  s0 = client.stats();
  t0 = performance.now();
  await each(blocks, 16, (b) => client.put(`${prefix}/peer/${b.id}`, [b.encoded]));
  rows.push({ name: 'object per block, check-in', bytes: plainBytes, seconds: (performance.now() - t0) / 1000, ...delta(client.stats(), s0) });
  s0 = client.stats();
  t0 = performance.now();
  await each(blocks, 16, async (b) => check((await client.get(`${prefix}/peer/${b.id}`))!, b.encoded, b.id));
  rows.push({ name: 'object per block, check-out', bytes: plainBytes, seconds: (performance.now() - t0) / 1000, ...delta(client.stats(), s0) });

  // Clean up what this run wrote.
  const keys: string[] = [];
  for await (const obj of client.list(`${prefix}/`)) keys.push(obj.key);
  await each(keys, 16, (k) => client.delete(k));
  client.close();

  const perGiB = (n: number): string => ((n * GiB) / plainBytes).toFixed(0);
  console.log(`\n${mb(plainBytes, 0)} MB (${count} blocks of 64 KiB, random) against ${new URL(base.endpoint).host}/${base.bucket}; MB = 10^6 bytes of plaintext\n`);
  console.log(table(
    ['row', 'PUT/GiB', 'GET/GiB', 'LIST/GiB', 'retries', 's', 'MB/s'],
    rows.map((r) => [r.name, perGiB(r.put), perGiB(r.get), perGiB(r.list), String(r.retries), r.seconds.toFixed(2), (r.bytes / 1e6 / r.seconds).toFixed(1)]),
  ));
  if (o.json) writeFileSync(o.json, JSON.stringify({ size: plainBytes, blocks: count, seed: o.seed, rows }, null, 2));
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
