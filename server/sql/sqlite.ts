// SqliteSql: the `Sql` interface (src/sql) over one better-sqlite3 connection, the embedded default.
// better-sqlite3 is synchronous, so "async" here means ordered: one transaction at a time per process,
// queued on a promise chain, and every query outside a transaction waits its turn too (on one
// connection it would otherwise read another transaction's uncommitted rows between its awaits).
// Across processes (the service and an admin command) BEGIN IMMEDIATE with busy_timeout serialises
// writers, as before. The current transaction is found through AsyncLocalStorage, so a repository
// called from inside transaction(fn), at any depth, joins it.
import Database from 'better-sqlite3';
import { AsyncLocalStorage } from 'node:async_hooks';
import { CarryonError, type Sql, type SqlValue } from '../../src/index.js';

export class SqliteSql implements Sql {
  readonly dialect = 'sqlite' as const;
  private readonly current = new AsyncLocalStorage<{ open: boolean }>();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly db: Database.Database) {}

  get inTransaction(): boolean {
    return this.current.getStore()?.open === true;
  }

  /** Run f now when inside our transaction, else after the transactions queued before it. */
  private turn<T>(f: () => T): Promise<T> {
    const tx = this.current.getStore();
    if (tx) {
      if (!tx.open) return Promise.reject(new CarryonError('INTERNAL', 'a query ran after its transaction ended'));
      return Promise.resolve().then(f);
    }
    const next = this.queue.then(f, f);
    this.queue = next.catch(() => undefined);
    return next;
  }

  all<T>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return this.turn(() => this.db.prepare(sql).all(...params) as T[]);
  }

  get<T>(sql: string, params: readonly SqlValue[] = []): Promise<T | undefined> {
    return this.turn(() => this.db.prepare(sql).get(...params) as T | undefined);
  }

  run(sql: string, params: readonly SqlValue[] = []): Promise<{ changes: number }> {
    return this.turn(() => ({ changes: this.db.prepare(sql).run(...params).changes }));
  }

  exec(sql: string): Promise<void> {
    return this.turn(() => void this.db.exec(sql));
  }

  transaction<T>(fn: () => Promise<T>): Promise<T> {
    if (this.current.getStore()?.open) return fn();
    const body = async (): Promise<T> => {
      const tx = { open: true };
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const out = await this.current.run(tx, fn);
        this.db.exec('COMMIT');
        return out;
      } catch (err) {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
        throw err;
      } finally {
        tx.open = false;
      }
    };
    const next = this.queue.then(body, body);
    this.queue = next.catch(() => undefined);
    return next;
  }

  async close(): Promise<void> {
    await this.queue;
    this.db.close();
  }
}
