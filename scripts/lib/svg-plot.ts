// SVG plots of benchmark comparisons, written as plain text (no plotting dependency): one bar chart per
// comparison (each run's carryon bar with its peer beside it, the value carryon had to reach in that run
// as a dashed target mark, the ratio above, the medians as a last pair), and one overview of every
// comparison's median ratio against its target on a log scale. Owns layout and escaping only; the
// numbers come from comparison.ts. Output is standalone SVG 1.1 that browsers and GitHub render.

import { fmtRatio, fmtValue, higherIsBetter, meets, summarize, targetText, type Comparison } from './comparison.js';

const FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"';
const COLOR = { carryon: '#2b6cb0', peer: '#a0aec0', target: '#c53030', met: '#2f855a', notMet: '#c53030', none: '#718096', grid: '#e2e8f0', axis: '#4a5568', text: '#1a202c' };

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

const n = (x: number): string => (Number.isInteger(x) ? String(x) : x.toFixed(1));

function text(x: number, y: number, s: string, attrs = ''): string {
  return `<text x="${n(x)}" y="${n(y)}" ${attrs}>${escapeXml(s)}</text>`;
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** Words into at most `lines` lines of `width` characters, the last one clipped. */
export function wrap(s: string, width: number, lines: number): string[] {
  const out: string[] = [];
  let cur = '';
  for (const w of s.split(/\s+/)) {
    if (cur && (cur + ' ' + w).length > width) {
      out.push(cur);
      cur = w;
    } else cur = cur ? `${cur} ${w}` : w;
  }
  if (cur) out.push(cur);
  if (out.length <= lines) return out;
  return [...out.slice(0, lines - 1), clip(out.slice(lines - 1).join(' '), width)];
}

/** An axis value without float noise or trailing zeros: 0.5, 1.5, 250, 1200. */
export function tickLabel(v: number): string {
  return String(Number(v.toPrecision(6)));
}

/** A round step giving about `count` ticks up to `max`. */
export function niceStep(max: number, count = 5): number {
  if (!(max > 0)) return 1;
  const raw = max / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
}

function svgOpen(width: number, height: number, title: string): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>\n` +
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT} font-size="12">\n` +
    `<title>${escapeXml(title)}</title>\n<rect width="${width}" height="${height}" fill="#ffffff"/>\n`
  );
}

/**
 * One comparison: per run a carryon bar and a peer bar (the unit's values), a dashed mark at target x
 * peer (what carryon had to reach, or stay under, in that run), the run's ratio above the pair; the last
 * pair is the medians with the median ratio, coloured by whether the target holds on it.
 */
export function comparisonSvg(c: Comparison): string {
  const W = 900;
  const H = 400;
  const m = { left: 78, right: 24, top: 68, bottom: 92 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const s = summarize(c);
  const t = c.target;
  const better = t ? (higherIsBetter(t) ? 'higher is better' : 'lower is better') : '';
  const verdict = s.met === undefined ? (s.runs ? 'no target' : 'no runs') : s.met ? 'MET' : 'NOT MET';
  const parts: string[] = [svgOpen(W, H, `${c.title}: carryon vs ${c.peerLabel}`)];
  parts.push(text(m.left, 24, clip(c.title, 84), `font-size="15" font-weight="bold" fill="${COLOR.text}"`));
  const sub = `carryon vs ${c.peerLabel}` + (t ? `; target: carryon ${targetText(t)} the peer (${better})` : '');
  parts.push(text(m.left, 44, clip(sub, 130), `font-size="12" fill="${COLOR.axis}"`));
  const verdictLine = s.runs
    ? `median of ${s.runs} run${s.runs === 1 ? '' : 's'}: ${fmtRatio(s.medianRatio)}${t ? ` → ${verdict}` : ''}${s.enoughRuns ? '' : ' (the issue asks for at least 5 runs)'}`
    : `no runs: ${c.problems[0] ?? 'nothing measured'}`;
  parts.push(text(m.left, 60, clip(verdictLine, 130), `font-size="12" font-weight="bold" fill="${s.met === undefined ? COLOR.none : s.met ? COLOR.met : COLOR.notMet}"`));

  const groups = c.runs.map((r, i) => ({ label: r.label ?? `run ${i + 1}`, carryon: r.carryon, peer: r.peer, ratio: r.ratio, median: false }));
  if (c.runs.length > 1) groups.push({ label: 'median', carryon: s.medianCarryon!, peer: s.medianPeer!, ratio: s.medianRatio!, median: true });
  const maxV = Math.max(0, ...groups.flatMap((g) => [g.carryon, g.peer, t ? t.ratio * g.peer : 0]));
  const step = niceStep(maxV || 1);
  const top = Math.max(step, Math.ceil((maxV * 1.08) / step) * step);
  const y = (v: number): number => m.top + ph - (v / top) * ph;

  // grid and y axis
  for (let v = 0; v <= top + step / 2; v += step) {
    parts.push(`<line x1="${m.left}" y1="${n(y(v))}" x2="${m.left + pw}" y2="${n(y(v))}" stroke="${v === 0 ? COLOR.axis : COLOR.grid}" stroke-width="1"/>`);
    parts.push(text(m.left - 6, y(v) + 4, tickLabel(v), `text-anchor="end" fill="${COLOR.axis}"`));
  }
  parts.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="${COLOR.axis}"/>`);
  parts.push(text(18, m.top + ph / 2, c.unit, `transform="rotate(-90 18 ${n(m.top + ph / 2)})" text-anchor="middle" fill="${COLOR.axis}" font-size="13"`));

  if (groups.length === 0) {
    parts.push(text(m.left + pw / 2, m.top + ph / 2, 'no runs', `text-anchor="middle" font-size="20" fill="${COLOR.none}"`));
  }
  const gw = pw / Math.max(1, groups.length);
  const bw = Math.min(48, gw * 0.34);
  groups.forEach((g, i) => {
    const cx = m.left + gw * i + gw / 2;
    if (g.median) parts.push(`<rect x="${n(m.left + gw * i + 2)}" y="${m.top}" width="${n(gw - 4)}" height="${ph}" fill="#f7fafc"/>`);
    const bar = (x: number, v: number, color: string, what: string): void => {
      parts.push(`<rect x="${n(x)}" y="${n(y(v))}" width="${n(bw)}" height="${n(Math.max(0, y(0) - y(v)))}" fill="${color}"><title>${escapeXml(`${g.label}, ${what}: ${fmtValue(v)} ${c.unit}`)}</title></rect>`);
    };
    bar(cx - bw - 1, g.carryon, COLOR.carryon, 'carryon');
    bar(cx + 1, g.peer, COLOR.peer, c.peerLabel);
    if (t) {
      const ty = y(t.ratio * g.peer);
      parts.push(`<line x1="${n(cx - bw - 6)}" y1="${n(ty)}" x2="${n(cx + bw + 6)}" y2="${n(ty)}" stroke="${COLOR.target}" stroke-width="2" stroke-dasharray="5,3"/>`);
    }
    const ok = t ? meets(g.ratio, t) : undefined;
    const barTop = Math.min(y(g.carryon), y(g.peer), t ? y(t.ratio * g.peer) : Infinity);
    parts.push(text(cx, barTop - 6, fmtRatio(g.ratio), `text-anchor="middle" font-weight="${g.median ? 'bold' : 'normal'}" fill="${ok === undefined ? COLOR.text : ok ? COLOR.met : COLOR.notMet}"`));
    parts.push(text(cx, m.top + ph + 16, g.label, `text-anchor="middle" fill="${COLOR.text}"${g.median ? ' font-weight="bold"' : ''}`));
  });
  parts.push(text(m.left + pw / 2, m.top + ph + 34, 'runs (carryon and the peer measured in the same run); ratio = carryon / peer above each pair', `text-anchor="middle" fill="${COLOR.axis}"`));

  // legend
  const ly = H - 22;
  let lx = m.left;
  const swatch = (color: string, label: string, dashed = false): void => {
    parts.push(dashed
      ? `<line x1="${lx}" y1="${ly - 4}" x2="${lx + 22}" y2="${ly - 4}" stroke="${color}" stroke-width="2" stroke-dasharray="5,3"/>`
      : `<rect x="${lx}" y="${ly - 10}" width="14" height="12" fill="${color}"/>`);
    parts.push(text(lx + (dashed ? 28 : 20), ly, label, `fill="${COLOR.text}"`));
    lx += (dashed ? 34 : 26) + label.length * 6.6;
  };
  swatch(COLOR.carryon, clip(c.carryonLabel, 40));
  swatch(COLOR.peer, clip(c.peerLabel, 40));
  if (t) swatch(COLOR.target, `target: ${targetText(t)} the peer`, true);
  parts.push('</svg>\n');
  return parts.join('\n');
}

/**
 * Every comparison's median ratio on one log-scale axis: a bar from parity (1x) to the median, the
 * runs' min-max as a whisker, the target as a dark mark; green where the target holds, red where not,
 * grey without runs or target.
 */
export function overviewSvg(comparisons: readonly Comparison[], title = 'carryon against its peers: median ratio of each comparison'): string {
  const rowH = 38;
  const m = { left: 380, right: 130, top: 58, bottom: 58 };
  const W = 1060;
  const H = m.top + m.bottom + rowH * Math.max(1, comparisons.length);
  const pw = W - m.left - m.right;
  const sums = comparisons.map(summarize);
  const values = sums.flatMap((s) => [s.minRatio, s.maxRatio]).concat(comparisons.map((c) => c.target?.ratio)).filter((v): v is number => v !== undefined && v > 0);
  const lo = Math.min(-2, Math.floor(Math.log2(Math.min(1, ...values)) - 0.2));
  const hi = Math.max(2, Math.ceil(Math.log2(Math.max(1, ...values)) + 0.2));
  const x = (r: number): number => m.left + ((Math.log2(Math.max(r, 2 ** lo)) - lo) / (hi - lo)) * pw;
  const parts: string[] = [svgOpen(W, H, title)];
  parts.push(text(16, 24, title, `font-size="16" font-weight="bold" fill="${COLOR.text}"`));
  parts.push(text(16, 42, 'bar: median of carryon / peer over the runs (log scale, from parity); whisker: min-max of the runs; dark mark: the target', `fill="${COLOR.axis}"`));
  const plotBottom = H - m.bottom;
  for (let e = lo; e <= hi; e++) {
    const xv = x(2 ** e);
    parts.push(`<line x1="${n(xv)}" y1="${m.top - 4}" x2="${n(xv)}" y2="${plotBottom}" stroke="${e === 0 ? COLOR.axis : COLOR.grid}" stroke-width="${e === 0 ? 1.5 : 1}"/>`);
    parts.push(text(xv, plotBottom + 16, `${tickLabel(2 ** e)}x`, `text-anchor="middle" fill="${COLOR.axis}"`));
  }
  parts.push(text(m.left + pw / 2, plotBottom + 36, 'carryon / peer, measured in the same run (1x = parity)', `text-anchor="middle" fill="${COLOR.axis}" font-size="13"`));
  comparisons.forEach((c, i) => {
    const s = sums[i]!;
    const cy = m.top + rowH * i + rowH / 2;
    if (i % 2 === 1) parts.push(`<rect x="8" y="${n(cy - rowH / 2)}" width="${W - 16}" height="${rowH}" fill="#f7fafc"/>`);
    const lines = wrap(c.title, 58, 2);
    lines.forEach((l, k) => parts.push(text(m.left - 10, cy + 4 + (k - (lines.length - 1) / 2) * 14, l, `text-anchor="end" fill="${COLOR.text}"`)));
    const color = s.met === undefined ? COLOR.none : s.met ? COLOR.met : COLOR.notMet;
    if (s.medianRatio === undefined) {
      parts.push(text(x(1) + 6, cy + 4, clip(`no runs: ${c.problems[0] ?? 'nothing measured'}`, Math.floor((W - 16 - x(1)) / 6.4)), `fill="${COLOR.none}" font-style="italic"`));
      return;
    }
    const x0 = Math.min(x(1), x(s.medianRatio));
    parts.push(`<rect x="${n(x0)}" y="${n(cy - 8)}" width="${n(Math.max(1, Math.abs(x(s.medianRatio) - x(1))))}" height="16" fill="${color}" fill-opacity="0.85"><title>${escapeXml(`${c.title}: median ${fmtRatio(s.medianRatio)} over ${s.runs} runs`)}</title></rect>`);
    parts.push(`<line x1="${n(x(s.minRatio!))}" y1="${n(cy)}" x2="${n(x(s.maxRatio!))}" y2="${n(cy)}" stroke="${COLOR.text}" stroke-width="1"/>`);
    for (const v of [s.minRatio!, s.maxRatio!]) parts.push(`<line x1="${n(x(v))}" y1="${n(cy - 4)}" x2="${n(x(v))}" y2="${n(cy + 4)}" stroke="${COLOR.text}"/>`);
    if (c.target) parts.push(`<rect x="${n(x(c.target.ratio) - 2)}" y="${n(cy - 12)}" width="4" height="24" fill="${COLOR.text}"><title>${escapeXml(`target: ${targetText(c.target)}`)}</title></rect>`);
    // the median as a dot over the bar and the target mark, so a ratio near 1x or the target still shows
    parts.push(`<circle cx="${n(x(s.medianRatio))}" cy="${n(cy)}" r="5" fill="${color}" stroke="#ffffff" stroke-width="1.5"/>`);
    const verdict = s.met === undefined ? '' : s.met ? ' met' : ' not met';
    parts.push(text(W - m.right + 8, cy + 4, `${fmtRatio(s.medianRatio)}${verdict}`, `fill="${color}" font-weight="bold"`));
  });
  const ly = H - 12;
  parts.push(`<rect x="16" y="${ly - 10}" width="14" height="12" fill="${COLOR.met}"/>` + text(36, ly, 'target met on the median', `fill="${COLOR.text}"`));
  parts.push(`<rect x="210" y="${ly - 10}" width="14" height="12" fill="${COLOR.notMet}"/>` + text(230, ly, 'not met', `fill="${COLOR.text}"`));
  parts.push(`<rect x="300" y="${ly - 12}" width="4" height="16" fill="${COLOR.text}"/>` + text(312, ly, 'target', `fill="${COLOR.text}"`));
  parts.push('</svg>\n');
  return parts.join('\n');
}
