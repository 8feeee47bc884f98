// lease: offline lease-extension codes, shared by the server (which makes them) and the laptop
// (which checks them without the network). Owns the code format; knows nothing of HTTP or storage.
// A code carries the lease's new end itself, so the server and the laptop agree on it whatever their
// clocks say and whenever the code is typed: the end as whole hours since the Unix epoch (3 bytes, to
// the year 3883), a sequence number (2 bytes, 1-65535, each code used once, increasing) and the first
// 8 bytes of HMAC-SHA256(checkout secret, "carryon-lease-code-2\n" + checkoutId + hours + seq).
// 13 bytes in Crockford base32: 21 characters, shown in groups of 7, easy to read over the phone.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { CarryonError } from '../errors/index.js';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

const HOUR_MS = 3600 * 1000;
const MAX_HOURS = 0xffffff;

function mac(secret: Buffer, checkoutId: string, hours: number, seq: number): Buffer {
  return createHmac('sha256', secret).update(`carryon-lease-code-2\n${checkoutId}\n${hours}\n${seq}`).digest().subarray(0, 8);
}

/** The end a code can carry for a wish: rounded up to a whole hour (codes count in hours). */
export function leaseCodeEnd(ms: number): number {
  return Math.ceil(ms / HOUR_MS) * HOUR_MS;
}

function base32(buf: Buffer): string {
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of buf) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

function unbase32(s: string): Buffer | null {
  const bytes: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of s) {
    // Crockford: I and L read as 1, O as 0.
    const c = ch === 'I' || ch === 'L' ? '1' : ch === 'O' ? '0' : ch;
    const v = ALPHABET.indexOf(c);
    if (v < 0) return null;
    value = ((value << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bytes.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  // The last character's spare bits must be zero: one code, one spelling.
  if (bits > 0 && (value & ((1 << bits) - 1)) !== 0) return null;
  return Buffer.from(bytes);
}

/** A code granting the lease until `untilMs` (a whole hour: see leaseCodeEnd), code number `seq`. */
export function encodeLeaseCode(secret: Buffer, checkoutId: string, untilMs: number, seq: number): string {
  const hours = untilMs / HOUR_MS;
  if (!Number.isInteger(hours) || hours < 1 || hours > MAX_HOURS) throw new CarryonError('INVALID_ARGUMENT', 'a lease code ends at a whole hour after 1970 and before 3883');
  if (!Number.isInteger(seq) || seq < 1 || seq > 65535) throw new CarryonError('INVALID_ARGUMENT', 'lease code sequence out of range');
  const b = Buffer.alloc(13);
  b.writeUIntBE(hours, 0, 3);
  b.writeUInt16BE(seq, 3);
  mac(secret, checkoutId, hours, seq).copy(b, 5);
  return base32(b).match(/.{1,7}/g)!.join('-');
}

/** Check a code typed by a user; returns the lease end it grants (ms) and its number. Fails with LEASE_CODE_INVALID. */
export function decodeLeaseCode(secret: Buffer, checkoutId: string, code: string): { untilMs: number; seq: number } {
  const clean = code.toUpperCase().replace(/[\s-]/g, '');
  const b = clean.length === 21 ? unbase32(clean) : null;
  const bad = new CarryonError('LEASE_CODE_INVALID', 'that lease code is not valid for this checkout: check it with your admin (21 characters, like ABC1234-DEF5678-GHJ9KMN)');
  if (!b || b.length !== 13) throw bad;
  const hours = b.readUIntBE(0, 3);
  const seq = b.readUInt16BE(3);
  if (hours < 1 || seq < 1 || !timingSafeEqual(b.subarray(5), mac(secret, checkoutId, hours, seq))) throw bad;
  return { untilMs: hours * HOUR_MS, seq };
}
