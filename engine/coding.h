/*
 * coding.h — fixed-width little-endian and varint encodings, a growable byte buffer, and the checksum used by every
 * on-disk format.
 *
 * Invariants: decoders never read past the limit they are given; they return NULL (pointer form) on truncated or
 * over-long input, never crash. Fixed-width integers are little-endian on disk whatever the host.
 */
#ifndef KV_CODING_H
#define KV_CODING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void put_fixed32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void put_fixed64(uint8_t *p, uint64_t v) {
    put_fixed32(p, (uint32_t)v);
    put_fixed32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t get_fixed32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t get_fixed64(const uint8_t *p) {
    return (uint64_t)get_fixed32(p) | ((uint64_t)get_fixed32(p + 4) << 32);
}

/* Write v as a varint at p (at most 10 bytes); returns the byte after it. */
static inline uint8_t *put_varint64(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}
static inline int varint_length(uint64_t v) {
    int n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}
/* Decode a varint from [p, limit); returns the byte after it, or NULL if truncated or longer than 10 bytes. */
static inline const uint8_t *get_varint64(const uint8_t *p, const uint8_t *limit, uint64_t *v) {
    uint64_t result = 0;
    for (unsigned shift = 0; shift <= 63 && p < limit; shift += 7) {
        uint64_t byte = *p++;
        if (shift == 63 && (byte & 0x7e)) return NULL; /* a tenth byte may only carry bit 63 */
        result |= (byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *v = result;
            return p;
        }
    }
    return NULL;
}

/* The same decoding for a varint of at most 8 bytes (values below 2^56: a millisecond timestamp is 6 bytes), without
 * a loop over its bytes: p must have 8 readable bytes. Returns the byte after the varint, or NULL when it is longer
 * than 8 bytes (the caller then decodes it with get_varint64). */
static inline const uint8_t *get_varint64_word(const uint8_t *p, uint64_t *v) {
    uint64_t w = get_fixed64(p), ends = ~w & 0x8080808080808080ull; /* the bytes without a continuation bit */
    if (!ends) return NULL;
    unsigned n = (unsigned)__builtin_ctzll(ends) / 8 + 1; /* the varint's bytes */
    uint64_t x = (n == 8 ? w : w & ((1ull << (8 * n)) - 1)) & 0x7f7f7f7f7f7f7f7full;
    x = (x & 0x007f007f007f007full) | ((x & 0x7f007f007f007f00ull) >> 1);   /* 14 bits in each 16 */
    x = (x & 0x00003fff00003fffull) | ((x & 0x3fff00003fff0000ull) >> 2);   /* 28 bits in each 32 */
    *v = (x & 0x000000000fffffffull) | ((x & 0x0fffffff00000000ull) >> 4); /* 56 bits */
    return p + n;
}

/* A growable byte buffer. Zero-initialise ({0}) to start empty. */
typedef struct kv_bytes {
    uint8_t *data;
    size_t len, cap;
} kv_bytes;

/* Make room for n more bytes; KV_OK or KV_ENOMEM. */
int bytes_reserve(kv_bytes *b, size_t n);
int bytes_append(kv_bytes *b, const void *data, size_t n);
int bytes_append_varint(kv_bytes *b, uint64_t v);
int bytes_append_fixed32(kv_bytes *b, uint32_t v);
int bytes_append_fixed64(kv_bytes *b, uint64_t v);
/* varint length followed by the bytes */
int bytes_append_lenprefixed(kv_bytes *b, const void *data, size_t n);
void bytes_free(kv_bytes *b);
static inline void bytes_clear(kv_bytes *b) { b->len = 0; }

/* Decode a varint-length-prefixed byte string from [p, limit): *data, *len; NULL if truncated. */
const uint8_t *get_lenprefixed(const uint8_t *p, const uint8_t *limit, const uint8_t **data, uint64_t *len);

/* The checksum of every on-disk structure: the low 32 bits of XXH3-64 of the bytes. */
uint32_t kv_checksum(const void *data, size_t n);
/* Checksum of the concatenation a||b without copying. */
uint32_t kv_checksum2(const void *a, size_t na, const void *b, size_t nb);

#endif /* KV_CODING_H */
