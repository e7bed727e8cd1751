/*
 * block.h — sorted key/value blocks with prefix-compressed keys (the data and index blocks of an SSTable).
 *
 * Format (docs/format.md, "Blocks"): entries, then the restart array, then its count:
 *     entry   = varint shared | varint unshared | varint value_len | key bytes[unshared] | value bytes
 *     trailer = fixed32 restart_offset[num_restarts] | fixed32 num_restarts
 * Every block_restart_interval-th entry is a restart point: it stores its whole key (shared = 0).
 *
 * Invariants: keys are added in strictly increasing ikey_cmp order. The reader validates the trailer when the block
 * is parsed and every entry as it decodes it; a malformed block makes the iterator invalid with KV_ECORRUPT (message
 * naming the file and the block's offset), never a read out of bounds.
 */
#ifndef KV_BLOCK_H
#define KV_BLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coding.h"
#include "iter.h"

typedef struct block_builder {
    kv_bytes buf;
    kv_bytes restarts;  /* fixed32 offsets */
    kv_bytes last_key;
    int restart_interval;
    int counter;        /* entries since the last restart */
    uint64_t entries;
    bool finished;
} block_builder;

void block_builder_init(block_builder *b, int restart_interval);
int block_builder_add(block_builder *b, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
size_t block_builder_size(const block_builder *b); /* size the finished block would have */
bool block_builder_empty(const block_builder *b);
/* Append the restart array; *data and *len stay valid until reset or free. */
void block_builder_finish(block_builder *b, const uint8_t **data, size_t *len);
void block_builder_reset(block_builder *b);
void block_builder_free(block_builder *b);

typedef struct block {
    uint8_t *data;   /* owned */
    size_t len;      /* bytes of entries + trailer */
    size_t restart_off;
    uint32_t num_restarts;
    uint64_t file_no, offset; /* for error messages */
    const char *file_name_fmt; /* unused; kept NULL */
} block;

/* Take ownership of data (malloc'ed) and check the trailer: KV_OK or KV_ECORRUPT (data freed). file_no/offset
 * are only used in messages ("%06llu.sst: ... at offset N"). */
int block_parse(uint8_t *data, size_t len, uint64_t file_no, uint64_t offset, block **out);
void block_free(block *b);
/* An iterator over b's entries (compared with ikey_cmp). release(arg) is called when it is destroyed (to release
 * the cache handle that keeps b alive); release may be NULL. */
iter *block_iter_new(const block *b, void (*release)(void *arg), void *arg);
/* The point-lookup path, without allocating an iterator: find the first entry >= target (an internal key). Returns
 * 1 with *val and *vlen pointing into b (and *trailer, if not NULL, set to the entry's trailer), 0 when every entry is
 * < target or, with same_ukey, when that entry's user key differs from target's; KV_ECORRUPT (message set) when a
 * decoded entry is malformed. */
int block_seek_value(const block *b, const uint8_t *target, size_t tlen, bool same_ukey, uint64_t *trailer,
                     const uint8_t **val, size_t *vlen);

#endif /* KV_BLOCK_H */
