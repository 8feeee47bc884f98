// Allocation metering for the fuzz harness: while a parser runs, every Buffer.alloc/allocUnsafe/
// allocUnsafeSlow and every typed array or ArrayBuffer built from a length is seen, and the largest
// is kept. A parser that allocates what a header claims (not what the input holds) shows up as one
// allocation far above the input's size, without waiting for the machine to run out of memory.
// Native allocations (zstd's own window, libuv's read buffers) are not seen.

type Ctor = new (...args: never[]) => unknown;

const TYPED = ['Uint8Array', 'Int8Array', 'Uint16Array', 'Int16Array', 'Uint32Array', 'Int32Array', 'Float64Array', 'BigUint64Array', 'ArrayBuffer'] as const;
const WIDTH: Record<(typeof TYPED)[number], number> = {
  Uint8Array: 1, Int8Array: 1, Uint16Array: 2, Int16Array: 2, Uint32Array: 4, Int32Array: 4, Float64Array: 8, BigUint64Array: 8, ArrayBuffer: 1,
};

let depth = 0;
let paused = 0;
let largest = 0;
let total = 0;
const saved: Array<() => void> = [];

function seen(bytes: unknown): void {
  if (paused > 0 || typeof bytes !== 'number' || !Number.isFinite(bytes)) return;
  if (bytes > largest) largest = bytes;
  total += bytes;
}

function install(): void {
  const g = globalThis as unknown as Record<string, unknown>;
  for (const name of TYPED) {
    const orig = g[name] as Ctor;
    const proxy: Ctor = new Proxy(orig, {
      construct(target, args: unknown[], newTarget): object {
        if (typeof args[0] === 'number') seen(args[0] * WIDTH[name]);
        return Reflect.construct(target, args, newTarget === proxy ? target : newTarget) as object;
      },
    });
    g[name] = proxy;
    saved.push(() => {
      g[name] = orig;
    });
  }
  const B = Buffer as unknown as Record<'alloc' | 'allocUnsafe' | 'allocUnsafeSlow', (n: number, ...rest: unknown[]) => Buffer>;
  for (const fn of ['alloc', 'allocUnsafe', 'allocUnsafeSlow'] as const) {
    const orig = B[fn];
    B[fn] = function metered(n: number, ...rest: unknown[]): Buffer {
      seen(n);
      return orig.call(Buffer, n, ...rest);
    };
    saved.push(() => {
      B[fn] = orig;
    });
  }
}

function uninstall(): void {
  while (saved.length > 0) saved.pop()!();
}

export interface Allocations {
  /** The largest single allocation, in bytes. */
  largest: number;
  /** All allocations added up (freed ones too). */
  total: number;
}

/** Run `fn` with allocations metered; nested calls share one meter. */
export async function metered<T>(fn: () => Promise<T> | T): Promise<{ value?: T; error?: unknown; allocations: Allocations }> {
  if (depth++ === 0) {
    largest = 0;
    total = 0;
    install();
  }
  try {
    const value = await fn();
    return { value, allocations: { largest, total } };
  } catch (error) {
    return { error, allocations: { largest, total } };
  } finally {
    if (--depth === 0) uninstall();
  }
}

/** Run the checker's own work (collecting a peer's bytes, building a model) outside the meter. */
export function unmetered<T>(fn: () => T): T {
  paused++;
  try {
    return fn();
  } finally {
    paused--;
  }
}

/** Put the real constructors back after a call that never finished (a timed-out hang). */
export function resetMeter(): void {
  depth = 0;
  paused = 0;
  uninstall();
}
