/*
 * ctl.c — the control socket, both ends (see ctl.h for the design and the wire format).
 *
 * Invariants
 *  - The socket file is created only by bind(), made 0600 right after, and removed at stop only if it is still the
 *    one we bound (same inode). An existing socket is removed at start only when nothing answers on it; a file of
 *    that name that is not a socket is never touched.
 *  - Every connection is checked with SO_PEERCRED before anything is read from it: the daemon's user or root.
 *  - A request arrives whole within CTL_REQUEST_TIMEOUT_MS of its connection being taken, or the connection is
 *    closed with nothing run: no read waits past that deadline (read_until).
 *  - Each request runs on its own thread; ctl_server_stop() returns only when no thread uses the store any more.
 *    It shuts down the reading side of each connection, which the running command sees as cancellation
 *    (tools.h); a changes --follow it cut short replies where it got (RES_FOLLOW_STOPPED), the others do not.
 *  - Descriptors received from a client are closed on every path; all descriptors are close-on-exec.
 */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tools.h"

#define REQ_MAGIC "KVFSCTL1"
#define RES_MAGIC "KVFSRES1"
#define MAX_CONNS 256
#define RES_DENIED 1 /* reply flag: the daemon refused the client (another user) */
#define RES_BUSY 2   /* reply flag: the command was not run: MAX_CONNS commands running already, or no thread */
#define RES_FOLLOW_STOPPED 4 /* reply flag: the daemon stopped a changes --follow; struct res_follow comes next */

struct req_hdr {
    char magic[8];
    uint32_t argc;
    uint32_t bytes;
};
/* A reply: magic, int32 status, int32 flags; after RES_FOLLOW_STOPPED, uint64 seq and skip (where the output of the
 * changes --follow got: tool_follow_pos). */

struct conn {
    struct ctl_server *s;
    int fd;
    struct conn *next;
};

struct ctl_server {
    kv_db *db;
    char *datadir;
    int dirfd;              /* DATADIR, for *at() calls on the socket's name */
    int lfd;                /* listening socket */
    int wake[2];            /* a pipe: written by stop to wake the accept thread */
    ino_t sock_ino;
    pthread_t accept_thread;
    pthread_mutex_t mu;
    pthread_cond_t idle;    /* signalled when a connection ends */
    int active;             /* connections being served */
    bool stopping;          /* ctl_server_stop has cancelled the running commands (under mu) */
    struct conn *conns;
};

/* ---- Wire format ---------------------------------------------------------------------------------------------- */

int ctl_request_header(const void *hdr, size_t n, uint32_t *argc, uint32_t *bytes) {
    struct req_hdr h;
    if (n != sizeof h) return -1;
    memcpy(&h, hdr, sizeof h);
    if (memcmp(h.magic, REQ_MAGIC, 8) != 0 || h.argc == 0 || h.argc > h.bytes || h.bytes > CTL_MAX_ARG_BYTES ||
        h.argc > CTL_MAX_ARGS)
        return -1;
    *argc = h.argc;
    *bytes = h.bytes;
    return 0;
}

char **ctl_request_args(char *body, size_t n, uint32_t argc, bool *oom) {
    *oom = false;
    if (n == 0 || body[n - 1] != 0) return NULL; /* the last string must end inside the body */
    uint64_t strings = 0;
    for (const char *p = body, *end = body + n; p < end; p++) {
        p = memchr(p, 0, (size_t)(end - p));
        strings++;
    }
    if (strings != argc) return NULL;
    char **argv = malloc(((size_t)argc + 1) * sizeof *argv);
    if (!argv) {
        *oom = true;
        return NULL;
    }
    size_t off = 0;
    for (uint32_t i = 0; i < argc; i++) {
        argv[i] = body + off;
        off += strlen(body + off) + 1;
    }
    argv[argc] = NULL;
    return argv;
}

int ctl_request_encode(int argc, char *const *argv, uint8_t hdr[CTL_REQ_HDR_BYTES], char **body, size_t *bytes) {
    *body = NULL;
    size_t n = 0;
    for (int i = 0; i < argc && n <= CTL_MAX_ARG_BYTES; i++) n += strlen(argv[i]) + 1;
    if (argc < 1 || n > CTL_MAX_ARG_BYTES || (unsigned)argc > CTL_MAX_ARGS) return -1;
    if (!(*body = malloc(n))) return -2;
    size_t off = 0;
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(argv[i]) + 1;
        memcpy(*body + off, argv[i], l);
        off += l;
    }
    struct req_hdr h;
    memcpy(h.magic, REQ_MAGIC, 8);
    h.argc = (uint32_t)argc;
    h.bytes = (uint32_t)n;
    memcpy(hdr, &h, sizeof h);
    *bytes = n;
    return 0;
}

/* What a command ends with (tools.h): an exit status, or -SIGINT / -SIGPIPE (tool_finish). */
static bool status_valid(int32_t st) { return (st >= 0 && st <= 255) || st == -SIGINT || st == -SIGPIPE; }

enum ctl_reply_kind ctl_reply_decode(const void *buf, size_t n, ctl_reply *r) {
    memset(r, 0, sizeof *r);
    const uint8_t *b = buf;
    if (n < CTL_REPLY_BYTES) return CTL_REPLY_CUT;
    int32_t status, flags;
    memcpy(&status, b + 8, 4);
    memcpy(&flags, b + 12, 4);
    if (memcmp(b, RES_MAGIC, 8) != 0) return CTL_REPLY_BAD;
    if (flags == RES_FOLLOW_STOPPED && n < CTL_REPLY_BYTES + CTL_FOLLOW_BYTES) return CTL_REPLY_CUT;
    size_t want = CTL_REPLY_BYTES + (flags == RES_FOLLOW_STOPPED ? CTL_FOLLOW_BYTES : 0);
    if (n != want || !status_valid(status)) return CTL_REPLY_BAD;
    r->status = status;
    switch (flags) {
    case 0: return CTL_REPLY_STATUS;
    case RES_DENIED: return CTL_REPLY_DENIED;
    case RES_BUSY: return CTL_REPLY_BUSY;
    case RES_FOLLOW_STOPPED:
        memcpy(&r->seq, b + CTL_REPLY_BYTES, 8);
        memcpy(&r->skip, b + CTL_REPLY_BYTES + 8, 8);
        return CTL_REPLY_FOLLOW;
    default: return CTL_REPLY_BAD; /* flags the daemon never sends, or several at once */
    }
}

size_t ctl_reply_encode(uint8_t buf[CTL_REPLY_BYTES + CTL_FOLLOW_BYTES], enum ctl_reply_kind kind, const ctl_reply *r) {
    int32_t status = r->status;
    int32_t flags = kind == CTL_REPLY_DENIED ? RES_DENIED
                    : kind == CTL_REPLY_BUSY ? RES_BUSY
                    : kind == CTL_REPLY_FOLLOW ? RES_FOLLOW_STOPPED
                                               : 0;
    memcpy(buf, RES_MAGIC, 8);
    memcpy(buf + 8, &status, 4);
    memcpy(buf + 12, &flags, 4);
    if (kind != CTL_REPLY_FOLLOW) return CTL_REPLY_BYTES;
    memcpy(buf + CTL_REPLY_BYTES, &r->seq, 8);
    memcpy(buf + CTL_REPLY_BYTES + 8, &r->skip, 8);
    return CTL_REPLY_BYTES + CTL_FOLLOW_BYTES;
}

/* The file system holding dir, or the directory it will be created in when it does not exist yet. */
static int disk_of(const char *dir, struct statvfs *sv) {
    if (statvfs(dir, sv) == 0) return 0;
    if (errno != ENOENT) return -1;
    size_t n = strlen(dir);
    char *parent = malloc(n + 2);
    if (!parent) return -1;
    memcpy(parent, dir, n + 1);
    while (n > 1 && parent[n - 1] == '/') parent[--n] = 0;
    char *slash = strrchr(parent, '/');
    if (!slash) strcpy(parent, ".");
    else slash[slash == parent] = 0;
    int rc = statvfs(parent, sv);
    free(parent);
    return rc;
}

int kvfs_lock_wait_ms(void) {
    const char *e = getenv("KVFS_LOCK_WAIT");
    if (!e || !*e) return KVFS_LOCK_WAIT_DEFAULT_MS;
    /* digits with an optional fraction, as the mount options' numbers: strtod alone would also take a sign, blanks,
     * hex, exponents and "nan" */
    size_t whole = strspn(e, "0123456789"), frac = e[whole] == '.' ? strspn(e + whole + 1, "0123456789") : 0;
    if (whole + frac == 0 || e[whole + (e[whole] == '.' ? 1 + frac : 0)] != '\0') return -1;
    /* past 86400 (an overflow gives HUGE_VAL) is refused; an underflow (0.000...1) is a wait of 0 */
    double s = strtod(e, NULL);
    if (!(s >= 0) || s > 86400) return -1;
    return (int)(s * 1000);
}

void kvfs_store_options(kv_options *o, const char *datadir) {
    o->batch_log_max_batches = KVFS_BATCH_LOG_MAX_BATCHES;
    o->batch_log_max_bytes = KVFS_BATCH_LOG_MAX_BYTES;
    o->blob_threshold = KVFS_BLOB_THRESHOLD;
    o->space_reserve = true; /* rm works when another process filled the disk (docs/design.md, "A full disk") */
    /* On a small disk the change feed's 64 MiB took most of it: what a full disk could not give back */
    struct statvfs sv;
    if (datadir && disk_of(datadir, &sv) == 0 && sv.f_frsize && sv.f_blocks) {
        uint64_t disk = (uint64_t)sv.f_blocks * sv.f_frsize, cap = disk / KVFS_BATCH_LOG_DISK_SHARE;
        if (cap < KVFS_BATCH_LOG_MIN_BYTES) cap = KVFS_BATCH_LOG_MIN_BYTES;
        if (cap < o->batch_log_max_bytes) o->batch_log_max_bytes = cap;
    }
}

static _Atomic int request_timeout_ms = CTL_REQUEST_TIMEOUT_MS;

int ctl_set_request_timeout_ms(int ms) {
    if (ms < 1) return KV_EINVAL;
    request_timeout_ms = ms;
    return KV_OK;
}

static _Thread_local char errbuf[512];
const char *ctl_errmsg(void) { return errbuf; }

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
    return code;
}

/* The address of DATADIR/kvfs.sock. sun_path holds about 107 bytes; a longer DATADIR is reached through its open
 * descriptor as /proc/self/fd/N/kvfs.sock (dirfd must then stay open until bind/connect is done). */
static int sock_addr(const char *datadir, int dirfd, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path, sizeof a->sun_path, "%s/%s", datadir, CTL_SOCKET_NAME);
    if (n > 0 && (size_t)n < sizeof a->sun_path) return 0;
    if (dirfd < 0) return -1;
    snprintf(a->sun_path, sizeof a->sun_path, "/proc/self/fd/%d/%s", dirfd, CTL_SOCKET_NAME);
    return 0;
}

/* ---- Server --------------------------------------------------------------------------------------------------- */

static bool peer_allowed(int fd) {
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) return false;
    return cr.uid == 0 || cr.uid == geteuid();
}

static void send_reply(int fd, enum ctl_reply_kind kind, int status, const tool_follow_pos *pos) {
    uint8_t buf[CTL_REPLY_BYTES + CTL_FOLLOW_BYTES];
    ctl_reply r = {.status = status, .seq = pos ? pos->seq : 0, .skip = pos ? pos->skip : 0};
    size_t n = ctl_reply_encode(buf, kind, &r);
    /* MSG_NOSIGNAL: a client that is gone must not kill the daemon */
    (void)!send(fd, buf, n, MSG_NOSIGNAL);
}

/* Microseconds on CLOCK_MONOTONIC. */
static int64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Before each read of a request: let it wait no later than the request's deadline (SO_RCVTIMEO counts per read, so
 * it is shrunk to what is left each time; a read that waits for all it asks, MSG_WAITALL, counts it once). False
 * when the deadline has passed. (Never a timeout of 0: that would wait for good.) */
static bool read_until(int fd, int64_t deadline_us) {
    int64_t left = deadline_us - mono_us();
    if (left <= 0) return false;
    struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0;
}

/* Receive the request header and the three descriptors, by the deadline: 0 with *argc and *bytes, or -1 (fds
 * closed). */
static int recv_request(int fd, int64_t deadline_us, uint32_t *argc, uint32_t *bytes, int fds[3]) {
    struct req_hdr hdr, *h = &hdr;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(3 * sizeof(int))];
    } cm;
    struct iovec iov = {h, sizeof *h};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
    fds[0] = fds[1] = fds[2] = -1;
    ssize_t r = -1;
    while (read_until(fd, deadline_us)) {
        r = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
        if (r >= 0 || errno != EINTR) break;
    }
    /* A failed recvmsg (the client's time is up, a reset) leaves msg_controllen as it was: the walk below then
     * read the buffer's uninitialised bytes as messages, and could close whatever descriptors they named. */
    if (r < 0) m.msg_controllen = 0;
    int got = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int tmp[8];
        memcpy(tmp, CMSG_DATA(c), (n > 8 ? 8 : n) * sizeof(int));
        for (size_t i = 0; i < n && i < 8; i++) {
            if (got < 3) fds[got++] = tmp[i];
            else close(tmp[i]);
        }
    }
    if (r < 0 || got != 3 || (m.msg_flags & MSG_CTRUNC) || ctl_request_header(h, (size_t)r, argc, bytes) != 0) {
        for (int i = 0; i < 3; i++)
            if (fds[i] >= 0) close(fds[i]);
        return -1;
    }
    return 0;
}

/* Read a request body of n bytes (n <= CTL_MAX_ARG_BYTES) into a malloc'ed *out, by the deadline. The buffer grows
 * with the bytes that arrive, so a header that claims 16 MiB and sends nothing more costs nothing: only what a client
 * sends is held. 0, or -1 (the connection ended or the deadline passed first, or out of memory). */
static int read_body(int fd, int64_t deadline_us, size_t n, char **out) {
    size_t cap = 0, got = 0;
    char *body = NULL;
    while (got < n) {
        if (got == cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            if (ncap > n) ncap = n;
            char *nb = realloc(body, ncap);
            if (!nb) break;
            body = nb, cap = ncap;
        }
        if (!read_until(fd, deadline_us)) break;
        ssize_t r = recv(fd, body + got, cap - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got < n) {
        free(body);
        return -1;
    }
    *out = body;
    return 0;
}

static void serve(struct ctl_server *s, int fd) {
    if (!peer_allowed(fd)) {
        send_reply(fd, CTL_REPLY_DENIED, TOOL_FAIL, NULL);
        return;
    }
    /* A client has CTL_REQUEST_TIMEOUT_MS to send its whole request; after that the connection only carries
     * cancellation (and the reply: at most CTL_REPLY_BYTES + CTL_FOLLOW_BYTES, the only bytes the daemon writes to
     * it, which a socket's send buffer always has room for, whether the client reads or not). */
    int64_t deadline_us = mono_us() + (int64_t)request_timeout_ms * 1000;
    uint32_t argc, bytes;
    int fds[3];
    if (recv_request(fd, deadline_us, &argc, &bytes, fds) != 0) return;
    char *body = NULL;
    char **argv = NULL;
    bool oom = false;
    /* Split into exactly argc NUL-terminated strings; anything else is a malformed request. */
    if (read_body(fd, deadline_us, bytes, &body) == 0 && (argv = ctl_request_args(body, bytes, argc, &oom))) {
        tool_follow_pos pos = {0};
        int status = tools_serve(s->db, s->datadir, (int)argc, argv, fds, fd, &pos);
        pthread_mutex_lock(&s->mu);
        bool stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        /* A command the stop cancelled gets no reply: the client says the daemon ended the connection before
         * the command finished, but for changes --follow, which goes on from where it got (ctl_client_run). */
        if (stopping && pos.valid) send_reply(fd, CTL_REPLY_FOLLOW, TOOL_FAIL, &pos);
        else if (!stopping || status != -SIGINT) send_reply(fd, CTL_REPLY_STATUS, status, NULL);
    }
    free(argv);
    free(body);
    for (int i = 0; i < 3; i++) close(fds[i]);
}

static void *conn_thread(void *arg) {
    struct conn *c = arg;
    struct ctl_server *s = c->s;
    serve(s, c->fd);
    pthread_mutex_lock(&s->mu);
    for (struct conn **pp = &s->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    close(c->fd);
    free(c);
    s->active--;
    pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Start a thread that takes no process-directed signal (SIGINT, SIGTERM...): those belong to the daemon's main
 * loop, and a handler run on one of our threads would not wake it. The new thread inherits the blocked mask. The
 * signals of a fault stay unblocked: the kernel kills a thread's process outright when one arrives blocked, and a
 * command's write can fault in the write-ahead log's mapping (SIGBUS), which the engine's handler turns into an
 * error (docs/design.md, "The write path"). */
static int start_thread(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
    sigset_t all, old;
    sigfillset(&all);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(t, attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static void *accept_thread(void *arg) {
    struct ctl_server *s = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = s->lfd, .events = POLLIN}, {.fd = s->wake[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) break; /* stopping */
        if (!p[0].revents) continue;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) poll(NULL, 0, 100);
            continue;
        }
        struct conn *c = calloc(1, sizeof *c);
        pthread_mutex_lock(&s->mu);
        bool ok = c && s->active < MAX_CONNS;
        if (ok) {
            c->s = s;
            c->fd = fd;
            c->next = s->conns;
            s->conns = c;
            s->active++;
        }
        pthread_mutex_unlock(&s->mu);
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (ok && start_thread(&t, &at, conn_thread, c) != 0) {
            pthread_mutex_lock(&s->mu);
            s->conns = c->next; /* c is still the head: only this thread adds, and conn threads never ran */
            s->active--;
            pthread_mutex_unlock(&s->mu);
            ok = false;
        }
        pthread_attr_destroy(&at);
        if (!ok) {
            free(c);
            send_reply(fd, CTL_REPLY_BUSY, TOOL_FAIL, NULL); /* flags 0 was a silent status 1: `get` said "absent" */
            close(fd);
        }
    }
    return NULL;
}

/* Is there a live server on the socket at addr? */
static bool answers(const struct sockaddr_un *a) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    int r = connect(fd, (const struct sockaddr *)a, sizeof *a);
    close(fd);
    return r == 0;
}

int ctl_server_start(kv_db *db, const char *datadir, struct ctl_server **out) {
    *out = NULL;
    struct ctl_server *s = calloc(1, sizeof *s);
    if (!s) return fail(KV_ENOMEM, "out of memory");
    s->db = db;
    s->lfd = s->wake[0] = s->wake[1] = -1;
    s->datadir = strdup(datadir);
    s->dirfd = open(datadir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = KV_EIO;
    struct sockaddr_un a;
    struct stat st;
    if (!s->datadir || s->dirfd < 0) {
        rc = fail(s->datadir ? KV_EIO : KV_ENOMEM, "%s: %s", datadir, strerror(errno));
        goto err;
    }
    sock_addr(datadir, s->dirfd, &a);
    if (fstatat(s->dirfd, CTL_SOCKET_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            rc = fail(KV_EEXIST, "%s/%s exists and is not a socket", datadir, CTL_SOCKET_NAME);
            goto err;
        }
        if (answers(&a)) {
            rc = fail(KV_EBUSY, "%s/%s: another daemon is serving this store", datadir, CTL_SOCKET_NAME);
            goto err;
        }
        unlinkat(s->dirfd, CTL_SOCKET_NAME, 0); /* stale: left by a daemon that died */
    }
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0) {
        rc = fail(KV_EIO, "%s/%s: %s", datadir, CTL_SOCKET_NAME, strerror(errno));
        goto err;
    }
    /* Owner only. (Until this chmod the socket has the umask's mode; SO_PEERCRED checks cover that moment.) */
    if (fchmodat(s->dirfd, CTL_SOCKET_NAME, 0600, 0) != 0 ||
        fstatat(s->dirfd, CTL_SOCKET_NAME, &st, AT_SYMLINK_NOFOLLOW) != 0 || listen(s->lfd, 64) != 0 ||
        pipe2(s->wake, O_CLOEXEC) != 0) {
        rc = fail(KV_EIO, "%s/%s: %s", datadir, CTL_SOCKET_NAME, strerror(errno));
        unlinkat(s->dirfd, CTL_SOCKET_NAME, 0);
        goto err;
    }
    s->sock_ino = st.st_ino;
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->idle, NULL);
    if (start_thread(&s->accept_thread, NULL, accept_thread, s) != 0) {
        rc = fail(KV_ENOMEM, "cannot start the control socket's thread");
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->idle);
        unlinkat(s->dirfd, CTL_SOCKET_NAME, 0);
        goto err;
    }
    *out = s;
    return KV_OK;
err:
    if (s->lfd >= 0) close(s->lfd);
    if (s->wake[0] >= 0) close(s->wake[0]), close(s->wake[1]);
    if (s->dirfd >= 0) close(s->dirfd);
    free(s->datadir);
    free(s);
    return rc;
}

void ctl_server_stop(struct ctl_server *s) {
    if (!s) return;
    (void)!write(s->wake[1], "x", 1);
    pthread_join(s->accept_thread, NULL);
    /* No new command from now on: the socket goes before the running commands are waited for. A client that comes
     * meanwhile finds no daemon and waits for the store's lock, as when nothing is mounted; one still in the
     * listening queue is reset, which it takes the same way (ctl_client_run: the command never ran). */
    struct stat st;
    if (fstatat(s->dirfd, CTL_SOCKET_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino == s->sock_ino)
        unlinkat(s->dirfd, CTL_SOCKET_NAME, 0);
    close(s->lfd);
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    /* Cancels the running command (its connection reads as closed), and leaves the way to the client open for the
     * reply of a changes --follow, which says where it got (serve). */
    for (struct conn *c = s->conns; c; c = c->next) shutdown(c->fd, SHUT_RD);
    while (s->active > 0) pthread_cond_wait(&s->idle, &s->mu);
    pthread_mutex_unlock(&s->mu);
    close(s->wake[0]);
    close(s->wake[1]);
    close(s->dirfd);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->idle);
    free(s->datadir);
    free(s);
}

/* ---- Client --------------------------------------------------------------------------------------------------- */

/* Where the last ctl_client_run's changes --follow got when its daemon stopped (this thread's) */
static _Thread_local tool_follow_pos follow_stopped;

bool ctl_client_follow_stopped(uint64_t *seq, uint64_t *skip) {
    if (!follow_stopped.valid) return false;
    follow_stopped.valid = false;
    *seq = follow_stopped.seq;
    *skip = follow_stopped.skip;
    return true;
}

bool ctl_daemon_answers(const char *datadir) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    int n = snprintf(a.sun_path, sizeof a.sun_path, "%s/%s", datadir, CTL_SOCKET_NAME);
    if (n < 0 || (size_t)n >= sizeof a.sun_path) return false;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool up = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return up;
}

/* Receive up to n bytes of a reply into buf, counting them in *got, until n, the end, or an error (*err). -1 when a
 * signal interrupted the wait (Ctrl-C). */
static int recv_reply(int fd, void *buf, size_t n, size_t *got, int *err) {
    while (*got < n) {
        ssize_t r = recv(fd, (char *)buf + *got, n - *got, 0);
        if (r > 0) {
            *got += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) return -1;
        if (r < 0) *err = errno;
        break;
    }
    return 0;
}

int ctl_client_run(const char *datadir, int argc, char **argv, int *status) {
    follow_stopped.valid = false;
    struct sockaddr_un a;
    int dirfd = -1;
    if (sock_addr(datadir, -1, &a) != 0) {
        dirfd = open(datadir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0 || sock_addr(datadir, dirfd, &a) != 0) {
            if (dirfd >= 0) close(dirfd);
            return 0;
        }
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0) close(fd);
        if (dirfd >= 0) close(dirfd);
        return 0;
    }
    if (dirfd >= 0) close(dirfd);
    /* Whoever answers gets our stdin, stdout and stderr: only a daemon of our own user or root's. (Root's client
     * keeps talking to any user's daemon, as the daemons take root's requests.) A socket in a store directory of
     * another user's could be anything of theirs: it was sent the descriptors, a terminal's included. */
    if (geteuid() != 0 && !peer_allowed(fd)) {
        fprintf(stderr, "kvfs: %s: the daemon on %s runs as another user: the command was not sent to it\n", datadir,
                CTL_SOCKET_NAME);
        close(fd);
        *status = TOOL_FAIL;
        return 1;
    }

    uint8_t h[CTL_REQ_HDR_BYTES];
    char *body;
    size_t bytes, off;
    *status = TOOL_FAIL;
    int erc = ctl_request_encode(argc, argv, h, &body, &bytes);
    if (erc != 0) {
        if (erc == -1)
            fprintf(stderr, "kvfs: arguments too long for the mount daemon (at most %u arguments, %u MiB in all)\n",
                    CTL_MAX_ARGS, CTL_MAX_ARG_BYTES >> 20);
        else
            fprintf(stderr, "kvfs: out of memory\n");
        close(fd);
        return 1;
    }
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(3 * sizeof(int))];
    } cm;
    memset(&cm, 0, sizeof cm);
    struct iovec iov = {h, sizeof h};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(3 * sizeof(int));
    int fds[3] = {0, 1, 2};
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    bool sent = sendmsg(fd, &m, MSG_NOSIGNAL) == (ssize_t)sizeof h;
    int send_err = sent ? 0 : errno;
    for (off = 0; sent && off < bytes;) {
        ssize_t w = send(fd, body + off, bytes - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) sent = false, send_err = w < 0 ? errno : EPIPE;
        else off += (size_t)w;
    }
    free(body);

    /* Wait for the reply. An interrupt (Ctrl-C) ends the wait: closing the connection cancels the command in the
     * daemon, which stops at a safe point. */
    uint8_t rbuf[CTL_REPLY_BYTES + CTL_FOLLOW_BYTES];
    size_t got = 0;
    int recv_err = 0;
    bool intr = recv_reply(fd, rbuf, CTL_REPLY_BYTES, &got, &recv_err) < 0;
    ctl_reply r;
    if (!intr && ctl_reply_decode(rbuf, got, &r) == CTL_REPLY_CUT && got == CTL_REPLY_BYTES) /* a follow position */
        intr = recv_reply(fd, rbuf, sizeof rbuf, &got, &recv_err) < 0;
    close(fd);
    if (intr) {
        *status = -SIGINT;
        return 1;
    }
    /* Reset before a reply, or refused while sending: the daemon never had the whole request, so the command did not
     * run (it runs one only once it has read it all, and a connection it then ends reads as an end, not a reset). A
     * daemon that stops resets the connections still in its listening queue: the caller waits for the store's lock
     * then, as when no daemon is there, and runs the command itself once the daemon has closed the store. */
    if (got == 0 && (recv_err == ECONNRESET || send_err == ECONNRESET || send_err == EPIPE)) return 0;
    switch (ctl_reply_decode(rbuf, got, &r)) {
    case CTL_REPLY_STATUS:
        *status = r.status;
        return 1;
    case CTL_REPLY_DENIED:
        fprintf(stderr, "kvfs: %s: the mount daemon refused the request (it runs as another user)\n", datadir);
        return 1;
    case CTL_REPLY_BUSY:
        fprintf(stderr, "kvfs: %s: the mount daemon is busy: it runs at most %d commands at once (or could not start "
                        "a thread for this one); the command was not run\n", datadir, MAX_CONNS);
        return 1;
    case CTL_REPLY_FOLLOW:
        /* changes --follow, stopped by its daemon's stop (an unmount): the caller goes on from where it got */
        follow_stopped = (tool_follow_pos){.valid = true, .seq = r.seq, .skip = r.skip};
        *status = r.status;
        return 1;
    case CTL_REPLY_BAD:
        fprintf(stderr, "kvfs: %s: the mount daemon sent a malformed reply\n", datadir);
        return 1;
    case CTL_REPLY_CUT:
        break;
    }
    if (!sent && got == 0) {
        /* The daemon took the connection but could not read the request: it is stopping, or overloaded. */
        fprintf(stderr, "kvfs: %s: could not send the command to the mount daemon\n", datadir);
    } else {
        fprintf(stderr, "kvfs: %s: the mount daemon ended the connection before the command finished\n", datadir);
    }
    return 1;
}
