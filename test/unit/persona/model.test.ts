// The persona snapshot codec (src/persona/model.ts): decodePersona and applySnapshotDelta refuse
// malformed input with BAD_REQUEST. Each case here was found by the fuzz targets persona-snapshot and
// persona-delta (test/fuzz/persona.test.ts) and is named after what it broke.
import { describe, expect, it } from 'vitest';
import { applySnapshotDelta, blockId, CarryonError, decodePersona, diffSnapshots, encodePersona, type PersonaEntry, type PersonaSnapshot } from '../../../src/index.js';

const h = blockId(Buffer.from('hello'));
const file: PersonaEntry = { path: 'a.txt', kind: 'file', mode: 0o644, mtimeMs: 1_700_000_000_000, size: 5, hash: h, chunks: [h] };
const dir: PersonaEntry = { path: 'Documents', kind: 'dir', mode: 0o755, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [] };

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof CarryonError ? e.code : `raw ${(e as Error).name}: ${(e as Error).message}`;
  }
  return 'none';
}

function snapshotJson(files: unknown[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({ format: 'carryon-persona', version: 1, files, registry: '', ...extra }));
}

describe('decodePersona', () => {
  it('accepts directories and symlinks with no chunks field or an empty list (the control)', () => {
    const { chunks: _c, ...noChunks } = dir;
    expect(decodePersona(snapshotJson([noChunks])).files[0]!.chunks).toEqual([]);
    expect(decodePersona(snapshotJson([{ ...dir, chunks: null }])).files[0]!.chunks).toEqual([]);
    expect(decodePersona(encodePersona({ files: [dir, file], registry: '' })).files).toHaveLength(2);
  });

  // A directory or symlink whose `chunks` was an object, a string or a number passed (only a non-empty
  // array was refused) and came out as a PersonaEntry whose chunks were not a list, for code that trusts
  // its type (diffSnapshots calls chunks.every) to trip over later.
  it('refuses chunks that are not a list on a directory or symlink', () => {
    for (const chunks of [{ format: 'carryon-persona' }, 'abc', 5, true]) {
      expect(codeOf(() => decodePersona(snapshotJson([{ ...dir, chunks }]))), JSON.stringify(chunks)).toBe('BAD_REQUEST');
      expect(codeOf(() => decodePersona(snapshotJson([{ path: 'l', kind: 'symlink', mode: 0o777, mtimeMs: 0, size: 0, hash: null, chunks, target: 'a.txt' }])))).toBe('BAD_REQUEST');
    }
  });

  // {"version": {"toString": 1}} made String(version) in the message throw a TypeError.
  it('refuses a version without a callable toString with BAD_REQUEST, not a TypeError', () => {
    expect(codeOf(() => decodePersona(snapshotJson([], { version: { toString: 1 } })))).toBe('BAD_REQUEST');
  });
});

describe('applySnapshotDelta', () => {
  const base: PersonaSnapshot = { files: [dir, file], registry: '' };
  const next: PersonaSnapshot = { files: [dir], registry: '' };

  it('rebuilds the snapshot a delta names (the control)', () => {
    const d = JSON.parse(JSON.stringify(diffSnapshots(base, next)));
    expect(applySnapshotDelta(base, d).snapshot.files.map((e) => e.path)).toEqual(['Documents']);
  });

  // Found by the fuzz target persona-delta: an upserted entry with a field nested some thousands deep
  // (a few KiB of `[`) made JSON.stringify of the candidate overflow its stack (a RangeError).
  it('refuses an entry whose fields are nested deep with BAD_REQUEST, and ignores unknown fields', () => {
    const deep = JSON.parse(`${'['.repeat(20000)}${']'.repeat(20000)}`);
    const d = JSON.parse(JSON.stringify(diffSnapshots(next, base)));
    for (const field of ['chunks', 'hash', 'mode', 'target']) {
      expect(codeOf(() => applySnapshotDelta(next, { ...d, upsert: [{ ...d.upsert[0], [field]: deep }] })), field).toBe('BAD_REQUEST');
    }
    // A field the format does not have is left out, however deep.
    expect(applySnapshotDelta(next, { ...d, upsert: [{ ...d.upsert[0], junk: deep }] }).snapshot.files).toEqual(base.files.slice().sort((a, b) => (a.path < b.path ? -1 : 1)));
  });

  // A `remove` entry {"toString": true} made String(p) in the message throw a TypeError.
  it('refuses a removed path that is an object without a callable toString with BAD_REQUEST', () => {
    const d = { ...JSON.parse(JSON.stringify(diffSnapshots(base, next))), remove: [{ toString: true }] };
    expect(codeOf(() => applySnapshotDelta(base, d))).toBe('BAD_REQUEST');
  });
});
