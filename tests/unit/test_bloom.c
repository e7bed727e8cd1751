/* test_bloom.c — bloom filters: no false negatives, about 1% false positives at 10 bits/key, malformed filters. */
#include <stdio.h>

#include "bloom.h"
#include "t.h"

static size_t key_of(uint8_t *buf, uint64_t i, uint64_t salt) {
    /* keyspace byte + a decimal number: similar keys, as real ones are */
    buf[0] = (uint8_t)(salt & 1);
    return 1 + (size_t)snprintf((char *)buf + 1, 40, "key-%llu-%llu", (unsigned long long)salt,
                                (unsigned long long)i);
}

static double fp_rate(const kv_bytes *f, uint64_t salt) {
    uint8_t k[48];
    int fp = 0, trials = 20000;
    for (int i = 0; i < trials; i++) {
        size_t n = key_of(k, (uint64_t)i, salt);
        if (bloom_may_contain(f->data, f->len, k, n)) fp++;
    }
    return (double)fp / trials;
}

TEST(test_bloom_no_false_negatives) {
    size_t sizes[] = {1, 2, 10, 100, 1000, 10000, 50000};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        bloom_builder b;
        bloom_builder_init(&b, 10);
        uint8_t k[48];
        for (uint64_t i = 0; i < sizes[s]; i++) CHECK_OK(bloom_builder_add(&b, k, key_of(k, i, 7)));
        kv_bytes f = {0};
        CHECK_OK(bloom_builder_finish(&b, &f));
        size_t expect = (sizes[s] * 10 + 7) / 8;
        CHECK_EQ(f.len, (expect < 8 ? 8 : expect) + 1);
        CHECK_EQ(f.data[f.len - 1], 7); /* round(10 * ln 2) */
        for (uint64_t i = 0; i < sizes[s]; i++) CHECK(bloom_may_contain(f.data, f.len, k, key_of(k, i, 7)));
        double fp = fp_rate(&f, 8);
        if (sizes[s] >= 1000) CHECK_MSG(fp < 0.02, "%zu keys: false positive rate %.4f", sizes[s], fp);
        bloom_builder_free(&b);
        bytes_free(&f);
    }
}

TEST(test_bloom_rate_by_bits_per_key) {
    int bpk[] = {1, 5, 10, 20, 50};
    int expect_k[] = {1, 3, 7, 14, 30}; /* round(bpk * ln 2), clamped to 30 */
    double prev = 1.0;
    for (int j = 0; j < 5; j++) {
        bloom_builder b;
        bloom_builder_init(&b, bpk[j]);
        uint8_t k[48];
        for (uint64_t i = 0; i < 10000; i++) CHECK_OK(bloom_builder_add(&b, k, key_of(k, i, 3)));
        kv_bytes f = {0};
        CHECK_OK(bloom_builder_finish(&b, &f));
        CHECK_EQ(f.data[f.len - 1], expect_k[j]);
        for (uint64_t i = 0; i < 10000; i++) CHECK(bloom_may_contain(f.data, f.len, k, key_of(k, i, 3)));
        double fp = fp_rate(&f, 4);
        printf("# %d bits/key: false positives %.4f\n", bpk[j], fp);
        CHECK(fp <= prev);
        if (bpk[j] == 10) CHECK(fp > 0.002 && fp < 0.02);
        prev = fp;
        bloom_builder_free(&b);
        bytes_free(&f);
    }
}

TEST(test_bloom_builder_reuse_and_append) {
    /* finish appends to out and resets the builder for the next filter */
    bloom_builder b;
    bloom_builder_init(&b, 10);
    kv_bytes out = {0};
    CHECK_OK(bytes_append(&out, "hdr", 3));
    uint8_t k[48];
    for (uint64_t i = 0; i < 100; i++) CHECK_OK(bloom_builder_add(&b, k, key_of(k, i, 1)));
    CHECK_OK(bloom_builder_finish(&b, &out));
    size_t first = out.len - 3;
    for (uint64_t i = 0; i < 100; i++) CHECK(bloom_may_contain(out.data + 3, first, k, key_of(k, i, 1)));
    for (uint64_t i = 0; i < 5; i++) CHECK_OK(bloom_builder_add(&b, k, key_of(k, i, 2)));
    CHECK_OK(bloom_builder_finish(&b, &out));
    CHECK_EQ(out.len - 3 - first, 9);
    for (uint64_t i = 0; i < 5; i++) CHECK(bloom_may_contain(out.data + 3 + first, 9, k, key_of(k, i, 2)));
    bloom_builder_free(&b);
    bytes_free(&out);
}

TEST(test_bloom_empty_and_malformed) {
    bloom_builder b;
    bloom_builder_init(&b, 10);
    kv_bytes f = {0};
    CHECK_OK(bloom_builder_finish(&b, &f));
    CHECK_EQ(f.len, 9);
    uint8_t k[48];
    size_t n = key_of(k, 1, 1);
    CHECK(!bloom_may_contain(f.data, f.len, k, n)); /* a filter of no keys contains nothing */
    /* malformed: too short, k = 0, k > 30 -> "may contain" */
    CHECK(bloom_may_contain(f.data, 8, k, n));
    CHECK(bloom_may_contain(NULL, 0, k, n));
    f.data[8] = 0;
    CHECK(bloom_may_contain(f.data, f.len, k, n));
    f.data[8] = 31;
    CHECK(bloom_may_contain(f.data, f.len, k, n));
    f.data[8] = 255;
    CHECK(bloom_may_contain(f.data, f.len, k, n));
    bloom_builder_free(&b);
    bytes_free(&f);
}
