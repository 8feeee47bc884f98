// The registry benchmark: bytes over the wire and peak memory of carryon's registry sync, with the real
// CLI against a real server, on a generated 100,000-key HKEY_CURRENT_USER registry (scripts/fixtures/
// registry.ts, in regedit's own file layout), next to rsync -az on the same .reg file.
// Measured: `carryon persona reg import` of the whole registry; its first check-in; a check-in with no
// registry change; a check-in with one dword changed (the difference of the two is what the value
// costs); a check-in merged with a push another device made meanwhile (one value each). Bytes are
// `bytesSent` of `carryon checkin --json`; the CLI's peak RSS is /usr/bin/time's; the server's is its
// VmHWM (/proc/PID/status) over the step, the server started afresh (same port) before each step: a
// long-running server's RSS stays at its highest step (V8 and malloc keep what they grew to).
//
// Usage: node dist/scripts/bench/registry-bench.js [--keys 100000] [--seed 1] [--out FILE] [--keep]

import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NOISE_KEY_PATHS, generatedRegistryFile, oneValueEdit } from '../fixtures/registry.js';
import { readArgs } from '../lib/args.js';
import { CLIENT_BIN, carryonMissing, carryonServer, num, parseJsonOutput, startServer, str, type Json, type RunningServer } from '../lib/carryon-cli.js';
import { mb } from '../lib/format.js';
import { parseRsyncStats } from '../lib/measure.js';
import { requireTool, run } from '../lib/proc.js';

const USAGE = `usage: registry-bench.js [--keys 100000] [--seed 1] [--out FILE] [--keep]
  --keys   keys in the generated registry (default 100000)
  --seed   seed of the generated registry
  --out    also write the results as JSON to FILE
  --keep   keep the temp folder`;

interface Options {
  keys: number;
  seed: number;
  out?: string;
  keep: boolean;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { keys: 100_000, seed: 1, keep: false };
  for (const { flag, value } of readArgs(argv, USAGE)) {
    if (flag === '--keys') o.keys = Number(value());
    else if (flag === '--seed') o.seed = Number(value());
    else if (flag === '--out') o.out = value();
    else if (flag === '--keep') o.keep = true;
    else if (flag === '--help' || flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${flag}\n${USAGE}`);
  }
  if (!Number.isSafeInteger(o.keys) || o.keys < 10) throw new Error(`--keys must be an integer of at least 10\n${USAGE}`);
  return o;
}

const log = (s: string): void => console.error(s);
const USER = 'bench';
const DESK = 'bench-registry';

/** `carryon ARGS --json` under /usr/bin/time: its JSON, peak RSS (bytes) and wall seconds. */
async function cli(home: string, ...args: string[]): Promise<{ json: Json; maxRss: number; seconds: number }> {
  const r = await run('/usr/bin/time', ['-f', 'MAXRSS_KB %M', process.execPath, CLIENT_BIN, ...args, '--json'], { env: { ...process.env, CARRYON_HOME: home }, okCodes: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] });
  const json = parseJsonOutput(r.stdout);
  const rss = /MAXRSS_KB (\d+)/.exec(r.stderr);
  if (r.code !== 0 || !json || !rss) throw new Error(`carryon ${args.join(' ')} failed (exit ${r.code}): ${r.stdout.slice(-1500)}${r.stderr.slice(-1500)}`);
  return { json, maxRss: Number(rss[1]) * 1024, seconds: r.seconds };
}

/** The server's peak RSS since the last reset (VmHWM), in bytes. */
function serverPeak(server: RunningServer): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.pid}/status`, 'utf8'));
  if (!m) throw new Error('no VmHWM in /proc/PID/status');
  return Number(m[1]) * 1024;
}


interface Row {
  step: string;
  bytesSent?: number;
  cliMaxRss: number;
  serverMaxRss?: number;
  seconds: number;
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const missing = carryonMissing();
  if (missing) throw new Error(missing);
  requireTool('rsync', 'rsync');
  const work = mkdtempSync(join(tmpdir(), 'registry-bench-'));
  const data = join(work, 'server');
  const homeA = join(work, 'laptop-a');
  const homeB = join(work, 'device-b');
  let server: RunningServer | undefined;
  const rows: Row[] = [];
  try {
    const regFile = join(work, 'registry.reg');
    const reg = generatedRegistryFile(o.keys, o.seed, true);
    writeFileSync(regFile, reg);
    log(`registry: ${o.keys} keys (+ ${NOISE_KEY_PATHS.length} the default exclude list leaves out), ${mb(reg.length)} MB as regedit writes it (UTF-16LE)`);
    const edit = (i: number, name: string, v: number): string => {
      const f = join(work, `edit-${i}-${name}-${v}.reg`);
      writeFileSync(f, oneValueEdit(i, name, v));
      return f;
    };
    const k1 = Math.floor(o.keys / 3);
    const k2 = Math.floor(o.keys / 2);

    await carryonServer(data, 'init');
    server = await startServer(data);
    const token = str((await carryonServer(data, 'user', 'add', USER)).json, 'token');
    const img = join(work, 'tiny.raw');
    await run('truncate', ['-s', '4M', img]);
    await carryonServer(data, 'image', 'publish', 'tiny', img);
    await carryonServer(data, 'desktop', 'create', DESK, '--user', USER, '--image', 'tiny', '--encryption', 'off');
    await cli(homeA, 'login', server.url, '--token', token, '--device-name', 'laptop-a');
    await cli(homeB, 'login', server.url, '--token', token, '--device-name', 'device-b');

    const co = await cli(homeA, 'checkout', DESK);
    const personaDir = str(co.json.persona as Json, 'dir');
    const listen = new URL(server.url).host;
    const step = async (name: string, fn: () => Promise<{ json: Json; maxRss: number; seconds: number }>, bytes = true): Promise<Json> => {
      await server!.stop();
      server = await startServer(data, 30_000, listen);
      const r = await fn();
      const row: Row = { step: name, cliMaxRss: r.maxRss, serverMaxRss: serverPeak(server!), seconds: r.seconds, ...(bytes ? { bytesSent: num(r.json, 'bytesSent') } : {}) };
      rows.push(row);
      log(`  ${name}: ${bytes ? `${row.bytesSent} B sent, ` : ''}CLI ${mb(row.cliMaxRss, 0)} MB, server ${mb(row.serverMaxRss!, 0)} MB peak RSS, ${r.seconds.toFixed(1)} s`);
      return r.json;
    };

    await step('persona reg import (whole registry)', () => cli(homeA, 'persona', 'reg', 'import', DESK, regFile), false);
    await cli(homeA, 'persona', 'reg', 'import', DESK, edit(k1, 'BenchCounter', 0));
    await step('check-in: the whole registry, first time', () => cli(homeA, 'checkin', DESK));
    await cli(homeA, 'checkout', DESK);
    const none = await step('check-in: no registry change', () => cli(homeA, 'checkin', DESK));
    await cli(homeA, 'checkout', DESK);
    const before = join(work, 'before.reg');
    copyFileSync(join(personaDir, 'registry.reg'), before);
    await cli(homeA, 'persona', 'reg', 'import', DESK, edit(k1, 'BenchCounter', 1));
    const after = join(work, 'after.reg');
    copyFileSync(join(personaDir, 'registry.reg'), after);
    const one = await step('check-in: one dword changed', () => cli(homeA, 'checkin', DESK));

    // Merged: another device pushes one value while the laptop has the desktop out.
    await cli(homeA, 'checkout', DESK);
    await cli(homeB, 'checkout', DESK, '--persona-only');
    await cli(homeB, 'persona', 'reg', 'import', DESK, edit(k2, 'BenchOther', 7));
    await step('persona push from another device (one value)', () => cli(homeB, 'persona', 'push', DESK));
    await cli(homeA, 'persona', 'reg', 'import', DESK, edit(k1, 'BenchCounter', 2));
    const merged = await step('check-in merged with that push (one value each)', () => cli(homeA, 'checkin', DESK));
    if ((merged.persona as Json | null)?.merged !== true) throw new Error('the last check-in did not merge');

    // rsync -az on the same file: the laptop's registry.reg before and after the one-value edit.
    const dst = join(work, 'rsync-dst');
    mkdirSync(dst);
    copyFileSync(before, join(dst, 'registry.reg'));
    const rs = await run('rsync', ['-az', '--no-whole-file', '--stats', after, join(dst, 'registry.reg')]);
    const st = parseRsyncStats(rs.stdout);
    const rsyncBytes = st.sent + st.received;
    const oneValue = num(one, 'bytesSent') - num(none, 'bytesSent');

    const out = {
      keys: o.keys, regFileBytes: reg.length, rows,
      oneValueBytes: oneValue, rsync: { bytes: rsyncBytes, sent: st.sent, received: st.received, seconds: rs.seconds },
    };
    console.log(`\nregistry: ${o.keys} keys, ${mb(reg.length)} MB (.reg, UTF-16LE)`);
    console.log('| step | bytes sent | CLI peak RSS (MB) | server peak RSS (MB) | wall s |\n|---|---:|---:|---:|---:|');
    for (const r of rows) console.log(`| ${r.step} | ${r.bytesSent ?? '-'} | ${mb(r.cliMaxRss, 0)} | ${r.serverMaxRss === undefined ? '-' : mb(r.serverMaxRss, 0)} | ${r.seconds.toFixed(1)} |`);
    console.log(`\none dword changed costs ${oneValue} B over a check-in with no registry change (target < 4096); rsync -az --no-whole-file of the same .reg file: ${rsyncBytes} B (${st.sent} sent + ${st.received} received)`);
    if (o.out) writeFileSync(o.out, `${JSON.stringify(out, null, 2)}\n`);
  } finally {
    if (server) await server.stop();
    if (o.keep) log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
