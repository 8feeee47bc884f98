// The sparse-file addon (native/sparse, built by `npm install` / `npm ci` with node-gyp beside native/xts):
// lseek(SEEK_DATA / SEEK_HOLE), which Node's fs lacks, so scanImage reads a sparse disk's data and
// skips its holes. Optional: when it is not built (or CARRYON_SPARSE=read), a scan reads the holes as
// before (same manifest, slower on sparse disks) and says so (ScanResult.holes = 'read').
// Must not know: blocks, manifests; only "where in this file is data".
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeSparse {
  /**
   * The data runs of fd that meet [from, to), clipped to it, as [start, end) pairs in out (file order);
   * returns how many. Fewer than out.length / 2 only when no data is left before `to`. Moves fd's offset.
   */
  dataRuns(fd: number, from: number, to: number, out: Float64Array): number;
}

export const NATIVE_SPARSE_FILE = path.join('native', 'sparse', 'build', 'Release', 'carryon_sparse.node');

let loaded: { addon: NativeSparse | null; reason: string } | undefined;

/** The addon, or null with the reason (not built, turned off by CARRYON_SPARSE=read, failed to load). */
export function loadNativeSparse(): { addon: NativeSparse | null; reason: string } {
  if (loaded) return loaded;
  if (process.env.CARRYON_SPARSE === 'read') return (loaded = { addon: null, reason: 'CARRYON_SPARSE=read' });
  // The package root is a few folders up: src/disk (sources under vitest) or dist/src/disk (built).
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++, dir = path.dirname(dir)) {
    const file = path.join(dir, NATIVE_SPARSE_FILE);
    if (!existsSync(file)) continue;
    try {
      const addon = createRequire(import.meta.url)(file) as NativeSparse;
      if (typeof addon.dataRuns !== 'function') return (loaded = { addon: null, reason: `${file} is not carryon's sparse addon` });
      return (loaded = { addon, reason: file });
    } catch (err) {
      return (loaded = { addon: null, reason: `${file} did not load: ${(err as Error).message}` });
    }
  }
  return (loaded = { addon: null, reason: `${NATIVE_SPARSE_FILE} is not built (npm install builds it with node-gyp: needs python3, make and a C compiler)` });
}
