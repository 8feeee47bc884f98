// Dependencies point one way (shared/CONVENTIONS.md): src/ never imports client/ or server/; client/
// and server/ never import each other; inside src/, lower layers never import higher ones.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../e2e/harness.js';

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const n of readdirSync(dir)) {
    const p = path.join(dir, n);
    if (statSync(p).isDirectory()) out.push(...tsFiles(p));
    else if (n.endsWith('.ts')) out.push(p);
  }
  return out;
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g)].map((m) => (m[1] ?? m[2])!);
}

/** Top-level folder (and src/ module) a relative import lands in. */
function target(file: string, spec: string): string | null {
  if (!spec.startsWith('.')) return null;
  return path.relative(ROOT, path.resolve(path.dirname(file), spec));
}

const SRC_LAYERS = ['errors', 'units', 'json', 'hash', 'crypto', 'codec', 'delta', 'rdiff', 'nbd', 'store', 'manifest', 'disk', 'persona', 'lease', 'wire'];
const LAYER_RANK: Record<string, number> = { errors: 0, units: 0, json: 1, hash: 1, crypto: 1, codec: 2, delta: 2, rdiff: 2, nbd: 2, store: 3, manifest: 3, disk: 4, persona: 5, lease: 2, wire: 6 };

describe('architecture', () => {
  const edges: Array<{ from: string; to: string }> = [];
  for (const top of ['src', 'client', 'server', 'scripts']) {
    for (const f of tsFiles(path.join(ROOT, top))) {
      for (const spec of imports(f)) {
        const t = target(f, spec);
        if (t) edges.push({ from: path.relative(ROOT, f), to: t });
      }
    }
  }

  it('finds the imports it checks', () => {
    expect(edges.length).toBeGreaterThan(50);
    expect(edges.some((e) => e.from.startsWith('client/') && e.to.startsWith('src/'))).toBe(true);
  });

  it('src/ imports nothing from client/, server/ or scripts/', () => {
    expect(edges.filter((e) => e.from.startsWith('src/') && !e.to.startsWith('src/'))).toEqual([]);
  });

  it('client/ and server/ never import each other', () => {
    expect(edges.filter((e) => (e.from.startsWith('client/') && e.to.startsWith('server/')) || (e.from.startsWith('server/') && e.to.startsWith('client/')))).toEqual([]);
  });

  it('inside src/, a module imports only its own or lower layers', () => {
    const bad = edges.filter((e) => {
      if (!e.from.startsWith('src/') || !e.to.startsWith('src/')) return false;
      const a = e.from.split('/')[1]!;
      const b = e.to.split('/')[1]!;
      if (!SRC_LAYERS.includes(a) || !SRC_LAYERS.includes(b) || a === b) return false;
      return LAYER_RANK[b]! > LAYER_RANK[a]! || (LAYER_RANK[b] === LAYER_RANK[a]);
    });
    expect(bad).toEqual([]);
  });

  it('every src/ module has an index.ts that opens with a comment', () => {
    for (const m of SRC_LAYERS) {
      const text = readFileSync(path.join(ROOT, 'src', m, 'index.ts'), 'utf8');
      expect(text.startsWith('//'), m).toBe(true);
    }
  });
});
