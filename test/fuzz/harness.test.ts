// The fuzz harness itself (scripts/lib/fuzz): it must catch each kind of bug it is there to catch, or
// the fuzz tests prove nothing. A target with planted bugs, one per leading byte, is run through it.
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { evaluate, inputFor, PropertyViolation, runFuzz, type FuzzTarget, type TargetSpec } from '../../scripts/lib/fuzz/harness.js';
import { iterationRng, mutateBytes, mutateJson } from '../../scripts/lib/fuzz/mutate.js';
import { CarryonError } from '../../src/index.js';
import { tempDir } from '../unit/helpers.js';

const MiB = 1024 * 1024;

/** A parser with a planted bug for each leading byte from 'B' on; anything else is fine or refused. */
function planted(): FuzzTarget {
  return {
    codes: ['BAD_REQUEST'],
    corpus: () => [Buffer.from('ok'), Buffer.from('ok too')],
    timeoutMs: 50,
    async run(input) {
      switch (String.fromCharCode(input[0] ?? 0)) {
        case 'B':
          return (null as unknown as { x: number }).x; // TypeError
        case 'C':
          throw new CarryonError('INTERNAL', 'not a code this parser declares');
        case 'D':
          throw new PropertyViolation('accepted, but the round trip differs');
        case 'E':
          return new Promise(() => undefined); // never answers
        case 'F':
          return Buffer.alloc(8 * MiB);
        case 'G':
          return new Uint8Array(8 * MiB);
        case 'o':
          return undefined;
        default:
          throw new CarryonError('BAD_REQUEST', 'refused');
      }
    },
    allocationCap: (input) => input.length + MiB,
  };
}

describe('fuzz harness', () => {
  it('classifies accepted, refused and every kind of failure', async () => {
    const t = planted();
    const kind = async (s: string): Promise<string> => {
      const o = await evaluate(t, Buffer.from(s));
      return o.kind === 'failure' ? o.type : o.kind === 'rejected' ? `rejected ${o.code}` : o.kind;
    };
    expect(await kind('ok')).toBe('accepted');
    expect(await kind('x')).toBe('rejected BAD_REQUEST');
    expect(await kind('B')).toBe('raw-error');
    expect(await kind('C')).toBe('unexpected-code');
    expect(await kind('D')).toBe('invariant');
    expect(await kind('E')).toBe('hang');
    expect(await kind('F')).toBe('allocation');
    expect(await kind('G')).toBe('allocation');
    // After a hang, allocations are metered again from a clean state.
    expect(await kind('ok')).toBe('accepted');
  });

  it('records each distinct failure once, with a reproducer holding the failing bytes', async () => {
    const { dir, cleanup } = await tempDir('carryon-fuzz-harness-');
    try {
      const spec: TargetSpec = {
        name: 'planted',
        about: 'planted bugs',
        create: () => ({ ...planted(), corpus: () => [Buffer.from('ok'), Buffer.from('x refused'), Buffer.from('B'), Buffer.from('B again'), Buffer.from('D')] }),
      };
      const r = await runFuzz(spec, { seed: 1, iterations: 5, reproDir: dir });
      expect(r.failures.map((f) => [f.iteration, f.type])).toEqual([[1, 'seed-rejected'], [2, 'raw-error'], [4, 'invariant']]);
      const f = r.failures[1]!;
      expect(existsSync(f.file!)).toBe(true);
      expect(readFileSync(f.file!).toString()).toBe('B');
      expect(JSON.parse(readFileSync(f.file!.replace(/\.bin$/, '.json'), 'utf8'))).toMatchObject({ target: 'planted', seed: 1, iteration: 2, type: 'raw-error' });
    } finally {
      await cleanup();
    }
  });

  it('gives iteration n of a seed the same input every time, and other seeds other inputs', () => {
    const t = planted();
    const corpus = [Buffer.from('a corpus input of some length'), Buffer.from('{"another": [1, 2, 3]}')];
    const a = Array.from({ length: 200 }, (_, n) => inputFor(t, corpus, 7, n));
    const b = Array.from({ length: 200 }, (_, n) => inputFor(t, corpus, 7, n));
    const c = Array.from({ length: 200 }, (_, n) => inputFor(t, corpus, 8, n));
    expect(a.every((x, n) => x.equals(b[n]!))).toBe(true);
    expect(a.filter((x, n) => !x.equals(c[n]!)).length).toBeGreaterThan(150);
    expect(a[0]).toBe(corpus[0]); // the corpus inputs come first, unchanged
  });

  it('mutates any input, even an empty one, and JSON bodies into JSON or damaged text', () => {
    const inputs = [Buffer.alloc(0), Buffer.from([1]), Buffer.from('x'.repeat(1000))];
    const json = [Buffer.from('{"a":[1,"b",null],"c":{"d":true}}'), Buffer.from('[]'), Buffer.from('7')];
    let changed = 0;
    let parsed = 0;
    for (let n = 0; n < 1500; n++) {
      const rng = iterationRng(3, n);
      const src = inputs[n % 3]!;
      const out = mutateBytes(rng, src, inputs, { dictionary: ['tok'], fields: () => [{ offset: 0, width: 4, littleEndian: true }] });
      expect(Buffer.isBuffer(out)).toBe(true);
      if (src.length > 0 && !out.equals(src)) changed++;
      const j = mutateJson(rng, json[n % 3]!, json, ['a', 'c']);
      try {
        JSON.parse(j.toString('utf8'));
        parsed++;
      } catch {
        // damaged text, for the boundary to refuse
      }
    }
    expect(changed).toBeGreaterThan(950); // of the 1000 non-empty inputs
    expect(parsed).toBeGreaterThan(1000);
    expect(parsed).toBeLessThan(1500);
  });
});
