// The registry scope at the server boundary (server/services/registry-scope.ts): a laptop's registry
// that adds or changes a key outside HKEY_CURRENT_USER is refused with its line; one that carries back
// unchanged a key an old version held (stored before the rule) is accepted, and the key is dropped from
// every side of the merge without being reported as the user's; excluded keys are dropped and reported.
import { describe, expect, it } from 'vitest';
import { keyHeaders, lineOfKey, scopeCommitRegistries } from '../../../server/services/registry-scope.js';
import { DEFAULT_REGISTRY_SCOPE, type PersonaSnapshot } from '../../../src/index.js';
import { expectCode } from '../helpers.js';

const snap = (lines: string[]): PersonaSnapshot => ({ files: [], registry: lines.length === 0 ? '' : ['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n') });
const VENDOR = ['[HKEY_CURRENT_USER\\Software\\Vendor]', '"a"=dword:00000001'];
const LEGACY = ['', '[HKEY_LOCAL_MACHINE\\SOFTWARE\\Old]', '"x"="1"'];

describe('scopeCommitRegistries', () => {
  it('finds key lines by a line scan, with their value counts', () => {
    const text = snap([...VENDOR, '"b"=hex:01,02,\\', '  03', '', '[-HKEY_CURRENT_USER\\Software\\Gone]', '', '  [HKEY_CURRENT_USER\\Software\\Empty]']).registry;
    expect(keyHeaders(text)).toEqual([
      { line: 3, path: 'HKEY_CURRENT_USER\\Software\\Vendor', values: 2 },
      { line: 8, path: 'HKEY_CURRENT_USER\\Software\\Gone', values: 0 },
      { line: 10, path: 'HKEY_CURRENT_USER\\Software\\Empty', values: 0 },
    ]);
    expect(lineOfKey(text, 'hkey_current_user\\software\\EMPTY')).toBe(10);
  });

  it('leaves everything as it is when the laptop sent no registry change, or all keys are in scope', () => {
    const base = snap([...LEGACY.slice(1)]);
    expect(scopeCommitRegistries(base, base, base, DEFAULT_REGISTRY_SCOPE).ours).toBe(base);
    const ours = snap(VENDOR);
    const r = scopeCommitRegistries(snap([]), ours, snap([]), DEFAULT_REGISTRY_SCOPE);
    expect(r.ours).toBe(ours);
    expect(r.dropped).toBeUndefined();
  });

  it('refuses a key outside HKEY_CURRENT_USER the laptop added or changed, naming its line', async () => {
    const base = snap([...VENDOR, ...LEGACY]);
    const added = snap([...VENDOR, '', '[HKEY_USERS\\S-1-5-21-1-2-3-1001\\Software]', '"y"="2"']);
    const err = await expectCode(() => scopeCommitRegistries(snap(VENDOR), added, snap(VENDOR), DEFAULT_REGISTRY_SCOPE), 'REGISTRY_OUTSIDE_HKCU');
    expect(err.data.line).toBe(6);
    expect(err.message).toMatch(/^line 6 of the persona's registry: key \[HKEY_USERS\\S-1-5-21-1-2-3-1001\\Software\] is outside HKEY_CURRENT_USER/);
    // CR-only line ends (the parser accepts them) do not hide a key from the line scan
    const crOnly = { files: [], registry: `Windows Registry Editor Version 5.00\r\r${VENDOR.join('\r')}\r\r  [HKEY_LOCAL_MACHINE\\SOFTWARE\\Evil]\r"Run"="calc.exe"\r` };
    const cr = await expectCode(() => scopeCommitRegistries(snap(VENDOR), crOnly, snap(VENDOR), DEFAULT_REGISTRY_SCOPE), 'REGISTRY_OUTSIDE_HKCU');
    expect(cr.data.line).toBe(6);
    const changed = snap([...VENDOR, '', '[HKEY_LOCAL_MACHINE\\SOFTWARE\\Old]', '"x"="2"']);
    await expectCode(() => scopeCommitRegistries(base, changed, base, DEFAULT_REGISTRY_SCOPE), 'REGISTRY_OUTSIDE_HKCU');
  });

  it('an old version\'s key outside HKEY_CURRENT_USER carried back unchanged is accepted and dropped from every side, not reported', () => {
    const base = snap([...VENDOR, ...LEGACY]);
    const ours = snap(['[HKEY_CURRENT_USER\\Software\\Vendor]', '"a"=dword:00000002', ...LEGACY]);
    const theirs = snap([...VENDOR, '"t"="1"', ...LEGACY]);
    const r = scopeCommitRegistries(base, ours, theirs, DEFAULT_REGISTRY_SCOPE);
    for (const side of [r.base, r.ours, r.theirs]) expect(side.registry).not.toContain('HKEY_LOCAL_MACHINE');
    expect(r.ours.registry).toContain('"a"=dword:00000002');
    expect(r.theirs.registry).toContain('"t"="1"');
    expect(r.dropped).toBeUndefined();
  });

  it('drops excluded keys from the laptop and reports them; an empty key merely outside the include list is not reported', () => {
    const ours = snap([...VENDOR, '', '[HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU]', '"a"="cmd"', '"MRUList"="a"']);
    const r = scopeCommitRegistries(snap([]), ours, snap([]), DEFAULT_REGISTRY_SCOPE);
    expect(r.dropped).toEqual({ count: 1, keys: ['HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU'] });
    expect(r.ours.registry).not.toContain('RunMRU');
    const inc = scopeCommitRegistries(snap([]), snap(['[HKEY_CURRENT_USER\\Software]', '', ...VENDOR, '', '[HKEY_CURRENT_USER\\Console]', '"c"="1"']), snap([]), { include: ['Software\\Vendor'], exclude: [] });
    expect(inc.dropped).toEqual({ count: 1, keys: ['HKEY_CURRENT_USER\\Console'] });
    expect(inc.ours.registry).not.toContain('[HKEY_CURRENT_USER\\Software]');
  });
});
