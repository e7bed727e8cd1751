/* test_db.c — the store through its public API: basics, batches, iterators, snapshots, reopen, closed handles,
 * large values, prefixes, the batch log, check/checkpoint/stats, and a randomized model test. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "blob_pages.h"
#include "db_impl.h" /* test_db_check_reports_a_value_whose_blob_file_is_gone edits the version by hand */
#include "dbformat.h"
#include "env.h"
#include "error.h"
#include "kv.h"
#include "model.h"
#include "t.h"
#include "wal.h"

#define BLOB_TEST_FILE BLOB_CHUNK

/* small sizes so that flushes and compactions happen constantly */
static void small_options(kv_options *o) {
    kv_options_init(o);
    o->memtable_bytes = 32 << 10;
    o->table_bytes = 16 << 10;
    o->level1_bytes = 64 << 10;
    o->block_bytes = 512;
    o->blob_threshold = 1024;
    o->block_cache_bytes = 256 << 10;
    o->max_open_tables = 16;
}

/* A fresh store whose values of 1 KiB and more go to blob files of file_bytes (0: the default size). */
static bool open_blob_store(char dir[512], kv_options *o, kv_db **db, uint64_t file_bytes) {
    snprintf(dir, 512, "%s", t_tmpdir());
    kv_options_init(o);
    o->blob_threshold = 1024;
    if (file_bytes) o->blob_file_bytes = file_bytes;
    int rc = kv_open(dir, o, db);
    if (rc) t_fail(__FILE__, __LINE__, "kv_open: %s (%s)", kv_strerror(rc), kv_errmsg());
    return rc == KV_OK;
}

static int get_str(kv_db *db, const char *k, char *out, size_t n) {
    kv_buf b;
    int rc = kv_get(db, NULL, k, strlen(k), &b);
    if (rc) return rc;
    size_t m = b.len < n - 1 ? (size_t)b.len : n - 1;
    memcpy(out, b.data, m);
    out[m] = 0;
    kv_buf_free(&b);
    return KV_OK;
}

TEST(test_db_basic) {
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, NULL, &db));
    CHECK_OK(kv_put(db, "a", 1, "1", 1, 0));
    CHECK_OK(kv_put(db, "b", 1, "2", 1, KV_SYNC));
    char buf[64];
    CHECK_OK(get_str(db, "a", buf, sizeof buf));
    CHECK(strcmp(buf, "1") == 0);
    CHECK_EQ(kv_contains(db, NULL, "b", 1), 1);
    CHECK_OK(kv_delete(db, "a", 1, 0));
    CHECK_EQ(get_str(db, "a", buf, sizeof buf), KV_ENOTFOUND);
    CHECK_EQ(kv_contains(db, NULL, "a", 1), 0);
    CHECK_EQ(kv_current_sequence(db), 3);
    /* empty values, bad keys */
    CHECK_OK(kv_put(db, "empty", 5, "", 0, 0));
    kv_buf b;
    CHECK_OK(kv_get(db, NULL, "empty", 5, &b));
    CHECK_EQ(b.len, 0);
    kv_buf_free(&b);
    CHECK_EQ(kv_put(db, "", 0, "x", 1, 0), KV_EINVAL);
    static char big[KV_MAX_KEY + 1];
    CHECK_EQ(kv_put(db, big, sizeof big, "x", 1, 0), KV_EINVAL);
    CHECK_OK(kv_put(db, big, KV_MAX_KEY, "x", 1, 0));
    /* a second open of the same store is refused */
    kv_db *db2;
    CHECK_EQ(kv_open(dir, NULL, &db2), KV_EBUSY);
    CHECK_OK(kv_close(db));
    /* calls on a closed handle answer "closed" */
    CHECK_EQ(kv_put(db, "a", 1, "1", 1, 0), KV_ECLOSED);
    CHECK_EQ(kv_get(db, NULL, "b", 1, &b), KV_ECLOSED);
    CHECK_EQ(kv_close(db), KV_ECLOSED);
    kv_free(db);
    /* reopen: everything is there */
    CHECK_OK(kv_open(dir, NULL, &db));
    CHECK_OK(get_str(db, "b", buf, sizeof buf));
    CHECK(strcmp(buf, "2") == 0);
    CHECK_EQ(kv_current_sequence(db), 5);
    kv_free(db);
}

TEST(test_db_missing_store) {
    kv_options o;
    kv_options_init(&o);
    o.create_if_missing = false;
    char path[512];
    snprintf(path, sizeof path, "%s/nothing", t_tmpdir());
    kv_db *db;
    CHECK_EQ(kv_open(path, &o, &db), KV_ENOTFOUND);
    CHECK(strstr(kv_errmsg(), "nothing") != NULL);
}

TEST(test_db_batch_atomic_and_move) {
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), NULL, &db));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put(b, "x", 1, "1", 1));
    CHECK_OK(kv_batch_put(b, "y", 1, "2", 1));
    CHECK_OK(kv_batch_delete(b, "x", 1));
    CHECK_OK(kv_batch_put(b, "y", 1, "3", 1)); /* the last op of a key wins */
    uint64_t seq;
    CHECK_OK(kv_write(db, b, 0, &seq));
    CHECK_EQ(seq, 1);
    char buf[16];
    CHECK_EQ(get_str(db, "x", buf, sizeof buf), KV_ENOTFOUND);
    CHECK_OK(get_str(db, "y", buf, sizeof buf));
    CHECK(strcmp(buf, "3") == 0);
    /* move, and a move of an absent key fails the whole batch */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_move(b, 0, "y", 1, 0, "z", 1));
    CHECK_OK(kv_write(db, b, 0, &seq));
    CHECK_EQ(seq, 2);
    CHECK_EQ(get_str(db, "y", buf, sizeof buf), KV_ENOTFOUND);
    CHECK_OK(get_str(db, "z", buf, sizeof buf));
    CHECK(strcmp(buf, "3") == 0);
    kv_batch_clear(b);
    CHECK_OK(kv_batch_put(b, "w", 1, "9", 1));
    CHECK_OK(kv_batch_move(b, 0, "nope", 4, 0, "q", 1));
    CHECK_EQ(kv_write(db, b, 0, &seq), KV_ENOTFOUND);
    CHECK_EQ(get_str(db, "w", buf, sizeof buf), KV_ENOTFOUND);
    CHECK_EQ(kv_current_sequence(db), 2);
    /* keyspaces are separate */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_put_ks(b, 1, "z", 1, "meta", 4));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_read_opts ro = {.keyspace = 1};
    kv_buf v;
    CHECK_OK(kv_get(db, &ro, "z", 1, &v));
    CHECK_MEM(v.data, v.len, "meta", 4);
    kv_buf_free(&v);
    CHECK_OK(get_str(db, "z", buf, sizeof buf));
    CHECK(strcmp(buf, "3") == 0);
    kv_batch_free(b);
    kv_free(db);
}

static void write_at_run(int page_extents) {
    kv_options o;
    small_options(&o);
    o.blob_page_extents = page_extents;
    kv_db *db;
    const char *dir = t_tmpdir();
    CHECK_OK(kv_open(dir, &o, &db));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    uint8_t model[20000];
    memset(model, 0, sizeof model);
    size_t size = 0;
    uint64_t rs = t_seed();
    for (int i = 0; i < 300; i++) {
        uint8_t data[3000]; /* lives until kv_write: the nocopy builder only points to it */
        kv_batch_clear(b);
        if (t_rand(&rs) % 5 == 0) {
            size_t ns = t_rand(&rs) % sizeof model;
            if (ns > size) memset(model + size, 0, ns - size);
            size = ns;
            CHECK_OK(kv_batch_truncate(b, 0, "f", 1, ns));
        } else if (t_rand(&rs) % 6 == 0) { /* a hole punched, or zeros past the end */
            size_t off = t_rand(&rs) % (sizeof model - 6000), len = t_rand(&rs) % 6000;
            if (len && off > size) memset(model + size, 0, off - size);
            memset(model + off, 0, len);
            if (len && off + len > size) size = off + len;
            CHECK_OK(kv_batch_zero_range(b, 0, "f", 1, off, len));
        } else {
            size_t off = t_rand(&rs) % (sizeof model - 3000), len = t_rand(&rs) % 3000;
            for (size_t j = 0; j < len; j++) data[j] = (uint8_t)t_rand(&rs);
            if (len && off > size) memset(model + size, 0, off - size);
            memcpy(model + off, data, len);
            if (len && off + len > size) size = off + len;
            if (i % 2) /* both ways: the batch's copy, or the caller's buffer read by kv_write */
                CHECK_OK(kv_batch_write_at(b, 0, "f", 1, off, data, len));
            else
                CHECK_OK(kv_batch_write_at_nocopy(b, 0, "f", 1, off, data, len));
        }
        CHECK_OK(kv_write(db, b, 0, NULL));
        kv_info info;
        CHECK_OK(kv_stat(db, NULL, "f", 1, &info));
        CHECK_EQ(info.size, size);
        if (i % 20 == 0 || i == 299) {
            kv_buf v;
            CHECK_OK(kv_get(db, NULL, "f", 1, &v));
            CHECK_MEM(v.data, v.len, model, size);
            kv_buf_free(&v);
            uint8_t part[777];
            size_t got;
            uint64_t off = size ? t_rand(&rs) % size : 0;
            CHECK_OK(kv_read_range(db, NULL, "f", 1, off, part, sizeof part, &got));
            size_t want = size - off < sizeof part ? size - off : sizeof part;
            CHECK_MEM(part, got, model + off, want);
            /* SEEK_DATA / SEEK_HOLE: each byte is in one or the other, and what lies before the next data is zeros */
            uint64_t data_at, hole_at;
            CHECK_OK(kv_seek_data(db, NULL, "f", 1, off, false, &data_at));
            CHECK_OK(kv_seek_data(db, NULL, "f", 1, off, true, &hole_at));
            CHECK(data_at <= size && hole_at <= size && off <= data_at && off <= hole_at);
            CHECK(size == 0 || data_at == off || hole_at == off);
            for (uint64_t p = off; p < data_at; p++) CHECK_EQ(model[p], 0);
        }
    }
    /* a sparse value: a hole costs nothing and reads as zeros */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_truncate(b, 0, "sparse", 6, 5ull << 30));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_info info;
    CHECK_OK(kv_stat(db, NULL, "sparse", 6, &info));
    CHECK(info.size == 5ull << 30);
    CHECK_EQ(info.stored, 0); /* all hole */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_write_at(b, 0, "sparse", 6, 4ull << 30, "tail", 4));
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_stat(db, NULL, "sparse", 6, &info));
    CHECK_EQ(info.stored, 4);
    /* an iterator says the same; and a value in the tree keeps all of itself */
    kv_iter *it;
    CHECK_OK(kv_iter_new(db, NULL, &it));
    kv_iter_seek(it, "sparse", 6);
    CHECK(kv_iter_valid(it));
    CHECK_OK(kv_iter_info(it, &info));
    CHECK(info.size == 5ull << 30 && info.stored == 4);
    kv_iter_free(it);
    kv_batch_clear(b);
    CHECK_OK(kv_batch_put(b, "inline", 6, "abc", 3));
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_stat(db, NULL, "inline", 6, &info));
    CHECK(info.size == 3 && info.stored == 3 && !info.external);
    char rb[8];
    size_t got;
    CHECK_OK(kv_read_range(db, NULL, "sparse", 6, (4ull << 30) - 2, rb, 8, &got));
    CHECK_EQ(got, 8);
    CHECK(memcmp(rb, "\0\0tail\0\0", 8) == 0);
    /* a zeroed range: a hole in a blob value (its bytes no longer stored), zeros in a value kept whole, which it
     * extends when it reaches past the end; an absent key is created */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_zero_range(b, 0, "sparse", 6, (4ull << 30) + 1, 2));
    CHECK_OK(kv_batch_zero_range(b, 0, "inline", 6, 1, 1));
    CHECK_OK(kv_batch_zero_range(b, 0, "inline", 6, 5, 2));
    CHECK_OK(kv_batch_zero_range(b, 0, "new", 3, 2, 1));
    CHECK_OK(kv_batch_zero_range(b, 0, "new", 3, 9, 0)); /* changes nothing, even past the end */
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_stat(db, NULL, "sparse", 6, &info));
    /* five extents: paged with BLOB_PAGE_EXTENTS_MIN, and a paged reference counts its holes (kv_info) */
    CHECK(info.size == 5ull << 30 && info.stored == (page_extents > 4 ? 2 : 5ull << 30));
    CHECK_OK(kv_read_range(db, NULL, "sparse", 6, (4ull << 30) - 2, rb, 8, &got));
    CHECK(got == 8 && memcmp(rb, "\0\0t\0\0l\0\0", 8) == 0);
    /* where its data and holes are (lseek's SEEK_DATA and SEEK_HOLE); the end counts as a hole */
    uint64_t at;
    CHECK_OK(kv_seek_data(db, NULL, "sparse", 6, 0, false, &at));
    CHECK(at == 4ull << 30);
    CHECK_OK(kv_seek_data(db, NULL, "sparse", 6, 7, true, &at));
    CHECK_EQ(at, 7);
    CHECK_OK(kv_seek_data(db, NULL, "sparse", 6, 4ull << 30, true, &at));
    CHECK(at == (4ull << 30) + 1);
    CHECK_OK(kv_seek_data(db, NULL, "sparse", 6, (4ull << 30) + 1, false, &at));
    CHECK(at == (4ull << 30) + 3);
    CHECK_OK(kv_seek_data(db, NULL, "sparse", 6, (4ull << 30) + 4, false, &at));
    CHECK(at == 5ull << 30);
    CHECK_OK(kv_seek_data(db, NULL, "sparse", 6, 6ull << 30, false, &at));
    CHECK(at == 5ull << 30);
    CHECK_OK(kv_seek_data(db, NULL, "inline", 6, 1, false, &at)); /* kept whole: data throughout */
    CHECK_EQ(at, 1);
    CHECK_OK(kv_seek_data(db, NULL, "inline", 6, 1, true, &at));
    CHECK_EQ(at, 7);
    CHECK_EQ(kv_seek_data(db, NULL, "absent", 6, 0, true, &at), KV_ENOTFOUND);
    kv_batch_clear(b);
    CHECK_OK(kv_batch_zero_range(b, 0, "sparse", 6, 0, 5ull << 30));
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_stat(db, NULL, "sparse", 6, &info));
    CHECK(info.size == 5ull << 30 && info.stored == 0);
    kv_buf iv;
    CHECK_OK(kv_get(db, NULL, "inline", 6, &iv));
    CHECK_MEM(iv.data, iv.len, "a\0c\0\0\0\0", 7);
    kv_buf_free(&iv);
    CHECK_OK(kv_get(db, NULL, "new", 3, &iv));
    CHECK_MEM(iv.data, iv.len, "\0\0\0", 3);
    kv_buf_free(&iv);
    CHECK_EQ(kv_batch_zero_range(b, 0, "k", 1, KV_MAX_VALUE - 1, 2), KV_EINVAL);
    /* copy_range: a large range of a blob value is shared, not written again (holes stay holes); a small one, or one
     * from a value kept whole, is written; the range stops at the source's end; an absent source fails the batch */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_write_at(b, 0, "src", 3, 10000, model, 5000));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_stats s0, s1;
    CHECK_OK(kv_get_stats(db, &s0));
    kv_batch_clear(b);
    CHECK_OK(kv_batch_copy_range(b, 0, "src", 3, 5000, 0, "dst", 3, 100, 1 << 20)); /* cut at 15000 */
    CHECK_OK(kv_batch_copy_range(b, 0, "src", 3, 12000, 0, "dst", 3, 0, 10)); /* small: written */
    CHECK_OK(kv_batch_copy_range(b, 0, "inline", 6, 0, 0, "dst", 3, 20, 7));
    CHECK_OK(kv_batch_copy_range(b, 0, "src", 3, 15000, 0, "none", 4, 0, 100)); /* nothing: not even created */
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_get_stats(db, &s1));
    CHECK(s1.blob_bytes_written - s0.blob_bytes_written < 5000); /* the reference, not the bytes */
    CHECK_OK(kv_stat(db, NULL, "dst", 3, &info));
    CHECK(info.size == 10100 && info.stored == (page_extents > 4 ? 5017 : 10100)); /* 5 extents: paged with 4 */
    uint8_t want[10100];
    memset(want, 0, sizeof want);
    memcpy(want + 5100, model, 5000);
    memcpy(want, model + 2000, 10);
    memcpy(want + 20, "a\0c\0\0\0\0", 7);
    CHECK_OK(kv_get(db, NULL, "dst", 3, &iv));
    CHECK_MEM(iv.data, iv.len, want, sizeof want);
    kv_buf_free(&iv);
    CHECK_EQ(kv_stat(db, NULL, "none", 4, &info), KV_ENOTFOUND);
    kv_batch_clear(b);
    CHECK_OK(kv_batch_put(b, "w", 1, "x", 1));
    CHECK_OK(kv_batch_copy_range(b, 0, "absent", 6, 0, 0, "dst", 3, 0, 1));
    CHECK_EQ(kv_write(db, b, 0, NULL), KV_ENOTFOUND);
    CHECK_EQ(kv_stat(db, NULL, "w", 1, &info), KV_ENOTFOUND);
    /* a fragmented value (the model's "f": hundreds of write_ats, paged with BLOB_PAGE_EXTENTS_MIN) copied whole
     * into the middle of another: one splice of all its extents, its pages written once */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_put(b, "frag", 4, NULL, 0));
    CHECK_OK(kv_batch_write_at(b, 0, "frag", 4, 0, model, 3000));
    CHECK_OK(kv_batch_copy_range(b, 0, "f", 1, 0, 0, "frag", 4, 1000, size));
    CHECK_OK(kv_get_stats(db, &s0));
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_get_stats(db, &s1));
    CHECK(s1.blob_bytes_written - s0.blob_bytes_written < 3000 + size / 2);
    CHECK_OK(kv_get(db, NULL, "frag", 4, &iv));
    CHECK_EQ(iv.len, size > 2000 ? 1000 + size : 3000);
    CHECK_MEM(iv.data, 1000, model, 1000);
    CHECK_MEM(iv.data + 1000, size, model, size);
    kv_buf_free(&iv);
    /* the copy outlives its source, through blob GC */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_delete(b, "src", 3));
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_blob_gc(db, 0.0));
    CHECK_OK(kv_get(db, NULL, "dst", 3, &iv));
    CHECK_MEM(iv.data, iv.len, want, sizeof want);
    kv_buf_free(&iv);
    kv_batch_free(b);
    kv_free(db);
    /* after reopen the large value reads the same */
    CHECK_OK(kv_open(dir, &o, &db));
    kv_buf v;
    CHECK_OK(kv_get(db, NULL, "f", 1, &v));
    CHECK_MEM(v.data, v.len, model, size);
    kv_buf_free(&v);
    uint64_t problems = 0;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
}

TEST(test_db_write_at_and_truncate) { write_at_run(BLOB_PAGE_EXTENTS_DEFAULT); }
/* the same with paged references from the fifth extent on (blob_pages.h) */
TEST(test_db_write_at_and_truncate_paged) { write_at_run(BLOB_PAGE_EXTENTS_MIN); }

/* Random small writes into a large value cost the same at the end as at the start: the log record of each write
 * holds the value's top-level reference, which paging keeps small, not its whole extent list. */
TEST(test_db_random_writes_into_large_value) {
    kv_options o;
    kv_options_init(&o);
    kv_db *db;
    const char *dir = t_tmpdir();
    CHECK_OK(kv_open(dir, &o, &db));
    enum { BLOCKS = 16384, WRITES = 3000, B = 4096 };
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_truncate(b, 0, "db", 2, (uint64_t)BLOCKS * B));
    CHECK_OK(kv_write(db, b, 0, NULL));
    uint16_t *last = calloc(BLOCKS, sizeof *last);
    uint8_t blk[B], back[B];
    uint64_t rs = t_seed() ^ 77;
    kv_stats s0, s1, s2;
    CHECK_OK(kv_get_stats(db, &s0));
    for (int i = 0; i < WRITES; i++) {
        if (i == WRITES / 2) CHECK_OK(kv_get_stats(db, &s1));
        size_t k = (size_t)(t_rand(&rs) % BLOCKS);
        memset(blk, (uint8_t)(i * 5 + 3), B);
        memcpy(blk, &i, sizeof i);
        kv_batch_clear(b);
        CHECK_OK(kv_batch_write_at(b, 0, "db", 2, (uint64_t)k * B, blk, B));
        CHECK_OK(kv_write(db, b, 0, NULL));
        last[k] = (uint16_t)(i + 1);
    }
    CHECK_OK(kv_get_stats(db, &s2));
    uint64_t wal1 = s1.wal_bytes_written - s0.wal_bytes_written, wal2 = s2.wal_bytes_written - s1.wal_bytes_written;
    uint64_t blob2 = s2.blob_bytes_written - s1.blob_bytes_written;
    printf("# log bytes per write: %llu in the first half, %llu in the second; blob bytes per write %llu\n",
           (unsigned long long)(wal1 / (WRITES / 2)), (unsigned long long)(wal2 / (WRITES / 2)),
           (unsigned long long)(blob2 / (WRITES / 2)));
    CHECK(wal2 / (WRITES / 2) < 2048);           /* a direct list would be ~30 KiB by the end */
    CHECK(blob2 / (WRITES / 2) < B + 8192);      /* the data and one or two pages */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < BLOCKS; k += last[k] ? 1 : 61) {
            size_t got;
            CHECK_OK(kv_read_range(db, NULL, "db", 2, (uint64_t)k * B, back, B, &got));
            CHECK_EQ(got, B);
            int i = last[k] - 1;
            memset(blk, last[k] ? (uint8_t)(i * 5 + 3) : 0, B);
            if (last[k]) memcpy(blk, &i, sizeof i);
            CHECK_MSG(memcmp(back, blk, B) == 0, "pass %d: block %zu reads wrong", pass, k);
        }
        /* the same after a reopen, and after garbage collection copied the value into a new file (then, on the
         * second pass, deleted the old one) */
        kv_free(db);
        CHECK_OK(kv_open(dir, &o, &db));
        CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
        CHECK_OK(kv_blob_gc(db, 0.0));
    }
    /* the copies kept the holes: at most two files (the second pass may copy the first copy again), each about the
     * 3000 blocks written, where one dense copy of the value would take 64 MiB */
    kv_stats sg;
    CHECK_OK(kv_get_stats(db, &sg));
    printf("# after garbage collection: %llu blob file(s), %llu bytes\n", (unsigned long long)sg.blob_files,
           (unsigned long long)sg.blob_bytes);
    CHECK(sg.blob_files <= 2 && sg.blob_bytes < 2 * ((uint64_t)WRITES * B + (2u << 20)));
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    /* and a large value cut to nothing reads as empty */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_truncate(b, 0, "db", 2, 0));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_buf v;
    CHECK_OK(kv_get(db, NULL, "db", 2, &v));
    CHECK_EQ(v.len, 0);
    kv_buf_free(&v);
    kv_batch_free(b);
    free(last);
    kv_free(db);
}

/* The offset of the last chunk of blob file path whose data decodes as a direct blob reference (a page record of
 * blob_pages.h: the values written in these tests are letters, which never do), or -1; its data length in *dlen. */
static long last_page_chunk(const char *path, uint32_t *dlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    long found = -1;
    for (size_t off = BLOB_HEADER; off + 8 <= n;) {
        uint32_t len = get_fixed32(buf + off + 4);
        if (len == 0 || off + 8 + len > n) break;
        blob_ref r = {0};
        if (blob_ref_decode(buf + off + 8, len, &r) == KV_OK && r.n >= 1) {
            found = (long)off;
            *dlen = len;
        }
        blob_ref_free(&r);
        off += 8 + len;
    }
    return found;
}

typedef struct problem_log {
    int n;
    char text[4096];
} problem_log;

static void log_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    problem_log *pl = ctx;
    pl->n++;
    size_t used = strlen(pl->text);
    snprintf(pl->text + used, sizeof pl->text - used, "%s@%llu: %s\n", file, (unsigned long long)off, what);
}

/* A store with "a" (direct, before `*intact` bytes of its blob file), "b" (paged, its last version after them) and
 * "d" (direct, after them), all in tables, closed. */
static void build_blob_refs_store(const char *dir, kv_options *o, char *blob_path, size_t pn, off_t *intact) {
    small_options(o);
    o->blob_page_extents = BLOB_PAGE_EXTENTS_MIN;
    kv_db *db;
    CHECK_OK(kv_open(dir, o, &db));
    static uint8_t v[3000];
    memset(v, 'v', sizeof v);
    CHECK_OK(kv_put(db, "a", 1, v, sizeof v, 0));
    CHECK_OK(kv_put(db, "b", 1, v, sizeof v, KV_SYNC));
    char blob[600];
    CHECK(t_newest_file(dir, ".blob", blob, sizeof blob));
    snprintf(blob_path, pn, "%s/%s", dir, blob);
    struct stat sb;
    CHECK(stat(blob_path, &sb) == 0);
    *intact = sb.st_size;
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    for (int i = 0; i < 6; i++) { /* b gets a paged reference, its data and pages after `intact` */
        kv_batch_clear(b);
        CHECK_OK(kv_batch_write_at(b, 0, "b", 1, 400 * (uint64_t)i + 7, "patch", 5));
        CHECK_OK(kv_write(db, b, 0, NULL));
    }
    kv_batch_free(b);
    memset(v, 'd', sizeof v);
    CHECK_OK(kv_put(db, "d", 1, v, 1500, 0));
    /* into a table: in the log, recovery would take a cut as a power loss and drop the batches (test_crash) */
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
}

/* kv_check follows every blob reference: a blob file cut short at a chunk boundary (so its own walk finds nothing
 * wrong) is reported where a value's records, data or page, run past its end; and a page whose chunk is sound but
 * whose content is not a page is reported too. */
TEST(test_db_check_follows_blob_references) {
    const char *dir = t_tmpdir();
    kv_options o;
    char path[1200];
    off_t intact;
    build_blob_refs_store(dir, &o, path, sizeof path, &intact);
    if (t_failed()) return;
    CHECK(truncate(path, intact) == 0);
    o.read_only = true;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    problem_log pl = {0};
    CHECK_EQ(kv_check(db, log_problem, NULL, &pl, NULL), KV_ECORRUPT);
    printf("# %s", pl.text);
    CHECK(strstr(pl.text, "page record runs past the end of the file") != NULL);
    CHECK(strstr(pl.text, "a blob value's record runs past the end of the file") != NULL); /* d's */
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "a", 1, &got)); /* what lies before the cut still reads */
    CHECK_EQ(got.len, 3000);
    kv_buf_free(&got);
    CHECK_EQ(kv_get(db, NULL, "b", 1, &got), KV_ECORRUPT);
    CHECK_EQ(kv_get(db, NULL, "d", 1, &got), KV_ECORRUPT);
    kv_free(db);

    /* a page whose chunk checksum holds but whose content is not a page any more */
    dir = t_tmpdir();
    build_blob_refs_store(dir, &o, path, sizeof path, &intact);
    if (t_failed()) return;
    uint32_t dlen = 0;
    long at = last_page_chunk(path, &dlen);
    CHECK(at > 0);
    uint8_t chunk[8 + 4096];
    CHECK(dlen <= 4096);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, at, SEEK_SET) == 0 && fread(chunk, 1, 8 + dlen, f) == 8 + dlen);
    chunk[8 + dlen - 1] ^= 1; /* the last extent's len, one more or one less: its lens no longer add up */
    put_fixed32(chunk, kv_checksum(chunk + 4, 4 + dlen));
    CHECK(fseek(f, at, SEEK_SET) == 0 && fwrite(chunk, 1, 8 + dlen, f) == 8 + dlen);
    fclose(f);
    CHECK_OK(kv_open(dir, &o, &db));
    memset(&pl, 0, sizeof pl);
    CHECK_EQ(kv_check(db, log_problem, NULL, &pl, NULL), KV_ECORRUPT);
    printf("# %s", pl.text);
    CHECK_EQ(pl.n, 1);
    CHECK(strstr(pl.text, "bad blob page at offset") != NULL);
    CHECK_EQ(kv_get(db, NULL, "b", 1, &got), KV_ECORRUPT);
    kv_free(db);
}

/* A damaged page: blob garbage collection deletes and rewrites nothing while the damage is in the store (which
 * records the page names cannot be known), says so with KV_ECORRUPT, and so does not pile up new blob files pass
 * after pass. Once the damaged value is deleted, collection works again. */
TEST(test_db_blob_gc_with_damaged_page) {
    const char *dir = t_tmpdir();
    kv_options o;
    char path[1200];
    off_t intact;
    build_blob_refs_store(dir, &o, path, sizeof path, &intact);
    if (t_failed()) return;
    uint32_t dlen = 0;
    long at = last_page_chunk(path, &dlen);
    CHECK(at > 0);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, at + 9, SEEK_SET) == 0);
    int c = fgetc(f);
    CHECK(fseek(f, at + 9, SEEK_SET) == 0 && fputc(c ^ 0x40, f) != EOF);
    fclose(f);
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    kv_stats st;
    uint64_t files[4];
    for (int pass = 0; pass < 4; pass++) {
        CHECK_EQ(kv_blob_gc(db, 0.0), KV_ECORRUPT);
        CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
        CHECK_OK(kv_get_stats(db, &st));
        files[pass] = st.blob_files;
    }
    printf("# blob files after each pass: %llu %llu %llu %llu\n", (unsigned long long)files[0],
           (unsigned long long)files[1], (unsigned long long)files[2], (unsigned long long)files[3]);
    CHECK(files[3] == files[0]);
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "a", 1, &got));
    CHECK_EQ(got.len, 3000);
    kv_buf_free(&got);
    CHECK_OK(kv_get(db, NULL, "d", 1, &got));
    CHECK_EQ(got.len, 1500);
    kv_buf_free(&got);
    CHECK_EQ(kv_get(db, NULL, "b", 1, &got), KV_ECORRUPT);
    CHECK_OK(kv_delete(db, "b", 1, 0));
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_blob_gc(db, 0.0));
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_blob_gc(db, 0.0));
    struct stat sb;
    CHECK_MSG(stat(path, &sb) != 0, "%s is still there", path); /* the file with the damaged page: copied out, gone */
    CHECK_OK(kv_get(db, NULL, "d", 1, &got));
    CHECK_EQ(got.len, 1500);
    kv_buf_free(&got);
    kv_free(db);
}

/* A damaged data chunk: GC leaves that value and its file where they are, says so, and does not make a new file for
 * a copy it cannot finish, pass after pass. */
TEST(test_db_blob_gc_with_damaged_chunk) {
    kv_options o;
    small_options(&o);
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    static uint8_t v[100000];
    memset(v, 'b', sizeof v);
    CHECK_OK(kv_put(db, "big", 3, v, sizeof v, 0)); /* the blob file's first record: chunks at 16 and 65560 */
    for (int i = 0; i < 40; i++) CHECK_OK(kv_put(db, "x", 1, v, 3000, 0)); /* the file: more garbage than live */
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    char blob[600], path[1200];
    CHECK(t_newest_file(dir, ".blob", blob, sizeof blob));
    snprintf(path, sizeof path, "%s/%s", dir, blob);
    kv_free(db);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, 65560 + 8 + 100, SEEK_SET) == 0 && fputc('!', f) != EOF);
    fclose(f);
    CHECK_OK(kv_open(dir, &o, &db));
    char newest[3][600];
    for (int pass = 0; pass < 3; pass++) {
        CHECK_EQ(kv_blob_gc(db, 0.5), KV_ECORRUPT);
        CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
        CHECK(t_newest_file(dir, ".blob", newest[pass], sizeof newest[pass]));
    }
    CHECK_MSG(strcmp(newest[1], newest[2]) == 0, "a new blob file on every pass: %s, then %s", newest[1], newest[2]);
    struct stat sb;
    CHECK(stat(path, &sb) == 0); /* big's file stays */
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "x", 1, &got));
    CHECK_EQ(got.len, 3000);
    kv_buf_free(&got);
    CHECK_EQ(kv_get(db, NULL, "big", 3, &got), KV_ECORRUPT);
    kv_free(db);
}

/* Options for the manual-compaction tests: small tables, and a level 1 large enough that nothing but
 * kv_compact_range moves data below level 0 (no background threads, so no compaction runs behind the test's back). */
static void compact_test_options(kv_options *o) {
    small_options(o);
    o->background_threads = false;
    o->level1_bytes = 64ull << 20;
}

static void put_numbered(kv_db *db, int from, int to, const char *value) {
    char k[16];
    for (int i = from; i < to; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_put(db, k, strlen(k), value, strlen(value), 0));
    }
}

static void delete_numbered(kv_db *db, int from, int to) {
    char k[16];
    for (int i = from; i < to; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_delete(db, k, strlen(k), 0));
    }
}

/* The deepest level that holds files, -1 if none (-2 if the statistics fail). */
static int deepest_level(kv_db *db) {
    kv_stats st;
    if (kv_get_stats(db, &st)) return -2;
    int d = -1;
    for (int l = 0; l < KV_MAX_LEVELS; l++)
        if (st.level_files[l]) d = l;
    return d;
}

static uint64_t compaction_bytes(kv_db *db) {
    kv_stats st;
    if (kv_get_stats(db, &st)) return UINT64_MAX;
    return st.compaction_bytes_written;
}

/* A store in dir (t_tmpdir() when NULL) holding keys [0, n) with value, compacted into level 1: KV_OK or an error. */
static int open_compacted(const char *dir, kv_options *o, int n, const char *value, kv_db **db) {
    compact_test_options(o);
    int rc = kv_open(dir ? dir : t_tmpdir(), o, db);
    if (rc) return rc;
    put_numbered(*db, 0, n, value);
    rc = kv_compact_range(*db, NULL, 0, NULL, 0, NULL, NULL);
    if (!rc && deepest_level(*db) != 1) rc = kv_set_error(KV_EINVAL, "data at level %d", deepest_level(*db));
    return rc;
}

/* kv_compact_range merges everything into the deepest level that holds files: keys deleted after their data
 * reached it are gone, tombstones and all, after one call. */
TEST(test_db_compact_range_drops_deleted_keys_at_the_deepest_level) {
    kv_options o;
    kv_db *db;
    CHECK_OK(open_compacted(NULL, &o, 300, "value", &db));
    delete_numbered(db, 0, 300);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_EQ(deepest_level(db), -1); /* no files left in any level */
    kv_free(db);
}

/* The deepest level is written once per call, and data stays there: it used to go one level down per call, the
 * level it left written twice (merged into, then rewritten into the next). A compacted store is not rewritten. */
TEST(test_db_compact_range_writes_the_deepest_level_once) {
    kv_options o;
    kv_db *db;
    CHECK_OK(open_compacted(NULL, &o, 3000, "a value of some thirty bytes..", &db));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.level_files[1] >= 4, "%llu files in level 1", (unsigned long long)st.level_files[1]);
    uint64_t before = compaction_bytes(db);
    for (int i = 0; i < 3; i++) CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_EQ(deepest_level(db), 1);
    CHECK_MSG(compaction_bytes(db) == before, "a compacted store rewritten: %llu bytes",
              (unsigned long long)(compaction_bytes(db) - before));
    /* new versions of every key: level 0 merges into level 1 once, and nothing more */
    put_numbered(db, 0, 3000, "another value of thirty bytes.");
    before = compaction_bytes(db);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_EQ(deepest_level(db), 1);
    CHECK_OK(kv_get_stats(db, &st));
    uint64_t written = compaction_bytes(db) - before;
    CHECK_MSG(written <= st.level_bytes[1] + st.level_bytes[1] / 4, "%llu bytes written for a level of %llu",
              (unsigned long long)written, (unsigned long long)st.level_bytes[1]);
    CHECK_EQ(st.estimated_keys, 3000);
    char got[64];
    CHECK_OK(get_str(db, "k02999", got, sizeof got));
    CHECK_MEM(got, strlen(got), "another value of thirty bytes.", 30);
    kv_free(db);
}

/* Versions and tombstones that a snapshot kept when they reached the deepest level go at the next kv_compact_range
 * once the snapshot is released: that level is rewritten into itself (nothing below it could merge with it). They
 * used to stay for good. */
TEST(test_db_compact_range_rewrites_the_deepest_level_after_a_snapshot) {
    kv_options o;
    compact_test_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    char k[16];
    put_numbered(db, 0, 200, "old");
    kv_snapshot *snap;
    CHECK_OK(kv_snapshot_new(db, &snap));
    for (int i = 0; i < 200; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        if (i % 2) CHECK_OK(kv_put(db, k, strlen(k), "new", 3, 0));
        else CHECK_OK(kv_delete(db, k, strlen(k), 0));
    }
    kv_stats st;
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_EQ(deepest_level(db), 1);
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.estimated_keys, 400); /* the snapshot sees every old value */
    kv_snapshot_release(db, snap);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.estimated_keys == 100, "%llu entries after the snapshot's release and a compaction, 100 live",
              (unsigned long long)st.estimated_keys);
    for (int i = 0; i < 200; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        kv_buf v = {0};
        int rc = kv_get(db, NULL, k, strlen(k), &v);
        if (i % 2) {
            CHECK_OK(rc);
            CHECK_MEM(v.data, v.len, "new", 3);
        } else {
            CHECK_EQ(rc, KV_ENOTFOUND);
        }
        kv_buf_free(&v);
    }
    kv_free(db);
}

/* Only the deepest level's files that hold something to drop are rewritten, each run of neighbours as one: two
 * deleted stretches with untouched files between them give outputs that overlap none of those files. */
TEST(test_db_compact_range_rewrites_only_files_with_something_to_drop) {
    kv_options o;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_db *db;
    CHECK_OK(open_compacted(dir, &o, 4000, "a value of some thirty bytes..", &db));
    kv_snapshot *snap;
    CHECK_OK(kv_snapshot_new(db, &snap));
    delete_numbered(db, 500, 600);
    delete_numbered(db, 3000, 3100);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL)); /* the tombstones reach level 1, kept */
    kv_snapshot_release(db, snap);
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(deepest_level(db), 1);
    CHECK_EQ(st.estimated_keys, 4200);
    uint64_t level = st.level_bytes[1], before = compaction_bytes(db);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.estimated_keys, 3800);
    uint64_t written = compaction_bytes(db) - before;
    CHECK_MSG(written > 0 && written < level / 2, "%llu bytes rewritten of a level of %llu",
              (unsigned long long)written, (unsigned long long)level);
    uint64_t problems = 99;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems)); /* includes: level 1's files do not overlap */
    CHECK_EQ(problems, 0);
    char k[16], got[64];
    for (int i = 0; i < 4000; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        int rc = get_str(db, k, got, sizeof got);
        if ((i >= 500 && i < 600) || (i >= 3000 && i < 3100)) CHECK_EQ(rc, KV_ENOTFOUND);
        else CHECK_OK(rc);
    }
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db)); /* the manifest agrees */
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
}

/* kv_check beside a writer that patches paged values, overwrites large ones, compacts and collects blob garbage:
 * files appear, grow and go away during the check, and none of that is reported as damage. */
typedef struct busy_writer {
    kv_db *db;
    atomic_bool stop;
    atomic_int done;
    int errors;
} busy_writer;

static void *busy_writer_main(void *arg) {
    busy_writer *w = arg;
    kv_batch *b;
    if (kv_batch_new(&b)) return NULL;
    static uint8_t v[5000];
    uint64_t rs = 99;
    for (int i = 0; !atomic_load(&w->stop); i++) {
        char k[16];
        snprintf(k, sizeof k, "v%d", (int)(t_rand(&rs) % 8));
        kv_batch_clear(b);
        memset(v, 'a' + i % 26, sizeof v);
        int rc = i % 3 ? kv_batch_write_at(b, 0, k, strlen(k), t_rand(&rs) % 5000, v, 1 + t_rand(&rs) % 200)
                       : kv_batch_put(b, k, strlen(k), v, 1500 + t_rand(&rs) % 3000);
        if (!rc) rc = kv_write(w->db, b, 0, NULL);
        if (!rc && i % 50 == 49) rc = kv_compact_range(w->db, NULL, 0, NULL, 0, NULL, NULL);
        if (!rc && i % 70 == 69) rc = kv_blob_gc(w->db, 0.2);
        if (rc) w->errors++;
        atomic_store(&w->done, i + 1);
    }
    kv_batch_free(b);
    return NULL;
}

TEST(test_db_check_while_writing) {
    kv_options o;
    small_options(&o);
    o.blob_page_extents = BLOB_PAGE_EXTENTS_MIN;
    o.blob_file_bytes = BLOB_TEST_FILE; /* files rotate, and GC deletes them, while the checks run */
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    busy_writer w = {.db = db};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, busy_writer_main, &w) == 0);
    problem_log pl = {0};
    int checks = 0;
    for (; atomic_load(&w.done) < 3000 && checks < 100000 && pl.n == 0; checks++) {
        int rc = kv_check(db, log_problem, NULL, &pl, NULL);
        if (rc != KV_OK && rc != KV_ECORRUPT) break;
    }
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    printf("# %d checks beside %llu writes\n", checks, (unsigned long long)st.write_batches);
    CHECK_MSG(pl.n == 0, "check %d reported: %s", checks, pl.text);
    CHECK_EQ(w.errors, 0);
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
}

/* kv_check beside a new blob file: a file whose number was taken before the check began (next_file counts it) but that
 * its version did not list yet (being created: pending) is newer than the check too. The reference pass iterates the
 * live memtable, so it meets values written into that file after the check began, and by the time it looks, a newer
 * value and a GC pass may have deleted the file: that is no damage. It was reported as "a blob value names a blob file
 * that is missing" (test_db_check_while_writing failed so, now and then, on a loaded machine). The environment runs
 * the steps in that order: the writer's new blob file is held at its creation while the check takes its version;
 * released when the reference pass measures the first blob file (the writer's value then lands in the memtable ahead
 * of the iteration); and the overwrite and the GC pass that delete the new file run when the check looks for it. */
static struct {
    kv_db *db;
    atomic_int stage; /* 1: hold the next new blob file; 2: held; 3: released; 4: the writer's put returned */
    atomic_bool met, looked; /* the reference pass went on once the writer's put returned; it looked for the file */
    int writer_rc, gc_rc;
} nbf;

static int nbf_is_blob(const char *path) {
    size_t l = strlen(path);
    return l > 5 && strcmp(path + l - 5, ".blob") == 0;
}

static int nbf_open_write(kv_env *env, const char *path, kv_file **out) {
    int one = 1;
    if (nbf_is_blob(path) && atomic_compare_exchange_strong(&nbf.stage, &one, 2))
        for (int i = 0; i < 10000 && atomic_load(&nbf.stage) == 2; i++) usleep(1000);
    return kv_env_posix()->open_write(env, path, out);
}

static int nbf_file_size(kv_env *env, const char *path, uint64_t *size) {
    int two = 2;
    if (nbf_is_blob(path) && atomic_compare_exchange_strong(&nbf.stage, &two, 3))
    {
        for (int i = 0; i < 10000 && atomic_load(&nbf.stage) != 4; i++) usleep(1000);
        atomic_store(&nbf.met, atomic_load(&nbf.stage) == 4);
    }
    return kv_env_posix()->file_size(env, path, size);
}

static int nbf_exists(kv_env *env, const char *path) {
    if (nbf_is_blob(path) && atomic_load(&nbf.stage) == 4 && !atomic_exchange(&nbf.looked, true)) {
        int rc = kv_put(nbf.db, "k", 1, "small", 5, 0);
        if (!rc) rc = kv_blob_gc(nbf.db, 0.5);
        nbf.gc_rc = rc;
    }
    return kv_env_posix()->exists(env, path);
}

static void *nbf_writer(void *arg) {
    static uint8_t big[2 << 20];
    memset(big, 'k', sizeof big);
    nbf.writer_rc = kv_put(nbf.db, "k", 1, big, sizeof big, 0);
    atomic_store(&nbf.stage, 4);
    return arg;
}

TEST(test_db_check_beside_a_blob_file_being_created) {
    static kv_env env;
    env = *kv_env_posix();
    env.open_write = nbf_open_write;
    env.file_size = nbf_file_size;
    env.exists = nbf_exists;
    kv_options o;
    kv_options_init(&o);
    o.env = &env;
    o.background_threads = false;
    o.blob_threshold = 1024;
    o.blob_file_bytes = BLOB_CHUNK; /* a's value fills its file: k's goes to a new one */
    nbf.stage = 0;
    nbf.met = nbf.looked = false;
    nbf.gc_rc = KV_OK;
    CHECK_OK(kv_open(t_tmpdir(), &o, &nbf.db));
    static uint8_t v[100000];
    memset(v, 'a', sizeof v);
    CHECK_OK(kv_put(nbf.db, "a", 1, v, sizeof v, 0));
    atomic_store(&nbf.stage, 1);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, nbf_writer, NULL) == 0);
    for (int i = 0; i < 10000 && atomic_load(&nbf.stage) == 1; i++) usleep(1000);
    problem_log pl = {0};
    int rc = atomic_load(&nbf.stage) == 2 ? kv_check(nbf.db, log_problem, NULL, &pl, NULL) : KV_EINVAL;
    atomic_store(&nbf.stage, 4); /* whatever happened, the writer goes on */
    pthread_join(th, NULL);
    CHECK_OK(nbf.writer_rc);
    CHECK_MSG(atomic_load(&nbf.met), "the steps did not run in order");
    CHECK_OK(nbf.gc_rc); /* the check need not look for the new file; if it did, the GC pass ran then */
    CHECK_MSG(rc == KV_OK && pl.n == 0, "check: %s; %s", kv_strerror(rc), pl.text);
    char got[8];
    CHECK_OK(get_str(nbf.db, "k", got, sizeof got));
    CHECK(strcmp(got, atomic_load(&nbf.looked) ? "small" : "kkkkkkk") == 0);
    uint64_t problems = 1;
    CHECK_OK(kv_check(nbf.db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(nbf.db);
}

/* The *_nocopy builders: kv_write reads the caller's bytes, in plain batches (small puts straight to the log), in
 * batches that read current values (write_at) and for values that go to blob files; afterwards the caller's buffer
 * is the caller's again. */
TEST(test_db_nocopy_values) {
    kv_options o;
    small_options(&o); /* blob_threshold 1 KiB */
    kv_db *db;
    const char *dir = t_tmpdir();
    CHECK_OK(kv_open(dir, &o, &db));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    char small[100], big[5000], patch[300];
    memset(small, 's', sizeof small);
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 26);
    memset(patch, 'P', sizeof patch);
    /* a plain batch: copied and borrowed values side by side */
    CHECK_OK(kv_batch_put_nocopy(b, 0, "small", 5, small, sizeof small));
    CHECK_OK(kv_batch_put_ks(b, 0, "copied", 6, "c", 1));
    CHECK_OK(kv_batch_put_nocopy(b, 0, "empty", 5, NULL, 0));
    CHECK_EQ(kv_batch_put_nocopy(b, 0, "bad", 3, NULL, 1), KV_EINVAL);
    CHECK_EQ(kv_batch_count(b), 3);
    CHECK_OK(kv_write(db, b, 0, NULL));
    /* a blob-sized value, then a write_at into it */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_put_nocopy(b, 0, "big", 3, big, sizeof big));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_batch_clear(b);
    CHECK_OK(kv_batch_write_at_nocopy(b, 0, "big", 3, 1000, patch, sizeof patch));
    CHECK_OK(kv_batch_write_at_nocopy(b, 0, "small", 5, 90, patch, 20)); /* grows it to 110 bytes */
    CHECK_OK(kv_write(db, b, KV_SYNC, NULL));
    kv_batch_free(b);
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st)); /* borrowed values count as written by the user, like copied ones */
    CHECK(st.user_bytes_written >= sizeof small + 1 + sizeof big + sizeof patch + 20);
    CHECK(st.write_amplification < 10);
    char want_big[sizeof big], want_small[110];
    memcpy(want_big, big, sizeof big);
    memcpy(want_big + 1000, patch, sizeof patch);
    memcpy(want_small, small, 90);
    memset(want_small + 90, 'P', 20);
    /* the caller's buffers are free again: scribbling on them changes nothing stored */
    memset(small, 'x', sizeof small);
    memset(big, 'x', sizeof big);
    memset(patch, 'x', sizeof patch);
    for (int round = 0; round < 2; round++) {
        kv_buf v;
        CHECK_OK(kv_get(db, NULL, "big", 3, &v));
        CHECK_MEM(v.data, v.len, want_big, sizeof want_big);
        kv_buf_free(&v);
        CHECK_OK(kv_get(db, NULL, "small", 5, &v));
        CHECK_MEM(v.data, v.len, want_small, sizeof want_small);
        kv_buf_free(&v);
        CHECK_OK(kv_get(db, NULL, "empty", 5, &v));
        CHECK_EQ(v.len, 0);
        kv_buf_free(&v);
        kv_info info;
        CHECK_OK(kv_stat(db, NULL, "big", 3, &info));
        CHECK(info.external); /* it went to a blob file */
        kv_free(db); /* then the same from the log and blob files after a reopen */
        CHECK_OK(kv_open(dir, &o, &db));
    }
    kv_free(db);
}

TEST(test_db_stream) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    kv_stream *s;
    CHECK_OK(kv_stream_new(db, &s));
    uint8_t piece[1000];
    for (int i = 0; i < 300; i++) {
        memset(piece, i & 0xff, sizeof piece);
        CHECK_OK(kv_stream_append(s, piece, sizeof piece));
    }
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put_stream(b, 0, "big", 3, s));
    CHECK_OK(kv_write(db, b, KV_SYNC, NULL));
    CHECK_EQ(kv_stream_append(s, "x", 1), KV_EINVAL);
    kv_stream_free(s);
    kv_info info;
    CHECK_OK(kv_stat(db, NULL, "big", 3, &info));
    CHECK_EQ(info.size, 300000);
    CHECK(info.external);
    uint8_t rb[1000];
    size_t got;
    CHECK_OK(kv_read_range(db, NULL, "big", 3, 123000, rb, sizeof rb, &got));
    CHECK_EQ(got, 1000);
    CHECK(rb[0] == 123 && rb[999] == 123);
    /* moving a large value moves its reference */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_move(b, 0, "big", 3, 0, "moved", 5));
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_read_range(db, NULL, "moved", 5, 299000, rb, sizeof rb, &got));
    CHECK(got == 1000 && rb[0] == (299 & 0xff));
    kv_batch_free(b);
    kv_free(db);
}

typedef struct collect {
    char keys[64][16];
    int n;
} collect;

static int collect_cb(void *ctx, const void *k, size_t kl, const void *v, uint64_t vl) {
    (void)v;
    (void)vl;
    collect *c = ctx;
    if (c->n < 64 && kl < 16) {
        memcpy(c->keys[c->n], k, kl);
        c->keys[c->n][kl] = 0;
    }
    c->n++;
    return 0;
}

TEST(test_db_scans_and_prefixes) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    const char *keys[] = {"app", "apple", "apply", "banana", "band", "can"};
    for (int i = 0; i < 6; i++) CHECK_OK(kv_put(db, keys[i], strlen(keys[i]), "v", 1, 0));
    collect c = {0};
    CHECK_OK(kv_range_scan(db, NULL, "apple", 5, "band", 4, 0, true, collect_cb, &c));
    CHECK_EQ(c.n, 4);
    CHECK(strcmp(c.keys[0], "apple") == 0 && strcmp(c.keys[3], "band") == 0);
    c.n = 0;
    CHECK_OK(kv_range_scan(db, NULL, "apple", 5, "band", 4, 2, false, collect_cb, &c));
    CHECK_EQ(c.n, 2);
    CHECK(strcmp(c.keys[0], "band") == 0 && strcmp(c.keys[1], "banana") == 0);
    c.n = 0;
    CHECK_OK(kv_range_scan(db, NULL, NULL, 0, NULL, 0, 0, false, collect_cb, &c));
    CHECK_EQ(c.n, 6);
    CHECK(strcmp(c.keys[0], "can") == 0);
    c.n = 0;
    CHECK_OK(kv_prefix_scan(db, NULL, "app", 3, 0, false, collect_cb, &c));
    CHECK_EQ(c.n, 3);
    CHECK(strcmp(c.keys[0], "apply") == 0 && strcmp(c.keys[2], "app") == 0);
    kv_buf k1, k2;
    CHECK_EQ(kv_resolve_prefix(db, NULL, "ap", 2, &k1, &k2), KV_EAMBIGUOUS);
    CHECK_MEM(k1.data, k1.len, "app", 3);
    CHECK_MEM(k2.data, k2.len, "apple", 5);
    kv_buf_free(&k1);
    kv_buf_free(&k2);
    CHECK_OK(kv_resolve_prefix(db, NULL, "bana", 4, &k1, &k2));
    CHECK_MEM(k1.data, k1.len, "banana", 6);
    kv_buf_free(&k1);
    CHECK_EQ(kv_resolve_prefix(db, NULL, "zz", 2, &k1, NULL), KV_ENOTFOUND);
    size_t pl;
    CHECK_OK(kv_shortest_unique_prefix(db, NULL, "banana", 6, &pl));
    CHECK_EQ(pl, 4);
    CHECK_OK(kv_shortest_unique_prefix(db, NULL, "can", 3, &pl));
    CHECK_EQ(pl, 1);
    CHECK_EQ(kv_shortest_unique_prefix(db, NULL, "app", 3, &pl), KV_EAMBIGUOUS);
    CHECK_EQ(kv_shortest_unique_prefix(db, NULL, "nope", 4, &pl), KV_ENOTFOUND);
    kv_free(db);
}

TEST(test_db_batch_log) {
    kv_options o;
    small_options(&o);
    o.batch_log_max_batches = 50;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    for (int i = 0; i < 120; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%03d", i);
        kv_batch *b;
        CHECK_OK(kv_batch_new(&b));
        CHECK_OK(kv_batch_put(b, k, strlen(k), k, strlen(k)));
        if (i % 3 == 0) CHECK_OK(kv_batch_delete(b, "gone", 4));
        CHECK_OK(kv_write(db, b, 0, NULL));
        kv_batch_free(b);
    }
    uint64_t oldest;
    CHECK_OK(kv_oldest_retained_batch(db, &oldest));
    CHECK_EQ(oldest, 71);
    kv_logged_batch *lb;
    CHECK_EQ(kv_get_batch(db, 70, &lb), KV_EEVICTED);
    CHECK_EQ(kv_get_batch(db, 121, &lb), KV_ENOTFOUND);
    CHECK_OK(kv_get_batch(db, 100, &lb));
    CHECK_EQ(lb->sequence, 100);
    CHECK_EQ(lb->nops, 2); /* k099 and the delete of "gone" */
    kv_logged_batch_free(lb);
    CHECK_OK(kv_prune_batch_log(db, 90));
    CHECK_EQ(kv_get_batch(db, 89, &lb), KV_EEVICTED);
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_EQ(kv_get_batch(db, 89, &lb), KV_EEVICTED);
    CHECK_OK(kv_get_batch(db, 120, &lb));
    CHECK_MEM(lb->ops[0].key, lb->ops[0].klen, "k119", 4);
    kv_logged_batch_free(lb);
    kv_free(db);
    /* with retention off every sequence is evicted */
    small_options(&o);
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_EQ(kv_get_batch(db, 120, &lb), KV_EEVICTED);
    kv_free(db);
}

/* A store in dir with default options (*o), open, holding "a" = "1" (in its log). */
static bool open_store_with_a(const char *dir, kv_options *o, kv_db **db) {
    kv_options_init(o);
    if (kv_open(dir, o, db) != KV_OK) return false;
    return kv_put(*db, "a", 1, "1", 1, 0) == KV_OK;
}

/* A file in the store's directory whose name only starts like a log's ("000005.logx") is not the store's: kv_check
 * does not read it and a checkpoint does not copy it (both matched the first three letters of the extension). */
TEST(test_db_files_named_almost_like_logs_are_not_logs) {
    kv_options o;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK(open_store_with_a(dir, &o, &db));
    char log[64], stray[80], path[1500];
    CHECK(t_newest_file(dir, ".log", log, sizeof log));
    snprintf(stray, sizeof stray, "%sx", log); /* the live log's number: within what both would look at */
    snprintf(path, sizeof path, "%s/%s", dir, stray);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    const uint8_t junk[] = {1, 2, 3, 4, 4, 0, 0, 0, 'a', 'b', 'c', 'd', 'm', 'o', 'r', 'e'}; /* a bad record, more */
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    char dest[700];
    snprintf(dest, sizeof dest, "%s/copy", t_tmpdir());
    CHECK_OK(kv_checkpoint(db, dest, NULL, NULL));
    snprintf(path, sizeof path, "%s/%s", dest, stray);
    CHECK_MSG(access(path, F_OK) != 0, "the checkpoint copied %s", path);
    kv_free(db);
}

TEST(test_db_checkpoint_and_stats) {
    kv_options o;
    small_options(&o);
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    char k[32], v[64];
    for (int i = 0; i < 3000; i++) {
        snprintf(k, sizeof k, "key%06d", i);
        snprintf(v, sizeof v, "value-%d-%d", i, i * 7);
        CHECK_OK(kv_put(db, k, strlen(k), v, strlen(v), 0));
    }
    uint8_t large[5000];
    memset(large, 7, sizeof large);
    CHECK_OK(kv_put(db, "large", 5, large, sizeof large, 0));
    char dest[600];
    snprintf(dest, sizeof dest, "%s/copy", t_tmpdir());
    CHECK_OK(kv_checkpoint(db, dest, NULL, NULL));
    CHECK_OK(kv_put(db, "after", 5, "x", 1, 0));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK(st.last_sequence == 3002);
    CHECK(st.flushes > 0);
    CHECK(st.write_amplification > 0);
    CHECK(st.disk_bytes > 0);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.level_files[0], 0);
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
    /* the checkpoint opens as a store with exactly what was there at the time */
    kv_db *cp;
    CHECK_OK(kv_open(dest, &o, &cp));
    for (int i = 0; i < 3000; i += 97) {
        snprintf(k, sizeof k, "key%06d", i);
        snprintf(v, sizeof v, "value-%d-%d", i, i * 7);
        kv_buf b;
        CHECK_OK(kv_get(cp, NULL, k, strlen(k), &b));
        CHECK_MEM(b.data, b.len, v, strlen(v));
        kv_buf_free(&b);
    }
    kv_buf b;
    CHECK_OK(kv_get(cp, NULL, "large", 5, &b));
    CHECK_MEM(b.data, b.len, large, sizeof large);
    kv_buf_free(&b);
    CHECK_EQ(kv_get(cp, NULL, "after", 5, &b), KV_ENOTFOUND);
    kv_free(cp);
}

static int stop_at_first(void *ctx, uint64_t done, uint64_t total) {
    (void)ctx, (void)done, (void)total;
    return 1;
}

/* A checkpoint that fails (here: interrupted by its progress callback) takes away what it made: dest "must not
 * exist" (kv.h), and it was left, without its CURRENT but with the copies and links, so that a retry to the same dest
 * failed with KV_EEXIST and the copies kept their space (on a full disk, the space needed to go on). */
TEST(test_db_failed_checkpoint_leaves_no_dest) {
    const char *dir = t_tmpdir();
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    char key[16], dest[600];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "k%05d", i);
        CHECK_OK(kv_put(db, key, strlen(key), key, strlen(key), 0));
    }
    snprintf(dest, sizeof dest, "%s/../%s-cp", dir, strrchr(dir, '/') + 1);
    CHECK_EQ(kv_checkpoint(db, dest, stop_at_first, NULL), KV_EINTERRUPTED);
    struct stat st;
    CHECK_MSG(stat(dest, &st) != 0, "%s is left after a failed checkpoint", dest);
    CHECK_OK(kv_checkpoint(db, dest, NULL, NULL));
    kv_db *cp;
    CHECK_OK(kv_open(dest, &o, &cp));
    char got[16];
    CHECK_OK(get_str(cp, "k01999", got, sizeof got));
    kv_free(cp);
    kv_free(db);
    t_rmrf(dest);
}

/* The checkpoint syncs the directory that holds dest's entry, also when dest is spelled with a trailing slash: the
 * slash was taken for the last separator, and dest itself was synced again instead of its parent. */
static char cp_synced[8][600];
static int cp_nsynced;
static int record_sync_dir(kv_env *env, const char *path) {
    if (cp_nsynced < 8) snprintf(cp_synced[cp_nsynced++], sizeof cp_synced[0], "%s", path);
    return kv_env_posix()->sync_dir(env, path);
}

/* A store in a new directory, on env, holding a=1. */
static kv_db *open_with_a_on(kv_env *env, const char **dir) {
    *dir = t_tmpdir();
    kv_options o;
    kv_options_init(&o);
    o.env = env;
    kv_db *db = NULL;
    if (kv_open(*dir, &o, &db) == KV_OK && kv_put(db, "a", 1, "1", 1, 0) != KV_OK) {
        kv_free(db);
        db = NULL;
    }
    return db;
}

TEST(test_db_checkpoint_to_a_dest_with_a_trailing_slash_syncs_its_parent) {
    static kv_env env;
    env = *kv_env_posix();
    env.sync_dir = record_sync_dir;
    const char *dir;
    kv_db *db = open_with_a_on(&env, &dir);
    CHECK_MSG(db != NULL, "open: %s", kv_errmsg());
    if (!db) return;
    char parent[600], dest[700];
    snprintf(parent, sizeof parent, "%s/cps", dir);
    CHECK(mkdir(parent, 0700) == 0);
    snprintf(dest, sizeof dest, "%s/one//", parent);
    cp_nsynced = 0;
    CHECK_OK(kv_checkpoint(db, dest, NULL, NULL));
    bool parent_synced = false;
    for (int i = 0; i < cp_nsynced; i++) parent_synced |= strcmp(cp_synced[i], parent) == 0;
    CHECK_MSG(parent_synced, "synced %d directories, the last %s, not %s", cp_nsynced,
              cp_nsynced ? cp_synced[cp_nsynced - 1] : "-", parent);
    kv_free(db);
}

/* Another process makes dest between the checkpoint's test that dest is absent and its mkdir (the env's exists is
 * where it happens here): the checkpoint must say "already exists" and leave that process's directory alone (the
 * mkdir used to succeed on an existing directory, and a failed checkpoint cleans up what is in its dest). */
static char race_dest[700];
static int exists_then_made(kv_env *env, const char *path) {
    int rc = kv_env_posix()->exists(env, path);
    if (rc == 0 && strcmp(path, race_dest) == 0) {
        char file[800];
        snprintf(file, sizeof file, "%s/theirs", path);
        FILE *f = (mkdir(path, 0700) == 0) ? fopen(file, "w") : NULL;
        if (f) fclose(f);
    }
    return rc;
}

TEST(test_db_checkpoint_never_takes_a_dest_made_meanwhile) {
    static kv_env env;
    env = *kv_env_posix();
    env.exists = exists_then_made;
    const char *dir;
    kv_db *db = open_with_a_on(&env, &dir);
    CHECK_MSG(db != NULL, "open: %s", kv_errmsg());
    if (!db) return;
    snprintf(race_dest, sizeof race_dest, "%s/cp", dir);
    CHECK_EQ(kv_checkpoint(db, race_dest, NULL, NULL), KV_EEXIST);
    CHECK_MSG(strstr(kv_errmsg(), "already exists") != NULL, "message: %s", kv_errmsg());
    char file[800];
    snprintf(file, sizeof file, "%s/theirs", race_dest);
    struct stat st;
    CHECK_MSG(stat(file, &st) == 0, "the other process's file is gone");
    snprintf(file, sizeof file, "%s/CURRENT", race_dest);
    CHECK_MSG(stat(file, &st) != 0, "the checkpoint wrote into a directory it did not make");
    kv_free(db);
}

/* A log record whose checksum is right but which holds bytes after its last operation is malformed: the open
 * reports it with the log's name and the offset, instead of replaying what it can read. */
TEST(test_db_log_record_with_trailing_bytes) {
    kv_options o;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK(open_store_with_a(dir, &o, &db));
    kv_free(db);
    kv_env *env = kv_env_posix();
    char logname[64];
    CHECK(t_newest_file(dir, ".log", logname, sizeof logname));
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, logname);
    uint64_t end;
    CHECK(t_log_end(path, false, &end));
    /* batch record: fixed64 seq | varint ts | varint count | VALUE, ukey "\0b", payload "2" | 3 stray bytes */
    uint8_t rec[64];
    size_t len = 0;
    put_fixed64(rec, 1000);
    len = 8;
    rec[len++] = 0;             /* ts */
    rec[len++] = 1;             /* one operation */
    rec[len++] = KV_TYPE_VALUE;
    rec[len++] = 2;             /* ukey: keyspace 0, "b" */
    rec[len++] = 0;
    rec[len++] = 'b';
    rec[len++] = 1;             /* payload "2" */
    rec[len++] = '2';
    memcpy(rec + len, "xyz", 3);
    len += 3;
    wal_writer *w;
    CHECK_OK(wal_writer_reopen(env, path, end, &w));
    CHECK_OK(wal_append(w, rec, len));
    CHECK_OK(wal_sync(w));
    wal_writer_close(w);
    CHECK_EQ(kv_open(dir, &o, &db), KV_ECORRUPT);
    CHECK(strstr(kv_errmsg(), logname) != NULL);
    CHECK(strstr(kv_errmsg(), "bytes after its last operation") != NULL);
}

/* Checkpoints taken while a writer fills memtables that flush in the background (so logs are retired and deleted
 * during the copy): each one opens and holds every key acknowledged before it began. */
typedef struct cp_writer {
    kv_db *db;
    atomic_int acked; /* keys 0..acked-1 are written */
    atomic_bool stop;
    int rc;
} cp_writer;

static void *cp_writer_main(void *arg) {
    cp_writer *w = arg;
    char k[32], v[100];
    memset(v, 'v', sizeof v);
    for (int i = 0; !atomic_load(&w->stop) && i < 200000; i++) {
        snprintf(k, sizeof k, "w%08d", i);
        if ((w->rc = kv_put(w->db, k, strlen(k), v, sizeof v, 0)) != 0) break;
        atomic_store(&w->acked, i + 1);
    }
    return NULL;
}

TEST(test_db_checkpoint_while_flushing) {
    kv_options o;
    small_options(&o);
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    cp_writer w = {.db = db};
    atomic_init(&w.acked, 0);
    atomic_init(&w.stop, false);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, cp_writer_main, &w) == 0);
    int ok = 1;
    for (int round = 0; round < 20 && ok; round++) {
        while (atomic_load(&w.acked) < (round + 1) * 300) sched_yield();
        int acked = atomic_load(&w.acked);
        char dest[600];
        snprintf(dest, sizeof dest, "%s/cp%02d", t_tmpdir(), round);
        int rc = kv_checkpoint(db, dest, NULL, NULL);
        if (rc) {
            fprintf(stderr, "# round %d: %s\n", round, kv_errmsg());
            ok = 0;
            break;
        }
        kv_db *cp;
        if (kv_open(dest, &o, &cp)) { ok = 0; break; }
        for (int i = 0; i < acked && ok; i += 7) {
            char k[32];
            snprintf(k, sizeof k, "w%08d", i);
            if (kv_contains(cp, NULL, k, strlen(k)) != 1) {
                fprintf(stderr, "# round %d: key %s (of %d acknowledged) missing\n", round, k, acked);
                ok = 0;
            }
        }
        kv_free(cp);
    }
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);
    CHECK_OK(w.rc);
    CHECK(ok);
    kv_free(db);
}

/* ---- the randomized model test ------------------------------------------------------------------------------------ */

static void rand_key(uint64_t *rs, char *k, size_t *kl) {
    /* a small key space so that overwrites, deletes and shadowing are common */
    *kl = (size_t)snprintf(k, 32, "k%04u", (unsigned)(t_rand(rs) % 2000));
}

static int compare_all(kv_db *db, const kv_read_opts *ro, const model *m, uint64_t *rs) {
    kv_iter *it;
    if (kv_iter_new(db, ro, &it)) return -1;
    size_t i = 0;
    for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it), i++) {
        size_t kl;
        const void *k = kv_iter_key(it, &kl);
        const void *v;
        uint64_t vl;
        if (i >= m->n || model_keycmp(k, kl, m->e[i].key, m->e[i].klen) != 0) { kv_iter_free(it); return -2; }
        if (kv_iter_value(it, &v, &vl) || vl != m->e[i].vlen || memcmp(v, m->e[i].val, vl)) { kv_iter_free(it); return -3; }
    }
    if (i != m->n || kv_iter_status(it)) { kv_iter_free(it); return -4; }
    /* backward */
    i = m->n;
    for (kv_iter_seek_last(it); kv_iter_valid(it); kv_iter_prev(it)) {
        size_t kl;
        const void *k = kv_iter_key(it, &kl);
        if (i == 0 || model_keycmp(k, kl, m->e[i - 1].key, m->e[i - 1].klen) != 0) { kv_iter_free(it); return -5; }
        i--;
    }
    if (i != 0) { kv_iter_free(it); return -6; }
    /* random seeks with direction changes */
    for (int s = 0; s < 20; s++) {
        char k[32];
        size_t kl;
        rand_key(rs, k, &kl);
        size_t pos = model_lower(m, k, kl);
        kv_iter_seek(it, k, kl);
        for (int step = 0; step < 6; step++) {
            bool fwd = t_rand(rs) % 2;
            if (pos >= m->n) { if (kv_iter_valid(it)) { kv_iter_free(it); return -7; } break; }
            size_t ikl;
            const void *ik = kv_iter_key(it, &ikl);
            if (!kv_iter_valid(it) || model_keycmp(ik, ikl, m->e[pos].key, m->e[pos].klen) != 0) { kv_iter_free(it); return -8; }
            if (fwd) { kv_iter_next(it); pos++; }
            else {
                kv_iter_prev(it);
                if (pos == 0) { if (kv_iter_valid(it)) { kv_iter_free(it); return -9; } break; }
                pos--;
            }
        }
    }
    kv_iter_free(it);
    return 0;
}

/* write_at or truncate of key k on the store and on the model (an absent key reads as empty). */
static int model_change(kv_db *db, kv_batch *b, model *m, const char *k, size_t kl, uint64_t *rs) {
    static uint8_t buf[6000], patch[300];
    const model_entry *e = model_get(m, k, kl);
    size_t n = e ? e->vlen : 0;
    if (n) memcpy(buf, e->val, n);
    kv_batch_clear(b);
    int rc;
    if (t_rand(rs) % 4) {
        size_t off = (size_t)(t_rand(rs) % 5000), len = 1 + (size_t)(t_rand(rs) % sizeof patch);
        for (size_t j = 0; j < len; j++) patch[j] = (uint8_t)t_rand(rs);
        if (off > n) memset(buf + n, 0, off - n);
        memcpy(buf + off, patch, len);
        if (off + len > n) n = off + len;
        rc = kv_batch_write_at(b, 0, k, kl, off, patch, len);
    } else {
        size_t ns = (size_t)(t_rand(rs) % 5300);
        if (ns > n) memset(buf + n, 0, ns - n);
        n = ns;
        rc = kv_batch_truncate(b, 0, k, kl, ns);
    }
    if (!rc) rc = kv_write(db, b, 0, NULL);
    if (!rc) model_put(m, k, kl, buf, n);
    return rc;
}

static void run_model(int steps, bool background) {
    kv_options o;
    small_options(&o);
    o.background_threads = background;
    o.blob_page_extents = BLOB_PAGE_EXTENTS_MIN; /* the few keys that model_change keeps patching get paged */
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    model m = {0};
    uint64_t rs = t_seed() ^ (background ? 0x1234 : 0);
    kv_snapshot *snap = NULL;
    model snap_model = {0};
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    for (int step = 0; step < steps; step++) {
        int op = (int)(t_rand(&rs) % 100);
        char k[32], v[300];
        size_t kl;
        rand_key(&rs, k, &kl);
        if (op < 50) {
            size_t vl = t_rand(&rs) % 40 == 0 ? 1500 + t_rand(&rs) % 1000 : t_rand(&rs) % 100; /* some are blobs */
            if (vl > sizeof v) {
                char *bigv = malloc(vl);
                for (size_t j = 0; j < vl; j++) bigv[j] = (char)('a' + (step + j) % 26);
                CHECK_OK(kv_put(db, k, kl, bigv, vl, 0));
                model_put(&m, k, kl, bigv, vl);
                free(bigv);
            } else {
                for (size_t j = 0; j < vl; j++) v[j] = (char)t_rand(&rs);
                CHECK_OK(kv_put(db, k, kl, v, vl, 0));
                model_put(&m, k, kl, v, vl);
            }
        } else if (op < 70) {
            CHECK_OK(kv_delete(db, k, kl, 0));
            model_del(&m, k, kl);
        } else if (op < 80) {
            kv_batch_clear(b);
            int n = 1 + (int)(t_rand(&rs) % 10);
            for (int j = 0; j < n; j++) {
                rand_key(&rs, k, &kl);
                if (t_rand(&rs) % 3) {
                    snprintf(v, sizeof v, "b%d-%d", step, j);
                    CHECK_OK(kv_batch_put(b, k, kl, v, strlen(v)));
                    model_put(&m, k, kl, v, strlen(v));
                } else {
                    CHECK_OK(kv_batch_delete(b, k, kl));
                    model_del(&m, k, kl);
                }
            }
            CHECK_OK(kv_write(db, b, 0, NULL));
        } else if (op < 90) {
            kv_buf got;
            const model_entry *e = model_get(&m, k, kl);
            int rc = kv_get(db, NULL, k, kl, &got);
            if (e) {
                CHECK_MSG(rc == KV_OK, "step %d: get %s: %s", step, k, kv_strerror(rc));
                CHECK_MEM(got.data, got.len, e->val, e->vlen);
                kv_buf_free(&got);
            } else {
                CHECK_MSG(rc == KV_ENOTFOUND, "step %d: get %s: expected absent, got %d", step, k, rc);
            }
        } else if (op < 93) {
            if (snap) {
                kv_read_opts ro = {.snapshot = snap};
                int r = compare_all(db, &ro, &snap_model, &rs);
                CHECK_MSG(r == 0, "step %d: snapshot view differs (%d)", step, r);
                kv_snapshot_release(db, snap);
                model_free(&snap_model);
                snap = NULL;
            } else {
                CHECK_OK(kv_snapshot_new(db, &snap));
                snap_model = model_copy(&m);
            }
        } else if (op < 96) {
            int r = compare_all(db, NULL, &m, &rs);
            CHECK_MSG(r == 0, "step %d: iteration differs from the model (%d)", step, r);
        } else if (op < 97) {
            /* reopen */
            if (snap) {
                kv_snapshot_release(db, snap);
                model_free(&snap_model);
                snap = NULL;
            }
            kv_free(db);
            CHECK_OK(kv_open(dir, &o, &db));
        } else if (op < 99) {
            /* write_at and truncate, mostly on a few keys, so that large values fragment */
            if (t_rand(&rs) % 4) kl = (size_t)snprintf(k, sizeof k, "p%u", (unsigned)(t_rand(&rs) % 6));
            CHECK_OK(model_change(db, b, &m, k, kl, &rs));
        } else if (t_rand(&rs) % 4 == 0) {
            CHECK_OK(kv_blob_gc(db, 0.3));
        }
    }
    int r = compare_all(db, NULL, &m, &rs);
    CHECK_MSG(r == 0, "final iteration differs from the model (%d)", r);
    uint64_t problems = 0;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    if (snap) {
        kv_snapshot_release(db, snap);
        model_free(&snap_model);
    }
    kv_batch_free(b);
    kv_free(db);
    model_free(&m);
}

TEST(test_db_model_inline) { run_model(getenv("KVFS_MODEL_STEPS") ? atoi(getenv("KVFS_MODEL_STEPS")) : 20000, false); }
TEST(test_db_model_background) { run_model(getenv("KVFS_MODEL_STEPS") ? atoi(getenv("KVFS_MODEL_STEPS")) : 20000, true); }

/* ---- concurrency ---------------------------------------------------------------------------------------------------- */

typedef struct worker {
    kv_db *db;
    int id, n;
    int errors;
} worker;

static void *writer_main(void *arg) {
    worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "w%d-%05d", w->id, i);
        snprintf(v, sizeof v, "%d", i);
        if (kv_put(w->db, k, strlen(k), v, strlen(v), i % 50 == 0 ? KV_SYNC : 0)) w->errors++;
        kv_buf b;
        if (kv_get(w->db, NULL, k, strlen(k), &b)) w->errors++;
        else kv_buf_free(&b);
    }
    return NULL;
}

TEST(test_db_concurrent_writers) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    pthread_t th[8];
    worker ws[8];
    for (int i = 0; i < 8; i++) {
        ws[i] = (worker){db, i, 1500, 0};
        pthread_create(&th[i], NULL, writer_main, &ws[i]);
    }
    for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 8; i++) CHECK_EQ(ws[i].errors, 0);
    CHECK_EQ(kv_current_sequence(db), 8 * 1500);
    kv_iter *it;
    CHECK_OK(kv_iter_new(db, NULL, &it));
    int n = 0;
    for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) n++;
    kv_iter_free(it);
    CHECK_EQ(n, 8 * 1500);
    kv_free(db);
}

static void *closer_victim(void *arg) {
    worker *w = arg;
    for (int i = 0; i < 100000; i++) {
        char k[32];
        snprintf(k, sizeof k, "c%d-%d", w->id, i);
        int rc = kv_put(w->db, k, strlen(k), "v", 1, 0);
        if (rc == KV_ECLOSED) return NULL;
        if (rc) w->errors++;
    }
    return NULL;
}

TEST(test_db_close_while_writing) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    pthread_t th[4];
    worker ws[4];
    for (int i = 0; i < 4; i++) {
        ws[i] = (worker){db, i, 0, 0};
        pthread_create(&th[i], NULL, closer_victim, &ws[i]);
    }
    usleep(50000);
    CHECK_OK(kv_close(db));
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) CHECK_EQ(ws[i].errors, 0);
    kv_free(db);
}

/* Without background threads, flushes and compactions run in the calling thread: in the write leader (make_room)
 * and in kv_compact_range (which flushes, then compacts). Two threads doing that at once must not run two
 * compactions over the same files (their outputs would overlap in a level, holding stale versions), nor flush
 * the same memtable twice. */
typedef struct inline_writer {
    kv_db *db;
    model m;
    atomic_bool done;
    int errors;
} inline_writer;

static void *inline_writer_main(void *arg) {
    inline_writer *w = arg;
    uint64_t rs = t_seed() ^ 0x1a1a;
    char k[32], v[200];
    for (int i = 0; i < 30000; i++) {
        size_t kl = (size_t)snprintf(k, sizeof k, "w%04u", (unsigned)(t_rand(&rs) % 3000));
        if (t_rand(&rs) % 4 == 0) {
            if (kv_delete(w->db, k, kl, 0)) w->errors++;
            model_del(&w->m, k, kl);
        } else {
            int n = snprintf(v, sizeof v, "%d:", i);
            memset(v + n, 'a' + i % 26, sizeof v - (size_t)n);
            if (kv_put(w->db, k, kl, v, sizeof v, 0)) w->errors++;
            model_put(&w->m, k, kl, v, sizeof v);
        }
    }
    atomic_store(&w->done, true);
    return NULL;
}

/* Watches the current version while the others work: in every level >= 1 the files must be sorted and disjoint
 * (a second compaction over files another one is rewriting adds its outputs beside the other's, overlapping). */
typedef struct level_watch {
    kv_db *db;
    atomic_bool stop;
    int overlaps;
} level_watch;

static void *level_watch_main(void *arg) {
    level_watch *lw = arg;
    while (!atomic_load(&lw->stop)) {
        pthread_mutex_lock(&lw->db->mu);
        version *v = lw->db->vs->current;
        for (int l = 1; l < KV_MAX_LEVELS; l++)
            for (size_t i = 1; i < v->nfiles[l]; i++) {
                const file_meta *a = v->files[l][i - 1], *b = v->files[l][i];
                if (ukey_cmp(a->largest.data, a->largest.len - 8, b->smallest.data, b->smallest.len - 8) >= 0)
                    lw->overlaps++;
            }
        pthread_mutex_unlock(&lw->db->mu);
        sched_yield();
    }
    return NULL;
}

TEST(test_db_inline_compaction_excludes_manual_compaction) {
    kv_options o;
    small_options(&o);
    o.background_threads = false;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    inline_writer w = {.db = db};
    level_watch lw = {.db = db};
    pthread_t th, wt;
    pthread_create(&th, NULL, inline_writer_main, &w);
    pthread_create(&wt, NULL, level_watch_main, &lw);
    while (!atomic_load(&w.done))
        if (kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL)) w.errors++;
    pthread_join(th, NULL);
    atomic_store(&lw.stop, true);
    pthread_join(wt, NULL);
    CHECK_EQ(w.errors, 0);
    CHECK_MSG(lw.overlaps == 0, "files of a level overlapped %d times", lw.overlaps);
    uint64_t rs = 1;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < 3000; i++) {
            char k[32];
            size_t kl = (size_t)snprintf(k, sizeof k, "w%04u", (unsigned)i);
            const model_entry *e = model_get(&w.m, k, kl);
            kv_buf b;
            int rc = kv_get(db, NULL, k, kl, &b);
            CHECK_MSG(rc == (e ? KV_OK : KV_ENOTFOUND), "pass %d: get %s: %s", pass, k, kv_strerror(rc));
            if (e) {
                CHECK_MEM(b.data, b.len, e->val, e->vlen);
                kv_buf_free(&b);
            }
        }
        int r = compare_all(db, NULL, &w.m, &rs);
        CHECK_MSG(r == 0, "pass %d: iteration differs from the model (%d)", pass, r);
        uint64_t problems = 0;
        CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
        kv_free(db);
        CHECK_OK(kv_open(dir, &o, &db));
    }
    kv_free(db);
    model_free(&w.m);
}

/* A get that finds a large value reads it from its blob file after the lookup. Meanwhile the key may be
 * overwritten, the old entry compacted away and the blob file collected: the get must still read the value it
 * found (or fail for a real reason), not report a missing blob file. The environment runs those steps at the moment
 * the get opens the blob file. */
static kv_db *race_db;
static atomic_int race_armed;
static int race_rc;

static int race_open_read(kv_env *env, const char *path, kv_file **out) {
    size_t l = strlen(path);
    if (l > 5 && strcmp(path + l - 5, ".blob") == 0 && atomic_exchange(&race_armed, 0)) {
        int rc = kv_put(race_db, "victim", 6, "small", 5, 0);
        if (!rc) rc = kv_compact_range(race_db, NULL, 0, NULL, 0, NULL, NULL);
        if (!rc) rc = kv_blob_gc(race_db, 0.5);
        race_rc = rc;
    }
    return kv_env_posix()->open_read(env, path, out);
}

TEST(test_db_get_of_a_large_value_outlives_its_blob_file_collection) {
    static kv_env env;
    env = *kv_env_posix();
    env.open_read = race_open_read;
    kv_options o;
    small_options(&o);
    o.env = &env;
    o.blob_file_bytes = BLOB_CHUNK; /* the victim's value fills its blob file: a later one is written elsewhere */
    const char *dir = t_tmpdir();
    CHECK_OK(kv_open(dir, &o, &race_db));
    static uint8_t big[70000];
    memset(big, 'x', sizeof big);
    CHECK_OK(kv_put(race_db, "victim", 6, big, sizeof big, 0));
    memset(big, 'y', sizeof big);
    CHECK_OK(kv_put(race_db, "other", 5, big, sizeof big, 0));
    kv_free(race_db); /* reopen: no blob file is open, so the get opens the victim's */
    CHECK_OK(kv_open(dir, &o, &race_db));
    atomic_store(&race_armed, 1);
    kv_buf b;
    int rc = kv_get(race_db, NULL, "victim", 6, &b);
    CHECK_OK(race_rc);
    CHECK_EQ(atomic_load(&race_armed), 0); /* the steps ran inside the get */
    CHECK_MSG(rc == KV_OK, "get: %s (%s)", kv_strerror(rc), kv_errmsg());
    memset(big, 'x', sizeof big);
    CHECK_MEM(b.data, b.len, big, sizeof big); /* the value the lookup found */
    kv_buf_free(&b);
    CHECK_OK(kv_get(race_db, NULL, "victim", 6, &b));
    CHECK_MEM(b.data, b.len, "small", 5);
    kv_buf_free(&b);
    kv_free(race_db);
}

TEST(test_db_blob_gc) {
    kv_options o;
    small_options(&o);
    o.blob_file_bytes = BLOB_TEST_FILE;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    static uint8_t v[3000];
    /* many versions of a few large values: most blob bytes become garbage */
    for (int round = 0; round < 20; round++)
        for (int k = 0; k < 10; k++) {
            char key[16];
            snprintf(key, sizeof key, "big%d", k);
            memset(v, round * 10 + k, sizeof v);
            CHECK_OK(kv_put(db, key, strlen(key), v, sizeof v, 0));
        }
    CHECK_OK(kv_delete(db, "big9", 4, 0));
    kv_stats before, after;
    CHECK_OK(kv_get_stats(db, &before));
    CHECK(before.blob_files > 3);
    /* rewrite mostly-garbage files, then (once compaction dropped the old versions) delete unreferenced ones */
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_OK(kv_get_stats(db, &after));
    CHECK_MSG(after.blob_bytes < before.blob_bytes / 2, "blob bytes %llu -> %llu", (unsigned long long)before.blob_bytes,
              (unsigned long long)after.blob_bytes);
    for (int k = 0; k < 9; k++) {
        char key[16];
        snprintf(key, sizeof key, "big%d", k);
        memset(v, 19 * 10 + k, sizeof v);
        kv_buf b;
        CHECK_OK(kv_get(db, NULL, key, strlen(key), &b));
        CHECK_MEM(b.data, b.len, v, sizeof v);
        kv_buf_free(&b);
    }
    uint64_t problems = 0;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    kv_buf b;
    CHECK_OK(kv_get(db, NULL, "big3", 4, &b));
    CHECK_EQ(b.len, sizeof v);
    kv_buf_free(&b);
    kv_free(db);
}

/* kv_blob_gc's min_ratio is a share, 0 .. 1, as kv_options.blob_gc_ratio is (kv_open refuses others): anything else
 * is KV_EINVAL. It was taken silently: a negative one or NaN acted as 0 (NaN compares false), one above 1 copied
 * nothing out. */
TEST(test_db_blob_gc_ratio_out_of_range_is_refused) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 0)) return;
    static uint8_t v[3000];
    memset(v, 'v', sizeof v);
    CHECK_OK(kv_put(db, "big", 3, v, sizeof v, 0));
    kv_stats before, after;
    CHECK_OK(kv_get_stats(db, &before));
    static const double bad[] = {-1.0, -0.001, 1.001, 2.0};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_EQ(kv_blob_gc(db, bad[i]), KV_EINVAL);
        CHECK(strstr(kv_errmsg(), "min_ratio") != NULL);
    }
    volatile double zero = 0.0;
    CHECK_EQ(kv_blob_gc(db, zero / zero), KV_EINVAL);
    CHECK_OK(kv_blob_gc(db, 0.0));
    CHECK_OK(kv_blob_gc(db, 1.0));
    CHECK_OK(kv_get_stats(db, &after));
    CHECK_EQ(after.blob_bytes_written, before.blob_bytes_written); /* a live value is not copied */
    kv_buf b;
    CHECK_OK(kv_get(db, NULL, "big", 3, &b));
    CHECK_MEM(b.data, b.len, v, sizeof v);
    kv_buf_free(&b);
    kv_free(db);
}

TEST(test_db_lost_current_is_not_a_new_store) {
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, NULL, &db));
    CHECK_OK(kv_put(db, "precious", 8, "data", 4, KV_SYNC));
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    kv_free(db);
    char path[600];
    snprintf(path, sizeof path, "%s/CURRENT", dir);
    CHECK(remove(path) == 0);
    CHECK_EQ(kv_open(dir, NULL, &db), KV_ECORRUPT);
    CHECK(strstr(kv_errmsg(), "CURRENT is missing") != NULL);
}

static void *synced_writer(void *arg) {
    worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        char k[32];
        snprintf(k, sizeof k, "s%d-%05d", w->id, i);
        if (kv_put(w->db, k, strlen(k), "v", 1, KV_SYNC)) w->errors++;
    }
    return NULL;
}

/* A disk whose fsync takes 5 ms: while the leader waits on it, the other writers have long queued, even on a machine
 * busy enough to run them late, so a group that carries one batch means the gather is broken, not the scheduler. */
static int slow_sync(kv_env *env, kv_file *f) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
    return kv_env_posix()->sync(env, f);
}

TEST(test_db_group_commit_shares_fsyncs) {
    /* Eight writers waiting on fsyncs: each fsync must carry several of them. Up to three rounds, each on a fresh
     * store, and one must show it; every round must write every batch without error. */
    static kv_env env;
    env = *kv_env_posix();
    env.sync = slow_sync;
    kv_options o;
    kv_options_init(&o);
    o.env = &env;
    unsigned long long groups[3] = {0}, batches[3] = {0};
    bool shared = false;
    for (int round = 0; round < 3 && !shared; round++) {
        kv_db *db;
        CHECK_OK(kv_open(t_tmpdir(), &o, &db));
        pthread_t th[8];
        worker ws[8];
        for (int i = 0; i < 8; i++) {
            ws[i] = (worker){db, i, 60, 0};
            pthread_create(&th[i], NULL, synced_writer, &ws[i]);
        }
        for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < 8; i++) CHECK_EQ(ws[i].errors, 0);
        kv_stats st;
        CHECK_OK(kv_get_stats(db, &st));
        CHECK_EQ(st.write_batches, 8 * 60);
        groups[round] = st.synced_groups;
        batches[round] = st.write_batches;
        shared = st.synced_groups * 4 < st.write_batches;
        kv_free(db);
    }
    CHECK_MSG(shared, "synced groups for their batches in three rounds: %llu/%llu, %llu/%llu, %llu/%llu", groups[0],
              batches[0], groups[1], batches[1], groups[2], batches[2]);
}

TEST(test_db_iteration_bounds) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    char k[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_put(db, k, strlen(k), "v", 1, 0));
    }
    /* delete a long run: a bounded scan before it must not step over it */
    for (int i = 500; i < 1900; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_delete(db, k, strlen(k), 0));
    }
    kv_read_opts ro = {.lower_bound = "k00100", .lower_len = 6, .upper_bound = "k00200", .upper_len = 6};
    kv_iter *it;
    CHECK_OK(kv_iter_new(db, &ro, &it));
    int n = 0;
    for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) n++;
    CHECK_EQ(n, 100);
    n = 0;
    for (kv_iter_seek_last(it); kv_iter_valid(it); kv_iter_prev(it)) n++;
    CHECK_EQ(n, 100);
    kv_iter_seek(it, "a", 1); /* below the lower bound: the first key in range */
    size_t kl;
    const void *key = kv_iter_key(it, &kl);
    CHECK_MEM(key, kl, "k00100", 6);
    kv_iter_seek_for_prev(it, "z", 1); /* past the upper bound: the last key in range */
    key = kv_iter_key(it, &kl);
    CHECK_MEM(key, kl, "k00199", 6);
    kv_iter_seek(it, "k00200", 6);
    CHECK(!kv_iter_valid(it));
    kv_iter_free(it);
    /* the value and its info from one lookup */
    kv_buf v;
    kv_info info;
    CHECK_OK(kv_get_with_info(db, NULL, "k00001", 6, &v, &info));
    CHECK_EQ(info.size, 1);
    CHECK(info.timestamp_ms > 0 && info.sequence == 2);
    kv_buf_free(&v);
    CHECK_EQ(kv_get_with_info(db, NULL, "k00600", 6, &v, &info), KV_ENOTFOUND);
    kv_free(db);
}

/* Files of dir whose names start with prefix and end with ext. */
static int count_named(const char *dir, const char *prefix, const char *ext) {
    char **names;
    size_t n;
    if (kv_env_posix()->list_dir(kv_env_posix(), dir, &names, &n)) return -1;
    int c = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(names[i]), e = strlen(ext);
        if (l >= e && strcmp(names[i] + l - e, ext) == 0 && strncmp(names[i], prefix, strlen(prefix)) == 0) c++;
    }
    kv_env_free_names(names, n);
    return c;
}

static int count_files(const char *dir, const char *ext) { return count_named(dir, "", ext); }

static void print_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    (void)ctx;
    printf("# problem: %s at %llu: %s\n", file, (unsigned long long)off, what);
}

static void put_in_own_open(const char *dir, const kv_options *o, const char *k) {
    kv_db *db;
    CHECK_OK(kv_open(dir, o, &db));
    CHECK_OK(kv_put(db, k, strlen(k), k, strlen(k), 0));
    kv_free(db);
}

/* A store opened for one write at a time, as by one `kvfs put` each, must not collect files per open. Each open
 * flushes a one-key table (the log's batch) and used to start a batch-log file: 120 opens left 120 BATCHLOG files,
 * about 11 level-0 tables (each compaction took the oldest, overlapping none of the others) and about 110 level-1
 * tables of one key (each moved down on its own). */
TEST(test_db_one_write_per_open_collects_no_files) {
    kv_options o;
    kv_options_init(&o);
    o.batch_log_max_batches = 1000;
    const char *dir = t_tmpdir();
    char k[16];
    for (int i = 0; i < 120; i++) {
        snprintf(k, sizeof k, "k%03d", i * 37 % 120); /* an order in which most new keys fall between two old ones */
        put_in_own_open(dir, &o, k);
    }
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.level_files[0] <= 4 && st.level_files[1] <= 2, "%llu level-0 and %llu level-1 tables",
              (unsigned long long)st.level_files[0], (unsigned long long)st.level_files[1]);
    CHECK_EQ(count_named(dir, "BATCHLOG-", ""), 1);
    for (int i = 0; i < 120; i++) {
        char got[16];
        snprintf(k, sizeof k, "k%03d", i * 37 % 120);
        CHECK_OK(get_str(db, k, got, sizeof got));
        CHECK_MEM(got, strlen(got), k, strlen(k));
        kv_logged_batch *lb;
        CHECK_OK(kv_get_batch(db, (uint64_t)i + 1, &lb));
        CHECK_MEM(lb->ops[0].key, lb->ops[0].klen, k, strlen(k));
        kv_logged_batch_free(lb);
    }
    kv_free(db);
}

/* The compaction an open runs is the background's to retry when it fails: the open succeeds, and does not leave the
 * compaction's error as the thread's message (a caller reading it after the open took it for the open's). */
TEST(test_db_open_whose_compaction_fails_succeeds_with_its_message) {
    kv_options o;
    kv_options_init(&o);
    o.l0_compaction_trigger = 2;
    kv_env *env = kv_fault_env_new(kv_env_posix());
    o.env = env;
    const char *dir = t_tmpdir();
    put_in_own_open(dir, &o, "a");
    put_in_own_open(dir, &o, "b"); /* flushes a's log: one level-0 table */
    /* the next open flushes b's log (one table fsync), which makes level 0 due; the compaction's fsync fails */
    kv_fault_env_arm(env, KV_FAULT_SYNC_EIO, 1, ".sst");
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_MSG(strstr(kv_errmsg(), "injected") == NULL, "message: %s", kv_errmsg());
    kv_fault_env_clear(env);
    char got[8];
    CHECK_OK(get_str(db, "a", got, sizeof got));
    CHECK_OK(get_str(db, "b", got, sizeof got));
    kv_free(db);
    env->destroy(env);
}

/* "Small" counts every input of a compaction, not only level 0's: one-key level-0 tables whose keys lie at both ends
 * of a large level 1 overlap all of it. Taking every level-0 file then took every level-1 table too, and the open
 * that found level 0 due rewrote all of level 1 before returning (every fourth `kvfs put`; 32 MiB by default). */
TEST(test_db_open_compacts_only_small_inputs) {
    kv_options o;
    kv_options_init(&o);
    o.table_bytes = 16 << 10; /* small inputs: up to 8 KiB */
    o.level1_bytes = 4 << 20; /* level 1 is never due here */
    o.compression = false;
    o.background_threads = false; /* the stats after kv_open count the open's compactions only */
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    char k[16], v[1000];
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 300; i++) { /* about 300 KiB: some 19 level-1 tables */
        snprintf(k, sizeof k, "m%04d", i);
        for (size_t j = 0; j < sizeof v; j++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            v[j] = (char)x;
        }
        CHECK_OK(kv_put(db, k, strlen(k), v, sizeof v, 0));
    }
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK(st.level_files[0] == 0 && st.level_files[1] > 10 && st.level_files[2] == 0);
    kv_free(db);
    const char *keys[] = {"a", "z", "m0150x"}; /* before level 1, after it, and inside one of its tables */
    for (int i = 0; i < 12; i++) {
        CHECK_OK(kv_open(dir, &o, &db));
        CHECK_OK(kv_get_stats(db, &st));
        CHECK_MSG(st.compaction_bytes_read <= o.table_bytes / 2, "open %d read %llu bytes to compact", i,
                  (unsigned long long)st.compaction_bytes_read);
        CHECK_OK(kv_put(db, keys[i % 3], strlen(keys[i % 3]), "x", 1, 0));
        kv_free(db);
        if (t_failed()) return;
    }
    CHECK_OK(kv_open(dir, &o, &db));
    for (int i = 0; i < 300; i += 7) {
        char got[1000];
        snprintf(k, sizeof k, "m%04d", i);
        kv_buf b = {0};
        CHECK_OK(kv_get(db, NULL, k, strlen(k), &b));
        CHECK_EQ(b.len, sizeof got);
        kv_buf_free(&b);
    }
    for (int i = 0; i < 3; i++) {
        char got[16];
        CHECK_OK(get_str(db, keys[i], got, sizeof got));
        CHECK_MEM(got, strlen(got), "x", 1);
    }
    kv_free(db);
}

/* The first append after an open continues the newest batch-log file only when it ended cleanly: a torn tail (a
 * crash mid-append) stays where it is, and the batches go to a new file, whole. */
TEST(test_db_batch_log_starts_a_new_file_after_a_torn_tail) {
    kv_options o;
    kv_options_init(&o);
    o.batch_log_max_batches = 1000;
    const char *dir = t_tmpdir();
    put_in_own_open(dir, &o, "a");
    put_in_own_open(dir, &o, "b");
    CHECK_EQ(count_named(dir, "BATCHLOG-", ""), 1);
    char path[4096];
    snprintf(path, sizeof path, "%s/BATCHLOG-000001", dir);
    FILE *f = fopen(path, "ab");
    CHECK(f != NULL);
    CHECK_EQ(fwrite("\x21\x07\x00", 1, 3, f), 3); /* a record header cut short */
    fclose(f);
    put_in_own_open(dir, &o, "c");
    CHECK_EQ(count_named(dir, "BATCHLOG-", ""), 2);
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    const char *keys[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        kv_logged_batch *lb;
        CHECK_OK(kv_get_batch(db, (uint64_t)i + 1, &lb));
        CHECK_MEM(lb->ops[0].key, lb->ops[0].klen, keys[i], 1);
        kv_logged_batch_free(lb);
    }
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, print_problem, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
}


/* Retention by bytes drops whole files, never the one being written: with 4 MiB files, a 1 MiB limit (what the mount
 * sets on a 32 MiB disk) kept up to 5 MiB of batch log. Files are now a quarter of the limit. */
static uint64_t named_bytes(const char *dir, const char *prefix) {
    char **names;
    size_t n;
    uint64_t total = 0;
    kv_env *env = kv_env_posix();
    if (env->list_dir(env, dir, &names, &n)) return UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        uint64_t size;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (strncmp(names[i], prefix, strlen(prefix)) == 0 && env->file_size(env, path, &size) == KV_OK) total += size;
    }
    kv_env_free_names(names, n);
    return total;
}

TEST(test_db_batch_log_keeps_near_its_byte_limit) {
    kv_options o;
    kv_options_init(&o);
    o.batch_log_max_bytes = 1u << 20;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    static uint8_t v[2000];
    char k[32];
    uint64_t most = 0;
    for (int i = 0; i < 3000; i++) { /* 6 MB of batches */
        memset(v, 'a' + i % 26, sizeof v);
        snprintf(k, sizeof k, "k%06d", i);
        CHECK_OK(kv_put(db, k, strlen(k), v, sizeof v, 0));
        uint64_t b = i % 50 == 0 ? named_bytes(dir, "BATCHLOG-") : 0;
        if (b > most) most = b;
    }
    printf("# at most %llu bytes of batch log for a 1 MiB limit\n", (unsigned long long)most);
    CHECK_MSG(most <= (1u << 20) + (300u << 10), "%llu bytes of batch log", (unsigned long long)most);
    /* what is kept is readable */
    uint64_t oldest = 0;
    CHECK_OK(kv_oldest_retained_batch(db, &oldest));
    kv_logged_batch *lb;
    CHECK_OK(kv_get_batch(db, kv_current_sequence(db), &lb));
    kv_logged_batch_free(lb);
    CHECK(oldest > 1 && kv_current_sequence(db) - oldest >= 300); /* at least 3/4 MiB of 2 KB batches */
    kv_free(db);
}

TEST(test_db_failed_manifest_write_deletes_nothing) {
    kv_options o;
    small_options(&o);
    kv_env *env = kv_fault_env_new(kv_env_posix());
    o.env = env;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    char k[32], v[64];
    for (int i = 0; i < 3000; i++) {
        snprintf(k, sizeof k, "key%06d", i);
        snprintf(v, sizeof v, "value-%d", i);
        CHECK_OK(kv_put(db, k, strlen(k), v, strlen(v), 0));
    }
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    int tables = count_files(dir, ".sst");
    CHECK(tables > 0);
    /* every manifest fsync fails: the compaction's edit may or may not be in the manifest on disk */
    kv_fault_env_arm(env, KV_FAULT_SYNC_EIO, 0, "MANIFEST");
    static bool written[3000];
    int failed = 0;
    for (int i = 0; i < 3000; i += 2) {
        snprintf(k, sizeof k, "key%06d", i);
        /* once flushes fail, writers get the error: that is expected */
        written[i] = kv_put(db, k, strlen(k), "new", 3, 0) == KV_OK;
        failed += !written[i];
    }
    CHECK(failed > 0 || kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL) != KV_OK);
    /* nothing the old manifest names may be gone */
    CHECK_MSG(count_files(dir, ".sst") >= tables, "tables went from %d to %d", tables, count_files(dir, ".sst"));
    /* Close now, while the live manifest may hold the failed edit whole (only its fsync failed): reopening it must
     * find every file it names. */
    kv_free(db);
    kv_fault_env_clear(env);
    CHECK_OK(kv_open(dir, &o, &db));
    uint64_t problems0 = 1;
    CHECK_OK(kv_check(db, print_problem, NULL, NULL, &problems0));
    for (int i = 1; i < 3000; i += 2) {
        snprintf(k, sizeof k, "key%06d", i);
        snprintf(v, sizeof v, "value-%d", i);
        kv_buf b;
        CHECK_OK(kv_get(db, NULL, k, strlen(k), &b));
        CHECK_MEM(b.data, b.len, v, strlen(v));
        kv_buf_free(&b);
    }
    /* the flush thread retries; compaction then works */
    int rc = KV_EIO;
    for (int tries = 0; tries < 100 && rc != KV_OK; tries++) {
        rc = kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL);
        if (rc) usleep(50000);
    }
    CHECK_OK(rc);
    kv_free(db);
    o.env = NULL;
    CHECK_OK(kv_open(dir, &o, &db));
    for (int i = 0; i < 3000; i += 499) {
        snprintf(k, sizeof k, "key%06d", i);
        kv_buf b;
        CHECK_OK(kv_get(db, NULL, k, strlen(k), &b));
        if (i % 2 == 0 && written[i]) CHECK_MEM(b.data, b.len, "new", 3);
        kv_buf_free(&b);
    }
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    kv_free(db);
    env->destroy(env);
}

TEST(test_db_iterator_and_stream_outlive_close) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    char k[32];
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "key%04d", i);
        CHECK_OK(kv_put(db, k, strlen(k), k, strlen(k), 0));
    }
    kv_iter *it;
    CHECK_OK(kv_iter_new(db, NULL, &it));
    kv_stream *s;
    CHECK_OK(kv_stream_new(db, &s));
    CHECK_OK(kv_close(db));
    /* the iterator still reads what it was opened on; new calls on the handle say "closed" */
    int n = 0;
    for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) n++;
    CHECK_EQ(n, 500);
    CHECK_EQ(kv_stream_append(s, "x", 1), KV_ECLOSED);
    kv_iter *it2;
    CHECK_EQ(kv_iter_new(db, NULL, &it2), KV_ECLOSED);
    kv_iter_free(it);
    kv_stream_free(s);
    kv_free(db);
}

/* kv_get_many reads n keys at one snapshot. It used to read the sequence once without registering a snapshot, so a
 * compaction between two keys could drop the version that sequence still needed: here the reader is paused inside
 * its first key's table read (an environment that blocks that thread's first read) while another thread overwrites
 * the second key and compacts; the second key must still read as it was. */
static kv_env gm_env;
static _Atomic(pthread_t *) gm_reader;
static atomic_int gm_armed;
static pthread_mutex_t gm_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gm_cv = PTHREAD_COND_INITIALIZER;
static int gm_state; /* 1: the reader is paused; 2: it may go on */

static int gm_read_at(kv_env *e, kv_file *f, uint64_t off, void *buf, size_t len, size_t *n) {
    (void)e;
    pthread_t *r = atomic_load(&gm_reader);
    if (r && pthread_equal(pthread_self(), *r) && atomic_exchange(&gm_armed, 0)) {
        pthread_mutex_lock(&gm_mu);
        gm_state = 1;
        pthread_cond_broadcast(&gm_cv);
        while (gm_state != 2) pthread_cond_wait(&gm_cv, &gm_mu);
        pthread_mutex_unlock(&gm_mu);
    }
    return kv_env_posix()->read_at(kv_env_posix(), f, off, buf, len, n);
}

typedef struct gm_arg {
    kv_db *db;
    pthread_t self;
    int st[2];
    kv_buf vals[2];
} gm_arg;

static void *gm_reader_main(void *p) {
    gm_arg *a = p;
    a->self = pthread_self();
    atomic_store(&gm_reader, &a->self);
    kv_slice keys[2] = {{"a", 1}, {"b", 1}};
    (void)kv_get_many(a->db, NULL, 2, keys, a->vals, a->st);
    return NULL;
}

TEST(test_db_get_many_is_one_snapshot) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    gm_env = *kv_env_posix();
    gm_env.read_at = gm_read_at;
    gm_env.destroy = NULL;
    kv_options o;
    kv_options_init(&o);
    o.env = &gm_env;
    o.background_threads = false;
    o.block_cache_bytes = 0;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    CHECK_OK(kv_put(db, "a", 1, "a1", 2, 0));
    CHECK_OK(kv_put(db, "b", 1, "b1", 2, 0));
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    kv_free(db); /* reopened, no table is open: the reader's first key opens one, through gm_read_at */
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    gm_arg a = {.db = db};
    gm_state = 0;
    atomic_store(&gm_reader, NULL);
    atomic_store(&gm_armed, 1);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, gm_reader_main, &a) == 0);
    pthread_mutex_lock(&gm_mu);
    while (gm_state != 1) pthread_cond_wait(&gm_cv, &gm_mu);
    pthread_mutex_unlock(&gm_mu);
    CHECK_OK(kv_put(db, "b", 1, "b2", 2, 0));
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    pthread_mutex_lock(&gm_mu);
    gm_state = 2;
    pthread_cond_broadcast(&gm_cv);
    pthread_mutex_unlock(&gm_mu);
    pthread_join(th, NULL);
    atomic_store(&gm_reader, NULL);
    CHECK_MSG(a.st[0] == KV_OK && a.st[1] == KV_OK, "kv_get_many: a %s, b %s", kv_strerror(a.st[0]),
              kv_strerror(a.st[1]));
    if (a.st[0] == KV_OK) {
        CHECK_MEM(a.vals[0].data, a.vals[0].len, "a1", 2);
        kv_buf_free(&a.vals[0]);
    }
    if (a.st[1] == KV_OK) {
        CHECK_MEM(a.vals[1].data, a.vals[1].len, "b1", 2); /* the snapshot's version, not b2 */
        kv_buf_free(&a.vals[1]);
    }
    kv_free(db);
}

static int count_cb(void *ctx, const void *k, size_t kl, const void *v, uint64_t vl) {
    (void)k, (void)kl, (void)v, (void)vl;
    (*(int *)ctx)++;
    return 0;
}

/* Misuse gets an error (never a crash or a wrong answer), and kv_errmsg describes the last call, not an older one. */
TEST(test_db_api_misuse_gets_errors) {
    char dir[512], dir2[600];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    snprintf(dir2, sizeof dir2, "%s/other", dir);
    kv_options o;
    kv_options_init(&o);
    kv_db *db, *db2;
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_OK(kv_open(dir2, &o, &db2));
    if (t_failed()) return;
    CHECK_OK(kv_put(db, "a", 1, "1", 1, 0));
    int n = 0;
    /* range bounds: NULL with a length, longer than any key */
    CHECK_EQ(kv_range_scan(db, NULL, NULL, 5, NULL, 0, 0, true, count_cb, &n), KV_EINVAL);
    CHECK_EQ(kv_range_scan(db, NULL, NULL, 0, NULL, 5, 0, false, count_cb, &n), KV_EINVAL);
    uint8_t *big = malloc(KV_MAX_KEY + 1);
    CHECK(big);
    if (t_failed()) return;
    memset(big, 'k', KV_MAX_KEY + 1);
    CHECK_EQ(kv_range_scan(db, NULL, big, KV_MAX_KEY + 1, NULL, 0, 0, true, count_cb, &n), KV_EINVAL);
    CHECK_EQ(n, 0);
    /* an iterator seek to a key longer than any lands after the longest key that starts it */
    CHECK_OK(kv_put(db, big, KV_MAX_KEY, "m", 1, 0));
    CHECK_OK(kv_put(db, "l", 1, "2", 1, 0));
    kv_iter *it;
    CHECK_OK(kv_iter_new(db, NULL, &it));
    kv_iter_seek(it, big, KV_MAX_KEY + 1);
    size_t kl;
    const void *k = kv_iter_key(it, &kl);
    CHECK(k && kl == 1 && memcmp(k, "l", 1) == 0);
    kv_iter_seek(it, big, KV_MAX_KEY);
    CHECK(kv_iter_valid(it) && kv_iter_key(it, &kl) && kl == KV_MAX_KEY);
    const void *v;
    uint64_t vl;
    CHECK_EQ(kv_iter_value(it, NULL, &vl), KV_EINVAL);
    CHECK_EQ(kv_iter_value(it, &v, NULL), KV_EINVAL);
    CHECK_EQ(kv_iter_info(it, NULL), KV_EINVAL);
    CHECK_EQ(kv_iter_status(NULL), KV_EINVAL);
    kv_iter_free(it);
    free(big);
    /* the empty prefix as (NULL, 0) */
    kv_buf key;
    CHECK_EQ(kv_resolve_prefix(db, NULL, NULL, 0, &key, NULL), KV_EAMBIGUOUS);
    kv_buf_free(&key);
    n = 0;
    CHECK_OK(kv_prefix_scan(db, NULL, NULL, 0, 0, false, count_cb, &n));
    CHECK_EQ(n, 3);
    /* a stream of one store put into another is refused; the other's value stays */
    kv_stream *s;
    CHECK_OK(kv_stream_new(db, &s));
    uint8_t data[5000];
    memset(data, 'A', sizeof data);
    CHECK_OK(kv_stream_append(s, data, sizeof data));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put_stream(b, 0, "y", 1, s));
    CHECK_EQ(kv_write(db2, b, 0, NULL), KV_EINVAL);
    CHECK(strstr(kv_errmsg(), "another store") != NULL);
    CHECK_EQ(kv_contains(db2, NULL, "y", 1), 0);
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_batch_free(b);
    kv_stream_free(s);
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "y", 1, &got));
    CHECK(got.len == sizeof data && ((uint8_t *)got.data)[0] == 'A');
    kv_buf_free(&got);
    /* kv_errmsg: about the last call */
    CHECK_EQ(kv_get(db, NULL, "", 0, &got), KV_EINVAL);
    CHECK(strcmp(kv_errmsg(), "") != 0);
    CHECK_EQ(kv_get(db, NULL, "missing", 7, &got), KV_ENOTFOUND);
    CHECK(strstr(kv_errmsg(), "empty key") == NULL);
    CHECK_OK(kv_get(db, NULL, "a", 1, &got));
    kv_buf_free(&got);
    CHECK_MSG(strcmp(kv_errmsg(), "") == 0, "after a success: '%s'", kv_errmsg());
    kv_free(db2);
    kv_free(db);
}

/* kv_read_range takes a NULL buffer with a length of 0 (kv.h: only a NULL buffer with a length is KV_EINVAL), at any
 * offset of a value in the tree or in a blob file: it read into it with memcpy(NULL, ..., 0), undefined behaviour that
 * aborted a program built with -fsanitize=undefined. */
TEST(test_db_read_range_of_nothing_into_no_buffer) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 0)) return;
    uint8_t big[2000];
    memset(big, 'b', sizeof big);
    CHECK_OK(kv_put(db, "small", 5, "hello", 5, 0));
    CHECK_OK(kv_put(db, "big", 3, big, sizeof big, 0));
    static const uint64_t offs[] = {0, 2, 5, 1999, 2000, UINT64_MAX};
    for (size_t i = 0; i < sizeof offs / sizeof *offs; i++) {
        size_t n = 99;
        CHECK_OK(kv_read_range(db, NULL, "small", 5, offs[i], NULL, 0, &n));
        CHECK_EQ(n, 0);
        n = 99;
        CHECK_OK(kv_read_range(db, NULL, "big", 3, offs[i], NULL, 0, &n));
        CHECK_EQ(n, 0);
    }
    size_t n;
    CHECK_EQ(kv_read_range(db, NULL, "small", 5, 0, NULL, 1, &n), KV_EINVAL);
    kv_free(db);
}

/* The iterator calls that return something take a NULL iterator as kv_iter_valid, kv_iter_value, kv_iter_info and
 * kv_iter_status do (kv.h: only the calls that return nothing need a valid one): kv_iter_key(NULL) dereferenced it. */
TEST(test_db_iter_key_of_no_iterator) {
    size_t kl = 99;
    CHECK(kv_iter_key(NULL, &kl) == NULL);
    CHECK_EQ(kl, 0);
    CHECK(kv_iter_key(NULL, NULL) == NULL);
    CHECK(!kv_iter_valid(NULL));
}

/* A call that succeeds leaves no message (kv.h: kv_errmsg() is the detail of the last failure, "" when there is none).
 * The notes readers set on the way used to stay after a success: kv_open left "open .../CURRENT: No such file or
 * directory" for a new store and "000005.log: end of log at offset 38" on a reopen, kv_check the batch log's end,
 * kv_oldest_retained_batch and kv_get_stats "the batch log is empty", and kv_close kept the previous call's. */
#define CHECK_NO_MSG(expr)                                                                     \
    do {                                                                                       \
        CHECK_OK(expr);                                                                        \
        CHECK_MSG(kv_errmsg()[0] == 0, "%s succeeded with message '%s'", #expr, kv_errmsg()); \
    } while (0)
TEST(test_db_success_leaves_no_message) {
    const char *dir = t_tmpdir();
    kv_options o;
    kv_options_init(&o);
    o.batch_log_max_batches = 100;
    kv_db *db;
    CHECK_NO_MSG(kv_open(dir, &o, &db));
    CHECK_NO_MSG(kv_put(db, "a", 1, "1", 1, 0));
    uint64_t seq, problems;
    CHECK_NO_MSG(kv_oldest_retained_batch(db, &seq));
    CHECK_NO_MSG(kv_check(db, NULL, NULL, NULL, &problems));
    kv_stats st;
    CHECK_NO_MSG(kv_get_stats(db, &st));
    CHECK_NO_MSG(kv_close(db));
    kv_free(db);
    CHECK_NO_MSG(kv_open(dir, &o, &db));
    CHECK_NO_MSG(kv_prune_batch_log(db, kv_current_sequence(db) + 1));
    CHECK_NO_MSG(kv_get_stats(db, &st)); /* the batch log is empty now */
    CHECK_EQ(kv_oldest_retained_batch(db, &seq), KV_ENOTFOUND);
    CHECK(strstr(kv_errmsg(), "empty") != NULL);
    CHECK_NO_MSG(kv_close(db)); /* not the previous call's message */
    kv_free(db);
    o.read_only = true;
    CHECK_NO_MSG(kv_open(dir, &o, &db));
    CHECK_NO_MSG(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_NO_MSG(kv_close(db));
    kv_free(db);
}
#undef CHECK_NO_MSG

/* kv_get and kv_get_with_info leave *out empty on every failure, so that a caller may free it whatever the result: a
 * closed (or NULL) handle left it as it was, uninitialised in the usual `kv_buf b; kv_get(...)`, while a missing key
 * or a bad argument emptied it. */
TEST(test_db_get_of_a_closed_store_leaves_out_empty) {
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), NULL, &db));
    CHECK_OK(kv_put(db, "a", 1, "1", 1, 0));
    CHECK_OK(kv_close(db));
    kv_buf b = {(void *)"stale", 5};
    CHECK_EQ(kv_get(db, NULL, "a", 1, &b), KV_ECLOSED);
    CHECK(b.data == NULL && b.len == 0);
    kv_info info;
    b = (kv_buf){(void *)"stale", 5};
    CHECK_EQ(kv_get_with_info(db, NULL, "a", 1, &b, &info), KV_ECLOSED);
    CHECK(b.data == NULL && b.len == 0);
    b = (kv_buf){(void *)"stale", 5};
    CHECK_EQ(kv_get(NULL, NULL, "a", 1, &b), KV_ECLOSED);
    CHECK(b.data == NULL && b.len == 0);
    kv_free(db);
}

/* A large-value stream that no batch takes (abandoned, or its put failed) leaves nothing behind: its blob file is
 * taken out of the store at kv_stream_free (it used to stay, counted as no garbage, until a blob GC that the short-
 * lived kvfs tools never run). A stream that was put keeps its file. */
TEST(test_db_abandoned_stream_leaves_no_blob_file) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 0)) return;
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    uint64_t files0 = st.blob_files;
    uint8_t data[100000];
    memset(data, 'z', sizeof data);
    kv_stream *s;
    CHECK_OK(kv_stream_new(db, &s));
    CHECK_OK(kv_stream_append(s, data, sizeof data));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.blob_files, files0 + 1);
    kv_stream_free(s); /* abandoned */
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.blob_files, files0);
    /* one that is put stays */
    CHECK_OK(kv_stream_new(db, &s));
    CHECK_OK(kv_stream_append(s, data, sizeof data));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put_stream(b, 0, "big", 3, s));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_batch_free(b);
    kv_stream_free(s);
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.blob_files, files0 + 1);
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "big", 3, &got));
    CHECK_EQ(got.len, sizeof data);
    kv_buf_free(&got);
    problem_log pl = {0};
    CHECK_OK(kv_check(db, log_problem, NULL, &pl, NULL));
    CHECK_MSG(pl.n == 0, "%s", pl.text);
    kv_free(db);
}

/* Limits kv.h states: values end at 2^63 bytes; a prune cannot reach batches not yet committed; blob_gc_ratio is a
 * share. */
TEST(test_db_stated_limits) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_options o;
    kv_options_init(&o);
    o.batch_log_max_batches = 1000;
    o.blob_gc_ratio = -1;
    kv_db *db;
    CHECK_EQ(kv_open(dir, &o, &db), KV_EINVAL);
    o.blob_gc_ratio = 0.5;
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_EQ(kv_batch_write_at(b, 0, "k", 1, UINT64_MAX - 1, "x", 1), KV_EINVAL);
    CHECK_EQ(kv_batch_write_at(b, 0, "k", 1, KV_MAX_VALUE, "x", 1), KV_EINVAL);
    CHECK_EQ(kv_batch_truncate(b, 0, "k", 1, KV_MAX_VALUE + 1), KV_EINVAL);
    CHECK_OK(kv_batch_write_at(b, 0, "k", 1, KV_MAX_VALUE - 1, "x", 1));
    kv_batch_free(b);
    CHECK_OK(kv_put(db, "a", 1, "1", 1, 0));
    uint64_t cur = kv_current_sequence(db);
    CHECK_OK(kv_prune_batch_log(db, cur + 100));
    uint64_t seq = 0;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put(b, "c", 1, "2", 1));
    CHECK_OK(kv_write(db, b, 0, &seq));
    kv_batch_free(b);
    kv_logged_batch *lb = NULL;
    CHECK_OK(kv_get_batch(db, seq, &lb)); /* committed after the prune: kept */
    if (lb) kv_logged_batch_free(lb);
    CHECK_EQ(kv_get_batch(db, cur, &lb), KV_EEVICTED);
    kv_free(db);
}

/* Blob GC runs while writers put large values. A group resolves its batches (appending their values to the shared
 * blob file, which fills and is retired) before it inserts them into the memtable; GC used to take such a retired
 * file for unreferenced and delete it, and the acknowledged values read as "blob file is missing". */
typedef struct gc_race {
    kv_db *db;
    int id;
    atomic_bool *stop;
    atomic_int *bad;
} gc_race;

static void *gc_race_gc(void *p) {
    gc_race *a = p;
    while (!atomic_load(a->stop)) (void)kv_blob_gc(a->db, 0.5);
    return NULL;
}

static void *gc_race_writer(void *p) {
    gc_race *a = p;
    char k[8];
    snprintf(k, sizeof k, "k%d", a->id);
    size_t len = 70000;
    uint8_t *v = malloc(len);
    for (int i = 0; v && i < 150 && !atomic_load(a->bad); i++) {
        memset(v, i + a->id, len);
        if (kv_put(a->db, k, strlen(k), v, len, 0) != KV_OK) {
            atomic_store(a->bad, 1);
            break;
        }
        kv_buf g;
        int rc = kv_get(a->db, NULL, k, strlen(k), &g);
        if (rc || g.len != len || memcmp(g.data, v, len) != 0) {
            printf("# writer %d, value %d: %s\n", a->id, i, rc ? kv_errmsg() : "wrong bytes");
            atomic_store(a->bad, 1);
        }
        if (!rc) kv_buf_free(&g);
    }
    free(v);
    return NULL;
}

TEST(test_db_blob_gc_spares_files_of_batches_being_written) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_options o;
    kv_options_init(&o);
    o.blob_file_bytes = 64 << 10; /* a file fills with each value */
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    atomic_bool stop = false;
    atomic_int bad = 0;
    gc_race gc = {db, 0, &stop, &bad}, w[4];
    pthread_t tg, tw[4];
    CHECK(pthread_create(&tg, NULL, gc_race_gc, &gc) == 0);
    for (int i = 0; i < 4; i++) {
        w[i] = (gc_race){db, i, &stop, &bad};
        CHECK(pthread_create(&tw[i], NULL, gc_race_writer, &w[i]) == 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(tw[i], NULL);
    atomic_store(&stop, true);
    pthread_join(tg, NULL);
    CHECK_EQ(atomic_load(&bad), 0);
    problem_log pl = {0};
    CHECK_OK(kv_check(db, log_problem, NULL, &pl, NULL));
    CHECK_MSG(pl.n == 0, "%s", pl.text);
    kv_free(db);
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* kv_stats' blob garbage: unknown until a collection pass measured it, then the bytes no newest value uses. A pass at
 * ratio 0 copies no file that holds nothing but live values (it used to, every time: chunk headers are not live). */
TEST(test_db_blob_garbage_is_measured) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 64 << 10)) return; /* each value below fills a file, which then leaves the writer's hands */
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK(!st.blob_garbage_known);
    static uint8_t v[100000];
    memset(v, 'a', sizeof v);
    CHECK_OK(kv_put(db, "x", 1, v, sizeof v, 0));
    memset(v, 'b', sizeof v);
    CHECK_OK(kv_put(db, "x", 1, v, sizeof v, 0)); /* the first value is garbage now */
    CHECK_OK(kv_put(db, "y", 1, v, 5000, 0));
    CHECK_OK(kv_blob_gc(db, 0.99)); /* measures, rewrites nothing */
    CHECK_OK(kv_get_stats(db, &st));
    CHECK(st.blob_garbage_known);
    CHECK_MSG(st.blob_garbage_bytes >= sizeof v && st.blob_garbage_bytes < 2 * sizeof v, "%llu",
              (unsigned long long)st.blob_garbage_bytes);
    /* collected at ratio 0: the file that held the garbage is rewritten once; a second pass copies nothing */
    CHECK_OK(kv_blob_gc(db, 0.0));
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL)); /* older versions let go of the old files */
    CHECK_OK(kv_blob_gc(db, 0.0));
    char before[4096] = "", after[4096] = "";
    char **names;
    size_t n;
    kv_env *env = kv_env_posix();
    for (int pass = 0; pass < 2; pass++) {
        if (pass) CHECK_OK(kv_blob_gc(db, 0.0));
        char *out = pass ? after : before;
        CHECK_OK(env->list_dir(env, dir, &names, &n));
        qsort(names, n, sizeof *names, cmp_names);
        for (size_t i = 0; i < n; i++)
            if (strstr(names[i], ".blob")) snprintf(out + strlen(out), 4096 - strlen(out), "%s ", names[i]);
        kv_env_free_names(names, n);
    }
    CHECK_MSG(strcmp(before, after) == 0, "a pass over live files copied them: %s -> %s", before, after);
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "x", 1, &got));
    CHECK(got.len == sizeof v && ((uint8_t *)got.data)[0] == 'b');
    kv_buf_free(&got);
    kv_free(db);
}

/* Which batches count as removing data (they pass the disk's floor and, while compactions fail, the level-0 stop
 * trigger): moves are bounded by what they may rewrite, 1 MiB / blob_threshold and at most 16. */
TEST(test_db_batch_removes_data_bounds_moves_by_the_bytes_they_may_rewrite) {
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_delete(b, "a", 1));
    CHECK(batch_removes_data(b, 64 << 10));
    CHECK_OK(kv_batch_put(b, "t", 1, "0123456789", 10)); /* a directory's times */
    CHECK(batch_removes_data(b, 64 << 10));
    CHECK_OK(kv_batch_put(b, "u", 1, "0123456789", 10)); /* more puts than removals */
    CHECK(!batch_removes_data(b, 64 << 10));
    kv_batch_clear(b);
    CHECK_OK(kv_batch_move(b, 0, "a", 1, 0, "b", 1));
    CHECK(batch_removes_data(b, 4 << 10));
    CHECK(batch_removes_data(b, 1 << 20));
    CHECK(!batch_removes_data(b, 2 << 20)); /* one value kept whole could be 2 MiB */
    for (int i = 0; i < 15; i++) CHECK_OK(kv_batch_move(b, 0, "c", 1, 0, "d", 1));
    CHECK(batch_removes_data(b, 4 << 10)); /* 16 moves */
    CHECK(!batch_removes_data(b, 128 << 10)); /* 16 x 128 KiB */
    CHECK_OK(kv_batch_move(b, 0, "e", 1, 0, "f", 1));
    CHECK(!batch_removes_data(b, 4 << 10)); /* 17 moves */
    kv_batch_free(b);
}

/* Put a large value and a small one, delete the large one; with held, while the compaction thread has not started yet
 * (as a busy machine may run it only after the caller's first writes). Then the large value's space must come back
 * within 15 s (3 s of quiet, then a pass). */
static void gc_follows_a_delete(bool held) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (held) t_compact_start_hold();
    if (!open_blob_store(dir, &o, &db, 0)) {
        t_compact_start_release();
        return;
    }
    size_t big = 3u << 20;
    uint8_t *v = malloc(big);
    int rc = v ? KV_OK : KV_ENOMEM;
    if (v) memset(v, 'x', big);
    if (!rc) rc = kv_put(db, "big", 3, v, big, 0);
    if (!rc) rc = kv_put(db, "small", 5, v, 100, 0);
    free(v);
    if (!rc) rc = kv_delete(db, "big", 3, 0);
    t_compact_start_release();
    CHECK_OK(rc);
    kv_stats st = {0};
    int waited = 0;
    for (; waited < 150; waited++) { /* up to 15 s: 3 s of quiet, then a pass */
        CHECK_OK(kv_get_stats(db, &st));
        if (st.blob_bytes < (1u << 20)) break;
        usleep(100 * 1000);
    }
    printf("# %llu blob bytes %d ms after the delete\n", (unsigned long long)st.blob_bytes, waited * 100);
    CHECK_MSG(st.blob_bytes < (1u << 20), "%llu blob bytes 15 s after the delete", (unsigned long long)st.blob_bytes);
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "small", 5, &got));
    CHECK_EQ(got.len, 100);
    kv_buf_free(&got);
    CHECK_EQ(kv_get(db, NULL, "big", 3, &got), KV_ENOTFOUND);
    kv_free(db);
}

/* A large value deleted (a big file removed through the mount) gives its space back within seconds of the writes
 * going quiet, not after the background's minute without compactions. */
TEST(test_db_blob_gc_follows_a_delete_once_writes_are_quiet) { gc_follows_a_delete(false); }

/* The same when the delete comes before the compaction thread first runs. The thread took the count of removals as it
 * found it when it started for the count the last pass had seen: a delete made before then was never followed (on a
 * loaded machine, now and then, this test's first form failed so). */
TEST(test_db_blob_gc_follows_a_delete_made_before_the_compaction_thread_starts) { gc_follows_a_delete(true); }

/* A large value deleted or overwritten gives its blob file back at the next GC pass, before compaction has met its
 * old versions (they stay in the memtable here), unless a snapshot still sees them. The file used to stay until a
 * flush and a compaction had dropped every old version: on a full disk, where compaction may not run, for good. The
 * old versions that remain name a file that is gone: kv_check does not judge them, and recovery replays them. */
TEST(test_db_blob_gc_frees_a_file_only_old_versions_name) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 64 << 10)) return; /* each value below fills a file */
    static uint8_t v[100000];
    memset(v, 'a', sizeof v);
    CHECK_OK(kv_put(db, "a", 1, v, sizeof v, 0));
    memset(v, 'b', sizeof v);
    CHECK_OK(kv_put(db, "b", 1, v, sizeof v, 0));
    kv_snapshot *snap;
    CHECK_OK(kv_snapshot_new(db, &snap));
    CHECK_OK(kv_delete(db, "a", 1, 0));
    memset(v, 'c', sizeof v);
    CHECK_OK(kv_put(db, "b", 1, v, sizeof v, 0));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.blob_files, 3);
    /* the snapshot sees both old values: nothing goes */
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.blob_files, 3);
    kv_read_opts ro = {.snapshot = snap};
    kv_buf got;
    CHECK_OK(kv_get(db, &ro, "a", 1, &got));
    CHECK(got.len == sizeof v && ((uint8_t *)got.data)[0] == 'a' && ((uint8_t *)got.data)[sizeof v - 1] == 'a');
    kv_buf_free(&got);
    CHECK_OK(kv_get(db, &ro, "b", 1, &got));
    CHECK(got.len == sizeof v && ((uint8_t *)got.data)[0] == 'b');
    kv_buf_free(&got);
    /* released: both files go, though the memtable still holds the entries that name them */
    kv_snapshot_release(db, snap);
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.blob_files == 1, "%llu blob files after the pass", (unsigned long long)st.blob_files);
    CHECK_EQ(st.level_files[0] + st.level_files[1], 0); /* the old versions are all in the memtable */
    problem_log pl = {0};
    CHECK_OK(kv_check(db, log_problem, NULL, &pl, NULL));
    CHECK_MSG(pl.n == 0, "%s", pl.text);
    CHECK_EQ(kv_get(db, NULL, "a", 1, &got), KV_ENOTFOUND);
    CHECK_OK(kv_get(db, NULL, "b", 1, &got));
    CHECK(got.len == sizeof v && ((uint8_t *)got.data)[0] == 'c');
    kv_buf_free(&got);
    /* recovery replays the log, old entries and all; then compaction drops them */
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    for (int pass = 0; pass < 2; pass++) {
        memset(&pl, 0, sizeof pl);
        CHECK_OK(kv_check(db, log_problem, NULL, &pl, NULL));
        CHECK_MSG(pl.n == 0, "pass %d: %s", pass, pl.text);
        CHECK_EQ(kv_get(db, NULL, "a", 1, &got), KV_ENOTFOUND);
        CHECK_OK(kv_get(db, NULL, "b", 1, &got));
        CHECK(got.len == sizeof v && ((uint8_t *)got.data)[sizeof v - 1] == 'c');
        kv_buf_free(&got);
        CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    }
    kv_free(db);
}

/* The shared blob file, which appends go to, is closed for collection when a pass finds it mostly garbage: a large
 * file written and deleted gave its space back only once later values had filled it (256 MiB by default). */
TEST(test_db_blob_gc_takes_the_shared_file_when_it_is_mostly_garbage) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 0)) return;
    size_t big = 3u << 20;
    uint8_t *v = malloc(big);
    CHECK(v != NULL);
    if (!v) return;
    memset(v, 'x', big);
    CHECK_OK(kv_put(db, "keep", 4, v, 5000, 0));
    CHECK_OK(kv_put(db, "big", 3, v, big, 0));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.blob_files, 1);
    /* a pass over a file that is mostly live leaves it open */
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_OK(kv_put(db, "more", 4, v, 3000, 0));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.blob_files, 1);
    CHECK_OK(kv_delete(db, "big", 3, 0));
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.blob_bytes < (1u << 20), "%llu blob bytes in %llu files after deleting the large value",
              (unsigned long long)st.blob_bytes, (unsigned long long)st.blob_files);
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "keep", 4, &got));
    CHECK(got.len == 5000 && memcmp(got.data, v, 5000) == 0);
    kv_buf_free(&got);
    CHECK_OK(kv_get(db, NULL, "more", 4, &got));
    CHECK(got.len == 3000 && memcmp(got.data, v, 3000) == 0);
    kv_buf_free(&got);
    CHECK_OK(kv_put(db, "after", 5, v, 4000, 0)); /* a new shared file */
    problem_log pl = {0};
    CHECK_OK(kv_check(db, log_problem, NULL, &pl, NULL));
    CHECK_MSG(pl.n == 0, "%s", pl.text);
    free(v);
    kv_free(db);
}

/* A writer that keeps overwriting large values never leaves compaction idle for a minute: the background's blob GC
 * runs once as many bytes as the live values hold (at least 64 MiB) were appended since its last pass, so the blob
 * files stay within a few times the live data. They grew without bound until the writes stopped (a database's update
 * loop through the mount: 259 times its size, 60 MB/s). */
TEST(test_db_blob_gc_keeps_up_with_a_steady_overwriter) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 0)) return;
    size_t big = 1u << 20;
    uint8_t *v = malloc(big);
    CHECK(v != NULL);
    if (!v) return;
    kv_stats st;
    uint64_t most = 0;
    for (int i = 0; i < 320; i++) {
        memset(v, 'a' + i % 26, big);
        char key[8];
        snprintf(key, sizeof key, "k%d", i % 4);
        CHECK_OK(kv_put(db, key, strlen(key), v, big, 0));
        CHECK_OK(kv_get_stats(db, &st));
        if (st.blob_bytes > most) most = st.blob_bytes;
    }
    /* the last pass due may still be running */
    for (int waited = 0; waited < 100 && st.blob_bytes >= (160u << 20); waited++) {
        usleep(100 * 1000);
        CHECK_OK(kv_get_stats(db, &st));
    }
    printf("# 320 MiB written over 4 MiB of live values: at most %llu MiB of blob files, %llu MiB at the end\n",
           (unsigned long long)(most >> 20), (unsigned long long)(st.blob_bytes >> 20));
    CHECK_MSG(st.blob_bytes < (160u << 20), "%llu blob bytes after 320 MiB of overwrites of 4 MiB",
              (unsigned long long)st.blob_bytes);
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "k3", 2, &got));
    CHECK(got.len == big && ((uint8_t *)got.data)[0] == 'a' + 319 % 26);
    kv_buf_free(&got);
    free(v);
    kv_free(db);
}

/* kv_check reports a value that names a blob file the store no longer has (as the blob GC race above left them: the
 * file out of the version and deleted, the value still there). The file is taken out here by hand. */
TEST(test_db_check_reports_a_value_whose_blob_file_is_gone) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 64 << 10)) return;
    static uint8_t v[100000];
    memset(v, 'v', sizeof v);
    CHECK_OK(kv_put(db, "x", 1, v, sizeof v, KV_SYNC));
    CHECK_OK(kv_put(db, "y", 1, v, sizeof v, KV_SYNC)); /* x's file is full: retired */
    kv_info info;
    CHECK_OK(kv_stat(db, NULL, "x", 1, &info));
    problem_log pl = {0};
    CHECK_OK(kv_check(db, log_problem, NULL, &pl, NULL));
    CHECK_MSG(pl.n == 0, "%s", pl.text);
    /* the oldest blob file is x's */
    pthread_mutex_lock(&db->mu);
    uint64_t no = db->vs->current->nblobs ? db->vs->current->blobs[0]->file_no : 0;
    version_edit e;
    edit_init(&e);
    CHECK_OK(edit_delete_blob(&e, no));
    CHECK_OK(vset_log_and_apply(db->vs, &e));
    edit_free(&e);
    db_delete_obsolete_files(db);
    pthread_mutex_unlock(&db->mu);
    memset(&pl, 0, sizeof pl);
    CHECK_EQ(kv_check(db, log_problem, NULL, &pl, NULL), KV_ECORRUPT);
    CHECK_MSG(strstr(pl.text, "names a blob file that is missing") != NULL, "%s", pl.text);
    kv_free(db);
}

/* ---- a randomized model test of snapshots across compactions ------------------------------------------------------ */

/* What the model test above does not exercise: several snapshots held at once across manual and background
 * compactions (read back by point lookups, not only by iteration), range scans (inclusive end, unbounded ends,
 * limits, both directions), bounded iterators walked both ways, and keys of a neighbouring keyspace. */

#define SNAP_MAX 4

static void snap_key(uint64_t *rs, char *k, size_t *kl) { *kl = (size_t)snprintf(k, 32, "s%04u", (unsigned)(t_rand(rs) % 1500)); }

typedef struct scan_got {
    kv_bytes keys; /* length-prefixed keys, in the order seen */
    size_t n;
    const model *m;
    int bad;       /* a value that differs from the model's */
} scan_got;

static int scan_collect(void *ctx, const void *k, size_t kl, const void *v, uint64_t vl) {
    scan_got *g = ctx;
    const model_entry *e = model_get(g->m, k, kl);
    if (!e || e->vlen != vl || memcmp(e->val, v, vl) != 0) g->bad = 1;
    if (bytes_append_lenprefixed(&g->keys, k, kl)) g->bad = 2;
    g->n++;
    return 0;
}

/* kv_range_scan against the model: [start, end] inclusive, empty = unbounded, limit 0 = all. */
static int check_range_scan(kv_db *db, const kv_read_opts *ro, const model *m, const char *s, size_t sl, const char *e,
                            size_t el, uint64_t limit, bool fwd) {
    scan_got g = {.m = m};
    int rc = kv_range_scan(db, ro, s, sl, e, el, limit, fwd, scan_collect, &g);
    if (rc) { bytes_free(&g.keys); return -1; }
    if (g.bad) { bytes_free(&g.keys); return -2; }
    size_t lo = sl ? model_lower(m, s, sl) : 0;
    size_t hi = m->n; /* one past the last key <= e */
    if (el) {
        hi = model_lower(m, e, el);
        if (hi < m->n && model_keycmp(m->e[hi].key, m->e[hi].klen, e, el) == 0) hi++;
    }
    size_t want = hi > lo ? hi - lo : 0;
    if (limit && want > limit) want = limit;
    int r = 0;
    if (g.n != want) r = -3;
    const uint8_t *p = g.keys.data, *lim = g.keys.data + g.keys.len;
    for (size_t i = 0; !r && i < want; i++) {
        const uint8_t *k;
        uint64_t kl;
        p = get_lenprefixed(p, lim, &k, &kl);
        const model_entry *me = &m->e[fwd ? lo + i : hi - 1 - i];
        if (!p || model_keycmp(k, kl, me->key, me->klen) != 0) r = -4;
    }
    bytes_free(&g.keys);
    return r;
}

/* A random walk of a bounded iterator (lower inclusive, upper exclusive, empty = none) against the model. */
static int check_bounded_walk(kv_db *db, const kv_snapshot *snap, const model *m, uint64_t *rs) {
    char lo[32], hi[32], k[32];
    size_t lol = 0, hil = 0, kl;
    if (t_rand(rs) % 3) snap_key(rs, lo, &lol);
    if (t_rand(rs) % 3) snap_key(rs, hi, &hil);
    kv_read_opts ro = {.snapshot = snap, .lower_bound = lo, .lower_len = lol, .upper_bound = hi, .upper_len = hil};
    size_t first = lol ? model_lower(m, lo, lol) : 0, end = hil ? model_lower(m, hi, hil) : m->n;
    if (end < first) end = first; /* an empty range */
    kv_iter *it;
    if (kv_iter_new(db, &ro, &it)) return -10;
    /* pos: the model index the iterator should be at; first - 1 (as SIZE_MAX) or end when invalid */
    size_t pos = first;
    int r = 0;
    for (int step = 0; step < 40 && !r; step++) {
        int op = (int)(t_rand(rs) % 8);
        if (step == 0 || op == 0) {
            switch (t_rand(rs) % 4) {
            case 0: kv_iter_seek_first(it); pos = first; break;
            case 1: kv_iter_seek_last(it); pos = end > first ? end - 1 : SIZE_MAX; break;
            case 2:
                snap_key(rs, k, &kl);
                kv_iter_seek(it, k, kl);
                pos = model_lower(m, k, kl);
                if (pos < first) pos = first;
                break;
            default: {
                snap_key(rs, k, &kl);
                kv_iter_seek_for_prev(it, k, kl);
                size_t i = model_lower(m, k, kl);
                if (i < m->n && model_keycmp(m->e[i].key, m->e[i].klen, k, kl) == 0) i++;
                if (i > end) i = end;
                pos = i > first ? i - 1 : SIZE_MAX;
                break;
            }
            }
        } else if (op < 5) {
            if (!kv_iter_valid(it)) continue;
            kv_iter_next(it);
            pos++;
        } else {
            if (!kv_iter_valid(it)) continue;
            kv_iter_prev(it);
            pos = pos > first ? pos - 1 : SIZE_MAX;
        }
        bool want = pos != SIZE_MAX && pos >= first && pos < end;
        if (kv_iter_valid(it) != want) { r = -11; break; }
        if (want) {
            size_t ikl;
            const void *ik = kv_iter_key(it, &ikl);
            const void *v;
            uint64_t vl;
            if (model_keycmp(ik, ikl, m->e[pos].key, m->e[pos].klen) != 0) r = -12;
            else if (kv_iter_value(it, &v, &vl) || vl != m->e[pos].vlen || memcmp(v, m->e[pos].val, vl) != 0) r = -13;
        }
    }
    if (!r && kv_iter_status(it)) r = -14;
    kv_iter_free(it);
    return r;
}

static void run_snapshot_model(int steps, bool background) {
    kv_options o;
    small_options(&o);
    o.background_threads = background;
    const char *dir = t_tmpdir();
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    model m = {0};
    uint64_t rs = t_seed() ^ 0x5eed5eedull ^ (background ? 1 : 0);
    kv_snapshot *snap[SNAP_MAX] = {0};
    model sm[SNAP_MAX] = {{0}};
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    for (int step = 0; step < steps; step++) {
        int op = (int)(t_rand(&rs) % 100);
        char k[32], k2[32], v[400];
        size_t kl, k2l;
        snap_key(&rs, k, &kl);
        int si = (int)(t_rand(&rs) % SNAP_MAX);
        if (op < 40) {
            /* values up to a few hundred bytes: the levels then hold several tables each */
            size_t vl = (size_t)snprintf(v, sizeof v, "v%d-%llu", step, (unsigned long long)(t_rand(&rs) % 1000));
            size_t pad = (size_t)(t_rand(&rs) % 300);
            for (size_t j = 0; j < pad; j++) v[vl + j] = (char)('a' + t_rand(&rs) % 26);
            vl += pad;
            CHECK_OK(kv_put(db, k, kl, v, vl, 0));
            model_put(&m, k, kl, v, vl);
        } else if (op < 55) {
            CHECK_OK(kv_delete(db, k, kl, 0));
            model_del(&m, k, kl);
        } else if (op < 60) {
            /* a batch that also writes keyspace 1, which no read of keyspace 0 may show */
            kv_batch_clear(b);
            for (int j = 0; j < 8; j++) {
                snap_key(&rs, k, &kl);
                if (t_rand(&rs) % 3) {
                    size_t vl = (size_t)snprintf(v, sizeof v, "b%d-%d", step, j);
                    CHECK_OK(kv_batch_put(b, k, kl, v, vl));
                    model_put(&m, k, kl, v, vl);
                } else {
                    CHECK_OK(kv_batch_delete(b, k, kl));
                    model_del(&m, k, kl);
                }
                CHECK_OK(kv_batch_put_ks(b, 1, k, kl, "other", 5));
            }
            CHECK_OK(kv_write(db, b, 0, NULL));
        } else if (op < 70) {
            /* a point lookup, at the latest state or at a snapshot */
            kv_read_opts ro = {.snapshot = snap[si]};
            const model *mm = snap[si] ? &sm[si] : &m;
            const model_entry *e = model_get(mm, k, kl);
            kv_buf got;
            int rc = kv_get(db, &ro, k, kl, &got);
            if (e) {
                CHECK_MSG(rc == KV_OK, "step %d: get %s (snapshot %d): %s", step, k, snap[si] ? si : -1,
                          kv_strerror(rc));
                CHECK_MEM(got.data, got.len, e->val, e->vlen);
                kv_buf_free(&got);
            } else {
                CHECK_MSG(rc == KV_ENOTFOUND, "step %d: get %s (snapshot %d): expected absent, got %d", step, k,
                          snap[si] ? si : -1, rc);
            }
        } else if (op < 76) {
            /* take or release a snapshot */
            if (snap[si]) {
                kv_snapshot_release(db, snap[si]);
                model_free(&sm[si]);
                snap[si] = NULL;
            } else {
                CHECK_OK(kv_snapshot_new(db, &snap[si]));
                sm[si] = model_copy(&m);
            }
        } else if (op < 84) {
            kv_read_opts ro = {.snapshot = snap[si]};
            const model *mm = snap[si] ? &sm[si] : &m;
            size_t sl = 0, el = 0;
            if (t_rand(&rs) % 4) snap_key(&rs, k, &sl);
            if (t_rand(&rs) % 4) snap_key(&rs, k2, &el);
            else k2l = 0;
            (void)k2l;
            uint64_t limit = t_rand(&rs) % 3 ? 0 : t_rand(&rs) % 20;
            bool fwd = t_rand(&rs) % 2;
            int r = check_range_scan(db, &ro, mm, k, sl, k2, el, limit, fwd);
            CHECK_MSG(r == 0, "step %d: range scan [%.*s, %.*s] limit %llu %s (snapshot %d) differs (%d)", step,
                      (int)sl, k, (int)el, k2, (unsigned long long)limit, fwd ? "forward" : "backward",
                      snap[si] ? si : -1, r);
        } else if (op < 90) {
            const model *mm = snap[si] ? &sm[si] : &m;
            int r = check_bounded_walk(db, snap[si], mm, &rs);
            CHECK_MSG(r == 0, "step %d: bounded walk (snapshot %d) differs (%d)", step, snap[si] ? si : -1, r);
        } else if (op < 96) {
            /* manual compaction (now and then) of everything or of a random range */
            if (t_rand(&rs) % 4) continue;
            if (t_rand(&rs) % 3) {
                CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
            } else {
                snap_key(&rs, k, &kl);
                snap_key(&rs, k2, &k2l);
                if (model_keycmp(k, kl, k2, k2l) > 0) {
                    char t[32];
                    memcpy(t, k, sizeof t);
                    memcpy(k, k2, sizeof t);
                    memcpy(k2, t, sizeof t);
                    size_t tl = kl;
                    kl = k2l;
                    k2l = tl;
                }
                CHECK_OK(kv_compact_range(db, k, kl, k2, k2l, NULL, NULL));
            }
        } else if (op < 99) {
            int r = compare_all(db, NULL, &m, &rs);
            CHECK_MSG(r == 0, "step %d: iteration differs from the model (%d)", step, r);
            for (int i = 0; i < SNAP_MAX; i++) {
                if (!snap[i]) continue;
                kv_read_opts ro = {.snapshot = snap[i]};
                r = compare_all(db, &ro, &sm[i], &rs);
                CHECK_MSG(r == 0, "step %d: snapshot %d view differs from its model (%d)", step, i, r);
            }
        } else {
            /* reopen: snapshots do not survive it */
            for (int i = 0; i < SNAP_MAX; i++) {
                if (!snap[i]) continue;
                kv_snapshot_release(db, snap[i]);
                model_free(&sm[i]);
                snap[i] = NULL;
            }
            kv_free(db);
            CHECK_OK(kv_open(dir, &o, &db));
        }
    }
    int r = compare_all(db, NULL, &m, &rs);
    CHECK_MSG(r == 0, "final iteration differs from the model (%d)", r);
    for (int i = 0; i < SNAP_MAX; i++) {
        if (!snap[i]) continue;
        kv_read_opts ro = {.snapshot = snap[i]};
        r = compare_all(db, &ro, &sm[i], &rs);
        CHECK_MSG(r == 0, "final: snapshot %d view differs from its model (%d)", i, r);
        kv_snapshot_release(db, snap[i]);
        model_free(&sm[i]);
    }
    uint64_t problems = 0;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    kv_batch_free(b);
    kv_free(db);
    model_free(&m);
}

/* Not named "model": tests/run.sh's long run gives every test_db test with that word a million steps. The number of
 * steps here is KVFS_SNAPSHOT_STEPS (default 15,000, about 5 s). */
static int snapshot_steps(void) { return getenv("KVFS_SNAPSHOT_STEPS") ? atoi(getenv("KVFS_SNAPSHOT_STEPS")) : 15000; }
TEST(test_db_snapshots_across_compactions_inline) { run_snapshot_model(snapshot_steps(), false); }
TEST(test_db_snapshots_across_compactions_background) { run_snapshot_model(snapshot_steps(), true); }


/* Every multiplier of at least 2 is allowed: deeper levels' limits saturate instead of wrapping to small numbers
 * (32 MiB x 1000^5 used to wrap, which made compaction push data down for nothing). */
TEST(test_db_level_limits_never_wrap) {
    version_set vs;
    memset(&vs, 0, sizeof vs);
    vs.level1_bytes = 32u << 20;
    for (int mult = 2; mult <= 1 << 20; mult *= 7) {
        vs.level_multiplier = mult;
        for (int l = 2; l < KV_MAX_LEVELS; l++)
            CHECK_MSG(level_max_bytes(&vs, l) >= level_max_bytes(&vs, l - 1), "multiplier %d: level %d below %d", mult,
                      l, l - 1);
    }
}

/* A batch record's op count is checked against the bytes that follow it (4 per op at least) before anything is
 * allocated for the ops: the change feed allocates room for `count` ops, and a count as large as the record (which
 * the old check allowed) made a checksum-valid record of 1 MiB ask for tens of MiB. */
TEST(test_db_batch_record_count_is_bounded_by_its_bytes) {
    uint8_t rec[64];
    put_fixed64(rec, 7);
    uint8_t *ops_at = put_varint64(rec + 8, 1700000000000ull);
    for (uint64_t count = 0; count < 4; count++) {
        uint8_t *p = put_varint64(ops_at, count);
        for (int i = 0; i < 2; i++) { /* two deletes, of "a" and "b" in keyspace 0: 8 bytes */
            *p++ = KV_TYPE_DELETE;
            p = put_varint64(p, 2);
            *p++ = 0;
            *p++ = (uint8_t)('a' + i);
        }
        uint64_t seq;
        int64_t ts;
        size_t n;
        const uint8_t *ops;
        int rc = batch_record_decode(rec, (size_t)(p - rec), &seq, &ts, &n, &ops, "test", 0);
        if (count <= 2) {
            CHECK_OK(rc);
            CHECK_EQ(n, count);
        } else {
            CHECK_EQ(rc, KV_ECORRUPT); /* 3 ops cannot fit in 8 bytes */
        }
    }
    /* a count the size of the record */
    uint8_t *p = put_varint64(ops_at, 40);
    memset(p, 0, 40);
    uint64_t seq;
    int64_t ts;
    size_t n;
    const uint8_t *ops;
    CHECK_EQ(batch_record_decode(rec, (size_t)(p + 40 - rec), &seq, &ts, &n, &ops, "test", 0), KV_ECORRUPT);
}

/* A posix environment that fails the next fsyncs of blob files it opened for writing (fail_blob_syncs), and runs a
 * blob GC pass right after the first fsync of a table once gc_db is set (inside the flush, before it installs the
 * table). */
typedef struct hook_env {
    kv_env e;
    kv_env *base;
    pthread_mutex_t mu;
    kv_file *blobs[64], *ssts[64];
    int nblobs, nssts;
    atomic_int fail_blob_syncs;
    kv_db *_Atomic gc_db;
    int gc_rc, gc_runs;
} hook_env;

static hook_env *H(kv_env *e) { return (hook_env *)e; }

static void hook_note(kv_env *e, const char *p, kv_file *f) {
    pthread_mutex_lock(&H(e)->mu);
    if (strstr(p, ".blob") && H(e)->nblobs < 64) H(e)->blobs[H(e)->nblobs++] = f;
    if (strstr(p, ".sst") && H(e)->nssts < 64) H(e)->ssts[H(e)->nssts++] = f;
    pthread_mutex_unlock(&H(e)->mu);
}

static bool hook_in(kv_env *e, kv_file **list, int *n, kv_file *f, bool remove) {
    bool found = false;
    pthread_mutex_lock(&H(e)->mu);
    for (int i = 0; i < *n && !found; i++)
        if (list[i] == f) {
            found = true;
            if (remove) list[i] = list[--*n];
        }
    pthread_mutex_unlock(&H(e)->mu);
    return found;
}

static int h_open_write(kv_env *e, const char *p, kv_file **o) {
    int rc = H(e)->base->open_write(H(e)->base, p, o);
    if (!rc) hook_note(e, p, *o);
    return rc;
}
static int h_open_append(kv_env *e, const char *p, kv_file **o) {
    int rc = H(e)->base->open_append(H(e)->base, p, o);
    if (!rc) hook_note(e, p, *o);
    return rc;
}
static int h_sync(kv_env *e, kv_file *f) {
    hook_env *h = H(e);
    if (hook_in(e, h->blobs, &h->nblobs, f, false) && atomic_load(&h->fail_blob_syncs) > 0) {
        atomic_fetch_sub(&h->fail_blob_syncs, 1);
        return kv_set_error(KV_EIO, "injected blob fsync failure");
    }
    int rc = h->base->sync(h->base, f);
    kv_db *db = atomic_load(&h->gc_db);
    if (db && hook_in(e, h->ssts, &h->nssts, f, false) && atomic_exchange(&h->gc_db, NULL)) {
        h->gc_rc = kv_blob_gc(db, 0.99);
        h->gc_runs++;
    }
    return rc;
}
static int h_close(kv_env *e, kv_file *f) {
    hook_in(e, H(e)->blobs, &H(e)->nblobs, f, true);
    hook_in(e, H(e)->ssts, &H(e)->nssts, f, true);
    return H(e)->base->close(H(e)->base, f);
}

/* After a blob file's fsync failed, a flush writes copies of the values that use it into a new blob file, which the
 * table it is writing names. Until that table is installed nothing else names the new file: blob GC running
 * meanwhile must not take it for garbage and delete it (it did, once the flush closed the file: the installed table
 * then named a file that was gone, and the values could not be read). */
TEST(test_db_blob_gc_during_flush_spares_the_flush_copies) {
    const char *dir = t_tmpdir();
    hook_env h;
    memset(&h, 0, sizeof h);
    h.base = kv_env_posix();
    h.e = *h.base; /* the posix calls do not use the environment pointer */
    h.e.open_write = h_open_write;
    h.e.open_append = h_open_append;
    h.e.sync = h_sync;
    h.e.close = h_close;
    pthread_mutex_init(&h.mu, NULL);
    kv_options o;
    small_options(&o);
    o.env = &h.e;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    uint8_t v[3000];
    for (char k = 'b'; k <= 'c'; k++) {
        memset(v, k, sizeof v);
        CHECK_OK(kv_put(db, &k, 1, v, sizeof v, 0));
    }
    atomic_store(&h.fail_blob_syncs, 1);
    CHECK(kv_sync(db) != KV_OK); /* the shared blob file's fsync fails: it is listed in blob_lost */
    atomic_store(&h.gc_db, db);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL)); /* the flush copies b and c; GC runs meanwhile */
    CHECK_EQ(h.gc_runs, 1);
    CHECK_OK(h.gc_rc);
    for (char k = 'b'; k <= 'c'; k++) {
        kv_buf got;
        int rc = kv_get(db, NULL, &k, 1, &got);
        CHECK_MSG(rc == KV_OK, "%c after the flush: %s (%s)", k, kv_strerror(rc), kv_errmsg());
        CHECK(got.len == sizeof v && ((uint8_t *)got.data)[0] == (uint8_t)k);
        kv_buf_free(&got);
    }
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
    pthread_mutex_destroy(&h.mu);
}


/* A writer of random keys that stops by itself after `cap` puts (capped then true), or when told to. */
typedef struct steady_writer {
    kv_db *db;
    long cap;
    atomic_bool stop, capped;
    atomic_long puts;
    int errors;
} steady_writer;

static void *steady_writer_main(void *arg) {
    steady_writer *w = arg;
    uint64_t rs = 7;
    char k[32], v[100];
    memset(v, 'x', sizeof v);
    while (!atomic_load(&w->stop)) {
        if (atomic_load(&w->puts) >= w->cap) {
            atomic_store(&w->capped, true);
            break;
        }
        snprintf(k, sizeof k, "k%08llu", (unsigned long long)(t_rand(&rs) % 100000));
        if (kv_put(w->db, k, strlen(k), v, sizeof v, 0)) {
            w->errors++;
            break;
        }
        atomic_fetch_add(&w->puts, 1);
    }
    return NULL;
}

/* kv_compact_range beside a writer that never pauses: background compactions, one after another while levels are
 * over their size, used to take every turn, and the call waited until the writer stopped (here, its cap). */
TEST(test_db_compact_range_is_not_starved_by_background_compactions) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), &o, &db));
    steady_writer w = {.db = db, .cap = 400000};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, steady_writer_main, &w) == 0);
    kv_stats st;
    do { /* background compactions going */
        usleep(10000);
        CHECK_OK(kv_get_stats(db, &st));
    } while (st.compactions < 20 && !atomic_load(&w.capped) && !t_failed());
    long before = atomic_load(&w.puts);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_MSG(!atomic_load(&w.capped), "kv_compact_range returned only once the writer stopped (%ld puts meanwhile)",
              atomic_load(&w.puts) - before);
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);
    CHECK_EQ(w.errors, 0);
    kv_free(db);
}

/* ---- blob GC of a value written while it is copied (BOP_REMAP_IF) ----------------------------------------------- */

/* The value's bytes and the writes that change it (the hook's, between GC's copy and its swap, and a writer's). */
typedef struct remap_ctx {
    kv_db *db;
    pthread_mutex_t mu; /* a write and its model change happen together: the model follows commit order */
    uint8_t *model;
    size_t size;
    uint64_t rs;
    int hook_writes, max_hook_writes, errors; /* max_hook_writes 0: no limit */
    int64_t ts_after_hook;
    uint64_t hook_off, hook_len; /* the hook's write (hook_len 0: random 4 KiB blocks) */
    atomic_bool stop;
} remap_ctx;

static remap_ctx *remap_cur;

static int remap_write(remap_ctx *c, uint64_t off, uint64_t len, uint8_t fill) {
    uint8_t buf[8192];
    memset(buf, fill, len);
    pthread_mutex_lock(&c->mu);
    kv_batch *b;
    int rc = kv_batch_new(&b);
    if (!rc) rc = kv_batch_write_at(b, 0, "v", 1, off, buf, len);
    if (!rc) rc = kv_write(c->db, b, 0, NULL);
    if (!rc) memcpy(c->model + off, buf, len);
    kv_batch_free(b);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

static void remap_hook(kv_db *db, int ks, const void *key, size_t klen) {
    remap_ctx *c = remap_cur;
    if (!c || c->db != db || ks != 0 || klen != 1 || memcmp(key, "v", 1) != 0) return;
    if (c->max_hook_writes && c->hook_writes >= c->max_hook_writes) return;
    uint64_t off = c->hook_len ? c->hook_off : (t_rand(&c->rs) % (c->size / 4096)) * 4096;
    uint64_t len = c->hook_len ? c->hook_len : 4096;
    if (remap_write(c, off, len, (uint8_t)(0x40 + c->hook_writes))) c->errors++;
    c->hook_writes++;
    kv_info info;
    kv_buf v;
    if (kv_get_with_info(db, NULL, "v", 1, &v, &info)) c->errors++;
    else kv_buf_free(&v);
    c->ts_after_hook = info.timestamp_ms;
    usleep(20000); /* a swap that took the time of the GC would show a later one */
}

static void remap_verify(remap_ctx *c) {
    kv_buf v;
    CHECK_OK(kv_get(c->db, NULL, "v", 1, &v));
    CHECK_EQ(v.len, c->size);
    const uint8_t *d = v.data;
    size_t bad = 0;
    while (bad < c->size && d[bad] == c->model[bad]) bad++;
    CHECK_MSG(bad == c->size, "byte %zu reads %d, the model has %d", bad, bad < v.len ? d[bad] : -1,
              bad < c->size ? c->model[bad] : -1);
    kv_buf_free(&v);
    uint64_t problems = 1;
    CHECK_OK(kv_check(c->db, print_problem, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
}

/* Verify, reopen, verify again; then free c. */
static void remap_finish(remap_ctx *c, const char *dir, const kv_options *o) {
    remap_verify(c);
    kv_free(c->db);
    CHECK_OK(kv_open(dir, o, &c->db));
    remap_verify(c);
    kv_free(c->db);
    free(c->model);
    pthread_mutex_destroy(&c->mu);
}

/* The value's direct reference (paged: its first page's extents are not looked at; paged is set). */
static void remap_ref(kv_db *db, blob_ref *r, bool *paged) {
    int type;
    int64_t ts;
    uint64_t fseq;
    kv_bytes p = {0};
    CHECK_EQ(db_get_entry(db, (const uint8_t *)"\0v", 2, DB_SEQ_LATEST, &type, &ts, &p, &fseq), 1);
    CHECK_EQ(type, KV_TYPE_BLOB);
    *paged = blob_ref_is_paged(p.data, p.len);
    if (!*paged) CHECK_OK(blob_ref_decode(p.data, p.len, r));
    bytes_free(&p);
}

static bool blob_file_exists(const char *dir, uint64_t no) {
    char path[600];
    snprintf(path, sizeof path, "%s/%06llu.blob", dir, (unsigned long long)no);
    struct stat st;
    return stat(path, &st) == 0;
}

/* A value written between GC's copy and its swap: the swap moves what the value still reads from the old file, the
 * write stays; the old file goes. (The swap used to apply only to an unchanged value: the file stayed.) */
TEST(test_db_blob_gc_moves_a_value_changed_under_its_copy) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, BLOB_TEST_FILE)) return;
    remap_ctx c = {.db = db, .size = 6 * 8192, .hook_off = 10000, .hook_len = 3000, .max_hook_writes = 1};
    pthread_mutex_init(&c.mu, NULL);
    c.model = calloc(1, c.size);
    for (int i = 0; i < 6; i++) CHECK_OK(remap_write(&c, (uint64_t)i * 8192, 8192, (uint8_t)(i + 1)));
    static uint8_t junk[60000];
    CHECK_OK(kv_put(db, "junk", 4, junk, sizeof junk, 0));
    CHECK_OK(kv_put(db, "next", 4, junk, 2000, 0)); /* starts a new file: the first is no longer appended to */
    CHECK_OK(kv_delete(db, "junk", 4, 0));
    blob_ref r = {0};
    bool paged;
    remap_ref(db, &r, &paged);
    CHECK(!paged && r.n == 6);
    uint64_t old = r.ext[0].file_no;
    remap_cur = &c;
    db_gc_copied_hook = remap_hook;
    CHECK_OK(kv_blob_gc(db, 0.3));
    db_gc_copied_hook = NULL;
    remap_cur = NULL;
    CHECK_EQ(c.hook_writes, 1);
    CHECK_EQ(c.errors, 0);
    CHECK_MSG(!blob_file_exists(dir, old), "blob file %llu is still there", (unsigned long long)old);
    kv_info info;
    kv_buf v;
    CHECK_OK(kv_get_with_info(db, NULL, "v", 1, &v, &info));
    kv_buf_free(&v);
    CHECK_EQ(info.timestamp_ms, c.ts_after_hook);
    blob_ref_free(&r);
    remap_finish(&c, dir, &o);
}

static void *remap_writer(void *arg) {
    remap_ctx *c = arg;
    uint64_t rs = t_seed() ^ 991;
    for (int i = 0; !atomic_load(&c->stop); i++) { /* into the second half: the first keeps bytes of the old file */
        uint64_t off = c->size / 2 + (t_rand(&rs) % (c->size / 1024)) * 512, len = 512 + t_rand(&rs) % 4096;
        if (off + len > c->size) len = c->size - off;
        if (remap_write(c, off, len, (uint8_t)(0x80 + i % 100))) c->errors++;
    }
    return NULL;
}

/* The same for a paged value, written all the time by another thread while passes run. */
TEST(test_db_blob_gc_moves_a_paged_value_written_meanwhile) {
    char dir[512];
    kv_options o;
    kv_options_init(&o);
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    o.blob_threshold = 1024;
    o.blob_file_bytes = BLOB_TEST_FILE;
    o.blob_page_extents = 4;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    remap_ctx c = {.db = db, .size = 256 << 10, .rs = t_seed() ^ 5};
    pthread_mutex_init(&c.mu, NULL);
    c.model = calloc(1, c.size);
    for (size_t i = 0; i < c.size; i++) c.model[i] = (uint8_t)(i * 7);
    CHECK_OK(kv_put(db, "v", 1, c.model, c.size, 0)); /* one record: its file holds nothing else */
    blob_ref r = {0};
    bool paged;
    remap_ref(db, &r, &paged);
    CHECK(!paged && r.n == 1);
    uint64_t first = r.ext[0].file_no;
    blob_ref_free(&r);
    for (int i = 0; i < 120; i++) { /* most of it overwritten in pieces: a paged reference, the file mostly garbage */
        uint64_t off = (t_rand(&c.rs) % (c.size / 2048)) * 2048, len = 2048 + 1024 * (uint64_t)(i % 3);
        CHECK_OK(remap_write(&c, off, len > c.size - off ? c.size - off : len, (uint8_t)i));
    }
    for (int i = 0; i < 64; i++) CHECK_OK(remap_write(&c, (uint64_t)i * 4096, 2048, (uint8_t)(i + 3)));
    remap_ref(db, &r, &paged);
    CHECK(paged);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, remap_writer, &c), 0);
    remap_cur = &c;
    db_gc_copied_hook = remap_hook;
    for (int pass = 0; pass < 4; pass++) CHECK_OK(kv_blob_gc(db, 0.5));
    bool gone = !blob_file_exists(dir, first);
    db_gc_copied_hook = NULL;
    remap_cur = NULL;
    atomic_store(&c.stop, true);
    pthread_join(th, NULL);
    CHECK_EQ(c.errors, 0);
    CHECK(c.hook_writes >= 1);
    CHECK_MSG(gone, "blob file %llu is still there after %d changes under a copy", (unsigned long long)first,
              c.hook_writes);
    remap_verify(&c);
    CHECK_OK(kv_blob_gc(db, 0.5));
    remap_finish(&c, dir, &o);
}

/* A write that continues a record of the value (the last of the shared file, of whole chunks) merges with its
 * extent: the one extent then holds bytes that were copied and bytes written after. The swap splits it, moving the
 * first to the copy and keeping the second. */
TEST(test_db_blob_gc_splits_an_extent_grown_under_its_copy) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 1 << 20)) return;
    remap_ctx c = {.db = db, .size = 8192 + BLOB_CHUNK + 4096, .hook_off = 8192 + BLOB_CHUNK, .hook_len = 4096,
                   .max_hook_writes = 1};
    pthread_mutex_init(&c.mu, NULL);
    c.model = calloc(1, c.size);
    CHECK_OK(remap_write(&c, 0, 8192, 1));
    static uint8_t junk[1 << 20];
    CHECK_OK(kv_put(db, "junk", 4, junk, sizeof junk, 0)); /* fills the first file */
    uint8_t *big = malloc(BLOB_CHUNK);
    memset(big, 2, BLOB_CHUNK);
    pthread_mutex_lock(&c.mu);
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_write_at(b, 0, "v", 1, 8192, big, BLOB_CHUNK)); /* a record of one whole chunk, in a new file */
    CHECK_OK(kv_write(db, b, 0, NULL));
    memcpy(c.model + 8192, big, BLOB_CHUNK);
    kv_batch_free(b);
    pthread_mutex_unlock(&c.mu);
    CHECK_OK(kv_delete(db, "junk", 4, 0));
    c.size = 8192 + BLOB_CHUNK; /* until the hook writes */
    blob_ref r = {0};
    bool paged;
    remap_ref(db, &r, &paged);
    CHECK(!paged && r.n == 2);
    uint64_t old = r.ext[0].file_no, shared = r.ext[1].file_no;
    CHECK(old != shared);
    blob_ref_free(&r);
    remap_cur = &c;
    db_gc_copied_hook = remap_hook;
    CHECK_OK(kv_blob_gc(db, 0.3));
    db_gc_copied_hook = NULL;
    remap_cur = NULL;
    c.size += 4096;
    CHECK_EQ(c.hook_writes, 1);
    CHECK_EQ(c.errors, 0);
    CHECK_MSG(!blob_file_exists(dir, old), "blob file %llu is still there", (unsigned long long)old);
    remap_ref(db, &r, &paged);
    CHECK(!paged);
    /* bytes [0, 8192 + BLOB_CHUNK) come from the copy, the last 4096 from the shared file */
    uint64_t pos = 0;
    for (size_t i = 0; i < r.n; i++) {
        uint64_t end = pos + r.ext[i].len;
        if (end <= 8192 + BLOB_CHUNK) CHECK_MSG(r.ext[i].file_no != shared && r.ext[i].file_no != old,
                                                "bytes %llu.. still in file %llu", (unsigned long long)pos,
                                                (unsigned long long)r.ext[i].file_no);
        else CHECK_MSG(pos >= 8192 + BLOB_CHUNK && r.ext[i].file_no == shared, "extent %zu at %llu, file %llu", i,
                       (unsigned long long)pos, (unsigned long long)r.ext[i].file_no);
        pos = end;
    }
    CHECK_EQ(pos, c.size);
    blob_ref_free(&r);
    free(big);
    remap_finish(&c, dir, &o);
}

/* ---- remap stress: random writes and truncations between GC's copy and its swap, checked against a model ------ */

typedef struct remap_fuzz {
    kv_db *db;
    uint8_t *model;
    size_t size, cap;
    uint64_t rs;
    int ops, hooks, errors;
    bool truncates;
    unsigned wflags; /* KV_SYNC: every write is durable once it returns */
} remap_fuzz;

static remap_fuzz *remap_fuzz_cur;

static int remap_fuzz_op(remap_fuzz *f) {
    kv_batch *b;
    int rc = kv_batch_new(&b);
    if (rc) return rc;
    uint64_t r = t_rand(&f->rs) % 20;
    if (f->truncates && r < 2) {
        size_t ns = r == 0 ? 2048 + (size_t)(t_rand(&f->rs) % (f->cap / 4)) : (size_t)(t_rand(&f->rs) % 3000);
        rc = kv_batch_truncate(b, 0, "v", 1, ns);
        if (!rc) rc = kv_write(f->db, b, f->wflags, NULL);
        if (!rc) {
            if (ns > f->size) memset(f->model + f->size, 0, ns - f->size);
            f->size = ns;
        }
    } else {
        static uint8_t buf[2 * BLOB_CHUNK];
        size_t len, off;
        if (r < 4 && f->size + 2 * BLOB_CHUNK <= f->cap) { /* whole chunks at the end: records that merge */
            len = (r == 2 ? 1 : 2) * (size_t)BLOB_CHUNK;
            off = f->size;
        } else {
            len = 1 + (size_t)(t_rand(&f->rs) % (r < 10 ? 600 : 9000));
            off = (size_t)(t_rand(&f->rs) % (f->size + 100));
        }
        if (off > f->cap - 1) off = f->cap - 1;
        if (off + len > f->cap) len = f->cap - off;
        for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)t_rand(&f->rs);
        rc = kv_batch_write_at(b, 0, "v", 1, off, buf, len);
        if (!rc) rc = kv_write(f->db, b, f->wflags, NULL);
        if (!rc) {
            if (off > f->size) memset(f->model + f->size, 0, off - f->size);
            memcpy(f->model + off, buf, len);
            if (off + len > f->size) f->size = off + len;
        }
    }
    kv_batch_free(b);
    f->ops++;
    return rc;
}

static void remap_fuzz_hook(kv_db *db, int ks, const void *key, size_t klen) {
    remap_fuzz *f = remap_fuzz_cur;
    if (!f || f->db != db || ks != 0 || klen != 1 || memcmp(key, "v", 1) != 0) return;
    int n = 1 + (int)(t_rand(&f->rs) % 6);
    f->hooks++;
    for (int i = 0; i < n; i++)
        if (remap_fuzz_op(f)) f->errors++;
}

static void remap_fuzz_check(remap_fuzz *f, int round, bool *ok) {
    *ok = false;
    kv_buf v;
    int rc = kv_get(f->db, NULL, "v", 1, &v);
    CHECK_MSG(rc == KV_OK, "round %d: get: %s (%s)", round, kv_strerror(rc), kv_errmsg());
    size_t bad = 0;
    const uint8_t *d = v.data;
    while (v.len == f->size && bad < f->size && d[bad] == f->model[bad]) bad++;
    uint64_t vlen = v.len;
    int got = bad < v.len ? d[bad] : -1;
    kv_buf_free(&v);
    CHECK_MSG(vlen == f->size, "round %d: size %llu, the model has %zu", round, (unsigned long long)vlen, f->size);
    CHECK_MSG(bad == f->size, "round %d: byte %zu of %zu reads %d, the model has %d", round, bad, f->size, got,
              f->model[bad]);
    uint64_t problems = 1;
    CHECK_OK(kv_check(f->db, print_problem, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    *ok = true;
}

static void remap_fuzz_run(int page_extents, bool truncates, uint64_t seed) {
    char dir[512];
    kv_options o;
    kv_options_init(&o);
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    o.blob_threshold = 1024;
    o.blob_file_bytes = 256 << 10;
    o.blob_page_extents = page_extents;
    remap_fuzz f = {.cap = 2 << 20, .rs = seed, .truncates = truncates};
    CHECK_OK(kv_open(dir, &o, &f.db));
    f.model = calloc(1, f.cap);
    f.size = 128 << 10;
    for (size_t i = 0; i < f.size; i++) f.model[i] = (uint8_t)(i * 13 + 1);
    CHECK_OK(kv_put(f.db, "v", 1, f.model, f.size, 0));
    remap_fuzz_cur = &f;
    db_gc_copied_hook = remap_fuzz_hook;
    bool ok = true;
    for (int round = 0; round < 40 && ok; round++) {
        for (int i = 0; i < 30; i++) CHECK_OK(remap_fuzz_op(&f));
        int rc = kv_blob_gc(f.db, 0.2);
        CHECK_MSG(rc == KV_OK, "round %d: gc: %s (%s)", round, kv_strerror(rc), kv_errmsg());
        ok = rc == KV_OK;
        if (ok) remap_fuzz_check(&f, round, &ok);
    }
    db_gc_copied_hook = NULL;
    remap_fuzz_cur = NULL;
    CHECK_EQ(f.errors, 0);
    CHECK_MSG(f.hooks > 0, "no value was written between a copy and its swap");
    if (ok) {
        kv_free(f.db);
        CHECK_OK(kv_open(dir, &o, &f.db));
        remap_fuzz_check(&f, -1, &ok);
    }
    kv_free(f.db);
    free(f.model);
}

/* Rounds of random writes (small and large, unaligned, past the end, whole chunks appended so that records merge) and
 * truncations (up, down, below the blob threshold), then a GC call whose hook makes 1-6 more between each copy and its
 * swap; after each call the value must read as the model, kv_check must pass, and again after a reopen. With 4
 * extents a page the value is paged most of the time (pages split, windows of pages rewritten, the paged form left
 * for a direct one); with 128 it stays direct. */
TEST(test_db_blob_gc_remap_fuzz_paged) {
    for (uint64_t s = 1; s <= 4; s++) remap_fuzz_run(4, false, t_seed() ^ s);
}

TEST(test_db_blob_gc_remap_fuzz_paged_truncates) {
    for (uint64_t s = 1; s <= 4; s++) remap_fuzz_run(4, true, t_seed() ^ (s * 77));
}

TEST(test_db_blob_gc_remap_fuzz_direct) {
    for (uint64_t s = 1; s <= 4; s++) remap_fuzz_run(128, true, t_seed() ^ (s * 31));
}

/* The same with every write synced and a power loss after each GC call: the store comes back with the model's bytes
 * (GC deletes old files only after a kv_sync that makes the remapped reference, and the pages it wrote to the shared
 * file, durable). */
TEST(test_db_blob_gc_remap_power_loss) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    remap_fuzz f = {.cap = 1 << 20, .rs = t_seed() ^ 0x5150, .truncates = true, .wflags = KV_SYNC};
    f.model = calloc(1, f.cap);
    f.size = 128 << 10;
    for (size_t i = 0; i < f.size; i++) f.model[i] = (uint8_t)(i * 13 + 1);
    bool ok = true;
    for (int round = 0; round < 16 && ok; round++) {
        kv_env *env = kv_fault_env_new(kv_env_posix());
        CHECK(env != NULL);
        kv_fault_env_set_reorder(env, round % 2);
        kv_options o;
        kv_options_init(&o);
        o.blob_threshold = 1024;
        o.blob_file_bytes = 256 << 10;
        o.blob_page_extents = round % 4 < 2 ? 4 : 128;
        o.env = env;
        CHECK_OK(kv_open(dir, &o, &f.db));
        if (round == 0) CHECK_OK(kv_put(f.db, "v", 1, f.model, f.size, KV_SYNC));
        remap_fuzz_cur = &f;
        db_gc_copied_hook = remap_fuzz_hook;
        for (int g = 0; g < 4 && ok; g++) {
            for (int i = 0; i < 30; i++) CHECK_OK(remap_fuzz_op(&f));
            int rc = kv_blob_gc(f.db, 0.2);
            CHECK_MSG(rc == KV_OK, "round %d: gc: %s (%s)", round, kv_strerror(rc), kv_errmsg());
        }
        db_gc_copied_hook = NULL;
        remap_fuzz_cur = NULL;
        CHECK_EQ(f.errors, 0);
        kv_fault_env_crash(env);
        kv_close(f.db);
        kv_free(f.db);
        CHECK_OK(kv_fault_env_apply_crash(env));
        env->destroy(env);
        o.env = NULL;
        int rc = kv_open(dir, &o, &f.db);
        CHECK_MSG(rc == KV_OK, "round %d: reopen after the power loss: %s (%s)", round, kv_strerror(rc), kv_errmsg());
        remap_fuzz_check(&f, round, &ok);
        kv_free(f.db);
    }
    free(f.model);
}

/* ---- blob GC and values that share records (kv_batch_copy_range) ------------------------------------------------ */

typedef struct shared_copy {
    const char *key;
    uint64_t off, len; /* the range of src it holds */
} shared_copy;

/* Each copy reads its range of src, and so does key (unless NULL: deleted), and kv_check passes. */
static void gc_shared_check(kv_db *db, const char *key, const uint8_t *src, size_t size, const shared_copy *cs,
                            size_t n) {
    kv_buf v;
    if (key) {
        CHECK_OK(kv_get(db, NULL, key, strlen(key), &v));
        CHECK_MEM(v.data, v.len, src, size);
        kv_buf_free(&v);
    }
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(kv_get(db, NULL, cs[i].key, strlen(cs[i].key), &v));
        CHECK_MSG(v.len == cs[i].len && memcmp(v.data, src + cs[i].off, v.len) == 0, "%s reads wrong", cs[i].key);
        kv_buf_free(&v);
    }
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, print_problem, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
}

/* Ranges of a fragmented value copied into other keys ("a", "b", "c" overlapping in part, "d" all of it), and the
 * rest of its file deleted: the pass that copies the file out writes each byte of the value once, and the copies read
 * their bytes from that one copy (GC used to copy a shared range once for each value naming it: 3.4 MiB here for
 * 1 MiB of data). */
static void gc_shared_run(int page_extents) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_options o;
    kv_options_init(&o);
    o.blob_threshold = 1024;
    o.blob_page_extents = page_extents;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    enum { SIZE = 1 << 20, JUNK = 4 << 20 };
    uint8_t *src = malloc(SIZE), *junk = calloc(1, JUNK);
    uint64_t rs = t_seed() ^ 0x5a5a;
    for (size_t i = 0; i < SIZE; i++) src[i] = (uint8_t)t_rand(&rs);
    CHECK_OK(kv_put(db, "src", 3, src, SIZE, 0));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    for (int i = 0; i < 24; i++) { /* small writes: about 50 extents (paged, with 4 a page) */
        size_t off = (size_t)(t_rand(&rs) % (SIZE - 100));
        for (size_t j = 0; j < 100; j++) src[off + j] = (uint8_t)t_rand(&rs);
        kv_batch_clear(b);
        CHECK_OK(kv_batch_write_at(b, 0, "src", 3, off, src + off, 100));
        CHECK_OK(kv_write(db, b, 0, NULL));
    }
    CHECK_OK(kv_put(db, "junk", 4, junk, JUNK, 0));
    static const shared_copy cs[] = {{"a", 100000, 500000}, {"b", 400000, 600000}, {"c", 0, 300000}, {"d", 0, SIZE}};
    enum { NC = sizeof cs / sizeof *cs };
    kv_batch_clear(b);
    for (size_t i = 0; i < NC; i++)
        CHECK_OK(kv_batch_copy_range(b, 0, "src", 3, cs[i].off, 0, cs[i].key, 1, 0, cs[i].len));
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_delete(db, "junk", 4, 0));
    kv_stats before, after;
    CHECK_OK(kv_get_stats(db, &before));
    CHECK_OK(kv_blob_gc(db, 0.0)); /* closes the shared file, copies it out, deletes it */
    CHECK_OK(kv_get_stats(db, &after));
    printf("# %d extents a page: blob bytes %llu before GC, %llu after (%llu file(s))\n", page_extents,
           (unsigned long long)before.blob_bytes, (unsigned long long)after.blob_bytes,
           (unsigned long long)after.blob_files);
    CHECK_MSG(after.blob_bytes < SIZE + (64 << 10), "GC left %llu blob bytes for %u bytes of data",
              (unsigned long long)after.blob_bytes, SIZE);
    gc_shared_check(db, "src", src, SIZE, cs, NC);
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    gc_shared_check(db, "src", src, SIZE, cs, NC);
    kv_batch_free(b);
    kv_free(db);
    free(src);
    free(junk);
}

TEST(test_db_blob_gc_copies_shared_bytes_once) { gc_shared_run(BLOB_PAGE_EXTENTS_DEFAULT); }
TEST(test_db_blob_gc_copies_shared_bytes_once_paged) { gc_shared_run(BLOB_PAGE_EXTENTS_MIN); }

/* A file whose only references are copies of one small range of a value since deleted: a pass sees it as mostly
 * garbage, copies the range out (once) and deletes the file. The range used to be counted once for each copy: eight
 * copies of 100 KiB made the 1 MiB file look 78% live, and a pass at ratio 0.5 kept it. */
TEST(test_db_blob_gc_counts_a_shared_range_once) {
    char dir[512];
    kv_options o;
    kv_db *db;
    if (!open_blob_store(dir, &o, &db, 512 << 10)) return;
    enum { SIZE = 1 << 20, PART = 100 << 10 };
    static const shared_copy cs[] = {{"c0", 0, PART}, {"c1", 0, PART}, {"c2", 0, PART}, {"c3", 0, PART},
                                     {"c4", 0, PART}, {"c5", 0, PART}, {"c6", 0, PART}, {"c7", 0, PART}};
    enum { NC = sizeof cs / sizeof *cs };
    uint8_t *src = malloc(SIZE);
    uint64_t rs = t_seed() ^ 0xc0;
    for (size_t i = 0; i < SIZE; i++) src[i] = (uint8_t)t_rand(&rs);
    CHECK_OK(kv_put(db, "v", 1, src, SIZE, 0));
    CHECK_OK(kv_put(db, "next", 4, src, 2000, 0)); /* starts a new file: the first is no longer appended to */
    blob_ref r = {0};
    bool paged;
    remap_ref(db, &r, &paged);
    uint64_t old = r.ext[0].file_no;
    blob_ref_free(&r);
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    for (size_t i = 0; i < NC; i++) CHECK_OK(kv_batch_copy_range(b, 0, "v", 1, 0, 0, cs[i].key, 2, 0, PART));
    CHECK_OK(kv_batch_delete(b, "v", 1));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_batch_free(b);
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_MSG(!blob_file_exists(dir, old), "blob file %llu is still there", (unsigned long long)old);
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    printf("# after GC: %llu blob file(s), %llu bytes\n", (unsigned long long)st.blob_files,
           (unsigned long long)st.blob_bytes);
    CHECK(st.blob_bytes < PART + (16 << 10));
    gc_shared_check(db, NULL, src, SIZE, cs, NC);
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    gc_shared_check(db, NULL, src, SIZE, cs, NC);
    kv_free(db);
    free(src);
}

/* ---- shared-range stress: copies of copies, writes and deletes, GC passes (some with writes between a copy and its
 * swap), checked against a model ----------------------------------------------------------------------------------- */

enum { SF_KEYS = 6, SF_CAP = 192 << 10 };

typedef struct shared_fuzz {
    kv_db *db;
    uint8_t *model[SF_KEYS];
    size_t size[SF_KEYS]; /* 0: absent */
    uint64_t rs;
    int hooks, errors;
} shared_fuzz;

static shared_fuzz *shared_fuzz_cur;

/* One random change: a write, a range copied from one key to another (mostly large: shared records), a delete. */
static int shared_fuzz_op(shared_fuzz *f) {
    int k = (int)(t_rand(&f->rs) % SF_KEYS), from = (int)(t_rand(&f->rs) % SF_KEYS);
    char key[2] = {(char)('a' + k), 0}, fkey[2] = {(char)('a' + from), 0};
    uint64_t r = t_rand(&f->rs) % 10;
    kv_batch *b;
    int rc = kv_batch_new(&b);
    if (rc) return rc;
    if (r < 1 && f->size[k]) {
        rc = kv_batch_delete(b, key, 1);
        if (!rc) rc = kv_write(f->db, b, 0, NULL);
        if (!rc) f->size[k] = 0;
    } else if (r < 4 || !f->size[from]) {
        static uint8_t buf[8192];
        size_t len = 1 + (size_t)(t_rand(&f->rs) % (r < 2 ? 300 : sizeof buf));
        size_t off = (size_t)(t_rand(&f->rs) % (f->size[k] + 2000));
        if (off + len > SF_CAP) off = SF_CAP - len;
        for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)t_rand(&f->rs);
        rc = kv_batch_write_at(b, 0, key, 1, off, buf, len);
        if (!rc) rc = kv_write(f->db, b, 0, NULL);
        if (!rc) {
            if (off > f->size[k]) memset(f->model[k] + f->size[k], 0, off - f->size[k]);
            memcpy(f->model[k] + off, buf, len);
            if (off + len > f->size[k]) f->size[k] = off + len;
        }
    } else {
        size_t foff = (size_t)(t_rand(&f->rs) % f->size[from]), len = 1024 + (size_t)(t_rand(&f->rs) % (64 << 10));
        if (len > f->size[from] - foff) len = f->size[from] - foff;
        size_t off = (size_t)(t_rand(&f->rs) % (f->size[k] + 1));
        if (off + len > SF_CAP) len = SF_CAP - off;
        rc = kv_batch_copy_range(b, 0, fkey, 1, foff, 0, key, 1, off, len);
        if (!rc) rc = kv_write(f->db, b, 0, NULL);
        if (!rc) {
            memmove(f->model[k] + off, f->model[from] + foff, len);
            if (off + len > f->size[k]) f->size[k] = off + len;
        }
    }
    kv_batch_free(b);
    return rc;
}

static void shared_fuzz_hook(kv_db *db, int ks, const void *key, size_t klen) {
    (void)ks, (void)key, (void)klen;
    shared_fuzz *f = shared_fuzz_cur;
    if (!f || f->db != db || t_rand(&f->rs) % 3) return;
    f->hooks++;
    if (shared_fuzz_op(f)) f->errors++;
}

static void shared_fuzz_check(shared_fuzz *f, int round, bool *ok) {
    *ok = false;
    for (int k = 0; k < SF_KEYS; k++) {
        char key[2] = {(char)('a' + k), 0};
        kv_buf v;
        int rc = kv_get(f->db, NULL, key, 1, &v);
        if (rc == KV_OK) {
            bool same = v.len == f->size[k] && memcmp(v.data, f->model[k], v.len) == 0;
            kv_buf_free(&v);
            CHECK_MSG(same && f->size[k], "round %d: %s reads wrong", round, key);
        } else {
            CHECK_MSG(rc == KV_ENOTFOUND && !f->size[k], "round %d: get %s: %s (%s)", round, key, kv_strerror(rc),
                      kv_errmsg());
        }
    }
    uint64_t problems = 1;
    CHECK_OK(kv_check(f->db, print_problem, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    *ok = true;
}

/* Changes, then a GC pass whose hook makes more between some copies and their swaps, then the check. */
static void shared_fuzz_round(shared_fuzz *f, int round, bool *ok) {
    *ok = false;
    for (int i = 0; i < 25; i++) CHECK_OK(shared_fuzz_op(f));
    shared_fuzz_cur = f;
    db_gc_copied_hook = shared_fuzz_hook;
    int rc = kv_blob_gc(f->db, round % 3 ? 0.0 : 0.5);
    db_gc_copied_hook = NULL;
    shared_fuzz_cur = NULL;
    CHECK_MSG(rc == KV_OK, "round %d: gc: %s (%s)", round, kv_strerror(rc), kv_errmsg());
    shared_fuzz_check(f, round, ok);
}

/* Keys that keep copying ranges of each other (and of copies), written and deleted between GC passes that copy the
 * shared records out, some with a change made between a value's copy and its swap: every key reads as the model and
 * kv_check passes after each pass, and after a reopen. The last run lets a pass hold only 8 ranges to count shared
 * bytes once: the rest are counted as they come. */
TEST(test_db_blob_gc_shared_ranges_fuzz) {
    size_t ranges_max = db_gc_ranges_max;
    for (int run = 0; run < 3; run++) {
        int page_extents = run == 1 ? 128 : 4;
        db_gc_ranges_max = run == 2 ? 8 : ranges_max;
        char dir[512];
        snprintf(dir, sizeof dir, "%s", t_tmpdir());
        kv_options o;
        kv_options_init(&o);
        o.blob_threshold = 1024;
        o.blob_file_bytes = 256 << 10;
        o.blob_page_extents = page_extents;
        shared_fuzz f = {.rs = t_seed() ^ (uint64_t)(run * 7 + 4)};
        CHECK_OK(kv_open(dir, &o, &f.db));
        for (int k = 0; k < SF_KEYS; k++) f.model[k] = malloc(SF_CAP);
        bool ok = true;
        for (int round = 0; round < 30 && ok; round++) shared_fuzz_round(&f, round, &ok);
        CHECK_EQ(f.errors, 0);
        CHECK(f.hooks > 0);
        kv_free(f.db);
        CHECK_OK(kv_open(dir, &o, &f.db));
        if (ok) shared_fuzz_check(&f, -1, &ok);
        kv_free(f.db);
        for (int k = 0; k < SF_KEYS; k++) free(f.model[k]);
    }
    db_gc_ranges_max = ranges_max;
}

/* Read-only handles share a store (a shared lock): any number open together, in one process or several, while an
 * open for writing is refused; and while a writer has it, read-only opens are refused. */
TEST(test_db_read_only_handles_share_the_store_and_exclude_a_writer) {
    const char *dir = t_tmpdir();
    kv_db *w, *r1, *r2, *x;
    CHECK_OK(kv_open(dir, NULL, &w));
    CHECK_OK(kv_put(w, "k", 1, "v", 1, 0)); /* left in the log: the readers replay it, writing nothing */
    kv_options ro;
    kv_options_init(&ro);
    ro.read_only = true;
    CHECK_EQ(kv_open(dir, &ro, &r1), KV_EBUSY);
    kv_free(w);
    CHECK_OK(kv_open(dir, &ro, &r1));
    CHECK_OK(kv_open(dir, &ro, &r2));
    char buf[8];
    CHECK_OK(get_str(r1, "k", buf, sizeof buf));
    CHECK(strcmp(buf, "v") == 0);
    CHECK_OK(get_str(r2, "k", buf, sizeof buf));
    CHECK_EQ(kv_open(dir, NULL, &x), KV_EBUSY);
    kv_free(r1);
    CHECK_EQ(kv_open(dir, NULL, &x), KV_EBUSY); /* r2 still reads */
    kv_free(r2);
    CHECK_OK(kv_open(dir, NULL, &x));
    CHECK_OK(get_str(x, "k", buf, sizeof buf));
    kv_free(x);
}

/* A writer that waits holds the intent: read-only opens are refused meanwhile, as if it had the store, while it gets
 * in as soon as the readers already open close; one waiting writer at a time holds it; releasing it lets readers in. An
 * environment without the intent (the fault one over one without) gives nothing to hold. */
TEST(test_db_a_waiting_writer_goes_before_new_readers) {
    const char *dir = t_tmpdir();
    kv_db *w, *r1, *x;
    CHECK_OK(kv_open(dir, NULL, &w));
    CHECK_OK(kv_put(w, "k", 1, "v", 1, 0));
    kv_free(w);
    kv_options ro;
    kv_options_init(&ro);
    ro.read_only = true;
    CHECK_OK(kv_open(dir, &ro, &r1));
    CHECK_EQ(kv_open(dir, NULL, &w), KV_EBUSY);
    kv_intent *in, *in2;
    CHECK_OK(kv_intent_take(dir, NULL, &in));
    CHECK(in != NULL);
    CHECK_EQ(kv_intent_take(dir, NULL, &in2), KV_EBUSY);
    CHECK(strstr(kv_errmsg(), "another writer waits") != NULL);
    CHECK_EQ(kv_open(dir, &ro, &x), KV_EBUSY);
    CHECK(strstr(kv_errmsg(), "a writer waits for it") != NULL);
    char buf[8];
    CHECK_OK(get_str(r1, "k", buf, sizeof buf)); /* a reader already in goes on */
    kv_free(r1);
    CHECK_OK(kv_open(dir, NULL, &w));
    kv_intent_release(in);
    CHECK_OK(kv_put(w, "k", 1, "w", 1, 0));
    CHECK_EQ(kv_open(dir, &ro, &x), KV_EBUSY);
    kv_free(w);
    CHECK_OK(kv_open(dir, &ro, &x));
    CHECK_OK(get_str(x, "k", buf, sizeof buf));
    CHECK(strcmp(buf, "w") == 0);
    kv_free(x);
    kv_intent_release(NULL);
    CHECK_EQ(kv_intent_take(NULL, NULL, &in), KV_EINVAL);
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/missing", dir);
    CHECK_EQ(kv_intent_take(missing, NULL, &in), KV_ENOTFOUND);

    kv_env *fe = kv_fault_env_new(kv_env_posix());
    CHECK(fe && fe->lock_intent);
    kv_options fo;
    kv_options_init(&fo);
    fo.env = fe;
    CHECK_OK(kv_intent_take(dir, &fo, &in));
    CHECK(in != NULL);
    fo.read_only = true;
    CHECK_EQ(kv_open(dir, &fo, &x), KV_EBUSY);
    kv_intent_release(in);
    CHECK_OK(kv_open(dir, &fo, &x));
    kv_free(x);
    fe->destroy(fe);
    kv_env plain = *kv_env_posix();
    plain.lock_intent = NULL;
    fe = kv_fault_env_new(&plain);
    CHECK(fe && !fe->lock_intent);
    fo.env = fe;
    CHECK_OK(kv_intent_take(dir, &fo, &in));
    CHECK(in == NULL);
    kv_intent_release(in);
    fe->destroy(fe);
}

/* The log's runs of compaction failures (db_compact_run_ends): a success between failures (another level's
 * compaction, while one table fails every time) does not end the run, so the log does not hear "works again" and
 * "failed" anew at each turn; a success that leaves nothing to compact, or three in a row, does. */
TEST(test_db_a_compaction_run_ends_only_when_compactions_work_again) {
    unsigned ok = 0;
    CHECK(!db_compact_run_ends(0, &ok, true)); /* no run: nothing to end */
    /* F S F S F S ...: one success at a time, more still due */
    for (int i = 1; i < 20; i++) {
        CHECK(!db_compact_run_ends((uint64_t)i, &ok, false));
        ok = 0; /* the next failure resets the streak (compact_main) */
    }
    /* three in a row end it */
    CHECK(!db_compact_run_ends(5, &ok, false));
    CHECK(!db_compact_run_ends(5, &ok, false));
    CHECK(db_compact_run_ends(5, &ok, false));
    CHECK_EQ(ok, 0);
    /* one that leaves nothing to compact ends it at once */
    CHECK(db_compact_run_ends(2, &ok, true));
    CHECK_EQ(ok, 0);
}

/* kv_snapshot_release with a NULL store does nothing (the snapshot stays on its store's list, still holding back
 * what it sees), and kv_free frees it: no leak under ASan, no crash. */
TEST(test_db_snapshot_release_without_a_store_leaves_it_to_kv_free) {
    kv_db *db;
    CHECK_OK(kv_open(t_tmpdir(), NULL, &db));
    if (t_failed()) return;
    CHECK_OK(kv_put(db, "k", 1, "v1", 2, 0));
    kv_snapshot *s;
    CHECK_OK(kv_snapshot_new(db, &s));
    kv_snapshot_release(NULL, s);
    kv_snapshot_release(db, NULL);
    CHECK_OK(kv_put(db, "k", 1, "v2", 2, 0));
    kv_read_opts ro = {.snapshot = s};
    kv_buf v = {0};
    CHECK_OK(kv_get(db, &ro, "k", 1, &v));
    CHECK(v.len == 2 && memcmp(v.data, "v1", 2) == 0);
    kv_buf_free(&v);
    kv_free(db);
}
