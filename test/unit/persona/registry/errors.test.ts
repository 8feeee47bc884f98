// Every malformed .reg input is refused with a CarryonError naming its line and column (1-based,
// in UTF-16 code units), both in the message and in data; oversized input is PAYLOAD_TOO_LARGE.
import { describe, expect, it } from 'vitest';
import { CarryonError, decodeRegFile, REG_MAX_VALUE_BYTES, type RegDecodeOptions } from '../../../../src/index.js';
import { latin1, utf16WithBom } from './fixtures.js';

const KEY = 'HKEY_CURRENT_USER\\Software\\Test';

function v5(body: string, head = `[${KEY}]\r\n`): Buffer {
  return utf16WithBom(`Windows Registry Editor Version 5.00\r\n\r\n${head}${body}`);
}

function failure(buf: Uint8Array, options?: RegDecodeOptions): CarryonError {
  try {
    decodeRegFile(buf, options);
  } catch (err) {
    expect(err).toBeInstanceOf(CarryonError);
    return err as CarryonError;
  }
  throw new Error('expected decodeRegFile to fail');
}

/** Asserts the failure's code, position (message and data) and message text. */
function expectFailure(buf: Uint8Array, line: number, column: number, message: string | RegExp, code = 'BAD_REQUEST', options?: RegDecodeOptions): void {
  const e = failure(buf, options);
  expect(e.code).toBe(code);
  expect(e.data).toMatchObject({ line, column });
  expect(e.message.startsWith(`line ${line}, column ${column}: `)).toBe(true);
  expect(e.message.slice(`line ${line}, column ${column}: `.length)).toMatch(message);
}

describe('decodeRegFile: malformed value lines', () => {
  const cases: Array<[string, string, number, number, string | RegExp]> = [
    ['no = after the name', '"a" "b"\r\n', 4, 5, "expected '=' after the value name"],
    ['no data after =', '"a"=\r\n', 4, 5, "expected value data after '='"],
    ['an unknown data type', '"a"=str:"x"\r\n', 4, 5, `unknown value data: expected '"', 'dword:', 'hex:', 'hex(N):' or '-'`],
    ['upper-case HEX', '"a"=HEX:01\r\n', 4, 5, /^unknown value data/],
    ['a name without its closing quote', '"abc=1\r\n', 4, 1, 'the value name has no closing quote'],
    ['a string without its closing quote', '"a"="abc\r\n', 4, 5, 'the string has no closing quote'],
    ['text after a string', '"a"="x" y\r\n', 4, 9, 'unexpected text after the closing quote (only a \';\' comment may follow)'],
    ['a # comment after a string', '"a"="x" #c\r\n', 4, 9, /^unexpected text after the closing quote/],
    ['a quote inside a string', '"a"="foo"bar"\r\n', 4, 10, /^unexpected text after the closing quote/],
    ['text after =-', '"a"=-"x"\r\n', 4, 6, /^unexpected text after '=-' \(value deletion\)/],
    ['an unknown escape', '"a"="C:\\Temp"\r\n', 4, 8, "unknown escape '\\T' in a string: write '\\\\' for a backslash (regedit would drop the backslash)"],
    ['an escaped NUL', '"a"="x\\0"\r\n', 4, 7, "'\\0' is not allowed in a string (regedit refuses the line)"],
    ['an unknown escape in a name', '"a\\qb"="x"\r\n', 4, 3, /^unknown escape '\\q' in a value name/],
    ['a backslash ending the line inside a string', '"a"="x\\\r\n', 4, 7, /^a backslash at the end of the line leaves the string unterminated/],
    ['a dword with 9 digits', '"a"=dword:123456789\r\n', 4, 11, 'a dword has at most 8 hex digits'],
    ['an empty dword', '"a"=dword:\r\n', 4, 11, "expected 1 to 8 hex digits after 'dword:'"],
    ['a dword with a 0x prefix', '"a"=dword:0x12\r\n', 4, 12, /^unexpected text after the dword/],
    ['a dword with garbage', '"a"=dword:12g\r\n', 4, 13, /^unexpected text after the dword/],
    ['a byte with 3 digits', '"a"=hex:01,100\r\n', 4, 12, 'a byte has at most 2 hex digits'],
    ['two commas', '"a"=hex:01,,02\r\n', 4, 12, 'expected a hex byte before the comma'],
    ['a leading comma', '"a"=hex:,01\r\n', 4, 9, 'expected a hex byte before the comma'],
    ['bytes without a comma', '"a"=hex:01 02\r\n', 4, 12, "expected ',' between bytes"],
    ['a non-hex byte', '"a"=hex:01,zz\r\n', 4, 12, 'expected a hex byte'],
    ['a backslash without a comma', '"a"=hex:01\\\r\n  02\r\n', 4, 11, "a line-continuation '\\' must follow a comma"],
    ['text after the backslash', '"a"=hex:01,\\ 02\r\n', 4, 14, /^unexpected text after the line-continuation/],
    ['a continued line starting with a comma', '"a"=hex:01,\\\r\n  ,02\r\n', 5, 3, "expected hex bytes continuing the value from line 4 (its line ended with '\\')"],
    ['a # comment inside continued data', '"a"=hex:01,\\\r\n  #c\r\n  02\r\n', 5, 3, /^expected hex bytes continuing the value from line 4/],
    ['a new value where the data goes on', '"a"=hex:01,\\\r\n"b"="x"\r\n', 5, 1, /^expected hex bytes continuing/],
    ['a lone backslash line', '"a"=hex:01,\\\r\n\\\r\n  02\r\n', 5, 1, /^expected hex bytes continuing/],
    ['hex(0x2)', '"a"=hex(0x2):01\r\n', 4, 10, "expected ')' after the type number"],
    ['hex()', '"a"=hex():01\r\n', 4, 9, "expected the type number in hex inside 'hex(...)'"],
    ['hex(2) without :', '"a"=hex(2)01\r\n', 4, 11, "expected ':' after 'hex(...)'"],
    ['a type number over 32 bits', '"a"=hex(100000000):01\r\n', 4, 9, 'a type number has at most 8 hex digits'],
    ['@ followed by text', '@x="a"\r\n', 4, 2, "expected '=' after the value name"],
  ];
  for (const [what, body, line, column, message] of cases) {
    it(`refuses ${what}`, () => expectFailure(v5(body), line, column, message));
  }

  it('refuses a value name longer than Windows allows', () => {
    expectFailure(v5(`"${'n'.repeat(16384)}"="x"\r\n`), 4, 2, 'a value name may have at most 16383 characters');
  });
});

describe('decodeRegFile: malformed key lines', () => {
  const cases: Array<[string, string, number, string | RegExp]> = [
    ['an abbreviated root', '[HKCU\\Software]', 2, "regedit does not accept the abbreviation 'HKCU' in .reg files; write HKEY_CURRENT_USER"],
    ['HKLM', '[-HKLM\\Software\\X]', 3, /abbreviation 'HKLM'.*HKEY_LOCAL_MACHINE/],
    ['an unknown root', '[HKEY_NOPE\\x]', 2, /^unknown root key 'HKEY_NOPE'; expected one of HKEY_LOCAL_MACHINE/],
    ['HKEY_DYN_DATA', '[HKEY_DYN_DATA\\x]', 2, /^unknown root key 'HKEY_DYN_DATA'/],
    ['an empty key name', '[HKEY_CURRENT_USER\\a\\\\b]', 21, 'empty key name between two backslashes'],
    ['a trailing backslash', '[HKEY_CURRENT_USER\\a\\]', 21, 'a key path must not end with a backslash'],
    ['a missing ]', '[HKEY_CURRENT_USER\\a', 21, "expected ']' to close the key path"],
    ['a blank after [', '[ HKEY_CURRENT_USER\\a]', 2, "the key path must follow '[' directly (regedit ignores the line otherwise)"],
    ['a blank after [-', '[- HKEY_CURRENT_USER\\a]', 3, "the key path must follow '[-' directly (regedit ignores the line otherwise)"],
    ['an empty path', '[]', 2, 'expected a root key such as HKEY_CURRENT_USER'],
    ['the deletion of a root key', '[-HKEY_CURRENT_USER]', 3, 'a root key cannot be deleted'],
    ['text after ]', '[HKEY_CURRENT_USER\\a] x', 23, /^unexpected text after the key's '\]'/],
    ['a key name over 255 characters', `[HKEY_CURRENT_USER\\${'k'.repeat(256)}]`, 20, 'a key name may have at most 255 characters'],
  ];
  for (const [what, keyLine, column, message] of cases) {
    it(`refuses ${what}`, () => expectFailure(v5('', `${keyLine}\r\n`), 3, column, message));
  }

  it('refuses a key deeper than 512 levels', () => {
    expectFailure(v5('', `[HKEY_CURRENT_USER${'\\k'.repeat(513)}]\r\n`), 3, 2, 'a key path may have at most 512 levels below the root');
  });
});

describe('decodeRegFile: malformed structure', () => {
  it('refuses a value before any key', () => {
    expectFailure(utf16WithBom('Windows Registry Editor Version 5.00\r\n\r\n"a"="b"\r\n'), 3, 1, /^a value line must come after a key line/);
  });

  it('refuses a value after a key deletion (regedit ignores it)', () => {
    expectFailure(v5('"a"="b"\r\n', `[-${KEY}]\r\n`), 4, 1, 'a value line cannot follow a key deletion [-...] (regedit ignores it)');
  });

  it('refuses a line that is none of key, value or comment', () => {
    expectFailure(v5('  garbage\r\n'), 4, 3, `expected '[', '@', '"' or ';' at the start of a line`);
    expectFailure(v5('#comment\r\n'), 4, 1, `expected '[', '@', '"' or ';' at the start of a line`);
  });

  it('refuses unknown, fuzzy and empty headers', () => {
    expectFailure(latin1('Windows Registry Editor Version 4.00\r\n'), 1, 1, /^not a registry file: expected 'Windows Registry Editor Version 5.00' or 'REGEDIT4'/);
    expectFailure(latin1('regedit4\r\n'), 1, 1, /^not a registry file/);
    expectFailure(latin1('  REGEDIT5\r\n'), 1, 3, /^unsupported header 'REGEDIT5' \(regedit reads it but imports nothing\)/);
    expectFailure(latin1('REGEDIT4 \r\n'), 1, 1, /^unsupported header/);
    expectFailure(latin1('REGEDIT\r\n'), 1, 1, /^unsupported header/);
    expectFailure(new Uint8Array(0), 1, 1, /^not a registry file/);
    expectFailure(latin1('\r\nREGEDIT4\r\n'), 1, 1, /^not a registry file/);
  });
});

describe('decodeRegFile: bad encodings', () => {
  it('refuses UTF-16 without its BOM, with a hint', () => {
    expectFailure(Buffer.from('Windows Registry Editor Version 5.00\r\n', 'utf16le'), 1, 2, 'NUL character in the text (UTF-16 text without its byte-order mark FF FE?)');
  });

  it('refuses big-endian UTF-16', () => {
    expectFailure(Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from('REGEDIT4', 'utf16le').swap16()]), 1, 1, /^big-endian UTF-16 is not a \.reg encoding/);
  });

  it('refuses UTF-16LE with an odd number of bytes', () => {
    expectFailure(Buffer.concat([utf16WithBom('REGEDIT4\r\nab'), Buffer.from([0x41])]), 2, 3, 'UTF-16LE text ends in the middle of a character (odd number of bytes)');
  });

  it('refuses invalid UTF-8 after a UTF-8 BOM', () => {
    expectFailure(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('REGEDIT4\r\n"\u00e9'), Buffer.from([0xc3, 0x28])]), 2, 3, 'invalid UTF-8 byte 0xc3');
  });

  it('refuses being read as UTF-16LE without a BOM', () => {
    expectFailure(latin1('REGEDIT4\r\n'), 1, 1, /^UTF-16LE text must start with the byte-order mark FF FE/, 'BAD_REQUEST', { encoding: 'utf-16le' });
  });

  it('refuses a NUL character anywhere', () => {
    expectFailure(v5('"a"="x\0y"\r\n'), 4, 7, 'NUL character in the text');
  });

  it('refuses REGEDIT4 string bytes that are not text in the file code page', () => {
    expectFailure(latin1(`REGEDIT4\r\n[${KEY}]\r\n"e"=hex(2):e9,00\r\n`), 3, 12, 'REGEDIT4 string bytes are not valid utf-8', 'BAD_REQUEST', { encoding: 'utf-8' });
  });
});

describe('decodeRegFile: size limits', () => {
  it('refuses a value over the limit at the first byte too many, and accepts one at the limit', () => {
    expect(() => decodeRegFile(v5('"a"=hex:01,02,03,04\r\n'), { maxValueBytes: 4 })).not.toThrow();
    expectFailure(v5('"a"=hex:01,02,\\\r\n  03,04,05\r\n'), 5, 9, 'value data larger than 4 bytes', 'PAYLOAD_TOO_LARGE', { maxValueBytes: 4 });
    expectFailure(v5('"a"="abcd"\r\n'), 4, 5, 'value data larger than 4 bytes', 'PAYLOAD_TOO_LARGE', { maxValueBytes: 4 });
  });

  it('refuses a REGEDIT4 string that outgrows the limit once converted to UTF-16LE', () => {
    expectFailure(latin1(`REGEDIT4\r\n[${KEY}]\r\n"e"=hex(2):41,42,43\r\n`), 3, 12, 'value data larger than 4 bytes', 'PAYLOAD_TOO_LARGE', { maxValueBytes: 4, encoding: 'windows-1252' });
  });

  it('refuses a value over 16 MiB by default', () => {
    expect(REG_MAX_VALUE_BYTES).toBe(16 * 1024 * 1024);
    // 16 MiB + 1 bytes as continued lines of 25 bytes, in a one-byte-a-character REGEDIT4 file.
    const line = Buffer.from(`  ${'ab,'.repeat(25)}\\\r\n`, 'latin1');
    const lines = Math.ceil((REG_MAX_VALUE_BYTES + 1) / 25);
    const buf = Buffer.concat([latin1(`REGEDIT4\r\n[${KEY}]\r\n"big"=hex:\\\r\n`), Buffer.alloc(line.length * lines, line)]);
    const byteIndex = REG_MAX_VALUE_BYTES % 25; // the first byte too many, on its line
    expectFailure(buf, 4 + Math.floor(REG_MAX_VALUE_BYTES / 25), 3 + byteIndex * 3, `value data larger than ${REG_MAX_VALUE_BYTES} bytes`, 'PAYLOAD_TOO_LARGE');
  });

  it('refuses a line over the limit, naming the first column too many', () => {
    expect(() => decodeRegFile(v5(`"a"="${'x'.repeat(35)}"\r\n`), { maxLineChars: 41 })).not.toThrow();
    expectFailure(v5(`"a"="${'x'.repeat(36)}"\r\n`), 4, 42, 'line longer than 41 characters', 'PAYLOAD_TOO_LARGE', { maxLineChars: 41 });
  });

  it('refuses a file over the limit before reading it', () => {
    const e = failure(v5(''), { maxFileBytes: 10 });
    expect(e.code).toBe('PAYLOAD_TOO_LARGE');
    expect(e.data).toMatchObject({ limit: 10 });
  });
});
