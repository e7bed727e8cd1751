/*
 * names.c — keys <-> paths (the rules are in names.h and docs/mapping.md).
 *
 * Invariants
 *  - A component holds no '/'. escape() is injective and its output never contains NUL nor ends in "%+"; it ends
 *    in "%F" only when asked for the file marker. So a name ending in "%+" is always a cut piece, and
 *    unescape(escape(x)) == x. Only "%00", "%25" and "%2E" are escapes; any other '%' in a name is itself.
 *  - A path is accepted only if it is exactly what names_key_to_path would produce for the key it decodes to
 *    (canonical spelling): every key has one path and every accepted path one key.
 *  - Cutting happens on the escaped text at unit boundaries (an escape, the final "%F", or one byte), so the
 *    pieces joined back are the escaped text, whatever bytes the cut falls between.
 */
#include "names.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

static const char HEX[] = "0123456789ABCDEF";

bool names_is_escape(const char *e, size_t elen, size_t i) {
    if (e[i] != '%' || i + 2 >= elen) return false;
    char a = e[i + 1], b = e[i + 2];
    return (a == '0' && b == '0') || (a == '2' && (b == '5' || b == 'E'));
}

/* A '%' that a reader could take for the start of an escape (names_is_escape), for a cut piece's "%+" or the file
 * marker "%F" at the end, or for the empty component ("%" alone) must itself be escaped. */
static bool percent_needs_escape(const uint8_t *c, size_t clen, size_t i) {
    if (clen == 1) return true;
    if (names_is_escape((const char *)c, clen, i)) return true;
    return i + 2 == clen && (c[i + 1] == '+' || c[i + 1] == 'F');
}

size_t names_escape(const uint8_t *c, size_t clen, bool file_marker, char *out, size_t cap) {
    size_t n = 0;
#define PUT(ch)                                \
    do {                                       \
        if (n < cap) out[n] = (char)(ch);      \
        n++;                                   \
    } while (0)
    if (clen == 0) {
        PUT('%');
    } else if ((clen == 1 && c[0] == '.') || (clen == 2 && c[0] == '.' && c[1] == '.')) {
        for (size_t i = 0; i < clen; i++) {
            PUT('%');
            PUT('2');
            PUT('E');
        }
    } else {
        for (size_t i = 0; i < clen; i++) {
            uint8_t b = c[i];
            if (b == 0 || (b == '%' && percent_needs_escape(c, clen, i))) {
                PUT('%');
                PUT(HEX[b >> 4]);
                PUT(HEX[b & 15]);
            } else {
                PUT(b);
            }
        }
    }
    if (file_marker) {
        PUT('%');
        PUT('F');
    }
#undef PUT
    return n;
}

/* Decode escaped text (no marker handling): an escape is its byte, anything else itself. out needs elen bytes. */
static size_t decode_units(const char *e, size_t elen, uint8_t *out) {
    size_t n = 0;
    for (size_t i = 0; i < elen; i++) {
        if (names_is_escape(e, elen, i)) {
            out[n++] = e[i + 1] == '0' ? 0 : e[i + 2] == '5' ? '%' : '.';
            i += 2;
        } else {
            out[n++] = (uint8_t)e[i];
        }
    }
    return n;
}

/* Decode a whole escaped component (marker and the empty name included). out needs elen bytes. */
static size_t unescape(const char *e, size_t elen, uint8_t *out, bool *file_marker) {
    *file_marker = false;
    if (elen >= 2 && e[elen - 2] == '%' && e[elen - 1] == 'F') {
        *file_marker = true;
        elen -= 2;
    }
    if (elen == 1 && e[0] == '%') return 0;
    return decode_units(e, elen, out);
}

/* Length of the unit starting at e[i]. */
static size_t unit_len(const char *e, size_t elen, size_t i) {
    if (names_is_escape(e, elen, i)) return 3;
    if (e[i] == '%' && i + 2 == elen && e[i + 1] == 'F') return 2;
    return 1;
}

/* Cut escaped text into pieces: bounds[k] (when k < max_bounds) gets the end of piece k. Returns the count. */
static int cut(const char *e, size_t elen, size_t *bounds, int max_bounds) {
    /* bounds[k] = end of piece k; the last piece ends at elen. */
    int k = 0;
    size_t pos = 0;
    while (elen - pos > NAMES_MAX) {
        size_t end = pos;
        while (end < elen) {
            size_t u = unit_len(e, elen, end);
            if (end + u - pos > NAMES_PIECE) break;
            end += u;
        }
        if (k < max_bounds) bounds[k] = end;
        k++;
        pos = end;
    }
    if (k < max_bounds) bounds[k] = elen;
    return k + 1;
}

void names_path_free(fs_path *p) {
    free(p->key);
    free(p->esc_partial);
    memset(p, 0, sizeof *p);
}

typedef struct growbuf {
    void *p;
    size_t len, cap;
} growbuf;

static int gb_add(growbuf *g, const void *d, size_t n) {
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap : 64;
        while (cap < g->len + n + 1) cap *= 2;
        void *np = realloc(g->p, cap);
        if (!np) return -ENOMEM;
        g->p = np;
        g->cap = cap;
    }
    memcpy((char *)g->p + g->len, d, n);
    g->len += n;
    ((char *)g->p)[g->len] = 0;
    return 0;
}

int names_resolve(const char *path, fs_path *out) {
    memset(out, 0, sizeof *out);
    while (*path == '/') path++;
    if (*path == 0) {
        out->kind = NAME_ROOT;
        return 0;
    }
    growbuf key = {0}, esc = {0};
    size_t *bounds = NULL;
    uint8_t *raw = NULL;
    int rc = 0;
    int pieces = 0;         /* pieces read of the current component */
    size_t dir_len = 0;
    bool last_marker = false;
    const char *p = path;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t nlen = slash ? (size_t)(slash - p) : strlen(p);
        bool last = !slash || slash[1] == 0;
        if (nlen == 0 || nlen > NAMES_MAX || last_marker) {
            rc = nlen > NAMES_MAX ? -ENAMETOOLONG : -EINVAL;
            goto out;
        }
        bool is_piece = nlen >= 2 && p[nlen - 2] == '%' && p[nlen - 1] == '+';
        if (is_piece) {
            /* A cut falls at most two bytes short of NAMES_PIECE (it never splits a "%XX"). */
            if (nlen - 2 + 2 < NAMES_PIECE || nlen - 2 > NAMES_PIECE) {
                rc = -EINVAL;
                goto out;
            }
            if ((rc = gb_add(&esc, p, nlen - 2))) goto out;
            pieces++;
            if (last) {
                /* A cut name read only partly: a synthetic directory of the keys continuing it. */
                raw = malloc(esc.len + 1);
                if (!raw) {
                    rc = -ENOMEM;
                    goto out;
                }
                size_t rlen = decode_units(esc.p, esc.len, raw);
                dir_len = key.len;
                if ((rc = gb_add(&key, raw, rlen))) goto out;
                out->kind = NAME_CONT;
                out->esc_partial = esc.p;
                out->esc_len = esc.len;
                esc.p = NULL;
                out->pieces = pieces;
                break;
            }
        } else {
            if ((rc = gb_add(&esc, p, nlen))) goto out;
            /* A whole component: it must be cut exactly where the pieces were. */
            if (pieces > 0) {
                bounds = malloc((size_t)(pieces + 1) * sizeof *bounds);
                if (!bounds) {
                    rc = -ENOMEM;
                    goto out;
                }
                int n = cut(esc.p, esc.len, bounds, pieces + 1);
                if (n != pieces + 1) {
                    rc = -EINVAL;
                    goto out;
                }
                /* Compare the cut positions with the names' lengths by walking the path again. */
                const char *q = p;
                for (int k = pieces; k > 0; k--) {
                    q--; /* the '/' before the current name */
                    const char *prev = q;
                    while (prev > path && prev[-1] != '/') prev--;
                    size_t plen = (size_t)(q - prev) - 2; /* without "%+" */
                    size_t start = k >= 2 ? bounds[k - 2] : 0;
                    if (bounds[k - 1] - start != plen) {
                        rc = -EINVAL;
                        goto out;
                    }
                    q = prev;
                }
                free(bounds);
                bounds = NULL;
            }
            raw = malloc(esc.len + 1);
            if (!raw) {
                rc = -ENOMEM;
                goto out;
            }
            bool marker;
            size_t rlen = unescape(esc.p, esc.len, raw, &marker);
            /* Canonical spelling only. */
            char small[NAMES_MAX + 3];
            size_t need = names_escape(raw, rlen, marker, small, sizeof small);
            bool same;
            if (need <= sizeof small) {
                same = need == esc.len && memcmp(small, esc.p, need) == 0;
            } else {
                char *big = malloc(need);
                if (!big) {
                    rc = -ENOMEM;
                    goto out;
                }
                names_escape(raw, rlen, marker, big, need);
                same = need == esc.len && memcmp(big, esc.p, need) == 0;
                free(big);
            }
            if (!same || memchr(raw, '/', rlen)) {
                rc = -EINVAL;
                goto out;
            }
            dir_len = key.len;
            if ((rc = gb_add(&key, raw, rlen))) goto out;
            free(raw);
            raw = NULL;
            esc.len = 0;
            pieces = 0;
            last_marker = marker;
            if (!last && (rc = gb_add(&key, "/", 1))) goto out;
            out->kind = marker ? NAME_FILE : NAME_PLAIN;
        }
        if (!slash) break;
        p = slash + 1;
    }
    /* An empty key is allowed here: "/%" is the directory of the keys starting with "/" (no file can be there). */
    if (key.len > STORE_MAX_KEY) {
        rc = -ENAMETOOLONG;
        goto out;
    }
    out->key = key.p;
    out->klen = key.len;
    out->dir_len = dir_len;
    key.p = NULL;
out:
    free(key.p);
    free(esc.p);
    free(bounds);
    free(raw);
    if (rc) names_path_free(out);
    return rc;
}

int names_child_name(const uint8_t *c, size_t clen, bool file_marker, const char *esc_partial, size_t esc_len,
                     int pieces, char out[NAMES_MAX + 1], bool *is_cont) {
    char small[NAMES_MAX + 3];
    char *e = small;
    size_t elen = names_escape(c, clen, file_marker, small, sizeof small);
    *is_cont = false;
    if (pieces == 0 && elen <= NAMES_MAX) {
        memcpy(out, small, elen);
        out[elen] = 0;
        return (int)elen;
    }
    if (elen > sizeof small) {
        e = malloc(elen);
        if (!e) return -ENOMEM;
        names_escape(c, clen, file_marker, e, elen);
    }
    int rc = 0;
    size_t *bounds = malloc((size_t)(pieces + 2) * sizeof *bounds);
    if (!bounds) {
        rc = -ENOMEM;
        goto done;
    }
    int n = cut(e, elen, bounds, pieces + 2);
    if (n <= pieces) goto done; /* too short to continue the pieces read so far: shown higher up */
    size_t start = pieces ? bounds[pieces - 1] : 0;
    if (start != esc_len || memcmp(e, esc_partial, esc_len) != 0) goto done;
    size_t plen = bounds[pieces] - start;
    memcpy(out, e + start, plen);
    if (pieces + 1 < n) {
        out[plen++] = '%';
        out[plen++] = '+';
        *is_cont = true;
    }
    out[plen] = 0;
    rc = (int)plen;
done:
    free(bounds);
    if (e != small) free(e);
    return rc;
}

char *names_key_to_path(const uint8_t *key, size_t klen, bool file_marker) {
    growbuf g = {0};
    size_t pos = 0;
    for (;;) {
        const uint8_t *sl = memchr(key + pos, '/', klen - pos);
        size_t clen = sl ? (size_t)(sl - (key + pos)) : klen - pos;
        bool last = !sl;
        size_t elen = names_escape(key + pos, clen, last && file_marker, NULL, 0);
        char *e = malloc(elen + 1);
        if (!e) goto fail;
        names_escape(key + pos, clen, last && file_marker, e, elen);
        int n = cut(e, elen, NULL, 0);
        size_t *bounds = malloc((size_t)n * sizeof *bounds);
        if (!bounds) {
            free(e);
            goto fail;
        }
        cut(e, elen, bounds, n);
        size_t start = 0;
        for (int k = 0; k < n; k++) {
            if (gb_add(&g, "/", 1) || gb_add(&g, e + start, bounds[k] - start) ||
                (k + 1 < n && gb_add(&g, "%+", 2))) {
                free(bounds);
                free(e);
                goto fail;
            }
            start = bounds[k];
        }
        free(bounds);
        free(e);
        if (last) break;
        pos += clen + 1;
    }
    return g.p;
fail:
    free(g.p);
    return NULL;
}
