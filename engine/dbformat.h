/*
 * dbformat.h — internal keys and entry encodings shared by the memtable, tables, iterators and compaction.
 *
 * An internal key is   ukey || trailer   where
 *   ukey    = keyspace (1 byte) || user key (1..KV_MAX_KEY bytes)
 *   trailer = fixed64 little-endian of (sequence << 8 | type)
 * Internal keys sort by ukey ascending (memcmp, shorter first on a tie), then by trailer DESCENDING, so the newest
 * version of a key comes first. Sequence numbers are 56 bits.
 *
 * Every entry's value (memtable and SSTable) is   varint64 timestamp_ms || payload   where the payload is the user
 * value (KV_TYPE_VALUE), empty (KV_TYPE_DELETE), or an encoded blob reference (KV_TYPE_BLOB, see blob.h).
 */
#ifndef KV_DBFORMAT_H
#define KV_DBFORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "coding.h"

enum { KV_TYPE_DELETE = 0, KV_TYPE_VALUE = 1, KV_TYPE_BLOB = 2 };
#define KV_TYPE_FOR_SEEK 0xff   /* the highest type: a lookup key with it sorts before every entry of its seq */
#define KV_MAX_SEQUENCE ((1ull << 56) - 1)
#define KV_MAX_FILE_NUMBER ((1ull << 62) - 1) /* a manifest naming a larger one is damaged (version.c) */
#define IKEY_TRAILER 8

static inline uint64_t ikey_pack(uint64_t seq, int type) { return (seq << 8) | (uint64_t)(type & 0xff); }
static inline uint64_t ikey_trailer(const uint8_t *ikey, size_t len) { return get_fixed64(ikey + len - 8); }
static inline uint64_t ikey_seq(const uint8_t *ikey, size_t len) { return ikey_trailer(ikey, len) >> 8; }
static inline int ikey_type(const uint8_t *ikey, size_t len) { return (int)(ikey_trailer(ikey, len) & 0xff); }
static inline size_t ikey_ulen(size_t len) { return len - 8; }

/* Compare two internal keys (both at least 9 bytes). */
static inline int ikey_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    size_t ua = alen - 8, ub = blen - 8;
    size_t n = ua < ub ? ua : ub;
    int c = memcmp(a, b, n);
    if (c) return c;
    if (ua != ub) return ua < ub ? -1 : 1;
    uint64_t ta = get_fixed64(a + ua), tb = get_fixed64(b + ub);
    return ta > tb ? -1 : ta < tb ? 1 : 0;
}
/* Compare the ukey parts only. */
static inline int ukey_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    size_t n = alen < blen ? alen : blen;
    int c = memcmp(a, b, n);
    if (c) return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

/* Build ukey||trailer into out (which must hold ulen + 8 bytes). */
static inline void ikey_build(uint8_t *out, const uint8_t *ukey, size_t ulen, uint64_t seq, int type) {
    memcpy(out, ukey, ulen);
    put_fixed64(out + ulen, ikey_pack(seq, type));
}

/* Split an entry value into timestamp and payload; returns 0, or -1 if malformed. */
static inline int entry_decode(const uint8_t *v, size_t vlen, int64_t *ts, const uint8_t **payload, size_t *plen) {
    uint64_t t;
    const uint8_t *p;
    if (vlen >= 8 && (p = get_varint64_word(v, &t)) != NULL) {
        *ts = (int64_t)t;
        *payload = p;
        *plen = vlen - (size_t)(p - v);
        return 0;
    }
    p = get_varint64(v, v + vlen, &t);
    if (!p) return -1;
    *ts = (int64_t)t;
    *payload = p;
    *plen = vlen - (size_t)(p - v);
    return 0;
}

#endif /* KV_DBFORMAT_H */
