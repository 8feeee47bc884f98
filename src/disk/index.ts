// disk: reading a raw disk image into a manifest.
// Owns: the sequential scan that hashes every block (cheap hash always, SHA-256 only where the cheap
// hash changed), hole detection (holes of a sparse file skipped unread through native/sparse's
// SEEK_DATA / SEEK_HOLE, else read and found zero), and the cheap-hash table a laptop keeps beside a
// checkout.
// Must not know: stores, HTTP, desktops. Callers get changed blocks through a callback.
import { promises as fs } from 'node:fs';
import { CarryonError } from '../errors/index.js';
import { blockId, CheapHasher, forgetVerified, isAllZero, verifiedBlockId, type BlockId } from '../hash/index.js';
import { DiskManifest } from '../manifest/index.js';
import { loadNativeSparse, type NativeSparse } from './native-sparse.js';

export interface ScanPrevious {
  manifest: DiskManifest;
  /** cheap[i] = CheapHasher hash of block i as materialized. */
  cheap: BigUint64Array;
}

export interface ScanOptions {
  blockSize: number;
  previous?: ScanPrevious;
  /** Called for each block whose content is new to this scan (not a hole, cheap hash changed). `plain` is reused after the promise settles. */
  onChanged?: (index: number, id: BlockId, plain: Buffer) => Promise<void> | void;
  onProgress?: (bytesRead: number, totalBytes: number) => void;
  signal?: AbortSignal;
  /** Turns the file's bytes at `position` (a block boundary) into plaintext in place: an encrypted copy. */
  decrypt?: (data: Buffer, position: number) => void;
  /**
   * How holes are found: 'seek-data' skips the file's holes unread (native/sparse: lseek SEEK_DATA /
   * SEEK_HOLE), 'read' reads every byte. Default: 'seek-data' when the addon is loaded, else 'read'.
   * Both give the same manifest, cheap table and changed list.
   */
  holes?: HoleMode;
}

/** How a scan found holes: skipped unread by SEEK_DATA ('seek-data'), or read and found zero ('read'). */
export type HoleMode = 'seek-data' | 'read';

export interface ScanResult {
  manifest: DiskManifest;
  cheap: BigUint64Array;
  /** Indices whose id differs from previous (all non-hole blocks without a previous). */
  changed: number[];
  /** Bytes read from the file (the whole file with holes 'read'; the blocks that hold data with 'seek-data'). */
  bytesRead: number;
  holes: HoleMode;
}

const CHUNK = 8 * 1024 * 1024;
/** Data runs asked of the addon per call. */
const RUNS_PER_CALL = 256;

/** The hole mode a scan gets by default here, and why (the addon's path, or why it is not loaded). */
export function defaultHoleMode(): { mode: HoleMode; detail: string } {
  const { addon, reason } = loadNativeSparse();
  return { mode: addon ? 'seek-data' : 'read', detail: reason };
}

/**
 * One step of a scan: blocks in [holeFrom, dataFrom) are known holes (not read), [dataFrom, dataEnd) is
 * read (at most one chunk). All block-aligned but for the file's end.
 */
interface Step {
  holeFrom: number;
  dataFrom: number;
  dataEnd: number;
}

/** Every byte read, in chunks: what scans did before native/sparse, and still do without it. */
function* readAll(size: number, chunk: number): Generator<Step> {
  for (let pos = 0; pos < size; pos += chunk) yield { holeFrom: pos, dataFrom: pos, dataEnd: Math.min(pos + chunk, size) };
}

/**
 * Only the blocks that meet a data run of the file (lseek SEEK_DATA / SEEK_HOLE), in chunks; the
 * blocks between are holes. Runs are asked for as the scan goes, so a run is looked up shortly before it
 * is read. A block partly in a run is read whole (a hole inside it reads as zeros).
 */
function* readData(addon: NativeSparse, fd: number, size: number, blockSize: number, chunk: number): Generator<Step> {
  const out = new Float64Array(2 * RUNS_PER_CALL);
  let have = 0;
  let next = 0;
  let more = true;
  let asked = 0;
  /** The next raw run at or after `from`, or null. */
  const take = (from: number): [number, number] | null => {
    for (;;) {
      while (next < have) {
        const a = out[2 * next]!;
        const b = out[2 * next + 1]!;
        next++;
        if (b > from) return [Math.max(a, from), b];
      }
      if (!more) return null;
      const at = Math.max(from, asked);
      if (at >= size) return null;
      have = addon.dataRuns(fd, at, size, out);
      next = 0;
      more = have === RUNS_PER_CALL;
      asked = have > 0 ? out[2 * have - 1]! : size;
      if (have === 0) return null;
    }
  };
  const down = (x: number): number => Math.floor(x / blockSize) * blockSize;
  const up = (x: number): number => Math.min(Math.ceil(x / blockSize) * blockSize, size);
  let pos = 0;
  let run = take(0);
  while (pos < size) {
    if (!run) {
      yield { holeFrom: pos, dataFrom: size, dataEnd: size };
      return;
    }
    // The run's blocks, merged with the following runs that share or touch its last block.
    const a = Math.max(down(run[0]), pos);
    let b = up(run[1]);
    for (run = take(b); run && down(run[0]) <= b; run = take(b)) b = Math.max(b, up(run[1]));
    let from = pos;
    for (let at = a; at < b; at = Math.min(at + chunk, b)) {
      yield { holeFrom: from, dataFrom: at, dataEnd: Math.min(at + chunk, b) };
      from = Math.min(at + chunk, b);
    }
    pos = b;
  }
}

/**
 * Scan a raw image. Reading runs one chunk ahead of hashing, so the disk stays busy. With the sparse
 * addon, holes are not read: a block with no data in the file is a hole, which it would be if read
 * (all zeros), so the manifest is the same either way.
 */
export async function scanImage(file: string, opts: ScanOptions): Promise<ScanResult> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const manifest = new DiskManifest(size, opts.blockSize);
    const bs = opts.blockSize;
    const cheap = new BigUint64Array(manifest.count);
    const hasher = new CheapHasher();
    const prev = opts.previous;
    const samePrev = prev && prev.manifest.blockSize === bs ? prev : undefined;
    const changed: number[] = [];
    const chunk = Math.max(CHUNK, bs);
    const addon = opts.holes === 'read' ? null : loadNativeSparse().addon;
    if (opts.holes === 'seek-data' && !addon) throw new CarryonError('INVALID_ARGUMENT', `holes 'seek-data' needs the sparse addon: ${loadNativeSparse().reason}`);
    const holes: HoleMode = addon ? 'seek-data' : 'read';
    const steps = addon ? readData(addon, fh.fd, size, bs, chunk) : readAll(size, chunk);
    const bufs = [Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk)];
    const readAt = (k: number, st: Step | undefined) => (st && st.dataEnd > st.dataFrom ? fh.read(bufs[k]!, 0, st.dataEnd - st.dataFrom, st.dataFrom) : null);
    // The cheap hash of an all-zero block, per length (the last block may be short).
    const zeroCheap = new Map<number, bigint>();
    const zeroHash = (len: number): bigint => {
      let h = zeroCheap.get(len);
      if (h === undefined) zeroCheap.set(len, (h = hasher.hash(Buffer.alloc(len))));
      return h;
    };
    /** Block i was not read (no data in the file there): what the read path below does with a block of zeros. */
    const hole = (i: number, len: number, h: bigint): void => {
      cheap[i] = h;
      const sameLen = samePrev && i < samePrev.manifest.count && samePrev.manifest.lengthOf(i) === len;
      if (sameLen && samePrev.cheap[i] === h) {
        samePrev.manifest.ids.copy(manifest.ids, i * 32, i * 32, i * 32 + 32);
        return;
      }
      if (samePrev && !(sameLen && samePrev.manifest.isHole(i))) changed.push(i);
      // hole: ids stay zero
    };
    let bytesRead = 0;
    let k = 0;
    let step = steps.next().value as Step | undefined;
    let pending = readAt(0, step);
    while (step) {
      const here = step.dataFrom;
      const expect = step.dataEnd - here;
      const got = pending ? (await pending).bytesRead : 0;
      if (got !== expect) throw new CarryonError('DISK_CHANGED', `disk image ${file} shrank while it was read`, { file });
      const buf = bufs[k]!;
      const after = steps.next().value as Step | undefined;
      pending = readAt(k ^ 1, after);
      for (let i = step.holeFrom / bs; i < here / bs; i++) {
        const len = manifest.lengthOf(i);
        hole(i, len, zeroHash(len));
      }
      bytesRead += got;
      opts.decrypt?.(buf.subarray(0, got), here);
      opts.signal?.throwIfAborted();
      for (let off = 0; off < got; off += bs) {
        const i = (here + off) / bs;
        const plain = buf.subarray(off, Math.min(off + bs, got));
        const h = hasher.hash(plain);
        cheap[i] = h;
        const sameLen = samePrev && i < samePrev.manifest.count && samePrev.manifest.lengthOf(i) === plain.length;
        if (sameLen && samePrev.cheap[i] === h) {
          samePrev.manifest.ids.copy(manifest.ids, i * 32, i * 32, i * 32 + 32);
          continue;
        }
        if (isAllZero(plain)) {
          if (samePrev && !(sameLen && samePrev.manifest.isHole(i))) changed.push(i);
          continue; // hole: ids stay zero
        }
        // Remembered as checked while onChanged runs (a store's put gate need not hash it again), and
        // forgotten before this read buffer takes the next chunk.
        const id = verifiedBlockId(plain);
        manifest.setId(i, id);
        try {
          if (!sameLen || samePrev.manifest.idAt(i) !== id) {
            changed.push(i);
            if (opts.onChanged) await opts.onChanged(i, id, plain);
          }
        } finally {
          forgetVerified(plain);
        }
      }
      opts.onProgress?.(step.dataEnd, size);
      k ^= 1;
      step = after;
    }
    const sizeAfter = (await fh.stat()).size;
    if (sizeAfter !== size) throw new CarryonError('DISK_CHANGED', `disk image ${file} changed size while it was read`, { file, before: size, after: sizeAfter });
    return { manifest, cheap, changed, bytesRead, holes };
  } finally {
    await fh.close();
  }
}

/** Cheap hashes as bytes for storage, and back. */
export function encodeCheap(cheap: BigUint64Array): Buffer {
  return Buffer.from(cheap.buffer, cheap.byteOffset, cheap.byteLength);
}
export function decodeCheap(buf: Uint8Array): BigUint64Array {
  const copy = Buffer.from(buf);
  return new BigUint64Array(copy.buffer, copy.byteOffset, copy.byteLength / 8);
}

/**
 * Re-read only `blocks` (sorted indices, e.g. from a dirty map) of an image whose other blocks are
 * known to equal `previous`: the cost grows with the change, not with the disk. Same result shape
 * as scanImage. The image must still have the previous manifest's size.
 */
export async function rescanBlocks(file: string, blocks: number[], previous: ScanPrevious, onProgress?: (bytesRead: number, totalBytes: number) => void,
  decrypt?: ScanOptions['decrypt']): Promise<ScanResult> {
  const prev = previous.manifest;
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    if (size !== prev.size) throw new CarryonError('DISK_CHANGED', `disk image ${file} is ${size} bytes, the checkout's is ${prev.size}`, { file, size, expected: prev.size });
    const manifest = new DiskManifest(prev.size, prev.blockSize, Buffer.from(prev.ids));
    const cheap = new BigUint64Array(previous.cheap);
    const hasher = new CheapHasher();
    const changed: number[] = [];
    const total = blocks.reduce((n, i) => n + prev.lengthOf(i), 0);
    const buf = Buffer.allocUnsafe(Math.max(CHUNK, prev.blockSize));
    let bytesRead = 0;
    for (let k = 0; k < blocks.length;) {
      // A run of consecutive blocks, read at once.
      let j = k + 1;
      while (j < blocks.length && blocks[j] === blocks[j - 1]! + 1 && (j - k + 1) * prev.blockSize <= buf.length) j++;
      const first = blocks[k]!;
      const start = first * prev.blockSize;
      const len = (blocks[j - 1]! - first) * prev.blockSize + prev.lengthOf(blocks[j - 1]!);
      const { bytesRead: n } = await fh.read(buf, 0, len, start);
      if (n !== len) throw new CarryonError('DISK_CHANGED', `disk image ${file} shrank while it was read`, { file });
      decrypt?.(buf.subarray(0, len), start);
      for (let t = k; t < j; t++) {
        const i = blocks[t]!;
        const off = (i - first) * prev.blockSize;
        const plain = buf.subarray(off, off + prev.lengthOf(i));
        cheap[i] = hasher.hash(plain);
        const id = isAllZero(plain) ? null : blockId(plain);
        manifest.setId(i, id);
        if (id !== prev.idAt(i)) changed.push(i);
      }
      bytesRead += len;
      onProgress?.(bytesRead, total);
      k = j;
    }
    return { manifest, cheap, changed, bytesRead, holes: 'read' };
  } finally {
    await fh.close();
  }
}
