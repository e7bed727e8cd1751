/*
 * version.c — versions, version edits and the manifest (see version.h).
 *
 * Invariants
 *  - vset->current is never NULL after vset_new; every version in the live list has refs > 0 (current holds one).
 *  - A file_meta / blob_meta is shared by every version that lists it; its refs count those versions, and it is freed
 *    when the last one goes. Deleting the file on disk is the db's job (it asks vset_file_is_live).
 *  - vset_log_and_apply writes the edit to the manifest and fsyncs it BEFORE the new version becomes current: a crash
 *    after the fsync replays the edit; a crash before it leaves the old version, whose files are all still on disk.
 *  - Manifest records are version edits; the first record of a manifest is a snapshot of the whole state.
 */
#include "version.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbformat.h"
#include "env.h"
#include "error.h"
#include "wal.h"

enum {
    TAG_LOG_NUMBER = 1,
    TAG_NEXT_FILE = 2,
    TAG_LAST_SEQ = 3,
    TAG_NEW_FILE = 4,
    TAG_DELETED_FILE = 5,
    TAG_NEW_BLOB = 6,
    TAG_DELETED_BLOB = 7,
    TAG_BATCHLOG_FLOOR = 8,
};

void file_name(char *buf, size_t n, const char *dir, uint64_t no, const char *ext) {
    snprintf(buf, n, "%s/%06" PRIu64 ".%s", dir, no, ext);
}

/* ---- file metadata ----------------------------------------------------------------------------------------------- */

file_meta *file_meta_new(void) { return calloc(1, sizeof(file_meta)); }

void file_meta_unref(file_meta *f) {
    if (!f) return;
    if (--f->refs <= 0) {
        bytes_free(&f->smallest);
        bytes_free(&f->largest);
        free(f);
    }
}

/* Copy a file's description. Only the fields fixed at creation are read: refs and being_compacted change under the
 * db mutex, which a caller such as kv_checkpoint (copying a pinned version) does not hold. */
static int file_meta_copy(file_meta *dst, const file_meta *src) {
    *dst = (file_meta){.file_no = src->file_no, .file_size = src->file_size, .entries = src->entries,
                       .tombstones = src->tombstones, .min_seq = src->min_seq, .max_seq = src->max_seq};
    if (bytes_append(&dst->smallest, src->smallest.data, src->smallest.len) ||
        bytes_append(&dst->largest, src->largest.data, src->largest.len)) {
        bytes_free(&dst->smallest);
        bytes_free(&dst->largest);
        return KV_ENOMEM;
    }
    return KV_OK;
}

/* ---- edits --------------------------------------------------------------------------------------------------------- */

void edit_init(version_edit *e) { memset(e, 0, sizeof *e); }

void edit_free(version_edit *e) {
    for (size_t i = 0; i < e->nnew; i++) file_meta_unref(e->new_files[i].f);
    free(e->new_files);
    free(e->del_files);
    free(e->blob_new);
    free(e->blob_del);
    edit_init(e);
}

static int grow(void **arr, size_t n, size_t elem) {
    /* grow to hold n+1 elements, doubling at powers of two */
    if (n & (n - 1)) return KV_OK;
    void *p = realloc(*arr, (n ? n * 2 : 1) * elem);
    if (!p) return KV_ENOMEM;
    *arr = p;
    return KV_OK;
}

int edit_add_file(version_edit *e, int level, const file_meta *f) {
    if (grow((void **)&e->new_files, e->nnew, sizeof(new_file))) return KV_ENOMEM;
    file_meta *c = file_meta_new();
    if (!c || file_meta_copy(c, f)) {
        free(c);
        return KV_ENOMEM;
    }
    c->refs = 1;
    e->new_files[e->nnew++] = (new_file){level, c};
    return KV_OK;
}

int edit_delete_file(version_edit *e, int level, uint64_t file_no) {
    if (grow((void **)&e->del_files, e->ndel, sizeof(deleted_file))) return KV_ENOMEM;
    e->del_files[e->ndel++] = (deleted_file){level, file_no};
    return KV_OK;
}

int edit_add_blob(version_edit *e, uint64_t file_no) {
    if (grow((void **)&e->blob_new, e->nblob_new, sizeof(uint64_t))) return KV_ENOMEM;
    e->blob_new[e->nblob_new++] = file_no;
    return KV_OK;
}

int edit_delete_blob(version_edit *e, uint64_t file_no) {
    if (grow((void **)&e->blob_del, e->nblob_del, sizeof(uint64_t))) return KV_ENOMEM;
    e->blob_del[e->nblob_del++] = file_no;
    return KV_OK;
}

int edit_encode(const version_edit *e, kv_bytes *out) {
    int rc = 0;
#define PUT(v) rc |= bytes_append_varint(out, (v))
    if (e->has_log_number) { PUT(TAG_LOG_NUMBER); PUT(e->log_number); }
    if (e->has_next_file) { PUT(TAG_NEXT_FILE); PUT(e->next_file); }
    if (e->has_last_seq) { PUT(TAG_LAST_SEQ); PUT(e->last_seq); }
    if (e->has_batchlog_floor) { PUT(TAG_BATCHLOG_FLOOR); PUT(e->batchlog_floor); }
    for (size_t i = 0; i < e->ndel; i++) {
        PUT(TAG_DELETED_FILE); PUT((uint64_t)e->del_files[i].level); PUT(e->del_files[i].file_no);
    }
    for (size_t i = 0; i < e->nnew; i++) {
        const file_meta *f = e->new_files[i].f;
        PUT(TAG_NEW_FILE); PUT((uint64_t)e->new_files[i].level); PUT(f->file_no); PUT(f->file_size);
        PUT(f->entries); PUT(f->tombstones); PUT(f->min_seq); PUT(f->max_seq);
        rc |= bytes_append_lenprefixed(out, f->smallest.data, f->smallest.len);
        rc |= bytes_append_lenprefixed(out, f->largest.data, f->largest.len);
    }
    for (size_t i = 0; i < e->nblob_new; i++) { PUT(TAG_NEW_BLOB); PUT(e->blob_new[i]); }
    for (size_t i = 0; i < e->nblob_del; i++) { PUT(TAG_DELETED_BLOB); PUT(e->blob_del[i]); }
#undef PUT
    return rc ? KV_ENOMEM : KV_OK;
}

int edit_decode(version_edit *e, const uint8_t *p, size_t len, const char *name, uint64_t offset) {
    const uint8_t *lim = p + len;
    edit_init(e);
#define BAD(what)                                                                                                 \
    do {                                                                                                          \
        edit_free(e);                                                                                             \
        return kv_set_error(KV_ECORRUPT, "%s: bad manifest record at offset %" PRIu64 ": %s", name, offset, what); \
    } while (0)
#define GET(v)                                             \
    do {                                                   \
        if (!(p = get_varint64(p, lim, &(v)))) BAD("truncated field"); \
    } while (0)
    while (p < lim) {
        uint64_t tag, level, no;
        GET(tag);
        switch (tag) {
        /* File numbers stay far below 2^64: the next one is always one more, and in a blob reference 0 is a hole. */
        case TAG_LOG_NUMBER:
            GET(e->log_number);
            if (e->log_number > KV_MAX_FILE_NUMBER) BAD("file number out of range");
            e->has_log_number = true;
            break;
        case TAG_NEXT_FILE:
            GET(e->next_file);
            if (e->next_file > KV_MAX_FILE_NUMBER) BAD("file number out of range");
            e->has_next_file = true;
            break;
        case TAG_LAST_SEQ:
            GET(e->last_seq);
            /* The store's next writes take the sequences after it, and a trailer holds only 56 bits. */
            if (e->last_seq > KV_MAX_SEQUENCE) BAD("sequence out of range");
            e->has_last_seq = true;
            break;
        case TAG_BATCHLOG_FLOOR:
            GET(e->batchlog_floor);
            /* at most the sequence after the last one there can be: a floor above it would evict every batch, and
             * the batch log's files would be deleted at open */
            if (e->batchlog_floor > KV_MAX_SEQUENCE + 1) BAD("sequence out of range");
            e->has_batchlog_floor = true;
            break;
        case TAG_DELETED_FILE:
            GET(level); GET(no);
            if (level >= KV_MAX_LEVELS) BAD("level out of range");
            if (no == 0 || no > KV_MAX_FILE_NUMBER) BAD("file number out of range");
            if (edit_delete_file(e, (int)level, no)) BAD("out of memory");
            break;
        case TAG_NEW_FILE: {
            file_meta f = {0};
            const uint8_t *d;
            uint64_t dl;
            GET(level); GET(f.file_no); GET(f.file_size); GET(f.entries); GET(f.tombstones);
            GET(f.min_seq); GET(f.max_seq);
            if (level >= KV_MAX_LEVELS) BAD("level out of range");
            if (f.file_no == 0 || f.file_no > KV_MAX_FILE_NUMBER) BAD("file number out of range");
            if (!(p = get_lenprefixed(p, lim, &d, &dl)) || dl < 9) BAD("bad smallest key");
            f.smallest = (kv_bytes){(uint8_t *)d, dl, dl};
            if (!(p = get_lenprefixed(p, lim, &d, &dl)) || dl < 9) BAD("bad largest key");
            f.largest = (kv_bytes){(uint8_t *)d, dl, dl};
            /* What a table could never say of itself (reads trust the key range to skip tables, compaction the
             * sequence range to order them): */
            if (f.min_seq > f.max_seq || f.max_seq > KV_MAX_SEQUENCE) BAD("bad sequence range");
            if (ikey_cmp(f.smallest.data, f.smallest.len, f.largest.data, f.largest.len) > 0)
                BAD("smallest key after largest key");
            if (f.tombstones > f.entries) BAD("more tombstones than entries");
            if (edit_add_file(e, (int)level, &f)) BAD("out of memory");
            break;
        }
        case TAG_NEW_BLOB:
        case TAG_DELETED_BLOB:
            GET(no);
            if (no == 0 || no > KV_MAX_FILE_NUMBER) BAD("file number out of range");
            if ((tag == TAG_NEW_BLOB ? edit_add_blob(e, no) : edit_delete_blob(e, no))) BAD("out of memory");
            break;
        default: BAD("unknown tag");
        }
    }
#undef GET
#undef BAD
    return KV_OK;
}

/* ---- versions ------------------------------------------------------------------------------------------------------ */

static version *version_new(version_set *vs) {
    version *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->vset = vs;
    v->score_level = -1;
    return v;
}

static void version_destroy(version *v) {
    for (int l = 0; l < KV_MAX_LEVELS; l++) {
        for (size_t i = 0; i < v->nfiles[l]; i++) file_meta_unref(v->files[l][i]);
        free(v->files[l]);
    }
    for (size_t i = 0; i < v->nblobs; i++)
        if (--v->blobs[i]->refs <= 0) free(v->blobs[i]);
    free(v->blobs);
    free(v);
}

void version_ref(version *v) { v->refs++; }

void version_unref(version *v) {
    if (--v->refs > 0) return;
    if (v->prev) {
        v->prev->next = v->next;
        v->next->prev = v->prev;
    }
    version_destroy(v);
}

uint64_t level_bytes(const version *v, int level) {
    uint64_t n = 0;
    for (size_t i = 0; i < v->nfiles[level]; i++) n += v->files[level][i]->file_size;
    return n;
}

uint64_t level_max_bytes(const version_set *vs, int level) {
    uint64_t b = vs->level1_bytes, m = (uint64_t)vs->level_multiplier;
    /* saturating: a large multiplier (any is allowed) must not wrap a deep level's limit to a small one */
    for (int l = 1; l < level; l++) b = b > UINT64_MAX / m ? UINT64_MAX : b * m;
    return b;
}

static void version_compute_score(version *v) {
    const version_set *vs = v->vset;
    v->score = 0;
    v->score_level = -1;
    for (int l = 0; l < KV_MAX_LEVELS - 1; l++) {
        double s = l == 0 ? (double)v->nfiles[0] / (double)vs->l0_trigger
                          : (double)level_bytes(v, l) / (double)level_max_bytes(vs, l);
        if (s > v->score) {
            v->score = s;
            v->score_level = l;
        }
    }
}

static int cmp_by_smallest(const void *a, const void *b) {
    const file_meta *fa = *(file_meta *const *)a, *fb = *(file_meta *const *)b;
    int c = ikey_cmp(fa->smallest.data, fa->smallest.len, fb->smallest.data, fb->smallest.len);
    if (c) return c;
    return fa->file_no < fb->file_no ? -1 : fa->file_no > fb->file_no;
}

static int cmp_newest_first(const void *a, const void *b) {
    /* level 0: newest first; a file with a larger number was written later */
    const file_meta *fa = *(file_meta *const *)a, *fb = *(file_meta *const *)b;
    return fa->file_no > fb->file_no ? -1 : fa->file_no < fb->file_no;
}

static int cmp_blob(const void *a, const void *b) {
    const blob_meta *x = *(blob_meta *const *)a, *y = *(blob_meta *const *)b;
    return x->file_no < y->file_no ? -1 : x->file_no > y->file_no;
}

static bool edit_deletes(const version_edit *e, int level, uint64_t no) {
    for (size_t i = 0; i < e->ndel; i++)
        if (e->del_files[i].level == level && e->del_files[i].file_no == no) return true;
    return false;
}

static bool edit_deletes_blob(const version_edit *e, uint64_t no) {
    for (size_t i = 0; i < e->nblob_del; i++)
        if (e->blob_del[i] == no) return true;
    return false;
}

/* base + edit -> a new version (refs 0, not yet in the live list). */
static int version_apply(version_set *vs, const version *base, const version_edit *e, version **out) {
    version *v = version_new(vs);
    if (!v) return KV_ENOMEM;
    for (int l = 0; l < KV_MAX_LEVELS; l++) {
        size_t cap = base->nfiles[l] + e->nnew;
        if (cap) {
            v->files[l] = malloc(cap * sizeof(file_meta *));
            if (!v->files[l]) { version_destroy(v); return KV_ENOMEM; }
        }
        for (size_t i = 0; i < base->nfiles[l]; i++) {
            file_meta *f = base->files[l][i];
            if (edit_deletes(e, l, f->file_no)) continue;
            f->refs++;
            v->files[l][v->nfiles[l]++] = f;
        }
        for (size_t i = 0; i < e->nnew; i++) {
            if (e->new_files[i].level != l) continue;
            file_meta *f = e->new_files[i].f;
            f->refs++;
            v->files[l][v->nfiles[l]++] = f;
        }
        if (v->nfiles[l] > 1) qsort(v->files[l], v->nfiles[l], sizeof(file_meta *), l == 0 ? cmp_newest_first : cmp_by_smallest);
    }
    size_t bcap = base->nblobs + e->nblob_new;
    if (bcap) {
        v->blobs = malloc(bcap * sizeof(blob_meta *));
        if (!v->blobs) { version_destroy(v); return KV_ENOMEM; }
    }
    for (size_t i = 0; i < base->nblobs; i++) {
        if (edit_deletes_blob(e, base->blobs[i]->file_no)) continue;
        base->blobs[i]->refs++;
        v->blobs[v->nblobs++] = base->blobs[i];
    }
    for (size_t i = 0; i < e->nblob_new; i++) {
        blob_meta *b = calloc(1, sizeof *b);
        if (!b) { version_destroy(v); return KV_ENOMEM; }
        b->file_no = e->blob_new[i];
        b->refs = 1;
        v->blobs[v->nblobs++] = b;
    }
    if (v->nblobs > 1) qsort(v->blobs, v->nblobs, sizeof(blob_meta *), cmp_blob);
    version_compute_score(v);
    *out = v;
    return KV_OK;
}

static void vset_install(version_set *vs, version *v) {
    v->refs = 1;
    v->prev = vs->live.prev;
    v->next = &vs->live;
    vs->live.prev->next = v;
    vs->live.prev = v;
    version *old = vs->current;
    vs->current = v;
    if (old) version_unref(old);
}

static void vset_apply_scalars(version_set *vs, const version_edit *e) {
    if (e->has_log_number) vs->log_number = e->log_number;
    if (e->has_next_file && e->next_file > vs->next_file) vs->next_file = e->next_file;
    if (e->has_last_seq && e->last_seq > vs->last_seq) vs->last_seq = e->last_seq;
    if (e->has_batchlog_floor) vs->batchlog_floor = e->batchlog_floor;
}

/* ---- the version set --------------------------------------------------------------------------------------------- */

int vset_new(kv_env *env, const char *dir, version_set **out) {
    version_set *vs = calloc(1, sizeof *vs);
    if (!vs) return KV_ENOMEM;
    vs->env = env;
    vs->dir = strdup(dir);
    vs->live.prev = vs->live.next = &vs->live;
    vs->next_file = 2;
    vs->level1_bytes = 32ull << 20;
    vs->level_multiplier = 10;
    vs->l0_trigger = 4;
    version *v = version_new(vs);
    if (!vs->dir || !v) {
        free(v);
        free(vs->dir);
        free(vs);
        return KV_ENOMEM;
    }
    vset_install(vs, v);
    *out = vs;
    return KV_OK;
}

void vset_free(version_set *vs) {
    if (!vs) return;
    if (vs->manifest) wal_writer_close(vs->manifest);
    version_unref(vs->current);
    /* versions still referenced by someone else are leaked on purpose rather than freed under them */
    for (int l = 0; l < KV_MAX_LEVELS; l++) bytes_free(&vs->compact_pointer[l]);
    free(vs->dir);
    free(vs);
}

uint64_t vset_new_file_number(version_set *vs) { return vs->next_file++; }

bool vset_file_is_live(const version_set *vs, uint64_t n) {
    for (const version *v = vs->live.next; v != &vs->live; v = v->next) {
        for (int l = 0; l < KV_MAX_LEVELS; l++)
            for (size_t i = 0; i < v->nfiles[l]; i++)
                if (v->files[l][i]->file_no == n) return true;
        for (size_t i = 0; i < v->nblobs; i++)
            if (v->blobs[i]->file_no == n) return true;
    }
    return false;
}

static int read_current(version_set *vs, char *name, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/CURRENT", vs->dir);
    kv_file *f;
    int rc = vs->env->open_read(vs->env, path, &f);
    if (rc) return rc;
    size_t got = 0;
    rc = vs->env->read_at(vs->env, f, 0, name, n - 1, &got);
    vs->env->close(vs->env, f);
    if (rc) return rc;
    name[got] = 0;
    if (got == 0 || name[got - 1] != '\n')
        return kv_set_error(KV_ECORRUPT, "CURRENT: malformed (no newline) at offset %zu", got);
    name[got - 1] = 0;
    if (strncmp(name, "MANIFEST-", 9) != 0 || strchr(name, '/'))
        return kv_set_error(KV_ECORRUPT, "CURRENT: does not name a manifest at offset 0");
    return KV_OK;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The version a manifest replays to must be one the store could have made: every file number listed once (a table
 * listed twice would be compacted, then deleted, while still listed), and each level below 0 sorted without overlap
 * (lookups binary-search it and read one table). Else the manifest is damage, not a store to open. */
static int version_validate(const version *v, const char *name) {
    size_t n = v->nblobs;
    for (int l = 0; l < KV_MAX_LEVELS; l++) n += v->nfiles[l];
    uint64_t *nos = malloc((n ? n : 1) * sizeof *nos);
    if (!nos) return KV_ENOMEM;
    size_t k = 0;
    int rc = KV_OK;
    for (int l = 0; l < KV_MAX_LEVELS; l++)
        for (size_t i = 0; i < v->nfiles[l]; i++) {
            const file_meta *f = v->files[l][i];
            nos[k++] = f->file_no;
            const file_meta *p = i ? v->files[l][i - 1] : NULL;
            if (!rc && l > 0 && p && ukey_cmp(p->largest.data, p->largest.len - 8, f->smallest.data,
                                              f->smallest.len - 8) >= 0)
                rc = kv_set_error(KV_ECORRUPT, "%s: level %d lists tables %06" PRIu64 " and %06" PRIu64
                                                " with overlapping key ranges", name, l, p->file_no, f->file_no);
        }
    for (size_t i = 0; i < v->nblobs; i++) nos[k++] = v->blobs[i]->file_no;
    qsort(nos, n, sizeof *nos, cmp_u64);
    for (size_t i = 1; i < n && !rc; i++)
        if (nos[i] == nos[i - 1])
            rc = kv_set_error(KV_ECORRUPT, "%s: file number %06" PRIu64 " is listed twice", name, nos[i]);
    free(nos);
    return rc;
}

int vset_recover(version_set *vs) {
    char name[256], path[4096];
    int rc = read_current(vs, name, sizeof name);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/%s", vs->dir, name);
    wal_reader *r;
    rc = wal_reader_open(vs->env, path, name, &r);
    if (rc) {
        if (rc == KV_ENOTFOUND) return kv_set_error(KV_ECORRUPT, "CURRENT names %s, which is missing", name);
        return rc;
    }
    const uint8_t *rec;
    size_t len;
    uint64_t off;
    int nrec = 0;
    while ((rc = wal_read(r, &rec, &len, &off)) == KV_OK) {
        version_edit e;
        rc = edit_decode(&e, rec, len, name, off);
        if (rc) break;
        version *v;
        rc = version_apply(vs, vs->current, &e, &v);
        if (rc == KV_OK) {
            vset_apply_scalars(vs, &e);
            vset_install(vs, v);
        }
        edit_free(&e);
        if (rc) break;
        nrec++;
    }
    wal_reader_close(r);
    if (rc == KV_ENOTFOUND) rc = KV_OK;
    if (rc) return rc;
    if (nrec == 0) return kv_set_error(KV_ECORRUPT, "%s: empty manifest at offset 0", name);
    rc = version_validate(vs->current, name);
    if (rc) return rc;
    /* the file number counter must pass every file listed */
    for (int l = 0; l < KV_MAX_LEVELS; l++)
        for (size_t i = 0; i < vs->current->nfiles[l]; i++)
            if (vs->current->files[l][i]->file_no >= vs->next_file) vs->next_file = vs->current->files[l][i]->file_no + 1;
    for (size_t i = 0; i < vs->current->nblobs; i++)
        if (vs->current->blobs[i]->file_no >= vs->next_file) vs->next_file = vs->current->blobs[i]->file_no + 1;
    return KV_OK;
}

/* The whole current state as one edit. */
static int snapshot_edit(version_set *vs, version_edit *e) {
    edit_init(e);
    e->has_log_number = e->has_next_file = e->has_last_seq = e->has_batchlog_floor = true;
    e->log_number = vs->log_number;
    e->next_file = vs->next_file;
    e->last_seq = vs->last_seq;
    e->batchlog_floor = vs->batchlog_floor;
    version *v = vs->current;
    for (int l = 0; l < KV_MAX_LEVELS; l++)
        for (size_t i = 0; i < v->nfiles[l]; i++)
            if (edit_add_file(e, l, v->files[l][i])) return KV_ENOMEM;
    for (size_t i = 0; i < v->nblobs; i++)
        if (edit_add_blob(e, v->blobs[i]->file_no)) return KV_ENOMEM;
    return KV_OK;
}

/* Point CURRENT at MANIFEST-manifest_no: write CURRENT.tmp, fsync it, rename it over CURRENT, fsync the directory.
 * *renamed says whether the rename happened: once it has, and until the directory's fsync succeeds, CURRENT names
 * either manifest, now or after a crash, so the caller must keep both. */
static int set_current(version_set *vs, uint64_t manifest_no, bool *renamed) {
    *renamed = false;
    char tmp[4096], cur[4096], content[64];
    snprintf(tmp, sizeof tmp, "%s/CURRENT.tmp", vs->dir);
    snprintf(cur, sizeof cur, "%s/CURRENT", vs->dir);
    int n = snprintf(content, sizeof content, "MANIFEST-%06" PRIu64 "\n", manifest_no);
    kv_file *f;
    int rc = vs->env->open_write(vs->env, tmp, &f);
    if (rc) return rc;
    rc = vs->env->append(vs->env, f, content, (size_t)n);
    if (!rc) rc = vs->env->sync(vs->env, f);
    int rc2 = vs->env->close(vs->env, f);
    if (!rc) rc = rc2;
    if (!rc) {
        rc = vs->env->rename(vs->env, tmp, cur);
        *renamed = rc == KV_OK;
    }
    if (!rc) rc = vs->env->sync_dir(vs->env, vs->dir);
    if (rc && !*renamed) kv_env_remove_quietly(vs->env, tmp);
    return rc;
}

int vset_write_snapshot(version_set *vs) {
    uint64_t no = vset_new_file_number(vs);
    char path[4096];
    snprintf(path, sizeof path, "%s/MANIFEST-%06" PRIu64, vs->dir, no);
    version_edit e;
    kv_bytes rec = {0};
    wal_writer *w = NULL;
    int rc = snapshot_edit(vs, &e);
    e.next_file = vs->next_file;
    if (!rc) rc = edit_encode(&e, &rec);
    edit_free(&e);
    if (!rc) rc = wal_writer_open(vs->env, path, &w);
    if (!rc) rc = wal_append(w, rec.data, rec.len);
    if (!rc) rc = wal_sync(w);
    if (!rc) rc = vs->env->sync_dir(vs->env, vs->dir);
    bool renamed = false;
    if (!rc) rc = set_current(vs, no, &renamed);
    bytes_free(&rec);
    if (rc && renamed) {
        /* CURRENT names the new manifest, but the rename may not be durable: after a crash CURRENT may name the
         * previous one again. Both list the current version; keep both (manifest_no stays the previous one, so
         * neither is deleted as obsolete) and append to neither: the next edit starts a fresh manifest, and with
         * it a fresh rename and fsync of the directory. Until then no table or blob file may be deleted. */
        wal_writer_close(w);
        if (vs->manifest) wal_writer_close(vs->manifest);
        vs->manifest = NULL;
        vs->deletions_unsafe = true;
        return rc;
    }
    if (rc) {
        if (w) wal_writer_close(w);
        kv_env_remove_quietly(vs->env, path);
        return rc;
    }
    if (vs->manifest) wal_writer_close(vs->manifest);
    vs->manifest = w;
    vs->manifest_no = no;
    vs->deletions_unsafe = false; /* CURRENT names a manifest that lists exactly the current version */
    return KV_OK;
}

int vset_log_and_apply(version_set *vs, version_edit *e) {
    if (!vs->manifest) {
        /* an earlier manifest write failed; start a fresh manifest first */
        int rc = vset_write_snapshot(vs);
        if (rc) return rc;
    }
    e->has_next_file = true;
    e->next_file = vs->next_file;
    if (!e->has_last_seq) {
        e->has_last_seq = true;
        e->last_seq = vs->last_seq;
    }
    /* test_crash: the tables an edit adds were created (and fsync'ed) but their directory entries were not: make
     * the names durable before the manifest refers to them, else a power loss can leave a manifest naming a table
     * that is gone. */
    if (e->nnew) {
        int rc = vs->env->sync_dir(vs->env, vs->dir);
        if (rc) return rc;
    }
    version *v;
    int rc = version_apply(vs, vs->current, e, &v);
    if (rc) return rc;
    kv_bytes rec = {0};
    rc = edit_encode(e, &rec);
    if (!rc) rc = wal_append(vs->manifest, rec.data, rec.len);
    if (!rc) rc = wal_sync(vs->manifest);
    bytes_free(&rec);
    if (rc) {
        /* The manifest may now end in a partial record, or hold this edit whole with only its fsync failed: start a
         * fresh one rather than append after it. Until a fresh manifest is in place, the live manifest may name
         * files of this edit, so no table or blob file may be deleted (deletions_unsafe). Writing the snapshot may
         * fail too (the disk is full); then the next call tries again. */
        version_destroy(v);
        wal_writer_close(vs->manifest);
        vs->manifest = NULL;
        vs->deletions_unsafe = true;
        int rc2 = vset_write_snapshot(vs);
        (void)rc2;
        return rc;
    }
    vset_apply_scalars(vs, e);
    vset_install(vs, v);
    if (vs->manifest && wal_writer_size(vs->manifest) > (64ull << 20)) (void)vset_write_snapshot(vs);
    return KV_OK;
}
