// Deterministic kill -9 for the crash tests: CARRYON_CRASH_AT=NAME:N sends SIGKILL to this process the
// N-th time crash point NAME is passed. Unset in normal use; costs one comparison.
import { existsSync, writeFileSync } from 'node:fs';
const [crashName, crashCount] = (process.env.CARRYON_CRASH_AT ?? '').split(':');
let passed = 0;
export function crashPoint(name: string): void {
  if (name === crashName && ++passed >= Number(crashCount ?? 1)) process.kill(process.pid, 'SIGKILL');
}

// CARRYON_PAUSE_AT=NAME:FILE: the first time pause point NAME is passed, create FILE and block until a
// test removes it, so the test can act (write a disk, say) at that exact moment. Unset in normal use.
const [pauseName, pauseFile] = (process.env.CARRYON_PAUSE_AT ?? '').split(/:(.*)/s);
let paused = false;
export function pausePoint(name: string): void {
  if (name !== pauseName || !pauseFile || paused) return;
  paused = true;
  writeFileSync(pauseFile, `${process.pid}\n`);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (existsSync(pauseFile)) Atomics.wait(nap, 0, 0, 10);
}
