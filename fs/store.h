/*
 * store.h — the one narrow interface through which the filesystem (fs/) reaches a key-value store.
 *
 * The filesystem never includes the engine's header: it sees a store as keyspaces of ordered byte-string keys with
 * byte-string values, and these operations (the shape of a "StoreEngine"):
 *   - write:    apply a batch of puts, deletes, write_at, truncate and move atomically (all or nothing);
 *   - get:      one value (small values: attribute records, symlink targets), optionally with its metadata;
 *   - stat:     a value's size and the wall-clock time of its last write, without reading it;
 *   - read:     a byte range of a value (file contents of any size);
 *   - scan:     keys of a range [start, end) in either direction, with a limit, through a callback;
 *   - sequence: the number of the last applied batch; sync: make every applied batch durable; statfs.
 * Implementations: store_kv.c (the kvfs engine, through kv.h only) and store_mem.c (in memory, for tests). A
 * distributed backend (etcd: txn = batch, range = scan, revision = sequence) fits the same table of operations.
 *
 * Invariants (every backend keeps them)
 *  - Every function returns 0 or a negative errno value (-ENOENT, -EIO, -ENOSPC, -ENOMEM, -EROFS, -EINVAL ...);
 *    the filesystem passes them on to the kernel unchanged.
 *  - A batch's operations are applied in order, each seeing the effect of the ones before it, and the batch
 *    becomes visible to readers all at once. A move whose source is absent fails the whole batch with -ENOENT.
 *  - Keys are 1 .. STORE_MAX_KEY bytes. Scans never return a value unless asked (file contents may be huge).
 *  - A longer key names nothing (the filesystem derives record keys from paths, a byte or two longer than the path's
 *    key): reading it finds nothing (-ENOENT), deleting it does nothing, a scan bounded by it returns what a store of
 *    such keys would, and only writing it fails (-ENAMETOOLONG). The wrappers below keep this for every backend.
 *  - All operations are thread-safe.
 */
#ifndef KVFS_STORE_H
#define KVFS_STORE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/statvfs.h>

#define STORE_MAX_KEY (64u * 1024u)

/* Keyspaces used by the filesystem. Keyspace 0 is the user's data: path -> file content, nothing else. */
enum {
    STORE_KS_DATA = 0,   /* key = path relative to the mount's root; value = the file's bytes */
    STORE_KS_META = 1,   /* attributes, explicit directories, extended attributes (see fs_meta.h) */
    STORE_KS_ORPHAN = 2, /* contents of files unlinked while still open; emptied at every mount */
};

/* Metadata of one value. */
typedef struct store_info {
    uint64_t size;        /* value length in bytes */
    int64_t write_ms;     /* wall-clock time of the write that produced it, ms since the epoch */
    uint64_t stored;      /* bytes of it the store keeps: size less the holes it knows of (a sparse file's) */
} store_info;

/* A value returned by get: malloc'ed, released with store_buf_free. */
typedef struct store_buf {
    void *data;
    size_t len;
} store_buf;
void store_buf_free(store_buf *b);

/* ---- Batches: built by the filesystem, applied by a backend ------------------------------------------------- */

enum store_op_kind { STORE_PUT, STORE_DELETE, STORE_WRITE_AT, STORE_TRUNCATE, STORE_ZERO_RANGE, STORE_MOVE,
                     STORE_COPY_RANGE };

typedef struct store_op {
    enum store_op_kind kind;
    uint8_t ks, to_ks;      /* to_ks: STORE_MOVE's destination keyspace */
    size_t key_off, klen;   /* offsets into the batch's byte buffer */
    size_t to_off, tlen;    /* STORE_MOVE and STORE_COPY_RANGE destination key */
    size_t data_off, dlen;  /* STORE_PUT value, STORE_WRITE_AT bytes (in bytes, unless ext is set) */
    const uint8_t *ext;     /* made by a *_nocopy builder: the caller's bytes */
    uint64_t off;           /* STORE_WRITE_AT, STORE_ZERO_RANGE offset, STORE_TRUNCATE size, STORE_COPY_RANGE source's */
    uint64_t len;           /* STORE_ZERO_RANGE and STORE_COPY_RANGE length */
    uint64_t to_pos;        /* STORE_COPY_RANGE destination offset */
} store_op;

typedef struct store_batch {
    store_op *ops;
    size_t n, cap;
    uint8_t *bytes;         /* every key and value of the batch, copied (but the values of *_nocopy builders) */
    size_t blen, bcap;
    int error;              /* first allocation failure while building: store_write refuses the batch */
} store_batch;

void store_batch_init(store_batch *b);
void store_batch_clear(store_batch *b);
void store_batch_free(store_batch *b);
/* Builders never fail loudly: on allocation failure they set b->error (-ENOMEM) and writing the batch fails. */
void store_batch_put(store_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, size_t vlen);
void store_batch_delete(store_batch *b, uint8_t ks, const void *key, size_t klen);
/* Replace bytes [off, off+len) of the value, extending it (a gap reads as zeros); an absent key starts empty. */
void store_batch_write_at(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, const void *data,
                          size_t len);
/* The same without copying the bytes: the caller keeps them valid and unchanged until the batch is written
 * (store_write returned) or cleared. For large buffered file data, which the engine then writes straight from the
 * caller's buffer. */
void store_batch_put_nocopy(store_batch *b, uint8_t ks, const void *key, size_t klen, const void *val, size_t vlen);
void store_batch_write_at_nocopy(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off,
                                 const void *data, size_t len);
/* Set the value's length (cut, or extend with a hole of zeros); an absent key is created. */
void store_batch_truncate(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t size);
/* Make bytes [off, off+len) of the value read as zeros, extending it when the range reaches past its end (an absent
 * key is created). A backend that keeps holes keeps the range as one: its bytes take no space any more. */
void store_batch_zero_range(store_batch *b, uint8_t ks, const void *key, size_t klen, uint64_t off, uint64_t len);
/* Copy bytes [from_off, from_off+len) of one value over bytes [to_off, to_off+len) of another (or the same), cut at
 * the source's end; the destination is extended as by a write. A backend that keeps large values in shared records
 * names the same records instead of copying the bytes. -ENOENT (the whole batch fails) when the source is absent. */
void store_batch_copy_range(store_batch *b, uint8_t from_ks, const void *from, size_t flen, uint64_t from_off,
                            uint8_t to_ks, const void *to, size_t tlen, uint64_t to_off, uint64_t len);
/* Move a value to another key without copying its bytes; the source is deleted, the destination replaced. */
void store_batch_move(store_batch *b, uint8_t from_ks, const void *from, size_t flen, uint8_t to_ks, const void *to,
                      size_t tlen);
static inline const uint8_t *store_op_key(const store_batch *b, const store_op *op) { return b->bytes + op->key_off; }
static inline const uint8_t *store_op_to(const store_batch *b, const store_op *op) { return b->bytes + op->to_off; }
static inline const uint8_t *store_op_data(const store_batch *b, const store_op *op) {
    return op->ext ? op->ext : b->bytes + op->data_off;
}

/* ---- The store --------------------------------------------------------------------------------------------------- */

/* Scan callback: key, and its info. val is NULL unless the scan asked for values. Return non-zero to stop. */
typedef int (*store_scan_fn)(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val,
                             size_t vlen);

typedef struct store store;

typedef struct store_ops {
    int (*write)(store *s, const store_batch *b, bool sync);
    /* -ENOENT when absent. info may be NULL. */
    int (*get)(store *s, uint8_t ks, const void *key, size_t klen, store_buf *out, store_info *info);
    int (*stat)(store *s, uint8_t ks, const void *key, size_t klen, store_info *info);
    /* Read up to len bytes at off; *nread short only at the end of the value. -ENOENT when absent. */
    int (*read)(store *s, uint8_t ks, const void *key, size_t klen, uint64_t off, void *buf, size_t len,
                size_t *nread);
    /* Keys k with start <= k < end (elen 0: no upper bound), ascending if forward, else descending from the last
     * key below end; at most limit keys (0: no limit). with_values asks for values (small keyspaces only). */
    int (*scan)(store *s, uint8_t ks, const void *start, size_t slen, const void *end, size_t elen, uint64_t limit,
                bool forward, bool with_values, store_scan_fn cb, void *ctx);
    /* lseek's SEEK_DATA (hole false) or SEEK_HOLE from off: into *at the first offset >= off that holds data, or
     * that lies in a hole; the value's size when none is left (the end counts as a hole). NULL in a backend that
     * keeps no holes. -ENOENT when absent. */
    int (*seek_data)(store *s, uint8_t ks, const void *key, size_t klen, uint64_t off, bool hole, uint64_t *at);
    int (*sync)(store *s);
    uint64_t (*sequence)(store *s);
    /* Space of the medium holding the store. */
    int (*statfs)(store *s, struct statvfs *out);
    /* Release the store object (for store_kv: not the engine handle, which its opener closes). */
    void (*destroy)(store *s);
} store_ops;

struct store {
    const store_ops *ops;
};

/* Convenience wrappers, so callers read as sentences. */
static inline int store_write(store *s, const store_batch *b, bool sync) { return s->ops->write(s, b, sync); }
static inline int store_get(store *s, uint8_t ks, const void *k, size_t kl, store_buf *out, store_info *info) {
    return kl > STORE_MAX_KEY ? -ENOENT : s->ops->get(s, ks, k, kl, out, info);
}
static inline int store_stat(store *s, uint8_t ks, const void *k, size_t kl, store_info *info) {
    return kl > STORE_MAX_KEY ? -ENOENT : s->ops->stat(s, ks, k, kl, info);
}
static inline int store_read(store *s, uint8_t ks, const void *k, size_t kl, uint64_t off, void *buf, size_t len,
                             size_t *nread) {
    if (kl > STORE_MAX_KEY) return -ENOENT;
    return s->ops->read(s, ks, k, kl, off, buf, len, nread);
}
/* Keys in [start, end) (an empty end: no bound), in order or (forward false) reverse order, at most limit (0: no
 * limit). Bounds longer than STORE_MAX_KEY are allowed (store.c). */
int store_scan(store *s, uint8_t ks, const void *start, size_t slen, const void *end, size_t elen, uint64_t limit,
               bool forward, bool with_values, store_scan_fn cb, void *ctx);
/* seek_data for a value the caller knows to be size bytes long, off < size: never past size; a backend that keeps
 * no holes has data throughout. */
static inline int store_seek_data(store *s, uint8_t ks, const void *k, size_t kl, uint64_t size, uint64_t off,
                                  bool hole, uint64_t *at) {
    if (kl > STORE_MAX_KEY) return -ENOENT;
    *at = hole ? size : off;
    int rc = s->ops->seek_data ? s->ops->seek_data(s, ks, k, kl, off, hole, at) : 0;
    if (!rc && *at > size) *at = size;
    return rc;
}
static inline int store_sync(store *s) { return s->ops->sync(s); }
static inline uint64_t store_sequence(store *s) { return s->ops->sequence(s); }
static inline int store_statfs(store *s, struct statvfs *out) { return s->ops->statfs(s, out); }
static inline void store_destroy(store *s) {
    if (s) s->ops->destroy(s);
}

/* 1 if some key of ks starts with prefix, 0 if none, negative errno on error. */
int store_has_prefix(store *s, uint8_t ks, const void *prefix, size_t plen);
/* The smallest key greater than every key starting with prefix (prefix with its last non-0xff byte incremented and
 * what follows dropped), written to out (capacity plen); returns its length, 0 when there is none (all 0xff). */
size_t store_prefix_end(const void *prefix, size_t plen, uint8_t *out);

/* The backends. */
/* An empty in-memory store; statfs reports a fixed size. NULL on allocation failure. */
store *store_mem_new(void);
/* Make the next write of a store_mem fail with err (tests of error paths); 0 clears. */
void store_mem_fail_next_write(store *s, int err);

struct kv_db;
/* A store over an open engine handle (not closed by store_destroy). datadir: for statfs. NULL on failure. */
store *store_kv_new(struct kv_db *db, const char *datadir);
/* Where store_kv gives the engine's message of a failure that callers only see as an errno value (EIO, ENOSPC):
 * log(ctx, message) from any thread, at most one message per kind of failure every 10 s. Set before use. */
typedef void (*store_error_log_fn)(void *ctx, const char *message);
void store_kv_set_error_log(store *s, store_error_log_fn log, void *ctx);

#endif /* KVFS_STORE_H */
