/*
 * test_fs_names.c — the key <-> path mapping (fs/names.c): fixed examples from docs/mapping.md, refusal of
 * non-canonical spellings, and a property test: random binary keys round-trip through paths, every name is a
 * legal file name, and what a directory listing shows is what path resolution accepts.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "t.h"

/* Resolve path and compare with the expected key and kind. */
static int resolves_to(const char *path, const char *key, size_t klen, enum name_kind kind) {
    fs_path p;
    int rc = names_resolve(path, &p);
    if (rc) return rc;
    int ok = p.kind == kind && p.klen == klen && memcmp(p.key, key, klen) == 0;
    names_path_free(&p);
    return ok ? 0 : 1;
}

static bool path_is(const char *key, size_t klen, bool marker, const char *want) {
    char *p = names_key_to_path((const uint8_t *)key, klen, marker);
    bool ok = p && strcmp(p, want) == 0;
    if (!ok) fprintf(stderr, "# path of key: got %s want %s\n", p ? p : "(null)", want);
    free(p);
    return ok;
}

TEST(names_examples) {
    CHECK(path_is("users/alice/email", 17, false, "/users/alice/email"));
    CHECK(path_is("a//b", 4, false, "/a/%/b"));
    CHECK(path_is("/a", 2, false, "/%/a"));
    CHECK(path_is("a/", 2, false, "/a/%"));
    CHECK(path_is("a/./b", 5, false, "/a/%2E/b"));
    CHECK(path_is("../x", 4, false, "/%2E%2E/x"));
    CHECK(path_is("a\0b", 3, false, "/a%00b"));
    CHECK(path_is("100%", 4, false, "/100%"));
    CHECK(path_is("50%off", 6, false, "/50%off"));
    CHECK(path_is("%41", 3, false, "/%41"));
    CHECK(path_is("my%20file", 9, false, "/my%20file"));
    CHECK(path_is("a%2Fb%FFc", 9, false, "/a%2Fb%FFc"));
    CHECK(path_is("x%00", 4, false, "/x%2500"));
    CHECK(path_is("x%25", 4, false, "/x%2525"));
    CHECK(path_is("x%2E", 4, false, "/x%252E"));
    CHECK(path_is("%Fx", 3, false, "/%Fx"));
    CHECK(path_is("%", 1, false, "/%25"));
    CHECK(path_is("a%+", 3, false, "/a%25+"));
    CHECK(path_is("a%+b", 4, false, "/a%+b"));
    CHECK(path_is("a", 1, true, "/a%F"));
    CHECK(path_is("a%F", 3, false, "/a%25F"));
    CHECK(path_is("x/", 2, true, "/x/%%F"));
    CHECK(path_is("...", 3, false, "/..."));
}

TEST(names_resolve_examples) {
    CHECK_EQ(resolves_to("/users/alice/email", "users/alice/email", 17, NAME_PLAIN), 0);
    CHECK_EQ(resolves_to("/a/%/b", "a//b", 4, NAME_PLAIN), 0);
    CHECK_EQ(resolves_to("/a%F", "a", 1, NAME_FILE), 0);
    CHECK_EQ(resolves_to("/a%00b", "a\0b", 3, NAME_PLAIN), 0);
    CHECK_EQ(resolves_to("/100%", "100%", 4, NAME_PLAIN), 0);
    fs_path p;
    CHECK_OK(names_resolve("/", &p));
    CHECK_EQ(p.kind, NAME_ROOT);
    names_path_free(&p);
    /* A '%' that starts no escape is itself: names as found in the wild */
    CHECK_EQ(resolves_to("/my%20file", "my%20file", 9, NAME_PLAIN), 0);
    CHECK_EQ(resolves_to("/a%2Fb", "a%2Fb", 5, NAME_PLAIN), 0);
    CHECK_EQ(resolves_to("/%41", "%41", 3, NAME_PLAIN), 0);
    CHECK_EQ(resolves_to("/%2e", "%2e", 3, NAME_PLAIN), 0);
    CHECK_EQ(resolves_to("/x%2500", "x%00", 4, NAME_PLAIN), 0);
    /* Other spellings of a key are refused. */
    CHECK_EQ(names_resolve("/x%25", &p), -EINVAL);   /* x% is "x%" */
    CHECK_EQ(names_resolve("/a%2Eb", &p), -EINVAL);  /* a.b is "a.b" */
    CHECK_EQ(names_resolve("/%25%25", &p), -EINVAL); /* %% is "%%" */
    CHECK_EQ(names_resolve("/%F", &p), -EINVAL);
    CHECK_EQ(names_resolve("/a%F/b", &p), -EINVAL);
    CHECK_EQ(names_resolve("/x%+", &p), -EINVAL); /* too short to be a piece of a cut name */
    char piece[300];
    memset(piece, 'x', 253);
    strcpy(piece + 253, "%+");
    char path[600];
    snprintf(path, sizeof path, "/%s", piece);
    CHECK_EQ(names_resolve(path, &p), 0); /* a piece read partly: a continuation directory */
    CHECK_EQ(p.kind, NAME_CONT);
    CHECK_EQ(p.klen, 253);
    names_path_free(&p);
    snprintf(path, sizeof path, "/%s/y", piece);
    CHECK_EQ(names_resolve(path, &p), -EINVAL); /* 254 bytes fit in one name: not cut there */
}

TEST(names_long_component) {
    char key[700];
    memset(key, 'k', sizeof key);
    memcpy(key + 600, "/tail", 5);
    char *path = names_key_to_path((uint8_t *)key, 605, false);
    CHECK(path != NULL);
    /* 600 bytes: pieces of 253, 253, and 94. */
    size_t n = 0;
    for (char *q = strtok(path, "/"); q; q = strtok(NULL, "/")) {
        CHECK(strlen(q) <= NAMES_MAX);
        n++;
    }
    free(path);
    CHECK_EQ(n, 4);
    path = names_key_to_path((uint8_t *)key, 605, false);
    CHECK_EQ(resolves_to(path, key, 605, NAME_PLAIN), 0);
    free(path);
}

static uint8_t rand_byte(uint64_t *st) {
    static const char special[] = "/%.+F0A9\0az25E";
    uint64_t r = t_rand(st);
    if (r % 3 == 0) return (uint8_t)special[(r >> 8) % (sizeof special - 1)];
    return (uint8_t)(r >> 16);
}

/* Walk a key's path name by name, checking the listing of each level shows exactly the next name. */
static bool listing_agrees(const uint8_t *key, size_t klen, bool marker, const char *path) {
    char *copy = strdup(path);
    if (!copy) return false;
    size_t pos = 0; /* start of the current component in key */
    char *prefix = calloc(strlen(path) + 2, 1);
    bool ok = prefix != NULL;
    for (char *name = strtok(copy, "/"); ok && name; name = strtok(NULL, "/")) {
        fs_path dir;
        if (names_resolve(*prefix ? prefix : "/", &dir) != 0) {
            ok = false;
            break;
        }
        const char *esc = dir.kind == NAME_CONT ? dir.esc_partial : "";
        size_t esc_len = dir.kind == NAME_CONT ? dir.esc_len : 0;
        int pieces = dir.kind == NAME_CONT ? dir.pieces : 0;
        const uint8_t *sl = memchr(key + pos, '/', klen - pos);
        size_t clen = sl ? (size_t)(sl - (key + pos)) : klen - pos;
        char shown[NAMES_MAX + 1];
        bool cont;
        int n = names_child_name(key + pos, clen, marker && !sl, esc, esc_len, pieces, shown, &cont);
        names_path_free(&dir);
        if (n <= 0 || strcmp(shown, name) != 0) {
            fprintf(stderr, "# listing shows '%s' (%d), path has '%s' (prefix '%s' pos %zu clen %zu)\n",
                    n > 0 ? shown : "", n, name, prefix, pos, clen);
            ok = false;
            break;
        }
        if (!cont) pos += clen + 1;
        strcat(prefix, "/");
        strcat(prefix, name);
    }
    free(prefix);
    free(copy);
    return ok;
}

/* Whether a name holds one of the patterns the mapping reserves: an escape ("%00", "%25", "%2E"), a final "%F" or
 * "%+", or is "%", "." or "..". */
static bool name_reserved(const char *n) {
    size_t len = strlen(n);
    if (!strcmp(n, "%") || !strcmp(n, ".") || !strcmp(n, "..")) return true;
    if (len >= 2 && n[len - 2] == '%' && (n[len - 1] == 'F' || n[len - 1] == '+')) return true;
    return strstr(n, "%00") || strstr(n, "%25") || strstr(n, "%2E");
}

/* Any name a program may make that holds none of the reserved patterns is accepted as the name of itself: the key
 * is the name's bytes, and the key's name is the name. */
TEST(names_property_unreserved_names_are_their_own_keys) {
    uint64_t st = t_seed() | 1;
    static const char alphabet[] = "%%%0259AEF+.xé ";
    int tried = 0;
    for (int iter = 0; iter < 20000; iter++) {
        char name[16];
        size_t len = 1 + t_rand(&st) % 12;
        for (size_t i = 0; i < len; i++) name[i] = alphabet[t_rand(&st) % (sizeof alphabet - 1)];
        name[len] = 0;
        if (name_reserved(name)) continue;
        tried++;
        char path[20];
        snprintf(path, sizeof path, "/%s", name);
        CHECK_MSG(resolves_to(path, name, len, NAME_PLAIN) == 0, "the name %s is not the key %s", name, name);
        CHECK(path_is(name, len, false, path));
    }
    CHECK(tried > 1000);
}

TEST(names_property_round_trip) {
    uint64_t st = t_seed() | 1;
    for (int iter = 0; iter < 3000; iter++) {
        size_t klen = 1 + t_rand(&st) % (iter % 10 == 0 ? 900 : 40);
        uint8_t key[1000];
        for (size_t i = 0; i < klen; i++) key[i] = rand_byte(&st);
        bool marker = t_rand(&st) % 4 == 0;
        char *path = names_key_to_path(key, klen, marker);
        CHECK(path != NULL);
        /* Every name is a legal file name. */
        for (const char *q = path + 1; *q;) {
            const char *e = strchr(q, '/');
            size_t n = e ? (size_t)(e - q) : strlen(q);
            CHECK_MSG(n >= 1 && n <= NAMES_MAX, "name of %zu bytes in %s", n, path);
            CHECK_MSG(!(n == 1 && q[0] == '.') && !(n == 2 && q[0] == '.' && q[1] == '.'), "dot name in %s", path);
            q += n + (e ? 1 : 0);
        }
        fs_path p;
        int rc = names_resolve(path, &p);
        CHECK_MSG(rc == 0, "resolve %s: %d", path, rc);
        CHECK_EQ(p.kind, marker ? NAME_FILE : NAME_PLAIN);
        CHECK_MEM(p.key, p.klen, key, klen);
        names_path_free(&p);
        CHECK_MSG(listing_agrees(key, klen, marker, path), "listing disagrees for %s", path);
        free(path);
    }
}
