// The HTTP service: routing, authentication, body limits, and the one place where a CarryonError
// becomes an HTTP response. Handlers parse untrusted input with src/wire parsers, then trust types.
import http from 'node:http';
import https from 'node:https';
import { pipeline } from 'node:stream/promises';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  API_PREFIX, asCarryonError, diskSpace, parseJson, CarryonError, CONTENT_MANIFEST, CONTENT_TAR, createCompressStream, encodeBlockPatch, getBlock, uploadEntryName, decodeManifest, HEADER_DEVICE, httpStatusOf,
  manifestId, MAX_QUERY_IDS, packEntries, parseCheckoutRequest, parseGetBlocksRequest, parseIdList, parseName, type BlockStore, type CheckoutInfo,
  type CommitResult, type TarEntry, CONTENT_PERSONA, encodePersona, HEADER_PERSONA_ID, HEADER_PERSONA_VERSION, MAX_GET_IDS, MAX_PERSONA_SNAPSHOT_BYTES,
  parsePersonaPushInfo, personaId, unpackEntries, MAX_COMMIT_BODY_BYTES, MAX_PERSONA_UPLOAD_BYTES, MAX_UPLOAD_REQUEST_BYTES, parseDeviceRequest, parseHeartbeatRequest, parseRequestUpdate, parseDesktopPolicy,
  parseDaysRequest, parseRestorePointRequest, type HeartbeatReply, type PersonaCommitResult, type PersonaPushInfo, parseEscrowRequest, type EscrowAnswer,
} from '../src/index.js';
import { BlockScope, ingestUpload, ManifestCache, readAhead } from './blocks.js';
import { crashPoint } from './crash-point.js';
import type { PersonaService } from './persona-service.js';
import { decodeParam, header, readBody, readJson, requestBody, sendJson } from './http-util.js';
import type { SqliteMeta, User } from './meta.js';
import { SqliteFleetMeta, type Actor } from './fleet-meta.js';
import { Metrics } from './metrics.js';
import { CONSOLE_CSP, CONSOLE_HTML } from './console-page.js';
import { ProxyTrust } from './client-address.js';
import type { TlsPair } from './tls.js';
import { EscrowService } from './escrow.js';

/** Without --trust-proxy: X-Forwarded-For is never believed. */
const NO_PROXY = new ProxyTrust('');

/** A connection with no byte moving either way for this long is closed (a stalled or vanished peer). */
const IDLE_TIMEOUT_MS = 120_000;
/** Requests one user may have in flight at once (a laptop uses at most 4 connections per command). */
const MAX_IN_FLIGHT_PER_USER = 32;
/** Uploads are refused (DISK_FULL) while the data folder has less than this free (start --min-free). */
const DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024;
/** Largest manifest a commit may carry: 128 MiB = 4M blocks, 256 GiB at 64 KiB blocks. */
const MAX_MANIFEST_BYTES = 128 * 1024 * 1024;

export interface Logger {
  (fields: Record<string, unknown>): void;
}

interface Ctx {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  url: URL;
  params: string[];
  user: User;
  /** The device a device token belongs to (null for a user's own token). */
  device: string | null;
  /** The device this request acts for: the token's own, else the X-Carryon-Device header (user tokens). */
  claimedDevice: string | undefined;
  /** Who is asking, from where: for the audit log. */
  actor: Actor;
}

type Handler = (ctx: Ctx) => Promise<unknown>;

/** How the service meets the network: HTTPS with this pair (else plain HTTP), and which reverse proxies it believes. */
export interface ServerOptions {
  tls?: TlsPair;
  trustProxy?: ProxyTrust;
  /** The data folder, whose free space is checked before uploads and reported in /metrics. */
  dataRoot?: string;
  /** Uploads are refused below this much free space (default DEFAULT_MIN_FREE_BYTES). */
  minFreeBytes?: number;
}

export class CarryonHttpServer {
  private readonly server: http.Server | https.Server;
  private readonly manifests: ManifestCache;
  private readonly routes: Array<{ method: string; re: RegExp; path: string; handler: Handler }> = [];
  readonly metrics = new Metrics();
  private readonly liveSockets = new Set<Socket>();
  /** Data keys escrowed by laptops, the ESCROW_MISSING gate and recovery codes (escrow.pub in the data folder). */
  private readonly escrow: EscrowService;

  constructor(private readonly meta: SqliteMeta, private readonly store: BlockStore, private readonly personas: PersonaService, private readonly log: Logger,
    private readonly fleet: SqliteFleetMeta = new SqliteFleetMeta(meta.db), private readonly opts: ServerOptions = {}) {
    this.manifests = new ManifestCache(meta);
    this.escrow = new EscrowService(meta.db, opts.dataRoot ?? null, fleet);
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => void this.handle(req, res);
    this.server = opts.tls ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key }, handler) : http.createServer(handler);
    // Bytes in and out, counted per connection (headers included): closed ones added up, open ones read live.
    this.server.on('connection', (sock) => {
      this.liveSockets.add(sock);
      sock.once('close', () => {
        this.liveSockets.delete(sock);
        this.metrics.bytesIn += sock.bytesRead;
        this.metrics.bytesOut += sock.bytesWritten;
      });
    });
    this.server.keepAliveTimeout = 30_000;
    // A whole request may take long (a traveller's upload over a slow link): no cap on its duration, but a
    // connection that moves no byte for IDLE_TIMEOUT_MS is closed, and headers must arrive in 60 s.
    this.server.requestTimeout = 0;
    this.server.headersTimeout = 60_000;
    this.server.setTimeout(IDLE_TIMEOUT_MS);
    this.server.maxHeadersCount = 100;
    // Framing errors (bad request line, headers too large, header timeout) get the same JSON error body.
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket) => this.clientError(err, socket));
    // A client that refuses our certificate (or speaks plain HTTP to the TLS port): the admin should hear of it.
    this.server.on('tlsClientError', (err: NodeJS.ErrnoException, sock: Socket) => this.log({ level: 'warn', msg: 'TLS handshake failed', address: sock.remoteAddress ?? null, error: err.code ?? err.message }));
    const r = (method: string, path: string, handler: Handler): void => {
      this.routes.push({ method, re: new RegExp(`^${API_PREFIX}${path.replace(/:[a-z]+/g, '([^/]+)')}$`), path, handler });
    };
    // device: set for a laptop's device token (the console refuses those: admin actions need the admin's own token).
    r('GET', '/whoami', async ({ user, device }) => ({ user: user.name, admin: user.isAdmin, device, deviceName: device ? this.fleet.deviceName(device) : null }));
    r('GET', '/desktops', async ({ user }) => ({ desktops: this.meta.listDesktops(user) }));
    r('GET', '/desktops/:name', async ({ user, params }) => this.meta.desktopInfo(this.meta.desktopFor(user, parseName(params[0], 'desktop'))));
    r('POST', '/desktops/:name/checkouts', (c) => this.startCheckout(c));
    r('GET', '/checkouts/:id/manifest', (c) => this.sendManifest(c));
    r('POST', '/checkouts/:id/blocks/get', (c) => this.sendBlocks(c));
    r('POST', '/checkouts/:id/blocks/missing', (c) => this.missing(c));
    r('PUT', '/checkouts/:id/blocks', (c) => this.upload(c));
    r('POST', '/checkouts/:id/commit', (c) => this.commit(c));
    r('DELETE', '/checkouts/:id', async ({ user, params, actor, claimedDevice }) => {
      const held = this.meta.checkoutFor(user, params[0]!);
      if (claimedDevice !== undefined && held.device !== claimedDevice) throw new CarryonError('FORBIDDEN', `checkout ${held.id} is held by another device`, { checkoutId: held.id });
      return this.meta.discardCheckout(user, params[0]!, actor);
    });
    r('POST', '/checkouts/:id/heartbeat', (c) => this.heartbeat(c));
    r('PUT', '/checkouts/:id/escrow', (c) => this.depositEscrow(c));
    r('POST', '/devices', async ({ req, user, actor, device: tokenDevice }) => {
      // Only the user's own token registers devices: a laptop's token (perhaps stolen) must not mint others.
      if (tokenDevice) throw new CarryonError('FORBIDDEN', 'a device token cannot register devices: log in with the user token');
      const { device, name } = parseDeviceRequest(await readJson(req));
      return this.fleet.registerDevice(user, device, name, { ...actor, device });
    });
    // Admin: who holds what, tokens, leases, the audit log.
    const admin = (h: Handler): Handler => async (c) => {
      if (!c.user.isAdmin) throw new CarryonError('FORBIDDEN', `${c.user.name} is not an admin`);
      // A laptop's token (perhaps stolen with the laptop) never acts as the admin: only the admin's own token does.
      if (c.device) throw new CarryonError('FORBIDDEN', 'admin actions need the admin\'s own token, not a device token');
      return h(c);
    };
    r('GET', '/admin/checkouts', admin(async () => ({ checkouts: this.fleet.activeCheckouts() })));
    r('POST', '/admin/checkouts/:id/lease', admin(async ({ req, params, actor }) => {
      return this.fleet.extendLease(params[0]!, parseDaysRequest(await readJson(req), false), actor);
    }));
    r('POST', '/admin/checkouts/:id/checkin', admin(async ({ params, actor }) => this.fleet.requestCheckin(params[0]!, actor)));
    r('POST', '/admin/checkouts/:id/rollback', admin(async ({ req, params, actor }) => {
      return this.fleet.rollback(params[0]!, actor, parseRestorePointRequest(await readJson(req), false));
    }));
    r('POST', '/admin/desktops/:name/restore', admin(async ({ req, params, actor }) => {
      const point = parseRestorePointRequest(await readJson(req), true)!;
      return this.fleet.restoreDesktop(parseName(params[0], 'desktop'), point, actor);
    }));
    r('GET', '/desktops/:name/restore-points', async ({ user, params }) => ({ restorePoints: this.fleet.restorePoints(this.meta.desktopFor(user, parseName(params[0], 'desktop')).id) }));
    r('POST', '/checkouts/:id/restore-points', (c) => this.restorePoint(c));
    r('POST', '/admin/desktops/:name/policy', admin(async ({ req, params, actor }) => {
      const name = parseName(params[0], 'desktop');
      const p = parseDesktopPolicy(await readJson(req));
      if (p.leaseDays !== undefined) this.fleet.setLeaseDays('desktop', name, p.leaseDays, actor);
      if (p.replicateMinutes !== undefined) this.fleet.setReplicateMinutes(name, p.replicateMinutes, actor);
      if (p.rollbackKeepsLocal !== undefined) this.fleet.setRollbackKeepsLocal(name, p.rollbackKeepsLocal, actor);
      if (p.encryption !== undefined) this.fleet.setEncryption('desktop', name, p.encryption, actor);
      if (p.files !== undefined || p.registry !== undefined) this.meta.setDesktopPolicies(name, p.files, p.registry, actor);
      return this.fleet.desktopPolicy(name);
    }));
    r('POST', '/admin/images/:name/policy', admin(async ({ req, params, actor }) => {
      const name = parseName(params[0], 'image');
      const p = parseDesktopPolicy(await readJson(req));
      const keys = Object.keys(p);
      if (keys.length === 0 || keys.some((k) => k !== 'leaseDays' && k !== 'encryption')) throw new CarryonError('BAD_REQUEST', 'an image policy sets leaseDays and encryption only');
      if (p.leaseDays !== undefined) this.fleet.setLeaseDays('image', name, p.leaseDays, actor);
      if (p.encryption !== undefined) this.fleet.setEncryption('image', name, p.encryption, actor);
      return this.fleet.imagePolicy(name);
    }));
    r('DELETE', '/admin/desktops/:name', admin(async ({ params, actor }) => this.fleet.deleteDesktop(parseName(params[0], 'desktop'), actor)));
    r('GET', '/admin/requests', admin(async () => ({ requests: this.fleet.requests() })));
    r('POST', '/checkouts/:id/requests/:rid', async ({ req, user, params, actor, claimedDevice }) => {
      const { state, detail } = parseRequestUpdate(await readJson(req));
      const co = this.meta.checkoutFor(user, params[0]!);
      const device = claimedDevice;
      if (device !== undefined && co.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${co.id} is held by another device`, { checkoutId: co.id });
      return this.fleet.updateRequest(co.id, intOf(params[1]!), state, detail, actor);
    });
    // The escrow private key stays in the data folder (or offline): only the code crosses the network.
    r('POST', '/admin/checkouts/:id/recovery-code', admin(async ({ params, actor }) => this.escrow.recoveryCode({ checkoutId: params[0]! }, actor)));
    r('POST', '/admin/checkouts/:id/lease-code', admin(async ({ req, params, actor }) => {
      return this.fleet.leaseCode(params[0]!, parseDaysRequest(await readJson(req), true), actor);
    }));
    r('POST', '/admin/users/:name/persona/restore', admin(async ({ req, params, actor }) => {
      const version = ((await readJson(req)) as { version?: unknown }).version;
      if (!Number.isSafeInteger(version) || (version as number) < 1) throw new CarryonError('BAD_REQUEST', 'version must be a persona version number');
      const user = this.meta.userByName(parseName(params[0], 'user'));
      return this.personas.restore(user, version as number, (detail) => this.fleet.audit(actor, 'persona.restore', `user:${user.name}`, detail));
    }));
    r('GET', '/admin/tokens', admin(async () => ({ tokens: this.fleet.tokens() })));
    r('POST', '/admin/tokens/:id/revoke', admin(async ({ params, actor }) => this.fleet.revokeToken(intOf(params[0]!), actor)));
    r('GET', '/admin/audit', admin(async ({ url }) => ({ audit: this.fleet.auditLog(url.searchParams.has('limit') ? intParam(url, 'limit') : 200) })));
    r('GET', '/persona', (c) => this.sendPersona(c));
    r('POST', '/persona/chunks/get', (c) => this.sendPersonaChunks(c));
    r('POST', '/persona/chunks/missing', async ({ req, user }) => ({ missing: this.personas.missing(user, parseIdList(await readJson(req), MAX_QUERY_IDS)) }));
    r('PUT', '/persona/blocks', async ({ req, url, user }) => {
      this.needSpace();
      return this.personas.ingest(user, intParam(url, 'base'), requestBody(req, MAX_PERSONA_UPLOAD_BYTES));
    });
    r('POST', '/persona/push', (c) => this.pushPersona(c));
  }

  listen(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        const a = this.server.address() as AddressInfo;
        resolve(`${this.opts.tls ? 'https' : 'http'}://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
      });
    });
  }

  /** A renewed certificate: new connections get it, open ones keep theirs. */
  setTls(pair: TlsPair): void {
    if (!(this.server instanceof https.Server)) throw new CarryonError('INVALID_ARGUMENT', 'this server was started without --tls-cert');
    this.server.setSecureContext({ cert: pair.cert, key: pair.key });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = Date.now();
    const url = new URL(req.url ?? '/', 'http://x');
    let user: User | null = null;
    let status = 200;
    let routePath = 'unknown';
    let admit: (() => void) | null = null;
    // The admin console is a static page; everything it shows comes from the admin API with the admin's token.
    if (req.method === 'GET' && (url.pathname === '/console' || url.pathname === '/')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': CONSOLE_CSP, 'x-content-type-options': 'nosniff', 'cache-control': 'no-store' });
      res.end(CONSOLE_HTML);
      return;
    }
    // Prometheus scrapes without a token: only counts, never names (see metrics.ts).
    if (req.method === 'GET' && url.pathname === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      let liveIn = 0;
      let liveOut = 0;
      for (const sock of this.liveSockets) {
        liveIn += sock.bytesRead;
        liveOut += sock.bytesWritten;
      }
      res.end(this.metrics.render(this.meta, this.fleet, liveIn, liveOut, this.opts.dataRoot ? diskSpace(this.opts.dataRoot) : null));
      return;
    }
    try {
      const route = this.routes.find((r) => r.method === req.method && r.re.test(url.pathname));
      if (route) routePath = route.path;
      if (!route) throw new CarryonError('NOT_FOUND', `no route ${req.method} ${url.pathname}`);
      const address = (this.opts.trustProxy ?? NO_PROXY).clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for']);
      const who = this.authenticate(req, address);
      user = who.user;
      admit = this.admit(who.user);
      const params = route.re.exec(url.pathname)!.slice(1).map(decodeParam);
      const actor: Actor = { name: who.user.name, device: who.device ?? header(req, HEADER_DEVICE) ?? null, address };
      const out = await route.handler({ req, res, url, params, user, device: who.device, claimedDevice: who.device ?? header(req, HEADER_DEVICE), actor });
      if (!res.headersSent && out !== undefined) sendJson(req, res, 200, out);
    } catch (err) {
      const e = forClient(asCarryonError(err));
      status = httpStatusOf(e.code);
      this.metrics.failure(e.code);
      const gone = (err as NodeJS.ErrnoException)?.code === 'ERR_STREAM_PREMATURE_CLOSE';
      if (gone) this.log({ level: 'warn', msg: 'client closed the connection mid-response', path: url.pathname });
      else if (e.code === 'INTERNAL' || e.code === 'IO_ERROR' || e.code === 'DISK_FULL') this.log({ level: 'error', msg: e.code === 'INTERNAL' ? 'internal error' : e.message, error: String((err as Error)?.stack ?? err) });
      if (!res.headersSent) {
        sendJson(req, res, status, { error: e.toJSON() }); // an unread rest of the body is read (bounded), then the connection closes
      } else {
        res.destroy(e); // mid-stream: the client sees a truncated body and retries
      }
    } finally {
      admit?.();
      const final = res.headersSent ? res.statusCode : status;
      this.metrics.request(req.method ?? '?', routePath, final);
      if (routePath === '/checkouts/:id/commit' && final < 300) this.metrics.commit((Date.now() - started) / 1000);
      this.log({ level: 'info', method: req.method, path: url.pathname, status: final, ms: Date.now() - started, user: user?.name });
    }
  }

  /** Requests in flight per user: one user (or a stolen token) cannot take every worker from the others. */
  private readonly inFlight = new Map<number, number>();

  /** Count a request against its user's share; returns the release, or throws RATE_LIMITED. */
  private admit(user: User): () => void {
    const n = this.inFlight.get(user.id) ?? 0;
    if (n >= MAX_IN_FLIGHT_PER_USER) {
      throw new CarryonError('RATE_LIMITED', `${user.name} already has ${n} requests in flight, the most one user may have; retry when some finish`, { max: MAX_IN_FLIGHT_PER_USER });
    }
    this.inFlight.set(user.id, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.inFlight.get(user.id) ?? 1) - 1;
      if (left > 0) this.inFlight.set(user.id, left);
      else this.inFlight.delete(user.id);
    };
  }

  /** Node's parser refused the request before a handler saw it: answer as every other error is answered. */
  private clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const e = err.code === 'HPE_HEADER_OVERFLOW' ? new CarryonError('HEADERS_TOO_LARGE', 'the request line and headers are over the 16 KiB the server reads')
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'ERR_HTTP_HEADERS_TIMEOUT' ? new CarryonError('REQUEST_TIMEOUT', 'the request headers did not arrive in time')
        : new CarryonError('BAD_REQUEST', `the request is not valid HTTP/1.1 (${String(err.code ?? 'parse error')})`);
    this.metrics.failure(e.code);
    const body = JSON.stringify({ error: e.toJSON() });
    const status = httpStatusOf(e.code);
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  }

  private authenticate(req: http.IncomingMessage, address: string | null): { user: User; device: string | null } {
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    if (!m) throw new CarryonError('UNAUTHORIZED', 'missing bearer token: log in with `carryon login URL`');
    const who = this.fleet.authenticate(m[1]!, address);
    if (!who) throw new CarryonError('UNAUTHORIZED', 'the token is unknown or revoked');
    // A device token speaks only for its own device.
    const claimed = header(req, HEADER_DEVICE);
    if (who.device && claimed !== undefined && claimed !== who.device) throw new CarryonError('FORBIDDEN', 'this token belongs to another device');
    return { user: who.user, device: who.device };
  }

  private activeCheckout(user: User, id: string, device: string | undefined) {
    const co = this.meta.checkoutFor(user, id);
    if (co.state !== 'active') throw this.meta.endedError(co);
    if (device !== undefined && co.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${id} is held by another device`, { checkoutId: id });
    return co;
  }

  private baseOf(co: { desktop_id: number; base_version: number }) {
    return this.manifests.get(this.meta.versionManifest(co.desktop_id, co.base_version));
  }

  /** What a checkout may name without sending: its version, its desktop's image version, and its user's own blocks. */
  private scopeOf(co: { desktop_id: number; base_version: number; user_id: number }): BlockScope {
    return new BlockScope(this.meta, co.user_id, [this.baseOf(co), this.manifests.get(this.meta.imageManifestOf(co.desktop_id))]);
  }

  private async startCheckout({ req, user, params, actor, device: tokenDevice }: Ctx): Promise<CheckoutInfo> {
    const { device, deviceName } = parseCheckoutRequest(await readJson(req));
    if (tokenDevice && device !== tokenDevice) throw new CarryonError('FORBIDDEN', 'this token belongs to another device');
    const { row, resumed, manifestId: mid } = this.meta.startCheckout(user, parseName(params[0], 'desktop'), device, deviceName, actor);
    // The persona version the laptop gets with the disk: the base of its check-in's merge.
    const personaVersion = row.persona_base_version ?? this.meta.setCheckoutPersonaBase(row.id, this.personas.get(user).version);
    const leaseExpiresAt = this.fleet.renewLease(row);
    return { checkoutId: row.id, desktop: params[0]!, version: row.base_version, manifestId: mid, resumed, personaVersion, leaseExpiresAt, leaseDays: this.fleet.leaseDays(row.desktop_id),
      leaseSecret: this.fleet.leaseSecret(row.id).toString('base64'), encryption: this.escrow.checkoutEncryption(row) };
  }

  /** The laptop holding a checkout escrows its copy's data key, sealed to the server's escrow key. */
  private async depositEscrow({ req, user, params, actor, claimedDevice }: Ctx): Promise<EscrowAnswer> {
    const { sealed, keyCheck } = parseEscrowRequest(await readJson(req));
    const co = this.activeCheckout(user, params[0]!, claimedDevice);
    // Only the holder's laptop: its device named, and the checkout its user's own (an admin's token does not deposit for another's copy).
    if (claimedDevice === undefined) throw new CarryonError('BAD_REQUEST', `an escrow deposit needs the ${HEADER_DEVICE} header`);
    if (co.user_id !== user.id) throw new CarryonError('FORBIDDEN', `checkout ${co.id} is another user's: only the laptop holding it escrows its key`, { checkoutId: co.id });
    return this.escrow.deposit(co, sealed, keyCheck, actor);
  }

  /** A laptop's contact: the lease starts over, and the server learns what it has not sent yet. */
  private async heartbeat({ req, user, params, claimedDevice, actor }: Ctx): Promise<HeartbeatReply> {
    const pending = parseHeartbeatRequest(await readJson(req));
    const device = claimedDevice;
    const ended = this.meta.checkoutFor(user, params[0]!);
    const requests = (id: string) => this.fleet.requests(id, true).map((r) => ({ id: r.id, kind: r.kind, state: r.state, detail: r.detail }));
    // A rolled-back checkout has ended, but its device must still hear of it (once per contact until done).
    const rollback = this.meta.rollbackOf(ended);
    if (rollback) {
      if (device !== undefined && ended.device !== device) throw new CarryonError('FORBIDDEN', `checkout ${ended.id} is held by another device`, { checkoutId: ended.id });
      return { checkoutId: ended.id, leaseExpiresAt: null, leaseDays: 0, serverTime: new Date().toISOString(), rolledBack: true, rollback, requests: requests(ended.id), replicateEveryMinutes: null, lastRestorePointAt: null };
    }
    const co = this.activeCheckout(user, params[0]!, device);
    // Lease codes used offline first: they are floors the renewal below respects.
    this.fleet.useLeaseCodes(co, pending.leaseCodeSeq ?? 0, actor);
    const leaseExpiresAt = this.fleet.renewLease(co, { bytes: pending.pendingBytes, blocks: pending.pendingBlocks });
    const last = this.fleet.checkout(co.id).lastRestorePoint;
    return { checkoutId: co.id, leaseExpiresAt, leaseDays: this.fleet.leaseDays(co.desktop_id), serverTime: new Date().toISOString(), rolledBack: false, requests: requests(co.id),
      replicateEveryMinutes: this.fleet.replicateMinutes(co.desktop_id), lastRestorePointAt: last?.at ?? null };
  }

  private async sendPersona({ res, url, user, claimedDevice }: Ctx): Promise<undefined> {
    const v = url.searchParams.has('version') ? intParam(url, 'version') : undefined;
    // The registry and file list are persona data too: not to a device whose copy must be encrypted and is not yet.
    this.escrow.requireEscrowForDevice(user.id, claimedDevice);
    const p = this.personas.get(user, v);
    const encoded = encodePersona(p.snapshot);
    res.writeHead(200, { 'content-type': CONTENT_PERSONA, 'content-length': encoded.length, [HEADER_PERSONA_VERSION]: String(p.version), [HEADER_PERSONA_ID]: personaId(encoded) });
    res.end(encoded);
    return undefined;
  }

  private async sendPersonaChunks({ req, res, user, claimedDevice }: Ctx): Promise<undefined> {
    const body = await readJson(req);
    const ids = parseIdList(body, MAX_GET_IDS);
    const version = (body as { version?: unknown }).version;
    if (!Number.isSafeInteger(version)) throw new CarryonError('BAD_REQUEST', 'version must be a persona version number');
    this.escrow.requireEscrowForDevice(user.id, claimedDevice);
    const entries = this.personas.chunks(user, version as number, ids);
    res.writeHead(200, { 'content-type': CONTENT_TAR });
    await pipeline(packEntries(entries), res);
    return undefined;
  }

  /** A tar of `persona-delta.json` and `push.json`, and for a check-in `disk.manifest`: the parts of a commit. */
  private async commitParts(req: http.IncomingMessage): Promise<Map<string, Buffer>> {
    const parts = new Map<string, Buffer>();
    await unpackEntries(requestBody(req, MAX_COMMIT_BODY_BYTES), MAX_PERSONA_SNAPSHOT_BYTES, ({ name, data }) => {
      if (!['disk.manifest', 'persona-delta.json', 'push.json'].includes(name) || parts.has(name)) throw new CarryonError('TAR_INVALID', `unexpected commit part ${JSON.stringify(name.slice(0, 100))}`);
      parts.set(name, data);
    }, { maxTotalBytes: MAX_COMMIT_BODY_BYTES });
    return parts;
  }

  private async pushPersona({ req, user, actor }: Ctx): Promise<PersonaCommitResult> {
    const parts = await this.commitParts(req);
    const snapshot = parts.get('persona-delta.json');
    const info = parts.get('push.json');
    if (!snapshot || !info) throw new CarryonError('BAD_REQUEST', 'a persona push carries persona-delta.json and push.json');
    const push = parsePersonaPushInfo(parseJson(info, 'a JSON part of the request'));
    return this.meta.db.transaction(() => {
      const r = this.personas.commit(user, parseJson(snapshot, 'a JSON part of the request'), push, null);
      if (r.changed) this.fleet.audit(actor, 'persona.push', `user:${user.name}`, { version: r.version, merged: r.merged, desktop: push.desktop });
      return r;
    })();
  }

  private async sendManifest({ res, user, params }: Ctx): Promise<undefined> {
    const co = this.meta.checkoutFor(user, params[0]!);
    const encoded = this.meta.getManifest(this.meta.versionManifest(co.desktop_id, co.base_version));
    res.writeHead(200, { 'content-type': CONTENT_MANIFEST, 'content-length': encoded.length });
    res.end(encoded);
    return undefined;
  }

  private async sendBlocks({ req, res, user, params, claimedDevice }: Ctx): Promise<undefined> {
    const { ids, bases, baseVersion } = parseGetBlocksRequest(await readJson(req));
    const co = this.activeCheckout(user, params[0]!, claimedDevice);
    // No desktop data to a copy that must be encrypted before its key is escrowed (an old carryon would write it in plaintext).
    this.escrow.requireEscrow(co);
    const base = this.baseOf(co);
    // A checkout reads only the blocks of its own version: ids are not capabilities.
    for (const id of ids) if (!base.ids.has(id)) throw new CarryonError('BLOCK_NOT_FOUND', `block ${id.slice(0, 12)}… is not part of this checkout`, { id });
    if (baseVersion !== null) {
      // Patch bases must come from a version of the same desktop the laptop can have held.
      if (baseVersion > co.base_version) throw new CarryonError('BAD_REQUEST', `baseVersion ${baseVersion} is newer than the checked-out version ${co.base_version}`);
      const held = this.manifests.get(this.meta.versionManifest(co.desktop_id, baseVersion));
      for (const b of bases.values()) if (!held.ids.has(b)) throw new CarryonError('BLOCK_NOT_FOUND', `base block ${b.slice(0, 12)}… is not part of version ${baseVersion}`, { id: b });
    }
    const store = this.store;
    async function* encoded(): AsyncGenerator<TarEntry> {
      for await (const e of readAhead(store, ids)) {
        yield e;
        crashPoint('serve-block');
      }
    }
    // Against the laptop's own older blocks: the changed byte ranges, in one zstd stream.
    async function* patched(): AsyncGenerator<TarEntry> {
      for (const id of ids) {
        const plain = await getBlock(store, id, base.manifest.blockSize);
        const b = bases.get(id);
        const patch = b === undefined ? null : encodeBlockPatch(await getBlock(store, b, base.manifest.blockSize), plain);
        yield patch !== null && patch.length < plain.length
          ? { name: uploadEntryName({ kind: 'patch', id, base: b! }), data: patch }
          : { name: uploadEntryName({ kind: 'block', id }), data: plain };
        crashPoint('serve-block');
      }
    }
    if (baseVersion === null) {
      res.writeHead(200, { 'content-type': CONTENT_TAR });
      await pipeline(packEntries(encoded()), res);
    } else {
      res.writeHead(200, { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' });
      await pipeline(packEntries(patched()), createCompressStream(3), res);
    }
    return undefined;
  }

  private async missing({ req, user, params }: Ctx): Promise<{ missing: string[] }> {
    const ids = parseIdList(await readJson(req), MAX_QUERY_IDS);
    // Any state: a client killed after its commit landed asks again before re-committing.
    return { missing: this.scopeOf(this.meta.checkoutFor(user, params[0]!)).missing(ids) };
  }

  /**
   * Refuse to start storing when the data folder's file system is nearly full: a request would fail
   * half-way anyway, and the last bytes are better left to SQLite for its commits.
   */
  private needSpace(): void {
    if (!this.opts.dataRoot) return;
    const { free } = diskSpace(this.opts.dataRoot);
    const min = this.opts.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES;
    if (free < min) throw new CarryonError('DISK_FULL', `only ${free} bytes are free in the server's data folder, below the ${min} kept in reserve`, { free });
  }

  private async upload({ req, user, params, claimedDevice }: Ctx) {
    const co = this.activeCheckout(user, params[0]!, claimedDevice);
    this.needSpace();
    // Stream faults are TAR_INVALID from unpackEntries; anything else (a full disk) keeps its own code.
    return ingestUpload(this.meta, this.store, this.baseOf(co), this.scopeOf(co), requestBody(req, MAX_UPLOAD_REQUEST_BYTES));
  }

  /** The body of a commit or restore point: a bare manifest, or a tar of disk.manifest with the persona (persona-delta.json and push.json). */
  private async manifestWithPersona(req: http.IncomingMessage, what: string): Promise<{ encoded: Buffer; persona: { delta: unknown; push: PersonaPushInfo } | null }> {
    if (!(req.headers['content-type'] ?? '').startsWith(CONTENT_TAR)) return { encoded: await readBody(req, MAX_MANIFEST_BYTES), persona: null };
    const parts = await this.commitParts(req);
    const encoded = parts.get('disk.manifest');
    if (!encoded) throw new CarryonError('BAD_REQUEST', `${what} carries disk.manifest`);
    const snapshot = parts.get('persona-delta.json');
    const push = parts.get('push.json');
    if (snapshot && push) return { encoded, persona: { delta: parseJson(snapshot, 'a JSON part of the request'), push: parsePersonaPushInfo(parseJson(push, 'a JSON part of the request')) } };
    if (snapshot || push) throw new CarryonError('BAD_REQUEST', 'persona-delta.json and push.json go together');
    return { encoded, persona: null };
  }

  /** A restore point: like a commit's validation (every block present), but the checkout goes on. */
  private async restorePoint({ req, user, params, actor, claimedDevice }: Ctx) {
    const co = this.activeCheckout(user, params[0]!, claimedDevice);
    const { encoded, persona } = await this.manifestWithPersona(req, 'a restore point');
    const next = decodeManifest(encoded);
    const id = manifestId(encoded);
    const base = this.baseOf(co);
    if (next.blockSize !== base.manifest.blockSize || next.size !== base.manifest.size) {
      throw new CarryonError('MANIFEST_INVALID', 'a restore point must have the checked-out version\'s size and block size');
    }
    const missing = this.scopeOf(co).missing(next.uniqueIds());
    if (missing.length > 0) throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} block(s) the restore point names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
    await this.store.sync();
    this.meta.putManifest(id, encoded, next);
    let changed = 0;
    for (let i = 0; i < next.count; i++) if (next.ids.compare(base.manifest.ids, i * 32, i * 32 + 32, i * 32, i * 32 + 32) !== 0) changed++;
    return this.meta.db.transaction(() => {
      const personaSnapshot = persona ? this.personas.snapshotFor(user, persona.delta, persona.push.baseVersion) : null;
      return this.fleet.addRestorePoint(co, id, changed, actor, personaSnapshot);
    })();
  }

  private async commit({ req, user, params, actor, claimedDevice }: Ctx): Promise<CommitResult> {
    const device = claimedDevice;
    if (!device) throw new CarryonError('BAD_REQUEST', `commit needs the ${HEADER_DEVICE} header`);
    const { encoded, persona } = await this.manifestWithPersona(req, 'a check-in commit');
    const next = decodeManifest(encoded);
    const id = manifestId(encoded);
    const co = this.meta.checkoutFor(user, params[0]!);
    if (co.state === 'active') {
      const base = this.baseOf(co);
      if (next.blockSize !== base.manifest.blockSize) {
        throw new CarryonError('MANIFEST_INVALID', `manifest block size ${next.blockSize} differs from the checked-out version's ${base.manifest.blockSize}`);
      }
      const missing = this.scopeOf(co).missing(next.uniqueIds());
      if (missing.length > 0) {
        throw new CarryonError('BLOCKS_MISSING', `the server lacks ${missing.length} block(s) the new version names; upload them first`, { count: missing.length, ids: missing.slice(0, 16) });
      }
      await this.store.sync();
      this.meta.putManifest(id, encoded, next);
    }
    crashPoint('commit-before-transaction');
    // Disk and persona move together, in one transaction, or neither does.
    return this.meta.db.transaction((): CommitResult => {
      const r = this.meta.commitCheckout(user, co.id, device, id);
      let p: PersonaCommitResult | undefined;
      if (persona && r.already) p = this.personas.committedBy(user, co.id);
      else if (persona) p = this.personas.commit(user, persona.delta, persona.push, co.id);
      if (!r.already) this.fleet.audit(actor, 'checkout.commit', `desktop:${r.desktop}`, { checkoutId: co.id, from: r.previousVersion, to: r.version, persona: p?.version ?? null });
      return { desktop: r.desktop, version: r.version, manifestId: id, previousVersion: r.previousVersion, alreadyCommitted: r.already, ...(p ? { persona: p } : {}) };
    })();
  }
}

function intOf(s: string): number {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 1) throw new CarryonError('BAD_REQUEST', `${JSON.stringify(s.slice(0, 40))} is not an id`);
  return n;
}

function intParam(url: URL, name: string): number {
  const n = Number(url.searchParams.get(name));
  if (!Number.isSafeInteger(n) || n < 1) throw new CarryonError('BAD_REQUEST', `query parameter ${name} must be a positive integer`);
  return n;
}


/**
 * What the client may see of an error: the server's own file and disk failures keep their code but not
 * their paths or errno text (logged instead), and say what happens next.
 */
function forClient(e: CarryonError): CarryonError {
  if (e.code === 'DISK_FULL') {
    return new CarryonError('DISK_FULL', 'the server has no space left to store this: nothing was lost and nothing changed; an admin must free space on the server (carryon-server status shows how much is free), then run the command again',
      { where: 'server' }, e);
  }
  if (e.code === 'IO_ERROR') return new CarryonError('IO_ERROR', 'the server could not read or write its data folder; nothing changed: the admin should check the server log', { where: 'server' }, e);
  return e;
}
