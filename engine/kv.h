/*
 * kv.h — the public interface of the kvfs storage engine (an LSM-tree key-value store).
 *
 * This is the engine's only public header. Everything here is thread-safe unless a comment says otherwise.
 *
 * Conventions
 *  - Keys and values are arbitrary bytes. Keys are 1 .. KV_MAX_KEY bytes; values 0 .. 2^63 bytes (64-bit sizes).
 *  - Every function that can fail returns an int status: KV_OK (0) or a negative KV_E* code. kv_strerror() names a
 *    code; kv_errmsg() returns the detail of the last failure on the calling thread (which file, which offset).
 *  - Buffers the engine returns (kv_buf) are malloc'ed and released with kv_buf_free().
 *  - A store has keyspaces 0..255. Keyspace 0 is the user's: every call without a keyspace argument uses it, and
 *    tools show only it. Other keyspaces hold data that lives beside it (kvfs keeps file attributes in keyspace 1).
 *  - The engine never calls exit() or abort() on bad input or on a corrupt file: it returns KV_ECORRUPT.
 */
#ifndef KV_H
#define KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KV_VERSION_STRING "0.1.0"
#define KV_MAX_KEY (64u * 1024u)  /* longest key, bytes */
#define KV_MAX_VALUE (1ull << 63) /* longest value, bytes (write_at and truncate beyond it are KV_EINVAL) */
#define KV_MAX_LEVELS 7

/* Status codes. */
enum {
    KV_OK = 0,
    KV_ENOTFOUND = -1,  /* key absent (also: no such store, when create_if_missing is false; a missing parent
                         * directory of the store, when it is true) */
    KV_ECORRUPT = -2,   /* a checksum, magic number or structure check failed; kv_errmsg() names file+offset */
    KV_EIO = -3,        /* the operating system reported an I/O error */
    KV_EINVAL = -4,     /* bad argument (empty or oversized key, NULL pointer, bad option) */
    KV_ENOSPC = -5,     /* the disk is full; the store stays consistent and writes work again once space is freed */
    KV_ECLOSED = -6,    /* the handle was closed */
    KV_ENOMEM = -7,     /* out of memory */
    KV_EEVICTED = -8,   /* the batch log no longer holds that sequence number */
    KV_EAMBIGUOUS = -9, /* more than one key has that prefix */
    KV_EBUSY = -10,     /* the store is locked by another process */
    KV_EEXIST = -11,    /* the store exists and error_if_exists was set; a checkpoint's dest exists */
    KV_EREADONLY = -12, /* a write on a store opened read-only */
    KV_EINTERRUPTED = -13, /* a long operation stopped because its progress callback asked it to */
    KV_EPERM = -14,     /* the operating system refused access to a file or directory (EACCES, EPERM) */
};

const char *kv_strerror(int code);
/* The detail of the last error returned to this thread, e.g. "000012.sst: bad block checksum at offset 8192".
 * Never NULL; "" when there is none. Valid until the thread's next engine call. */
const char *kv_errmsg(void);

/* ---- Options ------------------------------------------------------------------------------------------------- */

struct kv_env; /* the file-system environment (engine/env.h); NULL means the real POSIX one */

/* What the engine says on its own, about work no caller waits for (kv_options.log). */
enum { KV_LOG_ERROR = 0, KV_LOG_NOTICE = 1 };
/* Called from the engine's background threads, without the engine's locks: it may block (syslog on a busy socket)
 * without holding up readers or writers, but it must not call into the engine (kv_close waits for these threads).
 * msg is one line without a newline, valid for the call only. */
typedef void (*kv_log_fn)(void *ctx, int level, const char *msg);

typedef struct kv_options {
    bool create_if_missing;      /* default true */
    bool error_if_exists;        /* default false */
    bool read_only;              /* open without writing anything; writes return KV_EREADONLY */
    size_t memtable_bytes;       /* size at which the memtable is frozen and flushed; default 8 MiB */
    int max_immutable;           /* frozen memtables allowed to wait for flush before writers wait; default 2 */
    size_t block_bytes;          /* target uncompressed data block size; default 4096 */
    int block_restart_interval;  /* keys between restart points in a data block; default 8 (a lookup inflates one) */
    bool compression;            /* deflate-compress data blocks when it saves >= 1/8; default true */
    int bloom_bits_per_key;      /* 0 disables bloom filters; default 10 (about 1% false positives) */
    size_t block_cache_bytes;    /* default 32 MiB */
    int max_open_tables;         /* table files kept open; default 256 */
    uint64_t table_bytes;        /* target SSTable size; default 4 MiB */
    int l0_compaction_trigger;   /* level-0 files that start a compaction; default 4 */
    int l0_slowdown_trigger;     /* level-0 files at which each write is delayed 1 ms; default 12 */
    int l0_stop_trigger;         /* level-0 files at which writes wait; default 20 */
    uint64_t level1_bytes;       /* size limit of level 1; each deeper level is level_multiplier times larger;
                                    default 32 MiB */
    int level_multiplier;        /* default 10 */
    uint64_t blob_threshold;     /* values of at least this many bytes live in blob files; default 64 KiB */
    uint64_t blob_file_bytes;    /* a blob file is closed and a new one started past this size; default 256 MiB */
    double blob_gc_ratio;        /* background GC rewrites a blob file whose garbage share exceeds this; default 0.5 */
    uint64_t batch_log_max_batches; /* batch log retention by count; 0 with batch_log_max_bytes 0 = log off */
    uint64_t batch_log_max_bytes;   /* batch log retention by bytes; 0 = no byte limit */
    bool background_threads;     /* default true; false runs flush/compaction inline (deterministic tests) */
    struct kv_env *env;          /* default NULL = POSIX */
    int blob_page_extents;       /* a blob value fragmented into more extents than this keeps its extent list in
                                    pages of at most this many (docs/format.md, "Paged reference"); default 128,
                                    4 .. 1024 */
    bool space_reserve;          /* keep the disk's last bytes (a memtable and 1 MiB, at most 1/8 of the disk) in a
                                    file, RESERVE, given back when the disk is full all the same, so that deletes,
                                    flushes and compactions go on after another process took the rest (docs/design.md,
                                    "A full disk"); default false. A writable open without it removes a RESERVE. */
    kv_log_fn log;               /* told when background flushes, compactions or blob GC start to fail (once per run
                                    of failures, with the error) and when they work again (for compactions: one
                                    leaves nothing more to compact, or three in a row work); default NULL: silent
                                    (kv_get_stats has the same facts) */
    void *log_ctx;               /* passed to log */
} kv_options;

/* Fill *o with the defaults above. Always call it before changing fields. */
void kv_options_init(kv_options *o);

/* ---- Handles and basic operations ---------------------------------------------------------------------------- */

typedef struct kv_db kv_db;
typedef struct kv_snapshot kv_snapshot;
typedef struct kv_batch kv_batch;
typedef struct kv_iter kv_iter;
typedef struct kv_stream kv_stream;

typedef struct kv_buf {
    void *data;    /* malloc'ed (NULL when len is 0 or after kv_buf_free) */
    uint64_t len;
} kv_buf;
void kv_buf_free(kv_buf *b);

/* Write flags. */
#define KV_SYNC 1u /* the call returns once the write is on disk (fsync); without it, once it is in the OS */

/* Read options: which snapshot (NULL = latest) and which keyspace. Pass NULL for {latest, keyspace 0}.
 * Iterators and scans can be bounded: they never visit a key below lower_bound (inclusive) or at or above
 * upper_bound (exclusive); a length of 0 means no bound. Bounds also stop the iterator from stepping over deleted
 * entries outside them, so a bounded scan costs what its range holds. Point lookups ignore bounds. */
typedef struct kv_read_opts {
    const kv_snapshot *snapshot;
    uint8_t keyspace;
    const void *lower_bound;
    size_t lower_len;
    const void *upper_bound;
    size_t upper_len;
} kv_read_opts;

/* Open (or create) the store in directory dir. opts may be NULL for defaults. Takes a lock on the directory: an
 * exclusive one, so that a second open of the same store, in this process or another, returns KV_EBUSY; with
 * read_only a shared one: read-only handles open the store together, and only an open for writing returns
 * KV_EBUSY while one is open (or, while a writer has it or waits for it, they do: kv_intent_take). */
int kv_open(const char *dir, const kv_options *opts, kv_db **out);

/* Writer precedence. Read-only handles that keep overlapping would keep the store's shared lock forever, and a writer
 * polling kv_open would never find it free. So one that will open dir for writing and found it in use (kv_open
 * returned KV_EBUSY) takes the intent before it tries again, and releases it once it has the store or gives up:
 * while it holds the intent, read-only opens return KV_EBUSY as if a writer had the store (those already open go on),
 * so the store comes free once they close; opens for writing are not affected. One process at a time holds the
 * intent: KV_EBUSY while another waiting writer has it (try again at the next poll). opts gives the environment
 * (may be NULL). KV_OK with *out NULL when the environment has no intent (env.h: lock_intent): nothing to hold. A
 * process that holds it and dies releases it. Readers that keep opening while writers keep waiting wait in turn: as
 * a read-write lock that prefers writers, readers may wait as long as writers keep coming. */
typedef struct kv_intent kv_intent;
int kv_intent_take(const char *dir, const kv_options *opts, kv_intent **out);
void kv_intent_release(kv_intent *in); /* NULL is allowed */

/* Close: flushes what is pending to the write-ahead log, stops background work, releases files and memory.
 * Waits for threads still inside the engine to leave it. The handle stays valid (a few bytes): later calls on it
 * return KV_ECLOSED. Release it with kv_free(). Closing twice returns KV_ECLOSED. */
int kv_close(kv_db *db);
/* Free a handle. Closes it first if it is still open. No call may use it afterwards. Iterators, streams and
 * snapshots of the store must be freed or released before it (after kv_close they still work: iterators keep
 * reading what they were opened on, and the store's memory and files are released when the last one goes). */
void kv_free(kv_db *db);

/* Metadata of one entry without reading its value. */
typedef struct kv_info {
    uint64_t size;         /* value length in bytes */
    int64_t timestamp_ms;  /* wall-clock time of the write, milliseconds since the epoch */
    uint64_t sequence;     /* sequence number of the batch that wrote it */
    bool external;         /* the value lives in a blob file */
    uint64_t stored;       /* bytes of it that are stored: size less its holes (parts never written, left by
                            * kv_batch_write_at past the end or kv_batch_truncate up, which read as zeros); size for
                            * a value in the tree, and for one whose blob reference is paged (its holes are listed in
                            * pages, which stat does not read) */
} kv_info;

int kv_put(kv_db *db, const void *key, size_t klen, const void *val, uint64_t vlen, unsigned flags);
int kv_delete(kv_db *db, const void *key, size_t klen, unsigned flags);
/* KV_OK with the value in *out, or KV_ENOTFOUND. On any failure *out is left empty (kv_buf_free on it is harmless).
 * For values too large to hold, use kv_read_range(). */
int kv_get(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, kv_buf *out);
/* kv_get that also fills *info (size, write time, sequence) from the same lookup. */
int kv_get_with_info(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, kv_buf *out, kv_info *info);
/* 1 when present, 0 when absent, negative on error. */
int kv_contains(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen);

typedef struct kv_slice {
    const void *data;
    size_t len;
} kv_slice;
/* Look up n keys at one snapshot. vals[i] gets the value, status[i] KV_OK or KV_ENOTFOUND (or an error).
 * Returns KV_OK unless the call itself failed. */
int kv_get_many(kv_db *db, const kv_read_opts *ro, size_t n, const kv_slice *keys, kv_buf *vals, int *status);

int kv_stat(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, kv_info *info);

/* For sparse-file tools (lseek's SEEK_DATA and SEEK_HOLE): into *at the first offset >= off of the value that is
 * stored (hole false) or in a hole (hole true: the holes left by kv_batch_write_at past the end, kv_batch_truncate up
 * and kv_batch_zero_range in a value kept in blob files; a value kept in the tree has none). The end of the value
 * counts as a hole, so *at is the value's size when nothing is found after off, or when off is at or past the end.
 * KV_ENOTFOUND for an absent key. A fragmented value (paged reference) reads its pages from off's on. */
int kv_seek_data(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, uint64_t off, bool hole,
                 uint64_t *at);
/* Read len bytes of a value from offset off into buf; *nread gets the count (short at the end of the value). */
int kv_read_range(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, uint64_t off, void *buf,
                  size_t len, size_t *nread);

/* ---- Write batches (atomic: all or nothing) ------------------------------------------------------------------ */

int kv_batch_new(kv_batch **out);
void kv_batch_free(kv_batch *b);
void kv_batch_clear(kv_batch *b);
size_t kv_batch_count(const kv_batch *b);
int kv_batch_put(kv_batch *b, const void *key, size_t klen, const void *val, uint64_t vlen);
int kv_batch_delete(kv_batch *b, const void *key, size_t klen);
int kv_batch_put_ks(kv_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, uint64_t vlen);
int kv_batch_delete_ks(kv_batch *b, uint8_t ks, const void *key, size_t klen);
/* Move the value of (from_ks, from) to (to_ks, to) without copying a large value's bytes; the source is deleted.
 * If the source is absent when the batch commits, kv_write fails with KV_ENOTFOUND and nothing is applied. */
int kv_batch_move(kv_batch *b, uint8_t from_ks, const void *from, size_t flen, uint8_t to_ks, const void *to,
                  size_t tlen);
/* Replace bytes [off, off+len) of the value with data, extending it if needed (a gap reads as zeros); an absent
 * key starts as an empty value. Only the written bytes are stored anew, even in a large value. */
int kv_batch_write_at(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, const void *data,
                      size_t len);
/* kv_batch_put_ks and kv_batch_write_at without the copy: the batch keeps a pointer to the value's bytes, which the
 * caller keeps valid and unchanged until the batch is cleared or freed (kv_write reads them while it runs). For
 * large values written once, such as a filesystem's buffered writes: the bytes then go from the caller's buffer
 * to the log or a blob file without a copy in between. */
int kv_batch_put_nocopy(kv_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, uint64_t vlen);
int kv_batch_write_at_nocopy(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, const void *data,
                             size_t len);
/* Set the value's length: cut it, or extend it with zeros (a hole, costing no space). Absent key: created. */
int kv_batch_truncate(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t size);
/* Make bytes [off, off+len) of the value read as zeros, extending it like kv_batch_write_at when the range reaches
 * past its end (absent key: created). In a value kept in a blob file the range becomes a hole: its bytes are no
 * longer referenced, and blob garbage collection gives their space back (kv_info.stored drops at once). A filesystem
 * punches holes with it (fallocate's PUNCH_HOLE and ZERO_RANGE). len 0 changes nothing (an absent key is created
 * empty, as by kv_batch_write_at). */
int kv_batch_zero_range(kv_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, uint64_t len);
/* Copy bytes [from_off, from_off+len) of the value of (from_ks, from) over bytes [to_off, to_off+len) of the value of
 * (to_ks, to), extending it like kv_batch_write_at (an absent destination starts empty). The range is cut at the
 * source's end (nothing is copied from at or past it). Bytes the source keeps in blob files are not copied when the
 * copy is at least blob_threshold bytes: the destination's reference names the same records, holes stay holes, and
 * blob garbage collection keeps the records while either value uses them (a later change of one leaves the other
 * as it is). A filesystem's copy_file_range. An absent source fails the batch with KV_ENOTFOUND. */
int kv_batch_copy_range(kv_batch *b, uint8_t from_ks, const void *from, size_t flen, uint64_t from_off, uint8_t to_ks,
                        const void *to, size_t tlen, uint64_t to_off, uint64_t len);
/* Put the value written to stream s (see kv_stream_new). The stream stays owned by the caller. Committing the
 * batch syncs the stream's blob file (one fsync per stream), even without KV_SYNC. */
int kv_batch_put_stream(kv_batch *b, uint8_t ks, const void *key, size_t klen, kv_stream *s);

/* Apply a batch atomically. It gets the next sequence number (returned in *seq, which may be NULL). */
int kv_write(kv_db *db, kv_batch *b, unsigned flags, uint64_t *seq);
/* Make everything written so far durable (fsync). After an fsync failed (KV_EIO), a later success still means it:
 * the writes the failed fsync covered are first written to tables or copied to new blob files (docs/design.md). */
int kv_sync(kv_db *db);
/* The sequence number of the last visible batch (0 for a new store). */
uint64_t kv_current_sequence(kv_db *db);

/* ---- Streams: write a large value in pieces without holding it in memory ------------------------------------- */

int kv_stream_new(kv_db *db, kv_stream **out);
int kv_stream_append(kv_stream *s, const void *data, size_t len);
uint64_t kv_stream_size(const kv_stream *s);
/* Free a stream; bytes of a stream never put become garbage that blob GC reclaims. */
void kv_stream_free(kv_stream *s);

/* ---- Snapshots and iterators --------------------------------------------------------------------------------- */

int kv_snapshot_new(kv_db *db, kv_snapshot **out);
/* Release s, which must come from db. A NULL db or s does nothing (the snapshot stays on its store's list, without a
 * store's lock it cannot be taken off safely); kv_free() frees every snapshot of its store not released. */
void kv_snapshot_release(kv_db *db, kv_snapshot *s);
uint64_t kv_snapshot_sequence(const kv_snapshot *s);

/* An iterator over one keyspace at one snapshot (ro may be NULL). Not thread-safe: one thread at a time. The calls
 * that return nothing take a valid iterator (not NULL; the others take NULL as an iterator that is not valid), and a
 * key may be NULL only with klen 0; a key longer than KV_MAX_KEY is compared as it is (no key is that long). */
int kv_iter_new(kv_db *db, const kv_read_opts *ro, kv_iter **out);
void kv_iter_free(kv_iter *it);
void kv_iter_seek_first(kv_iter *it);
void kv_iter_seek_last(kv_iter *it);
void kv_iter_seek(kv_iter *it, const void *key, size_t klen);          /* first key >= key */
void kv_iter_seek_for_prev(kv_iter *it, const void *key, size_t klen); /* last key <= key */
bool kv_iter_valid(const kv_iter *it);
void kv_iter_next(kv_iter *it);
void kv_iter_prev(kv_iter *it);
const void *kv_iter_key(const kv_iter *it, size_t *klen);
/* The current value. Pointer valid until the iterator moves. A blob value is read in full: check the size with
 * kv_iter_info() and use kv_read_range() for values too large to hold. */
int kv_iter_value(kv_iter *it, const void **val, uint64_t *vlen);
int kv_iter_info(kv_iter *it, kv_info *info);
/* KV_OK, or the error that made the iterator invalid. */
int kv_iter_status(const kv_iter *it);

/* Streaming range scan: cb is called for each key in [start, end] (end inclusive; elen 0 = unbounded; slen 0 =
 * from the first key), ascending if forward, else descending from end down to start, at most limit keys
 * (0 = no limit). Stops early when cb returns non-zero. Memory use does not depend on the number of keys. */
typedef int (*kv_scan_fn)(void *ctx, const void *key, size_t klen, const void *val, uint64_t vlen);
int kv_range_scan(kv_db *db, const kv_read_opts *ro, const void *start, size_t slen, const void *end, size_t elen,
                  uint64_t limit, bool forward, kv_scan_fn cb, void *ctx);
int kv_prefix_scan(kv_db *db, const kv_read_opts *ro, const void *prefix, size_t plen, uint64_t limit,
                   bool forward, kv_scan_fn cb, void *ctx);

/* ---- Prefix resolution --------------------------------------------------------------------------------------- */

/* The one key starting with prefix (in *key): KV_OK; KV_ENOTFOUND; or KV_EAMBIGUOUS, with the first two
 * candidates in *key and *second (second may be NULL). Reads at most two keys. */
int kv_resolve_prefix(kv_db *db, const kv_read_opts *ro, const void *prefix, size_t plen, kv_buf *key,
                      kv_buf *second);
/* The length of the shortest prefix of key that no other key shares. The key must exist (else KV_ENOTFOUND).
 * When key is itself a prefix of another key no such prefix exists: *plen is klen and the result KV_EAMBIGUOUS. */
int kv_shortest_unique_prefix(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, size_t *plen);

/* ---- Batch log (change feed) --------------------------------------------------------------------------------- */

enum { KV_OP_PUT = 1, KV_OP_DELETE = 2 };
typedef struct kv_logged_op {
    int type;            /* KV_OP_PUT or KV_OP_DELETE */
    uint8_t keyspace;
    void *key;
    size_t klen;
    void *val;           /* NULL for deletes and for values kept in blob files (external) */
    uint64_t vlen;       /* the value's length (also for external values) */
    bool external;
} kv_logged_op;
typedef struct kv_logged_batch {
    uint64_t sequence;
    int64_t timestamp_ms;
    size_t nops;
    kv_logged_op *ops;
} kv_logged_batch;

/* The batch committed with sequence seq: KV_OK, KV_EEVICTED (pruned, or the log is off), KV_ENOTFOUND (seq is
 * beyond the current sequence), or KV_ECORRUPT (the batch log is damaged where the batch would be). */
int kv_get_batch(kv_db *db, uint64_t seq, kv_logged_batch **out);
void kv_logged_batch_free(kv_logged_batch *b);
/* The oldest sequence still retained; KV_ENOTFOUND when the log is empty or off. */
int kv_oldest_retained_batch(kv_db *db, uint64_t *seq);
/* Drop every batch with a sequence number below cutoff (at most the next sequence: batches not yet committed are
 * never pruned). A prune that raises the floor first makes the batches below it durable (kv_sync). */
int kv_prune_batch_log(kv_db *db, uint64_t cutoff);

/* ---- Maintenance: check, compact, checkpoint, statistics ----------------------------------------------------- */

/* Progress: done out of total units (bytes); return non-zero to stop the operation (KV_EINTERRUPTED). */
typedef int (*kv_progress_fn)(void *ctx, uint64_t done, uint64_t total);
/* One problem found by kv_check: the file (name within the store directory), the offset, a description. */
typedef void (*kv_problem_fn)(void *ctx, const char *file, uint64_t offset, const char *what);

/* Read every file of the store and verify every checksum and the order of keys. *problems gets the count of
 * problems reported through problem_cb (which may be NULL). Returns KV_OK when none, KV_ECORRUPT otherwise. */
int kv_check(kv_db *db, kv_problem_fn problem_cb, kv_progress_fn progress_cb, void *ctx, uint64_t *problems);
/* Compact the user keys in [start, end] of keyspace 0 (NULL/0 = unbounded): merge every level into the deepest one
 * holding files (level 1 if only level 0 does), dropping versions and tombstones no snapshot needs. That level's
 * tables with nothing to drop are not rewritten. progress_cb gets (step, steps), one step per level. */
int kv_compact_range(kv_db *db, const void *start, size_t slen, const void *end, size_t elen,
                     kv_progress_fn progress_cb, void *ctx);
/* Reclaim blob-file space whose values were overwritten or deleted: files no value uses go, files whose garbage
 * share is above min_ratio (0 .. 1, else KV_EINVAL) have their live values copied out. Old versions that no snapshot sees do not keep a file;
 * the shared file that appends go to is closed first when it holds at least 1 MiB of garbage, above min_ratio. The
 * background runs it after a minute without compactions, once large values as big as the live ones (at least 64 MiB)
 * were written since its last pass, 3 s after the last write once something was deleted or truncated (at most once
 * per 10 s, or per ten times the last pass's duration), and soon after writes once a write failed with KV_ENOSPC. */
int kv_blob_gc(kv_db *db, double min_ratio);
/* A consistent copy of the store in dest (created; must not exist: KV_EEXIST, also when another process makes it
 * while the checkpoint begins, whose directory is then left alone), openable as a store. Immutable files are
 * hard-linked when dest is on the same file system, copied otherwise. A checkpoint that fails (or is interrupted)
 * removes dest again. progress_cb runs while the copy holds the store's write queue: it may read the store, but a
 * write, kv_sync or kv_prune_batch_log from it waits for ever. */
int kv_checkpoint(kv_db *db, const char *dest, kv_progress_fn progress_cb, void *ctx);

typedef struct kv_stats {
    uint64_t level_files[KV_MAX_LEVELS];
    uint64_t level_bytes[KV_MAX_LEVELS];
    uint64_t memtable_bytes;      /* active + frozen memtables */
    uint64_t immutable_memtables;
    uint64_t estimated_keys;      /* entries in tables and memtables (versions and tombstones included) */
    uint64_t cache_hits, cache_misses;
    uint64_t cache_bytes, cache_capacity;
    uint64_t user_bytes_written;  /* keys + values handed to kv_write (all byte counts: since the open) */
    uint64_t wal_bytes_written;
    uint64_t flush_bytes_written; /* tables of flushes (not those recovery makes at the open from older writes) */
    uint64_t compaction_bytes_written;
    uint64_t compaction_bytes_read;
    uint64_t blob_bytes_written;
    uint64_t blob_files, blob_bytes;
    /* Bytes of blob files that no newest value uses, as the last blob GC pass of this handle measured them (about:
     * chunk headers count as garbage); blob_garbage_known is false before the first pass. */
    uint64_t blob_garbage_bytes;
    bool blob_garbage_known;
    double write_amplification;   /* (wal + flush + compaction + blob bytes) / user bytes */
    uint64_t stall_micros;        /* time writers spent slowed down or waiting for flush/compaction */
    uint64_t flushes, compactions;
    uint64_t write_batches, write_groups; /* batches committed, and the log writes (groups) that carried them */
    uint64_t synced_groups;       /* groups that ended in an fsync */
    uint64_t last_sequence;
    uint64_t batch_log_oldest, batch_log_newest; /* 0, 0 when the log is empty or off */
    uint64_t disk_bytes;          /* all files of the store */
    uint64_t unsynced_batches_dropped; /* at the last open: logged batches whose blob bytes a power loss took
                                        * (never synced, so the batch was not durable); dropped with every later
                                        * batch, as a torn log tail is (docs/design.md, "Recovery") */
    uint64_t unsynced_log_bytes_dropped; /* at the last open: bytes of the newest write-ahead log not replayed
                                          * because a power loss took a page of them (unsynced writes that reached
                                          * the disk out of order): a torn tail (docs/format.md, "Reading") */
    uint64_t blob_gc_failures;    /* background blob GC runs since open that ended in an error: KV_ECORRUPT means
                                   * damage, which kv_check names, and GC stops until it is gone (docs/design.md) */
    uint64_t reserve_bytes;       /* held in RESERVE now (kv_options.space_reserve; not in disk_bytes) */
    uint64_t reserve_releases;    /* times since open the reserve was given back because the disk was full */
    uint64_t flush_failures;      /* background flushes since open that failed (each is retried). With
                                   * background_threads off a flush runs inside the write that needs it, which
                                   * returns its error: this and flush_error then stay 0 */
    uint64_t compaction_failures; /* compactions since open that failed (retried with a growing pause, up to 5 s) */
    int flush_error;              /* the last flush's error: KV_OK when none failed or one succeeded since */
    int compaction_error;         /* the last compaction's, likewise (a successful kv_compact_range counts: the
                                   * background retries at once after it, and sets it again if it still fails) */
} kv_stats;
int kv_get_stats(kv_db *db, kv_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* KV_H */
