/*
 * fs_meta.c — attribute records and keyspace-1 keys (layout in fs_meta.h).
 *
 * Invariants: encoding is explicit little-endian, independent of the host and of struct layout; decoding checks
 * length and version before reading a field; key builders record allocation failure in keybuf.oom instead of
 * failing midway, and callers check it once.
 */
#include "fs_meta.h"

#include "fs.h"

#include <stdlib.h>
#include <string.h>

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_ts(uint8_t *p, const struct timespec *t) {
    put64(p, (uint64_t)(int64_t)t->tv_sec);
    put32(p + 8, (uint32_t)t->tv_nsec);
}
static void get_ts(const uint8_t *p, struct timespec *t) {
    t->tv_sec = (time_t)(int64_t)get64(p);
    uint32_t ns = get32(p + 8);
    t->tv_nsec = ns < 1000000000u ? (long)ns : 0;
}

void meta_encode(const fs_attr *a, uint8_t out[META_RECORD_BYTES]) {
    memset(out, 0, META_RECORD_BYTES);
    out[0] = 1;
    put32(out + 4, a->mode);
    put32(out + 8, a->uid);
    put32(out + 12, a->gid);
    put64(out + 16, a->rdev);
    put_ts(out + 24, &a->atime);
    put_ts(out + 36, &a->mtime);
    put_ts(out + 48, &a->ctime);
}

bool meta_decode(const void *rec, size_t len, fs_attr *a) {
    const uint8_t *p = rec;
    if (len < META_RECORD_BYTES || p[0] != 1) return false;
    a->mode = get32(p + 4);
    a->uid = get32(p + 8);
    a->gid = get32(p + 12);
    a->rdev = get64(p + 16);
    get_ts(p + 24, &a->atime);
    get_ts(p + 36, &a->mtime);
    get_ts(p + 48, &a->ctime);
    return true;
}

void kb_init(keybuf *k) { memset(k, 0, sizeof *k); }
void kb_free(keybuf *k) {
    free(k->p);
    kb_init(k);
}
void kb_reset(keybuf *k) { k->len = 0; }
void kb_add(keybuf *k, const void *d, size_t n) {
    if (k->oom) return;
    if (k->len + n + 1 > k->cap) {
        size_t cap = k->cap ? k->cap : 128;
        while (cap < k->len + n + 1) cap *= 2;
        uint8_t *np = realloc(k->p, cap);
        if (!np) {
            k->oom = true;
            return;
        }
        k->p = np;
        k->cap = cap;
    }
    if (n) memcpy(k->p + k->len, d, n);
    k->len += n;
    k->p[k->len] = 0;
}
void kb_byte(keybuf *k, uint8_t b) { kb_add(k, &b, 1); }

void meta_file_key(keybuf *out, const uint8_t *key, size_t klen) {
    kb_reset(out);
    kb_byte(out, META_FILE);
    kb_add(out, key, klen);
}

void meta_dir_key(keybuf *out, const uint8_t *dir_key, size_t dlen) {
    kb_reset(out);
    kb_byte(out, META_DIR);
    kb_add(out, dir_key, dlen);
}

void meta_xattr_key(keybuf *out, bool dir, const uint8_t *k, size_t klen, const char *name) {
    kb_reset(out);
    kb_byte(out, dir ? META_DIR_XATTR : META_FILE_XATTR);
    kb_add(out, k, klen);
    kb_byte(out, 0);
    if (name) kb_add(out, name, strlen(name));
}

struct timespec fs_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t;
}

static _Thread_local bool req_ctime_given;
static _Thread_local struct timespec req_ctime;

void kvfs_request_ctime(const struct timespec *t) {
    req_ctime_given = t != NULL;
    if (t) req_ctime = *t;
}

struct timespec fs_ctime_now(void) {
    return req_ctime_given ? req_ctime : fs_now();
}

/* The kernel stamps file times from its coarse clock (current_time()). With the writeback cache it owns mtime,
 * and when the first write into a new file finds an mtime different from its clock's, it sends the new time back
 * in a SETATTR at close: giving new files the coarse clock's time spares each of them that request. */
struct timespec fs_now_coarse(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME_COARSE, &t);
    return t;
}
