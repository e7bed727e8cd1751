/*
 * tools_io.c — output, input, errors, cancellation and progress bars for the tool commands (see tools.h).
 *
 * Invariants
 *  - Nothing here blocks without also watching for cancellation: every wait is a poll() that includes the client
 *    connection (daemon runs) or is cut short by the interrupt handler / a 250 ms timeout (direct runs).
 *  - Error lines are written whole ("kvfs: ...\n") and flushed at once, after flushing pending stdout, so that
 *    output and errors appear in the order they happened.
 *  - Text forms and JSON strings are produced in bounded pieces: memory does not depend on a key's or value's size.
 */
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "keyfmt.h"
#include "tools.h"

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool tool_cancelled(tool_ctx *c) {
    if (c->stopped) return true;
    if (c->interrupted && *c->interrupted) {
        c->stopped = true;
    } else if (c->cancel_fd >= 0) {
        /* The client sends nothing after its request: the connection becomes readable only when it closes (the
         * client was killed or interrupted) or the daemon shuts it down to stop. */
        struct pollfd p = {.fd = c->cancel_fd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0 && p.revents) c->stopped = true;
    }
    return c->stopped;
}

/* Wait until fd (if >= 0) is ready for `events` or ms pass, watching the client connection too.
 * Returns 1 ready, 0 timeout or interrupted by a signal (the caller checks again), -1 cancelled. */
static int wait_fd(tool_ctx *c, int fd, short events, int ms) {
    struct pollfd p[2];
    int np = 0;
    if (fd >= 0) p[np++] = (struct pollfd){.fd = fd, .events = events};
    if (c->cancel_fd >= 0) p[np++] = (struct pollfd){.fd = c->cancel_fd, .events = POLLIN};
    if (tool_cancelled(c)) return -1;
    int r = poll(p, (nfds_t)np, ms);
    if (r < 0) return tool_cancelled(c) ? -1 : 0; /* EINTR: the handler may have set the flag */
    if (r == 0) return 0;
    if (fd >= 0 && p[0].revents) return tool_cancelled(c) ? -1 : 1; /* POLLHUP/POLLERR too: read/write tells */
    c->stopped = true; /* only the connection is ready: the client went away, or the daemon is stopping */
    return -1;
}

bool tool_sleep(tool_ctx *c, int ms) {
    int64_t end = now_ms() + ms;
    for (;;) {
        int64_t left = end - now_ms();
        if (left <= 0) return tool_cancelled(c);
        if (wait_fd(c, -1, 0, left > 250 ? 250 : (int)left) < 0) return true;
    }
}

bool tool_output_gone(tool_ctx *c) {
    if (c->out.err) return c->out.err == EPIPE;
    struct stat st;
    if (fstat(c->out.fd, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) return false;
    /* No events asked: a pipe whose reader is gone reports POLLERR, a socket shut down both ways POLLHUP. */
    struct pollfd p = {.fd = c->out.fd, .events = 0};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP))) {
        c->out.err = EPIPE;
        return true;
    }
    return false;
}

long tool_read(tool_ctx *c, void *buf, size_t n) {
    for (;;) {
        int w = wait_fd(c, c->in_fd, POLLIN, 250);
        if (w < 0) {
            errno = EINTR;
            return -1;
        }
        if (w == 0) continue;
        ssize_t r = read(c->in_fd, buf, n);
        if (r >= 0) return (long)r;
        if (errno != EINTR && errno != EAGAIN) return -1;
    }
}

enum { WM_UNKNOWN, WM_PLAIN, WM_NOWAIT, WM_SMALL };

/* One write(2) of up to n bytes. In the daemon it must never block: the descriptor is the client's, and a blocking
 * pipe, socket or terminal whose reader stops reading (`kvfs get D K | sleep 100`, or a terminal stopped with
 * Ctrl-S) held the command's thread in write() after the client had been killed, and ctl_server_stop (an unmount)
 * waited for it as long. So pipes and sockets are written with RWF_NOWAIT (EAGAIN when full; the caller then polls
 * them and the connection); where the kernel does not take it, and on terminals, one PIPE_BUF piece at a time once
 * poll() says there is room, which a pipe never blocks on. Files and other devices do not wait for a reader. */
static ssize_t write_some(tout *o, const char *p, size_t n) {
    if (o->ctx->cancel_fd < 0) return write(o->fd, p, n); /* direct runs: a signal interrupts a blocked write */
    if (o->wmode == WM_UNKNOWN) {
        struct stat st;
        o->wmode = WM_PLAIN;
        if (fstat(o->fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) o->wmode = WM_NOWAIT;
        else if (isatty(o->fd)) o->wmode = WM_SMALL;
    }
    if (o->wmode == WM_NOWAIT) {
        struct iovec iov = {(void *)p, n};
        ssize_t w = pwritev2(o->fd, &iov, 1, -1, RWF_NOWAIT);
        if (w >= 0 || (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOSYS)) return w;
        o->wmode = WM_SMALL;
    }
    if (o->wmode == WM_SMALL) {
        struct pollfd pf = {.fd = o->fd, .events = POLLOUT};
        if (poll(&pf, 1, 0) == 0) {
            errno = EAGAIN;
            return -1;
        }
        if (n > PIPE_BUF) n = PIPE_BUF;
    }
    return write(o->fd, p, n);
}

int tout_flush(tout *o) {
    size_t done = 0;
    while (done < o->n && !o->err) {
        ssize_t w = write_some(o, o->buf + done, o->n - done);
        if (w > 0) {
            done += (size_t)w;
            o->written += (uint64_t)w;
            continue;
        }
        if (w < 0 && errno != EINTR && errno != EAGAIN) {
            o->err = errno;
            break;
        }
        /* EINTR or a non-blocking descriptor that is full: wait, watching for cancellation. */
        if (wait_fd(o->ctx, o->fd, POLLOUT, 250) < 0) o->err = EINTR;
    }
    o->n = 0;
    return o->err ? -1 : 0;
}

int tout_write(tout *o, const void *p, size_t n) {
    const char *s = p;
    o->total += n;
    if (o->err) return -1;
    if (o->skip) { /* written before: by the daemon that printed the start of this listing */
        size_t k = o->skip < n ? (size_t)o->skip : n;
        o->skip -= k, o->written += k, s += k, n -= k;
    }
    while (n) {
        if (o->n == sizeof o->buf && tout_flush(o) < 0) return -1;
        size_t k = sizeof o->buf - o->n;
        if (k > n) k = n;
        memcpy(o->buf + o->n, s, k);
        o->n += k, s += k, n -= k;
    }
    return 0;
}

int tout_printf(tout *o, const char *fmt, ...) {
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (len < 0) return -1;
    if ((size_t)len < sizeof small) return tout_write(o, small, (size_t)len);
    /* Long lines (rare: messages quoting long keys) are formatted a second time into a right-sized buffer. */
    char *big = malloc((size_t)len + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)len + 1, fmt, ap);
    va_end(ap);
    int rc = tout_write(o, big, (size_t)len);
    free(big);
    return rc;
}

/* Write s (valid UTF-8) as the inside of a JSON string. */
static int json_escape(tout *o, const char *s, size_t n) {
    size_t run = 0; /* bytes of s[..] not needing escapes, written in one go */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        if (ch == '"') esc = "\\\"";
        else if (ch == '\\') esc = "\\\\";
        else if (ch == '\n') esc = "\\n";
        else if (ch == '\t') esc = "\\t";
        else if (ch == '\r') esc = "\\r";
        else if (ch < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", ch);
            esc = u;
        }
        if (!esc) continue;
        if (tout_write(o, s + run, i - run) < 0 || tout_write(o, esc, strlen(esc)) < 0) return -1;
        run = i + 1;
    }
    return tout_write(o, s + run, n - run);
}

/* A key's text form, optionally JSON-escaped. Keys are at most KV_MAX_KEY bytes: encoded whole. */
static int key_text(tout *o, const uint8_t *p, size_t n, bool json) {
    char small[KEYFMT_KEY_MAX(256) + 1];
    char *enc = n <= 256 ? small : malloc(KEYFMT_KEY_MAX(n) + 1);
    if (!enc) {
        o->err = ENOMEM;
        return -1;
    }
    size_t len = n ? keyfmt_key(enc, p, n) : 0;
    int rc;
    if (n && !len) rc = -1, o->err = ENOMEM;
    else rc = json ? json_escape(o, enc, len) : tout_write(o, enc, len);
    if (enc != small) free(enc);
    return rc;
}

int tout_keytext(tout *o, const void *key, size_t n) { return key_text(o, key, n, false); }

int tout_json_key(tout *o, const void *key, size_t n) {
    if (tout_str(o, "\"") < 0 || key_text(o, key, n, true) < 0) return -1;
    return tout_str(o, "\"");
}

int tout_json_chars(tout *o, const void *s, size_t n) { return json_escape(o, s, n); }

const char *tool_keystr(tool_ctx *c, const void *key, size_t n) {
    char *buf = c->keystr[c->keystr_next];
    c->keystr_next = (c->keystr_next + 1) % 3;
    size_t take = n > 60 ? 60 : n; /* 60 bytes encode to at most 181 characters */
    char enc[KEYFMT_KEY_MAX(60) + 1];
    if (!take || !keyfmt_key(enc, key, take)) enc[0] = 0;
    snprintf(buf, sizeof c->keystr[0], "'%s%s'", enc, take < n ? "..." : "");
    return buf;
}

int tout_base64(tout *o, const void *src, size_t n, bool final, size_t *used) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *p = src;
    char out[4096];
    size_t o_n = 0;
    size_t whole = final ? n : n / 3 * 3; /* a piece that is not the last encodes whole groups only */
    for (size_t i = 0; i < whole; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < whole) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < whole) v |= p[i + 2];
        out[o_n++] = tab[v >> 18];
        out[o_n++] = tab[(v >> 12) & 63];
        out[o_n++] = i + 1 < whole ? tab[(v >> 6) & 63] : '=';
        out[o_n++] = i + 2 < whole ? tab[v & 63] : '=';
        if (o_n == sizeof out) {
            if (tout_write(o, out, o_n) < 0) return -1;
            o_n = 0;
        }
    }
    *used = whole;
    return tout_write(o, out, o_n);
}

int tout_json_value(tout *o, const void *v, size_t n) {
    size_t used;
    if (keyfmt_is_utf8(v, n)) {
        if (tout_str(o, "\"value\":\"") < 0 || json_escape(o, v, n) < 0) return -1;
    } else if (tout_str(o, "\"value_base64\":\"") < 0 || tout_base64(o, v, n, true, &used) < 0) {
        return -1;
    }
    return tout_str(o, "\"");
}

int tout_json_str(tout *o, const void *s, size_t n) {
    if (tout_str(o, "\"") < 0 || json_escape(o, s, n) < 0) return -1;
    return tout_str(o, "\"");
}

long tout_valtext(tout *o, const void *val, size_t n, bool final) {
    const uint8_t *p = val;
    size_t total = 0;
    while (n) {
        char enc[3 * 4096 + 1];
        size_t k = n > 4096 ? 4096 : n, used;
        size_t len = keyfmt_value(enc, p, k, final && k == n, &used);
        if (tout_write(o, enc, len) < 0) return -1;
        p += used, n -= used, total += used;
        if (used < k && k == n + used) break; /* a cut character at the end of the piece: the caller keeps it */
    }
    return (long)total;
}

static int verror(tool_ctx *c, int status, const char *kvmsg, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    tool_progress_done(c);
    tout_flush(&c->out);
    if (kvmsg) tout_printf(&c->err, "kvfs: %s: %s\n", msg, kvmsg);
    else tout_printf(&c->err, "kvfs: %s\n", msg);
    tout_flush(&c->err);
    return status;
}

void tool_iso_time(char *buf, size_t n, int64_t ms) {
    /* Floor division without ms - 999, which overflows for a damaged timestamp near INT64_MIN. */
    int64_t sec = ms / 1000, milli = ms % 1000;
    if (milli < 0) sec--, milli += 1000;
    time_t t = (time_t)sec;
    struct tm tm;
    size_t k = gmtime_r(&t, &tm) ? strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm) : 0;
    if (!k) k = (size_t)snprintf(buf, n, "(%" PRId64 " s)", sec); /* a year outside struct tm */
    if (k < n) snprintf(buf + k, n - k, ".%03dZ", (int)milli);
}

int tool_error(tool_ctx *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = verror(c, TOOL_FAIL, NULL, fmt, ap);
    va_end(ap);
    return rc;
}

int tool_kv_error(tool_ctx *c, int code, const char *fmt, ...) {
    char detail[1024];
    const char *em = kv_errmsg();
    /* The engine's detail usually names the file and offset; the status name alone when it has none. A write on a
     * read-only store has no detail to add (its text repeated the status name) and one cause: the tools write
     * through a daemon's store only, and only `kvfs mount -o ro` opens it read-only. */
    if (code == KV_EINTERRUPTED) snprintf(detail, sizeof detail, "interrupted");
    else if (code == KV_EREADONLY) snprintf(detail, sizeof detail, "the store is read-only (mounted with -o ro)");
    else if (em && *em && (strstr(em, kv_strerror(code)) || code == KV_EPERM)) /* not twice ("Permission denied") */
        snprintf(detail, sizeof detail, "%s", em);
    else if (em && *em) snprintf(detail, sizeof detail, "%s (%s)", em, kv_strerror(code));
    else snprintf(detail, sizeof detail, "%s", kv_strerror(code));
    va_list ap;
    va_start(ap, fmt);
    int rc = verror(c, TOOL_FAIL, detail, fmt, ap);
    va_end(ap);
    return rc;
}

int tool_finish(tool_ctx *c, int rc) {
    tool_progress_done(c);
    tout_flush(&c->out);
    if (c->out.err == EPIPE) return -SIGPIPE;
    if (c->stopped) {
        tout_flush(&c->err);
        return -SIGINT;
    }
    if (c->out.err && c->out.err != EINTR) {
        tout_printf(&c->err, "kvfs: writing output: %s\n", strerror(c->out.err));
        tout_flush(&c->err);
        return TOOL_FAIL;
    }
    tout_flush(&c->err);
    return rc;
}

int tool_progress(void *arg, uint64_t done, uint64_t total) {
    tool_ctx *c = arg;
    if (tool_cancelled(c)) return 1;
    if (!c->progress || total == 0) return 0;
    int64_t t = now_ms();
    if (c->progress_drawn_ms && t - c->progress_drawn_ms < 100 && done < total) return 0;
    c->progress_drawn_ms = t;
    int pct = done >= total ? 100 : (int)(done * 100 / total);
    char bar[31];
    int fill = pct * 30 / 100;
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '=' : ' ';
    bar[30] = 0;
    tout_printf(&c->err, "\r%s [%s] %3d%%", c->progress_label ? c->progress_label : "working", bar, pct);
    tout_flush(&c->err);
    return 0;
}

void tool_progress_done(tool_ctx *c) {
    if (!c->progress_drawn_ms) return;
    c->progress_drawn_ms = 0;
    tout_str(&c->err, "\r\033[K"); /* erase the bar's line */
    tout_flush(&c->err);
}
