// disk: reading a raw disk image into a manifest.
// Owns: the sequential scan that hashes every block (cheap hash always, SHA-256 only where the cheap
// hash changed), hole detection, and the cheap-hash table a laptop keeps beside a checkout.
// Must not know: stores, HTTP, desktops. Callers get changed blocks through a callback.
import { promises as fs } from 'node:fs';
import { CarryonError } from '../errors/index.js';
import { blockId, CheapHasher, forgetVerified, isAllZero, verifiedBlockId, type BlockId } from '../hash/index.js';
import { DiskManifest } from '../manifest/index.js';

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
}

export interface ScanResult {
  manifest: DiskManifest;
  cheap: BigUint64Array;
  /** Indices whose id differs from previous (all non-hole blocks without a previous). */
  changed: number[];
  bytesRead: number;
}

const CHUNK = 8 * 1024 * 1024;

/** Scan a raw image. Reading runs one chunk ahead of hashing, so the disk stays busy. */
export async function scanImage(file: string, opts: ScanOptions): Promise<ScanResult> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const manifest = new DiskManifest(size, opts.blockSize);
    const cheap = new BigUint64Array(manifest.count);
    const hasher = new CheapHasher();
    const prev = opts.previous;
    const samePrev = prev && prev.manifest.blockSize === opts.blockSize ? prev : undefined;
    const changed: number[] = [];
    const chunk = Math.max(CHUNK, opts.blockSize);
    const bufs = [Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk)];
    const readAt = (k: number, pos: number) => fh.read(bufs[k]!, 0, Math.min(chunk, size - pos), pos);
    let pos = 0;
    let k = 0;
    let pending = size > 0 ? readAt(0, 0) : null;
    while (pending) {
      const { bytesRead } = await pending;
      const expect = Math.min(chunk, size - pos);
      if (bytesRead !== expect) throw new CarryonError('DISK_CHANGED', `disk image ${file} shrank while it was read`, { file });
      const here = pos;
      pos += bytesRead;
      const buf = bufs[k]!;
      pending = pos < size ? readAt(k ^ 1, pos) : null;
      opts.decrypt?.(buf.subarray(0, bytesRead), here);
      opts.signal?.throwIfAborted();
      for (let off = 0; off < bytesRead; off += opts.blockSize) {
        const i = (here + off) / opts.blockSize;
        const plain = buf.subarray(off, Math.min(off + opts.blockSize, bytesRead));
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
      opts.onProgress?.(pos, size);
      k ^= 1;
    }
    const after = (await fh.stat()).size;
    if (after !== size) throw new CarryonError('DISK_CHANGED', `disk image ${file} changed size while it was read`, { file, before: size, after });
    return { manifest, cheap, changed, bytesRead: pos };
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
    return { manifest, cheap, changed, bytesRead };
  } finally {
    await fh.close();
  }
}
