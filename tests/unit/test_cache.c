/* test_cache.c — the block cache: capacity, LRU order, priorities, pinning, deleters, counters, threads. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "cache.h"
#include "t.h"

/* Values are small records that count how often their deleter ran. */
typedef struct val {
    uint64_t file_no, offset;
    _Atomic int *deleted; /* deleted[id]++ */
    int id;
} val;

static void del(void *v) {
    val *x = v;
    atomic_fetch_add(&x->deleted[x->id], 1);
    free(x);
}

static val *mk(_Atomic int *deleted, int id, uint64_t f, uint64_t o) {
    val *v = malloc(sizeof *v);
    *v = (val){f, o, deleted, id};
    return v;
}

/* Insert and release at once. */
static void put(block_cache *c, _Atomic int *deleted, int id, uint64_t f, uint64_t o, size_t charge, bool high) {
    cache_handle *h = block_cache_insert(c, f, o, mk(deleted, id, f, o), charge, high, del);
    block_cache_release(c, h);
}

static bool present(block_cache *c, uint64_t f, uint64_t o) {
    cache_handle *h = block_cache_lookup(c, f, o);
    if (h) block_cache_release(c, h);
    return h != NULL;
}

TEST(test_cache_basic_and_counters) {
    static _Atomic int deleted[10];
    block_cache *c;
    CHECK_OK(block_cache_new(1000, &c));
    CHECK(block_cache_lookup(c, 1, 0) == NULL);
    cache_handle *h = block_cache_insert(c, 1, 0, mk(deleted, 0, 1, 0), 100, false, del);
    CHECK(h != NULL);
    val *v = cache_handle_value(h);
    CHECK(v->file_no == 1 && v->offset == 0);
    block_cache_release(c, h);
    h = block_cache_lookup(c, 1, 0);
    CHECK(h && cache_handle_value(h) == v);
    block_cache_release(c, h);
    CHECK(block_cache_lookup(c, 1, 4096) == NULL);
    CHECK(block_cache_lookup(c, 2, 0) == NULL);
    uint64_t hits, misses, usage, cap;
    block_cache_stats(c, &hits, &misses, &usage, &cap);
    CHECK_EQ(hits, 1);
    CHECK_EQ(misses, 3);
    CHECK_EQ(usage, 100);
    CHECK_EQ(cap, 1000);
    /* replacing an entry frees the old value (nobody holds it) */
    put(c, deleted, 1, 1, 0, 50, false);
    CHECK_EQ(deleted[0], 1);
    block_cache_stats(c, NULL, NULL, &usage, NULL);
    CHECK_EQ(usage, 50);
    h = block_cache_lookup(c, 1, 0);
    CHECK(h && ((val *)cache_handle_value(h))->id == 1);
    block_cache_release(c, h);
    block_cache_free(c);
    CHECK_EQ(deleted[1], 1);
}

TEST(test_cache_capacity_and_lru_order) {
    static _Atomic int deleted[200];
    block_cache *c;
    CHECK_OK(block_cache_new(10 * 100, &c)); /* small: one shard, an exact LRU */
    for (int i = 0; i < 10; i++) put(c, deleted, i, 1, (uint64_t)i, 100, false);
    uint64_t usage;
    block_cache_stats(c, NULL, NULL, &usage, NULL);
    CHECK_EQ(usage, 1000);
    /* touch 0..4 so that 5..9 are the least recently used */
    for (int i = 0; i < 5; i++) CHECK(present(c, 1, (uint64_t)i));
    for (int i = 10; i < 15; i++) {
        put(c, deleted, i, 1, (uint64_t)i, 100, false);
        CHECK_EQ(deleted[i - 5], 1); /* evicted in LRU order: 5, 6, ... */
        block_cache_stats(c, NULL, NULL, &usage, NULL);
        CHECK(usage <= 1000);
    }
    for (int i = 0; i < 5; i++) CHECK(present(c, 1, (uint64_t)i));
    for (int i = 5; i < 10; i++) CHECK(!present(c, 1, (uint64_t)i));
    /* many more: usage never exceeds the capacity */
    for (int i = 15; i < 200; i++) {
        put(c, deleted, i, 2, (uint64_t)i, 1 + (size_t)(i % 250), false);
        block_cache_stats(c, NULL, NULL, &usage, NULL);
        CHECK(usage <= 1000);
    }
    block_cache_free(c);
    for (int i = 0; i < 200; i++) CHECK_EQ(deleted[i], 1);
}

TEST(test_cache_high_priority_survives_churn) {
    static _Atomic int deleted[3000];
    block_cache *c;
    CHECK_OK(block_cache_new(64 * 1024, &c));
    for (int i = 0; i < 8; i++) put(c, deleted, i, 9, (uint64_t)i * 4096, 4096, true); /* 32 KiB high */
    for (int i = 8; i < 3000; i++) put(c, deleted, i, 10, (uint64_t)i * 4096, 4096, false);
    for (int i = 0; i < 8; i++) CHECK(present(c, 9, (uint64_t)i * 4096));
    for (int i = 0; i < 8; i++) CHECK_EQ(deleted[i], 0);
    /* with no low-priority entry left, high-priority ones go, LRU first */
    for (int i = 8; i < 3000; i++) {
        cache_handle *h = block_cache_lookup(c, 10, (uint64_t)i * 4096);
        if (h) block_cache_release(c, h);
    }
    block_cache_free(c);
    CHECK_OK(block_cache_new(4 * 100, &c));
    static _Atomic int d2[10];
    for (int i = 0; i < 4; i++) put(c, d2, i, 1, (uint64_t)i, 100, true);
    CHECK(present(c, 1, 0)); /* 1 is now the oldest */
    put(c, d2, 4, 1, 4, 100, true);
    CHECK_EQ(d2[1], 1);
    CHECK_EQ(d2[0], 0);
    /* While a new low entry is being inserted it is held, so no unpinned low entry exists: the oldest high one
     * (2) makes room. Once released, the low entry is the first to go. */
    put(c, d2, 5, 1, 5, 100, false);
    CHECK_EQ(d2[2], 1);
    put(c, d2, 6, 1, 6, 100, false);
    CHECK_EQ(d2[5], 1);
    CHECK_EQ(d2[0] + d2[3] + d2[4] + d2[6], 0);
    block_cache_free(c);
}

TEST(test_cache_pinned_entries) {
    static _Atomic int deleted[100];
    block_cache *c;
    CHECK_OK(block_cache_new(300, &c));
    cache_handle *pinned = block_cache_insert(c, 1, 0, mk(deleted, 0, 1, 0), 100, false, del);
    for (int i = 1; i < 50; i++) put(c, deleted, i, 1, (uint64_t)i, 100, false);
    CHECK_EQ(deleted[0], 0); /* held: neither evicted nor freed */
    CHECK(((val *)cache_handle_value(pinned))->id == 0);
    CHECK(present(c, 1, 0));
    uint64_t usage;
    block_cache_stats(c, NULL, NULL, &usage, NULL);
    CHECK(usage <= 300);
    /* a pinned entry that is replaced stays alive until released, then is freed exactly once */
    put(c, deleted, 50, 1, 0, 100, false);
    CHECK_EQ(deleted[0], 0);
    block_cache_release(c, pinned);
    CHECK_EQ(deleted[0], 1);
    /* pinned entries may exceed the capacity; releasing them brings usage back within it */
    cache_handle *hs[5];
    for (int i = 0; i < 5; i++) hs[i] = block_cache_insert(c, 2, (uint64_t)i, mk(deleted, 60 + i, 2, (uint64_t)i), 100, false, del);
    block_cache_stats(c, NULL, NULL, &usage, NULL);
    CHECK_EQ(usage, 500);
    for (int i = 0; i < 5; i++) CHECK_EQ(deleted[60 + i], 0);
    for (int i = 0; i < 5; i++) block_cache_release(c, hs[i]);
    block_cache_stats(c, NULL, NULL, &usage, NULL);
    CHECK(usage <= 300);
    /* an entry larger than the whole cache is usable while held, then dropped */
    cache_handle *huge = block_cache_insert(c, 3, 0, mk(deleted, 70, 3, 0), 1000, true, del);
    CHECK(huge && cache_handle_value(huge));
    block_cache_release(c, huge);
    CHECK_EQ(deleted[70], 1);
    block_cache_free(c);
    for (int i = 0; i < 100; i++) CHECK(deleted[i] <= 1);
    for (int i = 0; i <= 50; i++) CHECK_EQ(deleted[i], 1);
}

TEST(test_cache_zero_capacity) {
    static _Atomic int deleted[2];
    block_cache *c;
    CHECK_OK(block_cache_new(0, &c));
    cache_handle *h = block_cache_insert(c, 1, 1, mk(deleted, 0, 1, 1), 10, false, del);
    CHECK(h != NULL);
    block_cache_release(c, h);
    CHECK_EQ(deleted[0], 1);
    CHECK(!present(c, 1, 1));
    block_cache_free(c);
}

TEST(test_cache_fits_only_with_room_to_spare) {
    /* block_cache_fits says whether a shard has room to spare: it keeps a margin of 1/32 of the shard, so that the
     * slack a full shard keeps after an eviction (up to one entry's charge) does not count as room. */
    static _Atomic int deleted[8];
    block_cache *c;
    CHECK_OK(block_cache_new(3200, &c)); /* one shard; a margin of 100 bytes */
    CHECK(block_cache_fits(c, 1, 0, 0));
    CHECK(block_cache_fits(c, 1, 0, 3100));
    CHECK(!block_cache_fits(c, 1, 0, 3101));
    CHECK(!block_cache_fits(c, 1, 0, 5000));
    for (int i = 0; i < 4; i++) put(c, deleted, i, 1, (uint64_t)i * 4096, 1000, false);
    uint64_t usage;
    block_cache_stats(c, NULL, NULL, &usage, NULL);
    CHECK_EQ(usage, 3000); /* full: the fourth insert evicted the first, leaving 200 bytes of slack */
    CHECK(block_cache_fits(c, 1, 0, 100));
    CHECK(!block_cache_fits(c, 1, 0, 150)); /* under the capacity, but inside the margin */
    block_cache_free(c);
    CHECK_EQ(deleted[0], 1);
}

/* ---- threads ---- */

#define NT 4
#define IDS 4096
static _Atomic int mt_deleted[IDS * 8];
static _Atomic int mt_next_id;
static block_cache *mt_cache;
static _Atomic int mt_bad;

static void *worker(void *arg) {
    uint64_t rs = (uint64_t)(uintptr_t)arg * 7919 + 1;
    for (int i = 0; i < 20000; i++) {
        uint64_t f = t_rand(&rs) % 8, o = (t_rand(&rs) % 512) * 4096;
        cache_handle *h = block_cache_lookup(mt_cache, f, o);
        if (!h) {
            int id = atomic_fetch_add(&mt_next_id, 1);
            if (id >= IDS * 8) break;
            h = block_cache_insert(mt_cache, f, o, mk(mt_deleted, id, f, o), 4096, (o % 3) == 0, del);
        }
        val *v = cache_handle_value(h);
        if (v->file_no != f || v->offset != o || atomic_load(&mt_deleted[v->id]) != 0) atomic_store(&mt_bad, 1);
        block_cache_release(mt_cache, h);
    }
    return NULL;
}

TEST(test_cache_threads) {
    CHECK_OK(block_cache_new(16u << 20, &mt_cache)); /* 16 shards of 1 MiB */
    pthread_t th[NT];
    for (int i = 0; i < NT; i++) pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    CHECK_EQ(atomic_load(&mt_bad), 0);
    uint64_t hits, misses, usage, cap;
    block_cache_stats(mt_cache, &hits, &misses, &usage, &cap);
    CHECK(hits > 0 && misses > 0);
    CHECK(usage <= cap);
    block_cache_free(mt_cache);
    int n = atomic_load(&mt_next_id);
    if (n > IDS * 8) n = IDS * 8;
    for (int i = 0; i < n; i++) CHECK_EQ(mt_deleted[i], 1);
}
