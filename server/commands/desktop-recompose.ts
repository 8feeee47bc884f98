// carryon-server desktop refresh|recompose: move desktops onto an image version, keeping each user's
// persona (server/recompose.ts). Without --yes, says what would happen and what survives, and changes nothing.
import type { Command } from 'commander';
import { CarryonError, parseName } from '../../src/index.js';
import { withData } from '../cli-util.js';
import { RECOMPOSE_SURVIVES, type RecomposeOutcome, type RecomposeTarget } from '../recompose.js';
import type { ServerParts } from '../services/parts.js';
import { cliActor } from './admin.js';
import { optsOf, withCommonOptions } from './options.js';

const SURVIVES = RECOMPOSE_SURVIVES;

function lines(r: RecomposeOutcome[]): string {
  return r.map((o) => {
    const to = `image ${o.image} ${o.imageVersion === null ? '(its newest version then)' : `version ${o.imageVersion}`}`;
    if (o.state === 'done') return `  ${o.desktop}: now version ${o.version}, ${to}; previous disk kept as version ${o.keptVersion}`;
    if (o.state === 'queued') return `  ${o.desktop}: checked out: moves to ${to} when its checkout ends (after the check-in, kept as its own version)`;
    return `  ${o.desktop}: already on ${to}: unchanged`;
  }).join('\n');
}

async function selected(d: ServerParts, names: string[], allOf: unknown): Promise<string[]> {
  if (allOf !== undefined && names.length > 0) throw new CarryonError('INVALID_ARGUMENT', 'give desktop names or --all-of-image IMAGE, not both');
  if (allOf !== undefined) return d.recompose.desktopsOfImage(parseName(String(allOf), 'image'));
  return names.map((n) => parseName(n, 'desktop'));
}

function register(desktop: Command, kind: 'refresh' | 'recompose'): void {
  const cmd = withCommonOptions(desktop.command(`${kind} [desktops...]`).description(kind === 'refresh'
    ? "put desktops back on their image's newest version, keeping each user's persona"
    : "move desktops onto another image (version), keeping each user's persona"))
    .option('--all-of-image <image>', 'every desktop of this image')
    .option('--yes', 'do it (without it: what would happen, and nothing changes)');
  if (kind === 'recompose') cmd.requiredOption('--image <image>', 'the image to move to').option('--image-version <n>', 'its version (default: the newest)');
  cmd.action(async (names: string[], _o, c: Command) => {
    const opts = optsOf(c);
    await withData(opts, async (d) => {
      const list = await selected(d, names, opts.allOfImage);
      const version = opts.imageVersion === undefined ? undefined : Number(opts.imageVersion);
      if (version !== undefined && (!Number.isSafeInteger(version) || version < 1)) throw new CarryonError('INVALID_ARGUMENT', '--image-version must be a positive integer');
      const target: RecomposeTarget = kind === 'refresh' ? { kind } : { kind, image: parseName(String(opts.image), 'image'), imageVersion: version };
      if (opts.yes !== true) {
        throw new CarryonError('ABORTED', `${kind} of ${list.length} desktop(s) not done: add --yes. ${list.join(', ')} would move to ${kind === 'refresh' ? "their image's newest version" : `image ${target.image}${version ? ` version ${version}` : ''}`}. ${SURVIVES}`, { desktops: list });
      }
      return { kind, desktops: await d.recompose.apply(list, target, cliActor()) };
    }, (r) => `${r.kind}: ${r.desktops.filter((o) => o.state === 'done').length} moved, ${r.desktops.filter((o) => o.state === 'queued').length} queued until their checkout ends, ${r.desktops.filter((o) => o.state === 'unchanged').length} unchanged\n${lines(r.desktops)}\n${SURVIVES}`);
  });
}

export function registerDesktopRecompose(desktop: Command): void {
  register(desktop, 'refresh');
  register(desktop, 'recompose');
}
