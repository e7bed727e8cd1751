/* test_env.c — the POSIX environment, the fault-injecting environment and its simulated power loss. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "env.h"
#include "t.h"

static char *path_in(const char *dir, const char *name) {
    static char bufs[8][512];
    static int next;
    char *p = bufs[next++ % 8];
    snprintf(p, sizeof bufs[0], "%s/%s", dir, name);
    return p;
}

/* Create path holding data; sync the file when asked. */
static int put_file(kv_env *env, const char *path, const char *data, bool sync) {
    kv_file *f;
    int rc = env->open_write(env, path, &f);
    if (rc != KV_OK) return rc;
    rc = env->append(env, f, data, strlen(data));
    if (rc == KV_OK && sync) rc = env->sync(env, f);
    int rc2 = env->close(env, f);
    return rc != KV_OK ? rc : rc2;
}

/* Read a whole (small) file into buf as a string; returns its size or a negative code. */
static long get_file(kv_env *env, const char *path, char *buf, size_t cap) {
    kv_file *f;
    int rc = env->open_read(env, path, &f);
    if (rc != KV_OK) return rc;
    size_t n = 0;
    rc = env->read_at(env, f, 0, buf, cap - 1, &n);
    env->close(env, f);
    if (rc != KV_OK) return rc;
    buf[n] = 0;
    return (long)n;
}

static uint64_t fsize(kv_env *env, const char *path) {
    uint64_t n = UINT64_MAX;
    if (env->file_size(env, path, &n) != KV_OK) return UINT64_MAX;
    return n;
}

/* ---- POSIX ----------------------------------------------------------------------------------------------------- */

TEST(test_posix_file_basics) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "a.dat");
    kv_file *f;
    CHECK_OK(env->open_write(env, p, &f));
    CHECK_OK(env->append(env, f, "hello ", 6));
    CHECK_OK(env->append(env, f, "", 0));
    CHECK_OK(env->append(env, f, "world", 5));
    CHECK_OK(env->sync(env, f));
    uint64_t n;
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 11);
    /* a writable handle can read back what it wrote */
    char buf[64];
    size_t got;
    CHECK_OK(env->read_at(env, f, 6, buf, 5, &got));
    CHECK_MEM(buf, got, "world", 5);
    CHECK_OK(env->close(env, f));

    CHECK_OK(env->open_read(env, p, &f));
    CHECK_OK(env->read_at(env, f, 0, buf, sizeof buf, &got)); /* short only at end of file */
    CHECK_MEM(buf, got, "hello world", 11);
    CHECK_OK(env->read_at(env, f, 11, buf, 4, &got));
    CHECK_EQ(got, 0);
    CHECK_OK(env->read_at(env, f, 1000, buf, 4, &got));
    CHECK_EQ(got, 0);
    CHECK_OK(env->close(env, f));

    /* open_append continues at the end; open_write truncates */
    CHECK_OK(env->open_append(env, p, &f));
    CHECK_OK(env->append(env, f, "!", 1));
    CHECK_OK(env->close(env, f));
    CHECK(get_file(env, p, buf, sizeof buf) == 12 && strcmp(buf, "hello world!") == 0);
    CHECK_OK(env->open_append(env, path_in(dir, "new.dat"), &f)); /* created if missing */
    CHECK_OK(env->close(env, f));
    CHECK_EQ(fsize(env, path_in(dir, "new.dat")), 0);
    CHECK_OK(put_file(env, p, "x", false));
    CHECK(get_file(env, p, buf, sizeof buf) == 1);

    /* a multi-megabyte append and read */
    size_t big = 3u << 20;
    uint8_t *src = malloc(big), *dst = malloc(big);
    CHECK(src && dst);
    uint64_t seed = t_seed();
    for (size_t i = 0; i < big; i++) src[i] = (uint8_t)t_rand(&seed);
    CHECK_OK(env->open_write(env, p, &f));
    CHECK_OK(env->append(env, f, src, big));
    CHECK_OK(env->close(env, f));
    CHECK_OK(env->open_read(env, p, &f));
    CHECK_OK(env->read_at(env, f, 0, dst, big, &got));
    CHECK_OK(env->close(env, f));
    CHECK_MEM(src, big, dst, got);
    free(src);
    free(dst);
}

/* A file written by offset into space allocated ahead: the size is the allocation's, the gap reads as zeros, and an
 * existing file is truncated by open_overwrite. */
TEST(test_posix_write_at_and_allocate) {
    kv_env *env = kv_env_posix();
    const char *p = path_in(t_tmpdir(), "o.dat");
    CHECK_OK(put_file(env, p, "old contents", false));
    kv_file *f;
    CHECK_OK(env->open_overwrite(env, p, &f));
    uint64_t n;
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 0);
    CHECK_OK(env->allocate(env, f, 8192));
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 8192);
    CHECK_OK(env->write_at(env, f, 0, "head", 4));
    CHECK_OK(env->write_at(env, f, 100, "mid", 3));
    CHECK_OK(env->write_at(env, f, 4, "er", 2)); /* right after the first write, not at the end of the file */
    CHECK_OK(env->allocate(env, f, 4096));       /* never shrinks */
    CHECK_OK(env->sync(env, f));
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 8192);
    char buf[128];
    size_t got;
    CHECK_OK(env->read_at(env, f, 0, buf, sizeof buf, &got));
    CHECK_EQ(got, sizeof buf);
    CHECK_MEM(buf, 6, "header", 6);
    for (int i = 6; i < 100; i++) CHECK_EQ(buf[i], 0);
    CHECK_MEM(buf + 100, 3, "mid", 3);
    CHECK_OK(env->write_at(env, f, 9000, "past", 4)); /* beyond the allocation: the file grows */
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 9004);
    CHECK_OK(env->close(env, f));
}

/* Writes into reserved space go through a shared mapping (env_posix.c): other readers see them at once, a write
 * across the mapping's 1 MiB windows lands whole, and a file cut by a truncation (the write-ahead log cuts a failed
 * write off) is written past its new end as any file is, not stored into a mapped page past its end (SIGBUS). */
TEST(test_posix_write_at_through_the_mapping) {
    kv_env *env = kv_env_posix();
    const char *p = path_in(t_tmpdir(), "m.dat");
    kv_file *f, *r;
    CHECK_OK(env->open_overwrite(env, p, &f));
    uint64_t reserved = (3u << 20) + 5000;
    CHECK_OK(env->allocate(env, f, reserved));
    static uint8_t data[3 << 20], back[3 << 20];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 7 + 1);
    /* pieces of 100 bytes to 64 KiB, one of them across the first window boundary */
    size_t off = 0, piece = 100;
    while (off < sizeof data) {
        size_t n = sizeof data - off < piece ? sizeof data - off : piece;
        CHECK_OK(env->write_at(env, f, off, data + off, n));
        off += n;
        piece = piece * 3 > (64u << 10) ? 100 : piece * 3;
    }
    CHECK_OK(env->open_read(env, p, &r));
    size_t got;
    CHECK_OK(env->read_at(env, r, 0, back, sizeof back, &got));
    CHECK_EQ(got, sizeof back);
    CHECK(memcmp(back, data, sizeof data) == 0);
    /* cut below what was reserved, then write past the cut: the file grows to hold it */
    CHECK_OK(env->truncate(env, p, 1000));
    CHECK_OK(env->write_at(env, f, 2000000, "after the cut", 13));
    uint64_t n;
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 2000013);
    CHECK_OK(env->read_at(env, r, 999, back, 2, &got));
    CHECK_EQ(got, 2);
    CHECK_EQ(back[0], data[999]);
    CHECK_EQ(back[1], 0);
    CHECK_OK(env->read_at(env, r, 2000000, back, 13, &got));
    CHECK_MEM(back, got, "after the cut", 13);
    /* reserved again: written through the mapping once more */
    CHECK_OK(env->allocate(env, f, reserved));
    CHECK_OK(env->write_at(env, f, 3000000, "again", 5));
    CHECK_OK(env->sync(env, f));
    CHECK_OK(env->read_at(env, r, 3000000, back, 5, &got));
    CHECK_MEM(back, got, "again", 5);
    CHECK_OK(env->close(env, r));
    CHECK_OK(env->close(env, f));
}

/* A file cut by someone else (another process, or a path outside the environment, which the truncation counter
 * does not see) still looks reserved to its handle: the next write lands in a mapped page past the end of the file,
 * which raises SIGBUS. That killed the process (the mount with it); now the write takes pwrite, as it would without
 * the mapping, and the handle stops mapping. */
TEST(test_posix_write_at_survives_a_sigbus_in_the_mapping) {
    kv_env *env = kv_env_posix();
    const char *p = path_in(t_tmpdir(), "bus.dat");
    kv_file *f;
    CHECK_OK(env->open_overwrite(env, p, &f));
    CHECK_OK(env->allocate(env, f, 64 << 10));
    CHECK_OK(env->write_at(env, f, 0, "first", 5));
    uint64_t mapped = kv_env_posix_mapped_bytes();
    CHECK_EQ(truncate(p, 0), 0); /* not through env: the handle does not know */
    sigset_t before, after;
    CHECK_EQ(pthread_sigmask(SIG_SETMASK, NULL, &before), 0);
    CHECK_OK(env->write_at(env, f, 8192, "second", 6));
    /* the jump out of the handler leaves the thread's signal mask as it was (under ThreadSanitizer, whose handler
     * runs the environment's with every signal blocked, it left them all blocked, SIGBUS too) */
    CHECK_EQ(pthread_sigmask(SIG_SETMASK, NULL, &after), 0);
    for (int sig = 1; sig < SIGRTMIN; sig++)
        CHECK_MSG(sigismember(&before, sig) == sigismember(&after, sig), "signal %d: blocked %d, then %d", sig,
                  sigismember(&before, sig), sigismember(&after, sig));
    CHECK_OK(env->write_at(env, f, 8198, "third", 5));
    CHECK_EQ(kv_env_posix_mapped_bytes(), mapped); /* neither went through the mapping */
    uint64_t n;
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 8203);
    char back[16];
    size_t got;
    CHECK_OK(env->read_at(env, f, 8192, back, 11, &got));
    CHECK_MEM(back, got, "secondthird", 11);
    CHECK_OK(env->read_at(env, f, 0, back, 5, &got));
    CHECK_EQ(got, 5);
    CHECK(memcmp(back, "\0\0\0\0\0", 5) == 0); /* the cut took "first" */
    CHECK_OK(env->close(env, f));
    /* a SIGBUS that is not the environment's (a store into a cut mapping of the program's own, a raise) still goes
     * where it went before: the default action kills the child (under AddressSanitizer, its handler reports the
     * fault and exits with 1; under ThreadSanitizer, with 66) */
    for (int how = 0; how < 2; how++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            if (how == 1) raise(SIGBUS);
            int fd = open(p, O_RDWR);
            char *m = fd < 0 ? NULL : mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (m && m != MAP_FAILED && ftruncate(fd, 0) == 0) m[0] = 1;
            _exit(0);
        }
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS;
        bool reported = WIFEXITED(status) && (WEXITSTATUS(status) == 1 || WEXITSTATUS(status) == 66);
        CHECK_MSG(killed || reported, "how %d: status %d", how, status);
    }
}

/* What a write by offset has put in the file at an instant in its middle, looked at by a signal handler of the
 * writing thread (so exactly the stores made so far): the bytes written are non-zero into zeros, so a prefix of
 * them, then zeros, is a write in progress as pwrite makes it; a zero followed by a written byte is not. */
static struct {
    int fd;
    volatile sig_atomic_t on;
    volatile uint64_t off;
    volatile size_t len;
    volatile sig_atomic_t caught, bad;
} mid;
static atomic_bool mid_stop;

static void mid_look(int sig) {
    (void)sig;
    if (!mid.on) return;
    int e = errno;
    uint8_t b[4096];
    size_t len = mid.len;
    if (len <= sizeof b && pread(mid.fd, b, len, (off_t)mid.off) == (ssize_t)len) {
        size_t k = 0, z;
        while (k < len && b[k]) k++;
        for (z = k; z < len && !b[z]; z++) {
        }
        if (z < len) mid.bad++;
        else if (k > 0 && k < len) mid.caught++;
    }
    errno = e;
}

static void *mid_poke(void *arg) {
    pthread_t writer = *(pthread_t *)arg;
    while (!atomic_load(&mid_stop)) {
        pthread_kill(writer, SIGUSR1);
        for (volatile int i = 0; i < 300; i++) {
        }
    }
    return NULL;
}

/* A write into reserved space lands in ascending order, as pwrite's does: a reader of the live log (kv_check) that
 * catches a write in progress, or a crash of the process in its middle, finds a prefix of it. (Through the mapping it
 * was a memcpy, which stored the first bytes of a copy of a few hundred bytes to 2 KiB last: a zero record header
 * followed by its payload, which a reader takes for damage.) */
TEST(test_posix_write_at_lands_in_order) {
    kv_env *env = kv_env_posix();
    const char *p = path_in(t_tmpdir(), "order.dat");
    kv_file *f;
    CHECK_OK(env->open_overwrite(env, p, &f));
    const uint64_t reserved = (uint64_t)24 << 20;
    CHECK_OK(env->allocate(env, f, reserved));
    mid.fd = open(p, O_RDONLY | O_CLOEXEC);
    CHECK(mid.fd >= 0);
    static uint8_t data[4096];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(1 + (i * 7) % 255);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mid_look;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old);
    mid.caught = mid.bad = 0;
    atomic_store(&mid_stop, false);
    pthread_t self = pthread_self(), poker;
    pthread_create(&poker, NULL, mid_poke, &self);
    uint64_t rs = t_seed() ^ 0x0dde4, off = 0;
    int rc = KV_OK;
    while (rc == KV_OK && !mid.bad && mid.caught < 2000) {
        size_t len = 300 + (size_t)(t_rand(&rs) % 1800);
        if (off + len > reserved) break;
        mid.on = 0;
        mid.off = off;
        mid.len = len;
        mid.on = 1;
        rc = env->write_at(env, f, off, data + off % 64, len);
        mid.on = 0;
        off += len;
    }
    atomic_store(&mid_stop, true);
    pthread_join(poker, NULL);
    sigaction(SIGUSR1, &old, NULL);
    close(mid.fd);
    printf("# %d writes caught in progress in %llu bytes\n", (int)mid.caught, (unsigned long long)off);
    CHECK_OK(rc);
    CHECK_MSG(!mid.bad, "a write in progress held a zero byte before a byte it had written (%d times)", (int)mid.bad);
    CHECK_OK(env->close(env, f));
}

/* Gathered appends: 300 pieces (more than one writev's worth, empty ones among them) land in order, through the
 * POSIX env's writev and through the per-piece fallback of an environment without appendv. */
TEST(test_posix_appendv) {
    kv_env *env = kv_env_posix();
    kv_env plain = *env;
    plain.appendv = NULL;
    kv_env *envs[2] = {env, &plain};
    static uint8_t data[300 * 700];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 131 + 7);
    for (int e = 0; e < 2; e++) {
        const char *p = path_in(t_tmpdir(), e ? "v-plain.dat" : "v-posix.dat");
        struct iovec iov[300];
        size_t off = 0;
        for (int i = 0; i < 300; i++) {
            size_t n = (size_t)(i * 37 % 700);
            iov[i] = (struct iovec){data + off, n};
            off += n;
        }
        kv_file *f;
        CHECK_OK(envs[e]->open_write(envs[e], p, &f));
        CHECK_OK(envs[e]->append(envs[e], f, "head", 4));
        CHECK_OK(kv_env_appendv(envs[e], f, iov, 300));
        CHECK_OK(kv_env_appendv(envs[e], f, iov, 1)); /* only an empty piece: nothing to write, no error */
        CHECK_OK(envs[e]->close(envs[e], f));
        CHECK_EQ(fsize(env, p), 4 + off);
        static uint8_t back[4 + sizeof data];
        size_t got = 0;
        CHECK_OK(env->open_read(env, p, &f));
        CHECK_OK(env->read_at(env, f, 0, back, 4 + off, &got));
        env->close(env, f);
        CHECK_EQ(got, 4 + off);
        CHECK_MEM(back + 4, off, data, off);
    }
}

TEST(test_posix_names) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    char buf[64];
    CHECK_OK(put_file(env, path_in(dir, "a"), "AAA", true));
    CHECK_OK(put_file(env, path_in(dir, "b"), "BB", true));
    CHECK_EQ(env->exists(env, path_in(dir, "a")), 1);
    CHECK_EQ(env->exists(env, path_in(dir, "zz")), 0);
    CHECK_EQ(fsize(env, path_in(dir, "a")), 3);

    CHECK_OK(env->rename(env, path_in(dir, "a"), path_in(dir, "b"))); /* replaces b */
    CHECK_EQ(env->exists(env, path_in(dir, "a")), 0);
    CHECK(get_file(env, path_in(dir, "b"), buf, sizeof buf) == 3 && strcmp(buf, "AAA") == 0);

    CHECK_OK(env->link(env, path_in(dir, "b"), path_in(dir, "c")));
    CHECK(get_file(env, path_in(dir, "c"), buf, sizeof buf) == 3 && strcmp(buf, "AAA") == 0);
    CHECK(env->link(env, path_in(dir, "b"), path_in(dir, "c")) == KV_EIO); /* exists */

    CHECK_OK(env->truncate(env, path_in(dir, "c"), 1));
    CHECK_EQ(fsize(env, path_in(dir, "b")), 1); /* same inode */
    CHECK_OK(env->truncate(env, path_in(dir, "c"), 10));
    CHECK_EQ(fsize(env, path_in(dir, "c")), 10);

    CHECK_OK(env->mkdir(env, path_in(dir, "sub"), 0755));
    CHECK_EQ(env->mkdir(env, path_in(dir, "sub"), 0755), KV_EEXIST); /* exclusive */
    CHECK(env->mkdir(env, path_in(dir, "b"), 0755) == KV_EIO); /* a file is in the way */
    CHECK_OK(put_file(env, path_in(dir, "sub/x"), "x", false));
    CHECK(env->rmdir(env, path_in(dir, "sub")) == KV_EIO); /* not empty */

    char **names;
    size_t n;
    CHECK_OK(env->list_dir(env, dir, &names, &n));
    CHECK_EQ(n, 3);
    int seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(names[i], "b")) seen |= 1;
        if (!strcmp(names[i], "c")) seen |= 2;
        if (!strcmp(names[i], "sub")) seen |= 4;
    }
    kv_env_free_names(names, n);
    CHECK_EQ(seen, 7);
    CHECK_OK(env->sync_dir(env, dir));

    CHECK_OK(env->remove(env, path_in(dir, "sub/x")));
    CHECK_OK(env->rmdir(env, path_in(dir, "sub")));
    CHECK_OK(env->remove(env, path_in(dir, "b")));
    CHECK_OK(env->remove(env, path_in(dir, "c")));
    CHECK_OK(env->list_dir(env, dir, &names, &n));
    CHECK_EQ(n, 0);
    kv_env_free_names(names, n);
}

TEST(test_posix_errors) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *missing = path_in(dir, "missing");
    kv_file *f = (kv_file *)1;
    CHECK_EQ(env->open_read(env, missing, &f), KV_ENOTFOUND);
    CHECK(f == NULL);
    CHECK(strstr(kv_errmsg(), missing) != NULL);
    uint64_t n;
    CHECK_EQ(env->file_size(env, missing, &n), KV_ENOTFOUND);
    CHECK(strstr(kv_errmsg(), missing) != NULL);
    CHECK_EQ(env->remove(env, missing), KV_ENOTFOUND);
    CHECK_EQ(env->rename(env, missing, path_in(dir, "x")), KV_ENOTFOUND);
    CHECK(strstr(kv_errmsg(), missing) != NULL);
    CHECK_EQ(env->truncate(env, missing, 0), KV_ENOTFOUND);
    CHECK_EQ(env->rmdir(env, missing), KV_ENOTFOUND);
    CHECK_EQ(env->sync_dir(env, missing), KV_ENOTFOUND);
    char **names;
    size_t cnt;
    CHECK_EQ(env->list_dir(env, missing, &names, &cnt), KV_ENOTFOUND);
    CHECK_EQ(env->open_write(env, path_in(dir, "no/such/dir/f"), &f), KV_ENOTFOUND);
    /* a directory cannot be opened for writing */
    CHECK_EQ(env->open_write(env, dir, &f), KV_EIO);
    CHECK(strstr(kv_errmsg(), dir) != NULL);
}

/* A file the process may not read is KV_EPERM, named in the message, not an I/O error. Root reads any file, so as
 * root the open runs in a child that has given up root. */
TEST(test_posix_permission_denied) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *secret = path_in(dir, "secret");
    CHECK_EQ(put_file(env, secret, "x", false), KV_OK);
    CHECK(chmod(secret, 0) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(90);
        kv_file *f = NULL;
        int rc = env->open_read(env, secret, &f);
        if (rc != KV_EPERM) _exit(91);
        if (!strstr(kv_errmsg(), secret) || !strstr(kv_errmsg(), "Permission denied")) _exit(92);
        if (strcmp(kv_strerror(rc), "permission denied") != 0) _exit(93);
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
}

TEST(test_posix_lock) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "LOCK");
    kv_file *l1, *l2;
    CHECK_OK(env->lock(env, p, &l1));
    CHECK_EQ(env->exists(env, p), 1);
    /* the same process locking again must conflict too */
    CHECK_EQ(env->lock(env, p, &l2), KV_EBUSY);
    CHECK(strstr(kv_errmsg(), p) != NULL);

    /* and so must another process */
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        kv_file *l;
        int rc = env->lock(env, p, &l);
        _exit(rc == KV_EBUSY ? 0 : 1);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    CHECK_OK(env->unlock(env, l1));
    CHECK_OK(env->lock(env, p, &l2));
    CHECK_OK(env->unlock(env, l2));
    CHECK_EQ(env->lock(env, path_in(dir, "no/dir/LOCK"), &l2), KV_ENOTFOUND);
}

/* A writer's intent (byte 1 of LOCK): shared locks are refused while it is held, an exclusive one is not; one holder
 * at a time, in this process or another; closing it (or the holder's death) lets readers in again. */
TEST(test_posix_lock_intent) {
    kv_env *env = kv_env_posix();
    CHECK(env->lock_intent != NULL);
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "LOCK");
    kv_file *r1, *r2, *in, *in2, *w;
    CHECK_OK(env->lock_shared(env, p, &r1));
    CHECK_OK(env->lock_intent(env, p, &in)); /* beside a reader: it waits for it */
    CHECK_EQ(env->lock_shared(env, p, &r2), KV_EBUSY);
    CHECK(strstr(kv_errmsg(), "a writer waits for it") != NULL);
    CHECK_EQ(env->lock_intent(env, p, &in2), KV_EBUSY);
    CHECK_EQ(env->lock(env, p, &w), KV_EBUSY); /* r1 still reads */
    CHECK_OK(env->unlock(env, r1));
    CHECK_OK(env->lock(env, p, &w)); /* the intent does not keep its own writer out */
    CHECK_EQ(env->lock_shared(env, p, &r2), KV_EBUSY);
    CHECK_OK(env->unlock(env, in));
    CHECK_EQ(env->lock_shared(env, p, &r2), KV_EBUSY); /* the writer has the store */
    CHECK_OK(env->unlock(env, w));
    CHECK_OK(env->lock_shared(env, p, &r2));
    CHECK_OK(env->unlock(env, r2));

    /* another process's intent, and its death */
    int go[2];
    CHECK(pipe(go) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        kv_file *l;
        close(go[0]);
        if (env->lock_intent(env, p, &l) != KV_OK) _exit(1);
        if (write(go[1], "x", 1) != 1) _exit(1);
        pause(); /* until killed: never released by unlock */
        _exit(0);
    }
    close(go[1]);
    char b;
    CHECK(read(go[0], &b, 1) == 1);
    close(go[0]);
    CHECK_EQ(env->lock_shared(env, p, &r2), KV_EBUSY);
    CHECK_EQ(env->lock_intent(env, p, &in2), KV_EBUSY);
    kill(pid, SIGKILL);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK_OK(env->lock_shared(env, p, &r2));
    CHECK_OK(env->unlock(env, r2));
    CHECK_OK(env->lock_intent(env, p, &in2));
    CHECK_OK(env->unlock(env, in2));
}

/* Versions before the intent locked the whole of LOCK (start 0, length 0): such a holder still excludes a writer and,
 * exclusive, a reader, and its whole-file lock overlaps the intent byte, so an intent is refused beside it (the
 * writer then waits as before) and an old reader is refused beside a held intent. */
TEST(test_posix_lock_against_whole_file_locks) {
    kv_env *env = kv_env_posix();
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "LOCK");
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0); /* an old reader */
    kv_file *l, *in;
    CHECK_EQ(env->lock(env, p, &l), KV_EBUSY);
    CHECK_OK(env->lock_shared(env, p, &l));
    CHECK_OK(env->unlock(env, l));
    CHECK_EQ(env->lock_intent(env, p, &in), KV_EBUSY);
    fl.l_type = F_UNLCK;
    CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0);
    CHECK_OK(env->lock_intent(env, p, &in));
    fl.l_type = F_RDLCK;
    CHECK(fcntl(fd, F_OFD_SETLK, &fl) != 0 && (errno == EAGAIN || errno == EACCES)); /* an old reader waits too */
    CHECK_OK(env->unlock(env, in));
    fl.l_type = F_WRLCK;
    CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0); /* an old writer */
    CHECK_EQ(env->lock_shared(env, p, &l), KV_EBUSY);
    CHECK_EQ(env->lock(env, p, &l), KV_EBUSY);
    close(fd);
    CHECK_OK(env->lock(env, p, &l));
    CHECK_OK(env->unlock(env, l));
}

/* ---- Faults ---------------------------------------------------------------------------------------------------- */

TEST(test_fault_passthrough) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    CHECK(env);
    const char *dir = t_tmpdir();
    char buf[64];
    CHECK_OK(put_file(env, path_in(dir, "a"), "data", true));
    CHECK(get_file(env, path_in(dir, "a"), buf, sizeof buf) == 4 && !strcmp(buf, "data"));
    CHECK_OK(env->rename(env, path_in(dir, "a"), path_in(dir, "b")));
    CHECK_OK(env->link(env, path_in(dir, "b"), path_in(dir, "c")));
    CHECK_OK(env->truncate(env, path_in(dir, "c"), 2));
    CHECK_EQ(fsize(env, path_in(dir, "b")), 2);
    CHECK_OK(env->mkdir(env, path_in(dir, "d"), 0700));
    CHECK_OK(env->sync_dir(env, dir));
    char **names;
    size_t n;
    CHECK_OK(env->list_dir(env, dir, &names, &n));
    kv_env_free_names(names, n);
    CHECK_EQ(n, 3);
    CHECK_OK(env->remove(env, path_in(dir, "b")));
    CHECK_OK(env->remove(env, path_in(dir, "c")));
    CHECK_OK(env->rmdir(env, path_in(dir, "d")));
    CHECK_EQ(env->exists(env, path_in(dir, "b")), 0);
    kv_file *l, *l2;
    CHECK_OK(env->lock(env, path_in(dir, "LOCK"), &l));
    CHECK_EQ(env->lock(env, path_in(dir, "LOCK"), &l2), KV_EBUSY);
    CHECK_OK(env->unlock(env, l));
    CHECK_OK(env->lock_intent(env, path_in(dir, "LOCK"), &l));
    CHECK_EQ(env->lock_shared(env, path_in(dir, "LOCK"), &l2), KV_EBUSY);
    CHECK_OK(env->unlock(env, l));
    CHECK_EQ(kv_fault_env_failures(env), 0);
    /* the fault API leaves other environments alone */
    kv_fault_env_arm(kv_env_posix(), KV_FAULT_WRITE_EIO, 0, NULL);
    CHECK_EQ(kv_fault_env_apply_crash(kv_env_posix()), KV_EINVAL);
    env->destroy(env);
}

TEST(test_fault_write_eio) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *p = path_in(t_tmpdir(), "w");
    kv_file *f;
    CHECK_OK(env->open_write(env, p, &f));
    kv_fault_env_arm(env, KV_FAULT_WRITE_EIO, 2, NULL);
    CHECK_OK(env->append(env, f, "ab", 2));
    CHECK_OK(env->append(env, f, "cd", 2));
    CHECK_EQ(env->append(env, f, "ef", 2), KV_EIO);
    CHECK(strstr(kv_errmsg(), p) != NULL);
    CHECK_EQ(env->append(env, f, "gh", 2), KV_EIO); /* stays failing */
    CHECK_EQ(kv_fault_env_failures(env), 2);
    uint64_t n;
    CHECK_OK(env->size(env, f, &n));
    CHECK_EQ(n, 4); /* nothing of the failed appends was written */
    CHECK_OK(env->sync(env, f)); /* other kinds of operation are unaffected */
    kv_fault_env_clear(env);
    CHECK_OK(env->append(env, f, "ij", 2));
    CHECK_OK(env->close(env, f));
    char buf[16];
    CHECK(get_file(env, p, buf, sizeof buf) == 6 && !strcmp(buf, "abcdij"));
    env->destroy(env);
}

TEST(test_fault_write_short) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *p = path_in(t_tmpdir(), "s");
    kv_file *f;
    CHECK_OK(env->open_write(env, p, &f));
    CHECK_OK(env->append(env, f, "0123", 4));
    kv_fault_env_arm(env, KV_FAULT_WRITE_SHORT, 0, NULL);
    CHECK_EQ(env->append(env, f, "abcdefghij", 10), KV_EIO);
    CHECK_EQ(kv_fault_env_failures(env), 1);
    CHECK_OK(env->close(env, f));
    char buf[32];
    CHECK(get_file(env, p, buf, sizeof buf) == 9 && !strcmp(buf, "0123abcde"));
    env->destroy(env);
}

TEST(test_fault_enospc) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    CHECK_OK(put_file(env, path_in(dir, "old"), "x", true));
    kv_fault_env_arm(env, KV_FAULT_ENOSPC, 0, NULL);
    kv_file *f;
    CHECK_EQ(env->open_write(env, path_in(dir, "new"), &f), KV_ENOSPC);
    CHECK_EQ(env->exists(env, path_in(dir, "new")), 0);
    CHECK_EQ(env->open_append(env, path_in(dir, "new2"), &f), KV_ENOSPC);
    CHECK_EQ(env->open_write(env, path_in(dir, "old"), &f), KV_ENOSPC); /* would truncate: a creation */
    /* appending to an existing file opens fine, but the appends fail */
    CHECK_OK(env->open_append(env, path_in(dir, "old"), &f));
    CHECK_EQ(env->append(env, f, "y", 1), KV_ENOSPC);
    CHECK(strstr(kv_errmsg(), "old") != NULL);
    CHECK_OK(env->sync(env, f));
    CHECK_EQ(kv_fault_env_failures(env), 4);
    kv_fault_env_clear(env); /* space freed */
    CHECK_OK(env->append(env, f, "y", 1));
    CHECK_OK(env->close(env, f));
    CHECK_EQ(fsize(env, path_in(dir, "old")), 2);
    CHECK_OK(put_file(env, path_in(dir, "new"), "z", false));
    env->destroy(env);
}

/* KV_FAULT_DISK_FULL: a disk with no byte free but what removals and truncations give back. */
TEST(test_fault_disk_full) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    CHECK_OK(put_file(env, path_in(dir, "big"), "0123456789", true));
    kv_file *f;
    CHECK_OK(env->open_overwrite(env, path_in(dir, "log"), &f));
    CHECK_OK(env->allocate(env, f, 8));
    kv_fault_env_arm(env, KV_FAULT_DISK_FULL, 0, NULL);
    uint64_t avail = 1, total = 0;
    CHECK_OK(env->disk_space(env, dir, &avail, &total));
    CHECK_EQ(avail, 0);
    kv_file *g;
    CHECK_EQ(env->open_write(env, path_in(dir, "new"), &g), KV_ENOSPC);
    CHECK_OK(env->write_at(env, f, 0, "abcdefgh", 8)); /* into the space it has */
    CHECK_EQ(env->write_at(env, f, 8, "i", 1), KV_ENOSPC);
    CHECK_EQ(env->allocate(env, f, 16), KV_ENOSPC);
    CHECK_EQ(kv_fault_env_failures(env), 3); /* each failure counted once */
    CHECK_OK(env->remove(env, path_in(dir, "big"))); /* 10 bytes back */
    CHECK_OK(env->disk_space(env, dir, &avail, &total));
    CHECK_EQ(avail, 10);
    CHECK_OK(env->allocate(env, f, 16));
    CHECK_OK(env->disk_space(env, dir, &avail, &total));
    CHECK_EQ(avail, 2);
    CHECK_EQ(env->write_at(env, f, 16, "xyz", 3), KV_ENOSPC);
    CHECK_OK(env->write_at(env, f, 16, "xy", 2));
    CHECK_OK(env->close(env, f));
    env->destroy(env);
}

TEST(test_fault_sync_and_read_eio) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "f");
    kv_file *f;
    CHECK_OK(env->open_write(env, p, &f));
    CHECK_OK(env->append(env, f, "abc", 3));
    kv_fault_env_arm(env, KV_FAULT_SYNC_EIO, 1, NULL);
    CHECK_OK(env->sync(env, f));
    CHECK_EQ(env->sync(env, f), KV_EIO);
    CHECK_EQ(env->sync_dir(env, dir), KV_EIO);
    CHECK(strstr(kv_errmsg(), dir) != NULL);
    CHECK_OK(env->append(env, f, "d", 1));
    CHECK_EQ(kv_fault_env_failures(env), 2);

    kv_fault_env_arm(env, KV_FAULT_READ_EIO, 1, NULL);
    char buf[8];
    size_t n;
    CHECK_OK(env->read_at(env, f, 0, buf, 4, &n));
    CHECK_MEM(buf, n, "abcd", 4);
    CHECK_EQ(env->read_at(env, f, 0, buf, 4, &n), KV_EIO);
    CHECK(strstr(kv_errmsg(), p) != NULL);
    CHECK_OK(env->append(env, f, "e", 1)); /* writes unaffected */
    CHECK_EQ(kv_fault_env_failures(env), 3);
    kv_fault_env_clear(env);
    CHECK_OK(env->read_at(env, f, 0, buf, 8, &n));
    CHECK_MEM(buf, n, "abcde", 5);
    CHECK_OK(env->sync(env, f));
    CHECK_OK(env->close(env, f));
    env->destroy(env);
}

TEST(test_fault_path_filter) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    kv_file *a, *b;
    CHECK_OK(env->open_write(env, path_in(dir, "000001.log"), &a));
    CHECK_OK(env->open_write(env, path_in(dir, "000002.sst"), &b));
    kv_fault_env_arm(env, KV_FAULT_WRITE_EIO, 1, ".sst");
    /* appends to the other file neither fail nor count toward `after` */
    for (int i = 0; i < 5; i++) CHECK_OK(env->append(env, a, "x", 1));
    CHECK_OK(env->append(env, b, "x", 1));
    CHECK_OK(env->append(env, a, "x", 1));
    CHECK_EQ(env->append(env, b, "x", 1), KV_EIO);
    CHECK_OK(env->append(env, a, "x", 1));
    CHECK_EQ(kv_fault_env_failures(env), 1);
    CHECK_OK(env->close(env, a));
    CHECK_OK(env->close(env, b));
    env->destroy(env);
}

/* ---- Power loss ------------------------------------------------------------------------------------------------ */

TEST(test_crash_drops_unsynced_data_and_creations) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    kv_file *a, *b;
    /* a: 100 bytes synced, then 50 more not synced */
    CHECK_OK(env->open_write(env, path_in(dir, "a"), &a));
    char block[100];
    memset(block, 'a', sizeof block);
    CHECK_OK(env->append(env, a, block, 100));
    CHECK_OK(env->sync(env, a));
    CHECK_OK(env->append(env, a, block, 50));
    /* b: created and its directory synced, but its data never synced */
    CHECK_OK(env->open_write(env, path_in(dir, "b"), &b));
    CHECK_OK(env->append(env, b, block, 30));
    CHECK_OK(env->sync_dir(env, dir));
    /* c: data synced but its creation not made durable (no sync_dir after it) */
    CHECK_OK(put_file(env, path_in(dir, "c"), "ccc", true));
    /* d: pre-existing file (written outside the fault env) opened for append: its old content counts as durable */
    CHECK_OK(put_file(kv_env_posix(), path_in(dir, "d"), "dddd", true));
    kv_file *d;
    CHECK_OK(env->open_append(env, path_in(dir, "d"), &d));
    CHECK_OK(env->append(env, d, "D", 1));

    kv_fault_env_crash(env);
    /* after the crash nothing reaches the disk, yet everything "succeeds" */
    CHECK_OK(env->append(env, a, block, 10));
    CHECK_OK(env->sync(env, a));
    kv_file *e;
    CHECK_OK(env->open_write(env, path_in(dir, "e"), &e));
    CHECK_OK(env->append(env, e, "e", 1));
    uint64_t n;
    CHECK_OK(env->size(env, e, &n));
    CHECK_EQ(n, 1);
    CHECK_OK(env->close(env, e));
    CHECK_EQ(env->exists(env, path_in(dir, "e")), 0);
    CHECK_OK(env->remove(env, path_in(dir, "b")));
    CHECK_EQ(env->exists(env, path_in(dir, "b")), 1);
    CHECK_OK(env->rename(env, path_in(dir, "a"), path_in(dir, "z")));
    CHECK_EQ(env->exists(env, path_in(dir, "a")), 1);
    CHECK_OK(env->truncate(env, path_in(dir, "a"), 0));
    CHECK_OK(env->sync_dir(env, dir));
    CHECK_EQ(fsize(env, path_in(dir, "a")), 150); /* the unsynced bytes are still there until apply */
    CHECK_OK(env->close(env, a));
    CHECK_OK(env->close(env, b));
    CHECK_OK(env->close(env, d));

    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK_EQ(fsize(env, path_in(dir, "a")), 100);
    CHECK_EQ(fsize(env, path_in(dir, "b")), 0);
    CHECK_EQ(env->exists(env, path_in(dir, "c")), 0);
    CHECK_EQ(fsize(env, path_in(dir, "d")), 4);
    CHECK_EQ(env->exists(env, path_in(dir, "e")), 0);

    /* the environment works normally again, and a second crash rewinds from the new state */
    CHECK_OK(env->open_append(env, path_in(dir, "a"), &a));
    CHECK_OK(env->append(env, a, block, 7));
    CHECK_OK(env->close(env, a));
    CHECK_EQ(fsize(env, path_in(dir, "a")), 107);
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK_EQ(fsize(env, path_in(dir, "a")), 100);
    env->destroy(env);
}

TEST(test_crash_undoes_renames_and_removals) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    char buf[64];
    CHECK_OK(put_file(env, path_in(dir, "CURRENT"), "old", true));
    CHECK_OK(put_file(env, path_in(dir, "victim"), "keep me", true));
    CHECK_OK(env->sync_dir(env, dir));

    /* the classic replace: write a temporary file, sync it, rename it over the target — no sync_dir */
    CHECK_OK(put_file(env, path_in(dir, "CURRENT.tmp"), "new", true));
    CHECK_OK(env->rename(env, path_in(dir, "CURRENT.tmp"), path_in(dir, "CURRENT")));
    CHECK_OK(env->remove(env, path_in(dir, "victim")));
    /* a second replace in a row */
    CHECK_OK(put_file(env, path_in(dir, "CURRENT.tmp"), "newer", true));
    CHECK_OK(env->rename(env, path_in(dir, "CURRENT.tmp"), path_in(dir, "CURRENT")));
    CHECK(get_file(env, path_in(dir, "CURRENT"), buf, sizeof buf) == 5);
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK(get_file(env, path_in(dir, "CURRENT"), buf, sizeof buf) == 3 && !strcmp(buf, "old"));
    CHECK_EQ(env->exists(env, path_in(dir, "CURRENT.tmp")), 0);
    CHECK(get_file(env, path_in(dir, "victim"), buf, sizeof buf) == 7 && !strcmp(buf, "keep me"));

    /* with the directory synced, the rename and the removal survive */
    CHECK_OK(put_file(env, path_in(dir, "CURRENT.tmp"), "new", true));
    CHECK_OK(env->rename(env, path_in(dir, "CURRENT.tmp"), path_in(dir, "CURRENT")));
    CHECK_OK(env->remove(env, path_in(dir, "victim")));
    CHECK_OK(env->sync_dir(env, dir));
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK(get_file(env, path_in(dir, "CURRENT"), buf, sizeof buf) == 3 && !strcmp(buf, "new"));
    CHECK_EQ(env->exists(env, path_in(dir, "CURRENT.tmp")), 0);
    CHECK_EQ(env->exists(env, path_in(dir, "victim")), 0);

    /* a rename whose data was never synced: the name survives (dir synced) but the content does not */
    CHECK_OK(put_file(env, path_in(dir, "CURRENT.tmp"), "unsynced", false));
    CHECK_OK(env->rename(env, path_in(dir, "CURRENT.tmp"), path_in(dir, "CURRENT")));
    CHECK_OK(env->sync_dir(env, dir));
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK_EQ(fsize(env, path_in(dir, "CURRENT")), 0);

    /* a directory spelled differently ("dir/" and "dir//x") is the same directory */
    char spelled[600];
    snprintf(spelled, sizeof spelled, "%s//", dir);
    CHECK_OK(put_file(env, path_in(dir, "/y"), "y", true));
    CHECK_OK(env->sync_dir(env, spelled));
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK_EQ(fsize(env, path_in(dir, "y")), 1);
    env->destroy(env);
}

TEST(test_crash_state_is_per_path) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    const char *p = path_in(dir, "shared");
    kv_file *w, *s;
    CHECK_OK(env->open_write(env, p, &w));
    CHECK_OK(env->sync_dir(env, dir));
    CHECK_OK(env->append(env, w, "12345", 5));
    /* a second handle of the same path syncs: what the first one wrote is durable */
    CHECK_OK(env->open_append(env, p, &s));
    CHECK_OK(env->sync(env, s));
    CHECK_OK(env->append(env, w, "678", 3));
    CHECK_OK(env->close(env, w));
    CHECK_OK(env->close(env, s));
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    CHECK_EQ(fsize(env, p), 5);
    env->destroy(env);
}

/* Several threads appending, syncing, reading and creating files through one fault environment. */
typedef struct {
    kv_env *env;
    const char *dir;
    int id;
    int rc;
} worker_arg;

static void *worker(void *arg) {
    worker_arg *a = arg;
    char name[64], path[600];
    for (int round = 0; round < 20 && a->rc == KV_OK; round++) {
        snprintf(name, sizeof name, "t%d-%d", a->id, round);
        snprintf(path, sizeof path, "%s/%s", a->dir, name);
        kv_file *f;
        if ((a->rc = a->env->open_write(a->env, path, &f)) != KV_OK) break;
        for (int i = 0; i < 50 && a->rc == KV_OK; i++) a->rc = a->env->append(a->env, f, "0123456789", 10);
        if (a->rc == KV_OK) a->rc = a->env->sync(a->env, f);
        char buf[16];
        size_t n;
        if (a->rc == KV_OK) a->rc = a->env->read_at(a->env, f, 490, buf, 16, &n);
        if (a->rc == KV_OK && (n != 10 || memcmp(buf, "0123456789", 10) != 0)) a->rc = KV_ECORRUPT;
        a->env->close(a->env, f);
        if (a->rc == KV_OK && round % 2) a->rc = a->env->remove(a->env, path);
        if (a->rc == KV_OK && round % 5 == 0) a->rc = a->env->sync_dir(a->env, a->dir);
    }
    return NULL;
}

TEST(test_fault_env_threads) {
    kv_env *env = kv_fault_env_new(kv_env_posix());
    const char *dir = t_tmpdir();
    pthread_t th[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){env, dir, i, KV_OK};
        CHECK(pthread_create(&th[i], NULL, worker, &args[i]) == 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) CHECK_OK(args[i].rc);
    kv_fault_env_crash(env);
    CHECK_OK(kv_fault_env_apply_crash(env));
    /* every surviving file holds exactly its synced 500 bytes */
    char **names;
    size_t n;
    CHECK_OK(env->list_dir(env, dir, &names, &n));
    for (size_t i = 0; i < n; i++) CHECK_EQ(fsize(env, path_in(dir, names[i])), 500);
    kv_env_free_names(names, n);
    env->destroy(env);
}
