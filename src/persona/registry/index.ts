// persona/registry: Windows registry .reg files and registry snapshots.
// Owns: the .reg codec (decodeRegFile/encodeRegFile) for regedit's two formats, "Windows Registry
// Editor Version 5.00" (UTF-16LE with BOM as regedit writes it, or UTF-8) and "REGEDIT4" (ANSI
// code page, or UTF-8); the Registry snapshot with regedit's import semantics (applyToRegistry) and
// its canonical export (exportRegistry); typed views of value data (encodeRegSz/decodeRegSz, ...).
// Scope (scope.ts): a persona holds HKEY_CURRENT_USER alone, narrowed per desktop by include and
// exclude key patterns; registryChanges gives the .reg (with `"name"=-` and `[-Key]`) that turns one
// registry into another within a scope. sniff.ts tells a .reg from a hive (regf) or other bytes.
// Must not know: where .reg files come from or go (disk, HTTP, checkouts), stores, manifests, the
// merge policy built on top, or a live Windows registry.
// Terms: key path = root key + backslash-separated key names (HKEY_CURRENT_USER\Software\Foo);
// value = name (null for the default value `@`) + type number + raw data bytes, exactly what the
// registry stores (UTF-16LE for string types), so unknown types and odd data survive; section = one
// `[path]` with its value edits, or one `[-path]` key deletion; key and value identity =
// keyPathId/valueNameId, case-insensitive as Windows compares names, while the first spelling is
// kept for output.
// Lossless: for every file decodeRegFile accepts, decodeRegFile(encodeRegFile(f), { encoding:
// f.encoding }) deep-equals f (comments, blank lines and wrapping are not data and are not kept), and
// a file in regedit's own layout comes back byte for byte.
export {
  REG_NONE,
  REG_SZ,
  REG_EXPAND_SZ,
  REG_BINARY,
  REG_DWORD,
  REG_DWORD_BIG_ENDIAN,
  REG_LINK,
  REG_MULTI_SZ,
  REG_RESOURCE_LIST,
  REG_FULL_RESOURCE_DESCRIPTOR,
  REG_RESOURCE_REQUIREMENTS_LIST,
  REG_QWORD,
  REG_ROOT_KEYS,
  REG_MAX_FILE_BYTES,
  REG_MAX_LINE_CHARS,
  REG_MAX_VALUE_BYTES,
  REG_MAX_KEY_NAME_CHARS,
  REG_MAX_VALUE_NAME_CHARS,
  REG_MAX_KEY_DEPTH,
  type RegRootKey,
  type RegFileVersion,
  type RegFileEncoding,
  type RegValueSet,
  type RegValueDelete,
  type RegValueEdit,
  type RegKeySection,
  type RegKeyDeletion,
  type RegSection,
  type RegistryFile,
  type RegDecodeOptions,
} from './types.js';
export { decodeRegFile, decodeRegSections } from './decode.js';
export { encodeRegFile, encodeRegValueLine, wrapHexData, HEX_WRAP_COLUMNS } from './encode.js';
export { keyPathId, valueNameId, foldName, rootKeyOf, keyPathProblem, canonicalRoot } from './names.js';
export {
  HKCU,
  DEFAULT_REGISTRY_EXCLUDES,
  DEFAULT_EXCLUDES_TOKEN,
  DEFAULT_REGISTRY_SCOPE,
  MAX_SCOPE_PATTERNS,
  ScopeFilter,
  parseKeyPattern,
  parseKeyPatternList,
  effectiveExcludes,
  registryScopeFromStored,
  filterRegistry,
  registryChanges,
  type RegistryScope,
  type ScopedRegistry,
} from './scope.js';
export { REGF_MAGIC, sniffRegistryInput, type RegistryInputKind } from './sniff.js';
export { forEachRegKeyLine, regKeyLines, type RegKeyLine } from './key-lines.js';
export { Registry, applyToRegistry, registryToFile, exportRegistry, type RegistryValue, type RegistryKey, type RegExportOptions } from './registry.js';
export {
  encodeRegSz,
  decodeRegSz,
  encodeRegMultiSz,
  decodeRegMultiSz,
  encodeRegDword,
  decodeRegDword,
  encodeRegQword,
  decodeRegQword,
} from './values.js';
