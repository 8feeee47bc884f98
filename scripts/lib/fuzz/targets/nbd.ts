// Fuzz target for src/nbd: a real serveNbdConnection (on a socket re-created by nbdSocket, as carryon serve does) on a Unix socket, fed a client's whole byte
// stream (handshake, options, requests with their payloads), damaged. The checker reads the server's
// answer beside the client bytes and holds the protocol to what a client needs:
// - the server never calls an export outside its size (or writes a read-only one) and never throws;
// - it ends every connection (never a hang), and its bytes parse: the greeting, option replies that
//   answer the client's options in order, then simple replies that each answer an outstanding request
//   by handle, with data exactly as long as the READ asked, equal to what the writes before it left.
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_ERRNO,
  NBD_INFO,
  NBD_MAX_PAYLOAD,
  NBD_OPT,
  NBD_REP,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  nbdSocket,
  serveNbdConnection,
  type NbdExport,
} from '../../../../src/nbd/index.js';
import { unmetered } from '../alloc-meter.js';
import { check, PropertyViolation, type TargetSpec } from '../harness.js';
import { below, chance, choose, intBytes, INTERESTING_INTS, mutateBytes, type IntField, type Rng } from '../mutate.js';
import { mulberry32u32 } from '../../prng.js';

const KiB = 1024;
const OPT_MAGIC = Buffer.from('IHAVEOPT');
const MAX_OPTION_BYTES = 64 * KiB;

/** An in-memory export that records any call outside the rules the connection must keep. */
class CheckedExport implements NbdExport {
  readonly data: Buffer;
  readonly violations: string[] = [];
  constructor(readonly name: string, readonly size: number, readonly readOnly: boolean, readonly preferredBlockSize: number, fast: boolean) {
    this.data = Buffer.alloc(size);
    if (fast) {
      this.readInto = (offset, length, into, at) => {
        this.bounds('readInto', offset, length);
        this.data.copy(into, at, offset, offset + length);
      };
      this.writev = (offset, chunks) => this.write(offset, Buffer.concat(chunks));
    }
  }
  readInto?: NbdExport['readInto'];
  writev?: NbdExport['writev'];
  private bounds(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.size || length > NBD_MAX_PAYLOAD) {
      this.violations.push(`${what}(${offset}, ${length}) on an export of ${this.size} bytes`);
    }
  }
  read(offset: number, length: number): Buffer {
    this.bounds('read', offset, length);
    return Buffer.from(this.data.subarray(offset, offset + length));
  }
  write(offset: number, data: Buffer): void {
    this.bounds('write', offset, data.length);
    if (this.readOnly) this.violations.push('write on a read-only export');
    data.copy(this.data, offset);
  }
  zero(offset: number, length: number): void {
    this.bounds('zero', offset, length);
    if (this.readOnly) this.violations.push('zero on a read-only export');
    this.data.fill(0, offset, Math.min(offset + length, this.size));
  }
  flush(): void {}
}

const EXPORTS: Array<[string, number, boolean, boolean]> = [
  ['disk', 256 * KiB + 3 * 4096 + 512, false, false],
  ['ro', 64 * KiB, true, false],
  ['fast', 128 * KiB + 100, false, true],
];

// ---- client streams

function optBytes(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  OPT_MAGIC.copy(h);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function infoPayload(name: string, requests: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const r = Buffer.alloc(2 + 2 * requests.length);
  r.writeUInt16BE(requests.length, 0);
  requests.forEach((q, i) => r.writeUInt16BE(q, 2 + 2 * i));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(n.length);
  return Buffer.concat([len, n, r]);
}

function request(rng: Rng, type: number, offset: number, length: number, payload?: Buffer, flags = 0): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeUInt32BE(rng(), 8);
  h.writeUInt32BE(rng(), 12);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

function flagsBytes(f: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(f);
  return b;
}

function sampleRequests(rng: Rng, size: number, readOnly: boolean): Buffer[] {
  const data = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => rng() & 0xff));
  const out = [
    request(rng, NBD_CMD.WRITE, 0, 4096, data(4096)),
    request(rng, NBD_CMD.READ, 0, 4096),
    request(rng, NBD_CMD.WRITE, 5000, 100, data(100), 1),
    request(rng, NBD_CMD.READ, 4000, 2000),
    request(rng, NBD_CMD.FLUSH, 0, 0),
    request(rng, NBD_CMD.TRIM, 8192, 4096),
    request(rng, NBD_CMD.WRITE_ZEROES, 0, 512, undefined, 2),
    request(rng, NBD_CMD.CACHE, 0, 65536),
    request(rng, NBD_CMD.READ, size - 512, 512),
    request(rng, NBD_CMD.READ, size - 511, 512), // past the end: EINVAL
    request(rng, NBD_CMD.WRITE, size, 1, data(1)), // past the end: ENOSPC
    request(rng, NBD_CMD.READ, 0, 0),
    request(rng, 9, 0, 0), // unknown command: EINVAL
  ];
  return readOnly ? out.filter((_, i) => i !== 0) : out;
}

function corpusStreams(): Buffer[] {
  const rng = mulberry32u32(41);
  const disc = (): Buffer => request(rng, NBD_CMD.DISC, 0, 0);
  const [disk, ro, fast] = EXPORTS;
  return [
    Buffer.concat([flagsBytes(3), optBytes(NBD_OPT.INFO, infoPayload('disk', [NBD_INFO.NAME, NBD_INFO.BLOCK_SIZE])), optBytes(NBD_OPT.LIST), optBytes(NBD_OPT.GO, infoPayload('disk')), ...sampleRequests(rng, disk![1], false), disc()]),
    Buffer.concat([flagsBytes(1), optBytes(NBD_OPT.EXPORT_NAME, Buffer.from('ro')), ...sampleRequests(rng, ro![1], true), request(rng, NBD_CMD.WRITE, 0, 8, Buffer.alloc(8, 1)), disc()]),
    Buffer.concat([flagsBytes(3), optBytes(NBD_OPT.STRUCTURED_REPLY), optBytes(NBD_OPT.GO, infoPayload('nope')), optBytes(NBD_OPT.GO, infoPayload('fast', [NBD_INFO.NAME])), ...sampleRequests(rng, fast![1], false)]),
    Buffer.concat([flagsBytes(3), optBytes(NBD_OPT.LIST), optBytes(NBD_OPT.ABORT)]),
    Buffer.concat([flagsBytes(2), optBytes(NBD_OPT.EXPORT_NAME, Buffer.from('disk')), request(rng, NBD_CMD.WRITE, 65536, 65536, Buffer.alloc(65536, 7)), request(rng, NBD_CMD.READ, 65536 - 10, 70000), disc()]),
  ];
}

// ---- structure of a client stream, for field-aware mutation

interface StreamPart {
  kind: 'flags' | 'option' | 'request';
  at: number;
  /** Where transmission starts, when this option ends the haggling. */
  type: number;
}

/** Walk a client stream as the server would read it, assuming every GO succeeds. */
function clientParts(b: Buffer): StreamPart[] {
  const parts: StreamPart[] = [{ kind: 'flags', at: 0, type: 0 }];
  let p = 4;
  let transmission = false;
  while (p < b.length && parts.length < 512) {
    if (!transmission) {
      if (p + 16 > b.length) break;
      const option = b.readUInt32BE(p + 8);
      parts.push({ kind: 'option', at: p, type: option });
      p += 16 + b.readUInt32BE(p + 12);
      if (option === NBD_OPT.GO || option === NBD_OPT.EXPORT_NAME) transmission = true;
      if (option === NBD_OPT.ABORT) break;
    } else {
      if (p + 28 > b.length) break;
      const type = b.readUInt16BE(p + 6);
      parts.push({ kind: 'request', at: p, type });
      p += 28 + (type === NBD_CMD.WRITE ? b.readUInt32BE(p + 24) : 0);
    }
  }
  return parts;
}

function nbdFields(b: Buffer): IntField[] {
  const f: IntField[] = [];
  for (const part of clientParts(b)) {
    if (part.kind === 'flags') f.push({ offset: 0, width: 4, littleEndian: false });
    else if (part.kind === 'option') f.push({ offset: part.at + 8, width: 4, littleEndian: false }, { offset: part.at + 12, width: 4, littleEndian: false }, { offset: part.at + 16, width: 4, littleEndian: false });
    else f.push({ offset: part.at + 4, width: 2, littleEndian: false }, { offset: part.at + 6, width: 2, littleEndian: false }, { offset: part.at + 16, width: 8, littleEndian: false }, { offset: part.at + 24, width: 4, littleEndian: false });
  }
  return f;
}

/** Requests cut, repeated, reordered or spliced in from another stream: whole-message edits. */
function mutateMessages(rng: Rng, input: Buffer, corpus: readonly Buffer[]): Buffer {
  const parts = clientParts(input);
  const ends = [...parts.slice(1).map((p) => p.at), input.length];
  const msgs = parts.map((p, i) => input.subarray(p.at, ends[i]));
  const pick = below(rng, msgs.length);
  switch (below(rng, 4)) {
    case 0:
      msgs.splice(pick, 1);
      break;
    case 1:
      msgs.splice(pick, 0, ...Array.from({ length: 1 + below(rng, 80) }, () => msgs[pick]!));
      break;
    case 2: {
      const other = choose(rng, corpus);
      const op = clientParts(other).filter((p) => p.kind === 'request');
      if (op.length > 0) {
        const q = choose(rng, op);
        const end = clientParts(other).find((p) => p.at > q.at)?.at ?? other.length;
        msgs.splice(Math.max(1, pick), 0, other.subarray(q.at, end));
      }
      break;
    }
    default: { // a request's offset or length set to an edge of the export or of the protocol
      const reqs = parts.filter((p) => p.kind === 'request');
      if (reqs.length === 0) break;
      const out = Buffer.from(input);
      const q = choose(rng, reqs);
      const sizes = EXPORTS.map((e) => BigInt(e[1]));
      const v = chance(rng, 0.5) ? choose(rng, sizes) + BigInt(below(rng, 3)) - 1n : choose(rng, INTERESTING_INTS);
      if (chance(rng, 0.5)) intBytes(v, 8, false).copy(out, q.at + 16);
      else intBytes(v, 4, false).copy(out, q.at + 24);
      return out;
    }
  }
  return Buffer.concat(msgs);
}

// ---- the checker

type Reader = { b: Buffer; p: number };
const take = (r: Reader, n: number): Buffer | null => (r.p + n <= r.b.length ? r.b.subarray(r.p, (r.p += n)) : null);

const KNOWN_REPLIES = new Set<number>(Object.values(NBD_REP));
const KNOWN_ERRNOS = new Set<number>([0, ...Object.values(NBD_ERRNO)]);

/** Check the server's bytes against the client's; returns the export it went on with, if any. */
function checkExchange(input: Buffer, out: Buffer, exports: Map<string, CheckedExport>): void {
  const o: Reader = { b: out, p: 0 };
  const hello = take(o, 18);
  check(hello !== null && hello.subarray(0, 8).equals(Buffer.from('NBDMAGIC')) && hello.subarray(8, 16).equals(OPT_MAGIC), 'no NBD greeting');
  if (input.length < 4) return void check(o.p === out.length, 'bytes after the greeting without client flags');
  const clientFlags = input.readUInt32BE(0);
  const noZeroes = (clientFlags & 2) !== 0;
  const i: Reader = { b: input, p: 4 };
  let exp: CheckedExport | null = null;
  // Haggling: each option's replies, in order.
  haggle: for (;;) {
    const h = take(i, 16);
    if (!h || !h.subarray(0, 8).equals(OPT_MAGIC)) break;
    const option = h.readUInt32BE(8);
    const len = h.readUInt32BE(12);
    if (len > MAX_OPTION_BYTES) break;
    const data = take(i, len);
    if (!data) break;
    if (option === NBD_OPT.EXPORT_NAME) {
      if (o.p === out.length) break; // unknown name: closed
      const r = take(o, noZeroes ? 10 : 134);
      check(r !== null, 'short NBD_OPT_EXPORT_NAME reply');
      const e = exports.get(data.toString('utf8'));
      check(e !== undefined && r.readBigUInt64BE(0) === BigInt(e.size), 'NBD_OPT_EXPORT_NAME reply for an export the client did not name');
      exp = e;
      break;
    }
    for (;;) {
      if (o.p === out.length) break haggle; // the server stopped (or was cut off) here
      const r = take(o, 20);
      check(r !== null && r.readBigUInt64BE(0) === NBD_REP_MAGIC, 'an option reply without its magic');
      check(r.readUInt32BE(8) === option, `a reply to option ${r.readUInt32BE(8)} where option ${option} was asked`);
      const type = r.readUInt32BE(12);
      check(KNOWN_REPLIES.has(type), `unknown option reply type ${type}`);
      const body = take(o, r.readUInt32BE(16));
      check(body !== null, 'option reply shorter than its length');
      if (type === NBD_REP.ACK) {
        if (option === NBD_OPT.ABORT) break haggle;
        if (option === NBD_OPT.GO) {
          const nameLen = data.readUInt32BE(0);
          exp = exports.get(data.subarray(4, 4 + nameLen).toString('utf8')) ?? null;
          check(exp !== null, 'NBD_OPT_GO acknowledged for an unknown export');
          break haggle;
        }
        break;
      }
      if (type >= 0x80000000) break; // an error ends this option
    }
  }
  if (!exp) return void check(o.p === out.length, `${out.length - o.p} bytes after the haggling ended`);
  // Transmission: the client's requests, and a model of the export's bytes.
  const model = Buffer.alloc(exp.size);
  const pending = new Map<string, Array<{ type: number; offset: bigint; length: number; expect: Buffer | null }>>();
  let disconnected = false;
  for (;;) {
    const h = take(i, 28);
    if (!h || h.readUInt32BE(0) !== NBD_REQUEST_MAGIC) break;
    const type = h.readUInt16BE(6);
    const handle = h.subarray(8, 16).toString('hex');
    const offset = h.readBigUInt64BE(16);
    const length = h.readUInt32BE(24);
    const inRange = offset + BigInt(length) <= BigInt(exp.size);
    if (type === NBD_CMD.DISC) {
      disconnected = true;
      break;
    }
    let expect: Buffer | null = null;
    // The spec: a flag the command does not define, or that was not negotiated, is EINVAL and the command
    // is not applied. The export advertises FUA (on every command), never FAST_ZERO or DF; NO_HOLE is
    // defined for WRITE_ZEROES.
    const flags = h.readUInt16BE(4);
    const allowed = NBD_CMD_FLAG.FUA | (type === NBD_CMD.WRITE_ZEROES ? NBD_CMD_FLAG.NO_HOLE : 0);
    const flagsOk = (flags & ~allowed) === 0;
    if (type === NBD_CMD.WRITE) {
      if (length > NBD_MAX_PAYLOAD) break;
      const payload = take(i, length);
      if (!payload) break;
      if (inRange && !exp.readOnly && flagsOk) payload.copy(model, Number(offset));
    } else if ((type === NBD_CMD.TRIM || type === NBD_CMD.WRITE_ZEROES) && inRange && !exp.readOnly && flagsOk) {
      model.fill(0, Number(offset), Number(offset) + length);
    } else if (type === NBD_CMD.READ && inRange && length <= NBD_MAX_PAYLOAD) {
      expect = Buffer.from(model.subarray(Number(offset), Number(offset) + length));
    }
    const list = pending.get(handle) ?? [];
    list.push({ type, offset, length, expect });
    pending.set(handle, list);
  }
  while (o.p < out.length) {
    const r = take(o, 16);
    check(r !== null && r.readUInt32BE(0) === NBD_SIMPLE_REPLY_MAGIC, 'a transmission reply without its magic');
    const errno = r.readUInt32BE(4);
    check(KNOWN_ERRNOS.has(errno), `unknown errno ${errno} in a reply`);
    const list = pending.get(r.subarray(8, 16).toString('hex'));
    check(list !== undefined && list.length > 0, 'a reply to no outstanding request');
    const q = list.shift()!;
    if (q.type === NBD_CMD.READ && errno === 0) {
      const data = take(o, q.length);
      check(data !== null, 'a READ reply shorter than the READ');
      check(q.expect !== null && data.equals(q.expect), `READ(${q.offset}, ${q.length}) returned other bytes than the writes before it left`);
    }
    check(errno !== 0 || q.type !== NBD_CMD.READ || q.expect !== null, 'a READ outside the export succeeded');
  }
  // A client that says goodbye (NBD_CMD_DISC) gets the answers to everything it asked before.
  if (disconnected) {
    const unanswered = [...pending.values()].reduce((n, l) => n + l.length, 0);
    check(unanswered === 0, `${unanswered} requests before NBD_CMD_DISC were never answered`);
  }
}

export const nbdTarget: TargetSpec = {
  name: 'nbd',
  about: 'serveNbdConnection (src/nbd) on a Unix socket with damaged client streams: bounded export calls, replies that parse and answer the requests',
  create: async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'carryon-fuzz-nbd-'));
    const sock = path.join(dir, 'nbd.sock');
    let exports = new Map<string, CheckedExport>();
    let served: Promise<void> = Promise.resolve();
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      served = serveNbdConnection(nbdSocket(s), { lookup: (name) => exports.get(name) ?? null, list: () => [...exports.keys()] });
    });
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    return {
      codes: [],
      corpus: corpusStreams,
      mutate: (rng, input, corpus) => (chance(rng, 0.3) ? mutateMessages(rng, input, corpus) : mutateBytes(rng, input, corpus, { fields: nbdFields, dictionary: [OPT_MAGIC, Buffer.from([0x25, 0x60, 0x95, 0x13])] })),
      async run(input) {
        exports = unmetered(() => new Map(EXPORTS.map(([name, size, ro, fast]) => [name, new CheckedExport(name, size, ro, 4096, fast)])));
        const out = await new Promise<Buffer>((resolve, reject) => {
          const c = net.createConnection(sock);
          const parts: Buffer[] = [];
          c.on('data', (d: Buffer) => parts.push(d));
          c.on('error', () => undefined); // EPIPE or ECONNRESET once the server hangs up: seen as 'close'
          c.on('close', () => resolve(unmetered(() => Buffer.concat(parts))));
          c.on('connect', () => c.end(input));
          c.setTimeout(20_000, () => reject(new Error('the client socket saw nothing for 20 s')));
        });
        await served;
        const violations = [...exports.values()].flatMap((e) => e.violations);
        if (violations.length > 0) throw new PropertyViolation(`export called outside the rules: ${violations.slice(0, 3).join('; ')}`);
        unmetered(() => checkExchange(input, out, exports));
      },
      // The server's largest buffers: a write payload (from the input) and a read reply (one export's size).
      allocationCap: (input) => 2 * input.length + 2 * 512 * KiB + 256 * KiB,
      async close() {
        await new Promise<void>((resolve) => server.close(() => resolve()));
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
