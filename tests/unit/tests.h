/* SPDX-License-Identifier: MIT */
#pragma once

/* A tiny TAP-style harness: each check prints a failure with file and line;
 * main() returns the number of failed checks, so meson sees a non-zero exit. */

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static unsigned tests_failed, tests_run;

#define CHECK(cond)                                                                                \
        do {                                                                                       \
                tests_run++;                                                               \
                if (!(cond)) {                                                                     \
                        tests_failed++;                                                            \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
                }                                                                                  \
        } while (0)

#define CHECK_INT(a, b)                                                                            \
        do {                                                                                       \
                long long _a = (long long) (a), _b = (long long) (b);                              \
                tests_run++;                                                                       \
                if (_a != _b) {                                                                    \
                        tests_failed++;                                                            \
                        fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,       \
                                __LINE__, #a, _a, #b, _b);                                         \
                }                                                                                  \
        } while (0)

#define CHECK_STR(a, b)                                                                            \
        do {                                                                                       \
                const char *_a = (a), *_b = (b);                                                   \
                tests_run++;                                                                       \
                if (!_a || !_b || strcmp(_a, _b) != 0) {                                           \
                        tests_failed++;                                                            \
                        fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__,         \
                                __LINE__, #a, _a ? _a : "(null)", _b ? _b : "(null)");             \
                }                                                                                  \
        } while (0)

#define TESTS_DONE()                                                                               \
        ({                                                                                         \
                printf("%u checks, %u failed\n", tests_run, tests_failed);                         \
                tests_failed > 0 ? 1 : 0;                                                          \
        })

/* xorshift64*: deterministic pseudo-random numbers for tests. */
static inline uint64_t test_rng(uint64_t *state) {
        uint64_t x = *state;

        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        return x * 0x2545f4914f6cdd1dULL;
}

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <unistd.h>

/* Mounts a tmpfs of `size` (as the mount option, "512k") on dir, in a mount namespace of this
 * process alone, so nothing is left behind on the host. Root only (CI and the integration
 * tests run as root); elsewhere it returns -EPERM and the caller reports a skip, which under
 * CI=true is a failure. */
static inline int test_mount_tmpfs(const char *dir, const char *size) {
        char opts[64];

        if (geteuid() != 0)
                return -EPERM;
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                return -errno;
        snprintf(opts, sizeof(opts), "size=%s,mode=0700", size);
        if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
                return -errno;
        return 0;
}

/* Fills the file system holding dir to its last block with a file "filler" there (appended
 * to when it exists). */
static inline void test_fill_disk(const char *dir) {
        char path[4096], buf[4096];
        int fd;

        snprintf(path, sizeof(path), "%s/filler", dir);
        memset(buf, 'f', sizeof(buf));
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd < 0)
                return; /* already full to the last inode */
        while (write(fd, buf, sizeof(buf)) > 0)
                ;
        while (write(fd, buf, 1) > 0)
                ;
        close(fd);
}

/* Reports a test that could not run: a failure under CI=true, a skip otherwise. */
#define TEST_SKIP(what, r)                                                                         \
        do {                                                                                       \
                const char *_ci = getenv("CI");                                                    \
                fprintf(stderr, "%s: cannot run (%s)%s\n", what, strerror(-(r)),                   \
                        _ci && strcmp(_ci, "true") == 0 ? ", required under CI" : ", skipped");   \
                tests_run++;                                                                       \
                if (_ci && strcmp(_ci, "true") == 0)                                               \
                        tests_failed++;                                                            \
        } while (0)
