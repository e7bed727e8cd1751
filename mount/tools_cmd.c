/*
 * tools_cmd.c — the command table, the argument parser, and running a command inside the daemon (tools_serve): what
 * a direct run (main.c) and the mount daemon's control socket (ctl.c) share, so that both accept exactly the same
 * input. (Apart from main.c so that a program other than kvfs, a test or a fuzz harness, can link it.)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keyfmt.h"
#include "tools.h"

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
    /* ... so a relative one reaches the daemon only in a request made by hand: it would name a place under the
     * daemon's working directory */
    if (cmd->run == cmd_checkpoint && c->remote && *a->pos[1] != '/')
        return usage_err(c, cmd, "DEST %s is relative: the mount daemon takes only an absolute DEST (its working "
                         "directory is not the client's)", a->pos[1]);
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

void tool_ctx_init(tool_ctx *c, kv_db *db, const char *datadir, const int fds[3]) {
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
    tool_ctx_init(c, db, datadir, fds);
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
