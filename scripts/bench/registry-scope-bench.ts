// registry-scope-bench: what the registry scope costs on a large registry (the server's check on every
// push and check-in that changes the registry, and the laptop's changes file for a Windows guest).
// A generated HKEY_CURRENT_USER of N keys (two values each, under 100 vendors x 50 applications), one
// value changed and one MRU key added on the laptop's side. Prints JSON: the text size, the line scan
// of the key lines (what a commit inside the scope costs), parsing the text into a Registry (what a
// commit that drops a key pays per side), filtering it, and registryChanges against the original.
//   npx tsc -b && node dist/scripts/bench/registry-scope-bench.js [--keys 100000]
import {
  DEFAULT_REGISTRY_SCOPE, encodeRegDword, encodeRegSz, exportRegistry, filterRegistry, Registry, registryChanges, registryFromText, regKeyLines, REG_DWORD, REG_SZ, ScopeFilter,
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
  keys, textBytes: text.length,
  lineScanAndScopeMs: scan.ms, keysOutsideScope: scan.value,
  parseMs: parse.ms, filterMs: filtered.ms, dropped: filtered.value.dropped.length,
  registryChangesMs: changes.ms, changeSections: changes.value.sections.length,
  peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
}));
