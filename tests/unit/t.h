/*
 * t.h — the unit-test harness. A test file defines tests with TEST(name) { ... } and links with t.c, whose main()
 * runs them all (or those whose names contain argv[1]) and prints one TAP-style line per test:
 *     ok 3 test_name        |   not ok 4 test_name
 * followed by "# N passed, N failed". CHECK* macros record the first failure of a test (file:line and a message)
 * and return from it. Seeds: t_seed() is KVFS_SEED from the environment, or a fixed default.
 */
#ifndef KV_T_H
#define KV_T_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kv.h"

void t_register(const char *name, void (*fn)(void));
void t_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
bool t_failed(void);
/* A fresh empty directory under $TMPDIR, removed when the program ends (unless KVFS_KEEP_TMP is set). */
const char *t_tmpdir(void);
uint64_t t_seed(void);
/* A small, fast PRNG (xorshift64*) for tests. */
uint64_t t_rand(uint64_t *state);
/* Remove a directory tree. */
void t_rmrf(const char *path);
/* The greatest name in dir ending in suffix (store files are numbered: the newest) into out; false if none. */
bool t_newest_file(const char *dir, const char *suffix, char *out, size_t n);
/* The end of the last whole record of a record log (a write-ahead log may go on in zeros allocated ahead) into *end;
 * with cut, the file is also truncated there, so bytes added at its end come right after that record. */
bool t_log_end(const char *path, bool cut, uint64_t *end);

/* Hold the compaction thread of the next store opened with background threads at its start, before it looks at the
 * store (db_compact_start_hook), until t_compact_start_release, which lets it go on and waits until it has (at most
 * 10 s: a test that failed before releasing it does not hang kv_open or kv_free). Writes made meanwhile come first,
 * as a busy machine may let them. */
void t_compact_start_hold(void);
void t_compact_start_release(void);

/* A kv_problem_fn for kv_check: counts the problems in a t_problems (ctx) and keeps the first as "file at offset:
 * what". */
typedef struct t_problems {
    char first[512];
    uint64_t n;
} t_problems;
void t_on_problem(void *ctx, const char *file, uint64_t off, const char *what);

#define TEST(name)                                                                  \
    static void name(void);                                                         \
    __attribute__((constructor)) static void t_reg_##name(void) { t_register(#name, name); } \
    static void name(void)

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) { t_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); return; }    \
    } while (0)
#define CHECK_MSG(cond, ...)                                                        \
    do {                                                                            \
        if (!(cond)) { t_fail(__FILE__, __LINE__, __VA_ARGS__); return; }           \
    } while (0)
#define CHECK_EQ(a, b)                                                              \
    do {                                                                            \
        long long t_a_ = (long long)(a), t_b_ = (long long)(b);                     \
        if (t_a_ != t_b_) {                                                         \
            t_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, t_a_, t_b_); \
            return;                                                                 \
        }                                                                           \
    } while (0)
/* expr must return KV_OK. */
#define CHECK_OK(expr)                                                              \
    do {                                                                            \
        int t_rc_ = (expr);                                                         \
        if (t_rc_ != 0) {                                                           \
            t_fail(__FILE__, __LINE__, "%s = %d (%s; %s)", #expr, t_rc_, kv_strerror(t_rc_), kv_errmsg()); \
            return;                                                                 \
        }                                                                           \
    } while (0)
#define CHECK_MEM(p, n, q, m)                                                       \
    do {                                                                            \
        size_t t_n_ = (size_t)(n), t_m_ = (size_t)(m);                              \
        if (t_n_ != t_m_ || (t_n_ && memcmp((p), (q), t_n_) != 0)) {                \
            t_fail(__FILE__, __LINE__, "%s differs from %s (%zu vs %zu bytes)", #p, #q, t_n_, t_m_); \
            return;                                                                 \
        }                                                                           \
    } while (0)

#endif /* KV_T_H */
