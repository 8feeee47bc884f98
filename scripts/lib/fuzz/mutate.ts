// The seeded mutation engine of the fuzz targets (scripts/fuzz.ts and test/fuzz/): start from valid
// inputs made by carryon's own encoders and damage them the ways files, disks and peers damage bytes.
// Everything is a pure function of the Rng it is given, so (seed, iteration) names an input exactly.
//
// Byte mutations: bit flips; bytes set to interesting values (0, 0xff, 0x7f, 0x80); 16/32/64-bit
// integers written (either byte order) with interesting values (2^31, 2^32-1, 2^53, ...); small
// arithmetic on an integer; random bytes; truncation; extension; insertion and removal of ranges;
// a range duplicated or copied over another; splicing with another input; dictionary tokens; integer
// fields the target names (header fields of its format) rewritten.
// JSON mutations (for request bodies): the parsed value tree edited (values replaced by odd types and
// extreme numbers, keys added, removed, renamed, arrays grown and emptied, subtrees swapped in from
// other inputs), then written back as JSON text, which is what a server's JSON.parse would give.
import { mulberry32u32, type Rng } from '../prng.js';

export type { Rng };

/** A 32-bit hash of (seed, n): the seed of iteration n's generator, so any iteration replays alone. */
export function mixSeed(seed: number, n: number): number {
  let h = (seed ^ Math.imul(n + 0x9e3779b9, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** A uint32 generator for iteration `n` of a run with `seed`. */
export function iterationRng(seed: number, n: number): Rng {
  return mulberry32u32(mixSeed(seed, n));
}

/** Integer in [0, n). */
export function below(rng: Rng, n: number): number {
  return n <= 0 ? 0 : rng() % n;
}

export function chance(rng: Rng, p: number): boolean {
  return rng() / 4294967296 < p;
}

export function choose<T>(rng: Rng, items: readonly T[]): T {
  return items[below(rng, items.length)]!;
}

export function randomBuffer(rng: Rng, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) out.writeUInt32LE(rng(), i);
  for (; i < n; i++) out[i] = rng() & 0xff;
  return out;
}

/** A length biased towards small values: most edits are local, a few are large. */
function smallLength(rng: Rng, max: number): number {
  if (max <= 0) return 0;
  const r = below(rng, 8);
  const cap = r < 5 ? 8 : r < 7 ? 256 : max;
  return 1 + below(rng, Math.min(cap, max));
}

export const INTERESTING_8 = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x20, 0x0a, 0x0d, 0x22, 0x5c];
/** Values for integer fields: sign and width boundaries, powers of two, the limits parsers declare. */
export const INTERESTING_INTS: readonly bigint[] = [
  0n, 1n, 2n, 0x7fn, 0x80n, 0xffn, 0x100n, 0x1000n, 0x7fffn, 0x8000n, 0xffffn, 0x10000n, 0x100000n, 0x400000n, 0x410000n,
  0x1000000n, 0x2000000n, 0x4000000n, 0x7fffffffn, 0x80000000n, 0xfffffffen, 0xffffffffn, 0x100000000n,
  2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n,
];

/** `v` as `width` bytes (1, 2, 4 or 8), wrapping modulo 2^(8·width). */
export function intBytes(v: bigint, width: number, littleEndian: boolean): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  const le = b.subarray(0, width);
  return littleEndian ? Buffer.from(le) : Buffer.from(le).reverse();
}

function readInt(buf: Buffer, at: number, width: number, littleEndian: boolean): bigint {
  const s = Buffer.from(buf.subarray(at, at + width));
  if (!littleEndian) s.reverse();
  const b = Buffer.alloc(8);
  s.copy(b);
  return b.readBigUInt64LE(0);
}

/** An integer field of a format, for field-aware mutation. */
export interface IntField {
  offset: number;
  width: 1 | 2 | 4 | 8;
  littleEndian: boolean;
}

/** What a target tells the engine about its inputs (all optional). */
export interface MutationHints {
  /** Tokens of the format (`hex(`, `]`, `"`, ...), inserted or written over bytes. */
  dictionary?: readonly (string | Buffer)[];
  /** Integer fields of this input worth rewriting (header fields, lengths, counts). */
  fields?(input: Buffer): IntField[];
}

type ByteOp = (rng: Rng, b: Buffer, others: readonly Buffer[], hints: MutationHints) => Buffer;

const pos = (rng: Rng, b: Buffer): number => below(rng, b.length);

const BYTE_OPS: Array<[number, string, ByteOp]> = [
  [6, 'flip-bits', (rng, b) => {
    if (b.length === 0) return b;
    const out = Buffer.from(b);
    for (let k = 1 + below(rng, 4); k > 0; k--) out[pos(rng, out)]! ^= 1 << below(rng, 8);
    return out;
  }],
  [5, 'interesting-byte', (rng, b) => {
    if (b.length === 0) return b;
    const out = Buffer.from(b);
    out[pos(rng, out)] = choose(rng, INTERESTING_8);
    return out;
  }],
  [6, 'interesting-int', (rng, b) => {
    const width = choose(rng, [2, 4, 4, 8] as const);
    if (b.length < width) return b;
    const out = Buffer.from(b);
    const v = chance(rng, 0.15) ? -BigInt(1 + below(rng, 2)) : choose(rng, INTERESTING_INTS);
    intBytes(v, width, chance(rng, 0.5)).copy(out, below(rng, b.length - width + 1));
    return out;
  }],
  [4, 'arithmetic', (rng, b) => {
    const width = choose(rng, [1, 2, 4, 8] as const);
    if (b.length < width) return b;
    const out = Buffer.from(b);
    const at = below(rng, b.length - width + 1);
    const le = chance(rng, 0.5);
    const delta = BigInt(1 + below(rng, 35)) * (chance(rng, 0.5) ? 1n : -1n);
    intBytes(readInt(out, at, width, le) + delta, width, le).copy(out, at);
    return out;
  }],
  [3, 'random-bytes', (rng, b) => {
    if (b.length === 0) return randomBuffer(rng, 1 + below(rng, 16));
    const out = Buffer.from(b);
    const at = pos(rng, out);
    randomBuffer(rng, smallLength(rng, out.length - at)).copy(out, at);
    return out;
  }],
  [4, 'truncate', (rng, b) => {
    if (b.length === 0) return b;
    // Half the time near the end (a cut-off transfer), else anywhere.
    const cut = chance(rng, 0.5) ? Math.max(0, b.length - smallLength(rng, b.length)) : below(rng, b.length);
    return b.subarray(0, cut);
  }],
  [3, 'extend', (rng, b) => {
    const tail = chance(rng, 0.3) ? Buffer.alloc(smallLength(rng, 4096), chance(rng, 0.5) ? 0 : 0xff) : randomBuffer(rng, smallLength(rng, 4096));
    return Buffer.concat([b, tail]);
  }],
  [3, 'insert-bytes', (rng, b) => {
    const at = below(rng, b.length + 1);
    const ins = chance(rng, 0.5) ? randomBuffer(rng, smallLength(rng, 64)) : Buffer.alloc(smallLength(rng, 64), choose(rng, INTERESTING_8));
    return Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]);
  }],
  [4, 'remove-range', (rng, b) => {
    if (b.length === 0) return b;
    const at = pos(rng, b);
    const n = smallLength(rng, b.length - at);
    return Buffer.concat([b.subarray(0, at), b.subarray(at + n)]);
  }],
  [3, 'duplicate-range', (rng, b) => {
    if (b.length === 0) return b;
    const from = pos(rng, b);
    const n = smallLength(rng, b.length - from);
    const to = below(rng, b.length + 1);
    return Buffer.concat([b.subarray(0, to), b.subarray(from, from + n), b.subarray(to)]);
  }],
  [3, 'copy-over', (rng, b) => {
    if (b.length < 2) return b;
    const out = Buffer.from(b);
    const from = pos(rng, b);
    const n = smallLength(rng, b.length - from);
    b.copy(out, below(rng, b.length), from, from + n);
    return out;
  }],
  [3, 'splice', (rng, b, others) => {
    if (others.length === 0) return b;
    const o = choose(rng, others);
    const a = below(rng, b.length + 1);
    const c = below(rng, o.length + 1);
    return chance(rng, 0.5) ? Buffer.concat([b.subarray(0, a), o.subarray(c)]) : Buffer.concat([o.subarray(0, c), b.subarray(a)]);
  }],
  [4, 'dictionary', (rng, b, _others, hints) => {
    const dict = hints.dictionary;
    if (!dict || dict.length === 0) return b;
    const t = choose(rng, dict);
    const tok = typeof t === 'string' ? Buffer.from(t, 'utf8') : t;
    const at = below(rng, b.length + 1);
    if (chance(rng, 0.5)) return Buffer.concat([b.subarray(0, at), tok, b.subarray(at)]);
    const out = Buffer.from(b);
    tok.copy(out, Math.min(at, Math.max(0, out.length - tok.length)));
    return out;
  }],
  [6, 'field', (rng, b, _others, hints) => {
    const fields = hints.fields?.(b).filter((f) => f.offset + f.width <= b.length) ?? [];
    if (fields.length === 0) return b;
    const f = choose(rng, fields);
    const out = Buffer.from(b);
    const old = readInt(out, f.offset, f.width, f.littleEndian);
    const r = below(rng, 4);
    const v = r === 0 ? old + BigInt(below(rng, 3)) + 1n : r === 1 ? old - BigInt(below(rng, 3)) - 1n : r === 2 ? old * 2n : choose(rng, INTERESTING_INTS);
    intBytes(v, f.width, f.littleEndian).copy(out, f.offset);
    return out;
  }],
];
const BYTE_WEIGHT = BYTE_OPS.reduce((n, [w]) => n + w, 0);

/** One byte-level mutation; returns its name too (for statistics and reproducers). */
export function mutateBytesOnce(rng: Rng, b: Buffer, others: readonly Buffer[] = [], hints: MutationHints = {}): { out: Buffer; op: string } {
  // An operation that does not fit the input (a 4-byte field in 2 bytes) leaves it as it was: try another.
  for (let attempt = 0; ; attempt++) {
    let r = below(rng, BYTE_WEIGHT);
    for (const [w, name, op] of BYTE_OPS) {
      if (r < w) {
        const out = op(rng, b, others, hints);
        if (attempt < 4 && out.equals(b)) break;
        return { out, op: name };
      }
      r -= w;
    }
  }
}

/** How many mutations to stack: mostly one or two, sometimes up to eight. */
export function stackDepth(rng: Rng): number {
  let n = 1;
  while (n < 8 && chance(rng, 0.4)) n++;
  return n;
}

/** 1-8 stacked byte mutations of `b`. */
export function mutateBytes(rng: Rng, b: Buffer, others: readonly Buffer[] = [], hints: MutationHints = {}): Buffer {
  let out = b;
  for (let k = stackDepth(rng); k > 0; k--) out = mutateBytesOnce(rng, out, others, hints).out;
  return out;
}

// ---- JSON values

const MAX_JSON_MUTANT_BYTES = 192 * 1024;

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Numbers a JSON body may carry that validators trip on: signs, fractions, beyond-safe integers, huge. */
export const INTERESTING_NUMBERS = [0, -0, 1, -1, 0.5, -0.5, 1e-7, 255, 256, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2, -(2 ** 53), 1e21, 1e308, -1e308, Number.MIN_VALUE];
export const INTERESTING_STRINGS = [
  '', ' ', '0', '-1', '1e3', 'null', 'true', '__proto__', 'constructor', 'toString', '\u0000', '\ud800', '\udc00x', '\u00e9', 'e\u0301', '\u212a',
  '../x', '/abs', 'C:x', 'a/b', 'a\\b', 'con', 'x'.repeat(65), 'x'.repeat(300), '0'.repeat(64), 'f'.repeat(64), 'F'.repeat(64), 'g'.repeat(64),
];

function randomString(rng: Rng): string {
  const alphabet = 'ab01-_./\\:"\u0000\n\u00e9\ud83d\ude00\ud800';
  let s = '';
  for (let n = smallLength(rng, 80); n > 0; n--) s += alphabet[below(rng, alphabet.length)];
  return s;
}

function interestingValue(rng: Rng, depth = 0): Json {
  switch (below(rng, 9)) {
    case 0:
      return null;
    case 1:
      return chance(rng, 0.5);
    case 2:
    case 3:
      return choose(rng, INTERESTING_NUMBERS);
    case 4:
      return choose(rng, INTERESTING_STRINGS);
    case 5:
      return randomString(rng);
    case 6:
      return depth > 3 ? [] : Array.from({ length: below(rng, 4) }, () => interestingValue(rng, depth + 1));
    case 7:
      return depth > 3 ? {} : Object.fromEntries(Array.from({ length: below(rng, 3) }, () => [choose(rng, INTERESTING_STRINGS), interestingValue(rng, depth + 1)]));
    default: {
      // Deep nesting, for a recursive validator's (or JSON.stringify's) stack: a few levels, or
      // thousands (V8's JSON.stringify overflows somewhere past 4000 here).
      let v: Json = 1;
      for (let k = 1 + (chance(rng, 0.3) ? 3000 + below(rng, 30000) : below(rng, 600)); k > 0; k--) v = chance(rng, 0.7) ? [v] : { a: v };
      return v;
    }
  }
}

/** Every (container, key) slot of a value tree, the root as a slot of a one-element holder. */
function slots(root: { v: Json }): Array<{ parent: Json[] | Record<string, Json>; key: string | number }> {
  const out: Array<{ parent: Json[] | Record<string, Json>; key: string | number }> = [{ parent: root as unknown as Record<string, Json>, key: 'v' }];
  const walk = (v: Json, depth: number): void => {
    if (depth > 64 || out.length > 4096 || v === null || typeof v !== 'object') return;
    if (Array.isArray(v)) v.forEach((c, i) => { out.push({ parent: v, key: i }); walk(c, depth + 1); });
    else for (const k of Object.keys(v)) { out.push({ parent: v, key: k }); walk(v[k]!, depth + 1); }
  };
  walk(root.v, 0);
  return out;
}

/** Set a slot the way JSON.parse does: an own data property, also for a key like `__proto__`. */
function put(parent: Json[] | Record<string, Json>, key: string | number, v: Json): void {
  Object.defineProperty(parent, key, { value: v, writable: true, enumerable: true, configurable: true });
}

/** A deep copy as JSON.parse makes it (own `__proto__` keys kept), at any depth. */
function clone<T extends Json>(v: T): T {
  return JSON.parse(writeJson(v)) as T;
}

class Literal {
  constructor(readonly text: string) {}
}

/** JSON.stringify without recursion: a value nested 100,000 deep is text like any other. */
export function writeJson(v: Json): string {
  const out: string[] = [];
  const todo: Array<Json | Literal> = [v];
  while (todo.length > 0) {
    const t = todo.pop()!;
    if (t instanceof Literal) out.push(t.text);
    else if (t === null || typeof t !== 'object') out.push(JSON.stringify(t) ?? 'null');
    else if (Array.isArray(t)) {
      out.push('[');
      todo.push(new Literal(']'));
      for (let i = t.length - 1; i >= 0; i--) {
        todo.push(t[i] === undefined ? null : t[i]!);
        if (i > 0) todo.push(new Literal(','));
      }
    } else {
      out.push('{');
      todo.push(new Literal('}'));
      const keys = Object.keys(t);
      for (let i = keys.length - 1; i >= 0; i--) {
        todo.push(t[keys[i]!]!, new Literal(`${JSON.stringify(keys[i])}:`));
        if (i > 0) todo.push(new Literal(','));
      }
    }
  }
  return out.join('');
}

function subtrees(v: Json): Json[] {
  return slots({ v }).map((s) => (s.parent as Record<string | number, Json>)[s.key]!);
}

/** One edit of a JSON value tree (in place on a copy). */
function mutateJsonOnce(rng: Rng, value: Json, others: readonly Json[], keys: readonly string[]): Json {
  const root = { v: clone(value) };
  const all = slots(root);
  const s = choose(rng, all);
  const parent = s.parent as Record<string | number, Json>;
  const cur = parent[s.key]!;
  switch (below(rng, 10)) {
    case 0:
    case 1:
    case 2:
      put(s.parent, s.key, interestingValue(rng));
      break;
    case 3: // a number nudged, a string cut or grown
      if (typeof cur === 'number') put(s.parent, s.key, chance(rng, 0.5) ? cur + (chance(rng, 0.5) ? 1 : -1) : -cur);
      else if (typeof cur === 'string') put(s.parent, s.key, chance(rng, 0.5) ? cur.slice(0, below(rng, cur.length + 1)) : cur + cur.slice(0, 1 + below(rng, 8)).repeat(1 + below(rng, 40)));
      else put(s.parent, s.key, interestingValue(rng));
      break;
    case 4: // remove this slot
      if (Array.isArray(s.parent)) s.parent.splice(s.key as number, 1);
      else if (s.parent !== (root as unknown)) delete parent[s.key];
      break;
    case 5: { // add a key (known to the target, or odd) to an object, or an element to an array
      const target = cur !== null && typeof cur === 'object' ? cur : null;
      if (Array.isArray(target)) target.splice(below(rng, target.length + 1), 0, chance(rng, 0.5) && target.length > 0 ? clone(choose(rng, target)) : interestingValue(rng));
      else if (target) put(target, chance(rng, 0.7) && keys.length > 0 ? choose(rng, keys) : choose(rng, INTERESTING_STRINGS), interestingValue(rng));
      else put(s.parent, s.key, interestingValue(rng));
      break;
    }
    case 6: // wrap in an array, or unwrap
      put(s.parent, s.key, Array.isArray(cur) && cur.length > 0 ? cur[0]! : [cur]);
      break;
    case 7: { // a subtree of another input in its place
      const o = others.length > 0 ? choose(rng, others) : value;
      put(s.parent, s.key, clone(choose(rng, subtrees(o))));
      break;
    }
    case 8: // array: emptied, or one element repeated many times
      if (Array.isArray(cur)) {
        const one = cur.length > 0 ? writeJson(cur[0]!).length + 1 : 0;
        const n = one === 0 ? 0 : Math.min(1 + below(rng, 3000), Math.ceil(MAX_JSON_MUTANT_BYTES / one));
        put(s.parent, s.key, chance(rng, 0.5) ? Array.from({ length: n }, () => cur[0]!) : []);
      }
      else put(s.parent, s.key, typeof cur === 'string' ? `${cur}${cur}` : writeJson(cur));
      break;
    default: // rename a key
      if (!Array.isArray(s.parent) && s.parent !== (root as unknown)) {
        delete parent[s.key];
        put(s.parent, chance(rng, 0.5) && keys.length > 0 ? choose(rng, keys) : randomString(rng), cur);
      }
  }
  return root.v;
}

/** JSON text of a value that a JSON.parse of any body could give (so no NaN, no undefined). */
export function jsonText(v: Json): Buffer {
  return Buffer.from(writeJson(v), 'utf8');
}

/**
 * Mutations of a JSON body: mostly edits of its value tree, sometimes raw text damage (which the
 * boundary's JSON.parse must turn away). `keys` are field names the parser knows.
 */
export function mutateJson(rng: Rng, text: Buffer, others: readonly Buffer[], keys: readonly string[] = []): Buffer {
  if (chance(rng, 0.15)) return mutateBytes(rng, text, others, { dictionary: ['{', '}', '[', ']', '"', ',', ':', 'null', '1e999', '-0', '"\\ud800"', '{"__proto__":{}}'] });
  let v: Json;
  try {
    v = JSON.parse(text.toString('utf8')) as Json;
  } catch {
    return mutateBytes(rng, text, others);
  }
  const parsedOthers: Json[] = [];
  for (const o of others.slice(0, 8)) {
    try {
      parsedOthers.push(JSON.parse(o.toString('utf8')) as Json);
    } catch {
      // not JSON: not a donor
    }
  }
  // Bodies stay small enough to fuzz quickly (the server's own 2 MiB cap is tested in unit tests).
  let out = text;
  for (let k = stackDepth(rng); k > 0; k--) {
    v = mutateJsonOnce(rng, v, parsedOthers, keys);
    let next: Buffer;
    try {
      next = jsonText(v);
    } catch {
      break; // nested too deep to write
    }
    if (next.length > MAX_JSON_MUTANT_BYTES) break;
    out = next;
  }
  return out === text ? mutateBytes(rng, text, others) : out;
}
