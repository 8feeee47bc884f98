// Read-ahead for a streamed disk: which blocks after a VM's read to fetch before the VM asks for them.
// Owns only the decision (block numbers in, a range out); LocalDisk does the fetching and knows what is
// local. Must not know about NBD, HTTP or the journal.
//
// SequentialReadAhead (the default when there is no boot trace: an image's first streamed boot) works
// like the Linux page cache's readahead: it follows up to MAX_STREAMS sequential streams of reads (a read that starts inside a stream's run or in the block right
// after it continues that stream; anything else starts a new one). A stream gets read-ahead only once a
// second read has continued it, and its window is never larger than the run read so far (doubling as the
// run grows, up to a cap): so a scattered read fetches only its own blocks, and what is fetched ahead of
// any stream is at most what that stream has read, which bounds fetched bytes by 2x the bytes read.
// The next window is asked for when the stream's reads have used half of the current one, so a VM
// reading a large file keeps hitting local blocks while the next window arrives (a window asked for by
// a read that missed goes in that read's request: fewer requests, measured no slower here than a
// request of its own beside it, `+split`). LocalDisk also holds every policy to its aheadBudget: blocks
// fetched ahead that the VM has not read never outnumber the blocks it has read (good guesses cost
// nothing), which bounds fetched bytes by 2x on its own.
//
// FixedReadAhead(n) is the policy carryon had before (every miss also fetched the n blocks after it, in
// the same request): kept for benchmarks through CARRYON_READ_AHEAD (`fixed:15`), as are the variants
// measured against the default in scripts/bench/stream-boot-bench.ts: `sequential+around:N` (also N
// blocks after a scattered miss, within the budget) and `sequential+split` (a window in a request of
// its own, never in the read's). Figures: docs/performance.md, "Streamed boot".
//
// TraceReadAhead (the default when the image version has a boot trace) reads ahead by what the image's
// earlier streamed boots read: the server keeps the order in which a VM first read blocks (client/
// boot-trace.ts records it, server/boot-traces.ts keeps it per image version), and when the VM reads a
// block at position p of the trace, the next TRACE_WINDOW blocks of the trace are fetched, in trace
// order, in a request of their own (a miss's own blocks go in theirs, so the VM never waits for
// guesses). Reads of blocks outside the trace get SequentialReadAhead's windows, in requests of their own
// too (inside it, none: the trace says what comes next). The same budget holds
// (aheadBudget 1): a trace that is wrong, stale or hostile costs at most as many blocks as the VM read;
// and once the VM has read fewer than 1 in 4 of the trace's guesses (after MIN_TRACE_GUESSES), the trace
// is dropped for the sequential rule, so such a trace costs little time either.
//
// Key terms: block = the image's block index; run = the blocks a stream has read, first to last;
// window = how many blocks past the run's end a stream wants local.

/** Blocks to fetch ahead, first to last inclusive (the caller skips those already local or in flight). */
export interface AheadRange {
  from: number;
  to: number;
}

export interface ReadAheadPolicy {
  /** Which policy, for stats and logs. */
  readonly name: string;
  /**
   * Blocks fetched ahead and not read (yet) may be at most this many times the blocks the VM has read
   * (LocalDisk clips the ranges to it): 1 bounds fetched bytes by 2x the bytes of the blocks read.
   * Infinity: no bound.
   */
  readonly aheadBudget: number;
  /**
   * Fetch the blocks ahead in the same request as the read's own missing blocks (the read then waits
   * for both), rather than in a request of their own beside it.
   */
  readonly joinAhead: boolean;
  /**
   * The VM read blocks a..b (inclusive); `missed` when some of them were not local. The answer: a range,
   * or blocks in the order to fetch them (LocalDisk skips those local or on their way, and clips to the budget).
   */
  onRead(a: number, b: number, missed: boolean): AheadRange | readonly number[] | null;
}

/** Streams followed at once: a booting guest reads a handful of files at a time (several queues, a few processes). */
export const MAX_STREAMS = 32;
/** The largest window, in bytes (2 MiB: 32 blocks of 64 KiB); today's fixed policy fetched 15 blocks. */
export const MAX_WINDOW_BYTES = 2 * 1024 * 1024;

interface Stream {
  start: number;
  last: number;
  /** The last block asked for ahead of this stream (last when none). */
  aheadEnd: number;
  reads: number;
  /** For least-recently-used eviction. */
  used: number;
}

export class SequentialReadAhead implements ReadAheadPolicy {
  readonly name: string;
  readonly aheadBudget = 1;
  private readonly streams: Stream[] = [];
  private clock = 0;
  private readonly maxWindow: number;

  readonly joinAhead: boolean;
  private readonly around: number;

  /**
   * `count`: the disk's blocks; `blockSize`: bytes per block (the window's cap is MAX_WINDOW_BYTES).
   * Variants measured in scripts/bench/stream-boot-bench.ts: `around`, blocks fetched after a miss that
   * continues no stream (0, the default: none), paid from the budget; `joinAhead` (default true).
   */
  constructor(private readonly count: number, blockSize: number, opts: { around?: number; joinAhead?: boolean } = {}) {
    this.maxWindow = Math.max(1, Math.floor(MAX_WINDOW_BYTES / blockSize));
    this.around = opts.around ?? 0;
    this.joinAhead = opts.joinAhead ?? true;
    this.name = `sequential${this.around > 0 ? `+around:${this.around}` : ''}${this.joinAhead ? '' : '+split'}`;
  }

  onRead(a: number, b: number, missed: boolean): AheadRange | null {
    this.clock++;
    let s: Stream | undefined;
    // The stream this read continues: the one whose end is nearest below it.
    for (const t of this.streams) if (a >= t.start && a <= t.last + 1 && (!s || t.last > s.last)) s = t;
    if (!s) {
      s = { start: a, last: b, aheadEnd: b, reads: 1, used: this.clock };
      if (this.streams.length >= MAX_STREAMS) {
        let lru = 0;
        for (let k = 1; k < this.streams.length; k++) if (this.streams[k]!.used < this.streams[lru]!.used) lru = k;
        this.streams.splice(lru, 1);
      }
      this.streams.push(s);
      return missed ? this.aroundOf(s) : null; // one read says nothing about the next
    }
    s.used = this.clock;
    s.reads++;
    if (b > s.last) s.last = b;
    if (s.aheadEnd < s.last) s.aheadEnd = s.last;
    // A stream another stream ran into is the same run now: keep one.
    for (let k = this.streams.length - 1; k >= 0; k--) {
      const t = this.streams[k]!;
      if (t !== s && t.start > s.start && t.start <= s.last + 1) {
        s.last = Math.max(s.last, t.last);
        s.aheadEnd = Math.max(s.aheadEnd, t.aheadEnd);
        this.streams.splice(k, 1);
      }
    }
    const run = s.last - s.start + 1;
    if (run < 2) return missed ? this.aroundOf(s) : null; // re-reads inside one block are not a stream yet
    const window = Math.min(run, this.maxWindow);
    // Ask for the next window once half of the current one is used (at once, the first time).
    if (s.aheadEnd - s.last > window / 2) return null;
    const from = s.aheadEnd + 1;
    const to = Math.min(s.last + window, this.count - 1);
    if (from > to) return null;
    s.aheadEnd = to;
    return { from, to };
  }

  private aroundOf(s: Stream): AheadRange | null {
    if (this.around === 0 || s.aheadEnd + 1 >= this.count) return null;
    const from = s.aheadEnd + 1;
    s.aheadEnd = Math.min(s.last + this.around, this.count - 1);
    return from <= s.aheadEnd ? { from, to: s.aheadEnd } : null;
  }
}

/** carryon's earlier policy: every miss also fetched the `n` blocks after it, whatever the VM read. */
export class FixedReadAhead implements ReadAheadPolicy {
  readonly name: string;
  readonly aheadBudget = Infinity;
  readonly joinAhead = true;
  constructor(private readonly count: number, private readonly n: number) {
    this.name = `fixed:${n}`;
  }

  onRead(_a: number, b: number, missed: boolean): AheadRange | null {
    if (!missed || this.n === 0 || b + 1 >= this.count) return null;
    return { from: b + 1, to: Math.min(b + this.n, this.count - 1) };
  }
}

/** Trace blocks asked for ahead of the VM's position in the trace (4 MiB of 64 KiB blocks). */
export const TRACE_WINDOW = 64;
/** Guesses from the trace before its hit rate decides whether to keep it (four windows). */
export const MIN_TRACE_GUESSES = 4 * TRACE_WINDOW;

export class TraceReadAhead implements ReadAheadPolicy {
  readonly name = 'trace';
  readonly aheadBudget = 1;
  /** Guesses go in a request of their own: a miss's read waits only for its own blocks. */
  readonly joinAhead = false;
  /** Position of each block in the trace (-1: not in it). */
  private readonly pos: Int32Array;
  private readonly trace: number[] = [];
  /** The trace position the last window was asked from (-Infinity: none yet). */
  private askedAt = -Infinity;
  private readonly seq: SequentialReadAhead;
  /** Per block: 1 once guessed from the trace, 2 once the VM then read it. */
  private readonly guessed: Uint8Array;
  private guesses = 0;
  private hits = 0;
  /** Set when the trace's guesses are mostly wrong: from then on, the sequential rule alone. */
  private distrusted = false;

  /** `trace`: block indices in the order an earlier boot first read them; those past `count` and repeats are dropped. */
  constructor(count: number, blockSize: number, trace: readonly number[]) {
    this.pos = new Int32Array(count).fill(-1);
    for (const i of trace) {
      if (!Number.isInteger(i) || i < 0 || i >= count || this.pos[i] !== -1) continue;
      this.pos[i] = this.trace.length;
      this.trace.push(i);
    }
    this.seq = new SequentialReadAhead(count, blockSize, { joinAhead: false });
    this.guessed = new Uint8Array(count);
  }

  get traceLength(): number {
    return this.trace.length;
  }

  /** The trace is in use (not yet found mostly wrong). */
  get trusted(): boolean {
    return !this.distrusted;
  }

  onRead(a: number, b: number, missed: boolean): AheadRange | readonly number[] | null {
    let at = -1;
    for (let i = a; i <= b; i++) {
      if (this.pos[i]! > at) at = this.pos[i]!;
      if (this.guessed[i] === 1) {
        this.guessed[i] = 2;
        this.hits++;
      }
    }
    // A trace whose guesses the VM mostly does not read (stale, or a hostile user's) would cost every read
    // its sequential windows and fill the budget with useless fetches (measured: a shuffled trace of every
    // block made a boot 2.7x slower than fixed:15): past MIN_TRACE_GUESSES, under 1 in 4 read turns it off.
    if (!this.distrusted && this.guesses >= MIN_TRACE_GUESSES && this.hits * 4 < this.guesses) this.distrusted = true;
    // Not in the trace: sequential windows only. In it, the trace knows what comes next: sequential windows
    // there fetched past the ends of the files the boot read (measured: a third more bytes, none read).
    if (at < 0 || this.distrusted) return this.seq.onRead(a, b, missed);
    // A new window once the VM is half a window past the last one's start (or missed: it is behind).
    if (!missed && at < this.askedAt + TRACE_WINDOW / 2 && at >= this.askedAt) return null;
    this.askedAt = at;
    const out = this.trace.slice(at + 1, at + 1 + TRACE_WINDOW);
    for (const i of out) {
      if (this.guessed[i] === 0) {
        this.guessed[i] = 1;
        this.guesses++;
      }
    }
    return out;
  }
}

/**
 * The policy a spelling names: 'trace' (the default: by `trace` when it names blocks of this disk, else
 * sequential), 'sequential', 'fixed:N' (N blocks after every miss) or 'off' (only the blocks read).
 * Unknown spellings give null (the caller reports them).
 */
export function readAheadPolicy(spec: string | undefined, count: number, blockSize: number, trace?: readonly number[]): ReadAheadPolicy | null {
  const s = (spec ?? '').trim();
  if (s === '' || s === 'trace') {
    const t = trace && trace.length > 0 ? new TraceReadAhead(count, blockSize, trace) : null;
    return t && t.traceLength > 0 ? t : new SequentialReadAhead(count, blockSize);
  }
  const seq = /^sequential(?:\+around:(\d{1,3}))?(\+split)?$/.exec(s);
  if (seq) return new SequentialReadAhead(count, blockSize, { around: Number(seq?.[1] ?? 0), joinAhead: seq?.[2] === undefined });
  if (s === 'off') return new FixedReadAhead(count, 0);
  const m = /^fixed:(\d{1,4})$/.exec(s);
  if (m) return new FixedReadAhead(count, Number(m[1]));
  return null;
}
