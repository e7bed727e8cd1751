/*
 * batch.c — write batches as the caller builds them, and the log record of a resolved batch.
 *
 * Invariants
 *  - A kv_batch owns copies of every key and value handed to it (in one growing buffer, ops refer to offsets), so
 *    the caller may reuse its buffers at once; except the values of the *_nocopy calls, which it only points to
 *    (op->ext) and the caller keeps valid until the batch is cleared or freed.
 *  - Keys are validated when added (1..KV_MAX_KEY bytes): a bad key fails the add, never the commit.
 *  - The record decoder checks every length against the record's end; a malformed record is KV_ECORRUPT.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "db_impl.h"
#include "dbformat.h"
#include "error.h"

int kv_batch_new(kv_batch **out) {
    if (!out) return kv_set_error(KV_EINVAL, "kv_batch_new: NULL out");
    *out = calloc(1, sizeof(kv_batch));
    return *out ? KV_OK : KV_ENOMEM;
}

void kv_batch_free(kv_batch *b) {
    if (!b) return;
    free(b->ops);
    bytes_free(&b->data);
    free(b);
}

void kv_batch_clear(kv_batch *b) {
    if (!b) return;
    b->n = 0;
    b->reads = false;
    b->streams = false;
    b->ext_bytes = 0;
    bytes_clear(&b->data);
}

size_t kv_batch_count(const kv_batch *b) { return b ? b->n : 0; }

static int check_key(const void *key, size_t klen) {
    if (!key || klen == 0) return kv_set_error(KV_EINVAL, "empty key");
    if (klen > KV_MAX_KEY) return kv_set_error(KV_EINVAL, "key of %zu bytes is longer than %u", klen, KV_MAX_KEY);
    return KV_OK;
}

static batch_op *new_op(kv_batch *b, int kind) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        batch_op *p = realloc(b->ops, cap * sizeof *p);
        if (!p) return NULL;
        b->ops = p;
        b->cap = cap;
    }
    batch_op *op = &b->ops[b->n];
    memset(op, 0, sizeof *op);
    op->kind = (uint8_t)kind;
    return op;
}

/* append bytes to the batch data, returning their offset in *off */
static int add_bytes(kv_batch *b, const void *p, uint64_t n, size_t *off) {
    if (n > SIZE_MAX / 2) return kv_set_error(KV_ENOMEM, "value of %" PRIu64 " bytes does not fit in memory", n);
    *off = b->data.len;
    if (n && !p) return kv_set_error(KV_EINVAL, "NULL value with non-zero length");
    return bytes_append(&b->data, p, (size_t)n) ? kv_set_error(KV_ENOMEM, "out of memory building a batch") : KV_OK;
}

static int add_keyed(kv_batch *b, int kind, uint8_t ks, const void *key, size_t klen, batch_op **out) {
    if (!b) return kv_set_error(KV_EINVAL, "NULL batch");
    int rc = check_key(key, klen);
    if (rc) return rc;
    size_t koff;
    rc = add_bytes(b, key, klen, &koff);
    if (rc) return rc;
    batch_op *op = new_op(b, kind);
    if (!op) return KV_ENOMEM;
    op->ks = ks;
    op->key_off = koff;
    op->klen = klen;
    *out = op;
    return KV_OK;
}

/* ops are committed to b->n only when fully built, so a failed add leaves the batch as it was (bar spare data) */
#define COMMIT_OP(b) ((b)->n++)

/* A PUT or WRITE_AT op whose bytes are copied into the batch, or only pointed to (nocopy). */
static int add_data_op(kv_batch *b, int kind, uint8_t ks, const void *key, size_t klen, uint64_t off,
                       const void *data, uint64_t len, bool copy) {
    if (kind == BOP_WRITE_AT && (off > KV_MAX_VALUE || len > KV_MAX_VALUE - off))
        return kv_set_error(KV_EINVAL, "write_at: a value ends at most at 2^63 bytes");
    if (len && !data) return kv_set_error(KV_EINVAL, "NULL value with non-zero length");
    batch_op *op;
    int rc = add_keyed(b, kind, ks, key, klen, &op);
    if (rc) return rc;
    size_t doff = 0;
    if (copy) {
        rc = add_bytes(b, data, len, &doff);
        if (rc) return rc;
    }
    op->off = off;
    op->data_off = doff;
    op->ext = copy ? NULL : data;
    op->len = len;
    COMMIT_OP(b);
    if (!copy) b->ext_bytes += len;
    if (kind == BOP_WRITE_AT) b->reads = true;
    return KV_OK;
}

int kv_batch_put_ks(kv_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, uint64_t vlen) {
    return add_data_op(b, BOP_PUT, ks, key, klen, 0, val, vlen, true);
}

int kv_batch_put_nocopy(kv_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, uint64_t vlen) {
    return add_data_op(b, BOP_PUT, ks, key, klen, 0, val, vlen, false);
}

int kv_batch_delete_ks(kv_batch *b, uint8_t ks, const void *key, size_t klen) {
    batch_op *op;
    int rc = add_keyed(b, BOP_DELETE, ks, key, klen, &op);
    if (rc) return rc;
    COMMIT_OP(b);
    return KV_OK;
}

int kv_batch_put(kv_batch *b, const void *key, size_t klen, const void *val, uint64_t vlen) {
    return kv_batch_put_ks(b, 0, key, klen, val, vlen);
}

int kv_batch_delete(kv_batch *b, const void *key, size_t klen) { return kv_batch_delete_ks(b, 0, key, klen); }

/* A MOVE or COPY_RANGE op, from one key to another, built but not committed (*out). */
static int add_pair(kv_batch *b, int kind, uint8_t from_ks, const void *from, size_t flen, uint8_t to_ks,
                    const void *to, size_t tlen, batch_op **out) {
    int rc = check_key(to, tlen);
    if (rc) return rc;
    rc = add_keyed(b, kind, from_ks, from, flen, out);
    if (rc) return rc;
    size_t off;
    rc = add_bytes(b, to, tlen, &off);
    if (rc) return rc;
    *out = &b->ops[b->n]; /* the op, where it is now */
    (*out)->ks2 = to_ks;
    (*out)->key2_off = off;
    (*out)->k2len = tlen;
    return KV_OK;
}

int kv_batch_move(kv_batch *b, uint8_t from_ks, const void *from, size_t flen, uint8_t to_ks, const void *to,
                  size_t tlen) {
    batch_op *op;
    int rc = add_pair(b, BOP_MOVE, from_ks, from, flen, to_ks, to, tlen, &op);
    if (rc) return rc;
    COMMIT_OP(b);
    b->reads = true;
    return KV_OK;
}

int kv_batch_copy_range(kv_batch *b, uint8_t from_ks, const void *from, size_t flen, uint64_t from_off, uint8_t to_ks,
                        const void *to, size_t tlen, uint64_t to_off, uint64_t len) {
    if (to_off > KV_MAX_VALUE || len > KV_MAX_VALUE - to_off)
        return kv_set_error(KV_EINVAL, "copy_range: a value ends at most at 2^63 bytes");
    batch_op *op;
    int rc = add_pair(b, BOP_COPY_RANGE, from_ks, from, flen, to_ks, to, tlen, &op);
    if (rc) return rc;
    op->off = from_off;
    op->off2 = to_off;
    op->len = len;
    COMMIT_OP(b);
    b->reads = true;
    return KV_OK;
}

int kv_batch_write_at(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, const void *data,
                      size_t len) {
    return add_data_op(b, BOP_WRITE_AT, ks, key, klen, off, data, len, true);
}

int kv_batch_write_at_nocopy(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, const void *data,
                             size_t len) {
    return add_data_op(b, BOP_WRITE_AT, ks, key, klen, off, data, len, false);
}

/* A TRUNCATE (off: the new size) or ZERO_RANGE op: it reads the current value. */
static int add_size_op(kv_batch *b, int kind, uint8_t ks, const void *key, size_t klen, uint64_t off, uint64_t len) {
    batch_op *op;
    int rc = add_keyed(b, kind, ks, key, klen, &op);
    if (rc) return rc;
    op->off = off;
    op->len = len;
    COMMIT_OP(b);
    b->reads = true;
    return KV_OK;
}

int kv_batch_truncate(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t size) {
    if (size > KV_MAX_VALUE) return kv_set_error(KV_EINVAL, "truncate: a value is at most 2^63 bytes");
    return add_size_op(b, BOP_TRUNCATE, ks, key, klen, size, 0);
}

int kv_batch_zero_range(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, uint64_t len) {
    if (off > KV_MAX_VALUE || len > KV_MAX_VALUE - off)
        return kv_set_error(KV_EINVAL, "zero_range: a value ends at most at 2^63 bytes");
    return add_size_op(b, BOP_ZERO_RANGE, ks, key, klen, off, len);
}

int kv_batch_put_stream(kv_batch *b, uint8_t ks, const void *key, size_t klen, kv_stream *s) {
    if (!s) return kv_set_error(KV_EINVAL, "NULL stream");
    batch_op *op;
    int rc = add_keyed(b, BOP_PUT_STREAM, ks, key, klen, &op);
    if (rc) return rc;
    op->stream = s;
    b->streams = true;
    COMMIT_OP(b);
    return KV_OK;
}

/* ---- the log record --------------------------------------------------------------------------------------------- */

int batch_record_decode(const uint8_t *rec, size_t len, uint64_t *seq, int64_t *ts, size_t *count,
                        const uint8_t **ops, const char *name, uint64_t offset) {
    const uint8_t *lim = rec + len, *p;
    uint64_t t, n;
    if (len < 8) goto bad;
    *seq = get_fixed64(rec);
    if (*seq > KV_MAX_SEQUENCE) goto bad; /* an entry's trailer holds 56 bits of it: the memtable asserts that */
    p = get_varint64(rec + 8, lim, &t);
    if (!p) goto bad;
    p = get_varint64(p, lim, &n);
    /* The smallest operation (a delete of a one-byte key) takes BATCH_OP_MIN bytes: a larger count is damage, and
     * would have the change feed allocate room for it (kv_get_batch) before the operations are read. */
    if (!p || n > (uint64_t)(lim - p) / BATCH_OP_MIN) goto bad;
    *ts = (int64_t)t;
    *count = (size_t)n;
    *ops = p;
    return KV_OK;
bad:
    return kv_set_error(KV_ECORRUPT, "%s: malformed batch record at offset %" PRIu64, name, offset);
}

const uint8_t *batch_record_next_op(const uint8_t *p, const uint8_t *lim, resolved_op *op) {
    if (p >= lim) return NULL;
    op->type = *p++;
    if (op->type != KV_TYPE_VALUE && op->type != KV_TYPE_DELETE && op->type != KV_TYPE_BLOB) return NULL;
    uint64_t n;
    p = get_lenprefixed(p, lim, &op->ukey, &n);
    if (!p || n < 2) return NULL;
    op->ulen = (size_t)n;
    op->payload = NULL;
    op->plen = 0;
    if (op->type != KV_TYPE_DELETE) {
        p = get_lenprefixed(p, lim, &op->payload, &n);
        if (!p) return NULL;
        op->plen = (size_t)n;
    }
    return p;
}
