// Fuzz targets for the persona formats read from outside: .reg files (decodeRegFile, then the registry
// snapshot path the merge uses), persona snapshots (decodePersona) and snapshot deltas
// (applySnapshotDelta, whose JSON comes from a laptop's check-in).
import { CarryonError } from '../../../../src/errors/index.js';
import { blockId, isBlockId, type BlockId } from '../../../../src/hash/index.js';
import {
  applyRegistryPatch,
  applySnapshotDelta,
  canonicalForm,
  applyToRegistry,
  checkPersonaPath,
  decodePersona,
  decodeRegFile,
  diffSnapshots,
  encodePersona,
  encodeRegFile,
  regKeyLines,
  exportRegistry,
  personaId,
  personaPathKey,
  PERSONA_CHUNK_BYTES,
  PERSONA_FORMAT,
  PERSONA_VERSION,
  Registry,
  REG_BINARY,
  REG_DWORD,
  REG_EXPAND_SZ,
  REG_MULTI_SZ,
  REG_QWORD,
  REG_SZ,
  type PersonaEntry,
  type PersonaSnapshot,
  type RegFileEncoding,
  type RegFileVersion,
  type RegistryFile,
} from '../../../../src/persona/index.js';
import { check, type TargetSpec } from '../harness.js';
import { jsonText, mutateBytes, mutateJson, type Json } from '../mutate.js';
import { deepEqual } from './equal.js';

const KiB = 1024;

// ---- .reg files

const KEY = 'HKEY_CURRENT_USER\\Software\\Test';
const utf16 = (s: string): Buffer => Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(s, 'utf16le')]);
const sz = (s: string): Uint8Array => new Uint8Array(Buffer.from(`${s}\0`, 'utf16le'));

function sampleFile(version: RegFileVersion, encoding: RegFileEncoding, bom: boolean): RegistryFile {
  const ascii = encoding === 'windows-1252';
  return {
    version, encoding, bom,
    sections: [
      { kind: 'key', path: KEY, values: [
        { kind: 'set', name: null, type: REG_SZ, data: sz('default') },
        { kind: 'set', name: 'Path "quoted" \\ back', type: REG_EXPAND_SZ, data: sz('%USERPROFILE%\\x') },
        { kind: 'set', name: 'Count', type: REG_DWORD, data: Uint8Array.of(1, 2, 3, 4) },
        { kind: 'set', name: 'Blob', type: REG_BINARY, data: Uint8Array.from({ length: 60 }, (_, i) => (i * 37) & 0xff) },
        { kind: 'set', name: 'List', type: REG_MULTI_SZ, data: new Uint8Array(Buffer.from('a\0bc\0\0', 'utf16le')) },
        { kind: 'set', name: 'Q', type: REG_QWORD, data: Uint8Array.of(1, 0, 0, 0, 0, 0, 0, 0x80) },
        { kind: 'set', name: ascii ? 'caf\u00e9' : 'caf\u00e9 \u4e16', type: REG_SZ, data: sz(ascii ? '\u00e9' : '\ud83d\ude00') },
        { kind: 'delete', name: 'Old' },
      ] },
      { kind: 'key', path: `${KEY}\\Sub`, values: [{ kind: 'set', name: 'x', type: 0x20001, data: Uint8Array.of(9) }] },
      { kind: 'delete-key', path: `${KEY}\\Gone` },
    ],
  };
}

/** Tokens of the .reg grammar, in the byte form of the file they go into. */
const REG_TOKENS = ['[', ']', '[-', '@=', '"', '"=', '=-', '=', 'hex:', 'hex(2):', 'hex(7):', 'hex(ffffffff):', 'hex(100000000):', 'dword:', 'dword:ffffffff', 'dword:123456789',
  ',\\\r\n  ', ',\\', '\\\\', '\\"', '\\n', '\\0', '\\x', ';', '\r\n', '\r', '\n', '\0', 'HKEY_CURRENT_USER\\', 'HKCU\\', '\\\\', 'REGEDIT4', 'REGEDIT5', 'Windows Registry Editor Version 5.00', '\ud800', '\u00e9', 'ff,', '0,'];
const REG_DICT_8 = REG_TOKENS.map((t) => Buffer.from(t, 'utf8'));
const REG_DICT_16 = REG_TOKENS.map((t) => Buffer.from(t, 'utf16le'));

const REG_LIMITS = { maxFileBytes: 256 * KiB, maxLineChars: 4 * KiB, maxValueBytes: 16 * KiB };

export const regFileTarget: TargetSpec = {
  name: 'reg-file',
  about: 'decodeRegFile (src/persona/registry) with small limits; accepted files round-trip through encodeRegFile and reach a canonical registry text',
  create: () => ({
    codes: ['BAD_REQUEST', 'PAYLOAD_TOO_LARGE'],
    corpus() {
      const models: Array<[RegFileVersion, RegFileEncoding, boolean]> = [['v5', 'utf-16le', true], ['v5', 'utf-8', false], ['v5', 'utf-8', true], ['regedit4', 'windows-1252', false], ['regedit4', 'utf-8', false]];
      const out: Buffer[] = models.map(([v, e, b]) => Buffer.from(encodeRegFile(sampleFile(v, e, b))));
      out.push(
        utf16(`  Windows Registry Editor Version 5.00\n; comment\r[${KEY}] ; c\n\t"a" = "x" ;c\r\n"b"=hex(3):AB,cd,\\ ;c\r\n\r\n ;c\r\n  Ef\r\n"d"=dword:1\r\n""="default"\r\n@=-\r\n[-${KEY}\\Gone]\r\n`),
        Buffer.from(`REGEDIT4\r\n[${KEY}\\\u00e9]\r\n"\u00e9"=hex(2):e9,80,00\r\n"m"=hex(7):61,00,00\r\n"s"=hex(1):00,61\r\n`, 'latin1'),
        utf16(`Windows Registry Editor Version 5.00\r\n[${KEY}\\\udc00]\r\n"\ud800\\r\\n"="\udfff\\n"\r\n`),
        utf16(`Windows Registry Editor Version 5.00\r\n[${KEY}]\r\n"x"=hex:01,\\`),
        // CR-only line ends and a key under another root: every key must still be found by a line scan.
        Buffer.from(`Windows Registry Editor Version 5.00\r\r  [HKEY_LOCAL_MACHINE\\SOFTWARE\\X]\r"a"="b"\r[-${KEY}\\Gone]\r`, 'utf8'),
      );
      return out;
    },
    mutate: (rng, input, corpus) => mutateBytes(rng, input, corpus, { dictionary: input[0] === 0xff && input[1] === 0xfe ? REG_DICT_16 : REG_DICT_8 }),
    run(input) {
      const f = decodeRegFile(input, REG_LIMITS);
      for (const s of f.sections) if (s.kind === 'key') for (const v of s.values) if (v.kind === 'set') check(v.data.length <= REG_LIMITS.maxValueBytes, 'value data over maxValueBytes');
      // Documented lossless: decode(encode(f), { encoding }) deep-equals f.
      const y = encodeRegFile(f);
      const g = decodeRegFile(y, { encoding: f.encoding });
      check(deepEqual(g, f), 'decodeRegFile(encodeRegFile(f)) differs from f');
      check(Buffer.from(encodeRegFile(g)).equals(Buffer.from(y)), 'encodeRegFile is not a fixed point');
      // The server's line scan (regKeyLines) finds exactly the keys the parser found, in order, so a key
      // outside HKEY_CURRENT_USER cannot hide from it (CR-only line ends, blanks, comments).
      if (f.encoding !== 'windows-1252') {
        const body = Buffer.from(input).subarray(f.bom ? (f.encoding === 'utf-16le' ? 2 : 3) : 0);
        const text = body.toString(f.encoding === 'utf-16le' ? 'utf16le' : 'utf8');
        check(deepEqual(regKeyLines(text).map((h) => h.path), f.sections.map((sec) => sec.path)), 'regKeyLines disagrees with decodeRegFile about the keys');
      }
      // The persona's registry text: import into a Registry, export as v5 UTF-8; that text is canonical.
      const reg = applyToRegistry(new Registry(), f);
      let text: string;
      try {
        text = Buffer.from(exportRegistry(reg, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
      } catch (err) {
        // Names UTF-8 cannot hold (lone surrogates of a UTF-16 file) are refused by the exporter.
        if (err instanceof CarryonError && err.code === 'INVALID_ARGUMENT') return;
        throw err;
      }
      const again = Buffer.from(exportRegistry(applyToRegistry(new Registry(), decodeRegFile(Buffer.from(text, 'utf8'), { encoding: 'utf-8' })), { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
      check(again === text, 'the canonical registry text is not a fixed point');
    },
    allocationCap: (input) => 8 * input.length + 4 * REG_LIMITS.maxValueBytes + 64 * KiB,
  }),
};

// ---- persona snapshots

const ID = (s: string): BlockId => blockId(Buffer.from(s));

function fileEntry(path: string, size: number, seed: string): PersonaEntry {
  const chunks = Array.from({ length: Math.ceil(size / PERSONA_CHUNK_BYTES) }, (_, i) => ID(`${seed}/${i}`));
  return { path, kind: 'file', mode: 0o644, mtimeMs: 1_700_000_000_000, size, hash: ID(seed), chunks };
}

function sampleSnapshots(): PersonaSnapshot[] {
  const registry = Buffer.from(exportRegistry(applyToRegistry(new Registry(), sampleFile('v5', 'utf-8', false)), { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
  const a: PersonaSnapshot = {
    files: [
      { path: 'Documents', kind: 'dir', mode: 0o755, mtimeMs: 1_700_000_000_000, size: 0, hash: null, chunks: [] },
      fileEntry('Documents/notes.txt', 1234, 'notes'),
      fileEntry('Documents/big.bin', 3 * PERSONA_CHUNK_BYTES + 5, 'big'),
      fileEntry('Documents/\u00dcbersicht.md', 0, 'empty'),
      { path: 'links', kind: 'dir', mode: 0o700, mtimeMs: 1_600_000_000_000, size: 0, hash: null, chunks: [] },
      { path: 'links/to-big', kind: 'symlink', mode: 0o777, mtimeMs: 1_600_000_000_000, size: 0, hash: null, chunks: [], target: '../Documents/big.bin' },
      { path: 'links/up', kind: 'symlink', mode: 0o777, mtimeMs: 0, size: 0, hash: null, chunks: [], target: '..' },
      fileEntry('.config/app/settings.json', PERSONA_CHUNK_BYTES, 'settings'),
    ],
    registry,
  };
  const b: PersonaSnapshot = {
    files: [...a.files.filter((e) => e.path !== 'Documents/notes.txt'), fileEntry('Documents/new.txt', 10, 'new'), { ...fileEntry('Documents/big.bin', 3 * PERSONA_CHUNK_BYTES + 9, 'big2') }].filter((e, i, all) => all.findIndex((x) => x.path === e.path) === i),
    registry: '',
  };
  const c: PersonaSnapshot = { files: [], registry: '' };
  return [a, b, c];
}

const PERSONA_KEYS = ['format', 'version', 'files', 'registry', 'path', 'kind', 'mode', 'mtimeMs', 'size', 'hash', 'chunks', 'target', 'baseId', 'id', 'upsert', 'remove', 'registryPatch', 'registryTimes'];
const PERSONA_MAX = 128 * KiB;

/** The invariants of a decoded snapshot: checked paths, unique keys, content shapes. */
function checkSnapshot(p: PersonaSnapshot): void {
  const keys = new Set<string>();
  for (const e of p.files) {
    check(checkPersonaPath(e.path) === e.path, `path ${JSON.stringify(e.path)} is not a checked persona path`);
    check(!keys.has(personaPathKey(e.path)), 'two entries share a case-insensitive path');
    keys.add(personaPathKey(e.path));
    check(e.mode >= 0 && e.mode <= 0o777 && Number.isSafeInteger(e.mtimeMs) && e.mtimeMs >= 0, 'mode or mtime out of range');
    if (e.kind === 'file') check(isBlockId(e.hash) && e.chunks.length === Math.ceil(e.size / PERSONA_CHUNK_BYTES) && e.chunks.every(isBlockId), 'file content out of shape');
    else check(e.hash === null && e.chunks.length === 0 && e.size === 0, 'only files have content');
    check((e.kind === 'symlink') === (typeof e.target === 'string'), 'target on a non-symlink or none on a symlink');
  }
  check(typeof p.registry === 'string', 'registry is not text');
}

const sortedFiles = (p: PersonaSnapshot): PersonaSnapshot => ({ ...p, files: [...p.files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)) });

export const personaSnapshotTarget: TargetSpec = {
  name: 'persona-snapshot',
  about: 'decodePersona (src/persona) with a 128 KiB limit; accepted snapshots re-encode and decode to the same snapshot',
  create: () => ({
    codes: ['BAD_REQUEST', 'PAYLOAD_TOO_LARGE'],
    corpus: () => sampleSnapshots().map((s) => encodePersona(s)),
    mutate: (rng, input, corpus) => mutateJson(rng, input, corpus, PERSONA_KEYS),
    run(input) {
      const p = decodePersona(input, PERSONA_MAX);
      checkSnapshot(p);
      const again = decodePersona(encodePersona(p));
      check(deepEqual(again, sortedFiles(p)), 'decodePersona(encodePersona(p)) is not p with its entries sorted');
    },
    allocationCap: (input) => 8 * input.length + 64 * KiB,
  }),
};

/** The snapshot a delta would rebuild, as applySnapshotDelta builds it, to give a mutated delta a
 *  matching id (so that mutations reach the validation behind the id check). */
function fixDeltaId(bases: Map<string, PersonaSnapshot>, input: Buffer): Buffer {
  try {
    const d = JSON.parse(input.toString('utf8')) as Record<string, Json>;
    const base = bases.get(d.baseId as string);
    if (!base || !Array.isArray(d.upsert) || !Array.isArray(d.remove)) return input;
    const files = new Map<string, unknown>(base.files.map((e) => [e.path, e]));
    for (const p of d.remove) files.delete(p as string);
    for (const e of d.upsert) files.set((e as { path: string }).path, e);
    const registry = typeof d.registryPatch === 'string' ? applyRegistryPatch(canonicalForm(base.registry, 'base'), d.registryPatch).text : d.registry ?? base.registry;
    const candidate = Buffer.from(JSON.stringify({ format: PERSONA_FORMAT, version: PERSONA_VERSION, files: [...files.values()], registry }));
    d.id = personaId(encodePersona(decodePersona(candidate)));
    return jsonText(d);
  } catch {
    return input;
  }
}

export const personaDeltaTarget: TargetSpec = {
  name: 'persona-delta',
  about: 'applySnapshotDelta (src/persona) on the base a delta names; an accepted delta rebuilds exactly the snapshot it names',
  create: () => {
    const snaps = sampleSnapshots();
    const bases = new Map(snaps.map((s) => [personaId(encodePersona(s)), s]));
    return {
      codes: ['BAD_REQUEST', 'PAYLOAD_TOO_LARGE'],
      corpus() {
        const out: Buffer[] = [];
        for (const a of snaps) for (const b of snaps) out.push(jsonText(diffSnapshots(a, b) as unknown as Json));
        return out;
      },
      mutate: (rng, input, corpus) => mutateJson(rng, input, corpus, PERSONA_KEYS),
      fixup: (input) => fixDeltaId(bases, input),
      run(input) {
        let raw: unknown;
        try {
          raw = JSON.parse(input.toString('utf8'));
        } catch {
          throw new CarryonError('BAD_REQUEST', 'a JSON part of the request is not valid JSON');
        }
        const baseId = (raw as { baseId?: unknown } | null)?.baseId;
        const base = (typeof baseId === 'string' ? bases.get(baseId) : undefined) ?? snaps[0]!;
        const r = applySnapshotDelta(base, raw);
        checkSnapshot(r.snapshot);
        check(r.id === personaId(encodePersona(r.snapshot)), 'id is not the id of the snapshot');
        check(r.id === (raw as { id: string }).id, 'the rebuilt snapshot is not the one the delta names');
      },
      allocationCap: (input) => 8 * input.length + 256 * KiB,
    };
  },
};
