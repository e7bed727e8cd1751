/*
 * db_bg.c — background work: flushing immutable memtables to level-0 tables, and leveled compaction.
 *
 * Invariants
 *  - One flush thread and one compaction thread. A flush only adds a level-0 file and advances the log number; a
 *    compaction replaces its input files by its outputs in one version edit. Only one compaction runs at a time
 *    (background or manual: compact_running), so two compactions never pick the same file. The compaction thread
 *    also runs blob GC: after a minute without compactions, once large values as big as the live ones (at least
 *    64 MiB) were appended since the last pass, and soon after writes once one failed for a full disk.
 *  - Compaction keeps, for each user key, every entry newer than the oldest snapshot plus the newest entry at or
 *    below it; it drops a delete at or below the oldest snapshot when no deeper level can hold the key.
 *  - An output table is split only between user keys, so a user key never spans two files of a level >= 1.
 *  - Files being written are in db->pending until their edit is applied, so the obsolete-file sweep spares them.
 *  - Before a flushed table is installed, the blob bytes its entries may reference are synced, and so is the batch
 *    log (the logs that back both are deleted once the table is installed).
 */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db_impl.h"
#include "dbformat.h"
#include "error.h"
#include "merge.h"

/* Tell kv_options.log (if set) about background work: msg formatted, one line. mu_held: the caller holds mu, which
 * is let go for the call: the callback may block (syslog on a busy log socket), and writers must not wait for it. */
static void db_log(kv_db *db, bool mu_held, int level, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void db_log(kv_db *db, bool mu_held, int level, const char *fmt, ...) {
    if (!db->opt.log) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (mu_held) pthread_mutex_unlock(&db->mu);
    db->opt.log(db->opt.log_ctx, level, msg);
    if (mu_held) pthread_mutex_lock(&db->mu);
}

/* Background work fails in runs (a full disk, a damaged file) and is retried: the log hears of the first failure of a
 * run, with its error, and of the first success after it, not of every retry. */
static void log_failure(kv_db *db, bool mu_held, const char *what, uint64_t run, int rc) {
    if (run == 1)
        db_log(db, mu_held, KV_LOG_ERROR, "background %s failed (retried until it works): %s: %s", what, kv_strerror(rc),
               *kv_errmsg() ? kv_errmsg() : "no detail");
}

static void log_recovery(kv_db *db, bool mu_held, const char *what, uint64_t run) {
    if (run)
        db_log(db, mu_held, KV_LOG_NOTICE, "background %s works again, after %" PRIu64 " failure%s", what, run,
               run == 1 ? "" : "s");
}

static sst_options table_options(const kv_db *db) {
    return (sst_options){db->opt.block_bytes, db->opt.block_restart_interval, db->opt.compression,
                         db->opt.bloom_bits_per_key, false};
}

/* ---- flush --------------------------------------------------------------------------------------------------------- */

static int flush_one(kv_db *db) {
    if (db->flush_running) {
        /* Without background threads flushes run in callers' threads (the write leader, kv_compact_range's
         * db_flush_memtable): another may be writing imm[0] right now. Flushing it again would make two tables of
         * it and then drop imm[1], unflushed, from the list. Wait for that flush; the caller looks again. */
        while (db->flush_running) pthread_cond_wait(&db->bg_cv, &db->mu);
        return KV_OK;
    }
    if (db->nimm == 0) return KV_OK;
    memtable *m = db->imm[0].mem;
    memtable_ref(m);
    uint64_t no = vset_new_file_number(db->vs);
    pending_add(db, no);
    db->flush_running = true;
    /* No snapshot taken from now on can be older than the frozen memtable's newest entry. */
    uint64_t smallest_snapshot = db_oldest_snapshot_seq(db);
    pthread_mutex_unlock(&db->mu);

    /* For this table's references to be durable: not a vouching sync. Values in a blob file whose fsync failed
     * (blob_lost) may have lost their bytes, which the log names only until this table replaces it: the table gets
     * copies of them instead (db_copy_if_lost), so that a power loss leaves no table naming missing bytes. */
    int rc = db_sync_blob_file(db, false);
    if (!rc && db->blog) rc = batchlog_sync(db->blog);
    uint64_t lost[sizeof db->blob_lost / sizeof db->blob_lost[0]];
    pthread_mutex_lock(&db->blob_mu);
    size_t nlost = db->nblob_lost;
    memcpy(lost, db->blob_lost, nlost * sizeof lost[0]);
    pthread_mutex_unlock(&db->blob_mu);
    blob_writer *copies = NULL;
    uint64_t copies_no = 0;

    char path[4096];
    file_name(path, sizeof path, db->dir, no, "sst");
    sst_props props = {0};
    bool wrote = false;
    memtable_meta mm;
    memtable_get_meta(m, &mm);
    if (!rc && mm.entries) {
        sst_options so = table_options(db);
        sst_builder *b = NULL;
        rc = sst_builder_new(db->env, path, &so, &b);
        iter *it = rc ? NULL : memtable_iter(m);
        if (!rc && !it) rc = KV_ENOMEM;
        if (it) {
            /* Versions shadowed by a newer one that every reader sees are left out, as compaction leaves them out
             * (iterators opened earlier read this memtable, which they hold, not the table). Besides sparing the
             * write, this keeps a version whose blob bytes an fsync failure lost out of the table once
             * db_blob_rescue has copied the value (kv_check would report its reference). */
            kv_bytes cur = {0};
            bool has_cur = false;
            uint64_t last_seq_for_key = UINT64_MAX;
            for (it->seek_first(it); rc == KV_OK && it->valid(it); it->next(it)) {
                size_t kl, vl;
                const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
                if (!has_cur || ukey_cmp(k, kl - 8, cur.data, cur.len) != 0) {
                    bytes_clear(&cur);
                    if (bytes_append(&cur, k, kl - 8)) {
                        rc = KV_ENOMEM;
                        break;
                    }
                    has_cur = true;
                    last_seq_for_key = UINT64_MAX;
                }
                bool shadowed = last_seq_for_key <= smallest_snapshot;
                last_seq_for_key = ikey_seq(k, kl);
                if (shadowed) continue;
                int64_t ts;
                const uint8_t *p;
                size_t plen;
                if (nlost && ikey_type(k, kl) == KV_TYPE_BLOB && entry_decode(v, vl, &ts, &p, &plen) == 0) {
                    kv_bytes nref = {0}, nv = {0};
                    int c = db_copy_if_lost(db, lost, nlost, &copies, p, plen, &nref);
                    if (c == 1) {
                        rc = bytes_append(&nv, v, (size_t)(p - v)); /* the timestamp */
                        if (!rc) rc = bytes_append(&nv, nref.data, nref.len);
                        if (!rc) rc = sst_builder_add(b, k, kl, nv.data, nv.len);
                    } else if (c < 0) {
                        rc = c;
                    }
                    bytes_free(&nref);
                    bytes_free(&nv);
                    if (c != 0) continue; /* added as a copy, or failed */
                }
                rc = sst_builder_add(b, k, kl, v, vl);
            }
            bytes_free(&cur);
            it->destroy(it);
        }
        if (copies) {
            /* durable before the table that names them is installed; pending until then, since nothing else names
             * the file meanwhile and blob GC would take it for garbage */
            int crc = blob_writer_sync(copies);
            if (!rc) rc = crc;
            copies_no = blob_writer_file_no(copies);
            blob_writer_close(copies);
        }
        if (b && rc) sst_builder_abandon(b);
        else if (b) rc = sst_builder_finish(b, &props);
        wrote = rc == KV_OK;
        if (rc) kv_env_remove_quietly(db->env, path);
    }
    memtable_unref(m);

    pthread_mutex_lock(&db->mu);
    db->flush_running = false;
    db->flush_attempts++;
    if (!rc) {
        version_edit e;
        edit_init(&e);
        if (wrote) {
            file_meta f = {.file_no = no, .file_size = props.file_size, .entries = props.entries,
                           .tombstones = props.tombstones, .min_seq = props.min_seq, .max_seq = props.max_seq,
                           .smallest = props.smallest, .largest = props.largest};
            rc = edit_add_file(&e, 0, &f);
        }
        e.has_log_number = true;
        e.log_number = db->nimm > 1 ? db->imm[1].log_no : db->mem_log_no;
        /* The manifest's last sequence covers the batches now in tables, not those only in a later log: a power
         * loss can take those from the log after the batch log (synced above) kept them, and recovery forgets the
         * batch log's batches above the manifest's last sequence and the last batch it replays. */
        e.has_last_seq = true;
        e.last_seq = mm.last_seq;
        if (!rc) rc = vset_log_and_apply(db->vs, &e);
        edit_free(&e);
        if (!rc) {
            memtable_unref(db->imm[0].mem);
            memmove(&db->imm[0], &db->imm[1], (size_t)(db->nimm - 1) * sizeof db->imm[0]);
            db->nimm--;
            atomic_fetch_add(&db->st_flushes, 1);
            if (wrote) atomic_fetch_add(&db->st_flush_bytes, props.file_size);
        }
    }
    sst_props_free(&props);
    pending_remove(db, no);
    if (copies_no) pending_remove(db, copies_no);
    /* a table that failed is removed by the sweep below, which spares it while a failed manifest write may still
     * name it (deletions_unsafe) */
    db_delete_obsolete_files(db);
    pthread_cond_broadcast(&db->bg_cv);
    return rc;
}

int db_flush_one(kv_db *db) {
    int rc = flush_one(db);
    /* a disk another process filled: the reserve makes room for the table, at once */
    if (rc == KV_ENOSPC && db_reserve_release(db)) rc = flush_one(db);
    return rc;
}

/* ---- compaction ----------------------------------------------------------------------------------------------------- */

typedef struct compaction {
    int level;                  /* inputs from level and level + 1; outputs to level + 1 (in_place: to level) */
    bool in_place;              /* the deepest level holding files rewritten into itself (manual compaction) */
    file_meta **in[2];
    size_t nin[2];
    version *v;
    bool manual;                /* never a trivial move: the point is to rewrite (drop old versions) */
} compaction;

static void compaction_free(compaction *c) {
    free(c->in[0]);
    free(c->in[1]);
}

static const uint8_t *uk(const kv_bytes *ik, size_t *len) {
    *len = ik->len - 8;
    return ik->data;
}

static bool overlaps(const file_meta *f, const uint8_t *lo, size_t lol, const uint8_t *hi, size_t hil) {
    size_t sl, ll;
    const uint8_t *s = uk(&f->smallest, &sl), *l = uk(&f->largest, &ll);
    if (hi && ukey_cmp(s, sl, hi, hil) > 0) return false;
    if (lo && ukey_cmp(l, ll, lo, lol) < 0) return false;
    return true;
}

/* The files of level overlapping [lo, hi] (ukeys; NULL = unbounded). */
static int overlapping(version *v, int level, const uint8_t *lo, size_t lol, const uint8_t *hi, size_t hil,
                       file_meta ***out, size_t *n) {
    *out = malloc((v->nfiles[level] + 1) * sizeof(file_meta *));
    if (!*out) return KV_ENOMEM;
    *n = 0;
    for (size_t i = 0; i < v->nfiles[level]; i++)
        if (overlaps(v->files[level][i], lo, lol, hi, hil)) (*out)[(*n)++] = v->files[level][i];
    return KV_OK;
}

static void key_range(file_meta **fs, size_t n, kv_bytes *lo, kv_bytes *hi) {
    /* lo/hi point into the file metas (no copies) */
    *lo = (kv_bytes){0};
    *hi = (kv_bytes){0};
    for (size_t i = 0; i < n; i++) {
        if (!lo->data || ikey_cmp(fs[i]->smallest.data, fs[i]->smallest.len, lo->data, lo->len) < 0) *lo = fs[i]->smallest;
        if (!hi->data || ikey_cmp(fs[i]->largest.data, fs[i]->largest.len, hi->data, hi->len) > 0) *hi = fs[i]->largest;
    }
}

/* Fill c->in[1] from level + 1; for level 0 first widen the input to every overlapping level-0 file. */
static int finish_inputs(compaction *c) {
    kv_bytes lo, hi;
    key_range(c->in[0], c->nin[0], &lo, &hi);
    if (c->level == 0) {
        /* level-0 files overlap each other: take all that overlap the range, repeatedly */
        for (;;) {
            file_meta **all;
            size_t n;
            if (overlapping(c->v, 0, lo.data, lo.len - 8, hi.data, hi.len - 8, &all, &n)) return KV_ENOMEM;
            if (n == c->nin[0]) {
                free(all);
                break;
            }
            free(c->in[0]);
            c->in[0] = all;
            c->nin[0] = n;
            key_range(c->in[0], c->nin[0], &lo, &hi);
        }
    }
    return overlapping(c->v, c->level + 1, lo.data, lo.len - 8, hi.data, hi.len - 8, &c->in[1], &c->nin[1]);
}

static uint64_t inputs_bytes(const compaction *c) {
    uint64_t total = 0;
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < c->nin[k]; i++) total += c->in[k][i]->file_size;
    return total;
}

/* Make a small compaction take more small files (caller holds mu). Without this a small file stays small for good: a
 * store opened for one write at a time (one `kvfs put` each) flushes one tiny level-0 table per open; each
 * compaction would take only the oldest level-0 table (and those overlapping it), and, overlapping nothing below,
 * move it down on its own: one more level-1 file per open, about 11 level-0 files for every read to search.
 * So while the inputs (of both levels) stay within limit bytes:
 *  - a level-0 compaction takes every level-0 file, with the level-1 files they overlap. Always correct: what must
 *    not happen is a newer version moving below an older one left in level 0, and none is left. (The level-1 files
 *    count: level-0 tables of one key each, at both ends of a large level 1, overlap all of it);
 *  - then the files of level + 1 next to the run the inputs cover are added, one at a time. A neighbour overlaps
 *    none of the inputs, and the run stays contiguous, so the outputs overlap no file left out.
 * Only an optimisation: out of memory, c stays as it was. */
static void absorb_small_neighbours(compaction *c, uint64_t limit) {
    int out = c->level + 1;
    version *v = c->v;
    uint64_t total = 0;
    if (c->level == 0 && c->nin[0] < v->nfiles[0]) {
        for (size_t i = 0; i < v->nfiles[0]; i++) total += v->files[0][i]->file_size;
        if (total <= limit) {
            file_meta **all, **below;
            size_t nbelow;
            kv_bytes lo, hi;
            key_range(v->files[0], v->nfiles[0], &lo, &hi);
            all = malloc(v->nfiles[0] * sizeof *all);
            if (!all) return;
            if (overlapping(v, 1, lo.data, lo.len - 8, hi.data, hi.len - 8, &below, &nbelow)) {
                free(all);
                return;
            }
            for (size_t i = 0; i < nbelow; i++) total += below[i]->file_size;
            if (total > limit) { /* too much below: c stays as it was */
                free(all);
                free(below);
                return;
            }
            memcpy(all, v->files[0], v->nfiles[0] * sizeof *all);
            free(c->in[0]);
            free(c->in[1]);
            c->in[0] = all;
            c->nin[0] = v->nfiles[0];
            c->in[1] = below;
            c->nin[1] = nbelow;
        }
    }
    total = inputs_bytes(c);
    if (total >= limit || v->nfiles[out] == 0) return;
    size_t first = 0, last; /* [first, last): the run of level + 1 the inputs take, or the place they go */
    if (c->nin[1]) {
        while (v->files[out][first] != c->in[1][0]) first++;
        last = first + c->nin[1];
    } else {
        kv_bytes lo, hi;
        key_range(c->in[0], c->nin[0], &lo, &hi);
        size_t hl;
        const uint8_t *h = uk(&hi, &hl);
        for (; first < v->nfiles[out]; first++) {
            size_t sl;
            const uint8_t *s = uk(&v->files[out][first]->smallest, &sl);
            if (ukey_cmp(s, sl, h, hl) > 0) break;
        }
        last = first;
    }
    size_t was_first = first, was_last = last;
    for (;;) {
        file_meta *after = last < v->nfiles[out] ? v->files[out][last] : NULL;
        file_meta *before = first > 0 ? v->files[out][first - 1] : NULL;
        if (after && total + after->file_size <= limit) {
            total += after->file_size;
            last++;
        } else if (before && total + before->file_size <= limit) {
            total += before->file_size;
            first--;
        } else {
            break;
        }
    }
    if (first == was_first && last == was_last) return;
    file_meta **in = malloc((last - first) * sizeof *in);
    if (!in) return;
    memcpy(in, &v->files[out][first], (last - first) * sizeof *in);
    free(c->in[1]);
    c->in[1] = in;
    c->nin[1] = last - first;
}

/* Pick the next compaction by score (caller holds mu). false when none is needed. */
static bool pick_compaction(kv_db *db, compaction *c) {
    version *v = db->vs->current;
    if (v->score < 1 || v->score_level < 0) return false;
    memset(c, 0, sizeof *c);
    c->level = v->score_level;
    c->v = v;
    c->in[0] = malloc(sizeof(file_meta *));
    if (!c->in[0]) return false;
    int l = c->level;
    if (l == 0) {
        c->in[0][0] = v->files[0][v->nfiles[0] - 1]; /* the oldest */
    } else {
        /* round robin: the first file after where the last compaction of this level stopped */
        kv_bytes *ptr = &db->vs->compact_pointer[l];
        size_t pick = 0;
        if (ptr->len) {
            for (pick = 0; pick < v->nfiles[l]; pick++)
                if (ikey_cmp(v->files[l][pick]->largest.data, v->files[l][pick]->largest.len, ptr->data, ptr->len) > 0) break;
            if (pick == v->nfiles[l]) pick = 0;
        }
        c->in[0][0] = v->files[l][pick];
    }
    c->nin[0] = 1;
    if (finish_inputs(c)) {
        compaction_free(c);
        return false;
    }
    absorb_small_neighbours(c, db->opt.table_bytes / 2);
    return true;
}

/* Can a deeper level than out_level hold ukey? */
static bool deeper_may_hold(version *v, int out_level, const uint8_t *ukey, size_t ulen) {
    for (int l = out_level + 1; l < KV_MAX_LEVELS; l++)
        for (size_t i = 0; i < v->nfiles[l]; i++)
            if (overlaps(v->files[l][i], ukey, ulen, ukey, ulen)) return true;
    return false;
}

typedef struct output {
    sst_builder *b;
    uint64_t no;
} output;

static iter *input_iter(kv_db *db, file_meta *f) {
    sst_reader *r;
    int rc = db_open_table(db, f->file_no, &r);
    if (rc) return iter_empty(rc);
    iter *it = sst_reader_iter(r, false);
    sst_reader_unref(r);
    return it ? it : iter_empty(KV_ENOMEM);
}

/* Finish the current output and add it to the edit (no lock held). */
static int finish_output(kv_db *db, output *o, version_edit *e, int level) {
    sst_props props = {0};
    int rc = sst_builder_finish(o->b, &props);
    o->b = NULL;
    if (!rc) {
        file_meta f = {.file_no = o->no, .file_size = props.file_size, .entries = props.entries,
                       .tombstones = props.tombstones, .min_seq = props.min_seq, .max_seq = props.max_seq,
                       .smallest = props.smallest, .largest = props.largest};
        rc = edit_add_file(e, level, &f);
        atomic_fetch_add(&db->st_compact_bytes, props.file_size);
    }
    sst_props_free(&props);
    return rc;
}

/* Compactions leave the last bytes of the disk to the log and to the flushes that keep writers going (a flush is
 * never stopped for space). A compaction's output may be as large as its inputs, and while it was written a nearly
 * full disk had nothing left for them: in a store filled with small files, `rm` failed with ENOSPC each time a
 * compaction that could not fit tried again. The floor: half of the one writes that add data stop at
 * (db_space_floor), so that a compaction that mostly drops deletes can use the rest. The output is checked every
 * COMPACTION_SPACE_STEP bytes: one whose output stays under it is never stopped. */
#define COMPACTION_SPACE_STEP (256u << 10)

static int compaction_space_check(kv_db *db) {
    uint64_t avail, total;
    if (!db->env->disk_space) return KV_OK;
    int rc = db->env->disk_space(db->env, db->dir, &avail, &total);
    if (rc == KV_OK && db_space_seen(db, avail, total)) rc = db->env->disk_space(db->env, db->dir, &avail, &total);
    if (rc != KV_OK) {
        kv_clear_error(); /* not known: no floor */
        return KV_OK;
    }
    uint64_t floor = db_space_floor(db, total) / 2;
    if (avail >= floor) return KV_OK;
    return kv_set_error(KV_ENOSPC, "compaction stopped: %llu bytes free on the disk holding %s, under the %llu kept "
                        "for the log and flushes", (unsigned long long)avail, db->dir, (unsigned long long)floor);
}

/* Run compaction c (caller holds mu; released during the merge). */
static int run_compaction(kv_db *db, compaction *c) {
    version_edit e;
    edit_init(&e);
    int out_level = c->in_place ? c->level : c->level + 1;
    int rc = KV_OK;
    assert(!c->in_place || (c->nin[1] == 0 && c->level > 0));

    if (c->nin[0] == 1 && c->nin[1] == 0 && !c->manual) {
        /* nothing to merge with: move the file down without rewriting it */
        file_meta *f = c->in[0][0];
        rc = edit_delete_file(&e, c->level, f->file_no);
        if (!rc) rc = edit_add_file(&e, out_level, f);
        if (!rc) rc = vset_log_and_apply(db->vs, &e);
        edit_free(&e);
        return rc;
    }

    uint64_t smallest_snapshot = db_oldest_snapshot_seq(db);
    version *v = c->v;
    version_ref(v);
    db->compact_running = true;
    uint64_t *outs = NULL;
    size_t nouts = 0;
    pthread_mutex_unlock(&db->mu);

    size_t nk = c->nin[0] + c->nin[1];
    iter **kids = calloc(nk ? nk : 1, sizeof *kids);
    iter *in = NULL;
    if (!kids) rc = KV_ENOMEM;
    else {
        size_t k = 0;
        for (int w = 0; w < 2; w++)
            for (size_t i = 0; i < c->nin[w]; i++) {
                kids[k++] = input_iter(db, c->in[w][i]);
                atomic_fetch_add(&db->st_compact_read, c->in[w][i]->file_size);
            }
        in = merge_iter_new(kids, k);
        free(kids);
        if (!in) rc = KV_ENOMEM;
    }

    output o = {0};
    kv_bytes cur = {0};
    bool has_cur = false;
    uint64_t last_seq_for_key = UINT64_MAX;
    /* the output's size: of the tables finished, and at the last compaction_space_check (a compaction whose output
     * stays small, one that mostly drops deletes, is never stopped) */
    uint64_t out_done = 0, space_checked = 0;
    sst_options so = table_options(db);
    if (in) in->seek_first(in);
    while (rc == KV_OK && in && in->valid(in)) {
        if (atomic_load(&db->closed)) {
            rc = kv_set_error(KV_ECLOSED, "compaction stopped: the store is closing");
            break;
        }
        size_t kl, vl;
        const uint8_t *k = in->key(in, &kl), *val = in->value(in, &vl);
        if (kl < 9) {
            rc = kv_set_error(KV_ECORRUPT, "compaction: malformed internal key");
            break;
        }
        bool new_key = !has_cur || ukey_cmp(k, kl - 8, cur.data, cur.len) != 0;
        if (new_key) {
            bytes_clear(&cur);
            if (bytes_append(&cur, k, kl - 8)) { rc = KV_ENOMEM; break; }
            has_cur = true;
            last_seq_for_key = UINT64_MAX;
            /* a new user key is where an output may end */
            if (o.b && sst_builder_size(o.b) >= db->opt.table_bytes) {
                out_done += sst_builder_size(o.b);
                rc = finish_output(db, &o, &e, out_level);
                if (rc) break;
            }
        }
        uint64_t seq = ikey_seq(k, kl);
        bool drop = false;
        if (last_seq_for_key <= smallest_snapshot) {
            drop = true; /* a newer entry of this key is visible to every reader */
        } else if (ikey_type(k, kl) == KV_TYPE_DELETE && seq <= smallest_snapshot &&
                   !deeper_may_hold(v, out_level, k, kl - 8)) {
            drop = true; /* nothing older remains for this delete to hide */
        }
        last_seq_for_key = seq;
        if (!drop) {
            uint64_t out_bytes = out_done + (o.b ? sst_builder_size(o.b) : 0);
            if (out_bytes >= space_checked + COMPACTION_SPACE_STEP) {
                if ((rc = compaction_space_check(db))) break;
                space_checked = out_bytes;
            }
            if (!o.b) {
                /* room in outs first: every number made pending is in outs, which un-pends them all at the end */
                uint64_t *p = realloc(outs, (nouts + 1) * sizeof *outs);
                if (!p) { rc = KV_ENOMEM; break; }
                outs = p;
                pthread_mutex_lock(&db->mu);
                o.no = vset_new_file_number(db->vs);
                pending_add(db, o.no);
                pthread_mutex_unlock(&db->mu);
                outs[nouts++] = o.no;
                char path[4096];
                file_name(path, sizeof path, db->dir, o.no, "sst");
                rc = sst_builder_new(db->env, path, &so, &o.b);
                if (rc) break;
            }
            rc = sst_builder_add(o.b, k, kl, val, vl);
        }
        if (!rc) in->next(in);
    }
    if (!rc && in && in->status(in)) rc = in->status(in);
    if (!rc && o.b) rc = finish_output(db, &o, &e, out_level);
    if (o.b) sst_builder_abandon(o.b);
    if (in) in->destroy(in);
    bytes_free(&cur);

    pthread_mutex_lock(&db->mu);
    db->compact_running = false;
    if (!rc) {
        for (int w = 0; w < 2; w++)
            for (size_t i = 0; i < c->nin[w]; i++) rc = rc ? rc : edit_delete_file(&e, c->level + w, c->in[w][i]->file_no);
        if (!rc) rc = vset_log_and_apply(db->vs, &e);
        if (!rc) {
            /* the next compaction of this level starts after what this one covered */
            kv_bytes lo, hi;
            key_range(c->in[0], c->nin[0], &lo, &hi);
            bytes_clear(&db->vs->compact_pointer[c->level]);
            bytes_append(&db->vs->compact_pointer[c->level], hi.data, hi.len);
            atomic_fetch_add(&db->st_compactions, 1);
        }
    }
    for (size_t i = 0; i < nouts; i++) pending_remove(db, outs[i]);
    free(outs);
    edit_free(&e);
    version_unref(v);
    db_delete_obsolete_files(db); /* also removes outputs of a failed compaction */
    pthread_cond_broadcast(&db->bg_cv);
    return rc;
}

static int compact_once(kv_db *db, bool *did) {
    compaction c;
    *did = false;
    /* Without background threads a writer compacts here (make_room) while kv_compact_range may be compacting in
     * another thread with the lock released: picking from the current version would take files that compaction is
     * rewriting, and both outputs would land in one level, overlapping. One compaction at a time. */
    if (db->compact_running || db->manual_running || db->manual_waiting) return KV_OK;
    if (!pick_compaction(db, &c)) return KV_OK;
    *did = true;
    int rc = run_compaction(db, &c);
    compaction_free(&c);
    return rc;
}

/* After a compaction failed for space: whether the disk is full all the same, and giving the reserve back made room.
 * Not when it only stopped at the floor kept for the log and flushes (compaction_space_check): its own output must not
 * take the reserve. Keeps the thread's message, the compaction's. */
static bool reserve_freed_for_compaction(kv_db *db) {
    if (!atomic_load(&db->reserve_held)) return false;
    if (!db->env->disk_space) return db_reserve_release(db);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    uint64_t avail, total;
    bool freed = db->env->disk_space(db->env, db->dir, &avail, &total) == KV_OK && db_space_seen(db, avail, total);
    kv_set_error(KV_ENOSPC, "%s", msg);
    return freed;
}

int db_compact_once(kv_db *db, bool *did) {
    int rc = compact_once(db, did);
    if (rc == KV_ENOSPC && reserve_freed_for_compaction(db)) rc = compact_once(db, did);
    return rc;
}

/* A process that opens a store, writes once and closes (one `kvfs put`) adds a tiny level-0 table at each open (its
 * log's batch, flushed by recovery), and close stops a compaction rather than waiting for it: level 0 would grow to
 * the writers' stall trigger, every read searching each table. So open runs the level-0 compaction that is due when
 * its inputs, of both levels, are small; it costs a few milliseconds every few opens. (Level 0 being small is not
 * enough: its tables may overlap much of a large level 1, which open would then rewrite before returning.) */
void db_compact_small_level0(kv_db *db) {
    version *v = db->vs->current;
    if (v->score < 1 || v->score_level != 0) return;
    if (db->compact_running || db->manual_running || db->manual_waiting) return;
    compaction c;
    if (!pick_compaction(db, &c)) return;
    if (c.level == 0 && inputs_bytes(&c) <= db->opt.table_bytes / 2) {
        /* a failure is the background's to retry, and to report: the open succeeds, with the message it had */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", kv_errmsg());
        if (run_compaction(db, &c) != KV_OK) kv_set_error(KV_OK, "%s", msg);
    }
    compaction_free(&c);
}

/* Compact every file of level overlapping [begin, end] into level + 1 (caller holds mu). level is below the last. */
int db_compact_level_down(kv_db *db, int level, const kv_bytes *begin, const kv_bytes *end) {
    assert(level < KV_MAX_LEVELS - 1);
    compaction c;
    memset(&c, 0, sizeof c);
    c.level = level;
    c.v = db->vs->current;
    c.manual = true;
    int rc = overlapping(c.v, level, begin->len ? begin->data : NULL, begin->len, end->len ? end->data : NULL,
                         end->len, &c.in[0], &c.nin[0]);
    if (rc) return rc;
    if (c.nin[0] == 0) {
        free(c.in[0]);
        return KV_OK;
    }
    rc = finish_inputs(&c);
    if (!rc) rc = run_compaction(db, &c);
    compaction_free(&c);
    return rc;
}

/* Whether rewriting table f could drop an entry: it holds a tombstone, or a user key more than once (an older
 * version). Called without mu. A table that cannot be opened counts as yes: its compaction reports the error. */
static bool may_drop_entries(kv_db *db, const file_meta *f) {
    if (f->tombstones) return true;
    sst_reader *r;
    if (db_open_table(db, f->file_no, &r) != KV_OK) return true;
    const sst_props *p = sst_reader_props(r);
    bool dup = p->user_keys == 0 || p->user_keys != p->entries; /* 0: written before the property existed */
    sst_reader_unref(r);
    return dup;
}

/* Rewrite into level itself its files overlapping [begin, end] that are numbered below made_from and may drop
 * entries (caller holds mu, and manual_running: no other compaction changes level meanwhile, and flushes write
 * level 0 only). level is >= 1 and the deepest level holding files, so a tombstone there hides nothing below.
 * Each run of neighbouring picked files is one compaction: its outputs stay inside the run's key range, so they
 * never overlap a file left out between two runs. */
int db_rewrite_level(kv_db *db, int level, const kv_bytes *begin, const kv_bytes *end, uint64_t made_from) {
    assert(level > 0);
    version *v = db->vs->current;
    file_meta **fs;
    size_t n;
    int rc = overlapping(v, level, begin->len ? begin->data : NULL, begin->len, end->len ? end->data : NULL,
                         end->len, &fs, &n);
    if (rc) return rc;
    bool *pick = calloc(n ? n : 1, sizeof *pick);
    if (!pick) {
        free(fs);
        return kv_set_error(KV_ENOMEM, "out of memory");
    }
    version_ref(v); /* keeps fs alive while the lock is released */
    pthread_mutex_unlock(&db->mu);
    for (size_t i = 0; i < n; i++) pick[i] = fs[i]->file_no < made_from && may_drop_entries(db, fs[i]);
    pthread_mutex_lock(&db->mu);
    for (size_t i = 0; i < n && !rc; i++) {
        if (!pick[i]) continue;
        size_t j = i;
        while (j + 1 < n && pick[j + 1]) j++;
        compaction c;
        memset(&c, 0, sizeof c);
        c.level = level;
        c.v = db->vs->current;
        c.manual = true;
        c.in_place = true;
        c.nin[0] = j - i + 1;
        c.in[0] = malloc(c.nin[0] * sizeof *c.in[0]);
        if (!c.in[0]) rc = kv_set_error(KV_ENOMEM, "out of memory");
        else {
            memcpy(c.in[0], fs + i, c.nin[0] * sizeof *c.in[0]);
            rc = run_compaction(db, &c);
        }
        compaction_free(&c);
        i = j;
    }
    version_unref(v);
    free(pick);
    free(fs);
    return rc;
}

/* ---- threads ---------------------------------------------------------------------------------------------------------- */

static void timed_wait(kv_db *db, pthread_cond_t *cv, long ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cv, &db->mu, &ts);
}

static void *flush_main(void *arg) {
    kv_db *db = arg;
    pthread_mutex_lock(&db->mu);
    uint64_t failures = 0; /* in a row */
    while (!db->stopping) {
        if (db->nimm > 0) {
            kv_clear_error(); /* a failure that sets no message of its own must not log an older one */
            int rc = db_flush_one(db);
            if (rc && rc != KV_ECLOSED) log_failure(db, true, "flush", ++failures, rc);
            else if (!rc) log_recovery(db, true, "flush", failures), failures = 0;
            if (rc) {
                /* keep the error for writers waiting on us, and retry: the cause (a full disk) may go away */
                db->bg_error = rc;
                atomic_fetch_add(&db->st_flush_failures, 1);
                if (rc == KV_ENOSPC) atomic_fetch_add(&db->st_enospc, 1);
                pthread_cond_broadcast(&db->bg_cv);
                /* the log callback above ran with mu let go: close may have asked us to stop meanwhile, and its
                 * broadcast is then already past; it must not wait out the pause */
                if (!db->stopping) timed_wait(db, &db->work_cv, 500);
            } else {
                db->bg_error = 0;
                pthread_cond_broadcast(&db->work_cv); /* maybe a compaction now */
            }
            continue;
        }
        pthread_cond_wait(&db->work_cv, &db->mu);
    }
    pthread_mutex_unlock(&db->mu);
    return NULL;
}

/* Blob GC on a full disk. Once a write failed for want of space (st_enospc moved), a pass runs a second after the
 * next write: a delete may have left a large value's blob file unreferenced, and its space then comes back without
 * waiting for compaction (which a full disk may stop) or for the minute of idleness of the usual pass. While passes
 * free nothing, the wait doubles, up to a minute; a pass that frees something ends the hurry. */
typedef struct gc_pacing {
    uint64_t enospc_seen;
    bool hurry;
    uint64_t wait_us, from_us, seq; /* the next hurried pass: wait_us after from_us, once last_seq is not seq */
} gc_pacing;

/* A blob GC pass from the compaction thread (caller holds mu, which is released for the pass). Meanwhile no compaction
 * runs, and the pass leads the write queue at times (and writes, when it copies values out): a writer that led the
 * queue while waiting at the level-0 stop trigger for a compaction would wait for ever, and the pass for it. So
 * writers do not wait there for the pass (bg_gc_running, make_room), and those waiting are woken. */
static int bg_blob_gc(kv_db *db, uint64_t *freed) {
    db->bg_gc_running = true;
    pthread_cond_broadcast(&db->bg_cv);
    pthread_mutex_unlock(&db->mu);
    kv_clear_error(); /* as in flush_main */
    int rc = db_blob_gc(db, db->opt.blob_gc_ratio, freed);
    if (rc != KV_OK && rc != KV_ECLOSED) {
        atomic_fetch_add(&db->st_gc_failures, 1); /* shown by kvfs stats */
        log_failure(db, false, "blob garbage collection", ++db->bg_gc_fail_run, rc);
    } else if (rc == KV_OK) {
        log_recovery(db, false, "blob garbage collection", db->bg_gc_fail_run);
        db->bg_gc_fail_run = 0;
    }
    pthread_mutex_lock(&db->mu);
    db->bg_gc_running = false;
    return rc;
}

/* Run a hurried pass if one is due (caller holds mu, which is released for the pass). */
static void gc_when_short_of_space(kv_db *db, gc_pacing *p) {
    uint64_t e = atomic_load(&db->st_enospc);
    if (e != p->enospc_seen && !p->hurry) /* later failures while hurrying (a flush retried) keep its pace */
        *p = (gc_pacing){.hurry = true, .wait_us = 1000000, .from_us = db_now_us(), .seq = 0};
    p->enospc_seen = e;
    if (!p->hurry || db->stopping || db->vs->current->nblobs == 0 || db_now_us() - p->from_us < p->wait_us ||
        atomic_load(&db->last_seq) == p->seq)
        return;
    uint64_t seq = atomic_load(&db->last_seq), freed = 0;
    int rc = bg_blob_gc(db, &freed);
    if (rc == KV_OK && freed) {
        p->hurry = false;
    } else {
        p->wait_us = p->wait_us * 2 > 60000000 ? 60000000 : p->wait_us * 2;
        p->from_us = db_now_us();
        p->seq = seq;
    }
}

/* Large-value bytes appended since the last pass that make the next one due: as many as the newest values held then
 * (so garbage stays about the size of the live data), and at least GC_DUE_MIN_BYTES (a pass reads every entry). A
 * steady writer that overwrites large values never leaves compaction idle for a minute: a store under a database's
 * update loop grew at 60 MB/s, to 259 times its live data, until the writes stopped. */
#define GC_DUE_MIN_BYTES ((uint64_t)64 << 20)

static bool gc_due_by_bytes(kv_db *db) {
    uint64_t live = atomic_load(&db->gc_live_bytes), since = atomic_load(&db->st_blob_bytes) - atomic_load(&db->gc_mark);
    return since >= (live > GC_DUE_MIN_BYTES ? live : GC_DUE_MIN_BYTES);
}

void db_note_blob_bytes(kv_db *db, uint64_t len) {
    atomic_fetch_add(&db->st_blob_bytes, len);
    /* without mu: a wakeup lost to a race is made up by the thread's next timed wait, a second later */
    if (gc_due_by_bytes(db)) pthread_cond_signal(&db->work_cv);
}

/* A compaction failed for want of space (caller holds mu). Its output is what survives of its inputs, so deletes make
 * it smaller, but only those in tables: deletes waiting in the memtable (a user emptying a full store) would wait for
 * it to fill. Switch it now, if it holds any, so the flush thread writes them and the next attempt sees them (at most
 * every 5 s: compact_main). A flush request passes the level-0 stop trigger while compactions fail (make_room).
 * Whether it asked for the switch. */
static bool flush_deletes_for_compaction(kv_db *db) {
    memtable_meta mm;
    memtable_get_meta(db->mem, &mm);
    if (mm.tombstones == 0 || db->nimm > 0 || db->stopping) return false;
    pthread_mutex_unlock(&db->mu);
    (void)db_write_internal(db, NULL, 0, NULL);
    pthread_mutex_lock(&db->mu);
    return true;
}

/* Blob GC after removals. A delete (or truncation) may leave a blob file that no value names, whose space a pass
 * gives back; a user who removed a large file through the mount expects it back soon, not after the minute of
 * idleness. A pass is due once writes have been quiet for GC_AFTER_REMOVALS_QUIET_US and something was removed since
 * the last pass began, at most one per max(GC_AFTER_REMOVALS_GAP_US, 10 times the last pass's time): a pass reads
 * every entry, so a store that keeps deleting small keys spends at most a tenth of this thread's time on them. */
#define GC_AFTER_REMOVALS_QUIET_US 3000000
#define GC_AFTER_REMOVALS_GAP_US 10000000

typedef struct gc_after_removals {
    uint64_t removals; /* st_removals when the last pass began */
    uint64_t ended_us, took_us;
    uint64_t seq, quiet_since_us; /* last_seq as last seen, and since when it has not moved */
} gc_after_removals;

/* A blob GC pass from compact_main, timed for gc_after_removals (caller holds mu, released for the pass). */
static void bg_blob_gc_timed(kv_db *db, gc_after_removals *g) {
    g->removals = atomic_load(&db->st_removals);
    uint64_t t = db_now_us();
    (void)bg_blob_gc(db, NULL);
    g->ended_us = db_now_us();
    g->took_us = g->ended_us - t;
}

static bool gc_due_after_removals(kv_db *db, gc_after_removals *g) {
    uint64_t now = db_now_us(), seq = atomic_load(&db->last_seq);
    if (seq != g->seq) {
        g->seq = seq;
        g->quiet_since_us = now;
    }
    uint64_t gap = g->took_us * 10 > GC_AFTER_REMOVALS_GAP_US ? g->took_us * 10 : GC_AFTER_REMOVALS_GAP_US;
    return atomic_load(&db->st_removals) != g->removals && now - g->quiet_since_us >= GC_AFTER_REMOVALS_QUIET_US &&
           (g->ended_us == 0 || now - g->ended_us >= gap);
}

/* Whether a background compaction that worked ends the run of failures before it (for the log; `successes` counts
 * the run's successes in a row, and is reset when it ends): when it left nothing to compact, or after
 * COMPACT_RUN_END_SUCCESSES in a row. One success alone does not: while one table fails every time, the compactions
 * of other levels still work between its attempts, and the log heard "works again" and "failed" anew at each turn. */
#define COMPACT_RUN_END_SUCCESSES 3
bool db_compact_run_ends(uint64_t failures, unsigned *successes, bool nothing_due) {
    if (!failures) return false;
    if (!nothing_due && ++*successes < COMPACT_RUN_END_SUCCESSES) return false;
    *successes = 0;
    return true;
}

void (*db_compact_start_hook)(kv_db *db);

static void *compact_main(void *arg) {
    kv_db *db = arg;
    if (db_compact_start_hook) db_compact_start_hook(db);
    /* st_removals and st_enospc count from the open, and this thread is started inside kv_open: 0, not their values
     * now, is what it has seen. It may start running only after the caller's first writes (a busy machine), and a
     * delete counted by then was taken as one the last pass had seen, and never followed. */
    gc_after_removals removed = {.removals = 0, .seq = atomic_load(&db->last_seq), .quiet_since_us = db_now_us()};
    pthread_mutex_lock(&db->mu);
    int failures = 0;         /* in this run (successes between them do not end it: db_compact_run_ends) */
    unsigned run_successes = 0; /* in a row, within the run */
    uint64_t busy_us = db_now_us(); /* the last compaction or pass: a pass is due after a minute without either */
    gc_pacing pacing = {.enospc_seen = 0};
    /* the last flush_deletes_for_compaction: at most one in 5 s, each a level-0 table and a log (while compactions
     * keep failing, each flush's success wakes this thread for another attempt at once) */
    uint64_t deletes_flushed_us = 0;
    while (!db->stopping) {
        if (failures && !db->compact_error && !db->manual_running && db->vs->current->score < 1) {
            /* a manual compaction succeeded meanwhile (kv_compact_range clears compact_error) and left nothing to
             * compact: that ends the run. While something is still due, the attempt below says whether compactions
             * work again: a manual one of another key range (or of one that holds nothing) says nothing of the one
             * that fails here, and a failure then goes on with the same run, unlogged, and its pauses. */
            log_recovery(db, true, "compaction", (uint64_t)failures);
            failures = 0;
            run_successes = 0;
        }
        if (!db->manual_running && !db->manual_waiting && !db->compact_running && db->vs->current->score >= 1) {
            bool did;
            kv_clear_error(); /* as in flush_main */
            int rc = db_compact_once(db, &did);
            db->compact_attempts++;
            db->compact_error = rc == KV_ECLOSED ? 0 : rc;
            if (rc && rc != KV_ECLOSED) {
                log_failure(db, true, "compaction", (uint64_t)failures + 1, rc);
            } else if (!rc && db_compact_run_ends((uint64_t)failures, &run_successes, db->vs->current->score < 1)) {
                log_recovery(db, true, "compaction", (uint64_t)failures);
                failures = 0;
            }
            if (rc == KV_ENOSPC) atomic_fetch_add(&db->st_enospc, 1);
            pthread_cond_broadcast(&db->bg_cv); /* writers waiting at the stop trigger look at compact_error */
            if (rc && rc != KV_ECLOSED) {
                failures++;
                run_successes = 0;
                atomic_fetch_add(&db->st_compact_failures, 1);
                /* the 5 s run from a flush made, not from an attempt that found no delete to flush */
                if (rc == KV_ENOSPC && db_now_us() - deletes_flushed_us >= 5000000 &&
                    flush_deletes_for_compaction(db))
                    deletes_flushed_us = db_now_us();
                /* mu was released for that flush: a close may have broadcast meanwhile */
                if (!db->stopping) timed_wait(db, &db->work_cv, failures > 10 ? 5000 : 200 * failures);
                gc_when_short_of_space(db, &pacing); /* a compaction that fails for a full disk may free it */
            }
            if (!db->stopping && db->vs->current->nblobs > 0 && gc_due_by_bytes(db))
                bg_blob_gc_timed(db, &removed); /* between compactions too */
            busy_us = db_now_us();
            continue;
        }
        timed_wait(db, &db->work_cv, 1000);
        gc_when_short_of_space(db, &pacing);
        /* after a minute without compactions, once enough large values were written, or soon after removals,
         * reclaim blob space (it is a no-op without blob files) */
        bool after_removals = gc_due_after_removals(db, &removed);
        if (db->vs->current->nblobs > 0 && !db->stopping &&
            (db_now_us() - busy_us >= 60000000 || gc_due_by_bytes(db) || after_removals)) {
            bg_blob_gc_timed(db, &removed);
            busy_us = db_now_us();
        }
    }
    pthread_mutex_unlock(&db->mu);
    return NULL;
}

int db_start_background(kv_db *db) {
    if (pthread_create(&db->flush_thread, NULL, flush_main, db)) return kv_set_error(KV_ENOMEM, "cannot start the flush thread");
    if (pthread_create(&db->compact_thread, NULL, compact_main, db)) {
        pthread_mutex_lock(&db->mu);
        db->stopping = true;
        pthread_cond_broadcast(&db->work_cv);
        pthread_mutex_unlock(&db->mu);
        pthread_join(db->flush_thread, NULL);
        return kv_set_error(KV_ENOMEM, "cannot start the compaction thread");
    }
    db->threads_started = true;
    return KV_OK;
}

void db_stop_background(kv_db *db) {
    if (!db->threads_started) return;
    pthread_mutex_lock(&db->mu);
    db->stopping = true;
    pthread_cond_broadcast(&db->work_cv);
    pthread_mutex_unlock(&db->mu);
    pthread_join(db->flush_thread, NULL);
    pthread_join(db->compact_thread, NULL);
    db->threads_started = false;
}
