// crypto: encryption at rest on the laptop (docs/encryption.md has the byte layouts and the reasons).
// Owns: the per-sector disk cipher (AES-256-XTS, length-preserving), the AEAD for everything else
// (AES-256-GCM), the key hierarchy (one random data key per local copy, subkeys by HKDF), the
// passphrase KDF (scrypt), sealing a key to the server's escrow public key (X25519), and recovery
// codes. Must not know: files, the CLI, the server. Everything here is Node's crypto (OpenSSL), the disk
// cipher through a small native addon when it is built (native-xts.ts; same OpenSSL, one call per run of sectors).
import { createCipheriv, createDecipheriv, createHash, createHmac, randomFillSync, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, scrypt, type KeyObject } from 'node:crypto';
import { CarryonError } from '../errors/index.js';
import { loadNativeXts, type NativeXts } from './native-xts.js';

/** The disk's encryption unit: one XTS data unit per 4 KiB, the sector number as tweak. */
export const SECTOR_BYTES = 4096;
export const DATA_KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Bytes an AEAD seal adds: nonce + tag. */
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
const ZERO_SECTOR = Buffer.alloc(SECTOR_BYTES);

/** Subkeys of a data key, one per use, so no key ever serves two schemes. */
export type SubkeyUse = 'disk' | 'cache' | 'cache-index' | 'persona' | 'persona-state' | 'check';
const SUBKEY_BYTES: Record<SubkeyUse, number> = { disk: 64, cache: 32, 'cache-index': 32, persona: 32, 'persona-state': 32, check: 32 };

export function newDataKey(): Buffer {
  return randomBytes(DATA_KEY_BYTES);
}

export function subkey(dataKey: Buffer, use: SubkeyUse): Buffer {
  if (dataKey.length !== DATA_KEY_BYTES) throw new CarryonError('INVALID_ARGUMENT', 'a data key is 32 bytes');
  return Buffer.from(hkdfSync('sha256', dataKey, Buffer.alloc(0), `carryon ${use} v1`, SUBKEY_BYTES[use]));
}

/** A short public fingerprint of a data key: tells a wrong key (or a recovery code for another copy) from damage. */
export function keyCheck(dataKey: Buffer): string {
  return subkey(dataKey, 'check').subarray(0, 8).toString('hex');
}

export type SectorCipherImplementation = 'native' | 'js';

/**
 * Which SectorCipher new ciphers use: 'native' (native/xts: one OpenSSL context per key and direction,
 * a whole buffer of sectors per call) or 'js' (one createCipheriv per sector), and why (the addon's file,
 * or why it is not used). The bytes are the same; 'js' is 2-10x slower per sector.
 */
export function sectorCipherImplementation(): { implementation: SectorCipherImplementation; detail: string } {
  const { addon, reason } = loadNativeXts();
  return { implementation: addon ? 'native' : 'js', detail: addon ? `${reason} (${addon.openssl})` : reason };
}

/**
 * AES-256-XTS over 4 KiB sectors (IEEE 1619, as dm-crypt with sector_size=4096 and plain64 IVs): the
 * tweak is the sector number, 64-bit little-endian, zero-padded to 16 bytes. Length-preserving, so the
 * file keeps its size and every sector is read and written in place.
 *
 * Holes: a sector whose plaintext is all zeros is stored as all zeros, and an all-zero sector on disk
 * reads as zeros. So a sparse disk stays sparse, and never-written space needs no I/O; what this
 * reveals is which sectors are zero (as dm-crypt with discards does). A real ciphertext sector is all
 * zeros with probability 2^-32768.
 *
 * A last sector shorter than 4 KiB (disks of any size) is XTS with ciphertext stealing when it has at
 * least 16 bytes; the rare tail under 16 bytes is XORed with AES-256-ECB(sector tweak | 0xff…) of the
 * second XTS key half (see tinyTail): length-preserving, and only ever the last bytes of an odd-sized disk.
 */
export class SectorCipher {
  private readonly key: Buffer;
  private readonly tweak = Buffer.alloc(16);
  private readonly addon: NativeXts | null;
  private readonly native: unknown;
  readonly implementation: SectorCipherImplementation;

  /** `implementation: 'js'` forces the createCipheriv loop (tests and benches compare the two). */
  constructor(xtsKey: Buffer, opts: { implementation?: SectorCipherImplementation } = {}) {
    if (xtsKey.length !== 64) throw new CarryonError('INVALID_ARGUMENT', 'an XTS key is 64 bytes');
    // OpenSSL refuses XTS keys whose halves are equal (a weak key); HKDF output never has them.
    this.key = xtsKey;
    const addon = opts.implementation === 'js' ? null : loadNativeXts().addon;
    if (opts.implementation === 'native' && !addon) throw new CarryonError('INVALID_ARGUMENT', `the native XTS addon is not available: ${loadNativeXts().reason}`);
    if (addon) {
      try {
        this.native = addon.create(xtsKey);
      } catch (err) {
        throw new CarryonError('INVALID_ARGUMENT', `XTS key refused: ${(err as Error).message}`, {}, err);
      }
    }
    this.addon = addon;
    this.implementation = addon ? 'native' : 'js';
  }

  static fromDataKey(dataKey: Buffer): SectorCipher {
    return new SectorCipher(subkey(dataKey, 'disk'));
  }

  /** Encrypt `src` (starting at a sector boundary: byte offset `sector * 4096`) into `dst` (same length; may be `src`). */
  encrypt(src: Uint8Array, sector: number, dst: Uint8Array = src): void {
    this.run(true, src, sector, dst);
  }

  decrypt(src: Uint8Array, sector: number, dst: Uint8Array = src): void {
    this.run(false, src, sector, dst);
  }

  private run(enc: boolean, src: Uint8Array, sector: number, dst: Uint8Array): void {
    const n = src.length;
    if (dst.length < n) throw new CarryonError('INVALID_ARGUMENT', 'sector cipher: output shorter than input');
    if (!Number.isSafeInteger(sector) || sector < 0) throw new CarryonError('INVALID_ARGUMENT', `sector cipher: sector ${sector} is not a non-negative integer`);
    if (src.buffer === dst.buffer && src.byteOffset !== dst.byteOffset && src.byteOffset < dst.byteOffset + n && dst.byteOffset < src.byteOffset + n) {
      throw new CarryonError('INVALID_ARGUMENT', 'sector cipher: input and output overlap without being the same bytes');
    }
    if (this.addon === null) return this.runJs(enc, Buffer.from(src.buffer, src.byteOffset, n), sector, Buffer.from(dst.buffer, dst.byteOffset, n));
    // Whole units and a last unit of >= 16 bytes in one native call; a tail under 16 bytes in JavaScript.
    const last = n % SECTOR_BYTES;
    const cut = last > 0 && last < 16 ? n - last : n;
    if (cut > 0) this.addon.run(this.native, enc, cut === n ? src : src.subarray(0, cut), dst.length === cut ? dst : dst.subarray(0, cut), sector);
    if (cut < n) this.runJs(enc, Buffer.from(src.buffer, src.byteOffset + cut, n - cut), sector + cut / SECTOR_BYTES, Buffer.from(dst.buffer, dst.byteOffset + cut, n - cut));
  }

  /**
   * Read dst.length bytes of the file `fd` at `position` (a sector boundary; zeros past its end) and
   * decrypt them, both on a worker thread: a large read of an encrypted disk then costs the calling
   * thread nothing. Null without the addon: the caller reads, then decrypts.
   */
  preadDecrypt(fd: number, dst: Uint8Array, position: number): Promise<void> | null {
    if (this.addon === null || position % SECTOR_BYTES !== 0) return null;
    const sector = position / SECTOR_BYTES;
    const n = dst.length;
    const last = n % SECTOR_BYTES;
    return this.addon.preadDecrypt(this.native, fd, dst, position, sector).then(() => {
      // A tail under 16 bytes (an odd-sized disk's last bytes) was read, not decrypted: JavaScript's.
      if (last > 0 && last < 16) {
        const tail = Buffer.from(dst.buffer, dst.byteOffset + n - last, last);
        this.runJs(false, tail, sector + (n - last) / SECTOR_BYTES, tail);
      }
    });
  }

  private runJs(enc: boolean, s: Buffer, sector: number, d: Buffer): void {
    for (let at = 0, n = sector; at < s.length; at += SECTOR_BYTES, n++) {
      const len = Math.min(SECTOR_BYTES, s.length - at);
      const unit = s.subarray(at, at + len);
      const out = d.subarray(at, at + len);
      if (unit.equals(ZERO_SECTOR.subarray(0, len))) {
        if (out !== unit) out.fill(0);
        continue;
      }
      this.tweak.writeUInt32LE(n >>> 0, 0);
      this.tweak.writeUInt32LE(Math.floor(n / 0x100000000), 4);
      if (len < 16) {
        this.tinyTail(unit, out);
        continue;
      }
      const c = enc ? createCipheriv('aes-256-xts', this.key, this.tweak) : createDecipheriv('aes-256-xts', this.key, this.tweak);
      const r = c.update(unit);
      r.copy(out);
      c.final();
    }
  }

  /**
   * A tail under 16 bytes: XOR with a secret pad, except that the one input mapping to zeros (the pad
   * itself) maps to itself, so that zeros keep meaning "never written" and the map stays a bijection
   * (its own inverse). What it reveals: whether the tail is zero, or equal to the secret pad.
   */
  private tinyTail(unit: Buffer, out: Buffer): void {
    const block = Buffer.alloc(16, 0xff);
    this.tweak.copy(block, 0, 0, 8);
    const e = createCipheriv('aes-256-ecb', this.key.subarray(32), null).setAutoPadding(false);
    const pad = e.update(block);
    const x = Buffer.alloc(unit.length);
    for (let i = 0; i < unit.length; i++) x[i] = unit[i]! ^ pad[i]!;
    (x.equals(ZERO_SECTOR.subarray(0, unit.length)) ? unit : x).copy(out);
  }
}

/**
 * AES-256-GCM with a random 96-bit nonce: `nonce(12) | ciphertext | tag(16)`. `aad` binds the sealed
 * bytes to where they belong (a block id, a checkout id), so a sealed value moved elsewhere fails to open.
 */
export function seal(key: Buffer, plain: Uint8Array | Uint8Array[], aad: string | Uint8Array): Buffer {
  // Several parts are sealed as their concatenation, written once into the result (no joined copy first).
  const parts = Array.isArray(plain) ? plain : [plain];
  const out = Buffer.allocUnsafe(NONCE_BYTES + parts.reduce((n, p) => n + p.length, 0) + TAG_BYTES);
  randomFillSync(out, 0, NONCE_BYTES);
  const c = createCipheriv('aes-256-gcm', key, out.subarray(0, NONCE_BYTES));
  c.setAAD(typeof aad === 'string' ? Buffer.from(aad) : aad);
  let at = NONCE_BYTES;
  for (const p of parts) at += c.update(p).copy(out, at);
  c.final();
  c.getAuthTag().copy(out, at);
  return out;
}

/** Open a seal; null when the key is wrong, the aad differs or a byte was changed. */
export function tryOpen(key: Buffer, sealed: Uint8Array, aad: string | Uint8Array): Buffer | null {
  if (sealed.length < SEAL_OVERHEAD) return null;
  const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length);
  const d = createDecipheriv('aes-256-gcm', key, b.subarray(0, NONCE_BYTES));
  d.setAAD(typeof aad === 'string' ? Buffer.from(aad) : aad);
  d.setAuthTag(b.subarray(b.length - TAG_BYTES));
  const out = d.update(b.subarray(NONCE_BYTES, b.length - TAG_BYTES));
  try {
    d.final();
  } catch {
    return null;
  }
  return out;
}

/** HMAC-SHA-256: names that must not reveal what they name (cache index keys). */
export function keyedName(key: Buffer, name: Uint8Array | string): Buffer {
  return createHmac('sha256', key).update(name).digest();
}

// --- passphrase KDF -------------------------------------------------------------------------------

export interface KdfParams {
  kdf: 'scrypt';
  /** log2 of scrypt's N. */
  logN: number;
  r: number;
  p: number;
  salt: string; // base64, 16 bytes
}

/**
 * Default cost, chosen by measurement (docs/encryption.md): scrypt N=2^17, r=8, p=1 takes 128 MiB
 * and ~0.6-1.3 s on this 2-core machine, once per session. OWASP's minimum for scrypt is this setting.
 */
export const DEFAULT_KDF_LOG_N = 17;
/** Below this no keyring is made: a fast test setting must not pass for a real one by accident. */
export const MIN_KDF_LOG_N = 10;

export function newKdfParams(logN = DEFAULT_KDF_LOG_N): KdfParams {
  if (!Number.isInteger(logN) || logN < MIN_KDF_LOG_N || logN > 22) throw new CarryonError('INVALID_ARGUMENT', `KDF cost 2^${logN} is outside 2^${MIN_KDF_LOG_N}..2^22`);
  return { kdf: 'scrypt', logN, r: 8, p: 1, salt: randomBytes(16).toString('base64') };
}

/** The key-encryption key of a passphrase. Asynchronous: scrypt runs in the thread pool. */
export function deriveKek(passphrase: string, params: KdfParams): Promise<Buffer> {
  if (params.kdf !== 'scrypt' || params.logN < MIN_KDF_LOG_N || params.logN > 22 || params.r < 1 || params.r > 32 || params.p < 1 || params.p > 16) {
    return Promise.reject(new CarryonError('INVALID_ARGUMENT', 'keyring: unknown or unsafe KDF parameters'));
  }
  const N = 2 ** params.logN;
  return new Promise((resolve, reject) => {
    scrypt(passphrase.normalize('NFC'), Buffer.from(params.salt, 'base64'), 32, { N, r: params.r, p: params.p, maxmem: 256 * N * params.r + 16 * 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

// --- escrow ---------------------------------------------------------------------------------------

export interface EscrowKeyPair {
  /** SPKI DER, base64: what laptops seal to. */
  publicKey: string;
  /** PKCS#8 PEM: stays with the server (or offline with an admin). */
  privateKeyPem: string;
}

export function newEscrowKeyPair(): EscrowKeyPair {
  const { publicKey, privateKey } = generateKeyPairSync('x25519');
  return {
    publicKey: publicKey.export({ type: 'spki', format: 'der' }).toString('base64'),
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

const ESCROW_VERSION = 1;

function escrowKek(shared: Buffer, ephemeral: Buffer, recipient: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([ephemeral, recipient]), 'carryon escrow v1', 32));
}

function x25519Public(spkiBase64: string): KeyObject {
  try {
    const k = createPublicKey({ key: Buffer.from(spkiBase64, 'base64'), format: 'der', type: 'spki' });
    if (k.asymmetricKeyType !== 'x25519') throw new Error('not x25519');
    return k;
  } catch {
    throw new CarryonError('BAD_REQUEST', "the server's escrow key is not an X25519 public key");
  }
}

/**
 * Seal a secret so that only the holder of the escrow private key can open it (ECIES over X25519):
 * `version(1) | ephemeral public key (SPKI DER, 44) | seal(HKDF(shared), secret, aad)`.
 */
export function sealToEscrow(publicKeySpki: string, secret: Uint8Array, aad: string): Buffer {
  const recipient = x25519Public(publicKeySpki);
  const eph = generateKeyPairSync('x25519');
  const ephDer = eph.publicKey.export({ type: 'spki', format: 'der' });
  const shared = diffieHellman({ privateKey: eph.privateKey, publicKey: recipient });
  const kek = escrowKek(shared, ephDer, recipient.export({ type: 'spki', format: 'der' }));
  return Buffer.concat([Buffer.from([ESCROW_VERSION]), ephDer, seal(kek, secret, aad)]);
}

export function openEscrow(privateKeyPem: string, sealed: Uint8Array, aad: string): Buffer {
  const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length);
  if (b.length < 1 + 44 + SEAL_OVERHEAD || b[0] !== ESCROW_VERSION) throw new CarryonError('BAD_REQUEST', 'escrowed key: unknown format');
  const priv = createPrivateKey(privateKeyPem);
  const ephDer = b.subarray(1, 45);
  const shared = diffieHellman({ privateKey: priv, publicKey: createPublicKey({ key: ephDer, format: 'der', type: 'spki' }) });
  const kek = escrowKek(shared, ephDer, createPublicKey(priv).export({ type: 'spki', format: 'der' }));
  const out = tryOpen(kek, b.subarray(45), aad);
  if (!out) throw new CarryonError('BAD_REQUEST', 'escrowed key does not open with this escrow private key');
  return out;
}

/** Bounds an escrow blob parsed at the server's boundary. */
export const MAX_ESCROW_BYTES = 1 + 44 + SEAL_OVERHEAD + 64;

// --- recovery codes -------------------------------------------------------------------------------

const B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'; // Crockford: no I, L, O, U

/**
 * A data key as something an admin can read out over the phone: 52 Crockford base32 characters of the
 * key and 4 of SHA-256 check, in groups of 4 (like a BitLocker recovery key). Typing errors are caught
 * by the check before any key is tried.
 */
export function encodeRecoveryCode(dataKey: Buffer): string {
  if (dataKey.length !== DATA_KEY_BYTES) throw new CarryonError('INVALID_ARGUMENT', 'a data key is 32 bytes');
  const check = createHash('sha256').update('carryon recovery\n').update(dataKey).digest().subarray(0, 3);
  const chars = base32(Buffer.concat([dataKey, check])).slice(0, 56);
  return chars.match(/.{4}/g)!.join('-');
}

export function decodeRecoveryCode(text: string): Buffer {
  const clean = text.toUpperCase().replace(/[\s-]/g, '').replace(/O/g, '0').replace(/[IL]/g, '1');
  if (!/^[0-9A-HJKMNP-TV-Z]{56}$/.test(clean)) {
    throw new CarryonError('RECOVERY_CODE_INVALID', `a recovery code is 56 characters (14 groups of 4, letters and digits); this one has ${clean.length}`);
  }
  const bytes = unbase32(clean);
  const key = bytes.subarray(0, DATA_KEY_BYTES);
  const check = createHash('sha256').update('carryon recovery\n').update(key).digest().subarray(0, 3);
  // 56 chars carry 280 bits: the key's 256 and the check's first 24.
  if (!bytes.subarray(DATA_KEY_BYTES, DATA_KEY_BYTES + 3).equals(check)) {
    throw new CarryonError('RECOVERY_CODE_INVALID', 'the recovery code has a typing error (its check characters do not match): compare it group by group with what the admin read out');
  }
  return Buffer.from(key);
}

function base32(b: Buffer): string {
  let out = '';
  let acc = 0;
  let bits = 0;
  for (const x of b) {
    acc = (acc << 8) | x;
    bits += 8;
    while (bits >= 5) {
      out += B32[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += B32[(acc << (5 - bits)) & 31];
  return out;
}

function unbase32(s: string): Buffer {
  const out: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const ch of s) {
    acc = (acc << 5) | B32.indexOf(ch);
    bits += 5;
    if (bits >= 8) {
      out.push((acc >>> (bits - 8)) & 255);
      bits -= 8;
    }
    acc &= (1 << bits) - 1;
  }
  return Buffer.from(out);
}
