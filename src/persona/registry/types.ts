// The data model of a Windows registry .reg file and its limits. See index.ts for the terms.

/** Registry value type numbers (winnt.h). Any other 32-bit number is kept as is. */
export const REG_NONE = 0;
export const REG_SZ = 1;
export const REG_EXPAND_SZ = 2;
export const REG_BINARY = 3;
export const REG_DWORD = 4;
export const REG_DWORD_BIG_ENDIAN = 5;
export const REG_LINK = 6;
export const REG_MULTI_SZ = 7;
export const REG_RESOURCE_LIST = 8;
export const REG_FULL_RESOURCE_DESCRIPTOR = 9;
export const REG_RESOURCE_REQUIREMENTS_LIST = 10;
export const REG_QWORD = 11;

/** The five root keys regedit accepts in a .reg file, spelled as regedit writes them. */
export const REG_ROOT_KEYS = [
  'HKEY_LOCAL_MACHINE',
  'HKEY_CURRENT_USER',
  'HKEY_CLASSES_ROOT',
  'HKEY_USERS',
  'HKEY_CURRENT_CONFIG',
] as const;
export type RegRootKey = (typeof REG_ROOT_KEYS)[number];

/** 'v5' = "Windows Registry Editor Version 5.00"; 'regedit4' = "REGEDIT4". */
export type RegFileVersion = 'v5' | 'regedit4';
/**
 * How the text is stored. regedit writes v5 files as UTF-16LE with a BOM and REGEDIT4 files in the
 * ANSI code page; 'windows-1252' stands for that code page (the WHATWG mapping, one char per byte).
 */
export type RegFileEncoding = 'utf-16le' | 'utf-8' | 'windows-1252';

/** Set a value: `"name"=...` or `@=...`. `name` null is the default value (`@`, or `""`). */
export interface RegValueSet {
  kind: 'set';
  name: string | null;
  /** Registry type number, 0..0xffffffff. */
  type: number;
  /** The bytes the registry stores (UTF-16LE for string types), exactly. */
  data: Uint8Array;
}

/** Delete a value: `"name"=-`. */
export interface RegValueDelete {
  kind: 'delete';
  name: string | null;
}

export type RegValueEdit = RegValueSet | RegValueDelete;

/** `[path]` followed by value lines: create the key (and its parents) and edit its values in order. */
export interface RegKeySection {
  kind: 'key';
  /** Full path as written, root first: `HKEY_CURRENT_USER\Software\Foo`. */
  path: string;
  values: RegValueEdit[];
}

/** `[-path]`: delete the key and all its subkeys. */
export interface RegKeyDeletion {
  kind: 'delete-key';
  path: string;
}

export type RegSection = RegKeySection | RegKeyDeletion;

/** A parsed .reg file: what it says, in order. Comments, blank lines and line wrapping are not kept. */
export interface RegistryFile {
  version: RegFileVersion;
  encoding: RegFileEncoding;
  /** Whether the bytes start with a byte-order mark (always for utf-16le, never for windows-1252). */
  bom: boolean;
  sections: RegSection[];
}

/** Refuse any file larger than this (bytes). */
export const REG_MAX_FILE_BYTES = 256 * 1024 * 1024;
/** Refuse any line longer than this (characters). regedit wraps hex data at 80 columns. */
export const REG_MAX_LINE_CHARS = 1024 * 1024;
/** Refuse any value whose data is larger than this (bytes). */
export const REG_MAX_VALUE_BYTES = 16 * 1024 * 1024;
/** Longest key name component and value name the Windows registry allows (UTF-16 code units). */
export const REG_MAX_KEY_NAME_CHARS = 255;
export const REG_MAX_VALUE_NAME_CHARS = 16383;
/** Deepest key the Windows registry allows (components below the root). */
export const REG_MAX_KEY_DEPTH = 512;

export interface RegDecodeOptions {
  /**
   * Read the text in this encoding instead of guessing. A BOM-less file is guessed as UTF-8 when it
   * has non-ASCII bytes that decode as UTF-8, as windows-1252 when it has others, and when it is all
   * ASCII as windows-1252 for a REGEDIT4 header (regedit's ANSI) and UTF-8 otherwise. Pass the
   * `encoding` of a file you wrote to read it back exactly.
   */
  encoding?: RegFileEncoding;
  /**
   * Refuse a key (set or deleted) under any other root with REGISTRY_OUTSIDE_HKCU, naming its line:
   * a persona holds HKEY_CURRENT_USER alone.
   */
  onlyRoot?: RegRootKey;
  maxFileBytes?: number;
  maxLineChars?: number;
  maxValueBytes?: number;
}
