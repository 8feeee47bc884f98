// FuseFile: the served disk as a plain file, for hypervisors that cannot speak NBD (VirtualBox, VMware).
// `carryon serve NAME --file DIR` runs Debian's nbdfuse (libnbd-bin) against serve's own export, so a
// write the hypervisor makes to DIR/NAME.raw is an NBD WRITE through the dirty map, like QEMU's.
// Owns: checking that FUSE is usable, the mount folder's rules, starting nbdfuse, and the unmount
// (fusermount3 -u, which waits for the hypervisor to close the file unless forced). Must not know:
// NBD, disks or the journal. Terms: mount folder (DIR, the user's choice, never inside the carryon
// home), the file (DIR/NAME.raw: a virtual file whose bytes live only in the export, never on disk).
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readdirSync, realpathSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { CarryonError } from '../src/index.js';

type Log = (event: string, fields: Record<string, unknown>, human: string) => void;

/** The programs and device serve --file needs: FUSE_UNAVAILABLE naming each one missing. */
export function requireFuse(): void {
  const missing: string[] = [];
  const hints: string[] = [];
  for (const [tool, pkg] of [['nbdfuse', 'libnbd-bin'], ['fusermount3', 'fuse3']] as const) {
    if (!onPath(tool)) {
      missing.push(tool);
      hints.push(`${tool} (Debian/Ubuntu package ${pkg})`);
    }
  }
  try {
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK);
  } catch {
    missing.push('/dev/fuse');
    hints.push('/dev/fuse (modprobe fuse; in a container, pass the device in)');
  }
  if (missing.length > 0) {
    throw new CarryonError('FUSE_UNAVAILABLE', `serve --file needs ${hints.join(' and ')}, not found on this machine: install them (apt install libnbd-bin fuse3), or attach the VM over NBD without --file`, { missing });
  }
}

function onPath(tool: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    try {
      accessSync(path.join(dir, tool), constants.X_OK);
      if (statSync(path.join(dir, tool)).isFile()) return true;
    } catch {
      /* not here */
    }
  }
  return false;
}

/** Whether `inner` is `outer` or below it (both absolute, symlinks resolved). */
function isWithin(inner: string, outer: string): boolean {
  const rel = path.relative(outer, inner);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** `p` with symlinks resolved as far as it exists, the rest appended. */
function realpathSoFar(p: string): string {
  const rest: string[] = [];
  let cur = p;
  for (;;) {
    try {
      return path.join(realpathSync(cur), ...rest.reverse());
    } catch {
      const up = path.dirname(cur);
      if (up === cur) return p;
      rest.push(path.basename(cur));
      cur = up;
    }
  }
}

/**
 * Check a mount folder before anything starts: not inside the carryon home (a FUSE file there would put
 * the disk's plain bytes in the tree that holds, and is searched and wiped as, carryon's own state) and,
 * if it exists, an empty folder that is not a mount already (a mount would hide its files, and a
 * hypervisor pointed at DIR/NAME.raw while nothing is mounted would write into a plain file there).
 */
export function checkMountDir(dir: string, home: string): string {
  const abs = path.resolve(dir);
  const real = realpathSoFar(abs);
  const realHome = realpathSoFar(path.resolve(home));
  if (isWithin(real, realHome)) {
    throw new CarryonError('INVALID_ARGUMENT', `--file ${dir}: the mount folder must be outside the carryon home (${home}): choose a folder of your own, e.g. ~/vm/NAME`, { path: abs, home });
  }
  let st;
  try {
    st = statSync(abs, { throwIfNoEntry: false });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') throw deadMount(abs);
    throw err;
  }
  if (!st) return abs;
  if (!st.isDirectory()) throw new CarryonError('INVALID_ARGUMENT', `--file ${dir}: not a folder`, { path: abs });
  let names: string[];
  try {
    names = readdirSync(abs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') throw deadMount(abs);
    throw err;
  }
  if (names.length > 0) throw new CarryonError('INVALID_ARGUMENT', `--file ${dir}: the mount folder must be empty (it holds ${names.length} entries${names.length ? `, e.g. ${names[0]}` : ''}; is another serve --file using it?)`, { path: abs });
  if (statSync(path.dirname(abs)).dev !== st.dev) throw new CarryonError('INVALID_ARGUMENT', `--file ${dir}: something is mounted there already (fusermount3 -u ${abs}?)`, { path: abs });
  return abs;
}

function deadMount(abs: string): CarryonError {
  return new CarryonError('INVALID_ARGUMENT', `--file ${abs}: a FUSE mount whose program died is left there: run fusermount3 -u ${abs} first`, { path: abs });
}

function fusermount(args: string[]): Promise<{ ok: boolean; message: string }> {
  return new Promise((resolve) => {
    const p = spawn('fusermount3', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr!.on('data', (c) => (err += c));
    p.on('error', (e) => resolve({ ok: false, message: e.message }));
    p.on('close', (code) => resolve({ ok: code === 0, message: err.trim() }));
  });
}

export interface FuseFileOptions {
  /** The mount folder, as checkMountDir returned it. */
  dir: string;
  /** The file's name inside the folder. */
  fileName: string;
  /** The export: serve's Unix socket, or its TCP port on 127.0.0.1. */
  socket: string | null;
  port: number | null;
  /** Where nbdfuse writes its pid once the file is ready (in HOME/run). */
  pidFile: string;
  /** The export's size: the mounted file must show it. */
  size: number;
}

export class FuseFile {
  /** Resolves when nbdfuse exits, for whatever reason. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private done = false;
  private stderr = '';

  private constructor(readonly file: string, readonly dir: string, private readonly created: boolean, private readonly proc: ChildProcess) {
    this.exited = new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve({ code: proc.exitCode, signal: proc.signalCode });
      proc.once('exit', (code, signal) => resolve({ code, signal }));
    });
    void this.exited.then(() => (this.done = true));
    proc.stderr!.on('data', (c) => {
      this.stderr = (this.stderr + c).slice(-4096);
    });
  }

  /** nbdfuse's last words (stderr, at most 4 KiB). */
  lastWords(): string {
    return this.stderr.trim();
  }

  /**
   * Mount the export at DIR/NAME.raw and return once the file is there at full size. Options for a VM
   * image: `auto_unmount` (if nbdfuse dies, even by kill -9, fusermount3 removes the mount, so nothing
   * is left for a hypervisor to write a plain file into); no `kernel_cache` (each open starts from the
   * export, not from stale pages); the default 4 connections (the export advertises multi-conn).
   */
  static async mount(o: FuseFileOptions): Promise<FuseFile> {
    const created = !existsSync(o.dir);
    if (created) mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    const file = path.join(o.dir, o.fileName);
    try {
      unlinkSync(o.pidFile);
    } catch {
      /* none */
    }
    const target = o.socket ? ['--unix', o.socket] : ['--tcp', '127.0.0.1', String(o.port)];
    const proc = spawn('nbdfuse', ['-o', 'auto_unmount', '-P', o.pidFile, file, ...target], { stdio: ['ignore', 'ignore', 'pipe'] });
    const f = new FuseFile(file, o.dir, created, proc);
    let spawnError: Error | null = null;
    proc.on('error', (e) => (spawnError = e));
    const parentDev = statSync(path.dirname(o.dir)).dev;
    const t0 = Date.now();
    for (;;) {
      if (spawnError || f.done) {
        f.removeDir();
        const why = spawnError ? (spawnError as Error).message : f.lastWords() || 'no message';
        throw new CarryonError('FUSE_UNAVAILABLE', `nbdfuse could not mount ${o.dir}: ${why}`, { path: o.dir });
      }
      if (existsSync(o.pidFile)) {
        const st = statSync(file, { throwIfNoEntry: false });
        if (st && statSync(o.dir).dev !== parentDev && st.size === o.size) break;
      }
      if (Date.now() - t0 > 20_000) {
        await f.unmount(() => undefined, true);
        throw new CarryonError('FUSE_UNAVAILABLE', `nbdfuse did not mount ${o.dir} within 20 s: ${f.lastWords() || 'no message'}`, { path: o.dir });
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    try {
      unlinkSync(o.pidFile);
    } catch {
      /* gone */
    }
    return f;
  }

  /**
   * Unmount (fusermount3 -u), then wait for nbdfuse to exit. While the hypervisor still has the file
   * open the unmount is refused (EBUSY): serve says so once, keeps the export up and retries each
   * second; one more SIGINT/SIGTERM forces it (lazy unmount, nbdfuse stopped: the VM sees I/O errors;
   * every write it was told had succeeded is already in the disk and the dirty map). `force` skips
   * the wait. After nbdfuse exited on its own (someone ran fusermount3 -u, or it died), this only
   * clears what may be left.
   */
  async unmount(log: Log, force = false): Promise<void> {
    if (!this.done) {
      let forced = force;
      let wake: (() => void) | null = null;
      const onSignal = (): void => {
        forced = true;
        wake?.();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        let warned = false;
        for (;;) {
          if (this.done) break;
          if (forced) {
            await fusermount(['-u', '-z', this.dir]);
            this.proc.kill('SIGTERM');
            if (warned) log('file-forced', { file: this.file }, `carryon serve: unmounted ${this.file} by force; a VM still using it gets I/O errors`);
            break;
          }
          const r = await fusermount(['-u', this.dir]);
          if (r.ok) break;
          if (!warned) {
            warned = true;
            log('file-busy', { file: this.file, message: r.message },
              `carryon serve: ${this.file} is still open (${r.message || 'busy'}): shut down the VM using it; serve unmounts it and stops as soon as it is closed. ` +
              'Ctrl-C (or SIGTERM) once more forces it: the VM then gets I/O errors.');
          }
          await new Promise<void>((r) => {
            const t = setTimeout(r, 1000);
            wake = () => {
              clearTimeout(t);
              r();
            };
          });
          wake = null;
        }
      } finally {
        process.removeListener('SIGINT', onSignal);
        process.removeListener('SIGTERM', onSignal);
      }
      // nbdfuse waits up to 5 s for requests in flight before it exits.
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
      await this.exited;
      clearTimeout(timer);
    }
    // Whatever nbdfuse left mounted (auto_unmount normally removes it already).
    try {
      if (statSync(path.dirname(this.dir)).dev !== statSync(this.dir).dev) await fusermount(['-u', '-z', this.dir]);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') await fusermount(['-u', '-z', this.dir]);
    }
    this.removeDir();
  }

  private removeDir(): void {
    if (!this.created) return;
    try {
      rmdirSync(this.dir); // only if empty: a folder of ours, never the user's files
    } catch {
      /* not empty or gone */
    }
  }
}
