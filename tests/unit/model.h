/*
 * model.h — a simple in-memory ordered map of byte strings, the reference that randomized engine tests compare the
 * store against. Sorted array with binary search: slow, obviously correct.
 */
#ifndef KV_TEST_MODEL_H
#define KV_TEST_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct model_entry {
    uint8_t *key, *val;
    size_t klen, vlen;
} model_entry;

typedef struct model {
    model_entry *e;
    size_t n, cap;
} model;

void model_put(model *m, const void *k, size_t kl, const void *v, size_t vl);
void model_del(model *m, const void *k, size_t kl);
/* index of the first entry >= key */
size_t model_lower(const model *m, const void *k, size_t kl);
const model_entry *model_get(const model *m, const void *k, size_t kl);
model model_copy(const model *m);
void model_free(model *m);
int model_keycmp(const void *a, size_t al, const void *b, size_t bl);

#endif
