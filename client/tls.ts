// Transport security on the laptop: which certificate authorities it trusts, when plain http:// is
// allowed, and what a failed TLS handshake means in words a traveller can act on. Must not know:
// commands or the laptop state (ApiClient and `carryon login` pass in what they hold).
// Terms: the system store (the OS's CA bundle, where an admin installs a company CA with
// update-ca-certificates), the extra CA (a PEM given to `carryon login --ca`, kept in the home).
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { CarryonError } from '../src/index.js';

/** Where Linux distributions keep the system CA bundle (Debian/Ubuntu/Alpine first; then Fedora/RHEL, openSUSE, BSD/macOS). */
const SYSTEM_BUNDLES = ['/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt', '/etc/ssl/ca-bundle.pem', '/etc/ssl/cert.pem'];

/**
 * The CAs a laptop trusts before any --ca: $SSL_CERT_FILE when set (OpenSSL's own override), else the
 * system store (tls.getCACertificates('system') on Node versions that have it; Node 20 does not, so the
 * distribution's bundle file), else Node's compiled-in Mozilla list when no bundle exists. Node alone
 * would use only its compiled-in list, which knows nothing of a CA the admin installed on the system.
 */
export function systemTrust(): { source: string; pems: string[] } {
  const env = process.env.SSL_CERT_FILE;
  if (env) return { source: env, pems: [readBundle(env, 'SSL_CERT_FILE')] };
  const fromNode = (tls as { getCACertificates?: (type: string) => string[] }).getCACertificates?.('system');
  if (fromNode && fromNode.length > 0) return { source: 'system (node)', pems: fromNode };
  for (const f of SYSTEM_BUNDLES) {
    try {
      const pem = readFileSync(f, 'utf8');
      if (pem.includes('-----BEGIN CERTIFICATE-----')) return { source: f, pems: [pem] };
    } catch {
      /* not this distribution's path */
    }
  }
  return { source: 'node (bundled Mozilla list)', pems: [...tls.rootCertificates] };
}

function readBundle(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new CarryonError('INVALID_ARGUMENT', `${what} names ${file}, which cannot be read: ${(err as Error).message}`, { file });
  }
}

const contexts = new Map<string, tls.SecureContext>();

/** One TLS context per process for the system store plus the extra CA (building one parses ~150 certificates). */
export function secureContextFor(extraCa: string | null | undefined): tls.SecureContext {
  const key = extraCa ?? '';
  let c = contexts.get(key);
  if (!c) {
    c = tls.createSecureContext({ ca: [...systemTrust().pems, ...(extraCa ? [extraCa] : [])] });
    contexts.set(key, c);
  }
  return c;
}

const loopback = new net.BlockList();
loopback.addSubnet('127.0.0.0', 8, 'ipv4');
loopback.addAddress('::1', 'ipv6');
loopback.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

/** A URL host that never leaves this machine: localhost, 127.0.0.0/8, ::1. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  const family = net.isIP(h);
  return family === 4 ? loopback.check(h, 'ipv4') : family === 6 ? loopback.check(h, 'ipv6') : false;
}

/** Refuse plain http:// to another machine unless the user chose it: the token and the disk would cross the network readable. */
export function checkTransport(url: URL, insecureHttp: boolean | undefined): void {
  if (url.protocol !== 'http:' || insecureHttp || isLoopbackHost(url.hostname)) return;
  throw new CarryonError('INSECURE_HTTP',
    `refusing plain http:// to ${url.host}: the token and the desktop's disk would cross the network unencrypted, readable and changeable by anyone on the way. ` +
    `Use https://${url.host} (the server runs \`carryon-server start --tls-cert FILE --tls-key FILE\`, or sits behind a TLS proxy), ` +
    `or, only on a network you trust, run \`carryon login ${url.origin} --insecure-http\``, { url: url.origin });
}

/** The server's certificate was refused: like an unreachable server to the agent (try again later), with a reason a human can act on. */
export function isTlsRefusal(code: string): boolean {
  return code === 'TLS_UNTRUSTED' || code === 'TLS_CERT_EXPIRED' || code === 'TLS_CERT_NOT_YET_VALID' || code === 'TLS_HOSTNAME_MISMATCH';
}

const UNTRUSTED = new Set(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE', 'INVALID_CA', 'CERT_REJECTED']);
/** OpenSSL's other verify failures (as node reports them): a certificate refused for a reason a CA file would not fix. */
const REFUSED = new Set(['CERT_REVOKED', 'INVALID_PURPOSE', 'PATH_LENGTH_EXCEEDED', 'CERT_CHAIN_TOO_LONG', 'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY', 'ERROR_IN_CERT_NOT_BEFORE_FIELD', 'ERROR_IN_CERT_NOT_AFTER_FIELD', 'UNABLE_TO_GET_CRL', 'CRL_HAS_EXPIRED', 'CRL_NOT_YET_VALID',
  'CRL_SIGNATURE_FAILURE', 'ERR_TLS_CERT_ALTNAME_FORMAT']);

/** A TLS failure as a CarryonError with a sentence naming the problem; null when `err` is not about TLS. */
export async function tlsFailure(url: URL, err: unknown, extraCa: string | null | undefined): Promise<CarryonError | null> {
  if (url.protocol !== 'https:' || err instanceof CarryonError) return null;
  const e = err as NodeJS.ErrnoException & { host?: string; cert?: tls.PeerCertificate };
  const code = String(e?.code ?? '');
  const origin = url.origin;
  const base = { url: origin, errno: code };
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID' || code === 'HOSTNAME_MISMATCH') {
    const names = certNames(e.cert);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const example = names.find((n) => !n.includes('*'));
    return new CarryonError('TLS_HOSTNAME_MISMATCH',
      `the server at ${origin} presented a certificate for ${names.length ? names.join(', ') : 'no host name at all'}, not for ${host}: ` +
      (example ? `log in with a URL naming the server as the certificate does (https://${example.includes(':') ? `[${example}]` : example}${url.port ? `:${url.port}` : ''}), or ` : '') +
      `ask the server's admin for a certificate that includes ${host}`, { ...base, host, names });
  }
  if (UNTRUSTED.has(code)) {
    const peer = await peerCertificate(url);
    const who = peer ? ` (${dn(peer.subject)}, issued by ${dn(peer.issuer)})` : '';
    return new CarryonError('TLS_UNTRUSTED',
      `the server at ${origin} presented a certificate${who} that is not signed by a certificate authority this laptop trusts` +
      `${extraCa ? ', nor by the CA given with --ca' : ''}. If the server uses your organisation's own CA, get that CA's certificate (a PEM file) from the admin ` +
      `and run \`carryon login ${origin} --ca FILE\`; if it should have a public certificate, stop: someone may be intercepting the connection`,
      { ...base, subject: peer ? dn(peer.subject) : null, issuer: peer ? dn(peer.issuer) : null, fingerprint256: peer?.fingerprint256 ?? null });
  }
  if (REFUSED.has(code)) {
    return new CarryonError('TLS_UNTRUSTED',
      `the server at ${origin} presented a certificate this laptop refuses: ${e.message} (${code}). Nothing was sent; the server's admin must fix the certificate`, base);
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    const chain = chainOf(await peerCertificate(url));
    const now = Date.now();
    if (code === 'CERT_HAS_EXPIRED') {
      const c = chain.find((x) => Date.parse(x.valid_to) < now);
      const when = c ? new Date(Date.parse(c.valid_to)).toISOString() : null;
      const which = c && c !== chain[0] ? `a certificate in its chain (${dn(c.subject)})` : 'a certificate';
      return new CarryonError('TLS_CERT_EXPIRED',
        `the server at ${origin} presented ${which} that expired ${when ? `on ${when}` : '(its date could not be read)'}; this laptop's clock says ${new Date(now).toISOString()}. ` +
        `The server's admin must renew it (carryon-server re-reads its files on SIGHUP); if the laptop's clock is wrong, set it right and try again`,
        { ...base, expiredAt: when, subject: c ? dn(c.subject) : null });
    }
    const c = chain.find((x) => Date.parse(x.valid_from) > now);
    const from = c ? new Date(Date.parse(c.valid_from)).toISOString() : null;
    return new CarryonError('TLS_CERT_NOT_YET_VALID',
      `the server at ${origin} presented a certificate valid only from ${from ?? '(a date that could not be read)'}, and this laptop's clock says ${new Date(now).toISOString()}: ` +
      `if the clock is wrong, set it right and try again; otherwise the server's admin installed a certificate too early`, { ...base, validFrom: from });
  }
  if (/^ERR_SSL_|^ERR_TLS_/.test(code) || (code === 'EPROTO' && /SSL|TLS/i.test(e.message ?? ''))) {
    const plain = /wrong version number|packet length too long|http request/i.test(`${code} ${e.message ?? ''}`);
    return new CarryonError('SERVER_UNREACHABLE',
      `the TLS handshake with ${origin} failed (${e.message ?? code})` + (plain ? `: the server seems to speak plain HTTP on this port; check the URL with the server's admin` : ''),
      base, err);
  }
  return null;
}

/** The server's certificate chain, read without trusting it, only to describe a failure: nothing is sent. */
function peerCertificate(url: URL): Promise<tls.DetailedPeerCertificate | null> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve) => {
    const s = tls.connect({ host, port: Number(url.port || 443), servername: net.isIP(host) ? undefined : host, rejectUnauthorized: false });
    const done = (c: tls.DetailedPeerCertificate | null): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(c && c.raw ? c : null);
    };
    const timer = setTimeout(() => done(null), 5_000);
    s.once('secureConnect', () => done(s.getPeerCertificate(true)));
    s.once('error', () => done(null));
  });
}

function chainOf(leaf: tls.DetailedPeerCertificate | null): tls.PeerCertificate[] {
  const out: tls.PeerCertificate[] = [];
  for (let c: tls.DetailedPeerCertificate | undefined = leaf ?? undefined; c && c.raw && !out.some((x) => x.fingerprint256 === c!.fingerprint256); c = c.issuerCertificate) out.push(c);
  return out;
}

function dn(n: tls.Certificate | undefined): string {
  if (!n) return '?';
  const parts = (['CN', 'O', 'OU'] as const).flatMap((k) => (n[k] ? [`${k}=${[n[k]].flat().join('+')}`] : []));
  return parts.length ? parts.join(', ') : '?';
}

/** The host names and addresses a certificate is for: its subjectAltName entries, else its CN. */
function certNames(cert: tls.PeerCertificate | undefined): string[] {
  if (!cert) return [];
  const alt = (cert.subjectaltname ?? '').split(/,\s*/).map((s) => s.replace(/^(DNS|IP Address):/, '')).filter((s) => s && !/^[A-Za-z ]+:/.test(s));
  if (alt.length) return alt;
  const cn = cert.subject?.CN;
  return cn ? [cn].flat() : [];
}
