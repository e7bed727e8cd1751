/*
 * fs_fuse.c — libfuse high-level operations mapped onto fs.h.
 *
 * Why the high-level API: a path is a key, so the path libfuse hands each operation is exactly what the store
 * needs, and libfuse keeps the inode table (lookup counts, renames of open files) that the low-level API would
 * have us rebuild. Long entry/attribute timeouts and the writeback cache keep most requests in the kernel.
 *
 * Invariants
 *  - fi->fh of an open file is its kvfs_file, of an open directory its kvfs_dir; both stay valid until release.
 *  - nullpath_ok is set and hard_remove is not: an unlinked open file is reached through fi->fh with a NULL path, or
 *    by the ".fuse_hidden" path libfuse gives it for the requests that carry no file handle (fstat, fchmod, fchown,
 *    futimens). That path is never a key: renaming an open file to it is kvfs's own unlink of an open file (kvfs
 *    keeps its content itself), and the path maps to the open file until libfuse unlinks it (see "Files unlinked
 *    while open" below).
 *  - Every handler returns what fs.h returns: 0, a byte count, or -errno. No handler exits or aborts.
 */
#include "fs_fuse.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h> /* RENAME_EXCHANGE */
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "names.h"
#include <fuse_lowlevel.h>

/* The running mount, for kvfs_notify_key_changed and kvfs_mounted_write_keys (set at init). notify_fs, the
 * filesystem that writes the control socket's batches, is cleared at destroy; notify_fuse, the session the kernel's
 * caches are told through, already when the request loop has ended (kvfs_fuse_unmounting), before fuse_unmount
 * closes the FUSE device: a notification sent after that close could write into whatever file had reused its
 * descriptor number (ThreadSanitizer saw a control-socket thread's writev race fuse_unmount's close). */
static pthread_mutex_t notify_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fuse *notify_fuse;
static kvfs_fs *notify_fs;

/* ---- the device I/O: requests seen before libfuse parses them ------------------------------------------------------
 *
 * libfuse 3.14 predates FUSE_HANDLE_KILLPRIV_V2 (protocol 7.33). Without it the kernel asks for
 * security.capability before every write() and chown and re-reads the attributes before a chown: up to six extra
 * round trips per file that tar or rsync writes. With it the kernel sets SB_NOSEC and leaves the clearing of
 * set-user-ID and set-group-ID bits to the filesystem, flagging the requests that must do it (FUSE_WRITE_KILL_SUIDGID,
 * FATTR_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID), which libfuse's high-level API does not pass on. So the device
 * reads and writes go through two hooks: the read hook notes the kernel's INIT flags and, per thread, whether the
 * request being handled carries a kill flag (the thread that reads a request is the one that handles it); the
 * writev hook adds FUSE_HANDLE_KILLPRIV_V2 to libfuse's INIT reply when the kernel offered it. kvfs keeps no
 * security.* attributes (only user.*), so there is never a file capability to remove. */

enum { IN_HDR = 40, OUT_HDR = 16 };
enum { OPC_LOOKUP = 1, OPC_GETATTR = 3, OPC_SETATTR = 4, OPC_RENAME = 12, OPC_OPEN = 14, OPC_WRITE = 16, OPC_INIT = 26,
       OPC_BATCH_FORGET = 42, OPC_RENAME2 = 45 };
enum { HIDDEN_NAME_LEN = 12 + 16 }; /* ".fuse_hidden" + 16 hex digits */
#define INIT_HANDLE_KILLPRIV_V2 (1u << 28)
#define SETATTR_KILL_SUIDGID (1u << 11)
#define WRITE_KILL_SUIDGID (1u << 2)
#define OPEN_KILL_SUIDGID (1u << 0)
#define SETATTR_CTIME (1u << 10)
#define SETATTR_CTIME_SEC 48 /* fuse_setattr_in.ctime, ctimensec */
#define SETATTR_CTIMENSEC 64
#define SETATTR_CHANGES 0x1bfu /* FATTR_MODE UID GID SIZE ATIME MTIME ATIME_NOW MTIME_NOW */
#define SETATTR_MTIME (1u << 5)
#define SETATTR_LOCKOWNER (1u << 9)
#define SETATTR_FH (1u << 6)
#define GETATTR_FH (1u << 0)

static _Thread_local bool req_kill_suidgid; /* the request this thread handles asks for it */
static _Thread_local bool req_chown_same;   /* a SETATTR of the change time alone: chown(path, -1, -1) */
static _Thread_local bool req_times_flush;  /* a SETATTR of mtime and ctime alone: the writeback cache's (op_utimens) */
static _Thread_local uint64_t req_nodeid;   /* and the kernel's node id it is about */
static _Thread_local uint64_t req_given_fh; /* the handle give_hidden_fh put into it, or 0 */
static _Thread_local uint32_t req_op;       /* its opcode */
static _Thread_local char req_rename_to[HIDDEN_NAME_LEN + 1]; /* a RENAME's new name when of the hidden form, or "" */
/* The INIT request's unique id until its reply is sent (0 after). Set by the thread that reads INIT, which also
 * handles it and sends the reply, but io_writev looks at it for every message written to the device, also from
 * threads that serve no request (the control socket's and the notifier's notifications, which may be sent while
 * INIT is answered): atomic, released after init_kernel_flags is set (a plain uint64_t raced, ThreadSanitizer). */
static _Atomic uint64_t init_unique;
static uint32_t init_kernel_flags; /* the kernel's INIT flags: written before init_unique, read after it matched */

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t hidden_fh_of_node(uint64_t nodeid);

/* A GETATTR or SETATTR without a file handle about an open file that libfuse hid: give it the file's handle, with
 * its flag at bit `flag` of the request's first word and the handle at byte 8 (fuse_getattr_in, fuse_setattr_in).
 * libfuse then passes the handle and no path (nullpath_ok), where it would otherwise build the hidden path by node,
 * and fail with ESTALE once a directory above was removed (rm -rf while the file is open). */
static void give_hidden_fh(uint8_t *body, uint64_t nodeid, uint32_t flag) {
    uint32_t w = rd32(body);
    if (w & flag) return;
    uint64_t fh = hidden_fh_of_node(nodeid);
    if (!fh) return;
    req_given_fh = fh;
    w |= flag;
    memcpy(body, &w, 4);
    memcpy(body + 8, &fh, 8);
}

static bool is_hidden_name(const char *path);

/* A RENAME's names: old and new, each NUL-terminated. Keep the new one when it has the hidden form, so that op_rename
 * can tell a rename the caller asked for from libfuse's hiding of an open file. */
static void note_rename_to(const char *names, size_t len) {
    const char *end = names + len, *old_end = memchr(names, 0, len);
    if (!old_end) return;
    const char *to = old_end + 1, *to_end = to < end ? memchr(to, 0, (size_t)(end - to)) : NULL;
    if (to_end && to_end - to == HIDDEN_NAME_LEN && is_hidden_name(to)) memcpy(req_rename_to, to, HIDDEN_NAME_LEN + 1);
}

/* A RENAME of a name onto itself: the same directory node and the same name, at byte `skip` of the body (after
 * fuse_rename_in or fuse_rename2_in). The kernel sends one when its dentry of the name was stale: rename(2)
 * resolves the source from its cache, then looks the target up afresh (a rename target is always revalidated),
 * finds the name gone (a kvfs tool deleted the file while it was open) or of another type, and makes a new dentry
 * for the same name. libfuse's high-level rename then waits for ever for a write lock on the node it already holds
 * (both names are one node to it), with the renaming process stuck in the kernel, unkillable. */
static bool rename_onto_itself(const uint8_t *p, size_t body, size_t skip) {
    uint64_t newdir;
    memcpy(&newdir, p + IN_HDR, 8);
    if (newdir != req_nodeid) return false;
    const char *names = (const char *)p + IN_HDR + skip, *end = (const char *)p + IN_HDR + body;
    const char *old_end = memchr(names, 0, (size_t)(end - names));
    if (!old_end) return false;
    const char *to = old_end + 1;
    const char *to_end = to < end ? memchr(to, 0, (size_t)(end - to)) : NULL;
    return to_end && to_end - to == old_end - names && memcmp(names, to, (size_t)(old_end - names)) == 0;
}

/* Answer a request ENOENT here, and hand libfuse in its place a request it takes without a reply (a BATCH_FORGET of
 * no nodes, which the body's first word, its count, makes so). */
static void answer_enoent_here(int fd, uint8_t *p) {
    uint8_t out[OUT_HDR];
    uint32_t len = OUT_HDR, op = OPC_BATCH_FORGET, zero = 0;
    int32_t err = -ENOENT;
    memcpy(out, &len, 4);
    memcpy(out + 4, &err, 4);
    memcpy(out + 8, p + 8, 8); /* unique */
    (void)!write(fd, out, sizeof out);
    memcpy(p + 4, &op, 4);
    memcpy(p + IN_HDR, &zero, 4);
    req_op = op;
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata) {
    (void)userdata;
    ssize_t n = read(fd, buf, len);
    req_kill_suidgid = false;
    req_chown_same = false;
    req_times_flush = false;
    req_given_fh = 0;
    kvfs_request_ctime(NULL);
    if (n < IN_HDR) return n;
    uint8_t *p = buf;
    uint32_t op = rd32(p + 4);
    memcpy(&req_nodeid, p + 16, 8);
    req_op = op;
    req_rename_to[0] = 0;
    size_t body = (size_t)n - IN_HDR;
    if (op == OPC_INIT && body >= 16) {
        uint64_t unique;
        memcpy(&unique, p + 8, 8);
        init_kernel_flags = rd32(p + IN_HDR + 12);
        atomic_store_explicit(&init_unique, unique, memory_order_release);
    } else if (op == OPC_WRITE && body >= 24) {
        req_kill_suidgid = (rd32(p + IN_HDR + 20) & WRITE_KILL_SUIDGID) != 0;
    } else if (op == OPC_GETATTR && body >= 16) {
        give_hidden_fh(p + IN_HDR, req_nodeid, GETATTR_FH);
    } else if (op == OPC_SETATTR && body >= 16) {
        give_hidden_fh(p + IN_HDR, req_nodeid, SETATTR_FH);
        uint32_t valid = rd32(p + IN_HDR);
        req_kill_suidgid = (valid & SETATTR_KILL_SUIDGID) != 0;
        /* A chown that changes neither owner nor group reaches us as a SETATTR of the change time alone (without
         * the writeback cache: of nothing), without FATTR_KILL_SUIDGID (the kernel sets that only when an id is
         * given), and libfuse calls nothing but getattr for it; a local filesystem stamps the ctime there and clears
         * set-user-ID, as on any chown (op_getattr does). */
        req_chown_same = !(valid & SETATTR_CHANGES);
        req_times_flush = (valid & ~(SETATTR_FH | SETATTR_LOCKOWNER)) == (SETATTR_MTIME | SETATTR_CTIME);
        /* With the writeback cache the kernel keeps a regular file's ctime itself and sends it here (the ctime of
         * a chmod, chown, truncate or utimens, and after writes): store that one, the one it shows. */
        if ((valid & SETATTR_CTIME) && body >= SETATTR_CTIMENSEC + 4) {
            uint64_t sec;
            memcpy(&sec, p + IN_HDR + SETATTR_CTIME_SEC, 8);
            struct timespec t = {(time_t)sec, (long)rd32(p + IN_HDR + SETATTR_CTIMENSEC)};
            if (t.tv_nsec < 1000000000L) kvfs_request_ctime(&t);
        }
    } else if (op == OPC_OPEN && body >= 8) {
        req_kill_suidgid = (rd32(p + IN_HDR + 4) & OPEN_KILL_SUIDGID) != 0;
    } else if ((op == OPC_RENAME && body > 8) || (op == OPC_RENAME2 && body > 16)) {
        size_t skip = op == OPC_RENAME ? 8 : 16;
        /* The source the kernel names is gone (rename_onto_itself): ENOENT, as for any vanished source. */
        if (rename_onto_itself(p, body, skip)) answer_enoent_here(fd, p);
        else note_rename_to((const char *)p + IN_HDR + skip, body - skip);
    }
    return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    uint64_t init = atomic_load_explicit(&init_unique, memory_order_acquire);
    if (init && count >= 2 && iov[0].iov_len >= OUT_HDR && iov[1].iov_len >= 16) {
        const uint8_t *h = iov[0].iov_base;
        uint64_t unique;
        int32_t error;
        memcpy(&error, h + 4, 4);
        memcpy(&unique, h + 8, 8);
        if (unique == init && error == 0) {
            atomic_store_explicit(&init_unique, 0, memory_order_relaxed);
            if (init_kernel_flags & INIT_HANDLE_KILLPRIV_V2) {
                uint8_t *flags = (uint8_t *)iov[1].iov_base + 12; /* fuse_init_out.flags */
                uint32_t f = rd32(flags) | INIT_HANDLE_KILLPRIV_V2;
                memcpy(flags, &f, 4);
            }
        }
    }
    return writev(fd, iov, count);
}

ssize_t kvfs_fuse_read_hook(int fd, void *buf, size_t len) { return io_read(fd, buf, len, NULL); }

int kvfs_fuse_use_io(struct fuse_session *se) {
    static const struct fuse_custom_io io = {.read = io_read, .writev = io_writev};
    return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}

static kvfs_fuse *ctx(void) { return fuse_get_context()->private_data; }
static kvfs_fs *FS(void) { return ctx()->fs; }
static kvfs_file *FILE_OF(struct fuse_file_info *fi) { return fi ? (kvfs_file *)(uintptr_t)fi->fh : NULL; }

/* Whether the caller of the request being handled is in group g (its fsgid or a supplementary group). */
static bool caller_in_group(gid_t g) {
    if (fuse_get_context()->gid == g) return true;
    gid_t groups[64];
    int n = fuse_getgroups(64, groups);
    for (int i = 0; i < n && i < 64; i++)
        if (groups[i] == g) return true;
    return false;
}

/* What the kernel's VFS does to a non-directory on a write, truncate or chown by a caller without CAP_FSETID (for
 * chown, by anyone): clear set-user-ID; clear set-group-ID when group execute is set, or when the caller is not in
 * the file's group (capable: the caller may keep a non-executable set-group-ID file's bit, as root may on chown).
 * A WRITE or OPEN reply carries no attributes and the kernel keeps the mode it cached: then tell it to drop the
 * node's cached attributes (attributes only: a negative offset leaves the page cache alone, whose pages the kernel
 * may hold locked for this very write). A SETATTR reply carries the new mode itself. */
static int kill_suidgid(const char *path, kvfs_file *f, bool capable, bool notify) {
    kvfs_fs *fs = FS();
    struct stat st;
    int rc = kvfs_getattr(fs, path, f, &st);
    if (rc || S_ISDIR(st.st_mode)) return rc;
    mode_t m = st.st_mode & 07777;
    if (m & S_ISUID) m &= ~(mode_t)S_ISUID;
    if ((m & S_ISGID) && ((m & S_IXGRP) || (!capable && !caller_in_group(st.st_gid)))) m &= ~(mode_t)S_ISGID;
    if (m == (st.st_mode & 07777)) return 0;
    if ((rc = kvfs_chmod(fs, path, f, m))) return rc;
    if (notify && req_nodeid)
        (void)fuse_lowlevel_notify_inval_inode(fuse_get_session(fuse_get_context()->fuse), req_nodeid, -1, 0);
    return 0;
}

static kvfs_caller caller(void) {
    struct fuse_context *c = fuse_get_context();
    kvfs_caller w = {c->uid, c->gid};
    return w;
}

/* ---- Files unlinked while open --------------------------------------------------------------------------------------
 *
 * With hard_remove, libfuse forgets the path of a node it unlinks, and answers ESTALE for the requests about it that
 * come by path: the kernel sends fstat's GETATTR and the SETATTR of fchmod, fchown and futimens without a file handle
 * (and asks again after an unlink, which drops its cached attributes). So hard_remove is off: libfuse then renames an
 * open file it is asked to unlink (or to replace by a rename) to "DIR/.fuse_hidden" + 16 hex digits, sends the
 * requests about it by that path, and unlinks that path after the last release. kvfs stores no such name: the rename
 * is kvfs's own unlink of an open file (its content moves out of the namespace, docs/mapping.md), and the hidden path
 * maps here to the open file, kept by one more open until libfuse unlinks the path. Its user.* attributes went with
 * the unlink: reading them finds none, setting them is ENOTSUP. */
typedef struct hidden_file {
    char *path;
    kvfs_file *f;
    uint64_t node; /* the kernel's node id of the file: libfuse writes it into the hidden name */
    struct hidden_file *next;
} hidden_file;

static pthread_mutex_t hidden_mu = PTHREAD_MUTEX_INITIALIZER;
static hidden_file *hidden_files;
static atomic_int hidden_count; /* entries of hidden_files, for a look without the lock */

static bool is_hidden_name(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strncmp(base, ".fuse_hidden", 12) != 0 || strlen(base) != HIDDEN_NAME_LEN) return false;
    for (int i = 12; i < HIDDEN_NAME_LEN; i++)
        if (!isxdigit((unsigned char)base[i])) return false;
    return true;
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

/* Hidden names are compared by their last component alone: libfuse makes it unique (it holds the node id and a
 * counter), and the directory part changes when a directory above is renamed. And only in a request about the
 * hidden node itself: libfuse names such a node by it, while a lookup (whose node is the directory's), or libfuse's
 * check that a name it is about to hide a file under is free, means a name in the directory. A file of that name
 * that someone stored (rsync copying a .fuse_hidden leftover of another mount) is then just that file. */
static bool same_hidden(const hidden_file *h, const char *path) {
    return h->node == req_nodeid && strcmp(base_name(h->path), base_name(path)) == 0;
}

/* The node id a hidden name holds: libfuse names it ".fuse_hidden" + the node id and a counter, 8 hex digits each
 * (its node ids are 32 bits). */
static uint64_t hidden_node(const char *path) {
    char hex[9];
    memcpy(hex, base_name(path) + 12, 8);
    hex[8] = 0;
    return strtoull(hex, NULL, 16);
}

/* The file handle of the hidden file of a node id, or 0. The kernel asks about a hidden node mostly while the file is
 * open (fstat, fchmod, ...), but also by a name it found just before a rename replaced the file, while another
 * process's last close may free it: so the handler uses the handle only under hidden_mu, after checking that the
 * file is still hidden (file_or_hidden). */
static uint64_t hidden_fh_of_node(uint64_t nodeid) {
    if (atomic_load_explicit(&hidden_count, memory_order_relaxed) == 0) return 0;
    uint64_t fh = 0;
    pthread_mutex_lock(&hidden_mu);
    for (hidden_file *h = hidden_files; h && !fh; h = h->next)
        if (h->node == nodeid) fh = (uint64_t)(uintptr_t)h->f;
    pthread_mutex_unlock(&hidden_mu);
    return fh;
}

/* The open file that a hidden path stands for, or NULL. */
static kvfs_file *hidden_lookup(const char *path) {
    if (!path || !is_hidden_name(path)) return NULL;
    kvfs_file *f = NULL;
    pthread_mutex_lock(&hidden_mu);
    for (hidden_file *h = hidden_files; h && !f; h = h->next)
        if (same_hidden(h, path)) f = h->f;
    pthread_mutex_unlock(&hidden_mu);
    return f;
}

/* libfuse hides the open file `from` as `to`: unlink it, holding it open, and remember `to`. */
static int hide_open_file(const char *from, const char *to) {
    kvfs_fs *fs = FS();
    hidden_file *h = calloc(1, sizeof *h);
    if (!h || !(h->path = strdup(to))) {
        free(h);
        return -ENOMEM;
    }
    int rc = kvfs_open(fs, from, O_RDONLY, &h->f);
    if (!rc) {
        rc = kvfs_unlink(fs, from);
        if (rc) kvfs_release(fs, h->f);
    } else if (rc == -ENOENT && (h->f = kvfs_open_deleted(fs, from))) {
        /* A file a kvfs tool deleted while it was open, which the kernel still has under this name: the unlink (or
         * the rename over it) succeeds, as the kernel expects of a name it sees. Failing it (ENOENT) made the kernel
         * drop its entry while libfuse kept naming the file's node by the path: the next file made there got that
         * node id, and if of another type (a symlink, a directory) the kernel took the open file's inode for stale and
         * failed every call on its descriptors with EIO. */
        kvfs_deleted_renamed(fs, h->f);
        rc = 0;
    }
    if (rc) {
        free(h->path);
        free(h);
        return rc;
    }
    h->node = hidden_node(to);
    pthread_mutex_lock(&hidden_mu);
    h->next = hidden_files;
    hidden_files = h;
    atomic_fetch_add(&hidden_count, 1);
    pthread_mutex_unlock(&hidden_mu);
    return 0;
}

static void stale_file_closed(kvfs_stale_top *s);

/* Let go of a hidden file taken off the list: its open, and with the last one its content. */
static void drop_hidden(kvfs_fs *fs, hidden_file *h) {
    atomic_fetch_sub(&hidden_count, 1);
    kvfs_stale_top *stale;
    kvfs_release_changed(fs, h->f, &stale);
    stale_file_closed(stale);
    free(h->path);
    free(h);
}

/* Forget a hidden path (libfuse unlinks it after the last release, or the mount ends) and drop the open that kept
 * its file: the file's content goes with the last open. false when path is not hidden. libfuse counts an open only
 * once op_open returned, so a reopen of the hidden node (op_open) can race the last release it saw: then the file
 * has an open besides the hidden one, and stays hidden until that open's release lets it go (op_release). */
static bool unhide(kvfs_fs *fs, const char *path) {
    hidden_file *h = NULL;
    bool found = false;
    pthread_mutex_lock(&hidden_mu);
    for (hidden_file **pp = &hidden_files; *pp; pp = &(*pp)->next)
        if (path == NULL || same_hidden(*pp, path)) {
            found = true;
            if (path && kvfs_file_opens(fs, (*pp)->f) > 1) break;
            h = *pp;
            *pp = h->next;
            break;
        }
    pthread_mutex_unlock(&hidden_mu);
    if (h) drop_hidden(fs, h);
    return found;
}

/* A request about a hidden node whose file is gone (its last close let it go), or ENOENT for it: ESTALE. libfuse keeps
 * the node under its hidden name while the kernel holds the node, and the kernel can still send requests about it
 * after that close: an open(2) or stat(2) whose path walk found the name just before a rename replaced the file
 * (another process saving a file by writing a temporary one and renaming it over, while a reader opens it). ENOENT
 * would fail the reader, though the name never stopped existing; on ESTALE the kernel looks the name up afresh and
 * tries once more, and finds the new file. Not for a lookup of such a name (the request's node is then the
 * directory's, not the one the name holds): a missing name is just missing. libfuse writes the low 32 bits of the
 * node id. */
static int stale_if_gone(const char *path, int rc) {
    if (rc == -ENOENT && req_op != OPC_LOOKUP && path && is_hidden_name(path) &&
        hidden_node(path) == (req_nodeid & 0xffffffffu))
        return -ESTALE;
    return rc;
}

/* open(2) of a hidden node whose file is still open: through /proc/PID/fd/N of the unlinked file, or by the race
 * above while another process still has the file open. A local filesystem opens the same file again: so does this,
 * under hidden_mu so that its last close cannot let it go meanwhile. 1 when path names no hidden open file. */
static int reopen_hidden(const char *path, int flags, kvfs_file **out) {
    if (!is_hidden_name(path) || atomic_load_explicit(&hidden_count, memory_order_relaxed) == 0) return 1;
    int rc = 1;
    pthread_mutex_lock(&hidden_mu);
    for (hidden_file *h = hidden_files; h; h = h->next)
        if (same_hidden(h, path)) {
            rc = kvfs_reopen(FS(), h->f, flags);
            if (!rc) *out = h->f;
            break;
        }
    pthread_mutex_unlock(&hidden_mu);
    return rc;
}

static _Thread_local bool req_hidden_locked; /* this thread's request holds hidden_mu (file_or_hidden) */
static _Thread_local kvfs_file *req_deleted;  /* this thread's request holds an open of it (file_or_hidden) */

/* The file a request is about into *fp: its handle's; or, when it names the file by path only, a hidden one (then
 * *pathp becomes NULL: the hidden name is no key), or NULL (the path names it). A hidden file, reached by its path or
 * by the handle give_hidden_fh put into the request, may be freed meanwhile by another thread's last release
 * (op_release): so it is taken only while it is still hidden, and kept with hidden_mu held until hidden_done();
 * one that is gone meanwhile is ESTALE. A SETATTR runs several handlers in a row: each one checks again. */
static int file_or_hidden(const char *path, struct fuse_file_info *fi, const char **pathp, kvfs_file **fp) {
    kvfs_file *f = FILE_OF(fi);
    bool given = f && req_given_fh && fi->fh == req_given_fh;
    *pathp = path;
    *fp = f;
    bool by_path = req_op == OPC_GETATTR || req_op == OPC_SETATTR || req_op == OPC_LOOKUP;
    if (!f && path && by_path && !is_hidden_name(path) && (req_deleted = kvfs_open_deleted(FS(), path))) {
        /* A file a kvfs tool deleted while it was open (kvfs_mounted_write_keys): the kernel did not see that unlink
         * and names the file by its old path, which libfuse keeps for it until the last close. A LOOKUP too: the
         * kernel looks a name up afresh before it makes something there (mkdir, symlink, O_EXCL), and ENOENT made it
         * drop its entry while libfuse kept the file's node under the name, so the new object got that node id and,
         * of another type, had the kernel mark the open file's inode bad (EIO on its descriptors). */
        *fp = req_deleted;
        *pathp = NULL;
        return 0;
    }
    if (f ? !given : !(path && is_hidden_name(path))) return 0;
    pthread_mutex_lock(&hidden_mu);
    for (hidden_file *h = hidden_files; h; h = h->next)
        if (given ? h->f == f && h->node == req_nodeid : same_hidden(h, path)) {
            *fp = h->f;
            *pathp = NULL;
            req_hidden_locked = true;
            return 0;
        }
    pthread_mutex_unlock(&hidden_mu);
    return given ? -ESTALE : 0;
}

/* The end of a request that file_or_hidden gave a file: rc, and hidden_mu or the deleted file's open let go. */
static int hidden_done(int rc) {
    if (req_deleted) {
        kvfs_stale_top *stale; /* the descriptors may have been closed meanwhile: then this is the last close */
        kvfs_release_changed(FS(), req_deleted, &stale);
        stale_file_closed(stale);
        req_deleted = NULL;
    }
    if (req_hidden_locked) {
        req_hidden_locked = false;
        pthread_mutex_unlock(&hidden_mu);
    }
    return rc;
}

/* ---- Directories that vanish with their last entry -----------------------------------------------------------------
 *
 * An implicit directory (docs/mapping.md) exists while a key lies below it, so an unlink, rmdir or rename that takes
 * its last entry makes it vanish, and the kernel, which keeps entries for the entry timeout (a day), must be told.
 * Not from the request's thread: the kernel may hold a lock the notification needs while it waits for that request
 * (an unlink holds its directory; a rename in the directory above can hold that one while it waits for the first),
 * so the request queues the paths and a notifier thread sends them, a moment later. */
typedef struct vanished {
    char *path;
    struct vanished *next;
} vanished;

static pthread_mutex_t vanish_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t vanish_cv = PTHREAD_COND_INITIALIZER;
static vanished *vanish_head, *vanish_tail;
/* Set under vanish_mu (which the wait for work needs), but read also without it by the notifier between the
 * notifications of a batch and around its 50 ms wait, so that a stopping daemon does not wait for a whole batch:
 * atomic (a plain bool raced vanish_end's store, ThreadSanitizer). */
static atomic_bool vanish_stop;
static bool vanish_running;
static pthread_t vanish_thread;

/* Drop the kernel's entry of path's top-level name, and with it every entry it caches below that name (they are
 * looked up again when next used): the root's is the only parent node id the high-level API lets us name. */
static void inval_top_name(struct fuse *f, const char *path) {
    const char *name = path[0] == '/' ? path + 1 : path;
    size_t n = strcspn(name, "/");
    if (n) (void)fuse_lowlevel_notify_inval_entry(fuse_get_session(f), FUSE_ROOT_ID, name, n);
}

/* The kernel is told twice. At once: fuse_invalidate_path makes it forget the directory's attributes (so stat asks
 * again and finds it gone). That is not its entry, though: an open(2) for writing trusts a cached entry and said
 * EISDIR. The entry can only go with its top-level name's (the root's is the only parent node id the high-level API
 * lets us name), and an entry that is in use is not dropped with its parent: the request that made the directory
 * vanish holds it until its system call returns, after our reply. So each batch of paths has its top-level entries
 * dropped once more a moment later (one wait per batch, not per path: rm -r makes many). */
#define VANISH_AGAIN_NS 50000000L

static void *vanish_main(void *arg) {
    struct fuse *f = arg;
    pthread_mutex_lock(&vanish_mu);
    for (;;) {
        while (!vanish_head && !atomic_load(&vanish_stop)) pthread_cond_wait(&vanish_cv, &vanish_mu);
        vanished *batch = vanish_head;
        if (!batch) break; /* stopping, nothing left */
        vanish_head = vanish_tail = NULL;
        pthread_mutex_unlock(&vanish_mu);
        for (vanished *v = batch; v && !atomic_load(&vanish_stop); v = v->next) {
            (void)fuse_invalidate_path(f, v->path); /* -ENOENT: the kernel never knew it */
            inval_top_name(f, v->path);
        }
        struct timespec again = {0, VANISH_AGAIN_NS};
        if (!atomic_load(&vanish_stop)) nanosleep(&again, NULL);
        while (batch) {
            vanished *v = batch;
            batch = v->next;
            if (!atomic_load(&vanish_stop)) inval_top_name(f, v->path);
            free(v->path);
            free(v);
        }
        pthread_mutex_lock(&vanish_mu);
    }
    pthread_mutex_unlock(&vanish_mu);
    return NULL;
}

/* Queue path (malloc'd; taken, also on failure) for the notifier. False when out of memory. */
static bool queue_vanished(char *path) {
    vanished *v = path ? malloc(sizeof *v) : NULL;
    if (!v) {
        free(path);
        return false;
    }
    *v = (vanished){path, NULL};
    pthread_mutex_lock(&vanish_mu);
    if (vanish_tail) vanish_tail->next = v;
    else vanish_head = v;
    vanish_tail = v;
    pthread_cond_signal(&vanish_cv);
    pthread_mutex_unlock(&vanish_mu);
    return true;
}

/* After path's entry went away: queue each ancestor directory that went with it (up to the first that remains). */
static void note_vanished_parents(const char *path) {
    if (!vanish_running) return;
    kvfs_fs *fs = FS();
    char *p = strdup(path);
    if (!p) return;
    for (char *slash = strrchr(p, '/'); slash && slash != p; slash = strrchr(p, '/')) {
        *slash = 0; /* p is now the parent */
        struct stat st;
        if (kvfs_getattr(fs, p, NULL, &st) != -ENOENT) break;
        if (!queue_vanished(strdup(p))) break;
    }
    free(p);
}

static void vanish_start(struct fuse *f) {
    atomic_store(&vanish_stop, false);
    vanish_running = pthread_create(&vanish_thread, NULL, vanish_main, f) == 0;
}

static void vanish_end(void) {
    if (!vanish_running) return;
    pthread_mutex_lock(&vanish_mu);
    atomic_store(&vanish_stop, true);
    pthread_cond_signal(&vanish_cv);
    pthread_mutex_unlock(&vanish_mu);
    pthread_join(vanish_thread, NULL);
    vanish_running = false;
}

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    kvfs_fuse *k = ctx();
    cfg->use_ino = 1;
    cfg->readdir_ino = 0;
    cfg->entry_timeout = k->timeout;
    cfg->attr_timeout = k->timeout;
    cfg->negative_timeout = 0; /* keys put through the control socket must appear at once */
    cfg->hard_remove = 0;      /* libfuse hides an open file it unlinks: see "Files unlinked while open" */
    cfg->nullpath_ok = 1;
    cfg->kernel_cache = 1;     /* only this daemon writes: cached pages stay valid across opens */
    cfg->auto_cache = 0;
    cfg->direct_io = 0;
    conn->max_write = 1u << 20;
    conn->max_readahead = 1u << 20;
    if (k->max_read) conn->max_read = k->max_read;
    conn->time_gran = 1;
    bool wb = k->writeback && !k->read_only && (conn->capable & FUSE_CAP_WRITEBACK_CACHE);
    if (wb) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
    kvfs_fs_set_writeback_cache(k->fs, wb);
    pthread_mutex_lock(&notify_mu);
    notify_fuse = fuse_get_context()->fuse;
    notify_fs = k->fs;
    pthread_mutex_unlock(&notify_mu);
    if (!k->read_only) vanish_start(fuse_get_context()->fuse);
    return k;
}

void kvfs_fuse_unmounting(void) {
    vanish_end();
    pthread_mutex_lock(&notify_mu);
    notify_fuse = NULL;
    pthread_mutex_unlock(&notify_mu);
}

static void op_destroy(void *data) {
    kvfs_fuse *k = data;
    vanish_end(); /* in case the daemon did not call kvfs_fuse_unmounting */
    pthread_mutex_lock(&notify_mu);
    notify_fuse = NULL;
    notify_fs = NULL;
    pthread_mutex_unlock(&notify_mu);
    while (unhide(k->fs, NULL)) {
    }
    kvfs_fs_flush_all(k->fs);
}

/* Invalidate the kernel's cache of the path of key[0..klen) (as a file: marked or not, as a directory). */
static void inval_key_path(struct fuse *f, const uint8_t *key, size_t klen, bool marker) {
    char *path = names_key_to_path(key, klen, marker);
    if (!path) return;
    (void)fuse_invalidate_path(f, path); /* -ENOENT when the kernel does not know it: nothing to forget */
    free(path);
}

/* Drop the kernel's entry of the top-level name of key's path (and with it every cached entry below it): the
 * only entries whose parent's node id the high-level API lets us name (the root's, 1). With the writeback cache
 * the kernel trusts its own size and mtime of a cached file over ours, so only a fresh inode shows the new
 * value's; dropping the entries lets the next lookup make one (unless the file is open). */
static void inval_top_entry(struct fuse *f, const uint8_t *key, size_t klen, bool marker) {
    char *path = names_key_to_path(key, klen, marker);
    if (!path) return;
    inval_top_name(f, path);
    free(path);
}

/* kvfs_notify_key_changed with notify_mu held. prev: the key before it in the same batch (NULL: none), whose
 * invalidations this one need not repeat: the filesystem's cache and the root (once a batch), the top-level entry of
 * the same first component, the directories above it that the two share (a batch of 50,000 keys of one directory
 * took 2.6-3.0 s, most of it dropping that directory again and again; 0.2 s since). */
static void key_changed_locked(const uint8_t *k, size_t klen, const uint8_t *prev, size_t plen) {
    if (notify_fs && !prev && (k || klen == 0)) kvfs_fs_invalidate(notify_fs);
    if (notify_fuse && notify_fs && (k || klen == 0)) {
        const uint8_t *slash = klen ? memchr(k, '/', klen) : NULL;
        size_t top = slash ? (size_t)(slash - k) : klen; /* the first component's length */
        bool same_top = slash && prev && plen > top && memcmp(prev, k, top) == 0 && prev[top] == '/';
        if (klen) {
            inval_key_path(notify_fuse, k, klen, false);
            inval_key_path(notify_fuse, k, klen, true);
            /* An open file keeps its inode whatever we drop; worse, dropping the directory above it now strands its
             * entry under a directory entry the kernel no longer finds by name (so the drop at its last close,
             * stale_file_closed, would miss it) but takes back at the next lookup, stale child and all. */
            if (!same_top && !kvfs_file_mark_changed(notify_fs, k, klen)) {
                inval_top_entry(notify_fuse, k, klen, false);
                if (!slash) inval_top_entry(notify_fuse, k, klen, true);
            }
        }
        /* The directories above it: their times change, and implicit ones appear or vanish with their keys. */
        for (size_t i = klen; i-- > 0;)
            if (k[i] == '/' && !(prev && plen > i && memcmp(prev, k, i + 1) == 0))
                inval_key_path(notify_fuse, k, i, false);
        if (!prev) (void)fuse_invalidate_path(notify_fuse, "/");
    }
}

void kvfs_notify_key_changed(const void *key, size_t klen) {
    pthread_mutex_lock(&notify_mu);
    key_changed_locked(key, klen, NULL, 0);
    pthread_mutex_unlock(&notify_mu);
}

int kvfs_mounted_write_keys(const store_batch *b, bool sync) {
    int rc = 1;
    /* notify_mu: the mount cannot end (op_destroy) while its filesystem writes the batch. Once the request loop has
     * ended (notify_fuse cleared) the filesystem still writes it, so that a file open in it keeps its content as
     * after rm; the kernel, whose mount is going, is told nothing. */
    pthread_mutex_lock(&notify_mu);
    if (notify_fs) {
        rc = kvfs_write_keys(notify_fs, b, sync);
        for (size_t i = 0; rc == 0 && i < b->n; i++)
            key_changed_locked(store_op_key(b, &b->ops[i]), b->ops[i].klen, i ? store_op_key(b, &b->ops[i - 1]) : NULL,
                               i ? b->ops[i - 1].klen : 0);
    }
    pthread_mutex_unlock(&notify_mu);
    return rc;
}

static bool gone_times_flush(int rc);

/* op_getattr once file_or_hidden found the file or path: hidden_done() ends it. */
static int getattr_of(const char *path, kvfs_file *f, struct stat *st) {
    if (req_chown_same) {
        /* libfuse's SETATTR ends with this getattr (io_read): the chown(path, -1, -1) case of op_chown */
        req_chown_same = false;
        int rc = kvfs_chown(FS(), path, f, (uid_t)-1, (gid_t)-1);
        if (!rc) rc = kill_suidgid(path, f, fuse_get_context()->uid == 0, false);
        if (rc) return hidden_done(rc);
    }
    return hidden_done(stale_if_gone(path, kvfs_getattr(FS(), path, f, st)));
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    kvfs_file *f;
    int rc = file_or_hidden(path, fi, &path, &f);
    if (rc == 0) rc = getattr_of(path, f, st);
    if (gone_times_flush(rc)) {
        /* the end of a SETATTR of the kernel's times whose file went (op_utimens): it ignores the attributes */
        kvfs_gone_attr(FS(), st);
        return 0;
    }
    return rc;
}

static int op_readlink(const char *path, char *buf, size_t size) { return kvfs_readlink(FS(), path, buf, size); }

static int op_mknod(const char *path, mode_t mode, dev_t rdev) {
    kvfs_caller w = caller();
    return kvfs_mknod(FS(), path, mode, rdev, &w);
}

static int op_mkdir(const char *path, mode_t mode) {
    kvfs_caller w = caller();
    return kvfs_mkdir(FS(), path, mode, &w);
}

static int op_unlink(const char *path) {
    bool hidden = unhide(FS(), path);
    int rc = hidden ? 0 : kvfs_unlink(FS(), path);
    /* libfuse unlinks a hidden path after the last close, usually after op_release has let go of its file (then it
     * names no key: ENOENT). Only now has the kernel let go of the directories above the file, which its open
     * descriptors held: those that vanished with the unlink of the open file (op_rename) are dropped for good now. */
    if (!rc || (rc == -ENOENT && is_hidden_name(path))) note_vanished_parents(path);
    return rc;
}

static int op_rmdir(const char *path) {
    int rc = kvfs_rmdir(FS(), path);
    if (!rc) note_vanished_parents(path);
    return rc;
}

static int op_symlink(const char *target, const char *path) {
    kvfs_caller w = caller();
    return kvfs_symlink(FS(), target, path, &w);
}

static int op_rename(const char *from, const char *to, unsigned int flags) {
    /* libfuse hides an open file under a name it makes up; a rename to the name the caller gave is the caller's */
    bool asked = strcmp(base_name(to), req_rename_to) == 0;
    if (flags == 0 && is_hidden_name(to) && !asked) {
        /* The unlink of an open file: the directories that vanish with it are dropped as for any other unlink (and
         * once more when libfuse unlinks the hidden path: see op_unlink). */
        int rc = hide_open_file(from, to);
        if (!rc) note_vanished_parents(from);
        return rc;
    }
    int rc = kvfs_rename(FS(), from, to, flags);
    if (!rc && !(flags & RENAME_EXCHANGE)) note_vanished_parents(from);
    return rc;
}

static int op_link(const char *from, const char *to) {
    (void)from, (void)to;
    return -EPERM; /* hard links are not supported (docs/mapping.md) */
}

static int op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    kvfs_file *f;
    int rc = file_or_hidden(path, fi, &path, &f);
    return rc ? rc : hidden_done(stale_if_gone(path, kvfs_chmod(FS(), path, f, mode)));
}

static int op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
    kvfs_file *f;
    int rc = file_or_hidden(path, fi, &path, &f);
    if (rc) return rc;
    rc = stale_if_gone(path, kvfs_chown(FS(), path, f, uid, gid));
    /* the kernel flags every chown of a non-directory; root keeps a non-executable set-group-ID bit */
    if (!rc && req_kill_suidgid) rc = kill_suidgid(path, f, fuse_get_context()->uid == 0, false);
    return hidden_done(rc);
}

static int op_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    kvfs_file *f;
    int rc = file_or_hidden(path, fi, &path, &f);
    if (rc) return rc;
    rc = stale_if_gone(path, kvfs_truncate(FS(), path, f, size));
    if (!rc && req_kill_suidgid) rc = kill_suidgid(path, f, false, false);
    return hidden_done(rc);
}

static bool gone_times_flush(int rc) { return req_times_flush && (rc == -ENOENT || rc == -ESTALE); }

/* With the writeback cache the kernel keeps a regular file's mtime and ctime and sends them in a SETATTR of those two
 * alone: after writes, and at once after a rename, unlink, fallocate or copy_file_range, for the file it just
 * renamed, unlinked or wrote. The file may be gone by then (renamed again, deleted by a kvfs tool, or replaced while
 * open and then closed, also between libfuse's utimens and the getattr that ends the SETATTR), and it takes its times
 * with it: that is success, with kvfs_gone_attr for attributes (the kernel ignores them). An error here failed not
 * the call that
 * caused it: the kernel notes it on the inode as a write-back error (EIO for anything but ENOSPC), and the next
 * close(2) or fsync(2) of any descriptor of that inode failed with EIO, though nothing was lost. A utimensat(2) of
 * the same two times (touch -m -d) that finds its file gone is answered the same: it raced the rename or delete that
 * took the file, which a local filesystem lets either one win. */
static int op_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    kvfs_file *f;
    int rc = file_or_hidden(path, fi, &path, &f);
    if (!rc) rc = hidden_done(stale_if_gone(path, kvfs_utimens(FS(), path, f, tv)));
    return gone_times_flush(rc) ? 0 : rc; /* libfuse's getattr that follows answers for the gone file */
}

static int op_open(const char *path, struct fuse_file_info *fi) {
    kvfs_file *f;
    int rc = reopen_hidden(path, fi->flags, &f);
    if (rc == 1) rc = kvfs_open(FS(), path, fi->flags, &f);
    else if (rc == 0) path = NULL; /* the hidden name is no key */
    if (rc) return stale_if_gone(path, rc);
    if (req_kill_suidgid && (fi->flags & O_TRUNC) && (rc = kill_suidgid(path, f, false, true))) {
        kvfs_release(FS(), f);
        return rc;
    }
    fi->fh = (uint64_t)(uintptr_t)f;
    fi->keep_cache = 1;
    if ((fi->flags & O_ACCMODE) != O_RDONLY) kvfs_file_writer(FS(), f, 1);
    /* A read-only open has nothing to flush at close: spare the round trip (the writeback cache makes the kernel
     * ignore this, but then FLUSH is switched off altogether: see op_flush). */
    if ((fi->flags & O_ACCMODE) == O_RDONLY) fi->noflush = 1;
    return 0;
}

static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    kvfs_caller w = caller();
    kvfs_file *f;
    int rc = kvfs_create(FS(), path, mode, fi->flags, &w, &f);
    if (rc) return rc;
    fi->fh = (uint64_t)(uintptr_t)f;
    if ((fi->flags & O_ACCMODE) != O_RDONLY) kvfs_file_writer(FS(), f, 1);
    return 0;
}

static int op_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = kvfs_read(FS(), FILE_OF(fi), buf, size, off);
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

static int op_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    kvfs_fs *fs = FS();
    /* With the writeback cache the kernel resolves O_APPEND offsets itself. */
    bool append = (fi->flags & O_APPEND) && !kvfs_fs_writeback_cache(fs);
    ssize_t n = kvfs_write(fs, FILE_OF(fi), buf, size, off, append);
    if (n > 0 && req_kill_suidgid) {
        int rc = kill_suidgid(path, FILE_OF(fi), false, true);
        if (rc) return rc;
    }
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

/* libfuse hands .write a copy of the request's bytes in a fresh buffer (for a 1 MiB write: a malloc that maps and
 * faults in 1 MiB, and a copy of it). .write_buf gets the request buffer itself: when it is one piece of memory, as
 * from our reader, write from it directly. */
static int op_write_buf(const char *path, struct fuse_bufvec *bv, off_t off, struct fuse_file_info *fi) {
    size_t size = fuse_buf_size(bv);
    if (bv->count == 1 && bv->idx == 0 && !(bv->buf[0].flags & FUSE_BUF_IS_FD))
        return op_write(path, (const char *)bv->buf[0].mem + bv->off, size, off, fi);
    char *mem = malloc(size ? size : 1);
    if (!mem) return -ENOMEM;
    struct fuse_bufvec dst = FUSE_BUFVEC_INIT(size);
    dst.buf[0].mem = mem;
    ssize_t got = fuse_buf_copy(&dst, bv, 0);
    int rc = got < 0 ? (int)got : op_write(path, mem, (size_t)got, off, fi);
    free(mem);
    return rc;
}

static int op_statfs(const char *path, struct statvfs *st) {
    (void)path;
    return kvfs_statfs(FS(), st);
}

static int op_flush(const char *path, struct fuse_file_info *fi) {
    (void)path;
    kvfs_fs *fs = FS();
    int rc = kvfs_flush(fs, FILE_OF(fi));
    /* With the writeback cache, close() first writes the dirty pages (WRITE, which go straight to the store) and
     * the times (SETATTR), and waits for both: FLUSH has nothing left to do. ENOSYS tells the kernel never to send
     * it again (it takes that as success), which saves a round trip on every close. */
    if (rc == 0 && kvfs_fs_writeback_cache(fs)) return -ENOSYS;
    return rc;
}

/* The last close of the files open under a top-level name below which the control socket rewrote (or deleted) a key
 * while one was open. The kernel kept the open file's inode then, and with the writeback cache it trusts that inode's
 * size over ours: the old size stayed after the close, for the entry timeout (a day), so a longer value read cut
 * short and a shorter one ended in zeros. Now that none is open, have the notifier drop the top-level entry (at once
 * and again a moment later, once the kernel let go of the dentry the close held): the unused dentries go with it,
 * and the next lookup makes a fresh inode, as kvfs_notify_key_changed does when no file is open. Frees the list. */
static void stale_file_closed(kvfs_stale_top *s) {
    while (s) {
        kvfs_stale_top *next = s->next;
        if (vanish_running) {
            (void)queue_vanished(names_key_to_path(s->name, s->len, false));
            (void)queue_vanished(names_key_to_path(s->name, s->len, true)); /* a top-level file's own name */
        }
        free(s);
        s = next;
    }
}

static int op_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    kvfs_fs *fs = FS();
    kvfs_file *f = FILE_OF(fi);
    if ((fi->flags & O_ACCMODE) != O_RDONLY) kvfs_file_writer(fs, f, -1);
    /* The last user open of a hidden file also lets go of the open that kept it: libfuse's own unlink of the hidden
     * path may never come (it cannot build the path once a directory above was removed). hidden_mu keeps two
     * releases of the same file from both seeing themselves last. */
    pthread_mutex_lock(&hidden_mu);
    hidden_file *h = NULL, **hp = NULL;
    for (hidden_file **pp = &hidden_files; *pp && !h; pp = &(*pp)->next)
        if ((*pp)->f == f) {
            h = *pp;
            hp = pp;
        }
    if (!h) {
        pthread_mutex_unlock(&hidden_mu); /* the usual case: closes of different files run in parallel */
        kvfs_stale_top *stale;
        int rc = kvfs_release_changed(fs, f, &stale);
        stale_file_closed(stale);
        return rc;
    }
    kvfs_stale_top *stale;
    int rc = kvfs_release_changed(fs, f, &stale);
    stale_file_closed(stale);
    if (kvfs_file_opens(fs, f) == 1) {
        *hp = h->next;
        drop_hidden(fs, h);
    }
    pthread_mutex_unlock(&hidden_mu);
    return rc;
}

static int op_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
    (void)path;
    return kvfs_fallocate(FS(), FILE_OF(fi), mode, off, len);
}

static ssize_t op_copy_file_range(const char *path_in, struct fuse_file_info *fi_in, off_t off_in,
                                  const char *path_out, struct fuse_file_info *fi_out, off_t off_out, size_t len,
                                  int flags) {
    (void)path_in, (void)path_out;
    if (flags) return -EINVAL;
    if (!fi_in || !fi_out) return -EBADF;
    return kvfs_copy_file_range(FS(), FILE_OF(fi_in), off_in, FILE_OF(fi_out), off_out, len);
}

/* SEEK_DATA and SEEK_HOLE (the kernel answers the other whence values itself). While the file may have dirty pages
 * in the kernel, have it write them back from off on first: an invalidation of that range of its page cache makes
 * it send their WRITEs (the request loop's other threads serve them: LSEEK counts as a request that may block,
 * mount/mount.c) and wait for the replies before it returns. */
static off_t op_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi) {
    (void)path;
    if (!fi) return -EINVAL;
    kvfs_fs *fs = FS();
    off_t at;
    int rc = kvfs_lseek(fs, FILE_OF(fi), off, whence, false, &at);
    if (rc == -EAGAIN) {
        if (!req_nodeid) return -EIO; /* the device read hook always names the node */
        rc = fuse_lowlevel_notify_inval_inode(fuse_get_session(fuse_get_context()->fuse), req_nodeid, off, 0);
        if (rc == 0) rc = kvfs_lseek(fs, FILE_OF(fi), off, whence, true, &at);
    }
    return rc ? rc : at;
}

static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    return kvfs_fsync(FS(), FILE_OF(fi), datasync != 0);
}

static int op_setxattr(const char *path, const char *name, const char *value, size_t size, int flags) {
    if (hidden_lookup(path)) return -ENOTSUP;
    return stale_if_gone(path, kvfs_setxattr(FS(), path, name, value, size, flags));
}

static int op_getxattr(const char *path, const char *name, char *value, size_t size) {
    if (hidden_lookup(path)) return -ENODATA;
    ssize_t n = kvfs_getxattr(FS(), path, name, value, size);
    return n > INT32_MAX ? -E2BIG : stale_if_gone(path, (int)n);
}

static int op_listxattr(const char *path, char *list, size_t size) {
    if (hidden_lookup(path)) return 0;
    ssize_t n = kvfs_listxattr(FS(), path, list, size);
    return n > INT32_MAX ? -E2BIG : stale_if_gone(path, (int)n);
}

static int op_removexattr(const char *path, const char *name) {
    if (hidden_lookup(path)) return -ENODATA;
    return stale_if_gone(path, kvfs_removexattr(FS(), path, name));
}

static int op_opendir(const char *path, struct fuse_file_info *fi) {
    kvfs_dir *d;
    int rc = kvfs_opendir(FS(), path, &d);
    if (rc) return rc;
    fi->fh = (uint64_t)(uintptr_t)d;
    return 0;
}

typedef struct fill_ctx {
    void *buf;
    fuse_fill_dir_t filler;
    bool plus;
} fill_ctx;

static int fill_one(void *c, const char *name, const struct stat *st, off_t off) {
    fill_ctx *fc = c;
    bool dots = name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
    return fc->filler(fc->buf, name, st, off, fc->plus && !dots ? FUSE_FILL_DIR_PLUS : 0);
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)path;
    fill_ctx fc = {buf, filler, (flags & FUSE_READDIR_PLUS) != 0};
    return kvfs_readdir(FS(), (kvfs_dir *)(uintptr_t)fi->fh, off, fc.plus, fill_one, &fc);
}

static int op_releasedir(const char *path, struct fuse_file_info *fi) {
    (void)path;
    kvfs_releasedir(FS(), (kvfs_dir *)(uintptr_t)fi->fh);
    return 0;
}

static int op_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path, (void)datasync, (void)fi;
    return kvfs_fs_sync(FS());
}

static const struct fuse_operations kvfs_ops = {
    .getattr = op_getattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .fallocate = op_fallocate,
    .lseek = op_lseek,
    .copy_file_range = op_copy_file_range,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .chmod = op_chmod,
    .chown = op_chown,
    .truncate = op_truncate,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .write_buf = op_write_buf,
    .statfs = op_statfs,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .init = op_init,
    .destroy = op_destroy,
    .create = op_create,
    .utimens = op_utimens,
};

const struct fuse_operations *kvfs_fuse_operations(void) { return &kvfs_ops; }
