/* fsops — the workload driver of bench/fs_bench.sh: small-file operations, random 4 KiB I/O, and generators for
 * deterministic test data. One process does one workload and exits non-zero at the first error, so the script
 * times it from outside.
 *
 *   fsops create ROOT N NDIRS SIZE     mkdir ROOT/dNN, then N files of SIZE bytes (open, write, close), spread
 *                                      evenly over the NDIRS directories (file i goes to directory i % NDIRS)
 *   fsops stat   ROOT N NDIRS          lstat every file (same names, same order)
 *   fsops read   ROOT N NDIRS SIZE     open, read to the end, close every file; checks the size read
 *   fsops list   DIR...                readdir + lstat of every entry (what ls -l does, without its formatting)
 *   fsops unlink ROOT N NDIRS          unlink every file, then rmdir the directories
 *   fsops fill   FILE MIB              write MIB MiB of incompressible pseudo-random bytes (1 MiB writes)
 *   fsops rand   FILE read|write OPS BS SEED
 *                                      OPS preads or pwrites of BS bytes at random BS-aligned offsets inside the
 *                                      file's current size; writes end with one fsync (timed with them)
 *   fsops tree   DIR NFILES SEED       a source-like tree: nested directories, NFILES regular files with text
 *                                      contents (sizes mostly 1-20 KiB, some up to 2 MiB), a few executables and
 *                                      symlinks, fixed mtimes; the same tree for the same arguments
 *
 * Prints "ops=N bytes=B" on success (the script derives rates from its own wall clock). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fsops: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (errno)
        fprintf(stderr, ": %s", strerror(errno));
    fputc('\n', stderr);
    exit(1);
}

static uint64_t rng_state;
static uint64_t rnd(void) /* splitmix64: deterministic for a seed */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static uint64_t rnd_below(uint64_t n) { return n ? rnd() % n : 0; }

static long parse_long(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0)
        die("bad number '%s'", s);
    return v;
}

static void file_path(char *buf, size_t n, const char *root, long i, long ndirs)
{
    snprintf(buf, n, "%s/d%02ld/f%06ld", root, i % ndirs, i);
}

static void write_all(int fd, const void *buf, size_t len, const char *what)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("write %s", what);
        }
        p += w;
        len -= (size_t)w;
    }
}

static int cmd_create(const char *root, long n, long ndirs, long size)
{
    char path[4096];
    char *buf = malloc((size_t)size + 1);
    if (!buf)
        die("out of memory");
    for (long d = 0; d < ndirs; d++) {
        snprintf(path, sizeof path, "%s/d%02ld", root, d);
        if (mkdir(path, 0755) && errno != EEXIST)
            die("mkdir %s", path);
    }
    for (long i = 0; i < n; i++) {
        file_path(path, sizeof path, root, i, ndirs);
        /* Printable, different per file, compressible like text. */
        int len = snprintf(buf, (size_t)size + 1, "file %ld of %ld: ", i, n);
        for (long k = len < size ? len : size; k < size; k++)
            buf[k] = (char)('a' + (i + k) % 26);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            die("create %s", path);
        write_all(fd, buf, (size_t)size, path);
        if (close(fd))
            die("close %s", path);
    }
    printf("ops=%ld bytes=%ld\n", n, n * size);
    free(buf);
    return 0;
}

static int cmd_stat(const char *root, long n, long ndirs)
{
    char path[4096];
    struct stat st;
    for (long i = 0; i < n; i++) {
        file_path(path, sizeof path, root, i, ndirs);
        if (lstat(path, &st))
            die("lstat %s", path);
    }
    printf("ops=%ld bytes=0\n", n);
    return 0;
}

static int cmd_read(const char *root, long n, long ndirs, long size)
{
    char path[4096], buf[65536];
    long total = 0;
    for (long i = 0; i < n; i++) {
        file_path(path, sizeof path, root, i, ndirs);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("open %s", path);
        long got = 0;
        for (;;) {
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                die("read %s", path);
            }
            if (r == 0)
                break;
            got += r;
        }
        close(fd);
        if (got != size) {
            errno = 0;
            die("%s: read %ld bytes, expected %ld", path, got, size);
        }
        total += got;
    }
    printf("ops=%ld bytes=%ld\n", n, total);
    return 0;
}

static int cmd_list(int argc, char **argv)
{
    long entries = 0;
    struct stat st;
    for (int a = 0; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (!d)
            die("opendir %s", argv[a]);
        struct dirent *e;
        errno = 0;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW))
                die("lstat %s/%s", argv[a], e->d_name);
            entries++;
            errno = 0;
        }
        if (errno)
            die("readdir %s", argv[a]);
        closedir(d);
    }
    printf("ops=%ld bytes=0\n", entries);
    return 0;
}

static int cmd_unlink(const char *root, long n, long ndirs)
{
    char path[4096];
    for (long i = 0; i < n; i++) {
        file_path(path, sizeof path, root, i, ndirs);
        if (unlink(path))
            die("unlink %s", path);
    }
    for (long d = 0; d < ndirs; d++) {
        snprintf(path, sizeof path, "%s/d%02ld", root, d);
        if (rmdir(path))
            die("rmdir %s", path);
    }
    printf("ops=%ld bytes=0\n", n);
    return 0;
}

static void fill_random(uint64_t *buf, size_t words)
{
    for (size_t k = 0; k < words; k++)
        buf[k] = rnd();
}

static int cmd_fill(const char *file, long mib)
{
    size_t bs = 1 << 20;
    uint64_t *buf = malloc(bs);
    if (!buf)
        die("out of memory");
    rng_state = 42;
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("create %s", file);
    for (long m = 0; m < mib; m++) {
        fill_random(buf, bs / 8);
        write_all(fd, buf, bs, file);
    }
    if (close(fd))
        die("close %s", file);
    printf("ops=%ld bytes=%ld\n", mib, mib << 20);
    free(buf);
    return 0;
}

static int cmd_rand(const char *file, const char *mode, long ops, long bs, long seed)
{
    int wr = !strcmp(mode, "write");
    if (!wr && strcmp(mode, "read"))
        die("rand: mode must be read or write");
    int fd = open(file, (wr ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        die("open %s", file);
    struct stat st;
    if (fstat(fd, &st))
        die("fstat %s", file);
    long blocks = (long)(st.st_size / bs);
    if (blocks < 1) {
        errno = 0;
        die("%s is smaller than one block", file);
    }
    uint64_t *buf = aligned_alloc(4096, ((size_t)bs + 4095) / 4096 * 4096);
    if (!buf)
        die("out of memory");
    rng_state = (uint64_t)seed;
    for (long i = 0; i < ops; i++) {
        off_t off = (off_t)rnd_below((uint64_t)blocks) * bs;
        if (wr) {
            fill_random(buf, (size_t)bs / 8);
            if (pwrite(fd, buf, (size_t)bs, off) != bs)
                die("pwrite %s at %lld", file, (long long)off);
        } else if (pread(fd, buf, (size_t)bs, off) != bs) {
            die("pread %s at %lld", file, (long long)off);
        }
    }
    if (wr && fsync(fd))
        die("fsync %s", file);
    close(fd);
    printf("ops=%ld bytes=%ld\n", ops, ops * bs);
    free(buf);
    return 0;
}

/* ---- tree ---- */

static const char *const words[] = {
    "static", "int",    "return", "if",     "else",  "for",    "while", "struct", "const", "char",   "void",
    "size_t", "buf",    "len",    "err",    "ctx",   "node",   "key",   "value",  "next",  "prev",   "count",
    "init",   "free",   "alloc",  "lock",   "unlock", "read",  "write", "offset", "table", "index",  "entry",
    "=",      "==",     "+",      "->",     "(",     ")",      "{",     "}",      ";",     "0",      "1",
    "NULL",   "true",   "false",  "uint64_t", "//",  "TODO:",  "check", "the",    "of",    "in",     "and",
};
#define NWORDS (sizeof words / sizeof words[0])

static long tree_files_made, tree_bytes;

static void tree_file(const char *path, long size, int exec)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, exec ? 0755 : 0644);
    if (fd < 0)
        die("create %s", path);
    char line[256];
    char *out = malloc((size_t)size + 256);
    if (!out)
        die("out of memory");
    long have = 0;
    int indent = 0;
    while (have < size) {
        int n = 0;
        for (int k = 0; k < indent && n < 32; k++)
            line[n++] = ' ';
        int nw = 2 + (int)rnd_below(10);
        for (int w = 0; w < nw; w++) {
            const char *s = words[rnd_below(NWORDS)];
            int l = (int)strlen(s);
            if (n + l + 2 >= (int)sizeof line)
                break;
            memcpy(line + n, s, (size_t)l);
            n += l;
            line[n++] = ' ';
        }
        if ((rnd() & 7) == 0)
            n += snprintf(line + n, sizeof line - (size_t)n, "x%" PRIu64, rnd_below(100000));
        line[n++] = '\n';
        indent = (int)(rnd_below(5) * 4);
        memcpy(out + have, line, (size_t)n);
        have += n;
    }
    write_all(fd, out, (size_t)size, path);
    free(out);
    if (close(fd))
        die("close %s", path);
    struct timespec ts[2] = {{1700000000 + (time_t)tree_files_made * 61, 0},
                             {1700000000 + (time_t)tree_files_made * 61, 0}};
    if (utimensat(AT_FDCWD, path, ts, 0))
        die("utimensat %s", path);
    tree_files_made++;
    tree_bytes += size;
}

static long tree_size(void)
{
    uint64_t r = rnd_below(1000);
    if (r < 900) /* 90%: 1-20 KiB, skewed to the small end */
        return 1024 + (long)(rnd_below(19 * 1024) * rnd_below(1024) / 1024);
    if (r < 985) /* 8.5%: 20-100 KiB */
        return 20 * 1024 + (long)rnd_below(80 * 1024);
    return 100 * 1024 + (long)rnd_below(1948 * 1024); /* 1.5%: 100 KiB - 2 MiB */
}

static const char *const exts[] = {".c", ".h", ".c", ".h", ".py", ".md", ".txt", ".sh", ".json", ".rs"};

static void tree_dir(const char *dir, int depth, long budget)
{
    if (mkdir(dir, 0755) && errno != EEXIST)
        die("mkdir %s", dir);
    char path[4096];
    /* Files here, then subdirectories sharing the rest of the budget. */
    long here = depth == 0 ? 5 : budget <= 40 ? budget : 5 + (long)rnd_below(25);
    if (here > budget)
        here = budget;
    for (long i = 0; i < here; i++) {
        snprintf(path, sizeof path, "%s/%s_%ld%s", dir, words[rnd_below(32)], tree_files_made,
                 exts[rnd_below(sizeof exts / sizeof exts[0])]);
        tree_file(path, tree_size(), (rnd() & 31) == 0);
        if (tree_files_made % 200 == 0) { /* a symlink every 200 files */
            char target[256];
            snprintf(target, sizeof target, "%s", strrchr(path, '/') + 1);
            snprintf(path, sizeof path, "%s/link_%ld", dir, tree_files_made);
            if (symlink(target, path))
                die("symlink %s", path);
        }
    }
    budget -= here;
    long sub = 0;
    while (budget > 0) {
        long share = budget <= 40 ? budget : 20 + (long)rnd_below((uint64_t)(budget / 2));
        if (depth >= 5)
            share = budget; /* deepest level takes what is left */
        snprintf(path, sizeof path, "%s/%s%ld", dir, depth == 0 ? "mod" : "sub", sub++);
        tree_dir(path, depth + 1, share);
        budget -= share;
    }
    struct timespec ts[2] = {{1700000000, 0}, {1700000000, 0}};
    if (utimensat(AT_FDCWD, dir, ts, 0))
        die("utimensat %s", dir);
}

static int cmd_tree(const char *dir, long nfiles, long seed)
{
    rng_state = (uint64_t)seed;
    tree_dir(dir, 0, nfiles);
    printf("ops=%ld bytes=%ld\n", tree_files_made, tree_bytes);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        goto usage;
    const char *c = argv[1];
    if (!strcmp(c, "create") && argc == 6)
        return cmd_create(argv[2], parse_long(argv[3]), parse_long(argv[4]), parse_long(argv[5]));
    if (!strcmp(c, "stat") && argc == 5)
        return cmd_stat(argv[2], parse_long(argv[3]), parse_long(argv[4]));
    if (!strcmp(c, "read") && argc == 6)
        return cmd_read(argv[2], parse_long(argv[3]), parse_long(argv[4]), parse_long(argv[5]));
    if (!strcmp(c, "list") && argc >= 3)
        return cmd_list(argc - 2, argv + 2);
    if (!strcmp(c, "unlink") && argc == 5)
        return cmd_unlink(argv[2], parse_long(argv[3]), parse_long(argv[4]));
    if (!strcmp(c, "fill") && argc == 4)
        return cmd_fill(argv[2], parse_long(argv[3]));
    if (!strcmp(c, "rand") && argc == 7)
        return cmd_rand(argv[2], argv[3], parse_long(argv[4]), parse_long(argv[5]), parse_long(argv[6]));
    if (!strcmp(c, "tree") && argc == 5)
        return cmd_tree(argv[2], parse_long(argv[3]), parse_long(argv[4]));
usage:
    fprintf(stderr, "usage: fsops create|stat|read|list|unlink|fill|rand|tree ... (see the comment in fsops.c)\n");
    return 2;
}
