// Crypto-shredding of an encrypted copy (rollback, discard): its data key is destroyed first, at once
// (state.db row zeroed by secure_delete, WAL truncated), so whatever bytes of the copy remain anywhere
// (the disk file, the sealed cache, blocks the file system freed but did not overwrite) are ciphertext
// nobody can open; then the copy's own cache folder is removed, which gives the space back.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { LocalState } from './state.js';

export interface ShredResult {
  /** A key existed and is gone. */
  shredded: boolean;
  /** Bytes of the copy's sealed cache removed. */
  freedBytes: number;
}

export async function shredCopy(state: LocalState, desktop: string): Promise<ShredResult> {
  const root = state.vaultRoot(desktop);
  await state.closeVault(desktop);
  const shredded = state.keys.shred(desktop);
  const freedBytes = await bytesUnder(root);
  await fs.rm(root, { recursive: true, force: true });
  return { shredded, freedBytes };
}

async function bytesUnder(dir: string): Promise<number> {
  let n = 0;
  let entries: import('node:fs').Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) n += await bytesUnder(p);
    else if (e.isFile()) n += (await fs.stat(p)).blocks * 512;
  }
  return n;
}
