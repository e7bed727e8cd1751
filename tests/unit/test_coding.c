/* test_coding.c — varints, fixed-width integers, the byte buffer and the checksum. */
#include "coding.h"
#include "t.h"

TEST(test_varint_roundtrip) {
    uint64_t vals[] = {0, 1, 127, 128, 300, 16383, 16384, (1ull << 32) - 1, 1ull << 35, UINT64_MAX};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        uint8_t buf[10];
        uint8_t *end = put_varint64(buf, vals[i]);
        CHECK_EQ(end - buf, varint_length(vals[i]));
        uint64_t v = 0;
        CHECK(get_varint64(buf, end, &v) == end);
        CHECK(v == vals[i]);
        /* every truncation is detected */
        for (uint8_t *lim = buf; lim < end; lim++) CHECK(get_varint64(buf, lim, &v) == NULL);
    }
    uint8_t over[11];
    memset(over, 0xff, sizeof over);
    uint64_t v;
    CHECK(get_varint64(over, over + sizeof over, &v) == NULL);
    /* a tenth byte carries only bit 63: anything more would be silently lost, so it is malformed */
    for (unsigned last = 0; last < 0x80; last++) {
        over[9] = (uint8_t)last;
        const uint8_t *end = get_varint64(over, over + 10, &v);
        if (last <= 1) {
            CHECK(end == over + 10);
            CHECK(v == (last ? UINT64_MAX : UINT64_MAX >> 1));
        } else {
            CHECK(end == NULL);
        }
    }
}

/* The one-word decoder agrees with get_varint64 for every varint of up to 8 bytes and declines the longer ones,
 * whatever bytes follow the varint in the word. */
TEST(test_varint_word) {
    uint64_t seed = t_seed();
    for (int i = 0; i < 100000; i++) {
        uint64_t r = t_rand(&seed), v = r >> (t_rand(&seed) % 64);
        uint8_t buf[24];
        for (size_t j = 0; j < sizeof buf; j++) buf[j] = (uint8_t)t_rand(&seed);
        uint8_t *end = put_varint64(buf, v);
        uint64_t got = ~v;
        const uint8_t *p = get_varint64_word(buf, &got);
        if (end - buf <= 8) {
            CHECK_MSG(p == end && got == v, "value %llu", (unsigned long long)v);
        } else {
            CHECK_MSG(p == NULL, "value %llu", (unsigned long long)v);
        }
        /* and any 8 bytes, over-long (non-minimal) encodings included: the same answer as the loop over them */
        for (size_t j = 0; j < 8; j++) buf[j] = (uint8_t)(t_rand(&seed) % 4 ? buf[j] | 0x80 : buf[j] & 0x7f);
        uint64_t want = 0;
        const uint8_t *wend = get_varint64(buf, buf + 8, &want);
        p = get_varint64_word(buf, &got);
        CHECK(p == wend && (!p || got == want));
    }
}

TEST(test_fixed_little_endian) {
    uint8_t b[8];
    put_fixed32(b, 0x01020304u);
    CHECK(b[0] == 4 && b[3] == 1);
    CHECK(get_fixed32(b) == 0x01020304u);
    put_fixed64(b, 0x0102030405060708ull);
    CHECK(b[0] == 8 && b[7] == 1);
    CHECK(get_fixed64(b) == 0x0102030405060708ull);
}

TEST(test_bytes_and_lenprefixed) {
    kv_bytes b = {0};
    for (int i = 0; i < 1000; i++) CHECK_OK(bytes_append_lenprefixed(&b, "hello", 5));
    const uint8_t *p = b.data, *lim = b.data + b.len;
    int n = 0;
    while (p < lim) {
        const uint8_t *d;
        uint64_t len;
        p = get_lenprefixed(p, lim, &d, &len);
        CHECK(p != NULL);
        CHECK_MEM(d, len, "hello", 5);
        n++;
    }
    CHECK_EQ(n, 1000);
    const uint8_t *d;
    uint64_t len;
    CHECK(get_lenprefixed(b.data, b.data + 3, &d, &len) == NULL);
    bytes_free(&b);
}

TEST(test_checksum) {
    const char *s = "the quick brown fox";
    CHECK(kv_checksum(s, strlen(s)) == kv_checksum2(s, 4, s + 4, strlen(s) - 4));
    CHECK(kv_checksum(s, strlen(s)) != kv_checksum(s, strlen(s) - 1));
}
