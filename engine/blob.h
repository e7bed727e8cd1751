/*
 * blob.h — large values kept out of the LSM tree (key-value separation, as WiscKey and RocksDB's BlobDB).
 *
 * A value of at least blob_threshold bytes is stored in append-only blob files; the tree holds a blob reference: the
 * value's size and a list of extents, each a run of bytes inside one record of one blob file, or a hole (zeros).
 * Overwriting part of a large value appends only the new bytes and splices a new extent into the list, so a 4 KiB
 * write into a 10 GiB value costs 4 KiB; renaming moves the reference, never the bytes.
 *
 * Blob file (docs/format.md, "Blob file"): a 16-byte header
 *     fixed64 magic 0x6b766673626c6f62ULL ("kvfsblob") | fixed32 format version (1) | fixed32 checksum of the first 12
 * then records. A record is a run of chunks; each chunk is
 *     fixed32 checksum(length field || data) | fixed32 length | data (1 .. BLOB_CHUNK bytes)
 * and every chunk of a record holds exactly BLOB_CHUNK bytes except the record's last. So byte i of a record whose
 * first chunk starts at offset R lies in the chunk at R + (i / BLOB_CHUNK) * (BLOB_CHUNK + 8).
 *
 * Blob reference (the payload of a KV_TYPE_BLOB entry):
 *     varint size | varint n | n x extent
 *     extent = varint file_no (0 = hole) | varint rec_off | varint rec_len | varint skip | varint len
 * meaning: len bytes starting at byte `skip` of the record of rec_len bytes whose first chunk is at rec_off.
 * For a hole only len is meaningful (the others are 0). The extents' lens add up to size.
 *
 * Invariants
 *  - Blob files are append-only and never modified; garbage collection writes live bytes to new files and deletes
 *    old files only when no version of the tree can reference them.
 *  - Every chunk read is verified against its checksum; corruption is reported as "<file>: <what> at offset <n>".
 *  - Reads are chunk-sized: memory does not depend on the value's size.
 */
#ifndef KV_BLOB_H
#define KV_BLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coding.h"
#include "env.h"

#define BLOB_MAGIC 0x6b766673626c6f62ULL
#define BLOB_CHUNK 65536u
#define BLOB_HEADER 16

typedef struct blob_extent {
    uint64_t file_no; /* 0 = hole */
    uint64_t rec_off, rec_len, skip, len;
} blob_extent;

typedef struct blob_ref {
    uint64_t size;
    size_t n, cap;
    blob_extent *ext;
} blob_ref;

/* Decode (validating that lengths add up and skip+len <= rec_len): KV_OK or KV_ECORRUPT. out must be zeroed or
 * previously used (it is reset). */
int blob_ref_decode(const uint8_t *p, size_t len, blob_ref *out);
int blob_ref_encode(const blob_ref *r, kv_bytes *out);
void blob_ref_free(blob_ref *r);
int blob_ref_copy(blob_ref *dst, const blob_ref *src);
/* Replace bytes [off, off + e->len) with extent e, extending the value (with a hole if off > size). Adjacent extents
 * that continue each other (same file, the second record directly following a first one of whole chunks, or holes)
 * are merged, so sequential appends keep the list short. */
int blob_ref_splice(blob_ref *r, uint64_t off, const blob_extent *e);
/* Append extent e at the value's end (blob_ref_splice at r->size, without its scan from the start). */
int blob_ref_append(blob_ref *r, const blob_extent *e);
/* Set the size: cut extents, or extend with a hole. */
int blob_ref_truncate(blob_ref *r, uint64_t size);
/* Bytes of file_no referenced by r (for garbage accounting). */
uint64_t blob_ref_bytes_in_file(const blob_ref *r, uint64_t file_no);
/* The file offset just past the last chunk of the record that extent e lies in (0 for a hole): a blob file shorter
 * than this lacks part of the record. */
uint64_t blob_extent_record_end(const blob_extent *e);

/* The set of blob files of a store: naming (dir/NNNNNN.blob), a bounded cache of open readers, reads. */
typedef struct blob_store blob_store;
int blob_store_new(kv_env *env, const char *dir, size_t max_open, blob_store **out);
void blob_store_free(blob_store *s);
/* Read len bytes of the value described by r starting at off (holes read as zeros); *nread short only past the
 * value's end. */
int blob_read(blob_store *s, const blob_ref *r, uint64_t off, void *buf, size_t len, size_t *nread);
/* Close a cached reader (before the file is deleted). */
void blob_store_forget(blob_store *s, uint64_t file_no);
/* Walk a whole blob file verifying the header and every chunk; problems reported through cb; returns the number of
 * problems, < 0 if the file could not be read. */
typedef void (*blob_problem_fn)(void *ctx, const char *file, uint64_t offset, const char *what);
long blob_check_file(kv_env *env, const char *path, const char *name, blob_problem_fn cb, void *ctx);
/* KV_OK if a whole chunk (valid length, matching checksum) starts at off of the file now: a torn tail that the walk
 * met in a file still being appended to may be whole a moment later. */
int blob_chunk_whole_at(kv_env *env, const char *path, uint64_t off);

/* One blob file being written. Not thread-safe: the caller serialises. */
typedef struct blob_writer blob_writer;
int blob_writer_new(kv_env *env, const char *path, uint64_t file_no, blob_writer **out); /* writes the header */
/* Append one whole record of len bytes; *e describes all of it. */
int blob_writer_add(blob_writer *w, const void *data, size_t len, blob_extent *e);
/* A record written in pieces: begin, add any number of pieces (buffering at most one chunk), end. */
int blob_writer_begin(blob_writer *w);
int blob_writer_append(blob_writer *w, const void *data, size_t len);
int blob_writer_end(blob_writer *w, blob_extent *e); /* e describes the whole record (len may be 0: a hole of 0) */
uint64_t blob_writer_size(const blob_writer *w);
uint64_t blob_writer_file_no(const blob_writer *w);
int blob_writer_sync(blob_writer *w);
int blob_writer_close(blob_writer *w); /* frees w (does not sync) */

#endif /* KV_BLOB_H */
