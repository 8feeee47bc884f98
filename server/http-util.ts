// Small HTTP helpers shared by the route modules: headers, bounded bodies, JSON answers.
import type http from 'node:http';
import { CarryonError, MAX_JSON_BYTES } from '../src/index.js';

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
