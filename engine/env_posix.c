/*
 * env_posix.c — the kv_env of the real file system (see env.h).
 *
 * Invariants
 *  - One process-wide kv_env: its only state is two counters (truncations, mapped bytes), so it needs no lock and is
 *    never destroyed.
 *  - A kv_file owns exactly one file descriptor, opened with O_CLOEXEC so a fork+exec never inherits store files.
 *    Files opened for writing use O_APPEND: every append lands at the current end of the file, even after a
 *    truncate through another name or handle (the record log relies on this to cut a partial record off and go on).
 *    The one exception is open_overwrite, whose files are written by offset (pwrite ignores the offset under
 *    O_APPEND); their writer keeps its own end and cuts back to it itself.
 *  - Every failure sets the thread's message naming the operation and the path (kv_set_errno) before returning.
 *  - read_at and append retry EINTR and partial transfers, so a short result means end of file (read) or an error.
 *  - A write by offset into space that fallocate reserved is a copy into a shared mapping (px_write_at), in ascending
 *    order of address as a write lands (copy_ascending). A file mapped past its end raises SIGBUS where a write would
 *    have extended it, so a mapping is only written below the reserved size, which every truncation through this
 *    environment makes each open file check again. A SIGBUS inside the copy anyway (I/O error, file system shut
 *    down, a cut by someone else) jumps back out of it (copy_into_mapping): that file is written by pwrite from then.
 *  - Locks are open-file-description locks (F_OFD_SETLK): they conflict with a second lock of the same file even from
 *    the same process, unlike classic POSIX record locks, and they are released when the lock's descriptor is closed.
 *    Each covers one byte of LOCK: byte 0 the store (lock, lock_shared), byte 1 a waiting writer's intent.
 */
#include "env.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h> /* rename */
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>

#include "error.h"
#include "kv.h"

struct kv_file {
    int fd;
    bool mappable;        /* open_overwrite on a file system whose fallocate keeps mapped stores from failing */
    uint64_t reserved;    /* bytes [0, reserved) are in the file and have disk space that fallocate reserved */
    uint64_t truncations; /* the count below when reserved was last known to hold */
    char *map;            /* a shared mapping of the MAP_WINDOW bytes at map_off, or NULL */
    uint64_t map_off;
    char path[];          /* for error messages */
};

#define MAP_WINDOW ((uint64_t)1 << 20)

/* Truncations through this environment, of any file: one may have cut a file below what an open handle of it knows
 * as reserved, so each handle checks the file's size again when this has moved. */
static _Atomic uint64_t truncations;

/* Bytes written through mappings (kv_env_posix_mapped_bytes). */
static _Atomic uint64_t mapped_bytes;

uint64_t kv_env_posix_mapped_bytes(void) { return atomic_load_explicit(&mapped_bytes, memory_order_relaxed); }

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
    f->mappable = false;
    f->reserved = 0;
    f->truncations = 0;
    f->map = NULL;
    f->map_off = 0;
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

/* Whether stores into a shared mapping of space fallocate reserved on this file system always succeed: ext4, XFS
 * and tmpfs allocate the blocks (pages) themselves. A copy-on-write file system (btrfs) may need new space when a
 * mapped page is first written, and fails that fault with SIGBUS where a write would return ENOSPC; others may not
 * reserve at all. */
static bool reservation_holds_for_mappings(int fd) {
    struct statfs sf;
    if (fstatfs(fd, &sf) != 0) return false;
    switch ((unsigned long)sf.f_type) {
    case 0xEF53UL:     /* ext2, ext3, ext4 */
    case 0x58465342UL: /* XFS */
    case 0x01021994UL: /* tmpfs */
        return true;
    default:
        return false;
    }
}

/* A file written by offset: no O_APPEND, which would make Linux's pwrite ignore the offset. */
static int px_open_overwrite(kv_env *env, const char *path, kv_file **out) {
    (void)env;
    int rc = open_file(path, O_RDWR | O_CREAT | O_TRUNC, out);
    if (rc == KV_OK) (*out)->mappable = reservation_holds_for_mappings((*out)->fd);
    return rc;
}

/* Copy n bytes to dst in ascending order of address, as a write lands: a reader of the file (kv_check reading the
 * live log) that catches the copy in its middle, or a crash of the process there, finds a prefix of it, a record's
 * header before its payload and a record before the next (docs/format.md, "Reading"). memcpy stores in any order
 * (glibc stores the first bytes of a copy of a few hundred bytes to 2 KiB last), and a writer may stall in a page
 * fault or be preempted in the middle. Volatile stores keep the order; x86 keeps it for other processors too. */
/* Not inlined: copy_into_mapping's frame must hold nothing that changes between its sigsetjmp and a jump back. */
__attribute__((noinline)) static void copy_ascending(char *dst, const char *src, size_t n) {
    volatile char *d = dst;
    for (; n > 0 && ((uintptr_t)d & 7); n--) *d++ = *src++;
    for (; n >= 8; n -= 8, d += 8, src += 8) {
        uint64_t v;
        memcpy(&v, src, 8);
        *(volatile uint64_t *)d = v;
    }
    for (; n > 0; n--) *d++ = *src++;
}

/* A store into a mapping that the file system cannot back raises SIGBUS where a write would have returned an error:
 * an I/O error reading back an evicted page, a file system shut down after an error, a file cut by another process.
 * The copy into a mapping runs with an escape: a SIGBUS in it jumps back to px_write_at, which stops mapping that
 * file and writes with pwrite instead, so the error (or the write) is pwrite's, and the process lives on. Any other
 * SIGBUS goes to the handler that was there before, or, for the default action, kills the process as it would
 * have. The handler is installed once, at the first mapped write; a program that replaces it later gets the old
 * behaviour (the signal's default action) for a store into a mapping that fails. */
/* Set while this thread copies into a mapping. Initial-exec: the handler reads it without a call into the dynamic
 * linker (a library loaded with dlopen would otherwise find its thread-local block through __tls_get_addr, which may
 * allocate, in a signal handler). */
static _Thread_local sigjmp_buf *volatile copy_escape __attribute__((tls_model("initial-exec")));
static struct sigaction bus_before;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;
static bool bus_caught; /* the handler is installed: mapped writes may go on */

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
    sigjmp_buf *escape = copy_escape;
    if (escape) {
        copy_escape = NULL;
        /* The jump saves no mask: put back the one the thread had before the signal. The handler adds nothing to it
         * itself (SA_NODEFER, an empty sa_mask), but a wrapper may (ThreadSanitizer runs handlers with every signal
         * blocked), which would stay blocked, SIGBUS too: the next fault in a mapping would kill the process. */
        if (uc) pthread_sigmask(SIG_SETMASK, &((ucontext_t *)uc)->uc_sigmask, NULL);
        siglongjmp(*escape, 1);
    }
    /* Not ours: as the handler that was there before would have had it. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    bool fault = si && si->si_code > 0; /* raised by the kernel for a store or load, not sent with kill() */
    bool handler = (bus_before.sa_flags & SA_SIGINFO) ? bus_before.sa_sigaction != NULL
                                                      : bus_before.sa_handler != SIG_DFL && bus_before.sa_handler != SIG_IGN;
    if (handler) {
        if (bus_before.sa_flags & SA_RESETHAND) sigaction(SIGBUS, &dfl, NULL); /* it was to run once */
        if (bus_before.sa_flags & SA_SIGINFO) bus_before.sa_sigaction(sig, si, uc);
        else bus_before.sa_handler(sig);
        return;
    }
    if (bus_before.sa_handler == SIG_IGN && !fault) return; /* ignored, as it was */
    /* the default action (an ignored fault is fatal too: the store would fault again forever): restore it and take
     * it (SA_NODEFER: the signal is not blocked here) */
    sigaction(SIGBUS, &dfl, NULL);
    raise(sig);
}

static void install_bus_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER; /* not blocked in the handler: the jump out saves no signal mask */
    sigemptyset(&sa.sa_mask);
    bus_caught = sigaction(SIGBUS, &sa, &bus_before) == 0;
}

/* Copy into a mapping; false: SIGBUS, some of the bytes may have been stored. */
static bool copy_into_mapping(char *dst, const void *src, size_t n) {
    sigjmp_buf escape;
    if (sigsetjmp(escape, 0) != 0) return false; /* the handler cleared copy_escape */
    copy_escape = &escape;
    copy_ascending(dst, src, n);
    copy_escape = NULL;
    return true;
}

/* A write into space fallocate reserved is a copy into a shared mapping of the file: the bytes are in the page cache
 * (in the OS, as a write's are) without a system call, which was a fifth of the CPU of an unsynced put. Only
 * reserved space, on a file system where that reservation holds for mappings, is written so: a store into a mapped
 * page past the end of the file, or that the disk has no room for, raises SIGBUS instead of returning an error.
 * After a truncation anywhere (the write-ahead log cuts a failed write off), the file's size bounds the reservation
 * again. A write that crosses a window boundary, or outside the reserved space, takes pwrite. fdatasync writes back
 * mapped pages as it does written ones. */
static int px_write_at(kv_env *env, kv_file *f, uint64_t off, const void *buf, size_t len) {
    (void)env;
    uint64_t t = atomic_load(&truncations);
    if (f->reserved && f->truncations != t) {
        struct stat st;
        if (fstat(f->fd, &st) != 0) f->reserved = 0;
        else if ((uint64_t)st.st_size < f->reserved) f->reserved = (uint64_t)st.st_size;
        f->truncations = t;
    }
    uint64_t w = off & ~(MAP_WINDOW - 1);
    if (f->mappable && len > 0 && off + len <= f->reserved && off + len <= w + MAP_WINDOW) {
        pthread_once(&bus_once, install_bus_handler);
        if (!bus_caught) f->mappable = false; /* no escape from a SIGBUS: write, as a write returns its errors */
    }
    if (f->mappable && len > 0 && off + len <= f->reserved && off + len <= w + MAP_WINDOW) {
        if (!f->map || f->map_off != w) {
            if (f->map) munmap(f->map, MAP_WINDOW);
            void *m = mmap(NULL, MAP_WINDOW, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, (off_t)w);
            f->map = m == MAP_FAILED ? NULL : m;
            f->map_off = w;
        }
        if (f->map && copy_into_mapping(f->map + (off - w), buf, len)) {
            atomic_fetch_add_explicit(&mapped_bytes, len, memory_order_relaxed);
            return KV_OK;
        }
        if (f->map) {
            /* SIGBUS: the file system could not back a page. This file is written by pwrite from now on, which
             * returns the error, or does the write if the cause was the mapping's (a file cut by someone else). */
            munmap(f->map, MAP_WINDOW);
            f->map = NULL;
            f->mappable = false;
        }
    }
    return write_all(f, false, off, buf, len);
}

/* fallocate reserves the blocks (reading as zeros); a file system without it gets a plain size change instead. */
static int px_allocate(kv_env *env, kv_file *f, uint64_t size) {
    (void)env;
    if (size > (uint64_t)INT64_MAX) return kv_set_error(KV_EINVAL, "allocate %s: size too large", f->path);
    int r;
    uint64_t t = atomic_load(&truncations); /* read before: a cut after the fallocate is seen by the next write */
    do {
        r = fallocate(f->fd, 0, 0, (off_t)size);
    } while (r != 0 && errno == EINTR);
    if (r == 0) {
        /* [0, size) is reserved now; what was reserved beyond it still is, unless a truncation cut it */
        if (size > f->reserved || f->truncations != t) f->reserved = size;
        f->truncations = t;
        return KV_OK;
    }
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
    if (f->map) munmap(f->map, MAP_WINDOW);
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
    atomic_fetch_add(&truncations, 1); /* also after a failure: a cut may have happened (px_write_at) */
    return r == 0 ? KV_OK : kv_set_errno(errno, "truncate", path);
}

static int px_mkdir(kv_env *env, const char *path, int mode) {
    (void)env;
    if (mkdir(path, (mode_t)mode) == 0) return KV_OK;
    int e = errno;
    if (e == EEXIST) {
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return kv_set_error(KV_EEXIST, "mkdir %s: already exists", path);
        return kv_set_error(KV_EIO, "mkdir %s: exists and is not a directory", path);
    }
    return kv_set_errno(e, "mkdir", path);
}

static int px_rmdir(kv_env *env, const char *path) {
    (void)env;
    return rmdir(path) == 0 ? KV_OK : kv_set_errno(errno, "rmdir", path);
}

void kv_env_remove_quietly(kv_env *env, const char *path) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    (void)env->remove(env, path);
    kv_set_error(KV_OK, "%s", msg);
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

/* LOCK's bytes (docs/format.md, "LOCK"): byte 0 is the store's lock, byte 1 a waiting writer's intent. */
enum { LOCK_BYTE_STORE = 0, LOCK_BYTE_INTENT = 1 };
enum lock_kind { LOCK_EXCLUSIVE, LOCK_SHARED, LOCK_INTENT };

#ifdef F_OFD_SETLK
/* fcntl with an OFD lock request on one byte of fd: F_OFD_SETLK (type F_WRLCK, F_RDLCK) or F_OFD_GETLK (whose
 * answer's type is F_UNLCK when a lock of that type could be taken). */
static int ofd_byte(int fd, int cmd, short type, off_t byte, short *answer) {
    struct flock fl;
    memset(&fl, 0, sizeof fl); /* l_pid 0, as OFD locks require */
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    int r = fcntl(fd, cmd, &fl);
    if (answer) *answer = fl.l_type;
    return r;
}
#endif

/* An exclusive lock, a shared one (any number of shared holders, none beside an exclusive one, and none taken while a
 * writer's intent is held), or the intent. A shared lock needs only read access to an existing LOCK file: a user who
 * may read a store but not write it can read it. */
static int lock_file(const char *path, enum lock_kind kind, kv_file **lock) {
    kv_file *f;
    bool shared = kind == LOCK_SHARED;
    int rc = open_file(path, (shared ? O_RDONLY : O_RDWR) | O_CREAT, &f);
    if (rc != KV_OK) return rc;
    const char *busy_why = "already locked by another holder";
#ifdef F_OFD_SETLK
    int r = ofd_byte(f->fd, F_OFD_SETLK, shared ? F_RDLCK : F_WRLCK,
                     kind == LOCK_INTENT ? LOCK_BYTE_INTENT : LOCK_BYTE_STORE, NULL);
    bool busy = r != 0 && (errno == EAGAIN || errno == EACCES);
    short intent = F_UNLCK;
    /* checked once the store is held: a writer that starts to wait from now on finds this reader there */
    if (r == 0 && shared && (r = ofd_byte(f->fd, F_OFD_GETLK, F_RDLCK, LOCK_BYTE_INTENT, &intent)) == 0 &&
        intent != F_UNLCK) {
        r = -1;
        busy = true;
        busy_why = "a writer waits for it";
    }
#else
    /* flock() locks also belong to the open file description, so they conflict within one process too. They lock
     * the whole file: px_lock_intent does not exist without OFD locks. */
    int r = flock(f->fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB);
    bool busy = r != 0 && errno == EWOULDBLOCK;
#endif
    if (r != 0) {
        int e = errno;
        close(f->fd);
        free(f);
        if (busy) return kv_set_error(KV_EBUSY, "lock %s: %s", path, busy_why);
        return kv_set_errno(e, "lock", path);
    }
    *lock = f;
    return KV_OK;
}

static int px_lock(kv_env *env, const char *path, kv_file **lock) {
    (void)env;
    return lock_file(path, LOCK_EXCLUSIVE, lock);
}

static int px_lock_shared(kv_env *env, const char *path, kv_file **lock) {
    (void)env;
    return lock_file(path, LOCK_SHARED, lock);
}

#ifdef F_OFD_SETLK
static int px_lock_intent(kv_env *env, const char *path, kv_file **lock) {
    (void)env;
    return lock_file(path, LOCK_INTENT, lock);
}
#define PX_LOCK_INTENT px_lock_intent
#else
#define PX_LOCK_INTENT NULL
#endif

/* Closing the descriptor releases the lock; the lock file itself stays (removing it would race with a new holder). */
static int px_unlock(kv_env *env, kv_file *lock) {
    return px_close(env, lock);
}

static int px_disk_space(kv_env *env, const char *path, uint64_t *avail, uint64_t *total) {
    (void)env;
    struct statvfs sv;
    if (statvfs(path, &sv) != 0) return kv_set_errno(errno, "statvfs", path);
    *avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    *total = (uint64_t)sv.f_blocks * sv.f_frsize;
    return KV_OK;
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
    .lock_shared = px_lock_shared,
    .lock_intent = PX_LOCK_INTENT,
    .unlock = px_unlock,
    .disk_space = px_disk_space,
    .destroy = px_destroy,
};

kv_env *kv_env_posix(void) { return &posix_env; }
