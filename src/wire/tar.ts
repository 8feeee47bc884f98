// Tar framing of block transfers, both directions. Bounded: one entry in memory at a time, with a
// size limit checked from the header before any byte is buffered.
import { Readable } from 'node:stream';
import { createRequire } from 'node:module';
import { CarryonError } from '../errors/index.js';
import { isAllZero } from '../hash/index.js';

/** A tar archive ends with two 512-byte zero records. */
const END_BYTES = 1024;

const require = createRequire(import.meta.url);
const tar = require('tar-stream') as typeof import('tar-stream');

export interface TarEntry {
  name: string;
  data: Buffer;
}

/** A tar stream of the entries, produced as the consumer reads (backpressure through tar-stream). */
export function packEntries(entries: AsyncIterable<TarEntry> | Iterable<TarEntry>): Readable {
  const pack = tar.pack();
  (async () => {
    for await (const e of entries) {
      if (pack.destroyed) return; // the reader went away (a closed connection): stop producing
      await new Promise<void>((resolve, reject) => {
        const sink = pack.entry({ name: e.name, size: e.data.length, mode: 0o644, mtime: new Date(0) }, e.data, (err) => (err ? reject(err) : resolve()));
        // The callback reports a failed entry; without a listener the sink's own 'error' would crash the process.
        sink.on('error', () => undefined);
      });
    }
    pack.finalize();
  })().catch((err: Error) => pack.destroy(err));
  return Readable.from(pack as unknown as AsyncIterable<Buffer>, { objectMode: false });
}

/**
 * Read a tar stream entry by entry. Only regular files are accepted; a truncated stream (also one
 * cut between entries) or a malformed header fails with TAR_INVALID, an entry over `maxEntryBytes`
 * with PAYLOAD_TOO_LARGE. Errors thrown by `onEntry` pass through unchanged.
 */
export async function unpackEntries(
  input: NodeJS.ReadableStream,
  maxEntryBytes: number,
  onEntry: (e: TarEntry) => Promise<void> | void,
): Promise<number> {
  // Typed by hand: the streamx types of tar-stream do not match Node's stream typings.
  const extract = tar.extract() as unknown as {
    write(c: Buffer): boolean;
    end(): void;
    destroy(err?: Error): void;
    destroyed: boolean;
    once(ev: string, f: () => void): void;
    off(ev: string, f: () => void): void;
  } & AsyncIterable<NodeJS.ReadableStream & { header: { name: string; size?: number; type?: string | null } }>;
  let count = 0;
  let ownError: unknown = null;
  // tar-stream accepts a stream cut at an entry boundary; the end-of-archive blocks prove it is whole.
  let tail = Buffer.alloc(0);
  const feed = (async () => {
    try {
      // After a failure the rest of the input is read and dropped, so an HTTP peer still gets its answer.
      for await (const chunk of input as AsyncIterable<Buffer>) {
        tail = Buffer.concat([tail, chunk]).subarray(-END_BYTES);
        if (extract.destroyed) continue;
        if (!extract.write(chunk)) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              extract.off('drain', done);
              extract.off('close', done);
              resolve();
            };
            extract.once('drain', done);
            extract.once('close', done);
          });
        }
      }
      if (!extract.destroyed) extract.end();
    } catch (err) {
      extract.destroy(err as Error);
    }
  })();
  try {
    for await (const entry of extract) {
      const h = entry.header;
      if (h.type !== 'file') throw (ownError = new CarryonError('TAR_INVALID', `tar entry ${JSON.stringify(h.name)} is not a regular file`));
      const size = h.size ?? 0;
      if (size > maxEntryBytes) throw (ownError = new CarryonError('PAYLOAD_TOO_LARGE', `tar entry ${JSON.stringify(h.name)} is ${size} bytes, over the ${maxEntryBytes} limit`));
      const parts: Buffer[] = [];
      let got = 0;
      for await (const c of entry as AsyncIterable<Buffer>) {
        got += c.length;
        parts.push(c);
      }
      if (got !== size) throw (ownError = new CarryonError('TAR_INVALID', `tar entry ${JSON.stringify(h.name)} is truncated`));
      try {
        await onEntry({ name: h.name, data: parts.length === 1 ? parts[0]! : Buffer.concat(parts, got) });
      } catch (err) {
        throw (ownError = err);
      }
      count++;
    }
    await feed;
    if (tail.length < END_BYTES || !isAllZero(tail)) throw (ownError = new CarryonError('TAR_INVALID', 'tar stream is truncated: it lacks the end-of-archive blocks'));
  } catch (err) {
    extract.destroy();
    if (err === ownError || err instanceof CarryonError) throw err; // ours, or the consumer's: unchanged
    throw new CarryonError('TAR_INVALID', `tar stream is invalid: ${(err as Error).message}`, {}, err);
  } finally {
    await feed;
  }
  return count;
}
