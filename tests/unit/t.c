/* t.c — the unit-test runner (see t.h). */
#include "t.h"

#include "db_impl.h"
#include "wal.h"

#include <dirent.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#define T_MAX 1024
static struct { const char *name; void (*fn)(void); } tests[T_MAX];
static int ntests;
static bool cur_failed;
static char tmp_root[256];
static int tmp_count;

void t_register(const char *name, void (*fn)(void)) {
    if (ntests < T_MAX) tests[ntests++].name = name, tests[ntests - 1].fn = fn;
}

void t_fail(const char *file, int line, const char *fmt, ...) {
    if (cur_failed) return;
    cur_failed = true;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "# FAIL %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    fflush(stdout);
}

bool t_failed(void) { return cur_failed; }

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}
void t_rmrf(const char *path) { nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

bool t_newest_file(const char *dir, const char *suffix, char *out, size_t n) {
    DIR *d = opendir(dir);
    if (!d || n == 0) {
        if (d) closedir(d);
        return false;
    }
    out[0] = 0;
    size_t sl = strlen(suffix);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > sl && strcmp(e->d_name + l - sl, suffix) == 0 && strcmp(e->d_name, out) > 0)
            snprintf(out, n, "%s", e->d_name);
    }
    closedir(d);
    return out[0] != 0;
}

bool t_log_end(const char *path, bool cut, uint64_t *end) {
    wal_reader *r;
    if (wal_reader_open(NULL, path, NULL, &r) != KV_OK) return false;
    const uint8_t *p;
    size_t len;
    uint64_t off;
    int rc;
    while ((rc = wal_read(r, &p, &len, &off)) == KV_OK) {
    }
    *end = wal_reader_valid_end(r);
    wal_reader_close(r);
    return rc == KV_ENOTFOUND && (!cut || truncate(path, (off_t)*end) == 0);
}

static void cleanup(void) {
    if (tmp_root[0] && !getenv("KVFS_KEEP_TMP")) t_rmrf(tmp_root);
}

const char *t_tmpdir(void) {
    static char path[300];
    if (!tmp_root[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_root, sizeof tmp_root, "%s/kvfs-unit-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmp_root)) { perror("mkdtemp"); exit(2); }
        atexit(cleanup);
    }
    snprintf(path, sizeof path, "%s/%d", tmp_root, ++tmp_count);
    if (mkdir(path, 0700) != 0) { perror("mkdir"); exit(2); }
    return path;
}

uint64_t t_seed(void) {
    const char *s = getenv("KVFS_SEED");
    return s && *s ? strtoull(s, NULL, 0) : 0x5eed1234abcdULL;
}

uint64_t t_rand(uint64_t *state) {
    uint64_t x = *state ? *state : 88172645463325252ULL;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *state = x;
    return x * 2685821657736338717ULL;
}

void t_on_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    t_problems *p = ctx;
    if (p->n++ == 0) snprintf(p->first, sizeof p->first, "%s at %llu: %s", file, (unsigned long long)off, what);
}

/* 0: held, 1: released, 2: the thread went on. */
static atomic_int compact_gate;

static void compact_start_wait(kv_db *db) {
    (void)db;
    for (int i = 0; i < 10000 && atomic_load(&compact_gate) == 0; i++) usleep(1000);
    atomic_store(&compact_gate, 2);
}

void t_compact_start_hold(void) {
    atomic_store(&compact_gate, 0);
    db_compact_start_hook = compact_start_wait;
}

void t_compact_start_release(void) {
    if (db_compact_start_hook != compact_start_wait) return;
    if (atomic_load(&compact_gate) == 0) atomic_store(&compact_gate, 1);
    for (int i = 0; i < 10000 && atomic_load(&compact_gate) != 2; i++) usleep(1000);
    db_compact_start_hook = NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int passed = 0, failed = 0, n = 0;
    for (int i = 0; i < ntests; i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1])) continue;
        cur_failed = false;
        tests[i].fn();
        n++;
        if (cur_failed) { printf("not ok %d %s\n", n, tests[i].name); failed++; }
        else { printf("ok %d %s\n", n, tests[i].name); passed++; }
    }
    printf("# %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
