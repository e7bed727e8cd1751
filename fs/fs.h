/*
 * fs.h — the filesystem logic of kvfs, independent of libfuse: path-based operations over a store (store.h).
 *
 * fs_fuse.c maps libfuse's high-level operations onto these; unit tests call them directly over store_mem.
 * Paths are FUSE paths ("/a/b"), names escaped as in names.h. Every function returns 0 (or a byte count) or a
 * negative errno value. Permission checks are the kernel's (default_permissions); these functions check only
 * what the kernel cannot know (existence of keys, emptiness of directories, the shape of names).
 */
#ifndef KVFS_FS_H
#define KVFS_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include "store.h"

typedef struct kvfs_config {
    mode_t file_mode;          /* permission bits shown for keys written without attributes (0644) */
    mode_t dir_mode;           /* ... and for directories without attributes (0755) */
    uid_t uid;                 /* owner of keys without attributes */
    gid_t gid;
    bool sync_writes;          /* every store write is synced */
    bool writeback_cache;      /* the kernel caches writes and owns mtime: do not stamp mtime at write */
    size_t write_buffer_bytes; /* per open file; default 1 MiB */
} kvfs_config;

void kvfs_config_init(kvfs_config *c);

typedef struct kvfs_fs kvfs_fs;
typedef struct kvfs_file kvfs_file; /* an open file (shared by every open of the same file) */
typedef struct kvfs_dir kvfs_dir;   /* an open directory listing */

/* Who is asking (from the FUSE request). */
typedef struct kvfs_caller {
    uid_t uid;
    gid_t gid;
} kvfs_caller;

/* The change time the kernel put into the request this thread handles (a SETATTR with FATTR_CTIME), or NULL for
 * none: the attribute changes made for it take that ctime, not the daemon's clock. With the writeback cache the
 * kernel keeps its own ctime of a regular file and shows it, so the record must say the same, or the ctime would
 * change when the kernel forgets the file (a remount). */
void kvfs_request_ctime(const struct timespec *t);

/* Create the filesystem over st (not owned). Removes leftovers of files unlinked while open at a previous run. */
int kvfs_fs_new(store *st, const kvfs_config *cfg, kvfs_fs **out);
/* Write every buffered byte to the store. */
int kvfs_fs_flush_all(kvfs_fs *fs);
/* The kernel's writeback cache was negotiated (then the kernel owns mtime of written files). */
void kvfs_fs_set_writeback_cache(kvfs_fs *fs, bool on);
bool kvfs_fs_writeback_cache(const kvfs_fs *fs);
/* The attributes of a file that is gone (no key, no open left): a regular file of no bytes and no link, with the
 * mount's default mode and owner. For the kernel's own requests about a node it still caches (fs_fuse.c). */
void kvfs_gone_attr(const kvfs_fs *fs, struct stat *st);
/* Make everything written so far durable. */
int kvfs_fs_sync(kvfs_fs *fs);
/* Flush everything and free (open files are forgotten: their buffers are written first). */
void kvfs_fs_free(kvfs_fs *fs);

/* Attributes. f may be NULL; when given it names the file (even after unlink or rename) and path may be NULL. */
int kvfs_getattr(kvfs_fs *fs, const char *path, kvfs_file *f, struct stat *st);
int kvfs_chmod(kvfs_fs *fs, const char *path, kvfs_file *f, mode_t mode);
int kvfs_chown(kvfs_fs *fs, const char *path, kvfs_file *f, uid_t uid, gid_t gid);
/* ts[0] atime, ts[1] mtime; tv_nsec UTIME_NOW / UTIME_OMIT as for utimensat. */
int kvfs_utimens(kvfs_fs *fs, const char *path, kvfs_file *f, const struct timespec ts[2]);
int kvfs_truncate(kvfs_fs *fs, const char *path, kvfs_file *f, off_t size);
/* fallocate(2) on an open file: mode 0 extends the size to off + len when that is larger (the new part reads as
 * zeros; no space is reserved: a store has no blocks to set aside, so a later write can still meet ENOSPC);
 * FALLOC_FL_KEEP_SIZE alone does nothing; FALLOC_FL_PUNCH_HOLE (with KEEP_SIZE) and FALLOC_FL_ZERO_RANGE make the
 * range read as zeros, a hole that takes no space (ZERO_RANGE without KEEP_SIZE also extends the size to off + len;
 * with it, as a punch, only the part within the size changes); other modes (COLLAPSE_RANGE, INSERT_RANGE) are
 * EOPNOTSUPP. */
int kvfs_fallocate(kvfs_fs *fs, kvfs_file *f, int mode, off_t off, off_t len);

/* lseek(2)'s SEEK_DATA and SEEK_HOLE (whence) on an open file from off: the offset into *out, or -ENXIO at or past
 * the end (and for SEEK_DATA when only holes are left); other whence values: -EINVAL. With the writeback cache the
 * kernel asks without writing back its dirty pages first, and neither bytes nor a size it has not sent may be
 * answered from: so while an open that may write is counted (kvfs_file_writer), unless written_back says the
 * caller had the kernel write back its pages from off on, this is -EAGAIN. */
int kvfs_lseek(kvfs_fs *fs, kvfs_file *f, off_t off, int whence, bool written_back, off_t *out);
/* copy_file_range(2): up to len bytes from off_in of fin over off_out of fout (which may be fin), one batch; the
 * count copied (0 at or past fin's end; at most FS_COPY_MAX a call: callers loop, as for a short write). The store
 * shares what it keeps in blob files instead of copying it, so a large copy costs a reference, not its bytes. */
ssize_t kvfs_copy_file_range(kvfs_fs *fs, kvfs_file *fin, off_t off_in, kvfs_file *fout, off_t off_out, size_t len);
/* The FUSE layer counts the opens that may write a file (+1 when one is made, -1 at its release, before
 * kvfs_release): the kernel writes back such an open's pages at its last close, before it releases it. */
void kvfs_file_writer(kvfs_fs *fs, kvfs_file *f, int delta);

/* Namespace. */
int kvfs_mkdir(kvfs_fs *fs, const char *path, mode_t mode, const kvfs_caller *who);
int kvfs_rmdir(kvfs_fs *fs, const char *path);
int kvfs_unlink(kvfs_fs *fs, const char *path);
int kvfs_mknod(kvfs_fs *fs, const char *path, mode_t mode, dev_t rdev, const kvfs_caller *who);
int kvfs_symlink(kvfs_fs *fs, const char *target, const char *path, const kvfs_caller *who);
int kvfs_readlink(kvfs_fs *fs, const char *path, char *buf, size_t size);
/* flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE. */
int kvfs_rename(kvfs_fs *fs, const char *from, const char *to, unsigned flags);

/* Files. flags are open(2) flags. */
int kvfs_create(kvfs_fs *fs, const char *path, mode_t mode, int flags, const kvfs_caller *who, kvfs_file **out);
/* -EBUSY for a writable (or O_TRUNC) open of a key put again while a file another writer deleted at that key is still
 * open (kvfs_write_keys): the kernel takes the path for the old file until then. */
int kvfs_open(kvfs_fs *fs, const char *path, int flags, kvfs_file **out);
/* One more open of f, which the caller holds open (a file unlinked while open, reached by its node alone, as through
 * /proc/PID/fd/N): as kvfs_open of its path would be. */
int kvfs_reopen(kvfs_fs *fs, kvfs_file *f, int flags);
/* Bytes read (short only at end of file), or -errno. */
ssize_t kvfs_read(kvfs_fs *fs, kvfs_file *f, void *buf, size_t size, off_t off);
/* Bytes written, or -errno. append: write at the end of file whatever off says. */
ssize_t kvfs_write(kvfs_fs *fs, kvfs_file *f, const void *buf, size_t size, off_t off, bool append);
int kvfs_flush(kvfs_fs *fs, kvfs_file *f);
int kvfs_fsync(kvfs_fs *fs, kvfs_file *f, bool datasync);
/* One open fewer; the last one flushes and frees f (and a file unlinked while open disappears). */
int kvfs_release(kvfs_fs *fs, kvfs_file *f);
/* A top-level name (a key's first path component, the whole key when it has no '/') whose kernel entry is to be
 * dropped: kvfs_release_changed hands them out, the caller frees each (free). */
typedef struct kvfs_stale_top {
    struct kvfs_stale_top *next;
    size_t len;
    uint8_t name[];
} kvfs_stale_top;
/* kvfs_release, and when that was the last open of a file and a key under a top-level name was changed by another
 * writer while a file under that name was open (kvfs_file_mark_changed), and now none is open (this file was the
 * last, or the others were renamed elsewhere or unlinked), *stale gets those names (else NULL). */
int kvfs_release_changed(kvfs_fs *fs, kvfs_file *f, kvfs_stale_top **stale);
/* Another writer (the control socket) changed the keyspace-0 key: if a file under the same top-level name (the key's
 * own included) is open, remember the name for the last close that leaves none open there (kvfs_release_changed).
 * Returns whether one is open (then the kernel's top-level entry must not be dropped now). */
bool kvfs_file_mark_changed(kvfs_fs *fs, const void *key, size_t klen);
/* One more open of the file whose key path named until another writer deleted it while the file was open
 * (kvfs_write_keys), when that file is still open and path names nothing now; else NULL. The kernel still has such a
 * file under that path until its last close, and asks about it by the path alone (fstat, fchmod, fchown, futimens of
 * its descriptors). Let go of it with kvfs_release. */
kvfs_file *kvfs_open_deleted(kvfs_fs *fs, const char *path);
/* The kernel no longer has f, a file kvfs_open_deleted found, under its old path (it was unlinked or renamed there
 * through the mount): requests by that path are no longer about f. */
void kvfs_deleted_renamed(kvfs_fs *fs, kvfs_file *f);
/* How many opens f has now. */
int kvfs_file_opens(kvfs_fs *fs, kvfs_file *f);

/* Directories. The fill callback returns non-zero when the caller's buffer is full (that entry was not taken).
 * st is complete when plus is set, else only st_mode's type and st_ino. off is the entry's cookie: passing it
 * back to kvfs_readdir resumes after that entry. */
typedef int (*kvfs_fill_fn)(void *ctx, const char *name, const struct stat *st, off_t off);
int kvfs_opendir(kvfs_fs *fs, const char *path, kvfs_dir **out);
int kvfs_readdir(kvfs_fs *fs, kvfs_dir *d, off_t off, bool plus, kvfs_fill_fn fill, void *ctx);
void kvfs_releasedir(kvfs_fs *fs, kvfs_dir *d);

/* Extended attributes: only the user.* namespace is stored; others are ENOTSUP (set) or ENODATA (get). */
int kvfs_setxattr(kvfs_fs *fs, const char *path, const char *name, const void *value, size_t size, int flags);
/* Value length (copied when size is large enough, -ERANGE when too small; size 0 asks for the length). */
ssize_t kvfs_getxattr(kvfs_fs *fs, const char *path, const char *name, void *value, size_t size);
ssize_t kvfs_listxattr(kvfs_fs *fs, const char *path, char *list, size_t size);
int kvfs_removexattr(kvfs_fs *fs, const char *path, const char *name);

int kvfs_statfs(kvfs_fs *fs, struct statvfs *out);

/* Forget everything the filesystem caches: call after the store was changed by someone else (the daemon's own
 * writes never need it; other writers are also noticed by the store's sequence number at the next lookup). */
void kvfs_fs_invalidate(kvfs_fs *fs);

/* Another writer's puts and deletes of keyspace-0 keys (a kvfs tool run by the daemon for the control socket): apply b
 * (STORE_PUT and STORE_DELETE of keyspace 0 only, else -EINVAL) as one atomic batch, synced when sync is set. A file
 * open through the filesystem whose key b deletes goes as by kvfs_unlink, in the same batch: its content moves to
 * the orphan keyspace, where its open handles keep reading and writing it until the last release, while the key is
 * gone for everyone else (a put of the key later in b makes a new file). A put of an open file's key rewrites that
 * file's content, as the store API does. A deleted key's keyspace-1 records (its attributes and extended attributes)
 * go with it, as in an unlink: a later put of the key makes a file with the defaults, not the deleted file's mode,
 * owner and xattrs. On failure nothing has changed, neither the store nor the open files. The filesystem's caches
 * are dropped; the kernel's are the caller's to drop (kvfs_notify_key_changed). */
int kvfs_write_keys(kvfs_fs *fs, const store_batch *b, bool sync);
/* kvfs_write_keys for a store no filesystem has mounted (a kvfs tool that opened the store itself): the same batch,
 * the records included, through a filesystem made for the call. */
int kvfs_write_keys_unmounted(store *st, const store_batch *b, bool sync);

/* For the control socket (mount/ctl.c): the key `key` of keyspace 0 was put or deleted by another writer than the
 * mounted filesystem, and that write is committed. Drops the filesystem's cached facts and tells the kernel to
 * forget its cached attributes and pages of the key's file and of the directories above it, so that the next
 * stat, read or listing through the mount shows the store's state (new keys appear at once in any case: lookups
 * that fail are not cached). Cheap when nothing of the key is cached. Thread-safe; call it from any thread that is
 * not serving a FUSE request; does nothing when no mount is running. Defined in fs_fuse.c. */
void kvfs_notify_key_changed(const void *key, size_t klen);
/* For the control socket's del and batch: when a mount is running, its filesystem writes b (kvfs_write_keys: a file
 * open through the mount whose key b deletes keeps its content for its open descriptors until their last close, as
 * after rm) and the kernel is told of every key b changed (kvfs_notify_key_changed). Returns 0, or -errno when the
 * write failed (nothing changed; over store_kv the engine's detail of it is this thread's kv_errmsg()), or 1 when no mount
 * is running (kvfs serve): nothing was written, and the caller writes the batch itself. The same threads as for
 * kvfs_notify_key_changed. Defined in fs_fuse.c. */
int kvfs_mounted_write_keys(const store_batch *b, bool sync);

#endif /* KVFS_FS_H */
