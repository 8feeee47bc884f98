// .reg bytes -> RegistryFile. Strict where regedit is silent: regedit skips a line it cannot read
// and imports the rest; this parser refuses the file and names the line and column instead.
import { CarryonError, type ErrorCode } from '../../errors/index.js';
import { ansiToData, HEADER_REGEDIT4, HEADER_V5, hexStringsAreAnsi, isStringType } from './ansi.js';
import { keyPathProblem, rootKeyOf, valueNameProblem } from './names.js';
import { BOM_UTF16LE, BOM_UTF8, decodeCp1252, decodeUtf16leCompact, decodeUtf8OrNull, encodeUtf16le, invalidUtf8At } from './text-encoding.js';
import {
  REG_BINARY,
  REG_DWORD,
  REG_MAX_FILE_BYTES,
  REG_MAX_LINE_CHARS,
  REG_MAX_VALUE_BYTES,
  REG_SZ,
  type RegDecodeOptions,
  type RegFileEncoding,
  type RegRootKey,
  type RegFileVersion,
  type RegKeyDeletion,
  type RegKeySection,
  type RegSection,
  type RegistryFile,
} from './types.js';

/** The code for a malformed .reg file, until errors/ has a dedicated one (say REG_FILE_INVALID). */
const MALFORMED: ErrorCode = 'BAD_REQUEST';

const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const QUOTE = 0x22;
const COMMA = 0x2c;
const MINUS = 0x2d;
const SEMI = 0x3b;
const AT = 0x40;
const LBRACKET = 0x5b;
const BACKSLASH = 0x5c;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

function positionError(code: ErrorCode, line: number, column: number, message: string, extra: Record<string, unknown> = {}): CarryonError {
  return new CarryonError(code, `line ${line}, column ${column}: ${message}`, { line, column, ...extra });
}

/** Line and column (1-based, UTF-16 code units) of `offset` in `text`. */
function positionOf(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < offset; i++) {
    const c = text.charCodeAt(i);
    if (c === LF || (c === CR && text.charCodeAt(i + 1) !== LF)) {
      line++;
      start = i + 1;
    }
  }
  return { line, column: offset - start + 1 };
}

/**
 * The encoding of a BOM-less file: UTF-8 if it has non-ASCII bytes that decode as UTF-8, windows-1252
 * if it has others. Plain ASCII text reads the same either way, but the ANSI string hex of a REGEDIT4
 * file does not: there it is windows-1252, the code page regedit writes on Western systems.
 */
function guessEncoding(bytes: Uint8Array): RegFileEncoding {
  if (bytes.some((b) => b >= 0x80)) return invalidUtf8At(bytes) < 0 ? 'utf-8' : 'windows-1252';
  const head = Buffer.from(bytes.subarray(0, 64)).toString('latin1').replace(/^[ \t]+/, '');
  return head.startsWith(HEADER_REGEDIT4) ? 'windows-1252' : 'utf-8';
}

function decodeText(bytes: Uint8Array, forced: RegFileEncoding | undefined): { text: string; encoding: RegFileEncoding; bom: boolean } {
  const startsWith = (bom: Uint8Array): boolean => bom.every((b, i) => bytes[i] === b);
  if (bytes[0] === 0xfe && bytes[1] === 0xff) {
    throw positionError(MALFORMED, 1, 1, 'big-endian UTF-16 is not a .reg encoding (regedit reads UTF-16LE with the BOM FF FE)');
  }
  const hasUtf16Bom = startsWith(BOM_UTF16LE);
  const hasUtf8Bom = startsWith(BOM_UTF8);
  const encoding: RegFileEncoding = forced ?? (hasUtf16Bom ? 'utf-16le' : hasUtf8Bom ? 'utf-8' : guessEncoding(bytes));
  if (encoding === 'utf-16le') {
    if (!hasUtf16Bom) throw positionError(MALFORMED, 1, 1, 'UTF-16LE text must start with the byte-order mark FF FE, as regedit requires');
    const body = bytes.subarray(2);
    const text = decodeUtf16leCompact(body.subarray(0, body.length & ~1));
    if (body.length % 2 !== 0) {
      const p = positionOf(text, text.length);
      throw positionError(MALFORMED, p.line, p.column, 'UTF-16LE text ends in the middle of a character (odd number of bytes)');
    }
    return { text, encoding, bom: true };
  }
  if (encoding === 'utf-8') {
    const body = hasUtf8Bom ? bytes.subarray(3) : bytes;
    const text = decodeUtf8OrNull(body);
    if (text === null) {
      const at = invalidUtf8At(body);
      const before = decodeUtf8OrNull(body.subarray(0, at)) ?? '';
      const p = positionOf(before, before.length);
      throw positionError(MALFORMED, p.line, p.column, `invalid UTF-8 byte 0x${body[at]!.toString(16).padStart(2, '0')}`);
    }
    return { text, encoding, bom: hasUtf8Bom };
  }
  return { text: decodeCp1252(bytes), encoding, bom: false };
}

interface Limits {
  maxFileBytes: number;
  maxLineChars: number;
  maxValueBytes: number;
}

/** A growable byte buffer that refuses to pass a limit. */
class ByteSink {
  buf = new Uint8Array(64);
  length = 0;
  constructor(readonly limit: number) {}
  push(b: number): boolean {
    if (this.length >= this.limit) return false;
    if (this.length === this.buf.length) {
      const next = new Uint8Array(Math.min(this.buf.length * 2, Math.max(this.limit, 64)));
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.length++] = b;
    return true;
  }
  bytes(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

const HEX_END = 0;
const HEX_CONTINUE = 1;

class RegParser {
  private pos = 0;
  private done = false;
  private line = 0;
  private start = 0; // first char of the current line
  private end = 0; // one past its last char (before the line break)
  private nextCr = -1;
  private nextLf = -1;
  private version: RegFileVersion = 'v5';

  constructor(
    private readonly text: string,
    private readonly encoding: RegFileEncoding,
    private readonly bom: boolean,
    private readonly limits: Limits,
    private readonly onlyRoot: RegRootKey | undefined = undefined,
  ) {}

  private fail(at: number, message: string, code: ErrorCode = MALFORMED, extra: Record<string, unknown> = {}): never {
    throw positionError(code, this.line, at - this.start + 1, message, extra);
  }

  /** Advances to the next line (CRLF, CR or LF ends one); false at the end of the text. */
  private nextLine(): boolean {
    if (this.done) return false;
    const t = this.text;
    const from = this.pos;
    if (this.nextCr !== -2 && this.nextCr < from) this.nextCr = t.indexOf('\r', from);
    if (this.nextLf !== -2 && this.nextLf < from) this.nextLf = t.indexOf('\n', from);
    if (this.nextCr === -1) this.nextCr = -2; // none left: never search again
    if (this.nextLf === -1) this.nextLf = -2;
    const cr = this.nextCr < 0 ? Infinity : this.nextCr;
    const lf = this.nextLf < 0 ? Infinity : this.nextLf;
    const brk = Math.min(cr, lf);
    this.line++;
    this.start = from;
    if (brk === Infinity) {
      this.end = t.length;
      this.done = true;
    } else {
      this.end = brk;
      this.pos = brk + (brk === cr && lf === cr + 1 ? 2 : 1);
      if (this.pos >= t.length) this.done = true;
    }
    if (this.end - this.start > this.limits.maxLineChars) {
      this.fail(this.start + this.limits.maxLineChars, `line longer than ${this.limits.maxLineChars} characters`, 'PAYLOAD_TOO_LARGE', { limit: this.limits.maxLineChars });
    }
    return true;
  }

  private skipBlanks(i: number): number {
    const t = this.text;
    while (i < this.end) {
      const c = t.charCodeAt(i);
      if (c !== SPACE && c !== TAB) break;
      i++;
    }
    return i;
  }

  /** After a value or key: blanks, then a `;` comment or the end of the line. */
  private expectLineEnd(i: number, what: string): void {
    const j = this.skipBlanks(i);
    if (j < this.end && this.text.charCodeAt(j) !== SEMI) this.fail(j, `unexpected text after ${what} (only a ';' comment may follow)`);
  }

  /** Parses the whole text; each section goes to `onSection` once its last value line is read. */
  parse(onSection: (s: RegSection) => void): { version: RegFileVersion; encoding: RegFileEncoding; bom: boolean } {
    const nul = this.text.indexOf('\0');
    if (nul >= 0) {
      const p = positionOf(this.text, nul);
      const hint = this.encoding !== 'utf-16le' && nul <= 1 ? ' (UTF-16 text without its byte-order mark FF FE?)' : '';
      throw positionError(MALFORMED, p.line, p.column, `NUL character in the text${hint}`);
    }
    this.nextLine();
    this.header();
    let current: RegSection | null = null;
    while (this.nextLine()) {
      const i = this.skipBlanks(this.start);
      if (i === this.end) continue;
      const c = this.text.charCodeAt(i);
      if (c === SEMI) continue;
      if (c === LBRACKET) {
        if (current) onSection(current);
        current = this.keyLine(i);
      } else if (c === AT || c === QUOTE) {
        if (!current) this.fail(i, 'a value line must come after a key line such as [HKEY_CURRENT_USER\\Software]');
        if (current.kind === 'delete-key') this.fail(i, 'a value line cannot follow a key deletion [-...] (regedit ignores it)');
        this.valueLine(i, current);
      } else {
        this.fail(i, `expected '[', '@', '"' or ';' at the start of a line`);
      }
    }
    if (current) onSection(current);
    return { version: this.version, encoding: this.encoding, bom: this.bom };
  }

  private header(): void {
    const i = this.skipBlanks(this.start);
    const rest = this.text.slice(i, this.end);
    if (rest === HEADER_V5) this.version = 'v5';
    else if (rest === HEADER_REGEDIT4) this.version = 'regedit4';
    else if (rest.startsWith('REGEDIT')) this.fail(i, `unsupported header '${rest.slice(0, 40)}' (regedit reads it but imports nothing); expected '${HEADER_V5}' or '${HEADER_REGEDIT4}'`);
    else this.fail(i, `not a registry file: expected '${HEADER_V5}' or '${HEADER_REGEDIT4}' on the first line`);
  }

  private keyLine(open: number): RegSection {
    const t = this.text;
    let i = open + 1;
    let deleted = false;
    if (t.charCodeAt(i) === MINUS) {
      deleted = true;
      i++;
    }
    const c = t.charCodeAt(i);
    if (i < this.end && (c === SPACE || c === TAB)) this.fail(i, `the key path must follow '${deleted ? '[-' : '['}' directly (regedit ignores the line otherwise)`);
    const close = t.lastIndexOf(']', this.end - 1);
    if (close < i) this.fail(this.end, "expected ']' to close the key path");
    const path = t.slice(i, close);
    const problem = keyPathProblem(path);
    if (problem) this.fail(i + problem.offset, problem.message);
    if (deleted && !path.includes('\\')) this.fail(i, 'a root key cannot be deleted');
    const root = rootKeyOf(path);
    if (this.onlyRoot && root !== this.onlyRoot) {
      this.fail(i, `key ${root} is outside ${this.onlyRoot}: a persona holds the user's own registry (${this.onlyRoot}) alone; ` +
        `remove the sections under ${root} from the file and run the command again`, 'REGISTRY_OUTSIDE_HKCU', { root });
    }
    this.expectLineEnd(close + 1, "the key's ']'");
    return deleted ? ({ kind: 'delete-key', path } satisfies RegKeyDeletion) : ({ kind: 'key', path, values: [] } satisfies RegKeySection);
  }

  /** A quoted string from just after its opening quote: its unescaped text and the index past its closing quote. */
  private quoted(open: number, what: string): { value: string; next: number } {
    const t = this.text;
    let i = open + 1;
    let seg = i;
    let out = '';
    while (i < this.end) {
      const c = t.charCodeAt(i);
      if (c === QUOTE) return { value: out + t.slice(seg, i), next: i + 1 };
      if (c === BACKSLASH) {
        out += t.slice(seg, i);
        if (i + 1 >= this.end) this.fail(i, `a backslash at the end of the line leaves the ${what} unterminated (a string cannot span lines)`);
        const e = t[i + 1]!;
        if (e === '\\' || e === '"') out += e;
        else if (e === 'n') out += '\n';
        else if (e === 'r') out += '\r';
        else if (e === '0') this.fail(i, `'\\0' is not allowed in a ${what} (regedit refuses the line)`);
        else this.fail(i, `unknown escape '\\${e}' in a ${what}: write '\\\\' for a backslash (regedit would drop the backslash)`);
        i += 2;
        seg = i;
        continue;
      }
      i++;
    }
    return this.fail(open, `the ${what} has no closing quote`);
  }

  private valueLine(first: number, section: RegKeySection): void {
    const t = this.text;
    let name: string | null;
    let i: number;
    if (t.charCodeAt(first) === AT) {
      name = null;
      i = first + 1;
    } else {
      const q = this.quoted(first, 'value name');
      const problem = valueNameProblem(q.value);
      if (problem) this.fail(first + 1, problem.message);
      name = q.value === '' ? null : q.value;
      i = q.next;
    }
    i = this.skipBlanks(i);
    if (i >= this.end || t[i] !== '=') this.fail(i, `expected '=' after the value name`);
    i = this.skipBlanks(i + 1);
    if (i >= this.end) this.fail(i, "expected value data after '='");
    const c = t.charCodeAt(i);
    if (c === MINUS) {
      this.expectLineEnd(i + 1, "'=-' (value deletion)");
      section.values.push({ kind: 'delete', name });
      return;
    }
    if (c === QUOTE) {
      const q = this.quoted(i, 'string');
      this.expectLineEnd(q.next, 'the closing quote');
      const data = encodeUtf16le(`${q.value}\0`);
      if (data.length > this.limits.maxValueBytes) this.tooLarge(i);
      section.values.push({ kind: 'set', name, type: REG_SZ, data });
      return;
    }
    if (t.startsWith('dword:', i)) {
      section.values.push({ kind: 'set', name, type: REG_DWORD, data: this.dword(i + 6) });
      return;
    }
    let type: number;
    if (t.startsWith('hex:', i)) {
      type = REG_BINARY;
      i += 4;
    } else if (t.startsWith('hex(', i)) {
      let j = i + 4;
      while (j < this.end && hexValue(t.charCodeAt(j)) >= 0) j++;
      if (j === i + 4) this.fail(j, "expected the type number in hex inside 'hex(...)'");
      if (j - (i + 4) > 8) this.fail(i + 4, 'a type number has at most 8 hex digits');
      if (t[j] !== ')') this.fail(j, "expected ')' after the type number");
      if (t[j + 1] !== ':') this.fail(j + 1, "expected ':' after 'hex(...)'");
      type = parseInt(t.slice(i + 4, j), 16);
      i = j + 2;
    } else {
      this.fail(i, `unknown value data: expected '"', 'dword:', 'hex:', 'hex(N):' or '-'`);
    }
    const dataLine = this.line;
    const dataColumn = i - this.start + 1;
    const sink = new ByteSink(this.limits.maxValueBytes);
    let state = this.hexItems(i, sink, true);
    while (state === HEX_CONTINUE) {
      if (!this.nextLine()) break; // regedit keeps the bytes read so far
      const j = this.skipBlanks(this.start);
      if (j === this.end || t.charCodeAt(j) === SEMI) continue; // blank and comment lines are skipped
      if (hexValue(t.charCodeAt(j)) < 0) this.fail(j, `expected hex bytes continuing the value from line ${dataLine} (its line ended with '\\')`);
      state = this.hexItems(j, sink, false);
    }
    let data = sink.bytes();
    if (isStringType(type) && hexStringsAreAnsi(this.version, this.encoding)) {
      const converted = ansiToData(data, this.encoding);
      if (!converted) throw positionError(MALFORMED, dataLine, dataColumn, `REGEDIT4 string bytes are not valid ${this.encoding}`);
      if (converted.length > this.limits.maxValueBytes) throw positionError('PAYLOAD_TOO_LARGE', dataLine, dataColumn, `value data larger than ${this.limits.maxValueBytes} bytes`, { limit: this.limits.maxValueBytes });
      data = converted;
    }
    section.values.push({ kind: 'set', name, type, data });
  }

  private tooLarge(at: number): never {
    return this.fail(at, `value data larger than ${this.limits.maxValueBytes} bytes`, 'PAYLOAD_TOO_LARGE', { limit: this.limits.maxValueBytes });
  }

  private dword(from: number): Uint8Array {
    const t = this.text;
    const i = this.skipBlanks(from);
    let j = i;
    while (j < this.end && hexValue(t.charCodeAt(j)) >= 0) j++;
    if (j === i) this.fail(i, "expected 1 to 8 hex digits after 'dword:'");
    if (j - i > 8) this.fail(i, 'a dword has at most 8 hex digits');
    this.expectLineEnd(j, 'the dword');
    const out = new Uint8Array(4);
    new DataView(out.buffer).setUint32(0, parseInt(t.slice(i, j), 16), true);
    return out;
  }

  /**
   * Comma-separated bytes (one or two hex digits each) from `i` to the end of the line. A trailing
   * comma may be followed by '\' (the data goes on on the next line); a ';' comment may end the line.
   */
  private hexItems(i: number, sink: ByteSink, atStart: boolean): number {
    const t = this.text;
    let mayContinue = atStart; // right after "hex:", or after a comma
    if (atStart) i = this.skipBlanks(i);
    for (;;) {
      if (i >= this.end) return HEX_END;
      const c = t.charCodeAt(i);
      const h = hexValue(c);
      if (h >= 0) {
        let b = h;
        const h2 = hexValue(t.charCodeAt(i + 1));
        let j = i + 1;
        if (j < this.end && h2 >= 0) {
          b = b * 16 + h2;
          j++;
          if (j < this.end && hexValue(t.charCodeAt(j)) >= 0) this.fail(i, 'a byte has at most 2 hex digits');
        }
        if (!sink.push(b)) this.tooLarge(i);
        if (j < this.end && t.charCodeAt(j) === COMMA) {
          i = this.skipBlanks(j + 1);
          mayContinue = true;
          continue;
        }
        const k = this.skipBlanks(j);
        if (k >= this.end || t.charCodeAt(k) === SEMI) return HEX_END;
        if (t.charCodeAt(k) === BACKSLASH) this.fail(k, "a line-continuation '\\' must follow a comma");
        return this.fail(k, "expected ',' between bytes");
      }
      if (c === SEMI) return HEX_END;
      if (c === BACKSLASH && mayContinue) {
        this.expectLineEnd(i + 1, "the line-continuation '\\'");
        return HEX_CONTINUE;
      }
      return this.fail(i, c === COMMA ? 'expected a hex byte before the comma' : 'expected a hex byte');
    }
  }
}

/** Parses a .reg file (regedit's v5 or REGEDIT4 format). Throws a CarryonError naming line and column. */
export function decodeRegFile(bytes: Uint8Array, options: RegDecodeOptions = {}): RegistryFile {
  const sections: RegSection[] = [];
  return { ...decodeRegSections(bytes, (s) => sections.push(s), options), sections };
}

/**
 * decodeRegFile one section at a time: `onSection` gets each section, in file order, as soon as it is
 * complete, so a large file never has all its values in memory at once (a 100,000-key registry's
 * value objects took ~200 MB). A section passed on is not used again by the parser. Nothing is passed
 * on past an error, but sections before it have been.
 */
export function decodeRegSections(bytes: Uint8Array, onSection: (s: RegSection) => void, options: RegDecodeOptions = {}): { version: RegFileVersion; encoding: RegFileEncoding; bom: boolean } {
  const limits: Limits = {
    maxFileBytes: options.maxFileBytes ?? REG_MAX_FILE_BYTES,
    maxLineChars: options.maxLineChars ?? REG_MAX_LINE_CHARS,
    maxValueBytes: options.maxValueBytes ?? REG_MAX_VALUE_BYTES,
  };
  if (bytes.length > limits.maxFileBytes) {
    throw new CarryonError('PAYLOAD_TOO_LARGE', `a .reg file of ${bytes.length} bytes is larger than the ${limits.maxFileBytes} allowed`, { size: bytes.length, limit: limits.maxFileBytes });
  }
  const { text, encoding, bom } = decodeText(bytes, options.encoding);
  return new RegParser(text, encoding, bom, limits, options.onlyRoot).parse(onSection);
}
