/*
 * store_mem.c — an in-memory store: the reference backend for unit tests of the filesystem logic, and a way to
 * mount kvfs without the engine (kvfs mount -o store=mem, for testing only; nothing is persisted).
 *
 * Invariants
 *  - Each keyspace is an array of entries sorted by key (memcmp order, shorter first on a tie), no duplicates.
 *  - One rwlock guards everything: a batch is applied under the write lock, so readers see all of it or none.
 *  - A batch is checked first (each move's source exists, taking the batch's earlier ops into account), so a
 *    batch that fails with -ENOENT changes nothing. Only an allocation failure can stop a batch midway; this is a
 *    test backend and simplicity beats atomicity under memory exhaustion.
 *  - Scans copy each key and call back without the lock held, re-searching from the last key: the callback may
 *    call into the store.
 *  - Holes are real zero bytes (this is a test backend; do not truncate it to gigabytes).
 */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct mem_entry {
    uint8_t *key;
    size_t klen;
    uint8_t *val;
    size_t vlen;
    int64_t write_ms;
} mem_entry;

typedef struct mem_space {
    mem_entry *e;
    size_t n, cap;
} mem_space;

typedef struct mem_store {
    store base;
    pthread_rwlock_t lock;
    mem_space ks[256];
    uint64_t seq;
    int fail_next;
} mem_store;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int keycmp(const void *a, size_t al, const void *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c) return c;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

/* Index of the first entry >= key. */
static size_t lower_bound(const mem_space *sp, const void *key, size_t klen) {
    size_t lo = 0, hi = sp->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (keycmp(sp->e[mid].key, sp->e[mid].klen, key, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static mem_entry *find(mem_space *sp, const void *key, size_t klen) {
    size_t i = lower_bound(sp, key, klen);
    if (i < sp->n && keycmp(sp->e[i].key, sp->e[i].klen, key, klen) == 0) return &sp->e[i];
    return NULL;
}

/* The entry for key, created empty if absent. NULL on allocation failure. */
static mem_entry *find_or_add(mem_space *sp, const void *key, size_t klen, int64_t ts) {
    size_t i = lower_bound(sp, key, klen);
    if (i < sp->n && keycmp(sp->e[i].key, sp->e[i].klen, key, klen) == 0) return &sp->e[i];
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? sp->cap * 2 : 64;
        mem_entry *ne = realloc(sp->e, cap * sizeof *ne);
        if (!ne) return NULL;
        sp->e = ne;
        sp->cap = cap;
    }
    uint8_t *k = malloc(klen);
    if (!k) return NULL;
    memcpy(k, key, klen);
    memmove(&sp->e[i + 1], &sp->e[i], (sp->n - i) * sizeof *sp->e);
    sp->n++;
    sp->e[i] = (mem_entry){.key = k, .klen = klen, .val = NULL, .vlen = 0, .write_ms = ts};
    return &sp->e[i];
}

static void remove_entry(mem_space *sp, mem_entry *e) {
    size_t i = (size_t)(e - sp->e);
    free(e->key);
    free(e->val);
    memmove(&sp->e[i], &sp->e[i + 1], (sp->n - i - 1) * sizeof *sp->e);
    sp->n--;
}

static int set_len(mem_entry *e, uint64_t len) {
    if (len > SIZE_MAX / 2) return -EFBIG;
    if (len > e->vlen) {
        uint8_t *nv = realloc(e->val, (size_t)len);
        if (!nv) return -ENOMEM;
        memset(nv + e->vlen, 0, (size_t)len - e->vlen);
        e->val = nv;
    }
    e->vlen = (size_t)len;
    return 0;
}

/* Apply one op; the state stays consistent whatever happens. */
static int apply_op(mem_store *m, const store_batch *b, const store_op *op, int64_t ts) {
    mem_space *sp = &m->ks[op->ks];
    const uint8_t *key = store_op_key(b, op);
    switch (op->kind) {
    case STORE_PUT: {
        uint8_t *nv = NULL;
        if (op->dlen) {
            nv = malloc(op->dlen);
            if (!nv) return -ENOMEM;
            memcpy(nv, store_op_data(b, op), op->dlen);
        }
        mem_entry *e = find_or_add(sp, key, op->klen, ts);
        if (!e) {
            free(nv);
            return -ENOMEM;
        }
        free(e->val);
        e->val = nv;
        e->vlen = op->dlen;
        e->write_ms = ts;
        return 0;
    }
    case STORE_DELETE: {
        mem_entry *e = find(sp, key, op->klen);
        if (e) remove_entry(sp, e);
        return 0;
    }
    case STORE_WRITE_AT: {
        mem_entry *e = find_or_add(sp, key, op->klen, ts);
        if (!e) return -ENOMEM;
        if (op->off + op->dlen > e->vlen) {
            int rc = set_len(e, op->off + op->dlen);
            if (rc) return rc;
        }
        if (op->dlen) memcpy(e->val + op->off, store_op_data(b, op), op->dlen);
        e->write_ms = ts;
        return 0;
    }
    case STORE_ZERO_RANGE: {
        mem_entry *e = find_or_add(sp, key, op->klen, ts);
        if (!e) return -ENOMEM;
        if (op->len > SIZE_MAX - op->off) return -EFBIG; /* this backend holds values whole, in memory */
        if (op->len && op->off + op->len > e->vlen) {
            int rc = set_len(e, op->off + op->len);
            if (rc) return rc;
        }
        if (op->len) memset(e->val + op->off, 0, op->len);
        e->write_ms = ts;
        return 0;
    }
    case STORE_TRUNCATE: {
        mem_entry *e = find_or_add(sp, key, op->klen, ts);
        if (!e) return -ENOMEM;
        int rc = set_len(e, op->off);
        if (rc) return rc;
        e->write_ms = ts;
        return 0;
    }
    case STORE_COPY_RANGE: {
        mem_entry *src = find(sp, key, op->klen);
        if (!src) return -ENOENT;
        uint64_t n = op->off >= src->vlen ? 0 : (op->len < src->vlen - op->off ? op->len : src->vlen - op->off);
        if (n == 0) return 0;
        if (op->to_pos > SIZE_MAX - n) return -EFBIG; /* this backend holds values whole, in memory */
        uint8_t *part = malloc((size_t)n); /* the destination may be the source */
        if (!part) return -ENOMEM;
        memcpy(part, src->val + op->off, (size_t)n);
        mem_entry *dst = find_or_add(&m->ks[op->to_ks], store_op_to(b, op), op->tlen, ts);
        int rc = !dst ? -ENOMEM : op->to_pos + n > dst->vlen ? set_len(dst, op->to_pos + n) : 0;
        if (!rc) {
            memcpy(dst->val + op->to_pos, part, (size_t)n);
            dst->write_ms = ts;
        }
        free(part);
        return rc;
    }
    case STORE_MOVE: {
        mem_entry *src = find(sp, key, op->klen);
        if (!src) return -ENOENT;
        mem_space *dsp = &m->ks[op->to_ks];
        const uint8_t *to = store_op_to(b, op);
        if (dsp == sp && keycmp(key, op->klen, to, op->tlen) == 0) return 0;
        uint8_t *val = src->val;
        size_t vlen = src->vlen;
        int64_t wts = src->write_ms;
        /* Detach the value before removing the source so the bytes are moved, not copied. */
        src->val = NULL;
        remove_entry(sp, src);
        mem_entry *dst = find_or_add(dsp, to, op->tlen, ts);
        if (!dst) {
            free(val);
            return -ENOMEM;
        }
        free(dst->val);
        dst->val = val;
        dst->vlen = vlen;
        dst->write_ms = wts;
        return 0;
    }
    }
    return -EINVAL;
}

/* Moves can fail on an absent source: check the whole batch first against a shadow set of live keys, so a failing
 * batch changes nothing. The shadow is a list of (ks, key, present) decisions consulted newest-first. */
typedef struct shadow_rec {
    uint8_t ks;
    const uint8_t *key;
    size_t klen;
    bool present;
} shadow_rec;

static bool shadow_present(mem_store *m, const shadow_rec *sh, size_t n, uint8_t ks, const uint8_t *key,
                           size_t klen) {
    for (size_t i = n; i-- > 0;)
        if (sh[i].ks == ks && keycmp(sh[i].key, sh[i].klen, key, klen) == 0) return sh[i].present;
    return find(&m->ks[ks], key, klen) != NULL;
}

static int validate_moves(mem_store *m, const store_batch *b) {
    bool any = false;
    for (size_t i = 0; i < b->n; i++) any |= b->ops[i].kind == STORE_MOVE;
    if (!any) return 0;
    shadow_rec *sh = malloc((2 * b->n) * sizeof *sh);
    if (!sh) return -ENOMEM;
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; i < b->n && !rc; i++) {
        const store_op *op = &b->ops[i];
        const uint8_t *key = store_op_key(b, op);
        if (op->kind == STORE_MOVE) {
            if (!shadow_present(m, sh, n, op->ks, key, op->klen)) {
                rc = -ENOENT;
                break;
            }
            sh[n++] = (shadow_rec){op->ks, key, op->klen, false};
            sh[n++] = (shadow_rec){op->to_ks, store_op_to(b, op), op->tlen, true};
        } else {
            sh[n++] = (shadow_rec){op->ks, key, op->klen, op->kind != STORE_DELETE};
        }
    }
    free(sh);
    return rc;
}

static int mem_write(store *s, const store_batch *b, bool sync) {
    (void)sync;
    mem_store *m = (mem_store *)s;
    if (b->error) return b->error;
    pthread_rwlock_wrlock(&m->lock);
    int rc = 0;
    if (m->fail_next) {
        rc = m->fail_next;
        m->fail_next = 0;
    }
    if (!rc) rc = validate_moves(m, b);
    int64_t ts = now_ms();
    for (size_t i = 0; i < b->n && !rc; i++) rc = apply_op(m, b, &b->ops[i], ts);
    if (!rc) m->seq++;
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int mem_get(store *s, uint8_t ks, const void *key, size_t klen, store_buf *out, store_info *info) {
    mem_store *m = (mem_store *)s;
    out->data = NULL;
    out->len = 0;
    pthread_rwlock_rdlock(&m->lock);
    int rc = -ENOENT;
    mem_entry *e = find(&m->ks[ks], key, klen);
    if (e) {
        rc = 0;
        if (e->vlen) {
            out->data = malloc(e->vlen);
            if (!out->data)
                rc = -ENOMEM;
            else {
                memcpy(out->data, e->val, e->vlen);
                out->len = e->vlen;
            }
        }
        if (info) *info = (store_info){.size = e->vlen, .write_ms = e->write_ms, .stored = e->vlen};
    }
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int mem_stat(store *s, uint8_t ks, const void *key, size_t klen, store_info *info) {
    mem_store *m = (mem_store *)s;
    pthread_rwlock_rdlock(&m->lock);
    mem_entry *e = find(&m->ks[ks], key, klen);
    if (e) *info = (store_info){.size = e->vlen, .write_ms = e->write_ms, .stored = e->vlen};
    pthread_rwlock_unlock(&m->lock);
    return e ? 0 : -ENOENT;
}

static int mem_read(store *s, uint8_t ks, const void *key, size_t klen, uint64_t off, void *buf, size_t len,
                    size_t *nread) {
    mem_store *m = (mem_store *)s;
    *nread = 0;
    pthread_rwlock_rdlock(&m->lock);
    mem_entry *e = find(&m->ks[ks], key, klen);
    if (e && off < e->vlen) {
        size_t n = e->vlen - (size_t)off < len ? e->vlen - (size_t)off : len;
        memcpy(buf, e->val + off, n);
        *nread = n;
    }
    pthread_rwlock_unlock(&m->lock);
    return e ? 0 : -ENOENT;
}

/* The callback runs without the lock held (it may call back into the store), on copies of the keys. */
static int mem_scan(store *s, uint8_t ks, const void *start, size_t slen, const void *end, size_t elen,
                    uint64_t limit, bool forward, bool with_values, store_scan_fn cb, void *ctx) {
    mem_store *m = (mem_store *)s;
    uint64_t done = 0;
    /* Position: the next key to visit is found by searching again from the last key seen, so changes made by the
     * callback do not invalidate anything. */
    uint8_t *last = NULL;
    size_t last_len = 0;
    bool have_last = false;
    int rc = 0;
    for (;;) {
        if (limit && done >= limit) break;
        pthread_rwlock_rdlock(&m->lock);
        mem_space *sp = &m->ks[ks];
        size_t i;
        bool ok;
        if (forward) {
            if (!have_last)
                i = lower_bound(sp, start, slen);
            else {
                i = lower_bound(sp, last, last_len);
                if (i < sp->n && keycmp(sp->e[i].key, sp->e[i].klen, last, last_len) == 0) i++;
            }
            ok = i < sp->n && (elen == 0 || keycmp(sp->e[i].key, sp->e[i].klen, end, elen) < 0);
        } else {
            size_t j = have_last ? lower_bound(sp, last, last_len) : elen ? lower_bound(sp, end, elen) : sp->n;
            ok = j > 0;
            i = j - 1;
            ok = ok && keycmp(sp->e[i].key, sp->e[i].klen, start, slen) >= 0;
        }
        if (!ok) {
            pthread_rwlock_unlock(&m->lock);
            break;
        }
        mem_entry *e = &sp->e[i];
        uint8_t *k = malloc(e->klen);
        void *v = with_values && e->vlen ? malloc(e->vlen) : NULL;
        if (!k || (with_values && e->vlen && !v)) {
            pthread_rwlock_unlock(&m->lock);
            free(k);
            free(v);
            rc = -ENOMEM;
            break;
        }
        memcpy(k, e->key, e->klen);
        size_t klen = e->klen, vlen = with_values ? e->vlen : 0;
        if (v) memcpy(v, e->val, e->vlen);
        store_info info = {.size = e->vlen, .write_ms = e->write_ms, .stored = e->vlen};
        pthread_rwlock_unlock(&m->lock);
        free(last);
        last = k;
        last_len = klen;
        have_last = true;
        done++;
        int stop = cb(ctx, k, klen, &info, with_values ? (v ? v : "") : NULL, vlen);
        free(v);
        if (stop) break;
    }
    free(last);
    return rc;
}

static int mem_sync(store *s) {
    (void)s;
    return 0;
}

static uint64_t mem_sequence(store *s) {
    mem_store *m = (mem_store *)s;
    pthread_rwlock_rdlock(&m->lock);
    uint64_t seq = m->seq;
    pthread_rwlock_unlock(&m->lock);
    return seq;
}

static int mem_statfs(store *s, struct statvfs *out) {
    (void)s;
    memset(out, 0, sizeof *out);
    out->f_bsize = out->f_frsize = 4096;
    out->f_blocks = 1u << 20; /* a nominal 4 GiB */
    out->f_bfree = out->f_bavail = 1u << 19;
    out->f_files = 1u << 20;
    out->f_ffree = out->f_favail = 1u << 19;
    out->f_namemax = 255;
    return 0;
}

static void mem_destroy(store *s) {
    mem_store *m = (mem_store *)s;
    for (int k = 0; k < 256; k++) {
        for (size_t i = 0; i < m->ks[k].n; i++) {
            free(m->ks[k].e[i].key);
            free(m->ks[k].e[i].val);
        }
        free(m->ks[k].e);
    }
    pthread_rwlock_destroy(&m->lock);
    free(m);
}

static const store_ops mem_ops = {
    .write = mem_write,
    .get = mem_get,
    .stat = mem_stat,
    .read = mem_read,
    .scan = mem_scan,
    .sync = mem_sync,
    .sequence = mem_sequence,
    .statfs = mem_statfs,
    .destroy = mem_destroy,
};

store *store_mem_new(void) {
    mem_store *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (pthread_rwlock_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    m->base.ops = &mem_ops;
    return &m->base;
}

void store_mem_fail_next_write(store *s, int err) {
    mem_store *m = (mem_store *)s;
    pthread_rwlock_wrlock(&m->lock);
    m->fail_next = err;
    pthread_rwlock_unlock(&m->lock);
}
