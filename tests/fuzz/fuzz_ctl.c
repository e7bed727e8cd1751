/*
 * fuzz_ctl.c — the control socket's protocol (mount/ctl.c, ctl.h): what the mount daemon makes of a request a local
 * user sends, and what a kvfs client makes of a reply.
 *
 * Input: one byte of mode. Bit 0 clear: a request to the daemon: the next 16 bytes are its header (magic, argc,
 * bytes), then its body (as many bytes as the header says), then what the command reads on stdin. Bit 0 set: the rest
 * is a reply to the client.
 * Checks, a request: ctl_request_header accepts exactly a whole header with the magic, 1 <= argc <= bytes <= 16 MiB
 * and argc <= 2^20 (CTL_MAX_ARGS); ctl_request_args accepts exactly a body of argc NUL-terminated strings, and what it accepts encodes back
 * (ctl_request_encode) to the same header and body. An accepted request is then run as the daemon runs it
 * (tools_serve, the argument parser and the command) on a small store made for each input, with stdin from the
 * input and stdout and stderr to /dev/null (KVFS_FUZZ_SHOW=1: to the harness's own): it must end with a status, never crash. Not run: checkpoint (it writes
 * its DEST, which may be any path) and anything with --follow (it runs until cancelled). Bit 1 of the mode: a store
 * without the batch log.
 * Checks, a reply: ctl_reply_decode's answer is one of its kinds; a status it takes is one a command ends with (0 to
 * 255, -SIGINT, -SIGPIPE); a reply it takes encodes back (ctl_reply_encode) to the same bytes; "cut" only for fewer
 * bytes than the reply's flags announce.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl.h"
#include "fuzz.h"
#include "kv.h"
#include "tmpfile.h"
#include "tools.h"

static void check_header(const uint8_t *h, size_t n) {
    uint32_t argc = 0, bytes = 0;
    int rc = ctl_request_header(h, n, &argc, &bytes);
    bool want = false;
    if (n == CTL_REQ_HDR_BYTES) {
        uint32_t a, b;
        memcpy(&a, h + 8, 4);
        memcpy(&b, h + 12, 4);
        want = memcmp(h, "KVFSCTL1", 8) == 0 && a >= 1 && a <= b && b <= CTL_MAX_ARG_BYTES && a <= CTL_MAX_ARGS;
        if (want && rc == 0) FUZZ_CHECK(argc == a && bytes == b);
    }
    FUZZ_CHECK((rc == 0) == want);
}

/* A store of its own for this input, with a few keys (one in a blob file), a delete, and batches in its log. */
static kv_db *fresh_store(const char *dir, bool log) {
    kv_options o;
    kv_options_init(&o);
    kvfs_store_options(&o, NULL);
    o.space_reserve = false; /* its 9 MiB file at every input: slow, and not what is fuzzed */
    if (!log) o.batch_log_max_batches = o.batch_log_max_bytes = 0;
    o.create_if_missing = true;
    kv_db *db;
    FUZZ_CHECK(kv_open(dir, &o, &db) == KV_OK);
    static uint8_t big[KVFS_BLOB_THRESHOLD + 10];
    memset(big, 'b', sizeof big);
    FUZZ_CHECK(kv_put(db, "a", 1, "1", 1, 0) == KV_OK);
    FUZZ_CHECK(kv_put(db, "a/b", 3, "two", 3, 0) == KV_OK);
    FUZZ_CHECK(kv_put(db, "big", 3, big, sizeof big, 0) == KV_OK);
    FUZZ_CHECK(kv_put(db, "gone", 4, "x", 1, 0) == KV_OK);
    FUZZ_CHECK(kv_delete(db, "gone", 4, 0) == KV_OK);
    return db;
}

static bool runnable(int argc, char **argv) {
    if (strcmp(argv[0], "checkpoint") == 0) return false;
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--follow", 8) == 0) return false;
    return true;
}

static void run(int argc, char **argv, const uint8_t *in, size_t inlen, bool log) {
    char inpath[PATH_MAX];
    fuzz_write_file("stdin", in, inlen, inpath);
    const char *dir = fuzz_store_dir();
    kv_db *db = fresh_store(dir, log);
    /* KVFS_FUZZ_SHOW=1: the commands' output on this process's stdout and stderr, to see what an input does */
    bool show = getenv("KVFS_FUZZ_SHOW") != NULL;
    int fds[3] = {open(inpath, O_RDONLY | O_CLOEXEC), show ? dup(1) : open("/dev/null", O_WRONLY | O_CLOEXEC),
                  show ? dup(2) : open("/dev/null", O_WRONLY | O_CLOEXEC)};
    int conn[2];
    FUZZ_CHECK(fds[0] >= 0 && fds[1] >= 0 && fds[2] >= 0);
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, conn) == 0);
    tool_follow_pos pos = {0};
    int status = tools_serve(db, dir, argc, argv, fds, conn[0], &pos);
    FUZZ_CHECK((status >= 0 && status <= 2) || status == -SIGPIPE || status == -SIGINT);
    FUZZ_CHECK(!pos.valid);
    for (int i = 0; i < 3; i++) close(fds[i]);
    close(conn[0]);
    close(conn[1]);
    FUZZ_CHECK(kv_close(db) == KV_OK);
    kv_free(db);
}

static void request(fuzz_in *f, unsigned mode) {
    size_t hn = fuzz_left(f) < CTL_REQ_HDR_BYTES ? fuzz_left(f) : CTL_REQ_HDR_BYTES;
    check_header(f->p, hn);
    uint32_t argc, bytes;
    if (ctl_request_header(f->p, hn, &argc, &bytes) != 0) return;
    const uint8_t *hdr = f->p;
    f->p += hn;
    if (fuzz_left(f) < bytes) return; /* the daemon waits for the rest, then drops the connection */
    char *body = malloc(bytes); /* exact size, as read_body leaves it */
    memcpy(body, f->p, bytes);
    f->p += bytes;
    bool oom;
    char **argv = ctl_request_args(body, bytes, argc, &oom);
    FUZZ_CHECK(!oom);
    size_t nuls = 0;
    for (size_t i = 0; i < bytes; i++) nuls += body[i] == 0;
    FUZZ_CHECK((argv != NULL) == (body[bytes - 1] == 0 && nuls == argc));
    if (argv) {
        FUZZ_CHECK(argv[argc] == NULL);
        uint8_t h2[CTL_REQ_HDR_BYTES];
        char *b2;
        size_t n2;
        FUZZ_CHECK(ctl_request_encode((int)argc, argv, h2, &b2, &n2) == 0);
        FUZZ_CHECK(n2 == bytes && memcmp(b2, body, bytes) == 0 && memcmp(h2, hdr, CTL_REQ_HDR_BYTES) == 0);
        free(b2);
        if (runnable((int)argc, argv)) run((int)argc, argv, f->p, fuzz_left(f), !(mode & 2));
    }
    free(argv);
    free(body);
}

static void reply(const uint8_t *p, size_t n) {
    ctl_reply r;
    enum ctl_reply_kind k = ctl_reply_decode(p, n, &r);
    FUZZ_CHECK(k == CTL_REPLY_STATUS || k == CTL_REPLY_DENIED || k == CTL_REPLY_BUSY || k == CTL_REPLY_FOLLOW ||
               k == CTL_REPLY_CUT || k == CTL_REPLY_BAD);
    int32_t flags = 0;
    if (n >= CTL_REPLY_BYTES) memcpy(&flags, p + 12, 4);
    if (k == CTL_REPLY_CUT)
        FUZZ_CHECK(n < CTL_REPLY_BYTES || (flags == 4 && n < CTL_REPLY_BYTES + CTL_FOLLOW_BYTES));
    if (k == CTL_REPLY_CUT || k == CTL_REPLY_BAD) return;
    FUZZ_CHECK((r.status >= 0 && r.status <= 255) || r.status == -SIGINT || r.status == -SIGPIPE);
    uint8_t buf[CTL_REPLY_BYTES + CTL_FOLLOW_BYTES];
    size_t m = ctl_reply_encode(buf, k, &r);
    FUZZ_CHECK(m == n && memcmp(buf, p, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned mode = fuzz_u8(&f);
    if (mode & 1) {
        size_t n = fuzz_left(&f);
        uint8_t *p = malloc(n ? n : 1); /* exact size */
        memcpy(p, f.p, n);
        reply(p, n);
        free(p);
    } else {
        request(&f, mode);
    }
    return 0;
}
