/*
 * db_maint.c — maintenance: integrity check, manual compaction, checkpoints, statistics, blob garbage collection,
 * and the batch-log calls.
 *
 * Invariants
 *  - kv_check only reads; it holds a version reference so no file it checks is deleted under it.
 *  - Manual compaction excludes background compaction (compact_running / manual_running) and first flushes the
 *    memtables, so everything written before the call is compacted.
 *  - A checkpoint is taken while holding the write queue (no write can interleave): the live log is copied up to its
 *    current end, tables and closed blob files are hard-linked (they never change), and a fresh manifest describing
 *    exactly the linked files is written into the destination, then CURRENT.
 *  - Blob GC deletes a blob file only when no entry of any version references it but entries that compaction may
 *    drop (shadow_walk), and only once the entries that shadow them are durable; it rewrites a value only through
 *    a remap the write queue's leader applies to the value as it is then (BOP_REMAP_IF): bytes the value still reads
 *    from where they were copied are read from the copy, everything written since stays.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_impl.h"
#include "dbformat.h"
#include "error.h"

/* ---- entries compaction may drop ------------------------------------------------------------------------------------ */

/* A walk over raw entries (user key ascending, newest first) that tells which of them compaction may drop, by
 * db_bg.c's rule: an entry whose next newer entry of the same user key has a sequence at or below the oldest
 * snapshot. No snapshot can see it, nor can any read that starts from now on (each reads at the last sequence or
 * above); a read already under way holds the version it reads, which keeps the files it may need. Blob GC does not
 * count such an entry's references, so a deleted or overwritten large value frees its blob file before compaction
 * has met its old versions (it once took a remount and a manual compaction), and kv_check does not judge them. The
 * oldest snapshot only grows, so an entry found droppable stays so. */
typedef struct shadow_walk {
    uint64_t oldest;   /* db_oldest_snapshot_seq, taken under mu before the walk's iterator */
    kv_bytes prev;     /* the user key of the entry before */
    uint64_t prev_seq; /* and its sequence */
    bool have_prev, failed; /* failed: out of memory; every entry then counts as needed */
} shadow_walk;

/* Feed the next raw entry (an internal key): whether it is the newest of its user key (*newest), and whether
 * compaction may drop it (the result). */
static bool shadow_walk_next(shadow_walk *w, const uint8_t *k, size_t kl, bool *newest) {
    bool same = w->have_prev && ukey_cmp(k, kl - 8, w->prev.data, w->prev.len) == 0;
    bool droppable = same && !w->failed && w->prev_seq <= w->oldest;
    *newest = !same;
    if (!same) {
        bytes_clear(&w->prev);
        w->have_prev = !w->failed && bytes_append(&w->prev, k, kl - 8) == KV_OK;
        w->failed = !w->have_prev;
    }
    w->prev_seq = ikey_seq(k, kl);
    return droppable;
}

/* ---- the batch log ------------------------------------------------------------------------------------------------- */

int kv_get_batch(kv_db *db, uint64_t seq, kv_logged_batch **out) {
    if (!out) return kv_set_error(KV_EINVAL, "kv_get_batch: NULL out");
    if (!db_enter(db)) return KV_ECLOSED;
    int rc;
    if (seq == 0 || seq > atomic_load(&db->last_seq))
        rc = kv_set_error(KV_ENOTFOUND, "no batch %" PRIu64 " yet (the current sequence is %" PRIu64 ")", seq,
                          (uint64_t)atomic_load(&db->last_seq));
    else
        rc = batchlog_get(db->blog, seq, out);
    db_leave(db);
    return rc;
}

int kv_oldest_retained_batch(kv_db *db, uint64_t *seq) {
    if (!seq) return kv_set_error(KV_EINVAL, "NULL seq");
    if (!db_enter(db)) return KV_ECLOSED;
    int rc = batchlog_oldest(db->blog, seq);
    db_leave(db);
    return rc;
}

int kv_prune_batch_log(kv_db *db, uint64_t cutoff) {
    if (!db_enter(db)) return KV_ECLOSED;
    int rc = KV_OK;
    if (db->opt.read_only) rc = kv_set_error(KV_EREADONLY, "the store was opened read-only");
    uint64_t next = atomic_load(&db->last_seq) + 1;
    if (!rc) {
        /* The floor goes to the manifest, which is synced, so the batches below it must be durable first: a power
         * loss that took some of them would leave the store's sequence below the floor, and the batches that take
         * their numbers would be evicted as they commit, at every later open too. Everything up to `next` - 1 is
         * durable once kv_sync returns. */
        pthread_mutex_lock(&db->mu);
        bool raise = cutoff > db->vs->batchlog_floor;
        pthread_mutex_unlock(&db->mu);
        if (raise) rc = kv_sync(db);
    }
    if (!rc) {
        /* record the floor first: a crash after it cannot bring pruned batches back */
        pthread_mutex_lock(&db->mu);
        /* Batches not yet committed cannot be pruned: a floor past the next sequence would evict them at birth. */
        if (cutoff > next) cutoff = next;
        if (cutoff > db->vs->batchlog_floor) {
            version_edit e;
            edit_init(&e);
            e.has_batchlog_floor = true;
            e.batchlog_floor = cutoff;
            rc = vset_log_and_apply(db->vs, &e);
            edit_free(&e);
        }
        pthread_mutex_unlock(&db->mu);
        if (!rc) rc = batchlog_prune(db->blog, cutoff);
    }
    db_leave(db);
    return rc;
}

/* ---- check ------------------------------------------------------------------------------------------------------------- */

typedef struct check_ctx {
    kv_problem_fn cb;
    kv_progress_fn progress;
    void *ctx;
    uint64_t problems;
    uint64_t done, total;
    uint64_t *bad_tables;   /* file numbers of the tables the table pass reported problems in */
    size_t nbad, capbad;
} check_ctx;

static void note_bad_table(check_ctx *cc, uint64_t file_no) {
    if (cc->nbad == cc->capbad) {
        size_t cap = cc->capbad ? cc->capbad * 2 : 8;
        uint64_t *n = realloc(cc->bad_tables, cap * sizeof *n);
        if (!n) return; /* then the reference pass may report the table a second time: no harm */
        cc->bad_tables = n;
        cc->capbad = cap;
    }
    cc->bad_tables[cc->nbad++] = file_no;
}

/* Whether msg, an error of a read that stopped, is about a table the table pass reported already ("NNNNNN.sst: ..."). */
static bool about_bad_table(const check_ctx *cc, const char *msg) {
    char *end;
    unsigned long long no = strtoull(msg, &end, 10);
    if (end == msg || strncmp(end, ".sst:", 5) != 0) return false;
    for (size_t i = 0; i < cc->nbad; i++)
        if (cc->bad_tables[i] == no) return true;
    return false;
}

static void problem(void *c, const char *file, uint64_t off, const char *what) {
    check_ctx *cc = c;
    cc->problems++;
    if (cc->cb) cc->cb(cc->ctx, file, off, what);
}

static int progress(check_ctx *cc, uint64_t add) {
    cc->done += add;
    if (cc->progress && cc->progress(cc->ctx, cc->done, cc->total)) return kv_set_error(KV_EINTERRUPTED, "interrupted");
    return KV_OK;
}

/* Read a record log from start to end, decoding each record with decode (NULL: only checksums). */
/* newest: the write-ahead log of a store opened read-only whose replay a page that a power loss took ended (the newest
 * one that holds a record), which recovery left in place (docs/format.md, "Reading"): such a page is a torn tail
 * there, as at open. */
static void check_log(kv_db *db, check_ctx *cc, const char *name, bool batches, bool newest) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", db->dir, name);
    wal_reader *r;
    int orc = wal_reader_open(db->env, path, name, &r);
    /* test_faults: a log (or manifest) listed a moment ago may have been retired since by a flush (or a manifest
     * rewrite) running beside the check: that is no problem of the store */
    if (orc == KV_ENOTFOUND) return;
    if (orc != KV_OK) {
        problem(cc, name, 0, kv_errmsg());
        return;
    }
    const uint8_t *rec;
    size_t len;
    uint64_t off;
    int rc;
    while ((rc = wal_read(r, &rec, &len, &off)) == KV_OK) {
        if (batches) {
            uint64_t seq;
            int64_t ts;
            size_t count;
            const uint8_t *p;
            if (batch_record_decode(rec, len, &seq, &ts, &count, &p, name, off)) {
                problem(cc, name, off, "malformed batch record");
                continue;
            }
            resolved_op op;
            for (size_t i = 0; i < count && p; i++) p = batch_record_next_op(p, rec + len, &op);
            if (!p) problem(cc, name, off, "malformed operation in batch record");
            else if (p != rec + len) problem(cc, name, off, "bytes after the last operation of a batch record");
        } else {
            version_edit e;
            if (edit_decode(&e, rec, len, name, off)) problem(cc, name, off, "malformed manifest record");
            else edit_free(&e);
        }
    }
    bool lost = false;
    if (rc == KV_ECORRUPT && newest && db->opt.read_only && wal_reader_damage_is_lost_page(r, &lost) == KV_OK && lost)
        rc = KV_OK;
    if (rc == KV_ECORRUPT || rc == KV_EIO || rc == KV_EPERM) problem(cc, name, wal_reader_valid_end(r), kv_errmsg());
    wal_reader_close(r);
}

/* test_crash: a process killed in the middle of a blob append (write(2) stops between pages on SIGKILL) leaves the
 * blob file ending in part of a chunk. Those bytes belong to a batch that never committed (its log record is written
 * after them), so like a torn tail of a record log this is no damage, but blob_check_file reports it, and kv_check
 * reported a damaged store after such crashes for as long as the file lived. So a torn tail is reported only when a
 * value of the store references the record it cuts (then it is real damage: reads of that value fail). */
typedef struct torn_tail {
    uint64_t file_no, off;
    char file[32], what[160];
    bool referenced;
} torn_tail;

typedef struct torn_ctx {
    check_ctx *cc;
    uint64_t file_no;   /* the blob file being checked */
    torn_tail *t;
    size_t n, cap;
} torn_ctx;

static void blob_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    torn_ctx *tc = ctx;
    if (strncmp(what, "torn chunk", 10) == 0) {
        if (tc->n == tc->cap) {
            size_t cap = tc->cap ? tc->cap * 2 : 4;
            torn_tail *t = realloc(tc->t, cap * sizeof *t);
            if (!t) {
                problem(tc->cc, file, off, what);
                return;
            }
            tc->t = t;
            tc->cap = cap;
        }
        torn_tail *t = &tc->t[tc->n++];
        t->file_no = tc->file_no;
        t->off = off;
        t->referenced = false;
        snprintf(t->file, sizeof t->file, "%s", file);
        snprintf(t->what, sizeof t->what, "%s", what);
        return;
    }
    problem(tc->cc, file, off, what);
}

/* The reference pass: every blob value of every version is followed to the records it names, each record judged
 * once (versions share most of them). A record must lie inside its file: a blob file cut short at a chunk boundary
 * passes blob_check_file's walk, and only this pass finds what it lost. Every page must read as a page (its chunks
 * are checked by the walk, its content only here). And each record marks the torn tails it reaches into (above). */
typedef struct ref_check {
    kv_db *db;
    const version *v;
    uint64_t next_file; /* the store's next file number when v was taken: older files v does not list are gone, */
    const uint64_t *pending; /* except these, pending then (being created, not listed yet: newer than the check) */
    size_t npending;
    torn_ctx *tc;
    uint64_t *size; /* per blob file of v: its size, UINT64_MAX = unknown */
    blob_page_set seen, reported;
    int err;        /* what stopped the pass, if anything */
} ref_check;

/* The size of blob file no, if it is one of v's (others are not ours to judge: newer than the check); fresh: measure
 * again (a record appended since the last look). */
static uint64_t ref_file_size(ref_check *r, uint64_t no, bool fresh) {
    size_t lo = 0, hi = r->v->nblobs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->v->blobs[mid]->file_no < no) lo = mid + 1;
        else hi = mid;
    }
    if (!r->size || lo == r->v->nblobs || r->v->blobs[lo]->file_no != no) return UINT64_MAX;
    if (r->size[lo] == 0 || fresh) {
        char path[4096];
        file_name(path, sizeof path, r->db->dir, no, "blob");
        if (r->db->env->file_size(r->db->env, path, &r->size[lo]) != KV_OK) r->size[lo] = UINT64_MAX; /* the walk said */
    }
    return r->size[lo];
}

static void ref_problem(ref_check *r, const blob_extent *e, const char *what) {
    if (blob_page_set_add(&r->reported, e) == 0) return; /* once per record (and always when memory is short) */
    char name[32];
    snprintf(name, sizeof name, "%06" PRIu64 ".blob", e->file_no);
    problem(r->tc->cc, name, e->rec_off, what);
}

/* Whether v lists blob file no, or it was pending when v was taken. */
static bool ref_file_listed(const ref_check *r, uint64_t no) {
    for (size_t i = 0; i < r->v->nblobs; i++)
        if (r->v->blobs[i]->file_no == no) return true;
    for (size_t i = 0; i < r->npending; i++)
        if (r->pending[i] == no) return true;
    return false;
}

/* blob_visit_fn for data records; pages go through check_page. */
static int check_record(void *ctx, const blob_extent *e, bool page) {
    ref_check *r = ctx;
    torn_ctx *tc = r->tc;
    uint64_t end = blob_extent_record_end(e);
    for (size_t i = 0; i < tc->n; i++)
        if (e->file_no == tc->t[i].file_no && end > tc->t[i].off) tc->t[i].referenced = true;
    uint64_t size = ref_file_size(r, e->file_no, false);
    if (size == UINT64_MAX && e->file_no < r->next_file && !ref_file_listed(r, e->file_no)) {
        /* not newer than the check, not in its version: the file was deleted under a value that still names it */
        char path[4096];
        file_name(path, sizeof path, r->db->dir, e->file_no, "blob");
        if (r->db->env->exists(r->db->env, path) == 0) {
            ref_problem(r, e, "a blob value names a blob file that is missing");
            return page ? BLOB_VISIT_SKIP : 0;
        }
    }
    if (size != UINT64_MAX && end > size) size = ref_file_size(r, e->file_no, true);
    if (size != UINT64_MAX && end > size) {
        ref_problem(r, e, page ? "a blob value's page record runs past the end of the file"
                               : "a blob value's record runs past the end of the file");
        return page ? BLOB_VISIT_SKIP : 0;
    }
    return 0;
}

static void check_page(ref_check *r, blob_store *s, const blob_page *pg) {
    blob_extent e = blob_page_extent(pg);
    /* a file the check's version does not list is newer than the check, and may be gone again: not ours to read */
    if (ref_file_size(r, e.file_no, false) == UINT64_MAX) {
        (void)check_record(r, &e, true); /* reports it if it is older than the check and gone */
        return;
    }
    if (check_record(r, &e, true) || blob_page_set_add(&r->seen, &e) == 0) return;
    blob_ref page = {0};
    int rc = blob_page_load(s, pg, &page);
    if (rc == KV_ECORRUPT) {
        char msg[512], name[32];
        snprintf(msg, sizeof msg, "%s", kv_errmsg()); /* ref_problem may set another message */
        int nl = snprintf(name, sizeof name, "%06" PRIu64 ".blob: ", e.file_no);
        bool named = strncmp(msg, name, (size_t)nl) == 0; /* the problem names the file already */
        ref_problem(r, &e, named ? msg + nl : msg);
    }
    else if (rc) r->err = rc;
    for (size_t i = 0; !rc && i < page.n; i++)
        if (page.ext[i].file_no) check_record(r, &page.ext[i], false);
    blob_ref_free(&page);
}

static void check_references(kv_db *db, const version *v, uint64_t next_file, const uint64_t *pending, size_t npending,
                             torn_ctx *tc) {
    ref_check r = {db, v, next_file, pending, npending, tc, calloc(v->nblobs + 1, sizeof(uint64_t)), {0}, {0}, KV_OK};
    if (!r.size) r.err = kv_set_error(KV_ENOMEM, "out of memory for the blob reference pass");
    db_raw_iter *ri = NULL;
    iter *it = NULL;
    shadow_walk sw = {0};
    pthread_mutex_lock(&db->mu);
    sw.oldest = db_oldest_snapshot_seq(db);
    pthread_mutex_unlock(&db->mu);
    int rc = db_raw_iter_new(db, false, &ri, &it);
    for (it && !rc ? it->seek_first(it) : (void)0; !rc && !r.err && it && it->valid(it); it->next(it)) {
        size_t kl, vl;
        const uint8_t *k = it->key(it, &kl), *val = it->value(it, &vl);
        if (kl < 9) continue;
        bool newest;
        /* what compaction may drop, blob GC may have collected the files of: not ours to judge (shadow_walk) */
        if (shadow_walk_next(&sw, k, kl, &newest) || ikey_type(k, kl) != KV_TYPE_BLOB) continue;
        int64_t ts;
        const uint8_t *p;
        size_t plen;
        if (entry_decode(val, vl, &ts, &p, &plen)) continue; /* malformed entries: reads report them */
        if (blob_ref_validate(p, plen) != KV_OK) { /* the table's checksums held: written so by a bug */
            problem(tc->cc, "(blob references)", 0, kv_errmsg());
            continue;
        }
        if (!blob_ref_is_paged(p, plen)) {
            int e = blob_value_visit(db->blobs, p, plen, check_record, &r);
            if (e) r.err = e;
            continue;
        }
        blob_pages pp = {0};
        if (blob_pages_decode(p, plen, &pp) != KV_OK) continue;
        for (size_t i = 0; i < pp.n && !r.err; i++) check_page(&r, db->blobs, &pp.pg[i]);
        blob_pages_free(&pp);
    }
    if (!rc && it) rc = it->status(it);
    if (ri) db_raw_iter_free(db, ri);
    if (!rc) rc = r.err;
    /* The pass could not finish. When a damaged table stopped it, the table pass reported that table already: once
     * is enough (the check fails either way, and the references are checked again once the table is restored). */
    if (rc && !(rc == KV_ECORRUPT && about_bad_table(tc->cc, kv_errmsg())))
        problem(tc->cc, "(blob references)", 0, kv_errmsg());
    /* A torn tail that no value reaches into is the trace of an append a crash interrupted, not damage. One that a
     * value reaches into may be an append the walk met half done, in a file still being written: whole by now. */
    for (size_t i = 0; i < tc->n; i++) {
        if (!rc && !tc->t[i].referenced) continue;
        char path[4096];
        file_name(path, sizeof path, db->dir, tc->t[i].file_no, "blob");
        if (blob_chunk_whole_at(db->env, path, tc->t[i].off) == KV_OK) continue;
        problem(tc->cc, tc->t[i].file, tc->t[i].off, tc->t[i].what);
    }
    free(tc->t);
    free(r.size);
    bytes_free(&sw.prev);
    blob_page_set_free(&r.seen);
    blob_page_set_free(&r.reported);
}

static bool same_bytes(const kv_bytes *a, const kv_bytes *b) {
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

int kv_check(kv_db *db, kv_problem_fn problem_cb, kv_progress_fn progress_cb, void *ctx, uint64_t *problems) {
    if (!db_enter(db)) return KV_ECLOSED;
    check_ctx cc = {problem_cb, progress_cb, ctx, 0, 0, 0, NULL, 0, 0};
    pthread_mutex_lock(&db->mu);
    version *v = db->vs->current;
    version_ref(v);
    uint64_t log_number = db->vs->log_number, manifest_no = db->vs->manifest_no, next_file = db->vs->next_file;
    /* files being created: their numbers are below next_file, v does not list them, and values in the memtable that
     * the reference pass meets may name them (and a GC pass delete them meanwhile): not the check's to judge */
    size_t npending = db->npending;
    uint64_t *pending = npending ? malloc(npending * sizeof *pending) : NULL;
    if (pending) memcpy(pending, db->pending, npending * sizeof *pending);
    else if (npending) next_file = 0, npending = 0; /* out of memory: judge no missing file */
    pthread_mutex_unlock(&db->mu);
    int rc = KV_OK;
    for (int l = 0; l < KV_MAX_LEVELS; l++)
        for (size_t i = 0; i < v->nfiles[l]; i++) cc.total += v->files[l][i]->file_size;

    char name[64], path[4096];
    for (int l = 0; l < KV_MAX_LEVELS && !rc; l++) {
        for (size_t i = 0; i < v->nfiles[l] && !rc; i++) {
            file_meta *f = v->files[l][i];
            snprintf(name, sizeof name, "%06" PRIu64 ".sst", f->file_no);
            file_name(path, sizeof path, db->dir, f->file_no, "sst");
            uint64_t before = cc.problems;
            long n = sst_check_file(db->env, path, name, problem, &cc);
            if (n < 0) problem(&cc, name, 0, kv_errmsg());
            /* the manifest's idea of the file must match the file */
            uint64_t size;
            if (db->env->file_size(db->env, path, &size) == KV_OK && size != f->file_size)
                problem(&cc, name, size, "file size differs from the manifest");
            /* Reads skip a table by the manifest's key range, so a range that is not the table's hides its keys
             * from get while scan still shows them; sst_check_file has matched the properties to the keys. */
            sst_reader *sr;
            if (n == 0 && sst_reader_open(db->env, path, name, f->file_no, NULL, &sr) == KV_OK) {
                const sst_props *pr = sst_reader_props(sr);
                if (!same_bytes(&pr->smallest, &f->smallest) || !same_bytes(&pr->largest, &f->largest))
                    problem(&cc, name, 0, "key range differs from the manifest");
                sst_reader_unref(sr);
            }
            /* levels >= 1: files sorted and not overlapping */
            if (l > 0 && i > 0) {
                file_meta *p = v->files[l][i - 1];
                if (ukey_cmp(p->largest.data, p->largest.len - 8, f->smallest.data, f->smallest.len - 8) >= 0)
                    problem(&cc, name, 0, "key range overlaps the previous file of its level");
            }
            if (cc.problems != before) note_bad_table(&cc, f->file_no);
            rc = progress(&cc, f->file_size);
        }
    }
    torn_ctx tc = {&cc, 0, NULL, 0, 0};
    for (size_t i = 0; i < v->nblobs && !rc; i++) {
        snprintf(name, sizeof name, "%06" PRIu64 ".blob", v->blobs[i]->file_no);
        file_name(path, sizeof path, db->dir, v->blobs[i]->file_no, "blob");
        tc.file_no = v->blobs[i]->file_no;
        long n = blob_check_file(db->env, path, name, blob_problem, &tc);
        if (n < 0) problem(&cc, name, 0, kv_errmsg());
    }
    if (!rc) check_references(db, v, next_file, pending, npending, &tc);
    else free(tc.t);
    free(pending);
    if (!rc) {
        char **names;
        size_t n;
        if (db->env->list_dir(db->env, db->dir, &names, &n) == KV_OK) {
            uint64_t no;
            const char *ext;
            for (size_t i = 0; i < n; i++)
                if (db_parse_file_name(names[i], &no, &ext) && strcmp(ext, "log") == 0 && no >= log_number)
                    check_log(db, &cc, names[i], true, no == db->lost_page_log);
            kv_env_free_names(names, n);
        }
        snprintf(name, sizeof name, "MANIFEST-%06" PRIu64, manifest_no);
        if (!db->opt.read_only) check_log(db, &cc, name, false, false);
        batchlog_check(db->blog, problem, &cc, &cc.problems);
    }
    pthread_mutex_lock(&db->mu);
    version_unref(v);
    pthread_mutex_unlock(&db->mu);
    if (problems) *problems = cc.problems;
    free(cc.bad_tables);
    db_leave(db);
    if (rc) return rc;
    if (!cc.problems) kv_clear_error(); /* what the readers noted on the way (the end of a log) is no failure */
    return cc.problems ? kv_set_error(KV_ECORRUPT, "%" PRIu64 " problem(s) found", cc.problems) : KV_OK;
}

/* ---- manual compaction ----------------------------------------------------------------------------------------------- */

int kv_compact_range(kv_db *db, const void *start, size_t slen, const void *end, size_t elen,
                     kv_progress_fn progress_cb, void *ctx) {
    if (!db_enter(db)) return KV_ECLOSED;
    if (db->opt.read_only) {
        db_leave(db);
        return kv_set_error(KV_EREADONLY, "the store was opened read-only");
    }
    if ((slen && !start) || (elen && !end) || slen > KV_MAX_KEY || elen > KV_MAX_KEY) {
        db_leave(db);
        return kv_set_error(KV_EINVAL, "kv_compact_range: bad range");
    }
    int rc = db_flush_memtable(db);
    kv_bytes lo = {0}, hi = {0};
    if (!rc && (slen || elen)) {
        uint8_t ks = 0;
        rc = bytes_append(&lo, &ks, 1) || bytes_append(&lo, start, slen);
        if (!rc) {
            if (elen) rc = bytes_append(&hi, &ks, 1) || bytes_append(&hi, end, elen);
            else {
                uint8_t next = 1; /* everything of keyspace 0 sorts before [1] */
                rc = bytes_append(&hi, &next, 1);
            }
        }
        if (rc) rc = KV_ENOMEM;
    }
    pthread_mutex_lock(&db->mu);
    if (rc) { /* never touch manual_running without having waited for it: another call may hold it */
        pthread_mutex_unlock(&db->mu);
        bytes_free(&lo);
        bytes_free(&hi);
        db_leave(db);
        return rc;
    }
    /* Background compactions start one after another while levels are over their size (a steady writer keeps them
     * so): waiting for a moment when none runs could take for ever. manual_waiting keeps a new one from starting. */
    db->manual_waiting++;
    while (db->compact_running || db->manual_running) pthread_cond_wait(&db->bg_cv, &db->mu);
    db->manual_waiting--;
    db->manual_running = true;
    /* Compact each level into the next, down to the deepest level that holds files, so that every version of a key
     * meets the others there and shadowed versions and tombstones go. Then rewrite that level into itself, else
     * what a snapshot kept there (old versions, tombstones) would stay after the snapshot's release for good; but
     * only its files that the step before did not just write, and that hold a tombstone or a key twice: a second
     * call on a compacted store rewrites nothing. With only level-0 files, they go to level 1 and stop there. The
     * data never goes deeper than the deepest level that held it (it once went one level down per call, and that
     * level was written twice). */
    int deepest = 0;
    for (int l = 0; l < KV_MAX_LEVELS; l++)
        if (db->vs->current->nfiles[l]) deepest = l;
    int steps = deepest ? deepest + 1 : 1;
    uint64_t made_from = UINT64_MAX;
    for (int l = 0; l < steps && !rc; l++) {
        if (atomic_load(&db->closed)) rc = kv_set_error(KV_ECLOSED, "the store is closing");
        if (!rc && l < steps - 1) made_from = db->vs->next_file; /* outputs of the last step down get numbers above */
        if (!rc) rc = l < deepest || deepest == 0 ? db_compact_level_down(db, l, &lo, &hi)
                                                  : db_rewrite_level(db, l, &lo, &hi, made_from);
        if (!rc && progress_cb) {
            pthread_mutex_unlock(&db->mu);
            if (progress_cb(ctx, (uint64_t)l + 1, (uint64_t)steps)) rc = kv_set_error(KV_EINTERRUPTED, "interrupted");
            pthread_mutex_lock(&db->mu);
        }
    }
    db->manual_running = false;
    /* A compaction succeeded: a failure of an earlier one is no longer the last word (writers at the level-0 stop
     * trigger, kv_get_stats). The broadcast wakes the compaction thread from its pause after failures: it tries
     * again now, and sets compact_error anew if its compaction still fails. */
    if (rc == KV_OK) db->compact_error = 0;
    pthread_cond_broadcast(&db->bg_cv);
    pthread_cond_broadcast(&db->work_cv);
    pthread_mutex_unlock(&db->mu);
    bytes_free(&lo);
    bytes_free(&hi);
    db_leave(db);
    return rc;
}

/* ---- checkpoint ------------------------------------------------------------------------------------------------------ */

static int copy_file(kv_env *env, const char *from, const char *to, uint64_t limit) {
    kv_file *in, *out;
    int rc = env->open_read(env, from, &in);
    if (rc) return rc;
    rc = env->open_write(env, to, &out);
    if (rc) {
        env->close(env, in);
        return rc;
    }
    char *buf = malloc(1 << 20);
    uint64_t off = 0;
    if (!buf) rc = KV_ENOMEM;
    while (!rc && off < limit) {
        size_t want = limit - off < (1u << 20) ? (size_t)(limit - off) : (1u << 20), got = 0;
        rc = env->read_at(env, in, off, buf, want, &got);
        if (!rc && got == 0) break;
        if (!rc) rc = env->append(env, out, buf, got);
        off += got;
    }
    free(buf);
    if (!rc) rc = env->sync(env, out);
    env->close(env, in);
    int rc2 = env->close(env, out);
    return rc ? rc : rc2;
}

static int link_or_copy(kv_env *env, const char *from, const char *to) {
    if (env->link(env, from, to) == KV_OK) return KV_OK;
    return copy_file(env, from, to, UINT64_MAX);
}

int kv_checkpoint(kv_db *db, const char *dest, kv_progress_fn progress_cb, void *ctx) {
    if (!dest || !*dest) return kv_set_error(KV_EINVAL, "kv_checkpoint: no destination");
    if (!db_enter(db)) return KV_ECLOSED;
    kv_env *env = db->env;
    int rc = KV_OK;
    int ex = env->exists(env, dest);
    if (ex != 0) rc = ex < 0 ? ex : kv_set_error(KV_EEXIST, "%s: already exists", dest);
    /* the copy must not name bytes a failed fsync may have lost: kv_sync copies such values elsewhere first, and
     * moves the log records that name those bytes into tables (sync_debt; the copy links the blob file) */
    if (!rc && !db->opt.read_only && db_sync_owed(db)) rc = kv_sync(db);
    /* exclusive: a dest that another process made since the test above is theirs (a failed checkpoint would clean
     * up whatever is in dest) */
    if (!rc && (rc = env->mkdir(env, dest, 0700)) == KV_EEXIST) kv_set_error(KV_EEXIST, "%s: already exists", dest);
    if (rc) {
        db_leave(db);
        return rc;
    }
    /* hold the write queue: enqueue as a writer and wait to lead */
    writer w = {0};
    pthread_cond_init(&w.cv, NULL);
    pthread_mutex_lock(&db->mu);
    if (db->writers_tail) db->writers_tail->next = &w;
    else db->writers_head = &w;
    db->writers_tail = &w;
    while (db->writers_head != &w) pthread_cond_wait(&w.cv, &db->mu);
    version *v = db->vs->current;
    version_ref(v);
    uint64_t log_number = db->vs->log_number, last_seq = atomic_load(&db->last_seq), next_file = db->vs->next_file;
    uint64_t cur_log = db->log_no;
    uint64_t cur_log_size = db->log ? wal_writer_size(db->log) : 0;
    /* a flush finishing meanwhile must not delete a log this version still needs (its tables are not in v) */
    db->checkpoints++;
    pthread_mutex_unlock(&db->mu);

    /* the shared blob file must not grow after we link it: close it (a new one starts on the next write) */
    pthread_mutex_lock(&db->blob_mu);
    rc = db_blob_writer_retire(db);
    pthread_mutex_unlock(&db->blob_mu);
    /* an fsync that failed since the kv_sync above (a flush's, or that one) leaves bytes the copy would name */
    if (!rc && db_sync_owed(db))
        rc = kv_set_error(KV_EIO, "kv_checkpoint: an fsync failed while the checkpoint began: try again");

    uint64_t total = 0, done = 0;
    for (int l = 0; l < KV_MAX_LEVELS; l++) total += v->nfiles[l];
    total += v->nblobs;
    char from[4096], to[4096];
    for (int l = 0; l < KV_MAX_LEVELS && !rc; l++)
        for (size_t i = 0; i < v->nfiles[l] && !rc; i++) {
            file_name(from, sizeof from, db->dir, v->files[l][i]->file_no, "sst");
            file_name(to, sizeof to, dest, v->files[l][i]->file_no, "sst");
            rc = link_or_copy(env, from, to);
            if (!rc && progress_cb && progress_cb(ctx, ++done, total)) rc = kv_set_error(KV_EINTERRUPTED, "interrupted");
        }
    for (size_t i = 0; i < v->nblobs && !rc; i++) {
        file_name(from, sizeof from, db->dir, v->blobs[i]->file_no, "blob");
        file_name(to, sizeof to, dest, v->blobs[i]->file_no, "blob");
        rc = link_or_copy(env, from, to);
        if (!rc && progress_cb && progress_cb(ctx, ++done, total)) rc = kv_set_error(KV_EINTERRUPTED, "interrupted");
    }
    /* live logs: every one from log_number on; the current one only up to what is written now */
    if (!rc) {
        char **names;
        size_t n;
        rc = env->list_dir(env, db->dir, &names, &n);
        for (size_t i = 0; !rc && i < n; i++) {
            uint64_t no;
            const char *ext;
            if (db_parse_file_name(names[i], &no, &ext) && strcmp(ext, "log") == 0 && no >= log_number &&
                no <= cur_log) {
                snprintf(from, sizeof from, "%s/%s", db->dir, names[i]);
                snprintf(to, sizeof to, "%s/%s", dest, names[i]);
                rc = copy_file(env, from, to, no == cur_log ? cur_log_size : UINT64_MAX);
            } else if (strncmp(names[i], "BATCHLOG-", 9) == 0) {
                snprintf(from, sizeof from, "%s/%s", db->dir, names[i]);
                snprintf(to, sizeof to, "%s/%s", dest, names[i]);
                rc = copy_file(env, from, to, UINT64_MAX);
                if (rc == KV_ENOTFOUND) rc = KV_OK; /* pruned meanwhile (oldest first): those batches are evicted */
            }
        }
        if (names) kv_env_free_names(names, n);
    }
    /* the destination's manifest */
    if (!rc) {
        version_set *vs2;
        rc = vset_new(env, dest, &vs2);
        if (!rc) {
            vs2->next_file = next_file;
            vs2->last_seq = last_seq;
            vs2->log_number = log_number;
            vs2->batchlog_floor = db->vs->batchlog_floor;
            version_edit e;
            edit_init(&e);
            for (int l = 0; l < KV_MAX_LEVELS && !rc; l++)
                for (size_t i = 0; i < v->nfiles[l] && !rc; i++) rc = edit_add_file(&e, l, v->files[l][i]);
            for (size_t i = 0; i < v->nblobs && !rc; i++) rc = edit_add_blob(&e, v->blobs[i]->file_no);
            if (!rc) rc = vset_write_snapshot(vs2);
            if (!rc) rc = vset_log_and_apply(vs2, &e);
            edit_free(&e);
            vset_free(vs2);
        }
    }
    if (!rc) rc = env->sync_dir(env, dest);
    /* dest's own entry in its parent directory, else a power loss can take the whole checkpoint (the parent is what
     * comes before the last name: trailing slashes are no separator before it) */
    if (!rc) {
        size_t end = strlen(dest);
        while (end > 1 && dest[end - 1] == '/') end--;
        while (end > 0 && dest[end - 1] != '/') end--; /* the last name */
        while (end > 1 && dest[end - 1] == '/') end--; /* the separators before it */
        if (end == 0) {
            rc = env->sync_dir(env, ".");
        } else if (end < sizeof to) {
            memcpy(to, dest, end);
            to[end] = 0;
            rc = env->sync_dir(env, to);
        }
    }
    /* A failed checkpoint must not be openable: its CURRENT (written before the edit that lists the tables) may
     * name a manifest that lists none of them. Then what it made goes, so that dest can be used again and the
     * copies give their space back. */
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", kv_errmsg()); /* the failure's, not the clean-up's */
        snprintf(to, sizeof to, "%s/CURRENT", dest);
        char **names;
        size_t n;
        if ((env->exists(env, to) != 1 || env->remove(env, to) == KV_OK) &&
            env->list_dir(env, dest, &names, &n) == KV_OK) {
            for (size_t i = 0; i < n; i++) {
                snprintf(to, sizeof to, "%s/%s", dest, names[i]);
                (void)env->remove(env, to);
            }
            kv_env_free_names(names, n);
            /* the removals durable before the directory goes: a power loss must not bring back files into a
             * directory that is gone (nor dest with them, a copy half made) */
            if (env->sync_dir(env, dest) == KV_OK) (void)env->rmdir(env, dest);
        }
        kv_set_error(rc, "%s", msg);
    }

    pthread_mutex_lock(&db->mu);
    version_unref(v);
    db->checkpoints--;
    db->writers_head = w.next;
    if (!db->writers_head) db->writers_tail = NULL;
    else writer_wake(db->writers_head);
    pthread_mutex_unlock(&db->mu);
    pthread_cond_destroy(&w.cv);
    db_leave(db);
    return rc;
}

/* ---- statistics ------------------------------------------------------------------------------------------------------ */

int kv_get_stats(kv_db *db, kv_stats *s) {
    if (!s) return kv_set_error(KV_EINVAL, "kv_get_stats: NULL out");
    if (!db_enter(db)) return KV_ECLOSED;
    memset(s, 0, sizeof *s);
    pthread_mutex_lock(&db->mu);
    version *v = db->vs->current;
    for (int l = 0; l < KV_MAX_LEVELS; l++) {
        s->level_files[l] = v->nfiles[l];
        for (size_t i = 0; i < v->nfiles[l]; i++) {
            s->level_bytes[l] += v->files[l][i]->file_size;
            s->estimated_keys += v->files[l][i]->entries;
        }
    }
    memtable_meta mm;
    memtable_get_meta(db->mem, &mm);
    s->memtable_bytes = mm.bytes;
    s->estimated_keys += mm.entries;
    for (int i = 0; i < db->nimm; i++) {
        memtable_get_meta(db->imm[i].mem, &mm);
        s->memtable_bytes += mm.bytes;
        s->estimated_keys += mm.entries;
    }
    s->immutable_memtables = (uint64_t)db->nimm;
    s->flush_error = db->bg_error;
    s->compaction_error = db->compact_error;
    s->blob_files = v->nblobs;
    uint64_t blob_nos[1024];
    size_t nb = v->nblobs < 1024 ? v->nblobs : 1024;
    for (size_t i = 0; i < nb; i++) blob_nos[i] = v->blobs[i]->file_no;
    pthread_mutex_unlock(&db->mu);
    for (size_t i = 0; i < nb; i++) {
        char path[4096];
        uint64_t size;
        file_name(path, sizeof path, db->dir, blob_nos[i], "blob");
        if (db->env->file_size(db->env, path, &size) == KV_OK) s->blob_bytes += size;
    }
    block_cache_stats(db->cache, &s->cache_hits, &s->cache_misses, &s->cache_bytes, &s->cache_capacity);
    s->user_bytes_written = atomic_load(&db->st_user_bytes);
    s->wal_bytes_written = atomic_load(&db->st_wal_bytes);
    s->flush_bytes_written = atomic_load(&db->st_flush_bytes);
    s->compaction_bytes_written = atomic_load(&db->st_compact_bytes);
    s->compaction_bytes_read = atomic_load(&db->st_compact_read);
    s->blob_bytes_written = atomic_load(&db->st_blob_bytes);
    uint64_t g = atomic_load(&db->st_blob_garbage);
    s->blob_garbage_known = g != 0;
    s->blob_garbage_bytes = g ? g - 1 : 0;
    s->stall_micros = atomic_load(&db->st_stall_us);
    s->flushes = atomic_load(&db->st_flushes);
    s->compactions = atomic_load(&db->st_compactions);
    s->write_batches = atomic_load(&db->st_batches);
    s->write_groups = atomic_load(&db->st_groups);
    s->synced_groups = atomic_load(&db->st_sync_groups);
    s->unsynced_batches_dropped = db->st_unsynced_dropped;
    s->unsynced_log_bytes_dropped = db->st_unsynced_log_bytes;
    s->blob_gc_failures = atomic_load(&db->st_gc_failures);
    s->flush_failures = atomic_load(&db->st_flush_failures);
    s->compaction_failures = atomic_load(&db->st_compact_failures);
    s->reserve_bytes = atomic_load(&db->reserve_held) ? atomic_load(&db->reserve_bytes) : 0;
    s->reserve_releases = atomic_load(&db->st_reserve_releases);
    s->last_sequence = atomic_load(&db->last_seq);
    uint64_t written = s->wal_bytes_written + s->flush_bytes_written + s->compaction_bytes_written + s->blob_bytes_written;
    s->write_amplification = s->user_bytes_written ? (double)written / (double)s->user_bytes_written : 0;
    batchlog_range(db->blog, &s->batch_log_oldest, &s->batch_log_newest);
    char **names;
    size_t n;
    if (db->env->list_dir(db->env, db->dir, &names, &n) == KV_OK) {
        for (size_t i = 0; i < n; i++) {
            char path[4096];
            uint64_t size;
            if (strcmp(names[i], "RESERVE") == 0) continue; /* free space held back (reserve_bytes), not data */
            snprintf(path, sizeof path, "%s/%s", db->dir, names[i]);
            if (db->env->file_size(db->env, path, &size) == KV_OK) s->disk_bytes += size;
        }
        kv_env_free_names(names, n);
    }
    db_leave(db);
    return KV_OK;
}

/* ---- blob garbage collection ----------------------------------------------------------------------------------------- */

typedef struct gc_file {
    uint64_t no, size, referenced, live;
    bool candidate;
} gc_file;

static gc_file *gc_find(gc_file *fs, size_t n, uint64_t no) {
    for (size_t i = 0; i < n; i++)
        if (fs[i].no == no) return &fs[i];
    return NULL;
}

/* Copying a value out: its data into one new record of w, holes kept as holes (a sparse value stays sparse). Bytes
 * that an earlier value of the same pass already copied (a range shared by kv_batch_copy_range) are not copied again:
 * the new list names that copy. */
typedef struct gc_copy {
    kv_db *db;
    blob_writer *w;
    uint8_t *buf;
    blob_ref out;       /* the new list; data extents get their record's length once it is known */
    uint64_t rec_off;   /* where the new record starts */
    uint64_t written;   /* its bytes so far */
    blob_remap *map;    /* if set: each data extent copied and where its copy went */
    blob_remap *done;   /* if set: what earlier values of the pass copied (sealed), to be shared */
    blob_remap fresh;   /* with done: the bytes this value copies into its new record */
} gc_copy;

#define GC_REC_LEN_UNKNOWN (1ull << 62)

/* Read extent x (verifying each chunk) and, when writing, append its bytes to the new record: their place in *to. */
static int gc_copy_bytes(gc_copy *g, const blob_extent *x, blob_extent *to) {
    blob_extent e = *x;
    blob_ref one = {.size = e.len, .n = 1, .cap = 1, .ext = &e};
    int rc = KV_OK;
    for (uint64_t off = 0; !rc && off < x->len;) {
        size_t got = 0;
        rc = blob_read(g->db->blobs, &one, off, g->buf, BLOB_CHUNK, &got);
        if (!rc && got == 0) rc = kv_set_error(KV_ECORRUPT, "blob value shorter than its reference");
        if (!rc && g->w) rc = blob_writer_append(g->w, g->buf, got);
        off += got;
    }
    if (rc || !g->w) return rc;
    *to = (blob_extent){blob_writer_file_no(g->w), g->rec_off, GC_REC_LEN_UNKNOWN, g->written, x->len};
    g->written += x->len;
    return g->done ? blob_remap_add(&g->fresh, x, to) : KV_OK;
}

static int gc_copy_piece(void *ctx, const blob_ref *piece) {
    gc_copy *g = ctx;
    int rc = KV_OK;
    for (size_t i = 0; i < piece->n && !rc; i++) {
        blob_extent x = piece->ext[i], to;
        if (x.file_no == 0) {
            if (g->w) rc = blob_ref_append(&g->out, &x);
            continue;
        }
        if (!g->w) { /* only reading it through (gc_value_readable) */
            rc = gc_copy_bytes(g, &x, &to);
            continue;
        }
        /* piece by piece: runs of bytes copied before (their copy), and runs not (copied now) */
        for (uint64_t pos = x.skip, end = x.skip + x.len; !rc && pos < end;) {
            blob_extent part = x;
            part.skip = pos;
            part.len = end - pos;
            bool shared = g->done && blob_remap_piece(g->done, &x, pos, &to);
            if (g->done) part.len = to.len;
            if (!shared) rc = gc_copy_bytes(g, &part, &to);
            if (!rc) rc = blob_ref_append(&g->out, &to);
            if (!rc && g->map) rc = blob_remap_add(g->map, &part, &to);
            pos += part.len;
        }
    }
    return rc;
}

static int gc_write_page(void *w, const void *data, size_t len, blob_extent *e) { return blob_writer_add(w, data, len, e); }

/* Read every chunk of a value (verifying each) without copying it: a value with a damaged chunk is found before any
 * file is created for its copy. */
static int gc_value_readable(kv_db *db, const uint8_t *payload, size_t plen) {
    gc_copy g = {.db = db};
    g.buf = malloc(BLOB_CHUNK);
    int rc = g.buf ? blob_value_pieces(db->blobs, payload, plen, gc_copy_piece, &g)
                   : kv_set_error(KV_ENOMEM, "blob gc: out of memory");
    free(g.buf);
    return rc;
}

/* At most this many entries (about 1 MiB) are kept of what a pass copied, to be shared by later values (gc_copy). */
#define GC_DONE_MAX 16384

/* Give the extents of the record just written (at rec_off of file no) their length, once it is known. */
static void gc_set_rec_len(blob_extent *e, uint64_t no, uint64_t rec_off, uint64_t rec_len) {
    if (e->file_no == no && e->rec_off == rec_off && e->rec_len == GC_REC_LEN_UNKNOWN) e->rec_len = rec_len;
}

/* Copy the value described by payload (either form) into w: its data as one fresh record, then, if the new list is
 * long, its pages. The new reference in out; with map, where each extent of payload went, and payload's pages (for
 * a swap into a value changed meanwhile: BOP_REMAP_IF). With done (a sealed map of what the pass copied before, into
 * w, synced), bytes it holds are not copied again but named where they are, and the bytes copied now are added to it
 * while it has room for them (GC_DONE_MAX). */
static int gc_copy_value(kv_db *db, blob_writer *w, const uint8_t *payload, size_t plen, kv_bytes *out,
                         blob_remap *map, blob_remap *done) {
    gc_copy g = {.db = db, .w = w, .rec_off = blob_writer_size(w), .map = map, .done = done};
    g.buf = malloc(BLOB_CHUNK);
    int rc = g.buf ? blob_writer_begin(w) : kv_set_error(KV_ENOMEM, "blob gc: out of memory");
    bool begun = rc == KV_OK;
    if (!rc) rc = blob_value_pieces(db->blobs, payload, plen, gc_copy_piece, &g);
    blob_extent rec;
    if (begun) { /* also after a failure: the writer must be out of the record for the next value */
        int erc = blob_writer_end(w, &rec);
        if (!rc) rc = erc;
    }
    uint64_t no = blob_writer_file_no(w);
    for (size_t i = 0; !rc && i < g.out.n; i++) gc_set_rec_len(&g.out.ext[i], no, g.rec_off, rec.rec_len);
    for (size_t i = 0; !rc && map && i < map->n; i++) gc_set_rec_len(&map->e[i].to, no, g.rec_off, rec.rec_len);
    for (size_t i = 0; !rc && i < g.fresh.n; i++) gc_set_rec_len(&g.fresh.e[i].to, no, g.rec_off, rec.rec_len);
    if (!rc && done && done->n + g.fresh.n <= GC_DONE_MAX) {
        blob_remap_seal(&g.fresh);
        rc = blob_remap_merge(done, &g.fresh);
    }
    blob_remap_free(&g.fresh);
    if (!rc && map) {
        blob_remap_seal(map);
        if (blob_ref_is_paged(payload, plen)) {
            blob_pages pp = {0};
            rc = blob_pages_decode(payload, plen, &pp);
            for (size_t i = 0; !rc && i < pp.n; i++) {
                blob_extent pe = blob_page_extent(&pp.pg[i]);
                int added = blob_page_set_add(&map->pages, &pe);
                if (added < 0) rc = added;
            }
            blob_pages_free(&pp);
        }
    }
    blob_pager pg = {db->blobs, gc_write_page, w, (size_t)db->opt.blob_page_extents};
    bytes_clear(out);
    if (!rc) rc = blob_ref_finish(&pg, &g.out, out);
    free(g.buf);
    blob_ref_free(&g.out);
    return rc;
}

/* A byte range of a record that a newest value uses. */
typedef struct gc_range {
    uint64_t file_no, rec_off, skip, len;
} gc_range;

/* The ranges newest values use, to count each byte once however many values name it (kv_batch_copy_range shares
 * records). At most GC_RANGES_MAX are held; when the array is full, it is sorted and cut to the ranges' union, and
 * once that leaves less than a quarter of it free, further ranges are counted as they come: a shared byte once for
 * each value naming it, as before, which can only make a file look fuller than it is. */
#define GC_RANGES_MAX 32768 /* 1 MiB */
size_t db_gc_ranges_max = GC_RANGES_MAX;
typedef struct gc_ranges {
    gc_range *r;
    size_t n, cap; /* cap grows by doubling up to GC_RANGES_MAX (while memory allows) */
    bool full;
} gc_ranges;

static int gc_range_cmp(const void *a, const void *b) {
    const gc_range *x = a, *y = b;
    if (x->file_no != y->file_no) return x->file_no < y->file_no ? -1 : 1;
    if (x->rec_off != y->rec_off) return x->rec_off < y->rec_off ? -1 : 1;
    return x->skip < y->skip ? -1 : x->skip > y->skip;
}

/* Sort the ranges and merge those that overlap or touch inside one record. */
static void gc_ranges_union(gc_ranges *rs) {
    if (rs->n) qsort(rs->r, rs->n, sizeof *rs->r, gc_range_cmp);
    size_t k = 0;
    for (size_t i = 0; i < rs->n; i++) {
        gc_range x = rs->r[i];
        gc_range *p = k ? &rs->r[k - 1] : NULL;
        if (p && p->file_no == x.file_no && p->rec_off == x.rec_off && x.skip <= p->skip + p->len) {
            if (x.skip + x.len > p->skip + p->len) p->len = x.skip + x.len - p->skip;
        } else {
            rs->r[k++] = x;
        }
    }
    rs->n = k;
}

/* Hold the range of data extent e: false if there is no room (the caller counts it now). */
static bool gc_ranges_add(gc_ranges *rs, const blob_extent *e) {
    if (rs->full) return false;
    size_t max = db_gc_ranges_max < GC_RANGES_MAX ? db_gc_ranges_max : GC_RANGES_MAX;
    if (rs->n == rs->cap && rs->cap < max) {
        size_t cap = rs->cap ? rs->cap * 2 : 256;
        if (cap > max) cap = max;
        gc_range *p = realloc(rs->r, cap * sizeof *p);
        if (p) {
            rs->r = p;
            rs->cap = cap;
        }
    }
    if (rs->n == rs->cap) { /* at the bound, or out of memory */
        gc_ranges_union(rs);
        rs->full = rs->n >= rs->cap / 4 * 3;
        if (rs->full) return false;
    }
    rs->r[rs->n++] = (gc_range){e->file_no, e->rec_off, e->skip, e->len};
    return true;
}

/* The scan: bytes of each candidate file that any version references, and that the newest versions use (each byte
 * once, as far as ranges holds them). A page is looked into once: older versions share most pages with the newest,
 * and what they reference is already counted. */
typedef struct gc_scan {
    gc_file *fs;
    size_t n;
    bool newest;
    blob_page_set seen;
    gc_ranges ranges;
} gc_scan;

static int gc_scan_extent(void *ctx, const blob_extent *e, bool page) {
    gc_scan *g = ctx;
    gc_file *f = gc_find(g->fs, g->n, e->file_no);
    if (f) {
        f->referenced += e->len + 1;
        if (g->newest && (page || !gc_ranges_add(&g->ranges, e))) f->live += e->len;
    }
    if (!page) return 0;
    int added = blob_page_set_add(&g->seen, e);
    if (added < 0) return added;
    return added || g->newest ? 0 : BLOB_VISIT_SKIP;
}

/* Count the ranges held into the files' live bytes, each byte once. */
static void gc_scan_count_ranges(gc_scan *g) {
    gc_ranges_union(&g->ranges);
    for (size_t i = 0; i < g->ranges.n; i++) {
        gc_file *f = gc_find(g->fs, g->n, g->ranges.r[i].file_no);
        if (f) f->live += g->ranges.r[i].len;
    }
}

/* Whether a value uses any of the blob files nos[0..n). */
typedef struct gc_use {
    const uint64_t *nos;
    size_t n;
    bool uses;
} gc_use;

static int gc_uses_file(void *ctx, const blob_extent *e, bool page) {
    (void)page;
    gc_use *u = ctx;
    for (size_t i = 0; i < u->n; i++)
        if (e->file_no == u->nos[i]) u->uses = true;
    return 0; /* on to the end: a damaged page anywhere must be seen */
}

/* What gc_rewrite_file found: values that used the file, and those of them left where they were because a chunk of
 * theirs is damaged (the first one's key and keyspace in bad_key, bad_ks). */
typedef struct gc_rewrite {
    uint64_t found, unreadable;
    kv_bytes bad_key;
    int bad_ks;
} gc_rewrite;

void (*db_gc_copied_hook)(kv_db *db, int ks, const void *key, size_t klen);

/* Copy every newest value that uses blob file `no` into *w (made on first use; synced after each value) and swap its
 * reference with a REMAP_IF batch: a value changed meanwhile (a database file written all the time) keeps its
 * changes, and what it still reads from where the copy was taken is read from the copy instead. With done, bytes
 * already copied into *w are shared, not copied again (gc_copy_value). */
static int gc_rewrite_file(kv_db *db, uint64_t no, blob_writer **w, blob_remap *done, gc_rewrite *r) {
    int rc = KV_OK;
    kv_iter *uit = NULL;
    for (int ks = 0; ks < 256 && !rc; ks++) {
        kv_read_opts ro = {.keyspace = (uint8_t)ks};
        rc = kv_iter_new(db, &ro, &uit);
        if (rc) break;
        for (kv_iter_seek_first(uit); !rc && kv_iter_valid(uit); kv_iter_next(uit)) {
            kv_info info;
            if (kv_iter_info(uit, &info) || !info.external) continue;
            const uint8_t *p;
            size_t plen;
            if (db_iter_payload(uit, &p, &plen)) continue;
            gc_use use = {&no, 1, false};
            if (blob_value_visit(db->blobs, p, plen, gc_uses_file, &use) || !use.uses) continue;
            r->found++;
            size_t kl;
            const void *key = kv_iter_key(uit, &kl);
            /* A value with a damaged chunk is left as it is (the file stays referenced, so it is not deleted), and
             * found before a file is made for its copy: else every pass would make one. It is reported. */
            int vr = gc_value_readable(db, p, plen);
            if (vr == KV_ECORRUPT) {
                if (r->unreadable++ == 0) {
                    r->bad_ks = ks;
                    bytes_clear(&r->bad_key);
                    rc = bytes_append(&r->bad_key, key, kl);
                }
                continue;
            }
            if (vr) {
                rc = vr;
                break;
            }
            if (!*w) {
                rc = db_new_blob_file(db, w);
                if (rc) break;
            }
            kv_bytes nref = {0};
            blob_remap map = {0};
            rc = gc_copy_value(db, *w, p, plen, &nref, &map, done);
            if (!rc) rc = blob_writer_sync(*w);
            if (!rc && db_gc_copied_hook) db_gc_copied_hook(db, ks, key, kl);
            if (!rc) {
                kv_batch b = {0};
                batch_op *op;
                rc = kv_batch_delete_ks(&b, (uint8_t)ks, key, kl); /* placeholder op, rewritten below */
                if (!rc) {
                    op = &b.ops[0];
                    op->kind = BOP_REMAP_IF;
                    op->key2_off = b.data.len;
                    op->k2len = plen;
                    rc = bytes_append(&b.data, p, plen);
                    op->data_off = b.data.len;
                    op->len = nref.len;
                    op->remap = &map;
                    if (!rc) rc = bytes_append(&b.data, nref.data, nref.len);
                    b.reads = true;
                }
                if (!rc) {
                    rc = db_write_internal(db, &b, 0, NULL);
                    if (rc == KV_ENOTFOUND) rc = KV_OK; /* nothing of it is where it was copied from any more */
                }
                free(b.ops);
                bytes_free(&b.data);
            }
            bytes_free(&nref);
            blob_remap_free(&map);
        }
        if (!rc) rc = kv_iter_status(uit);
        kv_iter_free(uit);
        uit = NULL;
    }
    return rc;
}

/* Lead the write queue (as a writer without a batch): while we do, no group is between resolving its batches, which
 * may append values to the shared blob file, and inserting them into the memtable. */
static void queue_hold(kv_db *db, writer *w) {
    *w = (writer){0};
    pthread_cond_init(&w->cv, NULL);
    pthread_mutex_lock(&db->mu);
    if (db->writers_tail) db->writers_tail->next = w;
    else db->writers_head = w;
    db->writers_tail = w;
    while (db->writers_head != w) pthread_cond_wait(&w->cv, &db->mu);
    pthread_mutex_unlock(&db->mu);
}

static void queue_release(kv_db *db, writer *w) {
    pthread_mutex_lock(&db->mu);
    db->writers_head = w->next;
    if (!db->writers_head) db->writers_tail = NULL;
    else writer_wake(db->writers_head);
    pthread_mutex_unlock(&db->mu);
    pthread_cond_destroy(&w->cv);
}

/* What a pass did: files taken out of the version (deleted) or copied out, and whether the shared blob file (which
 * no pass takes) holds enough garbage to be closed, so that the next pass can take it. */
typedef struct gc_outcome {
    uint64_t deleted, rewritten, retired;
    bool retire_active;
} gc_outcome;

/* The shared blob file is closed for collection when at least this much of it, and more than the ratio, is garbage. */
#define GC_RETIRE_ACTIVE_BYTES (1u << 20)

static int gc_pass(kv_db *db, double min_ratio, gc_outcome *out) {
    /* The candidates and the pass's view of the references are taken while no write group is in flight: a group
     * resolves its batches (appending their large values to the shared blob file, which may fill and retire) before
     * it inserts them, and a file retired meanwhile would look unreferenced to a pass that cannot see them yet. Files
     * retired after this point hold nothing of the pass's view, and are not candidates (not in it). */
    writer qw;
    queue_hold(db, &qw);
    /* the candidates: blob files that nobody is writing */
    pthread_mutex_lock(&db->mu);
    version *v = db->vs->current;
    size_t n = v->nblobs;
    gc_file *fs = calloc(n ? n : 1, sizeof *fs);
    if (!fs) {
        pthread_mutex_unlock(&db->mu);
        queue_release(db, &qw);
        return KV_ENOMEM;
    }
    uint64_t active = 0;
    pthread_mutex_unlock(&db->mu);
    pthread_mutex_lock(&db->blob_mu);
    if (db->blob_w) active = blob_writer_file_no(db->blob_w);
    pthread_mutex_unlock(&db->blob_mu);
    pthread_mutex_lock(&db->mu);
    /* taken while no group is in flight: every entry in the memtables is at or below the last sequence */
    shadow_walk sw = {.oldest = db_oldest_snapshot_seq(db)};
    /* what the view holds: the background's next pass is due this many bytes later, also if this one fails */
    atomic_store(&db->gc_mark, atomic_load(&db->st_blob_bytes));
    v = db->vs->current;
    n = n < v->nblobs ? n : v->nblobs;
    for (size_t i = 0; i < n; i++) {
        fs[i].no = v->blobs[i]->file_no;
        bool pending = false;
        for (size_t j = 0; j < db->npending; j++)
            if (db->pending[j] == fs[i].no) pending = true;
        /* a record that may come back at recovery, which the pass cannot see, may name it (ghost_log_no) */
        bool ghost = db->ghost_log_no && db->vs->log_number <= db->ghost_log_no && fs[i].no < db->ghost_next_file;
        fs[i].candidate = fs[i].no != active && !pending && !ghost;
    }
    pthread_mutex_unlock(&db->mu);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        file_name(path, sizeof path, db->dir, fs[i].no, "blob");
        if (db->env->file_size(db->env, path, &fs[i].size)) fs[i].candidate = false;
    }

    /* one pass over every entry: what references each file at all, and what the newest versions use */
    db_raw_iter *ri;
    iter *it;
    int rc = db_raw_iter_new(db, false, &ri, &it);
    queue_release(db, &qw);
    gc_scan scan = {.fs = fs, .n = n};
    bool damaged = false, damaged_data = false;
    for (it && !rc ? it->seek_first(it) : (void)0; !rc && it->valid(it); it->next(it)) {
        size_t kl, vl;
        const uint8_t *k = it->key(it, &kl), *val = it->value(it, &vl);
        bool newest;
        /* an entry compaction may drop holds no file: its file may go before compaction meets it (shadow_walk) */
        if (shadow_walk_next(&sw, k, kl, &newest) || ikey_type(k, kl) != KV_TYPE_BLOB) continue;
        int64_t ts;
        const uint8_t *p;
        size_t plen;
        if (entry_decode(val, vl, &ts, &p, &plen)) continue;
        scan.newest = newest;
        int v = blob_value_visit(db->blobs, p, plen, gc_scan_extent, &scan);
        /* A damaged reference or page hides which records it names: nothing is deleted while one is in the store
         * (their bytes are intact, a repair could still reach them), and so nothing is rewritten either (the copies
         * would only add files). Any other failure (I/O, memory) also stops the pass before anything is deleted. */
        if (v == KV_ECORRUPT) damaged = true;
        else if (v) rc = v;
    }
    if (!rc && it) rc = it->status(it);
    if (ri) db_raw_iter_free(db, ri);
    gc_scan_count_ranges(&scan);
    free(scan.ranges.r);
    if (!rc && !damaged) {
        /* what the pass saw: bytes of the files it looked at that no newest value uses (chunk headers included) */
        uint64_t garbage = 0;
        for (size_t i = 0; i < n; i++)
            if (fs[i].candidate && fs[i].size > BLOB_HEADER + fs[i].live) garbage += fs[i].size - BLOB_HEADER - fs[i].live;
        atomic_store(&db->st_blob_garbage, garbage + 1);
        uint64_t live = 0;
        for (size_t i = 0; i < n; i++) live += fs[i].live;
        atomic_store(&db->gc_live_bytes, live);
        gc_file *a = active ? gc_find(fs, n, active) : NULL;
        if (a && a->size > BLOB_HEADER + a->live) {
            uint64_t g = a->size - BLOB_HEADER - a->live;
            out->retire_active = g >= GC_RETIRE_ACTIVE_BYTES && (double)g / (double)(a->size - BLOB_HEADER) > min_ratio;
        }
    }

    /* files nothing references go; files mostly garbage get their live values copied out */
    version_edit e;
    edit_init(&e);
    blob_writer *w = NULL;
    blob_remap done = {0}; /* what the pass copied into w: values that share records share their copy */
    gc_rewrite r = {0};
    for (size_t i = 0; i < n && !rc; i++) {
        gc_file *f = &fs[i];
        if (!f->candidate) continue;
        if (damaged) break;
        if (f->referenced == 0) {
            rc = edit_delete_blob(&e, f->no);
            if (!rc) out->deleted++;
            continue;
        }
        double garbage = f->size > BLOB_HEADER ? 1.0 - (double)f->live / (double)(f->size - BLOB_HEADER) : 0;
        /* live counts data bytes, not the 8-byte chunk headers: a file with nothing but live values looks up to
         * about 1% garbage (1 KiB records), which is not worth a copy (a copy would look the same) */
        if (garbage <= min_ratio || garbage < 0.01 || f->live == 0) continue;
        r.found = r.unreadable = 0;
        rc = gc_rewrite_file(db, f->no, &w, &done, &r);
        if (r.unreadable) damaged_data = true;
        else if (!rc) out->rewritten++;
    }
    bytes_free(&r.bad_key);
    blob_remap_free(&done);
    if (w) db_close_new_blob_file(db, w);
    /* A file that only droppable entries named is safe to delete once what shadows them (a delete, a newer value)
     * is durable: a power loss that took the newer entry would bring back an older one that names a deleted file. */
    if (!rc && e.nblob_del) rc = kv_sync(db);
    pthread_mutex_lock(&db->mu);
    if (!rc && e.nblob_del) rc = vset_log_and_apply(db->vs, &e);
    db_delete_obsolete_files(db);
    pthread_mutex_unlock(&db->mu);
    if (!rc && e.nblob_del) {
        /* deleted files leave blob_lost: nothing can use them any more */
        pthread_mutex_lock(&db->blob_mu);
        for (size_t d = 0; d < e.nblob_del; d++)
            for (size_t i = 0; i < db->nblob_lost; i++)
                if (db->blob_lost[i] == e.blob_del[d]) {
                    db->nblob_lost--;
                    db->blob_lost[i] = db->blob_lost[db->nblob_lost];
                    db->blob_lost_synced[i] = db->blob_lost_synced[db->nblob_lost];
                    db->blob_lost_rescued[i] = db->blob_lost_rescued[db->nblob_lost];
                    break;
                }
        pthread_mutex_unlock(&db->blob_mu);
    }
    edit_free(&e);
    bytes_free(&sw.prev);
    blob_page_set_free(&scan.seen);
    free(fs);
    if (!rc && damaged)
        rc = kv_set_error(KV_ECORRUPT, "blob gc: a damaged blob reference stops blob garbage collection until every "
                                       "version of its value is gone (rewritten or deleted, then compacted away; "
                                       "kv_check names it)");
    else if (!rc && damaged_data)
        rc = kv_set_error(KV_ECORRUPT, "blob gc: a value with a damaged blob chunk was left where it is, and so was "
                                       "its file (kv_check names it)");
    return rc;
}

int db_blob_gc(kv_db *db, double min_ratio, uint64_t *freed) {
    if (freed) *freed = 0;
    if (!db_enter(db)) return KV_ECLOSED;
    if (db->opt.read_only) {
        db_leave(db);
        return kv_set_error(KV_EREADONLY, "the store was opened read-only");
    }
    gc_outcome o = {0};
    int rc = gc_pass(db, min_ratio, &o);
    if (!rc && o.retire_active) {
        /* Close the shared blob file and pass again, now with it: a large file written and deleted would otherwise
         * keep its space until later values filled the file (256 MiB by default). The next large value starts a
         * new file. The pass takes the file as a candidate only after it has led the write queue, when every group
         * that appended to it has inserted what it appended. */
        pthread_mutex_lock(&db->blob_mu);
        rc = db_blob_writer_retire(db);
        pthread_mutex_unlock(&db->blob_mu);
        if (!rc) {
            o.retired = 1; /* later passes can take it, if this one cannot */
            rc = gc_pass(db, min_ratio, &o);
        }
    }
    /* A file whose values a pass copied out is named, after it, only by the entries the copies shadow, which the
     * pass counted as live (they were newer than its oldest snapshot): one more pass deletes it. */
    if (!rc && o.rewritten) {
        gc_outcome again = {0};
        rc = gc_pass(db, min_ratio, &again);
        o.deleted += again.deleted;
    }
    if (freed) *freed = o.deleted + o.rewritten + o.retired;
    db_leave(db);
    return rc;
}

int kv_blob_gc(kv_db *db, double min_ratio) {
    if (!(min_ratio >= 0 && min_ratio <= 1)) /* NaN too */
        return kv_set_error(KV_EINVAL, "kv_blob_gc: min_ratio must be between 0 and 1");
    return db_blob_gc(db, min_ratio, NULL);
}

/* ---- blob files whose fsync failed ------------------------------------------------------------------------------ */

/* Each file of blob_lost in turn: copy the newest values that use it (gc_rewrite_file) until a pass finds none. A
 * pass that finds none proves the file is done for good: it was retired when its fsync failed, so no value is
 * appended to it any more, and a later batch can only copy a reference (a move, a write into part of a value) from a
 * newest value, none of which names it. Values that older versions and snapshots still see there are not copied:
 * their bytes may be gone after a power loss, and reads of them then report damage. */
int db_blob_rescue(kv_db *db) {
    if (db->opt.read_only) return KV_OK;
    /* their fsyncs retried first: a table installed from now on may name their bytes (db_sync_blob_file) */
    int rc = db_sync_blob_file(db, false);
    if (rc) return rc;
    blob_writer *w = NULL;
    pthread_mutex_lock(&db->rescue_mu);
    for (;;) {
        pthread_mutex_lock(&db->blob_mu);
        int un = db_blob_lost_unrescued(db);
        uint64_t no = un >= 0 ? db->blob_lost[un] : 0;
        pthread_mutex_unlock(&db->blob_mu);
        if (!no) break;
        gc_rewrite r = {0};
        for (int pass = 0; pass < 4; pass++) {
            r.found = r.unreadable = 0;
            rc = gc_rewrite_file(db, no, &w, NULL, &r);
            if (rc || r.unreadable || r.found == 0) break;
        }
        char path[4096];
        file_name(path, sizeof path, db->dir, no, "blob");
        if (!rc && r.unreadable)
            rc = kv_set_error(KV_ECORRUPT,
                              "%s: an fsync of it failed, and the value of key \"%.*s\" (keyspace %d) in it can no "
                              "longer be read whole (%" PRIu64 " such value(s)): write or delete them, then sync again",
                              path, (int)(r.bad_key.len > 200 ? 200 : r.bad_key.len), (const char *)r.bad_key.data,
                              r.bad_ks, r.unreadable);
        else if (!rc && r.found)
            rc = kv_set_error(KV_EIO, "%s: values kept being moved while they were copied out of it after its "
                                        "fsync failed: sync again", path);
        bytes_free(&r.bad_key);
        if (rc) break;
        /* The copies' batches are in the log, after the records that name the lost bytes; recovery stops at the
         * first record whose blob bytes are missing, which would drop them and every later batch. So those records
         * must leave the log for tables before a sync vouches for anything: the log-failure path does exactly that.
         * The debt and the mark are set while we lead the write queue: a synced group in flight either saw the file
         * unrescued when it vouched (and failed), or starts after and settles the debt first. */
        writer qw;
        queue_hold(db, &qw);
        pthread_mutex_lock(&db->mu);
        uint64_t s = atomic_load(&db->last_seq);
        if (s > db->sync_debt) db->sync_debt = s;
        pthread_mutex_unlock(&db->mu);
        pthread_mutex_lock(&db->blob_mu);
        for (size_t i = 0; i < db->nblob_lost; i++)
            if (db->blob_lost[i] == no) {
                if (!db->blob_lost_synced[i]) /* it failed again meanwhile */
                    rc = kv_set_error(KV_EIO, "%s: its fsync failed again", path);
                else
                    db->blob_lost_rescued[i] = true; /* listed still: flushes keep copying what uses it */
                break;
            }
        pthread_mutex_unlock(&db->blob_mu);
        queue_release(db, &qw);
        if (rc) break;
    }
    if (w) db_close_new_blob_file(db, w);
    pthread_mutex_unlock(&db->rescue_mu);
    return rc;
}

int db_copy_if_lost(kv_db *db, const uint64_t *lost, size_t n, blob_writer **w, const uint8_t *payload, size_t plen,
                    kv_bytes *out) {
    gc_use u = {lost, n, false};
    if (blob_value_visit(db->blobs, payload, plen, gc_uses_file, &u) || !u.uses) return 0;
    int rc = gc_value_readable(db, payload, plen);
    if (rc == KV_ECORRUPT) return 0; /* already damaged: left as it is, for reads and kv_check to report */
    if (!rc && !*w) rc = db_new_blob_file(db, w);
    if (!rc) rc = gc_copy_value(db, *w, payload, plen, out, NULL, NULL);
    return rc ? rc : 1;
}
