// Fuzz targets for src/wire: upload entry names (tar entry names of block and persona uploads) and
// desktop names, and every JSON request parser of src/wire/api.ts. A JSON target's input is the
// request body as bytes: the server's boundary (readJson) turns an empty body into {} and text that is
// not JSON into BAD_REQUEST, then the parser gets whatever JSON value it was.
import { keyCheck, MAX_ESCROW_BYTES, newEscrowKeyPair, sealToEscrow } from '../../../../src/crypto/index.js';
import { CarryonError } from '../../../../src/errors/index.js';
import { blockId, isBlockId } from '../../../../src/hash/index.js';
import { FILE_MERGE_POLICIES, REGISTRY_MERGE_POLICIES } from '../../../../src/persona/index.js';
import { ENCRYPTION_POLICIES } from '../../../../src/wire/index.js';
import {
  MAX_GET_IDS,
  parseCheckoutRequest,
  parseDaysRequest,
  parseDesktopPolicy,
  parseDeviceRequest,
  parseEscrowRequest,
  parseGetBlocksRequest,
  parseHeartbeatRequest,
  parseIdList,
  parseName,
  parsePersonaPushInfo,
  parsePersonaUploadEntryName,
  parseRequestUpdate,
  parseRestorePointRequest,
  parseUploadEntryName,
  personaUploadEntryName,
  uploadEntryName,
} from '../../../../src/wire/index.js';
import { check, type FuzzTarget, type TargetSpec } from '../harness.js';
import { jsonText, mutateJson, type Json } from '../mutate.js';

const KiB = 1024;
const ID = (s: string): string => blockId(Buffer.from(s));
const A = ID('a');
const B = ID('b');
const C = ID('c');

/** Calls each parser; a CarryonError of an allowed code counts as its answer. Rethrows the first
 *  rejection when every parser rejected, and anything else at once. */
const NAME_CODES = ['TAR_INVALID', 'INVALID_ARGUMENT'] as const;

function each(input: string, parsers: Array<(s: string) => void>, codes: readonly string[]): void {
  let first: unknown = null;
  let accepted = 0;
  for (const p of parsers) {
    try {
      p(input);
      accepted++;
    } catch (err) {
      if (!(err instanceof CarryonError) || !codes.includes(err.code)) throw err;
      first ??= err;
    }
  }
  if (accepted === 0) throw first;
}

export const wireNamesTarget: TargetSpec = {
  name: 'wire-names',
  about: 'parseUploadEntryName, parsePersonaUploadEntryName, parseName (src/wire); accepted names round-trip',
  create: () => ({
    codes: NAME_CODES,
    corpus: () => [
      uploadEntryName({ kind: 'block', id: A }),
      uploadEntryName({ kind: 'patch', id: A, base: B }),
      uploadEntryName({ kind: 'frame', id: C }),
      personaUploadEntryName({ kind: 'chunk', id: C }),
      personaUploadEntryName({ kind: 'delta', file: B, base: C }),
      'desk-01', 'a', 'A.b_c-d', 'x'.repeat(64),
    ].map((s) => Buffer.from(s, 'utf8')),
    hints: { dictionary: ['/', 'b/', 'p/', 'z/', 'r/', '..', '\\', '\0', A, A.toUpperCase(), '\u00e9', '.'] },
    run(input) {
      // tar-stream decodes entry names as UTF-8, as this does.
      const name = input.toString('utf8');
      each(name, [
        (s) => {
          const e = parseUploadEntryName(s);
          check(uploadEntryName(e) === s, `upload entry name ${JSON.stringify(s)} does not round-trip`);
          check(isBlockId(e.id) && (e.kind !== 'patch' || isBlockId(e.base)), 'parsed ids are not block ids');
        },
        (s) => {
          const e = parsePersonaUploadEntryName(s);
          check(personaUploadEntryName(e) === s, `persona entry name ${JSON.stringify(s)} does not round-trip`);
        },
        (s) => {
          check(parseName(s, 'desktop') === s, 'parseName changed the name');
          check(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(s) && !s.includes('/'), `parseName accepted ${JSON.stringify(s)}`);
        },
      ], NAME_CODES);
    },
    allocationCap: (input) => 8 * input.length + 64 * KiB,
  }),
};

interface JsonParser {
  name: string;
  parse(body: unknown): unknown;
  codes: readonly ('BAD_REQUEST' | 'PAYLOAD_TOO_LARGE' | 'INVALID_ARGUMENT')[];
  bodies: Json[];
  keys: string[];
  /** Checks on an accepted body's result; `idempotent`: parsing the result's JSON gives the same result. */
  invariants?(result: unknown, body: unknown): void;
  idempotent?: boolean;
}

const isNonNegInt = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;

const JSON_PARSERS: JsonParser[] = [
  {
    name: 'request-update', parse: parseRequestUpdate, codes: ['BAD_REQUEST'], keys: ['state', 'detail'], idempotent: true,
    bodies: [{ state: 'done', detail: {} }, { state: 'in-progress' }, { state: 'failed', detail: { error: 'ENOSPC', bytes: 12 } }],
    invariants: (r) => {
      const u = r as { state: string; detail: unknown };
      check(['in-progress', 'done', 'failed'].includes(u.state), 'state outside its set');
      check(typeof u.detail === 'object' && u.detail !== null && !Array.isArray(u.detail) && JSON.stringify(u.detail).length <= 4096, 'detail is not a small object');
    },
  },
  {
    name: 'heartbeat', parse: parseHeartbeatRequest, codes: ['BAD_REQUEST'], keys: ['pendingBytes', 'pendingBlocks', 'leaseCodeSeq'], idempotent: true,
    bodies: [{ pendingBytes: 0, pendingBlocks: 0 }, { pendingBytes: 123456789, pendingBlocks: 3 }, { pendingBytes: 1, pendingBlocks: 1, leaseCodeSeq: 2 }, {}],
    invariants: (r) => {
      const h = r as { pendingBytes: unknown; pendingBlocks: unknown; leaseCodeSeq: unknown };
      check(isNonNegInt(h.pendingBytes) && isNonNegInt(h.pendingBlocks) && isNonNegInt(h.leaseCodeSeq), 'pending counts or the lease code number are not non-negative integers');
    },
  },
  {
    name: 'desktop-policy', parse: parseDesktopPolicy, codes: ['BAD_REQUEST'], keys: ['leaseDays', 'replicateMinutes', 'rollbackKeepsLocal', 'files', 'registry', 'encryption'], idempotent: true,
    bodies: [{ leaseDays: 14 }, { replicateMinutes: null, rollbackKeepsLocal: true }, { files: 'keep-both', registry: 'newest' }, {}, { encryption: 'off' }, { encryption: null, leaseDays: 3 }],
    invariants: (r) => {
      const p = r as Record<string, unknown>;
      for (const [k, v] of Object.entries(p)) {
        if (k === 'leaseDays' || k === 'replicateMinutes') check(v === null || (typeof v === 'number' && Number.isFinite(v)), `${k} is not a number or null`);
        else if (k === 'rollbackKeepsLocal') check(typeof v === 'boolean', 'rollbackKeepsLocal is not a boolean');
        else if (k === 'files') check(FILE_MERGE_POLICIES.includes(v as never), 'files policy outside its set');
        else if (k === 'registry') check(REGISTRY_MERGE_POLICIES.includes(v as never), 'registry policy outside its set');
        else if (k === 'encryption') check(v === null || ENCRYPTION_POLICIES.includes(v as never), 'encryption policy outside its set');
        else check(false, `unknown policy field ${k} accepted`);
      }
    },
  },
  {
    // A laptop's escrow deposit: a real seal (fixed bytes would do as well; the parser checks shape only).
    name: 'escrow', parse: parseEscrowRequest, codes: ['BAD_REQUEST'], keys: ['sealed', 'keyCheck'],
    bodies: ((): Json[] => {
      const pub = newEscrowKeyPair().publicKey;
      const key = Buffer.alloc(32, 7);
      return [{ sealed: sealToEscrow(pub, key, 'checkout-1').toString('base64'), keyCheck: keyCheck(key) }, { sealed: sealToEscrow(pub, key.subarray(0, 16), 'c').toString('base64'), keyCheck: '0123456789abcdef' }];
    })(),
    invariants: (r, body) => {
      const e = r as { sealed: Buffer; keyCheck: string };
      check(Buffer.isBuffer(e.sealed) && e.sealed.length <= MAX_ESCROW_BYTES && e.sealed[0] === 1, 'sealed out of shape');
      check(e.sealed.toString('base64') === (body as { sealed: string }).sealed, 'sealed does not round-trip to the base64 sent');
      check(/^[0-9a-f]{16}$/.test(e.keyCheck), 'keyCheck out of shape');
    },
  },
  {
    name: 'device', parse: parseDeviceRequest, codes: ['BAD_REQUEST'], keys: ['device', 'name'], idempotent: true,
    bodies: [{ device: '0b7f3a5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b', name: 'alice laptop' }],
    invariants: (r) => {
      const d = r as { device: string; name: string };
      check(/^[0-9a-f-]{36}$/.test(d.device) && d.name.length >= 1 && d.name.length <= 200, 'device or name out of shape');
    },
  },
  {
    name: 'id-list', parse: (b) => parseIdList(b, 64), codes: ['BAD_REQUEST', 'PAYLOAD_TOO_LARGE'], keys: ['ids'],
    bodies: [{ ids: [A, B, C] }, { ids: [] }, { ids: Array.from({ length: 64 }, (_, i) => ID(String(i))) }],
    invariants: (r) => {
      const ids = r as unknown[];
      check(Array.isArray(ids) && ids.length <= 64 && ids.every(isBlockId), 'ids out of shape');
    },
  },
  {
    name: 'get-blocks', parse: parseGetBlocksRequest, codes: ['BAD_REQUEST', 'PAYLOAD_TOO_LARGE'], keys: ['ids', 'bases', 'baseVersion'],
    bodies: [{ ids: [A, B] }, { ids: [A, B, C], bases: { [A]: B, [C]: A }, baseVersion: 3 }, { ids: [] }],
    invariants: (r) => {
      const g = r as { ids: unknown[]; bases: Map<unknown, unknown>; baseVersion: unknown };
      check(g.ids.length <= MAX_GET_IDS && g.ids.every(isBlockId), 'ids out of shape');
      for (const [id, base] of g.bases) check(g.ids.includes(id as string) && isBlockId(base), 'a base pairs an id that was not asked for');
      check(g.bases.size === 0 ? g.baseVersion === null : Number.isSafeInteger(g.baseVersion) && (g.baseVersion as number) >= 1, 'baseVersion out of shape');
    },
  },
  {
    name: 'checkout', parse: parseCheckoutRequest, codes: ['BAD_REQUEST'], keys: ['device', 'deviceName'],
    bodies: [{ device: 'laptop-0001', deviceName: 'Alice' }, { device: '0b7f3a5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b' }],
    invariants: (r) => {
      const c = r as { device: string; deviceName: unknown };
      check(/^[A-Za-z0-9-]{8,64}$/.test(c.device) && typeof c.deviceName === 'string' && c.deviceName.length <= 128, 'device or deviceName out of shape');
    },
  },
  {
    name: 'persona-push', parse: parsePersonaPushInfo, codes: ['BAD_REQUEST', 'INVALID_ARGUMENT'], keys: ['baseVersion', 'desktop', 'deviceName', 'editedAt'], idempotent: true,
    bodies: [{ baseVersion: 1, desktop: 'desk', deviceName: 'Alice', editedAt: 1700000000000 }, { baseVersion: 7, desktop: 'd.1', editedAt: 0 }],
    invariants: (r) => {
      const p = r as { baseVersion: number; desktop: string; deviceName: string; editedAt: number };
      check(Number.isSafeInteger(p.baseVersion) && p.baseVersion >= 1 && isNonNegInt(p.editedAt), 'numbers out of shape');
      check(parseName(p.desktop, 'desktop') === p.desktop && p.deviceName.length >= 1 && p.deviceName.length <= 128, 'names out of shape');
    },
  },
  {
    // A lease extension takes any number, a lease code a whole one: both parsers, one body.
    name: 'days', codes: ['BAD_REQUEST'], keys: ['days'], idempotent: true,
    parse: (b) => {
      const days = parseDaysRequest(b, false);
      let whole: number | undefined;
      try {
        whole = parseDaysRequest(b, true);
      } catch (err) {
        if (!(err instanceof CarryonError) || err.code !== 'BAD_REQUEST') throw err;
      }
      check(whole === undefined || (whole === days && Number.isInteger(whole)), 'the lease-code parser accepted what the lease parser reads otherwise');
      return { days };
    },
    bodies: [{ days: 7 }, { days: 0.5 }],
    invariants: (r) => check(typeof (r as { days: unknown }).days === 'number', 'days is not a number'),
  },
  {
    // A rollback may leave the restore point out, a restore may not: both parsers, one body.
    name: 'restore-point', codes: ['BAD_REQUEST'], keys: ['restorePoint'],
    parse: (b) => {
      const optional = parseRestorePointRequest(b, false);
      let required: number | undefined;
      try {
        required = parseRestorePointRequest(b, true);
      } catch (err) {
        if (!(err instanceof CarryonError) || err.code !== 'BAD_REQUEST') throw err;
      }
      check(required === undefined || required === optional, 'the two restore-point parsers disagree');
      check(optional === undefined || (Number.isSafeInteger(optional) && required === optional), 'a restore point that is not an id');
      return optional;
    },
    bodies: [{ restorePoint: 3 }, {}],
  },
];

/** What the server's readJson gives a handler for these body bytes. */
export function bodyValue(input: Buffer): unknown {
  if (input.length === 0) return {};
  try {
    return JSON.parse(input.toString('utf8'));
  } catch {
    throw new CarryonError('BAD_REQUEST', 'request body is not valid JSON');
  }
}

function jsonTarget(p: JsonParser): TargetSpec {
  return {
    name: `json-${p.name}`,
    about: `the ${p.name} body parser of src/wire/api.ts behind readJson`,
    create: (): FuzzTarget => ({
      codes: p.codes,
      corpus: () => p.bodies.map(jsonText),
      mutate: (rng, input, corpus) => mutateJson(rng, input, corpus, p.keys),
      run(input) {
        const body = bodyValue(input);
        const r = p.parse(body);
        p.invariants?.(r, body);
        if (p.idempotent) {
          const again = p.parse(JSON.parse(JSON.stringify(r)));
          check(JSON.stringify(again) === JSON.stringify(r), 'parsing the parsed value again gives another value');
        }
      },
      allocationCap: (input) => 8 * input.length + 256 * KiB,
    }),
  };
}

export const jsonTargets: TargetSpec[] = JSON_PARSERS.map(jsonTarget);
