/*
 * env.h — the environment: every file and directory operation the engine performs goes through a kv_env.
 *
 * Invariants
 *  - Engine code never calls open/read/write/fsync/rename/unlink directly; it calls these functions, so that a test
 *    can substitute an environment that injects faults (env_fault.c) or simulates a power loss.
 *  - Every function returns KV_OK or a negative KV_E* code and, on failure, sets the thread's error message with the
 *    path (kv_set_error). ENOSPC and EDQUOT map to KV_ENOSPC, ENOENT to KV_ENOTFOUND, everything else to KV_EIO.
 *  - A kv_file belongs to the environment that opened it; it is used from one thread at a time for appends and
 *    write_at, while read_at may be called from many threads at once (pread semantics).
 */
#ifndef KV_ENV_H
#define KV_ENV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct kv_file kv_file; /* opaque; each environment defines its own */

typedef struct kv_env {
    /* Open an existing file for random-access reads. */
    int (*open_read)(struct kv_env *env, const char *path, kv_file **out);
    /* Create a file (truncating an existing one) for appending. */
    int (*open_write)(struct kv_env *env, const char *path, kv_file **out);
    /* Open an existing file for appending at its end (created if missing). */
    int (*open_append)(struct kv_env *env, const char *path, kv_file **out);
    /* Read up to len bytes at off; *nread < len only at end of file. */
    int (*read_at)(struct kv_env *env, kv_file *f, uint64_t off, void *buf, size_t len, size_t *nread);
    /* Append all len bytes (a short write is an error: the file may then hold a prefix of buf). */
    int (*append)(struct kv_env *env, kv_file *f, const void *buf, size_t len);
    /* Optional (NULL: kv_env_appendv calls append per piece): append n pieces in order, as append does one. */
    int (*appendv)(struct kv_env *env, kv_file *f, const struct iovec *iov, int n);
    /* Optional, all three or none (NULL: the write-ahead log appends instead). open_overwrite creates a file
     * (truncating an existing one) whose bytes are written by offset with write_at, which writes all len bytes at off
     * (a short write is an error: the file may then hold a prefix of buf there). allocate makes the file at least
     * size bytes long, the new bytes reading as zeros, with disk space reserved for them where the file system can
     * (fallocate). Writes into space allocated ahead change no file size, so their fdatasync has less to commit. */
    int (*open_overwrite)(struct kv_env *env, const char *path, kv_file **out);
    int (*write_at)(struct kv_env *env, kv_file *f, uint64_t off, const void *buf, size_t len);
    int (*allocate)(struct kv_env *env, kv_file *f, uint64_t size);
    /* Make the file's data durable (fdatasync). */
    int (*sync)(struct kv_env *env, kv_file *f);
    int (*size)(struct kv_env *env, kv_file *f, uint64_t *size);
    /* Close and free f (also after an error). */
    int (*close)(struct kv_env *env, kv_file *f);

    int (*file_size)(struct kv_env *env, const char *path, uint64_t *size);
    /* 1 if path exists, 0 if not, negative on error. */
    int (*exists)(struct kv_env *env, const char *path);
    int (*remove)(struct kv_env *env, const char *path);
    int (*rename)(struct kv_env *env, const char *from, const char *to); /* atomic, replaces to */
    int (*link)(struct kv_env *env, const char *from, const char *to);   /* hard link; KV_EIO if unsupported */
    int (*truncate)(struct kv_env *env, const char *path, uint64_t size);
    int (*mkdir)(struct kv_env *env, const char *path, int mode);        /* KV_EEXIST if a directory is there */
    int (*rmdir)(struct kv_env *env, const char *path);
    /* Names in a directory (no "." or ".."), malloc'ed array of malloc'ed strings; free with kv_env_free_names. */
    int (*list_dir)(struct kv_env *env, const char *path, char ***names, size_t *n);
    /* fsync a directory, making creations, renames and removals in it durable. */
    int (*sync_dir)(struct kv_env *env, const char *path);
    /* Optional (NULL: unknown): the bytes an unprivileged writer may still use on the file system holding path, and
     * its size (statvfs: f_bavail and f_blocks). Compactions stop short of the last bytes with it (db_bg.c). */
    int (*disk_space)(struct kv_env *env, const char *path, uint64_t *avail, uint64_t *total);
    /* Take an exclusive advisory lock on path (created if missing): KV_EBUSY when another holder has it. */
    int (*lock)(struct kv_env *env, const char *path, kv_file **lock);
    int (*unlock)(struct kv_env *env, kv_file *lock);
    /* Optional (NULL: lock is taken instead): a shared lock on path, released by unlock. Any number of shared
     * holders at once, none while lock's exclusive holder has it (and lock gets KV_EBUSY while one has it). */
    int (*lock_shared)(struct kv_env *env, const char *path, kv_file **lock);
    /* Optional (NULL: writers have no precedence): an exclusive intent lock on path, released by unlock, held by one
     * that waits to take lock while others hold path: KV_EBUSY while another holds the intent. While it is held,
     * lock_shared returns KV_EBUSY too (a waiting writer goes first); lock, and shared holders already in, are not
     * affected. */
    int (*lock_intent)(struct kv_env *env, const char *path, kv_file **lock);
    /* Free the environment itself (no-op for the shared POSIX one). */
    void (*destroy)(struct kv_env *env);
} kv_env;

/* The real file system. A process-wide singleton; never destroy it. Its first write into a shared mapping installs a
 * SIGBUS handler (the process's previous one is called for faults elsewhere): a store into a mapping that fails
 * then becomes a pwrite and its error, not the death of the process (docs/design.md, "The write path"), on a thread
 * that does not block SIGBUS (where it is blocked, the kernel kills the process). */
kv_env *kv_env_posix(void);
/* Bytes it has written into files through shared mappings since the process started (write_at into reserved space:
 * the write-ahead log), which the kernel's count of bytes passed to write() (wchar in /proc/PID/io) leaves out. */
uint64_t kv_env_posix_mapped_bytes(void);
void kv_env_free_names(char **names, size_t n);
/* Remove what a failed operation leaves behind (a file it was creating) and keep that failure's message, which a
 * failed removal (nothing was created yet: ENOENT) would otherwise replace (error.h: the first message survives). */
void kv_env_remove_quietly(kv_env *env, const char *path);
/* Append n pieces (env->appendv when the environment has one, else one append per piece). */
int kv_env_appendv(kv_env *env, kv_file *f, const struct iovec *iov, int n);

/* ---- Fault injection (env_fault.c), for tests ----------------------------------------------------------------- */

/* A fault-injecting environment wrapping base. Without any fault armed it behaves exactly like base. */
kv_env *kv_fault_env_new(kv_env *base);

typedef enum {
    KV_FAULT_NONE = 0,
    KV_FAULT_WRITE_EIO,   /* appends fail with KV_EIO, nothing written */
    KV_FAULT_WRITE_SHORT, /* appends write half their bytes, then fail with KV_EIO */
    KV_FAULT_ENOSPC,      /* appends and file creations fail with KV_ENOSPC */
    KV_FAULT_SYNC_EIO,    /* sync and sync_dir fail with KV_EIO */
    KV_FAULT_READ_EIO,    /* read_at fails with KV_EIO */
    KV_FAULT_DISK_EIO,    /* appends and syncs (also sync_dir) fail with KV_EIO, nothing written: a dying disk */
    KV_FAULT_SYNC_LOST,   /* a file's sync fails with KV_EIO, and what it was to make durable is lost for good: later
                           * syncs of that file succeed without making anything more of it durable (Linux may mark the
                           * pages of a failed writeback clean, and the next fsync then skips them) */
    KV_FAULT_WRITE_STUCK, /* appends write all their bytes, then fail with KV_EIO, and truncations fail with KV_EIO:
                           * a failed append whose bytes stay in the file, and come back at recovery */
    KV_FAULT_DISK_FULL,   /* a disk another process filled: it has no free byte when armed (`after` is not used);
                           * removing or truncating a file through the environment gives its bytes back, and what
                           * needs new space (appends, allocations, writes by offset past a file's end) takes them or
                           * fails with KV_ENOSPC; writes into a file's allocated space go on; creating a file fails
                           * while no byte is free; disk_space reports the free bytes (unless
                           * kv_fault_env_set_disk_space says otherwise) */
} kv_fault_kind;

/* Arm a fault: after `after` more successful operations of the affected kind, every further one fails as `kind`,
 * for files whose path contains `path_substr` (NULL = all files), until kv_fault_env_clear(). */
void kv_fault_env_arm(kv_env *env, kv_fault_kind kind, uint64_t after, const char *path_substr);
void kv_fault_env_clear(kv_env *env);
/* Count of operations that failed because of an armed fault. */
uint64_t kv_fault_env_failures(kv_env *env);

/* Simulated power loss. kv_fault_env_crash() makes every later write, sync, creation, rename and removal through
 * this environment a silent no-op (returning KV_OK), as if the machine stopped: the store can then be closed and
 * freed. kv_fault_env_apply_crash() then rewinds the real files to what a power loss would have left: each file
 * written through the environment is cut back to its size at its last sync (after a KV_FAULT_SYNC_LOST: its size at
 * the last sync before the failed one); files created, renamed or removed since
 * the last sync_dir of their directory are removed / renamed back / restored as far as tracked. After it the
 * environment works normally again. */
void kv_fault_env_crash(kv_env *env);
int kv_fault_env_apply_crash(kv_env *env);
/* A power loss in the middle of whatever runs: after `changes` more changes to the disk through this environment
 * (appends, writes by offset, allocations, syncs, creations, renames, links, removals, truncations, directory
 * changes and syncs), the next one and all later ones are lost as after kv_fault_env_crash(). 0: the next change is
 * the first one lost. kv_fault_env_crashed() tells whether the power is off yet (a call that returned before it went
 * off did all its work on disk). */
void kv_fault_env_crash_after(kv_env *env, uint64_t changes);
bool kv_fault_env_crashed(kv_env *env);
/* With reorder on, kv_fault_env_apply_crash keeps what was written by offset (write_at) past the last sync instead of
 * cutting it, except the part of the 4 KiB page that holds the first unsynced byte, which then reads as zeros:
 * writeback that reached the disk out of order, later pages kept and the earlier one in its old state (its synced
 * bytes, then the zeros allocated ahead). Files whose unsynced bytes end in that page are cut as usual. Off by
 * default. */
void kv_fault_env_set_reorder(kv_env *env, bool on);
/* Make disk_space report avail free bytes of a total-byte disk (UINT64_MAX: the base's answer again). Nothing is
 * enforced: a test fills "the disk" by setting it. */
void kv_fault_env_set_disk_space(kv_env *env, uint64_t avail, uint64_t total);

#endif /* KV_ENV_H */
