// A persona's registry scope: HKEY_CURRENT_USER alone (refused with the line otherwise), include and
// exclude key patterns with the default noise list, and the changes between two registries written as
// regedit applies them (sets, "name"=- and [-Key]) within a scope.
import { describe, expect, it } from 'vitest';
import {
  applyToRegistry, decodeRegFile, DEFAULT_REGISTRY_EXCLUDES, DEFAULT_REGISTRY_SCOPE, effectiveExcludes, encodeRegFile, filterRegistry, parseKeyPattern,
  parseKeyPatternList, Registry, registryChanges, ScopeFilter, sniffRegistryInput,
} from '../../../../src/index.js';
import { expectCode } from '../../helpers.js';
import { utf16WithBom } from './fixtures.js';

const v5 = (text: string): Buffer => utf16WithBom(`Windows Registry Editor Version 5.00\r\n\r\n${text}`);
const load = (text: string): Registry => applyToRegistry(new Registry(), decodeRegFile(v5(text)));
const valuesOf = (reg: Registry) => reg.keys().filter((k) => k.values.length > 0);

describe('HKEY_CURRENT_USER only', () => {
  it('refuses a key under another root with its line and REGISTRY_OUTSIDE_HKCU', async () => {
    for (const root of ['HKEY_LOCAL_MACHINE\\SOFTWARE\\Policies\\X', 'HKEY_USERS\\S-1-5-21-1-2-3-1001\\Software', 'HKEY_CLASSES_ROOT\\.txt', 'HKEY_CURRENT_CONFIG\\Software', '-HKEY_LOCAL_MACHINE\\SOFTWARE\\X']) {
      const bytes = v5(`[HKEY_CURRENT_USER\\Software\\A]\r\n"x"=dword:00000001\r\n\r\n[${root}]\r\n`);
      const err = await expectCode(() => decodeRegFile(bytes, { onlyRoot: 'HKEY_CURRENT_USER' }), 'REGISTRY_OUTSIDE_HKCU');
      expect(err.data.line).toBe(6);
      expect(err.message).toMatch(/^line 6, column \d+: key HKEY_[A-Z_]+ is outside HKEY_CURRENT_USER/);
    }
    // without the option the codec still reads every root (old stored versions)
    expect(decodeRegFile(v5('[HKEY_LOCAL_MACHINE\\SOFTWARE\\X]\r\n')).sections).toHaveLength(1);
    expect(decodeRegFile(v5('[HKEY_CURRENT_USER\\Software\\X]\r\n'), { onlyRoot: 'HKEY_CURRENT_USER' }).sections).toHaveLength(1);
  });

  it('the HKCU abbreviation is refused in .reg files as regedit refuses it, and accepted in patterns', async () => {
    await expectCode(() => decodeRegFile(v5('[HKCU\\Software\\X]\r\n'), { onlyRoot: 'HKEY_CURRENT_USER' }), 'BAD_REQUEST');
    expect(parseKeyPattern('HKCU\\Software\\Vendor')).toBe('Software\\Vendor');
    expect(parseKeyPattern('HKEY_CURRENT_USER\\Software\\Vendor')).toBe('Software\\Vendor');
  });
});

describe('key patterns', () => {
  it('checks patterns and refuses other roots, empty names, empty include lists', async () => {
    await expectCode(() => parseKeyPattern('HKLM\\Software'), 'INVALID_ARGUMENT');
    await expectCode(() => parseKeyPattern('HKEY_LOCAL_MACHINE\\Software'), 'INVALID_ARGUMENT');
    await expectCode(() => parseKeyPattern('Software\\\\X'), 'INVALID_ARGUMENT');
    await expectCode(() => parseKeyPattern(''), 'INVALID_ARGUMENT');
    await expectCode(() => parseKeyPattern('Software\\X\0'), 'INVALID_ARGUMENT');
    expect(parseKeyPatternList(['Software\\A', 'software\\a', '@default'], 'exclude')).toEqual(['Software\\A', '@default']);
    expect(effectiveExcludes(['@default', 'Software\\Cache'])).toEqual([...DEFAULT_REGISTRY_EXCLUDES, 'Software\\Cache']);
    expect(effectiveExcludes(null)).toEqual([...DEFAULT_REGISTRY_EXCLUDES]);
  });

  it('matches a key and its subtree, * inside a name, ** across levels, case-insensitively', async () => {
    const f = new ScopeFilter({ include: ['Software\\Vendor', 'Control Panel\\*'], exclude: ['Software\\Vendor\\**\\Cache*', 'software\\vendor\\temp'] });
    expect(f.reason('HKEY_CURRENT_USER\\Software\\Vendor')).toBeNull();
    expect(f.reason('HKEY_CURRENT_USER\\SOFTWARE\\VENDOR\\App\\Settings')).toBeNull();
    expect(f.reason('HKEY_CURRENT_USER\\Software\\VendorX')).toBe('not-included');
    expect(f.reason('HKEY_CURRENT_USER\\Software')).toBe('not-included');
    expect(f.reason('HKEY_CURRENT_USER\\Control Panel\\Desktop\\Colors')).toBeNull();
    expect(f.reason('HKEY_CURRENT_USER\\Control Panel')).toBe('not-included');
    expect(f.reason('HKEY_CURRENT_USER\\Software\\Vendor\\Cache')).toBe('excluded'); // ** matches no level too
    expect(f.reason('HKEY_CURRENT_USER\\Software\\Vendor\\A\\B\\CacheData\\x')).toBe('excluded');
    expect(f.reason('HKEY_CURRENT_USER\\Software\\Vendor\\Temp\\1')).toBe('excluded');
    expect(f.reason('HKEY_LOCAL_MACHINE\\Software\\Vendor')).toBe('root');
  });

  it('the default list leaves out MRU lists, RecentDocs, UserAssist and shell bags, and keeps settings', async () => {
    const f = new ScopeFilter(DEFAULT_REGISTRY_SCOPE);
    const E = 'HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer';
    for (const k of [`${E}\\RecentDocs\\.txt`, `${E}\\RunMRU`, `${E}\\ComDlg32\\OpenSavePidlMRU\\*`, `${E}\\UserAssist\\{GUID}\\Count`,
      'HKEY_CURRENT_USER\\Software\\Microsoft\\Office\\16.0\\Word\\File MRU', 'HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\Shell\\BagMRU\\0',
      'HKEY_CURRENT_USER\\Software\\Classes\\Local Settings\\Software\\Microsoft\\Windows\\Shell\\Bags\\1', 'HKEY_CURRENT_USER\\Volatile Environment']) {
      expect(f.reason(k), k).toBe('excluded');
    }
    for (const k of [`${E}\\Advanced`, 'HKEY_CURRENT_USER\\Control Panel\\Desktop', 'HKEY_CURRENT_USER\\Software\\Vendor\\Editor', 'HKEY_CURRENT_USER\\Environment']) expect(f.reason(k), k).toBeNull();
  });

  it('filterRegistry keeps what is in scope and lists what it left out', async () => {
    const reg = load('[HKEY_CURRENT_USER\\Software\\Vendor]\r\n"a"=dword:00000001\r\n\r\n[HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU]\r\n"a"="cmd"\r\n"MRUList"="a"\r\n\r\n[HKEY_LOCAL_MACHINE\\SOFTWARE\\X]\r\n');
    const r = filterRegistry(reg, DEFAULT_REGISTRY_SCOPE);
    expect(r.kept.keys().map((k) => k.path)).toEqual(['HKEY_CURRENT_USER\\Software\\Vendor']);
    expect(r.dropped).toEqual([
      { path: 'HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU', reason: 'excluded', values: 2 },
      { path: 'HKEY_LOCAL_MACHINE\\SOFTWARE\\X', reason: 'root', values: 0 },
    ]);
  });
});

describe('registryChanges: what a guest applies with regedit', () => {
  const guest = load([
    '[HKEY_CURRENT_USER\\Software\\Vendor]', '"Color"="blue"', '"Size"=dword:00000010', '"Gone"="x"', '',
    '[HKEY_CURRENT_USER\\Software\\Vendor\\Old]', '"a"="1"', '', '[HKEY_CURRENT_USER\\Software\\Vendor\\Old\\Sub]', '"b"="2"', '',
    '[HKEY_CURRENT_USER\\Software\\Vendor\\Keep]', '"k"="1"', '', '[HKEY_CURRENT_USER\\Software\\Vendor\\Keep\\Child]', '"c"="3"', '',
    '[HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU]', '"a"="cmd"', '',
    '[HKEY_CURRENT_USER\\Software\\Unchanged]', '"u"="same"', '', '',
  ].join('\r\n'));
  const persona = load([
    '[HKEY_CURRENT_USER\\Software\\Vendor]', '"Color"="green"', '"Size"=dword:00000010', '"New"=dword:00000001', '',
    '[HKEY_CURRENT_USER\\Software\\Vendor\\Keep\\Child]', '"c"="3"', '',
    '[HKEY_CURRENT_USER\\Software\\Added]', '', '[HKEY_CURRENT_USER\\Software\\Unchanged]', '"u"="same"', '', '',
  ].join('\r\n'));

  it('sets only changed values, deletes values with "name"=- and keys with [-Key], never touches keys outside the scope', async () => {
    const changes = registryChanges(guest, persona, DEFAULT_REGISTRY_SCOPE);
    const out = Buffer.from(encodeRegFile({ ...changes, encoding: 'utf-8', bom: false })).toString('utf8').replaceAll('\r\n', '\n');
    expect(out).toBe([
      'Windows Registry Editor Version 5.00', '',
      '[HKEY_CURRENT_USER\\Software\\Vendor\\Keep]', '"k"=-', '',
      '[-HKEY_CURRENT_USER\\Software\\Vendor\\Old]', '',
      '[HKEY_CURRENT_USER\\Software\\Added]', '',
      '[HKEY_CURRENT_USER\\Software\\Vendor]', '"Color"="green"', '"New"=dword:00000001', '"Gone"=-', '', '',
    ].join('\n'));
    // regedit's import of the changes into what the guest had gives the persona, and keeps the MRU list
    const applied = applyToRegistry(guest.clone(), decodeRegFile(encodeRegFile(changes)));
    // (a key that is only a parent is implicit on one side and named on the other: values are compared)
    expect(valuesOf(filterRegistry(applied, DEFAULT_REGISTRY_SCOPE).kept)).toEqual(valuesOf(persona));
    expect(applied.hasKey('HKEY_CURRENT_USER\\Software\\Added')).toBe(true);
    expect(applied.hasKey('HKEY_CURRENT_USER\\Software\\Vendor\\Old\\Sub')).toBe(false);
    expect(applied.getValue('HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU', 'a')).toBeDefined();
    // nothing to do: an empty change set
    expect(registryChanges(persona, persona).sections).toEqual([]);
  });

  it('does not delete a key whose subkey lies outside the scope: only its values go', async () => {
    const g = load('[HKEY_CURRENT_USER\\Software\\Vendor]\r\n"a"="1"\r\n\r\n[HKEY_CURRENT_USER\\Software\\Vendor\\RunMRU]\r\n"x"="y"\r\n');
    const changes = registryChanges(g, new Registry(), DEFAULT_REGISTRY_SCOPE);
    expect(changes.sections).toEqual([{ kind: 'key', path: 'HKEY_CURRENT_USER\\Software\\Vendor', values: [{ kind: 'delete', name: 'a' }] }]);
  });
});

describe('sniffRegistryInput', () => {
  it('tells a hive from a .reg file and names other files', async () => {
    expect(sniffRegistryInput(Buffer.from('regf\x01\x00\x00\x00', 'latin1'))).toBe('hive');
    expect(sniffRegistryInput(v5('[HKEY_CURRENT_USER\\X]\r\n'))).toBe('reg');
    expect(sniffRegistryInput(Buffer.from('Windows Registry Editor Version 5.00\r\n'))).toBe('reg');
    const cases: Array<[Buffer, RegExp]> = [
      [Buffer.from('PK\x03\x04rest', 'latin1'), /ZIP archive/],
      [Buffer.from('%PDF-1.7', 'latin1'), /PDF/],
      [Buffer.from('reglog\x00\x00', 'latin1'), /transaction log/],
      [Buffer.from('W\0i\0n\0d\0', 'latin1'), /UTF-16LE text without the byte-order mark/],
      [Buffer.from([0x00, 0x01, 0x02, 0x03]), /binary data/],
      [Buffer.alloc(0), /empty file/],
    ];
    for (const [head, why] of cases) {
      const err = await expectCode(() => sniffRegistryInput(head, 'x.bin'), 'REG_FILE_UNSUPPORTED');
      expect(err.message).toMatch(why);
      expect(err.message).toMatch(/^x\.bin is not a \.reg file/);
    }
  });
});
