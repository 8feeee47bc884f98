// E2E harness: the real carryon-server and carryon CLIs as child processes on 127.0.0.1, temp homes
// and data folders, and a small ext4 image built from real files with mke2fs -d.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, cpSync, createWriteStream, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SERVER_BIN = path.join(ROOT, 'bin/carryon-server.js');
const CLIENT_BIN = path.join(ROOT, 'bin/carryon.js');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  json: any;
}

function parseLastJson(stdout: string): any {
  const lines = stdout.trim().split('\n');
  try {
    return JSON.parse(lines[lines.length - 1] ?? '');
  } catch {
    return null;
  }
}

export function run(bin: string, args: string[], env: Record<string, string> = {}, input?: string): Promise<RunResult> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c) => (stdout += c));
    p.stderr.on('data', (c) => (stderr += c));
    p.stdin.end(input ?? '');
    p.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, json: parseLastJson(stdout) }));
  });
}

export function tmpDir(prefix: string): string {
  return mkdtempSync(path.join(os.tmpdir(), `carryon-${prefix}-`));
}

/** Remove a test's temp folder (images are hundreds of MiB); CARRYON_KEEP_TMP=1 keeps it for a post-mortem. */
export function removeTmp(dir: string): void {
  // Encrypted personas still mounted (a laptop home that was never locked): their vaults are under dir.
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [source, target, type] = line.split(' ');
    if (type?.startsWith('fuse') && (source?.startsWith(dir) || target?.startsWith(dir))) spawnSync('fusermount3', ['-u', '-z', target!.replace(/\\040/g, ' ')]);
  }
  if (process.env.CARRYON_KEEP_TMP !== '1') rmSync(dir, { recursive: true, force: true });
}

/** Every regular file under dir, recursively (sockets and the like left out). */
export function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

/** Allocated bytes of every file under dir (what `du` counts: a sparse disk counts its data only). */
export function allocatedUnder(dir: string): number {
  return filesUnder(dir).reduce((a, f) => a + statSync(f).blocks * 512, 0);
}

export function requireTool(name: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${name}`]);
  if (r.status !== 0) throw new Error(`${name} is not installed: run scripts/install-test-deps.sh (CI installs it)`);
}

/** An ext4 image of `sizeMiB` holding ~`payloadMiB` of real files from /usr, reproducible. */
export function makeExt4Image(out: string, sizeMiB: number, payloadMiB: number): void {
  requireTool('mke2fs');
  const src = `${out}.files`;
  mkdirSync(src, { recursive: true });
  let bytes = 0;
  const budget = payloadMiB * 1024 * 1024;
  const walk = (dir: string): void => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const n of names) {
      if (bytes >= budget) return;
      const p = path.join(dir, n);
      let st;
      try {
        st = statSync(p, { throwIfNoEntry: false });
      } catch {
        continue;
      }
      if (!st) continue;
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size > 0 && st.size < 8 * 1024 * 1024 && bytes + st.size <= budget) {
        const dest = path.join(src, path.relative('/usr', p));
        mkdirSync(path.dirname(dest), { recursive: true });
        try {
          cpSync(p, dest);
          bytes += st.size;
        } catch {
          /* unreadable: skip */
        }
      }
    }
  };
  walk('/usr/lib');
  walk('/usr/share');
  const r = spawnSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-U', '6f1c8c2e-6d8e-4b8e-9a51-1c7d2f0a9b01', '-E', 'root_owner=0:0', '-d', src, out, `${sizeMiB}M`], {
    env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' },
  });
  rmSync(src, { recursive: true, force: true });
  if (r.status !== 0) throw new Error(`mke2fs failed: ${r.stderr}`);
}

export function sha256File(p: string): string {
  const h = createHash('sha256');
  const fd = openSync(p, 'r');
  const buf = Buffer.allocUnsafe(8 << 20);
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

export function qemuWrite(image: string, ops: Array<[pattern: number, offset: number, length: number]>): void {
  requireTool('qemu-io');
  const args = ['-f', 'raw'];
  for (const [p, o, l] of ops) args.push('-c', `write -P 0x${p.toString(16)} ${o} ${l}`);
  const r = spawnSync('qemu-io', [...args, image]);
  if (r.status !== 0) throw new Error(`qemu-io failed: ${r.stderr}`);
}

export interface TestServerOptions {
  /**
   * The encryption policy `desktop create` gives a desktop when the test does not pass `--encryption`:
   * 'off' by default, since the laptop CLI does not encrypt or escrow yet (a 'required' desktop refuses
   * its blocks with ESCROW_MISSING). Tests of the escrow itself ask for 'required'.
   */
  encryption?: 'required' | 'off';
}

/** A server data folder, with helpers to run admin commands and start the service. */
export class TestServer {
  readonly data: string;
  url = '';
  private proc: ChildProcess | null = null;
  private readonly encryption: 'required' | 'off';

  constructor(readonly dir: string, opts: TestServerOptions = {}) {
    this.data = path.join(dir, 'data');
    this.encryption = opts.encryption ?? 'off';
  }

  admin(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
    const policy = args[0] === 'desktop' && args[1] === 'create' && !args.includes('--encryption') ? ['--encryption', this.encryption] : [];
    return run(SERVER_BIN, [...args, ...policy, '--data', this.data, '--json'], env);
  }

  async init(): Promise<void> {
    const r = await this.admin(['init']);
    if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  }

  async addUser(name: string): Promise<string> {
    const r = await this.admin(['user', 'add', name]);
    if (r.code !== 0) throw new Error(`user add failed: ${r.stderr}`);
    return r.json.token as string;
  }

  async start(env: Record<string, string> = {}, port = 0, args: string[] = []): Promise<string> {
    const p = spawn(process.execPath, [SERVER_BIN, 'start', '--data', this.data, '--listen', `127.0.0.1:${port}`, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = p;
    // The service's JSON log, kept for post-mortems of a failing test.
    const log = createWriteStream(path.join(this.dir, 'server.log'), { flags: 'a' });
    p.stderr!.pipe(log);
    this.url = await new Promise<string>((resolve, reject) => {
      let out = '';
      p.stdout!.on('data', (c) => {
        out += c;
        const m = /listening on (https?:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      p.on('exit', (code) => reject(new Error(`server exited with ${code} before listening`)));
    });
    return this.url;
  }

  /** The process's exit, for tests that crash it on purpose. */
  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const p = this.proc!;
    if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve({ code: p.exitCode, signal: p.signalCode });
    return new Promise((resolve) => p.once('exit', (code, signal) => resolve({ code, signal })));
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const done = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await done;
  }

  pid(): number {
    return this.proc!.pid!;
  }

  port(): number {
    return Number(new URL(this.url).port);
  }
}

/** A laptop: its own CARRYON_HOME. */
export class Laptop {
  constructor(readonly home: string) {}
  cli(args: string[], env: Record<string, string> = {}, input?: string): Promise<RunResult> {
    return run(CLIENT_BIN, args, { CARRYON_HOME: this.home, ...env }, input);
  }
}

/** Raw HTTP against the server, for requests the CLI would never send. */
export async function http(url: string, method: string, pathname: string, token: string | null, body?: Buffer | string, headers: Record<string, string> = {}): Promise<{ status: number; json: any; body: Buffer }> {
  const res = await fetch(url + pathname, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
    body: body as any,
  });
  const buf = Buffer.from(await res.arrayBuffer());
  let json: any = null;
  try {
    json = JSON.parse(buf.toString('utf8'));
  } catch {
    /* binary */
  }
  return { status: res.status, json, body: buf };
}

/** A long-running CLI process (`serve`, `agent`) with `--json`: its events as they arrive. */
export interface CliProcess {
  proc: ChildProcess;
  events: any[];
  /** The first event of this name (already seen or still to come); 'error' also matches `{error}` lines. */
  next(event: string): Promise<any>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
  /** SIGTERM, then its exit code. */
  stop(): Promise<number | null>;
}

const spawned: ChildProcess[] = [];

/** Kill every CLI process a test started and left running (a failed test's export or agent). */
export function killSpawned(): void {
  for (const p of spawned) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}

export function spawnCli(laptop: Laptop, args: string[], env: Record<string, string> = {}): CliProcess {
  const proc = spawn(process.execPath, [CLIENT_BIN, ...args, '--json'], { env: { ...process.env, CARRYON_HOME: laptop.home, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  spawned.push(proc);
  const events: any[] = [];
  const waiters: Array<{ event: string; resolve: (e: any) => void }> = [];
  let buf = '';
  let err = '';
  proc.stderr!.on('data', (c) => (err += c));
  proc.stdout!.on('data', (c) => {
    buf += c;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const e = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      events.push(e);
      for (const w of [...waiters]) {
        if (w.event === e.event || (e.error && w.event === 'error')) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(e);
        }
      }
    }
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const next = (event: string): Promise<any> => {
    const seen = events.find((e) => e.event === event || (e.error && event === 'error'));
    return seen ? Promise.resolve(seen) : new Promise((resolve) => waiters.push({ event, resolve }));
  };
  return {
    proc, events, next, exit, stderr: () => err,
    stop: async () => {
      proc.kill('SIGTERM');
      return (await exit).code;
    },
  };
}
