// KeyRing: the laptop's keys for encryption at rest (docs/encryption.md). Owns: the passphrase's
// KDF parameters, the key-encryption key (KEK) while unlocked (in memory only), each local copy's
// data key wrapped by the KEK (state.db `copy_keys`), the sealed device token, and shredding a copy's
// key. Where the passphrase comes from, in order: the running agent (`carryon unlock` gave it the
// KEK), --passphrase-file, $CARRYON_PASSPHRASE, else a prompt on a terminal.
import type Database from 'better-sqlite3';
import { readFileSync, statSync } from 'node:fs';
import type tty from 'node:tty';
import {
  CarryonError, decodeRecoveryCode, DEFAULT_KDF_LOG_N, deriveKek, keyCheck, newDataKey, newKdfParams, parseJson, seal, tryOpen, type KdfParams,
} from '../src/index.js';
import { askAgentForKek } from './key-agent.js';
import { promptHidden } from './token-input.js';

export const PASSPHRASE_ENV = 'CARRYON_PASSPHRASE';
/** log2 of scrypt's N for a keyring made now. Only for tests and slow machines: the default is 2^17. */
export const KDF_COST_ENV = 'CARRYON_KDF_LOG_N';
const CHECK_TEXT = 'carryon keyring v1';
const TOKEN_PREFIX = 'sealed:';

export interface PassphraseSources {
  passphraseFile?: string;
  env: NodeJS.ProcessEnv;
  stdin: NodeJS.ReadStream;
  out: NodeJS.WritableStream;
}

export function defaultSources(passphraseFile?: string): PassphraseSources {
  return { passphraseFile, env: process.env, stdin: process.stdin, out: process.stderr };
}

interface StoredKeyring extends KdfParams {
  /** seal(KEK, CHECK_TEXT): tells a wrong passphrase from a right one without touching any data key. */
  check: string;
}

const LOCKED_HOW = 'run `carryon unlock` (the agent keeps the key for this session), or give the passphrase with --passphrase-file FILE or $CARRYON_PASSPHRASE';

export class KeyRing {
  private kek: Buffer | null = null;
  private readonly keys = new Map<string, Buffer>();

  constructor(private readonly db: Database.Database, private readonly home: string) {}

  private get stored(): StoredKeyring | null {
    const r = this.db.prepare("SELECT value FROM config WHERE key = 'keyring'").get() as { value: string } | undefined;
    return r ? (parseJson(Buffer.from(r.value), 'the keyring') as StoredKeyring) : null;
  }

  exists(): boolean {
    return this.stored !== null;
  }

  isUnlocked(): boolean {
    return this.kek !== null;
  }

  /** The KEK, for handing to the agent. */
  currentKek(): Buffer {
    if (!this.kek) throw new CarryonError('KEYS_LOCKED', `this laptop's keys are locked: ${LOCKED_HOW}`);
    return this.kek;
  }

  /**
   * Unlock without asking when the agent holds the key; otherwise from the file, the environment or a
   * prompt. `interactive: false` never prompts (a command that may work locked). Returns how, or null.
   */
  async unlock(src: PassphraseSources, interactive = true): Promise<'agent' | 'file' | 'env' | 'prompt' | null> {
    const st = this.stored;
    if (!st) return null;
    if (this.kek) return 'agent';
    const fromAgent = await askAgentForKek(this.home);
    if (fromAgent && this.opens(st, fromAgent)) {
      this.kek = fromAgent;
      return 'agent';
    }
    const given = readPassphrase(src);
    if (given) {
      await this.tryPassphrase(st, given.passphrase);
      return given.from;
    }
    if (!interactive || !src.stdin.isTTY) return null;
    await this.tryPassphrase(st, await promptHidden(src.stdin as tty.ReadStream, src.out, 'passphrase for this laptop\'s encrypted desktops (not shown): ', 'passphrase'));
    return 'prompt';
  }

  private async tryPassphrase(st: StoredKeyring, passphrase: string): Promise<void> {
    const kek = await deriveKek(passphrase, st);
    if (!this.opens(st, kek)) {
      throw new CarryonError('WRONG_PASSPHRASE', 'that passphrase does not open this laptop\'s keys: try again (Caps Lock?); if it is forgotten, an admin can read you a recovery code ' +
        'for each desktop (`carryon-server admin recovery-code DESKTOP`), then `carryon unlock DESKTOP --recovery-code CODE` sets a new passphrase');
    }
    this.kek = kek;
  }

  private opens(st: StoredKeyring, kek: Buffer): boolean {
    return tryOpen(kek, Buffer.from(st.check, 'base64'), 'keyring')?.toString() === CHECK_TEXT;
  }

  /** Make the keyring (a new passphrase, asked twice on a terminal) unless there is one; unlock it. */
  async ensure(src: PassphraseSources, why: string): Promise<void> {
    if (this.exists()) {
      if (!this.kek && !(await this.unlock(src))) throw new CarryonError('KEYS_LOCKED', `${why}, and this laptop's keys are locked: ${LOCKED_HOW}`);
      return;
    }
    let passphrase: string;
    const given = readPassphrase(src);
    if (given) passphrase = given.passphrase;
    else if (src.stdin.isTTY) {
      src.out.write(`${why}: choose a passphrase for this laptop's encrypted desktops. It is asked once per session (\`carryon unlock\`); an admin can recover a desktop if it is forgotten.\n`);
      passphrase = await promptHidden(src.stdin as tty.ReadStream, src.out, 'new passphrase (not shown): ', 'passphrase');
      const again = await promptHidden(src.stdin as tty.ReadStream, src.out, 'the same again: ', 'passphrase');
      if (again !== passphrase) throw new CarryonError('INVALID_ARGUMENT', 'the two passphrases differ: nothing was changed; run the command again');
    } else {
      throw new CarryonError('KEYS_LOCKED', `${why}: this laptop needs a passphrase for it, and there is no terminal to ask on: give one with --passphrase-file FILE or $${PASSPHRASE_ENV}`);
    }
    if (passphrase.length < 8) throw new CarryonError('INVALID_ARGUMENT', 'a passphrase needs at least 8 characters: nothing was changed');
    await this.create(passphrase);
  }

  private async create(passphrase: string): Promise<void> {
    const logN = process.env[KDF_COST_ENV] ? Number(process.env[KDF_COST_ENV]) : DEFAULT_KDF_LOG_N;
    const params = newKdfParams(logN);
    const kek = await deriveKek(passphrase, params);
    const st: StoredKeyring = { ...params, check: seal(kek, Buffer.from(CHECK_TEXT), 'keyring').toString('base64') };
    const token = (this.db.prepare("SELECT value FROM config WHERE key = 'token'").get() as { value: string } | undefined)?.value;
    this.db.transaction(() => {
      this.db.prepare("INSERT INTO config (key, value) VALUES ('keyring', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(JSON.stringify(st));
      // The token was in clear until now (no encrypted desktop yet): from now on only sealed.
      if (token && !token.startsWith(TOKEN_PREFIX)) this.db.prepare("UPDATE config SET value = ? WHERE key = 'token'").run(TOKEN_PREFIX + seal(kek, Buffer.from(token), 'token').toString('base64'));
    })();
    this.kek = kek;
    wipeFreePages(this.db);
  }

  /** The token as stored: sealed when the laptop has a keyring. */
  storedToken(token: string): string {
    if (!this.exists()) return token;
    return TOKEN_PREFIX + seal(this.currentKek(), Buffer.from(token), 'token').toString('base64');
  }

  openToken(stored: string): string {
    if (!stored.startsWith(TOKEN_PREFIX)) return stored;
    if (!this.kek) throw new CarryonError('KEYS_LOCKED', `the server token on this laptop is encrypted and the keys are locked: ${LOCKED_HOW}`);
    const t = tryOpen(this.kek, Buffer.from(stored.slice(TOKEN_PREFIX.length), 'base64'), 'token');
    if (!t) throw new CarryonError('NOT_LOGGED_IN', 'the server token on this laptop was sealed under a passphrase that was reset: run `carryon login URL` again');
    return t.toString();
  }

  /** A copy's data key, or null for a copy kept in plaintext. */
  dataKey(desktop: string): Buffer | null {
    const known = this.keys.get(desktop);
    if (known) return known;
    const r = this.db.prepare('SELECT wrapped FROM copy_keys WHERE desktop = ?').get(desktop) as { wrapped: Buffer } | undefined;
    if (!r) return null;
    if (!this.kek) throw new CarryonError('KEYS_LOCKED', `${desktop} is encrypted on this laptop and the keys are locked: ${LOCKED_HOW}`, { desktop });
    const key = tryOpen(this.kek, r.wrapped, `copy:${desktop}`);
    if (!key) {
      throw new CarryonError('WRONG_PASSPHRASE', `the key of ${desktop} does not open with this passphrase (it was set before a passphrase reset): ask an admin for its recovery code and run \`carryon unlock ${desktop} --recovery-code CODE\``, { desktop });
    }
    this.keys.set(desktop, key);
    return key;
  }

  isEncrypted(desktop: string): boolean {
    return this.db.prepare('SELECT 1 FROM copy_keys WHERE desktop = ?').get(desktop) !== undefined;
  }

  /** A new data key for a copy made now (the keyring must be unlocked). */
  createDataKey(desktop: string): Buffer {
    const key = newDataKey();
    this.db.prepare('INSERT INTO copy_keys (desktop, wrapped, key_check, created_at) VALUES (?, ?, ?, ?)').run(desktop, seal(this.currentKek(), key, `copy:${desktop}`), keyCheck(key), new Date().toISOString());
    this.keys.set(desktop, key);
    return key;
  }

  /**
   * Crypto-shredding: forget a copy's key for good. With secure_delete the row's bytes are zeroed in the
   * database file, and the WAL (which held them too) is checkpointed and truncated.
   */
  shred(desktop: string): boolean {
    this.keys.delete(desktop);
    const n = this.db.prepare('DELETE FROM copy_keys WHERE desktop = ?').run(desktop).changes;
    wipeFreePages(this.db);
    return n > 0;
  }

  /**
   * `carryon unlock NAME --recovery-code CODE`: the key an admin read out, checked against the copy's
   * key check, then wrapped under the passphrase (a new keyring when the old passphrase is forgotten).
   */
  async recover(desktop: string, code: string, src: PassphraseSources): Promise<{ newPassphrase: boolean }> {
    const key = decodeRecoveryCode(code);
    const r = this.db.prepare('SELECT key_check FROM copy_keys WHERE desktop = ?').get(desktop) as { key_check: string } | undefined;
    if (!r) throw new CarryonError('RECOVERY_CODE_INVALID', `${desktop} has no encrypted copy on this laptop: nothing to recover`, { desktop });
    if (keyCheck(key) !== r.key_check) {
      throw new CarryonError('RECOVERY_CODE_INVALID', `that recovery code is for another copy (key check ${keyCheck(key)}, this copy's is ${r.key_check}): ask the admin for the code of ${desktop} on this laptop`, { desktop });
    }
    let fresh = false;
    if (!this.kek) {
      const st = this.stored;
      // Never ask for the old passphrase here: the user came with a code because it is forgotten.
      const tried = st ? await this.unlock(src, false).catch(() => null) : null;
      if (!tried) {
        // Forgotten: a new keyring. Other copies wrapped under the old one need their own codes; the old
        // keyring is kept aside (not deleted), so those wraps stay openable should the passphrase come back.
        this.db.prepare("UPDATE config SET key = ? WHERE key = 'keyring'").run(`keyring-before-${new Date().toISOString()}`);
        await this.ensure(src, `recovering ${desktop}`);
        fresh = true;
      }
    }
    this.db.prepare('UPDATE copy_keys SET wrapped = ? WHERE desktop = ?').run(seal(this.currentKek(), key, `copy:${desktop}`), desktop);
    wipeFreePages(this.db);
    this.keys.set(desktop, key);
    return { newPassphrase: fresh };
  }
}

/** Freed pages are zeroed (secure_delete) and the WAL, which holds old page images, is emptied. */
function wipeFreePages(db: Database.Database): void {
  db.pragma('wal_checkpoint(TRUNCATE)');
}

function readPassphrase(src: PassphraseSources): { passphrase: string; from: 'file' | 'env' } | null {
  if (src.passphraseFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(src.passphraseFile === '-' ? 0 : src.passphraseFile, 'utf8');
      if (src.passphraseFile !== '-' && statSync(src.passphraseFile).mode & 0o044) {
        src.out.write(`carryon: warning: ${src.passphraseFile} is readable by other users: run \`chmod 600 ${src.passphraseFile}\`\n`);
      }
    } catch (err) {
      throw new CarryonError('INVALID_ARGUMENT', `cannot read the passphrase file ${src.passphraseFile}: ${(err as Error).message}`);
    }
    return { passphrase: text.split(/\r?\n/, 1)[0] ?? '', from: 'file' };
  }
  const env = src.env[PASSPHRASE_ENV];
  if (env !== undefined && env !== '') return { passphrase: env, from: 'env' };
  return null;
}
