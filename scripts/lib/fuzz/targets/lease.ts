// Fuzz target for offline lease codes (src/lease decodeLeaseCode): text a user types from a phone call
// or a mail. An accepted code is exactly the one encodeLeaseCode writes for what it grants, up to the
// spellings the decoder forgives (case, blanks, dashes; I and L for 1, O for 0).
import { decodeLeaseCode, encodeLeaseCode } from '../../../../src/lease/index.js';
import { check, type TargetSpec } from '../harness.js';

const SECRET = Buffer.from('0123456789abcdef0123456789abcdef');
const CHECKOUT = 'checkout-fuzz-1';

const canonical = (s: string): string => s.toUpperCase().replace(/[\s-]/g, '').replace(/[IL]/g, '1').replace(/O/g, '0');

export const leaseCodeTarget: TargetSpec = {
  name: 'lease-code',
  about: 'decodeLeaseCode (src/lease); an accepted code re-encodes to the same code',
  create: () => ({
    codes: ['LEASE_CODE_INVALID'],
    corpus: () => [
      encodeLeaseCode(SECRET, CHECKOUT, 1, 1),
      encodeLeaseCode(SECRET, CHECKOUT, 255, 65535),
      encodeLeaseCode(SECRET, CHECKOUT, 14, 300).toLowerCase(),
      encodeLeaseCode(SECRET, CHECKOUT, 7, 2).replace(/-/g, ' '),
      encodeLeaseCode(SECRET, CHECKOUT, 30, 4096).replace(/1/g, 'l').replace(/0/g, 'o'),
    ].map((s) => Buffer.from(s, 'utf8')),
    hints: { dictionary: ['-', ' ', '\t', 'I', 'L', 'O', 'U', '\u0130', '\u017f', '\u00df', '0', 'Z'] },
    run(input) {
      const text = input.toString('utf8');
      const { days, seq } = decodeLeaseCode(SECRET, CHECKOUT, text);
      check(Number.isInteger(days) && days >= 1 && days <= 255 && Number.isInteger(seq) && seq >= 1 && seq <= 65535, 'days or seq out of range');
      check(canonical(encodeLeaseCode(SECRET, CHECKOUT, days, seq)) === canonical(text), 'an accepted code is not the code for what it grants');
    },
    allocationCap: (input) => 8 * input.length + 64 * 1024,
  }),
};
