// CI fuzz of the persona formats: .reg files, persona snapshots and snapshot deltas.
import { describe } from 'vitest';
import { personaDeltaTarget, personaSnapshotTarget, regFileTarget } from '../../scripts/lib/fuzz/targets/persona.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: persona', () => {
  fuzzTarget(regFileTarget, 3000);
  fuzzTarget(personaSnapshotTarget, 2500);
  fuzzTarget(personaDeltaTarget, 2500);
});
