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
 *  - The same argument parser (tool_parse, tools_cmd.c) runs here and in the daemon, so both accept exactly the same
 *    input.
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
    tool_ctx_init(c, NULL, NULL, fds);
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
