/*
 * mount.c — the mount daemon: parse `kvfs mount [-f] [-o OPTIONS] DATADIR MOUNTPOINT`, open the store (which
 * locks DATADIR), serve it over FUSE and the control socket, and shut down cleanly.
 *
 * Invariants
 *  - The command returns only once the mount is usable, or with a message saying why it is not. In the background
 *    the work happens in a child: the engine's threads are started after the fork (threads do not survive one),
 *    and the parent waits on a pipe for the child's verdict.
 *  - Layering: this file opens the engine (it owns the kv_db and the lock), wraps it in a store (fs/store.h) and
 *    hands the store to the filesystem; the FUSE operations never see the engine.
 *  - Shutdown (unmount, SIGTERM, SIGINT, SIGHUP) always runs the same path: leave the FUSE loop, write every
 *    buffered byte, stop the control socket, close the engine. Nothing here calls exit() or abort().
 *  - Messages go to stderr until the daemon detaches, to syslog after (with -f: stderr throughout).
 *  - A failed mount leaves no DATADIR it made itself, unless something else went into it (remove_made_datadir); a
 *    DATADIR that was there before is never removed.
 */
#include "mount.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <semaphore.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <dirent.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "fs.h"
#include "fs_fuse.h"
#include <fuse_lowlevel.h>
#include <fuse_log.h>
#include "kv.h"
#include "mountinfo.h"
#include "store.h"

#if defined(__has_include)
#if __has_include("ctl.h")
#include "ctl.h"
#define KVFS_HAVE_CTL 1
/* Weak: the daemon links and runs without the control socket's code. */
#pragma weak ctl_server_start
#pragma weak ctl_server_stop
#pragma weak ctl_errmsg
#pragma weak kvfs_store_options
#pragma weak kvfs_lock_wait_ms
#pragma weak ctl_daemon_answers
#endif
#endif

typedef struct mount_opts {
    char *datadir, *mountpoint;
    int foreground, debug, help, read_only;
    int sync, no_default_permissions, no_writeback;
    char *store_kind;  /* "mem": in-memory store, for testing only */
    /* -o NAME=VALUE as given (NULL: not given), taken as text ("%u" would take -5 as 4294967291, "%o" 0648 as 064) and
     * checked by check_options into the fields below before anything is done */
    char *cache_size, *memtable_size, *compression, *blob_threshold, *reserve;
    char *uid_s, *gid_s, *spin_s, *file_mode_s, *dir_mode_s, *timeout_s;
    size_t cache_bytes, memtable_bytes, blob_bytes;
    bool compress, keep_reserve;
    unsigned uid, gid, spin_us, file_mode, dir_mode;
    double timeout;
    unsigned max_read; /* -o max_read=N, kept for FUSE too (0: not given) */
    /* kvfs mount made DATADIR (mkdir succeeded): a mount that fails takes it away again (remove_made_datadir) */
    bool made_datadir;
    dev_t data_dev;
    ino_t data_ino;
} mount_opts;

/* -o blob_threshold: the largest. A value below the threshold is written whole, with its key (up to 64 KiB), into
 * one write-ahead-log record, and the engine refuses a record over 1 GiB (WAL_MAX_RECORD): with a threshold near or
 * past that, writing such a value fails. */
#define BLOB_THRESHOLD_MAX ((size_t)512 << 20)

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546 /* statfs's f_type of a FUSE mount (linux/magic.h) */
#endif

/* -o spin: the longest poll, microseconds. Longer would only burn a CPU after the last request of a burst. */
#define SPIN_MAX_US 100000u

enum { KEY_FOREGROUND, KEY_DEBUG, KEY_HELP, KEY_RO, KEY_OURS, KEY_MAX_READ, KEY_CACHING };

#define OPT(t, f, v) {t, offsetof(mount_opts, f), v}
static const struct fuse_opt mount_spec[] = {
    OPT("store=%s", store_kind, 0),
    OPT("cache_size=%s", cache_size, 0),
    OPT("memtable_size=%s", memtable_size, 0),
    OPT("compression=%s", compression, 0),
    OPT("reserve=%s", reserve, 0),
    OPT("blob_threshold=%s", blob_threshold, 0),
    OPT("sync", sync, 1),
    OPT("no_default_permissions", no_default_permissions, 1),
    OPT("no_writeback_cache", no_writeback, 1),
    OPT("cache_timeout=%s", timeout_s, 0),
    OPT("spin=%s", spin_s, 0),
    OPT("default_file_mode=%s", file_mode_s, 0),
    OPT("default_dir_mode=%s", dir_mode_s, 0),
    OPT("default_uid=%s", uid_s, 0),
    OPT("default_gid=%s", gid_s, 0),
    FUSE_OPT_KEY("-f", KEY_FOREGROUND),
    FUSE_OPT_KEY("-d", KEY_DEBUG),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("ro", KEY_RO),
    FUSE_OPT_KEY("max_read=", KEY_MAX_READ),
    FUSE_OPT_KEY("fsname=", KEY_OURS),
    FUSE_OPT_KEY("subtype=", KEY_OURS),
    /* libfuse's own options for what the daemon's init sets (fs_fuse.c op_init), where a value given would be
     * overridden without a word */
    FUSE_OPT_KEY("entry_timeout=", KEY_CACHING),
    FUSE_OPT_KEY("attr_timeout=", KEY_CACHING),
    FUSE_OPT_KEY("ac_attr_timeout=", KEY_CACHING),
    FUSE_OPT_KEY("negative_timeout=", KEY_CACHING),
    FUSE_OPT_KEY("kernel_cache", KEY_CACHING),
    FUSE_OPT_KEY("auto_cache", KEY_CACHING),
    FUSE_OPT_KEY("noauto_cache", KEY_CACHING),
    FUSE_OPT_KEY("direct_io", KEY_CACHING),
    FUSE_OPT_KEY("hard_remove", KEY_CACHING),
    FUSE_OPT_KEY("use_ino", KEY_CACHING),
    FUSE_OPT_KEY("readdir_ino", KEY_CACHING),
    FUSE_OPT_END,
};

/* Set once when the daemon detaches; read by every thread that says something (the engine's included). */
static atomic_bool use_syslog;

static void say(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A failure of the store that a process sees only as EIO or ENOSPC: the engine's message (which file, which offset,
 * what is full), at most one per kind every 10 s (store_kv.c). */
static void log_store_failure(void *datadir, const char *message) {
    say(LOG_ERR, "%s: %s", (const char *)datadir, message);
}

/* The engine's word on its background work (kv_options.log): a flush, compaction or blob GC that starts to fail
 * (once per run of failures, with the file and offset) and that works again. Called from the engine's threads: say()
 * is thread-safe and quick (syslog, or stderr with -f). */
static void log_engine(void *datadir, int level, const char *msg) {
    say(level == KV_LOG_ERROR ? LOG_ERR : LOG_NOTICE, "%s: %s", (const char *)datadir, msg);
}

static void say(int prio, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (use_syslog) {
        vsyslog(prio, fmt, ap);
    } else {
        flockfile(stderr); /* one line, whole: the engine's threads say things too */
        fputs("kvfs: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        funlockfile(stderr);
    }
    va_end(ap);
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *out) {
    (void)out;
    mount_opts *o = data;
    switch (key) {
    case FUSE_OPT_KEY_NONOPT:
        if (!o->datadir) return (o->datadir = strdup(arg)) ? 0 : -1;
        if (!o->mountpoint) return (o->mountpoint = strdup(arg)) ? 0 : -1;
        say(LOG_ERR, "mount: unexpected argument '%s'", arg);
        return -1;
    case KEY_FOREGROUND:
        o->foreground = 1;
        return 0;
    case KEY_DEBUG:
        o->debug = o->foreground = 1;
        return 1; /* libfuse prints requests too */
    case KEY_HELP:
        o->help = 1;
        return 0;
    case KEY_RO:
        o->read_only = 1;
        return 1; /* the kernel must know as well: EROFS before a request is even sent */
    case KEY_MAX_READ: {
        /* libfuse refuses the mount's start (its INIT) unless the filesystem's init asks for the same size: the
         * daemon does (kvfs_fuse.max_read). What is not a number is left to FUSE to refuse. */
        const char *v = arg + strlen("max_read=");
        char *end;
        errno = 0;
        unsigned long n = strtoul(v, &end, 10);
        if (*v >= '0' && *v <= '9' && !*end && !errno && n <= UINT32_MAX) o->max_read = (unsigned)n;
        return 1;
    }
    case KEY_CACHING:
        say(LOG_ERR, "mount: -o %.*s is set by kvfs (the kernel's caches: -o cache_timeout=SECS and "
            "no_writeback_cache choose them; inode numbers and removal of open files are kvfs's own)",
            (int)strcspn(arg, "="), arg);
        return -1;
    case KEY_OURS:
        /* kvfs mount (store_is_mounted) and kvfs checkpoint find the store's mount by these: another fsname or type
         * would hide it from them (a dead mount not detached, a checkpoint into the mount not refused) */
        say(LOG_ERR, "mount: -o %.*s is set by kvfs: the mount's source is DATADIR and its type fuse.kvfs, by which "
            "kvfs finds the store's mount", (int)strcspn(arg, "="), arg);
        return -1;
    default:
        return 1;
    }
}

static void usage(void) {
    printf("usage: kvfs mount [-f] [-o OPTIONS] DATADIR MOUNTPOINT\n\n"
           "Mount the key-value store in DATADIR (created, mode 0700, if missing) at MOUNTPOINT.\n"
           "Returns once the mount is usable; the daemon then runs in the background (logging to syslog).\n"
           "Unmount with fusermount3 -u MOUNTPOINT, umount, or SIGTERM/SIGINT to the daemon.\n\n"
           "  -f                       stay in the foreground, log to stderr\n"
           "  -d, -o debug             foreground, and log every FUSE request\n"
           "  -o ro                    read-only mount (writes fail with EROFS)\n"
           "  -o allow_other           let other users use the mount (see /etc/fuse.conf)\n"
           "  -o no_default_permissions  do not let the kernel check permissions (on by default)\n"
           "  -o sync                  every write reaches the disk before it returns\n"
           "  -o cache_size=SIZE       engine block cache (default 32M, at most the machine's memory)\n"
           "  -o memtable_size=SIZE    engine write buffer (default 8M, 4K to the machine's memory)\n"
           "  -o compression=on|off    compress table blocks (default on)\n"
           "  -o reserve=on|off        hold the disk's last bytes for deletes after others fill it (default on)\n"
           "  -o blob_threshold=SIZE   file contents of at least SIZE go to blob files (default 4K, 1 to 512M)\n"
           "  -o default_file_mode=M   mode of keys written without attributes (default 0644; octal, 0 to 7777)\n"
           "  -o default_dir_mode=M    mode of directories without attributes (default 0755)\n"
           "  -o default_uid=N, default_gid=N  their owner (default: the mounting user; N < 4294967295)\n"
           "  -o cache_timeout=SECS    kernel attribute/entry cache time (default 86400)\n"
           "  -o no_writeback_cache    do not use the kernel's writeback cache\n"
           "  -o spin=USECS            after a request, poll for the next one this long before sleeping\n"
           "                           (default 50 with two or more CPUs, 0 with one; 0: always sleep;\n"
           "                           at most 100000)\n"
           "Other -o options are passed to FUSE (see mount.fuse3(8)), but for fsname and subtype: kvfs sets them.\n");
}

/* What libfuse says while fuse_options_ok checks the options: kept, and printed only when they are refused. */
static char check_log[4096];
static size_t check_log_n;

static void keep_check_log(enum fuse_log_level level, const char *fmt, va_list ap) {
    (void)level;
    size_t room = sizeof check_log - check_log_n;
    int n = room > 1 ? vsnprintf(check_log + check_log_n, room, fmt, ap) : 0;
    if (n > 0) check_log_n += (size_t)n < room ? (size_t)n : room - 1;
}

/* Whether FUSE takes the options left for it (argv[1..] of args: what kvfs did not parse): fuse_new parses them, and
 * a throwaway one, never mounted, tells before anything is made. run() builds the real one only after opening the
 * store, which a typo in -o would otherwise leave behind in a new DATADIR. What libfuse says meanwhile (with -d its
 * banner, which the real one prints again) is printed only when it refuses them: it says which. */
static bool fuse_options_ok(const struct fuse_args *args) {
    struct fuse_args a = FUSE_ARGS_INIT(0, NULL);
    bool ok = fuse_opt_add_arg(&a, "kvfs") == 0;
    for (int i = 1; ok && i < args->argc; i++) ok = fuse_opt_add_arg(&a, args->argv[i]) == 0;
    check_log_n = 0;
    check_log[0] = '\0';
    fuse_set_log_func(keep_check_log);
    struct fuse *f = ok ? fuse_new(&a, kvfs_fuse_operations(), sizeof(struct fuse_operations), NULL) : NULL;
    if (f) fuse_destroy(f);
    fuse_set_log_func(NULL); /* libfuse's own again: to stderr */
    fuse_opt_free_args(&a);
    if (!f) fputs(check_log, stderr);
    return f != NULL;
}

enum { SIZE_OK, SIZE_BAD, SIZE_HUGE };

/* "64M" -> bytes: SIZE_BAD on junk, SIZE_HUGE past SIZE_MAX bytes. Digits first: strtoull would skip blanks and take
 * a sign, "-1" as the largest number. */
static int parse_size(const char *s, size_t *out) {
    char *end;
    if (*s < '0' || *s > '9') return SIZE_BAD;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    bool huge = errno == ERANGE;
    unsigned long long mul = 1;
    switch (*end) {
    case 0: break;
    case 'k': case 'K': mul = 1ull << 10; end++; break;
    case 'm': case 'M': mul = 1ull << 20; end++; break;
    case 'g': case 'G': mul = 1ull << 30; end++; break;
    default: return SIZE_BAD;
    }
    if (mul > 1 && *end == 'i') end++; /* 64Mi, 64MiB */
    if (mul > 1 && (*end == 'B' || *end == 'b')) end++;
    if (*end) return SIZE_BAD;
    if (huge || v > SIZE_MAX / mul) return SIZE_HUGE;
    *out = (size_t)(v * mul);
    return SIZE_OK;
}

/* A size as the options write it, in the largest unit that divides it: 512M, 4K, 24105M, 1000. */
static const char *size_text(size_t v, char buf[32]) {
    static const struct { char unit; unsigned shift; } units[] = {{'G', 30}, {'M', 20}, {'K', 10}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (v && v % ((size_t)1 << units[i].shift) == 0) {
            snprintf(buf, 32, "%zu%c", v >> units[i].shift, units[i].unit);
            return buf;
        }
    }
    snprintf(buf, 32, "%zu", v);
    return buf;
}

/* This machine's memory (what /proc/meminfo calls MemTotal), rounded down to a MiB; SIZE_MAX when unknown. A memory
 * budget beyond it can never be met: the daemon would be swapping, or killed by the OOM killer, long before. */
static size_t machine_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0 || (unsigned long long)pages > SIZE_MAX / (unsigned long long)page) return SIZE_MAX;
    return ((size_t)pages * (size_t)page) & ~(((size_t)1 << 20) - 1);
}

/* The size option name=s (s NULL: not given): min .. max bytes (why says what max is). False, with a message naming
 * the option, for anything else. */
static bool check_size(const char *name, const char *s, size_t min, size_t max, const char *why, size_t *out) {
    if (!s) return true;
    size_t v = 0;
    char lim[32];
    int r = parse_size(s, &v);
    if (r == SIZE_BAD) {
        say(LOG_ERR,
            "mount: bad %s '%s': a size is a number of bytes with an optional K, M or G suffix (or Ki, KiB, KB...), "
            "no sign",
            name, s);
        return false;
    }
    if (r == SIZE_HUGE || v > max) {
        say(LOG_ERR, "mount: %s '%s' is too large: it must be at most %s (%s)", name, s, size_text(max, lim), why);
        return false;
    }
    if (v < min) {
        say(LOG_ERR, "mount: %s '%s' is too small: it must be at least %s", name, s, size_text(min, lim));
        return false;
    }
    *out = v;
    return true;
}

/* The number option name=s (s NULL: not given), a decimal number 0 .. max (why says what max is), nothing else: no
 * sign, no blank, no suffix. False, with a message naming the option, for anything else. */
static bool check_number(const char *name, const char *s, unsigned max, const char *why, unsigned *out) {
    if (!s) return true;
    char *end = (char *)s;
    errno = 0;
    unsigned long long v = *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
    if (end == s || *end) {
        say(LOG_ERR, "-o %s: not a number from 0 to %u", name, max);
        return false;
    }
    if (errno == ERANGE || v > max) {
        say(LOG_ERR, "mount: %s '%s' is too large: it must be at most %u (%s)", name, s, max, why);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

/* -o cache_timeout=s (s NULL: not given): seconds, in decimal with an optional fraction (0.5, .5, 86400), nothing
 * else: "%lf" read the number at the start and ignored the rest (5x), and took inf, nan, hex and exponents. */
/* -o name=on|off (s NULL: not given, *out unchanged); alias_on and alias_off (may be NULL) are other words for them. */
static bool check_on_off(const char *name, const char *s, const char *alias_on, const char *alias_off, bool *out) {
    if (!s) return true;
    if (!strcmp(s, "on") || (alias_on && !strcmp(s, alias_on))) *out = true;
    else if (!strcmp(s, "off") || !strcmp(s, "none") || (alias_off && !strcmp(s, alias_off))) *out = false;
    else {
        say(LOG_ERR, "mount: %s must be on or off, not '%s'", name, s);
        return false;
    }
    return true;
}

static bool check_seconds(const char *s, double *out) {
    if (!s) return true;
    size_t whole = strspn(s, "0123456789"), frac = s[whole] == '.' ? strspn(s + whole + 1, "0123456789") : 0;
    size_t len = whole + (s[whole] == '.' ? 1 + frac : 0);
    double v = whole + frac > 0 && !s[len] ? strtod(s, NULL) : -1; /* inf past DBL_MAX */
    if (!(v >= 0) || !isfinite(v)) {
        say(LOG_ERR, "-o cache_timeout: not a number of seconds at least 0 (digits, with an optional fraction: 0.5)");
        return false;
    }
    *out = v;
    return true;
}

/* The mode option name=s (s NULL: not given): permission bits in octal, 0 .. 7777, nothing else. A file type (the
 * 0170000 bits, as in 100644) is not the option's to give: each entry's own is added to the bits. */
static bool check_mode(const char *name, const char *s, unsigned *out) {
    if (!s) return true;
    char *end = (char *)s;
    errno = 0;
    unsigned long v = *s >= '0' && *s <= '7' ? strtoul(s, &end, 8) : 0;
    if (end == s || *end || errno == ERANGE || v > 07777) {
        say(LOG_ERR, "mount: %s '%s' is not a permission mode: it must be octal, 0 to 7777 (no file type bits)", name,
            s);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

/* Check and convert the values of the -o options (mount_opts): false, with a message naming the option, when one
 * makes no sense. Runs before DATADIR is created or anything mounted. */
static bool check_options(mount_opts *o) {
    if (o->store_kind && strcmp(o->store_kind, "mem") != 0) {
        say(LOG_ERR, "mount: unknown store '%s'", o->store_kind);
        return false;
    }
    size_t mem = machine_memory();
    const char *mem_why = mem == SIZE_MAX ? "the largest size" : "this machine's memory";
    /* 4K: the engine's minimum (it would only say "invalid options"). BLOB_THRESHOLD_MAX: see its definition. */
    if (!check_size("cache_size", o->cache_size, 0, mem, mem_why, &o->cache_bytes) ||
        !check_size("memtable_size", o->memtable_size, 4096, mem, mem_why, &o->memtable_bytes) ||
        !check_size("blob_threshold", o->blob_threshold, 1, BLOB_THRESHOLD_MAX,
                    "a value below it is written whole into one write-ahead-log record, which holds at most 1G",
                    &o->blob_bytes))
        return false;
    if (!check_on_off("compression", o->compression, "deflate", "zlib", &o->compress) ||
        !check_on_off("reserve", o->reserve, NULL, NULL, &o->keep_reserve))
        return false;
    if (!check_seconds(o->timeout_s, &o->timeout)) return false;
    if (!check_mode("default_file_mode", o->file_mode_s, &o->file_mode) ||
        !check_mode("default_dir_mode", o->dir_mode_s, &o->dir_mode))
        return false;
    /* (uid_t)-1 and (gid_t)-1 are no owner: chown(2) and the kernel take them for "no change" */
    _Static_assert((uid_t)-1 == UINT_MAX && (gid_t)-1 == UINT_MAX, "uid_t and gid_t are unsigned int");
    return check_number("default_uid", o->uid_s, UINT_MAX - 1, "4294967295 is (uid_t)-1: \"no change\", no user",
                        &o->uid) &&
           check_number("default_gid", o->gid_s, UINT_MAX - 1, "4294967295 is (gid_t)-1: \"no change\", no group",
                        &o->gid) &&
           check_number("spin", o->spin_s, SPIN_MAX_US, "microseconds: 0.1 s", &o->spin_us);
}

/* Escape ',' and '\' for a -o value. */
static char *opt_escape(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(2 * n + 1), *p = out;
    if (!out) return NULL;
    for (; *s; s++) {
        if (*s == ',' || *s == '\\') *p++ = '\\';
        *p++ = *s;
    }
    *p = 0;
    return out;
}

/* ---- the request loop ----------------------------------------------------------------------------------------
 *
 * libfuse's multi-threaded loop keeps several threads blocked in read() on /dev/fuse; the kernel hands each request
 * to the one that has waited longest, so every request costs a thread switch (measured here: twice the daemon CPU
 * per request, half the small-file creates per second of a single-threaded loop). This loop is a leader/followers
 * pool: one thread reads; when a request is quick (lookups, attributes, small writes: most of them) it handles
 * it itself and reads the next one, staying hot; before a request that may block (fsync, large reads and writes,
 * listings, renames, rmdir) it hands the reading over to a waiting thread (or starts one, up to LOOP_MAX_THREADS),
 * so slow requests run in parallel with everything else, as in libfuse's multi-threaded loop. The reader polls the
 * (non-blocking) device for spin_ns before it sleeps in poll(): see spin_default. */

#define LOOP_MAX_THREADS 16
#define LOOP_BIG_IO (64u * 1024u)

typedef struct req_loop {
    struct fuse_session *se;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool reading;        /* a thread has the reader's role */
    pthread_t reader;
    int idle;            /* threads waiting for the role */
    bool exiting;
    bool all_slow;       /* -o sync: every write may block on the disk */
    int error;
    pthread_t threads[LOOP_MAX_THREADS];
    int nthreads;
    uint64_t spin_ns;    /* how long the reader polls for the next request before sleeping (0: never) */
    bool bulk;           /* the last request read was a large read or write: the next read does not poll */
    sem_t done;
} req_loop;

/* Opcodes of linux/fuse.h (not included: its macros clash with libfuse's). */
enum { OP_RMDIR = 11, OP_RENAME = 12, OP_READ = 15, OP_WRITE = 16, OP_FSYNC = 20, OP_INIT = 26, OP_READDIR = 28,
       OP_FSYNCDIR = 30, OP_DESTROY = 38, OP_FALLOCATE = 43, OP_READDIRPLUS = 44, OP_RENAME2 = 45,
       OP_LSEEK = 46, OP_COPY_FILE_RANGE = 47, OP_SYNCFS = 50 };
enum { IN_HEADER_BYTES = 40, IO_SIZE_AT = 16 }; /* fuse_in_header; size in fuse_read_in / fuse_write_in */

static uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* A READ or WRITE of more than LOOP_BIG_IO bytes (or one whose size cannot be read). */
static bool big_io(const struct fuse_buf *b) {
    if ((b->flags & FUSE_BUF_IS_FD) || b->size < IN_HEADER_BYTES) return false;
    const uint8_t *p = b->mem;
    uint32_t op = get_u32(p + 4);
    if (op != OP_READ && op != OP_WRITE) return false;
    return b->size < IN_HEADER_BYTES + IO_SIZE_AT + 4 || get_u32(p + IN_HEADER_BYTES + IO_SIZE_AT) > LOOP_BIG_IO;
}

static bool may_block(const req_loop *l, const struct fuse_buf *b) {
    if (l->all_slow || (b->flags & FUSE_BUF_IS_FD) || b->size < IN_HEADER_BYTES) return true;
    const uint8_t *p = b->mem;
    switch (get_u32(p + 4)) {
    case OP_READ:
    case OP_WRITE:
        return big_io(b);
    case OP_RMDIR: case OP_RENAME: case OP_RENAME2: case OP_FSYNC: case OP_FSYNCDIR: case OP_INIT:
    case OP_READDIR: case OP_READDIRPLUS: case OP_DESTROY: case OP_FALLOCATE: case OP_COPY_FILE_RANGE: case OP_LSEEK:
    case OP_SYNCFS:
        return true;
    default:
        return false;
    }
}

static void *loop_thread(void *arg);

/* Another thread to take the reader's role (l->mu held). */
static void loop_handoff(req_loop *l) {
    if (l->idle > 0) {
        pthread_cond_signal(&l->cv);
    } else if (l->nthreads < LOOP_MAX_THREADS &&
               pthread_create(&l->threads[l->nthreads], NULL, loop_thread, l) == 0) {
        l->nthreads++;
    }
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The next request, into buf (the reader's role held, l->mu not held), polling for spin_ns first if spin_ns > 0. */
static int loop_receive(req_loop *l, struct fuse_buf *buf, uint64_t spin_ns) {
    int res;
    uint64_t deadline = spin_ns ? now_ns() + spin_ns : 0;
    for (;;) {
        res = fuse_session_receive_buf(l->se, buf);
        if (res == -EAGAIN) {
            if (deadline && now_ns() < deadline) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
                continue;
            }
            /* Only a thread blocked here may be cancelled (at shutdown by a signal): it holds nothing. */
            struct pollfd pfd = {.fd = fuse_session_fd(l->se), .events = POLLIN};
            pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
            int pr = poll(&pfd, 1, -1);
            pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
            if (pr < 0 && errno != EINTR) return -errno;
            if (fuse_session_exited(l->se)) return 0;
            continue;
        }
        if (res == -EINTR && !fuse_session_exited(l->se)) continue;
        return res;
    }
}

static void *loop_thread(void *arg) {
    req_loop *l = arg;
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    /* Termination signals go to the main thread (see run_loop). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (l->reading && !l->exiting) {
            l->idle++;
            pthread_cond_wait(&l->cv, &l->mu);
            l->idle--;
        }
        if (l->exiting) break;
        l->reading = true;
        l->reader = pthread_self();
        /* Polling wins a small request's round trip; in a stream of large reads or writes there is always a
         * request queued or on its way, and a polling reader would only take a CPU from the threads serving them
         * (a cold 1 GiB dd read: 8% slower with it). */
        uint64_t spin_ns = l->bulk ? 0 : l->spin_ns;
        pthread_mutex_unlock(&l->mu);
        int res = loop_receive(l, &buf, spin_ns);
        pthread_mutex_lock(&l->mu);
        l->reading = false;
        if (res <= 0 || fuse_session_exited(l->se)) {
            if (res < 0 && res != -EINTR && res != -ENODEV) l->error = res;
            l->exiting = true;
            pthread_cond_broadcast(&l->cv);
            sem_post(&l->done);
            break;
        }
        l->bulk = big_io(&buf);
        if (may_block(l, &buf)) loop_handoff(l);
        pthread_mutex_unlock(&l->mu);
        fuse_session_process_buf(l->se, &buf);
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    free(buf.mem);
    return NULL;
}

/* How long the reader polls: -o spin, else 50 µs when this process may run on two CPUs or more. Polling keeps
 * the reader on its CPU, so a request from a process running on another CPU needs no cross-CPU wake-up (costly:
 * in a virtual machine an inter-processor interrupt exits to the hypervisor); with one CPU it would only take
 * time from the process waiting for the answer. */
static unsigned spin_default(const mount_opts *o) {
    if (o->spin_s) return o->spin_us; /* at most SPIN_MAX_US (check_options) */
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof cpus, &cpus) != 0) return 0;
    return CPU_COUNT(&cpus) >= 2 ? 50 : 0;
}

/* Serve requests until unmounted or told to stop (a signal: libfuse's handlers mark the session exited). */
static int run_loop(struct fuse_session *se, bool all_slow, unsigned spin_us) {
    req_loop l;
    memset(&l, 0, sizeof l);
    l.se = se;
    l.all_slow = all_slow;
    l.spin_ns = (uint64_t)spin_us * 1000u;
    int fd = fuse_session_fd(se);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    pthread_mutex_init(&l.mu, NULL);
    pthread_cond_init(&l.cv, NULL);
    sem_init(&l.done, 0, 0);
    int rc = 0;
    pthread_mutex_lock(&l.mu);
    for (int i = 0; i < 2; i++)
        if (pthread_create(&l.threads[l.nthreads], NULL, loop_thread, &l) == 0) l.nthreads++;
    if (l.nthreads == 0) rc = -1; /* under mu: the threads started add more (loop_handoff) */
    pthread_mutex_unlock(&l.mu);
    while (rc == 0) {
        if (sem_wait(&l.done) == 0) break;
        if (errno == EINTR && fuse_session_exited(se)) break;
    }
    pthread_mutex_lock(&l.mu);
    l.exiting = true;
    pthread_cond_broadcast(&l.cv);
    /* A thread still blocked in read() (stopped by a signal, not by an unmount) is woken by cancelling it. */
    if (l.reading) pthread_cancel(l.reader);
    int n = l.nthreads;
    pthread_mutex_unlock(&l.mu);
    for (int i = 0; i < n; i++) pthread_join(l.threads[i], NULL);
    if (l.error) rc = -1;
    fuse_session_reset(se);
    sem_destroy(&l.done);
    pthread_cond_destroy(&l.cv);
    pthread_mutex_destroy(&l.mu);
    return rc;
}

typedef struct daemon_state {
    kv_db *db;
    store *st;
    kvfs_fs *fs;
    struct fuse *fuse;
    void *ctl;
    kvfs_fuse fctx;
} daemon_state;

/* Tell the waiting parent how it went (0 usable, 1 failed), once. */
static void report(int *fd, int status) {
    if (*fd < 0) return;
    char c = status ? '1' : '0';
    ssize_t w = write(*fd, &c, 1);
    (void)w;
    close(*fd);
    *fd = -1;
}

/* Whether a kvfs mount of datadir is in the mount table (/proc/self/mountinfo: the type is fuse.kvfs and the source
 * the fsname the daemon gave, datadir). With a mountpoint: whether it is the mount on top at mountpoint (the last
 * one listed there), so that nothing mounted over it is taken for it. */
static bool store_is_mounted(const char *datadir, const char *mountpoint) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f) return false;
    char line[8192];
    bool found = false;
    while ((mountpoint || !found) && fgets(line, sizeof line, f)) {
        mountinfo_line m;
        if (!mountinfo_parse(line, &m) || (mountpoint && !mountinfo_field_is(m.mountpoint, mountpoint))) continue;
        found = mountinfo_field_is(m.type, "fuse.kvfs") && mountinfo_field_is(m.source, datadir);
    }
    fclose(f);
    return found;
}

/* Once this process holds the store, a kvfs mount of it at mountpoint has no daemon (it would hold the store): one
 * that was killed (kill -9, a crash) left it, and every access to it fails with ENOTCONN. Detach it, as the user was
 * told to with `fusermount3 -uz`, so the new mount does not go on top of it (a second unmount would find it again).
 * Best effort: a failure leaves it, and the new mount covers it as before. */
static void detach_dead_mount(const char *datadir, const char *mountpoint) {
    if (!store_is_mounted(datadir, mountpoint)) return;
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 1);
            dup2(nul, 2);
        }
        execlp("fusermount3", "fusermount3", "-u", "-z", "--", mountpoint, (char *)NULL);
        _exit(127);
    }
    int st;
    if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        say(LOG_WARNING, "detached the dead mount of %s on %s (its daemon had been killed)", datadir, mountpoint);
}

/* The absolute path of a mount point that realpath cannot resolve because the mount there answers ENOTCONN (its
 * daemon is dead): its parent resolved, then its last component. NULL (errno ENOTCONN) when that fails too. */
static char *path_past_dead_mount(const char *mp) {
    char *copy = strdup(mp), *out = NULL;
    if (!copy) return NULL;
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    const char *base = slash ? slash + 1 : copy, *parent = !slash ? "." : slash == copy ? "/" : copy;
    if (slash && slash != copy) *slash = '\0';
    char *rp = *base && strcmp(base, ".") && strcmp(base, "..") ? realpath(parent, NULL) : NULL;
    if (rp && asprintf(&out, "%s/%s", strcmp(rp, "/") ? rp : "", base) < 0) out = NULL;
    free(rp);
    free(copy);
    if (!out) errno = ENOTCONN;
    return out;
}

/* Whether a daemon (kvfs mount or kvfs serve) answers on the store's control socket: it is serving, not closing (a
 * daemon stops its socket first when it shuts down). */
static bool daemon_answers(const char *datadir) {
#ifndef KVFS_HAVE_CTL
    (void)datadir;
    return false;
#else
    return ctl_daemon_answers ? ctl_daemon_answers(datadir) : false;
#endif
}

/* How long to wait for a store another process is releasing: KVFS_LOCK_WAIT seconds, as the tools (default 5;
 * kvfs_mount_main refused a bad value before anything was done). */
static int lock_wait_ms(void) {
#ifdef KVFS_HAVE_CTL
    int ms = kvfs_lock_wait_ms ? kvfs_lock_wait_ms() : -1;
    if (ms >= 0) return ms;
#endif
    return 5000;
}

/* Open the store; when another process holds it, wait for it to let go unless it is mounted or a daemon serves it.
 * A daemon keeps the store for a moment after its unmount (it writes buffered data and closes the engine), and
 * `fusermount3 -u M && kvfs mount D M` used to fail right there with "in use". */
static int open_store(const char *datadir, const kv_options *ko, kv_db **db) {
    int rc = kv_open(datadir, ko, db);
    kv_intent *intent = NULL; /* waiting to write, it goes before readers that come meanwhile (kv_intent_take) */
    for (int waited = 0, max = lock_wait_ms(); rc == KV_EBUSY && waited < max && !store_is_mounted(datadir, NULL) &&
                        !daemon_answers(datadir);
         waited += 50) {
        if (!ko->read_only && !intent) kv_intent_take(datadir, ko, &intent);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        rc = kv_open(datadir, ko, db);
    }
    kv_intent_release(intent);
    return rc;
}

/* ---- a DATADIR made for a mount that failed ------------------------------------------------------------------
 *
 * kvfs mount makes DATADIR when it is missing. A mount refused before the store is opened removes the empty
 * directory at once (kvfs_mount_main); one that fails after (FUSE refuses the mount: /dev/fuse unusable, the kernel
 * says no) also has the new store's files to take away. Only what this mount made goes, and only when nothing else
 * can have gone in: the directory must be the one it made (same device and inode), the store must never have
 * committed a batch (no command reached it through the control socket), every entry must be a name the store
 * itself makes (docs/format.md, "Files in a store directory") or the daemon's socket, and after the store is closed
 * this process must get its lock at once and find the entries exactly as they were before the close (a tool that
 * waited for the lock and wrote in between changes them). Otherwise DATADIR stays, and the message says why. */

#define MADE_MAX_ENTRIES 64

typedef struct made_entry {
    char name[32];
    ino_t ino;
    off_t size;
    struct timespec mtime;
    mode_t mode;
} made_entry;

typedef struct made_list {
    made_entry e[MADE_MAX_ENTRIES];
    size_t n;
    char why[160]; /* when it may not go: what is in it that the mount did not make */
} made_list;

/* "PREFIX" then decimal digits, nothing else. */
static bool digits_after(const char *name, const char *prefix) {
    size_t p = strlen(prefix);
    return strncmp(name, prefix, p) == 0 && name[p] && strspn(name + p, "0123456789") == strlen(name + p);
}

/* A name the store makes in its directory, or the daemon's socket (kind: whether it may be that name's type). */
static bool store_file(const char *name, mode_t mode) {
    if (strcmp(name, "kvfs.sock") == 0) return S_ISSOCK(mode);
    if (!S_ISREG(mode)) return false;
    if (!strcmp(name, "LOCK") || !strcmp(name, "CURRENT") || !strcmp(name, "CURRENT.tmp") ||
        !strcmp(name, "RESERVE") || digits_after(name, "MANIFEST-") || digits_after(name, "BATCHLOG-"))
        return true;
    size_t d = strspn(name, "0123456789");
    return d > 0 && (!strcmp(name + d, ".log") || !strcmp(name + d, ".sst") || !strcmp(name + d, ".blob"));
}

/* What DATADIR holds now, into l; false (l->why set) when it is not the directory the mount made or holds anything
 * but the store's own files. */
static bool made_list_read(const mount_opts *o, made_list *l) {
    memset(l, 0, sizeof *l);
    int fd = open(o->datadir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_dev != o->data_dev || st.st_ino != o->data_ino) {
        snprintf(l->why, sizeof l->why, "it is no longer the directory the mount made");
        if (fd >= 0) close(fd);
        return false;
    }
    DIR *dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        snprintf(l->why, sizeof l->why, "cannot list it: %s", strerror(errno));
        return false;
    }
    struct dirent *de;
    bool ok = true;
    while (ok && (de = readdir(dir)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            snprintf(l->why, sizeof l->why, "cannot read %.64s: %s", de->d_name, strerror(errno));
            ok = false;
        } else if (strlen(de->d_name) >= sizeof l->e[0].name || !store_file(de->d_name, st.st_mode)) {
            snprintf(l->why, sizeof l->why, "it holds %.64s, which the mount did not make", de->d_name);
            ok = false;
        } else if (l->n == MADE_MAX_ENTRIES) {
            snprintf(l->why, sizeof l->why, "it holds more files than a new store makes");
            ok = false;
        } else {
            made_entry *e = &l->e[l->n++];
            strcpy(e->name, de->d_name);
            e->ino = st.st_ino;
            e->size = st.st_size;
            e->mtime = st.st_mtim;
            e->mode = st.st_mode;
        }
    }
    closedir(dir);
    return ok;
}

/* Whether b holds the same entries as a, each unchanged. */
static bool made_list_same(const made_list *a, const made_list *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        const made_entry *x = &a->e[i], *y = NULL;
        for (size_t j = 0; j < b->n && !y; j++)
            if (!strcmp(b->e[j].name, x->name)) y = &b->e[j];
        if (!y || y->ino != x->ino || y->size != x->size || y->mode != x->mode || y->mtime.tv_sec != x->mtime.tv_sec ||
            y->mtime.tv_nsec != x->mtime.tv_nsec)
            return false;
    }
    return true;
}

/* Before the store of a failed mount is closed (db NULL: it was never opened): whether DATADIR, which the mount made,
 * may go, with what it holds in *l. */
static bool made_datadir_may_go(const mount_opts *o, kv_db *db, made_list *l) {
    if (!made_list_read(o, l)) return false;
    if (db && kv_current_sequence(db) != 0) {
        snprintf(l->why, sizeof l->why, "a command wrote to the store meanwhile");
        return false;
    }
    if (!db && l->n) {
        snprintf(l->why, sizeof l->why, "the store in it was not this mount's");
        return false;
    }
    return true;
}

/* After the store is closed: remove the entries of *before (as they were then) and DATADIR. Says what it did. */
static void remove_made_datadir(const mount_opts *o, const made_list *before) {
    made_list now;
    char why[200] = "";
    int lock = -1;
    if (before->n) {
        /* the store's lock, as a writer takes it (engine/env_posix.c): held by another process, the store is its */
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/LOCK", o->datadir);
        lock = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (lock < 0 || fcntl(lock, F_OFD_SETLK, &fl) != 0)
            snprintf(why, sizeof why, "another process has the store open");
    }
    if (!*why && !made_list_read(o, &now)) snprintf(why, sizeof why, "%s", now.why);
    if (!*why && !made_list_same(before, &now)) snprintf(why, sizeof why, "another process wrote to it meanwhile");
    for (size_t i = 0; !*why && i < now.n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", o->datadir, now.e[i].name);
        if (unlink(path) != 0 && errno != ENOENT)
            snprintf(why, sizeof why, "cannot remove %s: %s", now.e[i].name, strerror(errno));
    }
    struct stat st;
    if (!*why && (lstat(o->datadir, &st) != 0 || st.st_dev != o->data_dev || st.st_ino != o->data_ino))
        snprintf(why, sizeof why, "it is no longer the directory the mount made");
    if (!*why && rmdir(o->datadir) != 0) snprintf(why, sizeof why, "%s", strerror(errno));
    if (lock >= 0) close(lock);
    if (*why)
        say(LOG_ERR, "left %s, which this mount had made: %s", o->datadir, why);
    else
        say(LOG_ERR, "removed %s, which this mount had made, and the empty store in it", o->datadir);
}

static int run(mount_opts *o, struct fuse_args *fargs, int ready_fd) {
    daemon_state d;
    memset(&d, 0, sizeof d);
    int status = 1;
    bool served = false; /* the mount was made: from then on DATADIR is the store's, whatever happens */
    if (o->store_kind) { /* "mem" (check_options) */
        d.st = store_mem_new();
    } else {
        kv_options ko;
        kv_options_init(&ko);
#ifdef KVFS_HAVE_CTL
        if (kvfs_store_options) kvfs_store_options(&ko, o->datadir);
#endif
        ko.read_only = o->read_only;
        if (o->blob_threshold) ko.blob_threshold = o->blob_bytes;
        if (o->cache_size) ko.block_cache_bytes = o->cache_bytes;
        if (o->memtable_size) ko.memtable_bytes = o->memtable_bytes;
        if (o->compression) ko.compression = o->compress;
        if (o->reserve) ko.space_reserve = o->keep_reserve;
        ko.log = log_engine;
        ko.log_ctx = (void *)o->datadir;
        int rc = open_store(o->datadir, &ko, &d.db);
        if (rc == KV_EBUSY) {
            say(LOG_ERR, "%s is in use: the store is already mounted or open in another kvfs process", o->datadir);
            goto out;
        }
        if (rc) {
            say(LOG_ERR, "cannot open the store in %s: %s%s%s", o->datadir, kv_strerror(rc), *kv_errmsg() ? ": " : "",
                kv_errmsg());
            /* opening for writing writes a manifest, a log and the tables recovery makes; a read-only open writes
             * nothing, so the data stays reachable until space is freed */
            if (rc == KV_ENOSPC && !ko.read_only)
                say(LOG_ERR, "the disk holding %s is full: free some space, or mount with -o ro to read the store",
                    o->datadir);
            goto out;
        }
        detach_dead_mount(o->datadir, o->mountpoint);
        kv_stats ks;
        if (kv_get_stats(d.db, &ks) == KV_OK && ks.unsynced_batches_dropped)
            say(LOG_WARNING, "%s: recovered from a power loss: %llu batch(es) written but never synced were dropped "
                "(their large-value bytes had not reached the disk)", o->datadir,
                (unsigned long long)ks.unsynced_batches_dropped);
        if (kv_get_stats(d.db, &ks) == KV_OK && ks.unsynced_log_bytes_dropped)
            say(LOG_WARNING, "%s: recovered from a power loss: the last %llu bytes of the write-ahead log, written but "
                "never synced, were dropped (a page of them had not reached the disk)", o->datadir,
                (unsigned long long)ks.unsynced_log_bytes_dropped);
        d.st = store_kv_new(d.db, o->datadir);
        if (d.st) store_kv_set_error_log(d.st, log_store_failure, (void *)o->datadir);
    }
    if (!d.st) {
        say(LOG_ERR, "out of memory");
        goto out;
    }
    kvfs_config cfg;
    kvfs_config_init(&cfg);
    if (o->file_mode_s) cfg.file_mode = o->file_mode;
    if (o->dir_mode_s) cfg.dir_mode = o->dir_mode;
    if (o->uid_s) cfg.uid = o->uid;
    if (o->gid_s) cfg.gid = o->gid;
    cfg.sync_writes = o->sync;
    int rc = kvfs_fs_new(d.st, &cfg, &d.fs);
    if (rc) {
        say(LOG_ERR, "cannot start the filesystem: %s", strerror(-rc));
        goto out;
    }
#ifdef KVFS_HAVE_CTL
    if (d.db && ctl_server_start) {
        struct ctl_server *cs = NULL;
        rc = ctl_server_start(d.db, o->datadir, &cs);
        if (rc) {
            say(LOG_ERR, "cannot start the control socket in %s: %s%s%s", o->datadir, kv_strerror(rc),
                ctl_errmsg ? ": " : "", ctl_errmsg ? ctl_errmsg() : "");
            goto out;
        }
        d.ctl = cs;
    }
#endif
    d.fctx.fs = d.fs;
    d.fctx.timeout = o->timeout_s ? o->timeout : 86400.0; /* 0: the kernel caches nothing */
    d.fctx.writeback = !o->no_writeback;
    d.fctx.read_only = o->read_only;
    d.fctx.max_read = o->max_read;
    d.fuse = fuse_new(fargs, kvfs_fuse_operations(), sizeof(struct fuse_operations), &d.fctx);
    if (!d.fuse) {
        say(LOG_ERR, "mount: bad FUSE options (see kvfs mount --help)");
        goto out;
    }
    if (fuse_mount(d.fuse, o->mountpoint) != 0) {
        say(LOG_ERR, "cannot mount on %s (is it an existing directory, and is /dev/fuse usable?)", o->mountpoint);
        fuse_destroy(d.fuse);
        d.fuse = NULL;
        goto out;
    }
    struct fuse_session *se = fuse_get_session(d.fuse);
    if (kvfs_fuse_use_io(se) != 0) say(LOG_WARNING, "cannot hook the FUSE device I/O: suid bits are cleared by the kernel");
    if (fuse_set_signal_handlers(se) != 0) {
        say(LOG_ERR, "cannot install signal handlers");
        fuse_unmount(d.fuse);
        fuse_destroy(d.fuse);
        d.fuse = NULL;
        goto out;
    }
    /* Usable: requests wait in the kernel until the loop below answers them. Detach from the terminal now. */
    if (ready_fd >= 0) {
        report(&ready_fd, 0);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
            if (nul > 2) close(nul);
        }
        if (chdir("/") != 0) { /* nothing to do: stay where we are */
        }
        openlog("kvfs", LOG_PID, LOG_DAEMON);
        use_syslog = true;
    }
    say(LOG_INFO, "mounted %s on %s", o->datadir, o->mountpoint);
    served = true;
    rc = run_loop(se, o->sync, spin_default(o));
    kvfs_fuse_unmounting(); /* the control socket's threads notify the kernel no more: fuse_unmount closes the device */
    fuse_remove_signal_handlers(se);
    fuse_unmount(d.fuse);
    status = rc < 0 ? 1 : 0;
    say(LOG_INFO, "unmounting %s", o->mountpoint);
out:
#ifdef KVFS_HAVE_CTL
    /* First: a daemon that answers on its socket is serving (daemon_answers); an unmounted one is not. Commands sent
     * from now on wait for the store as for any process holding it. */
    if (d.ctl && ctl_server_stop) ctl_server_stop(d.ctl);
    d.ctl = NULL;
#endif
    if (d.fuse) fuse_destroy(d.fuse);
    if (d.fs) {
        rc = kvfs_fs_flush_all(d.fs);
        if (rc) {
            say(LOG_ERR, "writing buffered data failed: %s", strerror(-rc));
            status = 1;
        }
        kvfs_fs_free(d.fs);
    }
    store_destroy(d.st);
    /* a mount that failed, in a DATADIR it made: what is there before the store is closed (remove_made_datadir) */
    made_list made;
    memset(&made, 0, sizeof made);
    bool made_may_go = !served && o->made_datadir && !o->store_kind && made_datadir_may_go(o, d.db, &made);
    if (!served && o->made_datadir && !o->store_kind && !made_may_go)
        say(LOG_ERR, "left %s, which this mount had made: %s", o->datadir, made.why);
    if (d.db) {
        rc = kv_close(d.db);
        if (rc) {
            say(LOG_ERR, "closing the store failed: %s %s", kv_strerror(rc), kv_errmsg());
            status = 1;
        }
        kv_free(d.db);
    }
    if (made_may_go) remove_made_datadir(o, &made);
    /* The waiting parent learns of a failure only now, so that kvfs mount returns once DATADIR is gone. */
    report(&ready_fd, 1);
    if (use_syslog) closelog();
    return status;
}

int kvfs_mount_main(int argc, char **argv) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    mount_opts o;
    memset(&o, 0, sizeof o);
    int status = 1;
    char *real_data = NULL, *real_mnt = NULL, *esc = NULL, *extra = NULL;
    struct fuse_args fargs = FUSE_ARGS_INIT(0, NULL);
    if (fuse_opt_parse(&args, &o, mount_spec, opt_proc) != 0) goto out;
    if (o.help) {
        usage();
        status = 0;
        goto out;
    }
    if (!o.datadir || !o.mountpoint) {
        fprintf(stderr, "usage: kvfs mount [-f] [-o OPTIONS] DATADIR MOUNTPOINT (kvfs mount --help)\n");
        goto out;
    }
    if (!check_options(&o)) goto out;
#ifdef KVFS_HAVE_CTL
    if (kvfs_lock_wait_ms && kvfs_lock_wait_ms() < 0) {
        fprintf(stderr, "kvfs: " KVFS_LOCK_WAIT_BAD "\n", getenv("KVFS_LOCK_WAIT"));
        goto out;
    }
#endif
    if (!fuse_options_ok(&args)) {
        fprintf(stderr, "kvfs: mount: bad FUSE options (see kvfs mount --help)\n");
        goto out;
    }
    bool mem = o.store_kind && strcmp(o.store_kind, "mem") == 0;
    /* The mount point first: a mount refused for it must not leave a new, empty DATADIR behind. */
    real_mnt = realpath(o.mountpoint, NULL);
    /* a mount whose daemon was killed answers ENOTCONN: run() detaches it if it is this store's */
    bool dead_mount = !real_mnt && errno == ENOTCONN && (real_mnt = path_past_dead_mount(o.mountpoint)) != NULL;
    if (!real_mnt) {
        fprintf(stderr, "kvfs: %s: %s\n", o.mountpoint, strerror(errno));
        goto out;
    }
    struct stat mst;
    if (!dead_mount && stat(real_mnt, &mst) != 0 && errno == ENOTCONN) dead_mount = true;
    if (!dead_mount && (stat(real_mnt, &mst) != 0 || !S_ISDIR(mst.st_mode))) {
        fprintf(stderr, "kvfs: %s: %s\n", o.mountpoint, stat(real_mnt, &mst) != 0 ? strerror(errno) : "not a directory");
        goto out;
    }
    bool made_data = false;
    if (!mem) {
        struct stat dst;
        if (mkdir(o.datadir, 0700) == 0) {
            made_data = true;
            /* which directory it made: a failed mount removes that one only (remove_made_datadir) */
            if (lstat(o.datadir, &dst) == 0) {
                o.made_datadir = true;
                o.data_dev = dst.st_dev;
                o.data_ino = dst.st_ino;
            }
        } else if (errno != EEXIST) {
            fprintf(stderr, "kvfs: cannot create %s: %s\n", o.datadir, strerror(errno));
            goto out;
        }
        real_data = realpath(o.datadir, NULL);
        if (!real_data) {
            fprintf(stderr, "kvfs: %s: %s\n", o.datadir, strerror(errno));
            goto out;
        }
    }
    /* the daemon creates the store's files (tables, logs, blob files, the manifest) by path: under its own mount
     * they would be written through itself, and the first one deadlocks the mount */
    if (real_data) {
        size_t ml = strlen(real_mnt);
        if (strcmp(real_mnt, "/") == 0 ||
            (strncmp(real_data, real_mnt, ml) == 0 && (real_data[ml] == '\0' || real_data[ml] == '/'))) {
            fprintf(stderr, "kvfs: %s is %s %s: the mount would hide the store's own files; mount it elsewhere\n",
                    o.datadir, real_data[ml] == '\0' ? "the same directory as" : "inside", o.mountpoint);
            if (made_data) (void)rmdir(real_data);
            goto out;
        }
    }
    if (real_data) {
        free(o.datadir);
        o.datadir = real_data;
        real_data = NULL;
    }
    free(o.mountpoint);
    o.mountpoint = real_mnt;
    real_mnt = NULL;

    /* The FUSE arguments: what the user gave that is not ours, plus the name shown in mount tables. */
    esc = opt_escape(o.datadir);
    size_t n = (esc ? strlen(esc) : 0) + 64;
    extra = malloc(n);
    if (!esc || !extra) goto out;
    snprintf(extra, n, "-osubtype=kvfs,fsname=%s%s", esc, o.no_default_permissions ? "" : ",default_permissions");
    if (fuse_opt_add_arg(&fargs, argc > 0 ? argv[0] : "kvfs") != 0 || fuse_opt_add_arg(&fargs, extra) != 0)
        goto out;
    for (int i = 1; i < args.argc; i++)
        if (fuse_opt_add_arg(&fargs, args.argv[i]) != 0) goto out;

    if (o.foreground) {
        status = run(&o, &fargs, -1);
        goto out;
    }
    int pfd[2];
    if (pipe(pfd) != 0) {
        fprintf(stderr, "kvfs: pipe: %s\n", strerror(errno));
        goto out;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "kvfs: fork: %s\n", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        goto out;
    }
    if (pid == 0) {
        close(pfd[0]);
        setsid();
        int st = run(&o, &fargs, pfd[1]);
        fuse_opt_free_args(&fargs);
        fuse_opt_free_args(&args);
        _exit(st); /* the daemon child ends here: nothing of the caller's may run in it */
    }
    close(pfd[1]);
    char c = '1';
    ssize_t r;
    do r = read(pfd[0], &c, 1);
    while (r < 0 && errno == EINTR);
    close(pfd[0]);
    if (r == 1 && c == '0') {
        /* The daemon said so once the kernel had the mount; its start (FUSE's INIT, answered by the daemon's loop)
         * can still fail, and the mount then ends at once. A statfs waits for that start and is answered by the
         * daemon: only then is the mount usable, as kvfs mount promises. */
        struct statfs sf;
        errno = 0;
        if (statfs(o.mountpoint, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC) {
            status = 0;
        } else {
            fprintf(stderr, "kvfs: the mount on %s ended as it started%s%s (the daemon's log says why: syslog, or "
                    "run kvfs mount -f)\n", o.mountpoint, errno ? ": " : "", errno ? strerror(errno) : "");
            waitpid(pid, NULL, WNOHANG);
            status = 1;
        }
    } else {
        /* The child said why on stderr; reap it if it is gone. */
        waitpid(pid, NULL, WNOHANG);
        status = 1;
    }
out:
    free(real_data);
    free(real_mnt);
    free(esc);
    free(extra);
    free(o.datadir);
    free(o.mountpoint);
    free(o.store_kind);
    free(o.cache_size);
    free(o.memtable_size);
    free(o.compression);
    free(o.reserve);
    free(o.blob_threshold);
    free(o.uid_s);
    free(o.gid_s);
    free(o.spin_s);
    free(o.file_mode_s);
    free(o.dir_mode_s);
    free(o.timeout_s);
    fuse_opt_free_args(&fargs);
    fuse_opt_free_args(&args);
    return status;
}
