// REGEDIT4 writes the hex data of string-typed values in the ANSI code page, one byte per character,
// where v5 writes the registry's UTF-16LE bytes. These convert between the two, exactly.
import { REG_EXPAND_SZ, REG_MULTI_SZ, REG_SZ, type RegFileEncoding, type RegFileVersion } from './types.js';
import { canEncode, decodeCp1252, decodeUtf16le, decodeUtf8OrNull, encodeText, encodeUtf16le } from './text-encoding.js';

export const HEADER_V5 = 'Windows Registry Editor Version 5.00';
export const HEADER_REGEDIT4 = 'REGEDIT4';

/**
 * Whether hex(1), hex(2) and hex(7) data hold ANSI bytes (converted to UTF-16LE on import) rather
 * than the registry's UTF-16LE bytes: in a REGEDIT4 file that is not itself UTF-16. The ANSI code page
 * is the file's encoding (windows-1252 or UTF-8).
 */
export function hexStringsAreAnsi(version: RegFileVersion, encoding: RegFileEncoding): boolean {
  return version === 'regedit4' && encoding !== 'utf-16le';
}

export function isStringType(type: number): boolean {
  return type === REG_SZ || type === REG_EXPAND_SZ || type === REG_MULTI_SZ;
}

/** ANSI bytes from a REGEDIT4 file to registry data (UTF-16LE); null if they are not text in `encoding`. */
export function ansiToData(bytes: Uint8Array, encoding: RegFileEncoding): Uint8Array | null {
  const text = encoding === 'utf-8' ? decodeUtf8OrNull(bytes) : decodeCp1252(bytes);
  return text === null ? null : encodeUtf16le(text);
}

/** Registry data (UTF-16LE) as ANSI bytes for a REGEDIT4 file; null if `encoding` cannot hold it exactly. */
export function dataToAnsi(data: Uint8Array, encoding: RegFileEncoding): Uint8Array | null {
  if (data.length % 2 !== 0) return null;
  const text = decodeUtf16le(data);
  return canEncode(text, encoding) ? encodeText(text, encoding) : null;
}
