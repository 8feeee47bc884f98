// carryon-server desktop policy NAME [--files P] [--registry P] [--encryption E] [--registry-include K]...
// [--registry-exclude K]...: how persona conflicts resolve for a desktop, whether its laptops must
// encrypt their copies, and which registry keys (below HKEY_CURRENT_USER) its persona carries.
import type { Command } from 'commander';
import { CarryonError, DEFAULT_REGISTRY_EXCLUDES, ENCRYPTION_POLICIES, FILE_MERGE_POLICIES, parseName, REGISTRY_MERGE_POLICIES, type FileMergePolicy, type RegistryMergePolicy } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';
import { encryptionOption } from './image-policy.js';

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export function registerDesktopPolicy(desktop: Command): void {
  withCommonOptions(desktop.command('policy <name>').description('show or set how the persona merges a file or registry value changed on both sides, and whether laptops must encrypt the desktop'))
    .option('--files <policy>', `the same file changed on both sides: ${FILE_MERGE_POLICIES.join(', ')}`)
    .option('--registry <policy>', `the same registry value changed on both sides: ${REGISTRY_MERGE_POLICIES.join(', ')}`)
    .option('--registry-include <pattern>', 'a registry key the persona carries, relative to HKEY_CURRENT_USER (Software\\Vendor; * within a name, ** for any levels); repeat for more; replaces the list', collect)
    .option('--registry-include-all', 'carry all of HKEY_CURRENT_USER (the default; clears --registry-include)')
    .option('--registry-exclude <pattern>', 'a registry key the persona leaves out (same syntax; @default = the default noise list); repeat for more; replaces the list', collect)
    .option('--registry-exclude-default', 'leave out the default noise list only (MRU lists, RecentDocs, UserAssist, shell bags, ...)')
    .option('--encryption <policy>', `laptops must encrypt their copy: ${ENCRYPTION_POLICIES.join(', ')}, or default (follow the image, else required); applies to check-outs from now on`)
    .action(async (name: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        const files = opts.files as string | undefined;
        const registry = opts.registry as string | undefined;
        if (files !== undefined && !FILE_MERGE_POLICIES.includes(files as FileMergePolicy)) throw new CarryonError('INVALID_ARGUMENT', `--files must be one of ${FILE_MERGE_POLICIES.join(', ')}`);
        if (registry !== undefined && !REGISTRY_MERGE_POLICIES.includes(registry as RegistryMergePolicy)) throw new CarryonError('INVALID_ARGUMENT', `--registry must be one of ${REGISTRY_MERGE_POLICIES.join(', ')}`);
        const encryption = encryptionOption(opts.encryption);
        if (opts.registryInclude && opts.registryIncludeAll) throw new CarryonError('INVALID_ARGUMENT', '--registry-include and --registry-include-all contradict each other: give one');
        if (opts.registryExclude && opts.registryExcludeDefault) throw new CarryonError('INVALID_ARGUMENT', '--registry-exclude and --registry-exclude-default contradict each other: give one');
        const registryInclude = opts.registryIncludeAll ? null : (opts.registryInclude as string[] | undefined);
        const registryExclude = opts.registryExcludeDefault ? null : (opts.registryExclude as string[] | undefined);
        const change = {
          ...(registryInclude !== undefined ? { registryInclude } : {}),
          ...(registryExclude !== undefined ? { registryExclude } : {}),
          ...(files !== undefined ? { files: files as FileMergePolicy } : {}),
          ...(registry !== undefined ? { registry: registry as RegistryMergePolicy } : {}),
          ...(encryption !== undefined ? { encryption } : {}),
        };
        // The same service call as POST /admin/desktops/:name/policy: validated and audited alike.
        const p = await d.desktops.setDesktopPolicy(parseName(name, 'desktop'), change, cliActor());
        return { desktop: p.desktop, filePolicy: p.files, registryPolicy: p.registry, encryption: p.encryption, effectiveEncryption: p.effectiveEncryption,
          registryInclude: p.registryInclude, registryExclude: p.registryExclude, registryScope: p.registryScope };
      }, (r) => `${r.desktop}: files ${r.filePolicy}, registry ${r.registryPolicy}, encryption ${r.effectiveEncryption}${r.encryption === null ? ' (from its image or the default)' : ''}\n` +
        `registry keys carried: ${r.registryInclude === null ? 'all of HKEY_CURRENT_USER' : r.registryInclude.join('; ')}\n` +
        `registry keys left out: ${(r.registryExclude ?? ['@default']).map((p) => (p === '@default' ? `the default list (${DEFAULT_REGISTRY_EXCLUDES.length} patterns: docs/persona.md)` : p)).join('; ') || 'none'}`);
    });
}
