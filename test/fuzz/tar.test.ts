// CI fuzz of unpackEntries (src/wire/tar.ts): upload tar streams damaged in bytes and header fields.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { evaluate } from '../../scripts/lib/fuzz/harness.js';
import { tarTarget } from '../../scripts/lib/fuzz/targets/tar.js';
import { fuzzTarget } from './fuzz-suite.js';

const CORPUS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'corpus', 'tar');

describe('fuzz: tar streams', () => {
  fuzzTarget(tarTarget, 2000);

  // Found by `fuzz.js --seed 424242` (iteration 52436) and `--seed 777` (iteration 204) against tar-stream's
  // reader: a base-256 size field with a bad lead byte made it read a size of null and wait forever. Our
  // reader refuses any size field that is not octal (TAR_INVALID); these inputs are replayed from
  // corpus/tar/ by fuzzTarget as well.
  it('a base-256 size field with a bad lead byte is refused, not a hang', async () => {
    const target = { ...(await tarTarget.create()), timeoutMs: 2000 };
    const o = await evaluate(target, readFileSync(path.join(CORPUS, 'size-base256-bad-lead-byte.bin')));
    expect(o.kind === 'failure' ? `${o.type}: ${o.message}` : 'ok').toBe('ok');
  });
});
