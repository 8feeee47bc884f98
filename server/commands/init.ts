// carryon-server init: create (or upgrade) a data folder.
import type { Command } from 'commander';
import { dataDirOf, run } from '../cli-util.js';
import { initDataDir } from '../db.js';
import { CarryonError } from '../../src/index.js';
import { optsOf, withCommonOptions } from './options.js';

export function registerInit(program: Command): void {
  withCommonOptions(program.command('init').description('create a data folder (database and block store)')).action(async (_o, cmd: Command) => {
    const opts = optsOf(cmd);
    await run(opts, async () => {
      const dir = dataDirOf(opts);
      if (!dir) throw new CarryonError('INVALID_ARGUMENT', 'pass --data DIR or set CARRYON_DATA');
      return initDataDir(dir, { meta: opts.meta, store: opts.store });
    }, (r) => `${r.created ? 'initialised' : 'already initialised'} ${r.root} (schema version ${r.schemaVersion})\nmetadata: ${r.meta}\nblocks: ${r.store}` +
      (r.escrowKeyCreated ? `\nescrow key pair made in ${r.root}/escrow: laptops seal their data keys to escrow.pub; keep a copy of escrow.key somewhere safe (or move it offline: docs/security.md, "Escrow of the laptops' data keys")` : '') +
      (r.releaseKeyCreated ? `\nrelease signing key made in ${r.root}/release: client updates published here are signed with it, and laptops get release.pub at login (docs/updates.md); keep a copy of release.key somewhere safe` : ''));
  });
}
