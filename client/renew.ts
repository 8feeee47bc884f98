// Renewing a checkout's offline lease, for `carryon renew` and the traveller's app: online (a heartbeat,
// which also tells the server what the laptop has not sent yet), or offline with a code an admin read
// out (src/lease): checked against the checkout's secret, each code used once.
import { CarryonError, decodeLeaseCode, type DeviceRequest } from '../src/index.js';
import type { ApiClient } from './api-client.js';
import { pendingChanges, requireCheckedOut } from './disk-session.js';
import { heartbeatLease } from './lease.js';
import type { LocalState } from './state.js';

export interface RenewResult {
  desktop: string;
  leaseExpiresAt: string;
  pendingBytes: number | null;
  pendingBlocks: number | null;
  code: { seq: number; grantsUntil: string } | null;
  /** What an admin asked of this checkout and is not done yet (online only: a code brings no news). */
  adminRequests: DeviceRequest[];
}

/** `code`: a lease code from an admin (works offline); without it the server is asked. */
export async function renewCheckout(state: LocalState, api: () => ApiClient, name: string, code: string | undefined): Promise<RenewResult> {
  const local = requireCheckedOut(state, name);
  if (code !== undefined) {
    // Offline: the code is checked against the checkout's secret; each code works once.
    const { secret, seq: used } = state.leaseSecret(name);
    if (!secret) throw new CarryonError('LEASE_CODE_INVALID', `${name} was checked out before lease codes existed: renew it online`, { desktop: name });
    const { untilMs, seq } = decodeLeaseCode(secret, local.checkoutId, code);
    if (seq <= used) throw new CarryonError('LEASE_CODE_INVALID', `that lease code (#${seq}) was used already on this laptop: ask your admin for a new one`, { desktop: name, seq });
    // The code carries the lease's end, as the server computed it: both sides agree, whatever the clocks say.
    const leaseExpiresAt = new Date(Math.max(untilMs, local.leaseExpiresAt ? Date.parse(local.leaseExpiresAt) : 0)).toISOString();
    if (!state.useLeaseCode(name, seq, leaseExpiresAt)) throw new CarryonError('LEASE_CODE_INVALID', 'that lease code was used already on this laptop: ask your admin for a new one', { desktop: name, seq });
    return { desktop: name, leaseExpiresAt, pendingBytes: null, pendingBlocks: null, code: { seq, grantsUntil: new Date(untilMs).toISOString() }, adminRequests: [] };
  }
  const { pendingBytes, pendingBlocks } = pendingChanges(state, local);
  const { leaseExpiresAt, requests } = await heartbeatLease(state, api(), local, { pendingBytes, pendingBlocks });
  return { desktop: name, leaseExpiresAt, pendingBytes, pendingBlocks, code: null, adminRequests: requests };
}
