// carryon login URL --token TOKEN: check the token, register this laptop as a device, keep the device's own token.
import os from 'node:os';
import type { Command } from 'commander';
import { CarryonError } from '../../src/index.js';
import { ApiClient } from '../api-client.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';

export function registerLogin(program: Command): void {
  withCommonOptions(program.command('login <url>').description('log this laptop in to a carryon server'))
    .requiredOption('--token <token>', 'bearer token from `carryon-server user add`')
    .option('--device-name <name>', 'how this laptop is named to admins', os.hostname())
    .action(async (url: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async ({ state }) => {
        let u: URL;
        try {
          u = new URL(url);
        } catch {
          throw new CarryonError('INVALID_ARGUMENT', `${url} is not a URL (like http://127.0.0.1:7480)`);
        }
        if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new CarryonError('INVALID_ARGUMENT', 'the server URL must be http:// or https://');
        const api = new ApiClient({ url: u.origin, token: String(opts.token), device: state.deviceId() });
        try {
          const who = await api.whoami();
          // The laptop keeps a token of its own (a device token), never the user's: an admin can list
          // and revoke it without touching the user's other laptops.
          const reg = await api.registerDevice(state.deviceId(), String(opts.deviceName));
          const l = state.saveLogin({ url: u.origin, token: reg.token, deviceName: String(opts.deviceName), user: who.user });
          return { server: l.url, user: who.user, admin: who.admin, device: l.device, deviceName: l.deviceName, home: state.home };
        } finally {
          api.close();
        }
      }, (r) => `logged in to ${r.server} as ${r.user}${r.admin ? ' (admin)' : ''}; this laptop is device ${r.deviceName} (${r.device})`);
    });
}
