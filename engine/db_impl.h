/*
 * db_impl.h — the state of an open store, shared by db.c (open, close, writes, background work), db_read.c (gets,
 * iterators, scans), db_maint.c (check, compaction requests, checkpoint, statistics, blob GC), batch.c (write
 * batches and their log encoding) and batchlog.c (the change feed).
 *
 * Invariants
 *  - mu protects: mem/imm/current-version pointers and their refcounts, the writer queue, snapshots, background
 *    state, the version set. It is never held during data-file I/O except manifest edits (vset_log_and_apply).
 *  - A batch is visible once last_seq (atomic) reaches its sequence number; its entries were put into the memtable,
 *    and before that into the write-ahead log, by the group-commit leader, the only thread writing the memtable.
 *  - Every public entry point brackets its work with db_enter/db_leave; kv_close waits for active calls to leave.
 *    Iterators and streams pin the store's resources: kv_close frees them only when the last pin is released.
 *  - Blob data referenced by a record is durable before that record is: a synced write syncs blob files before the
 *    log, and a flush syncs the active blob file before installing its table.
 */
#ifndef KV_DB_IMPL_H
#define KV_DB_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "blob.h"
#include "blob_pages.h"
#include "cache.h"
#include "coding.h"
#include "env.h"
#include "iter.h"
#include "kv.h"
#include "memtable.h"
#include "sst.h"
#include "version.h"
#include "wal.h"

/* ---- write batches (batch.c) ------------------------------------------------------------------------------------- */

enum { BOP_PUT, BOP_DELETE, BOP_MOVE, BOP_WRITE_AT, BOP_TRUNCATE, BOP_ZERO_RANGE, BOP_COPY_RANGE, BOP_PUT_STREAM,
       BOP_REMAP_IF };

typedef struct batch_op {
    uint8_t kind, ks, ks2;
    size_t key_off, klen;   /* into batch data */
    size_t key2_off, k2len; /* BOP_MOVE, BOP_COPY_RANGE: destination; BOP_REMAP_IF: the payload blob GC copied */
    size_t data_off;        /* value / bytes / new payload, in batch data unless ext is set */
    const uint8_t *ext;     /* PUT / WRITE_AT made with *_nocopy: the caller's bytes (batch_op_data) */
    uint64_t len;           /* value length (PUT, WRITE_AT, REMAP_IF: the copy's payload), ZERO_RANGE length */
    uint64_t off;           /* WRITE_AT and ZERO_RANGE offset, TRUNCATE size, COPY_RANGE source offset */
    uint64_t off2;          /* COPY_RANGE destination offset (len: the length) */
    kv_stream *stream;
    const struct blob_remap *remap; /* REMAP_IF: where the copy put each extent of the payload copied (blob_pages.h) */
} batch_op;

struct kv_batch {
    batch_op *ops;
    size_t n, cap;
    kv_bytes data;
    uint64_t ext_bytes;     /* bytes of the values only pointed to (nocopy): with data.len, the batch's size */
    bool reads;             /* has an op whose result depends on the current value (move, write_at, ...) */
    bool streams;           /* has a BOP_PUT_STREAM op */
};

/* Keys and values of a batch, wherever they are (statistics, group limits). */
static inline uint64_t batch_bytes(const kv_batch *b) { return b->data.len + b->ext_bytes; }

/* A batch that removes data: at least one delete, truncation or zeroed range, or a move of a value to another key (at most
 * BATCH_REMOVES_MAX_MOVES, and at most BATCH_REMOVES_MOVED_BYTES / blob_threshold: a move of a value kept whole
 * rewrites its bytes under the new key, up to blob_threshold, which may be as large as 512 MiB),
 * no more puts than those and at most 256 bytes of keys and values put per one of them, nothing else. So an
 * unlink's batch (the file's keys deleted, its directory's new times put), `> file` (a truncation and the file's
 * times), the unlink of a file still open (its value moved to the orphans) and a file's rename. A truncation adds
 * no bytes beyond a small reference, except when it extends a value short enough to be kept whole (below
 * blob_threshold), and mostly it frees them; so does a zeroed range (a hole punched in a file). While compactions fail, such batches pass the level-0 stop trigger
 * (make_room): on a disk too full for a compaction's output, deletes are what make the output small enough to fit,
 * and refusing them left a full store stuck for good; and they pass the floor of free space that writes adding data
 * stop at (db_space_for_write). */
#define BATCH_REMOVES_MAX_MOVES 16
#define BATCH_REMOVES_MOVED_BYTES (1u << 20)

static inline bool batch_removes_data(const kv_batch *b, uint64_t blob_threshold) {
    uint64_t max_moves = blob_threshold ? BATCH_REMOVES_MOVED_BYTES / blob_threshold : BATCH_REMOVES_MAX_MOVES;
    if (max_moves > BATCH_REMOVES_MAX_MOVES) max_moves = BATCH_REMOVES_MAX_MOVES;
    uint64_t removals = 0, moves = 0, puts = 0, put_bytes = 0;
    for (size_t i = 0; i < b->n; i++) {
        const batch_op *op = &b->ops[i];
        if (op->kind == BOP_DELETE || op->kind == BOP_TRUNCATE || op->kind == BOP_ZERO_RANGE) removals++;
        else if (op->kind == BOP_MOVE) moves++;
        else if (op->kind == BOP_PUT) {
            puts++;
            put_bytes += op->klen + op->len;
        } else {
            return false;
        }
    }
    uint64_t n = removals + moves;
    return n > 0 && moves <= max_moves && puts <= n && put_bytes <= 256 * n;
}

/* Tests: blob GC calls this, if set, between a value's copy and its swap (ks, key: the value's). */
extern void (*db_gc_copied_hook)(kv_db *db, int ks, const void *key, size_t klen);
/* Tests: a GC pass holds at most this many ranges (and at most GC_RANGES_MAX) to count shared bytes once. */
extern size_t db_gc_ranges_max;
/* Tests: the compaction thread calls this, if set, first thing when it starts, before it looks at the store (a test
 * holds it there to run writes that a busy machine lets come first). */
extern void (*db_compact_start_hook)(kv_db *db);

/* The bytes of a PUT / WRITE_AT / REMAP_IF op: its own copy in the batch data, or the caller's (nocopy). */
static inline const uint8_t *batch_op_data(const kv_batch *b, const batch_op *op) {
    return op->ext ? op->ext : b->data.data + op->data_off;
}

/* A resolved operation: what goes into the log and the memtable. */
typedef struct resolved_op {
    int type;               /* KV_TYPE_VALUE, KV_TYPE_BLOB or KV_TYPE_DELETE */
    const uint8_t *ukey;    /* keyspace || key */
    size_t ulen;
    const uint8_t *payload;
    size_t plen;
} resolved_op;

/* Log record of a batch: fixed64 seq | varint timestamp_ms | varint count | count x
 *   (byte type | lenprefixed ukey | [lenprefixed payload unless type is delete]) */
#define BATCH_OP_MIN 4 /* bytes: type, key length, keyspace byte, one key byte */
int batch_record_decode(const uint8_t *rec, size_t len, uint64_t *seq, int64_t *ts, size_t *count,
                        const uint8_t **ops, const char *name, uint64_t offset);
/* Iterate the ops of a decoded record: returns the position after the op, or NULL if malformed. */
const uint8_t *batch_record_next_op(const uint8_t *p, const uint8_t *lim, resolved_op *op);

/* ---- the batch log (batchlog.c) ---------------------------------------------------------------------------------- */

typedef struct batchlog batchlog;
int batchlog_open(kv_env *env, const char *dir, uint64_t max_batches, uint64_t max_bytes, uint64_t floor,
                  bool read_only, batchlog **out);
void batchlog_close(batchlog *bl);
bool batchlog_enabled(const batchlog *bl);
uint64_t batchlog_newest(const batchlog *bl); /* 0 when empty */
int batchlog_append(batchlog *bl, uint64_t seq, const void *rec, size_t len);
int batchlog_sync(batchlog *bl);
/* Forget the batches above seq: after recovery, those the store's logs lost (a torn tail, a power loss), whose
 * sequence numbers the next batches get. */
int batchlog_forget_after(batchlog *bl, uint64_t seq);
/* At the end of recovery, last is the store's last batch: count retention rises the floor to last - max_batches + 1;
 * and if the files (and owed batches) end before it, with no damage that may hide the rest, the batches in between
 * are missing for good (written while retention was off), and the floor rises past last, so the feed has no hole at
 * its top. Not recorded: computed again at every open. */
void batchlog_recovered(batchlog *bl, uint64_t last);
int batchlog_get(batchlog *bl, uint64_t seq, kv_logged_batch **out);
int batchlog_oldest(batchlog *bl, uint64_t *seq);
int batchlog_prune(batchlog *bl, uint64_t cutoff);
void batchlog_range(batchlog *bl, uint64_t *oldest, uint64_t *newest);
/* Names of the batch log's files (for checkpoints), malloc'ed; free with kv_env_free_names. */
int batchlog_files(batchlog *bl, char ***names, size_t *n);
int batchlog_check(batchlog *bl, kv_problem_fn cb, void *ctx, uint64_t *problems);

/* ---- the store ----------------------------------------------------------------------------------------------------- */

typedef struct writer {
    kv_batch *batch;
    bool sync, done;
    int status;
    char msg[512]; /* with a failed status: its message (kv_errmsg is per thread; the leader sets it in its own) */
    uint64_t seq;
    pthread_cond_t cv;
    atomic_bool woken; /* set by writer_wake (under mu): a writer spinning outside cv sees it without a wake-up */
    struct writer *next;
} writer;

/* Wake a queued writer (caller holds mu): it may be asleep on its cv or spinning on woken. */
static inline void writer_wake(writer *w) {
    atomic_store(&w->woken, true);
    pthread_cond_signal(&w->cv);
}

struct kv_snapshot {
    uint64_t seq;
    struct kv_snapshot *prev, *next;
};

struct kv_stream {
    kv_db *db;
    kv_bytes inline_data;   /* the value while it is below the blob threshold */
    blob_writer *w;         /* its own blob file once it is not */
    uint64_t size;
    bool committed;         /* a batch that puts it reached the log: its file may be referenced, never deleted here */
    blob_extent ext;        /* the record, once ended */
    bool ended;
    bool sync_failed;       /* its file's fsync failed: a retry could succeed without writing what that one lost */
};

typedef struct imm_entry {
    memtable *mem;
    uint64_t log_no;        /* the first log holding its entries */
} imm_entry;

#define DB_MAX_IMM 16

struct kv_db {
    kv_options opt;
    kv_env *env;
    char *dir;
    kv_file *lock;

    pthread_mutex_t mu;
    pthread_cond_t bg_cv;   /* background work done / state changed */
    pthread_cond_t work_cv; /* work for the background threads */

    atomic_bool closed;
    atomic_int active;      /* calls inside the engine */
    atomic_int pins;        /* 1 for the open handle + iterators + streams */
    bool resources_freed;

    /* memtables */
    memtable *mem;
    uint64_t mem_log_no;
    imm_entry imm[DB_MAX_IMM];
    int nimm;

    /* write path */
    writer *writers_head, *writers_tail;
    size_t nwriters;        /* writers queued, the leader included */
    size_t last_sync_group; /* size of the last group that synced */
    int checkpoints;        /* kv_checkpoint calls copying logs: no log file is deleted meanwhile */
    wal_writer *log;
    uint64_t log_no;
    bool log_broken;        /* the last append failed: switch to a new log before the next */
    uint64_t sync_debt;     /* a log fsync failed with batches up to this sequence unsynced (0: none): a later fsync
                               of that log cannot vouch for them (Linux may mark pages whose writeback failed clean),
                               so the next sync that succeeds first flushes them to tables (settle_sync_debt) */
    /* Records that may come back at recovery without being in any memtable (a failed log append that could not be
     * cut back, an insert out of memory): log ghost_log_no (0: none) holds them, and they may name blob files below
     * ghost_next_file. While that log is replayed at recovery (vs->log_number <= ghost_log_no), blob GC deletes none
     * of those files: it cannot see what these records name. Under mu. */
    uint64_t ghost_log_no, ghost_next_file;
    _Atomic uint64_t last_seq;
    pthread_mutex_t blob_mu; /* guards blob_w between the leader (appends) and the flush thread (sync) */
    pthread_mutex_t rescue_mu; /* one db_blob_rescue at a time (taken before the write queue, never under mu) */
    blob_writer *blob_w;    /* the shared blob file for large puts and writes */
    bool blob_dirty;        /* blob_w has unsynced data */
    /* Blob files retired after a failed append that could not be synced then (the cut or the reopen failed):
     * db_sync_blob_file syncs them before anything else, so no sync ever covers a logged batch whose blob bytes are
     * not durable (recovery relies on it). blob_unsynced_lost: more than fit in this list or in blob_lost; every sync
     * then fails until the store is reopened. */
    uint64_t blob_unsynced[8];
    size_t nblob_unsynced;
    bool blob_unsynced_lost;
    /* Blob files whose fsync failed, retired at once, listed until blob GC deletes them. Every sync retries their
     * fsync first, until one succeeds (blob_lost_synced), as it did before they were listed here. But what the
     * failed fsync was to write may never reach the disk, and a later fsync of them cannot say otherwise (Linux may
     * mark pages whose writeback failed clean). So a flush writes copies of the values that use them into its table
     * (db_copy_if_lost), and a sync that vouches for the store (kv_sync, a synced write, a checkpoint, close) fails
     * until db_blob_rescue has copied the newest values that use them to a new blob file (blob_lost_rescued) and
     * set sync_debt, so that the log records naming the lost bytes leave the log for tables first. */
    uint64_t blob_lost[8];
    bool blob_lost_synced[8], blob_lost_rescued[8];
    size_t nblob_lost;
    kv_bytes scratch;       /* leader's record buffer */

    version_set *vs;
    table_cache *tables;
    block_cache *cache;
    blob_store *blobs;
    batchlog *blog;

    /* snapshots (list head dummy) */
    struct kv_snapshot snaps;

    /* files being written, not yet in a version (not to be deleted) */
    uint64_t *pending;
    size_t npending, cap_pending;

    /* background */
    pthread_t flush_thread, compact_thread;
    bool threads_started;
    bool stopping;          /* background threads should exit */
    int bg_error;           /* last background failure (retried) */
    bool flush_running, compact_running;
    /* the compaction thread is in a blob GC pass, compacting nothing until it ends: writers do not wait for it at the
     * level-0 stop trigger (make_room), since a pass waits to lead the write queue that such a writer leads */
    bool bg_gc_running;
    uint64_t bg_gc_fail_run;    /* background GC passes that failed in a row (the compaction thread's; for the log) */
    uint64_t flush_attempts; /* flushes finished, failed ones included (under mu) */
    /* the last background compaction's failure, 0 once one succeeds, and the attempts so far (under mu): writers
     * waiting at the level-0 stop trigger for compactions that keep failing (a disk too full for their output) get
     * this error instead of waiting for ever (make_room) */
    int compact_error;
    uint64_t compact_attempts;
    bool manual_running;
    int manual_waiting;     /* kv_compact_range calls waiting for the running compaction: no background one starts */
    int manual_status;
    uint64_t manual_seqno, manual_done_seqno;

    /* statistics */
    _Atomic uint64_t st_user_bytes, st_wal_bytes, st_flush_bytes, st_compact_bytes, st_compact_read,
        st_blob_bytes, st_stall_us, st_flushes, st_compactions, st_batches, st_groups, st_sync_groups,
        st_gc_failures, st_flush_failures, st_compact_failures;
    _Atomic uint64_t st_enospc; /* writes that failed for a full disk: blob GC then hurries (db_bg.c) */
    _Atomic uint64_t st_removals; /* deletes and truncations written: blob GC follows them (db_bg.c) */
    /* the disk's free space as db_space_for_write last saw it: when (db_now_us), how many bytes written by then (user
     * and blob bytes) make the next look due, and whether it was under the floor kept for deletes and compactions */
    _Atomic uint64_t space_seen_us, space_recheck_at;
    _Atomic bool space_low;
    /* the reserve file (db_space.c): whether it is held and its size; reserve_mu orders its creation and removal
     * (taken after mu, never before it) */
    pthread_mutex_t reserve_mu;
    _Atomic bool reserve_held;
    _Atomic uint64_t reserve_bytes, st_reserve_releases;
    uint64_t reserve_failed_us;  /* reserve_mu: when making it last failed (db_now_us; 0: never) */
    /* blob GC: the bytes the newest values held in blob files at the last pass that measured them, and st_blob_bytes
     * when the last pass took its view; the background's next pass is due once as many were appended (db_bg.c) */
    _Atomic uint64_t gc_live_bytes, gc_mark;
    _Atomic uint64_t st_blob_garbage; /* measured by the last blob GC pass (+1, so that 0 means "not measured") */
    uint64_t st_unsynced_dropped; /* set once by recovery (recover_logs) */
    uint64_t st_unsynced_log_bytes; /* set once by recovery: bytes of the newest log after a page a power loss took */
    uint64_t lost_page_log;         /* set once by recovery: the log whose replay such a page ended (0: none) */
};

/* db.c */
bool db_enter(kv_db *db);
void db_leave(kv_db *db);
void db_unpin(kv_db *db);
/* b == NULL: switch the memtable (if it holds anything) instead of writing. */
int db_write_internal(kv_db *db, kv_batch *b, unsigned flags, uint64_t *seq);
/* fsync the shared blob file if it holds unsynced bytes. Takes blob_mu, which a leader holds while it takes mu:
 * call it without mu, or (kv_sync) with mu only when no leader is active. vouch: the caller tells its own caller
 * that every write so far is durable (kv_sync, synced writes, checkpoints), which is false while a blob file whose
 * fsync failed is listed in blob_lost: the call then fails. Flushes and log switches pass false. */
int db_sync_blob_file(kv_db *db, bool vouch);
/* db_resolve.c: close the shared blob file so that the next large value starts another (caller holds blob_mu). Its
 * bytes are synced first; when that fails it is retired all the same, into blob_lost, and the error returned. */
int db_blob_writer_retire(kv_db *db);
/* A blob file's fsync failed: retire it into blob_lost (caller holds blob_mu). */
void db_blob_sync_failed(kv_db *db, uint64_t no);
/* Whether a blob file's fsync failed and its values are not yet copied elsewhere (db_blob_rescue). */
bool db_blob_lost_pending(kv_db *db);
/* Whether a vouching sync has work to do first: a blob file of blob_lost not rescued yet, one of blob_unsynced, or
 * sync_debt (batches covered by a failed fsync, or naming bytes it may have lost, still in a log): kv_close and
 * kv_checkpoint call kv_sync then. Takes blob_mu, then mu. */
bool db_sync_owed(kv_db *db);
/* The index in blob_lost of a file not rescued yet, or -1 (caller holds blob_mu). */
int db_blob_lost_unrescued(kv_db *db);
/* db_maint.c: copy every newest value that uses a file of blob_lost into a new, synced blob file, mark the file
 * rescued, and set sync_debt so that the next sync moves the log records naming its lost bytes into tables. Call
 * outside the write queue (it writes batches). Fails with KV_ECORRUPT naming the key whose value is unreadable. */
int db_blob_rescue(kv_db *db);
/* A flush's copy of a value that uses a file of lost[0..n) (blob_lost when the flush began): 1 with the new payload
 * in out (its data copied into *w, made on first use: the caller syncs it before the table is installed), 0 when
 * the value uses none of them or cannot be read whole (then left as it is), < 0 on error. */
int db_copy_if_lost(kv_db *db, const uint64_t *lost, size_t n, blob_writer **w, const uint8_t *payload, size_t plen,
                    kv_bytes *out);
/* kv_blob_gc, also telling how many files a pass deleted or copied out (*freed, may be NULL): the background uses it
 * to pace the passes it runs while the disk is full. */
int db_blob_gc(kv_db *db, double min_ratio, uint64_t *freed);
/* db_space.c: KV_OK, or KV_ENOSPC when the disk holding the store is down to its last bytes (db_space_floor) and b
 * (NULL: a stream's bytes) adds data: those bytes are kept for deletes (batch_removes_data), the log, flushes and
 * compactions, which a full disk stopped for good. Looks at the disk once a second, or sooner as writes near the floor.
 * db_space_floor: that floor for a disk of total bytes (compactions stop at half of it: db_bg.c). */
int db_space_for_write(kv_db *db, const kv_batch *b);
uint64_t db_space_floor(const kv_db *db, uint64_t total);
/* The reserve (kv_options.space_reserve). db_reserve_open, in kv_open before anything is written: take the RESERVE
 * file a previous open left, give it back if the disk is nearly full, make it if missing and there is room; remove it
 * when the option is off. db_reserve_release: remove it because the disk is full (a write of the log or a flush
 * failed with KV_ENOSPC): true when that freed space, so the caller may try again at once. db_space_seen: the disk
 * has avail of total bytes free: give the reserve back under a quarter of the floor; true when that freed space. */
void db_reserve_open(kv_db *db);
bool db_reserve_release(kv_db *db);
bool db_space_seen(kv_db *db, uint64_t avail, uint64_t total);

/* db_bg.c: count len bytes appended to blob files (st_blob_bytes), waking the compaction thread when a blob GC pass
 * is due by them. */
void db_note_blob_bytes(kv_db *db, uint64_t len);
/* Switch the memtable and wait until every immutable memtable is flushed. */
int db_flush_memtable(kv_db *db);
void db_delete_obsolete_files(kv_db *db); /* caller holds mu */
/* Parse a store file's name "NNNNNN.ext": its number and a pointer to ext (the whole rest of the name), or false. */
bool db_parse_file_name(const char *name, uint64_t *no, const char **ext);
void pending_add(kv_db *db, uint64_t no);    /* caller holds mu */
void pending_remove(kv_db *db, uint64_t no); /* caller holds mu */
uint64_t db_now_ms(void);
uint64_t db_now_us(void);
uint64_t db_oldest_snapshot_seq(kv_db *db); /* caller holds mu */

/* db_read.c */
/* A referenced reader of table file_no; a missing table file is KV_ECORRUPT. */
int db_open_table(kv_db *db, uint64_t file_no, sst_reader **r);
/* seq DB_SEQ_LATEST: the last sequence at the moment the lookup takes its references (safe without a snapshot). */
#define DB_SEQ_LATEST UINT64_MAX
/* The newest entry for ukey visible at seq: 1 found (type, timestamp, payload copied into *payload), 0 absent
 * (also for a delete: *type tells), < 0 error. */
int db_get_entry(kv_db *db, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type, int64_t *ts,
                 kv_bytes *payload, uint64_t *found_seq);
/* An internal iterator over every entry (all versions, all keyspaces) as of now. It holds references on what it
 * reads; db_raw_iter_free releases them. */
typedef struct db_raw_iter db_raw_iter;
int db_raw_iter_new(kv_db *db, bool fill_cache, db_raw_iter **out, iter **it);
void db_raw_iter_free(kv_db *db, db_raw_iter *r);
uint64_t db_snapshot_seq(kv_db *db, const kv_read_opts *ro);
/* The raw payload (value bytes or encoded blob reference) of the iterator's current entry. */
int db_iter_payload(kv_iter *it, const uint8_t **p, size_t *plen);

/* db_bg.c */
int db_start_background(kv_db *db);
void db_stop_background(kv_db *db);
bool db_compact_run_ends(uint64_t failures, unsigned *successes, bool nothing_due); /* db_bg.c */
int db_flush_one(kv_db *db);               /* flush the oldest immutable memtable (caller holds mu) */
int db_compact_once(kv_db *db, bool *did); /* one compaction if needed (caller holds mu) */
/* At open: run the due level-0 compaction now when its inputs (both levels) are small (caller holds mu; errors are
 * left to the background). */
void db_compact_small_level0(kv_db *db);
/* Manual compaction (caller holds mu and has set manual_running). begin/end are ukeys; empty means unbounded. */
int db_compact_level_down(kv_db *db, int level, const kv_bytes *begin, const kv_bytes *end); /* level into level+1 */
int db_rewrite_level(kv_db *db, int level, const kv_bytes *begin, const kv_bytes *end, uint64_t made_from);

/* db_resolve.c: resolve a batch into its log record (appended to rec); create a blob file listed in the version
 * (its number stays in db->pending until the caller removes it). */
int db_new_blob_file(kv_db *db, blob_writer **out);
/* Close a file db_new_blob_file made (GC's and flushes' copies): it is listed, no longer pending. */
void db_close_new_blob_file(kv_db *db, blob_writer *w);
int db_resolve_batch(kv_db *db, kv_batch *b, uint64_t seq, int64_t ts, kv_bytes *rec);
/* The record of resolved batch b is in the log (or may be): its streams' files are referenced from now on. */
void db_mark_streams_committed(kv_batch *b);

#endif /* KV_DB_IMPL_H */
