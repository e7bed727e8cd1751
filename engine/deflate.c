/*
 * deflate.c — compressing a buffer into one raw deflate stream (RFC 1951), for table data blocks (see deflate.h).
 *
 * How: a greedy LZ77 pass finds matches of 4 to 258 bytes up to 32 KiB back through a hash table of 4-byte
 * sequences (one candidate per hash, verified byte for byte, so a stale or colliding entry only costs a miss), and
 * records literals and matches while counting their symbols. Then Huffman code lengths are built from the counts,
 * limited to 15 bits (7 for the code-length code), and the stream is written as one block, dynamic or fixed,
 * whichever is shorter. The exact length is known before a bit is written, so a stream that would not fit is
 * abandoned before any work is spent writing it.
 *
 * Invariants
 *  - Every code written is complete (Kraft sum exactly 1), as zlib's inflate requires, and each of the two main codes
 *    has at least two symbols (a lone symbol gets a partner of zero count), so no decoder meets an edge case.
 *  - The hash table holds positions offset by a per-call base, so entries from earlier inputs are told apart without
 *    clearing the table: output depends only on the input.
 *  - Nothing is written past cap: the size is computed first and the bit writer checks its bound anyway.
 */
#include "deflate.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define HASH_BITS 13
#define MIN_MATCH 4            /* deflate allows 3; 4-byte hashing finds what matters faster */
#define MAX_MATCH 258
#define WINDOW 32768
#define LITLEN_SYMS 286
#define DIST_SYMS 30
#define PRECODE_SYMS 19
#define MAX_BITS 15
#define MAX_PRECODE_BITS 7
#define SHORT_MATCH_INSERT 8   /* positions inside matches up to this long are hashed too */

struct deflate_encoder {
    uint32_t head[1u << HASH_BITS]; /* base + position of the last sequence with this hash */
    uint32_t base;                  /* this call's offset; entries below it are from earlier calls */
    uint32_t *syms;                 /* literal: byte value; match: MATCH_FLAG | (len - 3) << 16 | (dist - 1) */
    size_t cap;
    struct learned *code;           /* the code deflate_compress_spans uses, or NULL for the fixed one */
};
#define MATCH_FLAG 0x80000000u

static unsigned length_code(unsigned len) { /* 3..258 -> 0..28 */
    unsigned c = 0;
    while (c < 28 && deflate_length_base[c + 1] <= len) c++;
    return c;
}

static unsigned dist_code(unsigned dist) { /* 1..32768 -> 0..29 */
    unsigned lo = 0, hi = 29;
    while (lo < hi) {
        unsigned mid = (lo + hi + 1) / 2;
        if (deflate_dist_base[mid] <= dist) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Length and distance symbols, looked up instead of searched: len_sym by len - 3, dist_sym by (dist - 1) for
 * distances up to 256 and by 256 + ((dist - 1) >> 7) above (every code above 256 spans a multiple of 128). */
static uint8_t len_sym[256], dist_sym[512], byte_rev[256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static inline unsigned dist_symbol(unsigned dist) {
    unsigned d = dist - 1;
    return d < 256 ? dist_sym[d] : dist_sym[256 + (d >> 7)];
}

/* ---- Huffman code lengths ------------------------------------------------------------------------------------ */

/* Sort keys (count << 16 | symbol, made in ascending symbol order) by count, stably: a byte-wise radix sort over
 * as many bytes as the largest count has. */
static void sort_keys(uint64_t *k, unsigned n) {
    uint64_t tmp[LITLEN_SYMS], *src = k, *dst = tmp;
    uint64_t maxc = 0;
    for (unsigned i = 0; i < n; i++)
        if ((k[i] >> 16) > maxc) maxc = k[i] >> 16;
    for (unsigned shift = 16; shift < 64 && (maxc >> (shift - 16)) != 0; shift += 8) {
        unsigned count[257] = {0};
        for (unsigned i = 0; i < n; i++) count[((src[i] >> shift) & 0xff) + 1]++;
        for (unsigned b = 1; b < 257; b++) count[b] += count[b - 1];
        for (unsigned i = 0; i < n; i++) dst[count[(src[i] >> shift) & 0xff]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != k) memcpy(k, src, n * sizeof *k);
}

/* Code lengths for n symbols with counts freq, none longer than limit, forming a complete code. Symbols with a zero
 * count get length 0; at least two symbols must have a count (the caller sees to it). */
static void build_lengths(const uint32_t *freq, unsigned n, unsigned limit, uint8_t *lens) {
    uint64_t leaves[LITLEN_SYMS]; /* count << 16 | symbol: sorted by count, then symbol */
    unsigned m = 0;
    memset(lens, 0, n);
    for (unsigned s = 0; s < n; s++)
        if (freq[s]) leaves[m++] = (uint64_t)freq[s] << 16 | s;
    sort_keys(leaves, m);
    /* Huffman's construction with two queues: the leaves in ascending count, and the internal nodes, which are made
     * in ascending weight. Node i < m is leaf i; node m + k is the k-th internal node. */
    if (m < 2) { /* not reached: the callers give every code two symbols */
        if (m == 1) lens[leaves[0] & 0xffff] = 1;
        return;
    }
    uint64_t weight[2 * LITLEN_SYMS];
    uint16_t parent[2 * LITLEN_SYMS];
    uint8_t depth[2 * LITLEN_SYMS];
    for (unsigned i = 0; i < m; i++) weight[i] = leaves[i] >> 16;
    unsigned next_leaf = 0, next_node = m, made = m;
    for (unsigned k = 0; k + 1 < m; k++) {
        unsigned pick[2];
        for (int j = 0; j < 2; j++) {
            if (next_leaf < m && (next_node >= made || weight[next_leaf] <= weight[next_node]))
                pick[j] = next_leaf++;
            else
                pick[j] = next_node++;
        }
        weight[made] = weight[pick[0]] + weight[pick[1]];
        parent[pick[0]] = parent[pick[1]] = (uint16_t)made;
        made++;
    }
    depth[made - 1] = 0;
    for (unsigned i = made - 1; i-- > 0;) depth[i] = (uint8_t)(depth[parent[i]] + 1 > 255 ? 255 : depth[parent[i]] + 1);
    /* Limit the lengths: clamp, then lengthen the longest codes still under the limit until the Kraft sum fits, then
     * shorten codes (most frequent first) while there is room, so that the code is complete. Leaves are in ascending
     * count, so their Huffman depths are in descending order. */
    uint64_t kraft = 0, full = 1ull << limit;
    uint8_t len[LITLEN_SYMS];
    for (unsigned i = 0; i < m; i++) {
        len[i] = depth[i] > limit ? (uint8_t)limit : depth[i];
        kraft += 1ull << (limit - len[i]);
    }
    while (kraft > full) {
        unsigned best = m;
        for (unsigned i = 0; i < m; i++)
            if (len[i] < limit && (best == m || len[i] > len[best])) best = i;
        kraft -= 1ull << (limit - len[best] - 1);
        len[best]++;
    }
    while (kraft < full) {
        unsigned best = m;
        for (unsigned i = m; i-- > 0;)
            if (len[i] > 1 && (1ull << (limit - len[i])) <= full - kraft && (best == m || len[i] > len[best])) best = i;
        kraft += 1ull << (limit - len[best]);
        len[best]--;
    }
    for (unsigned i = 0; i < m; i++) lens[leaves[i] & 0xffff] = len[i];
}

/* Canonical codes for the lengths, bit-reversed (deflate sends codes most significant bit first into an
 * least-significant-first bit stream). */
static void build_codes(const uint8_t *lens, unsigned n, uint16_t *codes) {
    unsigned count[MAX_BITS + 1] = {0}, next[MAX_BITS + 1];
    for (unsigned s = 0; s < n; s++) count[lens[s]]++;
    count[0] = 0;
    unsigned code = 0;
    for (unsigned l = 1; l <= MAX_BITS; l++) {
        code = (code + count[l - 1]) << 1;
        next[l] = code;
    }
    for (unsigned s = 0; s < n; s++) {
        unsigned l = lens[s];
        if (!l) {
            codes[s] = 0;
            continue;
        }
        unsigned c = next[l]++;
        unsigned r = (unsigned)byte_rev[c & 0xff] << 8 | byte_rev[c >> 8]; /* the 16-bit reversal */
        codes[s] = (uint16_t)(r >> (16 - l));
    }
}

/* ---- the bit writer ---------------------------------------------------------------------------------------- */

typedef struct bitw {
    uint8_t *p, *end;
    uint64_t buf;
    unsigned n;     /* bits in buf, < 32 between calls */
    bool full;      /* ran out of room (never, when the size was computed right) */
} bitw;

static inline void put_bits(bitw *w, uint32_t v, unsigned nb) { /* nb <= 32 */
    w->buf |= (uint64_t)v << w->n;
    w->n += nb;
    if (w->n < 32) return;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (w->end - w->p >= 8) {
        memcpy(w->p, &w->buf, 8); /* the low bytes first, as the stream wants them */
        unsigned bytes = w->n >> 3;
        w->p += bytes;
        w->buf >>= bytes * 8;
        w->n &= 7;
        return;
    }
#endif
    while (w->n >= 8) {
        if (w->p == w->end) {
            w->full = true;
            w->n = 0;
            w->buf = 0;
            return;
        }
        *w->p++ = (uint8_t)w->buf;
        w->buf >>= 8;
        w->n -= 8;
    }
}

static void flush_bits(bitw *w) {
    while (w->n > 0) {
        if (w->p == w->end) {
            w->full = true;
            return;
        }
        *w->p++ = (uint8_t)w->buf;
        w->buf >>= 8;
        w->n = w->n > 8 ? w->n - 8 : 0;
    }
}

/* ---- the dynamic block header -------------------------------------------------------------------------------- */

typedef struct header {
    unsigned nlit, ndist, nclen;
    uint8_t runs[LITLEN_SYMS + DIST_SYMS]; /* code-length symbols 0..18 */
    uint8_t run_extra[LITLEN_SYMS + DIST_SYMS];
    unsigned nruns;
    uint8_t clens[PRECODE_SYMS];
    uint16_t ccodes[PRECODE_SYMS];
    uint64_t bits;
} header;

static void build_header(header *h, const uint8_t *llens, const uint8_t *dlens) {
    h->nlit = LITLEN_SYMS;
    while (h->nlit > 257 && llens[h->nlit - 1] == 0) h->nlit--;
    h->ndist = DIST_SYMS;
    while (h->ndist > 1 && dlens[h->ndist - 1] == 0) h->ndist--;
    uint8_t all[LITLEN_SYMS + DIST_SYMS];
    memcpy(all, llens, h->nlit);
    memcpy(all + h->nlit, dlens, h->ndist);
    unsigned total = h->nlit + h->ndist;
    uint32_t cfreq[PRECODE_SYMS] = {0};
    h->nruns = 0;
#define RUN(sym, extra) (cfreq[sym]++, h->runs[h->nruns] = (uint8_t)(sym), h->run_extra[h->nruns++] = (uint8_t)(extra))
    for (unsigned i = 0; i < total;) {
        uint8_t v = all[i];
        unsigned run = 1;
        while (i + run < total && all[i + run] == v) run++;
        if (v == 0 && run >= 11) {          /* 18: 11-138 zeros */
            run = run > 138 ? 138 : run;
            RUN(18, run - 11);
        } else if (v == 0 && run >= 3) {    /* 17: 3-10 zeros */
            RUN(17, run - 3);
        } else if (v != 0 && run >= 4) {    /* the length once, then 16: 3-6 more of it */
            run = run > 7 ? 7 : run;
            RUN(v, 0);
            RUN(16, run - 1 - 3);
        } else {
            run = 1;
            RUN(v, 0);
        }
        i += run;
    }
#undef RUN
    /* The code-length code needs two symbols too. */
    unsigned present = 0;
    for (unsigned s = 0; s < PRECODE_SYMS; s++) present += cfreq[s] != 0;
    for (unsigned s = 0; present < 2; s++)
        if (!cfreq[s]) {
            cfreq[s] = 1;
            present++;
        }
    build_lengths(cfreq, PRECODE_SYMS, MAX_PRECODE_BITS, h->clens);
    build_codes(h->clens, PRECODE_SYMS, h->ccodes);
    h->nclen = PRECODE_SYMS;
    while (h->nclen > 4 && h->clens[deflate_precode_order[h->nclen - 1]] == 0) h->nclen--;
    static const uint8_t rep_extra[3] = {2, 3, 7};
    uint64_t bits = 5 + 5 + 4 + 3 * (uint64_t)h->nclen;
    for (unsigned r = 0; r < h->nruns; r++) {
        unsigned s = h->runs[r];
        bits += h->clens[s] + (s >= 16 ? rep_extra[s - 16] : 0);
    }
    h->bits = bits;
}

static void write_header(bitw *w, const header *h) {
    static const uint8_t rep_extra[3] = {2, 3, 7};
    put_bits(w, h->nlit - 257, 5);
    put_bits(w, h->ndist - 1, 5);
    put_bits(w, h->nclen - 4, 4);
    for (unsigned i = 0; i < h->nclen; i++) put_bits(w, h->clens[deflate_precode_order[i]], 3);
    for (unsigned r = 0; r < h->nruns; r++) {
        unsigned s = h->runs[r];
        put_bits(w, h->ccodes[s], h->clens[s]);
        if (s >= 16) put_bits(w, h->run_extra[r], rep_extra[s - 16]);
    }
}

/* ---- LZ77 -------------------------------------------------------------------------------------------------- */

static inline uint32_t load32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint32_t hash4(uint32_t v) { return (v * 2654435761u) >> (32 - HASH_BITS); }

/* Bytes of a and b that match, up to max. */
static inline unsigned match_len(const uint8_t *a, const uint8_t *b, unsigned max) {
    unsigned n = 0;
    while (n + 8 <= max) {
        uint64_t x, y;
        memcpy(&x, a + n, 8);
        memcpy(&y, b + n, 8);
        if (x != y) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return n + (unsigned)(__builtin_ctzll(x ^ y) >> 3);
#else
            break;
#endif
        }
        n += 8;
    }
    while (n < max && a[n] == b[n]) n++;
    return n;
}

/* Find the matches of in[from..to) into e->syms from index ns on, counting symbols; no match reaches before from or
 * past to (so a range decodes alone). Returns the new number of symbols. */
static size_t find_matches(deflate_encoder *e, const uint8_t *in, size_t from, size_t to, size_t ns, uint32_t *lfreq,
                           uint32_t *dfreq) {
    uint32_t *syms = e->syms;
    size_t i = from;
    const uint32_t base = e->base;
    if (to - from >= MIN_MATCH) {
        size_t last = to - MIN_MATCH; /* the last position a 4-byte sequence starts at */
        while (i <= last) {
            uint32_t v = load32(in + i), h = hash4(v);
            uint32_t cand = e->head[h];
            e->head[h] = base + (uint32_t)i;
            size_t c = (size_t)(cand - base);
            if (cand >= base && c >= from && c < i && i - c <= WINDOW && load32(in + c) == v) {
                size_t room = to - i < MAX_MATCH ? to - i : MAX_MATCH;
                unsigned len =
                    MIN_MATCH + match_len(in + c + MIN_MATCH, in + i + MIN_MATCH, (unsigned)room - MIN_MATCH);
                unsigned dist = (unsigned)(i - c);
                syms[ns++] = MATCH_FLAG | (uint32_t)(len - 3) << 16 | (dist - 1);
                lfreq[257 + len_sym[len - 3]]++;
                dfreq[dist_symbol(dist)]++;
                /* Hash the positions inside a short match (cheap, and they find the next repeats); of a long one
                 * only its last. */
                size_t stop = i + len;
                size_t first = len <= SHORT_MATCH_INSERT ? i + 1 : stop - 1;
                for (size_t k = first; k < stop && k <= last; k++)
                    e->head[hash4(load32(in + k))] = base + (uint32_t)k;
                i = stop;
            } else {
                syms[ns++] = in[i];
                lfreq[in[i]]++;
                i++;
            }
        }
    }
    for (; i < to; i++) {
        syms[ns++] = in[i];
        lfreq[in[i]]++;
    }
    return ns;
}

/* Make room for n symbols and a fresh hash base for an input of n bytes. false: out of memory. */
static bool begin_input(deflate_encoder *e, size_t n) {
    if (n > UINT32_MAX / 2) return false;
    if (n > e->cap) {
        uint32_t *s = realloc(e->syms, (n ? n : 1) * sizeof *s);
        if (!s) return false;
        e->syms = s;
        e->cap = n;
    }
    /* Positions of this call are base + i; when the next base could wrap, forget every entry. */
    if ((uint64_t)e->base + 2 * (uint64_t)n + WINDOW + 1 > UINT32_MAX) {
        memset(e->head, 0, sizeof e->head);
        e->base = 0;
    }
    if (e->base == 0) e->base = 1; /* 0 marks an empty slot */
    return true;
}

static void end_input(deflate_encoder *e, size_t n) { e->base += (uint32_t)n + WINDOW + 1; }

/* ---- the block --------------------------------------------------------------------------------------------- */

static uint8_t fixed_len(unsigned sym) { return sym < 144 ? 8 : sym < 256 ? 9 : sym < 280 ? 7 : 8; }

/* A match's bits: the length code with its extra bits (at most 15 + 5 bits) and the distance code with its extra
 * bits (at most 15 + 13), each as one value to put. */
static inline void match_bits(uint32_t s, const uint16_t *lcodes, const uint8_t *llens, const uint16_t *dcodes,
                              const uint8_t *dlens, uint32_t *lv, unsigned *ln, uint32_t *dv, unsigned *dn) {
    unsigned len = ((s >> 16) & 0xff) + 3, dist = (s & 0xffff) + 1;
    unsigned lc = len_sym[len - 3], dc = dist_symbol(dist), lsym = 257 + lc;
    *lv = lcodes[lsym] | (uint32_t)(len - deflate_length_base[lc]) << llens[lsym];
    *ln = llens[lsym] + deflate_length_extra[lc];
    *dv = dcodes[dc] | (uint32_t)(dist - deflate_dist_base[dc]) << dlens[dc];
    *dn = dlens[dc] + deflate_dist_extra[dc];
}

/* The symbols (not the end-of-block code). While there is room the bit buffer lives in locals (the output is written
 * through a byte pointer, which the compiler must assume may alias the writer's fields) and 8 bytes are stored after
 * each symbol, of which the whole ones count; near the end put_bits takes over, which checks every byte. */
static void write_symbols(bitw *w, const uint32_t *syms, size_t ns, const uint16_t *lcodes, const uint8_t *llens,
                          const uint16_t *dcodes, const uint8_t *dlens) {
    size_t k = 0;
    uint32_t lv, dv;
    unsigned ln, dn;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t buf = w->buf;
    unsigned n = w->n; /* < 8 at the top of each step, so a symbol's 48 bits at most always fit */
    uint8_t *p = w->p;
    for (; k < ns && w->end - p >= 16; k++) {
        uint32_t s = syms[k];
        if (!(s & MATCH_FLAG)) {
            buf |= (uint64_t)lcodes[s] << n;
            n += llens[s];
        } else {
            match_bits(s, lcodes, llens, dcodes, dlens, &lv, &ln, &dv, &dn);
            buf |= ((uint64_t)lv | (uint64_t)dv << ln) << n;
            n += ln + dn;
        }
        memcpy(p, &buf, 8);
        p += n >> 3;
        buf >>= n & ~7u;
        n &= 7;
    }
    w->buf = buf;
    w->n = n;
    w->p = p;
#endif
    for (; k < ns; k++) {
        uint32_t s = syms[k];
        if (!(s & MATCH_FLAG)) {
            put_bits(w, lcodes[s], llens[s]);
            continue;
        }
        match_bits(s, lcodes, llens, dcodes, dlens, &lv, &ln, &dv, &dn);
        put_bits(w, lv, ln);
        put_bits(w, dv, dn);
    }
}

/* The fixed code, built once with the other tables: over all 288 literal/length and 32 distance symbols (the last
 * two of each are unused but take part in the canonical numbering). */
static uint8_t fixed_llens[288], fixed_dlens[32];
static uint16_t fixed_lcodes[288], fixed_dcodes[32];

/* Bits the symbols counted in lfreq and dfreq take with the given code lengths, extra bits included. */
static uint64_t symbol_bits(const uint32_t *lfreq, const uint32_t *dfreq, const uint8_t *llens, const uint8_t *dlens) {
    uint64_t bits = 0;
    for (unsigned s = 0; s < LITLEN_SYMS; s++) {
        bits += (uint64_t)lfreq[s] * llens[s];
        if (s >= 257) bits += (uint64_t)lfreq[s] * deflate_length_extra[s - 257];
    }
    for (unsigned s = 0; s < DIST_SYMS; s++) bits += (uint64_t)dfreq[s] * (dlens[s] + deflate_dist_extra[s]);
    return bits;
}

static inline uint64_t bit_pos(const bitw *w, const uint8_t *out) { return (uint64_t)(w->p - out) * 8 + w->n; }

static void init_tables(void) {
    for (unsigned b = 0; b < 256; b++) {
        unsigned r = 0;
        for (unsigned i = 0; i < 8; i++) r |= ((b >> i) & 1u) << (7 - i);
        byte_rev[b] = (uint8_t)r;
    }
    for (unsigned l = 3; l <= MAX_MATCH; l++) len_sym[l - 3] = (uint8_t)length_code(l);
    for (unsigned d = 1; d <= 256; d++) dist_sym[d - 1] = (uint8_t)dist_code(d);
    for (unsigned i = 2; i < 256; i++) dist_sym[256 + i] = (uint8_t)dist_code((i << 7) + 1);
    for (unsigned s = 0; s < 288; s++) fixed_llens[s] = fixed_len(s);
    memset(fixed_dlens, 5, sizeof fixed_dlens);
    build_codes(fixed_llens, 288, fixed_lcodes);
    build_codes(fixed_dlens, 32, fixed_dcodes);
}


deflate_encoder *deflate_encoder_new(void) {
    pthread_once(&tables_once, init_tables);
    return calloc(1, sizeof(deflate_encoder));
}

void deflate_encoder_free(deflate_encoder *e) {
    if (!e) return;
    free(e->syms);
    free(e->code);
    free(e);
}

size_t deflate_compress(deflate_encoder *e, const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
    if (cap == 0 || !begin_input(e, n)) return 0;
    uint32_t lfreq[LITLEN_SYMS] = {0}, dfreq[DIST_SYMS] = {0};
    size_t ns = find_matches(e, in, 0, n, 0, lfreq, dfreq);
    end_input(e, n);
    lfreq[256] = 1;

    /* Sizes of the two block types, in bits, before writing either. Each dynamic code needs two symbols with
     * counts; a partner of count 0 costs nothing in the data. */
    uint64_t fixed_bits = 3 + symbol_bits(lfreq, dfreq, fixed_llens, fixed_dlens);
    uint32_t lf[LITLEN_SYMS], df[DIST_SYMS];
    memcpy(lf, lfreq, sizeof lf);
    memcpy(df, dfreq, sizeof df);
    unsigned lpresent = 0, dpresent = 0;
    for (unsigned s = 0; s < LITLEN_SYMS; s++) lpresent += lf[s] != 0;
    for (unsigned s = 0; s < DIST_SYMS; s++) dpresent += df[s] != 0;
    for (unsigned s = 0; lpresent < 2; s++)
        if (!lf[s]) lf[s] = 1, lpresent++;
    for (unsigned s = 0; dpresent < 2; s++)
        if (!df[s]) df[s] = 1, dpresent++;
    uint8_t llens[LITLEN_SYMS], dlens[DIST_SYMS];
    build_lengths(lf, LITLEN_SYMS, MAX_BITS, llens);
    build_lengths(df, DIST_SYMS, MAX_BITS, dlens);
    header h;
    build_header(&h, llens, dlens);
    uint64_t dyn_bits = 3 + h.bits + symbol_bits(lfreq, dfreq, llens, dlens);

    bool dynamic = dyn_bits < fixed_bits;
    uint64_t bits = dynamic ? dyn_bits : fixed_bits;
    if ((bits + 7) / 8 > cap) return 0;
    bitw w = {out, out + cap, 0, 0, false};
    if (dynamic) {
        uint16_t lcodes[LITLEN_SYMS], dcodes[DIST_SYMS];
        put_bits(&w, 1 | 2 << 1, 3); /* final block, type 2 */
        write_header(&w, &h);
        build_codes(llens, LITLEN_SYMS, lcodes);
        build_codes(dlens, DIST_SYMS, dcodes);
        write_symbols(&w, e->syms, ns, lcodes, llens, dcodes, dlens);
        put_bits(&w, lcodes[256], llens[256]);
    } else {
        put_bits(&w, 1 | 1 << 1, 3); /* final block, type 1 */
        write_symbols(&w, e->syms, ns, fixed_lcodes, fixed_llens, fixed_dcodes, fixed_dlens);
        put_bits(&w, fixed_lcodes[256], fixed_llens[256]);
    }
    flush_bits(&w);
    if (w.full) return 0;
    return (size_t)(w.p - out);
}

/* A dynamic code learned from a sample (deflate_encoder_learn): every symbol has a length, so it codes any input. */
struct learned {
    uint8_t llens[LITLEN_SYMS], dlens[DIST_SYMS];
    uint16_t lcodes[LITLEN_SYMS], dcodes[DIST_SYMS];
    header h;
};

/* Literal/length lengths that give the `common` most frequent literals exactly `bits` bits (common = 2^bits -
 * 2^(bits - k) for some k, so they fill all but 2^-k of the code space) and the other symbols a Huffman code of their
 * own, k bits longer, in the rest. A decoder then reads runs of common literals several at a time (inflate.c).
 * freq: smoothed counts (all nonzero). Returns the cost in bits of the sample counts raw. */
static uint64_t uniform_lengths(const uint32_t *freq, const uint32_t *raw, unsigned bits, unsigned k, uint8_t *lens) {
    unsigned common = (1u << bits) - (1u << (bits - k));
    uint64_t keys[256];
    for (unsigned s = 0; s < 256; s++) keys[s] = (uint64_t)freq[s] << 16 | s;
    sort_keys(keys, 256); /* ascending: the common ones are the last `common` */
    uint32_t rest[LITLEN_SYMS];
    memcpy(rest, freq, sizeof rest);
    for (unsigned i = 256 - common; i < 256; i++) rest[keys[i] & 0xffff] = 0;
    build_lengths(rest, LITLEN_SYMS, MAX_BITS - k, lens);
    uint64_t cost = 0;
    for (unsigned s = 0; s < LITLEN_SYMS; s++) {
        lens[s] = rest[s] ? (uint8_t)(lens[s] + k) : (uint8_t)bits;
        cost += (uint64_t)raw[s] * lens[s];
    }
    return cost;
}

bool deflate_encoder_learn(deflate_encoder *e, const uint8_t *in, size_t n) {
    if (!begin_input(e, n)) return false;
    struct learned *c = e->code ? e->code : malloc(sizeof *c);
    if (!c) return false;
    uint32_t lfreq[LITLEN_SYMS] = {0}, dfreq[DIST_SYMS] = {0}, lraw[LITLEN_SYMS];
    find_matches(e, in, 0, n, 0, lfreq, dfreq);
    end_input(e, n);
    memcpy(lraw, lfreq, sizeof lraw);
    /* Counts scaled up, plus one for every symbol: what the sample used gets short codes, the rest long ones. */
    for (unsigned s = 0; s < LITLEN_SYMS; s++) lfreq[s] = lfreq[s] * 8 + 1;
    for (unsigned s = 0; s < DIST_SYMS; s++) dfreq[s] = dfreq[s] * 8 + 1;
    build_lengths(lfreq, LITLEN_SYMS, MAX_BITS, c->llens);
    uint64_t best = 0;
    for (unsigned s = 0; s < LITLEN_SYMS; s++) best += (uint64_t)lraw[s] * c->llens[s];
    /* A code whose common literals share one length decodes much faster; take the best such one when it costs at
     * most 3% more than the Huffman code. */
    uint8_t lens[LITLEN_SYMS], pick[LITLEN_SYMS];
    uint64_t pick_cost = UINT64_MAX;
    for (unsigned bits = 6; bits <= 8; bits++)
        for (unsigned k = 1; k <= 4; k++) {
            uint64_t cost = uniform_lengths(lfreq, lraw, bits, k, lens);
            if (cost < pick_cost) {
                pick_cost = cost;
                memcpy(pick, lens, sizeof pick);
            }
        }
    if (pick_cost <= best + best * 3 / 100) memcpy(c->llens, pick, sizeof pick);
    build_lengths(dfreq, DIST_SYMS, MAX_BITS, c->dlens);
    build_codes(c->llens, LITLEN_SYMS, c->lcodes);
    build_codes(c->dlens, DIST_SYMS, c->dcodes);
    build_header(&c->h, c->llens, c->dlens);
    e->code = c;
    return true;
}

size_t deflate_compress_spans(deflate_encoder *e, const uint8_t *in, size_t n, const uint32_t *spans, size_t nspans,
                              uint8_t *out, size_t cap, uint64_t *bits) {
    if (cap == 0 || nspans == 0 || spans[0] != 0 || !begin_input(e, n)) return 0;
    for (size_t i = 1; i < nspans; i++)
        if (spans[i] <= spans[i - 1] || spans[i] >= n) return 0;
    /* Where each span's symbols begin: kept in bits[] until the bit offsets replace them. */
    uint32_t lfreq[LITLEN_SYMS] = {0}, dfreq[DIST_SYMS] = {0};
    size_t ns = 0;
    for (size_t i = 0; i < nspans; i++) {
        bits[i] = ns;
        ns = find_matches(e, in, spans[i], i + 1 < nspans ? spans[i + 1] : n, ns, lfreq, dfreq);
    }
    end_input(e, n);
    lfreq[256] = 1;
    /* The learned code (its header included) or the fixed one, whichever is shorter here. */
    const struct learned *c = e->code;
    uint64_t fixed_bits = 3 + symbol_bits(lfreq, dfreq, fixed_llens, fixed_dlens);
    uint64_t dyn_bits = c ? 3 + c->h.bits + symbol_bits(lfreq, dfreq, c->llens, c->dlens) : UINT64_MAX;
    bool dynamic = dyn_bits < fixed_bits;
    if (((dynamic ? dyn_bits : fixed_bits) + 7) / 8 > cap) return 0;
    const uint16_t *lcodes = dynamic ? c->lcodes : fixed_lcodes, *dcodes = dynamic ? c->dcodes : fixed_dcodes;
    const uint8_t *llens = dynamic ? c->llens : fixed_llens, *dlens = dynamic ? c->dlens : fixed_dlens;
    bitw w = {out, out + cap, 0, 0, false};
    if (dynamic) {
        put_bits(&w, 1 | 2 << 1, 3); /* final block, type 2 */
        write_header(&w, &c->h);
    } else {
        put_bits(&w, 1 | 1 << 1, 3); /* final block, type 1 */
    }
    for (size_t i = 0; i < nspans; i++) {
        size_t first = (size_t)bits[i], stop = i + 1 < nspans ? (size_t)bits[i + 1] : ns;
        bits[i] = bit_pos(&w, out);
        write_symbols(&w, e->syms + first, stop - first, lcodes, llens, dcodes, dlens);
    }
    bits[nspans] = bit_pos(&w, out);
    put_bits(&w, lcodes[256], llens[256]);
    flush_bits(&w);
    if (w.full) return 0;
    return (size_t)(w.p - out);
}
