// carryon persona status|diff|push|reg import|reg export: the persona copy on this laptop.
import { promises as fs } from 'node:fs';
import type { Command } from 'commander';
import {
  applyRegFileToText, CarryonError, countRegistryKeys, decodePersona, encodePersona, encodeRegFile, filterRegistryText, HKCU, joinRegistryTexts, keyPathId, parseName, personaId,
  registryChangesFile, RegTextCursor, registryTextFileBytes, ScopeFilter, selectKeys, type PersonaPushInfo, type RegistryFile,
} from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions, type Session } from '../cli-util.js';
import { writeHive } from '../hive.js';
import { diffPersona, fetchPersona, personaPushParts, scanPersona, uploadPersona } from '../persona-engine.js';
import { readPersonaRegistryText, readRegistryInput, readRegistryScope, wholeRegistryText, writeGuestChanges, writePersonaRegistryText } from '../persona-registry.js';
import { personaFolder } from '../persona-vault.js';
import { registerPersonaStream } from './persona-stream.js';
import { fetchDeltaBases, isStreamed } from '../persona-stream.js';

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
  const baseId = personaId(held.snapshot);
  const ours = await scanPersona(s.state, name, held.dir, base, baseId, upload ? { api: s.api(), baseVersion: held.version } : undefined);
  return { held, base, baseId, ours, diff: diffPersona(base, ours.snapshot) };
}

export function registerPersona(program: Command): void {
  const persona = program.command('persona').description('the persona (profile files and registry) copy on this laptop');

  for (const verb of ['status', 'diff'] as const) {
    withCommonOptions(persona.command(`${verb} <desktop>`).description(verb === 'status' ? 'count local edits since the copy was made' : 'list local edits: files added, changed, deleted; registry'))
      .action(async (desktop: string, _o, cmd: Command) => {
        const opts = optsOf(cmd);
        await runCommand(opts, async (s) => {
          const { held, ours, diff } = await localChanges(s, parseName(desktop, 'desktop'));
          // Keys the server will drop at the next check-in or push: outside the desktop's registry scope.
          const { scope, fromServer } = await readRegistryScope(held.dir);
          const outside = diff.registryChanged ? filterRegistryText(ours.snapshot.registry, scope, { keepText: false }).dropped : [];
          return { desktop, dir: held.dir, version: held.version, withDisk: held.withDisk, ...diff, registryScope: { ...scope, fromServer }, registryDropped: outside.map((d) => ({ key: d.path, reason: d.reason })) };
        }, (r) => {
          const head = `persona of ${r.desktop} (version ${r.version}) in ${r.dir}: ${r.added.length} added, ${r.changed.length} changed, ${r.deleted.length} deleted; registry ${r.registryChanged ? 'changed' : 'unchanged'}` +
            (r.registryDropped.length > 0 ? `\n${r.registryDropped.length} registry key(s) are outside this desktop's registry scope and will be dropped at the next check-in or push:` +
              r.registryDropped.slice(0, 20).map((d) => `\n  - ${d.key} (${d.reason === 'root' ? 'not HKEY_CURRENT_USER: refused unless it came from the server unchanged' : d.reason})`).join('') : '');
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
        const { held, base, baseId, ours, diff } = await localChanges(s, name, true);
        const api = s.api();
        // A streamed copy: files replaced whole through its mount may have bases never fetched.
        if (isStreamed(held.dir)) await fetchDeltaBases(s.state, api, name, held.version, base, ours.snapshot);
        const rest = await uploadPersona(s.state, api, name, held.version, base, ours.snapshot, held.dir);
        const sent = { ...rest, chunks: rest.chunks + ours.chunksSentEarly };
        const push: PersonaPushInfo = { baseVersion: held.version, desktop: name, deviceName: s.login().deviceName, editedAt: ours.editedAt };
        const r = await api.personaPush(personaPushParts(base, baseId, ours, push));
        // The copy now follows the new version: downloaded when edits from elsewhere were merged in,
        // else it is the folder as scanned.
        if (r.merged || r.registryDropped) {
          const p = await fetchPersona(s.state, api, name, r.version, held.dir, ours.snapshot);
          s.state.putPersona({ ...held, version: p.version, snapshot: p.encoded });
          await writeGuestChanges(held.dir); // a Windows guest's next logon takes the merged registry
        } else {
          s.state.putPersona({ ...held, version: r.version, snapshot: encodePersona(ours.snapshot) });
        }
        return { desktop: name, ...r, changes: diff, sent, bytesSent: api.bytesSent };
      }, (r) => `persona of ${r.desktop}: ${r.changed ? `version ${r.version}` : `unchanged (version ${r.version})`}` +
        `${r.merged ? ', merged with edits made elsewhere' : ''}; ${r.sent.deltas} files as deltas, ${r.sent.chunks} chunks sent` +
        (r.registryDropped ? `\n${r.registryDropped.count} registry key(s) outside this desktop's registry scope were dropped, not stored: ${r.registryDropped.keys.slice(0, 5).join('; ')}${r.registryDropped.count > 5 ? '; ...' : ''}` : '') +
        ((r.report as { conflicts?: Array<{ path: string; resolution: string }> } | null)?.conflicts?.map((c) => `\n  conflict ${c.path}: ${c.resolution}`).join('') ?? ''));
    });

  registerPersonaStream(persona);

  const reg = persona.command('reg').description('registry of the persona copy (HKEY_CURRENT_USER): .reg files and hives (NTUSER.DAT)');
  withCommonOptions(reg.command('import <desktop> <file>').description('apply a .reg file ("name"=- and [-key] deletions honoured) or a registry hive (NTUSER.DAT) to the persona registry'))
    .option('--replace', 'the file is the whole HKEY_CURRENT_USER (as `reg export HKCU FILE` writes it at logoff): the persona registry becomes it; what it lacks is deleted (a hive always replaces)')
    .action(async (desktop: string, file: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const held = await heldPersona(s, parseName(desktop, 'desktop'));
        const { scope } = await readRegistryScope(held.dir);
        const filter = new ScopeFilter(scope);
        const input = await readRegistryInput(file);
        // All on canonical text, key by key: a Registry of value objects costs ~900 MB at 100,000 keys.
        const current = await readPersonaRegistryText(held.dir);
        let next: string;
        let dropped: string[];
        if (input.kind === 'hive' || opts.replace) {
          // Within the scope the file is the registry; keys outside the scope stay as they were.
          const whole = filterRegistryText(wholeRegistryText(input), filter);
          dropped = whole.dropped.map((d) => d.path);
          next = joinRegistryTexts(whole.text, selectKeys(current, (k) => !filter.has(k.path)));
        } else {
          // Edits: those on keys outside the desktop's scope are left out (the server would drop them).
          dropped = [];
          const seen = new Set<string>();
          next = applyRegFileToText(current, input.bytes!, { onlyRoot: HKCU }, undefined, (sec) => {
            if (filter.has(sec.path)) return true;
            // (a file out of key order is decoded twice: each section is listed once)
            const key = `${sec.kind}\0${sec.path}`;
            if (!seen.has(key)) {
              seen.add(key);
              dropped.push(sec.path);
            }
            return false;
          });
        }
        const target = await writePersonaRegistryText(held.dir, next);
        return { desktop, registry: target, kind: input.kind, replaced: input.kind === 'hive' || opts.replace === true, keys: countRegistryKeys(next), dropped: dropped.length, droppedKeys: dropped.slice(0, 20), unreadable: input.skipped };
      }, (r) => `${r.replaced ? 'replaced the registry in' : 'applied the edits to'} ${r.registry} from a ${r.kind === 'hive' ? 'registry hive' : '.reg file'} (${r.keys} keys); the next check-in or push sends it` +
        (r.unreadable.length > 0 ? `\n${r.unreadable.length} key(s) or value(s) of the hive have a NUL inside their name, which a .reg file cannot hold; left out:${r.unreadable.slice(0, 20).map((k) => `\n  - ${k}`).join('')}` : '') +
        (r.dropped > 0 ? `\n${r.dropped} key(s) outside this desktop's registry scope were left out (carryon persona status ${r.desktop} lists the scope):${r.droppedKeys.map((k) => `\n  - ${k}`).join('')}${r.dropped > r.droppedKeys.length ? '\n  ...' : ''}` : ''));
    });

  withCommonOptions(reg.command('export <desktop> <out>').description('write the persona registry for a Windows guest: a .reg file (UTF-16LE, as regedit writes it) or, with --base, a hive (NTUSER.DAT)'))
    .option('--changes-since <file>', 'only what turns this registry (a .reg file or hive: what the guest has, e.g. its last logoff export) into the persona: values set, "name"=- and [-key] deletions, within the desktop\'s scope')
    .option('--base <hive>', "write a hive: a copy of this hive (the guest user's NTUSER.DAT) with the persona's registry merged in (deletions included)")
    .action(async (desktop: string, out: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const held = await heldPersona(s, parseName(desktop, 'desktop'));
        const { scope } = await readRegistryScope(held.dir);
        const filter = new ScopeFilter(scope);
        const base = opts.base as string | undefined;
        const since = opts.changesSince as string | undefined;
        if (base !== undefined) {
          if (since !== undefined) throw new CarryonError('INVALID_ARGUMENT', '--base and --changes-since do not go together: a hive written with --base is already changed from that hive only where the persona differs');
          const input = await readRegistryInput(base);
          if (input.kind !== 'hive') throw new CarryonError('INVALID_ARGUMENT', `--base ${base} is a .reg file: give the user's hive (NTUSER.DAT from C:\\Users\\NAME, or C:\\Users\\Default\\NTUSER.DAT for a new user)`, { file: base });
          // (keys of the base the persona cannot name, such as NUL names, are neither changed nor deleted)
          const hiveKeys = new Set<string>();
          for (const c = new RegTextCursor(input.text!); c.key; c.next()) hiveKeys.add(c.key.id);
          const changes = registryChangesFile(input.text!, await readPersonaRegistryText(held.dir), filter);
          await writeHive(base, out, changes, { hasKey: (p) => hiveKeys.has(keyPathId(p)) });
          return { desktop, out, kind: 'hive', ...countChanges(changes) };
        }
        const persona = await readPersonaRegistryText(held.dir);
        const tmp = `${out}.${process.pid}.tmp`;
        let counts: ReturnType<typeof countChanges>;
        if (since !== undefined) {
          const file = registryChangesFile(wholeRegistryText(await readRegistryInput(since)), persona, filter);
          await fs.writeFile(tmp, encodeRegFile(file));
          counts = countChanges(file);
        } else {
          const kept = filterRegistryText(persona, filter).text;
          await fs.writeFile(tmp, registryTextFileBytes(kept));
          counts = { valuesSet: countValueLines(kept), valuesDeleted: 0, keysDeleted: 0 };
        }
        await fs.rename(tmp, out);
        return { desktop, out, kind: since !== undefined ? 'changes' : 'reg', ...counts };
      }, (r) => `wrote ${r.out} (${r.kind === 'hive' ? 'registry hive' : r.kind === 'changes' ? 'changes as regedit applies them' : 'the whole registry, UTF-16LE'}): ` +
        `${r.valuesSet} value(s) set, ${r.valuesDeleted} deleted, ${r.keysDeleted} key(s) deleted`);
    });
}

/** Value lines of canonical text (each starts a line with `"` or `@`; continuation lines start with blanks). */
function countValueLines(text: string): number {
  let n = 0;
  for (let i = text.indexOf('\r\n'); i >= 0; i = text.indexOf('\r\n', i + 2)) {
    const c = text.charCodeAt(i + 2);
    if (c === 0x22 || c === 0x40) n++;
  }
  return n;
}

function countChanges(file: RegistryFile): { valuesSet: number; valuesDeleted: number; keysDeleted: number } {
  let valuesSet = 0;
  let valuesDeleted = 0;
  let keysDeleted = 0;
  for (const sec of file.sections) {
    if (sec.kind === 'delete-key') keysDeleted++;
    else for (const v of sec.values) v.kind === 'set' ? valuesSet++ : valuesDeleted++;
  }
  return { valuesSet, valuesDeleted, keysDeleted };
}
