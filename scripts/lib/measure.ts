// What a benchmark row holds, and reading rsync's --stats: shared by the benches in scripts/bench/.

/** One measured row: bytes over the wire, wall seconds, and what the byte count is made of. */
export interface Measure {
  bytes: number;
  seconds: number;
  /** What the byte count is made of. */
  note: string;
  [more: string]: unknown;
}

/** The byte counts of `rsync --stats` output. */
export function parseRsyncStats(out: string): { sent: number; received: number; literal: number; matched: number } {
  const grab = (label: string): number => {
    const m = new RegExp(`${label}:\\s*([\\d,]+)`).exec(out);
    if (!m) throw new Error(`rsync --stats output has no "${label}":\n${out}`);
    return Number(m[1]!.replace(/,/g, ''));
  };
  return { sent: grab('Total bytes sent'), received: grab('Total bytes received'), literal: grab('Literal data'), matched: grab('Matched data') };
}
