// carryon_nbd_data: the transmission phase of one NBD connection on a thread of its own, for a plaintext,
// fully local disk (`carryon serve`; client/nbd-native.ts is its only caller). The handshake stays in
// JavaScript (src/nbd); once a client has picked the export, its socket's descriptor and the bytes already
// read are handed over here, and a C thread reads requests and answers them: reads with the reply header
// then sendfile (page-cache pages into the socket, no copy here), writes to durably dirty blocks spliced
// socket -> pipe -> file. So 4 connections use both cores, and no request costs a JavaScript turn, a
// promise or a Buffer. CARRYON_NBD_SENDFILE=0 and CARRYON_NBD_SPLICE=0 copy through buffers instead
// (pread + send, read + pwrite: same bytes), for benchmarks.
//
// What stays in JavaScript, asked for through a thread-safe function and answered with complete():
// - MARK: a write to blocks not yet known to be durably dirty. The thread keeps the request (its payload
//   copied) and reads on; JavaScript makes the dirty marks durable (client/disk-journal.ts), answers,
//   and only then does the thread write the bytes and acknowledge. A block is set in the export's
//   `durable` bitmap only after JavaScript said its mark is durable, so the fast path (every block of
//   a write already set) never acknowledges a write whose block the dirty map could miss.
// - FLUSH (and the sync of a FUA write), ZERO (WRITE_ZEROES, TRIM): rare, and they own the sticky
//   fdatasync failure and the journal; the thread waits for their answer, not for them.
// - END: the thread is over (its socket and file descriptors closed); JavaScript joins it.
//
// Descriptors: start() dup()s the socket and the file (close-on-exec), so JavaScript closes its own
// descriptors whenever it likes, and this thread closes exactly the two it made, once, at its end.
// stop() shuts the socket down (under the connection's lock, only while the thread still owns it, so a
// descriptor number reused by someone else is never touched) to end a thread blocked on its client.
//
// gate(ex, 1) waits for writes being copied into the file and holds new ones until gate(ex, 0): a
// snapshot (carryon replicate) reads the dirty blocks in between, a point in time.
//
// Untrusted input: every header field is checked as in src/nbd's checkRequest; a bad magic, a payload
// above the maximum or a socket error ends the connection, never the process.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define REQUEST_MAGIC 0x25609513u
#define REPLY_MAGIC 0x67446698u
#define MAX_PAYLOAD (32u * 1024 * 1024)
// Payloads kept while their marks are made durable, and requests waiting for JavaScript, per connection.
#define HELD_BUDGET (64u * 1024 * 1024)
#define MAX_JOBS 64
#define KIND_EXPORT 0x6e627865u
#define KIND_CONN 0x6e627863u

enum { CMD_READ = 0, CMD_WRITE = 1, CMD_DISC = 2, CMD_FLUSH = 3, CMD_TRIM = 4, CMD_CACHE = 5, CMD_WRITE_ZEROES = 6 };
enum { FLAG_FUA = 1, FLAG_NO_HOLE = 2, FLAG_DF = 4 };
enum { TF_READ_ONLY = 2, TF_SEND_FUA = 8, TF_SEND_DF = 128, TF_SEND_FAST_ZERO = 2048 };
enum { E_PERM = 1, E_IO = 5, E_NOMEM = 12, E_INVAL = 22, E_NOSPC = 28 };
// What JavaScript is asked to do (the first argument of the callback).
enum { JOB_MARK = 1, JOB_FLUSH = 2, JOB_ZERO = 3, JOB_TRIM = 4, JOB_END = 9 };

typedef struct export_s {
  uint32_t kind; // KIND_EXPORT: what unwrap checks before a handle is used as one
  uint64_t size;
  uint32_t block;
  uint64_t count;
  uint8_t *durable; // 1: this block's dirty mark is durable (set only after JavaScript said so)
  pthread_rwlock_t gate;
  int refs; // the JavaScript object and each connection
  pthread_mutex_t mu;
} export_t;

typedef struct job_s {
  struct job_s *next;
  uint32_t id;
  int kind;
  uint64_t off;
  uint32_t len;
  int fua;
  int err;
  int landed; // a MARKed write already in the file, waiting for its FUA sync
  uint8_t handle[8];
  uint8_t *payload;
} job_t;

typedef struct conn_s {
  uint32_t kind; // KIND_CONN
  export_t *ex;
  int sock, file, evfd;
  int tflags;
  int always_ask; // crash tests: every write asks JavaScript (where the crash point is)
  int use_sendfile; // reads: sendfile from the page cache into the socket (CARRYON_NBD_SENDFILE=0: pread + send)
  pthread_t th;
  int started, joined;
  pthread_mutex_t mu;
  job_t *waiting; // posted to JavaScript, not answered (guarded by mu)
  job_t *done;    // answered, not yet handled by the thread (guarded by mu)
  int outstanding; // jobs posted and not yet handled
  uint64_t held;   // payload bytes kept by jobs
  uint32_t next_id;
  int finished; // the thread closed its descriptors (guarded by mu)
  int stopping;
  uint8_t *rbuf;
  size_t rcap, rstart, rend;
  uint8_t *obuf;
  size_t ocap;
  uint8_t *wbuf; // payloads read (no splice) and dropped
  size_t wcap;
  int pipe[2]; // socket -> pipe -> file for writes (CARRYON_NBD_SPLICE=0: none, read + pwrite)
  uint64_t read_bytes, write_bytes, requests;
  napi_threadsafe_function tsfn;
} conn_t;

typedef struct {
  conn_t *c;
  int kind;
  uint32_t id;
  double off, len;
  int fua;
} call_t;

static void export_unref(export_t *ex) {
  pthread_mutex_lock(&ex->mu);
  int left = --ex->refs;
  pthread_mutex_unlock(&ex->mu);
  if (left > 0) return;
  pthread_rwlock_destroy(&ex->gate);
  pthread_mutex_destroy(&ex->mu);
  free(ex->durable);
  free(ex);
}

// ---- socket I/O (the descriptor is non-blocking: libuv made it so, and dup shares that) ----

static int wait_fd(int fd, short ev) {
  struct pollfd p = {fd, ev, 0};
  for (;;) {
    int r = poll(&p, 1, -1);
    if (r >= 0) return 0;
    if (errno != EINTR) return -1;
  }
}

static int send_all_flags(conn_t *c, struct iovec *iov, int n, int flags) {
  while (n > 0) {
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = n;
    ssize_t k = sendmsg(c->sock, &m, MSG_NOSIGNAL | flags);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (wait_fd(c->sock, POLLOUT) < 0) return -1;
        continue;
      }
      return -1;
    }
    while (n > 0 && (size_t)k >= iov->iov_len) {
      k -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (uint8_t *)iov->iov_base + k;
      iov->iov_len -= k;
    }
  }
  return 0;
}

static int send_all(conn_t *c, struct iovec *iov, int n) { return send_all_flags(c, iov, n, 0); }

static void put32(uint8_t *p, uint32_t v) {
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}
static uint32_t get32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }
static uint64_t get64(const uint8_t *p) { return ((uint64_t)get32(p) << 32) | get32(p + 4); }

static int reply(conn_t *c, const uint8_t handle[8], int err) {
  uint8_t h[16];
  put32(h, REPLY_MAGIC);
  put32(h + 4, (uint32_t)err);
  memcpy(h + 8, handle, 8);
  struct iovec v = {h, 16};
  return send_all(c, &v, 1);
}

// ---- file I/O ----

static int pread_all(int fd, uint8_t *buf, size_t len, uint64_t pos) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, buf + got, len - got, (off_t)(pos + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;
    got += (size_t)n;
  }
  if (got < len) memset(buf + got, 0, len - got); // past the file's end: zeros, as DiskIo reads them
  return 0;
}

static int pwrite_all(conn_t *c, const uint8_t *buf, size_t len, uint64_t pos) {
  int rc = 0;
  pthread_rwlock_rdlock(&c->ex->gate);
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(c->file, buf + done, len - done, (off_t)(pos + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      rc = errno == ENOSPC ? E_NOSPC : E_IO;
      break;
    }
    done += (size_t)n;
  }
  pthread_rwlock_unlock(&c->ex->gate);
  if (rc == 0) c->write_bytes += len;
  return rc;
}

// ---- jobs for JavaScript ----

static void call_js(napi_env env, napi_value cb, void *ctx, void *data) {
  (void)ctx;
  call_t *m = data;
  if (env && cb) {
    napi_value argv[5], undef;
    napi_create_int32(env, m->kind, &argv[0]);
    napi_create_uint32(env, m->id, &argv[1]);
    napi_create_double(env, m->off, &argv[2]);
    napi_create_double(env, m->len, &argv[3]);
    napi_get_boolean(env, m->fua != 0, &argv[4]);
    napi_get_undefined(env, &undef);
    napi_call_function(env, undef, cb, 5, argv, NULL);
  }
  free(m);
}

static int post(conn_t *c, int kind, uint32_t id, uint64_t off, uint64_t len, int fua) {
  call_t *m = malloc(sizeof *m);
  if (!m) return -1;
  m->c = c;
  m->kind = kind;
  m->id = id;
  m->off = (double)off;
  m->len = (double)len;
  m->fua = fua;
  if (napi_call_threadsafe_function(c->tsfn, m, napi_tsfn_blocking) != napi_ok) {
    free(m);
    return -1;
  }
  return 0;
}

static int ask(conn_t *c, job_t *j) {
  j->id = ++c->next_id;
  pthread_mutex_lock(&c->mu);
  j->next = c->waiting;
  c->waiting = j;
  c->outstanding++;
  c->held += j->payload ? j->len : 0;
  pthread_mutex_unlock(&c->mu);
  int kind = j->kind == JOB_MARK && j->landed ? JOB_FLUSH : j->kind;
  if (post(c, kind, j->id, j->off, j->len, j->fua) == 0) return 0;
  // Not posted (the process is ending): take it back and fail it.
  pthread_mutex_lock(&c->mu);
  for (job_t **p = &c->waiting; *p; p = &(*p)->next)
    if (*p == j) {
      *p = j->next;
      break;
    }
  c->outstanding--;
  c->held -= j->payload ? j->len : 0;
  pthread_mutex_unlock(&c->mu);
  return -1;
}

static void free_job(job_t *j) {
  free(j->payload);
  free(j);
}

static int blocks_durable(conn_t *c, uint64_t off, uint32_t len) {
  export_t *ex = c->ex;
  uint64_t a = off / ex->block, b = (off + len - 1) / ex->block;
  for (uint64_t i = a; i <= b; i++)
    if (!__atomic_load_n(&ex->durable[i], __ATOMIC_ACQUIRE)) return 0;
  return 1;
}

static void set_durable(conn_t *c, uint64_t off, uint32_t len) {
  export_t *ex = c->ex;
  uint64_t a = off / ex->block, b = (off + len - 1) / ex->block;
  for (uint64_t i = a; i <= b; i++) __atomic_store_n(&ex->durable[i], 1, __ATOMIC_RELEASE);
}

// An answered job: finish its request. Returns -1 when the socket failed.
static int handle_done(conn_t *c, job_t *j) {
  pthread_mutex_lock(&c->mu);
  c->outstanding--;
  c->held -= j->payload ? j->len : 0;
  pthread_mutex_unlock(&c->mu);
  int err = j->err;
  if (j->kind == JOB_MARK && !j->landed && err == 0) {
    set_durable(c, j->off, j->len);
    err = c->stopping ? 108 /* ESHUTDOWN */ : pwrite_all(c, j->payload, j->len, j->off);
    if (err == 0 && j->fua) {
      // Written; its sync goes to JavaScript (the sticky fdatasync failure lives there).
      free(j->payload);
      j->payload = NULL;
      j->landed = 1;
      j->err = 0;
      if (ask(c, j) == 0) return 0;
      err = E_IO;
    }
  }
  int rc = reply(c, j->handle, err);
  free_job(j);
  return rc;
}

static int drain_done(conn_t *c) {
  uint64_t v;
  while (read(c->evfd, &v, sizeof v) < 0 && errno == EINTR) {
  }
  pthread_mutex_lock(&c->mu);
  job_t *list = c->done;
  c->done = NULL;
  pthread_mutex_unlock(&c->mu);
  // Reverse: the list was built newest first.
  job_t *rev = NULL;
  while (list) {
    job_t *n = list->next;
    list->next = rev;
    rev = list;
    list = n;
  }
  int rc = 0;
  while (rev) {
    job_t *n = rev->next;
    if (rc == 0) rc = handle_done(c, rev);
    else {
      pthread_mutex_lock(&c->mu);
      c->outstanding--;
      c->held -= rev->payload ? rev->len : 0;
      pthread_mutex_unlock(&c->mu);
      free_job(rev);
    }
    rev = n;
  }
  return rc;
}

// ---- one request ----

// The errno for a request refused before doing anything, or 0 (src/nbd's checkRequest, same rules).
static int check_request(conn_t *c, int type, int flags, uint64_t off, uint32_t len) {
  int allowed = c->tflags & TF_SEND_FUA ? FLAG_FUA : 0;
  switch (type) {
    case CMD_READ:
      if (c->tflags & TF_SEND_DF) allowed |= FLAG_DF;
      break;
    case CMD_WRITE_ZEROES:
      allowed |= FLAG_NO_HOLE;
      if (c->tflags & TF_SEND_FAST_ZERO) allowed |= 16;
      break;
    case CMD_WRITE:
    case CMD_FLUSH:
    case CMD_TRIM:
    case CMD_CACHE:
      break;
    default:
      return E_INVAL;
  }
  if (flags & ~allowed) return E_INVAL;
  if (type == CMD_FLUSH) return off == 0 && len == 0 ? 0 : E_INVAL;
  if (type == CMD_READ && len > MAX_PAYLOAD) return E_INVAL;
  int writes = type == CMD_WRITE || type == CMD_WRITE_ZEROES || type == CMD_TRIM;
  if (writes && (c->tflags & TF_READ_ONLY)) return E_PERM;
  if (off > c->ex->size || len > c->ex->size - off) return type == CMD_WRITE || type == CMD_WRITE_ZEROES ? E_NOSPC : E_INVAL;
  return 0;
}

// A read answered with sendfile: the header, then the file's pages go into the socket without a copy
// through this process (on Linux 6.5+ a Unix socket takes page references: the client's read is the only
// copy). Once the header is out the data must follow: a sendfile failure falls back to pread for the rest,
// and a pread failure then ends the connection (the stream cannot be put back in step).
static int do_read_sendfile(conn_t *c, const uint8_t handle[8], uint64_t off, uint32_t len) {
  uint8_t h[16];
  put32(h, REPLY_MAGIC);
  put32(h + 4, 0);
  memcpy(h + 8, handle, 8);
  struct iovec v = {h, 16};
  if (send_all_flags(c, &v, 1, MSG_MORE) < 0) return -1;
  uint64_t pos = off;
  size_t left = len;
  while (left > 0) {
    off_t o = (off_t)pos;
    ssize_t n = sendfile(c->sock, c->file, &o, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (wait_fd(c->sock, POLLOUT) < 0) return -1;
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) return -1;
      c->use_sendfile = 0; // not for this file or socket: pread from now on
      break;
    }
    if (n == 0) break; // the file's end: zeros for the rest
    pos += (uint64_t)n;
    left -= (size_t)n;
  }
  while (left > 0) {
    size_t k = left < 1024 * 1024 ? left : 1024 * 1024;
    if (c->ocap < k) {
      free(c->obuf);
      c->obuf = malloc(k);
      c->ocap = c->obuf ? k : 0;
      if (!c->obuf) return -1;
    }
    if (pread_all(c->file, c->obuf, k, pos) < 0) return -1;
    struct iovec d = {c->obuf, k};
    if (send_all(c, &d, 1) < 0) return -1;
    pos += k;
    left -= k;
  }
  c->read_bytes += len;
  return 0;
}

static int do_read(conn_t *c, const uint8_t handle[8], uint64_t off, uint32_t len) {
  if (c->use_sendfile) return do_read_sendfile(c, handle, off, len);
  if (c->ocap < 16 + (size_t)len) {
    free(c->obuf);
    c->ocap = 16 + (size_t)len;
    c->obuf = malloc(c->ocap);
    if (!c->obuf) {
      c->ocap = 0;
      return reply(c, handle, E_NOMEM);
    }
  }
  if (pread_all(c->file, c->obuf + 16, len, off) < 0) return reply(c, handle, E_IO);
  put32(c->obuf, REPLY_MAGIC);
  put32(c->obuf + 4, 0);
  memcpy(c->obuf + 8, handle, 8);
  struct iovec v = {c->obuf, 16 + (size_t)len};
  c->read_bytes += len;
  return send_all(c, &v, 1);
}

static job_t *new_job(int kind, const uint8_t handle[8], uint64_t off, uint32_t len, int fua) {
  job_t *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->kind = kind;
  memcpy(j->handle, handle, 8);
  j->off = off;
  j->len = len;
  j->fua = fua;
  return j;
}

// ---- receiving: headers read exactly, payloads read or spliced ----

// Wait until the socket has something (or hung up), answering JavaScript's completions meanwhile.
static int wait_input(conn_t *c) {
  for (;;) {
    struct pollfd p[2] = {{c->sock, POLLIN, 0}, {c->evfd, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if ((p[1].revents & POLLIN) && drain_done(c) < 0) return -1;
    if (p[0].revents) return 0; // data, a hang-up or an error: the next read says which
  }
}

// Exactly n bytes: first what JavaScript had read past the handshake, then the socket.
static int recv_exact(conn_t *c, uint8_t *dst, size_t n) {
  size_t got = 0;
  if (c->rend > c->rstart) {
    size_t k = c->rend - c->rstart < n ? c->rend - c->rstart : n;
    memcpy(dst, c->rbuf + c->rstart, k);
    c->rstart += k;
    got = k;
  }
  while (got < n) {
    ssize_t k = read(c->sock, dst + got, n - got);
    if (k > 0) {
      got += (size_t)k;
      continue;
    }
    if (k == 0) return -1;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (wait_input(c) < 0) return -1;
      continue;
    }
    return -1;
  }
  return 0;
}

static uint8_t *scratch(conn_t *c, size_t n) {
  if (c->wcap < n) {
    free(c->wbuf);
    c->wbuf = malloc(n);
    c->wcap = c->wbuf ? n : 0;
  }
  return c->wbuf;
}

// Read and drop n payload bytes (a refused write: the stream stays in step).
static int skip_payload(conn_t *c, size_t n) {
  while (n > 0) {
    size_t k = n < 1024 * 1024 ? n : 1024 * 1024;
    uint8_t *b = scratch(c, k);
    if (!b || recv_exact(c, b, k) < 0) return -1;
    n -= k;
  }
  return 0;
}

// Move what the pipe holds into the file at pos (under the gate). Returns 0 or an NBD errno; on an
// error the pipe is emptied anyway (read and dropped) so it can be used again.
static int pipe_to_file(conn_t *c, size_t n, uint64_t pos) {
  int err = 0;
  pthread_rwlock_rdlock(&c->ex->gate);
  while (n > 0) {
    loff_t o = (loff_t)pos;
    ssize_t k = splice(c->pipe[0], NULL, c->file, &o, n, SPLICE_F_MOVE);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      err = k < 0 && errno == ENOSPC ? E_NOSPC : E_IO;
      break;
    }
    n -= (size_t)k;
    pos += (uint64_t)k;
    c->write_bytes += (uint64_t)k;
  }
  pthread_rwlock_unlock(&c->ex->gate);
  while (n > 0) { // drop the rest
    uint8_t *b = scratch(c, n < 65536 ? n : 65536);
    ssize_t k = b ? read(c->pipe[0], b, n < 65536 ? n : 65536) : -1;
    if (k <= 0) return -1; // cannot empty the pipe: end the connection
    n -= (size_t)k;
  }
  return err;
}

// A write whose blocks are known durably dirty: its payload goes from the socket into the file. With
// splice the kernel moves the socket's pages into a pipe and copies them once into the page cache (no
// pass through this process); without it, read then pwrite. Returns 0 or an errno to answer with, or
// -1 to end the connection. Parts may land before the whole payload arrived: an NBD write is not atomic.
static int recv_to_file(conn_t *c, uint64_t off, uint32_t len) {
  size_t left = len;
  uint64_t pos = off;
  int err = 0;
  if (c->rend > c->rstart) { // bytes JavaScript read past the handshake first
    size_t k = c->rend - c->rstart < left ? c->rend - c->rstart : left;
    err = c->stopping ? 108 : pwrite_all(c, c->rbuf + c->rstart, k, pos);
    c->rstart += k;
    left -= k;
    pos += k;
  }
  while (left > 0 && c->pipe[0] >= 0 && !err) {
    ssize_t k = splice(c->sock, NULL, c->pipe[1], NULL, left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (k == 0) return -1;
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // The pipe is empty here (each splice in is followed by moving it all out), so: no data yet.
        if (wait_input(c) < 0) return -1;
        continue;
      }
      if (errno == EINVAL || errno == ENOSYS) { // not for this socket: read and pwrite from now on
        close(c->pipe[0]);
        close(c->pipe[1]);
        c->pipe[0] = c->pipe[1] = -1;
        break;
      }
      return -1;
    }
    int e = c->stopping ? 108 : pipe_to_file(c, (size_t)k, pos);
    if (e < 0) return -1;
    err = e;
    left -= (size_t)k;
    pos += (uint64_t)k;
  }
  while (left > 0 && !err) {
    size_t k = left < 1024 * 1024 ? left : 1024 * 1024;
    uint8_t *b = scratch(c, k);
    if (!b) return -1;
    if (recv_exact(c, b, k) < 0) return -1;
    err = c->stopping ? 108 : pwrite_all(c, b, k, pos);
    left -= k;
    pos += k;
  }
  if (left > 0 && skip_payload(c, left) < 0) return -1;
  return err;
}

// One request: its header is read; a WRITE's payload is still in the socket. Returns -1 to end the
// connection, 1 for DISC.
static int handle_request(conn_t *c, const uint8_t *p) {
  int flags = (p[4] << 8) | p[5];
  int type = (p[6] << 8) | p[7];
  const uint8_t *handle = p + 8;
  uint64_t off = get64(p + 16);
  uint32_t len = get32(p + 24);
  c->requests++;
  if (type == CMD_DISC) return 1;
  if (type == CMD_WRITE && len > MAX_PAYLOAD) return -1; // src/nbd closes too: the spec allows it
  int fua = (flags & FLAG_FUA) != 0;
  int err = check_request(c, type, flags, off, len);
  if (err) {
    if (type == CMD_WRITE && skip_payload(c, len) < 0) return -1;
    return reply(c, handle, err);
  }
  switch (type) {
    case CMD_READ:
      if (len == 0) return reply(c, handle, 0);
      return do_read(c, handle, off, len);
    case CMD_WRITE: {
      if (len == 0) return reply(c, handle, 0);
      if (!c->always_ask && blocks_durable(c, off, len)) {
        err = recv_to_file(c, off, len);
        if (err < 0) return -1;
        if (err || !fua) return reply(c, handle, err);
        job_t *j = new_job(JOB_MARK, handle, off, len, fua);
        if (!j) return reply(c, handle, E_NOMEM);
        j->landed = 1;
        if (ask(c, j) < 0) {
          free_job(j);
          return reply(c, handle, E_IO);
        }
        return 0;
      }
      // Not known durably dirty: the payload is kept until JavaScript says the marks are durable.
      job_t *j = new_job(JOB_MARK, handle, off, len, fua);
      if (j) j->payload = malloc(len);
      if (!j || !j->payload) {
        if (j) free(j);
        if (skip_payload(c, len) < 0) return -1;
        return reply(c, handle, E_NOMEM);
      }
      if (recv_exact(c, j->payload, len) < 0) {
        free_job(j);
        return -1;
      }
      if (ask(c, j) < 0) {
        free_job(j);
        return reply(c, handle, E_IO);
      }
      return 0;
    }
    case CMD_FLUSH:
    case CMD_TRIM:
    case CMD_WRITE_ZEROES: {
      if (type != CMD_FLUSH && len == 0) return reply(c, handle, 0);
      job_t *j = new_job(type == CMD_FLUSH ? JOB_FLUSH : type == CMD_TRIM ? JOB_TRIM : JOB_ZERO, handle, off, len, fua);
      if (!j) return reply(c, handle, E_NOMEM);
      if (ask(c, j) < 0) {
        free_job(j);
        return reply(c, handle, E_IO);
      }
      return 0;
    }
    case CMD_CACHE: {
      // A hint; the disk is local: ask the kernel to read it ahead, answer at once.
      uint32_t n = len < MAX_PAYLOAD ? len : MAX_PAYLOAD;
      if (n > 0) posix_fadvise(c->file, (off_t)off, n, POSIX_FADV_WILLNEED);
      return reply(c, handle, 0);
    }
  }
  return reply(c, handle, E_INVAL);
}

static void *run(void *arg) {
  conn_t *c = arg;
  int r = 0;
  uint8_t h[28];
  for (;;) {
    // Too much waiting for JavaScript: take no new request until some of it is answered.
    while (c->outstanding >= MAX_JOBS || c->held >= HELD_BUDGET) {
      if (wait_fd(c->evfd, POLLIN) < 0 || drain_done(c) < 0) {
        r = -1;
        break;
      }
    }
    if (r < 0) break;
    if (recv_exact(c, h, 28) < 0 || get32(h) != REQUEST_MAGIC) {
      r = -1;
      break;
    }
    if ((r = handle_request(c, h)) != 0) break;
  }
  // Over (DISC, end of stream, an error or stop): answer what JavaScript still owes, then close.
  int sock_ok = r == 1;
  while (c->outstanding > 0) {
    wait_fd(c->evfd, POLLIN);
    if (drain_done(c) < 0) sock_ok = 0;
  }
  if (r == 1 && sock_ok) shutdown(c->sock, SHUT_WR); // DISC: everything answered; the client sees the end
  pthread_mutex_lock(&c->mu);
  close(c->sock);
  close(c->file);
  close(c->evfd);
  if (c->pipe[0] >= 0) {
    close(c->pipe[0]);
    close(c->pipe[1]);
  }
  c->sock = c->file = c->evfd = c->pipe[0] = c->pipe[1] = -1;
  c->finished = 1;
  pthread_mutex_unlock(&c->mu);
  free(c->rbuf);
  free(c->obuf);
  free(c->wbuf);
  c->rbuf = c->obuf = c->wbuf = NULL;
  post(c, JOB_END, 0, 0, 0, 0);
  napi_release_threadsafe_function(c->tsfn, napi_tsfn_release);
  return NULL;
}

// ---- JavaScript API ----

static napi_value throw_error(napi_env env, const char *msg) {
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static void export_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  export_unref(data);
}

// openExport(size, blockSize) -> export
static napi_value open_export(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int64_t size;
  uint32_t block;
  if (argc < 2 || napi_get_value_int64(env, argv[0], &size) != napi_ok || napi_get_value_uint32(env, argv[1], &block) != napi_ok || size < 0 || block == 0)
    return throw_error(env, "nbd-data: openExport(size, blockSize)");
  export_t *ex = calloc(1, sizeof *ex);
  if (!ex) return throw_error(env, "nbd-data: out of memory");
  ex->kind = KIND_EXPORT;
  ex->size = (uint64_t)size;
  ex->block = block;
  ex->count = ((uint64_t)size + block - 1) / block;
  ex->durable = calloc(ex->count ? ex->count : 1, 1);
  if (!ex->durable) {
    free(ex);
    return throw_error(env, "nbd-data: out of memory");
  }
  // Writer-preferring: a snapshot waiting at the gate is not starved by a stream of writes.
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&ex->gate, &ra);
  pthread_rwlockattr_destroy(&ra);
  pthread_mutex_init(&ex->mu, NULL);
  ex->refs = 1;
  napi_value out;
  napi_create_external(env, ex, export_finalize, NULL, &out);
  return out;
}

// Both handles are externals: each struct starts with its kind, so an export passed where a connection
// is expected (or the reverse) is refused instead of read as the other.
static void *unwrap(napi_env env, napi_value v, uint32_t kind) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p || *(uint32_t *)p != kind) return NULL;
  return p;
}

static void conn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  conn_t *c = data;
  // The thread holds a reference to its JavaScript callback until END, which JavaScript keeps this object for:
  // finalized before END only if start() failed (no thread).
  if (c->started && !c->joined) pthread_join(c->th, NULL);
  pthread_mutex_destroy(&c->mu);
  export_unref(c->ex);
  free(c);
}

// start(export, socketFd, fileFd, tflags, leftover: Buffer, alwaysAsk, callback) -> connection
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 7) return throw_error(env, "nbd-data: start(export, socketFd, fileFd, tflags, leftover, alwaysAsk, callback)");
  export_t *ex = unwrap(env, argv[0], KIND_EXPORT);
  int32_t sfd, ffd, tflags;
  bool always;
  void *left = NULL;
  size_t left_len = 0;
  bool isbuf = false;
  if (!ex || napi_get_value_int32(env, argv[1], &sfd) != napi_ok || napi_get_value_int32(env, argv[2], &ffd) != napi_ok || sfd < 0 || ffd < 0 ||
      napi_get_value_int32(env, argv[3], &tflags) != napi_ok || napi_is_buffer(env, argv[4], &isbuf) != napi_ok || !isbuf ||
      napi_get_buffer_info(env, argv[4], &left, &left_len) != napi_ok || napi_get_value_bool(env, argv[5], &always) != napi_ok)
    return throw_error(env, "nbd-data: bad arguments to start");
  conn_t *c = calloc(1, sizeof *c);
  if (!c) return throw_error(env, "nbd-data: out of memory");
  c->kind = KIND_CONN;
  c->sock = c->file = c->evfd = -1;
  c->pipe[0] = c->pipe[1] = -1;
  c->rcap = left_len > 0 ? left_len : 1;
  c->rbuf = malloc(c->rcap);
  c->sock = fcntl(sfd, F_DUPFD_CLOEXEC, 0);
  c->file = fcntl(ffd, F_DUPFD_CLOEXEC, 0);
  c->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (!c->rbuf || c->sock < 0 || c->file < 0 || c->evfd < 0) {
    if (c->sock >= 0) close(c->sock);
    if (c->file >= 0) close(c->file);
    if (c->evfd >= 0) close(c->evfd);
    free(c->rbuf);
    free(c);
    return throw_error(env, "nbd-data: cannot set up the connection (descriptors or memory)");
  }
  // Non-blocking whatever libuv left: this thread polls.
  fcntl(c->sock, F_SETFL, fcntl(c->sock, F_GETFL) | O_NONBLOCK);
  memcpy(c->rbuf, left, left_len);
  c->rend = left_len;
  c->tflags = tflags;
  c->always_ask = always;
  // A Unix socket's send buffer (default ~208 KB) is smaller than one 256 KiB read reply, so every reply
  // blocked until the client had read most of the one before: a larger one lets replies queue while the
  // client drains. The kernel caps it at net.core.wmem_max (and doubles it: 416 KiB on a stock kernel,
  // still room for a whole reply; measured 1.1-1.5x nbdkit there, 1.6-2.3x at 4 MiB). TCP keeps its autotuning (setting it turns
  // that off). CARRYON_NBD_SNDBUF: bytes, 0 = leave the default (benchmarks).
  struct sockaddr_storage sa;
  socklen_t salen = sizeof sa;
  if (getsockname(c->sock, (struct sockaddr *)&sa, &salen) == 0 && sa.ss_family == AF_UNIX) {
    const char *sb = getenv("CARRYON_NBD_SNDBUF");
    int want = sb ? atoi(sb) : 4 * 1024 * 1024;
    if (want > 0) setsockopt(c->sock, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
  }
  const char *sf = getenv("CARRYON_NBD_SENDFILE");
  c->use_sendfile = !(sf && strcmp(sf, "0") == 0);
  const char *sp = getenv("CARRYON_NBD_SPLICE");
  if (!(sp && strcmp(sp, "0") == 0) && pipe2(c->pipe, O_CLOEXEC | O_NONBLOCK) == 0)
    fcntl(c->pipe[1], F_SETPIPE_SZ, 1024 * 1024); // fewer splices per request; the default (64 KiB) if refused
  else
    c->pipe[0] = c->pipe[1] = -1;
  c->ex = ex;
  pthread_mutex_lock(&ex->mu);
  ex->refs++;
  pthread_mutex_unlock(&ex->mu);
  pthread_mutex_init(&c->mu, NULL);
  napi_value name;
  napi_create_string_utf8(env, "carryon-nbd-data", NAPI_AUTO_LENGTH, &name);
  napi_value out;
  if (napi_create_threadsafe_function(env, argv[6], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &c->tsfn) != napi_ok ||
      napi_create_external(env, c, conn_finalize, NULL, &out) != napi_ok) {
    close(c->sock);
    close(c->file);
    close(c->evfd);
    if (c->pipe[0] >= 0) {
      close(c->pipe[0]);
      close(c->pipe[1]);
    }
    free(c->rbuf);
    export_unref(ex);
    pthread_mutex_destroy(&c->mu);
    free(c);
    return throw_error(env, "nbd-data: cannot create the connection");
  }
  if (pthread_create(&c->th, NULL, run, c) != 0) {
    // The external owns c now: close what the thread would have closed; its finalizer frees the rest.
    close(c->sock);
    close(c->file);
    close(c->evfd);
    if (c->pipe[0] >= 0) {
      close(c->pipe[0]);
      close(c->pipe[1]);
    }
    c->sock = c->file = c->evfd = c->pipe[0] = c->pipe[1] = -1;
    c->finished = 1;
    free(c->rbuf);
    c->rbuf = NULL;
    napi_release_threadsafe_function(c->tsfn, napi_tsfn_abort);
    return throw_error(env, "nbd-data: cannot start a thread");
  }
  c->started = 1;
  return out;
}

// complete(connection, id, errno): JavaScript's answer to a job.
static napi_value complete(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc >= 3 ? unwrap(env, argv[0], KIND_CONN) : NULL;
  uint32_t id;
  int32_t err;
  if (!c || napi_get_value_uint32(env, argv[1], &id) != napi_ok || napi_get_value_int32(env, argv[2], &err) != napi_ok)
    return throw_error(env, "nbd-data: complete(connection, id, errno)");
  pthread_mutex_lock(&c->mu);
  job_t *j = NULL;
  if (!c->finished) {
    for (job_t **p = &c->waiting; *p; p = &(*p)->next)
      if ((*p)->id == id) {
        j = *p;
        *p = j->next;
        break;
      }
  }
  if (j) {
    j->err = err;
    j->next = c->done;
    c->done = j;
    uint64_t one = 1;
    while (write(c->evfd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
  pthread_mutex_unlock(&c->mu);
  return NULL; // an unknown id (answered twice) is ignored
}

// stop(connection): end it (the thread answers what JavaScript owes, then closes). Idempotent.
static napi_value stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc >= 1 ? unwrap(env, argv[0], KIND_CONN) : NULL;
  if (!c) return throw_error(env, "nbd-data: stop(connection)");
  pthread_mutex_lock(&c->mu);
  c->stopping = 1;
  if (!c->finished && c->sock >= 0) shutdown(c->sock, SHUT_RDWR);
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

// join(connection) -> [readBytes, writeBytes, requests]: after END only (the thread has returned or is returning).
static napi_value join(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  conn_t *c = argc >= 1 ? unwrap(env, argv[0], KIND_CONN) : NULL;
  if (!c) return throw_error(env, "nbd-data: join(connection)");
  if (c->started && !c->joined) {
    pthread_join(c->th, NULL);
    c->joined = 1;
  }
  napi_value out, v;
  napi_create_array_with_length(env, 3, &out);
  napi_create_double(env, (double)c->read_bytes, &v);
  napi_set_element(env, out, 0, v);
  napi_create_double(env, (double)c->write_bytes, &v);
  napi_set_element(env, out, 1, v);
  napi_create_double(env, (double)c->requests, &v);
  napi_set_element(env, out, 2, v);
  return out;
}

// gate(export, closed): closed = true waits for writes being copied into the file and holds new ones.
static napi_value gate(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  export_t *ex = argc >= 2 ? unwrap(env, argv[0], KIND_EXPORT) : NULL;
  bool closed;
  if (!ex || napi_get_value_bool(env, argv[1], &closed) != napi_ok) return throw_error(env, "nbd-data: gate(export, closed)");
  if (closed) pthread_rwlock_wrlock(&ex->gate);
  else pthread_rwlock_unlock(&ex->gate);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"openExport", NULL, open_export, NULL, NULL, NULL, napi_default, NULL},
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"complete", NULL, complete, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, stop, NULL, NULL, NULL, napi_default, NULL},
      {"join", NULL, join, NULL, NULL, NULL, napi_default, NULL},
      {"gate", NULL, gate, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
