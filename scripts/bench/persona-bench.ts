// The persona benchmark: bytes over the wire and wall time of a carryon check-in whose persona changed,
// against rsync (-a, -az, zlib, zstd) and rdiff + zstd run on the same edits in the same job.
// A seeded profile of --size bytes is generated from real files (documents, programs, pictures and
// downloads from /usr; mailboxes, a PST-like store and logs made of real text and real compressed
// bytes); laptop B pushes it as the baseline version, laptop A checks the desktop out, edits ~1% of the
// files (appends, same-size edits, renames, plus a few new and deleted files) and checks in.
// Owns the profile, the edits, the measuring and the report; the carryon side runs the real CLIs as
// processes. See README.md beside this file for what each number means.
//
// Usage: node dist/scripts/bench/persona-bench.js [--size 1G] [--seed N] [--out results.json] [--keep] [--no-carryon]

import { createHash } from 'node:crypto';
import http from 'node:http';
import { closeSync, fstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { basename, dirname, extname, join, relative } from 'node:path';
import { checkPersonaPath, personaPathKey, PERSONA_CHUNK_BYTES, type PersonaEntry } from '../../src/persona/index.js';
import { MAX_PERSONA_ENTRY_BYTES } from '../../src/wire/index.js';
import { carryon, carryonMissing, carryonServer, num, serverGone, str, startServer, type Json, type RunningServer } from '../lib/carryon-cli.js';
import { mb, mib, parseSize, percent, ratio, secs, table } from '../lib/format.js';
import { listHostFiles, looksBinary, looksText, type HostFile } from '../lib/host-files.js';
import { mulberry32, pick, randInt, randomBytesSeeded, seededRank, shuffled, type Rng } from '../lib/prng.js';
import { requireTool, run, settleBeforeEachRun, toolVersion } from '../lib/proc.js';
import { parseRsyncStats, type Measure } from '../lib/measure.js';
import { readArgs } from '../lib/args.js';

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  size: number;
  seed: number;
  out?: string;
  keep: boolean;
  carryon: boolean;
  /** The server's block store: its default (a file per block) or `pack` (PackBlockStore, pack:// URL). */
  serverStore: 'default' | 'pack';
}

const USAGE = `usage: persona-bench.js [--size 1G] [--seed N] [--out FILE] [--keep] [--no-carryon]
  --size       bytes of the generated profile (default 1G; 128M for a quick run)
  --seed       picks the files and the edits (default 300)
  --out        also write all results as JSON to FILE
  --keep       keep the temp folder (trees, server, laptop homes)
  --no-carryon measure only the peers (rsync, rdiff + zstd)
  --server-store default|pack   the server's block store: a file per block (default) or pack files`;

function parseOptions(argv: string[]): Options {
  const o: Options = { size: 1024 ** 3, seed: 300, keep: false, carryon: true, serverStore: 'default' };
  for (const { flag: a, value } of readArgs(argv, USAGE)) {
    if (a === '--size') o.size = parseSize(value());
    else if (a === '--seed') o.seed = Number(value());
    else if (a === '--out') o.out = value();
    else if (a === '--keep') o.keep = true;
    else if (a === '--no-carryon') o.carryon = false;
    else if (a === '--server-store') {
      const v = value();
      if (v !== 'default' && v !== 'pack') throw new Error(`--server-store takes default or pack\n${USAGE}`);
      o.serverStore = v;
    }
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (!Number.isSafeInteger(o.seed)) throw new Error('--seed takes an integer');
  if (o.size < 16 * 1024 ** 2) throw new Error('--size must be at least 16M');
  return o;
}

const benchStart = Date.now();
/** Progress lines, each with the seconds since the bench started. */
const log = (line: string): void => console.log(line.startsWith('\n') ? `\n[${secs((Date.now() - benchStart) / 1000)} s] ${line.slice(1)}` : `[${secs((Date.now() - benchStart) / 1000)} s] ${line}`);
const logUniform = (rng: Rng, lo: number, hi: number): number => Math.round(lo * (hi / lo) ** rng());

// ---------------------------------------------------------------------------------------------
// Real content from this machine. Every pool is put in a seeded order, then split three ways by
// position: 1 in 7 files is kept fresh for the edits (so edits bring bytes new to the profile, which
// no tool can find in the base), the rest go to whole-file copies or to byte feeds (mail bodies,
// attachments, log lines, PST pages).

const COMPRESSED = /\.(gz|xz|bz2|zst|zip|jar|whl|jmod|png|jpe?g|gif|webp|pdf|deb|7z)$/i;
const PICTURE = /\.(png|jpe?g|gif|webp|svg)$/i;

interface PoolSplit {
  whole: HostFile[];
  feed: HostFile[];
  fresh: HostFile[];
}

function split(files: HostFile[], seed: number, feedShare: number): PoolSplit {
  const ranked = files.map((f) => ({ f, r: seededRank(seed, f.path) })).sort((a, b) => (a.r < b.r ? -1 : a.r > b.r ? 1 : 0)).map((x) => x.f);
  const out: PoolSplit = { whole: [], feed: [], fresh: [] };
  let k = 0;
  ranked.forEach((f, i) => {
    if (i % 7 === 0) out.fresh.push(f);
    else (k++ % 6 < feedShare * 6 ? out.feed : out.whole).push(f);
  });
  return out;
}

interface Pools {
  text: PoolSplit;
  docs: PoolSplit;
  bin: PoolSplit;
  compressed: PoolSplit;
  pictures: PoolSplit;
}

function hostPools(seed: number): Pools {
  const all = listHostFiles(['/usr/bin', '/usr/include', '/usr/lib', '/usr/share']);
  // Documents: text files and everything under /usr/share/doc (changelogs.gz, PDFs, HTML).
  const docs = all.filter((f) => f.size >= 64 && f.size <= 4 * 1024 ** 2 && (looksText(f.path) || f.path.startsWith('/usr/share/doc/')));
  const pictures = all.filter((f) => PICTURE.test(f.path) && f.size >= 512);
  const compressed = all.filter((f) => COMPRESSED.test(f.path) && !PICTURE.test(f.path) && f.size >= 1024);
  const bin = all.filter((f) => looksBinary(f) && !looksText(f.path) && !COMPRESSED.test(f.path) && f.size <= 16 * 1024 ** 2);
  const need = (name: string, files: HostFile[]): HostFile[] => {
    if (files.length < 50) throw new Error(`too few ${name} under /usr (${files.length}) to build a profile from`);
    return files;
  };
  // Documents are copied whole; mail bodies and log lines read a third of the text files as a stream.
  const d = split(need('documents', docs), seed + 2, 1 / 3);
  const isText = (f: HostFile): boolean => looksText(f.path);
  return {
    text: { whole: [], feed: need('text files', d.feed.filter(isText)), fresh: d.fresh.filter(isText) },
    docs: { ...d, feed: [] },
    bin: split(need('programs and libraries', bin), seed + 3, 0),
    // Attachments, the PST and the video read compressed bytes as a stream: they need most of them.
    compressed: split(need('compressed files', compressed), seed + 4, 4 / 6),
    pictures: split(need('pictures', pictures), seed + 5, 0),
  };
}

/** Bytes read in sequence through a list of files, cycling when it runs out (counted in `wraps`). */
class Feed {
  private i = 0;
  private buf: Buffer = Buffer.alloc(0);
  private off = 0;
  wraps = 0;
  bytes = 0;
  constructor(
    readonly name: string,
    private readonly files: HostFile[],
  ) {
    if (files.length === 0) throw new Error(`feed ${name} has no files`);
  }

  take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    let empty = 0;
    while (got < n) {
      if (this.off >= this.buf.length) {
        if (this.i >= this.files.length) {
          this.i = 0;
          this.wraps++;
        }
        try {
          this.buf = readFileSync(this.files[this.i++]!.path);
        } catch {
          this.buf = Buffer.alloc(0);
        }
        this.off = 0;
        if (this.buf.length === 0 && ++empty > this.files.length) throw new Error(`feed ${this.name}: no readable file`);
        continue;
      }
      const k = Math.min(n - got, this.buf.length - this.off);
      this.buf.copy(out, got, this.off, this.off + k);
      got += k;
      this.off += k;
    }
    this.bytes += n;
    return out;
  }

  /** Text as it is in the files (UTF-8), except C0 control bytes other than newline and tab, which
   *  become spaces so mail and logs stay text. */
  text(n: number): Buffer {
    const b = this.take(n);
    for (let i = 0; i < b.length; i++) {
      const c = b[i]!;
      if (c < 0x20 && c !== 0x0a && c !== 0x09) b[i] = 0x20;
    }
    return b;
  }

  /** One line of text (no newline inside), about n bytes. */
  line(n: number): string {
    return this.text(n).toString('latin1').replace(/[\n\t]+/g, ' ').trim();
  }
}

/** Whole files in order from a list, each used once across the whole profile. */
class Picker {
  private i = 0;
  constructor(
    private readonly files: HostFile[],
    private readonly used: Set<string>,
  ) {}

  next(maxSize: number): HostFile | undefined {
    while (this.i < this.files.length) {
      const f = this.files[this.i++]!;
      if (f.size > maxSize || this.used.has(f.path)) continue;
      this.used.add(f.path);
      return f;
    }
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The profile

type Kind = 'doc' | 'config' | 'log' | 'program' | 'picture' | 'download' | 'mbox' | 'pst' | 'video';

interface ProfileFile {
  path: string;
  size: number;
  kind: Kind;
  big: boolean;
}

interface Generated {
  files: ProfileFile[];
  bytes: number;
  byKind: Record<string, { files: number; bytes: number }>;
  /** Offsets of each message's X-Mozilla-Status value ("0000", unread) per mailbox. */
  mailStatus: Map<string, number[]>;
  mailMessages: Record<string, number>;
  feeds: Record<string, { bytes: number; wraps: number }>;
  shortfall: Record<string, number>;
  seconds: number;
}

const FIRST = ['Anna', 'Ben', 'Chiara', 'Dmitri', 'Elena', 'Farid', 'Grace', 'Hiro', 'Ines', 'Jonas', 'Kasia', 'Luis', 'Mei', 'Noah', 'Olga', 'Priya', 'Quentin', 'Rosa', 'Sven', 'Tariq'];
const LAST = ['Adler', 'Brown', 'Costa', 'Dubois', 'Eriksen', 'Fischer', 'Garcia', 'Hansen', 'Ivanova', 'Jensen', 'Kowalski', 'Lopez', 'Moreau', 'Nakamura', 'Okafor', 'Petrov', 'Rossi', 'Schmidt', 'Tanaka', 'Weber'];
const DOMAINS = ['example.com', 'corp.example', 'mail.example.org', 'partner.example.net', 'lists.example.org'];
const APPS = ['Mozilla/Thunderbird', 'Microsoft/Teams', 'Code/User', 'Slack', 'Zoom', 'Adobe/Acrobat', 'KeePass', 'Notepad++', 'Spotify', 'JetBrains/IntelliJ'];
const DOC_DIRS = ['Projects', 'Reports', 'Notes', 'Manuals', 'Tax Returns', 'Letters', 'Archive'];
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const pad2 = (n: number): string => String(n).padStart(2, '0');

/** The mbox "From " line date: asctime, UTC. */
function asctime(d: Date): string {
  return `${DAYS[d.getUTCDay()]} ${MONTHS[d.getUTCMonth()]} ${String(d.getUTCDate()).padStart(2, ' ')} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())} ${d.getUTCFullYear()}`;
}

interface MailFeeds {
  text: Feed;
  attach: Feed;
}

/**
 * One mbox message: headers, a real-text body (mbox-escaped), and for one in ten a base64 attachment
 * of real compressed bytes. Returns the bytes and where its X-Mozilla-Status value starts.
 */
function mailMessage(rng: Rng, feeds: MailFeeds, n: number, date: Date, outgoing: boolean): { bytes: Buffer; statusAt: number } {
  const person = (): { name: string; addr: string } => {
    const f = pick(rng, FIRST);
    const l = pick(rng, LAST);
    return { name: `${f} ${l}`, addr: `${f.toLowerCase()}.${l.toLowerCase()}@${pick(rng, DOMAINS)}` };
  };
  const me = { name: 'Pat Carryon', addr: 'pat.carryon@corp.example' };
  const other = person();
  const from = outgoing ? me : other;
  const to = outgoing ? other : me;
  let body = feeds.text.text(logUniform(rng, 300, 30_000)).toString('latin1');
  body = body.replace(/^From /gm, '>From ');
  if (!body.endsWith('\n')) body += '\n';
  const subject = (/[A-Za-z][^\n]{8,70}/.exec(body)?.[0] ?? `note ${n}`).replace(/[^\x20-\x7e]/g, ' ').trim();
  const id = createHash('sha256').update(`${n}:${date.getTime()}:${from.addr}`).digest('hex').slice(0, 24);
  const head = [
    `From ${from.addr} ${asctime(date)}`,
    `From: ${from.name} <${from.addr}>`,
    `To: ${to.name} <${to.addr}>`,
    `Subject: ${rng() < 0.4 ? 'Re: ' : ''}${subject}`,
    `Date: ${date.toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${id}@${from.addr.split('@')[1]}>`,
    'X-Mozilla-Status: ',
  ];
  const statusAt = Buffer.byteLength(head.join('\n'), 'latin1');
  head[head.length - 1] += '0000';
  head.push('X-Mozilla-Status2: 00000000', 'MIME-Version: 1.0');
  let text: string;
  if (rng() < 0.1) {
    const boundary = `----=_Part_${id.slice(0, 12)}`;
    const name = `${pick(rng, ['scan', 'report', 'invoice', 'slides', 'photos', 'contract', 'minutes'])}-${randInt(rng, 100, 999)}.${pick(rng, ['pdf', 'zip', 'jpg', 'docx', 'xlsx'])}`;
    const b64 = feeds.attach.take(logUniform(rng, 8 * 1024, 1024 * 1024)).toString('base64').replace(/.{76}/g, '$&\n');
    text = [...head, `Content-Type: multipart/mixed; boundary="${boundary}"`, '', `--${boundary}`, 'Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit', '', body,
      `--${boundary}`, `Content-Type: application/octet-stream; name="${name}"`, 'Content-Transfer-Encoding: base64', `Content-Disposition: attachment; filename="${name}"`, '',
      b64.endsWith('\n') ? b64 : b64 + '\n', `--${boundary}--`, '', ''].join('\n');
  } else {
    text = [...head, 'Content-Type: text/plain; charset=utf-8', 'Content-Transfer-Encoding: 8bit', '', body, ''].join('\n');
  }
  return { bytes: Buffer.from(text, 'latin1'), statusAt };
}

/** Write messages into an open mailbox from offset `start` until it holds `target` bytes. */
function writeMessages(fd: number, start: number, rng: Rng, feeds: MailFeeds, opts: { target: number; from: Date; outgoing: boolean; first: number }):
  { end: number; statusAt: number[]; messages: number; payload: Buffer[] } {
  let at = start;
  let t = opts.from.getTime();
  const statusAt: number[] = [];
  const payload: Buffer[] = [];
  let n = 0;
  while (at < opts.target) {
    t += logUniform(rng, 60_000, 36 * 3600_000);
    const m = mailMessage(rng, feeds, opts.first + n, new Date(t), opts.outgoing);
    writeSync(fd, m.bytes, 0, m.bytes.length, at);
    statusAt.push(at + m.statusAt);
    payload.push(m.bytes);
    at += m.bytes.length;
    n++;
  }
  return { end: at, statusAt, messages: n, payload };
}

/** A PST-like store: a 512-byte header, then 8 KiB pages (16-byte page header + payload). Outlook keeps
 *  text as UTF-16LE, so text pages hold real text that way; the others hold real compressed bytes. */
const PST_PAGE = 8192;
const PST_HEADER = 512;

function pstPage(rng: Rng, text: Feed, attach: Feed, id: number): Buffer {
  const page = Buffer.alloc(PST_PAGE);
  const payload = page.subarray(16);
  if (rng() < 0.5) Buffer.from(text.text(payload.length / 2).toString('latin1'), 'utf16le').copy(payload);
  else attach.take(payload.length).copy(payload);
  page.writeUInt8(rng() < 0.5 ? 0x80 : 0x81, 0);
  page.writeUInt16LE(0xbcde, 2);
  createHash('sha256').update(payload).digest().copy(page, 4, 0, 4);
  page.writeBigUInt64LE(BigInt(id), 8);
  return page;
}

function logLine(rng: Rng, text: Feed, t: number): string {
  const level = pick(rng, ['INFO ', 'INFO ', 'INFO ', 'DEBUG', 'WARN ', 'ERROR']);
  const mod = pick(rng, ['net', 'sync', 'ui', 'auth', 'db', 'cache', 'update', 'plugin']);
  return `${new Date(t).toISOString()} ${level} [${mod}] ${text.line(randInt(rng, 30, 160))}\n`;
}

/** Generate the profile into `root`. Same seed, same machine: same bytes. */
function generateProfile(root: string, size: number, seed: number, pools: Pools): Generated {
  const started = Date.now();
  const rng = mulberry32(seed);
  const used = new Set<string>();
  const keys = new Set<string>();
  const dirKeys = new Map<string, string>();
  const files: ProfileFile[] = [];
  const shortfall: Record<string, number> = {};
  const feeds = { text: new Feed('text', pools.text.feed), attach: new Feed('compressed', pools.compressed.feed) };
  // Timestamps in 2023-2024, so the profile looks lived in (and is the same every run).
  const stamp = (p: string): void => {
    const t = 1672531200 + Math.floor(rng() * 63_000_000);
    utimesSync(join(root, p), t, t);
  };
  /** Claim a profile path: valid for carryon and unique case-insensitively, else undefined. */
  const claim = (p: string): string | undefined => {
    try {
      checkPersonaPath(p);
    } catch {
      return undefined;
    }
    const k = personaPathKey(p);
    if (keys.has(k) || dirKeys.has(k)) return undefined;
    // A file may not share a name with a folder on its path, nor a folder be spelled two ways.
    const parts = p.split('/');
    const folders = parts.slice(1).map((_, i) => parts.slice(0, i + 1).join('/'));
    if (folders.some((q) => keys.has(personaPathKey(q)) || (dirKeys.has(personaPathKey(q)) && dirKeys.get(personaPathKey(q)) !== q))) return undefined;
    keys.add(k);
    for (const q of folders) dirKeys.set(personaPathKey(q), q);
    return p;
  };
  const add = (p: string, kind: Kind, size: number, big = false): void => {
    files.push({ path: p, kind, size, big });
    stamp(p);
  };
  const writeNew = (p: string, data: Buffer, mode = 0o644): void => {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), data, { mode });
  };

  // Big files: a few hundred MB in a handful of files.
  const mailFeeds: MailFeeds = { text: feeds.text, attach: feeds.attach };
  const mailStatus = new Map<string, number[]>();
  const mailMessages: Record<string, number> = {};
  const mailbox = (p: string, share: number, from: string, outgoing: boolean): void => {
    claim(p);
    mkdirSync(dirname(join(root, p)), { recursive: true });
    const fd = openSync(join(root, p), 'w');
    try {
      const r = writeMessages(fd, 0, rng, mailFeeds, { target: Math.round(size * share), from: new Date(from), outgoing, first: 0 });
      mailStatus.set(p, r.statusAt);
      mailMessages[p] = r.messages;
      add(p, 'mbox', r.end, true);
    } finally {
      closeSync(fd);
    }
  };
  mailbox('Mail/Inbox.mbox', 0.17, '2023-06-01T08:00:00Z', false);
  mailbox('Mail/Sent.mbox', 0.05, '2023-06-01T09:00:00Z', true);
  mailbox('Mail/Archive 2023.mbox', 0.07, '2022-01-01T08:00:00Z', false);
  {
    const p = claim('AppData/Local/Microsoft/Outlook/Outlook.pst')!;
    mkdirSync(dirname(join(root, p)), { recursive: true });
    const fd = openSync(join(root, p), 'w');
    try {
      const header = randomBytesSeeded(seed, 1, PST_HEADER);
      header.write('!BDN', 0, 'latin1');
      writeSync(fd, header);
      const pages = Math.max(16, Math.floor((size * 0.13) / PST_PAGE));
      for (let i = 0; i < pages; i++) writeSync(fd, pstPage(rng, feeds.text, feeds.attach, i));
      add(p, 'pst', PST_HEADER + pages * PST_PAGE, true);
    } finally {
      closeSync(fd);
    }
  }
  {
    const p = claim('Videos/Holiday 2023.mp4')!;
    mkdirSync(dirname(join(root, p)), { recursive: true });
    const fd = openSync(join(root, p), 'w');
    const total = Math.round(size * 0.04);
    try {
      for (let done = 0; done < total; ) {
        const n = Math.min(1024 * 1024, total - done);
        writeSync(fd, feeds.attach.take(n));
        done += n;
      }
      add(p, 'video', total, true);
    } finally {
      closeSync(fd);
    }
  }

  // Logs: generated lines of real text, a few MB in all.
  {
    let budget = Math.round(size * 0.02);
    const day = Date.parse('2024-01-01T00:00:00Z');
    for (let i = 0; budget > 0; i++) {
      const app = APPS[i % APPS.length]!;
      const p = claim(`AppData/Roaming/${app}/logs/${basename(app).toLowerCase()}-${new Date(day + i * 86_400_000).toISOString().slice(0, 10)}.log`);
      if (!p) continue;
      const want = Math.min(budget, logUniform(rng, 4096, Math.max(8192, size * 0.004)));
      const lines: string[] = [];
      let n = 0;
      let t = day + i * 86_400_000;
      while (n < want) {
        t += randInt(rng, 10, 60_000);
        const l = logLine(rng, feeds.text, t);
        lines.push(l);
        n += l.length;
      }
      const data = Buffer.from(lines.join(''), 'latin1');
      writeNew(p, data);
      add(p, 'log', data.length);
      budget -= data.length;
    }
  }

  // Small and medium whole files, category by category; what one cannot fill goes to the next.
  const parentOf = (f: HostFile): string => basename(dirname(f.path));
  const bucket = (name: string, n: number): number => parseInt(seededRank(seed, name), 16) % n;
  const atLeast = (files: HostFile[], min: number, also: (f: HostFile) => boolean = () => true): HostFile[] => files.filter((f) => f.size >= min && also(f));
  const CONFIG = /\.(conf|cfg|ini|json|xml|ya?ml|desktop)$/i;
  const categories: Array<{ kind: Kind; share: number; picker: Picker; max: number; place: (f: HostFile) => string[] }> = [
    { kind: 'picture', share: 0.02, picker: new Picker(atLeast(pools.pictures.whole, 2048), used), max: 4 * 1024 ** 2, place: (f) => [`Pictures/${parentOf(f)}/${basename(f.path)}`] },
    { kind: 'download', share: 0.09, picker: new Picker(atLeast(pools.compressed.whole, 64 * 1024), used), max: 24 * 1024 ** 2, place: (f) => [`Downloads/${basename(f.path)}`, `Downloads/${parentOf(f)}-${basename(f.path)}`] },
    { kind: 'config', share: 0.01, picker: new Picker(atLeast(pools.docs.whole, 64, (f) => CONFIG.test(f.path)), used), max: 64 * 1024, place: (f) => [`AppData/Roaming/${APPS[bucket(parentOf(f), APPS.length)]}/${parentOf(f)}/${basename(f.path)}`] },
    { kind: 'doc', share: 0.19, picker: new Picker(pools.docs.whole, used), max: 4 * 1024 ** 2, place: (f) => [`Documents/${DOC_DIRS[bucket(parentOf(f), DOC_DIRS.length)]}/${parentOf(f)}/${basename(f.path)}`] },
    { kind: 'program', share: 0.21, picker: new Picker(pools.bin.whole, used), max: 16 * 1024 ** 2, place: (f) => [`AppData/Local/Programs/${parentOf(f)}/${basename(f.path)}`] },
  ];
  let carry = 0;
  for (const [ci, c] of categories.entries()) {
    const last = ci === categories.length - 1;
    let budget = Math.round(size * c.share) + carry;
    // Remaining budget on the last category: whatever the whole profile still lacks.
    if (last) budget = size - files.reduce((n, f) => n + f.size, 0);
    const max = Math.max(64 * 1024, Math.min(c.max, Math.floor(budget / 4)));
    let misses = 0;
    while (budget > 0) {
      const f = c.picker.next(Math.min(max, budget));
      if (!f) break;
      const p = c.place(f).find((q) => claim(q) !== undefined);
      if (!p) {
        if (++misses > 100_000) break;
        continue;
      }
      let data: Buffer;
      try {
        data = readFileSync(f.path);
      } catch {
        continue;
      }
      writeNew(p, data, c.kind === 'program' ? (f.mode & 0o755) | 0o600 : 0o644);
      add(p, c.kind, data.length);
      budget -= data.length;
    }
    carry = Math.max(0, budget);
    // Less than the largest file allowed is just the last file not fitting.
    if (carry > max) shortfall[c.kind] = carry;
  }
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const byKind: Record<string, { files: number; bytes: number }> = {};
  for (const f of files) {
    const k = (byKind[f.kind] ??= { files: 0, bytes: 0 });
    k.files++;
    k.bytes += f.size;
  }
  return {
    files, bytes: files.reduce((n, f) => n + f.size, 0), byKind, mailStatus, mailMessages, shortfall, seconds: (Date.now() - started) / 1000,
    feeds: Object.fromEntries(Object.values(feeds).map((f) => [f.name, { bytes: f.bytes, wraps: f.wraps }])),
  };
}

// ---------------------------------------------------------------------------------------------
// The edits: ~1% of the files by count, seeded, applied in place to a copy of the profile.

type Action = 'append' | 'in-place' | 'rename' | 'new' | 'delete';

interface EditRecord {
  path: string;
  action: Action;
  kind: Kind;
  /** Bytes written (appended, overwritten, or the new file's size); 0 for renames and deletions. */
  bytes: number;
  /** Renames: the new path. */
  to?: string;
  detail?: string;
}

interface Edits {
  records: EditRecord[];
  /** Files edited (appends, in-place, renames) out of the profile's count. */
  edited: number;
  counts: Record<Action, number>;
  rawBytes: number;
  /** Every byte written, for the "one zstd stream" floor. */
  payloadFile: string;
  seconds: number;
}

/** Overwrite ranges of an existing file with new bytes of the same length (the file keeps its size). */
function overwrite(file: string, ranges: Array<{ at: number; data: Buffer }>): void {
  const fd = openSync(file, 'r+');
  try {
    for (const r of ranges) writeSync(fd, r.data, 0, r.data.length, r.at);
  } finally {
    closeSync(fd);
  }
}

function appendTo(file: string, data: Buffer): void {
  const fd = openSync(file, 'a');
  try {
    writeSync(fd, data);
  } finally {
    closeSync(fd);
  }
}

function applyEdits(root: string, gen: Generated, seed: number, pools: Pools, work: string): Edits {
  const started = Date.now();
  const rng = mulberry32(seed + 1000);
  const fresh = { text: new Feed('fresh text', pools.text.fresh), attach: new Feed('fresh compressed', pools.compressed.fresh), bin: new Feed('fresh programs', pools.bin.fresh) };
  const records: EditRecord[] = [];
  const payload: Buffer[] = [];
  const abs = (p: string): string => join(root, p);
  const byPath = new Map(gen.files.map((f) => [f.path, f]));
  // Names in use, compared as carryon does (case-insensitively); a file may not take a folder's name.
  const fileKeys = new Set<string>();
  const dirKeys = new Set<string>();
  const takeName = (p: string): boolean => {
    try {
      checkPersonaPath(p);
    } catch {
      return false;
    }
    const k = personaPathKey(p);
    const parts = p.split('/');
    const folders = parts.slice(1).map((_, i) => personaPathKey(parts.slice(0, i + 1).join('/')));
    if (fileKeys.has(k) || dirKeys.has(k) || folders.some((q) => fileKeys.has(q))) return false;
    fileKeys.add(k);
    for (const q of folders) dirKeys.add(q);
    return true;
  };
  for (const f of gen.files) takeName(f.path);
  const target = Math.max(10, Math.round(gen.files.length * 0.01));

  // The big files a working day touches, each edited by about 1% of its size: the inbox gets new
  // mail and some messages marked read (4 bytes each, in place), the sent box new mail, the PST pages
  // rewritten in place and new pages appended. The archive mailbox and the video stay as they were.
  const mailNow = new Date('2024-07-01T08:00:00Z');
  for (const [p, share, outgoing] of [['Mail/Inbox.mbox', 0.01, false], ['Mail/Sent.mbox', 0.005, true]] as const) {
    const f = byPath.get(p)!;
    const fd = openSync(abs(p), 'r+');
    let detail: string;
    let bytes = 0;
    try {
      const w = writeMessages(fd, fstatSync(fd).size, rng, fresh, { target: f.size + Math.round(f.size * share), from: mailNow, outgoing, first: gen.mailMessages[p] ?? 0 });
      payload.push(...w.payload);
      bytes += w.end - f.size;
      detail = `${w.messages} messages appended (${mb(w.end - f.size)} MB)`;
      if (!outgoing) {
        const offsets = gen.mailStatus.get(p) ?? [];
        const flips = shuffled(rng, offsets).slice(0, Math.max(1, Math.round(offsets.length * 0.02)));
        const mark = Buffer.from('0001', 'latin1');
        for (const at of flips) writeSync(fd, mark, 0, 4, at);
        payload.push(...flips.map(() => mark));
        bytes += flips.length * 4;
        detail += `, ${flips.length} of ${offsets.length} messages marked read in place`;
      }
    } finally {
      closeSync(fd);
    }
    records.push({ path: p, action: 'append', kind: 'mbox', bytes, detail });
  }
  {
    const p = 'AppData/Local/Microsoft/Outlook/Outlook.pst';
    const f = byPath.get(p)!;
    const pages = (f.size - PST_HEADER) / PST_PAGE;
    const rewrites = shuffled(rng, Array.from({ length: pages }, (_, i) => i)).slice(0, Math.max(2, Math.round(pages * 0.004)));
    const ranges = rewrites.map((i) => ({ at: PST_HEADER + i * PST_PAGE, data: pstPage(rng, fresh.text, fresh.attach, i) }));
    // Index updates: 64-byte entries rewritten inside other pages, and the header's counters.
    const index = shuffled(rng, Array.from({ length: pages }, (_, i) => i)).slice(0, Math.max(2, Math.round(pages * 0.002)));
    for (const i of index) ranges.push({ at: PST_HEADER + i * PST_PAGE + 16 + 64 * randInt(rng, 0, (PST_PAGE - 16) / 64 - 1), data: randomBytesSeeded(seed + 7, i, 64) });
    ranges.push({ at: 16, data: randomBytesSeeded(seed + 8, 0, 32) });
    overwrite(abs(p), ranges);
    const appended = Math.max(1, Math.round(pages * 0.003));
    const add = Buffer.concat(Array.from({ length: appended }, (_, k) => pstPage(rng, fresh.text, fresh.attach, pages + k)));
    appendTo(abs(p), add);
    const bytes = ranges.reduce((n, r) => n + r.data.length, 0) + add.length;
    payload.push(...ranges.map((r) => r.data), add);
    records.push({ path: p, action: 'in-place', kind: 'pst', bytes, detail: `${rewrites.length} pages rewritten, ${index.length} index entries updated, ${appended} pages appended` });
  }

  // The rest among the small files: 35% appends, 50% same-size edits, 15% renames; a few logs first.
  const small = shuffled(rng, gen.files.filter((f) => !f.big));
  const rest = target - records.length;
  const quota: Record<'append' | 'in-place' | 'rename', number> = { append: Math.round(rest * 0.35), 'in-place': 0, rename: Math.max(1, Math.round(rest * 0.15)) };
  quota['in-place'] = rest - quota.append - quota.rename;
  const touched = new Set<string>(records.map((r) => r.path));
  const isText = (k: Kind): boolean => k === 'doc' || k === 'config' || k === 'log';
  const ordered = [...small.filter((f) => f.kind === 'log').slice(0, 3), ...small];
  for (const f of ordered) {
    if (quota.append + quota['in-place'] + quota.rename === 0) break;
    if (touched.has(f.path)) continue;
    const textual = isText(f.kind) && (f.kind !== 'doc' || looksText(f.path));
    const can: Array<'append' | 'in-place' | 'rename'> = [];
    if (textual && quota.append > 0) can.push('append');
    if ((f.kind === 'program' || textual) && quota['in-place'] > 0) can.push('in-place');
    if (quota.rename > 0) can.push('rename');
    if (can.length === 0) continue;
    // Logs are appended to; otherwise the action with the most quota left.
    const action = f.kind === 'log' && can.includes('append') ? 'append' : can.reduce((a, b) => (quota[b] > quota[a] ? b : a));
    quota[action]--;
    touched.add(f.path);
    if (action === 'append') {
      let data: Buffer;
      if (f.kind === 'log') {
        let t = Date.parse('2024-07-01T08:00:00Z');
        const lines: string[] = [];
        for (let n = randInt(rng, 20, 400); n > 0; n--) lines.push(logLine(rng, fresh.text, (t += randInt(rng, 10, 60_000))));
        data = Buffer.from(lines.join(''), 'latin1');
      } else data = Buffer.concat([Buffer.from('\n'), fresh.text.text(logUniform(rng, 200, 8192))]);
      appendTo(abs(f.path), data);
      payload.push(data);
      records.push({ path: f.path, action, kind: f.kind, bytes: data.length });
    } else if (action === 'in-place') {
      const n = f.kind === 'program' ? randInt(rng, 1, 4) : randInt(rng, 1, 3);
      const ranges: Array<{ at: number; data: Buffer }> = [];
      for (let k = 0; k < n; k++) {
        const len = Math.max(1, Math.min(Math.floor(f.size / 4), f.kind === 'program' ? logUniform(rng, 256, 16 * 1024) : logUniform(rng, 32, 4096)));
        const data = f.kind === 'program' ? fresh.bin.take(len) : fresh.text.text(len);
        ranges.push({ at: randInt(rng, 0, f.size - len), data });
      }
      overwrite(abs(f.path), ranges);
      payload.push(...ranges.map((r) => r.data));
      records.push({ path: f.path, action, kind: f.kind, bytes: ranges.reduce((s, r) => s + r.data.length, 0), detail: `${n} range(s)` });
    } else {
      // Half move to another folder of the profile, half get a new name beside the old one.
      const dirs = [...new Set(gen.files.filter((g) => !g.big).map((g) => dirname(g.path)))].filter((d) => d !== dirname(f.path));
      const ext = extname(f.path);
      const stem = basename(f.path, ext);
      const first = rng() < 0.5 ? `${pick(rng, dirs)}/${basename(f.path)}` : `${dirname(f.path)}/${stem} (old)${ext}`;
      const to = [first, `${dirname(first)}/${stem}-moved${ext}`, `${dirname(f.path)}/${stem}-${records.length}${ext}`].find(takeName);
      if (!to) throw new Error(`no free name to rename ${f.path} to`);
      mkdirSync(dirname(abs(to)), { recursive: true });
      renameSync(abs(f.path), abs(to));
      records.push({ path: f.path, action, kind: f.kind, bytes: 0, to });
    }
  }

  // New files: a handful of documents, downloads and screenshots, all from fresh host files.
  const newCount = Math.max(3, Math.round(gen.files.length * 0.001));
  const freshPick = [new Picker(pools.docs.fresh, new Set()), new Picker(pools.compressed.fresh, new Set()), new Picker(pools.pictures.fresh, new Set())];
  for (let i = 0; i < newCount; i++) {
    const which = i % 3;
    const f = freshPick[which]!.next(which === 1 ? 8 * 1024 ** 2 : 2 * 1024 ** 2);
    if (!f) continue;
    const name = basename(f.path);
    const p = which === 0 ? `Documents/Projects/new/${name}` : which === 1 ? `Downloads/new-${name}` : `Pictures/Screenshots/${name}`;
    if (!takeName(p)) continue;
    const data = readFileSync(f.path);
    mkdirSync(dirname(abs(p)), { recursive: true });
    writeFileSync(abs(p), data);
    payload.push(data);
    records.push({ path: p, action: 'new', kind: which === 0 ? 'doc' : which === 1 ? 'download' : 'picture', bytes: data.length });
  }

  // Deletions: a few small files nobody else touched.
  const delCount = Math.max(2, Math.round(gen.files.length * 0.0005));
  for (const f of small.filter((g) => !touched.has(g.path)).slice(0, delCount)) {
    rmSync(abs(f.path));
    records.push({ path: f.path, action: 'delete', kind: f.kind, bytes: 0 });
  }

  const payloadFile = join(work, 'edits.bin');
  writeFileSync(payloadFile, Buffer.concat(payload));
  const counts = { append: 0, 'in-place': 0, rename: 0, new: 0, delete: 0 } as Record<Action, number>;
  for (const r of records) counts[r.action]++;
  return {
    records, edited: counts.append + counts['in-place'] + counts.rename, counts, rawBytes: records.reduce((n, r) => n + r.bytes, 0), payloadFile, seconds: (Date.now() - started) / 1000,
  };
}

// ---------------------------------------------------------------------------------------------
// Trees

interface Stat {
  size: number;
  mtimeMs: number;
}

/** Regular files under a folder: relative path -> size and mtime. */
function listTree(dir: string): Map<string, Stat> {
  const out = new Map<string, Stat>();
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const st = statSync(p);
        out.set(relative(dir, p), { size: st.size, mtimeMs: st.mtimeMs });
      }
    }
  };
  walk(dir);
  return out;
}

interface TreeDiff {
  /** Same path on both sides, size or mtime differ (rsync's quick check). */
  changed: string[];
  added: string[];
  removed: string[];
}

function diffTrees(base: Map<string, Stat>, next: Map<string, Stat>): TreeDiff {
  const d: TreeDiff = { changed: [], added: [], removed: [] };
  for (const [p, s] of next) {
    const b = base.get(p);
    if (!b) d.added.push(p);
    else if (b.size !== s.size || b.mtimeMs !== s.mtimeMs) d.changed.push(p);
  }
  for (const p of base.keys()) if (!next.has(p)) d.removed.push(p);
  return d;
}

function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** Byte-for-byte equality of two files (cmp without a process per file). */
function sameContent(a: string, b: string): boolean {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    if (fstatSync(fa).size !== fstatSync(fb).size) return false;
    const ba = Buffer.allocUnsafe(4 * 1024 * 1024);
    const bb = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (;;) {
      const n = readSync(fa, ba, 0, ba.length, null);
      const m = readSync(fb, bb, 0, bb.length, null);
      if (n !== m || !ba.subarray(0, n).equals(bb.subarray(0, m))) return false;
      if (n === 0) return true;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** SHA-256 of each PERSONA_CHUNK_BYTES piece of a file, as carryon chunks it. */
function chunkIds(file: string): string[] {
  const ids: string[] = [];
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(PERSONA_CHUNK_BYTES);
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) ids.push(createHash('sha256').update(buf.subarray(0, n)).digest('hex'));
  } finally {
    closeSync(fd);
  }
  return ids;
}

/** The edited tree against the base, renames matched by content: an added file with the same size and
 *  SHA-256 as a removed one is that file under its new name. */
function matchRenames(baseDir: string, nextDir: string, d: TreeDiff, base: Map<string, Stat>, next: Map<string, Stat>): Map<string, string> {
  const bySize = new Map<number, string[]>();
  for (const p of d.removed) bySize.set(base.get(p)!.size, [...(bySize.get(base.get(p)!.size) ?? []), p]);
  const renames = new Map<string, string>();
  for (const p of d.added) {
    const cands = bySize.get(next.get(p)!.size);
    if (!cands) continue;
    const h = sha256File(join(nextDir, p));
    const hit = cands.find((c) => !([...renames.values()].includes(c)) && sha256File(join(baseDir, c)) === h);
    if (hit) renames.set(p, hit);
  }
  return renames;
}

// ---------------------------------------------------------------------------------------------
// Measurements



/** rsync of the edited tree onto a fresh copy of the base, forced to use its delta algorithm. The copy
 *  is hard-linked: rsync (without --inplace) writes every file it changes to a new inode, so the base's
 *  files are never modified; the result is checked against the source. */
async function measureRsync(flags: string[], note: string, src: string, base: string, dst: string, touched: string[], srcList: Map<string, Stat>): Promise<Measure> {
  rmSync(dst, { recursive: true, force: true });
  await run('cp', ['-al', base, dst]);
  const r = await run('rsync', ['-a', '--no-whole-file', '--delete', '--stats', ...flags, `${src}/`, `${dst}/`]);
  const out = r.stdout + r.stderr;
  const s = parseRsyncStats(out);
  const negotiated = /negotiated compress:\s*(.+)/i.exec(out)?.[1]?.trim();
  // The copy must really be the edited tree, or the byte count means nothing.
  const got = listTree(dst);
  if (got.size !== srcList.size || [...srcList].some(([p, st]) => got.get(p)?.size !== st.size)) throw new Error(`rsync ${flags.join(' ')}: the copy's file list differs from the edited tree`);
  for (const p of touched) if (!sameContent(join(src, p), join(dst, p))) throw new Error(`rsync ${flags.join(' ')}: ${p} differs from the edited tree`);
  rmSync(dst, { recursive: true, force: true });
  return { bytes: s.sent + s.received, seconds: r.seconds, note, sent: s.sent, received: s.received, literalBytes: s.literal, matchedBytes: s.matched, ...(negotiated ? { negotiated } : {}) };
}

interface RdiffFile {
  path: string;
  how: 'delta' | 'rename' | 'new';
  base?: string;
  size: number;
  sigBytes: number;
  rawDeltaBytes: number;
  zstdBytes: number;
}

/** rdiff per changed file (signature of its base version, delta of the new one, zstd -3 of the delta);
 *  new files whole at zstd -3; renamed files (matched by content) as a delta against the old name. */
async function measureRdiff(baseDir: string, nextDir: string, d: TreeDiff, renames: Map<string, string>, dir: string): Promise<{ withSig: Measure; deltaOnly: Measure; files: RdiffFile[]; renamesWhole: number }> {
  mkdirSync(dir, { recursive: true });
  const sig = join(dir, 'f.sig');
  const delta = join(dir, 'f.rdiff');
  const zst = join(dir, 'f.zst');
  const files: RdiffFile[] = [];
  let sigSeconds = 0;
  let otherSeconds = 0;
  const zstdOf = async (file: string): Promise<number> => {
    otherSeconds += (await run('zstd', ['-3', '-q', '-f', file, '-o', zst])).seconds;
    const n = statSync(zst).size;
    rmSync(zst);
    return n;
  };
  const viaDelta = async (path: string, basePath: string, how: 'delta' | 'rename'): Promise<void> => {
    sigSeconds += (await run('rdiff', ['-f', 'signature', join(baseDir, basePath), sig])).seconds;
    otherSeconds += (await run('rdiff', ['-f', 'delta', sig, join(nextDir, path), delta])).seconds;
    const z = await zstdOf(delta);
    files.push({ path, how, base: basePath, size: statSync(join(nextDir, path)).size, sigBytes: statSync(sig).size, rawDeltaBytes: statSync(delta).size, zstdBytes: z });
    rmSync(sig);
    rmSync(delta);
  };
  for (const p of d.changed) await viaDelta(p, p, 'delta');
  let renamesWhole = 0;
  for (const p of d.added) {
    const old = renames.get(p);
    if (old) {
      await viaDelta(p, old, 'rename');
      renamesWhole += await zstdOf(join(nextDir, p)); // what it would cost unmatched, for the note
    } else files.push({ path: p, how: 'new', size: statSync(join(nextDir, p)).size, sigBytes: 0, rawDeltaBytes: 0, zstdBytes: await zstdOf(join(nextDir, p)) });
  }
  const z = files.reduce((n, f) => n + f.zstdBytes, 0);
  const s = files.reduce((n, f) => n + f.sigBytes, 0);
  return {
    withSig: { bytes: z + s, seconds: sigSeconds + otherSeconds, note: 'zstd -3 of each delta (and of each new file) + the signatures of the base versions (sent the other way)', deltaBytes: z, sigBytes: s },
    deltaOnly: { bytes: z, seconds: otherSeconds, note: 'zstd -3 of each delta and new file only (signatures kept on the laptop)' },
    files,
    renamesWhole,
  };
}

/**
 * What carryon's upload does with each changed file (client/persona-engine.ts): a changed file whose
 * base the server holds goes as an rdiff delta when the delta is under half the file (and under
 * MAX_PERSONA_ENTRY_BYTES), else as its 1 MiB chunks the server lacks. carryon's deltas are
 * byte-identical to rdiff's (test/unit/rdiff/interop.test.ts), so rdiff's sizes predict the choice.
 */
function predictCarryon(baseDir: string, nextDir: string, rd: RdiffFile[]): { files: Array<Json>; deltaBytes: number; wholeBytes: number; whole: Array<Json> } {
  const files: Json[] = [];
  let deltaBytes = 0;
  let wholeBytes = 0;
  for (const f of rd) {
    if (f.how === 'rename') {
      files.push({ path: f.path, how: 'nothing (same chunks, renamed)', bytes: 0 });
      continue;
    }
    if (f.how === 'delta' && f.rawDeltaBytes < f.size / 2 && f.rawDeltaBytes <= MAX_PERSONA_ENTRY_BYTES) {
      deltaBytes += f.rawDeltaBytes;
      files.push({ path: f.path, how: 'delta', size: f.size, bytes: f.rawDeltaBytes });
      continue;
    }
    const known = new Set(f.how === 'delta' ? chunkIds(join(baseDir, f.base!)) : []);
    const ids = chunkIds(join(nextDir, f.path));
    let bytes = 0;
    ids.forEach((id, i) => {
      if (!known.has(id)) bytes += Math.min(PERSONA_CHUNK_BYTES, f.size - i * PERSONA_CHUNK_BYTES);
    });
    wholeBytes += bytes;
    const why = f.how === 'new' ? 'new file' : f.rawDeltaBytes > MAX_PERSONA_ENTRY_BYTES ? `delta ${mb(f.rawDeltaBytes)} MB is over the ${mib(MAX_PERSONA_ENTRY_BYTES)} entry limit` : `delta ${f.rawDeltaBytes} B is not under half of ${f.size} B`;
    files.push({ path: f.path, how: 'chunks', size: f.size, bytes, why });
  }
  return { files, deltaBytes, wholeBytes, whole: files.filter((f) => f.how === 'chunks' && !String(f.why).startsWith('new')) };
}

// ---------------------------------------------------------------------------------------------
// carryon side

interface CarryonRig {
  server: RunningServer;
  data: string;
  token: string;
}

const USER = 'bench';
const DESK = 'bench-persona';

/** The CLI's own JSON, with the byte count we compare and the process wall time (its own `seconds` kept as cliSeconds). */
const fromCli = (j: Json, bytesKey: string, seconds: number, note: string): Measure => ({ ...j, cliSeconds: j.seconds, bytes: num(j, bytesKey), seconds, note });

async function startCarryon(work: string, store: Options['serverStore']): Promise<CarryonRig> {
  const data = join(work, 'server');
  await carryonServer(data, 'init', ...(store === 'pack' ? ['--store', `pack://${join(work, 'server-packs')}`] : []));
  const server = await startServer(data);
  try {
    const token = str((await carryonServer(data, 'user', 'add', USER)).json, 'token');
    // The disk is not what this bench measures: a tiny image, published and cloned.
    const img = join(work, 'tiny.raw');
    await run('truncate', ['-s', '4M', img]);
    await carryonServer(data, 'image', 'publish', 'tiny', img);
    // Encryption off until the laptop CLI encrypts and escrows (a 'required' desktop refuses blocks with ESCROW_MISSING).
    await carryonServer(data, 'desktop', 'create', DESK, '--user', USER, '--image', 'tiny', '--encryption', 'off');
    log(`  carryon-server at ${server.url}; 4 MiB image published, desktop ${DESK} created`);
    return { server, data, token };
  } catch (e) {
    await server.stop();
    throw e;
  }
}

/** Compare the server's newest persona with a folder: same files and sizes, same SHA-256 for `hashPaths`. */
async function checkServerPersona(rig: CarryonRig, dir: string, hashPaths: string[]): Promise<{ version: number; files: number }> {
  const shown = (await carryonServer(rig.data, 'persona', 'show', USER)).json;
  const files = (shown.files as PersonaEntry[]).filter((e) => e.kind === 'file');
  const local = listTree(dir);
  if (files.length !== local.size) throw new Error(`the server's persona has ${files.length} files, the laptop's folder ${local.size}`);
  const byPath = new Map(files.map((f) => [f.path, f]));
  for (const [p, st] of local) if (byPath.get(p)?.size !== st.size) throw new Error(`the server's persona differs from the laptop's folder at ${p}`);
  for (const p of hashPaths) if (byPath.get(p)?.hash !== sha256File(join(dir, p))) throw new Error(`the server's persona holds other content for ${p}`);
  return { version: num(shown, 'version'), files: files.length };
}

interface RouteBytes {
  requests: number;
  /** Request body bytes (what the laptop sends). */
  sent: number;
  /** Response body bytes. */
  received: number;
}

/**
 * An HTTP proxy on 127.0.0.1 between laptop A and the server that counts body bytes per route (ids in
 * the path replaced by :id), so a check-in's bytes can be split by request without knowing the protocol.
 */
class CountingProxy {
  routes = new Map<string, RouteBytes>();
  private constructor(
    private readonly server: http.Server,
    readonly url: string,
  ) {}

  static start(target: string): Promise<CountingProxy> {
    const t = new URL(target);
    const agent = new http.Agent({ keepAlive: true });
    let proxy: CountingProxy | undefined;
    const server = http.createServer((req, res) => {
      const route = `${req.method} ${(req.url ?? '').split('?')[0]!.replace(/\/(?=[^/]*\d)[^/]{8,}/g, '/:id')}`;
      const r = proxy!.routes.get(route) ?? { requests: 0, sent: 0, received: 0 };
      proxy!.routes.set(route, r);
      r.requests++;
      const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers, agent }, (ures) => {
        res.writeHead(ures.statusCode ?? 502, ures.headers);
        ures.on('data', (c: Buffer) => (r.received += c.length));
        ures.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.on('data', (c: Buffer) => (r.sent += c.length));
      req.pipe(up);
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const a = server.address() as { port: number };
        proxy = new CountingProxy(server, `http://127.0.0.1:${a.port}`);
        resolve(proxy);
      });
    });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// ---------------------------------------------------------------------------------------------
// Report

async function toolVersions(): Promise<Record<string, string>> {
  const first = toolVersion;
  return { rsync: await first('rsync', ['--version']), rdiff: await first('rdiff', ['--version']), zstd: await first('zstd', ['--version']) };
}

async function main(): Promise<number> {
  settleBeforeEachRun(true);
  const o = parseOptions(process.argv.slice(2));
  for (const [tool, pkg] of [['rsync', 'rsync'], ['rdiff', 'rdiff'], ['zstd', 'zstd'], ['cmp', 'diffutils'], ['truncate', 'coreutils'], ['tar', 'tar']] as const) requireTool(tool, pkg);
  let carryonSkipped: string | undefined = o.carryon ? carryonMissing() : '--no-carryon';
  if (carryonSkipped && o.carryon) log(`carryon rows skipped: ${carryonSkipped}`);

  const started = Date.now();
  const work = mkdtempSync(join(tmpdir(), 'carryon-persona-bench-'));
  let rig: CarryonRig | undefined;
  let proxy: CountingProxy | undefined;
  let failed = false;
  const report: Json = {};
  process.once('SIGINT', () => {
    if (!o.keep) rmSync(work, { recursive: true, force: true });
    process.exit(130);
  });
  try {
    log(`persona-bench: ${mib(o.size)} generated profile, seed ${o.seed}; ${cpus().length} cores, node ${process.version}; server store: ${o.serverStore}`);
    log(`temp folder ${work}`);

    // The profile (v2)
    let t = Date.now();
    const pools = hostPools(o.seed);
    log(`host files listed in ${secs((Date.now() - t) / 1000)} s`);
    const generated = join(work, 'generated');
    mkdirSync(generated);
    const gen = generateProfile(generated, o.size, o.seed, pools);
    log(`profile: ${gen.files.length} files, ${mb(gen.bytes)} MB, generated in ${secs(gen.seconds)} s`);
    for (const [k, v] of Object.entries(gen.byKind)) log(`  ${k.padEnd(9)} ${String(v.files).padStart(6)} files ${mb(v.bytes).padStart(9)} MB`);
    for (const [k, v] of Object.entries(gen.feeds)) if (v.wraps > 0) log(`  note: the ${k} feed ran out of host files and started over (${v.wraps}x): later mail, PST or video bytes repeat earlier ones`);
    for (const [k, v] of Object.entries(gen.shortfall)) log(`  note: not enough host files for ${k}: ${mb(v)} MB went to the next category`);
    // The peers of a first push and of a check-out: the whole profile as one zstd -3 stream, and back.
    const tarZst = join(work, 'profile.tar.zst');
    const tz = await run('sh', ['-c', 'tar -C "$1" -cf - . | zstd -3 -q -c > "$2"', 'sh', generated, tarZst]);
    const treeZstd: Measure = { bytes: statSync(tarZst).size, seconds: tz.seconds, note: 'tar of the whole profile as one zstd -3 stream (written to a file)' };
    log(`  tar | zstd -3 of the profile: ${mb(treeZstd.bytes)} MB in ${secs(tz.seconds)} s`);
    const untarDir = join(work, 'untar');
    mkdirSync(untarDir);
    const tx = await run('sh', ['-c', 'zstd -d -q -c "$2" | tar -C "$1" -xf -', 'sh', untarDir, tarZst]);
    const treeUnzstd: Measure = { bytes: treeZstd.bytes, seconds: tx.seconds, note: '`zstd -d | tar x` of that stream into an empty folder' };
    log(`  zstd -d | tar x of it: ${secs(tx.seconds)} s`);
    rmSync(untarDir, { recursive: true, force: true });
    rmSync(tarZst, { force: true });

    // Laptop B pushes it as v2; laptop A checks the desktop out (disk + persona v2).
    let profileA: string;
    const carryonRes: Record<string, Measure> = {};
    if (!carryonSkipped) {
      try {
        rig = await startCarryon(work, o.serverStore);
      } catch (e) {
        carryonSkipped = `carryon setup failed: ${e instanceof Error ? e.message : String(e)}`;
        log(`  ${carryonSkipped}`);
        failed = true;
      }
    }
    if (rig) {
      const homeA = join(work, 'laptop-a');
      const homeB = join(work, 'laptop-b');
      mkdirSync(homeA);
      mkdirSync(homeB);
      proxy = await CountingProxy.start(rig.server.url);
      await carryon(homeA, 'login', proxy.url, '--token', rig.token);
      await carryon(homeB, 'login', rig.server.url, '--token', rig.token);
      const coB = await carryon(homeB, 'checkout', DESK, '--persona-only');
      const dirB = str(coB.json, 'dir');
      await run('cp', ['-a', `${generated}/.`, join(dirB, 'profile')]);
      const push = await carryon(homeB, 'persona', 'push', DESK);
      carryonRes.push = fromCli(push.json, 'bytesSent', push.seconds, 'bytesSent of `carryon persona push --json` from laptop B (the baseline, v2)');
      log(`  laptop B: persona push (v${push.json.version}) sent ${mb(carryonRes.push.bytes)} MB in ${secs(push.seconds)} s`);
      const coA = await carryon(homeA, 'checkout', DESK);
      carryonRes.checkout = fromCli(coA.json, 'bytesReceived', coA.seconds, 'bytesReceived of `carryon checkout` on laptop A (disk + persona v2)');
      const personaA = coA.json.persona as Json | null;
      if (!personaA) throw new Error('carryon checkout brought no persona');
      profileA = join(str(personaA, 'dir'), 'profile');
      log(`  laptop A: checkout (disk + persona v${personaA.version}) received ${mb(carryonRes.checkout.bytes)} MB in ${secs(coA.seconds)} s`);
      rmSync(generated, { recursive: true, force: true });
    } else {
      profileA = generated;
    }

    // base/ = the v2 tree as laptop A holds it; then the edits on A's folder.
    const base = join(work, 'base');
    await run('cp', ['-a', profileA, base]);
    const baseList = listTree(base);
    const edits = applyEdits(profileA, gen, o.seed, pools, work);
    const nextList = listTree(profileA);
    const d = diffTrees(baseList, nextList);
    const zp = await run('zstd', ['-3', '-q', '-f', edits.payloadFile, '-o', `${edits.payloadFile}.zst`]);
    const floor: Measure = { bytes: statSync(`${edits.payloadFile}.zst`).size, seconds: zp.seconds, note: 'every byte the edits wrote, concatenated, as one zstd -3 stream (no names, no positions)' };
    const raw: Measure = { bytes: edits.rawBytes, seconds: 0, note: 'bytes written by the edits (appended, overwritten, new files); renames and deletions 0' };
    log(`\nedits: ${edits.edited} of ${gen.files.length} files edited (${percent(edits.edited, gen.files.length)}): ${edits.counts.append} appends, ${edits.counts['in-place']} same-size edits, ` +
      `${edits.counts.rename} renames; ${edits.counts.new} new files, ${edits.counts.delete} deleted; ${mb(raw.bytes)} MB written (${mb(floor.bytes)} MB as one zstd -3 stream)`);
    for (const r of edits.records.filter((x) => x.detail && (x.kind === 'mbox' || x.kind === 'pst'))) log(`  ${r.path}: ${r.detail}`);
    log(`  tree diff: ${d.changed.length} changed, ${d.added.length} added, ${d.removed.length} removed`);
    const renames = matchRenames(base, profileA, d, baseList, nextList);
    const touched = [...d.changed, ...d.added];

    if (rig) {
      try {
        proxy!.routes.clear();
        const ci = await carryon(join(work, 'laptop-a'), 'checkin', DESK);
        carryonRes.checkin = fromCli(ci.json, 'bytesSent', ci.seconds, 'bytesSent of `carryon checkin --json` (CLI wall time)');
        carryonRes.checkin.routes = Object.fromEntries(proxy!.routes);
        const changes = (ci.json.persona as Json | null)?.changes as { added: string[]; changed: string[]; deleted: string[] } | undefined;
        carryonRes.checkin.personaChanges = changes ? { added: changes.added.length, changed: changes.changed.length, deleted: changes.deleted.length } : null;
        const check = await checkServerPersona(rig, profileA, touched);
        log(`  carryon: checkin ${mb(carryonRes.checkin.bytes)} MB in ${secs(ci.seconds)} s (persona v${check.version}: ${changes?.changed.length ?? '?'} changed, ${changes?.added.length ?? '?'} added, ${changes?.deleted.length ?? '?'} deleted); ` +
          `the server's persona matches the laptop's folder`);
      } catch (e) {
        let msg = e instanceof Error ? e.message : String(e);
        const gone = serverGone(rig.server);
        if (gone) msg += `\n  ${gone}`;
        carryonRes.error = { bytes: 0, seconds: 0, note: msg };
        failed = true;
        log(`  carryon FAILED: ${msg}`);
      }
    }

    // Peers on the same edits
    const peers: Record<string, Measure> = {};
    const dst = join(work, 'dst');
    const rsyncRuns: Array<[string, string[], string]> = [
      ['rsync', [], 'rsync -a --no-whole-file --delete: Total bytes sent + received (--stats)'],
      ['rsyncZ', ['-z', '--debug=NSTR'], 'rsync -az (compression as negotiated)'],
      ['rsyncZlib', ['-z', '--compress-choice=zlib'], 'rsync -az --compress-choice=zlib (the only choice before rsync 3.2.0)'],
      ['rsyncZstd', ['-z', '--compress-choice=zstd'], 'rsync -az --compress-choice=zstd'],
    ];
    for (const [key, flags, note] of rsyncRuns) {
      peers[key] = await measureRsync(flags, note, profileA, base, dst, touched, nextList);
      log(`  ${key}: ${mb(peers[key].bytes)} MB in ${secs(peers[key].seconds)} s${peers[key].negotiated ? ` (negotiated ${peers[key].negotiated})` : ''}`);
    }
    const rd = await measureRdiff(base, profileA, d, renames, join(work, 'rdiff'));
    peers.rdiff = rd.withSig;
    peers.rdiffDeltaOnly = rd.deltaOnly;
    log(`  rdiff + zstd: ${mb(rd.deltaOnly.bytes)} MB + ${mb(num(rd.withSig, 'sigBytes'))} MB signatures, ${secs(rd.withSig.seconds)} s; ${renames.size} renames matched by content (sent whole they would cost ${mb(rd.renamesWhole)} MB)`);
    const plan = predictCarryon(base, profileA, rd.files);

    // Tables
    const ref = peers.rsyncZ!.bytes;
    const row = (name: string, m: Measure | undefined, time = true): string[] => (m ? [name, mb(m.bytes), time ? secs(m.seconds) : '-', ratio(m.bytes, ref)] : [name, '-', '-', '-']);
    const ci = carryonRes.checkin;
    const neg = peers.rsyncZ!.negotiated ? `, negotiated ${String(peers.rsyncZ!.negotiated)}` : '';
    const rows = [
      row('edits: bytes written (raw)', raw, false),
      row('edits: as one zstd -3 stream (no names, no offsets)', floor, false),
      ci ? row('carryon checkin (bytesSent: request bodies)', ci) : ['carryon checkin', carryonRes.error ? 'failed' : 'skipped', '-', '-'],
      ...(ci ? [row('carryon checkin, sent + received (as rsync counts)', { ...ci, bytes: ci.bytes + num(ci, 'bytesReceived') })] : []),
      row('rsync -a --no-whole-file', peers.rsync),
      row(`rsync -az --no-whole-file${neg}`, peers.rsyncZ),
      row('rsync -az --compress-choice=zlib', peers.rsyncZlib),
      row('rsync -az --compress-choice=zstd', peers.rsyncZstd),
      row('rdiff + zstd -3, + signatures', peers.rdiff),
      row('rdiff + zstd -3, delta only', peers.rdiffDeltaOnly),
    ];
    console.log(`\nResults (MB = 10^6 bytes; times are wall seconds on ${cpus().length} cores, warm page cache)`);
    console.log(`profile ${gen.files.length} files, ${mb(gen.bytes)} MB; ${edits.edited} files edited (${edits.counts.append} appends, ${edits.counts['in-place']} in place, ${edits.counts.rename} renames), ` +
      `${edits.counts.new} new, ${edits.counts.delete} deleted\n`);
    console.log(table(['check-in of the edits (v2 on the server)', 'MB', 's', 'vs rsync -az'], rows));
    if (ci) {
      const verdict = ci.bytes < ref ? `carryon sends ${ratio(ci.bytes, ref)} of rsync -az's bytes: target met` : `carryon sends ${ratio(ci.bytes, ref)} of rsync -az's bytes: target (fewer than rsync -z) NOT met`;
      console.log(`\n${verdict}`);
      const t = ci.seconds / peers.rsyncZ!.seconds;
      console.log(`carryon checkin takes ${t.toFixed(2)}x rsync -az's wall time (${secs(ci.seconds)} s against ${secs(peers.rsyncZ!.seconds)} s): target (at most 2x) ${t <= 2 ? 'met' : 'NOT met'}`);
      const routes = [...Object.entries(ci.routes as Record<string, RouteBytes>)].sort((a, b) => b[1].sent + b[1].received - a[1].sent - a[1].received);
      console.log('\n' + table(['carryon checkin, by request (counting proxy)', 'requests', 'sent MB', 'received MB'],
        routes.map(([route, r]) => [route, String(r.requests), mb(r.sent, 3), mb(r.received, 3)])));
    }
    console.log(`predicted carryon upload (rdiff sizes, carryon's rule): ${mb(plan.deltaBytes)} MB of deltas, ${mb(plan.wholeBytes)} MB of chunks before zstd; changed files sent as chunks, not deltas: ${plan.whole.length}` +
      plan.whole.slice(0, 12).map((f) => `\n  ${String(f.path)} (${String(f.size)} B): ${String(f.why)}`).join('') + (plan.whole.length > 12 ? `\n  ... ${plan.whole.length - 12} more` : ''));
    console.log(`rdiff rows: renamed files matched to their old name by content (${renames.size}) and sent as deltas against it; sent whole they would cost ${mb(rd.renamesWhole)} MB. No file names, deletions or mtimes counted.`);
    console.log(`rsync rows: --delete added so deletions reach the copy; renames are a deletion plus a new file (no --fuzzy).`);
    if (rig) {
      const pushT = carryonRes.push!.seconds / treeZstd.seconds;
      const coT = carryonRes.checkout!.seconds / treeUnzstd.seconds;
      console.log('\n' + table(['baseline (v2)', 'MB', 's', 'bytes vs tar|zstd', 'time vs peer'], [
        ['profile size (raw)', mb(gen.bytes), '-', '-', '-'],
        ['tar | zstd -3 of the profile', mb(treeZstd.bytes), secs(treeZstd.seconds), '1.00x', '-'],
        ['zstd -d | tar x of it', mb(treeZstd.bytes), secs(treeUnzstd.seconds), '1.00x', '-'],
        ['carryon persona push from laptop B (v2)', mb(carryonRes.push!.bytes), secs(carryonRes.push!.seconds), ratio(carryonRes.push!.bytes, treeZstd.bytes), `${pushT.toFixed(2)}x tar | zstd -3`],
        ['carryon checkout on laptop A (disk + v2)', mb(carryonRes.checkout!.bytes), secs(carryonRes.checkout!.seconds), ratio(carryonRes.checkout!.bytes, treeZstd.bytes), `${coT.toFixed(2)}x zstd -d | tar x`],
      ]));
      console.log(`first push: ${pushT.toFixed(2)}x tar | zstd -3's wall time: target (at most 2x) ${pushT <= 2 ? 'met' : 'NOT met'}; ` +
        `check-out: ${coT.toFixed(2)}x zstd -d | tar x's: target (at most 2x) ${coT <= 2 ? 'met' : 'NOT met'}`);
    }
    if (carryonSkipped) console.log(`\ncarryon rows: ${carryonSkipped}`);
    console.log(`total bench time ${secs((Date.now() - started) / 1000)} s`);

    Object.assign(report, {
      when: new Date().toISOString(),
      machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version },
      tools: await toolVersions(),
      options: { size: o.size, seed: o.seed, serverStore: o.serverStore, carryon: carryonSkipped ? `skipped: ${carryonSkipped}` : true },
      profile: { files: gen.files.length, bytes: gen.bytes, byKind: gen.byKind, mailMessages: gen.mailMessages, feeds: gen.feeds, shortfall: gen.shortfall, generateSeconds: gen.seconds, treeZstd, treeUnzstd },
      edits: { edited: edits.edited, counts: edits.counts, rawBytes: raw.bytes, zstdBytes: floor.bytes, records: edits.records, treeDiff: { changed: d.changed.length, added: d.added.length, removed: d.removed.length } },
      carryon: carryonRes,
      carryonPredicted: plan,
      peers,
      rdiffFiles: rd.files,
      totalSeconds: (Date.now() - started) / 1000,
    });
    if (o.out) {
      writeFileSync(o.out, JSON.stringify(report, null, 2) + '\n');
      console.log(`results written to ${o.out}`);
    }
  } finally {
    if (proxy) await proxy.close();
    if (rig) await rig.server.stop();
    if (o.keep) console.log(`kept ${work}`);
    else {
      // Materialized profiles may hold read-only files and folders.
      await run('chmod', ['-R', 'u+w', work]).catch(() => undefined);
      rmSync(work, { recursive: true, force: true });
    }
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`\npersona-bench failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    process.exit(1);
  },
);
