/*
 * memtable.c — the in-memory table as a lock-free-read skiplist (see memtable.h).
 *
 * Invariants
 *  - Nodes live in the memtable's arena and are never moved, changed (apart from linking) or freed before the
 *    memtable itself. A node is laid out as [prefix, prefix2, klen, height | next[height] | vlen | internal key | value].
 *  - Level 0 is the complete list in ikey_cmp order; level i is a sub-list of level i-1. Among entries with identical
 *    internal keys the one added last comes first, so a lookup sees the latest write.
 *  - Only the single writer (memtable_add; callers serialise) changes links and meta. It fills a node completely, then
 *    publishes it level by level, bottom up, with release stores; readers follow links with acquire loads, so any node
 *    a reader reaches is fully initialised. A reader may miss a node being inserted concurrently, never sees a torn
 *    one, and always sees a sorted list.
 *  - max_height only grows; a reader seeing a new height before the head's links are set just finds NULL and goes down.
 *  - The key filter (a bloom filter over user keys, one bit per 8 bytes of expected memtable size, 3 probes) has
 *    every added key's bits set before the node is linked, and the writer publishes the batch that added it only
 *    after that; a reader whose snapshot covers an entry therefore sees its bits. A lookup whose key's bits are not
 *    all set skips the search. Bits are written by the single writer with relaxed stores, read with relaxed loads.
 *  - Meta counters are written by the writer alone (load+store, no read-modify-write needed) as atomics so readers of
 *    memtable_get_meta() race benignly; each field is individually exact, the set of fields not a consistent snapshot.
 */
#include "memtable.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "arena.h"
#include "dbformat.h"
#include "error.h"
#include "kv.h"

#define MAX_HEIGHT 12
#define BRANCH_BITS 2 /* a node reaches the next level with probability 1/4 */

typedef struct mnode {
    uint64_t prefix;  /* the ukey's first 8 bytes, big-endian, zero-padded: decides most comparisons on its own */
    uint64_t prefix2; /* its bytes 8-15, the same way: keys that share 8 bytes (a keyspace byte and a common path
                         or a zero-padded number) are still told apart without reading the key, on another line */
    uint32_t klen;   /* internal key length: ukey + 8 */
    uint32_t height; /* 1 .. MAX_HEIGHT */
    _Atomic(struct mnode *) next[];
    /* then: size_t vlen | internal key | value */
} mnode;

struct memtable {
    mnode *head; /* a sentinel of height MAX_HEIGHT whose key is never read */
    atomic_int max_height;
    atomic_int refs;
    arena arena;  /* writer only */
    uint64_t rng; /* writer only: xorshift state for node heights */
    _Atomic uint64_t entries, tombstones, bytes, first_seq, last_seq;
    _Atomic uint64_t *filter; /* the key filter's words */
    uint64_t filter_mask;     /* its bit count minus one (a power of two) */
};

#define FILTER_PROBES 3

/* The filter's bits for ukey: double hashing over one 64-bit hash. */
static inline uint64_t filter_hash(const uint8_t *ukey, size_t ulen) { return XXH3_64bits(ukey, ulen); }

static void filter_add(memtable *m, uint64_t h) {
    uint64_t delta = (h >> 33) | 1;
    for (int i = 0; i < FILTER_PROBES; i++, h += delta) {
        uint64_t bit = h & m->filter_mask;
        _Atomic uint64_t *w = &m->filter[bit >> 6];
        uint64_t old = atomic_load_explicit(w, memory_order_relaxed);
        atomic_store_explicit(w, old | (1ull << (bit & 63)), memory_order_relaxed); /* the only writer */
    }
}

static bool filter_may_contain(const memtable *m, uint64_t h) {
    uint64_t delta = (h >> 33) | 1;
    for (int i = 0; i < FILTER_PROBES; i++, h += delta) {
        uint64_t bit = h & m->filter_mask;
        if (!(atomic_load_explicit(&m->filter[bit >> 6], memory_order_relaxed) & (1ull << (bit & 63)))) return false;
    }
    return true;
}

/* The value length sits after the links rather than in the header: searches never read it, and the header plus the
 * link they follow then share a cache line more often. */
static inline uint8_t *node_vlen_at(const mnode *n) { return (uint8_t *)(n->next + n->height); }
static inline size_t node_vlen(const mnode *n) {
    size_t v;
    memcpy(&v, node_vlen_at(n), sizeof v);
    return v;
}
static inline uint8_t *node_key(const mnode *n) { return node_vlen_at(n) + sizeof(size_t); }
static inline uint8_t *node_val(const mnode *n) { return node_key(n) + n->klen; }

/* Big-endian value of the first 8 bytes of u, zero-padded. If two keys' prefixes differ they compare as the keys do
 * under ukey_cmp (a padding zero stands where the shorter key ended, which sorts first either way); only equal
 * prefixes need the full comparison. */
static inline uint64_t key_prefix(const uint8_t *u, size_t ulen) {
    uint64_t v = 0;
    if (ulen >= 8) { /* the usual case; compilers turn this into one byte-swapped load */
        for (int i = 0; i < 8; i++) v = v << 8 | u[i];
        return v;
    }
    for (size_t i = 0; i < ulen; i++) v |= (uint64_t)u[i] << (56 - 8 * i);
    return v;
}

/* key_prefix of the bytes after the first 8 (0 when there are none): compared only when the prefixes are equal,
 * it orders keys as ukey_cmp does whenever it differs, by the same argument. */
static inline uint64_t key_prefix2(const uint8_t *u, size_t ulen) {
    return ulen > 8 ? key_prefix(u + 8, ulen - 8) : 0;
}

static inline mnode *load_next(const mnode *n, int level) {
    /* The cast drops const only for the atomic load, which does not write. */
    return atomic_load_explicit((_Atomic(mnode *) *)&n->next[level], memory_order_acquire);
}

/* A search target split into ukey and trailer, so lookups never have to build an internal key. */
typedef struct probe {
    const uint8_t *ukey;
    size_t ulen;
    uint64_t trailer;
    uint64_t prefix;  /* key_prefix(ukey, ulen) */
    uint64_t prefix2; /* key_prefix2(ukey, ulen) */
} probe;

static inline probe make_probe(const uint8_t *ukey, size_t ulen, uint64_t trailer) {
    return (probe){ukey, ulen, trailer, key_prefix(ukey, ulen), key_prefix2(ukey, ulen)};
}

/* ikey_cmp(node key, probe key), computed on the split form. */
static inline int node_cmp(const mnode *n, const probe *p) {
    if (n->prefix != p->prefix) return n->prefix < p->prefix ? -1 : 1;
    if (n->prefix2 != p->prefix2) return n->prefix2 < p->prefix2 ? -1 : 1;
    const uint8_t *k = node_key(n);
    size_t ulen = n->klen - IKEY_TRAILER;
    int c = ukey_cmp(k, ulen, p->ukey, p->ulen);
    if (c) return c;
    uint64_t t = get_fixed64(k + ulen);
    return t > p->trailer ? -1 : t < p->trailer ? 1 : 0; /* trailers sort descending */
}

/* A probe for an internal key given by a caller. A key shorter than a trailer is not a valid internal key; treat
 * its bytes as the ukey with the highest trailer so it still sorts somewhere sensible instead of over-reading. */
static inline probe probe_of_ikey(const uint8_t *ikey, size_t len) {
    if (len < IKEY_TRAILER) return make_probe(ikey, len, UINT64_MAX);
    return make_probe(ikey, len - IKEY_TRAILER, ikey_trailer(ikey, len));
}

/* The first node >= p (NULL if none). If prev is given, prev[i] gets the last node < p at level i. */
static mnode *find_ge(const memtable *m, const probe *p, mnode **prev) {
    mnode *x = m->head;
    int level = atomic_load_explicit(&m->max_height, memory_order_relaxed) - 1;
    for (;;) {
        mnode *nx = load_next(x, level);
        if (nx && node_cmp(nx, p) < 0) {
            x = nx;
        } else {
            if (prev) prev[level] = x;
            if (level == 0) return nx;
            level--;
        }
    }
}

/* The last node < p, or the head if none. */
static mnode *find_lt(const memtable *m, const probe *p) {
    mnode *x = m->head;
    int level = atomic_load_explicit(&m->max_height, memory_order_relaxed) - 1;
    for (;;) {
        mnode *nx = load_next(x, level);
        if (nx && node_cmp(nx, p) < 0) {
            x = nx;
        } else {
            if (level == 0) return x;
            level--;
        }
    }
}

/* The last node of the list, or the head if empty. */
static mnode *find_last(const memtable *m) {
    mnode *x = m->head;
    int level = atomic_load_explicit(&m->max_height, memory_order_relaxed) - 1;
    for (;;) {
        mnode *nx = load_next(x, level);
        if (nx) {
            x = nx;
        } else {
            if (level == 0) return x;
            level--;
        }
    }
}

static int random_height(memtable *m) {
    uint64_t x = m->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    m->rng = x;
    int h = 1;
    while (h < MAX_HEIGHT && (x & ((1u << BRANCH_BITS) - 1)) == 0) {
        h++;
        x >>= BRANCH_BITS;
    }
    return h;
}

/* Writer-only counter update: a plain load and store suffice since no one else writes. */
static inline void meta_add(_Atomic uint64_t *c, uint64_t d) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d, memory_order_relaxed);
}

int memtable_new(size_t expected_bytes, memtable **out) {
    memtable *m = malloc(sizeof *m);
    if (!m) return kv_set_error(KV_ENOMEM, "memtable: out of memory");
    uint64_t bits = 4096;
    while (bits < expected_bytes / 8 && bits < (1ull << 30)) bits <<= 1;
    m->filter_mask = bits - 1;
    m->filter = calloc((size_t)(bits / 64), sizeof *m->filter);
    if (!m->filter) {
        free(m);
        return kv_set_error(KV_ENOMEM, "memtable: out of memory");
    }
    arena_init(&m->arena);
    m->head = arena_alloc(&m->arena, sizeof(mnode) + MAX_HEIGHT * sizeof(_Atomic(mnode *)));
    if (!m->head) {
        free(m->filter);
        free(m);
        return kv_set_error(KV_ENOMEM, "memtable: out of memory");
    }
    m->head->prefix = 0;
    m->head->prefix2 = 0;
    m->head->klen = 0;
    m->head->height = MAX_HEIGHT;
    for (int i = 0; i < MAX_HEIGHT; i++) atomic_init(&m->head->next[i], NULL);
    atomic_init(&m->max_height, 1);
    atomic_init(&m->refs, 1);
    m->rng = 0x9e3779b97f4a7c15ULL; /* any non-zero seed; a fixed one keeps node heights reproducible */
    atomic_init(&m->entries, 0);
    atomic_init(&m->tombstones, 0);
    atomic_init(&m->bytes, m->arena.used);
    atomic_init(&m->first_seq, 0);
    atomic_init(&m->last_seq, 0);
    *out = m;
    return KV_OK;
}

void memtable_ref(memtable *m) { atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed); }

void memtable_unref(memtable *m) {
    if (!m) return;
    /* acq_rel: every use of m by other holders happens before the free below. */
    int old = atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel);
    assert(old > 0);
    if (old == 1) {
        arena_destroy(&m->arena);
        free(m->filter);
        free(m);
    }
}

int memtable_add(memtable *m, uint64_t seq, int type, const uint8_t *ukey, size_t ulen, const uint8_t *val,
                 size_t vlen) {
    assert(seq <= KV_MAX_SEQUENCE && type >= 0 && type <= 0xff);
    if (ulen > UINT32_MAX - IKEY_TRAILER) return kv_set_error(KV_EINVAL, "memtable: key of %zu bytes", ulen);
    int height = random_height(m);
    size_t klen = ulen + IKEY_TRAILER;
    size_t fixed = sizeof(mnode) + (size_t)height * sizeof(_Atomic(mnode *)) + sizeof(size_t) + klen;
    if (vlen > SIZE_MAX - fixed) return kv_set_error(KV_ENOMEM, "memtable: value of %zu bytes", vlen);
    mnode *n = arena_alloc(&m->arena, fixed + vlen);
    if (!n) return kv_set_error(KV_ENOMEM, "memtable: out of memory adding %zu bytes", fixed + vlen);
    n->prefix = key_prefix(ukey, ulen);
    n->prefix2 = key_prefix2(ukey, ulen);
    n->klen = (uint32_t)klen;
    n->height = (uint32_t)height;
    memcpy(node_vlen_at(n), &vlen, sizeof vlen);
    uint8_t *k = node_key(n);
    uint64_t trailer = ikey_pack(seq, type);
    if (ulen) memcpy(k, ukey, ulen);
    put_fixed64(k + ulen, trailer);
    if (vlen) memcpy(k + klen, val, vlen);

    filter_add(m, filter_hash(ukey, ulen));
    /* Insert before the first node >= the new key: identical keys then put the latest addition first. */
    mnode *prev[MAX_HEIGHT];
    probe p = {ukey, ulen, trailer, n->prefix, n->prefix2};
    find_ge(m, &p, prev);
    int max = atomic_load_explicit(&m->max_height, memory_order_relaxed);
    if (height > max) {
        for (int i = max; i < height; i++) prev[i] = m->head;
        atomic_store_explicit(&m->max_height, height, memory_order_relaxed);
    }
    for (int i = 0; i < height; i++) {
        /* n is not reachable yet, so its own links need no ordering; the release store publishes n with them. */
        atomic_store_explicit(&n->next[i], atomic_load_explicit(&prev[i]->next[i], memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&prev[i]->next[i], n, memory_order_release);
    }

    meta_add(&m->entries, 1);
    if (type == KV_TYPE_DELETE) meta_add(&m->tombstones, 1);
    atomic_store_explicit(&m->bytes, m->arena.used, memory_order_relaxed);
    uint64_t first = atomic_load_explicit(&m->first_seq, memory_order_relaxed);
    uint64_t last = atomic_load_explicit(&m->last_seq, memory_order_relaxed);
    if (first == 0 || seq < first) atomic_store_explicit(&m->first_seq, seq, memory_order_relaxed);
    if (seq > last) atomic_store_explicit(&m->last_seq, seq, memory_order_relaxed);
    return KV_OK;
}

int memtable_get(memtable *m, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type, const uint8_t **val,
                 size_t *vlen, uint64_t *found_seq) {
    if (!filter_may_contain(m, filter_hash(ukey, ulen))) return 0;
    if (seq > KV_MAX_SEQUENCE) seq = KV_MAX_SEQUENCE;
    probe p = make_probe(ukey, ulen, ikey_pack(seq, KV_TYPE_FOR_SEEK));
    mnode *n = find_ge(m, &p, NULL);
    if (!n) return 0;
    const uint8_t *k = node_key(n);
    size_t nulen = n->klen - IKEY_TRAILER;
    if (ukey_cmp(k, nulen, ukey, ulen) != 0) return 0;
    uint64_t t = get_fixed64(k + nulen);
    *type = (int)(t & 0xff);
    *found_seq = t >> 8;
    *val = node_val(n);
    *vlen = node_vlen(n);
    return 1;
}

size_t memtable_bytes(const memtable *m) { return (size_t)atomic_load_explicit(&m->bytes, memory_order_relaxed); }

void memtable_get_meta(const memtable *m, memtable_meta *out) {
    out->entries = atomic_load_explicit(&m->entries, memory_order_relaxed);
    out->tombstones = atomic_load_explicit(&m->tombstones, memory_order_relaxed);
    out->bytes = atomic_load_explicit(&m->bytes, memory_order_relaxed);
    out->first_seq = atomic_load_explicit(&m->first_seq, memory_order_relaxed);
    out->last_seq = atomic_load_explicit(&m->last_seq, memory_order_relaxed);
}

/* ---- Iterator ---------------------------------------------------------------------------------------------------- */

typedef struct mem_iter {
    iter base;
    memtable *m;
    const mnode *node; /* current node; NULL when not valid (never the head) */
} mem_iter;

static bool mi_valid(iter *it) { return ((mem_iter *)it)->node != NULL; }

static void mi_seek_first(iter *it) {
    mem_iter *mi = (mem_iter *)it;
    mi->node = load_next(mi->m->head, 0);
}

static void mi_seek_last(iter *it) {
    mem_iter *mi = (mem_iter *)it;
    mnode *n = find_last(mi->m);
    mi->node = n == mi->m->head ? NULL : n;
}

static void mi_seek(iter *it, const uint8_t *ikey, size_t len) {
    mem_iter *mi = (mem_iter *)it;
    probe p = probe_of_ikey(ikey, len);
    mi->node = find_ge(mi->m, &p, NULL);
}

static void mi_next(iter *it) {
    mem_iter *mi = (mem_iter *)it;
    assert(mi->node);
    mi->node = load_next(mi->node, 0);
}

static void mi_prev(iter *it) {
    mem_iter *mi = (mem_iter *)it;
    assert(mi->node);
    const mnode *cur = mi->node;
    const uint8_t *k = node_key(cur);
    probe p = {k, cur->klen - IKEY_TRAILER, get_fixed64(k + cur->klen - IKEY_TRAILER), cur->prefix, cur->prefix2};
    mnode *x = find_lt(mi->m, &p);
    /* Nodes with a key identical to cur's may sit between x and cur: step to cur's true predecessor. Normally
     * x->next[0] is cur already. Concurrent inserts only add nodes, so cur stays reachable from x. */
    for (mnode *nx; (nx = load_next(x, 0)) != cur; x = nx) assert(nx);
    mi->node = x == mi->m->head ? NULL : x;
}

static const uint8_t *mi_key(iter *it, size_t *len) {
    mem_iter *mi = (mem_iter *)it;
    assert(mi->node);
    *len = mi->node->klen;
    return node_key(mi->node);
}

static const uint8_t *mi_value(iter *it, size_t *len) {
    mem_iter *mi = (mem_iter *)it;
    assert(mi->node);
    *len = node_vlen(mi->node);
    return node_val(mi->node);
}

static int mi_status(iter *it) {
    (void)it;
    return KV_OK;
}

static void mi_destroy(iter *it) {
    mem_iter *mi = (mem_iter *)it;
    memtable_unref(mi->m);
    free(mi);
}

iter *memtable_iter(memtable *m) {
    mem_iter *mi = malloc(sizeof *mi);
    if (!mi) {
        kv_set_error(KV_ENOMEM, "memtable iterator: out of memory");
        return iter_empty(KV_ENOMEM);
    }
    mi->base = (iter){mi_valid, mi_seek_first, mi_seek_last, mi_seek, mi_next, mi_prev, mi_key, mi_value,
                      mi_status, mi_destroy};
    memtable_ref(m);
    mi->m = m;
    mi->node = NULL;
    return &mi->base;
}
