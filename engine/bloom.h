/*
 * bloom.h — bloom filters over user keys (keyspace||key), hashed with xxHash (XXH3-64, double hashing).
 *
 * Format (docs/format.md, "Filter block"): bit array (ceil(n * bits_per_key / 8) bytes, at least 8) | 1 byte k
 * (number of probes). A filter that is malformed, or whose k is above 30, answers "may contain" for every key: a bad
 * filter costs a read, never a missed key.
 */
#ifndef KV_BLOOM_H
#define KV_BLOOM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coding.h"

typedef struct bloom_builder {
    uint64_t *hashes;
    size_t n, cap;
    int bits_per_key;
} bloom_builder;

void bloom_builder_init(bloom_builder *b, int bits_per_key);
int bloom_builder_add(bloom_builder *b, const uint8_t *key, size_t len);
/* Append the filter for the keys added so far to out and reset the builder. */
int bloom_builder_finish(bloom_builder *b, kv_bytes *out);
void bloom_builder_free(bloom_builder *b);
bool bloom_may_contain(const uint8_t *filter, size_t flen, const uint8_t *key, size_t klen);

#endif /* KV_BLOOM_H */
