// lease: offline lease-extension codes, shared by the server (which makes them) and the laptop
// (which checks them without the network). Owns the code format; knows nothing of HTTP or storage.
// A code carries: days (1-255), a sequence number (1-65535, each code used once, increasing) and the
// first 8 bytes of HMAC-SHA256(checkout secret, "carryon-lease-code\n" + checkoutId + days + seq).
// 11 bytes in Crockford base32: 18 characters, shown in groups of 6, easy to read over the phone.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { CarryonError } from '../errors/index.js';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

function mac(secret: Buffer, checkoutId: string, days: number, seq: number): Buffer {
  return createHmac('sha256', secret).update(`carryon-lease-code\n${checkoutId}\n${days}\n${seq}`).digest().subarray(0, 8);
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

export function encodeLeaseCode(secret: Buffer, checkoutId: string, days: number, seq: number): string {
  if (!Number.isInteger(days) || days < 1 || days > 255) throw new CarryonError('INVALID_ARGUMENT', 'a lease code extends by 1 to 255 whole days');
  if (!Number.isInteger(seq) || seq < 1 || seq > 65535) throw new CarryonError('INVALID_ARGUMENT', 'lease code sequence out of range');
  const b = Buffer.alloc(11);
  b[0] = days;
  b.writeUInt16BE(seq, 1);
  mac(secret, checkoutId, days, seq).copy(b, 3);
  return base32(b).match(/.{1,6}/g)!.join('-');
}

/** Check a code typed by a user; returns what it grants. Fails with LEASE_CODE_INVALID. */
export function decodeLeaseCode(secret: Buffer, checkoutId: string, code: string): { days: number; seq: number } {
  const clean = code.toUpperCase().replace(/[\s-]/g, '');
  const b = clean.length === 18 ? unbase32(clean) : null;
  const bad = new CarryonError('LEASE_CODE_INVALID', 'that lease code is not valid for this checkout: check it with your admin (18 characters, like ABC123-DEF456-GHJ789)');
  if (!b || b.length !== 11) throw bad;
  const days = b[0]!;
  const seq = b.readUInt16BE(1);
  if (days < 1 || seq < 1 || !timingSafeEqual(b.subarray(3), mac(secret, checkoutId, days, seq))) throw bad;
  return { days, seq };
}
