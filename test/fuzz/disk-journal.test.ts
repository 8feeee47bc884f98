// CI fuzz of the laptop's disk journal (client/disk-journal.ts): damaged dirty maps.
import { describe } from 'vitest';
import { journalTarget } from '../../scripts/lib/fuzz/targets/journal.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: disk journal', () => {
  fuzzTarget(journalTarget, 5000);
});
