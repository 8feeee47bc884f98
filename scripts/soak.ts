// The soak: N simulated laptops (each its own CARRYON_HOME, the real `carryon` CLI as processes) against
// the scale-out setup (scripts/scale-out.sh: PostgreSQL, Ceph RGW, two carryon-server instances behind
// HAProxy) for M minutes, in loops of check-out, VM-like writes (qemu-io) to a real ext4 image, and
// check-in. Mid-run one instance is killed with SIGKILL (and started again ~20 s later by
// `scale-out.sh start`, which starts what is missing) and the RGW gateway is restarted (`rgw.sh
// restart`: radosgw alone; the OSD keeps the objects). At the end every desktop is checked out on a
// fresh laptop and compared (SHA-256, then block by block) with the last image its laptop checked in.
//
// Retry policy: an operation that exits 7 (SERVER_UNREACHABLE, META_UNAVAILABLE, RATE_LIMITED,
// REQUEST_TIMEOUT: the server or a proxy was away) or fails with IO_ERROR (the object store was away)
// is retried with exponential backoff (1 s doubling to 16 s, jittered, at most 8 attempts). Anything
// else ends the laptop's cycle; its next cycle resumes where it stopped (a check-in not yet committed is
// tried again). Every failed attempt is recorded with its code.
//
// Measured: check-ins/min, MB/s over the wire (bytesSent of `carryon checkin --json`) and of changed
// data, p50/p99 check-in wall time (one CLI process, the attempt that succeeded), RGW requests per
// check-in (radosgw's own counters, `ceph daemon ... perf dump`: rgw.req/put/get, summed across the
// gateway restart; they include the check-outs' reads and the servers' index LISTs), PostgreSQL
// transactions per check-in (pg_stat_database xact_commit delta for the carryon database: every
// transaction of the run, check-outs, heartbeats and retries included; xact_rollback counts serialization
// retries and failed transactions).
//
// Usage: node dist/scripts/soak.js [--laptops 50] [--minutes 5] [--concurrency 4] [--image-mib 32]
//          [--seed 1] [--dir DIR] [--out FILE] [--keep] [--no-chaos]
// Needs: qemu-utils, e2fsprogs, and what scale-out.sh needs (postgresql, ceph-mon ceph-osd radosgw, haproxy).
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { readArgs } from './lib/args.js';
import { carryonMissing, CLIENT_BIN, parseJsonOutput, REPO_ROOT, SERVER_BIN, type Json } from './lib/carryon-cli.js';
import { makeExt4Image } from './fixtures/ext4-image.js';
import { mb, table } from './lib/format.js';
import { mulberry32, randInt, type Rng } from './lib/prng.js';
import { requireTool } from './lib/proc.js';

const USAGE = 'usage: node dist/scripts/soak.js [--laptops N] [--minutes M] [--concurrency C] [--image-mib S] [--seed N] [--dir DIR] [--out FILE] [--keep] [--no-chaos]';
const SCALE_OUT = join(REPO_ROOT, 'scripts/scale-out.sh');
const RGW_SH = join(REPO_ROOT, 'scripts/rgw.sh');
const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;

interface Options { laptops: number; minutes: number; concurrency: number; imageMiB: number; seed: number; dir?: string; out?: string; keep: boolean; chaos: boolean }

function parseOptions(argv: string[]): Options {
  const o: Options = { laptops: 50, minutes: 5, concurrency: 4, imageMiB: 32, seed: 1, keep: false, chaos: true };
  const positive = (flag: string, v: string): number => {
    const n = Number(v);
    if (!(n > 0)) throw new Error(`${flag} must be a positive number, got ${v}\n${USAGE}`);
    return n;
  };
  for (const a of readArgs(argv, USAGE)) {
    if (a.flag === '--laptops') o.laptops = Math.round(positive(a.flag, a.value()));
    else if (a.flag === '--minutes') o.minutes = positive(a.flag, a.value());
    else if (a.flag === '--concurrency') o.concurrency = Math.round(positive(a.flag, a.value()));
    else if (a.flag === '--image-mib') o.imageMiB = Math.round(positive(a.flag, a.value()));
    else if (a.flag === '--seed') o.seed = Math.round(positive(a.flag, a.value()));
    else if (a.flag === '--dir') o.dir = a.value();
    else if (a.flag === '--out') o.out = a.value();
    else if (a.flag === '--keep') o.keep = true;
    else if (a.flag === '--no-chaos') o.chaos = false;
    else throw new Error(`unknown option ${a.flag}\n${USAGE}`);
  }
  if (o.imageMiB < 16) throw new Error(`--image-mib must be at least 16\n${USAGE}`);
  return o;
}

interface Setup {
  url: string;
  instances: Array<{ name: string; url: string; data: string; pidFile: string }>;
  meta: string;
  rgwDir: string;
  haproxy: { stats: string };
}

interface Cli { code: number; json: Json | undefined; seconds: number; stderr: string }

/** One CLI process to completion; never throws (the caller reads the exit code). */
function cli(bin: string, args: string[], env: Record<string, string>): Promise<Cli> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args, '--json'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
    p.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
    p.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), json: parseJsonOutput(out), seconds: (performance.now() - t0) / 1000, stderr: err.trim().split('\n').slice(-3).join(' | ') }));
  });
}

function errorOf(r: Cli): { code: string; message: string } {
  const e = r.json?.error as { code?: string; message?: string } | undefined;
  return { code: e?.code ?? `exit ${r.code}`, message: e?.message ?? r.stderr };
}

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().split('\n').slice(-5).join('\n')}`);
  return r.stdout;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

function sha256File(p: string): string {
  const h = createHash('sha256');
  const fd = openSync(p, 'r');
  const buf = Buffer.allocUnsafe(8 * MiB);
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** 64 KiB blocks that differ between two files of the same size. */
function differingBlocks(a: string, b: string): number {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.allocUnsafe(BLOCK);
  const bb = Buffer.allocUnsafe(BLOCK);
  let n = 0;
  try {
    for (let off = 0; ; off += BLOCK) {
      const ra = readSync(fa, ba, 0, BLOCK, off);
      const rb = readSync(fb, bb, 0, BLOCK, off);
      if (ra === 0 && rb === 0) break;
      if (ra !== rb || ba.compare(bb, 0, rb, 0, ra) !== 0) n++;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return n;
}

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

/** radosgw's request counters (reset when the gateway restarts). */
interface RgwCounters { req: number; failed: number; get: number; put: number; getBytes: number; putBytes: number }
function rgwCounters(rgwDir: string): RgwCounters {
  const d = JSON.parse(sh('ceph', ['--admin-daemon', join(rgwDir, 'run/client.rgw.carryon.asok'), 'perf', 'dump'])) as { rgw: Record<string, number> };
  return { req: d.rgw.req!, failed: d.rgw.failed_req!, get: d.rgw.get!, put: d.rgw.put!, getBytes: d.rgw.get_b!, putBytes: d.rgw.put_b! };
}
const addRgw = (a: RgwCounters, b: RgwCounters, sign = 1): RgwCounters => ({
  req: a.req + sign * b.req, failed: a.failed + sign * b.failed, get: a.get + sign * b.get, put: a.put + sign * b.put, getBytes: a.getBytes + sign * b.getBytes, putBytes: a.putBytes + sign * b.putBytes,
});

/** HAProxy's requests per instance (its stats CSV). */
function haproxyRequests(statsUrl: string): Record<string, number> {
  const csv = sh('curl', ['-s', statsUrl]).trim().split('\n');
  const cols = csv[0]!.replace(/^# /, '').split(',');
  const out: Record<string, number> = {};
  for (const line of csv.slice(1)) {
    const f = line.split(',');
    if (f[0] === 'carryon' && f[1]?.startsWith('instance')) out[f[1]] = Number(f[cols.indexOf('req_tot')] || f[cols.indexOf('stot')]);
  }
  return out;
}

interface Failure { at: number; laptop: number; op: string; attempt: number; exit: number; code: string; message: string }

interface Laptop {
  i: number;
  home: string;
  desktop: string;
  token: string;
  rng: Rng;
  /** Where its cycle stands: nothing held, checked out and not written yet, written and not checked in. */
  state: 'free' | 'out' | 'written';
  disk: string | null;
  /** The last image this laptop checked in, and the version the server gave it. */
  last: { sha: string; version: number } | null;
  checkins: number;
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const missing = carryonMissing();
  if (missing) throw new Error(missing);
  const qemuIo = requireTool('qemu-io', 'qemu-utils');
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), 'carryon-soak-'));
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o711); // the PostgreSQL cluster runs as postgres, under dir
  const setupDir = join(dir, 'setup');
  const out = o.out ?? join(dir, 'soak.json');
  const t00 = Date.now();
  const log = (line: string): void => console.log(`[${((Date.now() - t00) / 1000).toFixed(0).padStart(4)} s] ${line}`);
  log(`soak: ${o.laptops} laptops, ${o.minutes} min, ${o.concurrency} CLI processes at once, ${o.imageMiB} MiB ext4 image, seed ${o.seed}, in ${dir}`);

  const port = await freePort();
  log(`starting the scale-out setup (scripts/scale-out.sh start ${setupDir} ${port})`);
  console.log(sh('bash', [SCALE_OUT, 'start', setupDir, String(port)]).trimEnd().replace(/^/gm, '    '));
  const so = JSON.parse(readFileSync(join(setupDir, 'scale-out.json'), 'utf8')) as Setup;
  const db = new pg.Client({ connectionString: so.meta });
  await db.connect();
  let stopped = false;
  const teardown = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await db.end().catch(() => undefined);
    if (!o.keep) {
      log('stopping the scale-out setup');
      spawnSync('bash', [SCALE_OUT, 'stop', setupDir], { stdio: 'ignore' });
    } else log(`kept: the setup runs on (scripts/scale-out.sh stop ${setupDir}); laptops in ${dir}`);
  };
  process.once('SIGINT', () => void teardown().then(() => process.exit(130)));

  try {
    const image = join(dir, 'golden.raw');
    await makeExt4Image({ out: image, sizeBytes: o.imageMiB * MiB, payloadBytes: Math.floor(o.imageMiB * MiB * 0.4), seed: o.seed });
    const admin = (args: string[], n = 0): Promise<Cli> => cli(SERVER_BIN, [...args, '--data', so.instances[n]!.data], {});
    const must = async (what: string, p: Promise<Cli>): Promise<Json> => {
      const r = await p;
      if (r.code !== 0) throw new Error(`${what} failed: ${errorOf(r).code}: ${errorOf(r).message}`);
      return r.json!;
    };
    await must('image publish', admin(['image', 'publish', 'golden', image]));
    const laptops: Laptop[] = Array.from({ length: o.laptops }, (_, i) => ({
      i, home: join(dir, `laptop-${i}`), desktop: `desk-${i}`, token: '', rng: mulberry32(o.seed * 1000 + i), state: 'free', disk: null, last: null, checkins: 0,
    }));
    /** At most `limit` of these at once, in order. */
    const pool = async <T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> => {
      let next = 0;
      await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
        while (next < items.length) await fn(items[next++]!);
      }));
    };
    const t0 = Date.now();
    // Users, desktops and logins, alternating between the instances' data folders.
    await pool(laptops, o.concurrency, async (l) => {
      l.token = String((await must('user add', admin(['user', 'add', `user-${l.i}`], l.i % 2))).token);
      await must('desktop create', admin(['desktop', 'create', l.desktop, '--user', `user-${l.i}`, '--image', 'golden', '--encryption', 'off'], (l.i + 1) % 2));
      await must('login', cli(CLIENT_BIN, ['login', so.url, '--token', l.token, '--device-name', `laptop-${l.i}`], { CARRYON_HOME: l.home }));
    });
    log(`${o.laptops} users, desktops and laptop logins made (${((Date.now() - t0) / 1000).toFixed(1)} s)`);

    // ---- the run
    const failures: Failure[] = [];
    const checkinSeconds: number[] = [];
    const checkinOpSeconds: number[] = [];
    const checkoutSeconds: number[] = [];
    let bytesSent = 0;
    let bytesChanged = 0;
    let retries = 0;
    const events: Array<{ at: number; event: string }> = [];
    const runStart = Date.now();
    const deadline = runStart + o.minutes * 60_000;
    const at = (): number => Math.round((Date.now() - runStart) / 100) / 10;
    const rgwBefore = rgwCounters(so.rgwDir);
    let rgwDone: RgwCounters = { req: 0, failed: 0, get: 0, put: 0, getBytes: 0, putBytes: 0 };
    let rgwBase = rgwBefore;
    const pgStats = async (): Promise<{ commit: number; rollback: number }> => {
      const r = (await db.query("SELECT xact_commit::bigint AS c, xact_rollback::bigint AS r FROM pg_stat_database WHERE datname = 'carryon'")).rows[0] as { c: string; r: string };
      return { commit: Number(r.c), rollback: Number(r.r) };
    };
    const pgBefore = await pgStats();
    const haBefore = haproxyRequests(so.haproxy.stats);

    /** One operation with the retry policy: transient failures (exit 7, IO_ERROR) again after a backoff. */
    const attempt = async (l: Laptop, op: string, args: string[]): Promise<Cli | null> => {
      for (let k = 1; ; k++) {
        const r = await cli(CLIENT_BIN, args, { CARRYON_HOME: l.home });
        if (r.code === 0) return r;
        const e = errorOf(r);
        failures.push({ at: at(), laptop: l.i, op, attempt: k, exit: r.code, code: e.code, message: e.message.slice(0, 300) });
        const transient = r.code === 7 || e.code === 'IO_ERROR';
        if (!transient || k >= 8) return null;
        retries++;
        const wait = Math.min(16_000, 1000 * 2 ** (k - 1)) * (0.5 + Math.random() / 2);
        await new Promise((res) => setTimeout(res, wait));
      }
    };

    /** A VM session: 2 to 6 extents of 16 KiB to 1 MiB, 4 KiB aligned; half random bytes, half a pattern. */
    const vmWrites = (l: Laptop): void => {
      const size = o.imageMiB * MiB;
      const args = ['-f', 'raw'];
      const srcs: string[] = [];
      for (let k = randInt(l.rng, 2, 6); k > 0; k--) {
        const len = randInt(l.rng, 4, 256) * 4096;
        const off = randInt(l.rng, 0, (size - len) / 4096) * 4096;
        if (l.rng() < 0.5) {
          const src = join(dir, `src-${l.i}-${k}.bin`);
          writeFileSync(src, randomBytes(len));
          srcs.push(src);
          args.push('-c', `write -s ${src} ${off} ${len}`);
        } else args.push('-c', `write -P 0x${randInt(l.rng, 1, 255).toString(16)} ${off} ${len}`);
      }
      const r = spawnSync(qemuIo, [...args, l.disk!], { encoding: 'utf8' });
      for (const s of srcs) rmSync(s, { force: true });
      if (r.status !== 0) throw new Error(`qemu-io failed: ${r.stderr}`);
    };

    /** One cycle of a laptop, from where it stands: check-out, write, check-in. */
    const cycle = async (l: Laptop): Promise<void> => {
      if (l.state === 'free') {
        const r = await attempt(l, 'checkout', ['checkout', l.desktop]);
        if (!r) return;
        checkoutSeconds.push(r.seconds);
        l.disk = String(r.json!.disk);
        l.state = 'out';
      }
      if (l.state === 'out') {
        vmWrites(l);
        l.state = 'written';
      }
      const t = performance.now();
      const r = await attempt(l, 'checkin', ['checkin', l.desktop]);
      if (!r) return;
      const j = r.json!;
      checkinSeconds.push(r.seconds);
      checkinOpSeconds.push((performance.now() - t) / 1000);
      bytesSent += Number(j.bytesSent);
      bytesChanged += Number(j.bytesChanged);
      const version = Number(j.version);
      if (l.last && version !== l.last.version + 1) failures.push({ at: at(), laptop: l.i, op: 'checkin', attempt: 0, exit: 0, code: 'VERSION_SKIPPED', message: `version ${version} after ${l.last.version}` });
      l.last = { sha: sha256File(l.disk!), version };
      l.checkins++;
      l.state = 'free';
    };

    // Chaos: kill -9 an instance at 30% (started again 20 s later), restart the RGW gateway at 60%.
    const chaos = async (): Promise<void> => {
      const sleepUntil = async (ms: number): Promise<void> => {
        while (Date.now() < ms && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
      };
      await sleepUntil(runStart + 0.3 * (deadline - runStart));
      if (Date.now() >= deadline) return;
      const victim = so.instances[1]!;
      const pid = Number(readFileSync(victim.pidFile, 'utf8'));
      process.kill(pid, 'SIGKILL');
      events.push({ at: at(), event: `kill -9 ${victim.name} (pid ${pid})` });
      log(`chaos: kill -9 ${victim.name} (pid ${pid})`);
      await sleepUntil(Date.now() + 20_000);
      const t = Date.now();
      sh('bash', [SCALE_OUT, 'start', setupDir]);
      events.push({ at: at(), event: `${victim.name} started again (${((Date.now() - t) / 1000).toFixed(1)} s)` });
      log(`chaos: ${victim.name} started again (scale-out.sh start, ${((Date.now() - t) / 1000).toFixed(1)} s)`);
      await sleepUntil(runStart + 0.6 * (deadline - runStart));
      if (Date.now() >= deadline) return;
      rgwDone = addRgw(rgwDone, addRgw(rgwCounters(so.rgwDir), rgwBase, -1));
      const t2 = Date.now();
      events.push({ at: at(), event: 'radosgw restart begins' });
      sh('bash', [RGW_SH, 'restart', so.rgwDir]);
      rgwBase = { req: 0, failed: 0, get: 0, put: 0, getBytes: 0, putBytes: 0 };
      events.push({ at: at(), event: `radosgw answering again (${((Date.now() - t2) / 1000).toFixed(1)} s)` });
      log(`chaos: radosgw restarted (${((Date.now() - t2) / 1000).toFixed(1)} s)`);
    };

    log(`running ${o.minutes} min${o.chaos ? ' (kill -9 instance2 at 30%, back after 20 s; radosgw restart at 60%)' : ''}`);
    const ticker = setInterval(() => log(`${checkinSeconds.length} check-ins, ${failures.length} failed attempts, ${retries} retries`), 15_000);
    // Workers take the laptops in turn, skipping one another's.
    let turn = 0;
    const busy = new Set<number>();
    await Promise.all([
      o.chaos ? chaos() : Promise.resolve(),
      ...Array.from({ length: o.concurrency }, async () => {
        while (Date.now() < deadline) {
          const l = laptops[turn++ % laptops.length]!;
          if (busy.has(l.i)) {
            await new Promise((r) => setTimeout(r, 50));
            continue;
          }
          busy.add(l.i);
          try {
            await cycle(l);
          } finally {
            busy.delete(l.i);
          }
        }
      }),
    ]);
    clearInterval(ticker);
    const runSeconds = (Date.now() - runStart) / 1000;
    await new Promise((r) => setTimeout(r, 1500)); // PostgreSQL flushes its statistics about once a second
    const pgAfter = await pgStats();
    const rgwTotal = addRgw(rgwDone, addRgw(rgwCounters(so.rgwDir), rgwBase, -1));
    const haAfter = haproxyRequests(so.haproxy.stats);
    log(`run over: ${checkinSeconds.length} check-ins in ${runSeconds.toFixed(0)} s`);

    // ---- drain: laptops holding a checkout check in (or, failing that, discard), so a fresh laptop can check out.
    let drained = 0;
    let discarded = 0;
    await pool(laptops.filter((l) => l.state !== 'free'), o.concurrency, async (l) => {
      if (l.state === 'out') l.state = 'written';
      const r = await attempt(l, 'drain-checkin', ['checkin', l.desktop]);
      if (r) {
        l.last = { sha: sha256File(l.disk!), version: Number(r.json!.version) };
        l.checkins++;
        drained++;
      } else if (await attempt(l, 'drain-discard', ['discard', l.desktop, '--yes'])) discarded++;
      l.state = 'free';
    });

    // ---- verify: a fresh laptop per desktop, compared with the last image its laptop checked in.
    log('verifying: every desktop checked out on a fresh laptop');
    const goldenSha = sha256File(image);
    const verify: Array<{ desktop: string; version: number | null; expectedVersion: number; ok: boolean; differingBlocks: number; error?: string }> = [];
    await pool(laptops, o.concurrency, async (l) => {
      const home = join(dir, `verify-${l.i}`);
      const lg = await cli(CLIENT_BIN, ['login', so.url, '--token', l.token, '--device-name', `verify-${l.i}`], { CARRYON_HOME: home });
      const expected = l.last ?? { sha: goldenSha, version: 1 };
      const co = lg.code === 0 ? await cli(CLIENT_BIN, ['checkout', l.desktop], { CARRYON_HOME: home }) : lg;
      if (co.code !== 0) {
        verify.push({ desktop: l.desktop, version: null, expectedVersion: expected.version, ok: false, differingBlocks: -1, error: `${errorOf(co).code}: ${errorOf(co).message}` });
        return;
      }
      const disk = String(co.json!.disk);
      const same = sha256File(disk) === expected.sha;
      // The laptop's own copy is the image it checked in (read-only since); compare block by block.
      const diff = same ? 0 : l.disk && existsSync(l.disk) ? differingBlocks(disk, l.disk) : -1;
      verify.push({ desktop: l.desktop, version: Number(co.json!.version), expectedVersion: expected.version, ok: same && Number(co.json!.version) === expected.version, differingBlocks: diff });
      rmSync(home, { recursive: true, force: true });
    });
    const bad = verify.filter((v) => !v.ok);
    const lostBlocks = verify.reduce((a, v) => a + Math.max(0, v.differingBlocks), 0);

    // ---- report
    const checkins = checkinSeconds.length;
    const per = (n: number): string => (checkins ? (n / checkins).toFixed(1) : '-');
    const failuresByCode: Record<string, number> = {};
    for (const f of failures) failuresByCode[`${f.op} ${f.code}`] = (failuresByCode[`${f.op} ${f.code}`] ?? 0) + 1;
    const summary = {
      laptops: o.laptops, minutes: o.minutes, concurrency: o.concurrency, imageMiB: o.imageMiB, seed: o.seed, runSeconds,
      checkins, checkinsPerMinute: checkins / (runSeconds / 60), checkouts: checkoutSeconds.length,
      bytesSent, bytesChanged, sentMBps: bytesSent / 1e6 / runSeconds, changedMBps: bytesChanged / 1e6 / runSeconds,
      checkinSeconds: { p50: quantile(checkinSeconds, 0.5), p99: quantile(checkinSeconds, 0.99), max: quantile(checkinSeconds, 1) },
      checkinWithRetriesSeconds: { p50: quantile(checkinOpSeconds, 0.5), p99: quantile(checkinOpSeconds, 0.99), max: quantile(checkinOpSeconds, 1) },
      checkoutSeconds: { p50: quantile(checkoutSeconds, 0.5), p99: quantile(checkoutSeconds, 0.99) },
      rgw: { ...rgwTotal, perCheckin: { req: rgwTotal.req / checkins, put: rgwTotal.put / checkins, get: rgwTotal.get / checkins }, source: 'radosgw perf dump (admin socket), rgw.req/put/get, summed across the gateway restart' },
      postgres: { xactCommit: pgAfter.commit - pgBefore.commit, xactRollback: pgAfter.rollback - pgBefore.rollback, commitsPerCheckin: (pgAfter.commit - pgBefore.commit) / checkins, source: "pg_stat_database for database carryon, delta over the run" },
      haproxyRequests: Object.fromEntries(Object.entries(haAfter).map(([k, v]) => [k, v - (haBefore[k] ?? 0)])),
      retries, failedAttempts: failures.length, failuresByCode, failures,
      events, drain: { checkedIn: drained, discarded },
      verify: { desktops: verify.length, identical: verify.length - bad.length, mismatched: bad, lostOrCorruptBlocks: lostBlocks },
    };
    writeFileSync(out, `${JSON.stringify(summary, null, 2)}\n`);
    const s = (x: number, d = 2): string => (Number.isFinite(x) ? x.toFixed(d) : '-');
    console.log(`\n${table(['measure', 'value'], [
      ['laptops x minutes (CLI processes at once)', `${o.laptops} x ${o.minutes} (${o.concurrency})`],
      ['check-ins (per minute)', `${checkins} (${s(summary.checkinsPerMinute, 1)})`],
      ['sent over the wire, MB/s (total MB)', `${s(summary.sentMBps)} (${mb(bytesSent)})`],
      ['changed data, MB/s (total MB)', `${s(summary.changedMBps)} (${mb(bytesChanged)})`],
      ['check-in p50 / p99 / max, s (one attempt)', `${s(summary.checkinSeconds.p50)} / ${s(summary.checkinSeconds.p99)} / ${s(summary.checkinSeconds.max)}`],
      ['check-in with retries p50 / p99, s', `${s(summary.checkinWithRetriesSeconds.p50)} / ${s(summary.checkinWithRetriesSeconds.p99)}`],
      ['check-out p50 / p99, s', `${s(summary.checkoutSeconds.p50)} / ${s(summary.checkoutSeconds.p99)}`],
      ['RGW requests per check-in (PUT / GET)', `${per(rgwTotal.req)} (${per(rgwTotal.put)} / ${per(rgwTotal.get)})`],
      ['RGW failed requests', String(rgwTotal.failed)],
      ['PostgreSQL commits per check-in (rollbacks)', `${per(summary.postgres.xactCommit)} (${summary.postgres.xactRollback})`],
      ['HAProxy requests instance1 / instance2', `${summary.haproxyRequests.instance1 ?? 0} / ${summary.haproxyRequests.instance2 ?? 0}`],
      ['failed attempts (retries)', `${failures.length} (${retries})`],
      ['drained at the end: checked in / discarded', `${drained} / ${discarded}`],
      ['desktops identical on a fresh laptop', `${verify.length - bad.length} of ${verify.length}`],
      ['lost or corrupted blocks', String(lostBlocks)],
    ])}`);
    if (Object.keys(failuresByCode).length) console.log(`\nfailed attempts by operation and code:\n${table(['operation code', 'attempts'], Object.entries(failuresByCode).sort().map(([k, v]) => [k, String(v)]))}`);
    for (const e of events) console.log(`  at ${e.at.toFixed(1)} s: ${e.event}`);
    for (const b of bad) console.log(`MISMATCH ${b.desktop}: version ${b.version} (expected ${b.expectedVersion}), ${b.differingBlocks} blocks differ${b.error ? `, ${b.error}` : ''}`);
    console.log(`\nJSON: ${out}`);
    if (bad.length > 0) process.exitCode = 1;
  } finally {
    await teardown();
    // The laptops' disks and caches are the bulk; the JSON and the setup's logs stay.
    if (!o.keep) for (const e of readdirSync(dir)) if (/^(laptop|verify)-\d+$|^golden\.raw/.test(e)) rmSync(join(dir, e), { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(`soak: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
