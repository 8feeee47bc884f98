// carryon-server release publish|list|pin|unpin: client releases laptops update to (server/release.ts).
import { readFileSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import { CarryonError, MAX_RELEASE_BYTES } from '../../src/index.js';
import { fmtBytes, withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';
import type { ChannelState } from '../release.js';

function channelText(st: ChannelState): string {
  if (st.releases.length === 0) return 'no client release is published yet: `carryon-server release publish FILE --version V` (FILE: the tarball `npm pack` makes)';
  const lines = st.releases.map((r) => `  ${r.version === st.current ? '*' : ' '} ${r.version}  ${fmtBytes(r.size)}  published ${r.publishedAt} by ${r.publishedBy}`);
  return `laptops are told to run ${st.current}${st.pinned ? ' (pinned by an admin: `carryon-server release unpin` follows the newest again)' : ' (the newest)'}; feed serial ${st.serial}\n${lines.join('\n')}`;
}

export function registerRelease(program: Command): void {
  const release = program.command('release').description('client releases laptops update to, from this server (signed; electron-updater feed at /v1/updates/latest.yml)');
  withCommonOptions(release.command('publish <file>').description('publish FILE (the tarball `npm pack` makes) as client version V'))
    .requiredOption('--version <v>', 'the release version (MAJOR.MINOR.PATCH[-PRERELEASE]); must be the tarball\'s own')
    .action(async (file: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        let bytes: Buffer;
        try {
          const size = statSync(file).size;
          if (size > MAX_RELEASE_BYTES) throw new CarryonError('RELEASE_INVALID', `${file} is ${fmtBytes(size)}, over the ${fmtBytes(MAX_RELEASE_BYTES)} a release may have`);
          bytes = readFileSync(file);
        } catch (err) {
          if (err instanceof CarryonError) throw err;
          throw new CarryonError('INVALID_ARGUMENT', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`, { file });
        }
        const r = await d.releases.publish(bytes, String(opts.version), cliActor());
        return { ...r, state: await d.releases.state() };
      }, (r) => `published carryon ${r.version} (${fmtBytes(r.size)}, sha512 ${r.sha512.slice(0, 16)}…), signed into feed serial ${r.serial}\n` +
        (r.state.current === r.version ? 'laptops update to it at their next check (the agent checks hourly; `carryon update` checks now)' : `laptops stay on ${r.state.current}: the channel is pinned (\`carryon-server release unpin\` to follow the newest)`));
    });
  withCommonOptions(release.command('list').description('published releases and the version laptops are told to run'))
    .action(async (_o, cmd: Command) => {
      await withData(optsOf(cmd), (d) => d.releases.state(), channelText);
    });
  withCommonOptions(release.command('pin <version>').description('make laptops run VERSION, even an older one (a rollback); they follow at their next check'))
    .action(async (version: string, _o, cmd: Command) => {
      await withData(optsOf(cmd), (d) => d.releases.pin(version, cliActor()), (st) => `pinned: ${channelText(st)}`);
    });
  withCommonOptions(release.command('unpin').description('laptops follow the newest published release again'))
    .action(async (_o, cmd: Command) => {
      await withData(optsOf(cmd), (d) => d.releases.pin(null, cliActor()), (st) => `unpinned: ${channelText(st)}`);
    });
}
