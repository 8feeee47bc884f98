// ApiClient: the laptop's side of the HTTP API. Counts every body byte in both directions (the
// figures `--json` reports), turns error bodies back into CarryonErrors, and connection failures into
// SERVER_UNREACHABLE (TLS failures into their own codes, see tls.ts).
import http from 'node:http';
import https from 'node:https';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  API_PREFIX, CarryonError, CONTENT_MANIFEST, CONTENT_TAR, createDecompressStream, errorFromBody, HEADER_PERSONA_ID, HEADER_PERSONA_VERSION, MAX_PERSONA_SNAPSHOT_BYTES,
  encodeBlock, packEntries, PERSONA_CHUNK_BYTES, type PersonaCommitResult, HEADER_DEVICE, unpackEntries, type BlockId, type CheckoutInfo, type CommitResult,
  type DesktopInfo, type TarEntry, type UploadResult, type HeartbeatReply, type HeartbeatRequest,
} from '../src/index.js';
import { checkTransport, secureContextFor, tlsFailure } from './tls.js';

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

  constructor(private readonly opts: ApiClientOptions) {
    this.base = new URL(opts.url);
    checkTransport(this.base, opts.insecureHttp);
    this.agent = this.base.protocol === 'https:'
      ? new https.Agent({ keepAlive: true, maxSockets: 4, secureContext: secureContextFor(opts.ca) })
      : new http.Agent({ keepAlive: true, maxSockets: 4 });
  }

  close(): void {
    this.agent.destroy();
  }

  /** Send one request; resolves with the response once its headers arrive and its status is 2xx. */
  private request(method: string, path: string, body: Buffer | Readable | null, headers: Record<string, string> = {}): Promise<http.IncomingMessage> {
    const url = new URL(API_PREFIX + path, this.base);
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, {
        method,
        agent: this.agent,
        headers: { authorization: `Bearer ${this.opts.token}`, [HEADER_DEVICE]: this.opts.device, ...headers, ...(Buffer.isBuffer(body) ? { 'content-length': String(body.length) } : {}) },
      });
      req.on('error', (err) => void this.failure(err).then(reject));
      const idle = this.opts.idleTimeoutMs ?? 120_000;
      req.setTimeout(idle, () => req.destroy(Object.assign(new Error(`no reply for ${idle / 1000} s`), { code: 'ETIMEDOUT' })));
      req.on('response', (res) => {
        if ((res.statusCode ?? 500) < 300) return resolve(res);
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => {
          this.bytesReceived += c.length;
          parts.push(c);
        });
        res.on('error', (err) => reject(unreachable(this.base, err)));
        res.on('end', () => {
          let parsed: unknown = null;
          try {
            parsed = JSON.parse(Buffer.concat(parts).toString('utf8'));
          } catch {
            /* not JSON: errorFromBody reports the status */
          }
          reject(errorFromBody(res.statusCode ?? 500, parsed));
        });
      });
      if (body === null) req.end();
      else if (Buffer.isBuffer(body)) {
        this.bytesSent += body.length;
        req.end(body);
      } else {
        const count = new Transform({
          transform: (chunk: Buffer, _e, cb) => {
            this.bytesSent += chunk.length;
            cb(null, chunk);
          },
        });
        pipeline(body, count, req).catch(async (err) => {
          req.destroy();
          reject(await this.failure(err));
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
      throw unreachable(this.base, err);
    }
    return Buffer.concat(parts, n);
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body === undefined ? null : Buffer.from(JSON.stringify(body)), body === undefined ? {} : { 'content-type': 'application/json' });
    const buf = await this.readAll(res, 64 * 1024 * 1024);
    try {
      return JSON.parse(buf.toString('utf8')) as T;
    } catch {
      throw new CarryonError('INTERNAL', `server sent invalid JSON for ${method} ${path}`);
    }
  }

  whoami(): Promise<{ user: string; admin: boolean }> {
    return this.json('GET', '/whoami');
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
    return JSON.parse((await this.readAll(res)).toString('utf8')) as { id: number; createdAt: string; blocksChanged: number; withPersona: boolean };
  }

  desktops(): Promise<{ desktops: DesktopInfo[] }> {
    return this.json('GET', '/desktops');
  }

  desktop(name: string): Promise<DesktopInfo> {
    return this.json('GET', `/desktops/${encodeURIComponent(name)}`);
  }

  startCheckout(name: string, deviceName: string): Promise<CheckoutInfo> {
    return this.json('POST', `/desktops/${encodeURIComponent(name)}/checkouts`, { device: this.opts.device, deviceName });
  }

  async manifest(checkoutId: string): Promise<Buffer> {
    return this.readAll(await this.request('GET', `/checkouts/${checkoutId}/manifest`, null, { accept: CONTENT_MANIFEST }), 256 * 1024 * 1024);
  }

  /**
   * Stream the blocks of `ids`; each entry goes to onEntry as it arrives (bounded memory). Without
   * bases, entries are encoded blocks named by id; with them, the upload grammar (`b/<id>`, `p/<id>/<base>`).
   */
  async getBlocks(checkoutId: string, ids: BlockId[], maxEntryBytes: number, onEntry: (e: TarEntry) => Promise<void> | void,
    patchBases?: { bases: Map<BlockId, BlockId>; baseVersion: number }): Promise<number> {
    const body = patchBases && patchBases.bases.size > 0
      ? { ids, bases: Object.fromEntries(patchBases.bases), baseVersion: patchBases.baseVersion }
      : { ids };
    const res = await this.request('POST', `/checkouts/${checkoutId}/blocks/get`, Buffer.from(JSON.stringify(body)), { 'content-type': 'application/json', accept: CONTENT_TAR });
    const counted = this.counted(res);
    let stream: NodeJS.ReadableStream = counted;
    if (res.headers['content-encoding'] === 'zstd') {
      const z = createDecompressStream();
      counted.on('error', (err) => z.destroy(err));
      stream = counted.pipe(z);
    }
    return unpackEntries(stream, maxEntryBytes, onEntry);
  }

  async missing(checkoutId: string, ids: BlockId[]): Promise<BlockId[]> {
    return (await this.json<{ missing: BlockId[] }>('POST', `/checkouts/${checkoutId}/blocks/missing`, { ids })).missing;
  }

  /** Upload a zstd-compressed tar stream of blocks and patches. */
  async upload(checkoutId: string, body: Readable): Promise<UploadResult> {
    const res = await this.request('PUT', `/checkouts/${checkoutId}/blocks`, body, { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' });
    return JSON.parse((await this.readAll(res)).toString('utf8')) as UploadResult;
  }

  /** Commit a check-in: the disk manifest alone, or with the persona (`persona-delta.json`, `push.json`). */
  async commit(checkoutId: string, manifest: Buffer, persona?: TarEntry[]): Promise<CommitResult> {
    const res = persona
      ? await this.request('POST', `/checkouts/${checkoutId}/commit`, await tarOf([{ name: 'disk.manifest', data: manifest }, ...persona], true),
        { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' })
      : await this.request('POST', `/checkouts/${checkoutId}/commit`, manifest, { 'content-type': CONTENT_MANIFEST });
    return JSON.parse((await this.readAll(res)).toString('utf8')) as CommitResult;
  }

  /** A persona version (default: the newest): its encoded snapshot, version and id. */
  async persona(version?: number): Promise<{ version: number; id: string; encoded: Buffer }> {
    const res = await this.request('GET', `/persona${version === undefined ? '' : `?version=${version}`}`, null);
    const encoded = await this.readAll(res, MAX_PERSONA_SNAPSHOT_BYTES);
    return { version: Number(res.headers[HEADER_PERSONA_VERSION]), id: String(res.headers[HEADER_PERSONA_ID]), encoded };
  }

  async personaChunks(version: number, ids: BlockId[], onEntry: (e: TarEntry) => Promise<void> | void): Promise<number> {
    const res = await this.request('POST', '/persona/chunks/get', Buffer.from(JSON.stringify({ ids, version })), { 'content-type': 'application/json', accept: CONTENT_TAR });
    return unpackEntries(this.counted(res), PERSONA_CHUNK_BYTES + 64 * 1024, onEntry);
  }

  async personaMissing(ids: BlockId[]): Promise<BlockId[]> {
    return (await this.json<{ missing: BlockId[] }>('POST', '/persona/chunks/missing', { ids })).missing;
  }

  async personaUpload(baseVersion: number, body: Readable): Promise<{ chunks: number; files: number }> {
    const res = await this.request('PUT', `/persona/blocks?base=${baseVersion}`, body, { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' });
    return JSON.parse((await this.readAll(res)).toString('utf8')) as { chunks: number; files: number };
  }

  /** Push a persona snapshot (persona-only copies) and get the version it became. */
  async personaPush(parts: TarEntry[]): Promise<PersonaCommitResult> {
    const res = await this.request('POST', '/persona/push', await tarOf(parts, true), { 'content-type': CONTENT_TAR, 'content-encoding': 'zstd' });
    return JSON.parse((await this.readAll(res)).toString('utf8')) as PersonaCommitResult;
  }

  /** Count a response body's bytes as they are read, and turn a dropped connection into SERVER_UNREACHABLE. */
  private counted(res: http.IncomingMessage): Transform {
    const counted = res.pipe(new Transform({
      transform: (chunk: Buffer, _e, cb) => {
        this.bytesReceived += chunk.length;
        cb(null, chunk);
      },
    }));
    res.on('error', (err) => counted.destroy(unreachable(this.base, err)));
    res.on('aborted', () => counted.destroy(new CarryonError('SERVER_UNREACHABLE', 'the connection dropped during a download')));
    return counted;
  }

  discard(checkoutId: string): Promise<{ desktop: string; already: boolean }> {
    return this.json('DELETE', `/checkouts/${checkoutId}`);
  }
}

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
