// Offline leases on the laptop: how long a checkout may be used without contacting the server, as
// the server last granted it. Time comes from LocalState.monotonicNow(), which never goes backwards,
// so turning the clock back does not extend a lease. Commands that open the disk call requireLease.
import { CarryonError, type DeviceRequest } from '../src/index.js';
import type { ApiClient } from './api-client.js';
import { noteRollback, rolledBackError } from './rollback.js';
import type { LocalCheckout, LocalState } from './state.js';

/** Warn when less than this is left (or a fifth of the lease, if that is shorter). */
const WARN_MS = 24 * 3600 * 1000;

export interface LeaseStatus {
  expiresAt: string | null;
  /** Milliseconds left (negative: expired); null without a lease. */
  remainingMs: number | null;
  expired: boolean;
  warning: string | null;
}

export function leaseStatus(state: LocalState, local: LocalCheckout): LeaseStatus {
  if (!local.leaseExpiresAt) return { expiresAt: null, remainingMs: null, expired: false, warning: null };
  const left = Date.parse(local.leaseExpiresAt) - state.monotonicNow();
  const expired = left <= 0;
  const warning = expired
    ? `the offline lease of ${local.desktop} ran out at ${local.leaseExpiresAt}: ${howToRenew(local.desktop)}`
    : left < WARN_MS ? `the offline lease of ${local.desktop} ends in ${Math.max(1, Math.round(left / 60_000))} min (${local.leaseExpiresAt}): ${howToRenew(local.desktop)}` : null;
  return { expiresAt: local.leaseExpiresAt, remainingMs: left, expired, warning };
}

/** The two ways to renew, for a traveller who may be far from the office network. */
export function howToRenew(desktop: string): string {
  return `connect to the office network and run \`carryon renew ${desktop}\`; offline, call your admin, who can read you a lease code ` +
    `(\`carryon-server admin lease-code\`), and run \`carryon renew ${desktop} --code CODE\``;
}

/** Tell the server we are here: the lease starts over; it learns what has not been sent yet. */
export async function renewLease(state: LocalState, api: ApiClient, local: LocalCheckout, pending = { pendingBytes: 0, pendingBlocks: 0 }): Promise<string> {
  return (await heartbeatLease(state, api, local, pending)).leaseExpiresAt;
}

/** renewLease, also giving what an admin asked of this checkout and not yet done (a forced check-in). */
export async function heartbeatLease(state: LocalState, api: ApiClient, local: LocalCheckout, pending = { pendingBytes: 0, pendingBlocks: 0 }): Promise<{ leaseExpiresAt: string; requests: DeviceRequest[] }> {
  const r = await api.heartbeat(local.checkoutId, { ...pending, leaseCodeSeq: state.leaseSecret(local.desktop).seq });
  if (r.rolledBack || r.leaseExpiresAt === null) {
    const rb = noteRollback(state, local.desktop, local.checkoutId, r.rollback);
    throw rb ? rolledBackError(rb) : new CarryonError('ROLLED_BACK', `an admin rolled ${local.desktop} back: this copy is no longer the desktop; \`carryon agent\` removes it`, { desktop: local.desktop });
  }
  state.syncClock(r.serverTime);
  state.setLease(local.desktop, r.leaseExpiresAt);
  return { leaseExpiresAt: r.leaseExpiresAt, requests: r.requests.filter((q) => q.state === 'requested' || q.state === 'in-progress') };
}

/**
 * Refuse to open the disk of a checkout whose lease ran out, unless the server can renew it now.
 * `api` null: offline (no login); the refusal then says what to do.
 */
export async function requireLease(state: LocalState, local: LocalCheckout, api: ApiClient | null): Promise<LeaseStatus> {
  const s = leaseStatus(state, local);
  if (!s.expired) return s;
  if (api) {
    try {
      await renewLease(state, api, local);
      return leaseStatus(state, state.checkout(local.desktop)!);
    } catch (err) {
      if (!(err instanceof CarryonError) || err.code !== 'SERVER_UNREACHABLE') throw err;
    }
  }
  throw new CarryonError('LEASE_EXPIRED', `the offline lease of ${local.desktop} ran out at ${local.leaseExpiresAt}; the disk stays closed until the lease is renewed: ` +
    `${howToRenew(local.desktop)}. Your data is safe on this laptop.`, { desktop: local.desktop, leaseExpiresAt: local.leaseExpiresAt });
}
