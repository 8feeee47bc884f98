// Client releases and the update feed (issue 14; docs/updates.md).
// Owns: the release signing key pair in DATA/release/ (release.key, Ed25519 PKCS#8 PEM, 0600; release.pub,
// SPKI base64, which laptops receive at login), published releases (client_releases, migration 15), the
// channel (client_release_channel: the serial and an admin's pin), the signed feed, and their audit rows
// (release.publish, release.pin, release.unpin). Must not know: HTTP, the CLI.
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createKeyFile, writeAtomic } from './key-files.js';
import path from 'node:path';
import {
  CarryonError, compareReleaseVersions, newReleaseKeyPair, parseReleaseVersion, readReleaseTarball, releasePublicKeyOf, signFeed,
  type SignedFeed, type Sql,
} from '../src/index.js';
import { appendAudit, type Actor } from './audit.js';

export interface ReleasePaths {
  dir: string;
  pub: string;
  key: string;
}

export function releasePaths(dataRoot: string): ReleasePaths {
  const dir = path.join(dataRoot, 'release');
  return { dir, pub: path.join(dir, 'release.pub'), key: path.join(dir, 'release.key') };
}

/**
 * Make the release key pair if the data folder has none (`init`, and `start` for folders made before
 * updates): release.key first (created exclusively, 0600), then release.pub derived from it. Several
 * instances must hold the same pair (copy DATA/release, as DATA/escrow). Returns the public key.
 */
export function ensureReleaseKeys(dataRoot: string): { publicKey: string; created: boolean } {
  const p = releasePaths(dataRoot);
  mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  chmodSync(p.dir, 0o700);
  const created = !existsSync(p.key) && createKeyFile(p.key, () => newReleaseKeyPair().privateKeyPem);
  chmodSync(p.key, 0o600);
  const publicKey = releasePublicKeyOf(readFileSync(p.key, 'utf8'));
  const current = existsSync(p.pub) ? readFileSync(p.pub, 'utf8').trim() : null;
  if (current !== publicKey) writeAtomic(p.pub, `${publicKey}\n`, 0o644);
  return { publicKey, created };
}

export interface ReleaseRow {
  version: string;
  file: string;
  size: number;
  sha512: string;
  publishedAt: string;
  publishedBy: string;
}

export interface ChannelState {
  serial: number;
  pinned: string | null;
  /** What laptops are told to run: the pin, else the newest release; null when none is published. */
  current: string | null;
  releases: ReleaseRow[];
}

const fileNameOf = (version: string): string => `carryon-${version}.tgz`;

export class ReleaseService {
  constructor(private readonly db: Sql, private readonly dataRoot: string | null) {}

  /** The release public key laptops verify against (null without a data folder or key). */
  publicKey(): string | null {
    if (!this.dataRoot) return null;
    const file = releasePaths(this.dataRoot).pub;
    return existsSync(file) ? readFileSync(file, 'utf8').trim() : null;
  }

  private privateKeyPem(): string {
    const file = this.dataRoot ? releasePaths(this.dataRoot).key : null;
    if (!file || !existsSync(file)) throw new CarryonError('RELEASE_KEY_INVALID', 'this server has no release signing key (DATA/release/release.key): run `carryon-server init` on its data folder, or copy DATA/release from the first instance');
    return readFileSync(file, 'utf8');
  }

  /** Store a client release (an npm pack tarball of carryon whose package.json says `version`). */
  async publish(bytes: Buffer, version: string, actor: Actor): Promise<ReleaseRow & { serial: number }> {
    parseReleaseVersion(version);
    const pkg = await readReleaseTarball(bytes);
    if (pkg.version !== version) {
      throw new CarryonError('RELEASE_INVALID', `the tarball is carryon ${pkg.version}, not ${version}: publish it with --version ${pkg.version} (or pack the version you meant)`, { version, tarball: pkg.version });
    }
    this.privateKeyPem(); // refused before anything is stored when the server cannot sign
    const sha512 = createHash('sha512').update(bytes).digest('base64');
    const now = new Date().toISOString();
    return this.db.transaction(async () => {
      const had = await this.db.get<{ sha512: string }>('SELECT sha512 FROM client_releases WHERE version = ?', [version]);
      if (had) {
        if (had.sha512 === sha512) throw new CarryonError('ALREADY_EXISTS', `carryon ${version} is already published, with these same bytes`, { version });
        throw new CarryonError('ALREADY_EXISTS', `carryon ${version} is already published with other bytes: a release is never replaced (laptops may hold it); publish a new version`, { version });
      }
      await this.db.run('INSERT INTO client_releases (version, file_name, size, sha512, bytes, published_at, published_by) VALUES (?, ?, ?, ?, ?, ?, ?)',
        [version, fileNameOf(version), bytes.length, sha512, bytes, now, actor.name]);
      const serial = await this.bump(null, false);
      await appendAudit(this.db, actor, 'release.publish', version, { size: bytes.length, sha512, serial });
      return { version, file: fileNameOf(version), size: bytes.length, sha512, publishedAt: now, publishedBy: actor.name, serial };
    });
  }

  /** Pin the version laptops should run (an older one rolls them back), or unpin (null: the newest). */
  async pin(version: string | null, actor: Actor): Promise<ChannelState> {
    if (version !== null) parseReleaseVersion(version);
    await this.db.transaction(async () => {
      if (version !== null && !(await this.db.get('SELECT 1 AS x FROM client_releases WHERE version = ?', [version]))) {
        throw new CarryonError('RELEASE_NOT_FOUND', `no release ${version} is published: \`carryon-server release list\` shows those that are`, { version });
      }
      const serial = await this.bump(version, true);
      await appendAudit(this.db, actor, version === null ? 'release.unpin' : 'release.pin', version, { serial });
    });
    return this.state();
  }

  /** Next serial; `pin` given: the channel's pin becomes it (null: none). */
  private async bump(pin: string | null, setPin: boolean): Promise<number> {
    const row = await this.db.get<{ serial: number | string }>('SELECT serial FROM client_release_channel WHERE id = 1');
    const serial = Number(row!.serial) + 1;
    if (setPin) await this.db.run('UPDATE client_release_channel SET serial = ?, pinned_version = ?, changed_at = ? WHERE id = 1', [serial, pin, new Date().toISOString()]);
    else await this.db.run('UPDATE client_release_channel SET serial = ?, changed_at = ? WHERE id = 1', [serial, new Date().toISOString()]);
    return serial;
  }

  async state(): Promise<ChannelState> {
    const ch = await this.db.get<{ serial: number | string; pinned_version: string | null }>('SELECT serial, pinned_version FROM client_release_channel WHERE id = 1');
    const rows = await this.db.all<{ version: string; file_name: string; size: number | string; sha512: string; published_at: string; published_by: string }>(
      'SELECT version, file_name, size, sha512, published_at, published_by FROM client_releases');
    const releases = rows.map((r) => ({ version: r.version, file: r.file_name, size: Number(r.size), sha512: r.sha512, publishedAt: r.published_at, publishedBy: r.published_by }))
      .sort((a, b) => compareReleaseVersions(b.version, a.version));
    const pinned = ch?.pinned_version ?? null;
    return { serial: Number(ch?.serial ?? 0), pinned, current: pinned ?? releases[0]?.version ?? null, releases };
  }

  /** The signed feed: what laptops should run now. RELEASE_NOT_FOUND when nothing is published. */
  async feed(): Promise<SignedFeed> {
    const st = await this.state();
    const r = st.releases.find((x) => x.version === st.current);
    if (!r) throw new CarryonError('RELEASE_NOT_FOUND', 'no client release is published on this server yet (`carryon-server release publish FILE --version V`)');
    return signFeed(this.privateKeyPem(), {
      version: r.version, file: r.file, sha512: r.sha512, size: r.size, releaseDate: r.publishedAt, serial: st.serial, rollback: st.pinned !== null,
    });
  }

  /** A release's bytes by its file name (the feed's url). */
  /**
   * A release's bytes by its file name (the feed's url). Releases never change, so the last one asked for
   * is kept, once its bytes match the SHA-512 it was published with: a fleet updating at once shares one
   * copy in memory instead of one per request (a release may be up to MAX_RELEASE_BYTES, and one user may
   * have 32 requests in flight). Bytes that no longer match are served as they are, uncached: the laptop
   * checks them against the signed feed and refuses them.
   */
  async file(name: string): Promise<Buffer> {
    const row = await this.db.get<{ sha512: string }>('SELECT sha512 FROM client_releases WHERE file_name = ?', [name]);
    if (!row) throw new CarryonError('RELEASE_NOT_FOUND', `no release file ${name.slice(0, 100)} on this server`, { file: name.slice(0, 100) });
    if (this.lastFile?.name === name && this.lastFile.sha512 === row.sha512) return this.lastFile.bytes;
    const bytes = Buffer.from((await this.db.get<{ bytes: Buffer }>('SELECT bytes FROM client_releases WHERE file_name = ?', [name]))!.bytes);
    if (createHash('sha512').update(bytes).digest('base64') === row.sha512) this.lastFile = { name, sha512: row.sha512, bytes };
    return bytes;
  }

  private lastFile: { name: string; sha512: string; bytes: Buffer } | null = null;
}
