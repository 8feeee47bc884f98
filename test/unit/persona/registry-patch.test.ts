// The registry as canonical lines (src/persona/registry-text.ts): the canonical text equals the
// Registry model's export; the patch (make/apply) carries keys deleted, values deleted and set, names
// compared case-insensitively as Windows does; applying a patch to its base gives the other side back;
// a patch from outside is parsed strictly; per-value times decide "newest wins" in the merge.
import { describe, expect, it } from 'vitest';
import {
  applyRegistryPatch,
  applySnapshotDelta,
  applyToRegistry,
  canonicalRegistryText,
  decodeRegFile,
  diffSnapshots,
  encodePersona,
  exportRegistry,
  isCanonicalRegistryText,
  makeRegistryPatch,
  mergePersona,
  personaId,
  personaSnapshotId,
  Registry,
  registryValueKey,
} from '../../../src/persona/index.js';
import { expectCode, prng, randInt } from '../helpers.js';
import { opts, regSpec, regText, snap, T_OURS, T_THEIRS, type RegSpec } from './merge-fixtures.js';

const K = 'HKEY_CURRENT_USER\\Software\\Carryon';
const utf8 = (lines: string[]): Buffer => Buffer.from(['Windows Registry Editor Version 5.00', '', ...lines, '', ''].join('\r\n'), 'utf8');
/** The old path: a Registry model exported as v5 UTF-8. */
const viaModel = (bytes: Buffer): string => {
  const reg = applyToRegistry(new Registry(), decodeRegFile(bytes));
  return reg.size === 0 ? '' : Buffer.from(exportRegistry(reg, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
};

describe('canonical registry text', () => {
  it('equals the Registry model export, in and out of canonical order, with deletions and odd spellings', () => {
    const files = [
      utf8([`[${K}]`, '"b"="2"', '"A"=dword:00000001', '@="d"', `[${K}\\Sub]`, '"x"=hex:01,02']),
      utf8([`[${K}\\Sub]`, '"x"=hex:01,02', `[${K}]`, '"b"="2"', `[hkey_current_user\\software\\CARRYON\\z]`, '"v"=-', `[-${K}\\Sub]`]),
      utf8([`[${K}]`, '"Name"="1"', '"NAME"="2"', '"name"=-', '"nAmE"=hex(2):25,00,00,00']),
      utf8([]),
      Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(utf8([`[${K}]`, '"caf\u00e9"="\u4e16"', `[${K}\\b]`, `[${K}\\A]`]).toString('utf8'), 'utf16le')]),
    ];
    for (const f of files) {
      const text = canonicalRegistryText(f);
      expect(text).toBe(viaModel(f));
      expect(isCanonicalRegistryText(text)).toBe(true);
      if (text !== '') expect(canonicalRegistryText(Buffer.from(text, 'utf8'), { encoding: 'utf-8' })).toBe(text); // a fixed point
    }
  });

  it('holds a long hex value continued over lines as one value', () => {
    const long = Array.from({ length: 300 }, (_, i) => (i & 0xff).toString(16).padStart(2, '0')).join(',');
    const text = canonicalRegistryText(utf8([`[${K}]`, `"blob"=hex:${long}`, '"z"="after"']));
    expect(text).toContain('\\\r\n  ');
    const ours = text.replace('"z"="after"', '"z"="changed"');
    const p = makeRegistryPatch(text, ours);
    expect(p.edits.map((e) => e.key)).toEqual([registryValueKey(K, 'z')]);
    expect(applyRegistryPatch(text, p.text).text).toBe(ours);
  });
});

describe('registry patch: make and apply', () => {
  const base = regText({ [K]: { keep: 'k', change: 'old', drop: 'd' }, [`${K}\\Gone`]: { a: '1' }, [`${K}\\Gone\\Deeper`]: { b: '2' }, [`${K}\\Other`]: { o: 'o' } });

  it('carries values set and deleted and keys deleted, and nothing else', () => {
    const ours = regText({ [K]: { keep: 'k', change: 'new', added: 'n' }, [`${K}\\Other`]: { o: 'o' }, [`${K}\\New`]: {} });
    const p = makeRegistryPatch(base, ours);
    expect(p.text).toBe([
      'Windows Registry Editor Version 5.00', '',
      `[${K}]`, '"added"="n"', '"change"="new"', '"drop"=-', '',
      `[-${K}\\Gone]`, '',
      `[${K}\\New]`, '', '',
    ].join('\r\n'));
    expect(p.edits.map((e) => [e.key, e.line])).toEqual([
      [registryValueKey(K, 'added'), '"added"="n"'], [registryValueKey(K, 'change'), '"change"="new"'], [registryValueKey(K, 'drop'), null],
    ]);
    expect(applyRegistryPatch(base, p.text).text).toBe(ours);
    expect(p.exact).toBe(true);
    expect(makeRegistryPatch(base, base)).toEqual({ text: '', edits: [], exact: true });
    expect(applyRegistryPatch(base, '').text).toBe(base);
  });

  it('a key dropped while a key below it stays: the key is deleted and the one below written whole', () => {
    const ours = regText({ [K]: { keep: 'k', change: 'old', drop: 'd' }, [`${K}\\Gone\\Deeper`]: { b: '2' }, [`${K}\\Other`]: { o: 'o' } });
    const p = makeRegistryPatch(base, ours);
    expect(p.text).toContain(`[-${K}\\Gone]\r\n\r\n[${K}\\Gone\\Deeper]\r\n"b"="2"\r\n`);
    expect(applyRegistryPatch(base, p.text).text).toBe(ours);
  });

  it('compares key and value names as Windows does: a spelling change alone is no change, and the base spelling stays', () => {
    const ours = regText({ [K.toLowerCase().replace('hkey_current_user', 'HKEY_CURRENT_USER')]: { KEEP: 'k', Change: 'new', drop: 'd' }, [`${K}\\gone`]: { A: '1' }, [`${K}\\Gone\\Deeper`]: { b: '2' }, [`${K}\\Other`]: { o: 'o' } });
    const p = makeRegistryPatch(base, ours);
    expect(p.edits.map((e) => e.key)).toEqual([registryValueKey(K, 'change')]);
    expect(p.exact).toBe(false); // applying keeps the base's spellings, so it does not give `ours` back
    const applied = applyRegistryPatch(base, p.text).text;
    expect(regSpec(applied)[K]).toEqual({ change: 'new', drop: 'd', keep: 'k' }); // base's spelling of "change"
    // A patch written by hand in other cases applies to the same values.
    const hand = Buffer.from(['Windows Registry Editor Version 5.00', '', `[${K.toUpperCase()}]`, '"KEEP"="K2"', '"DROP"=-', `[-${K.toUpperCase()}\\GONE]`, '', ''].join('\r\n')).toString('utf8');
    expect(regSpec(applyRegistryPatch(base, hand).text)).toEqual({ [K]: { change: 'old', keep: 'K2' }, [`${K}\\Other`]: { o: 'o' } });
  });

  it('applies an unsorted hand-made patch as regedit would (later sections win, [-key] drops earlier edits below it)', () => {
    const patch = utf8([`[${K}\\Other]`, '"o"="1"', `[${K}]`, '"keep"=-', `[${K}\\Gone\\Deeper]`, '"c"="3"', `[-${K}\\Gone]`, `[${K}\\Gone\\New]`, '"n"="n"', `[${K}\\Other]`, '"o"="2"']).toString('utf8');
    const expected = applyToRegistry(applyToRegistry(new Registry(), decodeRegFile(Buffer.from(base, 'utf8'), { encoding: 'utf-8' })), decodeRegFile(Buffer.from(patch, 'utf8'), { encoding: 'utf-8' }));
    const want = Buffer.from(exportRegistry(expected, { version: 'v5', encoding: 'utf-8', bom: false })).toString('utf8');
    const r = applyRegistryPatch(base, patch);
    expect(r.text).toBe(want);
    expect(r.edits).toHaveLength(5);
  });

  it('refuses a patch that is not a v5 .reg file, naming the line, and a delta whose times do not match its edits', async () => {
    const e1 = await expectCode(() => applyRegistryPatch(base, 'Windows Registry Editor Version 5.00\r\n\r\n[HKEY_NOWHERE\\X]\r\n'), 'BAD_REQUEST');
    expect(e1.message).toMatch(/^the registry patch is not a valid \.reg file: line 3, column 2: unknown root key/);
    await expectCode(() => applyRegistryPatch(base, 'REGEDIT4\r\n\r\n[HKEY_CURRENT_USER\\X]\r\n'), 'BAD_REQUEST');
    const b = snap([], base);
    const o = snap([], regText({ [K]: { keep: 'k', change: 'new', drop: 'd' }, [`${K}\\Gone`]: { a: '1' }, [`${K}\\Gone\\Deeper`]: { b: '2' }, [`${K}\\Other`]: { o: 'o' } }));
    const d = diffSnapshots(b, o, { time: 5 });
    expect(d.registryTimes).toEqual([5]);
    const applied = applySnapshotDelta(b, d);
    expect(applied.snapshot.registry).toBe(o.registry);
    expect(applied.id).toBe(personaId(encodePersona(o)));
    expect(applied.registryTimes()).toEqual(new Map([[registryValueKey(K, 'change'), 5]]));
    const err = await expectCode(() => applySnapshotDelta(b, { ...d, registryTimes: [5, 6] }), 'BAD_REQUEST');
    expect(err.message).toMatch(/registryTimes holds 2 times for the patch's 1 value edits/);
    // Version 1 deltas (the whole text) are still read; their values carry no times of their own.
    const v1 = { baseId: d.baseId, id: d.id, upsert: [], remove: [], registry: o.registry };
    expect(applySnapshotDelta(b, v1).registryTimes()).toBeNull();
    await expectCode(() => applySnapshotDelta(b, { ...v1, registry: 'REGEDIT4\r\n\r\n[HKEY_CURRENT_USER\\X]\r\n' }), 'BAD_REQUEST');
  });

  it('seeded: apply(base, make(base, ours)) is ours for random registries', () => {
    for (let seed = 1; seed <= 150; seed++) {
      const rng = prng(seed);
      const spec = (): RegSpec => {
        const out: RegSpec = {};
        for (let k = 0; k < randInt(rng, 8); k++) {
          const path = `${K}\\K${randInt(rng, 4)}${randInt(rng, 2) ? `\\S${randInt(rng, 3)}` : ''}`;
          const values: Record<string, string> = {};
          for (let v = 0; v < randInt(rng, 4); v++) values[`v${randInt(rng, 5)}`] = `x${randInt(rng, 3)}`;
          out[path] = values;
        }
        return out;
      };
      const b = regText(spec());
      const o = regText(spec());
      const p = makeRegistryPatch(b, o);
      expect(applyRegistryPatch(b, p.text).text, `seed ${seed}`).toBe(o);
      expect(p.exact, `seed ${seed}`).toBe(true);
      // Ours spelled differently: when the patch says exact, applying must give ours to the byte.
      const odd = regText(Object.fromEntries(Object.entries(regSpec(o)).map(([k, v]) => [randInt(rng, 2) ? k.replace('Software', 'SOFTWARE') : k, v])));
      const q = makeRegistryPatch(b, odd);
      expect(q.exact === (applyRegistryPatch(b, q.text).text === odd), `seed ${seed}`).toBe(true);
    }
  });
});

describe('persona snapshot encoding', () => {
  it('encodes a registry of several slices, a surrogate pair across a slice edge, exactly as one JSON.stringify', () => {
    const big = `${'x'.repeat((1 << 20) - 1)}\ud83d\ude00"\\\r\n${'y'.repeat(1 << 20)}`;
    const p = { files: [], registry: big };
    const whole = Buffer.from(JSON.stringify({ format: 'carryon-persona', version: 1, files: [], registry: big }));
    expect(encodePersona(p).equals(whole)).toBe(true);
    expect(personaSnapshotId(p)).toBe(personaId(whole));
  });
});

describe('merge: per-value newest wins', () => {
  it('two values the laptop changed at different times, both changed on the server in between: one each way', () => {
    const base = snap([], regText({ [K]: { early: 'b', late: 'b' } }));
    const ours = snap([], regText({ [K]: { early: 'laptop', late: 'laptop' } }));
    const theirs = snap([], regText({ [K]: { early: 'server', late: 'server' } }));
    const serverChange = 2_000;
    const registryTimes = {
      ours: new Map([[registryValueKey(K, 'early'), 1_000], [registryValueKey(K, 'late'), 3_000]]),
      theirs: new Map([[registryValueKey(K, 'early'), serverChange], [registryValueKey(K, 'late'), serverChange]]),
    };
    const r = mergePersona(base, ours, theirs, opts({ registryTimes }));
    expect(regSpec(r.merged.registry)).toEqual({ [K]: { early: 'server', late: 'laptop' } });
    expect(r.report.conflicts.map((c) => [c.path, c.kept])).toEqual([[`${K}\\early`, 'theirs'], [`${K}\\late`, 'ours']]);
    // Without per-value times, one time decides both (the laptop's edit time is later than the commit).
    expect(T_OURS).toBeGreaterThan(T_THEIRS);
    expect(regSpec(mergePersona(base, ours, theirs, opts()).merged.registry)).toEqual({ [K]: { early: 'laptop', late: 'laptop' } });
  });
});
