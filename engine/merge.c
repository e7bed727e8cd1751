/*
 * merge.c — the merging iterator and the level (concatenating) iterator (see merge.h).
 *
 * merge_iter invariants
 *  - Entries are ordered by (internal key, child index): children holding identical internal keys are visited in
 *    index order going forward and in reverse index order going backward, so prev() is the exact inverse of next().
 *  - dir says how the children stand relative to the current entry (key k of child c):
 *      FORWARD:  every valid child other than c is at its first entry > (k, c); the heap is a min-heap.
 *      BACKWARD: every valid child other than c is at its last entry < (k, c); the heap is a max-heap.
 *    The heap holds exactly the valid children; its top is the current child. A change of direction repositions
 *    every other child around (k, c) and rebuilds the heap, as LevelDB's MergingIterator does.
 *  - top2, when not 0, is the heap position (1 or 2) of the top's first child in heap order. Only a step of the top
 *    child that leaves it on top keeps it (positions 1 and 2 and their keys are unchanged then); every other change
 *    of the heap (a sift, a child dropped, a rebuild) clears it.
 *  - Why a heap: a read merges the memtables, up to ~20 level-0 files and one iterator per deeper level, and a step
 *    of the heap costs O(log n) key comparisons against n-1 for a linear scan; for the small n of most compactions a
 *    sift over one or two levels is as cheap as a scan, so a single code path serves both.
 *  - Errors are sticky: once a child reports one (it became invalid with a non-OK status), or memory ran out, the
 *    merge is invalid for good and status() returns the first error seen (lowest child index within one step).
 *
 * level_iter invariants
 *  - At most one file is open (cur, for files[idx]); when valid, cur is valid.
 *  - Empty files are skipped in the direction of travel. Errors are sticky as above.
 */
#include "merge.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>

#include "dbformat.h"
#include "error.h"
#include "kv.h"

/* ---- merge_iter -------------------------------------------------------------------------------------------------- */

typedef struct child {
    iter *it;
    const uint8_t *key; /* cached key of a valid child, refreshed after every move */
    size_t klen;
} child;

enum { FORWARD, BACKWARD };

typedef struct merge_iter {
    iter base;
    child *c;
    size_t n;
    size_t *heap; /* child indices */
    size_t nheap;
    int dir;
    size_t top2;  /* heap position (1 or 2) of the top's first child in heap order, 0 when not known */
    int err;      /* sticky first error */
    kv_bytes saved; /* the current key, kept across a change of direction */
} merge_iter;

/* Does child a come before child b in the heap's order? */
static inline bool heap_before(const merge_iter *mi, size_t a, size_t b) {
    int c = ikey_cmp(mi->c[a].key, mi->c[a].klen, mi->c[b].key, mi->c[b].klen);
    if (mi->dir == FORWARD) return c < 0 || (c == 0 && a < b);
    return c > 0 || (c == 0 && a > b);
}

static void sift_down(merge_iter *mi, size_t i) {
    size_t *h = mi->heap, n = mi->nheap, x = h[i];
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        size_t best = l;
        if (l + 1 < n && heap_before(mi, h[l + 1], h[l])) best = l + 1;
        if (!heap_before(mi, h[best], x)) break;
        h[i] = h[best];
        i = best;
    }
    h[i] = x;
}

/* Refresh child i's cached key after it moved; records its error if it became invalid with one. Returns valid. */
static bool refresh(merge_iter *mi, size_t i) {
    child *ch = &mi->c[i];
    if (ch->it->valid(ch->it)) {
        ch->key = ch->it->key(ch->it, &ch->klen);
        return true;
    }
    int st = ch->it->status(ch->it);
    if (st != KV_OK && mi->err == KV_OK) mi->err = st;
    return false;
}

/* The top child moved (and is still valid): restore the heap. The top's first child in heap order is remembered
 * from one step to the next (heap positions 1 and 2 change only when the top sinks), so while the same child stays
 * the smallest, as it does for runs of entries from one level, a step costs one comparison instead of two; when the
 * top sinks, that child takes its place without being compared again and the sift goes on below it. */
static void top_moved(merge_iter *mi) {
    size_t *h = mi->heap;
    if (mi->nheap < 2) return;
    size_t s = mi->top2 ? mi->top2 : mi->nheap > 2 && heap_before(mi, h[2], h[1]) ? 2 : 1;
    if (heap_before(mi, h[0], h[s])) {
        mi->top2 = s;
        return;
    }
    size_t x = h[0];
    h[0] = h[s];
    h[s] = x;
    mi->top2 = 0;
    sift_down(mi, s);
}

/* The top child ran out (or failed): drop it from the heap. */
static void top_gone(merge_iter *mi) {
    mi->heap[0] = mi->heap[--mi->nheap];
    mi->top2 = 0;
    if (mi->nheap) sift_down(mi, 0);
}

/* Rebuild the heap from every valid child, in the order of mi->dir. */
static void rebuild(merge_iter *mi) {
    mi->top2 = 0;
    mi->nheap = 0;
    for (size_t i = 0; i < mi->n; i++)
        if (refresh(mi, i)) mi->heap[mi->nheap++] = i;
    for (size_t i = mi->nheap / 2; i-- > 0;) sift_down(mi, i);
}

static bool mg_valid(iter *it) {
    merge_iter *mi = (merge_iter *)it;
    return mi->err == KV_OK && mi->nheap > 0;
}

static void mg_seek_first(iter *it) {
    merge_iter *mi = (merge_iter *)it;
    if (mi->err) return;
    for (size_t i = 0; i < mi->n; i++) mi->c[i].it->seek_first(mi->c[i].it);
    mi->dir = FORWARD;
    rebuild(mi);
}

static void mg_seek_last(iter *it) {
    merge_iter *mi = (merge_iter *)it;
    if (mi->err) return;
    for (size_t i = 0; i < mi->n; i++) mi->c[i].it->seek_last(mi->c[i].it);
    mi->dir = BACKWARD;
    rebuild(mi);
}

static void mg_seek(iter *it, const uint8_t *ikey, size_t len) {
    merge_iter *mi = (merge_iter *)it;
    if (mi->err) return;
    for (size_t i = 0; i < mi->n; i++) mi->c[i].it->seek(mi->c[i].it, ikey, len);
    mi->dir = FORWARD;
    rebuild(mi);
}

/* Copy the current key, since repositioning the current child invalidates the cached pointer. */
static bool save_current(merge_iter *mi, size_t cur) {
    bytes_clear(&mi->saved);
    if (bytes_append(&mi->saved, mi->c[cur].key, mi->c[cur].klen) != KV_OK) {
        mi->err = kv_set_error(KV_ENOMEM, "merge iterator: out of memory");
        return false;
    }
    return true;
}

static bool at_key(merge_iter *mi, size_t i, const uint8_t *k, size_t klen) {
    return refresh(mi, i) && ikey_cmp(mi->c[i].key, mi->c[i].klen, k, klen) == 0;
}

static void mg_next(iter *it) {
    merge_iter *mi = (merge_iter *)it;
    assert(mg_valid(it));
    size_t cur = mi->heap[0];
    if (mi->dir != FORWARD) {
        /* Put every other child at its first entry > (k, cur): past k when it sorts before cur on a tie. */
        if (!save_current(mi, cur)) return;
        const uint8_t *k = mi->saved.data;
        size_t klen = mi->saved.len;
        for (size_t i = 0; i < mi->n; i++) {
            if (i == cur) continue;
            iter *c = mi->c[i].it;
            c->seek(c, k, klen);
            if (i < cur)
                while (at_key(mi, i, k, klen)) c->next(c);
        }
        mi->dir = FORWARD;
        mi->c[cur].it->next(mi->c[cur].it);
        rebuild(mi);
        return;
    }
    iter *c = mi->c[cur].it;
    c->next(c);
    if (refresh(mi, cur)) top_moved(mi);
    else top_gone(mi);
}

static void mg_prev(iter *it) {
    merge_iter *mi = (merge_iter *)it;
    assert(mg_valid(it));
    size_t cur = mi->heap[0];
    if (mi->dir != BACKWARD) {
        /* Put every other child at its last entry < (k, cur): for a child before cur on a tie that is its last entry
         * <= k, i.e. one step back from its first entry > k; otherwise one step back from its first entry >= k. */
        if (!save_current(mi, cur)) return;
        const uint8_t *k = mi->saved.data;
        size_t klen = mi->saved.len;
        for (size_t i = 0; i < mi->n; i++) {
            if (i == cur) continue;
            iter *c = mi->c[i].it;
            c->seek(c, k, klen);
            if (i < cur)
                while (at_key(mi, i, k, klen)) c->next(c);
            if (c->valid(c)) {
                c->prev(c);
            } else if (c->status(c) == KV_OK) {
                c->seek_last(c); /* every entry of the child sorts before (k, cur) */
            }
        }
        mi->dir = BACKWARD;
        mi->c[cur].it->prev(mi->c[cur].it);
        rebuild(mi);
        return;
    }
    iter *c = mi->c[cur].it;
    c->prev(c);
    if (refresh(mi, cur)) top_moved(mi);
    else top_gone(mi);
}

static const uint8_t *mg_key(iter *it, size_t *len) {
    merge_iter *mi = (merge_iter *)it;
    assert(mg_valid(it));
    child *ch = &mi->c[mi->heap[0]];
    *len = ch->klen;
    return ch->key;
}

static const uint8_t *mg_value(iter *it, size_t *len) {
    merge_iter *mi = (merge_iter *)it;
    assert(mg_valid(it));
    iter *c = mi->c[mi->heap[0]].it;
    return c->value(c, len);
}

static int mg_status(iter *it) {
    merge_iter *mi = (merge_iter *)it;
    if (mi->err) return mi->err;
    /* Before any positioning a child may already carry an error (e.g. an iter_empty(error) child). */
    for (size_t i = 0; i < mi->n; i++) {
        int st = mi->c[i].it->status(mi->c[i].it);
        if (st != KV_OK) return st;
    }
    return KV_OK;
}

static void mg_destroy(iter *it) {
    merge_iter *mi = (merge_iter *)it;
    for (size_t i = 0; i < mi->n; i++) mi->c[i].it->destroy(mi->c[i].it);
    free(mi->c);
    free(mi->heap);
    bytes_free(&mi->saved);
    free(mi);
}

iter *merge_iter_new(iter **children, size_t n) {
    /* A NULL child is one its creator failed to allocate: remember it as an out-of-memory error. */
    size_t live = 0;
    bool missing = false;
    for (size_t i = 0; i < n; i++) {
        if (children[i]) live++;
        else missing = true;
    }
    if (!missing && n == 1) return children[0]; /* nothing to merge */
    merge_iter *mi = calloc(1, sizeof *mi);
    child *c = calloc(live ? live : 1, sizeof *c);
    size_t *heap = calloc(live ? live : 1, sizeof *heap);
    if (!mi || !c || !heap) {
        free(mi);
        free(c);
        free(heap);
        for (size_t i = 0; i < n; i++)
            if (children[i]) children[i]->destroy(children[i]);
        kv_set_error(KV_ENOMEM, "merge iterator: out of memory");
        return iter_empty(KV_ENOMEM);
    }
    for (size_t i = 0, j = 0; i < n; i++)
        if (children[i]) c[j++].it = children[i];
    mi->base = (iter){mg_valid, mg_seek_first, mg_seek_last, mg_seek, mg_next, mg_prev, mg_key, mg_value,
                      mg_status, mg_destroy};
    mi->c = c;
    mi->n = live;
    mi->heap = heap;
    mi->dir = FORWARD;
    if (missing) mi->err = kv_set_error(KV_ENOMEM, "merge iterator: a child iterator is missing (out of memory)");
    return &mi->base;
}

/* ---- level_iter -------------------------------------------------------------------------------------------------- */

typedef struct level_iter {
    iter base;
    file_meta **files;
    size_t nfiles;
    level_open_fn open;
    void *ctx;
    iter *cur;  /* the open file's iterator, or NULL */
    size_t idx; /* which file cur belongs to */
    int err;    /* sticky first error */
} level_iter;

static void close_cur(level_iter *li) {
    if (li->cur) li->cur->destroy(li->cur);
    li->cur = NULL;
}

/* Make files[i] the open file (reusing it if it already is). Returns false on error. */
static bool open_file(level_iter *li, size_t i) {
    if (li->cur && li->idx == i) return true;
    close_cur(li);
    iter *it = li->open(li->ctx, li->files[i]);
    if (!it) {
        li->err = kv_set_error(KV_ENOMEM, "level iterator: cannot open table %06llu",
                               (unsigned long long)li->files[i]->file_no);
        return false;
    }
    li->cur = it;
    li->idx = i;
    return true;
}

/* cur became invalid: was it an error? Records it and closes the file if so. */
static bool cur_failed(level_iter *li) {
    int st = li->cur->status(li->cur);
    if (st == KV_OK) return false;
    li->err = st;
    close_cur(li);
    return true;
}

/* While cur is exhausted, move on to the start of the next file. */
static void skip_forward(level_iter *li) {
    while (li->cur && !li->cur->valid(li->cur)) {
        if (cur_failed(li)) return;
        if (li->idx + 1 >= li->nfiles) {
            close_cur(li);
            return;
        }
        if (!open_file(li, li->idx + 1)) return;
        li->cur->seek_first(li->cur);
    }
}

/* While cur is exhausted, move back to the end of the previous file. */
static void skip_backward(level_iter *li) {
    while (li->cur && !li->cur->valid(li->cur)) {
        if (cur_failed(li)) return;
        if (li->idx == 0) {
            close_cur(li);
            return;
        }
        if (!open_file(li, li->idx - 1)) return;
        li->cur->seek_last(li->cur);
    }
}

static bool lv_valid(iter *it) {
    level_iter *li = (level_iter *)it;
    return li->err == KV_OK && li->cur && li->cur->valid(li->cur);
}

static void lv_seek_first(iter *it) {
    level_iter *li = (level_iter *)it;
    if (li->err) return;
    if (li->nfiles == 0 || !open_file(li, 0)) return;
    li->cur->seek_first(li->cur);
    skip_forward(li);
}

static void lv_seek_last(iter *it) {
    level_iter *li = (level_iter *)it;
    if (li->err) return;
    if (li->nfiles == 0 || !open_file(li, li->nfiles - 1)) return;
    li->cur->seek_last(li->cur);
    skip_backward(li);
}

static void lv_seek(iter *it, const uint8_t *ikey, size_t len) {
    level_iter *li = (level_iter *)it;
    if (li->err) return;
    if (len < IKEY_TRAILER) { /* not an internal key; compare as ukey with the highest trailer */
        uint8_t buf[IKEY_TRAILER * 2];
        ikey_build(buf, ikey, len, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
        lv_seek(it, buf, len + IKEY_TRAILER);
        return;
    }
    /* The first file whose largest key is >= the target: every earlier file lies wholly before it. */
    size_t lo = 0, hi = li->nfiles;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const kv_bytes *lg = &li->files[mid]->largest;
        if (ikey_cmp(lg->data, lg->len, ikey, len) < 0) lo = mid + 1;
        else hi = mid;
    }
    if (lo == li->nfiles) {
        close_cur(li);
        return;
    }
    if (!open_file(li, lo)) return;
    li->cur->seek(li->cur, ikey, len);
    skip_forward(li);
}

/* Moves and reads assert only that a file is open: its iterator asserts that it is valid (lv_valid's answer),
 * which saves a call through every layer per entry. */
static void lv_next(iter *it) {
    level_iter *li = (level_iter *)it;
    assert(li->cur && !li->err);
    li->cur->next(li->cur);
    skip_forward(li);
}

static void lv_prev(iter *it) {
    level_iter *li = (level_iter *)it;
    assert(li->cur && !li->err);
    li->cur->prev(li->cur);
    skip_backward(li);
}

static const uint8_t *lv_key(iter *it, size_t *len) {
    level_iter *li = (level_iter *)it;
    assert(li->cur && !li->err);
    return li->cur->key(li->cur, len);
}

static const uint8_t *lv_value(iter *it, size_t *len) {
    level_iter *li = (level_iter *)it;
    assert(li->cur && !li->err);
    return li->cur->value(li->cur, len);
}

static int lv_status(iter *it) {
    level_iter *li = (level_iter *)it;
    if (li->err) return li->err;
    return li->cur ? li->cur->status(li->cur) : KV_OK;
}

static void lv_destroy(iter *it) {
    level_iter *li = (level_iter *)it;
    close_cur(li);
    free(li->files);
    free(li);
}

iter *level_iter_new(file_meta *const *files, size_t nfiles, level_open_fn open, void *ctx) {
    /* Keys from the manifest are validated there, but never read past a too-short one here. */
    for (size_t i = 0; i < nfiles; i++) {
        if (files[i]->smallest.len < IKEY_TRAILER || files[i]->largest.len < IKEY_TRAILER) {
            kv_set_error(KV_ECORRUPT, "level iterator: table %06llu has a malformed key range",
                         (unsigned long long)files[i]->file_no);
            return iter_empty(KV_ECORRUPT);
        }
    }
    level_iter *li = calloc(1, sizeof *li);
    file_meta **copy = malloc((nfiles ? nfiles : 1) * sizeof *copy);
    if (!li || !copy) {
        free(li);
        free(copy);
        kv_set_error(KV_ENOMEM, "level iterator: out of memory");
        return iter_empty(KV_ENOMEM);
    }
    if (nfiles) memcpy(copy, files, nfiles * sizeof *copy);
    li->base = (iter){lv_valid, lv_seek_first, lv_seek_last, lv_seek, lv_next, lv_prev, lv_key, lv_value,
                      lv_status, lv_destroy};
    li->files = copy;
    li->nfiles = nfiles;
    li->open = open;
    li->ctx = ctx;
    return &li->base;
}
