// release: the client update feed (issue 14): what a feed says, how it is signed, and how it is written
// and read as electron-updater's generic-provider `latest.yml`, so an Electron shell of the same app could
// use electron-updater unchanged. Owns: the signed statement (version, file, SHA-512, size, date, serial,
// rollback), Ed25519 signing and verification, latest.yml's text both ways, semantic-version order.
// Must not know: HTTP, storage, where a release is installed.
// Terms: the *serial* grows with every change an admin makes to the feed (publish, pin, unpin); a
// laptop refuses a feed whose serial is below one it has already seen, so an old, validly signed feed
// replayed later cannot take it back to an old version. A *rollback* feed is one an admin pinned: only
// then may the version go down.
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { CarryonError } from '../errors/index.js';

/** What a feed says. Everything in it is signed. */
export interface FeedStatement {
  version: string;
  /** The file's name, relative to the feed's folder (electron-updater's `url`). */
  file: string;
  /** SHA-512 of the file, base64 (as electron-updater's latest.yml has it). */
  sha512: string;
  size: number;
  /** When the release was published, ISO 8601. */
  releaseDate: string;
  serial: number;
  /** True when an admin pinned this version: laptops then move to it even when it is older. */
  rollback: boolean;
}

export interface SignedFeed {
  statement: FeedStatement;
  /** Ed25519 signature of feedStatementBytes(statement), base64. */
  signature: string;
}

/** latest.yml is small: anything larger is not ours. */
export const MAX_FEED_BYTES = 64 * 1024;
const FILE_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const SHA512_RE = /^[A-Za-z0-9+/]{86}==$/;
const VERSION_RE = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$/;

/** A semantic version (MAJOR.MINOR.PATCH[-PRERELEASE]); INVALID_ARGUMENT otherwise. Build metadata is refused: it would not order. */
export function parseReleaseVersion(v: string): string {
  if (typeof v !== 'string' || v.length > 64 || !VERSION_RE.test(v)) {
    throw new CarryonError('INVALID_ARGUMENT', `${JSON.stringify(String(v).slice(0, 80))} is not a release version: give MAJOR.MINOR.PATCH, optionally -PRERELEASE (like 1.4.0 or 1.5.0-rc.1)`, { version: String(v).slice(0, 80) });
  }
  return v;
}

/** Semantic-version precedence (semver.org, 11): negative when a < b, 0 when equal, positive when a > b. */
export function compareReleaseVersions(a: string, b: string): number {
  const pa = VERSION_RE.exec(parseReleaseVersion(a))!;
  const pb = VERSION_RE.exec(parseReleaseVersion(b))!;
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return d;
  }
  const ra = pa[4];
  const rb = pb[4];
  if (ra === undefined || rb === undefined) return (ra === undefined ? 1 : 0) - (rb === undefined ? 1 : 0);
  const xa = ra.split('.');
  const xb = rb.split('.');
  for (let i = 0; i < Math.min(xa.length, xb.length); i++) {
    const na = /^\d+$/.test(xa[i]!);
    const nb = /^\d+$/.test(xb[i]!);
    if (na && nb) {
      const d = Number(xa[i]) - Number(xb[i]);
      if (d !== 0) return d;
    } else if (na !== nb) {
      return na ? -1 : 1;
    } else if (xa[i] !== xb[i]) {
      return xa[i]! < xb[i]! ? -1 : 1;
    }
  }
  return xa.length - xb.length;
}

function checkStatement(s: FeedStatement): FeedStatement {
  const bad = (what: string): never => {
    throw new CarryonError('RELEASE_INVALID', `the update feed is malformed: ${what}`);
  };
  try {
    parseReleaseVersion(s.version);
  } catch {
    bad(`version ${JSON.stringify(String(s.version).slice(0, 80))} is not a release version`);
  }
  if (typeof s.file !== 'string' || !FILE_RE.test(s.file)) bad('the file name must be a plain name (letters, digits, . _ -)');
  if (typeof s.sha512 !== 'string' || !SHA512_RE.test(s.sha512)) bad('sha512 must be 64 bytes in base64');
  if (!Number.isSafeInteger(s.size) || s.size <= 0) bad('size must be a positive integer');
  if (typeof s.releaseDate !== 'string' || Number.isNaN(Date.parse(s.releaseDate))) bad('releaseDate must be an ISO 8601 date');
  if (!Number.isSafeInteger(s.serial) || s.serial < 1) bad('the serial must be a positive integer');
  if (typeof s.rollback !== 'boolean') bad('rollback must be true or false');
  return s;
}

/** The bytes an Ed25519 signature covers: a tag, then every field in a fixed order (JSON, no whitespace). */
export function feedStatementBytes(s: FeedStatement): Buffer {
  checkStatement(s);
  return Buffer.from(JSON.stringify(['carryon-feed-v1', s.version, s.file, s.sha512, s.size, s.releaseDate, s.serial, s.rollback]), 'utf8');
}

/** A new Ed25519 key pair: the private key as PKCS#8 PEM, the public key as SPKI DER in base64 (one line, as laptops keep it). */
export function newReleaseKeyPair(): { privateKeyPem: string; publicKey: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), publicKey: publicKey.export({ type: 'spki', format: 'der' }).toString('base64') };
}

/** The release public key (SPKI base64) of a PKCS#8 PEM private key; RELEASE_KEY_INVALID when it is not Ed25519. */
export function releasePublicKeyOf(privateKeyPem: string): string {
  return publicKeyOf(privateKeyFrom(privateKeyPem));
}

function privateKeyFrom(pem: string): KeyObject {
  try {
    const k = createPrivateKey(pem);
    if (k.asymmetricKeyType === 'ed25519') return k;
  } catch { /* below */ }
  throw new CarryonError('RELEASE_KEY_INVALID', 'the release signing key is not an Ed25519 private key (PKCS#8 PEM)');
}

function publicKeyOf(k: KeyObject): string {
  return createPublicKey(k).export({ type: 'spki', format: 'der' }).toString('base64');
}

/** A release public key as laptops keep it (SPKI DER, base64); RELEASE_KEY_INVALID otherwise. */
export function parseReleasePublicKey(spkiBase64: string): KeyObject {
  try {
    const k = createPublicKey({ key: Buffer.from(spkiBase64, 'base64'), format: 'der', type: 'spki' });
    if (k.asymmetricKeyType === 'ed25519') return k;
  } catch { /* below */ }
  throw new CarryonError('RELEASE_KEY_INVALID', 'the release public key is not an Ed25519 public key (SPKI, base64)');
}

export function signFeed(privateKeyPem: string, statement: FeedStatement): SignedFeed {
  const signature = sign(null, feedStatementBytes(statement), privateKeyFrom(privateKeyPem)).toString('base64');
  return { statement, signature };
}

/** True when `feed` is signed by the key; false for any other signature (never throws on a bad one). */
export function feedSignedBy(feed: SignedFeed, publicKey: string): boolean {
  const key = parseReleasePublicKey(publicKey);
  let sig: Buffer;
  try {
    sig = Buffer.from(feed.signature, 'base64');
  } catch {
    return false;
  }
  if (sig.length !== 64) return false;
  return verify(null, feedStatementBytes(feed.statement), key, sig);
}

const yamlString = (s: string): string => `'${s.replace(/'/g, "''")}'`;

/**
 * latest.yml in electron-updater's generic-provider format (`version`, `files` with url, sha512 and
 * size, `path`, `sha512`, `releaseDate`), plus the fields only carryon reads (`carryonSerial`,
 * `carryonRollback`, `carryonSignature`): electron-updater keeps unknown fields and ignores them.
 */
export function encodeLatestYml(feed: SignedFeed): string {
  const s = checkStatement(feed.statement);
  return [
    `version: ${yamlString(s.version)}`,
    'files:',
    `  - url: ${yamlString(s.file)}`,
    `    sha512: ${yamlString(s.sha512)}`,
    `    size: ${s.size}`,
    `path: ${yamlString(s.file)}`,
    `sha512: ${yamlString(s.sha512)}`,
    `releaseDate: ${yamlString(s.releaseDate)}`,
    `carryonSerial: ${s.serial}`,
    `carryonRollback: ${s.rollback}`,
    `carryonSignature: ${yamlString(feed.signature)}`,
    '',
  ].join('\n');
}

/**
 * Reads latest.yml as encodeLatestYml writes it (the one form carryon's server serves): RELEASE_INVALID
 * for anything else. Not a YAML parser: a strict reader of that form, so nothing a feed says is read
 * two ways. Does not verify the signature (feedSignedBy does).
 */
export function parseLatestYml(text: string | Uint8Array): SignedFeed {
  const bad = (what: string): never => {
    throw new CarryonError('RELEASE_INVALID', `the update feed (latest.yml) is malformed: ${what}`);
  };
  if (text.length > MAX_FEED_BYTES) bad(`larger than ${MAX_FEED_BYTES} bytes`);
  const str = typeof text === 'string' ? text : Buffer.from(text).toString('utf8');
  const top = new Map<string, string>();
  const file = new Map<string, string>();
  let inFiles = false;
  let items = 0;
  const scalar = (raw: string, where: string): string => {
    if (raw.startsWith("'")) {
      if (!/^'(?:[^']|'')*'$/.test(raw)) bad(`${where}: an unterminated quoted string`);
      return raw.slice(1, -1).replace(/''/g, "'");
    }
    if (!/^[A-Za-z0-9._:+/=-]*$/.test(raw)) bad(`${where}: an unquoted value with characters this feed never writes`);
    return raw;
  };
  for (const [i, line] of str.split(/\r?\n/).entries()) {
    if (line.trim() === '' || line.trimStart().startsWith('#')) continue;
    const where = `line ${i + 1}`;
    let m = /^([A-Za-z][A-Za-z0-9]*):(?: (.*))?$/.exec(line);
    if (m) {
      inFiles = m[1] === 'files' && m[2] === undefined;
      if (!inFiles) {
        if (m[2] === undefined) bad(`${where}: ${m[1]} has no value`);
        if (top.has(m[1]!)) bad(`${where}: ${m[1]} is given twice`);
        top.set(m[1]!, scalar(m[2]!.trim(), where));
      }
      continue;
    }
    m = /^ {2}- ([A-Za-z][A-Za-z0-9]*): (.*)$/.exec(line) ?? /^ {4}([A-Za-z][A-Za-z0-9]*): (.*)$/.exec(line);
    if (m && inFiles) {
      if (line.startsWith('  - ')) items++;
      if (items > 1) bad(`${where}: more than one file (carryon publishes one per release)`);
      if (file.has(m[1]!)) bad(`${where}: ${m[1]} is given twice`);
      file.set(m[1]!, scalar(m[2]!.trim(), where));
      continue;
    }
    bad(`${where} is not in the form carryon writes`);
  }
  const need = (map: Map<string, string>, key: string, where: string): string => map.get(key) ?? bad(`${where}${key} is missing`);
  const int = (v: string, key: string): number => (/^\d{1,15}$/.test(v) ? Number(v) : bad(`${key} must be an integer`));
  const url = need(file, 'url', 'files[0].');
  const sha = need(file, 'sha512', 'files[0].');
  if (need(top, 'path', '') !== url || need(top, 'sha512', '') !== sha) bad('path and sha512 differ from files[0]');
  const rollback = need(top, 'carryonRollback', '');
  if (rollback !== 'true' && rollback !== 'false') bad('carryonRollback must be true or false');
  const statement = checkStatement({
    version: need(top, 'version', ''),
    file: url,
    sha512: sha,
    size: int(need(file, 'size', 'files[0].'), 'size'),
    releaseDate: need(top, 'releaseDate', ''),
    serial: int(need(top, 'carryonSerial', ''), 'carryonSerial'),
    rollback: rollback === 'true',
  });
  return { statement, signature: need(top, 'carryonSignature', '') };
}

export * from './tarball.js';
