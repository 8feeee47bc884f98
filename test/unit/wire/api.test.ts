import { describe, expect, it } from 'vitest';
import {
  blockId,
  MAX_GET_IDS,
  parseCheckoutInfo,
  parseCheckoutRequest,
  parseIdList,
  parseName,
  parsePersonaPushInfo,
  parseUploadEntryName,
  uploadEntryName,
} from '../../../src/index.js';
import { expectCode } from '../helpers.js';

const A = blockId(Buffer.from('a'));
const B = blockId(Buffer.from('b'));

describe('upload entry names', () => {
  it('accepts b/<id> and p/<id>/<base>, and round-trips through uploadEntryName', () => {
    expect(parseUploadEntryName(`b/${A}`)).toEqual({ kind: 'block', id: A });
    expect(parseUploadEntryName(`p/${A}/${B}`)).toEqual({ kind: 'patch', id: A, base: B });
    expect(parseUploadEntryName(`z/${A}`)).toEqual({ kind: 'frame', id: A });
    for (const e of [{ kind: 'block', id: A } as const, { kind: 'frame', id: A } as const, { kind: 'patch', id: A, base: B } as const]) {
      expect(parseUploadEntryName(uploadEntryName(e))).toEqual(e);
    }
    expect(uploadEntryName({ kind: 'block', id: A })).toBe(`b/${A}`);
    expect(uploadEntryName({ kind: 'patch', id: A, base: B })).toBe(`p/${A}/${B}`);
  });

  it.each([
    ['empty', ''],
    ['a bare id', A],
    ['parent path', '../x'],
    ['parent path with an id', `../${A}`],
    ['b/ with a traversal', `b/../${A}`],
    ['leading slash', `/b/${A}`],
    ['trailing slash', `b/${A}/`],
    ['double slash', `b//${A}`],
    ['extra part on b', `b/${A}/${B}`],
    ['patch without base', `p/${A}`],
    ['patch with an extra part', `p/${A}/${B}/x`],
    ['patch with trailing slash', `p/${A}/${B}/`],
    ['uppercase id', `b/${A.toUpperCase()}`],
    ['uppercase base', `p/${A}/${B.toUpperCase()}`],
    ['uppercase kind', `B/${A}`],
    ['unknown kind', `x/${A}`],
    ['short id', `b/${A.slice(1)}`],
    ['long id', `b/${A}0`],
    ['backslash separator', `b\\${A}`],
    ['a NUL', `b/${A}\0`],
  ])('rejects %s with TAR_INVALID', async (_what, name) => {
    await expectCode(() => parseUploadEntryName(name), 'TAR_INVALID');
  });
});

describe('parseIdList', () => {
  it('accepts {ids:[...]} of valid ids up to the limit, including an empty list', () => {
    expect(parseIdList({ ids: [A, B, A] }, 10)).toEqual([A, B, A]);
    expect(parseIdList({ ids: [] }, 10)).toEqual([]);
    const max = Array.from({ length: MAX_GET_IDS }, () => A);
    expect(parseIdList({ ids: max }, MAX_GET_IDS)).toHaveLength(MAX_GET_IDS);
  });

  it('rejects more ids than the limit with PAYLOAD_TOO_LARGE', async () => {
    await expectCode(() => parseIdList({ ids: [A, B, A] }, 2), 'PAYLOAD_TOO_LARGE');
    await expectCode(() => parseIdList({ ids: Array.from({ length: MAX_GET_IDS + 1 }, () => A) }, MAX_GET_IDS), 'PAYLOAD_TOO_LARGE');
  });

  it.each<[string, unknown]>([
    ['null', null],
    ['undefined', undefined],
    ['a string', 'ids'],
    ['an array', [A]],
    ['no ids field', { id: [A] }],
    ['ids not an array', { ids: A }],
    ['ids an object', { ids: { 0: A } }],
    ['a bad id', { ids: [A, 'nope'] }],
    ['an uppercase id', { ids: [A.toUpperCase()] }],
    ['a number id', { ids: [42] }],
    ['a null id', { ids: [null] }],
  ])('rejects %s with BAD_REQUEST', async (_what, body) => {
    await expectCode(() => parseIdList(body, 100), 'BAD_REQUEST');
  });
});

describe('parseName', () => {
  it.each(['a', 'Z', '0', 'win11', 'my-desktop', 'my_desktop.v2', 'a'.repeat(64), 'A1.b-c_d'])('accepts %j', (name) => {
    expect(parseName(name, 'desktop')).toBe(name);
  });

  it.each<unknown>(['', '.', '..', '.hidden', '-flag', '_x', 'a'.repeat(65), 'a/b', '../x', 'a b', 'a\nb', 'é', 'a:b', 'a\\b', null, 42, ['a']])(
    'rejects %j with INVALID_ARGUMENT naming what it is',
    async (name) => {
      const err = await expectCode(() => parseName(name, 'desktop'), 'INVALID_ARGUMENT');
      expect(err.message).toContain('desktop');
    },
  );

  // Found by the fuzz target json-persona-push: {"desktop": {"toString": true}} made String(value)
  // in the error's data throw a TypeError ("Cannot convert object to primitive value").
  it('rejects an object without a callable toString with INVALID_ARGUMENT, not a TypeError', async () => {
    const err = await expectCode(() => parseName(JSON.parse('{"toString":true,"valueOf":1}'), 'desktop'), 'INVALID_ARGUMENT');
    expect(err.data.value).toBe('{"toString":true,"valueOf":1}');
    await expectCode(() => parsePersonaPushInfo({ baseVersion: 1, editedAt: 0, desktop: { toString: 1 } }), 'INVALID_ARGUMENT');
  });
});

describe('parseCheckoutRequest', () => {
  it('accepts a device id of 8-64 letters, digits or dashes, defaulting the name to the device', () => {
    expect(parseCheckoutRequest({ device: 'abcd-1234' })).toEqual({ device: 'abcd-1234', deviceName: 'abcd-1234' });
    expect(parseCheckoutRequest({ device: 'A'.repeat(64), deviceName: "Ann's laptop" })).toEqual({ device: 'A'.repeat(64), deviceName: "Ann's laptop" });
    expect(parseCheckoutRequest({ device: '12345678', deviceName: 5 })).toEqual({ device: '12345678', deviceName: '12345678' });
  });

  it('cuts a long device name to 128 characters', () => {
    expect(parseCheckoutRequest({ device: 'device-01', deviceName: 'n'.repeat(500) }).deviceName).toBe('n'.repeat(128));
  });

  it.each<[string, unknown]>([
    ['null body', null],
    ['undefined body', undefined],
    ['empty object', {}],
    ['short device', { device: 'abc' }],
    ['7 characters', { device: '1234567' }],
    ['65 characters', { device: 'a'.repeat(65) }],
    ['a slash', { device: 'abcd/1234' }],
    ['an underscore', { device: 'abcd_1234' }],
    ['a space', { device: 'abcd 1234' }],
    ['a number', { device: 12345678 }],
    ['a newline at the end', { device: 'abcd1234\n' }],
  ])('rejects %s with BAD_REQUEST', async (_what, body) => {
    await expectCode(() => parseCheckoutRequest(body), 'BAD_REQUEST');
  });
});

describe('parseCheckoutInfo (a server answer the laptop receives)', () => {
  const good = {
    checkoutId: '6f1c8c2e-6d8e-4b8e-9a51-1c7d2f0a9b01', desktop: 'desk', version: 3, manifestId: A, resumed: false, personaVersion: 2,
    leaseExpiresAt: '2030-01-01T00:00:00.000Z', leaseDays: 30, leaseSecret: Buffer.alloc(32, 7).toString('base64'),
  };

  it('keeps a well-formed answer, without fields it does not know; the lease fields may be absent', () => {
    // a server older than encryption at rest: not required
    expect(parseCheckoutInfo({ ...good, extra: 'x' })).toEqual({ ...good, encryption: { required: false, escrowKey: null } });
    const { leaseExpiresAt: _e, leaseDays: _d, leaseSecret: _s, ...bare } = good;
    expect(parseCheckoutInfo(bare)).toMatchObject(bare);
  });

  it('keeps the registry scope when the server sends one', () => {
    const registryScope = { include: ['Software\\Vendor'], exclude: ['Software\\**\\*MRU*'] };
    expect(parseCheckoutInfo({ ...good, registryScope }).registryScope).toEqual(registryScope);
    expect(parseCheckoutInfo(good).registryScope).toBeUndefined();
  });

  it.each<[string, Record<string, unknown>]>([
    ['a checkout id with a slash', { checkoutId: '../../persona' }],
    ['a checkout id that is an object', { checkoutId: { x: 1 } }],
    ['a desktop name with a slash', { desktop: 'a/b' }],
    ['a version as text', { version: '1; DROP TABLE checkouts' }],
    ['version 0', { version: 0 }],
    ['a manifest id that is not hex', { manifestId: 'z'.repeat(64) }],
    ['resumed as text', { resumed: 'yes' }],
    ['a persona version as text', { personaVersion: '2' }],
    ['a lease expiry that is not a time', { leaseExpiresAt: 'soon' }],
    ['a lease secret that is a number', { leaseSecret: 42 }],
    ['a lease secret that is not base64', { leaseSecret: 'a b' }],
    ['a registry scope that is text', { registryScope: 'all' }],
    ['a registry scope whose exclude list holds a number', { registryScope: { include: null, exclude: [1] } }],
    ['a registry scope without an exclude list', { registryScope: { include: ['Software'] } }],
  ])('refuses %s with INTERNAL (the server broke the protocol)', async (_what, change) => {
    await expectCode(() => parseCheckoutInfo({ ...good, ...change }), 'INTERNAL');
  });
});
