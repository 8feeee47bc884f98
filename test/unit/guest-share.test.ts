// The lines serve prints for a hypervisor (client/guest-share.ts): QEMU's comma escape, shell quoting,
// XML escaping of odd paths, and the refusal of a profile folder that is missing or a symlink.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { guestLines, profileShareOf, qemuOptValue, shellWord } from '../../client/guest-share.js';

describe('guest share lines', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'carryon-guest-share-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('escapes commas for QEMU, quotes for the shell and escapes XML in paths', () => {
    const odd = path.join(dir, "it's, <odd> & \"so\"");
    mkdirSync(odd);
    const share = profileShareOf(odd);
    expect(share).toEqual({ path: odd, tag: 'carryon-profile', transport: '9p', securityModel: 'none' });
    expect(qemuOptValue('a,b,,c')).toBe('a,,b,,,,c');
    expect(shellWord('plain/path:x=1,2')).toBe('plain/path:x=1,2');
    expect(shellWord("it's")).toBe(`'it'\\''s'`);
    const l = guestLines({ name: 'desk', socket: '/run/a,b.nbd', port: null, share });
    expect(l.qemuArgs).toEqual([
      '-drive', 'file=nbd:unix:/run/a,,b.nbd:exportname=desk,format=raw,if=virtio,cache=none,discard=unmap',
      '-virtfs', `local,path=${odd.replace(/,/g, ',,')},mount_tag=carryon-profile,security_model=none,id=carryon-profile`,
    ]);
    expect(l.qemuLine.startsWith('qemu-system-x86_64 -drive ')).toBe(true);
    expect(l.qemuLine).toContain(`'local,path=${odd.replace(/,/g, ',,').replace(/'/g, `'\\''`)},mount_tag=`);
    expect(l.libvirtXml).toContain(`<source dir='${odd.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;')}'/>`);
    expect(l.libvirtXml).toContain("<filesystem type='mount' accessmode='squash'>");
  });

  it('a TCP export gives host and port; no share gives no -virtfs and no <filesystem>', () => {
    const l = guestLines({ name: 'desk', socket: null, port: 10809, share: null });
    expect(l.qemuArgs).toEqual(['-drive', 'file=nbd:127.0.0.1:10809:exportname=desk,format=raw,if=virtio,cache=none,discard=unmap']);
    expect(l.libvirtXml).toContain("<host name='127.0.0.1' port='10809'/>");
    expect(l.libvirtXml).not.toContain('filesystem');
  });

  it('refuses a missing profile folder, a symlink to a folder, and a file, with LOCAL_PATH_CONFLICT', () => {
    const real = path.join(dir, 'real');
    mkdirSync(real);
    symlinkSync(real, path.join(dir, 'link'));
    writeFileSync(path.join(dir, 'file'), 'x');
    for (const [p, why] of [['missing', /is missing/], ['link', /is a symlink/], ['file', /is not a folder/]] as const) {
      expect(() => profileShareOf(path.join(dir, p))).toThrow(expect.objectContaining({ code: 'LOCAL_PATH_CONFLICT', message: expect.stringMatching(why) }));
      expect(() => profileShareOf(path.join(dir, p))).toThrow(/--no-persona-share/);
    }
  });
});
