// The memory bench: peak resident memory of the laptop CLI and of the server through a check-out, a
// check-in and a second check-out of a big sparse image (10 GiB, 64 MiB of data scattered over it),
// against the bound issue 13 keeps ("CLI and server under 400 MB on the 10 GiB sparse image": 400 MiB
// in test/e2e/big-sparse.test.ts, which runs the same flow and asserts it). This one reports the
// figures for `npm run bench`, in the `comparisons` shape run-all reads (the bound stands where a
// peer would).
// CLI peaks are the CLI's own `maxRssBytes`; the server's is VmHWM from /proc/PID/status at the end.
//
// Usage: node dist/scripts/bench/memory-bench.js [--size 10G] [--out FILE] [--keep]

import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readArgs } from '../lib/args.js';
import { carryon, carryonMissing, carryonServer, num, startServer, str, type RunningServer } from '../lib/carryon-cli.js';
import { mb, parseSize } from '../lib/format.js';
import { requireTool, run } from '../lib/proc.js';

const USAGE = `usage: memory-bench.js [--size 10G] [--out FILE] [--keep]
  --size   apparent size of the sparse image (default 10G; 64 x 1 MiB of data spread over it, 2 changed)
  --out    also write the results as JSON to FILE
  --keep   keep the temp folder`;

/** test/e2e/big-sparse.test.ts's bound. */
const LIMIT = 400 * 1024 ** 2;
const MiB = 1024 ** 2;

function parseOptions(argv: string[]): { size: number; out?: string; keep: boolean } {
  const o: { size: number; out?: string; keep: boolean } = { size: 10 * 1024 ** 3, keep: false };
  for (const { flag, value } of readArgs(argv, USAGE)) {
    if (flag === '--size') o.size = parseSize(value());
    else if (flag === '--out') o.out = value();
    else if (flag === '--keep') o.keep = true;
    else if (flag === '--help' || flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${flag}\n${USAGE}`);
  }
  if (o.size < 256 * MiB || o.size % (64 * 1024) !== 0) throw new Error(`--size must be a multiple of 64 KiB and at least 256M\n${USAGE}`);
  return o;
}

/** qemu-io writes of a byte pattern: [pattern, offset, length]. */
async function writePatterns(file: string, ops: Array<[number, number, number]>): Promise<void> {
  await run('qemu-io', ['-f', 'raw', ...ops.flatMap(([p, off, len]) => ['-c', `write -q -P ${p} ${off} ${len}`]), file]);
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  const missing = carryonMissing();
  if (missing) throw new Error(missing);
  requireTool('qemu-io', 'qemu-utils');
  const work = mkdtempSync(join(tmpdir(), 'carryon-memory-bench-'));
  let server: RunningServer | undefined;
  try {
    const image = join(work, 'big.raw');
    await run('truncate', ['-s', String(o.size), image]);
    // 64 extents of 1 MiB over the whole range, as an OS install would leave data
    const ops: Array<[number, number, number]> = [];
    for (let k = 0; k < 64; k++) ops.push([0x10 + k, Math.floor((k * o.size) / 64 / 65536) * 65536, MiB]);
    await writePatterns(image, ops);
    const data = join(work, 'server');
    await carryonServer(data, 'init');
    const token = str((await carryonServer(data, 'user', 'add', 'bench')).json, 'token');
    const pub = await carryonServer(data, 'image', 'publish', 'big', image);
    await carryonServer(data, 'desktop', 'create', 'big-desk', '--user', 'bench', '--image', 'big', '--encryption', 'off');
    console.log(`published a ${mb(o.size, 0)} MB sparse image (${String(pub.json.blocks)} blocks) in ${pub.seconds.toFixed(1)} s`);
    server = await startServer(data);
    const steps: Array<{ step: string; maxRssBytes: number; seconds: number }> = [];
    const laptop = async (name: string): Promise<string> => {
      const home = join(work, name);
      mkdirSync(home);
      await carryon(home, 'login', server!.url, '--token', token);
      return home;
    };
    const step = async (name: string, home: string, ...args: string[]): Promise<Record<string, unknown>> => {
      const r = await carryon(home, ...args);
      steps.push({ step: name, maxRssBytes: num(r.json, 'maxRssBytes'), seconds: r.seconds });
      console.log(`  ${name}: CLI peak ${mb(num(r.json, 'maxRssBytes'), 0)} MB in ${r.seconds.toFixed(1)} s`);
      return r.json;
    };
    const a = await laptop('laptop-a');
    const co = await step('checkout', a, 'checkout', 'big-desk');
    const disk = str(co, 'disk');
    if (statSync(disk).size !== o.size) throw new Error(`the checked-out disk is ${statSync(disk).size} bytes, not ${o.size}`);
    await writePatterns(disk, [[0xee, Math.floor(o.size / 3 / MiB) * MiB, 4 * MiB], [0xef, o.size - 64 * MiB + 12345 * 4096, 8192]]);
    await step('checkin of 4 MiB + 8 KiB changed', a, 'checkin', 'big-desk');
    const b = await laptop('laptop-b');
    const co2 = await step('checkout on a second laptop', b, 'checkout', 'big-desk');
    await run('cmp', [disk, str(co2, 'disk')]);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.pid}/status`, 'utf8'));
    if (!hwm) throw new Error('no VmHWM in the server\'s /proc/PID/status');
    const serverPeak = Number(hwm[1]) * 1024;
    console.log(`  server peak (VmHWM over the three steps): ${mb(serverPeak, 0)} MB`);
    const cliPeak = Math.max(...steps.map((s) => s.maxRssBytes));
    const size = o.size % 1024 ** 3 === 0 ? `${o.size / 1024 ** 3} GiB` : `${Math.round(o.size / MiB)} MiB`;
    const out = {
      size: o.size,
      steps,
      serverPeakBytes: serverPeak,
      limitBytes: LIMIT,
      comparisons: [
        { id: 'memory-cli-peak', title: `Peak memory of the laptop CLI, ${size} sparse image`, unit: 'MiB resident', carryonLabel: 'carryon CLI, highest of checkout, checkin, checkout', peerLabel: 'the bound: 400 MiB', target: { op: '<', ratio: 1 }, runs: [{ carryon: cliPeak / MiB, peer: LIMIT / MiB, note: steps.map((s) => `${s.step} ${(s.maxRssBytes / MiB).toFixed(0)} MiB`).join(', ') }] },
        { id: 'memory-server-peak', title: `Peak memory of the server, ${size} sparse image`, unit: 'MiB resident', carryonLabel: 'carryon-server (VmHWM)', peerLabel: 'the bound: 400 MiB', target: { op: '<', ratio: 1 }, runs: [{ carryon: serverPeak / MiB, peer: LIMIT / MiB }] },
      ],
    };
    if (o.out) writeFileSync(o.out, `${JSON.stringify(out, null, 2)}\n`);
  } finally {
    if (server) await server.stop();
    if (o.keep) console.log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`memory-bench failed: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
