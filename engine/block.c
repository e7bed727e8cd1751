/*
 * block.c — sorted blocks with prefix-compressed keys and restart points (see block.h).
 *
 * Invariants
 *  - Builder: entries arrive in strictly increasing key order (the caller checks it); the first entry and every
 *    restart_interval-th entry after a restart store their whole key (shared = 0) and their offset goes into the
 *    restart array. An empty block is just a zero restart count (4 bytes).
 *  - Parser: block_parse accepts a block only if its restart array fits, the first restart is 0, the offsets are
 *    strictly increasing and all lie inside the entry area. After that every entry is still bounds-checked as it is
 *    decoded (its lengths must fit before the restart array, an entry at a restart point must have shared = 0, and
 *    no entry may straddle a restart point), so a block whose checksum happened to pass but whose content is bad
 *    yields KV_ECORRUPT, never a read outside [data, data + len).
 *  - A key is rebuilt into a scratch buffer only when it shares a prefix with its predecessor; a key stored whole
 *    (every restart key, every index-block key) is used in place, without a copy.
 *  - Keys are compared with ikey_cmp, so a key shorter than the 8-byte trailer met while seeking is corruption.
 */
#include "block.h"

#include <assert.h>
#include <stdlib.h>

#include "dbformat.h"
#include "error.h"
#include "kv.h"

/* ---- Builder ------------------------------------------------------------------------------------------------- */

void block_builder_init(block_builder *b, int restart_interval) {
    memset(b, 0, sizeof *b);
    b->restart_interval = restart_interval < 1 ? 1 : restart_interval;
}

static int oom(void) { return kv_set_error(KV_ENOMEM, "out of memory building a block"); }

int block_builder_add(block_builder *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    assert(!b->finished);
    /* Restart offsets are 32-bit: refuse to grow a block past what they can address. */
    if (b->buf.len + klen + vlen + 30 > UINT32_MAX)
        return kv_set_error(KV_EINVAL, "block entry too large (%zu key + %zu value bytes)", klen, vlen);
    size_t shared = 0;
    if (b->entries == 0 || b->counter >= b->restart_interval) {
        if (bytes_append_fixed32(&b->restarts, (uint32_t)b->buf.len)) return oom();
        b->counter = 0;
    } else {
        size_t n = b->last_key.len < klen ? b->last_key.len : klen;
        while (shared < n && b->last_key.data[shared] == key[shared]) shared++;
    }
    size_t unshared = klen - shared;
    if (bytes_reserve(&b->buf, 30 + unshared + vlen)) return oom();
    uint8_t *p = b->buf.data + b->buf.len;
    p = put_varint64(p, shared);
    p = put_varint64(p, unshared);
    p = put_varint64(p, vlen);
    memcpy(p, key + shared, unshared);
    p += unshared;
    if (vlen) memcpy(p, val, vlen);
    p += vlen;
    b->buf.len = (size_t)(p - b->buf.data);
    /* Only the unshared tail of last_key changes. */
    b->last_key.len = shared;
    if (bytes_append(&b->last_key, key + shared, unshared)) return oom();
    b->counter++;
    b->entries++;
    return KV_OK;
}

size_t block_builder_size(const block_builder *b) {
    if (b->finished) return b->buf.len;
    return b->buf.len + b->restarts.len + 4;
}

bool block_builder_empty(const block_builder *b) { return b->entries == 0; }

void block_builder_finish(block_builder *b, const uint8_t **data, size_t *len) {
    if (!b->finished) {
        /* Reserve both parts at once so that a failure leaves nothing half-written; if memory runs out here the
         * caller gets an empty result (len 0), which it reports as ENOMEM. */
        if (bytes_reserve(&b->buf, b->restarts.len + 4)) {
            *data = NULL;
            *len = 0;
            return;
        }
        bytes_append(&b->buf, b->restarts.data, b->restarts.len);
        bytes_append_fixed32(&b->buf, (uint32_t)(b->restarts.len / 4));
        b->finished = true;
    }
    *data = b->buf.data;
    *len = b->buf.len;
}

void block_builder_reset(block_builder *b) {
    bytes_clear(&b->buf);
    bytes_clear(&b->restarts);
    bytes_clear(&b->last_key);
    b->counter = 0;
    b->entries = 0;
    b->finished = false;
}

void block_builder_free(block_builder *b) {
    bytes_free(&b->buf);
    bytes_free(&b->restarts);
    bytes_free(&b->last_key);
    b->entries = 0;
}

/* ---- Parsed block ------------------------------------------------------------------------------------------- */

static int block_corrupt(uint64_t file_no, uint64_t offset, const char *what) {
    return kv_set_error(KV_ECORRUPT, "%06llu.sst: %s at offset %llu", (unsigned long long)file_no, what,
                        (unsigned long long)offset);
}

static inline uint32_t restart_at(const block *b, uint32_t i) { return get_fixed32(b->data + b->restart_off + 4 * (size_t)i); }

int block_parse(uint8_t *data, size_t len, uint64_t file_no, uint64_t offset, block **out) {
    *out = NULL;
    const char *what = NULL;
    uint32_t n = 0;
    size_t roff = 0;
    if (len < 4) {
        what = "block too short";
    } else {
        n = get_fixed32(data + len - 4);
        if (n > (len - 4) / 4) {
            what = "bad block restart count";
        } else {
            roff = len - 4 - 4 * (size_t)n;
            if (n == 0 && roff != 0) what = "block entries without restart points";
            uint32_t prev = 0;
            for (uint32_t i = 0; i < n && !what; i++) {
                uint32_t r = get_fixed32(data + roff + 4 * (size_t)i);
                if ((i == 0 && r != 0) || (i > 0 && r <= prev) || r >= roff) what = "bad block restart array";
                prev = r;
            }
        }
    }
    if (what) {
        free(data);
        return block_corrupt(file_no, offset, what);
    }
    block *b = malloc(sizeof *b);
    if (!b) {
        free(data);
        return kv_set_error(KV_ENOMEM, "out of memory parsing a block");
    }
    *b = (block){.data = data, .len = len, .restart_off = roff, .num_restarts = n, .file_no = file_no,
                 .offset = offset, .file_name_fmt = NULL};
    *out = b;
    return KV_OK;
}

void block_free(block *b) {
    if (!b) return;
    free(b->data);
    free(b);
}

/* ---- Cursor: the decoding core shared by the iterator and the point lookup ---------------------------------- */

typedef struct cursor {
    const block *b;
    size_t cur;            /* offset of the current entry (restart_off when past the end) */
    size_t next;           /* offset of the entry after it */
    uint32_t ri;           /* restart region holding cur: restart[ri] <= cur < restart[ri+1] */
    const uint8_t *kp;     /* the current key: into the block (stored whole) or into buf (rebuilt) */
    size_t klen;
    const uint8_t *vp;     /* the current value, always into the block */
    size_t vlen;
    uint8_t *buf;          /* scratch for rebuilt keys */
    size_t cap;
    bool heap;             /* buf is malloc'ed (else caller-provided, e.g. on the stack) */
} cursor;

static void cursor_init(cursor *c, const block *b, uint8_t *scratch, size_t cap) {
    memset(c, 0, sizeof *c);
    c->b = b;
    c->cur = c->next = b->restart_off;
    c->buf = scratch;
    c->cap = cap;
}

static void cursor_free(cursor *c) {
    if (c->heap) free(c->buf);
    c->buf = NULL;
    c->cap = 0;
    c->heap = false;
}

static int cursor_corrupt(const cursor *c, const char *what) {
    return block_corrupt(c->b->file_no, c->b->offset, what);
}

static void cursor_to_restart(cursor *c, uint32_t i) {
    c->ri = i;
    c->next = restart_at(c->b, i);
    c->cur = c->b->restart_off;
    c->kp = NULL;
    c->klen = 0;
}

/* Grow the scratch buffer to hold need bytes, keeping the first keep bytes of the current key if it lives there. */
static int cursor_grow(cursor *c, size_t need, size_t keep) {
    size_t cap = c->cap ? c->cap : 64;
    while (cap < need) cap *= 2;
    uint8_t *nb = malloc(cap);
    if (!nb) return kv_set_error(KV_ENOMEM, "out of memory decoding a block");
    if (c->kp == c->buf && c->kp) {
        memcpy(nb, c->buf, keep);
        c->kp = nb;
    }
    if (c->heap) free(c->buf);
    c->buf = nb;
    c->cap = cap;
    c->heap = true;
    return KV_OK;
}

/* Decode the entry at c->next. 1: positioned on it; 0: no more entries; < 0: error (message set). */
static int cursor_parse_next(cursor *c) {
    const block *b = c->b;
    size_t off = c->next;
    if (off >= b->restart_off) {
        c->cur = b->restart_off;
        return 0;
    }
    const uint8_t *p = b->data + off, *lim = b->data + b->restart_off;
    uint64_t shared, unshared, vlen;
    if (p + 3 <= lim && (p[0] | p[1] | p[2]) < 0x80) {
        /* Common case: all three lengths fit in one byte each. */
        shared = p[0];
        unshared = p[1];
        vlen = p[2];
        p += 3;
    } else if (!(p = get_varint64(p, lim, &shared)) || !(p = get_varint64(p, lim, &unshared)) ||
               !(p = get_varint64(p, lim, &vlen))) {
        return cursor_corrupt(c, "truncated block entry");
    }
    if (shared > c->klen || unshared > (uint64_t)(lim - p) || vlen > (uint64_t)(lim - p) - unshared)
        return cursor_corrupt(c, "bad block entry lengths");
    while (c->ri + 1 < b->num_restarts && restart_at(b, c->ri + 1) <= off) c->ri++;
    if (restart_at(b, c->ri) == off && shared != 0) return cursor_corrupt(c, "restart entry with a shared prefix");
    size_t end = (size_t)(p - b->data) + unshared + vlen;
    if (c->ri + 1 < b->num_restarts && restart_at(b, c->ri + 1) < end)
        return cursor_corrupt(c, "block entry overlaps a restart point");
    if (shared == 0) {
        c->kp = p;
        c->klen = unshared;
    } else {
        size_t need = shared + unshared;
        if (need > c->cap) {
            int rc = cursor_grow(c, need, shared);
            if (rc) return rc;
        }
        if (c->kp != c->buf) memcpy(c->buf, c->kp, shared);
        memcpy(c->buf + shared, p, unshared);
        c->kp = c->buf;
        c->klen = need;
    }
    c->vp = p + unshared;
    c->vlen = vlen;
    c->cur = off;
    c->next = end;
    return 1;
}

static int cursor_seek_first(cursor *c) {
    if (c->b->num_restarts == 0) {
        c->cur = c->b->restart_off;
        return 0;
    }
    cursor_to_restart(c, 0);
    return cursor_parse_next(c);
}

static int cursor_seek_last(cursor *c) {
    if (c->b->num_restarts == 0) {
        c->cur = c->b->restart_off;
        return 0;
    }
    cursor_to_restart(c, c->b->num_restarts - 1);
    int rc;
    do {
        rc = cursor_parse_next(c);
        if (rc <= 0) return rc < 0 ? rc : cursor_corrupt(c, "empty restart region");
    } while (c->next < c->b->restart_off);
    return 1;
}

/* Position on the first entry >= target. */
static int cursor_seek(cursor *c, const uint8_t *target, size_t tlen) {
    const block *b = c->b;
    assert(tlen >= IKEY_TRAILER);
    if (b->num_restarts == 0) {
        c->cur = b->restart_off;
        return 0;
    }
    /* Binary search for the last restart point whose key is < target; its key is stored whole. */
    uint32_t lo = 0, hi = b->num_restarts - 1;
    const uint8_t *lim = b->data + b->restart_off;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        const uint8_t *p = b->data + restart_at(b, mid);
        uint64_t shared, unshared, vlen;
        if (!(p = get_varint64(p, lim, &shared)) || !(p = get_varint64(p, lim, &unshared)) ||
            !(p = get_varint64(p, lim, &vlen)))
            return cursor_corrupt(c, "truncated block entry");
        if (shared != 0 || unshared > (uint64_t)(lim - p) || unshared <= IKEY_TRAILER) /* no user key: damage */
            return cursor_corrupt(c, "bad restart entry");
        if (ikey_cmp(p, unshared, target, tlen) < 0)
            lo = mid;
        else
            hi = mid - 1;
    }
    cursor_to_restart(c, lo);
    for (;;) {
        int rc = cursor_parse_next(c);
        if (rc <= 0) return rc;
        if (c->klen <= IKEY_TRAILER) return cursor_corrupt(c, "block key without a user key");
        if (ikey_cmp(c->kp, c->klen, target, tlen) >= 0) return 1;
    }
}

/* Step back: re-scan from the restart point before the current entry. */
static int cursor_prev(cursor *c) {
    const block *b = c->b;
    size_t orig = c->cur;
    uint32_t r = c->ri;
    if (restart_at(b, r) >= orig) {
        if (r == 0) {
            c->cur = b->restart_off;
            return 0;
        }
        r--;
    }
    cursor_to_restart(c, r);
    do {
        int rc = cursor_parse_next(c);
        if (rc <= 0) return rc < 0 ? rc : cursor_corrupt(c, "inconsistent block entries");
    } while (c->next < orig);
    if (c->next != orig) return cursor_corrupt(c, "inconsistent block entries");
    return 1;
}

int block_seek_value(const block *b, const uint8_t *target, size_t tlen, bool same_ukey, uint64_t *trailer,
                     const uint8_t **val, size_t *vlen) {
    uint8_t scratch[256];
    cursor c;
    cursor_init(&c, b, scratch, sizeof scratch);
    int rc = cursor_seek(&c, target, tlen);
    if (rc == 1) {
        size_t ulen = c.klen - IKEY_TRAILER;
        if (same_ukey && (ulen != tlen - IKEY_TRAILER || memcmp(c.kp, target, ulen) != 0)) {
            rc = 0;
        } else {
            if (trailer) *trailer = get_fixed64(c.kp + ulen);
            *val = c.vp;
            *vlen = c.vlen;
        }
    }
    cursor_free(&c);
    return rc;
}

/* ---- Iterator ----------------------------------------------------------------------------------------------- */

typedef struct block_iter {
    iter base;
    cursor c;
    bool valid;
    int status;
    void (*release)(void *arg);
    void *arg;
} block_iter;

/* Record the outcome of a cursor move: valid on 1, invalid on 0, invalid with a sticky status on error. */
static void bi_set(block_iter *it, int rc) {
    if (rc < 0) {
        it->status = rc;
        it->valid = false;
    } else {
        it->valid = rc == 1;
    }
}

static bool bi_valid(iter *i) { return ((block_iter *)i)->valid; }

static void bi_seek_first(iter *i) {
    block_iter *it = (block_iter *)i;
    if (it->status) return;
    bi_set(it, cursor_seek_first(&it->c));
}

static void bi_seek_last(iter *i) {
    block_iter *it = (block_iter *)i;
    if (it->status) return;
    bi_set(it, cursor_seek_last(&it->c));
}

static void bi_seek(iter *i, const uint8_t *k, size_t n) {
    block_iter *it = (block_iter *)i;
    if (it->status) return;
    bi_set(it, cursor_seek(&it->c, k, n));
}

static void bi_next(iter *i) {
    block_iter *it = (block_iter *)i;
    assert(it->valid);
    if (!it->valid) return;
    bi_set(it, cursor_parse_next(&it->c));
}

static void bi_prev(iter *i) {
    block_iter *it = (block_iter *)i;
    assert(it->valid);
    if (!it->valid) return;
    bi_set(it, cursor_prev(&it->c));
}

static const uint8_t *bi_key(iter *i, size_t *n) {
    block_iter *it = (block_iter *)i;
    assert(it->valid);
    *n = it->c.klen;
    return it->c.kp;
}

static const uint8_t *bi_value(iter *i, size_t *n) {
    block_iter *it = (block_iter *)i;
    assert(it->valid);
    *n = it->c.vlen;
    return it->c.vp;
}

static int bi_status(iter *i) { return ((block_iter *)i)->status; }

static void bi_destroy(iter *i) {
    block_iter *it = (block_iter *)i;
    cursor_free(&it->c);
    if (it->release) it->release(it->arg);
    free(it);
}

iter *block_iter_new(const block *b, void (*release)(void *arg), void *arg) {
    block_iter *it = malloc(sizeof *it);
    if (!it) {
        if (release) release(arg);
        kv_set_error(KV_ENOMEM, "out of memory creating a block iterator");
        return iter_empty(KV_ENOMEM);
    }
    it->base = (iter){bi_valid, bi_seek_first, bi_seek_last, bi_seek, bi_next, bi_prev, bi_key, bi_value,
                      bi_status, bi_destroy};
    cursor_init(&it->c, b, NULL, 0);
    it->valid = false;
    it->status = KV_OK;
    it->release = release;
    it->arg = arg;
    return &it->base;
}
