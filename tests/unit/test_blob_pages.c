/* test_blob_pages.c — paged blob references (blob_pages.h): the top level's checks, pages that are never trusted,
 * random changes against a byte-array model read back from real files, and the cost of a change bounded whatever
 * the value's history. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "blob_pages.h"
#include "env.h"
#include "t.h"

/* A blob file being written, as the engine's blob_append callback sees it. */
typedef struct fixture {
    blob_writer *w;
    blob_store *s;
    uint64_t appended; /* bytes handed to the callback (pages only: data is added with fx_data) */
    size_t records;
} fixture;

static int fx_append(void *ctx, const void *data, size_t len, blob_extent *e) {
    fixture *f = ctx;
    f->appended += len;
    f->records++;
    return blob_writer_add(f->w, data, len, e);
}

static int fx_open(fixture *f, const char *dir, uint64_t no) {
    char p[512];
    snprintf(p, sizeof p, "%s/%06llu.blob", dir, (unsigned long long)no);
    memset(f, 0, sizeof *f);
    int rc = blob_writer_new(kv_env_posix(), p, no, &f->w);
    if (!rc) rc = blob_store_new(kv_env_posix(), dir, 4, &f->s);
    return rc;
}

static void fx_close(fixture *f) {
    if (f->w) blob_writer_close(f->w);
    if (f->s) blob_store_free(f->s);
}

static blob_pager fx_pager(fixture *f, size_t per) { return (blob_pager){f->s, fx_append, f, per}; }

static void fill(uint8_t *p, size_t n, uint64_t *st) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)t_rand(st);
}

/* ---- the top level ------------------------------------------------------------------------------------------------ */

static size_t enc(uint8_t *out, const uint64_t *v, size_t n) {
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) p = put_varint64(p, v[i]);
    return (size_t)(p - out);
}

TEST(test_pages_decode_rejects_malformed) {
    uint8_t b[256];
    blob_pages pp = {0};
    /* size 30 = two pages of 10 and 20 bytes */
    uint64_t good[] = {30, 0, 2, 1, 16, 40, 10, 2, 100, 60, 20};
    size_t n = enc(b, good, 11);
    CHECK(blob_ref_is_paged(b, n));
    CHECK_OK(blob_pages_decode(b, n, &pp));
    CHECK_EQ(pp.n, 2);
    CHECK_EQ(pp.size, 30);
    CHECK_EQ(pp.pg[1].rec_off, 100);
    kv_bytes out = {0};
    CHECK_OK(blob_pages_encode(&pp, &out));
    CHECK_MEM(out.data, out.len, b, n);
    uint64_t size = 0;
    CHECK_OK(blob_ref_size(b, n, &size));
    CHECK_EQ(size, 30);
    /* a direct reference is not paged, and a paged one is not a valid direct one */
    blob_ref r = {0};
    CHECK_EQ(blob_ref_decode(b, n, &r), KV_ECORRUPT);
    uint64_t direct[] = {5, 1, 0, 0, 0, 0, 5};
    size_t dn = enc(b + 128, direct, 7);
    CHECK(!blob_ref_is_paged(b + 128, dn));
    CHECK_EQ(blob_pages_decode(b + 128, dn, &pp), KV_ECORRUPT);
    uint64_t empty[] = {0, 0};
    CHECK(!blob_ref_is_paged(b + 128, enc(b + 128, empty, 2)));
    /* every truncation */
    for (size_t k = 0; k < n; k++) CHECK_EQ(blob_pages_decode(b, k, &pp), KV_ECORRUPT);
    /* one bad field at a time */
    struct {
        size_t at;
        uint64_t v;
    } bad[] = {{2, 0},      /* no pages */
               {2, 3},      /* more pages than written */
               {2, 1u << 30}, /* more pages than the bytes can hold */
               {3, 0},      /* page in no file */
               {4, 15},     /* record inside the file header */
               {5, 0},      /* empty record */
               {5, BLOB_CHUNK + 1}, /* a page record is one chunk */
               {6, 0},      /* covers nothing */
               {6, 11},     /* lens do not add up to size */
               {0, 31}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v[11];
        memcpy(v, good, sizeof v);
        v[bad[i].at] = bad[i].v;
        size_t m = enc(b, v, 11);
        CHECK_MSG(blob_pages_decode(b, m, &pp) == KV_ECORRUPT, "bad field %zu accepted", i);
    }
    n = enc(b, good, 11);
    b[n] = 0;
    CHECK_EQ(blob_pages_decode(b, n + 1, &pp), KV_ECORRUPT); /* trailing byte */
    /* encode refuses what decode would */
    blob_pages none = {.size = 5};
    out.len = 0;
    CHECK_EQ(blob_pages_encode(&none, &out), KV_EINVAL);
    blob_pages_free(&pp);
    bytes_free(&out);
}

/* ---- pages are read, never trusted -------------------------------------------------------------------------------- */

static int count_calls(void *ctx, const blob_extent *e, bool page) {
    (void)e;
    (void)page;
    ++*(int *)ctx;
    return 0;
}

static int skip_pages(void *ctx, const blob_extent *e, bool page) {
    (void)e;
    ++*(int *)ctx;
    return page ? BLOB_VISIT_SKIP : 0;
}

/* Found by fuzzing (tests/fuzz/fuzz_open.c): a blob entry with an empty payload, replayed from the log, reached the
 * reference decoders as (NULL, 0) (an empty kv_bytes), and each computed NULL + 0, which UBSan reports. An empty
 * reference is a truncated header, whatever its pointer. */
TEST(test_empty_reference_from_null) {
    uint64_t size = 1;
    CHECK(!blob_ref_is_paged(NULL, 0));
    CHECK_EQ(blob_ref_size(NULL, 0, &size), KV_ECORRUPT);
    CHECK_EQ(blob_ref_validate(NULL, 0), KV_ECORRUPT);
    blob_ref r = {0};
    CHECK_EQ(blob_ref_decode(NULL, 0, &r), KV_ECORRUPT);
    blob_ref_free(&r);
    blob_pages pp = {0};
    CHECK_EQ(blob_pages_decode(NULL, 0, &pp), KV_ECORRUPT);
    blob_pages_free(&pp);
}

TEST(test_page_load_untrusted) {
    const char *dir = t_tmpdir();
    fixture f;
    CHECK_OK(fx_open(&f, dir, 7));
    blob_extent junk, small, data;
    CHECK_OK(blob_writer_add(f.w, "not a reference at all", 22, &junk));
    /* a valid direct reference of 7 bytes (a hole) */
    kv_bytes e7 = {0};
    blob_ref h7 = {0};
    CHECK_OK(blob_ref_splice(&h7, 0, &(blob_extent){.len = 7}));
    CHECK_OK(blob_ref_encode(&h7, &e7));
    CHECK_OK(blob_writer_add(f.w, e7.data, e7.len, &small));
    CHECK_OK(blob_writer_add(f.w, "0123456789", 10, &data));
    blob_ref page = {0};
    char msg[600];

    blob_page pj = {7, junk.rec_off, junk.rec_len, 22};
    CHECK_EQ(blob_page_load(f.s, &pj, &page), KV_ECORRUPT);
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    CHECK_MSG(strstr(msg, "000007.blob: bad blob page at offset") != NULL, "message: %s", msg);

    blob_page ps = {7, small.rec_off, small.rec_len, 8}; /* says 8 bytes, holds 7 */
    CHECK_EQ(blob_page_load(f.s, &ps, &page), KV_ECORRUPT);
    ps.len = 7;
    CHECK_OK(blob_page_load(f.s, &ps, &page));
    CHECK_EQ(page.size, 7);

    /* a page whose content is itself a paged reference: pages do not nest */
    blob_pages inner = {0};
    inner.size = 7;
    inner.n = inner.cap = 1;
    inner.pg = &ps;
    kv_bytes ein = {0};
    CHECK_OK(blob_pages_encode(&inner, &ein));
    blob_extent nested;
    CHECK_OK(blob_writer_add(f.w, ein.data, ein.len, &nested));
    blob_page pn = {7, nested.rec_off, nested.rec_len, 7};
    CHECK_EQ(blob_page_load(f.s, &pn, &page), KV_ECORRUPT);

    /* a value whose page is junk: reads fail, visiting fails unless the page is skipped */
    blob_pages top = {.size = 22, .n = 1, .cap = 1, .pg = &pj};
    kv_bytes etop = {0};
    CHECK_OK(blob_pages_encode(&top, &etop));
    uint8_t buf[32];
    size_t got = 99;
    CHECK_EQ(blob_value_read(f.s, etop.data, etop.len, 0, buf, sizeof buf, &got), KV_ECORRUPT);
    CHECK_EQ(got, 0);
    int seen = 0;
    CHECK_EQ(blob_value_visit(f.s, etop.data, etop.len, count_calls, &seen), KV_ECORRUPT);
    CHECK_EQ(seen, 1); /* the page's record was visited, its content could not be */
    seen = 0;
    CHECK_OK(blob_value_visit(f.s, etop.data, etop.len, skip_pages, &seen));
    CHECK_EQ(seen, 1);
    /* a damaged page before a good one: the good one and its extent are still visited, the damage reported at the
     * end */
    blob_ref rd = {0};
    CHECK_OK(blob_ref_splice(&rd, 0, &data));
    kv_bytes erd = {0};
    CHECK_OK(blob_ref_encode(&rd, &erd));
    blob_extent rec_d;
    CHECK_OK(blob_writer_add(f.w, erd.data, erd.len, &rec_d));
    blob_page two[2] = {pj, {7, rec_d.rec_off, rec_d.rec_len, 10}};
    blob_pages both = {.size = 22 + 10, .n = 2, .cap = 2, .pg = two};
    kv_bytes eboth = {0};
    CHECK_OK(blob_pages_encode(&both, &eboth));
    seen = 0;
    CHECK_EQ(blob_value_visit(f.s, eboth.data, eboth.len, count_calls, &seen), KV_ECORRUPT);
    CHECK_EQ(seen, 3); /* both pages' records, and the data extent inside the good one */
    blob_ref_free(&rd);
    bytes_free(&erd);
    bytes_free(&eboth);

    /* a page record damaged on disk: the chunk checksum catches it */
    blob_ref d10 = {0};
    CHECK_OK(blob_ref_splice(&d10, 0, &data));
    kv_bytes e10 = {0};
    CHECK_OK(blob_ref_encode(&d10, &e10));
    blob_extent pe;
    CHECK_OK(blob_writer_add(f.w, e10.data, e10.len, &pe));
    blob_page pg10 = {7, pe.rec_off, pe.rec_len, 10};
    top.size = 10;
    top.pg = &pg10;
    etop.len = 0;
    CHECK_OK(blob_pages_encode(&top, &etop));
    CHECK_OK(blob_value_read(f.s, etop.data, etop.len, 2, buf, 5, &got));
    CHECK_MEM(buf, got, "23456", 5);
    char path[512];
    snprintf(path, sizeof path, "%s/000007.blob", dir);
    FILE *fp = fopen(path, "r+b");
    CHECK(fp != NULL);
    fseek(fp, (long)pe.rec_off + 8 + 1, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, (long)pe.rec_off + 8 + 1, SEEK_SET);
    fputc(c ^ 0x20, fp);
    fclose(fp);
    blob_store_free(f.s);
    CHECK_OK(blob_store_new(kv_env_posix(), dir, 4, &f.s));
    CHECK_EQ(blob_value_read(f.s, etop.data, etop.len, 0, buf, 10, &got), KV_ECORRUPT);
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    CHECK_MSG(strstr(msg, "000007.blob") && strstr(msg, "checksum"), "message: %s", msg);

    blob_ref_free(&page);
    blob_ref_free(&h7);
    blob_ref_free(&d10);
    bytes_free(&e7);
    bytes_free(&ein);
    bytes_free(&etop);
    bytes_free(&e10);
    fx_close(&f);
}

/* ---- random changes against a model ---------------------------------------------------------------------------------- */

#define MODEL_MAX (512u << 10)

typedef struct shape {
    bool paged;
    size_t pages, extents, max_page;
} shape;

static int count_extent(void *ctx, const blob_extent *e, bool page) {
    shape *s = ctx;
    if (!page) s->extents++;
    (void)e;
    return 0;
}

/* The form rules of blob_pages.h, checked by reading every page. */
static bool shape_of(blob_store *st, const kv_bytes *ref, size_t per, shape *s) {
    memset(s, 0, sizeof *s);
    s->paged = blob_ref_is_paged(ref->data, ref->len);
    if (!s->paged) {
        blob_ref r = {0};
        if (blob_ref_decode(ref->data, ref->len, &r)) return false;
        s->extents = r.n;
        blob_ref_free(&r);
        return s->extents <= per;
    }
    blob_pages pp = {0};
    if (blob_pages_decode(ref->data, ref->len, &pp)) return false;
    bool ok = true;
    blob_ref r = {0};
    for (size_t i = 0; i < pp.n && ok; i++) {
        ok = blob_page_load(st, &pp.pg[i], &r) == KV_OK && r.n >= 1 && r.n <= per;
        if (r.n > s->max_page) s->max_page = r.n;
    }
    s->pages = pp.n;
    blob_ref_free(&r);
    blob_pages_free(&pp);
    return ok;
}

static void model_run(size_t per, int ops, uint64_t seed) {
    const char *dir = t_tmpdir();
    fixture f;
    CHECK_OK(fx_open(&f, dir, 3));
    blob_pager pg = fx_pager(&f, per);
    uint8_t *model = calloc(MODEL_MAX, 1), *buf = malloc(MODEL_MAX), *data = malloc(8192);
    uint64_t size = 0, st = seed;
    kv_bytes ref = {0}, next = {0};
    CHECK_OK(blob_ref_encode(&(blob_ref){0}, &ref));
    int paged_ops = 0, unpaged = 0;
    bool was_paged = false;
    for (int op = 0; op < ops && !t_failed(); op++) {
        unsigned kind = (unsigned)(t_rand(&st) % 20);
        if (kind < 3) { /* truncate, mostly down, sometimes up */
            uint64_t ns = t_rand(&st) % (size + size / 5 + 100);
            if (ns > MODEL_MAX - 8192) ns = MODEL_MAX - 8192;
            if (kind == 0 && t_rand(&st) % 4 == 0) ns = 0;
            if (ns > size) memset(model + size, 0, (size_t)(ns - size));
            size = ns;
            CHECK_OK(blob_value_truncate(&pg, ref.data, ref.len, ns, &next));
        } else {
            uint64_t off = t_rand(&st) % (size + 3000);
            if (off > MODEL_MAX - 8192) off = t_rand(&st) % (MODEL_MAX - 8192);
            size_t len = 1 + (size_t)(t_rand(&st) % (kind < 17 ? 600 : 5000));
            blob_extent e;
            if (kind == 3) {
                e = (blob_extent){.len = len}; /* a hole */
                memset(data, 0, len);
            } else {
                size_t skip = (size_t)(t_rand(&st) % 3), extra = (size_t)(t_rand(&st) % 3); /* a part of a record */
                fill(data, len + skip + extra, &st);
                CHECK_OK(blob_writer_add(f.w, data, len + skip + extra, &e));
                e.skip = skip;
                e.len = len;
                memmove(data, data + skip, len);
            }
            if (off > size) memset(model + size, 0, (size_t)(off - size));
            memcpy(model + off, data, len);
            if (off + len > size) size = off + len;
            CHECK_OK(blob_value_splice(&pg, ref.data, ref.len, off, &e, &next));
        }
        kv_bytes t = ref;
        ref = next;
        next = t;

        uint64_t got_size = 0;
        CHECK_OK(blob_ref_size(ref.data, ref.len, &got_size));
        CHECK_EQ(got_size, size);
        shape sh;
        CHECK_MSG(shape_of(f.s, &ref, per, &sh), "op %d: the reference breaks the form rules", op);
        if (sh.paged) paged_ops++;
        if (was_paged && !sh.paged) unpaged++;
        was_paged = sh.paged;
        shape vis = {0};
        CHECK_OK(blob_value_visit(f.s, ref.data, ref.len, count_extent, &vis));
        /* a random range every time, the whole value every 25 ops */
        uint64_t off = size ? t_rand(&st) % size : 0;
        size_t len = (size_t)(t_rand(&st) % 9000), got = 0;
        CHECK_OK(blob_value_read(f.s, ref.data, ref.len, off, buf, len, &got));
        size_t want = off >= size ? 0 : size - off < len ? (size_t)(size - off) : len;
        CHECK_MEM(buf, got, model + off, want);
        if (op % 25 == 0 || op == ops - 1) {
            CHECK_OK(blob_value_read(f.s, ref.data, ref.len, 0, buf, MODEL_MAX, &got));
            CHECK_MEM(buf, got, model, size);
        }
    }
    printf("# %zu extents per page: %d of %d changes left a paged reference, %d went back to direct\n", per,
           paged_ops, ops, unpaged);
    if (per < 64) CHECK(paged_ops > ops / 4); /* the paged form was exercised */
    bytes_free(&ref);
    bytes_free(&next);
    free(model);
    free(buf);
    free(data);
    fx_close(&f);
}

TEST(test_pages_model_random_4) { model_run(4, 3000, t_seed() ^ 41); }
TEST(test_pages_model_random_8) { model_run(8, 2000, t_seed() ^ 43); }
TEST(test_pages_model_random_16) { model_run(16, 2000, t_seed() ^ 47); }

/* ---- the cost of a change ---------------------------------------------------------------------------------------------- */

/* 5,000 writes of 4 KiB at random places in a 256 MiB value (what a database file on the mount sees): every change
 * writes a bounded number of page bytes, and the top-level reference stays small, instead of growing by an extent
 * or two per write as a direct list would. The value reads back right at every written block. */
TEST(test_pages_random_writes_cost_is_bounded) {
    const char *dir = t_tmpdir();
    fixture f;
    CHECK_OK(fx_open(&f, dir, 5));
    size_t per = BLOB_PAGE_EXTENTS_DEFAULT;
    blob_pager pg = fx_pager(&f, per);
    enum { BLOCKS = 65536, WRITES = 5000, B = 4096 };
    uint16_t *last = calloc(BLOCKS, sizeof *last); /* 1 + the write that last wrote each block, 0 = never */
    uint8_t blk[B], back[B];
    kv_bytes ref = {0}, next = {0};
    CHECK_OK(blob_ref_encode(&(blob_ref){0}, &ref));
    CHECK_OK(blob_value_truncate(&pg, ref.data, ref.len, (uint64_t)BLOCKS * B, &next));
    kv_bytes t = ref;
    ref = next;
    next = t;
    uint64_t st = t_seed() ^ 53, max_page_bytes = 0;
    size_t max_top = 0;
    for (int i = 0; i < WRITES && !t_failed(); i++) {
        size_t b = (size_t)(t_rand(&st) % BLOCKS);
        memset(blk, (uint8_t)(i * 7 + 1), B);
        memcpy(blk, &i, sizeof i);
        blob_extent e;
        CHECK_OK(blob_writer_add(f.w, blk, B, &e));
        uint64_t before = f.appended;
        CHECK_OK(blob_value_splice(&pg, ref.data, ref.len, (uint64_t)b * B, &e, &next));
        t = ref;
        ref = next;
        next = t;
        last[b] = (uint16_t)(i + 1);
        if (f.appended - before > max_page_bytes) max_page_bytes = f.appended - before;
        if (ref.len > max_top) max_top = ref.len;
    }
    shape sh;
    CHECK(shape_of(f.s, &ref, per, &sh));
    shape vis = {0};
    CHECK_OK(blob_value_visit(f.s, ref.data, ref.len, count_extent, &vis));
    printf("# %d random 4 KiB writes: %zu data extents in %zu pages; top-level reference %zu bytes (largest %zu); "
           "at most %llu page bytes written per change\n",
           WRITES, vis.extents, sh.pages, ref.len, max_top, (unsigned long long)max_page_bytes);
    CHECK(sh.paged);
    CHECK(vis.extents > WRITES * 9 / 10); /* with holes between them: the value really is fragmented */
    /* one change rewrites at most two pages and a small neighbour, about 2.25 * per extents of <= 25 bytes each here */
    CHECK(max_page_bytes <= 3 * per * 25);
    /* pages average more than per / 4 extents, each page about 12 bytes in the top level */
    CHECK(ref.len <= 64 + 20 * (2 * vis.extents / (per / 4) + 1));
    CHECK(max_top < 4096); /* a direct list would be about 10,000 extents = 150 KiB */
    for (size_t b = 0; b < BLOCKS && !t_failed(); b += (last[b] ? 1 : 97)) {
        size_t got;
        CHECK_OK(blob_value_read(f.s, ref.data, ref.len, (uint64_t)b * B, back, B, &got));
        CHECK_EQ(got, B);
        if (!last[b]) {
            memset(blk, 0, B);
        } else {
            int i = last[b] - 1;
            memset(blk, (uint8_t)(i * 7 + 1), B);
            memcpy(blk, &i, sizeof i);
        }
        CHECK_MSG(memcmp(back, blk, B) == 0, "block %zu reads wrong", b);
    }
    /* cutting it down to a few blocks makes it direct again */
    CHECK_OK(blob_value_truncate(&pg, ref.data, ref.len, 3 * B, &next));
    CHECK(!blob_ref_is_paged(next.data, next.len));
    size_t got;
    CHECK_OK(blob_value_read(f.s, next.data, next.len, 0, back, B, &got));
    CHECK_EQ(got, B);
    bytes_free(&ref);
    bytes_free(&next);
    free(last);
    fx_close(&f);
}
