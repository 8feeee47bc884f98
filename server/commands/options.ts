// Options every server command accepts, so `--data`, `--json`, `--meta` and `--store` work before or after the command.
import type { Command } from 'commander';
import type { GlobalOpts } from '../cli-util.js';

export function withCommonOptions(cmd: Command): Command {
  return cmd.option('--data <dir>', 'data folder (default: $CARRYON_DATA)').option('--json', 'print one JSON object as the result')
    .option('--meta <url>', 'metadata database: postgres://USER@HOST:PORT/DB (default: $CARRYON_META, else what init recorded, else DATA/carryon.db)')
    .option('--store <url>', 'block store: s3://..., file:///path (default: $CARRYON_STORE, else what init recorded, else DATA/store)');
}

/** Merge the command's own options over the program's. */
export function optsOf(cmd: Command): GlobalOpts & Record<string, unknown> {
  return cmd.optsWithGlobals() as GlobalOpts & Record<string, unknown>;
}
