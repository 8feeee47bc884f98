// Offline lease codes (src/lease): short, typeable, bound to one checkout and secret, tamper-evident.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CarryonError, decodeLeaseCode, encodeLeaseCode, leaseCodeEnd } from '../../src/index.js';

const HOUR = 3600 * 1000;

const secret = randomBytes(16);
const co = '5b2a8f0e-1c3d-4e5f-8a9b-0c1d2e3f4a5b';

function code(err: () => unknown): string {
  try {
    err();
  } catch (e) {
    return (e as CarryonError).code;
  }
  return 'none';
}

describe('lease codes', () => {
  it('round-trips the lease end (whole hours) and sequence; 21 characters in three groups', () => {
    for (const [hours, seq] of [[1, 1], [490_000, 2], [0xffffff, 65535], [500_123, 400]] as const) {
      const untilMs = hours * HOUR;
      const c = encodeLeaseCode(secret, co, untilMs, seq);
      expect(c).toMatch(/^[0-9A-HJKMNP-TV-Z]{7}-[0-9A-HJKMNP-TV-Z]{7}-[0-9A-HJKMNP-TV-Z]{7}$/);
      expect(decodeLeaseCode(secret, co, c)).toEqual({ untilMs, seq });
      // Typed in lower case, with spaces, or with I/L for 1 and O for 0: the same code.
      expect(decodeLeaseCode(secret, co, c.toLowerCase().replace(/-/g, ' '))).toEqual({ untilMs, seq });
      expect(decodeLeaseCode(secret, co, c.replace(/1/g, 'I').replace(/0/g, 'O'))).toEqual({ untilMs, seq });
    }
  });

  it('the end a code carries is rounded up to the whole hour', () => {
    expect(leaseCodeEnd(5 * HOUR)).toBe(5 * HOUR);
    expect(leaseCodeEnd(5 * HOUR + 1)).toBe(6 * HOUR);
  });

  it('refuses another secret, another checkout, any changed character, and wrong lengths', () => {
    const c = encodeLeaseCode(secret, co, 490_005 * HOUR, 3);
    expect(code(() => decodeLeaseCode(randomBytes(16), co, c))).toBe('LEASE_CODE_INVALID');
    expect(code(() => decodeLeaseCode(secret, co.replace('5b', '6b'), c))).toBe('LEASE_CODE_INVALID');
    const plain = c.replace(/-/g, '');
    for (let i = 0; i < plain.length; i++) {
      // Z and Y differ in their low bit too, so the last character's spare bits are tested as well.
      const other = plain[i] === 'Z' ? 'Y' : 'Z';
      const changed = plain.slice(0, i) + other + plain.slice(i + 1);
      expect(code(() => decodeLeaseCode(secret, co, changed)), `position ${i}`).toBe('LEASE_CODE_INVALID');
    }
    // Only the spare bits of the last character changed: still refused (one spelling per code).
    const last = plain.at(-1)!;
    const alphabet = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    const v = alphabet.indexOf(last);
    expect(code(() => decodeLeaseCode(secret, co, plain.slice(0, -1) + alphabet[v ^ 1]))).toBe('LEASE_CODE_INVALID');
    for (const bad of ['', plain.slice(1), `${plain}0`, 'ÄÄÄÄÄÄÄ-ÄÄÄÄÄÄÄ-ÄÄÄÄÄÄÄ', 'UUUUUUU-UUUUUUU-UUUUUUU']) expect(code(() => decodeLeaseCode(secret, co, bad))).toBe('LEASE_CODE_INVALID');
  });

  it('only whole hours from 1970 to 3883 and sequence numbers 1-65535 can be encoded', () => {
    for (const [h, s] of [[0, 1], [0x1000000, 1], [1.5, 1], [1, 0], [1, 65536]] as const) expect(code(() => encodeLeaseCode(secret, co, h * HOUR, s))).toBe('INVALID_ARGUMENT');
  });
});
