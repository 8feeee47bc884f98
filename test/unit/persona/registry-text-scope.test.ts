// The registry scope on canonical text (src/persona/registry-text-scope.ts) against the Registry-model
// functions it replaces on the hot paths (registry/scope.ts): filtering by a scope gives the same text
// and the same dropped keys, the changes between two registries are the same .reg sections, and
// joining the inside and the outside of a scope gives the whole registry back.
import { describe, expect, it } from 'vitest';
import { generatedRegistryText, NOISE_KEY_PATHS } from '../../../scripts/fixtures/registry.js';
import {
  applyRegFileToText,
  canonicalRegistryText,
  DEFAULT_REGISTRY_SCOPE,
  exportRegistry,
  filterRegistry,
  filterRegistryText,
  joinRegistryTexts,
  Registry,
  registryChanges,
  registryChangesFile,
  registryChangesText,
  registryFromText,
  ScopeFilter,
  selectKeys,
} from '../../../src/persona/index.js';

const canonical = (reg: Registry): string => (reg.size === 0 ? '' : Buffer.from(exportRegistry(reg, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8'));
const text = (keys: number, seed: number): string => canonicalRegistryText(Buffer.from(generatedRegistryText(keys, seed, true), 'utf8'));
const utf8 = (lines: string[]): Buffer => Buffer.from(['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n'), 'utf8');
const SCOPES = [
  DEFAULT_REGISTRY_SCOPE,
  { include: ['Software\\Contoso', 'Software\\Microsoft\\**\\Group1*'], exclude: ['Software\\**\\Item1?'] },
  { include: null, exclude: [] },
];

describe('registry scope on canonical text', () => {
  it('filterRegistryText keeps and drops what filterRegistry does (default scope, include lists, nothing)', () => {
    const t = text(400, 3);
    const reg = registryFromText(t);
    for (const scope of SCOPES) {
      const byModel = filterRegistry(reg, scope);
      const byText = filterRegistryText(t, scope);
      expect(byText.text).toBe(canonical(byModel.kept));
      expect(byText.dropped.map((d) => [d.path, d.reason, d.values.length])).toEqual(byModel.dropped.map((d) => [d.path, d.reason, d.values]));
    }
    // the default scope drops exactly the keys the fixture adds as noise
    expect(filterRegistryText(t, DEFAULT_REGISTRY_SCOPE).dropped.map((d) => d.path).sort()).toEqual([...NOISE_KEY_PATHS].sort());
    // a registry wholly inside its scope comes back as the same string
    const inside = filterRegistryText(t, DEFAULT_REGISTRY_SCOPE).text;
    expect(filterRegistryText(inside, DEFAULT_REGISTRY_SCOPE).text).toBe(inside);
    expect(filterRegistryText(inside, DEFAULT_REGISTRY_SCOPE).dropped).toEqual([]);
  });

  it('joins the inside and the outside of a scope back into the whole registry', () => {
    const t = text(300, 5);
    for (const scope of SCOPES) {
      const f = new ScopeFilter(scope);
      expect(joinRegistryTexts(selectKeys(t, (k) => f.has(k.path)), selectKeys(t, (k) => !f.has(k.path)))).toBe(t);
    }
    expect(joinRegistryTexts('', t)).toBe(t);
    expect(joinRegistryTexts(t, '')).toBe(t);
  });

  it('registryChangesText gives the sections registryChanges gives, and applying them gives the target within scope', () => {
    const from = text(300, 9);
    // the target: values changed, set and deleted, a key deleted, a subtree deleted, a key added, a noise key changed
    const to = applyRegFileToText(from, utf8([
      '[HKEY_CURRENT_USER\\Software\\Contoso\\Office\\Group0\\Item5]', '"New"="x"',
      '[-HKEY_CURRENT_USER\\Software\\Adobe\\Office\\Group0\\Item1]',
      '[-HKEY_CURRENT_USER\\Software\\Google\\Office]',
      '[HKEY_CURRENT_USER\\Software\\Added\\Key]', '"A"=dword:00000001',
      '[HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU]', '"a"="notepad"',
    ]));
    const fromReg = registryFromText(from);
    const toReg = registryFromText(to);
    for (const scope of SCOPES) {
      const byModel = registryChanges(fromReg, toReg, scope);
      const byText = registryChangesFile(from, to, scope);
      // the same sections; deletions come first in both, key sections in key order here
      const norm = (secs: typeof byModel.sections): string[] => secs.map((s) => JSON.stringify(s, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v))).sort();
      expect(norm(byText.sections)).toEqual(norm(byModel.sections));
      const applied = applyRegFileToText(from, Buffer.from(registryChangesText(from, to, scope), 'utf8'));
      const f = new ScopeFilter(scope);
      expect(selectKeys(applied, (k) => f.has(k.path))).toBe(selectKeys(to, (k) => f.has(k.path)));
      // keys outside the scope stay as `from` had them
      expect(selectKeys(applied, (k) => !f.has(k.path) && k.path.includes('\\'))).toBe(selectKeys(from, (k) => !f.has(k.path) && k.path.includes('\\')));
    }
    expect(registryChangesText(from, from, DEFAULT_REGISTRY_SCOPE)).toBe('');
  });

  it('reg import edits skip the sections outside the scope and apply the rest', () => {
    const base = text(50, 2);
    const f = new ScopeFilter(DEFAULT_REGISTRY_SCOPE);
    const skipped: string[] = [];
    const out = applyRegFileToText(base, utf8([
      '[HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RecentDocs]', '"0"=hex:01,02',
      '[HKEY_CURRENT_USER\\Software\\Kept]', '"v"="1"',
    ]), {}, undefined, (s) => {
      if (f.has(s.path)) return true;
      skipped.push(s.path);
      return false;
    });
    expect(skipped).toEqual(['HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RecentDocs']);
    expect(out).toContain('[HKEY_CURRENT_USER\\Software\\Kept]\r\n"v"="1"\r\n');
    expect(out).not.toContain('"0"=hex:01,02');
  });
});
