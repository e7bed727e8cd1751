/*
 * names.h — the reversible mapping between keys (arbitrary bytes) and paths of file names (docs/mapping.md).
 *
 * A key is split at '/' into components; each component becomes one file name:
 *   - the empty component (as in "a//b", "/a", "a/") is the name "%";
 *   - "." and ".." are "%2E" and "%2E%2E";
 *   - a NUL byte is "%00"; a '%' is "%25" when it is followed by "00", "25" or "2E", or by a '+' or an 'F' that
 *     ends the component, or is the whole component; any other '%' is itself ("my%20file" is the key my%20file);
 *     every other byte (including non-UTF-8 bytes) is itself;
 *   - the file of a key that is also a directory ("a" beside "a/b") is the name of "a" followed by "%F";
 *   - a name longer than 255 bytes is cut into pieces of at most 253 bytes (never inside an escape or "%F"), each
 *     but the last followed by "%+" and shown as a directory holding the next piece.
 * Exactly one path (the canonical one) names each key; any other spelling is refused.
 */
#ifndef KVFS_NAMES_H
#define KVFS_NAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NAMES_MAX 255        /* longest file name the kernel accepts */
#define NAMES_PIECE 253      /* longest piece of a cut name, before its "%+" */

/* What a path names. */
enum name_kind {
    NAME_ROOT,   /* "/" */
    NAME_PLAIN,  /* a key: the directory of that prefix if there is one, else the file */
    NAME_FILE,   /* "...%F": the file of a key that is also a directory */
    NAME_CONT,   /* ".../piece%+": part of a name cut in pieces; a synthetic directory */
};

typedef struct fs_path {
    enum name_kind kind;
    uint8_t *key;         /* malloc'ed raw key; for NAME_CONT, the directory prefix followed by the raw bytes of
                             the pieces read so far; NULL for the root */
    size_t klen;
    size_t dir_len;       /* bytes of key that are the real parent directory's prefix (ending in '/'), 0 at top */
    char *esc_partial;    /* NAME_CONT: the escaped text of the pieces read so far (without their "%+") */
    size_t esc_len;
    int pieces;           /* NAME_CONT: how many pieces were read */
} fs_path;

/* Resolve a FUSE path ("/", "/a/b"). 0, -EINVAL for a name that is not canonical (a different spelling of a
 * key, or no spelling at all), -ENAMETOOLONG for a key longer than the store allows, -ENOMEM. */
int names_resolve(const char *path, fs_path *out);
void names_path_free(fs_path *p);

/* Whether escaped text e holds an escape at e[i]: "%00" (NUL), "%25" ('%') or "%2E" ('.', in "." and ".."). Any
 * other '%' is itself, so names from the wild ("my%20file", "a%2Fb", "100%") are the names of their own keys. */
bool names_is_escape(const char *e, size_t elen, size_t i);
/* The escaped text of one component (no cutting): writes at most cap bytes, returns the full length needed. */
size_t names_escape(const uint8_t *c, size_t clen, bool file_marker, char *out, size_t cap);

/* The name that component c shows under in a directory listing at continuation state (esc_partial, pieces): for a
 * normal directory esc_partial is "" and pieces 0. Returns the name's length (written to out, NUL-terminated),
 * 0 when c does not appear at this level, -ENOMEM. *is_cont tells the name is a cut piece (a directory). */
int names_child_name(const uint8_t *c, size_t clen, bool file_marker, const char *esc_partial, size_t esc_len,
                     int pieces, char out[NAMES_MAX + 1], bool *is_cont);

/* The canonical path of a key ("/"-joined names, starting with "/"), malloc'ed; file_marker asks for the file of
 * a key that is also a directory. NULL on allocation failure. */
char *names_key_to_path(const uint8_t *key, size_t klen, bool file_marker);

#endif /* KVFS_NAMES_H */
