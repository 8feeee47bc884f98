// Disk users: which other processes on this machine may be writing a disk file right now. A check-in
// must not read a disk that a VM still writes (the version would miss its later writes), and the
// DiskLock only knows carryon's own processes. Two sources, both from Linux's /proc:
// - open file handles: /proc/PID/fd/N links that resolve to the disk's inode, whose
//   /proc/PID/fdinfo/N `flags` (octal open flags) have O_WRONLY or O_RDWR. A hypervisor on the raw
//   file (QEMU `-drive file=`, VirtualBox, a dd) opens it so;
// - byte-range locks in /proc/locks on the disk's device and inode: QEMU (qemu-system, qemu-io,
//   qemu-img, qemu-nbd) holds OFD read locks on bytes 100+i for each permission it holds, so a lock
//   covering byte 101 (its WRITE permission) means "open for writing"; any lock of type WRITE does too.
//   OFD locks show no pid (-1): they count only when no open handle names the writer, e.g. a QEMU run
//   by another user whose /proc/PID/fd this process may not read.
// Processes whose /proc entries cannot be read are skipped; Linux only (elsewhere: none found).
import { readdirSync, readFileSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';

export interface DiskWriter {
  /** The process id, or null when only an OFD lock (which names no process) shows the writer. */
  pid: number | null;
  /** The process's short name (/proc/PID/comm, e.g. `qemu-system-x86`), or null when unknown. */
  command: string | null;
  /** How it was seen: an open handle for writing, or a lock. */
  via: 'open-for-writing' | 'lock';
}

/** QEMU's lock bytes (block/file-posix.c): RAW_LOCK_PERM_BASE + the bit of BLK_PERM_WRITE. */
const QEMU_WRITE_PERM_BYTE = 100 + 1;
const O_ACCMODE = 3;

/** Other processes that have `file` open for writing or hold a write lock on it (this process excluded). */
export function diskWriters(file: string, opts: { exclude?: number[] } = {}): DiskWriter[] {
  let real: string;
  let dev: bigint;
  let ino: bigint;
  try {
    real = realpathSync(file);
    const st = statSync(real, { bigint: true });
    dev = st.dev;
    ino = st.ino;
  } catch {
    return []; // no file: nobody can be writing it
  }
  const exclude = new Set([process.pid, ...(opts.exclude ?? [])]);
  const found: DiskWriter[] = [];
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
  for (const p of pids) {
    const pid = Number(p);
    if (exclude.has(pid)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue; // gone, or another user's
    }
    for (const fd of fds) {
      try {
        // A cheap string test first; the inode settles it (the same path may name another file by now).
        if (readlinkSync(`/proc/${p}/fd/${fd}`) !== real) continue;
        const st = statSync(`/proc/${p}/fd/${fd}`, { bigint: true });
        if (st.dev !== dev || st.ino !== ino) continue;
        const flags = /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/${p}/fdinfo/${fd}`, 'utf8'));
        if (!flags || (parseInt(flags[1]!, 8) & O_ACCMODE) === 0) continue;
        found.push({ pid, command: commandOf(pid), via: 'open-for-writing' });
        break;
      } catch {
        /* closed meanwhile */
      }
    }
  }
  for (const lock of locksOn(dev, ino)) {
    if (lock.pid !== null && (exclude.has(lock.pid) || found.some((w) => w.pid === lock.pid))) continue;
    if (lock.pid === null && found.length > 0) continue; // an OFD lock: most likely one of the handles above
    if (lock.pid === null && found.some((w) => w.pid === null)) continue;
    found.push({ pid: lock.pid, command: lock.pid === null ? null : commandOf(lock.pid), via: 'lock' });
  }
  return found;
}

/** One sentence naming the writers, e.g. "PID 1234 (qemu-system-x86) has disk.raw open for writing". */
export function describeWriters(file: string, writers: DiskWriter[]): string {
  const name = path.basename(file);
  return writers.map((w) => {
    const who = w.pid === null ? 'a process this user cannot see' : `PID ${w.pid}${w.command ? ` (${w.command})` : ''}`;
    return w.via === 'lock' ? `${who} holds a write lock on ${name}` : `${who} has ${name} open for writing`;
  }).join('; ');
}

function commandOf(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() || null;
  } catch {
    return null;
  }
}

/** Write locks (by type, or QEMU's write-permission byte) on the file with this device and inode. */
function locksOn(dev: bigint, ino: bigint): Array<{ pid: number | null }> {
  try {
    return writeLocksIn(readFileSync('/proc/locks', 'utf8'), dev, ino);
  } catch {
    return [];
  }
}

/** The write locks that /proc/locks text lists on the file with this st_dev and inode. */
export function writeLocksIn(text: string, dev: bigint, ino: bigint): Array<{ pid: number | null }> {
  // glibc's encoding of st_dev; /proc/locks prints the kernel's MAJOR:MINOR in hex.
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  const out: Array<{ pid: number | null }> = [];
  // "1: OFDLCK ADVISORY  READ -1 fe:00:2148142 100 101"; waiters ("1: -> POSIX ...") hold nothing yet.
  for (const m of text.matchAll(/^\d+:\s+(POSIX|FLOCK|OFDLCK|DELEG|LEASE)\s+\S+\s+(READ|WRITE|UNLCK)\s+(-?\d+)\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s+(\d+)\s+(\d+|EOF)\s*$/gm)) {
    const [, kind, type, pid, maj, min, inode, start, end] = m;
    if (BigInt(`0x${maj}`) !== major || BigInt(`0x${min}`) !== minor || BigInt(inode!) !== ino) continue;
    // Only QEMU's own small ranges (bytes 100-299): a shared lock of the whole file is a reader's.
    const coversQemuWrite = end !== 'EOF' && Number(start) >= 100 && Number(start) <= QEMU_WRITE_PERM_BYTE && Number(end) >= QEMU_WRITE_PERM_BYTE && Number(end) < 300;
    if (type !== 'WRITE' && !(kind !== 'FLOCK' && coversQemuWrite)) continue;
    const n = Number(pid);
    out.push({ pid: n > 0 ? n : null });
  }
  return out;
}
