// carryon-server admin ...: fleet control from the server's own command line (the same actions as
// the admin HTTP API): who holds which desktop and until when, device tokens, lease extensions,
// lease policies, and the audit log. Every change is audited as `cli:<os user>`.
import os from 'node:os';
import type { Command } from 'commander';
import { CarryonError, fmtBytes, parseName } from '../../src/index.js';
import { withData } from '../cli-util.js';
import type { Actor, CheckoutSummary } from '../fleet-meta.js';
import { optsOf, withCommonOptions } from './options.js';

export function cliActor(): Actor {
  return { name: `cli:${os.userInfo().username}`, device: null, address: 'local' };
}

function positive(v: unknown, what: string): number {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new CarryonError('INVALID_ARGUMENT', `${what} must be a positive number, got ${String(v)}`);
  return n;
}

function ago(iso: string | null): string {
  if (!iso) return 'never';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function until(iso: string | null): string {
  if (!iso) return 'no lease';
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (s <= 0) return `EXPIRED ${ago(iso)}`;
  return s < 7200 ? `${Math.round(s / 60)} min left` : s < 172_800 ? `${Math.round(s / 3600)} h left` : `${Math.round(s / 86400)} days left`;
}

function encryptionOf(c: CheckoutSummary): string {
  if (c.escrow) return `encrypted (key check ${c.escrow.keyCheck})`;
  return c.encryptionRequired ? 'encryption required, key NOT escrowed yet (no data sent)' : 'not encrypted';
}

export function registerAdmin(program: Command): void {
  const admin = program.command('admin').description('fleet control: checkouts, leases, device tokens, audit log');

  withCommonOptions(admin.command('checkouts').description('active checkouts: user, device, since, lease expiry, last contact, bytes pending')).action(async (_o, cmd: Command) => {
    await withData(optsOf(cmd), async (d) => ({ checkouts: await d.fleet.activeCheckouts() }), (r) =>
      r.checkouts.length === 0 ? 'no active checkouts' : r.checkouts.map((c) =>
        `${c.desktop} (v${c.baseVersion}) by ${c.user} on ${c.deviceName} since ${c.since}; lease ${until(c.leaseExpiresAt)} (${c.leaseExpiresAt ?? '-'}); ` +
        `last contact ${ago(c.lastContactAt)}; pending ${c.pendingBytes === null ? 'unknown' : `${fmtBytes(c.pendingBytes)} in ${c.pendingBlocks} blocks`}; ` +
        `last restore point ${c.lastRestorePoint ? `#${c.lastRestorePoint.id} ${ago(c.lastRestorePoint.at)}` : 'none'}; ${encryptionOf(c)}; checkout ${c.checkoutId}`).join('\n'));
  });

  withCommonOptions(admin.command('recovery-code <desktop>').description("the recovery code of a laptop copy's data key (the user forgot the passphrase): read it out; audited"))
    .option('--checkout <id>', "that checkout's copy (default: the desktop's current checkout, else its latest one with an escrowed key)")
    .option('--escrow-key <file>', 'the escrow private key, when it was moved out of DATA/escrow/escrow.key')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => {
        const checkoutId = opts.checkout === undefined ? undefined : String(opts.checkout);
        return d.escrow.recoveryCode({ desktop: parseName(desktop, 'desktop'), checkoutId }, cliActor(), opts.escrowKey === undefined ? undefined : String(opts.escrowKey));
      }, (r) => [
        `recovery code for ${r.desktop} on ${r.deviceName} (checkout ${r.checkoutId}, key check ${r.keyCheck}):`,
        `  ${r.code}`,
        `read it out group by group; the user types: carryon unlock ${r.desktop} --recovery-code ${r.code}`,
        `(the laptop checks the code against key check ${r.keyCheck} before using it; this reveal is in the audit log)`,
      ].join('\n'));
    });

  withCommonOptions(admin.command('extend <checkout>').description("push a checkout's offline lease out by N days"))
    .requiredOption('--days <n>', 'days to add (from now, or from the current expiry if later)')
    .action(async (checkout: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => d.fleet.extendLease(checkout, positive(opts.days, '--days'), cliActor()), (c) =>
        `${c.desktop}: the server's lease now ends ${c.leaseExpiresAt} (${until(c.leaseExpiresAt)}).\n` +
        `The laptop (${c.deviceName}) learns this only at its next contact with the server (last contact ${ago(c.lastContactAt)}); until then its own lease still ends where it did.\n` +
        `If the laptop is offline, read the user a lease code instead: carryon-server admin lease-code ${c.checkoutId} --days N (the user types it into \`carryon renew ${c.desktop} --code CODE\`)`);
    });

  withCommonOptions(admin.command('lease-code <checkout>').description('a code the user types offline (`carryon renew NAME --code CODE`) to extend the lease by N days'))
    .requiredOption('--days <n>', 'whole days, 1-255')
    .action(async (checkout: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => d.fleet.leaseCode(checkout, Number(opts.days), cliActor()), (r) =>
        `lease code for ${r.desktop} (code #${r.seq}): the lease runs until ${r.leaseExpiresAt} once it is typed\n  ${r.code}\n` +
        `the user types: carryon renew ${r.desktop} --code ${r.code}\n` +
        `The server's lease stays at ${r.serverLeaseExpiresAt ?? '-'} until the laptop reports the code used, at its next contact.`);
    });

  withCommonOptions(admin.command('lease-policy <kind> <name>').description('offline lease length of a desktop or an image (kind: desktop or image)'))
    .option('--days <n>', 'lease length in days (a desktop overrides its image; default 7)')
    .option('--clear', 'remove the setting (fall back to the image, then to 7 days)')
    .action(async (kind: string, name: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        if (kind !== 'desktop' && kind !== 'image') throw new CarryonError('INVALID_ARGUMENT', 'kind must be desktop or image');
        const days = opts.clear === true ? null : positive(opts.days, '--days');
        if (kind === 'desktop') await d.desktops.setDesktopPolicy(parseName(name, 'desktop'), { leaseDays: days }, cliActor());
        else await d.desktops.setImagePolicy(parseName(name, 'image'), { leaseDays: days }, cliActor());
        return { [kind]: name, leaseDays: days };
      }, (r) => `${kind} ${name}: lease ${r.leaseDays === null ? 'follows the default' : `${r.leaseDays} days`}`);
    });

  withCommonOptions(admin.command('checkin <checkout>').description("force a check-in: queued; the device's agent checks in at its next contact")).action(async (checkout: string, _o, cmd: Command) => {
    await withData(optsOf(cmd), (d) => d.fleet.requestCheckin(checkout, cliActor()), (r) => `check-in of ${r.desktop} requested (#${r.id}, ${r.state}); follow it with \`carryon-server admin requests\``);
  });

  withCommonOptions(admin.command('rollback <checkout>').description('end a checkout now; the desktop stays at its last server version (or becomes a restore point); the device removes its copy at its next contact'))
    .option('--to-point <id>', 'make this restore point the desktop\'s next version (see `admin restore-points`)')
    .action(async (checkout: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => d.fleet.rollback(checkout, cliActor(), opts.toPoint === undefined ? undefined : positive(opts.toPoint, '--to-point')), (r) =>
        `${r.desktop} rolled back: free to check out again; the device is told at its next contact (#${r.id}${(r.detail as { keepLocal?: boolean } | null)?.keepLocal ? ', it keeps its copy aside' : ''})`);
    });

  withCommonOptions(admin.command('rollback-policy <desktop>').description("whether a rollback keeps the laptop's copy aside (in HOME/kept) instead of deleting it"))
    .option('--keep', 'keep it aside').option('--no-keep', 'delete it (default)')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        await d.desktops.setDesktopPolicy(parseName(desktop, 'desktop'), { rollbackKeepsLocal: opts.keep === true }, cliActor());
        return { desktop, keepLocal: opts.keep === true };
      }, (r) => `${r.desktop}: a rollback ${r.keepLocal ? 'keeps the laptop copy aside' : 'deletes the laptop copy'}`);
    });

  withCommonOptions(admin.command('restore-points <desktop>').description("a desktop's restore points, newest first")).action(async (desktop: string, _o, cmd: Command) => {
    await withData(optsOf(cmd), async (d) => ({ restorePoints: await d.desktops.restorePoints(null, parseName(desktop, 'desktop')) }), (r) =>
      r.restorePoints.length === 0 ? 'no restore points' : r.restorePoints.map((p) => `#${p.id} ${p.createdAt} from ${p.deviceName}: ${p.blocksChanged} blocks changed over version ${p.baseVersion}`).join('\n'));
  });

  withCommonOptions(admin.command('restore <desktop>').description("make a restore point, or an earlier version (such as the disk before a refresh or recompose), the desktop's next version (the desktop must not be checked out)"))
    .option('--point <id>', 'restore point id')
    .option('--version <n>', 'an earlier version of the desktop')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        if ((opts.point === undefined) === (opts.version === undefined)) throw new CarryonError('INVALID_ARGUMENT', 'give --point ID (a restore point) or --version N (an earlier version of the desktop)');
        if (opts.version !== undefined) {
          const r = await d.recompose.restoreVersion(parseName(desktop, 'desktop'), positive(opts.version, '--version'), cliActor());
          return { desktop: r.desktop, version: r.version, from: `version ${r.restoredVersion}` };
        }
        const r = await d.desktops.restoreDesktop(parseName(desktop, 'desktop'), positive(opts.point, '--point'), cliActor());
        return { ...r, from: `restore point #${r.restorePoint}` };
      }, (r) => `${r.desktop} is now version ${r.version}, from ${r.from}`);
    });

  withCommonOptions(admin.command('replicate-policy <desktop>').description('how often the agent sends a restore point while the desktop is checked out'))
    .option('--minutes <n>', 'minutes between restore points').option('--clear', 'no scheduled restore points')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, async (d) => {
        const minutes = opts.clear === true ? null : positive(opts.minutes, '--minutes');
        await d.desktops.setDesktopPolicy(parseName(desktop, 'desktop'), { replicateMinutes: minutes }, cliActor());
        return { desktop, replicateEveryMinutes: minutes };
      }, (r) => `${r.desktop}: ${r.replicateEveryMinutes === null ? 'no scheduled restore points' : `a restore point every ${r.replicateEveryMinutes} min`}`);
    });

  withCommonOptions(admin.command('delete-desktop <desktop>').description('delete a desktop and its history (refused while checked out)'))
    .option('--yes', 'really delete')
    .action(async (desktop: string, _o, cmd: Command) => {
      const opts = optsOf(cmd);
      await withData(opts, (d) => {
        if (opts.yes !== true) throw new CarryonError('ABORTED', `deleting ${desktop} removes its versions and restore points: pass --yes`);
        return d.desktops.deleteDesktop(parseName(desktop, 'desktop'), cliActor());
      }, (r) => `deleted ${r.desktop}: ${r.versions} versions, ${r.restorePoints} restore points`);
    });

  withCommonOptions(admin.command('requests').description('forced check-ins and rollbacks, and how far each got')).action(async (_o, cmd: Command) => {
    await withData(optsOf(cmd), async (d) => ({ requests: await d.fleet.requests() }), (r) => r.requests.length === 0 ? 'no requests' : r.requests.map((q) =>
      `#${q.id} ${q.kind} ${q.desktop}: ${q.state} (by ${q.requestedBy} at ${q.createdAt}, updated ${q.updatedAt})${q.summary ? `: ${q.summary}` : ''}`).join('\n'));
  });

  withCommonOptions(admin.command('tokens').description('every token: user, device, created, last used, revoked')).action(async (_o, cmd: Command) => {
    await withData(optsOf(cmd), async (d) => ({ tokens: await d.fleet.tokens() }), (r) => r.tokens.map((t) =>
      `#${t.id} ${t.user}${t.device ? ` device ${t.deviceName} (${t.device})` : ' (user token)'} created ${t.createdAt}, last used ${ago(t.lastUsedAt)}${t.revokedAt ? `, REVOKED ${t.revokedAt}` : ''}`).join('\n'));
  });

  withCommonOptions(admin.command('revoke <token-id>').description('revoke a token (the device must log in again)')).action(async (id: string, _o, cmd: Command) => {
    await withData(optsOf(cmd), (d) => d.fleet.revokeToken(positive(id, 'token id'), cliActor()), (t) => `token #${t.id} of ${t.user} revoked at ${t.revokedAt}`);
  });

  withCommonOptions(admin.command('audit').description('the audit log, newest first')).option('--limit <n>', 'rows', '50').action(async (_o, cmd: Command) => {
    const opts = optsOf(cmd);
    await withData(opts, async (d) => ({ audit: await d.fleet.auditLog(positive(opts.limit, '--limit')) }), (r) => r.audit.map((a) =>
      `${a.at} ${a.actor}${a.device ? ` on ${a.deviceName ?? 'unregistered device'} (${a.device})` : ''}${a.address ? ` from ${a.address}` : ''}: ${a.action} ${a.target ?? ''} ${JSON.stringify(a.detail)}`).join('\n'));
  });
}
