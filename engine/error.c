/* error.c — status names and the per-thread error message (see error.h). */
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kv.h"

static _Thread_local char last_msg[512];

const char *kv_strerror(int code) {
    switch (code) {
    case KV_OK: return "success";
    case KV_ENOTFOUND: return "not found";
    case KV_ECORRUPT: return "corruption detected";
    case KV_EIO: return "I/O error";
    case KV_EINVAL: return "invalid argument";
    case KV_ENOSPC: return "no space left on device";
    case KV_ECLOSED: return "store is closed";
    case KV_ENOMEM: return "out of memory";
    case KV_EEVICTED: return "evicted from the batch log";
    case KV_EAMBIGUOUS: return "ambiguous prefix";
    case KV_EBUSY: return "store is locked by another process";
    case KV_EEXIST: return "already exists";
    case KV_EREADONLY: return "store is read-only";
    case KV_EINTERRUPTED: return "interrupted";
    case KV_EPERM: return "permission denied";
    default: return "unknown error";
    }
}

const char *kv_errmsg(void) { return last_msg; }

void kv_clear_error(void) { last_msg[0] = 0; }

int kv_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return code;
}

int kv_set_errno(int e, const char *what, const char *path) {
    int code;
    switch (e) {
    case ENOSPC:
    case EDQUOT: code = KV_ENOSPC; break;
    case ENOENT: code = KV_ENOTFOUND; break;
    case ENOMEM: code = KV_ENOMEM; break;
    case EACCES:
    case EPERM: code = KV_EPERM; break;
    default: code = KV_EIO; break;
    }
    return kv_set_error(code, "%s %s: %s", what, path ? path : "", strerror(e));
}
