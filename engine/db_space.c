/*
 * db_space.c — the disk's last bytes: the floor below which writes that add data stop, and the reserve file.
 *
 * Invariants (docs/design.md, "A full disk")
 *  - Writes that add data stop at the floor (db_space_floor); removals, the log, flushes and compactions go on below
 *    it. So the store by itself never takes the disk to its last byte; another process can.
 *  - The reserve (kv_options.space_reserve) is a file, RESERVE, in the store's directory that holds a floor's worth
 *    of disk space. Nothing reads it and nothing depends on it: it is in no manifest, and any size of it, none
 *    included (a power loss in the middle of making it), is a valid store. It is given back (removed) when the disk
 *    is full all the same: a log write or a flush failed with KV_ENOSPC, or the free space fell under a quarter of the
 *    floor, which this store's own writes that add data never reach. It is made again once the disk has room for it
 *    and two floors more, so that a disk hovering near full does not make and remove it in turn.
 *  - Its bytes are written, not only allocated: a file system without fallocate would leave a sparse file, which
 *    holds nothing. They are pseudo-random, so that a compressing file system cannot shrink them either. They are
 *    synced, with the directory, before the reserve counts as held.
 *  - reserve_mu orders its creation and removal; it is taken after mu, never before it. Writers never wait for a
 *    creation: the writer that looks at the disk makes it if no one else is busy with the reserve.
 */
#include <stdio.h>
#include <stdlib.h>

#include "db_impl.h"
#include "error.h"

#define RESERVE_NAME "RESERVE"
#define RESERVE_CHUNK (64u << 10)
#define RESERVE_RETRY_US (60ull * 1000000) /* a failed making of the reserve is tried again after this */

/* The last bytes of the disk: a memtable's worth and 1 MiB, at most an eighth of the disk. Writes that add data stop
 * there; deletes go on (and a flush of their memtable, and the compaction that then drops what they deleted, whose
 * output is small: compactions stop at half the floor). Without it a store filled with small files took the disk to
 * its last byte, and then every unlink failed too: its log record had no room. */
uint64_t db_space_floor(const kv_db *db, uint64_t total) {
    uint64_t floor = (uint64_t)db->opt.memtable_bytes + (1u << 20);
    return floor > total / 8 ? total / 8 : floor;
}

static void reserve_path(const kv_db *db, char *buf, size_t n) { snprintf(buf, n, "%s/" RESERVE_NAME, db->dir); }

/* Remove the reserve (caller holds reserve_mu). The thread's message is left as it was: the caller is reporting
 * another failure, or retrying one. */
static bool reserve_remove_locked(kv_db *db) {
    if (!atomic_load(&db->reserve_held)) return false;
    char path[4096], msg[512];
    reserve_path(db, path, sizeof path);
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    int rc = db->env->remove(db->env, path);
    kv_set_error(KV_OK, "%s", msg);
    if (rc != KV_OK && rc != KV_ENOTFOUND) return false;
    atomic_store(&db->reserve_held, false);
    atomic_store(&db->reserve_bytes, 0);
    atomic_store(&db->space_seen_us, 0); /* the next write looks at the disk again: the floor may be passed */
    return rc == KV_OK;
}

bool db_reserve_release(kv_db *db) {
    if (db->opt.read_only || !atomic_load(&db->reserve_held)) return false;
    pthread_mutex_lock(&db->reserve_mu);
    bool freed = reserve_remove_locked(db);
    if (freed) atomic_fetch_add(&db->st_reserve_releases, 1);
    pthread_mutex_unlock(&db->reserve_mu);
    return freed;
}

bool db_space_seen(kv_db *db, uint64_t avail, uint64_t total) {
    return avail < db_space_floor(db, total) / 4 && db_reserve_release(db);
}

/* Write `bytes` of the reserve (caller holds reserve_mu). Its own errors are not the caller's: the message stays. */
static void reserve_make_locked(kv_db *db, uint64_t bytes) {
    char path[4096], msg[512];
    reserve_path(db, path, sizeof path);
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    uint64_t *chunk = malloc(RESERVE_CHUNK);
    kv_file *f = NULL;
    int rc = chunk ? db->env->open_write(db->env, path, &f) : KV_ENOMEM;
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)db; /* xorshift: bytes no compressor shrinks */
    for (uint64_t done = 0; rc == KV_OK && done < bytes;) {
        for (size_t i = 0; i < RESERVE_CHUNK / sizeof *chunk; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk[i] = x;
        }
        size_t n = bytes - done < RESERVE_CHUNK ? (size_t)(bytes - done) : RESERVE_CHUNK;
        rc = db->env->append(db->env, f, chunk, n);
        done += n;
    }
    /* Synced, name and bytes: a power loss must not leave it short, or empty with its size (some file systems), when
     * the disk is full by the time the store opens again and it cannot be made anew. Made once in a store's life
     * unless the disk filled up, so the fsync costs nothing that matters. */
    if (rc == KV_OK) rc = db->env->sync(db->env, f);
    if (rc == KV_OK) rc = db->env->sync_dir(db->env, db->dir);
    if (f) db->env->close(db->env, f);
    if (f && rc != KV_OK) (void)db->env->remove(db->env, path); /* a disk too full for it: take back what it got */
    free(chunk);
    kv_set_error(KV_OK, "%s", msg);
    if (rc == KV_OK) {
        atomic_store(&db->reserve_bytes, bytes);
        atomic_store(&db->reserve_held, true);
    } else {
        db->reserve_failed_us = db_now_us(); /* a disk whose syncs fail: not 9 MiB written and removed every second */
    }
}

/* Make the reserve if the option asks for one, it is not held, and the disk has room for it and two floors more.
 * Returns the bytes it took. */
static uint64_t reserve_make_if_room(kv_db *db, uint64_t avail, uint64_t total, bool wait) {
    if (!db->opt.space_reserve || db->opt.read_only || atomic_load(&db->reserve_held)) return 0;
    uint64_t floor = db_space_floor(db, total);
    if (floor == 0 || avail / 3 < floor) return 0;
    if (wait) pthread_mutex_lock(&db->reserve_mu);
    else if (pthread_mutex_trylock(&db->reserve_mu) != 0) return 0; /* another thread is making or removing it */
    /* after a failure, a writer tries again a minute later (an open always tries) */
    bool pause = !wait && db->reserve_failed_us && db_now_us() - db->reserve_failed_us < RESERVE_RETRY_US;
    if (!atomic_load(&db->reserve_held) && !pause) reserve_make_locked(db, floor);
    uint64_t made = atomic_load(&db->reserve_bytes);
    pthread_mutex_unlock(&db->reserve_mu);
    return made;
}

void db_reserve_open(kv_db *db) {
    if (db->opt.read_only) return;
    char path[4096], msg[512];
    reserve_path(db, path, sizeof path);
    snprintf(msg, sizeof msg, "%s", kv_errmsg());
    uint64_t size = 0, avail = 0, total = 0;
    bool exists = db->env->file_size(db->env, path, &size) == KV_OK;
    bool known = db->env->disk_space && db->env->disk_space(db->env, db->dir, &avail, &total) == KV_OK;
    /* A reserve shorter than the floor is what a crash while making it left (or a smaller memtable setting then):
     * made again below, when there is room. */
    if (exists && (!db->opt.space_reserve || (known && size < db_space_floor(db, total)))) {
        (void)db->env->remove(db->env, path);
        exists = false;
        if (known) (void)db->env->disk_space(db->env, db->dir, &avail, &total);
    }
    kv_set_error(KV_OK, "%s", msg);
    if (exists) {
        atomic_store(&db->reserve_bytes, size);
        atomic_store(&db->reserve_held, true);
    }
    /* the open itself writes (a manifest, a log, tables of replayed logs): a full disk gets the reserve back first */
    if (known && !db_space_seen(db, avail, total)) (void)reserve_make_if_room(db, avail, total, true);
}

int db_space_for_write(kv_db *db, const kv_batch *b) {
    if (!db->env->disk_space || db->opt.read_only) return KV_OK;
    uint64_t now = db_now_us(), written = atomic_load(&db->st_user_bytes) + atomic_load(&db->st_blob_bytes);
    if (now - atomic_load(&db->space_seen_us) >= 1000000 || written >= atomic_load(&db->space_recheck_at)) {
        /* several threads may look at once: each stores what it saw, all about the same */
        uint64_t avail, total;
        int rc = db->env->disk_space(db->env, db->dir, &avail, &total);
        if (rc == KV_OK && db_space_seen(db, avail, total)) rc = db->env->disk_space(db->env, db->dir, &avail, &total);
        if (rc == KV_OK) {
            uint64_t floor = db_space_floor(db, total), made = reserve_make_if_room(db, avail, total, false);
            avail -= made < avail ? made : avail;
            atomic_store(&db->space_low, avail < floor);
            /* other writers (flushes, compactions, other processes) use the disk too: look again a quarter of the
             * way down to the floor */
            atomic_store(&db->space_recheck_at, written + (avail > floor ? (avail - floor) / 4 : 0));
        } else {
            kv_clear_error(); /* not known: no floor */
            atomic_store(&db->space_low, false);
        }
        atomic_store(&db->space_seen_us, now);
    }
    if (!atomic_load(&db->space_low) || (b && batch_removes_data(b, db->opt.blob_threshold))) return KV_OK;
    return kv_set_error(KV_ENOSPC, "no space left on the disk holding %s: its last bytes are kept for deletes, the "
                        "log and compactions", db->dir);
}
