/*
 * fs_internal.h — state shared by fs_core.c (namespace and attributes), fs_file.c (open files) and fs_dir.c
 * (listings). Not for use outside fs/.
 *
 * Locking order: ns_mu (namespace changes) -> tbl_mu (open-file table) -> kvfs_file.mu. The store is thread-safe
 * and is called with any of them held. A file's location (ks, key) changes only with tbl_mu and its mu both held,
 * so holding either one is enough to read it.
 */
#ifndef KVFS_FS_INTERNAL_H
#define KVFS_FS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "fs.h"
#include "fs_meta.h"
#include "names.h"

#define FS_TABLE_SIZE 4096

struct kvfs_file {
    struct kvfs_file *next;  /* hash chain (tbl_mu) */
    int opens;               /* open handles (tbl_mu) */
    pthread_mutex_t mu;      /* everything below */
    uint8_t ks;              /* STORE_KS_DATA, or STORE_KS_ORPHAN after an unlink while open */
    uint8_t *key;
    size_t klen;
    uint64_t ino;
    fs_attr attr;            /* current attributes (loaded at open; the record is rewritten at each flush) */
    bool attr_stored;        /* the file has an attribute record (else defaults are shown until it is written) */
    bool dirty_attr;         /* attr changed since the record was written */
    uint64_t size;           /* logical size: stored size merged with the buffer */
    uint8_t *buf;            /* write buffer: one extent [buf_off, buf_off + buf_len) */
    size_t buf_cap, buf_len;
    uint64_t buf_off;
    int deferred_error;      /* a write that failed where no caller could see it, reported at flush/fsync */
    int writers;             /* the kernel's opens that may write (kvfs_file_writer): they may hold dirty pages */
    uint8_t *old_key;        /* an orphan whose key another writer deleted (kvfs_write_keys): that key; else NULL */
    size_t old_klen;
};

struct kvfs_fs {
    store *st;
    kvfs_config cfg;
    pthread_mutex_t ns_mu;
    pthread_mutex_t tbl_mu;
    kvfs_file *table[FS_TABLE_SIZE];
    uint64_t next_orphan;    /* tbl_mu */
    /* top-level names whose kernel entry is dropped once no file under them is open (kvfs_file_mark_changed; tbl_mu) */
    kvfs_stale_top *stale_tops;
    /* open files whose key another writer deleted (kvfs_write_keys), chained by next: out of the table, but their
     * old names are still the kernel's until their last close (tbl_mu) */
    kvfs_file *deleted_open;
    struct timespec started; /* times shown for directories without attributes */
    struct dcache *dc;       /* directory facts (fs_dcache.c) */
    _Atomic uint64_t batches; /* batches this filesystem wrote (to tell other writers' batches apart) */
    _Atomic int file_xattrs;  /* does keyspace 1 hold any file xattr ('X' key)? 1 yes, 0 no, -1 not known */
    _Atomic size_t buffered;  /* bytes of write buffers allocated, all open files together (FS_BUFFERS_MAX) */
};

/* At most this many bytes of write buffers at once (64 buffers of the default 1 MiB): a write to an open file that
 * would need one more buffer past it goes straight to the store, so the daemon's memory does not grow with the
 * number of files open for writing. */
#define FS_BUFFERS_MAX ((size_t)64 << 20)
/* The most one copy_file_range call copies: the engine lists the source's pieces of the range in memory (a 256 MiB
 * range cut into 4 KiB pieces: 65,536 of them, about 2.5 MB). */
#define FS_COPY_MAX ((uint64_t)256 << 20)

/* What a path resolves to. */
enum node_type { NODE_NONE, NODE_FILE, NODE_DIR };

typedef struct fs_node {
    fs_path p;
    enum node_type type;
    bool stored;             /* an attribute record exists (F or D) */
    fs_attr attr;            /* from the record, or defaults */
    store_info data;         /* files: the content's size and write time */
    int64_t meta_ms;         /* write time of the attribute record */
} fs_node;

/* Resolve and look up a path. -EINVAL for a non-canonical name; type NODE_NONE when nothing is there. */
int node_lookup(kvfs_fs *fs, const char *path, fs_node *n);
void node_free(fs_node *n);
/* The dir key of a directory node (K + "/", or "" for the root; the partial key for a continuation). */
void node_dir_key(const fs_node *n, keybuf *out);
/* Fill st for a node (open-file state merged in by the caller). */
void node_stat(kvfs_fs *fs, const fs_node *n, const char *path, struct stat *st);
/* Attributes of a file key (record or defaults); *stored tells which. */
int file_attr_load(kvfs_fs *fs, const uint8_t *key, size_t klen, fs_attr *a, bool *stored, store_info *data);
/* Is there a directory K (K + "/" prefix in data, or a D record at or below it)? 1/0/-errno. */
int dir_exists(kvfs_fs *fs, const uint8_t *key, size_t klen);
uint64_t path_ino(const char *path);

/* Open-file table (fs_file.c). */
kvfs_file *file_find(kvfs_fs *fs, const uint8_t *key, size_t klen); /* tbl_mu held */
/* Point every open file at old_key (and, when subtree, below old_key + "/") to new_key (tbl_mu held). */
int file_table_rekey(kvfs_fs *fs, const uint8_t *old_key, size_t olen, const uint8_t *new_key, size_t nlen,
                     bool subtree, kvfs_file **skip);
/* f's content was moved to key (malloc'ed, taken) of the orphan keyspace by a batch now written: point f there and
 * take it out of the table, since no path reaches it any more (tbl_mu and f->mu held). by_other: another writer
 * deleted f's key (kvfs_write_keys): f keeps it as old_key and goes on fs->deleted_open until its last release. */
void file_make_orphan(kvfs_fs *fs, kvfs_file *f, uint8_t *key, size_t klen, bool by_other);
/* Write f's buffer to the store (f->mu held). */
int file_flush_locked(kvfs_fs *fs, kvfs_file *f);
/* Append f's attribute record to b (f->mu held) */
void file_put_attr(kvfs_fs *fs, kvfs_file *f, store_batch *b);
uint64_t file_key_hash(const uint8_t *key, size_t klen);

int fs_write_batch(kvfs_fs *fs, store_batch *b);
/* The same, synced when sync is set (or the filesystem syncs every write). */
int fs_write_batch_sync(kvfs_fs *fs, store_batch *b, bool sync);

/* Directory cache (fs_dcache.c). Directories are named by their dir key (K + "/", "" for the root). */
typedef struct dcache dcache;
enum { DC_UNKNOWN = -1, DC_NONE = 0, DC_IMPLICIT = 1, DC_EXPLICIT = 2 };
int dc_init(kvfs_fs *fs);
void dc_free(kvfs_fs *fs);
void dc_clear(kvfs_fs *fs);
/* What the cache knows of dk (DC_*), loading the parent's child directories when that answers it. For
 * DC_EXPLICIT, *a is the record and *stored true; for DC_IMPLICIT *a is changed only if times were stamped. */
int dc_lookup(kvfs_fs *fs, const uint8_t *dk, size_t dlen, fs_attr *a, bool *stored);
/* The same without loading anything; *has_times: an implicit directory with stamped times. */
int dc_peek(kvfs_fs *fs, const uint8_t *dk, size_t dlen, fs_attr *a, bool *stored, bool *has_times);
/* Load the child directories and file attributes of directory dk now, if not known yet (a listing is coming). */
void dc_prefetch(kvfs_fs *fs, const uint8_t *dk, size_t dlen);
/* Facts read from the store by a lookup: take dc_generation before reading, dc_install after. */
uint64_t dc_generation(kvfs_fs *fs);
void dc_install(kvfs_fs *fs, uint64_t gen, const uint8_t *dk, size_t dlen, int state, const fs_attr *a);
/* A namespace change made dk a directory (empty: a new, empty one) or not one (DC_NONE). ns_mu held. */
void dc_set(kvfs_fs *fs, const uint8_t *dk, size_t dlen, int state, const fs_attr *a, bool empty);
/* The attributes (or, implicit: times) of a cached directory changed. */
void dc_touch(kvfs_fs *fs, const uint8_t *dk, size_t dlen, const fs_attr *a);
/* The entry at key (a data key, no trailing '/') was removed: implicit ancestors may have vanished. ns_mu held. */
void dc_removed(kvfs_fs *fs, const uint8_t *key, size_t klen);
/* File attributes: the cached ones (false when not cached); *gen for fc_install after reading the store. */
bool fc_get(kvfs_fs *fs, const uint8_t *key, size_t klen, fs_attr *a, bool *stored, store_info *data, uint64_t *gen);
void fc_install(kvfs_fs *fs, uint64_t gen, const uint8_t *key, size_t klen, const fs_attr *a, bool stored,
                const store_info *data);
/* A batch of ours was committed: forget the files it touched. */
void fc_batch_written(kvfs_fs *fs, const store_batch *b);
/* A file's attributes from its record (NULL: none or malformed; rec_ms its write time) and its content's info.
 * Returns whether the record was used (else defaults). */
bool file_attr_make(kvfs_fs *fs, const fs_attr *rec, int64_t rec_ms, const store_info *data, fs_attr *a);

#endif /* KVFS_FS_INTERNAL_H */
