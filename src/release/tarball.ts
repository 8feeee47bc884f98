// A client release as `npm pack` makes it: a gzipped tar whose entries are all under `package/`, with
// carryon's package.json there. Read whole in memory (releases are a few MB; the caps below bound it),
// checked before anything is written: only plain files and folders, no path leaving `package/`, no
// links or devices, the package named carryon.
import { gunzipSync } from 'node:zlib';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { CarryonError } from '../errors/index.js';

/** A release tarball larger than this is refused before it is read (compressed bytes). */
export const MAX_RELEASE_BYTES = 256 * 1024 * 1024;
const MAX_UNPACKED_BYTES = 1024 * 1024 * 1024;
const MAX_ENTRIES = 200_000;

export interface ReleaseEntry {
  /** Relative to the package's folder (`package/` removed), `/`-separated. */
  path: string;
  type: 'file' | 'directory';
  mode: number;
  data: Buffer;
}

export interface ReleasePackage {
  name: string;
  version: string;
  /** package.json's dependencies (name -> range): what the release needs beside it. */
  dependencies: Record<string, string>;
  /** True when the tarball carries its own node_modules (bundleDependencies). */
  bundled: boolean;
  entries: ReleaseEntry[];
}

const invalid = (what: string): never => {
  throw new CarryonError('RELEASE_INVALID', `not a carryon release tarball (npm pack): ${what}`);
};

/** Check and read a release tarball; RELEASE_INVALID naming the first problem otherwise. */
export async function readReleaseTarball(bytes: Uint8Array): Promise<ReleasePackage> {
  if (bytes.length > MAX_RELEASE_BYTES) invalid(`${bytes.length} bytes, over the ${MAX_RELEASE_BYTES} a release may have`);
  if (bytes.length < 2 || bytes[0] !== 0x1f || bytes[1] !== 0x8b) invalid('it is not gzip-compressed (npm pack writes a .tgz)');
  let raw: Buffer;
  try {
    raw = gunzipSync(bytes, { maxOutputLength: MAX_UNPACKED_BYTES });
  } catch (err) {
    return invalid(`its gzip stream does not decompress (${(err as Error).message})`);
  }
  const entries: ReleaseEntry[] = [];
  const seen = new Set<string>();
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => chunks.push(c as Buffer));
      stream.on('error', reject);
      stream.on('end', () => {
        try {
          if (entries.length >= MAX_ENTRIES) invalid(`more than ${MAX_ENTRIES} entries`);
          const name = header.name.replace(/\/+$/, '');
          if (!name.startsWith('package/') && name !== 'package') invalid(`entry ${JSON.stringify(name.slice(0, 200))} is outside package/`);
          const rel = name === 'package' ? '' : name.slice('package/'.length);
          if (rel.split('/').some((p) => p === '..' || p === '.' || p === '') && rel !== '') invalid(`entry ${JSON.stringify(name.slice(0, 200))} has an empty, . or .. part`);
          if (/[\0\\]/.test(rel)) invalid(`entry ${JSON.stringify(name.slice(0, 200))} has a NUL or backslash`);
          if (header.type !== 'file' && header.type !== 'directory') invalid(`entry ${JSON.stringify(name.slice(0, 200))} is a ${header.type ?? 'special file'}: a release holds plain files and folders only`);
          if (rel !== '' && !seen.has(rel)) {
            seen.add(rel);
            entries.push({ path: rel, type: header.type as 'file' | 'directory', mode: (header.mode ?? 0o644) & 0o755, data: Buffer.concat(chunks) });
          } else if (rel !== '') {
            invalid(`entry ${JSON.stringify(name.slice(0, 200))} appears twice`);
          }
          next();
        } catch (err) {
          reject(err);
        }
      });
    });
    extract.on('finish', resolve);
    extract.on('error', (err: Error) => reject(new CarryonError('RELEASE_INVALID', `not a carryon release tarball (npm pack): its tar stream is malformed (${err.message})`)));
  });
  Readable.from([raw]).pipe(extract);
  await done;
  const pj = entries.find((e) => e.path === 'package.json' && e.type === 'file') ?? invalid('it has no package/package.json');
  let pkg: { name?: unknown; version?: unknown; dependencies?: unknown };
  try {
    pkg = JSON.parse(pj.data.toString('utf8')) as typeof pkg;
  } catch {
    return invalid('its package.json is not JSON');
  }
  if (pkg.name !== 'carryon') invalid(`its package is ${JSON.stringify(String(pkg.name).slice(0, 80))}, not carryon`);
  if (typeof pkg.version !== 'string') return invalid('its package.json has no version');
  const deps: Record<string, string> = {};
  if (pkg.dependencies !== undefined) {
    if (typeof pkg.dependencies !== 'object' || pkg.dependencies === null) invalid('its dependencies are not an object');
    for (const [k, v] of Object.entries(pkg.dependencies as Record<string, unknown>)) {
      deps[k] = typeof v === 'string' ? v : invalid(`its dependency ${k} has no version range`);
    }
  }
  return { name: 'carryon', version: pkg.version, dependencies: deps, bundled: entries.some((e) => e.path.startsWith('node_modules/')), entries };
}
