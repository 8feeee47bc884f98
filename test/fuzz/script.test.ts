// scripts/fuzz.ts as a user runs it (built, from dist/): the target list, a short run with a seed, the
// replay of a kept input, and an input rebuilt from its seed and iteration, the same every time.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ALL_TARGETS } from '../../scripts/lib/fuzz/targets/index.js';
import { ROOT } from '../e2e/harness.js';
import { tempDir } from '../unit/helpers.js';
import { corpusFiles } from './fuzz-suite.js';

const SCRIPT = path.join(ROOT, 'dist/scripts/fuzz.js');

async function fuzz(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [SCRIPT, ...args], { cwd: ROOT });
    return { code: 0, out: stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

describe('scripts/fuzz.ts', () => {
  it('lists every target', async () => {
    const r = await fuzz(['--list']);
    expect(r.code).toBe(0);
    for (const t of ALL_TARGETS) expect(r.out).toContain(t.name);
  });

  it('runs targets for a time with a seed and reports each', async () => {
    const { dir, cleanup } = await tempDir('carryon-fuzz-script-');
    try {
      const r = await fuzz(['--seconds', '2', '--target', 'manifest,lease-code', '--seed', '11', '--out', dir]);
      expect(r.out).toContain('seed 11');
      expect(r.out).toMatch(/^manifest: \d+ iterations .* 1 error codes \(MANIFEST_INVALID×\d+\).* 0 failures$/m);
      expect(r.out).toMatch(/^lease-code: \d+ iterations .* 0 failures$/m);
      expect(r.code).toBe(0);
    } finally {
      await cleanup();
    }
  });

  it('replays a kept input, and rebuilds an input from its seed and iteration', async () => {
    const kept = corpusFiles('json-desktop-policy')[0]!;
    const r = await fuzz(['--target', 'json-desktop-policy', '--replay', kept]);
    expect(r.out).toContain('refused with BAD_REQUEST');
    expect(r.code).toBe(0);
    const { dir, cleanup } = await tempDir('carryon-fuzz-script-');
    try {
      const a = await fuzz(['--target', 'tar', '--seed', '3', '--iteration', '77', '--out', path.join(dir, 'a')]);
      const b = await fuzz(['--target', 'tar', '--seed', '3', '--iteration', '77', '--out', path.join(dir, 'b')]);
      expect(a.code).toBe(0);
      expect(b.code).toBe(0);
      const bytes = readFileSync(path.join(dir, 'a', 'tar-s3-i77.bin'));
      expect(bytes.length).toBeGreaterThan(0);
      expect(readFileSync(path.join(dir, 'b', 'tar-s3-i77.bin')).equals(bytes)).toBe(true);
    } finally {
      await cleanup();
    }
  });

  it('refuses an unknown option or target with exit 2 and the usage', async () => {
    expect(await fuzz(['--target', 'nope'])).toMatchObject({ code: 2, out: expect.stringContaining('--list') });
    expect(await fuzz(['--frobnicate'])).toMatchObject({ code: 2, out: expect.stringContaining('usage') });
  });
});
