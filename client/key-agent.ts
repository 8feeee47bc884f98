// The key agent: `carryon agent` keeps the unlocked key-encryption key in memory for the session and
// hands it to the user's own carryon commands over a Unix socket (HOME/run/agent.sock, in the 0700
// home, mode 0600), as ssh-agent does. `carryon unlock` puts the key, `carryon lock` makes it forget.
// The key never touches the disk. Must not know: what the key opens.
import { chmodSync, mkdirSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export function agentSocket(home: string): string {
  return path.join(home, 'run', 'agent.sock');
}

type Req = { op: 'put'; kek: string } | { op: 'get' } | { op: 'forget' };

/** Serve the key to this user's commands until closed. */
export function serveKeys(home: string, log: (what: string) => void): { close: () => Promise<void>; unlocked: () => boolean } {
  let kek: Buffer | null = null;
  const file = agentSocket(home);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  try {
    unlinkSync(file); // a socket left by an agent that died
  } catch {
    /* none */
  }
  const server = net.createServer((sock) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('error', () => undefined);
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.length > 4096) return void sock.destroy();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      let req: Req;
      try {
        req = JSON.parse(buf.slice(0, nl)) as Req;
      } catch {
        return void sock.destroy();
      }
      if (req.op === 'put' && typeof req.kek === 'string') {
        const k = Buffer.from(req.kek, 'base64');
        if (k.length === 32) {
          kek = k;
          log('keys unlocked for this session');
        }
        sock.end('{"ok":true}\n');
      } else if (req.op === 'get') sock.end(`${JSON.stringify({ kek: kek ? kek.toString('base64') : null })}\n`);
      else if (req.op === 'forget') {
        kek?.fill(0);
        kek = null;
        log('keys locked');
        sock.end('{"ok":true}\n');
      } else sock.destroy();
    });
  });
  server.listen(file, () => chmodSync(file, 0o600));
  return {
    unlocked: () => kek !== null,
    close: () =>
      new Promise<void>((resolve) => {
        kek?.fill(0);
        kek = null;
        server.close(() => resolve());
      }),
  };
}

async function ask(home: string, req: Req): Promise<Record<string, unknown> | null> {
  return new Promise((resolve) => {
    const sock = net.connect(agentSocket(home));
    let buf = '';
    const done = (v: Record<string, unknown> | null): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(null), 2000);
    sock.setEncoding('utf8');
    sock.on('error', () => done(null));
    sock.on('connect', () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      try {
        done(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      } catch {
        done(null);
      }
    });
    sock.on('end', () => done(null));
  });
}

/** The KEK the agent holds, or null (no agent, or locked). */
export async function askAgentForKek(home: string): Promise<Buffer | null> {
  const r = await ask(home, { op: 'get' });
  return r && typeof r.kek === 'string' ? Buffer.from(r.kek, 'base64') : null;
}

/** Give the agent the KEK; false when no agent runs. */
export async function giveAgentKek(home: string, kek: Buffer): Promise<boolean> {
  return (await ask(home, { op: 'put', kek: kek.toString('base64') }))?.ok === true;
}

export async function agentForget(home: string): Promise<boolean> {
  return (await ask(home, { op: 'forget' }))?.ok === true;
}
