// RegistryFile -> .reg bytes, in regedit's own layout: CRLF line ends, a blank line before every key,
// one more at the end, hex data wrapped the way regedit wraps it (see wrapHexData).
import { CarryonError } from '../../errors/index.js';
import { dataToAnsi, HEADER_REGEDIT4, HEADER_V5, hexStringsAreAnsi, isStringType } from './ansi.js';
import { keyPathProblem, valueNameProblem } from './names.js';
import { BOM_UTF16LE, BOM_UTF8, canEncode, decodeUtf16le, encodeText } from './text-encoding.js';
import { REG_BINARY, REG_DWORD, REG_MAX_LINE_CHARS, REG_MAX_VALUE_BYTES, REG_SZ, type RegFileEncoding, type RegValueEdit, type RegistryFile } from './types.js';

function bad(message: string, data: Record<string, unknown> = {}): never {
  throw new CarryonError('INVALID_ARGUMENT', message, data);
}

/**
 * regedit's rule for wrapping hex data (Wine's programs/regedit/regproc.c, export_hex_data; Windows
 * writes the same): count the characters of the line so far, starting with `"name"=hex(N):`; after
 * each byte but the last write `xx,` and add 3; once the count reaches 77, end the line with `\`
 * and start the next with two spaces (count 2). So a line holds at most 77 characters plus the `\`,
 * continuation lines hold 25 bytes, and every line holds at least one byte.
 */
export const HEX_WRAP_COLUMNS = 77;

const HEX_DIGITS = '0123456789abcdef';

/** `bytes` as comma-separated hex, wrapped as regedit wraps it; `prefixChars` is what precedes it on its first line. */
export function wrapHexData(bytes: Uint8Array, prefixChars: number): string {
  const n = bytes.length;
  if (n === 0) return '';
  // 3 chars a byte, plus "\\\r\n  " (5) a wrap; a wrap needs at least one byte.
  const out = new Uint8Array(n * 3 + (n + 1) * 5);
  let o = 0;
  let lineLen = prefixChars;
  for (let i = 0; i < n; i++) {
    const b = bytes[i]!;
    out[o++] = HEX_DIGITS.charCodeAt(b >> 4);
    out[o++] = HEX_DIGITS.charCodeAt(b & 15);
    if (i === n - 1) break;
    out[o++] = 0x2c; // ,
    lineLen += 3;
    if (lineLen >= HEX_WRAP_COLUMNS) {
      out[o++] = 0x5c; // \
      out[o++] = 0x0d;
      out[o++] = 0x0a;
      out[o++] = 0x20;
      out[o++] = 0x20;
      lineLen = 2;
    }
  }
  return Buffer.from(out.buffer, 0, o).toString('latin1');
}

/** A value name or string between quotes: `\` and `"` escaped, CR and LF as `\r` and `\n`. */
function escapeQuoted(s: string): string {
  return /[\\"\r\n]/.test(s) ? s.replace(/[\\"\r\n]/g, (c) => (c === '\r' ? '\\r' : c === '\n' ? '\\n' : `\\${c}`)) : s;
}

/** The string REG_SZ data holds if it can be written as `"..."` and read back to the same bytes, else null. */
function quotableString(data: Uint8Array, encoding: RegFileEncoding): string | null {
  const n = data.length;
  if (n < 2 || n % 2 !== 0 || data[n - 1] !== 0 || data[n - 2] !== 0) return null;
  const s = decodeUtf16le(data.subarray(0, n - 2));
  // A NUL would end the string early; CR and LF go as hex so that no reader's escapes matter.
  if (/[\0\r\n]/.test(s) || !canEncode(s, encoding)) return null;
  return s;
}

function valueLine(v: RegValueEdit, where: Record<string, unknown>, encoding: RegFileEncoding, ansi: boolean): string {
  const nameProblem = valueNameProblem(v.name);
  if (nameProblem) bad(`cannot write value name: ${nameProblem.message}`, where);
  if (v.name !== null && !canEncode(v.name, encoding)) bad(`the value name cannot be written in ${encoding}`, where);
  const head = v.name === null || v.name === '' ? '@=' : `"${escapeQuoted(v.name)}"=`;
  if (v.kind === 'delete') return `${head}-`;
  if (v.kind !== 'set') bad(`unknown value edit kind '${String((v as { kind: unknown }).kind)}'`, where);
  const { type, data } = v;
  if (!Number.isInteger(type) || type < 0 || type > 0xffffffff) bad(`value type must be an integer from 0 to 0xffffffff, not ${type}`, where);
  if (!(data instanceof Uint8Array)) bad('value data must be a Uint8Array', where);
  if (data.length > REG_MAX_VALUE_BYTES) bad(`value data larger than ${REG_MAX_VALUE_BYTES} bytes`, { ...where, size: data.length });
  if (type === REG_SZ) {
    const s = quotableString(data, encoding);
    if (s !== null) {
      const line = `${head}"${escapeQuoted(s)}"`;
      if (line.length <= REG_MAX_LINE_CHARS) return line;
    }
  }
  if (type === REG_DWORD && data.length === 4) {
    return `${head}dword:${new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true).toString(16).padStart(8, '0')}`;
  }
  let bytes = data;
  if (ansi && isStringType(type)) {
    const converted = dataToAnsi(data, encoding);
    if (!converted) bad(`a REGEDIT4 file writes string data in its code page, and ${encoding} cannot hold this value's data exactly; write a v5 file`, where);
    bytes = converted;
  }
  const prefix = head + (type === REG_BINARY ? 'hex:' : `hex(${type.toString(16)}):`);
  return prefix + wrapHexData(bytes, prefix.length);
}

/**
 * One value line as encodeRegFile writes it in a file of `encoding` (v5), without the line break: a
 * long hex value holds its `\` + CRLF + two spaces continuations. Throws INVALID_ARGUMENT as
 * encodeRegFile does for a value it cannot write losslessly.
 */
export function encodeRegValueLine(v: RegValueEdit, encoding: RegFileEncoding = 'utf-8'): string {
  return valueLine(v, { name: v.name }, encoding, false);
}

/**
 * Writes a .reg file exactly as regedit would: for a file regedit exported (v5: UTF-16LE with BOM;
 * REGEDIT4: ANSI), `encodeRegFile(decodeRegFile(bytes))` gives back the same bytes. For every file,
 * `decodeRegFile(encodeRegFile(f), { encoding: f.encoding })` deep-equals `f`. Throws
 * INVALID_ARGUMENT for a file model it cannot write losslessly (bad path, name, type or encoding).
 */
export function encodeRegFile(file: RegistryFile): Uint8Array {
  const { version, encoding, bom } = file;
  if (version !== 'v5' && version !== 'regedit4') bad(`unknown .reg version '${String(version)}'`);
  if (encoding !== 'utf-16le' && encoding !== 'utf-8' && encoding !== 'windows-1252') bad(`unknown .reg encoding '${String(encoding)}'`);
  if (encoding === 'utf-16le' && !bom) bad('a UTF-16LE .reg file needs its byte-order mark (regedit requires it)');
  if (encoding === 'windows-1252' && bom) bad('a windows-1252 .reg file has no byte-order mark');
  const ansi = hexStringsAreAnsi(version, encoding);
  const parts: string[] = [version === 'v5' ? HEADER_V5 : HEADER_REGEDIT4, '\r\n'];
  for (const [index, section] of file.sections.entries()) {
    const where = { section: index, path: section.path };
    const problem = typeof section.path === 'string' ? keyPathProblem(section.path) : { offset: 0, message: 'not a string' };
    if (problem) bad(`cannot write key path: ${problem.message}`, where);
    if (!canEncode(section.path, encoding)) bad(`the key path cannot be written in ${encoding}`, where);
    if (section.kind === 'delete-key') {
      if (!section.path.includes('\\')) bad('a root key cannot be deleted', where);
      parts.push('\r\n[-', section.path, ']\r\n');
      continue;
    }
    if (section.kind !== 'key') bad(`unknown section kind '${String((section as { kind: unknown }).kind)}'`, where);
    parts.push('\r\n[', section.path, ']\r\n');
    for (const [v, value] of section.values.entries()) {
      parts.push(valueLine(value, { ...where, value: v, name: value.name }, encoding, ansi), '\r\n');
    }
  }
  parts.push('\r\n');
  const body = encodeText(parts.join(''), encoding);
  const mark = !bom ? null : encoding === 'utf-16le' ? BOM_UTF16LE : BOM_UTF8;
  if (!mark) return body;
  const out = new Uint8Array(mark.length + body.length);
  out.set(mark);
  out.set(body, mark.length);
  return out;
}
