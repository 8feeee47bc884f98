import { describe, expect, it } from 'vitest';
import { MAX_JSON_DEPTH, parseJson } from '../../src/index.js';
import { expectCode } from './helpers.js';

describe('parseJson', () => {
  it('parses what carryon writes, strings with brackets and escapes included', () => {
    const doc = { a: [1, { b: 'x[{"\\\\' }], c: null, d: '\\"[' };
    expect(parseJson(Buffer.from(JSON.stringify(doc)), 'doc')).toEqual(doc);
    expect(parseJson(JSON.stringify('['.repeat(1000)), 'doc')).toBe('['.repeat(1000));
  });

  it('refuses nesting past the bound before JSON.parse runs, and text that is not JSON', async () => {
    const nested = (n: number): string => '['.repeat(n) + ']'.repeat(n);
    expect(parseJson(nested(MAX_JSON_DEPTH), 'doc')).toBeInstanceOf(Array);
    await expectCode(() => parseJson(nested(MAX_JSON_DEPTH + 1), 'doc'), 'BAD_REQUEST');
    // 8 MB of `[`: refused by the scan (JSON.parse alone took seconds of one thread on 16 MB)
    await expectCode(() => parseJson('['.repeat(8e6), 'doc'), 'BAD_REQUEST');
    await expectCode(() => parseJson('{"a":', 'doc'), 'BAD_REQUEST');
  });
});
