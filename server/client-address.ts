// Who is on the other end of a request, for the audit log and a device's last address. Behind a
// reverse proxy (nginx, HAProxy) the socket's peer is the proxy; the client's address is in
// X-Forwarded-For, which anyone can also forge. So the header is believed only on connections from the
// proxies the admin listed (--trust-proxy / CARRYON_TRUST_PROXY), and only as far as trusted hops go:
// from the right, each hop a trusted proxy appended, up to the first address that is not a trusted proxy.
import net from 'node:net';
import { CarryonError } from '../src/index.js';

export const TRUST_PROXY_ENV = 'CARRYON_TRUST_PROXY';

/** An IPv4-mapped IPv6 address (::ffff:10.0.0.1, as a dual-stack listener reports it) as plain IPv4. */
function normalize(a: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  return m ? m[1]! : a;
}

export class ProxyTrust {
  private readonly list = new net.BlockList();
  readonly entries: string[];

  /** `spec`: addresses or CIDRs separated by commas (or spaces), e.g. `127.0.0.1,10.0.0.0/8,::1`. Empty: trust no proxy. */
  constructor(spec: string, from = '--trust-proxy') {
    this.entries = spec.split(/[\s,]+/).filter((s) => s !== '');
    for (const e of this.entries) {
      const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(e);
      const ip = m ? normalize(m[1]!) : '';
      const family = net.isIP(ip);
      const bits = m?.[2] === undefined ? undefined : Number(m[2]);
      if (!family || (bits !== undefined && bits > (family === 4 ? 32 : 128))) {
        throw new CarryonError('INVALID_ARGUMENT', `${from}: ${JSON.stringify(e)} is not an IP address or CIDR (like 127.0.0.1, 10.0.0.0/8 or fd00::/8)`, { entry: e });
      }
      const type = family === 4 ? 'ipv4' : 'ipv6';
      if (bits === undefined) this.list.addAddress(ip, type);
      else this.list.addSubnet(ip, bits, type);
    }
  }

  trusts(address: string): boolean {
    const a = normalize(address);
    const family = net.isIP(a);
    return family !== 0 && this.list.check(a, family === 4 ? 'ipv4' : 'ipv6');
  }

  /**
   * The client's address: the socket's peer, unless that peer is a trusted proxy; then the right-most
   * X-Forwarded-For entry that is not a trusted proxy (a malformed entry ends the walk at the hop before it).
   */
  clientAddress(peer: string | undefined, forwardedFor: string | string[] | undefined): string | null {
    if (peer === undefined) return null;
    let addr = normalize(peer);
    if (this.entries.length === 0 || forwardedFor === undefined) return addr;
    const hops = [forwardedFor].flat().join(',').split(',').map((s) => s.trim());
    for (let i = hops.length - 1; i >= 0 && this.trusts(addr); i--) {
      const hop = normalize(hops[i]!);
      if (!net.isIP(hop)) break;
      addr = hop;
    }
    return addr;
  }
}
