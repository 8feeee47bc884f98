// Fuzz target for offline lease codes (src/lease decodeLeaseCode): text a user types from a phone call
// or a mail. An accepted code is exactly the one encodeLeaseCode writes for what it grants, up to the
// spellings the decoder forgives (case, blanks, dashes; I and L for 1, O for 0).
import { decodeLeaseCode, encodeLeaseCode } from '../../../../src/lease/index.js';
import { check, type TargetSpec } from '../harness.js';

const SECRET = Buffer.from('0123456789abcdef0123456789abcdef');
const CHECKOUT = 'checkout-fuzz-1';
const HOUR = 3600 * 1000;

const canonical = (s: string): string => s.toUpperCase().replace(/[\s-]/g, '').replace(/[IL]/g, '1').replace(/O/g, '0');

export const leaseCodeTarget: TargetSpec = {
  name: 'lease-code',
  about: 'decodeLeaseCode (src/lease); an accepted code re-encodes to the same code',
  create: () => ({
    codes: ['LEASE_CODE_INVALID'],
    corpus: () => [
      encodeLeaseCode(SECRET, CHECKOUT, HOUR, 1),
      encodeLeaseCode(SECRET, CHECKOUT, 0xffffff * HOUR, 65535),
      encodeLeaseCode(SECRET, CHECKOUT, 490_000 * HOUR, 300).toLowerCase(),
      encodeLeaseCode(SECRET, CHECKOUT, 495_123 * HOUR, 2).replace(/-/g, ' '),
      encodeLeaseCode(SECRET, CHECKOUT, 500_001 * HOUR, 4096).replace(/1/g, 'l').replace(/0/g, 'o'),
    ].map((s) => Buffer.from(s, 'utf8')),
    hints: { dictionary: ['-', ' ', '\t', 'I', 'L', 'O', 'U', '\u0130', '\u017f', '\u00df', '0', 'Z'] },
    run(input) {
      const text = input.toString('utf8');
      const { untilMs, seq } = decodeLeaseCode(SECRET, CHECKOUT, text);
      check(Number.isInteger(untilMs / HOUR) && untilMs >= HOUR && untilMs <= 0xffffff * HOUR && Number.isInteger(seq) && seq >= 1 && seq <= 65535, 'lease end or seq out of range');
      check(canonical(encodeLeaseCode(SECRET, CHECKOUT, untilMs, seq)) === canonical(text), 'an accepted code is not the code for what it grants');
    },
    allocationCap: (input) => 8 * input.length + 64 * 1024,
  }),
};
