// DiskLock: one carryon process at a time may have a checked-out disk open for writing (serve,
// check-in, finishing a check-out, discard). A lock file holds the owner's pid; a lock left by a
// process that died (kill -9, power cut) is taken over, since no process can still be writing.
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { CarryonError } from '../src/index.js';

export class DiskLock {
  private constructor(readonly file: string) {}

  static acquire(home: string, desktop: string, purpose: string): DiskLock {
    const dir = path.join(home, 'run');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, `${desktop}.lock`);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fd = openSync(file, 'wx', 0o600);
        writeSync(fd, JSON.stringify({ pid: process.pid, purpose, since: new Date().toISOString() }));
        closeSync(fd);
        return new DiskLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = DiskLock.owner(home, desktop);
      if (owner) {
        throw new CarryonError('DISK_IN_USE', `the disk of ${desktop} is in use by carryon ${owner.purpose} (pid ${owner.pid}, since ${owner.since}): stop it first`, { desktop, ...owner });
      }
      try {
        unlinkSync(file); // stale: its process is gone
      } catch {
        /* someone else took it over first: try again */
      }
    }
    throw new CarryonError('DISK_IN_USE', `could not lock the disk of ${desktop}`, { desktop });
  }

  /** The live process holding the lock, or null. */
  static owner(home: string, desktop: string): { pid: number; purpose: string; since: string } | null {
    try {
      const o = JSON.parse(readFileSync(path.join(home, 'run', `${desktop}.lock`), 'utf8')) as { pid: number; purpose: string; since: string };
      if (o.pid === process.pid) return o;
      process.kill(o.pid, 0);
      return o;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EPERM') return { pid: -1, purpose: 'another user', since: '' };
      return null;
    }
  }

  release(): void {
    try {
      unlinkSync(this.file);
    } catch {
      /* already gone */
    }
  }
}
