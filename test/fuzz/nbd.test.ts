// CI fuzz of the NBD server (src/nbd): damaged client streams over a real Unix socket.
import { describe } from 'vitest';
import { nbdTarget } from '../../scripts/lib/fuzz/targets/nbd.js';
import { fuzzTarget } from './fuzz-suite.js';

describe('fuzz: NBD', () => {
  fuzzTarget(nbdTarget, 1200);
});
