/*
 * mkseeds.c — writes the seed inputs of the fuzz harnesses into tests/fuzz/corpus/<target>/ (make fuzz-seeds):
 * real blocks, seekable blocks, tables, logs, manifest edits, batch records, blob references and blob files, made
 * by the engine's own writers, each framed as its harness reads its input. Small on purpose: a few hundred bytes to
 * a few KB each. Run from the repository root; it overwrites the seeds it names (seed-*), never other files.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "ctl.h"
#include "block.h"
#include "dbformat.h"
#include "deflate.h"
#include "kv.h"
#include "sst.h"
#include "version.h"
#include "wal.h"
#include "zblock.h"

static const char *root = "tests/fuzz/corpus";

static void put(const char *target, const char *name, const void *head, size_t hn, const void *body, size_t bn) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", root, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/seed-%s", root, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(head, 1, hn, f) != hn || (bn && fwrite(body, 1, bn, f) != bn) || fclose(f)) {
        perror(path);
        exit(1);
    }
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)l + 1);
    if (fread(b, 1, (size_t)l, f) != (size_t)l) exit(1);
    fclose(f);
    *n = (size_t)l;
    return b;
}

/* Internal key i of a table: keyspace 0, "k/<i>" (with a longer shared prefix for odd shapes), sequence 100 + i. */
static size_t make_key(uint8_t *out, int i, int shape) {
    char u[64];
    int l = snprintf(u, sizeof u, shape ? "dir/sub/file-%05d" : "k%04d", i);
    out[0] = 0;
    memcpy(out + 1, u, (size_t)l);
    put_fixed64(out + 1 + l, ikey_pack(100 + (uint64_t)i, i % 5 == 0 ? KV_TYPE_DELETE : KV_TYPE_VALUE));
    return (size_t)l + 1 + 8;
}

static size_t make_value(uint8_t *out, int i) {
    uint8_t *p = put_varint64(out, 1700000000000ull + (uint64_t)i);
    int l = snprintf((char *)p, 64, "value %d %s", i, i % 3 ? "aaaaaaaaaaaa" : "");
    return (size_t)(p - out) + (size_t)l;
}

static void blocks(void) {
    deflate_encoder *enc = deflate_encoder_new();
    for (int s = 0; s < 4; s++) {
        block_builder b;
        block_builder_init(&b, s % 2 ? 4 : 16);
        int n = s < 2 ? 20 : 60;
        for (int i = 0; i < n; i++) {
            uint8_t k[64], v[128];
            size_t kl = make_key(k, i, s & 1), vl = make_value(v, i);
            block_builder_add(&b, k, kl, v, vl);
        }
        const uint8_t *raw;
        size_t rl;
        block_builder_finish(&b, &raw, &rl);
        /* ops: seek_first, next, next, seek <first key>, prev, seek_last, prev */
        uint8_t head[128];
        size_t h = 0;
        uint8_t k0[64], k1[64];
        size_t k0l = make_key(k0, 3, s & 1), k1l = make_key(k1, n - 2, s & 1);
        head[h++] = 0; /* flags: raw */
        head[h++] = 7;
        head[h++] = 0;
        head[h++] = 3;
        head[h++] = 3;
        head[h++] = 2;
        head[h++] = (uint8_t)k0l;
        memcpy(head + h, k0, k0l);
        h += k0l;
        head[h++] = 4;
        head[h++] = 1;
        head[h++] = 5 | 8;
        head[h++] = (uint8_t)k1l;
        memcpy(head + h, k1, k1l);
        h += k1l;
        char name[32];
        snprintf(name, sizeof name, "raw-%d", s);
        put("block", name, head, h, raw, rl);
        size_t cap = rl * 2 + 64;
        uint8_t *z = malloc(cap);
        if (s == 2) deflate_encoder_learn(enc, raw, rl);
        size_t zl = zblock_encode(enc, raw, rl, z, cap);
        if (zl) {
            head[0] = s % 2 ? 1 : 3; /* stored seekable, with or without a code cache */
            snprintf(name, sizeof name, "seekable-%d", s);
            put("block", name, head, h, z, zl);
        }
        free(z);
        block_builder_free(&b);
    }
    deflate_encoder_free(enc);
}

static void tables(const char *dir) {
    kv_env *env = kv_env_posix();
    for (int s = 0; s < 4; s++) {
        sst_options o = {.block_bytes = 256, .restart_interval = 4, .compression = s != 0,
                         .bloom_bits_per_key = s == 3 ? 0 : 10, .whole_stream_blocks = s == 2};
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%06d.sst", dir, s + 1);
        sst_builder *b;
        if (sst_builder_new(env, path, &o, &b)) exit(1);
        for (int i = 0; i < 40; i++) {
            uint8_t k[64], v[128];
            size_t kl = make_key(k, i, s & 1), vl = make_value(v, i);
            if (sst_builder_add(b, k, kl, v, vl)) exit(1);
        }
        if (sst_builder_finish(b, NULL)) exit(1);
        size_t n;
        uint8_t *f = slurp(path, &n);
        char name[32];
        uint8_t flags = (uint8_t)(1 | (s & 1 ? 2 : 0));
        snprintf(name, sizeof name, "table-%d", s);
        put("sst", name, &flags, 1, f, n);
        free(f);
    }
}

/* A batch record: fixed64 seq | varint ts | varint count | ops (type, lenprefixed ukey, lenprefixed payload). */
static void batch_record(kv_bytes *r, uint64_t seq, int nops) {
    bytes_clear(r);
    bytes_append_fixed64(r, seq);
    bytes_append_varint(r, 1700000000000ull);
    bytes_append_varint(r, (uint64_t)nops);
    for (int i = 0; i < nops; i++) {
        char k[32];
        int kl = snprintf(k, sizeof k, "%ckey-%d", 0, i);
        uint8_t t = i % 3 == 2 ? KV_TYPE_DELETE : KV_TYPE_VALUE;
        bytes_append(r, &t, 1);
        bytes_append_lenprefixed(r, k, (size_t)kl);
        if (t != KV_TYPE_DELETE) bytes_append_lenprefixed(r, "some value", 10);
    }
}

static void logs(const char *dir) {
    kv_env *env = kv_env_posix();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/000009.log", dir);
    wal_writer *w;
    if (wal_writer_open(env, path, &w)) exit(1);
    kv_bytes rec = {0}, framed = {0};
    uint8_t one = 1;
    bytes_append(&framed, &one, 1);
    for (int i = 0; i < 4; i++) {
        batch_record(&rec, 10 + (uint64_t)i, 1 + i);
        wal_append(w, rec.data, rec.len);
        uint8_t l[2] = {(uint8_t)rec.len, (uint8_t)(rec.len >> 8)};
        bytes_append(&framed, l, 2);
        bytes_append(&framed, rec.data, rec.len);
    }
    /* manifest edits */
    version_edit e;
    edit_init(&e);
    e.has_log_number = e.has_next_file = e.has_last_seq = true;
    e.log_number = 9;
    e.next_file = 12;
    e.last_seq = 13;
    file_meta *fm = file_meta_new();
    fm->file_no = 7;
    fm->file_size = 4096;
    fm->entries = 10;
    fm->tombstones = 2;
    fm->min_seq = 1;
    fm->max_seq = 9;
    uint8_t k[64];
    size_t kl = make_key(k, 1, 0);
    bytes_append(&fm->smallest, k, kl);
    kl = make_key(k, 9, 0);
    bytes_append(&fm->largest, k, kl);
    edit_add_file(&e, 1, fm);
    edit_delete_file(&e, 0, 5);
    edit_add_blob(&e, 8);
    edit_delete_blob(&e, 6);
    bytes_clear(&rec);
    edit_encode(&e, &rec);
    wal_append(w, rec.data, rec.len);
    uint8_t l[2] = {(uint8_t)rec.len, (uint8_t)(rec.len >> 8)};
    bytes_append(&framed, l, 2);
    bytes_append(&framed, rec.data, rec.len);
    edit_free(&e);
    file_meta_unref(fm);
    wal_writer_close(w);
    size_t n;
    uint8_t *f = slurp(path, &n);
    uint8_t zero = 0;
    put("wal", "log", &zero, 1, f, n);
    put("wal", "records", framed.data, framed.len, NULL, 0);
    framed.data[0] = 3; /* records, then a torn tail */
    bytes_append(&framed, "\xff\xff", 2);
    bytes_append(&framed, f, n > 20 ? 20 : n);
    put("wal", "records-torn", framed.data, framed.len, NULL, 0);
    free(f);
    bytes_free(&rec);
    bytes_free(&framed);
}

static void blobs(void) {
    /* A direct reference to two records of 000001.blob (16-byte header; a record of L bytes in one chunk takes
     * L + 8 bytes) and a hole, then the records. */
    const char *r1 = "hello blob world", *r2 = "second record, a little longer than the first";
    blob_ref r = {0};
    blob_extent e1 = {1, 16, strlen(r1), 2, 10}, hole = {0, 0, 0, 0, 100}, e2 = {1, 16 + 8 + strlen(r1), strlen(r2), 0,
                                                                                  strlen(r2)};
    blob_ref_append(&r, &e1);
    blob_ref_append(&r, &hole);
    blob_ref_append(&r, &e2);
    kv_bytes enc = {0}, in = {0};
    blob_ref_encode(&r, &enc);
    uint8_t flags = 1;
    bytes_append(&in, &flags, 1);
    uint8_t l[2] = {(uint8_t)enc.len, (uint8_t)(enc.len >> 8)};
    bytes_append(&in, l, 2);
    bytes_append(&in, enc.data, enc.len);
    const char *recs[2] = {r1, r2};
    for (int i = 0; i < 2; i++) {
        uint8_t rl[2] = {(uint8_t)strlen(recs[i]), 0};
        bytes_append(&in, rl, 2);
        bytes_append(&in, recs[i], strlen(recs[i]));
    }
    bytes_append(&in, "\0\0", 2);
    put("blob", "direct", in.data, in.len, NULL, 0);
    /* A paged reference whose one page is record 1 of the file: a direct reference of 10 bytes into record 2. */
    kv_bytes page = {0}, top = {0};
    blob_ref pr = {0};
    /* record 1 = the page (a direct reference), record 2 = data */
    const char *data = "paged value bytes";
    blob_extent de = {1, 100, strlen(data), 0, 10}; /* rec_off set below */
    bytes_clear(&in);
    blob_ref_append(&pr, &de);
    /* the data record is the second record: after the header and the page record (its length is known once
     * encoded; the varint of rec_off may change the length, so encode twice) */
    for (int pass = 0; pass < 2; pass++) {
        bytes_clear(&page);
        blob_ref_encode(&pr, &page);
        pr.ext[0].rec_off = 16 + 8 + page.len;
    }
    bytes_clear(&page);
    blob_ref_encode(&pr, &page);
    /* top level: varint size | 0 | varint m | page = file_no | rec_off | rec_len | len */
    bytes_append_varint(&top, 10);
    bytes_append_varint(&top, 0);
    bytes_append_varint(&top, 1);
    bytes_append_varint(&top, 1);
    bytes_append_varint(&top, 16);
    bytes_append_varint(&top, page.len);
    bytes_append_varint(&top, 10);
    bytes_append(&in, &flags, 1);
    uint8_t tl[2] = {(uint8_t)top.len, 0};
    bytes_append(&in, tl, 2);
    bytes_append(&in, top.data, top.len);
    uint8_t pl[2] = {(uint8_t)page.len, 0};
    bytes_append(&in, pl, 2);
    bytes_append(&in, page.data, page.len);
    uint8_t dl[2] = {(uint8_t)strlen(data), 0};
    bytes_append(&in, dl, 2);
    bytes_append(&in, data, strlen(data));
    bytes_append(&in, "\0\0", 2);
    put("blob", "paged", in.data, in.len, NULL, 0);
    blob_ref_free(&r);
    blob_ref_free(&pr);
    bytes_free(&enc);
    bytes_free(&in);
    bytes_free(&page);
    bytes_free(&top);
}

static void names(void) {
    static const char *keys[] = {"users/alice/email", "a//b/", "./..", "100%", "my%20file", "a%2Fb", "x%F"};
    for (int i = 0; i < 7; i++) {
        char name[16];
        uint8_t flags = (uint8_t)(i % 2 ? 2 : 0);
        snprintf(name, sizeof name, "key-%d", i);
        put("names", name, &flags, 1, keys[i], strlen(keys[i]));
    }
    char longkey[700];
    memset(longkey, 'x', sizeof longkey);
    longkey[300] = '/';
    longkey[301] = '%';
    put("names", "key-long", "\0", 1, longkey, sizeof longkey);
    static const char *paths[] = {"/", "/a/b%F", "/%/x", "/%2E%2E", "/%00/%25", "/a%+/b", "/a/b/%F"};
    for (int i = 0; i < 7; i++) {
        char name[16];
        snprintf(name, sizeof name, "path-%d", i);
        put("names", name, "\1", 1, paths[i], strlen(paths[i]));
    }
}

/* A small real store (a flushed table, a blob file, a log with batches not yet flushed), framed as fuzz_open reads
 * it: record logs (the manifest, the write-ahead log, the batch log) as their payloads, other files as they are. */
static void store(const char *tmp, int shape) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/store%d", tmp, shape);
    kv_options o;
    kv_options_init(&o);
    o.background_threads = false;
    o.memtable_bytes = 4096;
    o.block_bytes = 512;
    o.blob_threshold = 200;
    o.batch_log_max_batches = shape ? 100 : 0;
    kv_db *db;
    if (kv_open(dir, &o, &db)) {
        fprintf(stderr, "kv_open %s: %s\n", dir, kv_errmsg());
        exit(1);
    }
    char big[300];
    memset(big, 'b', sizeof big);
    for (int i = 0; i < 40; i++) {
        char k[32], v[64];
        int kl = snprintf(k, sizeof k, "dir/key-%03d", i), vl = snprintf(v, sizeof v, "value of %d", i);
        if (i % 9 == 4) kv_put(db, k, (size_t)kl, big, sizeof big, 0);
        else if (i % 7 == 3) kv_delete(db, k, (size_t)kl, 0);
        else kv_put(db, k, (size_t)kl, v, (size_t)vl, 0);
    }
    kv_close(db);
    kv_free(db);
    kv_env *env = kv_env_posix();
    char **names;
    size_t n;
    if (env->list_dir(env, dir, &names, &n)) exit(1);
    kv_bytes in = {0};
    uint8_t flags = (uint8_t)(shape ? 3 : 0);
    bytes_append(&in, &flags, 1);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) exit(1);
        bool log = strncmp(names[i], "MANIFEST-", 9) == 0 || strstr(names[i], ".log") != NULL;
        kv_bytes content = {0};
        if (log) {
            wal_reader *r;
            if (wal_reader_open(env, path, names[i], &r)) exit(1);
            const uint8_t *p;
            size_t len;
            uint64_t off;
            while (wal_read(r, &p, &len, &off) == KV_OK) {
                uint8_t l[2] = {(uint8_t)len, (uint8_t)(len >> 8)};
                bytes_append(&content, l, 2);
                bytes_append(&content, p, len);
            }
            wal_reader_close(r);
        } else {
            size_t fl;
            uint8_t *f = slurp(path, &fl);
            bytes_append(&content, f, fl);
            free(f);
        }
        if (content.len > 0xffff) {
            fprintf(stderr, "%s: too large for a seed\n", path);
            exit(1);
        }
        uint8_t head[2] = {(uint8_t)log, (uint8_t)strlen(names[i])};
        bytes_append(&in, head, 2);
        bytes_append(&in, names[i], strlen(names[i]));
        uint8_t l[2] = {(uint8_t)content.len, (uint8_t)(content.len >> 8)};
        bytes_append(&in, l, 2);
        bytes_append(&in, content.data, content.len);
        bytes_free(&content);
    }
    kv_env_free_names(names, n);
    char name[16];
    snprintf(name, sizeof name, "store-%d", shape);
    put("open", name, in.data, in.len, NULL, 0);
    bytes_free(&in);
}

/* fuzz_batchlog: a batch log file a store wrote (raw), and files of batch records (as records), with and without a
 * gap, read-write and read-only. */
static void frame_file(kv_bytes *in, unsigned no, unsigned kind, const void *p, size_t n) {
    uint8_t h[4] = {(uint8_t)no, (uint8_t)kind, (uint8_t)n, (uint8_t)(n >> 8)};
    bytes_append(in, h, 4);
    bytes_append(in, p, n);
}

static void records_file(kv_bytes *in, unsigned no, uint64_t from, uint64_t to) {
    kv_bytes payloads = {0}, rec = {0};
    for (uint64_t seq = from; seq <= to; seq++) {
        batch_record(&rec, seq, 1 + (int)(seq % 3));
        uint8_t l[2] = {(uint8_t)rec.len, (uint8_t)(rec.len >> 8)};
        bytes_append(&payloads, l, 2);
        bytes_append(&payloads, rec.data, rec.len);
    }
    frame_file(in, no, 1, payloads.data, payloads.len);
    bytes_free(&payloads);
    bytes_free(&rec);
}

static void batchlogs(const char *tmp) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/blog", tmp);
    kv_options o;
    kv_options_init(&o);
    o.create_if_missing = true;
    o.batch_log_max_batches = 1000;
    kv_db *db;
    if (kv_open(dir, &o, &db) != KV_OK) exit(1);
    kv_batch *b;
    for (int i = 0; i < 6; i++) {
        char k[16], v[16];
        snprintf(k, sizeof k, "key%d", i);
        snprintf(v, sizeof v, "value%d", i);
        if (kv_batch_new(&b) != KV_OK || kv_batch_put(b, k, strlen(k), v, strlen(v)) != KV_OK ||
            (i % 2 && kv_batch_delete(b, "key0", 4) != KV_OK) || kv_write(db, b, 0, NULL) != KV_OK)
            exit(1);
        kv_batch_free(b);
    }
    if (kv_close(db) != KV_OK) exit(1);
    kv_free(db);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/BATCHLOG-000001", dir);
    size_t n;
    uint8_t *file = slurp(path, &n);
    /* flags 0: read-write, count retention (next byte) */
    static const uint8_t params[] = {0, 99, 0, 0, 6, 0};
    kv_bytes in = {0};
    bytes_append(&in, params, sizeof params);
    frame_file(&in, 1, 0, file, n);
    put("batchlog", "store", in.data, in.len, NULL, 0);
    free(file);
    bytes_clear(&in);
    bytes_append(&in, params, sizeof params);
    records_file(&in, 1, 1, 4);
    records_file(&in, 2, 5, 7);
    put("batchlog", "records", in.data, in.len, NULL, 0);
    in.data[0] = 1; /* read-only */
    put("batchlog", "records-ro", in.data, in.len, NULL, 0);
    static const uint8_t gap[] = {4, 99, 9, 0, 2, 0, 9, 0}; /* 100 batches, 64 * 9 bytes, floor 2, last 9 */
    bytes_clear(&in);
    bytes_append(&in, gap, sizeof gap);
    records_file(&in, 1, 1, 3);
    records_file(&in, 3, 6, 9);
    put("batchlog", "gap", in.data, in.len, NULL, 0);
    bytes_free(&in);
}

/* fuzz_blobfile: a blob file of three records as the writer makes it, with two of them named as extents (one of it
 * part), and the same file re-sealed after a change (flag 1). */
static void blobfiles(const char *tmp) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/000001.blob", tmp);
    blob_writer *w;
    if (blob_writer_new(kv_env_posix(), path, 1, &w) != KV_OK) exit(1);
    uint8_t v[1000];
    for (size_t i = 0; i < sizeof v; i++) v[i] = (uint8_t)(i * 7);
    blob_extent e[3];
    if (blob_writer_add(w, "hello", 5, &e[0]) || blob_writer_add(w, v, 300, &e[1]) || blob_writer_add(w, v, 1000, &e[2]) ||
        blob_writer_close(w))
        exit(1);
    size_t n;
    uint8_t *file = slurp(path, &n);
    uint8_t head[2 + 2 * 8] = {0, 2};
    uint64_t vals[8] = {e[0].rec_off, e[0].rec_len, 0, 5, e[2].rec_off, e[2].rec_len, 100, 500};
    for (int i = 0; i < 8; i++) head[2 + 2 * i] = (uint8_t)vals[i], head[3 + 2 * i] = (uint8_t)(vals[i] >> 8);
    put("blobfile", "records", head, sizeof head, file, n);
    head[0] = 1;
    file[e[1].rec_off + 8 + 10] ^= 0x55; /* a byte of the second record, its checksum re-sealed */
    put("blobfile", "resealed", head, sizeof head, file, n);
    free(file);
}

/* fuzz_batch: `kvfs batch` input of each shape the format has. */
static void batch_text(void) {
    static const struct {
        const char *name, *text;
    } in[] = {
        {"puts", "put users/alice alice@example.org\nput users/bob bob example %25 100%\n"},
        {"mixed", "# a comment\n\nput a 1\ndel b\nput c\n  put\td\tx y\r\ndel e/f/g\n"},
        {"escapes", "put bin%00%FF/x%20y v%0Aw%25\nput a/%/b%F v\nput long%+/name v\nput caf\xc3\xa9 \xc3\xa9t\xc3\xa9\n"},
        {"dots", "put %2E%2E/%2E x\ndel %2E\n"},
        {"bad-op", "put a 1\nget a\n"},
        {"bad-escape", "put a%4g 1\n"},
        {"del-extra", "del a b\n"},
    };
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) put("batch", in[i].name, in[i].text, strlen(in[i].text), NULL, 0);
}

/* fuzz_ctl: requests as a kvfs client sends them (mode 0: with the batch log), one per command the daemon runs, with
 * the stdin put and batch read; and the replies a daemon sends (mode 1). */
static void ctl(void) {
    static const struct {
        const char *name;
        int argc;
        const char *argv[8];
        const char *in;
    } reqs[] = {
        {"get", 3, {"get", "D", "a/b"}, ""},
        {"get-absent", 3, {"get", "D", "nope"}, ""},
        {"get-blob", 3, {"get", "D", "big"}, ""},
        {"put", 4, {"put", "D", "k%20x", "value"}, ""},
        {"put-stdin", 3, {"put", "D", "k"}, "from stdin\n"},
        {"del", 5, {"del", "D", "a", "gone", "--sync"}, ""},
        {"batch", 2, {"batch", "D"}, "put a/c 1%0A2\ndel a/b\n# comment\nput e\n"},
        {"scan", 6, {"scan", "D", "--prefix", "a", "--limit", "5"}, ""},
        {"scan-json", 5, {"scan", "D", "--reverse", "--json", "--end=big"}, ""},
        {"resolve", 3, {"resolve", "D", "bi"}, ""},
        {"short", 3, {"short", "D", "a/b"}, ""},
        {"stats", 3, {"stats", "D", "--json"}, ""},
        {"compact", 6, {"compact", "D", "--start", "a", "--end", "b"}, ""},
        {"check", 2, {"check", "D"}, ""},
        {"changes", 5, {"changes", "D", "--since", "1", "--json"}, ""},
        {"prune", 4, {"prune", "D", "--before", "3"}, ""},
        {"usage", 3, {"get", "D", "--bogus"}, ""},
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        uint8_t hdr[1 + CTL_REQ_HDR_BYTES];
        char *body;
        size_t n;
        hdr[0] = 0;
        if (ctl_request_encode(reqs[i].argc, (char *const *)reqs[i].argv, hdr + 1, &body, &n) != 0) exit(1);
        size_t in = strlen(reqs[i].in);
        char *all = malloc(n + in);
        memcpy(all, body, n);
        memcpy(all + n, reqs[i].in, in);
        char name[64];
        snprintf(name, sizeof name, "req-%s", reqs[i].name);
        put("ctl", name, hdr, sizeof hdr, all, n + in);
        free(all);
        free(body);
    }
    static const struct {
        const char *name;
        enum ctl_reply_kind kind;
        ctl_reply r;
    } reps[] = {
        {"ok", CTL_REPLY_STATUS, {0}},
        {"fail", CTL_REPLY_STATUS, {.status = 1}},
        {"sigpipe", CTL_REPLY_STATUS, {.status = -13}},
        {"denied", CTL_REPLY_DENIED, {.status = 1}},
        {"busy", CTL_REPLY_BUSY, {.status = 1}},
        {"follow", CTL_REPLY_FOLLOW, {.status = 1, .seq = 42, .skip = 7}},
    };
    for (size_t i = 0; i < sizeof reps / sizeof reps[0]; i++) {
        uint8_t b[1 + CTL_REPLY_BYTES + CTL_FOLLOW_BYTES];
        b[0] = 1;
        size_t n = ctl_reply_encode(b + 1, reps[i].kind, &reps[i].r);
        char name[64];
        snprintf(name, sizeof name, "reply-%s", reps[i].name);
        put("ctl", name, b, 1 + n, NULL, 0);
    }
}

int main(void) {
    char dir[] = "/tmp/kvfs-seeds-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    blocks();
    tables(dir);
    logs(dir);
    blobs();
    names();
    ctl();
    batch_text();
    batchlogs(dir);
    blobfiles(dir);
    store(dir, 0);
    store(dir, 1);
    char cmd[PATH_MAX];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) != 0;
}
