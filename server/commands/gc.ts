// carryon-server gc [--dry-run] [--grace DURATION]: remove blocks nothing references (deleted desktops,
// expired restore points, failed uploads), safely while check-ins go on (server/gc.ts); report what it freed.
import type { Command } from 'commander';
import { CarryonError, fmtBytes } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { DEFAULT_GRACE_MS, type GcReport } from '../gc.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

/** `90s`, `15m`, `6h`, `2d` (or plain seconds) as milliseconds. */
export function parseDuration(v: unknown, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m|h|d)?$/.exec(String(v).trim());
  if (!m) throw new CarryonError('INVALID_ARGUMENT', `${what} must be a duration such as 90s, 15m, 6h or 2d, got ${String(v)}`);
  return Math.round(Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd']);
}

function fmtSeconds(s: number): string {
  return s >= 3600 && s % 3600 === 0 ? `${s / 3600} h` : s >= 60 && s % 60 === 0 ? `${s / 60} min` : `${s} s`;
}

export function describeGc(r: GcReport): string {
  const lines = [
    ...(r.imageVersionsExpired.length > 0 ? [`${r.dryRun ? 'dry run: would remove' : 'removed'} ${r.imageVersionsExpired.length} image version(s) past their image's retention (image policy --keep-versions): ${r.imageVersionsExpired.map((v) => `${v.image} v${v.version}`).join(', ')}`] : []),
    `${r.dryRun ? 'dry run: would remove' : 'removed'} ${r.condemned.blocks} unreferenced blocks (${fmtBytes(r.condemned.bytes)} stored) from the index` +
      ` (live: ${r.referencedBlocks} blocks in ${r.liveManifests} manifests and ${r.livePersonaSnapshots} persona snapshots)`,
    `spared ${r.spared.blocks} unreferenced blocks (${fmtBytes(r.spared.bytes)}) younger than the ${fmtSeconds(r.graceSeconds)} grace or in use by a check-in in progress`,
    `${r.dryRun ? 'would remove' : 'removed'} ${r.manifestsRemoved} manifests and ${r.personaSnapshotsRemoved} persona snapshots nothing names`,
  ];
  if (!r.dryRun) {
    lines.push(r.sweepPostponed
      ? 'the sweep was postponed: uploads were in progress the whole time; their bytes are deleted at the next gc'
      : `deleted ${r.swept.blocks} blocks (${fmtBytes(r.swept.bytes)}) and ${r.swept.orphans} orphans of unfinished uploads (${fmtBytes(r.swept.orphanBytes)}) from the store`);
    lines.push(`stored: ${fmtBytes(r.storedBytesBefore)} before, ${fmtBytes(r.storedBytesAfter)} after`);
  }
  return lines.join('\n');
}

export function registerGc(program: Command): void {
  withCommonOptions(program.command('gc').description('remove blocks no version, image, restore point or persona references; safe while laptops check in'))
    .option('--dry-run', 'report what would be removed; change nothing')
    .option('--grace <duration>', 'spare blocks created or used within this long (e.g. 6h, 30m)', `${DEFAULT_GRACE_MS / 3_600_000}h`)
    .action(async (_o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => d.gc.run(cliActor(), { dryRun: opts.dryRun === true, graceMs: parseDuration(opts.grace, '--grace') }), describeGc);
    });
}
