// Rollbacks as the laptop learns of them: an admin ended a checkout (`carryon-server admin rollback`).
// Any command that hears of it (a heartbeat's reply, or a ROLLED_BACK answer to a check-in, a restore
// point, a block request) records it in the state, so every later command, online or not, gives the
// same answer (ROLLED_BACK) and `carryon status` says who rolled the desktop back, when, and where the
// copy went once the agent has acted.
import { asCarryonError, CarryonError } from '../src/index.js';
import type { LocalRollback, LocalState } from './state.js';

/** What happens to the copy, as a sentence for the traveller. */
export function rollbackSentence(rb: LocalRollback): string {
  const head = `an admin (${rb.by}) rolled ${rb.desktop} back at ${rb.at}`;
  if (rb.doneAt) return `${head}; your copy was ${rb.keptAt ? `kept at ${rb.keptAt}` : 'removed'}; \`carryon checkout ${rb.desktop}\` gets the desktop as the server has it`;
  return `${head}; your copy at ${rb.diskPath} is no longer the desktop and cannot be checked in: ` +
    `\`carryon agent\` ${rb.keepLocal ? 'moves it aside (to HOME/kept/)' : 'deletes it'} at its next round; copy out what you need before that, ` +
    `then \`carryon checkout ${rb.desktop}\` for the desktop as the server has it`;
}

export function rolledBackError(rb: LocalRollback): CarryonError {
  return new CarryonError('ROLLED_BACK', rollbackSentence(rb), { desktop: rb.desktop, checkoutId: rb.checkoutId, rolledBackBy: rb.by, rolledBackAt: rb.at, keepLocal: rb.keepLocal, diskPath: rb.diskPath });
}

/** A rollback recorded for the laptop's current checkout of this desktop (not one of an earlier checkout). */
export function knownRollback(state: LocalState, desktop: string): LocalRollback | null {
  const rb = state.rollback(desktop);
  const local = state.checkout(desktop);
  return rb && !rb.doneAt && local && local.checkoutId === rb.checkoutId ? rb : null;
}

/** Record what a reply or a heartbeat said; returns the recorded rollback (null if not this laptop's checkout). */
export function noteRollback(state: LocalState, desktop: string, checkoutId: string, info: { by?: unknown; at?: unknown; keepLocal?: unknown } | null | undefined): LocalRollback | null {
  return state.recordRollback(desktop, checkoutId, {
    by: typeof info?.by === 'string' ? info.by : 'an admin',
    at: typeof info?.at === 'string' ? info.at : new Date().toISOString(),
    keepLocal: info?.keepLocal === true,
  });
}

/**
 * A ROLLED_BACK error from the server, seen by any command: record it, and answer with the laptop's own
 * sentence (it knows where the copy is). Any other error passes through unchanged.
 */
export function learnFromError(state: LocalState, err: unknown): unknown {
  const e = asCarryonError(err);
  if (e.code !== 'ROLLED_BACK') return err;
  const d = (e.data ?? {}) as Record<string, unknown>;
  if (typeof d.desktop !== 'string' || typeof d.checkoutId !== 'string') return err;
  try {
    const rb = noteRollback(state, d.desktop, d.checkoutId, { by: d.rolledBackBy, at: d.rolledBackAt, keepLocal: d.keepLocal });
    return rb && rb.checkoutId === d.checkoutId ? rolledBackError(rb) : err;
  } catch {
    return err; // the state could not be written: the server's own sentence still says what happened
  }
}
