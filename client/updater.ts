// Client updates from the company's own server (issue 14; docs/updates.md). Owns: checking the signed
// feed (signature by the release key kept at login, serial never below one seen, a lower version only
// when an admin pinned it), downloading the release and checking its size and SHA-512 against the
// signed feed, installing it beside the running one (HOME/app/versions/V), a start-up test of it, and
// switching HOME/app/current to it in one rename; HOME/app/failed.json lists versions that did not start
// (bin/carryon.js's launcher adds to it and goes back when a switched-to version fails to load).
// Must not know: the CLI's output, HTTP details (api-client.ts).
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  CARRYON_VERSION, CarryonError, compareReleaseVersions, feedSignedBy, parseLatestYml, readReleaseTarball, type FeedStatement, type ReleasePackage,
} from '../src/index.js';
import type { ApiClient } from './api-client.js';
import type { LocalState } from './state.js';
import { appPaths, failedVersions, ownPackageRoot, recordFailed } from './launcher.js';

export { appPaths, failedVersions } from './launcher.js';

/** The version HOME/app/current points at (null: none; the installed package runs). */
export function switchedVersion(home: string): string | null {
  try {
    return path.basename(readlinkSync(appPaths(home).current));
  } catch {
    return null;
  }
}

export type UpdateStatus = 'up-to-date' | 'available' | 'updated' | 'rolled-back' | 'skipped-failed';

export interface UpdateResult {
  status: UpdateStatus;
  running: string;
  offered: string;
  serial: number;
  rollback: boolean;
  /** Where the new version was installed (updated / rolled-back). */
  installedAt: string | null;
  bytes: number;
}

const refused = (msg: string, data: Record<string, unknown> = {}): never => {
  throw new CarryonError('UPDATE_REFUSED', `${msg}; nothing was installed, carryon ${CARRYON_VERSION} keeps running`, { running: CARRYON_VERSION, ...data });
};

/**
 * What a verified feed may make this laptop do, by the rules that stop replays and downgrades: null when
 * allowed, else why not. `seen`: the highest serial this laptop verified before.
 */
export function feedPolicyProblem(s: FeedStatement, running: string, seen: number): string | null {
  if (s.serial < seen) return `the update feed is older (serial ${s.serial}) than one this laptop already verified (serial ${seen}): an old feed replayed, refused so no one can take this laptop back to an old version`;
  if (compareReleaseVersions(s.version, running) < 0 && !s.rollback) return `the feed offers carryon ${s.version}, older than ${running}, without an admin's pin: a downgrade is refused`;
  return null;
}

/** Fetch and verify the feed: signed by this server's release key, not older than one seen, no downgrade unless pinned. */
export async function verifiedFeed(state: LocalState, api: ApiClient): Promise<FeedStatement> {
  const key = state.releaseKey();
  if (!key) refused('this laptop holds no release key for its server (its login predates client updates, or the server has none): run `carryon login URL` again');
  const feed = parseLatestYml(await api.updateFeed());
  if (!feedSignedBy(feed, key!)) refused("the update feed is not signed by this server's release key (kept at login): it was altered, or the server's key changed (then log in again after checking with your admin)", { offered: feed.statement.version });
  const s = feed.statement;
  const seen = state.feedSerial();
  const problem = feedPolicyProblem(s, CARRYON_VERSION, seen);
  if (problem) refused(problem, { offered: s.version, serial: s.serial, seen });
  // A verified feed proves the server got this far: anything older offered later is a replay.
  state.setFeedSerial(s.serial);
  return s;
}

/** Check for an update; with `apply`, install and switch to it. */
export async function runUpdate(state: LocalState, api: ApiClient, home: string, opts: { apply: boolean }): Promise<UpdateResult> {
  const s = await verifiedFeed(state, api);
  const base = { running: CARRYON_VERSION, offered: s.version, serial: s.serial, rollback: s.rollback, installedAt: null, bytes: 0 };
  const cmp = compareReleaseVersions(s.version, CARRYON_VERSION);
  if (cmp === 0) {
    state.setFeedSerial(s.serial);
    return { ...base, status: 'up-to-date' };
  }
  if (failedVersions(home).some((f) => f.version === s.version)) {
    state.setFeedSerial(s.serial);
    return { ...base, status: 'skipped-failed' };
  }
  if (!opts.apply) return { ...base, status: 'available' };
  const bytes = await api.updateFile(s.file, s.size);
  if (bytes.length !== s.size) refused(`the release file is ${bytes.length} bytes where the signed feed says ${s.size}`, { offered: s.version });
  const sha = createHash('sha512').update(bytes).digest('base64');
  if (sha !== s.sha512) refused(`the release file's SHA-512 differs from the signed feed's: it was altered on the server or on the way`, { offered: s.version });
  let pkg: ReleasePackage;
  try {
    pkg = await readReleaseTarball(bytes);
  } catch (err) {
    return refused(`the release file is not a carryon release: ${(err as Error).message}`, { offered: s.version });
  }
  if (pkg.version !== s.version) refused(`the release file is carryon ${pkg.version}, the signed feed says ${s.version}`, { offered: s.version });
  const dir = install(home, pkg);
  try {
    startupTest(dir, s.version);
  } catch (err) {
    recordFailed(home, s.version, (err as Error).message);
    rmSync(dir, { recursive: true, force: true });
    state.setFeedSerial(s.serial);
    throw err;
  }
  switchTo(home, dir);
  state.setFeedSerial(s.serial);
  return { ...base, status: cmp < 0 ? 'rolled-back' : 'updated', installedAt: dir, bytes: bytes.length };
}

/**
 * Write the release into HOME/app/versions/V (through a temp folder renamed whole). Its dependencies:
 * its own node_modules when it bundles them, else the running install's, which must have every one at
 * the same range (UPDATE_FAILED naming the first that differs).
 */
function install(home: string, pkg: ReleasePackage): string {
  const p = appPaths(home);
  mkdirSync(p.versions, { recursive: true, mode: 0o700 });
  const dir = path.join(p.versions, pkg.version);
  const tmp = path.join(p.versions, `.${pkg.version}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  let modules: string | null = null;
  if (!pkg.bundled) {
    const root = ownPackageRoot();
    const own = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
    for (const [dep, range] of Object.entries(pkg.dependencies)) {
      if (own.dependencies?.[dep] !== range) {
        throw new CarryonError('UPDATE_FAILED', `carryon ${pkg.version} needs ${dep}@${range}, which this laptop's install (carryon ${CARRYON_VERSION}) does not have at that range: publish a tarball that bundles its dependencies (package.json bundleDependencies); still running ${CARRYON_VERSION}`, { offered: pkg.version, dependency: dep });
      }
    }
    modules = realpathSync(path.join(root, 'node_modules'));
  }
  try {
    mkdirSync(tmp, { mode: 0o755 });
    for (const e of pkg.entries) {
      const target = path.join(tmp, ...e.path.split('/'));
      if (e.type === 'directory') {
        mkdirSync(target, { recursive: true, mode: 0o755 });
        continue;
      }
      mkdirSync(path.dirname(target), { recursive: true, mode: 0o755 });
      writeFileSync(target, e.data, { mode: e.mode & 0o111 ? 0o755 : 0o644 });
    }
    if (modules) symlinkSync(modules, path.join(tmp, 'node_modules'), 'dir');
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw new CarryonError('UPDATE_FAILED', `could not install carryon ${pkg.version} in ${dir}: ${(err as Error).message}; still running ${CARRYON_VERSION}`, { offered: pkg.version });
  }
  return dir;
}

/** Run the installed version's `--version` (the launcher off): it must load and say its own version. */
function startupTest(dir: string, version: string): void {
  const bin = path.join(dir, 'bin', 'carryon.js');
  if (!existsSync(bin)) throw new CarryonError('UPDATE_FAILED', `carryon ${version} has no bin/carryon.js; still running ${CARRYON_VERSION}`, { offered: version });
  const r = spawnSync(process.execPath, [bin, '--version'], { env: { ...process.env, CARRYON_LAUNCHED: '1' }, encoding: 'utf8', timeout: 60_000 });
  const said = (r.stdout ?? '').trim();
  if (r.status !== 0 || said !== version) {
    const why = r.error ? r.error.message : r.status !== 0 ? `exit code ${r.status}${r.stderr ? `: ${r.stderr.trim().split('\n').slice(-1)[0]}` : ''}` : `it says it is ${JSON.stringify(said.slice(0, 40))}`;
    throw new CarryonError('UPDATE_FAILED', `carryon ${version} did not start (${why}); it was removed and will not be tried again, still running ${CARRYON_VERSION}`, { offered: version });
  }
}

/** HOME/app/current points at `dir` after one rename (a new symlink renamed over the old). */
function switchTo(home: string, dir: string): void {
  const p = appPaths(home);
  const tmp = `${p.current}.tmp-${process.pid}`;
  rmSync(tmp, { force: true });
  symlinkSync(path.relative(p.dir, dir), tmp, 'dir');
  renameSync(tmp, p.current);
  const fd = openSync(p.dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Go back to the installed package's own version (HOME/app/current removed); returns what it pointed at. */
export function revertToInstalled(home: string): string | null {
  const was = switchedVersion(home);
  rmSync(appPaths(home).current, { force: true });
  return was;
}

/** How often the agent looks at the feed. */
export const UPDATE_CHECK_MS = 60 * 60 * 1000;

/**
 * The agent's turn: when a check is due (hourly) and the laptop knows its server's release key, install
 * what the feed offers. Returns true when it switched versions (the agent then exits so that its service
 * manager starts the new version). Unreachable servers are not errors: the next round tries again.
 */
export async function agentUpdate(state: LocalState, api: ApiClient, log: (event: string, fields: Record<string, unknown>, human: string) => void, now = Date.now()): Promise<boolean> {
  if (!state.releaseKey()) return false;
  const last = state.updateCheckedAt();
  if (last !== null && now - Date.parse(last) < UPDATE_CHECK_MS) return false;
  try {
    const r = await runUpdate(state, api, state.home, { apply: true });
    state.setUpdateCheckedAt(new Date(now).toISOString());
    if (r.status === 'updated' || r.status === 'rolled-back') {
      log('update', { ...r }, `carryon ${r.status === 'updated' ? 'updated' : 'rolled back by an admin'}: ${r.running} -> ${r.offered} (signature and SHA-512 verified); the agent restarts to run it`);
      return true;
    }
    if (r.status === 'skipped-failed') log('update-skipped', { ...r }, `carryon ${r.offered} is offered but did not start here before: not installed again`);
    return false;
  } catch (err) {
    const e = err instanceof CarryonError ? err : new CarryonError('INTERNAL', String((err as Error)?.message ?? err));
    if (e.code === 'SERVER_UNREACHABLE') return false;
    state.setUpdateCheckedAt(new Date(now).toISOString());
    log(e.code === 'UPDATE_REFUSED' ? 'update-refused' : 'update-error', { error: e.toJSON() }, `carryon update: ${e.code}: ${e.message}`);
    return false;
  }
}
