/*
 * tools_data.c — the commands that read and write keys: put, get, del, batch, scan, resolve, short.
 *
 * Invariants
 *  - Writes are all or nothing: put from stdin commits only after reading stdin to its end (large values go to a
 *    stream first, whose file is removed if it is never put); del and batch commit one atomic batch, and batch
 *    parses all of its input before writing anything.
 *  - Inside the mount daemon, the mount's filesystem writes del's and batch's batch (write_through_mount), so that
 *    the files open through the mount whose keys it deletes keep their content until closed; put writes the store.
 *  - Memory does not grow with the size of a value or the number of keys: values larger than BIG_VALUE are read
 *    and written in CHUNK pieces, scans stream through an iterator at one snapshot, and reads of a large value in
 *    pieces use that same snapshot so that they all see one version.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keyfmt.h"
#include "fs.h"
#include "tools.h"

#define CHUNK (1u << 20)            /* piece size for large values */
#define BIG_VALUE (4ull << 20)      /* values up to this size are read in one call */
#define CANCEL_EVERY 64             /* keys between cancellation checks in scans */

static unsigned write_flags(const targs *a) { return (a->seen & OPT_SYNC) ? KV_SYNC : 0; }

/* Inside the mount daemon, a key changed behind the kernel's back: drop what the kernel and the filesystem cache
 * of its file (the mount keeps attributes and pages for a day, safe only while it is the only writer). */
static void changed(const tool_ctx *c, const void *key, size_t klen) {
    if (c->remote) kvfs_notify_key_changed(key, klen);
}

/* ---- put ------------------------------------------------------------------------------------------------------ */

int cmd_put(tool_ctx *c, const targs *a) {
    const tkey *k = &a->keys[0];
    int rc;
    if (a->npos == 3 && strcmp(a->pos[2], "-") != 0) {
        rc = kv_put(c->db, k->p, k->n, a->pos[2], strlen(a->pos[2]), write_flags(a));
        if (rc == KV_OK) changed(c, k->p, k->n);
        return rc ? tool_kv_error(c, rc, "put %s", tool_keystr(c, k->p, k->n)) : TOOL_OK;
    }
    /* From stdin: a value that fits in the first chunk is put in one call; a larger one is streamed. */
    uint8_t *buf = malloc(CHUNK);
    if (!buf) return tool_error(c, "out of memory");
    kv_stream *s = NULL;
    kv_batch *b = NULL;
    size_t n = 0;
    int status = TOOL_OK;
    for (;;) {
        long r = tool_read(c, buf + n, CHUNK - n);
        if (r < 0) {
            status = errno == EINTR ? TOOL_FAIL : tool_error(c, "put: reading stdin: %s", strerror(errno));
            goto out;
        }
        n += (size_t)r;
        if (r == 0 || n == CHUNK) {
            if (r == 0 && !s) break; /* all of it fits in buf */
            if (!s && (rc = kv_stream_new(c->db, &s)) != KV_OK) {
                status = tool_kv_error(c, rc, "put %s", tool_keystr(c, k->p, k->n));
                goto out;
            }
            if (n && (rc = kv_stream_append(s, buf, n)) != KV_OK) {
                status = tool_kv_error(c, rc, "put %s", tool_keystr(c, k->p, k->n));
                goto out;
            }
            n = 0;
            if (r == 0) break;
        }
    }
    if (tool_cancelled(c)) goto out; /* interrupted after the last read: still write nothing */
    if (!s) {
        rc = kv_put(c->db, k->p, k->n, buf, n, write_flags(a));
    } else if ((rc = kv_batch_new(&b)) == KV_OK && (rc = kv_batch_put_stream(b, 0, k->p, k->n, s)) == KV_OK) {
        rc = kv_write(c->db, b, write_flags(a), NULL);
    }
    if (rc) status = tool_kv_error(c, rc, "put %s", tool_keystr(c, k->p, k->n));
    else changed(c, k->p, k->n);
out:
    kv_batch_free(b);
    kv_stream_free(s);
    free(buf);
    return status;
}

/* ---- get ------------------------------------------------------------------------------------------------------ */

/* Consumers of a value's bytes, given in pieces: return 0 or -1, and set *used (all of n when final). */
typedef int (*piece_fn)(tool_ctx *c, void *arg, const uint8_t *p, size_t n, bool final, size_t *used);

/* Pass the value of key (size bytes, at ro's snapshot) to fn in pieces of about CHUNK bytes, keeping the bytes fn
 * leaves unused at the front of the next piece. */
static int value_pieces(tool_ctx *c, const kv_read_opts *ro, const void *key, size_t klen, uint64_t size,
                        piece_fn fn, void *arg) {
    uint8_t *buf = malloc(CHUNK + 8);
    if (!buf) return tool_error(c, "out of memory");
    uint64_t off = 0;
    size_t keep = 0;
    int status = TOOL_OK;
    while (off < size || keep) {
        size_t nread = 0;
        if (off < size) {
            int rc = kv_read_range(c->db, ro, key, klen, off, buf + keep, CHUNK, &nread);
            if (rc) {
                status = tool_kv_error(c, rc, "reading %s at offset %llu", tool_keystr(c, key, klen),
                                       (unsigned long long)off);
                break;
            }
            if (nread == 0) { /* shorter than its size said: cannot happen at one snapshot */
                status = tool_error(c, "%s: value ends at %llu, before its size %llu", tool_keystr(c, key, klen),
                                    (unsigned long long)off, (unsigned long long)size);
                break;
            }
            off += nread;
        }
        size_t n = keep + nread, used = 0;
        bool final = off >= size;
        if (fn(c, arg, buf, n, final, &used) < 0 || tool_cancelled(c)) {
            status = TOOL_FAIL;
            break;
        }
        keep = n - used;
        if (final) break;
        memmove(buf, buf + used, keep);
    }
    free(buf);
    return status;
}

static int piece_raw(tool_ctx *c, void *arg, const uint8_t *p, size_t n, bool final, size_t *used) {
    (void)arg, (void)final;
    *used = n;
    return tout_write(&c->out, p, n);
}

int cmd_get(tool_ctx *c, const targs *a) {
    const tkey *k = &a->keys[0];
    kv_snapshot *snap;
    int rc = kv_snapshot_new(c->db, &snap);
    if (rc) return tool_kv_error(c, rc, "get");
    kv_read_opts ro = {.snapshot = snap};
    kv_info info;
    int status = TOOL_OK;
    rc = kv_stat(c->db, &ro, k->p, k->n, &info);
    if (rc == KV_ENOTFOUND) {
        status = tool_error(c, "key %s not found", tool_keystr(c, k->p, k->n));
    } else if (rc) {
        status = tool_kv_error(c, rc, "get %s", tool_keystr(c, k->p, k->n));
    } else if (info.size <= BIG_VALUE) {
        kv_buf v = {0};
        rc = kv_get(c->db, &ro, k->p, k->n, &v);
        if (rc) status = tool_kv_error(c, rc, "get %s", tool_keystr(c, k->p, k->n));
        else tout_write(&c->out, v.data, v.len);
        kv_buf_free(&v);
    } else {
        status = value_pieces(c, &ro, k->p, k->n, info.size, piece_raw, NULL);
    }
    kv_snapshot_release(c->db, snap);
    return status;
}

/* ---- del, batch ----------------------------------------------------------------------------------------------- */

/* The engine status of a store error (fs/store_kv.c maps them the other way), so that a failure through the mount
 * says what it says in a direct run: the engine left its detail of it in this thread's kv_errmsg(). Corruption and
 * other I/O failures are all EIO there, and say "I/O error" here. */
static int kv_status_of(int err) {
    switch (err) {
    case 0: return KV_OK;
    case -ENOENT: return KV_ENOTFOUND;
    case -ENOSPC: return KV_ENOSPC;
    case -EROFS: return KV_EREADONLY;
    case -ENOMEM: return KV_ENOMEM;
    case -EINVAL: case -ENAMETOOLONG: return KV_EINVAL;
    case -EBUSY: return KV_EBUSY;
    case -EACCES: case -EPERM: return KV_EPERM;
    default: return KV_EIO;
    }
}

/* Write a tool's puts and deletes of keyspace-0 keys as the filesystem does (kvfs_write_keys), so that a deleted key's
 * attributes and extended attributes go with it, as after rm (a later put of the key shows the defaults, not the
 * deleted file's mode, owner and xattrs). Inside the mount daemon the mount's filesystem writes it: a file open
 * through the mount whose key it deletes keeps its content for its open descriptors until their last close, as
 * after rm (a delete straight into the store left them reading ENOENT, and a write through one brought the key
 * back). Otherwise (not mounted, or kvfs serve) a filesystem made for the call writes it. KV_OK or an engine
 * status. */
static int write_keys(tool_ctx *c, const store_batch *sb, const targs *a) {
    bool sync = (a->seen & OPT_SYNC) != 0;
    int rc = c->remote ? kvfs_mounted_write_keys(sb, sync) : 1;
    if (rc == 1) {
        store *st = store_kv_new(c->db, c->datadir);
        bool deletes = false; /* puts alone need no filesystem: they are written as they are */
        for (size_t i = 0; i < sb->n && !deletes; i++) deletes = sb->ops[i].kind == STORE_DELETE;
        rc = !st ? -ENOMEM : deletes ? kvfs_write_keys_unmounted(st, sb, sync) : store_write(st, sb, sync);
        store_destroy(st);
    }
    return kv_status_of(rc);
}

int cmd_del(tool_ctx *c, const targs *a) {
    store_batch sb;
    store_batch_init(&sb);
    for (int i = 0; i < a->nkeys; i++) store_batch_delete(&sb, STORE_KS_DATA, a->keys[i].p, a->keys[i].n);
    int rc = write_keys(c, &sb, a);
    store_batch_free(&sb);
    return rc ? tool_kv_error(c, rc, "del") : TOOL_OK;
}

/* The most batch input taken: a batch is applied atomically, so all of it is held (twice: the text and the parsed
 * batch) until it commits, in the mount daemon's memory when the store is mounted. Unbounded, `yes | kvfs batch`
 * took a daemon to 3.7 GB in 3 s. (The engine takes at most 1 GiB in one batch anyway.) */
#define BATCH_MAX_INPUT ((size_t)256 << 20)

/* Read all of stdin into *out (NUL-terminated). 0, or a failure status already reported. */
static int slurp_stdin(tool_ctx *c, char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) return tool_error(c, "batch: out of memory reading stdin");
        if (n > BATCH_MAX_INPUT) {
            free(buf);
            return tool_error(c, "batch: the input is larger than %zu MiB: a batch is applied whole, so it is held in "
                                 "memory; split it into several batches", BATCH_MAX_INPUT >> 20);
        }
        if (cap - n < 4096) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb, cap *= 2;
            continue;
        }
        long r = tool_read(c, buf + n, cap - n - 1);
        if (r < 0) {
            int e = errno;
            free(buf);
            return e == EINTR ? TOOL_FAIL : tool_error(c, "batch: reading stdin: %s", strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return TOOL_OK;
}

/* Decode one word of text form for batch line `line`. */
static int batch_decode(tool_ctx *c, size_t line, const char *what, const char *s, size_t n, uint8_t **out,
                        size_t *outlen) {
    const char *why;
    size_t where;
    int rc = keyfmt_decode(s, n, strcmp(what, "key") == 0, out, outlen, &why, &where);
    if (rc == -2) return tool_error(c, "batch: out of memory");
    if (rc < 0) return tool_error(c, "batch: line %zu: bad escape in %s at byte %zu: %s", line, what, where, why);
    return TOOL_OK;
}

int tool_batch_parse(tool_ctx *c, const char *in, size_t inlen, store_batch *sb) {
    int status = TOOL_OK;
    size_t lineno = 0;
    for (const char *p = in; p < in + inlen && status == TOOL_OK;) {
        const char *eol = memchr(p, '\n', (size_t)(in + inlen - p));
        if (!eol) eol = in + inlen;
        const char *line = p, *end = eol;
        p = eol + 1;
        lineno++;
        if (end > line && end[-1] == '\r') end--; /* CRLF input */
        const char *q = line;
        while (q < end && (*q == ' ' || *q == '\t')) q++;
        if (q == end || *q == '#') continue;
        const char *verb = q;
        while (q < end && *q != ' ' && *q != '\t') q++;
        size_t vlen = (size_t)(q - verb);
        while (q < end && (*q == ' ' || *q == '\t')) q++;
        const char *key = q;
        while (q < end && *q != ' ' && *q != '\t') q++;
        size_t klen = (size_t)(q - key);
        bool is_put = vlen == 3 && memcmp(verb, "put", 3) == 0;
        bool is_del = vlen == 3 && memcmp(verb, "del", 3) == 0;
        if (!is_put && !is_del) {
            /* in text form: a binary file given as input must not reach the terminal raw */
            status = tool_error(c, "batch: line %zu: unknown operation %s (expected put or del)", lineno,
                                tool_keystr(c, verb, vlen));
            break;
        }
        if (klen == 0) {
            status = tool_error(c, "batch: line %zu: missing key", lineno);
            break;
        }
        uint8_t *k = NULL, *v = NULL;
        size_t kn = 0, vn = 0;
        status = batch_decode(c, lineno, "key", key, klen, &k, &kn);
        if (status == TOOL_OK && (kn == 0 || kn > KV_MAX_KEY))
            status = tool_error(c, "batch: line %zu: a key is 1 to %u bytes", lineno, KV_MAX_KEY);
        if (status == TOOL_OK && is_del) {
            while (q < end && (*q == ' ' || *q == '\t')) q++;
            if (q < end) status = tool_error(c, "batch: line %zu: del takes only a key", lineno);
            else store_batch_delete(sb, STORE_KS_DATA, k, kn);
        } else if (status == TOOL_OK) {
            if (q < end) q++; /* the one separator; the value is everything after it */
            status = batch_decode(c, lineno, "value", q, (size_t)(end - q), &v, &vn);
            if (status == TOOL_OK) store_batch_put(sb, STORE_KS_DATA, k, kn, v, vn);
        }
        if (status == TOOL_OK && sb->error) status = tool_error(c, "batch: out of memory at line %zu", lineno);
        free(k);
        free(v);
    }
    return status;
}

int cmd_batch(tool_ctx *c, const targs *a) {
    char *in = NULL;
    size_t inlen = 0;
    int status = slurp_stdin(c, &in, &inlen);
    if (status) return status;
    store_batch sb;
    store_batch_init(&sb);
    status = tool_batch_parse(c, in, inlen, &sb);
    free(in);
    if (status == TOOL_OK && !tool_cancelled(c) && sb.n > 0) {
        int rc = write_keys(c, &sb, a);
        if (rc) status = tool_kv_error(c, rc, "batch: writing %zu operations", sb.n);
    }
    store_batch_free(&sb);
    return status;
}

/* ---- scan ----------------------------------------------------------------------------------------------------- */

static int key_cmp(const void *a, size_t an, const void *b, size_t bn) {
    int r = memcmp(a, b, an < bn ? an : bn);
    return r ? r : an < bn ? -1 : an > bn ? 1 : 0;
}

/* The smallest key greater than every key starting with p: p with its last byte below 0xff incremented and the
 * rest cut. false when there is none (p is all 0xff). */
static bool prefix_successor(const tkey *p, tkey *out) {
    size_t n = p->n;
    while (n > 0 && p->p[n - 1] == 0xff) n--;
    if (n == 0) return false;
    out->p = malloc(n);
    if (!out->p) return false;
    memcpy(out->p, p->p, n);
    out->p[n - 1]++;
    out->n = n;
    return true;
}

static int piece_text(tool_ctx *c, void *arg, const uint8_t *p, size_t n, bool final, size_t *used) {
    (void)arg;
    long r = tout_valtext(&c->out, p, n, final);
    if (r < 0) return -1;
    *used = (size_t)r;
    return 0;
}

static int piece_json(tool_ctx *c, void *arg, const uint8_t *p, size_t n, bool final, size_t *used) {
    (void)arg, (void)final;
    *used = n;
    return tout_json_chars(&c->out, p, n);
}

static int piece_base64(tool_ctx *c, void *arg, const uint8_t *p, size_t n, bool final, size_t *used) {
    (void)arg;
    return tout_base64(&c->out, p, n, final, used);
}

/* Incremental UTF-8 check of a large value (before choosing how JSON shows it); arg is a bool verdict. */
static int piece_utf8(tool_ctx *c, void *arg, const uint8_t *p, size_t n, bool final, size_t *used) {
    (void)c;
    size_t cut = n;
    if (!final) { /* leave a character cut at the end of the piece for the next one */
        for (size_t back = 1; back <= 3 && back <= n; back++) {
            uint8_t ch = p[n - back];
            if ((ch & 0xc0) == 0x80) continue;
            if (ch >= 0xc0) {
                size_t need = ch >= 0xf0 ? 4 : ch >= 0xe0 ? 3 : 2;
                if (need > back) cut = n - back;
            }
            break;
        }
    }
    if (!keyfmt_is_utf8(p, cut)) {
        *(bool *)arg = false;
        return -1; /* stop reading: the answer is known */
    }
    *used = cut;
    return 0;
}

struct scan {
    tool_ctx *c;
    const targs *a;
    kv_read_opts ro;
    uint64_t count;
};

static int scan_value(struct scan *s, kv_iter *it, const void *key, size_t klen) {
    tool_ctx *c = s->c;
    bool json = s->a->seen & OPT_JSON;
    kv_info info;
    int rc = kv_iter_info(it, &info);
    if (rc) return tool_kv_error(c, rc, "scan: %s", tool_keystr(c, key, klen));
    const void *v = NULL;
    uint64_t vlen = info.size;
    if (vlen <= BIG_VALUE && (rc = kv_iter_value(it, &v, &vlen)) != KV_OK)
        return tool_kv_error(c, rc, "scan: %s", tool_keystr(c, key, klen));
    if (!json) {
        if (v) {
            size_t used;
            return piece_text(c, NULL, v, vlen, true, &used) < 0 ? TOOL_FAIL : TOOL_OK;
        }
        return value_pieces(c, &s->ro, key, klen, vlen, piece_text, NULL);
    }
    if (v) {
        tout_str(&c->out, ",");
        return tout_json_value(&c->out, v, vlen) < 0 ? TOOL_FAIL : TOOL_OK;
    }
    /* A large value: a first pass decides between a string and base64, a second prints it. */
    bool utf8 = true;
    int r = value_pieces(c, &s->ro, key, klen, vlen, piece_utf8, &utf8);
    if (r != TOOL_OK && utf8) return r; /* a real failure, not the early stop at the first bad byte */
    tout_printf(&c->out, ",\"%s\":\"", utf8 ? "value" : "value_base64");
    r = value_pieces(c, &s->ro, key, klen, vlen, utf8 ? piece_json : piece_base64, NULL);
    tout_str(&c->out, "\"");
    return r;
}

static int scan_emit(struct scan *s, kv_iter *it, const void *key, size_t klen) {
    tool_ctx *c = s->c;
    bool json = s->a->seen & OPT_JSON, keys_only = s->a->seen & OPT_KEYS_ONLY;
    int r = TOOL_OK;
    if (json) {
        const char *sep = s->count ? ",\n{\"key\":" : "[\n{\"key\":";
        tout_write(&c->out, sep, strlen(sep));
        tout_json_key(&c->out, key, klen);
        if (!keys_only) r = scan_value(s, it, key, klen);
        /* A value that could not be read leaves its object (or line) open: closed, it would read as complete. */
        if (r == TOOL_OK) tout_str(&c->out, "}");
    } else {
        tout_keytext(&c->out, key, klen);
        if (!keys_only) {
            tout_str(&c->out, "\t");
            r = scan_value(s, it, key, klen);
        }
        if (r == TOOL_OK) tout_str(&c->out, "\n");
    }
    s->count++;
    if (r == TOOL_OK && c->out.err) r = TOOL_FAIL;
    return r;
}

int cmd_scan(tool_ctx *c, const targs *a) {
    const tkey *lo = (a->seen & OPT_START) ? &a->start : (a->seen & OPT_PREFIX) ? &a->prefix : NULL;
    const tkey *hi = (a->seen & OPT_END) ? &a->end : NULL;
    const tkey *prefix = (a->seen & OPT_PREFIX) ? &a->prefix : NULL;
    tkey succ = {0};
    bool has_succ = prefix && prefix_successor(prefix, &succ);
    kv_snapshot *snap;
    int rc = kv_snapshot_new(c->db, &snap);
    if (rc) return tool_kv_error(c, rc, "scan");
    struct scan s = {c, a, {.snapshot = snap}, 0};
    kv_iter *it;
    rc = kv_iter_new(c->db, &s.ro, &it);
    if (rc) {
        kv_snapshot_release(c->db, snap);
        free(succ.p);
        return tool_kv_error(c, rc, "scan");
    }
    bool forward = !(a->seen & OPT_REVERSE);
    if (forward) {
        if (lo) kv_iter_seek(it, lo->p, lo->n);
        else kv_iter_seek_first(it);
    } else {
        /* Start at the last key <= the upper bound: --end, or the end of the prefix's range, whichever is lower. */
        const tkey *top = hi;
        if (has_succ && (!top || key_cmp(succ.p, succ.n, top->p, top->n) < 0)) top = &succ;
        if (top) kv_iter_seek_for_prev(it, top->p, top->n);
        else kv_iter_seek_last(it);
    }
    int status = TOOL_OK;
    bool limited = a->seen & OPT_LIMIT; /* --limit 0 prints nothing */
    while (kv_iter_valid(it) && (!limited || s.count < a->limit)) {
        size_t klen;
        const void *key = kv_iter_key(it, &klen);
        if (hi && key_cmp(key, klen, hi->p, hi->n) > 0) {
            if (forward) break;
        } else if (lo && key_cmp(key, klen, lo->p, lo->n) < 0) {
            if (!forward) break;
        } else if (prefix && (klen < prefix->n || memcmp(key, prefix->p, prefix->n) != 0)) {
            /* Forward, keys past the prefix's range end the scan; backward, only the successor itself can lie
             * above it (it was the seek target), and keys below it end the scan. */
            if (forward || key_cmp(key, klen, prefix->p, prefix->n) < 0) break;
        } else if ((status = scan_emit(&s, it, key, klen)) != TOOL_OK) {
            break;
        }
        if (s.count % CANCEL_EVERY == 0 && tool_cancelled(c)) {
            status = TOOL_FAIL;
            break;
        }
        if (forward) kv_iter_next(it);
        else kv_iter_prev(it);
    }
    if (status == TOOL_OK && (rc = kv_iter_status(it)) != KV_OK) status = tool_kv_error(c, rc, "scan");
    if (status == TOOL_OK && (a->seen & OPT_JSON)) tout_str(&c->out, s.count ? "\n]\n" : "[]\n");
    kv_iter_free(it);
    kv_snapshot_release(c->db, snap);
    free(succ.p);
    return status;
}

/* ---- resolve, short ------------------------------------------------------------------------------------------- */

int cmd_resolve(tool_ctx *c, const targs *a) {
    const tkey *p = &a->keys[0];
    kv_buf key = {0}, second = {0};
    int rc = kv_resolve_prefix(c->db, NULL, p->p, p->n, &key, &second);
    int status = TOOL_OK;
    if (rc == KV_OK) {
        tout_keytext(&c->out, key.data, key.len);
        tout_str(&c->out, "\n");
    } else if (rc == KV_ENOTFOUND) {
        status = tool_error(c, "no key starts with %s", tool_keystr(c, p->p, p->n));
    } else if (rc == KV_EAMBIGUOUS) {
        const char *k1 = tool_keystr(c, key.data, key.len);
        status = tool_error(c, "prefix %s is ambiguous: %s, %s, ...", tool_keystr(c, p->p, p->n), k1,
                            tool_keystr(c, second.data, second.len));
    } else {
        status = tool_kv_error(c, rc, "resolve");
    }
    kv_buf_free(&key);
    kv_buf_free(&second);
    return status;
}

int cmd_short(tool_ctx *c, const targs *a) {
    const tkey *k = &a->keys[0];
    size_t plen = 0;
    int rc = kv_shortest_unique_prefix(c->db, NULL, k->p, k->n, &plen);
    if (rc == KV_ENOTFOUND) return tool_error(c, "key %s not found", tool_keystr(c, k->p, k->n));
    if (rc == KV_EAMBIGUOUS)
        return tool_error(c, "key %s has no unique prefix: it is a prefix of another key", tool_keystr(c, k->p, k->n));
    if (rc) return tool_kv_error(c, rc, "short");
    tout_keytext(&c->out, k->p, plen);
    tout_str(&c->out, "\n");
    return TOOL_OK;
}
