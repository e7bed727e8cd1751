/*
 * error.h — internal error reporting: a thread-local message beside each returned status code.
 *
 * Invariant: every place that first detects a failure calls kv_set_error (or kv_set_errno) once, naming what failed
 * (a file and an offset for corruption); callers pass the code up unchanged so the first, most precise message
 * survives. kv_errmsg() (kv.h) reads it.
 */
#ifndef KV_ERROR_H
#define KV_ERROR_H

#include <stdarg.h>

/* Set the thread's message (printf format) and return code, so callers can write `return kv_set_error(...)`. */
int kv_set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Map errno e to a KV code (ENOSPC/EDQUOT -> KV_ENOSPC, ENOENT -> KV_ENOTFOUND, ENOMEM -> KV_ENOMEM, else KV_EIO),
 * set the message "<what> <path>: strerror(e)" and return the code. */
int kv_set_errno(int e, const char *what, const char *path);
void kv_clear_error(void);

#endif /* KV_ERROR_H */
