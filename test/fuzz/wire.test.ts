// CI fuzz of src/wire's parsers: upload entry names and names, and every JSON request body parser.
import { describe } from 'vitest';
import { jsonTargets, wireNamesTarget } from '../../scripts/lib/fuzz/targets/wire.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: wire names and JSON request bodies', () => {
  fuzzTarget(wireNamesTarget, 4000);
  for (const t of jsonTargets) fuzzTarget(t, 1000);
});
