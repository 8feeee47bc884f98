// carryon-server image publish NAME FILE / image export NAME OUT: a golden image's versions in and out,
// in the formats admins hold (server/image-format.ts).
import type { Command } from 'commander';
import { checkBlockSize, CarryonError, DEFAULT_BLOCK_SIZE, defaultHoleMode, parseName } from '../../src/index.js';
import { fmtBytes, withData } from '../cli-util.js';
import { IMAGE_FORMATS, type ImageFormat } from '../image-format.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

const FORMAT_NAMES: Record<ImageFormat, string> = { raw: 'raw', qcow2: 'qcow2', vmdk: 'VMDK', vhdx: 'VHDX', vdi: 'VDI', vpc: 'VHD' };

export function registerImagePublish(image: Command): void {
  withCommonOptions(image.command('publish <name> <file>').description('publish FILE (raw, qcow2 with its backing chain, VMDK, VHDX, VDI or VHD) as a new version of image NAME'))
    .option('--block-size <bytes>', 'block size, a power of two from 4096 to 4194304', String(DEFAULT_BLOCK_SIZE))
    .option('--raw', 'FILE is a raw disk, whatever its first bytes look like (no format detection)')
    .action(async (name: string, file: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => d.desktops.publishImage(parseName(name, 'image'), file, checkBlockSize(Number(opts.blockSize)), cliActor(), undefined, { raw: opts.raw === true }), (r) =>
        `published ${r.image} version ${r.version} from a ${FORMAT_NAMES[r.format]} image${r.chain.length > 1 ? ` (flattened from ${r.chain.length} files: ${r.chain.join(' -> ')})` : ''}: ` +
        `a ${fmtBytes(r.size)} disk in ${r.blocks} blocks (${r.holes} holes), ` +
        `${r.newBlocks} new blocks stored as ${fmtBytes(r.storedBytes)}\nmanifest ${r.manifestId}` +
        // Without native/sparse the scan read the image's holes too: same manifest, slower on a sparse image.
        (r.scanHoles === 'read' ? `\nnote: the image's holes were read too (${defaultHoleMode().detail}); \`npm run build:native\` builds native/sparse` : ''));
    });
  withCommonOptions(image.command('export <name> <out>').description('write a version of image NAME to OUT (a new file), raw or as a qcow2, VMDK, VHDX, VDI or VHD image'))
    .option('--version <n>', 'the image version (default: the newest)')
    .option('--format <f>', `${IMAGE_FORMATS.join(', ')} (vpc is VHD)`, 'raw')
    .action(async (name: string, out: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      const format = String(opts.format) as ImageFormat;
      const version = opts.version === undefined ? undefined : Number(opts.version);
      await withData(opts, (d) => {
        if (!IMAGE_FORMATS.includes(format)) throw new CarryonError('INVALID_ARGUMENT', `--format ${String(opts.format)}: give one of ${IMAGE_FORMATS.join(', ')}`);
        if (version !== undefined && (!Number.isSafeInteger(version) || version < 1)) throw new CarryonError('INVALID_ARGUMENT', '--version must be a positive integer');
        return d.desktops.exportImage(parseName(name, 'image'), version, out, format);
      }, (r) =>
        `wrote ${r.image} version ${r.version} to ${r.out} (${FORMAT_NAMES[r.format]}): a ${fmtBytes(r.size)} disk, ${fmtBytes(r.dataBytes)} of data, each block verified`);
    });
}
