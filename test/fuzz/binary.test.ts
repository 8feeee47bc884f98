// CI fuzz of the binary formats: disk manifests, block patches, zstd block frames.
import { describe } from 'vitest';
import { blockPatchTarget, codecTarget, manifestTarget } from '../../scripts/lib/fuzz/targets/binary.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: binary formats', () => {
  fuzzTarget(manifestTarget, 4000);
  fuzzTarget(blockPatchTarget, 3000);
  fuzzTarget(codecTarget, 3000);
});
