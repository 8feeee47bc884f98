// Human-facing numbers for the scripts: parsing sizes given on the command line and printing aligned
// tables. MB here means 10^6 bytes (what rsync and most tools print); MiB is 2^20.

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
};

/** "256M" and "256MiB" are 256*2^20; "1G" is 2^30; "300MB" is 300*10^6; a bare number is bytes. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new Error(`not a size: "${text}" (try 256M or 1G)`);
  return Math.round(Number(m[1]) * unit);
}

export function mb(bytes: number, digits = 2): string {
  return (bytes / 1e6).toFixed(digits);
}

export function mib(bytes: number): string {
  return `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
}

export function secs(s: number | undefined): string {
  return s === undefined ? '-' : s.toFixed(2);
}

export function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || b === 0) return '-';
  return a / b >= 100 ? (a / b).toFixed(0) + 'x' : (a / b).toFixed(2) + 'x';
}

export function percent(a: number, b: number): string {
  return b === 0 ? '-' : `${((100 * a) / b).toFixed(2)}%`;
}

/** Aligned plain-text table; numeric-looking cells are right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = (s: string): boolean => /^[-+]?[\d.]+(x|%| s| MiB)?$/.test(s) || s === '-';
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i > 0 && numeric(c) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
