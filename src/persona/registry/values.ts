// Typed views of value data: the raw bytes stay the truth; these read and write the usual shapes.
import { CarryonError } from '../../errors/index.js';
import { decodeUtf16le, encodeUtf16le } from './text-encoding.js';

function bad(message: string, data: Record<string, unknown> = {}): never {
  throw new CarryonError('INVALID_ARGUMENT', message, data);
}

/** REG_SZ / REG_EXPAND_SZ data for `s`: UTF-16LE plus one terminating NUL. */
export function encodeRegSz(s: string): Uint8Array {
  if (s.includes('\0')) bad('a REG_SZ string cannot hold a NUL character');
  return encodeUtf16le(`${s}\0`);
}

/** The string a program reads from REG_SZ / REG_EXPAND_SZ data: up to the first NUL, if any. */
export function decodeRegSz(data: Uint8Array): string {
  if (data.length % 2 !== 0) bad(`string data must have an even number of bytes, not ${data.length}`, { size: data.length });
  const s = decodeUtf16le(data);
  const nul = s.indexOf('\0');
  return nul < 0 ? s : s.slice(0, nul);
}

/** REG_MULTI_SZ data: each string NUL-terminated, then one more NUL. Strings must be non-empty. */
export function encodeRegMultiSz(list: readonly string[]): Uint8Array {
  for (const s of list) {
    if (s === '') bad('a REG_MULTI_SZ list cannot hold an empty string (it would end the list)');
    if (s.includes('\0')) bad('a REG_MULTI_SZ string cannot hold a NUL character');
  }
  return encodeUtf16le(list.length === 0 ? '\0' : `${list.join('\0')}\0\0`);
}

/** The strings in REG_MULTI_SZ data; a missing final terminator is tolerated, as Windows does. */
export function decodeRegMultiSz(data: Uint8Array): string[] {
  if (data.length % 2 !== 0) bad(`string data must have an even number of bytes, not ${data.length}`, { size: data.length });
  let s = decodeUtf16le(data);
  if (s.endsWith('\0\0')) s = s.slice(0, -2);
  else if (s.endsWith('\0')) s = s.slice(0, -1);
  const end = s.indexOf('\0\0');
  if (end >= 0) s = s.slice(0, end);
  return s === '' ? [] : s.split('\0');
}

/** REG_DWORD data: 4 bytes, little-endian. */
export function encodeRegDword(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) bad(`a REG_DWORD must be an integer from 0 to 0xffffffff, not ${n}`);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n, true);
  return out;
}

export function decodeRegDword(data: Uint8Array): number {
  if (data.length !== 4) bad(`REG_DWORD data must be 4 bytes, not ${data.length}`, { size: data.length });
  return new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
}

/** REG_QWORD data: 8 bytes, little-endian. */
export function encodeRegQword(n: bigint): Uint8Array {
  if (n < 0n || n > 0xffffffffffffffffn) bad(`a REG_QWORD must be from 0 to 2^64-1, not ${n}`);
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, n, true);
  return out;
}

export function decodeRegQword(data: Uint8Array): bigint {
  if (data.length !== 8) bad(`REG_QWORD data must be 8 bytes, not ${data.length}`, { size: data.length });
  return new DataView(data.buffer, data.byteOffset, 8).getBigUint64(0, true);
}
