/*
 * test_ctl.c — the control socket (mount/ctl.c): what the daemon does with requests that are not what a kvfs client
 * sends, what it allocates for a request's claims, and what the client takes from a reply.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "t.h"
#include "tools.h"

/* The request header as ctl.h describes it. */
struct req_hdr {
    char magic[8];
    uint32_t argc, bytes;
};

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Milliseconds on CLOCK_MONOTONIC. */
static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The process's address space (VmSize), in bytes; 0 when unknown. */
static uint64_t vm_size(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb << 10;
}

/* A connection to dir's socket, or -1. */
static int connect_to(const char *dir) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (snprintf(a.sun_path, sizeof a.sun_path, "%s/%s", dir, CTL_SOCKET_NAME) >= (int)sizeof a.sun_path) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Send a request header with the descriptors fds attached as the command's stdin, stdout and stderr. */
static bool send_header_fds(int fd, const char *magic, uint32_t argc, uint32_t bytes, const int fds[3]) {
    struct req_hdr h;
    memcpy(h.magic, magic, 8);
    h.argc = argc;
    h.bytes = bytes;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(3 * sizeof(int))];
    } cm;
    memset(&cm, 0, sizeof cm);
    struct iovec iov = {&h, sizeof h};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(3 * sizeof(int));
    memcpy(CMSG_DATA(c), fds, 3 * sizeof(int));
    return sendmsg(fd, &m, MSG_NOSIGNAL) == (ssize_t)sizeof h;
}

/* ... with this process's stdin, stdout and stderr attached (as the client does). */
static bool send_header(int fd, const char *magic, uint32_t argc, uint32_t bytes) {
    static const int std[3] = {0, 1, 2};
    return send_header_fds(fd, magic, argc, bytes, std);
}

/* A store in a fresh directory, served on its socket. */
typedef struct served {
    char dir[512];
    kv_db *db;
    struct ctl_server *srv;
} served;

static bool serve_start(served *s) {
    snprintf(s->dir, sizeof s->dir, "%s/store", t_tmpdir());
    kv_options o;
    kv_options_init(&o);
    o.create_if_missing = true;
    if (kv_open(s->dir, &o, &s->db) != KV_OK) return false;
    if (kv_put(s->db, "k", 1, "value", 5, 0) != KV_OK) return false;
    return ctl_server_start(s->db, s->dir, &s->srv) == KV_OK;
}

static void serve_stop(served *s) {
    ctl_server_stop(s->srv);
    kv_close(s->db);
    kv_free(s->db);
    t_rmrf(s->dir);
}

/* Run `kvfs get DIR k` through the socket with stdout in a file: the status, and what it printed in out. */
static int client_get(const char *dir, char *out, size_t n) {
    char path[600];
    snprintf(path, sizeof path, "%s/get.out", t_tmpdir());
    fflush(stdout);
    int saved = dup(1), f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    dup2(f, 1);
    char *argv[] = {"get", (char *)dir, "k", NULL};
    int status = -1000;
    int ran = ctl_client_run(dir, 3, argv, &status);
    dup2(saved, 1);
    close(saved);
    ssize_t got = pread(f, out, n - 1, 0);
    out[got > 0 ? got : 0] = 0;
    close(f);
    return ran ? status : -1001;
}

/* Send dir's daemon a request of the argc strings in body (n bytes, NULs included), built by hand as no kvfs client
 * would, with stdin from /dev/null and stdout and stderr into the file at outpath: the status it replies, or -1000
 * when it ends the connection without one. */
static int raw_request(const char *dir, uint32_t argc, const char *body, size_t n, const char *outpath) {
    int fds[3] = {open("/dev/null", O_RDONLY | O_CLOEXEC), open(outpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
    fds[2] = fds[1];
    int fd = connect_to(dir), status = -1000;
    if (fd >= 0 && fds[0] >= 0 && fds[1] >= 0 && send_header_fds(fd, "KVFSCTL1", argc, (uint32_t)n, fds) &&
        send(fd, body, n, MSG_NOSIGNAL) == (ssize_t)n) {
        uint8_t r[CTL_REPLY_BYTES];
        ctl_reply rep;
        if (recv(fd, r, sizeof r, MSG_WAITALL) == (ssize_t)sizeof r && ctl_reply_decode(r, sizeof r, &rep) == CTL_REPLY_STATUS)
            status = rep.status;
    }
    if (fd >= 0) close(fd);
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0) close(fds[i]);
    return status;
}

/* A checkpoint's DEST relative to the daemon's working directory, not the client's, in a request made by hand (the
 * client makes DEST absolute): the daemon wrote the copy there. It refuses it, saying why. */
TEST(ctl_checkpoint_refuses_a_relative_dest) {
    served s;
    CHECK(serve_start(&s));
    char cwd[PATH_MAX], out[600], rel[600], abs_dest[600];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    snprintf(out, sizeof out, "%s/checkpoint.out", t_tmpdir());
    snprintf(rel, sizeof rel, "%s/relative-dest", t_tmpdir());
    snprintf(abs_dest, sizeof abs_dest, "%s/absolute-dest", t_tmpdir());
    char body[1400];
    int n = snprintf(body, sizeof body, "checkpoint%c%s%crelative-dest", 0, s.dir, 0) + 1;
    CHECK(chdir(t_tmpdir()) == 0); /* the daemon's working directory: the test's process is the daemon */
    int status = raw_request(s.dir, 3, body, (size_t)n, out);
    CHECK(chdir(cwd) == 0);
    CHECK_EQ(status, TOOL_USAGE);
    CHECK_MSG(access(rel, F_OK) != 0, "the checkpoint was written into the daemon's working directory");
    char msg[512] = "";
    int f = open(out, O_RDONLY);
    ssize_t got = f >= 0 ? read(f, msg, sizeof msg - 1) : -1;
    msg[got > 0 ? got : 0] = 0;
    if (f >= 0) close(f);
    CHECK_MSG(strstr(msg, "relative-dest") && strstr(msg, "absolute"), "the daemon said: %s", msg);
    /* an absolute one, as the client sends it, is written */
    n = snprintf(body, sizeof body, "checkpoint%c%s%c%s", 0, s.dir, 0, abs_dest) + 1;
    CHECK_EQ(raw_request(s.dir, 3, body, (size_t)n, out), 0);
    CHECK(access(abs_dest, F_OK) == 0);
    t_rmrf(rel);
    t_rmrf(abs_dest);
    serve_stop(&s);
}

/* Requests that claim the most arguments and send none of them: the daemon must not allocate for what it has not
 * received. Each made it allocate 144 MiB (16 MiB of body and 16 Mi argument pointers) before reading a byte, when
 * the count had no limit of its own (ctl_argument_count_is_bounded). */
TEST(ctl_request_claims_allocate_nothing_yet) {
    served s;
    CHECK(serve_start(&s));
    enum { CONNS = 4 };
    int fds[CONNS];
    uint64_t before = vm_size();
    for (int i = 0; i < CONNS; i++) {
        fds[i] = connect_to(s.dir);
        CHECK(fds[i] >= 0);
        CHECK(send_header(fds[i], "KVFSCTL1", CTL_MAX_ARGS, CTL_MAX_ARG_BYTES));
    }
    sleep_ms(300); /* the daemon's threads take the headers */
    uint64_t after = vm_size();
    for (int i = 0; i < CONNS; i++) close(fds[i]);
    /* 128 MiB a connection: its thread's stack (8 MiB) and malloc arena (64 MiB) count; its claim's 144 MiB must
     * not */
    CHECK_MSG(after < before + ((uint64_t)CONNS << 27),
              "%d requests that sent only a header grew the process by %llu MiB", CONNS,
              (unsigned long long)((after - before) >> 20));
    char out[64];
    CHECK_EQ(client_get(s.dir, out, sizeof out), 0);
    CHECK(strcmp(out, "value") == 0);
    serve_stop(&s);
}

/* Malformed requests end their connection; the daemon goes on serving. */
TEST(ctl_bad_requests_leave_the_daemon_serving) {
    served s;
    CHECK(serve_start(&s));
    struct {
        const char *magic;
        uint32_t argc, bytes;
        const char *body;
        size_t blen;
    } bad[] = {
        {"KVFSCTL0", 1, 4, "get", 4},               /* magic */
        {"KVFSCTL1", 0, 4, "get", 4},               /* no argument */
        {"KVFSCTL1", 5, 4, "get", 4},               /* more arguments than bytes */
        {"KVFSCTL1", 2, 4, "get", 4},               /* fewer strings than argc */
        {"KVFSCTL1", 1, 4, "getx", 4},              /* no NUL at the end */
        {"KVFSCTL1", 1, 8, "get\0get", 8},          /* more strings than argc */
        {"KVFSCTL1", 1, CTL_MAX_ARG_BYTES + 1, "", 0}, /* too long */
        {"KVFSCTL1", CTL_MAX_ARGS + 1, CTL_MAX_ARGS + 1, "", 0}, /* too many arguments */
        {"KVFSCTL1", 3, 10, "get\0x\0", 6},         /* cut short */
        {"KVFSCTL1", 1, 4, "zzz", 4},               /* no such command */
        {"KVFSCTL1", 1, 5, "dump", 5},              /* a command the daemon does not run */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int fd = connect_to(s.dir);
        CHECK(fd >= 0);
        CHECK(send_header(fd, bad[i].magic, bad[i].argc, bad[i].bytes));
        if (bad[i].blen) (void)!send(fd, bad[i].body, bad[i].blen, MSG_NOSIGNAL);
        shutdown(fd, SHUT_WR);
        char buf[64];
        while (recv(fd, buf, sizeof buf, 0) > 0) {
        }
        close(fd);
    }
    char out[64];
    CHECK_EQ(client_get(s.dir, out, sizeof out), 0);
    CHECK(strcmp(out, "value") == 0);
    serve_stop(&s);
}

/* A client that sends its request a byte at a time, each byte well within the time one read may wait, is cut off
 * when the time for the whole request is up, and the daemon goes on serving. That time counted per read: one byte
 * every 9 s held a connection thread for good, and MAX_CONNS such clients had the daemon refuse everyone as busy. */
TEST(ctl_request_has_a_deadline) {
    enum { TIMEOUT_MS = 300, TRICKLE_MS = 100 };
    CHECK_OK(ctl_set_request_timeout_ms(TIMEOUT_MS));
    served s;
    CHECK(serve_start(&s));
    int fd = connect_to(s.dir);
    CHECK(fd >= 0);
    CHECK(send_header(fd, "KVFSCTL1", 1, 1000)); /* more bytes than the trickle sends here */
    int64_t start = now_ms(), closed = -1;
    for (int i = 0; i < 40 && closed < 0; i++) { /* 4 s at most */
        (void)!send(fd, "x", 1, MSG_NOSIGNAL);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char b;
        if (poll(&p, 1, TRICKLE_MS) > 0 && recv(fd, &b, 1, 0) <= 0) closed = now_ms() - start;
    }
    close(fd);
    CHECK_MSG(closed >= 0, "a client sending a byte every %d ms kept its connection for 4 s", TRICKLE_MS);
    CHECK_MSG(closed >= TIMEOUT_MS - 50 && closed < 2000, "the connection was closed after %lld ms",
              (long long)closed);
    char out[64];
    CHECK_EQ(client_get(s.dir, out, sizeof out), 0);
    CHECK(strcmp(out, "value") == 0);
    serve_stop(&s);
    CHECK_OK(ctl_set_request_timeout_ms(CTL_REQUEST_TIMEOUT_MS));
    CHECK_EQ(ctl_set_request_timeout_ms(0), KV_EINVAL);
}

/* A request of more arguments than CTL_MAX_ARGS is malformed from its header on: the daemon held a pointer for each
 * argument (and its argument parser another), and 16 Mi empty ones, 16 MiB sent, cost it 144 MiB. The most a command
 * line can hold passes (the kernel charges a pointer per argument too, within at most 6 MiB); the client does not
 * send more. */
TEST(ctl_argument_count_is_bounded) {
    CHECK(CTL_MAX_ARGS >= (6u << 20) / 9);
    struct req_hdr h = {.argc = CTL_MAX_ARGS, .bytes = CTL_MAX_ARG_BYTES};
    memcpy(h.magic, "KVFSCTL1", 8);
    uint32_t argc, bytes;
    CHECK_EQ(ctl_request_header(&h, sizeof h, &argc, &bytes), 0);
    CHECK_EQ(argc, CTL_MAX_ARGS);
    h.argc = CTL_MAX_ARGS + 1;
    CHECK_EQ(ctl_request_header(&h, sizeof h, &argc, &bytes), -1);
    h.bytes = CTL_MAX_ARGS + 1; /* every one empty: the most pointers for the bytes */
    CHECK_EQ(ctl_request_header(&h, sizeof h, &argc, &bytes), -1);
    char **v = malloc(((size_t)CTL_MAX_ARGS + 2) * sizeof *v);
    CHECK(v != NULL);
    if (t_failed()) return;
    v[0] = "del";
    for (size_t i = 1; i <= CTL_MAX_ARGS; i++) v[i] = "";
    v[CTL_MAX_ARGS + 1] = NULL;
    uint8_t hdr[CTL_REQ_HDR_BYTES];
    char *body = NULL;
    size_t n;
    CHECK_EQ(ctl_request_encode((int)CTL_MAX_ARGS + 1, v, hdr, &body, &n), -1);
    CHECK(body == NULL);
    CHECK_EQ(ctl_request_encode((int)CTL_MAX_ARGS, v, hdr, &body, &n), 0);
    CHECK_EQ(ctl_request_header(hdr, sizeof hdr, &argc, &bytes), 0);
    free(body);
    free(v);
}

/* ---- The client's side: a fake daemon that answers one request with given bytes ---------------------------- */

typedef struct fake {
    int lfd;
    uint8_t reply[64];
    size_t n;
    pthread_t t;
} fake;

/* Take a request header from fd and close the descriptors that came with it: how many came. */
static int recv_header(int fd) {
    struct req_hdr h;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(3 * sizeof(int))];
    } cm;
    struct iovec iov = {&h, sizeof h};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf};
    int n = 0;
    if (recvmsg(fd, &m, MSG_WAITALL) <= 0) return 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int)), got[8];
        memcpy(got, CMSG_DATA(c), (size_t)(k > 8 ? 8 : k) * sizeof(int));
        for (int i = 0; i < k && i < 8; i++) close(got[i]);
        n += k;
    }
    return n;
}

static void *fake_thread(void *arg) {
    fake *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    recv_header(fd); /* then answer without reading the rest */
    char body[256];
    (void)!recv(fd, body, sizeof body, 0);
    (void)!send(fd, f->reply, f->n, MSG_NOSIGNAL);
    close(fd);
    return NULL;
}

/* What ctl_client_run makes of reply bytes: its return value, and *status. */
static int client_of_reply(const void *reply, size_t n, int *status) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fake", t_tmpdir());
    t_rmrf(dir);
    mkdir(dir, 0700);
    fake f = {.n = n};
    memcpy(f.reply, reply, n);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (snprintf(a.sun_path, sizeof a.sun_path, "%s/%s", dir, CTL_SOCKET_NAME) >= (int)sizeof a.sun_path) return -1;
    f.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (f.lfd < 0 || bind(f.lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(f.lfd, 1) != 0) return -1;
    pthread_create(&f.t, NULL, fake_thread, &f);
    char *argv[] = {"get", dir, "k", NULL};
    *status = -1000;
    int ran = ctl_client_run(dir, 3, argv, status);
    pthread_join(f.t, NULL);
    close(f.lfd);
    t_rmrf(dir);
    return ran;
}

static size_t reply_bytes(uint8_t *b, const char *magic, int32_t status, int32_t flags) {
    memcpy(b, magic, 8);
    memcpy(b + 8, &status, 4);
    memcpy(b + 12, &flags, 4);
    return 16;
}

/* The client ends with the status the daemon sends (main() exits with it, or raises -status as a signal): only the
 * statuses a command ends with are taken. A status of 256 was an exit status of 0; -SIGSTOP stopped the client,
 * -SIGKILL killed it, and INT32_MIN overflowed (128 - status). */
TEST(ctl_client_takes_only_statuses_a_command_ends_with) {
    uint8_t r[64];
    int status;
    int32_t good[] = {0, 1, 2, 255, -SIGINT, -SIGPIPE};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        CHECK_EQ(client_of_reply(r, reply_bytes(r, "KVFSRES1", good[i], 0), &status), 1);
        CHECK_EQ(status, good[i]);
    }
    int32_t bad[] = {256, 1 << 30, -SIGSTOP, -SIGKILL, -SIGSEGV, -1000, INT32_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(client_of_reply(r, reply_bytes(r, "KVFSRES1", bad[i], 0), &status), 1);
        CHECK_MSG(status == TOOL_FAIL, "a reply of status %d gave status %d", (int)bad[i], status);
    }
    /* flags the daemon never sends, alone or together */
    int32_t flags[] = {8, 1 << 30, 1 | 4, 2 | 4, -1};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        CHECK_EQ(client_of_reply(r, reply_bytes(r, "KVFSRES1", 0, flags[i]), &status), 1);
        CHECK_MSG(status == TOOL_FAIL, "a reply with flags %d gave status %d", (int)flags[i], status);
    }
    /* a bad magic, a reply cut short */
    CHECK_EQ(client_of_reply(r, reply_bytes(r, "KVFSRES2", 0, 0), &status), 1);
    CHECK_EQ(status, TOOL_FAIL);
    CHECK_EQ(client_of_reply(r, reply_bytes(r, "KVFSRES1", 0, 0) - 1, &status), 1);
    CHECK_EQ(status, TOOL_FAIL);
}

/* ---- A daemon of another user ------------------------------------------------------------------------------- */

/* The client sends its descriptors only to a daemon of its own user or root's: anything of another user's that
 * listens in a store directory got them (a terminal's too) along with the command. Needs root, to run a client and
 * a "daemon" as two other users. */
TEST(ctl_client_sends_nothing_to_a_daemon_of_another_user) {
    if (geteuid() != 0) {
        printf("# skipped: needs root to run as two other users\n");
        return;
    }
    /* a directory the other users reach (t_tmpdir's parent is its owner's only) */
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char dir[80];
    if (snprintf(dir, sizeof dir, "%s/kvfs-ctl-XXXXXX", tmp) >= (int)sizeof dir) strcpy(dir, "/tmp/kvfs-ctl-XXXXXX");
    CHECK(mkdtemp(dir) && chmod(dir, 0755) == 0 && chown(dir, 65534, 65534) == 0);
    int ready[2], got[2];
    CHECK(pipe(ready) == 0 && pipe(got) == 0);
    fflush(stdout);
    pid_t d = fork();
    if (d == 0) { /* the other user's "daemon": takes whatever descriptors come with a request */
        if (setgid(65534) != 0 || setuid(65534) != 0) _exit(1);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s/%s", dir, CTL_SOCKET_NAME);
        int l = socket(AF_UNIX, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0) _exit(1);
        chmod(a.sun_path, 0777);
        (void)!write(ready[1], "r", 1);
        int fd = accept(l, NULL, NULL);
        char n = (char)('0' + (fd >= 0 ? recv_header(fd) : 0));
        (void)!write(got[1], &n, 1);
        _exit(0);
    }
    char r;
    CHECK(read(ready[0], &r, 1) == 1);
    pid_t c = fork();
    if (c == 0) { /* a client of a third user */
        if (setgid(65533) != 0 || setuid(65533) != 0) _exit(100);
        char *argv[] = {"get", dir, "k", NULL};
        int status = -1000;
        int ran = ctl_client_run(dir, 3, argv, &status);
        _exit(ran == 1 && status == TOOL_FAIL ? 0 : 101);
    }
    int cst, dst;
    CHECK(waitpid(c, &cst, 0) == c);
    char n = '?';
    CHECK(read(got[0], &n, 1) == 1);
    CHECK(waitpid(d, &dst, 0) == d);
    CHECK_MSG(n == '0', "the other user's daemon received %c descriptors", n);
    CHECK(WIFEXITED(cst) && WEXITSTATUS(cst) == 0);
    for (int i = 0; i < 2; i++) close(ready[i]), close(got[i]);
    t_rmrf(dir);
}
