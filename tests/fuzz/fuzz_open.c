/*
 * fuzz_open.c — opening a whole store from arbitrary files: CURRENT, the manifest's edits as they are applied
 * (engine/version.c), the write-ahead log's batches as they are replayed (engine/db.c, engine/batch.c), and the
 * tables the manifest lists, then reading everything through the public API.
 *
 * Input: a list of files, each: one kind byte, one length byte and the file's name (letters, digits, '.', '-' and
 * '_' only; other names are skipped), a two-byte length and the content. Kind 0 writes the content as it is; kind 1
 * reads it as payloads (a two-byte length before each) and writes them as a record log (wal_append: checksums hold),
 * so the manifest's edits and the log's batches are reached. Seeds are small real stores (mkseeds.c).
 * The first input byte is flags: bit 0 opens read-write (else read-only), bit 1 runs kv_check after the scan.
 * Checks: kv_open never crashes and fails with a message; an open store scans forwards and backwards, answers
 * kv_get for the keys it lists, and closes.
 */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "kv.h"
#include "tmpfile.h"
#include "wal.h"

static bool name_ok(const uint8_t *n, size_t l) {
    if (l == 0 || (l == 1 && n[0] == '.') || (l == 2 && n[0] == '.' && n[1] == '.')) return false;
    for (size_t i = 0; i < l; i++) {
        uint8_t c = n[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
              c == '_'))
            return false;
    }
    return true;
}

static void problem(void *ctx, const char *file, uint64_t off, const char *what) {
    (void)ctx;
    (void)file;
    (void)off;
    FUZZ_CHECK(what != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned flags = fuzz_u8(&f);
    const char *dir = fuzz_store_dir();
    while (fuzz_left(&f) >= 4) {
        unsigned kind = fuzz_u8(&f) & 1;
        size_t nl = fuzz_u8(&f);
        if (nl > fuzz_left(&f)) break;
        const uint8_t *name = f.p;
        f.p += nl;
        size_t cl = fuzz_u16(&f);
        if (cl > fuzz_left(&f)) cl = fuzz_left(&f);
        const uint8_t *content = f.p;
        f.p += cl;
        if (!name_ok(name, nl)) continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%.*s", dir, (int)nl, (const char *)name) >= (int)sizeof path) continue;
        if (kind == 0) {
            FILE *fp = fopen(path, "wb");
            FUZZ_CHECK(fp);
            if (cl) FUZZ_CHECK(fwrite(content, 1, cl, fp) == cl);
            FUZZ_CHECK(fclose(fp) == 0);
        } else {
            fuzz_write_records(path, content, cl);
        }
    }
    kv_options o;
    kv_options_init(&o);
    o.create_if_missing = false;
    o.read_only = !(flags & 1);
    o.background_threads = false;
    o.block_cache_bytes = 1 << 20;
    kv_db *db = NULL;
    int rc = kv_open(dir, &o, &db);
    bool verbose = getenv("FUZZ_VERBOSE") != NULL;
    if (rc != KV_OK) {
        if (verbose) fprintf(stderr, "kv_open: %s: %s\n", kv_strerror(rc), kv_errmsg());
        FUZZ_CHECK(kv_errmsg()[0] != 0);
        kv_free(db);
        return 0;
    }
    kv_iter *it;
    FUZZ_CHECK(kv_iter_new(db, NULL, &it) == KV_OK);
    int n = 0;
    for (kv_iter_seek_first(it); kv_iter_valid(it) && n < 10000; kv_iter_next(it), n++) {
        size_t kl;
        const void *k = kv_iter_key(it, &kl);
        const void *v;
        uint64_t vl;
        (void)kv_iter_value(it, &v, &vl);
        if (n % 5 == 0) {
            kv_buf out = {0};
            (void)kv_get(db, NULL, k, kl, &out);
            kv_buf_free(&out);
        }
    }
    if (verbose) fprintf(stderr, "%d keys, status %d\n", n, kv_iter_status(it));
    for (kv_iter_seek_last(it), n = 0; kv_iter_valid(it) && n < 100; kv_iter_prev(it), n++) {
    }
    kv_iter_free(it);
    if (flags & 2) {
        uint64_t problems = 0;
        (void)kv_check(db, problem, NULL, NULL, &problems);
    }
    kv_close(db);
    kv_free(db);
    return 0;
}
