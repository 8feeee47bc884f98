# carryon's native AES-256-XTS over runs of 4 KiB sectors (see xts.c). Built by `npm install` / `npm ci`
# (package.json "install" -> native/build.cjs -> node-gyp). It includes Node's own OpenSSL headers (under
# Node's include dir, which node-gyp puts on the include path) and links against nothing: the EVP
# symbols resolve against the OpenSSL that the running node process already carries and exports.
{
  "targets": [
    {
      "target_name": "carryon_xts",
      "sources": ["xts.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
