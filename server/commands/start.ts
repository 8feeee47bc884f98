// carryon-server start: run the HTTP service until SIGINT/SIGTERM.
import type { Command } from 'commander';
import { CarryonError, describeFailure } from '../../src/index.js';
import { dataDirOf } from '../cli-util.js';
import { openDataDir } from '../db.js';
import { CarryonHttpServer } from '../http-server.js';
import { SqliteMeta } from '../meta.js';
import { SqlitePersonaMeta } from '../persona-meta.js';
import { PersonaService } from '../persona-service.js';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { optsOf, withCommonOptions } from './options.js';

function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  if (!m || Number(m[3]) > 65535) throw new CarryonError('INVALID_ARGUMENT', `--listen must be HOST:PORT (port 0 picks a free one), got ${s}`);
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

export function registerStart(program: Command): void {
  withCommonOptions(program.command('start').description('serve the HTTP API'))
    .option('--listen <host:port>', 'address to listen on; port 0 picks a free one', '127.0.0.1:7480')
    .option('--min-free <bytes>', 'refuse uploads (DISK_FULL) while the data folder has less than this free (or CARRYON_MIN_FREE)', process.env.CARRYON_MIN_FREE ?? String(64 * 1024 * 1024))
    .action(async (_o, cmd: Command) => {
      const opts = optsOf(cmd);
      try {
        const { host, port } = parseListen(String(opts.listen));
        const minFreeBytes = Number(opts.minFree);
        if (!Number.isSafeInteger(minFreeBytes) || minFreeBytes < 0) throw new CarryonError('INVALID_ARGUMENT', `--min-free must be a number of bytes, got ${String(opts.minFree)}`);
        const d = openDataDir(dataDirOf(opts));
        const log = (f: Record<string, unknown>): void => void process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...f })}\n`);
        const meta = new SqliteMeta(d.db);
        const personas = new PersonaService(meta, new SqlitePersonaMeta(d.db), d.store, path.join(d.root, 'tmp'));
        mkdirSync(path.join(d.root, 'tmp'), { recursive: true });
        const server = new CarryonHttpServer(meta, d.store, personas, log, undefined, { dataRoot: d.root, minFreeBytes });
        const url = await server.listen(host, port);
        process.stdout.write(opts.json ? `${JSON.stringify({ url })}\n` : `carryon-server listening on ${url}\n`);
        const stop = async (): Promise<void> => {
          await server.close();
          d.close();
          process.exit(0);
        };
        process.once('SIGINT', () => void stop());
        process.once('SIGTERM', () => void stop());
      } catch (err) {
        const f = describeFailure(err);
        if (opts.json) process.stdout.write(`${f.json}\n`);
        process.stderr.write(`carryon-server: ${f.text}\n`);
        process.exitCode = f.exitCode;
      }
    });
}
