/*
 * blob_pages.h — the two-level extent map of a large value: paged blob references.
 *
 * A direct reference (blob.h) lists every extent of its value, so once small writes have fragmented a value each
 * further write stores the whole list again: n random writes would cost O(n^2). When a direct list would pass
 * `page_extents` extents, the value's reference becomes *paged* (docs/format.md, "Paged reference"):
 *     varint size | varint 0 | varint m | m x page,     page = varint file_no | varint rec_off | varint rec_len | varint len
 * A page is one record of a blob file whose bytes are a direct reference of exactly `len` bytes; the pages, in order,
 * make up the value. A change reads and rewrites only the pages it touches, so its cost depends on page_extents,
 * not on how fragmented the value has become. (A direct reference of size > 0 always has n > 0: "size > 0 and
 * n = 0" marks the paged form, and a page's contents can never themselves be paged.)
 *
 * Every function here accepts either form of reference; the changes return whichever form fits.
 *
 * Invariants
 *  - Pages are blob records like any other: immutable, checksummed chunk by chunk, shared freely between versions
 *    (a rename moves the top-level reference and shares every page).
 *  - A page built here holds 1 .. page_extents extents and its record fits in one chunk; a page read back must decode
 *    as a direct reference whose size is the page's len, or the read fails with KV_ECORRUPT naming the file and
 *    offset — a page is never trusted.
 *  - A changed direct reference stays direct up to page_extents extents; a paged one becomes direct again only when
 *    the whole value fits in page_extents / 2 extents, so a value does not flip form on every write.
 */
#ifndef KV_BLOB_PAGES_H
#define KV_BLOB_PAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob.h"
#include "coding.h"

#define BLOB_PAGE_EXTENTS_DEFAULT 128
#define BLOB_PAGE_EXTENTS_MIN 4
#define BLOB_PAGE_EXTENTS_MAX 1024 /* 1024 extents of at most 50 bytes fit one chunk */

typedef struct blob_page {
    uint64_t file_no, rec_off, rec_len; /* the page's record */
    uint64_t len;                       /* bytes of the value it covers */
} blob_page;

typedef struct blob_pages {
    uint64_t size;
    size_t n, cap;
    blob_page *pg;
} blob_pages;

/* Is this encoded reference paged (else it is direct, or malformed)? */
bool blob_ref_is_paged(const uint8_t *p, size_t len);
/* The value's size from either form (KV_ECORRUPT if even the header is malformed). */
int blob_ref_size(const uint8_t *p, size_t len, uint64_t *size);
/* Top level of a paged reference only (no I/O): KV_OK or KV_ECORRUPT. out must be zeroed or previously used. */
int blob_pages_decode(const uint8_t *p, size_t len, blob_pages *out);
int blob_pages_encode(const blob_pages *pp, kv_bytes *out);
void blob_pages_free(blob_pages *pp);
/* The page's record as an extent (for size checks and garbage accounting). */
blob_extent blob_page_extent(const blob_page *pg);
/* Read and verify one page: its direct reference in out. */
int blob_page_load(blob_store *s, const blob_page *pg, blob_ref *out);

/* Read len bytes from off of the value (either form); *nread short only past the value's end. */
int blob_value_read(blob_store *s, const uint8_t *ref, size_t rlen, uint64_t off, void *buf, size_t len,
                    size_t *nread);

/* lseek's SEEK_DATA (data) or SEEK_HOLE over a value (either form) of size > off: into *at the first offset >= off
 * inside a data extent, or inside a hole; the value's size when there is none after off (the end counts as a hole).
 * A paged reference loads its pages from the one holding off on, until it finds one. */
int blob_value_seek(blob_store *s, const uint8_t *ref, size_t rlen, uint64_t off, bool data, uint64_t *at);

/* The extents of bytes [off, off + len) of a value (either form), cut at its end, appended to *out (a direct
 * reference the caller zeroed): the records they name are shared, not copied. A paged reference loads only the pages
 * the range touches. */
int blob_value_slice(blob_store *s, const uint8_t *ref, size_t rlen, uint64_t off, uint64_t len, blob_ref *out);

/* Visit every record a value uses: for a paged reference each page's record (page = true) and then, unless the
 * callback answered BLOB_VISIT_SKIP for that page, the extents inside it; for a direct one its extents. Holes are not
 * visited. The callback returns 0 to go on, BLOB_VISIT_SKIP, or anything else to stop: that value is returned.
 * A page that cannot be read because it is damaged (KV_ECORRUPT) is passed over and the others visited; the call
 * then returns KV_ECORRUPT (with the page's message) if nothing else went wrong. Other errors stop the visit. */
#define BLOB_VISIT_SKIP 1
typedef int (*blob_visit_fn)(void *ctx, const blob_extent *e, bool page);
int blob_value_visit(blob_store *s, const uint8_t *ref, size_t rlen, blob_visit_fn fn, void *ctx);

/* Call fn with each direct piece of a value in order: the direct reference itself, or each page's (loaded and
 * verified). Holes are pieces' extents like any other. Stops at the first error, which it returns. */
int blob_value_pieces(blob_store *s, const uint8_t *ref, size_t rlen, int (*fn)(void *ctx, const blob_ref *piece),
                      void *ctx);
/* KV_OK if the reference's top level (either form) decodes, else KV_ECORRUPT; no I/O. */
int blob_ref_validate(const uint8_t *ref, size_t rlen);

/* A set of pages (by file and record offset), for passes that look into each shared page once. */
typedef struct blob_page_set {
    uint64_t *k; /* open addressing: (file_no, rec_off) pairs, file_no 0 = empty */
    size_t n, cap;
} blob_page_set;
/* Add the page whose record is e: 1 if it was new, 0 if already there, KV_ENOMEM. */
int blob_page_set_add(blob_page_set *set, const blob_extent *e);
bool blob_page_set_has(const blob_page_set *set, const blob_extent *e);
void blob_page_set_free(blob_page_set *set);

/* Changes write new pages through `append` (one whole record each) and put the new encoded reference in out
 * (cleared first). */
typedef int (*blob_append_fn)(void *ctx, const void *data, size_t len, blob_extent *e);
typedef struct blob_pager {
    blob_store *store;
    blob_append_fn append;
    void *ctx;
    size_t page_extents; /* BLOB_PAGE_EXTENTS_MIN .. BLOB_PAGE_EXTENTS_MAX */
} blob_pager;
/* Encode a direct list as a reference: direct while it has at most page_extents extents, else cut into pages. */
int blob_ref_finish(const blob_pager *pg, const blob_ref *r, kv_bytes *out);
/* Replace bytes [off, off + e->len) with extent e (blob_ref_splice on the whole value). */
int blob_value_splice(const blob_pager *pg, const uint8_t *ref, size_t rlen, uint64_t off, const blob_extent *e,
                      kv_bytes *out);
/* Set the value's size (cut, or extend with a hole). */
/* Replace bytes [off, off + list->size) with the extents of list, in order: one pass however many there are
 * (a copied range's extents, which keep naming the records they name). */
int blob_value_splice_list(const blob_pager *pg, const uint8_t *ref, size_t rlen, uint64_t off, const blob_ref *list,
                           kv_bytes *out);
int blob_value_truncate(const blob_pager *pg, const uint8_t *ref, size_t rlen, uint64_t size, kv_bytes *out);

/* Where blob GC copied a value's bytes: each data extent of the old reference (its bytes, by file, record offset
 * and skip) and the extent of the copy that holds the same bytes; and the old reference's page records. Entries are
 * kept sorted by (file_no, rec_off, skip) and made not to overlap (blob_remap_seal), so a lookup is a binary search:
 * memory and time grow with the value's extents, never with their product. */
typedef struct blob_remap_ent {
    uint64_t file_no, rec_off, skip, len; /* bytes [skip, skip + len) of the old record at file_no / rec_off */
    blob_extent to;                       /* the same bytes in the copy (to.len == len) */
} blob_remap_ent;
typedef struct blob_remap {
    blob_remap_ent *e;
    size_t n, cap;
    blob_page_set pages; /* the old reference's page records (a paged one) */
} blob_remap;
int blob_remap_add(blob_remap *m, const blob_extent *from, const blob_extent *to);
/* Sort the entries and cut overlaps (two old extents sharing bytes of one record: either copy holds them). */
void blob_remap_seal(blob_remap *m);
/* Add the entries of add to m, both sealed: the result is sealed (its array grows to exactly the entries held). */
int blob_remap_merge(blob_remap *m, const blob_remap *add);
/* The piece of data extent y from byte pos of its record on (y->skip <= pos < y->skip + y->len), in *piece: where m
 * holds a copy of byte pos, the copy of the bytes from pos that one entry holds (true); else y's own bytes from pos up
 * to the next byte m holds a copy of (false). m must be sealed. */
bool blob_remap_piece(const blob_remap *m, const blob_extent *y, uint64_t pos, blob_extent *piece);
void blob_remap_free(blob_remap *m);
/* Rewrite the value (either form) so that its bytes that lie in an old extent of m are read from the copy instead:
 * a data extent lying across the end of an old extent is split, the parts of it that no old extent holds (written
 * after the copy was taken) stay. Changed pages, and the old reference's own pages, are written as new pages through
 * pg; the others are kept. The size and the holes do not change. *changed is false (and out a copy of ref) when
 * no extent moved and no page of the old reference was found (a page of holes only is still rewritten: changed). */
int blob_value_remap(const blob_pager *pg, const uint8_t *ref, size_t rlen, const blob_remap *m, kv_bytes *out,
                     bool *changed);

#endif /* KV_BLOB_PAGES_H */
