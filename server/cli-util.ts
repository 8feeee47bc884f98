// Server CLI glue: the data folder option, human vs --json output, and failures as exit codes.
import { describeFailure, fmtBytes } from '../src/index.js';
import { openParts, type ServerParts } from './services/parts.js';

export interface GlobalOpts {
  data?: string;
  json?: boolean;
  /** The metadata database (postgres://...) and block store URLs, when not the data folder's own. */
  meta?: string;
  store?: string;
}

export function dataDirOf(opts: GlobalOpts): string | undefined {
  return opts.data ?? process.env.CARRYON_DATA;
}

/**
 * Run a command body with the server's parts opened (the same services the HTTP routes call); print its
 * result; map failures to exit codes.
 */
export async function withData<T>(opts: GlobalOpts, body: (p: ServerParts) => Promise<T> | T, human: (r: T) => string): Promise<void> {
  await run(opts, async () => {
    const p = await openParts(dataDirOf(opts), { meta: opts.meta, store: opts.store });
    try {
      return await body(p);
    } finally {
      await p.close();
    }
  }, human);
}

export async function run<T>(opts: GlobalOpts, body: () => Promise<T>, human: (r: T) => string): Promise<void> {
  try {
    const r = await body();
    process.stdout.write(opts.json ? `${JSON.stringify(r)}\n` : `${human(r)}\n`);
  } catch (err) {
    const f = describeFailure(err);
    if (opts.json) process.stdout.write(`${f.json}\n`);
    process.stderr.write(`carryon-server: ${f.text}\n`);
    process.exitCode = f.exitCode;
  }
}

export { fmtBytes };
