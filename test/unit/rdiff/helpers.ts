// Helpers for the rdiff tests: collecting deltas and patches, running the real `rdiff`, seeded edits,
// real files from this machine, and a mailbox made of real text.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { expect } from 'vitest';
import { listHostFiles, looksBinary } from '../../../scripts/lib/host-files.js';
import { applyDelta, createDelta, createSignature, type ApplyDeltaOptions, type ByteSource, type RandomAccessBase, type SignatureOptions } from '../../../src/index.js';
import { prng, randInt } from '../helpers.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

export function sha256hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of chunks) parts.push(c);
  return Buffer.concat(parts);
}

/** A Writable that keeps what it is given; `ended` tells whether applyDelta ended it. */
export class MemorySink extends Writable {
  private readonly parts: Buffer[] = [];
  ended = false;
  writes = 0;

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.parts.push(chunk);
    this.writes++;
    cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.ended = true;
    cb();
  }

  result(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export async function patchToBuffer(base: RandomAccessBase, delta: ByteSource, opts?: ApplyDeltaOptions): Promise<Buffer> {
  const sink = new MemorySink();
  const { bytes } = await applyDelta(base, delta, sink, opts);
  const out = sink.result();
  expect(bytes).toBe(out.length);
  expect(sink.ended).toBe(true);
  return out;
}

/** Signature of base, delta to next, patch of base: returns the delta and the rebuilt bytes. */
export async function roundTrip(base: Buffer, next: Buffer, opts: SignatureOptions = {}): Promise<{ sig: Buffer; delta: Buffer; rebuilt: Buffer }> {
  const sig = await createSignature(base, opts);
  const delta = await collect(createDelta(sig, next));
  const rebuilt = await patchToBuffer(base, delta);
  return { sig, delta, rebuilt };
}

/** Run the real rdiff; it must succeed. */
export function rdiff(args: string[]): void {
  const r = spawnSync('rdiff', args, { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run rdiff (scripts/install-test-deps.sh installs it): ${r.error.message}`);
  expect(r.status, `rdiff ${args.join(' ')}: ${r.stderr}`).toBe(0);
}

/** A readable-like source that yields `data` in chunks of the given sizes, cycling through them. */
export async function* inChunks(data: Uint8Array, sizes: readonly number[]): AsyncGenerator<Uint8Array> {
  let i = 0;
  for (let off = 0; off < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, data.length - off);
    yield data.subarray(off, off + n);
    off += n;
  }
}

/** Seeded edits of a buffer, as a version of a file might change. */
export function insertAt(data: Buffer, at: number, bytes: Buffer): Buffer {
  return Buffer.concat([data.subarray(0, at), bytes, data.subarray(at)]);
}

export function deleteRange(data: Buffer, at: number, n: number): Buffer {
  return Buffer.concat([data.subarray(0, at), data.subarray(at + n)]);
}

export function scatterEdits(rng: () => number, data: Buffer, count: number): Buffer {
  let out: Buffer = Buffer.from(data);
  for (let i = 0; i < count; i++) {
    const at = randInt(rng, out.length + 1);
    const kind = randInt(rng, 3);
    const bytes = Buffer.alloc(1 + randInt(rng, 300), 0x41 + randInt(rng, 26));
    if (kind === 0) out = insertAt(out, at, bytes);
    else if (kind === 1) out = deleteRange(out, at, Math.min(1 + randInt(rng, 300), out.length - at));
    else {
      out = Buffer.from(out);
      bytes.copy(out, at, 0, Math.min(bytes.length, out.length - at));
    }
  }
  return out;
}

/** A seeded pick of `count` real files of 1 KiB to `maxBytes` from /usr/lib and /usr/share/doc,
 *  alternating libraries and documents. */
export function realFiles(seed: number, count: number, maxBytes: number): string[] {
  const files = listHostFiles(['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/share/doc']).filter((f) => f.size >= 1024 && f.size <= maxBytes);
  const binaries = files.filter((f) => looksBinary(f));
  const docs = files.filter((f) => !looksBinary(f));
  expect(binaries.length).toBeGreaterThan(0);
  expect(docs.length).toBeGreaterThan(0);
  const rng = prng(seed);
  const picked: string[] = [];
  for (let i = 0; i < count; i++) {
    const pool = i % 2 === 0 ? binaries : docs;
    picked.push(pool[randInt(rng, pool.length)]!.path);
  }
  return picked;
}

/** The plain-text licences every Debian system ships: real English text, the same on every machine. */
export function licenceText(): Buffer {
  const names = ['Apache-2.0', 'Artistic', 'BSD', 'GFDL-1.3', 'GPL-2', 'GPL-3', 'LGPL-2.1', 'MPL-2.0'];
  return Buffer.concat(names.map((n) => readFileSync(`/usr/share/common-licenses/${n}`)));
}

const NAMES = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy'];
const DOMAINS = ['example.org', 'example.net', 'mail.example.com'];

/** One mbox message: headers that vary with the seed and a body cut from real text, some lines quoted. */
export function mailMessage(rng: () => number, text: Buffer, n: number): Buffer {
  const from = `${NAMES[randInt(rng, NAMES.length)]}@${DOMAINS[randInt(rng, DOMAINS.length)]}`;
  const to = `${NAMES[randInt(rng, NAMES.length)]}@${DOMAINS[randInt(rng, DOMAINS.length)]}`;
  const date = new Date(Date.UTC(2024, 0, 1) + n * 3_600_000 + randInt(rng, 3_600_000)).toUTCString();
  const start = randInt(rng, text.length - 9000);
  const bodyStart = text.indexOf(10, start) + 1;
  const bodyEnd = text.indexOf(10, bodyStart + 200 + randInt(rng, 8000)) + 1;
  const lines = text
    .subarray(bodyStart, bodyEnd > bodyStart ? bodyEnd : text.length)
    .toString('latin1')
    .split('\n')
    .map((l) => (l.startsWith('From ') ? `>${l}` : randInt(rng, 5) === 0 ? `> ${l}` : l));
  const head = [
    `From ${from} ${date}`,
    `Return-Path: <${from}>`,
    `From: ${from}`,
    `To: ${to}`,
    `Subject: Re: [${n}] ${lines.find((l) => l.trim().length > 10)?.trim().slice(0, 60) ?? 'hello'}`,
    `Date: ${date}`,
    `Message-ID: <${n}.${randInt(rng, 1e9)}@${DOMAINS[randInt(rng, DOMAINS.length)]}>`,
    `Status: RO`,
    '',
  ];
  return Buffer.from(`${head.join('\n')}\n${lines.join('\n')}\n`, 'latin1');
}

/** A mailbox of about `bytes` bytes: `count` messages made by mailMessage. */
export function mailbox(rng: () => number, text: Buffer, bytes: number): { data: Buffer; count: number } {
  const parts: Buffer[] = [];
  let size = 0;
  let n = 0;
  while (size < bytes) {
    const m = mailMessage(rng, text, n++);
    parts.push(m);
    size += m.length;
  }
  return { data: Buffer.concat(parts), count: n };
}
