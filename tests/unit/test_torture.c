/* test_torture.c — a randomized torture test of durability and recovery: many features in one run, power losses,
 * injected faults and reopens in between, every state checked against a model.
 *
 * One run (one seed) drives one store through epochs. An epoch opens the store through a new fault environment and
 * takes random steps, single-threaded and without background threads (so a seed replays exactly):
 *   - batches of 1..6 operations on 20 keys (16 in keyspace 0, 4 in keyspace 1): puts of small and large values
 *     (blob_threshold is 256 bytes, values up to 80 KiB), copied or not, deletes, write_at (also far past the end),
 *     truncate, moves (also across keyspaces, also of an absent key, which must fail the batch alone) and streams,
 *     one of them written over many steps; synced or not;
 *   - kv_sync, snapshots and iterators held across later steps (checked against the model as it was), manual
 *     compactions, blob GC passes, prunes of the batch log, checkpoints;
 *   - I/O faults armed for a few steps (failed, short, stuck and ENOSPC writes, failed or lost fsyncs, a dying disk,
 *     on one file type or all) and a full disk (kv_fault_env_set_disk_space);
 * and ends in a clean close, a power loss between steps, or one in the middle of a later step
 * (kv_fault_env_crash_after), sometimes followed by another power loss while the store recovers; now and then the
 * next epoch runs with the batch log off. Some options (memtable and blob-file sizes, pages, compression, level-0
 * trigger) vary with the seed. After each epoch the store is reopened (sometimes read-only first) and checked:
 *   - its sequence S is at least that of every batch acknowledged durable (a synced write, or any batch before a
 *     kv_sync, kv_compact_range, kv_prune_batch_log or clean kv_close that returned before the power went off) and
 *     at most the last applied: the model is rolled back to S, so no batch is partly applied or reordered;
 *   - every key holds exactly the model's bytes (get, stat, read_range slices, both scan directions, both
 *     keyspaces), nothing else is there, and kv_check finds no problem;
 *   - the batch log holds every batch from its oldest to S and none after, each as the model says it was written,
 *     and, unless faults may have made it give batches up, evicts only what retention and prunes evict;
 *   - a checkpoint taken during the epoch opens as the store was when it was taken.
 * The same checks run now and then on the live store. Each applied batch is told by its sequence number
 * (kv_current_sequence before and after: a write that failed in its fsync is applied but not durable; one that
 * failed before its log append is not applied; GC swaps, also a synced write's rescue of values whose blob file's
 * fsync failed, take sequences of their own). A batch whose append failed with its bytes stuck in the log is a ghost:
 * it may come back, whole, at the next recovery (or in a checkpoint, which copies the log).
 *
 * KVFS_SEED sets the first seed (fixed by default), KVFS_TORTURE_SEEDS how many seeds run (default 8),
 * KVFS_TORTURE_EPOCHS the epochs per seed (default 30). A failure prints the last steps and names its seed and
 * epoch; KVFS_SEED=<seed> KVFS_TORTURE_SEEDS=1 replays it, KVFS_TORTURE_TRACE=1 prints every step, KVFS_KEEP_TMP=1
 * keeps the store. KVFS_TORTURE_BG=1 runs with background threads: flushes, compactions and GC passes then race the
 * steps and the power losses, and a seed no longer replays exactly. Not covered here (other tests are): read
 * faults, several writers.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "env.h"
#include "kv.h"
#include "t.h"

#define NKEYS 20    /* keys 0..15 in keyspace 0, 16..19 in keyspace 1 */
#define NKS0 16
#define THRESHOLD 256
#define MAXVAL (80u << 10)
#define FEED_KEEP 48 /* batch_log_max_batches */
#define MAXHELD 2

/* ---- the model -------------------------------------------------------------------------------------------------- */

typedef struct mval {
    bool present;
    uint8_t *data;
    size_t len;
} mval;

typedef struct state {
    mval v[NKEYS];
} state;

static void mval_set(mval *m, bool present, const uint8_t *d, size_t len) {
    uint8_t *n = malloc(len ? len : 1);
    if (len) memcpy(n, d, len);
    free(m->data);
    m->data = n;
    m->len = len;
    m->present = present;
}

static void state_copy(state *dst, const state *src) {
    for (int i = 0; i < NKEYS; i++) {
        dst->v[i] = (mval){0};
        mval_set(&dst->v[i], src->v[i].present, src->v[i].data, src->v[i].len);
    }
}

static void state_free(state *s) {
    for (int i = 0; i < NKEYS; i++) {
        free(s->v[i].data);
        s->v[i] = (mval){0};
    }
}

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint8_t key_ks(int id) { return id < NKS0 ? 0 : 1; }
static size_t key_name(int id, char *buf) { return (size_t)sprintf(buf, "key-%02d", id); }

/* What the batch log must show of one key a batch touched: its state after the batch. */
typedef struct exp_op {
    int id;
    bool present;
    size_t len;
    uint64_t hash;
} exp_op;

/* A key's value before a batch changed it (to roll a batch back). */
typedef struct undo_ent {
    int id;
    mval old;
} undo_ent;

/* REC_GHOST: a batch whose log append failed with its bytes left in a log that could not be cut back
 * (KV_FAULT_WRITE_STUCK): not applied, but its sequence is used, and it may come back at the next recovery (ghost
 * holds its values); REC_ANY: a ghost after that recovery, which the batch log may or may not hold. */
enum { REC_USER = 1, REC_REMAP, REC_GHOST, REC_ANY };

/* One applied batch, by sequence number. */
typedef struct rec {
    int kind; /* 0: none */
    undo_ent *undo;
    size_t nundo;
    exp_op *ops;
    size_t nops;
    undo_ent *ghost; /* REC_GHOST: the values the batch would have given the keys it touched */
    size_t nghost;
} rec;

typedef struct ckpt {
    char path[600];
    state st;
    uint64_t seq;
} ckpt;

typedef struct held {
    kv_snapshot *snap; /* or NULL */
    kv_iter *it;       /* or NULL */
    state st;          /* the model when it was taken */
    int pos;           /* iterator: the next key index of keyspace 0 to compare (-1: not yet positioned) */
} held;

typedef struct run {
    uint64_t seed, rs;
    int epoch, step;
    char dir[560], root[512];
    kv_env *env;
    kv_db *db;
    kv_options o;
    state m;               /* the model: every applied batch */
    rec *recs;             /* by sequence; [0] unused */
    size_t nrecs, caprecs; /* nrecs - 1 = the last applied sequence */
    uint64_t durable;      /* every batch up to it must survive a power loss */
    uint64_t prune_floor;  /* the highest prune cutoff asked for */
    bool feed_off;         /* this epoch runs with the batch log off */
    bool stuck;            /* KV_FAULT_WRITE_STUCK is armed on the write-ahead logs (".log" or all files) */
    bool ghost_pending;    /* a ghost that no recovery has settled yet */
    uint64_t ghosts_from;  /* ghosts up to it were settled by a recovery */
    bool feed_latent;      /* a batch-log fsync may have lost its pages: a power loss may still take batches */
    bool faulted;          /* a fault was injected since the feed's floor was last seen: it may have given batches up */
    uint64_t feed_floor;   /* the feed's floor as seen after the last faults */
    uint64_t max_seq;      /* the highest sequence the store ever reached */
    int fault_steps;       /* steps left with a fault armed; then grace steps in which errors are still allowed */
    int grace;
    struct timespec space_grace; /* ENOSPC allowed until then (the store looks at the disk once a second) */
    bool space_low;
    held h[MAXHELD];
    kv_stream *hs;         /* a stream written over several steps, put by a later batch */
    uint8_t *hs_data;
    size_t hs_len;
    bool hs_used;          /* put by the batch being built */
    ckpt ck;
    bool have_ck;
    int nck;
    uint8_t *buf, *buf2;
    /* statistics */
    uint64_t st_batches, st_synced, st_failed, st_crashes, st_midcrash, st_opencrash, st_closes, st_gc, st_compact,
        st_ckpts, st_faults, st_notfound, st_streams, st_checks, st_feed, st_ghosts, st_ghosts_back;
} run;

static uint64_t rnd(run *r, uint64_t n) { return n ? t_rand(&r->rs) % n : 0; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(run *r, uint8_t *p, size_t n) {
    uint64_t x = t_rand(&r->rs);
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0) x = x * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (uint8_t)(x >> ((i % 8) * 8));
    }
    if (n && rnd(r, 4) == 0) memset(p, 'z', n / 2); /* some compressible bytes */
}

static size_t value_len(run *r) {
    switch (rnd(r, 10)) {
    case 0: return 0;
    case 1: case 2: case 3: return (size_t)rnd(r, THRESHOLD);
    case 4: case 5: case 6: return THRESHOLD + (size_t)rnd(r, 8000);
    case 7: case 8: return 8000 + (size_t)rnd(r, 30000);
    default: return 30000 + (size_t)rnd(r, MAXVAL - 30000);
    }
}

static rec *rec_at(run *r, uint64_t seq) {
    while (r->nrecs <= seq) {
        if (r->nrecs == r->caprecs) {
            r->caprecs = r->caprecs ? r->caprecs * 2 : 256;
            r->recs = realloc(r->recs, r->caprecs * sizeof *r->recs);
        }
        r->recs[r->nrecs++] = (rec){0};
    }
    return &r->recs[seq];
}

static uint64_t applied(const run *r) { return r->nrecs ? r->nrecs - 1 : 0; }

/* The sequence a recovery must reach: the durable one, less ghosts at its end (a ghost's sequence counts only if the
 * ghost comes back, and once a flush deleted its log it never does). */
static uint64_t must_reach(const run *r) {
    uint64_t s = r->durable;
    while (s > 0 && s < r->nrecs && r->recs[s].kind == REC_GHOST) s--;
    return s;
}

static void rec_drop_undo(rec *c) {
    for (size_t i = 0; i < c->nundo; i++) free(c->undo[i].old.data);
    free(c->undo);
    c->undo = NULL;
    c->nundo = 0;
}

static void rec_free(rec *c) {
    rec_drop_undo(c);
    for (size_t i = 0; i < c->nghost; i++) free(c->ghost[i].old.data);
    free(c->ghost);
    free(c->ops);
    *c = (rec){0};
}

/* Batches up to seq are durable: their undo records are no longer needed. */
static void set_durable(run *r, uint64_t seq) {
    if (seq <= r->durable) return;
    for (uint64_t s = r->durable + 1; s <= seq && s < r->nrecs; s++) rec_drop_undo(&r->recs[s]);
    r->durable = seq;
}

/* Roll the model back to sequence s (the batches after it were lost). */
static void rollback(run *r, uint64_t s) {
    if (applied(r) > r->max_seq) r->max_seq = applied(r);
    while (applied(r) > s) {
        rec *c = &r->recs[r->nrecs - 1];
        for (size_t i = c->nundo; i-- > 0;) {
            mval *m = &r->m.v[c->undo[i].id];
            free(m->data);
            *m = c->undo[i].old;
            c->undo[i].old = (mval){0};
        }
        rec_free(c);
        r->nrecs--;
    }
}

/* ---- a batch: the model's side ---------------------------------------------------------------------------------- */

typedef struct pending {
    undo_ent undo[NKEYS];
    int nundo;
    bool touched[NKEYS];
} pending;

static void touch(run *r, pending *p, int id) {
    if (p->touched[id]) return;
    p->touched[id] = true;
    undo_ent *u = &p->undo[p->nundo++];
    u->id = id;
    u->old = r->m.v[id];
    r->m.v[id] = (mval){0};
    mval_set(&r->m.v[id], u->old.present, u->old.data, u->old.len);
}

static void undo_pending(run *r, pending *p) {
    for (int i = p->nundo; i-- > 0;) {
        free(r->m.v[p->undo[i].id].data);
        r->m.v[p->undo[i].id] = p->undo[i].old;
    }
    p->nundo = 0;
}

/* The batch was applied as sequence seq: keep its undo and what the feed must show. */
static void commit_pending(run *r, pending *p, uint64_t seq) {
    rec *c = rec_at(r, seq);
    c->kind = REC_USER;
    c->undo = malloc(sizeof *c->undo * (size_t)(p->nundo ? p->nundo : 1));
    c->ops = malloc(sizeof *c->ops * (size_t)(p->nundo ? p->nundo : 1));
    for (int i = 0; i < p->nundo; i++) {
        c->undo[i] = p->undo[i];
        const mval *m = &r->m.v[p->undo[i].id];
        c->ops[i] = (exp_op){p->undo[i].id, m->present, m->len, m->present ? hash_bytes(m->data, m->len) : 0};
    }
    c->nundo = c->nops = (size_t)p->nundo;
    p->nundo = 0;
    if (seq <= r->durable) rec_drop_undo(c);
}

static void model_resize(mval *m, size_t n) {
    m->data = realloc(m->data, n ? n : 1);
    if (n > m->len) memset(m->data + m->len, 0, n - m->len);
    m->len = n;
    m->present = true;
}

/* ---- checks ----------------------------------------------------------------------------------------------------- */

/* The last steps of a run, printed when it fails (KVFS_TORTURE_TRACE=1 prints every step as it goes). */
#define TRACE_N 48
static char trace_ring[TRACE_N][200];
static unsigned trace_next;

static void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void trace(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(trace_ring[trace_next % TRACE_N], sizeof trace_ring[0], fmt, ap);
    va_end(ap);
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("KVFS_TORTURE_TRACE") != NULL;
    if (verbose) printf("#   %s\n", trace_ring[trace_next % TRACE_N]);
    trace_next++;
}

static void trace_dump(void) {
    printf("# the last steps:\n");
    for (unsigned i = trace_next > TRACE_N ? trace_next - TRACE_N : 0; i < trace_next; i++)
        printf("#   %s\n", trace_ring[i % TRACE_N]);
}

#define FAILF(r, ...)                                                                                  \
    do {                                                                                               \
        char m_[900];                                                                                  \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                          \
        if (!t_failed()) trace_dump();                                                                 \
        t_fail(__FILE__, __LINE__, "seed %#llx epoch %d step %d: %s", (unsigned long long)(r)->seed, \
               (r)->epoch, (r)->step, m_);                                                             \
    } while (0)

static bool check_key(run *r, kv_db *db, const kv_read_opts *base, const state *st, int id, bool ranges) {
    char k[32];
    size_t kl = key_name(id, k);
    kv_read_opts ro = base ? *base : (kv_read_opts){0};
    ro.keyspace = key_ks(id);
    const mval *m = &st->v[id];
    kv_buf v = {0};
    int rc = kv_get(db, &ro, k, kl, &v);
    if (rc != KV_OK && rc != KV_ENOTFOUND) {
        FAILF(r, "get %s: %s (%s)", k, kv_strerror(rc), kv_errmsg());
        return false;
    }
    if ((rc == KV_OK) != m->present) {
        FAILF(r, "%s is %s, the model says %s", k, rc == KV_OK ? "present" : "absent",
              m->present ? "present" : "absent");
        kv_buf_free(&v);
        return false;
    }
    if (rc == KV_OK && (v.len != m->len || (m->len && memcmp(v.data, m->data, m->len) != 0))) {
        size_t d = 0;
        while (d < v.len && d < m->len && ((uint8_t *)v.data)[d] == m->data[d]) d++;
        FAILF(r, "%s holds %llu bytes, the model %zu; first difference at %zu", k, (unsigned long long)v.len, m->len,
              d);
        kv_buf_free(&v);
        return false;
    }
    kv_buf_free(&v);
    if (!m->present || !ranges) return true;
    kv_info info;
    rc = kv_stat(db, &ro, k, kl, &info);
    if (rc != KV_OK || info.size != m->len) {
        FAILF(r, "stat %s: %s, size %llu, model %zu", k, kv_strerror(rc), (unsigned long long)info.size, m->len);
        return false;
    }
    for (int i = 0; i < 2; i++) {
        uint64_t off = rnd(r, m->len + 100);
        size_t len = (size_t)rnd(r, 70000) + 1, got = 0;
        rc = kv_read_range(db, &ro, k, kl, off, r->buf2, len, &got);
        size_t want = off >= m->len ? 0 : (m->len - off < len ? m->len - off : len);
        if (rc != KV_OK || got != want || (want && memcmp(r->buf2, m->data + off, want) != 0)) {
            FAILF(r, "read_range %s [%llu, +%zu): %s, %zu bytes (want %zu)%s", k, (unsigned long long)off, len,
                  kv_strerror(rc), got, want, rc == KV_OK && got == want ? ", different bytes" : "");
            return false;
        }
    }
    return true;
}

typedef struct scan_ctx {
    run *r;
    const state *st;
    int ks;
    int idx; /* next expected key index, counting up or down */
    bool forward, bad;
} scan_ctx;

static int next_present(const state *st, int ks, int from, bool forward) {
    int lo = ks ? NKS0 : 0, hi = ks ? NKEYS : NKS0;
    for (int i = from; forward ? i < hi : i >= lo; i += forward ? 1 : -1)
        if (st->v[i].present) return i;
    return -1;
}

static int scan_cb(void *ctx, const void *key, size_t klen, const void *val, uint64_t vlen) {
    scan_ctx *c = ctx;
    c->idx = next_present(c->st, c->ks, c->idx, c->forward);
    char k[32];
    size_t kl = c->idx >= 0 ? key_name(c->idx, k) : 0;
    if (c->idx < 0 || klen != kl || memcmp(key, k, kl) != 0) {
        FAILF(c->r, "scan (keyspace %d, %s) found %.*s where the model has %s", c->ks,
              c->forward ? "forward" : "backward", (int)klen, (const char *)key, c->idx < 0 ? "nothing" : k);
        c->bad = true;
        return 1;
    }
    const mval *m = &c->st->v[c->idx];
    if (vlen != m->len || (vlen && memcmp(val, m->data, m->len) != 0)) {
        FAILF(c->r, "scan found a wrong value of %s (%llu bytes, model %zu)", k, (unsigned long long)vlen, m->len);
        c->bad = true;
        return 1;
    }
    c->idx += c->forward ? 1 : -1;
    return 0;
}

static bool check_scans(run *r, kv_db *db, const kv_read_opts *base, const state *st) {
    for (int ks = 0; ks < 2; ks++)
        for (int f = 0; f < 2; f++) {
            kv_read_opts ro = base ? *base : (kv_read_opts){0};
            ro.keyspace = (uint8_t)ks;
            scan_ctx c = {r, st, ks, f ? (ks ? NKS0 : 0) : (ks ? NKEYS - 1 : NKS0 - 1), f, false};
            int rc = kv_range_scan(db, &ro, NULL, 0, NULL, 0, 0, f, scan_cb, &c);
            if (c.bad) return false;
            if (rc != KV_OK) {
                FAILF(r, "scan: %s (%s)", kv_strerror(rc), kv_errmsg());
                return false;
            }
            if (next_present(st, ks, c.idx, f) >= 0) {
                FAILF(r, "scan (keyspace %d, %s) missed key %d", ks, f ? "forward" : "backward",
                      next_present(st, ks, c.idx, f));
                return false;
            }
        }
    return true;
}

static bool check_integrity(run *r, kv_db *db) {
    t_problems p = {{0}, 0};
    int rc = kv_check(db, t_on_problem, NULL, &p, NULL);
    if (rc != KV_OK || p.n) {
        FAILF(r, "kv_check: %s; %llu problem(s), first: %s", kv_strerror(rc), (unsigned long long)p.n, p.first);
        return false;
    }
    return true;
}

/* One logged batch against its record. */
static bool check_logged(run *r, uint64_t seq, const kv_logged_batch *b) {
    const rec *c = seq < r->nrecs ? &r->recs[seq] : NULL;
    if (!c || !c->kind) {
        FAILF(r, "the batch log holds batch %llu, which the model does not know", (unsigned long long)seq);
        return false;
    }
    if (b->sequence != seq) {
        FAILF(r, "kv_get_batch(%llu) returned batch %llu", (unsigned long long)seq, (unsigned long long)b->sequence);
        return false;
    }
    if (c->kind == REC_ANY) return true;
    if (c->kind == REC_REMAP) { /* a blob GC swap: puts of large values, keeping their sizes */
        for (size_t i = 0; i < b->nops; i++)
            if (b->ops[i].type != KV_OP_PUT || !b->ops[i].external) {
                FAILF(r, "logged GC batch %llu holds an op that is no put of a large value", (unsigned long long)seq);
                return false;
            }
        return true;
    }
    if (b->nops != c->nops) {
        FAILF(r, "logged batch %llu has %zu ops, the model %zu", (unsigned long long)seq, b->nops, c->nops);
        return false;
    }
    for (size_t i = 0; i < c->nops; i++) {
        const exp_op *e = &c->ops[i];
        char k[32];
        size_t kl = key_name(e->id, k);
        const kv_logged_op *op = NULL;
        for (size_t j = 0; j < b->nops; j++)
            if (b->ops[j].klen == kl && memcmp(b->ops[j].key, k, kl) == 0 && b->ops[j].keyspace == key_ks(e->id))
                op = &b->ops[j];
        bool ok = op && op->type == (e->present ? KV_OP_PUT : KV_OP_DELETE);
        if (ok && e->present) {
            ok = op->vlen == e->len;
            if (ok && !op->external) ok = hash_bytes(op->val, (size_t)op->vlen) == e->hash;
        }
        if (!ok) {
            FAILF(r, "logged batch %llu: %s is %s (model: %s of %zu bytes)", (unsigned long long)seq, k,
                  !op ? "missing" : op->type == KV_OP_PUT ? "a put" : "a delete", e->present ? "put" : "delete",
                  e->len);
            return false;
        }
    }
    return true;
}

/* The batch log holds every batch from its oldest to the store's sequence, each as written. */
static bool check_feed(run *r, kv_db *db, bool exact_floor) {
    uint64_t cur = kv_current_sequence(db), oldest = 0;
    int rc = kv_oldest_retained_batch(db, &oldest);
    if (rc == KV_ENOTFOUND) {
        oldest = cur + 1;
    } else if (rc != KV_OK) {
        FAILF(r, "kv_oldest_retained_batch: %s (%s)", kv_strerror(rc), kv_errmsg());
        return false;
    }
    if (oldest == 0 || oldest > cur + 1) {
        FAILF(r, "the oldest retained batch is %llu, the sequence %llu", (unsigned long long)oldest,
              (unsigned long long)cur);
        return false;
    }
    /* without faults nothing is given up: only retention and prunes evict */
    /* retention counts from the newest batch there ever was: a power loss that takes batches back does not bring
     * back the files retention deleted meanwhile */
    uint64_t newest = r->max_seq > cur ? r->max_seq : cur;
    uint64_t keep_from = newest >= FEED_KEEP ? newest - FEED_KEEP + 1 : 1;
    if (r->prune_floor > keep_from) keep_from = r->prune_floor;
    if (r->feed_floor > keep_from) keep_from = r->feed_floor;
    if (keep_from > cur + 1) keep_from = cur + 1;
    if (exact_floor && r->faulted) {
        if (!r->feed_latent) { /* what the faults made it give up is known from now on */
            r->feed_floor = oldest;
            r->faulted = false;
        }
    } else if (exact_floor && oldest > keep_from) {
        FAILF(r, "the batch log evicted up to %llu, retention and prunes only up to %llu (sequence %llu)",
              (unsigned long long)oldest - 1, (unsigned long long)keep_from - 1, (unsigned long long)cur);
        return false;
    }
    for (uint64_t s = oldest; s <= cur; s++) {
        kv_logged_batch *b = NULL;
        rc = kv_get_batch(db, s, &b);
        if (rc != KV_OK) {
            FAILF(r, "kv_get_batch(%llu) (oldest %llu, sequence %llu): %s (%s)", (unsigned long long)s,
                  (unsigned long long)oldest, (unsigned long long)cur, kv_strerror(rc), kv_errmsg());
            return false;
        }
        bool ok = check_logged(r, s, b);
        kv_logged_batch_free(b);
        if (!ok) return false;
        r->st_feed++;
    }
    kv_logged_batch *b = NULL;
    rc = kv_get_batch(db, cur + 1, &b);
    kv_logged_batch_free(b);
    if (rc != KV_ENOTFOUND) {
        FAILF(r, "kv_get_batch(%llu) past the sequence: %s", (unsigned long long)cur + 1, kv_strerror(rc));
        return false;
    }
    if (oldest > 1) {
        rc = kv_get_batch(db, oldest - 1, &b);
        kv_logged_batch_free(b);
        if (rc != KV_EEVICTED) {
            FAILF(r, "kv_get_batch(%llu) below the oldest: %s", (unsigned long long)oldest - 1, kv_strerror(rc));
            return false;
        }
    }
    return true;
}

/* Everything of the store against the model (the live store, or one just reopened). */
static bool check_all(run *r, kv_db *db, const state *st, bool feed, bool exact_floor) {
    r->st_checks++;
    for (int id = 0; id < NKEYS; id++)
        if (!check_key(r, db, NULL, st, id, true)) return false;
    if (!check_scans(r, db, NULL, st)) return false;
    if (!check_integrity(r, db)) return false;
    return !feed || r->feed_off || check_feed(r, db, exact_floor);
}

/* ---- the store's side ------------------------------------------------------------------------------------------- */

/* Small sizes, so that flushes, compactions, blob-file rotation and paged references all happen often; a few vary
 * with the seed (the same for every open of a run). */
static void small_options(run *r, kv_options *o) {
    uint64_t v = r->seed * 0x9e3779b97f4a7c15ull;
    kv_options_init(o);
    o->memtable_bytes = (v & 1) ? 16 << 10 : 48 << 10;
    o->table_bytes = 8 << 10;
    o->level1_bytes = 32 << 10;
    o->block_bytes = 512;
    o->compression = (v >> 1) & 1;
    o->blob_threshold = THRESHOLD;
    o->blob_file_bytes = (v >> 2) & 1 ? 64 << 10 : 512 << 10;
    o->blob_page_extents = (v >> 3) & 1 ? 4 : 16;
    o->block_cache_bytes = 256 << 10;
    o->max_open_tables = 16;
    o->l0_compaction_trigger = (v >> 4) & 1 ? 2 : 4;
    o->background_threads = getenv("KVFS_TORTURE_BG") != NULL;
    o->batch_log_max_batches = FEED_KEEP;
}

static bool crashed(const run *r) { return r->env && kv_fault_env_crashed(r->env); }

/* Whether an error of a call is one the faults explain (else the test fails). */
static bool error_allowed(run *r, int rc) {
    if (rc == KV_OK) return true;
    if (crashed(r)) return true; /* after the power went off, reads of files made since find nothing */
    bool faulty = r->fault_steps > 0 || r->grace > 0;
    if (faulty && (rc == KV_EIO || rc == KV_ENOSPC)) return true;
    if (rc == KV_ENOSPC) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (r->space_low || ts.tv_sec < r->space_grace.tv_sec ||
            (ts.tv_sec == r->space_grace.tv_sec && ts.tv_nsec < r->space_grace.tv_nsec))
            return true;
    }
    return false;
}

#define CALL_OK(r, what, rc)                                                                                   \
    do {                                                                                                       \
        if (!error_allowed(r, rc)) {                                                                           \
            FAILF(r, "%s: %s (%s)", what, kv_strerror(rc), kv_errmsg());                                       \
            return;                                                                                            \
        }                                                                                                      \
    } while (0)

static void note_remaps(run *r, uint64_t before);

/* 1 when the store holds key id as *m says, 0 when not, -1 on a read error (failed with t_fail). */
static int store_holds(run *r, kv_db *db, int id, const mval *m) {
    char k[32];
    size_t kl = key_name(id, k);
    kv_read_opts ro = {.keyspace = key_ks(id)};
    kv_buf v = {0};
    int rc = kv_get(db, &ro, k, kl, &v);
    if (rc != KV_OK && rc != KV_ENOTFOUND) {
        FAILF(r, "get %s: %s (%s)", k, kv_strerror(rc), kv_errmsg());
        return -1;
    }
    bool same = (rc == KV_OK) == m->present &&
                (rc != KV_OK || (v.len == m->len && (!m->len || !memcmp(v.data, m->data, m->len))));
    kv_buf_free(&v);
    return same;
}

/* A write failed, but the sequence moved: GC swaps (a synced write's rescue of values whose blob file's fsync
 * failed), and perhaps the batch itself, its log fsync having failed. 1 if the batch was applied (as the last
 * sequence), 0 if not, -1 on failure (t_fail). Told by the values of the keys it touched, or by the batch log when
 * the batch changed none. */
static int failed_write_applied(run *r, pending *p, uint64_t last) {
    /* with the power off nothing fails but reads of files made since (phantoms): the batch met that before it was
     * written (the rescue before it failed) */
    if (crashed(r)) return 0;
    bool eq_new = true, eq_old = true;
    for (int i = 0; i < p->nundo; i++) {
        int n = store_holds(r, r->db, p->undo[i].id, &r->m.v[p->undo[i].id]);
        int o = store_holds(r, r->db, p->undo[i].id, &p->undo[i].old);
        if (n < 0 || o < 0) return -1;
        eq_new = eq_new && n;
        eq_old = eq_old && o;
    }
    if (eq_new != eq_old) return eq_new;
    if (!eq_new) {
        FAILF(r, "a failed batch is partly applied");
        return -1;
    }
    kv_logged_batch *lb = NULL;
    int rc = kv_get_batch(r->db, last, &lb);
    bool mine = rc == KV_OK && lb->nops == (size_t)p->nundo;
    for (size_t i = 0; mine && i < lb->nops; i++) mine = !lb->ops[i].external || lb->ops[i].type != KV_OP_PUT;
    kv_logged_batch_free(lb);
    return mine;
}

static void held_stream_free(run *r) {
    kv_stream_free(r->hs);
    r->hs = NULL;
    r->hs_used = false;
    free(r->hs_data);
    r->hs_data = NULL;
    r->hs_len = 0;
}

/* Start the held stream, or append to it: a large value written over many steps, while other batches, flushes,
 * compactions, GC passes and checkpoints run. */
static void step_held_stream(run *r) {
    if (!r->hs) {
        int rc = kv_stream_new(r->db, &r->hs);
        if (rc != KV_OK) {
            r->hs = NULL;
            CALL_OK(r, "kv_stream_new", rc);
            return;
        }
    }
    size_t n = 1 + (size_t)rnd(r, 30000);
    if (r->hs_len + n > MAXVAL) n = MAXVAL - r->hs_len;
    if (n == 0) return;
    fill(r, r->buf, n);
    int rc = kv_stream_append(r->hs, r->buf, n);
    trace("held stream + %zu: %s", n, kv_strerror(rc));
    if (rc != KV_OK) { /* what it holds is unknown now: give it up */
        held_stream_free(r);
        CALL_OK(r, "kv_stream_append", rc);
        return;
    }
    r->hs_data = realloc(r->hs_data, r->hs_len + n);
    memcpy(r->hs_data + r->hs_len, r->buf, n);
    r->hs_len += n;
}

/* Write one random batch. */
static void end_faults(run *r);

static void step_batch(run *r) {
    kv_batch *b;
    if (kv_batch_new(&b) != KV_OK) { FAILF(r, "kv_batch_new failed"); return; }
    pending p;
    memset(&p, 0, sizeof p);
    kv_stream *streams[6];
    int nstreams = 0;
    uint8_t *keep[6]; /* values put without a copy, freed after the write */
    int nkeep = 0;
    bool move_absent = false;
    int nops = 1 + (int)rnd(r, 6);
    int rc = KV_OK;
    char desc[160] = "";
    size_t dl = 0;
#define DESC(...) (dl < sizeof desc ? dl += (size_t)snprintf(desc + dl, sizeof desc - dl, __VA_ARGS__) : 0)
    char k[32], k2[32];
    for (int i = 0; i < nops && rc == KV_OK; i++) {
        int id = (int)rnd(r, NKEYS);
        size_t kl = key_name(id, k);
        uint8_t ks = key_ks(id);
        mval *m = &r->m.v[id];
        int what = (int)rnd(r, 100);
        if (what < 30) { /* put */
            size_t n = value_len(r);
            fill(r, r->buf, n);
            if (rnd(r, 3) == 0) {
                uint8_t *c = malloc(n ? n : 1);
                memcpy(c, r->buf, n);
                keep[nkeep++] = c;
                rc = kv_batch_put_nocopy(b, ks, k, kl, c, n);
            } else {
                rc = kv_batch_put_ks(b, ks, k, kl, r->buf, n);
            }
            touch(r, &p, id);
            mval_set(m, true, r->buf, n);
            DESC(" put%d:%zu", id, n);
        } else if (what < 42) { /* delete */
            rc = kv_batch_delete_ks(b, ks, k, kl);
            touch(r, &p, id);
            mval_set(m, false, NULL, 0);
            DESC(" del%d", id);
        } else if (what < 66) { /* write_at */
            uint64_t off = rnd(r, (m->present ? m->len : 0) + 3000);
            if (rnd(r, 8) == 0) off += 70000;
            size_t n = 1 + (size_t)rnd(r, rnd(r, 4) == 0 ? 20000 : 3000);
            if (off + n > MAXVAL + 80000) off = 0;
            fill(r, r->buf, n);
            rc = kv_batch_write_at(b, ks, k, kl, off, r->buf, n);
            touch(r, &p, id);
            if (!m->present) mval_set(m, true, NULL, 0);
            if (off + n > m->len) model_resize(m, (size_t)(off + n));
            memcpy(m->data + off, r->buf, n);
            DESC(" wat%d@%llu+%zu", id, (unsigned long long)off, n);
        } else if (what < 70) { /* zero a range (a hole punched), maybe past the end */
            uint64_t off = rnd(r, (m->present ? m->len : 0) + 3000);
            size_t n = (size_t)rnd(r, rnd(r, 4) == 0 ? 90000 : 3000);
            if (off + n > MAXVAL + 80000) off = 0;
            rc = kv_batch_zero_range(b, ks, k, kl, off, n);
            touch(r, &p, id);
            if (!m->present) mval_set(m, true, NULL, 0);
            if (n && off + n > m->len) model_resize(m, (size_t)(off + n));
            if (n) memset(m->data + off, 0, n);
            DESC(" zero%d@%llu+%zu", id, (unsigned long long)off, n);
        } else if (what < 76) { /* truncate */
            size_t len = m->present ? m->len : 0;
            uint64_t size = rnd(r, 2) ? rnd(r, len + 1) : len + rnd(r, 20000);
            if (size > MAXVAL + 80000) size = rnd(r, MAXVAL);
            rc = kv_batch_truncate(b, ks, k, kl, size);
            touch(r, &p, id);
            if (!m->present) mval_set(m, true, NULL, 0);
            model_resize(m, (size_t)size);
            DESC(" trunc%d=%llu", id, (unsigned long long)size);
        } else if (what < 82) { /* a range of a value (maybe this one's) copied over this one: shared blob records */
            int from = (int)rnd(r, NKEYS);
            size_t fl = key_name(from, k2);
            mval *fm = &r->m.v[from];
            uint64_t foff = rnd(r, (fm->present ? fm->len : 0) + 100);
            size_t n = (size_t)rnd(r, rnd(r, 3) == 0 ? 60000 : 2000);
            uint64_t off = rnd(r, (m->present ? m->len : 0) + 3000);
            if (off + n > MAXVAL + 80000) off = 0;
            rc = kv_batch_copy_range(b, key_ks(from), k2, fl, foff, ks, k, kl, off, n);
            DESC(" cp%d@%llu>%d@%llu+%zu", from, (unsigned long long)foff, id, (unsigned long long)off, n);
            if (!fm->present) {
                move_absent = true; /* the whole batch must fail */
                continue;
            }
            if (foff >= fm->len) n = 0;
            else if (n > fm->len - foff) n = fm->len - (size_t)foff;
            if (n) { /* nothing to copy leaves the destination as it is, even absent */
                uint8_t *part = malloc(n);
                memcpy(part, fm->data + foff, n); /* before the destination changes: it may be the source */
                touch(r, &p, id);
                if (!m->present) mval_set(m, true, NULL, 0);
                if (off + n > m->len) model_resize(m, (size_t)(off + n));
                memcpy(m->data + off, part, n);
                free(part);
            }
        } else if (what < 90) { /* move to another key */
            int to = (int)rnd(r, NKEYS - 1);
            if (to >= id) to++;
            size_t tl = key_name(to, k2);
            rc = kv_batch_move(b, ks, k, kl, key_ks(to), k2, tl);
            DESC(" mv%d>%d", id, to);
            if (!m->present) {
                move_absent = true; /* the whole batch must fail */
                continue;
            }
            touch(r, &p, id);
            touch(r, &p, to);
            mval_set(&r->m.v[to], true, m->data, m->len);
            mval_set(m, false, NULL, 0);
        } else if (r->hs && !r->hs_used && rnd(r, 2)) { /* the stream held across steps */
            rc = kv_batch_put_stream(b, ks, k, kl, r->hs);
            r->hs_used = true;
            touch(r, &p, id);
            mval_set(m, true, r->hs_data, r->hs_len);
            DESC(" held-stream%d:%zu", id, r->hs_len);
        } else { /* a stream */
            kv_stream *s;
            rc = kv_stream_new(r->db, &s);
            if (rc != KV_OK) break;
            streams[nstreams++] = s;
            size_t total = value_len(r), done = 0;
            fill(r, r->buf, total);
            while (done < total && rc == KV_OK) {
                size_t piece = 1 + (size_t)rnd(r, 20000);
                if (piece > total - done) piece = total - done;
                rc = kv_stream_append(s, r->buf + done, piece);
                done += piece;
            }
            if (rc != KV_OK) break;
            rc = kv_batch_put_stream(b, ks, k, kl, s);
            touch(r, &p, id);
            mval_set(m, true, r->buf, total);
            r->st_streams++;
            DESC(" stream%d:%zu", id, total);
        }
    }
    if (rc != KV_OK) { /* a stream failed (the faults): nothing was written */
        undo_pending(r, &p);
        CALL_OK(r, "stream", rc);
        goto out;
    }
    bool sync = rnd(r, 3) == 0;
    uint64_t before = kv_current_sequence(r->db), seq = 0;
    rc = kv_write(r->db, b, sync ? KV_SYNC : 0, &seq);
    bool dark = crashed(r);
    uint64_t after = kv_current_sequence(r->db);
    trace("batch%s%s: %s, seq %llu..%llu%s", desc, sync ? " SYNC" : "", kv_strerror(rc), (unsigned long long)before,
          (unsigned long long)after, dark ? " (dark)" : "");
#undef DESC
    /* A synced write first moves values out of a blob file whose fsync failed (GC swaps, sequences of their own),
     * then writes the batch: the batch, if applied, has the last sequence. */
    if (rc == KV_OK && (seq <= before || seq > after || (seq != after && !r->o.background_threads))) {
        FAILF(r, "kv_write: sequence %llu, before %llu, after %llu", (unsigned long long)seq,
              (unsigned long long)before, (unsigned long long)after);
        goto out;
    }
    if (move_absent) {
        if (rc == KV_OK) {
            FAILF(r, "a batch moving an absent key was applied (sequence %llu)", (unsigned long long)seq);
            goto out;
        }
        undo_pending(r, &p);
        if (rc == KV_ENOTFOUND) r->st_notfound++;
        else CALL_OK(r, "kv_write", rc);
        note_remaps(r, before);
        goto out;
    }
    if (rc != KV_OK) {
        r->st_failed++;
        if (!error_allowed(r, rc)) {
            FAILF(r, "kv_write: %s (%s)", kv_strerror(rc), kv_errmsg());
            goto out;
        }
        int a = after == before ? 0 : failed_write_applied(r, &p, after);
        if (a < 0) goto out;
        if (!a) {
            /* with a stuck append the last sequence may be this batch, left in the log: a ghost */
            undo_ent ghost[NKEYS];
            for (int i = 0; i < p.nundo; i++) {
                ghost[i] = (undo_ent){p.undo[i].id, r->m.v[p.undo[i].id]};
                r->m.v[p.undo[i].id] = (mval){0};
            }
            int nghost = p.nundo;
            undo_pending(r, &p);
            note_remaps(r, before);
            /* The sequences it used may all be GC swaps: a synced write's rescue commits swaps, then may fail (a
             * stuck blob write) before the batch is appended at all. The last one is then a committed swap, which
             * the batch log holds (a ghost never is in it: its append failed), not this batch's ghost. */
            bool swap_last = false;
            if (r->stuck && after > before && !t_failed()) {
                kv_logged_batch *lb = NULL;
                swap_last = kv_get_batch(r->db, after, &lb) == KV_OK;
                kv_logged_batch_free(lb);
                if (swap_last) trace("%llu is a swap, no ghost", (unsigned long long)after);
            }
            if (r->stuck && after > before && !swap_last && !t_failed()) {
                rec *c = rec_at(r, after);
                c->kind = REC_GHOST;
                c->ghost = malloc(sizeof *c->ghost * (size_t)(nghost ? nghost : 1));
                memcpy(c->ghost, ghost, sizeof *ghost * (size_t)nghost);
                c->nghost = (size_t)nghost;
                r->faulted = true; /* the batch log has a gap there, or gets it at recovery */
                r->ghost_pending = true;
                r->st_ghosts++;
                trace("ghost at %llu", (unsigned long long)after);
                /* one ghost until a recovery settles it: a second one resolved against the same values could hold
                 * either's bytes for a key both touched, depending on which came back */
                end_faults(r);
                r->grace = 12;
            } else {
                for (int i = 0; i < nghost; i++) free(ghost[i].old.data);
            }
            goto out;
        }
        seq = after; /* applied (its fsync failed): not known durable */
    }
    note_remaps(r, before);
    if (t_failed()) goto out;
    r->recs[seq].kind = 0; /* the batch's own sequence is no swap */
    commit_pending(r, &p, seq);
    r->st_batches++;
    if (rc == KV_OK && sync && !dark) {
        set_durable(r, seq);
        r->st_synced++;
    }
out:
    if (r->hs_used) held_stream_free(r); /* put (or failed): a stream is put once */
    if (p.nundo) undo_pending(r, &p);
    for (int i = 0; i < nstreams; i++) kv_stream_free(streams[i]);
    kv_batch_free(b);
    for (int i = 0; i < nkeep; i++) free(keep[i]);
}

/* Blob GC's swaps are batches of their own: they change no value. */
static void note_remaps(run *r, uint64_t before) {
    uint64_t after = kv_current_sequence(r->db);
    /* with background threads, a GC pass of theirs may have taken sequences since the model's last */
    if (after < before || before < applied(r) || (before > applied(r) && !r->o.background_threads)) {
        FAILF(r, "the sequence went from %llu to %llu (model %llu)", (unsigned long long)before,
              (unsigned long long)after, (unsigned long long)applied(r));
        return;
    }
    for (uint64_t s = applied(r) + 1; s <= after; s++) rec_at(r, s)->kind = REC_REMAP;
}

static void held_release(run *r, held *h) {
    if (h->it) kv_iter_free(h->it);
    if (h->snap) kv_snapshot_release(r->db, h->snap);
    state_free(&h->st);
    *h = (held){0};
}

/* Take a snapshot or an iterator, check one, or let one go. */
static void step_held(run *r) {
    held *h = &r->h[rnd(r, MAXHELD)];
    if (!h->snap && !h->it) {
        int rc;
        if (rnd(r, 2)) {
            rc = kv_snapshot_new(r->db, &h->snap);
        } else {
            kv_read_opts ro = {0};
            rc = kv_iter_new(r->db, &ro, &h->it);
            h->pos = -1;
        }
        if (rc != KV_OK) {
            h->snap = NULL;
            h->it = NULL;
            CALL_OK(r, "snapshot/iterator", rc);
            return;
        }
        state_copy(&h->st, &r->m);
        return;
    }
    if (rnd(r, 4) == 0 || crashed(r)) {
        held_release(r, h);
        return;
    }
    if (h->snap) {
        kv_read_opts ro = {.snapshot = h->snap};
        int id = (int)rnd(r, NKEYS);
        if (!check_key(r, r->db, &ro, &h->st, id, true)) return;
        if (rnd(r, 4) == 0) check_scans(r, r->db, &ro, &h->st);
        return;
    }
    /* walk the iterator a few keys on, comparing */
    if (h->pos < 0) {
        kv_iter_seek_first(h->it);
        h->pos = 0;
    }
    for (int n = (int)rnd(r, 5) + 1; n > 0; n--) {
        int want = next_present(&h->st, 0, h->pos, true);
        if (!kv_iter_valid(h->it)) {
            int rc = kv_iter_status(h->it);
            if (rc != KV_OK) { FAILF(r, "held iterator: %s", kv_strerror(rc)); return; }
            if (want >= 0) { FAILF(r, "held iterator ended before key %d", want); return; }
            held_release(r, h);
            return;
        }
        size_t kl;
        const void *key = kv_iter_key(h->it, &kl);
        char k[32];
        size_t wl = want >= 0 ? key_name(want, k) : 0;
        if (want < 0 || kl != wl || memcmp(key, k, kl) != 0) {
            FAILF(r, "held iterator at %.*s, the model at key %d", (int)kl, (const char *)key, want);
            return;
        }
        const void *val;
        uint64_t vlen;
        int rc = kv_iter_value(h->it, &val, &vlen);
        const mval *m = &h->st.v[want];
        if (rc != KV_OK || vlen != m->len || (vlen && memcmp(val, m->data, m->len) != 0)) {
            FAILF(r, "held iterator: value of %s: %s, %llu bytes (model %zu)", k, kv_strerror(rc),
                  (unsigned long long)vlen, m->len);
            return;
        }
        h->pos = want + 1;
        kv_iter_next(h->it);
    }
}

static void release_all_held(run *r) {
    for (int i = 0; i < MAXHELD; i++)
        if (r->h[i].snap || r->h[i].it) held_release(r, &r->h[i]);
}

static void step_checkpoint(run *r) {
    if (r->have_ck) return;
    char path[600];
    snprintf(path, sizeof path, "%s/ckpt-%d", r->root, ++r->nck);
    uint64_t before = kv_current_sequence(r->db);
    int rc = kv_checkpoint(r->db, path, NULL, NULL);
    trace("checkpoint %d: %s%s", r->nck, kv_strerror(rc), crashed(r) ? " (dark)" : "");
    note_remaps(r, before);
    if (rc != KV_OK) {
        CALL_OK(r, "kv_checkpoint", rc);
        return;
    }
    if (crashed(r)) return;
    r->st_ckpts++;
    trace("checkpoint at %llu", (unsigned long long)applied(r));
    r->have_ck = true;
    snprintf(r->ck.path, sizeof r->ck.path, "%s", path);
    state_copy(&r->ck.st, &r->m);
    r->ck.seq = applied(r);
}

static bool resolve_ghosts(run *r, kv_db *db, state *st, uint64_t s, bool settle);

/* The checkpoint of the epoch, after it ended: it opens as the store was. */
static void verify_checkpoint(run *r) {
    if (!r->have_ck) return;
    kv_options o;
    small_options(r, &o);
    kv_db *db;
    int rc = kv_open(r->ck.path, &o, &db);
    if (rc != KV_OK) {
        FAILF(r, "open the checkpoint %s: %s (%s)", r->ck.path, kv_strerror(rc), kv_errmsg());
    } else {
        if (kv_current_sequence(db) != r->ck.seq)
            FAILF(r, "the checkpoint's sequence is %llu, the store's was %llu",
                  (unsigned long long)kv_current_sequence(db), (unsigned long long)r->ck.seq);
        else if (resolve_ghosts(r, db, &r->ck.st, r->ck.seq, false)) /* it copied the logs, ghosts and all */
            check_all(r, db, &r->ck.st, false, false);
        kv_free(db);
    }
    t_rmrf(r->ck.path);
    state_free(&r->ck.st);
    r->have_ck = false;
}

/* KV_FAULT_WRITE_STUCK last: it is left out while a ghost waits for a recovery */
static const kv_fault_kind fault_kinds[] = {KV_FAULT_WRITE_EIO, KV_FAULT_WRITE_SHORT, KV_FAULT_ENOSPC,
                                            KV_FAULT_SYNC_EIO,  KV_FAULT_SYNC_LOST,   KV_FAULT_DISK_EIO,
                                            KV_FAULT_WRITE_STUCK};
static const char *fault_files[] = {".log", ".sst", ".blob", "MANIFEST", "BATCHLOG", NULL};

static void step_fault(run *r) {
    if (r->fault_steps > 0 || r->space_low) return;
    r->faulted = true;
    r->st_faults++;
    if (rnd(r, 4) == 0) { /* a full disk: writes that add data stop, removals go on */
        kv_fault_env_set_disk_space(r->env, (uint64_t)rnd(r, 64 << 10), 1ull << 30);
        r->space_low = true;
        r->fault_steps = 2 + (int)rnd(r, 10);
        trace("full disk for %d steps", r->fault_steps);
        return;
    }
    kv_fault_kind kind = fault_kinds[rnd(r, r->ghost_pending ? 6 : 7)];
    const char *f = fault_files[rnd(r, 6)];
    /* only a stuck append to a write-ahead log leaves a batch's record behind (a ghost): stuck MANIFEST, table,
     * blob or batch-log writes fail an operation without one */
    r->stuck = kind == KV_FAULT_WRITE_STUCK && (!f || strcmp(f, ".log") == 0);
    uint64_t after = rnd(r, 8);
    kv_fault_env_arm(r->env, kind, after, f);
    /* The batch log retries a failed fsync; after a lost one (Linux marks the pages clean) the retry succeeds
     * without writing them, and the next power loss takes those batches from the feed, which then counts them
     * evicted (the store keeps them: they are in its tables). Known at the reopen after it. */
    if (kind == KV_FAULT_SYNC_LOST && (!f || strcmp(f, "BATCHLOG") == 0)) r->feed_latent = true;
    r->fault_steps = 1 + (int)rnd(r, 6);
    trace("fault %d on %s after %llu, for %d steps", (int)kind, f ? f : "all", (unsigned long long)after,
          r->fault_steps);
}

static void end_faults(run *r) {
    if (r->fault_steps) trace("faults cleared");
    kv_fault_env_clear(r->env);
    r->stuck = false;
    if (r->space_low) {
        kv_fault_env_set_disk_space(r->env, UINT64_MAX, UINT64_MAX);
        r->space_low = false;
        clock_gettime(CLOCK_MONOTONIC, &r->space_grace);
        r->space_grace.tv_sec += 2;
    }
    r->fault_steps = 0;
}

static void tick_faults(run *r) {
    if (r->fault_steps > 0 && --r->fault_steps == 0) {
        end_faults(r);
        r->grace = 12;
    } else if (r->fault_steps == 0 && r->grace > 0) {
        r->grace--;
    }
}

static void step(run *r) {
    int what = (int)rnd(r, 100);
    int rc;
    if (what < 55) {
        step_batch(r);
    } else if (what < 62) {
        uint64_t before = kv_current_sequence(r->db);
        rc = kv_sync(r->db);
        trace("kv_sync: %s%s", kv_strerror(rc), crashed(r) ? " (dark)" : "");
        CALL_OK(r, "kv_sync", rc);
        note_remaps(r, before);
        if (rc == KV_OK && !crashed(r)) set_durable(r, applied(r));
    } else if (what < 72) {
        step_held(r);
    } else if (what < 75) {
        uint64_t before = kv_current_sequence(r->db);
        rc = kv_compact_range(r->db, NULL, 0, NULL, 0, NULL, NULL);
        trace("compact_range: %s%s", kv_strerror(rc), crashed(r) ? " (dark)" : "");
        CALL_OK(r, "kv_compact_range", rc);
        note_remaps(r, before);
        r->st_compact++;
        /* everything is in tables, whose logs are gone: durable */
        if (rc == KV_OK && !crashed(r)) set_durable(r, applied(r));
    } else if (what < 79) {
        uint64_t before = kv_current_sequence(r->db);
        static const double ratios[] = {0.0, 0.3, 0.6, 0.95};
        rc = kv_blob_gc(r->db, ratios[rnd(r, 4)]);
        trace("blob_gc: %s, seq %llu..%llu", kv_strerror(rc), (unsigned long long)before,
              (unsigned long long)kv_current_sequence(r->db));
        CALL_OK(r, "kv_blob_gc", rc);
        note_remaps(r, before);
        r->st_gc++;
    } else if (what < 82) {
        uint64_t cur = kv_current_sequence(r->db);
        uint64_t cutoff = cur + 1 - rnd(r, cur < 30 ? cur + 1 : 30); /* up to the next sequence */
        uint64_t before = kv_current_sequence(r->db);
        rc = kv_prune_batch_log(r->db, cutoff);
        trace("prune %llu: %s", (unsigned long long)cutoff, kv_strerror(rc));
        CALL_OK(r, "kv_prune_batch_log", rc);
        note_remaps(r, before); /* its sync may move values out of a blob file whose fsync failed */
        /* it made the batches below its floor durable */
        if (rc == KV_OK && !crashed(r) && cutoff > r->prune_floor)
            set_durable(r, cutoff > before ? before : cutoff - 1);
        if (rc == KV_OK && cutoff > r->prune_floor) r->prune_floor = cutoff;
    } else if (what < 84) {
        step_checkpoint(r);
    } else if (what < 87) {
        step_fault(r);
    } else if (what < 90) {
        if (!crashed(r) && r->fault_steps == 0 && r->grace == 0) check_all(r, r->db, &r->m, true, true);
    } else if (what < 93) {
        step_held_stream(r);
    } else {
        step_batch(r);
    }
    tick_faults(r);
}

/* The ghosts up to sequence s after a recovery, in st (the model rolled back to s): each came back whole or not at
 * all. Keys a later batch wrote hold that batch's value either way; a GC swap since may have put a key's value back
 * as the model has it. With settle, st is the run's model: a ghost that came back is applied to it for good. */
static bool resolve_ghosts(run *r, kv_db *db, state *st, uint64_t s, bool settle) {
    for (uint64_t g = r->ghosts_from + 1; g <= s && g < r->nrecs; g++) {
        rec *c = &r->recs[g];
        if (c->kind != REC_GHOST) continue;
        bool later[NKEYS] = {false}, remap_after = false;
        for (uint64_t q = g + 1; q <= s; q++) {
            remap_after = remap_after || r->recs[q].kind == REC_REMAP;
            for (size_t i = 0; i < r->recs[q].nops; i++) later[r->recs[q].ops[i].id] = true;
        }
        int h[NKEYS], m[NKEYS];
        bool back = false;
        for (size_t i = 0; i < c->nghost; i++) {
            int id = c->ghost[i].id;
            if (later[id]) continue;
            h[i] = store_holds(r, db, id, &c->ghost[i].old);
            m[i] = store_holds(r, db, id, &st->v[id]);
            if (h[i] < 0 || m[i] < 0) return false;
            back = back || (h[i] && !m[i]);
        }
        for (size_t i = 0; i < c->nghost; i++) {
            int id = c->ghost[i].id;
            if (later[id]) continue;
            bool ok = back ? h[i] || (m[i] && remap_after) : m[i];
            if (!ok) {
                FAILF(r, "the ghost batch %llu came back %s: key %d holds %s", (unsigned long long)g,
                      back ? "(another key holds its value)" : "nowhere else", id,
                      h[i] ? "its value" : m[i] ? "the value before it" : "neither its value nor the one before");
                return false;
            }
            if (back && h[i]) mval_set(&st->v[id], c->ghost[i].old.present, c->ghost[i].old.data,
                                       c->ghost[i].old.len);
        }
        if (settle) {
            trace("ghost %llu %s", (unsigned long long)g, back ? "came back" : "did not come back");
            r->st_ghosts_back += back;
            c->kind = REC_ANY;
        }
    }
    if (settle) {
        r->ghosts_from = s;
        r->ghost_pending = false;
    }
    return true;
}

/* Open the store after an epoch; optionally through a fault environment that loses power while it recovers. */
static bool reopen_and_check(run *r) {
    kv_options o;
    small_options(r, &o);
    if (rnd(r, 4) == 0) { /* read-only first: it must see the same and change nothing */
        o.read_only = true;
        kv_db *db;
        int rc = kv_open(r->dir, &o, &db);
        if (rc != KV_OK) {
            FAILF(r, "read-only open: %s (%s)", kv_strerror(rc), kv_errmsg());
            return false;
        }
        uint64_t s = kv_current_sequence(db);
        bool ok = true;
        if (s < must_reach(r) || s > applied(r)) {
            FAILF(r, "read-only open: sequence %llu, durable %llu, applied %llu", (unsigned long long)s,
                  (unsigned long long)r->durable, (unsigned long long)applied(r));
            ok = false;
        }
        state st;
        if (ok) {
            /* compare against the model rolled back to s, without losing the later batches yet */
            state_copy(&st, &r->m);
            for (uint64_t q = applied(r); q > s; q--) {
                rec *c = &r->recs[q];
                for (size_t i = c->nundo; i-- > 0;) mval_set(&st.v[c->undo[i].id], c->undo[i].old.present,
                                                            c->undo[i].old.data, c->undo[i].old.len);
            }
            ok = resolve_ghosts(r, db, &st, s, false);
            for (int id = 0; id < NKEYS && ok; id++) ok = check_key(r, db, NULL, &st, id, true);
            if (ok) ok = check_scans(r, db, NULL, &st);
            state_free(&st);
        }
        kv_free(db);
        if (!ok) return false;
    }
    if (rnd(r, 5) == 0) { /* a power loss while recovering: what survived before must survive again */
        kv_env *env = kv_fault_env_new(kv_env_posix());
        kv_fault_env_set_reorder(env, rnd(r, 2));
        kv_fault_env_crash_after(env, rnd(r, 40));
        kv_options fo;
        small_options(r, &fo);
        fo.env = env;
        kv_db *db;
        if (kv_open(r->dir, &fo, &db) == KV_OK) {
            kv_fault_env_crash(env);
            kv_free(db);
        }
        int rc = kv_fault_env_apply_crash(env);
        env->destroy(env);
        if (rc != KV_OK) {
            FAILF(r, "apply_crash: %s", kv_strerror(rc));
            return false;
        }
        r->st_opencrash++;
        trace("power loss while recovering");
    }
    r->env = kv_fault_env_new(kv_env_posix());
    small_options(r, &r->o);
    r->o.env = r->env;
    /* now and then an epoch without the batch log: the batches it misses are a gap, evicted once it is back on */
    r->feed_off = rnd(r, 10) == 0;
    if (r->feed_off) {
        r->o.batch_log_max_batches = 0;
        r->faulted = true;
        trace("the batch log is off");
    }
    int rc = kv_open(r->dir, &r->o, &r->db);
    if (rc != KV_OK) {
        FAILF(r, "reopen: %s (%s)", kv_strerror(rc), kv_errmsg());
        r->db = NULL;
        return false;
    }
    r->feed_latent = false;
    uint64_t s = kv_current_sequence(r->db);
    trace("reopened at %llu (durable %llu, applied %llu)", (unsigned long long)s, (unsigned long long)r->durable,
          (unsigned long long)applied(r));
    if (s < must_reach(r) || s > applied(r)) {
        FAILF(r, "reopened at sequence %llu: batch %llu was durable, %llu the last applied", (unsigned long long)s,
              (unsigned long long)r->durable, (unsigned long long)applied(r));
        return false;
    }
    rollback(r, s);
    if (!resolve_ghosts(r, r->db, &r->m, s, true)) return false;
    set_durable(r, s);
    if (r->prune_floor > s + 1) r->prune_floor = s + 1;
    if (r->feed_floor > s + 1) r->feed_floor = s + 1;
    return check_all(r, r->db, &r->m, true, true);
}

/* One epoch: steps, then a clean close or a power loss. */
static void epoch(run *r) {
    kv_fault_env_set_reorder(r->env, rnd(r, 2));
    int steps = 40 + (int)rnd(r, 120);
    int end = (int)rnd(r, 10); /* 0-2: clean close; 3-6: power loss between steps; 7-9: in the middle of one */
    int crash_at = end >= 7 ? (int)rnd(r, (uint64_t)steps) : -1;
    for (r->step = 0; r->step < steps && !t_failed(); r->step++) {
        if (r->step == crash_at) {
            uint64_t n = rnd(r, 300);
            kv_fault_env_crash_after(r->env, n);
            trace("power off after %llu more changes", (unsigned long long)n);
            r->st_midcrash++;
        }
        step(r);
        if (crash_at >= 0 && r->step > crash_at + 8) break; /* a few steps into the dark at most */
    }
    if (t_failed()) return;
    end_faults(r);
    r->grace = 0;
    if (end <= 2 && !crashed(r)) {
        release_all_held(r);
        if (r->hs) held_stream_free(r); /* never put: its file is cut back and deleted */
        uint64_t before = kv_current_sequence(r->db);
        int rc = kv_close(r->db);
        note_remaps(r, before);
        trace("close: %s%s", kv_strerror(rc), crashed(r) ? " (dark)" : "");
        if (rc == KV_OK && !crashed(r)) set_durable(r, applied(r));
        else if (rc != KV_OK && !crashed(r)) FAILF(r, "kv_close: %s (%s)", kv_strerror(rc), kv_errmsg());
        kv_free(r->db);
        r->st_closes++;
    } else {
        trace("power loss%s", crashed(r) ? " (already dark)" : "");
        kv_fault_env_crash(r->env);
        release_all_held(r);
        if (r->hs) held_stream_free(r); /* in the dark: its file keeps what was synced of it */
        uint64_t before = kv_current_sequence(r->db);
        kv_close(r->db); /* its errors do not matter: the power is off */
        note_remaps(r, before);
        kv_free(r->db);
        r->st_crashes++;
    }
    r->db = NULL;
    int rc = kv_fault_env_apply_crash(r->env);
    r->env->destroy(r->env);
    r->env = NULL;
    if (rc != KV_OK) { FAILF(r, "apply_crash: %s", kv_strerror(rc)); return; }
    if (t_failed()) return;
    verify_checkpoint(r);
    if (t_failed()) return;
    reopen_and_check(r);
}

static void torture_seed(uint64_t seed, int epochs, run *tot) {
    run *r = calloc(1, sizeof *r);
    r->seed = seed;
    r->rs = seed ? seed : 1;
    r->buf = malloc(MAXVAL + 200000);
    r->buf2 = malloc(80000);
    snprintf(r->root, sizeof r->root, "%s", t_tmpdir());
    snprintf(r->dir, sizeof r->dir, "%s/db", r->root);
    r->env = kv_fault_env_new(kv_env_posix());
    small_options(r, &r->o);
    r->o.env = r->env;
    int rc = kv_open(r->dir, &r->o, &r->db);
    if (rc != KV_OK) {
        FAILF(r, "open: %s", kv_strerror(rc));
    } else {
        for (r->epoch = 0; r->epoch < epochs && !t_failed(); r->epoch++) epoch(r);
    }
    if (r->db) {
        release_all_held(r);
        if (r->hs) held_stream_free(r);
        kv_free(r->db);
    }
    if (r->env) r->env->destroy(r->env);
    if (r->have_ck) state_free(&r->ck.st);
    for (size_t i = 0; i < r->nrecs; i++) rec_free(&r->recs[i]);
    free(r->recs);
    state_free(&r->m);
    free(r->buf);
    free(r->buf2);
    if (!getenv("KVFS_KEEP_TMP")) t_rmrf(r->root);
    tot->st_batches += r->st_batches, tot->st_synced += r->st_synced, tot->st_failed += r->st_failed;
    tot->st_crashes += r->st_crashes, tot->st_midcrash += r->st_midcrash, tot->st_opencrash += r->st_opencrash;
    tot->st_closes += r->st_closes, tot->st_gc += r->st_gc, tot->st_compact += r->st_compact;
    tot->st_ckpts += r->st_ckpts, tot->st_faults += r->st_faults, tot->st_notfound += r->st_notfound;
    tot->st_streams += r->st_streams, tot->st_checks += r->st_checks, tot->st_feed += r->st_feed;
    tot->st_ghosts += r->st_ghosts, tot->st_ghosts_back += r->st_ghosts_back;
    free(r);
}

static int env_int(const char *name, int def) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : def;
}

TEST(test_torture) {
    int seeds = env_int("KVFS_TORTURE_SEEDS", 8), epochs = env_int("KVFS_TORTURE_EPOCHS", 30);
    uint64_t seed = t_seed();
    run tot = {0};
    double t0 = now_s();
    for (int i = 0; i < seeds && !t_failed(); i++) {
        torture_seed(seed, epochs, &tot);
        seed = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    }
    printf("# %d seeds x %d epochs in %.1f s: %llu batches applied (%llu acknowledged synced, %llu failed writes, "
           "%llu moves of absent keys refused, %llu streams), %llu power losses (%llu in the middle of a step, %llu "
           "more while recovering), %llu clean closes, %llu faults, %llu GC passes, %llu compactions, %llu "
           "checkpoints verified, %llu full checks, %llu logged batches checked, %llu ghosts (%llu came back)\n",
           seeds, epochs, now_s() - t0, (unsigned long long)tot.st_batches, (unsigned long long)tot.st_synced,
           (unsigned long long)tot.st_failed, (unsigned long long)tot.st_notfound, (unsigned long long)tot.st_streams,
           (unsigned long long)tot.st_crashes, (unsigned long long)tot.st_midcrash,
           (unsigned long long)tot.st_opencrash, (unsigned long long)tot.st_closes, (unsigned long long)tot.st_faults,
           (unsigned long long)tot.st_gc, (unsigned long long)tot.st_compact, (unsigned long long)tot.st_ckpts,
           (unsigned long long)tot.st_checks, (unsigned long long)tot.st_feed, (unsigned long long)tot.st_ghosts,
           (unsigned long long)tot.st_ghosts_back);
    if (t_failed() || seeds * epochs < 200) return;
    /* the default run meets every case */
    CHECK(tot.st_crashes > 0 && tot.st_midcrash > 0 && tot.st_opencrash > 0 && tot.st_closes > 0);
    CHECK(tot.st_failed > 0 && tot.st_notfound > 0 && tot.st_ghosts > 0);
    CHECK(tot.st_ckpts > 0 && tot.st_gc > 0 && tot.st_compact > 0 && tot.st_streams > 0 && tot.st_feed > 0);
}

/* Seeds that once failed, replayed on every run: each for the epochs up to the one that failed. */
static const struct {
    uint64_t seed;
    int epochs;
} fixed_seeds[] = {
    /* a synced write failed after its rescue's GC swaps took sequences (a MANIFEST write stuck): the model took the
     * last swap, which the batch log rightly holds, for the batch's ghost */
    {0x9f4d794a2ec8d399ull, 1},
};

TEST(test_torture_fixed_seeds) {
    run tot = {0};
    for (size_t i = 0; i < sizeof fixed_seeds / sizeof fixed_seeds[0] && !t_failed(); i++)
        torture_seed(fixed_seeds[i].seed, fixed_seeds[i].epochs, &tot);
}
