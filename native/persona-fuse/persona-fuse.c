/*
 * carryon-persona-fuse: the streamed persona's FUSE view (client/persona-stream.ts starts it).
 *
 *   carryon-persona-fuse BACKING MOUNTPOINT
 *
 * Owns: a passthrough file system over BACKING (the persona's real profile folder), mounted at
 * MOUNTPOINT with libfuse3. Reads and writes go straight to BACKING's files (pread/pwrite here, no
 * round trip to Node). Before a file is opened, truncated, chmod-ed, timed or renamed, the helper asks
 * its parent process to make it whole ("hydrate" it: the placeholder of a file never fetched becomes
 * its real content), and waits for the answer. Must not know: chunks, the server, snapshots.
 *
 * Protocol (one line each way, paths hex-encoded so any byte is safe):
 *   helper -> parent on stdout:  "<id> O <hexpath>"  make this file whole before it is used
 *                                "<id> D <hexpath>"  make every file under this folder whole (a rename)
 *                                "<id> G <hexpath>"  this name is being removed or created
 *                                "<id> R <hexpath>"  this file's content is about to be replaced whole
 *                                                    (a rename over it, an open with O_TRUNC, a truncate
 *                                                    to 0): no need to fetch it, even offline
 *                                "0 READY"           mounted
 *   parent -> helper on stdin:   "<id> <errno>"      0 = go ahead; else the operation fails with it
 * When stdin closes (the parent died) the helper exits at once; mounted with auto_unmount, fusermount3
 * then takes the mount down, so a crash never leaves a dead mount behind.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <fuse3/fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static int root_fd = -1;

/* ---- asking the parent ---- */

struct pending {
  unsigned long id;
  int done;
  int err;
  struct pending *next;
};

static pthread_mutex_t ask_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ask_cond = PTHREAD_COND_INITIALIZER;
static struct pending *waiting = NULL;
static unsigned long next_id = 1;
static int parent_gone = 0;

/* Paths the parent already answered 0 for with O: whole files, no need to ask again. */
#define READY_BUCKETS 65536
struct ready { char *path; struct ready *next; };
static struct ready *ready_set[READY_BUCKETS];

static unsigned hash_path(const char *p) {
  unsigned h = 2166136261u;
  for (; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  return h % READY_BUCKETS;
}

static int is_ready(const char *p) {
  for (struct ready *r = ready_set[hash_path(p)]; r; r = r->next)
    if (strcmp(r->path, p) == 0) return 1;
  return 0;
}

static void mark_ready(const char *p) {
  if (is_ready(p)) return;
  struct ready *r = malloc(sizeof *r);
  if (!r) return;
  r->path = strdup(p);
  if (!r->path) { free(r); return; }
  unsigned h = hash_path(p);
  r->next = ready_set[h];
  ready_set[h] = r;
}

static void forget_ready(const char *p) {
  struct ready **pp = &ready_set[hash_path(p)];
  for (; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->path, p) == 0) {
      struct ready *r = *pp;
      *pp = r->next;
      free(r->path);
      free(r);
      return;
    }
  }
}

/* Forget every ready path under a folder (it is being renamed away). */
static void forget_under(const char *dir) {
  size_t n = strlen(dir);
  for (unsigned b = 0; b < READY_BUCKETS; b++) {
    struct ready **pp = &ready_set[b];
    while (*pp) {
      const char *q = (*pp)->path;
      if (strncmp(q, dir, n) == 0 && q[n] == '/') {
        struct ready *r = *pp;
        *pp = r->next;
        free(r->path);
        free(r);
      } else {
        pp = &(*pp)->next;
      }
    }
  }
}

/* Relative path for openat: "/a/b" -> "a/b", "/" -> "." */
static const char *rel(const char *path) {
  while (*path == '/') path++;
  return *path ? path : ".";
}

/* Ask the parent; 0 or a positive errno. */
static int ask(char op, const char *path) {
  const char *r = rel(path);
  pthread_mutex_lock(&ask_lock);
  if (op == 'O' && is_ready(r)) { pthread_mutex_unlock(&ask_lock); return 0; }
  if (parent_gone) { pthread_mutex_unlock(&ask_lock); return EIO; }
  struct pending me = { next_id++, 0, 0, waiting };
  waiting = &me;
  size_t len = strlen(r);
  char *line = malloc(len * 2 + 40);
  if (!line) { waiting = me.next; pthread_mutex_unlock(&ask_lock); return ENOMEM; }
  int k = sprintf(line, "%lu %c ", me.id, op);
  for (size_t i = 0; i < len; i++) k += sprintf(line + k, "%02x", (unsigned char)r[i]);
  line[k++] = '\n';
  /* Written under the lock: lines from two threads never interleave. */
  ssize_t off = 0;
  while (off < k) {
    ssize_t w = write(STDOUT_FILENO, line + off, k - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) { parent_gone = 1; break; }
    off += w;
  }
  free(line);
  while (!me.done && !parent_gone) pthread_cond_wait(&ask_cond, &ask_lock);
  int err = me.done ? me.err : EIO;
  for (struct pending **pp = &waiting; *pp; pp = &(*pp)->next)
    if (*pp == &me) { *pp = me.next; break; }
  if (err == 0 && op == 'O') mark_ready(r);
  if (op == 'G' || op == 'R') forget_ready(r);
  if (op == 'D') forget_under(r);
  pthread_mutex_unlock(&ask_lock);
  return err;
}

/* Reads the parent's answers; when they stop (the parent died), exits: auto_unmount cleans up. */
static void *answers(void *arg) {
  (void)arg;
  FILE *in = stdin;
  char buf[128];
  while (fgets(buf, sizeof buf, in)) {
    unsigned long id;
    int err;
    if (sscanf(buf, "%lu %d", &id, &err) != 2) continue;
    pthread_mutex_lock(&ask_lock);
    for (struct pending *p = waiting; p; p = p->next)
      if (p->id == id) { p->done = 1; p->err = err < 0 ? EIO : err; }
    pthread_cond_broadcast(&ask_cond);
    pthread_mutex_unlock(&ask_lock);
  }
  fprintf(stderr, "carryon-persona-fuse: the carryon process is gone; unmounting\n");
  _exit(3);
  return NULL;
}

/* Is this path a regular file in the backing folder? */
static int is_file(const char *path) {
  struct stat st;
  return fstatat(root_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* ---- the passthrough operations ---- */

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
  (void)conn;
  cfg->use_ino = 0;
  cfg->kernel_cache = 0;
  return NULL;
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  int r = fi ? fstat(fi->fh, st) : fstatat(root_fd, rel(path), st, AT_SYMLINK_NOFOLLOW);
  return r < 0 ? -errno : 0;
}

static int op_readlink(const char *path, char *buf, size_t size) {
  ssize_t n = readlinkat(root_fd, rel(path), buf, size - 1);
  if (n < 0) return -errno;
  buf[n] = 0;
  return 0;
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
  (void)off; (void)fi; (void)flags;
  int fd = openat(root_fd, rel(path), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return -errno;
  DIR *d = fdopendir(fd);
  if (!d) { int e = errno; close(fd); return -e; }
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    /* carryon's own temporary files (a file being made whole) are not the user's. */
    if (strncmp(de->d_name, ".carryon-tmp-", 13) == 0) continue;
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = de->d_ino;
    st.st_mode = (mode_t)de->d_type << 12;
    if (fill(buf, de->d_name, &st, 0, 0)) break;
  }
  closedir(d);
  return 0;
}

static int op_mkdir(const char *path, mode_t mode) {
  int e = ask('G', path);
  if (e) return -e;
  return mkdirat(root_fd, rel(path), mode) < 0 ? -errno : 0;
}

static int op_unlink(const char *path) {
  int e = ask('G', path);
  if (e) return -e;
  return unlinkat(root_fd, rel(path), 0) < 0 ? -errno : 0;
}

static int op_rmdir(const char *path) {
  return unlinkat(root_fd, rel(path), AT_REMOVEDIR) < 0 ? -errno : 0;
}

static int op_symlink(const char *target, const char *path) {
  int e = ask('G', path);
  if (e) return -e;
  return symlinkat(target, root_fd, rel(path)) < 0 ? -errno : 0;
}

static int op_rename(const char *from, const char *to, unsigned int flags) {
  struct stat st;
  if (fstatat(root_fd, rel(from), &st, AT_SYMLINK_NOFOLLOW) < 0) return -errno;
  /* A placeholder must become whole before it moves: under another name it is no longer known as one. */
  int e = S_ISDIR(st.st_mode) ? ask('D', from) : S_ISREG(st.st_mode) ? ask('O', from) : 0;
  if (e) return -e;
  if (flags & RENAME_EXCHANGE) {
    struct stat st2;
    if (fstatat(root_fd, rel(to), &st2, AT_SYMLINK_NOFOLLOW) == 0) {
      e = S_ISDIR(st2.st_mode) ? ask('D', to) : S_ISREG(st2.st_mode) ? ask('O', to) : 0;
      if (e) return -e;
    }
  } else {
    e = ask('R', to);
    if (e) return -e;
  }
  if (syscall(SYS_renameat2, root_fd, rel(from), root_fd, rel(to), flags) < 0) return -errno;
  pthread_mutex_lock(&ask_lock);
  forget_ready(rel(from));
  if (S_ISDIR(st.st_mode)) forget_under(rel(from));
  pthread_mutex_unlock(&ask_lock);
  return 0;
}

static int op_link(const char *from, const char *to) {
  (void)from; (void)to;
  return -EPERM; /* a persona holds no hard links */
}

static int op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
  if (fi) return fchmod(fi->fh, mode) < 0 ? -errno : 0;
  if (is_file(path)) { int e = ask('O', path); if (e) return -e; }
  return fchmodat(root_fd, rel(path), mode, 0) < 0 ? -errno : 0;
}

static int op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
  if (fi) return fchown(fi->fh, uid, gid) < 0 ? -errno : 0;
  return fchownat(root_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

static int op_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
  if (fi) return ftruncate(fi->fh, size) < 0 ? -errno : 0;
  int e = ask(size == 0 ? 'R' : 'O', path);
  if (e) return -e;
  int fd = openat(root_fd, rel(path), O_WRONLY | O_NOFOLLOW);
  if (fd < 0) return -errno;
  int r = ftruncate(fd, size) < 0 ? -errno : 0;
  close(fd);
  return r;
}

static int op_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
  if (fi) return futimens(fi->fh, tv) < 0 ? -errno : 0;
  if (is_file(path)) { int e = ask('O', path); if (e) return -e; }
  return utimensat(root_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

static int op_open(const char *path, struct fuse_file_info *fi) {
  /* O_TRUNC discards the content: a save over a file never fetched works offline too. */
  int e = ask((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY ? 'R' : 'O', path);
  if (e) return -e;
  int fd = openat(root_fd, rel(path), fi->flags & ~O_NOFOLLOW);
  if (fd < 0) return -errno;
  fi->fh = fd;
  return 0;
}

static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
  struct stat st;
  int e = fstatat(root_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) != 0 ? ask('G', path)
        : ask((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY ? 'R' : 'O', path);
  if (e) return -e;
  int fd = openat(root_fd, rel(path), fi->flags | O_CREAT, mode);
  if (fd < 0) return -errno;
  fi->fh = fd;
  pthread_mutex_lock(&ask_lock);
  mark_ready(rel(path));
  pthread_mutex_unlock(&ask_lock);
  return 0;
}

static int op_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)path;
  ssize_t n = pread(fi->fh, buf, size, off);
  return n < 0 ? -errno : (int)n;
}

static int op_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)path;
  ssize_t n = pwrite(fi->fh, buf, size, off);
  return n < 0 ? -errno : (int)n;
}

static int op_statfs(const char *path, struct statvfs *sv) {
  (void)path;
  return fstatvfs(root_fd, sv) < 0 ? -errno : 0;
}

static int op_release(const char *path, struct fuse_file_info *fi) {
  (void)path;
  close(fi->fh);
  return 0;
}

static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  (void)path;
  int r = datasync ? fdatasync(fi->fh) : fsync(fi->fh);
  return r < 0 ? -errno : 0;
}

static const struct fuse_operations ops = {
  .init = op_init,
  .getattr = op_getattr,
  .readlink = op_readlink,
  .readdir = op_readdir,
  .mkdir = op_mkdir,
  .unlink = op_unlink,
  .rmdir = op_rmdir,
  .symlink = op_symlink,
  .rename = op_rename,
  .link = op_link,
  .chmod = op_chmod,
  .chown = op_chown,
  .truncate = op_truncate,
  .utimens = op_utimens,
  .open = op_open,
  .create = op_create,
  .read = op_read,
  .write = op_write,
  .statfs = op_statfs,
  .release = op_release,
  .fsync = op_fsync,
};

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: carryon-persona-fuse BACKING MOUNTPOINT (started by carryon)\n");
    return 2;
  }
  root_fd = open(argv[1], O_RDONLY | O_DIRECTORY);
  if (root_fd < 0) {
    fprintf(stderr, "carryon-persona-fuse: %s: %s\n", argv[1], strerror(errno));
    return 2;
  }
  /* default_permissions: the kernel checks modes as for any folder; auto_unmount: a crash unmounts. */
  char *fargv[] = { argv[0], "-o", "default_permissions,auto_unmount,fsname=carryon-persona,subtype=carryon", NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  struct fuse *f = fuse_new(&args, &ops, sizeof ops, NULL);
  if (!f) return 2;
  if (fuse_mount(f, argv[2]) != 0) {
    fprintf(stderr, "carryon-persona-fuse: cannot mount at %s\n", argv[2]);
    fuse_destroy(f);
    return 2;
  }
  pthread_t t;
  pthread_create(&t, NULL, answers, NULL);
  /* READY goes out under the lock like every other line. */
  pthread_mutex_lock(&ask_lock);
  if (write(STDOUT_FILENO, "0 READY\n", 8) != 8) parent_gone = 1;
  pthread_mutex_unlock(&ask_lock);
  int r = fuse_loop_mt(f, 0);
  fuse_unmount(f);
  fuse_destroy(f);
  return r == 0 ? 0 : 1;
}
