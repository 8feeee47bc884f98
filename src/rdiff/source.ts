// Byte inputs: a whole buffer, a Node Readable or any async iterable of byte chunks.
import type { Readable } from 'node:stream';
import { CarryonError } from '../errors/index.js';

export type ByteSource = Uint8Array | Readable | AsyncIterable<Uint8Array>;

/** The chunks of a source that is not a single buffer; a string chunk (a Readable with an encoding
 *  set) is a caller bug. */
export async function* chunksOf(src: Readable | AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array, void, undefined> {
  for await (const chunk of src as AsyncIterable<unknown>) {
    if (!(chunk instanceof Uint8Array)) {
      throw new CarryonError('INVALID_ARGUMENT', 'rdiff input must yield bytes, not strings (is an encoding set on the stream?)');
    }
    if (chunk.length > 0) yield chunk;
  }
}

export function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}
