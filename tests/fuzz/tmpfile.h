/* tmpfile.h — fuzz_tmpdir and fuzz_write_file (fuzz.h), included by the harnesses that read files: one definition
 * per program, as each program is one harness. */
#ifndef KV_FUZZ_TMPFILE_H
#define KV_FUZZ_TMPFILE_H

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "kv.h"
#include "wal.h"

static char fuzz_dir[PATH_MAX];

/* Remove the files in dir (not subdirectories' contents). */
static void fuzz_clear_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[PATH_MAX + 256];
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            if (unlink(p) != 0) rmdir(p);
        }
    closedir(d);
}

static void fuzz_tmpdir_remove(void) {
    char db[PATH_MAX + 8];
    snprintf(db, sizeof db, "%s/db", fuzz_dir); /* fuzz_open's store */
    fuzz_clear_dir(db);
    fuzz_clear_dir(fuzz_dir);
    rmdir(fuzz_dir);
}

const char *fuzz_tmpdir(void) {
    if (!fuzz_dir[0]) {
        /* KVFS_FUZZ_TMP: make fuzz-run's directory, which it removes after the run (libFuzzer ends a run with
         * _Exit, so the atexit removal below does not happen then). */
        const char *base = getenv("KVFS_FUZZ_TMP")           ? getenv("KVFS_FUZZ_TMP")
                           : access("/dev/shm", W_OK) == 0 ? "/dev/shm"
                           : getenv("TMPDIR")              ? getenv("TMPDIR")
                                                           : "/tmp";
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/kvfs-fuzz-XXXXXX", base);
        if (!mkdtemp(fuzz_dir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_tmpdir_remove);
    }
    return fuzz_dir;
}

void fuzz_write_file(const char *name, const uint8_t *data, size_t n, char *path) {
    if (snprintf(path, PATH_MAX, "%s/%s", fuzz_tmpdir(), name) >= PATH_MAX) abort();
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* The directory "db" under fuzz_tmpdir(), made empty (its files removed) for the input: a store's, or a batch log's.
 * It is removed with the rest at exit. */
const char *fuzz_store_dir(void);
const char *fuzz_store_dir(void) {
    static char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/db", fuzz_tmpdir()) >= (int)sizeof dir) abort();
    if (mkdir(dir, 0755) != 0) fuzz_clear_dir(dir);
    return dir;
}

/* Write a record log at path (wal_append: the checksums hold) whose records are the payloads in p[0..n), each a
 * two-byte length and its bytes (a length past the end takes what is left). */
void fuzz_write_records(const char *path, const uint8_t *p, size_t n);
void fuzz_write_records(const char *path, const uint8_t *p, size_t n) {
    wal_writer *w;
    FUZZ_CHECK(wal_writer_open(kv_env_posix(), path, &w) == KV_OK);
    fuzz_in c = {p, p + n};
    while (fuzz_left(&c) >= 2) {
        size_t l = fuzz_u16(&c);
        if (l > fuzz_left(&c)) l = fuzz_left(&c);
        FUZZ_CHECK(wal_append(w, c.p, l) == KV_OK);
        c.p += l;
    }
    FUZZ_CHECK(wal_writer_close(w) == KV_OK);
}

#endif /* KV_FUZZ_TMPFILE_H */
