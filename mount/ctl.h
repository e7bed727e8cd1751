/*
 * ctl.h — the control socket: how `kvfs` tools reach a store that a mount daemon holds open (and locked).
 *
 * The daemon listens on DATADIR/kvfs.sock (mode 0600; only the daemon's own user and root may talk to it, checked
 * with SO_PEERCRED; a client other than root's likewise talks only to a daemon of its own user or root's). A client sends the argv of one tool command together with its stdin, stdout and stderr
 * descriptors (SCM_RIGHTS); the daemon runs the same tool code on a thread against its open kv_db, reading and
 * writing the client's descriptors directly, and answers with the exit status. So output is identical whether the
 * store is mounted or not, and streaming commands (scan, changes --follow, put from stdin) need no protocol of
 * their own. When the client goes away (Ctrl-C), the connection closes and the command stops at a safe point.
 *
 * Wire format (native byte order: both ends are on the same host):
 *   request  = struct { char magic[8] = "KVFSCTL1"; uint32 argc; uint32 bytes; } with 3 descriptors attached,
 *              then `bytes` bytes: argc NUL-terminated strings
 *   reply    = struct { char magic[8] = "KVFSRES1"; int32 status; int32 flags; } (status < 0: ended as if killed by
 *              -status), then, when flags has 4 (a changes --follow the daemon's stop cut short), struct { uint64
 *              seq, skip; }: where its output got (ctl_client_follow_stopped)
 * The daemon holds only what a client has sent: the body's buffer grows as its bytes arrive (a header claiming 16 MiB
 * and sending nothing had it allocate 144 MiB at once), and the argument array is allocated once the body shows its
 * strings (at most CTL_MAX_ARGS of them). The client takes only the replies a daemon sends: flags 0, 1, 2 or 4, alone, and a status a command ends
 * with (0 to 255, -SIGINT, -SIGPIPE); anything else is "a malformed reply", status 1 (a status of 256 exited 0, and
 * -SIGSTOP stopped the client).
 */
#ifndef KVFS_CTL_H
#define KVFS_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv.h"

#define CTL_SOCKET_NAME "kvfs.sock"
/* The request's argument strings, NULs included: more than the kernel lets a command line hold (a quarter of the
 * stack limit, at most 6 MiB), so every command that runs directly runs in the daemon too. */
#define CTL_MAX_ARG_BYTES (16u << 20)
/* The request's argument count. Each argument takes at least its NUL, but the daemon holds a pointer for each as well
 * (and the argument parser another): 16 Mi empty arguments, 16 MiB sent, had it hold 144 MiB. The kernel charges a
 * command line such a pointer per argument too, within the same 6 MiB, so none holds more than 6 MiB / 9 = 699,050
 * arguments: this limit is above that, so every command that runs directly runs in the daemon too (a limit of 65536
 * once refused `kvfs del DATADIR` with more keys on a mounted store, although it worked unmounted), and a request's
 * arrays of arguments take at most 8 MiB each. */
#define CTL_MAX_ARGS (1u << 20)

/* The time a client has to send its whole request, the header and all its arguments, counted from when the daemon
 * takes the connection: not per read, which let a client sending a byte every 9 s hold a connection thread for good
 * (and MAX_CONNS of them had the daemon refuse everyone as busy). Then the connection is closed, nothing run. */
#define CTL_REQUEST_TIMEOUT_MS 10000

struct ctl_server;

/* Options every kvfs process opens a store with; the mount daemon calls this after kv_options_init() too.
 *  - Batch-log retention (the engine does not store it, and a process that opens the store with the log off would
 *    leave a gap in the change feed): 100,000 batches or 64 MiB, whichever is reached first; and at most 1/32 of
 *    the file system holding datadir (at least 1 MiB), so that every process on the same disk gets the same bound
 *    and the feed of a store on a small disk does not take the room its files need (a full disk does not shrink
 *    it). A missing datadir is bounded by the disk of the directory it would be created in; NULL: no disk bound.
 *  - Values of 4 KiB or more go to blob files (the engine's default is 64 KiB): a directory pass, a cold listing or
 *    an rsync that only compares then reads keys and small references instead of inflating every file's contents,
 *    and file contents are written once instead of again by every compaction (docs/design-fs.md). */
#define KVFS_BATCH_LOG_MAX_BATCHES 100000u
#define KVFS_BATCH_LOG_MAX_BYTES (64ull << 20)
#define KVFS_BATCH_LOG_DISK_SHARE 32u
#define KVFS_BATCH_LOG_MIN_BYTES (1ull << 20)
#define KVFS_BLOB_THRESHOLD 4096u
void kvfs_store_options(kv_options *o, const char *datadir);

/* How long a process waits for a store another process holds before giving up, in ms: KVFS_LOCK_WAIT seconds
 * (0 to 86400, digits with an optional fraction), KVFS_LOCK_WAIT_DEFAULT_MS when unset or empty. -1 when it is set to anything else:
 * the caller reports it (a typo must not silently become the default). */
#define KVFS_LOCK_WAIT_DEFAULT_MS 5000
int kvfs_lock_wait_ms(void);
/* Its message for a bad value (a printf format taking the value): one wording for every command. */
#define KVFS_LOCK_WAIT_BAD "KVFS_LOCK_WAIT=%s: not a number of seconds from 0 to 86400"

/* Start serving db on DATADIR/kvfs.sock. Fails (KV_EBUSY) when another server answers there; a stale socket left
 * by a dead daemon is replaced; a non-socket file of that name is never removed (KV_EEXIST). Sets SIGPIPE to be
 * ignored if it was at its default (clients' pipes may close under a running command). KV_OK or a KV_E* code,
 * with kv_errmsg()-style detail available from ctl_errmsg(). */
int ctl_server_start(kv_db *db, const char *datadir, struct ctl_server **out);
/* Stop accepting, cancel running commands and wait for them to end, remove the socket, free s. Call it before
 * kv_close() of the store. NULL is allowed. */
void ctl_server_stop(struct ctl_server *s);
/* The detail of the last ctl_server_start failure on this thread. */
const char *ctl_errmsg(void);
/* For tests: the time a request may take (CTL_REQUEST_TIMEOUT_MS), in ms, for the connections every server of this
 * process takes from now on. 0, or KV_EINVAL when ms < 1. */
int ctl_set_request_timeout_ms(int ms);

/* Whether a daemon (kvfs mount or kvfs serve) answers on DATADIR/kvfs.sock: it is serving, not closing (a daemon
 * stops its socket first when it shuts down). */
bool ctl_daemon_answers(const char *datadir);

/* Client: run argv (argv[0] is the command name) in the daemon serving datadir. Returns 0 when no daemon answers
 * (nothing was run), 1 when the command ran there: *status is its exit status (negative: -signal). Failures after
 * connecting are reported on stderr as "kvfs: ..." and give status 1. */
int ctl_client_run(const char *datadir, int argc, char **argv, int *status);
/* Whether the command the last ctl_client_run of this thread ran, a `changes --follow`, was stopped by its daemon
 * stopping (an unmount, the end of kvfs serve); then where its output got: every batch up to *seq printed, and *skip
 * bytes of the listing of the ones after it. The daemon replies so (flag 4, then struct { uint64 seq, skip; })
 * instead of ending the connection, and the caller goes on from there. True once per such reply. */
bool ctl_client_follow_stopped(uint64_t *seq, uint64_t *skip);

/* ---- The wire format, without the socket: what the daemon and the client decode, and the fuzz harness tests ---- */

#define CTL_REQ_HDR_BYTES 16 /* magic, argc, bytes */
#define CTL_REPLY_BYTES 16   /* magic, status, flags */
#define CTL_FOLLOW_BYTES 16  /* seq, skip: after a reply with flag 4 */

/* Check a request header (n bytes): 0 with *argc and *bytes (1 <= argc <= bytes <= CTL_MAX_ARG_BYTES, argc <=
 * CTL_MAX_ARGS), -1 when it is malformed. */
int ctl_request_header(const void *hdr, size_t n, uint32_t *argc, uint32_t *bytes);
/* Split a request body of n bytes into exactly argc NUL-terminated strings: a malloc'ed array of argc + 1 pointers
 * into body, the last NULL; NULL when the body is not that (or out of memory: *oom). The array is allocated only
 * once the body has shown argc strings, so its size follows the bytes received, not the header's claim. */
char **ctl_request_args(char *body, size_t n, uint32_t argc, bool *oom);
/* The request for argv: the header into hdr, the body into a malloc'ed *body of *bytes bytes. 0; -1 when it is too
 * long (more than CTL_MAX_ARG_BYTES or CTL_MAX_ARGS) or argc < 1, -2 when out of memory. */
int ctl_request_encode(int argc, char *const *argv, uint8_t hdr[CTL_REQ_HDR_BYTES], char **body, size_t *bytes);

/* A reply, as the client takes it. */
enum ctl_reply_kind {
    CTL_REPLY_STATUS,   /* the command ended with status */
    CTL_REPLY_DENIED,   /* the daemon runs as another user and refused the client */
    CTL_REPLY_BUSY,     /* the daemon runs too many commands already: this one was not run */
    CTL_REPLY_FOLLOW,   /* a changes --follow its daemon's stop cut short, at seq and skip (ctl_client_follow_stopped) */
    CTL_REPLY_CUT,      /* the connection ended before a whole reply */
    CTL_REPLY_BAD,      /* not a reply the daemon sends: a bad magic, flags, or status */
};
typedef struct ctl_reply {
    int status;          /* CTL_REPLY_STATUS, CTL_REPLY_FOLLOW: 0 to 255, or -SIGINT or -SIGPIPE (ended as if killed) */
    uint64_t seq, skip;  /* CTL_REPLY_FOLLOW */
} ctl_reply;
/* Decode the n bytes received as a reply (the header, and the follow position when its flags announce one). A status
 * outside what a command ends with (0 to 255, -SIGINT, -SIGPIPE) is CTL_REPLY_BAD: the client exits with it, or
 * raises it as a signal. */
enum ctl_reply_kind ctl_reply_decode(const void *buf, size_t n, ctl_reply *r);
/* Encode a reply of kind STATUS, DENIED, BUSY or FOLLOW into buf; its length. */
size_t ctl_reply_encode(uint8_t buf[CTL_REPLY_BYTES + CTL_FOLLOW_BYTES], enum ctl_reply_kind kind, const ctl_reply *r);

#endif /* KVFS_CTL_H */
