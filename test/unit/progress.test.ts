// client/progress.ts: a progress sink sees every Progress made inside its call (also after awaits), and
// only those: two operations run at once (two jobs of the app) each get their own reports.
import { describe, expect, it } from 'vitest';
import { Progress, withProgressSink, type ProgressReport } from '../../client/progress.js';

async function operation(label: string, total: number, steps: number): Promise<void> {
  const p = new Progress(label, total, true);
  for (let i = 0; i < steps; i++) {
    await new Promise((r) => setTimeout(r, 1));
    p.add(total / steps);
  }
  p.finish();
}

describe('progress sinks', () => {
  it('reports each Progress to the sink of the call that made it, with a finished report at the end', async () => {
    const a: ProgressReport[] = [];
    const b: ProgressReport[] = [];
    await Promise.all([
      withProgressSink((r) => a.push({ ...r }), () => operation('checkout a', 100, 4)),
      withProgressSink((r) => b.push({ ...r }), () => operation('checkin b', 40, 2)),
    ]);
    expect(new Set(a.map((r) => r.label))).toEqual(new Set(['checkout a']));
    expect(new Set(b.map((r) => r.label))).toEqual(new Set(['checkin b']));
    expect(a.map((r) => r.done)).toEqual([0, 25, 50, 75, 100, 100]);
    expect(a.at(-1)).toMatchObject({ total: 100, finished: true });
    expect(b.at(-1)).toMatchObject({ done: 40, total: 40, finished: true });
    expect(a.slice(0, -1).every((r) => !r.finished)).toBe(true);
  });

  it('outside a sink, Progress reports nowhere (the CLI as before)', async () => {
    const seen: ProgressReport[] = [];
    await withProgressSink((r) => seen.push(r), async () => undefined);
    await operation('alone', 10, 2);
    expect(seen).toEqual([]);
  });
});
