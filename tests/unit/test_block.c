/* test_block.c — block builder, parser and iterator: round trips, seeks in both directions, corrupt blocks. */
#include <stdlib.h>

#include "block.h"
#include "dbformat.h"
#include "t.h"

typedef struct ent {
    uint8_t key[40];
    size_t klen;
    uint8_t val[64];
    size_t vlen;
} ent;

static int ent_cmp(const void *a, const void *b) {
    const ent *x = a, *y = b;
    return ikey_cmp(x->key, x->klen, y->key, y->klen);
}

/* n distinct internal keys in order: user keys over a small alphabet (so neighbours share prefixes), several
 * sequence numbers per user key, values of 0..63 bytes. */
static ent *make_entries(uint64_t *rs, size_t n) {
    ent *e = calloc(n, sizeof *e);
    for (size_t i = 0; i < n; i++) {
        size_t ulen = 1 + t_rand(rs) % 20;
        e[i].key[0] = (uint8_t)(t_rand(rs) % 3);
        for (size_t j = 1; j < ulen; j++) e[i].key[j] = (uint8_t)('a' + t_rand(rs) % 3);
        put_fixed64(e[i].key + ulen, ikey_pack(1 + t_rand(rs) % 1000, (int)(t_rand(rs) % 3)));
        e[i].klen = ulen + 8;
        e[i].vlen = t_rand(rs) % 4 == 0 ? 0 : t_rand(rs) % 64;
        for (size_t j = 0; j < e[i].vlen; j++) e[i].val[j] = (uint8_t)t_rand(rs);
    }
    qsort(e, n, sizeof *e, ent_cmp);
    size_t m = 0; /* drop duplicates */
    for (size_t i = 0; i < n; i++)
        if (m == 0 || ent_cmp(&e[m - 1], &e[i]) != 0) e[m++] = e[i];
    for (size_t i = m; i < n; i++) e[i].klen = 0;
    return e;
}

static size_t count_valid(const ent *e, size_t n) {
    size_t m = 0;
    while (m < n && e[m].klen) m++;
    return m;
}

static block *build(const ent *e, size_t n, int interval) {
    block_builder bb;
    block_builder_init(&bb, interval);
    for (size_t i = 0; i < n; i++)
        if (block_builder_add(&bb, e[i].key, e[i].klen, e[i].val, e[i].vlen) != KV_OK) return NULL;
    const uint8_t *d;
    size_t len;
    size_t predicted = block_builder_size(&bb);
    block_builder_finish(&bb, &d, &len);
    if (len != predicted) return NULL;
    uint8_t *copy = malloc(len);
    memcpy(copy, d, len);
    block_builder_free(&bb);
    block *b;
    if (block_parse(copy, len, 7, 4096, &b) != KV_OK) return NULL;
    return b;
}

#define CHECK_AT(it, e)                                                   \
    do {                                                                  \
        const ent *x_ = &(e);                                             \
        CHECK((it)->valid(it));                                           \
        size_t kn_, vn_;                                                  \
        const uint8_t *k_ = (it)->key((it), &kn_), *v_ = (it)->value((it), &vn_); \
        CHECK_MEM(k_, kn_, x_->key, x_->klen);                            \
        CHECK_MEM(v_, vn_, x_->val, x_->vlen);                            \
    } while (0)

static void roundtrip(int interval, size_t n, uint64_t seed) {
    uint64_t rs = seed;
    ent *e = make_entries(&rs, n);
    n = count_valid(e, n);
    block *b = build(e, n, interval);
    CHECK(b != NULL);
    iter *it = block_iter_new(b, NULL, NULL);
    /* forward */
    size_t i = 0;
    for (it->seek_first(it); it->valid(it); it->next(it), i++) CHECK_AT(it, e[i]);
    CHECK_EQ(i, n);
    CHECK_OK(it->status(it));
    /* backward */
    i = n;
    for (it->seek_last(it); it->valid(it); it->prev(it)) CHECK_AT(it, e[--i]);
    CHECK_EQ(i, 0);
    /* seek to every key, then step both ways */
    for (i = 0; i < n; i++) {
        it->seek(it, e[i].key, e[i].klen);
        CHECK_AT(it, e[i]);
        if (i + 1 < n) {
            it->next(it);
            CHECK_AT(it, e[i + 1]);
            it->prev(it);
            CHECK_AT(it, e[i]);
        }
        it->prev(it);
        if (i > 0) CHECK_AT(it, e[i - 1]);
        else CHECK(!it->valid(it));
        /* the point lookup agrees */
        uint64_t tr;
        const uint8_t *v;
        size_t vn;
        CHECK_EQ(block_seek_value(b, e[i].key, e[i].klen, true, &tr, &v, &vn), 1);
        CHECK_MEM(v, vn, e[i].val, e[i].vlen);
        CHECK(tr == get_fixed64(e[i].key + e[i].klen - 8));
    }
    /* seek to lookup keys: (ukey, max seq) lands on the newest version of ukey; (ukey, 0) after all its versions */
    for (i = 0; i < n; i++) {
        uint8_t k[48];
        size_t ulen = e[i].klen - 8;
        ikey_build(k, e[i].key, ulen, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
        size_t first = i;
        while (first > 0 && ukey_cmp(e[first - 1].key, e[first - 1].klen - 8, e[i].key, ulen) == 0) first--;
        it->seek(it, k, ulen + 8);
        CHECK_AT(it, e[first]);
        ikey_build(k, e[i].key, ulen, 0, 0);
        size_t after = i;
        while (after < n && ukey_cmp(e[after].key, e[after].klen - 8, e[i].key, ulen) == 0) after++;
        it->seek(it, k, ulen + 8);
        if (after < n) CHECK_AT(it, e[after]);
        else CHECK(!it->valid(it));
        uint64_t tr;
        const uint8_t *v;
        size_t vn;
        CHECK_EQ(block_seek_value(b, k, ulen + 8, true, &tr, &v, &vn), 0);
    }
    /* past the end */
    uint8_t big[9] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    it->seek(it, big, 9);
    CHECK(!it->valid(it));
    CHECK_OK(it->status(it));
    it->destroy(it);
    block_free(b);
    free(e);
}

TEST(test_block_roundtrip) {
    int intervals[] = {1, 2, 3, 16, 1000};
    for (size_t k = 0; k < sizeof intervals / sizeof intervals[0]; k++) {
        for (size_t n = 1; n < 300; n = n * 3 + 1) {
            roundtrip(intervals[k], n, t_seed() + n * 31 + (uint64_t)intervals[k]);
            if (t_failed()) {
                printf("# interval %d n %zu\n", intervals[k], n);
                return;
            }
        }
    }
}

TEST(test_block_empty) {
    block_builder bb;
    block_builder_init(&bb, 16);
    CHECK(block_builder_empty(&bb));
    const uint8_t *d;
    size_t len;
    block_builder_finish(&bb, &d, &len);
    CHECK_EQ(len, 4);
    uint8_t *copy = malloc(len);
    memcpy(copy, d, len);
    block_builder_free(&bb);
    block *b;
    CHECK_OK(block_parse(copy, len, 1, 0, &b));
    iter *it = block_iter_new(b, NULL, NULL);
    it->seek_first(it);
    CHECK(!it->valid(it));
    it->seek_last(it);
    CHECK(!it->valid(it));
    uint8_t k[9] = {1, 0, 0, 0, 0, 0, 0, 0, 0};
    it->seek(it, k, 9);
    CHECK(!it->valid(it));
    CHECK_OK(it->status(it));
    it->destroy(it);
    const uint8_t *v;
    size_t vn;
    CHECK_EQ(block_seek_value(b, k, 9, false, NULL, &v, &vn), 0);
    block_free(b);
}

TEST(test_block_reset_and_long_keys) {
    /* keys longer than the point lookup's stack scratch, sharing long prefixes */
    block_builder bb;
    block_builder_init(&bb, 4);
    static uint8_t keys[20][1200];
    for (int round = 0; round < 2; round++) {
        block_builder_reset(&bb);
        for (int i = 0; i < 20; i++) {
            memset(keys[i], 'x', 1190);
            keys[i][1190] = (uint8_t)('a' + i);
            put_fixed64(keys[i] + 1191, ikey_pack(5, 1));
            CHECK_OK(block_builder_add(&bb, keys[i], 1199, keys[i], (size_t)i));
        }
    }
    const uint8_t *d;
    size_t len;
    block_builder_finish(&bb, &d, &len);
    uint8_t *copy = malloc(len);
    memcpy(copy, d, len);
    block_builder_free(&bb);
    block *b;
    CHECK_OK(block_parse(copy, len, 1, 0, &b));
    iter *it = block_iter_new(b, NULL, NULL);
    int i = 0;
    for (it->seek_first(it); it->valid(it); it->next(it), i++) {
        size_t kn;
        const uint8_t *k = it->key(it, &kn);
        CHECK_MEM(k, kn, keys[i], 1199);
    }
    CHECK_EQ(i, 20);
    for (i = 0; i < 20; i++) {
        const uint8_t *v;
        size_t vn;
        CHECK_EQ(block_seek_value(b, keys[i], 1199, true, NULL, &v, &vn), 1);
        CHECK_MEM(v, vn, keys[i], (size_t)i);
        it->seek(it, keys[i], 1199);
        CHECK(it->valid(it));
        it->prev(it);
        CHECK(it->valid(it) == (i > 0));
    }
    it->destroy(it);
    block_free(b);
}

TEST(test_block_bad_trailer) {
    uint8_t *d;
    block *b;
    /* too short */
    d = malloc(3);
    memset(d, 0, 3);
    CHECK_EQ(block_parse(d, 3, 12, 8192, &b), KV_ECORRUPT);
    CHECK(strstr(kv_errmsg(), "000012.sst") && strstr(kv_errmsg(), "offset 8192"));
    /* restart count larger than the block */
    d = malloc(8);
    memset(d, 0, 8);
    put_fixed32(d + 4, 5);
    CHECK_EQ(block_parse(d, 8, 1, 0, &b), KV_ECORRUPT);
    /* bytes before a zero restart count */
    d = malloc(8);
    memset(d, 0, 8);
    CHECK_EQ(block_parse(d, 8, 1, 0, &b), KV_ECORRUPT);
    /* restart offsets not increasing / out of range / first not 0 */
    uint32_t cases[][2] = {{0, 0}, {4, 8}, {0, 100}};
    for (int i = 0; i < 3; i++) {
        d = calloc(1, 32);
        put_fixed32(d + 20, cases[i][0]);
        put_fixed32(d + 24, cases[i][1]);
        put_fixed32(d + 28, 2);
        CHECK_EQ(block_parse(d, 32, 1, 0, &b), KV_ECORRUPT);
    }
}

/* Walk a (possibly corrupt) block every way; never crash, never loop; errors are reported as KV_ECORRUPT. */
static void walk_everything(const block *b, const ent *e, size_t n) {
    iter *it = block_iter_new(b, NULL, NULL);
    size_t steps = 0;
    for (it->seek_first(it); it->valid(it) && steps < 10 * n + 10; it->next(it)) steps++;
    CHECK(it->status(it) == KV_OK || it->status(it) == KV_ECORRUPT);
    it->destroy(it);
    it = block_iter_new(b, NULL, NULL);
    steps = 0;
    for (it->seek_last(it); it->valid(it) && steps < 10 * n + 10; it->prev(it)) steps++;
    CHECK(it->status(it) == KV_OK || it->status(it) == KV_ECORRUPT);
    it->destroy(it);
    for (size_t i = 0; i < n; i++) {
        it = block_iter_new(b, NULL, NULL);
        it->seek(it, e[i].key, e[i].klen);
        if (it->valid(it)) {
            size_t kn, vn;
            it->key(it, &kn);
            it->value(it, &vn);
            it->prev(it);
            if (it->valid(it)) it->next(it);
        }
        CHECK(it->status(it) == KV_OK || it->status(it) == KV_ECORRUPT);
        it->destroy(it);
        const uint8_t *v;
        size_t vn;
        int rc = block_seek_value(b, e[i].key, e[i].klen, true, NULL, &v, &vn);
        CHECK(rc == 0 || rc == 1 || rc == KV_ECORRUPT);
        if (rc == 1) CHECK(v >= b->data && v + vn <= b->data + b->len);
    }
}

TEST(test_block_corruption_never_crashes) {
    uint64_t rs = t_seed() ^ 0xb10c;
    ent *e = make_entries(&rs, 40);
    size_t n = count_valid(e, 40);
    int intervals[] = {1, 4};
    for (int k = 0; k < 2; k++) {
        block_builder bb;
        block_builder_init(&bb, intervals[k]);
        for (size_t i = 0; i < n; i++) CHECK_OK(block_builder_add(&bb, e[i].key, e[i].klen, e[i].val, e[i].vlen));
        const uint8_t *d;
        size_t len;
        block_builder_finish(&bb, &d, &len);
        for (size_t off = 0; off < len; off++) {
            for (int flip = 0; flip < 2; flip++) {
                uint8_t *copy = malloc(len);
                memcpy(copy, d, len);
                copy[off] ^= flip ? 0xff : 0x01;
                block *b;
                int rc = block_parse(copy, len, 3, 0, &b);
                if (rc == KV_OK) {
                    walk_everything(b, e, n);
                    block_free(b);
                } else {
                    CHECK_EQ(rc, KV_ECORRUPT);
                }
                if (t_failed()) {
                    printf("# offset %zu flip %d\n", off, flip);
                    block_builder_free(&bb);
                    free(e);
                    return;
                }
            }
        }
        /* truncations */
        for (size_t cut = 0; cut < len; cut++) {
            uint8_t *copy = malloc(cut ? cut : 1);
            memcpy(copy, d, cut);
            block *b;
            if (block_parse(copy, cut, 3, 0, &b) == KV_OK) {
                walk_everything(b, e, n);
                block_free(b);
            }
            if (t_failed()) break;
        }
        block_builder_free(&bb);
        if (t_failed()) break;
    }
    free(e);
}

static int released;
static void on_release(void *arg) { released += *(int *)arg; }

TEST(test_block_iter_release) {
    uint64_t rs = 1;
    ent *e = make_entries(&rs, 10);
    block *b = build(e, count_valid(e, 10), 16);
    CHECK(b != NULL);
    int one = 1;
    released = 0;
    iter *it = block_iter_new(b, on_release, &one);
    it->seek_first(it);
    CHECK(it->valid(it));
    it->destroy(it);
    CHECK_EQ(released, 1);
    block_free(b);
    free(e);
}
