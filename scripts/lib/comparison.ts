// One comparison of the benchmark report: carryon against one peer measured in the same run, repeated;
// the ratio of each run, their median, and whether the target holds on that median. What
// scripts/bench/run-all.ts maps every bench's JSON to, and what the report and the plots read.
// Knows nothing about any bench, the file system or SVG. Key terms:
// - run: one pair measured together (same bench process, same machine state): carryon, peer, ratio.
// - ratio: carryon / peer, in the comparison's unit (MB/s: higher is better; s, MB: lower is better).
// - target: the bound the issue sets on the median ratio ("at least 0.8x nbdkit" is `>= 0.8`).

export type TargetOp = '>=' | '>' | '<=' | '<';

export interface Target {
  op: TargetOp;
  ratio: number;
}

export interface ComparisonRun {
  carryon: number;
  peer: number;
  /** carryon / peer. */
  ratio: number;
  /** Which invocation measured it (e.g. "run 2"), and anything worth a footnote. */
  label?: string;
  note?: string;
}

export interface Comparison {
  /** File-safe and stable: the plot is `<id>.svg`. */
  id: string;
  /** Which part of the issue it answers (report section), e.g. "NBD export". */
  group: string;
  title: string;
  unit: string;
  carryonLabel: string;
  peerLabel: string;
  runs: ComparisonRun[];
  target?: Target;
  /** Where it comes from: the bench and its options. */
  source: string;
  /** Why there are fewer runs than asked (a bench missing, failing, or a run without the value). */
  problems: string[];
  /** Set when the values repeat exactly between runs (byte counts): one run is enough, and this says why. */
  exact?: string;
}

export interface ComparisonSummary {
  runs: number;
  medianRatio?: number;
  minRatio?: number;
  maxRatio?: number;
  medianCarryon?: number;
  medianPeer?: number;
  /** undefined: no runs, or no target. */
  met?: boolean;
  /** The issue wants medians of at least this many runs. */
  enoughRuns: boolean;
}

/** The issue: every target must hold on the median of at least 5 runs. */
export const MIN_RUNS = 5;

export function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function meets(value: number, t: Target): boolean {
  switch (t.op) {
    case '>=':
      return value >= t.ratio;
    case '>':
      return value > t.ratio;
    case '<=':
      return value <= t.ratio;
    case '<':
      return value < t.ratio;
  }
}

/** "at least 0.8x", "below 1x" ... of the peer. */
export function targetText(t: Target): string {
  const words: Record<TargetOp, string> = { '>=': 'at least', '>': 'above', '<=': 'at most', '<': 'below' };
  return `${words[t.op]} ${fmtRatio(t.ratio)}`;
}

/** Higher carryon values are better when the target is a lower bound. */
export const higherIsBetter = (t: Target | undefined): boolean => t !== undefined && (t.op === '>=' || t.op === '>');

export function summarize(c: Comparison): ComparisonSummary {
  const ratios = c.runs.map((r) => r.ratio);
  const medianRatio = median(ratios);
  return {
    runs: c.runs.length,
    medianRatio,
    minRatio: ratios.length ? Math.min(...ratios) : undefined,
    maxRatio: ratios.length ? Math.max(...ratios) : undefined,
    medianCarryon: median(c.runs.map((r) => r.carryon)),
    medianPeer: median(c.runs.map((r) => r.peer)),
    met: medianRatio === undefined || !c.target ? undefined : meets(medianRatio, c.target),
    enoughRuns: c.runs.length >= MIN_RUNS || (c.exact !== undefined && c.runs.length >= 1),
  };
}

/** A run from two measured values; undefined when either is missing or the peer is not positive. */
export function pair(carryon: number | undefined, peer: number | undefined, label?: string, note?: string): ComparisonRun | undefined {
  if (carryon === undefined || peer === undefined || !Number.isFinite(carryon) || !Number.isFinite(peer) || peer <= 0) return undefined;
  return { carryon, peer, ratio: carryon / peer, ...(label ? { label } : {}), ...(note ? { note } : {}) };
}

export function fmtRatio(r: number | undefined): string {
  if (r === undefined || !Number.isFinite(r)) return '-';
  return r >= 100 ? `${r.toFixed(0)}x` : `${r.toFixed(2)}x`;
}

/** A measured value with 3 significant digits (no exponent below 1e6). */
export function fmtValue(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '-';
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  if (a === 0) return '0';
  return v.toPrecision(3);
}

/** A stable, file-safe id from free text. */
export function slug(text: string): string {
  return text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 80);
}
