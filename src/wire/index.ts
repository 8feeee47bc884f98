// wire: what crosses the network between laptop and server.
// Owns: the HTTP API's routes, headers and body shapes with their boundary parsers, and the tar
// framing of block transfers. Must not know: SQLite, the CLI, HTTP server or client code.
export * from './api.js';
export * from './tar.js';
export * from './buffer-pool.js';
