// carryon login URL: check the token, register this laptop as a device, keep the device's own token,
// with how to reach the server safely (an extra CA, or the choice of plain http://). The token comes
// from --token-file, $CARRYON_TOKEN or a hidden prompt (token-input.ts); --token is discouraged.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { Command } from 'commander';
import { CarryonError } from '../../src/index.js';
import { ApiClient } from '../api-client.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { checkTransport } from '../tls.js';
import { readToken, TOKEN_ENV } from '../token-input.js';

export function registerLogin(program: Command): void {
  withCommonOptions(program.command('login <url>').description('log this laptop in to a carryon server'))
    .option('--token-file <file>', 'read the token from the first line of FILE (`-`: stdin)')
    .option('--token <token>', `the token itself (discouraged: other users see it in \`ps\`, and shell history keeps it; use --token-file, $${TOKEN_ENV} or the prompt)`)
    .option('--ca <file>', 'also trust this CA certificate (PEM) for the server; kept in the home for later commands')
    .option('--insecure-http', 'allow plain http:// to a server that is not this machine (the token and disk cross the network readable): only on a network you trust')
    .option('--device-name <name>', 'how this laptop is named to admins', os.hostname())
    .addHelpText('after', `\nThe token comes from --token-file FILE, else $${TOKEN_ENV}, else a prompt that does not echo (on a terminal).`)
    .action(async (url: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async ({ state }) => {
        let u: URL;
        try {
          u = new URL(url);
        } catch {
          throw new CarryonError('INVALID_ARGUMENT', `${url} is not a URL (like https://carryon.example.org:7480)`);
        }
        if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new CarryonError('INVALID_ARGUMENT', 'the server URL must be https:// (or http://)');
        const insecureHttp = opts.insecureHttp === true;
        if (insecureHttp && u.protocol !== 'http:') throw new CarryonError('INVALID_ARGUMENT', '--insecure-http is for http:// URLs only; this one is https://');
        if (opts.ca !== undefined && u.protocol !== 'https:') throw new CarryonError('INVALID_ARGUMENT', '--ca is for https:// URLs: plain http:// uses no certificates');
        // Refused before any token is read or sent.
        checkTransport(u, insecureHttp);
        const ca = opts.ca === undefined ? null : readCa(String(opts.ca));
        const { token, from } = await readToken({ token: opts.token as string | undefined, tokenFile: opts.tokenFile as string | undefined, env: process.env, stdin: process.stdin, out: process.stderr });
        const api = new ApiClient({ url: u.origin, token, device: state.deviceId(), ca: ca?.pem ?? null, insecureHttp });
        try {
          const who = await api.whoami();
          // The laptop keeps a token of its own (a device token), never the user's: an admin can list
          // and revoke it without touching the user's other laptops.
          const reg = await api.registerDevice(state.deviceId(), String(opts.deviceName));
          // The key client updates are signed with: fetched now, over the transport just checked.
          const releaseKey = await api.releaseKey();
          const l = state.saveLogin({ url: u.origin, token: reg.token, deviceName: String(opts.deviceName), user: who.user, ca: ca?.pem ?? null, insecureHttp });
          state.setReleaseKey(releaseKey);
          return {
            server: l.url, user: who.user, admin: who.admin, device: l.device, deviceName: l.deviceName, home: state.home, tokenFrom: from,
            ca: ca?.subjects ?? null, insecureHttp: l.insecureHttp, releaseKey,
          };
        } finally {
          api.close();
        }
      }, (r) => `logged in to ${r.server} as ${r.user}${r.admin ? ' (admin)' : ''}; this laptop is device ${r.deviceName} (${r.device})` +
        (r.ca ? `\ntrusting the CA ${r.ca.join('; ')} for this server besides the system's` : '') +
        (r.insecureHttp ? '\nplain HTTP by your choice (--insecure-http): the token and disks cross the network unencrypted' : ''));
    });
}

/** The certificates of a PEM file (only those: a private key pasted in by mistake is never kept). */
function readCa(file: string): { pem: string; subjects: string[] } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CarryonError('INVALID_ARGUMENT', `cannot read the CA file ${file}: ${(err as Error).message}`, { file });
  }
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new CarryonError('INVALID_ARGUMENT', `${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----): ask the server's admin for the CA certificate in PEM form`, { file });
  const subjects = blocks.map((b) => {
    try {
      return new X509Certificate(b).subject.replace(/\n/g, ', ');
    } catch {
      throw new CarryonError('INVALID_ARGUMENT', `${file} holds a certificate that cannot be parsed`, { file });
    }
  });
  return { pem: `${blocks.join('\n')}\n`, subjects };
}
