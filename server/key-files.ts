// Key files in the data folder (DATA/escrow, DATA/release): written whole or not at all, and a private
// key created once, exclusively, even when two processes start at the same moment.
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';

export function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Write a file whole or not at all: a temp file, fsynced, renamed over the name, the folder fsynced. */
export function writeAtomic(file: string, text: string, mode = 0o600): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  syncDir(path.dirname(file));
}

/**
 * Create `file` (0600) holding `make()`'s text, unless it exists. Returns false when another process
 * made it first (then the caller derives from theirs).
 */
export function createKeyFile(file: string, make: () => string): boolean {
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    writeSync(fd, make());
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  syncDir(path.dirname(file));
  return true;
}
