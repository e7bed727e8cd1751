/*
 * test_fs_ops.c — the filesystem logic (fs/fs.h) over the in-memory store: files, buffers, holes, truncate,
 * implicit and explicit directories, the file-and-directory case, listings that resume and skip subtrees,
 * rename in all its forms, unlink while open, keys of open files deleted by another writer, attributes, ownership,
 * xattrs; requests from several threads at once (the daemon's request loop runs handlers in parallel).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>

#include "fs.h"
#include "store.h"
#include "t.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#define RENAME_EXCHANGE (1 << 1)
#endif

typedef struct env {
    store *st;
    kvfs_fs *fs;
} env;

static const kvfs_caller ALICE = {1000, 1000};

static bool env_open(env *e, size_t bufsize) {
    e->st = store_mem_new();
    kvfs_config c;
    kvfs_config_init(&c);
    c.uid = 0;
    c.gid = 0;
    if (bufsize) c.write_buffer_bytes = bufsize;
    return e->st && kvfs_fs_new(e->st, &c, &e->fs) == 0;
}

static void env_close(env *e) {
    kvfs_fs_free(e->fs);
    store_destroy(e->st);
}

static int put_key(env *e, const char *key, size_t klen, const char *val) {
    store_batch b;
    store_batch_init(&b);
    store_batch_put(&b, STORE_KS_DATA, key, klen, val, strlen(val));
    int rc = store_write(e->st, &b, false);
    store_batch_free(&b);
    return rc;
}

static int write_file(env *e, const char *path, const char *content) {
    kvfs_file *f;
    int rc = kvfs_create(e->fs, path, 0644, O_WRONLY | O_CREAT | O_TRUNC, &ALICE, &f);
    if (rc) return rc;
    ssize_t n = kvfs_write(e->fs, f, content, strlen(content), 0, false);
    rc = kvfs_flush(e->fs, f);
    kvfs_release(e->fs, f);
    return n < 0 ? (int)n : rc;
}

/* Read a whole file into buf (NUL-terminated); returns length or -errno. */
static ssize_t read_file(env *e, const char *path, char *buf, size_t cap) {
    kvfs_file *f;
    int rc = kvfs_open(e->fs, path, O_RDONLY, &f);
    if (rc) return rc;
    ssize_t n = kvfs_read(e->fs, f, buf, cap - 1, 0);
    kvfs_release(e->fs, f);
    if (n >= 0) buf[n] = 0;
    return n;
}

typedef struct listing {
    char names[64][300];
    mode_t modes[64];
    int n;
    int room; /* entries accepted before reporting full; <0 unlimited */
    off_t last;
} listing;

static int fill(void *ctx, const char *name, const struct stat *st, off_t off) {
    listing *l = ctx;
    if (l->room == 0 || l->n == 64) return 1;
    if (l->room > 0) l->room--;
    snprintf(l->names[l->n], sizeof l->names[0], "%s", name);
    l->modes[l->n] = st->st_mode;
    l->n++;
    l->last = off;
    return 0;
}

/* List path completely, in calls of `room` entries each. Names joined by spaces (without . and ..). */
static int list_dir(env *e, const char *path, int room, char *out, size_t cap) {
    kvfs_dir *d;
    int rc = kvfs_opendir(e->fs, path, &d);
    if (rc) return rc;
    listing all = {.room = -1};
    off_t off = 0;
    for (;;) {
        listing part = {.room = room};
        rc = kvfs_readdir(e->fs, d, off, true, fill, &part);
        if (rc || part.n == 0) break;
        for (int i = 0; i < part.n && all.n < 64; i++) {
            memcpy(all.names[all.n], part.names[i], sizeof all.names[0]);
            all.modes[all.n++] = part.modes[i];
        }
        off = part.last;
    }
    kvfs_releasedir(e->fs, d);
    out[0] = 0;
    for (int i = 0; i < all.n; i++) {
        if (!strcmp(all.names[i], ".") || !strcmp(all.names[i], "..")) continue;
        if (out[0]) strncat(out, " ", cap - strlen(out) - 1);
        strncat(out, all.names[i], cap - strlen(out) - 1);
        if (S_ISDIR(all.modes[i])) strncat(out, "/", cap - strlen(out) - 1);
    }
    return rc;
}

/* store batches built with the nocopy builders read the caller's bytes when written, and refuse a NULL value with
 * a length (the op would otherwise read the batch's own buffer). */
TEST(test_store_batch_nocopy) {
    store_batch b;
    store_batch_init(&b);
    store_batch_put_nocopy(&b, STORE_KS_DATA, "k", 1, NULL, 0); /* empty is fine */
    CHECK_EQ(b.error, 0);
    store_batch_write_at_nocopy(&b, STORE_KS_DATA, "k", 1, 0, NULL, 3);
    CHECK_EQ(b.error, -EINVAL);
    store_batch_free(&b);
    store *st = store_mem_new();
    CHECK(st != NULL);
    char val[] = "hello";
    store_batch_init(&b);
    store_batch_put_nocopy(&b, STORE_KS_DATA, "k", 1, val, 5);
    store_batch_write_at_nocopy(&b, STORE_KS_DATA, "k", 1, 5, " you", 4);
    CHECK_OK(store_write(st, &b, false));
    store_batch_free(&b);
    memset(val, 'x', 5);
    store_buf v = {0};
    CHECK_OK(store_get(st, STORE_KS_DATA, "k", 1, &v, NULL));
    CHECK_MEM(v.data, v.len, "hello you", 9);
    store_buf_free(&v);
    store_destroy(st);
}

typedef struct collected {
    int n;
    size_t lens[8];
    uint8_t last[8];
} collected;

static int collect(void *ctx, const uint8_t *key, size_t klen, const store_info *info, const void *val, size_t vlen) {
    (void)info, (void)val, (void)vlen;
    collected *c = ctx;
    if (c->n < 8) {
        c->lens[c->n] = klen;
        c->last[c->n] = key[klen - 1];
    }
    c->n++;
    return 0;
}

/* Keys longer than STORE_MAX_KEY name nothing (store.h): reads find nothing, deletes do nothing, and a scan bounded
 * by one returns exactly the keys a store of such keys would (here: around the longest key, K = "a" x STORE_MAX_KEY,
 * and K + "b" as a bound), limits included; writing one fails. */
TEST(test_store_keys_longer_than_any) {
    store *st = store_mem_new();
    CHECK(st != NULL);
    size_t n = STORE_MAX_KEY;
    uint8_t *k = malloc(n + 2);
    CHECK(k);
    if (t_failed()) return;
    memset(k, 'a', n + 2);
    store_batch b;
    store_batch_init(&b);
    store_batch_put(&b, STORE_KS_DATA, k, n, "K", 1);      /* the longest key */
    store_batch_put(&b, STORE_KS_DATA, k, n - 1, "k", 1);  /* one shorter */
    store_batch_put(&b, STORE_KS_DATA, "b", 1, "b", 1);    /* after both */
    store_batch_delete(&b, STORE_KS_DATA, k, n + 1);       /* names nothing: no error */
    CHECK_OK(store_write(st, &b, false));
    store_batch_free(&b);
    store_buf v = {0};
    CHECK_EQ(store_get(st, STORE_KS_DATA, k, n + 1, &v, NULL), -ENOENT);
    CHECK_EQ(store_stat(st, STORE_KS_DATA, k, n + 1, NULL), -ENOENT);
    /* [K + "a", unbounded): only "b" (K itself is below the bound) */
    collected c = {0};
    CHECK_OK(store_scan(st, STORE_KS_DATA, k, n + 1, NULL, 0, 0, true, false, collect, &c));
    CHECK_EQ(c.n, 1);
    CHECK_EQ(c.lens[0], 1);
    /* [K - 1 byte, K + "a"): the shorter key and K */
    memset(&c, 0, sizeof c);
    CHECK_OK(store_scan(st, STORE_KS_DATA, k, n - 1, k, n + 1, 0, true, false, collect, &c));
    CHECK_EQ(c.n, 2);
    CHECK_EQ(c.lens[1], n);
    /* a prefix scan of K + "a": nothing; with a limit of 1 from K + "a" backwards to ... the same set, reversed */
    uint8_t *e = malloc(n + 1);
    CHECK(e);
    size_t elen = e ? store_prefix_end(k, n + 1, e) : 0; /* the end of prefix K + "a": K + "b" */
    CHECK_EQ(elen, n + 1);
    memset(&c, 0, sizeof c);
    CHECK_OK(store_scan(st, STORE_KS_DATA, k, n + 1, e, elen, 0, true, false, collect, &c));
    CHECK_EQ(c.n, 0);
    memset(&c, 0, sizeof c);
    CHECK_OK(store_scan(st, STORE_KS_DATA, k, n + 1, NULL, 0, 1, false, false, collect, &c));
    CHECK_EQ(c.n, 1);
    store_batch_init(&b);
    store_batch_put(&b, STORE_KS_DATA, k, n + 1, "x", 1);
    CHECK_EQ(store_write(st, &b, false), -ENAMETOOLONG);
    store_batch_free(&b);
    free(e);
    free(k);
    store_destroy(st);
}

TEST(fs_create_write_read) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/hello", "hello world"));
    char buf[64];
    CHECK_EQ(read_file(&e, "/hello", buf, sizeof buf), 11);
    CHECK(strcmp(buf, "hello world") == 0);
    struct stat st;
    CHECK_OK(kvfs_getattr(e.fs, "/hello", NULL, &st));
    CHECK_EQ(st.st_size, 11);
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0644);
    CHECK_EQ(st.st_uid, 1000);
    /* The value in keyspace 0 is exactly the content. */
    store_buf v;
    CHECK_OK(store_get(e.st, STORE_KS_DATA, "hello", 5, &v, NULL));
    CHECK_MEM(v.data, v.len, "hello world", 11);
    store_buf_free(&v);
    /* O_EXCL on an existing file */
    kvfs_file *f;
    CHECK_EQ(kvfs_create(e.fs, "/hello", 0644, O_CREAT | O_EXCL | O_WRONLY, &ALICE, &f), -EEXIST);
    CHECK_EQ(kvfs_getattr(e.fs, "/nope", NULL, &st), -ENOENT);
    env_close(&e);
}

TEST(fs_buffered_writes_holes_truncate_append) {
    env e;
    CHECK(env_open(&e, 4096));
    kvfs_file *f;
    CHECK_OK(kvfs_create(e.fs, "/f", 0600, O_RDWR | O_CREAT, &ALICE, &f));
    char block[1000];
    for (int i = 0; i < 20; i++) { /* 20 KB through a 4 KB buffer */
        memset(block, 'a' + i, sizeof block);
        CHECK_EQ(kvfs_write(e.fs, f, block, sizeof block, i * 1000, false), 1000);
    }
    char buf[100];
    /* A read of buffered bytes sees them. */
    CHECK_EQ(kvfs_read(e.fs, f, buf, 10, 19995), 5);
    CHECK(buf[0] == 't');
    /* A hole: write far away, read zeros between. */
    CHECK_EQ(kvfs_write(e.fs, f, "end", 3, 100000, false), 3);
    CHECK_EQ(kvfs_read(e.fs, f, buf, 10, 50000), 10);
    for (int i = 0; i < 10; i++) CHECK_EQ(buf[i], 0);
    struct stat st;
    CHECK_OK(kvfs_getattr(e.fs, NULL, f, &st));
    CHECK_EQ(st.st_size, 100003);
    CHECK_OK(kvfs_getattr(e.fs, "/f", NULL, &st));
    CHECK_EQ(st.st_size, 100003);
    /* Truncate down, then up: the regrown part reads as zeros. */
    CHECK_OK(kvfs_truncate(e.fs, NULL, f, 1500));
    CHECK_OK(kvfs_truncate(e.fs, "/f", NULL, 3000));
    CHECK_EQ(kvfs_read(e.fs, f, buf, 100, 1450), 100);
    CHECK_EQ(buf[0], 'b');
    CHECK_EQ(buf[60], 0);
    /* O_APPEND writes at the end whatever the offset. */
    CHECK_EQ(kvfs_write(e.fs, f, "xyz", 3, 0, true), 3);
    CHECK_OK(kvfs_getattr(e.fs, NULL, f, &st));
    CHECK_EQ(st.st_size, 3003);
    CHECK_EQ(kvfs_read(e.fs, f, buf, 10, 3000), 3);
    CHECK(memcmp(buf, "xyz", 3) == 0);
    CHECK_OK(kvfs_release(e.fs, f));
    store_info info;
    CHECK_OK(store_stat(e.st, STORE_KS_DATA, "f", 1, &info));
    CHECK_EQ(info.size, 3003);
    env_close(&e);
}

/* fallocate's PUNCH_HOLE and ZERO_RANGE: bytes still in the write buffer are zeroed too, a punch stays within the
 * size, ZERO_RANGE without KEEP_SIZE grows it, and the modes fallocate(2) itself refuses are refused. */
TEST(fs_fallocate_punches_holes_and_zeroes_ranges) {
    env e;
    CHECK(env_open(&e, 4096));
    CHECK_EQ(kvfs_fs_writeback_cache(e.fs), false); /* the daemon's own buffer is in play */
    kvfs_file *f;
    CHECK_OK(kvfs_create(e.fs, "/h", 0644, O_RDWR | O_CREAT, &ALICE, &f));
    CHECK_EQ(kvfs_write(e.fs, f, "0123456789", 10, 0, false), 10); /* buffered */
    CHECK_OK(kvfs_fallocate(e.fs, f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2, 3));
    CHECK_OK(kvfs_fallocate(e.fs, f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8, 100)); /* cut at the size */
    char buf[32];
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 10);
    CHECK(memcmp(buf, "01\0\0\0" "567\0\0", 10) == 0);
    CHECK_OK(kvfs_fallocate(e.fs, f, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 1000));
    struct stat st;
    CHECK_OK(kvfs_getattr(e.fs, NULL, f, &st));
    CHECK_EQ(st.st_size, 10);
    CHECK_EQ(kvfs_write(e.fs, f, "ab", 2, 4, false), 2);
    CHECK_OK(kvfs_fallocate(e.fs, f, FALLOC_FL_ZERO_RANGE, 5, 15));
    CHECK_OK(kvfs_getattr(e.fs, NULL, f, &st));
    CHECK_EQ(st.st_size, 20);
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 20);
    CHECK(memcmp(buf, "\0\0\0\0a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 20) == 0);
    CHECK_EQ(kvfs_fallocate(e.fs, f, FALLOC_FL_PUNCH_HOLE, 0, 1), -EINVAL);
    CHECK_EQ(kvfs_fallocate(e.fs, f, FALLOC_FL_COLLAPSE_RANGE, 0, 4096), -EOPNOTSUPP);
    CHECK_OK(kvfs_release(e.fs, f));
    store_buf v;
    CHECK_OK(store_get(e.st, STORE_KS_DATA, "h", 1, &v, NULL));
    CHECK_MEM(v.data, v.len, "\0\0\0\0a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 20);
    store_buf_free(&v);
    env_close(&e);
}

/* copy_file_range: bytes still in either file's buffer count (the source's are copied, the destination's are not
 * lost), the copy is cut at the source's end, and a file may be copied onto itself. */
TEST(fs_copy_file_range_between_buffered_files) {
    env e;
    CHECK(env_open(&e, 4096));
    kvfs_file *a, *b;
    CHECK_OK(kvfs_create(e.fs, "/a", 0644, O_RDWR | O_CREAT, &ALICE, &a));
    CHECK_OK(kvfs_create(e.fs, "/b", 0644, O_RDWR | O_CREAT, &ALICE, &b));
    CHECK_EQ(kvfs_write(e.fs, a, "abcdefgh", 8, 0, false), 8); /* buffered */
    CHECK_EQ(kvfs_write(e.fs, b, "12345678", 8, 0, false), 8);
    CHECK_EQ(kvfs_copy_file_range(e.fs, a, 2, b, 4, 100), 6);
    CHECK_EQ(kvfs_copy_file_range(e.fs, a, 8, b, 0, 100), 0);
    CHECK_EQ(kvfs_copy_file_range(e.fs, b, 0, b, 10, 2), 2);
    char buf[32];
    CHECK_EQ(kvfs_read(e.fs, b, buf, sizeof buf, 0), 12);
    CHECK(memcmp(buf, "1234cdefgh12", 12) == 0);
    CHECK_EQ(kvfs_copy_file_range(e.fs, a, -1, b, 0, 1), -EINVAL);
    CHECK_OK(kvfs_release(e.fs, a));
    CHECK_OK(kvfs_release(e.fs, b));
    env_close(&e);
}

TEST(fs_mtime_set_before_close_survives) {
    env e;
    CHECK(env_open(&e, 0));
    kvfs_file *f;
    CHECK_OK(kvfs_create(e.fs, "/m", 0644, O_WRONLY | O_CREAT, &ALICE, &f));
    CHECK_EQ(kvfs_write(e.fs, f, "data", 4, 0, false), 4);
    struct timespec ts[2] = {{1000000000, 5}, {1000000000, 123456789}};
    CHECK_OK(kvfs_utimens(e.fs, "/m", NULL, ts));
    CHECK_OK(kvfs_flush(e.fs, f));
    CHECK_OK(kvfs_release(e.fs, f));
    struct stat st;
    CHECK_OK(kvfs_getattr(e.fs, "/m", NULL, &st));
    CHECK_EQ(st.st_mtim.tv_sec, 1000000000);
    CHECK_EQ(st.st_mtim.tv_nsec, 123456789);
    CHECK_EQ(st.st_size, 4);
    env_close(&e);
}

TEST(fs_implicit_and_explicit_directories) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(put_key(&e, "users/alice/email", 17, "a@x"));
    struct stat st;
    CHECK_OK(kvfs_getattr(e.fs, "/users", NULL, &st));
    CHECK(S_ISDIR(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0755);
    CHECK_OK(kvfs_getattr(e.fs, "/users/alice/email", NULL, &st));
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0644);
    /* Removing the last file of an implicit directory removes the directory. */
    CHECK_OK(kvfs_unlink(e.fs, "/users/alice/email"));
    CHECK_EQ(kvfs_getattr(e.fs, "/users", NULL, &st), -ENOENT);
    /* An explicit one stays. */
    CHECK_OK(kvfs_mkdir(e.fs, "/d", 0750, &ALICE));
    CHECK_OK(write_file(&e, "/d/f", "x"));
    CHECK_EQ(kvfs_rmdir(e.fs, "/d"), -ENOTEMPTY);
    CHECK_OK(kvfs_unlink(e.fs, "/d/f"));
    CHECK_OK(kvfs_getattr(e.fs, "/d", NULL, &st));
    CHECK(S_ISDIR(st.st_mode));
    CHECK_EQ(st.st_mode & 0777, 0750);
    CHECK_EQ(st.st_uid, 1000);
    CHECK_OK(kvfs_mkdir(e.fs, "/d/e", 0755, &ALICE));
    CHECK_EQ(kvfs_mkdir(e.fs, "/d/e", 0755, &ALICE), -EEXIST);
    CHECK_EQ(kvfs_rmdir(e.fs, "/d"), -ENOTEMPTY);
    CHECK_OK(kvfs_rmdir(e.fs, "/d/e"));
    CHECK_OK(kvfs_rmdir(e.fs, "/d"));
    CHECK_EQ(kvfs_getattr(e.fs, "/d", NULL, &st), -ENOENT);
    CHECK_EQ(kvfs_rmdir(e.fs, "/"), -EBUSY);
    CHECK_OK(write_file(&e, "/plain", "x"));
    CHECK_EQ(kvfs_rmdir(e.fs, "/plain%F"), -ENOTDIR);
    CHECK_OK(kvfs_rmdir(e.fs, "/users")); /* vanished with its last file: rm -r must not fail */
    CHECK_EQ(kvfs_unlink(e.fs, "/"), -EISDIR);
    /* Nothing but content in keyspace 0. */
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_DATA, "d", 1), 0);
    env_close(&e);
}

TEST(fs_setgid_directory_rule) {
    env e;
    CHECK(env_open(&e, 0));
    kvfs_caller root = {0, 0};
    CHECK_OK(kvfs_mkdir(e.fs, "/g", 02775, &root));
    CHECK_OK(kvfs_chown(e.fs, "/g", NULL, 0, 50));
    CHECK_OK(kvfs_mkdir(e.fs, "/g/sub", 0755, &ALICE));
    CHECK_OK(write_file(&e, "/g/file", "x"));
    struct stat st;
    CHECK_OK(kvfs_getattr(e.fs, "/g/sub", NULL, &st));
    CHECK_EQ(st.st_gid, 50);
    CHECK(st.st_mode & S_ISGID);
    CHECK_OK(kvfs_getattr(e.fs, "/g/file", NULL, &st));
    CHECK_EQ(st.st_gid, 50);
    CHECK_EQ(st.st_uid, 1000);
    env_close(&e);
}

TEST(fs_listing_skips_subtrees_and_resumes) {
    env e;
    CHECK(env_open(&e, 0));
    char key[64];
    for (int i = 0; i < 300; i++) { /* many descendants under one child */
        int n = snprintf(key, sizeof key, "big/deep/%04d", i);
        CHECK_OK(put_key(&e, key, (size_t)n, "v"));
    }
    CHECK_OK(put_key(&e, "a", 1, "1"));
    CHECK_OK(put_key(&e, "big!", 4, "2"));  /* sorts between "big" and "big/" */
    CHECK_OK(put_key(&e, "c", 1, "3"));
    CHECK_OK(kvfs_mkdir(e.fs, "/empty", 0755, &ALICE));
    CHECK_OK(kvfs_mkdir(e.fs, "/c2", 0755, &ALICE));
    char out[2000];
    CHECK_OK(list_dir(&e, "/", -1, out, sizeof out));
    CHECK_MSG(strcmp(out, "a big! big/ c c2/ empty/") == 0, "got '%s'", out);
    /* One entry per call: the same listing, resumed from each cookie. */
    CHECK_OK(list_dir(&e, "/", 1, out, sizeof out));
    CHECK_MSG(strcmp(out, "a big! big/ c c2/ empty/") == 0, "got '%s'", out);
    CHECK_OK(list_dir(&e, "/big", 1, out, sizeof out));
    CHECK_MSG(strcmp(out, "deep/") == 0, "got '%s'", out);
    env_close(&e);
}

TEST(fs_file_and_directory_at_one_key) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(put_key(&e, "a", 1, "file a"));
    CHECK_OK(put_key(&e, "a/b", 3, "file a/b"));
    char out[500];
    CHECK_OK(list_dir(&e, "/", -1, out, sizeof out));
    CHECK_MSG(strcmp(out, "a%F a/") == 0, "got '%s'", out);
    char buf[64];
    CHECK_EQ(read_file(&e, "/a%F", buf, sizeof buf), 6);
    CHECK(strcmp(buf, "file a") == 0);
    CHECK_EQ(read_file(&e, "/a/b", buf, sizeof buf), 8);
    /* rm -r a: the directory's file, the directory, then the file. */
    CHECK_OK(kvfs_unlink(e.fs, "/a/b"));
    CHECK_OK(kvfs_rmdir(e.fs, "/a")); /* implicit and already gone */
    CHECK_OK(list_dir(&e, "/", -1, out, sizeof out));
    CHECK_MSG(strcmp(out, "a") == 0, "got '%s'", out);
    CHECK_OK(kvfs_unlink(e.fs, "/a%F"));
    CHECK_OK(list_dir(&e, "/", -1, out, sizeof out));
    CHECK_MSG(strcmp(out, "") == 0, "got '%s'", out);
    env_close(&e);
}

TEST(fs_odd_keys_are_reachable) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(put_key(&e, "x//y", 4, "1"));
    CHECK_OK(put_key(&e, "/lead", 5, "2"));
    CHECK_OK(put_key(&e, "n\0ul", 4, "3"));
    CHECK_OK(put_key(&e, "p/..", 4, "4"));
    char out[500];
    CHECK_OK(list_dir(&e, "/", -1, out, sizeof out));
    CHECK_MSG(strcmp(out, "%/ n%00ul p/ x/") == 0, "got '%s'", out);
    char buf[16];
    CHECK_EQ(read_file(&e, "/x/%/y", buf, sizeof buf), 1);
    CHECK_EQ(read_file(&e, "/%/lead", buf, sizeof buf), 1);
    CHECK_EQ(read_file(&e, "/n%00ul", buf, sizeof buf), 1);
    CHECK_EQ(read_file(&e, "/p/%2E%2E", buf, sizeof buf), 1);
    CHECK(buf[0] == '4');
    /* A long component. */
    char key[400];
    memset(key, 'L', 300);
    CHECK_OK(put_key(&e, key, 300, "long"));
    CHECK_OK(list_dir(&e, "/", -1, out, sizeof out));
    CHECK(strstr(out, "%+/") != NULL);
    env_close(&e);
}

TEST(fs_rename_files_and_directories) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/a", "AAA"));
    CHECK_OK(write_file(&e, "/b", "BB"));
    CHECK_OK(kvfs_setxattr(e.fs, "/a", "user.k", "v", 1, 0));
    CHECK_OK(kvfs_rename(e.fs, "/a", "/b", 0)); /* replaces */
    char buf[64];
    CHECK_EQ(read_file(&e, "/b", buf, sizeof buf), 3);
    CHECK_EQ(kvfs_getxattr(e.fs, "/b", "user.k", buf, sizeof buf), 1);
    struct stat st;
    CHECK_EQ(kvfs_getattr(e.fs, "/a", NULL, &st), -ENOENT);
    CHECK_OK(write_file(&e, "/c", "C"));
    CHECK_EQ(kvfs_rename(e.fs, "/c", "/b", RENAME_NOREPLACE), -EEXIST);
    CHECK_OK(kvfs_rename(e.fs, "/c", "/b", RENAME_EXCHANGE));
    CHECK_EQ(read_file(&e, "/b", buf, sizeof buf), 1);
    CHECK_EQ(read_file(&e, "/c", buf, sizeof buf), 3);
    /* A directory moves with its subtree, explicit subdirectories and attributes included. */
    CHECK_OK(kvfs_mkdir(e.fs, "/d", 0700, &ALICE));
    CHECK_OK(kvfs_mkdir(e.fs, "/d/empty", 0755, &ALICE));
    CHECK_OK(write_file(&e, "/d/x", "x"));
    CHECK_OK(put_key(&e, "d/sub/y", 7, "y"));
    CHECK_OK(kvfs_mkdir(e.fs, "/t", 0755, &ALICE));
    CHECK_OK(kvfs_rename(e.fs, "/d", "/t/d2", 0));
    char out[500];
    CHECK_OK(list_dir(&e, "/t/d2", -1, out, sizeof out));
    CHECK_MSG(strcmp(out, "empty/ sub/ x") == 0, "got '%s'", out);
    CHECK_OK(kvfs_getattr(e.fs, "/t/d2", NULL, &st));
    CHECK_EQ(st.st_mode & 0777, 0700);
    CHECK_EQ(kvfs_getattr(e.fs, "/d", NULL, &st), -ENOENT);
    /* Onto a non-empty directory: ENOTEMPTY; onto an empty one: replaces it. */
    CHECK_OK(kvfs_mkdir(e.fs, "/full", 0755, &ALICE));
    CHECK_OK(write_file(&e, "/full/f", "f"));
    CHECK_EQ(kvfs_rename(e.fs, "/t/d2", "/full", 0), -ENOTEMPTY);
    CHECK_OK(kvfs_mkdir(e.fs, "/void", 0755, &ALICE));
    CHECK_OK(kvfs_rename(e.fs, "/t/d2", "/void", 0));
    CHECK_EQ(read_file(&e, "/void/sub/y", buf, sizeof buf), 1);
    CHECK_EQ(kvfs_rename(e.fs, "/void", "/void/sub/z", 0), -EINVAL);
    CHECK_EQ(kvfs_rename(e.fs, "/void", "/b", 0), -ENOTDIR);
    CHECK_EQ(kvfs_rename(e.fs, "/b", "/void", 0), -EISDIR);
    /* Exchange a directory and a file. */
    CHECK_OK(kvfs_rename(e.fs, "/void", "/b", RENAME_EXCHANGE));
    CHECK_EQ(read_file(&e, "/void", buf, sizeof buf), 1);
    CHECK_EQ(read_file(&e, "/b/sub/y", buf, sizeof buf), 1);
    env_close(&e);
}

TEST(fs_open_files_follow_rename_and_survive_unlink) {
    env e;
    CHECK(env_open(&e, 0));
    kvfs_file *f;
    CHECK_OK(kvfs_create(e.fs, "/tmpfile", 0644, O_RDWR | O_CREAT, &ALICE, &f));
    CHECK_EQ(kvfs_write(e.fs, f, "abc", 3, 0, false), 3);
    /* rsync's pattern: rename before the data is flushed keeps the content. */
    CHECK_OK(kvfs_rename(e.fs, "/tmpfile", "/final", 0));
    CHECK_EQ(kvfs_write(e.fs, f, "def", 3, 3, false), 3);
    CHECK_OK(kvfs_release(e.fs, f));
    char buf[64];
    CHECK_EQ(read_file(&e, "/final", buf, sizeof buf), 6);
    CHECK(strcmp(buf, "abcdef") == 0);
    /* Unlink while open: still readable and writable through the handle, gone at the last close. */
    CHECK_OK(kvfs_open(e.fs, "/final", O_RDWR, &f));
    CHECK_OK(kvfs_unlink(e.fs, "/final"));
    struct stat st;
    CHECK_EQ(kvfs_getattr(e.fs, "/final", NULL, &st), -ENOENT);
    CHECK_EQ(kvfs_write(e.fs, f, "gh", 2, 6, false), 2);
    CHECK_OK(kvfs_flush(e.fs, f));
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 8);
    CHECK(memcmp(buf, "abcdefgh", 8) == 0);
    CHECK_OK(kvfs_getattr(e.fs, NULL, f, &st));
    CHECK_EQ(st.st_size, 8);
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 1);
    /* Opened again by its handle (/proc/PID/fd/N): one more open of the same file, which outlives the first; an
     * O_TRUNC reopen empties it. */
    CHECK_OK(kvfs_reopen(e.fs, f, O_RDONLY));
    CHECK_EQ(kvfs_file_opens(e.fs, f), 2);
    CHECK_OK(kvfs_reopen(e.fs, f, O_RDWR | O_TRUNC));
    CHECK_OK(kvfs_getattr(e.fs, NULL, f, &st));
    CHECK_EQ(st.st_size, 0);
    CHECK_EQ(kvfs_write(e.fs, f, "ij", 2, 0, false), 2);
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 1);
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 2);
    CHECK(memcmp(buf, "ij", 2) == 0);
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 0);
    /* A file replaced by rename while open keeps its content for its reader. */
    CHECK_OK(write_file(&e, "/old", "old content"));
    CHECK_OK(write_file(&e, "/new", "new"));
    CHECK_OK(kvfs_open(e.fs, "/old", O_RDONLY, &f));
    CHECK_OK(kvfs_rename(e.fs, "/new", "/old", 0));
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 11);
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_EQ(read_file(&e, "/old", buf, sizeof buf), 3);
    env_close(&e);
}

/* Release f (its last open) and return the top-level names it handed out as "a,b," (the caller frees them). */
static void release_stale(env *e, kvfs_file *f, char *out, size_t cap) {
    kvfs_stale_top *s;
    out[0] = 0;
    CHECK_OK(kvfs_release_changed(e->fs, f, &s));
    while (s) {
        kvfs_stale_top *next = s->next;
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%.*s,", (int)s->len, (const char *)s->name);
        free(s);
        s = next;
    }
}

/* A key written by another writer under a top-level name while a file there is open: the kernel's entry of that
 * name is dropped at the last close that leaves no file open under it, also when the open file was unlinked or
 * renamed elsewhere meanwhile (a mark on the file itself was lost then, and the name's entries stayed stale). */
TEST(fs_a_changed_top_level_name_is_handed_out_when_no_file_under_it_is_open) {
    env e;
    CHECK(env_open(&e, 0));
    char got[256];
    kvfs_file *f, *g;
    CHECK_OK(write_file(&e, "/dir/a", "a"));
    CHECK_OK(write_file(&e, "/dir/b", "b"));
    CHECK_OK(write_file(&e, "/top", "t"));
    CHECK(!kvfs_file_mark_changed(e.fs, "dir/c", 5)); /* nothing open: the caller drops the entry at once */
    /* two files open: the name is handed out by the second close */
    CHECK_OK(kvfs_open(e.fs, "/dir/a", O_RDONLY, &f));
    CHECK_OK(kvfs_open(e.fs, "/dir/b", O_RDONLY, &g));
    CHECK(kvfs_file_mark_changed(e.fs, "dir/c", 5));
    CHECK(kvfs_file_mark_changed(e.fs, "dir/a", 5));
    release_stale(&e, f, got, sizeof got);
    CHECK_MSG(strcmp(got, "") == 0, "got '%s'", got);
    release_stale(&e, g, got, sizeof got);
    CHECK_MSG(strcmp(got, "dir,") == 0, "got '%s'", got);
    /* a key without '/' */
    CHECK_OK(kvfs_open(e.fs, "/top", O_RDONLY, &f));
    CHECK(kvfs_file_mark_changed(e.fs, "top", 3));
    CHECK(!kvfs_file_mark_changed(e.fs, "to", 2));
    release_stale(&e, f, got, sizeof got);
    CHECK_MSG(strcmp(got, "top,") == 0, "got '%s'", got);
    /* the open file is unlinked (an orphan) before its close */
    CHECK_OK(kvfs_open(e.fs, "/dir/a", O_RDONLY, &f));
    CHECK(kvfs_file_mark_changed(e.fs, "dir/c", 5));
    CHECK_OK(kvfs_unlink(e.fs, "/dir/a"));
    release_stale(&e, f, got, sizeof got);
    CHECK_MSG(strcmp(got, "dir,") == 0, "unlinked while open: got '%s'", got);
    /* ... replaced by rename */
    CHECK_OK(write_file(&e, "/dir/a", "a"));
    CHECK_OK(kvfs_open(e.fs, "/dir/a", O_RDONLY, &f));
    CHECK(kvfs_file_mark_changed(e.fs, "dir/c", 5));
    CHECK_OK(kvfs_rename(e.fs, "/dir/b", "/dir/a", 0));
    release_stale(&e, f, got, sizeof got);
    CHECK_MSG(strcmp(got, "dir,") == 0, "replaced while open: got '%s'", got);
    /* ... renamed under another top-level name: the old name is the one to drop */
    CHECK_OK(kvfs_open(e.fs, "/dir/a", O_RDONLY, &f));
    CHECK(kvfs_file_mark_changed(e.fs, "dir/c", 5));
    CHECK_OK(kvfs_rename(e.fs, "/dir/a", "/other", 0));
    release_stale(&e, f, got, sizeof got);
    CHECK_MSG(strcmp(got, "dir,") == 0, "renamed away while open: got '%s'", got);
    env_close(&e);
}

/* A batch of puts and deletes from another writer (kvfs_write_keys, for `kvfs del` and `kvfs batch` through the
 * control socket), of ops (d)elete or (p)ut of keys, each value "new". */
static int other_writer(env *e, const char *ops) {
    store_batch b;
    store_batch_init(&b);
    for (const char *p = ops; *p;) {
        char kind = *p++;
        size_t n = strcspn(p, " ");
        if (kind == 'd') store_batch_delete(&b, STORE_KS_DATA, p, n);
        else store_batch_put(&b, STORE_KS_DATA, p, n, "new", 3);
        p += n + (p[n] == ' ');
    }
    int rc = kvfs_write_keys(e->fs, &b, false);
    store_batch_free(&b);
    return rc;
}

/* Another writer deletes the key of a file open through the filesystem: as for an unlink, the open file keeps its
 * content (also bytes still in its buffer), read and written, until its last close, while the key is gone at once:
 * a write through the open file does not bring it back. */
TEST(fs_a_key_another_writer_deletes_stays_with_its_open_file) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/dir/f", "old content"));
    kvfs_file *f;
    CHECK_OK(kvfs_open(e.fs, "/dir/f", O_RDWR, &f));
    CHECK_EQ(kvfs_write(e.fs, f, "XY", 2, 11, false), 2); /* buffered, not in the store yet */
    CHECK_OK(other_writer(&e, "ddir/f"));
    struct stat st;
    CHECK_EQ(store_get(e.st, STORE_KS_DATA, "dir/f", 5, &(store_buf){0}, NULL), -ENOENT);
    CHECK_EQ(kvfs_getattr(e.fs, "/dir/f", NULL, &st), -ENOENT);
    CHECK_EQ(kvfs_getattr(e.fs, "/dir", NULL, &st), -ENOENT); /* an implicit directory, gone with its last key */
    char buf[64];
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 13);
    CHECK(memcmp(buf, "old contentXY", 13) == 0);
    CHECK_EQ(kvfs_write(e.fs, f, "Z", 1, 13, false), 1);
    CHECK_OK(kvfs_flush(e.fs, f));
    CHECK_EQ(store_get(e.st, STORE_KS_DATA, "dir/f", 5, &(store_buf){0}, NULL), -ENOENT);
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 14);
    CHECK(memcmp(buf, "old contentXYZ", 14) == 0);
    CHECK_OK(kvfs_getattr(e.fs, NULL, f, &st));
    CHECK_EQ(st.st_size, 14);
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 1);
    /* The kernel still has the file under its old name: a key changed under it waits for the close to be dropped. */
    CHECK(kvfs_file_mark_changed(e.fs, "dir/g", 5));
    char got[64];
    release_stale(&e, f, got, sizeof got);
    CHECK_MSG(strcmp(got, "dir,") == 0, "got '%s'", got);
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 0);
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_DATA, "dir/", 4), 0);
    env_close(&e);
}

/* The kernel names a file another writer deleted while it was open by its old path until its last close: requests
 * by that path reach it (kvfs_open_deleted), also after a rename moved the directory the kernel has it in (before,
 * fstat of its descriptor said ENOENT then), and no longer once the name was removed through the mount
 * (kvfs_deleted_renamed: libfuse hid the file under another name). */
TEST(fs_a_deleted_open_file_follows_its_directory_and_leaves_its_name) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/top/dir/f", "old"));
    CHECK_OK(write_file(&e, "/top/dir/g", "other"));
    CHECK_OK(write_file(&e, "/top/dirx", "not below"));
    kvfs_file *f;
    CHECK_OK(kvfs_open(e.fs, "/top/dir/f", O_RDONLY, &f));
    CHECK_OK(other_writer(&e, "dtop/dir/f"));
    kvfs_file *d = kvfs_open_deleted(e.fs, "/top/dir/f");
    CHECK(d == f);
    CHECK_OK(kvfs_release(e.fs, d));
    CHECK_OK(kvfs_rename(e.fs, "/top/dir", "/top/moved", 0));
    CHECK(kvfs_open_deleted(e.fs, "/top/dir/f") == NULL);
    CHECK((d = kvfs_open_deleted(e.fs, "/top/moved/f")) == f);
    CHECK_OK(kvfs_release(e.fs, d));
    /* swapped with another directory: it follows its own */
    CHECK_OK(write_file(&e, "/top/other/h", "h"));
    CHECK_OK(kvfs_rename(e.fs, "/top/moved", "/top/other", RENAME_EXCHANGE));
    CHECK((d = kvfs_open_deleted(e.fs, "/top/other/f")) == f);
    CHECK_OK(kvfs_release(e.fs, d));
    CHECK(kvfs_open_deleted(e.fs, "/top/moved/f") == NULL);
    kvfs_deleted_renamed(e.fs, f);
    CHECK(kvfs_open_deleted(e.fs, "/top/other/f") == NULL);
    char buf[16];
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 3);
    CHECK(memcmp(buf, "old", 3) == 0);
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 0);
    CHECK_EQ(read_file(&e, "/top/dirx", buf, sizeof buf), 9);
    env_close(&e);
}

/* Within one batch: a key deleted twice, then put again (a new file: the open one keeps the old content); a key put
 * and then deleted (the open file keeps what was put); keys of files not open, deleted and put as they are. */
TEST(fs_another_writers_batch_deletes_and_puts_open_files_keys) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/a", "old a"));
    CHECK_OK(write_file(&e, "/b", "old b"));
    CHECK_OK(write_file(&e, "/c", "old c"));
    kvfs_file *fa, *fb;
    CHECK_OK(kvfs_open(e.fs, "/a", O_RDONLY, &fa));
    CHECK_OK(kvfs_open(e.fs, "/b", O_RDONLY, &fb));
    CHECK_OK(other_writer(&e, "da da pa pb db dc pd"));
    char buf[64];
    CHECK_EQ(read_file(&e, "/a", buf, sizeof buf), 3);
    CHECK(strcmp(buf, "new") == 0);
    CHECK_EQ(kvfs_read(e.fs, fa, buf, sizeof buf, 0), 5);
    CHECK(memcmp(buf, "old a", 5) == 0);
    CHECK_EQ(kvfs_read(e.fs, fb, buf, 3, 0), 3);
    CHECK(memcmp(buf, "new", 3) == 0);
    struct stat st;
    CHECK_EQ(kvfs_getattr(e.fs, "/b", NULL, &st), -ENOENT);
    CHECK_EQ(kvfs_getattr(e.fs, "/c", NULL, &st), -ENOENT);
    CHECK_EQ(read_file(&e, "/d", buf, sizeof buf), 3);
    CHECK_OK(kvfs_release(e.fs, fa));
    CHECK_OK(kvfs_release(e.fs, fb));
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 0);
    CHECK_EQ(read_file(&e, "/a", buf, sizeof buf), 3);
    CHECK(strcmp(buf, "new") == 0);
    env_close(&e);
}

/* A deleted key's attributes and extended attributes go with it, open or not, as in an unlink: put again, it shows
 * the defaults. Also through kvfs_write_keys_unmounted (a tool on a store no mount has). */
TEST(fs_another_writers_delete_takes_the_keys_records) {
    env e;
    CHECK(env_open(&e, 0));
    for (int unmounted = 0; unmounted < 2; unmounted++) {
        const char *path = unmounted ? "/u" : "/m", *key = path + 1;
        CHECK_OK(write_file(&e, path, "old"));
        CHECK_OK(kvfs_chmod(e.fs, path, NULL, 0600));
        CHECK_OK(kvfs_setxattr(e.fs, path, "user.tag", "x", 1, 0));
        kvfs_file *f = NULL;
        if (!unmounted) CHECK_OK(kvfs_open(e.fs, path, O_RDONLY, &f));
        store_batch b;
        store_batch_init(&b);
        store_batch_delete(&b, STORE_KS_DATA, key, 1);
        store_batch_put(&b, STORE_KS_DATA, key, 1, "new", 3);
        int rc = unmounted ? kvfs_write_keys_unmounted(e.st, &b, false) : kvfs_write_keys(e.fs, &b, false);
        store_batch_free(&b);
        CHECK_OK(rc);
        if (f) CHECK_OK(kvfs_release(e.fs, f));
        kvfs_fs_invalidate(e.fs);
        struct stat st;
        CHECK_OK(kvfs_getattr(e.fs, path, NULL, &st));
        CHECK_EQ(st.st_mode & 07777, 0644);
        char v[8];
        CHECK_EQ(kvfs_getxattr(e.fs, path, "user.tag", v, sizeof v), -ENODATA);
        CHECK_EQ(store_has_prefix(e.st, STORE_KS_META, "X", 1), 0); /* no extended attribute is left of it */
    }
    env_close(&e);
}

/* A key deleted under an open file and put again: the kernel still takes the path for the old file until its last
 * close, so the new value opens for reading but not for writing (EBUSY) until then: a write at the old file's offsets
 * (an append at its size) went into the new value. */
TEST(fs_a_key_put_again_under_an_open_deleted_file_is_not_writable_until_it_closes) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/f", "old content"));
    kvfs_file *old, *f;
    CHECK_OK(kvfs_open(e.fs, "/f", O_RDONLY, &old));
    CHECK_OK(other_writer(&e, "df pf"));
    CHECK_EQ(kvfs_open(e.fs, "/f", O_WRONLY | O_APPEND, &f), -EBUSY);
    CHECK_EQ(kvfs_open(e.fs, "/f", O_RDWR, &f), -EBUSY);
    CHECK_EQ(kvfs_open(e.fs, "/f", O_RDONLY | O_TRUNC, &f), -EBUSY);
    CHECK_OK(kvfs_open(e.fs, "/f", O_RDONLY, &f));
    char buf[16];
    CHECK_EQ(kvfs_read(e.fs, f, buf, sizeof buf, 0), 3);
    CHECK(memcmp(buf, "new", 3) == 0);
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_OK(kvfs_release(e.fs, old));
    CHECK_OK(kvfs_open(e.fs, "/f", O_WRONLY | O_APPEND, &f));
    CHECK_EQ(kvfs_write(e.fs, f, "!", 1, 0, true), 1);
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_EQ(read_file(&e, "/f", buf, sizeof buf), 4);
    CHECK(memcmp(buf, "new!", 4) == 0);
    env_close(&e);
}

/* A batch that fails changes nothing: the open file still is the key's, and its writes land there. */
TEST(fs_another_writers_failed_batch_changes_nothing) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/a", "old"));
    kvfs_file *f;
    CHECK_OK(kvfs_open(e.fs, "/a", O_RDWR, &f));
    store_mem_fail_next_write(e.st, -ENOSPC);
    CHECK_EQ(other_writer(&e, "da pb"), -ENOSPC);
    store_batch b;
    store_batch_init(&b);
    store_batch_delete(&b, STORE_KS_DATA, "a", 1);
    char longkey[STORE_MAX_KEY + 1];
    memset(longkey, 'k', sizeof longkey);
    store_batch_put(&b, STORE_KS_DATA, longkey, sizeof longkey, "v", 1);
    CHECK_EQ(kvfs_write_keys(e.fs, &b, false), -ENAMETOOLONG);
    store_batch_clear(&b);
    store_batch_delete(&b, STORE_KS_DATA, "a", 1);
    store_batch_delete(&b, STORE_KS_META, "Fa", 2); /* only keys of keyspace 0 */
    CHECK_EQ(kvfs_write_keys(e.fs, &b, false), -EINVAL);
    store_batch_free(&b);
    CHECK_EQ(kvfs_write(e.fs, f, "new", 3, 0, false), 3);
    CHECK_OK(kvfs_release(e.fs, f));
    char buf[16];
    CHECK_EQ(read_file(&e, "/a", buf, sizeof buf), 3);
    CHECK(strcmp(buf, "new") == 0);
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_DATA, "b", 1), 0);
    CHECK_EQ(store_has_prefix(e.st, STORE_KS_ORPHAN, "", 0), 0);
    env_close(&e);
}

TEST(fs_attributes_symlinks_xattrs) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(write_file(&e, "/f", "x"));
    CHECK_OK(kvfs_chmod(e.fs, "/f", NULL, 0600));
    CHECK_OK(kvfs_chown(e.fs, "/f", NULL, 7, 8));
    struct stat st;
    CHECK_OK(kvfs_getattr(e.fs, "/f", NULL, &st));
    CHECK_EQ(st.st_mode, S_IFREG | 0600);
    CHECK_EQ(st.st_uid, 7);
    CHECK_EQ(st.st_gid, 8);
    CHECK_OK(kvfs_symlink(e.fs, "target/path", "/ln", &ALICE));
    char buf[64];
    CHECK_OK(kvfs_readlink(e.fs, "/ln", buf, sizeof buf));
    CHECK(strcmp(buf, "target/path") == 0);
    CHECK_OK(kvfs_getattr(e.fs, "/ln", NULL, &st));
    CHECK(S_ISLNK(st.st_mode));
    CHECK_EQ(st.st_size, 11);
    CHECK_EQ(kvfs_readlink(e.fs, "/f", buf, sizeof buf), -EINVAL);
    /* xattrs on files and directories, with create/replace flags. */
    CHECK_OK(kvfs_setxattr(e.fs, "/f", "user.a", "1", 1, 0));
    CHECK_OK(kvfs_setxattr(e.fs, "/f", "user.b", "22", 2, XATTR_CREATE));
    CHECK_EQ(kvfs_setxattr(e.fs, "/f", "user.b", "22", 2, XATTR_CREATE), -EEXIST);
    CHECK_EQ(kvfs_setxattr(e.fs, "/f", "user.c", "3", 1, XATTR_REPLACE), -ENODATA);
    CHECK_EQ(kvfs_setxattr(e.fs, "/f", "trusted.x", "3", 1, 0), -ENOTSUP);
    CHECK_OK(kvfs_setxattr(e.fs, "/", "user.root", "r", 1, 0));
    char list[100];
    CHECK_EQ(kvfs_listxattr(e.fs, "/f", list, sizeof list), 14);
    CHECK(memcmp(list, "user.a\0user.b\0", 14) == 0);
    CHECK_EQ(kvfs_getxattr(e.fs, "/f", "user.b", buf, 0), 2);
    CHECK_EQ(kvfs_getxattr(e.fs, "/f", "user.b", buf, 1), -ERANGE);
    CHECK_EQ(kvfs_getxattr(e.fs, "/f", "security.capability", buf, sizeof buf), -ENOTSUP);
    CHECK_EQ(kvfs_getxattr(e.fs, "/f", "system.posix_acl_access", buf, sizeof buf), -ENOTSUP);
    CHECK_EQ(kvfs_removexattr(e.fs, "/f", "security.selinux"), -ENOTSUP);
    CHECK_EQ(kvfs_listxattr(e.fs, "/", list, sizeof list), 10);
    CHECK_OK(kvfs_removexattr(e.fs, "/f", "user.a"));
    CHECK_EQ(kvfs_removexattr(e.fs, "/f", "user.a"), -ENODATA);
    CHECK_EQ(kvfs_listxattr(e.fs, "/f", list, sizeof list), 7);
    CHECK_OK(kvfs_unlink(e.fs, "/f"));
    CHECK_OK(write_file(&e, "/f", "y"));
    CHECK_EQ(kvfs_listxattr(e.fs, "/f", list, sizeof list), 0);
    env_close(&e);
}

TEST(fs_store_errors_are_returned) {
    env e;
    CHECK(env_open(&e, 0));
    store_mem_fail_next_write(e.st, -ENOSPC);
    CHECK_EQ(write_file(&e, "/f", "x"), -ENOSPC);
    CHECK_OK(write_file(&e, "/f", "x"));
    kvfs_file *f;
    CHECK_OK(kvfs_open(e.fs, "/f", O_WRONLY, &f));
    CHECK_EQ(kvfs_write(e.fs, f, "abc", 3, 0, false), 3);
    store_mem_fail_next_write(e.st, -ENOSPC);
    CHECK_EQ(kvfs_flush(e.fs, f), -ENOSPC);
    CHECK_OK(kvfs_flush(e.fs, f)); /* the buffer was kept: space is back, the write lands */
    CHECK_OK(kvfs_release(e.fs, f));
    char buf[8];
    CHECK_EQ(read_file(&e, "/f", buf, sizeof buf), 3);
    CHECK_EQ(kvfs_getattr(e.fs, "/x%25", NULL, &(struct stat){0}), -ENOENT); /* not canonical: x% is "x%" */
    CHECK_EQ(kvfs_mkdir(e.fs, "/x%25", 0755, &ALICE), -EINVAL);
    env_close(&e);
}

static int del_key(env *e, const char *key) {
    store_batch b;
    store_batch_init(&b);
    store_batch_delete(&b, STORE_KS_DATA, key, strlen(key));
    int rc = store_write(e->st, &b, false);
    store_batch_free(&b);
    return rc;
}

static bool ts_after(struct timespec a, struct timespec b) {
    return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
}

/* The filesystem caches what lookups learn (fs_dcache.c); writes to the store by anyone else must still show. */
TEST(fs_cached_lookups_see_other_writers) {
    env e;
    CHECK(env_open(&e, 0));
    struct stat st;
    CHECK_OK(kvfs_mkdir(e.fs, "/d", 0755, &ALICE));
    for (int i = 0; i < 50; i++) {
        char p[32];
        snprintf(p, sizeof p, "/d/f%02d", i);
        CHECK_OK(write_file(&e, p, "x"));
    }
    CHECK_EQ(kvfs_getattr(e.fs, "/d/new", NULL, &st), -ENOENT);
    CHECK_OK(kvfs_getattr(e.fs, "/d/f07", NULL, &st));
    CHECK_EQ(st.st_size, 1);
    /* keys put from outside: a new file, a rewritten one, a new implicit directory below a known directory */
    CHECK_OK(put_key(&e, "d/new", 5, "hello"));
    CHECK_OK(put_key(&e, "d/f07", 5, "longer"));
    CHECK_OK(put_key(&e, "d/sub/g", 7, "g"));
    CHECK_OK(kvfs_getattr(e.fs, "/d/new", NULL, &st));
    CHECK_EQ(st.st_size, 5);
    CHECK_OK(kvfs_getattr(e.fs, "/d/f07", NULL, &st));
    CHECK_EQ(st.st_size, 6);
    CHECK_OK(kvfs_getattr(e.fs, "/d/sub", NULL, &st));
    CHECK(S_ISDIR(st.st_mode));
    /* deleted from outside: the implicit directory goes with its last key */
    CHECK_OK(del_key(&e, "d/sub/g"));
    CHECK_EQ(kvfs_getattr(e.fs, "/d/sub", NULL, &st), -ENOENT);
    CHECK_OK(del_key(&e, "d/new"));
    CHECK_EQ(kvfs_getattr(e.fs, "/d/new", NULL, &st), -ENOENT);
    /* the listing and the lookups agree */
    char out[4096];
    CHECK_OK(list_dir(&e, "/d", 7, out, sizeof out));
    int words = 1;
    for (const char *p = out; *p; p++) words += *p == ' ';
    CHECK_EQ(words, 50);
    CHECK(strstr(out, "f49") && !strstr(out, "new") && !strstr(out, "sub"));
    /* changes through the filesystem itself */
    CHECK_OK(kvfs_rename(e.fs, "/d/f01", "/d/moved", 0));
    CHECK_EQ(kvfs_getattr(e.fs, "/d/f01", NULL, &st), -ENOENT);
    CHECK_OK(kvfs_getattr(e.fs, "/d/moved", NULL, &st));
    CHECK(S_ISREG(st.st_mode));
    CHECK_OK(kvfs_mkdir(e.fs, "/d/e", 0700, &ALICE));
    CHECK_OK(write_file(&e, "/d/e/x", "abc"));
    CHECK_OK(kvfs_rename(e.fs, "/d/e", "/d/e2", 0));
    CHECK_EQ(kvfs_getattr(e.fs, "/d/e", NULL, &st), -ENOENT);
    CHECK_OK(kvfs_getattr(e.fs, "/d/e2", NULL, &st));
    CHECK_EQ(st.st_mode & 0777, 0700);
    CHECK_OK(kvfs_getattr(e.fs, "/d/e2/x", NULL, &st));
    CHECK_EQ(st.st_size, 3);
    CHECK_OK(kvfs_chmod(e.fs, "/d/e2", NULL, 0711));
    CHECK_OK(kvfs_getattr(e.fs, "/d/e2", NULL, &st));
    CHECK_EQ(st.st_mode & 0777, 0711);
    /* a file's size follows writes through open files and after close */
    kvfs_file *f;
    CHECK_OK(kvfs_open(e.fs, "/d/e2/x", O_WRONLY, &f));
    CHECK_EQ(kvfs_write(e.fs, f, "defgh", 5, 3, false), 5);
    CHECK_OK(kvfs_getattr(e.fs, "/d/e2/x", NULL, &st));
    CHECK_EQ(st.st_size, 8);
    CHECK_OK(kvfs_release(e.fs, f));
    CHECK_OK(kvfs_getattr(e.fs, "/d/e2/x", NULL, &st));
    CHECK_EQ(st.st_size, 8);
    CHECK_OK(kvfs_truncate(e.fs, "/d/e2/x", NULL, 2));
    CHECK_OK(kvfs_getattr(e.fs, "/d/e2/x", NULL, &st));
    CHECK_EQ(st.st_size, 2);
    /* a directory read in one pass (its files' records beside a subdirectory's): same attributes as one by one */
    CHECK_OK(kvfs_chmod(e.fs, "/d/f49", NULL, 0600));
    CHECK_OK(kvfs_chmod(e.fs, "/d/e2/x", NULL, 0640));
    kvfs_fs_invalidate(e.fs);
    CHECK_OK(list_dir(&e, "/d", 64, out, sizeof out));
    CHECK_OK(kvfs_getattr(e.fs, "/d/f49", NULL, &st));
    CHECK_EQ(st.st_mode & 0777, 0600);
    CHECK_EQ(st.st_size, 1);
    CHECK_OK(kvfs_getattr(e.fs, "/d/e2/x", NULL, &st));
    CHECK_EQ(st.st_mode & 0777, 0640);
    env_close(&e);
}

/* POSIX: adding or removing an entry changes the directory's mtime and ctime; implicit directories too (kept in
 * memory: they have no record). */
TEST(fs_directory_times_follow_entries) {
    env e;
    CHECK(env_open(&e, 0));
    struct stat st, st2;
    CHECK_OK(kvfs_mkdir(e.fs, "/d", 0755, &ALICE));
    CHECK_OK(kvfs_getattr(e.fs, "/d", NULL, &st));
    struct timespec ts[2] = {{1000, 0}, {1000, 0}};
    CHECK_OK(kvfs_utimens(e.fs, "/d", NULL, ts));
    CHECK_OK(kvfs_getattr(e.fs, "/d", NULL, &st));
    CHECK_EQ(st.st_mtim.tv_sec, 1000);
    CHECK_OK(write_file(&e, "/d/f", "x"));
    CHECK_OK(kvfs_getattr(e.fs, "/d", NULL, &st2));
    CHECK(ts_after(st2.st_mtim, st.st_mtim));
    CHECK_OK(kvfs_utimens(e.fs, "/d", NULL, ts));
    CHECK_OK(kvfs_unlink(e.fs, "/d/f"));
    CHECK_OK(kvfs_getattr(e.fs, "/d", NULL, &st2));
    CHECK(st2.st_mtim.tv_sec > 1000);
    /* an implicit directory */
    CHECK_OK(put_key(&e, "imp/a", 5, "a"));
    CHECK_OK(kvfs_getattr(e.fs, "/imp", NULL, &st));
    CHECK_OK(write_file(&e, "/imp/b", "b"));
    CHECK_OK(kvfs_getattr(e.fs, "/imp", NULL, &st2));
    CHECK(ts_after(st2.st_mtim, st.st_mtim));
    CHECK(S_ISDIR(st2.st_mode));
    CHECK_EQ(st2.st_mode & 0777, 0755);
    /* An implicit directory that vanishes with its last entry is an entry gone from the first directory that remains
     * (here /d, explicit, whose record keeps the time): by unlink, rmdir of an empty directory inside, and rename. */
    const char *removals[] = {"unlink", "rmdir", "rename"};
    for (int how = 0; how < 3; how++) {
        CHECK_OK(put_key(&e, "d/x/y/f", 7, "1"));
        if (how == 1) { /* y explicit and empty, x still implicit */
            CHECK_OK(kvfs_chmod(e.fs, "/d/x/y", NULL, 0700));
            CHECK_OK(kvfs_unlink(e.fs, "/d/x/y/f"));
        }
        CHECK_OK(kvfs_utimens(e.fs, "/d", NULL, ts));
        int rc = how == 0 ? kvfs_unlink(e.fs, "/d/x/y/f")
                 : how == 1 ? kvfs_rmdir(e.fs, "/d/x/y")
                            : kvfs_rename(e.fs, "/d/x/y/f", "/moved", 0);
        CHECK_MSG(rc == 0, "%s: %d", removals[how], rc);
        CHECK_EQ(kvfs_getattr(e.fs, "/d/x", NULL, &st2), -ENOENT);
        CHECK_OK(kvfs_getattr(e.fs, "/d", NULL, &st2));
        CHECK_MSG(st2.st_mtim.tv_sec > 1000 && st2.st_ctim.tv_sec > 1000, "%s: /d's mtime stayed",
                  removals[how]);
        kvfs_unlink(e.fs, "/moved");
    }
    env_close(&e);
}

/* As on a local filesystem, setting or removing an extended attribute changes the entry's ctime (a file, open or
 * not, an explicit or implicit directory), and so does a rename, of the moved entry; mtime stays. */
TEST(fs_ctime_follows_xattrs_and_renames) {
    env e;
    CHECK(env_open(&e, 0));
    struct stat st, st2;
    struct timespec pause = {0, 2000000};
    CHECK_OK(kvfs_mkdir(e.fs, "/d", 0755, &ALICE));
    CHECK_OK(write_file(&e, "/f", "x"));
    CHECK_OK(put_key(&e, "imp/a", 5, "a"));
    const char *paths[] = {"/d", "/f", "/imp", "/f"};
    for (int i = 0; i < 4; i++) {
        kvfs_file *of = NULL;
        if (i == 3) CHECK_OK(kvfs_open(e.fs, "/f", O_RDWR, &of));
        CHECK_OK(kvfs_getattr(e.fs, paths[i], of, &st));
        nanosleep(&pause, NULL);
        CHECK_OK(kvfs_setxattr(e.fs, paths[i], "user.k", "v", 1, 0));
        CHECK_OK(kvfs_getattr(e.fs, paths[i], of, &st2));
        CHECK_MSG(ts_after(st2.st_ctim, st.st_ctim), "setxattr %s%s: ctime stayed", paths[i], of ? " (open)" : "");
        CHECK(st2.st_mtim.tv_sec == st.st_mtim.tv_sec && st2.st_mtim.tv_nsec == st.st_mtim.tv_nsec);
        st = st2;
        nanosleep(&pause, NULL);
        CHECK_OK(kvfs_removexattr(e.fs, paths[i], "user.k"));
        CHECK_OK(kvfs_getattr(e.fs, paths[i], of, &st2));
        CHECK_MSG(ts_after(st2.st_ctim, st.st_ctim), "removexattr %s: ctime stayed", paths[i]);
        if (of) {
            kvfs_release(e.fs, of);
            CHECK_OK(kvfs_getattr(e.fs, paths[i], NULL, &st));
            CHECK(st.st_ctim.tv_sec == st2.st_ctim.tv_sec && st.st_ctim.tv_nsec == st2.st_ctim.tv_nsec);
        }
    }
    const char *moves[][2] = {{"/d", "/d2"}, {"/f", "/f2"}};
    for (int i = 0; i < 2; i++) {
        CHECK_OK(kvfs_getattr(e.fs, moves[i][0], NULL, &st));
        nanosleep(&pause, NULL);
        CHECK_OK(kvfs_rename(e.fs, moves[i][0], moves[i][1], 0));
        CHECK_OK(kvfs_getattr(e.fs, moves[i][1], NULL, &st2));
        CHECK_MSG(ts_after(st2.st_ctim, st.st_ctim), "rename %s: ctime stayed", moves[i][0]);
        CHECK(st2.st_mtim.tv_sec == st.st_mtim.tv_sec && st2.st_mtim.tv_nsec == st.st_mtim.tv_nsec);
        CHECK_EQ(st2.st_mode, st.st_mode);
    }
    env_close(&e);
}

/* An xattr change that fails changes nothing: not the xattrs, and not the ctime of the entry, also of an open file
 * whose written bytes wait in its buffer (its record is written at the next flush: the ctime was stamped in the open
 * file first, and kept, with the record marked dirty, when the xattr's batch failed). */
TEST(fs_failed_xattr_change_keeps_the_ctime) {
    env e;
    CHECK(env_open(&e, 4096));
    struct timespec pause = {0, 2000000};
    CHECK_OK(write_file(&e, "/f", "x"));
    for (int buffered = 0; buffered < 2; buffered++) {
        kvfs_file *f;
        CHECK_OK(kvfs_open(e.fs, "/f", O_RDWR, &f));
        CHECK_OK(kvfs_setxattr(e.fs, "/f", "user.k", "v", 1, 0));
        if (buffered) CHECK_EQ(kvfs_write(e.fs, f, "y", 1, 1, false), 1); /* waits in the buffer */
        struct stat st, st2;
        CHECK_OK(kvfs_getattr(e.fs, "/f", f, &st));
        nanosleep(&pause, NULL);
        for (int op = 0; op < 2; op++) {
            store_mem_fail_next_write(e.st, -ENOSPC);
            int rc = op ? kvfs_removexattr(e.fs, "/f", "user.k") : kvfs_setxattr(e.fs, "/f", "user.k", "w", 1, 0);
            CHECK_EQ(rc, -ENOSPC);
            CHECK_OK(kvfs_getattr(e.fs, "/f", f, &st2));
            CHECK_MSG(st2.st_ctim.tv_sec == st.st_ctim.tv_sec && st2.st_ctim.tv_nsec == st.st_ctim.tv_nsec,
                      "%s failed%s: the ctime changed all the same", op ? "removexattr" : "setxattr",
                      buffered ? " (buffered bytes)" : "");
        }
        char v[4];
        CHECK_EQ(kvfs_getxattr(e.fs, "/f", "user.k", v, sizeof v), 1);
        CHECK(v[0] == 'v');
        CHECK_OK(kvfs_release(e.fs, f));
        CHECK_OK(kvfs_getattr(e.fs, "/f", NULL, &st2)); /* and the record that the close wrote */
        CHECK(st2.st_ctim.tv_sec == st.st_ctim.tv_sec && st2.st_ctim.tv_nsec == st.st_ctim.tv_nsec);
    }
    env_close(&e);
}

/* More entries than one fetch of the listing's cursors (64): every name comes out whole. */
TEST(fs_listing_of_many_files_is_exact) {
    env e;
    CHECK(env_open(&e, 0));
    CHECK_OK(kvfs_mkdir(e.fs, "/m", 0755, &ALICE));
    for (int i = 0; i < 200; i++) {
        char p[32];
        snprintf(p, sizeof p, "/m/f%03d", i);
        CHECK_OK(write_file(&e, p, "x"));
    }
    kvfs_dir *d;
    CHECK_OK(kvfs_opendir(e.fs, "/m", &d));
    int seen = 0;
    off_t off = 0;
    for (;;) {
        listing part = {.room = -1};
        CHECK_OK(kvfs_readdir(e.fs, d, off, true, fill, &part));
        if (part.n == 0) break;
        for (int i = 0; i < part.n; i++) {
            if (part.names[i][0] == '.') continue;
            char want[16];
            snprintf(want, sizeof want, "f%03d", seen);
            CHECK_MSG(strcmp(part.names[i], want) == 0, "entry %d is '%s'", seen, part.names[i]);
            seen++;
        }
        off = part.last;
    }
    kvfs_releasedir(e.fs, d);
    CHECK_EQ(seen, 200);
    env_close(&e);
}

/* ---- requests from several threads at once ------------------------------------------------------------------------
 * The daemon handles FUSE requests on several threads. Each worker here writes, reads back and checks a file of its
 * own while it also creates, renames, unlinks, lists, stats and changes the attributes of names the others use too,
 * and puts or deletes keys as the control socket does: run under ThreadSanitizer (tests/run.sh) it checks the locks
 * of the namespace, the open-file table and the caches; here it checks that no request fails in a way it cannot and
 * that each worker's own file holds exactly what it wrote. */
#define CONC_WORKERS 4
#define CONC_OPS 1500

typedef struct conc_worker {
    env *e;
    int id;
    uint64_t rng;
    size_t size; /* bytes written to its own file */
    char err[256];
} conc_worker;

static void *conc_main(void *arg) {
    conc_worker *w = arg;
    kvfs_fs *fs = w->e->fs;
    char own[32], buf[4096], got[4096];
    snprintf(own, sizeof own, "/own%d", w->id);
    kvfs_file *mine;
    int rc = kvfs_create(fs, own, 0644, O_RDWR | O_CREAT | O_TRUNC, &ALICE, &mine);
    if (rc) {
        snprintf(w->err, sizeof w->err, "create %s: %d", own, rc);
        return NULL;
    }
    size_t size = 0; /* own file: byte i is (i * 7 + id) & 0xff */
    for (int op = 0; op < CONC_OPS && !w->err[0]; op++) {
        uint64_t r = t_rand(&w->rng);
        char p[32], q[32];
        snprintf(p, sizeof p, r & 1 ? "/d%u/f%u" : "/f%u", (unsigned)(r >> 8) % 3, (unsigned)(r >> 16) % 8);
        snprintf(q, sizeof q, r & 2 ? "/d%u/f%u" : "/f%u", (unsigned)(r >> 24) % 3, (unsigned)(r >> 32) % 8);
        kvfs_file *f;
        struct stat st;
        switch ((r >> 40) % 10) {
        case 0: { /* append to the own file, then read back what was just written */
            size_t n = 1 + (size_t)(r >> 48) % sizeof buf;
            for (size_t i = 0; i < n; i++) buf[i] = (char)(((size + i) * 7 + (size_t)w->id) & 0xff);
            ssize_t wn = kvfs_write(fs, mine, buf, n, (off_t)size, false);
            ssize_t rn = wn == (ssize_t)n ? kvfs_read(fs, mine, got, n, (off_t)size) : -1;
            if (rn != (ssize_t)n || memcmp(buf, got, n) != 0)
                snprintf(w->err, sizeof w->err, "own file at %zu: wrote %zd, read %zd", size, wn, rn);
            size += n;
            break;
        }
        case 1:
            if (kvfs_create(fs, p, 0644, O_WRONLY | O_CREAT, &ALICE, &f) == 0) {
                kvfs_write(fs, f, "shared", 6, (off_t)((r >> 48) % 64), false);
                kvfs_flush(fs, f);
                kvfs_release(fs, f);
            }
            break;
        case 2:
            if (kvfs_open(fs, p, O_RDONLY, &f) == 0) {
                kvfs_read(fs, f, got, sizeof got, 0);
                kvfs_getattr(fs, NULL, f, &st);
                kvfs_release(fs, f);
            }
            break;
        case 3:
            kvfs_rename(fs, p, q, (r >> 56) % 4 == 0 ? RENAME_EXCHANGE : 0);
            break;
        case 4:
            kvfs_unlink(fs, p);
            break;
        case 5: {
            char d[8];
            snprintf(d, sizeof d, "/d%u", (unsigned)(r >> 48) % 3);
            if ((r >> 56) & 1) kvfs_mkdir(fs, d, 0755, &ALICE);
            else kvfs_rmdir(fs, d);
            break;
        }
        case 6: {
            char out[4096];
            list_dir(w->e, (r >> 48) & 1 ? "/" : "/d1", 5, out, sizeof out);
            break;
        }
        case 7:
            kvfs_getattr(fs, p, NULL, &st);
            kvfs_chmod(fs, p, NULL, 0600 | (mode_t)((r >> 48) & 077));
            kvfs_setxattr(fs, p, "user.t", "v", 1, 0);
            break;
        case 8: { /* another writer's put or delete, as the control socket's */
            store_batch b;
            store_batch_init(&b);
            if ((r >> 48) & 1) store_batch_put(&b, STORE_KS_DATA, p + 1, strlen(p + 1), "other", 5);
            else store_batch_delete(&b, STORE_KS_DATA, p + 1, strlen(p + 1));
            kvfs_write_keys(fs, &b, false);
            store_batch_free(&b);
            break;
        }
        default:
            kvfs_truncate(fs, p, NULL, (off_t)((r >> 48) % 100));
            kvfs_getattr(fs, NULL, mine, &st);
            if ((size_t)st.st_size != size)
                snprintf(w->err, sizeof w->err, "own file's size %lld, wrote %zu", (long long)st.st_size, size);
            break;
        }
    }
    w->size = size;
    rc = kvfs_release(fs, mine);
    if (rc && !w->err[0]) snprintf(w->err, sizeof w->err, "release %s: %d", own, rc);
    return NULL;
}

TEST(fs_concurrent_requests_keep_each_file_whole) {
    env e;
    CHECK(env_open(&e, 1024));
    pthread_t th[CONC_WORKERS];
    conc_worker w[CONC_WORKERS];
    for (int i = 0; i < CONC_WORKERS; i++) {
        w[i] = (conc_worker){.e = &e, .id = i, .rng = t_seed() + (uint64_t)i * 0x9e3779b97f4a7c15ull};
        CHECK(pthread_create(&th[i], NULL, conc_main, &w[i]) == 0);
    }
    for (int i = 0; i < CONC_WORKERS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < CONC_WORKERS; i++) CHECK_MSG(!w[i].err[0], "worker %d: %s", i, w[i].err);
    static char whole[CONC_OPS * 4096 + 1];
    for (int i = 0; i < CONC_WORKERS; i++) {
        char own[32];
        snprintf(own, sizeof own, "/own%d", i);
        ssize_t n = read_file(&e, own, whole, sizeof whole);
        CHECK_MSG(n == (ssize_t)w[i].size, "%s: %zd bytes, wrote %zu", own, n, w[i].size);
        for (ssize_t j = 0; j < n; j++)
            CHECK_MSG((uint8_t)whole[j] == (uint8_t)((j * 7 + i) & 0xff), "%s: byte %zd", own, j);
    }
    env_close(&e);
}
