// carryon_sparse: where a file's data is, by lseek(SEEK_DATA) and lseek(SEEK_HOLE), so a full scan of
// a sparse disk image reads its data and skips its holes (src/disk scanImage). Node's fs has no
// SEEK_DATA; reading a hole costs as much as reading data (the kernel hands back zero pages).
//
// The kernel's promise, which is all carryon relies on: a range reported as a hole reads as zeros. A
// file system may report a hole as data (then carryon reads it and finds zeros, as before), never data
// as a hole. File systems without their own SEEK_DATA get the kernel's generic one (the whole file is
// data); one that refuses it (EINVAL) is treated the same way here.
//
// dataRuns(fd, from, to, out: Float64Array) -> n: fills out[2k], out[2k+1] with the [start, end) of the
// k-th data run that meets [from, to), clipped to it, for k < n <= out.length / 2, in file order. n is
// below out.length / 2 only when no data is left before `to` (or before the end of the file); a caller
// that got a full array asks again from the last end. Synchronous: each run is two lseek calls on the
// caller's descriptor (its file offset moves; carryon only uses positioned reads on it).
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static napi_value throw_error(napi_env env, const char *code, const char *msg) {
  napi_throw_error(env, code, msg);
  return NULL;
}

static napi_value data_runs(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) return throw_error(env, NULL, "sparse: dataRuns(fd, from, to, out)");
  int32_t fd;
  int64_t from, to;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return throw_error(env, NULL, "sparse: fd is a file descriptor");
  if (napi_get_value_int64(env, argv[1], &from) != napi_ok || napi_get_value_int64(env, argv[2], &to) != napi_ok || from < 0 || to < from)
    return throw_error(env, NULL, "sparse: from and to are offsets, from <= to");
  bool is;
  napi_typedarray_type type;
  size_t len;
  void *p;
  if (napi_is_typedarray(env, argv[3], &is) != napi_ok || !is || napi_get_typedarray_info(env, argv[3], &type, &len, &p, NULL, NULL) != napi_ok ||
      type != napi_float64_array || len < 2)
    return throw_error(env, NULL, "sparse: out is a Float64Array of at least 2 numbers");
  double *out = (double *)p;
  size_t cap = len / 2, n = 0;
  off_t pos = (off_t)from;
  while (pos < (off_t)to && n < cap) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) break; // no data from pos to the end of the file
      if (errno == EINVAL) { // no SEEK_DATA here: all of it is data
        out[2 * n] = (double)pos;
        out[2 * n + 1] = (double)to;
        n++;
        break;
      }
      char msg[160];
      snprintf(msg, sizeof msg, "sparse: lseek(SEEK_DATA) at %lld: %s", (long long)pos, strerror(errno));
      return throw_error(env, NULL, msg);
    }
    if (d >= (off_t)to) break;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) {
      if (errno == ENXIO) break; // the file shrank under us: the caller's size check says so
      char msg[160];
      snprintf(msg, sizeof msg, "sparse: lseek(SEEK_HOLE) at %lld: %s", (long long)d, strerror(errno));
      return throw_error(env, NULL, msg);
    }
    if (h > (off_t)to) h = (off_t)to;
    if (h <= d) break; // cannot happen (SEEK_HOLE from data moves forward); never loop on it
    out[2 * n] = (double)d;
    out[2 * n + 1] = (double)h;
    n++;
    pos = h;
  }
  napi_value result;
  napi_create_uint32(env, (uint32_t)n, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "dataRuns", NAPI_AUTO_LENGTH, data_runs, NULL, &fn);
  napi_set_named_property(env, exports, "dataRuns", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
