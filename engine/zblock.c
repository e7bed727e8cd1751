/*
 * zblock.c — seekable compressed data blocks (see zblock.h; byte layout in docs/format.md, "Seekable blocks").
 *
 * Invariants
 *  - Encoding cuts the stream exactly at the raw block's restart offsets and at its restart array, so span i of the
 *    stream inflates alone to restart interval i, whose first entry stores its whole key.
 *  - A lookup never trusts the directory beyond bounds: every span is inflated by deflate_decode_span, which fails
 *    unless the span ends exactly at the next span's start, and the entries inflated are parsed by block.c's cursor
 *    with all its checks.
 *  - Scratch buffers live on the stack for blocks of ordinary size and on the heap above it; nothing is cached here.
 */
#include "zblock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "dbformat.h"
#include "error.h"
#include "kv.h"

#define STACK_BYTES 8192    /* a span of an ordinary 4 KiB block, and then some */
#define PROBE_BYTES 32      /* inflated to read a span's first key: its three lengths and a short key */
#define MAX_MATCH_OVERSHOOT 258

static int zcorrupt(const zblock *z, const char *what) {
    return kv_set_error(KV_ECORRUPT, "%06llu.sst: %s at offset %llu", (unsigned long long)z->file_no, what,
                        (unsigned long long)z->offset);
}

/* ---- encoding ----------------------------------------------------------------------------------------------- */

size_t zblock_encode(deflate_encoder *e, const uint8_t *raw, size_t n, uint8_t *out, size_t cap) {
    if (n < 8 || n > UINT32_MAX) return 0;
    uint32_t r = get_fixed32(raw + n - 4);
    if (r == 0 || r > (n - 4) / 4) return 0;
    size_t roff = n - 4 - 4 * (size_t)r;
    uint32_t stack_spans[65];
    uint64_t stack_bits[66];
    uint32_t *spans = r < 65 ? stack_spans : malloc(((size_t)r + 1) * sizeof *spans);
    uint64_t *bits = r < 65 ? stack_bits : malloc(((size_t)r + 2) * sizeof *bits);
    size_t total = 0;
    if (!spans || !bits) goto out;
    for (uint32_t i = 0; i < r; i++) spans[i] = get_fixed32(raw + roff + 4 * (size_t)i);
    spans[r] = (uint32_t)roff;
    /* The directory's room: the two counts, then r + 2 deltas, none above the stream's bits. The stream is written
     * after that room, and moved down once the directory's real size is known. */
    size_t dir_max = (size_t)varint_length(n) + (size_t)varint_length(r) +
                     ((size_t)r + 2) * (size_t)varint_length((uint64_t)cap * 8);
    if (dir_max >= cap) goto out;
    size_t zlen = deflate_compress_spans(e, raw, n, spans, (size_t)r + 1, out + dir_max, cap - dir_max, bits);
    if (!zlen) goto out;
    uint8_t *p = put_varint64(out, n);
    p = put_varint64(p, r);
    p = put_varint64(p, bits[0]);
    for (uint32_t i = 0; i <= r; i++) p = put_varint64(p, bits[i + 1] - bits[i]);
    memmove(p, out + dir_max, zlen);
    total = (size_t)(p - out) + zlen;
out:
    if (spans != stack_spans) free(spans);
    if (bits != stack_bits) free(bits);
    return total;
}

/* ---- parsing ------------------------------------------------------------------------------------------------ */

/* ---- codes shared by the blocks of a table ------------------------------------------------------------------ */

/* A dynamic code's decoding tables and the header bits they were read from. Blocks that carry the same header share
 * one: a table's blocks all use the code its writer learnt from its first block. */
struct zcode {
    atomic_int refs;
    uint8_t *header;        /* the stream's first header_bits bits (the last byte's unused bits zero) */
    uint64_t header_bits;
    deflate_tables *tables;
};

struct zcode_cache {
    pthread_mutex_t mu;
    zcode *last;            /* the code last read, or NULL */
};

static atomic_size_t live_codes; /* codes allocated and not yet freed (zcode_live) */

size_t zcode_live(void) { return atomic_load(&live_codes); }

static void zcode_unref(zcode *c) {
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1) return;
    atomic_fetch_sub(&live_codes, 1);
    deflate_tables_free(c->tables);
    free(c->header);
    free(c);
}

zcode_cache *zcode_cache_new(void) {
    zcode_cache *cc = calloc(1, sizeof *cc);
    if (cc) pthread_mutex_init(&cc->mu, NULL);
    return cc;
}

void zcode_cache_free(zcode_cache *cc) {
    if (!cc) return;
    zcode_unref(cc->last);
    pthread_mutex_destroy(&cc->mu);
    free(cc);
}

/* Whether the stream begins with exactly c's header. */
static bool same_header(const zcode *c, const uint8_t *stream, size_t slen, uint64_t header_bits) {
    if (c->header_bits != header_bits || (header_bits + 7) / 8 > slen) return false;
    size_t whole = (size_t)(header_bits / 8);
    if (memcmp(c->header, stream, whole)) return false;
    unsigned part = (unsigned)(header_bits % 8);
    return !part || (stream[whole] & ((1u << part) - 1)) == c->header[whole];
}

/* The code for a stream whose header ends at header_bits: from the cache when it matches, else read (and cached).
 * KV_OK, KV_ECORRUPT (a malformed header) or KV_ENOMEM. */
static int code_for(zcode_cache *cc, const zblock *z, uint64_t header_bits, zcode **out) {
    *out = NULL;
    if (cc) {
        pthread_mutex_lock(&cc->mu);
        zcode *c = cc->last;
        if (c && same_header(c, z->stream, z->stream_len, header_bits)) atomic_fetch_add(&c->refs, 1);
        else c = NULL;
        pthread_mutex_unlock(&cc->mu);
        *out = c;
        if (c) return KV_OK;
    }
    zcode *c = calloc(1, sizeof *c);
    size_t hbytes = (size_t)((header_bits + 7) / 8);
    uint64_t first = 0;
    if (c) c->header = malloc(hbytes ? hbytes : 1);
    if (!c || !c->header) {
        free(c);
        return kv_set_error(KV_ENOMEM, "out of memory reading a block");
    }
    c->tables = deflate_tables_new(z->stream, z->stream_len, &first);
    if (!c->tables || first != header_bits) {
        deflate_tables_free(c->tables);
        free(c->header);
        free(c);
        return zcorrupt(z, "bad compressed block header");
    }
    memcpy(c->header, z->stream, hbytes);
    if (header_bits % 8) c->header[hbytes - 1] &= (uint8_t)((1u << (header_bits % 8)) - 1);
    c->header_bits = header_bits;
    atomic_init(&c->refs, 1);
    atomic_fetch_add(&live_codes, 1);
    if (cc) {
        atomic_fetch_add(&c->refs, 1);
        pthread_mutex_lock(&cc->mu);
        zcode *old = cc->last;
        cc->last = c;
        pthread_mutex_unlock(&cc->mu);
        zcode_unref(old);
    }
    *out = c;
    return KV_OK;
}

/* The code z's stream uses, as a new reference: NULL for the fixed code. */
static int block_code(const zblock *z, zcode_cache *cc, zcode **out) {
    *out = NULL;
    return z->fixed ? KV_OK : code_for(cc, z, z->bits[0], out);
}

static const deflate_tables *tables_of(const zcode *c) { return c ? c->tables : NULL; }

/* ---- parsing ------------------------------------------------------------------------------------------------ */

int zblock_parse(uint8_t *data, size_t len, uint64_t file_no, uint64_t offset, zcode_cache *codes, zblock **out) {
    *out = NULL;
    zblock probe = {.file_no = file_no, .offset = offset};
    const uint8_t *p = data, *end = data + len;
    uint64_t raw_len, r;
    if (!(p = get_varint64(p, end, &raw_len)) || !(p = get_varint64(p, end, &r)) || r == 0 || raw_len < 8 ||
        r > (raw_len - 4) / 4 || raw_len > (uint64_t)len * 1032 + 64 || raw_len > UINT32_MAX) {
        free(data);
        return zcorrupt(&probe, "bad seekable block header");
    }
    if (r + 2 > (uint64_t)(end - p)) { /* r + 2 deltas of a byte or more must fit, before anything is allocated */
        free(data);
        return zcorrupt(&probe, "bad seekable block directory");
    }
    zblock *z = calloc(1, sizeof *z);
    uint64_t *bits = malloc(((size_t)r + 2) * sizeof *bits);
    if (!z || !bits) {
        free(z);
        free(bits);
        free(data);
        return kv_set_error(KV_ENOMEM, "out of memory parsing a block");
    }
    uint64_t at = 0;
    bool ok = true;
    for (uint64_t i = 0; i <= r + 1 && ok; i++) {
        uint64_t d;
        ok = (p = get_varint64(p, end, &d)) != NULL && d > 0 && d <= UINT64_MAX / 2 - at;
        if (ok) bits[i] = at += d;
    }
    /* Then the stream: a fixed-code header of 3 bits or a dynamic one, every span, and an end-of-block code of at
     * most 15 bits after which the stream ends within a byte (checked exactly below, once the code is known). */
    size_t slen = ok ? (size_t)(end - p) : 0;
    unsigned btype = slen ? (p[0] >> 1) & 3 : 0;
    if (!ok || bits[r + 1] >= (uint64_t)slen * 8 || (uint64_t)slen * 8 - bits[r + 1] > 15 + 7 ||
        !((btype == 1 && bits[0] == 3) || (btype == 2 && bits[0] > 3)) || !(p[0] & 1)) {
        free(bits);
        free(z);
        free(data);
        return zcorrupt(&probe, "bad seekable block directory");
    }
    *z = (zblock){.data = data, .len = len, .stream = p, .stream_len = slen, .raw_len = (size_t)raw_len,
                  .nspans = (uint32_t)r + 1, .bits = bits, .fixed = btype == 1, .file_no = file_no, .offset = offset};
    zcode *c;
    int rc = block_code(z, codes, &c);
    if (!rc && deflate_check_end(z->stream, z->stream_len, bits[r + 1], tables_of(c)))
        rc = zcorrupt(&probe, "bad seekable block directory");
    zcode_unref(c);
    if (rc) {
        zblock_free(z);
        return rc;
    }
    *out = z;
    return KV_OK;
}

void zblock_free(zblock *z) {
    if (!z) return;
    free(z->data);
    free(z->bits);
    free(z);
}

size_t zblock_charge(const zblock *z) { return sizeof *z + z->len + ((size_t)z->nspans + 1) * sizeof *z->bits; }

/* Inflate span i, or at least its first `want` bytes, into out (room outcap). */
static int inflate_span(const zblock *z, const deflate_tables *t, uint32_t i, uint8_t *out, size_t outcap,
                        size_t want, size_t *produced) {
    if (deflate_decode_span(z->stream, z->stream_len, z->bits[i], z->bits[i + 1], t, out, outcap, want,
                            produced))
        return zcorrupt(z, "bad compressed block");
    return KV_OK;
}

int zblock_inflate(const zblock *z, zcode_cache *codes, uint8_t **rawp, size_t *raw_len) {
    *rawp = NULL;
    *raw_len = 0;
    zcode *c;
    int rc = block_code(z, codes, &c);
    if (rc) return rc;
    const deflate_tables *t = tables_of(c);
    uint8_t *raw = malloc(z->raw_len);
    uint32_t *starts = malloc((size_t)z->nspans * sizeof *starts);
    if (!raw || !starts) {
        rc = kv_set_error(KV_ENOMEM, "out of memory inflating a block");
        goto out;
    }
    size_t pos = 0;
    for (uint32_t i = 0; i < z->nspans && !rc; i++) {
        size_t got;
        starts[i] = (uint32_t)pos;
        rc = inflate_span(z, t, i, raw + pos, z->raw_len - pos, SIZE_MAX, &got);
        if (!rc && got == 0) rc = zcorrupt(z, "empty span in a seekable block");
        pos += got;
    }
    if (rc) goto out;
    /* The end-of-block code follows the last span, and the stream ends with it; the restart array the spans
     * rebuilt must name exactly the spans' starts. */
    bool eob_ok = deflate_check_end(z->stream, z->stream_len, z->bits[z->nspans], t) == 0;
    uint32_t r = z->nspans - 1;
    bool dir_ok = pos == z->raw_len && eob_ok && get_fixed32(raw + pos - 4) == r &&
                  (size_t)starts[r] == pos - 4 - 4 * (size_t)r;
    for (uint32_t i = 0; i < r && dir_ok; i++) dir_ok = get_fixed32(raw + starts[r] + 4 * (size_t)i) == starts[i];
    if (!dir_ok) rc = zcorrupt(z, "seekable block directory does not match its restart array");
out:
    zcode_unref(c);
    free(starts);
    if (rc) {
        free(raw);
        return rc;
    }
    *rawp = raw;
    *raw_len = z->raw_len;
    return KV_OK;
}

/* ---- lookups ------------------------------------------------------------------------------------------------ */

/* A buffer on the stack for ordinary sizes, on the heap above. */
typedef struct scratch {
    uint8_t *p;
    size_t cap;
    uint8_t stack[STACK_BYTES];
} scratch;

static int scratch_get(scratch *s, size_t need) {
    if (need <= STACK_BYTES) {
        s->p = s->stack;
        s->cap = STACK_BYTES;
        return KV_OK;
    }
    s->p = malloc(need);
    s->cap = need;
    return s->p ? KV_OK : kv_set_error(KV_ENOMEM, "out of memory reading a block");
}

static void scratch_put(scratch *s) {
    if (s->p != s->stack) free(s->p);
    s->p = NULL;
}

/* The first entry of span i: inflate as much of the span as its three lengths and its key (and, with
 * with_value, its value) need. *key, *vp point into s. A restart entry stores its whole key (shared = 0). */
static int first_entry(const zblock *z, const deflate_tables *t, uint32_t i, bool with_value, scratch *s,
                       const uint8_t **key, size_t *klen, const uint8_t **vp, size_t *vlen) {
    size_t want = PROBE_BYTES, got;
    const char *bad = NULL;
    for (;;) {
        int rc = scratch_get(s, want + MAX_MATCH_OVERSHOOT);
        if (rc) return rc;
        rc = inflate_span(z, t, i, s->p, s->cap, want, &got);
        if (rc) {
            scratch_put(s);
            return rc;
        }
        const uint8_t *p = s->p, *lim = s->p + got;
        uint64_t shared, unshared, vl;
        bool whole = got < want; /* the span ended before want: all of it is here */
        if ((p = get_varint64(p, lim, &shared)) && (p = get_varint64(p, lim, &unshared)) &&
            (p = get_varint64(p, lim, &vl))) {
            size_t need = (size_t)(p - s->p) + unshared + (with_value ? vl : 0);
            if (shared != 0 || unshared <= IKEY_TRAILER) { /* a key is a user key (1 byte or more) and a trailer */
                bad = "bad restart entry";
            } else if (unshared > (uint64_t)z->raw_len || vl > (uint64_t)z->raw_len || need > z->raw_len) {
                bad = "bad block entry lengths";
            } else if (need <= got) {
                *key = p;
                *klen = (size_t)unshared;
                *vp = p + unshared;
                *vlen = (size_t)vl;
                return KV_OK; /* the caller puts s back */
            } else if (whole) {
                bad = "truncated block entry";
            }
            want = need;
        } else if (whole || want >= z->raw_len) {
            bad = "truncated block entry";
        } else {
            want = z->raw_len; /* lengths longer than PROBE_BYTES allows: take the span whole */
        }
        scratch_put(s);
        if (bad) return zcorrupt(z, bad);
    }
}

/* Copy an entry found into the caller's buffers; 0 when same_ukey and the user key differs. */
static int found(const uint8_t *key, size_t klen, const uint8_t *v, size_t vlen, const uint8_t *target, size_t tlen,
                 bool same_ukey, uint64_t *trailer, kv_bytes *val) {
    size_t ulen = klen - IKEY_TRAILER;
    if (same_ukey && (ulen != tlen - IKEY_TRAILER || memcmp(key, target, ulen) != 0)) return 0;
    if (trailer) *trailer = get_fixed64(key + ulen);
    bytes_clear(val);
    if (bytes_append(val, v, vlen)) return kv_set_error(KV_ENOMEM, "out of memory");
    return 1;
}

/* The last span whose first key is < target (or span 0): the first entry >= target is in it or starts the next
 * one. A binary search that inflates only the first entry of the spans it compares. *next_ukey is set when the next
 * span's first entry is >= target and has target's user key (the search always compares the span after the one it
 * returns, when there is one). */
static int find_span(const zblock *z, const deflate_tables *t, const uint8_t *target, size_t tlen, uint32_t *span,
                     bool *next_ukey) {
    uint32_t lo = 0, hi = z->nspans - 2, same = UINT32_MAX;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        scratch s;
        const uint8_t *k, *v;
        size_t kl, vl;
        int rc = first_entry(z, t, mid, false, &s, &k, &kl, &v, &vl);
        if (rc) return rc;
        int c = ikey_cmp(k, kl, target, tlen);
        if (c >= 0 && kl == tlen && memcmp(k, target, tlen - IKEY_TRAILER) == 0) same = mid;
        scratch_put(&s);
        if (c < 0)
            lo = mid;
        else
            hi = mid - 1;
    }
    *span = lo;
    *next_ukey = same == lo + 1;
    return KV_OK;
}

/* Inflate more of a span, a step at a time, until at least need bytes are out or the span ends (*st: 0 more to come,
 * 1 ended, -1 malformed). */
static void span_fill(deflate_span *sp, size_t need, size_t step, int *st) {
    while (*st == 0 && (size_t)(sp->o - sp->out) < need) *st = deflate_span_more(sp, (size_t)(sp->o - sp->out) + step);
}

/* span_fill for the rest of an entry whose lengths are known: NULL once its first need bytes are out, else what is
 * wrong (the stream, or a span that ends inside the entry). */
static const char *span_have(deflate_span *sp, size_t need, size_t step, int *st) {
    span_fill(sp, need, step, st);
    if (*st < 0) return "bad compressed block";
    return (size_t)(sp->o - sp->out) < need ? "bad block entry lengths" : NULL;
}

/* Search span lo for the first entry >= target. The span is inflated a step (half an average span) at a time, and
 * each entry parsed once as its bytes arrive: its lengths, its key (rebuilt from the previous key's shared prefix)
 * and, for the answer, its value; on average half the span is inflated. The steps are kept, rather than stopping at
 * the answer's last byte: decoding on past the answer is what finds damage in the stream there (a damaged stream
 * whose checksum matches is caught only by the decoder). Returns 1 (found; *val and *trailer set), 0 (not found; *past set when every entry of the span is
 * < target, so that the answer can only start the next span) or < 0. Each entry gets the checks block.c's cursor
 * gives it; a span that ends inside an entry is damage. */
static int scan_span(const zblock *z, const deflate_tables *t, uint32_t lo, const uint8_t *target, size_t tlen,
                     bool same_ukey, uint64_t *trailer, kv_bytes *val, bool *past) {
    *past = false;
    scratch s;
    int rc = scratch_get(&s, z->raw_len);
    if (rc) return rc;
    uint8_t kstack[256], *kbuf = kstack; /* a key rebuilt from a shared prefix */
    size_t kcap = sizeof kstack;
    const uint8_t *key = NULL; /* the previous entry's key: in s (stored whole) or in kbuf */
    size_t klen = 0, off = 0;
    deflate_span sp;
    deflate_span_begin(&sp, z->stream, z->stream_len, z->bits[lo], z->bits[lo + 1], t, s.p, s.cap);
    size_t step = z->raw_len / z->nspans / 2 + 16;
    int st = 0;
    const char *bad = NULL;
    for (;;) {
        /* The entry's three lengths: one byte each, as a rule. */
        uint64_t shared, unshared, vl;
        const uint8_t *p = NULL;
        for (;;) {
            size_t got = (size_t)(sp.o - sp.out);
            if (off < got) {
                p = s.p + off;
                const uint8_t *lim = s.p + got;
                if ((p = get_varint64(p, lim, &shared)) && (p = get_varint64(p, lim, &unshared)) &&
                    (p = get_varint64(p, lim, &vl)))
                    break;
            }
            if (st == 1) {
                if (got == 0)
                    bad = "empty span in a seekable block";
                else if (off == got)
                    *past = true; /* every entry is < target */
                else
                    bad = off < got ? "truncated block entry" : "bad block entry lengths";
                goto out;
            }
            if (got >= off + 30) { /* three varints of 10 bytes and still none ends */
                bad = "truncated block entry";
                goto out;
            }
            span_fill(&sp, got + 1, step, &st);
            if (st < 0) {
                bad = "bad compressed block";
                goto out;
            }
        }
        size_t hdr = (size_t)(p - (s.p + off));
        if (off == 0 && shared != 0) {
            bad = "restart entry with a shared prefix";
            goto out;
        }
        if (shared > klen || unshared > z->raw_len || vl > z->raw_len || off + hdr + unshared + vl > z->raw_len) {
            bad = "bad block entry lengths";
            goto out;
        }
        size_t kend = off + hdr + (size_t)unshared, end = kend + (size_t)vl;
        /* Its key, rebuilt from the previous one when it shares a prefix. */
        if ((bad = span_have(&sp, kend, step, &st))) goto out;
        if (shared == 0) {
            key = s.p + off + hdr;
            klen = (size_t)unshared;
        } else {
            size_t need = (size_t)shared + (size_t)unshared;
            if (need > kcap) {
                size_t cap = kcap * 2;
                while (cap < need) cap *= 2;
                uint8_t *nb = malloc(cap);
                if (!nb) {
                    rc = kv_set_error(KV_ENOMEM, "out of memory reading a block");
                    goto out;
                }
                memcpy(nb, key, (size_t)shared);
                if (kbuf != kstack) free(kbuf);
                kbuf = nb;
                kcap = cap;
            } else if (key != kbuf) {
                memcpy(kbuf, key, (size_t)shared);
            }
            memcpy(kbuf + shared, s.p + off + hdr, (size_t)unshared);
            key = kbuf;
            klen = need;
        }
        if (klen <= IKEY_TRAILER) {
            bad = "block key without a user key";
            goto out;
        }
        if (ikey_cmp(key, klen, target, tlen) >= 0) {
            /* The answer (or, with same_ukey, no answer if its user key differs): its value too. */
            if ((bad = span_have(&sp, end, step, &st))) goto out;
            rc = found(key, klen, s.p + kend, (size_t)vl, target, tlen, same_ukey, trailer, val);
            goto out;
        }
        off = end;
    }
out:
    if (bad) rc = zcorrupt(z, bad);
    if (kbuf != kstack) free(kbuf);
    scratch_put(&s);
    return rc;
}

static int seek_value(const zblock *z, const deflate_tables *t, const uint8_t *target, size_t tlen, bool same_ukey,
                      bool unique_ukeys, uint64_t *trailer, kv_bytes *val) {
    uint32_t r = z->nspans - 1; /* spans 0..r-1 hold entries */
    scratch s;
    const uint8_t *k, *v;
    size_t kl, vl;
    uint32_t lo;
    bool next_ukey, past;
    int rc = find_span(z, t, target, tlen, &lo, &next_ukey);
    if (rc) return rc;
    /* The next span starts with a version of target's user key that target's sequence sees. When the block holds each
     * user key once, span lo holds no other version of it, so that entry is the answer: span lo is not inflated
     * (about one found key in eight is the first of its span). */
    if (!(same_ukey && unique_ukeys && next_ukey)) {
        rc = scan_span(z, t, lo, target, tlen, same_ukey, trailer, val, &past);
        if (rc != 0 || !past || lo + 1 >= r) return rc;
    }
    /* Every entry of the span is < target: the answer is the next span's first entry. */
    rc = first_entry(z, t, lo + 1, true, &s, &k, &kl, &v, &vl);
    if (rc) return rc;
    if (ikey_cmp(k, kl, target, tlen) < 0) rc = zcorrupt(z, "block keys out of order");
    if (!rc) rc = found(k, kl, v, vl, target, tlen, same_ukey, trailer, val);
    scratch_put(&s);
    return rc;
}

int zblock_seek_value(const zblock *z, zcode_cache *codes, const uint8_t *target, size_t tlen, bool same_ukey,
                      bool unique_ukeys, uint64_t *trailer, kv_bytes *val) {
    zcode *c;
    int rc = block_code(z, codes, &c);
    if (rc) return rc;
    rc = seek_value(z, tables_of(c), target, tlen, same_ukey, unique_ukeys, trailer, val);
    zcode_unref(c);
    return rc;
}

/* ---- iterator ----------------------------------------------------------------------------------------------- */

/* Moves over one inflated span at a time: a block iterator over a view of the span (its entries and a restart array
 * of one offset), replaced when it runs off either end. A seek inflates the probes and one span, not the block. */
typedef struct zblock_iter {
    iter base;
    const zblock *z;
    zcode *code;      /* z's code, held while the iterator lives (NULL: the fixed code) */
    uint32_t span;    /* the span in buf, or UINT32_MAX */
    uint8_t *buf;     /* raw_len + 8 bytes */
    block view;
    iter *in;         /* over view, or NULL */
    int status;
} zblock_iter;

static void zi_fail(zblock_iter *it, int rc) {
    if (!it->status) it->status = rc;
    if (it->in) it->in->destroy(it->in);
    it->in = NULL;
}

/* Inflate span i into buf and point the inner iterator at it (unpositioned). */
static bool zi_load(zblock_iter *it, uint32_t i) {
    if (it->span == i && it->in) return true;
    if (it->in) it->in->destroy(it->in);
    it->in = NULL;
    it->span = UINT32_MAX;
    size_t got = 0;
    int rc = inflate_span(it->z, tables_of(it->code), i, it->buf, it->z->raw_len, SIZE_MAX, &got);
    if (!rc && got == 0) rc = zcorrupt(it->z, "empty span in a seekable block");
    if (rc) {
        zi_fail(it, rc);
        return false;
    }
    put_fixed32(it->buf + got, 0);
    put_fixed32(it->buf + got + 4, 1);
    it->view = (block){.data = it->buf, .len = got + 8, .restart_off = got, .num_restarts = 1,
                       .file_no = it->z->file_no, .offset = it->z->offset};
    it->in = block_iter_new(&it->view, NULL, NULL);
    int st = it->in->status(it->in);
    if (st) {
        zi_fail(it, st);
        return false;
    }
    it->span = i;
    return true;
}

/* After a move inside a span: an error stops; running off an end continues in the next span that way. */
static void zi_settle(zblock_iter *it, bool forward) {
    while (it->in && !it->in->valid(it->in)) {
        int st = it->in->status(it->in);
        if (st) {
            zi_fail(it, st);
            return;
        }
        uint32_t r = it->z->nspans - 1;
        if (forward ? it->span + 1 >= r : it->span == 0) return; /* off the block's end */
        if (!zi_load(it, forward ? it->span + 1 : it->span - 1)) return;
        if (forward)
            it->in->seek_first(it->in);
        else
            it->in->seek_last(it->in);
    }
}

static bool zi_valid(iter *i) {
    zblock_iter *it = (zblock_iter *)i;
    return !it->status && it->in && it->in->valid(it->in);
}

static void zi_seek_first(iter *i) {
    zblock_iter *it = (zblock_iter *)i;
    if (it->status || !zi_load(it, 0)) return;
    it->in->seek_first(it->in);
    zi_settle(it, true);
}

static void zi_seek_last(iter *i) {
    zblock_iter *it = (zblock_iter *)i;
    if (it->status || !zi_load(it, it->z->nspans - 2)) return;
    it->in->seek_last(it->in);
    zi_settle(it, false);
}

static void zi_seek(iter *i, const uint8_t *target, size_t tlen) {
    zblock_iter *it = (zblock_iter *)i;
    if (it->status) return;
    uint32_t lo;
    bool next_ukey;
    int rc = find_span(it->z, tables_of(it->code), target, tlen, &lo, &next_ukey);
    if (rc) {
        zi_fail(it, rc);
        return;
    }
    if (!zi_load(it, lo)) return;
    it->in->seek(it->in, target, tlen);
    zi_settle(it, true);
}

static void zi_next(iter *i) {
    zblock_iter *it = (zblock_iter *)i;
    if (!zi_valid(i)) return;
    it->in->next(it->in);
    zi_settle(it, true);
}

static void zi_prev(iter *i) {
    zblock_iter *it = (zblock_iter *)i;
    if (!zi_valid(i)) return;
    it->in->prev(it->in);
    zi_settle(it, false);
}

static const uint8_t *zi_key(iter *i, size_t *n) {
    zblock_iter *it = (zblock_iter *)i;
    return it->in->key(it->in, n);
}

static const uint8_t *zi_value(iter *i, size_t *n) {
    zblock_iter *it = (zblock_iter *)i;
    return it->in->value(it->in, n);
}

static int zi_status(iter *i) {
    zblock_iter *it = (zblock_iter *)i;
    if (it->status) return it->status;
    return it->in ? it->in->status(it->in) : KV_OK;
}

static void zi_destroy(iter *i) {
    zblock_iter *it = (zblock_iter *)i;
    if (it->in) it->in->destroy(it->in);
    zcode_unref(it->code);
    free(it->buf);
    free(it);
}

iter *zblock_iter_new(const zblock *z, zcode_cache *codes) {
    zcode *c;
    int rc = block_code(z, codes, &c);
    if (rc) return iter_empty(rc);
    zblock_iter *it = calloc(1, sizeof *it);
    uint8_t *buf = it ? malloc(z->raw_len + 8) : NULL;
    if (!buf) {
        zcode_unref(c);
        free(it);
        kv_set_error(KV_ENOMEM, "out of memory creating a block iterator");
        return iter_empty(KV_ENOMEM);
    }
    it->base = (iter){zi_valid, zi_seek_first, zi_seek_last, zi_seek, zi_next, zi_prev, zi_key, zi_value, zi_status,
                      zi_destroy};
    it->z = z;
    it->code = c;
    it->buf = buf;
    it->span = UINT32_MAX;
    return &it->base;
}
