/* test_blob.c — blob references (splice/truncate algebra against a byte-array model, encoding), blob files (whole and
 * streamed records, ranged reads, corruption detection, torn files), the blob store (missing files, the bounded
 * reader cache, concurrent reads) and the writer's error handling. */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "blob.h"
#include "env.h"
#include "error.h"
#include "t.h"

#define C BLOB_CHUNK

static void fill_random(uint8_t *p, size_t n, uint64_t *st) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(t_rand(st) >> 56);
}

static void blob_path(char *buf, size_t n, const char *dir, uint64_t file_no) {
    snprintf(buf, n, "%s/%06llu.blob", dir, (unsigned long long)file_no);
}

static blob_extent data_ext(uint64_t file_no, uint64_t rec_off, uint64_t rec_len, uint64_t skip, uint64_t len) {
    return (blob_extent){file_no, rec_off, rec_len, skip, len};
}
static blob_extent hole_ext(uint64_t len) { return (blob_extent){0, 0, 0, 0, len}; }

static bool ext_eq(const blob_extent *a, const blob_extent *b) {
    return a->file_no == b->file_no && a->rec_off == b->rec_off && a->rec_len == b->rec_len && a->skip == b->skip &&
           a->len == b->len;
}

/* The test's own statement of when two neighbouring extents should have been merged. */
static bool should_merge(const blob_extent *a, const blob_extent *b) {
    if (a->file_no == 0 || b->file_no == 0) return a->file_no == 0 && b->file_no == 0;
    if (a->file_no != b->file_no) return false;
    if (a->rec_off == b->rec_off && a->rec_len == b->rec_len && b->skip == a->skip + a->len) return true;
    uint64_t span = a->rec_len + 8 * (a->rec_len / C);
    return a->rec_len % C == 0 && a->skip + a->len == a->rec_len && b->skip == 0 && b->rec_off == a->rec_off + span;
}

/* NULL when r is well formed, else what is wrong. */
static const char *ref_problem(const blob_ref *r) {
    uint64_t sum = 0;
    for (size_t i = 0; i < r->n; i++) {
        const blob_extent *e = &r->ext[i];
        if (e->len == 0) return "zero-length extent";
        if (e->file_no == 0 && (e->rec_off || e->rec_len || e->skip)) return "hole with record fields";
        if (e->file_no != 0 && e->skip + e->len > e->rec_len) return "extent outside its record";
        if (i > 0 && should_merge(&r->ext[i - 1], e)) return "unmerged neighbours";
        sum += e->len;
    }
    return sum == r->size ? NULL : "lens do not add up to size";
}

static bool ref_eq(const blob_ref *a, const blob_ref *b) {
    if (a->size != b->size || a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++)
        if (!ext_eq(&a->ext[i], &b->ext[i])) return false;
    return true;
}

/* Encode r after a prefix, decode it back, compare. */
static int roundtrip(const blob_ref *r) {
    kv_bytes b = {0};
    bytes_append(&b, "xy", 2);
    int rc = blob_ref_encode(r, &b);
    if (rc) return rc;
    blob_ref d = {0};
    rc = memcmp(b.data, "xy", 2) ? KV_ECORRUPT : blob_ref_decode(b.data + 2, b.len - 2, &d);
    if (rc == KV_OK && !ref_eq(r, &d)) rc = KV_ECORRUPT;
    blob_ref_free(&d);
    bytes_free(&b);
    return rc;
}

/* ---- A counting / failing environment around the POSIX one --------------------------------------------------- */

typedef struct {
    kv_env e;
    kv_env *base;
    pthread_mutex_t mu;
    kv_file *reads[64]; /* files open for reading */
    int nreads, max_reads;
    long appends_left; /* < 0: unlimited */
} wrap_env;

static wrap_env *W(kv_env *e) { return (wrap_env *)e; }

static int w_open_read(kv_env *e, const char *p, kv_file **o) {
    int rc = W(e)->base->open_read(W(e)->base, p, o);
    if (rc) return rc;
    pthread_mutex_lock(&W(e)->mu);
    if (W(e)->nreads < 64) W(e)->reads[W(e)->nreads++] = *o;
    if (W(e)->nreads > W(e)->max_reads) W(e)->max_reads = W(e)->nreads;
    pthread_mutex_unlock(&W(e)->mu);
    return KV_OK;
}
static int w_open_write(kv_env *e, const char *p, kv_file **o) { return W(e)->base->open_write(W(e)->base, p, o); }
static int w_read_at(kv_env *e, kv_file *f, uint64_t off, void *buf, size_t len, size_t *n) {
    return W(e)->base->read_at(W(e)->base, f, off, buf, len, n);
}
static int w_append(kv_env *e, kv_file *f, const void *buf, size_t len) {
    if (W(e)->appends_left == 0) return kv_set_error(KV_EIO, "injected append failure");
    if (W(e)->appends_left > 0) W(e)->appends_left--;
    return W(e)->base->append(W(e)->base, f, buf, len);
}
static int w_sync(kv_env *e, kv_file *f) { return W(e)->base->sync(W(e)->base, f); }
static int w_size(kv_env *e, kv_file *f, uint64_t *s) { return W(e)->base->size(W(e)->base, f, s); }
static int w_close(kv_env *e, kv_file *f) {
    pthread_mutex_lock(&W(e)->mu);
    for (int i = 0; i < W(e)->nreads; i++)
        if (W(e)->reads[i] == f) {
            W(e)->reads[i] = W(e)->reads[--W(e)->nreads];
            break;
        }
    pthread_mutex_unlock(&W(e)->mu);
    return W(e)->base->close(W(e)->base, f);
}

static void wrap_init(wrap_env *w) {
    memset(w, 0, sizeof *w);
    w->base = kv_env_posix();
    w->e = *w->base; /* the calls blob.c does not use go straight to the base */
    w->e.open_read = w_open_read;
    w->e.open_write = w_open_write;
    w->e.read_at = w_read_at;
    w->e.append = w_append;
    w->e.appendv = NULL; /* gathered appends go through w_append, piece by piece */
    w->e.sync = w_sync;
    w->e.size = w_size;
    w->e.close = w_close;
    w->appends_left = -1;
    pthread_mutex_init(&w->mu, NULL);
}

/* ---- Raw file access for damaging files ---------------------------------------------------------------------- */

static int raw_xor(const char *path, uint64_t off, uint8_t mask) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    uint8_t b;
    int ok = pread(fd, &b, 1, (off_t)off) == 1;
    b ^= mask;
    ok = ok && pwrite(fd, &b, 1, (off_t)off) == 1;
    close(fd);
    return ok ? 0 : -1;
}

static long raw_size(const char *path) {
    uint64_t n;
    return kv_env_posix()->file_size(kv_env_posix(), path, &n) ? -1 : (long)n;
}

static uint8_t *raw_read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(sz > 0 ? (size_t)sz : 1);
    *n = fread(p, 1, (size_t)sz, f);
    fclose(f);
    return p;
}

typedef struct {
    long problems;
    char last[200];
    uint64_t first_off;
} problems;

static void on_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    problems *p = ctx;
    if (p->problems++ == 0) p->first_off = off;
    snprintf(p->last, sizeof p->last, "%s@%llu: %s", file, (unsigned long long)off, what);
}

/* ---- Reference algebra: hand-picked cases --------------------------------------------------------------------- */

TEST(test_splice_empty_and_zero_length) {
    blob_ref r = {0};
    blob_extent z = data_ext(7, 16, 100, 10, 0);
    CHECK_OK(blob_ref_splice(&r, 0, &z));
    CHECK_OK(blob_ref_splice(&r, 500, &z)); /* a zero-length write past the end does not extend */
    CHECK_EQ(r.size, 0);
    CHECK_EQ(r.n, 0);
    blob_extent e = data_ext(7, 16, 100, 10, 20);
    CHECK_OK(blob_ref_splice(&r, 0, &e));
    CHECK_EQ(r.size, 20);
    CHECK_EQ(r.n, 1);
    CHECK(ext_eq(&r.ext[0], &e));
    CHECK_OK(blob_ref_splice(&r, 5, &z));
    CHECK_EQ(r.n, 1);
    CHECK_EQ(r.size, 20);
    /* a hole of 0 (what blob_writer_end gives for an empty record) is also a no-op */
    blob_extent h0 = hole_ext(0);
    CHECK_OK(blob_ref_splice(&r, 100, &h0));
    CHECK_EQ(r.size, 20);
    blob_ref_free(&r);
    CHECK(r.ext == NULL && r.n == 0 && r.size == 0);
}

TEST(test_splice_inside_one_extent_splits_in_three) {
    blob_ref r = {0};
    blob_extent a = data_ext(7, 16, 1000, 100, 800);
    CHECK_OK(blob_ref_splice(&r, 0, &a));
    blob_extent b = data_ext(8, 16, 50, 0, 50);
    CHECK_OK(blob_ref_splice(&r, 300, &b));
    CHECK_EQ(r.n, 3);
    CHECK_EQ(r.size, 800);
    blob_extent head = data_ext(7, 16, 1000, 100, 300), tail = data_ext(7, 16, 1000, 450, 450);
    CHECK(ext_eq(&r.ext[0], &head));
    CHECK(ext_eq(&r.ext[1], &b));
    CHECK(ext_eq(&r.ext[2], &tail));
    /* writing the original bytes back merges all three into the original extent */
    blob_extent orig = data_ext(7, 16, 1000, 400, 50);
    CHECK_OK(blob_ref_splice(&r, 300, &orig));
    CHECK_EQ(r.n, 1);
    CHECK(ext_eq(&r.ext[0], &a));
    /* a write at offset 0 and one ending exactly at the end leave two pieces each */
    CHECK_OK(blob_ref_splice(&r, 0, &b));
    CHECK_EQ(r.n, 2);
    CHECK_EQ(r.ext[1].skip, 150);
    CHECK_OK(blob_ref_splice(&r, 750, &b));
    CHECK_EQ(r.n, 3);
    CHECK_EQ(r.size, 800);
    CHECK(ref_problem(&r) == NULL);
    blob_ref_free(&r);
}

TEST(test_splice_across_many_extents) {
    blob_ref r = {0};
    /* five extents in five different files: nothing merges */
    for (uint64_t i = 0; i < 5; i++) {
        blob_extent e = data_ext(10 + i, 16, 100, 0, 100);
        CHECK_OK(blob_ref_splice(&r, i * 100, &e));
    }
    CHECK_EQ(r.n, 5);
    blob_extent w = data_ext(20, 16, 300, 0, 250);
    CHECK_OK(blob_ref_splice(&r, 120, &w)); /* [120, 370): end of #1, all of #2, start of #3 */
    CHECK_EQ(r.n, 5);
    CHECK_EQ(r.size, 500);
    CHECK(r.ext[0].file_no == 10 && r.ext[0].len == 100);
    CHECK(r.ext[1].file_no == 11 && r.ext[1].len == 20 && r.ext[1].skip == 0);
    CHECK(ext_eq(&r.ext[2], &w));
    CHECK(r.ext[3].file_no == 13 && r.ext[3].skip == 70 && r.ext[3].len == 30);
    CHECK(r.ext[4].file_no == 14 && r.ext[4].skip == 0 && r.ext[4].len == 100);
    /* replacing everything and more with one extent */
    blob_extent all = data_ext(21, 16, 1000, 0, 1000);
    CHECK_OK(blob_ref_splice(&r, 0, &all));
    CHECK_EQ(r.n, 1);
    CHECK_EQ(r.size, 1000);
    CHECK(ext_eq(&r.ext[0], &all));
    blob_ref_free(&r);
}

TEST(test_splice_append_and_past_end) {
    blob_ref r = {0};
    blob_extent a = data_ext(7, 16, 100, 0, 100);
    CHECK_OK(blob_ref_splice(&r, 0, &a));
    blob_extent b = data_ext(7, 124, 100, 0, 100); /* the next record, but a is not whole chunks */
    CHECK_OK(blob_ref_splice(&r, 100, &b));
    CHECK_EQ(r.n, 2);
    CHECK_EQ(r.size, 200);
    blob_extent c = data_ext(9, 16, 10, 0, 10);
    CHECK_OK(blob_ref_splice(&r, 1000, &c)); /* past the end: hole, then the data */
    CHECK_EQ(r.n, 4);
    CHECK_EQ(r.size, 1010);
    CHECK(r.ext[2].file_no == 0 && r.ext[2].len == 800);
    CHECK(ext_eq(&r.ext[3], &c));
    /* a hole spliced past the end merges with the gap hole */
    blob_extent h = hole_ext(5);
    CHECK_OK(blob_ref_splice(&r, 2000, &h));
    CHECK_EQ(r.n, 5);
    CHECK(r.ext[4].file_no == 0 && r.ext[4].len == 995);
    CHECK_OK(blob_ref_splice(&r, 1005, &h)); /* hole over the end of c, bridging to the hole after it */
    CHECK_EQ(r.n, 5);
    CHECK(r.ext[3].len == 5 && r.ext[4].file_no == 0 && r.ext[4].len == 1000);
    CHECK_EQ(r.size, 2005);
    CHECK(ref_problem(&r) == NULL);
    blob_ref_free(&r);
}

TEST(test_splice_merges_continuing_extents) {
    blob_ref r = {0};
    /* holes merge with holes, also across a replaced extent */
    blob_extent h = hole_ext(10), d = data_ext(7, 16, 5, 0, 5);
    CHECK_OK(blob_ref_splice(&r, 0, &h));
    CHECK_OK(blob_ref_splice(&r, 10, &d));
    CHECK_OK(blob_ref_splice(&r, 15, &h));
    CHECK_EQ(r.n, 3);
    blob_extent h5 = hole_ext(5);
    CHECK_OK(blob_ref_splice(&r, 10, &h5));
    CHECK_EQ(r.n, 1);
    CHECK(r.ext[0].file_no == 0 && r.ext[0].len == 25);
    blob_ref_free(&r);

    /* pieces of one record written in order merge into one extent */
    for (uint64_t skip = 0; skip < 1000; skip += 37) {
        uint64_t len = skip + 37 <= 1000 ? 37 : 1000 - skip;
        blob_extent e = data_ext(7, 16, 1000, skip, len);
        CHECK_OK(blob_ref_splice(&r, skip, &e));
    }
    CHECK_EQ(r.n, 1);
    CHECK_EQ(r.ext[0].len, 1000);
    blob_ref_free(&r);

    /* whole-chunk records followed by the next record merge; the merged extent is one longer record */
    uint64_t off = BLOB_HEADER, vpos = 0;
    uint64_t lens[] = {C, 3 * C, 2 * C, 77};
    for (int i = 0; i < 4; i++) {
        blob_extent e = data_ext(7, off, lens[i], 0, lens[i]);
        CHECK_OK(blob_ref_splice(&r, vpos, &e));
        off += lens[i] + 8 * ((lens[i] + C - 1) / C);
        vpos += lens[i];
    }
    CHECK_EQ(r.n, 1);
    blob_extent whole = data_ext(7, BLOB_HEADER, 6 * C + 77, 0, 6 * C + 77);
    CHECK(ext_eq(&r.ext[0], &whole));
    /* nothing merges onto a record that is not whole chunks, nor across files */
    blob_extent next = data_ext(7, off, 10, 0, 10), other = data_ext(8, off, 10, 0, 10);
    CHECK_OK(blob_ref_splice(&r, vpos, &next));
    CHECK_EQ(r.n, 2);
    blob_ref_free(&r);
    blob_extent w1 = data_ext(7, BLOB_HEADER, C, 0, C), w2 = data_ext(8, BLOB_HEADER + C + 8, C, 0, C);
    CHECK_OK(blob_ref_splice(&r, 0, &w1));
    CHECK_OK(blob_ref_splice(&r, C, &w2));
    CHECK_OK(blob_ref_splice(&r, 2 * C, &other));
    CHECK_EQ(r.n, 3);
    blob_ref_free(&r);
}

TEST(test_splice_rejects_bad_extents) {
    blob_ref r = {0};
    blob_extent bad1 = data_ext(7, 16, 100, 50, 51);    /* past the record's end */
    blob_extent bad2 = data_ext(7, 8, 100, 0, 10);      /* inside the file header */
    blob_extent bad3 = data_ext(7, 16, 100, 101, 0);    /* skip past the end */
    CHECK_EQ(blob_ref_splice(&r, 0, &bad1), KV_EINVAL);
    CHECK_EQ(blob_ref_splice(&r, 0, &bad2), KV_EINVAL);
    CHECK_EQ(blob_ref_splice(&r, 0, &bad3), KV_EINVAL);
    blob_extent ok = data_ext(7, 16, 100, 0, 10);
    CHECK_EQ(blob_ref_splice(&r, UINT64_MAX - 5, &ok), KV_EINVAL);
    CHECK(strlen(kv_errmsg()) > 0);
    CHECK_EQ(r.n, 0);
    CHECK_EQ(r.size, 0);
    /* hole fields other than len are ignored and stored as 0 */
    blob_extent messy = {0, 99, 99, 99, 10};
    CHECK_OK(blob_ref_splice(&r, 0, &messy));
    CHECK(r.ext[0].rec_off == 0 && r.ext[0].rec_len == 0 && r.ext[0].skip == 0);
    blob_ref_free(&r);
}

TEST(test_truncate) {
    blob_ref r = {0};
    CHECK_OK(blob_ref_truncate(&r, 0));
    CHECK_EQ(r.n, 0);
    CHECK_OK(blob_ref_truncate(&r, 100)); /* grow an empty value: one hole */
    CHECK_OK(blob_ref_truncate(&r, 300)); /* grows the same hole */
    CHECK_EQ(r.n, 1);
    CHECK(r.ext[0].file_no == 0 && r.ext[0].len == 300 && r.size == 300);
    blob_extent a = data_ext(7, 16, 1000, 200, 500);
    CHECK_OK(blob_ref_splice(&r, 300, &a));
    CHECK_OK(blob_ref_truncate(&r, 550)); /* inside a: its head stays with its skip */
    CHECK_EQ(r.n, 2);
    blob_extent cut = data_ext(7, 16, 1000, 200, 250);
    CHECK(ext_eq(&r.ext[1], &cut));
    CHECK_OK(blob_ref_truncate(&r, 550)); /* same size: nothing changes */
    CHECK_EQ(r.n, 2);
    CHECK_OK(blob_ref_truncate(&r, 300)); /* exactly at an extent boundary */
    CHECK_EQ(r.n, 1);
    CHECK_EQ(r.size, 300);
    CHECK_OK(blob_ref_truncate(&r, 10));
    CHECK(r.n == 1 && r.ext[0].len == 10);
    CHECK_OK(blob_ref_splice(&r, 10, &a));
    CHECK_OK(blob_ref_truncate(&r, 2000)); /* grow after data: a new hole */
    CHECK_EQ(r.n, 3);
    CHECK(r.ext[2].file_no == 0 && r.ext[2].len == 1490);
    CHECK(ref_problem(&r) == NULL);
    CHECK_OK(blob_ref_truncate(&r, 0));
    CHECK(r.n == 0 && r.size == 0);
    blob_ref_free(&r);
}

TEST(test_ref_copy_and_bytes_in_file) {
    blob_ref r = {0}, c = {0};
    blob_extent a = data_ext(7, 16, 1000, 0, 100), b = data_ext(8, 16, 1000, 0, 30), h = hole_ext(40);
    CHECK_OK(blob_ref_splice(&r, 0, &a));
    CHECK_OK(blob_ref_splice(&r, 100, &h));
    CHECK_OK(blob_ref_splice(&r, 140, &b));
    blob_extent a2 = data_ext(7, 16, 1000, 500, 7);
    CHECK_OK(blob_ref_splice(&r, 170, &a2));
    CHECK_EQ(blob_ref_bytes_in_file(&r, 7), 107);
    CHECK_EQ(blob_ref_bytes_in_file(&r, 8), 30);
    CHECK_EQ(blob_ref_bytes_in_file(&r, 9), 0);
    CHECK_EQ(blob_ref_bytes_in_file(&r, 0), 0);
    CHECK_OK(blob_ref_copy(&c, &r));
    CHECK(ref_eq(&c, &r));
    CHECK(c.ext != r.ext);
    CHECK_OK(blob_ref_truncate(&c, 5)); /* the copy is independent */
    CHECK_EQ(r.size, 177);
    CHECK_OK(blob_ref_copy(&c, &r)); /* into a used ref */
    CHECK(ref_eq(&c, &r));
    CHECK_OK(blob_ref_copy(&r, &r));
    blob_ref empty = {0};
    CHECK_OK(blob_ref_copy(&c, &empty));
    CHECK(c.n == 0 && c.size == 0);
    blob_ref_free(&r);
    blob_ref_free(&c);
}

/* ---- Encoding ------------------------------------------------------------------------------------------------ */

TEST(test_ref_encode_decode) {
    blob_ref r = {0}, d = {0};
    CHECK_OK(roundtrip(&r)); /* empty value */
    blob_extent a = data_ext(7, 16, 1000, 3, 100), big = data_ext(UINT64_MAX, 1ull << 40, 1ull << 41, 5, 1ull << 40);
    CHECK_OK(blob_ref_splice(&r, 0, &a));
    CHECK_OK(roundtrip(&r));
    CHECK_OK(blob_ref_splice(&r, 1ull << 35, &big));
    CHECK_OK(roundtrip(&r));
    CHECK_EQ(r.n, 3);

    kv_bytes b = {0};
    CHECK_OK(blob_ref_encode(&r, &b));
    /* every proper prefix is rejected, without reading past it */
    for (size_t n = 0; n < b.len; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, b.data, n);
        CHECK_EQ(blob_ref_decode(copy, n, &d), KV_ECORRUPT);
        CHECK(d.n == 0 && d.size == 0 && d.ext == NULL); /* nothing left to free after a failure */
        free(copy);
    }
    /* a trailing byte */
    bytes_append(&b, "", 1);
    CHECK_EQ(blob_ref_decode(b.data, b.len, &d), KV_ECORRUPT);
    CHECK(strstr(kv_errmsg(), "trailing") != NULL);
    bytes_free(&b);

    /* hand-made malformed encodings */
    struct {
        const char *why;
        uint8_t bytes[32];
        size_t n;
    } bad[] = {
        {"size 10, one extent of 5", {10, 1, 0, 0, 0, 0, 5}, 7},
        {"size 5, no extents", {5, 0}, 2},
        {"skip + len > rec_len", {5, 1, 7, 16, 10, 6, 5}, 7},
        {"record before the header", {5, 1, 7, 3, 10, 0, 5}, 7},
        {"hole with a record offset", {5, 1, 0, 16, 0, 0, 5}, 7},
        {"empty extent", {0, 1, 0, 0, 0, 0, 0}, 7},
        {"extent count beyond the input", {5, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 5}, 11},
        {"truncated varint", {5, 1, 7, 16, 10, 0, 0x85}, 7},
        {"over-long varint", {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0}, 12},
        {"lens overflow", {0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                           0, 0, 0, 0, 2}, 21},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(blob_ref_decode(bad[i].bytes, bad[i].n, &d) == KV_ECORRUPT, "accepted: %s", bad[i].why);
    uint8_t good[] = {5, 1, 7, 16, 10, 5, 5};
    CHECK_OK(blob_ref_decode(good, sizeof good, &d));
    CHECK(d.n == 1 && d.size == 5 && d.ext[0].skip == 5);

    /* an inconsistent hand-built reference does not encode */
    blob_ref hand = {.size = 10, .n = 1, .cap = 1, .ext = &a};
    CHECK_EQ(blob_ref_encode(&hand, &b), KV_EINVAL);
    /* zero-length extents are left out */
    blob_extent two[2] = {hole_ext(0), data_ext(7, 16, 10, 0, 10)};
    blob_ref hand2 = {.size = 10, .n = 2, .cap = 2, .ext = two};
    CHECK_OK(blob_ref_encode(&hand2, &b));
    CHECK_OK(blob_ref_decode(b.data, b.len, &d));
    CHECK(d.n == 1 && ext_eq(&d.ext[0], &two[1]));
    bytes_free(&b);

    /* random damage: never a crash; whatever decodes is consistent */
    uint64_t st = t_seed();
    CHECK_OK(blob_ref_encode(&r, &b));
    for (int iter = 0; iter < 20000; iter++) {
        uint8_t buf[64];
        size_t n = b.len;
        memcpy(buf, b.data, n);
        int flips = 1 + (int)(t_rand(&st) % 3);
        for (int k = 0; k < flips; k++) buf[t_rand(&st) % n] ^= (uint8_t)(1 + t_rand(&st) % 255);
        if (t_rand(&st) % 4 == 0) n = (size_t)(t_rand(&st) % (n + 1));
        int rc = blob_ref_decode(buf, n, &d);
        CHECK(rc == KV_OK || rc == KV_ECORRUPT);
        if (rc == KV_OK) {
            uint64_t sum = 0;
            for (size_t i = 0; i < d.n; i++) sum += d.ext[i].len;
            CHECK(sum == d.size);
            CHECK_OK(roundtrip(&d));
        } else {
            CHECK(d.n == 0 && d.size == 0);
        }
    }
    bytes_free(&b);
    blob_ref_free(&d);
    blob_ref_free(&r);
}

/* ---- Files: writing, streaming, reading ---------------------------------------------------------------------- */

/* Write data as one record with blob_writer_add (stream = false) or in random pieces (stream = true). */
static int write_record(blob_writer *w, const uint8_t *data, size_t len, bool stream, uint64_t *st, blob_extent *e) {
    if (!stream) return blob_writer_add(w, data, len, e);
    int rc = blob_writer_begin(w);
    for (size_t done = 0; rc == KV_OK && done < len;) {
        size_t piece;
        switch (t_rand(st) % 4) {
        case 0: piece = 1 + t_rand(st) % 16; break;
        case 1: piece = C; break;
        case 2: piece = 1 + t_rand(st) % (3 * C); break;
        default: piece = C - done % C; break; /* up to the next chunk boundary */
        }
        if (piece > len - done) piece = len - done;
        rc = blob_writer_append(w, data + done, piece);
        done += piece;
    }
    if (rc == KV_OK && t_rand(st) % 2) rc = blob_writer_append(w, data, 0);
    return rc ? rc : blob_writer_end(w, e);
}

static int read_value(blob_store *s, const blob_ref *r, uint8_t **out) {
    *out = malloc(r->size ? r->size : 1);
    size_t got;
    int rc = blob_read(s, r, 0, *out, r->size, &got);
    if (rc == KV_OK && got != r->size) rc = kv_set_error(KV_EIO, "short read %zu of %llu", got,
                                                         (unsigned long long)r->size);
    return rc;
}

TEST(test_stream_record_sizes) {
    const char *dir = t_tmpdir();
    kv_env *env = kv_env_posix();
    uint64_t st = t_seed();
    size_t sizes[] = {0, 1, C - 1, C, C + 1, 2 * C, 3 * C - 1, 5u * 1024 * 1024 + 123};
    size_t ns = sizeof sizes / sizeof sizes[0];
    uint8_t *data = malloc(sizes[ns - 1]);
    fill_random(data, sizes[ns - 1], &st);
    char pa[512], pb[512];
    blob_path(pa, sizeof pa, dir, 1);
    blob_path(pb, sizeof pb, dir, 2);
    blob_writer *wa, *wb;
    CHECK_OK(blob_writer_new(env, pa, 1, &wa));
    CHECK_OK(blob_writer_new(env, pb, 2, &wb));
    CHECK_EQ(blob_writer_size(wa), BLOB_HEADER);
    CHECK_EQ(blob_writer_file_no(wb), 2);
    blob_extent ea[16], eb[16];
    for (size_t i = 0; i < ns; i++) {
        uint64_t before = blob_writer_size(wb);
        CHECK_OK(write_record(wa, data, sizes[i], false, &st, &ea[i]));
        CHECK_OK(write_record(wb, data, sizes[i], true, &st, &eb[i]));
        uint64_t nchunks = (sizes[i] + C - 1) / C;
        CHECK_EQ(blob_writer_size(wb), before + sizes[i] + 8 * nchunks);
        CHECK_EQ(blob_writer_size(wa), blob_writer_size(wb));
        if (sizes[i] == 0) {
            CHECK(ea[i].file_no == 0 && ea[i].len == 0 && eb[i].file_no == 0 && eb[i].len == 0);
        } else {
            CHECK(ea[i].file_no == 1 && eb[i].file_no == 2);
            CHECK(ea[i].rec_off == before && eb[i].rec_off == before);
            CHECK(ea[i].rec_len == sizes[i] && ea[i].len == sizes[i] && ea[i].skip == 0);
            CHECK(eb[i].rec_len == sizes[i] && eb[i].len == sizes[i] && eb[i].skip == 0);
        }
    }
    /* a streamed record whose pending bytes are not yet written counts in the size */
    CHECK_OK(blob_writer_begin(wb));
    CHECK_OK(blob_writer_append(wb, data, 10));
    uint64_t pending = blob_writer_size(wb);
    blob_extent tail;
    CHECK_OK(blob_writer_end(wb, &tail));
    CHECK_EQ(blob_writer_size(wb), pending);
    CHECK_OK(blob_writer_add(wa, data, 10, &tail));
    CHECK_OK(blob_writer_sync(wa));
    CHECK_OK(blob_writer_sync(wb));
    CHECK_EQ(blob_writer_size(wa), pending);
    CHECK_OK(blob_writer_close(wa));
    CHECK_OK(blob_writer_close(wb));

    /* streaming and whole-record writes give the same bytes */
    size_t na, nb;
    uint8_t *fa = raw_read_all(pa, &na), *fb = raw_read_all(pb, &nb);
    CHECK(fa && fb);
    CHECK_EQ(na, pending);
    CHECK_MEM(fa, na, fb, nb);
    free(fa);
    free(fb);

    problems pr = {0};
    CHECK_EQ(blob_check_file(env, pa, "000001.blob", on_problem, &pr), 0);
    CHECK_EQ(pr.problems, 0);

    blob_store *s;
    CHECK_OK(blob_store_new(env, dir, 4, &s));
    for (size_t i = 0; i < ns; i++) {
        blob_ref r = {0};
        CHECK_OK(blob_ref_splice(&r, 0, &eb[i]));
        CHECK_EQ(r.size, sizes[i]);
        uint8_t *v;
        CHECK_OK(read_value(s, &r, &v));
        CHECK_MEM(v, sizes[i], data, sizes[i]);
        free(v);
        blob_ref_free(&r);
    }
    blob_store_free(s);
    free(data);
}

TEST(test_ranged_reads_at_chunk_boundaries) {
    const char *dir = t_tmpdir();
    kv_env *env = kv_env_posix();
    uint64_t st = t_seed() ^ 1;
    size_t len = 4 * C + 100;
    uint8_t *data = malloc(len), *buf = malloc(3 * C);
    fill_random(data, len, &st);
    char p[512];
    blob_path(p, sizeof p, dir, 3);
    blob_writer *w;
    CHECK_OK(blob_writer_new(env, p, 3, &w));
    blob_extent pre, e;
    CHECK_OK(blob_writer_add(w, data, 33, &pre)); /* so the record of interest does not start right after the header */
    CHECK_OK(blob_writer_add(w, data, len, &e));
    CHECK_OK(blob_writer_close(w));
    blob_store *s;
    CHECK_OK(blob_store_new(env, dir, 2, &s));

    /* the whole record, and a reference to the middle of it (skip > 0) behind a hole */
    blob_ref whole = {0}, mid = {0};
    CHECK_OK(blob_ref_splice(&whole, 0, &e));
    blob_extent m = e;
    m.skip = C - 7;
    m.len = 2 * C + 20;
    CHECK_OK(blob_ref_splice(&mid, 1000, &m));
    uint8_t *mid_model = calloc(1000 + m.len, 1);
    memcpy(mid_model + 1000, data + m.skip, m.len);

    int64_t deltas[] = {-1, 0, 1};
    size_t lens[] = {1, 2, C - 1, C, C + 1, 2 * C + 3};
    for (uint64_t k = 0; k <= 5; k++) {
        for (size_t di = 0; di < 3; di++) {
            int64_t off = (int64_t)(k * C) + deltas[di];
            if (off < 0) continue;
            for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
                size_t got;
                CHECK_OK(blob_read(s, &whole, (uint64_t)off, buf, lens[li], &got));
                size_t expect = (uint64_t)off >= len ? 0 : len - (size_t)off < lens[li] ? len - (size_t)off : lens[li];
                CHECK_EQ(got, expect);
                CHECK_MEM(buf, got, data + off, expect);
                uint64_t moff = (uint64_t)off + 1000 - C; /* the mid reference's own chunk boundaries */
                if ((int64_t)moff < 0) continue;
                CHECK_OK(blob_read(s, &mid, moff, buf, lens[li], &got));
                expect = moff >= mid.size ? 0 : mid.size - moff < lens[li] ? (size_t)(mid.size - moff) : lens[li];
                CHECK_EQ(got, expect);
                CHECK_MEM(buf, got, mid_model + moff, expect);
            }
        }
    }
    size_t got = 99;
    CHECK_OK(blob_read(s, &whole, len, buf, 10, &got));
    CHECK_EQ(got, 0);
    CHECK_OK(blob_read(s, &whole, len + 1000, buf, 10, &got));
    CHECK_EQ(got, 0);
    CHECK_OK(blob_read(s, &whole, 0, buf, 0, &got));
    CHECK_EQ(got, 0);
    blob_ref empty = {0};
    CHECK_OK(blob_read(s, &empty, 0, buf, 10, &got));
    CHECK_EQ(got, 0);
    blob_store_free(s);
    blob_ref_free(&whole);
    blob_ref_free(&mid);
    free(mid_model);
    free(data);
    free(buf);
}

/* ---- The reference algebra against a byte-array model, read back from real files ------------------------------ */

#define MODEL_MAX (1u << 20)

typedef struct {
    blob_extent e;
    uint8_t *data;
} model_rec;

TEST(test_ref_model_random) {
    const char *dir = t_tmpdir();
    kv_env *env = kv_env_posix();
    uint64_t st = t_seed() ^ 2;
    blob_store *s;
    CHECK_OK(blob_store_new(env, dir, 3, &s));
    uint8_t *model = calloc(MODEL_MAX, 1), *buf = malloc(MODEL_MAX);
    uint64_t msize = 0;
    model_rec recs[30 * 8];
    size_t nrecs = 0;
    blob_ref r = {0};
    size_t max_n = 0;

    for (int round = 0; round < 30; round++) {
        /* a new file of records; consecutive whole-chunk records give the sequential-append merge a chance */
        uint64_t file_no = 100 + (uint64_t)round;
        char p[512];
        blob_path(p, sizeof p, dir, file_no);
        blob_writer *w;
        CHECK_OK(blob_writer_new(env, p, file_no, &w));
        for (int i = 0; i < 8; i++) {
            size_t len;
            switch (t_rand(&st) % 5) {
            case 0: len = 1 + t_rand(&st) % 300; break;
            case 1: len = C * (1 + t_rand(&st) % 2); break;
            case 2: len = C + 1 - t_rand(&st) % 3; break;
            default: len = 1 + t_rand(&st) % (3 * C); break;
            }
            model_rec *mr = &recs[nrecs++];
            mr->data = malloc(len);
            fill_random(mr->data, len, &st);
            CHECK_OK(write_record(w, mr->data, len, t_rand(&st) % 2, &st, &mr->e));
        }
        CHECK_OK(blob_writer_close(w));

        for (int op = 0; op < 100; op++) {
            uint64_t kind = t_rand(&st) % 20, off, len;
            if (kind < 12) { /* data: part or all of a record, anywhere, or appended */
                size_t ri = kind < 3 ? nrecs - 8 + (size_t)(t_rand(&st) % 8) : (size_t)(t_rand(&st) % nrecs);
                model_rec *mr = &recs[ri];
                blob_extent e = mr->e;
                if (t_rand(&st) % 3) {
                    e.skip = t_rand(&st) % e.rec_len;
                    e.len = 1 + t_rand(&st) % (e.rec_len - e.skip);
                }
                off = kind < 3 ? msize : t_rand(&st) % (msize + 1 + 3 * C);
                if (off + e.len > MODEL_MAX) continue;
                CHECK_OK(blob_ref_splice(&r, off, &e));
                if (off > msize) memset(model + msize, 0, off - msize);
                memcpy(model + off, mr->data + e.skip, e.len);
                if (off + e.len > msize) msize = off + e.len;
            } else if (kind < 14) { /* a hole */
                len = 1 + t_rand(&st) % (2 * C);
                off = t_rand(&st) % (msize + 1 + C);
                if (off + len > MODEL_MAX) continue;
                blob_extent h = hole_ext(len);
                CHECK_OK(blob_ref_splice(&r, off, &h));
                if (off > msize) memset(model + msize, 0, off - msize);
                memset(model + off, 0, len);
                if (off + len > msize) msize = off + len;
            } else if (kind < 19) { /* truncate: shrink or grow */
                uint64_t size = t_rand(&st) % (msize + msize / 2 + 2);
                if (size > MODEL_MAX) size = MODEL_MAX;
                CHECK_OK(blob_ref_truncate(&r, size));
                if (size > msize) memset(model + msize, 0, size - msize);
                msize = size;
            } else { /* zero-length write anywhere changes nothing */
                blob_extent z = recs[0].e;
                z.len = 0;
                CHECK_OK(blob_ref_splice(&r, t_rand(&st) % (msize + 100), &z));
            }
            CHECK_EQ(r.size, msize);
            const char *why = ref_problem(&r);
            CHECK_MSG(why == NULL, "round %d op %d: %s", round, op, why);
            CHECK_OK(roundtrip(&r));
            if (r.n > max_n) max_n = r.n;
            if (op % 10 == 9) {
                size_t got;
                CHECK_OK(blob_read(s, &r, 0, buf, MODEL_MAX, &got));
                CHECK_EQ(got, msize);
                CHECK_MEM(buf, got, model, msize);
                for (int k = 0; k < 4; k++) {
                    uint64_t o = t_rand(&st) % (msize + 10);
                    size_t l = (size_t)(t_rand(&st) % (3 * C));
                    CHECK_OK(blob_read(s, &r, o, buf, l, &got));
                    size_t expect = o >= msize ? 0 : msize - o < l ? (size_t)(msize - o) : l;
                    CHECK_EQ(got, expect);
                    CHECK_MEM(buf, got, model + o, expect);
                }
            }
        }
    }
    CHECK(max_n > 3); /* the workload did fragment the value */
    blob_ref_free(&r);
    for (size_t i = 0; i < nrecs; i++) free(recs[i].data);
    blob_store_free(s);
    free(model);
    free(buf);
}

TEST(test_sequential_appends_stay_one_extent) {
    const char *dir = t_tmpdir();
    kv_env *env = kv_env_posix();
    uint64_t st = t_seed() ^ 3;
    char p[512];
    blob_path(p, sizeof p, dir, 4);
    blob_writer *w;
    CHECK_OK(blob_writer_new(env, p, 4, &w));
    size_t total = 0, cap = 40 * C;
    uint8_t *data = malloc(cap);
    fill_random(data, cap, &st);
    blob_ref r = {0};
    /* whole-chunk records, added or streamed, appended one after the other; then a partial last one */
    for (int i = 0; i < 12; i++) {
        size_t len = C * (1 + t_rand(&st) % 3);
        blob_extent e;
        CHECK_OK(write_record(w, data + total, len, i % 2, &st, &e));
        CHECK_OK(blob_ref_splice(&r, r.size, &e));
        total += len;
        CHECK_EQ(r.n, 1);
    }
    blob_extent e;
    CHECK_OK(blob_writer_add(w, data + total, 1234, &e));
    CHECK_OK(blob_ref_splice(&r, r.size, &e));
    total += 1234;
    CHECK_EQ(r.n, 1);
    CHECK_EQ(r.size, total);
    /* pieces of one big record appended in order, in odd sizes */
    blob_ref r2 = {0};
    blob_extent big;
    CHECK_OK(blob_writer_add(w, data, 5 * C + 9, &big));
    for (uint64_t at = 0; at < big.rec_len;) {
        blob_extent piece = big;
        piece.skip = at;
        piece.len = 1 + t_rand(&st) % 20000;
        if (piece.len > big.rec_len - at) piece.len = big.rec_len - at;
        CHECK_OK(blob_ref_splice(&r2, at, &piece));
        at += piece.len;
        CHECK_EQ(r2.n, 1);
    }
    CHECK_OK(blob_writer_close(w));

    blob_store *s;
    CHECK_OK(blob_store_new(env, dir, 2, &s));
    uint8_t *v;
    CHECK_OK(read_value(s, &r, &v));
    CHECK_MEM(v, r.size, data, total);
    free(v);
    CHECK_OK(read_value(s, &r2, &v));
    CHECK_MEM(v, r2.size, data, big.rec_len);
    free(v);
    blob_store_free(s);
    blob_ref_free(&r);
    blob_ref_free(&r2);
    free(data);
}

/* ---- Corruption ---------------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t start, end; /* file bytes of one chunk, header included */
    uint64_t vstart, vlen; /* the value bytes it holds, in the reference built over all records */
} chunk_span;

/* Write records of the given sizes into file_no; fill ref with all of them in order, and spans with each chunk. */
static int build_file(const char *dir, uint64_t file_no, const size_t *sizes, size_t n, uint8_t *data, blob_ref *ref,
                      chunk_span *spans, size_t *nspans) {
    char p[512];
    blob_path(p, sizeof p, dir, file_no);
    blob_writer *w;
    int rc = blob_writer_new(kv_env_posix(), p, file_no, &w);
    if (rc) return rc;
    size_t done = 0;
    *nspans = 0;
    for (size_t i = 0; i < n && rc == KV_OK; i++) {
        blob_extent e;
        rc = blob_writer_add(w, data + done, sizes[i], &e);
        if (rc) break;
        /* different files per record would merge nothing; here records are not whole chunks, so nothing merges */
        rc = blob_ref_splice(ref, done, &e);
        for (uint64_t k = 0; k * C < sizes[i]; k++) {
            uint64_t clen = sizes[i] - k * C < C ? sizes[i] - k * C : C;
            uint64_t start = e.rec_off + k * (C + 8);
            spans[(*nspans)++] = (chunk_span){start, start + 8 + clen, done + k * C, clen};
        }
        done += sizes[i];
    }
    int rc2 = blob_writer_close(w);
    return rc ? rc : rc2;
}

/* Flip the byte at off with mask and require that the damage is seen: by blob_check_file, and by a fresh store's
 * blob_read of a range inside the damaged chunk (or any range, for the header). Bytes of other chunks still read
 * correctly. Restores the byte. */
static void flip_and_check(const char *dir, uint64_t file_no, uint64_t off, uint8_t mask, const blob_ref *ref,
                           const chunk_span *spans, size_t nspans, const uint8_t *data, uint64_t *st) {
    char p[512], name[32];
    blob_path(p, sizeof p, dir, file_no);
    snprintf(name, sizeof name, "%06llu.blob", (unsigned long long)file_no);
    CHECK(raw_xor(p, off, mask) == 0);
    problems pr = {0};
    long n = blob_check_file(kv_env_posix(), p, name, on_problem, &pr);
    CHECK_MSG(n >= 1 && pr.problems == n, "flip at %llu not found by blob_check_file (%ld)", (unsigned long long)off,
              n);
    CHECK_MSG(strstr(pr.last, name) != NULL, "problem does not name the file: %s", pr.last);

    blob_store *s;
    CHECK_OK(blob_store_new(kv_env_posix(), dir, 2, &s));
    uint8_t buf[3 * C];
    size_t got = 12345;
    const chunk_span *hit = NULL, *other = NULL;
    for (size_t i = 0; i < nspans; i++) {
        if (off >= spans[i].start && off < spans[i].end) hit = &spans[i];
        else if (!other || t_rand(st) % 2) other = &spans[i];
    }
    if (hit) {
        uint64_t o = hit->vstart + t_rand(st) % hit->vlen;
        size_t l = 1 + (size_t)(t_rand(st) % (hit->vstart + hit->vlen - o));
        int rc = blob_read(s, ref, o, buf, l, &got);
        CHECK_MSG(rc == KV_ECORRUPT, "flip at %llu: read [%llu, +%zu) gave %d", (unsigned long long)off,
                  (unsigned long long)o, l, rc);
        CHECK_EQ(got, 0);
        CHECK_MSG(strstr(kv_errmsg(), name) != NULL && strstr(kv_errmsg(), "offset") != NULL, "message: %s",
                  kv_errmsg());
        if (other) { /* the reader looks only at the chunks it needs */
            CHECK_OK(blob_read(s, ref, other->vstart, buf, other->vlen, &got));
            CHECK_MEM(buf, got, data + other->vstart, other->vlen);
        }
    } else { /* the file header: nothing can be read */
        CHECK(off < BLOB_HEADER);
        int rc = blob_read(s, ref, t_rand(st) % ref->size, buf, 1, &got);
        CHECK_EQ(rc, KV_ECORRUPT);
        CHECK_EQ(got, 0);
        CHECK(strstr(kv_errmsg(), name) != NULL);
    }
    /* the whole value never reads silently wrong */
    uint8_t *all = malloc(ref->size);
    CHECK_EQ(blob_read(s, ref, 0, all, ref->size, &got), KV_ECORRUPT);
    free(all);
    blob_store_free(s);
    CHECK(raw_xor(p, off, mask) == 0);
}

TEST(test_corruption_every_byte_of_small_file) {
    const char *dir = t_tmpdir();
    uint64_t st = t_seed() ^ 4;
    size_t sizes[] = {1, 50, 200, 3, 17};
    uint8_t data[400];
    fill_random(data, sizeof data, &st);
    blob_ref ref = {0};
    chunk_span spans[8];
    size_t nspans;
    CHECK_OK(build_file(dir, 5, sizes, 5, data, &ref, spans, &nspans));
    char p[512];
    blob_path(p, sizeof p, dir, 5);
    long fsize = raw_size(p);
    CHECK_EQ(fsize, BLOB_HEADER + 5 * 8 + 271);
    CHECK_EQ(blob_check_file(kv_env_posix(), p, NULL, NULL, NULL), 0);
    uint8_t masks[] = {0x01, 0x80, 0xff};
    for (long off = 0; off < fsize; off++) {
        for (int m = 0; m < 3; m++) {
            flip_and_check(dir, 5, (uint64_t)off, masks[m], &ref, spans, nspans, data, &st);
            if (t_failed()) return;
        }
    }
    CHECK_EQ(blob_check_file(kv_env_posix(), p, NULL, NULL, NULL), 0);
    blob_ref_free(&ref);
}

TEST(test_corruption_multichunk_file) {
    const char *dir = t_tmpdir();
    uint64_t st = t_seed() ^ 5;
    size_t sizes[] = {2 * C + 10, 100, C + 1};
    size_t total = 3 * C + 111;
    uint8_t *data = malloc(total);
    fill_random(data, total, &st);
    blob_ref ref = {0};
    chunk_span spans[8];
    size_t nspans;
    CHECK_OK(build_file(dir, 6, sizes, 3, data, &ref, spans, &nspans));
    CHECK_EQ(nspans, 6);
    /* every header byte, every chunk header byte, and the first, last and some middle data bytes of each chunk */
    for (uint64_t off = 0; off < BLOB_HEADER; off++) flip_and_check(dir, 6, off, 0x10, &ref, spans, nspans, data, &st);
    for (size_t i = 0; i < nspans && !t_failed(); i++) {
        for (uint64_t k = 0; k < 8; k++) flip_and_check(dir, 6, spans[i].start + k, 0x01, &ref, spans, nspans, data, &st);
        flip_and_check(dir, 6, spans[i].start + 8, 0x40, &ref, spans, nspans, data, &st);
        flip_and_check(dir, 6, spans[i].end - 1, 0x02, &ref, spans, nspans, data, &st);
        for (int k = 0; k < 4; k++) {
            uint64_t off = spans[i].start + 8 + t_rand(&st) % spans[i].vlen;
            flip_and_check(dir, 6, off, (uint8_t)(1 + t_rand(&st) % 255), &ref, spans, nspans, data, &st);
        }
    }
    if (t_failed()) return;
    /* the reported offset is the damaged chunk's */
    char p[512];
    blob_path(p, sizeof p, dir, 6);
    CHECK(raw_xor(p, spans[1].start + 100, 0x20) == 0);
    problems pr = {0};
    CHECK_EQ(blob_check_file(kv_env_posix(), p, "000006.blob", on_problem, &pr), 1);
    CHECK_EQ(pr.first_off, spans[1].start);
    CHECK(strstr(pr.last, "checksum") != NULL);
    blob_store *s;
    CHECK_OK(blob_store_new(kv_env_posix(), dir, 2, &s));
    uint8_t buf[16];
    size_t got;
    CHECK_EQ(blob_read(s, &ref, C + 5, buf, 1, &got), KV_ECORRUPT);
    char expect[100];
    snprintf(expect, sizeof expect, "000006.blob: bad chunk checksum at offset %llu",
             (unsigned long long)spans[1].start);
    CHECK_MSG(strcmp(kv_errmsg(), expect) == 0, "message: %s", kv_errmsg());
    blob_store_free(s);
    blob_ref_free(&ref);
    free(data);
}

TEST(test_check_torn_and_short_files) {
    const char *dir = t_tmpdir();
    uint64_t st = t_seed() ^ 6;
    size_t sizes[] = {C + 50, 30};
    uint8_t *data = malloc(C + 80);
    fill_random(data, C + 80, &st);
    blob_ref ref = {0};
    chunk_span spans[4];
    size_t nspans;
    CHECK_OK(build_file(dir, 7, sizes, 2, data, &ref, spans, &nspans));
    blob_ref scratch = {0}; /* the same reference again, when the file is rebuilt */
    char p[512];
    blob_path(p, sizeof p, dir, 7);
    long full = raw_size(p);
    kv_env *env = kv_env_posix();
    /* every cut inside the last chunk, and a few elsewhere, is a torn file */
    uint64_t cuts[] = {(uint64_t)full - 1, (uint64_t)full - 29, (uint64_t)full - 31, (uint64_t)full - 37,
                       spans[1].end - 1, spans[0].end + 3, 20, BLOB_HEADER + 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK(truncate(p, (off_t)cuts[i]) == 0);
        problems pr = {0};
        CHECK_MSG(blob_check_file(env, p, "000007.blob", on_problem, &pr) == 1, "cut at %llu: %s",
                  (unsigned long long)cuts[i], pr.last);
        CHECK_MSG(strstr(pr.last, "torn") != NULL, "%s", pr.last);
        /* a read of the lost bytes is an error, not a short read */
        blob_store *s;
        CHECK_OK(blob_store_new(env, dir, 2, &s));
        uint8_t buf[8];
        size_t got;
        CHECK_EQ(blob_read(s, &ref, ref.size - 1, buf, 1, &got), KV_ECORRUPT);
        blob_store_free(s);
        CHECK_OK(build_file(dir, 7, sizes, 2, data, &scratch, spans, &nspans));
        blob_ref_free(&scratch);
    }
    /* exactly at a chunk boundary: clean */
    CHECK(truncate(p, (off_t)spans[1].end) == 0);
    CHECK_EQ(blob_check_file(env, p, NULL, NULL, NULL), 0);
    CHECK(truncate(p, BLOB_HEADER) == 0);
    CHECK_EQ(blob_check_file(env, p, NULL, NULL, NULL), 0);
    /* shorter than the header */
    CHECK(truncate(p, 10) == 0);
    problems pr = {0};
    CHECK_EQ(blob_check_file(env, p, "x", on_problem, &pr), 1);
    CHECK(strstr(pr.last, "header") != NULL);
    CHECK(truncate(p, 0) == 0);
    CHECK_EQ(blob_check_file(env, p, "x", NULL, NULL), 1);
    /* garbage after the last chunk */
    CHECK_OK(build_file(dir, 7, sizes, 2, data, &scratch, spans, &nspans));
    blob_ref_free(&scratch);
    FILE *f = fopen(p, "ab");
    CHECK(f != NULL);
    fwrite("\x01\x02\x03\x04\x00\x00\x00\x00zzzz", 1, 12, f);
    fclose(f);
    pr = (problems){0};
    CHECK_EQ(blob_check_file(env, p, "x", on_problem, &pr), 1);
    CHECK(strstr(pr.last, "length 0") != NULL);
    CHECK_EQ(pr.first_off, spans[nspans - 1].end);
    /* an intact header of a future version stops the walk */
    CHECK_OK(build_file(dir, 7, sizes, 2, data, &scratch, spans, &nspans));
    blob_ref_free(&scratch);
    int fd = open(p, O_RDWR);
    uint8_t h[16];
    CHECK(pread(fd, h, 16, 0) == 16);
    put_fixed32(h + 8, 2);
    put_fixed32(h + 12, kv_checksum(h, 12));
    CHECK(pwrite(fd, h, 16, 0) == 16);
    close(fd);
    pr = (problems){0};
    CHECK_EQ(blob_check_file(env, p, "x", on_problem, &pr), 1);
    CHECK(strstr(pr.last, "version 2") != NULL);
    blob_ref_free(&ref);
    free(data);
}

TEST(test_missing_file) {
    const char *dir = t_tmpdir();
    kv_env *env = kv_env_posix();
    blob_store *s;
    CHECK_OK(blob_store_new(env, dir, 2, &s));
    blob_ref r = {0};
    blob_extent e = data_ext(42, 16, 100, 0, 100);
    CHECK_OK(blob_ref_splice(&r, 0, &e));
    uint8_t buf[100];
    size_t got = 7;
    int rc = blob_read(s, &r, 0, buf, 100, &got);
    CHECK_EQ(rc, KV_ECORRUPT); /* never KV_ENOTFOUND, which would read as "no such key" */
    CHECK_EQ(got, 0);
    CHECK_MSG(strstr(kv_errmsg(), "000042.blob") && strstr(kv_errmsg(), "missing"), "message: %s", kv_errmsg());
    char p[512];
    blob_path(p, sizeof p, dir, 42);
    CHECK(blob_check_file(env, p, "000042.blob", NULL, NULL) < 0);
    CHECK(strlen(kv_errmsg()) > 0);

    /* a file forgotten and deleted after being read */
    blob_writer *w;
    CHECK_OK(blob_writer_new(env, p, 42, &w));
    uint8_t data[100];
    memset(data, 'q', sizeof data);
    blob_extent e2;
    CHECK_OK(blob_writer_add(w, data, 100, &e2));
    CHECK_OK(blob_writer_close(w));
    CHECK(ext_eq(&e, &e2));
    CHECK_OK(blob_read(s, &r, 0, buf, 100, &got));
    CHECK_MEM(buf, got, data, 100);
    blob_store_forget(s, 42);
    blob_store_forget(s, 42); /* twice, and for a file never opened: harmless */
    blob_store_forget(s, 43);
    CHECK_OK(env->remove(env, p));
    CHECK_EQ(blob_read(s, &r, 0, buf, 100, &got), KV_ECORRUPT);
    /* a reference whose record length disagrees with the file: the chunk's length field says so */
    CHECK_OK(blob_writer_new(env, p, 42, &w));
    CHECK_OK(blob_writer_add(w, data, 50, &e2));
    CHECK_OK(blob_writer_close(w));
    blob_store_forget(s, 42);
    blob_ref wrong = {0};
    blob_extent we = data_ext(42, 16, 60, 0, 60);
    CHECK_OK(blob_ref_splice(&wrong, 0, &we));
    CHECK_EQ(blob_read(s, &wrong, 0, buf, 10, &got), KV_ECORRUPT);
    CHECK_MSG(strstr(kv_errmsg(), "000042.blob: bad chunk length 50 (expected 60) at offset 16"), "message: %s",
              kv_errmsg());
    blob_ref_free(&wrong);
    blob_store_forget(s, 42);
    /* a reference past the end of an existing file */
    CHECK_OK(blob_writer_new(env, p, 42, &w));
    CHECK_OK(blob_writer_close(w));
    CHECK_EQ(blob_read(s, &r, 50, buf, 1, &got), KV_ECORRUPT);
    CHECK(strstr(kv_errmsg(), "000042.blob") != NULL);
    blob_store_free(s);
    blob_ref_free(&r);
}

/* ---- The reader cache, threads ------------------------------------------------------------------------------- */

#define NFILES 6

typedef struct {
    blob_store *s;
    blob_ref refs[NFILES];
    uint8_t *data;
    uint64_t seed;
    int bad;
} conc_ctx;

static void *conc_reader(void *arg) {
    conc_ctx *c = arg;
    uint64_t st = __atomic_fetch_add(&c->seed, 7919, __ATOMIC_RELAXED);
    uint8_t *buf = malloc(2 * C);
    for (int i = 0; i < 300; i++) {
        int f = (int)(t_rand(&st) % NFILES);
        const blob_ref *r = &c->refs[f];
        uint64_t off = t_rand(&st) % r->size;
        size_t len = (size_t)(t_rand(&st) % (2 * C));
        size_t got;
        int rc = blob_read(c->s, r, off, buf, len, &got);
        size_t expect = r->size - off < len ? (size_t)(r->size - off) : len;
        /* file f holds data shifted by f */
        if (rc != KV_OK || got != expect || memcmp(buf, c->data + f + off, got) != 0)
            __atomic_add_fetch(&c->bad, 1, __ATOMIC_RELAXED);
        if (i % 50 == 0) blob_store_forget(c->s, (uint64_t)(t_rand(&st) % NFILES) + 1);
    }
    free(buf);
    return NULL;
}

TEST(test_store_cache_and_threads) {
    const char *dir = t_tmpdir();
    wrap_env we;
    wrap_init(&we);
    uint64_t st = t_seed() ^ 8;
    conc_ctx c = {0};
    size_t len = 3 * C + 500;
    c.data = malloc(len + NFILES);
    fill_random(c.data, len + NFILES, &st);
    for (int f = 0; f < NFILES; f++) {
        char p[512];
        blob_path(p, sizeof p, dir, (uint64_t)f + 1);
        blob_writer *w;
        CHECK_OK(blob_writer_new(&we.e, p, (uint64_t)f + 1, &w));
        blob_extent e;
        CHECK_OK(blob_writer_add(w, c.data + f, len, &e));
        CHECK_OK(blob_writer_close(w));
        CHECK_OK(blob_ref_splice(&c.refs[f], 0, &e));
    }
    CHECK_OK(blob_store_new(&we.e, dir, 2, &c.s));
    uint8_t buf[64];
    size_t got;
    for (int i = 0; i < 30; i++) {
        int f = i % NFILES;
        CHECK_OK(blob_read(c.s, &c.refs[f], 10, buf, sizeof buf, &got));
        CHECK_MEM(buf, got, c.data + f + 10, sizeof buf);
        CHECK(we.nreads <= 2);
    }
    /* a cached reader is reused: no new open */
    CHECK_OK(blob_read(c.s, &c.refs[5], 0, buf, 1, &got));
    int before = we.nreads;
    CHECK_OK(blob_read(c.s, &c.refs[5], 0, buf, 1, &got));
    CHECK_EQ(we.nreads, before);
    blob_store_forget(c.s, 6);
    CHECK_EQ(we.nreads, before - 1);

    c.seed = st;
    pthread_t th[4];
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&th[i], NULL, conc_reader, &c) == 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    CHECK_EQ(c.bad, 0);
    CHECK(we.nreads <= 2);
    /* Open at once: the cache's 2, plus per thread the reader it uses and one it evicted but has not closed yet. */
    CHECK(we.max_reads <= 2 + 2 * 4);
    blob_store_free(c.s);
    CHECK_EQ(we.nreads, 0);
    for (int f = 0; f < NFILES; f++) blob_ref_free(&c.refs[f]);
    free(c.data);
    pthread_mutex_destroy(&we.mu);
}

/* ---- Writer errors ------------------------------------------------------------------------------------------- */

TEST(test_writer_misuse_and_failures) {
    const char *dir = t_tmpdir();
    wrap_env we;
    wrap_init(&we);
    char p[512];
    blob_path(p, sizeof p, dir, 9);
    blob_writer *w;
    uint8_t data[3 * C];
    memset(data, 'x', sizeof data);
    blob_extent e;
    CHECK_OK(blob_writer_new(&we.e, p, 9, &w));
    CHECK_EQ(blob_writer_append(w, data, 1), KV_EINVAL);
    CHECK_EQ(blob_writer_end(w, &e), KV_EINVAL);
    CHECK_OK(blob_writer_begin(w));
    CHECK_EQ(blob_writer_begin(w), KV_EINVAL);
    CHECK_EQ(blob_writer_add(w, data, 1, &e), KV_EINVAL);
    CHECK_OK(blob_writer_append(w, data, 10));
    CHECK_OK(blob_writer_end(w, &e));
    CHECK_OK(blob_writer_close(w));

    /* the third chunk's append fails: that and every later write report an error */
    we.appends_left = 3; /* header, two chunks */
    CHECK_OK(blob_writer_new(&we.e, p, 9, &w));
    CHECK_EQ(blob_writer_add(w, data, 3 * C, &e), KV_EIO);
    CHECK_EQ(blob_writer_add(w, data, 1, &e), KV_EIO);
    CHECK(strstr(kv_errmsg(), "earlier write") != NULL);
    CHECK_EQ(blob_writer_begin(w), KV_EIO);
    CHECK_EQ(blob_writer_sync(w), KV_EIO);
    we.appends_left = -1;
    CHECK_EQ(blob_writer_add(w, data, 1, &e), KV_EIO); /* still refused: the file may end in a torn chunk */
    CHECK_OK(blob_writer_close(w));

    /* streaming: a failure in append or in end */
    we.appends_left = 2;
    CHECK_OK(blob_writer_new(&we.e, p, 9, &w));
    CHECK_OK(blob_writer_begin(w));
    CHECK_OK(blob_writer_append(w, data, C + 5));
    CHECK_EQ(blob_writer_append(w, data, C), KV_EIO);
    CHECK_EQ(blob_writer_end(w, &e), KV_EIO);
    CHECK_OK(blob_writer_close(w));
    we.appends_left = 2;
    CHECK_OK(blob_writer_new(&we.e, p, 9, &w));
    CHECK_OK(blob_writer_begin(w));
    CHECK_OK(blob_writer_append(w, data, C + 5));
    CHECK_EQ(blob_writer_end(w, &e), KV_EIO);
    CHECK_OK(blob_writer_close(w));
    /* creation fails */
    we.appends_left = 0;
    w = (blob_writer *)1;
    CHECK_EQ(blob_writer_new(&we.e, p, 9, &w), KV_EIO);
    CHECK(w == NULL);
    we.appends_left = -1;
    char bad[600];
    snprintf(bad, sizeof bad, "%s/no/such/dir/000001.blob", dir);
    CHECK(blob_writer_new(&we.e, bad, 1, &w) != KV_OK);
    pthread_mutex_destroy(&we.mu);
}
