// The HTTP service: routing, authentication, body limits, and the one place where a CarryonError
// becomes an HTTP response. Handlers parse untrusted input with src/wire parsers, then trust types.
import http from 'node:http';
import https from 'node:https';
import { pipeline } from 'node:stream/promises';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  API_PREFIX, encodeLatestYml, asCarryonError, diskSpace, parseJson, CarryonError, CONTENT_MANIFEST, CONTENT_TAR, createCompressStream, HEADER_DEVICE, httpStatusOf,
  MAX_QUERY_IDS, type MissingAnswer, packEntries, writeEntriesChunked, parseCheckoutRequest, parseGetBlocksRequest, parseIdList, parseName, CONTENT_PERSONA, encodePersona, HEADER_PERSONA_ID, HEADER_PERSONA_VERSION, MAX_GET_IDS,
  MAX_PERSONA_SNAPSHOT_BYTES, parsePersonaPushInfo, personaId, unpackEntries, MAX_COMMIT_BODY_BYTES, MAX_PERSONA_UPLOAD_BYTES, MAX_UPLOAD_REQUEST_BYTES, parseDeviceRequest, parseHeartbeatRequest,
  parseRequestUpdate, parseDesktopPolicy, parseDaysRequest, parseRestorePointRequest, parseEscrowRequest, parseBootTrace, type PersonaCommitResult,
} from '../src/index.js';
import { decodeParam, header, readBody, readJson, requestBody, sendJson } from './http-util.js';
import type { User } from './meta.js';
import type { Actor } from './fleet-meta.js';
import { Metrics } from './metrics.js';
import { CONSOLE_CSP, CONSOLE_HTML } from './console-page.js';
import { ProxyTrust } from './client-address.js';
import type { TlsPair } from './tls.js';
import type { ServerParts } from './services/parts.js';
import type { PersonaPart } from './services/checkout-service.js';
import { BufferPool, PACK_CHUNK_BYTES } from '../src/index.js'; // (its own line: the list above changes often)

/** Without --trust-proxy: X-Forwarded-For is never believed. */
const NO_PROXY = new ProxyTrust('');

/** A connection with no byte moving either way for this long is closed (a stalled or vanished peer). */
const IDLE_TIMEOUT_MS = 120_000;
/** Requests one user may have in flight at once (a laptop uses at most 4 connections per command). */
const MAX_IN_FLIGHT_PER_USER = 32;
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
  /** The data folder, whose free space is reported in /metrics. */
  dataRoot?: string;
}

export class CarryonHttpServer {
  private readonly server: http.Server | https.Server;
  private readonly routes: Array<{ method: string; re: RegExp; path: string; handler: Handler }> = [];
  readonly metrics = new Metrics();
  private readonly liveSockets = new Set<Socket>();
  /** Chunks of block answers, used again once written (writeEntriesChunked): 16 kept, 4 MiB. */
  private readonly answerChunks = new BufferPool(PACK_CHUNK_BYTES, 16);

  /** Handlers parse, authorize and answer; every rule and every database change is in `parts`' services. */
  constructor(private readonly parts: ServerParts, private readonly log: Logger, private readonly opts: ServerOptions = {}) {
    const { meta, fleet, desktops, checkouts, personas, escrow } = parts;
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
    r('GET', '/whoami', async ({ user, device }) => ({ user: user.name, admin: user.isAdmin, device, deviceName: device ? await fleet.deviceName(device) : null }));
    // Client updates (server/release.ts): electron-updater's generic-provider layout under /updates/, the
    // feed signed with the server's release key, whose public half laptops fetch once at login.
    r('GET', '/updates/key', async () => ({ publicKey: parts.releases.publicKey() }));
    // latest.yml is electron-updater's channel file on Windows, latest-linux.yml and latest-mac.yml on the
    // others: one client for every platform here, so all three say the same.
    r('GET', '/updates/:file', async ({ res, params }) => {
      if (/^latest(-linux|-mac)?\.yml$/.test(params[0]!)) {
        const text = encodeLatestYml(await parts.releases.feed());
        res.writeHead(200, { 'content-type': 'text/yaml; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
        res.end(text);
        return;
      }
      const bytes = await parts.releases.file(params[0]!);
      res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': bytes.length });
      res.end(bytes);
    });
    r('GET', '/desktops', async ({ user }) => ({ desktops: await desktops.list(user) }));
    r('GET', '/desktops/:name', async ({ user, params }) => desktops.info(user, parseName(params[0], 'desktop')));
    // Boot traces (server/boot-traces.ts): the read order of the image version's earlier streamed boots.
    r('GET', '/desktops/:name/boot-trace', async ({ user, params }) => parts.bootTraces.get(user, parseName(params[0], 'desktop')));
    r('PUT', '/desktops/:name/boot-trace', async ({ req, user, params }) => parts.bootTraces.put(user, parseName(params[0], 'desktop'), parseBootTrace(await readJson(req))));
    r('POST', '/desktops/:name/checkouts', async ({ req, user, params, actor, device: tokenDevice }) => {
      const { device, deviceName } = parseCheckoutRequest(await readJson(req));
      if (tokenDevice && device !== tokenDevice) throw new CarryonError('FORBIDDEN', 'this token belongs to another device');
      return checkouts.start(user, parseName(params[0], 'desktop'), device, deviceName, actor);
    });
    r('GET', '/checkouts/:id/manifest', async ({ res, user, params }) => {
      const encoded = await checkouts.manifest(user, params[0]!);
      res.writeHead(200, { 'content-type': CONTENT_MANIFEST, 'content-length': encoded.length });
      res.end(encoded);
      return undefined;
    });
    r('POST', '/checkouts/:id/blocks/get', async ({ req, res, user, params, claimedDevice }) => {
      const { ids, bases, baseVersion } = parseGetBlocksRequest(await readJson(req));
      const out = await checkouts.blocks(user, params[0]!, claimedDevice, ids, bases, baseVersion);
      if (out.compressed) {
        res.writeHead(200, { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' });
        await pipeline(packEntries(out.entries), createCompressStream(3), res);
      } else {
        res.writeHead(200, { 'content-type': CONTENT_TAR });
        // Every entry is at hand (read a batch ahead): copied into chunks, a socket write per 256 KiB, the
        // chunks used again once written.
        await writeEntriesChunked(res, out.entries, PACK_CHUNK_BYTES, this.answerChunks);
      }
      return undefined;
    });
    // `frames`: this server takes `z/<id>` upload entries (src/wire MissingAnswer); older laptops ignore it.
    r('POST', '/checkouts/:id/blocks/missing', async ({ req, user, params }): Promise<MissingAnswer> => ({ missing: await checkouts.missing(user, params[0]!, parseIdList(await readJson(req), MAX_QUERY_IDS)), frames: true }));
    // Stream faults are TAR_INVALID from unpackEntries; anything else (a full disk) keeps its own code.
    r('PUT', '/checkouts/:id/blocks', async ({ req, user, params, claimedDevice }) => checkouts.upload(user, params[0]!, claimedDevice, requestBody(req, MAX_UPLOAD_REQUEST_BYTES)));
    r('POST', '/checkouts/:id/commit', async ({ req, user, params, actor, claimedDevice }) => {
      const { encoded, persona } = await this.manifestWithPersona(req, 'a check-in commit');
      return checkouts.commit(user, params[0]!, claimedDevice, encoded, persona, actor);
    });
    r('DELETE', '/checkouts/:id', async ({ user, params, actor, claimedDevice }) => checkouts.discard(user, params[0]!, claimedDevice, actor));
    r('POST', '/checkouts/:id/heartbeat', async ({ req, user, params, claimedDevice, actor }) => checkouts.heartbeat(user, params[0]!, claimedDevice, parseHeartbeatRequest(await readJson(req)), actor));
    r('PUT', '/checkouts/:id/escrow', async ({ req, user, params, actor, claimedDevice }) => {
      const { sealed, keyCheck } = parseEscrowRequest(await readJson(req));
      return checkouts.depositEscrow(user, params[0]!, claimedDevice, sealed, keyCheck, actor);
    });
    r('POST', '/devices', async ({ req, user, actor, device: tokenDevice }) => {
      // Only the user's own token registers devices: a laptop's token (perhaps stolen) must not mint others.
      if (tokenDevice) throw new CarryonError('FORBIDDEN', 'a device token cannot register devices: log in with the user token');
      const { device, name } = parseDeviceRequest(await readJson(req));
      return fleet.registerDevice(user, device, name, { ...actor, device });
    });
    // Admin: who holds what, tokens, leases, the audit log.
    const admin = (h: Handler): Handler => async (c) => {
      if (!c.user.isAdmin) throw new CarryonError('FORBIDDEN', `${c.user.name} is not an admin`);
      // A laptop's token (perhaps stolen with the laptop) never acts as the admin: only the admin's own token does.
      if (c.device) throw new CarryonError('FORBIDDEN', 'admin actions need the admin\'s own token, not a device token');
      return h(c);
    };
    r('GET', '/admin/checkouts', admin(async () => ({ checkouts: await fleet.activeCheckouts() })));
    r('POST', '/admin/checkouts/:id/lease', admin(async ({ req, params, actor }) => fleet.extendLease(params[0]!, parseDaysRequest(await readJson(req), false), actor)));
    r('POST', '/admin/checkouts/:id/checkin', admin(async ({ params, actor }) => fleet.requestCheckin(params[0]!, actor)));
    r('POST', '/admin/checkouts/:id/rollback', admin(async ({ req, params, actor }) => fleet.rollback(params[0]!, actor, parseRestorePointRequest(await readJson(req), false))));
    r('POST', '/admin/desktops/:name/restore', admin(async ({ req, params, actor }) => {
      const point = parseRestorePointRequest(await readJson(req), true)!;
      return desktops.restoreDesktop(parseName(params[0], 'desktop'), point, actor);
    }));
    r('GET', '/desktops/:name/restore-points', async ({ user, params }) => ({ restorePoints: await desktops.restorePoints(user, parseName(params[0], 'desktop')) }));
    r('POST', '/checkouts/:id/restore-points', async ({ req, user, params, actor, claimedDevice }) => {
      const { encoded, persona } = await this.manifestWithPersona(req, 'a restore point');
      return checkouts.restorePoint(user, params[0]!, claimedDevice, encoded, persona, actor);
    });
    r('POST', '/admin/desktops/:name/policy', admin(async ({ req, params, actor }) => desktops.setDesktopPolicy(parseName(params[0], 'desktop'), parseDesktopPolicy(await readJson(req)), actor)));
    r('POST', '/admin/images/:name/policy', admin(async ({ req, params, actor }) => {
      const p = parseDesktopPolicy(await readJson(req));
      if (Object.keys(p).length === 0) throw new CarryonError('BAD_REQUEST', 'an image policy sets leaseDays and encryption only');
      return desktops.setImagePolicy(parseName(params[0], 'image'), p, actor);
    }));
    // The console's "Refresh": one desktop back on its image's newest version (the CLI does many at once).
    r('POST', '/admin/desktops/:name/refresh', admin(async ({ params, actor }) => (await parts.recompose.apply([parseName(params[0], 'desktop')], { kind: 'refresh' }, actor))[0]));
    r('DELETE', '/admin/desktops/:name', admin(async ({ params, actor }) => desktops.deleteDesktop(parseName(params[0], 'desktop'), actor)));
    r('GET', '/admin/requests', admin(async () => ({ requests: await fleet.requests() })));
    // Decodes every live manifest: the console asks every 30 s, and one report serves every admin for 30 s.
    r('GET', '/admin/sharing', admin(async () => parts.sharing.report(30_000)));
    r('POST', '/checkouts/:id/requests/:rid', async ({ req, user, params, actor, claimedDevice }) => {
      const { state, detail } = parseRequestUpdate(await readJson(req));
      return checkouts.updateRequest(user, params[0]!, intOf(params[1]!), claimedDevice, state, detail, actor);
    });
    // The escrow private key stays in the data folder (or offline): only the code crosses the network.
    r('POST', '/admin/checkouts/:id/recovery-code', admin(async ({ params, actor }) => escrow.recoveryCode({ checkoutId: params[0]! }, actor)));
    r('POST', '/admin/checkouts/:id/lease-code', admin(async ({ req, params, actor }) => fleet.leaseCode(params[0]!, parseDaysRequest(await readJson(req), true), actor)));
    r('POST', '/admin/users/:name/persona/restore', admin(async ({ req, params, actor }) => {
      const version = ((await readJson(req)) as { version?: unknown }).version;
      if (!Number.isSafeInteger(version) || (version as number) < 1) throw new CarryonError('BAD_REQUEST', 'version must be a persona version number');
      return personas.restore(await meta.userByName(parseName(params[0], 'user')), version as number, actor);
    }));
    r('GET', '/admin/tokens', admin(async () => ({ tokens: await fleet.tokens() })));
    r('POST', '/admin/tokens/:id/revoke', admin(async ({ params, actor }) => fleet.revokeToken(intOf(params[0]!), actor)));
    r('GET', '/admin/audit', admin(async ({ url }) => ({ audit: await fleet.auditLog(url.searchParams.has('limit') ? intParam(url, 'limit') : 200) })));
    r('GET', '/persona', async ({ res, url, user, claimedDevice }) => {
      const p = await personas.encodedForDevice(user, claimedDevice, url.searchParams.has('version') ? intParam(url, 'version') : undefined);
      const encoded = p.encoded;
      res.writeHead(200, { 'content-type': CONTENT_PERSONA, 'content-length': encoded.length, [HEADER_PERSONA_VERSION]: String(p.version), [HEADER_PERSONA_ID]: personaId(encoded) });
      res.end(encoded);
      return undefined;
    });
    r('POST', '/persona/chunks/get', async ({ req, res, user, claimedDevice }) => {
      const body = await readJson(req);
      const ids = parseIdList(body, MAX_GET_IDS);
      const version = (body as { version?: unknown }).version;
      if (!Number.isSafeInteger(version)) throw new CarryonError('BAD_REQUEST', 'version must be a persona version number');
      const entries = await personas.chunks(user, claimedDevice, version as number, ids);
      res.writeHead(200, { 'content-type': CONTENT_TAR });
      await pipeline(packEntries(entries), res);
      return undefined;
    });
    r('POST', '/persona/chunks/missing', async ({ req, user }) => ({ missing: await personas.missing(user, parseIdList(await readJson(req), MAX_QUERY_IDS)) }));
    r('PUT', '/persona/blocks', async ({ req, url, user }) => personas.ingest(user, intParam(url, 'base'), requestBody(req, MAX_PERSONA_UPLOAD_BYTES)));
    r('POST', '/persona/push', async ({ req, user, actor }) => this.pushPersona(req, user, actor));
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
      res.end(await this.metrics.render(this.parts.meta, this.parts.fleet, liveIn, liveOut, this.opts.dataRoot ? diskSpace(this.opts.dataRoot) : null, this.parts.sharing));
      return;
    }
    try {
      const route = this.routes.find((r) => r.method === req.method && r.re.test(url.pathname));
      if (route) routePath = route.path;
      if (!route) throw new CarryonError('NOT_FOUND', `no route ${req.method} ${url.pathname}`);
      const address = (this.opts.trustProxy ?? NO_PROXY).clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for']);
      const who = await this.authenticate(req, address);
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

  private async authenticate(req: http.IncomingMessage, address: string | null): Promise<{ user: User; device: string | null }> {
    const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    if (!m) throw new CarryonError('UNAUTHORIZED', 'missing bearer token: log in with `carryon login URL`');
    const who = await this.parts.fleet.authenticate(m[1]!, address);
    if (!who) throw new CarryonError('UNAUTHORIZED', 'the token is unknown or revoked');
    // A device token speaks only for its own device.
    const claimed = header(req, HEADER_DEVICE);
    if (who.device && claimed !== undefined && claimed !== who.device) throw new CarryonError('FORBIDDEN', 'this token belongs to another device');
    return { user: who.user, device: who.device };
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

  private async pushPersona(req: http.IncomingMessage, user: User, actor: Actor): Promise<PersonaCommitResult> {
    const parts = await this.commitParts(req);
    const snapshot = parts.get('persona-delta.json');
    const info = parts.get('push.json');
    if (!snapshot || !info) throw new CarryonError('BAD_REQUEST', 'a persona push carries persona-delta.json and push.json');
    return this.parts.personas.push(user, parseJson(snapshot, 'a JSON part of the request'), parsePersonaPushInfo(parseJson(info, 'a JSON part of the request')), actor);
  }

  /** The body of a commit or restore point: a bare manifest, or a tar of disk.manifest with the persona (persona-delta.json and push.json). */
  private async manifestWithPersona(req: http.IncomingMessage, what: string): Promise<{ encoded: Buffer; persona: PersonaPart | null }> {
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
