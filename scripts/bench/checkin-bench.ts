// The check-in benchmark: bytes over the wire and wall time of a carryon check-in against the peers
// people would otherwise use (rsync, rdiff, casync) and against a floor (the changed 4 KiB pages as one
// zstd stream), on a real ext4 image changed three ways; plus cold and warm check-outs.
// Owns the measuring and the report; images and workloads come from ../fixtures, the carryon side runs
// the real CLIs as processes. See README.md beside this file for what each number means.
//
// Usage: node dist/scripts/bench/checkin-bench.js [--size 1G] [--payload 650M] [--workloads small,large,fs]
//        [--out results.json] [--keep] [--no-carryon] [--seed N] [--encryption N] [--checkouts N] [--server-store default|pack]

import { cpus, loadavg } from 'node:os';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { makeExt4Image } from '../fixtures/ext4-image.js';
import { compareImages, debugfsSession, listImage, rewriteScattered } from '../fixtures/workloads.js';
import { carryon, carryonMissing, carryonServer, num, serverGone, str, startServer, type Json, type RunningServer } from '../lib/carryon-cli.js';
import { mb, mib, parseSize, ratio, secs, table } from '../lib/format.js';
import { copySparse, requireTool, run, settleBeforeEachRun, toolVersion } from '../lib/proc.js';
import { parseRsyncStats, type Measure } from '../lib/measure.js';
import { readArgs } from '../lib/args.js';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  size: number;
  payload: number;
  workloads: WorkloadName[];
  out?: string;
  keep: boolean;
  carryon: boolean;
  seed: number;
  /** Rounds of cold check-outs plain and encrypted (0: none). */
  encryption: number;
  /** Runs of the cold check-out against casync extract and zstd -d, each run measuring all three (0: none). */
  checkouts: number;
  /** The server's block store: its default (a file per block) or pack files. */
  serverStore: 'default' | 'pack';
}

type WorkloadName = 'small' | 'large' | 'fs';

/** Host paths already inside v0: scattered rewrites take their library bytes from other files. */
let inV0 = new Set<string>();

const WORKLOADS: Record<WorkloadName, { title: string; apply: (image: string, seed: number) => Promise<object> }> = {
  small: { title: '~1% of the disk rewritten in scattered 4 KiB-1 MiB extents (3/4 library bytes, 1/4 random)', apply: async (img, seed) => rewriteScattered(img, { fraction: 0.01, seed: seed + 1, avoid: inV0 }) },
  large: { title: '~10% of the disk rewritten in scattered 4 KiB-1 MiB extents (3/4 library bytes, 1/4 random)', apply: async (img, seed) => rewriteScattered(img, { fraction: 0.1, seed: seed + 2, avoid: inV0 }) },
  fs: { title: 'debugfs -w session: binaries replaced, documents edited mid-file, files added and deleted', apply: (img, seed) => debugfsSession(img, { seed: seed + 3 }) },
};

const USAGE = `usage: checkin-bench.js [--size 1G] [--payload 650M] [--workloads small,large,fs] [--out FILE] [--keep] [--no-carryon] [--seed N]
  --size       apparent size of the ext4 image (default 1G; 256M for a quick run)
  --payload    real file bytes in it (default 650M for 1G, scaled with --size otherwise)
  --workloads  which changes to measure, comma-separated (default small,large,fs)
  --out        also write all results as JSON to FILE
  --keep       keep the temp folder (images, stores, homes)
  --no-carryon measure only the peers (rsync, rdiff, casync, zstd)
  --encryption N  also N rounds of cold check-outs of v0 into empty homes, plain and encrypted at rest
               (--encrypt), alternating; prints medians and encrypted / plain (--workloads none: only that)
  --checkouts N  also N runs of the cold check-out of v0 (an empty home each run) with casync extract and
               zstd -d measured in the same run, the order rotating; prints every run's ratios and the
               medians against the target (below casync extract, within 2x zstd -d)
  --server-store  default (a file per block) or pack (pack files, PackBlockStore) for the server's blocks`;

function parseOptions(argv: string[]): Options {
  const o: Options = { size: 1024 ** 3, payload: 0, workloads: ['small', 'large', 'fs'], keep: false, carryon: true, seed: 100, encryption: 0, checkouts: 0, serverStore: 'default' };
  let payloadGiven = false;
  for (const { flag: a, value } of readArgs(argv, USAGE)) {
    if (a === '--size') o.size = parseSize(value());
    else if (a === '--payload') {
      o.payload = parseSize(value());
      payloadGiven = true;
    } else if (a === '--workloads') {
      const list = value();
      o.workloads = list === 'none' ? [] : list.split(',').map((w) => {
        if (!(w in WORKLOADS)) throw new Error(`unknown workload "${w}" (small, large, fs)`);
        return w as WorkloadName;
      });
    } else if (a === '--out') o.out = value();
    else if (a === '--keep') o.keep = true;
    else if (a === '--no-carryon') o.carryon = false;
    else if (a === '--seed') o.seed = Number(value());
    else if (a === '--encryption') {
      o.encryption = Number(value());
      if (!Number.isInteger(o.encryption) || o.encryption < 1) throw new Error(`--encryption takes a number of rounds\n${USAGE}`);
    }
    else if (a === '--checkouts') {
      o.checkouts = Number(value());
      if (!Number.isInteger(o.checkouts) || o.checkouts < 1) throw new Error(`--checkouts takes a number of runs\n${USAGE}`);
    } else if (a === '--server-store') {
      const v = value();
      if (v !== 'default' && v !== 'pack') throw new Error(`--server-store is default or pack\n${USAGE}`);
      o.serverStore = v;
    } else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  // 650 MiB of files on 1 GiB, the same share on other sizes.
  if (!payloadGiven) o.payload = Math.round((o.size * 650) / 1024);
  return o;
}

// ---------------------------------------------------------------------------------------------
// Measurements


interface WorkloadResult {
  name: WorkloadName;
  title: string;
  change: object;
  changedPages: number;
  changedBytes: number;
  ideal: Measure;
  peers: Record<string, Measure>;
  carryon?: Record<string, Measure> | { error: string };
}

const log = (line: string): void => console.log(line);
const fileSize = (p: string): number => statSync(p).size;

/** Sum of file sizes under a folder, and their paths relative to it. */
function treeFiles(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.set(relative(dir, p), statSync(p).size);
    }
  };
  walk(dir);
  return out;
}


/** rsync of v1 onto a fresh copy of v0, forced to use its delta algorithm (local copies default to whole-file). */
async function measureRsync(v0: string, v1: string, dst: string, compress: boolean): Promise<Measure> {
  await copySparse(v0, dst);
  const args = ['--no-whole-file', '--inplace', '--ignore-times', '--stats', ...(compress ? ['-z', '--compress-choice=zstd'] : []), v1, dst];
  const r = await run('rsync', args);
  const s = parseRsyncStats(r.stdout);
  await run('cmp', [v1, dst]); // the copy must really be v1, or the byte count means nothing
  rmSync(dst, { force: true });
  return { bytes: s.sent + s.received, seconds: r.seconds, note: 'Total bytes sent + received (--stats)', sent: s.sent, received: s.received };
}

/** rdiff delta against the (shared) signature of v0, then zstd -3 of the delta. */
async function measureRdiff(sig: string, sigSeconds: number, v1: string, dir: string): Promise<{ withSig: Measure; deltaOnly: Measure }> {
  const delta = join(dir, 'v1.rdiff');
  const d = await run('rdiff', ['-f', 'delta', sig, v1, delta]);
  const z = await run('zstd', ['-3', '-q', '-f', delta, '-o', `${delta}.zst`]);
  const deltaBytes = fileSize(`${delta}.zst`);
  const rawDeltaBytes = fileSize(delta);
  const sigBytes = fileSize(sig);
  rmSync(delta, { force: true });
  rmSync(`${delta}.zst`, { force: true });
  return {
    withSig: { bytes: deltaBytes + sigBytes, seconds: sigSeconds + d.seconds + z.seconds, note: 'zstd -3 of the delta + the signature of v0 (sent the other way)', deltaBytes, sigBytes, rawDeltaBytes },
    deltaOnly: { bytes: deltaBytes, seconds: d.seconds + z.seconds, note: 'zstd -3 of the delta only (signature cached on the laptop)' },
  };
}

/** casync make of v1 into a hard-linked copy of v0's store: what is new there is what would be uploaded. */
async function measureCasync(store0: string, chunks0: Map<string, number>, v1: string, dir: string): Promise<Measure> {
  const store1 = join(dir, 'store1');
  const index = join(dir, 'v1.caibx');
  await run('cp', ['-al', store0, store1]); // casync writes new chunks via rename, so the links are safe
  const r = await run('casync', ['make', `--store=${store1}`, '--compression=zstd', index, v1]);
  let newBytes = 0;
  let newChunks = 0;
  for (const [p, size] of treeFiles(store1)) {
    if (!chunks0.has(p)) {
      newBytes += size;
      newChunks++;
    }
  }
  const indexBytes = fileSize(index);
  rmSync(store1, { recursive: true, force: true });
  rmSync(index, { force: true });
  return { bytes: newBytes + indexBytes, seconds: r.seconds, note: 'new chunk files (zstd) + blob index', newChunks, newChunkBytes: newBytes, indexBytes };
}

// ---------------------------------------------------------------------------------------------
// carryon side: a server with the v0 image published; per workload two laptops.

interface CarryonRig {
  server: RunningServer;
  data: string;
  token: string;
  publish: Json & { seconds: number };
}

async function startCarryon(work: string, v0: string, store: Options['serverStore']): Promise<CarryonRig> {
  const data = join(work, 'server');
  await carryonServer(data, 'init', ...(store === 'pack' ? ['--store', `pack://${join(work, 'server-packs')}`] : []));
  const server = await startServer(data);
  try {
    const token = str((await carryonServer(data, 'user', 'add', 'bench')).json, 'token');
    const pub = await carryonServer(data, 'image', 'publish', 'golden', v0);
    log(`  carryon-server at ${server.url}; published v0: ${mb(num(pub.json, 'storedBytes'))} MB stored in ${secs(pub.seconds)} s`);
    return { server, data, token, publish: { ...pub.json, seconds: pub.seconds } };
  } catch (e) {
    await server.stop();
    throw e;
  }
}

/** The CLI's own JSON, with the byte count we compare and the process wall time (its own `seconds` kept as cliSeconds). */
const fromCli = (j: Json, bytesKey: string, seconds: number, note: string): Measure => ({ ...j, cliSeconds: j.seconds, bytes: num(j, bytesKey), seconds, note });

/**
 * Laptop B checks the desktop out cold and in again unchanged (so it keeps v0); laptop A checks it
 * out, applies the workload in place (as the VM would), checks in; B checks out again (warm).
 */
async function measureCarryon(rig: CarryonRig, w: WorkloadName, seed: number, v1: string, dir: string): Promise<Record<string, Measure>> {
  const desk = `bench-${w}`;
  const homeA = join(dir, 'laptop-a');
  const homeB = join(dir, 'laptop-b');
  mkdirSync(homeA);
  mkdirSync(homeB);
  // Encryption off until the laptop CLI encrypts and escrows (a 'required' desktop refuses blocks with ESCROW_MISSING).
  await carryonServer(rig.data, 'desktop', 'create', desk, '--user', 'bench', '--image', 'golden', '--encryption', 'off');
  await carryon(homeA, 'login', rig.server.url, '--token', rig.token);
  await carryon(homeB, 'login', rig.server.url, '--token', rig.token);

  const coldB = await carryon(homeB, 'checkout', desk, '--to', join(homeB, 'disk.raw'));
  const idle = await carryon(homeB, 'checkin', desk);
  const coldA = await carryon(homeA, 'checkout', desk, '--to', join(homeA, 'disk.raw'));
  const diskA = str(coldA.json, 'disk');
  await WORKLOADS[w].apply(diskA, seed);
  const same = await run('cmp', ['-s', diskA, v1], { okCodes: [1] });
  if (same.code !== 0) throw new Error(`laptop A's disk after the ${w} workload differs from v1: the workload is not reproducible`);
  const ci = await carryon(homeA, 'checkin', desk);
  const warmB = await carryon(homeB, 'checkout', desk, '--to', join(homeB, 'disk.raw'));
  await run('cmp', [str(warmB.json, 'disk'), v1]);
  const r = {
    checkin: fromCli(ci.json, 'bytesSent', ci.seconds, 'bytesSent of `carryon checkin --json` (CLI wall time)'),
    coldCheckout: fromCli(coldB.json, 'bytesReceived', coldB.seconds, 'bytesReceived of a checkout into an empty home'),
    coldCheckoutA: fromCli(coldA.json, 'bytesReceived', coldA.seconds, 'the same, second laptop'),
    idleCheckin: fromCli(idle.json, 'bytesSent', idle.seconds, 'check-in with nothing changed'),
    warmCheckout: fromCli(warmB.json, 'bytesReceived', warmB.seconds, 'bytesReceived of a re-checkout on a home holding v0'),
  };
  log(`  carryon: checkin ${mb(r.checkin.bytes)} MB in ${secs(r.checkin.seconds)} s (${ci.json.blocksChanged} blocks changed, ${ci.json.blocksAsPatch ?? '?'} as patches, ${ci.json.blocksAsFrames ?? 0} as frames); ` +
    `warm re-checkout ${mb(r.warmCheckout.bytes)} MB in ${secs(r.warmCheckout.seconds)} s; cold checkout ${mb(r.coldCheckout.bytes)} MB in ${secs(r.coldCheckout.seconds)} s`);
  return r;
}

interface EncryptionCheckouts {
  plain: Measure[];
  encrypted: Measure[];
}

/**
 * Cold check-outs of v0 into an empty home, plain and encrypted at rest (AES-256-XTS disk, sealed cache),
 * `rounds` times each, the order alternating per round. Every round: new homes, new desktops, and an
 * untimed `sync` before each check-out (run() does it). The plain disk must equal v0 byte for byte, the
 * encrypted one must not (its file holds ciphertext; the e2e tests check what it decrypts to).
 */
async function measureEncryptedCheckouts(rig: CarryonRig, v0: string, rounds: number, dir: string): Promise<EncryptionCheckouts> {
  const out: EncryptionCheckouts = { plain: [], encrypted: [] };
  for (let r = 0; r < rounds; r++) {
    const order: ('plain' | 'encrypted')[] = r % 2 === 0 ? ['plain', 'encrypted'] : ['encrypted', 'plain'];
    for (const way of order) {
      const desk = `enc-${way}-${r}`;
      const home = join(dir, `home-${way}-${r}`);
      mkdirSync(home);
      // The policy decides (required is the default for new desktops): off for the plain way.
      await carryonServer(rig.data, 'desktop', 'create', desk, '--user', 'bench', '--image', 'golden', '--encryption', way === 'plain' ? 'off' : 'required');
      await carryon(home, 'login', rig.server.url, '--token', rig.token);
      const disk = join(home, 'disk.raw');
      const co = await carryon(home, 'checkout', desk, '--to', disk);
      const same = await run('cmp', ['-s', disk, v0], { okCodes: [1] });
      if ((same.code === 0) !== (way === 'plain')) throw new Error(`the ${way} check-out's disk ${same.code === 0 ? 'equals' : 'differs from'} v0`);
      out[way].push(fromCli(co.json, 'bytesReceived', co.seconds, `cold ${way} checkout into an empty home`));
      log(`  ${way} cold check-out, round ${r + 1}: ${mb(num(co.json, 'bytesReceived'))} MB in ${secs(co.seconds)} s`);
      rmSync(home, { recursive: true, force: true });
    }
  }
  return out;
}

/**
 * CPU seconds (user + system) of this process's children that have ended, from /proc/self/stat
 * (cutime + cstime): the difference around one command is that command's CPU time, whatever else
 * runs on the machine. Wall times on a shared machine vary with its load; CPU seconds much less.
 */
function childCpuSeconds(): number {
  const f = readFileSync('/proc/self/stat', 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[13]) + Number(rest[14])) / 100; // fields 16 and 17, in clock ticks (USER_HZ 100)
}

/** CPU seconds (user + system) a running process has used so far. */
function processCpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100; // fields 14 and 15
}

/** One run of the cold check-out comparison: the three measured back to back, in the order given. */
interface ColdRun {
  run: number;
  order: string[];
  carryon: Measure;
  casyncExtract: Measure;
  zstdFloor: Measure;
  /** carryon seconds / casync extract seconds (target: below 1). */
  vsCasync: number;
  /** carryon seconds / zstd -d seconds (target: at most 2). */
  vsZstd: number;
  /** CPU seconds (user + system) of each: carryon's CLI and the server's share while it ran. */
  cpu: { carryonCli: number; carryonServer: number; casyncExtract: number; zstdFloor: number };
}

export interface ColdCheckouts {
  runs: ColdRun[];
  median: { carryon: number; casyncExtract: number; zstdFloor: number; vsCasync: number; vsZstd: number; cpuCarryon: number; cpuCasync: number; cpuZstd: number };
  target: { belowCasync: boolean; within2xZstd: boolean };
}

/**
 * The cold check-out against its peers, `runs` times: each run checks v0 out into a new empty home
 * (a new desktop, so the server really sends every block) and runs `casync extract` of v0's store and
 * `zstd -d` of v0 at -3 to a new file, in an order rotating per run; an untimed `sync` before each
 * (run() does it). The carryon disk and casync's output must equal v0 byte for byte. Ratios are per
 * run (peers from the same run); medians are of each column and of the per-run ratios.
 */
async function measureColdCheckouts(rig: CarryonRig, v0: string, casync: { store: string; index: string; bytes: number }, zst: string, runs: number, dir: string): Promise<ColdCheckouts> {
  const out: ColdRun[] = [];
  for (let r = 0; r < runs; r++) {
    const cpu: Record<string, number> = {}; // each step's own command only (not the cmp after it)
    const steps: Record<string, () => Promise<Measure>> = {
      carryon: async () => {
        const desk = `cold-${r}`;
        const home = join(dir, `home-${r}`);
        mkdirSync(home);
        await carryonServer(rig.data, 'desktop', 'create', desk, '--user', 'bench', '--image', 'golden', '--encryption', 'off');
        await carryon(home, 'login', rig.server.url, '--token', rig.token);
        const disk = join(home, 'disk.raw');
        const c0 = childCpuSeconds();
        const s0 = processCpuSeconds(rig.server.pid);
        const co = await carryon(home, 'checkout', desk, '--to', disk);
        cpu.carryon = childCpuSeconds() - c0;
        cpu.server = processCpuSeconds(rig.server.pid) - s0;
        await run('cmp', [disk, v0]);
        rmSync(home, { recursive: true, force: true });
        return fromCli(co.json, 'bytesReceived', co.seconds, 'bytesReceived of a checkout into an empty home (CLI wall time)');
      },
      casyncExtract: async () => {
        const to = join(dir, `casync-${r}.raw`);
        const c0 = childCpuSeconds();
        const ce = await run('casync', ['extract', `--store=${casync.store}`, casync.index, to]);
        cpu.casyncExtract = childCpuSeconds() - c0;
        await run('cmp', [v0, to]);
        rmSync(to, { force: true });
        return { bytes: casync.bytes, seconds: ce.seconds, note: 'whole store + index; time of casync extract to a new file' };
      },
      zstdFloor: async () => {
        const to = join(dir, `zstd-${r}.raw`);
        const c0 = childCpuSeconds();
        const zd = await run('zstd', ['-d', '-q', '-f', zst, '-o', to]);
        cpu.zstdFloor = childCpuSeconds() - c0;
        rmSync(to, { force: true });
        return { bytes: fileSize(zst), seconds: zd.seconds, note: 'size of zstd -3 of the whole image; time of zstd -d to a file' };
      },
    };
    const names = Object.keys(steps);
    const order = names.map((_, i) => names[(i + r) % names.length]!);
    const got: Record<string, Measure> = {};
    for (const name of order) got[name] = await steps[name]!();
    const c = got.carryon!;
    const one: ColdRun = { run: r + 1, order, carryon: c, casyncExtract: got.casyncExtract!, zstdFloor: got.zstdFloor!,
      vsCasync: c.seconds / got.casyncExtract!.seconds, vsZstd: c.seconds / got.zstdFloor!.seconds,
      cpu: { carryonCli: cpu.carryon!, carryonServer: cpu.server!, casyncExtract: cpu.casyncExtract!, zstdFloor: cpu.zstdFloor! } };
    out.push(one);
    log(`  run ${r + 1} (${order.join(', ')}): carryon ${secs(c.seconds)} s (${mb(c.bytes)} MB), casync extract ${secs(one.casyncExtract.seconds)} s, ` +
      `zstd -d ${secs(one.zstdFloor.seconds)} s: ${one.vsCasync.toFixed(2)}x casync, ${one.vsZstd.toFixed(2)}x zstd -d; ` +
      `CPU s: carryon ${secs(one.cpu.carryonCli)} + server ${secs(one.cpu.carryonServer)}, casync ${secs(one.cpu.casyncExtract)}, zstd ${secs(one.cpu.zstdFloor)} (load ${loadavg()[0]!.toFixed(1)})`);
  }
  const med = {
    carryon: median(out.map((x) => x.carryon.seconds)), casyncExtract: median(out.map((x) => x.casyncExtract.seconds)), zstdFloor: median(out.map((x) => x.zstdFloor.seconds)),
    vsCasync: median(out.map((x) => x.vsCasync)), vsZstd: median(out.map((x) => x.vsZstd)),
    cpuCarryon: median(out.map((x) => x.cpu.carryonCli + x.cpu.carryonServer)), cpuCasync: median(out.map((x) => x.cpu.casyncExtract)), cpuZstd: median(out.map((x) => x.cpu.zstdFloor)),
  };
  return { runs: out, median: med, target: { belowCasync: med.vsCasync < 1, within2xZstd: med.vsZstd <= 2 } };
}

function coldTable(c: ColdCheckouts): string {
  const rows = c.runs.map((x) => [String(x.run), secs(x.carryon.seconds), secs(x.casyncExtract.seconds), secs(x.zstdFloor.seconds), `${x.vsCasync.toFixed(2)}x`, `${x.vsZstd.toFixed(2)}x`,
    `${secs(x.cpu.carryonCli)}+${secs(x.cpu.carryonServer)}`, secs(x.cpu.casyncExtract), secs(x.cpu.zstdFloor)]);
  rows.push(['median', secs(c.median.carryon), secs(c.median.casyncExtract), secs(c.median.zstdFloor), `${c.median.vsCasync.toFixed(2)}x`, `${c.median.vsZstd.toFixed(2)}x`,
    secs(c.median.cpuCarryon), secs(c.median.cpuCasync), secs(c.median.cpuZstd)]);
  return `\nCold check-out, ${c.runs.length} runs (peers measured in the same run; ratios per run, then the medians of each column; CPU = user + system seconds, carryon's as CLI + server)\n` +
    table(['run', 'carryon s', 'casync extract s', 'zstd -d s', 'carryon / casync', 'carryon / zstd -d', 'CPU carryon', 'CPU casync', 'CPU zstd'], rows) +
    `\nbytes: carryon ${mb(c.runs[0]!.carryon.bytes)} MB, casync store + index ${mb(c.runs[0]!.casyncExtract.bytes)} MB, zstd -3 ${mb(c.runs[0]!.zstdFloor.bytes)} MB` +
    `\ntarget below casync extract (median ratio ${c.median.vsCasync.toFixed(2)}x): ${c.target.belowCasync ? 'MET' : 'NOT MET'}; ` +
    `within 2x zstd -d (median ratio ${c.median.vsZstd.toFixed(2)}x): ${c.target.within2xZstd ? 'MET' : 'NOT MET'}`;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

function encryptionTable(e: EncryptionCheckouts): string {
  const row = (way: 'plain' | 'encrypted'): string[] => {
    const t = e[way].map((m) => m.seconds);
    return [`carryon checkout, cold, ${way}`, mb(median(e[way].map((m) => m.bytes))), secs(median(t)), `${secs(Math.min(...t))}-${secs(Math.max(...t))}`, t.map((x) => secs(x)).join(', ')];
  };
  const ratioMedian = median(e.encrypted.map((m) => m.seconds)) / median(e.plain.map((m) => m.seconds));
  return `\nCold check-out, plain vs encrypted at rest (empty home each time, ${e.plain.length} rounds, alternating order)\n` +
    table(['check-out', 'MB', 'median s', 'min-max s', 'every run'], [row('plain'), row('encrypted')]) +
    `\nencrypted / plain (medians): ${ratioMedian.toFixed(2)}x; target at most 1.15x: ${ratioMedian <= 1.15 ? 'MET' : 'NOT MET'}`;
}

// ---------------------------------------------------------------------------------------------
// Report

function workloadTable(r: WorkloadResult): string {
  const ref = r.peers.rsyncZstd?.bytes;
  const ideal = r.ideal.bytes;
  const row = (name: string, m: Measure | undefined): string[] =>
    m ? [name, mb(m.bytes), m === r.ideal ? '-' : secs(m.seconds), ratio(m.bytes, ref), ratio(m.bytes, ideal)] : [name, '-', '-', '-', '-'];
  const c = r.carryon && !('error' in r.carryon) ? r.carryon : undefined;
  const rows = [
    row('ideal: changed 4 KiB pages, one zstd -3 stream', r.ideal),
    c ? row('carryon checkin', c.checkin) : ['carryon checkin', r.carryon && 'error' in r.carryon ? 'failed' : 'skipped', '-', '-', '-'],
    row('rsync --no-whole-file (no compression)', r.peers.rsync),
    row('rsync --no-whole-file -z (zstd)', r.peers.rsyncZstd),
    row('rdiff delta + zstd -3, + signature', r.peers.rdiff),
    row('rdiff delta + zstd -3, delta only', r.peers.rdiffDeltaOnly),
    row('casync make (new chunks + index)', r.peers.casync),
  ];
  return (
    `\n${r.name}: ${r.title}\n${r.changedPages} pages of 4 KiB differ (${mb(r.changedBytes)} MB)\n` +
    table(['check-in of v1 (v0 on the server)', 'MB', 's', 'vs rsync-zstd', 'vs ideal'], rows)
  );
}

function checkoutTable(base: Record<string, Measure>, results: WorkloadResult[]): string {
  const floor = base.zstdFloor!.bytes;
  const rows: string[][] = [];
  const row = (name: string, m: Measure | undefined, ideal?: number): string[] =>
    m ? [name, mb(m.bytes), secs(m.seconds), ratio(m.bytes, floor), ratio(m.bytes, ideal)] : [name, '-', '-', '-', '-'];
  const firstCarryon = results.map((r) => r.carryon).find((c): c is Record<string, Measure> => !!c && !('error' in c));
  rows.push(row('carryon checkout, cold (empty home)', firstCarryon?.coldCheckout));
  rows.push(row('casync extract (whole store + index)', base.casyncExtract));
  rows.push(row('zstd -d of the image at zstd -3 (floor)', base.zstdFloor));
  for (const r of results) {
    const c = r.carryon && !('error' in r.carryon) ? r.carryon : undefined;
    rows.push(row(`carryon re-checkout, warm, after ${r.name}`, c?.warmCheckout, r.ideal.bytes));
  }
  return '\n' + table(['check-out', 'MB', 's', 'vs zstd floor', 'vs ideal'], rows);
}

async function toolVersions(): Promise<Record<string, string>> {
  const first = toolVersion;
  return {
    rsync: await first('rsync', ['--version']),
    rdiff: await first('rdiff', ['--version']),
    casync: await first('casync', ['--version']),
    zstd: await first('zstd', ['--version']),
    mke2fs: (await run(requireTool('mke2fs', 'e2fsprogs'), ['-V'], { okCodes: [1] })).stderr.split('\n')[0]!.trim(),
  };
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  settleBeforeEachRun(true);
  const o = parseOptions(process.argv.slice(2));
  for (const [tool, pkg] of [['mke2fs', 'e2fsprogs'], ['debugfs', 'e2fsprogs'], ['rsync', 'rsync'], ['rdiff', 'rdiff'], ['casync', 'casync'], ['zstd', 'zstd'], ['cmp', 'diffutils']] as const) {
    requireTool(tool, pkg);
  }
  let carryonSkipped: string | undefined = o.carryon ? carryonMissing() : '--no-carryon';
  if (carryonSkipped && o.carryon) log(`carryon rows skipped: ${carryonSkipped}`);

  const started = Date.now();
  const work = mkdtempSync(join(tmpdir(), 'carryon-bench-'));
  let rig: CarryonRig | undefined;
  let failed = false;
  const results: WorkloadResult[] = [];
  const base: Record<string, Measure> = {};
  const report: Json = {};
  process.once('SIGINT', () => {
    // The exit hook in carryon-cli kills the server; the temp folder is ours to remove.
    if (!o.keep) rmSync(work, { recursive: true, force: true });
    process.exit(130);
  });
  try {
    log(`checkin-bench: ${mib(o.size)} ext4 image, ~${mib(o.payload)} of real files, workloads ${o.workloads.join(',')}; ${cpus().length} cores, node ${process.version}`);
    log(`temp folder ${work}`);

    // v0 and what does not depend on the workload
    const v0 = join(work, 'v0.raw');
    let t = Date.now();
    const img = await makeExt4Image({ out: v0, sizeBytes: o.size, payloadBytes: o.payload, seed: o.seed });
    const imageSeconds = (Date.now() - t) / 1000;
    log(`v0: ${img.files} files, ${mb(img.payloadBytes)} MB of content, built in ${secs(imageSeconds)} s`);
    inV0 = new Set((await listImage(v0)).map((e) => e.path));

    const zst = join(work, 'v0.raw.zst');
    const zc = await run('zstd', ['-3', '-q', '-f', v0, '-o', zst]);
    const zd = await run('zstd', ['-d', '-q', '-f', zst, '-o', join(work, 'v0.unzstd')]);
    rmSync(join(work, 'v0.unzstd'));
    // (kept for --checkouts: every run decompresses it again)
    base.zstdFloor = { bytes: fileSize(zst), seconds: zd.seconds, note: 'size of zstd -3 of the whole image; time of zstd -d to a file', compressSeconds: zc.seconds };
    log(`  zstd -3 of v0: ${mb(base.zstdFloor.bytes)} MB (compress ${secs(zc.seconds)} s, decompress ${secs(zd.seconds)} s)`);

    const store0 = join(work, 'store0');
    const idx0 = join(work, 'v0.caibx');
    const cm = await run('casync', ['make', `--store=${store0}`, '--compression=zstd', idx0, v0]);
    const chunks0 = treeFiles(store0);
    const storeBytes = [...chunks0.values()].reduce((a, b) => a + b, 0);
    const ce = await run('casync', ['extract', `--store=${store0}`, idx0, join(work, 'v0.extracted')]);
    await run('cmp', [v0, join(work, 'v0.extracted')]);
    rmSync(join(work, 'v0.extracted'));
    base.casyncMake = { bytes: storeBytes + fileSize(idx0), seconds: cm.seconds, note: 'casync make of v0 into an empty store', chunks: chunks0.size };
    base.casyncExtract = { bytes: storeBytes + fileSize(idx0), seconds: ce.seconds, note: 'whole store + index; time of casync extract to a new file' };
    log(`  casync make of v0: ${chunks0.size} chunks, ${mb(storeBytes)} MB in ${secs(cm.seconds)} s; extract ${secs(ce.seconds)} s`);

    const sig = join(work, 'v0.sig');
    const rs = await run('rdiff', ['-f', 'signature', v0, sig]);
    base.rdiffSignature = { bytes: fileSize(sig), seconds: rs.seconds, note: 'rdiff signature of v0 (default block and hash sizes)' };
    log(`  rdiff signature of v0: ${mb(base.rdiffSignature.bytes)} MB in ${secs(rs.seconds)} s`);

    if (!carryonSkipped) {
      try {
        rig = await startCarryon(work, v0, o.serverStore);
      } catch (e) {
        carryonSkipped = `carryon setup failed: ${e instanceof Error ? e.message : String(e)}`;
        log(`  ${carryonSkipped}`);
        failed = true;
      }
    }

    for (const w of o.workloads) {
      log(`\n== ${w}: ${WORKLOADS[w].title}`);
      const dir = join(work, w);
      mkdirSync(dir);
      const v1 = join(dir, 'v1.raw');
      await copySparse(v0, v1);
      t = Date.now();
      const change = await WORKLOADS[w].apply(v1, o.seed);
      log(`  applied in ${secs((Date.now() - t) / 1000)} s: ${JSON.stringify(change)}`);
      t = Date.now();
      const cmpRes = await compareImages(v0, v1);
      const ideal: Measure = { bytes: cmpRes.idealBytes, seconds: (Date.now() - t) / 1000, note: 'differing 4 KiB pages of v1 as one zstd -3 stream (time: finding and compressing them)' };
      log(`  ${cmpRes.changedPages} pages differ (${mb(cmpRes.changedPages * 4096)} MB); ideal ${mb(ideal.bytes)} MB`);
      const r: WorkloadResult = { name: w, title: WORKLOADS[w].title, change, changedPages: cmpRes.changedPages, changedBytes: cmpRes.changedPages * 4096, ideal, peers: {} };
      results.push(r);

      if (rig) {
        try {
          r.carryon = await measureCarryon(rig, w, o.seed, v1, dir);
        } catch (e) {
          let msg = e instanceof Error ? e.message : String(e);
          const gone = serverGone(rig.server);
          if (gone) msg += `\n  ${gone}`;
          r.carryon = { error: msg };
          failed = true;
          log(`  carryon FAILED: ${msg}`);
        }
      }

      const dst = join(dir, 'dst.raw');
      r.peers.rsync = await measureRsync(v0, v1, dst, false);
      log(`  rsync: ${mb(r.peers.rsync.bytes)} MB in ${secs(r.peers.rsync.seconds)} s`);
      r.peers.rsyncZstd = await measureRsync(v0, v1, dst, true);
      log(`  rsync -z zstd: ${mb(r.peers.rsyncZstd.bytes)} MB in ${secs(r.peers.rsyncZstd.seconds)} s`);
      const rd = await measureRdiff(sig, rs.seconds, v1, dir);
      r.peers.rdiff = rd.withSig;
      r.peers.rdiffDeltaOnly = rd.deltaOnly;
      log(`  rdiff + zstd: ${mb(rd.deltaOnly.bytes)} MB delta + ${mb(base.rdiffSignature.bytes)} MB signature, ${secs(rd.withSig.seconds)} s with signing`);
      r.peers.casync = await measureCasync(store0, chunks0, v1, dir);
      log(`  casync make: ${mb(r.peers.casync.bytes)} MB (${r.peers.casync.newChunks} new chunks) in ${secs(r.peers.casync.seconds)} s`);
      if (!o.keep) rmSync(dir, { recursive: true, force: true });
    }

    let encryption: EncryptionCheckouts | undefined;
    if (rig && o.encryption > 0) {
      log(`\n== cold check-outs, plain and encrypted at rest, ${o.encryption} rounds`);
      process.env.CARRYON_PASSPHRASE ??= 'checkin-bench passphrase';
      process.env.CARRYON_KDF_LOG_N ??= '12'; // scrypt once per command; 2^17 would add ~1 s to every encrypted run
      const dir = join(work, 'encryption');
      mkdirSync(dir);
      try {
        encryption = await measureEncryptedCheckouts(rig, v0, o.encryption, dir);
      } catch (e) {
        failed = true;
        log(`  FAILED: ${e instanceof Error ? e.message : String(e)}`);
      }
    }

    let cold: ColdCheckouts | undefined;
    if (rig && o.checkouts > 0) {
      log(`\n== cold check-outs against casync extract and zstd -d, ${o.checkouts} runs (server store: ${o.serverStore})`);
      const dir = join(work, 'cold');
      mkdirSync(dir);
      try {
        cold = await measureColdCheckouts(rig, v0, { store: store0, index: idx0, bytes: base.casyncExtract.bytes }, zst, o.checkouts, dir);
      } catch (e) {
        failed = true;
        log(`  FAILED: ${e instanceof Error ? e.message : String(e)}`);
      }
    }

    if (rig) {
      const st = await carryonServer(rig.data, 'status');
      report.serverStatus = st.json;
    }

    console.log(`\nResults (MB = 10^6 bytes; times are wall seconds on ${cpus().length} cores, warm page cache)`);
    for (const r of results) console.log(workloadTable(r));
    if (results.length) console.log(checkoutTable(base, results));
    if (encryption) console.log(encryptionTable(encryption));
    if (cold) console.log(coldTable(cold));
    if (carryonSkipped) console.log(`\ncarryon rows: ${carryonSkipped}`);
    console.log(`\nrdiff rows: "+ signature" adds the ${mb(base.rdiffSignature.bytes)} MB signature of v0 that the server would send first; "delta only" assumes the laptop kept it.`);
    console.log(`total bench time ${secs((Date.now() - started) / 1000)} s`);

    Object.assign(report, {
      when: new Date().toISOString(),
      machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version },
      tools: await toolVersions(),
      options: { size: o.size, payload: o.payload, workloads: o.workloads, seed: o.seed, checkouts: o.checkouts, serverStore: o.serverStore, carryon: carryonSkipped ? `skipped: ${carryonSkipped}` : true },
      image: { size: o.size, files: img.files, payloadBytes: img.payloadBytes, buildSeconds: imageSeconds },
      carryonPublish: rig?.publish,
      baselines: base,
      workloads: results,
      encryptionCheckouts: encryption,
      coldCheckouts: cold,
      totalSeconds: (Date.now() - started) / 1000,
    });
    if (o.out) {
      writeFileSync(o.out, JSON.stringify(report, null, 2) + '\n');
      console.log(`results written to ${o.out}`);
    }
  } finally {
    if (rig) await rig.server.stop();
    if (o.keep) console.log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`\ncheckin-bench failed: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  },
);
