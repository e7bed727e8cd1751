/*
 * db_read.c — reads: point lookups, iterators, range and prefix scans, snapshots, prefix resolution.
 *
 * Invariants
 *  - A read takes references (under mu, briefly) on the memtable, the immutable memtables and the current version,
 *    then reads without locks; whatever it references cannot be freed or deleted under it.
 *  - A lookup searches newest to oldest: memtable, immutable memtables newest first, level-0 files newest first, then
 *    one file per deeper level. The first entry found with sequence <= the snapshot decides (a delete means absent).
 *  - The user iterator shows, for each user key of its keyspace, the newest entry visible at its snapshot, skipping
 *    keys whose newest visible entry is a delete. Its key and value stay valid until it moves.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "db_impl.h"
#include "dbformat.h"
#include "error.h"
#include "merge.h"

/* ---- references ------------------------------------------------------------------------------------------------- */

typedef struct read_refs {
    memtable *mems[DB_MAX_IMM + 1]; /* newest first */
    int nmems;
    version *v;
    uint64_t seq; /* the last sequence when they were taken: what they hold whole */
} read_refs;

static void refs_take(kv_db *db, read_refs *r) {
    pthread_mutex_lock(&db->mu);
    r->nmems = 0;
    memtable_ref(db->mem);
    r->mems[r->nmems++] = db->mem;
    for (int i = db->nimm - 1; i >= 0; i--) {
        memtable_ref(db->imm[i].mem);
        r->mems[r->nmems++] = db->imm[i].mem;
    }
    r->v = db->vs->current;
    version_ref(r->v);
    /* Under mu, where batches are published and memtables switched: these memtables and this version hold every
     * batch up to it, and no compaction can have dropped a version it sees. A sequence read before taking the
     * references could be older than what a compaction meanwhile assumed no reader needed. */
    r->seq = atomic_load(&db->last_seq);
    pthread_mutex_unlock(&db->mu);
}

static void refs_drop(kv_db *db, read_refs *r) {
    if (!r->v) return; /* none taken */
    for (int i = 0; i < r->nmems; i++) memtable_unref(r->mems[i]);
    pthread_mutex_lock(&db->mu);
    version_unref(r->v);
    pthread_mutex_unlock(&db->mu);
}

uint64_t db_snapshot_seq(kv_db *db, const kv_read_opts *ro) {
    if (ro && ro->snapshot) return ro->snapshot->seq;
    return atomic_load(&db->last_seq);
}

/* ---- point lookups ---------------------------------------------------------------------------------------------- */

static bool in_range(const file_meta *f, const uint8_t *ukey, size_t ulen) {
    return ukey_cmp(ukey, ulen, f->smallest.data, f->smallest.len - 8) >= 0 &&
           ukey_cmp(ukey, ulen, f->largest.data, f->largest.len - 8) <= 0;
}

/* A table the version lists must exist: its absence is corruption, never "key absent". */
int db_open_table(kv_db *db, uint64_t file_no, sst_reader **r) {
    int rc = table_cache_get(db->tables, file_no, r);
    if (rc == KV_ENOTFOUND)
        rc = kv_set_error(KV_ECORRUPT, "%06" PRIu64 ".sst: table file listed in the manifest is missing", file_no);
    return rc;
}

static int table_get(kv_db *db, const file_meta *f, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type,
                     kv_bytes *val, uint64_t *fseq) {
    sst_reader *r;
    int rc = db_open_table(db, f->file_no, &r);
    if (rc) return rc;
    rc = sst_reader_get(r, ukey, ulen, seq, type, val, fseq);
    sst_reader_unref(r);
    return rc;
}

/* Search the version for ukey; 1 found (raw entry value in *val), 0 absent, < 0 error. */
static int version_get(kv_db *db, version *v, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type, kv_bytes *val,
                       uint64_t *fseq) {
    for (size_t i = 0; i < v->nfiles[0]; i++) {
        const file_meta *f = v->files[0][i];
        if (!in_range(f, ukey, ulen)) continue;
        int rc = table_get(db, f, ukey, ulen, seq, type, val, fseq);
        if (rc) return rc;
    }
    for (int l = 1; l < KV_MAX_LEVELS; l++) {
        size_t lo = 0, hi = v->nfiles[l];
        while (lo < hi) { /* first file whose largest ukey >= ukey */
            size_t mid = (lo + hi) / 2;
            const file_meta *f = v->files[l][mid];
            if (ukey_cmp(f->largest.data, f->largest.len - 8, ukey, ulen) < 0) lo = mid + 1;
            else hi = mid;
        }
        if (lo < v->nfiles[l] && in_range(v->files[l][lo], ukey, ulen)) {
            int rc = table_get(db, v->files[l][lo], ukey, ulen, seq, type, val, fseq);
            if (rc) return rc;
        }
    }
    return 0;
}

/* db_get_entry in what r references (taken by the caller). */
static int get_entry_in(kv_db *db, read_refs *r, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type,
                        int64_t *ts, kv_bytes *payload, uint64_t *found_seq) {
    if (seq == DB_SEQ_LATEST) seq = r->seq;
    int rc = 0;
    const uint8_t *val = NULL;
    size_t vlen = 0;
    kv_bytes tbuf = {0};
    for (int i = 0; i < r->nmems && rc == 0; i++) rc = memtable_get(r->mems[i], ukey, ulen, seq, type, &val, &vlen, found_seq);
    if (rc == 0) {
        rc = version_get(db, r->v, ukey, ulen, seq, type, &tbuf, found_seq);
        if (rc == 1) {
            val = tbuf.data;
            vlen = tbuf.len;
        }
    }
    if (rc == 1) {
        const uint8_t *p;
        size_t plen;
        if (entry_decode(val, vlen, ts, &p, &plen) != 0) {
            rc = kv_set_error(KV_ECORRUPT, "malformed entry value for a key of %zu bytes", ulen - 1);
        } else if (*type == KV_TYPE_DELETE) {
            rc = 0;
        } else {
            bytes_clear(payload);
            if (bytes_append(payload, p, plen)) rc = KV_ENOMEM;
        }
    }
    bytes_free(&tbuf);
    return rc;
}

int db_get_entry(kv_db *db, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type, int64_t *ts,
                 kv_bytes *payload, uint64_t *found_seq) {
    read_refs r;
    refs_take(db, &r);
    int rc = get_entry_in(db, &r, ukey, ulen, seq, type, ts, payload, found_seq);
    refs_drop(db, &r);
    return rc;
}

static int make_ukey(uint8_t *ubuf, uint8_t ks, const void *key, size_t klen) {
    if (!key || klen == 0) return kv_set_error(KV_EINVAL, "empty key");
    if (klen > KV_MAX_KEY) return kv_set_error(KV_EINVAL, "key of %zu bytes is longer than %u", klen, KV_MAX_KEY);
    ubuf[0] = ks;
    memcpy(ubuf + 1, key, klen);
    return KV_OK;
}

/* Look up (ks, key) at the read options' snapshot: 1 found with type/payload, 0 absent, < 0 error. Returns with
 * the lookup's references in *r, which the caller drops (refs_drop) once it no longer reads what the entry names:
 * a blob reference's file is listed by r's version, so it is not deleted under the read even if the key is
 * overwritten, the entry compacted away and the file collected meanwhile. */
static int lookup(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, int *type, int64_t *ts,
                  kv_bytes *payload, uint64_t *fseq, read_refs *r) {
    r->v = NULL;
    uint8_t ubuf[KV_MAX_KEY + 1];
    int rc = make_ukey(ubuf, ro ? ro->keyspace : 0, key, klen);
    if (rc) return rc;
    refs_take(db, r);
    return get_entry_in(db, r, ubuf, klen + 1, ro && ro->snapshot ? ro->snapshot->seq : DB_SEQ_LATEST, type, ts,
                        payload, fseq);
}

static int blob_value(kv_db *db, const kv_bytes *payload, kv_buf *out) {
    uint64_t size;
    int rc = blob_ref_validate(payload->data, payload->len); /* before trusting its size for an allocation */
    if (!rc) rc = blob_ref_size(payload->data, payload->len, &size);
    if (rc) return rc;
    if (size > SIZE_MAX / 2)
        return kv_set_error(KV_ENOMEM, "value of %" PRIu64 " bytes is too large to read whole; use kv_read_range",
                            size);
    out->data = malloc(size ? (size_t)size : 1);
    if (!out->data) return kv_set_error(KV_ENOMEM, "no memory for a value of %" PRIu64 " bytes", size);
    size_t got = 0;
    rc = blob_value_read(db->blobs, payload->data, payload->len, 0, out->data, (size_t)size, &got);
    if (!rc && got != size) rc = kv_set_error(KV_ECORRUPT, "blob reference: value shorter than its size");
    if (rc) {
        free(out->data);
        out->data = NULL;
        return rc;
    }
    out->len = got;
    return KV_OK;
}

/* size and stored of a value from its entry: for a blob reference (docs/format.md, "Blob reference") its size field,
 * and, for the direct form, the lengths of its data extents (holes have file number 0); the paged form lists its
 * extents in pages, so stored is taken as size. KV_ECORRUPT for a reference that does not parse. */
static int value_sizes(int type, const uint8_t *p, size_t len, kv_info *info) {
    info->external = type == KV_TYPE_BLOB;
    info->size = info->stored = len;
    if (type != KV_TYPE_BLOB) return KV_OK;
    const uint8_t *end = p + len;
    uint64_t size = 0, n = 0;
    if (!(p = get_varint64(p, end, &size)) || !(p = get_varint64(p, end, &n)))
        return kv_set_error(KV_ECORRUPT, "malformed blob reference");
    info->size = info->stored = size;
    if (n == 0) return KV_OK; /* empty, or paged */
    uint64_t stored = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t f[5];
        for (int j = 0; j < 5; j++)
            if (!(p = get_varint64(p, end, &f[j]))) return kv_set_error(KV_ECORRUPT, "malformed blob reference");
        if (f[0] != 0) stored += f[4];
    }
    info->stored = stored <= size ? stored : size;
    return KV_OK;
}

static int get_locked(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, kv_buf *out, kv_info *info) {
    int type;
    int64_t ts;
    uint64_t fseq;
    kv_bytes payload = {0};
    read_refs r;
    out->data = NULL;
    out->len = 0;
    int rc = lookup(db, ro, key, klen, &type, &ts, &payload, &fseq, &r);
    if (rc == 1 && info) {
        info->timestamp_ms = ts;
        info->sequence = fseq;
        (void)value_sizes(type, payload.data, payload.len, info); /* a bad reference fails blob_value below */
    }
    if (rc == 0) rc = KV_ENOTFOUND;
    else if (rc == 1 && type == KV_TYPE_BLOB) {
        rc = blob_value(db, &payload, out);
        if (!rc && info) info->size = out->len;
    } else if (rc == 1) {
        out->data = payload.data;
        out->len = payload.len;
        payload.data = NULL;
        rc = KV_OK;
    }
    refs_drop(db, &r);
    bytes_free(&payload);
    return rc;
}

int kv_get(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, kv_buf *out) {
    if (!out) return kv_set_error(KV_EINVAL, "kv_get: NULL out");
    *out = (kv_buf){0}; /* every failure leaves it empty, a closed handle's too */
    if (!db_enter(db)) return KV_ECLOSED;
    int rc = get_locked(db, ro, key, klen, out, NULL);
    db_leave(db);
    return rc;
}

int kv_get_with_info(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, kv_buf *out, kv_info *info) {
    if (!out || !info) return kv_set_error(KV_EINVAL, "kv_get_with_info: NULL out or info");
    *out = (kv_buf){0};
    if (!db_enter(db)) return KV_ECLOSED;
    int rc = get_locked(db, ro, key, klen, out, info);
    db_leave(db);
    return rc;
}

int kv_contains(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen) {
    if (!db_enter(db)) return KV_ECLOSED;
    int type;
    int64_t ts;
    uint64_t fseq;
    kv_bytes payload = {0};
    read_refs r;
    int rc = lookup(db, ro, key, klen, &type, &ts, &payload, &fseq, &r);
    refs_drop(db, &r);
    bytes_free(&payload);
    db_leave(db);
    return rc;
}

int kv_get_many(kv_db *db, const kv_read_opts *ro, size_t n, const kv_slice *keys, kv_buf *vals, int *status) {
    if (n && (!keys || !vals || !status)) return kv_set_error(KV_EINVAL, "kv_get_many: NULL arrays");
    if (!db_enter(db)) return KV_ECLOSED;
    /* One snapshot for all, so the answers are consistent with each other: a registered one (unless the caller gave
     * one), so that no compaction drops a version it sees between two keys. */
    kv_read_opts o = {.keyspace = ro ? ro->keyspace : 0, .snapshot = ro ? ro->snapshot : NULL};
    kv_snapshot *own = NULL;
    if (!o.snapshot) {
        int rc = kv_snapshot_new(db, &own);
        if (rc) {
            db_leave(db);
            return rc;
        }
        o.snapshot = own;
    }
    for (size_t i = 0; i < n; i++) status[i] = get_locked(db, &o, keys[i].data, keys[i].len, &vals[i], NULL);
    if (own) kv_snapshot_release(db, own);
    db_leave(db);
    return KV_OK;
}

int kv_stat(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, kv_info *info) {
    if (!info) return kv_set_error(KV_EINVAL, "kv_stat: NULL info");
    if (!db_enter(db)) return KV_ECLOSED;
    int type;
    kv_bytes payload = {0};
    read_refs r;
    int rc = lookup(db, ro, key, klen, &type, &info->timestamp_ms, &payload, &info->sequence, &r);
    refs_drop(db, &r);
    if (rc == 0) rc = KV_ENOTFOUND;
    else if (rc == 1) {
        rc = value_sizes(type, payload.data, payload.len, info);
    }
    bytes_free(&payload);
    db_leave(db);
    return rc;
}

int kv_read_range(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, uint64_t off, void *buf,
                  size_t len, size_t *nread) {
    if ((len && !buf) || !nread) return kv_set_error(KV_EINVAL, "kv_read_range: NULL buffer");
    if (!db_enter(db)) return KV_ECLOSED;
    int type;
    int64_t ts;
    uint64_t fseq;
    kv_bytes payload = {0};
    read_refs r;
    *nread = 0;
    int rc = lookup(db, ro, key, klen, &type, &ts, &payload, &fseq, &r);
    if (rc == 0) rc = KV_ENOTFOUND;
    else if (rc == 1 && type == KV_TYPE_BLOB) {
        rc = blob_value_read(db->blobs, payload.data, payload.len, off, buf, len, nread);
    } else if (rc == 1) {
        rc = KV_OK;
        if (off < payload.len && len) { /* buf may be NULL when len is 0 */
            size_t n = payload.len - (size_t)off < len ? payload.len - (size_t)off : len;
            memcpy(buf, payload.data + off, n);
            *nread = n;
        }
    }
    refs_drop(db, &r);
    bytes_free(&payload);
    db_leave(db);
    return rc;
}

int kv_seek_data(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, uint64_t off, bool hole,
                 uint64_t *at) {
    if (!at) return kv_set_error(KV_EINVAL, "kv_seek_data: NULL result");
    if (!db_enter(db)) return KV_ECLOSED;
    int type;
    int64_t ts;
    uint64_t fseq, size;
    kv_bytes payload = {0};
    read_refs r;
    int rc = lookup(db, ro, key, klen, &type, &ts, &payload, &fseq, &r);
    if (rc == 0) {
        rc = KV_ENOTFOUND;
    } else if (rc == 1) {
        kv_info info;
        rc = value_sizes(type, payload.data, payload.len, &info);
        size = info.size;
        if (!rc && off >= size)
            *at = size;
        else if (!rc && type == KV_TYPE_BLOB)
            rc = blob_value_seek(db->blobs, payload.data, payload.len, off, !hole, at);
        else if (!rc)
            *at = hole ? size : off; /* a value kept whole has no holes */
    }
    refs_drop(db, &r);
    bytes_free(&payload);
    db_leave(db);
    return rc;
}

/* ---- internal iterators ----------------------------------------------------------------------------------------- */

typedef struct iter_ctx {
    kv_db *db;
    bool fill_cache;
} iter_ctx;

static iter *open_table_iter(void *ctx, const file_meta *f) {
    iter_ctx *c = ctx;
    sst_reader *r;
    int rc = db_open_table(c->db, f->file_no, &r);
    if (rc) return iter_empty(rc);
    iter *it = sst_reader_iter(r, c->fill_cache);
    sst_reader_unref(r);
    return it ? it : iter_empty(KV_ENOMEM);
}

/* A merge over the referenced memtables and version. The returned iterator does not own the refs. */
static iter *build_internal_iter(kv_db *db, read_refs *r, iter_ctx *ctx) {
    size_t cap = (size_t)r->nmems + r->v->nfiles[0] + KV_MAX_LEVELS;
    iter **kids = calloc(cap, sizeof *kids);
    if (!kids) return NULL;
    size_t n = 0;
    for (int i = 0; i < r->nmems; i++) kids[n++] = memtable_iter(r->mems[i]);
    for (size_t i = 0; i < r->v->nfiles[0]; i++) kids[n++] = open_table_iter(ctx, r->v->files[0][i]);
    for (int l = 1; l < KV_MAX_LEVELS; l++)
        if (r->v->nfiles[l]) kids[n++] = level_iter_new(r->v->files[l], r->v->nfiles[l], open_table_iter, ctx);
    for (size_t i = 0; i < n; i++)
        if (!kids[i]) kids[i] = iter_empty(KV_ENOMEM);
    iter *m = merge_iter_new(kids, n);
    free(kids);
    (void)db;
    return m;
}

struct db_raw_iter {
    read_refs refs;
    iter_ctx ctx;
    iter *in;
};

int db_raw_iter_new(kv_db *db, bool fill_cache, db_raw_iter **out, iter **it) {
    db_raw_iter *r = calloc(1, sizeof *r);
    if (!r) return KV_ENOMEM;
    r->ctx = (iter_ctx){db, fill_cache};
    refs_take(db, &r->refs);
    r->in = build_internal_iter(db, &r->refs, &r->ctx);
    if (!r->in) {
        refs_drop(db, &r->refs);
        free(r);
        return KV_ENOMEM;
    }
    *out = r;
    *it = r->in;
    return KV_OK;
}

void db_raw_iter_free(kv_db *db, db_raw_iter *r) {
    if (!r) return;
    r->in->destroy(r->in);
    refs_drop(db, &r->refs);
    free(r);
}

/* ---- the user iterator ------------------------------------------------------------------------------------------ */

struct kv_iter {
    kv_db *db;
    read_refs refs;
    iter_ctx ctx;
    iter *in;
    uint64_t seq;
    uint8_t ks;
    bool valid, reverse;
    int status;
    const uint8_t *kp, *vp; /* the current entry: ukey (keyspace byte first) and payload. Moving forward they
                             * point into the inner iterator (valid until it moves), which stands on that entry;
                             * backward into key/val */
    size_t kl, vl;
    kv_bytes key;     /* saved copies, backward only */
    kv_bytes val;
    kv_bytes skip;    /* the user key being stepped over */
    int vtype;
    int64_t ts;
    uint64_t eseq;
    kv_bytes loaded;  /* a blob value read in full */
    bool is_loaded;
    kv_bytes seekbuf;
    kv_bytes lower, upper; /* bounds as ukeys (keyspace byte first); len 0 = none */
};

/* Is ukey (keyspace byte first) at or past the upper bound / below the lower bound? */
static bool past_upper(const kv_iter *it, const uint8_t *uk, size_t ul) {
    return it->upper.len && ukey_cmp(uk, ul, it->upper.data, it->upper.len) >= 0;
}
static bool before_lower(const kv_iter *it, const uint8_t *uk, size_t ul) {
    return it->lower.len && ukey_cmp(uk, ul, it->lower.data, it->lower.len) < 0;
}

static void it_fail(kv_iter *it, int rc) {
    it->valid = false;
    if (!it->status) it->status = rc;
}

/* Point the current entry at (ik, v) without copying (forward), or copy it (backward: copy true). */
static int set_entry(kv_iter *it, const uint8_t *ik, size_t klen, const uint8_t *v, size_t vlen, bool copy) {
    const uint8_t *p;
    size_t plen;
    if (entry_decode(v, vlen, &it->ts, &p, &plen)) return kv_set_error(KV_ECORRUPT, "malformed entry value");
    it->vtype = ikey_type(ik, klen);
    it->eseq = ikey_seq(ik, klen);
    it->is_loaded = false;
    if (copy) {
        bytes_clear(&it->key);
        bytes_clear(&it->val);
        if (bytes_append(&it->key, ik, klen - 8) || bytes_append(&it->val, p, plen)) return KV_ENOMEM;
        ik = it->key.data;
        p = it->val.data;
    }
    it->kp = ik;
    it->kl = klen - 8;
    it->vp = p;
    it->vl = plen;
    return KV_OK;
}

/* Forward: from the inner position, the first visible user key (> skip when skipping). */
static void find_next(kv_iter *it, bool skipping, kv_bytes *skip) {
    iter *in = it->in;
    while (in->valid(in)) {
        size_t kl;
        const uint8_t *k = in->key(in, &kl);
        if (kl < 9 || k[0] != it->ks || past_upper(it, k, kl - 8)) break;
        if (ikey_seq(k, kl) <= it->seq) {
            int t = ikey_type(k, kl);
            if (skipping && ukey_cmp(k, kl - 8, skip->data, skip->len) <= 0) {
                /* shadowed or deleted */
            } else if (t == KV_TYPE_DELETE) {
                bytes_clear(skip);
                if (bytes_append(skip, k, kl - 8)) { it_fail(it, KV_ENOMEM); return; }
                skipping = true;
            } else {
                size_t vl;
                const uint8_t *v = in->value(in, &vl);
                int rc = set_entry(it, k, kl, v, vl, false);
                if (rc) { it_fail(it, rc); return; }
                it->valid = true;
                return;
            }
        }
        in->next(in);
    }
    it->valid = false;
    if (in->status(in)) it_fail(it, in->status(in));
}

/* Backward: from the inner position, the previous visible user key; leaves the inner iterator before it. */
static void find_prev(kv_iter *it) {
    iter *in = it->in;
    int vtype = KV_TYPE_DELETE;
    while (in->valid(in)) {
        size_t kl;
        const uint8_t *k = in->key(in, &kl);
        if (kl < 9 || k[0] != it->ks || before_lower(it, k, kl - 8)) break;
        if (ikey_seq(k, kl) <= it->seq) {
            if (vtype != KV_TYPE_DELETE && ukey_cmp(k, kl - 8, it->key.data, it->key.len) < 0) break;
            vtype = ikey_type(k, kl);
            if (vtype == KV_TYPE_DELETE) {
                bytes_clear(&it->key);
                bytes_clear(&it->val);
            } else {
                size_t vl;
                const uint8_t *v = in->value(in, &vl);
                int rc = set_entry(it, k, kl, v, vl, true);
                if (rc) { it_fail(it, rc); return; }
            }
        }
        in->prev(in);
    }
    if (in->status(in)) { it_fail(it, in->status(in)); return; }
    it->valid = vtype != KV_TYPE_DELETE;
    it->reverse = true;
}

static void seek_ukey(kv_iter *it, const uint8_t *ukey, size_t ulen, uint64_t seq, int type) {
    bytes_clear(&it->seekbuf);
    if (bytes_reserve(&it->seekbuf, ulen + 8)) { it_fail(it, KV_ENOMEM); return; }
    ikey_build(it->seekbuf.data, ukey, ulen, seq, type);
    it->in->seek(it->in, it->seekbuf.data, ulen + 8);
}

int kv_iter_new(kv_db *db, const kv_read_opts *ro, kv_iter **out) {
    if (!out) return kv_set_error(KV_EINVAL, "kv_iter_new: NULL out");
    if (!db_enter(db)) return KV_ECLOSED;
    kv_iter *it = calloc(1, sizeof *it);
    if (!it) {
        db_leave(db);
        return KV_ENOMEM;
    }
    it->db = db;
    it->seq = db_snapshot_seq(db, ro);
    it->ks = ro ? ro->keyspace : 0;
    it->ctx = (iter_ctx){db, true};
    if (ro && ((ro->lower_len && (!ro->lower_bound || ro->lower_len > KV_MAX_KEY)) ||
               (ro->upper_len && (!ro->upper_bound || ro->upper_len > KV_MAX_KEY)))) {
        free(it);
        db_leave(db);
        return kv_set_error(KV_EINVAL, "kv_iter_new: bad iteration bounds");
    }
    if (ro && ro->lower_len &&
        (bytes_append(&it->lower, &it->ks, 1) || bytes_append(&it->lower, ro->lower_bound, ro->lower_len))) {
        bytes_free(&it->lower);
        free(it);
        db_leave(db);
        return KV_ENOMEM;
    }
    if (ro && ro->upper_len &&
        (bytes_append(&it->upper, &it->ks, 1) || bytes_append(&it->upper, ro->upper_bound, ro->upper_len))) {
        bytes_free(&it->lower);
        bytes_free(&it->upper);
        free(it);
        db_leave(db);
        return KV_ENOMEM;
    }
    refs_take(db, &it->refs);
    if (!(ro && ro->snapshot)) it->seq = it->refs.seq; /* not one read before the references (refs_take) */
    it->in = build_internal_iter(db, &it->refs, &it->ctx);
    if (!it->in) {
        refs_drop(db, &it->refs);
        free(it);
        db_leave(db);
        return KV_ENOMEM;
    }
    atomic_fetch_add(&db->pins, 1);
    *out = it;
    db_leave(db);
    return KV_OK;
}

void kv_iter_free(kv_iter *it) {
    if (!it) return;
    kv_db *db = it->db;
    it->in->destroy(it->in);
    refs_drop(db, &it->refs);
    bytes_free(&it->key);
    bytes_free(&it->val);
    bytes_free(&it->skip);
    bytes_free(&it->lower);
    bytes_free(&it->upper);
    bytes_free(&it->loaded);
    bytes_free(&it->seekbuf);
    free(it);
    db_unpin(db);
}

void kv_iter_seek_first(kv_iter *it) {
    it->reverse = false;
    uint8_t k = it->ks;
    if (it->lower.len) seek_ukey(it, it->lower.data, it->lower.len, it->seq, KV_TYPE_FOR_SEEK);
    else seek_ukey(it, &k, 1, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
    find_next(it, false, &it->skip);
}

void kv_iter_seek_last(kv_iter *it) {
    if (it->upper.len) {
        /* everything before the (exclusive) upper bound */
        seek_ukey(it, it->upper.data, it->upper.len, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
        if (it->in->valid(it->in)) it->in->prev(it->in);
        else it->in->seek_last(it->in);
    } else if (it->ks == 255) {
        it->in->seek_last(it->in);
    } else {
        uint8_t k = (uint8_t)(it->ks + 1);
        seek_ukey(it, &k, 1, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
        if (it->in->valid(it->in)) it->in->prev(it->in);
        else it->in->seek_last(it->in);
    }
    find_prev(it);
}

void kv_iter_seek(kv_iter *it, const void *key, size_t klen) {
    uint8_t ub[KV_MAX_KEY + 1];
    it->reverse = false;
    /* A key longer than any: the first key >= it is the first key > its first KV_MAX_KEY bytes (no key is longer,
     * and those bytes alone sort before it). */
    bool cut = klen > KV_MAX_KEY;
    if (cut) klen = KV_MAX_KEY;
    ub[0] = it->ks;
    if (klen) memcpy(ub + 1, key, klen);
    if (before_lower(it, ub, klen + 1)) {
        kv_iter_seek_first(it);
        return;
    }
    seek_ukey(it, ub, klen + 1, it->seq, KV_TYPE_FOR_SEEK);
    find_next(it, false, &it->skip);
    size_t kl;
    const void *k = kv_iter_key(it, &kl);
    if (cut && k && kl == klen && memcmp(k, key, klen) == 0) kv_iter_next(it);
}

void kv_iter_seek_for_prev(kv_iter *it, const void *key, size_t klen) {
    uint8_t ub[KV_MAX_KEY + 1];
    if (klen > KV_MAX_KEY) klen = KV_MAX_KEY;
    ub[0] = it->ks;
    if (klen) memcpy(ub + 1, key, klen);
    if (past_upper(it, ub, klen + 1)) {
        kv_iter_seek_last(it);
        return;
    }
    /* the last possible entry of key: everything after it has a larger user key */
    seek_ukey(it, ub, klen + 1, 0, 0);
    if (it->in->valid(it->in)) it->in->prev(it->in);
    else it->in->seek_last(it->in);
    find_prev(it);
}

bool kv_iter_valid(const kv_iter *it) { return it && it->valid; }

void kv_iter_next(kv_iter *it) {
    if (!it->valid) return;
    kv_bytes *skip = &it->skip;
    if (skip->cap >= it->kl) { /* the usual case: no call to grow it */
        memcpy(skip->data, it->kp, it->kl);
        skip->len = it->kl;
    } else {
        bytes_clear(skip);
        if (bytes_append(skip, it->kp, it->kl)) { it_fail(it, KV_ENOMEM); return; }
    }
    if (it->reverse) {
        /* the inner iterator is before the current key: go back to it */
        it->reverse = false;
        seek_ukey(it, skip->data, skip->len, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
    } else {
        /* the inner iterator is on the current entry (find_next stopped there): step past it here rather than
         * have find_next read it again only to find it equal to skip */
        it->in->next(it->in);
    }
    find_next(it, true, skip);
}

void kv_iter_prev(kv_iter *it) {
    if (!it->valid) return;
    if (!it->reverse) {
        /* step the inner iterator to just before the current key's entries */
        /* find_prev compares against the saved key: save it before the inner iterator moves */
        bytes_clear(&it->key);
        if (bytes_append(&it->key, it->kp, it->kl)) { it_fail(it, KV_ENOMEM); return; }
        seek_ukey(it, it->key.data, it->key.len, KV_MAX_SEQUENCE, KV_TYPE_FOR_SEEK);
        if (it->in->valid(it->in)) it->in->prev(it->in);
        else it->in->seek_last(it->in);
    }
    find_prev(it);
}

const void *kv_iter_key(const kv_iter *it, size_t *klen) {
    if (!it || !it->valid) {
        if (klen) *klen = 0;
        return NULL;
    }
    if (klen) *klen = it->kl - 1;
    return it->kp + 1;
}

int kv_iter_value(kv_iter *it, const void **val, uint64_t *vlen) {
    if (!it || !val || !vlen) return kv_set_error(KV_EINVAL, "kv_iter_value: NULL argument");
    if (!it->valid) return kv_set_error(KV_EINVAL, "the iterator is not positioned on an entry");
    if (it->vtype != KV_TYPE_BLOB) {
        *val = it->vp;
        *vlen = it->vl;
        return KV_OK;
    }
    if (!it->is_loaded) {
        kv_buf b = {0};
        kv_bytes payload = {(uint8_t *)it->vp, it->vl, it->vl};
        int rc = blob_value(it->db, &payload, &b);
        if (rc) return rc;
        bytes_free(&it->loaded);
        it->loaded = (kv_bytes){b.data, (size_t)b.len, (size_t)b.len};
        it->is_loaded = true;
    }
    *val = it->loaded.data;
    *vlen = it->loaded.len;
    return KV_OK;
}

int kv_iter_info(kv_iter *it, kv_info *info) {
    if (!it || !info) return kv_set_error(KV_EINVAL, "kv_iter_info: NULL argument");
    if (!it->valid) return kv_set_error(KV_EINVAL, "the iterator is not positioned on an entry");
    info->timestamp_ms = it->ts;
    info->sequence = it->eseq;
    return value_sizes(it->vtype, it->vp, it->vl, info);
}

int kv_iter_status(const kv_iter *it) { return it ? it->status : kv_set_error(KV_EINVAL, "kv_iter_status: NULL"); }

int db_iter_payload(kv_iter *it, const uint8_t **p, size_t *plen) {
    if (!it->valid) return KV_EINVAL;
    *p = it->vp;
    *plen = it->vl;
    return KV_OK;
}

/* ---- scans ---------------------------------------------------------------------------------------------------------- */

static int key_cmp(const void *a, size_t al, const void *b, size_t bl) { return ukey_cmp(a, al, b, bl); }

int kv_range_scan(kv_db *db, const kv_read_opts *ro, const void *start, size_t slen, const void *end, size_t elen,
                  uint64_t limit, bool forward, kv_scan_fn cb, void *ctx) {
    if (!cb || (slen && !start) || (elen && !end)) return kv_set_error(KV_EINVAL, "kv_range_scan: bad arguments");
    if (slen > KV_MAX_KEY || elen > KV_MAX_KEY)
        return kv_set_error(KV_EINVAL, "kv_range_scan: a bound longer than the longest key");
    kv_iter *it;
    int rc = kv_iter_new(db, ro, &it);
    if (rc) return rc;
    uint64_t n = 0;
    if (forward) {
        if (slen) kv_iter_seek(it, start, slen);
        else kv_iter_seek_first(it);
    } else {
        if (elen) kv_iter_seek_for_prev(it, end, elen);
        else kv_iter_seek_last(it);
    }
    while (rc == KV_OK && kv_iter_valid(it) && (limit == 0 || n < limit)) {
        size_t kl;
        const void *k = kv_iter_key(it, &kl);
        if (forward && elen && key_cmp(k, kl, end, elen) > 0) break;
        if (!forward && slen && key_cmp(k, kl, start, slen) < 0) break;
        const void *v;
        uint64_t vl;
        rc = kv_iter_value(it, &v, &vl);
        if (rc) break;
        n++;
        if (cb(ctx, k, kl, v, vl)) break;
        if (forward) kv_iter_next(it);
        else kv_iter_prev(it);
    }
    if (!rc) rc = kv_iter_status(it);
    kv_iter_free(it);
    return rc;
}

typedef struct prefix_ctx {
    const uint8_t *prefix;
    size_t plen;
    kv_scan_fn cb;
    void *ctx;
} prefix_ctx;

static int prefix_cb(void *c, const void *k, size_t kl, const void *v, uint64_t vl) {
    prefix_ctx *p = c;
    if (kl < p->plen || (p->plen && memcmp(k, p->prefix, p->plen) != 0)) return 1;
    return p->cb(p->ctx, k, kl, v, vl);
}

int kv_prefix_scan(kv_db *db, const kv_read_opts *ro, const void *prefix, size_t plen, uint64_t limit,
                   bool forward, kv_scan_fn cb, void *ctx) {
    if (!cb || (plen && !prefix)) return kv_set_error(KV_EINVAL, "kv_prefix_scan: bad arguments");
    if (plen > KV_MAX_KEY) return kv_set_error(KV_EINVAL, "prefix longer than the longest key");
    prefix_ctx pc = {prefix, plen, cb, ctx};
    if (forward) return kv_range_scan(db, ro, prefix, plen, NULL, 0, limit, true, prefix_cb, &pc);
    /* backward: from the last key with the prefix = the last key <= prefix followed by 0xff... */
    uint8_t *end = malloc(KV_MAX_KEY);
    if (!end) return KV_ENOMEM;
    if (plen) memcpy(end, prefix, plen);
    memset(end + plen, 0xff, KV_MAX_KEY - plen);
    int rc = kv_range_scan(db, ro, prefix, plen, end, KV_MAX_KEY, limit, false, prefix_cb, &pc);
    free(end);
    return rc;
}

/* ---- snapshots ------------------------------------------------------------------------------------------------------ */

int kv_snapshot_new(kv_db *db, kv_snapshot **out) {
    if (!out) return kv_set_error(KV_EINVAL, "kv_snapshot_new: NULL out");
    if (!db_enter(db)) return KV_ECLOSED;
    kv_snapshot *s = calloc(1, sizeof *s);
    if (!s) {
        db_leave(db);
        return KV_ENOMEM;
    }
    pthread_mutex_lock(&db->mu);
    s->seq = atomic_load(&db->last_seq);
    s->prev = db->snaps.prev;
    s->next = &db->snaps;
    db->snaps.prev->next = s;
    db->snaps.prev = s;
    pthread_mutex_unlock(&db->mu);
    *out = s;
    db_leave(db);
    return KV_OK;
}

void kv_snapshot_release(kv_db *db, kv_snapshot *s) {
    if (!db || !s) return;
    pthread_mutex_lock(&db->mu);
    s->prev->next = s->next;
    s->next->prev = s->prev;
    pthread_mutex_unlock(&db->mu);
    free(s);
}

uint64_t kv_snapshot_sequence(const kv_snapshot *s) { return s ? s->seq : 0; }

/* ---- prefix resolution ---------------------------------------------------------------------------------------------- */

static int copy_key(kv_iter *it, kv_buf *b) {
    size_t kl;
    const void *k = kv_iter_key(it, &kl);
    b->data = malloc(kl);
    if (!b->data) return KV_ENOMEM;
    memcpy(b->data, k, kl);
    b->len = kl;
    return KV_OK;
}

static bool has_prefix(kv_iter *it, const void *prefix, size_t plen) {
    size_t kl;
    const void *k = kv_iter_key(it, &kl);
    return kv_iter_valid(it) && kl >= plen && (plen == 0 || memcmp(k, prefix, plen) == 0);
}

int kv_resolve_prefix(kv_db *db, const kv_read_opts *ro, const void *prefix, size_t plen, kv_buf *key,
                      kv_buf *second) {
    if (!key || (plen && !prefix)) return kv_set_error(KV_EINVAL, "kv_resolve_prefix: bad arguments");
    key->data = NULL;
    key->len = 0;
    if (second) *second = (kv_buf){0};
    kv_iter *it;
    int rc = kv_iter_new(db, ro, &it);
    if (rc) return rc;
    kv_iter_seek(it, prefix, plen);
    if (!has_prefix(it, prefix, plen)) {
        rc = kv_iter_status(it) ? kv_iter_status(it) : kv_set_error(KV_ENOTFOUND, "no key has that prefix");
    } else {
        rc = copy_key(it, key);
        kv_iter_next(it);
        if (!rc && has_prefix(it, prefix, plen)) {
            rc = second ? copy_key(it, second) : KV_OK;
            if (!rc) rc = kv_set_error(KV_EAMBIGUOUS, "more than one key has that prefix");
        } else if (!rc && kv_iter_status(it)) {
            rc = kv_iter_status(it);
        }
    }
    kv_iter_free(it);
    if (rc && rc != KV_EAMBIGUOUS) kv_buf_free(key);
    return rc;
}

static size_t common_prefix(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    size_t n = al < bl ? al : bl, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

int kv_shortest_unique_prefix(kv_db *db, const kv_read_opts *ro, const void *key, size_t klen, size_t *plen) {
    if (!plen || !key || klen == 0) return kv_set_error(KV_EINVAL, "kv_shortest_unique_prefix: bad arguments");
    kv_iter *it;
    int rc = kv_iter_new(db, ro, &it);
    if (rc) return rc;
    kv_iter_seek(it, key, klen);
    size_t kl;
    const uint8_t *k = kv_iter_key(it, &kl);
    if (!kv_iter_valid(it) || kl != klen || memcmp(k, key, klen) != 0) {
        rc = kv_iter_status(it) ? kv_iter_status(it) : kv_set_error(KV_ENOTFOUND, "no such key");
        kv_iter_free(it);
        return rc;
    }
    size_t need = 0;
    bool prefix_of_next = false;
    kv_iter_next(it);
    if (kv_iter_valid(it)) {
        k = kv_iter_key(it, &kl);
        size_t c = common_prefix(key, klen, k, kl);
        if (c == klen) prefix_of_next = true;
        if (c > need) need = c;
    }
    kv_iter_seek(it, key, klen);
    kv_iter_prev(it);
    if (kv_iter_valid(it)) {
        k = kv_iter_key(it, &kl);
        size_t c = common_prefix(key, klen, k, kl);
        if (c > need) need = c;
    }
    rc = kv_iter_status(it);
    kv_iter_free(it);
    if (rc) return rc;
    if (prefix_of_next) {
        *plen = klen;
        return kv_set_error(KV_EAMBIGUOUS, "the key is a prefix of another key");
    }
    *plen = need + 1 <= klen ? need + 1 : klen;
    return KV_OK;
}
