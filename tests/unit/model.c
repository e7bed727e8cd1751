/* model.c — the reference ordered map for randomized tests (see model.h). */
#include "model.h"

#include <stdlib.h>
#include <string.h>

int model_keycmp(const void *a, size_t al, const void *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al < bl ? -1 : al > bl);
}

size_t model_lower(const model *m, const void *k, size_t kl) {
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (model_keycmp(m->e[mid].key, m->e[mid].klen, k, kl) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static uint8_t *dup(const void *p, size_t n) {
    uint8_t *d = malloc(n ? n : 1);
    if (n) memcpy(d, p, n);
    return d;
}

void model_put(model *m, const void *k, size_t kl, const void *v, size_t vl) {
    size_t i = model_lower(m, k, kl);
    if (i < m->n && model_keycmp(m->e[i].key, m->e[i].klen, k, kl) == 0) {
        free(m->e[i].val);
        m->e[i].val = dup(v, vl);
        m->e[i].vlen = vl;
        return;
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->e = realloc(m->e, m->cap * sizeof *m->e);
    }
    memmove(&m->e[i + 1], &m->e[i], (m->n - i) * sizeof *m->e);
    m->e[i] = (model_entry){dup(k, kl), dup(v, vl), kl, vl};
    m->n++;
}

void model_del(model *m, const void *k, size_t kl) {
    size_t i = model_lower(m, k, kl);
    if (i < m->n && model_keycmp(m->e[i].key, m->e[i].klen, k, kl) == 0) {
        free(m->e[i].key);
        free(m->e[i].val);
        memmove(&m->e[i], &m->e[i + 1], (m->n - i - 1) * sizeof *m->e);
        m->n--;
    }
}

const model_entry *model_get(const model *m, const void *k, size_t kl) {
    size_t i = model_lower(m, k, kl);
    if (i < m->n && model_keycmp(m->e[i].key, m->e[i].klen, k, kl) == 0) return &m->e[i];
    return NULL;
}

model model_copy(const model *m) {
    model c = {0};
    c.cap = m->n ? m->n : 1;
    c.e = malloc(c.cap * sizeof *c.e);
    for (size_t i = 0; i < m->n; i++)
        c.e[i] = (model_entry){dup(m->e[i].key, m->e[i].klen), dup(m->e[i].val, m->e[i].vlen), m->e[i].klen, m->e[i].vlen};
    c.n = m->n;
    return c;
}

void model_free(model *m) {
    for (size_t i = 0; i < m->n; i++) {
        free(m->e[i].key);
        free(m->e[i].val);
    }
    free(m->e);
    m->e = NULL;
    m->n = m->cap = 0;
}
