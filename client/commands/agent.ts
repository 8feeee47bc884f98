// carryon agent: the laptop's background process, fit for a systemd user unit. Every --interval it
// contacts the server for each checkout here (lease renewal, bytes not sent yet) and carries out what
// an admin asked (forced check-in, rollback). It survives the server going away and coming back;
// SIGINT/SIGTERM stop it between rounds.
import type { Command } from 'commander';
import { describeFailure } from '../../src/index.js';
import { giveAgentKek, serveKeys } from '../key-agent.js';
import { defaultSources } from '../keyring.js';
import { agentRound, type AgentLog } from '../agent.js';
import { agentUpdate } from '../updater.js';
import { ApiClient } from '../api-client.js';
import { optsOf, withCommonOptions } from '../cli-util.js';
import { homeOf, LocalState } from '../state.js';

export function registerAgent(program: Command): void {
  withCommonOptions(program.command('agent').description('keep leases renewed and carry out admin requests (forced check-in, rollback); runs until stopped'))
    .option('--interval <seconds>', 'seconds between contacts with the server', '60')
    .option('--once', 'one round, then exit (for cron or a test)')
    .action(async (_o, cmd: Command) => {
      const opts = optsOf(cmd);
      const json = opts.json === true;
      const log: AgentLog = (event, fields, human) => {
        if (json) process.stdout.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
        else process.stderr.write(`${new Date().toISOString()} ${human}\n`);
      };
      const interval = Math.max(1, Number(opts.interval)) * 1000;
      let stopping = false;
      let wake: (() => void) | null = null;
      const stop = (): void => {
        stopping = true;
        wake?.();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      log('start', { interval: interval / 1000 }, `carryon agent: one round every ${interval / 1000} s`);
      // The key agent: \`carryon unlock\` gives it the key of the encrypted desktops, in memory only.
      const home = homeOf(opts.home as string | undefined);
      const keyAgent = serveKeys(home, (what) => log('keys', { what }, `carryon agent: ${what}`));
      {
        const st = new LocalState(home);
        try {
          if (st.keys.exists() && (await st.keys.unlock(defaultSources(opts.passphraseFile as string | undefined), false))) await giveAgentKek(home, st.keys.currentKek());
        } catch (err) {
          log('error', { error: describeFailure(err).error.toJSON() }, `carryon agent: ${describeFailure(err).text}`);
        } finally {
          await st.close();
        }
      }
      let saidLocked = false;
      let restart = false;
      while (!stopping) {
        // A fresh state and client each round: commands run between rounds (checkout, serve) are seen.
        const state = new LocalState(home);
        let api: ApiClient | null = null;
        try {
          const locked = state.keys.exists() && !(await state.keys.unlock(defaultSources(), false));
          if (locked) {
            // The token is sealed too: nothing to do until the user unlocks (said once, not every round).
            if (!saidLocked) log('locked', {}, 'carryon agent: the encrypted desktops are locked: run `carryon unlock` (the agent needs the key to reach the server and to check in)');
            saidLocked = true;
          } else {
            saidLocked = false;
            const login = state.login();
            api = new ApiClient({ url: login.url, token: login.token, device: login.device, ca: login.ca, insecureHttp: login.insecureHttp, idleTimeoutMs: 60_000 });
            const r = await agentRound(state, api, login, log);
            log('round', { ...r }, `round done: ${r.contacted} checkout(s) contacted${r.offline ? ', server unreachable' : ''}, ${r.checkins} forced check-in(s), ${r.rollbacks} rollback(s)`);
            // A new version is switched to: this process still runs the old code, so it ends and its
            // service manager (Restart=always in the systemd unit) starts the new one.
            if (!r.offline && await agentUpdate(state, api, log)) restart = true;
          }
        } catch (err) {
          const f = describeFailure(err);
          log('error', { error: f.error.toJSON() }, `carryon agent: ${f.text}`);
        } finally {
          api?.close();
          await state.close();
        }
        if (opts.once === true || restart) break;
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, interval);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
      await keyAgent.close();
      log('stop', {}, 'carryon agent stopped');
    });
}
