// The traveller's app, its HTTP half: a server on 127.0.0.1 only, guarded the way Syncthing guards its
// GUI. The per-home secret (HOME/app-secret, 0600) comes once in the URL `carryon app` prints and opens
// (/?secret=...); it is exchanged for an HttpOnly, SameSite=Strict cookie holding a value derived from
// it (so the secret itself never sits in the browser), and the browser is sent on to / so the secret
// leaves the address bar and history. Every request must then carry that cookie (401 otherwise, with
// nothing of the laptop in the answer). Against DNS rebinding the Host header must be 127.0.0.1:PORT or
// localhost:PORT; against cross-site requests a POST must come from the app's own Origin, with a JSON
// body (which an HTML form cannot send), and Sec-Fetch-Site, when the browser sends it, must not be
// cross-site. Routes (all JSON but the page): GET / (the page), GET /api/overview, GET /api/events
// (Server-Sent Events: `job` events), GET /api/update, POST /api/desktops/NAME/{checkout,stream,
// checkin,replicate} (202 and the job), POST /api/desktops/NAME/renew {code?}, POST
// /api/desktops/NAME/{serve,stop-serve} (`carryon serve NAME` as the app's child). Errors: {error:{code,message}}
// with the code's HTTP status, never a stack trace.
import { createHmac, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { CarryonError, httpStatusOf, parseName } from '../../src/index.js';
import { APP_CSP, APP_HTML } from './app-page.js';
import { appError, type AppService, type Job, type JobKind } from './app-service.js';

export const APP_COOKIE = 'carryon_app';
const MAX_BODY = 4096;

/** The cookie's value: derived from the secret, so a stolen cookie does not reveal it. */
export function cookieValue(secret: string): string {
  return createHmac('sha256', secret).update('carryon app session v1').digest('base64url');
}

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function cookieOf(req: http.IncomingMessage, name: string): string | null {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return null;
}

const SECURITY_HEADERS = { 'x-content-type-options': 'nosniff', 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', 'x-frame-options': 'DENY' };

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8' });
  res.end(JSON.stringify(body));
}

function sendError(res: http.ServerResponse, err: unknown): void {
  const e = appError(err);
  const status = e.code === 'INTERNAL' ? 500 : httpStatusOf(e.code as Parameters<typeof httpStatusOf>[0]);
  sendJson(res, status, { error: e });
}

const REFUSED_PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>carryon: not signed in</title></head>
<body><h1>carryon: this page needs its link</h1><p>Open the link that <code>carryon app</code> printed (it carries this laptop's app secret),
or run <code>carryon app</code> again.</p></body></html>`;

async function readJson(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_BODY) throw new CarryonError('PAYLOAD_TOO_LARGE', `a request to the app is at most ${MAX_BODY} bytes`);
    parts.push(c);
  }
  if (n === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(Buffer.concat(parts).toString('utf8'));
  } catch {
    throw new CarryonError('INVALID_ARGUMENT', 'the request body is not JSON');
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new CarryonError('INVALID_ARGUMENT', 'the request body must be a JSON object');
  return v as Record<string, unknown>;
}

export interface AppServer {
  url: string;
  /** The URL to open once: it carries the secret. */
  openUrl: string;
  port: number;
  close(): Promise<void>;
}

export async function startAppServer(service: AppService, secret: string, port: number): Promise<AppServer> {
  const session = cookieValue(secret);
  let allowedHosts: string[] = [];
  const streams = new Set<http.ServerResponse>();
  const unsubscribe = service.onJob((j: Job) => {
    const line = `event: job\ndata: ${JSON.stringify(j)}\n\n`;
    for (const s of streams) s.write(line);
  });

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    // DNS rebinding: a page from evil.example resolved to 127.0.0.1 sends Host: evil.example.
    const host = req.headers.host ?? '';
    if (!allowedHosts.includes(host)) return sendJson(res, 403, { error: { code: 'FORBIDDEN', message: 'the app answers only at 127.0.0.1 or localhost' } });
    const fetchSite = req.headers['sec-fetch-site'];
    if (fetchSite === 'cross-site' || fetchSite === 'same-site') return sendJson(res, 403, { error: { code: 'FORBIDDEN', message: 'requests from other sites are refused' } });
    const url = new URL(req.url ?? '/', `http://${host}`);
    const method = req.method ?? 'GET';
    if (method === 'POST') {
      const origin = req.headers.origin;
      if (origin !== `http://${host}`) return sendJson(res, 403, { error: { code: 'FORBIDDEN', message: 'requests from other origins are refused' } });
    } else if (method !== 'GET') return sendJson(res, 405, { error: { code: 'INVALID_ARGUMENT', message: `${method} is not served` } });

    // The secret, once, for the cookie; then off to / so it leaves the address bar.
    if (method === 'GET' && url.pathname === '/' && url.searchParams.has('secret')) {
      if (!sameText(url.searchParams.get('secret') ?? '', secret)) {
        res.writeHead(401, { ...SECURITY_HEADERS, 'content-type': 'text/html; charset=utf-8' });
        return void res.end(REFUSED_PAGE);
      }
      res.writeHead(303, { ...SECURITY_HEADERS, location: '/', 'set-cookie': `${APP_COOKIE}=${session}; HttpOnly; SameSite=Strict; Path=/` });
      return void res.end();
    }
    const cookie = cookieOf(req, APP_COOKIE);
    if (cookie === null || !sameText(cookie, session)) {
      if (url.pathname.startsWith('/api/')) return sendJson(res, 401, { error: { code: 'UNAUTHORIZED', message: "open the link `carryon app` printed: this request does not carry the app's session" } });
      res.writeHead(401, { ...SECURITY_HEADERS, 'content-type': 'text/html; charset=utf-8' });
      return void res.end(REFUSED_PAGE);
    }

    if (method === 'GET' && url.pathname === '/') {
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/html; charset=utf-8', 'content-security-policy': APP_CSP });
      return void res.end(APP_HTML);
    }
    if (method === 'GET' && url.pathname === '/api/overview') return sendJson(res, 200, await service.overview());
    if (method === 'GET' && url.pathname === '/api/update') return sendJson(res, 200, await service.update());
    if (method === 'GET' && url.pathname === '/api/events') {
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', connection: 'keep-alive' });
      res.write(': carryon app events\n\n');
      streams.add(res);
      req.on('close', () => streams.delete(res));
      return;
    }
    const m = /^\/api\/desktops\/([^/]+)\/(checkout|stream|checkin|replicate|renew|serve|stop-serve)$/.exec(url.pathname);
    if (method === 'POST' && m) {
      if (!/^application\/json\b/.test(req.headers['content-type'] ?? '') && Number(req.headers['content-length'] ?? 0) > 0) {
        throw new CarryonError('INVALID_ARGUMENT', 'the app takes JSON bodies only');
      }
      const body = await readJson(req);
      let raw: string;
      try {
        raw = decodeURIComponent(m[1]!);
      } catch {
        throw new CarryonError('INVALID_ARGUMENT', 'the desktop name in the address is not valid');
      }
      const name = parseName(raw, 'desktop');
      if (m[2] === 'renew') {
        const code = body.code;
        if (code !== undefined && (typeof code !== 'string' || code.trim() === '' || code.length > 200)) throw new CarryonError('INVALID_ARGUMENT', 'the lease code must be the text your admin read out');
        return sendJson(res, 200, await service.renew(name, typeof code === 'string' ? code.trim() : undefined));
      }
      if (m[2] === 'serve') return sendJson(res, 200, await service.serve(name));
      if (m[2] === 'stop-serve') return sendJson(res, 200, await service.stopServe(name));
      return sendJson(res, 202, { job: service.start(m[2] as JobKind, name) });
    }
    sendJson(res, 404, { error: { code: 'NOT_FOUND', message: `nothing at ${method} ${url.pathname}` } });
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      if (!res.headersSent) sendError(res, err);
      else res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const bound = (server.address() as AddressInfo).port;
  allowedHosts = [`127.0.0.1:${bound}`, `localhost:${bound}`];
  const url = `http://127.0.0.1:${bound}/`;
  return {
    url, port: bound, openUrl: `${url}?secret=${encodeURIComponent(secret)}`,
    close: async () => {
      unsubscribe();
      await service.close(); // serves this app started: stopped cleanly (their dirty maps closed)
      for (const s of streams) s.end();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
