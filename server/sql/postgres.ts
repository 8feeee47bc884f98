// PostgresSql: the `Sql` interface (src/sql) over a node-postgres (pg) Pool, for servers that share one
// metadata database. Same semantics as SqliteSql, by other means:
// - `?` placeholders become $1..$n (not inside quoted strings, quoted names or comments).
// - int8 and numeric come back as JS numbers (COUNT and SUM are int8/numeric in PostgreSQL), through
//   type parsers of this pool only; a value past 2^53 is an error, never a rounded number. bytea is a
//   Buffer (pg's default).
// - transaction(fn) holds one pooled connection at SERIALIZABLE; the current transaction is found
//   through AsyncLocalStorage, so every query made in fn's async context (at any depth) uses it, and a
//   transaction opened inside joins it. A serialization failure (40001) or deadlock (40P01) rolls back
//   and runs fn again after a jittered, growing pause, a bounded number of times.
// - A database that cannot be reached (refused, shut down, starting, a broken connection: class 08,
//   57P01-03) is CarryonError META_UNAVAILABLE naming host:port, never the password. Outside a
//   transaction, connecting and a query that certainly did not run are retried briefly; a query that
//   may have run is not, nor is anything inside a transaction (its COMMIT may have landed).
// - Every other database error (a unique violation 23505 above all: callers rely on constraints to
//   hold rules across servers) reaches the caller as pg's own DatabaseError, `code` intact.
import { AsyncLocalStorage } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { CarryonError, type Sql, type SqlValue } from '../../src/index.js';

/** Rewrite `?` to $1, $2, ... outside '...' strings (E'...' too), "..." names, $tag$...$tag$ bodies and comments. */
export function numberPlaceholders(sql: string): { text: string; count: number } {
  let out = '';
  let n = 0;
  let i = 0;
  const len = sql.length;
  while (i < len) {
    const c = sql[i]!;
    const next = sql[i + 1];
    if (c === '?') {
      out += `$${++n}`;
      i++;
    } else if (c === "'" || c === '"') {
      // E'...' strings allow backslash escapes; standard strings and names only doubled quotes.
      const backslash = c === "'" && i > 0 && /[eE]/.test(sql[i - 1]!) && (i < 2 || !/[\w$]/.test(sql[i - 2]!));
      let j = i + 1;
      while (j < len) {
        if (backslash && sql[j] === '\\') j += 2;
        else if (sql[j] === c) {
          if (sql[j + 1] === c) j += 2;
          else break;
        } else j++;
      }
      out += sql.slice(i, j + 1);
      i = j + 1;
    } else if (c === '-' && next === '-') {
      const j = sql.indexOf('\n', i);
      const end = j < 0 ? len : j;
      out += sql.slice(i, end);
      i = end;
    } else if (c === '/' && next === '*') {
      // PostgreSQL block comments nest.
      let depth = 1;
      let j = i + 2;
      while (j < len && depth > 0) {
        if (sql[j] === '/' && sql[j + 1] === '*') { depth++; j += 2; }
        else if (sql[j] === '*' && sql[j + 1] === '/') { depth--; j += 2; }
        else j++;
      }
      out += sql.slice(i, j);
      i = j;
    } else if (c === '$' && (i === 0 || !/[\w$]/.test(sql[i - 1]!))) {
      const tag = /^\$([A-Za-z_][\w]*)?\$/.exec(sql.slice(i));
      if (tag) {
        const close = sql.indexOf(tag[0], i + tag[0].length);
        const end = close < 0 ? len : close + tag[0].length;
        out += sql.slice(i, end);
        i = end;
      } else {
        out += c;
        i++;
      }
    } else {
      out += c;
      i++;
    }
  }
  return { text: out, count: n };
}

/** int8 as a JS number; past 2^53 an error (a rounded byte count or id would be silent corruption). */
function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new RangeError(`integer ${text} from PostgreSQL is beyond 2^53 and cannot be a JS number exactly`);
  return n;
}

/** numeric (SUM of bigint, AVG) as a JS number; an integral value past 2^53 is an error as above. */
function parseNumeric(text: string): number {
  const n = Number(text);
  if (/^-?\d+$/.test(text) && !Number.isSafeInteger(n)) throw new RangeError(`number ${text} from PostgreSQL is beyond 2^53 and cannot be a JS number exactly`);
  return n;
}

const INT8 = 20;
const NUMERIC = 1700;
/** This pool's type parsers: pg's defaults except int8 and numeric (pg.types itself is left alone). */
const TYPES = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (format !== 'binary' && oid === INT8) return parseInt8;
    if (format !== 'binary' && oid === NUMERIC) return parseNumeric;
    return pg.types.getTypeParser(oid, format);
  },
} as unknown as pg.CustomTypesConfig;

/** The URL with its password (in the userinfo or a password= parameter) removed: for logs and messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '';
    if (u.searchParams.has('password')) u.searchParams.set('password', '***');
    return u.toString();
  } catch {
    return '(an unparsable database URL)';
  }
}

/** host:port of a postgres:// URL, for messages. */
function endpoint(url: string): string {
  try {
    const u = new URL(url);
    const host = u.hostname || u.searchParams.get('host') || 'localhost';
    return `${host}:${u.port || '5432'}`;
  } catch {
    return '(an unparsable database URL)';
  }
}

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', '57P01', '57P02', '57P03', '53300', '28000', '28P01', '3D000']);

/** An error saying the database could not be reached or dropped the connection (vs. an error in a query). */
export function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (CONNECTION_CODES.has(code) || code.startsWith('08'))) return true;
  // pg's own messages for a socket that ended or a connect that timed out carry no code.
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|not queryable/i.test(err.message);
}

/**
 * A connection failure after which the query certainly did not run: the connection was known dead
 * before it was sent, or the server answered it with a FATAL shutdown error (nothing commits after that).
 * A socket that just closed ("Connection terminated") leaves it unknown, and is not retried.
 */
function neverRan(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === '57P01' || code === '57P02' || code === '57P03' || /not queryable/i.test((err as Error).message ?? '');
}

/** Checked-out clients whose 'error' event we listen to (see connect()). */
const listened = new WeakSet<pg.PoolClient>();

const SERIALIZATION_CODES = new Set(['40001', '40P01']);
function isSerializationFailure(err: unknown): boolean {
  return err instanceof Error && SERIALIZATION_CODES.has((err as { code?: string }).code ?? '');
}

export interface PostgresSqlOptions {
  /** Connections in the pool (pg's default 10). */
  max?: number;
  /** Times transaction(fn) runs fn before a serialization failure is final. */
  maxAttempts?: number;
  /** Tries to connect before META_UNAVAILABLE (nothing has been sent, so a retry is safe). */
  connectAttempts?: number;
}

interface Tx {
  client: pg.PoolClient;
  open: boolean;
  /** The first database error inside the transaction: PostgreSQL has aborted it, even if fn caught the error. */
  failed: unknown;
}

export class PostgresSql implements Sql {
  readonly dialect = 'postgres' as const;
  private readonly pool: pg.Pool;
  private readonly current = new AsyncLocalStorage<Tx>();
  private readonly where: string;
  private readonly maxAttempts: number;
  private readonly connectAttempts: number;

  constructor(url: string, options: PostgresSqlOptions = {}) {
    this.where = endpoint(url);
    this.maxAttempts = options.maxAttempts ?? 12;
    this.connectAttempts = options.connectAttempts ?? 3;
    this.pool = new pg.Pool({
      connectionString: url,
      max: options.max ?? 10,
      types: TYPES,
      application_name: 'carryon',
      keepAlive: true,
      // Covers waiting for a free connection as well as connecting.
      connectionTimeoutMillis: 30_000,
      idleTimeoutMillis: 30_000,
    });
    // An idle connection the server ended (a restart, an admin's pg_terminate_backend) is dropped by the
    // pool; without a listener its 'error' would end the process. The next query opens a new one.
    this.pool.on('error', () => undefined);
  }

  get inTransaction(): boolean {
    return this.current.getStore()?.open === true;
  }

  private unavailable(err: unknown): CarryonError {
    const reason = err instanceof Error ? err.message : String(err);
    return new CarryonError('META_UNAVAILABLE', `the metadata database (PostgreSQL at ${this.where}) cannot be reached: ${reason}; check that PostgreSQL is running there and that --meta (or CARRYON_META, or DATA/backends.json) names it; nothing was changed`, { where: this.where }, err);
  }

  /** A pooled connection; connecting is retried with a short pause (the query has not been sent). */
  private async connect(): Promise<pg.PoolClient> {
    for (let attempt = 1; ; attempt++) {
      try {
        const client = await this.pool.connect();
        // pg-pool listens for a connection's 'error' only while it is idle; one that dies while we hold
        // it (between two queries of a transaction) would emit an unhandled 'error' and end the
        // process. The next query on it fails instead, and that failure is handled where it happens.
        if (!listened.has(client)) {
          listened.add(client);
          client.on('error', () => undefined);
        }
        return client;
      } catch (err) {
        if (!isConnectionError(err)) throw err;
        if (attempt >= this.connectAttempts || !retryableConnect(err)) throw this.unavailable(err);
        await sleep(100 * 2 ** attempt * (0.5 + Math.random()));
      }
    }
  }

  private async query(sql: string, params: readonly SqlValue[]): Promise<pg.QueryResult> {
    const { text, count } = numberPlaceholders(sql);
    if (count !== params.length) {
      throw new CarryonError('INTERNAL', `the query has ${count} placeholder(s) but ${params.length} value(s) were given`, { sql: sql.slice(0, 200) });
    }
    const values = params as unknown[];
    const tx = this.current.getStore();
    if (tx) {
      if (!tx.open) throw new CarryonError('INTERNAL', 'a query ran after its transaction ended');
      try {
        return await tx.client.query(text, values);
      } catch (err) {
        tx.failed ??= err;
        throw isConnectionError(err) ? this.unavailable(err) : err;
      }
    }
    return this.outside((client) => client.query(text, values));
  }

  /** A query outside any transaction, on a pooled connection; run again if it certainly did not run. */
  private async outside<R>(f: (client: pg.PoolClient) => Promise<R>): Promise<R> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.connect();
      try {
        const out = await f(client);
        client.release();
        return out;
      } catch (err) {
        if (!isConnectionError(err)) {
          client.release();
          throw err;
        }
        // A connection that failed is not given back to the pool.
        client.release(err as Error);
        if (attempt >= this.connectAttempts || !neverRan(err)) throw this.unavailable(err);
        await sleep(100 * 2 ** attempt * (0.5 + Math.random()));
      }
    }
  }

  async all<T>(sql: string, params: readonly SqlValue[] = []): Promise<T[]> {
    return (await this.query(sql, params)).rows as T[];
  }

  async get<T>(sql: string, params: readonly SqlValue[] = []): Promise<T | undefined> {
    return (await this.query(sql, params)).rows[0] as T | undefined;
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<{ changes: number }> {
    return { changes: (await this.query(sql, params)).rowCount ?? 0 };
  }

  async exec(sql: string): Promise<void> {
    // No parameters: pg uses the simple protocol, which runs several statements (in one implicit
    // transaction when outside ours).
    const tx = this.current.getStore();
    if (tx) {
      if (!tx.open) throw new CarryonError('INTERNAL', 'a query ran after its transaction ended');
      try {
        await tx.client.query(sql);
      } catch (err) {
        tx.failed ??= err;
        throw isConnectionError(err) ? this.unavailable(err) : err;
      }
      return;
    }
    await this.outside((client) => client.query(sql));
  }

  async transaction<T>(fn: () => Promise<T>): Promise<T> {
    if (this.current.getStore()?.open) return fn();
    let last: unknown;
    for (let attempt = 1; attempt <= this.maxAttempts; attempt++) {
      const outcome = await this.attempt(fn);
      if (outcome.ok) return outcome.value;
      last = outcome.error;
      if (attempt < this.maxAttempts) {
        // Full jitter: a pause drawn from [0, 5 ms * 2^attempt], at most 1 s, so the losers spread out.
        await sleep(Math.random() * Math.min(1000, 5 * 2 ** attempt));
      }
    }
    const code = (last as { code?: string }).code;
    throw new CarryonError('INTERNAL', `a transaction on the metadata database (PostgreSQL at ${this.where}) failed ${this.maxAttempts} times in a row on conflicts with concurrent ones (${code === '40P01' ? 'deadlock' : 'serialization failure'}); nothing was changed`, { attempts: this.maxAttempts, code }, last);
  }

  /** One run of fn in its own transaction: its value, a conflict to retry, or a thrown error. */
  private async attempt<T>(fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
    const client = await this.connect();
    const tx: Tx = { client, open: true, failed: undefined };
    let broken: Error | undefined;
    try {
      try {
        await client.query('BEGIN ISOLATION LEVEL SERIALIZABLE');
      } catch (err) {
        broken = err as Error;
        throw isConnectionError(err) ? this.unavailable(err) : err;
      }
      let value: T;
      try {
        value = await this.current.run(tx, fn);
      } catch (err) {
        tx.open = false;
        const conflict = isSerializationFailure(tx.failed) ? tx.failed : isSerializationFailure(err) ? err : undefined;
        broken = await this.rollback(client, tx.failed);
        if (conflict) return { ok: false, error: conflict };
        throw err;
      }
      tx.open = false;
      if (tx.failed) {
        // fn caught a failed query and returned: PostgreSQL has aborted the transaction, so COMMIT
        // would quietly roll back. Say so rather than report a commit that did not happen.
        broken = await this.rollback(client, tx.failed);
        if (isSerializationFailure(tx.failed)) return { ok: false, error: tx.failed };
        throw new CarryonError('INTERNAL', 'a query failed inside a transaction and the transaction went on; PostgreSQL aborted it and nothing was committed', {}, tx.failed);
      }
      try {
        const res = await client.query('COMMIT');
        if (res.command === 'ROLLBACK') throw new CarryonError('INTERNAL', 'PostgreSQL rolled the transaction back at COMMIT');
      } catch (err) {
        if (isSerializationFailure(err)) return { ok: false, error: err };
        if (isConnectionError(err)) {
          broken = err as Error;
          // The COMMIT may or may not have landed: not retried.
          throw this.unavailable(err);
        }
        throw err;
      }
      return { ok: true, value };
    } finally {
      tx.open = false;
      client.release(broken);
    }
  }

  /** ROLLBACK; a connection that cannot even do that is returned as broken (the pool drops it). */
  private async rollback(client: pg.PoolClient, failed: unknown): Promise<Error | undefined> {
    if (isConnectionError(failed)) return failed as Error;
    try {
      await client.query('ROLLBACK');
      return undefined;
    } catch (err) {
      return err instanceof Error ? err : new Error(String(err));
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/** Connecting again helps when the server is down, starting, restarting or busy; not for a bad password or database name. */
function retryableConnect(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return !(code === '28000' || code === '28P01' || code === '3D000');
}
