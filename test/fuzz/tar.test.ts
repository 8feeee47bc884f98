// CI fuzz of unpackEntries (src/wire/tar.ts): upload tar streams damaged in bytes and header fields.
import { describe } from 'vitest';
import { tarTarget } from '../../scripts/lib/fuzz/targets/tar.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: tar streams', () => {
  fuzzTarget(tarTarget, 2000);
});
