/*
 * fs_dcache.c — a bounded in-memory cache of directory facts, so that looking up a path does point lookups (or
 * nothing) instead of range scans.
 *
 * What it holds, per directory key DK (K + "/", or "" for the root): whether DK is a directory (explicit, with its
 * attribute record, or implicit), or is known not to be one; and, once loaded, that every child directory of DK is
 * in the cache ("kids known"): then a name missing from the cache is not a directory, which answers the question
 * "is this file also a directory?" of every file lookup without a scan. A directory's child directories are loaded
 * with one pass over its children (the listing's subtree-skipping scan); a directory with more than
 * DC_KIDS_SCAN_MAX children is marked too big and its lookups probe the store one by one, as without the cache.
 *
 * Invariants
 *  - The cache only ever answers what the store says. The daemon writes through fs_write_batch, which counts its
 *    batches; any other writer (the control socket, a test writing to the store directly) makes the store's
 *    sequence run ahead of that count, and the whole cache is dropped at the next look (dc_check_external). A failed
 *    write drops the cache too.
 *  - "kids known" on DK implies every child directory of DK has an entry. Dropping a directory's entry clears its
 *    parent's "kids known".
 *  - Namespace changes (ns_mu held) update the cache after their batch is committed and bump the generation; facts
 *    loaded from the store by lookups (which do not hold ns_mu) are installed only if no namespace change happened
 *    since they started reading, so a stale read never overwrites a newer fact.
 *  - Memory is bounded: at DC_MAX_ENTRIES entries the whole cache is dropped and starts again.
 *  - Implicit directories have no record; a change of their entries stamps mtime/ctime here only (shown until the
 *    entry is dropped or the daemon restarts; then the mount's start time is shown again).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "fs_internal.h"

#define DC_BUCKETS 16384
#define DC_MAX_ENTRIES 131072
#define DC_KIDS_SCAN_MAX 200000
#define FC_BUCKETS 65536
#define FC_MAX_ENTRIES 262144

typedef struct dent {
    struct dent *next;
    uint64_t hash;
    uint8_t *dk;
    size_t dlen;
    int state;      /* DC_NONE, DC_IMPLICIT, DC_EXPLICIT */
    int kids;       /* KIDS_UNKNOWN, KIDS_KNOWN, KIDS_TOO_MANY */
    bool times;     /* implicit: attr.mtime/ctime were stamped in this session */
    fs_attr attr;   /* explicit: the record; implicit with times: the stamped times */
} dent;

enum { KIDS_UNKNOWN, KIDS_KNOWN, KIDS_TOO_MANY };

/* Attributes of a file (closed or open: open files' live state is merged in by the callers). */
typedef struct fent {
    struct fent *next;
    uint64_t hash;
    uint8_t *key;
    size_t klen;
    fs_attr attr;
    bool stored;
    store_info data;
} fent;

struct dcache {
    pthread_mutex_t mu;
    dent **tab;
    size_t n;
    uint64_t gen;
    fent **ftab;
    size_t fn;
    uint64_t fgen;  /* bumped whenever file entries are dropped */
    uint64_t seq_base; /* store sequence minus the daemon's own batches: changes when someone else writes */
};

int dc_init(kvfs_fs *fs) {
    dcache *c = calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    c->tab = calloc(DC_BUCKETS, sizeof *c->tab);
    c->ftab = calloc(FC_BUCKETS, sizeof *c->ftab);
    if (!c->tab || !c->ftab) {
        free(c->tab);
        free(c->ftab);
        free(c);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->mu, NULL);
    atomic_store(&fs->batches, 0);
    c->seq_base = store_sequence(fs->st);
    fs->dc = c;
    return 0;
}

static void fclear_locked(dcache *c) {
    for (size_t h = 0; h < FC_BUCKETS; h++) {
        fent *f = c->ftab[h];
        while (f) {
            fent *next = f->next;
            free(f->key);
            free(f);
            f = next;
        }
        c->ftab[h] = NULL;
    }
    c->fn = 0;
    c->fgen++;
}

static void clear_locked(dcache *c) {
    fclear_locked(c);
    for (size_t h = 0; h < DC_BUCKETS; h++) {
        dent *d = c->tab[h];
        while (d) {
            dent *next = d->next;
            free(d->dk);
            free(d);
            d = next;
        }
        c->tab[h] = NULL;
    }
    c->n = 0;
    c->gen++;
}

void dc_free(kvfs_fs *fs) {
    dcache *c = fs->dc;
    if (!c) return;
    clear_locked(c);
    free(c->tab);
    free(c->ftab);
    pthread_mutex_destroy(&c->mu);
    free(c);
    fs->dc = NULL;
}

void dc_clear(kvfs_fs *fs) {
    dcache *c = fs->dc;
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    clear_locked(c);
    pthread_mutex_unlock(&c->mu);
}

/* Someone else wrote to the store: forget everything (mu held). */
static void check_external(kvfs_fs *fs, dcache *c) {
    uint64_t q = store_sequence(fs->st);
    uint64_t mine = atomic_load(&fs->batches);
    if (q > c->seq_base + mine) {
        clear_locked(c);
        atomic_store(&fs->file_xattrs, -1);
        c->seq_base = q - mine;
    }
}

static uint64_t dk_hash(const uint8_t *dk, size_t dlen) { return XXH64(dk, dlen, 0x6b76); }

static dent *find(dcache *c, const uint8_t *dk, size_t dlen, uint64_t h) {
    for (dent *d = c->tab[h % DC_BUCKETS]; d; d = d->next)
        if (d->hash == h && d->dlen == dlen && (dlen == 0 || memcmp(d->dk, dk, dlen) == 0)) return d;
    return NULL;
}

/* The parent's dir key of a dir key: "a/b/" -> "a/", "a/" -> "", "/" -> "". Returns its length. */
static size_t parent_len(const uint8_t *dk, size_t dlen) {
    if (dlen == 0) return 0;
    size_t i = dlen - 1; /* the trailing '/' */
    while (i > 0 && dk[i - 1] != '/') i--;
    return i;
}

static void unlink_dent(dcache *c, dent *d) {
    for (dent **pp = &c->tab[d->hash % DC_BUCKETS]; *pp; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    free(d->dk);
    free(d);
    c->n--;
}

/* Drop the entry of dk, and the parent's "kids known" (mu held). */
static void drop_locked(dcache *c, const uint8_t *dk, size_t dlen) {
    dent *d = find(c, dk, dlen, dk_hash(dk, dlen));
    if (d) unlink_dent(c, d);
    if (dlen) {
        size_t pl = parent_len(dk, dlen);
        dent *p = find(c, dk, pl, dk_hash(dk, pl));
        if (p && p->kids == KIDS_KNOWN) p->kids = KIDS_UNKNOWN;
    }
}

/* The entry of dk, created (state NONE) when absent; NULL when out of memory (mu held). */
static dent *get_locked(dcache *c, const uint8_t *dk, size_t dlen) {
    uint64_t h = dk_hash(dk, dlen);
    dent *d = find(c, dk, dlen, h);
    if (d) return d;
    if (c->n >= DC_MAX_ENTRIES) clear_locked(c);
    d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->dk = malloc(dlen ? dlen : 1);
    if (!d->dk) {
        free(d);
        return NULL;
    }
    if (dlen) memcpy(d->dk, dk, dlen);
    d->dlen = dlen;
    d->hash = h;
    d->next = c->tab[h % DC_BUCKETS];
    c->tab[h % DC_BUCKETS] = d;
    c->n++;
    return d;
}

static void set_state(dent *d, int state, const fs_attr *a) {
    d->state = state;
    d->times = false;
    if (state == DC_EXPLICIT && a) d->attr = *a;
}

/* ---- loading a directory's child directories (and its files' attributes) -------------------------------------- */

typedef struct kid {
    uint8_t *c;      /* the child's component */
    size_t clen;
    bool explicit_;  /* directories: a record of their own; files: a valid attribute record */
    fs_attr attr;
    store_info info; /* files: the content's (data scan) or the record's (F scan) size and time */
} kid;

enum { SCAN_DATA, SCAN_DREC, SCAN_FREC };

typedef struct kidscan {
    int mode;
    size_t plen;     /* bytes of the scanned key before the component (lead byte + prefix) */
    kid *v;          /* child directories (SCAN_DATA, SCAN_DREC) */
    size_t n, cap;
    kid *f;          /* files (SCAN_DATA) or their records (SCAN_FREC), when collecting */
    size_t fn, fcap;
    bool files;      /* collect them */
    size_t seen;     /* keys read */
    bool found;      /* the scan stopped at a subtree: skip past component skip (a copy: the scan's key dies) */
    keybuf skip;
    int err;
} kidscan;

static kid *kid_add(kidscan *k, kid **v, size_t *n, size_t *cap, const uint8_t *c, size_t clen) {
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        kid *nv = realloc(*v, ncap * sizeof *nv);
        if (!nv) {
            k->err = -ENOMEM;
            return NULL;
        }
        *v = nv;
        *cap = ncap;
    }
    kid *e = &(*v)[*n];
    memset(e, 0, sizeof *e);
    e->c = malloc(clen ? clen : 1);
    if (!e->c) {
        k->err = -ENOMEM;
        return NULL;
    }
    if (clen) memcpy(e->c, c, clen);
    e->clen = clen;
    (*n)++;
    return e;
}

static int kid_cb(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val, size_t vlen) {
    kidscan *k = ctx;
    k->seen++;
    if (klen < k->plen) return 0;
    const uint8_t *comp = key + k->plen;
    size_t rest = klen - k->plen;
    const uint8_t *sl = memchr(comp, '/', rest);
    if (!sl) {
        /* a file child, its record, or (SCAN_DREC) the directory's own record */
        if (k->files && k->mode != SCAN_DREC && rest > 0) {
            kid *e = kid_add(k, &k->f, &k->fn, &k->fcap, comp, rest);
            if (!e) return 1;
            e->info = *info;
            if (k->mode == SCAN_FREC)
                e->explicit_ = val && meta_decode(val, vlen, &e->attr) && !S_ISDIR(e->attr.mode);
        }
        return k->seen > DC_KIDS_SCAN_MAX;
    }
    size_t clen = (size_t)(sl - comp);
    k->found = true;
    kb_reset(&k->skip);
    kb_add(&k->skip, comp, clen);
    if (k->skip.oom) {
        k->err = -ENOMEM;
        return 1;
    }
    if (k->mode == SCAN_FREC) return 1;
    kid *e = kid_add(k, &k->v, &k->n, &k->cap, comp, clen);
    if (!e) return 1;
    /* A D record of exactly P c "/" is the child's own: explicit, with attributes. */
    if (k->mode == SCAN_DREC && rest == clen + 1 && val && meta_decode(val, vlen, &e->attr) && S_ISDIR(e->attr.mode))
        e->explicit_ = true;
    return 1;
}

/* One pass over the children of dir key pdk: in keyspace 0 (files and child directories), or over the 'D' or 'F'
 * records of keyspace 1, stepping over each child directory's subtree. 0, 1 when there are too many children,
 * or -errno. */
static int scan_kids(kvfs_fs *fs, int mode, const uint8_t *pdk, size_t plen, kidscan *k) {
    keybuf pos, pfx;
    kb_init(&pos);
    kb_init(&pfx);
    if (mode != SCAN_DATA) kb_byte(&pfx, mode == SCAN_DREC ? META_DIR : META_FILE);
    kb_add(&pfx, pdk, plen);
    uint8_t *end = malloc(pfx.len + 1);
    if (!end || pfx.oom) {
        free(end);
        kb_free(&pfx);
        return -ENOMEM;
    }
    size_t elen = pfx.len ? store_prefix_end(pfx.p, pfx.len, end) : 0;
    k->plen = pfx.len;
    k->mode = mode;
    k->seen = 0;
    kb_add(&pos, pfx.p, pfx.len);
    int rc = 0;
    for (;;) {
        k->found = false;
        rc = store_scan(fs->st, mode == SCAN_DATA ? STORE_KS_DATA : STORE_KS_META, pos.p, pos.len, end, elen, 0,
                        true, mode != SCAN_DATA, kid_cb, k);
        if (rc || k->err) break;
        if (k->seen > DC_KIDS_SCAN_MAX) {
            rc = 1;
            break;
        }
        if (!k->found) break;
        /* Past the subtree of the child just found: P c "0" ('/' + 1). */
        kb_reset(&pos);
        kb_add(&pos, pfx.p, pfx.len);
        kb_add(&pos, k->skip.p, k->skip.len);
        kb_byte(&pos, '/' + 1);
        if (pos.oom) {
            rc = -ENOMEM;
            break;
        }
    }
    if (!rc && k->err) rc = k->err;
    free(end);
    kb_free(&pos);
    kb_free(&pfx);
    return rc;
}

static void kids_free(kidscan *k) {
    for (size_t i = 0; i < k->n; i++) free(k->v[i].c);
    for (size_t i = 0; i < k->fn; i++) free(k->f[i].c);
    free(k->v);
    free(k->f);
    kb_free(&k->skip);
    memset(k, 0, sizeof *k);
}

static int compcmp(const kid *a, const kid *b) {
    size_t n = a->clen < b->clen ? a->clen : b->clen;
    int r = n ? memcmp(a->c, b->c, n) : 0;
    return r ? r : (a->clen > b->clen) - (a->clen < b->clen);
}

static void finstall_locked(kvfs_fs *fs, dcache *c, const uint8_t *key, size_t klen, const fs_attr *a, bool stored,
                            const store_info *data);

/* Load the child directories of pdk into the cache (if nothing changed meanwhile), and the attributes of its
 * files: a directory's first lookup reads it once, and its entries' lookups then read nothing. */
static void load_kids(kvfs_fs *fs, const uint8_t *pdk, size_t plen) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    uint64_t gen = c->gen, fgen = c->fgen;
    pthread_mutex_unlock(&c->mu);
    kidscan data = {.files = true}, meta = {0}, frec = {.files = true};
    int rc = scan_kids(fs, SCAN_DATA, pdk, plen, &data);
    if (rc == 0) rc = scan_kids(fs, SCAN_DREC, pdk, plen, &meta);
    int frc = rc == 0 && data.fn ? scan_kids(fs, SCAN_FREC, pdk, plen, &frec) : -1;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    dent *p = c->gen == gen && rc >= 0 ? find(c, pdk, plen, dk_hash(pdk, plen)) : NULL;
    if (p && p->state != DC_NONE && p->kids == KIDS_UNKNOWN) {
        if (rc == 1) {
            p->kids = KIDS_TOO_MANY;
        } else {
            bool ok = true;
            keybuf dk;
            kb_init(&dk);
            for (int pass = 0; pass < 2 && ok; pass++) {
                kidscan *k = pass ? &meta : &data;
                for (size_t i = 0; i < k->n && ok; i++) {
                    kb_reset(&dk);
                    kb_add(&dk, pdk, plen);
                    kb_add(&dk, k->v[i].c, k->v[i].clen);
                    kb_byte(&dk, '/');
                    size_t n0 = c->n;
                    dent *d = dk.oom ? NULL : get_locked(c, dk.p, dk.len);
                    if (!d || c->gen != gen) { /* out of memory, or the cache filled up and was dropped */
                        ok = false;
                        break;
                    }
                    bool fresh = c->n > n0;
                    if (k->v[i].explicit_)
                        set_state(d, DC_EXPLICIT, &k->v[i].attr);
                    else if (fresh || d->state == DC_NONE)
                        set_state(d, DC_IMPLICIT, NULL);
                }
            }
            /* p may have been freed by a drop of the whole cache */
            if (ok && c->gen == gen) {
                p = find(c, pdk, plen, dk_hash(pdk, plen));
                if (p) p->kids = KIDS_KNOWN;
            }
            /* The files' attributes: contents merged with their records (both in component order). */
            if (ok && frc == 0 && c->fgen == fgen && c->fn + data.fn <= FC_MAX_ENTRIES) {
                size_t j = 0;
                for (size_t i = 0; i < data.fn && !dk.oom; i++) {
                    kid *e = &data.f[i];
                    while (j < frec.fn && compcmp(&frec.f[j], e) < 0) j++;
                    kid *r = j < frec.fn && compcmp(&frec.f[j], e) == 0 ? &frec.f[j] : NULL;
                    kb_reset(&dk);
                    kb_add(&dk, pdk, plen);
                    kb_add(&dk, e->c, e->clen);
                    fs_attr a;
                    bool stored = file_attr_make(fs, r && r->explicit_ ? &r->attr : NULL, r ? r->info.write_ms : 0,
                                                 &e->info, &a);
                    if (!dk.oom) finstall_locked(fs, c, dk.p, dk.len, &a, stored, &e->info);
                }
            }
            kb_free(&dk);
        }
    }
    pthread_mutex_unlock(&c->mu);
    kids_free(&data);
    kids_free(&meta);
    kids_free(&frec);
}

/* ---- the interface --------------------------------------------------------------------------------------------- */

static int answer(dent *d, fs_attr *a, bool *stored) {
    if (d->state == DC_EXPLICIT) {
        if (a) *a = d->attr;
        if (stored) *stored = true;
    } else {
        if (stored) *stored = false;
        if (a && d->state == DC_IMPLICIT && d->times) *a = d->attr;
    }
    return d->state;
}

int dc_peek(kvfs_fs *fs, const uint8_t *dk, size_t dlen, fs_attr *a, bool *stored, bool *has_times) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    int rc = DC_UNKNOWN;
    dent *d = find(c, dk, dlen, dk_hash(dk, dlen));
    if (d) {
        rc = answer(d, a, stored);
        if (has_times) *has_times = d->state == DC_IMPLICIT && d->times;
    } else if (dlen) {
        size_t pl = parent_len(dk, dlen);
        dent *p = find(c, dk, pl, dk_hash(dk, pl));
        if (p && p->kids == KIDS_KNOWN) rc = DC_NONE;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

uint64_t dc_generation(kvfs_fs *fs) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    uint64_t g = c->gen;
    pthread_mutex_unlock(&c->mu);
    return g;
}

void dc_install(kvfs_fs *fs, uint64_t gen, const uint8_t *dk, size_t dlen, int state, const fs_attr *a) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    if (c->gen == gen) {
        dent *d = get_locked(c, dk, dlen);
        if (d && c->gen == gen) set_state(d, state, a);
    }
    pthread_mutex_unlock(&c->mu);
}

int dc_lookup(kvfs_fs *fs, const uint8_t *dk, size_t dlen, fs_attr *a, bool *stored) {
    int rc = dc_peek(fs, dk, dlen, a, stored, NULL);
    if (rc != DC_UNKNOWN || dlen == 0) return rc;
    /* Not known: load the parent's child directories once, which answers for every sibling. */
    size_t pl = parent_len(dk, dlen);
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    dent *p = find(c, dk, pl, dk_hash(dk, pl));
    bool load = p && p->state != DC_NONE && p->kids == KIDS_UNKNOWN;
    pthread_mutex_unlock(&c->mu);
    if (!load) return DC_UNKNOWN;
    load_kids(fs, dk, pl);
    return dc_peek(fs, dk, dlen, a, stored, NULL);
}

void dc_prefetch(kvfs_fs *fs, const uint8_t *dk, size_t dlen) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    dent *p = find(c, dk, dlen, dk_hash(dk, dlen));
    bool load = p && p->state != DC_NONE && p->kids == KIDS_UNKNOWN;
    pthread_mutex_unlock(&c->mu);
    if (load) load_kids(fs, dk, dlen);
}

void dc_set(kvfs_fs *fs, const uint8_t *dk, size_t dlen, int state, const fs_attr *a, bool empty) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    c->gen++;
    if (state == DC_NONE) {
        drop_locked(c, dk, dlen);
    } else {
        dent *d = get_locked(c, dk, dlen);
        if (d) {
            set_state(d, state, a);
            if (empty) d->kids = KIDS_KNOWN;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

void dc_touch(kvfs_fs *fs, const uint8_t *dk, size_t dlen, const fs_attr *a) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    dent *d = find(c, dk, dlen, dk_hash(dk, dlen));
    if (d && d->state == DC_EXPLICIT) {
        d->attr = *a;
    } else if (d && d->state == DC_IMPLICIT) {
        d->attr = *a;
        d->times = true;
    }
    pthread_mutex_unlock(&c->mu);
}

void dc_removed(kvfs_fs *fs, const uint8_t *key, size_t klen) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    c->gen++;
    /* Walk up the ancestors' dir keys: an implicit one may have lost its last entry. Explicit ones stay. */
    size_t i = klen;
    while (i > 0) {
        while (i > 0 && key[i - 1] != '/') i--;
        if (i == 0) break;
        dent *d = find(c, key, i, dk_hash(key, i));
        if (d && d->state == DC_EXPLICIT) break;
        drop_locked(c, key, i);
        i--;
    }
    pthread_mutex_unlock(&c->mu);
}

/* ---- file attributes ------------------------------------------------------------------------------------------ */

static fent *ffind(dcache *c, const uint8_t *key, size_t klen, uint64_t h) {
    for (fent *f = c->ftab[h % FC_BUCKETS]; f; f = f->next)
        if (f->hash == h && f->klen == klen && memcmp(f->key, key, klen) == 0) return f;
    return NULL;
}

static void finstall_locked(kvfs_fs *fs, dcache *c, const uint8_t *key, size_t klen, const fs_attr *a, bool stored,
                            const store_info *data) {
    (void)fs;
    uint64_t h = XXH64(key, klen, 0x6663);
    fent *f = ffind(c, key, klen, h);
    if (!f) {
        if (c->fn >= FC_MAX_ENTRIES) fclear_locked(c);
        f = calloc(1, sizeof *f);
        if (!f) return;
        f->key = malloc(klen ? klen : 1);
        if (!f->key) {
            free(f);
            return;
        }
        memcpy(f->key, key, klen);
        f->klen = klen;
        f->hash = h;
        f->next = c->ftab[h % FC_BUCKETS];
        c->ftab[h % FC_BUCKETS] = f;
        c->fn++;
    }
    f->attr = *a;
    f->stored = stored;
    f->data = *data;
}

bool fc_get(kvfs_fs *fs, const uint8_t *key, size_t klen, fs_attr *a, bool *stored, store_info *data,
            uint64_t *gen) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    fent *f = ffind(c, key, klen, XXH64(key, klen, 0x6663));
    if (f) {
        *a = f->attr;
        *stored = f->stored;
        *data = f->data;
    }
    *gen = c->fgen;
    pthread_mutex_unlock(&c->mu);
    return f != NULL;
}

void fc_install(kvfs_fs *fs, uint64_t gen, const uint8_t *key, size_t klen, const fs_attr *a, bool stored,
                const store_info *data) {
    dcache *c = fs->dc;
    pthread_mutex_lock(&c->mu);
    check_external(fs, c);
    if (c->fgen == gen) finstall_locked(fs, c, key, klen, a, stored, data);
    pthread_mutex_unlock(&c->mu);
}

static void fdrop_locked(dcache *c, const uint8_t *key, size_t klen) {
    uint64_t h = XXH64(key, klen, 0x6663);
    for (fent **pp = &c->ftab[h % FC_BUCKETS]; *pp; pp = &(*pp)->next) {
        fent *f = *pp;
        if (f->hash == h && f->klen == klen && memcmp(f->key, key, klen) == 0) {
            *pp = f->next;
            free(f->key);
            free(f);
            c->fn--;
            return;
        }
    }
}

/* A file's entry is affected by a change of its content (keyspace 0) or of its record ('F' in keyspace 1). */
static void fdrop_op_key(dcache *c, uint8_t ks, const uint8_t *key, size_t klen) {
    if (ks == STORE_KS_DATA)
        fdrop_locked(c, key, klen);
    else if (ks == STORE_KS_META && klen > 1 && key[0] == META_FILE)
        fdrop_locked(c, key + 1, klen - 1);
}

void fc_batch_written(kvfs_fs *fs, const store_batch *b) {
    dcache *c = fs->dc;
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->fgen++;
    if (b->n > 1024) {
        fclear_locked(c);
    } else {
        for (size_t i = 0; i < b->n; i++) {
            const store_op *op = &b->ops[i];
            fdrop_op_key(c, op->ks, store_op_key(b, op), op->klen);
            if (op->kind == STORE_MOVE) fdrop_op_key(c, op->to_ks, store_op_to(b, op), op->tlen);
        }
    }
    pthread_mutex_unlock(&c->mu);
}

void kvfs_fs_invalidate(kvfs_fs *fs) {
    if (!fs) return;
    dc_clear(fs);
    atomic_store(&fs->file_xattrs, -1);
}
