// The server's CPU per block (issue 13 item 5): how many CPU seconds a real carryon-server spends per
// GiB it receives (a laptop's check-in) and per GiB it serves (N laptops checking out at once), next to
// the floor measured in the same run on the same blocks: what one SHA-256 and one zstd decode per block
// cost (received: a block must be verified once), and what one read of a block's file costs (served: a
// stored block was verified on its way in).
//
// Per round, for each store (fs = the default FsBlockStore, one file per block; pack = `--store pack://`,
// PackBlockStore, blocks appended to pack files), a fresh server:
//   publish   `carryon-server image publish` of v0 (an ext4 image of real /usr files): CPU of that CLI
//             process (cutime+cstime of this one around it) per GiB of plaintext stored.
//   served    N laptops (`carryon checkout`, real CLI processes, fresh homes) check out their own desktop
//             of v0 at once. Server CPU = utime+stime of the server process (/proc/PID/stat, all its
//             threads) after minus before, per GiB of block plaintext sent (blocksFetched x block size).
//   received  laptop 0 writes v1 (another seed: nearly every block differs) over its disk and checks in:
//             server CPU per GiB of plaintext uploaded (the CLI's plainBytesUploaded; blocks sent whole or
//             as patches against v0's, as the CLI chooses).
// Then the floor, in this process, on every block the fs server stored (v0's and v1's), one pass per
// operation, CPU by process.cpuUsage: read each block's file (readFileSync), zstd-decode it, SHA-256 it;
// for reference (not in the floor) zstd -3 encode it and write it to a new file.
//   served floor = the read; received floor = decode + SHA-256.
//
// Usage: node dist/scripts/bench/server-cpu-bench.js [--size 224M] [--laptops 50] [--rounds 1] [--stores fs,pack] [--out FILE]
//   --size     apparent image size (default 224M; payload 55% of it)
//   --laptops  laptops checking out at once (default 50)
//   --rounds   repeat everything (fresh servers) this many times (default 1; the issue wants 5)
//   --stores   fs or fs,pack (default fs,pack)
//   --out      write every round as JSON:
//   { bench: 'server-cpu', size, laptops, stores: ['fs','pack'],
//     rounds: [{ round,
//       stores: [{ store, publish: { cpuSeconds, plainBytes, cpuPerGiB },
//                  served:   { cpuSeconds, wallSeconds, plainBytes, wireBytes, cpuPerGiB },
//                  received: { cpuSeconds, wallSeconds, plainBytes, wireBytes, blocks, frames, laptopCpuSeconds, cpuPerGiB },
//                  ratios: { served, received } }],          // carryon / floor of the same round
//       floor: { blocks, plainBytes, readSource, readPerGiB, decodePerGiB, sha256PerGiB, encodePerGiB,
//                writePerGiB, servedPerGiB, receivedPerGiB } }] }
//   Every *PerGiB is CPU seconds per GiB (2^30 bytes) of block plaintext.
//   --keep     keep the temp folder

import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeBlock, encodeBlock } from '../../src/index.js';
import { makeExt4Image } from '../fixtures/ext4-image.js';
import { carryon, carryonMissing, carryonServer, num, serverGone, str, startServer } from '../lib/carryon-cli.js';
import { mb, parseSize, ratio, table } from '../lib/format.js';
import { readArgs } from '../lib/args.js';

const GiB = 1024 ** 3;
const TICKS = 100; // USER_HZ: /proc/PID/stat counts CPU time in 1/100 s on Linux

const USAGE = `usage: server-cpu-bench.js [--size 224M] [--laptops 50] [--rounds 1] [--stores fs,pack] [--seed N] [--out FILE] [--keep]`;

interface Options {
  size: number;
  laptops: number;
  rounds: number;
  seed: number;
  stores: StoreKind[];
  out?: string;
  keep: boolean;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { size: 224 * 1024 * 1024, laptops: 50, rounds: 1, seed: 1, stores: ['fs', 'pack'], keep: false };
  for (const a of readArgs(argv, USAGE)) {
    if (a.flag === '--size') o.size = parseSize(a.value());
    else if (a.flag === '--laptops') o.laptops = Number(a.value());
    else if (a.flag === '--rounds') o.rounds = Number(a.value());
    else if (a.flag === '--seed') o.seed = Number(a.value());
    else if (a.flag === '--stores') o.stores = a.value().split(',') as StoreKind[];
    else if (a.flag === '--out') o.out = a.value();
    else if (a.flag === '--keep') o.keep = true;
    else if (a.flag === '--help' || a.flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a.flag}\n${USAGE}`);
  }
  if (!(o.laptops >= 1) || !(o.rounds >= 1)) throw new Error(`--laptops and --rounds must be at least 1\n${USAGE}`);
  // The floor reads the fs store's block files: fs always runs.
  if (!o.stores.includes('fs') || o.stores.some((x) => x !== 'fs' && x !== 'pack')) throw new Error(`--stores is fs or fs,pack\n${USAGE}`);
  return o;
}

const log = (s: string): void => console.log(s);

/** utime + stime of a process (all its threads), in seconds. */
function cpuOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
  return (Number(f[11]) + Number(f[12])) / TICKS; // fields 14 and 15
}

function selfCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

interface Side {
  cpuSeconds: number;
  wallSeconds: number;
  plainBytes: number;
  wireBytes: number;
  cpuPerGiB: number;
  blocks?: number;
  /** Received: blocks the laptop sent as zstd frames (kept by the server as sent). */
  frames?: number;
  /** Received: CPU seconds of the laptop's check-in process (cutime+cstime around it). */
  laptopCpuSeconds?: number;
}

interface Floor {
  blocks: number;
  plainBytes: number;
  /** How the read was done. */
  readSource: string;
  readPerGiB: number;
  decodePerGiB: number;
  sha256PerGiB: number;
  encodePerGiB: number;
  writePerGiB: number;
  servedPerGiB: number;
  receivedPerGiB: number;
}

/** Every block file an FsBlockStore holds. */
function storeFiles(storeDir: string): string[] {
  const top = join(storeDir, 'blocks');
  const files: string[] = [];
  for (const shard of readdirSync(top).sort()) for (const name of readdirSync(join(top, shard)).sort()) files.push(join(top, shard, name));
  return files;
}

/**
 * One pass per operation over every block the fs server stored (v0's and v1's), each timed on its own
 * (CPU of this process): read its file (readFileSync: open, read, close), zstd-decode it, SHA-256 the
 * plaintext; for reference, zstd -3 encode it again and write it to a new file.
 */
function measureFloor(storeDir: string): Floor {
  const files = storeFiles(storeDir);
  let t = selfCpu();
  const encoded: Buffer[] = [];
  for (const f of files) encoded.push(readFileSync(f));
  const read = selfCpu() - t;
  t = selfCpu();
  const plains: Buffer[] = [];
  for (const e of encoded) plains.push(decodeBlock(e));
  const decode = selfCpu() - t;
  t = selfCpu();
  for (const p of plains) createHash('sha256').update(p).digest('hex');
  const sha = selfCpu() - t;
  t = selfCpu();
  for (const p of plains) encodeBlock(p);
  const encode = selfCpu() - t;
  const out = mkdtempSync(join(storeDir, '..', 'floor-'));
  t = selfCpu();
  for (let i = 0; i < encoded.length; i++) writeFileSync(join(out, String(i)), encoded[i]!);
  const write = selfCpu() - t;
  rmSync(out, { recursive: true, force: true });
  const plainBytes = plains.reduce((n, p) => n + p.length, 0);
  const per = (sec: number): number => (sec * GiB) / plainBytes;
  return {
    blocks: files.length, plainBytes, readSource: 'read (one file per block)',
    readPerGiB: per(read), decodePerGiB: per(decode), sha256PerGiB: per(sha), encodePerGiB: per(encode), writePerGiB: per(write),
    servedPerGiB: per(read), receivedPerGiB: per(decode + sha),
  };
}

/** CPU seconds of this process's waited-for children (cutime + cstime): a CLI run alone in between. */
function childCpu(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) / TICKS; // fields 16 and 17
}

interface StoreRun {
  store: StoreKind;
  publish: { cpuSeconds: number; plainBytes: number; cpuPerGiB: number };
  served: Side;
  received: Side;
  /** The server's data folder (kept until the round's floor is measured). */
  data: string;
}

type StoreKind = 'fs' | 'pack';

/** A fresh server on `store`, v0 published, N laptops checking out at once, then one check-in of v1. */
async function runStore(o: Options, work: string, round: number, store: StoreKind, v0: string, v1: string): Promise<StoreRun> {
  const data = join(work, `r${round}-${store}-server`);
  await carryonServer(data, 'init', ...(store === 'pack' ? ['--store', `pack://${join(data, 'packs')}`] : []));
  const srv = await startServer(data);
  const homes: string[] = [];
  try {
    let c0 = childCpu();
    const pub = await carryonServer(data, 'image', 'publish', 'golden', v0);
    const pubCpu = childCpu() - c0;
    const blockSize = num(pub.json, 'blockSize');
    const pubPlain = num(pub.json, 'newPlainBytes');
    // Set up 8 laptops at a time (untimed). One user each, as in a fleet: the server caps the requests
    // one user may have in flight (32), which 50 laptops of one user would pass.
    for (let i = 0; i < o.laptops; i += 8) {
      await Promise.all(Array.from({ length: Math.min(8, o.laptops - i) }, async (_, k) => {
        const home = join(work, `r${round}-${store}-laptop-${i + k}`);
        mkdirSync(home);
        homes[i + k] = home;
        const token = str((await carryonServer(data, 'user', 'add', `u${i + k}`)).json, 'token');
        await carryonServer(data, 'desktop', 'create', `d${i + k}`, '--user', `u${i + k}`, '--image', 'golden', '--encryption', 'off');
        await carryon(home, 'login', srv.url, '--token', token);
      }));
    }
    // Served: N laptops, each its own desktop, checking out at once.
    c0 = cpuOf(srv.pid);
    let t0 = performance.now();
    const outs = await Promise.all(homes.map((home, i) => carryon(home, 'checkout', `d${i}`, '--to', join(home, 'disk.raw'))));
    const servedWall = (performance.now() - t0) / 1000;
    const servedCpu = cpuOf(srv.pid) - c0;
    const gone = serverGone(srv);
    if (gone) throw new Error(gone);
    const servedPlain = outs.reduce((n, r) => n + num(r.json, 'blocksFetched'), 0) * blockSize;
    const served: Side = {
      cpuSeconds: servedCpu, wallSeconds: servedWall, plainBytes: servedPlain,
      wireBytes: outs.reduce((n, r) => n + num(r.json, 'bytesReceived'), 0), cpuPerGiB: (servedCpu * GiB) / servedPlain,
    };
    // Received: laptop 0's disk becomes v1; its check-in uploads every changed block.
    copyFileSync(v1, str(outs[0]!.json, 'disk'));
    c0 = cpuOf(srv.pid);
    const l0 = childCpu();
    t0 = performance.now();
    const ci = await carryon(homes[0]!, 'checkin', 'd0');
    const recvWall = (performance.now() - t0) / 1000;
    const recvCpu = cpuOf(srv.pid) - c0;
    const laptopCpu = childCpu() - l0;
    const recvPlain = num(ci.json, 'plainBytesUploaded');
    const received: Side = {
      cpuSeconds: recvCpu, wallSeconds: recvWall, plainBytes: recvPlain, wireBytes: num(ci.json, 'bytesSent'),
      blocks: num(ci.json, 'blocksUploaded'), cpuPerGiB: (recvCpu * GiB) / recvPlain,
      frames: typeof ci.json.blocksAsFrames === 'number' ? ci.json.blocksAsFrames : 0, laptopCpuSeconds: laptopCpu,
    };
    log(`  ${store} store: ${o.laptops} laptops checked out ${mb(servedPlain, 0)} MB of blocks in ${servedWall.toFixed(1)} s; one check-in uploaded ` +
      `${received.blocks} blocks (${mb(recvPlain, 0)} MB plaintext, ${mb(received.wireBytes)} MB sent, ${ci.json.blocksAsPatch} as patches, ${received.frames} as frames) in ${recvWall.toFixed(1)} s (laptop CPU ${laptopCpu.toFixed(2)} s)`);
    return { store, publish: { cpuSeconds: pubCpu, plainBytes: pubPlain, cpuPerGiB: (pubCpu * GiB) / pubPlain }, served, received, data };
  } finally {
    await srv.stop();
    // These disks are done with (N copies of the image).
    for (const home of homes) rmSync(home, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const missing = carryonMissing();
  if (missing) throw new Error(missing);
  const work = mkdtempSync(join(tmpdir(), 'carryon-server-cpu-'));
  try {
    const payload = Math.floor(o.size * 0.55); // leaves ext4 room for its metadata on small images
    log(`building two ${mb(o.size, 0)} MB ext4 images of real files (seeds ${o.seed}, ${o.seed + 1}) ...`);
    const v0 = join(work, 'v0.img');
    const v1 = join(work, 'v1.img');
    await makeExt4Image({ out: v0, sizeBytes: o.size, payloadBytes: payload, seed: o.seed });
    await makeExt4Image({ out: v1, sizeBytes: o.size, payloadBytes: payload, seed: o.seed + 1 });

    const rounds = [];
    for (let round = 1; round <= o.rounds; round++) {
      log(`\nround ${round}:`);
      const runs: StoreRun[] = [];
      for (const store of o.stores) runs.push(await runStore(o, work, round, store, v0, v1));
      // The floor: on the blocks of the first run's server (v0 and v1), in this process, now.
      const fsRun = runs.find((r) => r.store === 'fs');
      const floor = measureFloor(join(fsRun!.data, 'store'));
      for (const r of runs) rmSync(r.data, { recursive: true, force: true });
      const stores = runs.map((r) => ({
        store: r.store, publish: r.publish, served: r.served, received: r.received,
        ratios: { served: r.served.cpuPerGiB / floor.servedPerGiB, received: r.received.cpuPerGiB / floor.receivedPerGiB },
      }));
      rounds.push({ round, stores, floor });
      log(table(['server CPU s/GiB', ...stores.map((r) => `carryon ${r.store}`), 'floor', ...stores.map((r) => `ratio ${r.store}`), 'floor is'], [
        ['served', ...stores.map((r) => r.served.cpuPerGiB.toFixed(2)), floor.servedPerGiB.toFixed(2), ...stores.map((r) => ratio(r.served.cpuPerGiB, floor.servedPerGiB)), 'one block read per block'],
        ['received', ...stores.map((r) => r.received.cpuPerGiB.toFixed(2)), floor.receivedPerGiB.toFixed(2), ...stores.map((r) => ratio(r.received.cpuPerGiB, floor.receivedPerGiB)), 'one zstd decode + one SHA-256 per block'],
        ['publish (CLI)', ...stores.map((r) => r.publish.cpuPerGiB.toFixed(2)), '-', ...stores.map(() => '-'), ''],
      ]));
      log(`  floor parts (CPU s/GiB, ${floor.blocks} blocks): ${floor.readSource} ${floor.readPerGiB.toFixed(2)}, zstd decode ${floor.decodePerGiB.toFixed(2)}, ` +
        `SHA-256 ${floor.sha256PerGiB.toFixed(2)}; not in the floor: zstd -3 encode ${floor.encodePerGiB.toFixed(2)}, one new file written per block ${floor.writePerGiB.toFixed(2)}`);
    }

    if (rounds.length > 1) {
      log('\nevery round (server CPU s/GiB of block plaintext; ratio = carryon / floor of the same round):');
      log(table(['round', 'store', 'served', 'floor', 'ratio', 'received', 'floor', 'ratio', 'served wall s'], rounds.flatMap((r) => r.stores.map((x) => [
        String(r.round), x.store, x.served.cpuPerGiB.toFixed(2), r.floor.servedPerGiB.toFixed(2), ratio(x.served.cpuPerGiB, r.floor.servedPerGiB),
        x.received.cpuPerGiB.toFixed(2), r.floor.receivedPerGiB.toFixed(2), ratio(x.received.cpuPerGiB, r.floor.receivedPerGiB), x.served.wallSeconds.toFixed(1),
      ]))));
    }
    if (o.out) {
      writeFileSync(o.out, JSON.stringify({ bench: 'server-cpu', size: o.size, laptops: o.laptops, stores: o.stores, rounds }, null, 2));
      log(`\nwrote ${o.out}`);
    }
  } finally {
    if (o.keep) log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
