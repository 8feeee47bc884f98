// carryon checkout NAME [--to PATH]: download the desktop's disk to this laptop.
import type { Command } from 'commander';
import { parseName } from '../../src/index.js';
import path from 'node:path';
import { checkoutDesktop, checkoutPersona, type CheckoutResult } from '../checkout-engine.js';
import type { ApiClient } from '../api-client.js';
import type { LocalState, Login } from '../state.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { fmtBytes } from '../progress.js';
import { defaultSources } from '../keyring.js';
import { checkMountPoint, requirePersonaVault } from '../persona-vault.js';
import { checkoutStreamedPersona, requirePersonaFuse } from '../persona-stream.js';

export function registerCheckout(program: Command): void {
  withCommonOptions(program.command('checkout <desktop>').description('check a desktop out to this laptop (only missing blocks are downloaded)'))
    .option('--to <path>', 'where to put the raw disk image (default: HOME/desktops/NAME/disk.raw)')
    .option('--persona-to <dir>', 'where to put the persona: profile/ and registry.reg (default: beside the disk, in persona/)')
    .option('--encrypt', "encrypt this laptop's copy even where the desktop's policy does not require it (a copy once encrypted stays so)")
    .option('--stream', 'return once the manifest and persona are here; `carryon serve` fetches blocks as the VM reads them and downloads the rest (with --persona-only: the file list now, each file when first opened through `carryon persona mount`)')
    .option('--persona-only', 'bring only the persona (profile files and registry); the disk stays free for others')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      if (opts.personaOnly === true && opts.stream === true) {
        await runCommand(opts, (s) => checkoutPersonaStreamed(s.state, s.api(), s.login(), parseName(desktop, 'desktop'), opts.personaTo as string | undefined, opts.encrypt === true), (r) =>
          r.already
            ? `the persona of ${r.desktop} is already streamed here (version ${r.version}, in ${r.dir})`
            : `persona of ${r.desktop} version ${r.version} in ${r.dir}: ${r.files} files listed, none downloaded yet\n` +
              `show it with \`carryon persona mount ${r.desktop}\` (files come down when first opened, the rest in the background); ` +
              `\`carryon persona fetch ${r.desktop}\` downloads everything before you travel`);
        return;
      }
      if (opts.personaOnly === true) {
        await runCommand(opts, (s) => checkoutPersonaOnly(s.state, s.api(), s.login(), parseName(desktop, 'desktop'), opts.personaTo as string | undefined, { encrypt: opts.encrypt === true, passphraseFile: opts.passphraseFile }), (r) =>
          `persona of ${r.desktop} version ${r.version} in ${r.dir}: ${r.files} files (${r.chunksFetched} chunks downloaded)\n` +
          `edit profile/ and registry.reg there, then \`carryon persona push ${r.desktop}\``);
        return;
      }
      await runCommand(opts, (s) => checkoutDesktop(s.state, s.api(), s.login(), parseName(desktop, 'desktop'), { to: opts.to as string | undefined, personaTo: opts.personaTo as string | undefined, quiet: opts.json === true, stream: opts.stream === true, passphraseFile: opts.passphraseFile, encrypt: opts.encrypt === true }), (r) =>
        r.streaming
          ? `checked out ${r.desktop} version ${r.version} to ${r.disk} for streaming: ${r.streaming.localBlocks} of ${r.streaming.blocks} blocks local\n` +
            `start it now with \`carryon serve ${r.desktop}\` (blocks are fetched as the VM reads them, the rest downloads in the background);\n` +
            `\`carryon status\` says when it is ready to travel` + outsideLine(r) + (r.persona ? `\npersona version ${r.persona.version} in ${r.persona.dir}: ${r.persona.files} files` : '')
          : r.alreadyCheckedOut
          ? `${r.desktop} is already checked out here at ${r.disk} (version ${r.version})`
          : `checked out ${r.desktop} version ${r.version} to ${r.disk}\n${fmtBytes(r.size)} disk: ${r.blocksFetched} blocks downloaded, ${r.blocksFromCache} from the local cache; ` +
            `${fmtBytes(r.bytesReceived)} received in ${r.seconds.toFixed(1)} s${r.resumed ? ' (resumed)' : ''}` + outsideLine(r) +
            (r.persona ? `\npersona version ${r.persona.version} in ${r.persona.dir}: ${r.persona.files} files` : ''));
    });
}

/** The copy updated in place had been written after its check-in: say what became of those writes. */
function outsideLine(r: CheckoutResult): string {
  const o = r.outsideWrites;
  if (!o || o.blocks === 0) return '';
  return `\nNOTE: ${o.reason}: ${o.blocks} blocks differed from that version; ` +
    (o.kept ? 'they were kept (the desktop is still at that version) and the next check-in sends them' : `version ${r.version}'s blocks replaced them`);
}

/** A persona-only copy: no checkout, nothing locked; pushed back with `carryon persona push`. */
async function checkoutPersonaOnly(state: LocalState, api: ApiClient, login: Login, name: string, to: string | undefined, enc: { encrypt: boolean; passphraseFile?: string }) {
  const info = await api.desktop(name); // DESKTOP_NOT_FOUND before anything is written
  // The desktop's policy holds for its persona alone too. There is no checkout, so no escrow: a
  // forgotten passphrase loses only edits not pushed yet (the server keeps every persona version).
  if (!state.keys.isEncrypted(name) && (info.encryption === 'required' || enc.encrypt)) {
    requirePersonaVault();
    if (to !== undefined) checkMountPoint(state.home, to);
    await state.keys.ensure(defaultSources(enc.passphraseFile), info.encryption === 'required' ? `the persona of ${name} must be encrypted on this laptop (your admin's policy)` : `the persona of ${name} is to be encrypted on this laptop (--encrypt)`);
    state.keys.createDataKey(name);
  }
  const held = state.persona(name);
  const dir = path.resolve(to ?? held?.dir ?? path.join(state.home, 'desktops', name, 'persona'));
  const r = await checkoutPersona(state, api, login, name, undefined, dir, held?.withDisk ?? false, to);
  return { desktop: name, ...r, bytesReceived: api.bytesReceived };
}

/** checkout --persona-only --stream: the file list now, each file's bytes when first opened. */
async function checkoutPersonaStreamed(state: LocalState, api: ApiClient, login: Login, name: string, to: string | undefined, encrypt: boolean) {
  requirePersonaFuse(); // before anything is written: without FUSE a streamed copy could not be opened
  const info = await api.desktop(name); // DESKTOP_NOT_FOUND before anything is written
  const held = state.persona(name);
  const dir = path.resolve(to ?? held?.dir ?? path.join(state.home, 'desktops', name, 'persona'));
  const r = await checkoutStreamedPersona(state, api, login, name, dir, encrypt || info.encryption === 'required' || state.keys.isEncrypted(name));
  return { desktop: name, ...r, bytesReceived: api.bytesReceived };
}
