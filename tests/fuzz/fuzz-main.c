/* SPDX-License-Identifier: MIT */
/* Runs a fuzz target over files without libFuzzer: each argument is a file or a directory of
 * files (a seed corpus), each file is one input. Builds other than the fuzz build link the
 * targets with this, so every build replays the corpus (regressions included) as a test.
 * Prints "N inputs" and exits 0; a broken property aborts as it does under libFuzzer. */
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int run_file(const char *path) {
        size_t size = 0;
        char *data = fuzz_read_file(path, &size);

        if (!data) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -1;
        }
        (void) LLVMFuzzerTestOneInput((const uint8_t *) data, size);
        free(data);
        return 0;
}

int main(int argc, char **argv) {
        unsigned n = 0;

        for (int i = 1; i < argc; i++) {
                struct stat st;
                struct dirent **names = NULL;
                int k;

                if (stat(argv[i], &st) < 0) {
                        fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
                        return 1;
                }
                if (!S_ISDIR(st.st_mode)) {
                        if (run_file(argv[i]) < 0)
                                return 1;
                        n++;
                        continue;
                }
                k = scandir(argv[i], &names, NULL, alphasort);
                if (k < 0) {
                        fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
                        return 1;
                }
                for (int j = 0; j < k; j++) {
                        char path[4096];

                        snprintf(path, sizeof(path), "%s/%s", argv[i], names[j]->d_name);
                        if (names[j]->d_name[0] != '.' && stat(path, &st) == 0 &&
                            S_ISREG(st.st_mode)) {
                                if (run_file(path) < 0)
                                        return 1;
                                n++;
                        }
                        free(names[j]);
                }
                free(names);
        }
        printf("%u inputs\n", n);
        return 0;
}
