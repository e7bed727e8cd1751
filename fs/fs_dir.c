/*
 * fs_dir.c — directory listings: a merge of two range scans (data keys of keyspace 0 below the directory's key, and
 * explicit-directory records 'D' of keyspace 1) that steps over each child's subtree.
 *
 * Invariants
 *  - Entries come in the order of their sort key: a file child c sorts at P c (P = the directory's key prefix), a
 *    directory child at P c "/", where its whole subtree of keys also lies. After a directory child the scans jump
 *    to P c "0" ('/' + 1): its descendants are never read, so listing costs O(children), not O(descendants).
 *  - A listing resumes from the sort-key position after the last entry the caller accepted (kept in the handle
 *    with that entry's cookie), so entries added or removed meanwhile cause neither repeats nor misses of the
 *    others, and memory does not depend on the directory's size. Cookies are ordinals; an unknown cookie (seekdir
 *    to an old position) is honoured by listing again from the start and skipping that many entries.
 *  - Scans fetch a bounded number of keys at a time (CURSOR_BATCH).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs_internal.h"

#define CURSOR_BATCH 64

typedef struct cur_ent {
    uint8_t *key; /* without the keyspace-1 lead byte */
    size_t klen;
    store_info info;
} cur_ent;

typedef struct cursor {
    kvfs_fs *fs;
    uint8_t ks;
    bool lead;          /* keys carry the 'D' byte in front */
    keybuf end;         /* exclusive end of the scan (own keyspace) */
    keybuf pos;         /* where the next fetch starts (own keyspace) */
    cur_ent ents[CURSOR_BATCH];
    int n, i;
    bool eof;
    int err;
} cursor;

static int cur_collect(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val,
                       size_t vlen) {
    (void)val, (void)vlen;
    cursor *c = ctx;
    size_t skip = c->lead ? 1 : 0;
    uint8_t *k = malloc(klen - skip + 1);
    if (!k) {
        c->err = -ENOMEM;
        return 1;
    }
    memcpy(k, key + skip, klen - skip);
    c->ents[c->n++] = (cur_ent){k, klen - skip, *info};
    return c->n == CURSOR_BATCH;
}

static void cur_clear(cursor *c) {
    for (int j = 0; j < c->n; j++) free(c->ents[j].key);
    c->n = c->i = 0;
}

static void cur_free(cursor *c) {
    cur_clear(c);
    kb_free(&c->end);
    kb_free(&c->pos);
}

/* Set the cursor to start at data-space position pos (prefix: the data-space prefix of the listing). */
static void cur_init(cursor *c, kvfs_fs *fs, uint8_t ks, bool lead, const uint8_t *prefix, size_t plen,
                     const uint8_t *pos, size_t poslen) {
    memset(c, 0, sizeof *c);
    c->fs = fs;
    c->ks = ks;
    c->lead = lead;
    kb_init(&c->end);
    kb_init(&c->pos);
    if (lead) kb_byte(&c->end, META_DIR);
    kb_add(&c->end, prefix, plen);
    uint8_t *e = malloc(c->end.len + 1);
    size_t elen = e ? store_prefix_end(c->end.p, c->end.len, e) : 0;
    if (!e) c->err = -ENOMEM;
    kb_reset(&c->end);
    kb_add(&c->end, e, elen);
    free(e);
    if (lead) kb_byte(&c->pos, META_DIR);
    kb_add(&c->pos, pos, poslen);
    if (c->end.oom || c->pos.oom) c->err = -ENOMEM;
    if (plen == 0 && !lead) c->end.len = 0; /* the root of keyspace 0: no upper bound */
}

/* The current key, fetching more when needed; NULL at the end or on error (c->err). */
static cur_ent *cur_peek(cursor *c) {
    if (c->i < c->n) return &c->ents[c->i];
    if (c->eof || c->err) return NULL;
    cur_clear(c);
    int rc = store_scan(c->fs->st, c->ks, c->pos.p, c->pos.len, c->end.p, c->end.len, CURSOR_BATCH, true, false,
                        cur_collect, c);
    if (rc) c->err = rc;
    if (c->n < CURSOR_BATCH) c->eof = true;
    if (c->n == 0) return NULL;
    /* Next fetch starts just after the last key fetched. */
    cur_ent *last = &c->ents[c->n - 1];
    kb_reset(&c->pos);
    if (c->lead) kb_byte(&c->pos, META_DIR);
    kb_add(&c->pos, last->key, last->klen);
    kb_byte(&c->pos, 0);
    if (c->pos.oom) c->err = -ENOMEM;
    return &c->ents[0];
}

static int keycmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int r = n ? memcmp(a, b, n) : 0;
    return r ? r : (al > bl) - (al < bl);
}

/* Move past every key below data-space position to. */
static void cur_skip_to(cursor *c, const uint8_t *to, size_t tlen) {
    while (c->i < c->n && keycmp(c->ents[c->i].key, c->ents[c->i].klen, to, tlen) < 0) c->i++;
    if (c->i == c->n && !c->eof) {
        kb_reset(&c->pos);
        if (c->lead) kb_byte(&c->pos, META_DIR);
        kb_add(&c->pos, to, tlen);
        if (c->pos.oom) c->err = -ENOMEM;
    }
}

struct kvfs_dir {
    pthread_mutex_t mu;
    char *path;          /* the directory's FUSE path, for the children's inode numbers */
    size_t path_len;
    fs_node node;
    keybuf prefix;       /* data-space prefix of the children's keys */
    size_t comp_start;   /* where a child's component starts in a key */
    keybuf resume;       /* data-space position after the last accepted entry */
    off_t last_off;      /* its cookie */
    char last_cont[NAMES_MAX + 1];
};

int kvfs_opendir(kvfs_fs *fs, const char *path, kvfs_dir **out) {
    kvfs_dir *d = calloc(1, sizeof *d);
    if (!d) return -ENOMEM;
    int rc = node_lookup(fs, path, &d->node);
    if (rc) {
        free(d);
        return rc == -EINVAL ? -ENOENT : rc;
    }
    if (d->node.type != NODE_DIR) {
        rc = d->node.type == NODE_FILE ? -ENOTDIR : -ENOENT;
        node_free(&d->node);
        free(d);
        return rc;
    }
    d->path = strdup(path);
    d->path_len = strlen(path);
    kb_init(&d->prefix);
    kb_init(&d->resume);
    node_dir_key(&d->node, &d->prefix);
    d->comp_start = d->node.p.kind == NAME_CONT ? d->node.p.dir_len : d->prefix.len;
    if (!d->path || d->prefix.oom) {
        kvfs_releasedir(fs, d);
        return -ENOMEM;
    }
    /* A listing is coming, with every entry's attributes (readdirplus): read them all in one pass now. */
    if (d->node.p.kind != NAME_CONT) dc_prefetch(fs, d->prefix.p, d->prefix.len);
    pthread_mutex_init(&d->mu, NULL);
    *out = d;
    return 0;
}

void kvfs_releasedir(kvfs_fs *fs, kvfs_dir *d) {
    (void)fs;
    if (!d) return;
    node_free(&d->node);
    kb_free(&d->prefix);
    kb_free(&d->resume);
    free(d->path);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* One child as the merge sees it. */
typedef struct child {
    bool is_dir;
    const uint8_t *sort; /* data-space sort key (P c, or P c "/") */
    size_t slen;
    size_t comp_end;     /* the component is sort[comp_start .. comp_end) */
    store_info info;
} child;

static bool head_child(const kvfs_dir *d, const cur_ent *e, bool meta, child *ch) {
    const uint8_t *sl = memchr(e->key + d->prefix.len, '/', e->klen - d->prefix.len);
    ch->sort = e->key;
    ch->info = e->info;
    if (sl) {
        ch->is_dir = true;
        ch->comp_end = (size_t)(sl - e->key);
        ch->slen = ch->comp_end + 1;
    } else {
        if (meta) return false; /* malformed: every D key ends in '/' */
        ch->is_dir = false;
        ch->comp_end = e->klen;
        ch->slen = e->klen;
    }
    return true;
}

/* Is there a directory P c beside the file P c? Answers from the cursors' next keys when they can tell. */
static int has_dir_too(kvfs_fs *fs, cursor *data, cursor *meta, const uint8_t *s, size_t slen) {
    keybuf k;
    kb_init(&k);
    kb_add(&k, s, slen);
    kb_byte(&k, '/');
    if (k.oom) return -ENOMEM;
    int rc = -1;
    for (int which = 0; which < 2 && rc != 1; which++) {
        cursor *c = which ? meta : data;
        cur_ent *e = cur_peek(c);
        int known = -1;
        if (!e)
            known = c->err ? -1 : 0;
        else if (e->klen >= k.len && memcmp(e->key, k.p, k.len) == 0)
            known = 1;
        else if (keycmp(e->key, e->klen, k.p, k.len) > 0)
            known = 0;
        if (known < 0) {
            /* Something sorts between the file and its directory ("c!" before "c/"): ask the store. */
            keybuf q;
            kb_init(&q);
            if (which) kb_byte(&q, META_DIR);
            kb_add(&q, k.p, k.len);
            known = q.oom ? -ENOMEM : store_has_prefix(fs->st, which ? STORE_KS_META : STORE_KS_DATA, q.p, q.len);
            kb_free(&q);
            if (known < 0) {
                kb_free(&k);
                return known;
            }
        }
        if (known == 1) rc = 1;
    }
    kb_free(&k);
    return rc == 1 ? 1 : 0;
}

/* Attributes of a listed child (for readdirplus and d_type). */
static void child_stat(kvfs_fs *fs, const kvfs_dir *d, const child *ch, bool cont, const char *name,
                       struct stat *st) {
    fs_attr a;
    bool stored = false;
    uint64_t size = 0, kept = 0;
    memset(&a, 0, sizeof a);
    if (ch->is_dir || cont) {
        a.mode = S_IFDIR | (fs->cfg.dir_mode & 07777);
        a.uid = fs->cfg.uid;
        a.gid = fs->cfg.gid;
        a.atime = a.mtime = a.ctime = fs->started;
        int st = cont ? DC_UNKNOWN : dc_peek(fs, ch->sort, ch->slen, &a, NULL, NULL);
        if (!cont && st == DC_UNKNOWN) {
            keybuf mk;
            kb_init(&mk);
            meta_dir_key(&mk, ch->sort, ch->slen);
            store_buf rec = {0};
            fs_attr ra;
            if (!mk.oom && store_get(fs->st, STORE_KS_META, mk.p, mk.len, &rec, NULL) == 0 &&
                meta_decode(rec.data, rec.len, &ra) && S_ISDIR(ra.mode))
                a = ra;
            store_buf_free(&rec);
            kb_free(&mk);
        }
    } else {
        store_info data;
        if (file_attr_load(fs, ch->sort, ch->slen, &a, &stored, &data) == 0) size = data.size, kept = data.stored;
        else a.mode = S_IFREG | (fs->cfg.file_mode & 07777);
        pthread_mutex_lock(&fs->tbl_mu);
        kvfs_file *f = file_find(fs, ch->sort, ch->slen);
        if (f) {
            pthread_mutex_lock(&f->mu);
            a = f->attr;
            size = kept = f->size; /* what an open file keeps is not known before it is written back */
            pthread_mutex_unlock(&f->mu);
        }
        pthread_mutex_unlock(&fs->tbl_mu);
    }
    memset(st, 0, sizeof *st);
    st->st_mode = a.mode;
    st->st_nlink = 1;
    st->st_uid = a.uid;
    st->st_gid = a.gid;
    st->st_rdev = (dev_t)a.rdev;
    st->st_size = S_ISDIR(a.mode) ? 4096 : (off_t)size;
    st->st_blksize = 1 << 20;
    st->st_blocks = S_ISDIR(a.mode) ? 8 : (blkcnt_t)(((kept < size ? kept : size) + 511) / 512);
    st->st_atim = a.atime;
    st->st_mtim = a.mtime;
    st->st_ctim = a.ctime;
    /* The inode number is the hash of the child's path. */
    size_t nlen = strlen(name);
    char small[512];
    char *p = d->path_len + nlen + 2 <= sizeof small ? small : malloc(d->path_len + nlen + 2);
    if (p) {
        size_t at = d->path_len;
        memcpy(p, d->path, at);
        if (at == 0 || p[at - 1] != '/') p[at++] = '/';
        memcpy(p + at, name, nlen + 1);
        st->st_ino = (ino_t)path_ino(p);
        if (p != small) free(p);
    }
}

int kvfs_readdir(kvfs_fs *fs, kvfs_dir *d, off_t off, bool plus, kvfs_fill_fn fill, void *ctx) {
    (void)plus; /* attributes are cheap enough to give always, and d_type needs the record anyway */
    pthread_mutex_lock(&d->mu);
    int rc = 0;
    off_t skip = 0; /* entries to pass over silently (after an unknown cookie) */
    if (off == 0 || off != d->last_off) {
        if (off != 0) skip = off;
        kb_reset(&d->resume);
        kb_add(&d->resume, d->prefix.p, d->prefix.len);
        d->last_off = 0;
        d->last_cont[0] = 0;
    }
    struct stat st;
    /* "." and ".." are cookies 1 and 2. */
    while (d->last_off < 2) {
        memset(&st, 0, sizeof st);
        st.st_mode = S_IFDIR;
        /* Never inode 0: readdir(3) hides entries whose d_ino is 0. */
        st.st_ino = (ino_t)path_ino(d->path);
        const char *name = d->last_off == 0 ? "." : "..";
        if (skip <= d->last_off && fill(ctx, name, &st, d->last_off + 1)) goto out;
        d->last_off++;
    }
    cursor data, meta;
    cur_init(&data, fs, STORE_KS_DATA, false, d->prefix.p, d->prefix.len, d->resume.p, d->resume.len);
    cur_init(&meta, fs, STORE_KS_META, true, d->prefix.p, d->prefix.len, d->resume.p, d->resume.len);
    keybuf next, sortk;
    kb_init(&next);
    kb_init(&sortk);
    const char *esc = d->node.p.kind == NAME_CONT ? d->node.p.esc_partial : "";
    size_t esc_len = d->node.p.kind == NAME_CONT ? d->node.p.esc_len : 0;
    int pieces = d->node.p.kind == NAME_CONT ? d->node.p.pieces : 0;
    for (;;) {
        cur_ent *de = cur_peek(&data), *me = cur_peek(&meta);
        if (data.err || meta.err) {
            rc = data.err ? data.err : meta.err;
            break;
        }
        if (!de && !me) break;
        child dc, mc, ch;
        bool dok = de && head_child(d, de, false, &dc);
        bool mok = me && head_child(d, me, true, &mc);
        if (me && !mok) {
            meta.i++; /* skip a malformed record */
            continue;
        }
        int cmp = !dok ? 1 : !mok ? -1 : keycmp(dc.sort, dc.slen, mc.sort, mc.slen);
        ch = cmp <= 0 ? dc : mc;
        /* A copy of the sort key: the cursors free their keys when they fetch more (has_dir_too may). */
        kb_reset(&sortk);
        kb_add(&sortk, ch.sort, ch.slen);
        if (sortk.oom) {
            rc = -ENOMEM;
            break;
        }
        ch.sort = sortk.p;
        /* The position after this entry: past the subtree of a directory, just past the key of a file. */
        kb_reset(&next);
        kb_add(&next, ch.sort, ch.slen);
        if (ch.is_dir)
            next.p[next.len - 1] = '/' + 1;
        else
            kb_byte(&next, 0);
        if (next.oom) {
            rc = -ENOMEM;
            break;
        }
        bool dual = false;
        if (!ch.is_dir) {
            data.i++; /* consumed the file's key */
            int r = has_dir_too(fs, &data, &meta, ch.sort, ch.slen);
            if (r < 0) {
                rc = r;
                break;
            }
            dual = r == 1;
        }
        char name[NAMES_MAX + 1];
        bool cont = false;
        int nl = names_child_name(ch.sort + d->comp_start, ch.comp_end - d->comp_start, dual, esc, esc_len, pieces,
                                  name, &cont);
        if (ch.is_dir) {
            cur_skip_to(&data, next.p, next.len);
            cur_skip_to(&meta, next.p, next.len);
        }
        if (nl < 0) {
            rc = nl;
            break;
        }
        bool show = nl > 0 && !(cont && strcmp(name, d->last_cont) == 0);
        if (show) {
            if (skip > d->last_off) {
                d->last_off++;
            } else {
                child_stat(fs, d, &ch, cont, name, &st);
                if (fill(ctx, name, &st, d->last_off + 1)) break; /* not taken: resume before it */
                d->last_off++;
            }
            if (cont) memcpy(d->last_cont, name, (size_t)nl + 1);
        }
        kb_reset(&d->resume);
        kb_add(&d->resume, next.p, next.len);
        if (d->resume.oom) {
            rc = -ENOMEM;
            break;
        }
    }
    kb_free(&next);
    kb_free(&sortk);
    cur_free(&data);
    cur_free(&meta);
out:
    pthread_mutex_unlock(&d->mu);
    return rc;
}
