/*
 * fuzz_wal.c — the record log reader (engine/wal.c: the write-ahead log, the manifest and the batch log) over an
 * arbitrary file, and the batch records the write-ahead log holds (engine/batch.c).
 *
 * Input: one byte of flags, then the file's bytes. With flag bit 0 the bytes are instead cut into payloads (a
 * two-byte length before each) that are written as well-formed records (wal_append: the checksums hold), so the
 * payload decoders behind the checksums are reached; flag bit 1 then appends the remaining bytes raw (a torn or
 * damaged tail).
 * Checks: wal_read never crashes or reads out of its buffers; it returns KV_OK, KV_ENOTFOUND (the end) or
 * KV_ECORRUPT, each record lies inside the file, records are in order, and after the end valid_end is the end of
 * the last good record; wal_reader_data_end and wal_reader_damage_is_lost_page answer. Each payload goes through
 * batch_record_decode and batch_record_next_op (which must stay inside the record) and edit_decode (whose result,
 * re-encoded, decodes to the same encoding).
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "db_impl.h"
#include "dbformat.h"
#include "fuzz.h"
#include "kv.h"
#include "tmpfile.h"
#include "version.h"
#include "wal.h"

static void payload_decoders(const uint8_t *p, size_t len) {
    uint64_t seq;
    int64_t ts;
    size_t count;
    const uint8_t *ops;
    if (batch_record_decode(p, len, &seq, &ts, &count, &ops, "fuzz.log", 0) == KV_OK) {
        FUZZ_CHECK(ops >= p && ops <= p + len);
        FUZZ_CHECK(seq <= KV_MAX_SEQUENCE);
        const uint8_t *q = ops, *lim = p + len;
        resolved_op op;
        for (size_t i = 0; i < count && q; i++) {
            q = batch_record_next_op(q, lim, &op);
            if (!q) break;
            FUZZ_CHECK(q <= lim);
            FUZZ_CHECK(op.ukey >= p && op.ukey + op.ulen <= lim);
            if (op.plen) FUZZ_CHECK(op.payload >= p && op.payload + op.plen <= lim);
        }
    }
    version_edit e;
    if (edit_decode(&e, p, len, "MANIFEST", 0) == KV_OK) {
        kv_bytes a = {0}, b = {0};
        FUZZ_CHECK(edit_encode(&e, &a) == KV_OK);
        version_edit e2;
        static const uint8_t none[1];
        FUZZ_CHECK(edit_decode(&e2, a.len ? a.data : none, a.len, "re-encoded", 0) == KV_OK); /* empty: no buffer */
        FUZZ_CHECK(edit_encode(&e2, &b) == KV_OK);
        FUZZ_CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
        edit_free(&e2);
        bytes_free(&a);
        bytes_free(&b);
        edit_free(&e);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned flags = fuzz_u8(&f);
    kv_env *env = kv_env_posix();
    char path[PATH_MAX];
    uint64_t file_size;
    if (flags & 1) {
        if (snprintf(path, sizeof path, "%s/000001.log", fuzz_tmpdir()) >= (int)sizeof path) abort();
        wal_writer *w;
        FUZZ_CHECK(wal_writer_open(env, path, &w) == KV_OK);
        while (fuzz_left(&f) >= 2) {
            size_t l = fuzz_u16(&f);
            if (l == 0xffff) break; /* the rest is a raw tail */
            if (l > fuzz_left(&f)) l = fuzz_left(&f);
            FUZZ_CHECK(wal_append(w, f.p, l) == KV_OK);
            f.p += l;
        }
        FUZZ_CHECK(wal_writer_close(w) == KV_OK);
        if ((flags & 2) && fuzz_left(&f)) {
            FILE *fp = fopen(path, "ab");
            FUZZ_CHECK(fp && fwrite(f.p, 1, fuzz_left(&f), fp) == fuzz_left(&f) && fclose(fp) == 0);
        }
    } else {
        fuzz_write_file("000001.log", f.p, fuzz_left(&f), path);
    }
    FUZZ_CHECK(env->file_size(env, path, &file_size) == KV_OK);
    wal_reader *r;
    FUZZ_CHECK(wal_reader_open(env, path, "000001.log", &r) == KV_OK);
    uint64_t last_end = 0;
    int rc;
    for (;;) {
        const uint8_t *p;
        size_t len;
        uint64_t off;
        rc = wal_read(r, &p, &len, &off);
        if (rc != KV_OK) break;
        FUZZ_CHECK(off >= last_end && off + WAL_HEADER + len <= file_size);
        last_end = off + WAL_HEADER + len;
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < len; i++) sink ^= p[i];
        (void)sink;
        payload_decoders(p, len);
    }
    FUZZ_CHECK(rc == KV_ENOTFOUND || rc == KV_ECORRUPT);
    if (rc == KV_ENOTFOUND) FUZZ_CHECK(wal_reader_valid_end(r) == last_end);
    if (rc == KV_ECORRUPT) {
        bool lost;
        FUZZ_CHECK(wal_reader_damage_is_lost_page(r, &lost) == KV_OK);
    }
    uint64_t data_end;
    FUZZ_CHECK(wal_reader_data_end(r, &data_end) == KV_OK && data_end <= file_size);
    wal_reader_close(r);
    return 0;
}
