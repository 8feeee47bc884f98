// What `carryon serve` tells a hypervisor: the QEMU arguments and the libvirt XML that attach the NBD
// export as the VM's disk and share the persona's profile folder with a Linux guest, with the real paths.
// Owns: the profile share (9p through QEMU's -virtfs, security_model=none, mount tag carryon-profile), the
// check that the folder shared is a real folder, QEMU's option quoting and XML escaping.
// Must not know: NBD itself, snapshots, the server. Why 9p and not virtio-fs: docs/decisions.md.
import { lstatSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CarryonError } from '../src/index.js';

/** The tag the guest mounts (guest/linux/carryon-logon.sh uses it by default). */
export const PROFILE_TAG = 'carryon-profile';

/** Where the guest scripts are in the installed package (dist/client/ -> package root). */
export const GUEST_SCRIPTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../guest/linux');

export interface ProfileShare {
  /** The folder the next check-in scans: persona/profile beside the disk, or an encrypted copy's mount. */
  path: string;
  tag: string;
  transport: '9p';
  /** QEMU's -virtfs security model: files keep the laptop user's uid; the guest's modes and symlinks are real. */
  securityModel: 'none';
}

export interface GuestLines {
  /** qemu-system-x86_64 arguments for the disk and (when shared) the profile, one array element per argv word. */
  qemuArgs: string[];
  /** The same as one shell line (the caller adds -m, -accel, the boot disk's other settings). */
  qemuLine: string;
  /** libvirt domain XML: the <disk> and (when shared) the <filesystem>, for <devices>. */
  libvirtXml: string;
}

/**
 * The profile folder, checked before it is offered to a VM: it must exist and be a real folder, not a
 * symlink (QEMU would share whatever the link points at, and the check-in scans the folder itself).
 */
export function profileShareOf(dir: string): ProfileShare {
  const abs = path.resolve(dir);
  let st;
  try {
    st = lstatSync(abs);
  } catch (err) {
    throw new CarryonError('LOCAL_PATH_CONFLICT', `the persona's profile folder ${abs} is missing: run \`carryon persona status\` to check the copy, or serve with --no-persona-share`, { path: abs }, err);
  }
  if (st.isSymbolicLink() || !st.isDirectory()) {
    throw new CarryonError('LOCAL_PATH_CONFLICT', `the persona's profile folder ${abs} is ${st.isSymbolicLink() ? 'a symlink' : 'not a folder'}: carryon shares only a real folder with a VM; put the folder back, or serve with --no-persona-share`, { path: abs });
  }
  return { path: abs, tag: PROFILE_TAG, transport: '9p', securityModel: 'none' };
}

/** A value inside a QEMU option list: a comma is written twice (QEMU's own escape). */
export function qemuOptValue(s: string): string {
  return s.replace(/,/g, ',,');
}

/** One argv word for a POSIX shell, quoted only when it needs to be. */
export function shellWord(s: string): string {
  return /^[A-Za-z0-9_\-.,:=/@%+]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function xmlAttr(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

export function guestLines(o: { name: string; socket: string | null; port: number | null; share: ProfileShare | null }): GuestLines {
  const nbd = o.socket ? `nbd:unix:${qemuOptValue(o.socket)}:exportname=${o.name}` : `nbd:127.0.0.1:${o.port}:exportname=${o.name}`;
  const qemuArgs = ['-drive', `file=${nbd},format=raw,if=virtio,cache=none,discard=unmap`];
  if (o.share) qemuArgs.push('-virtfs', `local,path=${qemuOptValue(o.share.path)},mount_tag=${o.share.tag},security_model=${o.share.securityModel},id=${o.share.tag}`);
  const host = o.socket ? `<host transport='unix' socket='${xmlAttr(o.socket)}'/>` : `<host name='127.0.0.1' port='${o.port}'/>`;
  const xml = [
    `<disk type='network' device='disk'>`,
    `  <driver name='qemu' type='raw' cache='none' discard='unmap'/>`,
    `  <source protocol='nbd' name='${xmlAttr(o.name)}'>`,
    `    ${host}`,
    `  </source>`,
    `  <target dev='vda' bus='virtio'/>`,
    `</disk>`,
  ];
  // accessmode 'squash' is libvirt's name for QEMU's security_model=none.
  if (o.share) xml.push(
    `<filesystem type='mount' accessmode='squash'>`,
    `  <driver type='path'/>`,
    `  <source dir='${xmlAttr(o.share.path)}'/>`,
    `  <target dir='${xmlAttr(o.share.tag)}'/>`,
    `</filesystem>`,
  );
  return { qemuArgs, qemuLine: ['qemu-system-x86_64', ...qemuArgs].map(shellWord).join(' '), libvirtXml: xml.join('\n') };
}
