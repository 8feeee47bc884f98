// Escrow of the laptops' data keys (encryption at rest, issue 10; docs/security.md#escrow).
// Owns: the server's X25519 escrow key pair in DATA/escrow/ (escrow.pub, SPKI base64; escrow.key, PEM,
// which an admin may move offline), whether a checkout must be encrypted (decided once, from the
// desktop's policy, when it is first asked), deposits of sealed data keys (checkout_escrows, migration
// 11), the ESCROW_MISSING gate in front of desktop data, and recovery codes for admins, with their
// audit rows (escrow.deposit, escrow.reveal). Must not know: HTTP, the CLI.
// Terms: a *sealed* key is a copy's data key sealed to escrow.pub (src/crypto sealToEscrow, aad = the
// checkout id): the server stores it but opens it only with escrow.key, when an admin asks.
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createKeyFile, writeAtomic } from './key-files.js';
import path from 'node:path';
import {
  CarryonError, encodeRecoveryCode, keyCheck, newEscrowKeyPair, openEscrow, type EscrowAnswer, type RecoveryCodeAnswer,
} from '../src/index.js';
import type { Sql } from '../src/index.js';
import type { Actor, FleetMeta } from './fleet-meta.js';
import type { CheckoutRow } from './meta.js';

export interface EscrowPaths {
  dir: string;
  /** The public key laptops seal to: SPKI DER, base64, one line. */
  pub: string;
  /** The private key: PKCS#8 PEM, 0600. May be moved offline by an admin. */
  key: string;
}

export function escrowPaths(dataRoot: string): EscrowPaths {
  const dir = path.join(dataRoot, 'escrow');
  return { dir, pub: path.join(dir, 'escrow.pub'), key: path.join(dir, 'escrow.key') };
}

function x25519PublicOf(spkiBase64: string, file: string): string {
  try {
    const k = createPublicKey({ key: Buffer.from(spkiBase64, 'base64'), format: 'der', type: 'spki' });
    if (k.asymmetricKeyType !== 'x25519') throw new Error('not x25519');
    return k.export({ type: 'spki', format: 'der' }).toString('base64');
  } catch {
    throw new CarryonError('DATA_DIR_INVALID', `${file} is not an X25519 public key (SPKI, base64): restore it from a backup, or derive it from escrow.key`, { file });
  }
}

/**
 * Make the escrow key pair if the data folder has none (`init`, and `start` for folders made before
 * encryption): escrow.key first (created exclusively, 0600), then escrow.pub derived from it. A folder
 * whose escrow.key was moved offline keeps its escrow.pub and is left as it is; an escrow.pub lost
 * while escrow.key is there is derived again. Returns the public key laptops seal to.
 */
export function ensureEscrowKeys(dataRoot: string): { publicKey: string; created: boolean } {
  const p = escrowPaths(dataRoot);
  mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  chmodSync(p.dir, 0o700);
  if (existsSync(p.key)) chmodSync(p.key, 0o600);
  if (existsSync(p.pub)) return { publicKey: x25519PublicOf(readFileSync(p.pub, 'utf8').trim(), p.pub), created: false };
  let created = false;
  // Another process may make it first: then this one derives from theirs.
  if (!existsSync(p.key)) created = createKeyFile(p.key, () => newEscrowKeyPair().privateKeyPem);
  const publicKey = createPublicKey(privateKeyOf(readFileSync(p.key, 'utf8'), p.key)).export({ type: 'spki', format: 'der' }).toString('base64');
  writeAtomic(p.pub, `${publicKey}\n`);
  return { publicKey, created };
}

function privateKeyOf(pem: string, file: string): ReturnType<typeof createPrivateKey> {
  try {
    const k = createPrivateKey(pem);
    if (k.asymmetricKeyType !== 'x25519') throw new Error('not x25519');
    return k;
  } catch {
    throw new CarryonError('INVALID_ARGUMENT', `${file} is not an escrow private key (an X25519 key in PEM, as carryon-server init wrote it to escrow/escrow.key)`, { file });
  }
}

/** A short public fingerprint of an escrow public key, to tell one key pair from another in messages. */
function fingerprint(spkiBase64: string): string {
  return createHash('sha256').update(Buffer.from(spkiBase64, 'base64')).digest('hex').slice(0, 16);
}

interface EscrowRow {
  sealed: Buffer;
  keyCheck: string;
  depositedAt: string;
}

type CheckoutRef = Pick<CheckoutRow, 'id' | 'desktop_id'>;

export class EscrowService {
  private pub: string | null | undefined;

  /** `dataRoot` null: no escrow key pair (a server without a data folder cannot require encryption). */
  constructor(private readonly db: Sql, private readonly dataRoot: string | null, private readonly fleet: FleetMeta) {}

  /** The public key laptops seal to, read once from DATA/escrow/escrow.pub. */
  publicKey(): string | null {
    if (this.pub === undefined) {
      const file = this.dataRoot ? escrowPaths(this.dataRoot).pub : null;
      this.pub = file && existsSync(file) ? x25519PublicOf(readFileSync(file, 'utf8').trim(), file) : null;
    }
    return this.pub;
  }

  /**
   * Whether this checkout must be encrypted: decided from the desktop's effective policy the first time
   * anyone asks (at check-out), then fixed, so a policy changed later applies to new check-outs only and
   * never strands a copy already handed out.
   */
  async required(co: CheckoutRef): Promise<boolean> {
    const row = (await this.db.get('SELECT encryption_required AS r FROM checkouts WHERE id = ?', [co.id])) as { r: number | null } | undefined;
    if (!row) throw new CarryonError('CHECKOUT_NOT_FOUND', `no checkout ${co.id}`, { checkoutId: co.id });
    if (row.r !== null) return row.r === 1;
    const wanted = (await this.fleet.encryptionPolicy(co.desktop_id)).effective === 'required' ? 1 : 0;
    (await this.db.run('UPDATE checkouts SET encryption_required = ? WHERE id = ? AND encryption_required IS NULL', [wanted, co.id]));
    return ((await this.db.get('SELECT encryption_required AS r FROM checkouts WHERE id = ?', [co.id])) as { r: number }).r === 1;
  }

  /** The `encryption` field of a check-out answer: the escrow key is sent whenever the server has one. */
  async checkoutEncryption(co: CheckoutRef): Promise<{ required: boolean; escrowKey: string | null }> {
    const escrowKey = this.publicKey();
    const required = await this.required(co);
    if (required && escrowKey === null) throw new CarryonError('INTERNAL', 'encryption is required but the server has no escrow key (DATA/escrow/escrow.pub): restart carryon-server to make one');
    return { required, escrowKey };
  }

  private async escrowOf(checkoutId: string): Promise<EscrowRow | null> {
    const r = (await this.db.get('SELECT sealed, key_check, created_at FROM checkout_escrows WHERE checkout_id = ?', [checkoutId])) as { sealed: Buffer; key_check: string; created_at: string } | undefined;
    return r ? { sealed: r.sealed, keyCheck: r.key_check, depositedAt: r.created_at } : null;
  }

  /**
   * Keep a checkout's sealed data key. The same key again (the same key check: a retry re-seals, and a
   * seal is randomised, so its bytes differ) answers what is held, `already: true`; another key for a
   * checkout that has one is refused: the copy's key never changes, and the one escrowed may be the
   * only way back into it. The caller has checked that the checkout is active and the device its holder.
   */
  async deposit(co: CheckoutRef, sealed: Buffer, check: string, actor: Actor): Promise<EscrowAnswer> {
    return this.db.transaction(async (): Promise<EscrowAnswer> => {
      const have = await this.escrowOf(co.id);
      if (have) {
        if (have.keyCheck === check) return { checkoutId: co.id, keyCheck: have.keyCheck, depositedAt: have.depositedAt, already: true };
        throw new CarryonError('CHECKOUT_CONFLICT',
          `checkout ${co.id} already has an escrowed key (key check ${have.keyCheck}, deposited ${have.depositedAt}); a different key (key check ${check}) is refused: ` +
          'a copy keeps the key it escrowed. If this laptop lost that key, discard the checkout and check out again', { checkoutId: co.id, keyCheck: have.keyCheck });
      }
      const at = new Date().toISOString();
      (await this.db.run('INSERT INTO checkout_escrows (checkout_id, sealed, key_check, created_at) VALUES (?, ?, ?, ?)', [co.id, sealed, check, at]));
      const desktop = ((await this.db.get('SELECT name FROM desktops WHERE id = ?', [co.desktop_id])) as { name: string }).name;
      await this.fleet.audit(actor, 'escrow.deposit', `desktop:${desktop}`, { checkoutId: co.id, keyCheck: check });
      return { checkoutId: co.id, keyCheck: check, depositedAt: at, already: false };
    });
  }

  /** Refuse desktop data (disk blocks) for a checkout that must be encrypted and has not escrowed its key. */
  async requireEscrow(co: CheckoutRef): Promise<void> {
    if (!(await this.required(co)) || (await this.escrowOf(co.id))) return;
    const desktop = ((await this.db.get('SELECT name FROM desktops WHERE id = ?', [co.desktop_id])) as { name: string }).name;
    throw missing(co.id, desktop);
  }

  /**
   * Refuse persona data to a device that holds an active checkout which must be encrypted and has no
   * escrow yet (the persona is the user's, not a checkout's: the device's own checkouts decide). With
   * no device named (a user token without the device header), every active checkout of the user counts.
   */
  async requireEscrowForDevice(userId: number, device: string | undefined): Promise<void> {
    const rows = (await this.db.all(`SELECT c.id, c.desktop_id, d.name AS desktop FROM checkouts c JOIN desktops d ON d.id = c.desktop_id
      WHERE c.user_id = ? AND c.state = 'active' AND (CAST(? AS TEXT) IS NULL OR c.device = ?) AND NOT EXISTS (SELECT 1 FROM checkout_escrows e WHERE e.checkout_id = c.id)
      ORDER BY c.started_at`, [userId, device ?? null, device ?? null])) as Array<{ id: string; desktop_id: number; desktop: string }>;
    for (const r of rows) if (await this.required(r)) throw missing(r.id, r.desktop);
  }

  /**
   * The recovery code of a copy's data key, for an admin to read out (`carryon unlock DESKTOP
   * --recovery-code CODE`). Which copy: `checkoutId`, else the desktop's current checkout when it has an
   * escrow, else its latest checkout that has one. `keyFile`: the escrow private key (default:
   * DATA/escrow/escrow.key). Audited as escrow.reveal before the code is returned.
   */
  async recoveryCode(target: { desktop?: string; checkoutId?: string }, actor: Actor, keyFile?: string): Promise<RecoveryCodeAnswer> {
    const select = `SELECT c.id, c.device, c.device_name, c.state, d.name AS desktop FROM checkouts c JOIN desktops d ON d.id = c.desktop_id`;
    type Row = { id: string; device: string; device_name: string; state: string; desktop: string };
    let row: Row | undefined;
    if (target.checkoutId !== undefined) {
      row = (await this.db.get(`${select} WHERE c.id = ?`, [target.checkoutId])) as Row | undefined;
      if (!row || (target.desktop !== undefined && row.desktop !== target.desktop)) {
        throw new CarryonError('CHECKOUT_NOT_FOUND', `no checkout ${target.checkoutId}${target.desktop !== undefined ? ` of desktop ${target.desktop}` : ''}`, { checkoutId: target.checkoutId });
      }
    } else if (target.desktop !== undefined) {
      if (!(await this.db.get('SELECT 1 FROM desktops WHERE name = ?', [target.desktop]))) throw new CarryonError('DESKTOP_NOT_FOUND', `no desktop named ${target.desktop}`, { desktop: target.desktop });
      row = (await this.db.get(`${select} JOIN checkout_escrows e ON e.checkout_id = c.id WHERE d.name = ?
        ORDER BY c.state = 'active' DESC, c.started_at DESC, e.created_at DESC LIMIT 1`, [target.desktop])) as Row | undefined;
      if (!row) {
        throw new CarryonError('ESCROW_MISSING', `desktop ${target.desktop} has no escrowed key: no laptop has encrypted a copy of it with this server (\`carryon-server admin checkouts\` shows which checkouts are encrypted)`, { desktop: target.desktop });
      }
    } else {
      throw new CarryonError('INVALID_ARGUMENT', 'name a desktop or a checkout');
    }
    const e = await this.escrowOf(row.id);
    if (!e) {
      throw new CarryonError('ESCROW_MISSING', `checkout ${row.id} of ${row.desktop} (on ${row.device_name}) has no escrowed key: its laptop did not encrypt that copy, so there is nothing to recover`,
        { checkoutId: row.id, desktop: row.desktop });
    }
    const file = keyFile ?? (this.dataRoot ? escrowPaths(this.dataRoot).key : null);
    const pem = this.readPrivateKey(file, keyFile !== undefined);
    let key: Buffer;
    try {
      key = openEscrow(pem, e.sealed, row.id);
    } catch {
      const ours = this.publicKey();
      const theirs = createPublicKey(privateKeyOf(pem, file!)).export({ type: 'spki', format: 'der' }).toString('base64');
      throw new CarryonError('INVALID_ARGUMENT', `the escrowed key of checkout ${row.id} does not open with ${file}: it is not the private key that copy was sealed to` +
        ` (that file's key has fingerprint ${fingerprint(theirs)}${ours ? `; this server's escrow.pub has ${fingerprint(ours)}` : ''})`, { checkoutId: row.id });
    }
    if (key.length !== 32 || keyCheck(key) !== e.keyCheck) {
      throw new CarryonError('RECOVERY_CODE_INVALID', `the escrowed key of checkout ${row.id} does not match the key check its laptop sent (${e.keyCheck}): that escrow cannot be trusted, no code is given`, { checkoutId: row.id });
    }
    // The audit row is written before the code leaves this function: a reveal is never unrecorded.
    await this.fleet.audit(actor, 'escrow.reveal', `desktop:${row.desktop}`, { checkoutId: row.id, device: row.device, deviceName: row.device_name, keyCheck: e.keyCheck });
    return { checkoutId: row.id, desktop: row.desktop, device: row.device, deviceName: row.device_name, keyCheck: e.keyCheck, code: encodeRecoveryCode(key) };
  }

  private readPrivateKey(file: string | null, given: boolean): string {
    if (file === null) throw new CarryonError('ESCROW_KEY_ABSENT', 'this server has no data folder for an escrow private key: give the key with --escrow-key FILE');
    let pem: string;
    try {
      pem = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (given) throw new CarryonError('INVALID_ARGUMENT', `--escrow-key ${file}: no such file`, { file });
      throw new CarryonError('ESCROW_KEY_ABSENT', `the escrow private key is not at ${file} (moved offline?): run \`carryon-server admin recovery-code DESKTOP --escrow-key FILE\` on a machine that has it, with FILE the escrow.key that was moved`, { file });
    }
    privateKeyOf(pem, file);
    return pem;
  }
}

function missing(checkoutId: string, desktop: string): CarryonError {
  return new CarryonError('ESCROW_MISSING',
    `desktop ${desktop} must be encrypted on the laptop, and this checkout's key is not escrowed yet: update carryon on this laptop; it must encrypt this desktop ` +
    `(or an admin turns encryption off: \`carryon-server desktop policy ${desktop} --encryption off\`)`, { checkoutId, desktop });
}
