// Deterministic kill -9 for the crash tests: CARRYON_CRASH_AT=NAME:N sends SIGKILL to this process the
// N-th time crash point NAME is passed. Unset in normal use; costs one comparison.
const [crashName, crashCount] = (process.env.CARRYON_CRASH_AT ?? '').split(':');
let passed = 0;
export function crashPoint(name: string): void {
  if (name === crashName && ++passed >= Number(crashCount ?? 1)) process.kill(process.pid, 'SIGKILL');
}
