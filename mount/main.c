/*
 * main.c — the `kvfs` command: dispatches `kvfs mount` to the mount daemon and every other subcommand to the tools,
 * which run either directly on the store or, when a daemon has it mounted, inside the daemon (ctl.h).
 *
 * Invariants
 *  - Usage errors are found before the store is touched, print one "kvfs: ..." line and exit with status 2; every
 *    other failure prints one "kvfs: ..." line and exits non-zero.
 *  - A direct run closes the store before exiting on every path, also after Ctrl-C: the first SIGINT/SIGTERM only
 *    sets a flag that the commands poll at safe points (a second one ends the process at once, which the engine's
 *    write-ahead log makes safe too).
 *  - The same argument parser (tool_parse) runs here and in the daemon, so both accept exactly the same input.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "keyfmt.h"
#include "tools.h"

#if defined(__has_include)
#if __has_include("mount.h")
#include "mount.h"
#endif
#endif
/* Weak, so that the tools build and work before (or without) the mount daemon's code: then `kvfs mount` says so. */
extern int kvfs_mount_main(int argc, char **argv) __attribute__((weak));

/* ---- The command table ---------------------------------------------------------------------------------------- */

#define KEYS_HELP                                                                                                 \
    "Keys are given and shown in text form: bytes that are not printable, and space, are written %XX, and a '%'\n"   \
    "that could start an escape (before 0-9, A-F or +, or alone) %25 (see man kvfs).\n"

const tool_cmd tool_cmds[] = {
    {"put", "DATADIR KEY [VALUE]", "store a value (from stdin when VALUE is omitted or -)",
     "VALUE is taken literally. Without it, or with -, the value is read from stdin to its end: binary-safe, any\n"
     "size, streamed into the store; nothing is written unless all of stdin was read. Creates the store if DATADIR\n"
     "holds none.\n" KEYS_HELP "\nOptions:\n  --sync    return once the value is on disk (fsync)\n",
     2, 3, 1, 1, OPT_SYNC, STORE_CREATE, cmd_put},
    {"get", "DATADIR KEY", "print a value",
     "Writes the raw value to stdout. Exit status 1, with a message on stderr, when the key is absent.\n" KEYS_HELP,
     2, 2, 1, 1, 0, STORE_READ, cmd_get},
    {"del", "DATADIR KEY...", "delete keys (one atomic batch)",
     "Deleting a key that is absent is not an error.\n" KEYS_HELP "\nOptions:\n  --sync    return once on disk\n",
     2, -1, 1, -1, OPT_SYNC, STORE_WRITE, cmd_del},
    {"batch", "DATADIR", "apply puts and deletes read from stdin as one atomic batch",
     "Reads all of stdin, then applies it as one batch: all of it or, on any error, nothing. One operation a line:\n"
     "  put KEY VALUE      KEY in text form; VALUE is the rest of the line after one space, with %XX escapes\n"
     "                     decoded (so a value may hold any byte: newline is %0A, '%' is %25)\n"
     "  put KEY            an empty value\n"
     "  del KEY\n"
     "Blank lines and lines starting with # are ignored. Creates the store if DATADIR holds none.\n"
     "\nOptions:\n  --sync    return once the batch is on disk\n",
     1, 1, 0, 0, OPT_SYNC, STORE_CREATE, cmd_batch},
    {"scan", "DATADIR [--prefix P | --start S] [--end E] [--limit N] [--reverse] [--keys-only] [--json]",
     "list keys and values in key order",
     "Prints one line per key: KEY, a tab, VALUE, both in text form (VALUE keeps its spaces). Streams: output\n"
     "starts at once and memory does not grow with the number of keys.\n"
     "\nOptions:\n"
     "  --prefix P   only keys starting with P\n"
     "  --start S    from the first key >= S\n"
     "  --end E      up to E, inclusive (unbounded when absent)\n"
     "  --limit N    at most N keys\n"
     "  --reverse    descending order, from the end down\n"
     "  --keys-only  print only the keys\n"
     "  --json       a JSON array of {\"key\", \"value\"} objects; key in text form; value as a string when it is\n"
     "               UTF-8, else \"value_base64\"\n",
     1, 1, 0, 0, OPT_PREFIX | OPT_START | OPT_END | OPT_LIMIT | OPT_REVERSE | OPT_KEYS_ONLY | OPT_JSON, STORE_READ,
     cmd_scan},
    {"resolve", "DATADIR PREFIX", "print the one key that starts with PREFIX",
     "Exit status 1 when no key starts with PREFIX, or when several do (the message names the first two).\n",
     2, 2, 1, 1, 0, STORE_READ, cmd_resolve},
    {"short", "DATADIR KEY", "print the shortest prefix of KEY that no other key shares",
     "Exit status 1 when KEY is absent, or when it is itself a prefix of another key (no prefix is unique).\n",
     2, 2, 1, 1, 0, STORE_READ, cmd_short},
    {"stats", "DATADIR [--json]", "show statistics",
     "Keys (estimated: versions and tombstones not yet compacted count), bytes on disk per level, memtable, block\n"
     "cache hit rate, write amplification, last sequence number, batch-log range, blob files.\n"
     "\nOptions:\n  --json    one JSON object\n",
     1, 1, 0, 0, OPT_JSON, STORE_READ, cmd_stats},
    {"compact", "DATADIR [--start S] [--end E]", "compact the store (or the key range [S, E]) through every level",
     "Merges every level into the deepest one that holds data, dropping overwritten versions and deleted keys;\n"
     "tables with nothing to drop are not rewritten. On the whole store it then collects blob files: deleted or\n"
     "overwritten large values give their space back. Shows a progress bar on a terminal.\n",
     1, 1, 0, 0, OPT_START | OPT_END, STORE_WRITE, cmd_compact},
    {"check", "DATADIR", "verify every checksum and the key order",
     "Reads every file of the store. Prints each problem as FILE: offset N: WHAT on stdout; exit status 1 when\n"
     "anything is wrong. Shows a progress bar on a terminal.\n",
     1, 1, 0, 0, 0, STORE_READ, cmd_check},
    {"checkpoint", "DATADIR DEST", "make a consistent copy of the store in DEST",
     "DEST must not exist. The copy opens as a store; table and blob files are hard-linked when DEST is on the\n"
     "same file system (they never change), so a checkpoint is cheap and `rsync -a DEST/ BACKUP/` is incremental.\n"
     "Shows a progress bar on a terminal.\n",
     2, 2, 0, 0, 0, STORE_WRITE, cmd_checkpoint},
    {"changes", "DATADIR [--since SEQ] [--follow] [--json]", "list the committed batches (the batch log)",
     "For each batch: a line \"batch SEQ TIME\" (UTC), then one line per operation: \"put KEY SIZE VALUE\" (text\n"
     "forms; VALUE is left out when the value is kept in a blob file) or \"del KEY\". Batches that touch only file\n"
     "attributes (not keyspace 0) are not shown. Exit status 1 when a batch that should be shown was pruned.\n"
     "\nOptions:\n"
     "  --since SEQ  only batches committed after SEQ (default: all retained)\n"
     "  --follow     keep printing new batches until interrupted (the store may be mounted and unmounted\n"
     "               meanwhile: each batch is printed once)\n"
     "  --json       a JSON array of {\"seq\", \"time_ms\", \"time\", \"ops\"}; with --follow one object a line\n",
     1, 1, 0, 0, OPT_SINCE | OPT_FOLLOW | OPT_JSON | OPT_SKIP_BYTES, STORE_READ, cmd_changes},
    {"prune", "DATADIR --before SEQ", "drop batches older than SEQ from the batch log", "",
     1, 1, 0, 0, OPT_BEFORE, STORE_WRITE, cmd_prune},
    {"dump", "FILE", "print a readable listing of a WAL, SSTable, manifest, batch log or blob file",
     "For debugging and support. Reads the file only; works on a mounted store too.\n",
     1, 1, 0, 0, 0, STORE_NONE, cmd_dump},
    {0},
};

const tool_cmd *tool_find(const char *name) {
    for (const tool_cmd *c = tool_cmds; c->name; c++)
        if (strcmp(c->name, name) == 0) return c;
    return NULL;
}

static void print_usage(FILE *f) {
    fprintf(f,
            "usage: kvfs COMMAND [ARGS...]\n"
            "       kvfs --help | --version | COMMAND --help\n\n"
            "kvfs keeps a key-value store in DATADIR, mounts it as a directory, and works with it from the shell,\n"
            "whether or not it is mounted.\n\nCommands:\n"
            "  %-11s %s\n",
            "mount", "mount DATADIR at MOUNTPOINT (kvfs mount --help)");
    fprintf(f, "  %-11s %s\n", "serve", "serve the store to other kvfs commands without mounting it");
    for (const tool_cmd *c = tool_cmds; c->name; c++) fprintf(f, "  %-11s %s\n", c->name, c->summary);
    fprintf(f, "\nRun 'kvfs COMMAND --help' for a command's options, 'man kvfs' for everything.\n");
}

static void print_cmd_help(FILE *f, const tool_cmd *c) {
    fprintf(f, "usage: kvfs %s %s\n\n%s.\n", c->name, c->synopsis, c->summary);
    if (*c->help) fprintf(f, "\n%s", c->help);
}

/* ---- Argument parsing (shared with the daemon) ---------------------------------------------------------------- */

static const struct {
    const char *name;
    unsigned bit;
    bool value;
} opt_names[] = {
    {"prefix", OPT_PREFIX, true}, {"start", OPT_START, true},         {"end", OPT_END, true},
    {"limit", OPT_LIMIT, true},   {"reverse", OPT_REVERSE, false},    {"keys-only", OPT_KEYS_ONLY, false},
    {"json", OPT_JSON, false},    {"since", OPT_SINCE, true},         {"follow", OPT_FOLLOW, false},
    {"before", OPT_BEFORE, true}, {"sync", OPT_SYNC, false},
    /* from a client to its daemon only (tool_parse refuses it on the command line): changes --follow going on in a
     * new daemon where the last one stopped, in the middle of a batch's listing */
    {"skip-bytes", OPT_SKIP_BYTES, true},
};

static int usage_err(tool_ctx *c, const tool_cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int usage_err(tool_ctx *c, const tool_cmd *cmd, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    tout_printf(&c->err, "kvfs: %s: %s (usage: kvfs %s %s)\n", cmd->name, msg, cmd->name, cmd->synopsis);
    tout_flush(&c->err);
    return TOOL_USAGE;
}

/* Decode a key given in text form; what names it in messages ("key", "--prefix"). */
static int parse_key(tool_ctx *c, const tool_cmd *cmd, const char *what, const char *text, tkey *k) {
    const char *why;
    size_t where;
    int rc = keyfmt_decode(text, strlen(text), true, &k->p, &k->n, &why, &where);
    if (rc == -2) return usage_err(c, cmd, "out of memory");
    if (rc < 0) return usage_err(c, cmd, "bad escape in %s '%s' at byte %zu: %s", what, text, where, why);
    if (k->n == 0 || k->n > KV_MAX_KEY) {
        size_t n = k->n;
        free(k->p);
        k->p = NULL;
        k->n = 0;
        if (n == 0) return usage_err(c, cmd, "empty %s: keys are 1 to %u bytes", what, KV_MAX_KEY);
        return usage_err(c, cmd, "%s is %zu bytes, longer than %u", what, n, KV_MAX_KEY);
    }
    return TOOL_OK;
}

static int parse_u64(tool_ctx *c, const tool_cmd *cmd, const char *what, const char *s, uint64_t *v) {
    char *end;
    if (*s < '0' || *s > '9') return usage_err(c, cmd, "%s needs a number, not '%s'", what, s);
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return usage_err(c, cmd, "%s needs a number, not '%s'", what, s);
    *v = x;
    return TOOL_OK;
}

void tool_args_free(targs *a) {
    for (int i = 0; i < a->nkeys; i++) free(a->keys[i].p);
    free(a->keys);
    free(a->pos);
    free(a->prefix.p);
    free(a->start.p);
    free(a->end.p);
    memset(a, 0, sizeof *a);
}

int tool_parse(tool_ctx *c, const tool_cmd *cmd, int argc, char **argv, targs *a) {
    memset(a, 0, sizeof *a);
    a->pos = calloc((size_t)argc + 1, sizeof *a->pos);
    if (!a->pos) return usage_err(c, cmd, "out of memory");
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        char *s = argv[i];
        if (only_pos || s[0] != '-' || strcmp(s, "-") == 0) {
            a->pos[a->npos++] = s;
            continue;
        }
        if (strcmp(s, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (s[1] != '-') return usage_err(c, cmd, "unknown option '%s' (a key starting with '-' goes after --)", s);
        const char *name = s + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        size_t k;
        for (k = 0; k < sizeof opt_names / sizeof opt_names[0]; k++)
            if (strlen(opt_names[k].name) == nlen && memcmp(opt_names[k].name, name, nlen) == 0) break;
        if (k == sizeof opt_names / sizeof opt_names[0] || !(cmd->opts & opt_names[k].bit) ||
            (opt_names[k].bit == OPT_SKIP_BYTES && !c->remote))
            return usage_err(c, cmd, "unknown option '%.*s'", (int)(nlen + 2), s);
        unsigned bit = opt_names[k].bit;
        if (a->seen & bit) return usage_err(c, cmd, "--%s given twice", opt_names[k].name);
        a->seen |= bit;
        if (!opt_names[k].value) {
            if (eq) return usage_err(c, cmd, "--%s takes no value", opt_names[k].name);
            continue;
        }
        const char *val = eq ? eq + 1 : NULL;
        if (!val) {
            if (i + 1 >= argc) return usage_err(c, cmd, "--%s needs a value", opt_names[k].name);
            val = argv[++i];
        }
        int rc = TOOL_OK;
        switch (bit) {
        case OPT_PREFIX: rc = parse_key(c, cmd, "--prefix", val, &a->prefix); break;
        case OPT_START: rc = parse_key(c, cmd, "--start", val, &a->start); break;
        case OPT_END: rc = parse_key(c, cmd, "--end", val, &a->end); break;
        case OPT_LIMIT: rc = parse_u64(c, cmd, "--limit", val, &a->limit); break;
        case OPT_SINCE: rc = parse_u64(c, cmd, "--since", val, &a->since); break;
        case OPT_BEFORE: rc = parse_u64(c, cmd, "--before", val, &a->before); break;
        case OPT_SKIP_BYTES: rc = parse_u64(c, cmd, "--skip-bytes", val, &a->skip_bytes); break;
        }
        if (rc) return rc;
    }
    if (a->npos < cmd->min_pos) return usage_err(c, cmd, "missing arguments");
    if (cmd->max_pos >= 0 && a->npos > cmd->max_pos) return usage_err(c, cmd, "too many arguments");
    if ((a->seen & OPT_PREFIX) && (a->seen & OPT_START))
        return usage_err(c, cmd, "--prefix and --start cannot be used together");
    /* compact's range is [start, end]: reversed, it names no key, and a run that compacts nothing and exits 0 hides
     * the typo (scan takes its order from --reverse instead) */
    if (cmd->run == cmd_compact && (a->seen & OPT_START) && (a->seen & OPT_END)) {
        size_t n = a->start.n < a->end.n ? a->start.n : a->end.n;
        int cmp = memcmp(a->start.p, a->end.p, n);
        if (cmp > 0 || (cmp == 0 && a->start.n > a->end.n)) return usage_err(c, cmd, "--start is after --end");
    }
    if (cmd->opts & OPT_BEFORE && !(a->seen & OPT_BEFORE)) return usage_err(c, cmd, "--before SEQ is required");
    if (*a->pos[0] == 0) return usage_err(c, cmd, "empty %s", cmd->mode == STORE_NONE ? "FILE" : "DATADIR");
    /* Here, not in cmd_checkpoint: the client makes DEST absolute for the daemon, which would see "CWD/". */
    if (cmd->run == cmd_checkpoint && *a->pos[1] == 0) return usage_err(c, cmd, "empty DEST");
    if (cmd->first_key > 0) {
        int last = cmd->last_key < 0 ? a->npos - 1 : cmd->last_key;
        a->keys = calloc((size_t)(last - cmd->first_key + 1), sizeof *a->keys);
        if (!a->keys) return usage_err(c, cmd, "out of memory");
        for (int i = cmd->first_key; i <= last; i++) {
            /* put's VALUE may be '-' (stdin) but a key never is special */
            int rc = parse_key(c, cmd, cmd->run == cmd_resolve ? "prefix" : "key", a->pos[i], &a->keys[a->nkeys]);
            if (rc) return rc;
            a->nkeys++;
        }
    }
    return TOOL_OK;
}

/* ---- Running inside the daemon -------------------------------------------------------------------------------- */

static void ctx_init(tool_ctx *c, kv_db *db, const char *datadir, const int fds[3]) {
    memset(c, 0, sizeof *c);
    c->db = db;
    c->datadir = c->store_dir = datadir;
    c->in_fd = fds[0];
    c->out.fd = fds[1];
    c->err.fd = fds[2];
    c->out.ctx = c->err.ctx = c;
    c->cancel_fd = -1;
    c->progress = isatty(fds[2]) == 1;
}

int tools_serve(kv_db *db, const char *datadir, int argc, char **argv, const int fds[3], int cancel_fd,
                tool_follow_pos *pos) {
    tool_ctx *c = malloc(sizeof *c); /* two 64 KiB buffers: not on a thread's stack */
    if (!c) return TOOL_FAIL;
    ctx_init(c, db, datadir, fds);
    c->cancel_fd = cancel_fd;
    c->remote = true;
    int rc;
    const tool_cmd *cmd = argc > 0 ? tool_find(argv[0]) : NULL;
    targs a;
    memset(&a, 0, sizeof a);
    if (!cmd || cmd->mode == STORE_NONE) {
        tout_printf(&c->err, "kvfs: the mount daemon does not run '%s'\n", argc > 0 ? argv[0] : "");
        rc = TOOL_USAGE;
    } else if ((rc = tool_parse(c, cmd, argc, argv, &a)) == TOOL_OK) {
        c->datadir = a.pos[0]; /* messages name the store as the user wrote it, as a direct run does */
        rc = cmd->run(c, &a);
    }
    rc = tool_finish(c, rc);
    /* changes --follow cancelled (not ended by its reader or an error): where its output got, the last batch
     * perhaps cut short by the cancellation, for the client to go on from there (cmd_changes) */
    if (pos && c->follow_tracked && rc == -SIGINT) {
        pos->valid = true;
        if (c->out.written >= c->done_end) {
            pos->seq = c->done_seq;
            pos->skip = 0;
        } else {
            pos->seq = c->prev_seq;
            pos->skip = c->out.written - c->prev_end;
        }
    }
    tool_args_free(&a);
    free(c);
    return rc;
}

/* ---- Direct runs ---------------------------------------------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig) {
    if (interrupted) { /* second Ctrl-C: stop now (the write-ahead log keeps the store consistent) */
        signal(sig, SIG_DFL);
        raise(sig);
    }
    interrupted = sig;
}

static void setup_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: blocking calls return EINTR and the command checks the flag */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    /* A reader that goes away shows up as EPIPE; the command stops cleanly and then dies of SIGPIPE as usual. */
    signal(SIGPIPE, SIG_IGN);
}

/* Make sure descriptors 0..2 are open, so that nothing we open later becomes "stdout" by accident. A closed stdin
 * or stdout gets /dev/null opened the wrong way round, so that reading or writing it still fails with EBADF, as it
 * would have closed: `kvfs put D K <&-` must not store an empty value, nor `kvfs get D K >&-` say 0 having written
 * nothing (a closed stderr just loses the messages). */
static void ensure_std_fds(void) {
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = open("/dev/null", fd == 1 ? O_RDONLY : O_WRONLY);
            if (n >= 0 && n != fd) close(n); /* cannot happen: open returns the lowest free descriptor */
        }
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Open the store for a command, or run the command in the daemon that has it mounted.
 * Returns KV_OK with *db; 1 when the command ran remotely (*status set); else a failure status to exit with (the
 * message already printed). */
static int open_or_delegate(tool_ctx *c, const char *dir, enum store_mode mode, int argc, char **argv, kv_db **db,
                            int *status) {
    /* before anything is done (a put would create DATADIR first) */
    int max_wait = kvfs_lock_wait_ms();
    if (max_wait < 0) {
        *status = tool_error(c, KVFS_LOCK_WAIT_BAD, getenv("KVFS_LOCK_WAIT"));
        return -1;
    }
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT || mode != STORE_CREATE) {
            *status = tool_error(c, "%s: %s", dir, errno == ENOENT ? "no store here (no such directory)"
                                                                  : strerror(errno));
            return -1;
        }
    } else if (!S_ISDIR(st.st_mode)) {
        *status = tool_error(c, "%s: not a directory", dir);
        return -1;
    }
    kv_options o;
    kv_options_init(&o);
    kvfs_store_options(&o, dir);
    o.create_if_missing = mode == STORE_CREATE;
    /* Readers open read-only: nothing is written (no new manifest or log), so they cost little and change nothing. */
    o.read_only = mode == STORE_READ;
    if (mode == STORE_CREATE && stat(dir, &st) != 0 && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        *status = tool_error(c, "%s: cannot create: %s", dir, strerror(errno));
        return -1;
    }
    kv_intent *intent = NULL; /* a writer that waits goes before readers that come meanwhile (kv_intent_take) */
    int ret = -1;
    for (int waited = 0;; waited += 50) {
        /* The engine's background threads inherit the signal mask: blocked there, Ctrl-C always reaches this
         * thread, whose blocking calls it must interrupt. */
        sigset_t sigs, old;
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGINT);
        sigaddset(&sigs, SIGTERM);
        sigaddset(&sigs, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &sigs, &old);
        int rc = kv_open(dir, &o, db);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc == KV_OK) {
            ret = KV_OK;
            break;
        }
        if (rc != KV_EBUSY) {
            if (rc == KV_ENOTFOUND && mode != STORE_CREATE)
                *status = tool_error(c, "%s: no store here", dir);
            else
                *status = tool_kv_error(c, rc, "%s: cannot open the store", dir);
            break;
        }
        if (ctl_client_run(dir, argc, argv, status)) {
            ret = 1;
            break;
        }
        /* Locked, and no daemon answers: another tool is using the store. Wait a little for it. */
        if (waited >= max_wait || interrupted) {
            *status = interrupted ? -SIGINT
                                  : tool_error(c, "%s: the store is locked by another process (not a kvfs mount: no "
                                                  "daemon answers on %s/%s; waited %d ms)", dir, dir, CTL_SOCKET_NAME,
                                               max_wait);
            break;
        }
        if (!o.read_only && !intent) kv_intent_take(dir, &o, &intent); /* KV_EBUSY: another writer waits first */
        sleep_ms(50);
    }
    kv_intent_release(intent);
    return ret;
}

/* `changes DIR --follow` from batch *since on, with c->out.skip bytes of the next batch's listing printed already:
 * open the store, or run the rest in the daemon that has it mounted. When that daemon stops while it follows (an
 * unmount: ctl_client_follow_stopped), go on from where it got, again: the store is opened once its daemon has let
 * go of it (open_or_delegate waits for it, as for any process that holds it), or the daemon of a new mount takes the
 * rest. Returns as open_or_delegate: KV_OK with c->db open, *since and c->out.skip where to go on; 1 when a daemon
 * ran the rest (*status its status); -1 when the store cannot be opened (reported, *status set). */
static int follow_open(tool_ctx *c, const char *dir, bool json, uint64_t *since, int *status) {
    for (;;) {
        char seq[24], skip[24];
        snprintf(seq, sizeof seq, "%" PRIu64, *since);
        snprintf(skip, sizeof skip, "%" PRIu64, c->out.skip);
        char *argv[9] = {"changes", (char *)dir, "--since", seq, "--follow"};
        int argc = 5;
        if (json) argv[argc++] = "--json";
        if (c->out.skip) argv[argc++] = "--skip-bytes", argv[argc++] = skip;
        argv[argc] = NULL;
        int rc = open_or_delegate(c, dir, STORE_READ, argc, argv, &c->db, status);
        if (rc != 1) return rc;
        c->out.skip = 0; /* the daemon skipped them */
        if (!ctl_client_follow_stopped(since, &c->out.skip)) return 1;
    }
}

/* The reopen hooks for a direct `changes --follow` (tools.h). */
struct reopen_arg {
    const char *dir;
};
static int reopen_open(tool_reopen *r, tool_ctx *c, bool json, uint64_t *since, int *remote_rc) {
    struct reopen_arg *ra = r->arg;
    int status = TOOL_FAIL;
    int rc = follow_open(c, ra->dir, json, since, &status);
    if (rc != KV_OK) {
        *remote_rc = status; /* what the daemon ran ended so, or the failure was reported: end with its status */
        return TOOL_REOPEN_REMOTE;
    }
    return KV_OK;
}
static void reopen_close(tool_reopen *r, tool_ctx *c) {
    (void)r;
    if (c->db) kv_free(c->db);
    c->db = NULL;
}

/* Arguments that name files relative to the client's working directory must be absolute for the daemon, whose
 * working directory is another. Returns a copy of argv to send (or argv itself). */
static char **argv_for_daemon(const tool_cmd *cmd, int argc, char **argv, const targs *a) {
    if (cmd->run != cmd_checkpoint || a->pos[1][0] == '/') return argv;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return argv;
    char **v = calloc((size_t)argc + 1, sizeof *v);
    if (!v) return argv;
    for (int i = 0; i < argc; i++) {
        v[i] = argv[i];
        if (argv[i] == a->pos[1]) { /* the DEST argument itself, found by identity */
            size_t n = strlen(cwd) + strlen(argv[i]) + 2;
            v[i] = malloc(n);
            if (v[i]) snprintf(v[i], n, "%s/%s", cwd, argv[i]);
            else v[i] = argv[i];
        }
    }
    return v;
}

static int finish_exit(int status) {
    if (status < 0) { /* end as if killed by the signal, as a shell expects of an interrupted or piped command */
        fflush(NULL);
        signal(-status, SIG_DFL);
        raise(-status);
        return 128 - status;
    }
    return status;
}

/* Usage, help and version go through stdio: a failed write there (a full disk) must not end with status 0. */
static int stdout_finish(int status) {
    int e = fflush(stdout) != 0 ? errno : 0;
    if (!e && ferror(stdout)) e = EIO;
    if (!e) return status;
    fprintf(stderr, "kvfs: writing output: %s\n", strerror(e));
    return TOOL_FAIL;
}

static int run_direct(const tool_cmd *cmd, int argc, char **argv) {
    static const int fds[3] = {0, 1, 2};
    tool_ctx *c = malloc(sizeof *c);
    if (!c) {
        fprintf(stderr, "kvfs: out of memory\n");
        return TOOL_FAIL;
    }
    ctx_init(c, NULL, NULL, fds);
    c->interrupted = &interrupted;
    targs a;
    int status = tool_parse(c, cmd, argc, argv, &a);
    if (status == TOOL_OK) {
        c->datadir = c->store_dir = a.pos[0];
        if (cmd->mode == STORE_NONE) {
            status = tool_finish(c, cmd->run(c, &a));
        } else {
            char **dargv = argv_for_daemon(cmd, argc, argv, &a);
            struct reopen_arg ra = {a.pos[0]};
            tool_reopen ro = {reopen_open, reopen_close, &ra};
            int rc = open_or_delegate(c, a.pos[0], cmd->mode, argc, dargv, &c->db, &status);
            bool follow = cmd->run == cmd_changes && (a.seen & OPT_FOLLOW);
            if (rc == 1 && follow && ctl_client_follow_stopped(&a.since, &c->out.skip)) {
                /* the daemon stopped (an unmount) while it followed: go on from where it got */
                a.seen |= OPT_SINCE;
                rc = follow_open(c, a.pos[0], a.seen & OPT_JSON, &a.since, &status);
            }
            if (rc == KV_OK) {
                if (follow) c->reopen = &ro;
                status = cmd->run(c, &a);
                if (c->db) {
                    int crc = kv_close(c->db);
                    if (crc != KV_OK && status == TOOL_OK) status = tool_kv_error(c, crc, "%s: closing", a.pos[0]);
                    kv_free(c->db);
                }
                status = tool_finish(c, status);
            } else {
                tout_flush(&c->err);
            }
            if (dargv != argv) {
                for (int i = 0; i < argc; i++)
                    if (dargv[i] != argv[i]) free(dargv[i]);
                free(dargv);
            }
        }
    }
    tool_args_free(&a);
    free(c);
    return status;
}

/* `kvfs serve DATADIR`: hold the store open and serve tool commands over the control socket until interrupted —
 * what `kvfs mount` does, without the filesystem. */
static int serve_main(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') {
        if (argc == 2)
            fprintf(stderr, "kvfs: serve: unknown option '%s' (usage: kvfs serve DATADIR)\n", argv[1]);
        else
            fprintf(stderr, "kvfs: serve: %s (usage: kvfs serve DATADIR)\n",
                    argc < 2 ? "missing DATADIR" : "too many arguments");
        return TOOL_USAGE;
    }
    const char *dir = argv[1];
    int max_wait = kvfs_lock_wait_ms();
    if (max_wait < 0) {
        fprintf(stderr, "kvfs: " KVFS_LOCK_WAIT_BAD "\n", getenv("KVFS_LOCK_WAIT"));
        return TOOL_FAIL;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "kvfs: %s: cannot create: %s\n", dir, strerror(errno));
        return TOOL_FAIL;
    }
    kv_options o;
    kv_options_init(&o);
    kvfs_store_options(&o, dir);
    /* Signals stay blocked except inside sigsuspend below, and every thread (the engine's, the socket's) inherits
     * the mask: so SIGINT/SIGTERM always wake the wait. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    kv_db *db;
    /* Held by another process: wait for it to let go, as kvfs mount does (a daemon closing the store after its
     * unmount, a tool for a moment), unless a daemon serves it. */
    int rc = kv_open(dir, &o, &db);
    kv_intent *intent = NULL; /* waiting, it goes before readers that come meanwhile (kv_intent_take) */
    for (int waited = 0; rc == KV_EBUSY && waited < max_wait && !ctl_daemon_answers(dir) && !interrupted;
         waited += 50) {
        if (!intent) kv_intent_take(dir, &o, &intent);
        sigprocmask(SIG_SETMASK, &old, NULL); /* Ctrl-C ends the wait */
        sleep_ms(50);
        sigprocmask(SIG_BLOCK, &block, NULL);
        rc = kv_open(dir, &o, &db);
    }
    kv_intent_release(intent);
    if (rc == KV_EBUSY) {
        fprintf(stderr, "kvfs: %s: %s\n", dir, ctl_daemon_answers(dir)
                    ? "the store is already served by a daemon (kvfs mount or kvfs serve)"
                    : "the store is locked by another process");
        return TOOL_FAIL;
    }
    if (rc) {
        fprintf(stderr, "kvfs: %s: cannot open the store: %s (%s)\n", dir, kv_errmsg(), kv_strerror(rc));
        return TOOL_FAIL;
    }
    struct ctl_server *srv;
    rc = ctl_server_start(db, dir, &srv);
    if (rc) {
        fprintf(stderr, "kvfs: %s: %s\n", dir, ctl_errmsg());
        kv_free(db);
        return TOOL_FAIL;
    }
    while (!interrupted) sigsuspend(&old); /* no signal is lost between the check and the wait */
    sigprocmask(SIG_SETMASK, &old, NULL);
    ctl_server_stop(srv);
    rc = kv_close(db);
    kv_free(db);
    if (rc) {
        fprintf(stderr, "kvfs: %s: closing the store: %s (%s)\n", dir, kv_errmsg(), kv_strerror(rc));
        return TOOL_FAIL;
    }
    return TOOL_OK;
}

int main(int argc, char **argv) {
    ensure_std_fds();
    if (argc < 2) {
        print_usage(stderr);
        return TOOL_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        if (argc > 2 && strcmp(name, "help") == 0) {
            const tool_cmd *cmd = tool_find(argv[2]);
            if (cmd) {
                print_cmd_help(stdout, cmd);
                return stdout_finish(TOOL_OK);
            }
            if (strcmp(argv[2], "mount") != 0) {
                fprintf(stderr, "kvfs: unknown command '%s' (see kvfs --help)\n", argv[2]);
                return TOOL_USAGE;
            }
            char *margv[] = {"mount", "--help", NULL};
            return stdout_finish(kvfs_mount_main ? kvfs_mount_main(2, margv) : TOOL_OK);
        }
        print_usage(stdout);
        return stdout_finish(TOOL_OK);
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("kvfs %s\n", KV_VERSION_STRING);
        return stdout_finish(TOOL_OK);
    }
    if (strcmp(name, "mount") == 0) {
        if (!kvfs_mount_main) {
            fprintf(stderr, "kvfs: mount: not available in this build\n");
            return TOOL_FAIL;
        }
        return stdout_finish(kvfs_mount_main(argc - 1, argv + 1)); /* --help writes to stdout */
    }
    if (strcmp(name, "serve") == 0) {
        if (argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
            printf("usage: kvfs serve DATADIR\n\nhold the store open and serve the other kvfs commands over "
                   "DATADIR/%s until\ninterrupted: what kvfs mount does, without the filesystem.\n", CTL_SOCKET_NAME);
            return stdout_finish(TOOL_OK);
        }
        setup_signals();
        return serve_main(argc - 1, argv + 1);
    }
    const tool_cmd *cmd = tool_find(name);
    if (!cmd) {
        fprintf(stderr, "kvfs: unknown command '%s' (see kvfs --help)\n", name);
        return TOOL_USAGE;
    }
    for (int i = 2; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_cmd_help(stdout, cmd);
            return stdout_finish(TOOL_OK);
        }
    setup_signals();
    return finish_exit(run_direct(cmd, argc - 1, argv + 1));
}
