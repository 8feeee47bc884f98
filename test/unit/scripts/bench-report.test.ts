// The benchmark report of `npm run bench`: medians and verdicts (scripts/lib/comparison.ts), the SVG
// plots (scripts/lib/svg-plot.ts, checked as well-formed XML by a small parser here), the Markdown report
// and the README splice (scripts/lib/bench-report.ts), the adapters' mapping of a bench's JSON
// (scripts/bench/run-all-adapters.ts), and run-all itself as a process rebuilding a report from JSON.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from '../../e2e/harness.js';
import { median, pair, summarize, type Comparison } from '../../../scripts/lib/comparison.js';
import { comparisonSvg, escapeXml, niceStep, overviewSvg, tickLabel } from '../../../scripts/lib/svg-plot.js';
import { README_END, README_START, readmeSection, reportMarkdown, spliceReadme, type ReportInput } from '../../../scripts/lib/bench-report.js';
import { benchComparisons, checkinAdapter, nbdExportAdapter, serverCpuAdapter, sparseScanAdapter, streamBootAdapter } from '../../../scripts/bench/run-all-adapters.js';

/** Well-formed XML, or the first reason it is not: one root, tags nested and closed, attributes quoted once, text escaped. */
function xmlProblem(xml: string): string | undefined {
  let s = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  if (/<\?|<!DOCTYPE/i.test(s)) return 'processing instruction or doctype after the declaration';
  s = s.replace(/<!--[\s\S]*?-->/g, '');
  const stack: string[] = [];
  let roots = 0;
  let pos = 0;
  const textOk = (t: string): boolean => !/[<>]/.test(t) && !/&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-f]+);)/i.test(t);
  for (const m of s.matchAll(/<[^>]*>/g)) {
    const between = s.slice(pos, m.index);
    if (!textOk(between)) return `bad text: ${between.slice(0, 60)}`;
    if (stack.length === 0 && between.trim()) return `text outside the root: ${between.trim().slice(0, 40)}`;
    pos = m.index! + m[0].length;
    const tag = m[0];
    const close = /^<\/([A-Za-z][\w:.-]*)\s*>$/.exec(tag);
    if (close) {
      if (stack.pop() !== close[1]) return `</${close[1]}> does not close the open element`;
      continue;
    }
    const open = /^<([A-Za-z][\w:.-]*)((?:\s+[A-Za-z_:][\w:.-]*\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>$/.exec(tag);
    if (!open) return `malformed tag: ${tag.slice(0, 80)}`;
    const names = [...open[2]!.matchAll(/([A-Za-z_:][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)];
    const seen = new Set<string>();
    for (const a of names) {
      if (seen.has(a[1]!)) return `attribute ${a[1]} twice in ${tag.slice(0, 60)}`;
      seen.add(a[1]!);
      if (!textOk(a[2] ?? a[3] ?? '')) return `bad attribute value in ${tag.slice(0, 60)}`;
    }
    if (stack.length === 0 && ++roots > 1) return 'more than one root element';
    if (!open[3]) stack.push(open[1]!);
  }
  if (s.slice(pos).trim()) return 'text after the root';
  if (stack.length) return `unclosed <${stack.join('><')}>`;
  if (roots !== 1) return 'no root element';
  return undefined;
}

const comparison = (over: Partial<Comparison> = {}): Comparison => ({
  id: 'nbd-read-1conn-nbdkit',
  group: '1. NBD export',
  title: 'NBD read, 1 connection: carryon serve vs nbdkit <file> & "friends"',
  unit: 'MB/s',
  carryonLabel: 'carryon serve',
  peerLabel: 'nbdkit file',
  target: { op: '>=', ratio: 0.8 },
  source: 'nbd-bench.js --parts export',
  problems: [],
  runs: [
    { carryon: 900, peer: 1000, ratio: 0.9 },
    { carryon: 500, peer: 1000, ratio: 0.5 },
    { carryon: 1700, peer: 2000, ratio: 0.85 },
    { carryon: 700, peer: 1000, ratio: 0.7 },
    { carryon: 1600, peer: 1800, ratio: 1600 / 1800 },
  ],
  ...over,
});

describe('comparison: medians and targets', () => {
  it('takes the median of the run ratios, not the ratio of the medians', () => {
    const s = summarize(comparison());
    // ratios 0.5, 0.7, 0.85, 0.889, 0.9 -> 0.85; carryon median 900, peer median 1000 (would give 0.9)
    expect(s.medianRatio).toBeCloseTo(0.85, 10);
    expect(s.medianCarryon).toBe(900);
    expect(s.medianPeer).toBe(1000);
    expect(s.minRatio).toBe(0.5);
    expect(s.maxRatio).toBe(0.9);
    expect(s.met).toBe(true);
    expect(s.enoughRuns).toBe(true);
  });

  it('judges each kind of bound, an even count of runs, and no runs', () => {
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([])).toBeUndefined();
    const runs = [pair(3, 2)!, pair(1, 1)!]; // ratios 1.5, 1 -> median 1.25
    expect(summarize(comparison({ runs, target: { op: '<=', ratio: 1.25 } })).met).toBe(true);
    expect(summarize(comparison({ runs, target: { op: '<', ratio: 1.25 } })).met).toBe(false);
    expect(summarize(comparison({ runs, target: { op: '>', ratio: 1.25 } })).met).toBe(false);
    expect(summarize(comparison({ runs, target: { op: '>=', ratio: 1.3 } })).met).toBe(false);
    expect(summarize(comparison({ runs })).enoughRuns).toBe(false);
    const none = summarize(comparison({ runs: [] }));
    expect(none.met).toBeUndefined();
    expect(none.medianRatio).toBeUndefined();
  });

  it('pairs only finite values against a positive peer', () => {
    expect(pair(1, 0)).toBeUndefined();
    expect(pair(undefined, 2)).toBeUndefined();
    expect(pair(Number.NaN, 2)).toBeUndefined();
    expect(pair(3, 2)).toEqual({ carryon: 3, peer: 2, ratio: 1.5 });
  });
});

describe('svg plots', () => {
  it('writes a well-formed plot per comparison with every run, the medians, the target and escaped labels', () => {
    const svg = comparisonSvg(comparison());
    expect(xmlProblem(svg)).toBeUndefined();
    expect(svg).not.toMatch(/NaN|undefined|Infinity/);
    expect(svg).toContain('&lt;file&gt; &amp; &quot;friends&quot;');
    for (const r of ['0.90x', '0.50x', '0.70x', '0.89x']) expect(svg).toContain(`>${r}<`);
    expect(svg).toContain('>median<');
    expect(svg).toContain('median of 5 runs: 0.85x → MET');
    expect(svg.match(/stroke-dasharray/g)!.length).toBe(6 + 1); // 5 runs + the medians + the legend
    // carryon and peer bars: two per run and two for the medians
    expect(svg.match(/<rect [^>]*fill="#2b6cb0"><title>/g)!.length).toBe(6);
  });

  it('says when a comparison has no runs, and when its target is missed', () => {
    const none = comparisonSvg(comparison({ runs: [], problems: ['bench missing: stream-boot-bench.js not found'] }));
    expect(xmlProblem(none)).toBeUndefined();
    expect(none).toContain('no runs: bench missing');
    const missed = comparisonSvg(comparison({ target: { op: '>=', ratio: 0.9 } }));
    expect(missed).toContain('NOT MET');
    expect(xmlProblem(missed)).toBeUndefined();
  });

  it('draws an overview of every comparison on one log axis', () => {
    const list = [comparison(), comparison({ id: 'b', title: 'check-in bytes', target: { op: '<', ratio: 1 }, runs: [pair(9, 10)!] }), comparison({ id: 'c', title: 'boot', runs: [], problems: ['missing'] }), comparison({ id: 'd', title: 'waste', target: { op: '<=', ratio: 2 }, runs: [pair(14.5, 1)!] })];
    const svg = overviewSvg(list);
    expect(xmlProblem(svg)).toBeUndefined();
    expect(svg).not.toMatch(/NaN|undefined|Infinity/);
    expect(svg).toContain('0.85x met');
    expect(svg).toContain('0.90x met');
    expect(svg).toContain('14.50x not met');
    expect(svg).toContain('no runs: missing');
    expect(svg).toContain('>16x<'); // the axis reaches past 14.5
  });

  it('the XML check itself rejects what is not well-formed', () => {
    expect(xmlProblem('<svg><g></svg>')).toBeDefined();
    expect(xmlProblem('<svg a="1" a="2"/>')).toBeDefined();
    expect(xmlProblem('<svg>a & b</svg>')).toBeDefined();
    expect(xmlProblem('<svg/><svg/>')).toBeDefined();
    expect(xmlProblem(`<svg><text>${escapeXml('a & <b>')}</text></svg>`)).toBeUndefined();
    expect(niceStep(0.93)).toBe(0.2);
    expect(niceStep(1234)).toBe(250);
    expect(tickLabel(0.1 + 0.2)).toBe('0.3');
    expect(tickLabel(0.5)).toBe('0.5');
  });
});

describe('markdown report and README section', () => {
  const input: ReportInput = {
    comparisons: [comparison(), comparison({ id: 'boot', group: '2. On-demand reads', title: 'boot fetch', runs: [], problems: ['run 1: bench missing'] })],
    benches: [
      { name: 'nbd', title: 'NBD export', invocations: [{ label: '1 connection', command: 'node dist/scripts/bench/nbd-bench.js', seconds: 60, log: 'raw/nbd-1.log' }] },
      { name: 'boot', title: 'streamed boot', missing: 'dist/scripts/bench/stream-boot-bench.js not found', invocations: [] },
    ],
    when: '2026-12-03T08:00:00Z',
    commit: 'abc1234',
    machine: '2 cores',
    options: '--repeat 5',
    plotDir: 'plots',
  };

  it('lists every comparison with its median, target and verdict, every run, and what is missing', () => {
    const md = reportMarkdown(input);
    expect(md).toContain('| [NBD read, 1 connection: carryon serve vs nbdkit <file> & "friends"](#nbd-read-1conn-nbdkit) | nbdkit file | 5 | 900 | 1000 | MB/s | 0.85x (0.50x-0.90x) | at least 0.80x | **met** |');
    expect(md).toContain('![NBD read, 1 connection');
    expect(md).toContain('(plots/nbd-read-1conn-nbdkit.svg)');
    expect(md).toContain('| **median** | 900 | 1000 | **0.85x** |');
    expect(md).toContain('**boot** (streamed boot): missing: dist/scripts/bench/stream-boot-bench.js not found');
    expect(md).toContain('comparison "boot fetch": no runs');
    expect(md).toContain('2 comparisons: 1 met, 0 not met, 1 without runs.');
    expect(md.indexOf('## 1. NBD export')).toBeLessThan(md.indexOf('## 2. On-demand reads'));
  });

  it('replaces exactly the part of the README between the markers, and refuses a README without them', () => {
    const section = readmeSection(input, { report: 'docs/bench/report.md', plotDir: 'docs/bench/plots' });
    expect(section.startsWith(README_START)).toBe(true);
    expect(section.endsWith(README_END)).toBe(true);
    expect(section).toContain('![every comparison: median ratio against its target](docs/bench/plots/overview.svg)');
    expect(section).toContain('(docs/bench/report.md#nbd-read-1conn-nbdkit)');
    const readme = `# x\n\n## Performance\n\n${README_START}\nold text\n${README_END}\n\n## Fuzzing\n`;
    const out = spliceReadme(readme, section);
    expect(out).not.toContain('old text');
    expect(out.startsWith('# x\n\n## Performance\n\n')).toBe(true);
    expect(out.endsWith(`${README_END}\n\n## Fuzzing\n`)).toBe(true);
    expect(spliceReadme(out, section)).toBe(out);
    expect(() => spliceReadme('# no markers', section)).toThrow(/markers/);
  });

  it('the repository README carries the markers once', () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    expect(readme.split(README_START).length).toBe(2);
    expect(readme.split(README_END).length).toBe(2);
  });
});

// The shape checkin-bench.ts and nbd-bench.ts write with --out (only the fields the adapters read).
const checkinJson = (carryonBytes: number, coldSeconds: number, casyncSeconds: number) => ({
  image: { size: 256 * 1024 ** 2 },
  baselines: { casyncExtract: { bytes: 1, seconds: casyncSeconds }, zstdFloor: { bytes: 1, seconds: 1 } },
  workloads: ['small', 'large', 'fs'].map((name) => ({
    name,
    ideal: { bytes: 5e6 },
    carryon: { checkin: { bytes: carryonBytes }, coldCheckout: { bytes: 90e6, seconds: coldSeconds } },
    peers: { rsync: { bytes: 12e6 }, rsyncZstd: { bytes: 7e6 }, rdiff: { bytes: 8e6 }, rdiffDeltaOnly: { bytes: 6e6 }, casync: { bytes: 9e6 } },
  })),
});

describe('adapters', () => {
  const o = { quick: true, repeat: 2 };

  it('checkin: bytes against the smallest peer of each run, cold check-out against casync and zstd -d, failures kept', () => {
    const cs = checkinAdapter.map([{ label: 'run 1', json: checkinJson(5e6, 3, 2) }, { label: 'run 2', json: checkinJson(5e6, 1, 2) }, { label: 'run 3', error: 'exit code 1, no JSON written' }], o);
    const byId = new Map(cs.map((c) => [c.id, c]));
    const small = byId.get('checkin-bytes-small')!;
    expect(small.runs.map((r) => r.ratio)).toEqual([5 / 6, 5 / 6]); // rdiff delta only (6 MB) is the smallest peer
    expect(small.runs[0]!.note).toContain('peer: rdiff');
    expect(summarize(small).met).toBe(true);
    expect(small.problems).toEqual(['run 3: exit code 1, no JSON written']);
    const casync = byId.get('cold-checkout-vs-casync')!;
    expect(casync.runs.map((r) => r.ratio)).toEqual([1.5, 0.5]);
    expect(summarize(casync).medianRatio).toBe(1);
    expect(summarize(casync).met).toBe(false); // the issue: below casync
    expect(summarize(byId.get('cold-checkout-vs-zstd')!).medianRatio).toBe(2);
    expect(summarize(byId.get('cold-checkout-vs-zstd')!).met).toBe(true); // within 2x
  });

  it('nbd: run i of carryon against run i of each peer, per connection count; a failed server is named', () => {
    const exp = (carryon: number[], nbdkit: number[]) => ({ export: [{ server: 'carryon', read: { mbPerSec: carryon }, write: { mbPerSec: carryon } }, { server: 'nbdkit', read: { mbPerSec: nbdkit }, write: { mbPerSec: nbdkit } }] });
    const cs = nbdExportAdapter.map([{ label: '1 connection', json: exp([800, 900], [1000, 1000]) }, { label: '4 connections', error: 'killed by SIGKILL' }], o);
    expect(cs).toHaveLength(8);
    const r1 = cs.find((c) => c.id === 'nbd-read-1conn-nbdkit')!;
    expect(r1.runs.map((r) => r.ratio)).toEqual([0.8, 0.9]);
    expect(summarize(r1).met).toBe(true);
    expect(cs.find((c) => c.id === 'nbd-read-1conn-qemu-nbd')!.problems[0]).toMatch(/no read runs for qemu-nbd/);
    expect(cs.find((c) => c.id === 'nbd-write-4conn-nbdkit')!.problems).toEqual(['4 connections: killed by SIGKILL']);
  });

  it('nbd with exportRuns: one process for 1 and 4 connections, each round a run with its peers beside it', () => {
    expect(nbdExportAdapter.invocations(o, 'old')).toHaveLength(2);
    expect(nbdExportAdapter.invocations(o, 'exportRuns,')).toEqual([{ label: 'run 1', args: ['--parts', 'export', '--size', '256M', '--repeat', '2', '--connections', '1,4'] }]);
    const side = (c: number, k: number, q: number) => ({ carryon: { mbPerSec: c }, nbdkit: { mbPerSec: k }, 'qemu-nbd': { mbPerSec: q } });
    const round = (n: number, c: number) => ({ round: n, order: ['nbdkit', 'carryon', 'qemu-nbd'], read: side(c, 1000, 500), write: side(c / 2, 1000, 500) });
    const json = { export: [], exportRuns: [{ connections: 1, rounds: [round(1, 900), round(2, 700)] }, { connections: 4, rounds: [round(1, 1200)] }] };
    const cs = nbdExportAdapter.map([{ label: 'run 1', json }], o);
    expect(cs).toHaveLength(8);
    const byId = new Map(cs.map((c) => [c.id, c]));
    expect(byId.get('nbd-read-1conn-nbdkit')!.runs.map((r) => r.ratio)).toEqual([0.9, 0.7]);
    expect(summarize(byId.get('nbd-read-1conn-nbdkit')!).met).toBe(true); // median 0.8, at least 0.8
    expect(byId.get('nbd-write-1conn-qemu-nbd')!.runs.map((r) => r.ratio)).toEqual([0.9, 0.7]);
    expect(byId.get('nbd-read-4conn-qemu-nbd')!.runs.map((r) => r.ratio)).toEqual([2.4]);
    expect(byId.get('nbd-read-4conn-qemu-nbd')!.runs[0]!.note).toBe('order nbdkit, carryon, qemu-nbd');
    const failed = nbdExportAdapter.map([{ label: 'run 1', error: 'exit code 1, no JSON written' }], o);
    expect(failed.every((c) => c.runs.length === 0 && c.problems.length === 1)).toBe(true);
  });

  it('sparse: the big disk full scan against the small one', () => {
    const json = { checkin: [{ size: 2 * 1024 ** 3, dataBytes: 6e8, full: { seconds: 3, scanSeconds: 2.5, scanBytesRead: 2.1e9 } }, { size: 256 * 1024 ** 2, dataBytes: 2.7e8, full: { seconds: 1, scanSeconds: 0.5 } }] };
    const [c] = sparseScanAdapter.map([{ label: 'run 1', json }], o);
    expect(c!.runs).toHaveLength(1);
    expect(c!.runs[0]!.ratio).toBe(3);
    expect(summarize(c!).met).toBe(false);
  });

  it('checkin with --checkouts: one process, every cold run paired within itself, the bytes exact after one run', () => {
    expect(checkinAdapter.invocations(o, 'old script')).toHaveLength(2);
    const inv = checkinAdapter.invocations(o, "else if (a === '--checkouts')");
    expect(inv).toEqual([{ label: 'run 1', args: ['--size', '256M', '--checkouts', '2'] }]);
    const cold = (run: number, c: number, k: number, z: number) => ({ run, order: ['carryon', 'casyncExtract', 'zstdFloor'], carryon: { bytes: 9e7, seconds: c }, casyncExtract: { seconds: k }, zstdFloor: { seconds: z } });
    const json = { ...checkinJson(5e6, 99, 1), coldCheckouts: { runs: [cold(1, 2, 2.5, 1.2), cold(2, 2.2, 2, 1), cold(3, 1.8, 2, 1)] } };
    const cs = checkinAdapter.map([{ label: 'run 1', json }], o);
    const casync = cs.find((c) => c.id === 'cold-checkout-vs-casync')!;
    expect(casync.runs.map((r) => r.ratio)).toEqual([0.8, 1.1, 0.9]); // not the 99 s of the workloads' check-outs
    expect(summarize(casync).medianRatio).toBe(0.9);
    expect(summarize(casync).met).toBe(true);
    expect(summarize(cs.find((c) => c.id === 'cold-checkout-vs-zstd')!).medianRatio).toBeCloseTo(1.8, 10);
    const bytes = summarize(cs.find((c) => c.id === 'checkin-bytes-fs')!);
    expect(bytes.runs).toBe(1);
    expect(bytes.enoughRuns).toBe(true);
  });

  it('sparse with checkinScaling: one process repeating itself, each run big against small', () => {
    expect(sparseScanAdapter.invocations(o, 'old')).toHaveLength(2);
    expect(sparseScanAdapter.invocations(o, 'checkinScaling: scaling')).toEqual([{ label: 'run 1', args: ['--parts', 'checkin', '--size', '256M', '--checkin-sizes', '256M,2G', '--repeat', '2'] }]);
    const json = { checkin: [], checkinScaling: { runs: [{ run: 1, smallSeconds: 0.5, bigSeconds: 0.8, bigScanSeconds: 0.3, smallScanSeconds: 0.2, bigScanBytesRead: 6e8, bigScanHoles: 'seek' }, { run: 2, smallSeconds: 0.5, bigSeconds: 1.5 }] } };
    const [c] = sparseScanAdapter.map([{ label: 'run 1', json }], o);
    expect(c!.runs.map((r) => r.ratio)).toEqual([1.6, 3]);
    expect(c!.runs[0]!.note).toContain('holes seek');
    expect(summarize(c!).medianRatio).toBeCloseTo(2.3, 10);
    expect(summarize(c!).met).toBe(false);
  });

  it('boot: the candidate policy fetched vs touched, and its boot time vs the old policy in the same run', () => {
    const r = (policy: string, run: number, fetched: number, touched: number, qemu: number) => ({ policy, run, fetchedBytes: fetched, readBlockBytes: touched, nbdReadBytes: 2e7, guestReadSeconds: 1, qemuSeconds: qemu });
    const json = { options: { policies: ['fixed:15', 'sequential'] }, results: [r('fixed:15', 1, 290e6, 20e6, 30), r('sequential', 1, 30e6, 20e6, 27), r('sequential', 2, 36e6, 20e6, 33), r('fixed:15', 2, 290e6, 20e6, 30)] };
    const cs = streamBootAdapter.map([{ label: 'run 1', json }], o);
    const fetched = cs.find((c) => c.id === 'stream-boot-fetched')!;
    expect(fetched.runs.map((x) => x.ratio)).toEqual([1.5, 1.8]);
    expect(summarize(fetched).met).toBe(true);
    const time = cs.find((c) => c.id === 'stream-boot-time')!;
    expect(time.runs.map((x) => x.ratio)).toEqual([0.9, 1.1]);
    expect(summarize(time).medianRatio).toBeCloseTo(1, 10);
  });

  it('server-cpu: each round and store against the floor measured in that round', () => {
    const floor = { receivedPerGiB: 4, servedPerGiB: 0.5 };
    const store = (name: string, recv: number, served: number) => ({ store: name, received: { cpuPerGiB: recv }, served: { cpuPerGiB: served } });
    const json = { laptops: 8, rounds: [{ round: 1, floor, stores: [store('fs', 12, 1.5), store('pack', 6, 0.5)] }, { round: 2, floor, stores: [store('fs', 6, 0.75), store('pack', 4, 0.5)] }] };
    const cs = serverCpuAdapter.map([{ label: 'run 1', json }], o);
    const byId = new Map(cs.map((c) => [c.id, c]));
    expect([...byId.keys()].sort()).toEqual(['server-cpu-received-fs', 'server-cpu-received-pack', 'server-cpu-served-fs', 'server-cpu-served-pack']);
    expect(byId.get('server-cpu-received-fs')!.runs.map((x) => x.ratio)).toEqual([3, 1.5]);
    expect(summarize(byId.get('server-cpu-served-fs')!).met).toBe(false); // median of 3x and 1.5x: 2.25 > 2
    expect(summarize(byId.get('server-cpu-served-pack')!).medianRatio).toBe(1);
    // the first version of the bench: served and received on the round, read as the fs store
    const old = serverCpuAdapter.map([{ label: 'run 1', json: { rounds: [{ round: 1, floor, received: { cpuPerGiB: 8 }, served: { cpuPerGiB: 1 } }] } }], o);
    expect(old.map((c) => [c.id, c.runs[0]?.ratio])).toEqual([['server-cpu-received-fs', 2], ['server-cpu-served-fs', 2]]);
    const none = serverCpuAdapter.map([{ label: 'run 1', error: 'bench missing: dist/scripts/bench/server-cpu-bench.js not found' }], o);
    expect(none.every((c) => c.runs.length === 0 && c.problems[0]!.includes('bench missing'))).toBe(true);
  });

  it('a bench that writes its own comparisons needs no mapping; an expected one it lacks is reported', () => {
    const own = { comparisons: [{ id: 'stream-boot-fetched', title: 'fetched vs touched', unit: 'MB', peer: 'touched', target: { op: '<=', ratio: 2 }, runs: [{ carryon: 30, peer: 20 }] }] };
    const expected = [
      { id: 'stream-boot-fetched', title: 'x', unit: 'MB', carryonLabel: 'c', peerLabel: 'p', target: { op: '<=' as const, ratio: 2 } },
      { id: 'stream-boot-time', title: 'y', unit: 's', carryonLabel: 'c', peerLabel: 'p' },
    ];
    const cs = benchComparisons([{ label: 'run 1', json: own }, { label: 'run 2', json: own }], 'g', 'src', () => [], expected);
    const f = cs.find((c) => c.id === 'stream-boot-fetched')!;
    expect(f.runs.map((r) => r.ratio)).toEqual([1.5, 1.5]);
    expect(summarize(f).met).toBe(true);
    expect(cs.find((c) => c.id === 'stream-boot-time')!.problems[0]).toMatch(/no such comparison/);
  });
});

describe('run-all as a process (--from: rebuild the report from JSON, run no bench)', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'carryon-run-all-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes the report, one plot per comparison and the overview; a missing result is in the report and the exit code', () => {
    const raw = path.join(dir, 'raw');
    mkdirSync(raw);
    writeFileSync(path.join(raw, 'checkin-1.json'), JSON.stringify(checkinJson(5e6, 3, 2)));
    const out = path.join(dir, 'out');
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/scripts/bench/run-all.js'), '--only', 'checkin,sparse', '--repeat', '1', '--from', raw, '--out', out, '--no-readme'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(1); // sparse-1.json is not there
    const md = readFileSync(path.join(out, 'report.md'), 'utf8');
    expect(md).toContain('sparse-1.json not found');
    expect(md).toContain('## Check-in bytes, every peer (run 1, 256 MiB ext4 image');
    expect(md).toContain('| **carryon checkin** | 5.00 | 5.00 | 5.00 |');
    const plots = readdirSync(path.join(out, 'plots')).sort();
    expect(plots).toEqual(['checkin-bytes-fs.svg', 'checkin-bytes-large.svg', 'checkin-bytes-small.svg', 'cold-checkout-vs-casync.svg', 'cold-checkout-vs-zstd.svg', 'overview.svg', 'sparse-full-scan.svg']);
    for (const p of plots) expect(xmlProblem(readFileSync(path.join(out, 'plots', p), 'utf8'))).toBeUndefined();
    const json = JSON.parse(readFileSync(path.join(out, 'comparisons.json'), 'utf8')) as { comparisons: Array<{ id: string; summary: { met?: boolean } }> };
    expect(json.comparisons.find((c) => c.id === 'cold-checkout-vs-casync')!.summary.met).toBe(false);
  });
});
