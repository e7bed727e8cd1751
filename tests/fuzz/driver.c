/*
 * driver.c — a main() for a fuzz harness built without libFuzzer: replays inputs through LLVMFuzzerTestOneInput once
 * each, so the corpus (seeds and the crashers fixed since) is a regression test under any compiler.
 *   test_fuzz_<target>                replay tests/fuzz/corpus/<target>/ (the target is the program's name less
 *                                     "test_fuzz_"); run from the repository root, as tests/run.sh does
 *   test_fuzz_<target> FILE|DIR...    replay those files / every file in those directories
 * Prints one TAP line per directory or file argument ("ok 1 fuzz_inflate: 123 inputs") and the harness summary
 * line t.c prints; a failing input aborts the program (the sanitizer or FUZZ_CHECK names it).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

const char *fuzz_input_name;

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        if (got == 0) break;
        n += got;
    }
    fclose(f);
    if (!buf) return -1;
    /* An exact-size copy, so a read past the input's end is a heap overflow the sanitizer sees. */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, n);
    free(buf);
    fuzz_input_name = path;
    LLVMFuzzerTestOneInput(exact, n);
    fuzz_input_name = NULL;
    free(exact);
    return 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Replay path (a file, or every regular file in a directory, in name order); the number of inputs, or -1. */
static long replay(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) return replay_file(path) == 0 ? 1 : -1;
    DIR *d = opendir(path);
    if (!d) return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        if (n == cap) {
            char **nn = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names);
            if (!nn) break;
            names = nn;
        }
        size_t l = strlen(path) + strlen(de->d_name) + 2;
        if (!(names[n] = malloc(l))) break;
        snprintf(names[n++], l, "%s/%s", path, de->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_names);
    long count = 0;
    for (size_t i = 0; i < n; i++) {
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            if (replay_file(names[i]) != 0) count = -1;
            else if (count >= 0) count++;
        }
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv) {
    const char *prog = strrchr(argv[0], '/');
    prog = prog ? prog + 1 : argv[0];
    const char *target = strncmp(prog, "test_fuzz_", 10) == 0 ? prog + 10 : prog;
    char dflt[512];
    snprintf(dflt, sizeof dflt, "tests/fuzz/corpus/%s", target);
    char *def[] = {dflt};
    char **paths = argc > 1 ? argv + 1 : def;
    int npaths = argc > 1 ? argc - 1 : 1;
    int failed = 0;
    for (int i = 0; i < npaths; i++) {
        long n = replay(paths[i]);
        if (n > 0) {
            printf("ok %d fuzz_%s: %ld inputs from %s\n", i + 1, target, n, paths[i]);
        } else {
            printf("not ok %d fuzz_%s: %s: %s\n", i + 1, target, paths[i], n == 0 ? "no inputs" : "cannot read");
            failed++;
        }
    }
    printf("# %d passed, %d failed\n", npaths - failed, failed);
    return failed ? 1 : 0;
}
