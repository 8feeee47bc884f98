// carryon_xts: AES-256-XTS over a run of consecutive 4 KiB sectors in one call (IEEE 1619 data units of
// 4,096 bytes, tweak = sector number as u64 little-endian zero-padded to 16 bytes), the format of
// src/crypto SectorCipher, byte for byte. Why native: Node's createCipheriv costs ~2.5 us per 4 KiB
// sector in object set-up and allocation, several times the AES itself (docs/performance.md).
//
// Rules kept from SectorCipher: a sector that is all zeros stays all zeros (both directions: holes);
// a last unit shorter than 4 KiB but at least 16 bytes is XTS with ciphertext stealing (OpenSSL does
// it within one update call). Tails under 16 bytes never reach here: the JS side handles them.
//
// The key is set once per context and direction (EVP_CipherInit_ex with the key and no IV); per sector
// only the IV (the tweak) is set again, and EVP_CipherUpdate writes into the caller's buffer, which
// may be the input itself. Uses the OpenSSL inside the node process (its exported EVP_* symbols).
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#define SECTOR 4096

typedef struct {
  EVP_CIPHER_CTX *enc;
  EVP_CIPHER_CTX *dec;
} Xts;

static void xts_free(Xts *x) {
  if (!x) return;
  if (x->enc) EVP_CIPHER_CTX_free(x->enc); // also cleanses the key schedule
  if (x->dec) EVP_CIPHER_CTX_free(x->dec);
  free(x);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  xts_free((Xts *)data);
}

static napi_value throw_error(napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  napi_typedarray_type type;
  void *p;
  size_t n;
  if (napi_get_typedarray_info(env, v, &type, &n, &p, NULL, NULL) != napi_ok || type != napi_uint8_array) return 0;
  *data = (uint8_t *)p;
  *len = n;
  return 1;
}

// new Xts(key: Uint8Array(64)) -> an external holding both directions' contexts.
static napi_value create(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *key;
  size_t keylen;
  if (argc < 1 || !get_bytes(env, argv[0], &key, &keylen) || keylen != 64) return throw_error(env, "xts: the key is a Uint8Array of 64 bytes");
  Xts *x = calloc(1, sizeof(Xts));
  if (!x) return throw_error(env, "xts: out of memory");
  x->enc = EVP_CIPHER_CTX_new();
  x->dec = EVP_CIPHER_CTX_new();
  if (!x->enc || !x->dec || EVP_CipherInit_ex(x->enc, EVP_aes_256_xts(), NULL, key, NULL, 1) != 1 ||
      EVP_CipherInit_ex(x->dec, EVP_aes_256_xts(), NULL, key, NULL, 0) != 1) {
    xts_free(x);
    return throw_error(env, "xts: OpenSSL refused the key (equal halves?)");
  }
  napi_value ext;
  if (napi_create_external(env, x, finalize, NULL, &ext) != napi_ok) {
    xts_free(x);
    return throw_error(env, "xts: could not wrap the context");
  }
  return ext;
}

static int all_zero(const uint8_t *p, size_t n) {
  // 4 KiB at a time with 8-byte words: the compiler vectorizes the OR.
  const uint8_t *end = p + n;
  uint64_t acc = 0;
  for (; p + 64 <= end; p += 64) {
    uint64_t w[8];
    memcpy(w, p, 64);
    acc |= w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
    if (acc) return 0;
  }
  for (; p < end; p++) acc |= *p;
  return acc == 0;
}

// run(ctx, encrypt: boolean, src: Uint8Array, dst: Uint8Array, sector: number): undefined
// src and dst have the same length, and are the same bytes or do not overlap (the JS side checks).
// sector is an integer below 2^53.
static napi_value run(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) return throw_error(env, "xts: run(ctx, encrypt, src, dst, sector)");
  Xts *x;
  if (napi_get_value_external(env, argv[0], (void **)&x) != napi_ok || !x) return throw_error(env, "xts: not a context");
  bool enc;
  if (napi_get_value_bool(env, argv[1], &enc) != napi_ok) return throw_error(env, "xts: encrypt is a boolean");
  uint8_t *src, *dst;
  size_t slen, dlen;
  if (!get_bytes(env, argv[2], &src, &slen) || !get_bytes(env, argv[3], &dst, &dlen)) return throw_error(env, "xts: buffers are Uint8Arrays");
  if (dlen != slen) return throw_error(env, "xts: src and dst differ in length");
  double sd;
  if (napi_get_value_double(env, argv[4], &sd) != napi_ok || !(sd >= 0) || sd > 9007199254740991.0) return throw_error(env, "xts: sector is a non-negative safe integer");
  uint64_t sector = (uint64_t)sd;
  if ((double)sector != sd) return throw_error(env, "xts: sector is a non-negative safe integer");
  size_t last = slen % SECTOR;
  if (last > 0 && last < 16) return throw_error(env, "xts: a unit under 16 bytes is the caller's (tinyTail)");

  EVP_CIPHER_CTX *ctx = enc ? x->enc : x->dec;
  uint8_t iv[16] = {0};
  for (size_t at = 0; at < slen; at += SECTOR, sector++) {
    size_t len = slen - at < SECTOR ? slen - at : SECTOR;
    const uint8_t *in = src + at;
    uint8_t *out = dst + at;
    if (all_zero(in, len)) {
      if (out != in) memset(out, 0, len);
      continue;
    }
    for (int i = 0; i < 8; i++) iv[i] = (uint8_t)(sector >> (8 * i));
    int outl = 0;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) != 1 || EVP_CipherUpdate(ctx, out, &outl, in, (int)len) != 1 || (size_t)outl != len) {
      return throw_error(env, "xts: OpenSSL failed on a sector");
    }
  }
  return NULL;
}

// preadDecrypt(ctx, fd, dst, position, sector): Promise<undefined>. Reads dst.length bytes of the file
// at position (zeros past its end) and decrypts them in place, both on a libuv worker thread, so a large
// read of an encrypted disk costs the serving thread nothing but the callback. Units under 16 bytes
// (the tail of an odd-sized disk) are left as read: the JS side decrypts them. Each job decrypts with
// its own copy of the context (a context is not safe across threads).
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref dst_ref;
  napi_ref ctx_ref;
  EVP_CIPHER_CTX *ctx;
  int fd;
  uint8_t *data;
  size_t len;
  int64_t pos;
  uint64_t sector;
  int err; // errno of the read, or -1: OpenSSL failed
} ReadJob;

static void read_execute(napi_env env, void *d) {
  (void)env;
  ReadJob *j = (ReadJob *)d;
  size_t got = 0;
  while (got < j->len) {
    ssize_t n = pread(j->fd, j->data + got, j->len - got, (off_t)(j->pos + (int64_t)got));
    if (n < 0) {
      if (errno == EINTR) continue;
      j->err = errno;
      return;
    }
    if (n == 0) break;
    got += (size_t)n;
  }
  if (got < j->len) memset(j->data + got, 0, j->len - got); // a sparse tail past the file's end: a hole
  uint8_t iv[16] = {0};
  uint64_t s = j->sector;
  for (size_t at = 0; at < j->len; at += SECTOR, s++) {
    size_t l = j->len - at < SECTOR ? j->len - at : SECTOR;
    uint8_t *p = j->data + at;
    if (l < 16 || all_zero(p, l)) continue;
    for (int i = 0; i < 8; i++) iv[i] = (uint8_t)(s >> (8 * i));
    int outl = 0;
    if (EVP_CipherInit_ex(j->ctx, NULL, NULL, NULL, iv, -1) != 1 || EVP_CipherUpdate(j->ctx, p, &outl, p, (int)l) != 1 || (size_t)outl != l) {
      j->err = -1;
      return;
    }
  }
}

static const char *errno_code(int e) {
  switch (e) {
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EISDIR: return "EISDIR";
    case ENXIO: return "ENXIO";
    case EOVERFLOW: return "EOVERFLOW";
    default: return "EIO";
  }
}

static void read_complete(napi_env env, napi_status status, void *d) {
  ReadJob *j = (ReadJob *)d;
  if (status == napi_ok && j->err == 0) {
    napi_value undef;
    napi_get_undefined(env, &undef);
    napi_resolve_deferred(env, j->deferred, undef);
  } else {
    char msg[160];
    const char *code = j->err > 0 ? errno_code(j->err) : "EIO";
    if (j->err > 0) snprintf(msg, sizeof msg, "%s: %s, pread", code, strerror(j->err));
    else snprintf(msg, sizeof msg, "xts: OpenSSL failed on a sector while decrypting a read");
    napi_value c, m, e, sys;
    napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, c, m, &e);
    if (j->err > 0) {
      napi_create_string_utf8(env, "pread", NAPI_AUTO_LENGTH, &sys);
      napi_set_named_property(env, e, "syscall", sys);
    }
    napi_reject_deferred(env, j->deferred, e);
  }
  napi_delete_reference(env, j->dst_ref);
  napi_delete_reference(env, j->ctx_ref);
  napi_delete_async_work(env, j->work);
  EVP_CIPHER_CTX_free(j->ctx);
  free(j);
}

static napi_value pread_decrypt(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) return throw_error(env, "xts: preadDecrypt(ctx, fd, dst, position, sector)");
  Xts *x;
  if (napi_get_value_external(env, argv[0], (void **)&x) != napi_ok || !x) return throw_error(env, "xts: not a context");
  int32_t fd;
  if (napi_get_value_int32(env, argv[1], &fd) != napi_ok || fd < 0) return throw_error(env, "xts: fd is a file descriptor");
  uint8_t *dst;
  size_t len;
  if (!get_bytes(env, argv[2], &dst, &len)) return throw_error(env, "xts: dst is a Uint8Array");
  double pd, sd;
  if (napi_get_value_double(env, argv[3], &pd) != napi_ok || !(pd >= 0) || pd > 9007199254740991.0 || (double)(int64_t)pd != pd) return throw_error(env, "xts: position is a non-negative safe integer");
  if (napi_get_value_double(env, argv[4], &sd) != napi_ok || !(sd >= 0) || sd > 9007199254740991.0 || (double)(uint64_t)sd != sd) return throw_error(env, "xts: sector is a non-negative safe integer");
  ReadJob *j = calloc(1, sizeof(ReadJob));
  if (!j) return throw_error(env, "xts: out of memory");
  j->ctx = EVP_CIPHER_CTX_new();
  if (!j->ctx || EVP_CIPHER_CTX_copy(j->ctx, x->dec) != 1) {
    if (j->ctx) EVP_CIPHER_CTX_free(j->ctx);
    free(j);
    return throw_error(env, "xts: could not copy the context");
  }
  j->fd = fd;
  j->data = dst;
  j->len = len;
  j->pos = (int64_t)pd;
  j->sector = (uint64_t)sd;
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  // The buffer and the context stay alive (not collected) until the job completes.
  napi_create_reference(env, argv[2], 1, &j->dst_ref);
  napi_create_reference(env, argv[0], 1, &j->ctx_ref);
  napi_create_string_utf8(env, "carryon_xts_pread", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, read_execute, read_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"create", NULL, create, NULL, NULL, NULL, napi_enumerable, NULL},
    {"run", NULL, run, NULL, NULL, NULL, napi_enumerable, NULL},
    {"preadDecrypt", NULL, pread_decrypt, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  napi_value v;
  napi_create_string_utf8(env, OpenSSL_version(OPENSSL_VERSION), NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, exports, "openssl", v);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
