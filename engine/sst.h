/*
 * sst.h — SSTables: immutable sorted files of (internal key, entry value).
 *
 * Layout (docs/format.md, "SSTable"):
 *     data block 1 .. data block n | filter block | properties block | index block | footer
 * Each block on disk is followed by a 5-byte trailer: 1 byte compression type (0 = none, 1 = deflate, 2 = seekable deflate) | fixed32
 * checksum of the block bytes and the type byte. A data block is stored compressed only when that saves at least an
 * eighth. The index block maps, for each data block, its last internal key to its handle (varint offset | varint
 * size, size excluding the trailer). The filter is one bloom filter over the user keys of the whole table. The
 * properties block is a block whose entries are name -> varint value (entries, tombstones, min_seq, max_seq,
 * raw_key_bytes, raw_value_bytes, data_blocks) and "smallest"/"largest" -> internal key; its keys are sorted names.
 * Footer (64 bytes): fixed64 filter offset, size | fixed64 properties offset, size | fixed64 index offset, size |
 * fixed32 format version (1) | fixed32 checksum of the preceding 52 bytes | fixed64 magic 0x6b7666737374626cULL.
 *
 * Invariants: a reader validates the footer, trailer checksums and block structure before using any byte, and
 * reports corruption as "<file>: <what> at offset <n>". Index and filter blocks go through the block cache with high
 * priority, data blocks with low priority.
 */
#ifndef KV_SST_H
#define KV_SST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "coding.h"
#include "env.h"
#include "iter.h"

#define SST_MAGIC 0x6b7666737374626cULL
#define SST_FOOTER 64

typedef struct sst_options {
    size_t block_bytes;
    int restart_interval;
    bool compression;
    int bloom_bits_per_key;
    bool whole_stream_blocks; /* compress data blocks as whole deflate streams (type 1), as versions before seekable
                               * blocks did: only for tests that check such tables still read */
} sst_options;

typedef struct sst_props {
    uint64_t file_size;
    uint64_t entries, tombstones;
    uint64_t min_seq, max_seq;
    uint64_t raw_key_bytes, raw_value_bytes;
    uint64_t data_blocks;
    uint64_t user_keys;         /* distinct user keys; 0 in a table written before this property existed */
    kv_bytes smallest, largest; /* internal keys; owned (free with sst_props_free) */
} sst_props;
void sst_props_free(sst_props *p);

typedef struct sst_builder sst_builder;
int sst_builder_new(kv_env *env, const char *path, const sst_options *o, sst_builder **out);
/* Keys in strictly increasing ikey_cmp order. */
int sst_builder_add(sst_builder *b, const uint8_t *ikey, size_t klen, const uint8_t *val, size_t vlen);
uint64_t sst_builder_size(const sst_builder *b); /* bytes written so far plus the pending block */
uint64_t sst_builder_entries(const sst_builder *b);
/* Write the remaining blocks and the footer, fsync, close, free b. *props (may be NULL) gets the table's properties.
 * On failure the file is left for the caller to remove. */
int sst_builder_finish(sst_builder *b, sst_props *props);
void sst_builder_abandon(sst_builder *b); /* close and free without finishing */

typedef struct sst_reader sst_reader;
/* Open a table. name is for messages ("000012.sst"); cache may be NULL (no caching). The reader starts with one
 * reference. */
int sst_reader_open(kv_env *env, const char *path, const char *name, uint64_t file_no, block_cache *cache,
                    sst_reader **out);
void sst_reader_ref(sst_reader *r);
void sst_reader_unref(sst_reader *r); /* the last reference closes the file */
/* The newest entry for ukey with sequence <= seq: 1 found (*type, *found_seq, the entry value copied into *val),
 * 0 absent (the bloom filter skips the data block read when it can), < 0 error. */
int sst_reader_get(sst_reader *r, const uint8_t *ukey, size_t ulen, uint64_t seq, int *type, kv_bytes *val,
                   uint64_t *found_seq);
/* An iterator over the table (it holds a reference on r). fill_cache false: data blocks read by it are not added to
 * the cache (compaction, scans of everything). */
iter *sst_reader_iter(sst_reader *r, bool fill_cache);
const sst_props *sst_reader_props(const sst_reader *r);
/* Read every block, verifying checksums, structure and key order; report each problem through cb (file name,
 * offset, description). Returns the number of problems found (0 = clean), or < 0 if the file could not be read. */
typedef void (*sst_problem_fn)(void *ctx, const char *file, uint64_t offset, const char *what);
long sst_check_file(kv_env *env, const char *path, const char *name, sst_problem_fn cb, void *ctx);

/* A bounded cache of open table readers, keyed by file number. */
typedef struct table_cache table_cache;
int table_cache_new(kv_env *env, const char *dir, size_t max_open, block_cache *bc, table_cache **out);
void table_cache_free(table_cache *tc);
/* A referenced reader for dir/NNNNNN.sst (release with sst_reader_unref). */
int table_cache_get(table_cache *tc, uint64_t file_no, sst_reader **out);
void table_cache_evict(table_cache *tc, uint64_t file_no);

#endif /* KV_SST_H */
