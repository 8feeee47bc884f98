// What linked clones save (issue 15): 20 desktops made from one golden image, each checked out by a real
// laptop, changed with real file edits (a debugfs session: files replaced, edited, added, deleted) on
// about 2% of the image's data, and checked in. Reported: the server's stored bytes against one image's,
// and against the logical bytes (the image and 20 desktops as separate copies of their data), next to
// the "up to 90%" the linked-clone products promised; and the same 21 disks as separate `zstd -3` files.
// Target: 20 desktops stored in under 1.5 images' bytes.
//
// Usage: node dist/scripts/bench/sharing-bench.js [--size 512M] [--payload 256M] [--desktops 20]
//        [--change 0.02] [--block-size 65536] [--seed 1] [--out FILE] [--keep]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeExt4Image } from '../fixtures/ext4-image.js';
import { compareImages, debugfsSession } from '../fixtures/workloads.js';
import { readArgs } from '../lib/args.js';
import { carryon, carryonMissing, carryonServer, startServer } from '../lib/carryon-cli.js';
import { mb, parseSize } from '../lib/format.js';
import { requireTool, run } from '../lib/proc.js';

const USAGE = `usage: sharing-bench.js [--size 512M] [--payload 256M] [--desktops 20] [--change 0.02] [--seed 1] [--out FILE] [--keep]
  --size      apparent size of the golden image (default 512M)
  --payload   real /usr files in it (default half the size)
  --desktops  desktops made from it, each changed and checked in (default 20)
  --change    fraction of the payload each desktop's file session touches (default 0.02)
  --block-size  the image's block size at publish (default carryon's, 65536)
  --out       also write the results as JSON to FILE
  --keep      keep the temp folder`;

async function main(): Promise<void> {
  const o = { size: 512 * 1024 ** 2, payload: 0, desktops: 20, change: 0.02, seed: 1, out: '', keep: false, blockSize: 0 };
  for (const a of readArgs(process.argv.slice(2), USAGE)) {
    if (a.flag === '--size') o.size = parseSize(a.value());
    else if (a.flag === '--payload') o.payload = parseSize(a.value());
    else if (a.flag === '--desktops') o.desktops = Number(a.value());
    else if (a.flag === '--change') o.change = Number(a.value());
    else if (a.flag === '--seed') o.seed = Number(a.value());
    else if (a.flag === '--block-size') o.blockSize = Number(a.value());
    else if (a.flag === '--out') o.out = a.value();
    else if (a.flag === '--keep') o.keep = true;
    else throw new Error(`unknown option ${a.flag}\n${USAGE}`);
  }
  if (!o.payload) o.payload = Math.floor(o.size / 2);
  const missing = carryonMissing();
  if (missing) throw new Error(missing);
  for (const [t, p] of [['mke2fs', 'e2fsprogs'], ['debugfs', 'e2fsprogs'], ['zstd', 'zstd']] as const) requireTool(t, p);
  const work = mkdtempSync(join(tmpdir(), 'sharing-bench-'));
  const log = (s: string): void => void process.stderr.write(`${s}\n`);
  try {
    const image = join(work, 'golden.raw');
    const made = await makeExt4Image({ out: image, sizeBytes: o.size, payloadBytes: o.payload, seed: o.seed });
    log(`golden image: ${mb(o.size)} MB apparent, ${made.files} files, ${mb(made.payloadBytes)} MB of data`);
    const data = join(work, 'server');
    await carryonServer(data, 'init');
    const token = String((await carryonServer(data, 'user', 'add', 'alice')).json.token);
    const pub = await carryonServer(data, 'image', 'publish', 'golden', image, ...(o.blockSize ? ['--block-size', String(o.blockSize)] : []));
    const names = Array.from({ length: o.desktops }, (_, i) => `desk-${String(i + 1).padStart(2, '0')}`);
    for (const n of names) await carryonServer(data, 'desktop', 'create', n, '--user', 'alice', '--image', 'golden', '--encryption', 'off');
    const server = await startServer(data);
    const home = join(work, 'laptop');
    const tokenFile = join(work, 'token');
    writeFileSync(tokenFile, `${token}\n`);
    await carryon(home, 'login', server.url, '--token-file', tokenFile);
    const budget = Math.floor(made.payloadBytes * o.change);
    const per: Array<{ desktop: string; touchedBytes: number; sentBytes: number; blocksChanged: number; changedPages: number; idealBytes: number }> = [];
    for (const [i, n] of names.entries()) {
      await carryon(home, 'checkout', n);
      const disk = join(home, 'desktops', n, 'disk.raw');
      const s = await debugfsSession(disk, { seed: o.seed * 1000 + i + 1, budgetBytes: budget });
      // The floor for storing this desktop beside the image: its changed 4 KiB pages as one zstd -3 stream.
      const ideal = await compareImages(image, disk);
      const ci = await carryon(home, 'checkin', n);
      const touched = s.replaced.bytes + s.edited.bytesChanged + s.added.bytes;
      per.push({ desktop: n, touchedBytes: touched, sentBytes: Number(ci.json.bytesSent), blocksChanged: Number(ci.json.blocksChanged), changedPages: ideal.changedPages, idealBytes: ideal.idealBytes });
      log(`  ${n}: ${mb(touched)} MB of file data written (${ideal.changedPages} pages of 4 KiB changed, ${mb(ideal.idealBytes)} MB as zstd -3), ${ci.json.blocksChanged} blocks changed, ${mb(Number(ci.json.bytesSent))} MB sent`);
      // Keep the laptop's disk small: the next desktop is checked out fresh (its blocks come from the cache).
      await carryon(home, 'discard', n, '--yes').catch(() => undefined);
    }
    await server.stop();
    const st = (await carryonServer(data, 'status')).json as any;
    const imageStored: number = st.sharing.images[0].held.storedBytes;
    const stored: number = st.sharing.totals.storedBytes;
    const logical: number = st.sharing.totals.logicalBytes;
    // The peer: the image and each desktop as its own zstd -3 file (what full copies cost compressed).
    const z = await run('sh', ['-c', `zstd -3 -q -c ${JSON.stringify(image)} | wc -c`]);
    const zImage = Number(z.stdout.trim());
    const result = {
      size: o.size, blockSize: o.blockSize || 65536, payload: made.payloadBytes, desktops: o.desktops, change: o.change, publishStoredBytes: Number(pub.json.storedBytes),
      imageStoredBytes: imageStored, storedBytes: stored, storedOverImage: stored / imageStored, target: 1.5, met: stored / imageStored < 1.5,
      idealStoredBytes: imageStored + per.reduce((n, p) => n + p.idealBytes, 0),
      logicalBytes: logical, saving: 1 - stored / logical, fullCopiesZstdBytes: zImage * (o.desktops + 1), perDesktop: per,
      uniqueToDesktopsBytes: st.sharing.totals.uniqueToDesktopsBytes, sharedWithImagesBytes: st.sharing.totals.sharedWithImagesBytes,
      storeDirBytes: Number((await run('du', ['-sb', join(data, 'store')])).stdout.split('\t')[0]),
      // For `npm run bench` (run-all.ts reads this shape): stored bytes against 1.5 images, the target.
      comparisons: [] as unknown[],
    };
    result.comparisons = [
      { id: 'sharing-stored', title: `${o.desktops} desktops + their image as stored, against 1.5 images (${(o.change * 100).toFixed(0)}% file edits each)`, unit: 'MB stored', carryonLabel: `carryon, ${(o.blockSize || 65536) / 1024} KiB blocks`, peerLabel: '1.5 x the image as stored', target: { op: '<', ratio: 1 }, runs: [{ carryon: stored / 1e6, peer: (1.5 * imageStored) / 1e6 }] },
    ];
    log('');
    log(`| | bytes | vs one image |`);
    log(`|---|---:|---:|`);
    log(`| golden image as stored | ${mb(imageStored)} MB | 1.00x |`);
    log(`| ${o.desktops} desktops + image, as stored | ${mb(stored)} MB | **${result.storedOverImage.toFixed(2)}x** (target < 1.5x: ${result.met ? 'met' : 'NOT MET'}) |`);
    log(`| floor: the image + each desktop's changed 4 KiB pages as zstd -3 | ${mb(result.idealStoredBytes)} MB | ${(result.idealStoredBytes / imageStored).toFixed(2)}x |`);
    log(`| the same ${o.desktops + 1} disks as separate zstd -3 files | ${mb(result.fullCopiesZstdBytes)} MB | ${(result.fullCopiesZstdBytes / imageStored).toFixed(2)}x |`);
    log(`| logical (data of ${o.desktops + 1} disks as full copies) | ${mb(logical)} MB | ${(logical / imageStored).toFixed(2)}x |`);
    log('');
    log(`saving: ${(result.saving * 100).toFixed(1)}% of the logical bytes (the linked-clone products promised "up to 90%")`);
    if (o.out) writeFileSync(o.out, `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    if (o.keep) log(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`sharing-bench: ${(err as Error).message}\n`);
  process.exit(1);
});
