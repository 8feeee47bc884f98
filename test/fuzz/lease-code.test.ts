// CI fuzz of offline lease codes (src/lease): text typed by people.
import { describe } from 'vitest';
import { leaseCodeTarget } from '../../scripts/lib/fuzz/targets/lease.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: lease codes', () => {
  fuzzTarget(leaseCodeTarget, 4000);
});
