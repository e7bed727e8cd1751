/* test_corrupt.c — corruption tests: single flipped bytes in every kind of file of a store.
 *
 * A small store is built with data in SSTables (after a full compaction), a blob file, a manifest and a write-ahead
 * log. Then, one byte at a time (every byte of small files, a deterministic sample of offsets in larger ones), the
 * byte is flipped and the store is opened:
 *   - kv_open fails cleanly (kv_errmsg() names the damaged file), or kv_check reports a problem naming it;
 *   - every read (kv_get of every key, kv_read_range of large values, full iteration both ways) returns the correct
 *     value or an error: never a wrong value, never a key that should not be there, never a missing key without an
 *     error, never a crash.
 * The exhaustive sweep opens the store read-only (which writes nothing), so the byte is flipped in place and put
 * back afterwards; a smaller sample repeats the test read-write on a fresh copy of the store (recovery then rewrites
 * the log into a table, and a full compaction runs over the damaged files).
 *
 * The known limit of the record-log format (wal.h), shared by the write-ahead log and the manifest: a record is
 * "torn" — the trace of a crash in the middle of an append, dropped silently at recovery — when its length runs past
 * the end of the file, or when it is the last record of the file and its checksum fails. So a flipped byte in the
 * length field of any record that makes it run past the end, or any flipped byte of the last record, reads as a torn
 * tail and silently ends the log there. That is the expected behaviour, not a bug: a reader cannot tell it from a
 * crash mid-append. For the WAL the test then requires that the store holds exactly the batches before the damaged
 * record (all of them, whole, and none after), for the manifest (whose last record here only moves the log number
 * past a log that no longer exists) that nothing at all is lost. Blob files have the same rule for their last chunk
 * (a killed process may leave part of one), except that kv_check still reports such a tail when a value references
 * the record it cuts; here the last record is referenced, so every blob flip is reported.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coding.h"
#include "kv.h"
#include "model.h"
#include "t.h"

#define NKEYS 400
#define NWAL 12 /* batches in the write-ahead log */

static void store_options(kv_options *o, bool read_only) {
    kv_options_init(o);
    o->memtable_bytes = 256 << 10; /* the log's batches stay in the log */
    o->table_bytes = 8 << 10;      /* several tables */
    o->block_bytes = 512;
    o->blob_threshold = 1024;
    o->blob_page_extents = 4; /* "paged" below gets a paged reference */
    o->block_cache_bytes = 64 << 10;
    o->background_threads = false;
    o->read_only = read_only;
}

/* ---- files -------------------------------------------------------------------------------------------------------- */

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
    *n = fread(buf, 1, (size_t)len, f);
    fclose(f);
    return buf;
}

/* Write data[0..n) as the whole file at path (created). */
static bool spill(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static bool put_byte(const char *path, uint64_t off, uint8_t b) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) return false;
    bool ok = pwrite(fd, &b, 1, (off_t)off) == 1;
    close(fd);
    return ok;
}

static bool copy_dir(const char *src, const char *dst) {
    if (mkdir(dst, 0700) != 0) return false;
    DIR *d = opendir(src);
    if (!d) return false;
    struct dirent *e;
    bool ok = true;
    while ((e = readdir(d)) && ok) {
        if (e->d_name[0] == '.') continue;
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        size_t n;
        uint8_t *data = slurp(a, &n);
        FILE *f = data ? fopen(b, "wb") : NULL;
        ok = f && fwrite(data, 1, n, f) == n;
        if (f) fclose(f);
        free(data);
    }
    closedir(d);
    return ok;
}

/* Names of the store's files with the given ending (".sst", ".log", ".blob", or a prefix "MANIFEST-"). */
static int list_files(const char *dir, const char *pattern, bool prefix, char names[][64], int max) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        size_t l = strlen(e->d_name), pl = strlen(pattern);
        bool match = prefix ? strncmp(e->d_name, pattern, pl) == 0
                            : l > pl && strcmp(e->d_name + l - pl, pattern) == 0;
        if (match && l < 64) memcpy(names[n++], e->d_name, l + 1);
    }
    closedir(d);
    /* sorted, so that the sample is deterministic */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char tmp[64];
            memcpy(tmp, names[j], 64);
            memcpy(names[j], names[j - 1], 64);
            memcpy(names[j - 1], tmp, 64);
        }
    return n;
}

/* ---- the store and what it must hold ------------------------------------------------------------------------------- */

static char base_dir[512];
static char *all_keys[NKEYS + NWAL * 4];
static size_t nall;
static model wal_models[NWAL + 1]; /* [j]: the state after the first j batches of the log */
static bool built;

static void add_key(const char *k) {
    for (size_t i = 0; i < nall; i++)
        if (strcmp(all_keys[i], k) == 0) return;
    all_keys[nall++] = strdup(k);
}

static size_t make_value(uint64_t seed, char *v, size_t cap) {
    uint64_t rs = seed * 7919 + 1;
    size_t n = t_rand(&rs) % 16 == 0 ? 1200 + t_rand(&rs) % 2500 : 8 + t_rand(&rs) % 90; /* some go to blob files */
    if (n > cap) n = cap;
    for (size_t i = 0; i < n; i++) v[i] = (char)('!' + t_rand(&rs) % 90);
    return n;
}

/* Session 1: tables and a blob file. Session 2: a log of NWAL batches (overwrites, new keys, deletes). */
static void build_store(void) {
    if (built) return;
    snprintf(base_dir, sizeof base_dir, "%s/base", t_tmpdir());
    kv_options o;
    store_options(&o, false);
    kv_db *db;
    CHECK_OK(kv_open(base_dir, &o, &db));
    model m = {0};
    char k[32], v[4000];
    for (int i = 0; i < NKEYS; i++) {
        snprintf(k, sizeof k, "key%05d", i);
        size_t n = make_value((uint64_t)i, v, sizeof v);
        CHECK_OK(kv_put(db, k, strlen(k), v, n, 0));
        model_put(&m, k, strlen(k), v, n);
        add_key(k);
    }
    /* a large value fragmented by small writes: its reference is paged, its pages are blob records */
    static char pv[6000];
    for (size_t i = 0; i < sizeof pv; i++) pv[i] = (char)('a' + i % 26);
    CHECK_OK(kv_put(db, "paged", 5, pv, sizeof pv, 0));
    kv_batch *pb;
    CHECK_OK(kv_batch_new(&pb));
    for (int i = 0; i < 30; i++) {
        size_t off = (size_t)(i * 997) % (sizeof pv - 40);
        memset(pv + off, '0' + i % 10, 40);
        kv_batch_clear(pb);
        CHECK_OK(kv_batch_write_at(pb, 0, "paged", 5, off, pv + off, 40));
        CHECK_OK(kv_write(db, pb, 0, NULL));
    }
    kv_batch_free(pb);
    model_put(&m, "paged", 5, pv, sizeof pv);
    add_key("paged");
    for (int i = 0; i < NKEYS; i += 9) {
        snprintf(k, sizeof k, "key%05d", i);
        CHECK_OK(kv_delete(db, k, strlen(k), 0));
        model_del(&m, k, strlen(k));
    }
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK(st.blob_files >= 1);
    CHECK_OK(kv_close(db));
    kv_free(db);

    CHECK_OK(kv_open(base_dir, &o, &db));
    wal_models[0] = model_copy(&m);
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    for (int j = 0; j < NWAL; j++) {
        kv_batch_clear(b);
        for (int x = 0; x < 4; x++) {
            int which = (j * 37 + x * 101) % NKEYS;
            if (x == 3) {
                snprintf(k, sizeof k, "key%05d", which);
                CHECK_OK(kv_batch_delete(b, k, strlen(k)));
                model_del(&m, k, strlen(k));
                continue;
            }
            if (x == 2) snprintf(k, sizeof k, "wal%02d", j);
            else snprintf(k, sizeof k, "key%05d", which);
            int n = snprintf(v, sizeof v, "batch %d op %d", j, x);
            CHECK_OK(kv_batch_put(b, k, strlen(k), v, (size_t)n));
            model_put(&m, k, strlen(k), v, (size_t)n);
            add_key(k);
        }
        CHECK_OK(kv_write(db, b, 0, NULL));
        wal_models[j + 1] = model_copy(&m);
    }
    kv_batch_free(b);
    add_key("nothere"); /* never written */
    CHECK_OK(kv_close(db));
    kv_free(db);
    model_free(&m);

    char logs[4][64];
    CHECK_EQ(list_files(base_dir, ".log", false, logs, 4), 1);
    /* the pristine store checks clean */
    store_options(&o, true);
    CHECK_OK(kv_open(base_dir, &o, &db));
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
    built = true;
}

/* ---- one damaged store ----------------------------------------------------------------------------------------------- */

typedef struct named {
    const char *file;
    bool named;
    uint64_t problems;
    char first[300];
    char other[300];        /* the first problem reported under another file's name */
} named;

static void on_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    named *n = ctx;
    if (n->problems++ == 0) snprintf(n->first, sizeof n->first, "%s at %llu: %s", file, (unsigned long long)off, what);
    if (file && strstr(file, n->file)) n->named = true;
    else if (!n->other[0]) snprintf(n->other, sizeof n->other, "%s at %llu: %s", file, (unsigned long long)off, what);
}

/* Every read returns what `want` holds, or an error. *errors counts reads that failed. */
static bool verify_reads(kv_db *db, const model *want, int *errors, char *err, size_t errn) {
    for (size_t i = 0; i < nall; i++) {
        const char *k = all_keys[i];
        const model_entry *e = model_get(want, k, strlen(k));
        kv_buf v;
        int rc = kv_get(db, NULL, k, strlen(k), &v);
        if (rc == KV_OK) {
            bool ok = e && v.len == e->vlen && memcmp(v.data, e->val, e->vlen) == 0;
            kv_buf_free(&v);
            if (!ok) {
                snprintf(err, errn, "kv_get(%s) returned a wrong value%s", k, e ? "" : " (the key is absent)");
                return false;
            }
        } else if (rc == KV_ENOTFOUND) {
            if (e) {
                snprintf(err, errn, "kv_get(%s): not found, with no error (%s)", k, kv_errmsg());
                return false;
            }
        } else {
            (*errors)++;
        }
        if (e && e->vlen > 1100) {
            char part[300];
            size_t got = 0;
            rc = kv_read_range(db, NULL, k, strlen(k), 1000, part, sizeof part, &got);
            if (rc == KV_OK && (got != (e->vlen - 1000 < sizeof part ? e->vlen - 1000 : sizeof part) ||
                                memcmp(part, e->val + 1000, got) != 0)) {
                snprintf(err, errn, "kv_read_range(%s) returned wrong bytes", k);
                return false;
            }
            if (rc == KV_ENOTFOUND) {
                snprintf(err, errn, "kv_read_range(%s): not found, with no error", k);
                return false;
            }
            if (rc) (*errors)++;
        }
    }
    /* iteration, both ways: the model's entries in order, until the end or an error */
    for (int dir = 0; dir < 2; dir++) {
        kv_iter *it;
        int rc = kv_iter_new(db, NULL, &it);
        if (rc) {
            (*errors)++;
            continue;
        }
        size_t i = 0;
        if (dir == 0) kv_iter_seek_first(it);
        else kv_iter_seek_last(it);
        for (; kv_iter_valid(it); dir == 0 ? kv_iter_next(it) : kv_iter_prev(it), i++) {
            size_t kl;
            const void *k = kv_iter_key(it, &kl);
            if (i >= want->n) {
                snprintf(err, errn, "iteration yields more keys than there are");
                kv_iter_free(it);
                return false;
            }
            const model_entry *e = &want->e[dir == 0 ? i : want->n - 1 - i];
            if (kl != e->klen || memcmp(k, e->key, kl) != 0) {
                snprintf(err, errn, "iteration (%s) yields key %.*s where %.*s was expected",
                         dir ? "backward" : "forward", (int)kl, (const char *)k, (int)e->klen, (const char *)e->key);
                kv_iter_free(it);
                return false;
            }
            const void *v;
            uint64_t vl;
            rc = kv_iter_value(it, &v, &vl);
            if (rc) {
                (*errors)++;
                continue;
            }
            if (vl != e->vlen || memcmp(v, e->val, vl) != 0) {
                snprintf(err, errn, "iteration yields a wrong value for %.*s", (int)kl, (const char *)k);
                kv_iter_free(it);
                return false;
            }
        }
        rc = kv_iter_status(it);
        kv_iter_free(it);
        if (rc == KV_OK && i != want->n) {
            snprintf(err, errn, "iteration (%s) ended cleanly after %zu of %zu keys", dir ? "backward" : "forward", i,
                     want->n);
            return false;
        }
        if (rc) (*errors)++;
    }
    return true;
}

/* What a damaged file may legitimately do. */
typedef enum { EXPECT_DETECTED, EXPECT_WAL, EXPECT_MANIFEST } expect_kind;

typedef struct damage {
    const char *file;      /* name in the store */
    expect_kind kind;
    uint64_t off;          /* of the flipped byte */
    int wal_record;        /* EXPECT_WAL/MANIFEST: the record holding the byte */
    bool may_be_torn;      /* a flip there may read as a torn tail */
} damage;

typedef struct tally {
    int opens_failed, detected, torn, read_errors, runs;
} tally;

/* Open the (damaged) store in dir and judge it. */
static bool judge(const char *dir, const damage *d, bool read_only, tally *ty, char *err, size_t errn) {
    kv_options o;
    store_options(&o, read_only);
    kv_db *db;
    ty->runs++;
    int rc = kv_open(dir, &o, &db);
    if (rc != KV_OK) {
        if (!strstr(kv_errmsg(), d->file)) {
            snprintf(err, errn, "kv_open failed (%s) without naming %s: \"%s\"", kv_strerror(rc), d->file,
                     kv_errmsg());
            return false;
        }
        ty->opens_failed++;
        return true;
    }
    named n = {d->file, false, 0, "", ""};
    int crc = kv_check(db, on_problem, NULL, &n, NULL);
    /* A damaged table is reported under its own name only: the passes after the table pass (blob references) stop
     * at it without reporting it a second time. */
    if (n.other[0] && strstr(d->file, ".sst")) {
        snprintf(err, errn, "kv_check reported the damage of %s under another name too: %s", d->file, n.other);
        kv_free(db);
        return false;
    }
    const model *want = &wal_models[NWAL];
    bool silent = crc == KV_OK && n.problems == 0;
    if (!silent && !n.named) {
        snprintf(err, errn, "kv_check found %llu problem(s), none naming %s (first: %s)",
                 (unsigned long long)n.problems, d->file, n.first);
        kv_free(db);
        return false;
    }
    if (silent) {
        if (!d->may_be_torn) {
            snprintf(err, errn, "the damage went unnoticed: kv_open and kv_check succeeded");
            kv_free(db);
            return false;
        }
        /* a torn tail: the log ends before the damaged record */
        if (d->kind == EXPECT_WAL) want = &wal_models[d->wal_record];
        ty->torn++;
    } else {
        ty->detected++;
    }
    int errors = 0;
    bool ok = verify_reads(db, want, &errors, err, errn);
    ty->read_errors += errors;
    if (ok && !read_only) {
        /* a full compaction over the damage: it fails, or it succeeds without changing what reads return */
        (void)kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL);
        ok = verify_reads(db, want, &errors, err, errn);
    }
    kv_free(db);
    if (ok && silent && errors) {
        snprintf(err, errn, "%d read error(s) although the store checks clean", errors);
        ok = false;
    }
    return ok;
}

/* Offsets to damage in a file of n bytes: all of a small file, else the first and last bytes and a sample. */
static size_t pick_offsets(size_t n, size_t sample, uint64_t seed, uint64_t *out) {
    if (n <= sample) {
        for (size_t i = 0; i < n; i++) out[i] = i;
        return n;
    }
    size_t k = 0;
    for (size_t i = 0; i < 48; i++) out[k++] = i;
    for (size_t i = n - 96; i < n; i++) out[k++] = i;
    uint64_t rs = seed;
    while (k < sample) out[k++] = 48 + t_rand(&rs) % (n - 144);
    return k;
}

/* Blob files: the headers of the last chunks too (a length that runs past the end makes a torn-looking tail). */
static size_t add_blob_chunk_headers(const uint8_t *data, size_t n, uint64_t *out, size_t k) {
    uint64_t starts[3] = {0, 0, 0};
    int m = 0;
    for (size_t pos = 16; pos + 8 <= n; m++) {
        starts[m % 3] = pos;
        uint32_t len = (uint32_t)data[pos + 4] | (uint32_t)data[pos + 5] << 8 | (uint32_t)data[pos + 6] << 16 |
                       (uint32_t)data[pos + 7] << 24;
        pos += 8 + (size_t)len;
    }
    for (int i = 0; i < 3 && i < m; i++)
        for (uint64_t b = 0; b < 8; b++) out[k++] = starts[i] + b;
    return k;
}

/* Record boundaries of a record log (fixed32 checksum | fixed32 length | payload). */
/* Where the file's run of trailing zeros starts (n: it ends in a non-zero byte). */
static size_t zero_tail(const uint8_t *data, size_t n) {
    while (n > 0 && data[n - 1] == 0) n--;
    return n;
}

/* The record holding byte off (-1: none), the number of records, and where the records end (*data_end): a
 * write-ahead log goes on in zeros allocated ahead (from ztail on), which hold no record. */
static int record_of(const uint8_t *data, size_t n, size_t ztail, uint64_t off, int *nrec, uint64_t *rec_start,
                     uint64_t *data_end) {
    int idx = -1, count = 0;
    size_t pos = 0;
    for (; pos + 8 <= n && pos < ztail;) {
        uint32_t len = (uint32_t)data[pos + 4] | (uint32_t)data[pos + 5] << 8 | (uint32_t)data[pos + 6] << 16 |
                       (uint32_t)data[pos + 7] << 24;
        if (off >= pos && off < pos + 8 + len) {
            idx = count;
            *rec_start = pos;
        }
        count++;
        pos += 8 + (size_t)len;
    }
    *nrec = count;
    *data_end = pos < n ? pos : n;
    return idx;
}

/* Damage every chosen byte of one file, one at a time. */
static void sweep(const char *name, expect_kind kind, size_t sample, size_t rw_sample, tally *ty) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", base_dir, name);
    size_t n;
    uint8_t *orig = slurp(path, &n);
    CHECK(orig && n > 0);
    uint64_t *offs = malloc(((n > sample ? sample : n) + 24) * sizeof *offs);
    uint64_t seed = t_seed();
    for (const char *p = name; *p; p++) seed = seed * 31 + (uint8_t)*p;
    /* zeros allocated ahead at the end of a write-ahead log: their first 264 bytes (a header's worth and more right
     * after the last record), and their last byte */
    size_t ztail = zero_tail(orig, n), n_swept = kind == EXPECT_WAL && ztail + 264 < n ? ztail + 264 : n;
    size_t noff = pick_offsets(n_swept, sample, seed, offs);
    if (n_swept < n) offs[noff++] = n - 1;
    if (strstr(name, ".blob") && n > sample) noff = add_blob_chunk_headers(orig, n, offs, noff);
    uint64_t rs = seed ^ 0xabcdef;
    char err[600];
    for (size_t i = 0; i < noff && !t_failed(); i++) {
        uint64_t off = offs[i];
        uint8_t mask = (uint8_t)(1 + t_rand(&rs) % 255);
        damage d = {name, kind, off, -1, false};
        if (kind != EXPECT_DETECTED) {
            int nrec;
            uint64_t start = 0, data_end;
            d.wal_record = record_of(orig, n, ztail, off, &nrec, &start, &data_end);
            if (d.wal_record == nrec - 1) d.may_be_torn = true; /* the last record: a bad checksum reads as torn */
            if (off >= data_end) { /* in the zeros after the records: nothing is lost, or the damage is reported */
                d.wal_record = nrec;
                d.may_be_torn = true;
            }
            if (d.wal_record >= 0 && off >= start + 4 && off < start + 8) {
                /* a length byte: torn if the new length runs past the end of the file */
                uint8_t h[4];
                memcpy(h, orig + start + 4, 4);
                h[off - start - 4] ^= mask;
                uint64_t len = (uint64_t)h[0] | (uint64_t)h[1] << 8 | (uint64_t)h[2] << 16 | (uint64_t)h[3] << 24;
                /* ... or ends where only zeros follow */
                if (start + 8 + len > n || start + 8 + len >= ztail) d.may_be_torn = true;
            }
        }
        if (strstr(name, ".blob")) {
            /* the last chunk's length running past the end reads as a torn append (kv_check then reports it only
             * if a value references that record) */
            uint64_t last = 0;
            for (size_t pos = 16; pos + 8 <= n;) {
                last = pos;
                pos += 8 + ((size_t)orig[pos + 4] | (size_t)orig[pos + 5] << 8 | (size_t)orig[pos + 6] << 16 |
                            (size_t)orig[pos + 7] << 24);
            }
            if (last && off >= last + 4 && off < last + 8) {
                uint8_t h[4];
                memcpy(h, orig + last + 4, 4);
                h[off - last - 4] ^= mask;
                uint64_t len = (uint64_t)h[0] | (uint64_t)h[1] << 8 | (uint64_t)h[2] << 16 | (uint64_t)h[3] << 24;
                if (last + 8 + len > n) d.may_be_torn = true;
            }
        }
        /* read-only, in place */
        CHECK(put_byte(path, off, orig[off] ^ mask));
        bool ok = judge(base_dir, &d, true, ty, err, sizeof err);
        CHECK(put_byte(path, off, orig[off]));
        CHECK_MSG(ok, "%s: byte %llu ^ 0x%02x (read-only open): %s", name, (unsigned long long)off, mask, err);
        /* read-write, on a copy, for a sample */
        if (i % (noff / rw_sample + 1) == 0) {
            char copy[600];
            snprintf(copy, sizeof copy, "%s/rw", t_tmpdir());
            CHECK(copy_dir(base_dir, copy));
            char cpath[1024];
            snprintf(cpath, sizeof cpath, "%s/%s", copy, name);
            CHECK(put_byte(cpath, off, orig[off] ^ mask));
            ok = judge(copy, &d, false, ty, err, sizeof err);
            t_rmrf(copy);
            CHECK_MSG(ok, "%s: byte %llu ^ 0x%02x (read-write open): %s", name, (unsigned long long)off, mask, err);
        }
    }
    free(offs);
    free(orig);
}

static void report(const char *what, const tally *ty) {
    printf("# %s: %d damaged opens: %d refused by kv_open, %d found by kv_check, %d read as a torn tail; %d read "
           "errors\n",
           what, ty->runs, ty->opens_failed, ty->detected, ty->torn, ty->read_errors);
}

TEST(test_corrupt_sst) {
    build_store();
    CHECK(built);
    char names[64][64];
    int n = list_files(base_dir, ".sst", false, names, 64);
    CHECK(n >= 2);
    tally ty = {0};
    /* a sample of every table, a larger one of the first */
    for (int i = 0; i < n && !t_failed(); i++) sweep(names[i], EXPECT_DETECTED, i == 0 ? 800 : 250, 6, &ty);
    report("tables", &ty);
    CHECK_EQ(ty.torn, 0);
}

TEST(test_corrupt_blob) {
    build_store();
    CHECK(built);
    char names[8][64];
    int n = list_files(base_dir, ".blob", false, names, 8);
    CHECK(n >= 1);
    tally ty = {0};
    for (int i = 0; i < n && !t_failed(); i++) sweep(names[i], EXPECT_DETECTED, 500, 10, &ty);
    report("blob files", &ty);
    CHECK(ty.read_errors > 0); /* damaged values were read and refused */
}

TEST(test_corrupt_wal) {
    build_store();
    CHECK(built);
    char names[4][64];
    CHECK_EQ(list_files(base_dir, ".log", false, names, 4), 1);
    tally ty = {0};
    sweep(names[0], EXPECT_WAL, 100000, 40, &ty); /* every byte */
    report("write-ahead log", &ty);
    CHECK(ty.opens_failed > 0 && ty.torn > 0);
}

TEST(test_corrupt_manifest) {
    build_store();
    CHECK(built);
    char names[4][64];
    CHECK_EQ(list_files(base_dir, "MANIFEST-", true, names, 4), 1);
    tally ty = {0};
    sweep(names[0], EXPECT_MANIFEST, 100000, 40, &ty); /* every byte */
    report("manifest", &ty);
    CHECK(ty.opens_failed > 0);
}

TEST(test_corrupt_current) {
    build_store();
    CHECK(built);
    tally ty = {0};
    sweep("CURRENT", EXPECT_DETECTED, 100, 16, &ty);
    report("CURRENT", &ty);
    CHECK_EQ(ty.opens_failed, ty.runs);
}

/* ---- sequence numbers out of range ------------------------------------------------------------------------------- */

/* Append one record-log record holding payload to the file at path (docs/format.md, "Record log"). */
/* A fresh store in a new directory (its path in dir) holding "a" = "1", closed: its log and manifest exist. */
static bool tiny_store(const kv_options *o, char *dir, size_t n) {
    snprintf(dir, n, "%s", t_tmpdir());
    kv_db *db;
    if (kv_open(dir, o, &db)) return false;
    bool ok = kv_put(db, "a", 1, "1", 1, 0) == KV_OK && kv_close(db) == KV_OK;
    kv_free(db);
    return ok;
}

/* The last name in dir that starts with prefix (MANIFEST-, BATCHLOG-: the newest file of that kind). */
static bool newest_with_prefix(const char *dir, const char *prefix, char *out, size_t n) {
    DIR *d = opendir(dir);
    if (!d) return false;
    struct dirent *de;
    out[0] = 0;
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, prefix, strlen(prefix)) && strcmp(de->d_name, out) > 0)
            snprintf(out, n, "%s", de->d_name);
    closedir(d);
    return out[0] != 0;
}

static bool append_record(const char *path, const uint8_t *payload, size_t n) {
    uint64_t end;
    if (!t_log_end(path, true, &end)) return false; /* right after the last record, not after the zeros */
    uint8_t hdr[8];
    put_fixed32(hdr + 4, (uint32_t)n);
    put_fixed32(hdr, kv_checksum2(hdr + 4, 4, payload, n));
    FILE *f = fopen(path, "ab");
    if (!f) return false;
    bool ok = fwrite(hdr, 1, 8, f) == 8 && fwrite(payload, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

TEST(test_corrupt_sequence_out_of_range) {
    /* Sequence numbers are 56 bits (the trailer keeps seq << 8). A log record, or a manifest's LAST_SEQ, above that
     * passes its checksum (a collision, or a file not written by us) but is damage: the open must report it, naming
     * the file, not abort on the memtable's assertion, and not take it as the store's last sequence. A store whose
     * last sequence is the largest one opens and reads, but refuses writes: the next one has no sequence left. A
     * BATCHLOG_FLOOR above 2^56 is damage too (it would evict every batch and delete the batch log at open). */
    kv_options o;
    kv_options_init(&o);
    o.background_threads = false;
    const uint64_t max_seq = (1ull << 56) - 1;
    for (int where = 0; where < 4; where++) {
        char dir[600], path[1200], name[300];
        kv_db *db;
        CHECK(tiny_store(&o, dir, sizeof dir));
        uint8_t rec[64], *p = rec;
        if (where == 0) { /* a batch record: sequence 2^56, one put of "b" */
            CHECK(t_newest_file(dir, ".log", name, sizeof name));
            put_fixed64(p, max_seq + 1);
            p = put_varint64(p + 8, 1700000000000ull);
            p = put_varint64(p, 1);
            *p++ = 1;
            p = put_varint64(p, 2);
            *p++ = 0;
            *p++ = 'b';
            p = put_varint64(p, 1);
            *p++ = '2';
        } else if (where < 3) { /* a manifest edit: LAST_SEQ 2^56, or 2^56 - 1 */
            CHECK(newest_with_prefix(dir, "MANIFEST-", name, sizeof name));
            p = put_varint64(p, 3);
            p = put_varint64(p, where == 1 ? max_seq + 1 : max_seq);
        } else { /* BATCHLOG_FLOOR 2^56 + 1: it would evict every batch, and delete the batch log's files at open */
            CHECK(newest_with_prefix(dir, "MANIFEST-", name, sizeof name));
            p = put_varint64(p, 8);
            p = put_varint64(p, max_seq + 2);
        }
        snprintf(path, sizeof path, "%s/%s", dir, name);
        CHECK(append_record(path, rec, (size_t)(p - rec)));
        int rc = kv_open(dir, &o, &db);
        if (where != 2) {
            if (rc == KV_OK) { /* should not happen; then at least no write may reach the memtable */
                kv_put(db, "c", 1, "3", 1, 0);
                kv_close(db);
                kv_free(db);
            }
            CHECK_EQ(rc, KV_ECORRUPT);
            CHECK_MSG(strstr(kv_errmsg(), name), "%s", kv_errmsg());
            continue;
        }
        CHECK_OK(rc);
        kv_buf v = {0};
        CHECK_OK(kv_get(db, NULL, "a", 1, &v));
        CHECK_MEM(v.data, v.len, "1", 1);
        kv_buf_free(&v);
        CHECK_EQ(kv_put(db, "c", 1, "3", 1, 0), KV_ECORRUPT);
        CHECK_EQ(kv_get(db, NULL, "c", 1, &v), KV_ENOTFOUND);
        CHECK_OK(kv_close(db));
        kv_free(db);
    }
}

/* A damaged batch log (change feed) must not keep the store from opening, and must never hand out a wrong batch:
 * batches before the damage read back exactly, the damaged one and those after it in that file are KV_ECORRUPT
 * naming the file (they used to be KV_EEVICTED, as if pruned), kv_check reports the file, and open keeps it. A
 * length made to run past the end reads as a torn tail (the record log's limit, at the top of this file); then the
 * batches after it are KV_EEVICTED. The key-value data is untouched. */
TEST(test_corrupt_batch_log) {
    kv_options o;
    kv_options_init(&o);
    o.background_threads = false;
    o.batch_log_max_batches = 1000;
    char dir[600], name[300], path[1200];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    enum { NB = 40 };
    uint64_t seqs[NB];
    for (int i = 0; i < NB; i++) {
        char k[32], v[64];
        snprintf(k, sizeof k, "key%03d", i);
        snprintf(v, sizeof v, "value-of-batch-%03d", i);
        CHECK_OK(kv_put(db, k, strlen(k), v, strlen(v), 0));
        seqs[i] = kv_current_sequence(db);
    }
    /* into a table: the write-ahead log would otherwise give the batches back to the batch log at the next open */
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_close(db));
    kv_free(db);
    CHECK(newest_with_prefix(dir, "BATCHLOG-", name, sizeof name));
    if (t_failed()) return;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t n;
    uint8_t *data = slurp(path, &n);
    CHECK(data && n > 100);
    if (t_failed()) return;
    /* every byte of the file's middle, one at a time */
    int damaged_reported = 0, torn = 0;
    /* the first record's payload (a damaged first record used to make the file look empty, and open deleted it),
     * then a run of the file's middle */
    size_t offs[8 + 64], noffs = 0;
    for (size_t off = 8; off < 16; off++) offs[noffs++] = off;
    for (size_t off = n / 2; off < n / 2 + 64 && off < n; off++) offs[noffs++] = off;
    for (size_t oi = 0; oi < noffs; oi++) {
        size_t off = offs[oi];
        CHECK(put_byte(path, off, data[off] ^ 0x5a));
        int rc = kv_open(dir, &o, &db);
        CHECK_MSG(rc == KV_OK, "offset %zu: kv_open: %s (%s)", off, kv_strerror(rc), kv_errmsg());
        if (rc) break;
        for (int i = 0; i < NB; i++) {
            char k[32], v[64];
            snprintf(k, sizeof k, "key%03d", i);
            snprintf(v, sizeof v, "value-of-batch-%03d", i);
            kv_buf got = {0};
            CHECK_OK(kv_get(db, NULL, k, strlen(k), &got)); /* the data itself is not in the batch log */
            CHECK_MEM(got.data, got.len, v, strlen(v));
            kv_buf_free(&got);
            kv_logged_batch *b = NULL;
            int r = kv_get_batch(db, seqs[i], &b);
            if (r == KV_OK) {
                CHECK_MSG(b->sequence == seqs[i] && b->nops == 1 && b->ops[0].klen == strlen(k) &&
                              memcmp(b->ops[0].key, k, strlen(k)) == 0 && b->ops[0].vlen == strlen(v) &&
                              memcmp(b->ops[0].val, v, strlen(v)) == 0,
                          "offset %zu: batch %d read back wrong", off, i);
                kv_logged_batch_free(b);
            } else {
                CHECK_MSG(r == KV_ECORRUPT || r == KV_EEVICTED, "offset %zu: batch %d: %s (%s)", off, i,
                          kv_strerror(r), kv_errmsg());
                if (r == KV_ECORRUPT) {
                    CHECK_MSG(strstr(kv_errmsg(), name), "offset %zu: %s", off, kv_errmsg());
                    damaged_reported++;
                }
            }
        }
        named p = {.file = name};
        int crc = kv_check(db, on_problem, NULL, &p, NULL);
        bool read_as_torn = crc == KV_OK && p.problems == 0;
        if (read_as_torn) {
            /* the record log's known limit (see the top of this file): a length that now runs past the end of the
             * file reads as a torn tail, and the file ends before that record */
            torn++;
        } else {
            CHECK_MSG(crc == KV_ECORRUPT && p.named, "offset %zu: kv_check: %s, %llu problems (%s)", off,
                      kv_strerror(crc), (unsigned long long)p.problems, p.first);
        }
        CHECK_OK(kv_close(db));
        kv_free(db);
        /* A file whose damage reads as a torn tail, with no log left to give the batches after it back, has a gap
         * at the feed's top: the floor rises past the store's last batch (format.md, "Batch log") and the file,
         * wholly below it, goes. A file known to be damaged is never deleted. */
        bool kept = access(path, F_OK) == 0;
        CHECK_MSG(kept || read_as_torn, "offset %zu: the damaged file was deleted", off);
        if (kept) CHECK(put_byte(path, off, data[off]));
        else CHECK(spill(path, data, n));
    }
    CHECK(damaged_reported > 0);
    CHECK(torn < 16); /* a length field's 4 bytes per record at most */
    free(data);
}

/* Append a record holding rec to the file `name` of the store in dir, then open the store (closing it again if the
 * open succeeds): kv_open's result. */
static int append_and_open(const kv_options *o, const char *dir, const char *name, const uint8_t *rec, size_t n) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!append_record(path, rec, n)) return KV_EIO;
    kv_db *db;
    int rc = kv_open(dir, o, &db);
    if (rc == KV_OK) {
        kv_close(db);
        kv_free(db);
    }
    return rc;
}

/* File numbers name files and, in blob references, 0 means a hole: a manifest whose NEXT_FILE (or a file it lists)
 * is near 2^64 passes its checksum (a collision, or a file not written by us) but would make the numbers wrap,
 * leaving files that cleanup never deletes and, past 0, a blob file numbered like a hole. The open reports it. */
TEST(test_corrupt_file_number_out_of_range) {
    kv_options o;
    kv_options_init(&o);
    o.background_threads = false;
    for (int what = 0; what < 3; what++) {
        char dir[600], name[300];
        CHECK(tiny_store(&o, dir, sizeof dir));
        CHECK(newest_with_prefix(dir, "MANIFEST-", name, sizeof name));
        uint8_t rec[32], *p = rec;
        p = put_varint64(p, what == 0 ? 2 : what == 1 ? 1 : 6); /* NEXT_FILE, LOG_NUMBER, NEW_BLOB */
        p = put_varint64(p, UINT64_MAX);
        int rc = append_and_open(&o, dir, name, rec, (size_t)(p - rec));
        CHECK_MSG(rc == KV_ECORRUPT, "field %d = 2^64 - 1: kv_open: %s", what, kv_strerror(rc));
        CHECK_MSG(strstr(kv_errmsg(), name), "%s", kv_errmsg());
    }
}

/* Append to p a manifest NEW_FILE entry: table `no` at `level`, sequences [min_seq, max_seq], user keys [lo, hi]. */
static uint8_t *put_new_file(uint8_t *p, int level, uint64_t no, uint64_t min_seq, uint64_t max_seq, const char *lo,
                             const char *hi) {
    p = put_varint64(p, 4); /* NEW_FILE */
    p = put_varint64(p, (uint64_t)level);
    p = put_varint64(p, no);
    p = put_varint64(p, 4096); /* size */
    p = put_varint64(p, 10);   /* entries */
    p = put_varint64(p, 0);    /* tombstones */
    p = put_varint64(p, min_seq);
    p = put_varint64(p, max_seq);
    for (int end = 0; end < 2; end++) {
        const char *k = end ? hi : lo;
        size_t n = strlen(k);
        p = put_varint64(p, n + 9); /* keyspace byte, key, trailer */
        *p++ = 0;
        memcpy(p, k, n);
        p += n;
        put_fixed64(p, ((end ? min_seq : max_seq) << 8) | 1);
        p += 8;
    }
    return p;
}

/* A checksum-valid manifest that describes what no store could be: a table listed twice, two tables of one level
 * whose key ranges overlap (lookups read one table per level), a sequence range or key range the wrong way round.
 * Opened, such a store returned wrong answers or deleted a table still listed; kv_open must refuse it, naming the
 * manifest. */
TEST(test_corrupt_manifest_describes_an_impossible_version) {
    kv_options o;
    kv_options_init(&o);
    o.background_threads = false;
    const char *want[] = {"listed twice", "overlapping key ranges", "bad sequence range", "smallest key after largest",
                          "listed twice"};
    for (int what = 0; what < 5; what++) {
        char dir[600], name[300];
        CHECK(tiny_store(&o, dir, sizeof dir));
        CHECK(newest_with_prefix(dir, "MANIFEST-", name, sizeof name));
        uint8_t rec[256], *p = rec;
        if (what == 0) { /* the same table added twice, in two levels */
            p = put_new_file(p, 1, 900, 1, 1, "a", "b");
            p = put_new_file(p, 2, 900, 1, 1, "a", "b");
        } else if (what == 1) {
            p = put_new_file(p, 1, 900, 1, 1, "a", "m");
            p = put_new_file(p, 1, 901, 1, 1, "k", "z");
        } else if (what == 2) {
            p = put_new_file(p, 1, 900, 5, 2, "a", "b");
        } else if (what == 3) {
            p = put_new_file(p, 1, 900, 1, 1, "z", "a");
        } else { /* a table number that is also a blob file's */
            p = put_new_file(p, 1, 900, 1, 1, "a", "b");
            p = put_varint64(p, 6); /* NEW_BLOB */
            p = put_varint64(p, 900);
        }
        int rc = append_and_open(&o, dir, name, rec, (size_t)(p - rec));
        CHECK_MSG(rc == KV_ECORRUPT, "case %d: kv_open: %s", what, kv_strerror(rc));
        CHECK_MSG(strstr(kv_errmsg(), name) && strstr(kv_errmsg(), want[what]), "case %d: %s", what, kv_errmsg());
    }
}

/* A store in a fresh directory (into dir) with a batch log and nb batches of one put each of "key<i>" (their
 * sequences into seqs), compacted into a table so that no log gives them back to the batch log at the next open,
 * and closed; the path of its newest batch log file into path. */
static bool batch_log_store(kv_options *o, int nb, uint64_t *seqs, char *dir, size_t dn, char *name, size_t nn,
                            char *path, size_t pn) {
    kv_options_init(o);
    o->background_threads = false;
    o->batch_log_max_batches = 1000;
    snprintf(dir, dn, "%s", t_tmpdir());
    kv_db *db;
    if (kv_open(dir, o, &db) != KV_OK) return false;
    bool ok = true;
    for (int i = 0; i < nb && ok; i++) {
        char k[16];
        snprintf(k, sizeof k, "key%d", i);
        ok = kv_put(db, k, strlen(k), "v", 1, 0) == KV_OK;
        seqs[i] = kv_current_sequence(db);
    }
    ok = ok && kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL) == KV_OK;
    ok = kv_close(db) == KV_OK && ok;
    kv_free(db);
    if (!ok || !newest_with_prefix(dir, "BATCHLOG-", name, nn)) return false;
    snprintf(path, pn, "%s/%s", dir, name);
    return true;
}

/* An empty batch log file dir/name (its path into path): for records appended with append_batch. */
static bool new_log_file(const char *dir, const char *name, char *path, size_t n) {
    snprintf(path, n, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    return f && fclose(f) == 0;
}

/* Append to the batch log file at path a batch record of sequence seq: one put of the kl bytes of key to "x". */
static bool append_batch_key(const char *path, uint64_t seq, const char *key, size_t kl) {
    kv_bytes rec = {0};
    bytes_append_fixed64(&rec, seq);
    bytes_append_varint(&rec, 1700000000000ull);
    bytes_append_varint(&rec, 1);
    uint8_t type = 1; /* a value */
    bytes_append(&rec, &type, 1);
    bytes_append_varint(&rec, kl + 1); /* the ukey: keyspace 0, then the key */
    uint8_t keyspace = 0;
    bytes_append(&rec, &keyspace, 1);
    bytes_append(&rec, key, kl);
    bytes_append_lenprefixed(&rec, "x", 1);
    bool ok = append_record(path, rec.data, rec.len);
    bytes_free(&rec);
    return ok;
}

/* The same, of a key given as a string: a well-formed record. */
static bool append_batch(const char *path, uint64_t seq, const char *key) {
    return append_batch_key(path, seq, key, strlen(key));
}

/* A batch log record that passes its checksum but cannot be what the engine wrote there, a sequence above 2^56 or
 * not above the record before it in its file, is damage: the file's readable part ends before it. The first raised
 * the floor to that sequence (every batch of the feed, and every later one, "evicted"); the second made the file's
 * range end at it (the batches after it, still in the file, "evicted": a hole). */
TEST(test_corrupt_batch_log_sequence) {
    for (int variant = 0; variant < 2; variant++) {
        kv_options o;
        char dir[600], name[300], path[1200];
        enum { NB = 5 };
        uint64_t seqs[NB];
        CHECK(batch_log_store(&o, NB, seqs, dir, sizeof dir, name, sizeof name, path, sizeof path));
        CHECK(append_batch(path, variant == 0 ? 1ull << 60 : seqs[1], "bad"));
        kv_db *db;
        CHECK_OK(kv_open(dir, &o, &db));
        for (int i = 0; i < NB; i++) {
            kv_logged_batch *b = NULL;
            int rc = kv_get_batch(db, seqs[i], &b);
            CHECK_MSG(rc == KV_OK, "variant %d: batch %d: %s (%s)", variant, i, kv_strerror(rc), kv_errmsg());
            CHECK(b->sequence == seqs[i] && b->nops == 1);
            kv_logged_batch_free(b);
        }
        CHECK_OK(kv_put(db, "after", 5, "w", 1, 0));
        kv_logged_batch *b = NULL;
        int rc = kv_get_batch(db, kv_current_sequence(db), &b);
        CHECK_MSG(rc == KV_OK, "variant %d: the batch after: %s (%s)", variant, kv_strerror(rc), kv_errmsg());
        CHECK(b->nops == 1 && b->ops[0].klen == 5 && memcmp(b->ops[0].key, "after", 5) == 0);
        kv_logged_batch_free(b);
        named p = {.file = name};
        CHECK_EQ(kv_check(db, on_problem, NULL, &p, NULL), KV_ECORRUPT);
        CHECK_MSG(p.named, "variant %d: kv_check: %s", variant, p.first);
        CHECK_OK(kv_close(db));
        kv_free(db);
    }
}

/* A batch log that holds a batch the store does not have, after a gap: the feed was off for a while, then on, and a
 * power loss took the last batches from the store's log but not from the batch log (they reach the disk on their
 * own). The gap raised the floor to that batch at open; recovery forgets the batch, but the floor stayed above the
 * store's next batch, so the batches committed next were evicted as they committed (and at every later open, until
 * the sequence passed it). The same for a record of another store, or damage, that passes its checksum. */
TEST(test_corrupt_batch_log_gap_above_the_store) {
    for (int ro = 0; ro < 2; ro++) {
        kv_options o;
        char dir[600], name[300], path[1200];
        uint64_t seqs[5];
        CHECK(batch_log_store(&o, 5, seqs, dir, sizeof dir, name, sizeof name, path, sizeof path));
        uint64_t last = seqs[4];
        CHECK(append_batch(path, last + 5, "lost"));
        kv_db *db;
        if (ro) { /* a reader of the feed: nothing past the store's last batch, nor below it, is evicted by it */
            o.read_only = true;
            CHECK_OK(kv_open(dir, &o, &db));
            kv_logged_batch *b = NULL;
            int rc = kv_get_batch(db, last, &b);
            CHECK_MSG(rc == KV_OK || rc == KV_EEVICTED, "%s (%s)", kv_strerror(rc), kv_errmsg());
            kv_logged_batch_free(b);
            kv_stats st;
            CHECK_OK(kv_get_stats(db, &st));
            CHECK_MSG(st.batch_log_oldest <= last + 1, "the oldest retained batch is %llu, past the store's next one",
                      (unsigned long long)st.batch_log_oldest);
        } else {
            CHECK_OK(kv_open(dir, &o, &db));
            CHECK_OK(kv_put(db, "after", 5, "w", 1, 0));
            CHECK_EQ(kv_current_sequence(db), last + 1);
            kv_logged_batch *b = NULL;
            int rc = kv_get_batch(db, last + 1, &b);
            CHECK_MSG(rc == KV_OK, "the batch after: %s (%s)", kv_strerror(rc), kv_errmsg());
            CHECK(b->nops == 1 && b->ops[0].klen == 5 && memcmp(b->ops[0].key, "after", 5) == 0);
            kv_logged_batch_free(b);
        }
        CHECK_OK(kv_close(db));
        kv_free(db);
    }
}

/* The range kv_get_stats reports never has its oldest batch past its newest. An older file that holds a batch above
 * the store's last, after a gap, and a newer file that starts lower (recovery could not forget the batch: a
 * read-only open): the floor, past the store's batches, made the oldest retained batch the one after the store's
 * last, and the newest was the newer file's last, below it. */
TEST(test_corrupt_batch_log_range_in_order) {
    kv_options o;
    char dir[600], name[300], path[1200];
    uint64_t seqs[5];
    CHECK(batch_log_store(&o, 5, seqs, dir, sizeof dir, name, sizeof name, path, sizeof path));
    CHECK(append_batch(path, seqs[4] + 1000, "lost")); /* a gap to a batch the store does not have */
    char newer[1300];
    CHECK(new_log_file(dir, "BATCHLOG-999999", newer, sizeof newer));
    CHECK(append_batch(newer, seqs[2], "again")); /* a newer file starting lower */
    o.read_only = true;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.batch_log_oldest <= st.batch_log_newest, "the batch log's range is %llu to %llu",
              (unsigned long long)st.batch_log_oldest, (unsigned long long)st.batch_log_newest);
    CHECK_OK(kv_close(db));
    kv_free(db);
}

/* Byte retention drops the oldest file and raises the floor past the batches it holds: never past the batch just
 * appended. An older file (a lower number) holding a later batch than the newest file's, a foreign or damaged one
 * (or numbers reused after a failed forgetting), raised it past the appended batch, which was evicted as it
 * committed. */
TEST(test_corrupt_batch_log_retention_spares_the_new_batch) {
    kv_options o;
    char dir[600], name[300], path[1200];
    uint64_t seqs[5];
    CHECK(batch_log_store(&o, 5, seqs, dir, sizeof dir, name, sizeof name, path, sizeof path));
    char older[1300];
    CHECK(new_log_file(dir, "BATCHLOG-000000", older, sizeof older));
    char key[40];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = 0;
    for (int i = 0; i < 120; i++) CHECK(append_batch(older, seqs[4] + 1000 + (uint64_t)i, key)); /* > 4 KiB */
    o.batch_log_max_batches = 0;
    o.batch_log_max_bytes = 4096;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_OK(kv_put(db, "after", 5, "w", 1, 0));
    kv_logged_batch *b = NULL;
    int rc = kv_get_batch(db, kv_current_sequence(db), &b);
    CHECK_MSG(rc == KV_OK, "the batch just written: %s (%s)", kv_strerror(rc), kv_errmsg());
    CHECK(b->nops == 1 && b->ops[0].klen == 5 && memcmp(b->ops[0].key, "after", 5) == 0);
    kv_logged_batch_free(b);
    CHECK_OK(kv_close(db));
    kv_free(db);
}

/* A batch log record with a key longer than any key (KV_MAX_KEY) passes its checksum but cannot be a batch the engine
 * wrote (every key is checked when it is added to a batch): kv_get_batch handed that key out as it was. It is a
 * malformed record, like an impossible field: KV_ECORRUPT naming the file and the record's offset, and kv_check
 * reports it; the batches around it read, one with a key of KV_MAX_KEY bytes among them. */
TEST(test_corrupt_batch_log_key_too_long) {
    kv_options o;
    char dir[600], name[300], path[1200];
    enum { NB = 5, LONGEST = 1, TOO_LONG = 2 };
    uint64_t seqs[NB];
    CHECK(batch_log_store(&o, NB, seqs, dir, sizeof dir, name, sizeof name, path, sizeof path));
    char *key = malloc(KV_MAX_KEY + 1);
    CHECK(key != NULL);
    if (t_failed()) return;
    memset(key, 'k', KV_MAX_KEY + 1);
    /* the file written again: the same batches, the second with the longest key, the third with one byte more */
    CHECK(new_log_file(dir, name, path, sizeof path));
    uint64_t bad_off = 0;
    for (int i = 0; i < NB; i++) {
        struct stat st;
        CHECK(stat(path, &st) == 0);
        if (i == TOO_LONG) bad_off = (uint64_t)st.st_size;
        size_t kl = i == LONGEST ? KV_MAX_KEY : i == TOO_LONG ? KV_MAX_KEY + 1 : 3;
        CHECK(append_batch_key(path, seqs[i], key, kl));
    }
    free(key);
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    for (int i = 0; i < NB; i++) {
        kv_logged_batch *b = NULL;
        int rc = kv_get_batch(db, seqs[i], &b);
        if (i == TOO_LONG) {
            char where[400];
            snprintf(where, sizeof where, "%s: batch record at offset %llu", name, (unsigned long long)bad_off);
            CHECK_MSG(rc == KV_ECORRUPT && strstr(kv_errmsg(), where), "batch %d: %s (%s), key of %zu bytes", i,
                      kv_strerror(rc), rc ? kv_errmsg() : "", b ? b->ops[0].klen : 0);
        } else {
            CHECK_MSG(rc == KV_OK, "batch %d: %s (%s)", i, kv_strerror(rc), kv_errmsg());
            if (rc == KV_OK) CHECK(b->nops == 1 && b->ops[0].klen == (i == LONGEST ? KV_MAX_KEY : 3));
        }
        kv_logged_batch_free(b);
    }
    named p = {.file = name};
    CHECK_EQ(kv_check(db, on_problem, NULL, &p, NULL), KV_ECORRUPT);
    CHECK_MSG(p.named, "kv_check: %s", p.first);
    CHECK_OK(kv_close(db));
    kv_free(db);
}
