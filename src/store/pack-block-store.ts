// PackBlockStore: encoded blocks appended to pack files, found through a SQLite index.
// Why: the laptop cache takes every block of a check-out; one file per block measured ~6k puts/s here
// (2.7 s per GiB of 64 KiB blocks before any other work), appends to a pack run at disk speed.
// Layout: ROOT/packs/<name>.pack (append-only; each process appends only to packs it created, so two
// carryon commands on one laptop never interleave writes), ROOT/index.db (id -> pack, offset, length;
// `packs.owner` names the live writer of a pack, NULL once it is sealed), ROOT/compact.lock.
// Durability: index rows are committed every FLUSH_EVERY puts and at close() without an fsync of the
// packs; only sync() fsyncs. After a power cut a row may point at bytes that never reached the disk:
// every read is verified, and callers treat such a block as absent (refetch it, or send it whole).
// That is right for a cache, which holds nothing the server does not.
//
// Compaction (compact(), the wipe after a rollback or discard): delete() only drops an index row, so a
// pack holding dropped entries is rewritten: its live entries are copied to a new pack, which is
// fsynced (and its directory) before one SQLite transaction (synchronous=FULL) moves their rows and
// drops the old pack's row; only then is the old file unlinked. A pack with no live entry is unlinked at
// once. The index runs with secure_delete=ON and its WAL is truncated after a compaction, so dropped
// ids do not linger in free pages or old WAL frames either.
// Crash safety: at every moment each row points at fsynced bytes in a file that exists (the old pack
// until the commit, the new one after). Leftovers are cleaned when a store opens: a pack file with no
// row (the crash hit between commit and unlink) is unlinked, and a pack whose writer is dead and that
// holds no live entry (a copy the crash interrupted) is dropped.
// Concurrency rule: several processes and worker threads may hold the store open. A writer records
// itself (`pid:start-time`) as its pack's owner when it creates the pack and clears it (seals the pack)
// when the pack is full, at close(), and before it compacts; compaction never touches a pack whose owner
// is a live process (so never one another process may still append to or index into), and only one
// compaction runs at a time (compact.lock, holding the owner; a dead holder's lock is taken over).
// Readers need no lock: a reader that finds a pack file gone looks the block up again (its row has
// moved), a file it already holds open stays readable after the unlink (POSIX), and open descriptors of
// packs the index no longer names are closed at the next read after the index changed (so the space
// comes back). Pack ids are never reused (meta.next_pack), so a stale descriptor never serves another pack.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, statSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { isBlockId, type BlockId } from '../hash/index.js';
import type { BlockStore } from './block-store.js';
import { checkPut, notFound } from './verify.js';

const PACK_LIMIT = 256 * 1024 * 1024;
const WRITE_BUFFER = 1024 * 1024;
// Index rows are committed every this many puts (WAL, no fsync): bounds what a kill -9 makes a resumed
// check-out fetch again (256 blocks of 64 KiB per worker: 16 MiB). Every 64 puts, the commits took ~10%
// of a cold 1 GiB check-out's worker time in a profile (two workers' commits contend for the index's
// write lock, and each rewrites most of the index's pages at random ids); every 512, under 2%
// (docs/performance.md, cold check-out). 256 keeps a kill -9 cheap to resume.
const FLUSH_EVERY = 256;
/** getEncodedMany joins neighbouring blocks into reads of at most this many bytes. */
const MANY_RUN_BYTES = 8 * 1024 * 1024;
/** Rows per multi-row INSERT in commitIndex: one statement run per commit instead of one per row. */
const INSERT_ROWS = 64;

interface Loc {
  pack: number;
  offset: number;
  length: number;
}

/** What a compaction did. Bytes are the sizes of the store's files (packs and index) before and after. */
export interface CompactReport {
  /** Packs whose live entries were copied to a new pack, then unlinked. */
  packsRewritten: number;
  /** Packs unlinked because no live entry was left in them. */
  packsDeleted: number;
  /** Packs skipped because a live process still owns them (it may append to them). */
  packsBusy: number;
  blocksMoved: number;
  bytesBefore: number;
  bytesAfter: number;
  freedBytes: number;
  /** Another process held the compaction lock for longer than `lockWaitMs`: nothing was done. */
  skipped: boolean;
}

export interface CompactOptions {
  /** Rewrite a pack when its live bytes are below this fraction of its size (default 1: any dropped byte). */
  maxLiveFraction?: number;
  /** How long to wait for another process's compaction (default 30 s). */
  lockWaitMs?: number;
  /** Test hook: called after each step; a test kills the process here to check crash safety. */
  onStep?: (step: 'copied' | 'committed') => void;
}

/** `pid:start-time` of this process: a pid alone can be reused by another process after a crash. */
function processStartTime(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}
const SELF = `${process.pid}:${processStartTime(process.pid)}`;

/** Whether the process named by an owner string (`pid:start-time`) is still running. */
function ownerAlive(owner: string): boolean {
  if (owner === SELF) return true;
  const [p, start] = owner.split(':');
  const pid = Number(p);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const now = processStartTime(pid);
  return !start || !now || now === start; // a different start time: the pid was reused
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class PackBlockStore implements BlockStore {
  readonly root: string;
  private readonly db: Database.Database;
  private readonly pending = new Map<BlockId, Loc>();
  /** Open pack descriptors. I/O is synchronous: each call moves one block of page-cache data, and
   *  a thread-pool hop per 64 KiB block cost more than the copy (measured in a check-out profile). */
  private readonly fds = new Map<number, number>();
  private writer: { pack: number; fd: number; size: number } | null = null;
  /** Appends collect here and reach the pack in one write per MiB (a write per block cost more than its copy). */
  private readonly wbuf = Buffer.allocUnsafe(WRITE_BUFFER);
  private wlen = 0;
  private readonly unsynced = new Set<number>();
  private readonly stmts: { lookup: Database.Statement; packName: Database.Statement; del: Database.Statement; ins: Database.Statement; insMany: Database.Statement };
  /** The index's data_version when this instance last closed descriptors of packs no longer named. */
  private seenVersion = -1;
  private lastFdCheck = 0;

  /** opaque: entries are someone else's bytes under someone else's names (SealedBlockStore verified them before sealing). */
  private readonly opaque: boolean;

  constructor(root: string, opts: { opaque?: boolean } = {}) {
    this.opaque = opts.opaque === true;
    this.root = path.resolve(root);
    mkdirSync(path.join(this.root, 'packs'), { recursive: true });
    this.db = new Database(path.join(this.root, 'index.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 10000');
    // A dropped row's bytes (its id: which blocks this laptop held) are zeroed, not left in free pages.
    this.db.pragma('secure_delete = ON');
    this.db.exec(`CREATE TABLE IF NOT EXISTS packs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
      CREATE TABLE IF NOT EXISTS blocks (id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS blocks_by_pack ON blocks (pack, offset);`);
    // Packs made before compaction existed have no owner column: they count as sealed.
    const cols = this.db.prepare('PRAGMA table_info(packs)').all() as Array<{ name: string }>;
    if (!cols.some((c) => c.name === 'owner')) {
      try {
        this.db.exec('ALTER TABLE packs ADD COLUMN owner TEXT');
      } catch (err) {
        if (!/duplicate column/.test((err as Error).message)) throw err; // another process added it first
      }
    }
    this.stmts = {
      lookup: this.db.prepare('SELECT pack, offset, length FROM blocks WHERE id = ?'),
      packName: this.db.prepare('SELECT name FROM packs WHERE id = ?'),
      del: this.db.prepare('DELETE FROM blocks WHERE id = ?'),
      ins: this.db.prepare('INSERT OR IGNORE INTO blocks (id, pack, offset, length) VALUES (?, ?, ?, ?)'),
      insMany: this.db.prepare(`INSERT OR IGNORE INTO blocks (id, pack, offset, length) VALUES ${Array(INSERT_ROWS).fill('(?, ?, ?, ?)').join(', ')}`),
    };
    this.sweep();
  }

  private lookup(id: BlockId): Loc | null {
    const p = this.pending.get(id);
    if (p) return p;
    const row = this.stmts.lookup.get(Buffer.from(id, 'hex')) as Loc | undefined;
    return row ?? null;
  }

  private packPath(pack: number): string | null {
    const row = this.stmts.packName.get(pack) as { name: string } | undefined;
    return row ? path.join(this.root, 'packs', row.name) : null;
  }

  /** A new pack file owned by this process; ids only grow (never reused), so a stale descriptor never reads another pack. */
  private newPack(): { pack: number; fd: number; name: string } {
    const name = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}.pack`;
    const pack = this.db.transaction(() => {
      const next = (this.db.prepare("SELECT value FROM meta WHERE key = 'next_pack'").get() as { value: number } | undefined)?.value ?? 1;
      const max = (this.db.prepare('SELECT MAX(id) AS m FROM packs').get() as { m: number | null }).m ?? 0;
      const id = Math.max(next, max + 1);
      this.db.prepare('INSERT INTO packs (id, name, owner) VALUES (?, ?, ?)').run(id, name, SELF);
      this.db.prepare("INSERT INTO meta (key, value) VALUES ('next_pack', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(id + 1);
      return id;
    }).immediate();
    // The row is committed before the file exists: a file without a row is always a leftover (see sweep).
    const fd = openSync(path.join(this.root, 'packs', name), 'wx+');
    return { pack, fd, name };
  }

  /** Write out buffered appends; `writer.size` already counts them. */
  private flushWrites(): void {
    if (!this.writer || this.wlen === 0) return;
    writeSync(this.writer.fd, this.wbuf, 0, this.wlen, this.writer.size - this.wlen);
    this.wlen = 0;
  }

  /** This process's pack with room for `length` more bytes. */
  private packFor(length: number): { pack: number; fd: number; size: number } {
    if (!this.writer || this.writer.size + length > PACK_LIMIT) {
      if (this.writer) this.seal();
      const { pack, fd } = this.newPack();
      this.writer = { pack, fd, size: 0 };
      this.fds.set(pack, fd);
    }
    return this.writer;
  }

  /** Done appending to the current pack: its rows are committed, then it is marked sealed (owner NULL), so a compaction may take it. */
  private seal(): void {
    if (!this.writer) return;
    this.commitIndex();
    this.db.prepare('UPDATE packs SET owner = NULL WHERE id = ?').run(this.writer.pack);
    this.writer = null;
  }

  async put(id: BlockId, encoded: Uint8Array, plain?: Uint8Array): Promise<void> {
    if (!this.opaque) checkPut(id, encoded, plain);
    else if (!isBlockId(id)) throw new Error('PackBlockStore: an opaque name is 64 hex characters');
    // Only this instance's unindexed puts are checked: a block the index already holds keeps its row
    // (INSERT OR IGNORE), so a repeated put changes nothing visible and costs no index lookup.
    if (this.pending.has(id)) return;
    const w = this.packFor(encoded.length);
    if (this.wlen + encoded.length > WRITE_BUFFER) this.flushWrites();
    if (encoded.length > WRITE_BUFFER) writeSync(w.fd, encoded, 0, encoded.length, w.size);
    else {
      this.wbuf.set(encoded, this.wlen);
      this.wlen += encoded.length;
    }
    this.pending.set(id, { pack: w.pack, offset: w.size, length: encoded.length });
    w.size += encoded.length;
    this.unsynced.add(w.fd);
    if (this.pending.size >= FLUSH_EVERY) this.commitIndex();
  }

  async getEncoded(id: BlockId): Promise<Buffer> {
    if (!isBlockId(id)) throw notFound(String(id));
    this.closeStaleFds();
    const { fd, loc } = this.locate(id);
    const buf = Buffer.allocUnsafe(loc.length);
    const n = readSync(fd, buf, 0, loc.length, loc.offset);
    return n === loc.length ? buf : buf.subarray(0, n); // short: verification fails
  }

  /** Where `id`'s bytes are, with an open descriptor of their pack (appends still buffered written out first). */
  private locate(id: BlockId): { fd: number; loc: Loc } {
    // A compaction in another process may move the block between the lookup and the open: look again.
    for (let attempt = 0; ; attempt++) {
      const loc = this.lookup(id);
      if (!loc) throw notFound(id);
      if (loc.pack === this.writer?.pack && loc.offset + loc.length > this.writer.size - this.wlen) this.flushWrites();
      let fd = this.fds.get(loc.pack);
      if (fd === undefined) {
        const file = this.packPath(loc.pack);
        try {
          if (file === null) throw Object.assign(new Error('pack row gone'), { code: 'ENOENT' });
          fd = openSync(file, 'r');
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT' && attempt < 3) continue;
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(id);
          throw err;
        }
        this.fds.set(loc.pack, fd);
      }
      return { fd, loc };
    }
  }

  /**
   * The encoded blocks of `ids` in order, as getEncoded returns them: blocks that lie one after the other
   * in a pack (a check-out of an image published in order) are read with one pread per run, into `scratch`
   * while it has room (views of it), else into a buffer per run. For the server's read-ahead on pack files.
   */
  async getEncodedMany(ids: readonly BlockId[], scratch?: Buffer): Promise<Buffer[]> {
    this.closeStaleFds();
    const found = ids.map((id) => {
      if (!isBlockId(id)) throw notFound(String(id));
      return this.locate(id);
    });
    const out: Buffer[] = [];
    let used = 0;
    for (let i = 0; i < found.length;) {
      const { fd, loc } = found[i]!;
      let end = loc.offset + loc.length;
      let j = i + 1;
      for (; j < found.length && found[j]!.fd === fd && found[j]!.loc.offset === end && end - loc.offset + found[j]!.loc.length <= MANY_RUN_BYTES; j++) end += found[j]!.loc.length;
      const len = end - loc.offset;
      let buf: Buffer;
      if (scratch && scratch.length - used >= len) {
        buf = scratch.subarray(used, used + len);
        used += len;
      } else buf = Buffer.allocUnsafe(len);
      let got = 0;
      for (let k; got < len && (k = readSync(fd, buf, got, len - got, loc.offset + got)) > 0;) got += k;
      for (let at = 0; i < j; i++) {
        const l = found[i]!.loc.length;
        out.push(buf.subarray(at, Math.min(at + l, got))); // short (a truncated pack): verification fails
        at += l;
      }
    }
    return out;
  }

  /** Close descriptors of packs a compaction (here or elsewhere) removed, so their space comes back; checked at most once a second. */
  private closeStaleFds(): void {
    const now = Date.now();
    if (now - this.lastFdCheck < 1000 || this.fds.size === 0) return;
    this.lastFdCheck = now;
    const v = this.db.pragma('data_version', { simple: true }) as number;
    if (v === this.seenVersion) return;
    this.seenVersion = v;
    const live = new Set((this.db.prepare('SELECT id FROM packs').all() as Array<{ id: number }>).map((r) => r.id));
    for (const [pack, fd] of this.fds) {
      if (live.has(pack) || pack === this.writer?.pack) continue;
      closeSync(fd);
      this.fds.delete(pack);
      this.unsynced.delete(fd);
    }
  }

  async has(id: BlockId): Promise<boolean> {
    return isBlockId(id) && this.lookup(id) !== null;
  }

  async size(id: BlockId): Promise<number | null> {
    return isBlockId(id) ? (this.lookup(id)?.length ?? null) : null;
  }

  async delete(id: BlockId): Promise<void> {
    if (!isBlockId(id)) return;
    this.pending.delete(id);
    // The bytes stay in their pack until a compaction; only the index forgets them.
    this.stmts.del.run(Buffer.from(id, 'hex'));
  }

  async *list(): AsyncIterable<BlockId> {
    await this.sync();
    for (const row of this.db.prepare('SELECT id FROM blocks ORDER BY id').iterate() as Iterable<{ id: Buffer }>) yield row.id.toString('hex');
  }

  /** Commit the index rows of blocks written so far. */
  private commitIndex(): void {
    this.flushWrites(); // a committed row must point at written bytes
    const rows = [...this.pending];
    if (rows.length === 0) return;
    this.db.transaction(() => {
      let i = 0;
      for (; i + INSERT_ROWS <= rows.length; i += INSERT_ROWS) {
        const args: unknown[] = [];
        for (const [id, l] of rows.slice(i, i + INSERT_ROWS)) args.push(Buffer.from(id, 'hex'), l.pack, l.offset, l.length);
        this.stmts.insMany.run(args);
      }
      for (const [id, l] of rows.slice(i)) this.stmts.ins.run(Buffer.from(id, 'hex'), l.pack, l.offset, l.length);
    })();
    for (const [id] of rows) this.pending.delete(id);
  }

  /** fsync the packs written since the last sync, then commit their index rows. */
  async sync(): Promise<void> {
    this.flushWrites();
    for (const fd of this.unsynced) fsyncSync(fd);
    this.unsynced.clear();
    this.commitIndex();
  }

  /** Total size of the store's files: packs, the index and its WAL. */
  bytesOnDisk(): number {
    let total = 0;
    const add = (f: string): void => {
      try {
        total += statSync(f).size;
      } catch {
        /* gone meanwhile */
      }
    };
    for (const n of readdirSync(path.join(this.root, 'packs'))) add(path.join(this.root, 'packs', n));
    for (const n of ['index.db', 'index.db-wal', 'index.db-shm']) add(path.join(this.root, n));
    return total;
  }

  /** Take the compaction lock (a file holding the owner); a lock whose owner is dead is taken over. */
  private tryLock(): boolean {
    const file = path.join(this.root, 'compact.lock');
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fd = openSync(file, 'wx', 0o600);
        writeSync(fd, SELF);
        closeSync(fd);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      let holder = '';
      let age = 0;
      try {
        holder = readFileSync(file, 'utf8');
        age = Date.now() - statSync(file).mtimeMs;
      } catch {
        continue; // released meanwhile
      }
      // An empty file: its holder is between create and write (or died there, long ago); a holder in
      // this process (another instance or thread) is live.
      if (holder === '' ? age < 10_000 : ownerAlive(holder)) return false;
      try {
        unlinkSync(file);
      } catch {
        /* someone else took it over first */
      }
    }
    return false;
  }

  private unlock(): void {
    try {
      unlinkSync(path.join(this.root, 'compact.lock'));
    } catch {
      /* gone */
    }
  }

  private unlinkPack(pack: number, name: string): void {
    const fd = this.fds.get(pack);
    if (fd !== undefined) {
      closeSync(fd);
      this.fds.delete(pack);
      this.unsynced.delete(fd);
    }
    try {
      unlinkSync(path.join(this.root, 'packs', name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /**
   * Clean what a crash left, when no compaction runs: pack files without a row, and packs whose writer
   * died that hold no live entry. Called on open; cheap (one directory listing, one grouped query).
   */
  private sweep(): void {
    if (!this.tryLock()) return;
    try {
      this.sweepLocked();
    } finally {
      this.unlock();
    }
  }

  private sweepLocked(): number {
    const dir = path.join(this.root, 'packs');
    // The listing first, then the rows: a file listed has had its row since before it existed.
    const files = readdirSync(dir);
    const rows = this.db.prepare('SELECT id, name, owner FROM packs').all() as Array<{ id: number; name: string; owner: string | null }>;
    const named = new Set(rows.map((r) => r.name));
    let removed = 0;
    for (const f of files) {
      if (named.has(f)) continue;
      try {
        unlinkSync(path.join(dir, f));
        removed++;
      } catch {
        /* gone */
      }
    }
    const counts = new Map((this.db.prepare('SELECT pack, COUNT(*) AS n FROM blocks GROUP BY pack').all() as Array<{ pack: number; n: number }>).map((r) => [r.pack, r.n]));
    for (const r of rows) {
      if (r.owner === null || ownerAlive(r.owner)) continue;
      if ((counts.get(r.id) ?? 0) > 0) {
        this.db.prepare('UPDATE packs SET owner = NULL WHERE id = ? AND owner = ?').run(r.id, r.owner); // its writer died: sealed
        continue;
      }
      if (this.db.prepare('DELETE FROM packs WHERE id = ? AND owner = ? AND NOT EXISTS (SELECT 1 FROM blocks WHERE pack = ?)').run(r.id, r.owner, r.id).changes === 1) {
        this.unlinkPack(r.id, r.name);
        removed++;
      }
    }
    return removed;
  }

  /**
   * Give the space of dropped entries back, and make their bytes unreadable from any file: every sealed
   * pack holding a dropped byte (or live bytes below `maxLiveFraction`) is rewritten; a pack with
   * nothing live is unlinked. This instance's own pack is sealed first. Crash-safe at every step (see
   * the header); packs owned by another live process are left alone (`packsBusy`).
   */
  async compact(opts: CompactOptions = {}): Promise<CompactReport> {
    const maxLive = opts.maxLiveFraction ?? 1;
    const report: CompactReport = { packsRewritten: 0, packsDeleted: 0, packsBusy: 0, blocksMoved: 0, bytesBefore: 0, bytesAfter: 0, freedBytes: 0, skipped: false };
    // Our own appends: durable and indexed, then the pack is sealed so it can be compacted.
    await this.sync();
    this.seal();
    const deadline = Date.now() + (opts.lockWaitMs ?? 30_000);
    while (!this.tryLock()) {
      if (Date.now() >= deadline) {
        report.skipped = true;
        report.bytesBefore = report.bytesAfter = this.bytesOnDisk();
        return report;
      }
      await sleep(50);
    }
    try {
      report.bytesBefore = this.bytesOnDisk();
      report.packsDeleted += this.sweepLocked();
      const dir = path.join(this.root, 'packs');
      const rows = this.db.prepare('SELECT id, name, owner FROM packs ORDER BY id').all() as Array<{ id: number; name: string; owner: string | null }>;
      const live = new Map((this.db.prepare('SELECT pack, COUNT(*) AS n, SUM(length) AS bytes FROM blocks GROUP BY pack').all() as Array<{ pack: number; n: number; bytes: number }>).map((r) => [r.pack, r]));
      const toRewrite: Array<{ id: number; name: string }> = [];
      const empty: Array<{ id: number; name: string; owner: string | null }> = [];
      for (const r of rows) {
        if (r.owner !== null && ownerAlive(r.owner)) {
          report.packsBusy++;
          continue;
        }
        const l = live.get(r.id);
        if (!l || l.n === 0) {
          empty.push(r);
          continue;
        }
        let size: number;
        try {
          size = statSync(path.join(dir, r.name)).size;
        } catch {
          continue; // a row without its file: its blocks read as absent (a cache refetches them)
        }
        if (l.bytes < size && l.bytes < size * maxLive) toRewrite.push(r);
      }
      // Packs with nothing live: their row goes (only if still empty and unowned), then the file.
      for (const r of empty) {
        const gone = this.db.prepare('DELETE FROM packs WHERE id = ? AND (owner IS NULL OR owner = ?) AND NOT EXISTS (SELECT 1 FROM blocks WHERE pack = ?)')
          .run(r.id, r.owner, r.id).changes === 1;
        if (gone) {
          this.unlinkPack(r.id, r.name);
          report.packsDeleted++;
        }
      }
      if (toRewrite.length > 0) await this.rewrite(toRewrite, report, opts.onStep);
      // Old WAL frames still hold the dropped rows' pages: fold the WAL in and cut it to zero.
      this.db.pragma('wal_checkpoint(TRUNCATE)');
      report.bytesAfter = this.bytesOnDisk();
      report.freedBytes = Math.max(0, report.bytesBefore - report.bytesAfter);
      return report;
    } finally {
      this.unlock();
    }
  }

  /** Copy the live entries of `packs` into new packs, make them durable, move the rows in one transaction per output pack, then unlink the old packs. */
  private async rewrite(packs: Array<{ id: number; name: string }>, report: CompactReport, onStep?: CompactOptions['onStep']): Promise<void> {
    const dir = path.join(this.root, 'packs');
    const entries = this.db.prepare('SELECT id, offset, length FROM blocks WHERE pack = ? ORDER BY offset');
    const move = this.db.prepare('UPDATE blocks SET pack = ?, offset = ? WHERE id = ? AND pack = ? AND offset = ?');
    let out: { pack: number; fd: number; name: string; size: number } | null = null;
    let moves: Array<{ id: Buffer; from: number; fromOffset: number; offset: number }> = [];
    let torn: Array<{ id: Buffer; from: number; fromOffset: number }> = [];
    let sources: Array<{ id: number; name: string }> = [];
    const drop = this.db.prepare('DELETE FROM blocks WHERE id = ? AND pack = ? AND offset = ?');
    const buf = Buffer.allocUnsafe(WRITE_BUFFER);
    const finish = (): void => {
      if (!out) return;
      fsyncSync(out.fd);
      fsyncDir(dir);
      onStep?.('copied');
      const o = out;
      const done = sources;
      // The commit must be durable before any old pack goes: synchronous=FULL for this transaction.
      this.db.pragma('synchronous = FULL');
      try {
        this.db.transaction(() => {
          for (const m of moves) move.run(o.pack, m.offset, m.id, m.from, m.fromOffset);
          for (const t of torn) drop.run(t.id, t.from, t.fromOffset);
          for (const s of done) {
            // Nothing can still point into a sealed pack; if something does, keep that pack.
            if (this.db.prepare('SELECT 1 FROM blocks WHERE pack = ? LIMIT 1').get(s.id)) continue;
            this.db.prepare('DELETE FROM packs WHERE id = ?').run(s.id);
          }
          this.db.prepare('UPDATE packs SET owner = NULL WHERE id = ?').run(o.pack);
        }).immediate();
      } finally {
        this.db.pragma('synchronous = NORMAL');
      }
      onStep?.('committed');
      for (const s of done) {
        if (this.packPath(s.id) !== null) continue; // kept
        this.unlinkPack(s.id, s.name);
        report.packsRewritten++;
      }
      fsyncDir(dir);
      closeSync(o.fd);
      report.blocksMoved += moves.length;
      out = null;
      moves = [];
      torn = [];
      sources = [];
    };
    for (const p of packs) {
      const rows = entries.all(p.id) as Array<{ id: Buffer; offset: number; length: number }>;
      let src: number;
      try {
        src = openSync(path.join(dir, p.name), 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      try {
        const total = rows.reduce((a, r) => a + r.length, 0);
        if (out && out.size + total > PACK_LIMIT) finish();
        if (!out) out = { ...this.newPack(), size: 0 };
        for (const r of rows) {
          const b = r.length <= buf.length ? buf.subarray(0, r.length) : Buffer.allocUnsafe(r.length);
          const n = readSync(src, b, 0, r.length, r.offset);
          if (n !== r.length) {
            torn.push({ id: r.id, from: p.id, fromOffset: r.offset }); // cut by a power cut: unreadable anyway, its row goes
            continue;
          }
          writeSync(out.fd, b, 0, n, out.size);
          moves.push({ id: r.id, from: p.id, fromOffset: r.offset, offset: out.size });
          out.size += n;
        }
        sources.push(p);
      } finally {
        closeSync(src);
      }
    }
    finish();
  }

  async close(): Promise<void> {
    this.commitIndex();
    if (this.writer) this.db.prepare('UPDATE packs SET owner = NULL WHERE id = ?').run(this.writer.pack);
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
    this.writer = null;
    this.db.close();
  }
}
