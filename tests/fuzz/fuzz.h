/*
 * fuzz.h — what every fuzz harness in tests/fuzz/ shares.
 *
 * A harness defines LLVMFuzzerTestOneInput(data, size), as libFuzzer expects. It is built two ways (Makefile):
 *   - with clang -fsanitize=fuzzer,address,undefined into build-fuzz/fuzz_<target> (make fuzz, make fuzz-run);
 *   - with the normal compiler and driver.c's main() into build/tests/test_fuzz_<target> (build-san/ with SAN=1), which replays the
 *     target's corpus tests/fuzz/corpus/<target>/ once (a unit test in tests/run.sh's count; no clang needed).
 * FUZZ_CHECK states a property the input must keep (a differential or round-trip check): when it does not hold
 * the harness prints the condition (and, under the replay driver, the input's file) and aborts, which libFuzzer
 * reports as a crash and saves the input.
 */
#ifndef KV_FUZZ_H
#define KV_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input being replayed (set by driver.c, whose definition overrides this one), NULL under libFuzzer. */
__attribute__((weak)) const char *fuzz_input_name = NULL;

#define FUZZ_CHECK(cond)                                                                                        \
    do {                                                                                                        \
        if (!(cond)) {                                                                                          \
            fprintf(stderr, "%s:%d: fuzz check failed: %s%s%s\n", __FILE__, __LINE__, #cond,                    \
                    fuzz_input_name ? " on input " : "", fuzz_input_name ? fuzz_input_name : "");               \
            abort();                                                                                            \
        }                                                                                                       \
    } while (0)

/* Reading the input as parameters: a cursor that yields 0 once the bytes run out. */
typedef struct fuzz_in {
    const uint8_t *p, *end;
} fuzz_in;
static inline unsigned fuzz_u8(fuzz_in *f) { return f->p < f->end ? *f->p++ : 0; }
static inline unsigned fuzz_u16(fuzz_in *f) {
    unsigned lo = fuzz_u8(f);
    return lo | fuzz_u8(f) << 8;
}
static inline size_t fuzz_left(const fuzz_in *f) { return (size_t)(f->end - f->p); }

/* A directory of the process's own (under $KVFS_FUZZ_TMP, else on tmpfs: /dev/shm when it is there, else $TMPDIR or
 * /tmp), made at the first call and removed with what it holds at exit: for harnesses that read files. */
const char *fuzz_tmpdir(void);
/* Write data[0..n) to dir/name (replacing it); the full path is written to path (PATH_MAX bytes). */
void fuzz_write_file(const char *name, const uint8_t *data, size_t n, char *path);

#endif /* KV_FUZZ_H */
