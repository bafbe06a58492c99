/* SPDX-License-Identifier: MIT */
#pragma once

/* What the libFuzzer targets share. Each target defines LLVMFuzzerTestOneInput(); the fuzz
 * build links it with libFuzzer (-fsanitize=fuzzer), every other build with fuzz-main.c, which
 * runs the files of the seed corpus once as a regression test.
 *
 * A target checks properties, not only the absence of crashes: what a decoder accepts encodes
 * again and decodes to the same thing, what a loader keeps is valid, a store that opened once
 * opens again. A broken property aborts (FUZZ_CHECK), which libFuzzer reports as a finding
 * with the input that caused it. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(expr)                                                                           \
        do {                                                                                       \
                if (!(expr)) {                                                                     \
                        fprintf(stderr, "%s:%d: property broken: %s\n", __FILE__, __LINE__,       \
                                #expr);                                                            \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)

/* A NUL-terminated copy of the input (fuzzers get bytes). Never NULL: aborts when out of
 * memory, which is not what a target looks for. */
char *fuzz_strndup(const uint8_t *data, size_t size);

/* A directory of this process for targets that read files, created at the first call (on
 * /dev/shm when it is there: the stores fsync a lot), and emptied by fuzz_dir_reset(). */
const char *fuzz_dir(void);
/* Removes everything inside fuzz_dir() (one level of subdirectories too). */
void fuzz_dir_reset(void);
/* fuzz_dir() "/" name, in a static buffer valid until the next call. */
const char *fuzz_path(const char *name);

/* Writes the files of a directory image into dir:
 *
 *     ==> NAME\n CONTENT ==> NAME\n CONTENT ...
 *
 * each "==> " at the start of the input or after a newline begins a file whose CONTENT runs to
 * the next such line (the newline before it belongs to the separator). NAMEs other than 1 to
 * 64 characters of [A-Za-z0-9._-], or "." and "..", are skipped, so an input never writes
 * outside dir; a name given twice is written twice (the last wins). Returns the number of
 * files written; aborts on a write error. */
size_t fuzz_write_image(const char *dir, const uint8_t *data, size_t size);

/* Reads a whole file into a malloc'd buffer (NUL-terminated); NULL when it cannot be read. */
char *fuzz_read_file(const char *path, size_t *ret_size);
