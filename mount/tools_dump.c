/*
 * tools_dump.c — `kvfs dump FILE`: a readable listing of one file of a store (write-ahead log, batch log, manifest,
 * SSTable, blob file, CURRENT), for debugging and support.
 *
 * Invariants
 *  - Read only: the file is opened for reading through the engine's environment and its own readers (wal.h, sst.h,
 *    blob.h, version.h), so the listing shows exactly what the engine would see, and corruption is reported with
 *    the engine's message (file and offset). It works on a mounted store: no lock is taken.
 *  - Memory is bounded by one record / block / chunk, whatever the file's size. Values are shown shortened.
 *  - The exit status is 1 when the file is damaged (after listing everything before the damage).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blob.h"
#include "db_impl.h"
#include "dbformat.h"
#include "keyfmt.h"
#include "sst.h"
#include "tools.h"
#include "version.h"
#include "wal.h"

#define SHOW_VALUE 64 /* value bytes shown in a listing */

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void show_time(tool_ctx *c, int64_t ms) {
    char buf[48];
    tool_iso_time(buf, sizeof buf, ms);
    tout_str(&c->out, buf);
}

/* A user key inside the engine: keyspace byte, then the key. */
static void show_ukey(tool_ctx *c, const uint8_t *ukey, size_t ulen) {
    if (ulen < 1) {
        tout_printf(&c->out, "(empty)");
        return;
    }
    tout_printf(&c->out, "ks%u ", ukey[0]);
    if (ulen > 1) tout_keytext(&c->out, ukey + 1, ulen - 1);
    else tout_printf(&c->out, "(empty key)");
}

static void show_value(tool_ctx *c, const uint8_t *v, size_t n) {
    tout_printf(&c->out, "%zu bytes", n);
    if (!n) return;
    tout_str(&c->out, " \"");
    tout_valtext(&c->out, v, n > SHOW_VALUE ? SHOW_VALUE : n, true);
    tout_printf(&c->out, "\"%s", n > SHOW_VALUE ? "..." : "");
}

static void show_blobpages(tool_ctx *c, const uint8_t *p, size_t n) {
    blob_pages pp = {0};
    if (blob_pages_decode(p, n, &pp) != KV_OK) {
        tout_printf(&c->out, "malformed paged blob reference (%zu bytes)", n);
        return;
    }
    tout_printf(&c->out, "blob of %" PRIu64 " bytes in %zu page%s:", pp.size, pp.n, pp.n == 1 ? "" : "s");
    for (size_t i = 0; i < pp.n && i < 8; i++)
        tout_printf(&c->out, " [page %06" PRIu64 ".blob record@%" PRIu64 " len %" PRIu64 " covers %" PRIu64 "]",
                    pp.pg[i].file_no, pp.pg[i].rec_off, pp.pg[i].rec_len, pp.pg[i].len);
    if (pp.n > 8) tout_printf(&c->out, " ...");
    blob_pages_free(&pp);
}

static void show_blobref(tool_ctx *c, const uint8_t *p, size_t n) {
    if (blob_ref_is_paged(p, n)) {
        show_blobpages(c, p, n);
        return;
    }
    blob_ref r = {0};
    if (blob_ref_decode(p, n, &r) != KV_OK) {
        tout_printf(&c->out, "malformed blob reference (%zu bytes)", n);
        return;
    }
    tout_printf(&c->out, "blob of %" PRIu64 " bytes in %zu extent%s:", r.size, r.n, r.n == 1 ? "" : "s");
    for (size_t i = 0; i < r.n && i < 8; i++) {
        const blob_extent *e = &r.ext[i];
        if (e->file_no == 0) tout_printf(&c->out, " [hole %" PRIu64 "]", e->len);
        else
            tout_printf(&c->out, " [%06" PRIu64 ".blob record@%" PRIu64 " len %" PRIu64 " skip %" PRIu64 " take %" PRIu64
                                 "]",
                        e->file_no, e->rec_off, e->rec_len, e->skip, e->len);
    }
    if (r.n > 8) tout_printf(&c->out, " ...");
    blob_ref_free(&r);
}

/* ---- record logs: write-ahead log, batch log, manifest -------------------------------------------------------- */

static int dump_batch_record(tool_ctx *c, const char *name, const uint8_t *rec, size_t len, uint64_t off) {
    uint64_t seq;
    int64_t ts;
    size_t count;
    const uint8_t *p;
    int rc = batch_record_decode(rec, len, &seq, &ts, &count, &p, name, off);
    if (rc) return tool_kv_error(c, rc, "%s", name);
    tout_printf(&c->out, "record @%" PRIu64 " (%zu bytes): batch %" PRIu64 " ", off, len, seq);
    show_time(c, ts);
    tout_printf(&c->out, ", %zu op%s\n", count, count == 1 ? "" : "s");
    const uint8_t *lim = rec + len;
    for (size_t i = 0; i < count; i++) {
        resolved_op op;
        p = batch_record_next_op(p, lim, &op);
        if (!p) return tool_error(c, "%s: malformed operation %zu of the batch record at offset %" PRIu64, name, i, off);
        tout_printf(&c->out, "  %s ", op.type == KV_TYPE_DELETE ? "del" : "put");
        show_ukey(c, op.ukey, op.ulen);
        if (op.type == KV_TYPE_VALUE) {
            tout_str(&c->out, " = ");
            show_value(c, op.payload, op.plen);
        } else if (op.type == KV_TYPE_BLOB) {
            tout_str(&c->out, " = ");
            show_blobref(c, op.payload, op.plen);
        }
        tout_str(&c->out, "\n");
    }
    return TOOL_OK;
}

static void show_ikey(tool_ctx *c, const uint8_t *k, size_t n) {
    if (n < IKEY_TRAILER + 1) {
        tout_printf(&c->out, "(malformed key)");
        return;
    }
    show_ukey(c, k, ikey_ulen(n));
    tout_printf(&c->out, " @%" PRIu64, ikey_seq(k, n));
}

static int dump_edit(tool_ctx *c, const char *name, const uint8_t *rec, size_t len, uint64_t off) {
    version_edit e;
    edit_init(&e);
    int rc = edit_decode(&e, rec, len, name, off);
    if (rc) {
        edit_free(&e);
        return tool_kv_error(c, rc, "%s", name);
    }
    tout *o = &c->out;
    tout_printf(o, "edit @%" PRIu64 " (%zu bytes)\n", off, len);
    if (e.has_log_number) tout_printf(o, "  log number %" PRIu64 "\n", e.log_number);
    if (e.has_next_file) tout_printf(o, "  next file %" PRIu64 "\n", e.next_file);
    if (e.has_last_seq) tout_printf(o, "  last sequence %" PRIu64 "\n", e.last_seq);
    if (e.has_batchlog_floor) tout_printf(o, "  batch log floor %" PRIu64 "\n", e.batchlog_floor);
    for (size_t i = 0; i < e.ndel; i++)
        tout_printf(o, "  delete L%d %06" PRIu64 ".sst\n", e.del_files[i].level, e.del_files[i].file_no);
    for (size_t i = 0; i < e.nnew; i++) {
        const file_meta *f = e.new_files[i].f;
        tout_printf(o, "  add L%d %06" PRIu64 ".sst: %" PRIu64 " bytes, %" PRIu64 " entries (%" PRIu64
                       " tombstones), sequences %" PRIu64 "..%" PRIu64 ", keys ",
                    e.new_files[i].level, f->file_no, f->file_size, f->entries, f->tombstones, f->min_seq, f->max_seq);
        show_ikey(c, f->smallest.data, f->smallest.len);
        tout_printf(o, " .. ");
        show_ikey(c, f->largest.data, f->largest.len);
        tout_str(o, "\n");
    }
    for (size_t i = 0; i < e.nblob_new; i++) tout_printf(o, "  add blob %06" PRIu64 ".blob\n", e.blob_new[i]);
    for (size_t i = 0; i < e.nblob_del; i++) tout_printf(o, "  delete blob %06" PRIu64 ".blob\n", e.blob_del[i]);
    edit_free(&e);
    return TOOL_OK;
}

static int dump_record_log(tool_ctx *c, const char *path, const char *name, bool manifest) {
    wal_reader *r;
    int rc = wal_reader_open(kv_env_posix(), path, name, &r);
    if (rc) return tool_kv_error(c, rc, "%s", path);
    tout_printf(&c->out, "%s: %s\n", name, manifest ? "manifest (record log of version edits)"
                                                    : "record log of batches");
    int status = TOOL_OK;
    uint64_t records = 0;
    for (;;) {
        const uint8_t *p;
        size_t len;
        uint64_t off;
        rc = wal_read(r, &p, &len, &off);
        if (rc == KV_ENOTFOUND) break;
        if (rc) {
            status = tool_kv_error(c, rc, "%s", path);
            break;
        }
        records++;
        status = manifest ? dump_edit(c, name, p, len, off) : dump_batch_record(c, name, p, len, off);
        if (status || tool_cancelled(c)) break;
    }
    if (status == TOOL_OK)
        tout_printf(&c->out, "%" PRIu64 " record%s, valid to offset %" PRIu64 "%s\n", records, records == 1 ? "" : "s",
                    wal_reader_valid_end(r), wal_reader_torn(r) ? ", then a torn tail (an interrupted append)" : "");
    wal_reader_close(r);
    return status;
}

/* ---- SSTables ------------------------------------------------------------------------------------------------- */

static int dump_sst(tool_ctx *c, const char *path, const char *name) {
    sst_reader *r;
    uint64_t file_no = strtoull(name, NULL, 10);
    int rc = sst_reader_open(kv_env_posix(), path, name, file_no, NULL, &r);
    if (rc) return tool_kv_error(c, rc, "%s", path);
    const sst_props *pr = sst_reader_props(r);
    tout *o = &c->out;
    tout_printf(o, "%s: SSTable, %" PRIu64 " bytes, %" PRIu64 " entries (%" PRIu64 " tombstones) in %" PRIu64
                   " data blocks, sequences %" PRIu64 "..%" PRIu64 ", raw keys %" PRIu64 " bytes, raw values %" PRIu64
                   " bytes\n",
                name, pr->file_size, pr->entries, pr->tombstones, pr->data_blocks, pr->min_seq, pr->max_seq,
                pr->raw_key_bytes, pr->raw_value_bytes);
    tout_printf(o, "smallest ");
    show_ikey(c, pr->smallest.data, pr->smallest.len);
    tout_printf(o, "\nlargest  ");
    show_ikey(c, pr->largest.data, pr->largest.len);
    tout_str(o, "\n");
    iter *it = sst_reader_iter(r, false);
    int status = TOOL_OK;
    uint64_t n = 0;
    for (it->seek_first(it); it->valid(it); it->next(it)) {
        size_t klen, vlen;
        const uint8_t *k = it->key(it, &klen), *v = it->value(it, &vlen);
        int type = klen >= IKEY_TRAILER ? ikey_type(k, klen) : -1;
        tout_printf(o, "%s ", type == KV_TYPE_DELETE ? "del" : type == KV_TYPE_VALUE || type == KV_TYPE_BLOB ? "put" : "???");
        show_ikey(c, k, klen);
        int64_t ts;
        const uint8_t *payload;
        size_t plen;
        if (entry_decode(v, vlen, &ts, &payload, &plen) == 0) {
            tout_str(o, " ");
            show_time(c, ts);
            if (type == KV_TYPE_VALUE) {
                tout_str(o, " = ");
                show_value(c, payload, plen);
            } else if (type == KV_TYPE_BLOB) {
                tout_str(o, " = ");
                show_blobref(c, payload, plen);
            }
        } else {
            tout_printf(o, " (malformed entry value, %zu bytes)", vlen);
        }
        tout_str(o, "\n");
        if (++n % 256 == 0 && tool_cancelled(c)) break;
    }
    if ((rc = it->status(it)) != KV_OK) status = tool_kv_error(c, rc, "%s", path);
    it->destroy(it);
    sst_reader_unref(r);
    return status;
}

/* ---- blob files ----------------------------------------------------------------------------------------------- */

static int dump_blob(tool_ctx *c, const char *path, const char *name) {
    kv_env *env = kv_env_posix();
    kv_file *f;
    int rc = env->open_read(env, path, &f);
    if (rc) return tool_kv_error(c, rc, "%s", path);
    uint64_t size = 0;
    uint8_t *buf = malloc(BLOB_CHUNK + 8);
    size_t got = 0;
    int status = TOOL_OK;
    if (!buf) {
        status = tool_error(c, "out of memory");
        goto out;
    }
    if ((rc = env->size(env, f, &size)) || (rc = env->read_at(env, f, 0, buf, BLOB_HEADER, &got))) {
        status = tool_kv_error(c, rc, "%s", path);
        goto out;
    }
    if (got < BLOB_HEADER || get_fixed64(buf) != BLOB_MAGIC || get_fixed32(buf + 12) != kv_checksum(buf, 12)) {
        status = tool_error(c, "%s: not a blob file: bad header at offset 0", path);
        goto out;
    }
    tout_printf(&c->out, "%s: blob file, format version %u, %" PRIu64 " bytes\n", name, get_fixed32(buf + 8), size);
    uint64_t rec_start = BLOB_HEADER, rec_bytes = 0, chunks = 0, records = 0;
    for (uint64_t pos = BLOB_HEADER; pos < size;) {
        if ((rc = env->read_at(env, f, pos, buf, 8, &got))) {
            status = tool_kv_error(c, rc, "%s", path);
            break;
        }
        uint32_t clen = got == 8 ? get_fixed32(buf + 4) : 0;
        if (got < 8 || clen == 0 || clen > BLOB_CHUNK || pos + 8 + clen > size) {
            status = tool_error(c, "%s: bad chunk header at offset %" PRIu64, path, pos);
            break;
        }
        if ((rc = env->read_at(env, f, pos + 8, buf + 8, clen, &got))) {
            status = tool_kv_error(c, rc, "%s", path);
            break;
        }
        if (got < clen || get_fixed32(buf) != kv_checksum(buf + 4, 4 + clen)) {
            status = tool_error(c, "%s: bad chunk checksum at offset %" PRIu64, path, pos);
            break;
        }
        chunks++;
        rec_bytes += clen;
        pos += 8 + clen;
        /* Every chunk of a record but its last is full; a short chunk (or the end of the file) ends a record. */
        if (clen < BLOB_CHUNK || pos >= size) {
            tout_printf(&c->out, "record @%" PRIu64 ": %" PRIu64 " bytes in %" PRIu64 " chunk%s\n", rec_start,
                        rec_bytes, chunks, chunks == 1 ? "" : "s");
            records++;
            rec_start = pos, rec_bytes = 0, chunks = 0;
        }
        if (tool_cancelled(c)) break;
    }
    if (status == TOOL_OK)
        tout_printf(&c->out, "%" PRIu64 " records (records that are a whole number of chunks may show as one)\n",
                    records);
out:
    free(buf);
    env->close(env, f);
    return status;
}

/* ---- dispatch ------------------------------------------------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int cmd_dump(tool_ctx *c, const targs *a) {
    const char *path = a->pos[0], *name = base_name(path);
    kv_env *env = kv_env_posix();
    int ex = env->exists(env, path);
    if (ex <= 0) return tool_error(c, "%s: no such file", path);
    if (ends_with(name, ".log")) return dump_record_log(c, path, name, false);
    if (strncmp(name, "BATCHLOG-", 9) == 0) return dump_record_log(c, path, name, false);
    if (strncmp(name, "MANIFEST-", 9) == 0) return dump_record_log(c, path, name, true);
    if (ends_with(name, ".sst")) return dump_sst(c, path, name);
    if (ends_with(name, ".blob")) return dump_blob(c, path, name);
    if (strcmp(name, "CURRENT") == 0) {
        kv_file *f;
        char buf[256];
        size_t got = 0;
        int rc = env->open_read(env, path, &f);
        if (rc) return tool_kv_error(c, rc, "%s", path);
        rc = env->read_at(env, f, 0, buf, sizeof buf - 1, &got);
        env->close(env, f);
        if (rc) return tool_kv_error(c, rc, "%s", path);
        buf[got] = 0;
        tout_printf(&c->out, "CURRENT: the live manifest is ");
        tout_valtext(&c->out, buf, strcspn(buf, "\n"), true);
        tout_str(&c->out, "\n");
        return TOOL_OK;
    }
    return tool_error(c, "%s: unknown kind of file (expected NNNNNN.log, NNNNNN.sst, NNNNNN.blob, MANIFEST-NNNNNN, "
                         "BATCHLOG-NNNNNN or CURRENT)", path);
}
