// carryon serve NAME: export a checked-out disk over NBD (a Unix socket by default, or 127.0.0.1:PORT)
// for QEMU, libvirt, qemu-img, nbdcopy or the Linux nbd driver. Every write is tracked in the dirty
// map, so the next check-in reads only what changed. A streamed check-out keeps downloading in the
// background while the VM runs; reads of blocks not yet local are fetched first, with read-ahead only
// by the order earlier streamed boots of the image version read blocks (the boot trace the check-out
// brought; this session's own goes to the server when it stops), else of sequential reads
// (client/read-ahead.ts; CARRYON_READ_AHEAD picks another policy for benchmarks).
// Runs in the foreground until SIGINT or SIGTERM, then flushes and closes the map cleanly.
// With --file DIR it also shows the export as a plain file, DIR/NAME.raw, through nbdfuse (FUSE), for
// hypervisors that need a file (VirtualBox, VMware): their writes go through the same dirty map.
// It also offers the persona's profile folder to a Linux guest (9p, QEMU's -virtfs: QEMU itself serves
// it, nothing to start here) and prints the QEMU and libvirt lines for both; --no-persona-share leaves the
// profile out. The folder shared is the one the next check-in scans, so guest edits become persona edits.
import { writeFileSync, renameSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Command } from 'commander';
import { CarryonError, describeFailure, MAX_BOOT_TRACE_BLOCKS, encodeCheap, encodeManifest, fmtBytes, fmtDuration, parseName, sectorCipherImplementation, serveNbdConnection, nbdSocket, NBD_ERRNO } from '../../src/index.js';
import { ApiClient } from '../api-client.js';
import { ServerBlockSource } from '../block-source.js';
import { optsOf, withCommonOptions } from '../cli-util.js';
import { DiskLock } from '../disk-lock.js';
import { checkMountDir, FuseFile, requireFuse } from '../fuse-file.js';
import { leaseStatus, renewLease, requireLease } from '../lease.js';
import { learnFromError } from '../rollback.js';
import { openLocalDisk, pendingChanges, requireCheckedOut } from '../disk-session.js';
import { personaFolder } from '../persona-vault.js';
import { PROFILE_DIR } from '../persona-engine.js';
import { GUEST_SCRIPTS_DIR, guestLines, profileShareOf, type ProfileShare } from '../guest-share.js';
import { homeOf, LocalState } from '../state.js';
import { readAheadPolicy } from '../read-ahead.js';
import { BootTraceRecorder, loadBootTrace, submitBootTrace } from '../boot-trace.js';
import { loadNbdData, NbdDataPath } from '../nbd-native.js';
import { defaultSources } from '../keyring.js';


/** NBD connections served at once (each bounded by NBD_CONNECTION_BUDGET). */
const MAX_NBD_CONNECTIONS = 16;
export function registerServe(program: Command): void {
  withCommonOptions(program.command('serve <desktop>').description('export a checked-out disk over NBD for a VM (tracks every write for a fast check-in)'))
    .option('--socket <path>', 'Unix socket to listen on (default: HOME/run/NAME.nbd)')
    .option('--port <n>', 'listen on 127.0.0.1:PORT instead of a Unix socket (0: any free port)')
    .option('--no-download', 'streamed check-outs: fetch only what the VM reads, no background download')
    .option('--file <dir>', 'also show the disk as a plain file DIR/NAME.raw (nbdfuse) for VirtualBox or VMware; writes to it go through the dirty map')
    .option('--no-persona-share', 'do not offer the persona\'s profile folder to the VM (9p tag carryon-profile; see docs/hypervisors.md)')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      try {
        await serve(parseName(desktop, 'desktop'), opts);
      } catch (err) {
        const f = describeFailure(err);
        if (opts.json) process.stdout.write(`${f.json}\n`);
        process.stderr.write(`carryon: ${f.text}\n`);
        process.exitCode = f.exitCode;
      }
    });
}

async function serve(name: string, opts: Record<string, unknown>): Promise<void> {
  const json = opts.json === true;
  const log = (event: string, fields: Record<string, unknown>, human: string): void => {
    if (json) process.stdout.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
    else process.stderr.write(`${human}\n`);
  };
  const state = new LocalState(homeOf(opts.home as string | undefined));
  let lock: DiskLock | null = null;
  let api: ApiClient | null = null;
  try {
    // An encrypted desktop: the key from the agent, --passphrase-file or the environment, else asked here.
    if (state.keys.exists()) await state.keys.unlock(defaultSources(opts.passphraseFile as string | undefined));
    const local = requireCheckedOut(state, name); // ROLLED_BACK too, when a rollback is known here already
    // An encrypted copy's persona: mounted for the session, so the user can work in it beside the VM.
    const persona = state.persona(name);
    if (persona?.withDisk) await personaFolder(state, persona);
    // The profile share: exactly the folder the next check-in scans (checked to be a real folder first).
    const share: ProfileShare | null = opts.personaShare !== false && persona?.withDisk ? profileShareOf(path.join(persona.dir, PROFILE_DIR)) : null;
    // --file: refuse before anything starts when FUSE cannot work or the folder is a bad place.
    let mountDir: string | null = null;
    if (opts.file !== undefined) {
      requireFuse();
      mountDir = checkMountDir(String(opts.file), state.home);
    }
    // Ask the server first when it answers (a short wait): a checkout an admin rolled back must not be
    // written any more (ROLLED_BACK), and the lease starts over. Offline, the lease rules decide alone.
    let leaseApi: ApiClient | null = null;
    try {
      const l = state.login();
      leaseApi = new ApiClient({ url: l.url, token: l.token, device: l.device, ca: l.ca, insecureHttp: l.insecureHttp, idleTimeoutMs: 10_000 });
    } catch {
      leaseApi = null;
    }
    const lease = await (async () => {
      if (leaseApi) {
        try {
          await renewLease(state, leaseApi, local, pendingChanges(state, local));
        } catch (err) {
          const e = describeFailure(err).error;
          if (e.code === 'ROLLED_BACK') throw err;
          log('offline', { code: e.code, message: e.message }, `carryon serve: could not ask the server (${e.code}: ${e.message}); going on under the offline lease`);
        }
      }
      return requireLease(state, state.checkout(name)!, null);
    })().finally(() => leaseApi?.close());
    if (lease.warning) log('lease-warning', { leaseExpiresAt: lease.expiresAt, remainingMs: lease.remainingMs }, `carryon serve: ${lease.warning}`);
    lock = DiskLock.acquire(state.home, name, 'serve');
    let source: ServerBlockSource | null = null;
    if (local.state === 'streaming') {
      try {
        const login = state.login();
        // A VM waits on on-demand reads: a hung server must turn into EIO, not a frozen guest.
        source = new ServerBlockSource(state.cacheOf(local.desktop), () => (api ??= new ApiClient({ url: login.url, token: login.token, device: login.device, ca: login.ca, insecureHttp: login.insecureHttp, idleTimeoutMs: 20_000 })), local.checkoutId, 16 * 1024 * 1024);
      } catch {
        source = null; // no login: serve what is local, fail reads of the rest
      }
    }
    // CARRYON_READ_AHEAD (benchmarks): 'trace' (the default: by the image version's boot trace when the
    // check-out got one, else sequential), 'sequential', 'fixed:N' (carryon's earlier policy) or 'off'.
    const readAheadSpec = process.env.CARRYON_READ_AHEAD;
    if (!readAheadPolicy(readAheadSpec, 1, 4096)) throw new CarryonError('INVALID_ARGUMENT', `CARRYON_READ_AHEAD must be trace, sequential, fixed:N or off, got ${JSON.stringify(readAheadSpec)}`);
    const { disk, trust } = await openLocalDisk(state, local, source);
    // A streamed disk still arriving: read ahead by the trace the check-out brought, and record this boot's own.
    const traceBase = disk.complete ? null : loadBootTrace(state.home, name);
    disk.setReadAhead(readAheadPolicy(readAheadSpec, disk.manifest.count, disk.manifest.blockSize, traceBase?.blocks)!);
    const recorder = traceBase ? new BootTraceRecorder(Math.min(MAX_BOOT_TRACE_BLOCKS, disk.manifest.count)) : null;
    disk.firstReads = recorder;
    await disk.journal.beginSession();
    const sockets = new Set<net.Socket>();
    const onIoError = (err: unknown, errno: number): void => log('io-error', { errno, message: String((err as Error)?.message ?? err) }, `carryon serve: ${errno === NBD_ERRNO.EIO ? 'I/O error' : `errno ${errno}`}: ${(err as Error)?.message ?? err}`);
    // A plaintext, fully local disk's connections go to C threads after the handshake (client/nbd-native.ts).
    const nbdData = loadNbdData();
    const dataPath = nbdData.addon ? new NbdDataPath(nbdData.addon, disk, onIoError) : null;
    // Set once the lease runs out while serving: the VM keeps the connections it has (pulling its disk
    // mid-write would do more harm than good), but no new client is let in until the lease is renewed.
    let leaseRefusal: string | null = null;
    const server = net.createServer((accepted) => {
      if (leaseRefusal) {
        log('refused', { reason: 'lease-expired' }, `carryon serve: refused a new NBD client: ${leaseRefusal}`);
        return void accepted.destroy();
      }
      // Each connection may hold up to its byte budget (src/nbd): a local client opening hundreds of them
      // must not multiply it without end. QEMU and nbdcopy use at most a handful.
      if (sockets.size + (dataPath?.connections ?? 0) >= MAX_NBD_CONNECTIONS) {
        log('refused', { reason: 'too-many-connections', max: MAX_NBD_CONNECTIONS }, `carryon serve: refused a new NBD client: ${MAX_NBD_CONNECTIONS} are connected already`);
        return void accepted.destroy();
      }
      // Re-created to read into large slabs (src/nbd): the same connection, fewer and larger reads.
      const sock = nbdSocket(accepted) as net.Socket;
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      void serveNbdConnection(sock, {
        lookup: (n) => (n === '' || n === name ? disk : null),
        list: () => [name],
        onError: onIoError,
        ...(dataPath ? { handOver: dataPath } : {}),
      });
    });
    const socketPath = opts.port === undefined ? path.resolve((opts.socket as string | undefined) ?? path.join(state.home, 'run', `${name}.nbd`)) : null;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CarryonError('IO_ERROR', `cannot listen: ${err.message}`, {}, err)));
      if (socketPath) {
        try {
          unlinkSync(socketPath); // a socket left by a killed serve (we hold the disk lock, so it is not live)
        } catch {
          /* none */
        }
        server.listen(socketPath, resolve);
      } else {
        const port = Number(opts.port);
        if (!Number.isInteger(port) || port < 0 || port > 65535) return reject(new CarryonError('INVALID_ARGUMENT', `--port must be 0-65535, got ${String(opts.port)}`));
        server.listen(port, '127.0.0.1', resolve);
      }
    });
    // Handlers go in before "listening" is printed: a supervisor may signal as soon as it reads it.
    const signalled = new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    // The control socket: `carryon replicate` asks for a point-in-time snapshot of the changed blocks.
    const ctlPath = path.join(state.home, 'run', `${name}.ctl`);
    try {
      unlinkSync(ctlPath);
    } catch {
      /* none */
    }
    const ctl = net.createServer((c) => {
      let buf = '';
      let answered = false;
      c.on('error', () => undefined);
      c.on('data', (d) => {
        if (answered) return;
        buf += d;
        if (buf.length > 4096) return void c.destroy(); // requests are one short line
        if (!buf.includes('\n')) return;
        answered = true;
        let reply: Record<string, unknown>;
        try {
          const req = JSON.parse(buf.slice(0, buf.indexOf('\n'))) as { op?: string };
          if (req.op !== 'snapshot') throw new CarryonError('BAD_REQUEST', `unknown control request ${String(req.op)}`);
          const t0 = Date.now();
          // No write of a native connection lands during the pass (the JavaScript path's writes wait for this turn).
          const snap = dataPath ? dataPath.gated(() => disk.snapshot(state.cacheOf(local.desktop))) : disk.snapshot(state.cacheOf(local.desktop));
          const pauseMs = Date.now() - t0;
          void snap.stored.then(() => state.cacheOf(local.desktop).sync()).then(() => {
            log('snapshot', { blocksChanged: snap.changed.length, pauseMs }, `snapshot for a restore point: ${snap.changed.length} blocks changed since check-out (the VM waited ${pauseMs} ms)`);
            c.end(`${JSON.stringify({ manifest: encodeManifest(snap.manifest).toString('base64'), changed: snap.changed, pauseMs })}\n`);
          }, (err: unknown) => c.end(`${describeFailure(err).json}\n`));
          return;
        } catch (err) {
          reply = JSON.parse(describeFailure(err).json) as Record<string, unknown>;
        }
        c.end(`${JSON.stringify(reply)}\n`);
      });
    });
    await new Promise<void>((resolve) => ctl.listen(ctlPath, resolve));
    const port = socketPath ? null : (server.address() as net.AddressInfo).port;
    let fuse: FuseFile | null = null;
    if (mountDir) {
      try {
        fuse = await FuseFile.mount({ dir: mountDir, fileName: `${name}.raw`, socket: socketPath, port, pidFile: path.join(state.home, 'run', `${name}.nbdfuse.pid`), size: disk.size });
      } catch (err) {
        server.close();
        ctl.close();
        for (const s of sockets) s.destroy();
        await dataPath?.stopAll();
        await disk.close();
        for (const p of [socketPath, ctlPath]) if (p) try { unlinkSync(p); } catch { /* gone */ }
        throw err;
      }
    }
    const uri = socketPath ? `nbd+unix:///${name}?socket=${socketPath}` : `nbd://127.0.0.1:${port}/${name}`;
    const lines = guestLines({ name, socket: socketPath, port, share });
    const changed = disk.journal.dirtyCount;
    const p0 = disk.progress();
    const shareNote = share ? `  profile: ${share.path} shared as 9p tag ${share.tag}; copy ${GUEST_SCRIPTS_DIR} into a Linux guest and run carryon-logon.sh USER at logon, carryon-logoff.sh USER at logoff (docs/hypervisors.md); --no-persona-share leaves it out\n`
      : opts.personaShare === false ? '  profile: not shared (--no-persona-share)\n' : `  profile: not shared: this check-out holds no persona\n`;
    log('listening', { desktop: name, uri, socket: socketPath, port, size: disk.size, blocksChanged: changed, dirtyMap: trust, dataPath: dataPath && disk.nativeFd !== null ? 'native' : 'js', localBytes: p0.localBytes, totalBytes: p0.totalBytes, cipher: disk.cipher, ...(fuse ? { file: fuse.file } : {}),
      personaShare: share, qemuArgs: lines.qemuArgs, qemuLine: lines.qemuLine, libvirtXml: lines.libvirtXml, guestScripts: GUEST_SCRIPTS_DIR },
      `serving ${name} (${fmtBytes(disk.size)}) on ${uri}\n` +
      `  qemu:  ${lines.qemuLine} ...\n` +
      shareNote +
      `  libvirt (in <devices>):\n${lines.libvirtXml.replace(/^/gm, '    ')}\n` +
      (fuse ? `  file:  ${fuse.file} (raw, through nbdfuse): give it to VirtualBox or VMware as a raw disk (docs/hypervisors.md)\n` +
        `  stop:  shut down the VM, then Ctrl-C here or kill -TERM ${process.pid} (fusermount3 -u ${fuse.dir} also stops it)\n` : '') +
      (disk.cipher === 'js' ? `  encrypted at rest with the slower JavaScript cipher: the native XTS addon is not in use (${sectorCipherImplementation().detail}); \`npm run build:native\` in carryon's folder builds it\n` : '') +
      `  dirty map: ${changed} blocks changed since check-out; ${trust.trusted ? (trust.recovered ? 'recovered after an unclean stop' : 'in order') : `the next check-in scans the whole disk (${trust.reason})`}` +
      (disk.complete ? '' : `\n  streaming: ${fmtBytes(p0.localBytes)} of ${fmtBytes(p0.totalBytes)} local; ${source ? (opts.download === false ? 'fetching only what the VM reads' : 'downloading the rest in the background') : 'not logged in: blocks not yet local fail with EIO'}`));

    // The lease is watched while serving too: at its end, renew it if the server answers, else refuse new clients.
    let leaseTimer: NodeJS.Timeout | null = null;
    let watching = true;
    const watchLease = (): void => {
      if (!watching) return;
      const now = state.checkout(name);
      if (!now) return;
      const st = leaseStatus(state, now);
      if (st.remainingMs === null) return;
      if (!st.expired) {
        leaseTimer = setTimeout(watchLease, Math.min(60_000, st.remainingMs + 250));
        return;
      }
      const renewer = (() => {
        try {
          const l = state.login();
          return new ApiClient({ url: l.url, token: l.token, device: l.device, ca: l.ca, insecureHttp: l.insecureHttp, idleTimeoutMs: 10_000 });
        } catch {
          return null;
        }
      })();
      void requireLease(state, now, renewer).then(() => {
        if (leaseRefusal) log('lease-renewed', {}, `${name}: the lease was renewed; new NBD clients are let in again`);
        leaseRefusal = null;
      }, (err: unknown) => {
        const e = describeFailure(err).error;
        if (!leaseRefusal) log('lease-expired', { error: e.toJSON() }, `carryon serve: ${e.message} Connected clients keep working; new ones are refused.`);
        leaseRefusal = e.message;
      }).finally(() => {
        renewer?.close();
        if (watching) leaseTimer = setTimeout(watchLease, 60_000);
      });
    };
    watchLease();
    const markComplete = (): void => {
      const now = state.checkout(name)!;
      if (now.state !== 'streaming') return;
      state.putCheckout({ ...now, state: 'active', cheap: encodeCheap(disk.cheap) });
      log('complete', { desktop: name }, `${name}: every block is local: ready to travel`);
    };
    if (disk.complete) markComplete(); // finished by on-demand reads in an earlier session
    const stop = new AbortController();
    const progressFile = path.join(state.home, 'run', `${name}.progress.json`);
    let download: Promise<void> = Promise.resolve();
    if (!disk.complete && source && opts.download !== false) {
      download = (async () => {
        const t0 = Date.now();
        const startBytes = disk.progress().localBytes;
        let lastLog = 0;
        let wait = 1000;
        while (!disk.complete && !stop.signal.aborted) {
          try {
            await disk.download((p) => {
              const secs = (Date.now() - t0) / 1000;
              const rate = secs > 0 ? (p.localBytes - startBytes) / secs : 0;
              writeAtomic(progressFile, JSON.stringify({ desktop: name, ...p, rateBytesPerSec: Math.round(rate), updatedAt: new Date().toISOString(), pid: process.pid }));
              if (Date.now() - lastLog > 5000 || p.localBytes === p.totalBytes) {
                lastLog = Date.now();
                const eta = rate > 0 ? (p.totalBytes - p.localBytes) / rate : Infinity;
                log('download', { ...p, rateBytesPerSec: Math.round(rate) }, `streaming ${name}: ${fmtBytes(p.localBytes)} of ${fmtBytes(p.totalBytes)} local (${((100 * p.localBytes) / p.totalBytes).toFixed(1)}%), ${fmtBytes(rate)}/s, ETA ${fmtDuration(eta)}`);
              }
            }, stop.signal);
            wait = 1000;
          } catch (err) {
            if (stop.signal.aborted) return;
            const e = describeFailure(err);
            log('download-error', { error: e.error.toJSON(), retryInSeconds: wait / 1000 }, `streaming ${name}: ${e.text}; retrying in ${wait / 1000} s`);
            await new Promise<void>((r) => {
              const t = setTimeout(r, wait);
              stop.signal.addEventListener('abort', () => {
                clearTimeout(t);
                r();
              }, { once: true });
            });
            wait = Math.min(wait * 2, 60_000);
          }
        }
        if (disk.complete) markComplete();
      })();
    }

    // With --file, nbdfuse ending on its own (fusermount3 -u by the user, or a crash) stops the export too.
    const cause = await Promise.race([signalled.then(() => 'signal' as const), ...(fuse ? [fuse.exited.then(() => 'file-exited' as const)] : [])]);
    let fileFailure: CarryonError | null = null;
    if (fuse) {
      if (cause === 'file-exited') {
        const { code, signal } = await fuse.exited;
        const words = fuse.lastWords();
        if (code === 0) log('file-unmounted', { file: fuse.file }, `${fuse.file} was unmounted: stopping`);
        else {
          fileFailure = new CarryonError('IO_ERROR', `nbdfuse exited (${signal ?? `code ${code}`})${words ? `: ${words}` : ''}; ${fuse.file} is gone and the export was stopped. Every write acknowledged to the VM is in the disk and the dirty map`, { file: fuse.file, code, signal });
          log('file-exited', { file: fuse.file, code, signal, message: words }, `carryon serve: ${fileFailure.message}`);
        }
      }
      await fuse.unmount(log);
    }
    stop.abort();
    watching = false;
    if (leaseTimer) clearTimeout(leaseTimer);
    server.close();
    ctl.close();
    for (const s of sockets) s.destroy();
    await dataPath?.stopAll(); // each thread answers what it owes, then closes its descriptors
    (api as ApiClient | null)?.close(); // ends a download request under way: what landed is kept
    await download.catch(() => undefined);
    await disk.close();
    if (disk.complete) markComplete();
    const now = state.checkout(name)!;
    if (now.state === 'streaming') state.putCheckout({ ...now, cheap: encodeCheap(disk.cheap) });
    for (const p of [socketPath, ctlPath]) {
      if (!p) continue;
      try {
        unlinkSync(p);
      } catch {
        /* gone */
      }
    }
    // This session's read order goes to the server for the next streamed boot of the image version (best
    // effort), unless it read less than half of the trace it had: a session that only peeked at the disk
    // (qemu-img info, a VM stopped early) must not replace a whole boot's order.
    let bootTrace: Record<string, unknown> | null = null;
    if (recorder && traceBase && recorder.blocks.length > 0 && recorder.blocks.length >= traceBase.blocks.length / 2 && source) {
      let reporter: ApiClient | null = null;
      try {
        const l = state.login();
        reporter = new ApiClient({ url: l.url, token: l.token, device: l.device, ca: l.ca, insecureHttp: l.insecureHttp, idleTimeoutMs: 10_000 });
        bootTrace = { reported: (await submitBootTrace(reporter, name, traceBase, recorder.blocks)).blocks };
      } catch (err) {
        bootTrace = { reported: 0, error: describeFailure(err).error.toJSON() };
      } finally {
        reporter?.close();
      }
    }
    log('stopped', { desktop: name, ...disk.stats, readAhead: disk.readAheadName, traceBlocks: traceBase?.blocks.length ?? null, ...(bootTrace ? { bootTrace } : {}), blocksChanged: disk.journal.dirtyCount }, `stopped serving ${name}: ${disk.journal.dirtyCount} blocks changed since check-out; the dirty map is closed cleanly${fuse ? `; ${fuse.file} is unmounted` : ''}`);
    if (fileFailure) throw fileFailure;
  } catch (err) {
    throw learnFromError(state, err);
  } finally {
    (api as ApiClient | null)?.close();
    lock?.release();
    await state.close();
  }
}

function writeAtomic(file: string, text: string): void {
  try {
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  } catch {
    /* progress is advisory */
  }
}
