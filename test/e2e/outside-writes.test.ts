// Writes that bypass carryon (a VM run straight on disk.raw, any process writing the file) around
// check-ins, with real processes: a forced check-in waits while another process has the disk open for
// writing (a node script, and qemu-io, which also holds QEMU's OFD locks) and then commits every write;
// a write in the middle of a full scan fails the check-in with DISK_CHANGED and commits nothing; a write
// to the copy after its check-in is reported by status, kept and sent by the next check-in when the
// desktop is still at that version, and replaced when a re-check-out in place brings a newer one.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { killSpawned, Laptop, makeExt4Image, qemuWrite, removeTmp, requireTool, TestServer, tmpDir } from './harness.js';

const MiB = 1024 * 1024;
const BLOCK = 65536;

/** A process that keeps the disk open for writing as a VM on the raw file would: writes 64 KiB at 8M, waits, then at 12M. */
const WRITER = `
const fs = require('node:fs');
const fd = fs.openSync(process.argv[2], 'r+');
const write = (pattern, at) => { fs.writeSync(fd, Buffer.alloc(${BLOCK}, pattern), 0, ${BLOCK}, at); fs.fsyncSync(fd); };
write(0xa1, 8 * ${MiB});
process.stdout.write('first\\n');
let buf = '';
process.stdin.on('data', (c) => {
  buf += c;
  if (buf.includes('second\\n')) { buf = ''; write(0xa2, 12 * ${MiB}); process.stdout.write('second\\n'); }
});
process.stdin.on('end', () => { fs.closeSync(fd); process.exit(0); });
`;

/** Resolves once the child has printed `text` `times` times in all. */
function printed(p: ChildProcess, text: string, times = 1): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const check = (): void => {
      if (out.split(text).length - 1 >= times) {
        p.stdout!.off('data', onData);
        resolve();
      }
    };
    const onData = (c: Buffer): void => {
      out += c.toString();
      check();
    };
    p.stdout!.on('data', onData);
    p.once('exit', (code) => reject(new Error(`exited (${code}) before printing ${text}: ${out}`)));
  });
}

function exited(p: ChildProcess): Promise<number | null> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve(p.exitCode);
  return new Promise((resolve) => p.once('exit', (code) => resolve(code)));
}

/** `length` bytes of a file at `offset`. */
function bytesAt(file: string, offset: number, length = BLOCK): Buffer {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe('writes outside carryon around check-ins', () => {
  const dir = tmpDir('outside');
  const server = new TestServer(dir);
  const image = path.join(dir, 'golden.raw');
  const a = new Laptop(path.join(dir, 'laptop-a'));
  const b = new Laptop(path.join(dir, 'laptop-b'));
  const writerScript = path.join(dir, 'writer.cjs');
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    requireTool('qemu-io');
    makeExt4Image(image, 24, 6);
    writeFileSync(writerScript, WRITER);
    await server.init();
    const token = await server.addUser('alice');
    expect((await server.admin(['image', 'publish', 'golden', image])).code).toBe(0);
    for (const d of ['forced', 'forced-qemu', 'scan', 'after', 'rolled']) expect((await server.admin(['desktop', 'create', d, '--user', 'alice', '--image', 'golden'])).code).toBe(0);
    await server.start();
    for (const l of [a, b]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    killSpawned();
    await server.stop();
    removeTmp(dir);
  });

  async function agentOnce(l: Laptop): Promise<any[]> {
    const r = await l.cli(['agent', '--once', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().split('\n').map((line) => JSON.parse(line));
  }

  async function requestOf(desktop: string): Promise<any> {
    return ((await server.admin(['admin', 'requests'])).json.requests as any[]).find((q) => q.desktop === desktop);
  }

  async function checkoutIdOf(desktop: string): Promise<string> {
    return ((await server.admin(['admin', 'checkouts'])).json.checkouts as any[]).find((c) => c.desktop === desktop).checkoutId;
  }

  /** Check `desktop` out on laptop A (its latest version), hand back the disk path, and end that checkout. */
  async function serverCopy(desktop: string, version: number): Promise<string> {
    const co = await a.cli(['checkout', desktop, '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(co.json.version).toBe(version);
    const ci = await a.cli(['checkin', desktop, '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.blocksChanged).toBe(0);
    return co.json.disk as string;
  }

  /**
   * The reproduction, with the idle time replaced by a pipe: the writer keeps disk.raw open,
   * writes at 8M, an admin forces a check-in and the agent runs; then it writes at 12M and exits.
   */
  async function forcedWhileOpen(desktop: string, writer: { proc: ChildProcess; command: string; first(): Promise<void>; second(): Promise<void>; close(): Promise<void> }, disk: string): Promise<void> {
    await writer.first();
    const req = await server.admin(['admin', 'checkin', await checkoutIdOf(desktop)]);
    expect(req.code, req.stderr).toBe(0);
    const pid = writer.proc.pid!;
    const says = `PID ${pid} (${writer.command}) has disk.raw open for writing`;

    // The agent waits, saying why, and checks nothing in.
    const events = await agentOnce(b);
    const waiting = events.find((e) => e.event === 'waiting');
    expect(waiting, JSON.stringify(events)).toMatchObject({ desktop, kind: 'checkin', writers: [{ pid, command: writer.command, via: 'open-for-writing' }] });
    expect(waiting.waiting).toContain(says);
    expect(events.some((e) => e.event === 'checkin' || e.event === 'checkin-done')).toBe(false);
    expect(await requestOf(desktop)).toMatchObject({ state: 'in-progress', detail: { waiting: expect.stringContaining(says) } });
    expect((await server.admin(['admin', 'checkouts'])).json.checkouts.some((c: any) => c.desktop === desktop)).toBe(true);
    // status names the process too.
    const st = await b.cli(['status', desktop]);
    expect(st.stdout).toContain(`in use: ${says}`);
    // A manual check-in refuses, naming the process, with the code used while serve holds the disk.
    const manual = await b.cli(['checkin', desktop, '--json']);
    expect(manual.code).toBe(8);
    expect(manual.json.error.code).toBe('DISK_IN_USE');
    expect(manual.json.error.message).toContain(says);
    expect(manual.json.error.data.writers[0]).toMatchObject({ pid });

    await writer.second();
    await writer.close();
    const done = await agentOnce(b);
    expect(done.find((e) => e.event === 'checkin-done'), JSON.stringify(done)).toMatchObject({ desktop, version: 2 });
    expect(await requestOf(desktop)).toMatchObject({ state: 'done', detail: { version: 2 } });

    // Version 2 holds both writes, and equals the laptop's copy.
    const copy = await serverCopy(desktop, 2);
    expect(bytesAt(copy, 8 * MiB).equals(Buffer.alloc(BLOCK, 0xa1))).toBe(true);
    expect(bytesAt(copy, 12 * MiB).equals(Buffer.alloc(BLOCK, 0xa2))).toBe(true);
    expect(spawnSync('cmp', [copy, disk]).status).toBe(0);
    // And the laptop's copy is clean: nothing was written after the check-in.
    const after = await b.cli(['status', desktop, '--json']);
    expect(after.json.desktops[0]).toMatchObject({ state: 'checked-in', changedAfterCheckin: null });
  }

  it('a forced check-in waits while a process keeps disk.raw open for writing; then the version has every write', async () => {
    const co = await b.cli(['checkout', 'forced', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const proc = spawn(process.execPath, [writerScript, co.json.disk], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(proc);
    await forcedWhileOpen('forced', {
      proc, command: 'node',
      first: () => printed(proc, 'first'),
      second: async () => {
        const p = printed(proc, 'second');
        proc.stdin!.write('second\n');
        await p;
      },
      close: async () => {
        proc.stdin!.end();
        expect(await exited(proc)).toBe(0);
      },
    }, co.json.disk);
  }, 120_000);

  it('the same with qemu-io, which holds QEMU\'s OFD locks on the image', async () => {
    const co = await b.cli(['checkout', 'forced-qemu', '--json']);
    expect(co.code, co.stderr).toBe(0);
    // Interactive qemu-io: commands on stdin, the image open (and locked) until stdin ends.
    const proc = spawn('qemu-io', ['-f', 'raw', co.json.disk], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(proc);
    await forcedWhileOpen('forced-qemu', {
      proc, command: 'qemu-io',
      first: async () => {
        const p = printed(proc, 'wrote 65536/65536');
        proc.stdin!.write('write -P 0xa1 8M 64k\n');
        await p;
        const locks = spawnSync('cat', ['/proc/locks'], { encoding: 'utf8' }).stdout;
        expect(locks).toMatch(/OFDLCK\s+ADVISORY\s+READ\s+-1\s+\S+\s+100\s+101/); // QEMU's "may write" byte
      },
      second: async () => {
        const p = printed(proc, 'wrote 65536/65536', 1);
        proc.stdin!.write('write -P 0xa2 12M 64k\n');
        await p;
      },
      close: async () => {
        proc.stdin!.end();
        expect(await exited(proc)).toBe(0);
      },
    }, co.json.disk);
  }, 120_000);

  it('a rollback waits too while a process writes disk.raw (the user copies out what they need); then the copy goes', async () => {
    const co = await b.cli(['checkout', 'rolled', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const proc = spawn(process.execPath, [writerScript, co.json.disk], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(proc);
    await printed(proc, 'first');
    expect((await server.admin(['admin', 'rollback', await checkoutIdOf('rolled')])).code).toBe(0);
    const events = await agentOnce(b);
    const waiting = events.find((e) => e.event === 'waiting');
    expect(waiting, JSON.stringify(events)).toMatchObject({ desktop: 'rolled', kind: 'rollback', writers: [{ pid: proc.pid, command: 'node' }] });
    expect(events.some((e) => e.event === 'rollback-done')).toBe(false);
    expect(existsSync(co.json.disk)).toBe(true);
    proc.stdin!.end();
    expect(await exited(proc)).toBe(0);
    const after = await agentOnce(b);
    expect(after.some((e) => e.event === 'rollback-done' && e.desktop === 'rolled'), JSON.stringify(after)).toBe(true);
    expect(existsSync(co.json.disk)).toBe(false);
  });

  it('a write in the middle of a full scan: DISK_CHANGED, nothing committed; a re-run commits it', async () => {
    const co = await b.cli(['checkout', 'scan', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const disk = co.json.disk as string;
    qemuWrite(disk, [[0x3c, 20 * MiB, BLOCK]]); // outside carryon serve: the check-in reads the whole disk
    const marker = path.join(dir, 'scan-paused');
    const checkin = b.cli(['checkin', 'scan', '--json'], { CARRYON_PAUSE_AT: `full-scan:${marker}` });
    // The scan has read its first 8 MiB: write inside them (already read) and let it go on.
    await expect.poll(() => existsSync(marker), { timeout: 60_000, interval: 20 }).toBe(true);
    qemuWrite(disk, [[0xe5, 1 * MiB, BLOCK]]);
    rmSync(marker);
    const r = await checkin;
    expect(r.code, r.stdout + r.stderr).toBe(6);
    expect(r.json.error.code).toBe('DISK_CHANGED');
    expect(r.json.error.message).toMatch(/nothing was committed/);
    expect(r.json.error.message).toMatch(/shut down the VM/);
    // Nothing was committed: the checkout goes on at version 1.
    expect((await server.admin(['admin', 'checkouts'])).json.checkouts.find((c: any) => c.desktop === 'scan')).toMatchObject({ baseVersion: 1 });
    expect((await b.cli(['status', 'scan', '--json'])).json.desktops[0].state).toBe('active');

    const again = await b.cli(['checkin', 'scan', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json.version).toBe(2);
    const copy = await serverCopy('scan', 2);
    expect(bytesAt(copy, 1 * MiB).equals(Buffer.alloc(BLOCK, 0xe5))).toBe(true);
    expect(bytesAt(copy, 20 * MiB).equals(Buffer.alloc(BLOCK, 0x3c))).toBe(true);
  }, 120_000);

  it('a write after a check-in: status reports it, a re-check-out keeps it and the next check-in sends it; a newer version replaces it', async () => {
    const co = await b.cli(['checkout', 'after', '--json']);
    expect(co.code, co.stderr).toBe(0);
    const disk = co.json.disk as string;
    qemuWrite(disk, [[0x11, 2 * MiB, BLOCK]]);
    const ci = await b.cli(['checkin', 'after', '--json']);
    expect(ci.code, ci.stderr).toBe(0);
    expect(ci.json.version).toBe(2);
    expect((await b.cli(['status', 'after', '--json'])).json.desktops[0].changedAfterCheckin).toBeNull();

    // Something writes the read-only copy after the check-in (a VM started on it anyway).
    const outside = (pattern: number, at: number): void => {
      chmodSync(disk, 0o600);
      qemuWrite(disk, [[pattern, at, BLOCK]]);
      chmodSync(disk, 0o400);
    };
    outside(0xc3, 12 * MiB);
    const st = await b.cli(['status', 'after', '--json']);
    expect(st.code, st.stderr).toBe(0);
    expect(st.json.desktops[0]).toMatchObject({ state: 'checked-in', changedAfterCheckin: { blocksChanged: 1, bytesChanged: BLOCK, sizeChanged: false } });
    expect(st.json.desktops[0].changedAfterCheckin.reason).toMatch(/modified outside carryon after it was checked in as version 2/);
    const human = await b.cli(['status', 'after']);
    expect(human.stdout).toMatch(/WARNING: .*1 blocks \(64.0 KiB\) differ from that version, and these writes are NOT on the server/);

    // Still version 2 on the server: the re-check-out in place keeps the write and marks it for the next check-in.
    const again = await b.cli(['checkout', 'after', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.json).toMatchObject({ version: 2, outsideWrites: { blocks: 1, kept: true } });
    expect(bytesAt(disk, 12 * MiB).equals(Buffer.alloc(BLOCK, 0xc3))).toBe(true);
    const held = (await b.cli(['status', 'after', '--json'])).json.desktops[0];
    expect(held).toMatchObject({ state: 'active', blocksWritten: 1, dirtyMap: { trusted: true } });
    const sent = await b.cli(['checkin', 'after', '--json']);
    expect(sent.code, sent.stderr).toBe(0);
    expect(sent.json).toMatchObject({ version: 3, blocksChanged: 1, scanMode: 'dirty-map' });
    const v3 = await serverCopy('after', 3);
    expect(spawnSync('cmp', [v3, disk]).status).toBe(0);

    // Another write to B's checked-in copy; meanwhile A makes version 4 elsewhere on the disk.
    outside(0xd4, 8 * MiB);
    const coA = await a.cli(['checkout', 'after', '--json']);
    expect(coA.code, coA.stderr).toBe(0);
    qemuWrite(coA.json.disk, [[0x77, 16 * MiB, BLOCK]]);
    const ciA = await a.cli(['checkin', 'after', '--json']);
    expect(ciA.code, ciA.stderr).toBe(0);
    expect(ciA.json.version).toBe(4);
    // B's copy is no longer version 3, and the desktop has moved on: version 4's block replaces the stray one.
    expect((await b.cli(['status', 'after', '--json'])).json.desktops[0].changedAfterCheckin).toMatchObject({ blocksChanged: 1 });
    const newer = await b.cli(['checkout', 'after', '--json']);
    expect(newer.code, newer.stderr).toBe(0);
    expect(newer.json).toMatchObject({ version: 4, outsideWrites: { blocks: 1, kept: false } });
    expect(spawnSync('cmp', [coA.json.disk, disk]).status).toBe(0);
    expect((await b.cli(['status', 'after', '--json'])).json.desktops[0]).toMatchObject({ state: 'active', blocksWritten: 0, dirtyMap: { trusted: true } });
    const nothing = await b.cli(['checkin', 'after', '--json']);
    expect(nothing.code, nothing.stderr).toBe(0);
    expect(nothing.json).toMatchObject({ version: 4, blocksChanged: 0 });
  }, 180_000);
});
