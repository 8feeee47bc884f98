// PackBlockStore: encoded blocks appended to pack files, found through a SQLite index.
// Why: the laptop cache takes every block of a check-out; one file per block measured ~6k puts/s here
// (2.7 s per GiB of 64 KiB blocks before any other work), appends to a pack run at disk speed.
// Layout: ROOT/packs/<name>.pack (append-only; each process appends only to packs it created, so two
// carryon commands on one laptop never interleave writes), ROOT/index.db (id -> pack, offset, length).
// Durability: index rows are committed every FLUSH_EVERY puts and at close() without an fsync of the
// packs; only sync() fsyncs. After a power cut a row may point at bytes that never reached the disk:
// every read is verified, and callers treat such a block as absent (refetch it, or send it whole).
// That is right for a cache, which holds nothing the server does not.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { isBlockId, type BlockId } from '../hash/index.js';
import type { BlockStore } from './block-store.js';
import { checkPut, notFound } from './verify.js';

const PACK_LIMIT = 256 * 1024 * 1024;
const WRITE_BUFFER = 1024 * 1024;
// Index rows are committed every this many puts (WAL, no fsync: ~0.1 ms each): bounds what a kill -9
// makes a resumed check-out fetch again.
const FLUSH_EVERY = 64;

interface Loc {
  pack: number;
  offset: number;
  length: number;
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
  private readonly stmts: { lookup: Database.Statement; packName: Database.Statement; del: Database.Statement; ins: Database.Statement };

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
    this.db.exec(`CREATE TABLE IF NOT EXISTS packs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
      CREATE TABLE IF NOT EXISTS blocks (id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID;`);
    this.stmts = {
      lookup: this.db.prepare('SELECT pack, offset, length FROM blocks WHERE id = ?'),
      packName: this.db.prepare('SELECT name FROM packs WHERE id = ?'),
      del: this.db.prepare('DELETE FROM blocks WHERE id = ?'),
      ins: this.db.prepare('INSERT OR IGNORE INTO blocks (id, pack, offset, length) VALUES (?, ?, ?, ?)'),
    };
  }

  private lookup(id: BlockId): Loc | null {
    const p = this.pending.get(id);
    if (p) return p;
    const row = this.stmts.lookup.get(Buffer.from(id, 'hex')) as Loc | undefined;
    return row ?? null;
  }

  private packPath(pack: number): string {
    const row = this.stmts.packName.get(pack) as { name: string } | undefined;
    if (!row) throw notFound(`pack ${pack}`);
    return path.join(this.root, 'packs', row.name);
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
      this.flushWrites();
      const name = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}.pack`;
      const pack = Number(this.db.prepare('INSERT INTO packs (name) VALUES (?)').run(name).lastInsertRowid);
      const fd = openSync(path.join(this.root, 'packs', name), 'wx+');
      this.writer = { pack, fd, size: 0 };
      this.fds.set(pack, fd);
    }
    return this.writer;
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
    const loc = this.lookup(id);
    if (!loc) throw notFound(id);
    if (loc.pack === this.writer?.pack && loc.offset + loc.length > this.writer.size - this.wlen) this.flushWrites();
    let fd = this.fds.get(loc.pack);
    if (fd === undefined) {
      fd = openSync(this.packPath(loc.pack), 'r');
      this.fds.set(loc.pack, fd);
    }
    const buf = Buffer.allocUnsafe(loc.length);
    const n = readSync(fd, buf, 0, loc.length, loc.offset);
    return n === loc.length ? buf : buf.subarray(0, n); // short: verification fails
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
      for (const [id, l] of rows) this.stmts.ins.run(Buffer.from(id, 'hex'), l.pack, l.offset, l.length);
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

  async close(): Promise<void> {
    this.commitIndex();
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
    this.writer = null;
    this.db.close();
  }
}
