// `npm run demo`: one real check-out / check-in cycle, end to end, as a new user would run it.
// A server and two laptops (two CARRYON_HOME folders) on this machine; a real ext4 disk image with
// real files; changes made the way a VM makes them (ext4 file edits via debugfs, raw writes via
// qemu-io); then proof that the second laptop gets exactly the first laptop's disk, and what moved;
// then the VM's way: laptop B serves the disk over NBD (`carryon serve`), qemu-io writes through it, and
// the check-in reads only the blocks the dirty map marked; last, a third laptop takes a desktop under
// the default policy (encrypted at rest), and the demo searches its home for the image's plaintext.
// Owns only orchestration and printing; the work is done by the carryon CLIs, run as processes.
//
// Usage: node dist/scripts/demo.js [--keep]

import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeExt4Image } from './fixtures/ext4-image.js';
import { changedPages, debugfsSession } from './fixtures/workloads.js';
import { spawn } from 'node:child_process';
import { carryon, CLIENT_BIN, carryonMissing, carryonServer, num, serverGone, str, startServer, type Json, type RunningServer } from './lib/carryon-cli.js';
import { mb, percent, table } from './lib/format.js';
import { aptInstall, findTool, run } from './lib/proc.js';

const IMAGE_BYTES = 256 * 1024 * 1024;
const PAYLOAD_BYTES = 150 * 1024 * 1024;
const TOTAL_STEPS = 21;

const keep = process.argv.includes('--keep');
let stepNo = 0;

/** Print what we are about to do, run it, then print its result and time. */
async function step<T>(what: string, fn: () => Promise<T>, done?: (r: T) => string): Promise<T> {
  stepNo++;
  console.log(`\n[${String(stepNo).padStart(2)}/${TOTAL_STEPS}] ${what}`);
  const t0 = Date.now();
  const r = await fn();
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  console.log(`        ok${done ? `: ${done(r)}` : ''} (${secs} s)`);
  return r;
}

/** 256 KiB of blocks that ext4 has not allocated, near the end of the disk: a raw write there
 *  changes the disk as a guest would without corrupting the file system. */
async function freeExtent(image: string, blocks: number): Promise<number | undefined> {
  const debugfs = findTool('debugfs')!;
  const total = Math.floor(statSync(image).size / 4096);
  const r = await run(debugfs, ['-R', `ffb ${blocks * 4} ${Math.floor(total * 0.8)}`, image]);
  const found = /Free blocks found: ([\d ]+)/.exec(r.stdout)?.[1]?.trim().split(/\s+/).map(Number) ?? [];
  for (let i = 0; i + blocks <= found.length; i++) {
    if (found[i + blocks - 1]! - found[i]! === blocks - 1) return found[i]! * 4096;
  }
  return undefined;
}

async function main(): Promise<void> {
  console.log('carryon demo: check a desktop out to laptop A, change its disk, check it in, check it out on laptop B');
  const missing = carryonMissing();
  if (missing) throw new Error(missing);

  const work = await step('Make a temp folder', async () => mkdtempSync(join(tmpdir(), 'carryon-demo-')), (w) => w);
  let server: RunningServer | undefined;
  const cleanup = async (): Promise<string> => {
    let said = '';
    if (server) {
      said = `server stopped (exit ${await server.stop()}), `;
      server = undefined;
    }
    if (keep) return said + `kept ${work} (--keep)`;
    rmSync(work, { recursive: true, force: true });
    return said + `removed ${work}`;
  };
  process.once('SIGINT', () => {
    void cleanup().finally(() => process.exit(130));
  });

  try {
    await step('Check tools: mke2fs, debugfs (e2fsprogs), cmp; qemu-io (qemu-utils) is optional', async () => {
      if (!findTool('mke2fs') || !findTool('debugfs')) {
        if (!aptInstall(['e2fsprogs'], (l) => console.log(`        ${l}`))) throw new Error('could not install e2fsprogs; run `apt-get install -y e2fsprogs` as root');
      }
      // qemu-io plays the VM: raw writes, and writes through `carryon serve` over NBD.
      if (!findTool('qemu-io')) aptInstall(['qemu-utils'], (l) => console.log(`        ${l}`));
      if (!findTool('cmp')) throw new Error('cmp not found: apt-get install -y diffutils');
      // An encrypted copy keeps its persona in a gocryptfs folder (FUSE): the encrypted part needs both.
      if (!findTool('gocryptfs') || !findTool('fusermount3')) aptInstall(['gocryptfs', 'fuse3'], (l) => console.log(`        ${l}`));
      return findTool('qemu-io');
    }, (q) => (q ? `all present, qemu-io at ${q}` : 'qemu-io missing: raw writes will be skipped') +
      (findTool('gocryptfs') && findTool('fusermount3') ? '' : '; gocryptfs or fuse3 missing: the encrypted part will be skipped'));

    const golden = join(work, 'golden.raw');
    await step(`Build a ${IMAGE_BYTES / 2 ** 20} MiB ext4 image with ~${PAYLOAD_BYTES / 2 ** 20} MiB of real files from /usr`, () =>
      makeExt4Image({ out: golden, sizeBytes: IMAGE_BYTES, payloadBytes: PAYLOAD_BYTES, seed: 1 }),
    (r) => `${r.files} files, ${mb(r.payloadBytes, 1)} MB of content, ${golden}`);

    const data = join(work, 'server');
    await step('carryon-server init', () => carryonServer(data, 'init'), () => data);
    server = await step('carryon-server start --listen 127.0.0.1:0', () => startServer(data), (s) => `listening on ${s.url} (pid ${s.pid})`);
    const url = server.url;

    const token = await step('carryon-server user add alice', async () => str((await carryonServer(data, 'user', 'add', 'alice')).json, 'token'), () => 'got a token');
    const pub = await step('carryon-server image publish golden golden.raw', async () => (await carryonServer(data, 'image', 'publish', 'golden', golden)).json,
      (j) => `version ${j.version}, ${j.blocks} blocks, ${mb(num(j, 'storedBytes'))} MB stored for a ${mb(num(j, 'size'))} MB image`);
    // The first desktop is kept in plaintext on the laptops, so the demo can show the disks with cmp and
    // edit them with debugfs; the second (alice-travel, below) takes the default policy: encrypted.
    await step('carryon-server desktop create alice-desk --user alice --image golden --encryption off',
      () => carryonServer(data, 'desktop', 'create', 'alice-desk', '--user', 'alice', '--image', 'golden', '--encryption', 'off'));

    const homeA = join(work, 'laptop-a');
    const homeB = join(work, 'laptop-b');
    mkdirSync(homeA);
    mkdirSync(homeB);
    const outA = await step('Laptop A: carryon login, then carryon checkout alice-desk', async () => {
      await carryon(homeA, 'login', url, '--token', token);
      const co = (await carryon(homeA, 'checkout', 'alice-desk', '--to', join(homeA, 'disk.raw'))).json;
      await run('cmp', [golden, str(co, 'disk')]); // the checkout must be the published image, byte for byte
      return co;
    }, (j) => `${j.disk}: ${mb(num(j, 'bytesReceived'))} MB received, identical to the published image`);
    const diskA = str(outA, 'disk');

    await step('Laptop A: use the desktop (debugfs -w: replace binaries, edit documents, add and delete files)', () => debugfsSession(diskA, { seed: 42 }),
      (s) => `${s.replaced.files} binaries replaced, ${s.edited.files} documents edited, ${s.added.files} files added, ${s.deleted.files} deleted`);
    await step('Laptop A: raw guest writes (qemu-io -f raw write -P 0xab into free blocks)', async () => {
      if (!findTool('qemu-io')) return 'skipped: qemu-io not installed (apt-get install -y qemu-utils)';
      const off = await freeExtent(diskA, 64);
      if (off === undefined) return 'skipped: no 256 KiB run of free blocks';
      await run('qemu-io', ['-f', 'raw', '-c', `write -P 0xab ${off} 256k`, diskA]);
      return `wrote 256 KiB of 0xab at offset ${off}`;
    }, (s) => s);
    const pagesChanged = await changedPages(golden, diskA);

    const ci = await step('Laptop A: carryon checkin alice-desk', async () => (await carryon(homeA, 'checkin', 'alice-desk')).json,
      (j) => `version ${j.version}: ${j.blocksChanged} blocks changed, ${mb(num(j, 'bytesSent'))} MB sent` +
        (j.scanMode === 'full' ? `; whole-disk scan, because debugfs and qemu-io wrote the file directly (${String(j.fullScanReason)})` : ''));

    const outB = await step('Laptop B: carryon login, then carryon checkout alice-desk', async () => {
      await carryon(homeB, 'login', url, '--token', token);
      return (await carryon(homeB, 'checkout', 'alice-desk', '--to', join(homeB, 'disk.raw'))).json;
    }, (j) => `${j.disk}: version ${j.version}, ${mb(num(j, 'bytesReceived'))} MB received`);
    const diskB = str(outB, 'disk');

    await step("Verify: cmp laptop B's disk with laptop A's", () => run('cmp', [diskA, diskB]), () => 'identical, byte for byte');

    // The VM's way: the disk over NBD through `carryon serve`, which records every write in the dirty
    // map, so the check-in reads only what was written instead of the whole disk.
    const ci2 = await step('Laptop B: carryon serve alice-desk over NBD, write through it with qemu-io (a VM would), carryon checkin', async () => {
      if (!findTool('qemu-io')) return null;
      const serve = await startServe(homeB, 'alice-desk');
      try {
        const uri = str(serve.listening, 'uri');
        const cmds: string[] = [];
        for (let k = 0; k < 16; k++) cmds.push('-c', `write -P 0x${(0x40 + k).toString(16)} ${(k * 13 + 5) * 1024 * 1024} 64k`);
        await run('qemu-io', ['-f', 'raw', ...cmds, '-c', 'flush', uri]);
      } finally {
        await serve.stop();
      }
      return (await carryon(homeB, 'checkin', 'alice-desk')).json;
    }, (j) => (j ? `version ${j.version}: ${j.scanMode} scan read ${mb(num(j, 'scanBytesRead'), 2)} MB of a ${mb(IMAGE_BYTES)} MB disk in ${num(j, 'scanSeconds').toFixed(2)} s; ${mb(num(j, 'bytesSent'), 2)} MB sent` : 'skipped: qemu-io not installed (apt-get install -y qemu-utils)'));
    if (ci2) {
      await step("Laptop A: carryon checkout alice-desk (updates its copy in place), then cmp with laptop B's disk", async () => {
        const j = (await carryon(homeA, 'checkout', 'alice-desk', '--to', diskA)).json;
        await run('cmp', [diskA, diskB]);
        return j;
      }, (j) => `version ${j.version}: ${mb(num(j, 'bytesReceived'), 2)} MB received; identical, byte for byte`);
    }

    await encryptedTrip(work, data, url, token, golden);

    const status = await step('carryon-server status', async () => (await carryonServer(data, 'status')).json,
      (j) => `${mb(num(j, 'storedBytes'))} MB stored for ${mb(num(j, 'logicalBytes'))} MB of logical disk data`);

    printSummary({ image: IMAGE_BYTES, pagesChanged, pub, outA, ci, outB, status });

    await step('Stop the server and clean up', cleanup, (said) => said);
    console.log('\ndemo finished: laptop B has exactly the disk laptop A checked in.');
  } catch (e) {
    const gone = server && serverGone(server);
    if (gone) console.error(`\n${gone}`);
    await cleanup().catch(() => {});
    throw e;
  }
}

/**
 * A traveller's laptop under the default policy: the copy is encrypted (disk, cache, persona, token),
 * written through the export, checked in; then no 4 KiB sample of the image is found in any file of
 * its home; then a discard destroys its key.
 */
async function encryptedTrip(work: string, data: string, url: string, token: string, golden: string): Promise<void> {
  const homeC = join(work, 'laptop-c');
  mkdirSync(homeC);
  const ready = Boolean(findTool('gocryptfs') && findTool('fusermount3') && findTool('qemu-io'));
  const skipped = 'skipped: needs gocryptfs, fuse3 and qemu-io (apt-get install -y gocryptfs fuse3 qemu-utils)';
  // The passphrase from the environment, as a script would give it (a person types it, or `carryon unlock`).
  process.env.CARRYON_PASSPHRASE ??= 'demo passphrase, not for real use';
  const co = await step('Laptop C: carryon checkout alice-travel (a new desktop: the default policy requires encryption)', async () => {
    if (!ready) return null;
    await carryonServer(data, 'desktop', 'create', 'alice-travel', '--user', 'alice', '--image', 'golden');
    await carryon(homeC, 'login', url, '--token', token);
    return (await carryon(homeC, 'checkout', 'alice-travel')).json;
  }, (j) => (j ? `${j.disk}: ${mb(num(j, 'bytesReceived'))} MB received, written encrypted (AES-256-XTS); key escrowed with the server` : skipped));
  if (!co) return;
  await step('Laptop C: carryon serve alice-travel, qemu-io writes through NBD, carryon checkin; then search every file of its home', async () => {
    const serve = await startServe(homeC, 'alice-travel');
    try {
      await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x5c ${64 * 1024 * 1024} 1m`, '-c', 'flush', str(serve.listening, 'uri')]);
    } finally {
      await serve.stop();
    }
    const ci = (await carryon(homeC, 'checkin', 'alice-travel')).json;
    const samples = varied4k(golden, 32);
    return { ci, samples: samples.length, found: samplesUnder(homeC, samples), inPlain: samplesUnder(join(work, 'laptop-a'), samples) };
  }, (r) => `version ${r.ci.version}: ${r.found} of ${r.samples} 4 KiB samples of the image found under laptop C's home ` +
    `(${r.inPlain} of ${r.samples} under plaintext laptop A's)`);
  await step('Laptop C: carryon discard alice-travel --yes (crypto-shredding)', async () => (await carryon(homeC, 'discard', 'alice-travel', '--yes')).json,
    (j) => `key destroyed: ${String(j.keyShredded)}; ${mb(num(j, 'freedBytes'))} MB of cache freed`);
}

/** Up to `count` distinct 4 KiB sectors of real content (no runs of one byte), spread over the file. */
function varied4k(file: string, count: number): Buffer[] {
  const data = readFileSync(file);
  const out: Buffer[] = [];
  for (let o = 0; o + 4096 <= data.length; o += 4096) {
    const s = data.subarray(o, o + 4096);
    if (new Set(s).size < 64) continue;
    let run = 1;
    let ok = true;
    for (let i = 1; i < s.length && ok; i++) ok = (run = s[i] === s[i - 1] ? run + 1 : 1) < 8;
    if (ok) out.push(Buffer.from(s));
  }
  const step = Math.max(1, Math.floor(out.length / count));
  return out.filter((_, i) => i % step === 0).slice(0, count);
}

/** How many of the samples occur in some regular file under dir. */
function samplesUnder(dir: string, samples: Buffer[]): number {
  const found = new Set<number>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const bytes = readFileSync(p);
        samples.forEach((s, k) => {
          if (!found.has(k) && bytes.includes(s)) found.add(k);
        });
      }
    }
  };
  walk(dir);
  return found.size;
}

/** `carryon serve DESKTOP --json` as a child process; resolves on its "listening" event. */
async function startServe(home: string, desktop: string): Promise<{ listening: Json; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [CLIENT_BIN, 'serve', desktop, '--json'], { env: { ...process.env, CARRYON_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const listening = await new Promise<Json>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString('utf8');
      const line = out.split('\n').find((l) => l.includes('"listening"'));
      if (line) resolve(JSON.parse(line) as Json);
    });
    void exited.then(() => reject(new Error(`carryon serve exited before listening: ${err}`)));
  });
  return { listening, stop: async () => {
    child.kill('SIGTERM');
    await exited;
  } };
}

function printSummary(r: { image: number; pagesChanged: number; pub: Json; outA: Json; ci: Json; outB: Json; status: Json }): void {
  const row = (what: string, bytes: number, note = ''): string[] => [what, mb(bytes), percent(bytes, r.image), note];
  const blocks = num(r.ci, 'blocksChanged');
  const blockSize = Number(r.pub.blocks) > 0 ? Math.round(num(r.pub, 'size') / num(r.pub, 'blocks')) : 65536;
  console.log('\nSummary (MB = 10^6 bytes)');
  console.log(
    table(
      ['what', 'MB', 'of image', 'note'],
      [
        row('image size', r.image, 'apparent size of the sparse raw disk'),
        row('checkout A: bytes received', num(r.outA, 'bytesReceived'), 'cold: empty laptop home'),
        row('checkin A: bytes sent', num(r.ci, 'bytesSent'), 'compressed changed blocks + manifest'),
        row('checkout B: bytes received', num(r.outB, 'bytesReceived'), 'cold: other laptop, new version'),
        row('blocks changed', blocks * blockSize, `${blocks} blocks of ${blockSize / 1024} KiB (carryon's count)`),
        row('4 KiB pages changed', r.pagesChanged * 4096, `${r.pagesChanged} pages (cmp of old and new disk)`),
        row('server: stored bytes', num(r.status, 'storedBytes'), `for ${mb(num(r.status, 'logicalBytes'))} MB logical`),
      ],
    ),
  );
}

main().catch((e: unknown) => {
  console.error(`\ndemo failed${stepNo ? ` at step ${stepNo}` : ''}: ${e instanceof Error ? e.message : String(e)}`);
  if (!keep) console.error('(rerun with --keep to inspect the temp folder)');
  process.exit(1);
});
