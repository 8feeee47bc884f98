// The streamed persona benchmark: what a user waits for through `carryon persona mount`. A seeded
// profile of --size bytes (8 MiB files of AES-CTR bytes: every chunk distinct) is pushed by one device;
// laptop A checks it out with --persona-only --stream and mounts it (--no-download, so nothing moves
// unless asked). Measured, in this order: listing the whole tree (lstat of every entry); the first open
// of small files and of 8 MiB files never fetched (chunks over loopback HTTP, written whole, renamed); a second open of the same
// files; `carryon persona fetch` of the rest; the first read of every file once its chunks are local
// (made whole from the cache); the read throughput of whole files through the mount against the same
// files read directly from the backing folder. Warm page cache; loopback server on the same machine.
//
// Usage: node dist/scripts/bench/persona-stream-bench.js [--size 512M] [--keep]
import { spawn } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';
import { carryon, carryonServer, CLIENT_BIN, startServer, str } from '../lib/carryon-cli.js';
import { parseSize, table } from '../lib/format.js';
import { readArgs } from '../lib/args.js';
import { run } from '../lib/proc.js';

const USAGE = 'usage: persona-stream-bench.js [--size 512M] [--keep]';
const MiB = 1024 * 1024;
const FILE = 8 * MiB;

let size = 512 * MiB;
let keep = false;
for (const { flag, value } of readArgs(process.argv.slice(2), USAGE)) {
  if (flag === '--size') size = parseSize(value());
  else if (flag === '--keep') keep = true;
  else throw new Error(`unknown option ${flag}\n${USAGE}`);
}
const files = Math.max(16, Math.floor(size / FILE));
const relOf = (i: number): string => `Documents/d${i % 8}/file${i}.bin`;

function seeded(seed: number, n: number): Buffer {
  const key = createHash('sha256').update(`stream-bench-${seed}`).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(n));
}

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

/** Read a whole file in 1 MiB reads; returns its bytes. */
function readAll(p: string, buf: Buffer): number {
  const fd = openSync(p, 'r');
  let n = 0;
  try {
    for (let r; (r = readSync(fd, buf, 0, buf.length, null)) > 0; ) n += r;
  } finally {
    closeSync(fd);
  }
  return n;
}

function walk(root: string, rel = ''): number {
  let n = 0;
  for (const name of readdirSync(join(root, rel))) {
    const r = rel ? `${rel}/${name}` : name;
    n++;
    if (lstatSync(join(root, r)).isDirectory()) n += walk(root, r);
  }
  return n;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const dir = mkdtempSync(join(tmpdir(), 'carryon-stream-bench-'));
const data = join(dir, 'data');
const src = join(dir, 'src');
const a = join(dir, 'a');
const at = join(dir, 'view');
const server = await (async () => {
  await carryonServer(data, 'init');
  const token = str((await carryonServer(data, 'user', 'add', 'alice')).json, 'token');
  await run('truncate', ['-s', '4M', join(dir, 'img.raw')]);
  await carryonServer(data, 'image', 'publish', 'img', join(dir, 'img.raw'));
  await carryonServer(data, 'desktop', 'create', 'desk', '--user', 'alice', '--image', 'img', '--encryption', 'off');
  const s = await startServer(data);
  for (const [home, name] of [[src, 'source'], [a, 'laptop-A']]) await carryon(home!, 'login', s.url, '--token', token, '--device-name', name!);
  return s;
})();
try {
  await carryon(src, 'checkout', 'desk', '--persona-only');
  const profile = join(src, 'desktops', 'desk', 'persona', 'profile');
  for (let i = 0; i < files; i++) {
    mkdirSync(join(profile, `Documents/d${i % 8}`), { recursive: true });
    writeFileSync(join(profile, relOf(i)), seeded(i, FILE));
  }
  // Small files, as an application's settings: what a user waits for most often.
  mkdirSync(join(profile, 'AppData'), { recursive: true });
  for (let i = 0; i < 16; i++) writeFileSync(join(profile, 'AppData', `settings${i}.ini`), seeded(1000 + i, 4096));
  await carryon(src, 'persona', 'push', 'desk');
  await carryon(a, 'checkout', 'desk', '--persona-only', '--stream');

  const mount = spawn(process.execPath, [CLIENT_BIN, 'persona', 'mount', 'desk', '--at', at, '--no-download', '--json'], { env: { ...process.env, CARRYON_HOME: a }, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    readline.createInterface({ input: mount.stdout! }).on('line', (l) => {
      const e = JSON.parse(l) as { event?: string; error?: unknown };
      if (e.event === 'mounted') resolve();
      if (e.error) reject(new Error(l));
    });
  });
  const rows: string[][] = [];
  let t = now();
  const entries = walk(at);
  rows.push(['list the whole tree (lstat every entry)', `${entries} entries`, `${(now() - t).toFixed(1)} ms`]);

  const buf = Buffer.allocUnsafe(MiB);
  const small: number[] = [];
  for (let i = 0; i < 16; i++) {
    t = now();
    closeSync(openSync(join(at, 'AppData', `settings${i}.ini`), 'r'));
    small.push(now() - t);
  }
  rows.push(['first open, from the server (4 KiB file)', 'median of 16', `${median(small).toFixed(1)} ms`]);
  const cold: number[] = [];
  const warm: number[] = [];
  for (let i = 0; i < 8; i++) {
    t = now();
    closeSync(openSync(join(at, relOf(i)), 'r'));
    cold.push(now() - t);
  }
  for (let i = 0; i < 8; i++) {
    t = now();
    closeSync(openSync(join(at, relOf(i)), 'r'));
    warm.push(now() - t);
  }
  rows.push(['first open, chunks from the server (8 MiB file)', 'median of 8', `${median(cold).toFixed(1)} ms`]);
  rows.push(['second open of the same file', 'median of 8', `${(median(warm) * 1000).toFixed(0)} µs`]);

  t = now();
  await carryon(a, 'persona', 'fetch', 'desk');
  const fetchMs = now() - t;
  rows.push(['`carryon persona fetch` of the rest', `${((files - 8) * FILE) / MiB} MiB`, `${(((files - 8) * FILE) / MiB / (fetchMs / 1000)).toFixed(0)} MiB/s`]);

  t = now();
  let bytes = 0;
  for (let i = 8; i < files; i++) bytes += readAll(join(at, relOf(i)), buf);
  const hydrateMs = now() - t;
  rows.push(['first read once local (made whole from the cache)', `${bytes / MiB} MiB`, `${(bytes / MiB / (hydrateMs / 1000)).toFixed(0)} MiB/s`]);

  const backing = join(a, 'desktops', 'desk', 'persona', 'profile');
  for (const [label, root] of [['read whole files through the mount', at], ['read the same files from the backing folder', backing], ['read whole files through the mount (again)', at]] as const) {
    t = now();
    bytes = 0;
    for (let i = 0; i < files; i++) bytes += readAll(join(root, relOf(i)), buf);
    rows.push([label, `${bytes / MiB} MiB`, `${(bytes / MiB / ((now() - t) / 1000)).toFixed(0)} MiB/s`]);
  }
  mount.kill('SIGTERM');
  await new Promise((r) => mount.once('exit', r));
  console.log(`streamed persona, ${files} files of 8 MiB (${(files * FILE) / MiB} MiB), loopback server, warm page cache\n`);
  console.log(table(['what', 'amount', 'result'], rows));
} finally {
  await server.stop();
  if (!keep) rmSync(dir, { recursive: true, force: true });
}
