/* test_crash.c — crash tests.
 *
 *  1. A child process (fork) opens a store and writes batches (mostly with KV_SYNC), reporting each acknowledged
 *     batch to the parent through a pipe; the parent kills it with SIGKILL at a random moment, reopens the store and
 *     checks that every acknowledged batch is there and whole, that no batch is partly applied, and that kv_check
 *     finds nothing. A process crash loses nothing the OS has, so even unsynced acknowledged batches must survive.
 *     KVFS_CRASH_ROUNDS sets the number of rounds (default 100).
 *  2. The same in-process with the fault environment simulating a power loss (kv_fault_env_crash, from another
 *     thread while writers run, or between writes; in half the threaded cycles I/O faults come and go meanwhile and
 *     failed writes are retried): every batch acknowledged with KV_SYNC, or before a kv_sync that returned OK, must
 *     survive; no batch may be partial; the store must open with the POSIX env and check clean.
 *     KVFS_FAULT_CRASH_ROUNDS sets the number of rounds (default 36, each of three power losses).
 *  3. Deterministic cases: kv_sync covers batches still in a log the store switched away from; a blob file left
 *     ending in part of a chunk by a killed process.
 *
 * The workload. Each writer thread t numbers its batches 1, 2, 3, ... Batch B of thread t touches one "group" of
 * keys, r = B % GROUPS: keys t<t>-r<r>-k0..k3 (and -tmp). Every value written by batch B starts with the 11-byte
 * header "B%010llu", so the state of a group tells which batch wrote it last; all four keys must agree (else the
 * batch was partly applied) and hold exactly the bytes that batch (and the history of the group) implies:
 *   k0   put of gen(t, B, 0)                   (some values are over blob_threshold: blob files)
 *   k1   put of gen(t, B, 1), every third visit through a move from -tmp (so -tmp must always be absent)
 *   k2   put of gen(t, B, 2) on some visits, else write_at(k2_patch_at(B), header): each visit's header patched in
 *        at its own place, so large values fragment and their references become paged (4 extents per page here)
 *   k3   put of the header on even visits, delete on odd ones
 * Since a thread writes its batches one after another, what survives must also be a prefix of them: if M is the
 * newest surviving batch of thread t, every group of t holds the newest of its batches <= M.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "env.h"
#include "kv.h"
#include "t.h"
#include "wal.h"

#define NT 2          /* writer threads */
#define GROUPS 16     /* groups per thread */
#define HDR 11        /* "B%010llu" */
#define MAXV 4200     /* largest generated value */

static void small_options(kv_options *o) {
    kv_options_init(o);
    o->memtable_bytes = 16 << 10;
    o->table_bytes = 8 << 10;
    o->level1_bytes = 32 << 10;
    o->block_bytes = 512;
    o->blob_threshold = 1024;
    o->blob_file_bytes = 64 << 10; /* the minimum: blob files rotate often */
    o->blob_page_extents = 4;      /* the minimum: fragmented values get paged references */
    o->block_cache_bytes = 256 << 10;
    o->max_open_tables = 16;
    o->l0_compaction_trigger = 2;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void header(uint64_t B, uint8_t out[HDR]) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "B%010llu", (unsigned long long)B);
    memcpy(out, tmp, HDR);
}

/* The value batch B of thread t puts into key k. */
static size_t gen(int t, uint64_t B, int k, uint8_t *buf) {
    uint64_t h = mix(((uint64_t)t << 56) ^ (B << 4) ^ (uint64_t)k);
    size_t len = h % 4 == 0 ? 1100 + (size_t)(h >> 8) % 3000 : 20 + (size_t)(h >> 8) % 180;
    header(B, buf);
    for (size_t i = HDR; i < len; i++) buf[i] = (uint8_t)((h >> ((i % 8) * 8)) ^ i);
    return len;
}

static void key_name(char *k, size_t n, int t, uint64_t r, const char *suffix) {
    snprintf(k, n, "t%d-r%02llu-%s", t, (unsigned long long)r, suffix);
}

static bool k1_by_move(uint64_t B) { return (B / GROUPS) % 3 == 0; }
static bool k2_put(uint64_t B) { return (B / GROUPS) % 9 == 0; } /* then 8 patches: paged references change */
static bool k3_put(uint64_t B) { return (B / GROUPS) % 2 == 0; }
static uint64_t k2_patch_at(uint64_t B) { return (B * 2654435761u >> 7) % 4000; }

static int build_batch(kv_batch *b, int t, uint64_t B) {
    static _Thread_local uint8_t v[MAXV];
    uint64_t r = B % GROUPS;
    char k[64], tmp[64];
    int rc;
    kv_batch_clear(b);
    key_name(k, sizeof k, t, r, "k0");
    size_t n = gen(t, B, 0, v);
    if ((rc = kv_batch_put(b, k, strlen(k), v, n))) return rc;
    key_name(k, sizeof k, t, r, "k1");
    n = gen(t, B, 1, v);
    if (k1_by_move(B)) {
        key_name(tmp, sizeof tmp, t, r, "tmp");
        if ((rc = kv_batch_put(b, tmp, strlen(tmp), v, n))) return rc;
        if ((rc = kv_batch_move(b, 0, tmp, strlen(tmp), 0, k, strlen(k)))) return rc;
    } else if ((rc = kv_batch_put(b, k, strlen(k), v, n))) {
        return rc;
    }
    key_name(k, sizeof k, t, r, "k2");
    if (k2_put(B)) {
        n = gen(t, B, 2, v);
        if ((rc = kv_batch_put(b, k, strlen(k), v, n))) return rc;
    } else {
        uint8_t h[HDR];
        header(B, h);
        if ((rc = kv_batch_write_at(b, 0, k, strlen(k), k2_patch_at(B), h, HDR))) return rc;
    }
    key_name(k, sizeof k, t, r, "k3");
    if (k3_put(B)) {
        uint8_t h[HDR];
        header(B, h);
        rc = kv_batch_put(b, k, strlen(k), h, HDR);
    } else {
        rc = kv_batch_delete(b, k, strlen(k));
    }
    return rc;
}

/* The value of k2 after batch B: the last put of k2 in the group (B or before), with the headers of the group's
 * later batches patched in, in order (zeros fill any gap a patch leaves past the end). */
static size_t expected_k2(int t, uint64_t B, uint8_t *buf) {
    uint64_t p = B;
    while (!k2_put(p) && p > GROUPS) p -= GROUPS;
    size_t n = 0;
    if (k2_put(p)) {
        n = gen(t, p, 2, buf);
        p += GROUPS;
    }
    for (; p <= B; p += GROUPS) {
        size_t off = (size_t)k2_patch_at(p);
        if (off > n) memset(buf + n, 0, off - n);
        header(p, buf + off);
        if (off + HDR > n) n = off + HDR;
    }
    return n;
}

/* The newest batch <= M of thread t's group r (0 when there is none). */
static uint64_t newest_in_group(uint64_t M, uint64_t r) {
    if (M == 0) return 0;
    uint64_t b = M - (M + GROUPS - r) % GROUPS; /* largest b <= M with b % GROUPS == r */
    return b >= 1 && b <= M ? b : 0;
}

static int get_key(kv_db *db, const char *k, kv_buf *out) { return kv_get(db, NULL, k, strlen(k), out); }

/* Check group r of thread t; *got = the batch that wrote it last (0 = never written). Message in err. */
static bool check_group(kv_db *db, int t, uint64_t r, uint64_t *got, char *err, size_t errn) {
    static uint8_t want[MAXV];
    char k[64];
    kv_buf v[5];
    int rc[5];
    const char *names[5] = {"k0", "k1", "k2", "k3", "tmp"};
    for (int i = 0; i < 5; i++) {
        key_name(k, sizeof k, t, r, names[i]);
        rc[i] = get_key(db, k, &v[i]);
        if (rc[i] != KV_OK && rc[i] != KV_ENOTFOUND) {
            snprintf(err, errn, "get %s: %s (%s)", k, kv_strerror(rc[i]), kv_errmsg());
            goto fail;
        }
    }
    *got = 0;
    if (rc[4] == KV_OK) {
        snprintf(err, errn, "t%d group %llu: the move source -tmp is present", t, (unsigned long long)r);
        goto fail;
    }
    if (rc[0] == KV_ENOTFOUND) {
        for (int i = 1; i < 4; i++)
            if (rc[i] == KV_OK) {
                snprintf(err, errn, "t%d group %llu: k0 absent but %s present (partial batch)", t,
                         (unsigned long long)r, names[i]);
                goto fail;
            }
        return true;
    }
    if (v[0].len < HDR || ((const char *)v[0].data)[0] != 'B') {
        snprintf(err, errn, "t%d group %llu: k0 has no header", t, (unsigned long long)r);
        goto fail;
    }
    char hb[HDR + 1];
    memcpy(hb, v[0].data, HDR);
    hb[HDR] = 0;
    uint64_t B = strtoull(hb + 1, NULL, 10);
    *got = B;
    if (B == 0 || B % GROUPS != r) {
        snprintf(err, errn, "t%d group %llu: k0 written by batch %llu of another group", t, (unsigned long long)r,
                 (unsigned long long)B);
        goto fail;
    }
    for (int i = 0; i < 4; i++) {
        size_t n;
        if (i < 2) n = gen(t, B, i, want);
        else if (i == 2) n = expected_k2(t, B, want);
        else n = HDR, header(B, want);
        bool present = rc[i] == KV_OK;
        bool should = i != 3 || k3_put(B);
        if (present != should) {
            snprintf(err, errn, "t%d group %llu (batch %llu): %s is %s (partial batch)", t, (unsigned long long)r,
                     (unsigned long long)B, names[i], present ? "present" : "absent");
            goto fail;
        }
        if (present && (v[i].len != n || memcmp(v[i].data, want, n) != 0)) {
            char hv[HDR + 1] = {0};
            if (v[i].len >= HDR) memcpy(hv, v[i].data, HDR);
            snprintf(err, errn, "t%d group %llu (batch %llu): %s holds a wrong value (%llu bytes, header %s; want %zu)",
                     t, (unsigned long long)r, (unsigned long long)B, names[i], (unsigned long long)v[i].len, hv, n);
            goto fail;
        }
    }
    for (int i = 0; i < 5; i++)
        if (rc[i] == KV_OK) kv_buf_free(&v[i]);
    return true;
fail:
    for (int i = 0; i < 5; i++)
        if (rc[i] == KV_OK) kv_buf_free(&v[i]);
    return false;
}

/* Check the whole store: for each thread, lo[t] <= M[t] <= hi[t], and every group holds the newest batch <= M[t]
 * (whole). M[t] gets the newest surviving batch. */
static bool check_store(kv_db *db, const uint64_t *lo, const uint64_t *hi, uint64_t *M, char *err, size_t errn) {
    for (int t = 0; t < NT; t++) {
        uint64_t got[GROUPS];
        M[t] = 0;
        for (uint64_t r = 0; r < GROUPS; r++) {
            if (!check_group(db, t, r, &got[r], err, errn)) return false;
            if (got[r] > M[t]) M[t] = got[r];
        }
        if (M[t] < lo[t]) {
            snprintf(err, errn, "thread %d: batch %llu was acknowledged as durable, but the newest batch found is %llu",
                     t, (unsigned long long)lo[t], (unsigned long long)M[t]);
            return false;
        }
        if (M[t] > hi[t]) {
            snprintf(err, errn, "thread %d: batch %llu found, but only %llu were ever started", t,
                     (unsigned long long)M[t], (unsigned long long)hi[t]);
            return false;
        }
        for (uint64_t r = 0; r < GROUPS; r++)
            if (got[r] != newest_in_group(M[t], r)) {
                snprintf(err, errn,
                         "thread %d: newest batch is %llu but group %llu holds batch %llu instead of %llu "
                         "(the surviving batches are not a prefix)",
                         t, (unsigned long long)M[t], (unsigned long long)r, (unsigned long long)got[r],
                         (unsigned long long)newest_in_group(M[t], r));
                return false;
            }
    }
    return true;
}

/* ---- 1. SIGKILL of a child process -------------------------------------------------------------------------- */

typedef struct report {
    uint32_t t;  /* thread, or 99: store opened, 98: error */
    int32_t rc;
    uint64_t batch;
} report;

typedef struct child_writer {
    kv_db *db;
    int fd;
    int t;
    uint64_t next;
    uint64_t seed;
} child_writer;

static void send_report(int fd, uint32_t t, int32_t rc, uint64_t batch) {
    report r = {t, rc, batch};
    ssize_t n;
    do n = write(fd, &r, sizeof r);
    while (n < 0 && errno == EINTR);
}

static void *child_writer_main(void *arg) {
    child_writer *w = arg;
    kv_batch *b;
    if (kv_batch_new(&b)) _exit(5);
    uint64_t rs = w->seed;
    for (uint64_t B = w->next;; B++) {
        int rc = build_batch(b, w->t, B);
        if (!rc) rc = kv_write(w->db, b, t_rand(&rs) % 10 < 7 ? KV_SYNC : 0, NULL);
        if (rc) {
            send_report(w->fd, 98, rc, B);
            _exit(4);
        }
        send_report(w->fd, (uint32_t)w->t, 0, B);
        if (w->t == 0 && t_rand(&rs) % 64 == 0) {
            rc = kv_blob_gc(w->db, 0.3);
            if (rc) {
                send_report(w->fd, 98, rc, 0);
                _exit(4);
            }
        }
    }
    return NULL;
}

static void child_main(const char *dir, int fd, const uint64_t *next, uint64_t seed) {
    kv_options o;
    small_options(&o);
    kv_db *db;
    int rc = kv_open(dir, &o, &db);
    if (rc) {
        send_report(fd, 98, rc, 0);
        _exit(3);
    }
    send_report(fd, 99, 0, 0);
    pthread_t th[NT];
    child_writer ws[NT];
    for (int t = 0; t < NT; t++) {
        ws[t] = (child_writer){db, fd, t, next[t], seed ^ mix((uint64_t)t + 1)};
        pthread_create(&th[t], NULL, child_writer_main, &ws[t]);
    }
    for (int t = 0; t < NT; t++) pthread_join(th[t], NULL);
    _exit(0);
}

/* Read one report; false at EOF. */
static bool read_report(int fd, report *r) {
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = read(fd, (char *)r + got, sizeof *r - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        got += (size_t)n;
    }
    return true;
}

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}

TEST(test_crash_sigkill) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    int rounds = env_int("KVFS_CRASH_ROUNDS", 100);
    uint64_t rs = t_seed() ^ 0xc0ffee;
    uint64_t next[NT], M[NT];
    for (int t = 0; t < NT; t++) next[t] = 1, M[t] = 0;
    int during_open = 0, killed_writing = 0;
    uint64_t total_acked = 0;
    for (int round = 0; round < rounds; round++) {
        int fds[2];
        CHECK(pipe(fds) == 0);
        fflush(stdout);
        uint64_t child_seed = t_rand(&rs);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            child_main(dir, fds[1], next, child_seed);
            _exit(0);
        }
        close(fds[1]);
        uint64_t acked[NT];
        for (int t = 0; t < NT; t++) acked[t] = next[t] - 1;
        bool early = t_rand(&rs) % 8 == 0;
        report r;
        bool opened = false, eof = false;
        char child_err[256] = "";
        if (early) {
            /* kill it anywhere, often while it recovers */
            usleep((useconds_t)(t_rand(&rs) % 15000));
        } else {
            /* wait until it has opened the store, then let it write a while */
            while (!opened && !eof) {
                struct pollfd pfd = {fds[0], POLLIN, 0};
                if (poll(&pfd, 1, 30000) == 0) {
                    snprintf(child_err, sizeof child_err, "the child did not open the store within 30 s");
                    break;
                }
                if (!read_report(fds[0], &r)) eof = true;
                else if (r.t == 99) opened = true;
                else if (r.t == 98)
                    snprintf(child_err, sizeof child_err, "child failed: %s (batch %llu)", kv_strerror(r.rc),
                             (unsigned long long)r.batch);
            }
            usleep((useconds_t)(1000 + t_rand(&rs) % 40000));
        }
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        while (read_report(fds[0], &r)) {
            if (r.t == 99) opened = true;
            else if (r.t == 98)
                snprintf(child_err, sizeof child_err, "child failed: %s (batch %llu)", kv_strerror(r.rc),
                         (unsigned long long)r.batch);
            else if (r.t < NT && r.batch > acked[r.t]) acked[r.t] = r.batch, total_acked++;
        }
        close(fds[0]);
        CHECK_MSG(!child_err[0], "round %d: %s", round, child_err);
        CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "round %d: the child exited by itself (%d)",
                  round, status);
        if (!opened) during_open++;
        else killed_writing++;

        /* reopen: every acknowledged batch is there, at most the one in flight per thread beyond it */
        kv_options o;
        small_options(&o);
        kv_db *db;
        CHECK_OK(kv_open(dir, &o, &db));
        uint64_t lo[NT], hi[NT];
        for (int t = 0; t < NT; t++) {
            lo[t] = acked[t];
            hi[t] = acked[t] + 1;
        }
        char err[1024];
        bool ok = check_store(db, lo, hi, M, err, sizeof err);
        if (!ok) kv_free(db);
        CHECK_MSG(ok, "round %d: %s", round, err);
        t_problems p = {{0}, 0};
        int crc = kv_check(db, t_on_problem, NULL, &p, NULL);
        kv_free(db);
        CHECK_MSG(crc == KV_OK && p.n == 0, "round %d: kv_check: %s; %llu problem(s), first: %s", round,
                  kv_strerror(crc), (unsigned long long)p.n, p.first);
        for (int t = 0; t < NT; t++) next[t] = M[t] + 1;
    }
    printf("# %d rounds: %d killed while opening, %d while writing; %llu acknowledged batches checked\n", rounds,
           during_open, killed_writing, (unsigned long long)total_acked);
    CHECK(rounds < 10 || killed_writing > rounds / 2);
}

/* ---- 2. power loss through the fault environment ---------------------------------------------------------------- */

typedef struct fwriter {
    kv_db *db;
    int t;
    uint64_t next;      /* next batch number */
    uint64_t seed;
    atomic_bool *crashed, *stop;
    uint64_t durable;   /* newest batch known durable (synced, or before a kv_sync, before the crash) */
    uint64_t issued;    /* newest batch started */
    int max_batches;    /* sequential mode (>= 0): write this many, then return; -1: until *stop */
    bool faults;        /* I/O faults may be armed: a write failing with EIO/ENOSPC is retried (same batch) */
    int retries;
    char err[256];
} fwriter;

static void *fwriter_main(void *arg) {
    fwriter *w = arg;
    kv_batch *b;
    if (kv_batch_new(&b)) {
        snprintf(w->err, sizeof w->err, "out of memory");
        return NULL;
    }
    uint64_t rs = w->seed;
    for (int i = 0; w->max_batches >= 0 ? i < w->max_batches : !atomic_load(w->stop); i++) {
        uint64_t B = w->next;
        w->issued = B;
        bool sync = t_rand(&rs) % 3 == 0;
        int rc = build_batch(b, w->t, B);
        if (!rc) rc = kv_write(w->db, b, sync ? KV_SYNC : 0, NULL);
        /* Read the flag after the call returned: the crasher sets it before crashing the environment, so "not
         * set" means the whole call, its sync included, happened before the power loss. */
        bool before = !atomic_load(w->crashed);
        if (rc && before && w->faults && (rc == KV_EIO || rc == KV_ENOSPC) && w->retries < 100000) {
            /* an injected fault: the batch was not applied, or (a failed sync) applied but maybe not durable;
             * writing the same batch again is harmless either way */
            w->retries++;
            usleep(300);
            continue;
        }
        if (rc) {
            /* after the crash reads of files made since may fail (they are empty phantoms): stop quietly */
            if (before) snprintf(w->err, sizeof w->err, "batch %llu: kv_write: %s (%s)", (unsigned long long)B,
                                 kv_strerror(rc), kv_errmsg());
            break;
        }
        w->next = B + 1;
        if (sync && before) w->durable = B;
        uint64_t x = t_rand(&rs) % 16;
        if (x == 0) {
            rc = kv_sync(w->db);
            bool sync_before = !atomic_load(w->crashed); /* read after the call, as for the write */
            if (rc == KV_OK && sync_before) w->durable = B;
            if (rc && sync_before && !(w->faults && (rc == KV_EIO || rc == KV_ENOSPC))) {
                snprintf(w->err, sizeof w->err, "kv_sync: %s (%s)", kv_strerror(rc), kv_errmsg());
                break;
            }
        } else if (x == 1 && w->t == 0) {
            rc = kv_blob_gc(w->db, 0.3);
            if (rc && !atomic_load(w->crashed) && !(w->faults && (rc == KV_EIO || rc == KV_ENOSPC))) {
                snprintf(w->err, sizeof w->err, "kv_blob_gc: %s (%s)", kv_strerror(rc), kv_errmsg());
                break;
            }
        }
    }
    kv_batch_free(b);
    return NULL;
}

typedef struct crasher {
    kv_env *env;
    atomic_bool *crashed, *stop;
    useconds_t delay, after;
} crasher;

static void *crasher_main(void *arg) {
    crasher *c = arg;
    usleep(c->delay);
    atomic_store(c->crashed, true);
    kv_fault_env_crash(c->env);
    usleep(c->after);
    atomic_store(c->stop, true);
    return NULL;
}

/* Arms random I/O faults (write EIO, short writes, ENOSPC, failed syncs) for a while, then clears them. */
typedef struct faulter {
    kv_env *env;
    atomic_bool *stop;
    uint64_t seed;
} faulter;

static void *faulter_main(void *arg) {
    faulter *f = arg;
    uint64_t rs = f->seed;
    const kv_fault_kind kinds[] = {KV_FAULT_WRITE_EIO, KV_FAULT_WRITE_SHORT, KV_FAULT_ENOSPC, KV_FAULT_SYNC_EIO};
    const char *subs[] = {".log", ".sst", ".blob", "MANIFEST", NULL};
    while (!atomic_load(f->stop)) {
        usleep((useconds_t)(t_rand(&rs) % 8000));
        const char *sub = subs[t_rand(&rs) % 5];
        kv_fault_kind kind = kinds[t_rand(&rs) % 4];
        /* a failed fsync of a log or a blob file may also lose its pages for good (Linux): see
         * test_crash_log_sync_failure_not_trusted_later and test_crash_blob_sync_failure_not_trusted_later */
        bool losable = sub && (strcmp(sub, ".log") == 0 || strcmp(sub, ".blob") == 0);
        if (kind == KV_FAULT_SYNC_EIO && losable && t_rand(&rs) % 2) kind = KV_FAULT_SYNC_LOST;
        kv_fault_env_arm(f->env, kind, t_rand(&rs) % 6, sub);
        usleep((useconds_t)(t_rand(&rs) % 4000));
        kv_fault_env_clear(f->env);
    }
    return NULL;
}

static uint64_t stat_retries, stat_cycles, stat_durable, stat_reordered, stat_lost_pages;

/* One store through `cycles` power losses. */
static void fault_crash_round(int round, uint64_t seed, int cycles) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    uint64_t rs = seed;
    uint64_t next[NT], M[NT];
    for (int t = 0; t < NT; t++) next[t] = 1, M[t] = 0;
    for (int cycle = 0; cycle < cycles; cycle++) {
        kv_env *env = kv_fault_env_new(kv_env_posix());
        CHECK(env != NULL);
        /* half the power losses keep the log's unsynced pages but one (test_crash_lost_page_in_the_newest_log_...) */
        bool reorder = t_rand(&rs) % 2;
        kv_fault_env_set_reorder(env, reorder);
        kv_options o;
        small_options(&o);
        o.env = env;
        kv_db *db;
        CHECK_OK(kv_open(dir, &o, &db));
        atomic_bool crashed = false, stop = false;
        fwriter ws[NT];
        bool threaded = t_rand(&rs) % 2 == 0;
        for (int t = 0; t < NT; t++) {
            ws[t] = (fwriter){.db = db, .t = t, .next = next[t], .seed = t_rand(&rs), .crashed = &crashed,
                              .stop = &stop, .durable = M[t], .issued = next[t] - 1, .max_batches = -1};
        }
        if (threaded) {
            /* half the time with I/O faults coming and going while the writers run */
            bool faults = t_rand(&rs) % 2 == 0;
            pthread_t th[NT], ct, ft;
            crasher c = {env, &crashed, &stop, (useconds_t)(t_rand(&rs) % 30000),
                         (useconds_t)(t_rand(&rs) % 3000)};
            faulter fa = {env, &stop, t_rand(&rs)};
            for (int t = 0; t < NT; t++) {
                ws[t].faults = faults;
                pthread_create(&th[t], NULL, fwriter_main, &ws[t]);
            }
            if (faults) pthread_create(&ft, NULL, faulter_main, &fa);
            pthread_create(&ct, NULL, crasher_main, &c);
            pthread_join(ct, NULL);
            for (int t = 0; t < NT; t++) pthread_join(th[t], NULL);
            if (faults) pthread_join(ft, NULL);
            kv_fault_env_clear(env);
        } else {
            /* between writes: thread 0's batches, then thread 1's, the crash, then a few writes into the void */
            for (int t = 0; t < NT; t++) {
                ws[t].max_batches = (int)(t_rand(&rs) % 120);
                fwriter_main(&ws[t]);
            }
            if (t_rand(&rs) % 2) {
                CHECK_OK(kv_sync(db));
                for (int t = 0; t < NT; t++) ws[t].durable = ws[t].issued;
            }
            atomic_store(&crashed, true);
            kv_fault_env_crash(env);
            ws[0].max_batches = (int)(t_rand(&rs) % 10);
            fwriter_main(&ws[0]);
        }
        kv_close(db); /* may report errors of the crashed environment: it does not matter */
        kv_free(db);
        for (int t = 0; t < NT; t++) {
            CHECK_MSG(!ws[t].err[0], "round %d cycle %d thread %d: %s", round, cycle, t, ws[t].err);
            stat_retries += (uint64_t)ws[t].retries;
            stat_durable += ws[t].durable - (next[t] - 1 < ws[t].durable ? next[t] - 1 : ws[t].durable);
        }
        stat_cycles++;
        CHECK_OK(kv_fault_env_apply_crash(env));
        env->destroy(env);

        /* reopen with the real file system */
        small_options(&o);
        int rc = kv_open(dir, &o, &db);
        CHECK_MSG(rc == KV_OK, "round %d cycle %d (seed %#llx): reopen after the power loss: %s (%s)", round, cycle,
                  (unsigned long long)seed, kv_strerror(rc), kv_errmsg());
        uint64_t lo[NT], hi[NT];
        for (int t = 0; t < NT; t++) {
            lo[t] = ws[t].durable;
            hi[t] = ws[t].issued;
        }
        kv_stats st;
        if (kv_get_stats(db, &st) == KV_OK && st.unsynced_log_bytes_dropped) stat_lost_pages++;
        stat_reordered += reorder;
        char err[1024];
        bool ok = check_store(db, lo, hi, M, err, sizeof err);
        if (!ok) kv_free(db);
        CHECK_MSG(ok, "round %d cycle %d (seed %#llx, %s): %s", round, cycle, (unsigned long long)seed,
                  threaded ? "threaded" : "sequential", err);
        t_problems p = {{0}, 0};
        int crc = kv_check(db, t_on_problem, NULL, &p, NULL);
        kv_free(db);
        CHECK_MSG(crc == KV_OK && p.n == 0, "round %d cycle %d (seed %#llx): kv_check: %s; %llu problem(s), first: %s",
                  round, cycle, (unsigned long long)seed, kv_strerror(crc), (unsigned long long)p.n, p.first);
        for (int t = 0; t < NT; t++) next[t] = M[t] + 1;
    }
}

TEST(test_crash_power_loss) {
    int rounds = env_int("KVFS_FAULT_CRASH_ROUNDS", 36);
    uint64_t rs = t_seed() ^ 0xfa017;
    for (int round = 0; round < rounds && !t_failed(); round++) fault_crash_round(round, t_rand(&rs), 3);
    printf("# %llu power losses (%llu keeping unsynced log pages but one; %llu reopened past such a page); %llu "
           "batches were durable when it struck; %llu writes failed by injected faults were retried\n",
           (unsigned long long)stat_cycles, (unsigned long long)stat_reordered, (unsigned long long)stat_lost_pages,
           (unsigned long long)stat_durable, (unsigned long long)stat_retries);
}

/* A new store in a fresh temporary directory, opened through a new fault environment (*db NULL on failure). */
static void open_faulty(char *dir, size_t n, kv_env **env, kv_options *o, kv_db **db) {
    *db = NULL;
    snprintf(dir, n, "%s", t_tmpdir());
    *env = kv_fault_env_new(kv_env_posix());
    CHECK(*env != NULL);
    small_options(o);
    o->env = *env;
    CHECK_OK(kv_open(dir, o, db));
}

/* A power loss now, then the machine back: nothing more reaches the disk (s, a stream still open, is freed in the
 * dark), every file is cut back to what was synced, and the store is reopened without the fault environment (with
 * small_options and the batch-log retention *o had). */
static void power_loss_and_reopen(const char *dir, kv_env *env, kv_stream *s, kv_options *o, kv_db **db) {
    kv_fault_env_crash(env);
    kv_stream_free(s);
    kv_close(*db);
    kv_free(*db);
    *db = NULL;
    CHECK_OK(kv_fault_env_apply_crash(env));
    env->destroy(env);
    uint64_t keep = o->batch_log_max_batches;
    bool read_only = o->read_only;
    small_options(o);
    o->batch_log_max_batches = keep;
    o->read_only = read_only;
    CHECK_OK(kv_open(dir, o, db));
}

/* The change feed holds batches from..to, each whole: true, else false with a t_fail. */
static bool feed_holds(kv_db *db, uint64_t from, uint64_t to) {
    for (uint64_t seq = from; seq <= to; seq++) {
        kv_logged_batch *b = NULL;
        int rc = kv_get_batch(db, seq, &b);
        bool ok = rc == KV_OK && b->nops == 1;
        if (!ok) t_fail(__FILE__, __LINE__, "batch %llu after the power loss: %s (%s)", (unsigned long long)seq,
                        kv_strerror(rc), kv_errmsg());
        kv_logged_batch_free(b);
        if (!ok) return false;
    }
    return true;
}

/* kv_sync makes durable every batch written before it, also those still in a log the store has already switched
 * away from (its memtable waiting for a flush, here one that keeps failing). */
TEST(test_crash_sync_covers_older_logs) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    CHECK(db != NULL);
    kv_fault_env_arm(env, KV_FAULT_ENOSPC, 0, ".sst"); /* flushes fail: frozen memtables (and their logs) stay */
    int n = 0;
    kv_stats st;
    char k[32], v[200];
    memset(v, 'v', sizeof v);
    for (;;) {
        snprintf(k, sizeof k, "key%06d", n);
        CHECK_OK(kv_put(db, k, strlen(k), v, sizeof v, 0));
        n++;
        CHECK_OK(kv_get_stats(db, &st));
        if (st.immutable_memtables >= 1 && n % 10 == 0) break;
        CHECK_MSG(n < 100000, "the memtable never switched");
    }
    CHECK_OK(kv_sync(db));
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    int missing = 0, first = -1;
    for (int i = 0; i < n; i++) {
        snprintf(k, sizeof k, "key%06d", i);
        if (kv_contains(db, NULL, k, strlen(k)) != 1 && missing++ == 0) first = i;
    }
    kv_free(db);
    CHECK_MSG(missing == 0, "%d of %d keys written before a successful kv_sync are lost (first: key%06d)", missing, n,
              first);
}

/* kv_sync leaves the batch log unsynced: every batch in it is also in the write-ahead log, which recovery re-appends
 * from, so a power loss loses none of the change feed's synced batches. (It used to fsync the batch log too: a third
 * fdatasync per fsync through the mount. A batch-log fsync that fails here made kv_sync fail.) A read-only open,
 * which cannot append, keeps the batches it replays in memory for the feed. */
static void sync_leaves_the_batch_log_to_recovery(bool reopen_read_only) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db = NULL;
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    env = kv_fault_env_new(kv_env_posix());
    CHECK(env != NULL);
    small_options(&o);
    o.env = env;
    o.batch_log_max_batches = 1000;
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_OK(kv_put(db, "a", 1, "0", 1, 0));
    CHECK_OK(kv_close(db)); /* close syncs the batch log: it exists, durably, before the faults */
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    kv_fault_env_arm(env, KV_FAULT_SYNC_EIO, 0, "BATCHLOG");
    char k[32];
    for (int i = 0; i < 20; i++) {
        snprintf(k, sizeof k, "key%02d", i);
        CHECK_OK(kv_put(db, k, strlen(k), "v", 1, i % 5 == 4 ? KV_SYNC : 0));
    }
    CHECK_OK(kv_sync(db));
    uint64_t last = kv_current_sequence(db);
    kv_fault_env_clear(env);
    o.read_only = reopen_read_only;
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    CHECK_EQ(kv_current_sequence(db), last);
    CHECK(feed_holds(db, 1, last));
    uint64_t oldest = 0;
    CHECK_OK(kv_oldest_retained_batch(db, &oldest));
    CHECK_EQ(oldest, 1);
    kv_free(db);
}

TEST(test_crash_sync_leaves_the_batch_log_to_recovery) { sync_leaves_the_batch_log_to_recovery(false); }
TEST(test_crash_sync_leaves_the_batch_log_to_a_read_only_recovery) { sync_leaves_the_batch_log_to_recovery(true); }

/* kv_sync leaves the batch log to the flush, which must then sync every batch-log file with batches appended since
 * the last sync, not only the one being written: here the file a failed append closed (it was closed unsynced, the
 * flush synced only the next one and deleted the log, and a power loss took batches kv_sync had returned for from
 * the change feed). */
TEST(test_crash_flush_syncs_batch_log_files_closed_since) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_env *env = kv_fault_env_new(kv_env_posix());
    CHECK(env != NULL);
    kv_options o;
    small_options(&o);
    o.env = env;
    o.batch_log_max_batches = 1000;
    kv_db *db = NULL;
    CHECK_OK(kv_open(dir, &o, &db));
    char k[32];
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof k, "key%02d", i);
        CHECK_OK(kv_put(db, k, strlen(k), "v", 1, 0));
    }
    CHECK_OK(kv_sync(db)); /* batches 1..3 are durable */
    kv_fault_env_arm(env, KV_FAULT_WRITE_EIO, 0, "BATCHLOG");
    CHECK_OK(kv_put(db, "key03", 5, "v", 1, 0)); /* logged; its batch-log append fails, closes the file: owed */
    kv_fault_env_clear(env);
    CHECK_OK(kv_put(db, "key04", 5, "v", 1, 0)); /* a new batch-log file: batch 4, then 5 */
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL)); /* flushes: the logs go */
    CHECK_OK(kv_sync(db));
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    CHECK_EQ(kv_current_sequence(db), 5);
    CHECK(feed_holds(db, 1, 5));
    kv_free(db);
}

/* A prune records its floor in the manifest, which is synced: the batches below the floor must be durable first. They
 * were not: a prune up to the next sequence after unsynced batches, then a power loss, left the store at an older
 * sequence below the floor, and the batches that took the lost numbers were evicted as they committed, at every
 * later open too (found by test_torture). */
TEST(test_crash_prune_past_unsynced_batches_evicts_no_later_batch) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    if (!db) return;
    o.batch_log_max_batches = 1000;
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_OK(kv_put(db, "a", 1, "1", 1, KV_SYNC)); /* batch 1: durable */
    CHECK_OK(kv_put(db, "b", 1, "2", 1, 0));       /* batches 2, 3: not synced */
    CHECK_OK(kv_put(db, "c", 1, "3", 1, 0));
    CHECK_OK(kv_prune_batch_log(db, 4)); /* everything so far */
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    uint64_t s = kv_current_sequence(db);
    CHECK_MSG(s == 3, "the power loss left sequence %llu, below the floor of a prune that returned",
              (unsigned long long)s);
    CHECK_OK(kv_put(db, "d", 1, "4", 1, KV_SYNC));
    for (int open = 0; open < 2; open++) {
        kv_logged_batch *lb = NULL;
        int rc = kv_get_batch(db, 4, &lb);
        kv_logged_batch_free(lb);
        CHECK_MSG(rc == KV_OK, "batch 4%s: %s", open ? ", after a reopen" : "", kv_strerror(rc));
        kv_free(db);
        db = NULL;
        if (!open) CHECK_OK(kv_open(dir, &o, &db));
    }
}

/* Batches a batch-log file got in an earlier open and no fsync covered (that open ended without one: a crash of the
 * process, or here a close whose batch-log fsync failed) are made durable by the next open before the logs that
 * hold them go: they used to stay unsynced, and a power loss after that open took them from the change feed. */
TEST(test_crash_open_syncs_what_an_earlier_open_left_in_the_batch_log) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    kv_close(db);
    kv_free(db);
    o.batch_log_max_batches = 1000;
    CHECK_OK(kv_open(dir, &o, &db));
    char k[32];
    for (int i = 0; i < 3; i++) {
        snprintf(k, sizeof k, "key%02d", i);
        CHECK_OK(kv_put(db, k, strlen(k), "v", 1, 0));
    }
    kv_fault_env_arm(env, KV_FAULT_SYNC_EIO, 0, "BATCHLOG");
    kv_close(db); /* the log is synced, the batch log is not */
    kv_free(db);
    kv_fault_env_clear(env);
    CHECK_OK(kv_open(dir, &o, &db)); /* replays the log into a table, and deletes the log */
    CHECK_OK(kv_put(db, "key03", 5, "v", 1, 0));
    CHECK_OK(kv_sync(db));
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    CHECK_EQ(kv_current_sequence(db), 4);
    CHECK(feed_holds(db, 1, 4));
    kv_free(db);
}

/* Write the bytes data[0..n) over the file at path. */
static bool put_bytes(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Read the whole file at path into buf (at most cap bytes): its size, or 0. */
static size_t get_bytes(const char *path, uint8_t *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* The valid end of the newest write-ahead log of dir (records written but not synced are read from the OS). */
static uint64_t newest_log_end(const char *dir, char *log, size_t n) {
    char path[1200];
    if (!t_newest_file(dir, ".log", log, n)) return 0;
    snprintf(path, sizeof path, "%s/%s", dir, log);
    uint64_t end = 0;
    return t_log_end(path, false, &end) ? end : 0;
}

/* A store in dir (default options in *o) holding n keys "keyNNNN" of 100 bytes in its log, closed; the log's name goes
 * to log and its bytes to buf (of cap bytes). Returns the log's size, 0 on failure. */
static size_t closed_store_log(const char *dir, kv_options *o, int n, char *log, size_t nlog, uint8_t *buf,
                               size_t cap) {
    kv_options_init(o);
    kv_db *db;
    if (kv_open(dir, o, &db) != KV_OK) return 0;
    char k[32], v[100];
    memset(v, 'v', sizeof v);
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        snprintf(k, sizeof k, "key%04d", i);
        ok = kv_put(db, k, strlen(k), v, sizeof v, 0) == KV_OK;
    }
    ok = kv_close(db) == KV_OK && ok; /* syncs the log; the memtable stays in it */
    kv_free(db);
    char path[1200];
    if (!ok || !t_newest_file(dir, ".log", log, nlog)) return 0;
    snprintf(path, sizeof path, "%s/%s", dir, log);
    size_t size = get_bytes(path, buf, cap);
    return size < cap ? size : 0;
}

/* A power loss may keep a later page of unsynced log writes and lose an earlier one; in space allocated ahead the
 * lost page reads as zeros. In the newest log that is a torn tail: the store opens with the batches before the page
 * (it refused to open, "corrupt record"), counts what it dropped, and kv_check of a read-only open agrees. Other
 * damage there is still reported. */
TEST(test_crash_lost_page_in_the_newest_log_is_a_torn_tail) {
    const char *dir = t_tmpdir();
    kv_options o;
    kv_db *db;
    char k[32], log[600], path[1200];
    const int n = 200;
    static uint8_t orig[1 << 20];
    size_t size = closed_store_log(dir, &o, n, log, sizeof log, orig, sizeof orig);
    CHECK(size > 0);
    snprintf(path, sizeof path, "%s/%s", dir, log);
    /* how many records end before the page that goes */
    const uint64_t page = 8192;
    wal_reader *r;
    CHECK_OK(wal_reader_open(NULL, path, NULL, &r));
    const uint8_t *rec;
    size_t len;
    uint64_t off;
    int before = 0;
    while (wal_read(r, &rec, &len, &off) == KV_OK)
        if (off + WAL_HEADER + len <= page) before++;
    uint64_t end = wal_reader_valid_end(r);
    wal_reader_close(r);
    CHECK(before > 10 && before < n - 10 && end > page + 4096);
    CHECK(size > end);
    static uint8_t bad[1 << 20];

    /* a byte damaged in that page: reported as before, naming the log */
    memcpy(bad, orig, size);
    bad[page + 100] ^= 0x21;
    CHECK(put_bytes(path, bad, size));
    CHECK_EQ(kv_open(dir, &o, &db), KV_ECORRUPT);
    CHECK_MSG(strstr(kv_errmsg(), log), "%s", kv_errmsg());

    /* the page lost: read-only, the store opens, and kv_check finds nothing wrong */
    memcpy(bad, orig, size);
    memset(bad + page, 0, 4096);
    CHECK(put_bytes(path, bad, size));
    kv_options ro = o;
    ro.read_only = true;
    CHECK_OK(kv_open(dir, &ro, &db));
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
    /* read-write: the batches before the page are there, those from it on are not, and the stop is counted */
    CHECK_OK(kv_open(dir, &o, &db));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.unsynced_log_bytes_dropped > 4096 && st.unsynced_log_bytes_dropped < end,
              "%llu bytes dropped, the log's records end at %llu", (unsigned long long)st.unsynced_log_bytes_dropped,
              (unsigned long long)end);
    for (int i = 0; i < n; i++) {
        snprintf(k, sizeof k, "key%04d", i);
        CHECK_MSG(kv_contains(db, NULL, k, strlen(k)) == (i < before), "%s (%d records before the page)", k, before);
    }
    CHECK_EQ(kv_current_sequence(db), (uint64_t)before);
    CHECK_OK(kv_put(db, "after", 5, "1", 1, KV_SYNC)); /* and writes go on */
    kv_free(db);
}

/* A store in dir (default options in *o) whose newest log holds a record that starts k bytes before a page boundary
 * (after *before records "kNNNN", the last one sized to end there), then 100 more records; closed. Returns
 * the record's offset, 0 on failure; the log's name goes to log. */
static uint64_t store_with_straddling_record(const char *dir, kv_options *o, int k, char *log, size_t nlog,
                                             int *before) {
    kv_options_init(o);
    kv_db *db;
    if (kv_open(dir, o, &db) != KV_OK) return 0;
    char key[32], v[200];
    memset(v, 'v', sizeof v);
    uint64_t start = 0, over = 0; /* over: a record's bytes but its value (5-byte keys, values of 1..127 bytes) */
    bool ok = kv_put(db, "k0000", 5, v, 50, 0) == KV_OK;
    if (ok) over = newest_log_end(dir, log, nlog) - 50;
    int i = 1;
    for (; ok && i < 400 && !start; i++) {
        uint64_t e = newest_log_end(dir, log, nlog), boundary = (e / 4096 + 1) * 4096;
        snprintf(key, sizeof key, "k%04d", i);
        bool fit = boundary - (uint64_t)k > e + over && boundary - (uint64_t)k - e - over <= 127;
        ok = kv_put(db, key, 5, v, fit ? boundary - (uint64_t)k - e - over : 50, 0) == KV_OK;
        if (ok && fit) start = newest_log_end(dir, log, nlog); /* the next record starts there */
    }
    *before = i;
    for (int j = 0; ok && j < 100; j++, i++) {
        snprintf(key, sizeof key, "k%04d", i);
        ok = kv_put(db, key, 5, v, 100, 0) == KV_OK;
    }
    ok = kv_close(db) == KV_OK && ok;
    kv_free(db);
    return ok && start + (uint64_t)k == (start / 4096 + 1) * 4096 ? start : 0;
}

/* The page a power loss took may hold only the first few bytes of a record's header, the rest of it lying in the next
 * page, which was kept: still a torn tail (the rule skipped a page holding fewer than 8 bytes of the record, and the
 * store refused to open, "corrupt record"). With only 1 to 3 bytes taken, the record must be whole but for them. */
TEST(test_crash_lost_page_holding_part_of_a_header) {
    for (int k = 1; k < WAL_HEADER && !t_failed(); k++) {
        const char *dir = t_tmpdir();
        kv_options o;
        kv_db *db;
        char log[600], path[1200];
        int before; /* keys k0000 .. k(before - 1) end before the straddling record */
        uint64_t start = store_with_straddling_record(dir, &o, k, log, sizeof log, &before);
        CHECK(start != 0);
        snprintf(path, sizeof path, "%s/%s", dir, log);
        static uint8_t buf[1 << 20];
        size_t size = get_bytes(path, buf, sizeof buf);
        CHECK(size > start + 4096 && size < sizeof buf);
        /* the page that ends at start + k was last written out before the record reached it */
        memset(buf + start, 0, (size_t)k);
        CHECK(put_bytes(path, buf, size));
        kv_options ro = o;
        ro.read_only = true;
        int rc = kv_open(dir, &ro, &db);
        CHECK_MSG(rc == KV_OK, "%d bytes of the header lost: %s", k, kv_errmsg());
        uint64_t problems = 1;
        CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
        CHECK_EQ(problems, 0);
        kv_free(db);
        CHECK_OK(kv_open(dir, &o, &db));
        CHECK_EQ(kv_current_sequence(db), (uint64_t)before);
        kv_stats st;
        CHECK_OK(kv_get_stats(db, &st));
        CHECK(st.unsynced_log_bytes_dropped > 4096);
        kv_free(db);
    }
}

/* Damage that zeroes 1 to 3 bytes of a header before a page boundary, in a record that is not whole otherwise, is
 * still damage: only a record whose own checksum agrees with the bytes the page did not take reads as a lost page. */
TEST(test_crash_zeroed_header_bytes_with_other_damage_are_corruption) {
    const char *dir = t_tmpdir();
    kv_options o;
    kv_db *db;
    char log[600], path[1200];
    int before;
    uint64_t start = store_with_straddling_record(dir, &o, 2, log, sizeof log, &before);
    CHECK(start != 0);
    snprintf(path, sizeof path, "%s/%s", dir, log);
    static uint8_t buf[1 << 20];
    size_t size = get_bytes(path, buf, sizeof buf);
    CHECK(size > start + 4096 && size < sizeof buf);
    memset(buf + start, 0, 2);
    buf[start + WAL_HEADER + 3] ^= 0x40; /* and a byte of its payload */
    CHECK(put_bytes(path, buf, size));
    CHECK_EQ(kv_open(dir, &o, &db), KV_ECORRUPT);
    CHECK_MSG(strstr(kv_errmsg(), log), "%s", kv_errmsg());
}

/* A crash while the store opens after a power loss that took a page of its newest log: recovery has replayed that
 * log up to the page and started a new one, but its manifest edit (the new log number) did not reach the disk. The
 * damaged log is then not the newest any more, but the newer one holds no record: it is still a torn tail (the store
 * refused to open, "corrupt record"). */
TEST(test_crash_lost_page_then_crash_while_opening) {
    const char *dir = t_tmpdir();
    kv_options o;
    kv_db *db;
    char log[600], path[1200];
    const int n = 200;
    static uint8_t buf[1 << 20];
    size_t size = closed_store_log(dir, &o, n, log, sizeof log, buf, sizeof buf);
    CHECK(size > 16384);
    snprintf(path, sizeof path, "%s/%s", dir, log);
    memset(buf + 8192, 0, 4096);
    CHECK(put_bytes(path, buf, size));
    /* the log recovery started, empty */
    unsigned long long no = strtoull(log, NULL, 10);
    char newer[1200];
    snprintf(newer, sizeof newer, "%s/%06llu.log", dir, no + 1000);
    CHECK(put_bytes(newer, (const uint8_t *)"", 0));
    kv_options ro = o;
    ro.read_only = true;
    int rc = kv_open(dir, &ro, &db);
    CHECK_MSG(rc == KV_OK, "%s", kv_errmsg());
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
    /* a newer log that holds a record: the older log was synced before it started, so its page of zeros is damage */
    wal_writer *w;
    CHECK_OK(wal_writer_open(NULL, newer, &w));
    CHECK_OK(wal_append(w, "x", 1));
    CHECK_OK(wal_writer_close(w));
    CHECK_EQ(kv_open(dir, &ro, &db), KV_ECORRUPT);
    CHECK_MSG(strstr(kv_errmsg(), log), "%s", kv_errmsg());
    /* empty again: read-write, the store opens past the page */
    CHECK(put_bytes(newer, (const uint8_t *)"", 0));
    CHECK_OK(kv_open(dir, &o, &db));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK(st.unsynced_log_bytes_dropped > 4096);
    CHECK(kv_current_sequence(db) > 10 && kv_current_sequence(db) < (uint64_t)n);
    CHECK_OK(kv_put(db, "after", 5, "1", 1, KV_SYNC));
    kv_free(db);
}

/* A blob chunk goes to the file in one append, but write(2) on a regular file may stop between pages when the
 * process gets SIGKILL, so a process killed while writing a large value can leave the active blob file ending in
 * part of a chunk (test_crash_sigkill met it now and then: "torn chunk: length N runs past the end of the file").
 * Those bytes belong to a batch that never committed: nothing is lost and kv_check must not call the store damaged
 * (it did, for as long as the file lived, until kv_check learned to report a torn blob tail only when a value
 * references it). A tail cut into a committed value, though, is damage: reported, and reads of the value fail.
 * This test makes both situations deterministically. */
TEST(test_crash_torn_blob_tail) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_options o;
    small_options(&o);
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    uint8_t v[3000];
    for (size_t i = 0; i < sizeof v; i++) v[i] = (uint8_t)(i * 7);
    CHECK_OK(kv_put(db, "big", 3, v, sizeof v, KV_SYNC));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK(st.blob_files >= 1);
    kv_free(db);
    /* the newest blob file: the one a next large value would have gone to */
    char newest[600];
    CHECK(t_newest_file(dir, ".blob", newest, sizeof newest));
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, newest);
    /* what a killed write of a 3000-byte chunk leaves: its header and the first 1000 bytes */
    uint8_t part[8 + 1000];
    memset(part, 0x5a, sizeof part);
    part[4] = 3000 & 0xff, part[5] = 3000 >> 8, part[6] = 0, part[7] = 0;
    FILE *f = fopen(path, "ab");
    CHECK(f != NULL);
    CHECK(fwrite(part, 1, sizeof part, f) == sizeof part);
    fclose(f);
    /* reopen as after the crash: the committed value is intact... */
    CHECK_OK(kv_open(dir, &o, &db));
    kv_buf b;
    CHECK_OK(kv_get(db, NULL, "big", 3, &b));
    CHECK_MEM(b.data, b.len, v, sizeof v);
    kv_buf_free(&b);
    CHECK_OK(kv_put(db, "big2", 4, v, sizeof v, KV_SYNC)); /* writes go on */
    /* ...and the store should check clean */
    t_problems p = {{0}, 0};
    int crc = kv_check(db, t_on_problem, NULL, &p, NULL);
    kv_free(db);
    CHECK_MSG(crc == KV_OK && p.n == 0,
              "after a crash in the middle of a blob append, kv_check reports %llu problem(s): %s (an uncommitted "
              "torn tail, not damage)",
              (unsigned long long)p.n, p.first);
    /* now cut the file inside the committed value: that is reported, naming the file, and reads fail */
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    CHECK(truncate(path, sb.st_size - (off_t)sizeof part - 100) == 0);
    CHECK_OK(kv_open(dir, &o, &db));
    p = (t_problems){{0}, 0};
    crc = kv_check(db, t_on_problem, NULL, &p, NULL);
    int grc = kv_get(db, NULL, "big", 3, &b);
    if (grc == KV_OK) kv_buf_free(&b);
    kv_free(db);
    CHECK_MSG(crc == KV_ECORRUPT && p.n > 0 && strstr(p.first, newest), "a torn tail inside a committed value: "
              "kv_check %s, %llu problem(s): %s", kv_strerror(crc), (unsigned long long)p.n, p.first);
    CHECK_MSG(grc != KV_OK && grc != KV_ENOTFOUND, "reading a value whose bytes are cut off: %s", kv_strerror(grc));
}

/* A power loss can keep a log's unsynced bytes and lose a blob file's: the two files reach the disk independently.
 * A logged batch whose blob bytes are gone was never synced (every sync makes the blob files durable before the
 * log), so it and every later batch were not durable; recovery drops them, as it drops a torn log tail, instead of
 * replaying values whose bytes are missing (every read of them would fail, and they would hide the older, intact
 * versions). Synced batches before it are all there, the store checks clean, and writing goes on. */
TEST(test_crash_log_outlives_blob_bytes) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    CHECK(db != NULL);
    kv_free(db);
    o.batch_log_max_batches = 1000; /* the change feed on: it must forget the dropped batches too */
    CHECK_OK(kv_open(dir, &o, &db));
    uint8_t v1[3000], v2[3000];
    memset(v1, '1', sizeof v1);
    memset(v2, '2', sizeof v2);
    CHECK_OK(kv_put(db, "small", 5, "s", 1, 0));
    CHECK_OK(kv_put(db, "big", 3, v1, sizeof v1, KV_SYNC));
    char blob[600], path[1200];
    CHECK(t_newest_file(dir, ".blob", blob, sizeof blob));
    snprintf(path, sizeof path, "%s/%s", dir, blob);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    off_t synced_size = sb.st_size;
    /* not synced: a new version of big (its bytes go to the same blob file), then a small value */
    CHECK_OK(kv_put(db, "big", 3, v2, sizeof v2, 0));
    CHECK_OK(kv_put(db, "later", 5, "l", 1, 0));
    CHECK_OK(kv_put(db, "last", 4, "z", 1, 0));
    kv_fault_env_crash(env); /* the machine stops: closing writes nothing more */
    kv_close(db);
    kv_free(db);
    env->destroy(env);
    /* what the power loss kept: the whole log, but the blob file only as far as it was synced */
    CHECK(stat(path, &sb) == 0);
    CHECK(sb.st_size > synced_size);
    CHECK(truncate(path, synced_size) == 0);
    /* and, past the batch whose bytes are gone, garbage in the middle of the log: unsynced, so no damage to report
     * (the record of "later" is spoilt, the one of "last" follows it intact) */
    char log[600], lpath[1200];
    CHECK(t_newest_file(dir, ".log", log, sizeof log));
    snprintf(lpath, sizeof lpath, "%s/%s", dir, log);
    FILE *lf = fopen(lpath, "r+b");
    CHECK(lf != NULL);
    static uint8_t lbuf[1 << 16];
    size_t ln = fread(lbuf, 1, sizeof lbuf, lf);
    uint8_t *hit = memmem(lbuf, ln, "later", 5);
    CHECK(hit != NULL);
    CHECK(fseek(lf, (long)(hit - lbuf), SEEK_SET) == 0 && fputc('L', lf) == 'L');
    fclose(lf);
    small_options(&o);
    o.batch_log_max_batches = 1000;
    CHECK_OK(kv_open(dir, &o, &db));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.unsynced_batches_dropped, 1); /* big's new version; counting ends at the spoilt record */
    CHECK_EQ(st.last_sequence, 2);
    CHECK_EQ(st.batch_log_newest, 2); /* the dropped batches 3 and 4 are gone from the change feed as well */
    kv_buf b;
    CHECK_OK(kv_get(db, NULL, "big", 3, &b)); /* the synced version, not a value whose bytes are gone */
    CHECK_MEM(b.data, b.len, v1, sizeof v1);
    kv_buf_free(&b);
    CHECK_EQ(kv_contains(db, NULL, "small", 5), 1);
    CHECK_EQ(kv_contains(db, NULL, "later", 5), 0);
    t_problems p = {{0}, 0};
    int crc = kv_check(db, t_on_problem, NULL, &p, NULL);
    CHECK_MSG(crc == KV_OK && p.n == 0, "kv_check after recovery: %s, %llu problem(s): %s", kv_strerror(crc),
              (unsigned long long)p.n, p.first);
    CHECK_OK(kv_put(db, "big", 3, v2, sizeof v2, KV_SYNC)); /* writing goes on */
    kv_free(db);
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.unsynced_batches_dropped, 0);
    CHECK_OK(kv_get(db, NULL, "big", 3, &b));
    CHECK_MEM(b.data, b.len, v2, sizeof v2);
    kv_buf_free(&b);
    kv_free(db);
}

/* The same for a write into a paged value (blob_pages.h): the power loss keeps the write's log record and its data
 * record, but not the page record appended after the data. The page is a blob record like any other, so recovery
 * drops the batch, and the value reads as it was synced. */
TEST(test_crash_log_outlives_page_record) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db); /* 4 extents per page */
    CHECK(db != NULL);
    uint8_t v[3000];
    memset(v, 'a', sizeof v);
    CHECK_OK(kv_put(db, "big", 3, v, sizeof v, KV_SYNC));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    for (int i = 0; i < 6; i++) { /* 13 extents: a paged reference */
        kv_batch_clear(b);
        memcpy(v + 300 * i + 50, "0123456789", 10);
        CHECK_OK(kv_batch_write_at(b, 0, "big", 3, 300 * i + 50, "0123456789", 10));
        CHECK_OK(kv_write(db, b, KV_SYNC, NULL));
    }
    char blob[600], path[1200];
    CHECK(t_newest_file(dir, ".blob", blob, sizeof blob));
    snprintf(path, sizeof path, "%s/%s", dir, blob);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    off_t synced_size = sb.st_size;
    kv_batch_clear(b);
    CHECK_OK(kv_batch_write_at(b, 0, "big", 3, 2500, "late-patch", 10)); /* not synced */
    CHECK_OK(kv_write(db, b, 0, NULL));
    CHECK_OK(kv_put(db, "later", 5, "l", 1, 0));
    kv_batch_free(b);
    kv_fault_env_crash(env);
    kv_close(db);
    kv_free(db);
    env->destroy(env);
    CHECK(stat(path, &sb) == 0);
    CHECK(sb.st_size > synced_size + 8 + 10); /* the data record (one chunk of 10 bytes), then the page(s) */
    CHECK(truncate(path, synced_size + 8 + 10) == 0);
    small_options(&o);
    CHECK_OK(kv_open(dir, &o, &db));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.unsynced_batches_dropped, 2);
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "big", 3, &got));
    CHECK_MEM(got.data, got.len, v, sizeof v);
    kv_buf_free(&got);
    CHECK_EQ(kv_contains(db, NULL, "later", 5), 0);
    t_problems p = {{0}, 0};
    int crc = kv_check(db, t_on_problem, NULL, &p, NULL);
    CHECK_MSG(crc == KV_OK && p.n == 0, "kv_check after recovery: %s, %llu problem(s): %s", kv_strerror(crc),
              (unsigned long long)p.n, p.first);
    kv_free(db);
}

/* A blob append fails and so does the sync that should make the retired file's earlier records durable (a dying
 * disk). Those records belong to logged batches, so the next sync must make them durable before it acknowledges
 * anything (else a power loss would take them, and recovery, stopping at the first batch whose blob bytes are
 * missing, would also drop the later synced batch); while it cannot, synced writes fail. */
TEST(test_crash_retired_blob_file_synced_later) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    CHECK(db != NULL);
    uint8_t v[3000];
    memset(v, 'a', sizeof v);
    CHECK_OK(kv_put(db, "a", 1, v, sizeof v, KV_SYNC));
    memset(v, 'b', sizeof v);
    CHECK_OK(kv_put(db, "b", 1, v, sizeof v, 0)); /* logged, its blob bytes not yet synced */
    kv_fault_env_arm(env, KV_FAULT_DISK_EIO, 0, ".blob");
    memset(v, 'c', sizeof v);
    CHECK(kv_put(db, "c", 1, v, sizeof v, 0) != KV_OK); /* the append fails; retiring the file cannot sync it */
    memset(v, 'd', sizeof v);
    CHECK(kv_put(db, "d", 1, v, sizeof v, KV_SYNC) != KV_OK); /* still dying: not acknowledged */
    kv_fault_env_clear(env);
    memset(v, 'e', sizeof v);
    CHECK_OK(kv_put(db, "e", 1, v, sizeof v, KV_SYNC)); /* the disk is back: this sync covers b's bytes too */
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    const char *want = "abe";
    for (const char *k = want; *k; k++) {
        kv_buf b;
        int rc = kv_get(db, NULL, k, 1, &b);
        CHECK_MSG(rc == KV_OK, "key %c after the power loss: %s", *k, kv_strerror(rc));
        CHECK(b.len == sizeof v && ((uint8_t *)b.data)[0] == (uint8_t)*k && ((uint8_t *)b.data)[b.len - 1] == (uint8_t)*k);
        kv_buf_free(&b);
    }
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_EQ(st.unsynced_batches_dropped, 0);
    kv_free(db);
}

/* Blob GC deletes a file that only old versions name once what shadows them is durable: here a delete written
 * without KV_SYNC. Had the pass deleted the file first, a power loss taking the delete would bring back the old
 * value, naming a file that is gone. */
TEST(test_crash_blob_gc_syncs_the_delete_that_freed_a_file) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    CHECK(db != NULL);
    if (!db) return;
    static uint8_t v[100000];
    memset(v, 'a', sizeof v);
    CHECK_OK(kv_put(db, "a", 1, v, sizeof v, KV_SYNC));
    memset(v, 'b', sizeof v);
    CHECK_OK(kv_put(db, "b", 1, v, sizeof v, KV_SYNC)); /* a's file is full: retired */
    CHECK_OK(kv_delete(db, "a", 1, 0));
    kv_stats st;
    CHECK_OK(kv_get_stats(db, &st));
    uint64_t before = st.blob_files;
    CHECK_OK(kv_blob_gc(db, 0.5));
    CHECK_OK(kv_get_stats(db, &st));
    CHECK_MSG(st.blob_files == before - 1, "%llu blob files before the pass, %llu after",
              (unsigned long long)before, (unsigned long long)st.blob_files);
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    if (!db) return;
    kv_buf got;
    CHECK_EQ(kv_get(db, NULL, "a", 1, &got), KV_ENOTFOUND);
    CHECK_OK(kv_get(db, NULL, "b", 1, &got));
    CHECK(got.len == sizeof v && ((uint8_t *)got.data)[sizeof v - 1] == 'b');
    kv_buf_free(&got);
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, NULL, NULL, NULL, &problems));
    CHECK_EQ(problems, 0);
    kv_free(db);
}

#define STREAMED 5000

/* A batch *b that puts the key "stream" from a stream *s of STREAMED bytes 's'. */
static void stream_put_batch(kv_db *db, kv_stream **s, kv_batch **b) {
    uint8_t v[STREAMED];
    memset(v, 's', sizeof v);
    CHECK_OK(kv_stream_new(db, s));
    CHECK_OK(kv_stream_append(*s, v, sizeof v));
    CHECK_OK(kv_batch_new(b));
    CHECK_OK(kv_batch_put_stream(*b, 0, "stream", 6, *s));
}

/* A stream writes into a blob file of its own, which the syncs of later batches do not cover. So its put syncs it
 * at commit even when not synced itself: else a power loss after a later synced batch could take the stream's
 * bytes, and recovery, stopping at the first batch whose blob bytes are missing, would drop the synced batch too. */
TEST(test_crash_stream_put_then_synced_write) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    CHECK(db != NULL);
    uint8_t v[STREAMED];
    memset(v, 's', sizeof v);
    kv_stream *s = NULL;
    kv_batch *b = NULL;
    stream_put_batch(db, &s, &b);
    if (t_failed()) return;
    CHECK_OK(kv_write(db, b, 0, NULL)); /* not synced */
    kv_batch_free(b);
    CHECK_OK(kv_put(db, "synced", 6, "y", 1, KV_SYNC)); /* acknowledged as durable */
    power_loss_and_reopen(dir, env, s, &o, &db); /* the stream still open: nothing else synced its file */
    CHECK(db != NULL);
    CHECK_MSG(kv_contains(db, NULL, "synced", 6) == 1, "a synced write was lost after a power loss");
    kv_buf got;
    CHECK_OK(kv_get(db, NULL, "stream", 6, &got));
    CHECK_MEM(got.data, got.len, v, sizeof v);
    kv_buf_free(&got);
    kv_free(db);
}

/* A log fsync fails, and (as Linux may) what it was to write is lost for good: a later fsync of that log succeeds
 * without writing it (KV_FAULT_SYNC_LOST). A synced write or a kv_sync that succeeds afterwards vouches for every
 * write before it, so the engine must make the earlier batches durable another way (it flushes them to tables before
 * it acknowledges): after a power loss all of them are there. Before, the later fsync was trusted and they were lost
 * while the synced write after them survived. Round 0: kv_sync after the failure; round 1: a synced write. */
TEST(test_crash_log_sync_failure_not_trusted_later) {
    for (int round = 0; round < 2; round++) {
        char dir[512];
        kv_env *env;
        kv_options o;
        kv_db *db;
        open_faulty(dir, sizeof dir, &env, &o, &db);
        CHECK(db != NULL);
        if (t_failed()) return;
        char k[32];
        for (int i = 0; i < 20; i++) {
            snprintf(k, sizeof k, "a%02d", i);
            CHECK_OK(kv_put(db, k, strlen(k), "x", 1, 0));
        }
        kv_fault_env_arm(env, KV_FAULT_SYNC_LOST, 0, ".log");
        CHECK(kv_put(db, "f", 1, "x", 1, KV_SYNC) != KV_OK); /* applied, not known to be durable */
        kv_fault_env_clear(env);
        CHECK_OK(kv_put(db, "n", 1, "x", 1, 0));
        if (round == 0) CHECK_OK(kv_sync(db));
        else CHECK_OK(kv_put(db, "g", 1, "x", 1, KV_SYNC));
        power_loss_and_reopen(dir, env, NULL, &o, &db);
        CHECK(db != NULL);
        if (t_failed()) return;
        const char *more[] = {"f", "n", round ? "g" : NULL};
        for (int i = 0; i < 23; i++) {
            if (i < 20) snprintf(k, sizeof k, "a%02d", i);
            else if (more[i - 20]) snprintf(k, sizeof k, "%s", more[i - 20]);
            else continue;
            CHECK_MSG(kv_contains(db, NULL, k, strlen(k)) == 1, "round %d: %s, written before a sync that succeeded, "
                      "is lost", round, k);
        }
        kv_free(db);
    }
}

static void print_problem(void *ctx, const char *file, uint64_t off, const char *what) {
    (void)ctx;
    fprintf(stderr, "# problem: %s at %llu: %s\n", file, (unsigned long long)off, what);
}

#define LARGE 3000 /* above small_options' blob threshold */

/* Put the one-letter key k with LARGE bytes of the letter. */
static void put_large(kv_db *db, char k, unsigned flags) {
    uint8_t v[LARGE];
    memset(v, k, sizeof v);
    CHECK_OK(kv_put(db, &k, 1, v, sizeof v, flags));
}

/* Each letter of keys reads back whole, and kv_check finds nothing. */
static void check_large(kv_db *db, const char *keys, const char *when) {
    for (const char *k = keys; *k; k++) {
        kv_buf got;
        int rc = kv_get(db, NULL, k, 1, &got);
        CHECK_MSG(rc == KV_OK, "%s: key %c: %s (%s)", when, *k, kv_strerror(rc), kv_errmsg());
        if (rc) continue;
        CHECK(got.len == LARGE && ((uint8_t *)got.data)[0] == (uint8_t)*k &&
              ((uint8_t *)got.data)[got.len - 1] == (uint8_t)*k);
        kv_buf_free(&got);
    }
    uint64_t problems = 1;
    CHECK_OK(kv_check(db, print_problem, NULL, NULL, &problems));
    CHECK_MSG(problems == 0, "%s: kv_check found %llu problem(s)", when, (unsigned long long)problems);
}

/* a synced, then b and c not synced; then the blob file's fsync fails and loses what it was to write */
static void large_values_then_lost_blob_sync(kv_env *env, kv_db *db) {
    put_large(db, 'a', KV_SYNC);
    put_large(db, 'b', 0);
    put_large(db, 'c', 0);
    CHECK_OK(kv_put(db, "small", 5, "x", 1, 0));
    kv_fault_env_arm(env, KV_FAULT_SYNC_LOST, 0, ".blob");
    CHECK(kv_sync(db) != KV_OK); /* b and c are applied, not known to be durable */
    kv_fault_env_clear(env);
}

/* The same for a blob file: its fsync fails and loses what it was to write (KV_FAULT_SYNC_LOST), so a later fsync of
 * it proves nothing. A sync that succeeds afterwards (round 0: kv_sync, 1: a synced write, 2: kv_close) vouches for
 * the large values written before it, so the engine copies them to a new blob file first, and moves the log records
 * that name the lost bytes into tables (recovery would stop at the first of them, dropping every later batch).
 * Before, the later fsync was trusted: after a power loss b and c were gone, and with them every later batch. */
TEST(test_crash_blob_sync_failure_not_trusted_later) {
    for (int round = 0; round < 3; round++) {
        char dir[512];
        kv_env *env;
        kv_options o;
        kv_db *db;
        open_faulty(dir, sizeof dir, &env, &o, &db);
        CHECK(db != NULL);
        if (t_failed()) return;
        large_values_then_lost_blob_sync(env, db);
        kv_buf got;
        CHECK_OK(kv_get(db, NULL, "b", 1, &got)); /* still readable meanwhile */
        kv_buf_free(&got);
        put_large(db, 'd', 0);
        if (round == 0) CHECK_OK(kv_sync(db));
        else if (round == 1) put_large(db, 'e', KV_SYNC);
        else {
            int rc = kv_close(db);
            CHECK_MSG(rc == KV_OK, "close: %s", kv_errmsg());
        }
        power_loss_and_reopen(dir, env, NULL, &o, &db);
        CHECK(db != NULL);
        if (t_failed()) return;
        char when[64];
        snprintf(when, sizeof when, "round %d, after the power loss", round);
        check_large(db, round == 1 ? "abcde" : "abcd", when);
        CHECK_MSG(kv_contains(db, NULL, "small", 5) == 1, "round %d: a small value after the lost bytes is gone",
                  round);
        kv_stats st;
        CHECK_OK(kv_get_stats(db, &st));
        CHECK_EQ(st.unsynced_batches_dropped, 0);
        kv_free(db);
    }
}

/* A stream's own blob file: when the fsync at its put fails, putting the same stream again must not succeed on a
 * second fsync that could skip what the first one lost. */
TEST(test_crash_stream_sync_failure_not_retried) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    CHECK(db != NULL);
    if (t_failed()) return;
    uint8_t v[STREAMED];
    memset(v, 's', sizeof v);
    kv_stream *s = NULL;
    kv_batch *b = NULL;
    stream_put_batch(db, &s, &b);
    if (t_failed()) return;
    kv_fault_env_arm(env, KV_FAULT_SYNC_LOST, 0, ".blob");
    CHECK(kv_write(db, b, 0, NULL) != KV_OK);
    kv_fault_env_clear(env);
    int rc = kv_write(db, b, 0, NULL);
    CHECK_MSG(rc == KV_EIO, "the stream's put after its failed fsync: %s", kv_strerror(rc));
    CHECK(kv_contains(db, NULL, "stream", 6) == 0);
    kv_batch_free(b);
    kv_stream_free(s);
    kv_free(db);
    env->destroy(env);
}

/* Between a blob file's failed fsync and the next sync that vouches for the store, a flush moves the records that
 * name its lost bytes from the log into a table (here kv_compact_range's). The table must name copies instead: else
 * a power loss left values that no read could return whole, in a store whose every file is "durable". */
TEST(test_crash_flush_after_blob_sync_failure_copies_values) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    CHECK(db != NULL);
    if (t_failed()) return;
    large_values_then_lost_blob_sync(env, db);
    CHECK_OK(kv_compact_range(db, NULL, 0, NULL, 0, NULL, NULL)); /* flushes the memtable to a table first */
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    if (t_failed()) return;
    check_large(db, "abc", "in a table before the power loss");
    kv_free(db);
}

/* The sync after a blob file's failed fsync copies the values out (db_blob_rescue), then must flush the log records
 * that name the lost bytes to tables (sync_debt); here that flush fails (a full disk for tables), so kv_sync fails.
 * The copies are made, so nothing is "pending" any more, but the records are still in the log: a later kv_close
 * (round 0) or kv_checkpoint (round 1) that reports success must still leave every value after a power loss (the
 * checkpoint's log copy names the lost bytes of a file it links). Before, both trusted the copies alone, succeeded,
 * and recovery stopped at the first record whose bytes were gone, dropping it and every later batch. */
TEST(test_crash_close_or_checkpoint_after_failed_rescue_flush) {
    for (int round = 0; round < 2; round++) {
        char dir[512], dest[600];
        kv_env *env;
        kv_options o;
        kv_db *db;
        open_faulty(dir, sizeof dir, &env, &o, &db);
        CHECK(db != NULL);
        if (t_failed()) return;
        large_values_then_lost_blob_sync(env, db);
        kv_fault_env_arm(env, KV_FAULT_ENOSPC, 0, ".sst"); /* the flush of the sync's debt fails, and keeps failing */
        CHECK(kv_sync(db) != KV_OK);
        int rc;
        if (round == 0) {
            rc = kv_close(db);
        } else {
            snprintf(dest, sizeof dest, "%s/ckpt", dir);
            rc = kv_checkpoint(db, dest, NULL, NULL);
            kv_fault_env_crash(env);
            kv_close(db);
        }
        kv_fault_env_crash(env);
        kv_free(db);
        db = NULL;
        CHECK_OK(kv_fault_env_apply_crash(env));
        env->destroy(env);
        if (rc != KV_OK) continue; /* refusing to vouch is right: what the log names may be gone */
        small_options(&o);
        CHECK_OK(kv_open(round == 0 ? dir : dest, &o, &db));
        char when[128];
        snprintf(when, sizeof when, "round %d: after a %s that succeeded and a power loss", round,
                 round == 0 ? "close" : "checkpoint");
        check_large(db, "abc", when);
        CHECK_MSG(kv_contains(db, NULL, "small", 5) == 1, "%s: a small value after the lost bytes is gone", when);
        kv_free(db);
    }
}

/* n (at most 4 KiB) bytes of a large value: over small_options' blob_threshold. */
static const uint8_t *large_value(size_t n) {
    static uint8_t v[4096];
    if (!v[0]) memset(v, 'v', sizeof v);
    return n <= sizeof v ? v : NULL;
}

/* A checkpoint hard-links the file of a stream still being written; the stream's put syncs that file, and a synced
 * write after it must survive a power loss. The fault environment cut the checkpoint's link back to its size when
 * it was linked, which cut the shared file under the stream's synced bytes, and recovery dropped every batch from the
 * stream's on (found by test_torture; the environment now never cuts a file through a link). */
TEST(test_crash_checkpoint_links_a_live_stream_file) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    if (!db) return;
    const uint8_t *big = large_value(3538);
    kv_stream *s;
    CHECK_OK(kv_stream_new(db, &s));
    CHECK_OK(kv_stream_append(s, big, 3538));
    char ck[600];
    snprintf(ck, sizeof ck, "%s-ckpt", dir);
    CHECK_OK(kv_checkpoint(db, ck, NULL, NULL));
    kv_batch *b;
    CHECK_OK(kv_batch_new(&b));
    CHECK_OK(kv_batch_put_stream(b, 0, "st", 2, s));
    CHECK_OK(kv_write(db, b, 0, NULL));
    kv_batch_free(b);
    kv_stream_free(s);
    CHECK_OK(kv_put(db, "after", 5, "x", 1, KV_SYNC));
    power_loss_and_reopen(dir, env, NULL, &o, &db);
    CHECK(db != NULL);
    CHECK_EQ(kv_current_sequence(db), 2);
    kv_buf v = {0};
    CHECK_OK(kv_get(db, NULL, "st", 2, &v));
    CHECK_MEM(v.data, v.len, big, 3538);
    kv_buf_free(&v);
    kv_free(db);
    t_rmrf(ck);
}

/* A power loss after *db was closed: free it, rewind the files, reopen without the fault environment. */
static void power_loss_after_close(const char *dir, kv_env *env, kv_options *o, kv_db **db) {
    kv_free(*db);
    *db = NULL;
    CHECK_OK(kv_fault_env_apply_crash(env));
    env->destroy(env);
    small_options(o);
    CHECK_OK(kv_open(dir, o, db));
}

/* A large value's append fails with its bytes left in the shared blob file, which cannot be cut back (a stuck
 * write): the file is retired with bytes of logged batches no fsync has covered, for the next sync to cover. kv_close
 * synced only the current blob file and the log, so the log, durable, named blob bytes a power loss then took, and
 * recovery dropped that batch and every later one though the close had returned OK (found by test_torture). */
TEST(test_crash_close_syncs_a_blob_file_retired_after_a_stuck_append) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    if (!db) return;
    CHECK_OK(kv_put(db, "a", 1, large_value(2000), 2000, 0)); /* its bytes in the shared blob file, not synced */
    kv_fault_env_arm(env, KV_FAULT_WRITE_STUCK, 0, ".blob");
    CHECK(kv_put(db, "b", 1, large_value(2000), 2000, 0) != KV_OK); /* the file is retired, its cut fails */
    kv_fault_env_clear(env);
    CHECK_OK(kv_put(db, "c", 1, "x", 1, 0));
    CHECK_OK(kv_close(db));
    power_loss_after_close(dir, env, &o, &db);
    kv_buf v = {0};
    int rc = kv_get(db, NULL, "a", 1, &v);
    CHECK_MSG(rc == KV_OK && v.len == 2000, "a, written before a close that returned OK: %s", kv_strerror(rc));
    kv_buf_free(&v);
    CHECK_EQ(kv_contains(db, NULL, "c", 1), 1);
    kv_free(db);
}

/* The same with more such files than the engine lists (blob_unsynced holds 8): past that it loses track of them, and
 * every sync fails until the store is reopened. kv_close then synced the log and returned OK, though the retired files
 * were never synced: after a power loss recovery dropped the large values written before the close. A close that
 * returns OK must leave them all durable; else it must fail. */
TEST(test_crash_close_fails_when_retired_blob_files_could_not_be_listed) {
    char dir[512];
    kv_env *env;
    kv_options o;
    kv_db *db;
    open_faulty(dir, sizeof dir, &env, &o, &db);
    if (!db) return;
    enum { ROUNDS = 10 };
    for (int i = 0; i < ROUNDS; i++) {
        char k[16];
        snprintf(k, sizeof k, "a%d", i);
        CHECK_OK(kv_put(db, k, strlen(k), large_value(2000), 2000, 0)); /* into a new blob file, unsynced */
        kv_fault_env_arm(env, KV_FAULT_WRITE_STUCK, 0, ".blob");
        CHECK(kv_put(db, "b", 1, large_value(2000), 2000, 0) != KV_OK); /* that file is retired, its cut fails */
        kv_fault_env_clear(env);
    }
    int close_rc = kv_close(db);
    power_loss_after_close(dir, env, &o, &db);
    if (!db) return;
    int present = 0;
    for (int i = 0; i < ROUNDS; i++) {
        char k[16];
        snprintf(k, sizeof k, "a%d", i);
        present += kv_contains(db, NULL, k, strlen(k)) == 1;
    }
    CHECK_MSG(close_rc != KV_OK || present == ROUNDS, "kv_close returned OK, and %d of %d values written before it "
              "survived a power loss", present, ROUNDS);
    kv_free(db);
}

/* Recovery forgets the batches the batch log holds beyond the last one the store's log replayed: the feed can reach
 * the disk ahead of the log (a background flush syncs it while later batches are still unsynced in the log). Count
 * retention was counted from the batch log's newest batch before recovery forgot the newer ones, so the feed evicted
 * batches its retention keeps (found by test_torture with background threads). Here the log loses its last five
 * batches and the batch log keeps them. */
TEST(test_crash_batch_log_retention_counts_from_the_recovered_sequence) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", t_tmpdir());
    kv_options o;
    small_options(&o);
    o.memtable_bytes = 1 << 20; /* no flush: every batch stays in the log */
    o.batch_log_max_batches = 10;
    kv_db *db;
    CHECK_OK(kv_open(dir, &o, &db));
    char k[32];
    for (int i = 1; i <= 30; i++) {
        snprintf(k, sizeof k, "key%02d", i);
        CHECK_OK(kv_put(db, k, strlen(k), "v", 1, 0));
    }
    CHECK_OK(kv_close(db));
    kv_free(db);
    char log[256], path[1024];
    CHECK(t_newest_file(dir, ".log", log, sizeof log));
    snprintf(path, sizeof path, "%s/%s", dir, log);
    wal_reader *r;
    CHECK_OK(wal_reader_open(NULL, path, NULL, &r));
    const uint8_t *p;
    size_t len;
    uint64_t off = 0, cut = 0;
    for (int n = 0; wal_read(r, &p, &len, &off) == KV_OK;)
        if (++n == 26) cut = off;
    wal_reader_close(r);
    CHECK(cut > 0 && truncate(path, (off_t)cut) == 0);
    CHECK_OK(kv_open(dir, &o, &db));
    CHECK_EQ(kv_current_sequence(db), 25);
    uint64_t oldest = 0;
    CHECK_OK(kv_oldest_retained_batch(db, &oldest));
    CHECK_EQ(oldest, 16);
    CHECK(feed_holds(db, 16, 25));
    kv_free(db);
}
