// The benchmark report in Markdown: a summary table of every comparison (median ratio, target, met),
// then per comparison its plot and every run; what failed or is missing, said out loud; and the short
// section spliced into README.md between the bench markers. Pure text in, text out (run-all.ts writes
// the files), so the unit test can check medians, verdicts and the splice without running a bench.

import { fmtRatio, fmtValue, MIN_RUNS, summarize, targetText, type Comparison } from './comparison.js';

export const README_START = '<!-- bench:start -->';
export const README_END = '<!-- bench:end -->';

export interface InvocationOutcome {
  label: string;
  command: string;
  seconds: number;
  /** Set when the bench could not run, exited non-zero, or wrote no JSON. */
  error?: string;
  /** Relative to the report: the bench's own output. */
  log?: string;
}

export interface BenchOutcome {
  name: string;
  title: string;
  /** Set when the bench's script is not there (not built, or not merged yet). */
  missing?: string;
  invocations: InvocationOutcome[];
}

export interface ReportInput {
  comparisons: Comparison[];
  benches: BenchOutcome[];
  /** ISO time, commit, machine, options: one line each in the header. */
  when: string;
  commit: string;
  machine: string;
  options: string;
  /** Plot of comparison c is `${plotDir}/${c.id}.svg`, relative to the report. */
  plotDir: string;
  /** Extra Markdown sections (already titled), e.g. the full check-in bytes table. */
  extra?: string[];
}

const esc = (s: string): string => s.replace(/\|/g, '\\|');

function verdict(c: Comparison): string {
  const s = summarize(c);
  if (s.runs === 0) return '**no runs**';
  if (s.met === undefined) return '-';
  return (s.met ? '**met**' : '**not met**') + (s.enoughRuns ? '' : ` (${s.runs} < ${MIN_RUNS} runs)`);
}

export function summaryTable(comparisons: readonly Comparison[], link?: (c: Comparison) => string): string {
  const rows = comparisons.map((c) => {
    const s = summarize(c);
    const name = link ? `[${esc(c.title)}](${link(c)})` : esc(c.title);
    const range = s.runs > 1 ? ` (${fmtRatio(s.minRatio)}-${fmtRatio(s.maxRatio)})` : '';
    return `| ${name} | ${esc(c.peerLabel)} | ${s.runs} | ${fmtValue(s.medianCarryon)} | ${fmtValue(s.medianPeer)} | ${esc(c.unit)} | ${fmtRatio(s.medianRatio)}${range} | ${c.target ? targetText(c.target) : '-'} | ${verdict(c)} |`;
  });
  return ['| comparison | peer | runs | carryon (median) | peer (median) | unit | ratio, median (min-max) | target | |', '|---|---|---:|---:|---:|---|---:|---|---|', ...rows].join('\n');
}

function runsTable(c: Comparison): string {
  const s = summarize(c);
  const rows = c.runs.map((r, i) => `| ${esc(r.label ?? `run ${i + 1}`)} | ${fmtValue(r.carryon)} | ${fmtValue(r.peer)} | ${fmtRatio(r.ratio)} | ${esc(r.note ?? '')} |`);
  if (c.runs.length > 1) rows.push(`| **median** | ${fmtValue(s.medianCarryon)} | ${fmtValue(s.medianPeer)} | **${fmtRatio(s.medianRatio)}** | medians of each column |`);
  return [`| run | carryon (${esc(c.unit)}) | ${esc(c.peerLabel)} (${esc(c.unit)}) | ratio | note |`, '|---|---:|---:|---:|---|', ...rows].join('\n');
}

export function reportMarkdown(r: ReportInput): string {
  const out: string[] = [];
  out.push('# carryon benchmark report', '');
  out.push('Written by `npm run bench` (`scripts/bench/run-all.ts`); every comparison is carryon against a peer measured in');
  out.push('the same run, each run shown, the target checked on the median of the runs\' ratios. Do not edit: run it again.', '');
  out.push(`- when: ${r.when}`, `- commit: ${r.commit}`, `- machine: ${r.machine}`, `- options: ${r.options}`, '');
  out.push('## Summary', '', `![every comparison: median ratio against its target](${r.plotDir}/overview.svg)`, '');
  out.push(summaryTable(r.comparisons, (c) => `#${c.id}`), '');
  const met = r.comparisons.filter((c) => summarize(c).met === true).length;
  const notMet = r.comparisons.filter((c) => summarize(c).met === false).length;
  const none = r.comparisons.filter((c) => summarize(c).runs === 0).length;
  out.push(`${r.comparisons.length} comparisons: ${met} met, ${notMet} not met, ${none} without runs.`, '');

  const problems = problemLines(r);
  out.push('## Benches that failed or are missing', '');
  out.push(problems.length ? problems.join('\n') : 'None: every bench ran and every comparison has its runs.', '');

  const groups = [...new Set(r.comparisons.map((c) => c.group))];
  for (const g of groups) {
    out.push(`## ${g}`, '');
    for (const c of r.comparisons.filter((x) => x.group === g)) {
      const s = summarize(c);
      out.push(`<a id="${c.id}"></a>`, `### ${c.title}`, '');
      out.push(`carryon: ${c.carryonLabel}. Peer: ${c.peerLabel}. Source: \`${c.source}\`.`, '');
      out.push(`![${esc(c.title)}](${r.plotDir}/${c.id}.svg)`, '');
      if (c.runs.length) out.push(runsTable(c), '');
      const t = c.target ? `target: carryon ${targetText(c.target)} the peer on the median; median ${fmtRatio(s.medianRatio)} over ${s.runs} runs: ${verdict(c)}` : `no target; median ${fmtRatio(s.medianRatio)}`;
      out.push(t + (s.runs > 0 && !s.enoughRuns ? ` (the issue asks for the median of at least ${MIN_RUNS} runs)` : '') + (c.exact ? ` (${c.exact})` : '') + '.', '');
      for (const p of c.problems) out.push(`- ${p}`);
      if (c.problems.length) out.push('');
    }
  }
  for (const e of r.extra ?? []) out.push(e.trimEnd(), '');
  out.push('## Runs of each bench', '');
  out.push('| bench | invocation | wall s | result | output |', '|---|---|---:|---|---|');
  for (const b of r.benches) {
    if (b.missing) out.push(`| ${b.name} | - | - | missing: ${esc(b.missing)} | - |`);
    for (const i of b.invocations) out.push(`| ${b.name} | \`${esc(i.command)}\` | ${i.seconds.toFixed(0)} | ${i.error ? `failed: ${esc(i.error.split('\n')[0]!)}` : 'ok'} | ${i.log ? `[log](${i.log})` : '-'} |`);
  }
  out.push('');
  return out.join('\n');
}

/** One line per bench that is missing or failed, and per comparison left short of runs. */
export function problemLines(r: Pick<ReportInput, 'benches' | 'comparisons'>): string[] {
  const lines: string[] = [];
  for (const b of r.benches) {
    if (b.missing) lines.push(`- **${b.name}** (${b.title}): missing: ${b.missing}`);
    for (const i of b.invocations) if (i.error) lines.push(`- **${b.name}** ${i.label}: ${i.error.split('\n')[0]}${i.log ? ` ([log](${i.log}))` : ''}`);
  }
  for (const c of r.comparisons) {
    if (c.runs.length === 0) lines.push(`- comparison "${c.title}": no runs${c.problems[0] ? ` (${c.problems[0]})` : ''}`);
  }
  return lines;
}

/** The README's performance section: overview plot, summary table, link to the full report. */
export function readmeSection(r: ReportInput, paths: { report: string; plotDir: string }): string {
  const out: string[] = [README_START];
  out.push('<!-- generated by `npm run bench` (scripts/bench/run-all.ts) from its report; edits here are overwritten -->', '');
  out.push(`Measured by \`npm run bench\` on ${r.when.slice(0, 10)} (${r.machine}; commit ${r.commit}): every comparison is carryon against`);
  out.push('a peer run in the same job on the same machine, repeated, the target checked on the median ratio. Every run, every');
  out.push(`plot and what failed: [the full report](${paths.report}); method and history: [docs/performance.md](docs/performance.md).`, '');
  out.push(`![every comparison: median ratio against its target](${paths.plotDir}/overview.svg)`, '');
  out.push(summaryTable(r.comparisons, (c) => `${paths.report}#${c.id}`), '');
  const problems = problemLines(r);
  if (problems.length) out.push('Not measured in that run:', '', ...problems.map((l) => l.replace(/\]\((?!https?:)([^)]*)\)/g, (_m, p: string) => `](${paths.report.replace(/[^/]*$/, '')}${p})`)), '');
  out.push(README_END);
  return out.join('\n');
}

/** README text with the part between the bench markers (markers included) replaced by `section`. */
export function spliceReadme(readme: string, section: string): string {
  const a = readme.indexOf(README_START);
  const b = readme.indexOf(README_END);
  if (a < 0 || b < 0 || b < a) throw new Error(`README.md has no ${README_START} ... ${README_END} markers: add them around the performance section`);
  if (readme.indexOf(README_START, a + 1) >= 0) throw new Error(`README.md has ${README_START} twice`);
  return readme.slice(0, a) + section + readme.slice(b + README_END.length);
}
