/*
 * cache.c — the block cache: a sharded LRU with two priority pools (see cache.h).
 *
 * Invariants (per shard, all under the shard's mutex)
 *  - An entry is "cached" while the hash table holds it; `refs` counts the handles held by callers.
 *  - A cached entry with refs == 0 is on exactly one LRU list (low or high priority, least recent at the head);
 *    an entry with refs > 0 is on none, so it can never be chosen for eviction.
 *  - usage is the sum of the charges of cached entries. After every insert and release the shard evicts, head of
 *    the low list first, then head of the high list, until usage <= capacity or both lists are empty.
 *  - An entry that is neither cached nor held is freed at once, its deleter called outside the mutex, exactly once.
 *  - Keys are spread over 2^k shards by a 64-bit mix of (file_no, offset); each shard gets capacity / shards. Small
 *    caches (under 512 KiB per shard) use fewer shards, down to one, so that a small capacity still behaves as one
 *    LRU instead of many tiny ones that each hold nothing.
 *  - Hit and miss counters are relaxed atomics: statistics, not synchronisation.
 */
#include "cache.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "error.h"
#include "kv.h"

#define MAX_SHARDS 16
#define MIN_SHARD_BYTES (512u * 1024u)

struct cache_handle {
    uint64_t file_no, offset;
    uint64_t hash;
    void *value;
    void (*deleter)(void *value);
    size_t charge;
    uint32_t refs;        /* handles held by callers */
    bool in_cache;        /* in the hash table */
    bool high;            /* priority pool */
    struct cache_handle *hnext;         /* hash chain */
    struct cache_handle *prev, *next;   /* LRU list (only while in_cache && refs == 0) */
};
typedef struct cache_handle entry;

typedef struct lru_list {
    entry head; /* sentinel: head.next is the least recently used */
} lru_list;

typedef struct shard {
    pthread_mutex_t mu;
    entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    size_t usage, capacity;
    lru_list low, high;
    _Atomic uint64_t hits, misses;
} shard;

struct block_cache {
    size_t capacity;
    unsigned nshards;
    unsigned shift; /* hash >> shift picks the shard */
    shard shards[MAX_SHARDS];
};

static uint64_t mix(uint64_t file_no, uint64_t offset) {
    /* splitmix64-style finaliser over both words: cheap and spreads sequential offsets over all buckets. */
    uint64_t h = file_no * 0x9e3779b97f4a7c15ULL ^ (offset + 0x632be59bd9b4e019ULL);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

static void list_init(lru_list *l) { l->head.next = l->head.prev = &l->head; }
static void list_remove(entry *e) {
    e->next->prev = e->prev;
    e->prev->next = e->next;
    e->next = e->prev = NULL;
}
static void list_append(lru_list *l, entry *e) { /* most recently used at the tail */
    e->next = &l->head;
    e->prev = l->head.prev;
    e->prev->next = e;
    l->head.prev = e;
}

int block_cache_new(size_t capacity_bytes, block_cache **out) {
    *out = NULL;
    block_cache *c = calloc(1, sizeof *c);
    if (!c) return kv_set_error(KV_ENOMEM, "out of memory creating the block cache");
    unsigned n = MAX_SHARDS;
    while (n > 1 && capacity_bytes / n < MIN_SHARD_BYTES) n /= 2;
    c->capacity = capacity_bytes;
    c->nshards = n;
    unsigned bits = 0;
    while ((1u << bits) < n) bits++;
    c->shift = 64 - bits; /* bits == 0: shard_of never shifts by 64 (see below) */
    for (unsigned i = 0; i < n; i++) {
        shard *s = &c->shards[i];
        s->nbuckets = 64;
        s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
        if (!s->buckets || pthread_mutex_init(&s->mu, NULL) != 0) {
            free(s->buckets);
            for (unsigned j = 0; j < i; j++) {
                free(c->shards[j].buckets);
                pthread_mutex_destroy(&c->shards[j].mu);
            }
            free(c);
            return kv_set_error(KV_ENOMEM, "out of memory creating the block cache");
        }
        s->capacity = capacity_bytes / n + (i < capacity_bytes % n ? 1 : 0);
        list_init(&s->low);
        list_init(&s->high);
        atomic_init(&s->hits, 0);
        atomic_init(&s->misses, 0);
    }
    *out = c;
    return KV_OK;
}

static shard *shard_of(block_cache *c, uint64_t h) { return c->nshards == 1 ? &c->shards[0] : &c->shards[h >> c->shift]; }

static entry **find_slot(shard *s, uint64_t h, uint64_t file_no, uint64_t offset) {
    entry **pp = &s->buckets[h & (s->nbuckets - 1)];
    while (*pp && ((*pp)->file_no != file_no || (*pp)->offset != offset)) pp = &(*pp)->hnext;
    return pp;
}

static void maybe_grow(shard *s) {
    if (s->count <= s->nbuckets) return;
    size_t nb = s->nbuckets * 2;
    entry **b = calloc(nb, sizeof *b);
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        entry *e = s->buckets[i];
        while (e) {
            entry *next = e->hnext;
            entry **slot = &b[e->hash & (nb - 1)];
            e->hnext = *slot;
            *slot = e;
            e = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

/* Take e out of the hash table (the slot pointing at it is given) and account for it. If nobody holds it, it
 * goes onto the `dead` list (through hnext) to be freed after the mutex is released. */
static void detach(shard *s, entry **slot, entry *e, entry **dead) {
    *slot = e->hnext;
    e->hnext = NULL;
    e->in_cache = false;
    s->count--;
    s->usage -= e->charge;
    if (e->refs == 0) {
        list_remove(e);
        e->hnext = *dead;
        *dead = e;
    }
}

static void evict(shard *s, entry **dead) {
    while (s->usage > s->capacity) {
        entry *victim;
        if (s->low.head.next != &s->low.head)
            victim = s->low.head.next;
        else if (s->high.head.next != &s->high.head)
            victim = s->high.head.next;
        else
            break; /* everything left is pinned */
        entry **slot = find_slot(s, victim->hash, victim->file_no, victim->offset);
        assert(*slot == victim);
        detach(s, slot, victim, dead);
    }
}

static void free_dead(entry *dead) {
    while (dead) {
        entry *next = dead->hnext;
        if (dead->deleter) dead->deleter(dead->value);
        free(dead);
        dead = next;
    }
}

cache_handle *block_cache_lookup(block_cache *c, uint64_t file_no, uint64_t offset) {
    uint64_t h = mix(file_no, offset);
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    entry *e = *find_slot(s, h, file_no, offset);
    if (e) {
        if (e->refs++ == 0) list_remove(e);
    }
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add_explicit(e ? &s->hits : &s->misses, 1, memory_order_relaxed);
    return e;
}

cache_handle *block_cache_insert(block_cache *c, uint64_t file_no, uint64_t offset, void *value, size_t charge,
                                 bool high_priority, void (*deleter)(void *value)) {
    entry *e = malloc(sizeof *e);
    if (!e) {
        if (deleter) deleter(value);
        kv_set_error(KV_ENOMEM, "out of memory inserting into the block cache");
        return NULL;
    }
    uint64_t h = mix(file_no, offset);
    *e = (entry){.file_no = file_no, .offset = offset, .hash = h, .value = value, .deleter = deleter,
                 .charge = charge, .refs = 1, .in_cache = true, .high = high_priority};
    shard *s = shard_of(c, h);
    entry *dead = NULL;
    pthread_mutex_lock(&s->mu);
    entry **slot = find_slot(s, h, file_no, offset);
    if (*slot) detach(s, slot, *slot, &dead); /* replaced: freed now or when its last holder lets go */
    e->hnext = *slot;
    *slot = e;
    s->count++;
    s->usage += charge;
    evict(s, &dead);
    maybe_grow(s);
    pthread_mutex_unlock(&s->mu);
    free_dead(dead);
    return e;
}

bool block_cache_fits(block_cache *c, uint64_t file_no, uint64_t offset, size_t extra) {
    shard *s = shard_of(c, mix(file_no, offset));
    pthread_mutex_lock(&s->mu);
    /* A margin of 1/32 of the shard: evicting stops as soon as usage is back under the capacity, which leaves a full
     * shard up to one entry's charge of slack. Counted as room, that slack let point lookups on a store larger than
     * the cache inflate a block whole now and then (about one lookup in 40 on the benchmark's 1,000,000 entries), only
     * for it to push stored blocks out and be evicted in turn. */
    size_t room = s->capacity - s->capacity / 32;
    bool fits = extra <= room && s->usage <= room - extra;
    pthread_mutex_unlock(&s->mu);
    return fits;
}

void *cache_handle_value(cache_handle *h) { return h->value; }

void block_cache_release(block_cache *c, cache_handle *e) {
    shard *s = shard_of(c, e->hash);
    entry *dead = NULL;
    pthread_mutex_lock(&s->mu);
    assert(e->refs > 0);
    if (--e->refs == 0) {
        if (e->in_cache) {
            list_append(e->high ? &s->high : &s->low, e);
            /* Pinned entries may have pushed usage over capacity while they were held. */
            evict(s, &dead);
        } else {
            dead = e;
            e->hnext = NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    free_dead(dead);
}

void block_cache_stats(block_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *usage, uint64_t *capacity) {
    uint64_t h = 0, m = 0, u = 0;
    for (unsigned i = 0; i < c->nshards; i++) {
        shard *s = &c->shards[i];
        h += atomic_load_explicit(&s->hits, memory_order_relaxed);
        m += atomic_load_explicit(&s->misses, memory_order_relaxed);
        pthread_mutex_lock(&s->mu);
        u += s->usage;
        pthread_mutex_unlock(&s->mu);
    }
    if (hits) *hits = h;
    if (misses) *misses = m;
    if (usage) *usage = u;
    if (capacity) *capacity = c->capacity;
}

void block_cache_free(block_cache *c) {
    if (!c) return;
    for (unsigned i = 0; i < c->nshards; i++) {
        shard *s = &c->shards[i];
        entry *dead = NULL;
        for (size_t b = 0; b < s->nbuckets; b++) {
            while (s->buckets[b]) {
                entry *e = s->buckets[b];
                assert(e->refs == 0); /* every handle must have been released */
                detach(s, &s->buckets[b], e, &dead);
            }
        }
        free_dead(dead);
        free(s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    free(c);
}
