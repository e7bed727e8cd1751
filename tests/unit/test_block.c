/* test_block.c — block builder, parser and iterator: round trips, seeks in both directions, corrupt blocks; seekable
 * compressed blocks (zblock.c): lookups agree with the raw block's, damage is reported, never a crash. */
#include <stdlib.h>

#include "block.h"
#include "dbformat.h"
#include "t.h"
#include "zblock.h"

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

/* ---- seekable blocks ------------------------------------------------------------------------------------------ */

/* The raw block b in the seekable form, parsed; NULL when it did not compress (into plenty of room, it always does). */
static zblock *seekable(deflate_encoder *enc, const block *b, zcode_cache *codes) {
    size_t cap = b->len * 2 + 64;
    uint8_t *stored = malloc(cap);
    size_t n = zblock_encode(enc, b->data, b->len, stored, cap);
    zblock *z = NULL;
    if (n == 0 || zblock_parse(stored, n, 7, 4096, codes, &z) != KV_OK) {
        if (n == 0) free(stored);
        return NULL;
    }
    return z;
}

/* zblock_seek_value answers as block_seek_value does on the raw block, for this target. */
static bool same_answer(const zblock *z, zcode_cache *cc, const block *b, const uint8_t *k, size_t kn,
                        bool same_ukey) {
    uint64_t tr1 = 0, tr2 = 0;
    const uint8_t *v;
    size_t vn;
    kv_bytes got = {0};
    int want = block_seek_value(b, k, kn, same_ukey, &tr1, &v, &vn);
    int rc = zblock_seek_value(z, cc, k, kn, same_ukey, false, &tr2, &got);
    bool ok = rc == want && (rc != 1 || (tr1 == tr2 && got.len == vn && (vn == 0 || !memcmp(got.data, v, vn))));
    bytes_free(&got);
    return ok;
}

TEST(test_zblock_lookups_match_raw_block) {
    uint64_t rs = t_seed() + 40;
    /* Blocks with the fixed code, then with a code learnt from another block (shared through a code cache, as a
     * table reader shares it), then with one learnt from each block itself, read without a cache. */
    deflate_encoder *fixed = deflate_encoder_new(), *shared = deflate_encoder_new(), *own = deflate_encoder_new();
    CHECK(fixed && shared && own);
    zcode_cache *codes = zcode_cache_new();
    CHECK(codes);
    ent *sample = make_entries(&rs, 80);
    block *sb = build(sample, count_valid(sample, 80), 4);
    CHECK(sb && deflate_encoder_learn(shared, sb->data, sb->len));
    int intervals[] = {1, 2, 3, 4, 16, 100};
    size_t sizes[] = {1, 2, 5, 40, 300};
    for (int mode = 0; mode < 3; mode++)
    for (size_t a = 0; a < sizeof intervals / sizeof *intervals; a++)
        for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++) {
            ent *e = make_entries(&rs, sizes[c]);
            size_t n = count_valid(e, sizes[c]);
            block *b = build(e, n, intervals[a]);
            CHECK(b);
            if (mode == 2) CHECK(deflate_encoder_learn(own, b->data, b->len));
            zcode_cache *cc = mode == 1 ? codes : NULL;
            zblock *z = seekable(mode == 0 ? fixed : mode == 1 ? shared : own, b, cc);
            CHECK_MSG(z, "interval %d, %zu entries: not encoded", intervals[a], n);
            CHECK_EQ(z->nspans, b->num_restarts + 1);
            /* Inflated whole, it is the raw block. */
            uint8_t *raw;
            size_t rl;
            CHECK_OK(zblock_inflate(z, cc, &raw, &rl));
            CHECK_MEM(raw, rl, b->data, b->len);
            free(raw);
            for (size_t i = 0; i < n; i++) {
                uint8_t k[48];
                size_t ulen = e[i].klen - 8;
                /* every key as it is, the lookup keys around it, and a user key just after it */
                CHECK_MSG(same_answer(z, cc, b, e[i].key, e[i].klen, true), "entry %zu, interval %d", i, intervals[a]);
                CHECK(same_answer(z, cc, b, e[i].key, e[i].klen, false));
                ikey_build(k, e[i].key, ulen, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
                CHECK(same_answer(z, cc, b, k, ulen + 8, true));
                ikey_build(k, e[i].key, ulen, 0, 0);
                CHECK(same_answer(z, cc, b, k, ulen + 8, true));
                CHECK(same_answer(z, cc, b, k, ulen + 8, false));
                memcpy(k, e[i].key, ulen);
                k[ulen] = 0;
                ikey_build(k, k, ulen + 1, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
                CHECK(same_answer(z, cc, b, k, ulen + 9, true));
            }
            uint8_t big[9] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, small[9] = {0};
            CHECK(same_answer(z, cc, b, big, 9, false));
            CHECK(same_answer(z, cc, b, small, 9, false));
            /* The span-at-a-time iterator walks, steps and seeks as the raw block's does. */
            iter *zi = zblock_iter_new(z, cc);
            size_t i = 0;
            for (zi->seek_first(zi); zi->valid(zi); zi->next(zi), i++) CHECK_AT(zi, e[i]);
            CHECK_EQ(i, n);
            CHECK_OK(zi->status(zi));
            for (zi->seek_last(zi); zi->valid(zi); zi->prev(zi)) CHECK_AT(zi, e[--i]);
            CHECK_EQ(i, 0);
            for (i = 0; i < n; i++) {
                uint8_t k[48];
                size_t ulen = e[i].klen - 8;
                zi->seek(zi, e[i].key, e[i].klen);
                CHECK_AT(zi, e[i]);
                zi->prev(zi);
                if (i > 0) CHECK_AT(zi, e[i - 1]);
                else CHECK(!zi->valid(zi));
                ikey_build(k, e[i].key, ulen, 0, 0); /* after every version of this user key */
                size_t after = i;
                while (after < n && ukey_cmp(e[after].key, e[after].klen - 8, e[i].key, ulen) == 0) after++;
                zi->seek(zi, k, ulen + 8);
                if (after < n) CHECK_AT(zi, e[after]);
                else CHECK(!zi->valid(zi));
            }
            zi->seek(zi, big, 9);
            CHECK(!zi->valid(zi));
            zi->seek(zi, small, 9); /* the first entry >= the smallest lookup key of user key "\0" */
            size_t first = 0;
            while (first < n && ikey_cmp(e[first].key, e[first].klen, small, 9) < 0) first++;
            if (first < n) CHECK_AT(zi, e[first]);
            else CHECK(!zi->valid(zi));
            CHECK_OK(zi->status(zi));
            zi->destroy(zi);
            zblock_free(z);
            block_free(b);
            free(e);
        }
    deflate_encoder_free(fixed);
    deflate_encoder_free(shared);
    deflate_encoder_free(own);
    zcode_cache_free(codes);
    block_free(sb);
    free(sample);
}

/* zblock_seek_value's answer for target, with or without unique_ukeys: 1 and the entry's value, 0, or an error. */
static int lookup(const zblock *z, const uint8_t *k, size_t kn, bool unique, kv_bytes *v) {
    uint64_t tr;
    return zblock_seek_value(z, NULL, k, kn, true, unique, &tr, v);
}

/* A block whose user keys are each there once (as in most tables: the table's user_keys property says so). With
 * unique_ukeys, a lookup of the user key that starts a span takes that span's first entry and leaves the span before
 * it alone: with that span damaged, the lookup still finds the value. Without unique_ukeys, the lookup inflates the
 * damaged span, and the damage shows (an error or a wrong answer) in some of the cases: the other path is taken.
 * Undamaged, both answer as the raw block does, also at sequences that do not see the entry. */
TEST(test_zblock_unique_keys_skip_the_span_before) {
    uint64_t rs = t_seed() + 43;
    size_t n = 64;
    ent *e = calloc(n, sizeof *e);
    CHECK(e);
    for (size_t i = 0; i < n; i++) {
        int ulen = snprintf((char *)e[i].key, 16, "key%05zu", i * 7);
        put_fixed64(e[i].key + ulen, ikey_pack(1000 + t_rand(&rs) % 500, KV_TYPE_VALUE));
        e[i].klen = (size_t)ulen + 8;
        e[i].vlen = 20 + t_rand(&rs) % 40;
        for (size_t j = 0; j < e[i].vlen; j++) e[i].val[j] = (uint8_t)('a' + t_rand(&rs) % 26);
    }
    block *b = build(e, n, 4);
    deflate_encoder *enc = deflate_encoder_new();
    CHECK(b && enc && deflate_encoder_learn(enc, b->data, b->len));
    size_t cap = b->len * 2 + 64;
    uint8_t *stored = malloc(cap);
    CHECK(stored);
    size_t len = zblock_encode(enc, b->data, b->len, stored, cap);
    CHECK(len > 0);
    if (t_failed()) return;
    zblock *z = seekable(enc, b, NULL);
    CHECK(z && z->nspans == n / 4 + 1);
    if (t_failed()) return;
    for (size_t i = 0; i < n; i++) {
        uint8_t k[48];
        size_t ulen = e[i].klen - 8;
        uint64_t seq = ikey_seq(e[i].key, e[i].klen);
        uint64_t seqs[] = {KV_MAX_SEQUENCE, seq, seq - 1};
        for (int q = 0; q < 3; q++) {
            ikey_build(k, e[i].key, ulen, seqs[q], KV_TYPE_FOR_SEEK);
            for (int unique = 0; unique < 2; unique++) {
                kv_bytes v = {0};
                int rc = lookup(z, k, ulen + 8, unique, &v);
                if (q < 2) {
                    CHECK_MSG(rc == 1, "entry %zu, seq case %d, unique %d: %d", i, q, unique, rc);
                    CHECK_MEM(v.data, v.len, e[i].val, e[i].vlen);
                } else {
                    CHECK_MSG(rc == 0, "entry %zu unseen at seq %llu, unique %d: %d", i,
                              (unsigned long long)seqs[q], unique, rc);
                }
                bytes_free(&v);
            }
        }
    }
    /* Damage the second half of the span before each span's first key, one bit at a time. */
    int affected = 0, tried = 0;
    for (uint32_t j = 1; j + 1 < z->nspans; j++) {
        const ent *x = &e[j * 4];
        uint8_t k[48];
        ikey_build(k, x->key, x->klen - 8, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
        uint64_t from = z->bits[j - 1] + (z->bits[j] - z->bits[j - 1]) / 2, to = z->bits[j];
        size_t stream_at = (size_t)(z->stream - z->data);
        for (uint64_t bit = from; bit < to; bit += 1 + (to - from) / 12) {
            uint8_t *copy = malloc(len);
            CHECK(copy);
            memcpy(copy, stored, len);
            copy[stream_at + bit / 8] ^= (uint8_t)(1u << (bit % 8));
            zblock *zd;
            if (zblock_parse(copy, len, 7, 4096, NULL, &zd) != KV_OK) continue; /* copy freed */
            tried++;
            kv_bytes v = {0};
            int rc = lookup(zd, k, x->klen, true, &v);
            CHECK_MSG(rc == 1, "span %u, bit %llu flipped: %d", j, (unsigned long long)bit, rc);
            if (rc == 1) CHECK_MEM(v.data, v.len, x->val, x->vlen);
            bytes_free(&v);
            rc = lookup(zd, k, x->klen, false, &v);
            affected += rc != 1 || v.len != x->vlen || memcmp(v.data, x->val, x->vlen) != 0;
            bytes_free(&v);
            zblock_free(zd);
        }
    }
    CHECK(tried > 0);
    CHECK_MSG(affected > 0, "no damage in %d cases reached the lookup that inflates the span before", tried);
    zblock_free(z);
    free(stored);
    deflate_encoder_free(enc);
    block_free(b);
    free(e);
}

/* A raw block of about `count` random entries (restart every 4) and an encoder whose code was learnt from it. */
typedef struct learnt {
    deflate_encoder *enc;
    ent *e;
    size_t n;
    block *b;
} learnt;

static void learnt_block(uint64_t *rs, size_t count, learnt *l) {
    *l = (learnt){deflate_encoder_new(), make_entries(rs, count), 0, NULL};
    l->n = count_valid(l->e, count);
    l->b = build(l->e, l->n, 4);
    CHECK(l->enc && l->b && deflate_encoder_learn(l->enc, l->b->data, l->b->len));
}

static void learnt_free(learnt *l) {
    block_free(l->b);
    free(l->e);
    deflate_encoder_free(l->enc);
}

TEST(test_zblock_damage_is_reported) {
    /* No checksum at this level: every damaged byte reaches the parser and the decoder, which must answer or report
     * KV_ECORRUPT, never read or write outside their buffers (ASan). */
    uint64_t rs = t_seed() + 41;
    learnt l;
    learnt_block(&rs, 60, &l); /* a dynamic code: damage can hit its header too */
    if (t_failed()) return;
    deflate_encoder *enc = l.enc;
    ent *e = l.e;
    size_t n = l.n;
    block *b = l.b;
    size_t cap = b->len * 2 + 64;
    uint8_t *stored = malloc(cap);
    size_t len = zblock_encode(enc, b->data, b->len, stored, cap);
    CHECK(len > 0);
    int reported = 0;
    for (int r = 0; r < 3000; r++) {
        uint8_t *copy = malloc(len);
        CHECK(copy);
        memcpy(copy, stored, len);
        int flips = 1 + (int)(t_rand(&rs) % 3);
        for (int f = 0; f < flips; f++) {
            /* the directory (first bytes) more often than its share */
            size_t at = r % 2 ? t_rand(&rs) % (len < 24 ? len : 24) : t_rand(&rs) % len;
            copy[at] ^= (uint8_t)(1u << (t_rand(&rs) % 8));
        }
        zblock *z;
        int rc = zblock_parse(copy, len, 7, 4096, NULL, &z);
        if (rc) {
            CHECK_EQ(rc, KV_ECORRUPT);
            reported++;
            continue;
        }
        uint8_t *raw;
        size_t rl;
        rc = zblock_inflate(z, NULL, &raw, &rl);
        if (rc) CHECK_EQ(rc, KV_ECORRUPT);
        else free(raw);
        reported += rc != 0;
        iter *zi = zblock_iter_new(z, NULL);
        size_t steps = 0;
        for (zi->seek_first(zi); zi->valid(zi) && steps < 1000; zi->next(zi)) steps++;
        rc = zi->status(zi);
        CHECK(rc == 0 || rc == KV_ECORRUPT);
        zi->destroy(zi);
        for (int q = 0; q < 5; q++) {
            const ent *x = &e[t_rand(&rs) % n];
            kv_bytes v = {0};
            uint64_t tr;
            rc = zblock_seek_value(z, NULL, x->key, x->klen, true, false, &tr, &v);
            CHECK(rc == 0 || rc == 1 || rc == KV_ECORRUPT);
            bytes_free(&v);
        }
        zblock_free(z);
    }
    printf("# %d of 3000 damaged blocks reported by parse or inflate\n", reported);
    CHECK(reported > 1500);
    free(stored);
    learnt_free(&l);
}

TEST(test_zblock_holds_no_code) {
    /* A parsed block (as the block cache keeps it) holds no code: codes live in the readers' code caches and in
     * iterators, so the codes in memory do not grow with the blocks cached from tables that are closed. */
    uint64_t rs = t_seed() + 43;
    learnt l;
    learnt_block(&rs, 60, &l);
    if (t_failed()) return;
    ent *e = l.e;
    size_t n = l.n;
    block *b = l.b;
    size_t base = zcode_live();
    zcode_cache *reader = zcode_cache_new();
    CHECK(reader);
    zblock *z = seekable(l.enc, b, reader);
    CHECK(z && !z->fixed);
    CHECK_EQ(zcode_live(), base + 1); /* the reader's cache keeps the code it read */
    zcode_cache_free(reader);         /* the reader closes; the block stays (cached) */
    CHECK_EQ(zcode_live(), base);
    /* A reader of the same table opened again reads the code from the block, once, and keeps it. */
    zcode_cache *again = zcode_cache_new();
    CHECK(again);
    for (size_t i = 0; i < n; i++) CHECK(same_answer(z, again, b, e[i].key, e[i].klen, true));
    CHECK_EQ(zcode_live(), base + 1);
    iter *zi = zblock_iter_new(z, again);
    zcode_cache_free(again); /* an iterator keeps its code while it lives */
    CHECK_EQ(zcode_live(), base + 1);
    size_t i = 0;
    for (zi->seek_first(zi); zi->valid(zi); zi->next(zi), i++) CHECK_AT(zi, e[i]);
    CHECK_EQ(i, n);
    zi->destroy(zi);
    CHECK_EQ(zcode_live(), base);
    /* Without a code cache, a call reads the code and lets it go. */
    CHECK(same_answer(z, NULL, b, e[0].key, e[0].klen, true));
    CHECK_EQ(zcode_live(), base);
    zblock_free(z);
    learnt_free(&l);
}

TEST(test_zblock_directory_must_fit_the_block) {
    /* A stream followed by a byte it does not need, and a directory that claims more restart points than the block
     * has bytes: both are damage (KV_ECORRUPT), found before anything else is read or allocated. */
    uint64_t rs = t_seed() + 42;
    deflate_encoder *enc = deflate_encoder_new();
    CHECK(enc);
    ent *e = make_entries(&rs, 40);
    size_t n = count_valid(e, 40);
    block *b = build(e, n, 4);
    CHECK(b);
    for (int learn = 0; learn < 2; learn++) {
        if (learn) CHECK(deflate_encoder_learn(enc, b->data, b->len));
        size_t cap = b->len * 2 + 64;
        uint8_t *stored = malloc(cap + 1);
        CHECK(stored);
        size_t len = zblock_encode(enc, b->data, b->len, stored, cap);
        CHECK(len > 0);
        stored[len] = 0;
        zblock *z;
        uint8_t *copy = malloc(len + 1);
        CHECK(copy);
        memcpy(copy, stored, len + 1);
        CHECK_EQ(zblock_parse(copy, len + 1, 7, 4096, NULL, &z), KV_ECORRUPT);
        copy = malloc(len);
        CHECK(copy);
        memcpy(copy, stored, len);
        CHECK_OK(zblock_parse(copy, len, 7, 4096, NULL, &z));
        zblock_free(z);
        free(stored);
    }
    /* raw size 4,000,000, 999,000 restart points, in a block of 16 bytes */
    uint8_t tiny[16] = {0}, *p = put_varint64(tiny, 4000000);
    p = put_varint64(p, 999000);
    uint8_t *copy = malloc(sizeof tiny);
    CHECK(copy);
    memcpy(copy, tiny, sizeof tiny);
    zblock *z;
    CHECK_EQ(zblock_parse(copy, sizeof tiny, 7, 4096, NULL, &z), KV_ECORRUPT);
    block_free(b);
    free(e);
    deflate_encoder_free(enc);
}

/* ---- fuzzing seekable blocks ----------------------------------------------------------------------------------- */

static long fuzz_iters(long dflt) {
    const char *s = getenv("KVFS_FUZZ_ITERS");
    long n = s && *s ? strtol(s, NULL, 0) : 0;
    return n > 0 ? n : dflt;
}

/* A stored seekable block taken apart: its two counts, its r + 2 bit deltas and its stream. */
typedef struct zparts {
    uint64_t raw_len, r;
    uint64_t *delta;
    size_t ndelta;
    const uint8_t *stream;
    size_t slen;
} zparts;

static bool zsplit(const uint8_t *p, size_t len, zparts *zp) {
    const uint8_t *end = p + len;
    if (!(p = get_varint64(p, end, &zp->raw_len)) || !(p = get_varint64(p, end, &zp->r))) return false;
    zp->ndelta = (size_t)zp->r + 2;
    zp->delta = malloc(zp->ndelta * sizeof *zp->delta);
    for (size_t i = 0; i < zp->ndelta; i++)
        if (!(p = get_varint64(p, end, &zp->delta[i]))) return false;
    zp->stream = p;
    zp->slen = (size_t)(end - p);
    return true;
}

/* A hostile value for a directory field that was v: 0, 1, off by a little, far past the stream, or huge. */
static uint64_t hostile(uint64_t v, size_t slen, uint64_t *rs) {
    switch (t_rand(rs) % 7) {
    case 0: return 0;
    case 1: return 1;
    case 2: return v + 1 + t_rand(rs) % 8;
    case 3: return v > 8 ? v - 1 - t_rand(rs) % 8 : v + 3;
    case 4: return (uint64_t)slen * 8 + t_rand(rs) % 64; /* at or past the end of the stream */
    case 5: return UINT64_MAX - t_rand(rs) % 4;
    default: return t_rand(rs) % ((uint64_t)slen * 8 + 1);
    }
}

TEST(test_zblock_fuzz_directories) {
    /* Seekable blocks whose directory or stream is hostile, given straight to zblock_parse and then to every reader
     * (whole inflation, the span iterator both ways, seeks and point lookups), with no checksum in the way: an
     * answer or KV_ECORRUPT, never a read or write outside the exact-size buffers (run under ASan). Directories get
     * raw sizes and restart counts that lie, deltas of 0, deltas that run past the stream or wrap, an end-of-block
     * offset past the end; streams get damaged codes. KVFS_FUZZ_ITERS sets the number of rounds. */
    uint64_t rs = t_seed() + 44;
    long iters = fuzz_iters(30000);
    enum { NB = 6 };
    learnt l[NB];
    uint8_t *stored[NB];
    size_t slen[NB];
    zparts zp[NB];
    for (int i = 0; i < NB; i++) {
        learnt_block(&rs, 20 + 30 * (size_t)i, &l[i]);
        if (t_failed()) return;
        if (i % 2) { /* half with the fixed code */
            deflate_encoder_free(l[i].enc);
            l[i].enc = deflate_encoder_new();
            CHECK(l[i].enc);
        }
        size_t cap = l[i].b->len * 2 + 64;
        stored[i] = malloc(cap);
        CHECK(stored[i]);
        slen[i] = zblock_encode(l[i].enc, l[i].b->data, l[i].b->len, stored[i], cap);
        CHECK(slen[i] > 0);
        CHECK(zsplit(stored[i], slen[i], &zp[i]));
    }
    zcode_cache *codes = zcode_cache_new();
    CHECK(codes);
    long parsed = 0, inflated = 0;
    for (long r = 0; r < iters; r++) {
        int b = (int)(t_rand(&rs) % NB);
        const zparts *p = &zp[b];
        /* Rebuild the block from its parts, some of them hostile. */
        size_t cap = slen[b] + 200 + p->ndelta * 10;
        uint8_t *buf = malloc(cap), *w = buf;
        CHECK(buf);
        int mode = (int)(t_rand(&rs) % 4);
        uint64_t raw_len = p->raw_len, rr = p->r;
        if (mode == 0 && t_rand(&rs) % 2) raw_len = hostile(raw_len, p->slen, &rs) % (p->raw_len * 4 + 16);
        if (mode == 0 && t_rand(&rs) % 2) rr = t_rand(&rs) % 3 ? p->r + (t_rand(&rs) % 5) - 2 : hostile(rr, p->slen, &rs);
        w = put_varint64(w, raw_len);
        w = put_varint64(w, rr);
        size_t nd = (size_t)rr + 2 <= p->ndelta + 2 ? (size_t)rr + 2 : p->ndelta + 2;
        for (size_t i = 0; i < nd; i++) {
            uint64_t d = i < p->ndelta ? p->delta[i] : 1 + t_rand(&rs) % 64;
            if (mode == 1 && t_rand(&rs) % 3 == 0) d = hostile(d, p->slen, &rs);
            w = put_varint64(w, d);
        }
        if (mode == 1 && t_rand(&rs) % 4 == 0) { /* the last delta moved: the end-of-block code elsewhere */
            w = buf;
            w = put_varint64(w, raw_len);
            w = put_varint64(w, rr);
            for (size_t i = 0; i + 1 < nd; i++) w = put_varint64(w, i < p->ndelta ? p->delta[i] : 1);
            w = put_varint64(w, hostile(p->delta[p->ndelta - 1], p->slen, &rs));
        }
        memcpy(w, p->stream, p->slen);
        size_t len = (size_t)(w - buf) + p->slen;
        if (mode == 2) { /* damage in the stream: flips, bytes, a run */
            for (int k = 1 + (int)(t_rand(&rs) % 3); k-- > 0;) {
                size_t at = (size_t)(w - buf) + t_rand(&rs) % p->slen;
                if (t_rand(&rs) % 2) buf[at] ^= (uint8_t)(1u << (t_rand(&rs) % 8));
                else buf[at] = (uint8_t)t_rand(&rs);
            }
        }
        if (mode == 3) { /* cut short or grown */
            if (t_rand(&rs) % 2) len = t_rand(&rs) % len;
            else
                for (size_t k = 1 + t_rand(&rs) % 8; k-- > 0 && len < cap;) buf[len++] = (uint8_t)t_rand(&rs);
        }
        uint8_t *copy = malloc(len ? len : 1); /* exact size, so ASan sees any overrun */
        CHECK(copy);
        memcpy(copy, buf, len);
        free(buf);
        zcode_cache *cc = t_rand(&rs) % 2 ? codes : NULL;
        zblock *z;
        int rc = zblock_parse(copy, len, 7, 4096, cc, &z);
        CHECK_MSG(rc == KV_OK || rc == KV_ECORRUPT, "parse: %d (%s)", rc, kv_errmsg());
        if (rc) {
            CHECK_MSG(strstr(kv_errmsg(), "000007.sst") && strstr(kv_errmsg(), "offset 4096"), "%s", kv_errmsg());
            continue;
        }
        parsed++;
        uint8_t *raw;
        size_t rl;
        rc = zblock_inflate(z, cc, &raw, &rl);
        CHECK_MSG(rc == KV_OK || rc == KV_ECORRUPT, "inflate: %d (%s)", rc, kv_errmsg());
        if (!rc) {
            CHECK_EQ(rl, z->raw_len);
            free(raw);
            inflated++;
        }
        iter *zi = zblock_iter_new(z, cc);
        size_t steps = 0;
        for (zi->seek_first(zi); zi->valid(zi) && steps < 2000; zi->next(zi), steps++) {
            size_t kn, vn;
            zi->key(zi, &kn);
            zi->value(zi, &vn);
        }
        rc = zi->status(zi);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT);
        zi->destroy(zi);
        zi = zblock_iter_new(z, cc);
        steps = 0;
        for (zi->seek_last(zi); zi->valid(zi) && steps < 2000; zi->prev(zi)) steps++;
        rc = zi->status(zi);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT);
        for (int q = 0; q < 3; q++) {
            const ent *x = &l[b].e[t_rand(&rs) % l[b].n];
            zi->seek(zi, x->key, x->klen);
            if (zi->valid(zi)) zi->next(zi);
            kv_bytes v = {0};
            uint64_t tr;
            rc = zblock_seek_value(z, cc, x->key, x->klen, t_rand(&rs) % 2, t_rand(&rs) % 2, &tr, &v);
            CHECK(rc == 0 || rc == 1 || rc == KV_ECORRUPT);
            bytes_free(&v);
        }
        rc = zi->status(zi);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT);
        zi->destroy(zi);
        zblock_free(z);
    }
    printf("# %ld rounds: %ld parsed, %ld inflated whole\n", iters, parsed, inflated);
    zcode_cache_free(codes);
    for (int i = 0; i < NB; i++) {
        free(zp[i].delta);
        free(stored[i]);
        learnt_free(&l[i]);
    }
}
