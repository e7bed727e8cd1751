/* iter.c — the empty iterator (see iter.h). */
#include "iter.h"

#include <stdlib.h>

#include "kv.h"

typedef struct {
    iter base;
    int status;
} empty_iter;

static bool e_valid(iter *it) { (void)it; return false; }
static void e_nop(iter *it) { (void)it; }
static void e_seek(iter *it, const uint8_t *k, size_t n) { (void)it; (void)k; (void)n; }
static const uint8_t *e_kv(iter *it, size_t *n) { (void)it; *n = 0; return NULL; }
static int e_status(iter *it) { return ((empty_iter *)it)->status; }
static void e_destroy(iter *it) { free(it); }
static void e_keep(iter *it) { (void)it; }

/* When even an empty iterator cannot be allocated: a shared one that reports out of memory and is never freed, so
 * that callers never get NULL. */
static empty_iter out_of_memory = {{e_valid, e_nop, e_nop, e_seek, e_nop, e_nop, e_kv, e_kv, e_status, e_keep},
                                   KV_ENOMEM};

iter *iter_empty(int status) {
    empty_iter *e = calloc(1, sizeof *e);
    if (!e) return &out_of_memory.base;
    e->base = (iter){e_valid, e_nop, e_nop, e_seek, e_nop, e_nop, e_kv, e_kv, e_status, e_destroy};
    e->status = status;
    return &e->base;
}
