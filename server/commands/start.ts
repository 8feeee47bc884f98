// carryon-server start: run the HTTP service until SIGINT/SIGTERM; HTTPS with --tls-cert/--tls-key,
// whose files are read again on SIGHUP (a renewal: a bad new pair is logged and the old one keeps serving).
import type { Command } from 'commander';
import { CarryonError, describeFailure } from '../../src/index.js';
import { dataDirOf } from '../cli-util.js';
import { ensureEscrowKeys } from '../escrow.js';
import { ensureReleaseKeys } from '../release.js';
import { CarryonHttpServer } from '../http-server.js';
import { ProxyTrust, TRUST_PROXY_ENV } from '../client-address.js';
import { loadTlsPair, type TlsPair } from '../tls.js';
import { openParts } from '../services/parts.js';
import path from 'node:path';
import { optsOf, withCommonOptions } from './options.js';
import { parseDuration } from './gc.js';

function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  if (!m || Number(m[3]) > 65535) throw new CarryonError('INVALID_ARGUMENT', `--listen must be HOST:PORT (port 0 picks a free one), got ${s}`);
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

/** Which certificate serves; a warning when it has expired already (clients will refuse it with TLS_CERT_EXPIRED). */
function tlsLogLine(msg: string, info: TlsPair['info']): Record<string, unknown> {
  const expired = Date.parse(info.validTo) < Date.now();
  return { level: expired ? 'warn' : 'info', msg: expired ? `${msg}, but it has EXPIRED: clients refuse it; renew it and send SIGHUP` : msg, ...info };
}

export function registerStart(program: Command): void {
  withCommonOptions(program.command('start').description('serve the HTTP API'))
    .option('--listen <host:port>', 'address to listen on; port 0 picks a free one', '127.0.0.1:7480')
    .option('--min-free <bytes>', 'refuse uploads (DISK_FULL) while the data folder has less than this free (or CARRYON_MIN_FREE)', process.env.CARRYON_MIN_FREE ?? String(64 * 1024 * 1024))
    .option('--tls-cert <file>', 'serve HTTPS with this certificate (PEM, intermediates after it); re-read on SIGHUP')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM, unencrypted); re-read on SIGHUP')
    .option('--gc-every <duration>', 'run garbage collection this often (e.g. 24h; 0 turns it off); one instance at a time collects', process.env.CARRYON_GC_EVERY ?? '24h')
    .option('--gc-grace <duration>', 'garbage collection spares blocks created or used within this long', process.env.CARRYON_GC_GRACE ?? '6h')
    .option('--trust-proxy <addrs>', `reverse proxies (addresses or CIDRs, comma-separated) whose X-Forwarded-For is believed (default: $${TRUST_PROXY_ENV}, else none)`)
    .action(async (_o, cmd: Command) => {
      const opts = optsOf(cmd);
      try {
        const { host, port } = parseListen(String(opts.listen));
        const minFreeBytes = Number(opts.minFree);
        if (!Number.isSafeInteger(minFreeBytes) || minFreeBytes < 0) throw new CarryonError('INVALID_ARGUMENT', `--min-free must be a number of bytes, got ${String(opts.minFree)}`);
        if ((opts.tlsCert === undefined) !== (opts.tlsKey === undefined)) throw new CarryonError('INVALID_ARGUMENT', '--tls-cert and --tls-key go together: give both files, or neither for plain HTTP');
        const certFile = opts.tlsCert as string | undefined;
        const keyFile = opts.tlsKey as string | undefined;
        const tls = certFile && keyFile ? loadTlsPair(certFile, keyFile) : undefined;
        const trustSpec = (opts.trustProxy as string | undefined) ?? process.env[TRUST_PROXY_ENV];
        const trustProxy = new ProxyTrust(trustSpec ?? '', opts.trustProxy !== undefined ? '--trust-proxy' : TRUST_PROXY_ENV);
        const d = await openParts(dataDirOf(opts), { minFreeBytes, meta: opts.meta as string | undefined, store: opts.store as string | undefined });
        const log = (f: Record<string, unknown>): void => void process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...f })}\n`);
        // A data folder made before encryption at rest gets its escrow key pair now.
        if (ensureEscrowKeys(d.root).created) log({ level: 'warn', msg: 'escrow key pair made in DATA/escrow: keep a copy of escrow.key somewhere safe (or move it offline)', dir: path.join(d.root, 'escrow') });
        // ... and one made before client updates its release signing key.
        if (ensureReleaseKeys(d.root).created) log({ level: 'warn', msg: 'release signing key made in DATA/release: keep a copy of release.key somewhere safe; laptops logged in before get release.pub at their next login', dir: path.join(d.root, 'release') });
        const server = new CarryonHttpServer(d, log, { tls, trustProxy, dataRoot: d.root });
        const url = await server.listen(host, port);
        if (tls) log(tlsLogLine('TLS certificate loaded', tls.info));
        if (trustProxy.entries.length) log({ level: 'info', msg: 'X-Forwarded-For believed from these proxies only', trustProxy: trustProxy.entries });
        log({ level: 'info', msg: 'backends', meta: d.where.meta, store: d.where.store });
        // Scheduled collection: another instance collecting at the same time makes this run a no-op (SERVER_BUSY).
        const gcEvery = parseDuration(opts.gcEvery, '--gc-every');
        if (gcEvery > 2 ** 31 - 1) throw new CarryonError('INVALID_ARGUMENT', '--gc-every must be at most 24d');
        const gcGrace = parseDuration(opts.gcGrace, '--gc-grace');
        const gcTimer = gcEvery > 0 ? setInterval(() => {
          d.gc.run({ name: 'gc-schedule', device: null, address: 'local' }, { graceMs: gcGrace }).then(
            (r) => log({ level: 'info', msg: 'garbage collection', condemned: r.condemned, swept: r.swept, sweepPostponed: r.sweepPostponed, storedBytesAfter: r.storedBytesAfter }),
            (err: unknown) => log({ level: (err as CarryonError)?.code === 'SERVER_BUSY' ? 'info' : 'error', msg: 'garbage collection did not run', error: err instanceof Error ? err.message : String(err) }),
          );
        }, gcEvery) : null;
        gcTimer?.unref();
        // A renewal (certbot's deploy hook, a cron job): `kill -HUP`. New connections get the new pair.
        // Without TLS, SIGHUP keeps its default (the process ends, as before).
        if (certFile && keyFile) process.on('SIGHUP', () => {
          try {
            const next = loadTlsPair(certFile, keyFile);
            server.setTls(next);
            log(tlsLogLine('TLS certificate reloaded', next.info));
          } catch (err) {
            log({ level: 'error', msg: 'TLS certificate reload failed; the previous certificate keeps serving', error: err instanceof Error ? err.message : String(err) });
          }
        });
        process.stdout.write(opts.json ? `${JSON.stringify({ url })}\n` : `carryon-server listening on ${url}\n`);
        const stop = async (): Promise<void> => {
          await server.close();
          await d.close();
          process.exit(0);
        };
        process.once('SIGINT', () => void stop());
        process.once('SIGTERM', () => void stop());
      } catch (err) {
        const f = describeFailure(err);
        if (opts.json) process.stdout.write(`${f.json}\n`);
        process.stderr.write(`carryon-server: ${f.text}\n`);
        process.exitCode = f.exitCode;
      }
    });
}
