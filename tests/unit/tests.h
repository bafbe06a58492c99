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
