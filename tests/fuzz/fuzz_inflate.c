/*
 * fuzz_inflate.c — the engine's own deflate decoder (engine/inflate.c) and encoder (engine/deflate.c).
 *
 * The first input byte picks a mode (its low two bits); the rest is that mode's input.
 *  0  whole-stream decoding, differential against zlib (raw, window bits -15). Two bytes give a size to ask for,
 *     the rest is the stream. Checks: deflate_decompress never crashes; when zlib decodes the whole input to its
 *     final block (every byte used), ours accepts it at zlib's size with the same bytes and refuses any other size;
 *     when ours accepts, zlib accepts the same bytes at the same size.
 *  1  span decoding of arbitrary bytes: deflate_tables_new over the input (or the fixed code), then
 *     deflate_decode_span between fuzzed bit offsets with a fuzzed room and `want`, deflate_check_end, and the same
 *     span a piece at a time (deflate_span_more), which must give the same bytes and end the same way.
 *  2  round trip: deflate_compress of the plaintext (room given by a byte) decodes to the plaintext with ours and
 *     with zlib.
 *  3  spans round trip: fuzzed cut points, with the fixed code or one learnt from a prefix; the stream decodes whole
 *     (ours and zlib), each span decodes alone to its slice, and the end-of-block code is where bits[] says.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#include "deflate.h"
#include "fuzz.h"

#define MAX_OUT (1u << 18)

/* zlib's raw inflate of in[0..n) into out[0..cap): 1 when it reached the end of the final block having used every
 * input byte (*got = bytes out), 0 otherwise. */
static int zlib_whole(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *got) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -15) != Z_OK) abort();
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)n;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    int rc = inflate(&zs, Z_FINISH);
    *got = zs.total_out;
    int ok = rc == Z_STREAM_END && zs.avail_in == 0;
    inflateEnd(&zs);
    return ok;
}

static void whole_stream(fuzz_in *f) {
    size_t ask = fuzz_u16(f);
    const uint8_t *in = f->p;
    size_t n = fuzz_left(f);
    uint8_t *zout = malloc(MAX_OUT);
    size_t zgot = 0;
    int zok = zlib_whole(in, n, zout, MAX_OUT, &zgot);
    if (zok) {
        uint8_t *out = malloc(zgot ? zgot : 1);
        FUZZ_CHECK(deflate_decompress(in, n, out, zgot) == 0);
        FUZZ_CHECK(memcmp(out, zout, zgot) == 0);
        free(out);
        if (zgot > 0) {
            out = malloc(zgot - 1 ? zgot - 1 : 1);
            FUZZ_CHECK(deflate_decompress(in, n, out, zgot - 1) != 0);
            free(out);
        }
        out = malloc(zgot + 1);
        FUZZ_CHECK(deflate_decompress(in, n, out, zgot + 1) != 0);
        free(out);
    }
    /* At the asked size (an exact allocation, so an overrun is seen). */
    uint8_t *out = malloc(ask ? ask : 1);
    if (deflate_decompress(in, n, out, ask) == 0) {
        FUZZ_CHECK(zok);
        FUZZ_CHECK(zgot == ask);
        FUZZ_CHECK(memcmp(out, zout, ask) == 0);
    } else {
        FUZZ_CHECK(!zok || zgot != ask);
    }
    free(out);
    free(zout);
}

static void spans_arbitrary(fuzz_in *f) {
    unsigned flags = fuzz_u8(f);
    uint64_t from = fuzz_u16(f), to = fuzz_u16(f);
    size_t outcap = fuzz_u16(f), want = fuzz_u16(f);
    if (flags & 1) want = SIZE_MAX;
    const uint8_t *in = f->p;
    size_t n = fuzz_left(f);
    /* Copy to an exact allocation: spans read the input's bytes at bit offsets past its start. */
    uint8_t *data = malloc(n ? n : 1);
    memcpy(data, in, n);
    deflate_tables *t = NULL;
    if (flags & 2) {
        uint64_t first = 0;
        t = deflate_tables_new(data, n, &first);
        if (t) FUZZ_CHECK(first <= (uint64_t)n * 8);
        if (t && (flags & 4)) from = first; /* from the code's end, as a block's first span */
    }
    if (flags & 8) to = (uint64_t)n * 8 - (to % 16 < (uint64_t)n * 8 ? to % 16 : 0);
    uint8_t *out = malloc(outcap ? outcap : 1);
    size_t produced = 0;
    int rc = deflate_decode_span(data, n, from, to, t, out, outcap, want, &produced);
    FUZZ_CHECK(produced <= outcap);
    (void)deflate_check_end(data, n, to, t);
    (void)deflate_check_end(data, n, from, t);
    if (want == SIZE_MAX) {
        /* Piece by piece: the same bytes, the same verdict. */
        uint8_t *out2 = malloc(outcap ? outcap : 1);
        deflate_span sp;
        deflate_span_begin(&sp, data, n, from, to, t, out2, outcap);
        int st = 0;
        unsigned step = 1 + (flags >> 4);
        for (int i = 0; st == 0 && i < 1000000; i++) st = deflate_span_more(&sp, (size_t)(sp.o - sp.out) + step);
        FUZZ_CHECK(st != 0);
        size_t got = (size_t)(sp.o - sp.out);
        FUZZ_CHECK(got <= outcap);
        if (rc == 0) {
            FUZZ_CHECK(st == 1);
            FUZZ_CHECK(got == produced && memcmp(out, out2, got) == 0);
        } else {
            FUZZ_CHECK(st == -1);
        }
        FUZZ_CHECK(deflate_span_more(&sp, SIZE_MAX) == st);
        free(out2);
    }
    free(out);
    deflate_tables_free(t);
    free(data);
}

static void round_trip(fuzz_in *f) {
    unsigned room = fuzz_u8(f);
    const uint8_t *in = f->p;
    size_t n = fuzz_left(f);
    size_t cap = room == 255 ? n + n / 8 + 64 : (n * room) / 128 + 1;
    uint8_t *z = malloc(cap);
    deflate_encoder *e = deflate_encoder_new();
    size_t zl = deflate_compress(e, in, n, z, cap);
    FUZZ_CHECK(zl <= cap);
    if (room == 255) FUZZ_CHECK(zl > 0);
    if (zl > 0) {
        uint8_t *out = malloc(n ? n : 1);
        FUZZ_CHECK(deflate_decompress(z, zl, out, n) == 0);
        FUZZ_CHECK(memcmp(out, in, n) == 0);
        uint8_t *zout = malloc(n + 1);
        size_t got = 0;
        FUZZ_CHECK(zlib_whole(z, zl, zout, n + 1, &got));
        FUZZ_CHECK(got == n && memcmp(zout, in, n) == 0);
        free(zout);
        free(out);
    }
    deflate_encoder_free(e);
    free(z);
}

static void spans_round_trip(fuzz_in *f) {
    unsigned flags = fuzz_u8(f);
    unsigned ncuts = fuzz_u8(f) % 65;
    uint32_t cuts[65];
    for (unsigned i = 0; i < ncuts; i++) cuts[i] = fuzz_u16(f);
    const uint8_t *in = f->p;
    size_t n = fuzz_left(f);
    if (n == 0) return;
    /* Ascending distinct cut points in (0, n), the first span at 0. */
    uint32_t spans[66];
    size_t nspans = 1;
    spans[0] = 0;
    for (unsigned i = 0; i < ncuts; i++) {
        uint32_t c = cuts[i] % (uint32_t)n;
        if (c > spans[nspans - 1]) spans[nspans++] = c;
    }
    deflate_encoder *e = deflate_encoder_new();
    if (flags & 1) FUZZ_CHECK(deflate_encoder_learn(e, in, n / (1 + (flags >> 4))));
    size_t cap = 2 * n + 64;
    uint8_t *z = malloc(cap);
    uint64_t bits[67];
    size_t zl = deflate_compress_spans(e, in, n, spans, nspans, z, cap, bits);
    FUZZ_CHECK(zl > 0);
    uint8_t *zd = malloc(zl); /* exact size */
    memcpy(zd, z, zl);
    deflate_tables *t = NULL;
    if (((zd[0] >> 1) & 3) == 2) {
        uint64_t first = 0;
        t = deflate_tables_new(zd, zl, &first);
        FUZZ_CHECK(t && first == bits[0]);
    } else {
        FUZZ_CHECK(bits[0] == 3);
    }
    FUZZ_CHECK(deflate_check_end(zd, zl, bits[nspans], t) == 0);
    uint8_t *out = malloc(n + 300);
    FUZZ_CHECK(deflate_decompress(zd, zl, out, n) == 0 && memcmp(out, in, n) == 0);
    size_t got = 0;
    FUZZ_CHECK(zlib_whole(zd, zl, out, n + 1, &got) && got == n && memcmp(out, in, n) == 0);
    for (size_t i = 0; i < nspans; i++) {
        size_t len = (i + 1 < nspans ? spans[i + 1] : n) - spans[i];
        size_t produced = 0;
        FUZZ_CHECK(deflate_decode_span(zd, zl, bits[i], bits[i + 1], t, out, len + 300, SIZE_MAX, &produced) == 0);
        FUZZ_CHECK(produced == len && memcmp(out, in + spans[i], len) == 0);
    }
    free(out);
    deflate_tables_free(t);
    free(zd);
    free(z);
    deflate_encoder_free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    switch (fuzz_u8(&f) & 3) {
    case 0: whole_stream(&f); break;
    case 1: spans_arbitrary(&f); break;
    case 2: round_trip(&f); break;
    default: spans_round_trip(&f); break;
    }
    return 0;
}
