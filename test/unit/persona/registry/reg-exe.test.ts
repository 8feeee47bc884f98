// The file `reg export HKCU FILE /y` writes on Windows (the logoff script's output), byte for byte as
// reg.exe lays it out: UTF-16LE with BOM, CRLF, the v5 header, the root key first, wrapped hex.
// The fixture is written line by line by test/fixtures/reg-exe/make-hkcu-export.mjs, not by our encoder.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyToRegistry, decodeRegFile, decodeRegMultiSz, decodeRegQword, decodeRegSz, encodeRegFile, Registry, REG_EXPAND_SZ, REG_NONE } from '../../../../src/index.js';
import { ROOT } from '../../../e2e/harness.js';

const FIXTURE = path.join(ROOT, 'test/fixtures/reg-exe/hkcu-export.reg');

describe("reg.exe's HKCU export", () => {
  const bytes = readFileSync(FIXTURE);

  it('is UTF-16LE with a BOM and CRLF, and decodes under HKEY_CURRENT_USER only', () => {
    expect([...bytes.subarray(0, 2)]).toEqual([0xff, 0xfe]);
    expect(bytes.toString('utf16le', 2).startsWith('Windows Registry Editor Version 5.00\r\n\r\n[HKEY_CURRENT_USER]\r\n')).toBe(true);
    const file = decodeRegFile(bytes, { onlyRoot: 'HKEY_CURRENT_USER' });
    expect(file).toMatchObject({ version: 'v5', encoding: 'utf-16le', bom: true });
    const reg = applyToRegistry(new Registry(), file);
    const K = 'HKEY_CURRENT_USER\\Software\\Vendor\\Editor';
    expect(decodeRegSz(reg.getValue('HKEY_CURRENT_USER\\Control Panel\\Desktop', 'Wallpaper')!.data)).toBe('C:\\Users\\alice\\Pictures\\Café "summer".jpg');
    expect(reg.getValue('HKEY_CURRENT_USER\\Environment', 'Path')!.type).toBe(REG_EXPAND_SZ);
    expect(decodeRegSz(reg.getValue('HKEY_CURRENT_USER\\Environment', 'Path')!.data)).toBe('%USERPROFILE%\\AppData\\Local\\Microsoft\\WindowsApps;');
    expect(decodeRegMultiSz(reg.getValue(K, 'Recent')!.data)).toEqual(['C:\\notes.txt', 'D:\\projets\\résumé.docx']);
    expect(decodeRegQword(reg.getValue(K, 'Installed')!.data)).toBe(0x019db1ded53e8000n);
    expect(reg.getValue(K, 'Nothing')).toMatchObject({ type: REG_NONE, data: new Uint8Array(0) });
    expect(decodeRegSz(reg.getValue(K, null)!.data)).toBe('default value');
    expect(decodeRegSz(reg.getValue(`${K}\\日本語`, '名前')!.data)).toBe('値');
  });

  it('our encoder writes the same bytes back', () => {
    expect(Buffer.from(encodeRegFile(decodeRegFile(bytes))).equals(bytes)).toBe(true);
  });
});
