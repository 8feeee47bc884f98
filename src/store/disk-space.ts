// diskSpace: free and total bytes of the file system holding a path (statfs), for the checks that
// refuse work a full disk would fail half-way, and for the figures status and metrics report.
import { statfsSync } from 'node:fs';

export interface DiskSpace {
  /** Bytes an unprivileged writer may still use. */
  free: number;
  total: number;
}

export function diskSpace(dir: string): DiskSpace {
  const s = statfsSync(dir);
  return { free: s.bavail * s.bsize, total: s.blocks * s.bsize };
}
