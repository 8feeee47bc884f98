// app-bench: does the traveller's app (`carryon app`) cost anything over the CLI? A cold check-out of the
// same desktop image started from the app (POST, then Server-Sent Events until the job ends) against
// `carryon checkout` as a process, both on fresh laptop homes against one carryon-server, alternating
// which goes first, in the same run. Also counts the progress events the page would receive.
//
//   node dist/scripts/bench/app-bench.js [--size 256] [--runs 3] [--out FILE.json]
//
// The CLI's time is its process's wall time (start-up included, as a user waits for it) and, second peer,
// the `seconds` its JSON reports (the engine alone, from its start to the result); the app's is from the
// POST to the job's last event (the app process is already running, as it is for its user).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeExt4Image } from '../fixtures/ext4-image.js';
import { CLIENT_BIN, carryon, carryonServer, startServer } from '../lib/carryon-cli.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
}

const sizeMiB = Number(arg('size', '256'));
const runs = Number(arg('runs', '3'));
const out = arg('out', '');

/** A running `carryon app` on `home`: its URLs. */
async function startApp(home: string): Promise<{ url: string; openUrl: string; stop: () => void }> {
  const child = spawn(process.execPath, [CLIENT_BIN, 'app', '--no-open', '--json'], { env: { ...process.env, CARRYON_HOME: home }, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(buf.slice(0, nl));
    });
    child.on('exit', (code) => reject(new Error(`carryon app exited ${code}`)));
  });
  const j = JSON.parse(line) as { url: string; openUrl: string };
  return { url: j.url, openUrl: j.openUrl, stop: () => child.kill('SIGTERM') };
}

/** Check out through the app's HTTP API as the page does; seconds from the POST to the job's end. */
async function appCheckout(app: { url: string; openUrl: string }, desktop: string): Promise<{ seconds: number; events: number; progressEvents: number }> {
  const login = await fetch(app.openUrl, { redirect: 'manual' });
  const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
  const origin = app.url.replace(/\/$/, '');
  const events = await fetch(`${app.url}api/events`, { headers: { cookie } });
  const reader = events.body!.getReader();
  const t0 = performance.now();
  const post = await fetch(`${app.url}api/desktops/${desktop}/checkout`, { method: 'POST', headers: { cookie, origin, 'content-type': 'application/json' }, body: '{}' });
  if (post.status !== 202) throw new Error(`POST checkout: ${post.status} ${await post.text()}`);
  let buf = '';
  let n = 0;
  let progress = 0;
  const dec = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error('the event stream ended before the job');
    buf += dec.decode(value);
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split('\n').find((l) => l.startsWith('data: '));
      if (!data) continue;
      const job = JSON.parse(data.slice(6)) as { state: string; done: number; error: unknown };
      n++;
      if (job.done > 0) progress++;
      if (job.state === 'failed') throw new Error(`app check-out failed: ${JSON.stringify(job.error)}`);
      if (job.state === 'done') {
        const seconds = (performance.now() - t0) / 1000;
        await reader.cancel();
        return { seconds, events: n, progressEvents: progress };
      }
    }
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const dir = mkdtempSync(path.join(os.tmpdir(), 'carryon-app-bench-'));
const data = path.join(dir, 'data');
let server: Awaited<ReturnType<typeof startServer>> | null = null;
try {
  const image = path.join(dir, 'golden.raw');
  // The scripts' own fixture (reproducible: fixed UUID, hash seed and clock): half the image in real /usr files.
  await makeExt4Image({ out: image, sizeBytes: sizeMiB * 1024 * 1024, payloadBytes: (sizeMiB / 2) * 1024 * 1024 });
  await carryonServer(data, 'init');
  const token = (await carryonServer(data, 'user', 'add', 'alice')).json.token as string;
  await carryonServer(data, 'image', 'publish', 'golden', image);
  for (let i = 0; i < runs; i++) for (const w of ['cli', 'app']) await carryonServer(data, 'desktop', 'create', `${w}${i}`, '--user', 'alice', '--image', 'golden', '--encryption', 'off');
  server = await startServer(data);
  const rows: Array<{ run: number; first: string; cliSeconds: number; cliEngineSeconds: number; appSeconds: number; ratio: number; ratioEngine: number; events: number; progressEvents: number }> = [];
  for (let i = 0; i < runs; i++) {
    const cliHome = path.join(dir, `cli-home-${i}`);
    const appHome = path.join(dir, `app-home-${i}`);
    for (const h of [cliHome, appHome]) await carryon(h, 'login', server.url, '--token', token, '--device-name', path.basename(h));
    const app = await startApp(appHome);
    let cliSeconds = 0;
    let cliEngineSeconds = 0;
    let a = { seconds: 0, events: 0, progressEvents: 0 };
    const cli = async (): Promise<void> => {
      const r = await carryon(cliHome, 'checkout', `cli${i}`);
      cliSeconds = r.seconds;
      cliEngineSeconds = r.json.seconds as number;
    };
    const viaApp = async (): Promise<void> => {
      a = await appCheckout(app, `app${i}`);
    };
    const first = i % 2 === 0 ? 'cli' : 'app';
    if (first === 'cli') {
      await cli();
      await viaApp();
    } else {
      await viaApp();
      await cli();
    }
    app.stop();
    const row = { run: i + 1, first, cliSeconds, cliEngineSeconds, appSeconds: a.seconds, ratio: a.seconds / cliSeconds, ratioEngine: a.seconds / cliEngineSeconds, events: a.events, progressEvents: a.progressEvents };
    rows.push(row);
    console.log(`run ${row.run} (${first} first): app ${row.appSeconds.toFixed(2)} s, cli ${row.cliSeconds.toFixed(2)} s (ratio ${row.ratio.toFixed(2)}), cli engine ${row.cliEngineSeconds.toFixed(2)} s (ratio ${row.ratioEngine.toFixed(2)}); ${row.events} events (${row.progressEvents} with bytes done)`);
    rmSync(cliHome, { recursive: true, force: true });
    rmSync(appHome, { recursive: true, force: true });
  }
  const summary = { bench: 'app', sizeMiB, runs: rows, medianRatio: median(rows.map((r) => r.ratio)), medianRatioEngine: median(rows.map((r) => r.ratioEngine)) };
  console.log(`median ratio app/cli process: ${summary.medianRatio.toFixed(2)}, app/cli engine: ${summary.medianRatioEngine.toFixed(2)} (${sizeMiB} MiB image, ${runs} runs)`);
  if (out) writeFileSync(out, JSON.stringify(summary, null, 2));
} finally {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
}
