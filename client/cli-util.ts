// Client CLI glue: common options, the opened laptop state, human vs --json output, exit codes.
import type { Command } from 'commander';
import { describeFailure } from '../src/index.js';
import { ApiClient } from './api-client.js';
import { learnFromError } from './rollback.js';
import { homeOf, LocalState, type Login } from './state.js';
import { defaultSources, PASSPHRASE_ENV } from './keyring.js';

export interface CommonOpts {
  home?: string;
  json?: boolean;
  passphraseFile?: string;
}

export function withCommonOptions(cmd: Command): Command {
  return cmd.option('--home <dir>', 'laptop state folder (default: $CARRYON_HOME or ~/.carryon)').option('--json', 'print one JSON object as the result')
    .option('--passphrase-file <file>', `the passphrase of this laptop's encrypted desktops, from the first line of FILE (- for stdin); also $${PASSPHRASE_ENV}; else the agent (\`carryon unlock\`) or a prompt`);
}

export function optsOf(cmd: Command): CommonOpts & Record<string, unknown> {
  return cmd.optsWithGlobals() as CommonOpts & Record<string, unknown>;
}

export interface Session {
  state: LocalState;
  login: () => Login;
  api: () => ApiClient;
}

/**
 * Open the laptop state (and, once asked for, the server), unlock the keys as every command does, run
 * body and close it all. A failure comes back as thrown, after any rollback it told of is recorded.
 * The CLI (runCommand) and the traveller's app (client/app/) both go through here.
 */
export async function withSession<T>(opts: CommonOpts, body: (s: Session) => Promise<T>, how: { unlock?: boolean; prompt?: boolean } = {}): Promise<T> {
  let state: LocalState | null = null;
  let client: ApiClient | null = null;
  try {
    state = new LocalState(homeOf(opts.home));
    const st = state;
    // Encrypted desktops: the key from the agent, the file or the environment, else asked on a terminal
    // once (never with prompt false: the app has no terminal to ask on). Without any of them the command
    // goes on locked and stops with KEYS_LOCKED where it needs a key.
    if (how.unlock !== false && st.keys.exists()) await st.keys.unlock(defaultSources(opts.passphraseFile), how.prompt !== false);
    const session: Session = {
      state: st,
      login: () => st.login(),
      api: () => {
        if (!client) {
          const l = st.login();
          client = new ApiClient({ url: l.url, token: l.token, device: l.device, ca: l.ca, insecureHttp: l.insecureHttp });
        }
        return client;
      },
    };
    return await body(session);
  } catch (caught) {
    // A rollback heard of here is recorded, and told with the laptop's own sentence.
    throw state ? learnFromError(state, caught) : caught;
  } finally {
    (client as ApiClient | null)?.close();
    await state?.close();
  }
}

/** Run a command with the laptop state open; print the result; map failures to exit codes. */
export async function runCommand<T>(opts: CommonOpts, body: (s: Session) => Promise<T>, human: (r: T) => string, how: { unlock?: boolean } = {}): Promise<void> {
  let r: T;
  try {
    r = await withSession(opts, body, how);
  } catch (err) {
    const f = describeFailure(err);
    if (opts.json) process.stdout.write(`${f.json}\n`);
    process.stderr.write(`carryon: ${f.text}\n`);
    process.exitCode = f.exitCode;
    return;
  }
  process.stdout.write(opts.json ? `${JSON.stringify(r)}\n` : `${human(r)}\n`);
}
