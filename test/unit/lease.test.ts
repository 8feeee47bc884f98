// Offline lease codes (src/lease): short, typeable, bound to one checkout and secret, tamper-evident.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CarryonError, decodeLeaseCode, encodeLeaseCode } from '../../src/index.js';

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
  it('round-trips days and sequence; 18 characters in three groups', () => {
    for (const [days, seq] of [[1, 1], [7, 2], [255, 65535], [30, 400]] as const) {
      const c = encodeLeaseCode(secret, co, days, seq);
      expect(c).toMatch(/^[0-9A-HJKMNP-TV-Z]{6}-[0-9A-HJKMNP-TV-Z]{6}-[0-9A-HJKMNP-TV-Z]{6}$/);
      expect(decodeLeaseCode(secret, co, c)).toEqual({ days, seq });
      // Typed in lower case, with spaces, or with I/L for 1 and O for 0: the same code.
      expect(decodeLeaseCode(secret, co, c.toLowerCase().replace(/-/g, ' '))).toEqual({ days, seq });
      expect(decodeLeaseCode(secret, co, c.replace(/1/g, 'I').replace(/0/g, 'O'))).toEqual({ days, seq });
    }
  });

  it('refuses another secret, another checkout, any changed character, and wrong lengths', () => {
    const c = encodeLeaseCode(secret, co, 5, 3);
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
    for (const bad of ['', plain.slice(1), `${plain}0`, 'ÄÄÄÄÄÄ-ÄÄÄÄÄÄ-ÄÄÄÄÄÄ', 'UUUUUU-UUUUUU-UUUUUU']) expect(code(() => decodeLeaseCode(secret, co, bad))).toBe('LEASE_CODE_INVALID');
  });

  it('only whole days 1-255 and sequence numbers 1-65535 can be encoded', () => {
    for (const [d, s] of [[0, 1], [256, 1], [1.5, 1], [1, 0], [1, 65536]] as const) expect(code(() => encodeLeaseCode(secret, co, d, s))).toBe('INVALID_ARGUMENT');
  });
});
