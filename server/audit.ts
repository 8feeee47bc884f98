// The audit log's one writer: every state change appends its row here, inside the transaction of the
// change itself, from the service layer, so the HTTP API and the server's command line audit the same
// change once. Must not know: HTTP, the CLI.
import type { Sql } from '../src/index.js';

/** Who did something, and from where: every audit row carries one. */
export interface Actor {
  /** A user name, or `cli:<os user>` for the server's own command line. */
  name: string;
  device?: string | null;
  address?: string | null;
}

export async function appendAudit(db: Sql, actor: Actor, action: string, target: string | null, detail: Record<string, unknown> = {}): Promise<void> {
  await db.run('INSERT INTO audit (at, actor, device, address, action, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?)',
    [new Date().toISOString(), actor.name, actor.device ?? null, actor.address ?? null, action, target, JSON.stringify(detail)]);
}
