/*
 * fs_file.c — open files: one kvfs_file per open key, shared by all its opens, holding a bounded write buffer.
 *
 * Invariants
 *  - The table maps keys of keyspace 0 to open files, and an open file's key is in the store (a create puts it). A
 *    file unlinked (or replaced by rename) while open, or whose key another writer deletes (kvfs_write_keys), leaves
 *    the table and keeps its content under an orphan key of keyspace 2 until its last release; the latter also
 *    stays on fs->deleted_open with its old key, since the kernel still has it under its old name.
 *  - The write buffer is one extent of at most cfg.write_buffer_bytes; a write that does not extend it, or would
 *    overflow it, first writes it to the store (as one write_at), so memory per file is bounded whatever its size.
 *    All buffers together stay under FS_BUFFERS_MAX (fs->buffered): a file that cannot have one writes directly.
 *  - f->size is the file's logical size: what the store holds with the buffer applied. Reads that touch the
 *    buffer flush it first, so readers always see every byte written before them.
 *  - mtime is stamped when a write happens (unless the kernel owns it: writeback cache), never at flush or close,
 *    so a utimensat between the write and the close survives.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs_internal.h"

int fs_make_file(kvfs_fs *fs, const char *path, mode_t mode, dev_t rdev, const void *content, size_t clen,
                 const kvfs_caller *who, fs_node *n, fs_attr *a);

uint64_t file_key_hash(const uint8_t *key, size_t klen) { return XXH64(key, klen, 0); }

kvfs_file *file_find(kvfs_fs *fs, const uint8_t *key, size_t klen) {
    for (kvfs_file *f = fs->table[file_key_hash(key, klen) % FS_TABLE_SIZE]; f; f = f->next)
        if (f->klen == klen && memcmp(f->key, key, klen) == 0) return f;
    return NULL;
}

/* The open file of key, one more open; created from the given state if absent. tbl_mu held. */
static kvfs_file *file_get_or_add(kvfs_fs *fs, const uint8_t *key, size_t klen, uint64_t ino, const fs_attr *a,
                                  bool stored, uint64_t size) {
    kvfs_file *f = file_find(fs, key, klen);
    if (f) {
        f->opens++;
        return f;
    }
    f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->key = malloc(klen);
    if (!f->key) {
        free(f);
        return NULL;
    }
    memcpy(f->key, key, klen);
    f->klen = klen;
    f->ks = STORE_KS_DATA;
    f->ino = ino;
    f->attr = *a;
    f->attr_stored = stored;
    f->size = size;
    f->opens = 1;
    pthread_mutex_init(&f->mu, NULL);
    uint64_t h = file_key_hash(key, klen) % FS_TABLE_SIZE;
    f->next = fs->table[h];
    fs->table[h] = f;
    return f;
}

void file_put_attr(kvfs_fs *fs, kvfs_file *f, store_batch *b) {
    (void)fs;
    if (f->ks != STORE_KS_DATA) return; /* an orphan's attributes live only in memory */
    keybuf mk;
    kb_init(&mk);
    meta_file_key(&mk, f->key, f->klen);
    uint8_t rec[META_RECORD_BYTES];
    meta_encode(&f->attr, rec);
    if (mk.oom)
        b->error = -ENOMEM;
    else
        store_batch_put(b, STORE_KS_META, mk.p, mk.len, rec, sizeof rec);
    kb_free(&mk);
}

/* Put bytes [off, off + len) of f into b: a plain put when they are the whole file (a new or rewritten small file:
 * the engine need not read the old value), else a write_at. f->size is the size before these bytes. */
static void put_extent(kvfs_file *f, store_batch *b, uint64_t off, const void *data, size_t len) {
    /* nocopy: every caller writes b before data (a request's buffer or f->buf) changes */
    if (off == 0 && len >= f->size)
        store_batch_put_nocopy(b, f->ks, f->key, f->klen, data, len);
    else
        store_batch_write_at_nocopy(b, f->ks, f->key, f->klen, off, data, len);
}

int file_flush_locked(kvfs_fs *fs, kvfs_file *f) {
    if (f->buf_len == 0 && !f->dirty_attr) return 0;
    store_batch b;
    store_batch_init(&b);
    /* f->size already counts the buffer: it is the whole file when it starts at 0 and reaches the end. */
    if (f->buf_len && f->buf_off == 0 && f->buf_len == f->size)
        store_batch_put_nocopy(&b, f->ks, f->key, f->klen, f->buf, f->buf_len); /* f->buf is kept until written */
    else if (f->buf_len)
        store_batch_write_at_nocopy(&b, f->ks, f->key, f->klen, f->buf_off, f->buf, f->buf_len);
    file_put_attr(fs, f, &b);
    int rc = fs_write_batch(fs, &b);
    store_batch_free(&b);
    if (rc == 0) {
        f->buf_len = 0;
        f->dirty_attr = false;
        if (f->ks == STORE_KS_DATA) f->attr_stored = true;
    }
    return rc;
}

static void file_free(kvfs_fs *fs, kvfs_file *f) {
    pthread_mutex_destroy(&f->mu);
    if (f->buf) atomic_fetch_sub(&fs->buffered, f->buf_cap);
    free(f->buf);
    free(f->key);
    free(f->old_key);
    free(f);
}

static void table_remove(kvfs_fs *fs, kvfs_file *f) {
    uint64_t h = file_key_hash(f->key, f->klen) % FS_TABLE_SIZE;
    for (kvfs_file **pp = &fs->table[h]; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            return;
        }
}

void file_make_orphan(kvfs_fs *fs, kvfs_file *f, uint8_t *key, size_t klen, bool by_other) {
    table_remove(fs, f); /* no path reaches it any more */
    if (by_other) {
        /* The kernel did not see this unlink: it still has the file under its old name (open_under_top) */
        f->old_key = f->key;
        f->old_klen = f->klen;
        f->next = fs->deleted_open;
        fs->deleted_open = f;
    } else {
        free(f->key);
        f->next = NULL;
    }
    f->key = key;
    f->klen = klen;
    f->ks = STORE_KS_ORPHAN;
}

int kvfs_file_opens(kvfs_fs *fs, kvfs_file *f) {
    pthread_mutex_lock(&fs->tbl_mu);
    int n = f->opens;
    pthread_mutex_unlock(&fs->tbl_mu);
    return n;
}

/* The length of key's first path component (the whole key when it has no '/'). */
static size_t top_len(const uint8_t *key, size_t klen) {
    const uint8_t *slash = memchr(key, '/', klen);
    return slash ? (size_t)(slash - key) : klen;
}

static bool same_top(const uint8_t *a, size_t alen, const uint8_t *key, size_t t) {
    return top_len(a, alen) == t && memcmp(a, key, t) == 0;
}

/* An open file of keyspace 0 other than `except` whose key has the same first component as key, or an open file
 * whose key another writer deleted under that name (the kernel still has it there: its entry goes at its close).
 * tbl_mu held. The table is scanned whole: this runs only when another writer changed a key, and at last closes
 * while a top-level entry waits to be dropped. */
static kvfs_file *open_under_top(kvfs_fs *fs, const uint8_t *key, size_t klen, const kvfs_file *except) {
    size_t t = top_len(key, klen);
    for (size_t i = 0; i < FS_TABLE_SIZE; i++)
        for (kvfs_file *f = fs->table[i]; f; f = f->next)
            if (f != except && f->ks == STORE_KS_DATA && same_top(f->key, f->klen, key, t)) return f;
    for (kvfs_file *f = fs->deleted_open; f; f = f->next)
        if (f != except && same_top(f->old_key, f->old_klen, key, t)) return f;
    return NULL;
}

/* The kernel's entry of the top-level name must not be dropped while a file below it is open: that strands the open
 * file's entry (the drop at its last close then misses it, and the kernel keeps its stale size). So a key changed
 * under a top-level name with an open file puts the name on fs->stale_tops, and the drop waits for the last close
 * that leaves no file open under it (kvfs_release_changed). The name is kept, not a file: a file marked instead lost
 * the mark when it was unlinked or renamed elsewhere while open, and the name's cached entries stayed stale. */
bool kvfs_file_mark_changed(kvfs_fs *fs, const void *key, size_t klen) {
    size_t t = top_len(key, klen);
    pthread_mutex_lock(&fs->tbl_mu);
    bool open = open_under_top(fs, key, klen, NULL) != NULL;
    if (open) {
        kvfs_stale_top *s = fs->stale_tops;
        while (s && !(s->len == t && memcmp(s->name, key, t) == 0)) s = s->next;
        if (!s && (s = malloc(sizeof *s + (t ? t : 1)))) {
            s->len = t;
            memcpy(s->name, key, t);
            s->next = fs->stale_tops;
            fs->stale_tops = s;
        }
        if (!s) open = false; /* out of memory: the caller drops the entry now */
    }
    pthread_mutex_unlock(&fs->tbl_mu);
    return open;
}

kvfs_file *kvfs_open_deleted(kvfs_fs *fs, const char *path) {
    pthread_mutex_lock(&fs->tbl_mu);
    bool any = fs->deleted_open != NULL;
    pthread_mutex_unlock(&fs->tbl_mu);
    fs_node n;
    if (!any || !path || node_lookup(fs, path, &n)) return NULL;
    kvfs_file *f = NULL;
    if (n.type == NODE_NONE) { /* a file put there since is what the path names */
        pthread_mutex_lock(&fs->tbl_mu);
        for (f = fs->deleted_open; f; f = f->next)
            if (f->old_klen == n.p.klen && memcmp(f->old_key, n.p.key, n.p.klen) == 0) break;
        if (f) f->opens++;
        pthread_mutex_unlock(&fs->tbl_mu);
    }
    node_free(&n);
    return f;
}

void kvfs_deleted_renamed(kvfs_fs *fs, kvfs_file *f) {
    pthread_mutex_lock(&fs->tbl_mu);
    for (kvfs_file **pp = f->old_key ? &fs->deleted_open : NULL; pp && *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            f->next = NULL;
            free(f->old_key);
            f->old_key = NULL;
            f->old_klen = 0;
            break;
        }
    pthread_mutex_unlock(&fs->tbl_mu);
}

int kvfs_release(kvfs_fs *fs, kvfs_file *f) { return kvfs_release_changed(fs, f, NULL); }

int kvfs_release_changed(kvfs_fs *fs, kvfs_file *f, kvfs_stale_top **stale) {
    if (stale) *stale = NULL;
    pthread_mutex_lock(&fs->tbl_mu);
    if (--f->opens > 0) {
        pthread_mutex_unlock(&fs->tbl_mu);
        return 0;
    }
    /* Last close: write what is buffered while still in the table, so a new open cannot read around it. */
    pthread_mutex_lock(&f->mu);
    int rc = file_flush_locked(fs, f);
    if (f->ks == STORE_KS_ORPHAN) {
        store_batch b;
        store_batch_init(&b);
        store_batch_delete(&b, STORE_KS_ORPHAN, f->key, f->klen);
        rc = fs_write_batch(fs, &b);
        store_batch_free(&b);
        for (kvfs_file **pp = f->old_key ? &fs->deleted_open : NULL; pp && *pp; pp = &(*pp)->next)
            if (*pp == f) {
                *pp = f->next;
                break;
            }
    } else {
        table_remove(fs, f);
    }
    pthread_mutex_unlock(&f->mu);
    /* The names no file is open under any more (an internal release, stale NULL, leaves them for the next one) */
    for (kvfs_stale_top **pp = stale ? &fs->stale_tops : NULL; pp && *pp;) {
        kvfs_stale_top *s = *pp;
        if (open_under_top(fs, s->name, s->len, NULL)) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        s->next = *stale;
        *stale = s;
    }
    pthread_mutex_unlock(&fs->tbl_mu);
    file_free(fs, f);
    return rc;
}

static int truncate_locked(kvfs_fs *fs, kvfs_file *f, uint64_t size) {
    int rc = file_flush_locked(fs, f);
    if (rc) return rc;
    fs_attr old = f->attr;
    /* A truncate to the file's own size changes no times: POSIX asks for new ones only when the size changes, and
     * the kernel's writeback cache, which owns the times it shows, leaves them so (truncate(2); ftruncate asks for
     * them itself). Without it the kernel leaves them to us, and a local filesystem stamps them. */
    if (size != f->size || !fs->cfg.writeback_cache) {
        f->attr.mtime = fs_now();
        f->attr.ctime = fs_ctime_now();
    }
    store_batch b;
    store_batch_init(&b);
    store_batch_truncate(&b, f->ks, f->key, f->klen, size);
    file_put_attr(fs, f, &b);
    rc = fs_write_batch(fs, &b);
    store_batch_free(&b);
    if (rc == 0) {
        f->size = size;
        if (f->ks == STORE_KS_DATA) f->attr_stored = true;
    } else {
        f->attr = old;
    }
    return rc;
}

int kvfs_create(kvfs_fs *fs, const char *path, mode_t mode, int flags, const kvfs_caller *who, kvfs_file **out) {
    pthread_mutex_lock(&fs->ns_mu);
    fs_node n;
    fs_attr a;
    int rc = fs_make_file(fs, path, S_IFREG | (mode & 07777), 0, "", 0, who, &n, &a);
    if (rc == 0) {
        pthread_mutex_lock(&fs->tbl_mu);
        *out = file_get_or_add(fs, n.p.key, n.p.klen, path_ino(path), &a, true, 0);
        pthread_mutex_unlock(&fs->tbl_mu);
        if (!*out) rc = -ENOMEM;
        node_free(&n);
    }
    pthread_mutex_unlock(&fs->ns_mu);
    if (rc == -EEXIST && !(flags & O_EXCL)) return kvfs_open(fs, path, flags, out);
    return rc;
}

/* The O_TRUNC of an open that just took f: on failure the open is given back. */
static int open_truncate(kvfs_fs *fs, kvfs_file *f, int flags) {
    int rc = 0;
    if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
        pthread_mutex_lock(&f->mu);
        /* with the writeback cache the kernel stamps an O_TRUNC's times itself (a truncate sends them) */
        if (f->size != 0 || !fs->cfg.writeback_cache) rc = truncate_locked(fs, f, 0);
        pthread_mutex_unlock(&f->mu);
        if (rc) kvfs_release(fs, f);
    }
    return rc;
}

int kvfs_open(kvfs_fs *fs, const char *path, int flags, kvfs_file **out) {
    /* Under ns_mu so an unlink cannot slip between the lookup and the table entry. */
    pthread_mutex_lock(&fs->ns_mu);
    fs_node n;
    int rc = node_lookup(fs, path, &n);
    if (rc) {
        pthread_mutex_unlock(&fs->ns_mu);
        return rc == -EINVAL ? -ENOENT : rc;
    }
    if (n.type != NODE_FILE) {
        rc = n.type == NODE_DIR ? -EISDIR : -ENOENT;
    } else {
        pthread_mutex_lock(&fs->tbl_mu);
        /* A value put at the key of a file another writer deleted while it was open: the kernel takes the path for
         * that file's node until its last close, with its size, and would write into the new value at offsets
         * of the old one (an O_APPEND write landed over the new value's bytes). Read it, but write it only once
         * the old file is closed. */
        bool writes = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
        for (kvfs_file *d = writes ? fs->deleted_open : NULL; d && !rc; d = d->next)
            if (d->old_klen == n.p.klen && memcmp(d->old_key, n.p.key, n.p.klen) == 0) rc = -EBUSY;
        *out = rc ? NULL : file_get_or_add(fs, n.p.key, n.p.klen, path_ino(path), &n.attr, n.stored, n.data.size);
        pthread_mutex_unlock(&fs->tbl_mu);
        if (!rc && !*out) rc = -ENOMEM;
    }
    node_free(&n);
    pthread_mutex_unlock(&fs->ns_mu);
    return rc ? rc : open_truncate(fs, *out, flags);
}

int kvfs_reopen(kvfs_fs *fs, kvfs_file *f, int flags) {
    pthread_mutex_lock(&fs->tbl_mu);
    f->opens++;
    pthread_mutex_unlock(&fs->tbl_mu);
    return open_truncate(fs, f, flags);
}

ssize_t kvfs_read(kvfs_fs *fs, kvfs_file *f, void *buf, size_t size, off_t off) {
    if (off < 0) return -EINVAL;
    pthread_mutex_lock(&f->mu);
    ssize_t rc = 0;
    uint64_t uoff = (uint64_t)off;
    if (f->buf_len && uoff < f->buf_off + f->buf_len && uoff + size > f->buf_off) rc = file_flush_locked(fs, f);
    if (!rc && uoff < f->size) {
        size_t n = f->size - uoff < size ? (size_t)(f->size - uoff) : size;
        size_t got = 0;
        rc = store_read(fs->st, f->ks, f->key, f->klen, uoff, buf, n, &got);
        if (rc == -ENOENT) rc = 0, got = 0; /* only buffered so far: the rest is a hole */
        if (!rc) {
            /* Bytes past the stored end but inside the logical size (a buffered extent further on) are zeros. */
            if (got < n) memset((char *)buf + got, 0, n - got);
            rc = (ssize_t)n;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

ssize_t kvfs_write(kvfs_fs *fs, kvfs_file *f, const void *data, size_t size, off_t off, bool append) {
    if (off < 0) return -EINVAL;
    pthread_mutex_lock(&f->mu);
    int rc = 0;
    uint64_t uoff = append ? f->size : (uint64_t)off;
    if (!fs->cfg.writeback_cache) {
        f->attr.mtime = f->attr.ctime = fs_now();
        f->dirty_attr = true;
    }
    size_t cap = fs->cfg.write_buffer_bytes;
    if (f->buf_len && (uoff != f->buf_off + f->buf_len || f->buf_len + size > cap)) rc = file_flush_locked(fs, f);
    bool unbuffered = size >= cap || fs->cfg.writeback_cache;
    if (!rc && !unbuffered && size && !f->buf) {
        /* a buffer only while all of them stay under FS_BUFFERS_MAX */
        if (atomic_fetch_add(&fs->buffered, cap) + cap > FS_BUFFERS_MAX || !(f->buf = malloc(cap))) {
            atomic_fetch_sub(&fs->buffered, cap);
            unbuffered = true;
        } else {
            f->buf_cap = cap;
        }
    }
    if (!rc && unbuffered) {
        /* Large writes go straight to the store: nothing to gain by copying them. With the kernel's writeback
         * cache every write does: the kernel has merged them already (up to max_write), and close() does not
         * send FLUSH (fs_fuse.c), so a write must be in the store when its reply leaves. */
        store_batch b;
        store_batch_init(&b);
        put_extent(f, &b, uoff, data, size);
        file_put_attr(fs, f, &b);
        rc = fs_write_batch(fs, &b);
        store_batch_free(&b);
        if (!rc) f->dirty_attr = false;
    } else if (!rc && size) {
        if (f->buf_len == 0) f->buf_off = uoff;
        memcpy(f->buf + f->buf_len, data, size);
        f->buf_len += size;
    }
    if (!rc && uoff + size > f->size) f->size = uoff + size;
    pthread_mutex_unlock(&f->mu);
    return rc ? rc : (ssize_t)size;
}

int kvfs_flush(kvfs_fs *fs, kvfs_file *f) {
    pthread_mutex_lock(&f->mu);
    int rc = file_flush_locked(fs, f);
    if (!rc && f->deferred_error) {
        rc = f->deferred_error;
        f->deferred_error = 0;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

int kvfs_fsync(kvfs_fs *fs, kvfs_file *f, bool datasync) {
    (void)datasync; /* data and attributes travel in the same batches: one sync covers both */
    int rc = kvfs_flush(fs, f);
    return rc ? rc : store_sync(fs->st);
}

int kvfs_truncate(kvfs_fs *fs, const char *path, kvfs_file *f, off_t size) {
    if (size < 0) return -EINVAL;
    bool opened_here = false;
    if (!f) {
        if (!path) return -ENOENT;
        int rc = kvfs_open(fs, path, O_WRONLY, &f);
        if (rc) return rc;
        opened_here = true;
    }
    pthread_mutex_lock(&f->mu);
    int rc = S_ISREG(f->attr.mode) ? truncate_locked(fs, f, (uint64_t)size) : -EINVAL;
    pthread_mutex_unlock(&f->mu);
    if (opened_here) {
        int rc2 = kvfs_release(fs, f);
        if (!rc) rc = rc2;
    }
    return rc;
}

/* Bytes [off, end) read as zeros from now on: a hole in the store (the engine keeps a file of 4 KiB or more in a blob
 * file, where the range's bytes are then no longer referenced and their space comes back with blob GC), with the
 * size grown to end when it was smaller. The buffer is written first, so bytes it holds in the range are zeroed
 * too. Times as for a write: stamped here unless the kernel's writeback cache owns them. */
static int zero_range_locked(kvfs_fs *fs, kvfs_file *f, uint64_t off, uint64_t end) {
    int rc = file_flush_locked(fs, f);
    if (rc) return rc;
    fs_attr old = f->attr;
    if (!fs->cfg.writeback_cache) {
        f->attr.mtime = fs_now();
        f->attr.ctime = fs_ctime_now();
    }
    store_batch b;
    store_batch_init(&b);
    store_batch_zero_range(&b, f->ks, f->key, f->klen, off, end - off);
    file_put_attr(fs, f, &b);
    rc = fs_write_batch(fs, &b);
    store_batch_free(&b);
    if (rc == 0) {
        if (end > f->size) f->size = end;
        if (f->ks == STORE_KS_DATA) f->attr_stored = true;
    } else {
        f->attr = old;
    }
    return rc;
}

int kvfs_fallocate(kvfs_fs *fs, kvfs_file *f, int mode, off_t off, off_t len) {
    if (off < 0 || len <= 0 || off > INT64_MAX - len) return -EINVAL;
    if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) return -EOPNOTSUPP;
    bool keep = mode & FALLOC_FL_KEEP_SIZE, zero = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE);
    /* as fallocate(2) (the kernel checks this before it asks): a hole is punched only within the size */
    if ((mode & FALLOC_FL_PUNCH_HOLE) && (!keep || (mode & FALLOC_FL_ZERO_RANGE))) return -EINVAL;
    pthread_mutex_lock(&f->mu);
    int rc = 0;
    uint64_t end = (uint64_t)(off + len);
    if (!S_ISREG(f->attr.mode))
        rc = -ENODEV;
    else if (zero && keep && (uint64_t)off < f->size)
        rc = zero_range_locked(fs, f, (uint64_t)off, end < f->size ? end : f->size);
    else if (zero && !keep)
        rc = zero_range_locked(fs, f, (uint64_t)off, end);
    else if (!keep && end > f->size)
        rc = truncate_locked(fs, f, end);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

ssize_t kvfs_copy_file_range(kvfs_fs *fs, kvfs_file *fin, off_t off_in, kvfs_file *fout, off_t off_out, size_t len) {
    if (off_in < 0 || off_out < 0) return -EINVAL;
    /* ns_mu keeps both keys where they are (renames and unlinks take it) without holding two files' locks at once,
     * which kvfs_write_keys takes in no set order */
    pthread_mutex_lock(&fs->ns_mu);
    pthread_mutex_lock(&fin->mu);
    int rc = S_ISREG(fin->attr.mode) ? file_flush_locked(fs, fin) : -EINVAL; /* buffered bytes are copied too */
    uint64_t n = rc || (uint64_t)off_in >= fin->size ? 0 : fin->size - (uint64_t)off_in;
    uint8_t fks = fin->ks, *fkey = n ? malloc(fin->klen) : NULL;
    size_t fklen = fin->klen;
    if (fkey) memcpy(fkey, fin->key, fklen);
    else if (n) rc = -ENOMEM;
    pthread_mutex_unlock(&fin->mu);
    if (n > len) n = len;
    if (n > FS_COPY_MAX) n = FS_COPY_MAX;
    if (n > (uint64_t)(INT64_MAX - off_out)) n = (uint64_t)(INT64_MAX - off_out);
    pthread_mutex_lock(&fout->mu);
    if (!rc && !S_ISREG(fout->attr.mode)) rc = -EINVAL;
    if (!rc && n) rc = file_flush_locked(fs, fout);
    if (!rc && n) {
        fs_attr old = fout->attr;
        if (!fs->cfg.writeback_cache) {
            fout->attr.mtime = fs_now();
            fout->attr.ctime = fs_ctime_now();
        }
        store_batch b;
        store_batch_init(&b);
        store_batch_copy_range(&b, fks, fkey, fklen, (uint64_t)off_in, fout->ks, fout->key, fout->klen,
                               (uint64_t)off_out, n);
        file_put_attr(fs, fout, &b);
        rc = fs_write_batch(fs, &b);
        store_batch_free(&b);
        if (rc == 0) {
            if ((uint64_t)off_out + n > fout->size) fout->size = (uint64_t)off_out + n;
            if (fout->ks == STORE_KS_DATA) fout->attr_stored = true;
        } else {
            fout->attr = old;
        }
    }
    pthread_mutex_unlock(&fout->mu);
    pthread_mutex_unlock(&fs->ns_mu);
    free(fkey);
    return rc ? rc : (ssize_t)n;
}

void kvfs_file_writer(kvfs_fs *fs, kvfs_file *f, int delta) {
    (void)fs;
    pthread_mutex_lock(&f->mu);
    f->writers += delta;
    assert(f->writers >= 0);
    pthread_mutex_unlock(&f->mu);
}

int kvfs_lseek(kvfs_fs *fs, kvfs_file *f, off_t off, int whence, bool written_back, off_t *out) {
    if (whence != SEEK_DATA && whence != SEEK_HOLE) return -EINVAL;
    pthread_mutex_lock(&f->mu);
    int rc = 0;
    if (off < 0) rc = -ENXIO;
    else if (fs->cfg.writeback_cache && f->writers > 0 && !written_back) rc = -EAGAIN;
    else if (!S_ISREG(f->attr.mode)) rc = -ESPIPE;
    else rc = file_flush_locked(fs, f); /* the buffer's bytes are data */
    uint64_t size = f->size, at = whence == SEEK_DATA ? (uint64_t)off : size;
    if (!rc && (uint64_t)off >= size) rc = -ENXIO;
    if (!rc) rc = store_seek_data(fs->st, f->ks, f->key, f->klen, size, (uint64_t)off, whence == SEEK_HOLE, &at);
    if (rc == -ENOENT) rc = 0, at = whence == SEEK_DATA ? (uint64_t)off : size; /* created, nothing stored yet */
    if (!rc && whence == SEEK_DATA && at >= size) rc = -ENXIO;
    pthread_mutex_unlock(&f->mu);
    if (!rc) *out = (off_t)at;
    return rc;
}

int kvfs_fs_flush_all(kvfs_fs *fs) {
    int rc = 0;
    pthread_mutex_lock(&fs->tbl_mu);
    for (size_t h = 0; h < FS_TABLE_SIZE; h++)
        for (kvfs_file *f = fs->table[h]; f; f = f->next) {
            pthread_mutex_lock(&f->mu);
            int r = file_flush_locked(fs, f);
            if (r && !rc) rc = r;
            pthread_mutex_unlock(&f->mu);
        }
    pthread_mutex_unlock(&fs->tbl_mu);
    return rc;
}

void kvfs_fs_free(kvfs_fs *fs) {
    if (!fs) return;
    kvfs_fs_flush_all(fs);
    for (size_t h = 0; h < FS_TABLE_SIZE; h++) {
        kvfs_file *f = fs->table[h];
        while (f) {
            kvfs_file *next = f->next;
            file_free(fs, f);
            f = next;
        }
    }
    while (fs->deleted_open) {
        kvfs_file *f = fs->deleted_open;
        fs->deleted_open = f->next;
        file_free(fs, f);
    }
    while (fs->stale_tops) {
        kvfs_stale_top *s = fs->stale_tops;
        fs->stale_tops = s->next;
        free(s);
    }
    dc_free(fs);
    pthread_mutex_destroy(&fs->ns_mu);
    pthread_mutex_destroy(&fs->tbl_mu);
    free(fs);
}
