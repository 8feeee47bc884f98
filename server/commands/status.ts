// carryon-server status: counts, desktops and the stored-versus-logical bytes.
import type { Command } from 'commander';
import { diskSpace } from '../../src/index.js';
import { fmtBytes, withData } from '../cli-util.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerStatus(program: Command): void {
  withCommonOptions(program.command('status').description('show users, images, desktops, checkouts and storage use')).action(async (_o, cmd: Command) => {
    await withData(optsOf(cmd), async (d) => {
      const s = await d.desktops.stats();
      const savedRatio = s.storedBytes > 0 ? s.logicalBytes / s.storedBytes : 0;
      const space = diskSpace(d.root);
      return { data: d.root, ...s, savingRatio: Number(savedRatio.toFixed(2)), freeBytes: space.free, diskBytes: space.total, desktops: await d.desktops.list(null), desktopCount: s.desktops, sharing: await d.sharing.report() };
    }, (r) => {
      const lines = [
        `data ${r.data}: ${fmtBytes(r.freeBytes)} free of ${fmtBytes(r.diskBytes)}${r.freeBytes < 64 * 1024 * 1024 ? ' (FULL: uploads are refused until space is freed)' : ''}`,
        `${r.users} users, ${r.images} images (${r.imageVersions} versions), ${r.desktopCount} desktops (${r.desktopVersions} versions), ${r.activeCheckouts} checked out`,
        `logical ${fmtBytes(r.logicalBytes)} (${fmtBytes(r.logicalDataBytes)} non-hole) stored as ${fmtBytes(r.storedBytes)} in ${r.blocks} blocks` +
          ` (${fmtBytes(r.uniquePlainBytes)} before compression): ${r.savingRatio}x`,
      ];
      const t = r.sharing.totals;
      lines.push(`sharing: ${fmtBytes(t.logicalBytes)} of disks (every image's newest version and every desktop, as full copies of their data) stored as ${fmtBytes(t.storedBytes)}: ` +
        `${(t.saving * 100).toFixed(1)}% saved (linked-clone products promised "up to 90%")`);
      for (const im of r.sharing.images) {
        lines.push(`  image ${im.image}: ${im.versions} version(s), newest ${im.newestVersion} (${fmtBytes(im.logicalBytes)} of data); its versions hold ${fmtBytes(im.held.storedBytes)} stored; ${im.desktops} desktop(s) on it`);
      }
      const share = new Map(r.sharing.desktops.map((x) => [x.desktop, x]));
      for (const dk of r.desktops) {
        const co = dk.checkout ? `checked out by ${dk.checkout.user} on ${dk.checkout.deviceName} since ${dk.checkout.since}` : 'on the server';
        lines.push(`  ${dk.name} (${dk.user}, image ${dk.image}) version ${dk.version}, ${fmtBytes(dk.size)}, encryption ${dk.encryption ?? 'off'}: ${co}`);
        const x = share.get(dk.name);
        if (x) {
          lines.push(`    on image ${x.image} version ${x.imageVersion}: ${fmtBytes(x.sharedWithImage.bytes)} shared with the image, ${fmtBytes(x.unique.bytes)} its own (${fmtBytes(x.unique.storedBytes)} stored)` +
            (x.restorePointsOnly.blocks > 0 ? `, ${fmtBytes(x.restorePointsOnly.bytes)} held only by earlier versions and restore points (${fmtBytes(x.restorePointsOnly.storedBytes)} stored)` : ''));
        }
      }
      return lines.join('\n');
    });
  });
}
