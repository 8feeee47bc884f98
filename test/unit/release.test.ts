// src/release: the signed update feed (statement, Ed25519, latest.yml both ways), version order, the
// release tarball reader, and the laptop's replay/downgrade rule (client/updater.ts feedPolicyProblem).
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { load } from 'js-yaml';
import { describe, expect, it } from 'vitest';
import {
  CarryonError, compareReleaseVersions, encodeLatestYml, feedSignedBy, newReleaseKeyPair, parseLatestYml, parseReleaseVersion, readReleaseTarball,
  releasePublicKeyOf, signFeed, type FeedStatement,
} from '../../src/index.js';
import { feedPolicyProblem } from '../../client/updater.js';

const SHA = createHash('sha512').update('release bytes').digest('base64');
const STMT: FeedStatement = { version: '1.4.0', file: 'carryon-1.4.0.tgz', sha512: SHA, size: 1234, releaseDate: '2026-12-03T08:00:00.000Z', serial: 7, rollback: false };

async function tgz(entries: Array<{ name: string; data?: string; type?: 'file' | 'directory' | 'symlink'; linkname?: string }>): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.type === 'symlink') pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname ?? '/etc/passwd' });
    else if (e.type === 'directory') pack.entry({ name: e.name, type: 'directory' });
    else pack.entry({ name: e.name }, Buffer.from(e.data ?? ''));
  }
  pack.finalize();
  const parts: Buffer[] = [];
  for await (const c of pack) parts.push(c as Buffer);
  return gzipSync(Buffer.concat(parts));
}

const code = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'none';
  } catch (err) {
    return err instanceof CarryonError ? `${err.code}: ${err.message}` : String(err);
  }
};

describe('semantic versions', () => {
  it('orders as semver.org says, prereleases below their release', () => {
    const sorted = ['1.0.0-alpha', '1.0.0-alpha.1', '1.0.0-alpha.beta', '1.0.0-beta', '1.0.0-beta.2', '1.0.0-beta.11', '1.0.0-rc.1', '1.0.0', '1.0.1', '1.2.0', '1.10.0', '2.0.0'];
    const shuffled = [...sorted].reverse();
    expect(shuffled.sort(compareReleaseVersions)).toEqual(sorted);
    expect(compareReleaseVersions('0.1.0', '0.1.0')).toBe(0);
  });
  it('refuses what is not MAJOR.MINOR.PATCH', () => {
    for (const v of ['1.0', '01.0.0', '1.0.0+build', 'v1.0.0', '1.0.0-', '', '1.0.0\n']) expect(() => parseReleaseVersion(v)).toThrow(/not a release version/);
  });
});

describe('the signed feed', () => {
  const keys = newReleaseKeyPair();
  it('verifies with the right key, and fails with another key or any field changed', () => {
    const feed = signFeed(keys.privateKeyPem, STMT);
    expect(releasePublicKeyOf(keys.privateKeyPem)).toBe(keys.publicKey);
    expect(feedSignedBy(feed, keys.publicKey)).toBe(true);
    expect(feedSignedBy(feed, newReleaseKeyPair().publicKey)).toBe(false);
    const changes: Array<Partial<FeedStatement>> = [{ version: '1.4.1' }, { file: 'carryon-1.4.1.tgz' }, { sha512: createHash('sha512').update('x').digest('base64') }, { size: 1235 }, { releaseDate: '2026-12-04T08:00:00.000Z' }, { serial: 8 }, { rollback: true }];
    for (const c of changes) expect(feedSignedBy({ statement: { ...STMT, ...c }, signature: feed.signature }, keys.publicKey)).toBe(false);
    expect(feedSignedBy({ statement: STMT, signature: 'AAAA' }, keys.publicKey)).toBe(false);
  });

  it("writes latest.yml that electron-updater's YAML reader takes as its UpdateInfo, and reads it back exactly", () => {
    const feed = signFeed(keys.privateKeyPem, { ...STMT, version: '1.10.0' });
    const text = encodeLatestYml(feed);
    const info = load(text) as Record<string, any>;
    expect(info.version).toBe('1.10.0'); // a string, not the number 1.1
    expect(info.files).toEqual([{ url: 'carryon-1.4.0.tgz', sha512: SHA, size: 1234 }]);
    expect(info.path).toBe('carryon-1.4.0.tgz');
    expect(info.releaseDate).toBe('2026-12-03T08:00:00.000Z');
    expect(parseLatestYml(text)).toEqual(feed);
  });

  it('refuses a latest.yml it did not write, naming the problem', () => {
    const text = encodeLatestYml(signFeed(keys.privateKeyPem, STMT));
    const cases: Array<[string, RegExp]> = [
      [text.replace(/^path: .*$/m, "path: 'other.tgz'"), /path and sha512 differ/],
      [text.replace(/^carryonSerial: .*\n/m, ''), /carryonSerial is missing/],
      [text.replace(/^version: .*$/m, "version: '1.0'"), /not a release version/],
      [text + "version: '9.9.9'\n", /given twice/],
      [text.replace(/'carryon-1\.4\.0\.tgz'/g, "'../../etc/passwd'"), /plain name/],
      [text.replace(/^files:\n/m, 'files:\n  - url: a.tgz\n    sha512: x\n    size: 1\n'), /more than one file/],
      [text + '!!python/object: x\n', /not in the form carryon writes/],
      ['x'.repeat(70_000), /larger than/],
    ];
    for (const [t, re] of cases) expect(() => parseLatestYml(t)).toThrow(re);
  });
});

describe('what a laptop accepts from a verified feed', () => {
  it('refuses an older serial (a replay) and a lower version unless an admin pinned it', () => {
    expect(feedPolicyProblem(STMT, '1.3.0', 7)).toBeNull();
    expect(feedPolicyProblem(STMT, '1.3.0', 8)).toMatch(/older \(serial 7\) than one this laptop already verified \(serial 8\)/);
    expect(feedPolicyProblem(STMT, '1.5.0', 0)).toMatch(/older than 1\.5\.0, without an admin's pin: a downgrade is refused/);
    expect(feedPolicyProblem({ ...STMT, rollback: true }, '1.5.0', 7)).toBeNull();
  });
});

describe('release tarballs', () => {
  const pj = (o: Record<string, unknown>): string => JSON.stringify({ name: 'carryon', version: '1.4.0', ...o });
  it('reads an npm pack tarball', async () => {
    const pkg = await readReleaseTarball(await tgz([{ name: 'package/package.json', data: pj({ dependencies: { commander: '^14.0.3' } }) }, { name: 'package/bin/carryon.js', data: 'x' }]));
    expect(pkg).toMatchObject({ name: 'carryon', version: '1.4.0', dependencies: { commander: '^14.0.3' }, bundled: false });
    expect(pkg.entries.map((e) => e.path)).toEqual(['package.json', 'bin/carryon.js']);
  });
  it('refuses links, paths leaving package/, other packages, and what is not gzip', async () => {
    expect(await code(readReleaseTarball(Buffer.from('hello')))).toMatch(/^RELEASE_INVALID: .*not gzip/);
    expect(await code(readReleaseTarball(await tgz([{ name: 'package/package.json', data: pj({}) }, { name: 'package/x', type: 'symlink' }])))).toMatch(/symlink/);
    expect(await code(readReleaseTarball(await tgz([{ name: 'package/package.json', data: pj({}) }, { name: 'package/../../x', data: 'x' }])))).toMatch(/\.\. part/);
    expect(await code(readReleaseTarball(await tgz([{ name: 'package/package.json', data: pj({}) }, { name: 'other/x', data: 'x' }])))).toMatch(/outside package/);
    expect(await code(readReleaseTarball(await tgz([{ name: 'package/package.json', data: pj({ name: 'evil' }) }])))).toMatch(/"evil", not carryon/);
    expect(await code(readReleaseTarball(await tgz([{ name: 'package/readme', data: 'x' }])))).toMatch(/no package\/package.json/);
  });
});
