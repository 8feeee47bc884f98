// npm's "install" step: builds native/xts (carryon's AES-256-XTS addon) with node-gyp, against the
// running node's headers (npm passes its nodedir setting through) and node's own OpenSSL. A failed build
// does not fail the install: the disk cipher then runs its slower JavaScript loop (same bytes), which
// `carryon status --json` and serve's "listening" line report as cipher "js", and which the test suite
// refuses (test/unit/crypto/native-xts.test.ts) unless CARRYON_XTS=js says it is meant.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

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
