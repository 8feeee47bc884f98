// npm's "install" step: builds native/xts (carryon's AES-256-XTS addon) with node-gyp, against the
// running node's headers (npm passes its nodedir setting through) and node's own OpenSSL. A failed build
// does not fail the install: the disk cipher then runs its slower JavaScript loop (same bytes), which
// `carryon status --json` and serve's "listening" line report as cipher "js", and which the test suite
// refuses (test/unit/crypto/native-xts.test.ts) unless CARRYON_XTS=js says it is meant.
// It also builds native/persona-fuse (the streamed persona's FUSE helper, a small program linked against
// libfuse3: Debian's libfuse3-dev at build time, fuse3 at run time). Without it everything but
// `carryon checkout --persona-only --stream` works, and that says FUSE_UNAVAILABLE with what to install.
// And native/sparse (lseek SEEK_DATA / SEEK_HOLE, which Node lacks): full scans of a sparse disk read its
// data and skip its holes. Without it a scan reads the holes too (same manifest, slower on sparse disks),
// `carryon checkin --json` says scanHoles "read", and the test suite refuses it (test/unit/disk-sparse.test.ts).
// And native/nbd-data (a C thread per NBD connection of `carryon serve` for a plaintext, fully local disk).
// Without it serve answers every request on its JavaScript thread (same bytes, slower), and its
// "listening" line says dataPath "js".
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

buildPersonaFuse();
buildSparse();
buildNbdData();

if (process.env.CARRYON_XTS === 'js') {
  console.log('carryon: CARRYON_XTS=js, not building the native XTS addon');
  process.exit(0);
}
const dir = path.join(__dirname, 'xts');
// Run through npm (npm install, npm ci, npm run build:native): npm puts its own node-gyp on PATH.
const r = spawnSync('node-gyp', ['rebuild', '--release'], { cwd: dir, stdio: 'inherit', shell: process.platform === 'win32' });
if (r.status !== 0) {
  console.warn(
    '\ncarryon: WARNING: the native XTS addon (native/xts) did not build' +
      (r.error ? ` (${r.error.message})` : '') +
      '.\ncarryon: encrypted disks still work, with the slower JavaScript cipher (same on-disk bytes).' +
      '\ncarryon: to build it: install python3, make and a C compiler, then `npm run build:native`.\n',
  );
}

function buildSparse() {
  const r = spawnSync('node-gyp', ['rebuild', '--release'], { cwd: path.join(__dirname, 'sparse'), stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.status !== 0) {
    console.warn(
      '\ncarryon: WARNING: native/sparse did not build' + (r.error ? ` (${r.error.message})` : '') +
        '.\ncarryon: full scans of sparse disks then read their holes too (same result, slower).' +
        '\ncarryon: to build it: install python3, make and a C compiler, then `npm run build:native`.\n',
    );
  }
}

function buildNbdData() {
  const r = spawnSync('node-gyp', ['rebuild', '--release'], { cwd: path.join(__dirname, 'nbd-data'), stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.status !== 0) {
    console.warn(
      '\ncarryon: WARNING: native/nbd-data did not build' + (r.error ? ` (${r.error.message})` : '') +
        '.\ncarryon: carryon serve then answers NBD requests on its JavaScript thread (same bytes, slower).' +
        '\ncarryon: to build it: install python3, make and a C compiler, then `npm run build:native`.\n',
    );
  }
}

function buildPersonaFuse() {
  const fs = require('node:fs');
  const dir = path.join(__dirname, 'persona-fuse');
  const flags = spawnSync('pkg-config', ['--cflags', '--libs', 'fuse3'], { encoding: 'utf8' });
  if (flags.status !== 0) {
    console.warn('carryon: WARNING: libfuse3 headers not found (pkg-config fuse3): the streamed persona is not built.\n' +
      'carryon: to build it: apt install libfuse3-dev pkg-config, then `npm run build:native`.');
    return;
  }
  fs.mkdirSync(path.join(dir, 'build'), { recursive: true });
  const cc = process.env.CC || 'cc';
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', '-o', path.join('build', 'carryon-persona-fuse'), 'persona-fuse.c', ...flags.stdout.trim().split(/\s+/), '-lpthread'], { cwd: dir, stdio: 'inherit' });
  if (r.status !== 0) console.warn('carryon: WARNING: native/persona-fuse did not build: the streamed persona is unavailable (everything else works).');
}
