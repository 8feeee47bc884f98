// The launcher bin/carryon.js runs first: when the agent has switched this laptop to an update
// (HOME/app/current, client/updater.ts), it runs that version; when that version does not load (a
// module missing, a syntax error, a native addon refused), it records it in HOME/app/failed.json, goes
// back to this package's own version (removing HOME/app/current) and says so. Node built-ins only: it
// must work whatever the rest of this package is.
import { mkdirSync, readFileSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export interface AppPaths {
  dir: string;
  versions: string;
  current: string;
  failed: string;
}

export function appPaths(home: string): AppPaths {
  const dir = path.join(home, 'app');
  return { dir, versions: path.join(dir, 'versions'), current: path.join(dir, 'current'), failed: path.join(dir, 'failed.json') };
}

/** The package folder this code runs from (the installed carryon, or an update under HOME/app/versions). */
export function ownPackageRoot(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
}

export interface FailedVersion {
  version: string;
  error: string;
  at: string;
}

export function failedVersions(home: string): FailedVersion[] {
  try {
    const v = JSON.parse(readFileSync(appPaths(home).failed, 'utf8')) as unknown;
    return Array.isArray(v) ? v.filter((x): x is FailedVersion => typeof (x as FailedVersion)?.version === 'string') : [];
  } catch {
    return [];
  }
}

export function recordFailed(home: string, version: string, error: string): void {
  const p = appPaths(home);
  mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  const list = failedVersions(home).filter((f) => f.version !== version);
  list.push({ version, error: error.slice(0, 500), at: new Date().toISOString() });
  const tmp = `${p.failed}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(list.slice(-20), null, 2)}\n`);
  renameSync(tmp, p.failed);
}

/** HOME as the CLI will take it: --home DIR, else $CARRYON_HOME, else ~/.carryon. */
export function homeOf(argv: readonly string[], env: NodeJS.ProcessEnv): string {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--') break;
    if (argv[i] === '--home' && argv[i + 1] !== undefined) return path.resolve(argv[i + 1]!);
    if (argv[i]!.startsWith('--home=')) return path.resolve(argv[i]!.slice('--home='.length));
  }
  return path.resolve(env.CARRYON_HOME ?? path.join(os.homedir(), '.carryon'));
}

/** Errors that mean "this version cannot load", as opposed to a command failing. */
function isLoadFailure(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return err instanceof SyntaxError || code === 'ERR_MODULE_NOT_FOUND' || code === 'ERR_DLOPEN_FAILED' || code === 'MODULE_NOT_FOUND' ||
    code === 'ERR_UNSUPPORTED_DIR_IMPORT' || code === 'ERR_PACKAGE_PATH_NOT_EXPORTED' || code === 'ERR_INVALID_PACKAGE_CONFIG';
}

export async function launch(): Promise<void> {
  if (process.env.CARRYON_LAUNCHED !== '1') {
    const home = homeOf(process.argv.slice(2), process.env);
    const current = appPaths(home).current;
    let target: string | null = null;
    try {
      target = realpathSync(current);
    } catch {
      target = null; // no update switched to (or its folder is gone): this package runs
    }
    if (target !== null && target !== realpathSync(ownPackageRoot())) {
      process.env.CARRYON_LAUNCHED = '1';
      try {
        await import(pathToFileURL(path.join(target, 'bin', 'carryon.js')).href);
        return;
      } catch (err) {
        if (!isLoadFailure(err)) throw err;
        const version = path.basename(target);
        recordFailed(home, version, String((err as Error)?.message ?? err));
        rmSync(current, { force: true });
        process.stderr.write(`carryon: the update to ${version} does not start (${String((err as Error)?.message ?? err).split('\n')[0]}); went back to the installed version, and ${version} will not be installed again\n`);
      }
    }
  }
  await import('./main.js');
}
