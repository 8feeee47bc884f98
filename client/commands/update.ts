// carryon update [--check] [--revert]: client updates from the server this laptop is logged in to
// (client/updater.ts; docs/updates.md). The agent does the same hourly.
import type { Command } from 'commander';
import { CARRYON_VERSION, fmtBytes } from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { revertToInstalled, runUpdate } from '../updater.js';

export function registerUpdate(program: Command): void {
  withCommonOptions(program.command('update').description("install the client release the server's signed feed offers (or only --check), and switch to it"))
    .option('--check', 'only say whether an update is offered; install nothing')
    .option('--revert', "go back to the version installed on this laptop (the package's own), leaving updates aside until the next one")
    .action(async (_o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async ({ state, api }) => {
        if (opts.revert === true) {
          const was = revertToInstalled(state.home);
          return { status: 'reverted' as const, running: CARRYON_VERSION, offered: null, switchedFrom: was, installedAt: null, bytes: 0, serial: state.feedSerial(), rollback: false };
        }
        const r = await runUpdate(state, api(), state.home, { apply: opts.check !== true });
        return { ...r, switchedFrom: null as string | null };
      }, (r) => {
        switch (r.status) {
          case 'reverted': return r.switchedFrom ? `went back from carryon ${r.switchedFrom} to the version installed on this laptop; commands from now on run it` : 'no update was switched to: this laptop already runs its installed version';
          case 'up-to-date': return `carryon ${r.running} is the version the server offers: up to date`;
          case 'available': return `carryon ${r.offered} is offered${r.rollback ? ' (an admin pinned it)' : ''}; this laptop runs ${r.running}: \`carryon update\` installs it`;
          case 'skipped-failed': return `carryon ${r.offered} is offered but did not start on this laptop before, so it is not installed again; ask your admin (this laptop runs ${r.running})`;
          case 'updated': return `updated carryon ${r.running} -> ${r.offered} (${fmtBytes(r.bytes)}, signature and SHA-512 verified); commands from now on run ${r.offered}`;
          case 'rolled-back': return `went back from carryon ${r.running} to ${r.offered}, as an admin pinned it (${fmtBytes(r.bytes)}, signature and SHA-512 verified); commands from now on run ${r.offered}`;
        }
      });
    });
}
