/*
 * blob_pages.c — paged blob references (see blob_pages.h; byte layout in docs/format.md, "Paged reference").
 *
 * Invariants
 *  - A change touches a window of consecutive pages: the pages holding the first and the last byte it changes (for
 *    a write at or past the end, and for a truncation, the last page kept). The window's pages are loaded into one
 *    direct list, changed there with blob_ref_splice / blob_ref_truncate, cut again into pages of at most
 *    page_extents extents of about equal count, and written as new records; pages outside the window are kept as
 *    they are. So a change reads and writes O(page_extents) extents whatever the value's size or history.
 *  - A window that shrinks below page_extents / 4 extents takes in a neighbouring page, so pages do not dwindle into
 *    many tiny ones after fragmented regions are overwritten sequentially.
 *  - Nothing read from a page is used before the page decodes as a direct reference of exactly the page's len.
 */
#include "blob_pages.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kv.h"

#define MAX_OFFSET (1ull << 62) /* as blob.c: record offsets and lengths above it are rejected */

/* ---- the top level --------------------------------------------------------------------------------------------- */

/* An empty reference (a blob entry whose payload is empty, damage) may come as (NULL, 0): no arithmetic on p then. */
bool blob_ref_is_paged(const uint8_t *p, size_t len) {
    const uint8_t *lim = len ? p + len : p;
    uint64_t size = 0, n = 0;
    return (p = get_varint64(p, lim, &size)) != NULL && get_varint64(p, lim, &n) != NULL && size > 0 && n == 0;
}

int blob_ref_size(const uint8_t *p, size_t len, uint64_t *size) {
    if (!get_varint64(p, len ? p + len : p, size))
        return kv_set_error(KV_ECORRUPT, "blob reference: truncated header (%zu bytes)", len);
    return KV_OK;
}

static int pages_reserve(blob_pages *pp, size_t n) {
    if (n <= pp->cap) return KV_OK;
    size_t cap = pp->cap ? pp->cap : 8;
    while (cap < n) {
        if (cap > SIZE_MAX / 2 / sizeof(blob_page)) return kv_set_error(KV_ENOMEM, "blob reference: too many pages");
        cap *= 2;
    }
    blob_page *p = realloc(pp->pg, cap * sizeof *p);
    if (!p) return kv_set_error(KV_ENOMEM, "blob reference: out of memory for %zu pages", cap);
    pp->pg = p;
    pp->cap = cap;
    return KV_OK;
}

static int pages_push(blob_pages *pp, const blob_page *pg) {
    int rc = pages_reserve(pp, pp->n + 1);
    if (rc) return rc;
    pp->pg[pp->n++] = *pg;
    pp->size += pg->len;
    return KV_OK;
}

/* What is wrong with page pg, or NULL. */
static const char *page_problem(const blob_page *pg) {
    if (pg->file_no == 0) return "names no file";
    if (pg->rec_off < BLOB_HEADER || pg->rec_off > MAX_OFFSET) return "record offset out of range";
    if (pg->rec_len == 0 || pg->rec_len > BLOB_CHUNK) return "record length out of range";
    if (pg->len == 0) return "covers no bytes";
    return NULL;
}

int blob_pages_decode(const uint8_t *p, size_t len, blob_pages *out) {
    const uint8_t *lim = len ? p + len : p; /* (NULL, 0) is a truncated header */
    uint64_t size, zero, m, total = 0;
    out->n = 0;
    out->size = 0;
    int rc;
    if (!(p = get_varint64(p, lim, &size)) || !(p = get_varint64(p, lim, &zero)) || !(p = get_varint64(p, lim, &m))) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: truncated paged header (%zu bytes)", len);
        goto bad;
    }
    if (size == 0 || zero != 0) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: not a paged reference");
        goto bad;
    }
    /* each page takes at least 4 bytes: this bounds the allocation by the input's size */
    if (m == 0 || m > (uint64_t)(lim - p) / 4) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: %" PRIu64 " pages cannot fit in %zu bytes", m, len);
        goto bad;
    }
    if ((rc = pages_reserve(out, (size_t)m))) goto bad;
    for (uint64_t i = 0; i < m; i++) {
        blob_page pg;
        if (!(p = get_varint64(p, lim, &pg.file_no)) || !(p = get_varint64(p, lim, &pg.rec_off)) ||
            !(p = get_varint64(p, lim, &pg.rec_len)) || !(p = get_varint64(p, lim, &pg.len))) {
            rc = kv_set_error(KV_ECORRUPT, "blob reference: page %" PRIu64 " is truncated", i);
            goto bad;
        }
        const char *why = page_problem(&pg);
        if (why) {
            rc = kv_set_error(KV_ECORRUPT, "blob reference: page %" PRIu64 " %s", i, why);
            goto bad;
        }
        if (pg.len > UINT64_MAX - total) {
            rc = kv_set_error(KV_ECORRUPT, "blob reference: page lengths overflow");
            goto bad;
        }
        total += pg.len;
        out->pg[out->n++] = pg;
    }
    if (p != lim) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: %zu trailing bytes", (size_t)(lim - p));
        goto bad;
    }
    if (total != size) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: page lengths add up to %" PRIu64 ", size is %" PRIu64, total,
                          size);
        goto bad;
    }
    out->size = size;
    return KV_OK;
bad:
    blob_pages_free(out);
    return rc;
}

int blob_pages_encode(const blob_pages *pp, kv_bytes *out) {
    uint64_t total = 0;
    for (size_t i = 0; i < pp->n; i++) {
        const char *why = page_problem(&pp->pg[i]);
        if (why) return kv_set_error(KV_EINVAL, "blob reference: page %zu %s", i, why);
        if (pp->pg[i].len > UINT64_MAX - total) return kv_set_error(KV_EINVAL, "blob reference: page lengths overflow");
        total += pp->pg[i].len;
    }
    if (pp->n == 0 || total != pp->size)
        return kv_set_error(KV_EINVAL, "blob reference: %zu pages adding up to %" PRIu64 " for a size of %" PRIu64,
                            pp->n, total, pp->size);
    if (bytes_reserve(out, 30 + pp->n * 40)) return kv_set_error(KV_ENOMEM, "blob reference: out of memory");
    uint8_t *p = out->data + out->len;
    p = put_varint64(p, pp->size);
    p = put_varint64(p, 0);
    p = put_varint64(p, pp->n);
    for (size_t i = 0; i < pp->n; i++) {
        p = put_varint64(p, pp->pg[i].file_no);
        p = put_varint64(p, pp->pg[i].rec_off);
        p = put_varint64(p, pp->pg[i].rec_len);
        p = put_varint64(p, pp->pg[i].len);
    }
    out->len = (size_t)(p - out->data);
    return KV_OK;
}

void blob_pages_free(blob_pages *pp) {
    free(pp->pg);
    *pp = (blob_pages){0};
}

blob_extent blob_page_extent(const blob_page *pg) {
    return (blob_extent){pg->file_no, pg->rec_off, pg->rec_len, 0, pg->rec_len};
}

int blob_page_load(blob_store *s, const blob_page *pg, blob_ref *out) {
    blob_extent e = blob_page_extent(pg);
    blob_ref one = {.size = e.len, .n = 1, .cap = 1, .ext = &e};
    uint8_t *buf = malloc((size_t)e.len);
    if (!buf) return kv_set_error(KV_ENOMEM, "blob page: out of memory");
    size_t got = 0;
    int rc = blob_read(s, &one, 0, buf, (size_t)e.len, &got);
    if (!rc && got != e.len) rc = kv_set_error(KV_ECORRUPT, "blob page: short read");
    if (!rc) {
        /* the chunks were sound (blob_read said so, naming file and offset otherwise): is their content a page? */
        rc = blob_ref_decode(buf, got, out);
        char msg[400];
        if (rc == KV_ECORRUPT) snprintf(msg, sizeof msg, "%s", kv_errmsg());
        else if (!rc && out->size != pg->len) {
            snprintf(msg, sizeof msg, "it holds %" PRIu64 " bytes, the reference says %" PRIu64, out->size, pg->len);
            rc = KV_ECORRUPT;
        }
        if (rc == KV_ECORRUPT)
            kv_set_error(KV_ECORRUPT, "%06" PRIu64 ".blob: bad blob page at offset %" PRIu64 ": %s", pg->file_no,
                         pg->rec_off, msg);
        if (rc) blob_ref_free(out);
    }
    free(buf);
    return rc;
}

/* ---- reading and visiting ------------------------------------------------------------------------------------ */

int blob_value_read(blob_store *s, const uint8_t *ref, size_t rlen, uint64_t off, void *buf, size_t len,
                    size_t *nread) {
    *nread = 0;
    int rc;
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc) rc = blob_read(s, &r, off, buf, len, nread);
        blob_ref_free(&r);
        return rc;
    }
    blob_pages pp = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    if (off >= pp.size || len == 0) {
        blob_pages_free(&pp);
        return KV_OK;
    }
    uint64_t want = pp.size - off < len ? pp.size - off : len, end = off + want;
    size_t i = 0;
    uint64_t pos = 0;
    while (pos + pp.pg[i].len <= off) pos += pp.pg[i++].len; /* the lens add up to size > off */
    blob_ref page = {0};
    for (uint64_t at = off; at < end && !rc; pos += pp.pg[i++].len) {
        uint64_t piece_end = pos + pp.pg[i].len < end ? pos + pp.pg[i].len : end;
        size_t got = 0;
        rc = blob_page_load(s, &pp.pg[i], &page);
        if (!rc) rc = blob_read(s, &page, at - pos, (uint8_t *)buf + (at - off), (size_t)(piece_end - at), &got);
        if (!rc && got != piece_end - at) rc = kv_set_error(KV_ECORRUPT, "blob page: short read");
        at = piece_end;
    }
    blob_ref_free(&page);
    blob_pages_free(&pp);
    if (!rc) *nread = (size_t)want;
    return rc;
}

/* blob_value_seek within one direct piece that starts at value offset base: true when found (*at set). */
static bool seek_in_piece(const blob_ref *r, uint64_t base, uint64_t off, bool data, uint64_t *at) {
    uint64_t pos = base;
    for (size_t i = 0; i < r->n; pos += r->ext[i++].len) {
        if (pos + r->ext[i].len <= off || (r->ext[i].file_no != 0) != data) continue;
        *at = pos > off ? pos : off;
        return true;
    }
    return false;
}

int blob_value_seek(blob_store *s, const uint8_t *ref, size_t rlen, uint64_t off, bool data, uint64_t *at) {
    int rc;
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc && !seek_in_piece(&r, 0, off, data, at)) *at = r.size;
        blob_ref_free(&r);
        return rc;
    }
    blob_pages pp = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    *at = pp.size;
    size_t i = 0;
    uint64_t pos = 0;
    while (i < pp.n && pos + pp.pg[i].len <= off) pos += pp.pg[i++].len;
    blob_ref page = {0};
    for (; i < pp.n && !rc; pos += pp.pg[i++].len) {
        rc = blob_page_load(s, &pp.pg[i], &page);
        if (!rc && seek_in_piece(&page, pos, off, data, at)) break;
    }
    blob_ref_free(&page);
    blob_pages_free(&pp);
    return rc;
}

/* blob_value_slice's part [lo, hi) (value offsets) of the direct piece r that starts at value offset base. */
static int slice_piece(const blob_ref *r, uint64_t base, uint64_t lo, uint64_t hi, blob_ref *out) {
    uint64_t pos = base;
    int rc = KV_OK;
    for (size_t i = 0; i < r->n && pos < hi && !rc; pos += r->ext[i++].len) {
        uint64_t s = pos > lo ? pos : lo, e = pos + r->ext[i].len < hi ? pos + r->ext[i].len : hi;
        if (s >= e) continue;
        blob_extent x = r->ext[i];
        if (x.file_no) x.skip += s - pos;
        x.len = e - s;
        rc = blob_ref_append(out, &x);
    }
    return rc;
}

int blob_value_slice(blob_store *s, const uint8_t *ref, size_t rlen, uint64_t off, uint64_t len, blob_ref *out) {
    int rc;
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc && off < r.size) rc = slice_piece(&r, 0, off, len < r.size - off ? off + len : r.size, out);
        blob_ref_free(&r);
        return rc;
    }
    blob_pages pp = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    uint64_t hi = off < pp.size ? (len < pp.size - off ? off + len : pp.size) : off, pos = 0;
    blob_ref page = {0};
    for (size_t i = 0; i < pp.n && pos < hi && !rc; pos += pp.pg[i++].len) {
        if (pos + pp.pg[i].len <= off) continue;
        rc = blob_page_load(s, &pp.pg[i], &page);
        if (!rc) rc = slice_piece(&page, pos, off, hi, out);
    }
    blob_ref_free(&page);
    blob_pages_free(&pp);
    return rc;
}

static int visit_extents(const blob_ref *r, blob_visit_fn fn, void *ctx) {
    for (size_t i = 0; i < r->n; i++) {
        if (r->ext[i].file_no == 0) continue;
        int v = fn(ctx, &r->ext[i], false);
        if (v && v != BLOB_VISIT_SKIP) return v;
    }
    return KV_OK;
}

int blob_value_visit(blob_store *s, const uint8_t *ref, size_t rlen, blob_visit_fn fn, void *ctx) {
    int rc;
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc) rc = visit_extents(&r, fn, ctx);
        blob_ref_free(&r);
        return rc;
    }
    blob_pages pp = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    blob_ref page = {0};
    int damaged = KV_OK;
    for (size_t i = 0; i < pp.n && !rc; i++) {
        blob_extent e = blob_page_extent(&pp.pg[i]);
        int v = fn(ctx, &e, true);
        if (v == BLOB_VISIT_SKIP) continue;
        if (v) rc = v;
        if (!rc) rc = blob_page_load(s, &pp.pg[i], &page);
        if (rc == KV_ECORRUPT) { /* go on with the other pages; the damage is reported at the end */
            damaged = rc;
            rc = KV_OK;
            continue;
        }
        if (!rc) rc = visit_extents(&page, fn, ctx);
    }
    blob_ref_free(&page);
    blob_pages_free(&pp);
    return rc ? rc : damaged;
}

int blob_value_pieces(blob_store *s, const uint8_t *ref, size_t rlen, int (*fn)(void *ctx, const blob_ref *piece),
                      void *ctx) {
    int rc;
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc) rc = fn(ctx, &r);
        blob_ref_free(&r);
        return rc;
    }
    blob_pages pp = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    blob_ref page = {0};
    for (size_t i = 0; i < pp.n && !rc; i++) {
        rc = blob_page_load(s, &pp.pg[i], &page);
        if (!rc) rc = fn(ctx, &page);
    }
    blob_ref_free(&page);
    blob_pages_free(&pp);
    return rc;
}

int blob_ref_validate(const uint8_t *ref, size_t rlen) {
    int rc;
    if (blob_ref_is_paged(ref, rlen)) {
        blob_pages pp = {0};
        rc = blob_pages_decode(ref, rlen, &pp);
        blob_pages_free(&pp);
    } else {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        blob_ref_free(&r);
    }
    return rc;
}

/* ---- sets of pages ---------------------------------------------------------------------------------------------- */

static size_t page_hash(uint64_t no, uint64_t off, size_t cap) {
    return (size_t)((no * 0x9e3779b97f4a7c15ull) ^ (off * 0xc2b2ae3d27d4eb4full)) % cap;
}

int blob_page_set_add(blob_page_set *set, const blob_extent *e) {
    if (2 * (set->n + 1) > set->cap) {
        size_t cap = set->cap ? 2 * set->cap : 256;
        uint64_t *t = calloc(cap, 2 * sizeof *t);
        if (!t) return kv_set_error(KV_ENOMEM, "blob pages: out of memory for a set of %zu pages", cap);
        for (size_t i = 0; i < set->cap; i++) {
            if (!set->k[2 * i]) continue;
            size_t h = page_hash(set->k[2 * i], set->k[2 * i + 1], cap);
            while (t[2 * h]) h = (h + 1) % cap;
            t[2 * h] = set->k[2 * i];
            t[2 * h + 1] = set->k[2 * i + 1];
        }
        free(set->k);
        set->k = t;
        set->cap = cap;
    }
    size_t h = page_hash(e->file_no, e->rec_off, set->cap);
    for (; set->k[2 * h]; h = (h + 1) % set->cap)
        if (set->k[2 * h] == e->file_no && set->k[2 * h + 1] == e->rec_off) return 0;
    set->k[2 * h] = e->file_no;
    set->k[2 * h + 1] = e->rec_off;
    set->n++;
    return 1;
}

bool blob_page_set_has(const blob_page_set *set, const blob_extent *e) {
    if (!set->cap) return false;
    for (size_t h = page_hash(e->file_no, e->rec_off, set->cap); set->k[2 * h]; h = (h + 1) % set->cap)
        if (set->k[2 * h] == e->file_no && set->k[2 * h + 1] == e->rec_off) return true;
    return false;
}

void blob_page_set_free(blob_page_set *set) {
    free(set->k);
    *set = (blob_page_set){0};
}

/* ---- changes ----------------------------------------------------------------------------------------------------- */

static int append_all(blob_ref *dst, const blob_ref *src) {
    for (size_t i = 0; i < src->n; i++) {
        int rc = blob_ref_append(dst, &src->ext[i]);
        if (rc) return rc;
    }
    return KV_OK;
}

/* Cut r (at least one extent) into pages of at most page_extents extents, of about equal count; write each as a
 * record and add it to out. */
static int write_pages(const blob_pager *pg, const blob_ref *r, blob_pages *out) {
    size_t per = pg->page_extents, k = (r->n + per - 1) / per;
    kv_bytes enc = {0};
    int rc = KV_OK;
    for (size_t q = 0, start = 0; q < k && !rc; q++) {
        size_t cnt = (r->n - start + (k - q) - 1) / (k - q);
        blob_ref piece = {.n = cnt, .cap = cnt, .ext = r->ext + start};
        for (size_t i = 0; i < cnt; i++) piece.size += piece.ext[i].len;
        bytes_clear(&enc);
        rc = blob_ref_encode(&piece, &enc);
        blob_extent e;
        if (!rc) rc = pg->append(pg->ctx, enc.data, enc.len, &e);
        if (!rc) rc = pages_push(out, &(blob_page){e.file_no, e.rec_off, e.rec_len, piece.size});
        start += cnt;
    }
    bytes_free(&enc);
    return rc;
}

int blob_ref_finish(const blob_pager *pg, const blob_ref *r, kv_bytes *out) {
    if (r->n <= pg->page_extents) return blob_ref_encode(r, out);
    blob_pages pp = {0};
    int rc = write_pages(pg, r, &pp);
    if (!rc) rc = blob_pages_encode(&pp, out);
    blob_pages_free(&pp);
    return rc;
}

typedef struct change {
    bool truncate;
    uint64_t off;         /* splice: where e goes */
    blob_extent e;
    const blob_ref *list; /* or, when set, the extents that go there, in order */
    uint64_t size;        /* truncate: the new size */
} change;

/* Splice the extents of list into r at off, as one blob_ref_splice per extent would (a gap past r's end becomes a
 * hole), in one pass: r's part before off, the list, r's part after the list's end. */
static int ref_splice_list(blob_ref *r, uint64_t off, const blob_ref *list) {
    blob_ref out = {0};
    int rc = slice_piece(r, 0, 0, off < r->size ? off : r->size, &out);
    if (!rc && off > r->size) rc = blob_ref_append(&out, &(blob_extent){.len = off - r->size});
    for (size_t i = 0; i < list->n && !rc; i++) rc = blob_ref_append(&out, &list->ext[i]);
    if (!rc && off + list->size < r->size) rc = slice_piece(r, 0, off + list->size, r->size, &out);
    if (rc) {
        blob_ref_free(&out);
        return rc;
    }
    blob_ref_free(r);
    *r = out;
    return KV_OK;
}

static int change_splice(blob_ref *r, uint64_t off, const change *c) {
    return c->list ? ref_splice_list(r, off, c->list) : blob_ref_splice(r, off, &c->e);
}

/* Apply c to the paged value pp through the window of pages [i, j]. */
static int change_paged(const blob_pager *pg, const blob_pages *pp, size_t i, size_t j, const change *c,
                        kv_bytes *out) {
    uint64_t base = 0;
    for (size_t k = 0; k < i; k++) base += pp->pg[k].len;
    blob_ref win = {0}, page = {0};
    blob_pages np = {0};
    int rc = KV_OK;
    for (size_t k = i; k <= j && !rc; k++) {
        rc = blob_page_load(pg->store, &pp->pg[k], &page);
        if (!rc) rc = append_all(&win, &page);
    }
    if (!rc) rc = c->truncate ? blob_ref_truncate(&win, c->size - base) : change_splice(&win, c->off - base, c);
    size_t after = c->truncate ? pp->n : j + 1; /* the first page kept after the window */
    if (!rc && win.n < pg->page_extents / 4) {
        if (after < pp->n) {
            rc = blob_page_load(pg->store, &pp->pg[after], &page);
            if (!rc) rc = append_all(&win, &page);
            after++;
        } else if (i > 0) {
            rc = blob_page_load(pg->store, &pp->pg[i - 1], &page);
            if (!rc) rc = append_all(&page, &win);
            if (!rc) {
                blob_ref t = win;
                win = page;
                page = t;
                i--;
            }
        }
    }
    if (!rc && i == 0 && after == pp->n && win.n <= pg->page_extents / 2) {
        rc = blob_ref_encode(&win, out); /* the whole value fits a short direct list again */
        goto done;
    }
    for (size_t k = 0; k < i && !rc; k++) rc = pages_push(&np, &pp->pg[k]);
    if (!rc) rc = write_pages(pg, &win, &np);
    for (size_t k = after; k < pp->n && !rc; k++) rc = pages_push(&np, &pp->pg[k]);
    if (!rc) rc = blob_pages_encode(&np, out);
done:
    blob_ref_free(&win);
    blob_ref_free(&page);
    blob_pages_free(&np);
    return rc;
}

/* The page holding byte off (< pp->size). */
static size_t page_at(const blob_pages *pp, uint64_t off) {
    size_t i = 0;
    for (uint64_t pos = 0; pos + pp->pg[i].len <= off; i++) pos += pp->pg[i].len;
    return i;
}

static int check_pager(const blob_pager *pg) {
    if (pg->page_extents < BLOB_PAGE_EXTENTS_MIN || pg->page_extents > BLOB_PAGE_EXTENTS_MAX)
        return kv_set_error(KV_EINVAL, "blob pages: %zu extents per page is out of range", pg->page_extents);
    return KV_OK;
}

/* blob_value_splice and blob_value_splice_list: c (a splice of len bytes at c->off) on a value of either form. */
static int value_splice(const blob_pager *pg, const uint8_t *ref, size_t rlen, uint64_t len, const change *c,
                        kv_bytes *out) {
    bytes_clear(out);
    int rc = check_pager(pg);
    if (rc) return rc;
    uint64_t off = c->off;
    if (off > UINT64_MAX - len)
        return kv_set_error(KV_EINVAL, "blob splice: offset %" PRIu64 " + length %" PRIu64 " overflows", off, len);
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc && len) rc = change_splice(&r, off, c);
        if (!rc) rc = blob_ref_finish(pg, &r, out);
        blob_ref_free(&r);
        return rc;
    }
    blob_pages pp = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    if (len == 0) { /* like a zero-byte pwrite: nothing changes, even past the end */
        rc = bytes_append(out, ref, rlen);
    } else {
        size_t i = off >= pp.size ? pp.n - 1 : page_at(&pp, off);
        uint64_t last = off + len - 1;
        size_t j = last >= pp.size ? pp.n - 1 : page_at(&pp, last);
        rc = change_paged(pg, &pp, i, j, c, out);
    }
    blob_pages_free(&pp);
    return rc;
}

int blob_value_splice(const blob_pager *pg, const uint8_t *ref, size_t rlen, uint64_t off, const blob_extent *e,
                      kv_bytes *out) {
    return value_splice(pg, ref, rlen, e->len, &(change){.off = off, .e = *e}, out);
}

int blob_value_splice_list(const blob_pager *pg, const uint8_t *ref, size_t rlen, uint64_t off, const blob_ref *list,
                           kv_bytes *out) {
    return value_splice(pg, ref, rlen, list->size, &(change){.off = off, .list = list}, out);
}

int blob_value_truncate(const blob_pager *pg, const uint8_t *ref, size_t rlen, uint64_t size, kv_bytes *out) {
    bytes_clear(out);
    int rc = check_pager(pg);
    if (rc) return rc;
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc) rc = blob_ref_truncate(&r, size);
        if (!rc) rc = blob_ref_finish(pg, &r, out);
        blob_ref_free(&r);
        return rc;
    }
    blob_pages pp = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    if (size == pp.size) {
        rc = bytes_append(out, ref, rlen);
    } else if (size == 0) {
        rc = blob_ref_encode(&(blob_ref){0}, out);
    } else {
        size_t i = size > pp.size ? pp.n - 1 : page_at(&pp, size - 1);
        rc = change_paged(pg, &pp, i, i, &(change){.truncate = true, .size = size}, out);
    }
    blob_pages_free(&pp);
    return rc;
}

/* ---- remapping moved bytes --------------------------------------------------------------------------------------- */

int blob_remap_add(blob_remap *m, const blob_extent *from, const blob_extent *to) {
    if (from->file_no == 0 || from->len == 0) return KV_OK;
    if (to->len != from->len) return kv_set_error(KV_EINVAL, "blob remap: an extent and its copy differ in length");
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof *m->e) return kv_set_error(KV_ENOMEM, "blob remap: too many extents");
        blob_remap_ent *p = realloc(m->e, cap * sizeof *p);
        if (!p) return kv_set_error(KV_ENOMEM, "blob remap: out of memory for %zu extents", cap);
        m->e = p;
        m->cap = cap;
    }
    m->e[m->n++] = (blob_remap_ent){from->file_no, from->rec_off, from->skip, from->len, *to};
    return KV_OK;
}

/* Order of (file_no, rec_off, skip) against an entry. */
static int remap_cmp_key(uint64_t no, uint64_t off, uint64_t skip, const blob_remap_ent *e) {
    if (no != e->file_no) return no < e->file_no ? -1 : 1;
    if (off != e->rec_off) return off < e->rec_off ? -1 : 1;
    return skip < e->skip ? -1 : skip > e->skip;
}

static int remap_cmp(const void *a, const void *b) {
    const blob_remap_ent *x = a;
    return remap_cmp_key(x->file_no, x->rec_off, x->skip, b);
}

/* Cut what overlaps an earlier entry off each entry of m, which must be sorted. */
static void remap_cut_overlaps(blob_remap *m) {
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++) {
        blob_remap_ent e = m->e[i];
        if (k > 0) {
            const blob_remap_ent *p = &m->e[k - 1];
            if (p->file_no == e.file_no && p->rec_off == e.rec_off && e.skip < p->skip + p->len) {
                uint64_t cut = p->skip + p->len - e.skip;
                if (cut >= e.len) continue; /* inside the previous one */
                e.skip += cut;
                e.len -= cut;
                e.to.skip += cut;
                e.to.len -= cut;
            }
        }
        m->e[k++] = e;
    }
    m->n = k;
}

void blob_remap_seal(blob_remap *m) {
    if (m->n) qsort(m->e, m->n, sizeof *m->e, remap_cmp);
    remap_cut_overlaps(m);
}

int blob_remap_merge(blob_remap *m, const blob_remap *add) {
    if (add->n == 0) return KV_OK;
    if (add->n > SIZE_MAX / sizeof *m->e - m->n) return kv_set_error(KV_ENOMEM, "blob remap: too many extents");
    if (m->n + add->n > m->cap) {
        blob_remap_ent *p = realloc(m->e, (m->n + add->n) * sizeof *p);
        if (!p) return kv_set_error(KV_ENOMEM, "blob remap: out of memory for %zu extents", m->n + add->n);
        m->e = p;
        m->cap = m->n + add->n;
    }
    /* from the back: each step takes the larger of the two last entries left */
    size_t i = m->n, j = add->n, k = m->n + add->n;
    while (j > 0) {
        const blob_remap_ent *a = &add->e[j - 1];
        if (i > 0 && remap_cmp(&m->e[i - 1], a) > 0) m->e[--k] = m->e[--i];
        else m->e[--k] = add->e[--j];
    }
    m->n += add->n;
    remap_cut_overlaps(m);
    return KV_OK;
}

void blob_remap_free(blob_remap *m) {
    free(m->e);
    blob_page_set_free(&m->pages);
    *m = (blob_remap){0};
}

/* The first entry after (no, off, skip), in m's order. */
static size_t remap_upper(const blob_remap *m, uint64_t no, uint64_t off, uint64_t skip) {
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (remap_cmp_key(no, off, skip, &m->e[mid]) < 0) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

bool blob_remap_piece(const blob_remap *m, const blob_extent *y, uint64_t pos, blob_extent *piece) {
    uint64_t end = y->skip + y->len;
    size_t u = remap_upper(m, y->file_no, y->rec_off, pos);
    const blob_remap_ent *e = u > 0 ? &m->e[u - 1] : NULL;
    if (e && e->file_no == y->file_no && e->rec_off == y->rec_off && pos < e->skip + e->len) {
        uint64_t stop = end < e->skip + e->len ? end : e->skip + e->len;
        *piece = e->to;
        piece->skip += pos - e->skip;
        piece->len = stop - pos;
        return true;
    }
    const blob_remap_ent *next = u < m->n ? &m->e[u] : NULL;
    uint64_t stop = end;
    if (next && next->file_no == y->file_no && next->rec_off == y->rec_off && next->skip < end) stop = next->skip;
    *piece = *y;
    piece->skip = pos;
    piece->len = stop - pos;
    return false;
}

/* Append extent y to out, its bytes that m holds taken from the copy; *moved counts the pieces taken. */
static int remap_extent(const blob_remap *m, const blob_extent *y, blob_ref *out, size_t *moved) {
    if (y->file_no == 0) return blob_ref_append(out, y);
    int rc = KV_OK;
    for (uint64_t pos = y->skip, end = y->skip + y->len; pos < end && !rc;) {
        blob_extent piece;
        if (blob_remap_piece(m, y, pos, &piece)) ++*moved;
        rc = blob_ref_append(out, &piece);
        pos += piece.len;
    }
    return rc;
}

static int remap_list(const blob_remap *m, const blob_ref *r, blob_ref *out, size_t *moved) {
    int rc = KV_OK;
    for (size_t i = 0; i < r->n && !rc; i++) rc = remap_extent(m, &r->ext[i], out, moved);
    return rc;
}

int blob_value_remap(const blob_pager *pg, const uint8_t *ref, size_t rlen, const blob_remap *m, kv_bytes *out,
                     bool *changed) {
    bytes_clear(out);
    *changed = false;
    int rc = check_pager(pg);
    if (rc) return rc;
    size_t moved = 0;
    if (!blob_ref_is_paged(ref, rlen)) {
        blob_ref r = {0}, nr = {0};
        rc = blob_ref_decode(ref, rlen, &r);
        if (!rc) rc = remap_list(m, &r, &nr, &moved);
        if (!rc && moved) rc = blob_ref_finish(pg, &nr, out);
        else if (!rc) rc = bytes_append(out, ref, rlen);
        blob_ref_free(&r);
        blob_ref_free(&nr);
        *changed = !rc && moved;
        return rc;
    }
    /* Page by page: a run of changed pages is gathered in win (their remapped extents, merged where the copy made
     * them continue each other) and written as pages of at most page_extents extents; unchanged pages are kept. */
    blob_pages pp = {0}, np = {0};
    blob_ref page = {0}, win = {0};
    if ((rc = blob_pages_decode(ref, rlen, &pp))) return rc;
    bool rewrote = false;
    for (size_t i = 0; i < pp.n && !rc; i++) {
        rc = blob_page_load(pg->store, &pp.pg[i], &page);
        size_t before = moved;
        blob_ref nr = {0};
        if (!rc) rc = remap_list(m, &page, &nr, &moved);
        blob_extent pe = blob_page_extent(&pp.pg[i]);
        bool redo = moved > before || blob_page_set_has(&m->pages, &pe);
        if (!rc && redo) {
            rewrote = true;
            rc = append_all(&win, &nr);
            if (!rc && win.n >= pg->page_extents) {
                rc = write_pages(pg, &win, &np);
                blob_ref_free(&win);
            }
        } else if (!rc) {
            if (win.n) rc = write_pages(pg, &win, &np);
            blob_ref_free(&win);
            if (!rc) rc = pages_push(&np, &pp.pg[i]);
        }
        blob_ref_free(&nr);
    }
    if (!rc && !rewrote) {
        rc = bytes_append(out, ref, rlen);
    } else if (!rc && np.n == 0 && win.n <= pg->page_extents / 2) {
        rc = blob_ref_encode(&win, out); /* the whole value fits a short direct list again */
    } else if (!rc) {
        if (win.n) rc = write_pages(pg, &win, &np);
        if (!rc) rc = blob_pages_encode(&np, out);
    }
    *changed = !rc && rewrote;
    blob_ref_free(&page);
    blob_ref_free(&win);
    blob_pages_free(&pp);
    blob_pages_free(&np);
    return rc;
}
