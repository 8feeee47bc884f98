// carryon renew NAME: contact the server to start a checkout's offline lease over (and report what
// the laptop has not sent yet: the blocks its dirty map marks).
import type { Command } from 'commander';
import { CarryonError, decodeManifest, parseName } from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { openJournal } from '../disk-session.js';
import { renewLease } from '../lease.js';

export function registerRenew(program: Command): void {
  withCommonOptions(program.command('renew <desktop>').description("renew a checkout's offline lease (needs the server)")).action(async (desktop: string, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, async ({ state, api }) => {
      const name = parseName(desktop, 'desktop');
      const local = state.checkout(name);
      if (!local || (local.state !== 'active' && local.state !== 'streaming')) throw new CarryonError('NOT_CHECKED_OUT', `${name} is not checked out on this laptop`, { desktop: name });
      let pendingBlocks = 0;
      let pendingBytes = 0;
      const opened = openJournal(state, local, true);
      if (opened.journal) {
        const m = decodeManifest(local.manifest);
        for (const i of opened.journal.dirtyBlocks()) {
          pendingBlocks++;
          pendingBytes += m.lengthOf(i);
        }
        await opened.journal.close();
      }
      const leaseExpiresAt = await renewLease(state, api(), local, { pendingBytes, pendingBlocks });
      return { desktop: name, leaseExpiresAt, pendingBytes, pendingBlocks };
    }, (r) => `${r.desktop}: the offline lease now runs until ${r.leaseExpiresAt}`);
  });
}
