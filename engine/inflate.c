/*
 * inflate.c — decoding raw deflate streams (RFC 1951) into a buffer of known size (see deflate.h).
 *
 * How it is fast: the input is read through a 64-bit bit buffer refilled 8 bytes at a time, so one refill covers
 * a whole literal/length code, its extra bits, a distance code and its extra bits (at most 48 bits); Huffman codes
 * are decoded by one lookup in a table indexed by the next LITLEN_BITS (or DIST_BITS) bits, with a second lookup in
 * a subtable for the rare longer codes; each table entry carries what the symbol means (literal byte, length or
 * distance base and extra-bit count), so a length or distance costs one lookup and one shift; a run of literals whose
 * codes have the length most literals of the code have decodes four at a time, through four lookups that do not wait
 * on each other; matches are copied 8 bytes at a time when they do not overlap within 8 bytes and the output has room
 * for the overshoot. Spans (deflate.h) decode the same way, stopping exactly at a bit offset.
 *
 * Invariants
 *  - Reads: the 8-byte refill runs only while at least 8 input bytes remain; closer to the end bytes are read one at
 *    a time, and past the end the bit buffer is filled with zero bytes that are counted ("over"). Over-read bytes may
 *    sit unused in the bit buffer, but a stream that consumes one of them is truncated: more than 8 of them, or any
 *    still consumed when the final block ends, fails the stream.
 *  - Writes: every literal, match and stored run is checked against the bytes left in the output first; the 8-byte
 *    match copy runs only when the match plus 8 bytes of overshoot fits. A distance further back than the output
 *    written so far fails the stream.
 *  - Tables: a code's lengths must satisfy Kraft's inequality exactly (a complete code) except for a code with a
 *    single symbol of length 1, as zlib allows; every table entry a code leaves unused decodes as an error. Tables
 *    are built into fixed arrays whose size bounds any complete code with these root sizes, and the builder checks
 *    the bound anyway.
 *  - The bits after a code are read only through entries built for that code, so a code never decodes as a symbol
 *    outside its alphabet (literal/length symbols 286 and 287 and distance symbols 30 and 31 are errors).
 */
#include "deflate.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define LITLEN_BITS 10      /* root index bits of the literal/length table */
#define DIST_BITS 8         /* of the distance table */
#define PRECODE_BITS 7      /* code-length codes are at most 7 bits: one level */
#define MAX_CODE_LEN 15
#define LITLEN_SYMS 288
#define DIST_SYMS 32
#define PRECODE_SYMS 19
/* Room for any complete code: the root table plus subtables. zlib's `enough` gives 1332 entries for 286 symbols,
 * root 10, and 400 for 30 symbols, root 8; with 288 and 32 symbols these stay well under the sizes below. */
#define LITLEN_TABLE 2048
#define DIST_TABLE 1024
#define PRECODE_TABLE (1 << PRECODE_BITS)
#define FAST_OUT_SLACK (258 + 16) /* a match of 258 bytes copied 8 at a time fits */

/* A table entry: bits 0-4 code length (in a subtable entry: the whole code's length), bits 5-9 extra bits (in a
 * subtable pointer: the subtable's index bits), bits 10-12 kind, bits 16-31 value (literal, base, subtable start). */
enum { K_LIT = 0, K_LEN = 1, K_EOB = 2, K_SUB = 3, K_BAD = 4 };
#define ENTRY(kind, extra, value) (((uint32_t)(value) << 16) | ((uint32_t)(kind) << 10) | ((uint32_t)(extra) << 5))
#define E_LEN(e) ((e) & 31u)
#define E_EXTRA(e) (((e) >> 5) & 31u)
#define E_KIND(e) (((e) >> 10) & 7u)
#define E_VALUE(e) ((e) >> 16)

const uint16_t deflate_length_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                         31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
const uint8_t deflate_length_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                         2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
const uint16_t deflate_dist_base[30] = {1,    2,    3,    4,    5,    7,     9,     13,    17,  25,
                                       33,   49,   65,   97,   129,  193,   257,   385,   513, 769,
                                       1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
const uint8_t deflate_dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6,
                                       6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
const uint8_t deflate_precode_order[PRECODE_SYMS] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

enum table_kind { T_LITLEN, T_DIST, T_PRECODE };

static uint32_t symbol_entry(enum table_kind k, unsigned sym) {
    switch (k) {
    case T_LITLEN:
        if (sym < 256) return ENTRY(K_LIT, 0, sym);
        if (sym == 256) return ENTRY(K_EOB, 0, 0);
        if (sym < 286) return ENTRY(K_LEN, deflate_length_extra[sym - 257], deflate_length_base[sym - 257]);
        return ENTRY(K_BAD, 0, 0);
    case T_DIST:
        if (sym < 30) return ENTRY(K_LEN, deflate_dist_extra[sym], deflate_dist_base[sym]);
        return ENTRY(K_BAD, 0, 0);
    default:
        return ENTRY(K_LIT, 0, sym);
    }
}

/* Build the decoding table t (cap entries, root index bits) for the n code lengths lens. 0, or -1 when the lengths
 * are not a usable code. A code with no symbols at all is accepted (every entry an error) only for distances. */
static int build_table(uint32_t *t, unsigned cap, unsigned root, const uint8_t *lens, unsigned n,
                       enum table_kind kind) {
    unsigned count[MAX_CODE_LEN + 1] = {0};
    for (unsigned s = 0; s < n; s++) count[lens[s]]++;
    count[0] = 0;
    unsigned used = 0, max = 0;
    for (unsigned l = 1; l <= MAX_CODE_LEN; l++)
        if (count[l]) {
            used += count[l];
            max = l;
        }
    const uint32_t bad = ENTRY(K_BAD, 0, 0) | 1; /* consumes a bit, never reached with data: decoding stops */
    if (used == 0) {
        if (kind != T_DIST) return -1;
        for (unsigned i = 0; i < (1u << root); i++) t[i] = bad;
        return 0;
    }
    int left = 1;
    for (unsigned l = 1; l <= MAX_CODE_LEN; l++) {
        left = (left << 1) - (int)count[l];
        if (left < 0) return -1; /* over-subscribed */
    }
    if (left > 0) {
        if (!(used == 1 && max == 1 && kind != T_PRECODE)) return -1; /* incomplete */
        for (unsigned i = 0; i < (1u << root); i++) t[i] = bad;
    }
    /* Symbols sorted by (length, symbol): the order of their canonical codes. */
    uint16_t sorted[LITLEN_SYMS];
    unsigned offs[MAX_CODE_LEN + 2];
    offs[1] = 0;
    for (unsigned l = 1; l <= MAX_CODE_LEN; l++) offs[l + 1] = offs[l] + count[l];
    for (unsigned s = 0; s < n; s++)
        if (lens[s]) sorted[offs[lens[s]]++] = (uint16_t)s;
    unsigned remaining[MAX_CODE_LEN + 1]; /* codes of each length not yet placed */
    memcpy(remaining, count, sizeof remaining);
    unsigned next_free = 1u << root, sub_prefix = ~0u, sub_start = 0, sub_bits = 0, rev = 0;
    for (unsigned i = 0; i < used; i++) {
        unsigned s = sorted[i], len = lens[s];
        uint32_t e = symbol_entry(kind, s) | len;
        if (len <= root) {
            for (unsigned j = rev; j < (1u << root); j += 1u << len) t[j] = e;
        } else {
            unsigned prefix = rev & ((1u << root) - 1);
            if (prefix != sub_prefix) {
                /* A new subtable: as many index bits as the codes sharing this prefix need to fill it. */
                sub_bits = len - root;
                int room = 1 << sub_bits;
                while (sub_bits + root < max) {
                    room -= (int)remaining[sub_bits + root];
                    if (room <= 0) break;
                    sub_bits++;
                    room <<= 1;
                }
                if (next_free + (1u << sub_bits) > cap) return -1;
                sub_start = next_free;
                next_free += 1u << sub_bits;
                sub_prefix = prefix;
                t[prefix] = ENTRY(K_SUB, sub_bits, sub_start) | root;
            }
            for (unsigned j = rev >> root; j < (1u << sub_bits); j += 1u << (len - root)) t[sub_start + j] = e;
        }
        remaining[len]--;
        /* The next canonical code, bit-reversed: add one at the top bit of this length, carrying downwards (a
         * longer next code only appends zeros, which leaves the reversed value as it is). */
        unsigned inc = 1u << (len - 1);
        while (rev & inc) inc >>= 1;
        rev = inc ? (rev & (inc - 1)) + inc : 0;
    }
    return 0;
}

/* A code's decoding tables. Most literals of a code often have one length (8 bits for literals 0-143 of the fixed
 * code; a learnt code gives its common literals one length on purpose, deflate.c): lit_run maps the next run_bits
 * bits to such a literal (or 0xffff), and since the lookups of consecutive literals of one length do not depend on
 * each other, a run of them decodes four at a time. */
struct deflate_tables {
    uint32_t litlen[LITLEN_TABLE], dist[DIST_TABLE];
    uint16_t lit_run[256];
    unsigned run_bits;      /* 5-8, or 0 when too few literals share a length */
};

/* Find the literal length most literals of the code in t->litlen have, and fill lit_run for it. */
static void set_literal_runs(deflate_tables *t) {
    unsigned best = 0, best_n = 0;
    for (unsigned l = 5; l <= 8; l++) {
        unsigned n = 0; /* each literal of length l has exactly one entry below 1 << l */
        for (unsigned w = 0; w < (1u << l); w++)
            n += E_KIND(t->litlen[w]) == K_LIT && E_LEN(t->litlen[w]) == l;
        if (n > best_n) {
            best = l;
            best_n = n;
        }
    }
    t->run_bits = best_n >= 16 ? best : 0;
    for (unsigned w = 0; w < 256; w++) {
        uint32_t e = t->litlen[w & ((1u << (t->run_bits ? t->run_bits : 8)) - 1)];
        t->lit_run[w] = t->run_bits && E_KIND(e) == K_LIT && E_LEN(e) == t->run_bits ? (uint16_t)E_VALUE(e) : 0xffff;
    }
}

static deflate_tables fixed_tables; /* the fixed code of block type 1, built once */
static pthread_once_t fixed_once = PTHREAD_ONCE_INIT;
static int fixed_ok;

static void build_fixed(void) {
    uint8_t lens[LITLEN_SYMS];
    unsigned s = 0;
    for (; s < 144; s++) lens[s] = 8;
    for (; s < 256; s++) lens[s] = 9;
    for (; s < 280; s++) lens[s] = 7;
    for (; s < 288; s++) lens[s] = 8;
    uint8_t dl[DIST_SYMS];
    memset(dl, 5, sizeof dl);
    fixed_ok = build_table(fixed_tables.litlen, LITLEN_TABLE, LITLEN_BITS, lens, LITLEN_SYMS, T_LITLEN) == 0 &&
               build_table(fixed_tables.dist, DIST_TABLE, DIST_BITS, dl, DIST_SYMS, T_DIST) == 0;
    if (fixed_ok) set_literal_runs(&fixed_tables); /* literals 0-143: 8 bits */
}

/* ---- the bit reader ------------------------------------------------------------------------------------------ */

typedef struct bits {
    const uint8_t *p, *end;
    uint64_t buf;   /* the next bits of the stream, least significant first; bits past `left` may hold the next
                     * bytes' bits already (the 8-byte refill), which a later refill ORs in again unchanged */
    unsigned left;  /* valid bits in buf */
    size_t over;    /* zero bytes fed past the end of the input */
} bits;

static inline uint64_t load64_le(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Make at least 56 bits valid. Returns false when the stream has run more than 8 bytes past its end. */
static inline bool refill(bits *b) {
    if (b->end - b->p >= 8) {
        b->buf |= load64_le(b->p) << b->left;
        b->p += (63 - b->left) >> 3;
        b->left |= 56;
        return true;
    }
    while (b->left <= 56) {
        if (b->p < b->end)
            b->buf |= (uint64_t)*b->p++ << b->left;
        else
            b->over++;
        b->left += 8;
    }
    return b->over <= 8;
}

static inline unsigned take(bits *b, unsigned n) { /* n <= 32, with n bits valid */
    unsigned v = (unsigned)(b->buf & ((1ull << n) - 1));
    b->buf >>= n;
    b->left -= n;
    return v;
}

/* ---- blocks -------------------------------------------------------------------------------------------------- */

static int read_dynamic_tables(bits *b, deflate_tables *t) {
    if (!refill(b)) return -1;
    unsigned nlit = take(b, 5) + 257, ndist = take(b, 5) + 1, nclen = take(b, 4) + 4;
    if (nlit > 286 || ndist > 30) return -1;
    uint8_t clens[PRECODE_SYMS] = {0};
    for (unsigned i = 0; i < nclen; i++) {
        if (b->left < 3 && !refill(b)) return -1;
        clens[deflate_precode_order[i]] = (uint8_t)take(b, 3);
    }
    uint32_t pt[PRECODE_TABLE];
    if (build_table(pt, PRECODE_TABLE, PRECODE_BITS, clens, PRECODE_SYMS, T_PRECODE)) return -1;
    uint8_t lens[286 + 30];
    unsigned n = 0, total = nlit + ndist;
    while (n < total) {
        if (b->left < 7 + 7 && !refill(b)) return -1;
        uint32_t e = pt[b->buf & (PRECODE_TABLE - 1)];
        take(b, E_LEN(e));
        unsigned sym = E_VALUE(e), rep;
        uint8_t v = 0;
        if (sym < 16) {
            lens[n++] = (uint8_t)sym;
            continue;
        }
        if (sym == 16) {
            if (n == 0) return -1; /* nothing to repeat */
            v = lens[n - 1];
            rep = 3 + take(b, 2);
        } else if (sym == 17) {
            rep = 3 + take(b, 3);
        } else {
            rep = 11 + take(b, 7);
        }
        if (rep > total - n) return -1;
        memset(lens + n, v, rep);
        n += rep;
    }
    if (lens[256] == 0) return -1; /* no end-of-block code */
    if (build_table(t->litlen, LITLEN_TABLE, LITLEN_BITS, lens, nlit, T_LITLEN) ||
        build_table(t->dist, DIST_TABLE, DIST_BITS, lens + nlit, ndist, T_DIST))
        return -1;
    set_literal_runs(t);
    return 0;
}

/* A stored block: byte-align, then LEN, ~LEN and LEN raw bytes. */
static int copy_stored(bits *b, uint8_t **op, uint8_t *oend) {
    take(b, b->left & 7);
    /* Give back the whole bytes still in the bit buffer (the zero bytes fed past the end were never input). */
    size_t held = b->left / 8;
    if (b->over > held) return -1;
    b->p -= held - b->over;
    b->over = 0;
    b->buf = 0;
    b->left = 0;
    if (b->end - b->p < 4) return -1;
    unsigned len = (unsigned)b->p[0] | (unsigned)b->p[1] << 8, nlen = (unsigned)b->p[2] | (unsigned)b->p[3] << 8;
    b->p += 4;
    if ((len ^ 0xffffu) != nlen) return -1;
    if ((size_t)(b->end - b->p) < len || (size_t)(oend - *op) < len) return -1;
    memcpy(*op, b->p, len);
    *op += len;
    b->p += len;
    return 0;
}

/* Copy a match of len bytes from dist back; the caller checked both against the output. */
static inline uint8_t *copy_match(uint8_t *o, uint8_t *oend, unsigned len, unsigned dist) {
    const uint8_t *src = o - dist;
    uint8_t *stop = o + len;
    if (dist >= 8 && (size_t)(oend - o) >= (size_t)len + 8) {
        do {
            memcpy(o, src, 8);
            o += 8;
            src += 8;
        } while (o < stop);
        return stop;
    }
    if (dist == 1) {
        memset(o, *src, len);
        return stop;
    }
    while (o < stop) *o++ = *src++;
    return stop;
}

/* Decode symbols of one Huffman-coded block. Whole (span false): until its end-of-block code. A span (span true):
 * from where b stands until the stream position reaches stop_bit exactly (a symbol straddling it, or an end of block
 * before it, is an error) or at least `want` bytes are out; `out` is the span's first byte, so no match reaches
 * before it. The bit reader lives in locals here: the output is written through a byte pointer, which the compiler
 * must assume may alias the reader's fields. Always inlined, so each mode gets its own loop. */
static inline __attribute__((always_inline)) int decode_symbols(bits *b, const uint8_t *in, const deflate_tables *t,
                                                                uint8_t *out, uint8_t **op, uint8_t *oend, bool span,
                                                                uint64_t stop_bit, size_t want) {
    const uint32_t *lt = t->litlen, *dt = t->dist;
    const unsigned rb = t->run_bits, rmask = (1u << rb) - 1;
    const uint8_t *p = b->p, *const end = b->end;
    uint64_t buf = b->buf;
    unsigned left = b->left;
    size_t over = b->over;
    uint8_t *o = *op;
    int rc = -1;
    /* Bits consumed so far, kept up to date by TAKE (a whole block never reads it, so the compiler drops it). */
    uint64_t at = span ? ((uint64_t)(p - in) + over) * 8 - left : 0;
#define TAKE(n) (buf >>= (n), left -= (n), at += (n))
#define PEEK(n) ((unsigned)(buf & ((1ull << (n)) - 1)))
    for (;;) {
        bool room = true; /* the next 48 bits are the span's: several literals may be taken in one step */
        if (span) {
            if (at >= stop_bit) {
                if (at == stop_bit) rc = 0;
                break;
            }
            if ((size_t)(o - out) >= want) {
                rc = 0;
                break;
            }
            room = stop_bit - at >= 48;
        }
        if (end - p >= 8) {
            buf |= load64_le(p) << left;
            p += (63 - left) >> 3;
            left |= 56;
        } else {
            while (left <= 56) {
                if (p < end) buf |= (uint64_t)*p++ << left;
                else over++;
                left += 8;
            }
            if (over > 8) break;
        }
        if (rb && room && oend - o >= 4) {
            /* Up to four literals of run_bits bits at once (at most 32 bits; the refill left at least 56). */
            unsigned l0 = t->lit_run[buf & rmask];
            if (l0 < 256) {
                unsigned l1 = t->lit_run[(buf >> rb) & rmask], l2 = t->lit_run[(buf >> 2 * rb) & rmask],
                         l3 = t->lit_run[(buf >> 3 * rb) & rmask];
                o[0] = (uint8_t)l0;
                o[1] = (uint8_t)l1;
                o[2] = (uint8_t)l2;
                o[3] = (uint8_t)l3;
                unsigned k = l1 >= 256 ? 1 : l2 >= 256 ? 2 : l3 >= 256 ? 3 : 4;
                TAKE(rb * k);
                o += k;
                continue;
            }
        }
        uint32_t e = lt[PEEK(LITLEN_BITS)];
        if (E_KIND(e) == K_SUB) e = lt[E_VALUE(e) + ((unsigned)(buf >> LITLEN_BITS) & ((1u << E_EXTRA(e)) - 1))];
        unsigned kind = E_KIND(e);
        if (kind == K_LIT) {
            if (o == oend) break;
            TAKE(E_LEN(e));
            *o++ = (uint8_t)E_VALUE(e);
            if (!room) continue;
            /* Literals come in runs: after one, the 56 refilled bits hold at least two more codes of 15 bits. */
            e = lt[PEEK(LITLEN_BITS)];
            if (E_KIND(e) != K_LIT || o == oend) continue;
            TAKE(E_LEN(e));
            *o++ = (uint8_t)E_VALUE(e);
            e = lt[PEEK(LITLEN_BITS)];
            if (E_KIND(e) != K_LIT || o == oend) continue;
            TAKE(E_LEN(e));
            *o++ = (uint8_t)E_VALUE(e);
            continue;
        }
        if (kind == K_EOB) {
            if (span) break; /* a span ends before the end-of-block code */
            TAKE(E_LEN(e));
            rc = 0;
            break;
        }
        if (kind != K_LEN) break;
        /* The code and its extra bits in one step: the extra bits follow the code. */
        unsigned cl = E_LEN(e), all = cl + E_EXTRA(e);
        unsigned len = E_VALUE(e) + (PEEK(all) >> cl);
        TAKE(all);
        e = dt[PEEK(DIST_BITS)];
        if (E_KIND(e) == K_SUB) e = dt[E_VALUE(e) + ((unsigned)(buf >> DIST_BITS) & ((1u << E_EXTRA(e)) - 1))];
        if (E_KIND(e) != K_LEN) break;
        cl = E_LEN(e);
        all = cl + E_EXTRA(e);
        unsigned dist = E_VALUE(e) + (PEEK(all) >> cl);
        TAKE(all);
        if (dist > (size_t)(o - out) || len > (size_t)(oend - o)) break;
        o = copy_match(o, oend, len, dist);
    }
#undef TAKE
#undef PEEK
    b->p = p;
    b->buf = buf;
    b->left = left;
    b->over = over;
    *op = o;
    return rc;
}

static int decode_block(bits *b, const deflate_tables *t, uint8_t *out, uint8_t **op, uint8_t *oend) {
    return decode_symbols(b, NULL, t, out, op, oend, false, 0, 0);
}

int deflate_decompress(const uint8_t *in, size_t n, uint8_t *out, size_t outlen) {
    pthread_once(&fixed_once, build_fixed);
    if (!fixed_ok) return -1;
    bits b = {in, in + n, 0, 0, 0};
    uint8_t *o = out, *oend = out + outlen;
    deflate_tables dyn;
    unsigned final;
    do {
        if (!refill(&b)) return -1;
        final = take(&b, 1);
        unsigned type = take(&b, 2);
        int rc;
        if (type == 0) {
            rc = copy_stored(&b, &o, oend);
        } else if (type == 1) {
            rc = decode_block(&b, &fixed_tables, out, &o, oend);
        } else if (type == 2) {
            rc = read_dynamic_tables(&b, &dyn);
            if (!rc) rc = decode_block(&b, &dyn, out, &o, oend);
        } else {
            rc = -1;
        }
        if (rc) return -1;
    } while (!final);
    if (o != oend) return -1;
    /* Every input byte used: what is left unread, less the zero bytes fed past the end, is under a byte. */
    size_t unread_bits = (size_t)(b.end - b.p) * 8 + b.left;
    if (b.over * 8 > b.left || unread_bits - b.over * 8 >= 8) return -1;
    return 0;
}

deflate_tables *deflate_tables_new(const uint8_t *in, size_t n, uint64_t *first_bit) {
    *first_bit = 0;
    pthread_once(&fixed_once, build_fixed);
    deflate_tables *t = malloc(sizeof *t);
    if (!t) return NULL;
    bits b = {in, in + n, 0, 0, 0};
    if (refill(&b)) {
        take(&b, 1); /* the final-block bit: a span's block may be either */
        if (take(&b, 2) == 2 && read_dynamic_tables(&b, t) == 0) {
            uint64_t at = ((uint64_t)(b.p - in) + b.over) * 8 - b.left;
            if (b.over * 8 <= b.left && at <= (uint64_t)n * 8) {
                *first_bit = at;
                return t;
            }
        }
    }
    free(t);
    return NULL;
}

void deflate_tables_free(deflate_tables *t) { free(t); }

void deflate_span_begin(deflate_span *sp, const uint8_t *in, size_t n, uint64_t from_bit, uint64_t to_bit,
                        const deflate_tables *tables, uint8_t *out, size_t outcap) {
    pthread_once(&fixed_once, build_fixed);
    *sp = (deflate_span){.in = in, .p = in + n, .end = in + n, .stop_bit = to_bit, .tables = tables, .out = out,
                         .o = out, .oend = out + outcap, .state = -1};
    if (!fixed_ok || from_bit > to_bit || to_bit > (uint64_t)n * 8) return;
    bits b = {in + from_bit / 8, in + n, 0, 0, 0};
    if (from_bit % 8) {
        if (!refill(&b)) return;
        b.buf >>= from_bit % 8;
        b.left -= (unsigned)(from_bit % 8);
    }
    sp->p = b.p;
    sp->buf = b.buf;
    sp->left = b.left;
    sp->over = b.over;
    sp->state = from_bit == to_bit ? 1 : 0;
}

int deflate_span_more(deflate_span *sp, size_t want) {
    if (sp->state != 0) return sp->state;
    bits b = {sp->p, sp->end, sp->buf, sp->left, sp->over};
    int rc = decode_symbols(&b, sp->in, sp->tables ? sp->tables : &fixed_tables, sp->out, &sp->o, sp->oend, true,
                            sp->stop_bit, want);
    sp->p = b.p;
    sp->buf = b.buf;
    sp->left = b.left;
    sp->over = b.over;
    uint64_t at = ((uint64_t)(b.p - sp->in) + b.over) * 8 - b.left;
    sp->state = rc ? -1 : at == sp->stop_bit ? 1 : 0;
    return sp->state;
}

int deflate_decode_span(const uint8_t *in, size_t n, uint64_t from_bit, uint64_t to_bit, const deflate_tables *tables,
                        uint8_t *out, size_t outcap, size_t want, size_t *produced) {
    deflate_span sp;
    deflate_span_begin(&sp, in, n, from_bit, to_bit, tables, out, outcap);
    int st = deflate_span_more(&sp, want);
    *produced = (size_t)(sp.o - sp.out);
    return st < 0 ? -1 : 0;
}

int deflate_check_end(const uint8_t *in, size_t n, uint64_t bit, const deflate_tables *tables) {
    pthread_once(&fixed_once, build_fixed);
    if (!fixed_ok || bit >= (uint64_t)n * 8) return -1;
    bits b = {in + bit / 8, in + n, 0, 0, 0};
    if (!refill(&b)) return -1;
    take(&b, (unsigned)(bit % 8));
    const uint32_t *lt = tables ? tables->litlen : fixed_tables.litlen;
    uint32_t e = lt[b.buf & ((1u << LITLEN_BITS) - 1)];
    if (E_KIND(e) == K_SUB) e = lt[E_VALUE(e) + ((unsigned)(b.buf >> LITLEN_BITS) & ((1u << E_EXTRA(e)) - 1))];
    if (E_KIND(e) != K_EOB) return -1;
    uint64_t end = bit + E_LEN(e);
    return end <= (uint64_t)n * 8 && (uint64_t)n * 8 - end < 8 ? 0 : -1;
}
