/*
 * fuzz_block.c — data blocks over arbitrary bytes: engine/block.c (restart array, prefix-compressed entries) and
 * engine/zblock.c (seekable compressed blocks).
 *
 * Input: one byte of flags, a count of operations and their bytes (each an op code, some with a target key: one
 * length byte, then the key), then the block's bytes.
 *  - flags bit 0 clear: the bytes are a raw block. block_parse it; if it parses, run the operations (seek_first,
 *    seek_last, seek to a target, next, prev, block_seek_value) through an iterator. Checks: no crash, no read out
 *    of the block; an error is KV_ECORRUPT and sticks. When a whole forward scan succeeds with strictly ascending
 *    keys of at least 9 bytes (a block a table could hold), the block is also stored seekable (zblock_encode) and
 *    read back: zblock_inflate gives the raw block, its iterator gives the same entries, and zblock_seek_value
 *    answers each target as block_seek_value does.
 *  - flags bit 0 set: the bytes are a stored seekable block (type 2 payload). zblock_parse it (through a code
 *    cache or not, by bit 1); if it parses, zblock_inflate, the operations through a zblock iterator, and
 *    zblock_seek_value for each target. Checks: no crash, errors are KV_ECORRUPT or KV_ENOMEM.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "block.h"
#include "dbformat.h"
#include "fuzz.h"
#include "kv.h"
#include "zblock.h"

#define MAX_OPS 32

typedef struct op {
    unsigned code;
    const uint8_t *key;
    size_t klen;
} op;

static size_t read_ops(fuzz_in *f, op *ops) {
    size_t n = fuzz_u8(f) % (MAX_OPS + 1);
    for (size_t i = 0; i < n; i++) {
        ops[i].code = fuzz_u8(f);
        ops[i].key = NULL;
        ops[i].klen = 0;
        if ((ops[i].code & 7) == 2 || (ops[i].code & 7) == 5) { /* a seek: a target of at least 9 bytes */
            size_t l = fuzz_u8(f);
            if (l > fuzz_left(f)) l = fuzz_left(f);
            ops[i].key = f->p;
            ops[i].klen = l;
            f->p += l;
        }
    }
    return n;
}

/* A target key of at least 9 bytes made from the op's bytes (copied: keys are read up to their length only). */
static uint8_t *target_of(const op *o, size_t *len) {
    size_t n = o->klen < 9 ? 9 : o->klen;
    uint8_t *k = malloc(n);
    memset(k, 0, n);
    memcpy(k, o->key, o->klen);
    *len = n;
    return k;
}

static void check_status(int st) { FUZZ_CHECK(st == KV_OK || st == KV_ECORRUPT || st == KV_ENOMEM); }

/* Run the operations on an iterator; its key and value are read whole at each stop (so ASan sees any overrun). */
static void run_ops(iter *it, const op *ops, size_t nops) {
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < nops; i++) {
        int before = it->status(it);
        switch (ops[i].code & 7) {
        case 0: it->seek_first(it); break;
        case 1: it->seek_last(it); break;
        case 2:
        case 5: {
            size_t tl;
            uint8_t *t = target_of(&ops[i], &tl);
            it->seek(it, t, tl);
            free(t);
            break;
        }
        case 3:
        case 6:
            if (it->valid(it)) it->next(it);
            break;
        default:
            if (it->valid(it)) it->prev(it);
            break;
        }
        int st = it->status(it);
        check_status(st);
        if (before) FUZZ_CHECK(st == before); /* an error sticks */
        if (st) FUZZ_CHECK(!it->valid(it));
        if (it->valid(it)) {
            size_t kl, vl;
            const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
            for (size_t j = 0; j < kl; j++) sink ^= k[j];
            for (size_t j = 0; j < vl; j++) sink ^= v[j];
        }
    }
    (void)sink;
}

typedef struct entry {
    uint8_t *k, *v;
    size_t kl, vl;
} entry;

/* The block's entries by a forward scan: their count, or -1 when the scan fails or keys are not a table's. */
static long scan(const block *b, entry **out) {
    iter *it = block_iter_new(b, NULL, NULL);
    entry *e = NULL;
    long n = 0;
    bool ok = true;
    for (it->seek_first(it); it->valid(it); it->next(it)) {
        size_t kl, vl;
        const uint8_t *k = it->key(it, &kl), *v = it->value(it, &vl);
        if (kl <= IKEY_TRAILER || (n > 0 && ikey_cmp(e[n - 1].k, e[n - 1].kl, k, kl) >= 0)) {
            ok = false;
            break;
        }
        e = realloc(e, (size_t)(n + 1) * sizeof *e);
        e[n].k = malloc(kl);
        e[n].v = malloc(vl ? vl : 1);
        memcpy(e[n].k, k, kl);
        memcpy(e[n].v, v, vl);
        e[n].kl = kl;
        e[n].vl = vl;
        n++;
    }
    int st = it->status(it);
    check_status(st);
    it->destroy(it);
    if (!ok || st || n == 0) {
        for (long i = 0; i < n; i++) {
            free(e[i].k);
            free(e[i].v);
        }
        free(e);
        return -1;
    }
    *out = e;
    return n;
}

/* The raw block b, stored seekable, reads back the same. */
static void seekable_matches(const block *b, const entry *e, long n, const op *ops, size_t nops) {
    size_t cap = b->len * 2 + 64;
    uint8_t *stored = malloc(cap);
    deflate_encoder *enc = deflate_encoder_new();
    size_t sl = zblock_encode(enc, b->data, b->len, stored, cap);
    deflate_encoder_free(enc);
    FUZZ_CHECK(sl > 0);
    zblock *z = NULL;
    FUZZ_CHECK(zblock_parse(stored, sl, 1, 0, NULL, &z) == KV_OK);
    uint8_t *raw = NULL;
    size_t rl = 0;
    FUZZ_CHECK(zblock_inflate(z, NULL, &raw, &rl) == KV_OK);
    FUZZ_CHECK(rl == b->len && memcmp(raw, b->data, rl) == 0);
    free(raw);
    iter *zi = zblock_iter_new(z, NULL);
    long i = 0;
    for (zi->seek_first(zi); zi->valid(zi); zi->next(zi), i++) {
        size_t kl, vl;
        const uint8_t *k = zi->key(zi, &kl), *v = zi->value(zi, &vl);
        FUZZ_CHECK(i < n && kl == e[i].kl && memcmp(k, e[i].k, kl) == 0 && vl == e[i].vl &&
                   memcmp(v, e[i].v, vl) == 0);
    }
    FUZZ_CHECK(zi->status(zi) == KV_OK && i == n);
    zi->destroy(zi);
    for (size_t j = 0; j < nops; j++) {
        if (!ops[j].key) continue;
        size_t tl;
        uint8_t *t = target_of(&ops[j], &tl);
        for (int same = 0; same < 2; same++) {
            uint64_t tr1 = 0, tr2 = 0;
            const uint8_t *v;
            size_t vl;
            kv_bytes got = {0};
            int want = block_seek_value(b, t, tl, same, &tr1, &v, &vl);
            int rc = zblock_seek_value(z, NULL, t, tl, same, false, &tr2, &got);
            FUZZ_CHECK(rc == want);
            if (rc == 1) FUZZ_CHECK(tr1 == tr2 && got.len == vl && (vl == 0 || memcmp(got.data, v, vl) == 0));
            bytes_free(&got);
        }
        free(t);
    }
    zblock_free(z);
}

static void raw_block(const op *ops, size_t nops, const uint8_t *bytes, size_t n) {
    uint8_t *data = malloc(n ? n : 1);
    memcpy(data, bytes, n);
    block *b = NULL;
    int rc = block_parse(data, n, 1, 0, &b);
    if (rc != KV_OK) {
        FUZZ_CHECK(rc == KV_ECORRUPT);
        return;
    }
    iter *it = block_iter_new(b, NULL, NULL);
    run_ops(it, ops, nops);
    it->destroy(it);
    for (size_t i = 0; i < nops; i++) {
        if (!ops[i].key) continue;
        size_t tl;
        uint8_t *t = target_of(&ops[i], &tl);
        const uint8_t *v;
        size_t vl;
        uint64_t tr;
        rc = block_seek_value(b, t, tl, ops[i].code & 8, &tr, &v, &vl);
        FUZZ_CHECK(rc == 0 || rc == 1 || rc == KV_ECORRUPT);
        if (rc == 1) FUZZ_CHECK(v >= b->data && v + vl <= b->data + b->len);
        free(t);
    }
    entry *e = NULL;
    long ne = scan(b, &e);
    if (ne > 0) {
        seekable_matches(b, e, ne, ops, nops);
        for (long i = 0; i < ne; i++) {
            free(e[i].k);
            free(e[i].v);
        }
        free(e);
    }
    block_free(b);
}

static void stored_block(unsigned flags, const op *ops, size_t nops, const uint8_t *bytes, size_t n) {
    uint8_t *data = malloc(n ? n : 1);
    memcpy(data, bytes, n);
    zcode_cache *cc = flags & 2 ? zcode_cache_new() : NULL;
    zblock *z = NULL;
    int rc = zblock_parse(data, n, 1, 0, cc, &z);
    if (rc != KV_OK) {
        FUZZ_CHECK(rc == KV_ECORRUPT || rc == KV_ENOMEM);
        zcode_cache_free(cc);
        return;
    }
    uint8_t *raw = NULL;
    size_t rl = 0;
    rc = zblock_inflate(z, cc, &raw, &rl);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_ENOMEM);
    if (rc == KV_OK) FUZZ_CHECK(rl == z->raw_len);
    free(raw);
    iter *it = zblock_iter_new(z, cc);
    run_ops(it, ops, nops);
    it->destroy(it);
    for (size_t i = 0; i < nops; i++) {
        if (!ops[i].key) continue;
        size_t tl;
        uint8_t *t = target_of(&ops[i], &tl);
        kv_bytes v = {0};
        uint64_t tr;
        rc = zblock_seek_value(z, cc, t, tl, ops[i].code & 8, ops[i].code & 16, &tr, &v);
        FUZZ_CHECK(rc == 0 || rc == 1 || rc == KV_ECORRUPT || rc == KV_ENOMEM);
        bytes_free(&v);
        free(t);
    }
    zblock_free(z);
    zcode_cache_free(cc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned flags = fuzz_u8(&f);
    op ops[MAX_OPS] = {{0}};
    size_t nops = read_ops(&f, ops);
    if (flags & 1) stored_block(flags, ops, nops, f.p, fuzz_left(&f));
    else raw_block(ops, nops, f.p, fuzz_left(&f));
    return 0;
}
