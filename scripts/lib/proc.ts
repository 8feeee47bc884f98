// Child processes for the scripts: run a tool to completion, time it, and fail with a message that says
// which command broke and what it printed. Also finds system tools (mke2fs lives in /usr/sbin, which a
// non-root PATH may lack) and copies disk images sparsely. Knows nothing about carryon itself.

import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  input?: Buffer | string;
  /** Accept these exit codes besides 0 (rsync and cmp use 1 for "differs"). */
  okCodes?: number[];
}

/** Quote an argv for messages only; never passed to a shell. */
export function showCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export class CommandError extends Error {
  constructor(
    message: string,
    readonly result?: RunResult,
  ) {
    super(message);
    this.name = 'CommandError';
  }
}

let settle = false;
/**
 * Benchmarks: flush dirty pages (`sync`, untimed) before every command, so no measured run pays for
 * the writeback of an earlier step's gigabyte copies. A run that fsyncs its output (carryon does)
 * would otherwise wait behind them while one that does not (casync, zstd) would not.
 */
export function settleBeforeEachRun(on: boolean): void {
  settle = on;
}

/** Run a command to completion, collecting its output; throws CommandError on a bad exit code. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  if (settle) spawnSync('sync');
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(new CommandError(`cannot start ${showCommand(cmd, args)}: ${e.message}`)));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    child.on('close', (code, signal) => {
      const result: RunResult = {
        code: code ?? 128,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        seconds: Number(process.hrtime.bigint() - started) / 1e9,
      };
      if (result.code === 0 || opts.okCodes?.includes(result.code)) return resolve(result);
      const why = signal ? `killed by ${signal}` : `exit code ${result.code}`;
      const tail = (result.stderr.trim() || result.stdout.trim()).split('\n').slice(-15).join('\n');
      reject(new CommandError(`${showCommand(cmd, args)} failed (${why})${tail ? `:\n${tail}` : ''}`, result));
    });
  });
}

/** Absolute path of a tool, or undefined. Looks in PATH and the sbin folders. */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

export function requireTool(name: string, debianPackage: string): string {
  const p = findTool(name);
  if (!p) throw new Error(`${name} not found: install it with \`apt-get install -y ${debianPackage}\``);
  return p;
}

/** Install Debian packages (as root) when a tool is missing. Returns false if it could not. */
export function aptInstall(packages: string[], log: (line: string) => void): boolean {
  log(`installing ${packages.join(' ')} with apt-get (tool missing)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let r = spawnSync('apt-get', ['install', '-y', ...packages], { stdio: 'inherit', env });
  if (r.status !== 0) {
    // A fresh machine may have no package lists yet.
    spawnSync('apt-get', ['update'], { stdio: 'inherit', env });
    r = spawnSync('apt-get', ['install', '-y', ...packages], { stdio: 'inherit', env });
  }
  return r.status === 0;
}

/** Copy a disk image keeping it sparse: holes stay holes, so a 1 GiB image costs only its data. */
export async function copySparse(src: string, dst: string): Promise<void> {
  await run('cp', ['--sparse=always', '--', src, dst]);
}

/** The first line a tool prints about its version, or 'unknown' (benches record what they measured). */
export async function toolVersion(cmd: string, args: string[]): Promise<string> {
  try {
    const r = await run(cmd, args, { okCodes: [1] });
    return (r.stdout || r.stderr).split('\n')[0]!.trim();
  } catch {
    return 'unknown';
  }
}
