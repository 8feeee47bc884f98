// carryon persona status|diff|push|reg import: the persona copy on this laptop.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { applyToRegistry, CarryonError, decodePersona, decodeRegFile, encodePersona, exportRegistry, parseName, Registry, type PersonaPushInfo } from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions, type Session } from '../cli-util.js';
import { diffPersona, fetchPersona, personaPushParts, REGISTRY_FILE, scanPersona, uploadPersona } from '../persona-engine.js';
import { personaFolder } from '../persona-vault.js';

/** The persona copy, its folder ready (an encrypted copy's vault mounted). */
async function heldPersona(s: Session, name: string) {
  const held = s.state.persona(name);
  if (!held) throw new CarryonError('NOT_CHECKED_OUT', `the persona of ${name} is not on this laptop: \`carryon checkout ${name}\` (or with --persona-only) brings it`, { desktop: name });
  await personaFolder(s.state, held);
  return held;
}

/** `upload`: new files' chunks are sent while the scan reads them (a push). */
async function localChanges(s: Session, name: string, upload = false) {
  const held = await heldPersona(s, name);
  const base = decodePersona(held.snapshot);
  const ours = await scanPersona(s.state, name, held.dir, base, upload ? { api: s.api(), baseVersion: held.version } : undefined);
  return { held, base, ours, diff: diffPersona(base, ours.snapshot) };
}

export function registerPersona(program: Command): void {
  const persona = program.command('persona').description('the persona (profile files and registry) copy on this laptop');

  for (const verb of ['status', 'diff'] as const) {
    withCommonOptions(persona.command(`${verb} <desktop>`).description(verb === 'status' ? 'count local edits since the copy was made' : 'list local edits: files added, changed, deleted; registry'))
      .action(async (desktop: string, _o, cmd: Command) => {
        const opts = optsOf(cmd);
        await runCommand(opts, async (s) => {
          const { held, diff } = await localChanges(s, parseName(desktop, 'desktop'));
          return { desktop, dir: held.dir, version: held.version, withDisk: held.withDisk, ...diff };
        }, (r) => {
          const head = `persona of ${r.desktop} (version ${r.version}) in ${r.dir}: ${r.added.length} added, ${r.changed.length} changed, ${r.deleted.length} deleted; registry ${r.registryChanged ? 'changed' : 'unchanged'}`;
          if (verb === 'status') return head;
          return [head, ...r.added.map((p) => `  + ${p}`), ...r.changed.map((p) => `  ~ ${p}`), ...r.deleted.map((p) => `  - ${p}`)].join('\n');
        });
      });
  }

  withCommonOptions(persona.command('push <desktop>').description('send local persona edits to the server now (merged with edits made meanwhile elsewhere)'))
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const name = parseName(desktop, 'desktop');
        const { held, base, ours, diff } = await localChanges(s, name, true);
        const api = s.api();
        const rest = await uploadPersona(s.state, api, name, held.version, base, ours.snapshot, held.dir);
        const sent = { ...rest, chunks: rest.chunks + ours.chunksSentEarly };
        const push: PersonaPushInfo = { baseVersion: held.version, desktop: name, deviceName: s.login().deviceName, editedAt: ours.editedAt };
        const r = await api.personaPush(personaPushParts(base, ours.snapshot, push));
        // The copy now follows the new version: downloaded when edits from elsewhere were merged in,
        // else it is the folder as scanned.
        if (r.merged) {
          const p = await fetchPersona(s.state, api, name, r.version, held.dir, ours.snapshot);
          s.state.putPersona({ ...held, version: p.version, snapshot: p.encoded });
        } else {
          s.state.putPersona({ ...held, version: r.version, snapshot: encodePersona(ours.snapshot) });
        }
        return { desktop: name, ...r, changes: diff, sent, bytesSent: api.bytesSent };
      }, (r) => `persona of ${r.desktop}: ${r.changed ? `version ${r.version}` : `unchanged (version ${r.version})`}` +
        `${r.merged ? ', merged with edits made elsewhere' : ''}; ${r.sent.deltas} files as deltas, ${r.sent.chunks} chunks sent` +
        ((r.report as { conflicts?: Array<{ path: string; resolution: string }> } | null)?.conflicts?.map((c) => `\n  conflict ${c.path}: ${c.resolution}`).join('') ?? ''));
    });

  const reg = persona.command('reg').description('registry of the persona copy');
  withCommonOptions(reg.command('import <desktop> <file>').description('apply a .reg file (values set, "name"=- and [-key] deletions) to the persona registry'))
    .action(async (desktop: string, file: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const held = await heldPersona(s, parseName(desktop, 'desktop'));
        const target = path.join(held.dir, REGISTRY_FILE);
        const current = await fs.readFile(target).catch(() => null);
        const registry = current ? applyToRegistry(new Registry(), decodeRegFile(current)) : new Registry();
        const edits = decodeRegFile(await fs.readFile(file));
        applyToRegistry(registry, edits);
        const tmp = `${target}.${process.pid}.tmp`;
        await fs.writeFile(tmp, exportRegistry(registry, { version: 'v5', encoding: 'utf-16le', bom: true }));
        await fs.rename(tmp, target);
        return { desktop, registry: target, sections: edits.sections.length, keys: registry.size };
      }, (r) => `applied ${r.sections} section(s) to ${r.registry} (${r.keys} keys); the next check-in or push sends it`);
    });
}
