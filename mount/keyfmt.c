/*
 * keyfmt.c — the text forms of keys and values (rules in keyfmt.h).
 *
 * Invariants
 *  - decode(encode(b)) == b for every key and every value b. Keys are escaped component by component with the
 *    filesystem's own names_escape() (fs/names.h), so the tools and the mount agree on a key's spelling but for a
 *    '%' that names_escape leaves as itself before [0-9A-F+] (a name "my%20file"), which is %25 here; the extra
 *    %XX for such a '%' and for unprintable bytes only touch bytes that names_escape passed through unchanged, and
 *    the decoder reads "%XX" as a byte wherever it appears, so the extra escapes decode the same way.
 *  - Encoded text never contains a control character, a space (keys), or a byte sequence that is not well-formed
 *    UTF-8: it can go to a terminal, into a whitespace-separated line, or into a JSON string as is.
 *  - The decoder never reads past tlen.
 */
#include "keyfmt.h"

#include <stdlib.h>
#include <string.h>

#include "names.h"

static const char hexdig[] = "0123456789ABCDEF";

static bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }
static int hexval(char c) { return c <= '9' ? c - '0' : c - 'A' + 10; }

/* Length of the well-formed UTF-8 sequence at p (lead byte >= 0x80), code point in *cp; 0 when malformed; -1 when
 * the n bytes available are a valid but incomplete start. */
static int utf8_seq(const uint8_t *p, size_t n, uint32_t *cp) {
    uint8_t c = p[0];
    int len;
    uint32_t v, min;
    if (c >= 0xc2 && c <= 0xdf) len = 2, v = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) len = 3, v = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        if ((p[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0; /* overlong, too big, surrogate */
    *cp = v;
    return len;
}

/* Copy src to dst escaping unprintable bytes (and '%' when pct, space unless space_ok). Stops before a UTF-8
 * character cut at the end when !final. Returns the output length; *used gets the bytes consumed. */
static size_t escape_unprintable(char *dst, const uint8_t *s, size_t n, bool pct, bool space_ok, bool final,
                                 size_t *used) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t c = s[i];
        if ((c > 0x20 && c < 0x7f && !(pct && c == '%')) || (c == ' ' && space_ok)) {
            dst[o++] = (char)c;
            i++;
            continue;
        }
        if (c >= 0x80) {
            uint32_t cp = 0;
            int len = utf8_seq(s + i, n - i, &cp);
            if (len < 0 && !final) break; /* the rest of this character comes with the next piece */
            if (len > 0 && cp >= 0xa0) {  /* printable; the C1 controls U+0080..U+009F are escaped */
                memcpy(dst + o, s + i, (size_t)len);
                o += (size_t)len;
                i += (size_t)len;
                continue;
            }
        }
        dst[o++] = '%';
        dst[o++] = hexdig[c >> 4];
        dst[o++] = hexdig[c & 15];
        i++;
    }
    if (used) *used = i;
    return o;
}

size_t keyfmt_key(char *dst, const void *key, size_t n) {
    const uint8_t *k = key;
    char small[768];
    size_t o = 0, pos = 0;
    for (;;) {
        const uint8_t *sl = memchr(k + pos, '/', n - pos);
        size_t clen = sl ? (size_t)(sl - (k + pos)) : n - pos;
        /* The filesystem's escaping of the component, then the unprintable bytes it left alone. */
        size_t elen = names_escape(k + pos, clen, false, small, sizeof small);
        char *e = small;
        if (elen > sizeof small) {
            e = malloc(elen);
            if (!e) {
                dst[0] = 0;
                return 0;
            }
            names_escape(k + pos, clen, false, e, elen);
        }
        /* names_escape leaves a '%' that starts none of its escapes as itself ("my%20file"); this text form reads
         * every %XX as a byte, so such a '%' followed by [0-9A-F+] becomes %25 (at most 3 bytes per key byte) */
        char small2[3 * sizeof small];
        char *t = elen <= sizeof small ? small2 : malloc(3 * elen);
        if (!t) {
            if (e != small) free(e);
            dst[0] = 0;
            return 0;
        }
        size_t tlen = 0;
        for (size_t i = 0; i < elen; i++) {
            bool literal = e[i] == '%' && !names_is_escape(e, elen, i) && i + 1 < elen &&
                           (is_hex(e[i + 1]) || e[i + 1] == '+');
            t[tlen++] = e[i];
            if (literal) t[tlen++] = '2', t[tlen++] = '5';
        }
        o += escape_unprintable(dst + o, (const uint8_t *)t, tlen, false, false, true, NULL);
        if (t != small2) free(t);
        if (e != small) free(e);
        if (!sl) break;
        dst[o++] = '/';
        pos += clen + 1;
    }
    dst[o] = 0;
    return o;
}

char *keyfmt_key_alloc(const void *key, size_t n) {
    char *d = malloc(KEYFMT_KEY_MAX(n) + 1);
    if (d && n && keyfmt_key(d, key, n) == 0) {
        free(d);
        return NULL;
    }
    if (d && !n) d[0] = 0;
    return d;
}

size_t keyfmt_value(char *dst, const void *src, size_t n, bool final, size_t *used) {
    size_t o = escape_unprintable(dst, src, n, true, true, final, used);
    dst[o] = 0;
    return o;
}


int keyfmt_decode(const char *text, size_t tlen, bool is_key, uint8_t **out, size_t *outlen, const char **why,
                  size_t *where) {
    uint8_t *d = malloc(tlen + 1);
    if (!d) return -2;
    size_t o = 0, comp = 0; /* comp: where the current component starts in text */
    const char *bad = NULL;
    size_t i;
    for (i = 0; i < tlen && !bad; i++) {
        char ch = text[i];
        if (is_key && ch == '/') {
            comp = i + 1;
            d[o++] = '/';
            continue;
        }
        if (ch != '%') {
            d[o++] = (uint8_t)ch;
            continue;
        }
        /* The component's end, for the whole-component forms "%", "...%F" and "...%+/". */
        size_t cend = tlen;
        if (is_key) {
            const char *sl = memchr(text + i, '/', tlen - i);
            if (sl) cend = (size_t)(sl - text);
        }
        if (i + 2 < tlen && is_hex(text[i + 1]) && is_hex(text[i + 2])) { /* '/' is not hex: stays inside */
            d[o++] = (uint8_t)(hexval(text[i + 1]) << 4 | hexval(text[i + 2]));
            i += 2;
        } else if (is_key && i == comp && cend == i + 1) {
            /* "%" alone: the empty component; nothing to add */
        } else if (is_key && i + 2 == cend && text[i + 1] == 'F') {
            i++; /* the file marker of a key that is also a directory: names the same key */
        } else if (is_key && i + 2 == cend && text[i + 1] == '+' && cend < tlen) {
            i += 2; /* a piece of a cut name: the component continues after the '/' */
            comp = i + 1;
        } else if (i + 1 < tlen && (is_hex(text[i + 1]) || (is_key && text[i + 1] == '+'))) {
            bad = "a '%' followed by a digit, A-F or '+' must start an escape %XX (write a literal '%' as %25)";
        } else {
            d[o++] = '%'; /* a '%' that cannot start an escape stands for itself, as in file names */
        }
    }
    if (bad) {
        free(d);
        if (why) *why = bad;
        if (where) *where = i - 1;
        return -1;
    }
    d[o] = 0;
    *out = d;
    *outlen = o;
    return 0;
}

bool keyfmt_is_utf8(const void *src, size_t n) {
    const uint8_t *s = src;
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int len = utf8_seq(s + i, n - i, &cp);
        if (len <= 0) return false;
        i += (size_t)len;
    }
    return true;
}
