/*
 * test_fs_fuse.c — the FUSE device read hook (fs/fs_fuse.c) on requests written by hand into a socket that stands in
 * for /dev/fuse: what it answers itself, what it hands libfuse, what it leaves alone.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fs_fuse.h"
#include "t.h"

enum { IN_HDR = 40, OP_RENAME = 12, OP_BATCH_FORGET = 42, OP_RENAME2 = 45 };

/* A RENAME (or RENAME2, with flags) from node dir's `from` to newdir's `to`, into buf; its length. */
static size_t make_rename(uint8_t *buf, uint32_t op, uint64_t unique, uint64_t dir, uint64_t newdir, const char *from,
                          const char *to) {
    size_t skip = op == OP_RENAME ? 8 : 16, n = IN_HDR + skip;
    memset(buf, 0, n);
    memcpy(buf + IN_HDR, &newdir, 8);
    memcpy(buf + n, from, strlen(from) + 1);
    n += strlen(from) + 1;
    memcpy(buf + n, to, strlen(to) + 1);
    n += strlen(to) + 1;
    uint32_t len = (uint32_t)n;
    memcpy(buf, &len, 4);
    memcpy(buf + 4, &op, 4);
    memcpy(buf + 8, &unique, 8);
    memcpy(buf + 16, &dir, 8);
    return n;
}

static uint32_t opcode(const uint8_t *buf) {
    uint32_t op;
    memcpy(&op, buf + 4, 4);
    return op;
}

/* Send a request through the pair and run the hook on it; what the hook read, into got (its length returned). */
static ssize_t through_hook(int sv[2], const uint8_t *req, size_t n, uint8_t *got, size_t cap) {
    if (send(sv[0], req, n, 0) != (ssize_t)n) return -1;
    return kvfs_fuse_read_hook(sv[1], got, cap);
}

TEST(fuse_hook_answers_a_rename_onto_itself) {
    /* libfuse's high-level rename write-locks both names' node: the same one here, so it waited for ever */
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    uint8_t req[256], got[256], reply[64];
    for (int k = 0; k < 2; k++) {
        uint32_t op = k ? OP_RENAME2 : OP_RENAME;
        size_t n = make_rename(req, op, 77 + (uint64_t)k, 5, 5, "b", "b");
        CHECK(through_hook(sv, req, n, got, sizeof got) == (ssize_t)n);
        CHECK(opcode(got) == OP_BATCH_FORGET); /* libfuse gets a request it answers with nothing */
        uint32_t count;
        memcpy(&count, got + IN_HDR, 4);
        CHECK(count == 0);
        CHECK(recv(sv[0], reply, sizeof reply, MSG_DONTWAIT) == 16); /* the hook's own answer */
        uint32_t len;
        int32_t err;
        uint64_t unique;
        memcpy(&len, reply, 4);
        memcpy(&err, reply + 4, 4);
        memcpy(&unique, reply + 8, 8);
        CHECK(len == 16);
        CHECK(err == -ENOENT);
        CHECK(unique == 77 + (uint64_t)k);
    }
    close(sv[0]);
    close(sv[1]);
}

TEST(fuse_hook_leaves_other_renames_to_libfuse) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    uint8_t req[256], got[256], reply[64];
    struct {
        uint64_t newdir;
        const char *from, *to;
    } cases[] = {{5, "b", "c"}, {6, "b", "b"}, {5, "b", "bb"}, {5, "bb", "b"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = make_rename(req, OP_RENAME, 100 + i, 5, cases[i].newdir, cases[i].from, cases[i].to);
        CHECK(through_hook(sv, req, n, got, sizeof got) == (ssize_t)n);
        CHECK(memcmp(got, req, n) == 0); /* untouched */
        CHECK(recv(sv[0], reply, sizeof reply, MSG_DONTWAIT) == -1 && errno == EAGAIN); /* nothing answered */
    }
    /* a truncated body (no second name) is not taken for one onto itself */
    size_t n = make_rename(req, OP_RENAME, 200, 5, 5, "b", "b") - 2;
    uint32_t len = (uint32_t)n;
    memcpy(req, &len, 4);
    CHECK(through_hook(sv, req, n, got, sizeof got) == (ssize_t)n);
    CHECK(opcode(got) == OP_RENAME);
    close(sv[0]);
    close(sv[1]);
}
