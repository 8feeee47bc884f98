// What a file given as a registry is, from its first bytes: a .reg text file, a registry hive (regf,
// as NTUSER.DAT), or something else, named so the user learns what they passed instead.
import { CarryonError } from '../../errors/index.js';

/** The first four bytes of every registry hive file ("regf"). */
export const REGF_MAGIC = Uint8Array.of(0x72, 0x65, 0x67, 0x66);

export type RegistryInputKind = 'reg' | 'hive';

const KNOWN: Array<{ magic: number[]; what: string }> = [
  { magic: [0x50, 0x4b, 0x03, 0x04], what: 'a ZIP archive (.zip, .docx, .xlsx)' },
  { magic: [0x25, 0x50, 0x44, 0x46], what: 'a PDF document' },
  { magic: [0x1f, 0x8b], what: 'a gzip-compressed file' },
  { magic: [0x28, 0xb5, 0x2f, 0xfd], what: 'a zstd-compressed file' },
  { magic: [0x4d, 0x5a], what: 'a Windows program (.exe, .dll)' },
  { magic: [0x7f, 0x45, 0x4c, 0x46], what: 'a Linux program (ELF)' },
  { magic: [0x53, 0x51, 0x4c, 0x69, 0x74, 0x65], what: 'an SQLite database' },
  { magic: [0x89, 0x50, 0x4e, 0x47], what: 'a PNG image' },
  { magic: [0xd0, 0xcf, 0x11, 0xe0], what: 'an old Office document (OLE)' },
  { magic: [0x72, 0x65, 0x67, 0x6c, 0x6f, 0x67], what: 'a registry transaction log (NTUSER.DAT.LOG1/LOG2), not the hive itself' },
  { magic: [0x51, 0x46, 0x49, 0xfb], what: 'a QEMU disk image (qcow2)' },
];

const HOW_TO =
  'carryon persona reg import takes a .reg file (as regedit or `reg export HKCU FILE` writes it) or a registry hive (NTUSER.DAT, as Windows keeps it in the user\'s profile folder)';

/**
 * 'hive' when the bytes start with "regf", 'reg' when they look like text a .reg parser should read
 * (the parser then names any problem by line). Anything else is REG_FILE_UNSUPPORTED saying what it
 * looks like.
 */
export function sniffRegistryInput(head: Uint8Array, file = 'the file'): RegistryInputKind {
  const starts = (m: ArrayLike<number>): boolean => head.length >= m.length && Array.prototype.every.call(m, (b: number, i: number) => head[i] === b);
  if (starts(REGF_MAGIC)) return 'hive';
  const known = KNOWN.find((k) => starts(k.magic));
  if (known) throw unsupported(file, known.what);
  if (head.length === 0) throw unsupported(file, 'an empty file');
  // UTF-16LE text without its byte-order mark ("W\0i\0"): regedit refuses it too.
  if (head.length >= 4 && head[1] === 0 && head[3] === 0 && head[0]! >= 0x20 && head[0]! < 0x7f && head[0] !== 0xff) {
    throw unsupported(file, 'UTF-16LE text without the byte-order mark FF FE that regedit writes; re-save it from regedit or Notepad as "Unicode"', false);
  }
  const text = head[0] === 0xff && head[1] === 0xfe; // UTF-16LE BOM
  if (!text) {
    // Control bytes other than tab, CR, LF (and the UTF-8 BOM's) in the first bytes: binary, not text.
    const sample = head.subarray(0, 512);
    const control = sample.findIndex((b) => b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d);
    if (control >= 0) throw unsupported(file, `binary data (byte 0x${sample[control]!.toString(16).padStart(2, '0')} at offset ${control}), not text`);
  }
  return 'reg';
}

function unsupported(file: string, what: string, withHint = true): CarryonError {
  return new CarryonError('REG_FILE_UNSUPPORTED', `${file} is not a .reg file: it looks like ${what}${withHint ? `; ${HOW_TO}` : ''}`, { file, looksLike: what });
}
