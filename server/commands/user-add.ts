// carryon-server user add NAME [--admin]: create a user and print their token once.
import type { Command } from 'commander';
import { parseName } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerUserAdd(user: Command): void {
  withCommonOptions(user.command('add <name>').description('add a user; prints their bearer token once (only its hash is stored)'))
    .option('--admin', 'the user is an administrator')
    .action(async (name: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => {
        return d.desktops.addUser(parseName(name, 'user'), opts.admin === true, cliActor());
      }, (r) =>
        `added ${r.admin ? 'admin' : 'user'} ${r.user}\ntoken: ${r.token}\n(shown once: give it to the user for \`carryon login URL\`, which asks for it without echo)`);
    });
}
