// carryon discard NAME: give the checkout up; local changes are lost, the server keeps its version.
import { promises as fs } from 'node:fs';
import readline from 'node:readline/promises';
import type { Command } from 'commander';
import { CarryonError, fmtBytes, parseName } from '../../src/index.js';
import { shredCopy } from '../shred.js';
import { closePersonaVault } from '../persona-vault.js';
import { isStreamed, unmountRecorded } from '../persona-stream.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { DiskLock } from '../disk-lock.js';
import { removeJournal } from '../disk-session.js';
import { wipeDesktopBlocks } from '../wipe.js';
import path from 'node:path';

async function confirm(question: string): Promise<boolean> {
  if (!process.stdin.isTTY) return false;
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
  } finally {
    rl.close();
  }
}

export function registerDiscard(program: Command): void {
  withCommonOptions(program.command('discard <desktop>').description('end a checkout without checking in: local changes are thrown away'))
    .option('--yes', 'do not ask')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const name = parseName(desktop, 'desktop');
        const local = s.state.checkout(name);
        const persona = s.state.persona(name);
        if (!local && !persona) throw new CarryonError('NOT_CHECKED_OUT', `${name} is not checked out on this laptop`, { desktop: name });
        const what = [local?.diskPath, persona?.dir].filter(Boolean).join(' and ');
        if (opts.yes !== true && !(await confirm(`Discard ${name} (${what})? Changes not checked in or pushed are lost.`))) {
          throw new CarryonError('ABORTED', 'not discarded (pass --yes to discard without asking)');
        }
        // Not while `carryon serve` has it open: the VM would write into a deleted file.
        const lock = local ? DiskLock.acquire(s.state.home, name, 'discard') : null;
        try {
        let server = 'none';
        if (local && local.state !== 'checked-in') server = (await s.api().discard(local.checkoutId)).already ? 'already ended' : 'released';
        if (local) {
          await fs.rm(local.diskPath, { force: true });
          await fs.rm(`${local.diskPath}.partial`, { force: true });
          removeJournal(s.state, name);
          await fs.rm(path.join(s.state.home, 'run', `${name}.progress.json`), { force: true });
        }
        // An encrypted copy's persona vault is unmounted first (even while a file in it is open: the
        // copy is going); its key is destroyed below and its vault (cache, persona) removed with it.
        if (persona) await closePersonaVault(s.state, persona.dir, true);
        // A streamed persona's mount goes the same way: its process then stops on its own.
        if (persona && isStreamed(persona.dir)) await unmountRecorded(persona.dir, true);
        const encrypted = s.state.keys.isEncrypted(name);
        // The persona copy goes with it: its unpushed edits are what discarding throws away.
        if (persona) await fs.rm(persona.dir, { recursive: true, force: true });
        // Its cache blocks that nothing else here uses are wiped (the rows still name them), then the rows go.
        const wipe = await wipeDesktopBlocks(s.state, name, encrypted ? null : persona?.snapshot ?? null); // an encrypted copy's chunks are in its vault
        // An encrypted copy's key is destroyed, and its sealed cache removed with it.
        const shred = await shredCopy(s.state, name);
        if (local) s.state.removeCheckout(name);
        if (persona) s.state.removePersona(name);
        const freedBytes = wipe.freedBytes + shred.freedBytes;
        return { desktop: name, disk: local?.diskPath ?? null, persona: persona?.dir ?? null, removed: true, server, removedBlocks: wipe.removedBlocks, freedBytes, keyShredded: shred.shredded };
        } finally {
          lock?.release();
        }
      }, (r) => `discarded ${r.desktop}: removed ${[r.disk, r.persona].filter(Boolean).join(' and ')}; ${r.removedBlocks} cache blocks removed, ${fmtBytes(r.freedBytes)} freed` +
        (r.keyShredded ? '; its encryption key destroyed (crypto-shredding)' : '') + `; server checkout ${r.server}`);
    });
}
