// carryon-server desktop policy NAME [--files P] [--registry P]: how persona conflicts resolve for a desktop.
import type { Command } from 'commander';
import { CarryonError, FILE_MERGE_POLICIES, parseName, REGISTRY_MERGE_POLICIES, type FileMergePolicy, type RegistryMergePolicy } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerDesktopPolicy(desktop: Command): void {
  withCommonOptions(desktop.command('policy <name>').description('show or set how the persona merges a file or registry value changed on both sides'))
    .option('--files <policy>', `the same file changed on both sides: ${FILE_MERGE_POLICIES.join(', ')}`)
    .option('--registry <policy>', `the same registry value changed on both sides: ${REGISTRY_MERGE_POLICIES.join(', ')}`)
    .action(async (name: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (_d, meta) => {
        const files = opts.files as string | undefined;
        const registry = opts.registry as string | undefined;
        if (files !== undefined && !FILE_MERGE_POLICIES.includes(files as FileMergePolicy)) throw new CarryonError('INVALID_ARGUMENT', `--files must be one of ${FILE_MERGE_POLICIES.join(', ')}`);
        if (registry !== undefined && !REGISTRY_MERGE_POLICIES.includes(registry as RegistryMergePolicy)) throw new CarryonError('INVALID_ARGUMENT', `--registry must be one of ${REGISTRY_MERGE_POLICIES.join(', ')}`);
        return meta.setDesktopPolicies(parseName(name, 'desktop'), files as FileMergePolicy | undefined, registry as RegistryMergePolicy | undefined, cliActor());
      }, (r) => `${r.desktop}: files ${r.filePolicy}, registry ${r.registryPolicy}`);
    });
}
