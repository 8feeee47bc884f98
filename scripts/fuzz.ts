// The long fuzz run: every parser of outside input (scripts/lib/fuzz/targets) for a time budget, with a
// seed of its own each run unless one is given. Each target runs in a worker thread watched from here,
// so neither a hang nor a crash nor running out of memory ends the run: the input is rebuilt from its
// (seed, iteration), written to a reproducer file, and the target goes on after it. The CI run of the
// same targets (fixed seed and iteration counts) is test/fuzz.
//
// Usage: node dist/scripts/fuzz.js [--seconds 600] [--target NAME[,NAME...]] [--seed N] [--out DIR]
//        node dist/scripts/fuzz.js --target NAME --replay FILE       (one input, with its stack)
//        node dist/scripts/fuzz.js --target NAME --seed N --iteration I   (rebuild one input and run it)
//        node dist/scripts/fuzz.js --list

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { readArgs } from './lib/args.js';
import { describeReport, evaluate, inputFor, minimize, writeReproducer, type FailureType, type FuzzReport, type TargetSpec } from './lib/fuzz/harness.js';
import { ALL_TARGETS, targetNamed } from './lib/fuzz/targets/index.js';
import type { WorkerJob } from './lib/fuzz/worker.js';

const USAGE = `usage: fuzz.js [--seconds 600] [--target NAME[,NAME...]] [--seed N] [--out DIR] [--hang-seconds 60] [--memory-mb 2048]
       fuzz.js --target NAME --replay FILE
       fuzz.js --target NAME --seed N --iteration I
       fuzz.js --list
  --seconds       the whole run's budget, shared equally by the targets (default 600)
  --target        only these targets (see --list); default: all
  --seed          the run's seed (default: from the clock, printed); iteration I of a seed is always the same input
  --out           folder for reproducers (default: $TMPDIR/carryon-fuzz-<seed>)
  --hang-seconds  a target whose iteration counter stands still this long is stopped as hung (default 60)
  --memory-mb     heap limit of each target's worker; going over is reported as a failure (default 2048)`;

interface Options {
  seconds: number;
  targets: TargetSpec[];
  seed: number;
  out?: string;
  hangSeconds: number;
  memoryMb: number;
  replay?: string;
  iteration?: number;
  list: boolean;
}

function parseOptions(argv: readonly string[]): Options {
  const o: Options = { seconds: 600, targets: ALL_TARGETS, seed: Date.now() % 2 ** 31, hangSeconds: 60, memoryMb: 2048, list: false };
  const num = (v: string, flag: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${flag} needs a number, not "${v}"\n${USAGE}`);
    return n;
  };
  for (const a of readArgs(argv, USAGE)) {
    if (a.flag === '--seconds') o.seconds = num(a.value(), a.flag);
    else if (a.flag === '--seed') o.seed = num(a.value(), a.flag) >>> 0;
    else if (a.flag === '--out') o.out = a.value();
    else if (a.flag === '--hang-seconds') o.hangSeconds = num(a.value(), a.flag);
    else if (a.flag === '--memory-mb') o.memoryMb = num(a.value(), a.flag);
    else if (a.flag === '--replay') o.replay = a.value();
    else if (a.flag === '--iteration') o.iteration = num(a.value(), a.flag);
    else if (a.flag === '--list') o.list = true;
    else if (a.flag === '--target') {
      o.targets = a.value().split(',').map((n) => {
        const t = targetNamed(n.trim());
        if (!t) throw new Error(`no fuzz target "${n}"; --list shows them`);
        return t;
      });
    } else if (a.flag === '--help' || a.flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a.flag}\n${USAGE}`);
  }
  return o;
}

/** Rebuild iteration n's input here (the worker that ran it is gone) and keep it as a reproducer. */
async function keepInput(spec: TargetSpec, seed: number, n: number, type: FailureType, message: string, dir: string): Promise<FuzzReport['failures'][number]> {
  const t = await spec.create();
  try {
    let input: Buffer;
    try {
      input = inputFor(t, await t.corpus(), seed, n);
    } catch (err) {
      // The mutation engine itself failed (a bug of the fuzzer, not of the parser).
      return { target: spec.name, seed, iteration: n, type, message: `${message}\n(its input could not be rebuilt: ${String((err as Error)?.stack ?? err)})`, input: Buffer.alloc(0) };
    }
    const f = { target: spec.name, seed, iteration: n, type, message, input };
    return { ...f, file: writeReproducer(dir, f) };
  } finally {
    await t.close?.();
  }
}

function merge(a: FuzzReport | null, b: FuzzReport): FuzzReport {
  if (!a) return b;
  const codes = { ...a.codes };
  for (const [c, n] of Object.entries(b.codes)) codes[c] = (codes[c] ?? 0) + n;
  return {
    ...a,
    iterations: a.iterations + b.iterations,
    accepted: a.accepted + b.accepted,
    codes,
    failures: [...a.failures, ...b.failures],
    peakAllocationShare: Math.max(a.peakAllocationShare, b.peakAllocationShare),
    ms: a.ms + b.ms,
  };
}

/** Run one target for `seconds` in workers, restarting after the iteration that hung or crashed one. */
async function fuzzTarget(spec: TargetSpec, o: Options, seconds: number, dir: string): Promise<FuzzReport> {
  const deadline = Date.now() + seconds * 1000;
  let report: FuzzReport | null = null;
  let startAt = 0;
  while (report === null || Date.now() < deadline - 1000) {
    const counter = new SharedArrayBuffer(4);
    const view = new Int32Array(counter);
    Atomics.store(view, 0, startAt);
    const started = Date.now();
    /** What the worker had reported when it was stopped. */
    let progress: FuzzReport | null = null;
    const job: WorkerJob = { target: spec.name, seed: o.seed, seconds: Math.max(0, (deadline - Date.now()) / 1000), startAt, reproDir: dir, counter };
    const worker = new Worker(new URL('./lib/fuzz/worker.js', import.meta.url), { workerData: job, resourceLimits: { maxOldGenerationSizeMb: o.memoryMb } });
    const result = await new Promise<{ report?: FuzzReport; stopped?: { type: FailureType; message: string } }>((resolve) => {
      let last = startAt;
      let lastChange = Date.now();
      const watch = setInterval(() => {
        const n = Atomics.load(view, 0);
        if (n !== last) {
          last = n;
          lastChange = Date.now();
        } else if (Date.now() - lastChange > o.hangSeconds * 1000) {
          clearInterval(watch);
          void worker.terminate();
          resolve({ stopped: { type: 'hang', message: `iteration ${n} did not finish within ${o.hangSeconds} s (a synchronous loop)` } });
        }
      }, 500);
      worker.on('message', (m: { progress?: FuzzReport; done?: FuzzReport }) => {
        if (m.progress) progress = m.progress;
        if (!m.done) return;
        clearInterval(watch);
        resolve({ report: m.done });
      });
      worker.once('error', (err: Error & { code?: string }) => {
        clearInterval(watch);
        const type: FailureType = err.code === 'ERR_WORKER_OUT_OF_MEMORY' ? 'allocation' : 'uncaught';
        resolve({ stopped: { type, message: `${type === 'allocation' ? `out of the ${o.memoryMb} MB heap: ` : ''}${err.stack ?? err.message}` } });
      });
    });
    if (result.report) {
      report = merge(report, result.report);
      break;
    }
    const n = Atomics.load(view, 0);
    const f = await keepInput(spec, o.seed, n, result.stopped!.type, result.stopped!.message, dir);
    const got = progress as FuzzReport | null;
    const partial: FuzzReport = {
      target: spec.name, seed: o.seed, iterations: Math.max(0, n - startAt), accepted: got?.accepted ?? 0, codes: got?.codes ?? {},
      failures: [...(got?.failures ?? []), f], peakAllocationShare: got?.peakAllocationShare ?? 0, ms: Date.now() - started,
    };
    report = merge(report, partial);
    startAt = n + 1;
  }
  return report;
}

async function replayOne(spec: TargetSpec, input: Buffer, label: string): Promise<boolean> {
  const t = await spec.create();
  try {
    const o = await evaluate(t, input);
    console.log(`${spec.name} ${label}: ${input.length} bytes -> ${o.kind === 'accepted' ? 'accepted' : o.kind === 'rejected' ? `refused with ${o.code}` : `FAIL ${o.type}: ${o.message}`}`);
    if (o.kind === 'failure' && o.stack) console.log(o.stack);
    return o.kind !== 'failure';
  } finally {
    await t.close?.();
  }
}

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseOptions(process.argv.slice(2));
  } catch (err) {
    console.error((err as Error).message);
    process.exitCode = 2;
    return;
  }
  if (o.list) {
    for (const t of ALL_TARGETS) console.log(`${t.name.padEnd(22)} ${t.about}`);
    return;
  }
  if (o.replay !== undefined || o.iteration !== undefined) {
    if (o.targets.length !== 1) throw new Error(`--replay and --iteration need one --target\n${USAGE}`);
    const spec = o.targets[0]!;
    let input: Buffer;
    if (o.replay !== undefined) input = readFileSync(o.replay);
    else {
      const t = await spec.create();
      input = inputFor(t, await t.corpus(), o.seed, o.iteration!);
      await t.close?.();
      if (o.out) {
        mkdirSync(o.out, { recursive: true });
        writeFileSync(path.join(o.out, `${spec.name}-s${o.seed}-i${o.iteration}.bin`), input);
      }
    }
    process.exitCode = (await replayOne(spec, input, o.replay ?? `seed ${o.seed} iteration ${o.iteration}`)) ? 0 : 1;
    return;
  }
  const dir = o.out ?? path.join(tmpdir(), `carryon-fuzz-${o.seed}`);
  const each = o.seconds / o.targets.length;
  console.log(`fuzzing ${o.targets.length} targets for ${o.seconds} s (${each.toFixed(0)} s each), seed ${o.seed} (--seed ${o.seed} repeats the inputs), reproducers in ${dir}`);
  const reports: FuzzReport[] = [];
  for (const spec of o.targets) {
    const r = await fuzzTarget(spec, o, each, dir);
    // Smaller reproducers beside the originals, for the failures that are not hangs.
    for (const f of r.failures) {
      if (f.type === 'hang' || f.type === 'uncaught' || f.type === 'allocation' || !f.file) continue;
      const t = await spec.create();
      try {
        const small = await minimize(t, f.input);
        if (small.length < f.input.length) writeFileSync(f.file.replace(/\.bin$/, '.min.bin'), small);
      } finally {
        await t.close?.();
      }
    }
    console.log(describeReport(r));
    reports.push(r);
  }
  const failures = reports.reduce((n, r) => n + r.failures.length, 0);
  const total = reports.reduce((n, r) => n + r.iterations, 0);
  console.log(`\n${total} inputs, ${failures} failures${failures > 0 ? ` (reproducers in ${dir}; replay one with --target NAME --replay FILE)` : ''}`);
  process.exitCode = failures > 0 ? 1 : 0;
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.stack ?? err.message : err);
  process.exitCode = 2;
});
