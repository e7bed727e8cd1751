/*
 * keyfmt.h — the text form of keys and values in the kvfs tools' arguments and output.
 *
 * Keys are bytes. A key's text form is the filesystem's name escaping (fs/names.h, docs/mapping.md): the key is
 * split at '/', each component is escaped exactly as names_escape() does (the empty component is "%", "." and ".."
 * are "%2E" and "%2E%2E", NUL is "%00", a '%' is "%25" when it could be read as one of those escapes), and the
 * components are joined with '/'. So a key's text form is the path of its file under the mount, but for two
 * additions: a '%' followed by [0-9A-F+] that names_escape left as itself (the file "my%20file") is "%25" here,
 * since this form reads every %XX as a byte; and every byte that is not printable is %XX: control characters,
 * space, DEL, and bytes that are not part of a well-formed UTF-8 character from U+00A0 up. Escapes use upper-case
 * hex digits.
 *
 * Decoding: "%XX" with upper-case hex digits is a byte; a component that is just "%" is empty; a '%' followed by
 * anything else than [0-9A-F+] stands for itself ("100%", "%zz", "%0a"). A path copied from the mount (without a
 * '%' of its own before [0-9A-F+]) is accepted as is: a trailing "%F" (the file of a key that is also a directory)
 * is dropped and a component ending in "%+" (a long name cut in pieces) continues into the next one. A '%' that starts an
 * escape but does not complete one ("%4g", "%A", "%+x") is a bad escape.
 *
 * A value's text form (values in line-oriented output and in `kvfs batch`) has no components: '%' is always
 * "%25", bytes that are not printable are %XX, and space stays as is (a value always ends its line).
 */
#ifndef KVFS_KEYFMT_H
#define KVFS_KEYFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest text form of n key bytes, without the NUL. */
#define KEYFMT_KEY_MAX(n) (3 * (size_t)(n) + 1)

/* Encode key bytes into dst, which must hold KEYFMT_KEY_MAX(n) + 1 bytes; returns the length (dst NUL-terminated).
 * n must be at least 1. */
size_t keyfmt_key(char *dst, const void *key, size_t n);
/* The same into a malloc'ed string (NULL when out of memory). */
char *keyfmt_key_alloc(const void *key, size_t n);

/* Encode n value bytes into dst, which must hold 3 * n + 1 bytes; returns the length (dst NUL-terminated). When more
 * bytes follow (final false), a UTF-8 character cut at the end of src is left out: *used tells how many bytes of src
 * were consumed, and the rest must start the next piece. used may be NULL when final is true. */
size_t keyfmt_value(char *dst, const void *src, size_t n, bool final, size_t *used);

/* Decode a key's (is_key) or a value's text form into a malloc'ed buffer (*out, NUL-terminated for convenience).
 * Returns 0; -1 with *why (a static description) and *where (the byte offset in text) for a bad escape; -2 when out
 * of memory. */
int keyfmt_decode(const char *text, size_t tlen, bool is_key, uint8_t **out, size_t *outlen, const char **why,
                  size_t *where);

/* True when n bytes are well-formed UTF-8 (how JSON shows a value). */
bool keyfmt_is_utf8(const void *src, size_t n);

#endif /* KVFS_KEYFMT_H */
