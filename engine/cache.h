/*
 * cache.h — the block cache: a sharded LRU keyed by (file number, block offset), bounded by a byte budget.
 *
 * Invariants
 *  - The sum of charges of cached entries stays within the capacity, except for entries pinned by handles that are
 *    still held (they are freed when released).
 *  - Two priorities: high (index and filter blocks) and low (data blocks). Eviction takes the least recently used
 *    low-priority entry first, and a high-priority entry only when no unpinned low-priority entry remains.
 *  - A value is freed (with the deleter given at insert) exactly once, when it is neither cached nor held.
 *  - File numbers are never reused, so entries of deleted files simply age out.
 */
#ifndef KV_CACHE_H
#define KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct block_cache block_cache;
typedef struct cache_handle cache_handle;

int block_cache_new(size_t capacity_bytes, block_cache **out);
void block_cache_free(block_cache *c); /* every handle must have been released */
/* A held handle for the entry, or NULL (counted as a hit or a miss). */
cache_handle *block_cache_lookup(block_cache *c, uint64_t file_no, uint64_t offset);
/* Insert (replacing any entry with the same key) and return a held handle; NULL only when out of memory, in which
 * case the value has been freed with deleter. charge is the entry's size in bytes. */
cache_handle *block_cache_insert(block_cache *c, uint64_t file_no, uint64_t offset, void *value, size_t charge,
                                 bool high_priority, void (*deleter)(void *value));
/* Whether the cache has room to spare for `extra` more bytes under this key's shard: they would evict nothing and
 * leave at least 1/32 of the shard free (a full shard keeps up to one entry's charge of slack after an eviction, which
 * is not room to spare). */
bool block_cache_fits(block_cache *c, uint64_t file_no, uint64_t offset, size_t extra);
void *cache_handle_value(cache_handle *h);
void block_cache_release(block_cache *c, cache_handle *h);
void block_cache_stats(block_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *usage, uint64_t *capacity);

#endif /* KV_CACHE_H */
