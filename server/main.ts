// carryon-server: the command line of the service and its admin tasks. One file per command in
// commands/; this file only wires them to commander.
import { createRequire } from 'node:module';
import { Command } from 'commander';
import { registerAdmin } from './commands/admin.js';
import { registerDesktopCreate } from './commands/desktop-create.js';
import { registerDesktopPolicy } from './commands/desktop-policy.js';
import { registerDesktopRecompose } from './commands/desktop-recompose.js';
import { registerImagePolicy } from './commands/image-policy.js';
import { registerImagePublish } from './commands/image-publish.js';
import { registerInit } from './commands/init.js';
import { registerPersona } from './commands/persona.js';
import { registerStart } from './commands/start.js';
import { registerStatus } from './commands/status.js';
import { registerGc } from './commands/gc.js';
import { registerUserAdd } from './commands/user-add.js';
import { registerRelease } from './commands/release.js';

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

// The data folder holds every user's desktops and the token hashes: folders 0700 and files 0600 for the
// service's user only, whatever the shell's umask.
process.umask(0o077);

const program = new Command('carryon-server')
  .version(version)
  // Program options before the command only: `release publish FILE --version V` is the release's version, not this program's.
  .enablePositionalOptions()
  .description('carryon server: stores desktops and images, serves check-outs and check-ins')
  .option('--data <dir>', 'data folder (default: $CARRYON_DATA)')
  .option('--json', 'print one JSON object as the result')
  .showHelpAfterError();

registerInit(program);
registerStart(program);
const user = program.command('user').description('manage users');
registerUserAdd(user);
const image = program.command('image').description('manage golden images');
registerImagePublish(image);
registerImagePolicy(image);
const desktop = program.command('desktop').description('manage desktops');
registerDesktopCreate(desktop);
registerDesktopPolicy(desktop);
registerDesktopRecompose(desktop);
registerPersona(program);
registerStatus(program);
registerGc(program);
registerAdmin(program);
registerRelease(program);

program.exitOverride((err) => {
  process.exit(err.exitCode === 0 ? 0 : 2);
});
await program.parseAsync(process.argv);
