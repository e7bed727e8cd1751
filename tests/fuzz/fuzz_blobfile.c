/*
 * fuzz_blobfile.c — the contents of a blob file (engine/blob.c): its header, its chunks' length fields and checksums,
 * as blob_read reads a value's records from it, blob_check_file walks it and blob_chunk_whole_at looks at one chunk.
 * (fuzz_blob fuzzes the references, over files its writer makes; here the file is the input.)
 *
 * Input: one byte of flags, one byte n, n extents of 8 bytes (two-byte rec_off, rec_len, skip and len: records the
 * harness reads besides those it finds), then the file 000001.blob. Flag bit 0 re-seals the file first: its header
 * made valid and every chunk whose length field can be read given the checksum of its bytes, so that the bytes
 * behind the checksums reach the readers.
 * Checks: blob_check_file counts its problems (none on a file that is a valid header and whole chunks with matching
 * checksums); every chunk that the harness's own walk finds whole and matching reads back through blob_read, as a
 * record of its length, to its very bytes, and blob_chunk_whole_at says it is whole; a read of any other extent
 * answers KV_OK with all the bytes asked for, or KV_ECORRUPT with none (always, for an extent outside its record, which
 * no reference the engine encodes holds).
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "blob.h"
#include "coding.h"
#include "fuzz.h"
#include "kv.h"
#include "tmpfile.h"

#define HDR 16u
#define CHUNK_HDR 8u

static void reseal(uint8_t *f, size_t n) {
    if (n >= HDR) {
        put_fixed64(f, BLOB_MAGIC);
        put_fixed32(f + 8, 1);
        put_fixed32(f + 12, kv_checksum(f, 12));
    }
    for (size_t pos = HDR; pos + CHUNK_HDR <= n;) {
        uint32_t clen = get_fixed32(f + pos + 4);
        if (clen == 0 || clen > BLOB_CHUNK || clen > n - pos - CHUNK_HDR) break;
        put_fixed32(f + pos, kv_checksum(f + pos + 4, 4 + clen));
        pos += CHUNK_HDR + clen;
    }
}

/* Read extent e (file 1) as a value of its own through an encoded and decoded reference, at offset off: the answer,
 * with the bytes in buf (4096) and their count in *nread. */
static int read_extent(blob_store *s, const blob_extent *e, uint64_t off, uint8_t *buf, size_t *nread) {
    blob_ref r = {0}, d = {0};
    r.size = e->len;
    r.n = r.cap = 1;
    r.ext = (blob_extent *)e;
    kv_bytes enc = {0};
    int rc = blob_ref_encode(&r, &enc);
    if (rc == KV_OK) {
        rc = blob_ref_decode(enc.data, enc.len, &d);
        FUZZ_CHECK(rc == KV_OK);
    } else { /* an extent outside its record: the engine writes no such reference; blob_read must refuse it */
        FUZZ_CHECK(rc == KV_EINVAL);
        rc = blob_read(s, &r, off, buf, 4096, nread);
        FUZZ_CHECK((rc == KV_ECORRUPT && *nread == 0) || (rc == KV_OK && *nread == 0 && off >= e->len));
        bytes_free(&enc);
        return -1;
    }
    bytes_free(&enc);
    rc = blob_read(s, &d, off, buf, 4096, nread);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT);
    if (rc == KV_OK) FUZZ_CHECK(*nread == (off < e->len ? (e->len - off < 4096 ? e->len - off : 4096) : 0));
    else FUZZ_CHECK(*nread == 0);
    blob_ref_free(&d);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned flags = fuzz_u8(&f);
    unsigned next = fuzz_u8(&f);
    blob_extent ext[256];
    for (unsigned i = 0; i < next; i++) {
        uint64_t off = fuzz_u16(&f), rlen = fuzz_u16(&f), skip = fuzz_u16(&f), len = fuzz_u16(&f);
        ext[i] = (blob_extent){1, off, rlen, skip, len};
    }
    size_t n = fuzz_left(&f);
    uint8_t *file = malloc(n ? n : 1);
    memcpy(file, f.p, n);
    if (flags & 1) reseal(file, n);
    char path[PATH_MAX];
    fuzz_write_file("000001.blob", file, n, path);
    kv_env *env = kv_env_posix();

    long problems = blob_check_file(env, path, "000001.blob", NULL, NULL);
    FUZZ_CHECK(problems >= 0);
    /* the harness's walk: whole chunks with matching checksums, and whether the file is nothing else */
    bool header_ok = n >= HDR && get_fixed64(file) == BLOB_MAGIC && get_fixed32(file + 8) == 1 &&
                     get_fixed32(file + 12) == kv_checksum(file, 12);
    bool all_ok = header_ok;
    size_t pos = HDR;
    blob_store *s;
    FUZZ_CHECK(blob_store_new(env, fuzz_tmpdir(), 2, &s) == KV_OK);
    uint8_t *buf = malloc(4096);
    while (pos + CHUNK_HDR <= n) {
        uint32_t clen = get_fixed32(file + pos + 4);
        if (clen == 0 || clen > BLOB_CHUNK || clen > n - pos - CHUNK_HDR) break;
        bool sum_ok = get_fixed32(file + pos) == kv_checksum(file + pos + 4, 4 + clen);
        all_ok = all_ok && sum_ok;
        if (sum_ok) {
            FUZZ_CHECK(blob_chunk_whole_at(env, path, pos) == KV_OK);
            if (header_ok) {
                blob_extent e = {1, pos, clen, 0, clen};
                size_t got;
                for (uint64_t off = 0; off < clen; off += 4096) {
                    FUZZ_CHECK(read_extent(s, &e, off, buf, &got) == KV_OK);
                    FUZZ_CHECK(memcmp(buf, file + pos + CHUNK_HDR + off, got) == 0);
                }
            }
        }
        pos += CHUNK_HDR + clen;
    }
    if (all_ok && pos == n) FUZZ_CHECK(problems == 0);
    for (unsigned i = 0; i < next; i++) {
        size_t got;
        read_extent(s, &ext[i], 0, buf, &got);
        read_extent(s, &ext[i], ext[i].len / 2, buf, &got);
        int rc = blob_chunk_whole_at(env, path, ext[i].rec_off);
        FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT);
    }
    free(buf);
    blob_store_free(s);
    free(file);
    return 0;
}
