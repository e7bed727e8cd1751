/*
 * env_fault.c — a kv_env for tests that wraps another one, injects I/O faults and simulates a power loss (env.h).
 *
 * Invariants
 *  - With no fault armed and no crash pending it forwards every call to the base environment unchanged; the only
 *    extra work is bookkeeping under one mutex (fe->mu). It is held across the base call for namespace changes (so
 *    the undo log matches the disk) but never across read_at, append or sync of a handle, so readers and writers
 *    of different files still run in parallel.
 *  - Durability is tracked per path, not per handle, so every handle of one path agrees:
 *      . a file state (fstate) exists for every file created, opened for append, truncated, linked or renamed
 *        through this environment; `synced` is the length known to be durable: its size when a sync of it last
 *        began (0 for a file created or truncated-to-empty since), or its size when first opened for append;
 *      . an undo log lists the namespace changes (creation, rename, removal, link) not yet made durable by a
 *        sync_dir of the directory holding the (new) name; sync_dir(d) drops the entries of d.
 *  - After kv_fault_env_crash() no call changes a real file: writes, syncs, creations, renames, removals,
 *    truncations and directory changes return KV_OK and do nothing. Reads, lookups, close and locks still work, so
 *    the store can be closed and freed. kv_fault_env_crash_after(n) does the same from the (n+1)th change to the disk
 *    on (going_dark counts them), so a deterministic test can lose power in the middle of any operation.
 *    kv_fault_env_apply_crash() then undoes the undo log newest first, cuts every
 *    tracked file to `synced` bytes and starts a fresh epoch in which everything on disk counts as durable.
 *
 * What a power loss rewinds (and what it does not):
 *  - appended data past the last sync of a file: cut (a file never synced since creation ends up empty);
 *  - a file written by offset (open_overwrite): cut to the end of what was written when its last sync began, then
 *    filled with zeros up to the size it had then (space allocated ahead and synced stays, reading as zeros); with
 *    kv_fault_env_set_reorder, its unsynced bytes are kept instead, but for those in the page of the first of them,
 *    zeroed;
 *  - a creation (open_write / open_append of a missing file, link): the name is removed;
 *  - a hard link that stays: its data is that of the file it was linked from, cut (if at all) as that file is, never
 *    through the link (durability is per path here, but a link shares its inode: cutting the link back to its size
 *    when it was made used to cut bytes that a later sync of the source had made durable);
 *  - a rename: moved back when the source name is free again, and a file it replaced is rewritten with its durable
 *    content, if that content was at most FAULT_SAVE_MAX bytes and the FAULT_SAVE_TOTAL budget (memory held until
 *    a sync_dir or the crash) allows (otherwise the rename is not undone at all);
 *  - a removal: the file is recreated with its durable content, within the same limits (else it stays gone);
 *  - a truncation: cutting is taken as immediately durable, extending is not (the durable length never grows);
 *  - a file whose sync failed by KV_FAULT_SYNC_LOST: everything after what was durable before that sync, even if
 *    later syncs of it succeed (Linux may mark pages whose writeback failed clean, and the next fsync then succeeds
 *    without writing them; the model is stricter and keeps nothing more of the file until it is recreated). The
 *    other sync faults leave a later successful sync to make everything durable;
 *  - files that already existed when first seen are taken to be durable as they were; directories created or
 *    removed (mkdir/rmdir) are not rewound; a rename is made durable by syncing the directory of its target only.
 *  Paths are compared as spelled, after folding repeated and trailing slashes, so callers must name a directory the
 *  same way in sync_dir as in the file paths inside it (build paths as "<dir>/<name>" with that same <dir>).
 */
#include "env.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kv.h"

/* Content kept in memory to restore a replaced or removed file: per file, and in total until the next crash. */
#define FAULT_SAVE_MAX ((size_t)16 << 20)
#define FAULT_SAVE_TOTAL ((size_t)64 << 20)

/* A handle of this environment. inner is the base's handle (NULL for a file "created" after the crash). */
struct kv_file {
    kv_file *inner;
    uint64_t phantom; /* bytes appended after the crash, which went nowhere */
    char path[];
};

typedef struct fstate {
    char *path;
    uint64_t synced;
    bool fresh;    /* created (under this or an earlier name) since the last sync_dir: a power loss removes it */
    bool poisoned; /* a sync of it failed: later syncs no longer make anything durable (see fe_sync) */
    bool by_offset;        /* opened with open_overwrite: its size may run ahead of its data (allocate) */
    uint64_t written;      /* by_offset: the end of the data written by write_at (the furthest offset + length) */
    uint64_t alloc_synced; /* by_offset: the file's size when its last successful sync began */
    bool link;             /* a hard link made by link(): it shares its data with the file it was linked from, whose
                            * state says what of it is durable (a sync through that name covers this one too); a
                            * power loss never cuts it, which would cut that file */
} fstate;

enum { U_CREATE, U_RENAME, U_REMOVE };

typedef struct undo {
    int type;
    char *a;        /* CREATE/REMOVE: the path; RENAME: the source */
    char *b;        /* RENAME: the target */
    char *dir;      /* the directory whose sync_dir makes this durable */
    uint8_t *data;  /* REMOVE: the file's durable content; RENAME: the replaced target's (has_data) */
    size_t len;
    bool has_data;
} undo;

typedef struct fault_env {
    kv_env env; /* first, so a kv_env * is a fault_env * */
    kv_env *base;
    pthread_mutex_t mu;
    /* the armed fault */
    kv_fault_kind kind;
    uint64_t after;
    char *substr;
    uint64_t failures;
    /* power loss */
    bool crashed;
    uint64_t crash_in; /* kv_fault_env_crash_after: changes to the disk left before the crash; UINT64_MAX: none */
    bool reorder; /* kv_fault_env_set_reorder */
    uint64_t space_avail, space_total; /* kv_fault_env_set_disk_space; UINT64_MAX: the base's */
    uint64_t disk_free; /* KV_FAULT_DISK_FULL: the bytes removals and truncations gave back, not yet taken */
    fstate **st;
    size_t nst, capst;
    undo *log;
    size_t nlog, caplog;
    size_t saved_bytes;
} fault_env;

/* The operation classes faults apply to. */
enum { OP_APPEND, OP_CREATE, OP_SYNC, OP_READ, OP_TRUNCATE };

static void fault_destroy(kv_env *env);

static fault_env *FE(kv_env *env) { return (fault_env *)env; }

/* ---- Paths ------------------------------------------------------------------------------------------------------ */

/* Copy of path with runs of '/' folded and a trailing '/' dropped ("a//b/" -> "a/b"). */
static char *norm_path(const char *path) {
    size_t n = strlen(path);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (path[i] == '/' && j > 0 && s[j - 1] == '/') continue;
        s[j++] = path[i];
    }
    if (j > 1 && s[j - 1] == '/') j--;
    s[j] = 0;
    return s;
}

/* The normalized directory part of path: "a/b/c" -> "a/b", "c" -> ".", "/c" -> "/". */
static char *dir_of(const char *path) {
    char *s = norm_path(path);
    if (!s) return NULL;
    char *slash = strrchr(s, '/');
    if (!slash) {
        free(s);
        return strdup(".");
    }
    if (slash == s) slash[1] = 0;
    else *slash = 0;
    return s;
}

/* ---- File states (callers hold fe->mu); fstate.path is stored normalized --------------------------------------- */

static fstate *st_find(fault_env *fe, const char *path) {
    char *p = norm_path(path);
    if (!p) return NULL;
    fstate *found = NULL;
    for (size_t i = 0; i < fe->nst && !found; i++)
        if (strcmp(fe->st[i]->path, p) == 0) found = fe->st[i];
    free(p);
    return found;
}

static fstate *st_add(fault_env *fe, const char *path, uint64_t synced, bool fresh) {
    fstate *s = st_find(fe, path);
    if (s) {
        s->synced = synced;
        s->fresh = s->fresh || fresh;
        s->poisoned = false;
        s->by_offset = false;
        s->link = false;
        s->written = s->alloc_synced = 0;
        return s;
    }
    if (fe->nst == fe->capst) {
        size_t cap = fe->capst ? fe->capst * 2 : 32;
        fstate **v = realloc(fe->st, cap * sizeof *v);
        if (!v) return NULL;
        fe->st = v;
        fe->capst = cap;
    }
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->path = norm_path(path);
    if (!s->path) {
        free(s);
        return NULL;
    }
    s->synced = synced;
    s->fresh = fresh;
    fe->st[fe->nst++] = s;
    return s;
}

static void st_drop(fault_env *fe, const char *path) {
    fstate *s = st_find(fe, path);
    if (!s) return;
    for (size_t i = 0; i < fe->nst; i++) {
        if (fe->st[i] != s) continue;
        fe->st[i] = fe->st[--fe->nst];
        break;
    }
    free(s->path);
    free(s);
}

/* Give the state of `from` the name `to` (a rename); any state `to` had is dropped first. */
static int st_move(fault_env *fe, const char *from, const char *to) {
    st_drop(fe, to);
    fstate *s = st_find(fe, from);
    if (!s) return KV_OK;
    char *p = norm_path(to);
    if (!p) return kv_set_error(KV_ENOMEM, "fault env: out of memory");
    free(s->path);
    s->path = p;
    return KV_OK;
}

/* ---- Undo log (callers hold fe->mu) --------------------------------------------------------------------------- */

static void undo_free(fault_env *fe, undo *u) {
    free(u->a);
    free(u->b);
    free(u->dir);
    if (u->has_data) fe->saved_bytes -= u->len;
    free(u->data);
    memset(u, 0, sizeof *u);
}

/* Append an entry; takes ownership of data (also on failure). */
static int undo_push(fault_env *fe, int type, const char *a, const char *b, uint8_t *data, size_t len, bool has_data) {
    if (fe->nlog == fe->caplog) {
        size_t cap = fe->caplog ? fe->caplog * 2 : 32;
        undo *v = realloc(fe->log, cap * sizeof *v);
        if (!v) {
            free(data);
            return kv_set_error(KV_ENOMEM, "fault env: out of memory");
        }
        fe->log = v;
        fe->caplog = cap;
    }
    undo u = {.type = type, .data = data, .len = len, .has_data = has_data};
    u.a = strdup(a);
    u.b = b ? strdup(b) : NULL;
    u.dir = dir_of(b ? b : a);
    if (has_data) fe->saved_bytes += len;
    if (!u.a || (b && !u.b) || !u.dir) {
        undo_free(fe, &u);
        return kv_set_error(KV_ENOMEM, "fault env: out of memory");
    }
    fe->log[fe->nlog++] = u;
    return KV_OK;
}

/* Read the durable content of path (its first `limit` bytes) for a later restore. Returns false when it cannot be
 * kept (too big, over the total budget, or unreadable). */
static bool save_content(fault_env *fe, const char *path, uint64_t limit, uint8_t **data, size_t *len) {
    *data = NULL;
    *len = 0;
    uint64_t size;
    if (fe->base->file_size(fe->base, path, &size) != KV_OK) return false;
    if (size > limit) size = limit;
    if (size > FAULT_SAVE_MAX || fe->saved_bytes + size > FAULT_SAVE_TOTAL) return false;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return false;
    kv_file *f;
    if (fe->base->open_read(fe->base, path, &f) != KV_OK) {
        free(buf);
        return false;
    }
    size_t n = 0;
    int rc = fe->base->read_at(fe->base, f, 0, buf, size, &n);
    fe->base->close(fe->base, f);
    if (rc != KV_OK) {
        free(buf);
        return false;
    }
    *data = buf;
    *len = n;
    return true;
}

/* ---- Faults ---------------------------------------------------------------------------------------------------- */

static bool kind_applies(kv_fault_kind kind, int op) {
    switch (kind) {
    case KV_FAULT_WRITE_EIO:
    case KV_FAULT_WRITE_SHORT: return op == OP_APPEND;
    case KV_FAULT_WRITE_STUCK: return op == OP_APPEND || op == OP_TRUNCATE;
    case KV_FAULT_ENOSPC: return op == OP_APPEND || op == OP_CREATE;
    case KV_FAULT_SYNC_EIO: return op == OP_SYNC;
    case KV_FAULT_SYNC_LOST: return op == OP_SYNC;
    case KV_FAULT_READ_EIO: return op == OP_READ;
    case KV_FAULT_DISK_EIO: return op == OP_APPEND || op == OP_SYNC;
    default: return false;
    }
}

/* Decide whether this operation fails; returns the fault kind to inject or KV_FAULT_NONE. Caller holds fe->mu. */
static kv_fault_kind fault_due(fault_env *fe, int op, const char *path) {
    if (fe->kind == KV_FAULT_NONE || !kind_applies(fe->kind, op)) return KV_FAULT_NONE;
    if (fe->substr && !strstr(path, fe->substr)) return KV_FAULT_NONE;
    if (fe->after > 0) {
        fe->after--;
        return KV_FAULT_NONE;
    }
    fe->failures++;
    return fe->kind;
}

/* KV_FAULT_DISK_FULL: take n bytes of the free space (caller holds fe->mu); false (a failure) when there are not
 * that many. Without that fault every write has room. */
static bool disk_take(fault_env *fe, uint64_t n) {
    if (fe->kind != KV_FAULT_DISK_FULL || n == 0) return true;
    if (n > fe->disk_free) {
        fe->failures++;
        return false;
    }
    fe->disk_free -= n;
    return true;
}

/* KV_FAULT_DISK_FULL: the bytes past a file's current size that writing up to `end` needs (caller holds fe->mu). */
static uint64_t disk_growth(fault_env *fe, kv_file *f, uint64_t end) {
    uint64_t size = 0;
    if (fe->kind != KV_FAULT_DISK_FULL || fe->base->size(fe->base, f->inner, &size) != KV_OK) return 0;
    return end > size ? end - size : 0;
}

/* KV_FAULT_DISK_FULL: bytes given back (caller holds fe->mu). */
static void disk_give(fault_env *fe, uint64_t n) {
    if (fe->kind == KV_FAULT_DISK_FULL) fe->disk_free += n;
}

static kv_fault_kind fault_check(fault_env *fe, int op, const char *path) {
    pthread_mutex_lock(&fe->mu);
    kv_fault_kind k = fault_due(fe, op, path);
    pthread_mutex_unlock(&fe->mu);
    return k;
}

/* Whether the power is off for a change to the disk about to be made; counts it down towards a power loss that
 * kv_fault_env_crash_after armed (the change that reaches the count is the first one lost). Caller holds fe->mu. */
static bool going_dark(fault_env *fe) {
    if (!fe->crashed && fe->crash_in != UINT64_MAX) {
        if (fe->crash_in == 0) fe->crashed = true;
        else fe->crash_in--;
    }
    return fe->crashed;
}

/* going_dark, taking the mutex (directory changes). */
static bool is_crashed(fault_env *fe) {
    pthread_mutex_lock(&fe->mu);
    bool c = going_dark(fe);
    pthread_mutex_unlock(&fe->mu);
    return c;
}

/* ---- Files ----------------------------------------------------------------------------------------------------- */

static kv_file *handle_new(const char *path, kv_file *inner) {
    size_t n = strlen(path);
    kv_file *f = malloc(sizeof *f + n + 1);
    if (!f) return NULL;
    f->inner = inner;
    f->phantom = 0;
    memcpy(f->path, path, n + 1);
    return f;
}

static int wrap(fault_env *fe, const char *path, kv_file *inner, kv_file **out) {
    kv_file *f = handle_new(path, inner);
    if (!f) {
        if (inner) fe->base->close(fe->base, inner);
        return kv_set_error(KV_ENOMEM, "open %s: out of memory", path);
    }
    *out = f;
    return KV_OK;
}

static int fe_open_read(kv_env *env, const char *path, kv_file **out) {
    fault_env *fe = FE(env);
    kv_file *inner;
    int rc = fe->base->open_read(fe->base, path, &inner);
    if (rc != KV_OK) return rc;
    return wrap(fe, path, inner, out);
}

enum { OPEN_WRITE, OPEN_APPEND, OPEN_OVERWRITE };

/* open_write, open_append and open_overwrite: creation (or truncation) is a namespace change, so it runs under the
 * mutex. */
static int open_for_write(fault_env *fe, const char *path, int how, kv_file **out) {
    bool truncate = how != OPEN_APPEND;
    int rc;
    kv_file *inner = NULL;
    *out = NULL;
    pthread_mutex_lock(&fe->mu);
    int existed = fe->base->exists(fe->base, path);
    if (existed < 0) {
        rc = existed;
        goto done;
    }
    if (going_dark(fe)) {
        /* Nothing may change on disk. An existing file opened for append stays readable; anything else is a
         * phantom whose appends go nowhere. */
        if (!truncate && existed) {
            rc = fe->base->open_read(fe->base, path, &inner);
            if (rc != KV_OK) goto done;
        }
        rc = KV_OK;
        goto done;
    }
    if ((truncate || !existed) && fe->kind == KV_FAULT_DISK_FULL && fe->disk_free == 0) {
        fe->failures++;
        rc = kv_set_error(KV_ENOSPC, "create %s: no space left on device (full disk)", path);
        goto done;
    }
    if ((truncate || !existed) && fault_due(fe, OP_CREATE, path) == KV_FAULT_ENOSPC) {
        rc = kv_set_error(KV_ENOSPC, "create %s: no space left on device (injected fault)", path);
        goto done;
    }
    uint64_t old_size = 0;
    if (existed && !truncate && !st_find(fe, path)) {
        rc = fe->base->file_size(fe->base, path, &old_size);
        if (rc != KV_OK) goto done;
    }
    rc = how == OPEN_WRITE       ? fe->base->open_write(fe->base, path, &inner)
         : how == OPEN_OVERWRITE ? fe->base->open_overwrite(fe->base, path, &inner)
                                 : fe->base->open_append(fe->base, path, &inner);
    if (rc != KV_OK) goto done;
    if (!existed) {
        if (!st_add(fe, path, 0, true) || undo_push(fe, U_CREATE, path, NULL, NULL, 0, false) != KV_OK)
            rc = kv_set_error(KV_ENOMEM, "open %s: out of memory", path);
    } else if (truncate) {
        if (!st_add(fe, path, 0, false)) rc = kv_set_error(KV_ENOMEM, "open %s: out of memory", path);
    } else if (!st_find(fe, path)) {
        /* first sight of a file that was already there: what it holds now is taken as durable */
        if (!st_add(fe, path, old_size, false)) rc = kv_set_error(KV_ENOMEM, "open %s: out of memory", path);
    }
    fstate *s = rc == KV_OK && how == OPEN_OVERWRITE ? st_find(fe, path) : NULL;
    if (s) s->by_offset = true; /* st_add has just reset written and alloc_synced */
done:
    pthread_mutex_unlock(&fe->mu);
    if (rc != KV_OK) {
        if (inner) fe->base->close(fe->base, inner);
        return rc;
    }
    return wrap(fe, path, inner, out);
}

static int fe_open_write(kv_env *env, const char *path, kv_file **out) {
    return open_for_write(FE(env), path, OPEN_WRITE, out);
}

static int fe_open_append(kv_env *env, const char *path, kv_file **out) {
    return open_for_write(FE(env), path, OPEN_APPEND, out);
}

static int fe_open_overwrite(kv_env *env, const char *path, kv_file **out) {
    return open_for_write(FE(env), path, OPEN_OVERWRITE, out);
}

static int fe_read_at(kv_env *env, kv_file *f, uint64_t off, void *buf, size_t len, size_t *nread) {
    fault_env *fe = FE(env);
    *nread = 0;
    if (fault_check(fe, OP_READ, f->path) == KV_FAULT_READ_EIO)
        return kv_set_error(KV_EIO, "read %s at offset %llu: I/O error (injected fault)", f->path,
                            (unsigned long long)off);
    if (!f->inner) return KV_OK; /* a phantom file is empty */
    return fe->base->read_at(fe->base, f->inner, off, buf, len, nread);
}

static int fe_append(kv_env *env, kv_file *f, const void *buf, size_t len) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe) || !f->inner) {
        f->phantom += len;
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    kv_fault_kind k = disk_take(fe, len) ? fault_due(fe, OP_APPEND, f->path) : KV_FAULT_DISK_FULL;
    pthread_mutex_unlock(&fe->mu);
    switch (k) {
    case KV_FAULT_WRITE_EIO:
    case KV_FAULT_DISK_EIO:
        return kv_set_error(KV_EIO, "write %s: I/O error (injected fault)", f->path);
    case KV_FAULT_WRITE_STUCK: {
        int rc = fe->base->append(fe->base, f->inner, buf, len);
        if (rc != KV_OK) return rc;
        return kv_set_error(KV_EIO, "write %s: I/O error after the bytes were written (injected fault)", f->path);
    }
    case KV_FAULT_WRITE_SHORT: {
        int rc = fe->base->append(fe->base, f->inner, buf, len / 2);
        if (rc != KV_OK) return rc;
        return kv_set_error(KV_EIO, "write %s: short write, %zu of %zu bytes (injected fault)", f->path, len / 2,
                            len);
    }
    case KV_FAULT_ENOSPC:
    case KV_FAULT_DISK_FULL:
        return kv_set_error(KV_ENOSPC, "write %s: no space left on device (injected fault)", f->path);
    default:
        return fe->base->append(fe->base, f->inner, buf, len);
    }
}

/* Note that [off, end) of a file written by offset now holds data. */
static void note_written(fault_env *fe, kv_file *f, uint64_t end) {
    pthread_mutex_lock(&fe->mu);
    fstate *s = fe->crashed ? NULL : st_find(fe, f->path);
    if (s && end > s->written) s->written = end;
    pthread_mutex_unlock(&fe->mu);
}

/* The faults of append, on a write by offset. */
static int fe_write_at(kv_env *env, kv_file *f, uint64_t off, const void *buf, size_t len) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe) || !f->inner) { /* the bytes go nowhere */
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    /* a full disk still takes writes into space the file has (allocated ahead) */
    kv_fault_kind k = disk_take(fe, disk_growth(fe, f, off + len)) ? fault_due(fe, OP_APPEND, f->path)
                                                                     : KV_FAULT_DISK_FULL;
    pthread_mutex_unlock(&fe->mu);
    size_t put = k == KV_FAULT_NONE || k == KV_FAULT_WRITE_STUCK ? len : k == KV_FAULT_WRITE_SHORT ? len / 2 : 0;
    if (put) {
        int rc = fe->base->write_at(fe->base, f->inner, off, buf, put);
        if (rc != KV_OK) return rc;
        note_written(fe, f, off + put);
    }
    switch (k) {
    case KV_FAULT_WRITE_EIO:
    case KV_FAULT_DISK_EIO: return kv_set_error(KV_EIO, "write %s: I/O error (injected fault)", f->path);
    case KV_FAULT_WRITE_STUCK:
        return kv_set_error(KV_EIO, "write %s: I/O error after the bytes were written (injected fault)", f->path);
    case KV_FAULT_WRITE_SHORT:
        return kv_set_error(KV_EIO, "write %s: short write, %zu of %zu bytes (injected fault)", f->path, len / 2,
                            len);
    case KV_FAULT_ENOSPC:
    case KV_FAULT_DISK_FULL:
        return kv_set_error(KV_ENOSPC, "write %s: no space left on device (injected fault)", f->path);
    default: return KV_OK;
    }
}

/* Allocation fails while a full-disk or dying-disk fault is in force for the file; it uses up no count of `after`
 * (it is not an append), so arming a fault after N appends means the same with or without space allocated ahead. */
static int fe_allocate(kv_env *env, kv_file *f, uint64_t size) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    bool skip = going_dark(fe) || !f->inner;
    bool armed = !skip && fe->after == 0 && (fe->kind == KV_FAULT_ENOSPC || fe->kind == KV_FAULT_DISK_EIO) &&
                 (!fe->substr || strstr(f->path, fe->substr));
    if (armed) fe->failures++;
    bool full = armed || (!skip && !disk_take(fe, disk_growth(fe, f, size))); /* disk_take counts its failure */
    kv_fault_kind k = fe->kind;
    pthread_mutex_unlock(&fe->mu);
    if (skip) return KV_OK;
    if (full)
        return k != KV_FAULT_DISK_EIO
                   ? kv_set_error(KV_ENOSPC, "fallocate %s: no space left on device (injected fault)", f->path)
                   : kv_set_error(KV_EIO, "fallocate %s: I/O error (injected fault)", f->path);
    return fe->base->allocate(fe->base, f->inner, size);
}

static int fe_sync(kv_env *env, kv_file *f) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe) || !f->inner) {
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    kv_fault_kind k = fault_due(fe, OP_SYNC, f->path);
    if (k == KV_FAULT_SYNC_EIO || k == KV_FAULT_DISK_EIO || k == KV_FAULT_SYNC_LOST) {
        /* KV_FAULT_SYNC_LOST: Linux may mark the pages whose writeback failed clean, and a later fsync then succeeds
         * without writing them. Modelled strictly: nothing more of this file becomes durable (a power loss cuts it
         * back to what was durable before this sync), whatever later syncs say. */
        fstate *s = k == KV_FAULT_SYNC_LOST ? st_find(fe, f->path) : NULL;
        if (s) s->poisoned = true;
        pthread_mutex_unlock(&fe->mu);
        return kv_set_error(KV_EIO, "fdatasync %s: I/O error (injected fault)", f->path);
    }
    /* What the file holds when the sync starts is durable once it returns; later writes are not. For a file written
     * by offset that is its data up to `written`, and zeros up to its size. */
    fstate *s0 = st_find(fe, f->path);
    bool by_offset = s0 && s0->by_offset;
    uint64_t written = by_offset ? s0->written : 0;
    pthread_mutex_unlock(&fe->mu);
    uint64_t size;
    int rc = fe->base->size(fe->base, f->inner, &size);
    if (rc != KV_OK) return rc;
    rc = fe->base->sync(fe->base, f->inner);
    if (rc != KV_OK) return rc;
    uint64_t data = by_offset && written < size ? written : size;
    pthread_mutex_lock(&fe->mu);
    fstate *s = fe->crashed ? NULL : st_find(fe, f->path);
    if (s && !s->poisoned) { /* syncs may run at once and end in any order */
        if (data > s->synced) s->synced = data;
        if (s->by_offset && size > s->alloc_synced) s->alloc_synced = size;
    }
    pthread_mutex_unlock(&fe->mu);
    return KV_OK;
}

static int fe_size(kv_env *env, kv_file *f, uint64_t *size) {
    fault_env *fe = FE(env);
    uint64_t n = 0;
    if (f->inner) {
        int rc = fe->base->size(fe->base, f->inner, &n);
        if (rc != KV_OK) return rc;
    }
    pthread_mutex_lock(&fe->mu);
    *size = n + f->phantom;
    pthread_mutex_unlock(&fe->mu);
    return KV_OK;
}

static int fe_close(kv_env *env, kv_file *f) {
    fault_env *fe = FE(env);
    if (!f) return KV_OK;
    int rc = f->inner ? fe->base->close(fe->base, f->inner) : KV_OK;
    free(f);
    return rc;
}

/* ---- Names ----------------------------------------------------------------------------------------------------- */

static int fe_file_size(kv_env *env, const char *path, uint64_t *size) {
    return FE(env)->base->file_size(FE(env)->base, path, size);
}

static int fe_exists(kv_env *env, const char *path) { return FE(env)->base->exists(FE(env)->base, path); }

static int fe_remove(kv_env *env, const char *path) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe)) {
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    fstate *s = st_find(fe, path);
    uint8_t *data = NULL;
    size_t len = 0;
    /* A file created since the last sync_dir vanishes in a power loss anyway: nothing to restore. */
    bool saved = !(s && s->fresh) && save_content(fe, path, s ? s->synced : UINT64_MAX, &data, &len);
    uint64_t freed = 0;
    if (fe->kind == KV_FAULT_DISK_FULL && fe->base->file_size(fe->base, path, &freed) != KV_OK) freed = 0;
    int rc = fe->base->remove(fe->base, path);
    if (rc == KV_OK) {
        disk_give(fe, freed);
        st_drop(fe, path);
        if (saved) rc = undo_push(fe, U_REMOVE, path, NULL, data, len, true);
    } else {
        free(data);
    }
    pthread_mutex_unlock(&fe->mu);
    return rc;
}

static int fe_rename(kv_env *env, const char *from, const char *to) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe)) {
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    int rc = fe->base->exists(fe->base, to);
    if (rc < 0) goto done;
    bool to_existed = rc == 1;
    fstate *ts = st_find(fe, to);
    uint8_t *data = NULL;
    size_t len = 0;
    bool has_data = false, undoable = true;
    if (to_existed && !(ts && ts->fresh)) {
        /* the replaced file must come back after a power loss; if it cannot be kept, do not undo the rename */
        has_data = save_content(fe, to, ts ? ts->synced : UINT64_MAX, &data, &len);
        undoable = has_data;
    }
    rc = fe->base->rename(fe->base, from, to);
    if (rc != KV_OK) {
        free(data);
        goto done;
    }
    rc = st_move(fe, from, to);
    if (rc == KV_OK && undoable) rc = undo_push(fe, U_RENAME, from, to, data, len, has_data);
    else free(data);
done:
    pthread_mutex_unlock(&fe->mu);
    return rc;
}

static int fe_link(kv_env *env, const char *from, const char *to) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe)) {
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    int rc = fe->base->link(fe->base, from, to);
    if (rc == KV_OK) {
        /* the new name shares the data of `from`; what is durable of it is what is durable of `from` */
        fstate *s = st_find(fe, from), *t = s ? st_add(fe, to, s->synced, true) : NULL;
        if (s && !t) rc = kv_set_error(KV_ENOMEM, "link %s: out of memory", to);
        if (t) t->link = true;
        if (rc == KV_OK) rc = undo_push(fe, U_CREATE, to, NULL, NULL, 0, false);
    }
    pthread_mutex_unlock(&fe->mu);
    return rc;
}

static int fe_truncate(kv_env *env, const char *path, uint64_t size) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe)) {
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    if (fault_due(fe, OP_TRUNCATE, path) == KV_FAULT_WRITE_STUCK) {
        pthread_mutex_unlock(&fe->mu);
        return kv_set_error(KV_EIO, "truncate %s: I/O error (injected fault)", path);
    }
    fstate *s = st_find(fe, path);
    uint64_t old = 0, before = 0;
    int rc = s ? KV_OK : fe->base->file_size(fe->base, path, &old);
    if (rc == KV_OK && fe->kind == KV_FAULT_DISK_FULL && fe->base->file_size(fe->base, path, &before) == KV_OK &&
        size > before && !disk_take(fe, size - before))
        rc = kv_set_error(KV_ENOSPC, "truncate %s: no space left on device (full disk)", path);
    if (rc == KV_OK) rc = fe->base->truncate(fe->base, path, size);
    if (rc == KV_OK && before > size) disk_give(fe, before - size);
    if (rc == KV_OK) {
        /* bytes cut off are gone; bytes added (zeros) are not durable until a sync */
        if (s) {
            if (s->synced > size) s->synced = size;
            if (s->written > size) s->written = size;
            if (s->alloc_synced > size) s->alloc_synced = size;
        } else if (!st_add(fe, path, old < size ? old : size, false)) {
            rc = kv_set_error(KV_ENOMEM, "truncate %s: out of memory", path);
        }
    }
    pthread_mutex_unlock(&fe->mu);
    return rc;
}

static int fe_mkdir(kv_env *env, const char *path, int mode) {
    fault_env *fe = FE(env);
    if (is_crashed(fe)) return KV_OK;
    return fe->base->mkdir(fe->base, path, mode);
}

static int fe_rmdir(kv_env *env, const char *path) {
    fault_env *fe = FE(env);
    if (is_crashed(fe)) return KV_OK;
    return fe->base->rmdir(fe->base, path);
}

static int fe_list_dir(kv_env *env, const char *path, char ***names, size_t *n) {
    return FE(env)->base->list_dir(FE(env)->base, path, names, n);
}

static int fe_sync_dir(kv_env *env, const char *path) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    if (going_dark(fe)) {
        pthread_mutex_unlock(&fe->mu);
        return KV_OK;
    }
    int rc;
    kv_fault_kind sk = fault_due(fe, OP_SYNC, path);
    if (sk == KV_FAULT_SYNC_EIO || sk == KV_FAULT_DISK_EIO || sk == KV_FAULT_SYNC_LOST) {
        rc = kv_set_error(KV_EIO, "fsync directory %s: I/O error (injected fault)", path);
        goto done;
    }
    rc = fe->base->sync_dir(fe->base, path);
    if (rc != KV_OK) goto done;
    char *d = norm_path(path);
    if (!d) {
        rc = kv_set_error(KV_ENOMEM, "sync_dir %s: out of memory", path);
        goto done;
    }
    /* every namespace change in d is now durable */
    size_t j = 0;
    for (size_t i = 0; i < fe->nlog; i++) {
        if (strcmp(fe->log[i].dir, d) == 0) undo_free(fe, &fe->log[i]);
        else fe->log[j++] = fe->log[i];
    }
    fe->nlog = j;
    for (size_t i = 0; i < fe->nst; i++) {
        char *sd = dir_of(fe->st[i]->path);
        if (sd && strcmp(sd, d) == 0) fe->st[i]->fresh = false;
        free(sd);
    }
    free(d);
done:
    pthread_mutex_unlock(&fe->mu);
    return rc;
}

/* Locks are not data: they pass straight through (also after a crash, so the store can be closed and reopened). */
static int fe_lock(kv_env *env, const char *path, kv_file **lock) {
    return FE(env)->base->lock(FE(env)->base, path, lock);
}

static int fe_unlock(kv_env *env, kv_file *lock) { return FE(env)->base->unlock(FE(env)->base, lock); }

static int fe_lock_shared(kv_env *env, const char *path, kv_file **lock) {
    kv_env *b = FE(env)->base;
    return b->lock_shared ? b->lock_shared(b, path, lock) : b->lock(b, path, lock);
}

/* Only where the base has it (kv_fault_env_new) */
static int fe_lock_intent(kv_env *env, const char *path, kv_file **lock) {
    return FE(env)->base->lock_intent(FE(env)->base, path, lock);
}

static int fe_disk_space(kv_env *env, const char *path, uint64_t *avail, uint64_t *total) {
    fault_env *fe = FE(env);
    pthread_mutex_lock(&fe->mu);
    uint64_t a = fe->space_avail, t = fe->space_total;
    bool full = fe->kind == KV_FAULT_DISK_FULL;
    uint64_t free_bytes = fe->disk_free;
    pthread_mutex_unlock(&fe->mu);
    if (a != UINT64_MAX) {
        *avail = a;
        *total = t;
        return KV_OK;
    }
    if (!fe->base->disk_space) return kv_set_error(KV_EIO, "disk_space %s: not known", path);
    int rc = fe->base->disk_space(fe->base, path, avail, total);
    if (rc == KV_OK && full) *avail = free_bytes;
    return rc;
}

/* ---- Public API ------------------------------------------------------------------------------------------------ */

kv_env *kv_fault_env_new(kv_env *base) {
    if (!base) return NULL;
    fault_env *fe = calloc(1, sizeof *fe);
    if (!fe) return NULL;
    if (pthread_mutex_init(&fe->mu, NULL) != 0) {
        free(fe);
        return NULL;
    }
    fe->base = base;
    fe->space_avail = fe->space_total = UINT64_MAX;
    fe->crash_in = UINT64_MAX;
    bool overwrite = base->open_overwrite && base->write_at && base->allocate;
    fe->env = (kv_env){
        .open_read = fe_open_read,
        .open_write = fe_open_write,
        .open_append = fe_open_append,
        .read_at = fe_read_at,
        .append = fe_append,
        .open_overwrite = overwrite ? fe_open_overwrite : NULL,
        .write_at = overwrite ? fe_write_at : NULL,
        .allocate = overwrite ? fe_allocate : NULL,
        .sync = fe_sync,
        .size = fe_size,
        .close = fe_close,
        .file_size = fe_file_size,
        .exists = fe_exists,
        .remove = fe_remove,
        .rename = fe_rename,
        .link = fe_link,
        .truncate = fe_truncate,
        .mkdir = fe_mkdir,
        .rmdir = fe_rmdir,
        .list_dir = fe_list_dir,
        .sync_dir = fe_sync_dir,
        .lock = fe_lock,
        .unlock = fe_unlock,
        .lock_shared = fe_lock_shared,
        .lock_intent = base->lock_intent ? fe_lock_intent : NULL,
        .disk_space = fe_disk_space,
        .destroy = fault_destroy,
    };
    return &fe->env;
}

/* The fault API ignores environments that are not fault environments rather than corrupting them. */
static fault_env *as_fault(kv_env *env) { return env && env->destroy == fault_destroy ? FE(env) : NULL; }

void kv_fault_env_arm(kv_env *env, kv_fault_kind kind, uint64_t after, const char *path_substr) {
    fault_env *fe = as_fault(env);
    if (!fe) return;
    char *sub = path_substr ? strdup(path_substr) : NULL;
    pthread_mutex_lock(&fe->mu);
    free(fe->substr);
    fe->substr = sub;
    /* if the filter could not be copied, arming nothing is safer than failing every file */
    fe->kind = path_substr && !sub ? KV_FAULT_NONE : kind;
    fe->after = after;
    fe->disk_free = 0;
    pthread_mutex_unlock(&fe->mu);
}

void kv_fault_env_clear(kv_env *env) {
    fault_env *fe = as_fault(env);
    if (!fe) return;
    pthread_mutex_lock(&fe->mu);
    fe->kind = KV_FAULT_NONE;
    fe->after = 0;
    free(fe->substr);
    fe->substr = NULL;
    pthread_mutex_unlock(&fe->mu);
}

uint64_t kv_fault_env_failures(kv_env *env) {
    fault_env *fe = as_fault(env);
    if (!fe) return 0;
    pthread_mutex_lock(&fe->mu);
    uint64_t n = fe->failures;
    pthread_mutex_unlock(&fe->mu);
    return n;
}

void kv_fault_env_set_reorder(kv_env *env, bool on) {
    fault_env *fe = as_fault(env);
    if (!fe) return;
    pthread_mutex_lock(&fe->mu);
    fe->reorder = on;
    pthread_mutex_unlock(&fe->mu);
}

void kv_fault_env_set_disk_space(kv_env *env, uint64_t avail, uint64_t total) {
    fault_env *fe = as_fault(env);
    if (!fe) return;
    pthread_mutex_lock(&fe->mu);
    fe->space_avail = avail;
    fe->space_total = total;
    pthread_mutex_unlock(&fe->mu);
}

void kv_fault_env_crash(kv_env *env) {
    fault_env *fe = as_fault(env);
    if (!fe) return;
    pthread_mutex_lock(&fe->mu);
    fe->crashed = true;
    pthread_mutex_unlock(&fe->mu);
}

void kv_fault_env_crash_after(kv_env *env, uint64_t changes) {
    fault_env *fe = as_fault(env);
    if (!fe) return;
    pthread_mutex_lock(&fe->mu);
    fe->crash_in = changes;
    pthread_mutex_unlock(&fe->mu);
}

bool kv_fault_env_crashed(kv_env *env) {
    fault_env *fe = as_fault(env);
    if (!fe) return false;
    pthread_mutex_lock(&fe->mu);
    bool c = fe->crashed;
    pthread_mutex_unlock(&fe->mu);
    return c;
}

/* Recreate path holding data (restoring a removed or replaced file). */
static int write_whole(kv_env *base, const char *path, const uint8_t *data, size_t len) {
    kv_file *f;
    int rc = base->open_write(base, path, &f);
    if (rc != KV_OK) return rc;
    rc = base->append(base, f, data, len);
    int rc2 = base->close(base, f);
    return rc != KV_OK ? rc : rc2;
}

/* Undo one namespace change, recording the first error in *first_err. */
static void undo_one(fault_env *fe, undo *u, int *first_err) {
    kv_env *b = fe->base;
    int rc = KV_OK;
    switch (u->type) {
    case U_CREATE:
        if (b->exists(b, u->a) == 1) rc = b->remove(b, u->a);
        if (rc == KV_OK) st_drop(fe, u->a);
        break;
    case U_RENAME:
        /* move it back only while the source name is free: if it was reused, that newer file wins. The target
         * may already be gone (a newer rename over it, itself undone): then only the replaced file comes back. */
        if (b->exists(b, u->a) != 0) break;
        if (b->exists(b, u->b) == 1) {
            rc = b->rename(b, u->b, u->a);
            if (rc == KV_OK) rc = st_move(fe, u->b, u->a);
        }
        if (rc == KV_OK && u->has_data) {
            rc = write_whole(b, u->b, u->data, u->len);
            if (rc == KV_OK && !st_add(fe, u->b, u->len, false)) rc = kv_set_error(KV_ENOMEM, "out of memory");
        }
        break;
    case U_REMOVE:
        if (b->exists(b, u->a) != 0) break;
        rc = write_whole(b, u->a, u->data, u->len);
        if (rc == KV_OK && !st_add(fe, u->a, u->len, false)) rc = kv_set_error(KV_ENOMEM, "out of memory");
        break;
    }
    if (rc != KV_OK && *first_err == KV_OK) *first_err = rc;
}

int kv_fault_env_apply_crash(kv_env *env) {
    fault_env *fe = as_fault(env);
    if (!fe) return kv_set_error(KV_EINVAL, "kv_fault_env_apply_crash: not a fault environment");
    kv_env *b = fe->base;
    int first_err = KV_OK;
    pthread_mutex_lock(&fe->mu);
    /* 1. namespace changes that were not durable, newest first */
    for (size_t i = fe->nlog; i-- > 0;) {
        undo_one(fe, &fe->log[i], &first_err);
        undo_free(fe, &fe->log[i]);
    }
    fe->nlog = 0;
    /* 2. data that was not durable */
    for (size_t i = 0; i < fe->nst;) {
        fstate *s = fe->st[i];
        uint64_t size;
        int rc = b->exists(b, s->path) == 1 ? b->file_size(b, s->path, &size) : KV_ENOTFOUND;
        uint64_t page_end = (s->synced / 4096 + 1) * 4096;
        if (rc == KV_OK && s->link) size = s->synced; /* cut (if at all) through the name it was linked from */
        if (rc == KV_OK && fe->reorder && s->by_offset && s->written <= size && page_end < s->written) {
            /* out of order: keep the unsynced bytes but those of the page holding the first of them, which keeps
             * its synced bytes and zeros (the file is rewritten whole with that part zeroed: the base environment
             * has no way to write inside an existing file) */
            uint8_t *data = NULL;
            size_t len = 0;
            if (size <= FAULT_SAVE_MAX && save_content(fe, s->path, size, &data, &len) && len == size) {
                memset(data + s->synced, 0, (size_t)(page_end - s->synced));
                rc = write_whole(b, s->path, data, len);
                if (rc == KV_OK) s->synced = size; /* nothing more to cut below */
            }
            free(data);
        }
        if (rc == KV_OK && size > s->synced) rc = b->truncate(b, s->path, s->synced);
        /* space allocated ahead and synced outlives the data written into it since: it reads as zeros */
        if (rc == KV_OK && s->by_offset && s->alloc_synced > s->synced && size > s->synced)
            rc = b->truncate(b, s->path, s->alloc_synced < size ? s->alloc_synced : size);
        if (rc != KV_OK && rc != KV_ENOTFOUND && first_err == KV_OK) first_err = rc;
        if (rc == KV_ENOTFOUND) {
            /* the file is gone: forget it (the last state moves into slot i) */
            fe->st[i] = fe->st[--fe->nst];
            free(s->path);
            free(s);
            continue;
        }
        i++;
    }
    /* 3. a new epoch: what is on disk now is what survived, so all of it counts as durable */
    for (size_t i = 0; i < fe->nst; i++) {
        uint64_t size;
        if (b->file_size(b, fe->st[i]->path, &size) == KV_OK) fe->st[i]->synced = size;
        fe->st[i]->fresh = false;
        fe->st[i]->poisoned = false;
        fe->st[i]->by_offset = false;
        fe->st[i]->written = fe->st[i]->alloc_synced = 0;
    }
    fe->crashed = false;
    fe->crash_in = UINT64_MAX;
    pthread_mutex_unlock(&fe->mu);
    return first_err;
}

static void fault_destroy(kv_env *env) {
    fault_env *fe = FE(env);
    for (size_t i = 0; i < fe->nlog; i++) undo_free(fe, &fe->log[i]);
    free(fe->log);
    for (size_t i = 0; i < fe->nst; i++) {
        free(fe->st[i]->path);
        free(fe->st[i]);
    }
    free(fe->st);
    free(fe->substr);
    pthread_mutex_destroy(&fe->mu);
    free(fe);
}
