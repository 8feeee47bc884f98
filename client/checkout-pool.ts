// CheckoutPool: the main thread's side of the check-out workers (checkout-worker.ts). Each worker
// holds two batches from a shared queue (it works one while the other's answer is on its way), so
// with two workers both cores verify and write and no worker waits for a round trip between batches.
import { Worker } from 'node:worker_threads';
import { CarryonError, isErrorCode } from '../src/index.js';
import type { BlockDone, BlockJob, WorkerInit, WorkerReply, WorkerRequest } from './checkout-worker.js';

export type { BlockDone, BlockJob };

export class CheckoutPool {
  private readonly workers: Worker[];
  bytesReceived = 0;

  constructor(init: WorkerInit, private readonly onDone: (d: BlockDone) => void, size = 2) {
    this.workers = Array.from({ length: size }, () => new Worker(new URL('./checkout-worker.js', import.meta.url), { workerData: init }));
  }

  /**
   * Run every batch; the first failure stops the others taking new batches and is thrown. Each worker
   * has two batches at a time (two lanes): it works them in turn and asks for the second while it reads
   * the first (checkout-worker.ts).
   */
  async run(kind: 'fetch' | 'cached', batches: BlockJob[][]): Promise<void> {
    const queue = [...batches];
    let seq = 0;
    let failure: Error | null = null;
    await Promise.all([...this.workers, ...this.workers].map(async (w) => {
      while (queue.length > 0 && !failure) {
        const jobs = queue.shift()!;
        try {
          await this.send(w, { kind, seq: seq++, jobs });
        } catch (err) {
          failure ??= err as Error;
        }
      }
    }));
    if (failure) throw failure;
  }

  private send(w: Worker, req: Extract<WorkerRequest, { seq: number }>): Promise<void> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: WorkerReply): void => {
        if (m.kind === 'closed' || m.seq !== req.seq) return;
        if (m.kind === 'progress') return m.done.forEach(this.onDone);
        w.off('message', onMessage);
        w.off('error', onError);
        if (m.kind === 'finished') {
          this.bytesReceived += m.bytesReceived;
          resolve();
        } else reject(new CarryonError(isErrorCode(m.code) ? m.code : 'INTERNAL', m.message, m.data));
      };
      const onError = (err: Error): void => {
        w.off('message', onMessage);
        reject(err);
      };
      w.on('message', onMessage);
      w.once('error', onError);
      w.postMessage(req);
    });
  }

  /** Commit the workers' cache index, fsync the disk, stop the workers; the first failure of those is thrown. */
  async close(): Promise<void> {
    const failures: CarryonError[] = [];
    await Promise.all(this.workers.map((w) => new Promise<void>((resolve) => {
      w.on('message', (m: WorkerReply) => {
        if (m.kind !== 'closed') return;
        if (m.code) failures.push(new CarryonError(isErrorCode(m.code) ? m.code : 'INTERNAL', m.message ?? 'closing the check-out failed'));
        resolve();
      });
      w.once('exit', () => resolve());
      w.postMessage({ kind: 'close' } satisfies WorkerRequest);
    })));
    await Promise.all(this.workers.map((w) => w.terminate()));
    if (failures.length > 0) throw failures[0];
  }
}
