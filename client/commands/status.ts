// carryon status [NAME]: what is checked out on this laptop and what changed since.
import type { Command } from 'commander';
import { decodeManifest, parseName } from '../../src/index.js';
import { scanChanges } from '../checkin-engine.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { fmtBytes } from '../progress.js';

export function registerStatus(program: Command): void {
  withCommonOptions(program.command('status [desktop]').description('show checkouts on this laptop and their changes since check-out')).action(async (desktop: string | undefined, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, async ({ state }) => {
      const rows = desktop ? [state.checkout(parseName(desktop, 'desktop'))].filter((r) => r !== null) : state.checkouts();
      const desktops = [];
      for (const r of rows) {
        const m = decodeManifest(r.manifest);
        const entry: Record<string, unknown> = { desktop: r.desktop, state: r.state, version: r.version, disk: r.diskPath, server: r.server, size: m.size, since: r.startedAt };
        if (r.state === 'active') {
          const s = await scanChanges(state, r.desktop, opts.json === true);
          Object.assign(entry, { blocksChanged: s.changed.length, bytesChanged: s.bytesChanged });
        }
        desktops.push(entry);
      }
      return { home: state.home, desktops, ...(desktop && desktops.length === 0 ? { note: `${desktop} is not checked out on this laptop` } : {}) };
    }, (r) => {
      if (r.desktops.length === 0) return r.note ?? `nothing checked out on this laptop (${r.home})`;
      return r.desktops.map((d) => {
        const what = d.state === 'active' ? `checked out since ${d.since}; ${d.blocksChanged} blocks changed (${fmtBytes(d.bytesChanged as number)}) since check-out`
          : d.state === 'downloading' ? 'check-out incomplete: run `carryon checkout` again to resume'
          : 'checked in (the file is a read-only copy of that version)';
        return `${d.desktop} version ${d.version} at ${d.disk} (${fmtBytes(d.size as number)}): ${what}`;
      }).join('\n');
    });
  });
}
