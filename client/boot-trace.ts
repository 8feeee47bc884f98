// Boot traces on the laptop (issue 13): what a streamed check-out's VM first reads, in order, for the
// next streamed boot of the same image version to read ahead by (client/read-ahead.ts TraceReadAhead).
// Owns: the trace file beside the disk journal (HOME/journals/NAME.boot-trace.json: the trace the server
// had at check-out, with the image version it belongs to), the recorder's caps, and the report to the
// server when a serve session ends. Both network steps are best effort: a server without the route, or
// none at all, means no trace, and a streamed boot behaves as it did before (sequential read-ahead).
// Must not know: NBD, the read-ahead policy's rule.
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { MAX_BOOT_TRACE_BLOCKS, parseBootTrace, parseJson, type BootTrace } from '../src/index.js';
import type { ApiClient } from './api-client.js';

/** Blocks are recorded for this long after the VM's first read: a boot, not a day's work. */
export const RECORD_MS = 10 * 60 * 1000;

export function bootTraceFile(home: string, desktop: string): string {
  return path.join(home, 'journals', `${desktop}.boot-trace.json`);
}

/** At `checkout --stream`: fetch the image version's trace and keep it (an empty one when there is none). Null when the server could not say. */
export async function fetchBootTrace(home: string, api: ApiClient, desktop: string): Promise<BootTrace | null> {
  const file = bootTraceFile(home, desktop);
  rmSync(file, { force: true }); // an older check-out's trace may be of another image version
  let trace: BootTrace;
  try {
    trace = await api.bootTrace(desktop);
  } catch {
    return null;
  }
  writeFileSync(`${file}.tmp`, JSON.stringify(trace));
  renameSync(`${file}.tmp`, file);
  return trace;
}

/** The trace kept at check-out; null when there is none or it does not parse. */
export function loadBootTrace(home: string, desktop: string): BootTrace | null {
  try {
    return parseBootTrace(parseJson(readFileSync(bootTraceFile(home, desktop)), 'the boot trace'));
  } catch {
    return null;
  }
}

/** The blocks a VM reads for the first time, in order: at most MAX_BOOT_TRACE_BLOCKS, within RECORD_MS of the first. */
export class BootTraceRecorder {
  readonly blocks: number[] = [];
  private startedAt = 0;
  constructor(private readonly limit = MAX_BOOT_TRACE_BLOCKS, private readonly now: () => number = Date.now) {}

  /** LocalDisk calls this once per block (its first read in the session). */
  note(block: number): void {
    if (this.blocks.length >= this.limit) return;
    const t = this.now();
    if (this.blocks.length === 0) this.startedAt = t;
    else if (t - this.startedAt > RECORD_MS) return;
    this.blocks.push(block);
  }
}

/** At the end of a serve session: report the recorded order for the image version the check-out's trace named. */
export async function submitBootTrace(api: ApiClient, desktop: string, base: BootTrace, blocks: number[]): Promise<{ blocks: number }> {
  return api.putBootTrace(desktop, { image: base.image, imageVersion: base.imageVersion, blocks });
}
