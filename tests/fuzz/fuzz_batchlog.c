/*
 * fuzz_batchlog.c — the batch log (engine/batchlog.c) read back from arbitrary files: opening it (each file's scan
 * for its sequence range, the floor and retention it derives), then what kv_get_batch and kv_check read through it
 * (batchlog_get's lookup and decode_batch, batchlog_check), and an append, a prune and a lookup after them.
 *
 * Input: one byte of flags (bit 0: open read-only; bit 1: no batch count retention, else one byte of it follows; bit
 * 2: a byte retention of 64 times the next two bytes), two bytes of floor (the manifest's BATCHLOG_FLOOR), two bytes
 * of the store's last batch (at least floor - 1: batchlog_forget_after and batchlog_recovered as recovery calls
 * them), then files: each one byte of number (BATCHLOG-NNNNNN), one byte of kind, a two-byte length and the content.
 * Kind bit 0 clear: the content is the file; set: it is cut into payloads (a two-byte length before each) written as
 * records (wal_append: checksums hold), so the decoders behind them are reached. Seeds: files as the engine writes
 * them (mkseeds.c).
 * Checks: the open fails only with KV_ECORRUPT or KV_EIO; every lookup answers KV_OK with the batch asked for (and
 * operations whose keys, of 1 to KV_MAX_KEY bytes, and values are inside their buffers; an input's records are too
 * short for a longer key: test_corrupt_batch_log_key_too_long makes one), KV_EEVICTED or KV_ECORRUPT; no
 * lookup below the floor answers anything but KV_EEVICTED; none between the oldest retained batch and the newest
 * that the store has answers KV_EEVICTED (no holes); batchlog_check counts its problems; on a read-write open a
 * batch appended after the newest reads back as it was written; after a prune, a batch below its cutoff is evicted.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "coding.h"
#include "db_impl.h"
#include "dbformat.h"
#include "fuzz.h"
#include "kv.h"
#include "tmpfile.h"
#include "wal.h"

static void write_file(const char *dir, unsigned no, unsigned kind, const uint8_t *p, size_t n) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/BATCHLOG-%06u", dir, no) >= (int)sizeof path) abort();
    if (!(kind & 1)) {
        FILE *f = fopen(path, "wb");
        FUZZ_CHECK(f && (!n || fwrite(p, 1, n, f) == n) && fclose(f) == 0);
        return;
    }
    fuzz_write_records(path, p, n);
}

/* Look seq up: the answer, checked. */
static int lookup(batchlog *bl, uint64_t seq) {
    kv_logged_batch *b = NULL;
    int rc = batchlog_get(bl, seq, &b);
    FUZZ_CHECK(rc == KV_OK || rc == KV_EEVICTED || rc == KV_ECORRUPT);
    if (rc == KV_OK) {
        FUZZ_CHECK(b && b->sequence == seq);
        uint64_t sum = 0;
        for (size_t i = 0; i < b->nops; i++) { /* every byte readable (ASan), sizes sane */
            const kv_logged_op *o = &b->ops[i];
            FUZZ_CHECK(o->type == KV_OP_PUT || o->type == KV_OP_DELETE);
            FUZZ_CHECK(o->klen >= 1 && o->klen <= KV_MAX_KEY);
            for (size_t j = 0; j < o->klen; j++) sum += ((const uint8_t *)o->key)[j];
            if (!o->external)
                for (size_t j = 0; j < o->vlen; j++) sum += ((const uint8_t *)o->val)[j];
        }
        (void)sum;
    } else {
        FUZZ_CHECK(b == NULL);
    }
    kv_logged_batch_free(b);
    return rc;
}

/* A batch record of one put of key "k" (keyspace 0) to value v. */
static void record(kv_bytes *r, uint64_t seq, const char *v) {
    bytes_clear(r);
    bytes_append_fixed64(r, seq);
    bytes_append_varint(r, 1700000000000ull);
    bytes_append_varint(r, 1);
    uint8_t t = KV_TYPE_VALUE;
    bytes_append(r, &t, 1);
    bytes_append_lenprefixed(r, "\0k", 2);
    bytes_append_lenprefixed(r, v, strlen(v));
}

static void problem(void *ctx, const char *file, uint64_t off, const char *what) {
    (void)off;
    (void)ctx;
    FUZZ_CHECK(file != NULL && what != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned flags = fuzz_u8(&f);
    bool ro = flags & 1;
    uint64_t max_batches = flags & 2 ? 0 : fuzz_u8(&f) + 1;
    uint64_t max_bytes = flags & 4 ? (uint64_t)fuzz_u16(&f) * 64 : 0;
    uint64_t floor = fuzz_u16(&f), last = fuzz_u16(&f);
    const char *dir = fuzz_store_dir();
    kv_env *env = kv_env_posix();
    while (fuzz_left(&f) >= 4) {
        unsigned no = fuzz_u8(&f), kind = fuzz_u8(&f);
        size_t n = fuzz_u16(&f);
        if (n > fuzz_left(&f)) n = fuzz_left(&f);
        write_file(dir, no, kind, f.p, n);
        f.p += n;
    }
    batchlog *bl = NULL;
    int rc = batchlog_open(env, dir, max_batches, max_bytes, floor, ro, &bl);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_EIO);
    if (rc != KV_OK) return 0;
    /* what the end of recovery does (db.c), with the store's last batch at least below the floor (kv_prune_batch_log
     * sets no floor past the next batch) */
    if (floor > last + 1) last = floor - 1;
    if (!ro && batchlog_newest(bl) > last) (void)batchlog_forget_after(bl, last);
    batchlog_recovered(bl, last);
    uint64_t oldest, newest;
    batchlog_range(bl, &oldest, &newest);
    if (batchlog_enabled(bl)) FUZZ_CHECK(oldest <= newest);
    for (uint64_t s = 0; s < 4; s++)
        if (s < floor) FUZZ_CHECK(lookup(bl, s) == KV_EEVICTED);
        else lookup(bl, s);
    if (floor) FUZZ_CHECK(lookup(bl, floor - 1) == KV_EEVICTED);
    /* no holes: from the oldest retained to the newest the store has, each batch reads or is reported damaged (above
     * the store's last batch a read-only open, which cannot forget, may still hold batches recovery forgot, after a
     * gap: they are not the store's) */
    if (oldest)
        for (uint64_t s = oldest; s <= newest && s <= last && s - oldest < 300; s++)
            FUZZ_CHECK(lookup(bl, s) != KV_EEVICTED);
    lookup(bl, newest + 1);
    lookup(bl, UINT64_MAX);
    uint64_t problems = 0;
    FUZZ_CHECK(batchlog_check(bl, problem, NULL, &problems) == KV_OK);
    /* the store's next batch: above its last one, the files' newest and the floor (never above 2^56) */
    uint64_t seq = newest > last ? newest : last;
    seq = (seq >= floor ? seq : floor) + 1;
    if (!ro && batchlog_enabled(bl) && seq <= KV_MAX_SEQUENCE) {
        kv_bytes r = {0};
        record(&r, seq, "appended");
        if (batchlog_append(bl, seq, r.data, r.len) == KV_OK) {
            kv_logged_batch *b = NULL;
            FUZZ_CHECK(batchlog_get(bl, seq, &b) == KV_OK);
            FUZZ_CHECK(b->sequence == seq && b->nops == 1 && b->ops[0].klen == 1 && memcmp(b->ops[0].key, "k", 1) == 0 &&
                       b->ops[0].vlen == 8 && memcmp(b->ops[0].val, "appended", 8) == 0);
            kv_logged_batch_free(b);
        }
        bytes_free(&r);
        FUZZ_CHECK(batchlog_sync(bl) == KV_OK);
    }
    uint64_t cutoff = newest / 2 + 1;
    FUZZ_CHECK(batchlog_prune(bl, cutoff) == KV_OK);
    if (batchlog_enabled(bl)) FUZZ_CHECK(lookup(bl, cutoff - 1) == KV_EEVICTED);
    batchlog_close(bl);
    return 0;
}
