/*
 * fuzz_blob.c — blob references (engine/blob.c) and paged references (engine/blob_pages.c): decoding arbitrary
 * references, and reading values through arbitrary references from a blob file.
 *
 * Input: one byte of flags, a two-byte length and that many bytes of reference, then (flag bit 0) records for a
 * blob file: each a two-byte length and its bytes, written as records of 000001.blob with blob_writer (checksums
 * hold, so a page's content is reached), the last two bytes of the input then naming a byte of the file to flip
 * (0: none).
 * Checks: blob_ref_size, blob_ref_is_paged, blob_ref_validate, blob_ref_decode and blob_pages_decode never crash
 * and agree with each other; a reference that decodes re-encodes to one that decodes the same. With a blob file,
 * blob_value_read at a few offsets and blob_value_visit never crash or read outside their buffers, and answer
 * KV_OK, KV_ECORRUPT or KV_ENOTFOUND (a file the reference names that is not there); a read is short only past
 * the value's end.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "blob.h"
#include "blob_pages.h"
#include "fuzz.h"
#include "kv.h"
#include "tmpfile.h"

static bool same_ref(const blob_ref *a, const blob_ref *b) {
    if (a->size != b->size || a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++)
        if (memcmp(&a->ext[i], &b->ext[i], sizeof a->ext[i]) != 0) return false;
    return true;
}

static void decoders(const uint8_t *ref, size_t rlen) {
    uint64_t size = 0;
    int rs = blob_ref_size(ref, rlen, &size);
    FUZZ_CHECK(rs == KV_OK || rs == KV_ECORRUPT);
    int rv = blob_ref_validate(ref, rlen);
    FUZZ_CHECK(rv == KV_OK || rv == KV_ECORRUPT);
    if (rv == KV_OK) FUZZ_CHECK(rs == KV_OK);
    bool paged = blob_ref_is_paged(ref, rlen);
    blob_ref r = {0};
    int rd = blob_ref_decode(ref, rlen, &r);
    FUZZ_CHECK(rd == KV_OK || rd == KV_ECORRUPT);
    if (rd == KV_OK) {
        FUZZ_CHECK(!paged && rs == KV_OK && r.size == size);
        kv_bytes enc = {0};
        FUZZ_CHECK(blob_ref_encode(&r, &enc) == KV_OK);
        blob_ref r2 = {0};
        FUZZ_CHECK(blob_ref_decode(enc.data, enc.len, &r2) == KV_OK && same_ref(&r, &r2));
        blob_ref_free(&r2);
        bytes_free(&enc);
    }
    blob_ref_free(&r);
    blob_pages pp = {0};
    int rp = blob_pages_decode(ref, rlen, &pp);
    FUZZ_CHECK(rp == KV_OK || rp == KV_ECORRUPT);
    if (rp == KV_OK) {
        FUZZ_CHECK(paged && rs == KV_OK && pp.size == size);
        kv_bytes enc = {0};
        FUZZ_CHECK(blob_pages_encode(&pp, &enc) == KV_OK);
        blob_pages p2 = {0};
        FUZZ_CHECK(blob_pages_decode(enc.data, enc.len, &p2) == KV_OK && p2.size == pp.size && p2.n == pp.n);
        FUZZ_CHECK(pp.n == 0 || memcmp(p2.pg, pp.pg, pp.n * sizeof *pp.pg) == 0);
        blob_pages_free(&p2);
        bytes_free(&enc);
    }
    blob_pages_free(&pp);
    if (rv == KV_OK) FUZZ_CHECK(rd == KV_OK || rp == KV_OK);
}

static int visit(void *ctx, const blob_extent *e, bool page) {
    (void)page;
    uint64_t *n = ctx;
    FUZZ_CHECK(e->file_no != 0);
    return ++*n > 100000; /* stop a runaway visit */
}

static void reads(const uint8_t *ref, size_t rlen, fuzz_in *f) {
    kv_env *env = kv_env_posix();
    const char *dir = fuzz_tmpdir();
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/000001.blob", dir) >= (int)sizeof path) abort();
    blob_writer *w;
    FUZZ_CHECK(blob_writer_new(env, path, 1, &w) == KV_OK);
    while (fuzz_left(f) > 2) {
        size_t l = fuzz_u16(f);
        if (l > fuzz_left(f)) l = fuzz_left(f);
        blob_extent e;
        FUZZ_CHECK(blob_writer_add(w, f->p, l, &e) == KV_OK);
        f->p += l;
    }
    unsigned flip = fuzz_u16(f);
    FUZZ_CHECK(blob_writer_close(w) == KV_OK);
    uint64_t fsize;
    FUZZ_CHECK(env->file_size(env, path, &fsize) == KV_OK);
    if (flip && fsize) {
        FILE *fp = fopen(path, "r+b");
        FUZZ_CHECK(fp);
        fseek(fp, (long)(flip % fsize), SEEK_SET);
        int c = fgetc(fp);
        fseek(fp, (long)(flip % fsize), SEEK_SET);
        fputc(c ^ 0x5a, fp);
        fclose(fp);
    }
    blob_store *s;
    FUZZ_CHECK(blob_store_new(env, dir, 4, &s) == KV_OK);
    uint64_t size = 0;
    if (blob_ref_size(ref, rlen, &size) == KV_OK) {
        uint8_t *buf = malloc(4096);
        uint64_t offs[3] = {0, size / 2, size > 10 ? size - 10 : 0};
        for (int i = 0; i < 3; i++) {
            size_t nread = 0;
            int rc = blob_value_read(s, ref, rlen, offs[i], buf, 4096, &nread);
            FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_ENOTFOUND);
            FUZZ_CHECK(nread <= 4096);
            if (rc == KV_OK && offs[i] < size) FUZZ_CHECK(nread == (size - offs[i] < 4096 ? size - offs[i] : 4096));
        }
        free(buf);
    }
    uint64_t n = 0;
    int rc = blob_value_visit(s, ref, rlen, visit, &n);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_ENOTFOUND || rc == 1);
    blob_store_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned flags = fuzz_u8(&f);
    size_t rlen = fuzz_u16(&f);
    if (rlen > fuzz_left(&f)) rlen = fuzz_left(&f);
    uint8_t *ref = malloc(rlen ? rlen : 1); /* exact size */
    memcpy(ref, f.p, rlen);
    f.p += rlen;
    decoders(ref, rlen);
    if (flags & 1) reads(ref, rlen, &f);
    free(ref);
    return 0;
}
