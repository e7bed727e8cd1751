/*
 * batchlog.c — the batch log (change feed): the committed batches, kept by sequence number.
 *
 * Files BATCHLOG-NNNNNN in the store directory are record logs (wal.h) whose records are the batches' log records
 * (fixed64 sequence first), in increasing sequence order; a new file is started past file_limit (4 MiB, or a quarter
 * of the byte retention) and after
 * a failed append. The first append after an open continues the newest file when it ended cleanly (the reader
 * reached its end: no torn tail, no damage) and its last batch is below the one appended; otherwise it too starts a
 * new file. So records never follow a possibly torn tail, and a store opened many times (one `kvfs put` each) does
 * not collect a file per open.
 *
 * Invariants
 *  - floor: every batch below it counts as evicted, even while a file still holds it. It only grows: by retention
 *    (count: newest - max_batches + 1; bytes: whole oldest files dropped) and by prune; but at the end of recovery,
 *    where one past the store's next batch comes down to it (batchlog_recovered). Pruning is recorded in the
 *    manifest by the caller; retention recomputes at open (count retention at the end of recovery, from the
 *    store's last batch, not from the files' newest, which recovery may forget).
 *  - A file is deleted once every batch in it is below the floor (never the file being written).
 *  - With retention off nothing is written or deleted and every lookup answers KV_EEVICTED.
 *  - One mutex guards everything; the leader appends, readers look up, concurrently.
 *  - Durability: batches are appended without an fsync (every one is also in a write-ahead log until a flush deletes
 *    that log, and the flush calls batchlog_sync first). So batchlog_sync makes durable every batch appended so far:
 *    the file being written, and every file with batches not known to be on disk (unsynced: the newest file found
 *    at open, which an earlier open may have left unsynced, and a file closed (rotated out, or after a failed
 *    append) whose fsync at closing failed). A file leaves that list only when its fsync succeeds. A file is synced
 *    when it is closed, so unless that fsync fails a power loss does not leave a newer file with an older one's
 *    batches lost (a gap).
 *  - No holes: every batch from the oldest retained to the newest can be read (or is reported damaged), never
 *    "evicted" above a batch that is not. A batch whose append failed is *owed*: kept in memory (readable from
 *    there), and appended, in order, before the next batch and by batchlog_sync; later batches queue behind it. Past
 *    OWED_MAX bytes (or more batches than retention keeps) the owed batches are given up: the floor rises past them.
 *    A gap between the batches of the files (seq not newest + 1: retention was off for a while, or batches were
 *    given up) raises the floor to the batch after it, at open and at append, unless damage hides what is there.
 *    So does a gap at the top, found at the end of recovery: the files end before the store's last batch (no log
 *    held the batches after them to append again); the floor then rises past the store's last batch.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_impl.h"
#include "dbformat.h"
#include "error.h"

#define BATCHLOG_FILE_BYTES (4u << 20)
#define BATCHLOG_FILE_MIN_BYTES (64u << 10)
#define OWED_MAX (4u << 20) /* bytes of batches whose append failed, kept for a retry */

typedef struct bl_file {
    uint64_t no, first_seq, last_seq, bytes; /* first_seq, last_seq: of the records before any damage; 0: none */
    bool damaged;                            /* a corrupt record at damage_off ends what can be read */
    bool clean_end;                          /* scanned to its end: no torn tail, no damage (open may continue it) */
    uint64_t damage_off;
    uint64_t gap_after; /* the largest seq in the file more than one above the record before it; 0: none */
} bl_file;

typedef struct bl_owed {
    uint64_t seq;
    size_t len;
    uint8_t *rec;
} bl_owed;

struct batchlog {
    pthread_mutex_t mu;
    kv_env *env;
    char *dir;
    uint64_t max_batches, max_bytes;
    uint64_t floor;
    bl_file *files;
    size_t nfiles, cap;
    wal_writer *w; /* appends to files[nfiles - 1] */
    uint64_t w_no; /* ... which is file w_no */
    bool wrote;    /* a writer was opened since the open: every later one starts a new file */
    uint64_t *unsynced; /* files closed with batches that no fsync has covered yet */
    size_t nunsynced, capunsynced;
    uint64_t next_no;
    uint64_t total_bytes;
    bool read_only;      /* never write or delete (a read-only open) */
    bl_owed *owed;       /* batches whose append failed, in sequence order, all above the files' */
    size_t nowed, capowed;
    uint64_t owed_bytes;
};

static void bl_path(const batchlog *bl, uint64_t no, char *buf, size_t n) {
    snprintf(buf, n, "%s/BATCHLOG-%06" PRIu64, bl->dir, no);
}

bool batchlog_enabled(const batchlog *bl) { return bl && (bl->max_batches || bl->max_bytes); }

/* Scan one file for its sequence range. */
static int scan_file(batchlog *bl, bl_file *f) {
    char path[4096], name[64];
    bl_path(bl, f->no, path, sizeof path);
    snprintf(name, sizeof name, "BATCHLOG-%06" PRIu64, f->no);
    wal_reader *r;
    int rc = wal_reader_open(bl->env, path, name, &r);
    if (rc) return rc;
    const uint8_t *rec;
    size_t len;
    uint64_t off;
    f->first_seq = f->last_seq = f->gap_after = 0;
    f->damaged = false;
    bool bad = false; /* a record the engine cannot have written there (below) */
    while ((rc = wal_read(r, &rec, &len, &off)) == KV_OK) {
        /* A record that passes its checksum is still damage when it cannot be a batch the engine wrote there: no
         * sequence, one above 2^56 (the sequences' width: it raised the floor there, evicting every batch of the
         * feed and every later one), or one not above the record before it (appends go up within a file: it cut the
         * file's range short, and the batches after it, still in the file, read as evicted). */
        uint64_t s = len >= 8 ? get_fixed64(rec) : 0;
        if (len < 8 || s > KV_MAX_SEQUENCE || s == 0 || (f->first_seq && s <= f->last_seq)) {
            bad = true;
            break;
        }
        if (!f->first_seq) f->first_seq = s;
        else if (s > f->last_seq + 1) f->gap_after = s;
        f->last_seq = s;
    }
    f->bytes = bad ? off : wal_reader_valid_end(r);
    f->clean_end = !bad && rc == KV_ENOTFOUND && !wal_reader_torn(r);
    wal_reader_close(r);
    /* A damaged change feed must not keep the store from opening: what follows the damage is unreadable, lookups
     * there answer KV_ECORRUPT (file_upper), and kv_check reports it. */
    if (bad || rc == KV_ECORRUPT) {
        f->damaged = true;
        f->damage_off = f->bytes;
        return KV_OK;
    }
    return rc == KV_ENOTFOUND ? KV_OK : rc;
}

/* The largest sequence files[i] may hold: its last readable one, or, past damage, everything below the next file's
 * first batch (unbounded for the last file). Caller holds mu (or is opening). */
static uint64_t file_upper(const batchlog *bl, size_t i) {
    const bl_file *f = &bl->files[i];
    if (!f->damaged) return f->last_seq;
    for (size_t j = i + 1; j < bl->nfiles; j++)
        if (bl->files[j].first_seq) return bl->files[j].first_seq - 1;
    return UINT64_MAX;
}

static int cmp_file(const void *a, const void *b) {
    const bl_file *x = a, *y = b;
    return x->no < y->no ? -1 : x->no > y->no;
}

static void drop_below_floor(batchlog *bl) {
    size_t keep = 0;
    for (size_t i = 0; i < bl->nfiles; i++) {
        bool active = bl->w && i == bl->nfiles - 1;
        bl_file *f = &bl->files[i];
        if (!active && !bl->read_only && (file_upper(bl, i) < bl->floor || (f->first_seq == 0 && !f->damaged))) {
            char path[4096];
            bl_path(bl, f->no, path, sizeof path);
            bl->env->remove(bl->env, path);
            bl->total_bytes -= f->bytes;
            continue;
        }
        bl->files[keep++] = *f;
    }
    bl->nfiles = keep;
}

int batchlog_open(kv_env *env, const char *dir, uint64_t max_batches, uint64_t max_bytes, uint64_t floor,
                  bool read_only, batchlog **out) {
    batchlog *bl = calloc(1, sizeof *bl);
    if (!bl) return KV_ENOMEM;
    pthread_mutex_init(&bl->mu, NULL);
    bl->env = env;
    bl->dir = strdup(dir);
    bl->max_batches = max_batches;
    bl->max_bytes = max_bytes;
    bl->floor = floor;
    bl->read_only = read_only;
    bl->next_no = 1;
    if (!bl->dir) {
        batchlog_close(bl);
        return KV_ENOMEM;
    }
    char **names;
    size_t n;
    int rc = env->list_dir(env, dir, &names, &n);
    if (rc) {
        batchlog_close(bl);
        return rc;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        if (strncmp(names[i], "BATCHLOG-", 9) != 0) continue;
        uint64_t no = strtoull(names[i] + 9, NULL, 10);
        if (no >= bl->next_no) bl->next_no = no + 1;
        if (!batchlog_enabled(bl)) continue;
        if (bl->nfiles == bl->cap) {
            size_t cap = bl->cap ? bl->cap * 2 : 8;
            bl_file *p = realloc(bl->files, cap * sizeof *p);
            if (!p) { rc = KV_ENOMEM; break; }
            bl->files = p;
            bl->cap = cap;
        }
        bl_file *f = &bl->files[bl->nfiles];
        f->no = no;
        rc = scan_file(bl, f);
        if (!rc) {
            bl->total_bytes += f->bytes;
            bl->nfiles++;
        }
    }
    kv_env_free_names(names, n);
    if (rc) {
        batchlog_close(bl);
        return rc;
    }
    if (bl->nfiles > 1) qsort(bl->files, bl->nfiles, sizeof *bl->files, cmp_file);
    if (batchlog_enabled(bl)) {
        /* A gap (retention was off meanwhile, or batches were given up): what is below it counts as evicted. A file
         * starting at or below the previous one's last batch is no gap: recovery failed to forget batches a torn log
         * lost, the next ones reused their numbers, and lookups prefer the newer file. */
        uint64_t prev = 0;
        for (size_t i = 0; i < bl->nfiles; i++) {
            const bl_file *f = &bl->files[i];
            if (f->first_seq && prev && f->first_seq > prev + 1 && f->first_seq > bl->floor) bl->floor = f->first_seq;
            if (f->gap_after > bl->floor) bl->floor = f->gap_after;
            if (f->last_seq) prev = f->last_seq;
            if (f->damaged) prev = 0; /* what the damage hides is unknown: no gap can be told */
        }
        /* Count retention is applied by batchlog_recovered, from the store's last batch: the files may hold newer
         * ones, which recovery forgets (the batch log reached the disk ahead of the store's log), and counting from
         * them evicted batches that retention keeps. */
        drop_below_floor(bl);
        /* The newest file may hold batches no fsync covered: the open that wrote them ended without one (a crash of
         * the process, a failed fsync at close). Recovery is about to delete the logs behind them, so the
         * batchlog_sync it makes first covers this file too. Older files were synced before a newer one was
         * started (retire_writer). */
        if (!read_only && bl->nfiles > 0) {
            bl->unsynced = malloc(sizeof *bl->unsynced);
            if (!bl->unsynced) {
                batchlog_close(bl);
                return KV_ENOMEM;
            }
            bl->capunsynced = bl->nunsynced = 1;
            bl->unsynced[0] = bl->files[bl->nfiles - 1].no;
        }
    }
    *out = bl;
    return KV_OK;
}

/* Free owed[from, from + n) and close the gap. */
static void drop_owed(batchlog *bl, size_t from, size_t n) {
    if (n == 0) return; /* owed may be NULL */
    for (size_t i = from; i < from + n; i++) {
        bl->owed_bytes -= bl->owed[i].len;
        free(bl->owed[i].rec);
    }
    memmove(bl->owed + from, bl->owed + from + n, (bl->nowed - from - n) * sizeof *bl->owed);
    bl->nowed -= n;
}

static void free_owed(batchlog *bl, size_t from) { drop_owed(bl, from, bl->nowed - from); }

void batchlog_close(batchlog *bl) {
    if (!bl) return;
    free_owed(bl, 0);
    free(bl->owed);
    if (bl->w) wal_writer_close(bl->w);
    pthread_mutex_destroy(&bl->mu);
    free(bl->unsynced);
    free(bl->files);
    free(bl->dir);
    free(bl);
}

uint64_t batchlog_newest(const batchlog *bl) {
    if (bl->nowed) return bl->owed[bl->nowed - 1].seq;
    for (size_t i = bl->nfiles; i > 0; i--)
        if (bl->files[i - 1].last_seq) return bl->files[i - 1].last_seq;
    return 0;
}

/* Close the file being written, synced first, so that a power loss cannot take batches from an older file and leave
 * a newer one (a gap, which raises the floor over batches the write-ahead log still holds); one fsync per 4 MiB.
 * If that fsync fails, its batches are synced by the next batchlog_sync (caller holds mu). Out of memory for the
 * list: synced here once more, as the only way left. */
static void retire_writer(batchlog *bl) {
    if (!bl->w) return;
    if (wal_sync(bl->w) == KV_OK) {
        for (size_t i = 0; i < bl->nunsynced; i++)
            if (bl->unsynced[i] == bl->w_no) bl->unsynced[i--] = bl->unsynced[--bl->nunsynced];
        wal_writer_close(bl->w);
        bl->w = NULL;
        return;
    }
    bool listed = false;
    for (size_t i = 0; i < bl->nunsynced && !listed; i++) listed = bl->unsynced[i] == bl->w_no;
    if (!listed && bl->nunsynced == bl->capunsynced) {
        size_t cap = bl->capunsynced ? bl->capunsynced * 2 : 4;
        uint64_t *p = realloc(bl->unsynced, cap * sizeof *p);
        if (p) {
            bl->unsynced = p;
            bl->capunsynced = cap;
        }
    }
    if (!listed && bl->nunsynced < bl->capunsynced) bl->unsynced[bl->nunsynced++] = bl->w_no;
    else if (!listed) (void)wal_sync(bl->w);
    wal_writer_close(bl->w);
    bl->w = NULL;
}

static int start_file(batchlog *bl) {
    if (bl->nfiles == bl->cap) {
        size_t cap = bl->cap ? bl->cap * 2 : 8;
        bl_file *p = realloc(bl->files, cap * sizeof *p);
        if (!p) return KV_ENOMEM;
        bl->files = p;
        bl->cap = cap;
    }
    char path[4096];
    uint64_t no = bl->next_no++;
    bl_path(bl, no, path, sizeof path);
    wal_writer *w;
    int rc = wal_writer_open(bl->env, path, &w);
    if (rc) return rc;
    retire_writer(bl);
    bl->w = w;
    bl->w_no = no;
    bl->wrote = true;
    bl->files[bl->nfiles++] = (bl_file){.no = no};
    return KV_OK;
}

/* Where a file ends: BATCHLOG_FILE_BYTES, or a quarter of max_bytes (at least BATCHLOG_FILE_MIN_BYTES) when that is
 * smaller. Retention by bytes drops whole files and never the one being written, so the files on disk reach
 * max_bytes and the file being written: with 4 MiB files a 1 MiB limit kept up to 5 MiB (a store on a small disk). */
static uint64_t file_limit(const batchlog *bl) {
    uint64_t q = bl->max_bytes / 4;
    if (!bl->max_bytes || q >= BATCHLOG_FILE_BYTES) return BATCHLOG_FILE_BYTES;
    return q < BATCHLOG_FILE_MIN_BYTES ? BATCHLOG_FILE_MIN_BYTES : q;
}

/* The first writer since the open: continue the newest file if it ended cleanly, has room, and holds only batches
 * below seq (a failed forgetting makes the next batches reuse numbers: those go to a new file); else a new file. A
 * file that cannot be reopened is left as it is (caller holds mu). */
static int continue_or_start_file(batchlog *bl, uint64_t seq) {
    bl_file *f = bl->nfiles ? &bl->files[bl->nfiles - 1] : NULL;
    if (f && f->clean_end && !f->damaged && f->bytes < file_limit(bl) && f->last_seq < seq) {
        char path[4096];
        bl_path(bl, f->no, path, sizeof path);
        wal_writer *w;
        if (wal_writer_reopen(bl->env, path, f->bytes, &w) == KV_OK) {
            bl->w = w;
            bl->w_no = f->no;
            bl->wrote = true;
            return KV_OK;
        }
    }
    return start_file(bl);
}

/* The newest batch the files hold (0: none), and in *hidden whether damage may hide newer ones (caller holds mu). */
static uint64_t files_newest(const batchlog *bl, bool *hidden) {
    uint64_t newest = 0;
    *hidden = false;
    for (size_t i = bl->nfiles; i > 0 && !newest; i--) {
        const bl_file *g = &bl->files[i - 1];
        newest = g->last_seq;
        *hidden = *hidden || g->damaged;
    }
    return newest;
}

/* Append one batch to the files (caller holds mu, and nothing is owed). */
static int append_to_file(batchlog *bl, uint64_t seq, const void *rec, size_t len) {
    int rc = KV_OK;
    if (!bl->w && !bl->wrote) rc = continue_or_start_file(bl, seq);
    else if (!bl->w || wal_writer_size(bl->w) >= file_limit(bl)) rc = start_file(bl);
    if (!rc) rc = wal_append(bl->w, rec, len);
    if (!rc) {
        /* the newest batch before this one, and whether damage hides what may lie between */
        bool hidden;
        uint64_t newest = files_newest(bl, &hidden);
        if (newest && !hidden && seq > newest + 1 && seq > bl->floor) bl->floor = seq; /* a gap: no holes */
        bl_file *f = &bl->files[bl->nfiles - 1];
        if (!f->first_seq) f->first_seq = seq;
        f->last_seq = seq;
        f->bytes += len + WAL_HEADER;
        bl->total_bytes += len + WAL_HEADER;
        if (bl->max_batches && seq >= bl->max_batches && seq + 1 - bl->max_batches > bl->floor)
            bl->floor = seq + 1 - bl->max_batches;
        while (bl->max_bytes && bl->total_bytes > bl->max_bytes && bl->nfiles > 1) {
            /* past what a damaged file may hold, not just its last readable batch: else it would never go */
            uint64_t upper = file_upper(bl, 0); /* finite: the last file holds this batch */
            /* Never past the batch just appended: an older file that holds it, or a later one (a foreign or damaged
             * file, or numbers reused after a failed forgetting), stays, over the byte limit, rather than evict it
             * as it commits. */
            if (upper >= seq) break;
            if (upper + 1 > bl->floor) bl->floor = upper + 1;
            drop_below_floor(bl);
        }
        drop_below_floor(bl);
    } else if (bl->w) {
        /* never append after a partial record: the next append starts a new file. One that holds no batch goes,
         * else a full disk left one empty file per failed append. */
        bl_file *f = &bl->files[bl->nfiles - 1];
        if (f->no == bl->w_no && f->bytes == 0 && !f->first_seq) {
            char path[4096];
            bl_path(bl, f->no, path, sizeof path);
            wal_writer_close(bl->w);
            bl->w = NULL;
            for (size_t i = 0; i < bl->nunsynced; i++)
                if (bl->unsynced[i] == f->no) bl->unsynced[i--] = bl->unsynced[--bl->nunsynced];
            if (bl->env->remove(bl->env, path) == KV_OK) bl->nfiles--;
        } else {
            retire_writer(bl);
        }
    }
    return rc;
}

/* Append the owed batches, oldest first; those that fail stay owed (caller holds mu). */
static int append_owed(batchlog *bl) {
    size_t done = 0;
    int rc = KV_OK;
    while (done < bl->nowed && !rc) {
        bl_owed *o = &bl->owed[done];
        rc = append_to_file(bl, o->seq, o->rec, o->len);
        if (!rc) done++;
    }
    drop_owed(bl, 0, done);
    return rc;
}

/* Give up the owed batches, and upto (when not 0) every batch up to it: the floor rises past them, so the feed
 * answers "evicted" for them and for everything before, and stays without holes (caller holds mu). */
static void give_up_owed(batchlog *bl, uint64_t upto) {
    if (bl->nowed && bl->owed[bl->nowed - 1].seq > upto) upto = bl->owed[bl->nowed - 1].seq;
    free_owed(bl, 0);
    if (upto + 1 > bl->floor) bl->floor = upto + 1;
    drop_below_floor(bl);
}

/* Keep a batch whose append failed (caller holds mu): false when it cannot be kept (memory, or OWED_MAX). */
static bool owe(batchlog *bl, uint64_t seq, const void *rec, size_t len) {
    if (bl->owed_bytes + len > OWED_MAX || (bl->max_bytes && bl->owed_bytes + len > bl->max_bytes) ||
        (bl->max_batches && bl->nowed + 1 > bl->max_batches))
        return false;
    if (bl->nowed == bl->capowed) {
        size_t cap = bl->capowed ? bl->capowed * 2 : 4;
        bl_owed *p = realloc(bl->owed, cap * sizeof *p);
        if (!p) return false;
        bl->owed = p;
        bl->capowed = cap;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return false;
    memcpy(copy, rec, len);
    bl->owed[bl->nowed++] = (bl_owed){seq, len, copy};
    bl->owed_bytes += len;
    return true;
}

/* A read-only open replays logs whose batches the files may lack, and cannot append them: it keeps them as owed,
 * in memory, for lookups (never appended; bounded and given up as owed batches are), after a gap as at append. */
static void keep_read_only(batchlog *bl, uint64_t seq, const void *rec, size_t len) {
    bool hidden = false;
    uint64_t prev = bl->nowed ? bl->owed[bl->nowed - 1].seq : files_newest(bl, &hidden);
    if (prev && !hidden && seq > prev + 1 && seq > bl->floor) {
        bl->floor = seq;
        free_owed(bl, 0);
    }
    if (!owe(bl, seq, rec, len)) give_up_owed(bl, seq);
}

int batchlog_append(batchlog *bl, uint64_t seq, const void *rec, size_t len) {
    if (!batchlog_enabled(bl)) return KV_OK;
    pthread_mutex_lock(&bl->mu);
    if (bl->read_only) {
        keep_read_only(bl, seq, rec, len);
        pthread_mutex_unlock(&bl->mu);
        return KV_OK;
    }
    int rc = bl->nowed ? append_owed(bl) : KV_OK; /* in order: a batch never goes before one owed */
    if (!rc) rc = append_to_file(bl, seq, rec, len);
    if (rc && !owe(bl, seq, rec, len)) give_up_owed(bl, seq);
    pthread_mutex_unlock(&bl->mu);
    return rc;
}

int batchlog_forget_after(batchlog *bl, uint64_t seq) {
    if (!batchlog_enabled(bl) || bl->read_only) return KV_OK;
    pthread_mutex_lock(&bl->mu);
    int rc = KV_OK;
    size_t keep = 0;
    while (keep < bl->nowed && bl->owed[keep].seq <= seq) keep++;
    free_owed(bl, keep);
    while (bl->nfiles > 0 && rc == KV_OK) {
        bl_file *f = &bl->files[bl->nfiles - 1];
        if (f->last_seq <= seq) break;
        retire_writer(bl); /* the file being written: the next append starts a new one */
        char path[4096], name[64];
        bl_path(bl, f->no, path, sizeof path);
        if (f->first_seq > seq) {
            rc = bl->env->remove(bl->env, path);
            if (rc == KV_OK || rc == KV_ENOTFOUND) {
                rc = KV_OK;
                bl->total_bytes -= f->bytes;
                bl->nfiles--;
            }
            continue;
        }
        /* seq is inside this file: cut it before the first record above seq */
        snprintf(name, sizeof name, "BATCHLOG-%06" PRIu64, f->no);
        wal_reader *r;
        rc = wal_reader_open(bl->env, path, name, &r);
        if (rc) break;
        const uint8_t *rec;
        size_t len;
        uint64_t off, cut = 0, last = 0;
        bool found = false;
        while (wal_read(r, &rec, &len, &off) == KV_OK) {
            uint64_t s = len >= 8 ? get_fixed64(rec) : 0;
            if (s > seq) {
                cut = off;
                found = true;
                break;
            }
            if (s) last = s;
        }
        wal_reader_close(r);
        if (found) rc = bl->env->truncate(bl->env, path, cut);
        if (rc == KV_OK && found) {
            bl->total_bytes -= f->bytes - cut;
            f->bytes = cut;
            f->last_seq = last;
            if (!last) f->first_seq = 0;
        }
        break;
    }
    pthread_mutex_unlock(&bl->mu);
    return rc;
}

void batchlog_recovered(batchlog *bl, uint64_t last) {
    if (!batchlog_enabled(bl)) return;
    pthread_mutex_lock(&bl->mu);
    /* A floor past the store's next batch evicts the next batches as they commit. The open raises it so when a gap
     * in the files leads to a batch the store does not have: the feed was off for a while, then a power loss took the
     * last batches from the store's log but not from the batch log (recovery forgets them: their numbers go to the
     * next batches), or a record of another store, or damage. The floor comes down to the store's next batch:
     * every batch the store has is then evicted (no holes), none of those to come. (A prune never sets it higher:
     * kv_prune_batch_log.) */
    if (bl->floor > last + 1) bl->floor = last + 1;
    if (bl->max_batches && last >= bl->max_batches && last + 1 - bl->max_batches > bl->floor) {
        bl->floor = last + 1 - bl->max_batches;
        drop_below_floor(bl);
    }
    bool hidden = false;
    uint64_t newest = bl->nowed ? bl->owed[bl->nowed - 1].seq : files_newest(bl, &hidden);
    if (newest < last && !hidden && last + 1 > bl->floor) {
        bl->floor = last + 1;
        free_owed(bl, 0);
        drop_below_floor(bl);
    }
    pthread_mutex_unlock(&bl->mu);
}

int batchlog_sync(batchlog *bl) {
    if (!bl || bl->read_only) return KV_OK; /* nothing written; owed batches there are never appended */
    pthread_mutex_lock(&bl->mu);
    /* The owed batches are in a log that the caller may delete once this returns: append them now, or give them up
     * (the store goes on; the feed says "evicted" for them and what came before). */
    if (bl->nowed && append_owed(bl) != KV_OK) give_up_owed(bl, 0);
    int rc = KV_OK;
    while (!rc && bl->nunsynced > 0) {
        char path[4096];
        bl_path(bl, bl->unsynced[bl->nunsynced - 1], path, sizeof path);
        kv_file *f;
        rc = bl->env->open_read(bl->env, path, &f); /* not open_append: that would recreate a deleted file */
        if (!rc) {
            rc = bl->env->sync(bl->env, f);
            bl->env->close(bl->env, f);
        }
        if (rc == KV_ENOTFOUND) rc = KV_OK; /* deleted: its batches were evicted */
        if (!rc) bl->nunsynced--;
    }
    if (!rc && bl->w) rc = wal_sync(bl->w);
    pthread_mutex_unlock(&bl->mu);
    return rc;
}

static int decode_batch(const uint8_t *rec, size_t len, const char *name, uint64_t off, kv_logged_batch **out) {
    uint64_t seq;
    int64_t ts;
    size_t count;
    const uint8_t *p, *lim = rec + len;
    int rc = batch_record_decode(rec, len, &seq, &ts, &count, &p, name, off);
    if (rc) return rc;
    kv_logged_batch *b = calloc(1, sizeof *b);
    if (!b) return KV_ENOMEM;
    b->sequence = seq;
    b->timestamp_ms = ts;
    b->ops = calloc(count ? count : 1, sizeof *b->ops);
    if (!b->ops) {
        free(b);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < count; i++) {
        resolved_op op;
        p = batch_record_next_op(p, lim, &op);
        if (!p) {
            kv_logged_batch_free(b);
            return kv_set_error(KV_ECORRUPT, "%s: malformed batch record at offset %" PRIu64, name, off);
        }
        /* Every key is checked when it is added to a batch: a longer one is damage, not a key to hand out. */
        if (op.ulen - 1 > KV_MAX_KEY) {
            kv_logged_batch_free(b);
            return kv_set_error(KV_ECORRUPT, "%s: batch record at offset %" PRIu64 " has a key of %zu bytes, longer "
                                "than %u", name, off, op.ulen - 1, KV_MAX_KEY);
        }
        kv_logged_op *o = &b->ops[b->nops++];
        o->type = op.type == KV_TYPE_DELETE ? KV_OP_DELETE : KV_OP_PUT;
        o->keyspace = op.ukey[0];
        o->klen = op.ulen - 1;
        o->key = malloc(o->klen);
        if (!o->key) {
            kv_logged_batch_free(b);
            return KV_ENOMEM;
        }
        memcpy(o->key, op.ukey + 1, o->klen);
        if (op.type == KV_TYPE_VALUE) {
            o->vlen = op.plen;
            o->val = malloc(op.plen ? op.plen : 1);
            if (!o->val) {
                kv_logged_batch_free(b);
                return KV_ENOMEM;
            }
            memcpy(o->val, op.payload, op.plen);
        } else if (op.type == KV_TYPE_BLOB) {
            o->external = true;
            uint64_t size = 0;
            get_varint64(op.payload, op.payload + op.plen, &size);
            o->vlen = size;
        }
    }
    if (p != lim) {
        kv_logged_batch_free(b);
        return kv_set_error(KV_ECORRUPT, "%s: batch record at offset %" PRIu64 " has bytes after its last operation",
                            name, off);
    }
    *out = b;
    return KV_OK;
}

void kv_logged_batch_free(kv_logged_batch *b) {
    if (!b) return;
    for (size_t i = 0; i < b->nops; i++) {
        free(b->ops[i].key);
        free(b->ops[i].val);
    }
    free(b->ops);
    free(b);
}

int batchlog_get(batchlog *bl, uint64_t seq, kv_logged_batch **out) {
    if (!batchlog_enabled(bl)) return kv_set_error(KV_EEVICTED, "the batch log is off");
    pthread_mutex_lock(&bl->mu);
    for (size_t i = 0; i < bl->nowed && seq >= bl->floor; i++)
        if (bl->owed[i].seq == seq) { /* its append failed: served from memory until it is appended */
            int rc = decode_batch(bl->owed[i].rec, bl->owed[i].len, "(batch log, in memory)", 0, out);
            pthread_mutex_unlock(&bl->mu);
            return rc;
        }
    int rc = KV_EEVICTED;
    bl_file *f = NULL;
    for (size_t i = 0; i < bl->nfiles; i++)
        if (bl->files[i].first_seq && bl->files[i].first_seq <= seq && seq <= bl->files[i].last_seq) f = &bl->files[i];
    if (!f && seq >= bl->floor) {
        /* past the damage in a file: the batch may be there, unreadable; never answer "evicted" for it */
        uint64_t below = 0; /* the largest sequence readable before file i */
        for (size_t i = 0; i < bl->nfiles; i++) {
            const bl_file *d = &bl->files[i];
            uint64_t lo = d->last_seq ? d->last_seq : below;
            if (d->damaged && seq > lo && seq <= file_upper(bl, i)) {
                char name[64];
                snprintf(name, sizeof name, "BATCHLOG-%06" PRIu64, d->no);
                uint64_t off = d->damage_off;
                pthread_mutex_unlock(&bl->mu);
                return kv_set_error(KV_ECORRUPT, "%s: batch %" PRIu64 " lies past a corrupt record at offset %" PRIu64,
                                    name, seq, off);
            }
            if (d->last_seq) below = d->last_seq;
        }
    }
    if (seq < bl->floor || !f) {
        uint64_t oldest = 0;
        pthread_mutex_unlock(&bl->mu);
        batchlog_oldest(bl, &oldest);
        return kv_set_error(KV_EEVICTED, "batch %" PRIu64 " is evicted; the oldest retained is %" PRIu64, seq, oldest);
    }
    char path[4096], name[64];
    bl_path(bl, f->no, path, sizeof path);
    snprintf(name, sizeof name, "BATCHLOG-%06" PRIu64, f->no);
    pthread_mutex_unlock(&bl->mu);
    wal_reader *r;
    rc = wal_reader_open(bl->env, path, name, &r);
    if (rc) return rc == KV_ENOTFOUND ? kv_set_error(KV_EEVICTED, "batch %" PRIu64 " is evicted", seq) : rc;
    const uint8_t *rec;
    size_t len;
    uint64_t off;
    rc = KV_EEVICTED;
    int r2;
    while ((r2 = wal_read(r, &rec, &len, &off)) == KV_OK) {
        if (len >= 8 && get_fixed64(rec) == seq) {
            rc = decode_batch(rec, len, name, off, out);
            break;
        }
    }
    if (r2 != KV_OK && r2 != KV_ENOTFOUND) rc = r2;
    wal_reader_close(r);
    if (rc == KV_EEVICTED) kv_set_error(rc, "batch %" PRIu64 " is not in the batch log", seq);
    return rc;
}

/* batchlog_oldest of an enabled log, without a message: KV_OK or KV_ENOTFOUND (empty) */
static int find_oldest(batchlog *bl, uint64_t *seq) {
    pthread_mutex_lock(&bl->mu);
    int rc = KV_ENOTFOUND;
    for (size_t i = 0; i < bl->nfiles; i++) {
        bl_file *f = &bl->files[i];
        if (!f->first_seq || f->last_seq < bl->floor) continue;
        *seq = f->first_seq > bl->floor ? f->first_seq : bl->floor;
        rc = KV_OK;
        break;
    }
    if (rc != KV_OK && bl->nowed) { /* every batch in the files is evicted: the oldest is owed */
        *seq = bl->owed[0].seq > bl->floor ? bl->owed[0].seq : bl->floor;
        rc = KV_OK;
    }
    pthread_mutex_unlock(&bl->mu);
    return rc;
}

int batchlog_oldest(batchlog *bl, uint64_t *seq) {
    if (!batchlog_enabled(bl)) return kv_set_error(KV_ENOTFOUND, "the batch log is off");
    return find_oldest(bl, seq) == KV_OK ? KV_OK : kv_set_error(KV_ENOTFOUND, "the batch log is empty");
}

int batchlog_prune(batchlog *bl, uint64_t cutoff) {
    if (!batchlog_enabled(bl)) return KV_OK;
    pthread_mutex_lock(&bl->mu);
    if (cutoff > bl->floor) bl->floor = cutoff;
    size_t below = 0;
    while (below < bl->nowed && bl->owed[below].seq < bl->floor) below++;
    drop_owed(bl, 0, below);
    drop_below_floor(bl);
    pthread_mutex_unlock(&bl->mu);
    return KV_OK;
}

void batchlog_range(batchlog *bl, uint64_t *oldest, uint64_t *newest) {
    *oldest = *newest = 0;
    if (!batchlog_enabled(bl)) return;
    if (find_oldest(bl, oldest) != KV_OK) { /* kv_get_stats: no failure, no message */
        *oldest = 0;
        return;
    }
    pthread_mutex_lock(&bl->mu);
    *newest = batchlog_newest(bl);
    pthread_mutex_unlock(&bl->mu);
    /* The oldest retained past the newest: what is retained lies in an older file than the newest, above the store's
     * batches (a read-only open, which cannot forget them, after a gap to a batch the store does not have: the floor
     * came down to the store's next batch, batchlog_recovered). None of the store's batches is retained. */
    if (*oldest > *newest) *oldest = *newest = 0;
}

int batchlog_files(batchlog *bl, char ***names, size_t *n) {
    pthread_mutex_lock(&bl->mu);
    *n = 0;
    *names = calloc(bl->nfiles + 1, sizeof(char *));
    int rc = *names ? KV_OK : KV_ENOMEM;
    for (size_t i = 0; i < bl->nfiles && !rc; i++) {
        char name[64];
        snprintf(name, sizeof name, "BATCHLOG-%06" PRIu64, bl->files[i].no);
        if (!((*names)[(*n)++] = strdup(name))) rc = KV_ENOMEM;
    }
    pthread_mutex_unlock(&bl->mu);
    return rc;
}

int batchlog_check(batchlog *bl, kv_problem_fn cb, void *ctx, uint64_t *problems) {
    char **names;
    size_t n;
    int rc = batchlog_files(bl, &names, &n);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", bl->dir, names[i]);
        wal_reader *r;
        if (wal_reader_open(bl->env, path, names[i], &r) != KV_OK) continue; /* pruned meanwhile */
        const uint8_t *rec;
        size_t len;
        uint64_t off, prev = 0;
        int r2;
        while ((r2 = wal_read(r, &rec, &len, &off)) == KV_OK) {
            kv_logged_batch *b = NULL;
            if (decode_batch(rec, len, names[i], off, &b) != KV_OK) {
                (*problems)++;
                if (cb) cb(ctx, names[i], off, "malformed batch record");
            } else {
                if (b->sequence <= prev) {
                    (*problems)++;
                    if (cb) cb(ctx, names[i], off, "batch sequence numbers out of order");
                }
                prev = b->sequence;
                kv_logged_batch_free(b);
            }
        }
        if (r2 == KV_ECORRUPT) {
            (*problems)++;
            if (cb) cb(ctx, names[i], 0, kv_errmsg());
        }
        wal_reader_close(r);
    }
    kv_env_free_names(names, n);
    return KV_OK;
}
