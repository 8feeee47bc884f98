// carryon-server image policy NAME [--encryption E]: whether laptops must encrypt copies of the image's
// desktops (a desktop's own setting wins). The image's lease length is `admin lease-policy image NAME`.
import type { Command } from 'commander';
import { CarryonError, ENCRYPTION_POLICIES, parseName, type EncryptionPolicy } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { keepVersionsOf, setKeepVersions } from '../image-retention.js';
import { optsOf, withCommonOptions } from './options.js';

/** `--encryption required|off|default` as a policy; null for default (no setting of its own), undefined when not given. */
export function encryptionOption(v: unknown): EncryptionPolicy | null | undefined {
  if (v === undefined) return undefined;
  if (v === 'default') return null;
  if (!ENCRYPTION_POLICIES.includes(v as EncryptionPolicy)) throw new CarryonError('INVALID_ARGUMENT', `--encryption must be one of ${ENCRYPTION_POLICIES.join(', ')} or default, got ${String(v)}`);
  return v as EncryptionPolicy;
}

export function registerImagePolicy(image: Command): void {
  withCommonOptions(image.command('policy <name>').description("show or set whether laptops must encrypt copies of this image's desktops (a desktop's own setting wins)"))
    .option('--encryption <policy>', `${ENCRYPTION_POLICIES.join(', ')}, or default (required); applies to check-outs from now on`)
    .option('--keep-versions <n>', "keep the newest N versions (or all, the default): gc removes older ones no desktop is on, and then their blocks")
    .action(async (name: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        const encryption = encryptionOption(opts.encryption);
        const imageName = parseName(name, 'image');
        const keep = opts.keepVersions === undefined ? undefined : opts.keepVersions === 'all' ? null : Number(opts.keepVersions);
        if (keep !== undefined) await setKeepVersions(d.sql, imageName, keep, cliActor());
        const p = encryption === undefined ? await d.desktops.imagePolicy(imageName) : await d.desktops.setImagePolicy(imageName, { encryption }, cliActor());
        return { ...p, keepVersions: await keepVersionsOf(d.sql, imageName) };
      }, (r) => `image ${r.image}: encryption ${r.effectiveEncryption}${r.encryption === null ? ' (the default)' : ''} for desktops without their own setting; lease ${r.leaseDays === null ? 'follows the default' : `${r.leaseDays} days`}; ` +
        (r.keepVersions === null ? 'every version kept' : `the newest ${r.keepVersions} version(s) kept (older ones no desktop is on go at the next gc)`));
    });
}
