// client/disk-users.ts: other processes writing a disk file, from /proc/PID/fd and /proc/locks, with
// real child processes (node, and qemu-io, whose only trace besides its handle is an OFD lock).
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { describeWriters, diskWriters, writeLocksIn } from '../../client/disk-users.js';
import { removeTmp, requireTool, tmpDir } from '../e2e/harness.js';

describe('disk users', () => {
  const dir = tmpDir('disk-users');
  const file = path.join(dir, 'disk.raw');
  writeFileSync(file, Buffer.alloc(1024 * 1024));
  const children: ChildProcess[] = [];

  afterEach(async () => {
    for (const c of children.splice(0)) {
      if (c.exitCode === null && c.signalCode === null) {
        const gone = new Promise((r) => c.once('exit', r));
        c.kill('SIGKILL');
        await gone;
      }
    }
  });
  afterAll(() => removeTmp(dir));

  /** A node process holding `file` open with `flags`, once it says so. */
  async function holder(flags: string): Promise<ChildProcess> {
    const p = spawn(process.execPath, ['-e', `require('node:fs').openSync(${JSON.stringify(file)}, '${flags}'); console.log('open'); setInterval(() => {}, 1000);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(p);
    await new Promise<void>((resolve) => p.stdout!.on('data', (c) => String(c).includes('open') && resolve()));
    return p;
  }

  /** An interactive qemu-io on `file` (read-only with `-r`), once its prompt is up and its locks are taken. */
  async function qemuIo(readOnly: boolean): Promise<ChildProcess> {
    const p = spawn('qemu-io', [...(readOnly ? ['-r'] : []), '-f', 'raw', file], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(p);
    await new Promise<void>((resolve) => p.stdout!.on('data', (c) => String(c).includes('qemu-io>') && resolve()));
    return p;
  }

  it('nobody: no writers', () => {
    expect(diskWriters(file)).toEqual([]);
    expect(diskWriters(path.join(dir, 'absent.raw'))).toEqual([]);
  });

  it('a process with the file open read-only is no writer; one with it open for writing is named', async () => {
    await holder('r');
    expect(diskWriters(file)).toEqual([]);
    const w = await holder('r+');
    const found = diskWriters(file);
    expect(found).toEqual([{ pid: w.pid, command: 'node', via: 'open-for-writing' }]);
    expect(describeWriters(file, found)).toBe(`PID ${w.pid} (node) has disk.raw open for writing`);
    expect(diskWriters(file, { exclude: [w.pid!] })).toEqual([]);
  });

  it("QEMU's OFD lock on its write-permission byte shows a writer; a read-only QEMU's does not", async () => {
    requireTool('qemu-io');
    const st = statSync(file, { bigint: true });
    await qemuIo(true);
    expect(writeLocksIn(readFileSync('/proc/locks', 'utf8'), st.dev, st.ino)).toEqual([]);
    const rw = await qemuIo(false);
    // The lock names no process (OFD locks show pid -1): the open handle does.
    expect(writeLocksIn(readFileSync('/proc/locks', 'utf8'), st.dev, st.ino)).toEqual([{ pid: null }]);
    expect(diskWriters(file)).toEqual([{ pid: rw.pid, command: 'qemu-io', via: 'open-for-writing' }]);
  });

  it('reads /proc/locks lines: write locks and QEMU write-permission bytes on this device and inode only', () => {
    const dev = (0xfen << 8n) | 0x01n; // 254:1
    const text = [
      '1: OFDLCK ADVISORY  READ -1 fe:01:42 100 101', // QEMU may write
      '2: OFDLCK ADVISORY  READ -1 fe:01:42 100 100', // QEMU reads only
      '3: POSIX  ADVISORY  WRITE 4321 fe:01:42 0 EOF', // an exclusive lock
      '4: POSIX  ADVISORY  READ  999 fe:01:42 0 EOF', // a reader's shared lock of the whole file
      '5: FLOCK  ADVISORY  WRITE 777 fe:01:43 0 EOF', // another file
      '6: POSIX  ADVISORY  WRITE 778 fe:02:42 0 EOF', // another device
      '7: -> POSIX  ADVISORY  WRITE 779 fe:01:42 0 EOF', // waiting, holds nothing
      '8: FLOCK  ADVISORY  READ 780 fe:01:42 0 EOF',
    ].join('\n');
    expect(writeLocksIn(text, dev, 42n)).toEqual([{ pid: null }, { pid: 4321 }]);
    expect(describeWriters('/x/disk.raw', [{ pid: null, command: null, via: 'lock' }])).toBe('a process this user cannot see holds a write lock on disk.raw');
  });
});
