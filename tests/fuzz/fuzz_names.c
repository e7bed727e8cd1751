/*
 * fuzz_names.c — the key <-> path mapping of the filesystem (fs/names.c, docs/mapping.md).
 *
 * The first input byte picks a mode (bit 0), the rest is a key or a path.
 *  - key (bit 0 clear): any key of 1 .. KV_MAX_KEY bytes. names_key_to_path gives a path that names_resolve maps
 *    back to the same key (NAME_PLAIN, or NAME_FILE with the file marker, asked for by bit 1); every component of
 *    that path is at most NAMES_MAX bytes; names_escape and names_child_name answer for each component of the key.
 *  - path (bit 0 set): a path as the kernel sends one, made of the input's bytes (from_path). names_resolve never
 *    crashes; when it accepts the path as a key (NAME_PLAIN or NAME_FILE), that key's canonical path is this path
 *    (exactly one spelling per key).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "kv.h"
#include "names.h"

static void check_components(const char *path) {
    const char *c = path;
    while (*c) {
        c++; /* the '/' */
        const char *slash = strchr(c, '/');
        size_t l = slash ? (size_t)(slash - c) : strlen(c);
        FUZZ_CHECK(l >= 1 && l <= NAMES_MAX);
        c += l;
    }
}

static void from_key(unsigned flags, const uint8_t *key, size_t klen) {
    if (klen == 0 || klen > KV_MAX_KEY) return;
    bool marker = flags & 2;
    char *path = names_key_to_path(key, klen, marker);
    FUZZ_CHECK(path && path[0] == '/');
    check_components(path);
    fs_path fp;
    memset(&fp, 0, sizeof fp);
    int rc = names_resolve(path, &fp);
    if (rc == -ENAMETOOLONG) {
        free(path);
        return;
    }
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(fp.kind == (marker ? NAME_FILE : NAME_PLAIN));
    FUZZ_CHECK(fp.klen == klen && memcmp(fp.key, key, klen) == 0);
    names_path_free(&fp);
    free(path);
    /* Each component escapes, and shows in its directory's listing under a name of at most NAMES_MAX bytes. */
    size_t start = 0;
    for (size_t i = 0; i <= klen; i++) {
        if (i < klen && key[i] != '/') continue;
        size_t need = names_escape(key + start, i - start, marker, NULL, 0);
        char *esc = malloc(need + 1);
        FUZZ_CHECK(names_escape(key + start, i - start, marker, esc, need + 1) == need);
        char name[NAMES_MAX + 1];
        bool cont;
        int nl = names_child_name(key + start, i - start, marker, "", 0, 0, name, &cont);
        FUZZ_CHECK(nl >= 0 && nl <= NAMES_MAX);
        if (nl > 0) FUZZ_CHECK(strlen(name) == (size_t)nl);
        free(esc);
        start = i + 1;
    }
}

/* A path as the kernel sends one: "/" or "/" and components joined by "/", each 1 .. NAMES_MAX bytes, none "." or
 * "..", no NUL. The input's bytes are cut at '/' and the components that could not be sent are left out. */
static void from_path(const uint8_t *bytes, size_t n) {
    char *path = malloc(n + 2);
    size_t l = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && bytes[i] != '/') continue;
        size_t cl = i - start;
        const uint8_t *c = bytes + start;
        start = i + 1;
        if (cl == 0 || cl > NAMES_MAX || memchr(c, 0, cl) || (cl == 1 && c[0] == '.') ||
            (cl == 2 && c[0] == '.' && c[1] == '.'))
            continue;
        path[l++] = '/';
        memcpy(path + l, c, cl);
        l += cl;
    }
    if (l == 0) path[l++] = '/';
    path[l] = 0;
    fs_path fp;
    memset(&fp, 0, sizeof fp);
    int rc = names_resolve(path, &fp);
    FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ENAMETOOLONG || rc == -ENOMEM);
    if (rc == 0 && (fp.kind == NAME_PLAIN || fp.kind == NAME_FILE)) {
        char *canon = names_key_to_path(fp.key, fp.klen, fp.kind == NAME_FILE);
        FUZZ_CHECK(canon && strcmp(canon, path) == 0);
        free(canon);
    }
    if (rc == 0) names_path_free(&fp);
    free(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in f = {data, data + size};
    unsigned flags = fuzz_u8(&f);
    if (flags & 1) from_path(f.p, fuzz_left(&f));
    else from_key(flags, f.p, fuzz_left(&f));
    return 0;
}
