// Golden images in the formats admins hold (issue 15): qcow2 (with its backing chain), VMDK, VHDX, VDI,
// VHD, or raw. Owns: telling them apart (their own magic first, then `qemu-img info`), refusing what is
// not a disk image (IMAGE_FORMAT_UNSUPPORTED, saying what it looks like), and a raw view of a container
// image without a raw copy: qemu-storage-daemon's FUSE export of the (flattened, read-only) image onto a
// file in the data folder's tmp/, which the block scan reads like a raw disk (SEEK_DATA included), then
// unmounts. The way back (`image export`) writes into a new container through the same export, writable.
// Must not know: blocks, manifests, HTTP.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CarryonError } from '../src/index.js';

export type ImageFormat = 'raw' | 'qcow2' | 'vmdk' | 'vhdx' | 'vdi' | 'vpc';
/** Formats a desktop image may be published from or exported to. */
export const IMAGE_FORMATS: readonly ImageFormat[] = ['raw', 'qcow2', 'vmdk', 'vhdx', 'vdi', 'vpc'];

export interface ImageProbe {
  format: ImageFormat;
  /** Size of the disk the image holds (the flattened chain's), bytes. */
  virtualSize: number;
  /** The files the disk is read from, the image first, then its backing files (qcow2, VMDK). */
  chain: string[];
}

/**
 * What a file's first bytes say it is, when that is a compressed file or an archive holding a disk image
 * rather than a disk (qemu-img would take it for raw). Only those: a raw disk may start with anything
 * else (an ISO, a program's bytes). `image publish --raw` skips this for a disk that happens to start so.
 */
function notADisk(head: Buffer): string | null {
  const starts = (sig: number[] | string, at = 0): boolean => {
    const b = typeof sig === 'string' ? Buffer.from(sig, 'latin1') : Buffer.from(sig);
    return head.length >= at + b.length && head.subarray(at, at + b.length).equals(b);
  };
  if (starts([0x1f, 0x8b])) return 'a gzip file: decompress it first (gunzip)';
  if (starts([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) return 'an xz file: decompress it first (unxz)';
  if (starts([0x28, 0xb5, 0x2f, 0xfd])) return 'a zstd file: decompress it first (zstd -d)';
  if (starts('BZh')) return 'a bzip2 file: decompress it first (bunzip2)';
  if (starts('PK\x03\x04')) return 'a ZIP archive: extract the disk image from it first';
  if (starts('ustar', 257)) return 'a tar archive (an OVA is one): extract the disk image (.vmdk) from it first';
  return null;
}

/** The container magic of the formats qemu reads, so a raw disk is never sent through qemu-img at all. */
function containerMagic(head: Buffer, tail: Buffer): ImageFormat | null {
  const at = (s: string, o = 0): boolean => head.length >= o + s.length && head.toString('latin1', o, o + s.length) === s;
  if (at('QFI\xfb')) return 'qcow2';
  if (at('KDMV') || at('# Disk DescriptorFile')) return 'vmdk';
  if (at('vhdxfile')) return 'vhdx';
  if (head.length >= 68 && head.readUInt32LE(64) === 0xbeda107f) return 'vdi';
  if (at('conectix') || (tail.length >= 8 && tail.toString('latin1', 0, 8) === 'conectix')) return 'vpc';
  return null;
}

const unavailable = (what: string): CarryonError =>
  new CarryonError('QEMU_UNAVAILABLE', `${what} needs qemu-img and qemu-storage-daemon (Debian: apt-get install qemu-utils qemu-system-common) with fuse3 and /dev/fuse`);

/**
 * What `file` holds. Raw disks need no qemu; containers are read with `qemu-img info --backing-chain`
 * and must be one of IMAGE_FORMATS. Refuses archives, compressed files and programs with what they
 * look like, and a container whose backing file is missing.
 */
export function probeImage(file: string, opts: { raw?: boolean } = {}): ImageProbe {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    throw new CarryonError('INVALID_ARGUMENT', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`, { file });
  }
  const head = Buffer.alloc(0x8010);
  const tail = Buffer.alloc(512);
  let size: number;
  try {
    size = statSync(file).size;
    const n = readSync(fd, head, 0, head.length, 0);
    const t = size >= 512 ? readSync(fd, tail, 0, 512, size - 512) : 0;
    head.fill(0, n);
    tail.fill(0, t);
  } finally {
    closeSync(fd);
  }
  if (opts.raw) return { format: 'raw', virtualSize: size, chain: [path.resolve(file)] };
  const odd = notADisk(head);
  if (odd) throw new CarryonError('IMAGE_FORMAT_UNSUPPORTED', `${path.basename(file)} is ${odd} (if it really is a raw disk that starts so, publish it with --raw)`, { file });
  const magic = containerMagic(head, tail);
  // qemu-img tells every format it knows (qed, parallels, dmg, ... would otherwise pass for raw); without
  // it, a file with none of the publishable containers' magic is taken as the raw disk it looks like.
  const r = spawnSync('qemu-img', ['info', '--output=json', '--backing-chain', '-U', file], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
  if (r.error) {
    if (magic === null) return { format: 'raw', virtualSize: size, chain: [path.resolve(file)] };
    throw unavailable(`publishing a ${magic} image`);
  }
  if (r.status !== 0) {
    const why = (r.stderr || '').trim().split('\n').slice(-1)[0]?.replace(/^qemu-img: /, '') ?? '';
    throw new CarryonError('IMAGE_FORMAT_UNSUPPORTED', `${path.basename(file)}${magic ? ` looks like ${magic}, but` : ''} qemu-img cannot read it: ${why.slice(0, 300)}`, { file, format: magic });
  }
  let chain: Array<{ filename: string; format: string; 'virtual-size': number }>;
  try {
    chain = JSON.parse(r.stdout) as typeof chain;
  } catch {
    throw new CarryonError('IMAGE_FORMAT_UNSUPPORTED', `qemu-img info gave no JSON for ${path.basename(file)}`, { file });
  }
  const top = chain[0]!;
  if (top.format === 'raw') return { format: 'raw', virtualSize: size, chain: [path.resolve(file)] };
  if (!IMAGE_FORMATS.includes(top.format as ImageFormat)) {
    throw new CarryonError('IMAGE_FORMAT_UNSUPPORTED', `${path.basename(file)} is a ${top.format} image: carryon publishes ${IMAGE_FORMATS.join(', ')} (convert it with qemu-img convert -O qcow2)`, { file, format: top.format });
  }
  return { format: top.format as ImageFormat, virtualSize: top['virtual-size'], chain: chain.map((c) => path.resolve(path.dirname(file), c.filename)) };
}

export interface ImageView {
  /** A raw view of the disk: the file itself for raw, else a FUSE export. */
  path: string;
  close(): Promise<void>;
}

/** qemu-storage-daemon exporting `node` (a format node over a file node) through FUSE onto `mountpoint`. */
async function fuseExport(file: string, format: ImageFormat, mountpoint: string, size: number, writable: boolean): Promise<ImageView> {
  writeFileSync(mountpoint, '', { mode: 0o600 });
  const args = [
    '--blockdev', JSON.stringify({ driver: 'file', 'node-name': 'carryon-file', filename: path.resolve(file), 'read-only': !writable, ...(writable ? {} : { locking: 'off' }) }),
    '--blockdev', JSON.stringify({ driver: format, 'node-name': 'carryon-disk', file: 'carryon-file', 'read-only': !writable }),
    '--export', JSON.stringify({ type: 'fuse', id: 'carryon', 'node-name': 'carryon-disk', mountpoint, writable }),
  ];
  let proc: ChildProcess;
  try {
    proc = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch {
    rmSync(mountpoint, { force: true });
    throw unavailable('reading a disk image container');
  }
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-4000);
  });
  const exited = new Promise<number | null>((resolve) => {
    proc.once('exit', (code) => resolve(code));
    proc.once('error', () => resolve(-1));
  });
  let done = false;
  void exited.then(() => {
    done = true;
  });
  const close = async (): Promise<void> => {
    if (!done) proc.kill('SIGTERM');
    await exited;
    rmSync(mountpoint, { force: true });
  };
  // Mounted once the file shows the disk's size (FUSE replaces the empty file we made).
  for (let i = 0; i < 400; i++) {
    if (done) break;
    try {
      if (statSync(mountpoint).size === size) return { path: mountpoint, close };
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 25));
  }
  await close();
  if (/ENOENT|not found/i.test(stderr) && !stderr.includes('fuse')) throw unavailable('reading a disk image container');
  throw new CarryonError('QEMU_UNAVAILABLE', `qemu-storage-daemon could not export ${path.basename(file)} (${format}) through FUSE: ${stderr.trim().split('\n').slice(-1)[0] ?? 'it stopped'}`, { file, format });
}

/** A raw, read-only view of the image `probe` describes; `tmpDir` holds the mount point while it is open. */
export async function openImageView(file: string, probe: ImageProbe, tmpDir: string): Promise<ImageView> {
  if (probe.format === 'raw') return { path: file, close: async () => {} };
  const mountpoint = path.join(tmpDir, `image-view-${process.pid}-${Date.now()}.raw`);
  return fuseExport(file, probe.format, mountpoint, probe.virtualSize, false);
}

/**
 * A new container `out` of `format` holding a disk of `size` bytes, and a writable raw view of it; the
 * caller writes the data (holes stay unallocated) and closes the view. Raw: the file itself.
 */
export async function createImageView(out: string, format: ImageFormat, size: number, tmpDir: string): Promise<ImageView> {
  if (format === 'raw') {
    const fd = openSync(out, 'wx', 0o644);
    closeSync(fd);
    return { path: out, close: async () => {} };
  }
  const r = spawnSync('qemu-img', ['create', '-q', '-f', format, out, String(size)], { encoding: 'utf8' });
  if (r.error) throw unavailable(`writing a ${format} image`);
  if (r.status !== 0) throw new CarryonError('IO_ERROR', `qemu-img create ${format} failed: ${(r.stderr || '').trim().slice(0, 300)}`, { out });
  const mountpoint = path.join(tmpDir, `image-export-${process.pid}-${Date.now()}.raw`);
  try {
    return await fuseExport(out, format, mountpoint, size, true);
  } catch (err) {
    rmSync(out, { force: true });
    throw err;
  }
}
