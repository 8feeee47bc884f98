// version: the carryon release this code is, read once from package.json (recorded with each schema
// migration, shown by --version). Must not know anything else.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

function read(): string {
  // src/version/index.ts runs from dist/src/version/index.js: package.json is three folders up.
  for (const up of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), up), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'carryon' && typeof pkg.version === 'string') return pkg.version;
    } catch { /* next candidate */ }
  }
  return 'unknown';
}

export const CARRYON_VERSION = read();
