// Bytes <-> text for .reg files: BOM detection, UTF-16LE (lone surrogates kept), UTF-8 and
// windows-1252 (the WHATWG index: a bijection between the 256 bytes and 256 code points).
import type { RegFileEncoding } from './types.js';

/** windows-1252 bytes 0x80..0x9f; every other byte maps to the code point of the same number. */
const CP1252_HIGH = [
  0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008d, 0x017d, 0x008f,
  0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178,
];
const CP1252_DECODE = new Uint16Array(256);
const CP1252_ENCODE = new Map<number, number>();
for (let b = 0; b < 256; b++) {
  const u = b >= 0x80 && b < 0xa0 ? CP1252_HIGH[b - 0x80]! : b;
  CP1252_DECODE[b] = u;
  CP1252_ENCODE.set(u, b);
}

const UTF8 = new TextEncoder();
const UTF8_FATAL = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** UTF-16LE code units to a string, unpaired surrogates kept. `bytes.length` must be even. */
export function decodeUtf16le(bytes: Uint8Array): string {
  return toBuffer(bytes).toString('utf16le');
}

/**
 * decodeUtf16le, but text whose code units are all below 256 comes back as a Latin-1 string, which V8
 * keeps at one byte a character: half the memory for a large registry file, and for every slice of it.
 */
export function decodeUtf16leCompact(bytes: Uint8Array): string {
  const n = bytes.length >> 1;
  for (let i = 1; i < bytes.length; i += 2) if (bytes[i] !== 0) return decodeUtf16le(bytes);
  const out = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) out[i] = bytes[2 * i]!;
  return out.toString('latin1');
}

/** A string to UTF-16LE code units, unpaired surrogates kept. */
export function encodeUtf16le(text: string): Uint8Array {
  const b = Buffer.from(text, 'utf16le');
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** Offset of the first byte that makes `bytes` invalid UTF-8 (WHATWG rules), or -1. */
export function invalidUtf8At(bytes: Uint8Array, start = 0): number {
  let i = start;
  const n = bytes.length;
  while (i < n) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined || c < (k === 1 ? lo : 0x80) || c > (k === 1 ? hi : 0xbf)) return i;
    }
    i += need + 1;
  }
  return -1;
}

/** Strict UTF-8 decoding (no BOM stripping); null if the bytes are not UTF-8. */
export function decodeUtf8OrNull(bytes: Uint8Array): string | null {
  try {
    return UTF8_FATAL.decode(bytes);
  } catch {
    return null;
  }
}

export function decodeCp1252(bytes: Uint8Array): string {
  const parts: string[] = [];
  const chunk = new Uint16Array(Math.min(bytes.length, 8192));
  for (let i = 0; i < bytes.length; i += chunk.length) {
    const end = Math.min(bytes.length, i + chunk.length);
    for (let k = i; k < end; k++) chunk[k - i] = CP1252_DECODE[bytes[k]!]!;
    parts.push(String.fromCharCode(...chunk.subarray(0, end - i)));
  }
  return parts.join('');
}

/** Offset of the first code unit windows-1252 cannot hold, or -1. */
export function unencodableCp1252At(text: string): number {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80 && !CP1252_ENCODE.has(c)) return i;
  }
  return -1;
}

export function encodeCp1252(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const b = c < 0x80 ? c : CP1252_ENCODE.get(c);
    if (b === undefined) throw new RangeError(`code unit ${c} has no windows-1252 byte`);
    out[i] = b;
  }
  return out;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Offset of the first unpaired surrogate (which UTF-8 cannot hold), or -1. */
export function loneSurrogateAt(text: string): number {
  const m = LONE_SURROGATE.exec(text);
  return m ? m.index : -1;
}

/** Whether `text` survives a trip through `encoding` unchanged. */
export function canEncode(text: string, encoding: RegFileEncoding): boolean {
  if (encoding === 'utf-16le') return true;
  if (encoding === 'utf-8') return loneSurrogateAt(text) < 0;
  return unencodableCp1252At(text) < 0;
}

/** Text to bytes in `encoding` (the caller has checked `canEncode`). */
export function encodeText(text: string, encoding: RegFileEncoding): Uint8Array {
  if (encoding === 'utf-16le') return encodeUtf16le(text);
  if (encoding === 'utf-8') return UTF8.encode(text);
  return encodeCp1252(text);
}

export const BOM_UTF16LE = Uint8Array.of(0xff, 0xfe);
export const BOM_UTF8 = Uint8Array.of(0xef, 0xbb, 0xbf);
