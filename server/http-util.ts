// Small HTTP helpers shared by the route modules: headers, bounded bodies (decoded with a cap on what
// they inflate to), JSON answers, and how a connection ends after a refused body.
import type http from 'node:http';
import type { Readable } from 'node:stream';
import { CarryonError, createDecompressStream, MAX_JSON_BYTES } from '../src/index.js';

export function decodeParam(p: string): string {
  try {
    return decodeURIComponent(p);
  } catch {
    throw new CarryonError('BAD_REQUEST', 'malformed percent-encoding in the request path');
  }
}

export function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) throw new CarryonError('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes is over the ${max} limit`, { max });
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) throw new CarryonError('PAYLOAD_TOO_LARGE', `request body is over the ${max} byte limit`, { max });
    parts.push(c);
  }
  return Buffer.concat(parts, n);
}

export async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const buf = await readBody(req, MAX_JSON_BYTES);
  if (buf.length === 0) return {};
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    throw new CarryonError('BAD_REQUEST', 'request body is not valid JSON');
  }
}

/**
 * The request body as a stream, decompressed when it says it is zstd. `maxBytes` caps what it yields
 * (after decompression: a small frame may inflate a thousandfold); the bytes on the wire are capped a
 * little above it, so a body of zstd skippable frames (no output) cannot run forever either.
 */
export function requestBody(req: http.IncomingMessage, maxBytes: number): Readable {
  const enc = (req.headers['content-encoding'] ?? 'identity').toLowerCase();
  if (enc !== 'identity' && enc !== 'zstd') throw new CarryonError('BAD_REQUEST', `unsupported content-encoding ${enc.slice(0, 40)}: send identity or zstd`);
  const maxWire = maxBytes + Math.ceil(maxBytes / 64) + 1024 * 1024;
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > maxWire) throw new CarryonError('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes is over the ${maxWire} limit`, { max: maxWire });
  if (enc === 'identity') return req; // the tar reader stops at maxBytes (its maxTotalBytes)
  const d = createDecompressStream({ maxOutputBytes: maxBytes });
  let wire = 0;
  const count = (c: Buffer): void => {
    wire += c.length;
    if (wire > maxWire) {
      req.off('data', count);
      d.destroy(new CarryonError('PAYLOAD_TOO_LARGE', `request body is over the ${maxWire} byte limit`, { max: maxWire }));
    }
  };
  req.on('data', count);
  req.on('error', (e) => d.destroy(e));
  return req.pipe(d);
}

/** After an error answer, what of an unread body is still read (and dropped) before the socket closes. */
const LINGER_BYTES = 64 * 1024 * 1024;
const LINGER_MS = 5_000;

/**
 * Close the connection of a request whose body was not read to its end, once the answer is out. The
 * rest of the body is read and dropped (never decoded) for a bounded time and size, as nginx's
 * lingering close does: closing a socket with unread bytes makes the kernel send a reset, and the
 * client then sees ECONNRESET or EPIPE instead of the answer that explains the refusal. Call before
 * the answer is written.
 */
export function closeAfterAnswer(req: http.IncomingMessage, res: http.ServerResponse): void {
  const sock = req.socket as (typeof req.socket & { destroySoon?: () => void }) | null;
  res.setHeader('connection', 'close');
  if (!sock || sock.destroyed) return;
  req.unpipe(); // a decoder fed by the body stops here: what follows is not decompressed
  let seen = 0;
  const stop = (): void => {
    clearTimeout(timer);
    sock.destroy();
  };
  const timer = setTimeout(stop, LINGER_MS);
  timer.unref();
  req.on('data', (c: Buffer) => {
    seen += c.length;
    if (seen > LINGER_BYTES) stop();
  });
  req.on('error', stop);
  req.resume();
  // Node ends a `connection: close` answer with socket.destroySoon(), which destroys the socket as
  // soon as the answer is written: half-close instead, and destroy once the body is in (or the bounds hit).
  sock.destroySoon = () => {
    sock.end();
    if (req.complete) stop();
    else req.once('end', stop);
  };
}
