/* test_deflate.c — the block codec: round trips, both directions against zlib, and malformed streams refused. */
#include <stdlib.h>
#include <zlib.h>

#include "deflate.h"
#include "t.h"

/* ---- inputs ------------------------------------------------------------------------------------------------- */

enum shape { S_ZEROS, S_RANDOM, S_TEXT, S_TABLE, S_SHORT_PERIOD, S_SKEWED, S_FAR_REPEAT, S_NSHAPES };
static const char *shape_name[S_NSHAPES] = {"zeros", "random", "text", "table", "short-period", "skewed", "far-repeat"};

/* Fill buf[0..n) with data of a shape: what tables hold (the benchmark's entries), text, runs, noise. */
static void fill(uint8_t *buf, size_t n, enum shape s, uint64_t *rs) {
    static const char *words[] = {"the", "key", "value", "store", "file", "directory", "of", "and", "a",
                                  "compaction", "level", "block", "index", "\n", ", ", "users/alice/"};
    size_t i = 0;
    switch (s) {
    case S_ZEROS:
        memset(buf, 0, n);
        break;
    case S_RANDOM:
        for (; i < n; i++) buf[i] = (uint8_t)t_rand(rs);
        break;
    case S_TEXT:
        while (i < n) {
            const char *w = words[t_rand(rs) % (sizeof words / sizeof *words)];
            for (size_t k = 0; w[k] && i < n; k++) buf[i++] = (uint8_t)w[k];
            if (i < n) buf[i++] = ' ';
        }
        break;
    case S_TABLE: /* db_bench-like entries: a 16-digit key, a trailer, 50 printable characters twice */
        while (i < n) {
            uint8_t e[160];
            size_t k = (size_t)snprintf((char *)e, 40, "%016llu", (unsigned long long)(t_rand(rs) % 1000000));
            for (int j = 0; j < 8; j++) e[k++] = (uint8_t)t_rand(rs);
            for (int j = 0; j < 50; j++) e[k + j] = e[k + 50 + j] = (uint8_t)(' ' + t_rand(rs) % 95);
            k += 100;
            for (size_t j = 0; j < k && i < n; j++) buf[i++] = e[j];
        }
        break;
    case S_SHORT_PERIOD: { /* matches at distances 1..7, which the decoder copies byte by byte */
        size_t period = 1 + t_rand(rs) % 7;
        for (; i < n; i++) buf[i] = i < period ? (uint8_t)t_rand(rs) : buf[i - period];
        for (size_t k = 0; k < n / 64; k++) buf[t_rand(rs) % n] ^= 1;
        break;
    }
    case S_SKEWED: /* symbol k with probability about 2^-(k+1): Huffman depths far beyond 15 bits, cut to 15 */
        for (; i < n; i++) {
            uint64_t r = t_rand(rs);
            buf[i] = (uint8_t)(r ? __builtin_ctzll(r) : 64);
        }
        break;
    case S_FAR_REPEAT: /* a random run repeated at distances near the 32 KiB window's edge */
        for (; i < n; i++) {
            size_t d = 32768 - (t_rand(rs) % 3);
            buf[i] = i >= d && (i / 1000) % 2 ? buf[i - d] : (uint8_t)t_rand(rs);
        }
        break;
    default:
        break;
    }
}

static int zlib_inflate(const uint8_t *in, size_t n, uint8_t *out, size_t outlen, size_t *got) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK) return -1;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)outlen;
    int rc = inflate(&z, Z_FINISH);
    *got = outlen - z.avail_out;
    inflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : -1;
}

static size_t zlib_deflate(const uint8_t *in, size_t n, uint8_t *out, size_t cap, int level, int mem, int strategy) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, level, Z_DEFLATED, -15, mem, strategy) != Z_OK) return 0;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    size_t len = cap - z.avail_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? len : 0;
}

static const size_t sizes[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 100, 257, 1000, 4096, 4200, 10000, 40000, 70000};
#define NSIZES (sizeof sizes / sizeof sizes[0])

/* ---- round trips -------------------------------------------------------------------------------------------- */

TEST(test_deflate_round_trip_and_zlib_reads_it) {
    uint64_t rs = t_seed();
    deflate_encoder *e = deflate_encoder_new();
    CHECK(e);
    size_t maxn = 70000, cap = maxn * 2 + 1024;
    uint8_t *in = malloc(maxn), *z = malloc(cap), *out = malloc(maxn + 1), *zo = malloc(maxn + 1);
    CHECK(in && z && out && zo);
    size_t compressed_any = 0;
    for (int s = 0; s < S_NSHAPES; s++) {
        for (size_t k = 0; k < NSIZES; k++) {
            size_t n = sizes[k];
            fill(in, n, (enum shape)s, &rs);
            size_t zl = deflate_compress(e, in, n, z, cap);
            /* With room to spare, everything compresses (fixed codes cost at most 9 bits a byte plus 10). */
            CHECK_MSG(zl > 0, "%s, %zu bytes: not compressed with %zu bytes of room", shape_name[s], n, cap);
            compressed_any += zl < n;
            CHECK_MSG(deflate_decompress(z, zl, out, n) == 0, "%s, %zu bytes: own stream refused", shape_name[s], n);
            CHECK_MEM(out, n, in, n);
            size_t got = 0;
            CHECK_MSG(zlib_inflate(z, zl, zo, n + 1, &got) == 0, "%s, %zu bytes: zlib refuses the stream",
                      shape_name[s], n);
            CHECK_MEM(zo, got, in, n);
            /* The size must match exactly: one byte less or more of output is an error. */
            if (n) CHECK(deflate_decompress(z, zl, out, n - 1) != 0);
            CHECK(deflate_decompress(z, zl, out, n + 1) != 0);
        }
    }
    CHECK(compressed_any > 50);
    free(in);
    free(z);
    free(out);
    free(zo);
    deflate_encoder_free(e);
}

TEST(test_deflate_compresses_like_zlib) {
    /* The sizes the engine cares about: within a few percent of zlib level 1 on table-like and text data. */
    uint64_t rs = t_seed();
    deflate_encoder *e = deflate_encoder_new();
    CHECK(e);
    uint8_t in[4200], z[8192], zz[8192];
    enum shape shapes[] = {S_TABLE, S_TEXT};
    for (int j = 0; j < 2; j++) {
        size_t ours = 0, theirs = 0;
        for (int r = 0; r < 50; r++) {
            fill(in, sizeof in, shapes[j], &rs);
            size_t a = deflate_compress(e, in, sizeof in, z, sizeof z);
            size_t b = zlib_deflate(in, sizeof in, zz, sizeof zz, 1, 8, Z_DEFAULT_STRATEGY);
            CHECK(a && b);
            ours += a;
            theirs += b;
        }
        printf("# %s: %zu bytes, zlib level 1 %zu bytes (%.3f)\n", shape_name[shapes[j]], ours, theirs,
               (double)ours / (double)theirs);
        CHECK_MSG(ours <= theirs * 110 / 100, "%s: %zu bytes against zlib's %zu", shape_name[shapes[j]], ours, theirs);
    }
    deflate_encoder_free(e);
}

TEST(test_deflate_respects_cap) {
    uint64_t rs = t_seed() + 1;
    deflate_encoder *e = deflate_encoder_new();
    CHECK(e);
    uint8_t in[5000], z[6000 + 16], out[5000];
    for (int s = 0; s < S_NSHAPES; s++) {
        fill(in, sizeof in, (enum shape)s, &rs);
        size_t full = deflate_compress(e, in, sizeof in, z, 6000);
        CHECK(full > 0);
        /* Every smaller room either fits the same stream or is refused, and nothing lands past it. */
        for (size_t cap = full > 40 ? full - 40 : 1; cap <= full + 2; cap++) {
            memset(z, 0xa5, sizeof z);
            size_t zl = deflate_compress(e, in, sizeof in, z, cap);
            if (cap < full) CHECK_EQ(zl, 0);
            else CHECK_EQ(zl, full);
            for (size_t i = cap; i < sizeof z; i++) CHECK_MSG(z[i] == 0xa5, "byte %zu written with cap %zu", i, cap);
            if (zl) {
                CHECK_OK(deflate_decompress(z, zl, out, sizeof in));
                CHECK_MEM(out, sizeof in, in, sizeof in);
            }
        }
    }
    deflate_encoder_free(e);
}

TEST(test_deflate_is_deterministic) {
    uint64_t rs = t_seed() + 2;
    deflate_encoder *a = deflate_encoder_new(), *b = deflate_encoder_new();
    CHECK(a && b);
    uint8_t in[4096], other[4096], za[8192], zb[8192];
    fill(in, sizeof in, S_TABLE, &rs);
    size_t la = deflate_compress(a, in, sizeof in, za, sizeof za);
    /* b has seen other inputs first: its hash table holds their positions. */
    for (int i = 0; i < 20; i++) {
        memcpy(other, in, sizeof other);
        for (int k = 0; k < 100; k++) other[t_rand(&rs) % sizeof other] ^= (uint8_t)(1 + i);
        deflate_compress(b, other, sizeof other, zb, sizeof zb);
    }
    size_t lb = deflate_compress(b, in, sizeof in, zb, sizeof zb);
    CHECK_MEM(za, la, zb, lb);
    deflate_encoder_free(a);
    deflate_encoder_free(b);
}

/* ---- zlib's streams --------------------------------------------------------------------------------------- */

TEST(test_deflate_reads_what_zlib_writes) {
    uint64_t rs = t_seed() + 3;
    size_t maxn = 70000, cap = maxn * 2 + 1024;
    uint8_t *in = malloc(maxn), *z = malloc(cap), *out = malloc(maxn);
    CHECK(in && z && out);
    /* Levels 0-9 (0: stored blocks), memory levels that cut the stream into many blocks, every strategy. */
    int strategies[] = {Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED};
    int streams = 0;
    for (int s = 0; s < S_NSHAPES; s++)
        for (size_t k = 0; k < NSIZES; k++)
            for (int level = 0; level <= 9; level += (k % 3) + 1)
                for (int st = 0; st < 5; st++) {
                    size_t n = sizes[k];
                    int mem = 1 + (int)((k + (size_t)st) % 9);
                    fill(in, n, (enum shape)s, &rs);
                    size_t zl = zlib_deflate(in, n, z, cap, level, mem, strategies[st]);
                    CHECK(zl > 0);
                    CHECK_MSG(deflate_decompress(z, zl, out, n) == 0, "%s, %zu bytes, zlib level %d mem %d strategy %d",
                              shape_name[s], n, level, mem, strategies[st]);
                    CHECK_MEM(out, n, in, n);
                    streams++;
                }
    printf("# %d zlib streams read\n", streams);
    free(in);
    free(z);
    free(out);
}

/* ---- malformed streams --------------------------------------------------------------------------------------- */

TEST(test_deflate_refuses_truncated_and_padded_streams) {
    uint64_t rs = t_seed() + 4;
    deflate_encoder *e = deflate_encoder_new();
    CHECK(e);
    uint8_t in[3000], z[4096], out[3000], zl_buf[4096];
    for (int s = 0; s < S_NSHAPES; s++) {
        fill(in, sizeof in, (enum shape)s, &rs);
        size_t zl = deflate_compress(e, in, sizeof in, z, sizeof z);
        CHECK(zl > 0);
        for (size_t cut = 0; cut < zl; cut++)
            CHECK_MSG(deflate_decompress(z, cut, out, sizeof in) != 0, "%s: %zu of %zu bytes accepted", shape_name[s],
                      cut, zl);
        /* A byte after the final block is not part of the stream. */
        memcpy(zl_buf, z, zl);
        zl_buf[zl] = 0;
        CHECK(deflate_decompress(zl_buf, zl + 1, out, sizeof in) != 0);
        /* The same for a zlib stream with stored blocks. */
        size_t sl = zlib_deflate(in, sizeof in, zl_buf, sizeof zl_buf, 0, 8, Z_DEFAULT_STRATEGY);
        CHECK(sl > 0);
        CHECK_OK(deflate_decompress(zl_buf, sl, out, sizeof in));
        for (size_t cut = 0; cut < sl; cut += 7) CHECK(deflate_decompress(zl_buf, cut, out, sizeof in) != 0);
    }
    deflate_encoder_free(e);
}

TEST(test_deflate_survives_damage) {
    /* Flipped bits and random bytes: an error or some output, never a read or write out of bounds (ASan). A stream
     * that still decodes to the right size after a flip is possible; it is the block checksum's job to catch it. */
    uint64_t rs = t_seed() + 5;
    deflate_encoder *e = deflate_encoder_new();
    CHECK(e);
    uint8_t in[4096], z[8192];
    int refused = 0, trials = 0;
    for (int s = 0; s < S_NSHAPES; s++) {
        fill(in, sizeof in, (enum shape)s, &rs);
        size_t zl = deflate_compress(e, in, sizeof in, z, sizeof z);
        CHECK(zl > 0);
        for (int r = 0; r < 400; r++) {
            size_t bit = t_rand(&rs) % (zl * 8);
            z[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            uint8_t *exact = malloc(sizeof in); /* exact size, so ASan sees any overrun */
            CHECK(exact);
            refused += deflate_decompress(z, zl, exact, sizeof in) != 0;
            free(exact);
            z[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            trials++;
        }
    }
    for (int r = 0; r < 3000; r++) {
        size_t n = 1 + t_rand(&rs) % 200;
        uint8_t *junk = malloc(n);
        CHECK(junk);
        for (size_t i = 0; i < n; i++) junk[i] = (uint8_t)t_rand(&rs);
        junk[0] = (uint8_t)((junk[0] & ~6u) | ((r % 3 + 0) << 1)); /* every block type */
        size_t outlen = t_rand(&rs) % 600;
        uint8_t *o = malloc(outlen ? outlen : 1);
        CHECK(o);
        (void)deflate_decompress(junk, n, o, outlen);
        free(o);
        free(junk);
    }
    printf("# %d of %d single-bit flips refused\n", refused, trials);
    /* Flips in literal bits leave a valid stream; most others are caught. */
    CHECK(refused > trials / 4);
    deflate_encoder_free(e);
}

/* A hand-made fixed-code block, to reach symbols and distances no encoder writes. */
typedef struct hand {
    uint8_t buf[64];
    size_t bits;
} hand;

static void hand_put(hand *h, unsigned v, unsigned n) { /* n bits, least significant first */
    for (unsigned i = 0; i < n; i++, h->bits++)
        if ((v >> i) & 1) h->buf[h->bits / 8] |= (uint8_t)(1u << (h->bits % 8));
}

static void hand_code(hand *h, unsigned code, unsigned len) { /* a Huffman code, most significant bit first */
    for (unsigned i = len; i-- > 0;) hand_put(h, (code >> i) & 1, 1);
}

static void hand_lit(hand *h, unsigned sym) { /* the fixed literal/length code */
    if (sym < 144) hand_code(h, 0x30 + sym, 8);
    else if (sym < 256) hand_code(h, 0x190 + sym - 144, 9);
    else if (sym < 280) hand_code(h, sym - 256, 7);
    else hand_code(h, 0xc0 + sym - 280, 8);
}

static int hand_decode(hand *h, size_t outlen) {
    uint8_t out[64];
    return deflate_decompress(h->buf, (h->bits + 7) / 8, out, outlen);
}

TEST(test_deflate_refuses_bad_symbols) {
    hand h;
    /* Good: "ab", then a match of 3 at distance 2 ("aba"), end: 5 bytes. */
    memset(&h, 0, sizeof h);
    hand_put(&h, 1, 1);
    hand_put(&h, 1, 2);
    hand_lit(&h, 'a');
    hand_lit(&h, 'b');
    hand_lit(&h, 257);
    hand_code(&h, 1, 5);
    hand_lit(&h, 256);
    CHECK_EQ(hand_decode(&h, 5), 0);
    unsigned bad_lit[] = {286, 287};
    for (int i = 0; i < 2; i++) { /* literal/length symbols 286 and 287 do not exist */
        memset(&h, 0, sizeof h);
        hand_put(&h, 1, 1);
        hand_put(&h, 1, 2);
        hand_lit(&h, 'a');
        hand_lit(&h, bad_lit[i]);
        hand_lit(&h, 256);
        CHECK(hand_decode(&h, 4) != 0);
    }
    unsigned bad_dist[] = {30, 31};
    for (int i = 0; i < 2; i++) { /* nor do distance symbols 30 and 31 */
        memset(&h, 0, sizeof h);
        hand_put(&h, 1, 1);
        hand_put(&h, 1, 2);
        hand_lit(&h, 'a');
        hand_lit(&h, 257);
        hand_code(&h, bad_dist[i], 5);
        hand_lit(&h, 256);
        CHECK(hand_decode(&h, 4) != 0);
    }
    /* A distance further back than the output. */
    memset(&h, 0, sizeof h);
    hand_put(&h, 1, 1);
    hand_put(&h, 1, 2);
    hand_lit(&h, 'a');
    hand_lit(&h, 257);
    hand_code(&h, 1, 5); /* distance 2, one byte written */
    hand_lit(&h, 256);
    CHECK(hand_decode(&h, 4) != 0);
    /* Block type 3 is reserved. */
    memset(&h, 0, sizeof h);
    hand_put(&h, 1, 1);
    hand_put(&h, 3, 2);
    CHECK(hand_decode(&h, 0) != 0);
    /* A stored block whose length and its complement disagree. */
    memset(&h, 0, sizeof h);
    hand_put(&h, 1, 1);
    hand_put(&h, 0, 2);
    h.bits = 8;
    hand_put(&h, 2, 16);
    hand_put(&h, 0xfffe ^ 1, 16);
    hand_put(&h, 'x', 8);
    hand_put(&h, 'y', 8);
    CHECK(hand_decode(&h, 2) != 0);
    /* A non-final block followed by nothing. */
    memset(&h, 0, sizeof h);
    hand_put(&h, 0, 1);
    hand_put(&h, 1, 2);
    hand_lit(&h, 'a');
    hand_lit(&h, 256);
    CHECK(hand_decode(&h, 1) != 0);
}

/* ---- spans ---------------------------------------------------------------------------------------------------- */

TEST(test_deflate_spans_decode_alone) {
    uint64_t rs = t_seed() + 6;
    deflate_encoder *e = deflate_encoder_new();
    CHECK(e);
    size_t maxn = 20000;
    uint8_t *in = malloc(maxn), *z = malloc(2 * maxn + 64), *out = malloc(maxn + 300), *whole = malloc(maxn);
    CHECK(in && z && out && whole);
    uint32_t spans[64];
    uint64_t bits[65];
    int dynamic_rounds = 0;
    for (int round = 0; round < 200; round++) {
        enum shape s = (enum shape)(round % S_NSHAPES);
        size_t n = 1 + t_rand(&rs) % maxn;
        fill(in, n, s, &rs);
        /* Random cuts, from one span to 64; the first at 0. */
        size_t nspans = 1 + t_rand(&rs) % 64;
        if (nspans > n) nspans = n;
        spans[0] = 0;
        for (size_t i = 1; i < nspans; i++) spans[i] = (uint32_t)(1 + t_rand(&rs) % (n - 1));
        for (size_t i = 1; i < nspans; i++) /* sort, then drop repeats */
            for (size_t j = i; j > 1 && spans[j - 1] > spans[j]; j--) {
                uint32_t t = spans[j];
                spans[j] = spans[j - 1];
                spans[j - 1] = t;
            }
        size_t m = 1;
        for (size_t i = 1; i < nspans; i++)
            if (spans[i] != spans[m - 1]) spans[m++] = spans[i];
        nspans = m;
        /* Half the rounds with a learnt code (from this input or the last one), half with the fixed code. */
        if (round % 4 == 1) CHECK(deflate_encoder_learn(e, in, n));
        if (round % 4 == 0) {
            deflate_encoder_free(e);
            e = deflate_encoder_new();
            CHECK(e);
        }
        size_t zl = deflate_compress_spans(e, in, n, spans, nspans, z, 2 * maxn + 64, bits);
        CHECK_MSG(zl > 0, "%s, %zu bytes, %zu spans: not compressed", shape_name[s], n, nspans);
        deflate_tables *tables = NULL;
        if (((z[0] >> 1) & 3) == 2) {
            uint64_t first;
            tables = deflate_tables_new(z, zl, &first);
            CHECK(tables);
            CHECK_EQ(first, bits[0]);
            dynamic_rounds++;
        } else {
            CHECK_EQ(bits[0], 3);
        }
        CHECK_OK(deflate_check_end(z, zl, bits[nspans], tables));
        CHECK(deflate_check_end(z, zl, bits[nspans - 1], tables) != 0);
        /* The whole stream is an ordinary deflate stream: ours and zlib's decoders read it. */
        CHECK_OK(deflate_decompress(z, zl, whole, n));
        CHECK_MEM(whole, n, in, n);
        size_t got = 0;
        CHECK(zlib_inflate(z, zl, whole, n, &got) == 0);
        CHECK_MEM(whole, got, in, n);
        for (size_t i = 0; i < nspans; i++) {
            size_t len = (i + 1 < nspans ? spans[i + 1] : n) - spans[i];
            size_t produced = 0;
            CHECK_MSG(deflate_decode_span(z, zl, bits[i], bits[i + 1], tables, out, len + 300, SIZE_MAX, &produced) == 0,
                      "%s: span %zu of %zu refused", shape_name[s], i, nspans);
            CHECK_MEM(out, produced, in + spans[i], len);
            /* Stopping early gives at least what was asked for, and a prefix of the span. */
            size_t want = t_rand(&rs) % (len + 1);
            CHECK_OK(deflate_decode_span(z, zl, bits[i], bits[i + 1], tables, out, len + 300, want, &produced));
            CHECK(produced >= want && produced <= len);
            CHECK_MEM(out, produced, in + spans[i], produced);
            /* A piece at a time, in random steps, gives the same bytes and ends the same way. */
            deflate_span sp;
            deflate_span_begin(&sp, z, zl, bits[i], bits[i + 1], tables, out, len + 300);
            int st = 0, pieces = 0;
            while (st == 0 && pieces < 100000) {
                st = deflate_span_more(&sp, (size_t)(sp.o - sp.out) + 1 + t_rand(&rs) % 64);
                pieces++;
            }
            CHECK_EQ(st, 1);
            CHECK_MEM(out, (size_t)(sp.o - sp.out), in + spans[i], len);
            CHECK_EQ(deflate_span_more(&sp, SIZE_MAX), 1); /* ended stays ended */
            /* An end that is not the span's end is not a symbol boundary, or the span's bytes differ. */
            if (deflate_decode_span(z, zl, bits[i], bits[i + 1] + 1, tables, out, len + 300, SIZE_MAX, &produced) == 0)
                CHECK(produced != len);
            /* Too little room is an error, never an overrun. */
            uint8_t *tight = malloc(len > 1 ? len - 1 : 1);
            CHECK(tight);
            if (len > 1)
                CHECK(deflate_decode_span(z, zl, bits[i], bits[i + 1], tables, tight, len - 1, SIZE_MAX, &produced) != 0);
            free(tight);
        }
        /* The end-of-block code is not part of any span. */
        size_t produced = 0;
        CHECK(deflate_decode_span(z, zl, bits[nspans - 1], zl * 8, tables, out, maxn + 300, SIZE_MAX, &produced) != 0);
        deflate_tables_free(tables);
    }
    printf("# %d of 200 streams with a learnt code\n", dynamic_rounds);
    CHECK(dynamic_rounds > 20);
    /* Offsets that are not ascending, or past the input, are refused. */
    uint32_t bad[2] = {0, 0};
    CHECK_EQ(deflate_compress_spans(e, in, 100, bad, 2, z, 1000, bits), 0);
    bad[1] = 100;
    CHECK_EQ(deflate_compress_spans(e, in, 100, bad, 2, z, 1000, bits), 0);
    bad[0] = 1;
    CHECK_EQ(deflate_compress_spans(e, in, 100, bad, 1, z, 1000, bits), 0);
    free(in);
    free(z);
    free(out);
    free(whole);
    deflate_encoder_free(e);
}

TEST(test_deflate_damaged_spans_stay_in_bounds) {
    uint64_t rs = t_seed() + 7;
    deflate_encoder *e = deflate_encoder_new();
    CHECK(e);
    uint8_t in[4096], z[8192];
    uint32_t spans[9];
    uint64_t bits[10];
    for (int i = 0; i < 9; i++) spans[i] = (uint32_t)(i * 450);
    fill(in, sizeof in, S_TABLE, &rs);
    size_t zl = deflate_compress_spans(e, in, sizeof in, spans, 9, z, sizeof z, bits);
    CHECK(zl > 0);
    int refused = 0;
    for (int r = 0; r < 4000; r++) {
        size_t bit = t_rand(&rs) % (zl * 8);
        z[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        size_t i = t_rand(&rs) % 9, outcap = 1 + t_rand(&rs) % 600, produced;
        uint8_t *o = malloc(outcap); /* exact size, so ASan sees any overrun */
        CHECK(o);
        /* Sometimes a wrong bit range too. */
        uint64_t from = bits[i] + (r % 5 == 0 ? t_rand(&rs) % 16 : 0), to = bits[i + 1];
        refused += deflate_decode_span(z, zl, from, to, NULL, o, outcap, SIZE_MAX, &produced) != 0;
        CHECK(produced <= outcap);
        free(o);
        z[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    printf("# %d of 4000 damaged span reads refused\n", refused);
    CHECK(refused > 1000);
    deflate_encoder_free(e);
}

/* ---- fuzzing the decoders directly ------------------------------------------------------------------------- */

/* Iterations of the fuzz tests: KVFS_FUZZ_ITERS from the environment, or a default that runs in a few seconds. */
static long fuzz_iters(long dflt) {
    const char *s = getenv("KVFS_FUZZ_ITERS");
    long n = s && *s ? strtol(s, NULL, 0) : 0;
    return n > 0 ? n : dflt;
}

/* A copy of p[0..n) in a buffer of exactly n bytes (at least one allocated), so that ASan sees a read past it. */
static uint8_t *exact_copy(const uint8_t *p, size_t n) {
    uint8_t *c = malloc(n ? n : 1);
    if (c && n) memcpy(c, p, n);
    return c;
}

/* Damage s[0..*n) in place (cap bytes of room) in one of several ways: flipped bits, random bytes, a cut, random
 * bytes appended, a run overwritten, or the block header's type bits changed. */
static void mutate(uint8_t *s, size_t *n, size_t cap, uint64_t *rs) {
    int kind = (int)(t_rand(rs) % 7);
    if (*n == 0) kind = 3;
    switch (kind) {
    case 0: /* a few bit flips */
        for (int k = 1 + (int)(t_rand(rs) % 4); k-- > 0;) s[t_rand(rs) % *n] ^= (uint8_t)(1u << (t_rand(rs) % 8));
        break;
    case 1: /* a few random bytes */
        for (int k = 1 + (int)(t_rand(rs) % 3); k-- > 0;) s[t_rand(rs) % *n] = (uint8_t)t_rand(rs);
        break;
    case 2: /* cut short */
        *n = t_rand(rs) % *n;
        break;
    case 3: /* grown by random bytes */
        for (size_t k = 1 + t_rand(rs) % 16; k-- > 0 && *n < cap;) s[(*n)++] = (uint8_t)t_rand(rs);
        break;
    case 4: { /* a run overwritten */
        size_t at = t_rand(rs) % *n, len = 1 + t_rand(rs) % 24;
        for (size_t k = at; k < at + len && k < *n; k++) s[k] = (uint8_t)t_rand(rs);
        break;
    }
    case 5: /* the header's bits: final flag and block type */
        s[0] = (uint8_t)((s[0] & ~7u) | (t_rand(rs) & 7));
        break;
    default: /* damage in the first bytes, where a dynamic header's counts and code lengths are */
        s[t_rand(rs) % (*n < 16 ? *n : 16)] ^= (uint8_t)(1u << (t_rand(rs) % 8));
        break;
    }
}

/* A dynamic block header with the given counts (HLIT + 257, HDIST + 1, HCLEN + 4), code-length code lengths clen and
 * then the literal/length and distance code lengths sent as plain code-length symbols, into h. */
static void hand_dynamic(hand *h, unsigned nlit, unsigned ndist, unsigned nclen, const uint8_t *clen,
                         const uint8_t *lens, unsigned nlens) {
    memset(h, 0, sizeof *h);
    hand_put(h, 1, 1);
    hand_put(h, 2, 2);
    hand_put(h, nlit - 257, 5);
    hand_put(h, ndist - 1, 5);
    hand_put(h, nclen - 4, 4);
    for (unsigned i = 0; i < nclen; i++) hand_put(h, clen[deflate_precode_order[i]], 3);
    /* With every code-length symbol 0-15 of length 4 (a complete code of 16), symbol s is code s. */
    for (unsigned i = 0; i < nlens && h->bits + 4 <= sizeof h->buf * 8; i++) hand_code(h, lens[i], 4);
}

TEST(test_deflate_refuses_bad_dynamic_headers) {
    /* Counts out of range, codes over-subscribed or incomplete, a missing end-of-block code: every one refused by
     * both the whole-stream decoder and deflate_tables_new, whatever follows. */
    uint8_t clen[19] = {0};
    for (int s = 0; s < 16; s++) clen[s] = 4; /* code-length symbols 0-15, 4 bits each: complete */
    uint8_t lens[64];
    hand h;
    uint64_t first;
    /* HLIT of 30 or 31 (287, 288 codes) and HDIST of 31 (32 codes) do not exist. */
    unsigned bad_counts[][2] = {{287, 1}, {288, 1}, {257, 31}, {257, 32}};
    for (int i = 0; i < 4; i++) {
        memset(lens, 1, sizeof lens);
        hand_dynamic(&h, bad_counts[i][0], bad_counts[i][1], 19, clen, lens, 40);
        CHECK(hand_decode(&h, 0) != 0);
        CHECK(deflate_tables_new(h.buf, sizeof h.buf, &first) == NULL);
    }
    /* The code-length code itself over-subscribed (four codes of 1 bit), or incomplete (one code of 2 bits). */
    uint8_t over[19] = {0}, under[19] = {0};
    over[0] = over[1] = over[2] = over[3] = 1;
    under[0] = 2;
    memset(lens, 0, sizeof lens);
    hand_dynamic(&h, 257, 1, 19, over, lens, 0);
    CHECK(hand_decode(&h, 0) != 0);
    CHECK(deflate_tables_new(h.buf, sizeof h.buf, &first) == NULL);
    hand_dynamic(&h, 257, 1, 19, under, lens, 0);
    CHECK(hand_decode(&h, 0) != 0);
    CHECK(deflate_tables_new(h.buf, sizeof h.buf, &first) == NULL);
    /* Nineteen code-length codes of 5 bits: incomplete. */
    uint8_t clen_all[19] = {0};
    for (int s = 0; s < 19; s++) clen_all[s] = 5;
    hand_dynamic(&h, 257, 1, 19, clen_all, lens, 0);
    CHECK(hand_decode(&h, 0) != 0);
    CHECK(deflate_tables_new(h.buf, sizeof h.buf, &first) == NULL);
}

/* What a span decode may legitimately report: rc 0 or -1, produced within the room. */
static bool span_sane(int rc, size_t produced, size_t outcap) { return (rc == 0 || rc == -1) && produced <= outcap; }

TEST(test_deflate_fuzz_decoders) {
    /* Random and damaged streams fed straight to every decoding entry point (no checksum in the way): an answer or
     * an error, never a read or write outside the exact-size buffers (run under ASan), never more output than room,
     * never a span that claims to end at a bit it did not reach. KVFS_FUZZ_ITERS sets the number of rounds. */
    uint64_t rs = t_seed() + 8;
    long iters = fuzz_iters(100000);
    deflate_encoder *e = deflate_encoder_new(), *learnt = deflate_encoder_new();
    CHECK(e && learnt);
    /* The seeds: our streams (fixed and learnt codes, spans), and zlib's (stored blocks, many blocks, fixed). */
    enum { NSEEDS = 24, SEEDCAP = 12000 };
    uint8_t *seed[NSEEDS];
    size_t seedlen[NSEEDS], rawlen[NSEEDS];
    uint64_t seedbits[NSEEDS][9];
    size_t nbits[NSEEDS];
    uint8_t *in = malloc(5000);
    CHECK(in);
    fill(in, 5000, S_TABLE, &rs);
    CHECK(deflate_encoder_learn(learnt, in, 5000));
    int strategies[] = {Z_DEFAULT_STRATEGY, Z_FIXED, Z_HUFFMAN_ONLY, Z_RLE};
    for (int i = 0; i < NSEEDS; i++) {
        size_t n = 1 + t_rand(&rs) % 5000;
        fill(in, n, (enum shape)(i % S_NSHAPES), &rs);
        seed[i] = malloc(SEEDCAP);
        CHECK(seed[i]);
        rawlen[i] = n;
        nbits[i] = 0;
        if (i % 3 == 0) {
            seedlen[i] = deflate_compress(e, in, n, seed[i], SEEDCAP);
        } else if (i % 3 == 1) {
            uint32_t spans[8];
            size_t ns = 1 + t_rand(&rs) % 8;
            if (ns > n) ns = n;
            for (size_t k = 0; k < ns; k++) spans[k] = (uint32_t)(k * (n / ns));
            seedlen[i] = deflate_compress_spans(i % 2 ? learnt : e, in, n, spans, ns, seed[i], SEEDCAP, seedbits[i]);
            nbits[i] = ns + 1;
        } else {
            seedlen[i] = zlib_deflate(in, n, seed[i], SEEDCAP, (int)(t_rand(&rs) % 10), 1 + (int)(t_rand(&rs) % 9),
                                      strategies[t_rand(&rs) % 4]);
        }
        CHECK(seedlen[i] > 0);
    }
    uint8_t *work = malloc(SEEDCAP + 64);
    CHECK(work);
    long decoded = 0, spans_ok = 0;
    for (long r = 0; r < iters; r++) {
        int s = (int)(t_rand(&rs) % NSEEDS);
        size_t n;
        if (r % 10 == 9) { /* pure noise, every block type */
            n = t_rand(&rs) % 300;
            for (size_t k = 0; k < n; k++) work[k] = (uint8_t)t_rand(&rs);
        } else {
            n = seedlen[s];
            memcpy(work, seed[s], n);
            for (int m = 1 + (int)(t_rand(&rs) % 2); m-- > 0;) mutate(work, &n, SEEDCAP + 64, &rs);
        }
        uint8_t *z = exact_copy(work, n);
        CHECK(z);
        /* Whole-stream decoding into exactly outlen bytes: the right size, a little less or more, or random. */
        size_t outlen = rawlen[s];
        switch (t_rand(&rs) % 4) {
        case 0: outlen = t_rand(&rs) % 6000; break;
        case 1: outlen = outlen > 0 ? outlen - 1 - t_rand(&rs) % outlen : 0; break;
        case 2: outlen += t_rand(&rs) % 300; break;
        default: break;
        }
        uint8_t *out = malloc(outlen ? outlen : 1);
        CHECK(out);
        int rc = deflate_decompress(z, n, out, outlen);
        CHECK(rc == 0 || rc == -1);
        decoded += rc == 0;
        free(out);
        /* The dynamic header reader; then spans from its end (or from bit 3, with the fixed code) at random bit
         * ranges, some right, some off by a little, some past the end of the input. */
        uint64_t first = 0;
        deflate_tables *t = deflate_tables_new(z, n, &first);
        if (t) CHECK(first <= (uint64_t)n * 8);
        for (int q = 0; q < 3; q++) {
            uint64_t from, to;
            if (nbits[s] && t_rand(&rs) % 2) {
                size_t k = t_rand(&rs) % (nbits[s] - 1);
                from = seedbits[s][k];
                to = seedbits[s][k + 1];
            } else {
                from = t ? first : 3;
                to = from + t_rand(&rs) % ((uint64_t)n * 8 + 64);
            }
            if (t_rand(&rs) % 4 == 0) from += t_rand(&rs) % 16;
            if (t_rand(&rs) % 4 == 0) to += t_rand(&rs) % 64;
            if (t_rand(&rs) % 8 == 0) to = UINT64_MAX - t_rand(&rs) % 8;
            size_t outcap = t_rand(&rs) % 2 ? 1 + t_rand(&rs) % 6000 : t_rand(&rs) % 40;
            size_t want = t_rand(&rs) % 3 ? SIZE_MAX : t_rand(&rs) % 500;
            uint8_t *o = malloc(outcap ? outcap : 1);
            CHECK(o);
            size_t produced = 0;
            const deflate_tables *tab = t_rand(&rs) % 4 ? t : NULL; /* sometimes the wrong code */
            rc = deflate_decode_span(z, n, from, to, tab, o, outcap, want, &produced);
            CHECK_MSG(span_sane(rc, produced, outcap), "span [%llu, %llu) of %zu bytes: rc %d, %zu of %zu bytes",
                      (unsigned long long)from, (unsigned long long)to, n, rc, produced, outcap);
            if (rc == 0 && want == SIZE_MAX) CHECK(to <= (uint64_t)n * 8); /* a span ends inside its input */
            spans_ok += rc == 0;
            /* A piece at a time: the state only moves forward, the output only grows, and once it has ended or
             * failed it stays so. */
            deflate_span sp;
            deflate_span_begin(&sp, z, n, from, to, tab, o, outcap);
            int st = 0;
            size_t last = 0;
            for (int pieces = 0; st == 0 && pieces < 20000; pieces++) {
                st = deflate_span_more(&sp, (size_t)(sp.o - sp.out) + 1 + t_rand(&rs) % 32);
                CHECK(sp.o >= sp.out && (size_t)(sp.o - sp.out) <= outcap && (size_t)(sp.o - sp.out) >= last);
                last = (size_t)(sp.o - sp.out);
            }
            CHECK(st == 1 || st == -1);
            CHECK_EQ(deflate_span_more(&sp, SIZE_MAX), st);
            if (st == 1) CHECK(to <= (uint64_t)n * 8);
            free(o);
            /* The end-of-block check at any bit, in range or not. */
            uint64_t bit = t_rand(&rs) % 2 ? to : t_rand(&rs) % ((uint64_t)n * 8 + 32);
            rc = deflate_check_end(z, n, bit, tab);
            CHECK(rc == 0 || rc == -1);
            if (rc == 0) CHECK(bit < (uint64_t)n * 8);
        }
        deflate_tables_free(t);
        free(z);
    }
    printf("# %ld rounds: %ld streams decoded whole, %ld spans decoded\n", iters, decoded, spans_ok);
    for (int i = 0; i < NSEEDS; i++) free(seed[i]);
    free(work);
    free(in);
    deflate_encoder_free(e);
    deflate_encoder_free(learnt);
}
