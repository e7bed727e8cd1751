/*
 * store_kv.c — the store interface over the kvfs engine, through its public header kv.h only (fs/ knows nothing
 * of the on-disk format).
 *
 * Invariants
 *  - A store batch becomes exactly one kv_batch written with one kv_write: atomicity is the engine's.
 *  - Engine status codes become errno values in one place (errno_of); nothing else here interprets them.
 *  - Scans use an iterator and read a value only when asked, so listing a directory of large files never reads
 *    their contents (kv_iter_info gives the size and time without the value).
 *  - The engine handle belongs to whoever opened it (the daemon): destroy releases only this wrapper.
 *  - A failure the caller can only see as EIO or ENOSPC (a damaged file, a full disk, a failed fsync) is given with
 *    the engine's message to the error log set by store_kv_set_error_log, at most one message per kind of error
 *    every 10 s (the rest are counted and their number given with the next).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "kv.h"
#include "store.h"

#define ERROR_LOG_KINDS 16        /* engine codes -1 .. -15 */
#define ERROR_LOG_INTERVAL_S 10

typedef struct kv_store {
    store base;
    kv_db *db;
    char *datadir;
    store_error_log_fn log;
    void *log_ctx;
    pthread_mutex_t log_mu;
    time_t logged_at[ERROR_LOG_KINDS];   /* last message of each kind (monotonic seconds) */
    uint64_t suppressed[ERROR_LOG_KINDS]; /* failures of that kind since it, not given */
} kv_store;

/* Give a failure of op to the error log (see the invariants). Errors a caller sees for what they are, or causes
 * itself (absent keys, bad arguments, a read-only store, a closed one at unmount), are not logged. */
static void log_failure(kv_store *k, const char *op, int rc) {
    if (!k->log || rc == KV_OK || rc == KV_ENOTFOUND || rc == KV_EINVAL || rc == KV_EREADONLY || rc == KV_ECLOSED)
        return;
    int kind = -rc > 0 && -rc < ERROR_LOG_KINDS ? -rc : 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&k->log_mu);
    bool quiet = k->logged_at[kind] && now.tv_sec - k->logged_at[kind] < ERROR_LOG_INTERVAL_S;
    uint64_t before = k->suppressed[kind];
    if (quiet) k->suppressed[kind]++;
    else {
        k->logged_at[kind] = now.tv_sec ? now.tv_sec : 1;
        k->suppressed[kind] = 0;
    }
    pthread_mutex_unlock(&k->log_mu);
    if (quiet) return;
    char msg[1024];
    if (before)
        snprintf(msg, sizeof msg, "%s failed: %s (and %llu more such failures since the last such message)", op,
                 kv_errmsg(), (unsigned long long)before);
    else
        snprintf(msg, sizeof msg, "%s failed: %s", op, kv_errmsg());
    k->log(k->log_ctx, msg);
}

static kv_store *KS(store *s) { return (kv_store *)s; }

static int errno_of(int kv) {
    switch (kv) {
    case KV_OK: return 0;
    case KV_ENOTFOUND: return -ENOENT;
    case KV_ENOSPC: return -ENOSPC;
    case KV_EREADONLY: return -EROFS;
    case KV_ENOMEM: return -ENOMEM;
    case KV_EINVAL: return -EINVAL;
    case KV_EBUSY: return -EBUSY;
    case KV_EPERM: return -EACCES;
    default: return -EIO; /* corruption, I/O errors, a closed store: the kernel can only say EIO */
    }
}

static kv_db *DB(store *s) { return ((kv_store *)s)->db; }

/* The errno value of a failed op, given to the error log first. */
static int failed(store *s, const char *op, int rc) {
    log_failure(KS(s), op, rc);
    return errno_of(rc);
}

static int kvs_write(store *s, const store_batch *b, bool sync) {
    if (b->error) return b->error;
    kv_batch *kb;
    int rc = kv_batch_new(&kb);
    if (rc) return errno_of(rc);
    for (size_t i = 0; i < b->n && !rc; i++) {
        const store_op *op = &b->ops[i];
        const uint8_t *key = store_op_key(b, op);
        switch (op->kind) {
        case STORE_PUT:
            /* nocopy: b, which holds or points to the bytes, outlives kb */
            rc = kv_batch_put_nocopy(kb, op->ks, key, op->klen, store_op_data(b, op), op->dlen);
            break;
        case STORE_DELETE:
            rc = kv_batch_delete_ks(kb, op->ks, key, op->klen);
            break;
        case STORE_WRITE_AT:
            rc = kv_batch_write_at_nocopy(kb, op->ks, key, op->klen, op->off, store_op_data(b, op), op->dlen);
            break;
        case STORE_TRUNCATE:
            rc = kv_batch_truncate(kb, op->ks, key, op->klen, op->off);
            break;
        case STORE_ZERO_RANGE:
            rc = kv_batch_zero_range(kb, op->ks, key, op->klen, op->off, op->len);
            break;
        case STORE_MOVE:
            rc = kv_batch_move(kb, op->ks, key, op->klen, op->to_ks, store_op_to(b, op), op->tlen);
            break;
        case STORE_COPY_RANGE:
            rc = kv_batch_copy_range(kb, op->ks, key, op->klen, op->off, op->to_ks, store_op_to(b, op), op->tlen,
                                     op->to_pos, op->len);
            break;
        }
    }
    if (!rc && kv_batch_count(kb) > 0) rc = kv_write(DB(s), kb, sync ? KV_SYNC : 0, NULL);
    kv_batch_free(kb);
    return failed(s, sync ? "a synced write" : "a write", rc);
}

static int kvs_get(store *s, uint8_t ks, const void *key, size_t klen, store_buf *out, store_info *info) {
    kv_read_opts ro = {.keyspace = ks};
    kv_buf v = {0};
    kv_info ki;
    out->data = NULL;
    out->len = 0;
    int rc = kv_get_with_info(DB(s), &ro, key, klen, &v, &ki); /* value and write time from one lookup */
    if (rc) return failed(s, "a read", rc);
    if (v.len > SIZE_MAX) {
        kv_buf_free(&v);
        return -EFBIG;
    }
    out->data = v.data; /* kv_buf memory is malloc'ed: store_buf_free's free() releases it */
    out->len = (size_t)v.len;
    if (info) {
        info->size = ki.size;
        info->write_ms = ki.timestamp_ms;
        info->stored = ki.stored;
    }
    return 0;
}

static int kvs_stat(store *s, uint8_t ks, const void *key, size_t klen, store_info *info) {
    kv_read_opts ro = {.keyspace = ks};
    kv_info ki;
    int rc = kv_stat(DB(s), &ro, key, klen, &ki);
    if (rc) return failed(s, "a lookup", rc);
    info->size = ki.size;
    info->write_ms = ki.timestamp_ms;
    info->stored = ki.stored;
    return 0;
}

static int kvs_read(store *s, uint8_t ks, const void *key, size_t klen, uint64_t off, void *buf, size_t len,
                    size_t *nread) {
    kv_read_opts ro = {.keyspace = ks};
    *nread = 0;
    return failed(s, "a read", kv_read_range(DB(s), &ro, key, klen, off, buf, len, nread));
}

static int kvs_seek_data(store *s, uint8_t ks, const void *key, size_t klen, uint64_t off, bool hole, uint64_t *at) {
    kv_read_opts ro = {.keyspace = ks};
    return failed(s, "a read", kv_seek_data(DB(s), &ro, key, klen, off, hole, at));
}

static int keycmp(const void *a, size_t al, const void *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    return c ? c : (al > bl) - (al < bl);
}

static int kvs_scan(store *s, uint8_t ks, const void *start, size_t slen, const void *end, size_t elen,
                    uint64_t limit, bool forward, bool with_values, store_scan_fn cb, void *ctx) {
    /* the range [start, end) as iteration bounds: deleted entries outside it are never stepped over */
    kv_read_opts ro = {.keyspace = ks, .lower_bound = start, .lower_len = slen, .upper_bound = end, .upper_len = elen};
    kv_iter *it;
    int rc = kv_iter_new(DB(s), &ro, &it);
    if (rc) return failed(s, "a scan", rc);
    if (forward) {
        if (slen)
            kv_iter_seek(it, start, slen);
        else
            kv_iter_seek_first(it);
    } else if (elen) {
        kv_iter_seek_for_prev(it, end, elen);
        size_t kl;
        const void *k;
        if (kv_iter_valid(it) && (k = kv_iter_key(it, &kl)) && keycmp(k, kl, end, elen) == 0) kv_iter_prev(it);
    } else {
        kv_iter_seek_last(it);
    }
    uint64_t n = 0;
    while (kv_iter_valid(it) && (limit == 0 || n < limit)) {
        size_t kl;
        const void *k = kv_iter_key(it, &kl);
        if (forward ? (elen && keycmp(k, kl, end, elen) >= 0) : keycmp(k, kl, start, slen) < 0) break;
        kv_info ki;
        rc = kv_iter_info(it, &ki);
        if (rc) break;
        store_info info = {.size = ki.size, .write_ms = ki.timestamp_ms, .stored = ki.stored};
        const void *v = NULL;
        uint64_t vl = 0;
        if (with_values) {
            rc = kv_iter_value(it, &v, &vl);
            if (rc) break;
            if (vl > SIZE_MAX) {
                rc = KV_ENOMEM;
                break;
            }
            if (!v) v = "";
        }
        n++;
        if (cb(ctx, k, kl, &info, v, (size_t)vl)) break;
        if (forward)
            kv_iter_next(it);
        else
            kv_iter_prev(it);
    }
    if (!rc) rc = kv_iter_status(it);
    kv_iter_free(it);
    return failed(s, "a scan", rc);
}

static int kvs_sync(store *s) { return failed(s, "a sync", kv_sync(DB(s))); }
static uint64_t kvs_sequence(store *s) { return kv_current_sequence(DB(s)); }

static int kvs_statfs(store *s, struct statvfs *out) {
    /* The space of the file system that holds the store: what a write through the mount can use. */
    if (statvfs(((kv_store *)s)->datadir, out) != 0) return -errno;
    return 0;
}

static void kvs_destroy(store *s) {
    kv_store *k = (kv_store *)s;
    pthread_mutex_destroy(&k->log_mu);
    free(k->datadir);
    free(k);
}

static const store_ops kv_store_ops = {
    .write = kvs_write,
    .get = kvs_get,
    .stat = kvs_stat,
    .read = kvs_read,
    .scan = kvs_scan,
    .seek_data = kvs_seek_data,
    .sync = kvs_sync,
    .sequence = kvs_sequence,
    .statfs = kvs_statfs,
    .destroy = kvs_destroy,
};

store *store_kv_new(struct kv_db *db, const char *datadir) {
    kv_store *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->datadir = strdup(datadir);
    if (!k->datadir) {
        free(k);
        return NULL;
    }
    k->base.ops = &kv_store_ops;
    k->db = db;
    pthread_mutex_init(&k->log_mu, NULL);
    return &k->base;
}

void store_kv_set_error_log(store *s, store_error_log_fn log, void *ctx) {
    KS(s)->log = log;
    KS(s)->log_ctx = ctx;
}
