// registry-scope-bench: what the registry scope costs on a large registry (the server's check on every
// push and check-in that changes the registry, and the laptop's changes file for a Windows guest).
// A generated HKEY_CURRENT_USER of N keys (two values each, under 100 vendors x 50 applications), one
// value changed and one MRU key added on the laptop's side. Prints JSON: the text size, the line scan
// of the key lines (what a commit inside the scope costs), parsing the text into a Registry (what a
// commit that drops a key pays per side), filtering it, and registryChanges against the original.
// Two designs, each in its own process (peak RSS is per process): the Registry model (default) and,
// with --text, canonical text walked key by key (filterRegistryText, registryChangesText; no parse step).
//   npx tsc -b && node dist/scripts/bench/registry-scope-bench.js [--keys 100000] [--text]
import {
  canonicalRegistryText, DEFAULT_REGISTRY_SCOPE, filterRegistryText, registryChangesText, encodeRegDword, encodeRegSz, exportRegistry, filterRegistry, Registry, registryChanges, registryFromText, regKeyLines, REG_DWORD, REG_SZ, ScopeFilter,
} from '../../src/index.js';

function arg(name: string, dflt: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
}

function timed<T>(fn: () => T): { ms: number; value: T } {
  const t = performance.now();
  const value = fn();
  return { ms: Math.round(performance.now() - t), value };
}

const keys = arg('keys', 100_000);
const design = process.argv.includes('--text') ? 'text' : 'model';

/** The registry as canonical text, written line by line (no Registry built): `changed` adds the laptop's two edits. */
function generatedText(changed: boolean): string {
  const lines = ['Windows Registry Editor Version 5.00', ''];
  const ks: Array<[string, string[]]> = [];
  for (let i = 0; i < keys; i++) {
    const count = changed && i === 101 ? 7 : i;
    ks.push([`HKEY_CURRENT_USER\\Software\\Vendor${i % 100}\\App${Math.floor(i / 100) % 50}\\Key${i}`, [`"Count"=dword:${count.toString(16).padStart(8, '0')}`, `"Name"="value ${i}"`]]);
  }
  if (changed) ks.push(['HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU', ['"a"="cmd"']]);
  for (const [k, v] of ks) lines.push(`[${k}]`, ...v, '');
  lines.push('');
  return canonicalRegistryText(Buffer.from(lines.join('\r\n'), 'utf8'));
}

if (design === 'text') {
  // The same work on canonical text, key by key (registry-text-scope.ts): what carryon runs now.
  const from = generatedText(false);
  const text = generatedText(true);
  const filter = new ScopeFilter(DEFAULT_REGISTRY_SCOPE);
  // Generating the two texts has its own peak (arrays of lines): reported apart, so the walk's cost shows.
  const generatedPeakMB = Math.round(process.resourceUsage().maxRSS / 1024);
  (globalThis as { gc?: () => void }).gc?.();
  const heapBefore = process.memoryUsage().heapUsed;
  const scan = timed(() => regKeyLines(text).filter((h) => filter.reason(h.path) !== null).length);
  const filtered = timed(() => filterRegistryText(text, filter));
  const changes = timed(() => registryChangesText(from, text, filter));
  console.log(JSON.stringify({
    design, keys, textBytes: text.length,
    lineScanAndScopeMs: scan.ms, keysOutsideScope: scan.value,
    filterMs: filtered.ms, dropped: filtered.value.dropped.length,
    registryChangesMs: changes.ms, changeBytes: changes.value.length,
    generatedPeakMB, heapGrowthMB: Math.round((process.memoryUsage().heapUsed - heapBefore) / 1e6),
    peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
  }));
  process.exit(0);
}

const reg = new Registry();
for (let i = 0; i < keys; i++) {
  const k = `HKEY_CURRENT_USER\\Software\\Vendor${i % 100}\\App${Math.floor(i / 100) % 50}\\Key${i}`;
  reg.setValue(k, { name: 'Name', type: REG_SZ, data: encodeRegSz(`value ${i}`) });
  reg.setValue(k, { name: 'Count', type: REG_DWORD, data: encodeRegDword(i) });
}
const ours = reg.clone();
ours.setValue('HKEY_CURRENT_USER\\Software\\Vendor1\\App1\\Key101', { name: 'Count', type: REG_DWORD, data: encodeRegDword(7) });
ours.setValue('HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Explorer\\RunMRU', { name: 'a', type: REG_SZ, data: encodeRegSz('cmd') });
const text = Buffer.from(exportRegistry(ours, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
const filter = new ScopeFilter(DEFAULT_REGISTRY_SCOPE);

const scan = timed(() => regKeyLines(text).filter((h) => filter.reason(h.path) !== null).length);
const parse = timed(() => registryFromText(text));
const filtered = timed(() => filterRegistry(parse.value, filter));
const changes = timed(() => registryChanges(reg, ours, filter));
console.log(JSON.stringify({
  design, keys, textBytes: text.length,
  lineScanAndScopeMs: scan.ms, keysOutsideScope: scan.value,
  parseMs: parse.ms, filterMs: filtered.ms, dropped: filtered.value.dropped.length,
  registryChangesMs: changes.ms, changeSections: changes.value.sections.length,
  peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
}));
