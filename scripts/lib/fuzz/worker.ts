// One fuzz target run in a worker thread of scripts/fuzz.ts: the main thread watches the iteration
// counter in shared memory, so a parser stuck in a synchronous loop (which no timer inside this
// thread can interrupt) is found, stopped, and its input rebuilt from (seed, iteration).
import { parentPort, workerData } from 'node:worker_threads';
import { runFuzz } from './harness.js';
import { targetNamed } from './targets/index.js';

export interface WorkerJob {
  target: string;
  seed: number;
  seconds: number;
  startAt: number;
  reproDir: string;
  /** Int32Array view: [0] = the iteration being evaluated. */
  counter: SharedArrayBuffer;
}

const job = workerData as WorkerJob;
const spec = targetNamed(job.target);
if (!spec) throw new Error(`no fuzz target ${job.target}`);
const counter = new Int32Array(job.counter);
const report = await runFuzz(spec, {
  seed: job.seed,
  seconds: job.seconds,
  startAt: job.startAt,
  reproDir: job.reproDir,
  maxFailures: 20,
  onIteration: (n) => Atomics.store(counter, 0, n),
  onProgress: (r) => parentPort!.postMessage({ progress: r }),
});
parentPort!.postMessage({ done: report });
