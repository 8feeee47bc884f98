// The audit log's one writer: every state change appends its row here, inside the transaction of the
// change itself, from the service layer (SqliteMeta, SqliteFleetMeta), so the HTTP API and the server's
// command line audit the same change once. Must not know: HTTP, the CLI.
import type { Db } from './db.js';

/** Who did something, and from where: every audit row carries one. */
export interface Actor {
  /** A user name, or `cli:<os user>` for the server's own command line. */
  name: string;
  device?: string | null;
  address?: string | null;
}

export function appendAudit(db: Db, actor: Actor, action: string, target: string | null, detail: Record<string, unknown> = {}): void {
  db.prepare('INSERT INTO audit (at, actor, device, address, action, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?)')
    .run(new Date().toISOString(), actor.name, actor.device ?? null, actor.address ?? null, action, target, JSON.stringify(detail));
}
