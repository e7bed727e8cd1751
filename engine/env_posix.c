/*
 * env_posix.c — the kv_env of the real file system (see env.h).
 *
 * Invariants
 *  - One process-wide, immutable kv_env: it holds no state, so it needs no lock and is never destroyed.
 *  - A kv_file owns exactly one file descriptor, opened with O_CLOEXEC so a fork+exec never inherits store files.
 *    Files opened for writing use O_APPEND: every append lands at the current end of the file, even after a
 *    truncate through another name or handle (the record log relies on this to cut a partial record off and go on).
 *    The one exception is open_overwrite, whose files are written by offset (pwrite ignores the offset under
 *    O_APPEND); their writer keeps its own end and cuts back to it itself.
 *  - Every failure sets the thread's message naming the operation and the path (kv_set_errno) before returning.
 *  - read_at and append retry EINTR and partial transfers, so a short result means end of file (read) or an error.
 *  - Locks are open-file-description locks (F_OFD_SETLK): they conflict with a second lock of the same file even from
 *    the same process, unlike classic POSIX record locks, and they are released when the lock's descriptor is closed.
 */
#include "env.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h> /* rename */
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "error.h"
#include "kv.h"

struct kv_file {
    int fd;
    char path[]; /* for error messages */
};

/* Largest single read/write request: Linux transfers at most about 2 GiB per call anyway. */
#define IO_CHUNK ((size_t)1 << 30)

static int open_file(const char *path, int flags, kv_file **out) {
    *out = NULL;
    size_t n = strlen(path);
    kv_file *f = malloc(sizeof *f + n + 1);
    if (!f) return kv_set_error(KV_ENOMEM, "open %s: out of memory", path);
    memcpy(f->path, path, n + 1);
    int fd;
    do {
        fd = open(path, flags | O_CLOEXEC, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int e = errno;
        free(f);
        return kv_set_errno(e, "open", path);
    }
    f->fd = fd;
    *out = f;
    return KV_OK;
}

static int px_open_read(kv_env *env, const char *path, kv_file **out) {
    (void)env;
    return open_file(path, O_RDONLY, out);
}

/* Writable files are also readable, so a builder may read back what it wrote. */
static int px_open_write(kv_env *env, const char *path, kv_file **out) {
    (void)env;
    return open_file(path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND, out);
}

static int px_open_append(kv_env *env, const char *path, kv_file **out) {
    (void)env;
    return open_file(path, O_RDWR | O_CREAT | O_APPEND, out);
}

static int px_read_at(kv_env *env, kv_file *f, uint64_t off, void *buf, size_t len, size_t *nread) {
    (void)env;
    size_t done = 0;
    *nread = 0;
    while (done < len) {
        size_t want = len - done < IO_CHUNK ? len - done : IO_CHUNK;
        if (off + done > (uint64_t)INT64_MAX) break; /* beyond any possible end of file */
        ssize_t r = pread(f->fd, (char *)buf + done, want, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return kv_set_errno(errno, "read", f->path);
        }
        if (r == 0) break; /* end of file */
        done += (size_t)r;
    }
    *nread = done;
    return KV_OK;
}

/* Write all len bytes: at the end of the file (at_end, O_APPEND) or at off; resumed after EINTR and partial writes. */
static int write_all(kv_file *f, bool at_end, uint64_t off, const void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        size_t want = len - done < IO_CHUNK ? len - done : IO_CHUNK;
        if (!at_end && off + done > (uint64_t)INT64_MAX - want) return kv_set_errno(EFBIG, "write", f->path);
        ssize_t r = at_end ? write(f->fd, (const char *)buf + done, want)
                           : pwrite(f->fd, (const char *)buf + done, want, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return kv_set_errno(errno, "write", f->path);
        }
        /* write() returning 0 for a non-zero request would loop forever; treat it as a full disk. */
        if (r == 0) return kv_set_errno(ENOSPC, "write", f->path);
        done += (size_t)r;
    }
    return KV_OK;
}

static int px_append(kv_env *env, kv_file *f, const void *buf, size_t len) {
    (void)env;
    return write_all(f, true, 0, buf, len);
}

/* A file written by offset: no O_APPEND, which would make Linux's pwrite ignore the offset. */
static int px_open_overwrite(kv_env *env, const char *path, kv_file **out) {
    (void)env;
    return open_file(path, O_RDWR | O_CREAT | O_TRUNC, out);
}

static int px_write_at(kv_env *env, kv_file *f, uint64_t off, const void *buf, size_t len) {
    (void)env;
    return write_all(f, false, off, buf, len);
}

/* fallocate reserves the blocks (reading as zeros); a file system without it gets a plain size change instead. */
static int px_allocate(kv_env *env, kv_file *f, uint64_t size) {
    (void)env;
    if (size > (uint64_t)INT64_MAX) return kv_set_error(KV_EINVAL, "allocate %s: size too large", f->path);
    int r;
    do {
        r = fallocate(f->fd, 0, 0, (off_t)size);
    } while (r != 0 && errno == EINTR);
    if (r == 0) return KV_OK;
    if (errno != EOPNOTSUPP && errno != ENOSYS) return kv_set_errno(errno, "fallocate", f->path);
    struct stat st;
    if (fstat(f->fd, &st) != 0) return kv_set_errno(errno, "fstat", f->path);
    if ((uint64_t)st.st_size >= size) return KV_OK;
    do {
        r = ftruncate(f->fd, (off_t)size);
    } while (r != 0 && errno == EINTR);
    return r == 0 ? KV_OK : kv_set_errno(errno, "ftruncate", f->path);
}

/* writev, resumed after EINTR and partial transfers (a partial one may end inside any piece). */
static int px_appendv(kv_env *env, kv_file *f, const struct iovec *iov, int n) {
    (void)env;
    struct iovec v[64];
    while (n > 0) {
        int m = n < 64 ? n : 64;
        memcpy(v, iov, (size_t)m * sizeof *v);
        int at = 0;
        for (;;) {
            while (at < m && v[at].iov_len == 0) at++; /* writev of nothing returns 0, which means a full disk */
            if (at == m) break;
            ssize_t r = writev(f->fd, v + at, m - at);
            if (r < 0) {
                if (errno == EINTR) continue;
                return kv_set_errno(errno, "write", f->path);
            }
            if (r == 0) return kv_set_errno(ENOSPC, "write", f->path);
            size_t left = (size_t)r;
            while (at < m && left >= v[at].iov_len) left -= v[at++].iov_len;
            if (at < m) {
                v[at].iov_base = (char *)v[at].iov_base + left;
                v[at].iov_len -= left;
            }
        }
        iov += m;
        n -= m;
    }
    return KV_OK;
}

int kv_env_appendv(kv_env *env, kv_file *f, const struct iovec *iov, int n) {
    if (env->appendv) return env->appendv(env, f, iov, n);
    for (int i = 0; i < n; i++) {
        int rc = env->append(env, f, iov[i].iov_base, iov[i].iov_len);
        if (rc) return rc;
    }
    return KV_OK;
}

static int px_sync(kv_env *env, kv_file *f) {
    (void)env;
    int r;
    do {
        r = fdatasync(f->fd);
    } while (r != 0 && errno == EINTR);
    return r == 0 ? KV_OK : kv_set_errno(errno, "fdatasync", f->path);
}

static int px_size(kv_env *env, kv_file *f, uint64_t *size) {
    (void)env;
    struct stat st;
    if (fstat(f->fd, &st) != 0) return kv_set_errno(errno, "fstat", f->path);
    *size = (uint64_t)st.st_size;
    return KV_OK;
}

static int px_close(kv_env *env, kv_file *f) {
    (void)env;
    if (!f) return KV_OK;
    /* Never retry close() on EINTR: on Linux the descriptor is already gone and could have been reused. */
    int rc = KV_OK;
    if (close(f->fd) != 0 && errno != EINTR) rc = kv_set_errno(errno, "close", f->path);
    free(f);
    return rc;
}

static int px_file_size(kv_env *env, const char *path, uint64_t *size) {
    (void)env;
    struct stat st;
    if (stat(path, &st) != 0) return kv_set_errno(errno, "stat", path);
    *size = (uint64_t)st.st_size;
    return KV_OK;
}

static int px_exists(kv_env *env, const char *path) {
    (void)env;
    struct stat st;
    if (stat(path, &st) == 0) return 1;
    if (errno == ENOENT || errno == ENOTDIR) return 0;
    return kv_set_errno(errno, "stat", path);
}

static int px_remove(kv_env *env, const char *path) {
    (void)env;
    return unlink(path) == 0 ? KV_OK : kv_set_errno(errno, "unlink", path);
}

static int px_rename(kv_env *env, const char *from, const char *to) {
    (void)env;
    if (rename(from, to) == 0) return KV_OK;
    int e = errno;
    int code = kv_set_errno(e, "rename", from);
    return kv_set_error(code, "rename %s to %s: %s", from, to, strerror(e));
}

static int px_link(kv_env *env, const char *from, const char *to) {
    (void)env;
    if (link(from, to) == 0) return KV_OK;
    int e = errno;
    int code = kv_set_errno(e, "link", from);
    return kv_set_error(code, "link %s to %s: %s", from, to, strerror(e));
}

static int px_truncate(kv_env *env, const char *path, uint64_t size) {
    (void)env;
    if (size > (uint64_t)INT64_MAX) return kv_set_error(KV_EINVAL, "truncate %s: size too large", path);
    int r;
    do {
        r = truncate(path, (off_t)size);
    } while (r != 0 && errno == EINTR);
    return r == 0 ? KV_OK : kv_set_errno(errno, "truncate", path);
}

static int px_mkdir(kv_env *env, const char *path, int mode) {
    (void)env;
    if (mkdir(path, (mode_t)mode) == 0) return KV_OK;
    int e = errno;
    if (e == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return KV_OK;
        return kv_set_error(KV_EIO, "mkdir %s: exists and is not a directory", path);
    }
    return kv_set_errno(e, "mkdir", path);
}

static int px_rmdir(kv_env *env, const char *path) {
    (void)env;
    return rmdir(path) == 0 ? KV_OK : kv_set_errno(errno, "rmdir", path);
}

void kv_env_free_names(char **names, size_t n) {
    if (!names) return;
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int px_list_dir(kv_env *env, const char *path, char ***names, size_t *n) {
    (void)env;
    *names = NULL;
    *n = 0;
    DIR *d = opendir(path);
    if (!d) return kv_set_errno(errno, "opendir", path);
    char **v = NULL;
    size_t len = 0, cap = 0;
    int rc = KV_OK;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno != 0) rc = kv_set_errno(errno, "readdir", path);
            break;
        }
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nv = realloc(v, ncap * sizeof *nv);
            if (!nv) { rc = kv_set_error(KV_ENOMEM, "list %s: out of memory", path); break; }
            v = nv;
            cap = ncap;
        }
        v[len] = strdup(de->d_name);
        if (!v[len]) { rc = kv_set_error(KV_ENOMEM, "list %s: out of memory", path); break; }
        len++;
    }
    closedir(d);
    if (rc != KV_OK) {
        kv_env_free_names(v, len);
        return rc;
    }
    *names = v;
    *n = len;
    return KV_OK;
}

static int px_sync_dir(kv_env *env, const char *path) {
    (void)env;
    int fd;
    do {
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return kv_set_errno(errno, "open directory", path);
    int r;
    do {
        r = fsync(fd);
    } while (r != 0 && errno == EINTR);
    int e = errno;
    close(fd);
    return r == 0 ? KV_OK : kv_set_errno(e, "fsync directory", path);
}

static int px_lock(kv_env *env, const char *path, kv_file **lock) {
    (void)env;
    kv_file *f;
    int rc = open_file(path, O_RDWR | O_CREAT, &f);
    if (rc != KV_OK) return rc;
#ifdef F_OFD_SETLK
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET; /* start 0, length 0: the whole file */
    int r = fcntl(f->fd, F_OFD_SETLK, &fl);
    bool busy = r != 0 && (errno == EAGAIN || errno == EACCES);
#else
    /* flock() locks also belong to the open file description, so they conflict within one process too. */
    int r = flock(f->fd, LOCK_EX | LOCK_NB);
    bool busy = r != 0 && errno == EWOULDBLOCK;
#endif
    if (r != 0) {
        int e = errno;
        close(f->fd);
        free(f);
        if (busy) return kv_set_error(KV_EBUSY, "lock %s: already locked by another holder", path);
        return kv_set_errno(e, "lock", path);
    }
    *lock = f;
    return KV_OK;
}

/* Closing the descriptor releases the lock; the lock file itself stays (removing it would race with a new holder). */
static int px_unlock(kv_env *env, kv_file *lock) {
    return px_close(env, lock);
}

static void px_destroy(kv_env *env) { (void)env; }

static kv_env posix_env = {
    .open_read = px_open_read,
    .open_write = px_open_write,
    .open_append = px_open_append,
    .read_at = px_read_at,
    .append = px_append,
    .appendv = px_appendv,
    .open_overwrite = px_open_overwrite,
    .write_at = px_write_at,
    .allocate = px_allocate,
    .sync = px_sync,
    .size = px_size,
    .close = px_close,
    .file_size = px_file_size,
    .exists = px_exists,
    .remove = px_remove,
    .rename = px_rename,
    .link = px_link,
    .truncate = px_truncate,
    .mkdir = px_mkdir,
    .rmdir = px_rmdir,
    .list_dir = px_list_dir,
    .sync_dir = px_sync_dir,
    .lock = px_lock,
    .unlock = px_unlock,
    .destroy = px_destroy,
};

kv_env *kv_env_posix(void) { return &posix_env; }
