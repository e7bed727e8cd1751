/*
 * wal.h — the record log: the write-ahead log, the manifest and the batch log are all sequences of records.
 *
 * Format (docs/format.md, "Record log"): a file is a sequence of records, each
 *     fixed32 checksum | fixed32 length | payload (length bytes)
 * where checksum = kv_checksum2(length field (4 bytes), payload). There is no file header and no padding.
 *
 * Invariants
 *  - wal_append writes one whole record with one append call; after wal_sync returns, every record appended before
 *    it is durable.
 *  - A reader never trusts a length: a record whose length runs past the end of the file, or a header cut short, is
 *    a torn tail. A record whose checksum fails is a torn tail when it is the last thing in the file (or only zeros
 *    follow it), otherwise corruption, reported with the file name and the record's offset. A torn tail ends the
 *    log silently. Zeros from a record boundary to the end of the file are a clean end (space allocated ahead).
 *  - The reader streams: memory is bounded by the largest record, not the file size.
 */
#ifndef KV_WAL_H
#define KV_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "env.h"

#define WAL_HEADER 8
#define WAL_MAX_RECORD (1u << 30) /* larger lengths are treated as corruption / torn tail */

typedef struct wal_writer wal_writer;
/* Create (truncate) path for appending records. */
int wal_writer_open(kv_env *env, const char *path, wal_writer **out);
/* The same, for a log synced often (the write-ahead log): the writer allocates space ahead of its records and writes
 * them by offset, so the file's size changes once per allocation, not at every append, and fdatasync is cheaper.
 * The file then ends in zeros, which readers take as its end. Without the environment's open_overwrite, write_at
 * and allocate it is wal_writer_open. */
int wal_writer_open_ahead(kv_env *env, const char *path, wal_writer **out);
/* Reopen an existing log to append after its last valid record (valid_end from a reader); the file is cut there. */
int wal_writer_reopen(kv_env *env, const char *path, uint64_t valid_end, wal_writer **out);
int wal_append(wal_writer *w, const void *payload, size_t len);
/* Append several payloads as one record without concatenating them first. */
int wal_appendv(wal_writer *w, const void *const *parts, const size_t *lens, size_t nparts);
/* Append n records with one append call (group commit); on failure none of them is in the log. */
int wal_append_records(wal_writer *w, const void *const *payloads, const size_t *lens, size_t n);
int wal_sync(wal_writer *w);
uint64_t wal_writer_size(const wal_writer *w); /* bytes appended, including headers */
/* An append failed and the file could not be cut back: it may end in records (or part of one) that failed. */
bool wal_writer_broken(const wal_writer *w);
int wal_writer_close(wal_writer *w);           /* frees w; does not sync */

typedef struct wal_reader wal_reader;
/* name is used in error messages (e.g. "000007.log"). */
int wal_reader_open(kv_env *env, const char *path, const char *name, wal_reader **out);
/* Next record: KV_OK with *payload, *len (valid until the next call) and *offset (the record's file offset);
 * KV_ENOTFOUND at the end of the log (clean end or torn tail); KV_ECORRUPT (message: file and offset) for a bad
 * record that is not the last one; KV_EIO on read errors. */
int wal_read(wal_reader *r, const uint8_t **payload, size_t *len, uint64_t *offset);
/* After wal_read returned KV_ECORRUPT: *lost = the damaged record touches a page that reads as zeros from the
 * record's start to the page's end, or whole (4 KiB pages). That is what a power loss leaves where it kept a later
 * page of unsynced writes and lost an earlier one: in space allocated ahead, a lost page reads as zeros. */
int wal_reader_damage_is_lost_page(wal_reader *r, bool *lost);
/* The offset just past the last byte of the file that is not zero (the zeros allocated ahead left out). */
int wal_reader_data_end(wal_reader *r, uint64_t *end);
bool wal_reader_torn(const wal_reader *r);         /* the log ended in a torn record */
uint64_t wal_reader_valid_end(const wal_reader *r); /* offset just past the last good record */
void wal_reader_close(wal_reader *r);

#endif /* KV_WAL_H */
