// carryon renew NAME [--code CODE]: start a checkout's offline lease over by contacting the server (which
// also learns what the laptop has not sent yet: the blocks its dirty map marks), or, offline, with a
// code an admin read out (src/lease): checked against the checkout's secret, each code used once.
import type { Command } from 'commander';
import { parseName } from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { renewCheckout } from '../renew.js';

export function registerRenew(program: Command): void {
  withCommonOptions(program.command('renew <desktop>').description("renew a checkout's offline lease: online, or offline with a code from an admin"))
    .option('--code <code>', 'a lease code an admin gave you (`carryon-server admin lease-code`): works offline, once')
    .action(async (desktop: string, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, ({ state, api }) => renewCheckout(state, api, parseName(desktop, 'desktop'), typeof opts.code === 'string' ? opts.code : undefined), (r) => `${r.desktop}: the offline lease now runs until ${r.leaseExpiresAt}${r.code ? ` (lease code #${r.code.seq}; the server learns of it at this laptop's next contact)` : ''}` +
      r.adminRequests.map((q) => `\nan admin asked for a ${q.kind === 'checkin' ? 'check-in' : q.kind} (#${q.id}, ${q.state}): ${q.kind === 'checkin' ? `\`carryon checkin ${r.desktop}\` (or the agent does it at its next contact)` : 'the agent carries it out'}`).join(''));
  });
}
