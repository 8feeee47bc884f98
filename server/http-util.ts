// Small HTTP helpers shared by the route modules: headers, bounded bodies (decoded with a cap on what
// they inflate to), JSON answers, and how a connection ends after a refused body.
import type http from 'node:http';
import type { Readable } from 'node:stream';
import { CarryonError, createDecompressStream, MAX_JSON_BYTES, parseJson } from '../src/index.js';

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

/**
 * Answer in JSON. A request whose body was not read to its end (refused early, or a tar that ended
 * before its body did) has its connection closed after the answer (see closeAfterAnswer).
 */
export function sendJson(req: http.IncomingMessage, res: http.ServerResponse, status: number, body: unknown): void {
  if (!req.complete) closeAfterAnswer(req, res);
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The whole body, at most `max` bytes. Read with listeners, not `for await`: leaving such a loop (over the
 * limit) destroys the request and its socket, and the 413 could then never be sent.
 */
export function readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) return Promise.reject(new CarryonError('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes is over the ${max} limit`, { max }));
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    const done = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.pause(); // what is left is for closeAfterAnswer to read and drop
    };
    const onData = (c: Buffer): void => {
      n += c.length;
      if (n <= max) return void parts.push(c);
      done();
      reject(new CarryonError('PAYLOAD_TOO_LARGE', `request body is over the ${max} byte limit`, { max }));
    };
    const onEnd = (): void => {
      done();
      resolve(Buffer.concat(parts, n));
    };
    const onError = (err: Error): void => {
      done();
      reject(err);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

export async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const buf = await readBody(req, MAX_JSON_BYTES);
  if (buf.length === 0) return {};
  return parseJson(buf, 'request body');
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
