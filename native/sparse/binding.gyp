# carryon's data-run finder for sparse files (see sparse.c): lseek(SEEK_DATA / SEEK_HOLE), which Node's
# fs does not expose. Built by `npm install` / `npm ci` (package.json "install" -> native/build.cjs ->
# node-gyp), like native/xts. Links against nothing but libc.
{
  "targets": [
    {
      "target_name": "carryon_sparse",
      "sources": ["sparse.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
