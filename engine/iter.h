/*
 * iter.h — the internal iterator interface shared by memtables, blocks, tables, level concatenation and merging.
 *
 * Invariants
 *  - Entries are (internal key, entry value) pairs in ikey_cmp order (dbformat.h).
 *  - key() and value() are valid only while valid() is true, and only until the iterator next moves.
 *  - seek(target) positions at the first entry >= target; seek_for_prev is not needed internally: callers seek and
 *    step back. After an error valid() is false and status() returns it (with kv_errmsg set when it happened).
 *  - An implementation embeds `iter` as its first member; destroy() frees everything it owns.
 */
#ifndef KV_ITER_H
#define KV_ITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct iter {
    bool (*valid)(struct iter *it);
    void (*seek_first)(struct iter *it);
    void (*seek_last)(struct iter *it);
    void (*seek)(struct iter *it, const uint8_t *ikey, size_t len);
    void (*next)(struct iter *it);
    void (*prev)(struct iter *it);
    const uint8_t *(*key)(struct iter *it, size_t *len);
    const uint8_t *(*value)(struct iter *it, size_t *len);
    int (*status)(struct iter *it);
    void (*destroy)(struct iter *it);
} iter;

/* An iterator over nothing, or one that only reports an error status. Never NULL: when memory runs out it is a
 * shared iterator reporting KV_ENOMEM (whose destroy does nothing). */
iter *iter_empty(int status);

#endif /* KV_ITER_H */
