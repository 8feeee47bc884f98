// Reading registry.reg back on the laptop (client/persona-engine.ts): an unedited file is the base text
// without parsing; an edited stretch of keys is parsed alone and spliced into the base text; a splice
// that is not in canonical order is caught by the patch walk (the scan then reads the file whole); any
// other file (not UTF-16, not ASCII) is parsed whole. Each way gives the text a whole-file parse gives.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readRegistryText, writeRegistryFile } from '../../../client/persona-engine.js';
import { canonicalRegistryText, CarryonError, makeRegistryPatch } from '../../../src/persona/index.js';
import { regText } from './merge-fixtures.js';

const K = 'HKEY_CURRENT_USER\\Software\\Carryon';
const dir = mkdtempSync(path.join(tmpdir(), 'registry-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base = regText(Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`${K}\\K${String(i).padStart(2, '0')}`, { a: `v${i}`, b: 'same' }])));
const utf16 = (text: string): Buffer => Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);

async function read(bytes: Buffer): Promise<{ text: string; spliced: boolean }> {
  const f = path.join(dir, 'registry.reg');
  writeFileSync(f, bytes);
  return readRegistryText(f, bytes.length, base);
}

describe('readRegistryText', () => {
  it('an unedited file is the base text itself, and writeRegistryFile writes exactly that file', async () => {
    const f = path.join(dir, 'written.reg');
    await writeRegistryFile(f, base);
    const r = await readRegistryText(f, utf16(base).length, base);
    expect(r).toEqual({ text: base, spliced: false });
    expect(await read(utf16(base))).toEqual({ text: base, spliced: false });
  });

  it('an edited stretch of keys is spliced in: the same text as a whole parse', async () => {
    const edited = base.replace('"a"="v17"', '"a"="changed"').replace(`[${K}\\K18]\r\n`, `[${K}\\K18]\r\n"new"=dword:00000001\r\n`);
    const r = await read(utf16(edited));
    expect(r.spliced).toBe(true);
    expect(r.text).toBe(canonicalRegistryText(utf16(edited)));
    expect(makeRegistryPatch(base, r.text).edits.map((e) => e.line)).toEqual(['"a"="changed"', '"new"=dword:00000001']);
  });

  it('a key added out of order: the splice fails the patch walk, and the whole file parses to canonical text', async () => {
    const edited = base.replace(`[${K}\\K20]\r\n`, `[${K}\\A-first]\r\n"x"="1"\r\n\r\n[${K}\\K20]\r\n`);
    const r = await read(utf16(edited));
    expect(r.spliced).toBe(true);
    const err = (() => {
      try {
        makeRegistryPatch(base, r.text);
        return null;
      } catch (e) {
        return e as CarryonError;
      }
    })();
    expect(err?.data.notCanonical).toBe(true);
    const whole = canonicalRegistryText(utf16(edited));
    expect(makeRegistryPatch(base, whole).edits.map((e) => e.line)).toEqual(['"x"="1"']);
  });

  it('a file with non-ASCII text or in UTF-8 is parsed whole', async () => {
    const accented = base.replace('"a"="v3"', '"a"="caf\u00e9"');
    expect(await read(utf16(accented))).toEqual({ text: canonicalRegistryText(utf16(accented)), spliced: false });
    expect(await read(Buffer.from(accented, 'utf8'))).toEqual({ text: accented, spliced: false });
  });
});
