/* test_merge.c — the merging iterator over random memtables (and level iterators), with random direction switches,
 * against a merged reference; the level iterator over fake in-memory files, empty and failing ones included. */
#include <stdlib.h>

#include "dbformat.h"
#include "memtable.h"
#include "merge.h"
#include "t.h"

/* ---- an entry array and an in-memory iterator over part of it ---------------------------------------------------- */

typedef struct ent {
    uint8_t *k;
    size_t kl;
    uint8_t *v;
    size_t vl;
    size_t child; /* which merge child holds it */
} ent;

/* Merge order: internal key, then child index (children with identical keys are visited in index order). */
static int ent_cmp(const void *a, const void *b) {
    const ent *x = a, *y = b;
    int c = ikey_cmp(x->k, x->kl, y->k, y->kl);
    if (c) return c;
    return x->child < y->child ? -1 : x->child > y->child;
}

static size_t lower_bound(const ent *e, size_t n, const uint8_t *t, size_t tlen) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ikey_cmp(e[mid].k, e[mid].kl, t, tlen) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void ents_free(ent *e, size_t n) {
    for (size_t i = 0; i < n; i++) free(e[i].k), free(e[i].v);
    free(e);
}

static bool at(iter *it, const ent *e, size_t n, size_t pos) {
    if (pos >= n) return !it->valid(it);
    if (!it->valid(it)) return false;
    size_t kl, vl;
    const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
    return kl == e[pos].kl && memcmp(k, e[pos].k, kl) == 0 && vl == e[pos].vl && memcmp(v, e[pos].v, vl) == 0;
}

/* Iterates e[0..n) (borrowed); moving onto index fail_at makes it fail with KV_EIO for good. */
typedef struct vec_iter {
    iter base;
    const ent *e;
    size_t n, pos, fail_at;
    int err;
    int *live; /* counts live instances */
} vec_iter;

static void vi_land(vec_iter *v, size_t pos) {
    if (v->err) pos = v->n;
    else if (pos == v->fail_at) v->err = KV_EIO, pos = v->n;
    v->pos = pos;
}
static bool vi_valid(iter *it) { return ((vec_iter *)it)->pos < ((vec_iter *)it)->n; }
static void vi_seek_first(iter *it) { vi_land((vec_iter *)it, 0); }
static void vi_seek_last(iter *it) {
    vec_iter *v = (vec_iter *)it;
    vi_land(v, v->n ? v->n - 1 : 0);
}
static void vi_seek(iter *it, const uint8_t *k, size_t kl) {
    vec_iter *v = (vec_iter *)it;
    vi_land(v, lower_bound(v->e, v->n, k, kl));
}
static void vi_next(iter *it) {
    vec_iter *v = (vec_iter *)it;
    if (v->pos >= v->n) t_fail(__FILE__, __LINE__, "next on an invalid iterator");
    vi_land(v, v->pos + 1);
}
static void vi_prev(iter *it) {
    vec_iter *v = (vec_iter *)it;
    if (v->pos >= v->n) t_fail(__FILE__, __LINE__, "prev on an invalid iterator");
    vi_land(v, v->pos == 0 ? v->n : v->pos - 1);
}
static const uint8_t *vi_key(iter *it, size_t *len) {
    vec_iter *v = (vec_iter *)it;
    *len = v->e[v->pos].kl;
    return v->e[v->pos].k;
}
static const uint8_t *vi_value(iter *it, size_t *len) {
    vec_iter *v = (vec_iter *)it;
    *len = v->e[v->pos].vl;
    return v->e[v->pos].v;
}
static int vi_status(iter *it) { return ((vec_iter *)it)->err; }
static void vi_destroy(iter *it) {
    vec_iter *v = (vec_iter *)it;
    if (v->live) (*v->live)--;
    free(v);
}
static iter *vec_iter_new(const ent *e, size_t n, size_t fail_at, int *live) {
    vec_iter *v = calloc(1, sizeof *v);
    v->base = (iter){vi_valid, vi_seek_first, vi_seek_last, vi_seek, vi_next, vi_prev, vi_key, vi_value, vi_status,
                     vi_destroy};
    v->e = e;
    v->n = n;
    v->pos = n;
    v->fail_at = fail_at;
    v->live = live;
    if (live) (*live)++;
    return &v->base;
}

/* ---- random entries ---------------------------------------------------------------------------------------------- */

static size_t make_ukey(uint64_t *rs, uint8_t *out) {
    static const uint8_t alpha[3] = {0x00, 'a', 0xff};
    out[0] = (uint8_t)(t_rand(rs) % 2 ? 0 : 0x80);
    size_t len = 1 + t_rand(rs) % 8;
    for (size_t i = 0; i < len; i++) out[1 + i] = alpha[t_rand(rs) % 3];
    return len + 1;
}

/* n random entries spread over nchild children, sorted in merge order, without duplicate (key, child) pairs: the
 * small sequence range makes identical internal keys in different children common. */
static ent *random_ents_runs(uint64_t *rs, size_t n, size_t nchild, bool runs, size_t *out_n);
static ent *random_ents(uint64_t *rs, size_t n, size_t nchild, size_t *out_n) {
    return random_ents_runs(rs, n, nchild, false, out_n);
}

/* With runs, the children hold runs of consecutive entries (in merge order, about 16 on average), as the levels of a
 * store do, instead of entries spread evenly. */
static ent *random_ents_runs(uint64_t *rs, size_t n, size_t nchild, bool runs, size_t *out_n) {
    ent *e = calloc(n ? n : 1, sizeof *e);
    for (size_t i = 0; i < n; i++) {
        uint8_t u[16];
        size_t ul = make_ukey(rs, u);
        e[i].kl = ul + 8;
        e[i].k = malloc(e[i].kl);
        ikey_build(e[i].k, u, ul, 1 + t_rand(rs) % 30, (int)(t_rand(rs) % 3));
        e[i].child = nchild ? (size_t)(t_rand(rs) % nchild) : 0;
        e[i].vl = 9;
        e[i].v = malloc(9);
        e[i].v[0] = 0x01;
        put_fixed64(e[i].v + 1, i);
    }
    qsort(e, n, sizeof *e, ent_cmp);
    if (runs && nchild) {
        for (size_t i = 1; i < n; i++)
            e[i].child = t_rand(rs) % 16 ? e[i - 1].child : (size_t)(t_rand(rs) % nchild);
        qsort(e, n, sizeof *e, ent_cmp);
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && ent_cmp(&e[m - 1], &e[i]) == 0) {
            free(e[i].k), free(e[i].v);
            continue;
        }
        e[m++] = e[i];
    }
    *out_n = m;
    return e;
}

/* Random positioning and steps on it, checked against e[0..n) after every move. */
static void random_walk(iter *it, const ent *e, size_t n, uint64_t *rs, int steps, const char *what) {
    size_t pos = n;
    for (int step = 0; step < steps; step++) {
        unsigned op = (unsigned)(t_rand(rs) % 16);
        if (op == 0) {
            it->seek_first(it);
            pos = 0;
        } else if (op == 1) {
            it->seek_last(it);
            pos = n ? n - 1 : 0;
        } else if (op < 4 || pos >= n) {
            uint8_t u[16], t[24];
            size_t ul = make_ukey(rs, u);
            ikey_build(t, u, ul, t_rand(rs) % 32, t_rand(rs) % 2 ? KV_TYPE_FOR_SEEK : (int)(t_rand(rs) % 3));
            it->seek(it, t, ul + 8);
            pos = lower_bound(e, n, t, ul + 8);
        } else if (op < 10) {
            it->next(it);
            pos++;
        } else {
            it->prev(it);
            pos = pos == 0 ? n : pos - 1;
        }
        if (!at(it, e, n, pos)) {
            t_fail(__FILE__, __LINE__, "%s: walk differs at step %d (op %u, pos %zu of %zu)", what, step, op, pos, n);
            return;
        }
        if (it->status(it) != KV_OK) {
            t_fail(__FILE__, __LINE__, "%s: status %d", what, it->status(it));
            return;
        }
    }
}

static void full_scans(iter *it, const ent *e, size_t n, const char *what) {
    it->seek_first(it);
    for (size_t i = 0; i <= n; i++) {
        if (!at(it, e, n, i)) return t_fail(__FILE__, __LINE__, "%s: forward scan differs at %zu", what, i);
        if (i < n) it->next(it);
    }
    it->seek_last(it);
    for (size_t i = n; i-- > 0;) {
        if (!at(it, e, n, i)) return t_fail(__FILE__, __LINE__, "%s: backward scan differs at %zu", what, i);
        it->prev(it);
    }
    if (it->valid(it)) t_fail(__FILE__, __LINE__, "%s: valid before the first entry", what);
}

/* ---- level_iter fixtures ----------------------------------------------------------------------------------------- */

enum { OPEN_OK, OPEN_EMPTY_ERROR, OPEN_NULL };

typedef struct fake_file {
    file_meta meta;
    size_t start, count; /* entries of the level's array */
    size_t fail_at;      /* index within the file that fails, or SIZE_MAX */
    int mode;
} fake_file;

typedef struct fake_level {
    const ent *e;
    fake_file *files;
    file_meta **metas;
    size_t nfiles;
    int live, max_live, opens;
} fake_level;

static iter *fake_open(void *ctx, const file_meta *f) {
    fake_level *lv = ctx;
    fake_file *ff = (fake_file *)f; /* meta is the first member */
    lv->opens++;
    if (ff->mode == OPEN_NULL) return NULL;
    if (ff->mode == OPEN_EMPTY_ERROR) return iter_empty(KV_EIO);
    iter *it = vec_iter_new(lv->e + ff->start, ff->count, ff->fail_at, &lv->live);
    if (lv->live > lv->max_live) lv->max_live = lv->live;
    return it;
}

/* Split e[0..n) into files of random sizes, a fifth of them empty. An empty file's key range is its predecessor's
 * largest key (or the first key), so the files stay sorted and non-overlapping apart from touching ends. */
static void fake_level_build(fake_level *lv, const ent *e, size_t n, uint64_t *rs) {
    memset(lv, 0, sizeof *lv);
    lv->e = e;
    size_t cap = n + 8;
    lv->files = calloc(cap, sizeof *lv->files);
    lv->metas = calloc(cap, sizeof *lv->metas);
    size_t pos = 0;
    while ((pos < n || lv->nfiles < 3) && lv->nfiles < cap) {
        fake_file *f = &lv->files[lv->nfiles];
        size_t cnt = t_rand(rs) % 5 == 0 ? 0 : 1 + t_rand(rs) % 60;
        if (cnt > n - pos) cnt = n - pos;
        f->start = pos;
        f->count = cnt;
        f->fail_at = SIZE_MAX;
        f->mode = OPEN_OK;
        f->meta.file_no = lv->nfiles + 1;
        const ent *lo = cnt ? &e[pos] : pos ? &e[pos - 1] : n ? &e[0] : NULL;
        const ent *hi = cnt ? &e[pos + cnt - 1] : lo;
        if (lo) {
            bytes_append(&f->meta.smallest, lo->k, lo->kl);
            bytes_append(&f->meta.largest, hi->k, hi->kl);
        } else { /* no entries at all: any valid key */
            uint8_t k[9];
            ikey_build(k, (const uint8_t *)"\0", 1, 1, KV_TYPE_VALUE);
            bytes_append(&f->meta.smallest, k, 9);
            bytes_append(&f->meta.largest, k, 9);
        }
        lv->metas[lv->nfiles] = &f->meta;
        lv->nfiles++;
        pos += cnt;
    }
}

static void fake_level_free(fake_level *lv) {
    for (size_t i = 0; i < lv->nfiles; i++) bytes_free(&lv->files[i].meta.smallest), bytes_free(&lv->files[i].meta.largest);
    free(lv->files);
    free(lv->metas);
}

/* Unique keys only (a level never repeats an internal key). */
static ent *unique_ents(uint64_t *rs, size_t n, size_t *out_n) {
    ent *e = random_ents(rs, n, 1, out_n);
    return e;
}

/* ---- merge tests ------------------------------------------------------------------------------------------------- */

TEST(test_merge_vs_reference) {
    uint64_t rs = t_seed();
    for (int round = 0; round < 100; round++) {
        size_t nchild = (size_t)(t_rand(&rs) % 12);
        size_t n;
        ent *e = random_ents(&rs, nchild ? (size_t)(t_rand(&rs) % 3000) : 0, nchild, &n);
        /* children are memtables, or (every third one) a level iterator over the child's entries */
        memtable **mts = calloc(nchild + 1, sizeof *mts);
        fake_level *levels = calloc(nchild + 1, sizeof *levels);
        ent **child_ents = calloc(nchild + 1, sizeof *child_ents);
        iter **children = calloc(nchild + 1, sizeof *children);
        for (size_t c = 0; c < nchild; c++) {
            size_t cnt = 0;
            child_ents[c] = calloc(n + 1, sizeof(ent));
            for (size_t i = 0; i < n; i++)
                if (e[i].child == c) child_ents[c][cnt++] = e[i];
            if (c % 3 == 2) {
                fake_level_build(&levels[c], child_ents[c], cnt, &rs);
                children[c] = level_iter_new(levels[c].metas, levels[c].nfiles, fake_open, &levels[c]);
            } else {
                CHECK_OK(memtable_new(1u << 20, &mts[c]));
                for (size_t i = 0; i < cnt; i++) {
                    const ent *x = &child_ents[c][i];
                    CHECK_OK(memtable_add(mts[c], ikey_seq(x->k, x->kl), ikey_type(x->k, x->kl), x->k, x->kl - 8, x->v,
                                          x->vl));
                }
                children[c] = memtable_iter(mts[c]);
                memtable_unref(mts[c]);
            }
        }
        iter *it = merge_iter_new(children, nchild);
        CHECK(it != NULL);
        char what[64];
        snprintf(what, sizeof what, "round %d (%zu children, %zu entries)", round, nchild, n);
        full_scans(it, e, n, what);
        random_walk(it, e, n, &rs, 4000, what);
        CHECK_OK(it->status(it));
        it->destroy(it);
        for (size_t c = 0; c < nchild; c++) {
            if (c % 3 == 2) {
                CHECK_MSG(levels[c].live == 0 && levels[c].max_live <= 1, "level iterator kept %d files open",
                          levels[c].max_live);
                fake_level_free(&levels[c]);
            }
            free(child_ents[c]);
        }
        free(mts), free(levels), free(child_ents), free(children);
        ents_free(e, n);
        if (t_failed()) return;
    }
}

/* From a random seek, long sweeps forward and back (direction switches at their ends), checked at every step. */
static void sweeps(iter *it, const ent *e, size_t n, uint64_t *rs, int rounds, const char *what) {
    for (int r = 0; r < rounds; r++) {
        uint8_t u[16], t[24];
        size_t ul = make_ukey(rs, u);
        ikey_build(t, u, ul, t_rand(rs) % 32, KV_TYPE_FOR_SEEK);
        it->seek(it, t, ul + 8);
        size_t pos = lower_bound(e, n, t, ul + 8);
        for (int leg = 0; leg < 4 && pos < n; leg++) {
            size_t len = (size_t)(t_rand(rs) % 300);
            for (size_t i = 0; i < len && pos < n; i++) {
                if (leg % 2 == 0) {
                    it->next(it);
                    pos++;
                } else {
                    it->prev(it);
                    pos = pos == 0 ? n : pos - 1;
                }
                if (!at(it, e, n, pos))
                    return t_fail(__FILE__, __LINE__, "%s: sweep %d leg %d differs at %zu of %zu", what, r, leg,
                                  pos, n);
            }
        }
    }
}

/* Children that hold long runs of the merged order, as the levels of a store do: the top child stays on top for
 * many steps (the merge's one-comparison step), then another takes over; identical keys in several children, both
 * directions and switches between them. A step that kept a stale top were caught here. */
TEST(test_merge_runs) {
    uint64_t rs = t_seed();
    for (int round = 0; round < 40; round++) {
        size_t nchild = 2 + (size_t)(t_rand(&rs) % 10);
        size_t n;
        ent *e = random_ents_runs(&rs, 500 + (size_t)(t_rand(&rs) % 3000), nchild, true, &n);
        iter **children = calloc(nchild, sizeof *children);
        ent **child_ents = calloc(nchild, sizeof *child_ents);
        int live = 0;
        for (size_t c = 0; c < nchild; c++) {
            size_t cnt = 0;
            child_ents[c] = calloc(n + 1, sizeof(ent));
            for (size_t i = 0; i < n; i++)
                if (e[i].child == c) child_ents[c][cnt++] = e[i];
            children[c] = vec_iter_new(child_ents[c], cnt, SIZE_MAX, &live);
        }
        iter *it = merge_iter_new(children, nchild);
        char what[64];
        snprintf(what, sizeof what, "round %d (%zu children, %zu entries)", round, nchild, n);
        full_scans(it, e, n, what);
        sweeps(it, e, n, &rs, 60, what);
        random_walk(it, e, n, &rs, 2000, what);
        CHECK_OK(it->status(it));
        it->destroy(it);
        CHECK_EQ(live, 0);
        for (size_t c = 0; c < nchild; c++) free(child_ents[c]);
        free(children), free(child_ents);
        ents_free(e, n);
        if (t_failed()) return;
    }
}

TEST(test_merge_trivial) {
    iter *it = merge_iter_new(NULL, 0);
    it->seek_first(it);
    CHECK(!it->valid(it));
    it->seek_last(it);
    CHECK(!it->valid(it));
    CHECK_OK(it->status(it));
    it->destroy(it);

    memtable *m;
    CHECK_OK(memtable_new(1u << 20, &m));
    CHECK_OK(memtable_add(m, 1, KV_TYPE_VALUE, (const uint8_t *)"\0k", 2, (const uint8_t *)"\0v", 2));
    iter *one[1] = {memtable_iter(m)};
    memtable_unref(m);
    it = merge_iter_new(one, 1);
    it->seek_last(it);
    CHECK(it->valid(it));
    size_t vl;
    const uint8_t *v = it->value(it, &vl);
    CHECK_MEM(v, vl, "\0v", 2);
    it->prev(it);
    CHECK(!it->valid(it));
    it->destroy(it);
}

TEST(test_merge_errors) {
    uint64_t rs = t_seed() + 1;
    size_t n;
    ent *e = random_ents(&rs, 400, 2, &n);
    ent *c0 = calloc(n, sizeof *c0), *c1 = calloc(n, sizeof *c1);
    size_t n0 = 0, n1 = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].child == 0) c0[n0++] = e[i];
        else c1[n1++] = e[i];
    }
    CHECK(n0 > 20 && n1 > 20);

    /* A child failing half-way: the merge yields a correct prefix of the reference, then stops with its error as
     * soon as the failing child steps off its last good entry. */
    iter *ch[2] = {vec_iter_new(c0, n0, SIZE_MAX, NULL), vec_iter_new(c1, n1, n1 / 2, NULL)};
    iter *it = merge_iter_new(ch, 2);
    size_t i = 0;
    for (it->seek_first(it); it->valid(it); it->next(it), i++) CHECK_MSG(at(it, e, n, i), "differs at %zu", i);
    CHECK(i > 0 && i < n);
    CHECK(e[i - 1].child == 1 && e[i - 1].k == c1[n1 / 2 - 1].k);
    CHECK_EQ(it->status(it), KV_EIO);
    it->seek_first(it); /* errors are sticky */
    CHECK(!it->valid(it));
    CHECK_EQ(it->status(it), KV_EIO);
    it->destroy(it);

    /* Failing while switching direction (the other child is repositioned by a seek). */
    ch[0] = vec_iter_new(c0, n0, SIZE_MAX, NULL);
    ch[1] = vec_iter_new(c1, n1, 0, NULL);
    it = merge_iter_new(ch, 2);
    it->seek_last(it); /* c1's last entry is fine */
    CHECK(it->valid(it));
    while (it->valid(it)) it->prev(it); /* reaching c1[0] fails */
    CHECK_EQ(it->status(it), KV_EIO);
    it->destroy(it);

    /* A child that is an error from the start: the status shows it before and after positioning. */
    ch[0] = vec_iter_new(c0, n0, SIZE_MAX, NULL);
    ch[1] = iter_empty(KV_ECORRUPT);
    it = merge_iter_new(ch, 2);
    CHECK_EQ(it->status(it), KV_ECORRUPT);
    it->seek_first(it);
    CHECK(!it->valid(it));
    CHECK_EQ(it->status(it), KV_ECORRUPT);
    it->destroy(it);

    /* A missing child (its creator ran out of memory). */
    ch[0] = vec_iter_new(c0, n0, SIZE_MAX, NULL);
    ch[1] = NULL;
    it = merge_iter_new(ch, 2);
    it->seek_first(it);
    CHECK(!it->valid(it));
    CHECK_EQ(it->status(it), KV_ENOMEM);
    it->destroy(it);

    free(c0), free(c1);
    ents_free(e, n);
}

/* ---- level tests ------------------------------------------------------------------------------------------------- */

TEST(test_level_vs_reference) {
    uint64_t rs = t_seed() + 2;
    for (int round = 0; round < 30; round++) {
        size_t n;
        ent *e = unique_ents(&rs, round == 0 ? 0 : (size_t)(t_rand(&rs) % 2000), &n);
        fake_level lv;
        fake_level_build(&lv, e, n, &rs);
        iter *it = level_iter_new(lv.metas, lv.nfiles, fake_open, &lv);
        char what[64];
        snprintf(what, sizeof what, "round %d (%zu files, %zu entries)", round, lv.nfiles, n);
        full_scans(it, e, n, what);
        random_walk(it, e, n, &rs, 3000, what);
        CHECK_OK(it->status(it));
        CHECK_MSG(lv.max_live <= 1, "%d files open at once", lv.max_live);
        it->destroy(it);
        CHECK_EQ(lv.live, 0);
        fake_level_free(&lv);
        ents_free(e, n);
        if (t_failed()) return;
    }
    /* no files at all */
    iter *it = level_iter_new(NULL, 0, fake_open, NULL);
    it->seek_first(it);
    CHECK(!it->valid(it));
    uint8_t t[9];
    ikey_build(t, (const uint8_t *)"\0", 1, 1, KV_TYPE_FOR_SEEK);
    it->seek(it, t, 9);
    CHECK(!it->valid(it));
    CHECK_OK(it->status(it));
    it->destroy(it);
}

/* Scan the whole level in one direction; returns the entries seen before it stopped. */
static size_t scan_count(iter *it, const ent *e, size_t n, bool forward, bool *ok) {
    size_t cnt = 0;
    *ok = true;
    if (forward) it->seek_first(it);
    else it->seek_last(it);
    while (it->valid(it)) {
        if (!at(it, e, n, forward ? cnt : n - 1 - cnt)) *ok = false;
        cnt++;
        if (forward) it->next(it);
        else it->prev(it);
    }
    return cnt;
}

TEST(test_level_errors) {
    uint64_t rs = t_seed() + 3;
    size_t n;
    ent *e = unique_ents(&rs, 1500, &n);
    for (int mode = 0; mode < 3; mode++) {
        fake_level lv;
        fake_level_build(&lv, e, n, &rs);
        /* pick a non-empty file in the middle to break */
        size_t bad = lv.nfiles / 2;
        while (bad < lv.nfiles && lv.files[bad].count == 0) bad++;
        CHECK(bad < lv.nfiles);
        fake_file *f = &lv.files[bad];
        size_t fail_fwd, fail_bwd; /* entries seen before the failure, per direction */
        int want;
        if (mode == 0) {
            f->mode = OPEN_EMPTY_ERROR;
            fail_fwd = f->start, fail_bwd = n - f->start - f->count, want = KV_EIO;
        } else if (mode == 1) {
            f->mode = OPEN_NULL;
            fail_fwd = f->start, fail_bwd = n - f->start - f->count, want = KV_ENOMEM;
        } else {
            f->fail_at = f->count / 2;
            fail_fwd = f->start + f->count / 2, fail_bwd = n - f->start - f->count / 2 - 1, want = KV_EIO;
        }
        for (int dir = 0; dir < 2; dir++) {
            iter *it = level_iter_new(lv.metas, lv.nfiles, fake_open, &lv);
            bool ok;
            size_t cnt = scan_count(it, e, n, dir == 0, &ok);
            CHECK_MSG(ok, "mode %d dir %d: wrong entries before the failure", mode, dir);
            CHECK_MSG(cnt == (dir == 0 ? fail_fwd : fail_bwd), "mode %d dir %d: %zu entries before the failure, not %zu",
                      mode, dir, cnt, dir == 0 ? fail_fwd : fail_bwd);
            CHECK_EQ(it->status(it), want);
            it->seek_first(it); /* sticky */
            CHECK(!it->valid(it));
            CHECK_EQ(it->status(it), want);
            it->destroy(it);
            CHECK_EQ(lv.live, 0);
        }
        /* a seek into the broken file fails too; a seek into another file works */
        iter *it = level_iter_new(lv.metas, lv.nfiles, fake_open, &lv);
        const ent *target = &e[f->start + (mode == 2 ? f->fail_at : f->count - 1)];
        it->seek(it, target->k, target->kl);
        CHECK(!it->valid(it));
        CHECK_EQ(it->status(it), want);
        it->destroy(it);
        it = level_iter_new(lv.metas, lv.nfiles, fake_open, &lv);
        it->seek(it, e[0].k, e[0].kl);
        CHECK(at(it, e, n, 0));
        CHECK_OK(it->status(it));
        it->destroy(it);
        fake_level_free(&lv);
    }

    /* a file whose key range is malformed is refused, not over-read */
    file_meta bad = {0};
    bytes_append(&bad.smallest, "abc", 3);
    bytes_append(&bad.largest, "abc", 3);
    file_meta *one[1] = {&bad};
    iter *it = level_iter_new(one, 1, fake_open, NULL);
    CHECK_EQ(it->status(it), KV_ECORRUPT);
    it->destroy(it);
    bytes_free(&bad.smallest), bytes_free(&bad.largest);
    ents_free(e, n);
}
