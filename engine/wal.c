/*
 * wal.c — the record log (wal.h; the format is in docs/format.md ("Record log")).
 *
 * Record:  fixed32 checksum | fixed32 length | payload[length],  checksum = kv_checksum(length field || payload).
 *
 * Invariants
 *  - Writer: every record reaches the environment in exactly one append call, so a crash or a failed write leaves at
 *    most one partial record, and only at the end of the file. w->size is always the offset just past the last
 *    record that was appended in full. When an append fails, the writer cuts the file back to w->size so the next
 *    record starts on a record boundary; if even that fails, the writer refuses further appends (w->broken) rather
 *    than write a good record behind a partial one, which a reader would take for corruption.
 *  - A writer opened with wal_writer_open_ahead writes by offset into space it allocates ahead (w->allocated >=
 *    w->size once an allocation succeeded), so an fdatasync after an append commits no change of the file's size.
 *    The file then ends in zeros after the last record; readers take an all-zero rest of the file as its end.
 *  - Reader: r->pos is the offset of the next record and only moves past records whose checksum matched, so it is
 *    also the valid end. The window buf[0 .. len) holds file bytes [buf_off, buf_off + len), with buf_off <= pos;
 *    it grows only to hold the largest record met (plus the header), never to the file size.
 *  - Classification (wal.h): no bytes at pos, or only zeros from pos to the end = clean end; 1..7 bytes = torn
 *    (header cut short); a length running past the end of the file = torn, checked against the file size before
 *    any buffer grows, so a bogus length never allocates; a bad checksum = torn if the record ends exactly at the
 *    end of the file or only zeros follow it, else corruption; a length above WAL_MAX_RECORD that still fits in the
 *    file = corruption (no writer produces it).
 *    Torn and clean ends return KV_ENOTFOUND and are re-evaluated on each call, so a reader may poll a log that is
 *    still growing.
 */
#include "wal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coding.h"
#include "error.h"
#include "kv.h"

#define READ_CHUNK ((size_t)32 << 10) /* smallest reader window */
#define SCRATCH_KEEP ((size_t)4 << 20) /* a writer keeps a record buffer up to this size between appends */
#define LOST_PAGE 4096                  /* the unit in which a power loss may keep or lose unsynced bytes */
#define ALLOC_MIN ((uint64_t)64 << 10)   /* space allocated ahead by wal_writer_open_ahead's writers: at least */
#define ALLOC_MAX ((uint64_t)256 << 10)  /* ... and at most */

/* ---- Writer ---------------------------------------------------------------------------------------------------- */

struct wal_writer {
    kv_env *env;
    kv_file *file;
    uint64_t size;
    uint64_t allocated; /* by_offset: the file's size as last allocated (0: not yet, or cut back after a failure) */
    bool by_offset;     /* written with write_at into space allocated ahead, not appended */
    bool broken;
    kv_bytes rec; /* scratch: the record being appended */
    char path[];
};

static int writer_new(kv_env *env, const char *path, wal_writer **out) {
    size_t n = strlen(path);
    wal_writer *w = calloc(1, sizeof *w + n + 1);
    if (!w) return kv_set_error(KV_ENOMEM, "wal %s: out of memory", path);
    w->env = env;
    memcpy(w->path, path, n + 1);
    *out = w;
    return KV_OK;
}

/* A writer that appends, or (ahead, when the environment can) writes by offset into space allocated ahead. */
static int writer_open(kv_env *env, const char *path, bool ahead, wal_writer **out) {
    *out = NULL;
    if (!env) env = kv_env_posix();
    ahead = ahead && env->open_overwrite && env->write_at && env->allocate;
    wal_writer *w;
    int rc = writer_new(env, path, &w);
    if (rc != KV_OK) return rc;
    rc = ahead ? env->open_overwrite(env, path, &w->file) : env->open_write(env, path, &w->file);
    if (rc != KV_OK) {
        free(w);
        return rc;
    }
    w->by_offset = ahead;
    *out = w;
    return KV_OK;
}

int wal_writer_open(kv_env *env, const char *path, wal_writer **out) { return writer_open(env, path, false, out); }

int wal_writer_open_ahead(kv_env *env, const char *path, wal_writer **out) {
    return writer_open(env, path, true, out);
}

/* Room for `need` more bytes: allocate ahead by as much as the log holds already, between ALLOC_MIN and ALLOC_MAX, so
 * a small log wastes little and a large one allocates rarely. A failed allocation is not an error by itself (the
 * write that follows may still fit, or will report the real cause); it is tried again at the next append. Nor does it
 * touch the thread's message, which may be another's: the group-commit leader's own batch may have failed before
 * it appends the others' (a full disk fails a large value's blob write, then the allocation). */
static void allocate_ahead(wal_writer *w, size_t need) {
    if (w->size + need <= w->allocated) return;
    uint64_t ahead = w->size < ALLOC_MIN ? ALLOC_MIN : w->size > ALLOC_MAX ? ALLOC_MAX : w->size;
    uint64_t want = w->size + need + ahead;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    if (w->env->allocate(w->env, w->file, want) == KV_OK) w->allocated = want;
    else kv_set_error(KV_OK, "%s", msg);
}

int wal_writer_reopen(kv_env *env, const char *path, uint64_t valid_end, wal_writer **out) {
    *out = NULL;
    if (!env) env = kv_env_posix();
    uint64_t size = 0;
    int rc = env->file_size(env, path, &size);
    if (rc != KV_OK && rc != KV_ENOTFOUND) return rc;
    /* valid_end comes from a reader of this very file, so it can never lie past the end */
    if (size < valid_end)
        return kv_set_error(KV_EINVAL, "wal %s: valid end %llu is past the end of the file (%llu bytes)", path,
                            (unsigned long long)valid_end, (unsigned long long)size);
    /* Cut a torn tail off first: a record appended behind it would otherwise read as corruption. */
    if (size > valid_end) {
        rc = env->truncate(env, path, valid_end);
        if (rc != KV_OK) return rc;
    }
    wal_writer *w;
    rc = writer_new(env, path, &w);
    if (rc != KV_OK) return rc;
    rc = env->open_append(env, path, &w->file);
    if (rc != KV_OK) {
        free(w);
        return rc;
    }
    w->size = valid_end;
    *out = w;
    return KV_OK;
}

/* Append the framed records in w->rec with one append call. On failure the file may end in part of them: cut it
 * back so the log stays a clean sequence of records (and if that fails too, refuse further appends). */
static int append_framed(wal_writer *w) {
    size_t at = w->rec.len;
    int rc;
    if (w->by_offset) {
        allocate_ahead(w, at);
        rc = w->env->write_at(w->env, w->file, w->size, w->rec.data, at);
    } else {
        rc = w->env->append(w->env, w->file, w->rec.data, at);
    }
    if (w->rec.cap > SCRATCH_KEEP) bytes_free(&w->rec); /* do not pin the memory of one huge record */
    if (rc == KV_OK) {
        w->size += at;
        return KV_OK;
    }
    /* Keep the append's message, which says what really went wrong. */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    if (w->env->truncate(w->env, w->path, w->size) != KV_OK) w->broken = true;
    w->allocated = 0; /* the cut also took the space allocated ahead */
    return kv_set_error(rc, "%s", msg);
}

int wal_appendv(wal_writer *w, const void *const *parts, const size_t *lens, size_t nparts) {
    if (w->broken)
        return kv_set_error(KV_EIO, "wal %s: not writable after an earlier append failed and could not be undone",
                            w->path);
    size_t total = 0;
    for (size_t i = 0; i < nparts; i++) {
        if (lens[i] > WAL_MAX_RECORD - total)
            return kv_set_error(KV_EINVAL, "wal %s: record larger than %u bytes", w->path, WAL_MAX_RECORD);
        total += lens[i];
    }
    /* Build header and payload in one buffer so that the record goes out in one append call. */
    bytes_clear(&w->rec);
    if (bytes_reserve(&w->rec, WAL_HEADER + total) != KV_OK)
        return kv_set_error(KV_ENOMEM, "wal %s: out of memory for a %zu-byte record", w->path, total);
    uint8_t *p = w->rec.data;
    put_fixed32(p + 4, (uint32_t)total);
    size_t at = WAL_HEADER;
    for (size_t i = 0; i < nparts; i++) {
        if (lens[i]) memcpy(p + at, parts[i], lens[i]);
        at += lens[i];
    }
    /* The length field and the payload are contiguous here, so one pass covers kv_checksum2(length, payload). */
    put_fixed32(p, kv_checksum(p + 4, 4 + total));
    w->rec.len = at;
    return append_framed(w);
}

int wal_append_records(wal_writer *w, const void *const *payloads, const size_t *lens, size_t n) {
    if (w->broken)
        return kv_set_error(KV_EIO, "wal %s: not writable after an earlier append failed and could not be undone",
                            w->path);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > WAL_MAX_RECORD)
            return kv_set_error(KV_EINVAL, "wal %s: record larger than %u bytes", w->path, WAL_MAX_RECORD);
        total += WAL_HEADER + lens[i];
    }
    /* Every record framed in one buffer: the group goes out in one append call (group commit). */
    bytes_clear(&w->rec);
    if (bytes_reserve(&w->rec, total) != KV_OK)
        return kv_set_error(KV_ENOMEM, "wal %s: out of memory for %zu bytes of records", w->path, total);
    uint8_t *p = w->rec.data;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        put_fixed32(p + at + 4, (uint32_t)lens[i]);
        if (lens[i]) memcpy(p + at + WAL_HEADER, payloads[i], lens[i]);
        put_fixed32(p + at, kv_checksum(p + at + 4, 4 + lens[i]));
        at += WAL_HEADER + lens[i];
    }
    w->rec.len = at;
    return append_framed(w);
}

int wal_append(wal_writer *w, const void *payload, size_t len) {
    const void *parts[1] = {payload};
    size_t lens[1] = {len};
    return wal_appendv(w, parts, lens, 1);
}

int wal_sync(wal_writer *w) { return w->env->sync(w->env, w->file); }

uint64_t wal_writer_size(const wal_writer *w) { return w->size; }

bool wal_writer_broken(const wal_writer *w) { return w->broken; }

int wal_writer_close(wal_writer *w) {
    if (!w) return KV_OK;
    int rc = w->env->close(w->env, w->file);
    bytes_free(&w->rec);
    free(w);
    return rc;
}

/* ---- Reader ---------------------------------------------------------------------------------------------------- */

struct wal_reader {
    kv_env *env;
    kv_file *file;
    uint8_t *buf;
    size_t cap, len;  /* window: buf[0 .. len) = file bytes [buf_off, buf_off + len) */
    uint64_t buf_off;
    uint64_t pos;     /* next record; everything before it is good records */
    bool torn;
    uint32_t seen_sum; /* after KV_ECORRUPT: checksum and length of the bytes judged (see wal_read) */
    size_t seen_len;
    char name[];      /* for messages */
};

int wal_reader_open(kv_env *env, const char *path, const char *name, wal_reader **out) {
    *out = NULL;
    if (!env) env = kv_env_posix();
    if (!name) name = path;
    size_t n = strlen(name);
    wal_reader *r = calloc(1, sizeof *r + n + 1);
    if (!r) return kv_set_error(KV_ENOMEM, "wal %s: out of memory", name);
    memcpy(r->name, name, n + 1);
    r->env = env;
    int rc = env->open_read(env, path, &r->file);
    if (rc != KV_OK) {
        free(r);
        return rc;
    }
    *out = r;
    return KV_OK;
}

/* Make the window hold [pos, pos + n) if the file has it; *avail = bytes available from pos (may be < n only at
 * the end of the file, and may be more than n: the window reads ahead). */
static int window_fill(wal_reader *r, size_t n, size_t *avail) {
    assert(r->buf_off <= r->pos && r->pos - r->buf_off <= r->len);
    size_t skip = (size_t)(r->pos - r->buf_off);
    size_t have = r->len - skip;
    if (have >= n) {
        *avail = have;
        return KV_OK;
    }
    /* drop what was consumed, then grow to fit the record */
    if (skip) {
        memmove(r->buf, r->buf + skip, have);
        r->buf_off = r->pos;
        r->len = have;
    }
    if (r->cap < n) {
        size_t ncap = r->cap ? r->cap : READ_CHUNK;
        while (ncap < n) ncap = ncap <= n / 2 ? ncap * 2 : n;
        uint8_t *nb = realloc(r->buf, ncap);
        if (!nb) return kv_set_error(KV_ENOMEM, "%s: out of memory for a %zu-byte record at offset %llu", r->name,
                                     n, (unsigned long long)r->pos);
        r->buf = nb;
        r->cap = ncap;
    }
    while (r->len < n) {
        size_t want = r->cap - r->len, got = 0;
        int rc = r->env->read_at(r->env, r->file, r->buf_off + r->len, r->buf + r->len, want, &got);
        if (rc != KV_OK) return rc;
        r->len += got;
        if (got < want) break; /* end of file */
    }
    *avail = r->len;
    return KV_OK;
}

static int end_torn(wal_reader *r, const char *why) {
    r->torn = true;
    return kv_set_error(KV_ENOTFOUND, "%s: log ends in a torn record at offset %llu (%s)", r->name,
                        (unsigned long long)r->pos, why);
}

static int file_size(wal_reader *r, uint64_t *size) { return r->env->size(r->env, r->file, size); }

/* *zero = every byte of the file from `from` to its end is zero (also when there is none). Reads in small pieces
 * outside the window, so a long run of zeros costs time, not memory. */
static int rest_is_zero(wal_reader *r, uint64_t from, bool *zero) {
    uint8_t piece[4096];
    *zero = false;
    for (;;) {
        size_t got = 0;
        int rc = r->env->read_at(r->env, r->file, from, piece, sizeof piece, &got);
        if (rc != KV_OK) return rc;
        for (size_t i = 0; i < got; i++)
            if (piece[i]) return KV_OK;
        if (got < sizeof piece) break;
        from += got;
    }
    *zero = true;
    return KV_OK;
}

static bool all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

static int read_record(wal_reader *r, const uint8_t **payload, size_t *len, uint64_t *offset) {
    *payload = NULL;
    *len = 0;
    *offset = r->pos;
    r->torn = false;
    size_t avail;
    int rc = window_fill(r, WAL_HEADER, &avail);
    if (rc != KV_OK) return rc;
    if (avail == 0) return kv_set_error(KV_ENOTFOUND, "%s: end of log at offset %llu", r->name,
                                        (unsigned long long)r->pos);
    if (avail < WAL_HEADER) return end_torn(r, "header cut short");

    const uint8_t *h = r->buf + (r->pos - r->buf_off);
    /* Space a writer allocated ahead (wal_writer_open_ahead) reads as zeros: a file that is zeros from here on ends
     * here. (No record has an all-zero header: the checksum of a zero length is not zero.) */
    if (all_zero(h, WAL_HEADER)) {
        bool zero;
        rc = rest_is_zero(r, r->pos, &zero);
        if (rc != KV_OK) return rc;
        if (zero) return kv_set_error(KV_ENOTFOUND, "%s: end of log at offset %llu (zeros follow)", r->name,
                                      (unsigned long long)r->pos);
    }
    uint32_t want_sum = get_fixed32(h), n = get_fixed32(h + 4);
    uint64_t end = r->pos + WAL_HEADER + n;
    /* Never trust the length: check it against the file before reading (or allocating) that much. */
    if ((uint64_t)avail < WAL_HEADER + (uint64_t)n) {
        uint64_t size;
        rc = file_size(r, &size);
        if (rc != KV_OK) return rc;
        if (end > size) return end_torn(r, "record runs past the end of the file");
    }
    if (n > WAL_MAX_RECORD) {
        r->seen_sum = kv_checksum(h, WAL_HEADER);
        r->seen_len = WAL_HEADER;
        return kv_set_error(KV_ECORRUPT, "%s: corrupt record at offset %llu: length %u exceeds the maximum %u",
                            r->name, (unsigned long long)r->pos, n, WAL_MAX_RECORD);
    }
    rc = window_fill(r, WAL_HEADER + (size_t)n, &avail);
    if (rc != KV_OK) return rc;
    if (avail < WAL_HEADER + (size_t)n) return end_torn(r, "record runs past the end of the file");

    h = r->buf + (r->pos - r->buf_off);
    if (kv_checksum(h + 4, 4 + (size_t)n) != want_sum) {
        /* The last record of the file may be a write cut short by a crash; anything earlier is damage. */
        bool last = avail == WAL_HEADER + (size_t)n;
        if (last) {
            uint64_t size;
            rc = file_size(r, &size);
            if (rc != KV_OK) return rc;
            last = end >= size;
        }
        /* ... also when nothing but zeros follows it: a record cut short in space allocated ahead */
        if (!last) {
            rc = rest_is_zero(r, end, &last);
            if (rc != KV_OK) return rc;
        }
        if (last) return end_torn(r, "checksum mismatch in the last record");
        r->seen_sum = kv_checksum(h, WAL_HEADER + (size_t)n);
        r->seen_len = WAL_HEADER + (size_t)n;
        return kv_set_error(KV_ECORRUPT, "%s: corrupt record at offset %llu: checksum mismatch (length %u)",
                            r->name, (unsigned long long)r->pos, n);
    }
    *payload = h + WAL_HEADER;
    *len = n;
    *offset = r->pos;
    r->pos = end;
    return KV_OK;
}

/* A reader may follow a log that a writer is still filling, and a writer by offset (wal_writer_open_ahead) fills space
 * that already exists: the window may hold zeros read just before the writer's bytes landed, while the bytes after it
 * are read later. A re-read can itself catch a write in progress (part of a record, and the next group after it by
 * the time the rest is looked at). So what looks like damage is read again from the file until the record's bytes
 * read the same twice (a record once written never changes), at most REREAD_MAX times, before it is reported. */
#define REREAD_MAX 8
int wal_read(wal_reader *r, const uint8_t **payload, size_t *len, uint64_t *offset) {
    int rc = read_record(r, payload, len, offset);
    for (int i = 0; rc == KV_ECORRUPT && i < REREAD_MAX; i++) {
        uint32_t sum = r->seen_sum;
        size_t n = r->seen_len;
        r->buf_off = r->pos;
        r->len = 0;
        rc = read_record(r, payload, len, offset);
        if (rc == KV_ECORRUPT && r->seen_sum == sum && r->seen_len == n) break; /* the same bytes twice: damage */
    }
    return rc;
}

/* Does [from, to) of the file hold only zeros? */
static int range_is_zero(wal_reader *r, uint64_t from, uint64_t to, bool *zero) {
    uint8_t piece[LOST_PAGE];
    *zero = true;
    while (from < to && *zero) {
        size_t want = to - from < sizeof piece ? (size_t)(to - from) : sizeof piece, got = 0;
        int rc = r->env->read_at(r->env, r->file, from, piece, want, &got);
        if (rc != KV_OK) return rc;
        if (got < want) { /* the file shrank meanwhile: nothing to judge, so no lost page */
            *zero = false;
            return KV_OK;
        }
        for (size_t i = 0; i < got && *zero; i++)
            if (piece[i]) *zero = false;
        from += got;
    }
    return KV_OK;
}

/* The header at r->pos runs into the next page, and its first k (< WAL_HEADER) bytes, those before that page, read as
 * zeros: is that a lost page, or zeros that damage (or a record) left there? A few zero bytes are weak evidence, so:
 * k >= 4 covers the whole checksum, which no record has as zero but one in 2^32; for k < 4 the length is whole, and
 * the record's own checksum must match the stored one in every byte the page did not take (the record is whole but
 * for the lost bytes). h: the header as read (NULL: unread). */
static bool header_head_lost(wal_reader *r, const uint8_t *h, size_t k) {
    if (k >= 4) return true;
    if (!h) return false;
    uint32_t n = get_fixed32(h + 4);
    /* wal_read left the record in the window when it judged its checksum (a bad length leaves only the header) */
    size_t skip = r->pos >= r->buf_off ? (size_t)(r->pos - r->buf_off) : SIZE_MAX;
    if (n > WAL_MAX_RECORD || skip > r->len || r->len - skip < WAL_HEADER + (size_t)n) return false;
    const uint8_t *rec = r->buf + skip;
    if (memcmp(rec, h, WAL_HEADER) != 0) return false;
    uint32_t sum = kv_checksum(rec + 4, 4 + (size_t)n);
    for (size_t j = k; j < 4; j++)
        if (h[j] != (uint8_t)(sum >> (8 * j))) return false;
    return true;
}

int wal_reader_damage_is_lost_page(wal_reader *r, bool *lost) {
    *lost = false;
    uint64_t size;
    int rc = file_size(r, &size);
    if (rc != KV_OK) return rc;
    uint64_t pos = r->pos, end = pos + WAL_HEADER;
    uint8_t h[WAL_HEADER];
    size_t got = 0;
    rc = r->env->read_at(r->env, r->file, pos, h, sizeof h, &got);
    if (rc != KV_OK) return rc;
    if (got == sizeof h && get_fixed32(h + 4) <= WAL_MAX_RECORD && pos + WAL_HEADER + get_fixed32(h + 4) <= size)
        end += get_fixed32(h + 4);
    if (end > size) end = size;
    /* Each page the record (or at least its header) touches: a lost page reads as zeros whole, or from where the
     * record starts to the page's end (the page was last written out before the record reached it). A page is
     * judged whole, also past the record's end. */
    for (uint64_t pg = pos / LOST_PAGE * LOST_PAGE; pg < end && !*lost; pg += LOST_PAGE) {
        uint64_t lo = pg < pos ? pos : pg, hi = pg + LOST_PAGE < size ? pg + LOST_PAGE : size;
        rc = range_is_zero(r, lo, hi, lost);
        if (rc != KV_OK) return rc;
        if (*lost && lo == pos && hi - lo < WAL_HEADER)
            *lost = header_head_lost(r, got == sizeof h ? h : NULL, (size_t)(hi - lo));
    }
    return KV_OK;
}

int wal_reader_data_end(wal_reader *r, uint64_t *end) {
    uint8_t piece[LOST_PAGE];
    uint64_t at = r->pos;
    *end = at;
    for (;;) {
        size_t got = 0;
        int rc = r->env->read_at(r->env, r->file, at, piece, sizeof piece, &got);
        if (rc != KV_OK) return rc;
        for (size_t i = got; i > 0; i--)
            if (piece[i - 1]) {
                *end = at + i;
                break;
            }
        if (got < sizeof piece) return KV_OK;
        at += got;
    }
}

bool wal_reader_torn(const wal_reader *r) { return r->torn; }

uint64_t wal_reader_valid_end(const wal_reader *r) { return r->pos; }

void wal_reader_close(wal_reader *r) {
    if (!r) return;
    r->env->close(r->env, r->file);
    free(r->buf);
    free(r);
}
