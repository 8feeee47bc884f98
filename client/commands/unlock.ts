// carryon unlock / carryon lock: open this laptop's encrypted desktops for the session, or close
// them. The agent (`carryon agent`) keeps the key in memory and hands it to later commands; without an
// agent each command asks (on a terminal) or reads --passphrase-file / $CARRYON_PASSPHRASE.
// `unlock NAME --recovery-code CODE`: a forgotten passphrase, with the code an admin reads out.
import type { Command } from 'commander';
import { CarryonError, parseName } from '../../src/index.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { agentForget, giveAgentKek } from '../key-agent.js';
import { defaultSources } from '../keyring.js';
import { closePersonaVault, isPersonaVault, openPersonaVault } from '../persona-vault.js';
import type { LocalState } from '../state.js';

/** After an unlock: every encrypted persona copy mounted where it lives, for the session. */
async function mountPersonas(state: LocalState): Promise<Array<{ desktop: string; dir: string; error?: string }>> {
  const out: Array<{ desktop: string; dir: string; error?: string }> = [];
  for (const p of state.personas()) {
    if (!isPersonaVault(state, p.desktop)) continue;
    try {
      await openPersonaVault(state, p.desktop, p.dir);
      out.push({ desktop: p.desktop, dir: p.dir });
    } catch (err) {
      out.push({ desktop: p.desktop, dir: p.dir, error: (err as Error).message });
    }
  }
  return out;
}

export function registerUnlock(program: Command): void {
  withCommonOptions(program.command('unlock [desktop]').description("open this laptop's encrypted desktops for the session (the agent holds the key in memory)"))
    .option('--recovery-code <code>', "a forgotten passphrase: the code an admin reads out (`carryon-server admin recovery-code DESKTOP`); a new passphrase is then set")
    .action(async (desktop: string | undefined, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const src = defaultSources(opts.passphraseFile);
        if (opts.recoveryCode !== undefined) {
          if (!desktop) throw new CarryonError('INVALID_ARGUMENT', 'a recovery code opens one desktop: `carryon unlock DESKTOP --recovery-code CODE`');
          const r = await s.state.keys.recover(parseName(desktop, 'desktop'), String(opts.recoveryCode), src);
          const agent = await giveAgentKek(s.state.home, s.state.keys.currentKek());
          return { unlocked: true, desktop, recovered: true, newPassphrase: r.newPassphrase, agent };
        }
        if (!s.state.keys.exists()) {
          return { unlocked: false, desktop: null, recovered: false, newPassphrase: false, agent: false, none: true };
        }
        if (!s.state.keys.isUnlocked() && !(await s.state.keys.unlock(src))) {
          throw new CarryonError('KEYS_LOCKED', 'no passphrase given, and stdin is not a terminal to ask on: run `carryon unlock` on a terminal, or give --passphrase-file FILE or $CARRYON_PASSPHRASE');
        }
        const agent = await giveAgentKek(s.state.home, s.state.keys.currentKek());
        return { unlocked: true, desktop: null, recovered: false, newPassphrase: false, agent, personas: await mountPersonas(s.state) };
      }, (r) => {
        if ('none' in r) return 'this laptop has no encrypted desktop yet: nothing to unlock (the passphrase is chosen at the first check-out of a desktop that must be encrypted)';
        const head = r.recovered ? `${r.desktop} recovered${r.newPassphrase ? ' under the new passphrase (other encrypted desktops here need their own recovery codes; log in again if asked)' : ''}` : 'unlocked';
        const mounted = 'personas' in r && r.personas ? r.personas.map((p) => p.error ? `\npersona of ${p.desktop} not mounted: ${p.error}` : `\npersona of ${p.desktop} in ${p.dir}`).join('') : '';
        return (r.agent ? `${head}: the agent holds the key until \`carryon lock\` or it stops` :
          `${head}, but no agent is running to keep the key: each command will ask again. Start \`carryon agent\` (the systemd user unit in the README), then \`carryon unlock\``) + mounted;
      }, { unlock: opts.recoveryCode === undefined }); // a recovery needs no old passphrase
    });

  withCommonOptions(program.command('lock').description('make the agent forget the key: encrypted desktops need the passphrase again'))
    .action(async (_o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        // Encrypted personas are unmounted: their plaintext view goes with the key. One in use stays
        // mounted (never forced: a program may be writing to it) and is named.
        const personas: Array<{ desktop: string; dir: string; unmounted: boolean; busy: string | null }> = [];
        for (const p of s.state.personas()) {
          if (!isPersonaVault(s.state, p.desktop)) continue;
          const c = await closePersonaVault(s.state, p.dir, false);
          if (c.unmounted || c.busy) personas.push({ desktop: p.desktop, dir: p.dir, ...c });
        }
        return { locked: await agentForget(s.state.home), personas };
      }, (r) =>
        (r.locked ? 'locked: the agent forgot the key; `carryon unlock` opens the encrypted desktops again' : 'no agent is running: nothing held the key') +
        r.personas.map((p) => p.busy ? `\npersona of ${p.desktop} is still mounted at ${p.dir}: it is in use (${p.busy}); close what uses it and run \`carryon lock\` again` : `\npersona of ${p.desktop} unmounted from ${p.dir}`).join(''), { unlock: false });
    });
}
