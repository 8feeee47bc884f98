// errors: the one error type of carryon and its stable codes.
// Owns: CarryonError, the code list, and the two tables that map a code to an HTTP status and to a
// CLI exit code. Must not know: HTTP servers, the CLI, or storage. A code is never renamed or reused:
// clients, scripts and docs depend on it.

export const ERROR_CODES = {
  // request and input
  INVALID_ARGUMENT: { http: 400, exit: 2, what: 'a command-line argument or request field is invalid' },
  BAD_REQUEST: { http: 400, exit: 2, what: 'the request is malformed' },
  TAR_INVALID: { http: 400, exit: 6, what: 'a tar stream is truncated or malformed' },
  REGISTRY_OUTSIDE_HKCU: { http: 400, exit: 2, what: 'a .reg file or persona registry names keys outside HKEY_CURRENT_USER (HKEY_LOCAL_MACHINE, HKEY_USERS, ...): a persona holds the user\'s own registry alone' },
  REG_FILE_UNSUPPORTED: { http: 400, exit: 2, what: 'the file is neither a .reg file nor a registry hive (regf): the message says what it looks like' },
  IMAGE_FORMAT_UNSUPPORTED: { http: 400, exit: 2, what: 'the file is not a disk image carryon publishes (raw, qcow2, VMDK, VHDX, VDI, VHD): the message says what it looks like (a compressed file, an archive, another image format)' },
  PAYLOAD_TOO_LARGE: { http: 413, exit: 2, what: 'a request body or entry is larger than allowed' },
  HEADERS_TOO_LARGE: { http: 431, exit: 2, what: 'the request line or headers are larger than the server accepts' },
  BOOT_TRACE_INVALID: { http: 400, exit: 2, what: 'a boot trace is malformed: not a list of distinct block indices, longer than allowed, or naming a block past the end of its image' },
  // identity
  UNAUTHORIZED: { http: 401, exit: 3, what: 'no token, or an unknown or revoked token' },
  FORBIDDEN: { http: 403, exit: 3, what: 'the token is valid but may not do this' },
  NOT_LOGGED_IN: { http: 401, exit: 3, what: 'this laptop home has no server login yet' },
  // lookup
  NOT_FOUND: { http: 404, exit: 4, what: 'no such API route' },
  USER_NOT_FOUND: { http: 404, exit: 4, what: 'no such user' },
  IMAGE_NOT_FOUND: { http: 404, exit: 4, what: 'no such image' },
  DESKTOP_NOT_FOUND: { http: 404, exit: 4, what: 'no such desktop (or not yours)' },
  CHECKOUT_NOT_FOUND: { http: 404, exit: 4, what: 'no such active checkout' },
  BLOCK_NOT_FOUND: { http: 404, exit: 4, what: 'a block is not in the store' },
  TOKEN_NOT_FOUND: { http: 404, exit: 4, what: 'no token with that id' },
  MANIFEST_NOT_FOUND: { http: 404, exit: 4, what: 'a manifest is not in the store' },
  // state
  ALREADY_EXISTS: { http: 409, exit: 5, what: 'a user, image or desktop of that name exists' },
  CHECKOUT_CONFLICT: { http: 409, exit: 5, what: 'the desktop is already checked out' },
  VERSION_CONFLICT: { http: 409, exit: 5, what: 'the desktop moved on since this checkout began' },
  BLOCKS_MISSING: { http: 409, exit: 5, what: 'a commit names blocks the server does not hold' },
  BOOT_TRACE_WRONG_IMAGE: { http: 409, exit: 5, what: "a boot trace was recorded on another image version than the desktop's (the desktop was refreshed or recomposed meanwhile)" },
  NOT_CHECKED_OUT: { http: 409, exit: 8, what: 'this laptop holds no active checkout of that desktop' },
  LOCAL_PATH_CONFLICT: { http: 409, exit: 8, what: 'the target path exists and is not ours to overwrite' },
  DISK_IN_USE: { http: 409, exit: 8, what: 'another process (carryon serve or check-in, a VM on the raw file) has the local disk open for writing' },
  DISK_INCOMPLETE: { http: 409, exit: 8, what: 'part of a streamed disk is not on this laptop yet and the server cannot be reached' },
  ROLLED_BACK: { http: 409, exit: 8, what: 'an admin rolled this checkout back; the laptop copy is no longer the desktop' },
  LEASE_CODE_INVALID: { http: 400, exit: 2, what: 'a lease code is mistyped, used already, or for another checkout' },
  LEASE_EXPIRED: { http: 403, exit: 11, what: "the checkout's offline lease ran out: renew it online or with a code from an admin" },
  DATA_DIR_INVALID: { http: 500, exit: 8, what: 'the server data folder is missing or not initialised' },
  SCHEMA_TOO_NEW: { http: 500, exit: 8, what: 'the database was upgraded by a newer carryon; run that version (this one changed nothing)' },
  // integrity
  BLOCK_CORRUPT: { http: 422, exit: 6, what: 'block bytes do not match their hash' },
  MANIFEST_INVALID: { http: 422, exit: 6, what: 'a manifest is malformed or inconsistent' },
  JOURNAL_INVALID: { http: 422, exit: 6, what: 'a disk journal (dirty map) is damaged or belongs to another checkout' },
  DISK_CHANGED: { http: 422, exit: 6, what: 'the disk image changed while carryon read it (is its VM still running?)' },
  // environment
  SERVER_UNREACHABLE: { http: 502, exit: 7, what: 'the server could not be reached' },
  REQUEST_TIMEOUT: { http: 408, exit: 7, what: 'the request (or its body) did not arrive in time' },
  RATE_LIMITED: { http: 429, exit: 7, what: 'this user has too many requests in flight; retry shortly' },
  SERVER_BUSY: { http: 503, exit: 7, what: 'the server is busy with maintenance (garbage collection) or reclaimed a stalled upload; nothing was lost: retry shortly' },
  META_UNAVAILABLE: { http: 503, exit: 7, what: "the server's metadata database (PostgreSQL) cannot be reached or refused the connection; retry shortly" },
  DISK_FULL: { http: 507, exit: 12, what: 'no space left on the server or the laptop disk; nothing was lost, free space and retry' },
  // transport security (laptop side: raised before any token leaves the laptop)
  INSECURE_HTTP: { http: 400, exit: 13, what: 'plain http:// to another machine was refused: use https://, or --insecure-http on a network you trust' },
  TLS_UNTRUSTED: { http: 502, exit: 13, what: "the server's certificate is not trusted: signed by a CA this laptop does not know (pass it with --ca), or refused for the reason the message names" },
  TLS_CERT_EXPIRED: { http: 502, exit: 13, what: "the server's certificate has expired" },
  TLS_CERT_NOT_YET_VALID: { http: 502, exit: 13, what: "the server's certificate is not valid yet (or this laptop's clock is wrong)" },
  TLS_HOSTNAME_MISMATCH: { http: 502, exit: 13, what: "the server's certificate is for other host names than the URL's" },
  // encryption at rest (laptop side)
  KEYS_LOCKED: { http: 423, exit: 14, what: 'the encrypted local copy is locked: run `carryon unlock`, or give the passphrase (terminal, --passphrase-file or CARRYON_PASSPHRASE)' },
  WRONG_PASSPHRASE: { http: 403, exit: 14, what: 'the passphrase does not open this laptop\'s keys' },
  RECOVERY_CODE_INVALID: { http: 400, exit: 2, what: 'a recovery code is mistyped or belongs to another copy' },
  // encryption at rest (server side)
  ESCROW_MISSING: { http: 409, exit: 14, what: "this checkout's data key is not escrowed: the server sends no desktop data until the laptop (an up-to-date carryon) encrypts its copy and escrows the key" },
  ESCROW_KEY_ABSENT: { http: 409, exit: 14, what: "the escrow private key is not in the server's data folder (moved offline): `carryon-server admin recovery-code --escrow-key FILE`" },
  IO_ERROR: { http: 500, exit: 9, what: "a local file operation failed, or the block store's object store (S3) failed or could not be reached" },
  FUSE_UNAVAILABLE: { http: 500, exit: 9, what: 'serve --file needs nbdfuse (libnbd-bin), and a streamed persona the carryon-persona-fuse helper (built from libfuse3-dev), both with fusermount3 (fuse3) and a usable /dev/fuse; one is missing or refused the mount' },
  HIVEX_UNAVAILABLE: { http: 500, exit: 9, what: "registry hives (NTUSER.DAT) are read and written with Debian's hivex: hivexregedit (package libwin-hivex-perl) is missing or failed" },
  QEMU_UNAVAILABLE: { http: 500, exit: 9, what: 'a qcow2, VMDK, VHDX, VDI or VHD image is read and written through qemu-img and qemu-storage-daemon (Debian: qemu-utils, qemu-system-common) with FUSE (fuse3, /dev/fuse): one is missing or refused the image' },
  PERSONA_VAULT_UNAVAILABLE: { http: 500, exit: 9, what: "an encrypted copy's persona lives in a gocryptfs vault: gocryptfs, fusermount3 (fuse3) or /dev/fuse is missing, or the mount was refused" },
  // client updates (issue 14)
  RELEASE_INVALID: { http: 400, exit: 15, what: 'a client release or the update feed is malformed: not an npm pack tarball of carryon, a version that is not MAJOR.MINOR.PATCH, or a latest.yml carryon did not write' },
  RELEASE_NOT_FOUND: { http: 404, exit: 4, what: 'no client release of that version (or none published yet)' },
  RELEASE_KEY_INVALID: { http: 500, exit: 15, what: "the release signing key (the server's DATA/release/) or the public key a laptop keeps is not an Ed25519 key" },
  UPDATE_REFUSED: { http: 409, exit: 15, what: 'an update was refused and nothing was changed: a bad signature, a SHA-512 or size that differs from the signed feed, an older version without an admin\'s pin, or a feed older than one already seen; the message says which' },
  UPDATE_FAILED: { http: 500, exit: 15, what: 'a verified release could not be installed or did not start; the laptop stays on the version it ran' },
  ABORTED: { http: 499, exit: 10, what: 'the user declined or interrupted the operation' },
  INTERNAL: { http: 500, exit: 1, what: 'an unexpected error (a bug); see the server log' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class CarryonError extends Error {
  readonly code: ErrorCode;
  /** Structured context for programs. Never holds secrets (tokens, keys). */
  readonly data: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, data: Record<string, unknown> = {}, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'CarryonError';
    this.code = code;
    this.data = data;
  }

  toJSON(): { code: ErrorCode; message: string; data: Record<string, unknown> } {
    return { code: this.code, message: this.message, data: this.data };
  }
}

export function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(ERROR_CODES, s);
}

export function httpStatusOf(code: ErrorCode): number {
  return ERROR_CODES[code].http;
}

export function exitCodeOf(code: ErrorCode): number {
  return ERROR_CODES[code].exit;
}

/** Any thrown value as a CarryonError; unknown errors become INTERNAL with the original as cause. */
export function asCarryonError(err: unknown): CarryonError {
  if (err instanceof CarryonError) return err;
  const e = err as NodeJS.ErrnoException | undefined;
  // A full disk is its own condition, whoever met it (a file write, or SQLite's SQLITE_FULL): nothing is
  // lost, and the remedy (free space, retry) differs from other I/O failures.
  if (e && (e.code === 'ENOSPC' || e.code === 'EDQUOT' || e.code === 'SQLITE_FULL')) {
    return new CarryonError('DISK_FULL', `no space left on the device${e.path ? ` holding ${e.path}` : ''} (${e.code})`, { errno: e.code, path: e.path }, err);
  }
  if (e && typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code) && typeof e.syscall === 'string') {
    return new CarryonError('IO_ERROR', `${e.syscall} failed: ${e.message}`, { errno: e.code, path: e.path }, err);
  }
  return new CarryonError('INTERNAL', 'internal error', {}, err);
}

/**
 * A short printable form of an untrusted value for messages and error data. Never throws: String()
 * and template literals do on a JSON object such as {"toString": 1} (no callable toString).
 */
export function shownValue(v: unknown, max = 80): string {
  if (typeof v === 'string') return v.slice(0, max);
  try {
    return (JSON.stringify(v) ?? typeof v).slice(0, max);
  } catch {
    return typeof v;
  }
}

/** Rebuild the error a server sent as `{error:{code,message,data}}`. */
export function errorFromBody(status: number, body: unknown): CarryonError {
  const e = (body as { error?: { code?: unknown; message?: unknown; data?: unknown } } | null)?.error;
  if (e && isErrorCode(e.code) && typeof e.message === 'string') {
    const data = e.data && typeof e.data === 'object' ? (e.data as Record<string, unknown>) : {};
    return new CarryonError(e.code, e.message, data);
  }
  return new CarryonError('INTERNAL', `server answered HTTP ${status} without a carryon error body`, { status });
}

/** How a CLI reports a failure: the text for stderr, the JSON line for stdout with --json, the exit code. */
export function describeFailure(err: unknown): { text: string; json: string; exitCode: number; error: CarryonError } {
  const e = asCarryonError(err);
  // The stack of an unexpected throw helps a bug report; a CarryonError's message was written for the
  // user (also an INTERNAL one, such as a server answer that is not a carryon error body): no stack.
  const cause = e.code === 'INTERNAL' && err instanceof Error && !(err instanceof CarryonError) ? `\n${err.stack ?? err.message}` : '';
  return {
    text: `error ${e.code}: ${e.message}${cause}`,
    json: JSON.stringify({ error: e.toJSON() }),
    exitCode: exitCodeOf(e.code),
    error: e,
  };
}
