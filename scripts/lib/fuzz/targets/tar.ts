// Fuzz target for src/wire/tar.ts unpackEntries: upload tar streams (as packEntries writes them),
// damaged in their bytes and in their header fields (octal and base-256 sizes, type flags, pax
// records), with header checksums repaired half the time so the damage reaches the fields behind them.
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { CarryonError } from '../../../../src/errors/index.js';
import { blockId } from '../../../../src/hash/index.js';
import { packEntries, parseUploadEntryName, unpackEntries, uploadEntryName, type TarEntry } from '../../../../src/wire/index.js';
import { check, type TargetSpec } from '../harness.js';
import { below, chance, choose, mutateBytes, type Rng } from '../mutate.js';
import { mulberry32u32 } from '../../prng.js';
import { textLike } from './inputs.js';
import { piecesOf } from './rdiff.js';

const KiB = 1024;
const TAR_MAX_ENTRY = 64 * KiB;

/** Size field of a tar header (octal text or base-256), as tar-stream reads it; NaN if unreadable. */
function headerSize(h: Buffer): number {
  const f = h.subarray(124, 136);
  if (f[0]! & 0x80) {
    let v = 0;
    for (let i = 1; i < 12; i++) v = v * 256 + (f[0] === 0xff ? 0xff - f[i]! : f[i]!);
    return f[0] === 0xff ? -v : v;
  }
  const s = f.toString('latin1').replace(/\0.*$/s, '').trim();
  return s === '' ? 0 : parseInt(s, 8);
}

/** Offsets of the headers of a tar stream, walking entry sizes until the end blocks or damage. */
export function tarHeaders(b: Buffer): number[] {
  const out: number[] = [];
  for (let off = 0; off + 512 <= b.length && out.length < 256;) {
    const h = b.subarray(off, off + 512);
    if (h.every((x) => x === 0)) break;
    out.push(off);
    const size = headerSize(h);
    if (!(size >= 0) || !Number.isSafeInteger(size)) break;
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

/** Every header's checksum recomputed (six octal digits, NUL, space, as tar writes it). */
export function fixTarChecksums(b: Buffer): Buffer {
  const out = Buffer.from(b);
  for (const off of tarHeaders(out)) {
    const h = out.subarray(off, off + 512);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const x of h) sum += x;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  }
  return out;
}

const OCTALS = ['0', '1', '777', '1000', '200000', '7777777', '77777777777', '100000000000', '17777777777', '-1', ' 12 ', '', 'z', '8', '0x10', '1e3'];
const TYPEFLAGS = ['0', '\0', '1', '2', '3', '5', '7', 'x', 'g', 'L', 'K', 'S', 'V', 'A', '\xff'];
const PAX = ['20 size=99999999999\n', '17 size=70000\n', '12 size=-1\n', '30 path=b/../../../etc/passwd\n', '9 path=\n', '99999 path=x\n', '0 x=y\n', 'garbage'];

/** One change to a field of one header: size, mode, mtime, type flag, magic, name or a pax record. */
function mutateTarField(rng: Rng, input: Buffer): Buffer {
  const heads = tarHeaders(input);
  if (heads.length === 0) return mutateBytes(rng, input);
  const out = Buffer.from(input);
  const off = choose(rng, heads);
  const h = out.subarray(off, off + 512);
  switch (below(rng, 7)) {
    case 0:
    case 1: { // size, octal or base-256
      h.fill(0, 124, 136);
      if (chance(rng, 0.3)) {
        h[124] = chance(rng, 0.8) ? 0x80 : 0xff;
        for (let i = 125; i < 136; i++) h[i] = chance(rng, 0.6) ? 0 : rng() & 0xff;
      } else h.write(choose(rng, OCTALS).padStart(11, chance(rng, 0.5) ? '0' : ' ').slice(-12), 124, 'latin1');
      break;
    }
    case 2:
      h[156] = choose(rng, TYPEFLAGS).charCodeAt(0);
      break;
    case 3: // mode, uid, gid or mtime
      h.write(choose(rng, OCTALS).slice(0, 7), choose(rng, [100, 108, 116, 136]), 'latin1');
      break;
    case 4: // magic: ustar, gnu, none
      h.write(choose(rng, ['ustar\x0000', 'ustar  \0', '\0\0\0\0\0\0\0\0']), 257, 'latin1');
      break;
    case 5: { // name or prefix
      const names = ['', '/', '../x', 'b/', `b/${'0'.repeat(64)}`, 'x'.repeat(100), '\u00e9', 'a\0b'];
      const at = chance(rng, 0.5) ? 0 : 345;
      h.fill(0, at, at + (at === 0 ? 100 : 155));
      h.write(choose(rng, names), at, 'utf8');
      break;
    }
    default: { // a pax header with records before this entry
      const pax = Buffer.from(choose(rng, PAX) + (chance(rng, 0.5) ? choose(rng, PAX) : ''), 'latin1');
      const ph = Buffer.alloc(512);
      ph.write('PaxHeader/x', 0, 'latin1');
      ph.write('0000644\0', 100, 'latin1');
      ph.write(`${pax.length.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
      ph.write('00000000000\0', 136, 'latin1');
      ph[156] = chance(rng, 0.8) ? 0x78 : 0x67; // 'x' or 'g'
      ph.write('ustar\x0000', 257, 'latin1');
      const body = Buffer.concat([pax, Buffer.alloc((512 - (pax.length % 512)) % 512)]);
      return Buffer.concat([out.subarray(0, off), ph, body, out.subarray(off)]);
    }
  }
  return out;
}

export const tarTarget: TargetSpec = {
  name: 'tar',
  about: 'unpackEntries (src/wire/tar.ts) with a 64 KiB entry limit, fed in pieces; accepted entries re-pack and unpack the same, a consumer error passes through unchanged',
  create: () => ({
    codes: ['TAR_INVALID', 'PAYLOAD_TOO_LARGE', 'ABORTED'],
    async corpus() {
      const rng = mulberry32u32(31);
      const sets: TarEntry[][] = [[], [{ name: 'b/x', data: Buffer.alloc(0) }]];
      const sizes = [0, 1, 511, 512, 513, 3000, TAR_MAX_ENTRY];
      const entries = sizes.map((n, i) => {
        const data = textLike(rng, n);
        const id = blockId(data);
        return { name: i % 2 === 0 ? uploadEntryName({ kind: 'block', id }) : uploadEntryName({ kind: 'patch', id, base: blockId(Buffer.from([i])) }), data };
      });
      sets.push(entries.slice(0, 3), entries.slice(3, 5), entries.slice(5), entries);
      return Promise.all(sets.map((s) => buffer(packEntries(s))));
    },
    mutate: (rng, input, corpus) => (chance(rng, 0.5) ? mutateTarField(rng, input) : mutateBytes(rng, input, corpus, { dictionary: ['ustar', '\0'.repeat(512), '0000644\0'] })),
    fixup: fixTarChecksums,
    async run(input) {
      const entries: TarEntry[] = [];
      // A consumer that refuses one entry (say, a block whose bytes do not match its id) on some inputs:
      // its error must come out of unpackEntries unchanged.
      const refuseAt = input.length % 7 === 3 ? 1 : -1;
      const refusal = new CarryonError('ABORTED', 'the consumer refused an entry');
      let count: number;
      try {
        count = await unpackEntries(Readable.from(piecesOf(input)), TAR_MAX_ENTRY, (e) => {
          if (entries.length === refuseAt) throw refusal;
          entries.push(e);
        });
      } catch (err) {
        if (err instanceof CarryonError && err.code === 'ABORTED') check(err === refusal, 'the consumer\'s error did not pass through unchanged');
        throw err;
      }
      check(count === entries.length, `unpackEntries counted ${count} entries and delivered ${entries.length}`);
      let total = 0;
      for (const e of entries) {
        check(e.data.length <= TAR_MAX_ENTRY, 'an entry over the limit was delivered');
        total += e.data.length;
      }
      check(total <= input.length, 'entries hold more bytes than the stream');
      // What the server acts on (entries named in the upload grammar) re-packs to the same entries.
      const named = entries.filter((e) => {
        try {
          parseUploadEntryName(e.name);
          return true;
        } catch {
          return false;
        }
      });
      const again: TarEntry[] = [];
      await unpackEntries(packEntries(named), TAR_MAX_ENTRY, (e) => void again.push(e));
      check(again.length === named.length && again.every((e, i) => e.name === named[i]!.name && e.data.equals(named[i]!.data)), 'entries do not re-pack and unpack the same');
    },
    allocationCap: (input) => 4 * input.length + 2 * TAR_MAX_ENTRY + 64 * KiB,
  }),
};
