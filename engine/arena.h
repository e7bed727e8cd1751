/*
 * arena.h — a bump allocator for memtables: many small allocations, all freed at once.
 *
 * Invariants
 *  - Every pointer returned is ARENA_ALIGN-aligned and stays valid, unmoved, until arena_destroy().
 *  - Memory is taken from malloc in blocks of ARENA_BLOCK bytes; a request larger than a quarter of a block gets a
 *    dedicated block of its own, so a big value never wastes the unused tail of the current block.
 *  - Not thread-safe: one thread allocates (the memtable writer). Readers only touch memory already handed out.
 */
#ifndef KV_ARENA_H
#define KV_ARENA_H

#include <stddef.h>
#include <stdint.h>

#define ARENA_BLOCK (64u * 1024u)
#define ARENA_ALIGN 8u

struct arena_block;

typedef struct arena {
    uint8_t *ptr;               /* next free byte of the current block (ARENA_ALIGN-aligned) */
    size_t left;                /* bytes left in the current block (a multiple of ARENA_ALIGN) */
    struct arena_block *blocks; /* every block, newest first */
    size_t used;                /* bytes handed out, alignment padding included */
    size_t reserved;            /* bytes obtained from malloc */
} arena;

void arena_init(arena *a);
void arena_destroy(arena *a); /* frees every block; the arena may be initialised again */

void *arena_alloc_slow(arena *a, size_t n);

/* n bytes (n > 0), ARENA_ALIGN-aligned, or NULL when out of memory. The common case is inline: a bump. */
static inline void *arena_alloc(arena *a, size_t n) {
    size_t r = (n + (ARENA_ALIGN - 1)) & ~(size_t)(ARENA_ALIGN - 1);
    if (r >= n && r <= a->left) { /* r >= n: no wrap-around for absurd n */
        void *p = a->ptr;
        a->ptr += r;
        a->left -= r;
        a->used += r;
        return p;
    }
    return arena_alloc_slow(a, n);
}

#endif /* KV_ARENA_H */
