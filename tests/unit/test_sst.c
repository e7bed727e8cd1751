/*
 * test_sst.c — SSTables: round trips (gets at many sequence numbers, iterators both ways, seeks at every key) with
 * and without compression, bloom filters and the block cache; absent keys cost no data read; every single-byte
 * corruption and every truncation is detected; the table cache.
 *
 * Most tests use a small in-memory kv_env defined here: flipping a byte is then a memory write, and it counts reads.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "dbformat.h"
#include "env.h"
#include "error.h"
#include "merge.h"
#include "sst.h"
#include "t.h"

/* ---- In-memory environment ----------------------------------------------------------------------------------- */

typedef struct mnode {
    char *path;
    kv_bytes data;
    struct mnode *next;
} mnode;

struct kv_file {
    mnode *n;
};

typedef struct menv {
    kv_env base;
    pthread_mutex_t mu;
    mnode *files;
    _Atomic uint64_t reads;
    _Atomic int fail_reads, fail_appends;
} menv;

static mnode *m_find(menv *e, const char *path) {
    for (mnode *n = e->files; n; n = n->next)
        if (!strcmp(n->path, path)) return n;
    return NULL;
}

static int m_open_read(kv_env *env, const char *path, kv_file **out) {
    menv *e = (menv *)env;
    pthread_mutex_lock(&e->mu);
    mnode *n = m_find(e, path);
    pthread_mutex_unlock(&e->mu);
    if (!n) return kv_set_error(KV_ENOTFOUND, "open %s: no such file", path);
    *out = malloc(sizeof **out);
    (*out)->n = n;
    return KV_OK;
}

static int m_open_write(kv_env *env, const char *path, kv_file **out) {
    menv *e = (menv *)env;
    pthread_mutex_lock(&e->mu);
    mnode *n = m_find(e, path);
    if (!n) {
        n = calloc(1, sizeof *n);
        n->path = strdup(path);
        n->next = e->files;
        e->files = n;
    }
    bytes_clear(&n->data);
    pthread_mutex_unlock(&e->mu);
    *out = malloc(sizeof **out);
    (*out)->n = n;
    return KV_OK;
}

static int m_read_at(kv_env *env, kv_file *f, uint64_t off, void *buf, size_t len, size_t *nread) {
    menv *e = (menv *)env;
    if (atomic_load(&e->fail_reads)) return kv_set_error(KV_EIO, "read %s: injected error", f->n->path);
    atomic_fetch_add(&e->reads, 1);
    pthread_mutex_lock(&e->mu);
    size_t have = off < f->n->data.len ? f->n->data.len - (size_t)off : 0;
    *nread = have < len ? have : len;
    if (*nread) memcpy(buf, f->n->data.data + off, *nread);
    pthread_mutex_unlock(&e->mu);
    return KV_OK;
}

static int m_append(kv_env *env, kv_file *f, const void *buf, size_t len) {
    menv *e = (menv *)env;
    if (atomic_load(&e->fail_appends)) return kv_set_error(KV_EIO, "write %s: injected error", f->n->path);
    pthread_mutex_lock(&e->mu);
    int rc = bytes_append(&f->n->data, buf, len);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static int m_sync(kv_env *env, kv_file *f) { (void)env; (void)f; return KV_OK; }

static int m_size(kv_env *env, kv_file *f, uint64_t *size) {
    menv *e = (menv *)env;
    pthread_mutex_lock(&e->mu);
    *size = f->n->data.len;
    pthread_mutex_unlock(&e->mu);
    return KV_OK;
}

static int m_close(kv_env *env, kv_file *f) {
    (void)env;
    free(f);
    return KV_OK;
}

static int m_unsupported(void) { return kv_set_error(KV_EIO, "not supported by the test env"); }
static int m_open_append(kv_env *env, const char *p, kv_file **o) { (void)env; (void)p; (void)o; return m_unsupported(); }
static int m_file_size(kv_env *env, const char *p, uint64_t *s) { (void)env; (void)p; (void)s; return m_unsupported(); }
static int m_exists(kv_env *env, const char *p) { return m_find((menv *)env, p) != NULL; }
static int m_path_op(kv_env *env, const char *p) { (void)env; (void)p; return m_unsupported(); }
static int m_path2_op(kv_env *env, const char *a, const char *b) { (void)env; (void)a; (void)b; return m_unsupported(); }
static int m_truncate(kv_env *env, const char *p, uint64_t s) { (void)env; (void)p; (void)s; return m_unsupported(); }
static int m_mkdir(kv_env *env, const char *p, int m) { (void)env; (void)p; (void)m; return KV_OK; }
static int m_list(kv_env *env, const char *p, char ***n, size_t *c) { (void)env; (void)p; (void)n; (void)c; return m_unsupported(); }
static int m_lock(kv_env *env, const char *p, kv_file **l) { (void)env; (void)p; (void)l; return m_unsupported(); }
static int m_unlock(kv_env *env, kv_file *l) { (void)env; (void)l; return m_unsupported(); }

static void m_destroy(kv_env *env) {
    menv *e = (menv *)env;
    while (e->files) {
        mnode *n = e->files;
        e->files = n->next;
        bytes_free(&n->data);
        free(n->path);
        free(n);
    }
    pthread_mutex_destroy(&e->mu);
    free(e);
}

static menv *menv_new(void) {
    menv *e = calloc(1, sizeof *e);
    e->base = (kv_env){.open_read = m_open_read, .open_write = m_open_write, .open_append = m_open_append,
                       .read_at = m_read_at, .append = m_append, .sync = m_sync, .size = m_size, .close = m_close,
                       .file_size = m_file_size, .exists = m_exists, .remove = m_path_op, .rename = m_path2_op,
                       .link = m_path2_op, .truncate = m_truncate, .mkdir = m_mkdir, .rmdir = m_path_op,
                       .list_dir = m_list, .sync_dir = m_path_op, .lock = m_lock, .unlock = m_unlock,
                       .destroy = m_destroy};
    pthread_mutex_init(&e->mu, NULL);
    return e;
}

static kv_bytes *mfile(menv *e, const char *path) {
    mnode *n = m_find(e, path);
    return n ? &n->data : NULL;
}

/* ---- Model data ---------------------------------------------------------------------------------------------- */

typedef struct entry {
    kv_bytes key; /* internal key */
    kv_bytes val; /* entry value: varint timestamp || payload */
} entry;

typedef struct dataset {
    entry *e;
    size_t n;
} dataset;

static void ds_free(dataset *d) {
    for (size_t i = 0; i < d->n; i++) {
        bytes_free(&d->e[i].key);
        bytes_free(&d->e[i].val);
    }
    free(d->e);
    d->e = NULL;
    d->n = 0;
}

typedef struct ukey {
    uint8_t b[32];
    size_t n;
} ukey;

static int ukey_sort(const void *a, const void *b) {
    const ukey *x = a, *y = b;
    return ukey_cmp(x->b, x->n, y->b, y->n);
}

/* nkeys user keys (keyspace 0 or 1, 1..24 bytes over a small alphabet), 1..maxver versions each with distinct
 * decreasing sequence numbers, ~15% tombstones, values mostly small, some empty, a few up to big_max bytes. */
static dataset make_data(uint64_t seed, size_t nkeys, int maxver, size_t big_max, bool compressible) {
    uint64_t rs = seed;
    ukey *uk = calloc(nkeys, sizeof *uk);
    for (size_t i = 0; i < nkeys; i++) {
        uk[i].b[0] = (uint8_t)(t_rand(&rs) % 2);
        uk[i].n = 2 + t_rand(&rs) % 24;
        for (size_t j = 1; j < uk[i].n; j++) uk[i].b[j] = (uint8_t)('a' + t_rand(&rs) % 4);
    }
    qsort(uk, nkeys, sizeof *uk, ukey_sort);
    dataset d = {calloc(nkeys * (size_t)maxver, sizeof(entry)), 0};
    for (size_t i = 0; i < nkeys; i++) {
        if (i > 0 && ukey_sort(&uk[i - 1], &uk[i]) == 0) continue;
        int nv = 1 + (int)(t_rand(&rs) % (uint64_t)maxver);
        uint64_t seq = 1000000 + t_rand(&rs) % 1000000;
        for (int v = 0; v < nv; v++) {
            entry *e = &d.e[d.n++];
            int type = t_rand(&rs) % 7 == 0 ? KV_TYPE_DELETE : KV_TYPE_VALUE;
            bytes_reserve(&e->key, uk[i].n + 8);
            ikey_build(e->key.data, uk[i].b, uk[i].n, seq, type);
            e->key.len = uk[i].n + 8;
            seq -= 1 + t_rand(&rs) % 1000;
            bytes_append_varint(&e->val, 1700000000000ull + t_rand(&rs) % 1000000);
            if (type == KV_TYPE_VALUE) {
                size_t len;
                uint64_t r = t_rand(&rs) % 100;
                if (r < 15) len = 0;
                else if (r < 97 || big_max == 0) len = 1 + t_rand(&rs) % 100;
                else len = t_rand(&rs) % (big_max + 1);
                bytes_reserve(&e->val, len);
                for (size_t j = 0; j < len; j++)
                    e->val.data[e->val.len + j] = compressible ? (uint8_t)('a' + (j / 7) % 3) : (uint8_t)t_rand(&rs);
                e->val.len += len;
            }
        }
    }
    free(uk);
    return d;
}

static int build_table(kv_env *env, const char *path, const dataset *d, const sst_options *o, sst_props *props) {
    sst_builder *b;
    int rc = sst_builder_new(env, path, o, &b);
    if (rc) return rc;
    for (size_t i = 0; i < d->n; i++) {
        rc = sst_builder_add(b, d->e[i].key.data, d->e[i].key.len, d->e[i].val.data, d->e[i].val.len);
        if (rc) {
            sst_builder_abandon(b);
            return rc;
        }
    }
    if (sst_builder_entries(b) != d->n) {
        sst_builder_abandon(b);
        return KV_EINVAL;
    }
    return sst_builder_finish(b, props);
}

/* The expected answer to get(ukey, seq): the index of the newest entry of ukey with sequence <= seq, or -1. */
static long model_get(const dataset *d, const uint8_t *uk, size_t ulen, uint64_t seq) {
    size_t lo = 0, hi = d->n; /* first entry with ukey >= uk */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (ukey_cmp(d->e[mid].key.data, d->e[mid].key.len - 8, uk, ulen) < 0) lo = mid + 1;
        else hi = mid;
    }
    for (size_t i = lo; i < d->n && ukey_cmp(d->e[i].key.data, d->e[i].key.len - 8, uk, ulen) == 0; i++)
        if (ikey_seq(d->e[i].key.data, d->e[i].key.len) <= seq) return (long)i;
    return -1;
}

/* get(ukey, seq) agrees with the model. With tolerate_errors, an error is an acceptable answer too. */
static int check_get(sst_reader *r, const dataset *d, const uint8_t *uk, size_t ulen, uint64_t seq,
                     bool tolerate_errors) {
    int type = -1;
    uint64_t fseq = 0;
    kv_bytes v = {0};
    int rc = sst_reader_get(r, uk, ulen, seq, &type, &v, &fseq);
    long want = model_get(d, uk, ulen, seq);
    int ok;
    if (rc < 0) {
        ok = tolerate_errors;
        if (!ok) printf("# get failed: %d %s\n", rc, kv_errmsg());
    } else if (want < 0) {
        ok = rc == 0;
    } else {
        const entry *e = &d->e[want];
        ok = rc == 1 && type == ikey_type(e->key.data, e->key.len) && fseq == ikey_seq(e->key.data, e->key.len) &&
             v.len == e->val.len && (v.len == 0 || memcmp(v.data, e->val.data, v.len) == 0);
    }
    bytes_free(&v);
    return ok;
}

static int entry_is(iter *it, const entry *e) {
    size_t kn, vn;
    const uint8_t *k = it->key(it, &kn), *v = it->value(it, &vn);
    return kn == e->key.len && !memcmp(k, e->key.data, kn) && vn == e->val.len &&
           (vn == 0 || !memcmp(v, e->val.data, vn));
}

/* ---- Round trips --------------------------------------------------------------------------------------------- */

static void check_table(sst_reader *r, const dataset *d, uint64_t seed) {
    /* properties */
    const sst_props *p = sst_reader_props(r);
    CHECK_EQ(p->entries, d->n);
    if (d->n) {
        CHECK_MEM(p->smallest.data, p->smallest.len, d->e[0].key.data, d->e[0].key.len);
        CHECK_MEM(p->largest.data, p->largest.len, d->e[d->n - 1].key.data, d->e[d->n - 1].key.len);
    }
    /* gets at every version's sequence, just below and above it, and at the extremes */
    for (size_t i = 0; i < d->n; i++) {
        const uint8_t *uk = d->e[i].key.data;
        size_t ulen = d->e[i].key.len - 8;
        uint64_t s = ikey_seq(d->e[i].key.data, d->e[i].key.len);
        uint64_t seqs[] = {s, s - 1, s + 1, KV_MAX_SEQUENCE, UINT64_MAX, 0};
        for (size_t j = 0; j < sizeof seqs / sizeof seqs[0]; j++)
            CHECK_MSG(check_get(r, d, uk, ulen, seqs[j], false), "get entry %zu at seq %llu", i,
                      (unsigned long long)seqs[j]);
    }
    /* absent user keys: a changed last byte, a longer key, keys before and after everything */
    uint64_t rs = seed;
    for (int i = 0; i < 200 && d->n; i++) {
        const entry *e = &d->e[t_rand(&rs) % d->n];
        uint8_t uk[40];
        size_t ulen = e->key.len - 8;
        memcpy(uk, e->key.data, ulen);
        if (i % 2) uk[ulen - 1] ^= (uint8_t)(1 + t_rand(&rs) % 255);
        else uk[ulen++] = (uint8_t)t_rand(&rs);
        CHECK(check_get(r, d, uk, ulen, KV_MAX_SEQUENCE, false));
    }
    uint8_t lo[1] = {0}, hi[3] = {0xff, 0xff, 0xff};
    CHECK(check_get(r, d, lo, 1, KV_MAX_SEQUENCE, false));
    CHECK(check_get(r, d, hi, 3, KV_MAX_SEQUENCE, false));

    /* iterators */
    iter *it = sst_reader_iter(r, true);
    size_t i = 0;
    for (it->seek_first(it); it->valid(it); it->next(it), i++) CHECK_MSG(i < d->n && entry_is(it, &d->e[i]), "forward %zu", i);
    CHECK_EQ(i, d->n);
    CHECK_OK(it->status(it));
    i = d->n;
    for (it->seek_last(it); it->valid(it); it->prev(it)) {
        CHECK(i > 0);
        i--;
        CHECK_MSG(entry_is(it, &d->e[i]), "backward %zu", i);
    }
    CHECK_EQ(i, 0);
    CHECK_OK(it->status(it));
    for (i = 0; i < d->n; i++) {
        it->seek(it, d->e[i].key.data, d->e[i].key.len);
        CHECK_MSG(it->valid(it) && entry_is(it, &d->e[i]), "seek %zu", i);
        it->prev(it);
        if (i == 0) {
            CHECK(!it->valid(it));
        } else {
            CHECK_MSG(it->valid(it) && entry_is(it, &d->e[i - 1]), "seek %zu then prev", i);
            it->next(it);
            CHECK(it->valid(it) && entry_is(it, &d->e[i]));
        }
        it->seek(it, d->e[i].key.data, d->e[i].key.len);
        it->next(it);
        if (i + 1 < d->n) CHECK_MSG(it->valid(it) && entry_is(it, &d->e[i + 1]), "seek %zu then next", i);
        else CHECK(!it->valid(it));
        /* a lookup key (ukey, seq) lands on the newest version <= seq, or the next user key */
        uint8_t lk[48];
        size_t ulen = d->e[i].key.len - 8;
        uint64_t s = ikey_seq(d->e[i].key.data, d->e[i].key.len);
        ikey_build(lk, d->e[i].key.data, ulen, s, KV_TYPE_FOR_SEEK);
        it->seek(it, lk, ulen + 8);
        CHECK(it->valid(it) && entry_is(it, &d->e[i]));
    }
    uint8_t end[12];
    ikey_build(end, hi, 3, 0, 0);
    it->seek(it, end, 11);
    CHECK(!it->valid(it));
    CHECK_OK(it->status(it));
    it->destroy(it);
}

typedef struct variant {
    const char *what;
    sst_options o;
    size_t cache_bytes; /* 0: no cache */
} variant;

static const variant variants[] = {
    {"defaults, compressed, cached", {4096, 16, true, 10, false}, 8u << 20},
    {"uncompressed, no bloom, uncached", {4096, 16, false, 0, false}, 0},
    {"tiny blocks, restart 1, compressed", {64, 1, true, 10, false}, 0},
    {"one entry per block, tiny cache", {1, 2, false, 10, false}, 4096},
    {"small blocks, restart 3, cached", {300, 3, true, 5, false}, 1u << 20},
    {"restart 4, compressed, small cache", {4096, 4, true, 10, false}, 64u << 10},
    {"whole-stream deflate blocks, as earlier versions wrote", {4096, 16, true, 10, true}, 1u << 20},
};

TEST(test_sst_roundtrip_variants) {
    menv *env = menv_new();
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        for (int round = 0; round < 4; round++) {
            uint64_t seed = t_seed() + v * 100 + (uint64_t)round;
            size_t nkeys = round == 0 ? 1 : round == 1 ? 50 : 700;
            /* round 3: one version per user key, which lookups of seekable blocks take a shorter way through */
            dataset d = make_data(seed, nkeys, round == 3 ? 1 : 4, round >= 2 ? 0 : 64 * 1024, round != 1);
            uint64_t ukeys = 0;
            for (size_t i = 0; i < d.n; i++)
                ukeys += i == 0 || ukey_cmp(d.e[i - 1].key.data, d.e[i - 1].key.len - 8, d.e[i].key.data,
                                            d.e[i].key.len - 8) != 0;
            if (round == 3) CHECK_EQ(ukeys, d.n);
            sst_props props;
            CHECK_OK(build_table(&env->base, "t.sst", &d, &variants[v].o, &props));
            CHECK_EQ(props.entries, d.n);
            CHECK_EQ(props.file_size, mfile(env, "t.sst")->len);
            block_cache *bc = NULL;
            if (variants[v].cache_bytes) CHECK_OK(block_cache_new(variants[v].cache_bytes, &bc));
            sst_reader *r;
            CHECK_OK(sst_reader_open(&env->base, "t.sst", "000001.sst", 1 + v * 10 + (uint64_t)round, bc, &r));
            const sst_props *rp = sst_reader_props(r);
            CHECK_EQ(rp->entries, props.entries);
            CHECK_EQ(rp->tombstones, props.tombstones);
            CHECK_EQ(rp->min_seq, props.min_seq);
            CHECK_EQ(rp->max_seq, props.max_seq);
            CHECK_EQ(rp->raw_key_bytes, props.raw_key_bytes);
            CHECK_EQ(rp->raw_value_bytes, props.raw_value_bytes);
            CHECK_EQ(rp->data_blocks, props.data_blocks);
            CHECK_EQ(rp->user_keys, ukeys);
            CHECK_EQ(props.user_keys, ukeys);
            CHECK_EQ(rp->file_size, props.file_size);
            check_table(r, &d, seed);
            CHECK_EQ(sst_check_file(&env->base, "t.sst", "000001.sst", NULL, NULL), 0);
            sst_reader_unref(r);
            block_cache_free(bc);
            sst_props_free(&props);
            ds_free(&d);
            if (t_failed()) {
                printf("# variant '%s' round %d\n", variants[v].what, round);
                goto out;
            }
        }
    }
out:
    m_destroy(&env->base);
}

TEST(test_sst_compression_saves_space) {
    menv *env = menv_new();
    dataset d = make_data(t_seed(), 500, 2, 0, true);
    sst_options plain = {4096, 16, false, 10, false}, zipped = {4096, 16, true, 10, false};
    CHECK_OK(build_table(&env->base, "plain.sst", &d, &plain, NULL));
    CHECK_OK(build_table(&env->base, "zip.sst", &d, &zipped, NULL));
    size_t a = mfile(env, "plain.sst")->len, b = mfile(env, "zip.sst")->len;
    CHECK_MSG(b < a * 3 / 4, "compressed %zu vs plain %zu", b, a);
    /* incompressible values stay as they are: the sizes match */
    dataset rnd = make_data(t_seed() + 1, 300, 1, 0, false);
    for (size_t i = 0; i < rnd.n; i++) { /* make every value long and random */
        rnd.e[i].val.len = 0;
        bytes_append_varint(&rnd.e[i].val, 1);
        uint64_t rs = i + 1;
        for (int j = 0; j < 200; j++) {
            uint8_t x = (uint8_t)t_rand(&rs);
            bytes_append(&rnd.e[i].val, &x, 1);
        }
    }
    CHECK_OK(build_table(&env->base, "plain2.sst", &rnd, &plain, NULL));
    CHECK_OK(build_table(&env->base, "zip2.sst", &rnd, &zipped, NULL));
    CHECK_EQ(mfile(env, "plain2.sst")->len, mfile(env, "zip2.sst")->len);
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "zip.sst", "zip.sst", 1, NULL, &r));
    check_table(r, &d, 5);
    sst_reader_unref(r);
    ds_free(&d);
    ds_free(&rnd);
    m_destroy(&env->base);
}

TEST(test_sst_empty_table) {
    menv *env = menv_new();
    dataset d = {NULL, 0};
    sst_options o = {4096, 16, true, 10, false};
    sst_props props;
    CHECK_OK(build_table(&env->base, "e.sst", &d, &o, &props));
    CHECK_EQ(props.entries, 0);
    CHECK_EQ(props.data_blocks, 0);
    sst_props_free(&props);
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "e.sst", "e.sst", 1, NULL, &r));
    check_table(r, &d, 1);
    sst_reader_unref(r);
    CHECK_EQ(sst_check_file(&env->base, "e.sst", "e.sst", NULL, NULL), 0);
    m_destroy(&env->base);
}

TEST(test_sst_large_values) {
    /* values larger than the builder's output buffer and than a block */
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 9, 20, 1, 0, true);
    for (size_t i = 0; i < d.n; i += 3) {
        size_t len = 100000 + i * 1000;
        bytes_reserve(&d.e[i].val, len);
        for (size_t j = 0; j < len; j++) d.e[i].val.data[d.e[i].val.len + j] = (uint8_t)(i % 2 ? j * 7 : j / 100);
        d.e[i].val.len += len;
    }
    sst_options o = {4096, 16, true, 10, false};
    CHECK_OK(build_table(&env->base, "big.sst", &d, &o, NULL));
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "big.sst", "big.sst", 2, NULL, &r));
    check_table(r, &d, 2);
    sst_reader_unref(r);
    CHECK_EQ(sst_check_file(&env->base, "big.sst", "big.sst", NULL, NULL), 0);
    ds_free(&d);
    m_destroy(&env->base);
}

TEST(test_sst_builder_rejects_bad_keys) {
    menv *env = menv_new();
    sst_options o = {4096, 16, true, 10, false};
    sst_builder *b;
    CHECK_OK(sst_builder_new(&env->base, "x.sst", &o, &b));
    uint8_t k1[10], k2[10];
    ikey_build(k1, (const uint8_t *)"\0b", 2, 5, KV_TYPE_VALUE);
    ikey_build(k2, (const uint8_t *)"\0a", 2, 5, KV_TYPE_VALUE);
    uint8_t v[1] = {0};
    CHECK_OK(sst_builder_add(b, k1, 10, v, 1));
    CHECK_EQ(sst_builder_add(b, k1, 10, v, 1), KV_EINVAL); /* equal */
    CHECK_EQ(sst_builder_add(b, k2, 10, v, 1), KV_EINVAL); /* smaller */
    CHECK_EQ(sst_builder_add(b, k1, 8, v, 1), KV_EINVAL);  /* no user key */
    CHECK(sst_builder_size(b) > 0);
    sst_props p;
    CHECK_OK(sst_builder_finish(b, &p));
    CHECK_EQ(p.entries, 1);
    sst_props_free(&p);
    /* a write error is reported, and sticks */
    CHECK_OK(sst_builder_new(&env->base, "y.sst", &o, &b));
    atomic_store(&env->fail_appends, 1);
    int rc = KV_OK;
    for (uint64_t i = 0; i < 100000 && rc == KV_OK; i++) {
        uint8_t k[18] = {0, 'k'};
        for (int j = 0; j < 8; j++) k[2 + j] = (uint8_t)(i >> (56 - 8 * j)); /* big-endian: increasing */
        put_fixed64(k + 10, ikey_pack(1, KV_TYPE_VALUE));
        rc = sst_builder_add(b, k, 18, v, 1);
    }
    CHECK_EQ(rc, KV_EIO);
    CHECK_EQ(sst_builder_finish(b, NULL), KV_EIO);
    atomic_store(&env->fail_appends, 0);
    CHECK_OK(sst_builder_new(&env->base, "z.sst", &o, &b));
    CHECK_OK(sst_builder_add(b, k1, 10, v, 1));
    sst_builder_abandon(b);
    m_destroy(&env->base);
}

/* ---- Reads avoided ------------------------------------------------------------------------------------------- */

TEST(test_sst_absent_keys_skip_data_reads) {
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 77, 2000, 2, 0, true);
    sst_options with = {1024, 16, true, 10, false}, without = {1024, 16, true, 0, false};
    CHECK_OK(build_table(&env->base, "b.sst", &d, &with, NULL));
    CHECK_OK(build_table(&env->base, "n.sst", &d, &without, NULL));
    for (int cached = 0; cached < 2; cached++) {
        block_cache *bc = NULL;
        if (cached) CHECK_OK(block_cache_new(32u << 20, &bc));
        sst_reader *rb, *rn;
        CHECK_OK(sst_reader_open(&env->base, "b.sst", "b.sst", 100, bc, &rb));
        CHECK_OK(sst_reader_open(&env->base, "n.sst", "n.sst", 101, bc, &rn));
        uint64_t rs = 3;
        uint64_t reads_b = 0, reads_n = 0;
        int absent = 0;
        for (int i = 0; i < 2000; i++) {
            const entry *e = &d.e[t_rand(&rs) % d.n];
            uint8_t uk[40];
            size_t ulen = e->key.len - 8;
            memcpy(uk, e->key.data, ulen);
            uk[ulen++] = 'q'; /* sorts inside the table's range, absent */
            if (model_get(&d, uk, ulen, KV_MAX_SEQUENCE) >= 0) continue;
            absent++;
            uint64_t before = atomic_load(&env->reads);
            CHECK(check_get(rb, &d, uk, ulen, KV_MAX_SEQUENCE, false));
            reads_b += atomic_load(&env->reads) - before;
            before = atomic_load(&env->reads);
            CHECK(check_get(rn, &d, uk, ulen, KV_MAX_SEQUENCE, false));
            reads_n += atomic_load(&env->reads) - before;
        }
        printf("# %s: %d absent keys: %llu reads with bloom, %llu without\n", cached ? "cached" : "uncached", absent,
               (unsigned long long)reads_b, (unsigned long long)reads_n);
        CHECK(reads_b <= (uint64_t)absent / 30); /* ~1% false positives */
        if (!cached) CHECK(reads_n >= (uint64_t)absent * 9 / 10);
        /* present keys: the second lookup of a key is served by the cache */
        if (cached) {
            const entry *e = &d.e[d.n / 2];
            CHECK(check_get(rb, &d, e->key.data, e->key.len - 8, KV_MAX_SEQUENCE, false));
            uint64_t before = atomic_load(&env->reads), h0, m0, h1, m1;
            block_cache_stats(bc, &h0, &m0, NULL, NULL);
            CHECK(check_get(rb, &d, e->key.data, e->key.len - 8, KV_MAX_SEQUENCE, false));
            block_cache_stats(bc, &h1, &m1, NULL, NULL);
            CHECK_EQ(atomic_load(&env->reads), before);
            CHECK_EQ(m1, m0);
            CHECK_EQ(h1 - h0, 3); /* filter, index, data block */
        }
        sst_reader_unref(rb);
        sst_reader_unref(rn);
        block_cache_free(bc);
    }
    ds_free(&d);
    m_destroy(&env->base);
}

TEST(test_sst_fill_cache_false) {
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 5, 500, 2, 0, true);
    sst_options o = {1024, 16, true, 10, false};
    CHECK_OK(build_table(&env->base, "f.sst", &d, &o, NULL));
    block_cache *bc;
    CHECK_OK(block_cache_new(16u << 20, &bc));
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "f.sst", "f.sst", 7, bc, &r));
    uint64_t u0, u1;
    block_cache_stats(bc, NULL, NULL, &u0, NULL); /* index and filter */
    iter *it = sst_reader_iter(r, false);
    size_t n = 0;
    for (it->seek_first(it); it->valid(it); it->next(it)) n++;
    CHECK_EQ(n, d.n);
    it->destroy(it);
    block_cache_stats(bc, NULL, NULL, &u1, NULL);
    CHECK_EQ(u1, u0); /* no data block was added */
    it = sst_reader_iter(r, true);
    for (it->seek_first(it); it->valid(it); it->next(it)) {}
    it->destroy(it);
    block_cache_stats(bc, NULL, NULL, &u1, NULL);
    CHECK(u1 > u0);
    /* now a scan is served from the cache */
    uint64_t before = atomic_load(&env->reads);
    it = sst_reader_iter(r, false);
    for (it->seek_last(it); it->valid(it); it->prev(it)) {}
    CHECK_OK(it->status(it));
    it->destroy(it);
    CHECK_EQ(atomic_load(&env->reads), before);
    /* an iterator keeps the reader alive after its last other reference is gone */
    it = sst_reader_iter(r, true);
    sst_reader_unref(r);
    n = 0;
    for (it->seek_first(it); it->valid(it); it->next(it)) n++;
    CHECK_EQ(n, d.n);
    it->destroy(it);
    block_cache_free(bc);
    ds_free(&d);
    m_destroy(&env->base);
}

/* Point lookups of every user key, each checked against the model. */
static void get_all(sst_reader *r, const dataset *d) {
    for (size_t i = 0; i < d->n; i++)
        CHECK(check_get(r, d, d->e[i].key.data, d->e[i].key.len - 8, KV_MAX_SEQUENCE, false));
}

TEST(test_sst_cache_keeps_blocks_inflated_while_it_has_room) {
    /* While the cache has room to spare, point lookups cache seekable blocks inflated, as iterators do (a store that
     * fits in the cache is then searched without inflating anything); once it is full they cache them stored, and
     * lookups still answer right. */
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 6, 600, 2, 0, true);
    sst_options o = {1024, 8, true, 10, false};
    sst_props props;
    CHECK_OK(build_table(&env->base, "g.sst", &d, &o, &props));
    CHECK(props.data_blocks > 8);
    uint64_t u_iter, u_get, u0;
    block_cache *bc;
    sst_reader *r;
    /* every block through an iterator: all cached inflated */
    CHECK_OK(block_cache_new(16u << 20, &bc));
    CHECK_OK(sst_reader_open(&env->base, "g.sst", "g.sst", 11, bc, &r));
    iter *it = sst_reader_iter(r, true);
    for (it->seek_first(it); it->valid(it); it->next(it)) {}
    CHECK_OK(it->status(it));
    it->destroy(it);
    block_cache_stats(bc, NULL, NULL, &u_iter, NULL);
    sst_reader_unref(r);
    block_cache_free(bc);
    /* every block through point lookups, with room to spare: the same */
    CHECK_OK(block_cache_new(16u << 20, &bc));
    CHECK_OK(sst_reader_open(&env->base, "g.sst", "g.sst", 12, bc, &r));
    block_cache_stats(bc, NULL, NULL, &u0, NULL); /* index and filter */
    get_all(r, &d);
    block_cache_stats(bc, NULL, NULL, &u_get, NULL);
    CHECK_EQ(u_get, u_iter);
    uint64_t before = atomic_load(&env->reads);
    get_all(r, &d); /* all from the cache */
    CHECK_EQ(atomic_load(&env->reads), before);
    sst_reader_unref(r);
    block_cache_free(bc);
    /* a cache with room for half the inflated blocks: full, it takes blocks stored, and every answer is right */
    size_t cap = (size_t)(u0 + (u_iter - u0) / 2);
    CHECK_OK(block_cache_new(cap, &bc));
    CHECK_OK(sst_reader_open(&env->base, "g.sst", "g.sst", 13, bc, &r));
    for (int pass = 0; pass < 3; pass++) get_all(r, &d);
    uint64_t u_small, hits, misses;
    block_cache_stats(bc, &hits, &misses, &u_small, NULL);
    CHECK(u_small <= cap);
    CHECK(hits > 0);
    sst_reader_unref(r);
    block_cache_free(bc);
    sst_props_free(&props);
    ds_free(&d);
    m_destroy(&env->base);
}

TEST(test_sst_damage_found_when_a_cached_block_is_inflated) {
    /* A seekable block whose checksum is right but one of whose later spans is damaged: a point lookup reads it, finds
     * its key in the first span and caches the block stored (the cache has no room for it inflated). An iterator that
     * then finds it in the cache inflates it whole to cache it so, meets the damage, and fails with KV_ECORRUPT; so
     * does a lookup of a key in the damaged span. Nothing answers wrong. */
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 7, 300, 1, 0, true);
    sst_options o = {4096, 8, true, 10, false};
    CHECK_OK(build_table(&env->base, "h.sst", &d, &o, NULL));
    kv_bytes *f = mfile(env, "h.sst");
    /* The first data block, at offset 0: its size n is where its type byte and checksum follow. */
    size_t n = 0;
    for (size_t k = 1; k + 5 <= f->len && !n; k++)
        if (f->data[k] == 2 && get_fixed32(f->data + k + 1) == kv_checksum(f->data, k + 1)) n = k;
    CHECK_MSG(n > 64, "no seekable first block found (%zu)", n);
    /* Damage a byte two thirds into the block (inside the stream, past its first spans), then make the checksum
     * right again, so that only decoding can tell. */
    f->data[n * 2 / 3] ^= 0x5a;
    put_fixed32(f->data + n + 1, kv_checksum(f->data, n + 1));
    block_cache *bc;
    CHECK_OK(block_cache_new(64u << 10, &bc));
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "h.sst", "h.sst", 21, bc, &r));
    uint64_t u0, u1;
    block_cache_stats(bc, NULL, NULL, &u0, NULL);
    sst_reader_unref(r); /* again, with a cache sized for the index, the filter and the block stored, not inflated */
    block_cache_free(bc);
    CHECK_OK(block_cache_new((size_t)u0 + n + n / 2, &bc));
    CHECK_OK(sst_reader_open(&env->base, "h.sst", "h.sst", 22, bc, &r));
    CHECK(check_get(r, &d, d.e[0].key.data, d.e[0].key.len - 8, KV_MAX_SEQUENCE, false));
    block_cache_stats(bc, NULL, NULL, &u1, NULL);
    CHECK_MSG(u1 > u0 && u1 - u0 < n + n / 2, "cache grew by %llu for a block of %zu stored",
              (unsigned long long)(u1 - u0), n);
    uint64_t reads = atomic_load(&env->reads);
    iter *it = sst_reader_iter(r, true);
    it->seek_first(it);
    CHECK(!it->valid(it));
    CHECK_EQ(it->status(it), KV_ECORRUPT);
    CHECK_EQ(atomic_load(&env->reads), reads); /* found in the cache, not read again */
    CHECK(strstr(kv_errmsg(), "000022.sst") != NULL); /* blocks name their table by its number */
    it->destroy(it);
    /* every lookup answers right or reports the damage; at least one, in the damaged span, reports it */
    int corrupt = 0;
    for (size_t i = 0; i < d.n; i++) {
        int type;
        uint64_t fseq;
        kv_bytes v = {0};
        int rc = sst_reader_get(r, d.e[i].key.data, d.e[i].key.len - 8, KV_MAX_SEQUENCE, &type, &v, &fseq);
        bytes_free(&v);
        if (rc == KV_ECORRUPT) corrupt++;
        else CHECK(check_get(r, &d, d.e[i].key.data, d.e[i].key.len - 8, KV_MAX_SEQUENCE, false));
    }
    CHECK(corrupt > 0);
    sst_reader_unref(r);
    block_cache_free(bc);
    ds_free(&d);
    m_destroy(&env->base);
}

TEST(test_sst_read_errors) {
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 6, 300, 2, 0, true);
    sst_options o = {512, 16, true, 10, false};
    CHECK_OK(build_table(&env->base, "r.sst", &d, &o, NULL));
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "r.sst", "r.sst", 1, NULL, &r));
    atomic_store(&env->fail_reads, 1);
    int type;
    uint64_t fseq;
    kv_bytes v = {0};
    CHECK_EQ(sst_reader_get(r, d.e[0].key.data, d.e[0].key.len - 8, KV_MAX_SEQUENCE, &type, &v, &fseq), KV_EIO);
    iter *it = sst_reader_iter(r, true);
    it->seek_first(it);
    CHECK(!it->valid(it));
    CHECK_EQ(it->status(it), KV_EIO);
    it->destroy(it);
    CHECK(sst_check_file(&env->base, "r.sst", "r.sst", NULL, NULL) < 0);
    sst_reader *r2;
    CHECK_EQ(sst_reader_open(&env->base, "r.sst", "r.sst", 2, NULL, &r2), KV_EIO);
    atomic_store(&env->fail_reads, 0);
    CHECK_EQ(sst_reader_open(&env->base, "nope.sst", "nope.sst", 3, NULL, &r2), KV_ENOTFOUND);
    bytes_free(&v);
    sst_reader_unref(r);
    ds_free(&d);
    m_destroy(&env->base);
}

/* ---- Corruption ---------------------------------------------------------------------------------------------- */

typedef struct problems {
    long n;
    char first[300];
} problems;

static void on_problem(void *ctx, const char *file, uint64_t offset, const char *what) {
    problems *p = ctx;
    if (p->n++ == 0) snprintf(p->first, sizeof p->first, "%s@%llu: %s", file, (unsigned long long)offset, what);
}

/* Everything a reader can do with a possibly corrupt table: right answers or errors, never a wrong answer. */
static void exercise_corrupt(menv *env, const char *path, const dataset *d, block_cache *bc, uint64_t file_no) {
    sst_reader *r;
    int rc = sst_reader_open(&env->base, path, "000042.sst", file_no, bc, &r);
    if (rc) {
        CHECK_EQ(rc, KV_ECORRUPT);
        CHECK(strstr(kv_errmsg(), "000042.sst") != NULL);
        return;
    }
    for (size_t i = 0; i < d->n; i++) {
        const uint8_t *uk = d->e[i].key.data;
        size_t ulen = d->e[i].key.len - 8;
        uint64_t s = ikey_seq(d->e[i].key.data, d->e[i].key.len);
        CHECK_MSG(check_get(r, d, uk, ulen, s, true), "get %zu", i);
        CHECK_MSG(check_get(r, d, uk, ulen, s - 1, true), "get %zu below", i);
    }
    iter *it = sst_reader_iter(r, true);
    size_t i = 0;
    for (it->seek_first(it); it->valid(it); it->next(it), i++) CHECK_MSG(i < d->n && entry_is(it, &d->e[i]), "forward %zu", i);
    if (i < d->n) CHECK_MSG(it->status(it) == KV_ECORRUPT, "forward stopped at %zu of %zu, status %d", i, d->n, it->status(it));
    i = d->n;
    for (it->seek_last(it); it->valid(it); it->prev(it)) {
        CHECK(i > 0);
        CHECK_MSG(entry_is(it, &d->e[--i]), "backward %zu", i);
    }
    if (i > 0) CHECK(it->status(it) == KV_ECORRUPT);
    it->destroy(it);
    it = sst_reader_iter(r, false);
    for (i = 0; i < d->n; i += 3) {
        it->seek(it, d->e[i].key.data, d->e[i].key.len);
        if (it->valid(it)) CHECK(entry_is(it, &d->e[i]));
        else CHECK(it->status(it) == KV_ECORRUPT);
    }
    it->destroy(it);
    sst_reader_unref(r);
}

TEST(test_sst_every_byte_flip_detected) {
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 42, 24, 2, 0, true);
    sst_options o = {200, 4, true, 10, false};
    CHECK_OK(build_table(&env->base, "good.sst", &d, &o, NULL));
    kv_bytes good = {0};
    bytes_append(&good, mfile(env, "good.sst")->data, mfile(env, "good.sst")->len);
    printf("# table of %zu entries, %zu bytes\n", d.n, good.len);
    sst_options plain = o;
    plain.compression = false;
    CHECK_OK(build_table(&env->base, "plain.sst", &d, &plain, NULL));
    CHECK(mfile(env, "plain.sst")->len > good.len); /* so some blocks are compressed: flips hit zlib payloads */
    kv_file *f;
    CHECK_OK(env->base.open_write(&env->base, "bad.sst", &f));
    env->base.close(&env->base, f);
    kv_bytes *bad = mfile(env, "bad.sst");
    uint8_t flips[] = {0xff, 0x01, 0x80};
    for (size_t off = 0; off < good.len; off++) {
        for (size_t k = 0; k < sizeof flips; k++) {
            bytes_clear(bad);
            bytes_append(bad, good.data, good.len);
            bad->data[off] ^= flips[k];
            problems p = {0};
            long n = sst_check_file(&env->base, "bad.sst", "000042.sst", on_problem, &p);
            CHECK_MSG(n > 0 && n == p.n, "flip 0x%02x at offset %zu: %ld problems", flips[k], off, n);
            CHECK(strstr(p.first, "000042.sst@") == p.first);
            block_cache *bc = NULL;
            if (k == 1) CHECK_OK(block_cache_new(1u << 20, &bc));
            exercise_corrupt(env, "bad.sst", &d, bc, 1000 + off);
            block_cache_free(bc);
            if (t_failed()) {
                printf("# flip 0x%02x at offset %zu (first problem: %s)\n", flips[k], off, p.first);
                goto out;
            }
        }
    }
    /* truncations and an appended byte */
    for (size_t cut = 0; cut <= good.len; cut++) {
        bytes_clear(bad);
        bytes_append(bad, good.data, cut);
        if (cut == good.len) bytes_append(bad, "x", 1);
        problems p = {0};
        long n = sst_check_file(&env->base, "bad.sst", "000042.sst", on_problem, &p);
        CHECK_MSG(n > 0, "cut at %zu not detected", cut);
        sst_reader *r;
        CHECK_EQ(sst_reader_open(&env->base, "bad.sst", "000042.sst", 5, NULL, &r), KV_ECORRUPT);
    }
out:
    bytes_free(&good);
    ds_free(&d);
    m_destroy(&env->base);
}

TEST(test_sst_check_reports_offsets) {
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 43, 200, 1, 0, true);
    sst_options o = {512, 16, false, 10, false};
    CHECK_OK(build_table(&env->base, "c.sst", &d, &o, NULL));
    kv_bytes *fb = mfile(env, "c.sst");
    fb->data[600] ^= 0x40; /* inside the second data block (blocks are ~517 bytes + trailer) */
    problems p = {0};
    CHECK_EQ(sst_check_file(&env->base, "c.sst", "000009.sst", on_problem, &p), 1);
    printf("# %s\n", p.first);
    CHECK(strstr(p.first, "000009.sst@") == p.first);
    CHECK(strstr(p.first, "checksum") != NULL);
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "c.sst", "000009.sst", 9, NULL, &r));
    iter *it = sst_reader_iter(r, true);
    for (it->seek_first(it); it->valid(it); it->next(it)) {}
    CHECK_EQ(it->status(it), KV_ECORRUPT);
    CHECK_MSG(strstr(kv_errmsg(), "000009.sst: bad block checksum at offset ") != NULL, "%s", kv_errmsg());
    it->destroy(it);
    sst_reader_unref(r);
    ds_free(&d);
    m_destroy(&env->base);
}

/* ---- Concurrency --------------------------------------------------------------------------------------------- */

typedef struct getter {
    sst_reader *r;
    const dataset *d;
    int seed;
    int bad;
} getter;

static void *getter_main(void *arg) {
    getter *g = arg;
    uint64_t rs = (uint64_t)g->seed;
    for (int i = 0; i < 3000; i++) {
        const entry *e = &g->d->e[t_rand(&rs) % g->d->n];
        if (!check_get(g->r, g->d, e->key.data, e->key.len - 8, ikey_seq(e->key.data, e->key.len), false)) g->bad++;
        if (i % 500 == 0) {
            iter *it = sst_reader_iter(g->r, true);
            size_t n = 0;
            for (it->seek_first(it); it->valid(it); it->next(it)) n++;
            if (n != g->d->n) g->bad++;
            it->destroy(it);
        }
    }
    return NULL;
}

TEST(test_sst_concurrent_readers) {
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 8, 1000, 3, 0, true);
    sst_options o = {1024, 16, true, 10, false};
    CHECK_OK(build_table(&env->base, "m.sst", &d, &o, NULL));
    block_cache *bc;
    CHECK_OK(block_cache_new(64 * 1024, &bc)); /* small: constant eviction and reloading */
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "m.sst", "m.sst", 1, bc, &r));
    getter g[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        g[i] = (getter){r, &d, i + 1, 0};
        pthread_create(&th[i], NULL, getter_main, &g[i]);
    }
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++) CHECK_EQ(g[i].bad, 0);
    sst_reader_unref(r);
    block_cache_free(bc);
    ds_free(&d);
    m_destroy(&env->base);
}

/* ---- Table cache (on the real file system) ------------------------------------------------------------------- */

typedef struct tc_worker {
    table_cache *tc;
    dataset *ds;
    int seed, bad;
} tc_worker;

static void *tc_main(void *arg) {
    tc_worker *w = arg;
    uint64_t rs = (uint64_t)w->seed;
    for (int i = 0; i < 400; i++) {
        uint64_t fno = 1 + t_rand(&rs) % 8;
        sst_reader *r;
        if (table_cache_get(w->tc, fno, &r) != KV_OK) {
            w->bad++;
            continue;
        }
        const dataset *d = &w->ds[fno - 1];
        const entry *e = &d->e[t_rand(&rs) % d->n];
        if (!check_get(r, d, e->key.data, e->key.len - 8, KV_MAX_SEQUENCE, false)) w->bad++;
        if (i % 50 == 0) table_cache_evict(w->tc, fno);
        sst_reader_unref(r);
    }
    return NULL;
}

TEST(test_table_cache) {
    const char *dir = t_tmpdir();
    kv_env *env = kv_env_posix();
    dataset ds[8];
    sst_options o = {4096, 16, true, 10, false};
    for (int i = 0; i < 8; i++) {
        ds[i] = make_data(t_seed() + 1000 + (uint64_t)i, 100, 2, 0, true);
        char path[512];
        snprintf(path, sizeof path, "%s/%06d.sst", dir, i + 1);
        CHECK_OK(build_table(env, path, &ds[i], &o, NULL));
    }
    block_cache *bc;
    CHECK_OK(block_cache_new(1u << 20, &bc));
    table_cache *tc;
    CHECK_OK(table_cache_new(env, dir, 3, bc, &tc));
    /* every table, several times; at most 3 stay open but all work */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 8; i++) {
            sst_reader *r;
            CHECK_OK(table_cache_get(tc, (uint64_t)i + 1, &r));
            CHECK_EQ(sst_reader_props(r)->entries, ds[i].n);
            const entry *e = &ds[i].e[ds[i].n / 2];
            CHECK(check_get(r, &ds[i], e->key.data, e->key.len - 8, KV_MAX_SEQUENCE, false));
            sst_reader_unref(r);
        }
    }
    /* a reader held across its eviction stays usable */
    sst_reader *held;
    CHECK_OK(table_cache_get(tc, 2, &held));
    table_cache_evict(tc, 2);
    table_cache_evict(tc, 2);
    for (int i = 3; i <= 8; i++) {
        sst_reader *r;
        CHECK_OK(table_cache_get(tc, (uint64_t)i, &r));
        sst_reader_unref(r);
    }
    iter *it = sst_reader_iter(held, true);
    size_t n = 0;
    for (it->seek_first(it); it->valid(it); it->next(it)) n++;
    CHECK_EQ(n, ds[1].n);
    it->destroy(it);
    sst_reader_unref(held);
    /* a missing table is an error, and is not cached */
    sst_reader *r;
    CHECK(table_cache_get(tc, 99, &r) < 0);
    CHECK(strstr(kv_errmsg(), "000099.sst") != NULL);
    /* threads */
    tc_worker w[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        w[i] = (tc_worker){tc, ds, 7 + i, 0};
        pthread_create(&th[i], NULL, tc_main, &w[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK_EQ(w[0].bad + w[1].bad, 0);
    table_cache_free(tc);
    block_cache_free(bc);
    for (int i = 0; i < 8; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%06d.sst", dir, i + 1);
        CHECK_EQ(sst_check_file(env, path, path + strlen(dir) + 1, NULL, NULL), 0);
        ds_free(&ds[i]);
    }
}

TEST(test_sst_short_key_in_data_block_is_corruption) {
    /* A data block whose checksum is right but whose first entry's key is 3 bytes, shorter than the 8-byte trailer
     * (a checksum that collided, or a table written by someone else): every key an iterator hands out is compared
     * and split as an internal key (by the merging iterator, the store's iterator, compaction, blob GC), so such a
     * key must be reported as corruption, naming the file and the block, never handed out. */
    menv *env = menv_new();
    dataset d = {calloc(2, sizeof(entry)), 2};
    const char *uk[2] = {"\0aa", "\0bb"};
    for (size_t i = 0; i < 2; i++) {
        bytes_reserve(&d.e[i].key, 11);
        ikey_build(d.e[i].key.data, (const uint8_t *)uk[i], 3, 5 + i, KV_TYPE_VALUE);
        d.e[i].key.len = 11;
        bytes_append_varint(&d.e[i].val, 1700000000000ull);
        bytes_append(&d.e[i].val, "v", 1);
    }
    sst_options o = {4096, 1, false, 0, false};
    CHECK_OK(build_table(&env->base, "t.sst", &d, &o, NULL));
    kv_bytes *f = mfile(env, "t.sst");
    /* One data block, [0, filter offset - 5), then its trailer. Its first entry: shared 0, unshared 11, value 7. */
    size_t bsize = (size_t)get_fixed64(f->data + f->len - SST_FOOTER) - 5;
    CHECK(f->data[0] == 0 && f->data[1] == 11 && f->data[2] == 7);
    /* The same bytes read as a 3-byte key and a 15-byte value (the trailer moves into the value). */
    f->data[1] = 3;
    f->data[2] = 15;
    put_fixed32(f->data + bsize + 1, kv_checksum(f->data, bsize + 1));
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "t.sst", "000042.sst", 42, NULL, &r));
    iter *it = sst_reader_iter(r, false);
    it->seek_first(it);
    CHECK(!it->valid(it));
    CHECK_EQ(it->status(it), KV_ECORRUPT);
    CHECK_MSG(strstr(kv_errmsg(), "000042.sst") && strstr(kv_errmsg(), "at offset 0"), "%s", kv_errmsg());
    it->destroy(it);
    /* Backwards: the second entry is whole, the step back to the first is damage. */
    it = sst_reader_iter(r, false);
    it->seek_last(it);
    CHECK(it->valid(it));
    it->prev(it);
    CHECK(!it->valid(it));
    CHECK_EQ(it->status(it), KV_ECORRUPT);
    it->destroy(it);
    /* Two such iterators merged: comparing their first keys as internal keys would read before them. */
    iter *two[2] = {sst_reader_iter(r, false), sst_reader_iter(r, false)};
    iter *m = merge_iter_new(two, 2);
    m->seek_first(m);
    CHECK(!m->valid(m));
    CHECK_EQ(m->status(m), KV_ECORRUPT);
    m->destroy(m);
    sst_reader_unref(r);
    ds_free(&d);
    m_destroy(&env->base);
}

/* n entries with 4-byte user keys "\0NNN" (NNN = 000, 001, ...), all at sequence 5, each with the value v. */
static dataset numbered_data(size_t n, const char *v) {
    dataset d = {calloc(n, sizeof(entry)), n};
    for (size_t i = 0; i < n; i++) {
        char uk[32]; /* n <= 1000: four bytes used */
        snprintf(uk, sizeof uk, "%c%03zu", 0, i % 1000);
        bytes_reserve(&d.e[i].key, 12);
        ikey_build(d.e[i].key.data, (const uint8_t *)uk, 4, 5, KV_TYPE_VALUE);
        d.e[i].key.len = 12;
        bytes_append_varint(&d.e[i].val, 1700000000000ull);
        bytes_append(&d.e[i].val, v, strlen(v));
    }
    return d;
}

/* The same for a point lookup: a data-block key of exactly 8 bytes (a trailer and no user key; every user key has a
 * keyspace byte and at least one more) is damage too. A lookup that reached it compared it as an internal key with
 * an empty user key, went on, and answered "absent" for a key the block had held; the table's iterator refused it. (A seekable block's restart entries
 * are checked by the same rule in zblock.c; a deflate stream is not edited here.) */
TEST(test_sst_lookup_reports_an_eight_byte_key) {
    menv *env = menv_new();
    enum { N = 40 };
    dataset d = numbered_data(N, "value value value value value value");
    sst_options o = {4096, 1, false, 0, false};
    CHECK_OK(build_table(&env->base, "t.sst", &d, &o, NULL));
    kv_bytes *f = mfile(env, "t.sst");
    size_t bsize = (size_t)get_fixed64(f->data + f->len - SST_FOOTER) - 5;
    /* the first entry: shared 0, unshared 12, value 41; read as an 8-byte key and a 45-byte value */
    CHECK(f->data[0] == 0 && f->data[1] == 12 && f->data[2] == 41);
    f->data[1] = 8;
    f->data[2] = 45;
    put_fixed32(f->data + bsize + 1, kv_checksum(f->data, bsize + 1));
    sst_reader *r;
    CHECK_OK(sst_reader_open(&env->base, "t.sst", "000042.sst", 42, NULL, &r));
    int type;
    kv_bytes v = {0};
    uint64_t fseq;
    int rc = sst_reader_get(r, (const uint8_t *)"\0" "000", 4, KV_MAX_SEQUENCE, &type, &v, &fseq);
    CHECK_MSG(rc == KV_ECORRUPT, "lookup: %d", rc);
    CHECK_MSG(strstr(kv_errmsg(), "000042.sst"), "%s", kv_errmsg());
    bytes_free(&v);
    sst_reader_unref(r);
    ds_free(&d);
    m_destroy(&env->base);
}

/* Found by fuzzing (tests/fuzz/fuzz_sst.c): a properties block whose first entry has an empty name. Comparing the
 * next name with it passed memcmp a NULL buffer (undefined behaviour, which UBSan reports), and the table opened
 * with its properties silently missing. Every property has a name: such a block is corruption, named by file and
 * offset, for the reader and for the check. */
TEST(test_sst_property_without_a_name_is_corruption) {
    menv *env = menv_new();
    dataset d = make_data(t_seed() + 77, 20, 1, 0, true);
    sst_options o = {4096, 4, false, 0, false};
    CHECK_OK(build_table(&env->base, "t.sst", &d, &o, NULL));
    kv_bytes *f = mfile(env, "t.sst");
    const uint8_t *ft = f->data + f->len - SST_FOOTER;
    size_t poff = (size_t)get_fixed64(ft + 16), psize = (size_t)get_fixed64(ft + 24);
    /* The first property ("data_blocks": shared 0, unshared 11, a one-byte value), read as an empty name whose value
     * runs over the name's bytes. */
    uint8_t *pb = f->data + poff;
    CHECK_MSG(pb[0] == 0 && pb[1] == 11 && pb[2] < 100 && memcmp(pb + 3, "data_blocks", 11) == 0, "%02x %02x", pb[0],
              pb[1]);
    pb[1] = 0;
    pb[2] = (uint8_t)(pb[2] + 11);
    put_fixed32(pb + psize + 1, kv_checksum(pb, psize + 1));
    sst_reader *r = NULL;
    CHECK_EQ(sst_reader_open(&env->base, "t.sst", "000042.sst", 42, NULL, &r), KV_ECORRUPT);
    CHECK_MSG(strstr(kv_errmsg(), "000042.sst") && strstr(kv_errmsg(), "offset"), "%s", kv_errmsg());
    ds_free(&d);
    m_destroy(&env->base);
}

/* Found by fuzzing (tests/fuzz/fuzz_sst.c): an index key that reaches into the next block (here block 0's index key
 * is block 1's first key, still below block 1's own index key, so the index stays in order). A lookup of that key
 * reads block 0, misses, and answers absent; a seek lands on a smaller key. The check walked every block but only
 * compared each block's last key with its index key, so it reported the table clean. It now also requires each
 * block's first key to be greater than the index key before it. */
TEST(test_sst_check_finds_an_index_key_past_the_next_block) {
    menv *env = menv_new();
    enum { N = 40 };
    dataset d = numbered_data(N, "value value value value");
    sst_options o = {200, 4, false, 0, false};
    CHECK_OK(build_table(&env->base, "t.sst", &d, &o, NULL));
    CHECK_EQ(sst_check_file(&env->base, "t.sst", "000042.sst", NULL, NULL), 0);
    kv_bytes *f = mfile(env, "t.sst");
    const uint8_t *ft = f->data + f->len - SST_FOOTER;
    size_t ioff = (size_t)get_fixed64(ft + 32), isize = (size_t)get_fixed64(ft + 40);
    /* The first index entry: shared 0, unshared 12, its handle; the key is block 0's last key "\0NNN" @5. */
    uint8_t *ib = f->data + ioff;
    CHECK(ib[0] == 0 && ib[1] == 12 && ib[3] == 0);
    unsigned last0 = (unsigned)((ib[4] - '0') * 100 + (ib[5] - '0') * 10 + (ib[6] - '0'));
    CHECK(last0 + 2 < N);
    char next[5];
    snprintf(next, sizeof next, "%03u", last0 + 1); /* block 1's first key */
    memcpy(ib + 4, next, 3);
    put_fixed32(ib + isize + 1, kv_checksum(ib, isize + 1));
    t_problems pr = {{0}, 0};
    CHECK(sst_check_file(&env->base, "t.sst", "000042.sst", t_on_problem, &pr) > 0);
    CHECK_MSG(strstr(pr.first, "index key"), "%s", pr.first);
    ds_free(&d);
    m_destroy(&env->base);
}
