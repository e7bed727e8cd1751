/*
 * tools.h — what the kvfs tool commands share: the per-run context (store handle, the caller's three descriptors,
 * cancellation), buffered output, parsed arguments, the command table, and the entry points used by main.c (direct
 * runs) and ctl.c (runs inside the mount daemon on behalf of a client); tools_cmd.c holds the table, the parser and
 * tools_serve.
 *
 * Invariants
 *  - Tool code is reentrant: no global mutable state, no exit(), no getopt, no stdio on stdin/stdout/stderr. All
 *    input and output goes through the descriptors in the context, so the same code serves a direct run and a run
 *    in a daemon thread with the client's descriptors, and prints byte for byte the same.
 *  - A command checks tool_cancelled() wherever it may wait or loop for long, and stops at a point where the store
 *    is consistent (engine calls are atomic; batches are committed whole or not at all).
 */
#ifndef KVFS_TOOLS_H
#define KVFS_TOOLS_H

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kv.h"

/* Exit statuses. A negative status -S means "end as if killed by signal S" (SIGPIPE when the reader went away,
 * SIGINT when interrupted), which main() reproduces with raise(). */
enum { TOOL_OK = 0, TOOL_FAIL = 1, TOOL_USAGE = 2 };

struct tool_ctx;

/* A buffered writer on a descriptor. Writes wait for the descriptor with poll(), so a cancelled command never stays
 * blocked on a full pipe. After the first error every write fails fast (err holds the errno). */
typedef struct tout {
    int fd;
    struct tool_ctx *ctx;
    size_t n;
    int err;
    int wmode;              /* daemon runs: how a write avoids blocking (tools_io.c, write_some); 0 = not known yet */
    uint64_t written;       /* bytes written to fd so far, counting those skipped */
    uint64_t total;         /* bytes given to tout_write so far, written or not (skipped, buffered, failed) */
    uint64_t skip;          /* the next bytes written are dropped (printed already: changes --follow resuming) */
    char buf[1 << 16];
} tout;

typedef struct tool_ctx {
    kv_db *db;              /* the open store (NULL for commands that need none) */
    const char *datadir;    /* as the user gave it, for messages */
    const char *store_dir;  /* the store's directory as this process reaches it (the daemon's own path of it) */
    int in_fd;              /* the caller's stdin */
    tout out, err;          /* the caller's stdout and stderr */
    int cancel_fd;          /* daemon runs: the client connection; readable or hung up = cancelled. -1 otherwise */
    volatile sig_atomic_t *interrupted; /* direct runs: set by the SIGINT/SIGTERM handler. NULL otherwise */
    bool progress;          /* stderr is a terminal: draw progress bars */
    bool remote;            /* running inside the mount daemon */
    bool stopped;           /* cancellation seen (sticky) */
    int64_t progress_drawn_ms; /* last time the bar was drawn */
    const char *progress_label;
    struct tool_reopen *reopen; /* direct runs of `changes --follow` (see below); NULL otherwise */
    /* daemon runs of `changes --follow`: how far the output got, so that a client whose daemon stops goes on from
     * there (tools_serve). The listing of the batches up to done_seq ends at byte done_end of the output (out.total);
     * the batch after prev_seq starts at byte prev_end, with all before it written. */
    bool follow_tracked;
    uint64_t prev_seq, prev_end, done_seq, done_end;
    char keystr[3][256];    /* tool_keystr's buffers: a message may name three keys */
    int keystr_next;
} tool_ctx;

/* Output. tout_* return 0 or -1 (out->err set). */
int tout_write(tout *o, const void *p, size_t n);
int tout_printf(tout *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tout_flush(tout *o);
static inline int tout_str(tout *o, const char *s) { return tout_write(o, s, strlen(s)); }
/* Write bytes in text form (keyfmt), a JSON string of text, a JSON string of a key's text form. */
int tout_keytext(tout *o, const void *key, size_t n);
/* The text form of a value (spaces kept). For a value written in pieces, final is false except for the last piece:
 * returns how many bytes were consumed; the unconsumed rest (at most 3 bytes of a UTF-8 character cut at the end of
 * the piece) must start the next piece. -1 on an output error. */
long tout_valtext(tout *o, const void *val, size_t n, bool final);
int tout_json_str(tout *o, const void *s, size_t n); /* s must be valid UTF-8 */
int tout_json_chars(tout *o, const void *s, size_t n); /* the same without the quotes (a piece of a string) */
/* Base64 of a value given in pieces (see tout_valtext for final and *used). 0 or -1. */
int tout_base64(tout *o, const void *p, size_t n, bool final, size_t *used);
/* The JSON member for a value held in memory: "value":"..." when it is UTF-8, else "value_base64":"...". */
int tout_json_value(tout *o, const void *v, size_t n);
int tout_json_key(tout *o, const void *key, size_t n);

/* A batch timestamp (milliseconds since the epoch; any int64, since it comes from disk) as "YYYY-MM-DDTHH:MM:SS.mmmZ",
 * floored to the second as a clock reads (-1 ms is 23:59:59.999). buf should hold 48 bytes. */
void tool_iso_time(char *buf, size_t n, int64_t ms);

/* A key's text form for a message, quoted, shortened to about 200 characters. Three buffers take turns: valid until
 * the third call after it (one message may name three keys). */
const char *tool_keystr(tool_ctx *c, const void *key, size_t n);

/* An error line "kvfs: ..." on the caller's stderr; returns TOOL_FAIL. */
int tool_error(tool_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same for an engine status: "kvfs: <what>: <kv_errmsg> (<kv_strerror>)", or the status alone when the engine
 * has no detail (and for KV_EREADONLY: "the store is read-only (mounted with -o ro)"). */
int tool_kv_error(tool_ctx *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* True once the user interrupted (direct run) or the client went away / the daemon is stopping. */
bool tool_cancelled(tool_ctx *c);
/* Sleep up to ms milliseconds, returning early (true) when cancelled. */
bool tool_sleep(tool_ctx *c, int ms);
/* True when stdout is a pipe or socket whose reader went away (out.err is then EPIPE): what a command that writes
 * nothing for a long time (changes --follow while no batch comes) checks so as to end as a write would, at once
 * rather than at its next line. */
bool tool_output_gone(tool_ctx *c);
/* Read from the caller's stdin: bytes read, 0 at end of input, -1 on error or cancellation (errno EINTR). */
long tool_read(tool_ctx *c, void *buf, size_t n);
/* The status a command ends with after a stop: the reader went away (EPIPE) -> -SIGPIPE, interrupted -> -SIGINT,
 * else rc. Also prints a message for other output errors. */
int tool_finish(tool_ctx *c, int rc);

/* kv_progress_fn for long operations: draws "label [=====   ] 42%" on a terminal, stops the operation when
 * cancelled. tool_progress_done() clears the bar. */
int tool_progress(void *ctx, uint64_t done, uint64_t total);
void tool_progress_done(tool_ctx *c);

/* ---- Arguments ------------------------------------------------------------------------------------------------ */

typedef struct tkey {
    uint8_t *p;
    size_t n;
} tkey;

enum {
    OPT_PREFIX = 1u << 0, OPT_START = 1u << 1, OPT_END = 1u << 2, OPT_LIMIT = 1u << 3, OPT_REVERSE = 1u << 4,
    OPT_KEYS_ONLY = 1u << 5, OPT_JSON = 1u << 6, OPT_SINCE = 1u << 7, OPT_FOLLOW = 1u << 8, OPT_BEFORE = 1u << 9,
    OPT_SYNC = 1u << 10, OPT_SKIP_BYTES = 1u << 11,
};

typedef struct targs {
    unsigned seen;          /* OPT_* given */
    int npos;               /* positional arguments, DATADIR first (FILE for dump) */
    char **pos;
    tkey *keys;             /* positionals decoded as keys (per command), in order */
    int nkeys;
    tkey prefix, start, end;
    uint64_t limit, since, before;
    uint64_t skip_bytes;    /* --skip-bytes N: only from a client to its daemon (changes --follow resuming) */
} targs;

/* ---- Commands ------------------------------------------------------------------------------------------------- */

enum store_mode { STORE_NONE, STORE_READ, STORE_WRITE, STORE_CREATE /* write; create the store if missing */ };

typedef struct tool_cmd {
    const char *name;
    const char *synopsis;   /* after "kvfs NAME " */
    const char *summary;    /* one line for kvfs --help */
    const char *help;       /* the rest of kvfs NAME --help */
    int min_pos, max_pos;   /* positional count including DATADIR; max_pos -1 = any */
    int first_key, last_key;/* positionals decoded as keys: indexes, last -1 = to the end; first 0 = none */
    unsigned opts;
    enum store_mode mode;
    int (*run)(tool_ctx *c, const targs *a);
} tool_cmd;

extern const tool_cmd tool_cmds[];
const tool_cmd *tool_find(const char *name);

/* The context of a run on db with the caller's descriptors fds (stdin, stdout, stderr): not cancellable, not remote. */
void tool_ctx_init(tool_ctx *c, kv_db *db, const char *datadir, const int fds[3]);

/* Parse argv (argv[0] is the command name) into *a, printing usage errors to c's stderr. TOOL_OK or TOOL_USAGE. */
int tool_parse(tool_ctx *c, const tool_cmd *cmd, int argc, char **argv, targs *a);
void tool_args_free(targs *a);

/* Where a `changes --follow` stopped in the daemon: every batch up to seq is printed, and skip bytes of the
 * listing of the ones after it (a batch cut short). The client goes on from there (ctl.h). */
typedef struct tool_follow_pos {
    bool valid;
    uint64_t seq, skip;
} tool_follow_pos;

/* Run one command inside the mount daemon for a client (called by ctl.c): db is the daemon's store, fds the
 * client's stdin/stdout/stderr, cancel_fd the client connection. Returns the exit status (negative: -signal). A
 * `changes --follow` stopped by cancellation (the daemon stopping, or the client gone) sets *pos to where it was. */
int tools_serve(kv_db *db, const char *datadir, int argc, char **argv, const int fds[3], int cancel_fd,
                tool_follow_pos *pos);

/* The commands (tools_data.c, tools_admin.c, tools_dump.c). */
int cmd_put(tool_ctx *c, const targs *a);
int cmd_get(tool_ctx *c, const targs *a);
int cmd_del(tool_ctx *c, const targs *a);
int cmd_batch(tool_ctx *c, const targs *a);
int cmd_scan(tool_ctx *c, const targs *a);
int cmd_resolve(tool_ctx *c, const targs *a);
int cmd_short(tool_ctx *c, const targs *a);
int cmd_stats(tool_ctx *c, const targs *a);
int cmd_compact(tool_ctx *c, const targs *a);
int cmd_check(tool_ctx *c, const targs *a);
int cmd_checkpoint(tool_ctx *c, const targs *a);
int cmd_changes(tool_ctx *c, const targs *a);
int cmd_prune(tool_ctx *c, const targs *a);
int cmd_dump(tool_ctx *c, const targs *a);

/* Parse the input of `kvfs batch` (docs/tools.md, "batch"; n bytes of text) into sb's keyspace-0 puts and deletes, in
 * order. TOOL_OK, or TOOL_FAIL with its message ("batch: line N: ...") on c's stderr. */
struct store_batch;
int tool_batch_parse(tool_ctx *c, const char *text, size_t n, struct store_batch *sb);

/* For `changes --follow` on a store that is not mounted: the follow loop closes the store between polls so other
 * tools can use it meanwhile, and reopens it (implemented in main.c) to go on after batch *since. open() returns
 * KV_OK with c->db open, or TOOL_REOPEN_REMOTE when the store got mounted meanwhile: then it has run the rest of the
 * command through the daemon and put its exit status in *remote_rc (or failed: the status of its message). When
 * that daemon stopped (an unmount) while it followed, open() goes on where it was: KV_OK with c->db open again,
 * *since moved on, and c->out.skip the bytes of the next batch's listing that the daemon printed already. */
#define TOOL_REOPEN_REMOTE 1
typedef struct tool_reopen {
    int (*open)(struct tool_reopen *r, tool_ctx *c, bool json, uint64_t *since, int *remote_rc);
    void (*close)(struct tool_reopen *r, tool_ctx *c);
    void *arg;
} tool_reopen;

#endif /* KVFS_TOOLS_H */
