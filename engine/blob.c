/*
 * blob.c — blob references, blob files, the blob store (see blob.h; byte layout in docs/format.md, "Blob file").
 *
 * Invariants
 *  - A reference built by splice and truncate has extent lens adding up to size, no zero-length extent, and no two
 *    neighbouring extents that could be merged into one. A reference from blob_ref_decode satisfies the first two.
 *  - Two data extents merge only when the second continues the first inside the same record, or when the first
 *    reaches the end of a record made of whole chunks and the second starts its file's next record: only then does
 *    the chunk arithmetic of blob.h (byte i at rec_off + (i / BLOB_CHUNK) * (BLOB_CHUNK + 8)) hold across both, so
 *    the pair reads as one record. Holes merge with holes.
 *  - A chunk's bytes are used only after its length field equals the length its record implies and its checksum
 *    matches. blob_read returns no bytes at all (*nread = 0) when any chunk fails.
 *  - blob_writer appends each chunk (header and data) with one append, buffers at most one partial chunk of a
 *    streamed record, and after a failed append refuses every further write: the file may now end in a torn chunk,
 *    and a record appended after it would be unreachable by blob_check_file's walk.
 *  - blob_store caches at most max_open readers. Readers are reference counted under the store's mutex; one that is
 *    evicted or forgotten while a blob_read still uses it is closed by its last user. No I/O happens under the mutex.
 */
#include "blob.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kv.h"

#define BLOB_VERSION 1u
#define CHUNK_HDR 8u
/* Larger record offsets and lengths are rejected, so rec_off + rec_span(rec_len) can never overflow. */
#define BLOB_MAX_OFFSET (1ull << 62)

/* Bytes a record of n data bytes occupies in its file: the data plus one header per chunk. */
static uint64_t rec_span(uint64_t n) { return n + CHUNK_HDR * ((n + BLOB_CHUNK - 1) / BLOB_CHUNK); }

/* ---- References --------------------------------------------------------------------------------------------- */

static bool ext_is_hole(const blob_extent *e) { return e->file_no == 0; }

/* Does a data extent lie inside its record, and its record after the file header? */
static bool ext_in_record(const blob_extent *e) {
    return e->rec_off >= BLOB_HEADER && e->rec_off <= BLOB_MAX_OFFSET && e->rec_len <= BLOB_MAX_OFFSET &&
           e->skip <= e->rec_len && e->len <= e->rec_len - e->skip;
}

/* If b continues a, store the one extent covering both in *out and return true. */
static bool ext_merge(const blob_extent *a, const blob_extent *b, blob_extent *out) {
    if (ext_is_hole(a) || ext_is_hole(b)) {
        if (!ext_is_hole(a) || !ext_is_hole(b)) return false;
        *out = (blob_extent){.len = a->len + b->len};
        return true;
    }
    if (a->file_no != b->file_no) return false;
    if (a->rec_off == b->rec_off && a->rec_len == b->rec_len && b->skip == a->skip + a->len) {
        *out = *a;
        out->len += b->len;
        return true;
    }
    /* Sequential appends: every chunk of a's record is full, so b's record, which follows it directly, continues
     * the same chunk grid and the two records read as one record of rec_len a + b. */
    if (a->rec_len % BLOB_CHUNK == 0 && a->skip + a->len == a->rec_len && b->skip == 0 &&
        b->rec_off == a->rec_off + rec_span(a->rec_len) && b->rec_len <= BLOB_MAX_OFFSET - a->rec_len) {
        *out = *a;
        out->rec_len += b->rec_len;
        out->len += b->len;
        return true;
    }
    return false;
}

static int ref_reserve(blob_ref *r, size_t n) {
    if (n <= r->cap) return KV_OK;
    size_t cap = r->cap ? r->cap : 4;
    while (cap < n) {
        if (cap > SIZE_MAX / 2 / sizeof(blob_extent)) return kv_set_error(KV_ENOMEM, "blob reference: too many extents");
        cap *= 2;
    }
    blob_extent *p = realloc(r->ext, cap * sizeof *p);
    if (!p) return kv_set_error(KV_ENOMEM, "blob reference: out of memory for %zu extents", cap);
    r->ext = p;
    r->cap = cap;
    return KV_OK;
}

/* Append a hole of len > 0 bytes, merging it into a final hole. Room for one more extent must be reserved. */
static void ref_append_hole(blob_ref *r, uint64_t len) {
    assert(len > 0 && r->n < r->cap);
    if (r->n > 0 && ext_is_hole(&r->ext[r->n - 1])) r->ext[r->n - 1].len += len;
    else r->ext[r->n++] = (blob_extent){.len = len};
    r->size += len;
}

/* Merge extents k and k + 1 if the second continues the first. */
static void ref_try_merge(blob_ref *r, size_t k) {
    blob_extent m;
    if (k + 1 >= r->n || !ext_merge(&r->ext[k], &r->ext[k + 1], &m)) return;
    r->ext[k] = m;
    memmove(&r->ext[k + 1], &r->ext[k + 2], (r->n - k - 2) * sizeof m);
    r->n--;
}

/* On failure out is left empty with its array freed. */
int blob_ref_decode(const uint8_t *p, size_t len, blob_ref *out) {
    const uint8_t *lim = len ? p + len : p; /* (NULL, 0), an empty payload, is a truncated header */
    uint64_t size, n, total = 0;
    out->n = 0;
    out->size = 0;
    int rc;
    if (!(p = get_varint64(p, lim, &size)) || !(p = get_varint64(p, lim, &n))) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: truncated header (%zu bytes)", len);
        goto bad;
    }
    /* Each extent takes at least 5 bytes: this bounds the allocation by the input's size. */
    if (n > (uint64_t)(lim - p) / 5) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: %" PRIu64 " extents cannot fit in %zu bytes", n, len);
        goto bad;
    }
    if ((rc = ref_reserve(out, (size_t)n))) goto bad;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v[5];
        for (int k = 0; k < 5; k++) {
            if (!(p = get_varint64(p, lim, &v[k]))) {
                rc = kv_set_error(KV_ECORRUPT, "blob reference: extent %" PRIu64 " is truncated", i);
                goto bad;
            }
        }
        blob_extent e = {v[0], v[1], v[2], v[3], v[4]};
        if (e.len == 0) {
            rc = kv_set_error(KV_ECORRUPT, "blob reference: extent %" PRIu64 " is empty", i);
            goto bad;
        }
        if (ext_is_hole(&e) && (e.rec_off || e.rec_len || e.skip)) {
            rc = kv_set_error(KV_ECORRUPT, "blob reference: hole extent %" PRIu64 " has record fields", i);
            goto bad;
        }
        if (!ext_is_hole(&e) && !ext_in_record(&e)) {
            rc = kv_set_error(KV_ECORRUPT,
                              "blob reference: extent %" PRIu64 " (skip %" PRIu64 ", len %" PRIu64
                              ") lies outside its record (offset %" PRIu64 ", %" PRIu64 " bytes)",
                              i, e.skip, e.len, e.rec_off, e.rec_len);
            goto bad;
        }
        if (e.len > UINT64_MAX - total) {
            rc = kv_set_error(KV_ECORRUPT, "blob reference: extent lengths overflow");
            goto bad;
        }
        total += e.len;
        out->ext[out->n++] = e;
    }
    if (p != lim) {
        rc = kv_set_error(KV_ECORRUPT, "blob reference: %zu trailing bytes", (size_t)(lim - p));
        goto bad;
    }
    if (total != size) {
        rc = kv_set_error(KV_ECORRUPT,
                          "blob reference: extent lengths add up to %" PRIu64 ", size is %" PRIu64, total, size);
        goto bad;
    }
    out->size = size;
    return KV_OK;
bad:
    blob_ref_free(out); /* empty and owning nothing: callers need not free after a failure */
    return rc;
}

/* Appends to out. Zero-length extents are left out and a hole's record fields written as 0, so whatever a caller
 * assembled by hand, a consistent reference always encodes to something blob_ref_decode accepts. */
int blob_ref_encode(const blob_ref *r, kv_bytes *out) {
    uint64_t total = 0, n = 0;
    for (size_t i = 0; i < r->n; i++) {
        const blob_extent *e = &r->ext[i];
        if (e->len == 0) continue;
        if (!ext_is_hole(e) && !ext_in_record(e))
            return kv_set_error(KV_EINVAL, "blob reference: extent %zu lies outside its record", i);
        if (e->len > UINT64_MAX - total) return kv_set_error(KV_EINVAL, "blob reference: extent lengths overflow");
        total += e->len;
        n++;
    }
    if (total != r->size)
        return kv_set_error(KV_EINVAL, "blob reference: extent lengths add up to %" PRIu64 ", size is %" PRIu64,
                            total, r->size);
    int rc = bytes_reserve(out, 20 + (size_t)n * 50);
    if (rc) return kv_set_error(rc, "blob reference: out of memory");
    uint8_t *p = out->data + out->len;
    p = put_varint64(p, r->size);
    p = put_varint64(p, n);
    for (size_t i = 0; i < r->n; i++) {
        const blob_extent *e = &r->ext[i];
        if (e->len == 0) continue;
        bool hole = ext_is_hole(e);
        p = put_varint64(p, e->file_no);
        p = put_varint64(p, hole ? 0 : e->rec_off);
        p = put_varint64(p, hole ? 0 : e->rec_len);
        p = put_varint64(p, hole ? 0 : e->skip);
        p = put_varint64(p, e->len);
    }
    out->len = (size_t)(p - out->data);
    return KV_OK;
}

void blob_ref_free(blob_ref *r) {
    free(r->ext);
    *r = (blob_ref){0};
}

/* dst, like decode's out, must be zeroed or previously used; its array is reused. */
int blob_ref_copy(blob_ref *dst, const blob_ref *src) {
    if (dst == src) return KV_OK;
    int rc = ref_reserve(dst, src->n);
    if (rc) return rc;
    if (src->n) memcpy(dst->ext, src->ext, src->n * sizeof *src->ext);
    dst->n = src->n;
    dst->size = src->size;
    return KV_OK;
}

/*
 * Splicing e over [off, end): the extents wholly inside are dropped, the one containing off keeps its head before
 * off, the one containing end keeps its tail from end (a single extent containing both is split into three), and
 * only e's two new neighbours can merge with it. A zero-length splice changes nothing, even past the end: like a
 * zero-byte pwrite, it neither stores bytes nor extends the value.
 */
int blob_ref_splice(blob_ref *r, uint64_t off, const blob_extent *e) {
    if (!ext_is_hole(e) && !ext_in_record(e))
        return kv_set_error(KV_EINVAL, "blob splice: extent (skip %" PRIu64 ", len %" PRIu64
                                       ") lies outside its record (offset %" PRIu64 ", %" PRIu64 " bytes)",
                            e->skip, e->len, e->rec_off, e->rec_len);
    if (e->len == 0) return KV_OK;
    if (off > UINT64_MAX - e->len)
        return kv_set_error(KV_EINVAL, "blob splice: offset %" PRIu64 " + length %" PRIu64 " overflows", off, e->len);
    blob_extent ne = ext_is_hole(e) ? (blob_extent){.len = e->len} : *e;
    uint64_t end = off + ne.len;

    /* At most three extents more (a gap hole, and a split into three): reserving first means no failure below. */
    if (r->n > SIZE_MAX - 3) return kv_set_error(KV_ENOMEM, "blob reference: too many extents");
    int rc = ref_reserve(r, r->n + 3);
    if (rc) return rc;
    if (off > r->size) ref_append_hole(r, off - r->size);

    /* i: the first extent ending after off; j: the first (from i) ending after end. */
    size_t i = 0, j;
    uint64_t pos = 0, start_i, start_j;
    while (i < r->n && pos + r->ext[i].len <= off) pos += r->ext[i++].len;
    start_i = pos;
    j = i;
    while (j < r->n && pos + r->ext[j].len <= end) pos += r->ext[j++].len;
    start_j = pos;

    bool has_head = i < r->n && off > start_i;
    bool has_tail = j < r->n && end > start_j;
    blob_extent head = {0}, tail = {0};
    if (has_head) {
        head = r->ext[i];
        head.len = off - start_i;
    }
    if (has_tail) {
        uint64_t cut = end - start_j;
        tail = r->ext[j];
        tail.len -= cut;
        if (!ext_is_hole(&tail)) tail.skip += cut;
    }
    size_t old_cnt = (has_tail ? j + 1 : j) - i;
    size_t new_cnt = (size_t)has_head + 1 + (size_t)has_tail;
    assert(r->n - old_cnt + new_cnt <= r->cap);
    memmove(&r->ext[i + new_cnt], &r->ext[i + old_cnt], (r->n - i - old_cnt) * sizeof ne);
    r->n = r->n - old_cnt + new_cnt;
    size_t k = i;
    if (has_head) r->ext[k++] = head;
    r->ext[k] = ne;
    if (has_tail) r->ext[k + 1] = tail;
    /* head and tail keep the outer ends of extents that were already unmergeable with their neighbours. */
    ref_try_merge(r, k);
    if (k > 0) ref_try_merge(r, k - 1);
    if (end > r->size) r->size = end;
    return KV_OK;
}

int blob_ref_append(blob_ref *r, const blob_extent *e) {
    if (e->len == 0) return KV_OK;
    if (!ext_is_hole(e) && !ext_in_record(e))
        return kv_set_error(KV_EINVAL, "blob append: extent lies outside its record");
    if (e->len > UINT64_MAX - r->size) return kv_set_error(KV_EINVAL, "blob append: value size overflows");
    int rc = ref_reserve(r, r->n + 1);
    if (rc) return rc;
    r->ext[r->n++] = ext_is_hole(e) ? (blob_extent){.len = e->len} : *e;
    r->size += e->len;
    if (r->n >= 2) ref_try_merge(r, r->n - 2);
    return KV_OK;
}

int blob_ref_truncate(blob_ref *r, uint64_t size) {
    if (size > r->size) {
        int rc = ref_reserve(r, r->n + 1);
        if (rc) return rc;
        ref_append_hole(r, size - r->size);
        return KV_OK;
    }
    if (size == 0) {
        r->n = 0;
        r->size = 0;
        return KV_OK;
    }
    size_t i = 0;
    uint64_t pos = 0;
    while (pos + r->ext[i].len < size) {
        pos += r->ext[i++].len;
        assert(i < r->n); /* lens add up to r->size >= size */
    }
    r->ext[i].len = size - pos; /* the head of a data extent keeps its skip */
    r->n = i + 1;
    r->size = size;
    return KV_OK;
}

uint64_t blob_extent_record_end(const blob_extent *e) {
    return e->file_no == 0 ? 0 : e->rec_off + rec_span(e->rec_len);
}

uint64_t blob_ref_bytes_in_file(const blob_ref *r, uint64_t file_no) {
    uint64_t n = 0;
    if (file_no == 0) return 0; /* holes are in no file */
    for (size_t i = 0; i < r->n; i++)
        if (r->ext[i].file_no == file_no) n += r->ext[i].len;
    return n;
}

/* ---- File header -------------------------------------------------------------------------------------------- */

static void blob_name(char *buf, size_t n, uint64_t file_no) { snprintf(buf, n, "%06" PRIu64 ".blob", file_no); }

static void header_encode(uint8_t h[BLOB_HEADER]) {
    put_fixed64(h, BLOB_MAGIC);
    put_fixed32(h + 8, BLOB_VERSION);
    put_fixed32(h + 12, kv_checksum(h, 12));
}

/* What is wrong with the n bytes read at offset 0, or NULL when they are a valid header. *fatal is set when the
 * header is intact but of a version we cannot read, so the rest of the file cannot be interpreted. */
static const char *header_problem(const uint8_t *h, size_t n, bool *fatal) {
    *fatal = false;
    if (n < BLOB_HEADER) return "file shorter than its header";
    if (get_fixed64(h) != BLOB_MAGIC) return "bad magic number";
    if (get_fixed32(h + 12) != kv_checksum(h, 12)) return "bad header checksum";
    if (get_fixed32(h + 8) != BLOB_VERSION) {
        *fatal = true;
        return "unsupported format version";
    }
    return NULL;
}

/* ---- Writer ------------------------------------------------------------------------------------------------- */

struct blob_writer {
    kv_env *env;
    kv_file *f;
    char *path;
    uint64_t file_no;
    uint64_t size;             /* bytes appended to the file so far */
    int err;                   /* the first failed append; every later write fails */
    bool in_record;            /* between begin and end */
    uint64_t rec_off, rec_len; /* the streamed record: its first chunk's offset, its bytes so far */
    size_t buf_len;            /* data bytes waiting in buf, after the slot for their chunk header */
    uint8_t buf[CHUNK_HDR + BLOB_CHUNK];
};

static int writer_usable(blob_writer *w) {
    if (w->err) return kv_set_error(w->err, "%s: an earlier write to this blob file failed", w->path);
    return KV_OK;
}

/* Write buf as one chunk of n data bytes (already at buf + CHUNK_HDR). */
static int writer_emit(blob_writer *w, size_t n) {
    assert(n >= 1 && n <= BLOB_CHUNK);
    put_fixed32(w->buf + 4, (uint32_t)n);
    put_fixed32(w->buf, kv_checksum(w->buf + 4, 4 + n));
    int rc = w->env->append(w->env, w->f, w->buf, CHUNK_HDR + n);
    if (rc) {
        w->err = rc;
        return rc;
    }
    w->size += CHUNK_HDR + n;
    return KV_OK;
}

static void extent_of_record(const blob_writer *w, uint64_t rec_off, uint64_t len, blob_extent *e) {
    if (len == 0) *e = (blob_extent){0}; /* no chunks were written: the record is a hole of 0 bytes */
    else *e = (blob_extent){w->file_no, rec_off, len, 0, len};
}

int blob_writer_new(kv_env *env, const char *path, uint64_t file_no, blob_writer **out) {
    *out = NULL;
    if (!env || !path || file_no == 0) return kv_set_error(KV_EINVAL, "blob writer: bad argument");
    blob_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return kv_set_error(KV_ENOMEM, "%s: out of memory", path);
    }
    w->env = env;
    w->file_no = file_no;
    int rc = env->open_write(env, path, &w->f);
    if (rc) {
        free(w->path);
        free(w);
        return rc;
    }
    uint8_t h[BLOB_HEADER];
    header_encode(h);
    rc = env->append(env, w->f, h, sizeof h);
    if (rc) {
        env->close(env, w->f);
        free(w->path);
        free(w);
        return rc;
    }
    w->size = BLOB_HEADER;
    *out = w;
    return KV_OK;
}

int blob_writer_add(blob_writer *w, const void *data, size_t len, blob_extent *e) {
    int rc = writer_usable(w);
    if (rc) return rc;
    if (w->in_record) return kv_set_error(KV_EINVAL, "%s: blob_writer_add inside a streamed record", w->path);
    if (len > 0 && !data) return kv_set_error(KV_EINVAL, "%s: blob_writer_add of NULL data", w->path);
    uint64_t rec_off = w->size;
    const uint8_t *p = data;
    /* The chunks go out straight from data, their headers beside them, GROUP chunks per gathered append: no copy
     * of the value (it was 13% of the daemon's CPU on sequential writes). */
    enum { GROUP = 32 };
    uint8_t hdr[GROUP][CHUNK_HDR];
    struct iovec iov[2 * GROUP];
    for (size_t done = 0; done < len;) {
        int k = 0;
        size_t bytes = 0;
        for (; k < GROUP && done < len; k++) {
            size_t n = len - done < BLOB_CHUNK ? len - done : BLOB_CHUNK;
            put_fixed32(hdr[k] + 4, (uint32_t)n);
            put_fixed32(hdr[k], kv_checksum2(hdr[k] + 4, 4, p + done, n));
            iov[2 * k] = (struct iovec){hdr[k], CHUNK_HDR};
            iov[2 * k + 1] = (struct iovec){(void *)(p + done), n};
            bytes += CHUNK_HDR + n;
            done += n;
        }
        if ((rc = kv_env_appendv(w->env, w->f, iov, 2 * k))) {
            w->err = rc;
            return rc;
        }
        w->size += bytes;
    }
    extent_of_record(w, rec_off, len, e);
    return KV_OK;
}

int blob_writer_begin(blob_writer *w) {
    int rc = writer_usable(w);
    if (rc) return rc;
    if (w->in_record) return kv_set_error(KV_EINVAL, "%s: blob_writer_begin inside a streamed record", w->path);
    w->in_record = true;
    w->rec_off = w->size;
    w->rec_len = 0;
    w->buf_len = 0;
    return KV_OK;
}

int blob_writer_append(blob_writer *w, const void *data, size_t len) {
    int rc = writer_usable(w);
    if (rc) return rc;
    if (!w->in_record) return kv_set_error(KV_EINVAL, "%s: blob_writer_append outside a record", w->path);
    if (len > 0 && !data) return kv_set_error(KV_EINVAL, "%s: blob_writer_append of NULL data", w->path);
    const uint8_t *p = data;
    while (len > 0) {
        size_t n = BLOB_CHUNK - w->buf_len;
        if (n > len) n = len;
        memcpy(w->buf + CHUNK_HDR + w->buf_len, p, n);
        w->buf_len += n;
        w->rec_len += n;
        p += n;
        len -= n;
        /* A full chunk can go out now: it is full whether or not it turns out to be the record's last. */
        if (w->buf_len == BLOB_CHUNK) {
            if ((rc = writer_emit(w, BLOB_CHUNK))) return rc;
            w->buf_len = 0;
        }
    }
    return KV_OK;
}

int blob_writer_end(blob_writer *w, blob_extent *e) {
    int rc = writer_usable(w);
    if (rc) return rc;
    if (!w->in_record) return kv_set_error(KV_EINVAL, "%s: blob_writer_end outside a record", w->path);
    w->in_record = false;
    if (w->buf_len > 0) {
        rc = writer_emit(w, w->buf_len);
        w->buf_len = 0;
        if (rc) return rc;
    }
    extent_of_record(w, w->rec_off, w->rec_len, e);
    return KV_OK;
}

/* The size the file will have once the record being streamed is ended. */
uint64_t blob_writer_size(const blob_writer *w) {
    return w->size + (w->in_record && w->buf_len ? CHUNK_HDR + w->buf_len : 0);
}

uint64_t blob_writer_file_no(const blob_writer *w) { return w->file_no; }

/* Makes durable what has been appended; a partial chunk of a streamed record stays buffered until end. */
int blob_writer_sync(blob_writer *w) {
    int rc = writer_usable(w);
    return rc ? rc : w->env->sync(w->env, w->f);
}

int blob_writer_close(blob_writer *w) {
    if (!w) return KV_OK;
    int rc = w->env->close(w->env, w->f);
    free(w->path);
    free(w);
    return rc;
}

/* ---- Store: cached readers ---------------------------------------------------------------------------------- */

typedef struct blob_reader {
    uint64_t file_no;
    kv_file *f;
    int refs;                       /* blob_read calls using it; guarded by the store's mutex */
    bool cached;                    /* in the table and the LRU list */
    struct blob_reader *hnext;      /* hash chain (also: the list of readers to close) */
    struct blob_reader *prev, *next; /* LRU list, most recently used first */
} blob_reader;

struct blob_store {
    kv_env *env;
    char *dir;
    size_t max_open;
    pthread_mutex_t mu;
    blob_reader **table; /* hash table of cached readers, nbuckets (a power of two) chains */
    size_t nbuckets;
    size_t nopen;        /* cached readers */
    blob_reader lru;     /* sentinel of the circular LRU list */
};

static size_t bucket_of(const blob_store *s, uint64_t file_no) {
    return (size_t)((file_no * 0x9e3779b97f4a7c15ull) >> 32) & (s->nbuckets - 1);
}

static char *store_path(const blob_store *s, uint64_t file_no) {
    char name[32];
    blob_name(name, sizeof name, file_no);
    size_t n = strlen(s->dir) + 1 + strlen(name) + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", s->dir, name);
    return p;
}

int blob_store_new(kv_env *env, const char *dir, size_t max_open, blob_store **out) {
    *out = NULL;
    if (!env || !dir) return kv_set_error(KV_EINVAL, "blob store: bad argument");
    blob_store *s = calloc(1, sizeof *s);
    if (!s) return kv_set_error(KV_ENOMEM, "blob store: out of memory");
    s->env = env;
    s->max_open = max_open ? max_open : 1; /* the reader in use must fit */
    s->nbuckets = 16;
    while (s->nbuckets < s->max_open && s->nbuckets < 65536) s->nbuckets *= 2;
    s->dir = strdup(dir);
    s->table = calloc(s->nbuckets, sizeof *s->table);
    if (!s->dir || !s->table || pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s->dir);
        free(s->table);
        free(s);
        return kv_set_error(KV_ENOMEM, "blob store %s: out of memory", dir);
    }
    s->lru.prev = s->lru.next = &s->lru;
    *out = s;
    return KV_OK;
}

void blob_store_free(blob_store *s) {
    if (!s) return;
    for (blob_reader *r = s->lru.next, *next; r != &s->lru; r = next) {
        next = r->next;
        assert(r->refs == 0); /* no blob_read may still be running */
        s->env->close(s->env, r->f);
        free(r);
    }
    pthread_mutex_destroy(&s->mu);
    free(s->table);
    free(s->dir);
    free(s);
}

static void lru_unlink(blob_reader *r) {
    r->prev->next = r->next;
    r->next->prev = r->prev;
}

static void lru_push_front(blob_store *s, blob_reader *r) {
    r->next = s->lru.next;
    r->prev = &s->lru;
    r->next->prev = r;
    s->lru.next = r;
}

/* Under mu. */
static blob_reader *table_find(blob_store *s, uint64_t file_no) {
    blob_reader *r = s->table[bucket_of(s, file_no)];
    while (r && r->file_no != file_no) r = r->hnext;
    return r;
}

/* Under mu: take r out of the table and the LRU list. */
static void uncache(blob_store *s, blob_reader *r) {
    blob_reader **pp = &s->table[bucket_of(s, r->file_no)];
    while (*pp != r) pp = &(*pp)->hnext;
    *pp = r->hnext;
    r->hnext = NULL;
    lru_unlink(r);
    r->cached = false;
    s->nopen--;
}

static void close_readers(blob_store *s, blob_reader *list) {
    while (list) {
        blob_reader *next = list->hnext;
        s->env->close(s->env, list->f);
        free(list);
        list = next;
    }
}

/* Open file_no and verify its header. A missing file is corruption, not KV_ENOTFOUND: a reference names it, and
 * callers must not mistake it for an absent key. */
static int reader_open(blob_store *s, uint64_t file_no, blob_reader **out) {
    char name[32];
    blob_name(name, sizeof name, file_no);
    char *path = store_path(s, file_no);
    if (!path) return kv_set_error(KV_ENOMEM, "%s: out of memory", name);
    kv_file *f;
    int rc = s->env->open_read(s->env, path, &f);
    if (rc == KV_ENOTFOUND) rc = kv_set_error(KV_ECORRUPT, "%s: blob file is missing (%s)", name, path);
    free(path);
    if (rc) return rc;
    uint8_t h[BLOB_HEADER];
    size_t got;
    bool fatal;
    const char *what;
    blob_reader *r = NULL;
    rc = s->env->read_at(s->env, f, 0, h, sizeof h, &got);
    if (rc == KV_OK && (what = header_problem(h, got, &fatal)))
        rc = kv_set_error(KV_ECORRUPT, "%s: %s at offset 0", name, what);
    if (rc == KV_OK && !(r = calloc(1, sizeof *r))) rc = kv_set_error(KV_ENOMEM, "%s: out of memory", name);
    if (rc) {
        s->env->close(s->env, f);
        return rc;
    }
    r->file_no = file_no;
    r->f = f;
    *out = r;
    return KV_OK;
}

/* A held reader for file_no, from the cache or newly opened (outside the mutex: two threads may open the same file
 * at once, and the loser closes its copy). */
static int reader_acquire(blob_store *s, uint64_t file_no, blob_reader **out) {
    pthread_mutex_lock(&s->mu);
    blob_reader *r = table_find(s, file_no);
    if (r) {
        r->refs++;
        lru_unlink(r);
        lru_push_front(s, r);
        pthread_mutex_unlock(&s->mu);
        *out = r;
        return KV_OK;
    }
    pthread_mutex_unlock(&s->mu);

    blob_reader *fresh = NULL;
    int rc = reader_open(s, file_no, &fresh);
    if (rc) return rc;

    blob_reader *to_close = NULL;
    pthread_mutex_lock(&s->mu);
    r = table_find(s, file_no);
    if (r) {
        r->refs++;
        lru_unlink(r);
        lru_push_front(s, r);
        to_close = fresh;
    } else {
        r = fresh;
        r->refs = 1;
        r->cached = true;
        size_t b = bucket_of(s, file_no);
        r->hnext = s->table[b];
        s->table[b] = r;
        lru_push_front(s, r);
        s->nopen++;
        while (s->nopen > s->max_open) {
            blob_reader *victim = s->lru.prev; /* never r: it is at the front and max_open >= 1 */
            uncache(s, victim);
            if (victim->refs == 0) {
                victim->hnext = to_close;
                to_close = victim;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    close_readers(s, to_close);
    *out = r;
    return KV_OK;
}

static void reader_release(blob_store *s, blob_reader *r) {
    pthread_mutex_lock(&s->mu);
    bool last = --r->refs == 0 && !r->cached;
    pthread_mutex_unlock(&s->mu);
    if (last) close_readers(s, r);
}

void blob_store_forget(blob_store *s, uint64_t file_no) {
    blob_reader *to_close = NULL;
    pthread_mutex_lock(&s->mu);
    blob_reader *r = table_find(s, file_no);
    if (r) {
        uncache(s, r);
        if (r->refs == 0) to_close = r; /* else its last user closes it */
    }
    pthread_mutex_unlock(&s->mu);
    close_readers(s, to_close);
}

/* ---- Reads -------------------------------------------------------------------------------------------------- */

/* Copy bytes [pos, pos + n) of extent e's record into dst, reading and verifying each chunk they touch. chunk is a
 * buffer of CHUNK_HDR + BLOB_CHUNK bytes. */
static int read_record(blob_store *s, blob_reader *rd, const blob_extent *e, uint64_t pos, uint64_t n,
                       uint8_t *dst, uint8_t *chunk) {
    uint64_t k = pos / BLOB_CHUNK, last = (e->rec_len - 1) / BLOB_CHUNK;
    while (n > 0) {
        uint64_t coff = e->rec_off + k * (CHUNK_HDR + BLOB_CHUNK);
        size_t clen = k == last ? (size_t)(e->rec_len - k * BLOB_CHUNK) : BLOB_CHUNK;
        size_t got;
        int rc = s->env->read_at(s->env, rd->f, coff, chunk, CHUNK_HDR + clen, &got);
        if (rc) return rc;
        char name[32];
        blob_name(name, sizeof name, e->file_no);
        /* The length field, when there is one, says more about a mismatch than the end of the file does. */
        uint32_t stored = got >= CHUNK_HDR ? get_fixed32(chunk + 4) : 0;
        if (got >= CHUNK_HDR && stored != clen)
            return kv_set_error(KV_ECORRUPT, "%s: bad chunk length %" PRIu32 " (expected %zu) at offset %" PRIu64,
                                name, stored, clen, coff);
        if (got < CHUNK_HDR + clen)
            return kv_set_error(KV_ECORRUPT, "%s: chunk cut short by the end of the file at offset %" PRIu64, name,
                                coff);
        if (get_fixed32(chunk) != kv_checksum(chunk + 4, 4 + clen))
            return kv_set_error(KV_ECORRUPT, "%s: bad chunk checksum at offset %" PRIu64, name, coff);
        size_t in = (size_t)(pos - k * BLOB_CHUNK);
        size_t take = clen - in < n ? clen - in : (size_t)n;
        memcpy(dst, chunk + CHUNK_HDR + in, take);
        dst += take;
        pos += take;
        n -= take;
        k++;
    }
    return KV_OK;
}

int blob_read(blob_store *s, const blob_ref *r, uint64_t off, void *buf, size_t len, size_t *nread) {
    *nread = 0;
    if (off >= r->size || len == 0) return KV_OK;
    uint64_t want = r->size - off < len ? r->size - off : len;
    uint64_t end = off + want;
    uint8_t *out = buf, *chunk = NULL;
    blob_reader *rd = NULL;
    int rc = KV_OK;
    /* Skip the extents wholly before off, then copy extent by extent: [at, piece_end) is the part of extent i
     * (value offsets [pos, pos + len)) that the caller asked for. */
    size_t i = 0;
    uint64_t pos = 0;
    while (i < r->n && pos + r->ext[i].len <= off) pos += r->ext[i++].len;
    uint64_t at = off;
    while (at < end) {
        if (i >= r->n) {
            rc = kv_set_error(KV_ECORRUPT, "blob reference: extents cover %" PRIu64 " bytes, size is %" PRIu64, pos,
                              r->size);
            break;
        }
        const blob_extent *e = &r->ext[i];
        uint64_t piece_end = pos + e->len < end ? pos + e->len : end;
        uint8_t *dst = out + (at - off);
        if (ext_is_hole(e)) {
            memset(dst, 0, (size_t)(piece_end - at));
        } else {
            if (!ext_in_record(e)) {
                rc = kv_set_error(KV_ECORRUPT, "blob reference: extent %zu lies outside its record", i);
                break;
            }
            if (!chunk && !(chunk = malloc(CHUNK_HDR + BLOB_CHUNK))) {
                rc = kv_set_error(KV_ENOMEM, "blob read: out of memory");
                break;
            }
            if (rd && rd->file_no != e->file_no) {
                reader_release(s, rd);
                rd = NULL;
            }
            if (!rd && (rc = reader_acquire(s, e->file_no, &rd))) break;
            rc = read_record(s, rd, e, e->skip + (at - pos), piece_end - at, dst, chunk);
            if (rc) break;
        }
        at = piece_end;
        pos += e->len;
        i++;
    }
    if (rd) reader_release(s, rd);
    free(chunk);
    if (rc == KV_OK) *nread = (size_t)want;
    return rc;
}

/* ---- Check -------------------------------------------------------------------------------------------------- */

/* Record boundaries are unknown here (only references know them), so the walk checks what holds for every chunk:
 * a length of 1..BLOB_CHUNK, a matching checksum, and the file ending exactly after a chunk. A bad length or a torn
 * chunk ends the walk, since the next chunk's position is then unknown. A bad checksum does not: its length is
 * trusted to continue, and if the length was the damaged field the next step almost surely finds a bad length. */
int blob_chunk_whole_at(kv_env *env, const char *path, uint64_t off) {
    kv_file *f;
    int rc = env->open_read(env, path, &f);
    if (rc) return rc;
    uint8_t *buf = malloc(CHUNK_HDR + BLOB_CHUNK);
    size_t got = 0;
    if (!buf) rc = kv_set_error(KV_ENOMEM, "%s: out of memory", path);
    else rc = env->read_at(env, f, off, buf, CHUNK_HDR + BLOB_CHUNK, &got);
    if (!rc) {
        uint32_t clen = got >= CHUNK_HDR ? get_fixed32(buf + 4) : 0;
        if (clen == 0 || clen > BLOB_CHUNK || CHUNK_HDR + clen > got || get_fixed32(buf) != kv_checksum(buf + 4, 4 + clen))
            rc = kv_set_error(KV_ECORRUPT, "%s: no whole chunk at offset %" PRIu64, path, off);
    }
    free(buf);
    env->close(env, f);
    return rc;
}

long blob_check_file(kv_env *env, const char *path, const char *name, blob_problem_fn cb, void *ctx) {
    if (!name) name = path;
    kv_file *f;
    int rc = env->open_read(env, path, &f);
    if (rc) return rc;
    uint64_t size;
    uint8_t *buf = malloc(CHUNK_HDR + BLOB_CHUNK);
    if (!buf) {
        env->close(env, f);
        return kv_set_error(KV_ENOMEM, "%s: out of memory", name);
    }
    long problems = 0;
    char what[160];
#define PROBLEM(off, ...)                                  \
    do {                                                   \
        snprintf(what, sizeof what, __VA_ARGS__);          \
        problems++;                                        \
        if (cb) cb(ctx, name, (off), what);                \
    } while (0)

    size_t got;
    if ((rc = env->size(env, f, &size)) || (rc = env->read_at(env, f, 0, buf, BLOB_HEADER, &got))) goto out;
    bool fatal;
    const char *hp = header_problem(buf, got, &fatal);
    if (hp) {
        if (got < BLOB_HEADER) {
            PROBLEM(0, "%s (%" PRIu64 " bytes)", hp, size);
            goto out;
        }
        if (fatal) {
            PROBLEM(0, "%s %" PRIu32, hp, get_fixed32(buf + 8));
            goto out;
        }
        PROBLEM(0, "%s", hp);
    }
    for (uint64_t pos = BLOB_HEADER; pos < size;) {
        uint64_t left = size - pos;
        size_t want = left < CHUNK_HDR + BLOB_CHUNK ? (size_t)left : CHUNK_HDR + BLOB_CHUNK;
        if ((rc = env->read_at(env, f, pos, buf, want, &got))) goto out;
        if (got < CHUNK_HDR) {
            PROBLEM(pos, "torn chunk: %zu bytes of header before the end of the file", got);
            break;
        }
        uint32_t clen = get_fixed32(buf + 4);
        if (clen == 0 || clen > BLOB_CHUNK) {
            PROBLEM(pos, "bad chunk length %" PRIu32 " (rest of file not checked)", clen);
            break;
        }
        if (CHUNK_HDR + clen > got) {
            PROBLEM(pos, "torn chunk: length %" PRIu32 " runs past the end of the file at %" PRIu64, clen, size);
            break;
        }
        if (get_fixed32(buf) != kv_checksum(buf + 4, 4 + clen)) PROBLEM(pos, "bad chunk checksum");
        pos += CHUNK_HDR + clen;
    }
#undef PROBLEM
out:
    free(buf);
    env->close(env, f);
    return rc ? rc : problems;
}
