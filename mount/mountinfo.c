/*
 * mountinfo.c — reading /proc/self/mountinfo (see mountinfo.h).
 */
#include "mountinfo.h"

#include <stdio.h>
#include <string.h>

/* The byte an escape \ooo at f stands for, or -1 when f holds none. */
static int escaped(const char *f) {
    if (f[0] != '\\') return -1;
    for (int i = 1; i <= 3; i++)
        if (f[i] < '0' || f[i] > '7') return -1;
    return (f[1] - '0') * 64 + (f[2] - '0') * 8 + (f[3] - '0');
}

static bool field_end(char c) { return c == '\0' || c == ' ' || c == '\n'; }

bool mountinfo_parse(const char *line, mountinfo_line *out) {
    const char *sep = strstr(line, " - "), *p = line;
    for (int i = 0; i < 4 && p; i++) {
        if (i == 2 && sscanf(p, "%u:%u", &out->major, &out->minor) != 2) return false;
        p = strchr(p, ' ');
        if (p) p++;
    }
    if (!sep || !p || p > sep) return false;
    out->mountpoint = p;
    out->type = sep + 3;
    const char *src = strchr(out->type, ' ');
    if (!src) return false;
    out->source = src + 1;
    return true;
}

const char *mountinfo_field(const char *f, char *out, size_t n) {
    size_t k = 0;
    while (!field_end(*f)) {
        int c = escaped(f);
        f += c >= 0 ? 4 : 1;
        if (k + 1 < n) out[k++] = (char)(c >= 0 ? c : f[-1]);
    }
    if (n) out[k] = '\0';
    return *f == ' ' ? f + 1 : f;
}

bool mountinfo_field_is(const char *f, const char *want) {
    while (!field_end(*f)) {
        int c = escaped(f);
        f += c >= 0 ? 4 : 1;
        if (*want++ != (char)(c >= 0 ? c : f[-1])) return false;
    }
    return *want == '\0';
}
