// CI fuzz of unpackEntries (src/wire/tar.ts): upload tar streams damaged in bytes and header fields.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { evaluate } from '../../scripts/lib/fuzz/harness.js';
import { tarTarget } from '../../scripts/lib/fuzz/targets/tar.js';
import { fuzzTarget } from './fuzz-suite.js';

const OPEN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'corpus-open', 'tar');

describe('fuzz: tar streams', () => {
  fuzzTarget(tarTarget, 2000);

  // KNOWN FAILURE, left open for the work on src/wire/tar.ts going on in another branch (found by
  // `fuzz.js --seed 424242`, iteration 52436, and `--seed 777`, iteration 204: corpus-open/tar/hang-*.bin;
  // minimized here).
  // A header whose size field has its high bit set (base-256) but a lead byte other than 0x80 or 0xff
  // makes tar-stream's parse256 return null; `null >= 0` passes its size check, unpackEntries reads
  // `h.size ?? 0` as 0 (under the limit), and the entry's data stream never ends: unpackEntries never
  // answers, and an upload with such a header holds its request open. A fix: refuse a header whose
  // size is not a non-negative safe integer with TAR_INVALID before reading the entry. Once fixed, this
  // test fails: move the file to corpus/tar/ and drop the test.
  it.fails('KNOWN FAILURE: a base-256 size field with a bad lead byte is refused (today unpackEntries hangs)', async () => {
    const target = { ...(await tarTarget.create()), timeoutMs: 2000 };
    const o = await evaluate(target, readFileSync(path.join(OPEN, 'size-base256-bad-lead-byte.bin')));
    expect(o.kind === 'failure' ? `${o.type}: ${o.message}` : 'ok').toBe('ok');
  });
});
