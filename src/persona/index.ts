// persona: the user's settings that travel with a desktop, apart from its disk blocks: the profile
// folder (a file tree whose contents are 1 MiB chunks in a BlockStore) and the registry.
// Owns: the snapshot model (model.ts), the untrusted-path rules (paths.ts), scanning and writing the
// profile folder (tree.ts), and its submodules (registry/ for .reg files and registry snapshots).
// Must not know: HTTP, the CLI or the wire format; it sits above store and manifest and below wire.
// Terms: snapshot = the profile's entries plus its registry, content-addressed like a manifest;
// entry = one file, folder or symlink; chunk = a PERSONA_CHUNK_BYTES piece of a file, stored as a block.
export * from './registry/index.js';
export * from './merge.js';
export * from './registry-text.js';
export * from './registry-merge.js';
export * from './registry-text-scope.js';
export * from './model.js';
export * from './paths.js';
export * from './tree.js';
