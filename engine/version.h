/*
 * version.h — table file metadata, versions (the set of live files per level), and the manifest that records how
 * that set changes.
 *
 * Invariants
 *  - A version is immutable once built; readers hold a reference while they use its files. A file is deleted only
 *    when no live version lists it.
 *  - Level 0 files may overlap and are ordered newest first; in levels >= 1 files are sorted by smallest key and do
 *    not overlap.
 *  - The manifest is a record log (wal.h) of version edits. CURRENT names the live manifest; it is replaced with a
 *    write-to-temp, fsync, rename, directory-fsync sequence, so a crash leaves either the old or the new one.
 */
#ifndef KV_VERSION_H
#define KV_VERSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coding.h"
#include "kv.h"

#define KV_MAX_LEVELS_INTERNAL KV_MAX_LEVELS

typedef struct file_meta {
    int refs;                /* versions listing this file */
    uint64_t file_no;
    uint64_t file_size;
    uint64_t entries, tombstones;
    uint64_t min_seq, max_seq;
    kv_bytes smallest, largest; /* internal keys */
    bool being_compacted;
} file_meta;

/* A blob file known to the store (created by a writer, deleted by garbage collection). */
typedef struct blob_meta {
    int refs;            /* versions listing this file */
    uint64_t file_no;
} blob_meta;

typedef struct version version;
struct version {
    int refs;                 /* protected by the db mutex */
    struct version_set *vset;
    version *prev, *next;     /* the list of live versions */
    size_t nfiles[KV_MAX_LEVELS_INTERNAL];
    file_meta **files[KV_MAX_LEVELS_INTERNAL];
    size_t nblobs;
    blob_meta **blobs;        /* sorted by file_no */
    double score;             /* compaction score of the best level (>= 1 means compact) */
    int score_level;
};

/* A change to the version: what the manifest records. */
typedef struct new_file {
    int level;
    file_meta *f; /* owned by the edit until applied */
} new_file;
typedef struct deleted_file {
    int level;
    uint64_t file_no;
} deleted_file;

typedef struct version_edit {
    bool has_log_number, has_next_file, has_last_seq, has_batchlog_floor;
    uint64_t log_number, next_file, last_seq, batchlog_floor;
    size_t nnew, ndel, nblob_new, nblob_del;
    new_file *new_files;
    deleted_file *del_files;
    uint64_t *blob_new, *blob_del;
} version_edit;

void edit_init(version_edit *e);
void edit_free(version_edit *e);
int edit_add_file(version_edit *e, int level, const file_meta *f); /* copies f */
int edit_delete_file(version_edit *e, int level, uint64_t file_no);
int edit_add_blob(version_edit *e, uint64_t file_no);
int edit_delete_blob(version_edit *e, uint64_t file_no);
int edit_encode(const version_edit *e, kv_bytes *out);
/* name and offset are used in the corruption message. */
int edit_decode(version_edit *e, const uint8_t *p, size_t len, const char *name, uint64_t offset);

file_meta *file_meta_new(void);
void file_meta_unref(file_meta *f);

struct kv_env;
typedef struct version_set {
    struct kv_env *env;
    char *dir;
    version *current;
    version live;             /* list head of live versions (dummy) */
    uint64_t next_file;
    uint64_t last_seq;        /* the largest sequence of a batch in a table (flushed, or replayed at open): batches
                                 only in a log are not counted until they are flushed */
    uint64_t log_number;      /* logs with a smaller number are no longer needed */
    uint64_t batchlog_floor;  /* batches below this sequence were pruned */
    uint64_t manifest_no;
    struct wal_writer *manifest;
    bool deletions_unsafe;    /* a manifest write failed and no fresh manifest replaced it yet: the live manifest
                                 may list files the current version does not, so none may be deleted */
    kv_bytes compact_pointer[KV_MAX_LEVELS_INTERNAL];
    uint64_t level1_bytes;
    int level_multiplier, l0_trigger;
} version_set;

int vset_new(struct kv_env *env, const char *dir, version_set **out);
void vset_free(version_set *vs);
/* Read CURRENT and the manifest it names, building the current version. KV_ENOTFOUND if there is no CURRENT. */
int vset_recover(version_set *vs);
/* Start a new manifest holding a snapshot of the current state and point CURRENT at it (used on open). */
int vset_write_snapshot(version_set *vs);
/* Append e to the manifest (fsync'ed) and install the resulting version as current. The caller serialises calls. */
int vset_log_and_apply(version_set *vs, version_edit *e);
uint64_t vset_new_file_number(version_set *vs);
void version_ref(version *v);
void version_unref(version *v);
uint64_t level_bytes(const version *v, int level);
uint64_t level_max_bytes(const version_set *vs, int level);
/* Is file number n (table or blob) listed by any live version? */
bool vset_file_is_live(const version_set *vs, uint64_t n);

/* Names of the store's files. */
void file_name(char *buf, size_t n, const char *dir, uint64_t no, const char *ext);

#endif /* KV_VERSION_H */
