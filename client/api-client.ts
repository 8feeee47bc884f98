// ApiClient: the laptop's side of the HTTP API. Counts every body byte in both directions (the
// figures `--json` reports), turns error bodies back into CarryonErrors, and connection failures into
// SERVER_UNREACHABLE (TLS failures into their own codes, see tls.ts).
import http from 'node:http';
import https from 'node:https';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  API_PREFIX, CarryonError, MAX_FEED_BYTES, parseJson, CONTENT_MANIFEST, CONTENT_TAR, createDecompressStream, errorFromBody, HEADER_PERSONA_ID, HEADER_PERSONA_VERSION, MAX_PERSONA_SNAPSHOT_BYTES,
  encodeBlock, packEntries, parseCheckoutInfo, PERSONA_CHUNK_BYTES, type PersonaCommitResult, HEADER_DEVICE, unpackEntries, type BlockId, type CheckoutInfo, type CommitResult, type EscrowRequest,
  type DesktopInfo, type MissingAnswer, type TarEntry, parseBootTrace, type BootTrace, type UploadResult, type HeartbeatReply, type HeartbeatRequest,
} from '../src/index.js';
import { checkTransport, secureContextFor, tlsFailure } from './tls.js';

/**
 * Default: a request with no byte moving for this long fails (a stalled server or a dead link);
 * CARRYON_IDLE_TIMEOUT (seconds) overrides it for slow links.
 */
const DEFAULT_IDLE_MS = Number(process.env.CARRYON_IDLE_TIMEOUT) > 0 ? Number(process.env.CARRYON_IDLE_TIMEOUT) * 1000 : 60_000;
/** An error answer is a small JSON body: what is read of a longer one. */
const MAX_ERROR_BODY = 64 * 1024;
/** A JSON answer (upload and commit results): small; what is read of a longer one. */
const MAX_ANSWER_BYTES = 16 * 1024 * 1024;

export interface ApiClientOptions {
  url: string;
  token: string;
  device: string;
  /** A request with no bytes moving for this long fails as SERVER_UNREACHABLE (a hung server, a dead link). */
  idleTimeoutMs?: number;
  /** A CA certificate (PEM) trusted besides the system store: `carryon login --ca`. */
  ca?: string | null;
  /** Plain http:// to a non-loopback host, as the user chose with `carryon login --insecure-http`. */
  insecureHttp?: boolean;
}

export class ApiClient {
  bytesSent = 0;
  bytesReceived = 0;
  private readonly base: URL;
  private readonly agent: http.Agent;
  /** Streamed uploads: a new connection each, so none is sent on a kept-alive one the server just closed. */
  private readonly freshAgent: http.Agent;

  constructor(private readonly opts: ApiClientOptions) {
    this.base = new URL(opts.url);
    checkTransport(this.base, opts.insecureHttp);
    const secureContext = this.base.protocol === 'https:' ? secureContextFor(opts.ca) : null;
    this.agent = secureContext ? new https.Agent({ keepAlive: true, maxSockets: 4, secureContext }) : new http.Agent({ keepAlive: true, maxSockets: 4 });
    this.freshAgent = secureContext ? new https.Agent({ keepAlive: false, secureContext }) : new http.Agent({ keepAlive: false });
  }

  close(): void {
    this.agent.destroy();
    this.freshAgent.destroy();
  }

  /** Responses whose connection was closed by the idle timeout (a stalled server), for the error they end with. */
  private readonly stalled = new WeakMap<http.IncomingMessage, number>();

  /**
   * Send one request; resolves with the response once its headers arrive and its status is 2xx. An error
   * answer wins over the broken pipe of an upload it cut short: the upload stops and its error is thrown.
   */
  private async request(method: string, path: string, body: Buffer | Readable | null, headers: Record<string, string> = {}): Promise<http.IncomingMessage> {
    try {
      return await this.send(method, path, body, headers, this.agent);
    } catch (err) {
      // A kept-alive connection the server closed as idle just as we sent on it (a busy laptop's event loop
      // saw the server's FIN too late): the server never read the request, so sending it again on a new
      // connection is safe (a new one: the pool's other idle connections may be closed as well). Only a body
      // we still hold can be sent again; streams never reuse a connection.
      if (!(err instanceof StaleConnection)) throw err;
      return this.send(method, path, body, headers, this.freshAgent, false);
    }
  }

  /**
   * One attempt. A replayable request (no body or a Buffer) sent on a reused connection that drops before
   * any answer fails with StaleConnection (once: `retry` false turns it into the usual error); a streamed
   * upload goes on a fresh connection (`freshAgent`), since its bytes cannot be sent twice.
   */
  private send(method: string, path: string, body: Buffer | Readable | null, headers: Record<string, string>, agent: http.Agent, retry = true): Promise<http.IncomingMessage> {
    const url = new URL(API_PREFIX + path, this.base);
    const mod = url.protocol === 'https:' ? https : http;
    const replayable = body === null || Buffer.isBuffer(body);
    return new Promise((resolve, reject) => {
      const req = mod.request(url, {
        method,
        agent: replayable ? agent : this.freshAgent,
        headers: { authorization: `Bearer ${this.opts.token}`, [HEADER_DEVICE]: this.opts.device, ...headers, ...(Buffer.isBuffer(body) ? { 'content-length': String(body.length) } : {}) },
      });
      let answered: http.IncomingMessage | null = null;
      // The upload's last stage: forwards to `req` until an error answer detaches it. Then the body is
      // destroyed without taking `req` (and the answer still being read) down with it, as pipeline would.
      let detached = false;
      const sink = new Writable({
        write: (chunk: Buffer, _e, cb) => {
          if (detached) return cb();
          this.bytesSent += chunk.length;
          if (req.write(chunk)) return cb();
          const go = (err?: Error): void => {
            req.off('drain', go);
            req.off('close', closed);
            cb(err);
          };
          const closed = (): void => go(detached ? undefined : new Error('the connection closed during the upload'));
          req.once('drain', go);
          req.once('close', closed);
        },
        final: (cb) => {
          if (!detached) req.end();
          cb();
        },
      });
      req.on('error', (err) => {
        if (answered) return;
        const code = (err as NodeJS.ErrnoException).code;
        if (retry && replayable && req.reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE')) return reject(new StaleConnection());
        void this.failure(err).then(reject);
      });
      const idle = this.opts.idleTimeoutMs ?? DEFAULT_IDLE_MS;
      req.setTimeout(idle, () => {
        if (answered) this.stalled.set(answered, idle);
        req.destroy(answered ? undefined : new CarryonError('SERVER_UNREACHABLE', `the server at ${this.base.origin} did not answer for ${idle / 1000} s; it may be overloaded or the network path is down: retry later`,
          { url: this.base.origin, reason: 'timeout', idleSeconds: idle / 1000 }));
      });
      req.on('response', (res) => {
        answered = res;
        if ((res.statusCode ?? 500) < 300) return resolve(res);
        // Stop sending: the server has refused the request.
        if (body !== null && !Buffer.isBuffer(body)) {
          detached = true;
          body.destroy();
        }
        const parts: Buffer[] = [];
        let n = 0;
        let settled = false;
        const settle = (): void => {
          if (settled) return;
          settled = true;
          let parsed: unknown = null;
          try {
            parsed = parseJson(Buffer.concat(parts), 'the error answer');
          } catch {
            /* not JSON: errorFromBody reports the status */
          }
          req.destroy(); // an unfinished upload leaves the connection unusable
          reject(errorFromBody(res.statusCode ?? 500, parsed));
        };
        res.on('data', (c: Buffer) => {
          this.bytesReceived += c.length;
          n += c.length;
          if (n <= MAX_ERROR_BODY) parts.push(c);
          // An error answer is small: one that goes on past the limit is not read to its end (an endless
          // body was read for as long as the server sent it).
          else settle();
        });
        res.on('error', (err) => reject(unreachable(this.base, err)));
        res.on('end', settle);
      });
      if (body === null) req.end();
      else if (Buffer.isBuffer(body)) {
        this.bytesSent += body.length;
        req.end(body);
      } else {
        pipeline(body, sink).catch((err) => {
          if (answered) return; // the answer (an error the server sent) settles it
          if (err instanceof CarryonError) {
            req.destroy();
            return reject(err);
          }
          // The server may have answered and closed while we were still sending: give its answer a moment.
          setTimeout(() => {
            if (answered) return;
            req.destroy();
            void this.failure(err).then(reject);
          }, 2_000).unref();
        });
      }
    });
  }

  /** A failed request as a CarryonError: its own when it has one, a TLS code, else SERVER_UNREACHABLE. */
  private async failure(err: unknown): Promise<CarryonError> {
    return (await tlsFailure(this.base, err, this.opts.ca)) ?? unreachable(this.base, err);
  }

  private async readAll(res: http.IncomingMessage, max = 512 * 1024 * 1024): Promise<Buffer> {
    const parts: Buffer[] = [];
    let n = 0;
    try {
      for await (const c of res as AsyncIterable<Buffer>) {
        n += c.length;
        this.bytesReceived += c.length;
        if (n > max) throw new CarryonError('PAYLOAD_TOO_LARGE', `server response over ${max} bytes`);
        parts.push(c);
      }
    } catch (err) {
      if (err instanceof CarryonError) throw err;
      throw this.dropError(res, err);
    }
    return Buffer.concat(parts, n);
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body === undefined ? null : Buffer.from(JSON.stringify(body)), body === undefined ? {} : { 'content-type': 'application/json' });
    const buf = await this.readAll(res, 64 * 1024 * 1024);
    try {
      return parseJson(buf, `the answer to ${method} ${path}`) as T;
    } catch {
      throw new CarryonError('INTERNAL', `server sent invalid JSON for ${method} ${path}`);
    }
  }

  whoami(): Promise<{ user: string; admin: boolean }> {
    return this.json('GET', '/whoami');
  }

  /** The server's release public key (SPKI base64), null when it has none (an older server: null too). */
  async releaseKey(): Promise<string | null> {
    try {
      return (await this.json<{ publicKey: string | null }>('GET', '/updates/key')).publicKey;
    } catch (err) {
      if (err instanceof CarryonError && err.code === 'NOT_FOUND') return null;
      throw err;
    }
  }

  /** latest.yml as the server sends it (capped: the feed is small). */
  async updateFeed(): Promise<Buffer> {
    return this.readAll(await this.request('GET', '/updates/latest.yml', null), MAX_FEED_BYTES);
  }

  /** A release file named by the feed, at most `max` bytes (the size the signed feed gives). */
  async updateFile(file: string, max: number): Promise<Buffer> {
    return this.readAll(await this.request('GET', `/updates/${encodeURIComponent(file)}`, null), max);
  }

  registerDevice(device: string, name: string): Promise<{ device: string; token: string }> {
    return this.json('POST', '/devices', { device, name });
  }

  heartbeat(checkoutId: string, pending: HeartbeatRequest): Promise<HeartbeatReply> {
    return this.json('POST', `/checkouts/${checkoutId}/heartbeat`, pending);
  }

  updateRequest(checkoutId: string, id: number, state: 'in-progress' | 'done' | 'failed', detail: Record<string, unknown>): Promise<unknown> {
    return this.json('POST', `/checkouts/${checkoutId}/requests/${id}`, { state, detail });
  }

  async restorePoint(checkoutId: string, manifest: Buffer, persona?: TarEntry[]): Promise<{ id: number; createdAt: string; blocksChanged: number; withPersona: boolean }> {
    const res = persona
      ? await this.request('POST', `/checkouts/${checkoutId}/restore-points`, await tarOf([{ name: 'disk.manifest', data: manifest }, ...persona], true), { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' })
      : await this.request('POST', `/checkouts/${checkoutId}/restore-points`, manifest, { 'content-type': CONTENT_MANIFEST });
    return parseJson(await this.readAll(res, MAX_ANSWER_BYTES), 'the server\'s answer') as { id: number; createdAt: string; blocksChanged: number; withPersona: boolean };
  }

  desktops(): Promise<{ desktops: DesktopInfo[] }> {
    return this.json('GET', '/desktops');
  }

  desktop(name: string): Promise<DesktopInfo> {
    return this.json('GET', `/desktops/${encodeURIComponent(name)}`);
  }

  /** The boot trace of the desktop's image version (blocks empty when none yet), parsed: it is untrusted input. */
  async bootTrace(name: string): Promise<BootTrace> {
    return parseBootTrace(await this.json('GET', `/desktops/${encodeURIComponent(name)}/boot-trace`));
  }

  /** Report the blocks this laptop's VM first read (the server keeps the latest per image version). */
  putBootTrace(name: string, trace: BootTrace): Promise<{ image: string; imageVersion: number; blocks: number }> {
    return this.json('PUT', `/desktops/${encodeURIComponent(name)}/boot-trace`, trace);
  }

  async startCheckout(name: string, deviceName: string): Promise<CheckoutInfo> {
    return parseCheckoutInfo(await this.json('POST', `/desktops/${encodeURIComponent(name)}/checkouts`, { device: this.opts.device, deviceName }));
  }

  /** Deposit the copy's data key, sealed to the server's escrow key, before any block comes down. */
  async depositEscrow(checkoutId: string, req: EscrowRequest): Promise<void> {
    await this.json('PUT', `/checkouts/${checkoutId}/escrow`, req);
  }

  async manifest(checkoutId: string): Promise<Buffer> {
    return this.readAll(await this.request('GET', `/checkouts/${checkoutId}/manifest`, null, { accept: CONTENT_MANIFEST }), 256 * 1024 * 1024);
  }

  /**
   * Stream the blocks of `ids`; each entry goes to onEntry as it arrives (bounded memory). Without
   * bases, entries are encoded blocks named by id; with them, the upload grammar (`b/<id>`, `p/<id>/<base>`).
   */
  /**
   * `opts.answer`: the answer of requestBlocks for the same ids and bases, sent earlier (a check-out worker
   * asks for its next batch while it reads this one; the answer waits, paused, on its own connection).
   */
  async getBlocks(checkoutId: string, ids: BlockId[], maxEntryBytes: number, onEntry: (e: TarEntry) => Promise<void> | void,
    patchBases?: { bases: Map<BlockId, BlockId>; baseVersion: number }, opts: { transient?: boolean; answer?: Promise<http.IncomingMessage> } = {}): Promise<number> {
    const res = await (opts.answer ?? this.requestBlocks(checkoutId, ids, patchBases));
    // What a true answer can hold: one entry per id. A server that sends more, or a body that inflates
    // past it, is refused as soon as it does (and nothing more is read).
    const maxTotalBytes = ids.length * (maxEntryBytes + 512) + 1024;
    let entries = 0;
    return this.readTar(res, maxEntryBytes, maxTotalBytes, opts.transient === true, async (e) => {
      if (++entries > ids.length) throw new CarryonError('TAR_INVALID', `the server sent more than the ${ids.length} block(s) asked for`);
      await onEntry(e);
    });
  }

  /** Ask for blocks; the answer's body is read by getBlocks (`answer`). */
  requestBlocks(checkoutId: string, ids: BlockId[], patchBases?: { bases: Map<BlockId, BlockId>; baseVersion: number }): Promise<http.IncomingMessage> {
    const body = patchBases && patchBases.bases.size > 0
      ? { ids, bases: Object.fromEntries(patchBases.bases), baseVersion: patchBases.baseVersion }
      : { ids };
    return this.request('POST', `/checkouts/${checkoutId}/blocks/get`, Buffer.from(JSON.stringify(body)), { 'content-type': 'application/json', accept: CONTENT_TAR });
  }

  /** A tar response, decompressed when it says zstd, read to its end-of-archive or first error; the connection is closed on error. */
  private async readTar(res: http.IncomingMessage, maxEntryBytes: number, maxTotalBytes: number, transient: boolean, onEntry: (e: TarEntry) => Promise<void> | void): Promise<number> {
    const counted = this.counted(res);
    let stream: Readable = counted;
    if (res.headers['content-encoding'] === 'zstd') {
      const z = createDecompressStream({ maxOutputBytes: maxTotalBytes });
      counted.on('error', (err) => z.destroy(err));
      stream = counted.pipe(z);
    } else if (res.headers['content-encoding'] !== undefined && res.headers['content-encoding'] !== 'identity') {
      res.destroy();
      throw new CarryonError('TAR_INVALID', `the server sent an unknown content-encoding ${String(res.headers['content-encoding']).slice(0, 40)}`);
    }
    let count: number;
    try {
      count = await unpackEntries(stream, maxEntryBytes, onEntry, { maxTotalBytes, transient });
    } catch (err) {
      res.destroy(); // what follows a refused answer is not read
      throw err;
    }
    await finishAnswer(res, stream);
    return count;
  }

  /** Which of `ids` the server lacks, and whether it takes blocks as zstd frames (`frames`: false from older servers). */
  async missing(checkoutId: string, ids: BlockId[]): Promise<{ missing: BlockId[]; frames: boolean }> {
    const a = await this.json<MissingAnswer>('POST', `/checkouts/${checkoutId}/blocks/missing`, { ids });
    return { missing: a.missing, frames: a.frames === true };
  }

  /** Upload a zstd-compressed tar stream of blocks, frames and patches. */
  async upload(checkoutId: string, body: Readable): Promise<UploadResult> {
    const res = await this.request('PUT', `/checkouts/${checkoutId}/blocks`, body, { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' });
    return parseJson(await this.readAll(res, MAX_ANSWER_BYTES), 'the server\'s answer') as UploadResult;
  }

  /** Commit a check-in: the disk manifest alone, or with the persona (`persona-delta.json`, `push.json`). */
  async commit(checkoutId: string, manifest: Buffer, persona?: TarEntry[]): Promise<CommitResult> {
    const res = persona
      ? await this.request('POST', `/checkouts/${checkoutId}/commit`, await tarOf([{ name: 'disk.manifest', data: manifest }, ...persona], true),
        { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' })
      : await this.request('POST', `/checkouts/${checkoutId}/commit`, manifest, { 'content-type': CONTENT_MANIFEST });
    return parseJson(await this.readAll(res, MAX_ANSWER_BYTES), 'the server\'s answer') as CommitResult;
  }

  /** A persona version (default: the newest): its encoded snapshot, version and id. */
  async persona(version?: number): Promise<{ version: number; id: string; encoded: Buffer }> {
    const res = await this.request('GET', `/persona${version === undefined ? '' : `?version=${version}`}`, null);
    const encoded = await this.readAll(res, MAX_PERSONA_SNAPSHOT_BYTES);
    return { version: Number(res.headers[HEADER_PERSONA_VERSION]), id: String(res.headers[HEADER_PERSONA_ID]), encoded };
  }

  async personaChunks(version: number, ids: BlockId[], onEntry: (e: TarEntry) => Promise<void> | void): Promise<number> {
    const res = await this.request('POST', '/persona/chunks/get', Buffer.from(JSON.stringify({ ids, version })), { 'content-type': 'application/json', accept: CONTENT_TAR });
    const maxEntryBytes = PERSONA_CHUNK_BYTES + 64 * 1024;
    let entries = 0;
    return this.readTar(res, maxEntryBytes, ids.length * (maxEntryBytes + 512) + 1024, false, async (e) => {
      if (++entries > ids.length) throw new CarryonError('TAR_INVALID', `the server sent more than the ${ids.length} chunk(s) asked for`);
      await onEntry(e);
    });
  }

  async personaMissing(ids: BlockId[]): Promise<BlockId[]> {
    return (await this.json<{ missing: BlockId[] }>('POST', '/persona/chunks/missing', { ids })).missing;
  }

  /** A tar of persona upload entries; `compressed`: the body is one zstd stream (else sent as is). */
  async personaUpload(baseVersion: number, body: Readable, compressed: boolean): Promise<{ chunks: number; files: number }> {
    const res = await this.request('PUT', `/persona/blocks?base=${baseVersion}`, body, { 'content-type': CONTENT_TAR, ...(compressed ? { 'content-encoding': 'zstd' } : {}) });
    return parseJson(await this.readAll(res, MAX_ANSWER_BYTES), 'the server\'s answer') as { chunks: number; files: number };
  }

  /** Push a persona snapshot (persona-only copies) and get the version it became. */
  async personaPush(parts: TarEntry[]): Promise<PersonaCommitResult> {
    const res = await this.request('POST', '/persona/push', await tarOf(parts, true), { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' });
    return parseJson(await this.readAll(res, MAX_ANSWER_BYTES), 'the server\'s answer') as PersonaCommitResult;
  }

  /** Count a response body's bytes as they are read, and turn a dropped connection into SERVER_UNREACHABLE. */
  private counted(res: http.IncomingMessage): Transform {
    const counted = res.pipe(new Transform({
      transform: (chunk: Buffer, _e, cb) => {
        this.bytesReceived += chunk.length;
        cb(null, chunk);
      },
    }));
    res.on('error', (err) => counted.destroy(this.dropError(res, err)));
    res.on('aborted', () => counted.destroy(this.dropError(res)));
    return counted;
  }

  /** Why a response body ended early: the server stalled (our idle timeout), or the connection dropped. */
  private dropError(res: http.IncomingMessage, err?: unknown): CarryonError {
    const idle = this.stalled.get(res);
    if (idle !== undefined) {
      return new CarryonError('SERVER_UNREACHABLE', `the server stopped sending in the middle of an answer (no bytes for ${idle / 1000} s); it may be overloaded or the network path is down: run the command again to resume`,
        { url: this.base.origin, reason: 'stalled', idleSeconds: idle / 1000 });
    }
    if (err instanceof CarryonError) return err;
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    return new CarryonError('SERVER_UNREACHABLE', `the connection to ${this.base.origin} dropped in the middle of an answer${code ? ` (${code})` : ''}: run the command again to resume`,
      { url: this.base.origin, reason: 'dropped', errno: code }, err);
  }

  discard(checkoutId: string): Promise<{ desktop: string; already: boolean }> {
    return this.json('DELETE', `/checkouts/${checkoutId}`);
  }
}

/** A request sent on a kept-alive connection that the server had closed: sent again once by `request`. */
class StaleConnection extends Error {}

function unreachable(base: URL, err: unknown): CarryonError {
  if (err instanceof CarryonError) return err;
  const e = err as NodeJS.ErrnoException;
  return new CarryonError('SERVER_UNREACHABLE', `cannot reach the server at ${base.origin}: ${e?.code ?? e?.message ?? String(err)}`, { url: base.origin, errno: e?.code }, err);
}

/** A small tar in memory (commit parts), as one zstd frame when `compress`. */
async function tarOf(entries: TarEntry[], compress = false): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of packEntries(entries)) parts.push(c as Buffer);
  const tar = Buffer.concat(parts);
  return compress ? encodeBlock(tar, 3) : tar; // encodeBlock: a plain zstd frame of any size
}

/** What an answer may still hold after its tar ended (a zstd frame's last bytes): more, and the connection is dropped. */
const MAX_AFTER_TAR = 64 * 1024;

/**
 * Read an answer to its end once its tar has ended, so the connection can be used again; an answer that
 * goes on past MAX_AFTER_TAR (or does not end within seconds) is dropped with its connection instead of
 * keeping a request slot busy until the idle timeout.
 */
function finishAnswer(res: http.IncomingMessage, stream: Readable): Promise<void> {
  if (res.complete && stream.readableEnded) return Promise.resolve();
  return new Promise((resolve) => {
    let extra = 0;
    const drop = (): void => {
      clearTimeout(timer);
      res.destroy();
      resolve();
    };
    const timer = setTimeout(drop, 5_000);
    timer.unref();
    stream.on('data', (c: Buffer) => {
      extra += c.length;
      if (extra > MAX_AFTER_TAR) drop();
    });
    stream.on('error', drop);
    stream.once('end', () => {
      clearTimeout(timer);
      resolve();
    });
    stream.resume();
  });
}

