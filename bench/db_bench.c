/*
 * db_bench.c — a db_bench-style benchmark of the kvfs engine (engine/kv.h) against LevelDB and RocksDB, through
 * their C APIs, with comparable settings: 8 MiB write buffer, 32 MiB block cache, bloom filters of 10 bits per key,
 * each engine's default compression, checksums verified on every block read from a file.
 *
 * Each backend runs in its own child process (so that a crash stays in it, and the counters of
 * /proc/self/io and the CPU time belong to one engine), and the parent runs the benchmarks in turns: for each
 * benchmark, kvfs, then LevelDB, then RocksDB. Fill benchmarks start from a fresh directory; the others reuse the
 * store that the previous benchmarks left. After every benchmark the parent waits until the engine has finished
 * its background flushes and compactions ("settle"), outside the timed part; the bytes written and the CPU time
 * during the settle are counted in the benchmark.
 *
 * Usage: db_bench [--num=N] [--reads=N] [--seeks=N] [--num-sync=N] [--num-large=N] [--sync-threads=N]
 *                 [--benchmarks=a,b,..] [--backends=kvfs,leveldb,rocksdb] [--dir=D] [--seed=N] [--keep]
 *                 [--use-existing=DIR] [--rounds=N] [--md=FILE] [--csv=FILE]
 * Build with -DBENCH_NO_KVFS to leave the kvfs backend out (before the engine links).
 */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <leveldb/c.h>
#include <rocksdb/c.h>
#ifndef BENCH_NO_KVFS
#include "env.h" /* kv_env_posix_mapped_bytes */
#include "kv.h"
#endif

#define KEY_LEN 16
#define VALUE_LEN 100
#define LARGE_VALUE_LEN (1u << 20)
#define SCAN_LEN 100
#define WRITE_BUFFER (8u << 20)
#define BLOCK_CACHE (32u << 20)
#define BLOOM_BITS 10
#define MIB (1024.0 * 1024.0)

/* ---- Settings ------------------------------------------------------------------------------------------------ */

static struct {
    uint64_t num, reads, seeks, num_sync, num_large;
    int sync_threads;
    uint64_t seed;
    char dir[1024];
    bool keep;
    const char *existing; /* --use-existing: the working directory of an earlier --keep run */
    int rounds;           /* --rounds: the benchmark list this many times; tables show the median round */
    const char *md, *csv;
} cfg = {1000000, 0, 0, 0, 1000, 8, 301, "/var/tmp", false, NULL, 1, NULL, NULL};

enum kind { FILL, OVERWRITE, READRANDOM, READSEQ, SEEKRANDOM, DELETERANDOM };

typedef struct bench_def {
    const char *name;
    enum kind kind;
    bool fresh;    /* start from an empty directory */
    bool sync;     /* synced writes */
    bool seq;      /* sequential keys */
    int threads;   /* 0 = 1 */
    bool large;    /* 1 MiB values */
    const char *what;
} bench_def;

static bench_def all_benches[] = {
    {"fillseq", FILL, true, false, true, 1, false, "write N values in key order, fresh store"},
    {"fillrandom", FILL, true, false, false, 1, false, "write N values in random key order, fresh store"},
    {"overwrite", OVERWRITE, false, false, false, 1, false, "write N values in random order over the store"},
    {"readrandom", READRANDOM, false, false, false, 1, false, "get N random keys"},
    {"readseq", READSEQ, false, false, true, 1, false, "one iterator over the store in key order"},
    {"seekrandom", SEEKRANDOM, false, false, false, 1, false, "new iterator, seek to a random key, read 100 keys"},
    {"deleterandom", DELETERANDOM, false, false, false, 1, false, "delete N random keys"},
    {"fillsync", FILL, true, true, false, 1, false, "synced writes, one writer, fresh store"},
    {"fillsync8", FILL, true, true, false, 8, false, "synced writes, 8 writer threads, fresh store"},
    {"fill1M", FILL, true, false, true, 1, true, "write 1 MiB values in key order, fresh store"},
};
#define NBENCH (sizeof all_benches / sizeof all_benches[0])

static uint64_t bench_ops(const bench_def *bd) {
    if (bd->large) return cfg.num_large;
    if (bd->sync) return cfg.num_sync;
    if (bd->kind == READRANDOM || bd->kind == READSEQ) return cfg.reads;
    if (bd->kind == SEEKRANDOM) return cfg.seeks;
    return cfg.num;
}

/* ---- Small helpers ------------------------------------------------------------------------------------------- */

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_sec(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Bytes this process (all its threads) handed to write()/pwrite(): "wchar" in /proc/self/io; plus, for kvfs, the
 * bytes its POSIX environment copied into files through shared mappings (the write-ahead log's reserved space),
 * which reach the page cache without a write() and so are not in wchar. */
static uint64_t io_written(void) {
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    uint64_t v = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "wchar: %" SCNu64, &v) == 1) break;
    fclose(f);
#ifndef BENCH_NO_KVFS
    v += kv_env_posix_mapped_bytes();
#endif
    return v;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t du_total;
static int du_visit(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)path, (void)type, (void)ftw;
    du_total += (uint64_t)st->st_blocks * 512;
    return 0;
}
/* Disk space used by a directory tree, like du. */
static uint64_t du(const char *dir) {
    du_total = 0;
    nftw(dir, du_visit, 16, FTW_PHYS);
    return du_total;
}

static int rm_visit(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)type, (void)ftw;
    remove(path);
    return 0;
}
static void rm_rf(const char *dir) { nftw(dir, rm_visit, 16, FTW_DEPTH | FTW_PHYS); }

/* A fast random number generator (xorshift64*), one per thread. */
static uint64_t rnd_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Key i as 16 decimal digits, zero-padded, as db_bench does. */
static void make_key(char *k, uint64_t i) {
    for (int p = KEY_LEN - 1; p >= 0; p--) {
        k[p] = (char)('0' + i % 10);
        i /= 10;
    }
}

/* Values: like LevelDB's generator, each 100-byte piece is 50 random printable bytes written twice, so values
 * compress to about half with a compressor that only finds repeats (snappy); zlib also entropy-codes them. */
#define POOL_LEN ((4u << 20) + 300)
static char *pool;
static void make_pool(uint64_t seed) {
    pool = malloc(POOL_LEN);
    if (!pool) exit(1);
    for (size_t off = 0; off < POOL_LEN; off += VALUE_LEN) {
        char raw[VALUE_LEN / 2];
        for (size_t i = 0; i < sizeof raw; i++) raw[i] = (char)(' ' + rnd_next(&seed) % 95);
        for (size_t i = 0; i < VALUE_LEN && off + i < POOL_LEN; i++) pool[off + i] = raw[i % sizeof raw];
    }
}
static const char *value_at(uint64_t *pos, size_t len) {
    if (*pos + len > POOL_LEN) *pos = 0;
    const char *v = pool + *pos;
    *pos += len;
    return v;
}

/* ---- The backends -------------------------------------------------------------------------------------------- */

typedef struct backend backend;
struct backend {
    const char *name;
    int (*open)(backend *b, const char *dir);
    void (*close)(backend *b);
    int (*put)(backend *b, const char *k, size_t kl, const char *v, size_t vl, bool sync);
    int (*get)(backend *b, const char *k, size_t kl, size_t *vl); /* 1 found, 0 absent, <0 error */
    int (*del)(backend *b, const char *k, size_t kl);
    void *(*iter_new)(backend *b);
    void (*iter_seek)(void *it, const char *k, size_t kl); /* kl == 0: first key */
    bool (*iter_valid)(void *it);
    void (*iter_next)(void *it);
    size_t (*iter_entry)(void *it); /* key + value bytes of the current entry */
    int (*iter_free)(void *it);     /* 0, or <0 when the iterator saw an error */
    bool (*busy)(backend *b);       /* background flush or compaction pending or running */
    uint64_t (*engine_written)(backend *b); /* bytes written as counted by the engine itself */
    bool engine_counts_wal;         /* engine_written includes the write-ahead log */
    /* Block cache hits and misses, microseconds writers were stalled; NULL when the engine counts none. */
    void (*counters)(backend *b, uint64_t *hits, uint64_t *misses, uint64_t *stall_us);
    void (*describe)(backend *b, char *buf, size_t n);
    void *db;
    char err[512];
};

static void set_err(backend *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof b->err, fmt, ap);
    va_end(ap);
}

/* -- kvfs -- */
#ifndef BENCH_NO_KVFS
static kv_options kvfs_opts(void) {
    kv_options o;
    kv_options_init(&o);
    o.create_if_missing = true;
    o.memtable_bytes = WRITE_BUFFER;
    o.block_cache_bytes = BLOCK_CACHE;
    o.bloom_bits_per_key = BLOOM_BITS;
    o.compression = true;
    return o;
}
static int kvfs_fail(backend *b, const char *op, int rc) {
    set_err(b, "kvfs %s: %s: %s", op, kv_strerror(rc), kv_errmsg());
    return -1;
}
static int kvfs_open(backend *b, const char *dir) {
    kv_options o = kvfs_opts();
    kv_db *db;
    int rc = kv_open(dir, &o, &db);
    if (rc != KV_OK) return kvfs_fail(b, "open", rc);
    b->db = db;
    return 0;
}
static void kvfs_close(backend *b) {
    int rc = kv_close(b->db);
    if (rc != KV_OK) fprintf(stderr, "kvfs close: %s: %s\n", kv_strerror(rc), kv_errmsg());
    kv_free(b->db);
    b->db = NULL;
}
static int kvfs_put(backend *b, const char *k, size_t kl, const char *v, size_t vl, bool sync) {
    int rc = kv_put(b->db, k, kl, v, vl, sync ? KV_SYNC : 0);
    return rc == KV_OK ? 0 : kvfs_fail(b, "put", rc);
}
static int kvfs_get(backend *b, const char *k, size_t kl, size_t *vl) {
    kv_buf v = {0};
    int rc = kv_get(b->db, NULL, k, kl, &v);
    if (rc == KV_ENOTFOUND) return 0;
    if (rc != KV_OK) return kvfs_fail(b, "get", rc);
    *vl = v.len;
    kv_buf_free(&v);
    return 1;
}
static int kvfs_del(backend *b, const char *k, size_t kl) {
    int rc = kv_delete(b->db, k, kl, 0);
    return rc == KV_OK ? 0 : kvfs_fail(b, "delete", rc);
}
static void *kvfs_iter_new(backend *b) {
    kv_iter *it;
    return kv_iter_new(b->db, NULL, &it) == KV_OK ? it : NULL;
}
static void kvfs_iter_seek(void *it, const char *k, size_t kl) {
    if (kl) kv_iter_seek(it, k, kl);
    else kv_iter_seek_first(it);
}
static bool kvfs_iter_valid(void *it) { return kv_iter_valid(it); }
static void kvfs_iter_next(void *it) { kv_iter_next(it); }
static size_t kvfs_iter_entry(void *it) {
    size_t kl;
    const void *v;
    uint64_t vl = 0;
    kv_iter_key(it, &kl);
    kv_iter_value(it, &v, &vl);
    return kl + vl;
}
static int kvfs_iter_free(void *it) {
    int rc = kv_iter_status(it);
    kv_iter_free(it);
    return rc == KV_OK ? 0 : -1;
}
static bool kvfs_busy(backend *b) {
    kv_stats s;
    kv_options o = kvfs_opts();
    if (kv_get_stats(b->db, &s) != KV_OK) return false;
    if (s.immutable_memtables > 0 || s.level_files[0] >= (uint64_t)o.l0_compaction_trigger) return true;
    double limit = (double)o.level1_bytes;
    for (int l = 1; l < KV_MAX_LEVELS - 1; l++, limit *= o.level_multiplier)
        if ((double)s.level_bytes[l] > limit) return true;
    return false;
}
static uint64_t kvfs_written(backend *b) {
    kv_stats s;
    if (kv_get_stats(b->db, &s) != KV_OK) return 0;
    return s.wal_bytes_written + s.flush_bytes_written + s.compaction_bytes_written + s.blob_bytes_written;
}
static void kvfs_counters(backend *b, uint64_t *hits, uint64_t *misses, uint64_t *stall_us) {
    kv_stats s;
    if (kv_get_stats(b->db, &s) != KV_OK) return;
    *hits = s.cache_hits;
    *misses = s.cache_misses;
    *stall_us = s.stall_micros;
}
static void kvfs_describe(backend *b, char *buf, size_t n) {
    (void)b;
    kv_options o = kvfs_opts();
    snprintf(buf, n,
             "kvfs %s: compression %s, memtable %zu MiB (max %d immutable), block cache %zu MiB (holds index and "
             "filter blocks too), bloom %d bits/key, blocks %zu B (restart every %d keys), tables %" PRIu64
             " MiB, L1 %" PRIu64 " MiB x%d, L0 trigger %d, values >= %" PRIu64 " KiB in blob files",
             KV_VERSION_STRING, o.compression ? "deflate (seekable blocks, own codec)" : "none", o.memtable_bytes >> 20,
             o.max_immutable,
             o.block_cache_bytes >> 20, o.bloom_bits_per_key, o.block_bytes, o.block_restart_interval,
             o.table_bytes >> 20, o.level1_bytes >> 20, o.level_multiplier, o.l0_compaction_trigger,
             o.blob_threshold >> 10);
}
#endif

/* -- LevelDB -- */
typedef struct {
    leveldb_t *db;
    leveldb_options_t *o;
    leveldb_cache_t *cache;
    leveldb_filterpolicy_t *bloom;
    leveldb_readoptions_t *ro;
    leveldb_writeoptions_t *wo, *wo_sync;
} ldb_state;

static int ldb_fail(backend *b, const char *op, char *err) {
    set_err(b, "leveldb %s: %s", op, err);
    leveldb_free(err);
    return -1;
}
static int ldb_open(backend *b, const char *dir) {
    ldb_state *s = calloc(1, sizeof *s);
    char *err = NULL;
    s->o = leveldb_options_create();
    leveldb_options_set_create_if_missing(s->o, 1);
    leveldb_options_set_write_buffer_size(s->o, WRITE_BUFFER);
    s->cache = leveldb_cache_create_lru(BLOCK_CACHE);
    leveldb_options_set_cache(s->o, s->cache);
    s->bloom = leveldb_filterpolicy_create_bloom(BLOOM_BITS);
    leveldb_options_set_filter_policy(s->o, s->bloom);
    leveldb_options_set_compression(s->o, leveldb_snappy_compression);
    s->ro = leveldb_readoptions_create();
    leveldb_readoptions_set_verify_checksums(s->ro, 1);
    s->wo = leveldb_writeoptions_create();
    s->wo_sync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(s->wo_sync, 1);
    s->db = leveldb_open(s->o, dir, &err);
    b->db = s;
    if (err) return ldb_fail(b, "open", err);
    return 0;
}
static void ldb_close(backend *b) {
    ldb_state *s = b->db;
    if (s->db) leveldb_close(s->db);
    leveldb_options_destroy(s->o);
    leveldb_cache_destroy(s->cache);
    leveldb_filterpolicy_destroy(s->bloom);
    leveldb_readoptions_destroy(s->ro);
    leveldb_writeoptions_destroy(s->wo);
    leveldb_writeoptions_destroy(s->wo_sync);
    free(s);
    b->db = NULL;
}
static int ldb_put(backend *b, const char *k, size_t kl, const char *v, size_t vl, bool sync) {
    ldb_state *s = b->db;
    char *err = NULL;
    leveldb_put(s->db, sync ? s->wo_sync : s->wo, k, kl, v, vl, &err);
    return err ? ldb_fail(b, "put", err) : 0;
}
static int ldb_get(backend *b, const char *k, size_t kl, size_t *vl) {
    ldb_state *s = b->db;
    char *err = NULL;
    char *v = leveldb_get(s->db, s->ro, k, kl, vl, &err);
    if (err) return ldb_fail(b, "get", err);
    if (!v) return 0;
    leveldb_free(v);
    return 1;
}
static int ldb_del(backend *b, const char *k, size_t kl) {
    ldb_state *s = b->db;
    char *err = NULL;
    leveldb_delete(s->db, s->wo, k, kl, &err);
    return err ? ldb_fail(b, "delete", err) : 0;
}
static void *ldb_iter_new(backend *b) {
    ldb_state *s = b->db;
    return leveldb_create_iterator(s->db, s->ro);
}
static void ldb_iter_seek(void *it, const char *k, size_t kl) {
    if (kl) leveldb_iter_seek(it, k, kl);
    else leveldb_iter_seek_to_first(it);
}
static bool ldb_iter_valid(void *it) { return leveldb_iter_valid(it); }
static void ldb_iter_next(void *it) { leveldb_iter_next(it); }
static size_t ldb_iter_entry(void *it) {
    size_t kl, vl;
    leveldb_iter_key(it, &kl);
    leveldb_iter_value(it, &vl);
    return kl + vl;
}
static int ldb_iter_free(void *it) {
    char *err = NULL;
    leveldb_iter_get_error(it, &err);
    leveldb_iter_destroy(it);
    if (err) leveldb_free(err);
    return err ? -1 : 0;
}
/* LevelDB's "leveldb.stats": per level, files, size (MB), and MB written by flushes and compactions. */
typedef struct {
    int files[8];
    double size_mb[8], write_mb;
} ldb_stats;
static void ldb_get_stats(backend *b, ldb_stats *st) {
    ldb_state *s = b->db;
    memset(st, 0, sizeof *st);
    char *text = leveldb_property_value(s->db, "leveldb.stats");
    if (!text) return;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        int lvl, files;
        double size, t, r, w;
        if (sscanf(line, "%d %d %lf %lf %lf %lf", &lvl, &files, &size, &t, &r, &w) == 6 && lvl >= 0 && lvl < 8) {
            st->files[lvl] = files;
            st->size_mb[lvl] = size;
            st->write_mb += w;
        }
    }
    leveldb_free(text);
}
static bool ldb_busy(backend *b) {
    ldb_stats st;
    ldb_get_stats(b, &st);
    if (st.files[0] >= 4) return true; /* LevelDB's kL0_CompactionTrigger */
    double limit = 10.0;                /* MaxBytesForLevel(1) = 10 MiB, x10 per level */
    for (int l = 1; l < 7; l++, limit *= 10)
        if (st.size_mb[l] > limit + 0.5) return true;
    return false;
}
static uint64_t ldb_written(backend *b) {
    ldb_stats st;
    ldb_get_stats(b, &st);
    return (uint64_t)(st.write_mb * MIB);
}
static void ldb_describe(backend *b, char *buf, size_t n) {
    (void)b;
    snprintf(buf, n,
             "LevelDB %d.%d: compression snappy (its default; Debian's build links libsnappy), write buffer %u MiB, "
             "block cache %u MiB (index and filter blocks live outside it), bloom %d bits/key, blocks 4 KiB, tables "
             "2 MiB, L1 10 MiB x10, L0 trigger 4, verify_checksums on",
             leveldb_major_version(), leveldb_minor_version(), WRITE_BUFFER >> 20, BLOCK_CACHE >> 20, BLOOM_BITS);
}

/* -- RocksDB -- */
typedef struct {
    rocksdb_t *db;
    rocksdb_options_t *o;
    rocksdb_block_based_table_options_t *t;
    rocksdb_cache_t *cache;
    rocksdb_readoptions_t *ro;
    rocksdb_writeoptions_t *wo, *wo_sync;
} rdb_state;

static int rdb_fail(backend *b, const char *op, char *err) {
    set_err(b, "rocksdb %s: %s", op, err);
    rocksdb_free(err);
    return -1;
}
static void rdb_options(rdb_state *s) {
    s->o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->o, 1);
    rocksdb_options_set_write_buffer_size(s->o, WRITE_BUFFER);
    s->t = rocksdb_block_based_options_create();
    s->cache = rocksdb_cache_create_lru(BLOCK_CACHE);
    rocksdb_block_based_options_set_block_cache(s->t, s->cache);
    rocksdb_block_based_options_set_filter_policy(s->t, rocksdb_filterpolicy_create_bloom_full(BLOOM_BITS));
    rocksdb_options_set_block_based_table_factory(s->o, s->t);
    rocksdb_options_enable_statistics(s->o);
}
static int rdb_open(backend *b, const char *dir) {
    rdb_state *s = calloc(1, sizeof *s);
    char *err = NULL;
    rdb_options(s);
    s->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(s->ro, 1);
    s->wo = rocksdb_writeoptions_create();
    s->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wo_sync, 1);
    s->db = rocksdb_open(s->o, dir, &err);
    b->db = s;
    return err ? rdb_fail(b, "open", err) : 0;
}
static void rdb_close(backend *b) {
    rdb_state *s = b->db;
    if (s->db) rocksdb_close(s->db);
    rocksdb_options_destroy(s->o);
    rocksdb_block_based_options_destroy(s->t);
    rocksdb_cache_destroy(s->cache);
    rocksdb_readoptions_destroy(s->ro);
    rocksdb_writeoptions_destroy(s->wo);
    rocksdb_writeoptions_destroy(s->wo_sync);
    free(s);
    b->db = NULL;
}
static int rdb_put(backend *b, const char *k, size_t kl, const char *v, size_t vl, bool sync) {
    rdb_state *s = b->db;
    char *err = NULL;
    rocksdb_put(s->db, sync ? s->wo_sync : s->wo, k, kl, v, vl, &err);
    return err ? rdb_fail(b, "put", err) : 0;
}
static int rdb_get(backend *b, const char *k, size_t kl, size_t *vl) {
    rdb_state *s = b->db;
    char *err = NULL;
    char *v = rocksdb_get(s->db, s->ro, k, kl, vl, &err);
    if (err) return rdb_fail(b, "get", err);
    if (!v) return 0;
    rocksdb_free(v);
    return 1;
}
static int rdb_del(backend *b, const char *k, size_t kl) {
    rdb_state *s = b->db;
    char *err = NULL;
    rocksdb_delete(s->db, s->wo, k, kl, &err);
    return err ? rdb_fail(b, "delete", err) : 0;
}
static void *rdb_iter_new(backend *b) {
    rdb_state *s = b->db;
    return rocksdb_create_iterator(s->db, s->ro);
}
static void rdb_iter_seek(void *it, const char *k, size_t kl) {
    if (kl) rocksdb_iter_seek(it, k, kl);
    else rocksdb_iter_seek_to_first(it);
}
static bool rdb_iter_valid(void *it) { return rocksdb_iter_valid(it); }
static void rdb_iter_next(void *it) { rocksdb_iter_next(it); }
static size_t rdb_iter_entry(void *it) {
    size_t kl, vl;
    rocksdb_iter_key(it, &kl);
    rocksdb_iter_value(it, &vl);
    return kl + vl;
}
static int rdb_iter_free(void *it) {
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    if (err) rocksdb_free(err);
    return err ? -1 : 0;
}
static bool rdb_busy(backend *b) {
    rdb_state *s = b->db;
    static const char *props[] = {"rocksdb.compaction-pending", "rocksdb.num-running-compactions",
                                  "rocksdb.num-running-flushes", "rocksdb.mem-table-flush-pending"};
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++) {
        uint64_t v = 0;
        if (rocksdb_property_int(s->db, props[i], &v) == 0 && v > 0) return true;
    }
    return false;
}
/* A ticker from the statistics text: "rocksdb.wal.bytes COUNT : 123". */
static uint64_t rdb_ticker(const char *text, const char *name) {
    char pat[128];
    snprintf(pat, sizeof pat, "%s COUNT : ", name);
    const char *p = strstr(text, pat);
    return p ? strtoull(p + strlen(pat), NULL, 10) : 0;
}
static uint64_t rdb_written(backend *b) {
    rdb_state *s = b->db;
    char *text = rocksdb_options_statistics_get_string(s->o);
    if (!text) return 0;
    uint64_t v = rdb_ticker(text, "rocksdb.wal.bytes") + rdb_ticker(text, "rocksdb.flush.write.bytes") +
                 rdb_ticker(text, "rocksdb.compact.write.bytes");
    rocksdb_free(text);
    return v;
}
static void rdb_counters(backend *b, uint64_t *hits, uint64_t *misses, uint64_t *stall_us) {
    rdb_state *s = b->db;
    char *text = rocksdb_options_statistics_get_string(s->o);
    if (!text) return;
    *hits = rdb_ticker(text, "rocksdb.block.cache.hit");
    *misses = rdb_ticker(text, "rocksdb.block.cache.miss");
    *stall_us = rdb_ticker(text, "rocksdb.stall.micros");
    rocksdb_free(text);
}
static void rdb_describe(backend *b, char *buf, size_t n) {
    static const char *comp[] = {"none", "snappy", "zlib", "bzip2", "lz4", "lz4hc", "xpress", "zstd"};
    rdb_state *s = b->db;
    int c = rocksdb_options_get_compression(s->o);
    snprintf(buf, n,
             "RocksDB 7.8: compression %s (its default), write buffer %u MiB (max 2), block cache %u MiB (index and "
             "filter blocks live outside it), bloom %d bits/key (full filter), blocks 4 KiB, tables 64 MiB, L1 256 "
             "MiB x10, L0 trigger 4, 2 background jobs, verify_checksums on, statistics on, no blob files (its default)",
             c >= 0 && c < 8 ? comp[c] : "?", WRITE_BUFFER >> 20, BLOCK_CACHE >> 20, BLOOM_BITS);
}

static backend backends[] = {
#ifndef BENCH_NO_KVFS
    {"kvfs", kvfs_open, kvfs_close, kvfs_put, kvfs_get, kvfs_del, kvfs_iter_new, kvfs_iter_seek, kvfs_iter_valid,
     kvfs_iter_next, kvfs_iter_entry, kvfs_iter_free, kvfs_busy, kvfs_written, true, kvfs_counters, kvfs_describe,
     NULL, ""},
#endif
    {"leveldb", ldb_open, ldb_close, ldb_put, ldb_get, ldb_del, ldb_iter_new, ldb_iter_seek, ldb_iter_valid,
     ldb_iter_next, ldb_iter_entry, ldb_iter_free, ldb_busy, ldb_written, false, NULL, ldb_describe, NULL, ""},
    {"rocksdb", rdb_open, rdb_close, rdb_put, rdb_get, rdb_del, rdb_iter_new, rdb_iter_seek, rdb_iter_valid,
     rdb_iter_next, rdb_iter_entry, rdb_iter_free, rdb_busy, rdb_written, true, rdb_counters, rdb_describe, NULL,
     ""},
};
#define NBACKEND ((int)(sizeof backends / sizeof backends[0]))

/* ---- Running one benchmark (in the backend's child process) -------------------------------------------------- */

typedef struct result {
    int ok;           /* 1 ran, 0 failed (msg), -1 not run */
    uint64_t ops, bytes, found, user_bytes;
    double secs, settle_secs, cpu_secs;
    uint64_t io_bytes, engine_bytes, disk_bytes;
    bool engine_counts_wal, settle_timeout;
    uint64_t cache_hits, cache_misses, stall_us; /* during the timed part; 0 when the engine counts none */
    bool has_counters;
    char msg[512];
} result;

typedef struct worker {
    backend *b;
    const bench_def *bd;
    uint64_t first, count, seed;
    uint64_t ops, bytes, found, user_bytes;
    int failed;
} worker;

static void *run_worker(void *arg) {
    worker *w = arg;
    backend *b = w->b;
    const bench_def *bd = w->bd;
    uint64_t rs = w->seed, vpos = (w->seed % 1000) * VALUE_LEN;
    size_t vlen = bd->large ? LARGE_VALUE_LEN : VALUE_LEN;
    char key[KEY_LEN];
    switch (bd->kind) {
    case FILL:
    case OVERWRITE:
        for (uint64_t i = 0; i < w->count; i++) {
            make_key(key, bd->seq ? w->first + i : rnd_next(&rs) % cfg.num);
            if (b->put(b, key, KEY_LEN, value_at(&vpos, vlen), vlen, bd->sync) < 0) return w->failed = 1, NULL;
            w->ops++;
            w->bytes += KEY_LEN + vlen;
        }
        w->user_bytes = w->bytes;
        break;
    case DELETERANDOM:
        for (uint64_t i = 0; i < w->count; i++) {
            make_key(key, rnd_next(&rs) % cfg.num);
            if (b->del(b, key, KEY_LEN) < 0) return w->failed = 1, NULL;
            w->ops++;
            w->bytes += KEY_LEN;
        }
        w->user_bytes = w->bytes;
        break;
    case READRANDOM:
        for (uint64_t i = 0; i < w->count; i++) {
            size_t vl = 0;
            make_key(key, rnd_next(&rs) % cfg.num);
            int rc = b->get(b, key, KEY_LEN, &vl);
            if (rc < 0) return w->failed = 1, NULL;
            w->ops++;
            if (rc) w->found++, w->bytes += KEY_LEN + vl;
        }
        break;
    case READSEQ: {
        void *it = b->iter_new(b);
        if (!it) return set_err(b, "%s: cannot create an iterator", b->name), w->failed = 1, NULL;
        b->iter_seek(it, NULL, 0);
        for (; w->ops < w->count && b->iter_valid(it); b->iter_next(it)) {
            w->bytes += b->iter_entry(it);
            w->ops++;
            w->found++;
        }
        if (b->iter_free(it) < 0) return set_err(b, "%s: iterator error", b->name), w->failed = 1, NULL;
        break;
    }
    case SEEKRANDOM:
        for (uint64_t i = 0; i < w->count; i++) {
            void *it = b->iter_new(b);
            if (!it) return set_err(b, "%s: cannot create an iterator", b->name), w->failed = 1, NULL;
            make_key(key, rnd_next(&rs) % cfg.num);
            b->iter_seek(it, key, KEY_LEN);
            for (int n = 0; n < SCAN_LEN && b->iter_valid(it); n++, b->iter_next(it)) {
                w->bytes += b->iter_entry(it);
                w->found++;
            }
            if (b->iter_free(it) < 0) return set_err(b, "%s: iterator error", b->name), w->failed = 1, NULL;
            w->ops++;
        }
        break;
    }
    return NULL;
}

/* Wait until the backend reports no pending background work and the process wrote nothing for 0.5 s. */
static void settle(backend *b, result *r) {
    double t0 = now_sec();
    uint64_t last = io_written();
    int quiet = 0;
    while (quiet < 5) {
        if (now_sec() - t0 > 300) {
            r->settle_timeout = true;
            break;
        }
        sleep_ms(100);
        uint64_t w = io_written();
        quiet = (w == last && !b->busy(b)) ? quiet + 1 : 0;
        last = w;
    }
    r->settle_secs = now_sec() - t0;
}

static void run_bench(backend *b, const bench_def *bd, int idx, result *r) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", cfg.dir, b->name);
    memset(r, 0, sizeof *r);
    b->err[0] = 0;
    if (bd->fresh && cfg.existing) {
        snprintf(r->msg, sizeof r->msg, "needs a fresh store: not run with --use-existing");
        return;
    }
    if (bd->fresh || !b->db) {
        if (b->db) b->close(b);
        if (!cfg.existing) rm_rf(dir);
        if (b->open(b, dir) < 0) {
            snprintf(r->msg, sizeof r->msg, "%s", b->err);
            if (b->db) b->close(b);
            return;
        }
    }
    int nthreads = bd->threads > 1 ? bd->threads : 1;
    uint64_t total = bench_ops(bd);
    worker w[64];
    pthread_t th[64];
    for (int t = 0; t < nthreads; t++) {
        w[t] = (worker){.b = b, .bd = bd, .first = total * t / nthreads,
                        .count = total * (t + 1) / nthreads - total * t / nthreads,
                        .seed = cfg.seed * 1000003u + (uint64_t)idx * 7919u + (uint64_t)t * 104729u + 1};
    }
    uint64_t io0 = io_written(), eng0 = b->engine_written(b), c0[3] = {0}, c1[3] = {0};
    if (b->counters) b->counters(b, &c0[0], &c0[1], &c0[2]);
    double cpu0 = cpu_sec(), t0 = now_sec();
    if (nthreads == 1) {
        run_worker(&w[0]);
    } else {
        for (int t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, run_worker, &w[t]);
        for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    }
    r->secs = now_sec() - t0;
    if (b->counters) b->counters(b, &c1[0], &c1[1], &c1[2]);
    r->has_counters = b->counters != NULL;
    r->cache_hits = c1[0] - c0[0];
    r->cache_misses = c1[1] - c0[1];
    r->stall_us = c1[2] - c0[2];
    settle(b, r);
    r->cpu_secs = cpu_sec() - cpu0;
    r->io_bytes = io_written() - io0;
    r->engine_bytes = b->engine_written(b) - eng0;
    r->engine_counts_wal = b->engine_counts_wal;
    r->disk_bytes = du(dir);
    r->ok = 1;
    for (int t = 0; t < nthreads; t++) {
        r->ops += w[t].ops;
        r->bytes += w[t].bytes;
        r->found += w[t].found;
        r->user_bytes += w[t].user_bytes;
        if (w[t].failed) r->ok = 0;
    }
    if (!r->ok) snprintf(r->msg, sizeof r->msg, "%s", b->err);
}

/* The child's loop: read a benchmark index, run it, send the result back; -1 (or EOF) ends it. */
static void child_main(backend *b, int cmd_fd, int res_fd) {
    int idx;
    char desc[512] = "";
    while (read(cmd_fd, &idx, sizeof idx) == (ssize_t)sizeof idx && idx >= 0) {
        result r;
        if (idx == 1000) { /* describe the settings: needs an open store for RocksDB's options */
            memset(&r, 0, sizeof r);
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/%s", cfg.dir, b->name);
            if (!cfg.existing) rm_rf(dir);
            if (b->open(b, dir) == 0) b->describe(b, desc, sizeof desc);
            if (b->db) b->close(b);
            snprintf(r.msg, sizeof r.msg, "%s", desc[0] ? desc : b->err);
            r.ok = 1;
        } else {
            run_bench(b, &all_benches[idx], idx, &r);
        }
        if (write(res_fd, &r, sizeof r) != (ssize_t)sizeof r) break;
    }
    if (b->db) b->close(b);
    if (!cfg.keep) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/%s", cfg.dir, b->name);
        rm_rf(dir);
    }
}

/* ---- The parent: options, machine, turns, tables ------------------------------------------------------------- */

typedef struct child {
    backend *b;
    pid_t pid;
    int cmd_fd, res_fd;
    bool dead;
    char desc[512];
} child;

static int ask(child *c, int idx, result *r) {
    memset(r, 0, sizeof *r);
    r->ok = -1;
    if (c->dead) return -1;
    if (write(c->cmd_fd, &idx, sizeof idx) != (ssize_t)sizeof idx ||
        read(c->res_fd, r, sizeof *r) != (ssize_t)sizeof *r) {
        int st = 0;
        waitpid(c->pid, &st, 0);
        c->dead = true;
        r->ok = 0;
        if (WIFSIGNALED(st))
            snprintf(r->msg, sizeof r->msg, "the %s process died of signal %d (%s)", c->b->name, WTERMSIG(st),
                     strsignal(WTERMSIG(st)));
        else
            snprintf(r->msg, sizeof r->msg, "the %s process exited with status %d", c->b->name, WEXITSTATUS(st));
        return -1;
    }
    return 0;
}

static void read_first_line(const char *path, const char *prefix, char *out, size_t n) {
    FILE *f = fopen(path, "r");
    char line[512];
    out[0] = 0;
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, prefix, strlen(prefix)) == 0) {
            char *p = line + strlen(prefix);
            while (*p == ' ' || *p == '\t' || *p == ':') p++;
            p[strcspn(p, "\n")] = 0;
            snprintf(out, n, "%s", p);
            break;
        }
    }
    fclose(f);
}

/* The file system and device holding dir, from /proc/self/mounts (longest matching mount point). */
static void disk_of(const char *dir, char *out, size_t n) {
    FILE *f = fopen("/proc/self/mounts", "r");
    char dev[256], mnt[1024], type[64], best_dev[256] = "?", best_type[64] = "?";
    size_t best = 0;
    if (!f) return;
    while (fscanf(f, "%255s %1023s %63s %*[^\n]", dev, mnt, type) == 3) {
        size_t l = strlen(mnt);
        if (strncmp(dir, mnt, l) == 0 && (l == 1 || dir[l] == '/' || dir[l] == 0) && l >= best) {
            best = l;
            snprintf(best_dev, sizeof best_dev, "%s", dev);
            snprintf(best_type, sizeof best_type, "%s", type);
        }
    }
    fclose(f);
    const char *base = strrchr(best_dev, '/') ? strrchr(best_dev, '/') + 1 : best_dev;
    char path[512], rot[16] = "?", size[32] = "";
    snprintf(path, sizeof path, "/sys/block/%s/queue/rotational", base);
    read_first_line(path, "", rot, sizeof rot);
    snprintf(path, sizeof path, "/sys/block/%s/size", base);
    read_first_line(path, "", size, sizeof size);
    snprintf(out, n, "%s on %s (%s, %.0f GiB, %s)", best_type, best_dev,
             strncmp(base, "vd", 2) == 0 ? "virtio block device" : "block device",
             size[0] ? strtod(size, NULL) * 512 / (1024.0 * MIB) : 0.0,
             rot[0] == '1' ? "reports rotational" : rot[0] == '0' ? "non-rotational" : "rotational: ?");
}

/* Mean time of a 128-byte append + fdatasync in dir, in µs (the floor under every synced write). */
static double fsync_probe(const char *dir) {
    char path[1100], buf[128];
    snprintf(path, sizeof path, "%s/.db_bench_fsync_probe", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    memset(buf, 'x', sizeof buf);
    double t0 = now_sec();
    for (int i = 0; i < 200; i++) {
        if (fwrite(buf, sizeof buf, 1, f) != 1 || fflush(f) != 0 || fdatasync(fileno(f)) != 0) break;
    }
    double us = (now_sec() - t0) * 1e6 / 200;
    fclose(f);
    remove(path);
    return us;
}

static void machine(char *out, size_t n) {
    char cpu[256], mem[64], disk[512];
    struct utsname u;
    uname(&u);
    read_first_line("/proc/cpuinfo", "model name", cpu, sizeof cpu);
    read_first_line("/proc/meminfo", "MemTotal", mem, sizeof mem);
    disk_of(cfg.dir, disk, sizeof disk);
    snprintf(out, n, "%ld cores (%s), %.0f GiB RAM (%s), Linux %s; store directory %s: %s; append + fdatasync "
             "%.0f µs",
             sysconf(_SC_NPROCESSORS_ONLN), cpu, strtod(mem, NULL) / MIB, mem, u.release, cfg.dir, disk,
             fsync_probe(cfg.dir));
}

static void loadavg(char *out, size_t n) {
    read_first_line("/proc/loadavg", "", out, n);
    char *p = out;
    for (int i = 0; i < 3 && p; i++) p = strchr(p + 1, ' ');
    if (p) *p = 0;
}

static bool parse_u64(const char *arg, const char *name, uint64_t *v) {
    size_t l = strlen(name);
    if (strncmp(arg, name, l) != 0 || arg[l] != '=') return false;
    char *end;
    *v = strtoull(arg + l + 1, &end, 10);
    if (*end) {
        fprintf(stderr, "db_bench: bad number in %s\n", arg);
        exit(2);
    }
    return true;
}

static void usage(void) {
    fprintf(stderr,
            "usage: db_bench [--num=N] [--reads=N] [--seeks=N] [--num-sync=N] [--num-large=N] [--sync-threads=N]\n"
            "                [--benchmarks=a,b,..] [--backends=kvfs,leveldb,rocksdb] [--dir=D] [--seed=N] [--keep]\n"
            "                [--use-existing=DIR] [--rounds=N] [--md=FILE] [--csv=FILE]\nbenchmarks:");
    for (size_t i = 0; i < NBENCH; i++) fprintf(stderr, " %s", all_benches[i].name);
    fprintf(stderr, "\n");
    exit(2);
}

static bool in_list(const char *list, const char *name) {
    size_t l = strlen(name);
    for (const char *p = list; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, name, l) == 0 && (p[l] == ',' || p[l] == 0)) return true;
    return false;
}

static double ops_per_sec(const result *r) { return r->secs > 0 ? r->ops / r->secs : 0; }

/* One formatted cell; NaN or negative means "—". */
static const char *cell(char *buf, size_t n, const char *fmt, double v) {
    if (!(v >= 0)) snprintf(buf, n, "—");
    else snprintf(buf, n, fmt, v);
    return buf;
}

/* results[benchmark][child]: the round being printed, then (after the last round) the median round of each */
static result results[NBENCH][NBACKEND];
#define MAX_ROUNDS 9
static result round_results[MAX_ROUNDS][NBENCH][NBACKEND];

/* The round whose ops/s is the median of the rounds that ran bi on child k (the lower middle of an even count), or
 * -1 when none did. */
static int median_round(size_t bi, int k) {
    int idx[MAX_ROUNDS], n = 0;
    for (int r = 0; r < cfg.rounds; r++)
        if (round_results[r][bi][k].ok == 1) idx[n++] = r;
    for (int i = 1; i < n; i++) /* insertion sort by ops/s */
        for (int j = i; j > 0 && ops_per_sec(&round_results[idx[j]][bi][k]) <
                                     ops_per_sec(&round_results[idx[j - 1]][bi][k]); j--) {
            int t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
    return n ? idx[(n - 1) / 2] : -1;
}

/* Median, smallest and largest of v[0..n). */
static void median_range(double *v, int n, double *med, double *lo, double *hi) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    *med = n ? (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2) : 0;
    *lo = n ? v[0] : 0;
    *hi = n ? v[n - 1] : 0;
}

/* The cells of one result row: ops, µs/op, ops/s, MB/s, kvfs/leveldb, kvfs/rocksdb, MiB written, WA, WA (engine),
 * disk MiB, settle s, CPU s, note. False when the benchmark failed. */
#define NCELL 13
#define CELL 128
static bool row_cells(const child *kids, int nkids, size_t bi, int k, char c[NCELL][CELL]) {
    const bench_def *bd = &all_benches[bi];
    const result *r = &results[bi][k];
    if (r->ok != 1) return false;
    double ratio[2] = {-1, -1};
    const char *peers[2] = {"leveldb", "rocksdb"};
    for (int p = 0; p < 2; p++)
        for (int j = 0; j < nkids; j++)
            if (strcmp(kids[k].b->name, "kvfs") == 0 && strcmp(kids[j].b->name, peers[p]) == 0 &&
                results[bi][j].ok == 1 && ops_per_sec(&results[bi][j]) > 0)
                ratio[p] = ops_per_sec(r) / ops_per_sec(&results[bi][j]);
    bool writes = bd->kind == FILL || bd->kind == OVERWRITE;
    bool reads = bd->kind == READRANDOM || bd->kind == READSEQ || bd->kind == SEEKRANDOM;
    double user = (double)r->user_bytes;
    double wa = writes && user > 0 ? r->io_bytes / user : -1;
    double wa_eng = writes && user > 0 ? (r->engine_bytes + (r->engine_counts_wal ? 0 : user)) / user : -1;
    snprintf(c[0], CELL, "%" PRIu64, r->ops);
    cell(c[1], CELL, "%.2f", r->ops ? r->secs * 1e6 / r->ops : -1);
    cell(c[2], CELL, "%.0f", ops_per_sec(r));
    cell(c[3], CELL, "%.1f", r->secs > 0 ? r->bytes / MIB / r->secs : -1);
    cell(c[4], CELL, "%.2f", ratio[0]);
    cell(c[5], CELL, "%.2f", ratio[1]);
    cell(c[6], CELL, "%.0f", r->io_bytes / MIB);
    cell(c[7], CELL, "%.2f", wa);
    cell(c[8], CELL, "%.2f", wa_eng);
    cell(c[9], CELL, "%.1f", reads ? -1 : r->disk_bytes / MIB);
    cell(c[10], CELL, "%.1f", r->settle_secs);
    cell(c[11], CELL, "%.1f", r->cpu_secs);
    c[12][0] = 0;
    if (bd->kind == READRANDOM) snprintf(c[12], CELL, "%" PRIu64 " found", r->found);
    if (bd->kind == SEEKRANDOM) snprintf(c[12], CELL, "%" PRIu64 " entries read", r->found);
    uint64_t lookups = r->cache_hits + r->cache_misses;
    if (lookups && (reads || bd->kind == DELETERANDOM))
        snprintf(c[12] + strlen(c[12]), CELL - strlen(c[12]), "%scache hits %.0f%%", c[12][0] ? ", " : "",
                 100.0 * r->cache_hits / lookups);
    if (r->has_counters && (writes || bd->kind == DELETERANDOM))
        snprintf(c[12] + strlen(c[12]), CELL - strlen(c[12]), "%sstalled %.1f s", c[12][0] ? ", " : "",
                 r->stall_us / 1e6);
    if (r->settle_timeout) snprintf(c[12] + strlen(c[12]), CELL - strlen(c[12]), " settle timed out");
    return true;
}

int main(int argc, char **argv) {
    const char *bench_list = "fillseq,fillrandom,overwrite,readrandom,readseq,seekrandom,deleterandom,fillsync,"
                             "fillsync8,fill1M";
    const char *backend_list = "kvfs,leveldb,rocksdb";
    uint64_t v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (parse_u64(a, "--num", &cfg.num) || parse_u64(a, "--reads", &cfg.reads) ||
            parse_u64(a, "--seeks", &cfg.seeks) || parse_u64(a, "--num-sync", &cfg.num_sync) ||
            parse_u64(a, "--num-large", &cfg.num_large) || parse_u64(a, "--seed", &cfg.seed))
            continue;
        if (parse_u64(a, "--sync-threads", &v)) cfg.sync_threads = v < 1 ? 1 : v > 64 ? 64 : (int)v;
        else if (strncmp(a, "--benchmarks=", 13) == 0) bench_list = a + 13;
        else if (strncmp(a, "--backends=", 11) == 0) backend_list = a + 11;
        else if (strncmp(a, "--dir=", 6) == 0) snprintf(cfg.dir, sizeof cfg.dir, "%s", a + 6);
        else if (strncmp(a, "--md=", 5) == 0) cfg.md = a + 5;
        else if (strncmp(a, "--csv=", 6) == 0) cfg.csv = a + 6;
        else if (strcmp(a, "--keep") == 0) cfg.keep = true;
        else if (strncmp(a, "--use-existing=", 15) == 0) cfg.existing = a + 15;
        else if (parse_u64(a, "--rounds", &v)) cfg.rounds = v < 1 ? 1 : v > MAX_ROUNDS ? MAX_ROUNDS : (int)v;
        else usage();
    }
    if (cfg.num == 0) usage();
    if (!cfg.reads) cfg.reads = cfg.num;
    if (!cfg.seeks) cfg.seeks = cfg.num;
    if (!cfg.num_sync) cfg.num_sync = cfg.num / 100 ? cfg.num / 100 : 1;
    for (size_t i = 0; i < NBENCH; i++)
        if (all_benches[i].sync && all_benches[i].threads > 1) all_benches[i].threads = cfg.sync_threads;
    for (const char *p = bench_list; *p;) { /* every name must be known */
        size_t l = strcspn(p, ",");
        bool known = false;
        for (size_t i = 0; i < NBENCH; i++)
            known |= strlen(all_benches[i].name) == l && strncmp(all_benches[i].name, p, l) == 0;
        if (!known) {
            fprintf(stderr, "db_bench: unknown benchmark %.*s\n", (int)l, p);
            usage();
        }
        p += l + (p[l] == ',');
    }

    static char mach[8192];
    machine(mach, sizeof mach);

    /* A fresh working directory under --dir, or the one an earlier --keep run left (kept again). */
    char tmpl[1024];
    if (cfg.existing) {
        cfg.keep = true;
        if (snprintf(tmpl, sizeof tmpl, "%s", cfg.existing) >= (int)sizeof tmpl) return 1;
    } else if (snprintf(tmpl, sizeof tmpl, "%s/kvfs-bench-XXXXXX", cfg.dir) >= (int)sizeof tmpl || !mkdtemp(tmpl)) {
        fprintf(stderr, "db_bench: cannot create a directory under %s: %s\n", cfg.dir, strerror(errno));
        return 1;
    }
    memcpy(cfg.dir, tmpl, sizeof tmpl);
    make_pool(cfg.seed);
    signal(SIGPIPE, SIG_IGN);

    child kids[NBACKEND];
    int nkids = 0;
    for (int i = 0; i < NBACKEND; i++) {
        if (!in_list(backend_list, backends[i].name)) continue;
        int cmd[2], res[2];
        if (pipe(cmd) < 0 || pipe(res) < 0) return 1;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(cmd[1]);
            close(res[0]);
            for (int k = 0; k < nkids; k++) close(kids[k].cmd_fd), close(kids[k].res_fd);
            child_main(&backends[i], cmd[0], res[1]);
            _exit(0);
        }
        close(cmd[0]);
        close(res[1]);
        kids[nkids++] = (child){&backends[i], pid, cmd[1], res[0], false, ""};
    }
#ifdef BENCH_NO_KVFS
    if (in_list(backend_list, "kvfs"))
        fprintf(stderr, "db_bench: built without the kvfs engine (BENCH_NO_KVFS): kvfs is not measured\n");
#endif

    char load0[64], load1[64];
    loadavg(load0, sizeof load0);
    time_t start = time(NULL);
    printf("db_bench: %s\n", mach);
    printf("keys %d bytes, values %d bytes (half-compressible), %" PRIu64 " entries, %" PRIu64 " reads, %" PRIu64
           " seeks (+%d-key scan), %" PRIu64 " synced writes (1 and %d writers), %" PRIu64 " values of 1 MiB\n",
           KEY_LEN, VALUE_LEN, cfg.num, cfg.reads, cfg.seeks, SCAN_LEN, cfg.num_sync, cfg.sync_threads,
           cfg.num_large);
    printf("directory %s, load average at start %s\n", cfg.dir, load0);
    for (int k = 0; k < nkids; k++) {
        result r;
        ask(&kids[k], 1000, &r);
        snprintf(kids[k].desc, sizeof kids[k].desc, "%s", r.msg);
        printf("  %s\n", kids[k].desc);
    }
    printf("\n%-12s %-8s %10s %10s %12s %9s %8s %8s %9s %6s %6s %9s %7s %7s  %s\n", "benchmark", "backend", "ops",
           "µs/op", "ops/s", "MB/s", "×leveldb", "×rocksdb", "write MiB", "WA", "WA eng", "disk MiB", "settle",
           "CPU s", "note");

    bool ran[NBENCH] = {false};
    for (int round = 0; round < cfg.rounds; round++) {
    if (cfg.rounds > 1) printf("round %d of %d\n", round + 1, cfg.rounds);
    for (size_t bi = 0; bi < NBENCH; bi++) {
        if (!in_list(bench_list, all_benches[bi].name)) continue;
        ran[bi] = true;
        for (int k = 0; k < nkids; k++) ask(&kids[k], (int)bi, &results[bi][k]);
        for (int k = 0; k < nkids; k++) round_results[round][bi][k] = results[bi][k];
        for (int k = 0; k < nkids; k++) {
            char c[NCELL][CELL];
            if (!row_cells(kids, nkids, bi, k, c)) {
                printf("%-12s %-8s FAILED: %s\n", all_benches[bi].name, kids[k].b->name, results[bi][k].msg);
                continue;
            }
            printf("%-12s %-8s %10s %10s %12s %9s %8s %8s %9s %6s %6s %9s %7s %7s  %s\n", all_benches[bi].name,
                   kids[k].b->name, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11],
                   c[12]);
            fflush(stdout);
        }
    }
    }
    /* From here on, results holds each benchmark's median round, per engine. */
    for (size_t bi = 0; bi < NBENCH; bi++)
        for (int k = 0; ran[bi] && k < nkids; k++) {
            int m = median_round(bi, k);
            results[bi][k] = round_results[m < 0 ? cfg.rounds - 1 : m][bi][k];
        }
    for (int k = 0; k < nkids; k++) {
        int stop = -1, st;
        if (!kids[k].dead && write(kids[k].cmd_fd, &stop, sizeof stop) < 0) perror("db_bench");
        close(kids[k].cmd_fd);
        close(kids[k].res_fd);
        waitpid(kids[k].pid, &st, 0);
    }
    if (!cfg.keep) rmdir(cfg.dir);
    loadavg(load1, sizeof load1);
    double elapsed = difftime(time(NULL), start);
    printf("\nload average at end %s; %.0f s in all\n", load1, elapsed);

    /* The markdown and CSV reports. */
    int kvfs_k = -1, ldb_k = -1;
    for (int k = 0; k < nkids; k++) {
        if (strcmp(kids[k].b->name, "kvfs") == 0) kvfs_k = k;
        if (strcmp(kids[k].b->name, "leveldb") == 0) ldb_k = k;
    }
    if (cfg.csv) {
        FILE *f = fopen(cfg.csv, "w");
        if (f) {
            fprintf(f, "benchmark,backend,round,ok,ops,secs,us_per_op,ops_per_sec,mb_per_sec,io_bytes,user_bytes,"
                       "engine_bytes,disk_bytes,settle_secs,cpu_secs,found\n");
            /* every round, then (with more than one) each engine's median round again, as round "median" */
            for (int round = 0; round <= (cfg.rounds > 1 ? cfg.rounds : 0); round++)
            for (size_t bi = 0; bi < NBENCH; bi++)
                for (int k = 0; ran[bi] && k < nkids; k++) {
                    result *r = round < cfg.rounds ? &round_results[round][bi][k] : &results[bi][k];
                    char rname[16];
                    if (round < cfg.rounds) snprintf(rname, sizeof rname, "%d", round + 1);
                    else snprintf(rname, sizeof rname, "median");
                    fprintf(f, "%s,%s,%s,%d,%" PRIu64 ",%.6f,%.4f,%.1f,%.2f,%" PRIu64 ",%" PRIu64 ",%" PRIu64
                               ",%" PRIu64 ",%.2f,%.2f,%" PRIu64 "\n",
                            all_benches[bi].name, kids[k].b->name, rname, r->ok == 1, r->ops, r->secs,
                            r->ops ? r->secs * 1e6 / r->ops : 0, ops_per_sec(r),
                            r->secs > 0 ? r->bytes / MIB / r->secs : 0, r->io_bytes, r->user_bytes,
                            r->engine_bytes + (r->engine_counts_wal ? 0 : r->user_bytes), r->disk_bytes,
                            r->settle_secs, r->cpu_secs, r->found);
                }
            fclose(f);
        }
    }
    if (cfg.md) {
        FILE *f = fopen(cfg.md, "w");
        if (!f) {
            perror(cfg.md);
            return 1;
        }
        char when[64];
        strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&start));
        fprintf(f, "Measured %s by `bench/out/db_bench` (%.0f s in all).\n\n", when, elapsed);
        if (cfg.rounds > 1)
            fprintf(f, "Each engine ran the benchmark list %d times (rounds, each on fresh stores), taking turns "
                       "within each benchmark. Each row is that engine's median round by ops/s, with the range "
                       "over the rounds in its note; the targets are the median of the rounds' ratios.\n\n",
                    cfg.rounds);
        fprintf(f, "- Machine: %s.\n", mach);
        fprintf(f, "- Load average (1, 5, 15 min) at start %s, at end %s.\n", load0, load1);
        fprintf(f, "- Workload: %d-byte keys, %d-byte half-compressible values; %" PRIu64 " entries, %" PRIu64
                   " random reads, %" PRIu64 " seeks each followed by a %d-key scan, %" PRIu64
                   " synced writes (1 writer, then %d writers), %" PRIu64 " values of 1 MiB.\n",
                KEY_LEN, VALUE_LEN, cfg.num, cfg.reads, cfg.seeks, SCAN_LEN, cfg.num_sync, cfg.sync_threads,
                cfg.num_large);
        for (int k = 0; k < nkids; k++) fprintf(f, "- %s.\n", kids[k].desc);
        fprintf(f, "\n| benchmark | backend | ops | µs/op | ops/s | MB/s | kvfs/leveldb | kvfs/rocksdb | written MiB "
                   "| WA | WA (engine) | disk MiB | settle s | CPU s | note |\n");
        fprintf(f, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n");
        for (size_t bi = 0; bi < NBENCH; bi++) {
            for (int k = 0; ran[bi] && k < nkids; k++) {
                char c[NCELL][CELL];
                if (!row_cells(kids, nkids, bi, k, c)) {
                    fprintf(f, "| %s | %s | | | | | | | | | | | | | FAILED: %s |\n", all_benches[bi].name,
                            kids[k].b->name, results[bi][k].msg);
                    continue;
                }
                if (cfg.rounds > 1) {
                    double v[MAX_ROUNDS], med, lo, hi;
                    int n = 0;
                    for (int r = 0; r < cfg.rounds; r++)
                        if (round_results[r][bi][k].ok == 1) v[n++] = ops_per_sec(&round_results[r][bi][k]);
                    median_range(v, n, &med, &lo, &hi);
                    size_t l = strlen(c[NCELL - 1]);
                    snprintf(c[NCELL - 1] + l, CELL - l, "%s%d rounds: %.0f–%.0f ops/s", l ? ", " : "", n, lo, hi);
                }
                fprintf(f, "| %s | %s |", all_benches[bi].name, kids[k].b->name);
                for (int i = 0; i < NCELL; i++) fprintf(f, " %s |", c[i]);
                fprintf(f, "\n");
            }
        }
        /* The targets of issue 2, when kvfs and LevelDB both ran. */
        if (kvfs_k >= 0 && ldb_k >= 0) {
            fprintf(f, "\n| target | kvfs | LevelDB | ratio | goal | met |\n|---|--:|--:|--:|--:|---|\n");
            static const struct {
                const char *bench, *ref;
                double goal;
            } tg[] = {{"fillrandom", "fillrandom", 1.5}, {"readrandom", "readrandom", 2.0},
                      {"seekrandom", "seekrandom", 1.5}, {"fillsync8", "fillsync", 5.0}};
            for (size_t t = 0; t < sizeof tg / sizeof tg[0]; t++) {
                int a = -1, bref = -1;
                for (size_t bi = 0; bi < NBENCH; bi++) {
                    if (ran[bi] && strcmp(all_benches[bi].name, tg[t].bench) == 0) a = (int)bi;
                    if (ran[bi] && strcmp(all_benches[bi].name, tg[t].ref) == 0) bref = (int)bi;
                }
                if (a < 0 || bref < 0 || results[a][kvfs_k].ok != 1 || results[bref][ldb_k].ok != 1) continue;
                double x = ops_per_sec(&results[a][kvfs_k]), y = ops_per_sec(&results[bref][ldb_k]);
                /* the ratio of each round's two runs; its median decides */
                double v[MAX_ROUNDS], med, lo, hi;
                int n = 0;
                for (int r = 0; r < cfg.rounds; r++) {
                    const result *rx = &round_results[r][a][kvfs_k], *ry = &round_results[r][bref][ldb_k];
                    if (rx->ok == 1 && ry->ok == 1 && ops_per_sec(ry) > 0) v[n++] = ops_per_sec(rx) / ops_per_sec(ry);
                }
                median_range(v, n, &med, &lo, &hi);
                char ratio[64];
                if (n > 1) snprintf(ratio, sizeof ratio, "%.2f (%.2f–%.2f)", med, lo, hi);
                else snprintf(ratio, sizeof ratio, "%.2f", med);
                fprintf(f, "| %s ops/s%s | %.0f | %.0f | %s | ≥ %.1f | %s |\n", tg[t].bench,
                        strcmp(tg[t].bench, tg[t].ref) ? " vs LevelDB fillsync (1 writer)" : "", x, y, ratio,
                        tg[t].goal, med >= tg[t].goal ? "yes" : "**no**");
            }
            for (size_t bi = 0; bi < NBENCH; bi++) {
                const bench_def *bd = &all_benches[bi];
                if (!ran[bi] || !(bd->kind == FILL || bd->kind == OVERWRITE || bd->kind == DELETERANDOM)) continue;
                if (results[bi][kvfs_k].ok != 1 || results[bi][ldb_k].ok != 1) continue;
                double x = results[bi][kvfs_k].disk_bytes / MIB, y = results[bi][ldb_k].disk_bytes / MIB;
                double v[MAX_ROUNDS], med, lo, hi;
                int n = 0;
                for (int r = 0; r < cfg.rounds; r++) {
                    const result *rx = &round_results[r][bi][kvfs_k], *ry = &round_results[r][bi][ldb_k];
                    if (rx->ok == 1 && ry->ok == 1 && ry->disk_bytes > 0)
                        v[n++] = (double)rx->disk_bytes / (double)ry->disk_bytes;
                }
                median_range(v, n, &med, &lo, &hi);
                char ratio[64];
                if (n > 1) snprintf(ratio, sizeof ratio, "%.2f (%.2f–%.2f)", med, lo, hi);
                else snprintf(ratio, sizeof ratio, "%.2f", med);
                fprintf(f, "| disk MiB after %s | %.1f | %.1f | %s | ≤ 1.0 | %s |\n", bd->name, x, y, ratio,
                        n && med <= 1.0 ? "yes" : "**no**");
            }
        }
        fclose(f);
        printf("wrote %s\n", cfg.md);
    }
    for (int k = 0; k < nkids; k++)
        if (kids[k].dead) return 1;
    return 0;
}
