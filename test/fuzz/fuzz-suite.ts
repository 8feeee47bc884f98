// The CI side of the fuzz targets (scripts/lib/fuzz/targets): each runs a fixed number of iterations
// from one fixed seed, so a run here is the same every time; the long, random-seeded runs are
// scripts/fuzz.ts. Each target also replays the inputs in test/fuzz/corpus/<target>/, the bytes of
// bugs fuzzing found before (each fixed with a regression unit test of its own).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { evaluate, runFuzz, type FuzzFailure, type TargetSpec } from '../../scripts/lib/fuzz/harness.js';

/** The seed of every CI fuzz run. Change it only with a reason: the iterations are sized by it. */
export const CI_SEED = 0x5eed2026;

const CORPUS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'corpus');
const REPRO_DIR = path.join(os.tmpdir(), 'carryon-fuzz-ci');

function shown(f: FuzzFailure): string {
  return `${f.type} at seed ${f.seed} iteration ${f.iteration}: ${f.message.split('\n')[0]} (input: ${f.file ?? `${f.input.length} bytes`})`;
}

/** The regression inputs kept for a target. */
export function corpusFiles(target: string): string[] {
  const dir = path.join(CORPUS, target);
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.bin')).sort().map((f) => path.join(dir, f)) : [];
}

/**
 * One CI test per target: `iterations` seeded inputs, each accepted (with its invariants) or refused
 * with a code the target declares. The test also proves the run reached both sides: some mutated
 * inputs pass, and (for parsers that refuse input) some are refused.
 */
export function fuzzTarget(spec: TargetSpec, iterations: number): void {
  it(`${spec.name}: ${iterations} seeded inputs are accepted with their invariants or refused with a declared code`, async () => {
    const r = await runFuzz(spec, { seed: CI_SEED, iterations, reproDir: REPRO_DIR });
    expect(r.failures.map(shown)).toEqual([]);
    expect(r.iterations).toBe(iterations);
    const target = await spec.create();
    const corpusSize = (await target.corpus()).length;
    await target.close?.();
    expect(r.accepted, 'mutated inputs that were accepted').toBeGreaterThan(corpusSize);
    if (target.codes.length > 0) expect(Object.keys(r.codes).length, 'error codes seen').toBeGreaterThan(0);
  });

  const files = corpusFiles(spec.name);
  if (files.length > 0) {
    it(`${spec.name}: the ${files.length} kept regression inputs pass`, async () => {
      const target = await spec.create();
      const bad: string[] = [];
      try {
        for (const file of files) {
          const o = await evaluate(target, readFileSync(file));
          if (o.kind === 'failure') bad.push(`${path.basename(file)}: ${o.type}: ${o.message.split('\n')[0]}`);
        }
      } finally {
        await target.close?.();
      }
      expect(bad).toEqual([]);
    });
  }
}
