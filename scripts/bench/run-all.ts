// `npm run bench`: every comparison of issue 13 (NBD export, streamed boot, cold check-out, sparse full
// scans, server CPU) plus the check-in bytes table, each bench started as its own process with --out,
// its JSON mapped by an adapter (run-all-adapters.ts) to comparisons {carryon, peer, ratio per run,
// target, median, met}; then a Markdown report, one SVG plot per comparison and an overview plot
// (../lib/svg-plot.ts), and README.md's performance section regenerated between its bench markers.
// A bench that is missing or fails is named in the report and in the exit code, never skipped quietly.
//
// Usage: npm run bench -- [--quick] [--only nbd,boot,checkin,sparse,server-cpu] [--repeat 5] [--out DIR]
//        [--readme | --no-readme] [--from DIR] [--timeout MIN]

import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { readArgs } from '../lib/args.js';
import { type BenchOutcome, readmeSection, reportMarkdown, spliceReadme } from '../lib/bench-report.js';
import { carryonMissing, REPO_ROOT, type Json } from '../lib/carryon-cli.js';
import { summarize, type Comparison } from '../lib/comparison.js';
import { showCommand } from '../lib/proc.js';
import { comparisonSvg, overviewSvg } from '../lib/svg-plot.js';
import { ADAPTERS, checkinBytesTable, type InvocationResult, type RunAllOptions } from './run-all-adapters.js';

const USAGE = `usage: npm run bench -- [--quick] [--only ${ADAPTERS.map((a) => a.name).join(',')}] [--repeat N] [--out DIR] [--readme|--no-readme] [--from DIR] [--timeout MIN]
  --quick      small sizes (256 MiB images, a 2 GiB sparse disk) and 2 runs unless --repeat: a smoke run
  --only       these benches only (comma-separated)
  --repeat N   runs per comparison (default 5: the issue wants medians of at least 5 runs)
  --out DIR    where the report goes (default docs/bench): DIR/report.md, DIR/plots/*.svg, DIR/raw/ (JSON, logs)
  --readme     regenerate README.md's performance section (the default only for a full run: not --quick, not --only)
  --no-readme  never touch README.md
  --from DIR   run nothing: rebuild the report and plots from the JSON files of an earlier run (its raw/
               folder; every <bench>-<n>.json there; give the same --quick as that run)
  --timeout M  minutes one bench process may take before it is interrupted (default 90; SIGINT, SIGKILL 30 s later)`;

interface Options extends RunAllOptions {
  only?: string[];
  out: string;
  readme?: boolean;
  from?: string;
  timeoutMinutes: number;
}

function parseOptions(argv: string[]): Options {
  const o: Options = { quick: false, repeat: 0, out: join(REPO_ROOT, 'docs', 'bench'), timeoutMinutes: 90 };
  for (const { flag, value } of readArgs(argv, USAGE)) {
    if (flag === '--quick') o.quick = true;
    else if (flag === '--only') {
      o.only = value().split(',').map((s) => s.trim()).filter(Boolean);
      const bad = o.only.filter((n) => !ADAPTERS.some((a) => a.name === n));
      if (bad.length || !o.only.length) throw new Error(`unknown bench "${bad.join(',')}" (${ADAPTERS.map((a) => a.name).join(', ')})\n${USAGE}`);
    } else if (flag === '--repeat') {
      o.repeat = Number(value());
      if (!Number.isInteger(o.repeat) || o.repeat < 1) throw new Error(`--repeat takes a positive integer\n${USAGE}`);
    } else if (flag === '--out') o.out = resolve(value());
    else if (flag === '--readme') o.readme = true;
    else if (flag === '--no-readme') o.readme = false;
    else if (flag === '--from') o.from = resolve(value());
    else if (flag === '--timeout') {
      o.timeoutMinutes = Number(value());
      if (!(o.timeoutMinutes > 0)) throw new Error(`--timeout takes minutes\n${USAGE}`);
    }
    else if (flag === '--help' || flag === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${flag}\n${USAGE}`);
  }
  if (o.repeat === 0) o.repeat = o.quick ? 2 : 5;
  return o;
}

const log = (s: string): void => console.log(s);

/** One bench process: its output to a log file, its JSON from --out. */
function runBench(script: string, args: string[], jsonFile: string, logFile: string, timeoutMs: number): Promise<{ code: number; seconds: number; json?: Json; error?: string }> {
  const started = Date.now();
  rmSync(jsonFile, { force: true }); // an earlier run's JSON must never stand in for this one's
  return new Promise((done) => {
    const out = createWriteStream(logFile);
    const child = spawn(process.execPath, [script, ...args, '--out', jsonFile], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pipe(out, { end: false });
    child.stderr.pipe(out, { end: false });
    let tail = '';
    const keep = (b: Buffer): void => {
      tail = (tail + b.toString('utf8')).slice(-4000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    // A bench that hangs must not hang the report: SIGINT (the benches clean up their temp folders on
    // it), then SIGKILL. Only this child is signalled; its own children die with it or by its exit hook.
    let timedOut = false;
    let killer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGINT');
      killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    }, timeoutMs);
    let finished = false;
    const finish = (code: number, why?: string): void => {
      if (finished) return; // 'error' and 'close' can both come
      finished = true;
      clearTimeout(timer);
      clearTimeout(killer);
      if (timedOut) why = `timed out after ${(timeoutMs / 60000).toFixed(0)} min (--timeout)`;
      out.end();
      const seconds = (Date.now() - started) / 1000;
      let json: Json | undefined;
      let error = why;
      if (existsSync(jsonFile)) {
        try {
          json = JSON.parse(readFileSync(jsonFile, 'utf8')) as Json;
        } catch (e) {
          error ??= `its JSON does not parse: ${e instanceof Error ? e.message : String(e)}`;
        }
      } else error ??= `exit code ${code}, no JSON written`;
      // A bench that wrote its JSON but exited non-zero had a failed row: keep the numbers, say so.
      if (code !== 0 && !error) error = `exit code ${code} (some rows failed; the numbers it wrote are used)`;
      if (error && code !== 0) error += `: ${tail.trim().split('\n').slice(-3).join(' / ')}`;
      done({ code, seconds, json, error });
    };
    child.on('error', (e) => finish(127, `cannot start: ${e.message}`));
    child.on('close', (code, signal) => finish(code ?? 128, signal ? `killed by ${signal}` : undefined));
  });
}

/** Short commit of the tree measured, marked when it has uncommitted changes. */
function gitCommit(): string {
  const git = (...args: string[]): string => {
    const r = spawnSync('git', ['-C', REPO_ROOT, ...args], { encoding: 'utf8' });
    return r.status === 0 ? r.stdout.trim() : '';
  };
  const head = git('rev-parse', '--short', 'HEAD');
  if (!head) return 'unknown (not a git checkout)';
  return git('status', '--porcelain', '--untracked-files=no') ? `${head} (with uncommitted changes)` : head;
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  const adapters = ADAPTERS.filter((a) => !o.only || o.only.includes(a.name));
  const raw = o.from ?? join(o.out, 'raw');
  const plots = join(o.out, 'plots');
  mkdirSync(raw, { recursive: true });
  mkdirSync(plots, { recursive: true });
  const started = Date.now();
  const built = carryonMissing();
  if (built) log(`warning: ${built} (the benches will say which rows they skip)`);
  log(`npm run bench: ${adapters.map((a) => a.name).join(', ')}; ${o.repeat} run${o.repeat === 1 ? '' : 's'} each${o.quick ? ', quick sizes' : ''}; report in ${relative(process.cwd(), o.out) || '.'}`);

  const benches: BenchOutcome[] = [];
  const comparisons: Comparison[] = [];
  const extra: string[] = [];
  for (const a of adapters) {
    const script = join(REPO_ROOT, 'dist', 'scripts', 'bench', a.script);
    const outcome: BenchOutcome = { name: a.name, title: a.title, invocations: [] };
    benches.push(outcome);
    const results: InvocationResult[] = [];
    let invocations = a.invocations(o, existsSync(script) ? readFileSync(script, 'utf8') : '');
    let fileNos = invocations.map((_, i) => i + 1);
    if (o.from) {
      // Rebuilding: the processes that earlier run started, whatever this tree's benches would start now.
      const found = readdirSync(raw).map((f) => new RegExp(`^${a.name}-(\\d+)\\.json$`).exec(f)).filter((m) => m !== null).map((m) => Number(m[1])).sort((x, y) => x - y);
      if (found.length) {
        invocations = found.map((k) => invocations[k - 1] ?? { label: `run ${k}`, args: [] });
        fileNos = found;
      }
    }
    if (!o.from && !existsSync(script)) {
      outcome.missing = `${relative(REPO_ROOT, script)} not found (not built with \`npx tsc -b\`, or the bench is not merged yet)`;
      log(`\n== ${a.name}: MISSING: ${outcome.missing}`);
      for (const inv of invocations) results.push({ label: inv.label, error: `bench missing: ${outcome.missing}` });
    } else {
      log(`\n== ${a.name}: ${a.title}, ${invocations.length} process${invocations.length === 1 ? '' : 'es'}`);
      for (const [i, inv] of invocations.entries()) {
        const stem = `${a.name}-${fileNos[i]!}`;
        const jsonFile = join(raw, `${stem}.json`);
        const logFile = join(raw, `${stem}.log`);
        const command = showCommand('node', [`dist/scripts/bench/${a.script}`, ...inv.args]);
        let r: { seconds: number; json?: Json; error?: string };
        if (o.from) {
          r = existsSync(jsonFile) ? { seconds: 0, json: JSON.parse(readFileSync(jsonFile, 'utf8')) as Json } : { seconds: 0, error: `${relative(process.cwd(), jsonFile)} not found` };
        } else {
          log(`  ${inv.label}: ${command}`);
          r = await runBench(script, inv.args, jsonFile, logFile, o.timeoutMinutes * 60_000);
          log(`    ${r.error ? `FAILED (${r.error.split('\n')[0]})` : 'ok'} in ${r.seconds.toFixed(0)} s`);
        }
        results.push({ label: inv.label, json: r.json, error: r.json ? undefined : r.error });
        outcome.invocations.push({ label: inv.label, command, seconds: r.seconds, error: r.error, log: existsSync(logFile) ? relative(o.out, logFile) : undefined });
      }
    }
    const mapped = a.map(results, o);
    comparisons.push(...mapped);
    if (a.name === 'checkin') {
      const t = checkinBytesTable(results);
      if (t) extra.push(t);
    }
    for (const c of mapped) {
      const s = summarize(c);
      log(`  ${c.title}: ${s.runs} run${s.runs === 1 ? '' : 's'}, median ${s.medianRatio?.toFixed(2) ?? '-'}x${s.met === undefined ? '' : s.met ? ' MET' : ' NOT MET'}`);
    }
  }
  // Report order: issue items 1-5, then the regression guards (group names start with the item number).
  comparisons.sort((x, y) => x.group.localeCompare(y.group));

  for (const c of comparisons) writeFileSync(join(plots, `${c.id}.svg`), comparisonSvg(c));
  writeFileSync(join(plots, 'overview.svg'), overviewSvg(comparisons));
  const machine = `${cpus().length} cores (${cpus()[0]?.model.trim() ?? '?'}), ${(totalmem() / 1024 ** 3).toFixed(0)} GiB, node ${process.version}`;
  const input = {
    comparisons,
    benches,
    when: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    commit: gitCommit(),
    machine,
    options: `${o.quick ? '--quick ' : ''}--repeat ${o.repeat}${o.only ? ` --only ${o.only.join(',')}` : ''}${o.from ? ' (rebuilt from earlier JSON)' : ''}; whole run ${((Date.now() - started) / 60000).toFixed(1)} min`,
    plotDir: 'plots',
    extra,
  };
  const reportFile = join(o.out, 'report.md');
  writeFileSync(reportFile, reportMarkdown(input));
  writeFileSync(join(o.out, 'comparisons.json'), JSON.stringify({ ...input, comparisons: comparisons.map((c) => ({ ...c, summary: summarize(c) })) }, null, 2) + '\n');
  log(`\nreport: ${relative(process.cwd(), reportFile)}; plots: ${relative(process.cwd(), plots)}/ (${comparisons.length} + overview)`);

  const readme = o.readme ?? (!o.quick && !o.only);
  if (readme && relative(REPO_ROOT, o.out).startsWith('..')) {
    log(`README.md left alone: the report is outside the repository (${o.out}), its links would break there`);
  } else if (readme) {
    const readmeFile = join(REPO_ROOT, 'README.md');
    const rel = (p: string): string => relative(REPO_ROOT, p).split('\\').join('/');
    const text = spliceReadme(readFileSync(readmeFile, 'utf8'), readmeSection(input, { report: rel(reportFile), plotDir: rel(plots) }));
    writeFileSync(readmeFile, text);
    log('README.md: performance section regenerated');
  } else log('README.md left alone (a quick or partial run; --readme forces it)');

  const missing = comparisons.filter((c) => c.runs.length === 0).length;
  const failed = benches.filter((b) => b.missing || b.invocations.some((i) => i.error)).map((b) => b.name);
  const notMet = comparisons.filter((c) => summarize(c).met === false).length;
  log(`${comparisons.length} comparisons: ${comparisons.length - missing - notMet} met or without target, ${notMet} not met, ${missing} without runs` + (failed.length ? `; benches with failures: ${failed.join(', ')}` : ''));
  // Targets missed are results, not errors; a bench that could not run is an error.
  return failed.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`run-all failed: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(2);
  },
);
