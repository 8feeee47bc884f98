// registry-store-bench: what a server-side commit of a one-value registry change costs in memory under
// two storage designs, each in its own process (peak RSS, VmHWM, is per process). `json` (today): the
// registry is a string inside the snapshot JSON, so reading a version decodes the JSON and storing one
// encodes it again. `blob` (proposed, not built): the registry stored as its own text, read and written
// as it is. Both then apply the same one-dword patch (made beforehand, as the laptop sends it). A generated registry (scripts/fixtures/registry.ts).
//   npx tsc -b && node dist/scripts/bench/registry-store-bench.js [--keys 100000]
// (it runs itself twice, as `--design json` and `--design blob`, and prints one JSON line for each)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generatedRegistryText } from '../fixtures/registry.js';
import { applyRegistryPatch, canonicalRegistryText, decodePersona, encodePersona, makeRegistryPatch } from '../../src/index.js';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const keys = Number(arg('keys') ?? 100_000);
const design = arg('design');
const peakMB = (): number => Math.round(Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024);

if (design === undefined) {
  // The stored forms are made here, so each measuring process starts from the bytes as SQLite would give them.
  const dir = mkdtempSync(join(tmpdir(), 'registry-store-'));
  try {
    const text = canonicalRegistryText(Buffer.from(generatedRegistryText(keys, 1), 'utf8'));
    writeFileSync(join(dir, 'blob'), text, 'latin1');
    writeFileSync(join(dir, 'json'), encodePersona({ files: [], registry: text }));
    // The laptop's patch: one dword changed (it arrives as a few hundred bytes).
    writeFileSync(join(dir, 'patch'), makeRegistryPatch(text, text.replace(/^"([A-Za-z]+)"=dword:[0-9a-f]{8}$/m, '"$1"=dword:00000007')).text);
    for (const d of ['json', 'blob']) process.stdout.write(execFileSync(process.execPath, [process.argv[1]!, '--keys', String(keys), '--design', d, '--file', join(dir, d), '--patch', join(dir, 'patch')]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
} else {
  const atStart = peakMB();
  const stored = readFileSync(arg('file')!);
  const text = design === 'json' ? decodePersona(stored).registry : stored.toString('latin1');
  const afterRead = peakMB();
  const patch = readFileSync(arg('patch')!, 'utf8');
  const next = applyRegistryPatch(text, patch, { edits: false }).text;
  const afterPatch = peakMB();
  const out = design === 'json' ? encodePersona({ files: [], registry: next }) : Buffer.from(next, 'latin1');
  console.log(JSON.stringify({ design, keys, textBytes: text.length, patchBytes: patch.length, storedBytes: out.length, peakAtStartMB: atStart, peakAfterReadMB: afterRead, peakAfterPatchMB: afterPatch, peakAfterStoreMB: peakMB() }));
}
