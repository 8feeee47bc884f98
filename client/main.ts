// carryon: the laptop command line. One file per command in commands/; this file wires them up.
import { createRequire } from 'node:module';
import { Command } from 'commander';
import { registerAgent } from './commands/agent.js';
import { registerApp } from './commands/app.js';
import { registerCheckin } from './commands/checkin.js';
import { registerCheckout } from './commands/checkout.js';
import { registerDiscard } from './commands/discard.js';
import { registerLogin } from './commands/login.js';
import { registerPersona } from './commands/persona.js';
import { registerRenew } from './commands/renew.js';
import { registerUpdate } from './commands/update.js';
import { registerReplicate } from './commands/replicate.js';
import { registerServe } from './commands/serve.js';
import { registerStatus } from './commands/status.js';
import { registerUnlock } from './commands/unlock.js';

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

// Everything carryon writes holds a desktop, a persona or a token: folders 0700 and files 0600 for this
// user only, whatever the shell's umask.
process.umask(0o077);

const program = new Command('carryon')
  .version(version)
  .description('carryon: check virtual desktops out to this laptop and back in')
  .option('--home <dir>', 'laptop state folder (default: $CARRYON_HOME or ~/.carryon)')
  .option('--json', 'print one JSON object as the result')
  .showHelpAfterError();

registerLogin(program);
registerCheckout(program);
registerCheckin(program);
registerServe(program);
registerRenew(program);
registerUpdate(program);
registerAgent(program);
registerApp(program);
registerReplicate(program);
registerStatus(program);
registerDiscard(program);
registerPersona(program);
registerUnlock(program);

program.exitOverride((err) => {
  process.exit(err.exitCode === 0 ? 0 : 2);
});
await program.parseAsync(process.argv);
