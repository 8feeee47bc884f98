// carryon-server persona history|show USER: a user's persona versions, and one version's contents.
import type { Command } from 'commander';
import { CarryonError, fmtBytes, parseName } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { SqliteFleetMeta } from '../fleet-meta.js';
import { SqlitePersonaMeta } from '../persona-meta.js';
import { PersonaService } from '../persona-service.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerPersona(program: Command): void {
  const persona = program.command('persona').description("a user's persona (profile files and registry) versions");
  withCommonOptions(persona.command('history <user>').description('list the persona versions of a user')).action(async (user: string, _o, cmd: Command) => {
    await withData(optsOf(cmd), (d, meta) => {
      const u = meta.userByName(parseName(user, 'user'));
      const pm = new SqlitePersonaMeta(d.db);
      const versions = pm.history(u.id).map((v) => {
        const s = pm.snapshot(v.snapshotId);
        const conflicts = (v.mergeReport as { conflicts?: unknown[] } | null)?.conflicts?.length ?? 0;
        return { ...v, files: s.files.filter((f) => f.kind === 'file').length, bytes: s.files.reduce((n, f) => n + f.size, 0), conflicts };
      });
      return { user: u.name, versions };
    }, (r) => [`persona of ${r.user}:`, ...r.versions.map((v) =>
      `  version ${v.version}  ${v.createdAt}  ${v.source}${v.restoredFrom ? ` of version ${v.restoredFrom}` : ''}${v.deviceName ? ` from ${v.deviceName}` : ''}: ${v.files} files, ${fmtBytes(v.bytes)}` +
      (v.conflicts > 0 ? `, ${v.conflicts} conflict(s) merged` : ''))].join('\n'));
  });
  withCommonOptions(persona.command('show <user> [version]').description('show one persona version (default: the newest): files, registry and merge report'))
    .action(async (user: string, version: string | undefined, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d, meta) => {
        const u = meta.userByName(parseName(user, 'user'));
        const pm = new SqlitePersonaMeta(d.db);
        const newest = pm.current(u.id).version;
        const n = version === undefined ? newest : Number(version);
        const v = Number.isSafeInteger(n) ? pm.version(u.id, n) : null;
        if (!v) throw new CarryonError('INVALID_ARGUMENT', `user ${u.name} has no persona version ${String(version)}`);
        const s = pm.snapshot(v.snapshotId);
        return { user: u.name, ...v, files: s.files, registry: s.registry };
      }, (r) => [
        `persona of ${r.user}, version ${r.version} (${r.source}, ${r.createdAt})`,
        ...r.files.map((f) => `  ${f.kind === 'dir' ? 'dir ' : f.kind === 'symlink' ? 'link' : 'file'} ${f.path}${f.kind === 'file' ? ` (${fmtBytes(f.size)})` : ''}${f.target ? ` -> ${f.target}` : ''}`),
        r.registry ? `registry:\n${r.registry}` : 'registry: empty',
        ...(r.mergeReport ? [`merge report: ${JSON.stringify(r.mergeReport)}`] : []),
      ].join('\n'));
    });
  withCommonOptions(persona.command('restore <user> <version>').description("put a user's persona back to an earlier version (as a new version; history is kept)"))
    .action(async (user: string, version: string, _o, cmd: Command) => {
      await withData(optsOf(cmd), (d, meta) => {
        const u = meta.userByName(parseName(user, 'user'));
        const n = Number(version);
        if (!Number.isSafeInteger(n) || n < 1) throw new CarryonError('INVALID_ARGUMENT', `version must be a persona version number, got ${version}`);
        const service = new PersonaService(meta, new SqlitePersonaMeta(d.db), d.store, d.root);
        const fleet = new SqliteFleetMeta(d.db);
        return service.restore(u, n, (detail) => fleet.audit(cliActor(), 'persona.restore', `user:${u.name}`, detail));
      }, (r) => r.changed
        ? `persona of ${r.user}: version ${r.version} is now a copy of version ${r.restoredFrom}; laptops get it at their next check-out, check-in or persona pull (their own edits are merged with it)`
        : `persona of ${r.user}: version ${r.version} already equals version ${r.restoredFrom}; nothing changed`);
    });
}
