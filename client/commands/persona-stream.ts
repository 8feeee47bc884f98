// carryon persona mount|unmount|fetch: the streamed persona (client/persona-stream.ts). `mount` runs in
// the foreground until SIGINT/SIGTERM or an unmount, answering the FUSE helper and downloading the rest
// in the background; `fetch` downloads every chunk now and returns when the copy is ready to travel.
import type { Command } from 'commander';
import { CarryonError, describeFailure, parseName } from '../../src/index.js';
import { ApiClient } from '../api-client.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { fmtBytes } from '../progress.js';
import {
  checkStreamMount, clearMountRecord, defaultStreamMount, fetchAllChunks, heldStream, Hydrator, mountRecord, PersonaMount, requirePersonaFuse, streamProgress, unmountRecorded,
} from '../persona-stream.js';
import { homeOf, LocalState } from '../state.js';

export function registerPersonaStream(persona: Command): void {
  withCommonOptions(persona.command('mount <desktop>').description('show a streamed persona\'s profile at a folder (FUSE): files come down when first opened; runs until stopped'))
    .option('--at <dir>', 'where to show the profile (default: $XDG_RUNTIME_DIR/carryon/HOMETAG/NAME/profile)')
    .option('--no-download', 'fetch only the files opened, no background download')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      try {
        await mount(parseName(desktop, 'desktop'), opts);
      } catch (err) {
        const f = describeFailure(err);
        if (opts.json) process.stdout.write(`${f.json}\n`);
        process.stderr.write(`carryon: ${f.text}\n`);
        process.exitCode = f.exitCode;
      }
    });

  withCommonOptions(persona.command('unmount <desktop>').description('stop showing a streamed persona (its mount process stops; what was written stays in the copy)'))
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const name = parseName(desktop, 'desktop');
        const held = heldStream(s.state, name);
        const r = await unmountRecorded(held.dir);
        return { desktop: name, unmounted: r !== null, at: r?.at ?? null };
      }, (r) => (r.unmounted ? `the persona of ${r.desktop} is no longer shown at ${r.at}` : `the persona of ${r.desktop} was not mounted`));
    });

  withCommonOptions(persona.command('fetch <desktop>').description('download every file of a streamed persona now (before travelling); returns when all are local'))
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await runCommand(opts, async (s) => {
        const name = parseName(desktop, 'desktop');
        heldStream(s.state, name);
        const fetched = await fetchAllChunks(s.state, s.api(), name, (p) => {
          if (!opts.json) process.stderr.write(`\rpersona of ${name}: ${p.chunksLocal} of ${p.chunks} chunks local`);
        });
        if (!opts.json && fetched > 0) process.stderr.write('\n');
        return { desktop: name, fetched, ...(await streamProgress(s.state, name)) };
      }, (r) => `persona of ${r.desktop}: ${r.chunksLocal} of ${r.chunks} chunks local (${fmtBytes(r.bytesLocal)}), ${r.fetched} downloaded now` +
        (r.readyToTravel ? '; ready to travel (every file opens offline)' : ''));
    });
}

async function mount(name: string, opts: Record<string, unknown>): Promise<void> {
  const json = opts.json === true;
  const log = (event: string, fields: Record<string, unknown>, human: string): void => {
    if (json) process.stdout.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
    else process.stderr.write(`${human}\n`);
  };
  const state = new LocalState(homeOf(opts.home as string | undefined));
  let api: ApiClient | null = null;
  try {
    const held = heldStream(state, name);
    requirePersonaFuse();
    const other = mountRecord(held.dir);
    if (other) throw new CarryonError('INVALID_ARGUMENT', `the persona of ${name} is already shown at ${other.at} (process ${other.pid}): use it there, or \`carryon persona unmount ${name}\``, { path: other.at, pid: other.pid });
    const at = checkStreamMount(String(opts.at ?? defaultStreamMount(state.home, name)));
    const getApi = (): ApiClient => {
      if (!api) {
        const l = state.login();
        api = new ApiClient({ url: l.url, token: l.token, device: l.device, ca: l.ca, insecureHttp: l.insecureHttp });
      }
      return api;
    };
    const hydrator = new Hydrator(state, getApi, name, held.dir, log);
    const m = await PersonaMount.start(held.dir, at, hydrator);
    const p0 = await streamProgress(state, name);
    log('mounted', { desktop: name, at, backing: held.dir, ...p0 },
      `the persona of ${name} is at ${at}: every file is listed, and each comes down when first opened (${p0.chunksLocal} of ${p0.chunks} chunks local). Stop with Ctrl-C or \`carryon persona unmount ${name}\``);

    const stop = new AbortController();
    const download = opts.download === false || p0.readyToTravel ? Promise.resolve() : (async () => {
      let wait = 5_000;
      while (!stop.signal.aborted) {
        try {
          await fetchAllChunks(state, getApi(), name, (p) => log('download', p, `persona of ${name}: ${p.chunksLocal} of ${p.chunks} chunks local`), stop.signal);
          if (!stop.signal.aborted) log('complete', { desktop: name }, `persona of ${name}: every file is local: ready to travel`);
          return;
        } catch (err) {
          if (stop.signal.aborted) return;
          const f = describeFailure(err);
          log('download-error', { error: JSON.parse(f.json).error, retryInSeconds: wait / 1000 }, `persona of ${name}: ${f.text}; retrying in ${wait / 1000} s`);
          await new Promise<void>((r) => {
            const t = setTimeout(r, wait);
            stop.signal.addEventListener('abort', () => { clearTimeout(t); r(); }, { once: true });
          });
          wait = Math.min(wait * 2, 60_000);
        }
      }
    })();

    const signalled = new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    const cause = await Promise.race([signalled.then(() => 'signal' as const), m.exited.then(() => 'exited' as const)]);
    stop.abort();
    let lazy = false;
    let failure: CarryonError | null = null;
    if (cause === 'signal') lazy = (await m.unmount()).lazy;
    else {
      const { code, signal } = await m.exited;
      if (code !== 0) {
        failure = new CarryonError('IO_ERROR', `the persona's FUSE helper stopped (${signal ?? `code ${code}`})${m.lastWords() ? `: ${m.lastWords()}` : ''}; the copy keeps every write it acknowledged: mount again with \`carryon persona mount ${name}\``, { code, signal });
        log('helper-exited', { code, signal, message: m.lastWords() }, `carryon persona: ${failure.message}`);
      }
    }
    (api as ApiClient | null)?.close(); // ends a download under way: what landed is kept
    await download.catch(() => undefined);
    await clearMountRecord(held.dir).catch(() => undefined);
    // Discarded meanwhile (`carryon discard` unmounts first): nothing left to count.
    const p1 = await streamProgress(state, name).catch(() => ({ chunks: 0, chunksLocal: 0, bytes: 0, bytesLocal: 0, readyToTravel: false }));
    log('stopped', { desktop: name, at, lazy, hydrated: hydrator.hydratedNow, chunksFetched: hydrator.chunksFetched, ...p1 },
      `stopped showing the persona of ${name}${lazy ? ' (unmounted lazily: it goes away when the last application closes its files)' : ''}; ` +
      `${hydrator.hydratedNow} files fetched on open; ${p1.chunksLocal} of ${p1.chunks} chunks local`);
    if (failure) throw failure;
  } finally {
    (api as ApiClient | null)?.close();
    await state.close();
  }
}
