/*
 * zblock.h — seekable compressed data blocks: a data block stored as one deflate stream cut at its restart points,
 * so that a point lookup inflates one restart interval instead of the whole block.
 *
 * Stored form (block type 2, docs/format.md "Seekable blocks"), for a raw block of raw_len bytes whose restart array
 * has r entries:
 *     varint raw_len | varint r | varint bit_delta[r + 2] | deflate stream
 * The stream is one final block (deflate_compress_spans), with the fixed code or a dynamic one whose header it
 * carries, cut into r + 1 spans: span i < r holds the entries of restart interval i (from restart[i] to
 * restart[i + 1], the last to the restart array), span r the restart array and its count. The first delta is where
 * span 0 starts (after the block's header), each next one leads to the next span's start, and the last to the
 * end-of-block code.
 *
 * Invariants
 *  - zblock_parse checks the directory's shape (counts, offsets inside the stream, ascending) and that the stream
 *    ends with its end-of-block code where the directory says; the spans themselves are checked as they are inflated: each must end exactly where the next begins, and a whole inflation must agree
 *    with the restart array it rebuilds. A stored block whose checksum passed but whose content is bad gives
 *    KV_ECORRUPT naming the file and block offset, never a read outside a buffer.
 *  - A lookup inflates at most: a prefix of a few spans (to compare their first keys), one span, and the first entry
 *    of the next span. An iterator holds one inflated span at a time.
 */
#ifndef KV_ZBLOCK_H
#define KV_ZBLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coding.h"
#include "deflate.h"
#include "iter.h"

/* The decoding tables of a dynamic code, shared by the blocks whose streams carry the same header (refcounted), and
 * a cache of the last one read, which a table reader keeps so that its blocks build the tables once. A parsed block
 * holds no code: each call that decodes takes one from the caller's cache (or reads it from the block's header when
 * the cache is NULL or holds another), for the call's duration (an iterator: for its life). So the codes in memory
 * are those of open table readers and live iterators, whatever the block cache holds. */
typedef struct zcode zcode;
typedef struct zcode_cache zcode_cache;
zcode_cache *zcode_cache_new(void); /* NULL when out of memory */
void zcode_cache_free(zcode_cache *cc);
size_t zcode_live(void);            /* codes in memory in the process (for tests) */

typedef struct zblock {
    uint8_t *data;          /* the stored payload (owned) */
    size_t len;
    const uint8_t *stream;  /* the deflate stream, inside data */
    size_t stream_len;
    size_t raw_len;
    uint32_t nspans;        /* restart points + 1 */
    uint64_t *bits;         /* nspans + 1 bit offsets into stream: each span's start, then the end-of-block code */
    bool fixed;             /* the stream uses the fixed code (else a dynamic one, whose header it carries) */
    uint64_t file_no, offset; /* for messages */
} zblock;

/* Store the raw block raw[0..n) (entries, restart array, count; block_builder_finish's output) into out[0..cap) in
 * the seekable form. Returns the stored length, or 0 when it does not fit in cap or the block has no entries (the
 * caller then keeps another form). */
size_t zblock_encode(deflate_encoder *e, const uint8_t *raw, size_t n, uint8_t *out, size_t cap);

/* Take ownership of a stored payload (malloc'ed), read its directory and check its code's header (through codes,
 * which keeps the code, when the header matches the last one seen there; codes may be NULL) and its end: KV_OK,
 * KV_ECORRUPT or KV_ENOMEM (data freed). */
int zblock_parse(uint8_t *data, size_t len, uint64_t file_no, uint64_t offset, zcode_cache *codes, zblock **out);
void zblock_free(zblock *z);
/* Bytes the parsed block holds in memory (for the block cache's budget). */
size_t zblock_charge(const zblock *z);

/* Inflate the whole raw block, span by span, checking the directory against the restart array it rebuilds. *raw is
 * malloc'ed (raw_len bytes). KV_OK, KV_ECORRUPT or KV_ENOMEM. */
int zblock_inflate(const zblock *z, zcode_cache *codes, uint8_t **raw, size_t *raw_len);

/* The point lookup (as block_seek_value): find the first entry >= target (an internal key). Returns 1 with its value
 * copied into *val and its trailer in *trailer; 0 when every entry is < target or, with same_ukey, when that entry's
 * user key differs from target's; < 0 on error (message set). unique_ukeys says that the block holds each user key at
 * most once (its table's properties say so): with same_ukey, a target whose user key starts a span is then answered
 * from that span's first entry without inflating the span before it. */
int zblock_seek_value(const zblock *z, zcode_cache *codes, const uint8_t *target, size_t tlen, bool same_ukey,
                      bool unique_ukeys, uint64_t *trailer, kv_bytes *val);

/* An iterator over the block's entries (as block_iter_new over the raw block) that inflates one restart interval at
 * a time: a seek inflates the first entries of a few spans and one span, not the block. z must outlive it. */
iter *zblock_iter_new(const zblock *z, zcode_cache *codes);

#endif /* KV_ZBLOCK_H */
