// The persona's bulk and delta paths with the real CLI and server: a first push of more than 8 MiB sends
// chunks as the laptop cache's zstd frames (z/ entries), and later pushes send each changed 1 MiB chunk
// of a large file as a delta against the base version's chunks (c/ entries): in place, appended, and
// shifted by an insertion. A fresh laptop then checks out the same bytes.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Laptop, removeTmp, TestServer, tmpDir } from './harness.js';

const MiB = 1024 * 1024;

/** Seeded bytes that compress a little (like a mailbox): text lines with a counter. */
function mailbox(bytes: number, tag: string): Buffer {
  const lines: string[] = [];
  let n = 0;
  for (let i = 0; n < bytes; i++) {
    const l = `From ${tag}-${i}@example.org ${createHash('sha256').update(`${tag}${i}`).digest('hex')}\nX-Mozilla-Status: 0000\n\n`;
    lines.push(l);
    n += l.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string): void => {
    for (const e of readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else out[r] = createHash('sha256').update(readFileSync(path.join(root, r))).digest('hex');
    }
  };
  walk('');
  return out;
}

describe('persona transfer: bulk frames and chunk deltas', () => {
  const dir = tmpDir('persona-transfer');
  const server = new TestServer(dir);
  const b = new Laptop(path.join(dir, 'device-b'));
  const c = new Laptop(path.join(dir, 'device-c'));
  const profileB = path.join(b.home, 'desktops', 'desk', 'persona', 'profile');
  const profileC = path.join(c.home, 'desktops', 'desk', 'persona', 'profile');
  const inbox = path.join(profileB, 'Mail', 'Inbox.mbox');

  beforeAll(async () => {
    await server.init();
    const token = await server.addUser('alice');
    writeFileSync(path.join(dir, 'img.raw'), Buffer.alloc(MiB));
    expect((await server.admin(['image', 'publish', 'img', path.join(dir, 'img.raw')])).code).toBe(0);
    expect((await server.admin(['desktop', 'create', 'desk', '--user', 'alice', '--image', 'img'])).code).toBe(0);
    await server.start();
    for (const l of [b, c]) expect((await l.cli(['login', server.url, '--token', token])).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await server.stop();
    removeTmp(dir);
  });

  it('a first push of 11.5 MiB goes as the cache frames; a fresh laptop checks out the same files', async () => {
    expect((await b.cli(['checkout', 'desk', '--persona-only', '--json'])).code).toBe(0);
    mkdirSync(path.join(profileB, 'Mail'), { recursive: true });
    writeFileSync(inbox, mailbox(3.5 * MiB, 'inbox'));
    for (let i = 0; i < 8; i++) writeFileSync(path.join(profileB, 'Mail', `old-${i}.mbox`), mailbox(MiB, `old${i}`));
    const push = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    expect(push.json.sent).toMatchObject({ chunks: 12, deltas: 0 });
    // Sent as stored (zstd -3 per chunk), not as plaintext.
    expect(push.json.bytesSent).toBeLessThan(8 * MiB);
    const co = await c.cli(['checkout', 'desk', '--persona-only', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(tree(profileC)).toEqual(tree(profileB));
  });

  it('edits in place, an append and an insertion send chunk deltas of a few KB; the server rebuilds the same bytes', async () => {
    const old = readFileSync(inbox);
    const next = Buffer.concat([old.subarray(0, 1000), Buffer.from('X-Inserted: a header that shifts every byte after it\n'), old.subarray(1000), mailbox(20_000, 'new')]);
    const at = next.indexOf('X-Mozilla-Status: 0000', 2 * MiB + 12_345);
    next.write('0001', at + 'X-Mozilla-Status: '.length);
    writeFileSync(inbox, next);
    const push = await b.cli(['persona', 'push', 'desk', '--json']);
    expect(push.code, push.stderr).toBe(0);
    // All four chunks changed (the insertion shifted them): each as a delta, none whole.
    expect(push.json.sent).toMatchObject({ chunks: 0, deltas: 4 });
    expect(push.json.bytesSent).toBeLessThan(60_000);
    const co = await c.cli(['checkout', 'desk', '--persona-only', '--json']);
    expect(co.code, co.stderr).toBe(0);
    expect(readFileSync(path.join(profileC, 'Mail', 'Inbox.mbox')).equals(next)).toBe(true);
    expect(tree(profileC)).toEqual(tree(profileB));
  });
});
