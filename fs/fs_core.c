/*
 * fs_core.c — looking up paths, attributes, and every namespace change (mkdir, rmdir, create's bookkeeping,
 * unlink, symlink, mknod, rename, and another writer's puts and deletes of keys) and extended attributes.
 *
 * Invariants
 *  - Every namespace change is one store batch, built and written while holding ns_mu: what it checked (existence,
 *    emptiness) still holds when it commits, and readers see the change all at once or not at all.
 *  - Keyspace 0 holds only path -> content; attributes, explicit directories and xattrs are in keyspace 1
 *    (fs_meta.h), contents of unlinked-but-open files in keyspace 2.
 *  - A batch that changes a file's content also rewrites its attribute record, so the record is never older than
 *    the content unless the content was written from outside the filesystem (the store API): then the content's
 *    write time is the file's mtime (see file_attr_load).
 *  - Entries move (rename) with kv moves: no value, however large, is copied.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <xxhash.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

#include "fs_internal.h"

void kvfs_config_init(kvfs_config *c) {
    memset(c, 0, sizeof *c);
    c->file_mode = 0644;
    c->dir_mode = 0755;
    c->uid = getuid();
    c->gid = getgid();
    c->write_buffer_bytes = 1u << 20;
}

void kvfs_fs_set_writeback_cache(kvfs_fs *fs, bool on) { fs->cfg.writeback_cache = on; }
bool kvfs_fs_writeback_cache(const kvfs_fs *fs) { return fs->cfg.writeback_cache; }

void kvfs_gone_attr(const kvfs_fs *fs, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | (fs->cfg.file_mode & 07777);
    st->st_nlink = 0;
    st->st_uid = fs->cfg.uid;
    st->st_gid = fs->cfg.gid;
    st->st_blksize = 1 << 20; /* as fill_stat */
}

int kvfs_fs_sync(kvfs_fs *fs) {
    int rc = kvfs_fs_flush_all(fs);
    return rc ? rc : store_sync(fs->st);
}

int fs_write_batch(kvfs_fs *fs, store_batch *b) { return fs_write_batch_sync(fs, b, false); }

int fs_write_batch_sync(kvfs_fs *fs, store_batch *b, bool sync) {
    if (b->n == 0 && !b->error) return 0;
    if (b->error) return b->error;
    /* Counted before it is applied, so the cache never takes one of ours for someone else's (fs_dcache.c). */
    atomic_fetch_add(&fs->batches, 1);
    int rc = store_write(fs->st, b, sync || fs->cfg.sync_writes);
    if (rc) {
        atomic_fetch_sub(&fs->batches, 1);
        dc_clear(fs); /* facts noted ahead of the commit may not hold */
    } else {
        fc_batch_written(fs, b);
    }
    return rc;
}

uint64_t path_ino(const char *path) {
    if (!path || (path[0] == '/' && path[1] == 0)) return 1;
    uint64_t h = XXH64(path, strlen(path), 0);
    return h <= 1 ? h + 2 : h; /* 1 is the root's */
}

/* ---- lookup ---------------------------------------------------------------------------------------------------- */

static struct timespec ms_ts(int64_t ms) {
    struct timespec t = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    return t;
}

void node_free(fs_node *n) { names_path_free(&n->p); }

void node_dir_key(const fs_node *n, keybuf *out) {
    kb_reset(out);
    if (n->p.kind == NAME_ROOT) return;
    kb_add(out, n->p.key, n->p.klen);
    if (n->p.kind != NAME_CONT) kb_byte(out, '/');
}

typedef struct first_key {
    keybuf key;
    bool found;
    store_buf val;
} first_key;

static int take_first(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val,
                      size_t vlen) {
    (void)info;
    first_key *fk = ctx;
    fk->found = true;
    kb_add(&fk->key, key, klen);
    if (val && vlen) {
        fk->val.data = malloc(vlen);
        if (fk->val.data) {
            memcpy(fk->val.data, val, vlen);
            fk->val.len = vlen;
        }
    }
    return 1;
}

/* The directory's own D record, or any D record below it, or data below it. 1 found (with attrs if explicit). */
static int dir_probe(kvfs_fs *fs, const uint8_t *dkey, size_t dlen, fs_attr *a, bool *stored) {
    keybuf mk;
    kb_init(&mk);
    meta_dir_key(&mk, dkey, dlen);
    uint8_t *end = malloc(mk.len + 1);
    if (mk.oom || !end) {
        kb_free(&mk);
        free(end);
        return -ENOMEM;
    }
    size_t elen = store_prefix_end(mk.p, mk.len, end);
    first_key fk = {0};
    int rc = store_scan(fs->st, STORE_KS_META, mk.p, mk.len, end, elen, 1, true, true, take_first, &fk);
    *stored = false;
    if (rc == 0 && fk.found) {
        if (fk.key.len == mk.len && meta_decode(fk.val.data, fk.val.len, a) && S_ISDIR(a->mode)) *stored = true;
        rc = 1;
    } else if (rc == 0) {
        rc = dlen ? store_has_prefix(fs->st, STORE_KS_DATA, dkey, dlen) : 1;
    }
    kb_free(&fk.key);
    store_buf_free(&fk.val);
    kb_free(&mk);
    free(end);
    return rc;
}

int dir_exists(kvfs_fs *fs, const uint8_t *key, size_t klen) {
    keybuf dk;
    kb_init(&dk);
    kb_add(&dk, key, klen);
    kb_byte(&dk, '/');
    fs_attr a;
    bool stored;
    int rc = dk.oom ? -ENOMEM : dir_probe(fs, dk.p, dk.len, &a, &stored);
    kb_free(&dk);
    return rc;
}

static void default_dir_attr(kvfs_fs *fs, fs_attr *a) {
    memset(a, 0, sizeof *a);
    a->mode = S_IFDIR | (fs->cfg.dir_mode & 07777);
    a->uid = fs->cfg.uid;
    a->gid = fs->cfg.gid;
    a->atime = a->mtime = a->ctime = fs->started;
}

bool file_attr_make(kvfs_fs *fs, const fs_attr *rec, int64_t rec_ms, const store_info *data, fs_attr *a) {
    if (!rec) {
        memset(a, 0, sizeof *a);
        a->mode = S_IFREG | (fs->cfg.file_mode & 07777);
        a->uid = fs->cfg.uid;
        a->gid = fs->cfg.gid;
        a->atime = a->mtime = a->ctime = ms_ts(data->write_ms);
        return false;
    }
    *a = *rec;
    /* The content was rewritten through the store API after the attributes: its write is the last change. */
    if (data->write_ms > rec_ms) a->mtime = a->ctime = ms_ts(data->write_ms);
    return true;
}

int file_attr_load(kvfs_fs *fs, const uint8_t *key, size_t klen, fs_attr *a, bool *stored, store_info *data) {
    if (klen == 0) return -ENOENT;
    uint64_t gen;
    if (fc_get(fs, key, klen, a, stored, data, &gen)) return 0;
    int rc = store_stat(fs->st, STORE_KS_DATA, key, klen, data);
    if (rc) return rc;
    keybuf mk;
    kb_init(&mk);
    meta_file_key(&mk, key, klen);
    if (mk.oom) return -ENOMEM;
    store_buf rec = {0};
    store_info mi = {0};
    rc = store_get(fs->st, STORE_KS_META, mk.p, mk.len, &rec, &mi);
    kb_free(&mk);
    fs_attr ra;
    bool ok = rc == 0 && meta_decode(rec.data, rec.len, &ra) && !S_ISDIR(ra.mode);
    store_buf_free(&rec);
    if (rc && rc != -ENOENT) return rc;
    *stored = file_attr_make(fs, ok ? &ra : NULL, mi.write_ms, data, a);
    fc_install(fs, gen, key, klen, a, *stored, data);
    return 0;
}

int node_lookup(kvfs_fs *fs, const char *path, fs_node *n) {
    memset(n, 0, sizeof *n);
    int rc = names_resolve(path, &n->p);
    if (rc) return rc;
    keybuf dk;
    kb_init(&dk);
    if (n->p.kind != NAME_FILE) {
        node_dir_key(n, &dk);
        if (dk.oom) {
            rc = -ENOMEM;
            goto out;
        }
        if (n->p.kind == NAME_CONT) {
            rc = dir_probe(fs, dk.p, dk.len, &n->attr, &n->stored);
        } else {
            default_dir_attr(fs, &n->attr);
            int st = dc_lookup(fs, dk.p, dk.len, &n->attr, &n->stored);
            if (st == DC_UNKNOWN) {
                uint64_t gen = dc_generation(fs);
                rc = dir_probe(fs, dk.p, dk.len, &n->attr, &n->stored);
                if (!n->stored) default_dir_attr(fs, &n->attr);
                if (rc >= 0)
                    dc_install(fs, gen, dk.p, dk.len, rc == 0 && n->p.kind != NAME_ROOT ? DC_NONE
                                                      : n->stored                     ? DC_EXPLICIT
                                                                                      : DC_IMPLICIT,
                               &n->attr);
            } else {
                rc = st != DC_NONE; /* implicit: defaults, or the times stamped in this session */
            }
        }
        if (rc < 0) goto out;
        if (rc == 1 || n->p.kind == NAME_ROOT) {
            n->type = NODE_DIR;
            if (!n->stored && n->p.kind == NAME_CONT) default_dir_attr(fs, &n->attr);
            rc = 0;
            goto out;
        }
        if (n->p.kind == NAME_CONT) {
            /* A well-formed piece of a cut name is a synthetic directory that always exists, so that tools can
             * create it (mkdir is a no-op) before creating the long-named entry inside. */
            n->type = NODE_DIR;
            default_dir_attr(fs, &n->attr);
            rc = 0;
            goto out;
        }
    }
    rc = file_attr_load(fs, n->p.key, n->p.klen, &n->attr, &n->stored, &n->data);
    if (rc == 0)
        n->type = NODE_FILE;
    else if (rc == -ENOENT)
        rc = 0;
out:
    kb_free(&dk);
    if (rc) node_free(n);
    return rc;
}

/* kept: the bytes of the content the store keeps (size less the holes it knows of), for st_blocks. */
static void fill_stat(const fs_attr *a, uint64_t size, uint64_t kept, uint64_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = (ino_t)ino;
    st->st_mode = a->mode;
    st->st_nlink = 1; /* directories too: subdirectories are not counted (find and fts take 1 as "unknown") */
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_rdev = (dev_t)a->rdev;
    st->st_size = S_ISDIR(a->mode) ? 4096 : (off_t)size;
    st->st_blksize = 1 << 20;
    st->st_blocks = S_ISDIR(a->mode) ? 8 : (blkcnt_t)(((kept < size ? kept : size) + 511) / 512);
    st->st_atim = a->atime;
    st->st_mtim = a->mtime;
    st->st_ctim = a->ctime;
}

void node_stat(kvfs_fs *fs, const fs_node *n, const char *path, struct stat *st) {
    (void)fs;
    fill_stat(&n->attr, n->data.size, n->data.stored, path_ino(path), st);
}

static void file_stat(kvfs_file *f, struct stat *st) {
    pthread_mutex_lock(&f->mu);
    fill_stat(&f->attr, f->size, f->size, f->ino, st); /* what it keeps is known once written back */
    pthread_mutex_unlock(&f->mu);
}

/* The open file of a key, with one more reference so it cannot go away (drop with file_unref). */
static kvfs_file *open_file_ref(kvfs_fs *fs, const uint8_t *key, size_t klen) {
    pthread_mutex_lock(&fs->tbl_mu);
    kvfs_file *f = file_find(fs, key, klen);
    if (f) f->opens++;
    pthread_mutex_unlock(&fs->tbl_mu);
    return f;
}

int kvfs_getattr(kvfs_fs *fs, const char *path, kvfs_file *f, struct stat *st) {
    if (f) {
        file_stat(f, st);
        return 0;
    }
    if (!path) return -ENOENT;
    fs_node n;
    int rc = node_lookup(fs, path, &n);
    if (rc) return rc == -EINVAL ? -ENOENT : rc;
    if (n.type == NODE_NONE) {
        node_free(&n);
        return -ENOENT;
    }
    if (n.type == NODE_FILE) {
        kvfs_file *of = open_file_ref(fs, n.p.key, n.p.klen);
        if (of) {
            file_stat(of, st);
            st->st_ino = (ino_t)path_ino(path);
            kvfs_release(fs, of);
            node_free(&n);
            return 0;
        }
    }
    node_stat(fs, &n, path, st);
    node_free(&n);
    return 0;
}

/* ---- attribute changes ----------------------------------------------------------------------------------------- */

typedef void (*attr_fn)(fs_attr *a, const void *arg);

/* Apply fn (NULL: nothing but the change time) to the attributes of node n, or of the open file f when there is one,
 * stamp ctime, and write them with what b already holds (an xattr's change), in one batch. ns_mu held when f is
 * NULL (a directory's record is also rewritten by changes of its entries: touch_parent). */
static int write_attr(kvfs_fs *fs, fs_node *n, kvfs_file *f, attr_fn fn, const void *arg, store_batch *b) {
    int rc = 0;
    if (f) {
        /* An open file's attributes live in the open file; write the record with them now, or, when written
         * bytes are waiting in its buffer, with them at the next flush (the kernel's writeback cache sends the
         * times of a write between the write and the flush of close: one batch instead of two). */
        pthread_mutex_lock(&f->mu);
        fs_attr old = f->attr;
        if (fn) fn(&f->attr, arg);
        f->attr.ctime = fs_ctime_now();
        if (f->buf_len && f->ks == STORE_KS_DATA) {
            /* the xattr's batch, if any, now; a failed one changes nothing, the ctime neither */
            if (b->n) rc = fs_write_batch(fs, b);
            if (rc)
                f->attr = old;
            else
                f->dirty_attr = true;
        } else {
            file_put_attr(fs, f, b);
            rc = fs_write_batch(fs, b);
            if (rc)
                f->attr = old;
            else
                f->dirty_attr = false, f->attr_stored = true;
        }
        pthread_mutex_unlock(&f->mu);
    } else if (n->p.kind == NAME_CONT) {
        rc = 0; /* a synthetic directory has no attributes to keep: accept and forget (cp -a sets them) */
    } else {
        keybuf mk, dk;
        kb_init(&mk);
        kb_init(&dk);
        if (n->type == NODE_DIR) {
            node_dir_key(n, &dk);
            meta_dir_key(&mk, dk.p, dk.len);
        } else {
            meta_file_key(&mk, n->p.key, n->p.klen);
        }
        if (fn) fn(&n->attr, arg);
        n->attr.ctime = fs_ctime_now();
        uint8_t rec[META_RECORD_BYTES];
        meta_encode(&n->attr, rec);
        store_batch_put(b, STORE_KS_META, mk.p, mk.len, rec, sizeof rec);
        rc = mk.oom || dk.oom ? -ENOMEM : fs_write_batch(fs, b);
        /* An implicit directory gets a record: it is explicit from now on (mapping.md). */
        if (!rc && n->type == NODE_DIR) dc_set(fs, dk.p, dk.len, DC_EXPLICIT, &n->attr, false);
        kb_free(&mk);
        kb_free(&dk);
    }
    return rc;
}

static int change_attr(kvfs_fs *fs, const char *path, kvfs_file *f, attr_fn fn, const void *arg) {
    int rc = 0;
    kvfs_file *held = NULL;
    fs_node n;
    bool have_node = false, locked = false;
    if (!f) {
        if (!path) return -ENOENT;
        /* Under ns_mu: a directory's record is also rewritten by changes of its entries (touch_parent). */
        pthread_mutex_lock(&fs->ns_mu);
        locked = true;
        rc = node_lookup(fs, path, &n);
        if (rc) {
            pthread_mutex_unlock(&fs->ns_mu);
            return rc == -EINVAL ? -ENOENT : rc;
        }
        have_node = true;
        if (n.type == NODE_NONE) {
            rc = -ENOENT;
            goto out;
        }
        if (n.type == NODE_FILE) held = f = open_file_ref(fs, n.p.key, n.p.klen);
    }
    store_batch b;
    store_batch_init(&b);
    rc = write_attr(fs, &n, f, fn, arg, &b);
    store_batch_free(&b);
out:
    if (held) kvfs_release(fs, held);
    if (have_node) node_free(&n);
    if (locked) pthread_mutex_unlock(&fs->ns_mu);
    return rc;
}

static void set_mode(fs_attr *a, const void *arg) {
    mode_t m = *(const mode_t *)arg;
    a->mode = (a->mode & S_IFMT) | (m & 07777);
}

int kvfs_chmod(kvfs_fs *fs, const char *path, kvfs_file *f, mode_t mode) {
    return change_attr(fs, path, f, set_mode, &mode);
}

typedef struct owner_arg {
    uid_t uid;
    gid_t gid;
} owner_arg;

static void set_owner(fs_attr *a, const void *arg) {
    const owner_arg *o = arg;
    if (o->uid != (uid_t)-1) a->uid = o->uid;
    if (o->gid != (gid_t)-1) a->gid = o->gid;
}

int kvfs_chown(kvfs_fs *fs, const char *path, kvfs_file *f, uid_t uid, gid_t gid) {
    owner_arg o = {uid, gid};
    return change_attr(fs, path, f, set_owner, &o);
}

static void set_times(fs_attr *a, const void *arg) {
    const struct timespec *ts = arg;
    struct timespec now = fs_now();
    if (ts[0].tv_nsec != UTIME_OMIT) a->atime = ts[0].tv_nsec == UTIME_NOW ? now : ts[0];
    if (ts[1].tv_nsec != UTIME_OMIT) a->mtime = ts[1].tv_nsec == UTIME_NOW ? now : ts[1];
}

int kvfs_utimens(kvfs_fs *fs, const char *path, kvfs_file *f, const struct timespec ts[2]) {
    struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
    return change_attr(fs, path, f, set_times, ts ? ts : now);
}

/* ---- namespace helpers ----------------------------------------------------------------------------------------- */

/* The directory with key pdk: update its mtime/ctime in b when it has a record (an implicit one gets them in the
 * cache only); its attributes in *pa. */
static int touch_dir(kvfs_fs *fs, const uint8_t *pdk, size_t plen, store_batch *b, fs_attr *pa, bool *pstored) {
    fs_attr a;
    default_dir_attr(fs, &a);
    bool stored = false;
    int st = dc_peek(fs, pdk, plen, &a, &stored, NULL);
    keybuf mk;
    kb_init(&mk);
    meta_dir_key(&mk, pdk, plen);
    if (mk.oom) return -ENOMEM;
    if (st == DC_UNKNOWN) {
        store_buf rec = {0};
        int rc = store_get(fs->st, STORE_KS_META, mk.p, mk.len, &rec, NULL);
        stored = rc == 0 && meta_decode(rec.data, rec.len, &a) && S_ISDIR(a.mode);
        store_buf_free(&rec);
        if (rc && rc != -ENOENT) {
            kb_free(&mk);
            return rc;
        }
        if (!stored) default_dir_attr(fs, &a);
    }
    if (pa) *pa = a;
    if (pstored) *pstored = stored;
    a.mtime = a.ctime = fs_now();
    if (stored) {
        uint8_t out[META_RECORD_BYTES];
        meta_encode(&a, out);
        store_batch_put(b, STORE_KS_META, mk.p, mk.len, out, sizeof out);
    }
    /* Noted ahead of the commit: a failed batch drops the cache (fs_write_batch). */
    dc_touch(fs, pdk, plen, &a);
    kb_free(&mk);
    return 0;
}

/* The parent directory of a node: touch_dir. */
static int touch_parent(kvfs_fs *fs, const fs_node *n, store_batch *b, fs_attr *pa, bool *pstored) {
    return touch_dir(fs, n->p.key, n->p.dir_len, b, pa, pstored);
}

/* After path's entry went away (caller holds ns_mu): when its directory went with it (an implicit directory vanishes
 * with its last entry), the first ancestor that remains has lost an entry, and its mtime and ctime change, as a
 * parent's do (touch_parent did the vanished parent's). Best effort: the removal itself has succeeded. */
static void touch_remaining_ancestor(kvfs_fs *fs, const char *path) {
    char *p = strdup(path);
    if (!p) return;
    bool vanished = false;
    for (char *slash = strrchr(p, '/'); slash; slash = strrchr(p, '/')) {
        slash[slash == p] = 0; /* p is now the parent ("/" for the root) */
        fs_node a;
        if (node_lookup(fs, p, &a)) break;
        bool exists = a.type == NODE_DIR;
        if (exists && vanished) {
            keybuf dk;
            kb_init(&dk);
            node_dir_key(&a, &dk);
            store_batch b;
            store_batch_init(&b);
            if (!dk.oom && touch_dir(fs, dk.p, dk.len, &b, NULL, NULL) == 0 && b.n) (void)fs_write_batch(fs, &b);
            store_batch_free(&b);
            kb_free(&dk);
        }
        node_free(&a);
        if (exists || slash == p) break;
        vanished = true;
    }
    free(p);
}

/* Attributes of a new entry made by who, with the set-group-ID directory rule. */
static int new_entry_attr(kvfs_fs *fs, const fs_node *n, mode_t mode, const kvfs_caller *who, store_batch *b,
                          fs_attr *a) {
    fs_attr pa;
    bool pstored = false;
    int rc = touch_parent(fs, n, b, &pa, &pstored);
    if (rc) return rc;
    memset(a, 0, sizeof *a);
    a->mode = mode;
    a->uid = who ? who->uid : fs->cfg.uid;
    a->gid = who ? who->gid : fs->cfg.gid;
    if (pstored && (pa.mode & S_ISGID)) {
        a->gid = pa.gid;
        if (S_ISDIR(mode)) a->mode |= S_ISGID;
    }
    a->atime = a->mtime = a->ctime = fs_now_coarse();
    return 0;
}

/* Check that path can name a new file; returns the looked-up node. */
static int lookup_for_new(kvfs_fs *fs, const char *path, fs_node *n) {
    int rc = node_lookup(fs, path, n);
    if (rc) return rc;
    /* A "%F" name looks at files only, so a directory of the same key does not stand in its way; without that
     * directory the file's name is the plain one, and "%F" is not a name to create (else "x%F" and "x" would be one
     * file). */
    if (n->p.kind == NAME_ROOT || n->p.kind == NAME_CONT || n->type != NODE_NONE)
        rc = -EEXIST;
    else if (n->p.klen == 0)
        rc = -EINVAL; /* a file needs a non-empty key */
    else if (n->p.kind == NAME_FILE && (rc = dir_exists(fs, n->p.key, n->p.klen)) >= 0)
        rc = rc ? 0 : -EINVAL;
    if (rc) node_free(n);
    return rc;
}

/* Put a new file (content + attribute record) into b. */
static int put_new_file(kvfs_fs *fs, const fs_node *n, mode_t mode, dev_t rdev, const void *content, size_t clen,
                        const kvfs_caller *who, store_batch *b, fs_attr *out) {
    fs_attr a;
    int rc = new_entry_attr(fs, n, mode, who, b, &a);
    if (rc) return rc;
    a.rdev = rdev;
    keybuf mk;
    kb_init(&mk);
    meta_file_key(&mk, n->p.key, n->p.klen);
    uint8_t rec[META_RECORD_BYTES];
    meta_encode(&a, rec);
    store_batch_put(b, STORE_KS_DATA, n->p.key, n->p.klen, content, clen);
    store_batch_put(b, STORE_KS_META, mk.p, mk.len, rec, sizeof rec);
    rc = mk.oom ? -ENOMEM : 0;
    kb_free(&mk);
    if (out) *out = a;
    return rc;
}

/* Create a file (used by kvfs_create in fs_file.c, and by mknod and symlink). ns_mu held by the caller. */
int fs_make_file(kvfs_fs *fs, const char *path, mode_t mode, dev_t rdev, const void *content, size_t clen,
                 const kvfs_caller *who, fs_node *n, fs_attr *a);
int fs_make_file(kvfs_fs *fs, const char *path, mode_t mode, dev_t rdev, const void *content, size_t clen,
                 const kvfs_caller *who, fs_node *n, fs_attr *a) {
    int rc = lookup_for_new(fs, path, n);
    if (rc) return rc;
    store_batch b;
    store_batch_init(&b);
    rc = put_new_file(fs, n, mode, rdev, content, clen, who, &b, a);
    if (!rc) rc = fs_write_batch(fs, &b);
    store_batch_free(&b);
    if (rc) node_free(n);
    return rc;
}

int kvfs_mknod(kvfs_fs *fs, const char *path, mode_t mode, dev_t rdev, const kvfs_caller *who) {
    if (S_ISDIR(mode)) return kvfs_mkdir(fs, path, mode, who);
    if (!S_ISREG(mode) && !S_ISFIFO(mode) && !S_ISSOCK(mode) && !S_ISCHR(mode) && !S_ISBLK(mode)) return -EINVAL;
    pthread_mutex_lock(&fs->ns_mu);
    fs_node n;
    int rc = fs_make_file(fs, path, mode, rdev, "", 0, who, &n, NULL);
    if (!rc) node_free(&n);
    pthread_mutex_unlock(&fs->ns_mu);
    return rc;
}

int kvfs_symlink(kvfs_fs *fs, const char *target, const char *path, const kvfs_caller *who) {
    pthread_mutex_lock(&fs->ns_mu);
    fs_node n;
    int rc = fs_make_file(fs, path, S_IFLNK | 0777, 0, target, strlen(target), who, &n, NULL);
    if (!rc) node_free(&n);
    pthread_mutex_unlock(&fs->ns_mu);
    return rc;
}

int kvfs_readlink(kvfs_fs *fs, const char *path, char *buf, size_t size) {
    if (size == 0) return -EINVAL;
    fs_node n;
    int rc = node_lookup(fs, path, &n);
    if (rc) return rc == -EINVAL ? -ENOENT : rc;
    if (n.type != NODE_FILE)
        rc = n.type == NODE_NONE ? -ENOENT : -EINVAL;
    else if (!S_ISLNK(n.attr.mode))
        rc = -EINVAL;
    else {
        size_t got = 0;
        rc = store_read(fs->st, STORE_KS_DATA, n.p.key, n.p.klen, 0, buf, size - 1, &got);
        buf[rc ? 0 : got] = 0;
    }
    node_free(&n);
    return rc;
}

int kvfs_mkdir(kvfs_fs *fs, const char *path, mode_t mode, const kvfs_caller *who) {
    pthread_mutex_lock(&fs->ns_mu);
    fs_node n;
    int rc = node_lookup(fs, path, &n);
    if (rc) goto unlock;
    if (n.p.kind == NAME_FILE)
        rc = -EINVAL;
    else if (n.p.kind == NAME_CONT)
        goto done; /* a piece of a cut name: exists already, nothing to store */
    else if (n.type != NODE_NONE || n.p.kind != NAME_PLAIN)
        rc = -EEXIST;
    if (!rc) {
        store_batch b;
        store_batch_init(&b);
        fs_attr a;
        rc = new_entry_attr(fs, &n, S_IFDIR | (mode & 07777), who, &b, &a);
        if (!rc) {
            keybuf dk, mk;
            kb_init(&dk);
            kb_init(&mk);
            node_dir_key(&n, &dk);
            meta_dir_key(&mk, dk.p, dk.len);
            uint8_t rec[META_RECORD_BYTES];
            meta_encode(&a, rec);
            store_batch_put(&b, STORE_KS_META, mk.p, mk.len, rec, sizeof rec);
            rc = dk.oom || mk.oom ? -ENOMEM : fs_write_batch(fs, &b);
            if (!rc) dc_set(fs, dk.p, dk.len, DC_EXPLICIT, &a, true);
            kb_free(&dk);
            kb_free(&mk);
        }
        store_batch_free(&b);
    }
done:
    node_free(&n);
unlock:
    pthread_mutex_unlock(&fs->ns_mu);
    return rc;
}

/* ---- entry sets: every key that belongs to a file or a directory subtree ------------------------------------- */

typedef struct item {
    uint8_t ks;
    uint8_t *key;
    size_t klen;
    int64_t ms;  /* write time (scanned items only) */
    bool rec_ok; /* an 'F' record scanned with its value, well-formed: rec */
    fs_attr rec;
} item;

typedef struct itemlist {
    item *v;
    size_t n, cap;
    int err;
    /* filter for a file's xattrs: keep 'X' K 0 name only when the path part is exactly K */
    const uint8_t *xkey;
    size_t xklen;
    uint8_t ks;
} itemlist;

static void items_free(itemlist *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i].key);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static void items_add(itemlist *l, uint8_t ks, const uint8_t *key, size_t klen) {
    if (l->err) return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        item *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) {
            l->err = -ENOMEM;
            return;
        }
        l->v = nv;
        l->cap = cap;
    }
    uint8_t *k = malloc(klen ? klen : 1);
    if (!k) {
        l->err = -ENOMEM;
        return;
    }
    memcpy(k, key, klen);
    l->v[l->n++] = (item){.ks = ks, .key = k, .klen = klen};
}

static int collect(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val, size_t vlen) {
    (void)info, (void)val, (void)vlen;
    itemlist *l = ctx;
    if (l->xkey) {
        const uint8_t *nul = NULL;
        for (size_t i = klen; i-- > 1;)
            if (key[i] == 0) {
                nul = key + i;
                break;
            }
        if (!nul || (size_t)(nul - key - 1) != l->xklen || memcmp(key + 1, l->xkey, l->xklen) != 0) return 0;
    }
    items_add(l, l->ks, key, klen);
    if (l->err) return 1;
    item *it = &l->v[l->n - 1];
    it->ms = info ? info->write_ms : 0;
    if (val && l->ks == STORE_KS_META && klen && key[0] == META_FILE)
        it->rec_ok = meta_decode(val, vlen, &it->rec) && !S_ISDIR(it->rec.mode);
    return 0;
}

/* values: read the values too (only 'F' records are kept, decoded). */
static int collect_prefix(kvfs_fs *fs, itemlist *l, uint8_t ks, const uint8_t *prefix, size_t plen, bool values) {
    uint8_t *end = malloc(plen + 1);
    if (!end) return -ENOMEM;
    size_t elen = store_prefix_end(prefix, plen, end);
    l->ks = ks;
    int rc = store_scan(fs->st, ks, prefix, plen, end, elen, 0, true, values, collect, l);
    free(end);
    return rc ? rc : l->err;
}

/* Can any file have an xattr? When the store holds none (the usual case), unlink and rename need not scan for a
 * file's xattrs: a range scan costs more than the rest of an unlink. ns_mu held. */
static int file_xattrs_possible(kvfs_fs *fs) {
    int v = atomic_load(&fs->file_xattrs);
    if (v >= 0) return v;
    uint8_t x = META_FILE_XATTR;
    v = store_has_prefix(fs->st, STORE_KS_META, &x, 1);
    if (v >= 0) atomic_store(&fs->file_xattrs, v);
    return v;
}

/* A file K: its content, its record, its xattrs. */
static int gather_file(kvfs_fs *fs, const uint8_t *key, size_t klen, bool stored, itemlist *l) {
    items_add(l, STORE_KS_DATA, key, klen);
    keybuf mk;
    kb_init(&mk);
    if (stored) {
        meta_file_key(&mk, key, klen);
        items_add(l, STORE_KS_META, mk.p, mk.len);
    }
    int any = file_xattrs_possible(fs);
    if (any <= 0) {
        kb_free(&mk);
        return any < 0 ? any : l->err;
    }
    meta_xattr_key(&mk, false, key, klen, NULL);
    int rc = mk.oom ? -ENOMEM : 0;
    if (!rc) {
        l->xkey = key;
        l->xklen = klen;
        rc = collect_prefix(fs, l, STORE_KS_META, mk.p, mk.len, false);
        l->xkey = NULL;
    }
    kb_free(&mk);
    return rc ? rc : l->err;
}

/* A directory K: everything whose key starts with K + "/" in data, and with 'D'/'F'/'X'/'Y' K "/" in meta (the
 * write times of all, and the 'F' records themselves: keep_file_times needs them). */
static int gather_dir(kvfs_fs *fs, const uint8_t *key, size_t klen, itemlist *l) {
    keybuf p;
    kb_init(&p);
    kb_add(&p, key, klen);
    kb_byte(&p, '/');
    int rc = p.oom ? -ENOMEM : collect_prefix(fs, l, STORE_KS_DATA, p.p, p.len, false);
    static const char letters[] = {META_DIR, META_FILE, META_FILE_XATTR, META_DIR_XATTR};
    for (size_t i = 0; !rc && i < sizeof letters; i++) {
        kb_reset(&p);
        kb_byte(&p, (uint8_t)letters[i]);
        kb_add(&p, key, klen);
        kb_byte(&p, '/');
        rc = p.oom ? -ENOMEM : collect_prefix(fs, l, STORE_KS_META, p.p, p.len, letters[i] == META_FILE);
    }
    kb_free(&p);
    return rc;
}

/* The key of an item moved from entry root old_key to new_key (data keys start with the path, meta keys one byte
 * later). */
static void rekey(const item *it, size_t olen, const uint8_t *new_key, size_t nlen, keybuf *out) {
    size_t at = it->ks == STORE_KS_DATA ? 0 : 1;
    kb_reset(out);
    kb_add(out, it->key, at);
    kb_add(out, new_key, nlen);
    kb_add(out, it->key + at + olen, it->klen - at - olen);
}

static void orphan_key(kvfs_fs *fs, keybuf *out) {
    char name[40];
    int n = snprintf(name, sizeof name, "o%016llx", (unsigned long long)fs->next_orphan++);
    kb_reset(out);
    kb_add(out, name, (size_t)n);
}

/* ---- unlink, rmdir ---------------------------------------------------------------------------------------------- */

int kvfs_unlink(kvfs_fs *fs, const char *path) {
    pthread_mutex_lock(&fs->ns_mu);
    fs_node n;
    int rc = node_lookup(fs, path, &n);
    if (rc) {
        rc = rc == -EINVAL ? -ENOENT : rc;
        goto unlock;
    }
    if (n.type != NODE_FILE) {
        rc = n.type == NODE_DIR ? -EISDIR : -ENOENT;
        goto done;
    }
    itemlist l = {0};
    store_batch b;
    store_batch_init(&b);
    rc = gather_file(fs, n.p.key, n.p.klen, n.stored, &l);
    bool pstored = false; /* an explicit parent never vanishes: no ancestor to touch then */
    if (!rc) rc = touch_parent(fs, &n, &b, NULL, &pstored);
    pthread_mutex_lock(&fs->tbl_mu);
    kvfs_file *f = rc ? NULL : file_find(fs, n.p.key, n.p.klen);
    keybuf ok;
    kb_init(&ok);
    if (f) {
        /* Still open: its content moves to the orphan keyspace and lives until the last close. */
        pthread_mutex_lock(&f->mu);
        orphan_key(fs, &ok);
        store_batch_move(&b, STORE_KS_DATA, n.p.key, n.p.klen, STORE_KS_ORPHAN, ok.p, ok.len);
    }
    for (size_t i = 0; !rc && i < l.n; i++)
        if (!(f && l.v[i].ks == STORE_KS_DATA)) store_batch_delete(&b, l.v[i].ks, l.v[i].key, l.v[i].klen);
    if (!rc) rc = ok.oom ? -ENOMEM : fs_write_batch(fs, &b);
    if (!rc) dc_removed(fs, n.p.key, n.p.klen);
    if (f) {
        if (!rc) {
            uint8_t *nk = malloc(ok.len);
            if (nk) {
                memcpy(nk, ok.p, ok.len);
                file_make_orphan(fs, f, nk, ok.len, false);
                f->attr.ctime = fs_now();
            } else {
                f->deferred_error = -ENOMEM;
            }
        }
        pthread_mutex_unlock(&f->mu);
    }
    pthread_mutex_unlock(&fs->tbl_mu);
    kb_free(&ok);
    items_free(&l);
    store_batch_free(&b);
    if (!rc && !pstored) touch_remaining_ancestor(fs, path);
done:
    node_free(&n);
unlock:
    pthread_mutex_unlock(&fs->ns_mu);
    return rc;
}

/* Is directory K empty? (its own D record does not count) 1 yes, 0 no, -errno. */
static int dir_is_empty(kvfs_fs *fs, const uint8_t *dkey, size_t dlen) {
    int rc = dlen ? store_has_prefix(fs->st, STORE_KS_DATA, dkey, dlen) : 0;
    if (rc) return rc < 0 ? rc : 0;
    keybuf mk;
    kb_init(&mk);
    meta_dir_key(&mk, dkey, dlen);
    itemlist l = {0};
    uint8_t *end = malloc(mk.len + 1);
    if (!end || mk.oom) {
        free(end);
        kb_free(&mk);
        return -ENOMEM;
    }
    size_t elen = store_prefix_end(mk.p, mk.len, end);
    l.ks = STORE_KS_META;
    rc = store_scan(fs->st, STORE_KS_META, mk.p, mk.len, end, elen, 2, true, false, collect, &l);
    if (!rc) rc = l.err;
    if (!rc) {
        rc = 1;
        for (size_t i = 0; i < l.n; i++)
            if (l.v[i].klen != mk.len) rc = 0;
    }
    items_free(&l);
    free(end);
    kb_free(&mk);
    return rc;
}

int kvfs_rmdir(kvfs_fs *fs, const char *path) {
    pthread_mutex_lock(&fs->ns_mu);
    fs_node n;
    int rc = node_lookup(fs, path, &n);
    if (rc) {
        rc = rc == -EINVAL ? -ENOENT : rc;
        goto unlock;
    }
    /* The kernel sends rmdir only for what it knows as a directory. If no directory is there any more, it was
     * implicit and vanished with its last entry (rm -r removed them): it is gone, as asked. This holds also when a
     * file of the same key remains (the file-and-directory case), which must not make rm -r fail. */
    if (n.p.kind == NAME_ROOT)
        rc = -EBUSY;
    else if (n.type != NODE_DIR && n.p.kind == NAME_PLAIN)
        goto done;
    else if (n.type != NODE_DIR)
        rc = n.type == NODE_FILE ? -ENOTDIR : -ENOENT;
    if (rc) goto done;
    keybuf dk;
    kb_init(&dk);
    node_dir_key(&n, &dk);
    rc = dk.oom ? -ENOMEM : dir_is_empty(fs, dk.p, dk.len);
    if (rc == 0) rc = -ENOTEMPTY;
    if (rc == 1) {
        store_batch b;
        store_batch_init(&b);
        itemlist l = {0};
        keybuf mk;
        kb_init(&mk);
        meta_dir_key(&mk, dk.p, dk.len);
        store_batch_delete(&b, STORE_KS_META, mk.p, mk.len);
        mk.p[0] = META_DIR_XATTR;
        rc = collect_prefix(fs, &l, STORE_KS_META, mk.p, mk.len, false);
        for (size_t i = 0; !rc && i < l.n; i++) store_batch_delete(&b, l.v[i].ks, l.v[i].key, l.v[i].klen);
        bool pstored = false;
        if (!rc) rc = touch_parent(fs, &n, &b, NULL, &pstored);
        if (!rc) rc = fs_write_batch(fs, &b);
        if (!rc) {
            dc_set(fs, dk.p, dk.len, DC_NONE, NULL, false);
            dc_removed(fs, n.p.key, n.p.klen);
        }
        items_free(&l);
        kb_free(&mk);
        store_batch_free(&b);
        if (!rc && !pstored) touch_remaining_ancestor(fs, path);
    }
    kb_free(&dk);
done:
    node_free(&n);
unlock:
    pthread_mutex_unlock(&fs->ns_mu);
    return rc;
}

/* ---- puts and deletes of another writer (the control socket) ---------------------------------------------------- */

/* An open file whose key the batch deletes: its content moves to orphan (malloc'ed before the batch is written, so
 * that pointing the file there cannot fail once the batch is in the store). */
typedef struct moved_open {
    kvfs_file *f;
    uint8_t *orphan;
    size_t olen;
} moved_open;

int kvfs_write_keys(kvfs_fs *fs, const store_batch *in, bool sync) {
    if (in->error) return in->error;
    for (size_t i = 0; i < in->n; i++)
        if (in->ops[i].ks != STORE_KS_DATA || (in->ops[i].kind != STORE_PUT && in->ops[i].kind != STORE_DELETE))
            return -EINVAL;
    /* ns_mu: the mount's own namespace changes (an unlink or rename of one of these keys) commit before or after this
     * batch, never on facts it changes. tbl_mu and each moved file's mu, until the file points at its orphan: a
     * flush through it in between would write to the deleted key and bring it back. */
    pthread_mutex_lock(&fs->ns_mu);
    pthread_mutex_lock(&fs->tbl_mu);
    store_batch b;
    store_batch_init(&b);
    keybuf ok;
    kb_init(&ok);
    moved_open *mv = NULL;
    size_t nmv = 0;
    int rc = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        const store_op *op = &in->ops[i];
        const uint8_t *key = store_op_key(in, op);
        if (op->kind == STORE_PUT) {
            /* nocopy: in outlives b */
            store_batch_put_nocopy(&b, STORE_KS_DATA, key, op->klen, store_op_data(in, op), op->dlen);
            continue;
        }
        /* Its records go with it (attributes, xattrs: gather_file lists the key's own delete first, then them). A key
         * written through the API has no attribute record: no tombstone for one (a batch of a million deletes would
         * carry a million more). */
        itemlist recs = {0};
        keybuf fk;
        kb_init(&fk);
        meta_file_key(&fk, key, op->klen);
        int has = fk.oom ? -ENOMEM : store_stat(fs->st, STORE_KS_META, fk.p, fk.len, &(store_info){0});
        kb_free(&fk);
        rc = has == 0 || has == -ENOENT ? gather_file(fs, key, op->klen, has == 0, &recs) : has;
        for (size_t j = 1; !rc && j < recs.n; j++) store_batch_delete(&b, recs.v[j].ks, recs.v[j].key, recs.v[j].klen);
        items_free(&recs);
        if (rc) break;
        kvfs_file *f = file_find(fs, key, op->klen);
        for (size_t j = 0; f && j < nmv; j++)
            if (mv[j].f == f) f = NULL; /* deleted twice: the key names what b put there since, or nothing */
        if (!f) {
            store_batch_delete(&b, STORE_KS_DATA, key, op->klen);
            continue;
        }
        /* Open: as for kvfs_unlink, the content becomes an orphan that lives until the last close. The move finds
         * its key: an open file's key is in the store (created with the file, and deleted under it by nobody). */
        moved_open *nv = realloc(mv, (nmv + 1) * sizeof *mv);
        if (nv) mv = nv;
        orphan_key(fs, &ok);
        uint8_t *orphan = nv && !ok.oom ? malloc(ok.len) : NULL;
        if (!orphan) {
            rc = -ENOMEM;
            break;
        }
        memcpy(orphan, ok.p, ok.len);
        pthread_mutex_lock(&f->mu);
        mv[nmv++] = (moved_open){f, orphan, ok.len};
        store_batch_move(&b, STORE_KS_DATA, key, op->klen, STORE_KS_ORPHAN, orphan, ok.len);
    }
    if (!rc) rc = fs_write_batch_sync(fs, &b, sync);
    /* Only a written batch moves the files; bytes still in their buffers go to the orphan with them. */
    for (size_t j = 0; j < nmv; j++) {
        kvfs_file *f = mv[j].f;
        if (!rc) {
            file_make_orphan(fs, f, mv[j].orphan, mv[j].olen, true);
            f->attr.ctime = fs_now(); /* it lost its name, as by an unlink */
        } else {
            free(mv[j].orphan);
        }
        pthread_mutex_unlock(&f->mu);
    }
    /* Keys put or deleted make implicit directories appear or vanish: the caches know nothing of it. */
    if (!rc) dc_clear(fs);
    pthread_mutex_unlock(&fs->tbl_mu);
    pthread_mutex_unlock(&fs->ns_mu);
    free(mv);
    kb_free(&ok);
    store_batch_free(&b);
    return rc;
}

int kvfs_write_keys_unmounted(store *st, const store_batch *b, bool sync) {
    kvfs_fs *fs;
    int rc = kvfs_fs_new(st, NULL, &fs);
    if (rc) return rc;
    rc = kvfs_write_keys(fs, b, sync);
    kvfs_fs_free(fs);
    return rc;
}

/* ---- rename ----------------------------------------------------------------------------------------------------- */

static int gather_entry(kvfs_fs *fs, const fs_node *n, itemlist *l) {
    return n->type == NODE_DIR ? gather_dir(fs, n->p.key, n->p.klen, l)
                               : gather_file(fs, n->p.key, n->p.klen, n->stored, l);
}

/* Moves of every item of l from root key (ks, from) to root key to, into b. */
static void move_items(store_batch *b, const itemlist *l, size_t olen, const uint8_t *to, size_t tlen,
                       keybuf *scratch) {
    for (size_t i = 0; i < l->n; i++) {
        rekey(&l->v[i], olen, to, tlen, scratch);
        store_batch_move(b, l->v[i].ks, l->v[i].key, l->v[i].klen, l->v[i].ks, scratch->p, scratch->len);
    }
}

/* The engine stamps a moved value with the time of the move (a move is a put of the same bytes at the new key),
 * and a file without an attribute record (put through the store API), or whose value is newer than its record
 * (rewritten through the API), shows its value's write time as mtime, ctime and atime (file_attr_make). A rename
 * would make those the rename's time, once the caches forget the file. So such a file gets, at its new key and in
 * the rename's batch, a record of the attributes it shows: a local filesystem's rename changes no times but the
 * moved entry's ctime (put_moved_file_record). The record of file K, moved to the file `to`: */
static void put_file_record(store_batch *b, const uint8_t *to, size_t tlen, const fs_attr *a, keybuf *scratch) {
    uint8_t rec[META_RECORD_BYTES];
    meta_encode(a, rec);
    kb_reset(scratch);
    meta_file_key(scratch, to, tlen);
    store_batch_put(b, STORE_KS_META, scratch->p, scratch->len, rec, sizeof rec);
}

/* The record of a directory moved to the place of node `to` (its moves put the old one there first). */
static void put_dir_record(store_batch *b, const fs_node *to, const fs_attr *a, keybuf *scratch) {
    uint8_t rec[META_RECORD_BYTES];
    meta_encode(a, rec);
    keybuf dk;
    kb_init(&dk);
    node_dir_key(to, &dk);
    kb_reset(scratch);
    meta_dir_key(scratch, dk.p, dk.len);
    if (dk.oom) scratch->oom = true;
    if (!scratch->oom) store_batch_put(b, STORE_KS_META, scratch->p, scratch->len, rec, sizeof rec);
    kb_free(&dk);
}

/* The record of the file a rename moves to `to`: its attributes with the rename's ctime. */
static void put_moved_file_record(store_batch *b, const uint8_t *to, size_t tlen, const fs_attr *a,
                                  struct timespec now, keybuf *scratch) {
    fs_attr m = *a;
    m.ctime = now;
    put_file_record(b, to, tlen, &m, scratch);
}

/* The same for directory n moved to the place of node `to`, over the record the move carried there. An implicit
 * directory has none. */
static void put_moved_dir_record(store_batch *b, const fs_node *n, const fs_node *to, struct timespec now,
                                 keybuf *scratch) {
    if (!n->stored) return;
    fs_attr m = n->attr;
    m.ctime = now;
    put_dir_record(b, to, &m, scratch);
}

/* The same for every file of a directory moved from root olen to root `to` (l from gather_dir: its data keys, then
 * its 'F' records, each sorted by key, so one pass pairs them). A file whose record is at least as new as its value
 * needs nothing: the record moves with it and says everything. */
static void keep_file_times(kvfs_fs *fs, const itemlist *l, size_t olen, const uint8_t *to, size_t tlen,
                            store_batch *b, keybuf *scratch) {
    size_t r = 0;
    while (r < l->n && !(l->v[r].ks == STORE_KS_META && l->v[r].key[0] == META_FILE)) r++;
    keybuf nk;
    kb_init(&nk);
    for (size_t i = 0; i < l->n; i++) {
        const item *it = &l->v[i];
        if (it->ks != STORE_KS_DATA) continue;
        const item *rec = NULL;
        for (; r < l->n && l->v[r].ks == STORE_KS_META && l->v[r].key[0] == META_FILE; r++) {
            const item *f = &l->v[r];
            size_t n = f->klen - 1 < it->klen ? f->klen - 1 : it->klen;
            int c = memcmp(f->key + 1, it->key, n);
            if (c > 0 || (c == 0 && f->klen - 1 >= it->klen)) {
                if (c == 0 && f->klen - 1 == it->klen) rec = f;
                break;
            }
        }
        if (rec && rec->rec_ok && it->ms <= rec->ms) continue;
        fs_attr a;
        store_info info = {.write_ms = it->ms};
        file_attr_make(fs, rec && rec->rec_ok ? &rec->rec : NULL, rec ? rec->ms : 0, &info, &a);
        rekey(it, olen, to, tlen, &nk);
        put_file_record(b, nk.p, nk.len, &a, scratch);
    }
    if (nk.oom) scratch->oom = true;
    kb_free(&nk);
}

typedef struct open_list {
    kvfs_file **v;
    size_t n, cap;
} open_list;

/* The open file of key (a file) or (subtree: key is a directory's) the open files below key + "/" (tbl_mu held). A
 * directory's own key is not its file: the file `a` beside directory `a` (shown as "a%F") stays where it is when the
 * directory moves. */
static int open_files_under(kvfs_fs *fs, const uint8_t *key, size_t klen, bool subtree, open_list *out) {
    for (size_t h = 0; h < FS_TABLE_SIZE; h++) {
        for (kvfs_file *f = fs->table[h]; f; f = f->next) {
            bool match = subtree ? f->klen > klen && memcmp(f->key, key, klen) == 0 && f->key[klen] == '/'
                                 : f->klen == klen && memcmp(f->key, key, klen) == 0;
            if (!match) continue;
            if (out->n == out->cap) {
                size_t cap = out->cap ? out->cap * 2 : 8;
                kvfs_file **nv = realloc(out->v, cap * sizeof *nv);
                if (!nv) return -ENOMEM;
                out->v = nv;
                out->cap = cap;
            }
            out->v[out->n++] = f;
        }
    }
    return 0;
}

/* tbl_mu and f->mu held. */
static void file_rehash(kvfs_fs *fs, kvfs_file *f, uint8_t *new_key, size_t nlen) {
    uint64_t h = file_key_hash(f->key, f->klen) % FS_TABLE_SIZE;
    for (kvfs_file **pp = &fs->table[h]; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    free(f->key);
    f->key = new_key;
    f->klen = nlen;
    h = file_key_hash(new_key, nlen) % FS_TABLE_SIZE;
    f->next = fs->table[h];
    fs->table[h] = f;
}

/* Point the open files of list at their new keys (root from -> to). tbl_mu and each file's mu held. */
static void retarget(kvfs_fs *fs, const open_list *ol, size_t olen, const uint8_t *to, size_t tlen) {
    for (size_t i = 0; i < ol->n; i++) {
        kvfs_file *f = ol->v[i];
        size_t nlen = tlen + f->klen - olen;
        uint8_t *nk = malloc(nlen ? nlen : 1);
        if (!nk) {
            f->deferred_error = -ENOMEM;
            continue;
        }
        memcpy(nk, to, tlen);
        memcpy(nk + tlen, f->key + olen, f->klen - olen);
        file_rehash(fs, f, nk, nlen);
    }
}

/* The files a tool deleted while they were open (fs->deleted_open) that the kernel has below directory `from`, which a
 * rename moved to `to` (and, swapped, the other way): the kernel now names them under the new path, and asks about
 * them by it (fstat of their descriptors said ENOENT after a mv of their directory). tbl_mu held. */
static void retarget_deleted(kvfs_fs *fs, const uint8_t *from, size_t flen, const uint8_t *to, size_t tlen,
                             bool exchange) {
    for (kvfs_file *f = fs->deleted_open; f; f = f->next) {
        const uint8_t *nto = to; /* the new prefix, replacing nflen bytes */
        size_t nflen = flen, ntlen = tlen;
        bool below = f->old_klen > flen && f->old_key[flen] == '/' && memcmp(f->old_key, from, flen) == 0;
        if (!below && exchange && f->old_klen > tlen && f->old_key[tlen] == '/' && memcmp(f->old_key, to, tlen) == 0) {
            nflen = tlen, nto = from, ntlen = flen;
            below = true;
        }
        if (!below) continue;
        size_t nlen = ntlen + f->old_klen - nflen;
        uint8_t *nk = malloc(nlen);
        if (!nk) continue; /* the kernel's requests by the new path then find nothing: ENOENT, as before */
        memcpy(nk, nto, ntlen);
        memcpy(nk + ntlen, f->old_key + nflen, f->old_klen - nflen);
        free(f->old_key);
        f->old_key = nk;
        f->old_klen = nlen;
    }
}

int kvfs_rename(kvfs_fs *fs, const char *from, const char *to, unsigned flags) {
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE)) return -EINVAL;
    if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)) return -EINVAL;
    bool exchange = flags & RENAME_EXCHANGE;
    pthread_mutex_lock(&fs->ns_mu);
    fs_node s, d;
    bool have_d = false;
    int rc = node_lookup(fs, from, &s);
    if (rc) {
        rc = rc == -EINVAL ? -ENOENT : rc;
        goto unlock;
    }
    rc = node_lookup(fs, to, &d);
    if (rc) goto free_s;
    have_d = true;
    if (s.type == NODE_NONE) rc = -ENOENT;
    else if (s.p.kind == NAME_ROOT || d.p.kind == NAME_ROOT) rc = -EBUSY;
    else if (s.p.kind == NAME_CONT || d.p.kind == NAME_CONT) rc = -EPERM;
    else if (exchange && d.type == NODE_NONE) rc = -ENOENT;
    else if ((flags & RENAME_NOREPLACE) && d.type != NODE_NONE) rc = -EEXIST;
    else if (!exchange && s.type == NODE_DIR && d.type == NODE_FILE) rc = -ENOTDIR;
    else if (!exchange && s.type == NODE_FILE && d.type == NODE_DIR) rc = -EISDIR;
    else if (d.type == NODE_NONE && d.p.kind == NAME_FILE && s.type == NODE_DIR) rc = -EINVAL; /* as mkdir of it */
    else if (d.type == NODE_NONE && s.type == NODE_FILE && d.p.klen == 0) rc = -EINVAL;
    else if (d.type == NODE_NONE && d.p.kind == NAME_FILE && (rc = dir_exists(fs, d.p.key, d.p.klen)) >= 0)
        rc = rc ? 0 : -EINVAL; /* "x%F" names a new file only beside a directory x (lookup_for_new) */
    if (rc) goto free_all;
    /* Same entry: nothing to do. The file and the directory of one key ("a%F" and "a") cannot trade places: the key
     * decides which is which, so an exchange would change nothing while the kernel swapped its entries. */
    if (s.p.klen == d.p.klen && memcmp(s.p.key, d.p.key, s.p.klen) == 0) {
        if (s.type != d.type) rc = -EINVAL;
        goto free_all;
    }
    /* A directory cannot move into itself (the kernel checks too; keys make it cheap to be sure). */
    if ((s.type == NODE_DIR && d.p.klen > s.p.klen && memcmp(d.p.key, s.p.key, s.p.klen) == 0 &&
         d.p.key[s.p.klen] == '/') ||
        (exchange && d.type == NODE_DIR && s.p.klen > d.p.klen && memcmp(s.p.key, d.p.key, d.p.klen) == 0 &&
         s.p.key[d.p.klen] == '/')) {
        rc = -EINVAL;
        goto free_all;
    }
    if (!exchange && d.type == NODE_DIR) {
        keybuf dk;
        kb_init(&dk);
        node_dir_key(&d, &dk);
        rc = dk.oom ? -ENOMEM : dir_is_empty(fs, dk.p, dk.len);
        kb_free(&dk);
        if (rc == 0) rc = -ENOTEMPTY;
        if (rc < 0) goto free_all;
        rc = 0;
    }

    itemlist sl = {0}, dl = {0};
    store_batch b;
    store_batch_init(&b);
    keybuf scratch, tmp;
    kb_init(&scratch);
    kb_init(&tmp);
    rc = gather_entry(fs, &s, &sl);
    if (!rc && d.type != NODE_NONE) rc = gather_entry(fs, &d, &dl);
    bool spstored = false; /* an explicit source parent never vanishes: no ancestor to touch then */
    if (!rc) rc = touch_parent(fs, &s, &b, NULL, &spstored);
    if (!rc && (s.p.dir_len != d.p.dir_len || memcmp(s.p.key, d.p.key, s.p.dir_len) != 0))
        rc = touch_parent(fs, &d, &b, NULL, NULL);
    pthread_mutex_lock(&fs->tbl_mu);
    open_list so = {0}, dop = {0};
    if (!rc) rc = open_files_under(fs, s.p.key, s.p.klen, s.type == NODE_DIR, &so);
    if (!rc) rc = open_files_under(fs, d.p.key, d.p.klen, d.type == NODE_DIR, &dop);
    keybuf orphan;
    kb_init(&orphan);
    if (!rc && exchange) {
        /* Through a temporary root in the orphan keyspace: s -> tmp, d -> s, tmp -> d. */
        orphan_key(fs, &tmp);
        for (size_t i = 0; i < sl.n; i++) {
            kb_reset(&scratch);
            kb_add(&scratch, tmp.p, tmp.len);
            kb_byte(&scratch, sl.v[i].ks);
            kb_add(&scratch, sl.v[i].key, sl.v[i].klen);
            store_batch_move(&b, sl.v[i].ks, sl.v[i].key, sl.v[i].klen, STORE_KS_ORPHAN, scratch.p, scratch.len);
        }
        move_items(&b, &dl, d.p.klen, s.p.key, s.p.klen, &scratch);
        for (size_t i = 0; i < sl.n; i++) {
            keybuf t2;
            kb_init(&t2);
            kb_add(&t2, tmp.p, tmp.len);
            kb_byte(&t2, sl.v[i].ks);
            kb_add(&t2, sl.v[i].key, sl.v[i].klen);
            rekey(&sl.v[i], s.p.klen, d.p.key, d.p.klen, &scratch);
            store_batch_move(&b, STORE_KS_ORPHAN, t2.p, t2.len, sl.v[i].ks, scratch.p, scratch.len);
            if (t2.oom) rc = -ENOMEM;
            kb_free(&t2);
        }
    } else if (!rc) {
        /* The replaced target goes away first; if it is open, its content becomes an orphan. */
        kvfs_file *open_target = d.type == NODE_FILE && dop.n ? dop.v[0] : NULL;
        if (open_target) orphan_key(fs, &orphan);
        for (size_t i = 0; i < dl.n; i++) {
            if (open_target && dl.v[i].ks == STORE_KS_DATA)
                store_batch_move(&b, STORE_KS_DATA, dl.v[i].key, dl.v[i].klen, STORE_KS_ORPHAN, orphan.p, orphan.len);
            else
                store_batch_delete(&b, dl.v[i].ks, dl.v[i].key, dl.v[i].klen);
        }
        move_items(&b, &sl, s.p.klen, d.p.key, d.p.klen, &scratch);
    }
    if (!rc && (scratch.oom || tmp.oom || orphan.oom)) rc = -ENOMEM;
    /* The open files keep their mu from before the batch until they point at their new keys: a read or a flush
     * through them in between would use a key the batch just moved (a read found nothing there and returned zeros). */
    for (size_t i = 0; i < so.n; i++) pthread_mutex_lock(&so.v[i]->mu);
    for (size_t i = 0; i < dop.n; i++) pthread_mutex_lock(&dop.v[i]->mu);
    /* The files below a moved directory keep their times (keep_file_times); the entry moved (both, for an exchange)
     * keeps its mtime and atime and gets a new ctime, as on a local filesystem (ext4, xfs, btrfs, tmpfs). An open
     * file's attributes are its open file's (given the new ctime once the batch is written). A file's record is
     * rewritten whether needed or not (one small put); an implicit directory has no record to stamp. */
    struct timespec now = fs_now();
    if (!rc && s.type == NODE_FILE)
        put_moved_file_record(&b, d.p.key, d.p.klen, so.n ? &so.v[0]->attr : &s.attr, now, &scratch);
    if (!rc && s.type == NODE_DIR) {
        keep_file_times(fs, &sl, s.p.klen, d.p.key, d.p.klen, &b, &scratch);
        put_moved_dir_record(&b, &s, &d, now, &scratch);
    }
    if (!rc && exchange && d.type == NODE_FILE)
        put_moved_file_record(&b, s.p.key, s.p.klen, dop.n ? &dop.v[0]->attr : &d.attr, now, &scratch);
    if (!rc && exchange && d.type == NODE_DIR) {
        keep_file_times(fs, &dl, d.p.klen, s.p.key, s.p.klen, &b, &scratch);
        put_moved_dir_record(&b, &d, &s, now, &scratch);
    }
    if (!rc && scratch.oom) rc = -ENOMEM;
    if (!rc) rc = fs_write_batch(fs, &b);
    if (!rc) {
        /* Directories moved (or swapped): forget everything; a file leaves its old place only. */
        if (exchange || s.type == NODE_DIR || d.type == NODE_DIR)
            dc_clear(fs);
        else
            dc_removed(fs, s.p.key, s.p.klen);
    }
    if (!rc) {
        if (exchange) {
            retarget(fs, &so, s.p.klen, d.p.key, d.p.klen);
            retarget(fs, &dop, d.p.klen, s.p.key, s.p.klen);
            if (s.type == NODE_FILE && so.n) so.v[0]->attr.ctime = now;
            if (d.type == NODE_FILE && dop.n) dop.v[0]->attr.ctime = now;
        } else {
            if (s.type == NODE_FILE && so.n) so.v[0]->attr.ctime = now;
            if (d.type == NODE_FILE && dop.n) {
                uint8_t *nk = malloc(orphan.len);
                if (nk) {
                    memcpy(nk, orphan.p, orphan.len);
                    file_make_orphan(fs, dop.v[0], nk, orphan.len, false);
                }
            }
            retarget(fs, &so, s.p.klen, d.p.key, d.p.klen);
        }
        if (s.type == NODE_DIR || (exchange && d.type == NODE_DIR))
            retarget_deleted(fs, s.p.key, s.p.klen, d.p.key, d.p.klen, exchange);
    }
    for (size_t i = 0; i < so.n; i++) pthread_mutex_unlock(&so.v[i]->mu);
    for (size_t i = 0; i < dop.n; i++) pthread_mutex_unlock(&dop.v[i]->mu);
    pthread_mutex_unlock(&fs->tbl_mu);
    free(so.v);
    free(dop.v);
    kb_free(&orphan);
    kb_free(&scratch);
    kb_free(&tmp);
    items_free(&sl);
    items_free(&dl);
    store_batch_free(&b);
    if (!rc && !spstored && !(flags & RENAME_EXCHANGE)) touch_remaining_ancestor(fs, from);
free_all:
    if (have_d) node_free(&d);
free_s:
    node_free(&s);
unlock:
    pthread_mutex_unlock(&fs->ns_mu);
    return rc;
}

/* ---- extended attributes ---------------------------------------------------------------------------------------- */

/* Only the user.* namespace is kept. Other names get ENOTSUP, never ENODATA: that is the answer of a filesystem
 * without ACL or security-label support, and `ls -l` (gnulib's file_has_acl, coreutils' getfilecon_cache) stops
 * asking a device that gave it once, where ENODATA makes it ask for every listed file (two round trips each). */
static bool user_xattr(const char *name) { return strncmp(name, "user.", 5) == 0 && name[5] != 0; }

/* The meta key of xattr name of the entry at path. With keep non-NULL, the entry's node is left there (the caller
 * frees it), for the change of its ctime that a set or remove makes. */
static int xattr_key(kvfs_fs *fs, const char *path, const char *name, keybuf *out, fs_node *keep) {
    fs_node n;
    int rc = node_lookup(fs, path, &n);
    if (rc) return rc == -EINVAL ? -ENOENT : rc;
    if (n.type == NODE_NONE || n.p.kind == NAME_CONT) {
        node_free(&n);
        return n.type == NODE_NONE ? -ENOENT : -ENOTSUP;
    }
    if (n.type == NODE_DIR) {
        keybuf dk;
        kb_init(&dk);
        node_dir_key(&n, &dk);
        meta_xattr_key(out, true, dk.p, dk.len, name);
        kb_free(&dk);
    } else {
        meta_xattr_key(out, false, n.p.key, n.p.klen, name);
    }
    if (keep)
        *keep = n;
    else
        node_free(&n);
    return out->oom ? -ENOMEM : 0;
}

/* Write b (an xattr's change of entry n) with n's new ctime, as a local filesystem changes it (ns_mu held). An
 * implicit directory gets a record and is explicit from then on, as by chmod: it vanishes with its last key, and
 * its xattrs would otherwise stay behind, to reappear on a directory of the same name made later. */
static int write_xattr_change(kvfs_fs *fs, fs_node *n, store_batch *b) {
    kvfs_file *of = n->type == NODE_FILE ? open_file_ref(fs, n->p.key, n->p.klen) : NULL;
    int rc = write_attr(fs, n, of, NULL, NULL, b);
    if (of) kvfs_release(fs, of);
    return rc;
}

int kvfs_setxattr(kvfs_fs *fs, const char *path, const char *name, const void *value, size_t size, int flags) {
    if (!user_xattr(name)) return -ENOTSUP;
    keybuf k;
    kb_init(&k);
    fs_node n;
    pthread_mutex_lock(&fs->ns_mu);
    int rc = xattr_key(fs, path, name, &k, &n);
    if (rc) goto unlock;
    if (flags & (XATTR_CREATE | XATTR_REPLACE)) {
        store_info info;
        int ex = store_stat(fs->st, STORE_KS_META, k.p, k.len, &info);
        if (ex && ex != -ENOENT) rc = ex;
        else if ((flags & XATTR_CREATE) && ex == 0) rc = -EEXIST;
        else if ((flags & XATTR_REPLACE) && ex == -ENOENT) rc = -ENODATA;
    }
    if (!rc) {
        store_batch b;
        store_batch_init(&b);
        store_batch_put(&b, STORE_KS_META, k.p, k.len, value, size);
        if (k.len && k.p[0] == META_FILE_XATTR) atomic_store(&fs->file_xattrs, 1); /* before: unlink must see it */
        rc = write_xattr_change(fs, &n, &b);
        store_batch_free(&b);
    }
    node_free(&n);
unlock:
    pthread_mutex_unlock(&fs->ns_mu);
    kb_free(&k);
    return rc;
}

ssize_t kvfs_getxattr(kvfs_fs *fs, const char *path, const char *name, void *value, size_t size) {
    if (!user_xattr(name)) return -ENOTSUP;
    keybuf k;
    kb_init(&k);
    ssize_t rc = xattr_key(fs, path, name, &k, NULL);
    if (!rc) {
        store_buf v = {0};
        rc = store_get(fs->st, STORE_KS_META, k.p, k.len, &v, NULL);
        if (rc == -ENOENT)
            rc = -ENODATA;
        else if (rc == 0) {
            if (size == 0)
                rc = (ssize_t)v.len;
            else if (size < v.len)
                rc = -ERANGE;
            else {
                if (v.len) memcpy(value, v.data, v.len);
                rc = (ssize_t)v.len;
            }
        }
        store_buf_free(&v);
    }
    kb_free(&k);
    return rc;
}

typedef struct xlist {
    size_t prefix_len; /* bytes before the name in each key */
    char *out;
    size_t size, used;
    int err;
} xlist;

static int xlist_add(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val,
                     size_t vlen) {
    (void)info, (void)val, (void)vlen;
    xlist *x = ctx;
    if (klen <= x->prefix_len || memchr(key + x->prefix_len, 0, klen - x->prefix_len)) return 0; /* another path */
    size_t n = klen - x->prefix_len;
    if (x->size) {
        if (x->used + n + 1 > x->size) {
            x->err = -ERANGE;
            return 1;
        }
        memcpy(x->out + x->used, key + x->prefix_len, n);
        x->out[x->used + n] = 0;
    }
    x->used += n + 1;
    return 0;
}

ssize_t kvfs_listxattr(kvfs_fs *fs, const char *path, char *list, size_t size) {
    keybuf k;
    kb_init(&k);
    int rc = xattr_key(fs, path, NULL, &k, NULL);
    if (rc == -ENOTSUP) rc = 0, k.len = 0;
    if (rc || k.len == 0) {
        kb_free(&k);
        return rc;
    }
    uint8_t *end = malloc(k.len + 1);
    if (!end) {
        kb_free(&k);
        return -ENOMEM;
    }
    size_t elen = store_prefix_end(k.p, k.len, end);
    xlist x = {.prefix_len = k.len, .out = list, .size = size};
    rc = store_scan(fs->st, STORE_KS_META, k.p, k.len, end, elen, 0, true, false, xlist_add, &x);
    free(end);
    kb_free(&k);
    if (rc) return rc;
    if (x.err) return x.err;
    return (ssize_t)x.used;
}

int kvfs_removexattr(kvfs_fs *fs, const char *path, const char *name) {
    if (!user_xattr(name)) return -ENOTSUP;
    keybuf k;
    kb_init(&k);
    fs_node n;
    pthread_mutex_lock(&fs->ns_mu);
    int rc = xattr_key(fs, path, name, &k, &n);
    if (rc) goto unlock;
    store_info info;
    rc = store_stat(fs->st, STORE_KS_META, k.p, k.len, &info);
    if (rc == -ENOENT) rc = -ENODATA;
    if (!rc) {
        store_batch b;
        store_batch_init(&b);
        store_batch_delete(&b, STORE_KS_META, k.p, k.len);
        rc = write_xattr_change(fs, &n, &b);
        store_batch_free(&b);
    }
    node_free(&n);
unlock:
    pthread_mutex_unlock(&fs->ns_mu);
    kb_free(&k);
    return rc;
}

int kvfs_statfs(kvfs_fs *fs, struct statvfs *out) {
    int rc = store_statfs(fs->st, out);
    if (!rc) out->f_namemax = NAMES_MAX;
    return rc;
}

/* ---- lifetime ------------------------------------------------------------------------------------------------- */

static int collect_all(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val,
                       size_t vlen) {
    (void)info, (void)val, (void)vlen;
    itemlist *l = ctx;
    items_add(l, STORE_KS_ORPHAN, key, klen);
    return l->err != 0 || l->n >= 1000;
}

int kvfs_fs_new(store *st, const kvfs_config *cfg, kvfs_fs **out) {
    kvfs_fs *fs = calloc(1, sizeof *fs);
    if (!fs) return -ENOMEM;
    fs->st = st;
    if (cfg)
        fs->cfg = *cfg;
    else
        kvfs_config_init(&fs->cfg);
    if (fs->cfg.write_buffer_bytes < 4096) fs->cfg.write_buffer_bytes = 4096;
    fs->started = fs_now();
    pthread_mutex_init(&fs->ns_mu, NULL);
    pthread_mutex_init(&fs->tbl_mu, NULL);
    /* Contents of files unlinked while open at the last run: nobody can reach them any more. */
    int rc = 0;
    for (;;) {
        itemlist l = {0};
        rc = store_scan(st, STORE_KS_ORPHAN, "", 0, NULL, 0, 0, true, false, collect_all, &l);
        if (!rc) rc = l.err;
        if (!rc && l.n) {
            store_batch b;
            store_batch_init(&b);
            for (size_t i = 0; i < l.n; i++) store_batch_delete(&b, STORE_KS_ORPHAN, l.v[i].key, l.v[i].klen);
            rc = store_write(st, &b, false);
            store_batch_free(&b);
        }
        size_t n = l.n;
        items_free(&l);
        if (rc || n == 0) break;
    }
    if (rc == -EROFS) rc = 0; /* a read-only mount leaves them for the next writable one */
    if (!rc) rc = dc_init(fs);
    atomic_store(&fs->file_xattrs, -1);
    if (rc) {
        pthread_mutex_destroy(&fs->ns_mu);
        pthread_mutex_destroy(&fs->tbl_mu);
        free(fs);
        return rc;
    }
    *out = fs;
    return 0;
}
