/*
 * bloom.c — bloom filters over user keys (see bloom.h).
 *
 * Invariants
 *  - A key's probes are derived from one XXH3-64 hash h: h1 = low 32 bits, h2 = high 32 bits, and probe i
 *    (0 <= i < k) tests bit ((uint32_t)(h1 + i * h2) * nbits) >> 32, a multiply-shift mapping of the 32-bit value onto
 *    [0, nbits) that needs no division. Builder and reader use the same function, so a key added is always found.
 *  - Bit b lives in byte b / 8 at mask 1 << (b % 8). The array holds max(8, ceil(n * bits_per_key / 8)) bytes, capped
 *    so that nbits fits in 32 bits; the last byte of the filter is k = round(bits_per_key * ln 2) clamped to 1..30.
 *  - A filter shorter than 9 bytes or with k outside 1..30 is malformed and answers "may contain" for every key.
 */
#include "bloom.h"

#include <stdlib.h>
#include <xxhash.h>

#include "error.h"
#include "kv.h"

#define BLOOM_MAX_BYTES ((size_t)1 << 29) /* 2^32 bits: the most the 32-bit probe mapping can address */

void bloom_builder_init(bloom_builder *b, int bits_per_key) {
    b->hashes = NULL;
    b->n = b->cap = 0;
    b->bits_per_key = bits_per_key < 1 ? 1 : bits_per_key;
}

int bloom_builder_add(bloom_builder *b, const uint8_t *key, size_t len) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        uint64_t *h = realloc(b->hashes, cap * sizeof *h);
        if (!h) return kv_set_error(KV_ENOMEM, "out of memory building a bloom filter");
        b->hashes = h;
        b->cap = cap;
    }
    b->hashes[b->n++] = XXH3_64bits(key, len);
    return KV_OK;
}

static inline uint32_t probe_bit(uint32_t h1, uint32_t h2, uint32_t i, uint64_t nbits) {
    uint32_t x = h1 + i * h2; /* wraps mod 2^32 by design */
    return (uint32_t)(((uint64_t)x * nbits) >> 32);
}

int bloom_builder_finish(bloom_builder *b, kv_bytes *out) {
    /* k = round(bits_per_key * ln 2): the probe count that minimises false positives for this many bits per key. */
    int k = (int)(b->bits_per_key * 0.69314718056 + 0.5);
    if (k < 1) k = 1;
    if (k > 30) k = 30;
    size_t bytes;
    if (b->n > BLOOM_MAX_BYTES * 8 / (size_t)b->bits_per_key)
        bytes = BLOOM_MAX_BYTES;
    else
        bytes = (b->n * (size_t)b->bits_per_key + 7) / 8;
    if (bytes < 8) bytes = 8;
    if (bytes_reserve(out, bytes + 1)) return kv_set_error(KV_ENOMEM, "out of memory building a bloom filter");
    uint8_t *bits = out->data + out->len;
    memset(bits, 0, bytes);
    uint64_t nbits = (uint64_t)bytes * 8;
    for (size_t j = 0; j < b->n; j++) {
        uint64_t h = b->hashes[j];
        uint32_t h1 = (uint32_t)h, h2 = (uint32_t)(h >> 32);
        for (int i = 0; i < k; i++) {
            uint32_t bit = probe_bit(h1, h2, (uint32_t)i, nbits);
            bits[bit >> 3] |= (uint8_t)(1u << (bit & 7));
        }
    }
    bits[bytes] = (uint8_t)k;
    out->len += bytes + 1;
    b->n = 0;
    return KV_OK;
}

void bloom_builder_free(bloom_builder *b) {
    free(b->hashes);
    b->hashes = NULL;
    b->n = b->cap = 0;
}

bool bloom_may_contain(const uint8_t *filter, size_t flen, const uint8_t *key, size_t klen) {
    if (flen < 9 || flen - 1 > BLOOM_MAX_BYTES) return true;
    int k = filter[flen - 1];
    if (k < 1 || k > 30) return true;
    uint64_t nbits = (uint64_t)(flen - 1) * 8;
    uint64_t h = XXH3_64bits(key, klen);
    uint32_t h1 = (uint32_t)h, h2 = (uint32_t)(h >> 32);
    for (int i = 0; i < k; i++) {
        uint32_t bit = probe_bit(h1, h2, (uint32_t)i, nbits);
        if (!(filter[bit >> 3] & (1u << (bit & 7)))) return false;
    }
    return true;
}
