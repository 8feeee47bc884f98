// Golden images in the formats admins hold (issue 15): the same disk published from raw, qcow2, VMDK,
// VHDX, VDI and VHD (made by Debian's qemu-img) gives the same manifest; a qcow2 overlay publishes as
// its flattened chain; compressed files, unknown formats and broken chains are refused with what they
// are, storing nothing; `image export` writes raw and qcow2 files qemu-img finds identical to the disk.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { removeTmp, requireTool, ROOT, TestServer, tmpDir } from './harness.js';

const MiB = 1024 * 1024;

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Deterministic bytes (a seeded hash chain), so the disk is the same every run. */
function bytes(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  let h = createHash('sha256').update(seed).digest();
  for (let o = 0; o < n; o += 32) {
    h.copy(out, o);
    h = createHash('sha256').update(h).digest();
  }
  return out;
}

describe('image publish and export in qcow2, VMDK, VHDX, VDI and VHD', () => {
  const dir = tmpDir('carryon-imgfmt-');
  const server = new TestServer(dir);
  const raw = path.join(dir, 'disk.raw');
  let rawManifest = '';

  beforeAll(async () => {
    for (const t of ['qemu-img', 'qemu-io', 'qemu-storage-daemon']) requireTool(t);
    // A 64 MiB sparse disk with data in three places (one crossing a block boundary) and holes between.
    sh('truncate', ['-s', String(64 * MiB), raw]);
    const fd = openSync(raw, 'r+');
    writeSync(fd, bytes('a', 3 * MiB), 0, 3 * MiB, 1 * MiB);
    writeSync(fd, bytes('b', 1 * MiB + 4096), 0, 1 * MiB + 4096, 20 * MiB - 4096);
    writeSync(fd, bytes('c', 512 * 1024), 0, 512 * 1024, 63 * MiB);
    closeSync(fd);
    await server.init();
    const r = await server.admin(['image', 'publish', 'from-raw', raw]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.format).toBe('raw');
    rawManifest = r.json.manifestId;
  }, 120_000);

  afterAll(() => removeTmp(dir));

  for (const [fmt, opts] of [['qcow2', []], ['vmdk', []], ['vhdx', []], ['vdi', []], ['vpc', ['-o', 'force_size=on']]] as Array<[string, string[]]>) {
    it(`publishes a ${fmt} image as the disk it holds (the raw disk's manifest), without a raw copy`, async () => {
      const file = path.join(dir, `disk.${fmt}`);
      sh('qemu-img', ['convert', '-f', 'raw', '-O', fmt, ...opts, raw, file]);
      const before = spawnSync('ls', ['-A', path.join(server.data, 'tmp')], { encoding: 'utf8' }).stdout;
      const r = await server.admin(['image', 'publish', `from-${fmt}`, file]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ format: fmt, size: 64 * MiB, manifestId: rawManifest, newBlocks: 0 });
      // The FUSE mount point is gone again: nothing left in the data folder's tmp/.
      expect(spawnSync('ls', ['-A', path.join(server.data, 'tmp')], { encoding: 'utf8' }).stdout).toBe(before);
    }, 60_000);
  }

  it('publishes a qcow2 overlay on a base as the flattened disk', async () => {
    const base = path.join(dir, 'base.qcow2');
    const overlay = path.join(dir, 'overlay.qcow2');
    const flat = path.join(dir, 'flat.raw');
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, base]);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', overlay]);
    sh('cp', ['--sparse=always', raw, flat]);
    for (const [f, fmt] of [[overlay, 'qcow2'], [flat, 'raw']]) {
      sh('qemu-io', ['-f', fmt!, '-c', 'write -P 0x5a 2M 64k', '-c', 'write -z 20M 4k', '-c', 'write -P 0x11 40M 1M', f!]);
    }
    const want = await server.admin(['image', 'publish', 'flat', flat]);
    const got = await server.admin(['image', 'publish', 'overlay', overlay]);
    expect(got.code, got.stderr).toBe(0);
    expect(got.json.manifestId).toBe(want.json.manifestId);
    expect(got.json.chain).toEqual([overlay, base]);
    const human = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'carryon-server.js'), 'image', 'publish', 'overlay-2', overlay, '--data', server.data], { encoding: 'utf8' });
    expect(human.stdout).toContain(`from a qcow2 image (flattened from 2 files: ${overlay} -> ${base})`);
  }, 60_000);

  it('refuses compressed files, unknown formats and broken chains, storing nothing', async () => {
    const status = async (): Promise<unknown> => (await server.admin(['status'])).json.images;
    const before = await status();
    const gz = path.join(dir, 'disk.raw.gz');
    writeFileSync(gz, gzipSync(readFileSync(raw)));
    const qed = path.join(dir, 'disk.qed');
    sh('qemu-img', ['create', '-q', '-f', 'qed', qed, '64M']);
    const orphan = path.join(dir, 'orphan.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.join(dir, 'gone.qcow2'), '-F', 'qcow2', '-u', orphan, '64M']);
    for (const [file, msg] of [[gz, 'is a gzip file: decompress it first'], [qed, 'is a qed image'], [orphan, 'qemu-img cannot read it']] as const) {
      const r = await server.admin(['image', 'publish', 'bad', file]);
      expect(r.code, file).toBe(2);
      expect(r.json.error.code).toBe('IMAGE_FORMAT_UNSUPPORTED');
      expect(r.json.error.message).toContain(msg);
    }
    expect(await status()).toEqual(before);
    // --raw: the bytes as they are, when an admin says the file really is a raw disk.
    const forced = await server.admin(['image', 'publish', 'gz-as-raw', gz, '--raw']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.json).toMatchObject({ format: 'raw', size: readFileSync(gz).length });
  });

  it('exports a version as raw and as qcow2, both equal to the disk; never over an existing file', async () => {
    const outRaw = path.join(dir, 'out.raw');
    const outQ = path.join(dir, 'out.qcow2');
    const a = await server.admin(['image', 'export', 'from-qcow2', outRaw]);
    expect(a.code, a.stderr).toBe(0);
    expect(readFileSync(outRaw).equals(readFileSync(raw))).toBe(true);
    const b = await server.admin(['image', 'export', 'from-raw', outQ, '--format', 'qcow2', '--version', '1']);
    expect(b.code, b.stderr).toBe(0);
    expect(b.json).toMatchObject({ format: 'qcow2', version: 1, size: 64 * MiB });
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', outQ])).format).toBe('qcow2');
    expect(spawnSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', outQ, raw]).status).toBe(0);
    // Holes stay holes: the qcow2 holds about the disk's data, not its 64 MiB.
    expect(Number(JSON.parse(sh('qemu-img', ['info', '--output=json', outQ]))['actual-size'])).toBeLessThan(16 * MiB);
    const again = await server.admin(['image', 'export', 'from-raw', outQ, '--format', 'qcow2']);
    expect(again.code).toBe(8);
    expect(again.json.error.code).toBe('LOCAL_PATH_CONFLICT');
    expect(spawnSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', outQ, raw]).status).toBe(0);
  }, 60_000);
});
