/*
 * fs_fuse.h — the libfuse (high-level, path-based API) operations table of kvfs: a thin layer from FUSE requests
 * to the functions of fs.h. The daemon (mount/) builds a kvfs_fuse and hands fuse_new() these operations.
 */
#ifndef KVFS_FS_FUSE_H
#define KVFS_FS_FUSE_H

#define FUSE_USE_VERSION 314
#include <fuse.h>

#include "fs.h"

typedef struct kvfs_fuse {
    kvfs_fs *fs;
    double timeout;        /* entry and attribute cache timeout, seconds (the daemon is the only writer) */
    bool writeback;        /* ask for the kernel's writeback cache */
    bool read_only;
    unsigned max_read;     /* -o max_read=N given to FUSE (0: none): init must ask for the same, or libfuse fails */
} kvfs_fuse;

/* The operations; fuse_new's user_data must be a kvfs_fuse that outlives the session. */
const struct fuse_operations *kvfs_fuse_operations(void);

/* Route the session's device reads and writes through kvfs's hooks (after fuse_mount, before the first request):
 * they negotiate FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 does not know (see fs_fuse.c). 0 or -1. */
struct fuse_session;
int kvfs_fuse_use_io(struct fuse_session *se);
/* For tests: the device read hook on any descriptor (a socket standing in for /dev/fuse): reads one request into buf
 * as libfuse would, with what the hook answers or rewrites itself done (fs_fuse.c). */
ssize_t kvfs_fuse_read_hook(int fd, void *buf, size_t len);

/* The request loop has ended: call before fuse_unmount, which closes the FUSE device. Stops every notification to
 * the kernel (the notifier thread, and those of the control socket's threads, which go on running until the daemon
 * stops them), so that none is written to the closed descriptor, or to a file that reused its number. The control
 * socket's batches still go through the filesystem until fuse_destroy. */
void kvfs_fuse_unmounting(void);

#endif /* KVFS_FS_FUSE_H */
