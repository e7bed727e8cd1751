/*
 * table_cache.c — a bounded map from file number to an open sst_reader (see sst.h).
 *
 * Invariants
 *  - Every entry holds one reference on its reader; a caller of table_cache_get gets another. Evicting an entry
 *    drops only the cache's reference, so a reader in use stays open until its last user lets go.
 *  - At most max_open entries: inserting beyond that evicts the least recently used entry.
 *  - One mutex guards the map and the LRU list. Tables are opened (file I/O) outside it; if two threads open the same
 *    table at once, the first to insert wins and the other's reader is dropped.
 *  - Readers are closed (their last unref) outside the mutex.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kv.h"
#include "sst.h"

typedef struct tc_entry {
    uint64_t file_no;
    sst_reader *r;
    struct tc_entry *hnext;        /* hash chain */
    struct tc_entry *prev, *next;  /* LRU list, least recently used first */
} tc_entry;

struct table_cache {
    kv_env *env;
    char *dir;
    size_t max_open;
    block_cache *bc;
    pthread_mutex_t mu;
    tc_entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    tc_entry lru;    /* sentinel */
};

static size_t bucket_of(const table_cache *tc, uint64_t file_no) {
    uint64_t h = file_no * 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 32) & (tc->nbuckets - 1);
}

int table_cache_new(kv_env *env, const char *dir, size_t max_open, block_cache *bc, table_cache **out) {
    *out = NULL;
    table_cache *tc = calloc(1, sizeof *tc);
    if (!tc) return kv_set_error(KV_ENOMEM, "out of memory creating the table cache");
    tc->env = env;
    tc->bc = bc;
    tc->max_open = max_open ? max_open : 1;
    tc->nbuckets = 16;
    while (tc->nbuckets < tc->max_open && tc->nbuckets < (1u << 16)) tc->nbuckets *= 2;
    tc->dir = strdup(dir);
    tc->buckets = calloc(tc->nbuckets, sizeof *tc->buckets);
    if (!tc->dir || !tc->buckets || pthread_mutex_init(&tc->mu, NULL) != 0) {
        free(tc->dir);
        free(tc->buckets);
        free(tc);
        return kv_set_error(KV_ENOMEM, "out of memory creating the table cache");
    }
    tc->lru.next = tc->lru.prev = &tc->lru;
    *out = tc;
    return KV_OK;
}

static tc_entry **find_slot(table_cache *tc, uint64_t file_no) {
    tc_entry **pp = &tc->buckets[bucket_of(tc, file_no)];
    while (*pp && (*pp)->file_no != file_no) pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(tc_entry *e) {
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_append(table_cache *tc, tc_entry *e) {
    e->next = &tc->lru;
    e->prev = tc->lru.prev;
    e->prev->next = e;
    tc->lru.prev = e;
}

/* Unlink the entry in *slot from map and list (mutex held); the caller unrefs and frees it after unlocking. */
static tc_entry *remove_slot(table_cache *tc, tc_entry **slot) {
    tc_entry *e = *slot;
    *slot = e->hnext;
    lru_unlink(e);
    tc->count--;
    e->hnext = NULL;
    return e;
}

static void drop_entries(tc_entry *list) {
    while (list) {
        tc_entry *next = list->hnext;
        sst_reader_unref(list->r);
        free(list);
        list = next;
    }
}

int table_cache_get(table_cache *tc, uint64_t file_no, sst_reader **out) {
    *out = NULL;
    pthread_mutex_lock(&tc->mu);
    tc_entry *e = *find_slot(tc, file_no);
    if (e) {
        lru_unlink(e);
        lru_append(tc, e);
        sst_reader_ref(e->r);
        *out = e->r;
        pthread_mutex_unlock(&tc->mu);
        return KV_OK;
    }
    pthread_mutex_unlock(&tc->mu);

    char name[32];
    snprintf(name, sizeof name, "%06llu.sst", (unsigned long long)file_no);
    size_t plen = strlen(tc->dir) + 1 + strlen(name) + 1;
    char *path = malloc(plen);
    if (!path) return kv_set_error(KV_ENOMEM, "out of memory opening %s", name);
    snprintf(path, plen, "%s/%s", tc->dir, name);
    sst_reader *r;
    int rc = sst_reader_open(tc->env, path, name, file_no, tc->bc, &r);
    free(path);
    if (rc) return rc;

    tc_entry *fresh = malloc(sizeof *fresh);
    tc_entry *dead = NULL;
    pthread_mutex_lock(&tc->mu);
    tc_entry **slot = find_slot(tc, file_no);
    if (*slot) { /* another thread opened it meanwhile: use theirs */
        e = *slot;
        lru_unlink(e);
        lru_append(tc, e);
        sst_reader_ref(e->r);
        *out = e->r;
        pthread_mutex_unlock(&tc->mu);
        free(fresh);
        sst_reader_unref(r);
        return KV_OK;
    }
    if (!fresh) { /* cannot cache it: hand the reader over uncached */
        pthread_mutex_unlock(&tc->mu);
        *out = r;
        return KV_OK;
    }
    fresh->file_no = file_no;
    fresh->r = r;
    fresh->hnext = NULL;
    *slot = fresh;
    lru_append(tc, fresh);
    tc->count++;
    sst_reader_ref(r); /* the caller's reference; the entry keeps the one from open */
    while (tc->count > tc->max_open) {
        tc_entry *victim = tc->lru.next;
        tc_entry *v = remove_slot(tc, find_slot(tc, victim->file_no));
        v->hnext = dead;
        dead = v;
    }
    pthread_mutex_unlock(&tc->mu);
    drop_entries(dead);
    *out = r;
    return KV_OK;
}

void table_cache_evict(table_cache *tc, uint64_t file_no) {
    tc_entry *dead = NULL;
    pthread_mutex_lock(&tc->mu);
    tc_entry **slot = find_slot(tc, file_no);
    if (*slot) dead = remove_slot(tc, slot);
    pthread_mutex_unlock(&tc->mu);
    drop_entries(dead);
}

void table_cache_free(table_cache *tc) {
    if (!tc) return;
    tc_entry *dead = NULL;
    for (size_t i = 0; i < tc->nbuckets; i++) {
        while (tc->buckets[i]) {
            tc_entry *e = remove_slot(tc, &tc->buckets[i]);
            e->hnext = dead;
            dead = e;
        }
    }
    drop_entries(dead);
    pthread_mutex_destroy(&tc->mu);
    free(tc->buckets);
    free(tc->dir);
    free(tc);
}
