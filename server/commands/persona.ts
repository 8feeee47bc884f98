// carryon-server persona history|show USER: a user's persona versions, and one version's contents.
import type { Command } from 'commander';
import { CarryonError, fmtBytes, parseName } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerPersona(program: Command): void {
  const persona = program.command('persona').description("a user's persona (profile files and registry) versions");
  withCommonOptions(persona.command('history <user>').description('list the persona versions of a user')).action(async (user: string, _o, cmd: Command) => {
    await withData(optsOf(cmd), async (d) => {
      const u = await d.desktops.user(parseName(user, 'user'));
      return { user: u.name, versions: await d.personas.history(u) };
    }, (r) => [`persona of ${r.user}:`, ...r.versions.map((v) =>
      `  version ${v.version}  ${v.createdAt}  ${v.source}${v.restoredFrom ? ` of version ${v.restoredFrom}` : ''}${v.deviceName ? ` from ${v.deviceName}` : ''}: ${v.files} files, ${fmtBytes(v.bytes)}` +
      (v.conflicts > 0 ? `, ${v.conflicts} conflict(s) merged` : ''))].join('\n'));
  });
  withCommonOptions(persona.command('show <user> [version]').description('show one persona version (default: the newest): files, registry and merge report'))
    .action(async (user: string, version: string | undefined, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        const u = await d.desktops.user(parseName(user, 'user'));
        const n = version === undefined ? undefined : Number(version);
        if (n !== undefined && !Number.isSafeInteger(n)) throw new CarryonError('INVALID_ARGUMENT', `user ${u.name} has no persona version ${String(version)}`);
        const { snapshot, ...v } = await d.personas.show(u, n);
        return { user: u.name, ...v, files: snapshot.files, registry: snapshot.registry };
      }, (r) => [
        `persona of ${r.user}, version ${r.version} (${r.source}, ${r.createdAt})`,
        ...r.files.map((f) => `  ${f.kind === 'dir' ? 'dir ' : f.kind === 'symlink' ? 'link' : 'file'} ${f.path}${f.kind === 'file' ? ` (${fmtBytes(f.size)})` : ''}${f.target ? ` -> ${f.target}` : ''}`),
        r.registry ? `registry:\n${r.registry}` : 'registry: empty',
        ...(r.mergeReport ? [`merge report: ${JSON.stringify(r.mergeReport)}`] : []),
      ].join('\n'));
    });
  withCommonOptions(persona.command('restore <user> <version>').description("put a user's persona back to an earlier version (as a new version; history is kept)"))
    .action(async (user: string, version: string, _o, cmd: Command) => {
      await withData(optsOf(cmd), async (d) => {
        const u = await d.desktops.user(parseName(user, 'user'));
        const n = Number(version);
        if (!Number.isSafeInteger(n) || n < 1) throw new CarryonError('INVALID_ARGUMENT', `version must be a persona version number, got ${version}`);
        return d.personas.restore(u, n, cliActor());
      }, (r) => r.changed
        ? `persona of ${r.user}: version ${r.version} is now a copy of version ${r.restoredFrom}; laptops get it at their next check-out, check-in or persona pull (their own edits are merged with it)`
        : `persona of ${r.user}: version ${r.version} already equals version ${r.restoredFrom}; nothing changed`);
    });
}
