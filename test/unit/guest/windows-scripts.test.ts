// The Windows guest scripts (guest/windows/*.ps1). No PowerShell runs here (Debian ships none), so
// this checks what can be checked without it: plain ASCII (Windows PowerShell 5.1 reads a BOM-less
// file in the ANSI code page), balanced brackets outside strings and comments, and that the file
// names and commands they use are the ones the laptop side writes and reads.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../../e2e/harness.js';

const read = (name: string): string => readFileSync(path.join(ROOT, 'guest/windows', name), 'utf8');

/** The script without <# #> blocks, # comments and quoted strings (PowerShell quoting: '' and `"). */
function code(src: string): string {
  return src
    .replace(/<#[\s\S]*?#>/g, '')
    .replace(/'(?:[^']|'')*'/g, "''")
    .replace(/"(?:[^"`]|`.)*"/g, '""')
    .replace(/#.*$/gm, '');
}

function balanced(src: string): boolean {
  const stack: string[] = [];
  const pairs: Record<string, string> = { ')': '(', '}': '{', ']': '[' };
  for (const c of code(src)) {
    if ('({['.includes(c)) stack.push(c);
    else if (c in pairs && stack.pop() !== pairs[c]) return false;
  }
  return stack.length === 0;
}

describe('Windows guest scripts', () => {
  for (const name of ['carryon-logon.ps1', 'carryon-logoff.ps1']) {
    it(`${name}: ASCII, balanced, strict mode, stops on errors`, () => {
      const src = read(name);
      expect(/^[\x09\x0a\x0d\x20-\x7e]*$/.test(src)).toBe(true);
      expect(balanced(src)).toBe(true);
      expect(src).toContain('Set-StrictMode -Version 3');
      expect(src).toContain("$ErrorActionPreference = 'Stop'");
      expect(src).toContain("[string]$Share = '\\\\10.0.2.4\\qemu'"); // QEMU's smb= share
    });
  }

  it('logoff exports HKCU with reg.exe to registry-logoff.reg in one rename; logon imports registry-changes.reg once', () => {
    const off = read('carryon-logoff.ps1');
    expect(off).toMatch(/& reg\.exe export HKCU \$local \/y/);
    expect(off).toContain("'registry-logoff.reg'");
    expect(off).toMatch(/Move-Item -LiteralPath \$partial/);
    const on = read('carryon-logon.ps1');
    expect(on).toMatch(/& reg\.exe import \$local/);
    expect(on).toContain("'registry-changes.reg'");
    expect(on).toContain("'registry-changes.applied.reg'");
    // the laptop-side commands the scripts' help names are the CLI's
    expect(on).toContain('carryon persona reg export NAME registry-changes.reg --changes-since registry-logoff.reg');
    expect(off).toContain('carryon persona reg import NAME PERSONA_DIR/registry-logoff.reg --replace');
  });

  it('the bracket check itself catches an unbalanced script', () => {
    expect(balanced('if ($a) { "}" }')).toBe(true);
    expect(balanced('if ($a) { $b = @(1, 2 }')).toBe(false);
  });
});
