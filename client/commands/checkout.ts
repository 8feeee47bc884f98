// carryon checkout NAME [--to PATH]: download the desktop's disk to this laptop.
import type { Command } from 'commander';
import { parseName } from '../../src/index.js';
import { checkoutDesktop } from '../checkout-engine.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { fmtBytes } from '../progress.js';

export function registerCheckout(program: Command): void {
  withCommonOptions(program.command('checkout <desktop>').description('check a desktop out to this laptop (only missing blocks are downloaded)'))
    .option('--to <path>', 'where to put the raw disk image (default: HOME/desktops/NAME/disk.raw)')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, (s) => checkoutDesktop(s.state, s.api(), s.login(), parseName(desktop, 'desktop'), { to: opts.to as string | undefined, quiet: opts.json === true }), (r) =>
        r.alreadyCheckedOut
          ? `${r.desktop} is already checked out here at ${r.disk} (version ${r.version})`
          : `checked out ${r.desktop} version ${r.version} to ${r.disk}\n${fmtBytes(r.size)} disk: ${r.blocksFetched} blocks downloaded, ${r.blocksFromCache} from the local cache; ` +
            `${fmtBytes(r.bytesReceived)} received in ${r.seconds.toFixed(1)} s${r.resumed ? ' (resumed)' : ''}`);
    });
}
