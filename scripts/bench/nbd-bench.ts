// The NBD benchmark: how fast `carryon serve` exports a checked-out disk next to the NBD servers people
// would otherwise run on the same file (nbdkit's file plugin, qemu-nbd), and how long a check-in takes
// when the dirty map says what changed against the full scan it falls back to when the disk was
// written outside `carryon serve`, repeated and compared per run across sizes (issue 13 item 4: the full
// scan of the 8 GiB sparse disk within 2x of the 1 GiB one's; JSON `checkinScaling`). All tools run as
// processes on this machine, over Unix sockets.
// See README.md beside this file for what each number means.
//
// Usage: node dist/scripts/bench/nbd-bench.js [--size 1G] [--checkin-sizes 1G,8G] [--repeat 3]
//        [--parts export,checkin,encryption] [--connections 1,4] [--warmup 1] [--writes 160] [--flush] [--cpu-prof DIR] [--out results.json]
//        [--keep] [--seed N]

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { carryon, carryonMissing, carryonServer, CLIENT_BIN, num, serverGone, startServer, str, type Json, type RunningServer } from '../lib/carryon-cli.js';
import { mb, mib, parseSize, ratio, secs, table } from '../lib/format.js';
import { copySparse, requireTool, run, settleBeforeEachRun, showCommand, type RunResult, toolVersion } from '../lib/proc.js';
import { mulberry32, randomBytesSeeded } from '../lib/prng.js';
import { readArgs } from '../lib/args.js';
import { cipherBench, cipherMedian, randomWriteBench, type CipherBenchRow } from '../lib/xts-alternatives.js';

// ---------------------------------------------------------------------------------------------
// Options

type Part = 'export' | 'checkin' | 'encryption';
const PARTS: Part[] = ['export', 'checkin', 'encryption'];

interface Options {
  size: number;
  checkinSizes: number[];
  repeat: number;
  parts: Part[];
  writes: number;
  flush: boolean;
  /**
   * nbdcopy --connections=N --threads=N, one export measurement per N (0: nbdcopy's defaults, multi-conn up
   * to min(4, cores)). QEMU uses one connection per disk.
   */
  connections: number[];
  /** Write V8 CPU profiles of the encryption part's serve processes into this folder. */
  cpuProf?: string;
  /** Export rounds run before the counted ones (first connection count only), reported apart. */
  warmup: number;
  /** Also serve a second check-out with CARRYON_NBD_DATA=js (the JavaScript data path) in the same rounds. */
  jsPath: boolean;
  out?: string;
  keep: boolean;
  seed: number;
}

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
/** carryon's block size: each scattered write covers exactly one block. */
const WRITE_BYTES = 64 * 1024;
/** qemu-img bench: 4 KiB requests, 32 in flight, sequential from offset 0. */
const QEMU_BENCH_COUNT = 50_000;
/** Data extents of the larger check-in images, one at each GiB boundary past the base image. */
const EXTRA_EXTENT = 64 * MiB;

const USAGE = `usage: nbd-bench.js [--size 1G] [--checkin-sizes 1G,8G] [--repeat 3] [--parts export,checkin,encryption] [--writes 160] [--flush] [--connections 1,4] [--warmup 1] [--cpu-prof DIR] [--out FILE] [--keep] [--seed N] [--js-path]
  --size           the random image of the export measurements, also the data of every check-in image (default 1G)
  --checkin-sizes  apparent sizes of the check-in images, comma-separated (default 1G,8G)
  --repeat         runs of each throughput measurement and of the check-in part (default 3): best and median are reported
  --parts          export (throughput), checkin (dirty map vs full scan), encryption (the same disk served
                   encrypted at rest and plain, same clients, and the same check-in both ways); default all
  --writes         scattered 64 KiB writes of the check-in change (default 160, i.e. 10 MiB)
  --connections N  nbdcopy --connections=N --threads=N; a comma list measures each (e.g. 1,4; default 1,4;
                   0: nbdcopy's own defaults). QEMU uses 1 connection per disk
  --warmup N       export rounds before the counted ones, at the first --connections value (default 1): printed
                   and in the JSON (warmupRounds), left out of the medians
  --cpu-prof DIR   node --cpu-prof for the encryption part's two serve processes, profiles into DIR
  --flush          nbdcopy --flush on the write runs (the servers then fsync: disk speed, not server speed)
  --out            also write all results as JSON to FILE
  --keep           keep the temp folder (images, server store, laptop home)
  --seed           seed of the image bytes, the write offsets and their data (default 7)
  --js-path        export part: also a carryon serve with CARRYON_NBD_DATA=js (no native data path), same rounds`;

function parseOptions(argv: string[]): Options {
  const o: Options = { size: GiB, checkinSizes: [GiB, 8 * GiB], repeat: 3, parts: [...PARTS], writes: 160, flush: false, connections: [1, 4], warmup: 1, jsPath: false, keep: false, seed: 7 };
  for (const { flag: a, value } of readArgs(argv, USAGE)) {
    if (a === '--size') o.size = parseSize(value());
    else if (a === '--checkin-sizes') o.checkinSizes = value().split(',').map(parseSize);
    else if (a === '--repeat') o.repeat = Number(value());
    else if (a === '--parts') {
      o.parts = value().split(',').map((p) => {
        if (!PARTS.includes(p as Part)) throw new Error(`unknown part "${p}" (${PARTS.join(', ')})`);
        return p as Part;
      });
    } else if (a === '--writes') o.writes = Number(value());
    else if (a === '--flush') o.flush = true;
    else if (a === '--connections') o.connections = value().split(',').map(Number);
    else if (a === '--warmup') o.warmup = Number(value());
    else if (a === '--cpu-prof') o.cpuProf = value();
    else if (a === '--out') o.out = value();
    else if (a === '--keep') o.keep = true;
    else if (a === '--js-path') o.jsPath = true;
    else if (a === '--seed') o.seed = Number(value());
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (!Number.isInteger(o.repeat) || o.repeat < 1) throw new Error(`--repeat must be a positive integer\n${USAGE}`);
  if (!Number.isInteger(o.writes) || o.writes < 1) throw new Error(`--writes must be a positive integer\n${USAGE}`);
  if (!Number.isInteger(o.warmup) || o.warmup < 0) throw new Error(`--warmup must be 0 or more\n${USAGE}`);
  if (o.connections.length === 0 || o.connections.some((c) => !Number.isInteger(c) || c < 0 || c > 16)) throw new Error(`--connections takes 0-16, comma-separated\n${USAGE}`);
  if (o.size % WRITE_BYTES !== 0) throw new Error(`--size must be a multiple of 64 KiB\n${USAGE}`);
  for (const s of o.checkinSizes) {
    if (s % WRITE_BYTES !== 0 || s / WRITE_BYTES < o.writes) throw new Error(`check-in size ${s} must be a multiple of 64 KiB and hold ${o.writes} writes\n${USAGE}`);
  }
  return o;
}

const log = (line: string): void => console.log(line);
const label = (bytes: number): string => (bytes % GiB === 0 ? `${bytes / GiB}g` : `${Math.round(bytes / MiB)}m`);
const human = (bytes: number): string => (bytes % GiB === 0 ? `${bytes / GiB} GiB` : mib(bytes));

// ---------------------------------------------------------------------------------------------
// Files: incompressible, seeded, fully allocated (so no server can skip holes)

/** Seeded random bytes into `file` at `offset` (AES-CTR keystream, 16 MiB per stream). */
function writeRandom(file: string, offset: number, length: number, seed: number, stream: number): void {
  const fd = openSync(file, existsSync(file) ? 'r+' : 'w');
  try {
    const chunk = 16 * MiB;
    for (let done = 0, i = 0; done < length; done += chunk, i++) {
      const n = Math.min(chunk, length - done);
      const buf = randomBytesSeeded(seed, stream + i, n);
      for (let w = 0; w < n; ) w += writeSync(fd, buf, w, n - w, offset + done + w);
    }
  } finally {
    closeSync(fd);
  }
}

/** Streams of randomBytesSeeded (one per 16 MiB): each use of random bytes has its own range. */
const STREAM = { image: 0x100000, writeSource: 0x200000, extra: 0x300000, change: 0x400000 } as const;

/**
 * A check-in image of `size` bytes: the base image's bytes at offset 0 (sparse copy, cut to `size` when
 * smaller), then a hole, with one 64 MiB extent of new random data at every GiB boundary past the base.
 * 8 GiB on a 1 GiB base: 1 GiB + 7 x 64 MiB = 1.44 GiB of data spread over the disk, the rest holes.
 */
async function makeCheckinImage(base: string, baseSize: number, size: number, out: string, seed: number): Promise<{ dataBytes: number; extents: number[] }> {
  await copySparse(base, out);
  truncateSync(out, size);
  const extents: number[] = [];
  for (let at = Math.ceil(baseSize / GiB) * GiB; at < size; at += GiB) {
    const n = Math.min(EXTRA_EXTENT, size - at);
    writeRandom(out, at, n, seed, STREAM.extra + extents.length * 16);
    extents.push(at);
  }
  return { dataBytes: Math.min(baseSize, size) + extents.reduce((sum, at) => sum + Math.min(EXTRA_EXTENT, size - at), 0), extents };
}

async function warmCache(file: string): Promise<number> {
  const r = await run('sh', ['-c', 'cat -- "$1" > /dev/null', 'sh', file]);
  return r.seconds;
}

// ---------------------------------------------------------------------------------------------
// Long-running NBD servers: started here, stopped here, killed on any exit

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

interface Daemon {
  name: string;
  command: string;
  uri: string;
  pid: number;
  tail(): string;
  exitedWith(): string | undefined;
  /** SIGTERM, wait for the exit (SIGKILL after 20 s). */
  stop(): Promise<{ how: string; seconds: number }>;
  /** Lines it printed on stdout (carryon serve --json events). */
  lines: string[];
}

function spawnDaemon(name: string, cmd: string, args: string[], uri: string, env?: NodeJS.ProcessEnv): { daemon: Daemon; exited: Promise<string>; child: ChildProcess } {
  const child = spawn(cmd, args, { env: env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const lines: string[] = [];
  const errLines: string[] = [];
  const collect = (into: string[]) => {
    let partial = '';
    return (b: Buffer): void => {
      partial += b.toString('utf8');
      const parts = partial.split('\n');
      partial = parts.pop()!;
      into.push(...parts.filter(Boolean));
      if (into.length > 500) into.splice(0, into.length - 500);
    };
  };
  child.stdout!.on('data', collect(lines));
  child.stderr!.on('data', collect(errLines));
  let ended: string | undefined;
  const exited = new Promise<string>((resolveExit) => {
    child.on('exit', (code, signal) => {
      children.delete(child);
      ended = signal ?? String(code);
      resolveExit(ended);
    });
    child.on('error', (e) => {
      children.delete(child);
      ended = `error: ${e.message}`;
      resolveExit(ended);
    });
  });
  const daemon: Daemon = {
    name,
    command: showCommand(cmd, args),
    uri,
    pid: child.pid ?? -1,
    lines,
    tail: () => [...lines.slice(-10), ...errLines.slice(-10)].join('\n'),
    exitedWith: () => ended,
    stop: async () => {
      const t0 = process.hrtime.bigint();
      if (ended === undefined) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const how = await exited;
      clearTimeout(timer);
      return { how, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
    },
  };
  return { daemon, exited, child };
}

/** Poll `nbdinfo --json URI` until the server answers; returns its description of the export. */
async function waitForNbd(d: Daemon, timeoutMs = 30_000): Promise<Json> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const gone = d.exitedWith();
    if (gone !== undefined) throw new Error(`${d.name} exited (${gone}) before serving:\n${d.tail()}`);
    try {
      const r = await run('nbdinfo', ['--json', d.uri]);
      const info = JSON.parse(r.stdout) as { exports?: Json[] };
      return info.exports?.[0] ?? {};
    } catch (e) {
      if (Date.now() > until) throw new Error(`${d.name} did not answer on ${d.uri} within ${timeoutMs / 1000} s: ${e instanceof Error ? e.message : String(e)}\n${d.tail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** `carryon serve DESK --socket SOCK --json [extra]`; resolves on its "listening" event. */
async function startCarryonServe(home: string, desk: string, socket: string, extra: string[] = [], nodeArgs: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<{ daemon: Daemon; listening: Json }> {
  const uri = `nbd+unix:///${desk}?socket=${socket}`;
  const { daemon, exited } = spawnDaemon('carryon serve', process.execPath, [...nodeArgs, CLIENT_BIN, 'serve', desk, '--socket', socket, '--json', ...extra], uri, { ...process.env, CARRYON_HOME: home, ...env });
  const until = Date.now() + 60_000;
  for (;;) {
    const line = daemon.lines.find((l) => l.includes('"listening"'));
    if (line) {
      const listening = JSON.parse(line) as Json;
      if (listening.uri !== uri) log(`  note: carryon serve reports ${String(listening.uri)}, using ${uri}`);
      return { daemon, listening };
    }
    if (daemon.exitedWith() !== undefined || Date.now() > until) {
      await daemon.stop();
      throw new Error(`carryon serve did not report "listening" (${daemon.exitedWith() ?? 'timeout'}):\n${daemon.tail()}`);
    }
    await Promise.race([exited, new Promise((r) => setTimeout(r, 50))]);
  }
}

/** Stop carryon serve with SIGTERM and check it closed cleanly (exit 0, a "stopped" event). */
async function stopCarryonServe(d: Daemon): Promise<{ seconds: number; stopped?: Json }> {
  const { how, seconds } = await d.stop();
  if (how !== '0') throw new Error(`carryon serve exited with ${how} on SIGTERM:\n${d.tail()}`);
  const line = d.lines.find((l) => l.includes('"stopped"'));
  return { seconds, stopped: line ? (JSON.parse(line) as Json) : undefined };
}

// ---------------------------------------------------------------------------------------------
// Part 1: export throughput of the same file through three servers

// 'carryon-js' (--js-path): a second carryon serve with CARRYON_NBD_DATA=js, every request on its JavaScript
// thread (what serve does without native/nbd-data), on its own check-out, in the same rounds.
type ServerName = 'carryon' | 'nbdkit' | 'qemu-nbd' | 'carryon-js';
/** The servers the tables show (carryon-js is in the log lines and the JSON). */
const MAIN_SERVERS: ServerName[] = ['carryon', 'nbdkit', 'qemu-nbd'];
let SERVERS: ServerName[] = MAIN_SERVERS;
const SERVER_TITLE: Record<ServerName, string> = { carryon: 'carryon serve', nbdkit: 'nbdkit file', 'qemu-nbd': 'qemu-nbd', 'carryon-js': 'carryon serve (CARRYON_NBD_DATA=js)' };

interface Runs {
  mbPerSec: number[];
  seconds: number[];
  best: number;
  median: number;
}

interface ExportResult {
  server: ServerName;
  command: string;
  nbdinfo: Json;
  read: Runs;
  write: Runs;
  /** 4 KiB requests, 32 in flight: requests per second. */
  qemuImgBench?: { readIops: number; writeIops: number; readSeconds: number; writeSeconds: number } | { error: string };
  stopSeconds?: number;
  stopped?: Json;
}

function summarize(bytes: number, seconds: number[]): Runs {
  const rates = seconds.map((s) => bytes / 1e6 / s);
  const sorted = [...rates].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { mbPerSec: rates, seconds, best: sorted[sorted.length - 1]!, median };
}

const NBDCOPY_READ = (uri: string): string[] => ['--no-extents', ...conn(), uri, 'null:'];
let flushWrites = false;
let connections = 0;
// nbdcopy opens min(--connections, --threads) connections, and --threads defaults to the cores (2 here).
const conn = (): string[] => (connections > 0 ? [`--connections=${connections}`, `--threads=${connections}`] : []);
const NBDCOPY_WRITE = (src: string, uri: string): string[] => ['--no-extents', ...conn(), ...(flushWrites ? ['--flush'] : []), src, uri];
const QEMU_BENCH = (uri: string, write: boolean): string[] => ['bench', ...(write ? ['-w'] : []), '-f', 'raw', '-c', String(QEMU_BENCH_COUNT), '-s', '4096', '-d', '32', '-t', 'none', uri];

async function qemuImgBench(uri: string): Promise<ExportResult['qemuImgBench']> {
  try {
    const seconds = async (write: boolean): Promise<number> => {
      const r = await run('qemu-img', QEMU_BENCH(uri, write));
      const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout + r.stderr);
      if (!m) throw new Error(`qemu-img bench printed no time:\n${r.stdout}${r.stderr}`);
      return Number(m[1]);
    };
    const readSeconds = await seconds(false);
    const writeSeconds = await seconds(true);
    return { readIops: QEMU_BENCH_COUNT / readSeconds, writeIops: QEMU_BENCH_COUNT / writeSeconds, readSeconds, writeSeconds };
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
  }
}

/** One nbdcopy run against one server: its time, throughput and the server's CPU (all its threads). */
interface CopyRun {
  seconds: number;
  mbPerSec: number;
  /** User + system CPU seconds of the server process during the run. */
  cpuSeconds: number;
}

/** One round of the interleaved export measurement: every server read, then every server written. */
interface ExportRound {
  round: number;
  /** The order the servers ran in, in this round (rotated each round). */
  order: ServerName[];
  read: Partial<Record<ServerName, CopyRun>>;
  write: Partial<Record<ServerName, CopyRun>>;
  /** carryon's throughput over each peer's in this round (peer seconds / carryon seconds). */
  ratios: { read: Partial<Record<'nbdkit' | 'qemu-nbd', number>>; write: Partial<Record<'nbdkit' | 'qemu-nbd', number>> };
}

/** The export measured at one connection count: every round, and per server the summary the table prints. */
interface ExportRuns {
  connections: number;
  nbdcopyRead: string;
  nbdcopyWrite: string;
  /**
   * Rounds run first and left out of the medians (--warmup): a fresh carryon serve compiles its hot
   * paths and, on its first writes, makes every block's dirty mark durable (one journal fdatasync per
   * batch of requests); the steady state is what a VM that runs for hours sees.
   */
  warmupRounds: ExportRound[];
  rounds: ExportRound[];
  /** Median of the per-round ratios (the issue's target: at least 0.8 against nbdkit, above 1 against qemu-nbd). */
  medianRatios: ExportRound['ratios'];
  rows: ExportResult[];
}

/**
 * The three servers up at once (carryon on its checked-out disk, the peers on an identical copy), each
 * round reading with nbdcopy from each in turn, then writing to each in turn; the order rotates every
 * round, so load that drifts over a round falls on each server in each position. The per-round ratio
 * compares runs a few seconds apart, which is what makes them comparable on a shared machine.
 */
async function measureExportInterleaved(servers: Record<ServerName, { daemon: Daemon; info: Json }>, size: number, writeSource: string, repeat: number, conns: number, warmup: number): Promise<ExportRuns> {
  connections = conns;
  const names = SERVERS.filter((s) => servers[s]);
  const rounds: ExportRound[] = [];
  const timed = async (s: ServerName, args: string[]): Promise<CopyRun> => {
    const pid = servers[s].daemon.pid;
    const c0 = cpuSeconds(pid);
    const r = await run('nbdcopy', args);
    return { seconds: r.seconds, mbPerSec: size / 1e6 / r.seconds, cpuSeconds: cpuSeconds(pid) - c0 };
  };
  const warmupRounds: ExportRound[] = [];
  for (let r = -warmup; r < repeat; r++) {
    const k = ((r % names.length) + names.length) % names.length;
    const order = [...names.slice(k), ...names.slice(0, k)];
    const round: ExportRound = { round: r + 1, order, read: {}, write: {}, ratios: { read: {}, write: {} } };
    for (const s of order) round.read[s] = await timed(s, NBDCOPY_READ(servers[s].daemon.uri));
    for (const s of order) round.write[s] = await timed(s, NBDCOPY_WRITE(writeSource, servers[s].daemon.uri));
    for (const op of ['read', 'write'] as const) {
      const c = round[op].carryon;
      for (const peer of ['nbdkit', 'qemu-nbd'] as const) {
        const p = round[op][peer];
        if (c && p) round.ratios[op][peer] = p.seconds / c.seconds;
      }
    }
    const cell = (op: 'read' | 'write'): string => names.map((s) => `${s} ${round[op][s]!.mbPerSec.toFixed(0)} MB/s (CPU ${round[op][s]!.cpuSeconds.toFixed(2)} s)`).join(', ') +
      `; carryon / nbdkit ${round.ratios[op].nbdkit?.toFixed(2) ?? '-'}x, / qemu-nbd ${round.ratios[op]['qemu-nbd']?.toFixed(2) ?? '-'}x`;
    const what = r < 0 ? `warm-up ${r + warmup + 1}` : `run ${r + 1}`;
    log(`    ${conns || 'default'} conn, ${what}: read ${cell('read')}`);
    log(`    ${conns || 'default'} conn, ${what}: write ${cell('write')}`);
    (r < 0 ? warmupRounds : rounds).push(round);
    for (const s of names) {
      const gone = servers[s].daemon.exitedWith();
      if (gone !== undefined) throw new Error(`${servers[s].daemon.name} exited (${gone}) during the measurements:\n${servers[s].daemon.tail()}`);
    }
  }
  const medianRatios: ExportRound['ratios'] = { read: {}, write: {} };
  for (const op of ['read', 'write'] as const) {
    for (const peer of ['nbdkit', 'qemu-nbd'] as const) {
      const xs = rounds.map((x) => x.ratios[op][peer]).filter((x): x is number => x !== undefined);
      if (xs.length) medianRatios[op][peer] = medianOf(xs);
    }
  }
  const rows: ExportResult[] = [];
  for (const s of names) {
    rows.push({
      server: s, command: servers[s].daemon.command, nbdinfo: servers[s].info,
      read: summarize(size, rounds.map((x) => x.read[s]!.seconds)), write: summarize(size, rounds.map((x) => x.write[s]!.seconds)),
    });
  }
  return { connections: conns, nbdcopyRead: showCommand('nbdcopy', NBDCOPY_READ('URI')), nbdcopyWrite: showCommand('nbdcopy', NBDCOPY_WRITE('FILE', 'URI')), warmupRounds, rounds, medianRatios, rows };
}

function exportRunsTable(e: ExportRuns, size: number): string {
  const body = e.rounds.map((r) => [
    String(r.round), ...(['read', 'write'] as const).flatMap((op) => [
      ...MAIN_SERVERS.map((s) => (r[op][s] ? r[op][s]!.mbPerSec.toFixed(0) : '-')),
      r.ratios[op].nbdkit !== undefined ? `${r.ratios[op].nbdkit!.toFixed(2)}x` : '-',
      r.ratios[op]['qemu-nbd'] !== undefined ? `${r.ratios[op]['qemu-nbd']!.toFixed(2)}x` : '-',
    ]),
  ]);
  const m = e.medianRatios;
  const fx = (x: number | undefined): string => (x === undefined ? '-' : `${x.toFixed(2)}x`);
  body.push(['median', '', '', '', fx(m.read.nbdkit), fx(m.read['qemu-nbd']), '', '', '', fx(m.write.nbdkit), fx(m.write['qemu-nbd'])]);
  return `\nExport, ${e.connections || 'nbdcopy\'s default'} connection(s): every run (MB/s, ${human(size)} each), carryon / peer per run\n` +
    table(['run', 'read carryon', 'read nbdkit', 'read qemu-nbd', 'read c/nbdkit', 'read c/qemu-nbd', 'write carryon', 'write nbdkit', 'write qemu-nbd', 'write c/nbdkit', 'write c/qemu-nbd'], body);
}

// ---------------------------------------------------------------------------------------------
// Part 1b: the same export as a plain file (`carryon serve --file DIR`, nbdfuse), against NBD itself

interface FuseResult {
  command: string;
  file: string;
  /** One stream, 1 MiB requests: dd on the file, nbdcopy with one connection and one request over NBD. */
  seqRead: { file: Runs; nbd: Runs };
  seqWrite: { file: Runs; nbd: Runs };
  /** nbdcopy's defaults (parallel requests) reading the file, and reading the NBD URI. */
  parRead: { file: Runs; nbd: Runs };
}

const NBD_SEQ = ['--no-extents', '--connections=1', '--requests=1', '--request-size=1048576'];
const DD_READ = (file: string): string[] => [`if=${file}`, 'of=/dev/null', 'bs=1M', 'status=none'];
const DD_WRITE = (src: string, file: string): string[] => [`if=${src}`, `of=${file}`, 'bs=1M', 'conv=notrunc,nocreat', 'status=none'];

async function measureFuse(home: string, desk: string, socket: string, mountDir: string, size: number, writeSource: string, repeat: number): Promise<FuseResult> {
  requireTool('nbdfuse', 'libnbd-bin');
  requireTool('fusermount3', 'fuse3');
  await warmCache(writeSource);
  const { daemon, listening } = await startCarryonServe(home, desk, socket, ['--file', mountDir]);
  try {
    const file = str(listening, 'file');
    log(`  carryon serve --file: ${daemon.command}\n    file ${file}`);
    const times = async (cmd: string, args: string[]): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < repeat; i++) out.push((await run(cmd, args)).seconds);
      return out;
    };
    const pair = async (what: string, file_: [string, string[]], nbd: [string, string[]]): Promise<{ file: Runs; nbd: Runs }> => {
      const f = summarize(size, await times(...file_));
      const n = summarize(size, await times(...nbd));
      log(`    ${what}: file ${f.mbPerSec.map((r) => r.toFixed(0)).join(', ')} MB/s; NBD ${n.mbPerSec.map((r) => r.toFixed(0)).join(', ')} MB/s; file / NBD (median) ${ratio(f.median, n.median)}`);
      return { file: f, nbd: n };
    };
    const seqRead = await pair('sequential read, 1 MiB, one stream', ['dd', DD_READ(file)], ['nbdcopy', [...NBD_SEQ, daemon.uri, 'null:']]);
    const seqWrite = await pair('sequential write, 1 MiB, one stream', ['dd', DD_WRITE(writeSource, file)], ['nbdcopy', [...NBD_SEQ, writeSource, daemon.uri]]);
    const parRead = await pair('read, nbdcopy defaults', ['nbdcopy', ['--no-extents', file, 'null:']], ['nbdcopy', NBDCOPY_READ(daemon.uri)]);
    const gone = daemon.exitedWith();
    if (gone !== undefined) throw new Error(`carryon serve --file exited (${gone}) during the measurements:\n${daemon.tail()}`);
    await stopCarryonServe(daemon);
    return { command: daemon.command, file, seqRead, seqWrite, parRead };
  } finally {
    if (daemon.exitedWith() === undefined) await daemon.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Part 2: check-in after the same scattered change, dirty map vs full scan

interface Change {
  offsets: number[];
  /** qemu-io arguments that write the change (one -c per extent, data from files). */
  qemuIoCommands: string[];
}

/** `writes` distinct 64 KiB-aligned offsets spread over the disk (seeded), and the data files of one round. */
function makeChange(dir: string, size: number, writes: number, seed: number, round: number, offsets?: number[]): Change {
  if (!offsets) {
    const rng = mulberry32(seed * 1000 + Math.round(size / MiB));
    const blocks = size / WRITE_BYTES;
    const picked = new Set<number>();
    while (picked.size < writes) picked.add(Math.floor(rng() * blocks));
    offsets = [...picked].sort((a, b) => a - b).map((b) => b * WRITE_BYTES);
  }
  mkdirSync(dir, { recursive: true });
  const qemuIoCommands: string[] = [];
  offsets.forEach((off, j) => {
    const f = join(dir, `w${j}.bin`);
    // New data per size and round: a block the server already holds would cost nothing to check in.
    writeFileSync(f, randomBytesSeeded(seed * 1e6 + size / WRITE_BYTES, STREAM.change + round * 0x10000 + j, WRITE_BYTES));
    qemuIoCommands.push('-c', `write -q -s ${f} ${off} ${WRITE_BYTES}`);
  });
  return { offsets, qemuIoCommands };
}

interface CheckinRow {
  size: number;
  dataBytes: number;
  changeBytes: number;
  /** The run with the median CLI seconds, per path (may be different runs); every run is in `runs`. */
  map?: CheckinMeasure;
  full?: CheckinMeasure;
  error?: string;
  runs: CheckinRun[];
}

/** One run of one size: both paths, in that order, with new data each run. */
interface CheckinRun {
  run: number;
  map?: CheckinMeasure;
  full?: CheckinMeasure;
  error?: string;
}

/**
 * Per run, the largest check-in size's full scan against the smallest's (the issue's "a full scan's time
 * follows the data": at most 2x from 1 GiB to the 8 GiB sparse disk with 1.54 GB of data), in the JSON
 * as `checkinScaling`.
 */
interface ScalingRun {
  run: number;
  /** CLI `seconds` of the full-scan check-in (the issue's figure), and its `scanSeconds`. */
  smallSeconds: number;
  bigSeconds: number;
  ratio: number;
  smallScanSeconds: number;
  bigScanSeconds: number;
  scanRatio: number;
  /** `scanBytesRead` and `scanHoles` of the big disk's full scan. */
  bigScanBytesRead: number;
  bigScanHoles: string | null;
}

interface Scaling {
  small: number;
  big: number;
  smallDataBytes: number;
  bigDataBytes: number;
  runs: ScalingRun[];
  medianRatio: number;
  medianScanRatio: number;
  target: number;
  met: boolean;
}

/** The scaling of the full scan from the smallest to the largest size, per run (runs where both sizes completed). */
function scalingOf(rows: CheckinRow[]): Scaling | null {
  if (rows.length < 2) return null;
  const sorted = [...rows].sort((a, b) => a.size - b.size);
  const small = sorted[0]!;
  const big = sorted[sorted.length - 1]!;
  const runs: ScalingRun[] = [];
  for (const b of big.runs) {
    const a = small.runs.find((r) => r.run === b.run);
    if (!a?.full || !b.full) continue;
    runs.push({
      run: b.run, smallSeconds: a.full.seconds, bigSeconds: b.full.seconds, ratio: b.full.seconds / a.full.seconds,
      smallScanSeconds: a.full.scanSeconds, bigScanSeconds: b.full.scanSeconds, scanRatio: b.full.scanSeconds / a.full.scanSeconds,
      bigScanBytesRead: b.full.scanBytesRead, bigScanHoles: (b.full.json.scanHoles as string | null | undefined) ?? null,
    });
  }
  if (!runs.length) return null;
  const medianRatio = medianOf(runs.map((r) => r.ratio));
  return { small: small.size, big: big.size, smallDataBytes: small.dataBytes, bigDataBytes: big.dataBytes, runs, medianRatio, medianScanRatio: medianOf(runs.map((r) => r.scanRatio)), target: 2, met: medianRatio <= 2 };
}

/** The measure with the median of `seconds` among the runs that have one (the lower middle for an even count). */
function medianRun(runs: CheckinRun[], path: 'map' | 'full'): CheckinMeasure | undefined {
  const ms = runs.map((r) => r[path]).filter((m): m is CheckinMeasure => m !== undefined).sort((a, b) => a.seconds - b.seconds);
  return ms[Math.floor((ms.length - 1) / 2)];
}

interface CheckinMeasure {
  /** The CLI's own `seconds` (check-in from start to commit). */
  seconds: number;
  /** Wall time of the `carryon checkin` process (adds Node start-up). */
  wallSeconds: number;
  scanSeconds: number;
  scanMode: string;
  scanBytesRead: number;
  fullScanReason: string | null;
  bytesSent: number;
  blocksChanged: number;
  /** How the change was written, and in how long. */
  writeVia: string;
  writeSeconds: number;
  checkoutSeconds: number;
  serveStopSeconds?: number;
  json: Json;
}

const fromCheckin = (j: Json, wall: number, extra: Pick<CheckinMeasure, 'writeVia' | 'writeSeconds' | 'checkoutSeconds' | 'serveStopSeconds'>): CheckinMeasure => ({
  seconds: num(j, 'seconds'),
  wallSeconds: wall,
  scanSeconds: num(j, 'scanSeconds'),
  scanMode: str(j, 'scanMode'),
  scanBytesRead: num(j, 'scanBytesRead'),
  fullScanReason: (j.fullScanReason as string | null | undefined) ?? null,
  bytesSent: num(j, 'bytesSent'),
  blocksChanged: num(j, 'blocksChanged'),
  ...extra,
  json: j,
});

async function measureCheckin(home: string, desk: string, diskPath: string, socket: string, size: number, dir: string, o: Options, runNo: number): Promise<{ map: CheckinMeasure; full: CheckinMeasure }> {
  // Round 2r through carryon serve; round 2r+1 (same offsets, new data, so nothing is already on the
  // server) with qemu-io on the file itself.
  const c0 = makeChange(join(dir, 'change-map'), size, o.writes, o.seed, 2 * runNo);
  const c1 = makeChange(join(dir, 'change-full'), size, o.writes, o.seed, 2 * runNo + 1, c0.offsets);

  const co = await carryon(home, 'checkout', desk, '--to', diskPath);
  const { daemon } = await startCarryonServe(home, desk, socket);
  let w: RunResult;
  try {
    w = await run('qemu-io', ['-f', 'raw', daemon.uri, ...c0.qemuIoCommands]);
  } catch (e) {
    await daemon.stop();
    throw e;
  }
  const st = await stopCarryonServe(daemon);
  const ci = await carryon(home, 'checkin', desk);
  const map = fromCheckin(ci.json, ci.seconds, { writeVia: `qemu-io -f raw ${daemon.uri} (${o.writes} x write -s FILE OFF 64k)`, writeSeconds: w.seconds, checkoutSeconds: co.seconds, serveStopSeconds: st.seconds });
  if (map.scanMode !== 'dirty-map') log(`  WARNING: check-in after carryon serve scanned in mode ${map.scanMode} (${map.fullScanReason ?? ''})`);
  log(`  dirty map: check-in ${secs(map.seconds)} s (wall ${secs(map.wallSeconds)} s), scan ${secs(map.scanSeconds)} s, mode ${map.scanMode}, read ${mb(map.scanBytesRead)} MB, sent ${mb(map.bytesSent)} MB, ${map.blocksChanged} blocks changed; ` +
    `qemu-io ${secs(map.writeSeconds)} s, serve stopped in ${secs(st.seconds)} s`);

  const co2 = await carryon(home, 'checkout', desk, '--to', diskPath);
  const w2 = await run('qemu-io', ['-f', 'raw', diskPath, ...c1.qemuIoCommands]);
  const ci2 = await carryon(home, 'checkin', desk);
  const full = fromCheckin(ci2.json, ci2.seconds, { writeVia: `qemu-io -f raw DISK (${o.writes} x write -s FILE OFF 64k)`, writeSeconds: w2.seconds, checkoutSeconds: co2.seconds });
  if (full.scanMode !== 'full') log(`  WARNING: check-in after qemu-io on the file scanned in mode ${full.scanMode}: the change outside serve was not noticed`);
  log(`  full scan: check-in ${secs(full.seconds)} s (wall ${secs(full.wallSeconds)} s), scan ${secs(full.scanSeconds)} s, mode ${full.scanMode}, holes ${String(full.json.scanHoles ?? '-')}, read ${mb(full.scanBytesRead)} MB, sent ${mb(full.bytesSent)} MB, ${full.blocksChanged} blocks changed` +
    (full.fullScanReason ? ` (${full.fullScanReason})` : ''));
  return { map, full };
}

// ---------------------------------------------------------------------------------------------
// Part 3: encryption at rest. The same image checked out twice, plain and encrypted (AES-256-XTS per
// 4 KiB sector), both served by carryon serve at once and measured by the same clients in alternating
// order; then the same kind of change checked in from each through the dirty map; then the cipher
// itself in this process, against the alternative ways to compute it (scripts/lib/xts-alternatives.ts).
// Throughput also runs a third export, encrypted with the JavaScript cipher (CARRYON_XTS=js: one
// createCipheriv per sector, what SectorCipher does without the native addon), in the same rounds.

type Way = 'plain' | 'encrypted' | 'encrypted-js';
/** The check-in part and the targets: plain against encrypted with the cipher this install uses. */
const WAYS: Way[] = ['plain', 'encrypted'];
/** The throughput part. */
const NBD_WAYS: Way[] = ['plain', 'encrypted', 'encrypted-js'];

interface WaySamples {
  readMbps: number[];
  writeMbps: number[];
  read4kIops: number[];
  write4kIops: number[];
  /** CPU seconds (user + system) of the serve process per GiB moved, per nbdcopy run. */
  readCpuPerGiB: number[];
  writeCpuPerGiB: number[];
  checkoutSeconds: number;
  /** Dirty-map check-ins: the CLI's seconds, and the process wall time. */
  checkinSeconds: number[];
  checkinWallSeconds: number[];
  checkinScanMode: string[];
  checkinBytesSent: number[];
}

interface EncryptionResult {
  ways: Record<Way, WaySamples>;
  cipher: CipherBenchRow[];
  randomWrites: { sector4k: number[]; unit64k: number[] };
  commands: Record<Way, string>;
  /** The `cipher` of each serve's listening event: null (plain), 'native' or 'js'. */
  ciphers: Record<Way, string | null>;
  cpuProfiles?: string;
}

const medianOf = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const spread = (xs: number[], digits = 0): string => (xs.length ? `${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)}` : '-');

/** User + system CPU seconds of a process so far (all its threads), from /proc. */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}
const CLOCK_TICKS = 100;

async function measureEncryption(home: string, work: string, run_: string, size: number, writeSource: string, o: Options): Promise<EncryptionResult> {
  const ways = Object.fromEntries(NBD_WAYS.map((w) => [w, { readMbps: [], writeMbps: [], read4kIops: [], write4kIops: [], readCpuPerGiB: [], writeCpuPerGiB: [], checkoutSeconds: 0, checkinSeconds: [], checkinWallSeconds: [], checkinScanMode: [], checkinBytesSent: [] }])) as unknown as Record<Way, WaySamples>;
  const desk = (w: Way, what: 'nbd' | 'ci'): string => `enc-${what}-${w}`;
  const encArgs = (w: Way): string[] => (w === 'plain' ? [] : ['--encrypt']);
  const serveEnv = (w: Way): NodeJS.ProcessEnv => (w === 'encrypted-js' ? { CARRYON_XTS: 'js' } : {});
  const nodeArgs = (w: Way): string[] => (o.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProf}`, `--cpu-prof-name=serve-${w}-${Date.now()}.cpuprofile`] : []);
  // Alternate which way goes first in each round, so drift in the machine's load falls on both alike.
  const order = (round: number): Way[] => (round % 2 === 0 ? WAYS : [...WAYS].reverse());
  // Three ways: each takes each position once in three rounds (and reversed in the next three).
  const nbdOrder = (round: number): Way[] => {
    const k = round % 3;
    const rot = [...NBD_WAYS.slice(k), ...NBD_WAYS.slice(0, k)];
    return Math.floor(round / 3) % 2 === 0 ? rot : rot.reverse();
  };

  // Throughput: both exports up at once
  const daemons = {} as Record<Way, Daemon>;
  const commands = {} as Record<Way, string>;
  const ciphers = {} as Record<Way, string | null>;
  try {
    for (const w of NBD_WAYS) {
      const co = await carryon(home, 'checkout', desk(w, 'nbd'), '--to', join(work, `enc-${w}`, 'disk.raw'), ...encArgs(w));
      ways[w].checkoutSeconds = co.seconds;
      log(`  ${w}: checked out ${desk(w, 'nbd')} in ${secs(co.seconds)} s${w !== 'plain' ? ` (encrypted: ${JSON.stringify(co.json.encrypted ?? co.json.encryption ?? '?')})` : ''}`);
      const sock = join(run_, `enc-${w}.sock`);
      const started = await startCarryonServe(home, desk(w, 'nbd'), sock, [], nodeArgs(w), serveEnv(w));
      daemons[w] = started.daemon;
      ciphers[w] = (started.listening.cipher as string | null | undefined) ?? null;
      log(`  ${w}: carryon serve's cipher: ${String(ciphers[w])}`);
      if (w === 'encrypted' && ciphers[w] !== 'native') log('  WARNING: the encrypted export is not on the native XTS addon (npm run build:native); its row measures the JavaScript cipher');
      await waitForNbd(daemons[w]);
      commands[w] = daemons[w].command;
    }
    await warmCache(writeSource);
    for (const w of NBD_WAYS) await warmCache(join(work, `enc-${w}`, 'disk.raw'));
    const timed = async (w: Way, args: string[]): Promise<{ seconds: number; cpu: number }> => {
      const c0 = cpuSeconds(daemons[w].pid);
      const r = await run('nbdcopy', args);
      return { seconds: r.seconds, cpu: cpuSeconds(daemons[w].pid) - c0 };
    };
    for (let r = 0; r < o.repeat; r++) {
      for (const w of nbdOrder(r)) {
        const x = await timed(w, NBDCOPY_READ(daemons[w].uri));
        ways[w].readMbps.push(size / 1e6 / x.seconds);
        ways[w].readCpuPerGiB.push((x.cpu * GiB) / size);
      }
    }
    for (let r = 0; r < o.repeat; r++) {
      for (const w of nbdOrder(r)) {
        const x = await timed(w, NBDCOPY_WRITE(writeSource, daemons[w].uri));
        ways[w].writeMbps.push(size / 1e6 / x.seconds);
        ways[w].writeCpuPerGiB.push((x.cpu * GiB) / size);
      }
    }
    for (let r = 0; r < o.repeat; r++) {
      for (const w of nbdOrder(r)) {
        const q = await qemuImgBench(daemons[w].uri);
        if (!q || 'error' in q) throw new Error(`qemu-img bench on the ${w} export: ${q && 'error' in q ? q.error : 'no result'}`);
        ways[w].read4kIops.push(q.readIops);
        ways[w].write4kIops.push(q.writeIops);
      }
    }
    for (const w of NBD_WAYS) {
      const s = ways[w];
      log(`  ${w}: nbdcopy read ${s.readMbps.map((x) => x.toFixed(0)).join(', ')} MB/s (serve CPU ${s.readCpuPerGiB.map((x) => x.toFixed(2)).join(', ')} s/GiB); ` +
        `write ${s.writeMbps.map((x) => x.toFixed(0)).join(', ')} MB/s (CPU ${s.writeCpuPerGiB.map((x) => x.toFixed(2)).join(', ')} s/GiB); ` +
        `4 KiB read ${s.read4kIops.map((x) => x.toFixed(0)).join(', ')}/s, write ${s.write4kIops.map((x) => x.toFixed(0)).join(', ')}/s`);
    }
    for (const w of NBD_WAYS) {
      const gone = daemons[w].exitedWith();
      if (gone !== undefined) throw new Error(`the ${w} carryon serve exited (${gone}) during the measurements:\n${daemons[w].tail()}`);
      await stopCarryonServe(daemons[w]);
    }
  } finally {
    for (const w of NBD_WAYS) if (daemons[w] && daemons[w].exitedWith() === undefined) await daemons[w].stop();
  }
  if (o.cpuProf) log(`  CPU profiles of both serve processes in ${o.cpuProf}`);

  // Check-in: per round and way, a fresh change of the same size at the same offsets (new data each
  // time, so neither finds its blocks on the server already) written through carryon serve, then checked in.
  const dir = join(work, 'enc-ci');
  const c0 = makeChange(join(dir, 'offsets'), size, o.writes, o.seed, 100);
  for (let r = 0; r < o.repeat; r++) {
    for (const w of order(r)) {
      const change = makeChange(join(dir, `r${r}-${w}`), size, o.writes, o.seed, 101 + 2 * r + (w === 'encrypted' ? 1 : 0), c0.offsets);
      await carryon(home, 'checkout', desk(w, 'ci'), '--to', join(dir, w, 'disk.raw'), ...encArgs(w));
      const { daemon } = await startCarryonServe(home, desk(w, 'ci'), join(run_, `enc-ci-${w}.sock`));
      try {
        await run('qemu-io', ['-f', 'raw', daemon.uri, ...change.qemuIoCommands]);
      } finally {
        if (daemon.exitedWith() === undefined) await stopCarryonServe(daemon);
      }
      const ci = await carryon(home, 'checkin', desk(w, 'ci'));
      ways[w].checkinSeconds.push(num(ci.json, 'seconds'));
      ways[w].checkinWallSeconds.push(ci.seconds);
      ways[w].checkinScanMode.push(str(ci.json, 'scanMode'));
      ways[w].checkinBytesSent.push(num(ci.json, 'bytesSent'));
      rmSync(join(dir, `r${r}-${w}`), { recursive: true, force: true });
    }
  }
  for (const w of WAYS) {
    const s = ways[w];
    log(`  ${w}: dirty-map check-in ${s.checkinSeconds.map((x) => secs(x)).join(', ')} s (wall ${s.checkinWallSeconds.map((x) => secs(x)).join(', ')} s), mode ${[...new Set(s.checkinScanMode)].join('/')}, sent ${s.checkinBytesSent.map((x) => mb(x)).join(', ')} MB`);
  }
  rmSync(dir, { recursive: true, force: true });

  // The cipher alone, in this process: today's way and the alternatives, interleaved.
  const key = randomBytesSeeded(o.seed, 0x500000, 64);
  const rounds = Math.max(3, o.repeat);
  const cipher = cipherBench(key, [4096, 65536, 262144], 64 * MiB, rounds, (n) => randomBytesSeeded(o.seed, 0x510000, n));
  for (const row of cipher) log(`  cipher: ${row.what}: ${row.mbPerSec.map((x) => x.toFixed(0)).join(', ')} MB/s`);
  const rwFile = join(work, 'enc-random-writes.raw');
  writeRandom(rwFile, 0, 256 * MiB, o.seed, 0x520000);
  const randomWrites = randomWriteBench(key, rwFile, 256 * MiB, 20_000, rounds, (n) => randomBytesSeeded(o.seed, 0x530000, n));
  rmSync(rwFile, { force: true });
  log(`  4 KiB random writes to a file (pwrite, page cache): 4 KiB units ${randomWrites.sector4k.map((x) => x.toFixed(0)).join(', ')}/s; 64 KiB units (read-modify-write) ${randomWrites.unit64k.map((x) => x.toFixed(0)).join(', ')}/s`);
  return { ways, cipher, randomWrites, commands, ciphers, cpuProfiles: o.cpuProf };
}

function encryptionReport(e: EncryptionResult, size: number, repeat: number, writes: number): string {
  const p = e.ways.plain;
  const x = e.ways.encrypted;
  const j = e.ways['encrypted-js'];
  const cell = (a: number[], digits: number): string => (a.length ? `${medianOf(a).toFixed(digits)} (${spread(a, digits)})` : '-');
  const row = (what: string, a: number[], b: number[], c: number[], digits = 0): string[] => [
    what, cell(a, digits), cell(b, digits), ratio(medianOf(b), medianOf(a)), cell(c, digits), c.length ? ratio(medianOf(c), medianOf(a)) : '-',
  ];
  const body = [
    row('nbdcopy read, MB/s', p.readMbps, x.readMbps, j.readMbps),
    row('nbdcopy write, MB/s', p.writeMbps, x.writeMbps, j.writeMbps),
    row('qemu-img bench 4 KiB read, req/s', p.read4kIops, x.read4kIops, j.read4kIops),
    row('qemu-img bench 4 KiB write, req/s', p.write4kIops, x.write4kIops, j.write4kIops),
    row('serve CPU per GiB read, s', p.readCpuPerGiB, x.readCpuPerGiB, j.readCpuPerGiB, 2),
    row('serve CPU per GiB written, s', p.writeCpuPerGiB, x.writeCpuPerGiB, j.writeCpuPerGiB, 2),
    row(`dirty-map check-in of ${writes} x 64 KiB, s`, p.checkinSeconds, x.checkinSeconds, [], 2),
    row('the same, process wall time, s', p.checkinWallSeconds, x.checkinWallSeconds, [], 2),
  ];
  let out = `\nEncryption at rest: the same ${human(size)} image served plain and encrypted (AES-256-XTS, 4 KiB sectors) by carryon serve, ${repeat} runs each, alternating; median (min-max)\n` +
    `ciphers: encrypted = ${String(e.ciphers.encrypted)}, encrypted-js = ${String(e.ciphers['encrypted-js'])}\n` +
    table(['measure', 'plain', 'encrypted', 'encrypted / plain', 'encrypted, JS cipher', 'JS / plain'], body);
  const cipherRows = e.cipher.map((r) => [r.what, `${cipherMedian(r).toFixed(0)} (${spread(r.mbPerSec)})`]);
  out += `\n\nThe cipher alone (encrypt, one thread, MB/s, median (min-max) of interleaved rounds)\n` + table(['way', 'MB/s'], cipherRows);
  out += `\n4 KiB random writes (encrypt + pwrite, page cache): 4 KiB units ${medianOf(e.randomWrites.sector4k).toFixed(0)}/s (${spread(e.randomWrites.sector4k)}); ` +
    `64 KiB units, read-modify-write ${medianOf(e.randomWrites.unit64k).toFixed(0)}/s (${spread(e.randomWrites.unit64k)})`;
  return out;
}

function encryptionTargets(e: EncryptionResult): string[] {
  const p = e.ways.plain;
  const x = e.ways.encrypted;
  const met = (ok: boolean): string => (ok ? 'MET' : 'NOT MET');
  const r = (a: number[], b: number[]): number => medianOf(b) / medianOf(a);
  const out = [
    `encrypted NBD read at least 0.85x of plain (nbdcopy median ${r(p.readMbps, x.readMbps).toFixed(2)}x, 4 KiB ${r(p.read4kIops, x.read4kIops).toFixed(2)}x): ${met(r(p.readMbps, x.readMbps) >= 0.85 && r(p.read4kIops, x.read4kIops) >= 0.85)}`,
    `encrypted NBD write at least 0.85x of plain (nbdcopy median ${r(p.writeMbps, x.writeMbps).toFixed(2)}x, 4 KiB ${r(p.write4kIops, x.write4kIops).toFixed(2)}x): ${met(r(p.writeMbps, x.writeMbps) >= 0.85 && r(p.write4kIops, x.write4kIops) >= 0.85)}`,
  ];
  const ci = r(p.checkinSeconds, x.checkinSeconds);
  const noise = (Math.max(...p.checkinSeconds) - Math.min(...p.checkinSeconds)) / medianOf(p.checkinSeconds);
  out.push(`dirty-map check-in unchanged within noise (encrypted / plain ${ci.toFixed(2)}x; plain's own spread ${(noise * 100).toFixed(0)}% of its median): ${met(Math.abs(ci - 1) <= Math.max(noise, 0.1))}`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Report

function exportTable(rows: ExportResult[], size: number, repeat: number): string {
  const iops = (r: ExportResult, k: 'readIops' | 'writeIops'): string => (r.qemuImgBench && !('error' in r.qemuImgBench) ? r.qemuImgBench[k].toFixed(0) : '-');
  const body = rows.map((r) => [
    SERVER_TITLE[r.server], r.read.best.toFixed(0), r.read.median.toFixed(0), r.write.best.toFixed(0), r.write.median.toFixed(0), iops(r, 'readIops'), iops(r, 'writeIops'), String(r.nbdinfo.can_multi_conn ?? '-'),
  ]);
  const c = rows.find((r) => r.server === 'carryon');
  for (const peer of ['nbdkit', 'qemu-nbd'] as const) {
    const p = rows.find((r) => r.server === peer);
    if (!c || !p) continue;
    const q = (k: 'readIops' | 'writeIops'): string =>
      c.qemuImgBench && !('error' in c.qemuImgBench) && p.qemuImgBench && !('error' in p.qemuImgBench) ? ratio(c.qemuImgBench[k], p.qemuImgBench[k]) : '-';
    body.push([`carryon / ${peer}`, ratio(c.read.best, p.read.best), ratio(c.read.median, p.read.median), ratio(c.write.best, p.write.best), ratio(c.write.median, p.write.median), q('readIops'), q('writeIops'), '']);
  }
  return `\nExport throughput (${connections || "nbdcopy's default"} connection(s)): nbdcopy of the whole ${human(size)} export, ${repeat} runs each (MB/s, MB = 10^6 bytes); qemu-img bench 4 KiB requests/s\n` +
    table(['server', 'read best', 'read median', 'write best', 'write median', '4K read/s', '4K write/s', 'multi-conn'], body);
}

function checkinTable(rows: CheckinRow[], writes: number, repeat: number): string {
  const body = rows.map((r) => [
    human(r.size), mb(r.dataBytes, 0), r.map ? secs(r.map.seconds) : 'failed', r.map ? secs(r.map.scanSeconds) : '-', r.map ? secs(r.map.wallSeconds) : '-',
    r.full ? secs(r.full.seconds) : 'failed', r.full ? secs(r.full.scanSeconds) : '-', r.full ? secs(r.full.wallSeconds) : '-', ratio(r.full?.seconds, r.map?.seconds),
  ]);
  return `\nCheck-in after ${writes} scattered 64 KiB writes (${mb(writes * WRITE_BYTES)} MB): dirty map (written through carryon serve) vs full scan (written with qemu-io on the file); seconds, the run with the median of ${repeat}\n` +
    table(['disk', 'data MB', 'map s', 'map scan s', 'map wall s', 'full s', 'full scan s', 'full wall s', 'full / map'], body);
}

/** Every run of the full scan at the largest size against the smallest, and the medians. */
function scalingTable(sc: Scaling): string {
  const body = sc.runs.map((r) => [String(r.run), secs(r.smallSeconds), secs(r.bigSeconds), `${r.ratio.toFixed(2)}x`, secs(r.smallScanSeconds), secs(r.bigScanSeconds), `${r.scanRatio.toFixed(2)}x`, mb(r.bigScanBytesRead), r.bigScanHoles ?? '-']);
  body.push(['median', '', '', `${sc.medianRatio.toFixed(2)}x`, '', '', `${sc.medianScanRatio.toFixed(2)}x`, '', '']);
  return `\nFull scan, ${human(sc.big)} sparse disk (${mb(sc.bigDataBytes)} MB of data) against ${human(sc.small)} (${mb(sc.smallDataBytes)} MB), per run (target: median check-in ratio at most ${sc.target}x)\n` +
    table(['run', `${human(sc.small)} check-in s`, `${human(sc.big)} check-in s`, 'ratio', `${human(sc.small)} scan s`, `${human(sc.big)} scan s`, 'scan ratio', `${human(sc.big)} read MB`, 'holes'], body);
}

function targets(runs: ExportRuns[], ci: CheckinRow[]): string[] {
  const out: string[] = [];
  const met = (ok: boolean | undefined): string => (ok === undefined ? 'INCOMPLETE (a size failed)' : ok ? 'MET' : 'NOT MET');
  const maps = ci.filter((r) => r.map);
  if (ci.length) {
    const all = (ok: boolean): boolean | undefined => (maps.length === ci.length || !ok ? ok : undefined);
    out.push(`map-path check-in under 1 s at every size (CLI seconds: ${maps.map((r) => `${human(r.size)} ${secs(r.map!.seconds)}`).join(', ')}): ${met(all(maps.every((r) => r.map!.seconds < 1)))}`);
    const walls = maps.map((r) => `${human(r.size)} ${secs(r.map!.wallSeconds)}`).join(', ');
    out.push(`  (process wall times, with Node start-up: ${walls}; under 1 s: ${met(all(maps.every((r) => r.map!.wallSeconds < 1)))})`);
    if (maps.length >= 2) {
      const sorted = [...maps].sort((a, b) => a.size - b.size);
      const small = sorted[0]!;
      const big = sorted[sorted.length - 1]!;
      const x = big.map!.seconds / small.map!.seconds;
      out.push(`map-path check-in within 2x regardless of size (${human(big.size)} / ${human(small.size)}: ${ratio(big.map!.seconds, small.map!.seconds)}): ${met(x <= 2 && x >= 0.5)}`);
    } else out.push(`map-path check-in within 2x regardless of size: ${ci.length >= 2 ? met(undefined) : 'n/a (one size)'}`);
    const sc = scalingOf(ci);
    if (sc) {
      out.push(`full-scan check-in follows the data: ${human(sc.big)} at most ${sc.target}x ${human(sc.small)} (median of ${sc.runs.length} runs ${sc.medianRatio.toFixed(2)}x; runs ${sc.runs.map((r) => `${r.ratio.toFixed(2)}x`).join(', ')}; scan alone ${sc.medianScanRatio.toFixed(2)}x): ${met(sc.runs.length === ci[0]!.runs.length ? sc.met : sc.met ? undefined : false)}`);
    } else if (ci.length >= 2) out.push(`full-scan check-in follows the data: ${met(undefined)}`);
  }
  for (const e of runs) {
    const n = e.connections || 'default';
    for (const op of ['read', 'write'] as const) {
      const k = e.medianRatios[op].nbdkit;
      const q = e.medianRatios[op]['qemu-nbd'];
      const per = (peer: 'nbdkit' | 'qemu-nbd'): string => e.rounds.map((r) => r.ratios[op][peer]?.toFixed(2) ?? '-').join(', ');
      if (k !== undefined) out.push(`export ${op}, ${n} connection(s), at least 0.8x nbdkit on the median of ${e.rounds.length} runs (${k.toFixed(2)}x; runs ${per('nbdkit')}): ${met(k >= 0.8)}`);
      if (q !== undefined) out.push(`export ${op}, ${n} connection(s), ahead of qemu-nbd in every run (median ${q.toFixed(2)}x; runs ${per('qemu-nbd')}): ${met(e.rounds.every((r) => (r.ratios[op]['qemu-nbd'] ?? 0) > 1))}`);
    }
  }
  return out;
}

async function toolVersions(): Promise<Record<string, string>> {
  const first = toolVersion;
  return {
    nbdkit: await first('nbdkit', ['--version']),
    'qemu-nbd': await first('qemu-nbd', ['--version']),
    nbdcopy: await first('nbdcopy', ['--version']),
    'qemu-io': await first('qemu-io', ['--version']),
    'qemu-img': await first('qemu-img', ['--version']),
  };
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  settleBeforeEachRun(true);
  const o = parseOptions(process.argv.slice(2));
  if (o.parts.includes('encryption')) {
    // The encrypted copy's keyring: a passphrase for this run, and scrypt at 2^12 instead of 2^17
    // (the KDF runs once per command, not per byte: it changes no throughput, only start-up).
    process.env.CARRYON_PASSPHRASE ??= 'nbd-bench passphrase';
    process.env.CARRYON_KDF_LOG_N ??= '12';
  }
  flushWrites = o.flush;
  connections = o.connections[0]!;
  for (const [tool, pkg] of [['nbdkit', 'nbdkit'], ['qemu-nbd', 'qemu-utils'], ['qemu-io', 'qemu-utils'], ['qemu-img', 'qemu-utils'], ['nbdcopy', 'libnbd-bin'], ['nbdinfo', 'libnbd-bin']] as const) {
    requireTool(tool, pkg);
  }
  const missing = carryonMissing();
  if (missing) throw new Error(missing);

  const started = Date.now();
  const work = mkdtempSync(join(tmpdir(), 'carryon-nbd-bench-'));
  let server: RunningServer | undefined;
  let failed = false;
  const report: Json = {};
  process.once('SIGINT', () => {
    for (const c of children) c.kill('SIGKILL');
    if (!o.keep) rmSync(work, { recursive: true, force: true });
    process.exit(130); // carryon-cli's exit hook kills carryon-server
  });
  const exportRows: ExportResult[] = [];
  const exportRuns: ExportRuns[] = [];
  let fuseRow: FuseResult | null = null;
  let encryptionRow: EncryptionResult | null = null;
  const checkinRows: CheckinRow[] = [];
  try {
    log(`nbd-bench: ${human(o.size)} random image; check-in sizes ${o.checkinSizes.map(human).join(', ')}; ${o.repeat} runs; ${cpus().length} cores, node ${process.version}`);
    log(`temp folder ${work}`);
    const run_ = join(work, 'run');
    mkdirSync(run_);

    // Images
    let t = Date.now();
    const base = join(work, 'base.raw');
    writeRandom(base, 0, o.size, o.seed, STREAM.image);
    const writeSource = join(work, 'write-source.raw');
    if (o.parts.includes('export') || o.parts.includes('encryption')) writeRandom(writeSource, 0, o.size, o.seed, STREAM.writeSource);
    log(`base image and write source (random, fully allocated) in ${secs((Date.now() - t) / 1000)} s`);
    const checkinImages = new Map<number, { file: string; dataBytes: number; extents: number[] }>();
    if (o.parts.includes('checkin')) {
      for (const s of o.checkinSizes) {
        if (s === o.size) checkinImages.set(s, { file: base, dataBytes: o.size, extents: [] });
        else {
          const file = join(work, `checkin-${label(s)}.raw`);
          const made = await makeCheckinImage(base, o.size, s, file, o.seed);
          checkinImages.set(s, { file, ...made });
          log(`check-in image ${human(s)}: sparse, ${mb(made.dataBytes)} MB of data (the base image at 0, 64 MiB at ${made.extents.map((e) => `${e / GiB} GiB`).join(', ') || '-'})`);
        }
      }
    }

    // carryon-server with every image published, one laptop home
    const data = join(work, 'server');
    await carryonServer(data, 'init');
    server = await startServer(data);
    const token = str((await carryonServer(data, 'user', 'add', 'bench')).json, 'token');
    const home = join(work, 'laptop');
    mkdirSync(home);
    await carryon(home, 'login', server.url, '--token', token);
    const publishes: Json = {};
    const publish = async (image: string, file: string, desks: string[]): Promise<void> => {
      const p = await carryonServer(data, 'image', 'publish', image, file);
      publishes[image] = { ...p.json, seconds: p.seconds };
      log(`published ${image}: ${mb(num(p.json, 'storedBytes'))} MB stored in ${secs(p.seconds)} s`);
      // Encryption off until the laptop CLI encrypts and escrows (a 'required' desktop refuses blocks with ESCROW_MISSING).
      for (const d of desks) await carryonServer(data, 'desktop', 'create', d, '--user', 'bench', '--image', image, '--encryption', 'off');
    };
    log(`carryon-server at ${server.url}`);
    const encDesks = o.parts.includes('encryption') ? [...NBD_WAYS.map((w) => `enc-nbd-${w}`), ...WAYS.map((w) => `enc-ci-${w}`)] : [];
    if (o.parts.includes('export') || o.parts.includes('encryption') || checkinImages.has(o.size)) {
      await publish(`golden-${label(o.size)}`, base, [...(o.parts.includes('export') ? ['nbd-export', ...(o.jsPath ? ['nbd-export-js'] : [])] : []), ...(checkinImages.has(o.size) ? [`ci-${label(o.size)}`] : []), ...encDesks]);
    }
    for (const [s, img] of checkinImages) if (s !== o.size) await publish(`golden-${label(s)}`, img.file, [`ci-${label(s)}`]);

    // Part 1
    if (o.parts.includes('export')) {
      log(`\n== export throughput (${human(o.size)}, nbdcopy --no-extents, ${o.repeat} runs; then qemu-img bench)`);
      const co = await carryon(home, 'checkout', 'nbd-export', '--to', join(work, 'export', 'disk.raw'));
      const disk = str(co.json, 'disk');
      SERVERS = o.jsPath ? [...MAIN_SERVERS, 'carryon-js'] : MAIN_SERVERS;
      if (o.jsPath) {
        const cj = await carryon(home, 'checkout', 'nbd-export-js', '--to', join(work, 'export', 'disk-js.raw'));
        await warmCache(str(cj.json, 'disk'));
      }
      log(`  checked out nbd-export to ${disk} in ${secs(co.seconds)} s`);
      const sock = (n: string): string => join(run_, `${n}.sock`);
      const uriOf = (n: string): string => `nbd+unix:///nbd-export?socket=${sock(n)}`;
      // The peers serve an identical copy: all three are up at once, and carryon's dirty map stays its own.
      const peerDisk = join(work, 'export', 'peer.raw');
      await copySparse(disk, peerDisk);
      await warmCache(disk);
      await warmCache(peerDisk);
      await warmCache(writeSource);
      const servers = {} as Record<ServerName, { daemon: Daemon; info: Json }>;
      try {
        for (const s of SERVERS) {
          const started = s === 'carryon' ? await startCarryonServe(home, 'nbd-export', sock(s))
            : s === 'carryon-js' ? await startCarryonServe(home, 'nbd-export-js', sock(s), [], [], { CARRYON_NBD_DATA: 'js' }) : null;
          if (started) log(`  ${SERVER_TITLE[s]}: data path ${String(started.listening.dataPath ?? 'js')}`);
          const { daemon } = started ? { daemon: started.daemon } : s === 'nbdkit'
              ? spawnDaemon(s, 'nbdkit', ['-f', '--exit-with-parent', '-U', sock(s), 'file', peerDisk], uriOf(s))
              : spawnDaemon(s, 'qemu-nbd', ['-f', 'raw', '-k', sock(s), '-x', 'nbd-export', '-t', '-e', '4', '--cache=writeback', '--aio=threads', peerDisk], uriOf(s));
          const info = await waitForNbd(daemon);
          servers[s] = { daemon, info };
          log(`  ${SERVER_TITLE[s]}: ${daemon.command}`);
          log(`    nbdinfo: multi-conn ${String(info.can_multi_conn)}, flush ${String(info.can_flush)}, fua ${String(info.can_fua)}, zero ${String(info.can_zero)}, trim ${String(info.can_trim)}` +
            (info.block_size_preferred !== undefined ? `, block sizes ${String(info.block_size_minimum)}/${String(info.block_size_preferred)}/${String(info.block_size_maximum)}` : ''));
        }
        for (const c of o.connections) {
          log(`  -- ${c || 'nbdcopy\'s default'} connection(s), ${c === o.connections[0] && o.warmup ? `${o.warmup} warm-up round(s) (not counted), then ` : ''}${o.repeat} rounds, servers in rotating order`);
          exportRuns.push(await measureExportInterleaved(servers, o.size, writeSource, o.repeat, c, c === o.connections[0] ? o.warmup : 0));
        }
        // 4 KiB requests (one connection, as qemu-img opens): once per server, after the copies.
        const rows = exportRuns[0]!.rows;
        for (const r of rows) {
          const qb = await qemuImgBench(servers[r.server].daemon.uri);
          r.qemuImgBench = qb;
          if (qb && 'error' in qb) log(`  ${SERVER_TITLE[r.server]}: qemu-img bench failed: ${qb.error}`);
          else if (qb) log(`  ${SERVER_TITLE[r.server]}: qemu-img bench 4 KiB x ${QEMU_BENCH_COUNT}, depth 32: read ${qb.readIops.toFixed(0)}/s, write ${qb.writeIops.toFixed(0)}/s`);
        }
        for (const s of SERVERS) {
          const gone = servers[s].daemon.exitedWith();
          if (gone !== undefined) throw new Error(`${SERVER_TITLE[s]} exited (${gone}) during the measurements:\n${servers[s].daemon.tail()}`);
          const st = s === 'carryon' || s === 'carryon-js' ? await stopCarryonServe(servers[s].daemon) : { seconds: (await servers[s].daemon.stop()).seconds, stopped: undefined };
          const row = rows.find((r) => r.server === s);
          if (row) Object.assign(row, { stopSeconds: st.seconds, stopped: st.stopped });
        }
        exportRows.push(...rows);
      } catch (e) {
        failed = true;
        log(`  export FAILED: ${e instanceof Error ? e.message : String(e)}`);
      } finally {
        for (const s of SERVERS) if (servers[s] && servers[s].daemon.exitedWith() === undefined) await servers[s].daemon.stop();
        rmSync(peerDisk, { force: true });
      }
      connections = o.connections[0]!;
      log(`\n== the export as a plain file (serve --file, nbdfuse) against NBD, ${human(o.size)}, ${o.repeat} runs`);
      try {
        fuseRow = await measureFuse(home, 'nbd-export', sock('carryon-file'), join(work, 'vm-file'), o.size, writeSource, o.repeat);
      } catch (e) {
        failed = true;
        log(`  serve --file FAILED: ${e instanceof Error ? e.message : String(e)}`);
      }
    }

    // Part 3
    if (o.parts.includes('encryption')) {
      log(`\n== encryption at rest: the same ${human(o.size)} image served plain and encrypted, ${o.repeat} runs each, alternating`);
      if (o.cpuProf) mkdirSync(o.cpuProf, { recursive: true });
      try {
        encryptionRow = await measureEncryption(home, work, run_, o.size, writeSource, o);
      } catch (e) {
        failed = true;
        log(`  encryption part FAILED: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    rmSync(writeSource, { force: true });

    // Part 2
    if (o.parts.includes('checkin')) {
      // Runs outside, sizes inside: each run measures every size under the same load, and the
      // largest size's full scan is compared with the smallest's of the same run.
      for (const [s, img] of checkinImages) checkinRows.push({ size: s, dataBytes: img.dataBytes, changeBytes: o.writes * WRITE_BYTES, runs: [] });
      for (let runNo = 0; runNo < o.repeat; runNo++) {
        for (const row of checkinRows) {
          const s = row.size;
          log(`\n== check-in, ${human(s)} disk (${mb(row.dataBytes)} MB of data), ${o.writes} scattered 64 KiB writes, run ${runNo + 1} of ${o.repeat}`);
          const one: CheckinRun = { run: runNo + 1 };
          row.runs.push(one);
          const dir = join(work, `ci-${label(s)}`);
          try {
            const r = await measureCheckin(home, `ci-${label(s)}`, join(dir, 'disk.raw'), join(run_, `ci-${label(s)}.sock`), s, dir, o, runNo);
            one.map = r.map;
            one.full = r.full;
          } catch (e) {
            failed = true;
            let msg = e instanceof Error ? e.message : String(e);
            const gone = server && serverGone(server);
            if (gone) msg += `\n  ${gone}`;
            one.error = msg;
            row.error ??= msg;
            log(`  FAILED: ${msg}`);
          }
          if (!o.keep && runNo === o.repeat - 1) rmSync(dir, { recursive: true, force: true });
        }
        const sc = scalingOf(checkinRows);
        const last = sc?.runs.find((r) => r.run === runNo + 1);
        if (sc && last) log(`  run ${runNo + 1}: full-scan check-in ${human(sc.big)} / ${human(sc.small)} = ${secs(last.bigSeconds)} / ${secs(last.smallSeconds)} s = ${last.ratio.toFixed(2)}x (scan alone ${secs(last.bigScanSeconds)} / ${secs(last.smallScanSeconds)} s = ${last.scanRatio.toFixed(2)}x)`);
      }
      for (const row of checkinRows) {
        row.map = medianRun(row.runs, 'map');
        row.full = medianRun(row.runs, 'full');
      }
    }

    console.log(`\nResults (${cpus().length} cores, ${cpus()[0]?.model ?? '?'}, node ${process.version}; warm page cache)`);
    for (const e of exportRuns) console.log(exportRunsTable(e, o.size));
    if (exportRows.length) {
      console.log(exportTable(exportRows, o.size, o.repeat));
      console.log(`\nnbdcopy read: ${showCommand('nbdcopy', NBDCOPY_READ('URI'))}   write: ${showCommand('nbdcopy', NBDCOPY_WRITE('FILE', 'URI'))} (FILE: random data, page cache warm)`);
      console.log(`nbdcopy's defaults: multi-conn up to 4 connections, capped at --threads = cores (${cpus().length} here), 64 requests in flight each, 256 KiB requests`);
      console.log(`qemu-img bench: ${showCommand('qemu-img', QEMU_BENCH('URI', false))} (and -w for writes; sequential 4 KiB from offset 0)`);
      for (const r of exportRows) console.log(`${SERVER_TITLE[r.server]}: ${r.command}`);
    }
    if (fuseRow) {
      const f = fuseRow;
      console.log(`\n| serve --file (nbdfuse) | file median MB/s | NBD median MB/s | file / NBD |\n|---|---:|---:|---:|`);
      for (const [what, r] of [['sequential read, 1 MiB, one stream', f.seqRead], ['sequential write, 1 MiB, one stream', f.seqWrite], ['read, nbdcopy defaults', f.parRead]] as const) {
        console.log(`| ${what} | ${r.file.median.toFixed(0)} | ${r.nbd.median.toFixed(0)} | ${ratio(r.file.median, r.nbd.median)} |`);
      }
      console.log(`file: dd ${DD_READ('FILE').join(' ')} / dd ${DD_WRITE('SRC', 'FILE').join(' ')} / nbdcopy --no-extents FILE null:; NBD: nbdcopy ${NBD_SEQ.join(' ')} URI null: (and SRC URI) / ${showCommand('nbdcopy', NBDCOPY_READ('URI'))}`);
    }
    const scaling = scalingOf(checkinRows);
    if (checkinRows.length) {
      console.log(checkinTable(checkinRows, o.writes, o.repeat));
      if (scaling) console.log(scalingTable(scaling));
      const m = checkinRows.filter((r) => r.map).sort((a, b) => a.size - b.size);
      if (m.length >= 2) console.log(`map path, ${human(m[m.length - 1]!.size)} vs ${human(m[0]!.size)}: ${ratio(m[m.length - 1]!.map!.seconds, m[0]!.map!.seconds)}`);
      for (const r of checkinRows) {
        if (r.map && r.full) console.log(`${human(r.size)}: map mode ${r.map.scanMode} read ${mb(r.map.scanBytesRead)} MB; full mode ${r.full.scanMode} read ${mb(r.full.scanBytesRead)} MB; sent ${mb(r.map.bytesSent)} / ${mb(r.full.bytesSent)} MB`);
        if (r.error) console.log(`${human(r.size)}: failed: ${r.error.split('\n')[0]}`);
      }
    }
    if (encryptionRow) console.log(encryptionReport(encryptionRow, o.size, o.repeat, o.writes));
    console.log('\nTargets (from the issue; printed, not asserted):');
    for (const line of [...targets(exportRuns, checkinRows), ...(encryptionRow ? encryptionTargets(encryptionRow) : [])]) console.log(`  ${line}`);
    console.log(`\ntotal bench time ${secs((Date.now() - started) / 1000)} s`);

    Object.assign(report, {
      when: new Date().toISOString(),
      machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version },
      tools: await toolVersions(),
      options: { ...o, out: undefined },
      commands: {
        nbdcopyRead: showCommand('nbdcopy', NBDCOPY_READ('URI')),
        nbdcopyWrite: showCommand('nbdcopy', NBDCOPY_WRITE('FILE', 'URI')),
        qemuImgBenchRead: showCommand('qemu-img', QEMU_BENCH('URI', false)),
        qemuImgBenchWrite: showCommand('qemu-img', QEMU_BENCH('URI', true)),
      },
      images: { base: { size: o.size, note: 'seeded AES-CTR bytes, fully allocated' }, checkin: Object.fromEntries([...checkinImages].map(([s, i]) => [label(s), { size: s, dataBytes: i.dataBytes, extents: i.extents }])) },
      publishes,
      export: exportRows,
      exportRuns,
      fuseFile: fuseRow,
      encryption: encryptionRow,
      checkin: checkinRows,
      checkinScaling: scaling,
      targets: [...targets(exportRuns, checkinRows), ...(encryptionRow ? encryptionTargets(encryptionRow) : [])],
      totalSeconds: (Date.now() - started) / 1000,
    });
    if (o.out) {
      writeFileSync(o.out, JSON.stringify(report, null, 2) + '\n');
      console.log(`results written to ${o.out}`);
    }
  } finally {
    for (const c of children) c.kill('SIGKILL');
    if (server) await server.stop();
    if (o.keep) console.log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`\nnbd-bench failed: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  },
);
