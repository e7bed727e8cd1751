/*
 * fuzz_sst.c — the table reader (engine/sst.c) over an arbitrary file, and with it the block, seekable block, bloom
 * filter and properties decoders as a table uses them.
 *
 * Input: one byte of flags, then the file's bytes (seeds are real tables, tests/fuzz/mkseeds.c). With flag bit 0
 * the harness first re-seals the file as a writer would have: the footer's magic, version and checksum, and the
 * trailer checksum of each block the footer or the index names, so that changed bytes inside blocks get past the
 * checksums to the decoders behind them. Bit 1 gives the reader a block cache.
 * Checks: sst_reader_open returns KV_OK or KV_ECORRUPT; an open table iterates forwards and backwards and seeks
 * without crashing or reading outside a buffer, and errors are KV_ECORRUPT; sst_reader_get answers found / absent /
 * KV_ECORRUPT for the keys it holds. sst_check_file (kvfs check) reports problems without crashing, and when it
 * finds none the reader's answers are right: the scan succeeds with keys in strictly ascending order and a seek to
 * each key finds it. (The reader itself does not check key order or the index's keys against the blocks as it
 * reads: a block whose checksum holds was written so. Only re-sealing breaks that, which is the check's to find.)
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "block.h"
#include "cache.h"
#include "coding.h"
#include "dbformat.h"
#include "fuzz.h"
#include "kv.h"
#include "sst.h"
#include "tmpfile.h"

#define TRAILER 5

static void reseal_block(uint8_t *f, size_t n, uint64_t off, uint64_t size) {
    if (off > n || size > n - off || TRAILER > n - off - size) return;
    put_fixed32(f + off + size + 1, kv_checksum(f + off, (size_t)size + 1));
}

static void reseal(uint8_t *f, size_t n) {
    if (n < SST_FOOTER) return;
    uint8_t *ft = f + n - SST_FOOTER;
    put_fixed64(ft + 56, SST_MAGIC);
    put_fixed32(ft + 48, 1);
    put_fixed32(ft + 52, kv_checksum(ft, 52));
    size_t body = n - SST_FOOTER;
    for (int i = 0; i < 3; i++) reseal_block(f, body, get_fixed64(ft + 16 * i), get_fixed64(ft + 16 * i + 8));
    uint64_t ioff = get_fixed64(ft + 32), isize = get_fixed64(ft + 40);
    if (ioff > body || isize > body - ioff || TRAILER > body - ioff - isize || f[ioff + isize] != 0) return;
    uint8_t *copy = malloc(isize ? (size_t)isize : 1);
    memcpy(copy, f + ioff, (size_t)isize);
    block *b;
    if (block_parse(copy, (size_t)isize, 0, 0, &b) != KV_OK) return;
    iter *it = block_iter_new(b, NULL, NULL);
    for (it->seek_first(it); it->valid(it); it->next(it)) {
        size_t vl;
        const uint8_t *v = it->value(it, &vl), *p;
        uint64_t off, size;
        if ((p = get_varint64(v, v + vl, &off)) && get_varint64(p, v + vl, &size)) reseal_block(f, ioff, off, size);
    }
    it->destroy(it);
    block_free(b);
}

static void problem(void *ctx, const char *file, uint64_t offset, const char *what) {
    (void)file;
    (void)offset;
    FUZZ_CHECK(what != NULL);
    ++*(long *)ctx;
}

#define MAX_KEYS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned flags = data[0];
    size_t n = size - 1;
    uint8_t *file = malloc(n ? n : 1);
    memcpy(file, data + 1, n);
    if (flags & 1) reseal(file, n);
    char path[PATH_MAX];
    fuzz_write_file("000001.sst", file, n, path);
    free(file);
    kv_env *env = kv_env_posix();
    block_cache *cache = NULL;
    if (flags & 2) FUZZ_CHECK(block_cache_new(1 << 20, &cache) == KV_OK);
    long problems = 0;
    long nrc = sst_check_file(env, path, "000001.sst", problem, &problems);
    FUZZ_CHECK(nrc >= 0 && nrc == problems);
    sst_reader *r;
    int rc = sst_reader_open(env, path, "000001.sst", 1, cache, &r);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT);
    bool scan_ok = false;
    if (rc == KV_OK) {
        uint8_t *keys[MAX_KEYS];
        size_t klens[MAX_KEYS], nkeys = 0;
        iter *it = sst_reader_iter(r, flags & 4);
        uint8_t *last = NULL;
        size_t last_len = 0;
        long count = 0;
        bool ordered = true; /* a re-sealed block may hold keys out of order: its checksum no longer tells */
        for (it->seek_first(it); it->valid(it) && count < 100000; it->next(it), count++) {
            size_t kl, vl;
            const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
            FUZZ_CHECK(kl > IKEY_TRAILER);
            if (last && ikey_cmp(last, last_len, k, kl) >= 0) ordered = false;
            free(last);
            last = malloc(kl);
            memcpy(last, k, kl);
            last_len = kl;
            volatile uint8_t sink = 0;
            for (size_t i = 0; i < vl; i++) sink ^= v[i];
            (void)sink;
            if (nkeys < MAX_KEYS && (count % 7 == 0)) {
                keys[nkeys] = malloc(kl);
                memcpy(keys[nkeys], k, kl);
                klens[nkeys++] = kl;
            }
        }
        free(last);
        rc = it->status(it);
        FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT);
        scan_ok = rc == KV_OK && !it->valid(it) && ordered;
        /* Backwards a few steps, then seeks. */
        it->seek_last(it);
        for (int i = 0; i < 50 && it->valid(it); i++) it->prev(it);
        FUZZ_CHECK(it->status(it) == KV_OK || it->status(it) == KV_ECORRUPT);
        for (size_t i = 0; i < nkeys; i++) {
            it->seek(it, keys[i], klens[i]);
            int st = it->status(it);
            FUZZ_CHECK(st == KV_OK || st == KV_ECORRUPT);
            if (problems == 0) {
                size_t kl;
                FUZZ_CHECK(it->valid(it));
                const uint8_t *k = it->key(it, &kl);
                if (getenv("FUZZ_VERBOSE")) {
                    fprintf(stderr, "seek ");
                    for (size_t j = 0; j < klens[i]; j++) fprintf(stderr, "%02x", keys[i][j]);
                    fprintf(stderr, "\n got ");
                    for (size_t j = 0; j < kl; j++) fprintf(stderr, "%02x", k[j]);
                    fprintf(stderr, "\n");
                }
                FUZZ_CHECK(kl == klens[i] && memcmp(k, keys[i], kl) == 0);
            }
        }
        it->destroy(it);
        for (size_t i = 0; i < nkeys; i++) {
            int type;
            uint64_t seq;
            kv_bytes val = {0};
            uint64_t kseq = ikey_seq(keys[i], klens[i]);
            rc = sst_reader_get(r, keys[i], klens[i] - IKEY_TRAILER, kseq, &type, &val, &seq);
            FUZZ_CHECK(rc == 0 || rc == 1 || rc == KV_ECORRUPT);
            bytes_free(&val);
            free(keys[i]);
        }
        sst_reader_unref(r);
    }
    if (problems == 0) FUZZ_CHECK(scan_ok);
    if (cache) block_cache_free(cache);
    return 0;
}
