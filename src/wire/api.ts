// The HTTP API between carryon and carryon-server: routes, headers, body shapes and their parsers.
// Both sides import these, so a field renamed here breaks the compiler, not a user. Documented in
// docs/protocol.md.
import { MAX_ESCROW_BYTES, SEAL_OVERHEAD } from '../crypto/index.js';
import { CarryonError, shownValue } from '../errors/index.js';
import { isBlockId, type BlockId } from '../hash/index.js';
import { FILE_MERGE_POLICIES, REGISTRY_MERGE_POLICIES, type FileMergePolicy, type RegistryMergePolicy, type RegistryScope, MAX_SCOPE_PATTERNS } from '../persona/index.js';

export const API_PREFIX = '/v1';
export const HEADER_DEVICE = 'x-carryon-device';
export const HEADER_DEVICE_NAME = 'x-carryon-device-name';
export const CONTENT_TAR = 'application/x-tar';
export const CONTENT_MANIFEST = 'application/vnd.carryon.manifest';

/** Ids per block download request: 2048 × 64 KiB = 128 MiB of plaintext at most per response. */
export const MAX_GET_IDS = 2048;
/** Ids per "which are missing" query (a JSON body of ~1 MiB). */
export const MAX_QUERY_IDS = 16384;
/** Largest JSON body accepted. */
export const MAX_JSON_BYTES = 2 * 1024 * 1024;
/**
 * What one block upload request may carry, counted after decompression (the tar: headers, blocks and
 * patches). The laptop sends batches of at most 256 MiB of blocks; a body that inflates past this is
 * refused with PAYLOAD_TOO_LARGE as soon as it does.
 */
export const MAX_UPLOAD_REQUEST_BYTES = 1024 * 1024 * 1024;
/** What a commit, persona push or restore point body may inflate to: a manifest and a persona delta. */
export const MAX_COMMIT_BODY_BYTES = 256 * 1024 * 1024;
/** Largest upload entry: a 4 MiB block, or a patch of it with its range headers. */
export const MAX_UPLOAD_ENTRY_BYTES = 4 * 1024 * 1024 + 64 * 1024;

export interface CheckoutHolder {
  checkoutId: string;
  user: string;
  device: string;
  deviceName: string;
  since: string;
  baseVersion: number;
}

export interface DesktopInfo {
  name: string;
  user: string;
  image: string;
  version: number;
  manifestId: BlockId;
  size: number;
  blockSize: number;
  updatedAt: string;
  checkout: CheckoutHolder | null;
  /** The desktop's effective encryption policy (its own, else its image's, else 'required'). Absent from older servers. */
  encryption?: EncryptionPolicy;
  /**
   * The registry keys its persona carries (docs/persona.md#registry-scope): include null = all of
   * HKEY_CURRENT_USER; exclude with the default list expanded. Absent from older servers.
   */
  registryScope?: RegistryScope;
}

/** Whether a laptop must encrypt its copy of a desktop (docs/security.md#escrow). */
export type EncryptionPolicy = 'required' | 'off';
export const ENCRYPTION_POLICIES: readonly EncryptionPolicy[] = ['required', 'off'];
/** A desktop or image with no setting of its own: new desktops are encrypted. */
export const DEFAULT_ENCRYPTION_POLICY: EncryptionPolicy = 'required';

export interface CheckoutInfo {
  checkoutId: string;
  desktop: string;
  version: number;
  manifestId: BlockId;
  resumed: boolean;
  /** The persona version that goes with this checkout. */
  personaVersion: number;
  /** When the offline lease runs out unless the laptop contacts the server again (ISO time). */
  leaseExpiresAt: string;
  leaseDays: number;
  /** Base64 secret for offline lease codes (src/lease): only the device holding the checkout gets it. */
  leaseSecret: string;
  /**
   * Encryption at rest (docs/encryption.md): whether the laptop must encrypt its copy, and the server's
   * escrow public key (X25519, SPKI DER base64) to seal the copy's data key to before any block is sent.
   * Absent from servers older than encryption: treated as not required.
   */
  encryption: { required: boolean; escrowKey: string | null };
  /** The registry keys the desktop's persona carries (as DesktopInfo.registryScope). Absent from older servers. */
  registryScope?: RegistryScope;
}

/** `PUT /v1/checkouts/:id/escrow`: the copy's data key sealed to the escrow key (src/crypto sealToEscrow, aad = checkout id). */
export interface EscrowRequest {
  /** base64 of the sealed key, at most MAX_ESCROW_BYTES. */
  sealed: string;
  /** keyCheck(dataKey): 16 hex characters, shown to the admin with the recovery code. */
  keyCheck: string;
}

/** The answer to an escrow deposit: what the server holds for the checkout (`already`: it held it before this request). */
export interface EscrowAnswer {
  checkoutId: string;
  keyCheck: string;
  depositedAt: string;
  already: boolean;
}

/** An escrow blob is `version(1) | X25519 SPKI DER (44) | nonce, sealed key, tag` (src/crypto sealToEscrow). */
const ESCROW_VERSION = 1;
const X25519_SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * `PUT /v1/checkouts/:id/escrow`, checked at the server's boundary: canonical base64 of at most
 * MAX_ESCROW_BYTES that has the shape of an escrow blob (its version, an X25519 public key, room for a
 * sealed key), and a 16-hex key check. The server cannot open it without the escrow private key, so the
 * shape is all it can check here.
 */
export function parseEscrowRequest(body: unknown): { sealed: Buffer; keyCheck: string } {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new CarryonError('BAD_REQUEST', 'an escrow deposit must be a JSON object {"sealed", "keyCheck"}');
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (k !== 'sealed' && k !== 'keyCheck') throw new CarryonError('BAD_REQUEST', `unknown escrow field ${JSON.stringify(k.slice(0, 40))}`);
  if (typeof b.sealed !== 'string') throw new CarryonError('BAD_REQUEST', 'sealed must be the base64 of the sealed data key');
  // Bounded before decoding: 4 characters per 3 bytes.
  if (b.sealed.length > Math.ceil(MAX_ESCROW_BYTES / 3) * 4) {
    throw new CarryonError('BAD_REQUEST', `sealed is longer than an escrowed key can be (at most ${MAX_ESCROW_BYTES} bytes once decoded)`, { max: MAX_ESCROW_BYTES });
  }
  if (!BASE64_RE.test(b.sealed)) throw new CarryonError('BAD_REQUEST', 'sealed is not base64');
  const sealed = Buffer.from(b.sealed, 'base64');
  if (sealed.length > MAX_ESCROW_BYTES) throw new CarryonError('BAD_REQUEST', `sealed is ${sealed.length} bytes, more than an escrowed key can be (${MAX_ESCROW_BYTES})`, { max: MAX_ESCROW_BYTES });
  if (sealed.length < 1 + X25519_SPKI_PREFIX.length + 32 + SEAL_OVERHEAD + 16 || sealed[0] !== ESCROW_VERSION || !sealed.subarray(1, 1 + X25519_SPKI_PREFIX.length).equals(X25519_SPKI_PREFIX)) {
    throw new CarryonError('BAD_REQUEST', 'sealed is not a data key sealed to the escrow key (version 1, an X25519 ephemeral key, then the sealed key)');
  }
  if (typeof b.keyCheck !== 'string' || !/^[0-9a-f]{16}$/.test(b.keyCheck)) throw new CarryonError('BAD_REQUEST', 'keyCheck must be 16 lowercase hex characters');
  return { sealed, keyCheck: b.keyCheck };
}

/** `POST /v1/admin/checkouts/:id/recovery-code` (admin): the recovery code of a checkout's data key. */
export interface RecoveryCodeAnswer {
  checkoutId: string;
  desktop: string;
  device: string;
  deviceName: string;
  keyCheck: string;
  code: string;
}

/**
 * A check-out answer as the laptop receives it, checked field by field: its values go into the laptop's
 * state and into request paths, so a server that sends other types (a number for the lease secret, text
 * for the version) is refused here, before anything is written, instead of failing later with a stack
 * trace or leaving a checkout of version "1; …" in the laptop's state. INTERNAL, like an answer that is
 * not JSON: the server broke the protocol.
 */
export function parseCheckoutInfo(body: unknown): CheckoutInfo {
  const b = (body ?? {}) as Record<string, unknown>;
  const bad = (field: string, what: string): CarryonError =>
    new CarryonError('INTERNAL', `the server's check-out answer is malformed: ${field} is not ${what}`, { field });
  if (typeof b.checkoutId !== 'string' || !/^[A-Za-z0-9-]{1,64}$/.test(b.checkoutId)) throw bad('checkoutId', 'an id of letters, digits and dashes');
  if (typeof b.desktop !== 'string' || !NAME_RE.test(b.desktop)) throw bad('desktop', 'a desktop name');
  if (!Number.isSafeInteger(b.version) || (b.version as number) < 1) throw bad('version', 'a version number');
  if (!isBlockId(b.manifestId)) throw bad('manifestId', 'a manifest id');
  if (typeof b.resumed !== 'boolean') throw bad('resumed', 'true or false');
  if (!Number.isSafeInteger(b.personaVersion) || (b.personaVersion as number) < 0) throw bad('personaVersion', 'a persona version number');
  // Optional for servers without leases: absent or null.
  if (b.leaseExpiresAt != null && (typeof b.leaseExpiresAt !== 'string' || Number.isNaN(Date.parse(b.leaseExpiresAt)))) throw bad('leaseExpiresAt', 'a time');
  if (b.leaseDays != null && (typeof b.leaseDays !== 'number' || !Number.isFinite(b.leaseDays))) throw bad('leaseDays', 'a number');
  if (b.leaseSecret != null && (typeof b.leaseSecret !== 'string' || !/^[A-Za-z0-9+/]{0,1024}={0,2}$/.test(b.leaseSecret))) throw bad('leaseSecret', 'base64 text');
  const enc = (b.encryption ?? { required: false, escrowKey: null }) as Record<string, unknown>;
  if (typeof enc !== 'object' || typeof enc.required !== 'boolean') throw bad('encryption.required', 'true or false');
  if (enc.escrowKey != null && (typeof enc.escrowKey !== 'string' || !/^[A-Za-z0-9+/]{1,200}={0,2}$/.test(enc.escrowKey))) throw bad('encryption.escrowKey', 'base64 text');
  if (enc.required && enc.escrowKey == null) throw bad('encryption.escrowKey', 'present although encryption is required');
  // Optional (older servers send none); the patterns themselves are checked where the laptop keeps them.
  const scope = b.registryScope as { include?: unknown; exclude?: unknown } | null | undefined;
  const list = (v: unknown): v is string[] => Array.isArray(v) && v.length <= MAX_SCOPE_PATTERNS && v.every((x) => typeof x === 'string' && x.length <= 1024);
  if (scope != null && (typeof scope !== 'object' || !(scope.include === null || list(scope.include)) || !list(scope.exclude))) throw bad('registryScope', 'two lists of registry key patterns');
  return {
    checkoutId: b.checkoutId, desktop: b.desktop, version: b.version as number, manifestId: b.manifestId, resumed: b.resumed, personaVersion: b.personaVersion as number,
    leaseExpiresAt: b.leaseExpiresAt as string, leaseDays: b.leaseDays as number, leaseSecret: b.leaseSecret as string,
    encryption: { required: enc.required, escrowKey: (enc.escrowKey as string | null | undefined) ?? null },
    ...(scope != null ? { registryScope: { include: scope.include as string[] | null, exclude: scope.exclude as string[] } } : {}),
  };
}

/** A laptop's periodic contact while it holds a checkout: what it has not sent yet. */
export interface HeartbeatRequest {
  pendingBytes: number;
  pendingBlocks: number;
  /** The newest offline lease code used on the laptop (0: none): the server applies it to its lease. */
  leaseCodeSeq?: number;
}

/** Something an admin asked of a checkout's device (force check-in, rollback), and how far it got. */
export interface DeviceRequest {
  id: number;
  kind: 'checkin' | 'rollback';
  state: 'requested' | 'in-progress' | 'done' | 'failed';
  detail: unknown;
}

export interface HeartbeatReply {
  checkoutId: string;
  /** null once the checkout was rolled back: the laptop must remove its copy. */
  leaseExpiresAt: string | null;
  leaseDays: number;
  serverTime: string;
  rolledBack: boolean;
  /** With rolledBack: who rolled the checkout back, when, and whether the laptop keeps its copy aside. */
  rollback?: { by: string; at: string; keepLocal: boolean } | null;
  /** Open requests for this device to carry out. */
  requests: DeviceRequest[];
  /** How often the agent should send a restore point (null: never on its own). */
  replicateEveryMinutes: number | null;
  lastRestorePointAt: string | null;
}

/**
 * The length of JSON.stringify(v) when it is at most `max` characters and `v` nests at most `maxDepth`
 * deep, else null. Iterative and stopped at the limit: JSON.stringify recurses, and a JSON body nested
 * some thousands deep (a few KiB of `[`) overflows its stack with a RangeError.
 */
function boundedJsonLength(v: unknown, max: number, maxDepth: number): number | null {
  let n = 0;
  const todo: Array<[unknown, number]> = [[v, 0]];
  while (todo.length > 0) {
    const [x, depth] = todo.pop()!;
    if (x === null || typeof x !== 'object') n += (JSON.stringify(x) ?? 'null').length;
    else if (depth >= maxDepth) return null;
    else {
      const keys = Array.isArray(x) ? null : Object.keys(x);
      const count = keys ? keys.length : (x as unknown[]).length;
      n += 2 + Math.max(0, count - 1);
      if (n > max) return null;
      if (keys) {
        for (const k of keys) {
          n += JSON.stringify(k).length + 1;
          if (n > max) return null;
          todo.push([(x as Record<string, unknown>)[k], depth + 1]);
        }
      } else for (const c of x as unknown[]) todo.push([c, depth + 1]);
    }
    if (n > max) return null;
  }
  return n;
}

export function parseRequestUpdate(body: unknown): { state: 'in-progress' | 'done' | 'failed'; detail: Record<string, unknown> } {
  const b = (body ?? {}) as Record<string, unknown>;
  if (b.state !== 'in-progress' && b.state !== 'done' && b.state !== 'failed') throw new CarryonError('BAD_REQUEST', 'state must be in-progress, done or failed');
  const detail = b.detail ?? {};
  if (typeof detail !== 'object' || detail === null || Array.isArray(detail) || boundedJsonLength(detail, 4096, 32) === null) throw new CarryonError('BAD_REQUEST', 'detail must be an object of at most 4 KiB, nested at most 32 deep');
  return { state: b.state, detail: detail as Record<string, unknown> };
}

export function parseHeartbeatRequest(body: unknown): HeartbeatRequest {
  const b = (body ?? {}) as Record<string, unknown>;
  const n = (k: string): number => {
    const v = b[k] ?? 0;
    if (!Number.isSafeInteger(v) || (v as number) < 0) throw new CarryonError('BAD_REQUEST', `${k} must be a non-negative integer`);
    return v as number;
  };
  return { pendingBytes: n('pendingBytes'), pendingBlocks: n('pendingBlocks'), leaseCodeSeq: n('leaseCodeSeq') };
}

/** An admin's policy change for a desktop; every field optional; null clears a setting. */
export interface DesktopPolicyChange {
  leaseDays?: number | null;
  replicateMinutes?: number | null;
  rollbackKeepsLocal?: boolean;
  files?: FileMergePolicy;
  registry?: RegistryMergePolicy;
  /** null: follow the image (then the default, 'required'). */
  encryption?: EncryptionPolicy | null;
  /** Registry key patterns the persona carries; null: all of HKEY_CURRENT_USER. */
  registryInclude?: string[] | null;
  /** Registry key patterns it leaves out ('@default' = the default list); null: the default list. */
  registryExclude?: string[] | null;
}

export function parseDesktopPolicy(body: unknown): DesktopPolicyChange {
  // `in` throws a TypeError on a number or string body: refuse anything but an object first.
  if (body !== null && body !== undefined && (typeof body !== 'object' || Array.isArray(body))) throw new CarryonError('BAD_REQUEST', 'a policy change must be a JSON object');
  const b = (body ?? {}) as Record<string, unknown>;
  const out: DesktopPolicyChange = {};
  for (const k of Object.keys(b)) if (!['leaseDays', 'replicateMinutes', 'rollbackKeepsLocal', 'files', 'registry', 'encryption', 'registryInclude', 'registryExclude'].includes(k)) throw new CarryonError('BAD_REQUEST', `unknown policy field ${JSON.stringify(k.slice(0, 40))}`);
  const num = (k: 'leaseDays' | 'replicateMinutes'): void => {
    if (!(k in b)) return;
    const v = b[k];
    if (v !== null && (typeof v !== 'number' || !Number.isFinite(v))) throw new CarryonError('BAD_REQUEST', `${k} must be a number or null`);
    out[k] = v as number | null;
  };
  num('leaseDays');
  num('replicateMinutes');
  if ('rollbackKeepsLocal' in b) {
    if (typeof b.rollbackKeepsLocal !== 'boolean') throw new CarryonError('BAD_REQUEST', 'rollbackKeepsLocal must be true or false');
    out.rollbackKeepsLocal = b.rollbackKeepsLocal;
  }
  if ('files' in b) {
    if (!FILE_MERGE_POLICIES.includes(b.files as FileMergePolicy)) throw new CarryonError('BAD_REQUEST', `files must be one of ${FILE_MERGE_POLICIES.join(', ')}`);
    out.files = b.files as FileMergePolicy;
  }
  if ('registry' in b) {
    if (!REGISTRY_MERGE_POLICIES.includes(b.registry as RegistryMergePolicy)) throw new CarryonError('BAD_REQUEST', `registry must be one of ${REGISTRY_MERGE_POLICIES.join(', ')}`);
    out.registry = b.registry as RegistryMergePolicy;
  }
  if ('encryption' in b) {
    if (b.encryption !== null && !ENCRYPTION_POLICIES.includes(b.encryption as EncryptionPolicy)) throw new CarryonError('BAD_REQUEST', `encryption must be one of ${ENCRYPTION_POLICIES.join(', ')}, or null to follow the image`);
    out.encryption = b.encryption as EncryptionPolicy | null;
  }
  for (const k of ['registryInclude', 'registryExclude'] as const) {
    if (!(k in b)) continue;
    const v = b[k];
    if (v !== null && !(Array.isArray(v) && v.every((x) => typeof x === 'string'))) throw new CarryonError('BAD_REQUEST', `${k} must be a list of registry key patterns, or null for the default`);
    // The patterns themselves are checked where they are stored (parseKeyPatternList), for every entry point.
    out[k] = v as string[] | null;
  }
  return out;
}

/** An admin's lease extension (`whole`: false) or lease code (`whole`: true): `{"days": n}`. */
export function parseDaysRequest(body: unknown, whole: boolean): number {
  const days = ((body ?? {}) as { days?: unknown }).days;
  if (whole ? !Number.isInteger(days) : typeof days !== 'number') throw new CarryonError('BAD_REQUEST', whole ? 'days must be a whole number' : 'days must be a number');
  return days as number;
}

/** An admin's rollback or restore: `{"restorePoint": id}`, which a rollback may leave out. */
export function parseRestorePointRequest(body: unknown, required: boolean): number | undefined {
  const point = ((body ?? {}) as { restorePoint?: unknown }).restorePoint;
  if (point === undefined && !required) return undefined;
  if (!Number.isSafeInteger(point)) throw new CarryonError('BAD_REQUEST', 'restorePoint must be a restore point id');
  return point as number;
}

/** `carryon login`: this laptop's id (made once per home) and a name people recognise. */
export function parseDeviceRequest(body: unknown): { device: string; name: string } {
  const b = (body ?? {}) as Record<string, unknown>;
  if (typeof b.device !== 'string' || !/^[0-9a-f-]{36}$/.test(b.device)) throw new CarryonError('BAD_REQUEST', 'device must be the laptop id (a UUID)');
  if (typeof b.name !== 'string' || b.name.length === 0 || b.name.length > 200) throw new CarryonError('BAD_REQUEST', 'name must be 1-200 characters');
  return { device: b.device, name: b.name };
}

export interface CommitResult {
  desktop: string;
  version: number;
  manifestId: BlockId;
  previousVersion: number;
  alreadyCommitted: boolean;
  /** Present when the check-in carried the persona. */
  persona?: PersonaCommitResult;
  /**
   * Present when an admin's refresh or recompose waited for this check-in: the desktop then moved on to
   * `version`, the image version's disk; the check-in's own version (`keptVersion`) stays restorable.
   */
  recomposed?: { image: string; imageVersion: number; version: number; keptVersion: number };
}

export interface UploadResult {
  stored: number;
  alreadyHad: number;
  plainBytes: number;
  /** Of `stored`, blocks sent as zstd frames (`z/<id>`) and kept as sent. Absent from older servers. */
  framesKept?: number;
}

/**
 * The answer to "which of these blocks are missing". `frames`: this server takes `z/<id>` upload entries
 * (a block as its one zstd frame, stored as sent); absent from older servers, whose laptops then send
 * plaintext `b/<id>` entries.
 */
export interface MissingAnswer {
  missing: BlockId[];
  frames?: boolean;
}

/**
 * Upload tar entry names: a whole block's plaintext (`b/<id>`), a whole block as the one zstd frame the
 * stores keep (`z/<id>`: compressed once, on the laptop; only to a server that advertises `frames`), or
 * a patch against a base block the server holds (`p/<id>/<base>`).
 */
export type UploadEntryName = { kind: 'block'; id: BlockId } | { kind: 'frame'; id: BlockId } | { kind: 'patch'; id: BlockId; base: BlockId };

export function uploadEntryName(e: UploadEntryName): string {
  return e.kind === 'patch' ? `p/${e.id}/${e.base}` : `${e.kind === 'block' ? 'b' : 'z'}/${e.id}`;
}

export function parseUploadEntryName(name: string): UploadEntryName {
  const parts = name.split('/');
  if (parts[0] === 'b' && parts.length === 2 && isBlockId(parts[1])) return { kind: 'block', id: parts[1] };
  if (parts[0] === 'z' && parts.length === 2 && isBlockId(parts[1])) return { kind: 'frame', id: parts[1] };
  if (parts[0] === 'p' && parts.length === 3 && isBlockId(parts[1]) && isBlockId(parts[2])) return { kind: 'patch', id: parts[1], base: parts[2] };
  throw new CarryonError('TAR_INVALID', `upload entry name ${JSON.stringify(name.slice(0, 200))} is none of b/<id>, z/<id>, p/<id>/<base>`);
}

export function parseIdList(body: unknown, max: number): BlockId[] {
  const ids = (body as { ids?: unknown } | null)?.ids;
  if (!Array.isArray(ids)) throw new CarryonError('BAD_REQUEST', 'body must be {"ids": [...]}');
  if (ids.length > max) throw new CarryonError('PAYLOAD_TOO_LARGE', `at most ${max} ids per request, got ${ids.length}`, { max });
  for (const id of ids) if (!isBlockId(id)) throw new CarryonError('BAD_REQUEST', 'every id must be 64 lowercase hex characters');
  return ids as BlockId[];
}

/**
 * A block download. With `bases` (and the `baseVersion` of the desktop the laptop holds them from),
 * the server may send a block as a patch against the named base block; the answer is then a zstd
 * stream of a tar in the upload grammar (`b/<id>` plaintext, `p/<id>/<base>` patch) instead of a tar of
 * encoded blocks named by id.
 */
export interface GetBlocksRequest {
  ids: BlockId[];
  bases: Map<BlockId, BlockId>;
  baseVersion: number | null;
}

export function parseGetBlocksRequest(body: unknown): GetBlocksRequest {
  const ids = parseIdList(body, MAX_GET_IDS);
  const b = body as { bases?: unknown; baseVersion?: unknown };
  const bases = new Map<BlockId, BlockId>();
  if (b.bases !== undefined) {
    if (typeof b.bases !== 'object' || b.bases === null || Array.isArray(b.bases)) throw new CarryonError('BAD_REQUEST', 'bases must be an object of id: base id');
    const wanted = new Set(ids);
    for (const [id, base] of Object.entries(b.bases as Record<string, unknown>)) {
      if (!isBlockId(id) || !isBlockId(base) || !wanted.has(id)) throw new CarryonError('BAD_REQUEST', 'every base must pair a requested id with a block id');
      bases.set(id, base);
    }
    if (!Number.isSafeInteger(b.baseVersion) || (b.baseVersion as number) < 1) throw new CarryonError('BAD_REQUEST', 'bases need the baseVersion they come from');
  }
  return { ids, bases, baseVersion: bases.size > 0 ? (b.baseVersion as number) : null };
}

export function parseCheckoutRequest(body: unknown): { device: string; deviceName: string } {
  const b = (body ?? {}) as { device?: unknown; deviceName?: unknown };
  if (typeof b.device !== 'string' || !/^[A-Za-z0-9-]{8,64}$/.test(b.device)) {
    throw new CarryonError('BAD_REQUEST', 'device must be an id of 8-64 letters, digits or dashes');
  }
  const deviceName = typeof b.deviceName === 'string' ? b.deviceName.slice(0, 128) : b.device;
  return { device: b.device, deviceName };
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Names of users, images and desktops: safe in URLs, paths and logs. */
export function parseName(s: unknown, what: string): string {
  if (typeof s !== 'string' || !NAME_RE.test(s)) {
    throw new CarryonError('INVALID_ARGUMENT', `${what} name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`, { value: shownValue(s) });
  }
  return s;
}

// ---- persona
export const HEADER_PERSONA_VERSION = 'x-carryon-persona-version';
export const HEADER_PERSONA_ID = 'x-carryon-persona-id';
export const CONTENT_PERSONA = 'application/vnd.carryon.persona+json';
/** Largest persona upload entry: a 1 MiB chunk, or an rdiff delta of a changed file (else its chunks go). */
export const MAX_PERSONA_ENTRY_BYTES = 16 * 1024 * 1024;
/**
 * What one persona upload request may make the server handle: its tar after decompression plus the
 * bytes of every file rebuilt from an rdiff delta (a small delta of copy commands can rebuild a large
 * file). The laptop splits its uploads to stay below it.
 */
export const MAX_PERSONA_UPLOAD_BYTES = 1024 * 1024 * 1024;
/** Largest persona snapshot (its JSON): ~100k files. */
export const MAX_PERSONA_SNAPSHOT_BYTES = 64 * 1024 * 1024;

/**
 * Persona upload entries: a chunk's plaintext (`b/<id>`), a chunk as the one zstd frame the stores keep
 * (`z/<id>`: sent as the laptop cache holds it, so a bulk upload is compressed once, on the laptop, not
 * again for the wire and again by the server), a chunk rebuilt from an rdiff delta against one to
 * MAX_CHUNK_DELTA_BASES chunks of the base version (`c/<id>`, data: encodeChunkDelta), or a whole file
 * rebuilt from an rdiff delta against a file of the base version (`r/<file>/<base>`).
 */
export type PersonaUploadEntry = { kind: 'chunk'; id: BlockId } | { kind: 'encoded'; id: BlockId } | { kind: 'chunk-delta'; id: BlockId } | { kind: 'delta'; file: BlockId; base: BlockId };

export function personaUploadEntryName(e: PersonaUploadEntry): string {
  if (e.kind === 'delta') return `r/${e.file}/${e.base}`;
  return `${e.kind === 'chunk' ? 'b' : e.kind === 'encoded' ? 'z' : 'c'}/${e.id}`;
}

/** Most base chunks a chunk delta may name: the chunk at the same index and its two neighbours. */
export const MAX_CHUNK_DELTA_BASES = 3;

/** A `c/<id>` entry's data: a count byte, that many 32-byte base chunk ids (their bytes concatenated are the delta's base), the rdiff delta. */
export function encodeChunkDelta(bases: readonly BlockId[], delta: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([bases.length]), ...bases.map((b) => Buffer.from(b, 'hex')), delta]);
}

export function parseChunkDelta(data: Buffer): { bases: BlockId[]; delta: Buffer } {
  const n = data[0] ?? 0;
  if (n < 1 || n > MAX_CHUNK_DELTA_BASES || data.length < 1 + 32 * n) throw new CarryonError('TAR_INVALID', `a chunk delta must name 1 to ${MAX_CHUNK_DELTA_BASES} base chunks`);
  const bases: BlockId[] = [];
  for (let i = 0; i < n; i++) bases.push(data.toString('hex', 1 + 32 * i, 33 + 32 * i));
  return { bases, delta: data.subarray(1 + 32 * n) };
}

export function parsePersonaUploadEntryName(name: string): PersonaUploadEntry {
  const parts = name.split('/');
  if (parts[0] === 'b' && parts.length === 2 && isBlockId(parts[1])) return { kind: 'chunk', id: parts[1] };
  if (parts[0] === 'z' && parts.length === 2 && isBlockId(parts[1])) return { kind: 'encoded', id: parts[1] };
  if (parts[0] === 'c' && parts.length === 2 && isBlockId(parts[1])) return { kind: 'chunk-delta', id: parts[1] };
  if (parts[0] === 'r' && parts.length === 3 && isBlockId(parts[1]) && isBlockId(parts[2])) return { kind: 'delta', file: parts[1], base: parts[2] };
  throw new CarryonError('TAR_INVALID', `persona upload entry name ${JSON.stringify(name.slice(0, 200))} is none of b/<id>, z/<id>, c/<id>, r/<file>/<base>`);
}

/** What goes with a laptop's persona snapshot when it is pushed or checked in. */
export interface PersonaPushInfo {
  /** The persona version the laptop's copy started from. */
  baseVersion: number;
  /** The desktop whose merge policies apply. */
  desktop: string;
  deviceName: string;
  /** When the laptop's edits were last made (ms since the epoch): "newest wins" compares it. */
  editedAt: number;
}

export function parsePersonaPushInfo(body: unknown): PersonaPushInfo {
  const b = (body ?? {}) as Record<string, unknown>;
  if (!Number.isSafeInteger(b.baseVersion) || (b.baseVersion as number) < 1) throw new CarryonError('BAD_REQUEST', 'baseVersion must be a persona version number');
  if (!Number.isSafeInteger(b.editedAt) || (b.editedAt as number) < 0) throw new CarryonError('BAD_REQUEST', 'editedAt must be a time in ms');
  const deviceName = typeof b.deviceName === 'string' && b.deviceName.length > 0 ? b.deviceName.slice(0, 128) : 'laptop';
  return { baseVersion: b.baseVersion as number, desktop: parseName(b.desktop, 'desktop'), deviceName, editedAt: b.editedAt as number };
}

export interface PersonaCommitResult {
  version: number;
  /** False when the pushed snapshot was what the server held already. */
  changed: boolean;
  /** Whether edits made meanwhile elsewhere were merged in (the report says how). */
  merged: boolean;
  report: unknown;
  /**
   * Registry keys the laptop sent that this desktop's scope leaves out (outside its include list, in
   * its exclude list, or outside HKEY_CURRENT_USER in a version stored before that rule): dropped, not
   * stored. At most 50 paths are listed; `count` is all of them. Absent when none.
   */
  registryDropped?: { count: number; keys: string[] };
}

/**
 * A boot trace (docs/protocol.md#boot-traces): the blocks a streamed desktop's VM first read, in the
 * order it read them, on one image version. Indices only, never ids or bytes: a laptop that gets one
 * fetches those indices of its own manifest. At most MAX_BOOT_TRACE_BLOCKS, each once.
 */
export interface BootTrace {
  image: string;
  imageVersion: number;
  blocks: number[];
}

/** The longest boot trace kept: 65,536 blocks (4 GiB of 64 KiB blocks; ~460 KB of JSON, under MAX_JSON_BYTES). */
export const MAX_BOOT_TRACE_BLOCKS = 65536;

/**
 * A boot trace from the network or a laptop file: the image's name and version, and distinct block
 * indices (0 to 2^31-1, at most MAX_BOOT_TRACE_BLOCKS). Anything else is BOOT_TRACE_INVALID. Whether
 * the indices fit the image is the server's check (it knows the image's block count).
 */
export function parseBootTrace(body: unknown): BootTrace {
  const b = (body ?? {}) as Record<string, unknown>;
  const bad = (why: string): CarryonError => new CarryonError('BOOT_TRACE_INVALID', `boot trace: ${why}`);
  if (typeof b.image !== 'string' || b.image.length === 0 || b.image.length > 200) throw bad('image must be an image name');
  if (!Number.isSafeInteger(b.imageVersion) || (b.imageVersion as number) < 1) throw bad('imageVersion must be a version number');
  if (!Array.isArray(b.blocks)) throw bad('blocks must be a list of block indices');
  if (b.blocks.length > MAX_BOOT_TRACE_BLOCKS) throw new CarryonError('BOOT_TRACE_INVALID', `boot trace: ${b.blocks.length} blocks, at most ${MAX_BOOT_TRACE_BLOCKS}`, { blocks: b.blocks.length, max: MAX_BOOT_TRACE_BLOCKS });
  const seen = new Set<number>();
  for (const i of b.blocks) {
    if (!Number.isInteger(i) || (i as number) < 0 || (i as number) > 0x7fffffff) throw bad(`${shownValue(i)} is not a block index`);
    if (seen.has(i as number)) throw bad(`block ${i as number} is listed twice (a trace holds first reads only)`);
    seen.add(i as number);
  }
  return { image: b.image, imageVersion: b.imageVersion as number, blocks: b.blocks as number[] };
}
