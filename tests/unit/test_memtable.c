/* test_memtable.c — the skiplist memtable against a sorted reference, its meta, big entries, and one writer racing
 * with lock-free readers. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "dbformat.h"
#include "memtable.h"
#include "t.h"

/* ---- reference model --------------------------------------------------------------------------------------------- */

typedef struct ref_entry {
    uint8_t *ikey;
    size_t klen;
    uint8_t *val;
    size_t vlen;
    size_t order; /* add order: among identical internal keys the latest add comes first */
} ref_entry;

static int ref_cmp(const void *a, const void *b) {
    const ref_entry *x = a, *y = b;
    int c = ikey_cmp(x->ikey, x->klen, y->ikey, y->klen);
    if (c) return c;
    return x->order > y->order ? -1 : x->order < y->order ? 1 : 0;
}

/* First index whose key is >= target (n if none). */
static size_t ref_lower_bound(const ref_entry *r, size_t n, const uint8_t *t, size_t tlen) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ikey_cmp(r[mid].ikey, r[mid].klen, t, tlen) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void ref_free(ref_entry *r, size_t n) {
    for (size_t i = 0; i < n; i++) free(r[i].ikey), free(r[i].val);
    free(r);
}

/* A pool of ukeys: keyspace byte + short keys over the alphabet {0x00, 'a', 0xff} (many share prefixes, some are
 * prefixes of others, zero bytes look like padding, bytes >= 0x80 test unsigned order) and a few long ones. */
static size_t make_ukey(uint64_t *rs, uint8_t *out) {
    static const uint8_t alpha[3] = {0x00, 'a', 0xff};
    static const uint8_t ks[4] = {0, 1, 0x80, 0xff};
    out[0] = ks[t_rand(rs) % 4];
    size_t len = t_rand(rs) % 16 == 0 ? 100 + t_rand(rs) % 200 : 1 + t_rand(rs) % 10;
    for (size_t i = 0; i < len; i++) out[1 + i] = alpha[t_rand(rs) % 3];
    return len + 1;
}

/* Does the iterator stand at reference position pos (n = past the end / before the start)? */
static bool iter_at(iter *it, const ref_entry *r, size_t n, size_t pos) {
    if (pos >= n) return !it->valid(it);
    if (!it->valid(it)) return false;
    size_t kl, vl;
    const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
    return kl == r[pos].klen && memcmp(k, r[pos].ikey, kl) == 0 && vl == r[pos].vlen &&
           memcmp(v, r[pos].val, vl) == 0;
}

/* ---- tests ------------------------------------------------------------------------------------------------------- */

TEST(test_memtable_basic) {
    memtable *m;
    CHECK_OK(memtable_new(1u << 20, &m));
    memtable_meta meta;
    memtable_get_meta(m, &meta);
    CHECK(meta.entries == 0 && meta.tombstones == 0 && meta.first_seq == 0 && meta.last_seq == 0);
    size_t b0 = memtable_bytes(m);

    const uint8_t k[] = "\0foo";
    CHECK_OK(memtable_add(m, 10, KV_TYPE_VALUE, k, 4, (const uint8_t *)"\x01v10", 4));
    CHECK_OK(memtable_add(m, 12, KV_TYPE_DELETE, k, 4, (const uint8_t *)"\x01", 1));
    CHECK_OK(memtable_add(m, 14, KV_TYPE_VALUE, k, 4, (const uint8_t *)"\x01v14", 4));
    CHECK_OK(memtable_add(m, 11, KV_TYPE_VALUE, (const uint8_t *)"\0fo", 3, (const uint8_t *)"", 0));
    CHECK_OK(memtable_add(m, 5, KV_TYPE_VALUE, (const uint8_t *)"\1", 1, (const uint8_t *)"\0", 1));

    int type;
    const uint8_t *v;
    size_t vlen;
    uint64_t fs;
    CHECK(memtable_get(m, k, 4, 9, &type, &v, &vlen, &fs) == 0);
    CHECK(memtable_get(m, k, 4, 10, &type, &v, &vlen, &fs) == 1);
    CHECK(type == KV_TYPE_VALUE && fs == 10);
    CHECK_MEM(v, vlen, "\x01v10", 4);
    CHECK(memtable_get(m, k, 4, 13, &type, &v, &vlen, &fs) == 1);
    CHECK(type == KV_TYPE_DELETE && fs == 12);
    CHECK(memtable_get(m, k, 4, KV_MAX_SEQUENCE, &type, &v, &vlen, &fs) == 1);
    CHECK(type == KV_TYPE_VALUE && fs == 14);
    CHECK(memtable_get(m, k, 3, 100, &type, &v, &vlen, &fs) == 1); /* "\0fo" */
    CHECK(fs == 11 && vlen == 0);
    CHECK(memtable_get(m, (const uint8_t *)"\0f", 2, 100, &type, &v, &vlen, &fs) == 0);
    CHECK(memtable_get(m, (const uint8_t *)"\0fooo", 5, 100, &type, &v, &vlen, &fs) == 0);
    CHECK(memtable_get(m, (const uint8_t *)"\1foo", 4, 100, &type, &v, &vlen, &fs) == 0);

    memtable_get_meta(m, &meta);
    CHECK_EQ(meta.entries, 5);
    CHECK_EQ(meta.tombstones, 1);
    CHECK_EQ(meta.first_seq, 5); /* the smallest sequence, not the first added */
    CHECK_EQ(meta.last_seq, 14);
    CHECK(meta.bytes == memtable_bytes(m) && meta.bytes > b0);

    /* Order: "\0fo"@11, then "\0foo" @14, @12, @10, then "\1"@5. */
    iter *it = memtable_iter(m);
    memtable_unref(m); /* the iterator keeps it alive */
    it->seek_first(it);
    uint64_t want[] = {11, 14, 12, 10, 5};
    for (int i = 0; i < 5; i++) {
        CHECK(it->valid(it));
        size_t kl;
        const uint8_t *key = it->key(it, &kl);
        CHECK_EQ(ikey_seq(key, kl), want[i]);
        it->next(it);
    }
    CHECK(!it->valid(it));
    it->seek_last(it);
    for (int i = 4; i >= 0; i--) {
        CHECK(it->valid(it));
        size_t kl;
        const uint8_t *key = it->key(it, &kl);
        CHECK_EQ(ikey_seq(key, kl), want[i]);
        it->prev(it);
    }
    CHECK(!it->valid(it));
    CHECK_OK(it->status(it));
    it->destroy(it);
}

TEST(test_memtable_empty) {
    memtable *m;
    CHECK_OK(memtable_new(1u << 20, &m));
    iter *it = memtable_iter(m);
    it->seek_first(it);
    CHECK(!it->valid(it));
    it->seek_last(it);
    CHECK(!it->valid(it));
    uint8_t t[9];
    ikey_build(t, (const uint8_t *)"\0", 1, 5, KV_TYPE_FOR_SEEK);
    it->seek(it, t, sizeof t);
    CHECK(!it->valid(it));
    CHECK_OK(it->status(it));
    int type;
    const uint8_t *v;
    size_t vlen;
    uint64_t fs;
    CHECK(memtable_get(m, (const uint8_t *)"\0", 1, 5, &type, &v, &vlen, &fs) == 0);
    it->destroy(it);
    memtable_unref(m);
}

/* Many versions and deletes of a small pool of keys; duplicates of whole internal keys too. */
TEST(test_memtable_vs_reference) {
    uint64_t rs = t_seed();
    enum { POOL = 300, OPS = 20000 };
    uint8_t *pool[POOL];
    size_t plen[POOL];
    for (int i = 0; i < POOL; i++) {
        uint8_t buf[512];
        plen[i] = make_ukey(&rs, buf);
        pool[i] = malloc(plen[i]);
        memcpy(pool[i], buf, plen[i]);
    }
    memtable *m;
    CHECK_OK(memtable_new(1u << 20, &m));
    ref_entry *ref = calloc(OPS, sizeof *ref);
    uint64_t seq = 0, tombs = 0, maxseq = 0;
    for (size_t i = 0; i < OPS; i++) {
        int p = (int)(t_rand(&rs) % POOL);
        /* several entries may share a sequence (one batch); rarely an exact duplicate internal key */
        if (seq == 0 || t_rand(&rs) % 4 != 0) seq++;
        int type = t_rand(&rs) % 5 == 0 ? KV_TYPE_DELETE : (t_rand(&rs) % 10 == 0 ? KV_TYPE_BLOB : KV_TYPE_VALUE);
        if (i > 0 && t_rand(&rs) % 50 == 0) { /* repeat the previous internal key exactly */
            p = -1;
            ref[i].klen = ref[i - 1].klen;
            ref[i].ikey = malloc(ref[i].klen);
            memcpy(ref[i].ikey, ref[i - 1].ikey, ref[i].klen);
            type = ikey_type(ref[i].ikey, ref[i].klen);
        } else {
            ref[i].klen = plen[p] + 8;
            ref[i].ikey = malloc(ref[i].klen);
            ikey_build(ref[i].ikey, pool[p], plen[p], seq, type);
        }
        size_t vlen = type == KV_TYPE_DELETE ? 1 : 1 + 8 + t_rand(&rs) % 40;
        ref[i].val = malloc(vlen);
        ref[i].val[0] = 0x05; /* a varint timestamp */
        if (vlen > 1) {
            put_fixed64(ref[i].val + 1, i);
            memset(ref[i].val + 9, 'x', vlen - 9);
        }
        ref[i].vlen = vlen;
        ref[i].order = i;
        if (type == KV_TYPE_DELETE) tombs++;
        if (ikey_seq(ref[i].ikey, ref[i].klen) > maxseq) maxseq = ikey_seq(ref[i].ikey, ref[i].klen);
        CHECK_OK(memtable_add(m, ikey_seq(ref[i].ikey, ref[i].klen), type, ref[i].ikey, ref[i].klen - 8, ref[i].val,
                              vlen));
    }
    memtable_meta meta;
    memtable_get_meta(m, &meta);
    CHECK_EQ(meta.entries, OPS);
    CHECK_EQ(meta.tombstones, tombs);
    CHECK_EQ(meta.first_seq, 1);
    CHECK_EQ(meta.last_seq, maxseq);

    qsort(ref, OPS, sizeof *ref, ref_cmp);

    /* get at many sequence numbers: the first reference entry >= (ukey, s, FOR_SEEK) with the same ukey */
    for (int q = 0; q < 20000; q++) {
        int p = (int)(t_rand(&rs) % POOL);
        uint64_t s = t_rand(&rs) % (seq + 2);
        uint8_t t[512];
        ikey_build(t, pool[p], plen[p], s, KV_TYPE_FOR_SEEK);
        size_t pos = ref_lower_bound(ref, OPS, t, plen[p] + 8);
        bool expect = pos < OPS && ref[pos].klen == plen[p] + 8 && memcmp(ref[pos].ikey, pool[p], plen[p]) == 0;
        int type;
        const uint8_t *v;
        size_t vlen;
        uint64_t fs;
        int got = memtable_get(m, pool[p], plen[p], s, &type, &v, &vlen, &fs);
        CHECK_EQ(got, expect);
        if (got) {
            CHECK_EQ(fs, ikey_seq(ref[pos].ikey, ref[pos].klen));
            CHECK_EQ(type, ikey_type(ref[pos].ikey, ref[pos].klen));
            CHECK_MEM(v, vlen, ref[pos].val, ref[pos].vlen);
        }
    }

    iter *it = memtable_iter(m);
    /* full scans */
    it->seek_first(it);
    for (size_t i = 0; i < OPS; i++) {
        CHECK_MSG(iter_at(it, ref, OPS, i), "forward scan differs at %zu", i);
        it->next(it);
    }
    CHECK(!it->valid(it));
    it->seek_last(it);
    for (size_t i = OPS; i-- > 0;) {
        CHECK_MSG(iter_at(it, ref, OPS, i), "backward scan differs at %zu", i);
        it->prev(it);
    }
    CHECK(!it->valid(it));

    /* a random walk: seeks (to present and absent keys, any sequence and type), steps both ways */
    size_t pos = OPS;
    for (int step = 0; step < 30000; step++) {
        unsigned op = (unsigned)(t_rand(&rs) % 16);
        if (op == 0) {
            it->seek_first(it);
            pos = 0;
        } else if (op == 1) {
            it->seek_last(it);
            pos = OPS - 1;
        } else if (op < 5 || pos >= OPS) {
            uint8_t u[512], t[520];
            size_t ul;
            if (t_rand(&rs) % 2) {
                int p = (int)(t_rand(&rs) % POOL);
                memcpy(u, pool[p], plen[p]);
                ul = plen[p];
            } else {
                ul = make_ukey(&rs, u);
            }
            int type = t_rand(&rs) % 2 ? KV_TYPE_FOR_SEEK : (int)(t_rand(&rs) % 3);
            ikey_build(t, u, ul, t_rand(&rs) % (seq + 2), type);
            it->seek(it, t, ul + 8);
            pos = ref_lower_bound(ref, OPS, t, ul + 8);
        } else if (op < 10) {
            it->next(it);
            pos++;
        } else {
            it->prev(it);
            pos = pos == 0 ? OPS : pos - 1;
        }
        CHECK_MSG(iter_at(it, ref, OPS, pos), "random walk differs at step %d (op %u, pos %zu)", step, op, pos);
    }
    it->destroy(it);
    memtable_unref(m);
    ref_free(ref, OPS);
    for (int i = 0; i < POOL; i++) free(pool[i]);
}

/* Keys at the size limit and values far beyond the arena's block size. */
TEST(test_memtable_big_entries) {
    memtable *m;
    CHECK_OK(memtable_new(1u << 20, &m));
    size_t ulen = 1 + KV_MAX_KEY;
    uint8_t *bigkey = malloc(ulen);
    memset(bigkey, 'k', ulen);
    bigkey[0] = 0;
    size_t vlen = 3u << 20;
    uint8_t *bigval = malloc(vlen);
    for (size_t i = 0; i < vlen; i++) bigval[i] = (uint8_t)(i * 7);
    CHECK_OK(memtable_add(m, 1, KV_TYPE_VALUE, bigkey, ulen, bigval, vlen));
    CHECK_OK(memtable_add(m, 2, KV_TYPE_VALUE, (const uint8_t *)"\0a", 2, (const uint8_t *)"\0small", 6));
    bigkey[ulen - 1] = 'l';
    CHECK_OK(memtable_add(m, 3, KV_TYPE_VALUE, bigkey, ulen, bigval, 100000));
    bigkey[ulen - 1] = 'k';
    CHECK(memtable_bytes(m) >= vlen + 100000 + 2 * ulen);
    int type;
    const uint8_t *v;
    size_t got;
    uint64_t fs;
    CHECK(memtable_get(m, bigkey, ulen, 5, &type, &v, &got, &fs) == 1);
    CHECK(fs == 1);
    CHECK_MEM(v, got, bigval, vlen);
    CHECK(memtable_get(m, (const uint8_t *)"\0a", 2, 5, &type, &v, &got, &fs) == 1);
    CHECK_MEM(v, got, "\0small", 6);
    iter *it = memtable_iter(m);
    it->seek_last(it);
    CHECK(it->valid(it));
    size_t kl;
    const uint8_t *k = it->key(it, &kl);
    CHECK(kl == ulen + 8 && ikey_seq(k, kl) == 3);
    it->prev(it);
    k = it->key(it, &kl);
    CHECK(kl == ulen + 8 && ikey_seq(k, kl) == 1);
    /* a seek with a malformed (too short) target must not over-read */
    it->seek(it, (const uint8_t *)"\0", 1);
    CHECK(it->valid(it));
    k = it->key(it, &kl);
    CHECK(ikey_seq(k, kl) == 2);
    it->destroy(it);
    memtable_unref(m);
    free(bigkey);
    free(bigval);
}

/* ---- one writer, concurrent readers ------------------------------------------------------------------------------ */

enum { CONC_KEYS = 200000, CONC_READERS = 2 };

typedef struct conc {
    memtable *m;
    atomic_size_t published; /* keys [0, published) are in the memtable */
    atomic_bool done;
    atomic_int failures;
    char msg[256];
} conc;

/* Key i: keyspace 0, 8 scrambled bytes (random insert order) then i itself, so a reader can tell which it saw. */
static void conc_key(size_t i, uint8_t out[13]) {
    uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
    x ^= x >> 29;
    out[0] = 0;
    for (int b = 0; b < 8; b++) out[1 + b] = (uint8_t)(x >> (56 - 8 * b));
    out[9] = (uint8_t)(i >> 24), out[10] = (uint8_t)(i >> 16), out[11] = (uint8_t)(i >> 8), out[12] = (uint8_t)i;
}
static size_t conc_index(const uint8_t *ukey) {
    return (size_t)ukey[9] << 24 | (size_t)ukey[10] << 16 | (size_t)ukey[11] << 8 | ukey[12];
}

static void conc_fail(conc *c, const char *what, size_t a, size_t b) {
    if (atomic_fetch_add(&c->failures, 1) == 0) snprintf(c->msg, sizeof c->msg, "%s (%zu, %zu)", what, a, b);
}

static void *conc_writer(void *arg) {
    conc *c = arg;
    for (size_t i = 0; i < CONC_KEYS; i++) {
        uint8_t k[13], v[8];
        conc_key(i, k);
        put_fixed64(v, i);
        if (memtable_add(c->m, i + 1, KV_TYPE_VALUE, k, sizeof k, v, sizeof v) != KV_OK) {
            conc_fail(c, "add failed", i, 0);
            break;
        }
        atomic_store_explicit(&c->published, i + 1, memory_order_release);
    }
    atomic_store(&c->done, true);
    return NULL;
}

/* One full scan, forward or backward: strictly sorted, and every key published before it started is there. */
static void conc_scan(conc *c, iter *it, uint8_t *seen, bool forward) {
    size_t before = atomic_load_explicit(&c->published, memory_order_acquire);
    memset(seen, 0, CONC_KEYS);
    uint8_t last[21];
    size_t lastlen = 0, count = 0;
    if (forward) it->seek_first(it);
    else it->seek_last(it);
    for (; it->valid(it); forward ? it->next(it) : it->prev(it)) {
        size_t kl, vl;
        const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
        if (kl != 21 || vl != 8) return conc_fail(c, "bad entry size", kl, vl);
        size_t idx = conc_index(k);
        if (idx >= CONC_KEYS || get_fixed64(v) != idx) return conc_fail(c, "bad entry", idx, 0);
        if (lastlen) {
            int cmp = ikey_cmp(last, lastlen, k, kl);
            if (forward ? cmp >= 0 : cmp <= 0) return conc_fail(c, "out of order", idx, count);
        }
        memcpy(last, k, kl);
        lastlen = kl;
        seen[idx] = 1;
        count++;
    }
    for (size_t i = 0; i < before; i++)
        if (!seen[i]) return conc_fail(c, forward ? "forward scan missed a key" : "backward scan missed a key", i, before);
}

static void *conc_reader(void *arg) {
    conc *c = arg;
    uint8_t *seen = malloc(CONC_KEYS);
    iter *it = memtable_iter(c->m);
    uint64_t rs = t_seed() ^ (uint64_t)(uintptr_t)&seen;
    for (int round = 0; !atomic_load(&c->failures); round++) {
        bool finished = atomic_load(&c->done);
        /* point lookups of published keys */
        size_t n = atomic_load_explicit(&c->published, memory_order_acquire);
        for (int q = 0; n && q < 2000; q++) {
            size_t i = q == 0 ? n - 1 : t_rand(&rs) % n;
            uint8_t k[13];
            conc_key(i, k);
            int type;
            const uint8_t *v;
            size_t vlen;
            uint64_t fs;
            if (memtable_get(c->m, k, sizeof k, KV_MAX_SEQUENCE, &type, &v, &vlen, &fs) != 1 || fs != i + 1 ||
                vlen != 8 || get_fixed64(v) != i) {
                conc_fail(c, "get missed a published key", i, n);
                break;
            }
        }
        conc_scan(c, it, seen, round % 2 == 0);
        if (finished) break;
    }
    it->destroy(it);
    free(seen);
    return NULL;
}

TEST(test_memtable_concurrent_readers) {
    conc c = {0};
    CHECK_OK(memtable_new(1u << 20, &c.m));
    atomic_init(&c.published, 0);
    atomic_init(&c.done, false);
    atomic_init(&c.failures, 0);
    pthread_t w, r[CONC_READERS];
    for (int i = 0; i < CONC_READERS; i++) CHECK(pthread_create(&r[i], NULL, conc_reader, &c) == 0);
    CHECK(pthread_create(&w, NULL, conc_writer, &c) == 0);
    pthread_join(w, NULL);
    for (int i = 0; i < CONC_READERS; i++) pthread_join(r[i], NULL);
    CHECK_MSG(atomic_load(&c.failures) == 0, "%s", c.msg);
    memtable_meta meta;
    memtable_get_meta(c.m, &meta);
    CHECK_EQ(meta.entries, CONC_KEYS);
    memtable_unref(c.m);
}

TEST(test_memtable_key_filter_has_no_false_negatives) {
    /* A filter sized for a small memtable (the minimum, 4096 bits) holding 20,000 keys is saturated: it then says
     * "maybe" to nearly everything, and every key added must still be found. One sized for them answers absent keys
     * itself; those must stay absent. */
    size_t sizes[] = {0, 20000 * 64};
    for (int s = 0; s < 2; s++) {
        memtable *m;
        CHECK_OK(memtable_new(sizes[s], &m));
        uint8_t k[24];
        for (uint64_t i = 0; i < 20000; i++) {
            int n = snprintf((char *)k, sizeof k, "%c%016llu", 0, (unsigned long long)(i * 7919 % 100003));
            CHECK_OK(memtable_add(m, i + 1, KV_TYPE_VALUE, k, (size_t)n, (const uint8_t *)"\x01v", 2));
        }
        int type;
        const uint8_t *v;
        size_t vlen;
        uint64_t fs;
        for (uint64_t i = 0; i < 20000; i++) {
            int n = snprintf((char *)k, sizeof k, "%c%016llu", 0, (unsigned long long)(i * 7919 % 100003));
            CHECK_MSG(memtable_get(m, k, (size_t)n, KV_MAX_SEQUENCE, &type, &v, &vlen, &fs) == 1, "key %llu",
                      (unsigned long long)i);
            CHECK_EQ(fs, i + 1);
            /* the same digits in another keyspace, and one digit more: never added */
            k[0] = 1;
            CHECK(memtable_get(m, k, (size_t)n, KV_MAX_SEQUENCE, &type, &v, &vlen, &fs) == 0);
            k[0] = 0;
            k[n] = '0';
            CHECK(memtable_get(m, k, (size_t)n + 1, KV_MAX_SEQUENCE, &type, &v, &vlen, &fs) == 0);
        }
        memtable_unref(m);
    }
}
