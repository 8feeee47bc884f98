// The three-way persona merge, registry side: values merge by (key path, value name), compared as
// Windows compares them; every case of the table, key deletions, canonical output, properties.
import { describe, expect, it } from 'vitest';
import {
  applyToRegistry,
  decodeRegFile,
  encodeRegDword,
  exportRegistry,
  mergePersona,
  Registry,
  REG_DWORD,
  type MergeConflict,
  type MergeOptions,
} from '../../../src/persona/index.js';
import type { PersonaSnapshot } from '../../../src/persona/model.js';
import { expectCode, prng, randInt } from '../helpers.js';
import { opts, regSpec, regText, snap, T_THEIRS, type RegSpec } from './merge-fixtures.js';

const K = 'HKEY_CURRENT_USER\\Software\\Carryon';
const K2 = 'HKEY_CURRENT_USER\\Software\\Other';

function persona(spec: RegSpec): PersonaSnapshot {
  return snap([], regText(spec));
}

interface RegCase {
  name: string;
  base: RegSpec;
  ours: RegSpec;
  theirs: RegSpec;
  opts?: Partial<MergeOptions>;
  merged: RegSpec;
  conflicts: Array<Pick<MergeConflict, 'path' | 'reason' | 'kept'>>;
}

const REG_CASES: RegCase[] = [
  { name: 'unchanged on both sides', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'b' } }, theirs: { [K]: { v: 'b' } }, merged: { [K]: { v: 'b' } }, conflicts: [] },
  { name: 'changed on the laptop only', base: { [K]: { v: 'b', w: 'w' } }, ours: { [K]: { v: 'o', w: 'w' } }, theirs: { [K]: { v: 'b', w: 'w' } }, merged: { [K]: { v: 'o', w: 'w' } }, conflicts: [] },
  { name: 'changed on the server only', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'b' } }, theirs: { [K]: { v: 't' } }, merged: { [K]: { v: 't' } }, conflicts: [] },
  { name: 'different values changed on each side: both survive', base: { [K]: { v: 'b', w: 'b' } }, ours: { [K]: { v: 'o', w: 'b' } }, theirs: { [K]: { v: 'b', w: 't' } }, merged: { [K]: { v: 'o', w: 't' } }, conflicts: [] },
  { name: 'same change on both: no conflict', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'x' } }, theirs: { [K]: { v: 'x' } }, merged: { [K]: { v: 'x' } }, conflicts: [] },
  {
    name: 'both changed, newest: the laptop wrote later', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'o' } }, theirs: { [K]: { v: 't' } },
    merged: { [K]: { v: 'o' } }, conflicts: [{ path: `${K}\\v`, reason: 'both-modified', kept: 'ours' }],
  },
  {
    name: 'both changed, newest: the server wrote later', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'o' } }, theirs: { [K]: { v: 't' } }, opts: { oursTime: T_THEIRS - 1 },
    merged: { [K]: { v: 't' } }, conflicts: [{ path: `${K}\\v`, reason: 'both-modified', kept: 'theirs' }],
  },
  {
    name: 'both changed, newest: a tie goes to the server', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'o' } }, theirs: { [K]: { v: 't' } }, opts: { oursTime: T_THEIRS },
    merged: { [K]: { v: 't' } }, conflicts: [{ path: `${K}\\v`, reason: 'both-modified', kept: 'theirs' }],
  },
  {
    name: 'both changed, server policy', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'o' } }, theirs: { [K]: { v: 't' } }, opts: { registryPolicy: 'server' },
    merged: { [K]: { v: 't' } }, conflicts: [{ path: `${K}\\v`, reason: 'both-modified', kept: 'theirs' }],
  },
  {
    name: 'both changed, laptop policy', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'o' } }, theirs: { [K]: { v: 't' } }, opts: { registryPolicy: 'laptop', oursTime: 0 },
    merged: { [K]: { v: 'o' } }, conflicts: [{ path: `${K}\\v`, reason: 'both-modified', kept: 'ours' }],
  },
  {
    name: 'the default value conflicts as @', base: { [K]: { '@': 'b' } }, ours: { [K]: { '@': 'o' } }, theirs: { [K]: { '@': 't' } }, opts: { registryPolicy: 'server' },
    merged: { [K]: { '@': 't' } }, conflicts: [{ path: `${K}\\@`, reason: 'both-modified', kept: 'theirs' }],
  },
  {
    name: 'added on both with different data', base: { [K]: {} }, ours: { [K]: { n: 'o' } }, theirs: { [K]: { n: 't' } },
    merged: { [K]: { n: 'o' } }, conflicts: [{ path: `${K}\\n`, reason: 'both-added', kept: 'ours' }],
  },
  {
    name: 'deleted on the laptop, changed on the server: the change wins', base: { [K]: { v: 'b' } }, ours: { [K]: {} }, theirs: { [K]: { v: 't' } }, opts: { registryPolicy: 'laptop' },
    merged: { [K]: { v: 't' } }, conflicts: [{ path: `${K}\\v`, reason: 'modify-delete', kept: 'theirs' }],
  },
  {
    name: 'deleted on the server, changed on the laptop: the change wins', base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'o' } }, theirs: { [K]: {} }, opts: { registryPolicy: 'server' },
    merged: { [K]: { v: 'o' } }, conflicts: [{ path: `${K}\\v`, reason: 'modify-delete', kept: 'ours' }],
  },
  { name: 'deleted on one side, unchanged on the other: deleted', base: { [K]: { v: 'b', w: 'w' } }, ours: { [K]: { w: 'w' } }, theirs: { [K]: { v: 'b', w: 'w' } }, merged: { [K]: { w: 'w' } }, conflicts: [] },
  { name: 'deleted on both', base: { [K]: { v: 'b' } }, ours: { [K]: {} }, theirs: { [K]: {} }, merged: { [K]: {} }, conflicts: [] },
  {
    name: 'key deleted on the laptop while the server changed a value in it: key kept with that value only',
    base: { [K]: { v: 'b', w: 'w' }, [K2]: { z: 'z' } }, ours: { [K2]: { z: 'z' } }, theirs: { [K]: { v: 't', w: 'w' }, [K2]: { z: 'z' } },
    merged: { [K]: { v: 't' }, [K2]: { z: 'z' } }, conflicts: [{ path: `${K}\\v`, reason: 'key-deleted-value-modified', kept: 'theirs' }],
  },
  {
    name: 'key deleted on the server while the laptop added a value in it',
    base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'b', n: 'new' } }, theirs: {},
    merged: { [K]: { n: 'new' } }, conflicts: [{ path: `${K}\\n`, reason: 'key-deleted-value-modified', kept: 'ours' }],
  },
  {
    name: 'key deleted on the server while the laptop added a subkey: the subkey survives',
    base: { [K]: { v: 'b' } }, ours: { [K]: { v: 'b' }, [`${K}\\Sub`]: { s: '1' }, [`${K}\\Sub\\Deeper`]: {} }, theirs: {},
    merged: { [`${K}\\Sub`]: { s: '1' }, [`${K}\\Sub\\Deeper`]: {} }, conflicts: [{ path: `${K}\\Sub`, reason: 'key-deleted-value-modified', kept: 'ours' }],
  },
  { name: 'key deleted on one side, untouched on the other: deleted', base: { [K]: { v: 'b' }, [K2]: {} }, ours: { [K]: { v: 'b' }, [K2]: {} }, theirs: { [K2]: {} }, merged: { [K2]: {} }, conflicts: [] },
  { name: 'empty key added on one side survives', base: { [K]: {} }, ours: { [K]: {}, [K2]: {} }, theirs: { [K]: {} }, merged: { [K]: {}, [K2]: {} }, conflicts: [] },
  { name: 'everything deleted on one side: empty registry', base: { [K]: { v: 'b' } }, ours: {}, theirs: { [K]: { v: 'b' } }, merged: {}, conflicts: [] },
];

describe('mergePersona: registry', () => {
  for (const c of REG_CASES) {
    it(c.name, () => {
      const { merged, report } = mergePersona(persona(c.base), persona(c.ours), persona(c.theirs), opts(c.opts));
      expect(regSpec(merged.registry)).toEqual(c.merged);
      expect(report.conflicts.map((x) => ({ path: x.path, reason: x.reason, kept: x.kept }))).toEqual(c.conflicts);
      for (const x of report.conflicts) {
        expect(x.kind).toBe('registry');
        expect(x.resolution.length).toBeGreaterThan(10);
      }
      expect(report.stats.registryConflicts).toBe(c.conflicts.length);
      expect(merged.files).toEqual([]);
    });
  }

  it('an empty merged registry is the empty text', () => {
    const { merged } = mergePersona(persona({ [K]: { v: 'b' } }), persona({}), persona({ [K]: { v: 'b' }, [K2]: {} }), opts());
    expect(merged.registry).toBe(regText({ [K2]: {} }));
    expect(mergePersona(persona({ [K]: {} }), persona({}), persona({ [K]: {} }), opts()).merged.registry).toBe('');
  });

  it('matches key paths and value names case-insensitively; one spelling is kept', () => {
    const base = persona({ [K]: { Value: 'b', other: 'x' } });
    const ours = persona({ [K.toLowerCase()]: { VALUE: 'o', other: 'x' } });
    const theirs = persona({ [K.toUpperCase()]: { value: 'b', OTHER: 'y' } });
    const { merged, report } = mergePersona(base, ours, theirs, opts());
    expect(report.conflicts).toEqual([]);
    const spec = regSpec(merged.registry);
    expect(Object.keys(spec)).toHaveLength(1);
    const values = Object.values(spec)[0]!;
    expect(Object.fromEntries(Object.entries(values).map(([n, v]) => [n.toLowerCase(), v]))).toEqual({ value: 'o', other: 'y' });
  });

  it('a type change is a change (REG_SZ "1" vs REG_DWORD 1)', () => {
    const reg = (type: 'sz' | 'dword'): string => {
      const r = new Registry();
      if (type === 'sz') r.setValue(K, { name: 'n', type: 1, data: Buffer.from('1\0', 'utf16le') });
      else r.setValue(K, { name: 'n', type: REG_DWORD, data: encodeRegDword(1) });
      return Buffer.from(exportRegistry(r, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
    };
    const base = snap([], reg('sz'));
    const { merged, report } = mergePersona(base, snap([], reg('dword')), base, opts());
    expect(merged.registry).toBe(reg('dword'));
    expect(merged.registry).toContain('"n"=dword:00000001');
    expect(report.stats.valuesFromOurs).toBe(1);
  });

  it('writes canonical text: v5 header, CRLF, keys parents first, values sorted', () => {
    const base = persona({ [K]: { b: '1' } });
    const ours = persona({ [K]: { b: '1', a: 'o' } });
    const theirs = persona({ [`${K}\\Z`]: {}, [K]: { b: '1', c: 't' }, 'HKEY_CURRENT_USER\\Software\\Aaa': {} });
    const { merged } = mergePersona(base, ours, theirs, opts());
    expect(merged.registry).toBe(
      'Windows Registry Editor Version 5.00\r\n' +
        '\r\n[HKEY_CURRENT_USER\\Software\\Aaa]\r\n' +
        `\r\n[${K}]\r\n"a"="o"\r\n"b"="1"\r\n"c"="t"\r\n` +
        `\r\n[${K}\\Z]\r\n` +
        '\r\n',
    );
  });

  it('returns the other side’s registry text as it is when one side left it unchanged', () => {
    // Not the canonical form (comments, REGEDIT4 header): kept byte for byte all the same.
    const odd = 'REGEDIT4\r\n\r\n; a comment\r\n[HKEY_CURRENT_USER\\X]\r\n"v"="1"\r\n';
    const base = persona({ [K]: { v: 'b' } });
    expect(mergePersona(base, base, snap([], odd), opts()).merged.registry).toBe(odd);
    expect(mergePersona(base, snap([], odd), base, opts()).merged.registry).toBe(odd);
  });

  it('counts values by origin', () => {
    const base = persona({ [K]: { u: 'u', o: 'o', t: 't', s: 's', d: 'd' } });
    const ours = persona({ [K]: { u: 'u', o: 'o2', t: 't', s: 's2', n: 'n' } });
    const theirs = persona({ [K]: { u: 'u', o: 'o', t: 't2', s: 's2', d: 'd' } });
    const { report } = mergePersona(base, ours, theirs, opts());
    expect(report.stats).toMatchObject({ valuesFromOurs: 2, valuesFromTheirs: 1, valuesSameOnBoth: 1, valuesDeleted: 1, valuesUnchanged: 1, registryConflicts: 0 });
  });

  it('names the side of a malformed registry text', async () => {
    const bad = snap([], 'Windows Registry Editor Version 5.00\r\n\r\n[HKEY_NOWHERE\\X]\r\n');
    const err = await expectCode(() => mergePersona(persona({}), bad, persona({}), opts()), 'BAD_REQUEST');
    expect(err.message).toMatch(/^laptop's registry: /);
  });

  it('lists file conflicts before registry conflicts, each sorted by path', () => {
    const base = { files: [], registry: regText({ [K]: { b: '0', a: '0' } }) };
    const ours = { files: [], registry: regText({ [K]: { b: '1', a: '1' } }) };
    const theirs = { files: [], registry: regText({ [K]: { b: '2', a: '2' } }) };
    const { report } = mergePersona(base, ours, theirs, opts());
    expect(report.conflicts.map((c) => c.path)).toEqual([`${K}\\a`, `${K}\\b`]);
  });
});

// ---------------------------------------------------------------------------------------------------
// Seeded properties

type Rng = () => number;

function randomSpec(rng: Rng): RegSpec {
  const spec: RegSpec = {};
  for (let k = 0; k < 4 + randInt(rng, 5); k++) {
    const values: Record<string, string> = {};
    for (let v = 0; v < randInt(rng, 5); v++) values[`v${v}`] = `b${k}.${v}`;
    if (randInt(rng, 3) === 0) values['@'] = `default${k}`;
    spec[`HKEY_CURRENT_USER\\Software\\K${k}`] = values;
  }
  return spec;
}

/** One side's random edits to the keys it owns: change, delete or add values; delete the key; add subkeys and keys. */
function editSpec(rng: Rng, base: RegSpec, mine: (key: string) => boolean, tag: string): RegSpec {
  const out: RegSpec = {};
  for (const [key, values] of Object.entries(base)) {
    if (!mine(key)) {
      out[key] = { ...values };
      continue;
    }
    if (randInt(rng, 6) === 0) continue; // key deleted
    const next: Record<string, string> = {};
    for (const [n, v] of Object.entries(values)) {
      const r = randInt(rng, 4);
      if (r === 0) continue;
      next[n] = r === 1 ? `${tag}:${v}` : v;
    }
    if (randInt(rng, 2) === 0) next[`${tag}-added`] = tag;
    out[key] = next;
    if (randInt(rng, 3) === 0) out[`${key}\\${tag}-sub`] = { s: tag };
  }
  out[`HKEY_CURRENT_USER\\Software\\${tag}-new`] = { x: tag };
  return out;
}

function canonical(spec: RegSpec): string {
  const reg = applyToRegistry(new Registry(), decodeRegFile(Buffer.from(regText(spec), 'utf8'), { encoding: 'utf-8' }));
  return reg.size === 0 ? '' : Buffer.from(exportRegistry(reg, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
}

describe('mergePersona: registry properties (seeded)', () => {
  it('edits to disjoint keys all survive, with no conflicts', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rng = prng(seed);
      const base = randomSpec(rng);
      const owner = new Map(Object.keys(base).map((k) => [k, randInt(rng, 3)]));
      const ours = editSpec(rng, base, (k) => owner.get(k) === 1, 'o');
      const theirs = editSpec(rng, base, (k) => owner.get(k) === 2, 't');
      const { merged, report } = mergePersona(persona(base), persona(ours), persona(theirs), opts());
      expect(report.conflicts, `seed ${seed}`).toEqual([]);
      const expected: RegSpec = {};
      for (const [k, v] of Object.entries(ours)) if (owner.get(k.split('\\').slice(0, 3).join('\\')) !== 2) expected[k] = v;
      for (const [k, v] of Object.entries(theirs)) if (owner.get(k.split('\\').slice(0, 3).join('\\')) === 2 || k.endsWith('t-new')) expected[k] = v;
      expect(merged.registry, `seed ${seed}`).toBe(canonical(expected));
    }
  });

  it('overlapping edits: every value either side changed survives, as its value or as the policy winner', () => {
    let conflicts = 0;
    for (let seed = 500; seed < 700; seed++) {
      const rng = prng(seed);
      const base = randomSpec(rng);
      const ours = editSpec(rng, base, () => true, 'o');
      const theirs = editSpec(rng, base, () => true, 't');
      const { merged, report } = mergePersona(persona(base), persona(ours), persona(theirs), opts({ registryPolicy: 'laptop' }));
      conflicts += report.conflicts.length;
      const got = regSpec(merged.registry);
      // Under the laptop policy, every value the laptop set differently from base is in the result.
      for (const [k, values] of Object.entries(ours)) {
        for (const [n, v] of Object.entries(values)) if (base[k]?.[n] !== v) expect(got[k]?.[n], `seed ${seed} ${k}\\${n}`).toBe(v);
      }
      // A value the server changed survives unless the laptop changed it too.
      for (const [k, values] of Object.entries(theirs)) {
        for (const [n, v] of Object.entries(values)) {
          if (base[k]?.[n] !== v && (ours[k]?.[n] === base[k]?.[n] || !(k in ours) || !(n in (ours[k] ?? {})))) expect(got[k]?.[n], `seed ${seed} ${k}\\${n}`).toBe(v);
        }
      }
    }
    expect(conflicts).toBeGreaterThan(50);
  });

  it('ours == base gives theirs exactly and theirs == base gives ours exactly', () => {
    for (let seed = 900; seed < 1000; seed++) {
      const rng = prng(seed);
      const base = persona(randomSpec(rng));
      const edited = persona(editSpec(rng, regSpec(base.registry), () => true, 'e'));
      expect(mergePersona(base, base, edited, opts()).merged.registry).toBe(edited.registry);
      expect(mergePersona(base, edited, base, opts()).merged.registry).toBe(edited.registry);
      expect(mergePersona(base, edited, edited, opts()).report.conflicts).toEqual([]);
    }
  });
});
