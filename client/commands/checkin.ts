// carryon checkin NAME: upload what changed and commit it as the desktop's next version.
import type { Command } from 'commander';
import { defaultHoleMode, parseName, type MergeReport } from '../../src/index.js';
import { checkinDesktop } from '../checkin-engine.js';
import { optsOf, runCommand, withCommonOptions } from '../cli-util.js';
import { fmtBytes } from '../progress.js';

export function registerCheckin(program: Command): void {
  withCommonOptions(program.command('checkin <desktop>').description('check a desktop back in: upload changed blocks and commit')).action(async (desktop: string, _o, cmd: Command) => {
    const opts = optsOf(cmd);
    await runCommand(opts, (s) => checkinDesktop(s.state, s.api(), s.login(), parseName(desktop, 'desktop'), { quiet: opts.json === true }), (r) =>
      `checked in ${r.desktop}: version ${r.previousVersion} -> ${r.version}${r.alreadyCommitted ? ' (the commit had already landed)' : ''}\n` +
      `${r.blocksChanged} blocks changed (${fmtBytes(r.bytesChanged)}), ${r.blocksUploaded} uploaded (${r.blocksAsPatch} as patches), ` +
      `${fmtBytes(r.bytesSent)} sent in ${r.seconds.toFixed(1)} s (scan ${r.scanSeconds.toFixed(1)} s)` +
      // Without native/sparse a full scan also reads a sparse disk's holes: same result, slower; say why.
      (r.scanHoles === 'read' ? `\nnote: the full scan read the disk's holes too (${defaultHoleMode().detail}); \`npm run build:native\` builds native/sparse` : '') +
      (r.persona ? `\npersona: version ${r.persona.version}${r.persona.merged ? ', merged with edits made elsewhere meanwhile' : ''}` +
        ((r.persona.report as MergeReport | null)?.conflicts.map((c) => `\n  conflict ${c.path}: ${c.resolution}`).join('') ?? '') : '') +
      (r.recomposed ? `\nan admin moved ${r.desktop} to image ${r.recomposed.image} version ${r.recomposed.imageVersion} once this check-in was in: the desktop is now version ${r.recomposed.version}. ` +
        `Your persona is kept; what you changed on the disk is kept as version ${r.recomposed.keptVersion} (an admin can restore it). \`carryon checkout ${r.desktop}\` fetches only the blocks of the new image this laptop lacks` : ''));
  });
}
