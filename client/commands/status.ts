// carryon status [NAME]: what is checked out on this laptop, how much of a streamed disk or persona is local,
// and what changed since check-out (from the dirty map when it can be trusted, else by a full scan);
// for a checked-in copy, whether it was written outside carryon after its check-in.
// The facts come from client/checkout-status.ts (the traveller's app shows the same); this file words them.
import type { Command } from 'commander';
import { fmtDuration, parseName } from '../../src/index.js';
import { laptopStatus, type StreamedPersonaStatus } from '../checkout-status.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import type { LeaseStatus } from '../lease.js';
import { fmtBytes } from '../progress.js';

export function registerStatus(program: Command): void {
  withCommonOptions(program.command('status [desktop]').description('show checkouts on this laptop: download progress, changes since check-out')).action(async (desktop: string | undefined, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, ({ state }) => laptopStatus(state, desktop === undefined ? undefined : parseName(desktop, 'desktop'), opts.json === true), (r) => {
      if (r.desktops.length === 0 && r.streamedPersonas.length === 0) return r.note ?? `nothing checked out on this laptop (${r.home})`;
      return [...r.desktops.map(human), ...r.streamedPersonas.map(humanStream)].join('\n');
    });
  });
}

function humanStream(p: StreamedPersonaStatus): string {
  const pct = p.bytes === 0 ? 100 : (100 * p.bytesLocal) / p.bytes;
  return `persona of ${p.desktop} version ${p.version}, streamed, in ${p.dir}${p.mountedAt ? `; shown at ${p.mountedAt}` : '; not mounted (`carryon persona mount ' + p.desktop + '`)'}\n` +
    (p.readyToTravel ? '  every file is local: ready to travel'
      : `  NOT ready to travel: ${fmtBytes(p.bytesLocal)} of ${fmtBytes(p.bytes)} local (${pct.toFixed(1)}%); files never opened need the server: \`carryon persona fetch ${p.desktop}\``);
}

function human(d: Record<string, unknown>): string {
  if (d.state === 'rolled-back') return `${d.desktop}: ROLLED BACK: ${d.message as string}`;
  const enc = d.encryption as { encrypted: boolean; locked: boolean } | undefined;
  const head = `${d.desktop} version ${d.version} at ${d.disk} (${fmtBytes(d.size as number)}${enc?.encrypted ? ', encrypted at rest' : ''})`;
  const lockedLine = enc?.locked ? '\n  encrypted and locked: `carryon unlock` (or give the passphrase) to use it' : '';
  if (d.state === 'downloading') return `${head}: check-out incomplete: run \`carryon checkout ${d.desktop}\` again to resume`;
  if (d.state === 'checked-in') {
    const line = `${head}: checked in (the file is a read-only copy of that version)`;
    const c = d.changedAfterCheckin as { reason: string; blocksChanged: number; bytesChanged: number; sizeChanged: boolean } | null | undefined;
    if (!c) return line + lockedLine;
    if (c.blocksChanged === 0 && !c.sizeChanged) return line; // touched, but every block still holds the version
    return `${line}\n  WARNING: ${c.reason}: ${c.blocksChanged} blocks (${fmtBytes(c.bytesChanged)})${c.sizeChanged ? ' and its size' : ''} differ from that version, and these writes are NOT on the server.\n` +
      `  \`carryon checkout ${d.desktop}\` updates the copy in place: while the desktop is still at version ${d.version} it keeps these writes and the next check-in sends them; ` +
      'if the desktop has moved on, the newer version\'s blocks replace them';
  }
  const lines = [`${head}: checked out since ${d.since}${d.servedBy ? `; served over NBD by pid ${d.servedBy}` : ''}`];
  if (d.openForWritingText) lines.push(`  in use: ${d.openForWritingText} (a check-in waits until it is closed)`);
  const lease = d.lease as LeaseStatus;
  if (lease.warning) lines.push(`  WARNING: ${lease.warning}`);
  else if (lease.expiresAt) lines.push(`  offline lease until ${lease.expiresAt} (${fmtDuration(lease.remainingMs! / 1000)} left)`);
  const size = d.size as number;
  const local = d.localBytes as number;
  if (d.readyToTravel) lines.push('  every block is local: ready to travel');
  else {
    const eta = d.etaSeconds === null || d.etaSeconds === undefined ? (d.servedBy ? 'estimating' : 'paused: run `carryon serve` or `carryon checkout` to continue') : `about ${fmtDuration(d.etaSeconds as number)} left at ${fmtBytes(d.rateBytesPerSec as number)}/s`;
    lines.push(`  NOT ready to travel: ${fmtBytes(local)} of ${fmtBytes(size)} local (${((100 * local) / size).toFixed(1)}%), ${fmtBytes(size - local)} left; ${eta}`);
  }
  const map = d.dirtyMap as { trusted: boolean; reason: string | null; recovered: boolean };
  if (d.blocksChanged !== undefined) lines.push(`  ${d.blocksChanged} blocks changed (${fmtBytes(d.bytesChanged as number)}) since check-out (full scan: ${map.reason})`);
  else if (map.trusted) lines.push(`  ${d.blocksWritten} blocks written (${fmtBytes(d.bytesWritten as number)}) since check-out; the check-in reads only these${map.recovered && !d.servedBy ? ' (map recovered after an unclean stop)' : ''}`);
  else if (d.blocksChanged === undefined && enc?.locked) lines.push(`  the next check-in scans the whole disk: ${map.reason} (not counted while locked)`);
  else lines.push(`  the next check-in scans the whole disk: ${map.reason}`);
  return lines.join('\n') + lockedLine;
}
