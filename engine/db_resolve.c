/*
 * db_resolve.c — turning a write batch into its log record, and streams.
 *
 * A batch may hold operations whose result depends on the current value (move, write_at, truncate). The leader
 * resolves them, alone in its group, against the latest state plus the batch's own earlier operations, into plain
 * puts, blob-reference puts and deletes. Large values go to the shared blob file here, so the log record and the
 * memtable only ever hold small payloads.
 *
 * Invariants
 *  - The resolved record holds at most one operation per key (the last one wins), so every entry of a batch has a
 *    distinct internal key (the batch shares one sequence number).
 *  - Resolution writes nothing but blob bytes; if it fails, those bytes are unreferenced garbage for blob GC.
 *  - Lock order: blob_mu before mu. Nobody takes blob_mu while holding mu.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_impl.h"
#include "dbformat.h"
#include "error.h"

/* ---- blob files -------------------------------------------------------------------------------------------------- */

/* Create a blob file registered in the version (caller holds blob_mu if it is the shared one, never mu). */
int db_new_blob_file(kv_db *db, blob_writer **out) {
    pthread_mutex_lock(&db->mu);
    uint64_t no = vset_new_file_number(db->vs);
    pending_add(db, no);
    pthread_mutex_unlock(&db->mu);
    char path[4096];
    file_name(path, sizeof path, db->dir, no, "blob");
    int rc = blob_writer_new(db->env, path, no, out);
    /* test_crash: sync the header too, before the manifest lists the file: else a power loss leaves a listed blob
     * file of 0 bytes, which kv_check reports */
    if (!rc) rc = blob_writer_sync(*out);
    if (!rc) rc = db->env->sync_dir(db->env, db->dir);
    pthread_mutex_lock(&db->mu);
    if (!rc) {
        version_edit e;
        edit_init(&e);
        rc = edit_add_blob(&e, no);
        if (!rc) rc = vset_log_and_apply(db->vs, &e);
        edit_free(&e);
    }
    if (rc) {
        pending_remove(db, no);
        if (*out) blob_writer_close(*out);
        *out = NULL;
        kv_env_remove_quietly(db->env, path);
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

void db_close_new_blob_file(kv_db *db, blob_writer *w) {
    uint64_t no = blob_writer_file_no(w);
    blob_writer_close(w);
    pthread_mutex_lock(&db->mu);
    pending_remove(db, no);
    pthread_mutex_unlock(&db->mu);
}

/* Take blob file `no`, which holds no record anything refers to, out of the version and delete it. Best effort: on a
 * full disk the manifest edit can fail, and the file then stays listed (a valid, empty blob file). Caller holds mu. */
static void blob_file_drop(kv_db *db, uint64_t no) {
    version_edit e;
    edit_init(&e);
    if (edit_delete_blob(&e, no) == KV_OK && vset_log_and_apply(db->vs, &e) == KV_OK) db_delete_obsolete_files(db);
    edit_free(&e);
}

int db_blob_writer_retire(kv_db *db) {
    if (!db->blob_w) return KV_OK;
    int rc = blob_writer_sync(db->blob_w);
    if (rc == KV_OK) {
        blob_writer_close(db->blob_w);
        db->blob_w = NULL;
        db->blob_dirty = false;
    } else {
        db_blob_sync_failed(db, blob_writer_file_no(db->blob_w)); /* retired into blob_lost */
    }
    return rc;
}

/* Append one record to the shared blob file (leader only). */
static int blob_append(kv_db *db, const void *data, size_t len, blob_extent *e) {
    pthread_mutex_lock(&db->blob_mu);
    int rc = KV_OK;
    if (db->blob_w && blob_writer_size(db->blob_w) >= db->opt.blob_file_bytes)
        (void)db_blob_writer_retire(db); /* full; this value goes to a new file whatever its sync said */
    if (!rc && !db->blob_w) {
        rc = db_new_blob_file(db, &db->blob_w);
        if (!rc) {
            /* listed in the version now; GC tells the active file apart by its number */
            pthread_mutex_lock(&db->mu);
            pending_remove(db, blob_writer_file_no(db->blob_w));
            pthread_mutex_unlock(&db->mu);
        }
    }
    if (!rc) {
        rc = blob_writer_add(db->blob_w, data, len, e);
        if (rc) {
            /* test_faults: a writer whose append failed refuses every later write (blob.c), which made every later
             * large value fail even once the cause (a full disk) was gone. Retire the file instead: cut a torn
             * chunk off (kv_check would report it), make the records before it durable (later syncs no longer see
             * this file), and let the next large value start a new file. */
            char msg[512], path[4096];
            snprintf(msg, sizeof msg, "%s", kv_errmsg());
            uint64_t no = blob_writer_file_no(db->blob_w);
            file_name(path, sizeof path, db->dir, no, "blob");
            uint64_t good = blob_writer_size(db->blob_w);
            blob_writer_close(db->blob_w);
            db->blob_w = NULL;
            kv_file *f;
            bool synced = false, sync_failed = false;
            if (db->env->truncate(db->env, path, good) == KV_OK && db->env->open_append(db->env, path, &f) == KV_OK) {
                synced = db->env->sync(db->env, f) == KV_OK;
                sync_failed = !synced;
                db->env->close(db->env, f);
            }
            if (good <= BLOB_HEADER) {
                /* It holds no record, so nothing refers to it: take it out of the version now. Else every large
                 * value retried on a full disk left one more empty file listed until a blob GC pass (which the
                 * kvfs tools never run). On failure it stays listed, empty and valid, for GC. */
                pthread_mutex_lock(&db->mu);
                blob_file_drop(db, no);
                pthread_mutex_unlock(&db->mu);
            } else if (sync_failed) {
                db_blob_sync_failed(db, no); /* a later fsync cannot vouch for what this one lost */
            } else if (!synced) {
                /* it may hold bytes of logged batches: the next sync must make them durable first */
                if (db->nblob_unsynced < sizeof db->blob_unsynced / sizeof db->blob_unsynced[0])
                    db->blob_unsynced[db->nblob_unsynced++] = no;
                else
                    db->blob_unsynced_lost = true;
            }
            db->blob_dirty = false; /* about blob_w, which is gone */
            kv_set_error(rc, "%s", msg);
        }
    }
    if (!rc) {
        db->blob_dirty = true;
        db_note_blob_bytes(db, len);
    }
    pthread_mutex_unlock(&db->blob_mu);
    return rc;
}

/* ---- the overlay: this batch's resolved operations --------------------------------------------------------------- */

typedef struct rop {
    int type;
    kv_bytes ukey;
    kv_bytes payload;
} rop;

typedef struct overlay {
    rop *ops;
    size_t n, cap;
    uint32_t *slots; /* open addressing: index+1, 0 = empty */
    size_t nslots;
} overlay;

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void overlay_free(overlay *o) {
    for (size_t i = 0; i < o->n; i++) {
        bytes_free(&o->ops[i].ukey);
        bytes_free(&o->ops[i].payload);
    }
    free(o->ops);
    free(o->slots);
}

static int overlay_rehash(overlay *o) {
    size_t ns = o->nslots ? o->nslots * 2 : 64;
    uint32_t *s = calloc(ns, sizeof *s);
    if (!s) return KV_ENOMEM;
    for (size_t i = 0; i < o->n; i++) {
        size_t h = hash_bytes(o->ops[i].ukey.data, o->ops[i].ukey.len) & (ns - 1);
        while (s[h]) h = (h + 1) & (ns - 1);
        s[h] = (uint32_t)(i + 1);
    }
    free(o->slots);
    o->slots = s;
    o->nslots = ns;
    return KV_OK;
}

static rop *overlay_find(overlay *o, const uint8_t *ukey, size_t ulen) {
    if (!o->nslots) return NULL;
    size_t h = hash_bytes(ukey, ulen) & (o->nslots - 1);
    while (o->slots[h]) {
        rop *r = &o->ops[o->slots[h] - 1];
        if (r->ukey.len == ulen && memcmp(r->ukey.data, ukey, ulen) == 0) return r;
        h = (h + 1) & (o->nslots - 1);
    }
    return NULL;
}

/* Set the resolved operation for ukey (replacing an earlier one of this batch). */
static int overlay_set(overlay *o, const uint8_t *ukey, size_t ulen, int type, const uint8_t *payload, size_t plen) {
    rop *r = overlay_find(o, ukey, ulen);
    if (!r) {
        if ((o->n + 1) * 2 > o->nslots && overlay_rehash(o)) return KV_ENOMEM;
        if (o->n == o->cap) {
            size_t cap = o->cap ? o->cap * 2 : 8;
            rop *p = realloc(o->ops, cap * sizeof *p);
            if (!p) return KV_ENOMEM;
            o->ops = p;
            o->cap = cap;
        }
        r = &o->ops[o->n++];
        memset(r, 0, sizeof *r);
        if (bytes_append(&r->ukey, ukey, ulen)) return KV_ENOMEM;
        size_t h = hash_bytes(ukey, ulen) & (o->nslots - 1);
        while (o->slots[h]) h = (h + 1) & (o->nslots - 1);
        o->slots[h] = (uint32_t)o->n;
    }
    r->type = type;
    if (payload == r->payload.data && plen == r->payload.len) return KV_OK;
    kv_bytes nb = {0};
    if (bytes_append(&nb, payload, plen)) return KV_ENOMEM;
    bytes_free(&r->payload);
    r->payload = nb;
    return KV_OK;
}

/* The current state of ukey: from the batch so far, else from the store (its write time in *ts, if asked; one from
 * the batch keeps *ts). type KV_TYPE_DELETE means absent. */
static int current_state_ts(kv_db *db, overlay *o, const uint8_t *ukey, size_t ulen, int *type, kv_bytes *payload,
                            int64_t *ts_out) {
    rop *r = overlay_find(o, ukey, ulen);
    bytes_clear(payload);
    if (r) {
        *type = r->type;
        return bytes_append(payload, r->payload.data, r->payload.len);
    }
    int64_t ts;
    uint64_t fseq;
    int rc = db_get_entry(db, ukey, ulen, DB_SEQ_LATEST, type, ts_out ? ts_out : &ts, payload, &fseq);
    if (rc < 0) return rc;
    if (rc == 0) *type = KV_TYPE_DELETE;
    return KV_OK;
}

static int current_state(kv_db *db, overlay *o, const uint8_t *ukey, size_t ulen, int *type, kv_bytes *payload) {
    return current_state_ts(db, o, ukey, ulen, type, payload, NULL);
}

/* ---- value transformations ------------------------------------------------------------------------------------------ */

/* Turn an inline value into a blob reference (its bytes become one record). */
static int inline_to_ref(kv_db *db, const kv_bytes *val, blob_ref *ref) {
    memset(ref, 0, sizeof *ref);
    if (val->len == 0) return KV_OK;
    blob_extent e;
    int rc = blob_append(db, val->data, val->len, &e);
    if (!rc) rc = blob_ref_splice(ref, 0, &e);
    return rc;
}

static int ref_payload(const blob_ref *ref, kv_bytes *out) {
    bytes_clear(out);
    return blob_ref_encode(ref, out);
}

/* The first size bytes of a blob value (either form), zeros past its end: a value cut below the threshold. */
static int ref_to_inline(kv_db *db, const kv_bytes *ref, uint64_t size, kv_bytes *out) {
    bytes_clear(out);
    if (bytes_reserve(out, (size_t)size)) return KV_ENOMEM;
    size_t got = 0;
    int rc = blob_value_read(db->blobs, ref->data, ref->len, 0, out->data, (size_t)size, &got);
    if (rc) return rc;
    if (size > got) memset(out->data + got, 0, (size_t)size - got); /* out->data may be NULL for size 0 */
    out->len = (size_t)size;
    return KV_OK;
}

static int pager_append(void *db, const void *data, size_t len, blob_extent *e) { return blob_append(db, data, len, e); }

/* write_at / truncate / zero_range on the state (type, cur); result in (*type, out). A zeroed range is a hole
 * spliced in where the value is a blob reference (its bytes then wait for blob GC), zeros written where it is kept
 * whole; like a write, it extends the value when it reaches past the end. */
static int apply_change(kv_db *db, int *type, kv_bytes *cur, const batch_op *op, const uint8_t *data, kv_bytes *out) {
    uint64_t thr = db->opt.blob_threshold;
    bytes_clear(out);
    if (*type == KV_TYPE_DELETE) {
        *type = KV_TYPE_VALUE;
        bytes_clear(cur);
    }
    if (*type == KV_TYPE_VALUE) {
        uint64_t n = cur->len;
        uint64_t newsize = op->kind == BOP_TRUNCATE ? op->off : (op->len == 0 ? n : (op->off + op->len > n ? op->off + op->len : n));
        if (newsize < thr) {
            if (bytes_append(out, cur->data, (size_t)(n < newsize ? n : newsize))) return KV_ENOMEM;
            if (out->len < newsize) {
                if (bytes_reserve(out, (size_t)(newsize - out->len))) return KV_ENOMEM;
                memset(out->data + out->len, 0, (size_t)(newsize - out->len));
                out->len = (size_t)newsize;
            }
            if (op->kind == BOP_WRITE_AT && op->len) memcpy(out->data + op->off, data, (size_t)op->len);
            if (op->kind == BOP_ZERO_RANGE && op->len) memset(out->data + op->off, 0, (size_t)op->len);
            return KV_OK;
        }
        /* grows past the threshold: becomes a blob reference */
        blob_ref ref;
        int rc = inline_to_ref(db, cur, &ref);
        if (!rc && op->kind == BOP_TRUNCATE) rc = blob_ref_truncate(&ref, newsize);
        if (!rc && op->kind == BOP_WRITE_AT) {
            blob_extent e;
            rc = blob_append(db, data, (size_t)op->len, &e);
            if (!rc) rc = blob_ref_splice(&ref, op->off, &e);
        }
        if (!rc && op->kind == BOP_ZERO_RANGE) rc = blob_ref_splice(&ref, op->off, &(blob_extent){.len = op->len});
        if (!rc) rc = ref_payload(&ref, out);
        blob_ref_free(&ref);
        *type = KV_TYPE_BLOB;
        return rc;
    }
    /* a blob reference, direct or paged (blob_pages.h): a change costs the same however fragmented the value is */
    blob_pager pg = {db->blobs, pager_append, db, (size_t)db->opt.blob_page_extents};
    if (op->kind == BOP_TRUNCATE) {
        if (op->off >= thr) return blob_value_truncate(&pg, cur->data, cur->len, op->off, out);
        *type = KV_TYPE_VALUE;
        return ref_to_inline(db, cur, op->off, out);
    }
    if (op->len == 0) return bytes_append(out, cur->data, cur->len);
    if (op->kind == BOP_ZERO_RANGE) return blob_value_splice(&pg, cur->data, cur->len, op->off, &(blob_extent){.len = op->len}, out);
    blob_extent e;
    int rc = blob_append(db, data, (size_t)op->len, &e);
    if (!rc) rc = blob_value_splice(&pg, cur->data, cur->len, op->off, &e, out);
    return rc;
}

/* copy_range: bytes [op->off, op->off + n) of the source (stype, src) over the destination (type, cur) at op->off2;
 * result in (*type, out). A copy shorter than the blob threshold, or from a value kept whole, is a write_at of the
 * bytes; a longer one from a blob value splices the source's extents (blob_value_slice) into the destination's
 * reference in one pass (blob_value_splice_list), so no byte is copied. */
static int apply_copy(kv_db *db, int *type, kv_bytes *cur, int stype, const kv_bytes *src, const batch_op *op,
                      uint64_t n, kv_bytes *out) {
    int rc;
    if (stype != KV_TYPE_BLOB || n < db->opt.blob_threshold) {
        kv_bytes bytes = {0};
        const uint8_t *data = src->data + (stype == KV_TYPE_BLOB ? 0 : op->off);
        if (stype == KV_TYPE_BLOB) {
            size_t got = 0;
            if (bytes_reserve(&bytes, (size_t)n)) return KV_ENOMEM;
            rc = blob_value_read(db->blobs, src->data, src->len, op->off, bytes.data, (size_t)n, &got);
            if (!rc && got != n) rc = kv_set_error(KV_ECORRUPT, "copy_range: the source read short");
            if (rc) {
                bytes_free(&bytes);
                return rc;
            }
            data = bytes.data;
        }
        batch_op w = {.kind = BOP_WRITE_AT, .off = op->off2, .len = n};
        rc = apply_change(db, type, cur, &w, data, out);
        bytes_free(&bytes);
        return rc;
    }
    blob_ref slice = {0};
    rc = blob_value_slice(db->blobs, src->data, src->len, op->off, n, &slice);
    if (!rc && *type != KV_TYPE_BLOB) { /* absent, or kept whole (then shorter than the copy): a reference first */
        blob_ref ref;
        if (*type == KV_TYPE_DELETE) bytes_clear(cur);
        rc = inline_to_ref(db, cur, &ref);
        if (!rc) rc = ref_payload(&ref, cur);
        blob_ref_free(&ref);
        *type = KV_TYPE_BLOB;
    }
    blob_pager pg = {db->blobs, pager_append, db, (size_t)db->opt.blob_page_extents};
    if (!rc) rc = blob_value_splice_list(&pg, cur->data, cur->len, op->off2, &slice, out);
    blob_ref_free(&slice);
    return rc;
}

/* ---- resolution -------------------------------------------------------------------------------------------------------- */

/* A batch of small puts and deletes on distinct keys needs no overlay: encode it as it is. */
static bool is_plain(const kv_db *db, const kv_batch *b) {
    if (b->reads || b->n > 16) return false;
    const uint8_t *base = b->data.data;
    for (size_t i = 0; i < b->n; i++) {
        const batch_op *op = &b->ops[i];
        if (op->kind != BOP_DELETE && (op->kind != BOP_PUT || op->len >= db->opt.blob_threshold)) return false;
        for (size_t j = 0; j < i; j++)
            if (b->ops[j].ks == op->ks && b->ops[j].klen == op->klen &&
                memcmp(base + b->ops[j].key_off, base + op->key_off, op->klen) == 0)
                return false;
    }
    return true;
}

static int encode_plain(const kv_batch *b, uint64_t seq, int64_t ts, kv_bytes *rec) {
    size_t start = rec->len;
    size_t need = 8 + 10 + 10 + (size_t)batch_bytes(b) + b->n * (1 + 1 + 10 + 10); /* nocopy values included */
    if (bytes_reserve(rec, need)) return KV_ENOMEM;
    uint8_t *p = rec->data + rec->len;
    put_fixed64(p, seq);
    p = put_varint64(p + 8, (uint64_t)ts);
    p = put_varint64(p, b->n);
    const uint8_t *base = b->data.data;
    for (size_t i = 0; i < b->n; i++) {
        const batch_op *op = &b->ops[i];
        *p++ = op->kind == BOP_PUT ? KV_TYPE_VALUE : KV_TYPE_DELETE;
        p = put_varint64(p, op->klen + 1);
        *p++ = op->ks;
        memcpy(p, base + op->key_off, op->klen);
        p += op->klen;
        if (op->kind == BOP_PUT) {
            p = put_varint64(p, op->len);
            if (op->len) memcpy(p, batch_op_data(b, op), (size_t)op->len);
            p += op->len;
        }
    }
    rec->len = start + (size_t)(p - (rec->data + start));
    return KV_OK;
}

int db_resolve_batch(kv_db *db, kv_batch *b, uint64_t seq, int64_t ts, kv_bytes *rec) {
    if (is_plain(db, b)) return encode_plain(b, seq, ts, rec);
    overlay o = {0};
    kv_bytes cur = {0}, out = {0}, src = {0};
    uint8_t ubuf[KV_MAX_KEY + 1], ubuf2[KV_MAX_KEY + 1];
    int rc = KV_OK;
    const uint8_t *base = b->data.data;
    for (size_t i = 0; i < b->n && rc == KV_OK; i++) {
        const batch_op *op = &b->ops[i];
        ubuf[0] = op->ks;
        memcpy(ubuf + 1, base + op->key_off, op->klen);
        size_t ulen = op->klen + 1;
        const uint8_t *data = batch_op_data(b, op);
        int type;
        switch (op->kind) {
        case BOP_PUT:
            if (op->len >= db->opt.blob_threshold) {
                blob_ref ref = {0};
                blob_extent e;
                rc = blob_append(db, data, (size_t)op->len, &e);
                if (!rc) rc = blob_ref_splice(&ref, 0, &e);
                if (!rc) rc = ref_payload(&ref, &out);
                blob_ref_free(&ref);
                if (!rc) rc = overlay_set(&o, ubuf, ulen, KV_TYPE_BLOB, out.data, out.len);
            } else {
                rc = overlay_set(&o, ubuf, ulen, KV_TYPE_VALUE, data, (size_t)op->len);
            }
            break;
        case BOP_DELETE:
            rc = overlay_set(&o, ubuf, ulen, KV_TYPE_DELETE, NULL, 0);
            break;
        case BOP_MOVE:
            rc = current_state(db, &o, ubuf, ulen, &type, &cur);
            if (rc) break;
            if (type == KV_TYPE_DELETE) {
                rc = kv_set_error(KV_ENOTFOUND, "move: the source key is absent");
                break;
            }
            ubuf2[0] = op->ks2;
            memcpy(ubuf2 + 1, base + op->key2_off, op->k2len);
            if (op->k2len + 1 == ulen && memcmp(ubuf, ubuf2, ulen) == 0) break; /* onto itself: nothing */
            rc = overlay_set(&o, ubuf2, op->k2len + 1, type, cur.data, cur.len);
            if (!rc) rc = overlay_set(&o, ubuf, ulen, KV_TYPE_DELETE, NULL, 0);
            break;
        case BOP_WRITE_AT:
        case BOP_TRUNCATE:
        case BOP_ZERO_RANGE:
            rc = current_state(db, &o, ubuf, ulen, &type, &cur);
            if (!rc) rc = apply_change(db, &type, &cur, op, data, &out);
            if (!rc) rc = overlay_set(&o, ubuf, ulen, type, out.data, out.len);
            break;
        case BOP_COPY_RANGE: {
            int stype;
            uint64_t ssize = 0;
            rc = current_state(db, &o, ubuf, ulen, &stype, &src);
            if (!rc && stype == KV_TYPE_DELETE) rc = kv_set_error(KV_ENOTFOUND, "copy_range: the source key is absent");
            if (!rc) ssize = stype == KV_TYPE_BLOB ? 0 : src.len;
            if (!rc && stype == KV_TYPE_BLOB) rc = blob_ref_size(src.data, src.len, &ssize);
            uint64_t n = rc || op->off >= ssize ? 0 : (op->len < ssize - op->off ? op->len : ssize - op->off);
            if (rc || n == 0) break; /* nothing to copy: the destination is left as it is */
            ubuf2[0] = op->ks2;
            memcpy(ubuf2 + 1, base + op->key2_off, op->k2len);
            rc = current_state(db, &o, ubuf2, op->k2len + 1, &type, &cur);
            if (!rc) rc = apply_copy(db, &type, &cur, stype, &src, op, n, &out);
            if (!rc) rc = overlay_set(&o, ubuf2, op->k2len + 1, type, out.data, out.len);
            break;
        }
        case BOP_PUT_STREAM: {
            kv_stream *s = op->stream;
            if (s->db != db) {
                rc = kv_set_error(KV_EINVAL, "a stream of another store");
                break;
            }
            if (s->w) {
                if (!s->ended) {
                    rc = blob_writer_end(s->w, &s->ext);
                    if (rc) break;
                    s->ended = true;
                }
                /* Synced even for an unsynced put: a later sync makes the shared blob file and the log durable,
                 * not this stream's file, and recovery drops every batch from the first one whose blob bytes are
                 * missing (db.c, record_blobs_whole), so a later synced batch must never depend on it. */
                if (s->sync_failed) {
                    rc = kv_set_error(KV_EIO, "an fsync of the stream's blob file failed earlier, so its bytes may "
                                              "not be on disk: write the value again in a new stream");
                    break;
                }
                if ((rc = blob_writer_sync(s->w))) {
                    s->sync_failed = true;
                    break;
                }
                blob_ref ref = {0};
                rc = blob_ref_splice(&ref, 0, &s->ext);
                if (!rc) rc = ref_payload(&ref, &out);
                blob_ref_free(&ref);
                if (!rc) rc = overlay_set(&o, ubuf, ulen, KV_TYPE_BLOB, out.data, out.len);
            } else {
                rc = overlay_set(&o, ubuf, ulen, KV_TYPE_VALUE, s->inline_data.data, s->inline_data.len);
            }
            break;
        }
        case BOP_REMAP_IF: {
            /* blob GC: the value is still the one copied (swap in the copy), or has changed since (move the bytes
             * it still reads from where the copy was taken, as write_at would change it); keep its write time */
            int64_t vts = ts;
            rc = current_state_ts(db, &o, ubuf, ulen, &type, &cur, &vts);
            if (rc || type != KV_TYPE_BLOB) break;
            if (cur.len == op->k2len && memcmp(cur.data, base + op->key2_off, cur.len) == 0) {
                rc = overlay_set(&o, ubuf, ulen, KV_TYPE_BLOB, data, (size_t)op->len);
            } else if (op->remap) {
                blob_pager pg = {db->blobs, pager_append, db, (size_t)db->opt.blob_page_extents};
                bool changed = false;
                rc = blob_value_remap(&pg, cur.data, cur.len, op->remap, &out, &changed);
                if (!rc && changed) rc = overlay_set(&o, ubuf, ulen, KV_TYPE_BLOB, out.data, out.len);
            }
            if (o.n) ts = vts;
            break;
        }
        default:
            rc = kv_set_error(KV_EINVAL, "unknown batch operation");
        }
    }
    bytes_free(&cur);
    bytes_free(&out);
    bytes_free(&src);
    if (rc == KV_OK && o.n == 0 && b->n && b->ops[0].kind == BOP_REMAP_IF)
        rc = kv_set_error(KV_ENOTFOUND, "nothing of the value is where blob GC copied it from any more");
    if (rc == KV_OK) {
        size_t start = rec->len;
        rc = bytes_append_fixed64(rec, seq);
        if (!rc) rc = bytes_append_varint(rec, (uint64_t)ts);
        if (!rc) rc = bytes_append_varint(rec, o.n);
        for (size_t i = 0; i < o.n && !rc; i++) {
            uint8_t t = (uint8_t)o.ops[i].type;
            rc = bytes_append(rec, &t, 1);
            if (!rc) rc = bytes_append_lenprefixed(rec, o.ops[i].ukey.data, o.ops[i].ukey.len);
            if (!rc && t != KV_TYPE_DELETE) rc = bytes_append_lenprefixed(rec, o.ops[i].payload.data, o.ops[i].payload.len);
        }
        if (rc) rec->len = start;
    }
    overlay_free(&o);
    return rc;
}

/* ---- streams ---------------------------------------------------------------------------------------------------------- */

int kv_stream_new(kv_db *db, kv_stream **out) {
    if (!out) return kv_set_error(KV_EINVAL, "kv_stream_new: NULL out");
    if (!db_enter(db)) return KV_ECLOSED;
    int rc = KV_OK;
    if (db->opt.read_only) rc = kv_set_error(KV_EREADONLY, "the store was opened read-only");
    kv_stream *s = rc ? NULL : calloc(1, sizeof *s);
    if (!rc && !s) rc = KV_ENOMEM;
    if (!rc) {
        s->db = db;
        atomic_fetch_add(&db->pins, 1);
        *out = s;
    }
    db_leave(db);
    return rc;
}

int kv_stream_append(kv_stream *s, const void *data, size_t len) {
    if (!s || (len && !data)) return kv_set_error(KV_EINVAL, "kv_stream_append: bad arguments");
    if (s->committed || s->ended) return kv_set_error(KV_EINVAL, "the stream was already put");
    kv_db *db = s->db;
    if (!db_enter(db)) return KV_ECLOSED;
    int rc = db_space_for_write(db, NULL);
    if (rc) {
    } else if (!s->w && s->inline_data.len + len < db->opt.blob_threshold) {
        rc = bytes_append(&s->inline_data, data, len);
    } else {
        if (!s->w) {
            rc = db_new_blob_file(db, &s->w);
            if (!rc) rc = blob_writer_begin(s->w);
            if (!rc) rc = blob_writer_append(s->w, s->inline_data.data, s->inline_data.len);
            /* test_faults: keep the bytes so far when no blob file could be made (a full disk): freeing them
             * anyway let a later append succeed on a stream that had silently lost its beginning */
            if (s->w) bytes_free(&s->inline_data);
        }
        if (!rc) rc = blob_writer_append(s->w, data, len);
        if (!rc) db_note_blob_bytes(db, len);
    }
    if (!rc) s->size += len;
    if (rc == KV_ENOSPC) atomic_fetch_add(&db->st_enospc, 1);
    db_leave(db);
    return rc;
}

void db_mark_streams_committed(kv_batch *b) {
    if (!b->streams) return;
    for (size_t i = 0; i < b->n; i++)
        if (b->ops[i].kind == BOP_PUT_STREAM) b->ops[i].stream->committed = true;
}

uint64_t kv_stream_size(const kv_stream *s) { return s ? s->size : 0; }

void kv_stream_free(kv_stream *s) {
    if (!s) return;
    kv_db *db = s->db;
    if (s->w) {
        uint64_t no = blob_writer_file_no(s->w);
        if (!s->ended) {
            blob_extent e;
            (void)blob_writer_end(s->w, &e); /* an unused record */
        }
        (void)blob_writer_sync(s->w);
        blob_writer_close(s->w);
        /* A stream no batch took (abandoned, or its put failed: a full disk) owns a file nothing references: take it
         * out of the version and delete it now, rather than leave it to blob GC, which a short-lived process (the
         * kvfs tools) never runs, and which on a full disk is the space needed to recover. A stream a batch took
         * is left as it was (its record may be referenced). */
        bool unused = !s->committed && db_enter(db);
        if (unused && !db->opt.read_only) {
            /* First give the space back, which needs no manifest edit (a file of just its header is a valid, empty
             * blob file): on a full disk the edit below may fail. */
            char path[4096];
            file_name(path, sizeof path, db->dir, no, "blob");
            (void)db->env->truncate(db->env, path, BLOB_HEADER);
        }
        pthread_mutex_lock(&db->mu);
        pending_remove(db, no);
        if (unused && !db->opt.read_only) blob_file_drop(db, no);
        pthread_mutex_unlock(&db->mu);
        if (unused) db_leave(db);
    }
    bytes_free(&s->inline_data);
    free(s);
    db_unpin(db);
}
