/* coding.c — the growable buffer and the checksum (see coding.h). */
#include "coding.h"

#include <stdlib.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "kv.h"

int bytes_reserve(kv_bytes *b, size_t n) {
    if (b->cap - b->len >= n) return KV_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) return KV_ENOMEM;
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p) return KV_ENOMEM;
    b->data = p;
    b->cap = cap;
    return KV_OK;
}

int bytes_append(kv_bytes *b, const void *data, size_t n) {
    if (n == 0) return KV_OK;
    int rc = bytes_reserve(b, n);
    if (rc) return rc;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    return KV_OK;
}

int bytes_append_varint(kv_bytes *b, uint64_t v) {
    int rc = bytes_reserve(b, 10);
    if (rc) return rc;
    b->len = (size_t)(put_varint64(b->data + b->len, v) - b->data);
    return KV_OK;
}

int bytes_append_fixed32(kv_bytes *b, uint32_t v) {
    int rc = bytes_reserve(b, 4);
    if (rc) return rc;
    put_fixed32(b->data + b->len, v);
    b->len += 4;
    return KV_OK;
}

int bytes_append_fixed64(kv_bytes *b, uint64_t v) {
    int rc = bytes_reserve(b, 8);
    if (rc) return rc;
    put_fixed64(b->data + b->len, v);
    b->len += 8;
    return KV_OK;
}

int bytes_append_lenprefixed(kv_bytes *b, const void *data, size_t n) {
    int rc = bytes_append_varint(b, n);
    return rc ? rc : bytes_append(b, data, n);
}

void bytes_free(kv_bytes *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

const uint8_t *get_lenprefixed(const uint8_t *p, const uint8_t *limit, const uint8_t **data, uint64_t *len) {
    uint64_t n;
    p = get_varint64(p, limit, &n);
    if (!p || n > (uint64_t)(limit - p)) return NULL;
    *data = p;
    *len = n;
    return p + n;
}

uint32_t kv_checksum(const void *data, size_t n) { return (uint32_t)XXH3_64bits(data, n); }

uint32_t kv_checksum2(const void *a, size_t na, const void *b, size_t nb) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, a, na);
    XXH3_64bits_update(&st, b, nb);
    return (uint32_t)XXH3_64bits_digest(&st);
}
