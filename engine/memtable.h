/*
 * memtable.h — the in-memory table: a skiplist of (internal key, entry value) in ikey_cmp order.
 *
 * Invariants
 *  - One writer at a time (the caller serialises memtable_add); any number of readers and iterators run at the same
 *    time without taking a lock: nodes are published with release stores and read with acquire loads, and are never
 *    changed or freed while the memtable is referenced.
 *  - Memory comes from an arena freed all at once when the last reference goes.
 *  - Entries are never removed: a delete is an entry of type KV_TYPE_DELETE.
 *  - A lookup of a user key the memtable never held usually costs one hash, not a search: a bloom filter over the
 *    user keys answers first.
 */
#ifndef KV_MEMTABLE_H
#define KV_MEMTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "iter.h"

typedef struct memtable memtable;

typedef struct memtable_meta {
    uint64_t entries, tombstones;
    uint64_t bytes;               /* arena bytes in use (what memtable_bytes returns) */
    uint64_t first_seq, last_seq; /* 0, 0 when empty */
} memtable_meta;

/* refcount 1. expected_bytes (the size at which it will be frozen) sizes its key filter: 1/64 of it. */
int memtable_new(size_t expected_bytes, memtable **out);
void memtable_ref(memtable *m);
void memtable_unref(memtable *m);

/* Add an entry. ukey = keyspace||user key; val = encoded entry value (dbformat.h). KV_OK or KV_ENOMEM. */
int memtable_add(memtable *m, uint64_t seq, int type, const uint8_t *ukey, size_t ulen, const uint8_t *val,
                 size_t vlen);
/* The newest entry for ukey with sequence <= seq: returns 1 and fills *type, *val and *vlen (valid while the memtable is
 * referenced) and *found_seq; 0 when the memtable has no such entry. */
int memtable_get(memtable *m, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type, const uint8_t **val,
                 size_t *vlen, uint64_t *found_seq);
size_t memtable_bytes(const memtable *m);
void memtable_get_meta(const memtable *m, memtable_meta *out);
/* An iterator over all entries; it holds a reference on m until destroyed. */
iter *memtable_iter(memtable *m);

#endif /* KV_MEMTABLE_H */
