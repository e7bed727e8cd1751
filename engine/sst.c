/*
 * sst.c — SSTable builder, reader, iterator and checker (see sst.h; byte layout in docs/format.md ("SSTable")).
 *
 * Invariants
 *  - The file is a gap-free sequence: data blocks from offset 0, then the filter block (absent when bloom filters
 *    are off: its handle is then (end of data, 0)), the properties block, the index block, each followed by its 5-byte
 *    trailer, then the 64-byte footer. So every byte of a table is covered by a block checksum or the footer
 *    checksum, and the reader rejects a footer whose handles do not tile the file exactly like that.
 *  - Every block is checksummed over its stored bytes and its type byte, and the checksum is verified each time a
 *    block is read from the file (not when it comes from the cache: cached blocks were verified when read). A type 1
 *    block's payload is varint uncompressed_size || raw deflate stream (RFC 1951, no zlib header or adler32;
 *    engine/deflate.h), and must inflate to exactly that size, using every byte of the stream; a type 2 (seekable)
 *    block is checked as zblock.h describes. The writer writes types 0 and 2; type 1 is read for older tables.
 *  - Data blocks are compressed only when that saves >= 1/8; filter, properties and index blocks never are.
 *  - Index keys are the last internal key of their data block, so for any lookup key the first index entry >= it
 *    names the only block that can hold the first entry >= it. Index blocks use restart interval 1 (every key stored
 *    whole), so binary search reads keys in place.
 *  - The reader is immutable after open except for its reference count; get and iterators run from any number of
 *    threads (reads are positional). With a cache, index and filter blocks are looked up in it (high priority) on
 *    every use and reloaded on a miss; without one the reader keeps them itself.
 *  - Builder errors other than a rejected key are sticky: once a write failed the builder only reports it.
 */
#include "sst.h"

#include <assert.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "block.h"
#include "bloom.h"
#include "dbformat.h"
#include "deflate.h"
#include "zblock.h"
#include "error.h"
#include "kv.h"

#define TRAILER 5                       /* type byte + fixed32 checksum */
#define TYPE_NONE 0
#define TYPE_DEFLATE 1                  /* a whole raw deflate stream (written before seekable blocks; still read) */
#define TYPE_SEEKABLE 2                 /* a seekable deflate stream cut at the restart points (zblock.h) */
#define FORMAT_VERSION 1
#define OUT_BUF (64u * 1024u)           /* builder output is batched into appends of about this size */
#define DEFAULT_BLOCK_BYTES 4096
#define DEFAULT_RESTART_INTERVAL 8       /* kv_options' default too */
#define DEFLATE_MAX_RATIO 1032          /* deflate can never shrink data more than this */

void sst_props_free(sst_props *p) {
    bytes_free(&p->smallest);
    bytes_free(&p->largest);
}

/* ---- Builder ------------------------------------------------------------------------------------------------- */

struct sst_builder {
    kv_env *env;
    kv_file *file;
    char *path;
    sst_options o;
    block_builder data, index;
    bloom_builder bloom;
    bool use_bloom;
    kv_bytes last_key;
    kv_bytes out;       /* encoded bytes not yet handed to the env */
    kv_bytes scratch;   /* compression output, filter bytes */
    deflate_encoder *enc; /* made on the first compressed block, reused for the others */
    bool learned;       /* enc has learnt the table's code */
    uint64_t written;   /* bytes handed to the env; file offset of out.data[0] */
    sst_props props;
    int status;
};

static int builder_oom(void) { return kv_set_error(KV_ENOMEM, "out of memory building a table"); }

static int flush_out(sst_builder *b) {
    if (b->out.len == 0) return KV_OK;
    int rc = b->env->append(b->env, b->file, b->out.data, b->out.len);
    if (rc) return rc;
    b->written += b->out.len;
    bytes_clear(&b->out);
    return KV_OK;
}

static int emit(sst_builder *b, const void *p, size_t n) {
    if (n >= OUT_BUF) { /* large: skip the copy */
        int rc = flush_out(b);
        if (rc) return rc;
        rc = b->env->append(b->env, b->file, p, n);
        if (rc) return rc;
        b->written += n;
        return KV_OK;
    }
    if (bytes_append(&b->out, p, n)) return builder_oom();
    return b->out.len >= OUT_BUF ? flush_out(b) : KV_OK;
}

/* Write one block and its trailer; *off and *size get its handle. */
static int write_block(sst_builder *b, const uint8_t *raw, size_t n, bool may_compress, uint64_t *off,
                       uint64_t *size) {
    uint8_t type = TYPE_NONE;
    const uint8_t *payload = raw;
    size_t plen = n;
    if (may_compress && b->o.compression && n >= 64 && n <= UINT32_MAX) {
        /* Kept compressed only if the whole payload, directory included, saves an eighth: the encoder is given
         * exactly that much room and gives up when the block would not fit. Out of memory: stored raw. */
        if (!b->enc) b->enc = deflate_encoder_new();
        size_t room = n - n / 8;
        if (b->enc && !bytes_reserve(&b->scratch, room)) {
            size_t zlen;
            if (b->o.whole_stream_blocks) {
                uint8_t *z = put_varint64(b->scratch.data, n);
                size_t vlen = (size_t)(z - b->scratch.data);
                zlen = deflate_compress(b->enc, raw, n, z, room - vlen);
                if (zlen) zlen += vlen;
                type = TYPE_DEFLATE;
            } else {
                /* One code for the table, learnt from its first compressed block, so readers build its decoding
                 * tables once; a block it fits badly takes the fixed code instead (zblock_encode chooses). */
                if (!b->learned) b->learned = deflate_encoder_learn(b->enc, raw, n);
                zlen = zblock_encode(b->enc, raw, n, b->scratch.data, room);
                type = TYPE_SEEKABLE;
            }
            if (zlen) {
                payload = b->scratch.data;
                plen = zlen;
            } else {
                type = TYPE_NONE;
            }
        }
    }
    uint8_t trailer[TRAILER];
    trailer[0] = type;
    put_fixed32(trailer + 1, kv_checksum2(payload, plen, &type, 1));
    *off = b->written + b->out.len;
    *size = plen;
    int rc = emit(b, payload, plen);
    return rc ? rc : emit(b, trailer, TRAILER);
}

static int flush_data_block(sst_builder *b) {
    if (block_builder_empty(&b->data)) return KV_OK;
    const uint8_t *raw;
    size_t n;
    block_builder_finish(&b->data, &raw, &n);
    if (n == 0) return builder_oom();
    uint64_t off, size;
    int rc = write_block(b, raw, n, true, &off, &size);
    if (rc) return rc;
    uint8_t handle[20], *p = put_varint64(handle, off);
    p = put_varint64(p, size);
    rc = block_builder_add(&b->index, b->last_key.data, b->last_key.len, handle, (size_t)(p - handle));
    if (rc) return rc;
    block_builder_reset(&b->data);
    b->props.data_blocks++;
    return KV_OK;
}

int sst_builder_new(kv_env *env, const char *path, const sst_options *o, sst_builder **out) {
    *out = NULL;
    sst_builder *b = calloc(1, sizeof *b);
    if (!b || !(b->path = strdup(path))) {
        free(b);
        return builder_oom();
    }
    b->env = env;
    b->o = *o;
    if (b->o.block_bytes == 0) b->o.block_bytes = DEFAULT_BLOCK_BYTES;
    if (b->o.restart_interval < 1) b->o.restart_interval = DEFAULT_RESTART_INTERVAL;
    block_builder_init(&b->data, b->o.restart_interval);
    block_builder_init(&b->index, 1);
    b->use_bloom = o->bloom_bits_per_key > 0;
    bloom_builder_init(&b->bloom, b->use_bloom ? o->bloom_bits_per_key : 1);
    b->props.min_seq = UINT64_MAX;
    int rc = env->open_write(env, path, &b->file);
    if (rc) {
        free(b->path);
        free(b);
        return rc;
    }
    *out = b;
    return KV_OK;
}

int sst_builder_add(sst_builder *b, const uint8_t *ikey, size_t klen, const uint8_t *val, size_t vlen) {
    if (b->status) return b->status;
    if (klen < IKEY_TRAILER + 1)
        return kv_set_error(KV_EINVAL, "%s: internal key of %zu bytes is too short", b->path, klen);
    bool first = b->props.entries == 0;
    size_t ulen = klen - IKEY_TRAILER;
    bool new_ukey = true;
    if (!first) {
        if (ikey_cmp(ikey, klen, b->last_key.data, b->last_key.len) <= 0)
            return kv_set_error(KV_EINVAL, "%s: keys added out of order", b->path);
        new_ukey = ukey_cmp(ikey, ulen, b->last_key.data, b->last_key.len - IKEY_TRAILER) != 0;
    }
    int rc = KV_OK;
    /* One filter entry per user key: versions of a key share it. */
    if (b->use_bloom && new_ukey) rc = bloom_builder_add(&b->bloom, ikey, ulen);
    if (!rc) rc = block_builder_add(&b->data, ikey, klen, val, vlen);
    if (!rc) {
        bytes_clear(&b->last_key);
        if (bytes_append(&b->last_key, ikey, klen)) rc = builder_oom();
    }
    if (!rc && first && bytes_append(&b->props.smallest, ikey, klen)) rc = builder_oom();
    if (rc) return b->status = rc;
    uint64_t seq = ikey_seq(ikey, klen);
    b->props.entries++;
    if (ikey_type(ikey, klen) == KV_TYPE_DELETE) b->props.tombstones++;
    if (seq < b->props.min_seq) b->props.min_seq = seq;
    if (seq > b->props.max_seq) b->props.max_seq = seq;
    b->props.raw_key_bytes += klen;
    b->props.raw_value_bytes += vlen;
    b->props.user_keys += new_ukey;
    if (block_builder_size(&b->data) >= b->o.block_bytes) {
        rc = flush_data_block(b);
        if (rc) return b->status = rc;
    }
    return KV_OK;
}

uint64_t sst_builder_size(const sst_builder *b) {
    return b->written + b->out.len + (block_builder_empty(&b->data) ? 0 : block_builder_size(&b->data));
}

uint64_t sst_builder_entries(const sst_builder *b) { return b->props.entries; }

static int add_prop_u64(block_builder *pb, const char *name, uint64_t v) {
    uint8_t buf[10];
    uint8_t *e = put_varint64(buf, v);
    return block_builder_add(pb, (const uint8_t *)name, strlen(name), buf, (size_t)(e - buf));
}

static int add_prop_bytes(block_builder *pb, const char *name, const kv_bytes *v) {
    return block_builder_add(pb, (const uint8_t *)name, strlen(name), v->data, v->len);
}

/* The properties block; entries in memcmp order of their names. */
static int build_props(sst_builder *b, block_builder *pb) {
    const sst_props *p = &b->props;
    int rc = add_prop_u64(pb, "data_blocks", p->data_blocks);
    if (!rc) rc = add_prop_u64(pb, "entries", p->entries);
    if (!rc) rc = add_prop_bytes(pb, "largest", &p->largest);
    if (!rc) rc = add_prop_u64(pb, "max_seq", p->max_seq);
    if (!rc) rc = add_prop_u64(pb, "min_seq", p->min_seq);
    if (!rc) rc = add_prop_u64(pb, "raw_key_bytes", p->raw_key_bytes);
    if (!rc) rc = add_prop_u64(pb, "raw_value_bytes", p->raw_value_bytes);
    if (!rc) rc = add_prop_bytes(pb, "smallest", &p->smallest);
    if (!rc) rc = add_prop_u64(pb, "tombstones", p->tombstones);
    if (!rc) rc = add_prop_u64(pb, "user_keys", p->user_keys);
    return rc;
}

static int finish_blocks(sst_builder *b) {
    int rc = flush_data_block(b);
    if (rc) return rc;
    sst_props *p = &b->props;
    if (p->entries == 0) p->min_seq = 0;
    if (bytes_append(&p->largest, b->last_key.data, b->last_key.len)) return builder_oom();

    uint64_t filter_off = b->written + b->out.len, filter_size = 0;
    if (b->use_bloom) {
        bytes_clear(&b->scratch);
        rc = bloom_builder_finish(&b->bloom, &b->scratch);
        if (!rc) rc = write_block(b, b->scratch.data, b->scratch.len, false, &filter_off, &filter_size);
        if (rc) return rc;
    }

    uint64_t props_off, props_size;
    block_builder pb;
    block_builder_init(&pb, 1);
    rc = build_props(b, &pb);
    if (!rc) {
        const uint8_t *raw;
        size_t n;
        block_builder_finish(&pb, &raw, &n);
        rc = n ? write_block(b, raw, n, false, &props_off, &props_size) : builder_oom();
    }
    block_builder_free(&pb);
    if (rc) return rc;

    uint64_t index_off, index_size;
    const uint8_t *raw;
    size_t n;
    block_builder_finish(&b->index, &raw, &n);
    if (n == 0) return builder_oom();
    rc = write_block(b, raw, n, false, &index_off, &index_size);
    if (rc) return rc;

    uint8_t footer[SST_FOOTER];
    put_fixed64(footer, filter_off);
    put_fixed64(footer + 8, filter_size);
    put_fixed64(footer + 16, props_off);
    put_fixed64(footer + 24, props_size);
    put_fixed64(footer + 32, index_off);
    put_fixed64(footer + 40, index_size);
    put_fixed32(footer + 48, FORMAT_VERSION);
    put_fixed32(footer + 52, kv_checksum(footer, 52));
    put_fixed64(footer + 56, SST_MAGIC);
    rc = emit(b, footer, sizeof footer);
    if (!rc) rc = flush_out(b);
    if (!rc) p->file_size = b->written;
    return rc;
}

static void builder_free(sst_builder *b) {
    deflate_encoder_free(b->enc);
    block_builder_free(&b->data);
    block_builder_free(&b->index);
    bloom_builder_free(&b->bloom);
    bytes_free(&b->last_key);
    bytes_free(&b->out);
    bytes_free(&b->scratch);
    sst_props_free(&b->props);
    free(b->path);
    free(b);
}

int sst_builder_finish(sst_builder *b, sst_props *props) {
    int rc = b->status;
    if (!rc) rc = finish_blocks(b);
    if (!rc) rc = b->env->sync(b->env, b->file);
    int crc = b->env->close(b->env, b->file);
    if (!rc) rc = crc;
    if (!rc && props) {
        *props = b->props;
        /* Hand the key buffers over instead of copying them. */
        memset(&b->props.smallest, 0, sizeof b->props.smallest);
        memset(&b->props.largest, 0, sizeof b->props.largest);
    }
    builder_free(b);
    return rc;
}

void sst_builder_abandon(sst_builder *b) {
    if (!b) return;
    b->env->close(b->env, b->file);
    builder_free(b);
}

/* ---- Reading blocks ----------------------------------------------------------------------------------------- */

/* Where a table's blocks come from, for messages and reads. */
typedef struct src {
    kv_env *env;
    kv_file *file;
    const char *name;
    uint64_t file_no;
    zcode_cache *codes; /* the last dynamic code its seekable blocks used (a reader's), or NULL */
} src;

static int corrupt_at(const src *s, uint64_t off, const char *what) {
    return kv_set_error(KV_ECORRUPT, "%s: %s at offset %llu", s->name, what, (unsigned long long)off);
}

/* Read the block at [off, off + size) and its trailer and verify the checksum. On success *buf is a malloc'ed buffer
 * whose first `size` bytes are the stored block, *type its compression type. On corruption *what names the problem
 * (message set). */
static int read_stored(const src *s, uint64_t off, uint64_t size, uint8_t **bufp, uint8_t *type, const char **what) {
    *bufp = NULL;
    *what = NULL;
    if (size > SIZE_MAX - TRAILER - 1) return corrupt_at(s, off, *what = "block size out of range");
    size_t n = (size_t)size + TRAILER;
    uint8_t *buf = malloc(n);
    if (!buf) return kv_set_error(KV_ENOMEM, "%s: out of memory reading %zu bytes at offset %llu", s->name, n,
                                  (unsigned long long)off);
    size_t got = 0;
    int rc = s->env->read_at(s->env, s->file, off, buf, n, &got);
    if (rc) {
        free(buf);
        return rc;
    }
    if (got != n) {
        free(buf);
        return corrupt_at(s, off, *what = "truncated block");
    }
    if (get_fixed32(buf + size + 1) != kv_checksum(buf, (size_t)size + 1)) {
        free(buf);
        return corrupt_at(s, off, *what = "bad block checksum");
    }
    *type = buf[size];
    if (*type != TYPE_NONE && *type != TYPE_DEFLATE && *type != TYPE_SEEKABLE) {
        free(buf);
        return corrupt_at(s, off, *what = "unknown block compression type");
    }
    *bufp = buf;
    return KV_OK;
}

/* Inflate a stored whole-stream deflate block (type 1): varint raw size || stream. Takes buf. */
static int inflate_stored(const src *s, uint64_t off, uint8_t *buf, size_t size, uint8_t **data, size_t *len,
                          const char **what) {
    uint64_t raw_len;
    const uint8_t *z = get_varint64(buf, buf + size, &raw_len);
    size_t zlen = z ? (size_t)(buf + size - z) : 0;
    if (!z || raw_len > (uint64_t)zlen * DEFLATE_MAX_RATIO + 64 || raw_len > (uint64_t)SIZE_MAX / 2) {
        free(buf);
        return corrupt_at(s, off, *what = "bad compressed block size");
    }
    uint8_t *raw = malloc(raw_len ? (size_t)raw_len : 1);
    if (!raw) {
        free(buf);
        return kv_set_error(KV_ENOMEM, "%s: out of memory inflating a block at offset %llu", s->name,
                            (unsigned long long)off);
    }
    int drc = deflate_decompress(z, zlen, raw, (size_t)raw_len);
    free(buf);
    if (drc) {
        free(raw);
        return corrupt_at(s, off, *what = "bad compressed block");
    }
    *data = raw;
    *len = (size_t)raw_len;
    return KV_OK;
}

/* Read, verify and inflate the block at [off, off + size): *data is a malloc'ed buffer holding the raw block. */
static int read_block(const src *s, uint64_t off, uint64_t size, uint8_t **data, size_t *len, const char **what) {
    *data = NULL;
    *len = 0;
    uint8_t *buf, type;
    int rc = read_stored(s, off, size, &buf, &type, what);
    if (rc) return rc;
    if (type == TYPE_NONE) {
        *data = buf;
        *len = (size_t)size;
        return KV_OK;
    }
    if (type == TYPE_DEFLATE) return inflate_stored(s, off, buf, (size_t)size, data, len, what);
    zblock *z;
    rc = zblock_parse(buf, (size_t)size, s->file_no, off, s->codes, &z);
    if (!rc) {
        rc = zblock_inflate(z, s->codes, data, len);
        zblock_free(z);
    }
    if (rc == KV_ECORRUPT) *what = "bad compressed block";
    return rc;
}

static int read_parsed_block(const src *s, uint64_t off, uint64_t size, block **out, const char **what) {
    uint8_t *data;
    size_t len;
    int rc = read_block(s, off, size, &data, &len, what);
    if (rc) return rc;
    rc = block_parse(data, len, s->file_no, off, out);
    if (rc == KV_ECORRUPT) *what = "bad block structure";
    return rc;
}

/* A filter block held in memory (and in the cache). */
typedef struct filter_blk {
    uint8_t *data;
    size_t len;
} filter_blk;

static void filter_free(void *v) {
    filter_blk *f = v;
    free(f->data);
    free(f);
}

static int read_filter(const src *s, uint64_t off, uint64_t size, filter_blk **out, const char **what) {
    uint8_t *data;
    size_t len;
    int rc = read_block(s, off, size, &data, &len, what);
    if (rc) return rc;
    filter_blk *f = malloc(sizeof *f);
    if (!f) {
        free(data);
        return kv_set_error(KV_ENOMEM, "%s: out of memory loading the filter", s->name);
    }
    f->data = data;
    f->len = len;
    *out = f;
    return KV_OK;
}

static void block_free_v(void *v) { block_free(v); }

/* Decode a block handle (varint offset | varint size, nothing after) and check it lies in [0, limit). */
static bool decode_handle(const uint8_t *p, size_t n, uint64_t limit, uint64_t *off, uint64_t *size) {
    const uint8_t *end = p + n;
    p = get_varint64(p, end, off);
    if (p) p = get_varint64(p, end, size);
    return p == end && *off <= limit && *size <= limit - *off && TRAILER <= limit - *off - *size;
}

/* ---- Footer and properties ---------------------------------------------------------------------------------- */

typedef struct footer {
    uint64_t filter_off, filter_size, props_off, props_size, index_off, index_size;
} footer;

/* Decode and validate the footer of a file of file_size bytes: magic, checksum, version, and handles that tile the
 * file exactly (data | filter | properties | index | footer). *what names the problem. */
static int parse_footer(const src *s, const uint8_t *p, uint64_t file_size, footer *f, const char **what) {
    uint64_t at = file_size - SST_FOOTER;
    if (get_fixed64(p + 56) != SST_MAGIC) return corrupt_at(s, at, *what = "bad magic number");
    if (get_fixed32(p + 52) != kv_checksum(p, 52)) return corrupt_at(s, at, *what = "bad footer checksum");
    if (get_fixed32(p + 48) != FORMAT_VERSION) return corrupt_at(s, at, *what = "unsupported format version");
    *f = (footer){get_fixed64(p), get_fixed64(p + 8), get_fixed64(p + 16), get_fixed64(p + 24),
                  get_fixed64(p + 32), get_fixed64(p + 40)};
    /* Walk the meta blocks from the end of the data; every step is bounded by `at` so nothing overflows. */
    bool ok = f->filter_off <= at;
    uint64_t pos = f->filter_off;
    if (ok && f->filter_size) {
        ok = f->filter_size <= at - pos && TRAILER <= at - pos - f->filter_size;
        pos += f->filter_size + TRAILER;
    }
    ok = ok && f->props_off == pos && f->props_size <= at - pos && TRAILER <= at - pos - f->props_size;
    if (ok) pos += f->props_size + TRAILER;
    ok = ok && f->index_off == pos && f->index_size <= at - pos && TRAILER <= at - pos - f->index_size;
    if (ok) pos += f->index_size + TRAILER;
    ok = ok && pos == at;
    if (!ok) return corrupt_at(s, at, *what = "footer block handles do not match the file layout");
    return KV_OK;
}

static bool prop_u64(const uint8_t *v, size_t n, uint64_t *out) {
    return get_varint64(v, v + n, out) == v + n;
}

/* Fill *p from a properties block. */
static int parse_props(const src *s, const block *pb, uint64_t off, sst_props *p, const char **what) {
    static const struct {
        const char *name;
        size_t field;
    } nums[] = {
        {"data_blocks", offsetof(sst_props, data_blocks)}, {"entries", offsetof(sst_props, entries)},
        {"max_seq", offsetof(sst_props, max_seq)},         {"min_seq", offsetof(sst_props, min_seq)},
        {"raw_key_bytes", offsetof(sst_props, raw_key_bytes)},
        {"raw_value_bytes", offsetof(sst_props, raw_value_bytes)},
        {"tombstones", offsetof(sst_props, tombstones)},   {"user_keys", offsetof(sst_props, user_keys)},
    };
    iter *it = block_iter_new(pb, NULL, NULL);
    if (!it) return kv_set_error(KV_ENOMEM, "out of memory");
    int rc = KV_OK;
    kv_bytes prev = {0};
    bool first = true;
    for (it->seek_first(it); it->valid(it) && !rc; it->next(it)) {
        size_t kn, vn;
        const uint8_t *k = it->key(it, &kn), *v = it->value(it, &vn);
        if (kn == 0) { /* every property has a name (and an empty one would be compared from a NULL buffer) */
            rc = corrupt_at(s, off, *what = "property without a name");
            break;
        }
        if (!first && ukey_cmp(prev.data, prev.len, k, kn) >= 0) {
            rc = corrupt_at(s, off, *what = "properties out of order");
            break;
        }
        first = false;
        bytes_clear(&prev);
        if (bytes_append(&prev, k, kn)) {
            rc = kv_set_error(KV_ENOMEM, "out of memory");
            break;
        }
        bool matched = false;
        for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
            if (strlen(nums[i].name) == kn && memcmp(nums[i].name, k, kn) == 0) {
                if (!prop_u64(v, vn, (uint64_t *)((char *)p + nums[i].field)))
                    rc = corrupt_at(s, off, *what = "bad property value");
                matched = true;
                break;
            }
        }
        if (matched) continue;
        kv_bytes *dst = kn == 8 && !memcmp(k, "smallest", 8) ? &p->smallest
                        : kn == 7 && !memcmp(k, "largest", 7) ? &p->largest
                                                              : NULL; /* unknown names: later versions' extras */
        if (dst) {
            bytes_clear(dst);
            if (bytes_append(dst, v, vn)) rc = kv_set_error(KV_ENOMEM, "out of memory");
        }
    }
    if (!rc && it->status(it)) {
        rc = it->status(it);
        *what = "bad properties block";
    }
    it->destroy(it);
    bytes_free(&prev);
    if (!rc && p->entries && (p->smallest.len < IKEY_TRAILER + 1 || p->largest.len < IKEY_TRAILER + 1))
        rc = corrupt_at(s, off, *what = "properties lack the smallest or largest key");
    return rc;
}

/* ---- Reader ------------------------------------------------------------------------------------------------- */

struct sst_reader {
    atomic_int refs;
    src s;
    char *name;
    block_cache *cache;
    uint64_t file_size;
    footer f;
    sst_props props;
    block *index;        /* only without a cache */
    filter_blk *filter;  /* only without a cache */
};

static int read_footer(const src *s, uint64_t file_size, footer *f, const char **what) {
    *what = NULL;
    if (file_size < SST_FOOTER) return corrupt_at(s, 0, *what = "file too short for a table");
    uint8_t buf[SST_FOOTER];
    size_t got = 0;
    int rc = s->env->read_at(s->env, s->file, file_size - SST_FOOTER, buf, SST_FOOTER, &got);
    if (rc) return rc;
    if (got != SST_FOOTER) return corrupt_at(s, file_size - SST_FOOTER, *what = "truncated footer");
    return parse_footer(s, buf, file_size, f, what);
}

/* The index block: from the cache (inserting it on a miss) or the reader. *h is the handle to release, or NULL. */
static int get_index(sst_reader *r, const block **out, cache_handle **h) {
    *h = NULL;
    if (!r->cache) {
        *out = r->index;
        return KV_OK;
    }
    *h = block_cache_lookup(r->cache, r->s.file_no, r->f.index_off);
    if (*h) {
        *out = cache_handle_value(*h);
        return KV_OK;
    }
    block *b = NULL;
    const char *what;
    int rc = read_parsed_block(&r->s, r->f.index_off, r->f.index_size, &b, &what);
    if (rc) return rc;
    *h = block_cache_insert(r->cache, r->s.file_no, r->f.index_off, b, b->len + sizeof *b, true, block_free_v);
    if (!*h) return KV_ENOMEM;
    *out = b;
    return KV_OK;
}

static int get_filter(sst_reader *r, const filter_blk **out, cache_handle **h) {
    *h = NULL;
    if (!r->cache) {
        *out = r->filter;
        return KV_OK;
    }
    *h = block_cache_lookup(r->cache, r->s.file_no, r->f.filter_off);
    if (*h) {
        *out = cache_handle_value(*h);
        return KV_OK;
    }
    filter_blk *f = NULL;
    const char *what;
    int rc = read_filter(&r->s, r->f.filter_off, r->f.filter_size, &f, &what);
    if (rc) return rc;
    *h = block_cache_insert(r->cache, r->s.file_no, r->f.filter_off, f, f->len + sizeof *f, true, filter_free);
    if (!*h) return KV_ENOMEM;
    *out = f;
    return KV_OK;
}

/* A data block as the cache holds it: a seekable block in its stored form (each reader inflates the pieces it needs)
 * or inflated, or any other block raw. */
typedef struct data_blk {
    block *raw;  /* exactly one of the two is set */
    zblock *z;
} data_blk;

static void data_blk_free(data_blk *d) {
    if (!d) return;
    block_free(d->raw);
    zblock_free(d->z);
    free(d);
}

static void data_blk_free_v(void *v) { data_blk_free(v); }

static size_t inflated_charge(size_t raw_len) { return sizeof(data_blk) + sizeof(block) + raw_len; }

static size_t data_blk_charge(const data_blk *d) {
    return d->z ? sizeof *d + zblock_charge(d->z) : inflated_charge(d->raw->len);
}

/* A seekable block, inflated whole into a new data_blk. */
static int inflate_blk(const src *s, uint64_t off, const zblock *z, data_blk **out) {
    *out = NULL;
    data_blk *d = calloc(1, sizeof *d);
    if (!d) return kv_set_error(KV_ENOMEM, "%s: out of memory reading a block", s->name);
    uint8_t *raw;
    size_t len;
    int rc = zblock_inflate(z, s->codes, &raw, &len);
    if (!rc) rc = block_parse(raw, len, s->file_no, off, &d->raw);
    if (rc) {
        free(d);
        return rc;
    }
    *out = d;
    return KV_OK;
}

/* Read and verify a data block: seekable ones stay stored unless inflate is set, others are inflated and parsed. */
static int read_data_blk(const src *s, uint64_t off, uint64_t size, bool inflate, data_blk **out) {
    *out = NULL;
    data_blk *d = calloc(1, sizeof *d);
    if (!d) return kv_set_error(KV_ENOMEM, "%s: out of memory reading a block", s->name);
    uint8_t *buf, type;
    const char *what;
    int rc = read_stored(s, off, size, &buf, &type, &what);
    if (!rc && type == TYPE_SEEKABLE) {
        rc = zblock_parse(buf, (size_t)size, s->file_no, off, s->codes, &d->z);
        if (!rc && inflate) {
            data_blk *whole;
            rc = inflate_blk(s, off, d->z, &whole);
            data_blk_free(d);
            d = rc ? NULL : whole;
        }
    } else if (!rc) {
        uint8_t *data = buf;
        size_t len = (size_t)size;
        if (type == TYPE_DEFLATE) rc = inflate_stored(s, off, buf, (size_t)size, &data, &len, &what);
        if (!rc) rc = block_parse(data, len, s->file_no, off, &d->raw);
    }
    if (rc) {
        free(d);
        return rc;
    }
    *out = d;
    return KV_OK;
}

/* A data block. *h is the cache handle to release, or NULL when the caller owns *out (free with data_blk_free).
 * The cache keeps a seekable block inflated when a reader asks for that (inflate: an iterator that reads on through
 * the block, which would otherwise inflate it again at each visit) or when the cache has room to spare for it (a
 * store, or a part of one, that fits in the cache is then searched as LevelDB searches its cached blocks, without
 * inflating anything); otherwise stored, so that about twice as many blocks fit, and a point lookup inflates the
 * piece it needs. A block cached stored is replaced by its inflated form on those same conditions. Damage found while
 * inflating fails the read (KV_ECORRUPT), as it would have had the block been read from the file; running out of
 * memory leaves the stored form. Without fill_cache a block is used as it is found, and one read from the file is
 * not cached. */
static int get_data_block(sst_reader *r, uint64_t off, uint64_t size, bool fill_cache, bool inflate, data_blk **out,
                          cache_handle **h) {
    *h = NULL;
    *out = NULL;
    bool caching = r->cache && fill_cache;
    if (r->cache) {
        cache_handle *ch = block_cache_lookup(r->cache, r->s.file_no, off);
        if (ch) {
            data_blk *d = cache_handle_value(ch);
            *out = d;
            *h = ch;
            if (!caching || !d->z) return KV_OK;
            size_t stored = data_blk_charge(d), full = inflated_charge(d->z->raw_len);
            if (!inflate && !block_cache_fits(r->cache, r->s.file_no, off, full > stored ? full - stored : 0))
                return KV_OK;
            data_blk *whole;
            int rc = inflate_blk(&r->s, off, d->z, &whole);
            if (rc == KV_ECORRUPT) {
                block_cache_release(r->cache, ch);
                *out = NULL;
                *h = NULL;
                return rc;
            }
            if (rc) return KV_OK; /* out of memory: the stored form serves */
            cache_handle *nh = block_cache_insert(r->cache, r->s.file_no, off, whole, data_blk_charge(whole), false,
                                                  data_blk_free_v);
            if (!nh) return KV_OK; /* whole was freed by the insert */
            block_cache_release(r->cache, ch);
            *out = whole;
            *h = nh;
            return KV_OK;
        }
    }
    data_blk *d;
    int rc = read_data_blk(&r->s, off, size, inflate, &d);
    if (rc) return rc;
    if (caching && d->z && block_cache_fits(r->cache, r->s.file_no, off, inflated_charge(d->z->raw_len))) {
        data_blk *whole;
        rc = inflate_blk(&r->s, off, d->z, &whole);
        if (rc == KV_ECORRUPT) {
            data_blk_free(d);
            return rc;
        }
        if (!rc) {
            data_blk_free(d);
            d = whole;
        }
    }
    *out = d;
    if (caching) {
        *h = block_cache_insert(r->cache, r->s.file_no, off, d, data_blk_charge(d), false, data_blk_free_v);
        if (!*h) {
            *out = NULL;
            return KV_ENOMEM;
        }
    }
    return KV_OK;
}

/* Let go of a data block from get_data_block. */
static void release_block(sst_reader *r, data_blk *d, cache_handle *h) {
    if (h)
        block_cache_release(r->cache, h);
    else
        data_blk_free(d);
}

static void reader_free(sst_reader *r) {
    if (r->s.file) r->s.env->close(r->s.env, r->s.file);
    zcode_cache_free(r->s.codes);
    sst_props_free(&r->props);
    block_free(r->index);
    if (r->filter) filter_free(r->filter);
    free(r->name);
    free(r);
}

int sst_reader_open(kv_env *env, const char *path, const char *name, uint64_t file_no, block_cache *cache,
                    sst_reader **out) {
    *out = NULL;
    sst_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->name = strdup(name))) {
        free(r);
        return kv_set_error(KV_ENOMEM, "%s: out of memory opening the table", name);
    }
    atomic_init(&r->refs, 1);
    r->s = (src){env, NULL, r->name, file_no, zcode_cache_new()};
    if (!r->s.codes) {
        free(r->name);
        free(r);
        return kv_set_error(KV_ENOMEM, "%s: out of memory opening the table", name);
    }
    r->cache = cache;
    int rc = env->open_read(env, path, &r->s.file);
    if (!rc) rc = env->size(env, r->s.file, &r->file_size);
    const char *what = NULL;
    if (!rc) rc = read_footer(&r->s, r->file_size, &r->f, &what);
    if (!rc) {
        block *pb;
        rc = read_parsed_block(&r->s, r->f.props_off, r->f.props_size, &pb, &what);
        if (!rc) {
            rc = parse_props(&r->s, pb, r->f.props_off, &r->props, &what);
            block_free(pb);
        }
        r->props.file_size = r->file_size;
    }
    /* Load the index and filter now: a table that cannot serve reads fails to open, and the first get is fast. */
    if (!rc && !cache) {
        rc = read_parsed_block(&r->s, r->f.index_off, r->f.index_size, &r->index, &what);
        if (!rc && r->f.filter_size) rc = read_filter(&r->s, r->f.filter_off, r->f.filter_size, &r->filter, &what);
    } else if (!rc) {
        const block *ib;
        cache_handle *h;
        rc = get_index(r, &ib, &h);
        if (h) block_cache_release(cache, h);
        if (!rc && r->f.filter_size) {
            const filter_blk *fb;
            rc = get_filter(r, &fb, &h);
            if (h) block_cache_release(cache, h);
        }
    }
    if (rc) {
        reader_free(r);
        return rc;
    }
    *out = r;
    return KV_OK;
}

void sst_reader_ref(sst_reader *r) { atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed); }

void sst_reader_unref(sst_reader *r) {
    if (!r) return;
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) reader_free(r);
}

const sst_props *sst_reader_props(const sst_reader *r) { return &r->props; }

int sst_reader_get(sst_reader *r, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type, kv_bytes *val,
                   uint64_t *found_seq) {
    int rc;
    cache_handle *h;
    if (r->f.filter_size) {
        const filter_blk *fb;
        rc = get_filter(r, &fb, &h);
        if (rc) return rc;
        bool may = bloom_may_contain(fb->data, fb->len, ukey, ulen);
        if (h) block_cache_release(r->cache, h);
        if (!may) return 0;
    }
    /* The lookup key sorts before every entry of ukey with sequence <= seq. */
    uint8_t stack_key[512];
    size_t lklen = ulen + IKEY_TRAILER;
    uint8_t *lk = lklen <= sizeof stack_key ? stack_key : malloc(lklen);
    if (!lk) return kv_set_error(KV_ENOMEM, "out of memory");
    ikey_build(lk, ukey, ulen, seq > KV_MAX_SEQUENCE ? KV_MAX_SEQUENCE : seq, KV_TYPE_FOR_SEEK);

    const block *ib;
    rc = get_index(r, &ib, &h);
    uint64_t off = 0, size = 0;
    if (!rc) {
        const uint8_t *hv;
        size_t hvlen;
        rc = block_seek_value(ib, lk, lklen, false, NULL, &hv, &hvlen);
        if (rc == 1 && !decode_handle(hv, hvlen, r->f.filter_off, &off, &size))
            rc = corrupt_at(&r->s, r->f.index_off, "bad block handle in index block");
        if (h) block_cache_release(r->cache, h);
    }
    if (rc == 1) {
        data_blk *db;
        rc = get_data_block(r, off, size, true, false, &db, &h);
        if (!rc) {
            uint64_t trailer;
            if (db->z) {
                rc = zblock_seek_value(db->z, r->s.codes, lk, lklen, true,
                                       r->props.entries && r->props.user_keys == r->props.entries, &trailer, val);
            } else {
                const uint8_t *v;
                size_t vlen;
                rc = block_seek_value(db->raw, lk, lklen, true, &trailer, &v, &vlen);
                if (rc == 1) {
                    bytes_clear(val);
                    if (bytes_append(val, v, vlen)) rc = kv_set_error(KV_ENOMEM, "out of memory");
                }
            }
            if (rc == 1) {
                int t = (int)(trailer & 0xff);
                if (t > KV_TYPE_BLOB) {
                    rc = corrupt_at(&r->s, off, "unknown entry type");
                } else {
                    *type = t;
                    *found_seq = trailer >> 8;
                }
            }
            release_block(r, db, h);
        }
    }
    if (lk != stack_key) free(lk);
    return rc;
}

/* ---- Two-level iterator ------------------------------------------------------------------------------------- */

typedef struct sst_iter {
    iter base;
    sst_reader *r;
    bool fill_cache;
    const block *ib;
    cache_handle *ih;   /* the index block's cache handle, or NULL */
    iter *index;
    iter *data;         /* over the block at data_off, or NULL */
    data_blk *db;       /* that block (cached or owned), or NULL */
    cache_handle *dh;
    uint64_t data_off;
    int status;
} sst_iter;

static void drop_data(sst_iter *it) {
    if (it->data) it->data->destroy(it->data);
    if (it->db) release_block(it->r, it->db, it->dh);
    it->data = NULL;
    it->db = NULL;
    it->dh = NULL;
}

static void set_status(sst_iter *it, int rc) {
    if (!it->status) it->status = rc;
    drop_data(it);
}

/* Make `data` iterate the block the index iterator points at (or nothing if the index is exhausted). */
static void init_data(sst_iter *it) {
    if (!it->index->valid(it->index)) {
        drop_data(it);
        if (it->index->status(it->index)) set_status(it, it->index->status(it->index));
        return;
    }
    size_t hvlen;
    const uint8_t *hv = it->index->value(it->index, &hvlen);
    uint64_t off, size;
    if (!decode_handle(hv, hvlen, it->r->f.filter_off, &off, &size)) {
        set_status(it, corrupt_at(&it->r->s, it->r->f.index_off, "bad block handle in index block"));
        return;
    }
    if (it->data && it->data_off == off) return;
    drop_data(it);
    data_blk *d = NULL;
    cache_handle *h;
    int rc = get_data_block(it->r, off, size, it->fill_cache, true, &d, &h);
    if (rc) {
        set_status(it, rc);
        return;
    }
    /* A block still in its stored form is read in place, one restart interval at a time; the iterator keeps the
     * block (its cache handle, or the block itself) until it moves to another. */
    it->db = d;
    it->dh = h;
    it->data_off = off;
    it->data = d->z ? zblock_iter_new(d->z, it->r->s.codes) : block_iter_new(d->raw, NULL, NULL);
    if (!it->data) { /* out of memory: drop_data still releases the block */
        set_status(it, kv_set_error(KV_ENOMEM, "out of memory for a block iterator"));
        return;
    }
    int st = it->data->status(it->data);
    if (st) set_status(it, st);
}

/* After a move: if the data iterator ran off its block, continue with the next (forward) or previous block. */
static void skip_empty(sst_iter *it, bool forward) {
    for (;;) {
        if (it->status) return;
        if (it->data && it->data->valid(it->data)) break;
        if (it->data && it->data->status(it->data)) {
            set_status(it, it->data->status(it->data));
            return;
        }
        if (!it->index->valid(it->index)) {
            drop_data(it);
            if (it->index->status(it->index)) set_status(it, it->index->status(it->index));
            return;
        }
        if (forward)
            it->index->next(it->index);
        else
            it->index->prev(it->index);
        init_data(it);
        if (it->data) {
            if (forward)
                it->data->seek_first(it->data);
            else
                it->data->seek_last(it->data);
        }
    }
    /* Every key handed out is split and compared as an internal key (by the merging iterator, the store's
     * iterator, compaction, blob GC), which reads 8 bytes before its end. The block layer cannot require that
     * length (property names are shorter), so a data block whose checksum passed with a shorter key is reported
     * here, once per step and outside the block's decoding loop. */
    size_t kn;
    it->data->key(it->data, &kn);
    if (kn < IKEY_TRAILER + 1)
        set_status(it, corrupt_at(&it->r->s, it->data_off, "block key too short for an internal key"));
}

static bool si_valid(iter *i) {
    sst_iter *it = (sst_iter *)i;
    return !it->status && it->data && it->data->valid(it->data);
}

static void si_seek_first(iter *i) {
    sst_iter *it = (sst_iter *)i;
    if (it->status) return;
    it->index->seek_first(it->index);
    init_data(it);
    if (it->data) it->data->seek_first(it->data);
    skip_empty(it, true);
}

static void si_seek_last(iter *i) {
    sst_iter *it = (sst_iter *)i;
    if (it->status) return;
    it->index->seek_last(it->index);
    init_data(it);
    if (it->data) it->data->seek_last(it->data);
    skip_empty(it, false);
}

static void si_seek(iter *i, const uint8_t *k, size_t n) {
    sst_iter *it = (sst_iter *)i;
    if (it->status) return;
    it->index->seek(it->index, k, n);
    init_data(it);
    if (it->data) it->data->seek(it->data, k, n);
    skip_empty(it, true);
}

static void si_next(iter *i) {
    sst_iter *it = (sst_iter *)i;
    bool ok = si_valid(i);
    assert(ok);
    if (!ok) return;
    it->data->next(it->data);
    skip_empty(it, true);
}

static void si_prev(iter *i) {
    sst_iter *it = (sst_iter *)i;
    bool ok = si_valid(i);
    assert(ok);
    if (!ok) return;
    it->data->prev(it->data);
    skip_empty(it, false);
}

static const uint8_t *si_key(iter *i, size_t *n) {
    sst_iter *it = (sst_iter *)i;
    assert(it->data); /* which asserts that it is valid */
    return it->data->key(it->data, n);
}

static const uint8_t *si_value(iter *i, size_t *n) {
    sst_iter *it = (sst_iter *)i;
    assert(it->data); /* which asserts that it is valid */
    return it->data->value(it->data, n);
}

static int si_status(iter *i) {
    sst_iter *it = (sst_iter *)i;
    if (it->status) return it->status;
    int rc = it->index->status(it->index);
    if (!rc && it->data) rc = it->data->status(it->data);
    return rc;
}

static void si_destroy(iter *i) {
    sst_iter *it = (sst_iter *)i;
    drop_data(it);
    it->index->destroy(it->index);
    if (it->ih) block_cache_release(it->r->cache, it->ih);
    sst_reader_unref(it->r);
    free(it);
}

iter *sst_reader_iter(sst_reader *r, bool fill_cache) {
    sst_iter *it = calloc(1, sizeof *it);
    if (!it) {
        kv_set_error(KV_ENOMEM, "out of memory creating a table iterator");
        return iter_empty(KV_ENOMEM);
    }
    int rc = get_index(r, &it->ib, &it->ih);
    if (!rc) {
        it->index = block_iter_new(it->ib, NULL, NULL);
        if (!it->index) rc = kv_set_error(KV_ENOMEM, "out of memory creating a table iterator");
    }
    if (rc) {
        if (it->ih) block_cache_release(r->cache, it->ih);
        free(it);
        return iter_empty(rc);
    }
    it->base = (iter){si_valid, si_seek_first, si_seek_last, si_seek, si_next, si_prev, si_key, si_value,
                      si_status, si_destroy};
    sst_reader_ref(r);
    it->r = r;
    it->fill_cache = fill_cache;
    return &it->base;
}

/* ---- Checker ------------------------------------------------------------------------------------------------ */

typedef struct checker {
    src s;
    sst_problem_fn cb;
    void *ctx;
    long problems;
} checker;

static void problem(checker *c, uint64_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void problem(checker *c, uint64_t off, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->problems++;
    if (c->cb) c->cb(c->ctx, c->s.name, off, msg);
}

/* The part of the thread's error message after "<file>: ", for problem descriptions. */
static const char *errdetail(void) {
    const char *m = kv_errmsg(), *p = strstr(m, ": ");
    return p ? p + 2 : m;
}

/* Table-wide facts gathered while walking the data blocks, compared with the properties at the end. */
typedef struct tally {
    sst_props p;
    kv_bytes last;       /* last internal key seen */
    kv_bytes prev_index; /* the index key of the block before the one being walked (empty: none) */
    bool any;
    bool complete;       /* every data block was read and walked without error */
} tally;

/* Walk one data block's entries: structure, order (continuing from t->last), and the filter. */
static void check_data_block(checker *c, const block *b, uint64_t off, const uint8_t *ikey, size_t iklen,
                             const filter_blk *filter, tally *t) {
    iter *it = block_iter_new(b, NULL, NULL);
    if (!it) {
        problem(c, off, "out of memory");
        return;
    }
    uint64_t n = 0;
    for (it->seek_first(it); it->valid(it); it->next(it), n++) {
        size_t kn, vn;
        const uint8_t *k = it->key(it, &kn), *v = it->value(it, &vn);
        if (kn < IKEY_TRAILER + 1) {
            problem(c, off, "entry %llu: internal key of %zu bytes is too short", (unsigned long long)n, kn);
            break;
        }
        if (t->any && ikey_cmp(t->last.data, t->last.len, k, kn) >= 0)
            problem(c, off, "entry %llu: key not greater than the previous key", (unsigned long long)n);
        /* The index key before this block separates the blocks: a lookup of a key between it and this block's
         * first key would read the block before, miss, and answer absent. */
        if (n == 0 && t->prev_index.len && ikey_cmp(t->prev_index.data, t->prev_index.len, k, kn) >= 0)
            problem(c, off, "first key of the block is not greater than the previous block's index key");
        int type = ikey_type(k, kn);
        uint64_t seq = ikey_seq(k, kn);
        int64_t ts;
        const uint8_t *payload;
        size_t plen;
        if (type > KV_TYPE_BLOB) problem(c, off, "entry %llu: unknown entry type %d", (unsigned long long)n, type);
        if (entry_decode(v, vn, &ts, &payload, &plen) != 0)
            problem(c, off, "entry %llu: malformed entry value", (unsigned long long)n);
        bool new_ukey = !t->any || ukey_cmp(t->last.data, t->last.len - IKEY_TRAILER, k, kn - IKEY_TRAILER) != 0;
        if (filter && new_ukey && !bloom_may_contain(filter->data, filter->len, k, kn - IKEY_TRAILER))
            problem(c, off, "entry %llu: the bloom filter does not contain its key", (unsigned long long)n);
        if (!t->any && bytes_append(&t->p.smallest, k, kn)) problem(c, off, "out of memory");
        t->any = true;
        bytes_clear(&t->last);
        if (bytes_append(&t->last, k, kn)) {
            problem(c, off, "out of memory");
            break;
        }
        t->p.entries++;
        if (type == KV_TYPE_DELETE) t->p.tombstones++;
        if (seq < t->p.min_seq) t->p.min_seq = seq;
        if (seq > t->p.max_seq) t->p.max_seq = seq;
        t->p.raw_key_bytes += kn;
        t->p.raw_value_bytes += vn;
        t->p.user_keys += new_ukey;
    }
    if (it->status(it)) {
        problem(c, off, "%s", errdetail());
        t->complete = false;
    } else if (n == 0) {
        problem(c, off, "empty data block");
    }
    else if (t->any && ikey_cmp(t->last.data, t->last.len, ikey, iklen) > 0)
        problem(c, off, "last key of the block is greater than its index key");
    it->destroy(it);
    bytes_clear(&t->prev_index);
    if (bytes_append(&t->prev_index, ikey, iklen)) problem(c, off, "out of memory");
}

static void check_props(checker *c, const footer *f, const tally *t) {
    block *pb;
    const char *what;
    if (read_parsed_block(&c->s, f->props_off, f->props_size, &pb, &what)) {
        problem(c, f->props_off, "properties block: %s", errdetail());
        return;
    }
    sst_props p = {0};
    if (parse_props(&c->s, pb, f->props_off, &p, &what)) {
        problem(c, f->props_off, "properties block: %s", errdetail());
    } else if (t->complete) { /* else the counts cannot match and would only repeat the problems found */
        const struct {
            const char *name;
            uint64_t have, want;
        } nums[] = {
            {"entries", p.entries, t->p.entries},
            {"tombstones", p.tombstones, t->p.tombstones},
            {"min_seq", p.min_seq, t->p.entries ? t->p.min_seq : 0},
            {"max_seq", p.max_seq, t->p.max_seq},
            {"raw_key_bytes", p.raw_key_bytes, t->p.raw_key_bytes},
            {"raw_value_bytes", p.raw_value_bytes, t->p.raw_value_bytes},
            {"data_blocks", p.data_blocks, t->p.data_blocks},
        };
        for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
            if (nums[i].have != nums[i].want)
                problem(c, f->props_off, "property %s is %llu but the table has %llu", nums[i].name,
                        (unsigned long long)nums[i].have, (unsigned long long)nums[i].want);
        /* Tables written before user_keys existed lack it (0 with entries); readers then assume nothing of it. */
        if ((p.user_keys || !p.entries) && p.user_keys != t->p.user_keys)
            problem(c, f->props_off, "property user_keys is %llu but the table has %llu",
                    (unsigned long long)p.user_keys, (unsigned long long)t->p.user_keys);
        if (p.smallest.len != t->p.smallest.len ||
            (p.smallest.len && memcmp(p.smallest.data, t->p.smallest.data, p.smallest.len)))
            problem(c, f->props_off, "property smallest does not match the first key");
        if (p.largest.len != t->last.len || (p.largest.len && memcmp(p.largest.data, t->last.data, p.largest.len)))
            problem(c, f->props_off, "property largest does not match the last key");
    }
    sst_props_free(&p);
    block_free(pb);
}

long sst_check_file(kv_env *env, const char *path, const char *name, sst_problem_fn cb, void *ctx) {
    checker c = {.s = {env, NULL, name, strtoull(name, NULL, 10)}, .cb = cb, .ctx = ctx};
    int rc = env->open_read(env, path, &c.s.file);
    if (rc) return rc;
    uint64_t size;
    rc = env->size(env, c.s.file, &size);
    if (rc) {
        env->close(env, c.s.file);
        return rc;
    }
    footer f;
    const char *what;
    rc = read_footer(&c.s, size, &f, &what);
    if (rc) {
        if (rc == KV_ECORRUPT)
            problem(&c, size < SST_FOOTER ? 0 : size - SST_FOOTER, "%s", what);
        else
            c.problems = rc;
        goto done;
    }

    filter_blk *filter = NULL;
    if (f.filter_size) {
        if (read_filter(&c.s, f.filter_off, f.filter_size, &filter, &what)) {
            problem(&c, f.filter_off, "filter block: %s", errdetail());
        } else if (filter->len < 9 || filter->data[filter->len - 1] < 1 || filter->data[filter->len - 1] > 30) {
            problem(&c, f.filter_off, "malformed bloom filter");
            filter_free(filter);
            filter = NULL;
        }
    }

    tally t = {.p = {.min_seq = UINT64_MAX}, .complete = true};
    block *ib;
    iter *ii = NULL;
    if (read_parsed_block(&c.s, f.index_off, f.index_size, &ib, &what)) {
        problem(&c, f.index_off, "index block: %s", errdetail());
        t.complete = false;
    } else if (!(ii = block_iter_new(ib, NULL, NULL))) {
        problem(&c, f.index_off, "out of memory");
        t.complete = false;
        block_free(ib);
    } else {
        kv_bytes prev_ikey = {0};
        uint64_t expect = 0; /* data blocks tile [0, filter_off) in index order */
        for (ii->seek_first(ii); ii->valid(ii); ii->next(ii)) {
            size_t kn, hvn;
            const uint8_t *k = ii->key(ii, &kn), *hv = ii->value(ii, &hvn);
            uint64_t off, bsize;
            if (kn < IKEY_TRAILER + 1) {
                problem(&c, f.index_off, "index key of %zu bytes is too short", kn);
                t.complete = false;
                break;
            }
            if (prev_ikey.len && ikey_cmp(prev_ikey.data, prev_ikey.len, k, kn) >= 0)
                problem(&c, f.index_off, "index keys out of order");
            bytes_clear(&prev_ikey);
            if (bytes_append(&prev_ikey, k, kn)) {
                problem(&c, f.index_off, "out of memory");
                break;
            }
            if (!decode_handle(hv, hvn, f.filter_off, &off, &bsize) || off != expect) {
                problem(&c, f.index_off, "bad block handle in index block (block %llu)",
                        (unsigned long long)t.p.data_blocks);
                t.complete = false;
                break;
            }
            expect = off + bsize + TRAILER;
            t.p.data_blocks++;
            block *db;
            if (read_parsed_block(&c.s, off, bsize, &db, &what)) {
                problem(&c, off, "data block: %s", errdetail());
                t.complete = false;
                continue;
            }
            check_data_block(&c, db, off, k, kn, filter, &t);
            block_free(db);
        }
        if (ii->status(ii)) {
            problem(&c, f.index_off, "index block: %s", errdetail());
            t.complete = false;
        } else if (t.complete && expect != f.filter_off) {
            problem(&c, expect, "data blocks end at offset %llu but the filter starts at %llu",
                    (unsigned long long)expect, (unsigned long long)f.filter_off);
        }
        ii->destroy(ii);
        bytes_free(&prev_ikey);
        block_free(ib);
    }
    check_props(&c, &f, &t);
    if (filter) filter_free(filter);
    sst_props_free(&t.p);
    bytes_free(&t.last);
    bytes_free(&t.prev_index);
done:
    env->close(env, c.s.file);
    return c.problems;
}
