/*
 * arena.c — block management for the bump allocator (see arena.h).
 *
 * Invariants: the blocks list owns every malloc'ed block; a block's usable bytes start right after its header,
 * rounded up to ARENA_ALIGN; `ptr`/`left` describe the tail of the last normal-sized block (a dedicated block for a
 * big request never becomes the current block, so the current block's tail stays usable after it).
 */
#include "arena.h"

#include <stdalign.h>
#include <stdlib.h>

_Static_assert(ARENA_ALIGN % alignof(void *) == 0, "arena alignment must suit pointers");
_Static_assert(ARENA_ALIGN % alignof(uint64_t) == 0, "arena alignment must suit 64-bit integers");

typedef struct arena_block {
    struct arena_block *next;
} arena_block;

/* Header size rounded so that the payload after it is aligned. */
#define BLOCK_HDR ((sizeof(arena_block) + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1))

void arena_init(arena *a) {
    a->ptr = NULL;
    a->left = 0;
    a->blocks = NULL;
    a->used = 0;
    a->reserved = 0;
}

void arena_destroy(arena *a) {
    arena_block *b = a->blocks;
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    arena_init(a);
}

/* malloc a block with `payload` usable bytes and link it into the list; returns its payload or NULL. */
static uint8_t *new_block(arena *a, size_t payload) {
    if (payload > SIZE_MAX - BLOCK_HDR) return NULL;
    arena_block *b = malloc(BLOCK_HDR + payload);
    if (!b) return NULL;
    b->next = a->blocks;
    a->blocks = b;
    a->reserved += BLOCK_HDR + payload;
    return (uint8_t *)b + BLOCK_HDR;
}

void *arena_alloc_slow(arena *a, size_t n) {
    size_t r = (n + (ARENA_ALIGN - 1)) & ~(size_t)(ARENA_ALIGN - 1);
    if (n == 0 || r < n) return NULL; /* zero-size requests are a caller bug; r < n: size overflow */
    if (r <= a->left) return arena_alloc(a, n);
    if (r > ARENA_BLOCK / 4) {
        /* Big: its own block. The current block keeps its tail for later small requests. */
        uint8_t *p = new_block(a, r);
        if (p) a->used += r;
        return p;
    }
    /* Small and the current block is full: start a new one, abandoning the (less than a quarter block) tail. */
    uint8_t *p = new_block(a, ARENA_BLOCK - BLOCK_HDR);
    if (!p) return NULL;
    a->ptr = p;
    a->left = (ARENA_BLOCK - BLOCK_HDR) & ~(size_t)(ARENA_ALIGN - 1);
    return arena_alloc(a, n);
}
