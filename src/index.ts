// carryon core library: the public face of src/.
// Layers, lower never importing higher: errors, units, json, hash, crypto; codec, delta, rdiff, nbd; store, manifest, disk; wire.
// It never imports client/ or server/, never exits the process, never writes to the console.
export * from './errors/index.js';
export * from './units/index.js';
export * from './json/index.js';
export * from './hash/index.js';
export * from './crypto/index.js';
export * from './codec/index.js';
export * from './delta/index.js';
export * from './rdiff/index.js';
export * from './nbd/index.js';
export * from './store/index.js';
export * from './manifest/index.js';
export * from './disk/index.js';
export * from './persona/index.js';
export * from './lease/index.js';
export * from './wire/index.js';
export * from './version/index.js';
export * from './release/index.js';
export * from './sql/index.js';
