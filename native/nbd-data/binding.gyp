# carryon's NBD data path (see nbd-data.c): a C thread per connection for the transmission phase of a
# plaintext, fully local disk in `carryon serve`. Built by `npm install` / `npm ci` (package.json
# "install" -> native/build.cjs -> node-gyp), like native/xts and native/sparse. Links against libc.
{
  "targets": [
    {
      "target_name": "carryon_nbd_data",
      "sources": ["nbd-data.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-pthread"],
      "ldflags": ["-pthread"]
    }
  ]
}
