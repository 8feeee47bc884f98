// Issue 3's case: a large mailbox with one new message sends kilobytes. The mailbox (20 MB here; the
// 200 MB figure is in the module's report) is real licence text cut into seeded messages.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDelta, createSignature, parseSignature } from '../../../src/index.js';
import { prng, tempDir } from '../helpers.js';
import { collect, KiB, licenceText, mailbox, mailMessage, patchToBuffer, rdiff, sha256hex } from './helpers.js';

describe('rdiff on a 20 MB mailbox', () => {
  const text = licenceText();
  const rng = prng(42);
  const { data: base, count } = mailbox(rng, text, 20_000_000);
  let dir = '';
  let cleanup: () => Promise<void> = async () => undefined;
  let sig: Buffer = Buffer.alloc(0);

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('carryon-rdiff-mbox-'));
    writeFileSync(path.join(dir, 'base'), base);
    sig = await createSignature(base);
  });
  afterAll(async () => {
    await cleanup();
  });

  it('is a mailbox of distinct messages', () => {
    expect(base.length).toBeGreaterThanOrEqual(20_000_000);
    expect(count).toBeGreaterThan(1000);
    expect(base.subarray(0, 5).toString()).toBe('From ');
    expect(new Set(base.toString('latin1').match(/^Message-ID: .*$/gm)).size).toBe(count);
  });

  it('sends one appended message as a few KB, which rdiff and we both apply', async () => {
    const message = mailMessage(rng, text, count);
    const next = Buffer.concat([base, message]);
    const parsed = parseSignature(sig);
    const delta = await collect(createDelta(parsed, next));
    // The new message, the short last block it follows, and a few command bytes.
    expect(delta.length).toBeLessThanOrEqual(message.length + parsed.blockLength + 64);
    expect(delta.length).toBeLessThan(16 * KiB);
    expect(sha256hex(await patchToBuffer(base, delta))).toBe(sha256hex(next));
    writeFileSync(path.join(dir, 'delta'), delta);
    rdiff(['-f', 'patch', path.join(dir, 'base'), path.join(dir, 'delta'), path.join(dir, 'next')]);
    expect(sha256hex(readFileSync(path.join(dir, 'next')))).toBe(sha256hex(next));
  });

  it('sends a flag change and a deleted message in the middle as a few KB', async () => {
    const s = base.toString('latin1');
    const flag = s.indexOf('Status: RO\n', 10_000_000);
    const delStart = s.indexOf('\nFrom ', 15_000_000) + 1;
    const delEnd = s.indexOf('\nFrom ', delStart + 10) + 1;
    const next = Buffer.concat([
      base.subarray(0, flag),
      Buffer.from('Status: RO\nX-Status: A\n'),
      base.subarray(flag + 'Status: RO\n'.length, delStart),
      base.subarray(delEnd),
    ]);
    const delta = await collect(createDelta(sig, next));
    expect(delta.length).toBeLessThan(4 * parseSignature(sig).blockLength + 64);
    expect(sha256hex(await patchToBuffer(base, delta))).toBe(sha256hex(next));
  });
});
