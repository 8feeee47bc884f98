// NbdDataPath: `carryon serve`'s native data path (native/nbd-data): once a client has finished the NBD
// handshake (src/nbd), a plaintext, fully local disk's connection is handed to a C thread of its own,
// which reads requests and answers reads and writes itself; 4 connections then use both cores. Owns
// the answers that stay here: the dirty marks of a write to blocks not yet known dirty (made durable by
// LocalDisk before the thread writes the bytes and acknowledges), flushes, FUA syncs, zeroes and trims;
// and the end of each connection (its thread joined, its byte counts added to the disk's stats).
// Encrypted and streamed disks, and a machine without the addon (or CARRYON_NBD_DATA=js), keep the
// JavaScript path (src/nbd's transmit).
// Must not know: the NBD protocol's bytes (the addon and src/nbd do).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NbdIoError, NBD_ERRNO, type NbdExport } from '../src/index.js';

/** What the data path needs of a disk (LocalDisk; tests give a file of their own). */
export interface NativeDisk extends NbdExport {
  readonly manifest: { readonly blockSize: number };
  /** The file's descriptor while the native path may serve it (the addon dups it), else null. */
  readonly nativeFd: number | null;
  /** Make the dirty marks of a write durable; the bytes are written after it returns or resolves. */
  prepareWrite(offset: number, length: number): Promise<void> | void;
  readonly stats: { readBytes: number; writeBytes: number };
}

type Handle = object;

interface NbdDataAddon {
  openExport(size: number, blockSize: number): Handle;
  start(ex: Handle, socketFd: number, fileFd: number, tflags: number, leftover: Buffer, alwaysAsk: boolean,
    cb: (kind: number, id: number, offset: number, length: number, fua: boolean) => void): Handle;
  complete(conn: Handle, id: number, errno: number): void;
  stop(conn: Handle): void;
  join(conn: Handle): [number, number, number];
  gate(ex: Handle, closed: boolean): void;
}

/** What a connection's thread asks for (native/nbd-data's JOB_*). */
const JOB = { MARK: 1, FLUSH: 2, ZERO: 3, TRIM: 4, END: 9 } as const;

export const NBD_DATA_FILE = path.join('native', 'nbd-data', 'build', 'Release', 'carryon_nbd_data.node');

let loaded: { addon: NbdDataAddon | null; reason: string } | undefined;

/** The addon, or null with the reason (not built, turned off by CARRYON_NBD_DATA=js, failed to load). */
export function loadNbdData(): { addon: NbdDataAddon | null; reason: string } {
  if (loaded) return loaded;
  if (process.env.CARRYON_NBD_DATA === 'js') return (loaded = { addon: null, reason: 'CARRYON_NBD_DATA=js' });
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++, dir = path.dirname(dir)) {
    const file = path.join(dir, NBD_DATA_FILE);
    if (!existsSync(file)) continue;
    try {
      const addon = createRequire(import.meta.url)(file) as NbdDataAddon;
      if (typeof addon.start !== 'function') return (loaded = { addon: null, reason: `${file} is not carryon's nbd-data addon` });
      return (loaded = { addon, reason: file });
    } catch (err) {
      return (loaded = { addon: null, reason: `${file} did not load: ${(err as Error).message}` });
    }
  }
  return (loaded = { addon: null, reason: `${NBD_DATA_FILE} is not built (npm install builds it with node-gyp)` });
}

export type { NbdDataAddon };

export class NbdDataPath {
  private readonly ex: Handle;
  /** Connections whose thread has not ended yet (kept here: the addon joins a thread only after its END). */
  private readonly live = new Map<Handle, { ended: Promise<void> }>();
  /** Crash tests: every write asks here, where the crash point is (CARRYON_CRASH_AT). */
  private readonly alwaysAsk = (process.env.CARRYON_CRASH_AT ?? '') !== '';

  constructor(private readonly addon: NbdDataAddon, private readonly disk: NativeDisk, private readonly onError: (err: unknown, errno: number) => void) {
    this.ex = addon.openExport(disk.size, disk.manifest.blockSize);
  }

  get connections(): number {
    return this.live.size;
  }

  /** Only the disk this path was made for, while it is plaintext and fully local. */
  wants(exp: NbdExport): boolean {
    return exp === this.disk && this.disk.nativeFd !== null;
  }

  take(_exp: NbdExport, fd: number, tflags: number, leftover: Buffer): void {
    const fileFd = this.disk.nativeFd;
    if (fileFd === null) throw new NbdIoError(NBD_ERRNO.ESHUTDOWN, `${this.disk.name} is closing`);
    let conn: Handle | null = null;
    let end!: () => void;
    const ended = new Promise<void>((r) => {
      end = r;
    });
    const answer = (id: number, p: Promise<void> | void): void => {
      const ok = (): void => this.addon.complete(conn!, id, 0);
      const ko = (err: unknown): void => {
        const errno = err instanceof NbdIoError ? err.errno : NBD_ERRNO.EIO;
        this.onError(err, errno);
        this.addon.complete(conn!, id, errno);
      };
      if (p instanceof Promise) p.then(ok, ko);
      else ok();
    };
    const call = (id: number, f: () => Promise<void> | void): void => {
      let p: Promise<void> | void;
      try {
        p = f();
      } catch (err) {
        p = Promise.reject(err);
      }
      answer(id, p);
    };
    conn = this.addon.start(this.ex, fd, fileFd, tflags, leftover, this.alwaysAsk, (kind, id, offset, length, fua) => {
      switch (kind) {
        case JOB.MARK:
          return call(id, () => this.disk.prepareWrite(offset, length));
        case JOB.FLUSH:
          return call(id, () => this.disk.flush());
        case JOB.ZERO:
        case JOB.TRIM:
          return call(id, () => this.disk.zero(offset, length, fua, kind === JOB.TRIM));
        case JOB.END: {
          const [readBytes, writeBytes] = this.addon.join(conn!);
          this.disk.stats.readBytes += readBytes;
          this.disk.stats.writeBytes += writeBytes;
          this.live.delete(conn!);
          return end();
        }
      }
    });
    this.live.set(conn, { ended });
  }

  /** Run fn with no write of a connection's thread landing meanwhile (a point-in-time snapshot). */
  gated<T>(fn: () => T): T {
    this.addon.gate(this.ex, true);
    try {
      return fn();
    } finally {
      this.addon.gate(this.ex, false);
    }
  }

  /** End every connection; resolves once each thread has answered what it owed and closed. */
  async stopAll(): Promise<void> {
    const list = [...this.live.entries()];
    for (const [conn] of list) this.addon.stop(conn);
    await Promise.all(list.map(([, l]) => l.ended));
  }
}
