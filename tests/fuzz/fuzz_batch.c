/*
 * fuzz_batch.c — the input of `kvfs batch` (mount/tools_data.c, tool_batch_parse; the key and value text forms of
 * mount/keyfmt.c): lines of `put KEY VALUE`, `put KEY`, `del KEY`, comments and blank lines, from a user's stdin and,
 * when the store is mounted, parsed inside the mount daemon.
 *
 * Input: the text, as it is.
 * Checks: the parser never crashes and ends with TOOL_OK or TOOL_FAIL (its message goes to /dev/null); what it takes
 * is keyspace-0 puts and deletes of keys of 1 to KV_MAX_KEY bytes; written back in the canonical text form (keyfmt_key,
 * keyfmt_value, one operation a line) the batch parses again to the very same operations.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "keyfmt.h"
#include "kv.h"
#include "store.h"
#include "tools.h"

static tool_ctx *new_ctx(void) {
    static int null_fd = -1;
    if (null_fd < 0) null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    FUZZ_CHECK(null_fd >= 0);
    int fds[3] = {-1, null_fd, null_fd};
    tool_ctx *c = malloc(sizeof *c);
    FUZZ_CHECK(c != NULL);
    tool_ctx_init(c, NULL, "D", fds);
    return c;
}

/* Append s[0..n) to a growing buffer. */
static void add(char **buf, size_t *len, size_t *cap, const void *s, size_t n) {
    if (*len + n > *cap) {
        *cap = (*len + n) * 2 + 64;
        *buf = realloc(*buf, *cap);
        FUZZ_CHECK(*buf != NULL);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
}

/* The batch in canonical text form. */
static char *canonical(const store_batch *b, size_t *len) {
    char *out = NULL;
    size_t cap = 0;
    *len = 0;
    for (size_t i = 0; i < b->n; i++) {
        const store_op *op = &b->ops[i];
        char *k = malloc(KEYFMT_KEY_MAX(op->klen) + 1);
        FUZZ_CHECK(k != NULL && keyfmt_key(k, store_op_key(b, op), op->klen) > 0);
        add(&out, len, &cap, op->kind == STORE_PUT ? "put " : "del ", 4);
        add(&out, len, &cap, k, strlen(k));
        free(k);
        if (op->kind == STORE_PUT) {
            char *v = malloc(3 * op->dlen + 1);
            FUZZ_CHECK(v != NULL);
            size_t vn = keyfmt_value(v, store_op_data(b, op), op->dlen, true, NULL);
            add(&out, len, &cap, " ", 1);
            add(&out, len, &cap, v, vn);
            free(v);
        }
        add(&out, len, &cap, "\n", 1);
    }
    return out;
}

static bool same_batch(const store_batch *a, const store_batch *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        const store_op *x = &a->ops[i], *y = &b->ops[i];
        if (x->kind != y->kind || x->ks != y->ks || x->klen != y->klen ||
            memcmp(store_op_key(a, x), store_op_key(b, y), x->klen) != 0)
            return false;
        if (x->kind == STORE_PUT &&
            (x->dlen != y->dlen || (x->dlen && memcmp(store_op_data(a, x), store_op_data(b, y), x->dlen) != 0)))
            return false;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tool_ctx *c = new_ctx();
    store_batch b;
    store_batch_init(&b);
    int rc = tool_batch_parse(c, (const char *)data, size, &b);
    FUZZ_CHECK(rc == TOOL_OK || rc == TOOL_FAIL);
    if (rc == TOOL_OK) {
        FUZZ_CHECK(b.error == 0);
        for (size_t i = 0; i < b.n; i++) {
            const store_op *op = &b.ops[i];
            FUZZ_CHECK(op->kind == STORE_PUT || op->kind == STORE_DELETE);
            FUZZ_CHECK(op->ks == STORE_KS_DATA && op->klen >= 1 && op->klen <= KV_MAX_KEY);
        }
        size_t n;
        char *text = canonical(&b, &n);
        store_batch b2;
        store_batch_init(&b2);
        FUZZ_CHECK(tool_batch_parse(c, text ? text : "", n, &b2) == TOOL_OK);
        FUZZ_CHECK(same_batch(&b, &b2));
        store_batch_free(&b2);
        free(text);
    }
    store_batch_free(&b);
    tout_flush(&c->err);
    free(c);
    return 0;
}
