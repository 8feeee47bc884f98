// Real files on this machine used as fixture content: binaries, libraries and documents from /usr.
// Real bytes matter because random bytes neither compress nor dedup like a real disk does.
// Listing is deterministic (sorted by path) and skips symlinks, devices, sockets and anything we
// cannot stat; names are limited to characters debugfs command files take without quoting.

import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export interface HostFile {
  path: string;
  size: number;
  mode: number;
}

/** Path components we can hand to debugfs unquoted (and that look like ordinary file names). */
const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._+,@=~-]*$/;

export function isSafeName(name: string): boolean {
  return SAFE_NAME.test(name) && name.length <= 200;
}

const cache = new Map<string, HostFile[]>();

/** Regular files under `roots`, sorted by path. Same machine, same answer. */
export function listHostFiles(roots: readonly string[]): HostFile[] {
  const key = roots.join('\0');
  const hit = cache.get(key);
  if (hit) return hit;
  const files: HostFile[] = [];
  const walk = (dir: string): void => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return; // unreadable folder: skip it
    }
    for (const name of names) {
      if (!isSafeName(name)) continue;
      const p = join(dir, name);
      let st;
      try {
        st = lstatSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size > 0) files.push({ path: p, size: st.size, mode: st.mode & 0o7777 });
    }
  };
  for (const root of roots) walk(root);
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  cache.set(key, files);
  return files;
}

/** Files that are ELF programs or shared libraries, judged by name and mode (no reads). */
export function looksBinary(f: { path: string; mode: number }): boolean {
  return (f.mode & 0o111) !== 0 || /\.so(\.[\d.]+)?$/.test(f.path);
}

const TEXT_EXT = /\.(txt|md|rst|html?|xml|json|ya?ml|css|js|py|pl|pm|rb|tcl|sh|h|hpp|c|cc|conf|cfg|ini|desktop|service|csv|tex)$/i;

/** Documents a user might edit: text by extension or a Debian doc file. */
export function looksText(path: string): boolean {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return TEXT_EXT.test(base) || base === 'copyright' || /^(README|NEWS|CHANGES|AUTHORS|TODO)/.test(base);
}
