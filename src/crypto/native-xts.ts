// The native XTS addon (native/xts, built by `npm install` / `npm ci` with node-gyp): AES-256-XTS over
// a run of 4 KiB sectors in one call, with OpenSSL's EVP from inside the node process. Optional: when
// it is not built (or CARRYON_XTS=js), SectorCipher runs its createCipheriv loop, same bytes, slower,
// and says so (sectorCipherImplementation). Must not know: the disk format beyond "sectors from n".
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeXts {
  /** An opaque context holding both directions' OpenSSL contexts, key set once; freed by GC. */
  create(key: Uint8Array): unknown;
  /** XTS over src into dst (same length; the same bytes or disjoint) from sector `sector`; whole units of >= 16 bytes. */
  run(ctx: unknown, encrypt: boolean, src: Uint8Array, dst: Uint8Array, sector: number): void;
  /** Read dst.length bytes of fd at position (zeros past the end) and decrypt them, on a libuv worker thread; units under 16 bytes stay as read. */
  preadDecrypt(ctx: unknown, fd: number, dst: Uint8Array, position: number, sector: number): Promise<void>;
  /** The OpenSSL the addon runs on (node's own). */
  openssl: string;
}

export const NATIVE_XTS_FILE = path.join('native', 'xts', 'build', 'Release', 'carryon_xts.node');

let loaded: { addon: NativeXts | null; reason: string } | undefined;

/** The addon, or null with the reason (not built, turned off by CARRYON_XTS=js, failed to load). */
export function loadNativeXts(): { addon: NativeXts | null; reason: string } {
  if (loaded) return loaded;
  if (process.env.CARRYON_XTS === 'js') return (loaded = { addon: null, reason: 'CARRYON_XTS=js' });
  // The package root is a few folders up: src/crypto (sources under vitest) or dist/src/crypto (built).
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++, dir = path.dirname(dir)) {
    const file = path.join(dir, NATIVE_XTS_FILE);
    if (!existsSync(file)) continue;
    try {
      const addon = createRequire(import.meta.url)(file) as NativeXts;
      if (typeof addon.create !== 'function' || typeof addon.run !== 'function' || typeof addon.preadDecrypt !== 'function') return (loaded = { addon: null, reason: `${file} is not carryon's XTS addon` });
      return (loaded = { addon, reason: file });
    } catch (err) {
      return (loaded = { addon: null, reason: `${file} did not load: ${(err as Error).message}` });
    }
  }
  return (loaded = { addon: null, reason: `${NATIVE_XTS_FILE} is not built (npm install builds it with node-gyp: needs python3, make and a C compiler)` });
}
