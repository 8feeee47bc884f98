// The fuzz harness: runs one target for a number of iterations (or seconds), each a seeded mutation
// of a corpus input, and holds every call to the property all parsers of outside input share:
// - it returns a value, and the target's invariants hold for it (round trips, bounds), or
// - it throws a CarryonError with one of the codes the target declares,
// - never a TypeError, RangeError or other raw error, never another code, never a hang (each call is
//   bounded), never an allocation far beyond what the input and the parser's declared limits allow.
// Iteration n of a run with seed s is a pure function of (s, n), so a failure is replayed from its
// seed and iteration alone; the failing bytes are also written to a reproducer file.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CarryonError, shownValue, type ErrorCode } from '../../../src/errors/index.js';
import { metered, resetMeter } from './alloc-meter.js';
import { below, chance, iterationRng, mutateBytes, type MutationHints, type Rng } from './mutate.js';

/** Thrown by a target when the parser accepted an input but its result breaks an invariant. */
export class PropertyViolation extends Error {
  override name = 'PropertyViolation';
}

export function check(cond: unknown, message: string): asserts cond {
  if (!cond) throw new PropertyViolation(message);
}

export interface FuzzTarget {
  /** Codes the parser may fail with; any other code (or a raw error) is a bug. */
  readonly codes: readonly ErrorCode[];
  /** Valid inputs made by carryon's own encoders. Each must be accepted. */
  corpus(): Promise<Buffer[]> | Buffer[];
  /** Default: stacked byte mutations with `hints`. */
  mutate?(rng: Rng, input: Buffer, corpus: readonly Buffer[]): Buffer;
  readonly hints?: MutationHints;
  /** Repairs checksums so that mutations reach the checks behind them; applied to half the inputs. */
  fixup?(input: Buffer): Buffer;
  /** Call the parser on `input`. Returns when it accepted it (and the invariants hold); throws what the
   *  parser threw otherwise, or a PropertyViolation. */
  run(input: Buffer): Promise<unknown> | unknown;
  /** Largest single allocation (bytes) the parser may make for this input. */
  allocationCap(input: Buffer): number;
  /** Bound on one call; default 10 s (only a hang reaches it). */
  readonly timeoutMs?: number;
  close?(): Promise<void> | void;
}

export interface TargetSpec {
  /** kebab-case, the --target name */
  readonly name: string;
  /** What it calls, for the report. */
  readonly about: string;
  create(): Promise<FuzzTarget> | FuzzTarget;
}

export type FailureType = 'raw-error' | 'unexpected-code' | 'invariant' | 'hang' | 'allocation' | 'seed-rejected' | 'uncaught';

export interface FuzzFailure {
  target: string;
  seed: number;
  iteration: number;
  type: FailureType;
  message: string;
  stack?: string;
  input: Buffer;
  /** The reproducer written (input bytes), when a folder was given. */
  file?: string;
}

export interface FuzzReport {
  target: string;
  seed: number;
  iterations: number;
  accepted: number;
  /** Rejections by error code. */
  codes: Record<string, number>;
  failures: FuzzFailure[];
  /** Largest allocation seen as a share of its cap (1 = at the cap). */
  peakAllocationShare: number;
  ms: number;
}

export interface RunOptions {
  seed: number;
  /** Stop after this many iterations (the corpus inputs count). */
  iterations?: number;
  /** Stop after this long. */
  seconds?: number;
  /** Write each failure's input here as `<target>-s<seed>-i<iteration>.bin` (with a .json beside it). */
  reproDir?: string;
  /** Stop after this many distinct failures (default 10). */
  maxFailures?: number;
  /** Called before each iteration (a watchdog reads it). */
  onIteration?(n: number): void;
  /** First iteration (a run resumed after a watchdog stopped it); the corpus inputs are iterations 0.. */
  startAt?: number;
  /** Given the report so far about once a second (a watchdog keeps it in case the run is stopped). */
  onProgress?(r: FuzzReport): void;
}

/** The input of iteration `n`: the corpus inputs first, unchanged, then mutations of them. */
export function inputFor(target: FuzzTarget, corpus: readonly Buffer[], seed: number, n: number): Buffer {
  if (n < corpus.length) return corpus[n]!;
  const rng = iterationRng(seed, n);
  const base = corpus[below(rng, corpus.length)]!;
  let out = target.mutate ? target.mutate(rng, base, corpus) : mutateBytes(rng, base, corpus, target.hints);
  if (target.fixup && chance(rng, 0.5)) out = target.fixup(out);
  return out;
}

export type Outcome = { kind: 'accepted' } | { kind: 'rejected'; code: ErrorCode } | { kind: 'failure'; type: FailureType; message: string; stack?: string };

const HANG = Symbol('hang');

/** Call the target once on `input` and classify what happened. */
export async function evaluate(target: FuzzTarget, input: Buffer): Promise<Outcome & { allocationShare: number }> {
  const ms = target.timeoutMs ?? 10_000;
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<typeof HANG>((resolve) => {
    timer = setTimeout(() => resolve(HANG), ms);
  });
  const r = await Promise.race([metered(() => target.run(input)), hang]);
  clearTimeout(timer);
  if (r === HANG) {
    resetMeter();
    return { kind: 'failure', type: 'hang', message: `no answer within ${ms} ms`, allocationShare: 0 };
  }
  const cap = target.allocationCap(input);
  const allocationShare = r.allocations.largest / cap;
  if (r.allocations.largest > cap) {
    return { kind: 'failure', type: 'allocation', message: `allocated ${r.allocations.largest} bytes at once for a ${input.length}-byte input (cap ${cap})`, allocationShare };
  }
  if (!('error' in r) || r.error === undefined) return { kind: 'accepted', allocationShare };
  const e = r.error;
  if (e instanceof PropertyViolation) return { kind: 'failure', type: 'invariant', message: e.message, stack: e.stack, allocationShare };
  if (e instanceof CarryonError) {
    if (target.codes.includes(e.code)) return { kind: 'rejected', code: e.code, allocationShare };
    return { kind: 'failure', type: 'unexpected-code', message: `${e.code}: ${e.message}`, stack: e.stack, allocationShare };
  }
  const err = e as Error | undefined;
  return { kind: 'failure', type: 'raw-error', message: `${err?.name ?? typeof e}: ${err?.message ?? shownValue(e)}`, stack: err?.stack, allocationShare };
}

/** The failure signature of an outcome (null when it is not a failure). */
export function failureSignature(o: Outcome): string | null {
  return o.kind === 'failure' ? signature(o.type, o.message, o.stack) : null;
}

/**
 * A smaller input that fails the same way (same signature): ranges removed, halves first, then ever
 * smaller pieces, within `budget` calls. Hangs are not minimized (each try would cost a timeout).
 */
export async function minimize(target: FuzzTarget, input: Buffer, budget = 400): Promise<Buffer> {
  const want = failureSignature(await evaluate(target, input));
  if (want === null || want.startsWith('hang')) return input;
  let best = input;
  let calls = 1;
  for (let piece = Math.max(1, best.length >> 1); piece >= 1 && calls < budget; piece = piece === 1 ? 0 : Math.max(1, piece >> 1)) {
    for (let at = 0; at < best.length && calls < budget;) {
      const cand = Buffer.concat([best.subarray(0, at), best.subarray(at + piece)]);
      calls++;
      if (failureSignature(await evaluate(target, cand)) === want) best = cand;
      else at += piece;
    }
  }
  return best;
}

/** One bug, one entry: a raw error by its type and where it was thrown, others by their message
 *  with numbers and quoted text taken out. */
function signature(type: FailureType, message: string, stack?: string): string {
  if (type === 'raw-error' || type === 'uncaught') {
    const at = stack?.split('\n').find((l) => /^\s+at /.test(l) && !l.includes('node:'))?.trim();
    if (at) return `${type}:${message.split(':')[0]}:${at}`;
  }
  return `${type}:${message.replace(/"(?:[^"\\]|\\.)*"|'[^']*'/g, 'S').replace(/[0-9]+/g, 'N').slice(0, 160)}`;
}

export function writeReproducer(dir: string, f: FuzzFailure): string {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${f.target}-s${f.seed}-i${f.iteration}.bin`);
  writeFileSync(file, f.input);
  const { input: _input, file: _file, ...meta } = f;
  writeFileSync(`${file.slice(0, -4)}.json`, `${JSON.stringify({ ...meta, inputBytes: f.input.length, inputHex: f.input.subarray(0, 4096).toString('hex') }, null, 2)}\n`);
  return file;
}

/** Run one target; never throws for what the target does (that is what the report is for). */
export async function runFuzz(spec: TargetSpec, opts: RunOptions): Promise<FuzzReport> {
  const started = Date.now();
  const target = await spec.create();
  const report: FuzzReport = { target: spec.name, seed: opts.seed, iterations: 0, accepted: 0, codes: {}, failures: [], peakAllocationShare: 0, ms: 0 };
  const seen = new Set<string>();
  const maxFailures = opts.maxFailures ?? 10;
  let current = -1;
  let lastProgress = Date.now();
  let currentInput: Buffer = Buffer.alloc(0);
  const record = (iteration: number, input: Buffer, type: FailureType, message: string, stack?: string): void => {
    const sig = signature(type, message, stack);
    if (seen.has(sig)) return;
    seen.add(sig);
    const f: FuzzFailure = { target: spec.name, seed: opts.seed, iteration, type, message, stack, input };
    if (opts.reproDir) f.file = writeReproducer(opts.reproDir, f);
    report.failures.push(f);
  };
  // An error thrown outside the call's promise chain (an 'error' event nobody listens to) is the
  // current input's doing.
  const uncaught = (err: unknown): void => record(current, currentInput, 'uncaught', (err as Error)?.stack ?? shownValue(err, 2000));
  process.on('uncaughtException', uncaught);
  process.on('unhandledRejection', uncaught);
  try {
    const corpus = await target.corpus();
    if (corpus.length === 0) throw new Error(`fuzz target ${spec.name} has an empty corpus`);
    const deadline = opts.seconds === undefined ? Infinity : started + opts.seconds * 1000;
    const limit = opts.iterations ?? Infinity;
    for (let n = opts.startAt ?? 0; n < limit && (n < corpus.length || Date.now() < deadline) && seen.size < maxFailures; n++) {
      opts.onIteration?.(n);
      const input = inputFor(target, corpus, opts.seed, n);
      current = n;
      currentInput = input;
      const o = await evaluate(target, input);
      report.iterations++;
      report.peakAllocationShare = Math.max(report.peakAllocationShare, o.allocationShare);
      if (o.kind === 'accepted') report.accepted++;
      else if (o.kind === 'rejected') {
        if (n < corpus.length) record(n, input, 'seed-rejected', `corpus input ${n} was rejected with ${o.code}`);
        report.codes[o.code] = (report.codes[o.code] ?? 0) + 1;
      } else record(n, input, o.type, o.message, o.stack);
      if (opts.onProgress && Date.now() - lastProgress >= 1000) {
        lastProgress = Date.now();
        opts.onProgress({ ...report, codes: { ...report.codes }, failures: [...report.failures], ms: Date.now() - started });
      }
    }
  } finally {
    process.off('uncaughtException', uncaught);
    process.off('unhandledRejection', uncaught);
    await target.close?.();
  }
  report.ms = Date.now() - started;
  return report;
}

/** A short text form of a report (one line, then one line per failure). */
export function describeReport(r: FuzzReport): string {
  const codes = Object.entries(r.codes).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c}×${n}`).join(' ') || '-';
  const lines = [`${r.target}: ${r.iterations} iterations in ${(r.ms / 1000).toFixed(1)} s, ${r.accepted} accepted, ${Object.keys(r.codes).length} error codes (${codes}), peak allocation ${(100 * r.peakAllocationShare).toFixed(0)}% of cap, ${r.failures.length} failures`];
  for (const f of r.failures) lines.push(`  FAIL ${f.type} seed ${f.seed} iteration ${f.iteration}: ${f.message.split('\n')[0]}${f.file ? ` (reproducer: ${f.file})` : ''}`);
  return lines.join('\n');
}
