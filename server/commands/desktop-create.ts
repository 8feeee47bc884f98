// carryon-server desktop create NAME --user USER --image IMAGE: a linked clone of the image's latest version.
import type { Command } from 'commander';
import { CarryonError, parseName } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { encryptionOption } from './image-policy.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerDesktopCreate(desktop: Command): void {
  withCommonOptions(desktop.command('create <name>').description("create a user's desktop as a linked clone of an image (no block storage until it diverges)"))
    .requiredOption('--user <user>', 'owner')
    .requiredOption('--image <image>', 'golden image')
    .option('--encryption <policy>', 'laptops must encrypt their copy: required or off (default: follow the image, else required)')
    .action(async (name: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => {
        if (typeof opts.user !== 'string' || typeof opts.image !== 'string') throw new CarryonError('INVALID_ARGUMENT', '--user and --image are required');
        return d.desktops.createDesktop(parseName(name, 'desktop'), parseName(opts.user, 'user'), parseName(opts.image, 'image'), cliActor(), encryptionOption(opts.encryption) ?? null);
      }, (r) => `created desktop ${r.name} for ${r.user} from image ${r.image} (version ${r.version}, linked clone; encryption ${r.encryption})`);
    });
}
