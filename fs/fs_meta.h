/*
 * fs_meta.h — what the filesystem keeps in keyspace 1 beside the data, and the attribute record's encoding.
 *
 * Keyspace 1 keys (K is a key of keyspace 0, "dir key" of a directory K is K + "/", of the root ""):
 *   'F' K                 file attributes of the file K (regular file, symlink, fifo, socket, device)
 *   'D' dirkey            an explicit directory (created by mkdir; persists until rmdir) and its attributes
 *   'X' K 0x00 name       extended attribute "name" of the file K (name has no NUL: the last NUL splits)
 *   'Y' dirkey 0x00 name  extended attribute of a directory
 * Because a directory's records all start with its dir key, one prefix scan per letter finds a whole subtree (for
 * rename and rmdir), and the D record of a directory sorts with its subtree, where a listing expects it.
 *
 * Attribute record (little-endian, 64 bytes, version 1):
 *   u8 version | u8 reserved | u16 reserved | u32 mode (type and permission bits) | u32 uid | u32 gid | u64 rdev |
 *   i64 atime_sec u32 atime_nsec | i64 mtime_sec u32 mtime_nsec | i64 ctime_sec u32 ctime_nsec | u32 reserved
 * A record that is too short or has another version is ignored (defaults are shown), never trusted.
 */
#ifndef KVFS_FS_META_H
#define KVFS_FS_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define META_FILE 'F'
#define META_DIR 'D'
#define META_FILE_XATTR 'X'
#define META_DIR_XATTR 'Y'
#define META_RECORD_BYTES 64

typedef struct fs_attr {
    uint32_t mode;
    uint32_t uid, gid;
    uint64_t rdev;
    struct timespec atime, mtime, ctime;
} fs_attr;

void meta_encode(const fs_attr *a, uint8_t out[META_RECORD_BYTES]);
/* false when the record is malformed. */
bool meta_decode(const void *rec, size_t len, fs_attr *a);

/* A growable byte string for building keys. */
typedef struct keybuf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} keybuf;
void kb_init(keybuf *k);
void kb_free(keybuf *k);
void kb_reset(keybuf *k);
void kb_add(keybuf *k, const void *d, size_t n);
void kb_byte(keybuf *k, uint8_t b);

/* Keyspace-1 keys. dir_key/dlen: K + "/" for a directory K, empty for the root. */
void meta_file_key(keybuf *out, const uint8_t *key, size_t klen);
void meta_dir_key(keybuf *out, const uint8_t *dir_key, size_t dlen);
void meta_xattr_key(keybuf *out, bool dir, const uint8_t *k, size_t klen, const char *name);

struct timespec fs_now(void);
struct timespec fs_now_coarse(void); /* for the times of a new file or directory */
struct timespec fs_ctime_now(void);  /* for a changed entry's ctime: the request's (kvfs_request_ctime), or fs_now */

#endif /* KVFS_FS_META_H */
