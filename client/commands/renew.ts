// carryon renew NAME [--code CODE]: start a checkout's offline lease over by contacting the server (which
// also learns what the laptop has not sent yet: the blocks its dirty map marks), or, offline, with a
// code an admin read out (src/lease): checked against the checkout's secret, each code used once.
import type { Command } from 'commander';
import { CarryonError, decodeLeaseCode, parseName } from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { pendingChanges, requireCheckedOut } from '../disk-session.js';
import { renewLease } from '../lease.js';

export function registerRenew(program: Command): void {
  withCommonOptions(program.command('renew <desktop>').description("renew a checkout's offline lease: online, or offline with a code from an admin"))
    .option('--code <code>', 'a lease code an admin gave you (`carryon-server admin lease-code`): works offline, once')
    .action(async (desktop: string, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, async ({ state, api }) => {
      const name = parseName(desktop, 'desktop');
      const local = requireCheckedOut(state, name);
      if (typeof opts.code === 'string') {
        // Offline: the code is checked against the checkout's secret; each code works once.
        const { secret, seq: used } = state.leaseSecret(name);
        if (!secret) throw new CarryonError('LEASE_CODE_INVALID', `${name} was checked out before lease codes existed: renew it online`, { desktop: name });
        const { untilMs, seq } = decodeLeaseCode(secret, local.checkoutId, opts.code);
        if (seq <= used) throw new CarryonError('LEASE_CODE_INVALID', `that lease code (#${seq}) was used already on this laptop: ask your admin for a new one`, { desktop: name, seq });
        // The code carries the lease's end, as the server computed it: both sides agree, whatever the clocks say.
        const leaseExpiresAt = new Date(Math.max(untilMs, local.leaseExpiresAt ? Date.parse(local.leaseExpiresAt) : 0)).toISOString();
        if (!state.useLeaseCode(name, seq, leaseExpiresAt)) throw new CarryonError('LEASE_CODE_INVALID', 'that lease code was used already on this laptop: ask your admin for a new one', { desktop: name, seq });
        return { desktop: name, leaseExpiresAt, pendingBytes: null, pendingBlocks: null, code: { seq, grantsUntil: new Date(untilMs).toISOString() } };
      }
      const { pendingBytes, pendingBlocks } = pendingChanges(state, local);
      const leaseExpiresAt = await renewLease(state, api(), local, { pendingBytes, pendingBlocks });
      return { desktop: name, leaseExpiresAt, pendingBytes, pendingBlocks, code: null };
    }, (r) => `${r.desktop}: the offline lease now runs until ${r.leaseExpiresAt}${r.code ? ` (lease code #${r.code.seq}; the server learns of it at this laptop's next contact)` : ''}`);
  });
}
