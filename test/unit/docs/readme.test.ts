// The README's table of error codes is the documented contract: it must list every code with the
// same HTTP status and exit code as src/errors, so the docs cannot drift from the code.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../../src/index.js';
import { ROOT } from '../../e2e/harness.js';

describe('README', () => {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const rows = new Map([...readme.matchAll(/^\| `([A-Z_]+)` \| (\d+) \| (\d+) \|/gm)].map((m) => [m[1]!, { http: Number(m[2]), exit: Number(m[3]) }]));

  it('documents every error code with its HTTP status and exit code', () => {
    for (const [code, v] of Object.entries(ERROR_CODES)) expect(rows.get(code), code).toEqual({ http: v.http, exit: v.exit });
    expect([...rows.keys()].sort()).toEqual(Object.keys(ERROR_CODES).sort());
  });

  it('has the two Quick start command lines, and .ci/run runs the test one as written', () => {
    expect(readme).toContain('npm install && npm run demo');
    const testLine = 'bash scripts/install-test-deps.sh && npm ci && npm test';
    expect(readme).toContain(testLine);
    expect(readFileSync(path.join(ROOT, '.ci/run'), 'utf8')).toContain(testLine);
  });
});
