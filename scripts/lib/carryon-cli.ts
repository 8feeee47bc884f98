// The carryon programs as a user runs them: `node bin/carryon.js` and `node bin/carryon-server.js` as
// child processes, with a laptop home in CARRYON_HOME and a server folder in CARRYON_DATA. Used by the
// demo and the benchmark so both exercise the real CLI contract (one JSON object on stdout with --json,
// errors as {"error":{code,message}} and a non-zero exit). Imports nothing from client/ or server/.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CommandError, run } from './proc.js';

/** Repo root: this file compiles to <root>/dist/scripts/lib/carryon-cli.js. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const CLIENT_BIN = join(REPO_ROOT, 'bin', 'carryon.js');
export const SERVER_BIN = join(REPO_ROOT, 'bin', 'carryon-server.js');

/** Why the CLIs cannot run yet (not built), or undefined when they can. */
export function carryonMissing(): string | undefined {
  for (const f of ['dist/client/main.js', 'dist/server/main.js']) {
    if (!existsSync(join(REPO_ROOT, f))) return `${f} is missing: build with \`npx tsc -b\` in ${REPO_ROOT}`;
  }
  return undefined;
}

export type Json = Record<string, unknown>;

export interface CliResult {
  json: Json;
  seconds: number;
}

/** With --json the CLI prints one object at the end; tolerate stray lines before it. */
export function parseJsonOutput(stdout: string): Json | undefined {
  const text = stdout.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text) as Json;
  } catch {
    const last = text.split('\n').reverse().find((l) => l.trim().startsWith('{'));
    if (!last) return undefined;
    try {
      return JSON.parse(last) as Json;
    } catch {
      return undefined;
    }
  }
}

async function runCli(bin: string, label: string, envVar: string, dir: string, args: string[]): Promise<CliResult> {
  const env = { ...process.env, [envVar]: dir };
  const argv = [bin, ...args, '--json'];
  const shown = args.map((a, i) => (args[i - 1] === '--token' ? '***' : a)).join(' '); // no secrets in logs
  try {
    const r = await run(process.execPath, argv, { env });
    const json = parseJsonOutput(r.stdout);
    if (!json) throw new Error(`${label} ${shown} printed no JSON object:\n${r.stdout.slice(-2000)}`);
    return { json, seconds: r.seconds };
  } catch (e) {
    if (!(e instanceof CommandError) || !e.result) throw e;
    const err = parseJsonOutput(e.result.stdout)?.error as { code?: string; message?: string } | undefined;
    const detail = err ? `${err.code}: ${err.message}` : (e.result.stderr.trim() || e.result.stdout.trim()).split('\n').slice(-10).join('\n');
    throw new Error(`\`${label} ${shown}\` failed (exit ${e.result.code}): ${detail}`);
  }
}

/** `carryon ARGS --json` on the laptop whose home is `home`. */
export function carryon(home: string, ...args: string[]): Promise<CliResult> {
  return runCli(CLIENT_BIN, 'carryon', 'CARRYON_HOME', home, args);
}

/** `carryon-server ARGS --json` on the server folder `data`. */
export function carryonServer(data: string, ...args: string[]): Promise<CliResult> {
  return runCli(SERVER_BIN, 'carryon-server', 'CARRYON_DATA', data, args);
}

export function num(json: Json, key: string): number {
  const v = json[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`expected a number in "${key}", got ${JSON.stringify(v)} in ${JSON.stringify(json)}`);
  return v;
}

export function str(json: Json, key: string): string {
  const v = json[key];
  if (typeof v !== 'string') throw new Error(`expected a string in "${key}", got ${JSON.stringify(v)} in ${JSON.stringify(json)}`);
  return v;
}

const running = new Set<ChildProcess>();
// Last resort: never leave a server behind when a script dies.
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

export interface RunningServer {
  url: string;
  pid: number;
  /** Last lines the server printed, for error messages. */
  logTail(): string;
  /** Undefined while running; else how it ended (exit code or signal). */
  exitedWith(): string | undefined;
  /** SIGTERM, then SIGKILL after 10 s. Resolves with the exit code (or signal name). */
  stop(): Promise<string>;
}

/** Why a server we still needed is gone, with its last lines; undefined while it runs. */
export function serverGone(server: RunningServer): string | undefined {
  const how = server.exitedWith();
  if (how === undefined) return undefined;
  const hint = how === '0' || how === 'SIGTERM' || how === 'SIGINT' ? ' (it ends so only when signalled: did another process stop it, e.g. `pkill -f carryon-server`?)' : '';
  return `carryon-server exited (${how}) while still needed${hint}; its last lines:\n${server.logTail()}`;
}

/** `carryon-server start --listen 127.0.0.1:0` (or `listen`); resolves once its first line gives the URL. */
export function startServer(data: string, timeoutMs = 30_000, listen = '127.0.0.1:0'): Promise<RunningServer> {
  const child = spawn(process.execPath, [SERVER_BIN, 'start', '--listen', listen], {
    env: { ...process.env, CARRYON_DATA: data },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const lines: string[] = [];
  const keep = (chunk: Buffer): void => {
    lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    if (lines.length > 200) lines.splice(0, lines.length - 200);
  };
  let ended: string | undefined;
  const exited = new Promise<string>((resolveExit) => {
    child.on('exit', (code, signal) => {
      running.delete(child);
      ended = signal ?? String(code);
      resolveExit(ended);
    });
  });
  const server: RunningServer = {
    url: '',
    pid: child.pid ?? -1,
    logTail: () => lines.slice(-20).join('\n'),
    exitedWith: () => ended,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const how = await exited;
      clearTimeout(timer);
      return how;
    },
  };
  return new Promise((resolveStart, rejectStart) => {
    let out = '';
    const timer = setTimeout(() => {
      void server.stop();
      rejectStart(new Error(`carryon-server did not print its URL within ${timeoutMs / 1000} s:\n${server.logTail()}`));
    }, timeoutMs);
    child.stdout!.on('data', (chunk: Buffer) => {
      keep(chunk);
      if (server.url) return;
      out += chunk.toString('utf8');
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      // Plain: "carryon-server listening on http://127.0.0.1:PORT"; --json: {"url":"http://..."}
      const m = /https?:\/\/[^\s"']+/.exec(out.slice(0, nl));
      clearTimeout(timer);
      if (!m) {
        void server.stop();
        rejectStart(new Error(`carryon-server's first line has no URL: ${out.slice(0, nl)}`));
        return;
      }
      server.url = m[0];
      resolveStart(server);
    });
    child.stderr!.on('data', keep);
    child.on('error', (e) => {
      clearTimeout(timer);
      rejectStart(new Error(`cannot start carryon-server: ${e.message}`));
    });
    void exited.then((how) => {
      if (server.url) return;
      clearTimeout(timer);
      rejectStart(new Error(`carryon-server start exited (${how}) before printing its URL:\n${server.logTail()}`));
    });
  });
}
