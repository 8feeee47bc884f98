// carryon replicate NAME: send what changed since check-out to the server as a restore point, without
// ending the checkout (also done by `carryon agent` on the desktop's schedule).
import type { Command } from 'commander';
import { parseName } from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { fmtBytes } from '../progress.js';
import { replicateDesktop } from '../replicate.js';

export function registerReplicate(program: Command): void {
  withCommonOptions(program.command('replicate <desktop>').description('send the changes so far to the server as a restore point; the checkout goes on')).action(async (desktop: string, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, (s) => replicateDesktop(s.state, s.api(), parseName(desktop, 'desktop'), opts.json === true), (r) =>
      `restore point #${r.restorePoint} of ${r.desktop} at ${r.createdAt}: ${r.blocksChanged} blocks changed since check-out, ${r.blocksUploaded} new ones sent (${fmtBytes(r.bytesSent)}) in ${r.seconds.toFixed(1)} s` +
      (r.via === 'serve-snapshot' ? `; a snapshot by carryon serve (the VM waited ${r.pauseMs} ms)` : ''));
  });
}
