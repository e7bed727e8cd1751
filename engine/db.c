/*
 * db.c — opening, recovering and closing a store, and the write path (group commit).
 *
 * Invariants (see also db_impl.h)
 *  - Writers queue in arrival order. The writer at the head is the leader: it makes room (switching memtables when
 *    full, waiting when flushing falls behind), takes the writers queued behind it into its group, resolves each
 *    batch into a log record, appends the records to the write-ahead log with one sync for the group (when any
 *    writer asked for one), inserts them into the memtable, then publishes last_seq and wakes the group.
 *  - Each committed batch gets the next sequence number; a batch that fails to resolve (KV_ENOTFOUND of a move)
 *    consumes none and changes nothing.
 *  - A log append that fails leaves the log "broken": the next write starts a new log file, so a partial record can
 *    only ever be the last record of a log (a torn tail, dropped at recovery).
 *  - A log is deleted only when its number is below vset->log_number, i.e. every memtable that had entries in it
 *    has been flushed and recorded in the manifest.
 */
#include <dirent.h>
#include <sched.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db_impl.h"
#include "dbformat.h"
#include "error.h"

void kv_options_init(kv_options *o) {
    memset(o, 0, sizeof *o);
    o->create_if_missing = true;
    o->memtable_bytes = 8u << 20;
    o->max_immutable = 2;
    o->block_bytes = 4096;
    o->block_restart_interval = 8;
    o->compression = true;
    o->bloom_bits_per_key = 10;
    o->block_cache_bytes = 32u << 20;
    o->max_open_tables = 256;
    o->table_bytes = 4u << 20;
    o->l0_compaction_trigger = 4;
    o->l0_slowdown_trigger = 12;
    o->l0_stop_trigger = 20;
    o->level1_bytes = 32ull << 20;
    o->level_multiplier = 10;
    o->blob_threshold = 64u << 10;
    o->blob_file_bytes = 256ull << 20;
    o->blob_gc_ratio = 0.5;
    o->blob_page_extents = BLOB_PAGE_EXTENTS_DEFAULT;
    o->background_threads = true;
}

uint64_t db_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t db_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void kv_buf_free(kv_buf *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

/* ---- entering and leaving ------------------------------------------------------------------------------------------ */

bool db_enter(kv_db *db) {
    kv_clear_error(); /* a call that fails sets its own message; one that succeeds leaves none (kv_errmsg) */
    if (!db) {
        kv_set_error(KV_ECLOSED, "no store (a NULL handle)");
        return false;
    }
    atomic_fetch_add(&db->active, 1);
    if (atomic_load(&db->closed)) {
        atomic_fetch_sub(&db->active, 1);
        kv_set_error(KV_ECLOSED, "the store is closed");
        return false;
    }
    return true;
}

void db_leave(kv_db *db) { atomic_fetch_sub(&db->active, 1); }

static void free_resources(kv_db *db) {
    if (db->resources_freed) return;
    db->resources_freed = true;
    if (db->mem) memtable_unref(db->mem);
    for (int i = 0; i < db->nimm; i++) memtable_unref(db->imm[i].mem);
    db->mem = NULL;
    db->nimm = 0;
    if (db->tables) table_cache_free(db->tables);
    if (db->blobs) blob_store_free(db->blobs);
    if (db->vs) vset_free(db->vs);
    if (db->cache) block_cache_free(db->cache);
    db->tables = NULL;
    db->blobs = NULL;
    db->vs = NULL;
    db->cache = NULL;
    bytes_free(&db->scratch);
    free(db->pending);
    db->pending = NULL;
    if (db->lock) db->env->unlock(db->env, db->lock);
    db->lock = NULL;
    if (db->env && db->env != db->opt.env && db->env->destroy) db->env->destroy(db->env);
}

void db_unpin(kv_db *db) {
    if (atomic_fetch_sub(&db->pins, 1) == 1) free_resources(db);
}

/* ---- pending outputs and obsolete files ---------------------------------------------------------------------------- */

void pending_add(kv_db *db, uint64_t no) {
    if (db->npending == db->cap_pending) {
        size_t cap = db->cap_pending ? db->cap_pending * 2 : 16;
        uint64_t *p = realloc(db->pending, cap * sizeof *p);
        if (!p) return; /* worst case a new file could be deleted early by a sweep; sweeps skip numbers >= next_file */
        db->pending = p;
        db->cap_pending = cap;
    }
    db->pending[db->npending++] = no;
}

void pending_remove(kv_db *db, uint64_t no) {
    for (size_t i = 0; i < db->npending; i++)
        if (db->pending[i] == no) {
            db->pending[i] = db->pending[--db->npending];
            return;
        }
}

static bool is_pending(kv_db *db, uint64_t no) {
    for (size_t i = 0; i < db->npending; i++)
        if (db->pending[i] == no) return true;
    return false;
}

bool db_parse_file_name(const char *name, uint64_t *no, const char **ext) {
    char *end;
    if (name[0] < '0' || name[0] > '9') return false;
    errno = 0;
    unsigned long long v = strtoull(name, &end, 10);
    if (errno || *end != '.' || v > KV_MAX_FILE_NUMBER) return false; /* not a name the store makes */
    *no = v;
    *ext = end + 1;
    return true;
}

void db_delete_obsolete_files(kv_db *db) {
    char **names;
    size_t n;
    if (db->opt.read_only || db->env->list_dir(db->env, db->dir, &names, &n) != KV_OK) return;
    for (size_t i = 0; i < n; i++) {
        uint64_t no;
        const char *ext;
        bool remove = false;
        if (db_parse_file_name(names[i], &no, &ext)) {
            if (strcmp(ext, "log") == 0) remove = no < db->vs->log_number && no != db->log_no && !db->checkpoints;
            else if (strcmp(ext, "sst") == 0 || strcmp(ext, "blob") == 0)
                remove = no < db->vs->next_file && !is_pending(db, no) && !db->vs->deletions_unsafe &&
                         !vset_file_is_live(db->vs, no);
            if (remove && strcmp(ext, "sst") == 0) table_cache_evict(db->tables, no);
            if (remove && strcmp(ext, "blob") == 0) blob_store_forget(db->blobs, no);
        } else if (strncmp(names[i], "MANIFEST-", 9) == 0) {
            remove = strtoull(names[i] + 9, NULL, 10) < db->vs->manifest_no;
        }
        if (remove) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", db->dir, names[i]);
            db->env->remove(db->env, path);
        }
    }
    kv_env_free_names(names, n);
}

uint64_t db_oldest_snapshot_seq(kv_db *db) {
    if (db->snaps.next != &db->snaps) return db->snaps.next->seq;
    return atomic_load(&db->last_seq);
}

/* ---- logs ------------------------------------------------------------------------------------------------------------ */

/* Start a new write-ahead log (caller holds mu). */
static int new_log(kv_db *db) {
    uint64_t no = vset_new_file_number(db->vs);
    char path[4096];
    file_name(path, sizeof path, db->dir, no, "log");
    wal_writer *w;
    int rc;
    for (int attempt = 0;; attempt++) {
        rc = wal_writer_open_ahead(db->env, path, &w);
        if (!rc) rc = db->env->sync_dir(db->env, db->dir);
        if (rc && w) {
            wal_writer_close(w);
            kv_env_remove_quietly(db->env, path);
        }
        /* a disk another process filled: the reserve makes room for the log that deletes need */
        if (rc != KV_ENOSPC || attempt > 0 || !db_reserve_release(db)) break;
    }
    if (rc) return rc;
    if (db->log) {
        /* A log that holds no record is nothing recovery needs. A new log starts after every failed append, so on a
         * full disk each write that failed left one more empty log behind (17,000 of them in a minute of retries). */
        bool empty = wal_writer_size(db->log) == 0 && !wal_writer_broken(db->log);
        wal_writer_close(db->log);
        if (empty) {
            char old[4096];
            file_name(old, sizeof old, db->dir, db->log_no, "log");
            (void)db->env->remove(db->env, old);
        }
    }
    db->log = w;
    db->log_no = no;
    db->log_broken = false;
    return KV_OK;
}

/* Apply one log record to the memtable. */
static int apply_record(kv_db *db, memtable *m, const uint8_t *rec, size_t len, const char *name, uint64_t offset,
                        uint64_t *seq_out) {
    uint64_t seq;
    int64_t ts;
    size_t count;
    const uint8_t *p, *lim = rec + len;
    int rc = batch_record_decode(rec, len, &seq, &ts, &count, &p, name, offset);
    if (rc) return rc;
    uint8_t tsbuf[10];
    size_t tslen = (size_t)(put_varint64(tsbuf, (uint64_t)ts) - tsbuf);
    kv_bytes *val = &db->scratch;
    for (size_t i = 0; i < count; i++) {
        resolved_op op;
        p = batch_record_next_op(p, lim, &op);
        if (!p) return kv_set_error(KV_ECORRUPT, "%s: malformed operation in batch record at offset %" PRIu64, name, offset);
        bytes_clear(val);
        if (bytes_append(val, tsbuf, tslen) || bytes_append(val, op.payload, op.plen)) return KV_ENOMEM;
        rc = memtable_add(m, seq, op.type, op.ukey, op.ulen, val->data, val->len);
        if (rc) return rc;
    }
    if (p != lim) return kv_set_error(KV_ECORRUPT, "%s: batch record at offset %" PRIu64 " has %zu bytes after its "
                                                   "last operation", name, offset, (size_t)(lim - p));
    *seq_out = seq;
    return KV_OK;
}

/* Write a memtable to a level-0 table during recovery (caller holds mu). */
static int write_level0_once(kv_db *db, memtable *m, version_edit *e) {
    uint64_t no = vset_new_file_number(db->vs);
    char path[4096];
    file_name(path, sizeof path, db->dir, no, "sst");
    sst_options so = {db->opt.block_bytes, db->opt.block_restart_interval, db->opt.compression,
                      db->opt.bloom_bits_per_key, false};
    sst_builder *b;
    int rc = sst_builder_new(db->env, path, &so, &b);
    if (rc) return rc;
    iter *it = memtable_iter(m);
    if (!it) {
        sst_builder_abandon(b);
        return KV_ENOMEM;
    }
    for (it->seek_first(it); rc == KV_OK && it->valid(it); it->next(it)) {
        size_t kl, vl;
        const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
        rc = sst_builder_add(b, k, kl, v, vl);
    }
    it->destroy(it);
    if (rc) {
        sst_builder_abandon(b);
        kv_env_remove_quietly(db->env, path);
        return rc;
    }
    sst_props props = {0};
    rc = sst_builder_finish(b, &props);
    if (rc) {
        kv_env_remove_quietly(db->env, path);
        sst_props_free(&props);
        return rc;
    }
    file_meta f = {.file_no = no, .file_size = props.file_size, .entries = props.entries,
                   .tombstones = props.tombstones, .min_seq = props.min_seq, .max_seq = props.max_seq,
                   .smallest = props.smallest, .largest = props.largest};
    rc = edit_add_file(e, 0, &f);
    /* not in flush_bytes_written: the bytes were written (to the log) before this open, and user_bytes_written does
     * not count them, so write amplification right after an open came out at 100 and more */
    sst_props_free(&props);
    return rc;
}

/* write_level0_once; a disk another process filled gives back the reserve for the table, as for a flush
 * (db_flush_one): else the open of a store whose log holds more than the disk has left failed for space while the
 * store held its floor in RESERVE. */
static int write_level0(kv_db *db, memtable *m, version_edit *e) {
    int rc = write_level0_once(db, m, e);
    if (rc == KV_ENOSPC && db_reserve_release(db)) rc = write_level0_once(db, m, e);
    return rc;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Recovery: the size of each blob file the version lists (sizes[i] for vs->current->blobs[i]), looked up when
 * first needed; UINT64_MAX when unknown (missing, unreadable). Files the version does not list are not looked up:
 * a damaged record naming many of them costs a binary search each, not a stat. */
typedef struct blob_sizes {
    uint64_t *size;
    bool *known;
    size_t n;
    blob_page_set checked; /* pages found whole, with the records inside them: each is looked into once */
} blob_sizes;

static uint64_t blob_size_of(kv_db *db, blob_sizes *bs, uint64_t no) {
    const version *v = db->vs->current;
    if (!bs->known) return UINT64_MAX; /* out of memory: check nothing */
    size_t lo = 0, hi = v->nblobs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->blobs[mid]->file_no < no) lo = mid + 1;
        else hi = mid;
    }
    if (lo == v->nblobs || v->blobs[lo]->file_no != no) return UINT64_MAX;
    if (!bs->known[lo]) {
        char path[4096];
        file_name(path, sizeof path, db->dir, no, "blob");
        if (db->env->file_size(db->env, path, &bs->size[lo]) != KV_OK) bs->size[lo] = UINT64_MAX;
        bs->known[lo] = true;
    }
    return bs->size[lo];
}

typedef struct blob_whole_ctx {
    kv_db *db;
    blob_sizes *bs;
} blob_whole_ctx;

#define RECORD_MISSING 2
/* blob_visit_fn: RECORD_MISSING when e's record runs past the end of its blob file. */
static int record_missing(void *ctx, const blob_extent *e, bool page) {
    (void)page;
    blob_whole_ctx *w = ctx;
    uint64_t size = blob_size_of(w->db, w->bs, e->file_no);
    return size != UINT64_MAX && size < blob_extent_record_end(e) ? RECORD_MISSING : 0;
}

/* Whether every record of one value is whole. Successive batches of a paged value share most of its pages, so a
 * page is looked into only until it has been found whole with all the records inside it (else replay would cost
 * quadratic time); a page that cannot be read is left to the reads to report. */
static bool value_blobs_whole(kv_db *db, blob_sizes *bs, const uint8_t *p, size_t plen) {
    blob_whole_ctx w = {db, bs};
    if (!blob_ref_is_paged(p, plen)) return blob_value_visit(db->blobs, p, plen, record_missing, &w) != RECORD_MISSING;
    blob_pages pp = {0};
    if (blob_pages_decode(p, plen, &pp) != KV_OK) return true;
    bool whole = true;
    blob_ref page = {0};
    for (size_t i = 0; i < pp.n && whole; i++) {
        blob_extent e = blob_page_extent(&pp.pg[i]);
        if (record_missing(&w, &e, true) == RECORD_MISSING) whole = false;
        if (!whole || blob_page_set_has(&bs->checked, &e)) continue;
        if (blob_page_load(db->blobs, &pp.pg[i], &page) != KV_OK) {
            (void)blob_page_set_add(&bs->checked, &e); /* the answer stays "whole": do not read it again */
            continue;
        }
        for (size_t j = 0; j < page.n && whole; j++)
            if (page.ext[j].file_no && record_missing(&w, &page.ext[j], false) == RECORD_MISSING) whole = false;
        if (whole) (void)blob_page_set_add(&bs->checked, &e); /* out of memory: it is looked into again */
    }
    blob_ref_free(&page);
    blob_pages_free(&pp);
    return whole;
}

/* Whether every blob record that a logged batch references is whole in its blob file as the file is now.
 * Blob bytes are appended before the batch that references them is logged, and every sync makes the blob files
 * durable before the log (db_sync_blob_file; a full blob file is synced before it is closed; a flush syncs them
 * before its table is installed). So a logged batch that any sync covered references only durable bytes, and a
 * batch whose blob file is now too short was never synced: a power loss kept the log's bytes but not the blob
 * file's (the two files reach the disk independently). Neither was it, then, nor any later batch, so recovery may
 * drop them all, as it drops a torn log tail. Malformed records and blob files that are missing, unreadable or not
 * listed in the version answer true, so that replay and reads report them as before. A paged reference's pages
 * are checked before they are read, then the records they name (value_blobs_whole). */
static bool record_blobs_whole(kv_db *db, const uint8_t *rec, size_t len, blob_sizes *bs) {
    uint64_t seq;
    int64_t ts;
    size_t count;
    const uint8_t *p, *lim = rec + len;
    if (batch_record_decode(rec, len, &seq, &ts, &count, &p, "", 0) != KV_OK) return true;
    for (size_t i = 0; i < count; i++) {
        resolved_op op;
        p = batch_record_next_op(p, lim, &op);
        if (!p) return true;
        if (op.type != KV_TYPE_BLOB) continue;
        if (!value_blobs_whole(db, bs, op.payload, op.plen)) return false;
    }
    return true;
}

/* Whether none of the logs nos[0 .. n) holds a record (empty, zeros allocated ahead, or a torn first record). The
 * thread's message is left alone: it names the damage that the caller is judging. */
static bool later_logs_empty(kv_db *db, const uint64_t *nos, size_t n) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    bool empty = true;
    for (size_t i = 0; i < n && empty; i++) {
        char path[4096], name[64];
        file_name(path, sizeof path, db->dir, nos[i], "log");
        snprintf(name, sizeof name, "%06" PRIu64 ".log", nos[i]);
        wal_reader *r;
        if (wal_reader_open(db->env, path, name, &r) != KV_OK) {
            empty = false;
            break;
        }
        const uint8_t *rec;
        size_t len;
        uint64_t off;
        empty = wal_read(r, &rec, &len, &off) == KV_ENOTFOUND && wal_reader_valid_end(r) == 0;
        wal_reader_close(r);
    }
    kv_set_error(KV_ECORRUPT, "%s", msg); /* the caller's code */
    return empty;
}

/* Replay every log at or after vs->log_number, in order (caller holds mu). */
static int recover_logs(kv_db *db) {
    char **names;
    size_t n;
    int rc = db->env->list_dir(db->env, db->dir, &names, &n);
    if (rc) return rc;
    uint64_t *logs = calloc(n + 1, sizeof *logs);
    size_t nlogs = 0;
    if (!logs) {
        kv_env_free_names(names, n);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t no;
        const char *ext;
        if (db_parse_file_name(names[i], &no, &ext) && strcmp(ext, "log") == 0 && no >= db->vs->log_number)
            logs[nlogs++] = no;
        if (db_parse_file_name(names[i], &no, &ext) && no >= db->vs->next_file) db->vs->next_file = no + 1;
    }
    kv_env_free_names(names, n);
    qsort(logs, nlogs, sizeof *logs, cmp_u64);

    uint64_t max_seq = db->vs->last_seq;
    version_edit e;
    edit_init(&e);
    size_t nb = db->vs->current->nblobs;
    blob_sizes bs = {calloc(nb + 1, sizeof *bs.size), calloc(nb + 1, sizeof *bs.known), nb, {0}};
    if (!bs.size || !bs.known) {
        free(bs.size);
        free(bs.known);
        bs.size = NULL, bs.known = NULL; /* blob_size_of then answers "unknown" */
    }
    uint64_t dropped = 0; /* batches not replayed because a power loss took their blob bytes */
    for (size_t i = 0; i < nlogs && rc == KV_OK; i++) {
        char path[4096], name[64];
        file_name(path, sizeof path, db->dir, logs[i], "log");
        snprintf(name, sizeof name, "%06" PRIu64 ".log", logs[i]);
        wal_reader *r;
        rc = wal_reader_open(db->env, path, name, &r);
        if (rc) break;
        const uint8_t *rec;
        size_t len;
        uint64_t off;
        while ((rc = wal_read(r, &rec, &len, &off)) == KV_OK) {
            if (dropped || !record_blobs_whole(db, rec, len, &bs)) {
                dropped++; /* this one and every later batch, in this log and the next ones */
                continue;
            }
            uint64_t seq;
            rc = apply_record(db, db->mem, rec, len, name, off, &seq);
            if (rc) break;
            if (seq > max_seq) max_seq = seq;
            if (db->blog && batchlog_enabled(db->blog) && seq > batchlog_newest(db->blog))
                batchlog_append(db->blog, seq, rec, len);
            if (!db->opt.read_only && memtable_bytes(db->mem) >= db->opt.memtable_bytes) {
                rc = write_level0(db, db->mem, &e);
                if (rc) break;
                memtable_unref(db->mem);
                if ((rc = memtable_new(db->opt.memtable_bytes, &db->mem))) break;
            }
        }
        /* The newest log is the only one that may end in unsynced writes (a log is synced before the next one
         * starts). A power loss may keep a later page of them and lose an earlier one, which in space allocated ahead
         * reads as zeros: the damaged record then touches a page of zeros. That is a torn tail, not damage: replay
         * stops there, and the stop is counted (unsynced_log_bytes_dropped). "Newest" counts logs that hold a record:
         * a crash while recovery replaced such a log (its new log made, the manifest edit naming it not yet on disk)
         * leaves an empty newer one (later_logs_empty). */
        bool lost = false;
        if (rc == KV_ECORRUPT && wal_reader_damage_is_lost_page(r, &lost) == KV_OK && lost &&
            later_logs_empty(db, logs + i + 1, nlogs - i - 1)) {
            uint64_t data_end = 0;
            if (wal_reader_data_end(r, &data_end) == KV_OK && data_end > wal_reader_valid_end(r))
                db->st_unsynced_log_bytes = data_end - wal_reader_valid_end(r);
            db->lost_page_log = logs[i];
            rc = KV_OK;
        }
        wal_reader_close(r);
        if (rc == KV_ENOTFOUND) rc = KV_OK;
        /* past the stop everything is unsynced, and a power loss may leave any bytes there: not damage */
        if (rc == KV_ECORRUPT && dropped) {
            rc = KV_OK;
            break;
        }
    }
    free(logs);
    free(bs.size);
    free(bs.known);
    blob_page_set_free(&bs.checked);
    db->st_unsynced_dropped = dropped;
    if (rc == KV_OK && !db->opt.read_only) {
        memtable_meta mm;
        memtable_get_meta(db->mem, &mm);
        if (mm.entries) {
            rc = write_level0(db, db->mem, &e);
            if (!rc) {
                memtable_unref(db->mem);
                rc = memtable_new(db->opt.memtable_bytes, &db->mem);
            }
        }
    }
    /* The batch log is written after the store's log, and both reach the disk on their own: it may hold batches
     * that replay did not apply. Their sequence numbers go to the next batches, so the change feed forgets them.
     * (A failure here leaves them; lookups prefer the newer file that the next batches go to.) */
    if (rc == KV_OK && !db->opt.read_only && db->blog && batchlog_newest(db->blog) > max_seq)
        (void)batchlog_forget_after(db->blog, max_seq);
    /* Batches the batch log never got and no log holds (written while it was off) are a gap at its top. */
    if (rc == KV_OK && db->blog) batchlog_recovered(db->blog, max_seq);
    if (rc == KV_OK) {
        atomic_store(&db->last_seq, max_seq);
        db->vs->last_seq = max_seq;
        if (!db->opt.read_only) {
            /* the logs replayed go once the edit below is on disk: the batches re-appended from them go first */
            if (db->blog) rc = batchlog_sync(db->blog);
            if (!rc) rc = new_log(db);
            if (!rc) {
                e.has_log_number = true;
                e.log_number = db->log_no;
                e.has_last_seq = true;
                e.last_seq = max_seq;
                rc = vset_log_and_apply(db->vs, &e);
            }
        }
    }
    edit_free(&e);
    return rc;
}

/* ---- open and close -------------------------------------------------------------------------------------------------- */

static int validate_options(const kv_options *o) {
    if (o->memtable_bytes < 4096 || o->block_bytes < 64 || o->block_restart_interval < 1 ||
        o->max_immutable < 1 || o->max_immutable > DB_MAX_IMM - 1 || o->l0_compaction_trigger < 1 ||
        o->l0_slowdown_trigger < o->l0_compaction_trigger || o->l0_stop_trigger < o->l0_slowdown_trigger ||
        o->level_multiplier < 2 || o->level1_bytes < 4096 || o->table_bytes < 4096 || o->max_open_tables < 1 ||
        o->bloom_bits_per_key < 0 || o->blob_threshold < 1 || o->blob_file_bytes < BLOB_CHUNK ||
        o->blob_page_extents < BLOB_PAGE_EXTENTS_MIN || o->blob_page_extents > BLOB_PAGE_EXTENTS_MAX)
        return kv_set_error(KV_EINVAL, "invalid options");
    if (!(o->blob_gc_ratio >= 0 && o->blob_gc_ratio <= 1))
        return kv_set_error(KV_EINVAL, "invalid options: blob_gc_ratio must be between 0 and 1");
    return KV_OK;
}

struct kv_intent {
    kv_env *env;
    kv_file *lock;
};

int kv_intent_take(const char *dir, const kv_options *opts, kv_intent **out) {
    kv_clear_error();
    if (!dir || !*dir || !out) return kv_set_error(KV_EINVAL, "kv_intent_take: missing directory or out pointer");
    *out = NULL;
    kv_env *env = opts && opts->env ? opts->env : kv_env_posix();
    if (!env->lock_intent) return KV_OK;
    kv_intent *in = malloc(sizeof *in);
    if (!in) return KV_ENOMEM;
    in->env = env;
    char path[4096];
    snprintf(path, sizeof path, "%s/LOCK", dir);
    int rc = env->lock_intent(env, path, &in->lock);
    if (rc) {
        if (rc == KV_EBUSY) kv_set_error(KV_EBUSY, "%s: another writer waits for the store", dir);
        free(in);
        return rc;
    }
    *out = in;
    return KV_OK;
}

void kv_intent_release(kv_intent *in) {
    if (!in) return;
    in->env->unlock(in->env, in->lock);
    free(in);
}

int kv_open(const char *dir, const kv_options *opts, kv_db **out) {
    kv_clear_error();
    if (!dir || !*dir || !out) return kv_set_error(KV_EINVAL, "kv_open: missing directory or out pointer");
    *out = NULL;
    kv_options o;
    if (opts) o = *opts;
    else kv_options_init(&o);
    int rc = validate_options(&o);
    if (rc) return rc;

    kv_db *db = calloc(1, sizeof *db);
    if (!db) return KV_ENOMEM;
    db->opt = o;
    db->env = o.env ? o.env : kv_env_posix();
    db->dir = strdup(dir);
    pthread_mutex_init(&db->mu, NULL);
    pthread_mutex_init(&db->blob_mu, NULL);
    pthread_mutex_init(&db->rescue_mu, NULL);
    pthread_mutex_init(&db->reserve_mu, NULL);
    pthread_cond_init(&db->bg_cv, NULL);
    pthread_cond_init(&db->work_cv, NULL);
    db->snaps.prev = db->snaps.next = &db->snaps;
    atomic_store(&db->pins, 1);
    if (!db->dir) {
        rc = KV_ENOMEM;
        goto fail;
    }

    int exists = db->env->exists(db->env, dir);
    if (exists < 0) { rc = exists; goto fail; }
    if (!exists) {
        if (!o.create_if_missing || o.read_only) {
            rc = kv_set_error(KV_ENOTFOUND, "%s: no such store", dir);
            goto fail;
        }
        /* another process may have made it since: then it is a store being created, or an empty directory */
        if ((rc = db->env->mkdir(db->env, dir, 0700)) && rc != KV_EEXIST) goto fail;
        rc = KV_OK;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/LOCK", dir);
    /* read-only handles share the store (they write nothing); a writer has it alone */
    bool shared = o.read_only && db->env->lock_shared;
    if ((rc = shared ? db->env->lock_shared(db->env, path, &db->lock) : db->env->lock(db->env, path, &db->lock))) {
        if (rc == KV_EBUSY)
            kv_set_error(KV_EBUSY, "%s: the store is in use by another process (or handle)%s", dir,
                         shared ? ", or a writer waits for it" : "");
        goto fail;
    }

    if ((rc = vset_new(db->env, dir, &db->vs))) goto fail;
    db->vs->level1_bytes = o.level1_bytes;
    db->vs->level_multiplier = o.level_multiplier;
    db->vs->l0_trigger = o.l0_compaction_trigger;
    rc = vset_recover(db->vs);
    bool fresh = false;
    if (rc == KV_ENOTFOUND) {
        if (!o.create_if_missing || o.read_only) {
            rc = kv_set_error(KV_ENOTFOUND, "%s: no store here (no CURRENT file)", dir);
            goto fail;
        }
        /* Without CURRENT a new store would treat every existing table and log as obsolete and delete it: refuse
         * when the directory already holds data files (CURRENT was lost, not never written). A lone manifest is
         * what a creation interrupted before CURRENT leaves behind: harmless. */
        char **names;
        size_t n;
        if ((rc = db->env->list_dir(db->env, dir, &names, &n))) goto fail;
        for (size_t i = 0; i < n && !rc; i++) {
            uint64_t no;
            const char *ext;
            if (db_parse_file_name(names[i], &no, &ext) &&
                (!strcmp(ext, "sst") || !strcmp(ext, "log") || !strcmp(ext, "blob")))
                rc = kv_set_error(KV_ECORRUPT, "%s: CURRENT is missing but the directory holds store files (%s)", dir,
                                  names[i]);
        }
        kv_env_free_names(names, n);
        if (rc) goto fail;
        fresh = true;
    } else if (rc == KV_OK && o.error_if_exists) {
        rc = kv_set_error(KV_EEXIST, "%s: a store already exists", dir);
        goto fail;
    }
    if (rc) goto fail;

    if ((rc = block_cache_new(o.block_cache_bytes, &db->cache))) goto fail;
    if ((rc = table_cache_new(db->env, dir, (size_t)o.max_open_tables, db->cache, &db->tables))) goto fail;
    if ((rc = blob_store_new(db->env, dir, 64, &db->blobs))) goto fail;
    if ((rc = batchlog_open(db->env, dir, o.batch_log_max_batches, o.batch_log_max_bytes, db->vs->batchlog_floor, o.read_only,
                            &db->blog)))
        goto fail;
    if ((rc = memtable_new(db->opt.memtable_bytes, &db->mem))) goto fail;

    db_reserve_open(db);
    pthread_mutex_lock(&db->mu);
    if (!o.read_only) rc = vset_write_snapshot(db->vs); /* a fresh manifest; also creates a new store */
    if (rc == KV_ENOSPC && db_reserve_release(db)) rc = vset_write_snapshot(db->vs);
    if (!rc) rc = recover_logs(db);
    if (!rc) db->mem_log_no = db->log_no;
    if (!rc && !o.read_only) db_delete_obsolete_files(db);
    if (!rc && !o.read_only) db_compact_small_level0(db);
    pthread_mutex_unlock(&db->mu);
    (void)fresh;
    if (rc) goto fail;
    if (!o.read_only && o.background_threads && (rc = db_start_background(db))) goto fail;
    *out = db;
    kv_clear_error(); /* recovery's notes (a missing CURRENT, the end of a log) are not failures */
    return KV_OK;

fail:;
    char saved[512];
    snprintf(saved, sizeof saved, "%s", kv_errmsg());
    if (db->log) wal_writer_close(db->log);
    if (db->blog) batchlog_close(db->blog);
    free_resources(db);
    pthread_mutex_destroy(&db->mu);
    pthread_mutex_destroy(&db->blob_mu);
    pthread_mutex_destroy(&db->rescue_mu);
    pthread_mutex_destroy(&db->reserve_mu);
    pthread_cond_destroy(&db->bg_cv);
    pthread_cond_destroy(&db->work_cv);
    free(db->dir);
    free(db);
    return kv_set_error(rc, "%s", saved);
}

int kv_close(kv_db *db) {
    kv_clear_error();
    if (!db) return kv_set_error(KV_EINVAL, "kv_close: NULL handle");
    /* Close makes everything durable, which a blob file whose fsync failed prevents until its values are copied
     * elsewhere, and a failed fsync until what it covered is in tables (sync_debt, also left by a kv_sync whose
     * flush failed after the copies were made): kv_sync does both (and its failure is reported below). */
    if (!atomic_load(&db->closed) && !db->opt.read_only && db_sync_owed(db)) (void)kv_sync(db);
    if (atomic_exchange(&db->closed, true)) return kv_set_error(KV_ECLOSED, "the store is already closed");
    pthread_mutex_lock(&db->mu);
    db->stopping = true;
    pthread_cond_broadcast(&db->bg_cv);
    pthread_cond_broadcast(&db->work_cv);
    for (writer *w = db->writers_head; w; w = w->next) writer_wake(w);
    pthread_mutex_unlock(&db->mu);
    /* wait for the threads still inside the engine; they see `closed` wherever they wait */
    while (atomic_load(&db->active) > 0) {
        pthread_mutex_lock(&db->mu);
        pthread_cond_broadcast(&db->bg_cv);
        for (writer *w = db->writers_head; w; w = w->next) writer_wake(w);
        pthread_mutex_unlock(&db->mu);
        usleep(200);
    }
    db_stop_background(db);
    int rc = KV_OK;
    if (db->blob_w) {
        int r = blob_writer_sync(db->blob_w);
        if (!rc) rc = r;
        blob_writer_close(db->blob_w);
        db->blob_w = NULL;
    }
    int un = rc ? -1 : db_blob_lost_unrescued(db);
    if (un >= 0) {
        char path[4096];
        file_name(path, sizeof path, db->dir, db->blob_lost[un], "blob");
        rc = kv_set_error(KV_EIO, "%s: an fsync of it failed and its values could not be copied elsewhere, so some "
                                  "may not be on disk", path);
    }
    if (!rc && db->sync_debt)
        rc = kv_set_error(KV_EIO, "batches written before an fsync failed could not be flushed to tables, so some may "
                                  "not be on disk");
    /* more blob files were retired unsynced than blob_unsynced lists: the kv_sync above failed without syncing them,
     * and the log synced below may name their bytes */
    if (!rc && db->blob_unsynced_lost)
        rc = kv_set_error(KV_EIO, "blob files retired after write errors could not be synced, so values written to "
                                  "them may not be on disk");
    if (db->log) {
        int r = wal_sync(db->log);
        if (!rc) rc = r;
        wal_writer_close(db->log);
        db->log = NULL;
    }
    if (db->blog) {
        batchlog_sync(db->blog);
        batchlog_close(db->blog);
        db->blog = NULL;
    }
    db_unpin(db);
    return rc;
}

void kv_free(kv_db *db) {
    if (!db) return;
    if (!atomic_load(&db->closed)) kv_close(db);
    pthread_mutex_destroy(&db->mu);
    pthread_mutex_destroy(&db->blob_mu);
    pthread_mutex_destroy(&db->rescue_mu);
    pthread_mutex_destroy(&db->reserve_mu);
    pthread_cond_destroy(&db->bg_cv);
    pthread_cond_destroy(&db->work_cv);
    /* snapshots the caller never released */
    for (struct kv_snapshot *s = db->snaps.next, *nx; s != &db->snaps; s = nx) {
        nx = s->next;
        free(s);
    }
    free(db->dir);
    free(db);
}

/* ---- the write path --------------------------------------------------------------------------------------------- */

static int l0_files(kv_db *db) { return (int)db->vs->current->nfiles[0]; }

/* test_crash: make the log the leader is about to leave durable, blob bytes first (its records may reference
 * them). kv_sync and synced writes sync only the current log, so records left unsynced in an older log were lost by
 * a power failure even after a later kv_sync returned OK. Caller holds mu and is the leader; mu is released for the
 * fsyncs (lock order: blob_mu before mu), and no record is appended meanwhile since the leader owns the queue. */
void db_blob_sync_failed(kv_db *db, uint64_t no) {
    if (db->blob_w && blob_writer_file_no(db->blob_w) == no) {
        /* retire it: nothing more is appended to a file whose durable length is unknown */
        blob_writer_close(db->blob_w);
        db->blob_w = NULL;
        db->blob_dirty = false;
    }
    for (size_t i = 0; i < db->nblob_lost; i++)
        if (db->blob_lost[i] == no) {
            db->blob_lost_synced[i] = db->blob_lost_rescued[i] = false;
            return;
        }
    if (db->nblob_lost < sizeof db->blob_lost / sizeof db->blob_lost[0]) {
        db->blob_lost_synced[db->nblob_lost] = db->blob_lost_rescued[db->nblob_lost] = false;
        db->blob_lost[db->nblob_lost++] = no;
    } else {
        db->blob_unsynced_lost = true;
    }
}

/* fsync a retired blob file by number: KV_OK also when blob GC has deleted it (nothing referenced it). */
static int sync_blob_by_number(kv_db *db, uint64_t no) {
    char path[4096];
    file_name(path, sizeof path, db->dir, no, "blob");
    kv_file *f;
    int rc = db->env->open_read(db->env, path, &f); /* not open_append: that would recreate a file GC deleted */
    if (!rc) {
        rc = db->env->sync(db->env, f);
        db->env->close(db->env, f);
    }
    return rc == KV_ENOTFOUND ? KV_OK : rc;
}

int db_blob_lost_unrescued(kv_db *db) {
    for (size_t i = 0; i < db->nblob_lost; i++)
        if (!db->blob_lost_rescued[i]) return (int)i;
    return -1;
}

bool db_blob_lost_pending(kv_db *db) {
    pthread_mutex_lock(&db->blob_mu);
    bool pending = db_blob_lost_unrescued(db) >= 0;
    pthread_mutex_unlock(&db->blob_mu);
    return pending;
}

bool db_sync_owed(kv_db *db) {
    /* A blob file retired unsynced after a failed append holds bytes of logged batches: kv_close syncs only the
     * current blob file and the log, and a durable log naming bytes a power loss took drops that batch and every
     * later one at recovery; a checkpoint links the file as it is. */
    pthread_mutex_lock(&db->blob_mu);
    bool owed = db_blob_lost_unrescued(db) >= 0 || db->nblob_unsynced > 0 || db->blob_unsynced_lost;
    pthread_mutex_unlock(&db->blob_mu);
    if (owed) return true;
    pthread_mutex_lock(&db->mu);
    bool debt = db->sync_debt != 0;
    pthread_mutex_unlock(&db->mu);
    return debt;
}

int db_sync_blob_file(kv_db *db, bool vouch) {
    int rc = KV_OK;
    pthread_mutex_lock(&db->blob_mu);
    if (db->blob_unsynced_lost)
        rc = kv_set_error(KV_EIO, "blob files retired after write errors could not be synced: reopen the store");
    while (!rc && db->nblob_unsynced > 0) {
        uint64_t no = db->blob_unsynced[db->nblob_unsynced - 1];
        rc = sync_blob_by_number(db, no);
        db->nblob_unsynced--;
        /* a failed fsync: a retry could succeed without writing what the failure lost */
        if (rc) db_blob_sync_failed(db, no);
    }
    for (size_t i = 0; !rc && i < db->nblob_lost; i++)
        if (!db->blob_lost_synced[i]) {
            rc = sync_blob_by_number(db, db->blob_lost[i]);
            db->blob_lost_synced[i] = rc == KV_OK;
        }
    if (!rc && db->blob_w && db->blob_dirty) {
        rc = blob_writer_sync(db->blob_w);
        if (!rc) db->blob_dirty = false;
        else db_blob_sync_failed(db, blob_writer_file_no(db->blob_w));
    }
    int un = vouch && !rc ? db_blob_lost_unrescued(db) : -1;
    if (un >= 0) {
        char path[4096];
        file_name(path, sizeof path, db->dir, db->blob_lost[un], "blob");
        rc = kv_set_error(KV_EIO, "%s: an fsync of it failed, so values written to it may not be on disk (kv_sync "
                                  "copies them to a new file first)", path);
    }
    pthread_mutex_unlock(&db->blob_mu);
    return rc;
}

/* A log fsync failed: its batches so far may not be on disk, and no later fsync of that log can say they are. */
static void note_sync_failure(kv_db *db) {
    uint64_t s = atomic_load(&db->last_seq);
    if (s > db->sync_debt) db->sync_debt = s;
    db->log_broken = true;
}

static int sync_log_before_switch(kv_db *db) {
    if (!db->log) return KV_OK;
    wal_writer *old = db->log;
    pthread_mutex_unlock(&db->mu);
    int rc = db_sync_blob_file(db, false);
    bool log_failed = false;
    if (!rc) log_failed = (rc = wal_sync(old)) != KV_OK;
    pthread_mutex_lock(&db->mu);
    if (log_failed) note_sync_failure(db);
    return rc;
}

/* The last flush (or compaction) failed, and its thread waits before it retries (up to 500 ms; a compaction up to
 * 5 s). Have it retry now and wait for that attempt (up to secs seconds; a compaction that takes longer is then waited
 * for as usual): the cause may be gone (space freed). attempts and error: the thread's counter and last failure.
 * Caller holds mu. */
static void retry_failed_now(kv_db *db, const uint64_t *attempts, const int *error, int secs) {
    uint64_t t = db_now_us();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += secs;
    uint64_t seen = *attempts;
    pthread_cond_broadcast(&db->work_cv); /* both threads wait on it: a signal could wake the other one */
    /* not while the compaction thread runs a blob GC pass instead, which may wait to lead the queue this writer leads */
    while (*error && *attempts == seen && !db->stopping && !db->bg_gc_running &&
           pthread_cond_timedwait(&db->bg_cv, &db->mu, &ts) == 0) {
    }
    atomic_fetch_add(&db->st_stall_us, db_now_us() - t);
}

/* Make sure the memtable has room (caller holds mu and is the leader). b: the leader's batch; one that only removes
 * data (batch_removes_data), or a flush request (flush_request), passes the level-0 stop trigger while compactions
 * fail. */
static int make_room(kv_db *db, bool force, const kv_batch *b, bool flush_request);

/* Without a compaction thread: compact here while due (caller holds mu). The failure is the write's, except a lack of
 * space for a batch that removes data or a flush request: those go on, as they pass the level-0 stop trigger when a
 * compaction thread fails (compact_error, which this sets too). *did: whether the last attempt compacted anything. */
static int compact_inline(kv_db *db, const kv_batch *b, bool flush_request, bool *did) {
    int rc = KV_OK;
    *did = true;
    while (rc == KV_OK && *did && db->vs->current->score >= 1) rc = db_compact_once(db, did);
    db->compact_error = rc == KV_ECLOSED ? 0 : rc;
    if (db->compact_error) atomic_fetch_add(&db->st_compact_failures, 1);
    if (rc == KV_ENOSPC && (flush_request || (b && batch_removes_data(b, db->opt.blob_threshold)))) {
        kv_clear_error();
        *did = false;
        return KV_OK;
    }
    return rc;
}

static int make_room(kv_db *db, bool force, const kv_batch *b, bool flush_request) {
    bool allow_delay = !force, retried = false, retried_compaction = false;
    for (;;) {
        if (db->stopping || atomic_load(&db->closed)) return kv_set_error(KV_ECLOSED, "the store is closed");
        if (!db->opt.background_threads && db->vs->current->score >= 1) {
            /* no compaction thread: compact here whenever it is due (level-0 files also come from recovery) */
            bool did;
            int rc = compact_inline(db, b, flush_request, &did);
            if (rc) return rc;
        }
        if (allow_delay && l0_files(db) >= db->opt.l0_slowdown_trigger) {
            /* spread the slowdown over many writes rather than stopping one for seconds */
            uint64_t t = db_now_us();
            pthread_mutex_unlock(&db->mu);
            usleep(1000);
            pthread_mutex_lock(&db->mu);
            atomic_fetch_add(&db->st_stall_us, db_now_us() - t);
            allow_delay = false;
            continue;
        }
        if (force) {
            memtable_meta mm;
            memtable_get_meta(db->mem, &mm);
            if (mm.entries == 0) return KV_OK;
        } else if (memtable_bytes(db->mem) < db->opt.memtable_bytes) {
            return KV_OK;
        }
        /* not for a compaction while the compaction thread runs blob GC, which may be waiting for this writer to
         * leave the write queue (bg_gc_running): level 0 then grows past the trigger until the pass ends */
        bool past_stop = db->bg_gc_running || (db->compact_error && !db->compact_running &&
                                               (flush_request || (b && batch_removes_data(b, db->opt.blob_threshold))));
        if (db->nimm >= db->opt.max_immutable || (l0_files(db) >= db->opt.l0_stop_trigger && !past_stop)) {
            if (!db->opt.background_threads) {
                int rc = db->nimm ? db_flush_one(db) : KV_OK;
                bool did = true;
                if (rc == KV_OK) rc = compact_inline(db, b, flush_request, &did);
                if (rc) return rc;
                /* a compaction in another thread (kv_compact_range) holds the files: wait for it, not spin */
                if (!did && (db->compact_running || db->manual_running || db->manual_waiting))
                    pthread_cond_wait(&db->bg_cv, &db->mu);
                continue;
            }
            if (db->bg_error && !db->flush_running) {
                /* The last flush failed and the flush thread waits before it retries (up to 500 ms). The cause may
                 * be gone (space freed): have it retry now and wait for that attempt (up to a second), so that the
                 * first write after the cause is gone succeeds; fail only if that attempt fails too. */
                if (!retried) {
                    retried = true;
                    retry_failed_now(db, &db->flush_attempts, &db->bg_error, 1);
                    continue;
                }
                int rc = db->bg_error;
                return kv_set_error(rc, "writes wait for a flush that keeps failing: %s", kv_strerror(rc));
            }
            if (db->nimm < db->opt.max_immutable && db->compact_error && !db->compact_running && !db->manual_running) {
                /* level 0 is at the stop trigger and the compaction that would shrink it failed (its output did not
                 * fit on the disk, say): waiting for it could take for ever, with the writer's caller (a FUSE
                 * request, a process in close()) stuck. One prompt retry, then the error. */
                if (!retried_compaction) {
                    retried_compaction = true;
                    retry_failed_now(db, &db->compact_attempts, &db->compact_error, 2);
                    continue;
                }
                int rc = db->compact_error;
                return kv_set_error(rc, "writes wait for a compaction of level 0 (%d files) that keeps failing: %s",
                                    l0_files(db), kv_strerror(rc));
            }
            uint64_t t = db_now_us();
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_signal(&db->work_cv);
            pthread_cond_timedwait(&db->bg_cv, &db->mu, &ts);
            atomic_fetch_add(&db->st_stall_us, db_now_us() - t);
            continue;
        }
        /* switch to a new memtable and a new log */
        memtable *m;
        int rc = sync_log_before_switch(db);
        if (rc) return rc;
        if ((rc = memtable_new(db->opt.memtable_bytes, &m))) return rc;
        rc = new_log(db);
        if (rc) {
            memtable_unref(m);
            return rc;
        }
        db->imm[db->nimm++] = (imm_entry){db->mem, db->mem_log_no};
        db->mem = m;
        db->mem_log_no = db->log_no;
        force = false;
        if (db->opt.background_threads) pthread_cond_broadcast(&db->work_cv);
        else {
            rc = db_flush_one(db);
            bool did;
            if (rc == KV_OK) rc = compact_inline(db, b, flush_request, &did);
            if (rc) return rc;
        }
    }
}

/* Make the batches of sync_debt durable by flushing the memtables that hold them to tables, and wait for that (caller
 * holds mu and leads the write queue). A later fsync of the log whose fsync failed cannot vouch for them. */
static int settle_sync_debt(kv_db *db) {
    bool retried = false;
    while (db->sync_debt > db->vs->last_seq) {
        if (db->stopping || atomic_load(&db->closed)) return kv_set_error(KV_ECLOSED, "the store is closed");
        memtable_meta mm;
        memtable_get_meta(db->mem, &mm);
        bool in_mem = mm.entries && mm.first_seq <= db->sync_debt;
        if (in_mem) {
            /* a new memtable and log; the old memtable goes to the flush: a flush request, which passes the level-0
             * stop trigger while compactions fail (a delete that is owed this debt would fail otherwise) */
            int rc = make_room(db, true, NULL, true);
            if (rc) return rc;
            continue;
        }
        if (db->nimm == 0) break; /* nothing in memory holds them any more: a flush covered them */
        if (!db->opt.background_threads) {
            int rc = db_flush_one(db);
            if (rc) return rc;
            continue;
        }
        if (db->bg_error && !db->flush_running) {
            if (!retried) { /* as make_room does: the first sync after the cause is gone succeeds */
                retried = true;
                retry_failed_now(db, &db->flush_attempts, &db->bg_error, 1);
                continue;
            }
            int rc = db->bg_error;
            return kv_set_error(rc, "the writes whose sync failed are not durable yet: their flush failed: %s",
                                kv_strerror(rc));
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_signal(&db->work_cv);
        pthread_cond_timedwait(&db->bg_cv, &db->mu, &ts);
    }
    db->sync_debt = 0;
    return KV_OK;
}

/* Insert a record's operations into the memtable (leader only). */
static int insert_record(kv_db *db, const uint8_t *rec, size_t len) {
    uint64_t seq;
    return apply_record(db, db->mem, rec, len, "write batch", 0, &seq);
}

/* A member's batch failed with code (leader only): the member's status, and the message the leader's thread holds now,
 * which the member makes its own (kv_errmsg). */
static void writer_fail(writer *p, int code) {
    p->status = code;
    snprintf(p->msg, sizeof p->msg, "%s", kv_errmsg());
}

/* A writer's status once its group is done, with its message in the calling thread (kv_errmsg). */
static int writer_result(const writer *w) {
    if (w->status != KV_OK) kv_set_error(w->status, "%s", w->msg);
    return w->status;
}

#define GROUP_MAX_BYTES (1u << 20)
#define GROUP_MAX_WRITERS 64
#define GROUP_GATHER_US 100 /* longest wait for the rest of a synced group */
#define SYNC_SPIN_US 200    /* a synced follower yields this long before it sleeps */

int db_write_internal(kv_db *db, kv_batch *b, unsigned flags, uint64_t *seq) {
    if (db->opt.read_only) return kv_set_error(KV_EREADONLY, "the store was opened read-only");
    writer w = {.batch = b, .sync = (flags & KV_SYNC) != 0};
    pthread_cond_init(&w.cv, NULL);
    pthread_mutex_lock(&db->mu);
    if (db->writers_tail) db->writers_tail->next = &w;
    else db->writers_head = &w;
    db->writers_tail = &w;
    db->nwriters++;
    /* A synced leader may be gathering its group: wake it once the group it waits for is complete, not at every
     * arrival (each wake-up is a context switch on its CPU). */
    if (db->writers_head != &w && db->nwriters >= db->last_sync_group) writer_wake(db->writers_head);
    /* A synced writer waits about an fsync: it first yields its CPU for up to SYNC_SPIN_US, watching `woken`, and only
     * then sleeps on its cv. The leader's wake-up then finds it awake, instead of waking up to seven sleepers one by
     * one (each wake-up a cross-CPU interrupt here). */
    bool spin = w.sync && db->opt.background_threads;
    while (!w.done && db->writers_head != &w) {
        if (spin) {
            spin = false;
            atomic_store(&w.woken, false); /* under mu: any wake from now on sets it */
            pthread_mutex_unlock(&db->mu);
            uint64_t until = db_now_us() + SYNC_SPIN_US;
            while (!atomic_load(&w.woken) && db_now_us() < until) sched_yield();
            pthread_mutex_lock(&db->mu);
            continue;
        }
        pthread_cond_wait(&w.cv, &db->mu);
    }
    if (w.done) {
        pthread_mutex_unlock(&db->mu);
        pthread_cond_destroy(&w.cv);
        if (seq && w.status == KV_OK) *seq = w.seq;
        return writer_result(&w);
    }

    /* this thread leads a group */
    int rc = make_room(db, b == NULL, b, b == NULL);
    /* a batch that removes data, while compactions fail: grouped only with others that do (make_room) */
    bool removes = rc == KV_OK && b && db->compact_error && batch_removes_data(b, db->opt.blob_threshold);
    if (rc == KV_OK && b && w.sync && !b->reads && db->last_sync_group > 1 && db->opt.background_threads) {
        /* Synced writers that just finished the previous group are about to queue again: wait a moment (far less
         * than an fsync) for them, so one fsync serves all of them instead of writers alternating in two halves. */
        uint64_t deadline = db_now_us() + GROUP_GATHER_US;
        while (db->nwriters < db->last_sync_group && !db->stopping) {
            uint64_t now = db_now_us();
            if (now >= deadline) break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            long ns = ts.tv_nsec + (long)(deadline - now) * 1000L;
            ts.tv_sec += ns / 1000000000L;
            ts.tv_nsec = ns % 1000000000L;
            pthread_cond_timedwait(&w.cv, &db->mu, &ts);
        }
    }
    writer *last = &w;
    if (rc == KV_OK && b == NULL) {
        /* a flush request: the memtable was switched; nothing to write */
    } else if (rc == KV_OK) {
        uint64_t bytes = batch_bytes(b);
        if (!b->reads) {
            int n = 1;
            for (writer *p = w.next; p && n < GROUP_MAX_WRITERS; p = p->next, n++) {
                /* a writer without a batch (a flush request, kv_checkpoint holding the queue) is never grouped */
                if (!p->batch || (p->sync && !w.sync) || p->batch->reads ||
                    bytes + batch_bytes(p->batch) > GROUP_MAX_BYTES || (removes && !batch_removes_data(p->batch, db->opt.blob_threshold)))
                    break;
                bytes += batch_bytes(p->batch);
                last = p;
            }
        }
        /* A log fsync failed and may have lost its pages for good: nothing later may reach the disk before the
         * batches it held are in tables, else a power loss could keep a later batch without an earlier one. */
        if (db->sync_debt) rc = settle_sync_debt(db);
        if (!rc && (db->log_broken || !db->log)) {
            rc = sync_log_before_switch(db); /* test_crash: its earlier records may be unsynced */
            if (!rc) rc = new_log(db);
        }
    }
    if (rc == KV_OK && b != NULL) {
        uint64_t next_seq = atomic_load(&db->last_seq);
        bool sync = w.sync;
        pthread_mutex_unlock(&db->mu);

        /* resolve each batch into a record and append it to the log */
        int64_t ts = (int64_t)db_now_ms();
        kv_bytes recs = {0};
        size_t starts[GROUP_MAX_WRITERS + 1];
        size_t nrec = 0;
        int log_rc = KV_OK;
        bool ghost = false; /* records in the log that are not in the memtable (ghost_log_no) */
        writer *members[GROUP_MAX_WRITERS];
        for (writer *p = &w;; p = p->next) {
            size_t start = recs.len;
            /* The last sequence comes from the files, which can hold the largest one: past it a trailer cannot
             * hold the sequence (the memtable asserts), so the store refuses writes rather than reuse one. */
            int r = next_seq + 1 + nrec > KV_MAX_SEQUENCE
                        ? kv_set_error(KV_ECORRUPT, "no sequence number left after %" PRIu64, next_seq + nrec)
                        : db_resolve_batch(db, p->batch, next_seq + 1 + nrec, ts, &recs);
            p->status = r; /* a batch that fails to resolve fails alone: it appended nothing */
            if (r) writer_fail(p, r); /* its message, before the next batch's failure replaces it */
            if (r == KV_OK) {
                starts[nrec] = start;
                members[nrec++] = p;
            }
            if (p == last) break;
        }
        starts[nrec] = recs.len;
        if (nrec) {
            const void *parts[GROUP_MAX_WRITERS];
            size_t lens[GROUP_MAX_WRITERS];
            for (size_t i = 0; i < nrec; i++) {
                parts[i] = recs.data + starts[i];
                lens[i] = starts[i + 1] - starts[i];
            }
            log_rc = wal_append_records(db->log, parts, lens, nrec);
            /* A disk another process filled: give back the reserve and append again. The failed append was cut
             * back (the log is not broken), so none of these records is in the log yet. */
            if (log_rc == KV_ENOSPC && !wal_writer_broken(db->log) && db_reserve_release(db))
                log_rc = wal_append_records(db->log, parts, lens, nrec);
            /* From here a stream's file may be referenced by a record in the log (also after a failed append the
             * log could not cut back): its owner must no longer delete it. Not before: a batch that failed to
             * resolve, or whose records were cut back, never referenced it. */
            if (!log_rc || wal_writer_broken(db->log))
                for (size_t i = 0; i < nrec; i++) db_mark_streams_committed(members[i]->batch);
            if (log_rc) {
                for (size_t i = 0; i < nrec; i++) writer_fail(members[i], log_rc);
                /* If the log could not be cut back, these records may stay in it and come back at recovery:
                 * never hand their sequence numbers to other batches. */
                if (wal_writer_broken(db->log)) {
                    next_seq += nrec;
                    ghost = true;
                }
                nrec = 0;
            } else {
                atomic_fetch_add(&db->st_groups, 1);
                atomic_fetch_add(&db->st_batches, nrec);
                if (sync) atomic_fetch_add(&db->st_sync_groups, 1);
                for (size_t i = 0; i < nrec; i++) {
                    members[i]->seq = ++next_seq;
                    atomic_fetch_add(&db->st_user_bytes, batch_bytes(members[i]->batch));
                }
                atomic_fetch_add(&db->st_wal_bytes, recs.len + nrec * WAL_HEADER);
            }
        }
        int sync_rc = KV_OK;
        bool sync_rc_is_log = false;
        if (sync && nrec) {
            sync_rc = db_sync_blob_file(db, true);
            if (!sync_rc) sync_rc_is_log = (sync_rc = wal_sync(db->log)) != KV_OK;
        }
        for (size_t i = 0; i < nrec; i++) {
            const uint8_t *r = recs.data + starts[i];
            size_t len = starts[i + 1] - starts[i];
            int ir = insert_record(db, r, len);
            if (ir) { /* out of memory in the memtable: the record is logged; reopen replays it */
                log_rc = ir;
                ghost = true;
            }
            if (db->blog && batchlog_enabled(db->blog)) batchlog_append(db->blog, get_fixed64(r), r, len);
        }
        bytes_free(&recs);
        pthread_mutex_lock(&db->mu);
        if (ghost) {
            if (db->log_no > db->ghost_log_no) db->ghost_log_no = db->log_no;
            db->ghost_next_file = db->vs->next_file;
        }
        if (log_rc || sync_rc) db->log_broken = true;
        atomic_store(&db->last_seq, next_seq); /* not vs->last_seq: the manifest records flushed batches only */
        if (sync_rc && sync_rc_is_log) note_sync_failure(db);
        if (sync_rc) {
            /* the batches are applied (they are in the OS) but not known to be on disk */
            for (writer *p = &w;; p = p->next) {
                if (p->status == KV_OK)
                    writer_fail(p, kv_set_error(sync_rc, "sync failed: the write is applied but may not be durable"));
                if (p == last) break;
            }
        }
    }
    /* wake the group and hand leadership on */
    for (writer *p = &w;; p = p->next) {
        if (rc) writer_fail(p, rc);
        p->done = true;
        if (p != &w) writer_wake(p);
        if (p == last) break;
    }
    size_t ngroup = 1;
    for (writer *p = &w; p != last; p = p->next) ngroup++;
    db->nwriters -= ngroup;
    if (w.sync) db->last_sync_group = ngroup;
    db->writers_head = last->next;
    if (!db->writers_head) db->writers_tail = NULL;
    else writer_wake(db->writers_head);
    pthread_mutex_unlock(&db->mu);
    pthread_cond_destroy(&w.cv);
    if (seq && w.status == KV_OK) *seq = w.seq;
    return writer_result(&w); /* a later member's failure may have replaced the leader's own message */
}

int db_flush_memtable(kv_db *db) {
    int rc = db_write_internal(db, NULL, 0, NULL);
    bool retried = false;
    pthread_mutex_lock(&db->mu);
    while (rc == KV_OK && db->nimm > 0) {
        if (!db->opt.background_threads) {
            rc = db_flush_one(db);
            continue;
        }
        if (db->stopping) {
            rc = kv_set_error(KV_ECLOSED, "the store is closing");
            break;
        }
        if (db->bg_error && !db->flush_running) {
            if (!retried) { /* as make_room does: the first call after the cause is gone succeeds */
                retried = true;
                retry_failed_now(db, &db->flush_attempts, &db->bg_error, 1);
                continue;
            }
            rc = kv_set_error(db->bg_error, "the memtable could not be flushed: a background flush failed: %s",
                              kv_strerror(db->bg_error));
            break;
        }
        pthread_cond_broadcast(&db->work_cv);
        pthread_cond_wait(&db->bg_cv, &db->mu);
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int kv_write(kv_db *db, kv_batch *b, unsigned flags, uint64_t *seq) {
    kv_clear_error();
    if (!b) return kv_set_error(KV_EINVAL, "kv_write: NULL batch");
    if (!db_enter(db)) return KV_ECLOSED;
    int rc = KV_OK;
    /* a synced write vouches for every earlier one: values in a blob file whose fsync failed go elsewhere first */
    if ((flags & KV_SYNC) && b->n && !db->opt.read_only && db_blob_lost_pending(db)) rc = db_blob_rescue(db);
    if (!rc && b->n) rc = db_space_for_write(db, b);
    if (!rc) rc = b->n ? db_write_internal(db, b, flags, seq) : KV_OK;
    if (!rc) {
        uint64_t removals = 0;
        for (size_t i = 0; i < b->n; i++)
            removals += b->ops[i].kind == BOP_DELETE || b->ops[i].kind == BOP_TRUNCATE || b->ops[i].kind == BOP_ZERO_RANGE;
        if (removals) atomic_fetch_add(&db->st_removals, removals);
    }
    if (rc == KV_ENOSPC) atomic_fetch_add(&db->st_enospc, 1);
    if (b->n == 0 && seq) *seq = atomic_load(&db->last_seq);
    db_leave(db);
    return rc;
}

int kv_put(kv_db *db, const void *key, size_t klen, const void *val, uint64_t vlen, unsigned flags) {
    kv_batch b = {0};
    int rc = kv_batch_put(&b, key, klen, val, vlen);
    if (!rc) rc = kv_write(db, &b, flags, NULL);
    free(b.ops);
    bytes_free(&b.data);
    return rc;
}

int kv_delete(kv_db *db, const void *key, size_t klen, unsigned flags) {
    kv_batch b = {0};
    int rc = kv_batch_delete(&b, key, klen);
    if (!rc) rc = kv_write(db, &b, flags, NULL);
    free(b.ops);
    bytes_free(&b.data);
    return rc;
}

int kv_sync(kv_db *db) {
    if (!db_enter(db)) return KV_ECLOSED;
    if (db->opt.read_only) {
        db_leave(db);
        return KV_OK;
    }
    /* Values in a blob file whose fsync failed are copied to a new one first (this writes batches, so it runs
     * before we hold the queue); their old records then leave the log through sync_debt, below. */
    if (db_blob_lost_pending(db)) {
        int rc = db_blob_rescue(db);
        if (rc) {
            db_leave(db);
            return rc;
        }
    }
    /* Hold the write queue (enqueue as a writer without a batch and wait to lead), so that no record is appended
     * between the blob sync and the log sync, then sync without mu: blob_mu is taken before mu, never while it is
     * held (a streamed large write holds blob_mu and may need mu for a new blob file). The log is switched only by
     * the queue's leader, so it stays the same meanwhile. */
    writer w = {0};
    pthread_cond_init(&w.cv, NULL);
    pthread_mutex_lock(&db->mu);
    if (db->writers_tail) db->writers_tail->next = &w;
    else db->writers_head = &w;
    db->writers_tail = &w;
    while (db->writers_head != &w) pthread_cond_wait(&w.cv, &db->mu);
    wal_writer *log = db->log;
    pthread_mutex_unlock(&db->mu);
    int rc = db_sync_blob_file(db, true);
    bool log_failed = false;
    if (!rc && log) log_failed = (rc = wal_sync(log)) != KV_OK;
    /* Not the batch log: every batch it holds is also in a log from the manifest's log number on, which recovery
     * re-appends from (and a flush syncs it before those logs go), so an fsync here would buy nothing but time (a
     * third fdatasync per fsync through the mount). */
    pthread_mutex_lock(&db->mu);
    if (log_failed) note_sync_failure(db);
    if (!rc && db->sync_debt) rc = settle_sync_debt(db); /* we lead the queue */
    db->writers_head = w.next;
    if (!db->writers_head) db->writers_tail = NULL;
    else writer_wake(db->writers_head);
    pthread_mutex_unlock(&db->mu);
    pthread_cond_destroy(&w.cv);
    db_leave(db);
    return rc;
}

uint64_t kv_current_sequence(kv_db *db) {
    if (!db) return 0;
    return atomic_load(&db->last_seq);
}
