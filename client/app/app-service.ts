// The traveller's app, its service half: what the page shows and the operations it starts, each through
// the same functions the CLI commands call (checkoutDesktop, checkinDesktop, renewCheckout,
// replicateDesktop, laptopStatus, runUpdate) inside withSession, as `carryon <command>` runs them. Long
// operations are jobs run in this process, one at a time per desktop (DISK_IN_USE otherwise; the CLI's
// disk locks still hold between this process and others); their progress comes from the engines' own
// Progress objects through a progress sink. Knows nothing of HTTP: app-server.ts renders it.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { asCarryonError, CarryonError, CARRYON_VERSION, errorFromBody, type DesktopInfo, type MergeConflict, type MergeReport } from '../../src/index.js';
import { checkinDesktop } from '../checkin-engine.js';
import { checkoutDesktop } from '../checkout-engine.js';
import { laptopStatus } from '../checkout-status.js';
import { withSession, type CommonOpts, type Session } from '../cli-util.js';
import { guestLines } from '../guest-share.js';
import { withProgressSink, type ProgressReport } from '../progress.js';
import { renewCheckout, type RenewResult } from '../renew.js';
import { replicateDesktop } from '../replicate.js';
import { runUpdate, type UpdateResult } from '../updater.js';
import { PROFILE_DIR } from '../persona-engine.js';

/** The carryon command (its launcher runs the version the laptop switched to), for `carryon serve`. */
const CLI_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/carryon.js');

/** A `carryon serve NAME --json` this app started: its `listening` event once it came. */
interface Serving {
  proc: ChildProcess;
  listening: Record<string, unknown> | null;
  exited: Promise<void>;
}

/** How long the page waits for the server's list of desktops before showing what the laptop holds. */
const LIST_TIMEOUT_MS = 5000;

export type JobKind = 'checkout' | 'stream' | 'checkin' | 'replicate';

/** An error as the page shows it: the code and the sentence written for the user, never a stack. */
export interface AppError {
  code: string;
  message: string;
}

export interface Job {
  id: number;
  desktop: string;
  kind: JobKind;
  state: 'running' | 'done' | 'failed';
  /** The engine's current phase ("checkout desk", "scan desk (dirty map)", ...). */
  phase: string;
  done: number;
  total: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  startedAt: string;
  finishedAt: string | null;
  result: Record<string, unknown> | null;
  error: AppError | null;
}

export interface DesktopRow {
  name: string;
  /** From the server: null while it cannot be reached. */
  server: { version: number; size: number; updatedAt: string; heldBy: string | null; heldHere: boolean; encryption: string | null } | null;
  /** What `carryon status` says of this laptop's copy; null when it holds none. */
  local: Record<string, unknown> | null;
  /** Bytes a check-out would still download, at most; null when unknown. */
  toFetch: number | null;
  toFetchNote: string;
  /** What an admin asked of this checkout and is not done, as the server said at this app's last contact for it (Renew). */
  adminRequests: Array<{ id: number; kind: string; state: string }>;
  /** How to start the VM on this copy (after `carryon serve NAME`); servedByApp: this app runs that serve. */
  vm: { serve: string; qemuLine: string; libvirtXml: string; servedByApp: boolean } | null;
}

export interface Overview {
  version: string;
  home: string;
  login: { url: string; deviceName: string } | null;
  offline: AppError | null;
  desktops: DesktopRow[];
  jobs: Job[];
}

export function appError(err: unknown): AppError {
  const e = asCarryonError(err);
  return { code: e.code, message: e.message };
}

export class AppService {
  private readonly jobs = new Map<number, Job>();
  private nextId = 1;
  private readonly listeners = new Set<(j: Job) => void>();
  /** Admin requests per desktop, from the heartbeat of the app's last renewal. */
  private readonly asked = new Map<string, RenewResult['adminRequests']>();
  private readonly serving = new Map<string, Serving>();

  constructor(private readonly opts: CommonOpts) {}

  session<T>(body: (s: Session) => Promise<T>): Promise<T> {
    return withSession(this.opts, body, { prompt: false });
  }

  /** Desktops the user may check out (from the server, when reachable) beside what this laptop holds. */
  async overview(): Promise<Overview> {
    return this.session(async (s) => {
      const status = await laptopStatus(s.state, undefined, true, false);
      let login: Overview['login'] = null;
      try {
        const l = s.state.login();
        login = { url: l.url, deviceName: l.deviceName };
      } catch {
        /* not logged in: the page says how */
      }
      let server: DesktopInfo[] | null = null;
      let offline: AppError | null = null;
      if (login) {
        // The page waits for this answer: a server that hangs (a captive portal, a dead link) must not hold
        // it for the client's idle timeout; the session's close drops the request.
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new CarryonError('SERVER_UNREACHABLE', `the server at ${login!.url} did not answer within ${LIST_TIMEOUT_MS / 1000} s`, { url: login!.url })), LIST_TIMEOUT_MS);
        });
        try {
          server = (await Promise.race([s.api().desktops(), late])).desktops;
        } catch (err) {
          offline = appError(err);
        } finally {
          clearTimeout(timer);
        }
      }
      const device = login ? s.state.login().device : null;
      const names = new Set<string>([...(server ?? []).map((d) => d.name), ...status.desktops.map((d) => d.desktop as string)]);
      const desktops: DesktopRow[] = [];
      for (const name of [...names].sort()) {
        const info = server?.find((d) => d.name === name) ?? null;
        const local = status.desktops.find((d) => d.desktop === name) ?? null;
        const r = row(s, name, info, local, device);
        const served = this.serving.get(name)?.listening;
        if (r.vm && served) r.vm = { ...r.vm, qemuLine: `qemu-system-x86_64 -m 2048 ${served.qemuLine as string}`, libvirtXml: served.libvirtXml as string, servedByApp: true };
        desktops.push({ ...r, adminRequests: local && (local.state === 'active' || local.state === 'streaming') ? (this.asked.get(name) ?? []).map((q) => ({ id: q.id, kind: q.kind, state: q.state })) : [] });
      }
      return { version: CARRYON_VERSION, home: s.state.home, login, offline, desktops, jobs: this.listJobs() };
    });
  }

  listJobs(): Job[] {
    return [...this.jobs.values()].sort((a, b) => b.id - a.id);
  }

  job(id: number): Job | null {
    return this.jobs.get(id) ?? null;
  }

  onJob(fn: (j: Job) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(j: Job): void {
    for (const fn of this.listeners) fn(j);
  }

  /** Start a long operation; refused while another runs on the same desktop in this app. */
  start(kind: JobKind, desktop: string): Job {
    const busy = [...this.jobs.values()].find((j) => j.desktop === desktop && j.state === 'running');
    if (busy) throw new CarryonError('DISK_IN_USE', `a ${busy.kind} of ${desktop} is already running in this app (started ${busy.startedAt}): wait for it to finish`, { desktop, job: busy.id });
    const job: Job = { id: this.nextId++, desktop, kind, state: 'running', phase: 'starting', done: 0, total: 0, rateBytesPerSec: 0, etaSeconds: null,
      startedAt: new Date().toISOString(), finishedAt: null, result: null, error: null };
    this.jobs.set(job.id, job);
    let last = 0;
    const sink = (p: ProgressReport): void => {
      const secs = (Date.now() - p.startedAt) / 1000;
      job.phase = p.label;
      job.done = p.done;
      job.total = p.total;
      job.rateBytesPerSec = secs > 0 ? p.done / secs : 0;
      job.etaSeconds = job.rateBytesPerSec > 0 ? Math.round((p.total - p.done) / job.rateBytesPerSec) : null;
      const now = Date.now();
      if (p.finished || now - last >= 150) {
        last = now;
        this.emit(job);
      }
    };
    const body = kind === 'checkout' ? checkoutBody : kind === 'stream' ? streamBody : kind === 'checkin' ? checkinBody : replicateBody;
    this.emit(job);
    void withProgressSink(sink, () => this.session((s) => body(s, desktop))).then(
      (r) => {
        job.state = 'done';
        job.result = r;
        if (kind === 'checkin') this.asked.delete(desktop);
      },
      (err) => {
        job.state = 'failed';
        job.error = appError(err);
      },
    ).finally(() => {
      job.finishedAt = new Date().toISOString();
      this.emit(job);
    });
    return job;
  }

  async renew(desktop: string, code: string | undefined): Promise<RenewResult> {
    const r = await this.session((s) => renewCheckout(s.state, s.api, desktop, code));
    if (code === undefined) this.asked.set(desktop, r.adminRequests);
    return r;
  }

  /**
   * Start `carryon serve NAME` (the same command a user types: the disk over NBD on HOME/run/NAME.nbd,
   * the dirty map, the rest of a streamed copy downloaded) as a child of the app; resolves with its
   * `listening` event, or fails with the error serve printed.
   */
  async serve(desktop: string): Promise<Record<string, unknown>> {
    if (this.serving.has(desktop)) throw new CarryonError('DISK_IN_USE', `${desktop} is already served by this app: stop it first`, { desktop });
    const busy = [...this.jobs.values()].find((j) => j.desktop === desktop && j.state === 'running');
    if (busy) throw new CarryonError('DISK_IN_USE', `a ${busy.kind} of ${desktop} is running in this app: wait for it to finish`, { desktop, job: busy.id });
    const args = [CLI_BIN, 'serve', desktop, '--json', ...(this.opts.home ? ['--home', this.opts.home] : []), ...(this.opts.passphraseFile ? ['--passphrase-file', this.opts.passphraseFile] : [])];
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    const entry: Serving = { proc, listening: null, exited };
    this.serving.set(desktop, entry);
    void exited.then(() => {
      if (this.serving.get(desktop) === entry) this.serving.delete(desktop);
    });
    return new Promise((resolve, reject) => {
      let buf = '';
      proc.stdout!.on('data', (c: Buffer) => {
        buf += c.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let e: Record<string, unknown>;
          try {
            e = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
          } catch {
            e = {};
          }
          buf = buf.slice(nl + 1);
          if (e.event === 'listening') {
            entry.listening = e;
            resolve(e);
          } else if (e.error && !entry.listening) reject(errorFromBody(409, e));
        }
      });
      void exited.then(() => {
        if (!entry.listening) reject(new CarryonError('INTERNAL', `carryon serve ${desktop} stopped before it served the disk: ${stderr.trim().split('\n').pop() ?? ''}`));
      });
    });
  }

  /** Stop a serve this app started (SIGTERM: serve closes the dirty map cleanly). */
  async stopServe(desktop: string): Promise<{ desktop: string; stopped: boolean }> {
    const entry = this.serving.get(desktop);
    if (!entry) return { desktop, stopped: false };
    entry.proc.kill('SIGTERM');
    await entry.exited;
    return { desktop, stopped: true };
  }

  /** Stop every serve this app started (the app is stopping). */
  async close(): Promise<void> {
    await Promise.all([...this.serving.keys()].map((d) => this.stopServe(d)));
  }

  /** Whether the company's server offers another version of this client (nothing is installed). */
  update(): Promise<UpdateResult> {
    return this.session((s) => runUpdate(s.state, s.api(), s.state.home, { apply: false }));
  }
}

function row(s: Session, name: string, info: DesktopInfo | null, local: Record<string, unknown> | null, device: string | null): Omit<DesktopRow, 'adminRequests'> {
  const held = local && (local.state === 'active' || local.state === 'streaming');
  let toFetch: number | null = null;
  let toFetchNote = '';
  if (held) {
    toFetch = Math.max(0, (local.size as number) - ((local.localBytes as number | undefined) ?? 0));
    toFetchNote = toFetch === 0 ? 'every block is on this laptop' : 'the rest of a streamed copy';
  } else if (info) {
    if (local?.state === 'checked-in' && local.version === info.version) {
      toFetch = 0;
      toFetchNote = `this laptop holds version ${info.version}: a check-out reuses it in place`;
    } else if (local?.state === 'checked-in') {
      toFetch = info.size;
      toFetchNote = `at most; this laptop holds version ${local.version as number}, whose unchanged blocks are reused`;
    } else {
      toFetch = info.size;
      toFetchNote = 'at most: blocks already cached here and holes are not downloaded';
    }
  }
  const vm = held
    ? (() => {
        const lines = guestLines({ name, socket: path.join(s.state.home, 'run', `${name}.nbd`), port: null, share: null });
        return { serve: `carryon serve ${name}`, qemuLine: `qemu-system-x86_64 -m 2048 ${lines.qemuLine}`, libvirtXml: lines.libvirtXml, servedByApp: false };
      })()
    : null;
  return {
    name,
    server: info && {
      version: info.version, size: info.size, updatedAt: info.updatedAt, encryption: info.encryption ?? null,
      heldBy: info.checkout ? info.checkout.deviceName : null, heldHere: info.checkout !== null && info.checkout.device === device,
    },
    local, toFetch, toFetchNote, vm,
  };
}

async function checkoutBody(s: Session, desktop: string): Promise<Record<string, unknown>> {
  const r = await checkoutDesktop(s.state, s.api(), s.login(), desktop, { quiet: true });
  // "Ready to travel" comes from the same place as `carryon status`: every block local.
  const st = (await laptopStatus(s.state, desktop, true, false)).desktops[0];
  return { ...r, readyToTravel: st?.readyToTravel === true, localBytes: st?.localBytes ?? null };
}

/** `carryon checkout NAME --stream`: back once the manifest and persona are here; `carryon serve` fetches the rest. */
async function streamBody(s: Session, desktop: string): Promise<Record<string, unknown>> {
  const r = await checkoutDesktop(s.state, s.api(), s.login(), desktop, { quiet: true, stream: true });
  const st = (await laptopStatus(s.state, desktop, true, false)).desktops[0];
  return { ...r, readyToTravel: st?.readyToTravel === true, localBytes: st?.localBytes ?? null };
}

async function checkinBody(s: Session, desktop: string): Promise<Record<string, unknown>> {
  const r = await checkinDesktop(s.state, s.api(), s.login(), desktop, { quiet: true });
  const dir = s.state.persona(desktop)?.dir ?? null;
  const report = (r.persona?.report ?? null) as MergeReport | null;
  return { ...r, conflicts: report ? report.conflicts.map((c) => conflictPaths(c, dir)) : [] };
}

/** Both copies of a conflict, as paths the user can open: the one at the path and the one kept aside. */
function conflictPaths(c: MergeConflict, dir: string | null): Record<string, unknown> {
  const file = (p: string): string => (dir && c.kind === 'file' ? path.join(dir, PROFILE_DIR, p) : p);
  return {
    kind: c.kind, path: c.path, reason: c.reason, resolution: c.resolution, kept: c.kept,
    at: c.kind === 'file' ? file(c.path) : `${dir ? path.join(dir, 'registry.reg') : 'registry.reg'}: ${c.path}`,
    keptCopy: c.keptCopy === undefined ? null : file(c.keptCopy),
  };
}

async function replicateBody(s: Session, desktop: string): Promise<Record<string, unknown>> {
  return { ...(await replicateDesktop(s.state, s.api(), desktop, true)) };
}
