/*
 * mountinfo.h — reading /proc/self/mountinfo, the kernel's table of mounts (proc(5)).
 *
 * A line is "id parent major:minor root mountpoint options [optional fields] - type source superoptions"; inside a
 * field, space, tab, newline and backslash are written as \ooo (octal). Fields are returned still escaped, as
 * pointers into the line; mountinfo_field and mountinfo_field_is decode them.
 */
#ifndef KVFS_MOUNTINFO_H
#define KVFS_MOUNTINFO_H
#include <stdbool.h>
#include <stddef.h>

typedef struct mountinfo_line {
    unsigned major, minor;              /* the mounted device */
    const char *mountpoint, *type, *source;
} mountinfo_line;

/* Split one line; false when it does not have the shape above. */
bool mountinfo_parse(const char *line, mountinfo_line *out);
/* Decode the field at f into out (n bytes, always NUL-terminated, cut to fit); the position after it. */
const char *mountinfo_field(const char *f, char *out, size_t n);
/* Whether the field at f, decoded, is exactly want. */
bool mountinfo_field_is(const char *f, const char *want);

#endif /* KVFS_MOUNTINFO_H */
