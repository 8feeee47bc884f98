import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  asCarryonError,
  CarryonError,
  describeFailure,
  ERROR_CODES,
  errorFromBody,
  exitCodeOf,
  httpStatusOf,
  isErrorCode,
  shownValue,
  type ErrorCode,
} from '../../src/index.js';
import { caught } from './helpers.js';

const codes = Object.keys(ERROR_CODES) as ErrorCode[];

describe('error code table', () => {
  it('has codes at all', () => {
    expect(codes.length).toBeGreaterThan(10);
    expect(codes).toContain('INTERNAL');
    expect(codes).toContain('BLOCK_CORRUPT');
    expect(codes).toContain('BLOCK_NOT_FOUND');
  });

  it.each(codes)('%s is SCREAMING_SNAKE with an HTTP status, an exit code and a description', (code) => {
    expect(code).toMatch(/^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/);
    const row = ERROR_CODES[code];
    expect(Number.isInteger(row.http)).toBe(true);
    expect(row.http).toBeGreaterThanOrEqual(400);
    expect(row.http).toBeLessThan(600);
    expect(Number.isInteger(row.exit)).toBe(true);
    expect(row.exit).toBeGreaterThan(0); // 0 means success to a shell
    expect(row.exit).toBeLessThan(126); // 126+ are reserved by shells
    expect(row.what.length).toBeGreaterThan(0);
    expect(httpStatusOf(code)).toBe(row.http);
    expect(exitCodeOf(code)).toBe(row.exit);
    expect(isErrorCode(code)).toBe(true);
  });

  it('INTERNAL exits 1 and maps to HTTP 500', () => {
    expect(exitCodeOf('INTERNAL')).toBe(1);
    expect(httpStatusOf('INTERNAL')).toBe(500);
  });

  it('isErrorCode rejects anything that is not a code', () => {
    for (const s of ['', 'internal', 'NOPE', 'toString', 'constructor', '__proto__', 42, null, undefined, {}]) {
      expect(isErrorCode(s)).toBe(false);
    }
  });
});

describe('CarryonError', () => {
  it('carries code, message, data and cause, and serialises without the cause', () => {
    const cause = new Error('low level');
    const e = new CarryonError('BLOCK_CORRUPT', 'bad block', { id: 'x' }, cause);
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('CarryonError');
    expect(e.code).toBe('BLOCK_CORRUPT');
    expect(e.message).toBe('bad block');
    expect(e.data).toEqual({ id: 'x' });
    expect(e.cause).toBe(cause);
    expect(JSON.parse(JSON.stringify(e))).toEqual({ code: 'BLOCK_CORRUPT', message: 'bad block', data: { id: 'x' } });
  });

  it('defaults data to {} and has no cause unless given', () => {
    const e = new CarryonError('NOT_FOUND', 'nope');
    expect(e.data).toEqual({});
    expect('cause' in e).toBe(false);
  });
});

describe('errorFromBody', () => {
  it.each(codes)('rebuilds %s from {error:{code,message,data}}', (code) => {
    const sent = new CarryonError(code, `message for ${code}`, { n: 1, nested: { a: [1, 2] } });
    const body = JSON.parse(JSON.stringify({ error: sent.toJSON() }));
    const got = errorFromBody(httpStatusOf(code), body);
    expect(got).toBeInstanceOf(CarryonError);
    expect(got.code).toBe(code);
    expect(got.message).toBe(`message for ${code}`);
    expect(got.data).toEqual({ n: 1, nested: { a: [1, 2] } });
  });

  it('uses {} when data is missing or not an object', () => {
    expect(errorFromBody(404, { error: { code: 'USER_NOT_FOUND', message: 'm' } }).data).toEqual({});
    expect(errorFromBody(404, { error: { code: 'USER_NOT_FOUND', message: 'm', data: 'str' } }).data).toEqual({});
    expect(errorFromBody(404, { error: { code: 'USER_NOT_FOUND', message: 'm', data: null } }).data).toEqual({});
  });

  it('gives INTERNAL, with the status, for a body that is not a carryon error', () => {
    const garbage: unknown[] = [
      null,
      undefined,
      'Bad Gateway',
      42,
      [],
      {},
      { error: null },
      { error: 'oops' },
      { error: { code: 'NO_SUCH_CODE', message: 'm' } },
      { error: { code: 'toString', message: 'm' } },
      { error: { code: 'BLOCK_CORRUPT' } },
      { error: { code: 'BLOCK_CORRUPT', message: 5 } },
      { error: { code: 5, message: 'm' } },
    ];
    for (const body of garbage) {
      const e = errorFromBody(502, body);
      expect(e).toBeInstanceOf(CarryonError);
      expect(e.code).toBe('INTERNAL');
      expect(e.data).toEqual({ status: 502 });
      expect(e.message).toContain('502');
    }
  });
});

describe('asCarryonError', () => {
  it('returns a CarryonError unchanged', () => {
    const e = new CarryonError('ABORTED', 'stop');
    expect(asCarryonError(e)).toBe(e);
  });

  it('maps a real fs ENOENT error to IO_ERROR with errno, path and cause', async () => {
    const missing = path.join(os.tmpdir(), 'carryon-no-such-dir-7f3a', 'file');
    const err = await caught(() => fs.readFile(missing));
    const e = asCarryonError(err);
    expect(e.code).toBe('IO_ERROR');
    expect(e.data.errno).toBe('ENOENT');
    expect(e.data.path).toBe(missing);
    expect(e.cause).toBe(err);
    expect(e.message).toContain('open');
  });

  it('maps unknown errors and non-errors to INTERNAL, keeping the original as cause', () => {
    const plain = new Error('boom');
    expect(asCarryonError(plain).code).toBe('INTERNAL');
    expect(asCarryonError(plain).cause).toBe(plain);
    // An error with an errno-like code but no syscall is not an fs error.
    expect(asCarryonError(Object.assign(new Error('x'), { code: 'ENOENT' })).code).toBe('INTERNAL');
    for (const v of ['a string', 42, null, undefined, { code: 'EPERM' }]) expect(asCarryonError(v).code).toBe('INTERNAL');
  });
});

describe('describeFailure', () => {
  it.each(codes)('gives the exit code of the table for %s', (code) => {
    const f = describeFailure(new CarryonError(code, 'what happened', { k: 'v' }));
    expect(f.exitCode).toBe(ERROR_CODES[code].exit);
    expect(f.error.code).toBe(code);
    // INTERNAL adds the stack after the first line (for the CLI's stderr); the first line is fixed.
    expect(f.text.split('\n')[0]).toBe(`error ${code}: what happened`);
    expect(JSON.parse(f.json)).toEqual({ error: { code, message: 'what happened', data: { k: 'v' } } });
  });

  it('reports an fs error as IO_ERROR with exit 9', async () => {
    const err = await caught(() => fs.stat(path.join(os.tmpdir(), 'carryon-no-such-file-91b2')));
    const f = describeFailure(err);
    expect(f.error.code).toBe('IO_ERROR');
    expect(f.exitCode).toBe(ERROR_CODES.IO_ERROR.exit);
  });

  it('reports an unknown error as INTERNAL: the stack on the text line, nothing of it in the JSON', () => {
    const f = describeFailure(new Error('secret-detail-123'));
    expect(f.exitCode).toBe(1);
    expect(f.error.code).toBe('INTERNAL');
    expect(f.text).toContain('secret-detail-123');
    expect(f.json).not.toContain('secret-detail-123');
    expect(JSON.parse(f.json).error.code).toBe('INTERNAL');
  });
});

describe('shownValue', () => {
  it('shows any untrusted value, short, without throwing', () => {
    expect(shownValue('x'.repeat(100))).toBe('x'.repeat(80));
    expect(shownValue(42)).toBe('42');
    expect(shownValue(null)).toBe('null');
    expect(shownValue(undefined)).toBe('undefined');
    expect(shownValue(['a'])).toBe('["a"]');
    // String() throws on these: no callable toString or valueOf.
    expect(shownValue(JSON.parse('{"toString":1,"valueOf":2}'))).toBe('{"toString":1,"valueOf":2}');
    expect(shownValue(Object.create(null))).toBe('{}');
    expect(shownValue(10n)).toBe('bigint');
  });
});
