// carryon-server image publish NAME FILE: store a new version of a golden image.
import type { Command } from 'commander';
import { checkBlockSize, DEFAULT_BLOCK_SIZE, defaultHoleMode, parseName } from '../../src/index.js';
import { fmtBytes, withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerImagePublish(image: Command): void {
  withCommonOptions(image.command('publish <name> <file>').description('publish FILE (a raw disk image) as a new version of image NAME'))
    .option('--block-size <bytes>', 'block size, a power of two from 4096 to 4194304', String(DEFAULT_BLOCK_SIZE))
    .action(async (name: string, file: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => d.desktops.publishImage(parseName(name, 'image'), file, checkBlockSize(Number(opts.blockSize)), cliActor()), (r) =>
        `published ${r.image} version ${r.version}: ${fmtBytes(r.size)} in ${r.blocks} blocks (${r.holes} holes), ` +
        `${r.newBlocks} new blocks stored as ${fmtBytes(r.storedBytes)}\nmanifest ${r.manifestId}` +
        // Without native/sparse the scan read the image's holes too: same manifest, slower on a sparse image.
        (r.scanHoles === 'read' ? `\nnote: the image's holes were read too (${defaultHoleMode().detail}); \`npm run build:native\` builds native/sparse` : ''));
    });
}
