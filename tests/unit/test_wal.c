/* test_wal.c — the record log: round trips, torn tails, corruption, bogus lengths, reopen, faults, power loss. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "coding.h"
#include "env.h"
#include "error.h"
#include "t.h"
#include "wal.h"

static char *path_in(const char *dir, const char *name) {
    static char bufs[4][512];
    static int next;
    char *p = bufs[next++ % 4];
    snprintf(p, sizeof bufs[0], "%s/%s", dir, name);
    return p;
}

/* Deterministic payload of record i: its bytes depend on i and the position. */
static void fill_payload(uint8_t *p, size_t len, uint64_t i) {
    uint64_t s = i * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t k = 0; k < len; k++) p[k] = (uint8_t)(t_rand(&s) >> 56);
}

/* Whole file in memory (malloc'ed). */
static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    *len = b ? fread(b, 1, (size_t)n, f) : 0;
    fclose(f);
    return b;
}

static int spit(const char *path, const uint8_t *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return KV_EIO;
    size_t w = len ? fwrite(data, 1, len, f) : 0;
    return fclose(f) == 0 && w == len ? KV_OK : KV_EIO;
}

/* Write records with the given sizes; record i's payload is fill_payload(i). Offsets go to offs (if not NULL). */
static int write_log(kv_env *env, const char *path, const size_t *sizes, size_t n, uint64_t *offs) {
    wal_writer *w;
    int rc = wal_writer_open(env, path, &w);
    if (rc != KV_OK) return rc;
    for (size_t i = 0; i < n && rc == KV_OK; i++) {
        uint8_t *p = malloc(sizes[i] ? sizes[i] : 1);
        if (!p) { rc = KV_ENOMEM; break; }
        fill_payload(p, sizes[i], i);
        if (offs) offs[i] = wal_writer_size(w);
        rc = wal_append(w, p, sizes[i]);
        free(p);
    }
    if (rc == KV_OK) rc = wal_sync(w);
    int rc2 = wal_writer_close(w);
    return rc != KV_OK ? rc : rc2;
}

/* Read the log and check that it holds exactly records 0..expect-1 of `sizes`, then the status `end_rc` (with the
 * torn flag `torn`). Returns true when all matched; on mismatch it reports through t_fail. */
static bool expect_log(kv_env *env, const char *path, const size_t *sizes, size_t expect, int end_rc, bool torn,
                       uint64_t valid_end) {
    wal_reader *r;
    int rc = wal_reader_open(env, path, "test.log", &r);
    if (rc != KV_OK) {
        t_fail(__FILE__, __LINE__, "open: %s", kv_errmsg());
        return false;
    }
    bool ok = true;
    uint64_t want_off = 0;
    for (size_t i = 0; i < expect && ok; i++) {
        const uint8_t *p;
        size_t len;
        uint64_t off;
        rc = wal_read(r, &p, &len, &off);
        if (rc != KV_OK || len != sizes[i] || off != want_off) {
            t_fail(__FILE__, __LINE__, "record %zu: rc %d len %zu (want %zu) off %" PRIu64 " (want %" PRIu64 ") %s",
                   i, rc, len, sizes[i], off, want_off, kv_errmsg());
            ok = false;
            break;
        }
        uint8_t *want = malloc(len ? len : 1);
        fill_payload(want, len, i);
        if (len && memcmp(p, want, len) != 0) {
            t_fail(__FILE__, __LINE__, "record %zu: payload differs", i);
            ok = false;
        }
        free(want);
        want_off += WAL_HEADER + len;
    }
    if (ok) {
        const uint8_t *p;
        size_t len;
        uint64_t off;
        rc = wal_read(r, &p, &len, &off);
        if (rc != end_rc || wal_reader_torn(r) != torn || wal_reader_valid_end(r) != valid_end) {
            t_fail(__FILE__, __LINE__, "end: rc %d (want %d) torn %d (want %d) valid_end %" PRIu64
                   " (want %" PRIu64 "): %s", rc, end_rc, wal_reader_torn(r), torn, wal_reader_valid_end(r),
                   valid_end, kv_errmsg());
            ok = false;
        }
        /* asking again gives the same answer */
        if (ok && wal_read(r, &p, &len, &off) != end_rc) {
            t_fail(__FILE__, __LINE__, "second read at end differs");
            ok = false;
        }
    }
    wal_reader_close(r);
    return ok;
}

TEST(test_wal_roundtrip_sizes) {
    kv_env *env = kv_env_posix();
    const char *p = path_in(t_tmpdir(), "000001.log");
    enum { N = 300 };
    size_t sizes[N];
    uint64_t offs[N];
    uint64_t seed = t_seed();
    size_t fixed[] = {0, 1, 7, 8, 9, 100, 32767, 32768, 32769, 65536, 200 * 1024, 0, 200 * 1024, 3};
    size_t nfixed = sizeof fixed / sizeof fixed[0];
    uint64_t total = 0;
    for (size_t i = 0; i < N; i++) {
        if (i < nfixed) sizes[i] = fixed[i];
        else if (i % 10 == 0) sizes[i] = (size_t)(t_rand(&seed) % (200 * 1024 + 1));
        else sizes[i] = (size_t)(t_rand(&seed) % 2000);
        total += WAL_HEADER + sizes[i];
    }
    CHECK_OK(write_log(env, p, sizes, N, offs));
    uint64_t fs;
    CHECK_OK(env->file_size(env, p, &fs));
    CHECK_EQ(fs, total);
    CHECK(expect_log(env, p, sizes, N, KV_ENOTFOUND, false, total));

    /* the checksum is kv_checksum2(length field, payload) as documented */
    size_t len;
    uint8_t *raw = slurp(p, &len);
    CHECK(raw);
    for (size_t i = 0; i < N; i += 37) {
        const uint8_t *h = raw + offs[i];
        CHECK_EQ(get_fixed32(h + 4), sizes[i]);
        CHECK(get_fixed32(h) == kv_checksum2(h + 4, 4, h + 8, sizes[i]));
    }
    free(raw);
}

TEST(test_wal_appendv_matches_append) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *a = path_in(dir, "a.log"), *b = path_in(dir, "b.log");
    wal_writer *w;
    CHECK_OK(wal_writer_open(env, a, &w));
    CHECK_OK(wal_append(w, "headerpayload-tail", 18));
    CHECK_OK(wal_append(w, "", 0));
    CHECK_EQ(wal_writer_size(w), 18 + 2 * WAL_HEADER);
    CHECK_OK(wal_writer_close(w));
    CHECK_OK(wal_writer_open(env, b, &w));
    const void *parts[] = {"header", "", "payload", "-tail"};
    size_t lens[] = {6, 0, 7, 5};
    CHECK_OK(wal_appendv(w, parts, lens, 4));
    CHECK_OK(wal_appendv(w, NULL, NULL, 0));
    CHECK_OK(wal_writer_close(w));
    size_t na, nb;
    uint8_t *da = slurp(a, &na), *db = slurp(b, &nb);
    CHECK_MEM(da, na, db, nb);
    free(da);
    free(db);

    /* oversized records are refused before anything is allocated or written */
    CHECK_OK(wal_writer_open(env, a, &w));
    CHECK_EQ(wal_append(w, "x", (size_t)WAL_MAX_RECORD + 1), KV_EINVAL);
    size_t huge[] = {WAL_MAX_RECORD, WAL_MAX_RECORD, SIZE_MAX};
    const void *hp[] = {"", "", ""};
    CHECK_EQ(wal_appendv(w, hp, huge, 3), KV_EINVAL);
    CHECK_EQ(wal_writer_size(w), 0);
    CHECK_OK(wal_writer_close(w));
}

TEST(test_wal_torn_tail_every_cut) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *src = path_in(dir, "src.log"), *cut = path_in(dir, "cut.log");
    size_t sizes[] = {10, 0, 500, 3000, 257};
    size_t n = sizeof sizes / sizeof sizes[0];
    uint64_t offs[8];
    CHECK_OK(write_log(env, src, sizes, n, offs));
    size_t len;
    uint8_t *raw = slurp(src, &len);
    CHECK(raw);
    uint64_t last = offs[n - 1];
    /* every cut inside the last record: the earlier records, then a silent end */
    for (size_t c = (size_t)last; c < len; c++) {
        CHECK_OK(spit(cut, raw, c));
        bool ok = expect_log(env, cut, sizes, n - 1, KV_ENOTFOUND, c > last, last);
        CHECK_MSG(ok, "cut at %zu", c);
    }
    CHECK_OK(spit(cut, raw, len));
    CHECK(expect_log(env, cut, sizes, n, KV_ENOTFOUND, false, len));

    /* a corrupted byte inside the last record (not cut) is a torn tail too: it is the last thing in the file */
    raw[len - 1] ^= 0x40;
    CHECK_OK(spit(cut, raw, len));
    CHECK(expect_log(env, cut, sizes, n - 1, KV_ENOTFOUND, true, last));
    free(raw);
}

/* Flip one byte of a non-last record: corruption naming the file and the record's offset. Flips of the length field
 * that make the record run past the end of the file are the one exception: by the format's rule they read as a torn
 * tail at that record (a reader cannot tell them from an interrupted append). */
TEST(test_wal_corrupt_byte_flips) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *src = path_in(dir, "src.log"), *bad = path_in(dir, "000042.log");
    size_t sizes[] = {0, 5, 300, 1, 40};
    size_t n = sizeof sizes / sizeof sizes[0];
    uint64_t offs[8];
    CHECK_OK(write_log(env, src, sizes, n, offs));
    size_t len;
    uint8_t *raw = slurp(src, &len);
    CHECK(raw);
    const uint8_t masks[] = {0xff, 0x01, 0x80};
    int corrupt = 0, torn = 0;
    for (size_t rec = 0; rec + 1 < n; rec++) {
        for (uint64_t at = offs[rec]; at < offs[rec + 1]; at++) {
            for (size_t m = 0; m < sizeof masks; m++) {
                raw[at] ^= masks[m];
                CHECK_OK(spit(bad, raw, len));
                uint32_t flen = get_fixed32(raw + offs[rec] + 4);
                raw[at] ^= masks[m];
                uint64_t end = offs[rec] + WAL_HEADER + (uint64_t)flen;
                wal_reader *r;
                CHECK_OK(wal_reader_open(env, bad, "000042.log", &r));
                const uint8_t *p;
                size_t plen;
                uint64_t off;
                for (size_t i = 0; i < rec; i++) {
                    CHECK_OK(wal_read(r, &p, &plen, &off));
                    CHECK_EQ(off, offs[i]);
                }
                int rc = wal_read(r, &p, &plen, &off);
                if (end >= len) {
                    /* length now points at or past the end of the file */
                    CHECK_MSG(rc == KV_ENOTFOUND && wal_reader_torn(r), "flip %#x at %" PRIu64 ": rc %d",
                              masks[m], at, rc);
                    torn++;
                } else {
                    CHECK_MSG(rc == KV_ECORRUPT, "flip %#x at %" PRIu64 ": rc %d (%s)", masks[m], at, rc,
                              kv_errmsg());
                    char want[64];
                    snprintf(want, sizeof want, "offset %" PRIu64, offs[rec]);
                    CHECK_MSG(strstr(kv_errmsg(), "000042.log") && strstr(kv_errmsg(), want),
                              "message lacks file or offset: %s", kv_errmsg());
                    /* the error stays */
                    CHECK_EQ(wal_read(r, &p, &plen, &off), KV_ECORRUPT);
                    corrupt++;
                }
                CHECK_EQ(wal_reader_valid_end(r), offs[rec]);
                wal_reader_close(r);
            }
        }
    }
    /* all checksum and payload flips, and the length flips that stay inside the file, are corruption */
    CHECK(corrupt > torn * 2);
    free(raw);
}

TEST(test_wal_bogus_lengths) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "bogus.log");
    size_t sizes[] = {20, 30};
    uint64_t offs[2];
    CHECK_OK(write_log(env, p, sizes, 2, offs));
    size_t len;
    uint8_t *raw = slurp(p, &len);
    CHECK(raw);
    /* a header at the end claiming 4 GiB: a torn tail, found without allocating 4 GiB */
    uint8_t *grown = malloc(len + 100);
    CHECK(grown);
    memcpy(grown, raw, len);
    memset(grown + len, 0xab, 100);
    put_fixed32(grown + len + 4, 0xffffffffu);
    CHECK_OK(spit(p, grown, len + 100));
    CHECK(expect_log(env, p, sizes, 2, KV_ENOTFOUND, true, len));
    /* the same within the file: length WAL_MAX_RECORD + 1 in the second record */
    put_fixed32(raw + offs[1] + 4, WAL_MAX_RECORD + 1);
    CHECK_OK(spit(p, raw, len));
    CHECK(expect_log(env, p, sizes, 1, KV_ENOTFOUND, true, offs[1]));
    /* a header cut short after a good record */
    CHECK_OK(spit(p, grown, len + 5));
    CHECK(expect_log(env, p, sizes, 2, KV_ENOTFOUND, true, len));
    free(grown);

    /* a length above WAL_MAX_RECORD that does fit in a (sparse) file is corruption, not an allocation */
    put_fixed32(raw + 4, WAL_MAX_RECORD + 1);
    CHECK_OK(spit(p, raw, len));
    CHECK_OK(env->truncate(env, p, (uint64_t)WAL_MAX_RECORD + 4096));
    wal_reader *r;
    CHECK_OK(wal_reader_open(env, p, "bogus.log", &r));
    const uint8_t *pl;
    size_t plen;
    uint64_t off;
    CHECK_EQ(wal_read(r, &pl, &plen, &off), KV_ECORRUPT);
    CHECK(strstr(kv_errmsg(), "bogus.log") && strstr(kv_errmsg(), "offset 0"));
    wal_reader_close(r);
    free(raw);

    /* an empty file and a missing file */
    CHECK_OK(spit(p, NULL, 0));
    CHECK(expect_log(env, p, sizes, 0, KV_ENOTFOUND, false, 0));
    CHECK_EQ(wal_reader_open(env, path_in(dir, "missing.log"), "missing.log", &r), KV_ENOTFOUND);
}

TEST(test_wal_reopen_after_torn_tail) {
    kv_env *env = kv_env_posix();
    const char *p = path_in(t_tmpdir(), "re.log");
    size_t sizes[] = {100, 200, 300, 400, 500, 600};
    uint64_t offs[6];
    CHECK_OK(write_log(env, p, sizes, 4, offs));
    uint64_t full;
    CHECK_OK(env->file_size(env, p, &full));
    /* tear the 4th record */
    CHECK_OK(env->truncate(env, p, offs[3] + 123));
    wal_reader *r;
    CHECK_OK(wal_reader_open(env, p, "re.log", &r));
    const uint8_t *pl;
    size_t len;
    uint64_t off;
    while (wal_read(r, &pl, &len, &off) == KV_OK) {}
    CHECK(wal_reader_torn(r));
    uint64_t end = wal_reader_valid_end(r);
    CHECK_EQ(end, offs[3]);
    wal_reader_close(r);

    wal_writer *w;
    CHECK_OK(wal_writer_reopen(env, p, end, &w));
    CHECK_EQ(wal_writer_size(w), end);
    for (size_t i = 3; i < 6; i++) {
        uint8_t *buf = malloc(sizes[i]);
        fill_payload(buf, sizes[i], i);
        CHECK_OK(wal_append(w, buf, sizes[i]));
        free(buf);
    }
    CHECK_OK(wal_sync(w));
    uint64_t total = wal_writer_size(w);
    CHECK_OK(wal_writer_close(w));
    CHECK(expect_log(env, p, sizes, 6, KV_ENOTFOUND, false, total));

    /* a valid end past the file is refused; a missing file with valid end 0 is created */
    CHECK_EQ(wal_writer_reopen(env, p, total + 1, &w), KV_EINVAL);
    const char *q = path_in(t_tmpdir(), "fresh.log");
    CHECK_OK(wal_writer_reopen(env, q, 0, &w));
    CHECK_OK(wal_append(w, "x", 1));
    CHECK_OK(wal_writer_close(w));
    CHECK_EQ(wal_writer_reopen(env, path_in(t_tmpdir(), "gone.log"), 5, &w), KV_EINVAL);
}

TEST(test_wal_faults_then_recovery) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "f.log");
    size_t sizes[] = {1000, 2000, 3000, 4000, 5000, 6000};
    uint8_t *bufs[6];
    for (int i = 0; i < 6; i++) {
        bufs[i] = malloc(sizes[i]);
        fill_payload(bufs[i], sizes[i], (uint64_t)i);
    }
    wal_writer *w;
    CHECK_OK(wal_writer_open(env, p, &w));
    for (int i = 0; i < 3; i++) CHECK_OK(wal_append(w, bufs[i], sizes[i]));
    uint64_t before = wal_writer_size(w);

    /* a short write: the writer reports it and cuts the partial record off, so the log stays clean */
    kv_fault_env_arm(env, KV_FAULT_WRITE_SHORT, 0, "f.log");
    CHECK_EQ(wal_append(w, bufs[3], sizes[3]), KV_EIO);
    CHECK(strstr(kv_errmsg(), "f.log") && strstr(kv_errmsg(), "short"));
    CHECK_EQ(wal_writer_size(w), before);
    uint64_t fs;
    CHECK_OK(env->file_size(env, p, &fs));
    CHECK_EQ(fs, before);
    /* a full disk, then space comes back */
    kv_fault_env_arm(env, KV_FAULT_ENOSPC, 0, NULL);
    CHECK_EQ(wal_append(w, bufs[3], sizes[3]), KV_ENOSPC);
    kv_fault_env_clear(env);
    for (int i = 3; i < 6; i++) CHECK_OK(wal_append(w, bufs[i], sizes[i]));
    CHECK_OK(wal_writer_close(w));
    CHECK(expect_log(env, p, sizes, 6, KV_ENOTFOUND, false, fs + 15000 + 3 * WAL_HEADER));

    /* a short write left behind (the writer died before it could clean up) is a torn tail; recover with reopen */
    CHECK_OK(wal_writer_open(env, p, &w));
    for (int i = 0; i < 2; i++) CHECK_OK(wal_append(w, bufs[i], sizes[i]));
    CHECK_OK(wal_writer_close(w));
    kv_file *f;
    CHECK_OK(env->open_append(env, p, &f));
    kv_fault_env_arm(env, KV_FAULT_WRITE_SHORT, 0, NULL);
    uint8_t rec[WAL_HEADER + 3000];
    put_fixed32(rec + 4, 3000);
    memcpy(rec + WAL_HEADER, bufs[2], 3000);
    put_fixed32(rec, kv_checksum(rec + 4, 3004));
    CHECK_EQ(env->append(env, f, rec, sizeof rec), KV_EIO);
    kv_fault_env_clear(env);
    CHECK_OK(env->close(env, f));
    uint64_t end = 1000 + 2000 + 2 * WAL_HEADER;
    CHECK(expect_log(env, p, sizes, 2, KV_ENOTFOUND, true, end));
    CHECK_OK(wal_writer_reopen(env, p, end, &w));
    for (int i = 2; i < 6; i++) CHECK_OK(wal_append(w, bufs[i], sizes[i]));
    CHECK_OK(wal_writer_close(w));
    CHECK(expect_log(env, p, sizes, 6, KV_ENOTFOUND, false, 21000 + 6 * WAL_HEADER));

    /* read errors surface as KV_EIO and the reader can go on afterwards */
    wal_reader *r;
    CHECK_OK(wal_reader_open(env, p, "f.log", &r));
    kv_fault_env_arm(env, KV_FAULT_READ_EIO, 0, NULL);
    const uint8_t *pl;
    size_t len;
    uint64_t off;
    CHECK_EQ(wal_read(r, &pl, &len, &off), KV_EIO);
    kv_fault_env_clear(env);
    CHECK_OK(wal_read(r, &pl, &len, &off));
    CHECK_MEM(pl, len, bufs[0], sizes[0]);
    wal_reader_close(r);

    for (int i = 0; i < 6; i++) free(bufs[i]);
    env->destroy(env);
}

TEST(test_wal_power_loss_keeps_synced_records) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "000003.log");
    size_t sizes[40];
    uint8_t buf[5000];
    for (int i = 0; i < 40; i++) sizes[i] = (size_t)(i * 97 % 5000);
    wal_writer *w;
    CHECK_OK(wal_writer_open(env, p, &w));
    CHECK_OK(env->sync_dir(env, dir));
    uint64_t synced_end = 0;
    for (int i = 0; i < 40; i++) {
        fill_payload(buf, sizes[i], (uint64_t)i);
        CHECK_OK(wal_append(w, buf, sizes[i]));
        if (i == 24) {
            CHECK_OK(wal_sync(w));
            synced_end = wal_writer_size(w);
        }
    }
    kv_fault_env_crash(env);
    CHECK_OK(wal_append(w, "lost", 4));
    CHECK_OK(wal_sync(w));
    CHECK_OK(wal_writer_close(w));
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK(expect_log(env, p, sizes, 25, KV_ENOTFOUND, false, synced_end));

    /* a log created and never made durable by a directory sync disappears entirely */
    const char *q = path_in(dir, "000004.log");
    CHECK_OK(wal_writer_open(env, q, &w));
    CHECK_OK(wal_append(w, "x", 1));
    CHECK_OK(wal_sync(w));
    CHECK_OK(wal_writer_close(w));
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK_EQ(env->exists(env, q), 0);
    env->destroy(env);
}

/* When a failed append cannot even be cut back, the writer refuses further records instead of writing them behind
 * a partial one. */
TEST(test_wal_writer_broken_after_failed_cleanup) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *p = path_in(t_tmpdir(), "b.log");
    wal_writer *w;
    CHECK_OK(wal_writer_open(env, p, &w));
    CHECK_OK(wal_append(w, "one", 3));
    CHECK_OK(env->remove(env, p)); /* the cleanup's truncate will find no file */
    kv_fault_env_arm(env, KV_FAULT_WRITE_SHORT, 0, NULL);
    CHECK_EQ(wal_append(w, "two two two", 11), KV_EIO);
    CHECK(strstr(kv_errmsg(), "short")); /* the first, precise message survives the failed cleanup */
    kv_fault_env_clear(env);
    CHECK_EQ(wal_append(w, "three", 5), KV_EIO);
    CHECK(strstr(kv_errmsg(), "b.log"));
    CHECK_OK(wal_sync(w));
    CHECK_OK(wal_writer_close(w));
    env->destroy(env);
}

/* The exact bytes of one record, as docs/format.md ("Record log") shows them: the format must not drift. */
TEST(test_wal_golden_record) {
    const char *p = path_in(t_tmpdir(), "golden.log");
    wal_writer *w;
    CHECK_OK(wal_writer_open(NULL, p, &w));
    CHECK_OK(wal_append(w, "abc", 3));
    CHECK_OK(wal_writer_close(w));
    size_t len;
    uint8_t *raw = slurp(p, &len);
    const uint8_t want[] = {0x4c, 0xbe, 0x6e, 0x8c, 0x03, 0x00, 0x00, 0x00, 'a', 'b', 'c'};
    CHECK_MEM(raw, len, want, sizeof want);
    free(raw);
}

/* ---- a log written into space allocated ahead (wal_writer_open_ahead) ----------------------------------------- */

/* Write records of the given sizes with a writer that allocates ahead; the data end goes to *end. */
static int write_log_ahead(kv_env *env, const char *path, const size_t *sizes, size_t n, uint64_t *end) {
    wal_writer *w;
    int rc = wal_writer_open_ahead(env, path, &w);
    if (rc != KV_OK) return rc;
    uint8_t buf[5000];
    for (size_t i = 0; i < n && rc == KV_OK; i++) {
        fill_payload(buf, sizes[i], i);
        rc = wal_append(w, buf, sizes[i]);
    }
    if (rc == KV_OK) rc = wal_sync(w);
    *end = wal_writer_size(w);
    int rc2 = wal_writer_close(w);
    return rc != KV_OK ? rc : rc2;
}

/* The file is longer than its records, the rest zeros, and a reader takes the zeros for a clean end; a record cut
 * short inside them is a torn tail; anything but zeros after a zero header is damage. */
TEST(test_wal_ahead_zeros_end_the_log) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *src = path_in(dir, "src.log"), *cut = path_in(dir, "cut.log");
    /* no record has an all-zero header: the checksum of a zero length is not zero */
    CHECK(kv_checksum("\0\0\0\0", 4) != 0);
    size_t sizes[] = {10, 0, 500, 3000, 257};
    size_t n = sizeof sizes / sizeof sizes[0];
    uint64_t end;
    CHECK_OK(write_log_ahead(env, src, sizes, n, &end));
    size_t len;
    uint8_t *raw = slurp(src, &len);
    CHECK(raw);
    CHECK_MSG(len > end, "file %zu bytes, records end at %" PRIu64 ": nothing allocated ahead", len, end);
    for (size_t i = (size_t)end; i < len; i++) CHECK_EQ(raw[i], 0);
    CHECK(expect_log(env, src, sizes, n, KV_ENOTFOUND, false, end));

    /* a crash inside the last record's write: its bytes from c on read as zeros */
    uint64_t last = end - WAL_HEADER - sizes[n - 1];
    for (size_t c = (size_t)last; c < end; c++) {
        uint8_t *z = malloc(len);
        CHECK(z);
        memcpy(z, raw, c);
        memset(z + c, 0, len - c);
        int rc = spit(cut, z, len);
        free(z);
        CHECK_OK(rc);
        /* cut at the record's start: only zeros follow the records before it, a clean end */
        CHECK_MSG(expect_log(env, cut, sizes, n - 1, KV_ENOTFOUND, c > last, last), "cut at %zu", c);
    }

    /* a byte that is not zero after the zeros that follow the records: damage, named */
    raw[len - 1] = 0x5a;
    CHECK_OK(spit(cut, raw, len));
    CHECK(expect_log(env, cut, sizes, n, KV_ECORRUPT, false, end));
    wal_reader *r;
    CHECK_OK(wal_reader_open(env, cut, "cut.log", &r));
    const uint8_t *p;
    size_t plen;
    uint64_t off;
    for (size_t i = 0; i < n; i++) CHECK_OK(wal_read(r, &p, &plen, &off));
    CHECK_EQ(wal_read(r, &p, &plen, &off), KV_ECORRUPT);
    char want[64];
    snprintf(want, sizeof want, "cut.log: corrupt record at offset %" PRIu64, end);
    CHECK_MSG(strstr(kv_errmsg(), want), "%s", kv_errmsg());
    wal_reader_close(r);
    /* a damaged earlier record is still corruption, zeros after the records or not */
    raw[len - 1] = 0;
    raw[WAL_HEADER + 3] ^= 0x10;
    CHECK_OK(spit(cut, raw, len));
    CHECK(expect_log(env, cut, sizes, 0, KV_ECORRUPT, false, 0));
    free(raw);
}

/* Through the fault environment: a short write or a full disk is cut back to the last record and later records
 * follow it; after a power loss the synced records remain, then zeros (the synced allocation), and nothing else. */
TEST(test_wal_ahead_faults_and_power_loss) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "000005.log");
    size_t sizes[60];
    uint8_t buf[5000];
    for (int i = 0; i < 60; i++) sizes[i] = (size_t)(i * 211 % 5000);
    wal_writer *w;
    CHECK_OK(wal_writer_open_ahead(env, p, &w));
    CHECK_OK(env->sync_dir(env, dir));
    for (int i = 0; i < 10; i++) {
        fill_payload(buf, sizes[i], (uint64_t)i);
        CHECK_OK(wal_append(w, buf, sizes[i]));
    }
    uint64_t before = wal_writer_size(w);
    fill_payload(buf, sizes[10], 10);
    kv_fault_env_arm(env, KV_FAULT_WRITE_SHORT, 0, "000005.log");
    CHECK_EQ(wal_append(w, buf, sizes[10]), KV_EIO);
    CHECK(strstr(kv_errmsg(), "short"));
    CHECK_EQ(wal_writer_size(w), before);
    uint64_t fs;
    CHECK_OK(env->file_size(env, p, &fs));
    CHECK_EQ(fs, before); /* the cut also took the space allocated ahead */
    kv_fault_env_arm(env, KV_FAULT_ENOSPC, 0, NULL);
    CHECK_EQ(wal_append(w, buf, sizes[10]), KV_ENOSPC);
    CHECK(kv_fault_env_failures(env) >= 2);
    kv_fault_env_clear(env);
    uint64_t synced_end = 0;
    for (int i = 10; i < 60; i++) {
        fill_payload(buf, sizes[i], (uint64_t)i);
        CHECK_OK(wal_append(w, buf, sizes[i]));
        if (i == 40) {
            CHECK_OK(wal_sync(w));
            synced_end = wal_writer_size(w);
        }
    }
    CHECK(expect_log(env, p, sizes, 60, KV_ENOTFOUND, false, wal_writer_size(w)));
    CHECK_OK(env->file_size(env, p, &fs));
    CHECK(fs > wal_writer_size(w));
    kv_fault_env_crash(env);
    CHECK_OK(wal_append(w, "lost", 4));
    CHECK_OK(wal_sync(w));
    CHECK_OK(wal_writer_close(w));
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK_OK(env->file_size(env, p, &fs));
    CHECK_MSG(fs > synced_end, "after the power loss: %" PRIu64 " bytes, synced records end at %" PRIu64, fs,
              synced_end);
    size_t len;
    uint8_t *raw = slurp(p, &len);
    CHECK(raw);
    for (size_t i = (size_t)synced_end; i < len; i++) CHECK_EQ(raw[i], 0);
    free(raw);
    CHECK(expect_log(env, p, sizes, 41, KV_ENOTFOUND, false, synced_end));
    env->destroy(env);
}

/* ---- a reader following a log that a writer fills in place ----------------------------------------------------- */

/* A record framed as the writer frames it. */
static size_t frame(uint8_t *out, const uint8_t *payload, size_t n) {
    put_fixed32(out + 4, (uint32_t)n);
    memcpy(out + WAL_HEADER, payload, n);
    put_fixed32(out, kv_checksum(out + 4, 4 + n));
    return WAL_HEADER + n;
}

/* An environment whose read_at lets "the writer" land bytes just before chosen reads: the first read at or past
 * `at` lands bytes [at, half) of `g` (a write in progress), the first read at or past `g_end` lands the rest. */
static struct {
    kv_env e;
    const char *path;
    uint64_t at, half, g_end;
    const uint8_t *g;
    size_t g_len;
    int stage;
} fill;

static void fill_land(uint64_t from, uint64_t to) {
    int fd = open(fill.path, O_WRONLY);
    if (fd < 0) return;
    ssize_t w = pwrite(fd, fill.g + (from - fill.at), (size_t)(to - from), (off_t)from);
    (void)w;
    close(fd);
}

static int fill_read_at(kv_env *env, kv_file *f, uint64_t off, void *buf, size_t len, size_t *nread) {
    (void)env;
    if (fill.stage == 1 && off >= fill.at) {
        fill_land(fill.at, fill.half);
        fill.stage = 2;
    } else if (fill.stage == 2 && off >= fill.g_end) {
        fill_land(fill.half, fill.at + fill.g_len);
        fill.stage = 3;
    }
    return kv_env_posix()->read_at(kv_env_posix(), f, off, buf, len, nread);
}

/* kv_check reads the live log while the group-commit leader writes into space allocated ahead. A write in progress
 * may be seen in part by the reader's re-read too, and later bytes after it: that is no damage. (The reader re-read
 * once and then reported "corrupt record" for a log that was fine.) */
TEST(test_wal_reader_follows_a_log_filled_in_place) {
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "000007.log");
    static uint8_t file[70000], g[2000];
    uint8_t pay[600];
    memcpy(pay, "first", 5);
    size_t a = frame(file, pay, 5);
    fill_payload(pay, sizeof pay, 1);
    size_t g1 = frame(g, pay, sizeof pay);
    size_t g_len = g1 + frame(g + g1, (const uint8_t *)"next", 4);
    CHECK_OK(spit(p, file, sizeof file)); /* record A, then zeros allocated ahead */
    fill.e = *kv_env_posix();
    fill.e.read_at = fill_read_at;
    fill.path = p;
    fill.at = a;
    fill.half = a + WAL_HEADER + 100; /* the header and part of the first record's payload */
    fill.g_end = a + g1;
    fill.g = g;
    fill.g_len = g_len;
    fill.stage = 0;
    wal_reader *r;
    CHECK_OK(wal_reader_open(&fill.e, p, "000007.log", &r));
    const uint8_t *rp;
    size_t len;
    uint64_t off;
    CHECK_OK(wal_read(r, &rp, &len, &off));
    CHECK_MEM(rp, len, "first", 5);
    fill.stage = 1; /* the window now holds zeros from `a` on */
    int rc = wal_read(r, &rp, &len, &off);
    CHECK_MSG(rc == KV_OK, "%s: %s", kv_strerror(rc), kv_errmsg());
    CHECK_EQ(fill.stage, 3);
    if (rc == KV_OK) {
        CHECK_EQ(off, a);
        CHECK_MEM(rp, len, pay, sizeof pay);
    }
    CHECK_OK(wal_read(r, &rp, &len, &off));
    CHECK_MEM(rp, len, "next", 4);
    CHECK_EQ(wal_read(r, &rp, &len, &off), KV_ENOTFOUND);
    CHECK(!wal_reader_torn(r));
    wal_reader_close(r);
}

static int no_allocate(kv_env *env, kv_file *f, uint64_t size) {
    (void)env;
    (void)f;
    return kv_set_error(KV_ENOSPC, "fallocate to %llu bytes: no space left on device", (unsigned long long)size);
}

/* A failed allocation ahead is no error, and it leaves the thread's message alone: the group-commit leader's own
 * batch may have failed (its message set) before it appends the other writers' batches. (It used to be cleared.) */
TEST(test_wal_ahead_failed_allocation_keeps_the_message) {
    static kv_env env;
    env = *kv_env_posix();
    env.allocate = no_allocate;
    const char *p = path_in(t_tmpdir(), "000009.log");
    wal_writer *w;
    CHECK_OK(wal_writer_open_ahead(&env, p, &w));
    kv_set_error(KV_ENOSPC, "writing the blob of a large value: no space left on device");
    CHECK_OK(wal_append(w, "abc", 3));
    CHECK_MSG(strcmp(kv_errmsg(), "writing the blob of a large value: no space left on device") == 0, "message: %s",
              kv_errmsg());
    CHECK_EQ(wal_writer_size(w), (uint64_t)WAL_HEADER + 3);
    CHECK_OK(wal_sync(w));
    CHECK_OK(wal_writer_close(w));
    wal_reader *r;
    CHECK_OK(wal_reader_open(NULL, p, NULL, &r));
    const uint8_t *rp;
    size_t len;
    uint64_t off;
    CHECK_OK(wal_read(r, &rp, &len, &off));
    CHECK_MEM(rp, len, "abc", 3);
    CHECK_EQ(wal_read(r, &rp, &len, &off), KV_ENOTFOUND);
    wal_reader_close(r);
}
