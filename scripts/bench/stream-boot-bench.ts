// stream-boot-bench: what a streamed check-out fetches when a real Linux guest boots from it, under
// each read-ahead policy (client/read-ahead.ts), in the same run. The peer is carryon's earlier policy
// (CARRYON_READ_AHEAD=fixed:15: every miss also fetched the next 15 blocks); the candidate is the
// default ('trace': read ahead by the order the image's earlier streamed boots read blocks, else
// sequential). Runs alternate between policies (ABBA) so that machine noise falls on both. Before them,
// one first boot of the image (no trace yet: `sequential`, today's behaviour for a new image) records the
// trace every later check-out gets; it is reported apart, not in the tables' runs. Every run's serve
// reports its own boot's order too (the server keeps the latest), as a laptop would. --hostile: after the
// runs, a user replaces the trace with every block of the image, shuffled, and one more boot measures
// what that costs the next laptop (reported apart).
//
// One run: a fresh laptop home, `carryon checkout --stream` of a desktop made from the image (its
// block cache empty, so every block really comes from the server), `carryon serve --no-download
// --json` with the policy in CARRYON_READ_AHEAD, then QEMU (`-accel tcg`) boots Debian's kernel from
// .cache/test-kernel (scripts/fetch-test-kernel.sh) with a busybox-static initramfs built here and the
// disk over NBD (virtio-blk, the -drive line serve printed). The guest's /init loads the modules, mounts
// the disk read-only and does a boot's worth of reads, seeded and the same in every run: runs the disk's
// own static busybox (exec: page faults over a 2 MB binary), lists folders, reads whole binaries and
// libraries (sequential) and a few 4 KiB pages of many other files (scattered, as a program's page faults
// and config reads are), interleaved. Then it powers off, and serve is stopped: its `stopped` event says
// which blocks the guest's reads touched (readBlocks / readBlockBytes, each block once) and what was
// fetched (onDemandBlocks / onDemandBytes, of them readAheadBlocks), and serve's CPU seconds (/proc).
// Times: the guest's own clock around its reads (/proc/uptime), and QEMU's wall time (boot to poweroff).
//
//   npx tsc -b && node dist/scripts/bench/stream-boot-bench.js                    # 5 runs per policy
//   node dist/scripts/bench/stream-boot-bench.js --runs 1 --size 256M --payload 150M --read 8M   # quick
// Options: --runs N (per policy, default 5), --policies a,b (default fixed:15,trace), --size (image,
// default 512M), --payload (real /usr files in it, default 300M), --read (bytes the guest reads, about;
// default 20M), --seed N, --out FILE (JSON), --keep.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readArgs } from '../lib/args.js';
import { CLIENT_BIN, carryon, carryonMissing, carryonServer, REPO_ROOT, startServer, str, type Json } from '../lib/carryon-cli.js';
import { mb, parseSize, ratio, table } from '../lib/format.js';
import { listHostFiles, looksBinary } from '../lib/host-files.js';
import { mulberry32, randInt, shuffled } from '../lib/prng.js';
import { requireTool, run } from '../lib/proc.js';
import { DEFAULT_ROOTS, makeExt4Image, selectFiles } from '../fixtures/ext4-image.js';

const USAGE = 'usage: stream-boot-bench [--runs N] [--policies fixed:15,trace] [--size 512M] [--payload 300M] [--read 20M] [--seed N] [--out FILE] [--keep] [--hostile]';
/** The modules the guest needs for a virtio disk with ext4, in load order (a prefix of the kernel cache's list). */
const MODULES = ['virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk', 'crc16', 'mbcache', 'jbd2', 'crc32c_generic', 'ext4'];
const KERNEL_DIR = process.env.CARRYON_TEST_KERNEL_DIR ?? join(REPO_ROOT, '.cache', 'test-kernel');

interface Opts {
  runs: number;
  policies: string[];
  size: number;
  payload: number;
  read: number;
  seed: number;
  out?: string;
  keep: boolean;
  /** After the runs, one boot under a hostile trace (every block of the image, shuffled), reported apart. */
  hostile: boolean;
}

function parse(argv: string[]): Opts {
  const o: Opts = { runs: 5, policies: ['fixed:15', 'trace'], size: parseSize('512M'), payload: parseSize('300M'), read: parseSize('20M'), seed: 1, keep: false, hostile: false };
  for (const a of readArgs(argv, USAGE)) {
    if (a.flag === '--runs') o.runs = Number(a.value());
    else if (a.flag === '--policies') o.policies = a.value().split(',');
    else if (a.flag === '--size') o.size = parseSize(a.value());
    else if (a.flag === '--payload') o.payload = parseSize(a.value());
    else if (a.flag === '--read') o.read = parseSize(a.value());
    else if (a.flag === '--seed') o.seed = Number(a.value());
    else if (a.flag === '--out') o.out = a.value();
    else if (a.flag === '--keep') o.keep = true;
    else if (a.flag === '--hostile') o.hostile = true;
    else throw new Error(`unknown option ${a.flag}\n${USAGE}`);
  }
  if (!Number.isInteger(o.runs) || o.runs < 1) throw new Error(`--runs must be a positive integer\n${USAGE}`);
  return o;
}

/**
 * The guest's reads, as shell lines: seeded from the files the image holds. Whole files (binaries and
 * libraries, read start to end) make up ~70% of `budget`; the rest is 1-3 pages at a random offset of
 * other files. Interleaved, as a boot's processes interleave.
 */
function workload(files: Array<{ path: string; size: number; mode: number }>, budget: number, seed: number): { lines: string[]; whole: number; scattered: number; bytes: number } {
  const rng = mulberry32(seed);
  const order = shuffled(rng, files);
  const lines: string[] = [];
  let wholeBytes = 0;
  let whole = 0;
  let scattered = 0;
  let scatteredBytes = 0;
  for (const f of order) {
    if (wholeBytes < budget * 0.7 && looksBinary(f) && f.size >= 16 * 1024 && f.size <= 4 * 1024 * 1024 && wholeBytes + f.size <= budget * 0.7) {
      lines.push(`cat /disk${f.path} > /dev/null`);
      wholeBytes += f.size;
      whole++;
    } else if (scatteredBytes < budget * 0.3 && f.size >= 8192) {
      const pages = Math.floor(f.size / 4096);
      const count = Math.min(randInt(rng, 1, 3), pages);
      const skip = randInt(rng, 0, pages - count);
      lines.push(`dd if=/disk${f.path} of=/dev/null bs=4096 skip=${skip} count=${count} 2>/dev/null`);
      scatteredBytes += count * 4096;
      scattered++;
    }
    if (wholeBytes >= budget * 0.69 && scatteredBytes >= budget * 0.3) break;
  }
  return { lines: shuffled(rng, lines), whole, scattered, bytes: wholeBytes + scatteredBytes };
}

function initScript(work: string[], dirs: string[]): string {
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
fail() { echo "CARRYON-GUEST-FAIL $*"; poweroff -f; }
for m in ${MODULES.join(' ')}; do insmod /modules/$m.ko || fail "insmod $m"; done
mkdir -p /disk
T0=$(cut -d' ' -f1 /proc/uptime)
mount -t ext4 -o ro,noload /dev/vda /disk || fail "mount the NBD disk"
chroot /disk /busybox true || fail "run the disk's busybox"
${dirs.map((d) => `ls -l /disk${d} > /dev/null`).join('\n')}
${work.join('\n')}
T1=$(cut -d' ' -f1 /proc/uptime)
umount /disk
echo "CARRYON-BOOT-READS $T0 $T1"
echo CARRYON-GUEST-DONE
poweroff -f
`;
}

function buildInitramfs(dir: string, modules: string, init: string): string {
  const root = join(dir, 'initramfs');
  for (const d of ['bin', 'modules', 'proc', 'sys', 'dev']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
  chmodSync(join(root, 'bin', 'busybox'), 0o755);
  for (const m of MODULES) copyFileSync(join(modules, `${m}.ko`), join(root, 'modules', `${m}.ko`));
  writeFileSync(join(root, 'init'), init, { mode: 0o755 });
  const out = `${root}.cpio`;
  const r = spawnSync('sh', ['-c', `cd "${root}" && find . | cpio -o -H newc -R 0:0 --quiet > "${out}"`]);
  if (r.status !== 0) throw new Error(`cpio failed: ${r.stderr}`);
  return out;
}

interface ServeProc {
  pid: number;
  events: Json[];
  next(event: string): Promise<Json>;
  stop(): Promise<number | null>;
}

function startServe(home: string, desk: string, policy: string): ServeProc {
  const child = spawn(process.execPath, [CLIENT_BIN, 'serve', desk, '--no-download', '--no-persona-share', '--json'], {
    env: { ...process.env, CARRYON_HOME: home, CARRYON_READ_AHEAD: policy },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const events: Json[] = [];
  const waiters: Array<{ event: string; resolve: (j: Json) => void }> = [];
  let buf = '';
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        const j = JSON.parse(line) as Json;
        events.push(j);
        for (const w of waiters.filter((x) => x.event === j.event)) w.resolve(j);
      } catch {
        /* not JSON */
      }
    }
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    pid: child.pid!,
    events,
    next: (event) => {
      const seen = events.find((e) => e.event === event);
      if (seen) return Promise.resolve(seen);
      return Promise.race([
        new Promise<Json>((resolve) => waiters.push({ event, resolve })),
        exited.then((code) => Promise.reject(new Error(`serve exited (${code}) before "${event}": ${err.slice(-2000)}`))),
      ]);
    },
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

interface RunResult {
  policy: string;
  run: number;
  readBlocks: number;
  readBlockBytes: number;
  nbdReadBytes: number;
  fetchedBlocks: number;
  fetchedBytes: number;
  readAheadBlocks: number;
  readAheadUsed: number;
  fetches: number;
  /** Blocks of the boot trace the check-out brought (0: none). */
  traceBlocks: number;
  /** serve's user + system CPU seconds over the boot. */
  serveCpuSeconds: number;
  waitSeconds: number;
  guestReadSeconds: number;
  qemuSeconds: number;
}

async function bootOnce(o: { work: string; serverUrl: string; token: string; data: string; desk: string; policy: string; run: number; initrd: string; vmlinuz: string }): Promise<RunResult> {
  const home = join(o.work, `home-${o.desk}`);
  await carryonServer(o.data, 'desktop', 'create', o.desk, '--user', 'bench', '--image', 'boot', '--encryption', 'off');
  await carryon(home, 'login', o.serverUrl, '--token', o.token);
  await carryon(home, 'checkout', o.desk, '--stream');
  const serve = startServe(home, o.desk, o.policy);
  const listening = await serve.next('listening');
  if (listening.error) throw new Error(`serve: ${JSON.stringify(listening.error)}`);
  const qemuArgs = listening.qemuArgs as string[];
  const log = join(o.work, `console-${o.desk}.log`);
  const t0 = process.hrtime.bigint();
  const qemu = spawn('qemu-system-x86_64', ['-accel', 'tcg', '-nodefaults', '-nographic', '-no-reboot', '-m', '256', '-serial', `file:${log}`,
    '-kernel', o.vmlinuz, '-initrd', o.initrd, '-append', 'console=ttyS0 quiet panic=-1', ...qemuArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  let qemuErr = '';
  qemu.stderr!.on('data', (c) => (qemuErr += c));
  const guard = setTimeout(() => qemu.kill('SIGKILL'), 600_000);
  await new Promise<void>((r) => qemu.once('exit', () => r()));
  clearTimeout(guard);
  const qemuSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const out = existsSync(log) ? readFileSync(log, 'utf8') : '';
  const serveCpuSeconds = cpuSecondsOf(serve.pid);
  await serve.stop();
  const stopped = await serve.next('stopped');
  const m = /CARRYON-BOOT-READS ([\d.]+) ([\d.]+)/.exec(out);
  if (!out.includes('CARRYON-GUEST-DONE') || out.includes('CARRYON-GUEST-FAIL') || !m) throw new Error(`the guest did not finish (${log}):\n${out.slice(-3000)}\nqemu: ${qemuErr}`);
  const n = (k: string): number => {
    const v = stopped[k];
    if (typeof v !== 'number') throw new Error(`serve's stopped event has no ${k}: ${JSON.stringify(stopped)}`);
    return v;
  };
  return {
    policy: o.policy, run: o.run, readBlocks: n('readBlocks'), readBlockBytes: n('readBlockBytes'), nbdReadBytes: n('readBytes'),
    fetchedBlocks: n('onDemandBlocks'), fetchedBytes: n('onDemandBytes'), readAheadBlocks: n('readAheadBlocks'), readAheadUsed: n('readAheadUsed'), fetches: n('onDemandFetches'), traceBlocks: typeof stopped.traceBlocks === 'number' ? stopped.traceBlocks : 0, serveCpuSeconds, waitSeconds: n('readWaitMs') / 1000,
    guestReadSeconds: Number(m[2]) - Number(m[1]), qemuSeconds,
  };
}

/** utime + stime of a live process, in seconds (/proc/PID/stat; clock ticks of 100 Hz on Linux). */
function cpuSecondsOf(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / 100;
  } catch {
    return NaN;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const missing = carryonMissing();
  if (missing) throw new Error(missing);
  requireTool('qemu-system-x86_64', 'qemu-system-x86');
  requireTool('cpio', 'cpio');
  requireTool('mke2fs', 'e2fsprogs');
  const debugfs = requireTool('debugfs', 'e2fsprogs');
  if (!existsSync('/bin/busybox')) throw new Error('/bin/busybox is missing: apt-get install busybox-static (scripts/install-test-deps.sh)');
  const cur = join(KERNEL_DIR, 'current');
  if (!existsSync(cur)) throw new Error(`no test kernel in ${KERNEL_DIR}: run scripts/fetch-test-kernel.sh`);
  const kdir = join(KERNEL_DIR, readFileSync(cur, 'utf8').trim());

  const work = mkdtempSync(join(tmpdir(), 'carryon-stream-boot-'));
  const log = (s: string): void => console.log(s);
  const results: RunResult[] = [];
  let server: Awaited<ReturnType<typeof startServer>> | null = null;
  try {
    // The image: real /usr files (binaries, libraries, documents) plus a static busybox at its root.
    const image = join(work, 'boot.raw');
    const made = await makeExt4Image({ out: image, sizeBytes: o.size, payloadBytes: o.payload, seed: o.seed, log: (l) => log(`  image: ${l}`) });
    const w = await run(debugfs, ['-w', '-R', 'write /bin/busybox busybox', image]);
    if (/error|not found/i.test(w.stderr.replace(/^debugfs [^\n]*\n/, ''))) throw new Error(`debugfs could not add busybox: ${w.stderr}`);
    await run(debugfs, ['-w', '-R', 'sif /busybox mode 0100755', image]);
    // The files the image holds, as makeExt4Image chose them (same seed, same machine).
    const chosen = selectFiles(listHostFiles(DEFAULT_ROOTS), o.payload, o.seed, 16 * 1024 * 1024);
    const wl = workload(chosen, o.read, o.seed);
    const dirs = ['/', '/usr', '/usr/bin', '/usr/lib', '/usr/share'].filter((d) => d === '/' || chosen.some((f) => f.path.startsWith(`${d}/`)));
    log(`image: ${(o.size / 2 ** 20).toFixed(0)} MiB, ${made.files} files, ${mb(made.payloadBytes)} MB of /usr; guest workload: ${wl.whole} whole files + ${wl.scattered} scattered reads, ${mb(wl.bytes)} MB asked by the guest's programs`);
    const initrd = buildInitramfs(work, join(kdir, 'modules'), initScript(wl.lines, dirs));

    const data = join(work, 'server');
    await carryonServer(data, 'init');
    server = await startServer(data);
    const token = str((await carryonServer(data, 'user', 'add', 'bench')).json, 'token');
    await carryonServer(data, 'image', 'publish', 'boot', image);

    const describe = (res: RunResult): string => `guest read ${mb(res.nbdReadBytes)} MB over NBD touching ${res.readBlocks} blocks (${mb(res.readBlockBytes)} MB); fetched ${res.fetchedBlocks} blocks (${mb(res.fetchedBytes)} MB, ${res.readAheadBlocks} read ahead (${res.readAheadUsed} of them read), ${res.fetches} fetches, reads waited ${res.waitSeconds.toFixed(2)} s) = ${ratio(res.fetchedBytes, res.readBlockBytes)}; trace ${res.traceBlocks} blocks; serve CPU ${res.serveCpuSeconds.toFixed(2)} s; guest reads ${res.guestReadSeconds.toFixed(2)} s, boot to poweroff ${res.qemuSeconds.toFixed(2)} s`;
    // The image's first streamed boot: no trace yet (today's sequential read-ahead); it records the one the runs get.
    let record: RunResult | null = null;
    if (o.policies.includes('trace')) {
      record = await bootOnce({ work, serverUrl: server.url, token, data, desk: 'd-0-first', policy: 'sequential', run: 0, initrd, vmlinuz: join(kdir, 'vmlinuz') });
      log(`first boot (records the trace; not in the runs): ${describe(record)}`);
    }
    for (let r = 1; r <= o.runs; r++) {
      for (const policy of r % 2 ? o.policies : [...o.policies].reverse()) {
        const desk = `d-${r}-${policy.replace(/[^a-z0-9]/g, '')}`;
        const res = await bootOnce({ work, serverUrl: server.url, token, data, desk, policy, run: r, initrd, vmlinuz: join(kdir, 'vmlinuz') });
        results.push(res);
        log(`run ${r} ${policy}: ${describe(res)}`);
      }
    }

    // A hostile trace: a user on the image version replaces its trace with every block, shuffled. The next
    // laptop's boot must stay within the budget (fetched at most 2x the blocks it read).
    let hostile: RunResult | null = null;
    if (o.hostile) {
      const count = Math.ceil(o.size / (64 * 1024));
      const blocks = shuffled(mulberry32(o.seed + 1), Array.from({ length: count }, (_, i) => i));
      const res = await fetch(`${server.url}/v1/desktops/d-0-first/boot-trace`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ image: 'boot', imageVersion: 1, blocks }) });
      if (res.status !== 200) throw new Error(`the hostile trace was refused: ${res.status} ${await res.text()}`);
      hostile = await bootOnce({ work, serverUrl: server.url, token, data, desk: 'd-9-hostile', policy: 'trace', run: 0, initrd, vmlinuz: join(kdir, 'vmlinuz') });
      log(`hostile trace (${count} blocks, shuffled; not in the runs): ${describe(hostile)}`);
    }
    log('\nEvery run (fetched/touched: bytes fetched over bytes of the blocks the guest read, each block once):');
    log(table(['run', 'policy', 'NBD read MB', 'blocks touched', 'touched MB', 'blocks fetched', 'fetched MB', 'read ahead', 'of them read', 'fetches', 'read wait s', 'fetched/touched', 'trace blocks', 'serve CPU s', 'guest reads s', 'boot s'],
      [...(record ? [{ ...record, policy: 'sequential (first boot)' }] : []), ...results, ...(hostile ? [{ ...hostile, policy: 'trace (hostile trace)' }] : [])].map((r) => [r.run === 0 ? (r === hostile || r.policy.includes('hostile') ? 'hostile' : 'first') : String(r.run), r.policy, mb(r.nbdReadBytes), String(r.readBlocks), mb(r.readBlockBytes), String(r.fetchedBlocks), mb(r.fetchedBytes), String(r.readAheadBlocks), String(r.readAheadUsed), String(r.fetches), r.waitSeconds.toFixed(2), ratio(r.fetchedBytes, r.readBlockBytes), String(r.traceBlocks), r.serveCpuSeconds.toFixed(2), r.guestReadSeconds.toFixed(2), r.qemuSeconds.toFixed(2)])));
    const peer = o.policies[0]!;
    log(`\nMedians (ratios against ${peer}, measured in the same run):`);
    const rows: string[][] = [];
    for (const p of o.policies) {
      const rs = results.filter((r) => r.policy === p);
      const ps = results.filter((r) => r.policy === peer);
      rows.push([p, mb(median(rs.map((r) => r.fetchedBytes))), ratio(median(rs.map((r) => r.fetchedBytes / r.readBlockBytes)), 1), String(median(rs.map((r) => r.fetches))), median(rs.map((r) => r.waitSeconds)).toFixed(2), ratio(median(rs.map((r) => r.waitSeconds)), median(ps.map((r) => r.waitSeconds))), median(rs.map((r) => r.serveCpuSeconds)).toFixed(2), median(rs.map((r) => r.guestReadSeconds)).toFixed(2), ratio(median(rs.map((r) => r.guestReadSeconds)), median(ps.map((r) => r.guestReadSeconds))), median(rs.map((r) => r.qemuSeconds)).toFixed(2), ratio(median(rs.map((r) => r.qemuSeconds)), median(ps.map((r) => r.qemuSeconds)))]);
    }
    log(table(['policy', 'fetched MB', 'fetched/touched', 'fetches', 'read wait s', `vs ${peer}`, 'serve CPU s', 'guest reads s', `vs ${peer}`, 'boot s', `vs ${peer}`], rows));
    if (o.out) writeFileSync(o.out, JSON.stringify({ options: { ...o }, image: made, workload: { whole: wl.whole, scattered: wl.scattered, bytes: wl.bytes }, record, hostile, results }, null, 2));
  } finally {
    if (server) await server.stop();
    if (o.keep) log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
