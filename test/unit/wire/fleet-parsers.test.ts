// The fleet requests' parsers (src/wire/api.ts): every bad input is refused with BAD_REQUEST before it
// reaches the database.
import { describe, expect, it } from 'vitest';
import {
  CarryonError, keyCheck, MAX_ESCROW_BYTES, newEscrowKeyPair, parseDaysRequest, parseDesktopPolicy, parseDeviceRequest, parseEscrowRequest, parseHeartbeatRequest, parseRequestUpdate,
  parseRestorePointRequest, sealToEscrow,
} from '../../../src/index.js';

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as CarryonError).code;
  }
  return 'none';
}

describe('fleet request parsers', () => {
  it('heartbeat: non-negative integers, missing ones are 0', () => {
    expect(parseHeartbeatRequest({ pendingBytes: 5, pendingBlocks: 1 })).toEqual({ pendingBytes: 5, pendingBlocks: 1, leaseCodeSeq: 0 });
    expect(parseHeartbeatRequest({ pendingBytes: 5, pendingBlocks: 1, leaseCodeSeq: 3 })).toEqual({ pendingBytes: 5, pendingBlocks: 1, leaseCodeSeq: 3 });
    expect(parseHeartbeatRequest({})).toEqual({ pendingBytes: 0, pendingBlocks: 0, leaseCodeSeq: 0 });
    for (const bad of [{ pendingBytes: -1 }, { pendingBytes: 1.5 }, { pendingBlocks: '3' }, { pendingBytes: Number.MAX_VALUE }, { leaseCodeSeq: -2 }]) expect(codeOf(() => parseHeartbeatRequest(bad))).toBe('BAD_REQUEST');
  });

  it('device registration: a UUID and a 1-200 character name', () => {
    const device = '0b8f6f1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b';
    expect(parseDeviceRequest({ device, name: 'laptop' })).toEqual({ device, name: 'laptop' });
    for (const bad of [{}, { device, name: '' }, { device, name: 'x'.repeat(201) }, { device: 'not-a-uuid', name: 'x' }, { device: device.toUpperCase(), name: 'x' }, null]) {
      expect(codeOf(() => parseDeviceRequest(bad))).toBe('BAD_REQUEST');
    }
  });

  it('request updates: a known state and a small object', () => {
    expect(parseRequestUpdate({ state: 'done', detail: { version: 2 } })).toEqual({ state: 'done', detail: { version: 2 } });
    expect(parseRequestUpdate({ state: 'in-progress' })).toEqual({ state: 'in-progress', detail: {} });
    for (const bad of [{ state: 'requested' }, { state: 'DONE' }, { state: 'done', detail: [] }, { state: 'done', detail: 'x' }, { state: 'done', detail: { big: 'x'.repeat(5000) } }]) {
      expect(codeOf(() => parseRequestUpdate(bad))).toBe('BAD_REQUEST');
    }
  });

  it('desktop policy: known fields with the right types; null clears a number', () => {
    expect(parseDesktopPolicy({ leaseDays: 3, replicateMinutes: null, rollbackKeepsLocal: true, files: 'newest', registry: 'server' }))
      .toEqual({ leaseDays: 3, replicateMinutes: null, rollbackKeepsLocal: true, files: 'newest', registry: 'server' });
    expect(parseDesktopPolicy({})).toEqual({});
    for (const bad of [{ leaseDays: '3' }, { leaseDays: Infinity }, { rollbackKeepsLocal: 1 }, { files: 'mine' }, { registry: 'newest-ish' }, { colour: 'red' }]) {
      expect(codeOf(() => parseDesktopPolicy(bad)), JSON.stringify(bad)).toBe('BAD_REQUEST');
    }
  });

  it('desktop policy: encryption is required, off, or null (follow the image)', () => {
    expect(parseDesktopPolicy({ encryption: 'required' })).toEqual({ encryption: 'required' });
    expect(parseDesktopPolicy({ encryption: 'off', leaseDays: 2 })).toEqual({ encryption: 'off', leaseDays: 2 });
    expect(parseDesktopPolicy({ encryption: null })).toEqual({ encryption: null });
    for (const bad of [{ encryption: 'on' }, { encryption: true }, { encryption: 'REQUIRED' }, { encryption: '' }]) expect(codeOf(() => parseDesktopPolicy(bad)), JSON.stringify(bad)).toBe('BAD_REQUEST');
  });

  describe('escrow deposit', () => {
    const pub = newEscrowKeyPair().publicKey;
    const key = Buffer.alloc(32, 9);
    const sealed = sealToEscrow(pub, key, 'co-1');
    const good = { sealed: sealed.toString('base64'), keyCheck: keyCheck(key) };

    it('a real seal and its key check', () => {
      const r = parseEscrowRequest(good);
      expect(r.sealed.equals(sealed)).toBe(true);
      expect(r.keyCheck).toBe(keyCheck(key));
      expect(sealed.length).toBeLessThanOrEqual(MAX_ESCROW_BYTES);
    });

    it.each([
      ['not an object', 'x'], ['null', null], ['an array', [good]], ['an extra field', { ...good, dataKey: key.toString('hex') }],
      ['no sealed', { keyCheck: good.keyCheck }], ['sealed a number', { ...good, sealed: 5 }], ['sealed empty', { ...good, sealed: '' }],
      ['url-safe base64', { ...good, sealed: good.sealed.replace(/\+/g, '-').replace(/\//g, '_') + (good.sealed.includes('+') || good.sealed.includes('/') ? '' : '-') }],
      ['base64 without padding', { ...good, sealed: Buffer.concat([sealed, Buffer.from([1])]).toString('base64').replace(/=+$/, '') }],
      ['base64 with a newline', { ...good, sealed: `${good.sealed.slice(0, 20)}
${good.sealed.slice(20)}` }],
      ['one byte over the limit', { ...good, sealed: Buffer.concat([sealed, Buffer.alloc(MAX_ESCROW_BYTES + 1 - sealed.length)]).toString('base64') }],
      ['a megabyte', { ...good, sealed: 'QUFB'.repeat(1 << 18) }],
      ['another format version', { ...good, sealed: Buffer.concat([Buffer.from([2]), sealed.subarray(1)]).toString('base64') }],
      ['not an X25519 key', { ...good, sealed: Buffer.concat([Buffer.from([1]), Buffer.alloc(44, 0x30), sealed.subarray(45)]).toString('base64') }],
      ['too short for a sealed key', { ...good, sealed: sealed.subarray(0, 45 + 28 + 15).toString('base64') }],
      ['keyCheck short', { ...good, keyCheck: good.keyCheck.slice(1) }], ['keyCheck upper case', { ...good, keyCheck: good.keyCheck.toUpperCase() }],
      ['keyCheck not hex', { ...good, keyCheck: 'zzzzzzzzzzzzzzzz' }], ['keyCheck a number', { ...good, keyCheck: 1234567890123456 }],
    ])('%s: BAD_REQUEST', (_what, body) => {
      expect(codeOf(() => parseEscrowRequest(body))).toBe('BAD_REQUEST');
    });
  });

  // Found by the fuzz target json-desktop-policy: a JSON body that is not an object (`14`, `true`,
  // `"x"`) made `'leaseDays' in body` throw a TypeError, answered as INTERNAL instead of 400.
  it('desktop policy: a body that is not an object is BAD_REQUEST, not a TypeError', () => {
    for (const bad of [14, -0.5, true, false, '', 'leaseDays', [], [{ leaseDays: 3 }]]) {
      expect(codeOf(() => parseDesktopPolicy(bad)), JSON.stringify(bad)).toBe('BAD_REQUEST');
    }
    expect(parseDesktopPolicy(null)).toEqual({});
  });

  // Found by the fuzz target json-request-update: a detail nested some thousands deep (a 40 KB body)
  // made JSON.stringify(detail) overflow its stack: a RangeError, answered as INTERNAL.
  it('request updates: a detail nested deep is BAD_REQUEST, not a RangeError', () => {
    const deep = JSON.parse(`{"a":${'['.repeat(20000)}${']'.repeat(20000)}}`);
    expect(codeOf(() => parseRequestUpdate({ state: 'done', detail: deep }))).toBe('BAD_REQUEST');
    expect(codeOf(() => parseRequestUpdate({ state: 'done', detail: { a: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]] } }))).toBe('BAD_REQUEST');
    expect(parseRequestUpdate({ state: 'done', detail: { error: { code: 'IO_ERROR', message: 'x', data: { errno: 'ENOSPC', list: [1, [2]] } } } }).detail).toMatchObject({ error: { code: 'IO_ERROR' } });
    // The size limit is the length of its JSON, as before.
    expect(codeOf(() => parseRequestUpdate({ state: 'done', detail: { s: 'x'.repeat(4089) } }))).toBe('BAD_REQUEST');
    expect(parseRequestUpdate({ state: 'done', detail: { s: 'x'.repeat(4088) } }).detail).toEqual({ s: 'x'.repeat(4088) });
  });

  // The admin routes for leases, lease codes, rollbacks and restores read these fields inline as
  // `(body as {days}).days`: a JSON body of `null` threw a TypeError there (an INTERNAL 500, not a 400).
  // Moved here while fuzzing the JSON request parsers; the fuzz targets json-days and json-restore-point
  // cover them now.
  it('days: a number for a lease extension, a whole number for a lease code; a null body is BAD_REQUEST', () => {
    expect(parseDaysRequest({ days: 2.5 }, false)).toBe(2.5);
    expect(parseDaysRequest({ days: 3 }, true)).toBe(3);
    for (const bad of [null, {}, [], 5, 'x', { days: '3' }, { days: null }]) expect(codeOf(() => parseDaysRequest(bad, false)), JSON.stringify(bad)).toBe('BAD_REQUEST');
    expect(codeOf(() => parseDaysRequest({ days: 2.5 }, true))).toBe('BAD_REQUEST');
    expect(codeOf(() => parseDaysRequest(null, true))).toBe('BAD_REQUEST');
  });

  it('restore point: an id, optional for a rollback; a null body is no point or BAD_REQUEST, never a TypeError', () => {
    expect(parseRestorePointRequest({ restorePoint: 7 }, true)).toBe(7);
    expect(parseRestorePointRequest({}, false)).toBeUndefined();
    expect(parseRestorePointRequest(null, false)).toBeUndefined();
    for (const bad of [null, {}, { restorePoint: '7' }, { restorePoint: 1.5 }, { restorePoint: 2 ** 53 }]) expect(codeOf(() => parseRestorePointRequest(bad, true)), JSON.stringify(bad)).toBe('BAD_REQUEST');
    expect(codeOf(() => parseRestorePointRequest({ restorePoint: null }, false))).toBe('BAD_REQUEST');
  });
});
