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

typedef struct file_meta {
    int refs;                /* versions listing this file */
    uint64_t file_no;
    uint64_t file_size;
    uint64_t entries, tombstones;
    uint64_t min_seq, max_seq;
    kv_bytes smallest, largest; /* internal keys */
    bool being_compacted;
} file_meta;

#endif /* KV_VERSION_H */
