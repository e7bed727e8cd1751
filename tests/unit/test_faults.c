/* test_faults.c — fault injection through the fault environment (env.h: kv_fault_env_arm).
 *
 * Failed writes (EIO), short writes and ENOSPC while appending to the write-ahead log, while flushing (".sst"),
 * compacting, writing blob files (".blob") and the manifest ("MANIFEST"); failed fsyncs; EIO on reads. In each case:
 *   - the call that meets the fault returns an error (and never crashes);
 *   - the store stays consistent and readable: everything acknowledged before reads back, no batch is partly
 *     applied (the batches that fail write several keys "fail-N-a/b/c": all or none may be visible);
 *   - once kv_fault_env_clear() is called, later writes succeed (a failed background flush is retried: the test
 *     waits, bounded, until a write succeeds);
 *   - after close and reopen everything acknowledged is there and kv_check is clean.
 * test_faults_random arms random faults at random moments while writers run (KVFS_FAULT_ROUNDS rounds).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "env.h"
#include "kv.h"
#include "model.h"
#include "t.h"

typedef struct fx {
    char dir[512];
    kv_env *env;
    kv_db *db;
    kv_options o;
    model m;            /* what must be there: every acknowledged write */
    int next;           /* key counter */
    int nfail;          /* failed batches (keys fail-N-a/b/c) */
    int *fbase;         /* failed batches of key%06d keys: base, base+1, base+2 (test_faults_random) */
    int nfbase, capfbase;
    uint64_t rs;
    char err[600];
    struct heard {      /* what the engine told kv_options.log (from its background threads), one line each */
        pthread_mutex_t mu;
        char text[8192];
        size_t len;
    } heard;
} fx;

static void hear(void *ctx, int level, const char *msg) {
    struct heard *h = ctx;
    pthread_mutex_lock(&h->mu);
    int n = snprintf(h->text + h->len, sizeof h->text - h->len, "%s %s\n", level == KV_LOG_ERROR ? "E" : "N", msg);
    if (n > 0) h->len = h->len + (size_t)n < sizeof h->text ? h->len + (size_t)n : sizeof h->text - 1;
    pthread_mutex_unlock(&h->mu);
}

/* Lines heard so far that start with prefix ("E background flush failed", "N background ..."); *line gets the last
 * (when not NULL, size 512). */
static int heard(fx *f, const char *prefix, char *line) {
    pthread_mutex_lock(&f->heard.mu);
    int n = 0;
    for (const char *p = f->heard.text; *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (strncmp(p, prefix, strlen(prefix)) == 0) {
            n++;
            if (line) snprintf(line, 512, "%.*s", (int)len, p);
        }
        p += len + (eol != NULL);
    }
    pthread_mutex_unlock(&f->heard.mu);
    return n;
}

/* Wait up to 5 s for a line that starts with prefix (it comes from a background thread); how many were heard. */
static int await_heard(fx *f, const char *prefix) {
    for (int i = 0; i < 500 && heard(f, prefix, NULL) == 0; i++) usleep(10000);
    return heard(f, prefix, NULL);
}

static void fx_options(kv_options *o, bool background) {
    kv_options_init(o);
    o->memtable_bytes = 16 << 10;
    o->table_bytes = 8 << 10;
    o->level1_bytes = 32 << 10;
    o->block_bytes = 512;
    o->blob_threshold = 1024;
    o->blob_file_bytes = 64 << 10;
    o->block_cache_bytes = 64 << 10;
    o->max_open_tables = 8;
    o->l0_compaction_trigger = 2;
    o->background_threads = background;
}

static int fx_open(fx *f, bool background) {
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", t_tmpdir());
    f->env = kv_fault_env_new(kv_env_posix());
    if (!f->env) return KV_ENOMEM;
    fx_options(&f->o, background);
    f->o.env = f->env;
    pthread_mutex_init(&f->heard.mu, NULL);
    f->o.log = hear;
    f->o.log_ctx = &f->heard;
    static uint64_t opened;
    f->rs = t_seed() ^ (++opened * 0x9e3779b97f4a7c15ull);
    return kv_open(f->dir, &f->o, &f->db);
}

static void fx_free(fx *f) {
    if (f->db) kv_free(f->db);
    f->db = NULL;
    if (f->env) f->env->destroy(f->env);
    f->env = NULL;
    model_free(&f->m);
    free(f->fbase);
    f->fbase = NULL;
}

static bool fx_is_uncertain(const fx *f, const char *k, size_t kl) {
    if (kl >= 5 && memcmp(k, "fail-", 5) == 0) return true;
    if (kl != 9 || memcmp(k, "key", 3) != 0) return false;
    int num = atoi(k + 3);
    for (int i = 0; i < f->nfbase; i++)
        if (num >= f->fbase[i] && num < f->fbase[i] + 3) return true;
    return false;
}

/* A value for key number i: large (a blob) when big. */
static size_t fx_value(int i, bool big, char *v) {
    size_t n = big ? 1500 + (size_t)(i * 37) % 2000 : 10 + (size_t)(i * 13) % 150;
    for (size_t j = 0; j < n; j++) v[j] = (char)('a' + (i + (int)j * 7) % 26);
    return n;
}

/* Put key number `next` (and count it in the model when acknowledged). */
static int fx_put(fx *f, bool big, unsigned flags) {
    char k[32], v[4000];
    int i = f->next++;
    snprintf(k, sizeof k, "key%06d", i);
    size_t n = fx_value(i, big, v);
    int rc = kv_put(f->db, k, strlen(k), v, n, flags);
    if (rc == KV_OK) model_put(&f->m, k, strlen(k), v, n);
    return rc;
}

/* Acknowledged puts of n keys, some large, some overwriting older keys, and a few deletes. */
static int fx_fill(fx *f, int n) {
    for (int j = 0; j < n; j++) {
        int rc;
        uint64_t x = t_rand(&f->rs) % 20;
        if (x == 0 && f->m.n > 0) {
            const model_entry *e = &f->m.e[t_rand(&f->rs) % f->m.n];
            char k[64];
            snprintf(k, sizeof k, "%.*s", (int)e->klen, (const char *)e->key);
            rc = kv_delete(f->db, k, strlen(k), 0);
            if (rc == KV_OK) model_del(&f->m, k, strlen(k));
        } else {
            rc = fx_put(f, x < 3, x == 5 ? KV_SYNC : 0);
        }
        if (rc) return rc;
    }
    return KV_OK;
}

/* A batch of three keys fail-N-a/b/c (one large); returns kv_write's status. Never counted in the model. */
static int fx_fail_batch(fx *f, unsigned flags) {
    kv_batch *b;
    if (kv_batch_new(&b)) return KV_ENOMEM;
    int N = f->nfail++;
    for (int x = 0; x < 3; x++) {
        char k[32], v[4000];
        snprintf(k, sizeof k, "fail-%04d-%c", N, 'a' + x);
        size_t n = fx_value(N * 3 + x, x == 1, v);
        kv_batch_put(b, k, strlen(k), v, n);
    }
    int rc = kv_write(f->db, b, flags, NULL);
    kv_batch_free(b);
    return rc;
}

/* Everything in the model reads back (kv_get and iteration), and every failed batch is all there or not at all. */
static bool fx_verify(fx *f) {
    for (size_t i = 0; i < f->m.n; i++) {
        const model_entry *e = &f->m.e[i];
        kv_buf v;
        int rc = kv_get(f->db, NULL, e->key, e->klen, &v);
        if (rc) {
            snprintf(f->err, sizeof f->err, "kv_get(%.*s): %s (%s)", (int)e->klen, (const char *)e->key,
                     kv_strerror(rc), kv_errmsg());
            return false;
        }
        bool ok = v.len == e->vlen && memcmp(v.data, e->val, e->vlen) == 0;
        kv_buf_free(&v);
        if (!ok) {
            snprintf(f->err, sizeof f->err, "kv_get(%.*s): wrong value", (int)e->klen, (const char *)e->key);
            return false;
        }
    }
    kv_iter *it;
    int rc = kv_iter_new(f->db, NULL, &it);
    if (rc) {
        snprintf(f->err, sizeof f->err, "kv_iter_new: %s", kv_strerror(rc));
        return false;
    }
    size_t i = 0;
    for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) {
        size_t kl;
        const char *k = kv_iter_key(it, &kl);
        if (fx_is_uncertain(f, k, kl)) continue;
        if (i >= f->m.n || kl != f->m.e[i].klen || memcmp(k, f->m.e[i].key, kl) != 0) {
            snprintf(f->err, sizeof f->err, "iteration: unexpected key %.*s at position %zu", (int)kl, k, i);
            kv_iter_free(it);
            return false;
        }
        i++;
    }
    rc = kv_iter_status(it);
    kv_iter_free(it);
    if (rc || i != f->m.n) {
        snprintf(f->err, sizeof f->err, "iteration: %zu of %zu keys, status %s", i, f->m.n, kv_strerror(rc));
        return false;
    }
    /* failed batches: all three keys with their values, or none */
    for (int N = 0; N < f->nfail + f->nfbase; N++) {
        int present = 0;
        for (int x = 0; x < 3; x++) {
            char k[32], want[4000];
            size_t n;
            if (N < f->nfail) {
                snprintf(k, sizeof k, "fail-%04d-%c", N, 'a' + x);
                n = fx_value(N * 3 + x, x == 1, want);
            } else {
                int num = f->fbase[N - f->nfail] + x;
                snprintf(k, sizeof k, "key%06d", num);
                n = fx_value(num, num % 6 == 1, want);
            }
            kv_buf v;
            rc = kv_get(f->db, NULL, k, strlen(k), &v);
            if (rc == KV_OK) {
                bool ok = v.len == n && memcmp(v.data, want, n) == 0;
                kv_buf_free(&v);
                if (!ok) {
                    snprintf(f->err, sizeof f->err, "%s: wrong value", k);
                    return false;
                }
                present++;
            } else if (rc != KV_ENOTFOUND) {
                snprintf(f->err, sizeof f->err, "kv_get(%s): %s (%s)", k, kv_strerror(rc), kv_errmsg());
                return false;
            }
        }
        if (present != 0 && present != 3) {
            snprintf(f->err, sizeof f->err, "failed batch %d is partly applied (%d of 3 keys)", N, present);
            return false;
        }
    }
    return true;
}

typedef struct probs {
    uint64_t n;
    char first[400];
} probs;

static void on_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    probs *p = ctx;
    if (p->n++ == 0) snprintf(p->first, sizeof p->first, "%s at %llu: %s", file, (unsigned long long)off, what);
}

static bool fx_check(fx *f) {
    probs p = {0, ""};
    int rc = kv_check(f->db, on_problem, NULL, &p, NULL);
    if (rc || p.n) {
        snprintf(f->err, sizeof f->err, "kv_check: %s, %llu problem(s), first: %s", kv_strerror(rc),
                 (unsigned long long)p.n, p.first);
        return false;
    }
    return true;
}

/* After kv_fault_env_clear: writes work again. A background flush that failed is retried after a pause, and until
 * then a write that needs room may still report its error, so this waits (bounded: 10 s) until writes succeed and
 * two more memtables have been flushed since the fault was cleared, and kv_sync works. */
static bool fx_writes_recover(fx *f) {
    kv_stats st;
    int rc = kv_get_stats(f->db, &st);
    uint64_t flushes0 = st.flushes;
    int failures = 0;
    for (int tries = 0; tries < 20000 && rc != KV_ECLOSED; tries++) {
        rc = fx_put(f, tries % 10 == 0, tries % 50 == 0 ? KV_SYNC : 0);
        if (rc != KV_OK) {
            if (++failures > 500) break;
            usleep(20000);
            continue;
        }
        if (kv_get_stats(f->db, &st) == KV_OK && st.flushes >= flushes0 + 2) {
            rc = kv_sync(f->db);
            if (rc == KV_OK) return true;
        }
    }
    snprintf(f->err, sizeof f->err, "writes do not recover after the fault was cleared: %s (%s)", kv_strerror(rc),
             kv_errmsg());
    return false;
}

/* Close, reopen (with the real file system), verify, check. */
static bool fx_reopen(fx *f) {
    kv_free(f->db);
    f->db = NULL;
    kv_options o = f->o;
    o.env = NULL;
    int rc = kv_open(f->dir, &o, &f->db);
    if (rc) {
        snprintf(f->err, sizeof f->err, "reopen: %s (%s)", kv_strerror(rc), kv_errmsg());
        return false;
    }
    return fx_verify(f) && fx_check(f);
}

/* The common course of a write fault: fill, arm, writes fail, reads work, clear, writes work, reopen. */
static void write_fault(kv_fault_kind kind, uint64_t after, const char *substr, bool background, bool sync) {
    fx f;
    CHECK_OK(fx_open(&f, background));
    CHECK_OK(fx_fill(&f, 300));
    kv_fault_env_arm(f.env, kind, after, substr);
    int failures = 0;
    for (int i = 0; i < 400 && failures < 8; i++) {
        int rc = fx_fail_batch(&f, sync ? KV_SYNC : 0);
        if (rc != KV_OK) {
            failures++;
            CHECK_MSG(rc == KV_EIO || rc == KV_ENOSPC, "a write failed with %s (%s)", kv_strerror(rc), kv_errmsg());
            CHECK_MSG(kv_errmsg()[0] != 0, "a failed write left no message");
        }
        CHECK_MSG(fx_verify(&f), "while the fault is armed: %s", f.err);
    }
    CHECK_MSG(failures > 0, "the fault (%d on %s) never made a write fail", kind, substr ? substr : "all files");
    CHECK(kv_fault_env_failures(f.env) > 0);
    kv_fault_env_clear(f.env);
    CHECK_MSG(fx_writes_recover(&f), "%s", f.err);
    CHECK_OK(fx_fill(&f, 200));
    CHECK_MSG(fx_verify(&f), "after the fault: %s", f.err);
    CHECK_MSG(fx_check(&f), "after the fault: %s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

TEST(test_faults_wal_eio) { write_fault(KV_FAULT_WRITE_EIO, 0, ".log", true, false); }
TEST(test_faults_wal_eio_sync) { write_fault(KV_FAULT_WRITE_EIO, 3, ".log", true, true); }
TEST(test_faults_wal_short_write) { write_fault(KV_FAULT_WRITE_SHORT, 2, ".log", true, false); }
TEST(test_faults_wal_enospc) { write_fault(KV_FAULT_ENOSPC, 0, ".log", true, true); }
TEST(test_faults_wal_sync_eio) { write_fault(KV_FAULT_SYNC_EIO, 1, ".log", true, true); }
/* a failed append the log cannot cut back: the writer refuses the log, the next write starts a new one, and the
 * failed batch's record stays at the end of the old log, whole (a failed batch may come back at recovery, all of it) */
TEST(test_faults_wal_torn_append_not_cut_back) { write_fault(KV_FAULT_WRITE_STUCK, 2, ".log", true, false); }
TEST(test_faults_wal_torn_append_not_cut_back_sync) { write_fault(KV_FAULT_WRITE_STUCK, 5, ".log", false, true); }
TEST(test_faults_blob_eio) { write_fault(KV_FAULT_WRITE_EIO, 0, ".blob", true, false); }
TEST(test_faults_blob_short_write) { write_fault(KV_FAULT_WRITE_SHORT, 1, ".blob", true, false); }
TEST(test_faults_blob_enospc) { write_fault(KV_FAULT_ENOSPC, 2, ".blob", true, true); }
TEST(test_faults_blob_sync_eio) { write_fault(KV_FAULT_SYNC_EIO, 0, ".blob", true, true); }
TEST(test_faults_all_files_enospc) { write_fault(KV_FAULT_ENOSPC, 0, NULL, true, false); }
TEST(test_faults_inline_flush_enospc) { write_fault(KV_FAULT_ENOSPC, 5, ".sst", false, false); }
TEST(test_faults_inline_manifest_eio) { write_fault(KV_FAULT_WRITE_EIO, 0, "MANIFEST", false, false); }

/* Background flushes fail: writes go on until frozen memtables pile up, then fail; reads work throughout; once the
 * fault is gone the flush thread catches up. */
static void flush_fault(kv_fault_kind kind, uint64_t after, const char *substr) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    CHECK_OK(fx_fill(&f, 200));
    kv_fault_env_arm(f.env, kind, after, substr);
    int failed_writes = 0;
    for (int i = 0; i < 600 && failed_writes < 5; i++) {
        int rc = fx_fail_batch(&f, 0);
        if (rc) {
            failed_writes++;
            CHECK_MSG(rc == KV_EIO || rc == KV_ENOSPC, "a write failed with %s (%s)", kv_strerror(rc), kv_errmsg());
        }
        if (i % 50 == 0) CHECK_MSG(fx_verify(&f), "while the fault is armed: %s", f.err);
    }
    CHECK_MSG(kv_fault_env_failures(f.env) > 0, "no flush met the fault");
    CHECK_MSG(failed_writes > 0, "writes never noticed that flushes fail");
    CHECK_MSG(fx_verify(&f), "while the fault is armed: %s", f.err);
    kv_stats st;
    CHECK_OK(kv_get_stats(f.db, &st));
    bool flushes_failed = strcmp(substr, ".sst") == 0; /* a manifest fault fails the log switches first */
    if (flushes_failed) { /* the failing flushes show, and the log hears of the first failure only */
        CHECK(st.flush_failures > 0);
        CHECK_MSG(st.flush_error == KV_EIO || st.flush_error == KV_ENOSPC, "flush_error %d", st.flush_error);
        char line[512] = "";
        CHECK_EQ(heard(&f, "E background flush failed (retried until it works): ", line), 1);
        CHECK_MSG(strstr(line, ".sst"), "heard: %s", line);
    }
    kv_fault_env_clear(f.env);
    /* the first write after the cause is gone succeeds: it has the flush retried instead of failing at once */
    int rc = fx_put(&f, false, 0);
    CHECK_MSG(rc == KV_OK, "the first write after the fault was cleared: %s (%s)", kv_strerror(rc), kv_errmsg());
    CHECK_MSG(fx_writes_recover(&f), "%s", f.err);
    CHECK_OK(fx_fill(&f, 300));
    CHECK_OK(kv_get_stats(f.db, &st));
    CHECK(st.flushes > 0);
    CHECK_EQ(st.flush_error, KV_OK); /* the flush that succeeded since is the last word */
    if (flushes_failed) CHECK_EQ(await_heard(&f, "N background flush works again, after "), 1);
    CHECK_MSG(fx_verify(&f), "after the fault: %s", f.err);
    CHECK_MSG(fx_check(&f), "after the fault: %s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

TEST(test_faults_flush_enospc) { flush_fault(KV_FAULT_ENOSPC, 0, ".sst"); }
TEST(test_faults_flush_enospc_mid_table) { flush_fault(KV_FAULT_ENOSPC, 3, ".sst"); }
TEST(test_faults_flush_eio) { flush_fault(KV_FAULT_WRITE_EIO, 1, ".sst"); }
TEST(test_faults_flush_short_write) { flush_fault(KV_FAULT_WRITE_SHORT, 0, ".sst"); }
TEST(test_faults_flush_sync_eio) { flush_fault(KV_FAULT_SYNC_EIO, 0, ".sst"); }
TEST(test_faults_manifest_enospc) { flush_fault(KV_FAULT_ENOSPC, 0, "MANIFEST"); }
TEST(test_faults_manifest_eio) { flush_fault(KV_FAULT_WRITE_EIO, 1, "MANIFEST"); }
TEST(test_faults_manifest_short_write) { flush_fault(KV_FAULT_WRITE_SHORT, 0, "MANIFEST"); }
TEST(test_faults_manifest_sync_eio) { flush_fault(KV_FAULT_SYNC_EIO, 0, "MANIFEST"); }

/* A compaction fails: kv_compact_range reports it, nothing is lost, and it works once the fault is gone. */
static void compaction_fault(kv_fault_kind kind, uint64_t after, const char *substr) {
    fx f;
    CHECK_OK(fx_open(&f, false));
    CHECK_OK(fx_fill(&f, 400));
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    /* overwrite part of it, and move the memtable into a level-0 table by reopening */
    CHECK_OK(fx_fill(&f, 150));
    kv_free(f.db);
    f.db = NULL;
    CHECK_OK(kv_open(f.dir, &f.o, &f.db));
    kv_stats st;
    CHECK_OK(kv_get_stats(f.db, &st));
    CHECK(st.level_files[0] > 0);
    kv_fault_env_arm(f.env, kind, after, substr);
    int rc = kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL);
    CHECK_MSG(rc != KV_OK, "kv_compact_range succeeded in spite of the fault");
    CHECK_MSG(rc == KV_EIO || rc == KV_ENOSPC, "kv_compact_range failed with %s (%s)", kv_strerror(rc), kv_errmsg());
    if (kind != KV_FAULT_READ_EIO) CHECK_MSG(fx_verify(&f), "after the failed compaction: %s", f.err);
    kv_fault_env_clear(f.env);
    CHECK_MSG(fx_verify(&f), "after the failed compaction: %s", f.err);
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_get_stats(f.db, &st));
    CHECK_EQ(st.level_files[0], 0);
    CHECK_MSG(fx_writes_recover(&f), "%s", f.err);
    CHECK_MSG(fx_verify(&f), "after the compaction: %s", f.err);
    CHECK_MSG(fx_check(&f), "after the compaction: %s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

TEST(test_faults_compaction_enospc) { compaction_fault(KV_FAULT_ENOSPC, 1, ".sst"); }
TEST(test_faults_compaction_eio) { compaction_fault(KV_FAULT_WRITE_EIO, 0, ".sst"); }
TEST(test_faults_compaction_short_write) { compaction_fault(KV_FAULT_WRITE_SHORT, 1, ".sst"); }
TEST(test_faults_compaction_manifest) { compaction_fault(KV_FAULT_ENOSPC, 0, "MANIFEST"); }
TEST(test_faults_compaction_read_eio) { compaction_fault(KV_FAULT_READ_EIO, 3, ".sst"); }

/* EIO on reads: a read returns an error or the right value (never a wrong one, never "not found"). */
TEST(test_faults_read_eio) {
    fx f;
    CHECK_OK(fx_open(&f, false));
    CHECK_OK(fx_fill(&f, 500));
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    const char *targets[] = {".sst", ".blob", NULL};
    for (int t = 0; t < 3; t++) {
        /* a cold cache: reopen */
        kv_free(f.db);
        f.db = NULL;
        CHECK_OK(kv_open(f.dir, &f.o, &f.db));
        kv_fault_env_arm(f.env, KV_FAULT_READ_EIO, 0, targets[t]);
        int errors = 0;
        for (size_t i = 0; i < f.m.n; i++) {
            const model_entry *e = &f.m.e[i];
            kv_buf v;
            int rc = kv_get(f.db, NULL, e->key, e->klen, &v);
            if (rc == KV_OK) {
                bool ok = v.len == e->vlen && memcmp(v.data, e->val, e->vlen) == 0;
                kv_buf_free(&v);
                CHECK_MSG(ok, "kv_get(%.*s) returned a wrong value under read faults", (int)e->klen,
                          (const char *)e->key);
            } else {
                CHECK_MSG(rc == KV_EIO, "kv_get(%.*s) under read faults: %s (%s)", (int)e->klen, (const char *)e->key,
                          kv_strerror(rc), kv_errmsg());
                errors++;
            }
        }
        CHECK_MSG(errors > 0, "no read failed (faults on %s)", targets[t] ? targets[t] : "all files");
        /* an iterator stops with the error */
        kv_iter *it;
        CHECK_OK(kv_iter_new(f.db, NULL, &it));
        size_t n = 0;
        for (kv_iter_seek_first(it); kv_iter_valid(it); kv_iter_next(it)) n++;
        int st = kv_iter_status(it);
        kv_iter_free(it);
        CHECK_MSG(st != KV_OK || n == f.m.n, "iteration ended cleanly after %zu of %zu keys", n, f.m.n);
        /* the check reports the unreadable files, without crashing */
        uint64_t problems = 0;
        CHECK(kv_check(f.db, NULL, NULL, NULL, &problems) != KV_OK);
        CHECK(problems > 0);
        kv_fault_env_clear(f.env);
        CHECK_MSG(fx_verify(&f), "after the read faults: %s", f.err);
    }
    /* faults while opening: kv_open fails cleanly */
    const char *at_open[] = {"MANIFEST", "CURRENT", ".log"};
    for (int t = 0; t < 3; t++) {
        kv_free(f.db);
        f.db = NULL;
        kv_fault_env_arm(f.env, KV_FAULT_READ_EIO, 0, at_open[t]);
        int rc = kv_open(f.dir, &f.o, &f.db);
        CHECK_MSG(rc == KV_EIO, "kv_open with read faults on %s: %s (%s)", at_open[t], kv_strerror(rc), kv_errmsg());
        CHECK_MSG(strstr(kv_errmsg(), at_open[t]) != NULL, "kv_open error does not name the file: %s", kv_errmsg());
        f.db = NULL;
        kv_fault_env_clear(f.env);
        CHECK_OK(kv_open(f.dir, &f.o, &f.db));
        CHECK_MSG(fx_verify(&f), "after faults at open: %s", f.err);
    }
    CHECK_MSG(fx_check(&f), "%s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

/* A failed open for lack of space leaves the store openable. */
TEST(test_faults_open_enospc) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    CHECK_OK(fx_fill(&f, 300));
    const char *targets[] = {"MANIFEST", "CURRENT", ".log", ".sst", NULL};
    for (int t = 0; t < 5; t++) {
        kv_free(f.db);
        f.db = NULL;
        CHECK_OK(fx_fill(&f, 0));
        kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, targets[t]);
        int rc = kv_open(f.dir, &f.o, &f.db);
        if (rc == KV_OK) {
            /* nothing of that kind needed writing at open (no log to turn into a table) */
            kv_fault_env_clear(f.env);
            CHECK_MSG(fx_verify(&f), "%s", f.err);
            CHECK_OK(fx_fill(&f, 100)); /* so that the next open has a log to replay */
            continue;
        }
        f.db = NULL;
        CHECK_MSG(rc == KV_ENOSPC, "kv_open with ENOSPC on %s: %s (%s)", targets[t] ? targets[t] : "all",
                  kv_strerror(rc), kv_errmsg());
        kv_fault_env_clear(f.env);
        CHECK_OK(kv_open(f.dir, &f.o, &f.db));
        CHECK_MSG(fx_verify(&f), "after a failed open (%s): %s", targets[t] ? targets[t] : "all", f.err);
        CHECK_MSG(fx_check(&f), "after a failed open (%s): %s", targets[t] ? targets[t] : "all", f.err);
        CHECK_OK(fx_fill(&f, 100));
    }
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

/* ---- random faults while writers run ------------------------------------------------------------------------------ */

typedef struct rwriter {
    fx *f;
    pthread_mutex_t *mu; /* guards f's model and counters */
    atomic_bool *stop;
    uint64_t rs;
    int acked, failed;
    char err[300];
} rwriter;

/* Batches of three keys key<base..base+2>; acknowledged ones join the model, failed ones the uncertain list. */
static void *rwriter_main(void *arg) {
    rwriter *w = arg;
    fx *f = w->f;
    kv_batch *b;
    if (kv_batch_new(&b)) return NULL;
    while (!atomic_load(w->stop)) {
        kv_batch_clear(b);
        pthread_mutex_lock(w->mu);
        int base = f->next;
        f->next += 3;
        pthread_mutex_unlock(w->mu);
        char k[3][32], v[3][4000];
        size_t n[3];
        for (int x = 0; x < 3; x++) {
            snprintf(k[x], sizeof k[x], "key%06d", base + x);
            n[x] = fx_value(base + x, (base + x) % 6 == 1, v[x]);
            kv_batch_put(b, k[x], strlen(k[x]), v[x], n[x]);
        }
        unsigned flags = t_rand(&w->rs) % 4 == 0 ? KV_SYNC : 0;
        int rc = kv_write(f->db, b, flags, NULL);
        pthread_mutex_lock(w->mu);
        if (rc == KV_OK) {
            w->acked++;
            for (int x = 0; x < 3; x++) model_put(&f->m, k[x], strlen(k[x]), v[x], n[x]);
        } else {
            w->failed++;
            if (rc != KV_EIO && rc != KV_ENOSPC && !w->err[0])
                snprintf(w->err, sizeof w->err, "kv_write: %s (%s)", kv_strerror(rc), kv_errmsg());
            if (f->nfbase == f->capfbase) {
                f->capfbase = f->capfbase ? 2 * f->capfbase : 64;
                f->fbase = realloc(f->fbase, (size_t)f->capfbase * sizeof *f->fbase);
            }
            f->fbase[f->nfbase++] = base;
        }
        pthread_mutex_unlock(w->mu);
        if (rc != KV_OK) usleep(2000);
    }
    kv_batch_free(b);
    return NULL;
}

TEST(test_faults_random) {
    int rounds = getenv("KVFS_FAULT_ROUNDS") ? atoi(getenv("KVFS_FAULT_ROUNDS")) : 12;
    uint64_t rs = t_seed() ^ 0x7a11;
    const kv_fault_kind kinds[] = {KV_FAULT_WRITE_EIO, KV_FAULT_WRITE_SHORT, KV_FAULT_ENOSPC, KV_FAULT_SYNC_EIO,
                                   KV_FAULT_READ_EIO, KV_FAULT_DISK_EIO};
    const char *subs[] = {".log", ".sst", ".blob", "MANIFEST", NULL};
    int acked = 0, failed = 0;
    for (int round = 0; round < rounds && !t_failed(); round++) {
        fx f;
        CHECK_OK(fx_open(&f, true));
        pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
        atomic_bool stop = false;
        rwriter ws[2];
        pthread_t th[2];
        for (int i = 0; i < 2; i++) {
            ws[i] = (rwriter){&f, &mu, &stop, t_rand(&rs), 0, 0, ""};
            pthread_create(&th[i], NULL, rwriter_main, &ws[i]);
        }
        for (int phase = 0; phase < 3; phase++) {
            usleep((useconds_t)(5000 + t_rand(&rs) % 20000));
            kv_fault_kind kind = kinds[t_rand(&rs) % 5];
            const char *sub = subs[t_rand(&rs) % 5];
            kv_fault_env_arm(f.env, kind, t_rand(&rs) % 8, sub);
            usleep((useconds_t)(2000 + t_rand(&rs) % 20000));
            kv_fault_env_clear(f.env);
        }
        atomic_store(&stop, true);
        for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < 2; i++) {
            CHECK_MSG(!ws[i].err[0], "round %d writer %d: %s", round, i, ws[i].err);
            acked += ws[i].acked;
            failed += ws[i].failed;
        }
        CHECK_MSG(fx_writes_recover(&f), "round %d: %s", round, f.err);
        CHECK_MSG(fx_verify(&f), "round %d: %s", round, f.err);
        CHECK_MSG(fx_check(&f), "round %d: %s", round, f.err);
        CHECK_MSG(fx_reopen(&f), "round %d after reopen: %s", round, f.err);
        fx_free(&f);
    }
    printf("# %d rounds: %d batches acknowledged, %d failed\n", rounds, acked, failed);
}

/* Streams and read-modify-write operations (write_at, move) under faults. */
TEST(test_faults_stream_and_read_modify) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    CHECK_OK(fx_fill(&f, 200));
    uint8_t piece[5000];
    memset(piece, 's', sizeof piece);
    /* a stream whose blob file fills up (at its creation, its header, or in its data) fails; if a later append
     * succeeds, the value put must still be exactly what was appended successfully; a new stream works */
    kv_stream *s;
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    uint8_t head[500];
    memset(head, 'h', sizeof head);
    for (int after = 0; after < 5; after++) {
        char sk[32];
        snprintf(sk, sizeof sk, "fail-stream%d", after);
        CHECK_OK(kv_stream_new(f.db, &s));
        CHECK_OK(kv_stream_append(s, head, sizeof head)); /* still inline */
        kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, (uint64_t)after, ".blob");
        int rc = KV_OK;
        for (int i = 0; i < 40 && rc == KV_OK; i++) rc = kv_stream_append(s, piece, sizeof piece);
        CHECK_MSG(rc == KV_ENOSPC, "kv_stream_append under ENOSPC: %s", kv_strerror(rc));
        kv_fault_env_clear(f.env);
        rc = kv_stream_append(s, piece, sizeof piece);
        if (rc == KV_OK) {
            kv_batch_clear(b);
            CHECK_OK(kv_batch_put_stream(b, 0, sk, strlen(sk), s));
            rc = kv_write(f.db, b, KV_SYNC, NULL);
        }
        if (rc == KV_OK) {
            kv_buf v;
            CHECK_OK(kv_get(f.db, NULL, sk, strlen(sk), &v));
            bool ok = v.len == kv_stream_size(s) && v.len >= sizeof head && memcmp(v.data, head, sizeof head) == 0;
            for (size_t i = sizeof head; ok && i < v.len; i++) ok = ((uint8_t *)v.data)[i] == 's';
            kv_buf_free(&v);
            CHECK_MSG(ok, "a stream that met a failure (after %d) stored a wrong value", after);
        }
        kv_stream_free(s);
    }
    CHECK_OK(kv_stream_new(f.db, &s));
    for (int i = 0; i < 30; i++) CHECK_OK(kv_stream_append(s, piece, sizeof piece));
    kv_batch_clear(b);
    CHECK_OK(kv_batch_put_stream(b, 0, "streamed", 8, s));
    CHECK_OK(kv_write(f.db, b, KV_SYNC, NULL));
    kv_stream_free(s);
    kv_info info;
    CHECK_OK(kv_stat(f.db, NULL, "streamed", 8, &info));
    CHECK_EQ(info.size, 30 * sizeof piece);
    {
        uint8_t *all = malloc(30 * sizeof piece);
        memset(all, 's', 30 * sizeof piece);
        model_put(&f.m, "streamed", 8, all, 30 * sizeof piece);
        free(all);
    }
    /* write_at and move read the current value: with reads failing they fail, and change nothing */
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    kv_free(f.db);
    f.db = NULL;
    CHECK_OK(kv_open(f.dir, &f.o, &f.db)); /* a cold cache */
    const model_entry *e = &f.m.e[f.m.n / 2];
    char key[64];
    snprintf(key, sizeof key, "%.*s", (int)e->klen, (const char *)e->key);
    kv_fault_env_arm(f.env, KV_FAULT_READ_EIO, 0, NULL);
    kv_batch_clear(b);
    CHECK_OK(kv_batch_write_at(b, 0, key, strlen(key), 3, "XYZ", 3));
    CHECK_OK(kv_batch_put(b, "fail-9999-a", 11, "x", 1));
    CHECK_EQ(kv_write(f.db, b, 0, NULL), KV_EIO);
    kv_batch_clear(b);
    CHECK_OK(kv_batch_move(b, 0, key, strlen(key), 0, "fail-9999-b", 11));
    CHECK_EQ(kv_write(f.db, b, 0, NULL), KV_EIO);
    kv_fault_env_clear(f.env);
    CHECK_EQ(kv_contains(f.db, NULL, "fail-9999-a", 11), 0);
    CHECK_EQ(kv_contains(f.db, NULL, "fail-9999-b", 11), 0);
    CHECK_MSG(fx_verify(&f), "after failed read-modify-writes: %s", f.err);
    /* and they work once reads do */
    kv_batch_clear(b);
    CHECK_OK(kv_batch_move(b, 0, key, strlen(key), 0, "moved", 5));
    CHECK_OK(kv_write(f.db, b, 0, NULL));
    {
        uint8_t *val = malloc(e->vlen ? e->vlen : 1);
        memcpy(val, e->val, e->vlen);
        size_t vl = e->vlen;
        model_put(&f.m, "moved", 5, val, vl);
        model_del(&f.m, key, strlen(key));
        free(val);
    }
    kv_batch_free(b);
    CHECK_MSG(fx_writes_recover(&f), "%s", f.err);
    CHECK_MSG(fx_verify(&f), "%s", f.err);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

/* ---- Found by review: the manifest's name, the batch log after a power loss, group commit ------------------------- */

/* The directory fsync after CURRENT was renamed to name a new manifest fails. The rename may or may not be durable,
 * so CURRENT may name either manifest: neither may be removed. (The new one used to be removed, leaving CURRENT
 * naming a missing file: no later open could succeed.) Here the fault hits the manifest written at open. */
TEST(test_faults_current_rename_not_synced) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_options o;
    fx_options(&o, true);
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_OK(kv_put(db, "k", 1, "v", 1, KV_SYNC));
    kv_free(db);
    kv_env *env = kv_fault_env_new(kv_env_posix());
    CHECK(env);
    o.env = env;
    /* the open's fresh manifest: fsync of the manifest (0), of the directory (1), of CURRENT.tmp (2), the rename,
     * then the fsync of the directory (3), which fails */
    kv_fault_env_arm(env, KV_FAULT_SYNC_EIO, 3, NULL);
    int rc = kv_open(dir, &o, &db);
    CHECK_MSG(rc != KV_OK, "the open did not meet the fault");
    if (rc == KV_OK) kv_free(db);
    env->destroy(env);
    fx_options(&o, true);
    rc = kv_open(dir, &o, &db);
    CHECK_MSG(rc == KV_OK, "reopen after a failed directory fsync: %s (%s)", kv_strerror(rc), kv_errmsg());
    if (rc) return;
    kv_buf v;
    CHECK_OK(kv_get(db, NULL, "k", 1, &v));
    CHECK_MEM(v.data, v.len, "v", 1);
    kv_buf_free(&v);
    CHECK_OK(kv_put(db, "k2", 2, "w", 1, KV_SYNC));
    probs p = {0, ""};
    CHECK_OK(kv_check(db, on_problem, NULL, &p, NULL));
    CHECK_MSG(p.n == 0, "kv_check: %s", p.first);
    kv_free(db);
}

/* ---- the change feed has no holes ----------------------------------------------------------------------------- */

/* A store in dir on env (which may be NULL) keeping up to max_batches batches or max_bytes in its batch log. */
static int open_with_feed(const char *dir, kv_env *env, uint64_t max_batches, uint64_t max_bytes, kv_db **db) {
    kv_options o;
    fx_options(&o, false);
    o.env = env;
    o.batch_log_max_batches = max_batches;
    o.batch_log_max_bytes = max_bytes;
    return kv_open(dir, &o, db);
}

/* One batch per key, each a put of 500 bytes. */
static void put_keys(kv_db *db, int from, int to) {
    char k[32], v[500];
    memset(v, 'v', sizeof v);
    for (int i = from; i < to; i++) {
        snprintf(k, sizeof k, "key%04d", i);
        CHECK_OK(kv_put(db, k, strlen(k), v, sizeof v, 0));
    }
}

/* Every batch from the oldest retained one to the current sequence can be read, and holds the put of key
 * (seq - 1) (the tests write one key per batch, key0000 as batch 1); *oldest gets the oldest. */
static bool feed_is_whole(kv_db *db, uint64_t *oldest) {
    int rc = kv_oldest_retained_batch(db, oldest);
    if (rc) {
        t_fail(__FILE__, __LINE__, "kv_oldest_retained_batch: %s (%s)", kv_strerror(rc), kv_errmsg());
        return false;
    }
    for (uint64_t seq = *oldest; seq <= kv_current_sequence(db); seq++) {
        kv_logged_batch *b = NULL;
        char want[32];
        snprintf(want, sizeof want, "key%04llu", (unsigned long long)seq - 1);
        rc = kv_get_batch(db, seq, &b);
        bool ok = rc == KV_OK && b->nops == 1 && b->ops[0].klen == strlen(want) &&
                  memcmp(b->ops[0].key, want, strlen(want)) == 0;
        if (!ok) t_fail(__FILE__, __LINE__, "batch %llu of %llu..%llu: %s (%s)", (unsigned long long)seq,
                        (unsigned long long)*oldest, (unsigned long long)kv_current_sequence(db),
                        rc ? kv_strerror(rc) : "not the batch written", rc ? kv_errmsg() : "");
        kv_logged_batch_free(b);
        if (!ok) return false;
    }
    return true;
}

/* A store in dir (a new directory) on a fault environment (*env), holding batches 1..3, whose batch-log appends
 * fail from now on. */
static int open_failing_feed(char *dir, size_t n, kv_env **env, uint64_t max_batches, uint64_t max_bytes,
                             kv_db **db) {
    snprintf(dir, n, "%s", t_tmpdir());
    *env = kv_fault_env_new(kv_env_posix());
    if (!*env) return KV_ENOMEM;
    int rc = open_with_feed(dir, *env, max_batches, max_bytes, db);
    if (rc) return rc;
    put_keys(*db, 0, 3);
    kv_fault_env_arm(*env, KV_FAULT_WRITE_EIO, 0, "BATCHLOG");
    return KV_OK;
}

/* feed_is_whole, and the oldest retained batch is want. */
static bool feed_whole_from(kv_db *db, uint64_t want) {
    uint64_t oldest = 0;
    if (!feed_is_whole(db, &oldest)) return false;
    if (oldest != want) t_fail(__FILE__, __LINE__, "oldest retained batch %llu, not %llu", (unsigned long long)oldest,
                               (unsigned long long)want);
    return oldest == want;
}

static void check_evicted(kv_db *db, uint64_t seq) {
    kv_logged_batch *b = NULL;
    int rc = kv_get_batch(db, seq, &b);
    kv_logged_batch_free(b);
    CHECK_MSG(rc == KV_EEVICTED, "batch %llu: %s, not evicted", (unsigned long long)seq, kv_strerror(rc));
}

/* A batch whose batch-log append failed is served from memory and appended before the next one: the feed keeps it.
 * It used to be missing for good, answered "evicted" above an older batch that was not. */
TEST(test_faults_batch_log_retries_a_failed_append) {
    char dir[512];
    kv_env *env;
    kv_db *db;
    CHECK_OK(open_failing_feed(dir, sizeof dir, &env, 1000, 0, &db));
    put_keys(db, 3, 5); /* batches 4 and 5: logged, their batch-log appends fail */
    CHECK(kv_fault_env_failures(env) > 0);
    CHECK(feed_whole_from(db, 1));
    kv_fault_env_clear(env);
    put_keys(db, 5, 6); /* appends 4, 5, then 6 */
    CHECK(feed_whole_from(db, 1));
    CHECK_EQ(kv_current_sequence(db), 6);
    kv_free(db);
    CHECK_OK(open_with_feed(dir, NULL, 1000, 0, &db)); /* from the files alone */
    CHECK(feed_whole_from(db, 1));
    uint64_t problems = 99;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
    env->destroy(env);
}

/* When the failed appends go on past what retention keeps (here 16 KiB, about 30 batches), they are given up:
 * the feed's oldest batch moves past them, and it has no hole, neither then nor after a reopen. */
TEST(test_faults_batch_log_gives_up_failed_appends_without_a_hole) {
    char dir[512];
    kv_env *env;
    kv_db *db;
    CHECK_OK(open_failing_feed(dir, sizeof dir, &env, 0, 16 << 10, &db));
    put_keys(db, 3, 43); /* batches 4..43: owed, the first thirty or so given up */
    kv_fault_env_clear(env);
    put_keys(db, 43, 45);
    uint64_t oldest = 0;
    CHECK(feed_is_whole(db, &oldest));
    CHECK_MSG(oldest > 20 && oldest < 44, "oldest retained batch %llu", (unsigned long long)oldest);
    check_evicted(db, 3);
    check_evicted(db, oldest - 1);
    kv_free(db);
    CHECK_OK(open_with_feed(dir, NULL, 0, 16 << 10, &db));
    uint64_t again = 0;
    CHECK(feed_is_whole(db, &again));
    CHECK_EQ(again, oldest);
    kv_free(db);
    env->destroy(env);
}

/* A store in dir (a new directory) whose batches 1..3 are in its batch log and 4..6, written while retention was
 * off and then flushed, in no log: opened again with retention on. */
static int open_after_batches_off(char *dir, size_t n, kv_db **db) {
    snprintf(dir, n, "%s", t_tmpdir());
    int rc = open_with_feed(dir, NULL, 1000, 0, db);
    if (rc) return rc;
    put_keys(*db, 0, 3);
    kv_free(*db);
    if ((rc = open_with_feed(dir, NULL, 0, 0, db))) return rc; /* retention off */
    put_keys(*db, 3, 6);
    rc = kv_compact_range(*db, NULL, 0, NULL, 0, NULL, NULL); /* flushed: no log holds batches 4..6 */
    kv_free(*db);
    return rc ? rc : open_with_feed(dir, NULL, 1000, 0, db);
}

/* Batches written while retention was off are not in the batch log: when it is on again, the feed starts after
 * them (it used to hold the batches before them, and answer "evicted" for the ones in between). */
TEST(test_faults_batch_log_off_for_a_while_leaves_no_hole) {
    char dir[512];
    kv_db *db;
    CHECK_OK(open_after_batches_off(dir, sizeof dir, &db));
    put_keys(db, 6, 8);
    CHECK(feed_whole_from(db, 7));
    check_evicted(db, 2);
    check_evicted(db, 5);
    kv_free(db);
    CHECK_OK(open_with_feed(dir, NULL, 1000, 0, &db));
    CHECK(feed_whole_from(db, 7));
    kv_free(db);
}

/* The newest batches missing from the files at open (written while retention was off, then flushed: no log holds
 * them) are a gap too: the feed starts after them before any batch is written. It used to hold the batches below
 * them and answer "evicted" for them until the next write found the gap. */
TEST(test_faults_batch_log_missing_newest_batches_leave_no_hole) {
    char dir[512];
    kv_db *db;
    CHECK_OK(open_after_batches_off(dir, sizeof dir, &db));
    CHECK_EQ(kv_current_sequence(db), 6);
    uint64_t oldest = 0;
    int rc = kv_oldest_retained_batch(db, &oldest);
    CHECK_MSG(rc == KV_ENOTFOUND, "oldest retained batch %llu (%s): batches 4..6 are not held",
              (unsigned long long)oldest, kv_strerror(rc));
    check_evicted(db, 3);
    check_evicted(db, 6);
    put_keys(db, 6, 7);
    CHECK(feed_whole_from(db, 7));
    kv_free(db);
}

/* When recovery cannot forget the batches above the last one replayed (a torn log tail; here the batch-log file's
 * truncation fails), the next batches reuse their sequence numbers in a newer file, which lookups prefer. That
 * overlap is no gap: the next open must not raise the floor over it. It used to, evicting every older batch. */
TEST(test_faults_batch_log_overlap_after_a_failed_forget_is_no_gap) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_db *db;
    CHECK_OK(open_with_feed(dir, NULL, 1000, 0, &db));
    put_keys(db, 0, 5);
    kv_free(db); /* the log and the batch log hold batches 1..5 */
    char log[256], path[1024];
    uint64_t end = 0;
    CHECK(t_newest_file(dir, ".log", log, sizeof log));
    snprintf(path, sizeof path, "%s/%s", dir, log);
    CHECK(t_log_end(path, false, &end) && end > 3);
    CHECK(truncate(path, (off_t)(end - 3)) == 0); /* batch 5 torn */
    kv_env *env = kv_fault_env_new(kv_env_posix());
    CHECK(env);
    kv_fault_env_arm(env, KV_FAULT_WRITE_STUCK, 0, "BATCHLOG"); /* the batch log cannot be cut back */
    CHECK_OK(open_with_feed(dir, env, 1000, 0, &db));
    kv_fault_env_clear(env);
    CHECK_EQ(kv_current_sequence(db), 4);
    put_keys(db, 4, 6); /* batches 5 (again) and 6, in a new file */
    CHECK(feed_whole_from(db, 1));
    kv_free(db);
    env->destroy(env);
    CHECK_OK(open_with_feed(dir, NULL, 1000, 0, &db));
    CHECK(feed_whole_from(db, 1));
    kv_free(db);
}

/* Byte retention drops whole oldest files: also a damaged one, with the batches its damage may hide (up to the next
 * file's first). It used to raise the floor only past the damaged file's last readable batch, which never let the
 * file go, and looped for good, holding the batch log's lock. */
TEST(test_faults_batch_log_byte_retention_drops_a_damaged_oldest_file) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_db *db;
    CHECK_OK(open_with_feed(dir, NULL, 0, 16 << 10, &db));
    put_keys(db, 0, 25);                                          /* about 13 KiB, in BATCHLOG-000001 */
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL)); /* flushed: no log holds them */
    kv_free(db);
    char path[1024];
    snprintf(path, sizeof path, "%s/BATCHLOG-000001", dir);
    FILE *f = fopen(path, "r+b");
    CHECK(f);
    CHECK(fseek(f, 5000, SEEK_SET) == 0 && fputc('X', f) != EOF && fputc('Y', f) != EOF); /* a record damaged */
    CHECK(fclose(f) == 0);
    CHECK_OK(open_with_feed(dir, NULL, 0, 16 << 10, &db));
    put_keys(db, 25, 50); /* past 16 KiB with the new file: the damaged one goes */
    CHECK(access(path, F_OK) != 0);
    CHECK(feed_whole_from(db, 26));
    kv_free(db);
}

/* A flush syncs the batch log, then records the store's last sequence in the manifest. Batches written after the
 * flushed memtable, into a log never synced, are in the synced batch log but not in any table: a power loss takes
 * them from the log. After reopening, the batch log must not hand them out (design.md, "The batch log"). The
 * manifest used to record the last sequence of every batch written, so recovery kept them. */
TEST(test_faults_batch_log_forgets_batches_a_power_loss_took) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_env *env = kv_fault_env_new(kv_env_posix());
    CHECK(env);
    kv_options o;
    fx_options(&o, true);
    o.batch_log_max_batches = 1000000;
    o.env = env;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    kv_fault_env_arm(env, KV_FAULT_ENOSPC, 0, ".sst"); /* flushes fail: the full memtable waits */
    char k[32], v[200];
    memset(v, 'v', sizeof v);
    kv_stats st;
    for (int n = 0;; n++) {
        snprintf(k, sizeof k, "key%06d", n);
        CHECK_OK(kv_put(db, k, strlen(k), v, sizeof v, 0));
        CHECK_OK(kv_get_stats(db, &st));
        if (st.immutable_memtables >= 1 || n >= 100000) break;
    }
    CHECK(st.immutable_memtables >= 1);
    uint64_t lost_seq = 0; /* three batches into the new log, never synced */
    for (int i = 0; i < 3; i++) {
        kv_batch *b;
        CHECK_OK(kv_batch_new(&b));
        snprintf(k, sizeof k, "lost%d", i);
        CHECK_OK(kv_batch_put(b, k, strlen(k), "x", 1));
        CHECK_OK(kv_write(db, b, 0, &lost_seq));
        kv_batch_free(b);
    }
    kv_fault_env_clear(env); /* the flush is retried: it syncs the batch log and writes the manifest edit */
    for (int i = 0; i < 500; i++) {
        CHECK_OK(kv_get_stats(db, &st));
        if (st.flushes >= 1 && st.immutable_memtables == 0) break;
        usleep(10000);
    }
    CHECK(st.flushes >= 1);
    kv_fault_env_crash(env);
    kv_close(db);
    kv_free(db);
    CHECK_OK(kv_fault_env_apply_crash(env));
    env->destroy(env);
    fx_options(&o, true);
    o.batch_log_max_batches = 1000000;
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    CHECK_MSG(kv_contains(db, NULL, "lost2", 5) == 0, "setup: lost2 survived the power loss");
    CHECK(kv_current_sequence(db) < lost_seq);
    kv_logged_batch *lb = NULL;
    int rc = kv_get_batch(db, lost_seq, &lb);
    if (lb) kv_logged_batch_free(lb);
    CHECK_MSG(rc != KV_OK, "kv_get_batch(%llu) returns a batch (put lost2) that the store does not hold",
              (unsigned long long)lost_seq);
    /* the next batches take those sequence numbers, and the batch log hands out the new batch */
    uint64_t seq = 0;
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put(b, "after", 5, "y", 1));
    CHECK_OK(kv_write(db, b, 0, &seq));
    kv_batch_free(b);
    lb = NULL;
    CHECK_OK(kv_get_batch(db, seq, &lb));
    CHECK(lb && lb->nops == 1 && lb->ops[0].klen == 5 && memcmp(lb->ops[0].key, "after", 5) == 0);
    if (lb) kv_logged_batch_free(lb);
    kv_free(db);
}

/* Group commit under failing log writes and fsyncs: eight synced writers; a failed append or fsync fails every writer
 * of its group, each with the failure's message (kv_errmsg is per thread, and the leader's thread set it: the other
 * members' was empty, and the mount's error log said only "a write failed: "), writes work again once the fault is
 * gone, and after a power loss every acknowledged synced write is there. */
typedef struct sync_writer {
    kv_db *db;
    int t, n, ok_last, fails, empty; /* empty: failures without a message */
} sync_writer;

static void *sync_writer_main(void *arg) {
    sync_writer *g = arg;
    char k[32];
    for (int i = 0; i < g->n; i++) {
        snprintf(k, sizeof k, "t%d-%05d", g->t, i);
        if (kv_put(g->db, k, strlen(k), k, strlen(k), KV_SYNC) == KV_OK) {
            g->ok_last = i;
        } else {
            g->fails++;
            g->empty += kv_errmsg()[0] == 0;
        }
    }
    return NULL;
}

TEST(test_faults_group_commit_failures) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_env *env = kv_fault_env_new(kv_env_posix());
    CHECK(env);
    kv_options o;
    fx_options(&o, true);
    o.env = env;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    enum { NT = 8 };
    sync_writer g[NT];
    pthread_t th[NT];
    int fails = 0, empty = 0;
    for (int round = 0; round < 6; round++) {
        uint64_t before = kv_fault_env_failures(env);
        kv_fault_env_arm(env, round % 2 ? KV_FAULT_SYNC_EIO : KV_FAULT_WRITE_SHORT, 20, ".log");
        for (int t = 0; t < NT; t++) {
            g[t] = (sync_writer){db, t, 200, -1, 0, 0};
            CHECK(pthread_create(&th[t], NULL, sync_writer_main, &g[t]) == 0);
        }
        /* clear once the fault has struck (bounded: 2 s) */
        for (int w = 0; w < 2000 && kv_fault_env_failures(env) == before; w++) usleep(1000);
        kv_fault_env_clear(env);
        for (int t = 0; t < NT; t++) {
            pthread_join(th[t], NULL);
            fails += g[t].fails;
            empty += g[t].empty;
        }
    }
    CHECK(fails > 0);
    CHECK_MSG(empty == 0, "%d of %d failed writes left kv_errmsg empty", empty, fails);
    /* with the fault gone, synced writes succeed again */
    for (int t = 0; t < NT; t++) {
        char k[32];
        snprintf(k, sizeof k, "t%d-final", t);
        CHECK_OK(kv_put(db, k, strlen(k), "f", 1, KV_SYNC));
    }
    kv_fault_env_crash(env);
    kv_close(db);
    kv_free(db);
    CHECK_OK(kv_fault_env_apply_crash(env));
    env->destroy(env);
    fx_options(&o, true);
    CHECK_OK(kv_open(dir, &o, &db));
    if (t_failed()) return;
    for (int t = 0; t < NT; t++) {
        char k[32];
        if (g[t].ok_last >= 0) {
            snprintf(k, sizeof k, "t%d-%05d", t, g[t].ok_last);
            CHECK_MSG(kv_contains(db, NULL, k, strlen(k)) == 1, "acknowledged synced %s lost", k);
        }
        snprintf(k, sizeof k, "t%d-final", t);
        CHECK_MSG(kv_contains(db, NULL, k, strlen(k)) == 1, "acknowledged synced %s lost", k);
    }
    kv_free(db);
}

/* A checkpoint whose manifest edit fails reports the error and leaves no CURRENT behind: its CURRENT was written
 * before the edit that lists the tables, and named a manifest listing none of them (an openable, silently empty
 * copy). A checkpoint that succeeds opens with everything. */
TEST(test_faults_failed_checkpoint_is_not_openable) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    if (t_failed()) return;
    CHECK_OK(fx_fill(&f, 400)); /* several tables */
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    char dest[600], manifests[620];
    snprintf(dest, sizeof dest, "%s-checkpoint", f.dir);
    snprintf(manifests, sizeof manifests, "%s/MANIFEST", dest);
    /* the second append to the checkpoint's manifest (its snapshot is the first) fails */
    kv_fault_env_arm(f.env, KV_FAULT_WRITE_EIO, 1, manifests);
    int rc = kv_checkpoint(f.db, dest, NULL, NULL);
    kv_fault_env_clear(f.env);
    CHECK_MSG(rc != KV_OK, "the checkpoint did not meet the fault");
    kv_options o;
    fx_options(&o, true);
    o.create_if_missing = false;
    kv_db *db2 = NULL;
    rc = kv_open(dest, &o, &db2);
    CHECK_MSG(rc == KV_ENOTFOUND, "a failed checkpoint opened: %s", kv_strerror(rc));
    if (db2) kv_free(db2);
    /* and one that succeeds holds every key */
    snprintf(dest, sizeof dest, "%s-checkpoint2", f.dir);
    CHECK_OK(kv_checkpoint(f.db, dest, NULL, NULL));
    CHECK_OK(kv_open(dest, &o, &db2));
    if (db2) {
        kv_db *orig = f.db;
        f.db = db2;
        CHECK_MSG(fx_verify(&f), "checkpoint: %s", f.err);
        f.db = orig;
        kv_free(db2);
    }
    fx_free(&f);
}

/* A large value put on a full disk fails; its stream's blob file must not keep the space it took. When even the
 * manifest cannot grow, the file is cut back to its header (an empty blob file) instead of removed, and the store
 * stays clean; once there is room, the file goes and writes work. */
TEST(test_faults_failed_stream_put_gives_space_back) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    if (t_failed()) return;
    static uint8_t data[300000];
    memset(data, 'q', sizeof data);
    kv_stream *s;
    CHECK_OK(kv_stream_new(f.db, &s));
    CHECK_OK(kv_stream_append(s, data, 100000)); /* into its own blob file */
    kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, NULL); /* the disk is full: every file */
    CHECK(kv_stream_append(s, data, sizeof data) != KV_OK);
    kv_stream_free(s);
    kv_fault_env_clear(f.env);
    /* no blob file holds more than its header */
    char **names;
    size_t n;
    kv_env *posix = kv_env_posix();
    CHECK_OK(posix->list_dir(posix, f.dir, &names, &n));
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]);
        if (len < 5 || strcmp(names[i] + len - 5, ".blob") != 0) continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", f.dir, names[i]);
        uint64_t size = 0;
        CHECK_OK(posix->file_size(posix, path, &size));
        CHECK_MSG(size <= 16, "%s keeps %llu bytes", names[i], (unsigned long long)size);
    }
    kv_env_free_names(names, n);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    CHECK_MSG(fx_writes_recover(&f), "%s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

/* Files in dir whose names end in suffix or start with prefix. */
static int count_files(const char *dir, const char *prefix, const char *suffix) {
    char **names;
    size_t n;
    kv_env *posix = kv_env_posix();
    if (posix->list_dir(posix, dir, &names, &n)) return -1;
    int c = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]), sl = suffix ? strlen(suffix) : 0;
        if ((prefix && strncmp(names[i], prefix, strlen(prefix)) == 0) ||
            (suffix && len >= sl && strcmp(names[i] + len - sl, suffix) == 0))
            c++;
    }
    kv_env_free_names(names, n);
    return c;
}

/* Count the blob files in dir. */
static int count_blob_files(const char *dir) { return count_files(dir, NULL, ".blob"); }

/* Large values retried on a full disk: each attempt starts a blob file whose header fits and whose record does not.
 * Such a file holds nothing and must go at once; they used to stay listed in the version, one per attempt, until a
 * blob GC pass (seen on a full tmpfs: 32 empty blob files after one `dd` through the mount, still there after a
 * remount). */
TEST(test_faults_large_puts_on_full_disk_leave_no_empty_blob_files) {
    fx f;
    CHECK_OK(fx_open(&f, false));
    if (t_failed()) return;
    CHECK_OK(fx_put(&f, true, 0)); /* the shared blob file, with one record */
    int before = count_blob_files(f.dir);
    CHECK(before == 1);
    for (int i = 0; i < 10; i++) {
        /* the file's creation and its header succeed; the record's append finds the disk full */
        kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, i == 0 ? 0 : 2, ".blob");
        CHECK(fx_put(&f, true, 0) == KV_ENOSPC);
        kv_fault_env_clear(f.env);
    }
    int after = count_blob_files(f.dir);
    CHECK_MSG(after == before, "%d blob files after 10 failed large puts, %d before", after, before);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    CHECK_MSG(fx_writes_recover(&f), "%s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    CHECK(count_blob_files(f.dir) <= before + 1);
    fx_free(&f);
}

/* Read the stats every 100 ms, for up to 20 s, until the store holds less than 1 MiB of blob files (a pass gave a
 * large value's space back); print how long that took. *st: the last stats read (blob_bytes UINT64_MAX if that
 * failed). */
static void wait_for_blob_space_back(kv_db *db, kv_stats *st) {
    int waited = 0;
    for (; waited < 200; waited++) {
        if (kv_get_stats(db, st) != KV_OK) {
            st->blob_bytes = UINT64_MAX;
            break;
        }
        if (st->blob_bytes < (1u << 20)) break;
        usleep(100 * 1000);
    }
    printf("# %llu blob bytes after %d ms\n", (unsigned long long)st->blob_bytes, waited * 100);
}

/* A write that fails for a full disk before the compaction thread first runs (a busy machine may start it only after
 * the caller's first writes) hurries blob GC all the same. The thread took the count of such failures as it found it
 * when it started for the count it had seen, and the hurried pass never came. Here nothing else makes one due: an
 * overwrite removes nothing (no pass after removals), so only the minute without compactions would. */
TEST(test_faults_full_disk_before_the_compaction_thread_starts_still_hurries_gc) {
    fx f;
    t_compact_start_hold();
    int rc = fx_open(&f, true);
    size_t big = 2u << 20;
    uint8_t *v = malloc(big);
    if (!v) rc = KV_ENOMEM;
    if (!rc) {
        memset(v, 'x', big);
        rc = kv_put(f.db, "big", 3, v, big, 0);
    }
    int full = KV_OK;
    if (!rc) {
        kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, NULL);
        full = kv_put(f.db, "more", 4, v, big, 0);
        kv_fault_env_clear(f.env);
        rc = kv_put(f.db, "big", 3, "small", 5, 0);
    }
    t_compact_start_release();
    free(v);
    if (rc || full != KV_ENOSPC) {
        t_fail(__FILE__, __LINE__, "writes: %s, the one on a full disk: %s", kv_strerror(rc), kv_strerror(full));
        fx_free(&f);
        return;
    }
    kv_stats st;
    wait_for_blob_space_back(f.db, &st); /* about 2 s is expected */
    CHECK_MSG(st.blob_bytes < (1u << 20), "%llu blob bytes in %llu files 20 s after the overwrite",
              (unsigned long long)st.blob_bytes, (unsigned long long)st.blob_files);
    fx_free(&f);
}

/* A full disk, then a delete of the large value that filled it: the space comes back within seconds, from the
 * background, without a compaction (which the disk may be too full for) or a reopen. It used to take both, and a
 * minute of idleness. */
TEST(test_faults_full_disk_then_a_delete_gives_the_space_back) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    if (t_failed()) return;
    size_t big = 2u << 20;
    uint8_t *v = malloc(big);
    CHECK(v != NULL);
    if (!v) {
        fx_free(&f);
        return;
    }
    memset(v, 'x', big);
    CHECK_OK(kv_put(f.db, "big", 3, v, big, 0));
    kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, NULL);
    CHECK_EQ(kv_put(f.db, "more", 4, v, big, 0), KV_ENOSPC);
    kv_fault_env_clear(f.env);
    CHECK_OK(kv_delete(f.db, "big", 3, 0));
    kv_stats st;
    wait_for_blob_space_back(f.db, &st); /* about 1 s is expected */
    CHECK_MSG(st.blob_bytes < (1u << 20), "%llu blob bytes in %llu files 20 s after the delete",
              (unsigned long long)st.blob_bytes, (unsigned long long)st.blob_files);
    CHECK_OK(kv_put(f.db, "after", 5, v, 5000, 0));
    uint64_t problems = 1;
    CHECK_OK(kv_check(f.db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    free(v);
    fx_free(&f);
}

/* Writers stall at the level-0 stop trigger while compactions keep failing (here: reads of the tables fail). Once a
 * write has failed for a full disk, the compaction thread runs blob GC passes between its attempts, and a pass first
 * waits to lead the write queue, which the stalled writer leads: the compaction thread stopped for good, and the
 * writer with it, even after the cause of the failures was gone. And a writer at the stop trigger used to wait for
 * compactions that keep failing for ever (seen through the mount: a full tmpfs, where no compaction's output fits,
 * and a process stuck in close()); it now gets the compaction's error after one prompt retry. The writer here
 * retries a failed put, as a user would, until it gets through or the store closes. */
typedef struct stall_writer {
    kv_db *db;
    atomic_int done;
    atomic_int errors;     /* puts that failed */
    atomic_int first_error;
    atomic_llong first_error_us; /* when the first put failed, from the start of the writer */
    int rc;
} stall_writer;

static long long mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *stall_writer_main(void *arg) {
    stall_writer *w = arg;
    char k[32], v[200];
    memset(v, 'v', sizeof v);
    int rc = KV_OK;
    long long t0 = mono_us();
    for (int i = 0; i < 3000 && rc != KV_ECLOSED;) {
        snprintf(k, sizeof k, "w%06d", i * 7919 % 3000); /* every table overlaps the others */
        rc = kv_put(w->db, k, strlen(k), v, sizeof v, 0);
        if (rc == KV_OK) {
            i++;
        } else if (rc != KV_ECLOSED) {
            if (atomic_fetch_add(&w->errors, 1) == 0) {
                atomic_store(&w->first_error, rc);
                atomic_store(&w->first_error_us, mono_us() - t0);
            }
            usleep(20 * 1000);
        }
    }
    w->rc = rc;
    atomic_store(&w->done, 1);
    return NULL;
}

/* A store with background threads whose level 0 slows writes at 3 files and stops them at 4 (on failure, t_failed()
 * and fx_free(f) are the caller's). */
static void open_small_level0(fx *f) {
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", t_tmpdir());
    f->env = kv_fault_env_new(kv_env_posix());
    CHECK(f->env != NULL);
    fx_options(&f->o, true);
    f->o.l0_slowdown_trigger = 3;
    f->o.l0_stop_trigger = 4;
    f->o.env = f->env;
    pthread_mutex_init(&f->heard.mu, NULL);
    f->o.log = hear;
    f->o.log_ctx = &f->heard;
    CHECK_OK(kv_open(f->dir, &f->o, &f->db));
}

/* false (f freed, the failure reported) when the store did not open */
static bool fx_open_small_level0(fx *f) {
    open_small_level0(f);
    if (!t_failed()) return true;
    fx_free(f);
    return false;
}

TEST(test_faults_blob_gc_between_failed_compactions_does_not_stop_stalled_writers) {
    fx f;
    if (!fx_open_small_level0(&f)) return;
    static uint8_t big[5000];
    memset(big, 'b', sizeof big);
    CHECK_OK(kv_put(f.db, "big", 3, big, sizeof big, 0)); /* a blob file: GC has something to look at */
    kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, NULL);
    CHECK_EQ(kv_put(f.db, "more", 4, big, sizeof big, 0), KV_ENOSPC); /* GC hurries from now on */
    kv_fault_env_clear(f.env);
    kv_fault_env_arm(f.env, KV_FAULT_READ_EIO, 0, ".sst"); /* compactions fail; flushes do not read */
    stall_writer w = {.db = f.db};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, stall_writer_main, &w) == 0);
    sleep(4); /* the writer stalls at the stop trigger; a hurried GC pass comes due */
    kv_stats st = {0};
    (void)kv_get_stats(f.db, &st);
    printf("# after 4 s: writer done %d (%d), level 0 %llu files, level 1 %llu, %llu flushes, %llu compactions, "
           "%llu faults, %llu us stalled\n", atomic_load(&w.done), w.rc, (unsigned long long)st.level_files[0],
           (unsigned long long)st.level_files[1], (unsigned long long)st.flushes, (unsigned long long)st.compactions,
           (unsigned long long)kv_fault_env_failures(f.env), (unsigned long long)st.stall_micros);
    /* within the 4 s the writer was told, not left waiting: a compaction attempt, a retry and their waits */
    CHECK_MSG(atomic_load(&w.errors) > 0, "no put failed in 4 s of failing compactions: the writer waits for them");
    CHECK_MSG(atomic_load(&w.first_error) == KV_EIO, "first error %d", atomic_load(&w.first_error));
    printf("# %d failed puts, the first after %lld ms\n", atomic_load(&w.errors),
           atomic_load(&w.first_error_us) / 1000);
    kv_fault_env_clear(f.env);
    int waited = 0;
    for (; waited < 300 && !atomic_load(&w.done); waited++) usleep(100 * 1000);
    CHECK_MSG(atomic_load(&w.done), "the writer still waits 30 s after compactions could run again");
    if (!atomic_load(&w.done)) (void)kv_close(f.db); /* wakes the writer (KV_ECLOSED) */
    pthread_join(th, NULL);
    if (waited < 300) CHECK_OK(w.rc);
    fx_free(&f);
}

/* While compactions fail and level 0 is at the stop trigger, a write that needs a new memtable fails (above), except a
 * batch that only removes data: on a disk too full for a compaction's output, deletes are what shrink that output, and
 * refusing them left a full store (through the mount: `rm -rf` of its files) stuck until space was freed elsewhere. */
TEST(test_faults_deletes_pass_the_stop_trigger_while_compactions_fail) {
    fx f;
    if (!fx_open_small_level0(&f)) return;
    kv_fault_env_arm(f.env, KV_FAULT_READ_EIO, 0, ".sst"); /* compactions fail; flushes do not read */
    char k[32], v[200];
    memset(v, 'v', sizeof v);
    int rc = KV_OK, n = 0;
    for (; n < 5000 && rc == KV_OK; n++) { /* until level 0 stops writes: 5 memtables or so */
        snprintf(k, sizeof k, "k%06d", n * 7919 % 5000);
        rc = kv_put(f.db, k, strlen(k), v, sizeof v, 0);
    }
    CHECK_MSG(rc == KV_EIO, "put %d: %d (%s)", n, rc, kv_errmsg());
    printf("# the put of key %d failed: %s\n", n, kv_errmsg());
    /* the memtable is full: the next write needs a new one, and level 0 is at the stop trigger */
    CHECK_EQ(kv_put(f.db, "another", 7, v, sizeof v, 0), KV_EIO);
    kv_batch *b = NULL;
    CHECK_OK(kv_batch_new(&b));
    if (!b) {
        fx_free(&f);
        return;
    }
    /* a delete with more bytes put than it may carry is not a removal */
    CHECK_OK(kv_batch_delete(b, "k000001", 7));
    static uint8_t big[300];
    CHECK_OK(kv_batch_put(b, "meta", 4, big, sizeof big));
    CHECK_EQ(kv_write(f.db, b, 0, NULL), KV_EIO);
    /* an unlink's shape: two deletes and a directory's small record */
    kv_batch_clear(b);
    snprintf(k, sizeof k, "k%06d", 0);
    CHECK_OK(kv_batch_delete(b, k, strlen(k)));
    CHECK_OK(kv_batch_delete(b, "absent", 6));
    CHECK_OK(kv_batch_put(b, "dir", 3, v, 60));
    CHECK_OK(kv_write(f.db, b, 0, NULL));
    kv_batch_free(b);
    /* and plain deletes, any number of memtables' worth */
    int deleted = 1;
    for (int i = 1; i < n - 1; i++) {
        snprintf(k, sizeof k, "k%06d", i * 7919 % 5000);
        if (kv_delete(f.db, k, strlen(k), 0) != KV_OK) {
            CHECK_MSG(0, "delete %d failed: %s", i, kv_errmsg());
            break;
        }
        deleted++;
    }
    kv_stats st = {0};
    CHECK_OK(kv_get_stats(f.db, &st));
    printf("# %d deletes went through with %llu files in level 0\n", deleted, (unsigned long long)st.level_files[0]);
    CHECK(st.level_files[0] >= 4);
    kv_fault_env_clear(f.env);
    /* compactions run again: writes go on, and what was deleted is gone */
    CHECK_OK(kv_put(f.db, "after", 5, v, sizeof v, 0));
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    for (int i = 0; i < n - 1; i++) {
        snprintf(k, sizeof k, "k%06d", i * 7919 % 5000);
        CHECK_EQ(kv_contains(f.db, NULL, k, strlen(k)), 0);
    }
    CHECK_MSG(fx_check(&f), "%s", f.err);
    fx_free(&f);
}

/* Arm a fault that fails compactions (flushes do not read) and write keys "k000000".."k004999" until the
 * background compaction has failed; *st: the stats then. */
static void write_until_compactions_fail(fx *f, kv_stats *st) {
    kv_fault_env_arm(f->env, KV_FAULT_READ_EIO, 0, ".sst");
    char k[32], v[200];
    memset(v, 'v', sizeof v);
    memset(st, 0, sizeof *st);
    for (int n = 0; n < 20000 && st->compaction_error == KV_OK; n++) {
        snprintf(k, sizeof k, "k%06d", n * 7919 % 5000);
        if (kv_put(f->db, k, strlen(k), v, sizeof v, 0) != KV_OK) usleep(10000); /* at the stop trigger */
        if (n % 100 == 0) CHECK_OK(kv_get_stats(f->db, st));
    }
}

/* A log callback that blocks (syslog on a busy log socket) does not hold up the store: the engine calls it without
 * its mutex. Here the first call blocks until the test lets it go (at most 5 s), and meanwhile another thread's
 * kv_get_stats and kv_delete (which take the mutex) must finish. */
typedef struct blocking_log {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, release, left;
} blocking_log;

static void log_and_block(void *ctx, int level, const char *msg) {
    (void)level, (void)msg;
    blocking_log *bl = ctx;
    pthread_mutex_lock(&bl->mu);
    if (!bl->entered) {
        bl->entered = true;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 5; /* not for ever: with the engine's mutex held here, the test would hang, not fail */
        while (!bl->release && pthread_cond_timedwait(&bl->cv, &bl->mu, &ts) == 0) {
        }
        bl->left = true;
    }
    pthread_mutex_unlock(&bl->mu);
}

typedef struct stats_and_put {
    kv_db *db;
    blocking_log *bl;
    int rc;
    bool while_blocked; /* both calls returned while the callback was still blocked */
    atomic_bool done;
} stats_and_put;

static void *stats_then_put(void *arg) {
    stats_and_put *sp = arg;
    kv_stats st;
    sp->rc = kv_get_stats(sp->db, &st);
    if (!sp->rc) sp->rc = kv_delete(sp->db, "k000001", 7, 0); /* a removal: passes the stop trigger meanwhile */
    pthread_mutex_lock(&sp->bl->mu);
    sp->while_blocked = !sp->bl->left;
    pthread_mutex_unlock(&sp->bl->mu);
    atomic_store(&sp->done, true);
    return NULL;
}

TEST(test_faults_a_blocking_log_callback_holds_up_nothing) {
    fx f;
    blocking_log bl = {.entered = false, .release = false, .left = false};
    pthread_mutex_init(&bl.mu, NULL);
    pthread_cond_init(&bl.cv, NULL);
    memset(&f, 0, sizeof f);
    snprintf(f.dir, sizeof f.dir, "%s", t_tmpdir());
    f.env = kv_fault_env_new(kv_env_posix());
    CHECK(f.env != NULL);
    fx_options(&f.o, true);
    f.o.env = f.env;
    f.o.log = log_and_block;
    f.o.log_ctx = &bl;
    CHECK_OK(kv_open(f.dir, &f.o, &f.db));
    kv_fault_env_arm(f.env, KV_FAULT_READ_EIO, 0, ".sst"); /* compactions fail; flushes do not read */
    char k[32], v[200];
    memset(v, 'v', sizeof v);
    bool entered = false;
    for (int n = 0; n < 20000 && !entered; n++) {
        snprintf(k, sizeof k, "k%06d", n * 7919 % 5000);
        if (kv_put(f.db, k, strlen(k), v, sizeof v, 0) != KV_OK) usleep(10000); /* at the stop trigger */
        pthread_mutex_lock(&bl.mu);
        entered = bl.entered;
        pthread_mutex_unlock(&bl.mu);
    }
    CHECK(entered);
    stats_and_put sp = {f.db, &bl, -1, false, false};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, stats_then_put, &sp), 0);
    for (int i = 0; i < 500 && !atomic_load(&sp.done); i++) usleep(10000);
    bool done = atomic_load(&sp.done);
    pthread_mutex_lock(&bl.mu);
    bl.release = true; /* let it go in any case, so that the thread and the store can end */
    pthread_cond_broadcast(&bl.cv);
    pthread_mutex_unlock(&bl.mu);
    pthread_join(th, NULL);
    CHECK_MSG(done && sp.while_blocked, "kv_get_stats and a delete waited for the log callback");
    CHECK_OK(sp.rc);
    kv_fault_env_clear(f.env);
    fx_free(&f);
}

/* Background compactions that fail show in kv_get_stats while they do; a manual compaction that succeeds ends that
 * at once. It used to stay the last word until the next background compaction succeeded, which is not due once the
 * manual one has compacted everything: writers at the level-0 stop trigger later took it for a compaction that keeps
 * failing, and kvfs stats would say so for good. */
TEST(test_faults_failing_compactions_show_in_stats_until_one_succeeds) {
    fx f;
    if (!fx_open_small_level0(&f)) return;
    kv_stats st;
    write_until_compactions_fail(&f, &st);
    CHECK_EQ(st.compaction_error, KV_EIO);
    CHECK(st.compaction_failures > 0);
    CHECK_EQ(st.flush_error, KV_OK);
    /* the engine's log heard of the first failure, not of each retry */
    char line[512] = "";
    CHECK_EQ(heard(&f, "E background compaction failed (retried until it works): ", line), 1);
    CHECK_MSG(strstr(line, "I/O error: "), "heard: %s", line);
    /* A manual compaction under the fault flushes the memtable, then fails; the background thread, woken at its end,
     * fails again and pauses. Once the fault is gone the next manual compaction has nothing to flush (which would
     * wake that thread for a compaction of its own) and compacts everything. */
    CHECK_EQ(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL), KV_EIO);
    kv_fault_env_clear(f.env);
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    CHECK_OK(kv_get_stats(f.db, &st));
    CHECK_MSG(st.compaction_error == KV_OK, "after a compaction that succeeded: compaction_error %s",
              kv_strerror(st.compaction_error));
    CHECK_EQ(st.level_files[0], 0);
    /* the compaction thread, woken at the end of the manual compaction, ends its run of failures and says so */
    CHECK_EQ(await_heard(&f, "N background compaction works again, after "), 1);
    CHECK_EQ(heard(&f, "E background compaction failed", NULL), 1);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    fx_free(&f);
}

/* A manual compaction that succeeds without touching what the background compaction fails on (a key range that holds
 * nothing) clears compaction_error, and the background thread retries at once; but the log must not hear that
 * compactions work again: they do not, and the retry fails on as before, in the same run of failures. It used to
 * hear "works again" and then "failed" anew each time kvfs compact ran on such a range. */
TEST(test_faults_a_manual_compaction_elsewhere_does_not_end_a_run_of_failures) {
    fx f;
    if (!fx_open_small_level0(&f)) return;
    kv_stats st;
    write_until_compactions_fail(&f, &st);
    CHECK_EQ(st.compaction_error, KV_EIO);
    CHECK_EQ(await_heard(&f, "E background compaction failed (retried until it works): "), 1);
    /* every key is "k..."; nothing lies in [z1, z2] */
    CHECK_OK(kv_compact_range(f.db, "z1", 2, "z2", 2, NULL, NULL));
    CHECK_OK(kv_get_stats(f.db, &st));
    uint64_t before = st.compaction_failures;
    /* the background thread, woken at the end of the manual compaction, tries again and fails again */
    for (int i = 0; i < 500 && st.compaction_failures == before; i++) {
        usleep(10000);
        CHECK_OK(kv_get_stats(f.db, &st));
    }
    CHECK_MSG(st.compaction_failures > before, "the background compaction did not try again");
    CHECK_EQ(st.compaction_error, KV_EIO);
    CHECK_EQ(heard(&f, "N background compaction works again", NULL), 0);
    CHECK_EQ(heard(&f, "E background compaction failed", NULL), 1);
    /* once the cause is gone, the background compaction's own success ends the run, and the log hears it (after the
     * thread's pause, up to 5 s after many failures) */
    kv_fault_env_clear(f.env);
    for (int i = 0; i < 3 && !heard(&f, "N background compaction works again, after ", NULL); i++)
        (void)await_heard(&f, "N background compaction works again, after ");
    CHECK_EQ(heard(&f, "N background compaction works again, after ", NULL), 1);
    CHECK_EQ(heard(&f, "E background compaction failed", NULL), 1);
    fx_free(&f);
}

/* The last bytes of the disk (a memtable and 1 MiB, at most an eighth) are kept for deletes, the log and compactions:
 * writes that add data get KV_ENOSPC there, deletes go on, and compactions stop at half of it unless their output
 * stays small. Here the disk's free space is what the fault environment reports. */
static void last_bytes_case(bool background) {
    fx f;
    CHECK_OK(fx_open(&f, background));
    if (t_failed()) return;
    static uint8_t v[1000];
    char k[32];
    for (int i = 0; i < 600; i++) { /* about 600 KB of tables */
        memset(v, 'a' + i % 26, sizeof v);
        v[0] = (uint8_t)i; /* not all alike: the tables do not compress to nothing */
        for (size_t j = 1; j < sizeof v; j += 7) v[j] = (uint8_t)(i * 31 + j);
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_put(f.db, k, strlen(k), v, sizeof v, 0));
    }
    uint64_t gib = 1ull << 30, floor = (16u << 10) + (1u << 20); /* fx_options: 16 KiB memtables */
    kv_fault_env_set_disk_space(f.env, floor - 1, gib);
    usleep(1100 * 1000); /* writes look at the disk once a second while far from the floor (and at every write near it) */
    int rc = kv_put(f.db, "more", 4, v, 10, 0);
    CHECK_EQ(rc, KV_ENOSPC);
    CHECK_MSG(strstr(kv_errmsg(), "kept for deletes") != NULL, "%s", kv_errmsg());
    kv_stream *st = NULL;
    CHECK_OK(kv_stream_new(f.db, &st));
    CHECK_EQ(kv_stream_append(st, v, sizeof v), KV_ENOSPC);
    kv_stream_free(st);
    CHECK_OK(kv_delete(f.db, "k00000", 6, 0));
    kv_batch *b = NULL; /* `> file` through the mount: a truncation and the file's new times */
    CHECK_OK(kv_batch_new(&b));
    if (b) {
        CHECK_OK(kv_batch_truncate(b, 0, "k00599", 6, 0));
        CHECK_OK(kv_batch_put(b, "times", 5, v, 60));
        CHECK_OK(kv_write(f.db, b, 0, NULL));
        /* a rename (through the mount: the unlink of a file still open moves its value too) */
        kv_batch_clear(b);
        CHECK_OK(kv_batch_move(b, 0, "k00598", 6, 0, "renamed", 7));
        CHECK_OK(kv_batch_put(b, "times", 5, v, 60));
        CHECK_OK(kv_write(f.db, b, 0, NULL));
        /* but not the rename of a large directory: moves of values kept whole rewrite their bytes */
        kv_batch_clear(b);
        for (int i = 0; i < 20; i++) {
            char from[32], to[32];
            snprintf(from, sizeof from, "k%05d", 500 + i);
            snprintf(to, sizeof to, "moved%05d", i);
            CHECK_OK(kv_batch_move(b, 0, from, strlen(from), 0, to, strlen(to)));
        }
        CHECK_EQ(kv_write(f.db, b, 0, NULL), KV_ENOSPC);
        kv_batch_free(b);
    }
    /* compactions: stopped at half the floor once their output passes 256 KiB */
    kv_fault_env_set_disk_space(f.env, floor / 2 - 1, gib);
    rc = kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL);
    CHECK_EQ(rc, KV_ENOSPC);
    CHECK_MSG(strstr(kv_errmsg(), "compaction stopped") != NULL, "%s", kv_errmsg());
    /* one that mostly drops deletes is not */
    for (int i = 1; i < 580; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_delete(f.db, k, strlen(k), 0));
    }
    CHECK_OK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL));
    /* space again: writes go on */
    kv_fault_env_set_disk_space(f.env, floor, gib);
    CHECK_OK(kv_put(f.db, "more", 4, v, 10, 0));
    kv_fault_env_set_disk_space(f.env, UINT64_MAX, 0);
    CHECK_OK(kv_put(f.db, "more2", 5, v, 10, 0));
    int present = 0;
    for (int i = 0; i < 600; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        present += kv_contains(f.db, NULL, k, strlen(k)) == 1;
    }
    CHECK_EQ(present, 19); /* k00580..k00599 but k00598, renamed */
    CHECK_EQ(kv_contains(f.db, NULL, "renamed", 7), 1);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    fx_free(&f);
}

TEST(test_faults_the_last_bytes_of_the_disk_are_kept_for_deletes_and_compactions) {
    last_bytes_case(true);
    last_bytes_case(false); /* compactions run inline, in the writes */
}

/* A store whose due compaction rewrites more than 256 KiB (two level-0 tables over a level 1 of 600 KB, all of it
 * overlapped), on a disk below half the floor, so that compaction fails for space (on failure, t_failed(); fx_free(f)
 * is the caller's). With background threads, level 0 is also at the stop trigger. */
static void fx_open_compaction_too_big_for_the_disk(fx *f, bool background) {
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", t_tmpdir());
    f->env = kv_fault_env_new(kv_env_posix());
    CHECK(f->env != NULL);
    fx_options(&f->o, false);
    f->o.compression = false;
    f->o.level1_bytes = 64 << 20; /* the setup keeps it all in level 1 */
    f->o.l0_compaction_trigger = f->o.l0_slowdown_trigger = f->o.l0_stop_trigger = 100;
    f->o.env = f->env;
    CHECK_OK(kv_open(f->dir, &f->o, &f->db));
    static uint8_t v[1000];
    char k[32];
    uint64_t rs = 7;
    for (int i = 0; i < 600; i++) {
        for (size_t j = 0; j < sizeof v; j++) v[j] = (uint8_t)t_rand(&rs);
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_put(f->db, k, strlen(k), v, sizeof v, 0));
    }
    CHECK_OK(kv_compact_range(f->db, NULL, 0, NULL, 0, NULL, NULL));
    for (int t = 0; t < 2; t++) { /* two level-0 tables spanning the keys */
        kv_batch *b = NULL;
        CHECK_OK(kv_batch_new(&b));
        for (int i = t; i < 600 && b; i += 10) {
            snprintf(k, sizeof k, "k%05d", i);
            CHECK_OK(kv_batch_put(b, k, strlen(k), "x", 1));
        }
        CHECK_OK(kv_write(f->db, b, 0, NULL));
        kv_batch_free(b);
        CHECK_OK(kv_compact_range(f->db, "z", 1, "z", 1, NULL, NULL)); /* flushes the memtable, compacts nothing */
    }
    kv_stats st = {0};
    CHECK_OK(kv_get_stats(f->db, &st));
    CHECK_EQ(st.level_files[0], 2);
    CHECK_OK(kv_close(f->db));
    kv_free(f->db);
    f->db = NULL;
    uint64_t floor = (16u << 10) + (1u << 20); /* fx_options: 16 KiB memtables */
    kv_fault_env_set_disk_space(f->env, floor / 2 - 1, 1ull << 30);
    f->o.background_threads = background;
    f->o.l0_compaction_trigger = f->o.l0_slowdown_trigger = f->o.l0_stop_trigger = 2;
    CHECK_OK(kv_open(f->dir, &f->o, &f->db));
}

/* A failed log fsync leaves a debt: the next write first flushes the memtables holding what it covered
 * (settle_sync_debt). That flush is a flush request, which no lack of space for compactions stops (flushes keep the
 * rest of the floor): the debt's forced switch of the memtable waited at the level-0 stop trigger, or (without a
 * compaction thread) failed with the inline compaction's KV_ENOSPC, so every delete and kv_sync failed, while the
 * same deletes without the debt went through. */
static void deletes_after_failed_fsync_case(bool background) {
    fx f;
    fx_open_compaction_too_big_for_the_disk(&f, background);
    if (t_failed()) {
        fx_free(&f);
        return;
    }
    CHECK_OK(kv_delete(f.db, "k00001", 6, 0)); /* deletes pass while compactions fail */
    kv_fault_env_arm(f.env, KV_FAULT_SYNC_EIO, 0, ".log");
    CHECK(kv_sync(f.db) != KV_OK); /* a debt */
    kv_fault_env_clear(f.env);
    int rc = kv_delete(f.db, "k00002", 6, 0);
    CHECK_MSG(rc == KV_OK, "a delete after the failed fsync: %s (%s)", kv_strerror(rc), kv_errmsg());
    rc = kv_sync(f.db);
    CHECK_MSG(rc == KV_OK, "a sync after the failed fsync: %s (%s)", kv_strerror(rc), kv_errmsg());
    CHECK_EQ(kv_contains(f.db, NULL, "k00002", 6), 0);
    kv_fault_env_set_disk_space(f.env, UINT64_MAX, 0);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    fx_free(&f);
}

TEST(test_faults_deletes_after_a_failed_log_fsync_pass_while_compactions_fail_for_space) {
    deletes_after_failed_fsync_case(false);
    deletes_after_failed_fsync_case(true);
}

/* A compaction that fails for space has the memtable flushed early when it holds deletes (at most every 5 s), so the
 * next attempt sees them. The 5 s ran from any failed attempt, also one that found no delete to flush: deletes made
 * just after the first failure (the store opened on a full disk, then `rm`) waited 5 s for their flush, not one
 * retry. */
TEST(test_faults_deletes_after_a_failed_compaction_are_flushed_at_its_next_attempt) {
    fx f;
    fx_open_compaction_too_big_for_the_disk(&f, true);
    if (t_failed()) {
        fx_free(&f);
        return;
    }
    usleep(100 * 1000); /* the first attempt fails, with nothing to flush */
    kv_stats st = {0};
    CHECK_OK(kv_get_stats(f.db, &st));
    uint64_t flushes = st.flushes;
    CHECK_OK(kv_delete(f.db, "k00003", 6, 0));
    long long t0 = mono_us();
    while (mono_us() - t0 < 4000000 && kv_get_stats(f.db, &st) == KV_OK && st.flushes == flushes) usleep(20 * 1000);
    long long waited = (mono_us() - t0) / 1000;
    printf("# the delete was flushed after %lld ms\n", waited);
    CHECK_MSG(st.flushes > flushes && waited < 2000, "the delete waited %lld ms for its flush", waited);
    kv_fault_env_set_disk_space(f.env, UINT64_MAX, 0);
    fx_free(&f);
}

/* Writes retried on a full disk: each failure starts a new write-ahead log and a new batch-log file, whose creation
 * succeeds (an empty file needs no block) while the append fails (here an injected EIO on every append). Every retry used to leave both behind, empty:
 * 17,000 log files in a minute of retries through the mount. Now one that holds nothing goes. */
TEST(test_faults_writes_retried_on_a_full_disk_leave_no_empty_logs) {
    fx f;
    CHECK_OK(fx_open(&f, false));
    if (t_failed()) return;
    kv_free(f.db); /* again, with a change feed */
    f.o.batch_log_max_batches = 1000;
    CHECK_OK(kv_open(f.dir, &f.o, &f.db));
    CHECK_OK(fx_fill(&f, 20));
    int logs = count_files(f.dir, NULL, ".log"), feeds = count_files(f.dir, "BATCHLOG-", NULL);
    /* appends fail and file creations succeed, as on a full disk (an empty file needs no block) */
    kv_fault_env_arm(f.env, KV_FAULT_WRITE_EIO, 0, NULL);
    for (int i = 0; i < 200; i++) {
        int prc = fx_put(&f, false, 0);
        CHECK_MSG(prc != KV_OK, "put %d succeeded", i);
    }
    kv_fault_env_clear(f.env);
    int logs2 = count_files(f.dir, NULL, ".log"), feeds2 = count_files(f.dir, "BATCHLOG-", NULL);
    CHECK_MSG(logs2 <= logs + 2 && feeds2 <= feeds + 2, "%d logs and %d batch-log files before 200 failed writes, "
              "%d and %d after", logs, feeds, logs2, feeds2);
    /* the change feed's appends alone fail (the log had room ahead): the writes succeed, the feed's files stay */
    kv_fault_env_arm(f.env, KV_FAULT_WRITE_EIO, 0, "BATCHLOG-");
    CHECK_OK(fx_fill(&f, 200));
    kv_fault_env_clear(f.env);
    int feeds3 = count_files(f.dir, "BATCHLOG-", NULL);
    CHECK_MSG(feeds3 <= feeds + 2, "%d batch-log files before 200 failed appends to them, %d after", feeds, feeds3);
    CHECK_OK(fx_fill(&f, 20)); /* the disk has room again */
    CHECK_MSG(fx_check(&f), "%s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    fx_free(&f);
}

/* A stream put by a batch that then fails before its record reaches the log was never committed: freeing the stream
 * must remove its blob file, as for a stream no batch took. It used to be marked committed as soon as its op was
 * resolved, and its file (the whole value) stayed until a blob GC pass. Two ways to fail: another op of the same
 * batch (a move of a missing key), and the log's append (a full disk, cut back cleanly). */
TEST(test_faults_failed_batch_with_stream_leaves_no_blob_file) {
    fx f;
    CHECK_OK(fx_open(&f, false));
    if (t_failed()) return;
    static uint8_t data[100000];
    memset(data, 's', sizeof data);
    int before = count_blob_files(f.dir);
    for (int round = 0; round < 2; round++) {
        kv_stream *s;
        CHECK_OK(kv_stream_new(f.db, &s));
        CHECK_OK(kv_stream_append(s, data, sizeof data)); /* into its own blob file */
        CHECK(count_blob_files(f.dir) == before + 1);
        kv_batch *b;
        CHECK_OK(kv_batch_new(&b));
        CHECK_OK(kv_batch_put_stream(b, 0, "streamed", 8, s));
        if (round == 0) {
            CHECK_OK(kv_batch_move(b, 0, "no-such-key", 11, 0, "moved", 5));
            CHECK(kv_write(f.db, b, 0, NULL) == KV_ENOTFOUND);
        } else {
            kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, ".log");
            CHECK(kv_write(f.db, b, 0, NULL) == KV_ENOSPC);
            kv_fault_env_clear(f.env);
        }
        kv_batch_free(b);
        kv_stream_free(s);
        CHECK_MSG(count_blob_files(f.dir) == before, "round %d: %d blob files after the failed batch, %d before",
                  round, count_blob_files(f.dir), before);
        kv_buf v = {0};
        CHECK(kv_get(f.db, NULL, "streamed", 8, &v) == KV_ENOTFOUND);
        kv_buf_free(&v);
    }
    /* a stream whose batch commits keeps its file */
    kv_stream *s;
    CHECK_OK(kv_stream_new(f.db, &s));
    CHECK_OK(kv_stream_append(s, data, sizeof data));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put_stream(b, 0, "streamed", 8, s));
    CHECK_OK(kv_write(f.db, b, 0, NULL));
    kv_batch_free(b);
    kv_stream_free(s);
    CHECK(count_blob_files(f.dir) == before + 1);
    model_put(&f.m, "streamed", 8, data, sizeof data);
    CHECK_MSG(fx_check(&f), "%s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

/* A batch whose log append failed, leaving its record whole in a log that cannot be cut back, may come back at
 * recovery; its sequence number must then not have gone to the next batch, or replay would hold two versions of a
 * key at one sequence and could let the failed batch's value win over the later, acknowledged one. */
TEST(test_faults_failed_append_left_in_log_does_not_shadow_later_writes) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    if (t_failed()) return;
    for (int round = 0; round < 20; round++) {
        char k[32], failed[32], later[32];
        snprintf(k, sizeof k, "same-key-%02d", round);
        snprintf(failed, sizeof failed, "failed-value-%02d", round);
        snprintf(later, sizeof later, "acknowledged-value-%02d", round);
        CHECK_OK(kv_put(f.db, k, strlen(k), "first", 5, 0));
        uint64_t s0 = kv_current_sequence(f.db);
        kv_fault_env_arm(f.env, KV_FAULT_WRITE_STUCK, 0, ".log");
        CHECK(kv_put(f.db, k, strlen(k), failed, strlen(failed), 0) == KV_EIO);
        kv_fault_env_clear(f.env);
        CHECK_OK(kv_put(f.db, k, strlen(k), later, strlen(later), 0));
        CHECK_MSG(kv_current_sequence(f.db) > s0 + 1, "the failed batch's sequence %llu went to the next batch",
                  (unsigned long long)(s0 + 1));
        model_put(&f.m, k, strlen(k), later, strlen(later));
    }
    CHECK_MSG(fx_verify(&f), "%s", f.err);
    CHECK_MSG(fx_reopen(&f), "after reopen: %s", f.err);
    fx_free(&f);
}

/* After a failed log fsync, a sync first flushes what that fsync covered (sync_debt). When that flush failed (a full
 * disk) and the cause is then gone, the next kv_sync succeeds: it has the flush retried at once, as a write does,
 * instead of failing until the flush thread's own retry, up to 500 ms later. */
/* Open with background threads and put n small keys (key000000...), unsynced. */
static int fx_open_with_keys(fx *f, int n) {
    int rc = fx_open(f, true);
    char k[32];
    for (int i = 0; i < n && !rc; i++) {
        snprintf(k, sizeof k, "key%06d", i);
        rc = kv_put(f->db, k, strlen(k), "v", 1, 0);
    }
    return rc;
}

TEST(test_faults_sync_after_failed_debt_flush_retries_it) {
    fx f;
    CHECK_OK(fx_open_with_keys(&f, 20));
    kv_fault_env_arm(f.env, KV_FAULT_SYNC_EIO, 0, ".log");
    CHECK(kv_sync(f.db) != KV_OK); /* a debt: these batches must reach tables before a sync succeeds */
    kv_fault_env_clear(f.env);
    kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, ".sst");
    CHECK(kv_sync(f.db) != KV_OK); /* the flush that pays it fails */
    kv_fault_env_clear(f.env);    /* space freed */
    int rc = kv_sync(f.db);
    CHECK_MSG(rc == KV_OK, "the first sync after the fault was cleared: %s (%s)", kv_strerror(rc), kv_errmsg());
    fx_free(&f);
}

/* kv_compact_range flushes the memtable first; after a background flush failed, it returned that flush's error at
 * once (with no message), until the flush thread's own retry half a second later, also when the fault was gone. It
 * now has the flush retried at once, as a write and kv_sync do (found by test_torture with background threads). */
TEST(test_faults_compact_range_after_a_failed_flush_retries_it) {
    fx f;
    CHECK_OK(fx_open_with_keys(&f, 20));
    kv_fault_env_arm(f.env, KV_FAULT_ENOSPC, 0, ".sst");
    CHECK(kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL) != KV_OK); /* its flush fails */
    kv_fault_env_clear(f.env); /* space freed */
    int rc = kv_compact_range(f.db, NULL, 0, NULL, 0, NULL, NULL);
    CHECK_MSG(rc == KV_OK, "the first compaction after the fault was cleared: %s (%s)", kv_strerror(rc), kv_errmsg());
    fx_free(&f);
}

/* A write whose log append failed and could not be cut back may come back at the next open (its record stays in the
 * log): the bytes it appended to the shared blob file must stay too. Blob GC does not see that record (it never
 * reached the memtable), so once the shared file became a candidate (closed when mostly garbage) a pass deleted it,
 * and the write came back at the reopen naming a file that was gone. */
TEST(test_faults_blob_gc_keeps_the_bytes_of_a_write_that_may_come_back) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_env *env = kv_fault_env_new(kv_env_posix());
    CHECK(env != NULL);
    if (!env) return;
    kv_options o;
    kv_options_init(&o);
    o.env = env;
    o.background_threads = false;
    kv_db *db = NULL;
    CHECK_OK(kv_open(dir, &o, &db));
    size_t big = 2u << 20;
    uint8_t *v = malloc(big);
    CHECK(v != NULL);
    if (!db || !v) {
        free(v);
        if (db) kv_free(db);
        env->destroy(env);
        return;
    }
    memset(v, 'a', big);
    CHECK_OK(kv_put(db, "a", 1, v, big, 0));
    memset(v, 'b', big);
    kv_fault_env_arm(env, KV_FAULT_WRITE_STUCK, 0, ".log");
    int rc = kv_put(db, "b", 1, v, 100000, 0); /* its bytes go to the shared blob file, its record stays in the log */
    kv_fault_env_clear(env);
    CHECK_EQ(rc, KV_EIO);
    CHECK_OK(kv_delete(db, "a", 1, 0));
    CHECK_OK(kv_blob_gc(db, 0.5)); /* the shared file is mostly garbage: closed and taken */
    CHECK_OK(kv_close(db));
    kv_free(db);
    db = NULL;
    CHECK_OK(kv_open(dir, &o, &db));
    if (db) {
        kv_buf got = {0};
        rc = kv_get(db, NULL, "b", 1, &got);
        CHECK_MSG(rc == KV_OK || rc == KV_ENOTFOUND, "the failed write came back unreadable: %s (%s)", kv_strerror(rc),
                  kv_errmsg());
        if (rc == KV_OK) CHECK(got.len == 100000 && ((uint8_t *)got.data)[99999] == 'b');
        kv_buf_free(&got);
        uint64_t problems = 1;
        CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
        CHECK_EQ(problems, 0);
        kv_free(db);
    }
    free(v);
    env->destroy(env);
}

/* ---- the reserve: a disk another process filled ---------------------------------------------------------------- */

/* The set-up of the reserve tests: a fresh directory in dir, a fault environment over the real one (returned; NULL
 * when out of memory), and fx_options with the reserve on (as reserve says) over that environment. */
static kv_env *reserve_setup(char *dir, size_t n, kv_options *o, bool reserve, bool background) {
    snprintf(dir, n, "%s", t_tmpdir());
    kv_env *env = kv_fault_env_new(kv_env_posix());
    fx_options(o, background);
    o->space_reserve = reserve;
    o->env = env;
    return env;
}

/* A run of full_disk_deletes: its store (left open) and environment, and the first delete that failed (at: -1 for
 * none), its code and message. */
typedef struct full_disk_run {
    char dir[512];
    kv_env *env;
    kv_db *db;
    int at, rc;
    char msg[512];
} full_disk_run;

static void full_disk_run_free(full_disk_run *r) {
    kv_free(r->db);
    r->db = NULL;
    if (r->env) r->env->destroy(r->env);
    r->env = NULL;
}

/* Fill a new store (3,000 keys through memtables of memtable bytes), fill "the disk" behind it (KV_FAULT_DISK_FULL:
 * no byte free but what removals give back), then delete every key. The caller frees r (also after a failure). */
static void full_disk_deletes(full_disk_run *r, bool reserve, bool background, size_t memtable) {
    memset(r, 0, sizeof *r);
    r->at = -1;
    kv_options o;
    r->env = reserve_setup(r->dir, sizeof r->dir, &o, reserve, background);
    CHECK(r->env != NULL);
    o.memtable_bytes = memtable;
    CHECK_OK(kv_open(r->dir, &o, &r->db));
    char path[600], k[32], v[100];
    snprintf(path, sizeof path, "%s/RESERVE", r->dir);
    struct stat sb;
    CHECK_EQ(stat(path, &sb) == 0, reserve);
    if (reserve) CHECK(sb.st_size >= (off_t)memtable + (1 << 20)); /* the floor: a memtable and 1 MiB */
    memset(v, 'v', sizeof v);
    for (int i = 0; i < 3000; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_put(r->db, k, strlen(k), v, sizeof v, 0));
    }
    kv_fault_env_arm(r->env, KV_FAULT_DISK_FULL, 0, NULL);
    for (int i = 0; i < 3000 && r->at < 0; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        if ((r->rc = kv_delete(r->db, k, strlen(k), 0)) != KV_OK) {
            r->at = i;
            snprintf(r->msg, sizeof r->msg, "%s", kv_errmsg());
        }
    }
}

/* Without a reserve, deletes on a disk that another process filled fail once the log's space allocated ahead is used
 * up: their log records, the next log, the flush of their memtable all need new space. With space_reserve the store
 * holds its floor in RESERVE and gives it back then (a log append, a log's creation or a flush that fails with
 * KV_ENOSPC, or a look at the disk that finds it nearly full): every delete goes through, and the reserve comes back
 * at the next open that finds room. */
static void reserve_case(bool background) {
    full_disk_run r;
    full_disk_deletes(&r, true, background, 16 << 10);
    if (t_failed() || r.at >= 0) {
        full_disk_run_free(&r);
        CHECK_MSG(r.at < 0, "delete %d of 3000 on a full disk: %s (%s)", r.at, kv_strerror(r.rc), r.msg);
        return;
    }
    kv_db *db = r.db;
    kv_stats st = {0};
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.reserve_releases, 1);
    CHECK_EQ(st.reserve_bytes, 0);
    char path[600];
    snprintf(path, sizeof path, "%s/RESERVE", r.dir);
    struct stat sb;
    CHECK(stat(path, &sb) != 0);
    CHECK_EQ(kv_contains(db, NULL, "k00000", 6), 0);
    CHECK_EQ(kv_contains(db, NULL, "k02999", 6), 0);
    CHECK_OK(kv_close(db));
    kv_free(db);
    r.db = NULL;
    /* the disk has room again (the fault cleared): the next open makes the reserve again */
    kv_fault_env_clear(r.env);
    kv_options o;
    fx_options(&o, background);
    o.space_reserve = true;
    o.env = r.env;
    CHECK_OK(kv_open(r.dir, &o, &r.db));
    CHECK_EQ(stat(path, &sb), 0);
    CHECK_EQ(kv_contains(r.db, NULL, "k01500", 6), 0);
    uint64_t problems = 1;
    CHECK_OK(kv_check(r.db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    CHECK_OK(kv_close(r.db));
    kv_free(r.db);
    r.db = NULL;
    /* an open without the option gives the disk back its reserve */
    o.space_reserve = false;
    CHECK_OK(kv_open(r.dir, &o, &r.db));
    CHECK(stat(path, &sb) != 0);
    full_disk_run_free(&r);
}

TEST(test_faults_a_disk_another_process_filled_takes_deletes_with_the_reserve) {
    reserve_case(true);
    reserve_case(false); /* flushes and compactions inline */
}

/* With a memtable that holds all the deletes (as the mount's 8 MiB one holds thousands of unlinks), no log is made
 * and nothing is flushed: the write-ahead log's own append, past the space it allocated ahead, is what fails for
 * space, and it is tried again once the reserve is given back (its failed attempt was cut back first). */
TEST(test_faults_a_log_append_on_a_disk_another_process_filled_takes_the_reserve) {
    full_disk_run r;
    full_disk_deletes(&r, true, true, 4 << 20);
    /* more deletes than the log's space allocated ahead (up to 256 KiB) holds */
    char k[32];
    for (int i = 0; i < 20000 && r.at < 0 && r.db && !t_failed(); i++) {
        snprintf(k, sizeof k, "gone%05d", i);
        if ((r.rc = kv_delete(r.db, k, strlen(k), 0)) != KV_OK) {
            r.at = 3000 + i;
            snprintf(r.msg, sizeof r.msg, "%s", kv_errmsg());
        }
    }
    kv_stats st = {0};
    int rc = r.db && !t_failed() ? kv_get_stats(r.db, &st) : KV_EINVAL;
    uint64_t flushes = st.flushes;
    full_disk_run_free(&r);
    CHECK_MSG(r.at < 0, "delete %d of 23000 on a full disk: %s (%s)", r.at, kv_strerror(r.rc), r.msg);
    CHECK_OK(rc);
    CHECK_EQ(st.reserve_releases, 1);
    CHECK_EQ(flushes, 0);
}

/* The control for the test above: the same deletes without a reserve fail for space (else that test shows nothing). */
TEST(test_faults_a_disk_another_process_filled_fails_deletes_without_a_reserve) {
    full_disk_run r;
    full_disk_deletes(&r, false, true, 16 << 10);
    full_disk_run_free(&r);
    CHECK_MSG(r.at >= 0, "every delete went through on a full disk without a reserve");
    CHECK_EQ(r.rc, KV_ENOSPC);
}

/* The reserve is also given back when a look at the disk finds it under a quarter of the floor (another process
 * took the rest while this store wrote nothing), and made again once the disk has room for it and two floors more. */
TEST(test_faults_the_reserve_follows_the_free_space) {
    char dir[512];
    kv_options o;
    kv_env *env = reserve_setup(dir, sizeof dir, &o, true, true);
    CHECK(env != NULL);
    uint64_t total = 1ull << 30, floor = (16u << 10) + (1u << 20);
    kv_fault_env_set_disk_space(env, 100ull << 20, total);
    kv_db *db = NULL;
    CHECK_OK(kv_open(dir, &o, &db));
    char path[600];
    snprintf(path, sizeof path, "%s/RESERVE", dir);
    struct stat sb;
    kv_stats st = {0};
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.reserve_bytes, floor);
    CHECK_EQ(stat(path, &sb), 0);
    kv_fault_env_set_disk_space(env, floor / 4 - 1, total);
    usleep(1100 * 1000); /* writers look at the disk once a second */
    CHECK_OK(kv_delete(db, "a", 1, 0));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.reserve_releases, 1);
    CHECK_EQ(st.reserve_bytes, 0);
    CHECK(stat(path, &sb) != 0);
    kv_fault_env_set_disk_space(env, 3 * floor - 1, total); /* not room enough yet */
    usleep(1100 * 1000);
    CHECK_OK(kv_put(db, "a", 1, "x", 1, 0));
    CHECK(stat(path, &sb) != 0);
    kv_fault_env_set_disk_space(env, 3 * floor, total);
    usleep(1100 * 1000);
    CHECK_OK(kv_put(db, "b", 1, "x", 1, 0));
    CHECK_EQ(stat(path, &sb), 0);
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.reserve_bytes, floor);
    CHECK_EQ(st.disk_bytes < floor, true); /* the reserve is not the store's data */
    kv_free(db);
    env->destroy(env);
}

/* The reserve survives a power loss, both when the store makes it at its creation and when it makes it again: it is
 * there for a disk that fills up, and after a power loss the disk may be too full to make it anew. */
TEST(test_faults_the_reserve_survives_a_power_loss) {
    char dir[512];
    kv_options o;
    kv_env *env = reserve_setup(dir, sizeof dir, &o, true, true);
    CHECK(env != NULL);
    uint64_t total = 1ull << 30, floor = (16u << 10) + (1u << 20);
    kv_fault_env_set_disk_space(env, 100ull << 20, total);
    char path[600];
    snprintf(path, sizeof path, "%s/RESERVE", dir);
    struct stat sb;
    for (int round = 0; round < 2; round++) {
        kv_db *db = NULL;
        CHECK_OK(kv_open(dir, &o, &db));
        if (round == 1) { /* given back for a full disk, then made again while the store runs */
            kv_fault_env_set_disk_space(env, floor / 4 - 1, total);
            usleep(1100 * 1000); /* writers look at the disk once a second */
            CHECK_OK(kv_delete(db, "a", 1, 0));
            CHECK(stat(path, &sb) != 0);
            kv_fault_env_set_disk_space(env, 100ull << 20, total);
            usleep(1100 * 1000);
            CHECK_OK(kv_put(db, "b", 1, "x", 1, 0));
        }
        CHECK_EQ(stat(path, &sb), 0);
        kv_fault_env_crash(env);
        kv_free(db);
        CHECK_OK(kv_fault_env_apply_crash(env));
        CHECK_MSG(stat(path, &sb) == 0, "round %d: no RESERVE after the power loss", round);
        CHECK_MSG((uint64_t)sb.st_size == floor, "round %d: RESERVE has %lld bytes after the power loss, not %llu",
                  round, (long long)sb.st_size, (unsigned long long)floor);
    }
    env->destroy(env);
}

/* A reserve that cannot be made (its fsync fails: a dying disk) is tried again a minute later, not at every look at
 * the disk (once a second): each try writes a floor's worth and removes it. */
TEST(test_faults_a_reserve_that_fails_is_not_made_again_every_second) {
    char dir[512];
    kv_options o;
    kv_env *env = reserve_setup(dir, sizeof dir, &o, true, true);
    CHECK(env != NULL);
    kv_fault_env_set_disk_space(env, 100ull << 20, 1ull << 30);
    kv_fault_env_arm(env, KV_FAULT_SYNC_EIO, 0, "RESERVE");
    kv_db *db = NULL;
    CHECK_OK(kv_open(dir, &o, &db)); /* the open tries once */
    CHECK_EQ(kv_fault_env_failures(env), 1);
    for (int i = 0; i < 3; i++) {
        usleep(1100 * 1000); /* writers look at the disk once a second */
        CHECK_OK(kv_put(db, "a", 1, "x", 1, 0));
    }
    CHECK_EQ(kv_fault_env_failures(env), 1);
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.reserve_bytes, 0);
    char path[600];
    snprintf(path, sizeof path, "%s/RESERVE", dir);
    struct stat sb;
    CHECK(stat(path, &sb) != 0); /* what a failed try wrote is removed */
    kv_free(db);
    env->destroy(env);
}

/* A store whose log holds a memtable's worth of batches (a daemon killed, say) on a disk another process filled but
 * for a little less than the floor: the open replays the log into a table, which needs more than is left. That
 * write gives back the reserve and tries again, as a flush does; the open failed for space while the store held its
 * floor in RESERVE. */
TEST(test_faults_an_open_that_replays_a_log_on_a_nearly_full_disk_uses_the_reserve) {
    char dir[512];
    kv_options o;
    kv_env *env = reserve_setup(dir, sizeof dir, &o, true, true);
    CHECK(env != NULL);
    o.memtable_bytes = 1 << 20;
    o.compression = false;
    uint64_t total = 1ull << 30, floor = (1u << 20) + (1u << 20);
    kv_fault_env_set_disk_space(env, 100ull << 20, total);
    kv_db *db = NULL;
    CHECK_OK(kv_open(dir, &o, &db));
    char k[32], v[200];
    memset(v, 'v', sizeof v);
    for (int i = 0; i < 2000; i++) {
        snprintf(k, sizeof k, "k%05d", i);
        CHECK_OK(kv_put(db, k, strlen(k), v, sizeof v, 0));
    }
    CHECK_OK(kv_close(db)); /* the batches stay in the log: the next open replays them */
    kv_free(db);
    db = NULL;
    /* the disk has half the floor free, a little room for the manifest and the log, not for the replayed table */
    char filler[600];
    snprintf(filler, sizeof filler, "%s/filler", dir);
    FILE *fp = fopen(filler, "w");
    CHECK(fp != NULL);
    for (int i = 0; i < 320; i++) CHECK_EQ(fwrite(v, 1, sizeof v, fp), sizeof v); /* 64,000 bytes */
    fclose(fp);
    kv_fault_env_set_disk_space(env, floor / 2, total);
    kv_fault_env_arm(env, KV_FAULT_DISK_FULL, 0, NULL);
    CHECK_OK(env->remove(env, filler)); /* what another process left free */
    int rc = kv_open(dir, &o, &db);
    CHECK_MSG(rc == KV_OK, "open: %s (%s)", kv_strerror(rc), kv_errmsg());
    if (rc == KV_OK) {
        kv_stats st = {0};
        CHECK_OK(kv_get_stats(db, &st));
        CHECK_EQ(st.reserve_releases, 1);
        CHECK_EQ(kv_contains(db, NULL, "k01999", 6), 1);
        CHECK_OK(kv_close(db));
    }
    kv_free(db);
    env->destroy(env);
}

/* The tables recovery writes at an open, from a log the last run left, are no flush of this handle's: they do not
 * count in flush_bytes_written, whose bytes over user_bytes_written (0 right after an open) are the write
 * amplification kvfs stats shows. It showed 100 and more on a fresh mount. */
TEST(test_faults_recovery_tables_are_not_counted_as_flushed_bytes) {
    fx f;
    CHECK_OK(fx_open(&f, true));
    for (int i = 0; i < 20; i++) CHECK_OK(fx_put(&f, false, KV_SYNC)); /* far below the memtable's size */
    kv_fault_env_crash(f.env); /* the memtable is never flushed: the next open replays the log */
    kv_close(f.db);
    kv_free(f.db);
    f.db = NULL;
    CHECK_OK(kv_fault_env_apply_crash(f.env));
    kv_options o = f.o;
    o.env = NULL;
    CHECK_OK(kv_open(f.dir, &o, &f.db));
    kv_stats st;
    CHECK_OK(kv_get_stats(f.db, &st));
    CHECK_MSG(st.level_files[0] >= 1, "recovery wrote no table (level 0: %llu files)",
              (unsigned long long)st.level_files[0]);
    CHECK_EQ(st.flush_bytes_written, 0);
    CHECK_EQ(st.flushes, 0);
    CHECK(st.write_amplification == 0);
    CHECK_MSG(fx_verify(&f), "%s", f.err);
    fx_free(&f);
}
