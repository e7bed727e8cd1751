/*
 * store.c — the backend-independent half of the store interface: building batches and small helpers on top of the
 * operations table.
 *
 * Invariants
 *  - A batch owns a copy of every key and value handed to it, in one growing byte buffer; ops refer to offsets
 *    (not pointers), so growing the buffer never invalidates an op. The exception: the values of the *_nocopy
 *    builders, which an op points to (op->ext) and the caller keeps unchanged until the batch is written.
 *  - The first allocation failure (or a NULL value with a length) is remembered in b->error and every later
 *    builder call does nothing; the backends refuse a batch whose error is set, so a half-built batch is never
 *    applied.
 */
#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void store_buf_free(store_buf *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

void store_batch_init(store_batch *b) { memset(b, 0, sizeof *b); }

void store_batch_clear(store_batch *b) {
    b->n = 0;
    b->blen = 0;
    b->error = 0;
}

void store_batch_free(store_batch *b) {
    free(b->ops);
    free(b->bytes);
    store_batch_init(b);
}

/* Append bytes to the batch buffer; returns their offset, or SIZE_MAX after setting b->error. */
static size_t add_bytes(store_batch *b, const void *p, size_t n) {
    if (b->error) return SIZE_MAX;
    if (b->blen + n > b->bcap) {
        size_t cap = b->bcap ? b->bcap : 256;
        while (cap < b->blen + n) cap *= 2;
        uint8_t *nb = realloc(b->bytes, cap);
        if (!nb) {
            b->error = -ENOMEM;
            return SIZE_MAX;
        }
        b->bytes = nb;
        b->bcap = cap;
    }
    size_t off = b->blen;
    if (n) memcpy(b->bytes + off, p, n);
    b->blen += n;
    return off;
}

static store_op *add_op(store_batch *b, enum store_op_kind kind, uint8_t ks, const void *key, size_t klen) {
    if (b->error) return NULL;
    if (klen == 0 || klen > STORE_MAX_KEY) {
        b->error = klen ? -ENAMETOOLONG : -EINVAL;
        return NULL;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        store_op *no = realloc(b->ops, cap * sizeof *no);
        if (!no) {
            b->error = -ENOMEM;
            return NULL;
        }
        b->ops = no;
        b->cap = cap;
    }
    size_t off = add_bytes(b, key, klen);
    if (off == SIZE_MAX) return NULL;
    store_op *op = &b->ops[b->n++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->ks = ks;
    op->key_off = off;
    op->klen = klen;
    return op;
}

/* A put or write_at whose bytes are copied into the batch, or only pointed to. */
static void add_data_op(store_batch *b, enum store_op_kind kind, uint8_t ks, const void *key, size_t klen,
                        uint64_t off, const void *data, size_t len, bool copy) {
    store_op *op = add_op(b, kind, ks, key, klen);
    if (!op) return;
    op->off = off;
    if (copy) op->data_off = add_bytes(b, data, len);
    else if (len && !data) b->error = -EINVAL; /* store_op_data would read the batch's own bytes instead */
    else op->ext = len ? data : NULL;
    op->dlen = len;
    if (b->error) b->n--;
}

void store_batch_put(store_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, size_t vlen) {
    add_data_op(b, STORE_PUT, ks, key, klen, 0, val, vlen, true);
}

void store_batch_put_nocopy(store_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, size_t vlen) {
    add_data_op(b, STORE_PUT, ks, key, klen, 0, val, vlen, false);
}

void store_batch_delete(store_batch *b, uint8_t ks, const void *key, size_t klen) {
    if (klen > STORE_MAX_KEY) return; /* no such key can exist */
    add_op(b, STORE_DELETE, ks, key, klen);
}

void store_batch_write_at(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, const void *data,
                          size_t len) {
    add_data_op(b, STORE_WRITE_AT, ks, key, klen, off, data, len, true);
}

void store_batch_write_at_nocopy(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off,
                                 const void *data, size_t len) {
    add_data_op(b, STORE_WRITE_AT, ks, key, klen, off, data, len, false);
}

void store_batch_truncate(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t size) {
    store_op *op = add_op(b, STORE_TRUNCATE, ks, key, klen);
    if (op) op->off = size;
}

void store_batch_zero_range(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, uint64_t len) {
    store_op *op = add_op(b, STORE_ZERO_RANGE, ks, key, klen);
    if (op) op->off = off, op->len = len;
}

/* An op from one key to another: STORE_MOVE, STORE_COPY_RANGE (NULL on failure, b->error set). */
static store_op *add_pair_op(store_batch *b, enum store_op_kind kind, uint8_t from_ks, const void *from, size_t flen,
                             uint8_t to_ks, const void *to, size_t tlen) {
    if (!b->error && (tlen == 0 || tlen > STORE_MAX_KEY)) {
        b->error = tlen ? -ENAMETOOLONG : -EINVAL;
        return NULL;
    }
    store_op *op = add_op(b, kind, from_ks, from, flen);
    if (!op) return NULL;
    op->to_ks = to_ks;
    op->to_off = add_bytes(b, to, tlen);
    op->tlen = tlen;
    if (!b->error) return op;
    b->n--;
    return NULL;
}

void store_batch_move(store_batch *b, uint8_t from_ks, const void *from, size_t flen, uint8_t to_ks, const void *to,
                      size_t tlen) {
    (void)add_pair_op(b, STORE_MOVE, from_ks, from, flen, to_ks, to, tlen);
}

void store_batch_copy_range(store_batch *b, uint8_t from_ks, const void *from, size_t flen, uint64_t from_off,
                            uint8_t to_ks, const void *to, size_t tlen, uint64_t to_off, uint64_t len) {
    store_op *op = add_pair_op(b, STORE_COPY_RANGE, from_ks, from, flen, to_ks, to, tlen);
    if (op) op->off = from_off, op->to_pos = to_off, op->len = len;
}

size_t store_prefix_end(const void *prefix, size_t plen, uint8_t *out) {
    const uint8_t *p = prefix;
    size_t n = plen;
    while (n > 0 && p[n - 1] == 0xff) n--;
    if (n == 0) return 0;
    memcpy(out, p, n);
    out[n - 1]++;
    return n;
}

/* A scan whose start is longer than any key: keys >= start are those >= its first STORE_MAX_KEY bytes (cut) except
 * cut itself, a proper prefix of start (a key that differs from cut within it is on the same side of start as of cut,
 * and none is longer). An end longer than any key: keys < end are those < prefix_end(cut), by the same argument. */
typedef struct long_bound {
    store_scan_fn cb;
    void *ctx;
    const uint8_t *skip; /* the cut start, which is < start */
    uint64_t left;       /* keys the caller may still get (0: no limit) */
    bool limited;
} long_bound;

static int skip_cut_start(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val,
                          size_t vlen) {
    long_bound *lb = ctx;
    if (klen == STORE_MAX_KEY && memcmp(key, lb->skip, klen) == 0) return 0;
    int r = lb->cb(lb->ctx, key, klen, info, val, vlen);
    if (!r && lb->limited && --lb->left == 0) r = 1;
    return r;
}

int store_scan(store *s, uint8_t ks, const void *start, size_t slen, const void *end, size_t elen, uint64_t limit,
               bool forward, bool with_values, store_scan_fn cb, void *ctx) {
    if (slen <= STORE_MAX_KEY && elen <= STORE_MAX_KEY)
        return s->ops->scan(s, ks, start, slen, end, elen, limit, forward, with_values, cb, ctx);
    uint8_t *end2 = NULL;
    if (elen > STORE_MAX_KEY) {
        if (!(end2 = malloc(STORE_MAX_KEY))) return -ENOMEM;
        elen = store_prefix_end(end, STORE_MAX_KEY, end2);
        end = end2;
        if (elen == 0) end = NULL; /* all 0xff: every key is below */
    }
    long_bound lb = {cb, ctx, start, limit, limit != 0};
    bool cut = slen > STORE_MAX_KEY;
    if (cut) slen = STORE_MAX_KEY;
    /* With a cut start the callback counts the limit itself: the key it skips must not use one up. */
    int rc = s->ops->scan(s, ks, start, slen, end, elen, cut ? 0 : limit, forward, with_values,
                          cut ? skip_cut_start : cb, cut ? (void *)&lb : ctx);
    free(end2);
    return rc;
}

static int stop_at_first(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val,
                         size_t vlen) {
    (void)key, (void)klen, (void)info, (void)val, (void)vlen;
    *(int *)ctx = 1;
    return 1;
}

int store_has_prefix(store *s, uint8_t ks, const void *prefix, size_t plen) {
    uint8_t *end = malloc(plen ? plen : 1);
    if (!end) return -ENOMEM;
    size_t elen = store_prefix_end(prefix, plen, end);
    int found = 0;
    int rc = store_scan(s, ks, prefix, plen, end, elen, 1, true, false, stop_at_first, &found);
    free(end);
    return rc < 0 ? rc : found;
}
