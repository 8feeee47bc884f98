// CI fuzz of src/rdiff: deltas applied to a base, and signatures deltas are made against.
import { describe } from 'vitest';
import { rdiffDeltaTarget, rdiffSignatureTarget } from '../../scripts/lib/fuzz/targets/rdiff.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: rdiff', () => {
  fuzzTarget(rdiffDeltaTarget, 2500);
  fuzzTarget(rdiffSignatureTarget, 2000);
});
