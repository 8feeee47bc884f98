// Progress: one line on a terminal with bytes, rate and ETA; silent when stderr is not a TTY or the
// command prints --json (scripts read the final JSON object instead). A caller that shows progress
// elsewhere (the traveller's app, client/app/) runs an engine inside withProgressSink: every Progress
// the engine makes in that call reports to the sink too, whether or not the terminal line is shown.
import { AsyncLocalStorage } from 'node:async_hooks';
import { fmtBytes, fmtDuration } from '../src/index.js';

export { fmtBytes };

/** One step of a long operation: `label` names the phase (e.g. "checkout desk"), bytes done of total. */
export interface ProgressReport {
  label: string;
  done: number;
  total: number;
  startedAt: number;
  finished: boolean;
}

export type ProgressSink = (p: ProgressReport) => void;

const sinks = new AsyncLocalStorage<ProgressSink>();

/** Run fn with every Progress made inside it (also in awaited calls) reporting to sink. */
export function withProgressSink<T>(sink: ProgressSink, fn: () => Promise<T>): Promise<T> {
  return sinks.run(sink, fn);
}

export class Progress {
  private done = 0;
  private last = 0;
  private readonly started = Date.now();
  private readonly enabled: boolean;
  private readonly sink: ProgressSink | undefined = sinks.getStore();

  constructor(private readonly label: string, private total: number, quiet: boolean) {
    this.enabled = !quiet && process.stderr.isTTY === true;
    this.report(false);
  }

  private report(finished: boolean): void {
    this.sink?.({ label: this.label, done: this.done, total: this.total, startedAt: this.started, finished });
  }

  setTotal(total: number): void {
    this.total = total;
  }

  add(n: number): void {
    this.update(this.done + n);
  }

  update(done: number): void {
    this.done = done;
    this.report(false);
    const now = Date.now();
    if (!this.enabled || now - this.last < 100) return;
    this.last = now;
    this.render(now);
  }

  private render(now: number): void {
    const secs = (now - this.started) / 1000;
    const rate = secs > 0 ? this.done / secs : 0;
    const pct = this.total > 0 ? Math.min(100, (100 * this.done) / this.total) : 100;
    const eta = rate > 0 ? (this.total - this.done) / rate : Infinity;
    const width = 24;
    const fill = Math.round((pct / 100) * width);
    const line = `${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${pct.toFixed(0).padStart(3)}% ${fmtBytes(this.done)}/${fmtBytes(this.total)} ${fmtBytes(rate)}/s ETA ${fmtDuration(eta)}`;
    process.stderr.write(`\r${line.padEnd(100)}`);
  }

  finish(): void {
    this.report(true);
    if (!this.enabled) return;
    this.render(Date.now());
    process.stderr.write('\n');
  }
}
