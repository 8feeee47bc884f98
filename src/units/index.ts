// units: how byte counts and durations read to a person, on both sides (CLI output, progress, status).
// Owns: binary-prefixed sizes (KiB, MiB: what disks and `ls -h` show) and m:ss durations.
// Must not know: anything else.
const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function fmtBytes(n: number): string {
  let i = 0;
  let v = n;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${UNITS[i]}`;
}

/** m:ss, or h:mm:ss; `--:--` when unknown (an ETA before any progress). */
export function fmtDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const m = Math.floor(seconds / 60);
  const h = Math.floor(m / 60);
  const ss = String(Math.floor(seconds % 60)).padStart(2, '0');
  return h > 0 ? `${h}:${String(m % 60).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}
