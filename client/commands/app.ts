// carryon app [--port N] [--no-open]: the traveller's app, a local web page on 127.0.0.1 that shows
// this laptop's desktops and checks them out and in through the same engines as the CLI (client/app/;
// docs/app.md). It prints the URL (carrying the per-home secret, HOME/app-secret) and opens the
// browser at it with xdg-open; it runs until stopped (Ctrl-C, SIGTERM, or its systemd user unit).
// One app per home: HOME/run/app.json says where it listens; a second `carryon app` (the desktop
// entry, share/carryon.desktop) opens the browser at the running one and exits.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { CarryonError, describeFailure } from '../../src/index.js';
import { startAppServer } from '../app/app-server.js';
import { AppService } from '../app/app-service.js';
import { optsOf, withCommonOptions } from '../cli-util.js';
import { homeOf } from '../state.js';

/** HOME/app-secret: made once (32 random bytes, base64url), readable by this user only. */
export function appSecret(home: string): string {
  const file = path.join(home, 'app-secret');
  try {
    const s = readFileSync(file, 'utf8').trim();
    if (s.length >= 32) {
      chmodSync(file, 0o600);
      return s;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const s = randomBytes(32).toString('base64url');
  writeFileSync(file, `${s}\n`, { mode: 0o600 });
  return s;
}

/** The app already serving this home, if one answers: its port. */
async function runningApp(home: string): Promise<number | null> {
  let rec: { pid: number; port: number };
  try {
    rec = JSON.parse(readFileSync(path.join(home, 'run', 'app.json'), 'utf8')) as { pid: number; port: number };
    process.kill(rec.pid, 0);
  } catch {
    return null;
  }
  try {
    await fetch(`http://127.0.0.1:${rec.port}/`, { signal: AbortSignal.timeout(2000) });
    return rec.port;
  } catch {
    return null;
  }
}

export function registerApp(program: Command): void {
  withCommonOptions(program.command('app').description("the traveller's app: a local web page (127.0.0.1) to check desktops out and in, with progress, lease and merge report"))
    .option('--port <n>', 'listen on 127.0.0.1:PORT (default: any free port)')
    .option('--no-open', 'do not open a browser; only print the URL')
    .action(async (_o, cmd: Command) => {
      const opts = optsOf(cmd);
      const out = (event: string, fields: Record<string, unknown>, human: string): void => {
        process.stdout.write(opts.json ? `${JSON.stringify({ event, ...fields })}\n` : `${human}\n`);
      };
      try {
        const port = opts.port === undefined ? 0 : Number(opts.port);
        if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CarryonError('INVALID_ARGUMENT', `--port must be a port number (0-65535), not ${String(opts.port)}`);
        const home = homeOf(opts.home);
        const secret = appSecret(home);
        const other = await runningApp(home);
        if (other !== null && (opts.port === undefined || port === other)) {
          const openUrl = `http://127.0.0.1:${other}/?secret=${encodeURIComponent(secret)}`;
          out('already-running', { url: `http://127.0.0.1:${other}/`, openUrl, port: other }, `carryon app already runs for this home: open ${openUrl}`);
          if (opts.open !== false) openBrowser(openUrl, out);
          return;
        }
        const service = new AppService(opts);
        const server = await startAppServer(service, secret, port);
        const record = path.join(home, 'run', 'app.json');
        mkdirSync(path.dirname(record), { recursive: true, mode: 0o700 });
        writeFileSync(record, JSON.stringify({ pid: process.pid, port: server.port, since: new Date().toISOString() }), { mode: 0o600 });
        out('listening', { url: server.url, openUrl: server.openUrl, port: server.port }, `carryon app: open ${server.openUrl}\n(the link carries this laptop's app secret, ${path.join(home, 'app-secret')}: do not share it)`);
        if (opts.open !== false) openBrowser(server.openUrl, out);
        const stop = (): void => {
          rmSync(record, { force: true });
          void server.close().then(() => process.exit(0));
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      } catch (err) {
        const f = describeFailure(err);
        if (opts.json) process.stdout.write(`${f.json}\n`);
        process.stderr.write(`carryon: ${f.text}\n`);
        process.exitCode = f.exitCode;
      }
    });
}

function openBrowser(url: string, out: (event: string, fields: Record<string, unknown>, human: string) => void): void {
  const child = spawn('xdg-open', [url], { detached: true, stdio: 'ignore' });
  child.on('error', (err) => out('no-browser', { reason: err.message }, `could not start xdg-open (${err.message}): open the link above yourself`));
  child.unref();
}
