/*
 * tools_admin.c — maintenance and history commands: stats, compact, check, checkpoint, changes, prune.
 *
 * Invariants
 *  - Long operations (compact, check, checkpoint) report progress through tool_progress, which draws a bar only on
 *    a terminal and stops the engine operation (KV_EINTERRUPTED, nothing half-done) when the command is cancelled.
 *  - `changes` prints batches in sequence order, each once, and fails rather than skip silently: a batch that
 *    should be shown but was pruned is an "evicted" error naming the oldest batch still retained. That holds across
 *    daemons too: `--follow` run by a daemon that stops says where its output got, to the byte (tools_serve), and
 *    the client goes on from there.
 *  - Only keyspace 0 (the user's keys) is shown; other keyspaces hold the filesystem's attributes.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include "keyfmt.h"
#include "mountinfo.h"
#include "tools.h"

/* ---- stats ---------------------------------------------------------------------------------------------------- */

static const char *human(char *buf, size_t n, uint64_t bytes) {
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 5) v /= 1024, u++;
    if (u == 0) snprintf(buf, n, "%" PRIu64 " B", bytes);
    else snprintf(buf, n, "%.1f %s", v, unit[u]);
    return buf;
}

int cmd_stats(tool_ctx *c, const targs *a) {
    kv_stats st;
    int rc = kv_get_stats(c->db, &st);
    if (rc) return tool_kv_error(c, rc, "stats");
    uint64_t lookups = st.cache_hits + st.cache_misses;
    double hit_rate = lookups ? (double)st.cache_hits / (double)lookups : 0.0;
    double wa = isfinite(st.write_amplification) ? st.write_amplification : 0.0;
    tout *o = &c->out;
    if (a->seen & OPT_JSON) {
        tout_printf(o, "{\"estimated_keys\":%" PRIu64 ",\"last_sequence\":%" PRIu64 ",", st.estimated_keys,
                    st.last_sequence);
        tout_printf(o, "\"batch_log\":{\"oldest\":%" PRIu64 ",\"newest\":%" PRIu64 "},", st.batch_log_oldest,
                    st.batch_log_newest);
        tout_printf(o, "\"memtable_bytes\":%" PRIu64 ",\"immutable_memtables\":%" PRIu64 ",\"levels\":[",
                    st.memtable_bytes, st.immutable_memtables);
        for (int l = 0; l < KV_MAX_LEVELS; l++)
            tout_printf(o, "%s{\"level\":%d,\"files\":%" PRIu64 ",\"bytes\":%" PRIu64 "}", l ? "," : "", l,
                        st.level_files[l], st.level_bytes[l]);
        tout_printf(o, "],\"blob\":{\"files\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"garbage_bytes\":", st.blob_files,
                    st.blob_bytes);
        if (st.blob_garbage_known) tout_printf(o, "%" PRIu64 "},", st.blob_garbage_bytes);
        else tout_printf(o, "null},"); /* not measured: no garbage collection has run in this process */
        tout_printf(o, "\"disk_bytes\":%" PRIu64 ",\"reserve\":{\"bytes\":%" PRIu64 ",\"releases\":%" PRIu64 "},",
                    st.disk_bytes, st.reserve_bytes, st.reserve_releases);
        tout_printf(o, "\"cache\":{\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"hit_rate\":%.4f,\"bytes\":%" PRIu64
                       ",\"capacity\":%" PRIu64 "},",
                    st.cache_hits, st.cache_misses, hit_rate, st.cache_bytes, st.cache_capacity);
        tout_printf(o, "\"write_amplification\":%.3f,\"user_bytes_written\":%" PRIu64 ",\"wal_bytes_written\":%" PRIu64
                       ",\"flush_bytes_written\":%" PRIu64 ",\"compaction_bytes_written\":%" PRIu64
                       ",\"compaction_bytes_read\":%" PRIu64 ",\"blob_bytes_written\":%" PRIu64 ",",
                    wa, st.user_bytes_written, st.wal_bytes_written, st.flush_bytes_written,
                    st.compaction_bytes_written, st.compaction_bytes_read, st.blob_bytes_written);
        tout_printf(o, "\"flushes\":%" PRIu64 ",\"compactions\":%" PRIu64 ",\"stall_micros\":%" PRIu64
                       ",\"unsynced_batches_dropped\":%" PRIu64 ",\"unsynced_log_bytes_dropped\":%" PRIu64
                       ",\"blob_gc_failures\":%" PRIu64 ",\"flush_failures\":%" PRIu64
                       ",\"compaction_failures\":%" PRIu64 ",",
                    st.flushes, st.compactions, st.stall_micros, st.unsynced_batches_dropped,
                    st.unsynced_log_bytes_dropped, st.blob_gc_failures, st.flush_failures, st.compaction_failures);
        /* the status names are fixed ASCII strings: no escaping needed */
        if (st.flush_error) tout_printf(o, "\"flush_error\":\"%s\",", kv_strerror(st.flush_error));
        else tout_str(o, "\"flush_error\":null,");
        if (st.compaction_error) tout_printf(o, "\"compaction_error\":\"%s\"}\n", kv_strerror(st.compaction_error));
        else tout_str(o, "\"compaction_error\":null}\n");
        return TOOL_OK;
    }
    char h1[32], h2[32], h3[32];
    tout_printf(o, "%-22s %" PRIu64 "\n", "keys (estimated)", st.estimated_keys);
    tout_printf(o, "%-22s %" PRIu64 "\n", "last sequence", st.last_sequence);
    if (st.batch_log_newest)
        tout_printf(o, "%-22s %" PRIu64 "..%" PRIu64 "\n", "batch log", st.batch_log_oldest, st.batch_log_newest);
    else
        tout_printf(o, "%-22s empty or off\n", "batch log");
    tout_printf(o, "%-22s %s (%" PRIu64 " immutable)\n", "memtable", human(h1, sizeof h1, st.memtable_bytes),
                st.immutable_memtables);
    for (int l = 0; l < KV_MAX_LEVELS; l++) {
        char name[24];
        snprintf(name, sizeof name, "level %d", l);
        tout_printf(o, "%-22s %" PRIu64 " files, %s\n", name, st.level_files[l], human(h1, sizeof h1, st.level_bytes[l]));
    }
    if (st.blob_garbage_known)
        tout_printf(o, "%-22s %" PRIu64 " files, %s (%s garbage at the last collection)\n", "blob files", st.blob_files,
                    human(h1, sizeof h1, st.blob_bytes), human(h2, sizeof h2, st.blob_garbage_bytes));
    else
        tout_printf(o, "%-22s %" PRIu64 " files, %s (garbage not measured yet)\n", "blob files", st.blob_files,
                    human(h1, sizeof h1, st.blob_bytes));
    tout_printf(o, "%-22s %s\n", "on disk", human(h1, sizeof h1, st.disk_bytes));
    if (st.reserve_bytes || st.reserve_releases)
        tout_printf(o, "%-22s %s held for deletes on a full disk (given back %" PRIu64 " times since the mount)\n",
                    "space reserve", human(h1, sizeof h1, st.reserve_bytes), st.reserve_releases);
    tout_printf(o, "%-22s %.1f%% hit rate (%" PRIu64 " hits, %" PRIu64 " misses), %s of %s\n", "block cache",
                hit_rate * 100, st.cache_hits, st.cache_misses, human(h1, sizeof h1, st.cache_bytes),
                human(h3, sizeof h3, st.cache_capacity));
    tout_printf(o, "%-22s %.2f\n", "write amplification", wa);
    tout_printf(o, "%-22s %" PRIu64 " flushes, %" PRIu64 " compactions, %.3f s stalled\n", "background work",
                st.flushes, st.compactions, (double)st.stall_micros / 1e6);
    if (st.unsynced_batches_dropped) /* only after a power loss: worth a line then */
        tout_printf(o, "%-22s %" PRIu64 " unsynced batches whose blob bytes a power loss took\n", "dropped at open",
                    st.unsynced_batches_dropped);
    if (st.unsynced_log_bytes_dropped)
        tout_printf(o, "%-22s %s of the log after a page a power loss took (never synced)\n", "dropped at open",
                    human(h1, sizeof h1, st.unsynced_log_bytes_dropped));
    /* Background work that keeps failing is retried for ever, and writes stop once level 0 or the memtables fill
     * up: worth a line while it lasts (a full disk, or damage that kvfs check names). */
    if (st.flush_error)
        tout_printf(o, "%-22s failing: %s (%" PRIu64 " failures since the store was opened)\n", "flushes",
                    kv_strerror(st.flush_error), st.flush_failures);
    if (st.compaction_error)
        tout_printf(o, "%-22s failing: %s (%" PRIu64 " failures since the store was opened)\n", "compactions",
                    kv_strerror(st.compaction_error), st.compaction_failures);
    if (st.blob_gc_failures) /* damage stops blob GC (docs/design.md): say so, kvfs check names it */
        tout_printf(o, "%-22s %" PRIu64 " background runs failed: run kvfs check\n", "blob gc",
                    st.blob_gc_failures);
    return TOOL_OK;
}

/* ---- compact, check, checkpoint, prune ------------------------------------------------------------------------ */

/* kvfs compact copies the live values out of a blob file more than half garbage (the engine's default ratio). */
#define KVFS_COMPACT_GC_RATIO 0.5

int cmd_compact(tool_ctx *c, const targs *a) {
    c->progress_label = "compact";
    bool s = a->seen & OPT_START, e = a->seen & OPT_END;
    int rc = kv_compact_range(c->db, s ? a->start.p : NULL, s ? a->start.n : 0, e ? a->end.p : NULL,
                              e ? a->end.n : 0, tool_progress, c);
    tool_progress_done(c);
    if (rc) return tool_kv_error(c, rc, "%s: compact", c->datadir);
    /* the whole store: also the blob files of large values deleted or overwritten (a short-lived tool's store never
     * stays open long enough for the background's pass) */
    if (!s && !e && (rc = kv_blob_gc(c->db, KVFS_COMPACT_GC_RATIO)) != KV_OK)
        return tool_kv_error(c, rc, "%s: compact: blob garbage collection", c->datadir);
    return TOOL_OK;
}

static void on_problem(void *arg, const char *file, uint64_t offset, const char *what) {
    tool_ctx *c = arg;
    tool_progress_done(c); /* the bar comes back on the next update */
    tout_printf(&c->out, "%s: offset %" PRIu64 ": %s\n", file ? file : "?", offset, what ? what : "problem");
    tout_flush(&c->out);
}

int cmd_check(tool_ctx *c, const targs *a) {
    (void)a;
    c->progress_label = "check";
    uint64_t problems = 0;
    int rc = kv_check(c->db, on_problem, tool_progress, c, &problems);
    tool_progress_done(c);
    if (rc == KV_OK && problems == 0) {
        tout_printf(&c->out, "no problems found\n");
        return TOOL_OK;
    }
    if (rc == KV_ECORRUPT || (rc == KV_OK && problems))
        return tool_error(c, "%s: %" PRIu64 " problem%s found", c->datadir, problems, problems == 1 ? "" : "s");
    return tool_kv_error(c, rc, "%s: check", c->datadir);
}

/* Whether dest (or, when it does not exist yet, the nearest directory above it that does) lies on a kvfs mount of
 * datadir (mountinfo: type fuse.kvfs, source datadir, the same device); its mount point goes to mp. Such a checkpoint
 * would be written into the store it copies, and by the daemon serving the mount: its writes through the mount wait
 * for the write queue the checkpoint holds, a deadlock that leaves the mount hung. */
static bool in_mount_of_store(const char *datadir, const char *dest, char *mp, size_t mpn) {
    char real[PATH_MAX], path[PATH_MAX];
    if (!realpath(datadir, real) || strlen(dest) >= sizeof path) return false;
    strcpy(path, dest);
    struct stat st;
    while (stat(path, &st) != 0) {
        if (errno == ENOTCONN) return false; /* a dead mount: the checkpoint fails there by itself */
        char *slash = strrchr(path, '/');
        if (!slash) {
            strcpy(path, ".");
        } else if (slash == path) {
            strcpy(path, "/");
        } else {
            *slash = 0;
            continue;
        }
        if (stat(path, &st) != 0) return false;
        break;
    }
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f) return false;
    char line[3 * PATH_MAX];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        mountinfo_line m;
        if (!mountinfo_parse(line, &m) || makedev(m.major, m.minor) != st.st_dev) continue;
        if (!mountinfo_field_is(m.type, "fuse.kvfs") || !mountinfo_field_is(m.source, real)) continue;
        mountinfo_field(m.mountpoint, mp, mpn);
        found = true;
    }
    fclose(f);
    return found;
}

int cmd_checkpoint(tool_ctx *c, const targs *a) {
    char mp[PATH_MAX];
    if (c->store_dir && in_mount_of_store(c->store_dir, a->pos[1], mp, sizeof mp))
        return tool_error(c, "checkpoint of %s in %s: DEST is inside %s, where this store is mounted: a checkpoint "
                             "must be written outside the store it copies", c->datadir, a->pos[1], mp);
    c->progress_label = "checkpoint";
    int rc = kv_checkpoint(c->db, a->pos[1], tool_progress, c);
    tool_progress_done(c);
    return rc ? tool_kv_error(c, rc, "checkpoint of %s in %s", c->datadir, a->pos[1]) : TOOL_OK;
}

int cmd_prune(tool_ctx *c, const targs *a) {
    int rc = kv_prune_batch_log(c->db, a->before);
    return rc ? tool_kv_error(c, rc, "%s: prune", c->datadir) : TOOL_OK;
}

/* ---- changes -------------------------------------------------------------------------------------------------- */

/* Print one batch; returns false when it had nothing in keyspace 0 (and printed nothing). */
static bool print_batch(tool_ctx *c, const kv_logged_batch *b, bool json, bool first_in_array, bool lines) {
    size_t shown = 0;
    for (size_t i = 0; i < b->nops; i++) shown += b->ops[i].keyspace == 0;
    if (!shown) return false;
    tout *o = &c->out;
    char when[48];
    tool_iso_time(when, sizeof when, b->timestamp_ms);
    if (json) {
        if (!lines) tout_str(o, first_in_array ? "[\n" : ",\n");
        tout_printf(o, "{\"seq\":%" PRIu64 ",\"time_ms\":%" PRId64 ",\"time\":\"%s\",\"ops\":[", b->sequence,
                    b->timestamp_ms, when);
    } else {
        tout_printf(o, "batch %" PRIu64 " %s\n", b->sequence, when);
    }
    size_t k = 0;
    for (size_t i = 0; i < b->nops; i++) {
        const kv_logged_op *op = &b->ops[i];
        if (op->keyspace != 0) continue;
        bool put = op->type == KV_OP_PUT;
        if (json) {
            tout_printf(o, "%s{\"op\":\"%s\",\"key\":", k++ ? "," : "", put ? "put" : "del");
            tout_json_key(o, op->key, op->klen);
            if (put) {
                tout_printf(o, ",\"size\":%" PRIu64, op->vlen);
                if (op->external || !op->val) {
                    tout_printf(o, ",\"external\":true");
                } else {
                    tout_str(o, ",");
                    tout_json_value(o, op->val, op->vlen);
                }
            }
            tout_str(o, "}");
        } else {
            tout_printf(o, "%s ", put ? "put" : "del");
            tout_keytext(o, op->key, op->klen);
            if (put) {
                tout_printf(o, " %" PRIu64, op->vlen);
                /* The value is shown unless it lives in a blob file (the log keeps only its size then). */
                if (!op->external && op->val) {
                    tout_str(o, " ");
                    tout_valtext(o, op->val, op->vlen, true);
                }
            }
            tout_str(o, "\n");
        }
    }
    if (json) tout_str(o, lines ? "]}\n" : "]}");
    return true;
}

static int evicted(tool_ctx *c, uint64_t seq) {
    uint64_t oldest = 0;
    int rc = kv_oldest_retained_batch(c->db, &oldest);
    if (rc == KV_OK)
        return tool_error(c, "batch %" PRIu64 " was evicted from the batch log, oldest retained is %" PRIu64, seq,
                          oldest);
    return tool_error(c, "batch %" PRIu64 " was evicted from the batch log, which is now empty (or off)", seq);
}

int cmd_changes(tool_ctx *c, const targs *a) {
    bool json = a->seen & OPT_JSON, follow = a->seen & OPT_FOLLOW;
    uint64_t next;
    if (a->seen & OPT_SINCE) {
        /* A sequence the store has not reached is not "nothing new": the consumer's position came from elsewhere
         * (another store, or this one before it was restored from an older copy), and the batches that will take
         * the numbers up to it are not the ones it saw. Following from there would skip them silently. */
        uint64_t last = kv_current_sequence(c->db);
        if (a->since > last)
            return tool_error(c, "--since %" PRIu64 " is past the last batch of %s, %" PRIu64
                              " (a position from another store, or from before a restore?)",
                              a->since, c->datadir, last);
        next = a->since + 1;
    } else {
        uint64_t oldest;
        int rc = kv_oldest_retained_batch(c->db, &oldest);
        if (rc == KV_OK) next = oldest;
        else if (rc == KV_ENOTFOUND) next = kv_current_sequence(c->db) + 1; /* nothing retained: only new ones */
        else return tool_kv_error(c, rc, "%s: changes", c->datadir);
    }
    uint64_t printed = 0;
    int status = TOOL_OK;
    if (a->seen & OPT_SKIP_BYTES) c->out.skip = a->skip_bytes; /* a client going on where its daemon stopped */
    /* In the daemon: where the output gets, batch by batch, for a client whose daemon stops while it follows (an
     * unmount) to go on from there (tools_serve). Each batch's listing is written out before the next one starts, so
     * at most one is cut short. */
    bool track = follow && c->remote;
    if (track) {
        c->follow_tracked = true;
        c->prev_seq = c->done_seq = next - 1;
        c->prev_end = c->done_end = c->out.total;
    }
    for (;;) {
        uint64_t cur = kv_current_sequence(c->db);
        if (cur < next - 1) {
            /* The store reopened between polls (not mounted) is behind the feed: it was replaced by an older copy
             * meanwhile. As with --since past the last batch: the batches that will take the numbers up to where the
             * feed is are not the ones it went past, and waiting for them would skip them silently. */
            status = tool_error(c, "%s went back from batch %" PRIu64 " to %" PRIu64 " while it was followed "
                                   "(restored from an older copy?)", c->datadir, next - 1, cur);
            break;
        }
        for (; next <= cur && status == TOOL_OK; next++) {
            if (track) {
                if (tout_flush(&c->out) < 0) {
                    status = TOOL_FAIL;
                    break;
                }
                c->prev_seq = next - 1;
                c->prev_end = c->out.total; /* = out.written: all before it is written */
            }
            kv_logged_batch *b = NULL;
            int rc = kv_get_batch(c->db, next, &b);
            if (rc == KV_OK) {
                if (print_batch(c, b, json, printed == 0, follow)) printed++;
                kv_logged_batch_free(b);
            } else if (rc == KV_EEVICTED) {
                status = evicted(c, next);
            } else if (rc != KV_ENOTFOUND) { /* ENOTFOUND: no batch has that number; nothing to show */
                status = tool_kv_error(c, rc, "%s: reading batch %" PRIu64, c->datadir, next);
            }
            c->out.skip = 0; /* what was to be skipped was the start of this batch's listing */
            if (track && status == TOOL_OK) {
                c->done_seq = next;
                c->done_end = c->out.total;
            }
            if (c->out.err || tool_cancelled(c)) status = TOOL_FAIL;
        }
        if (!follow || status != TOOL_OK) break;
        if (tout_flush(&c->out) < 0) {
            status = TOOL_FAIL;
            break;
        }
        if (c->reopen) {
            /* Not mounted: let go of the store between polls so that other tools can use it. */
            c->reopen->close(c->reopen, c);
            if (tool_sleep(c, 200) || tool_output_gone(c)) {
                status = TOOL_FAIL;
                break;
            }
            uint64_t since = next - 1;
            int remote_rc = TOOL_FAIL;
            if (c->reopen->open(c->reopen, c, json, &since, &remote_rc) == TOOL_REOPEN_REMOTE)
                return remote_rc; /* the store got mounted: the daemon ran the rest */
            next = since + 1;     /* further on when a daemon followed for a while, and stopped (an unmount) */
        } else if (tool_sleep(c, 100) || tool_output_gone(c)) {
            status = TOOL_FAIL;
            break;
        }
    }
    if (status == TOOL_OK && json && !follow) tout_str(&c->out, printed ? "\n]\n" : "[]\n");
    return status;
}
