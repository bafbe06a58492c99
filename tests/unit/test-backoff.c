/* SPDX-License-Identifier: MIT */

/* Backoff bounds over many draws, growth per attempt, the cap, reset. */

#include <stdint.h>

#include "backoff.h"
#include "tests.h"
#include "util.h"

#define SEC 1000000ULL

static void test_bounds(void) {
        uint64_t state = 0x9e3779b97f4a7c15ULL;
        bool in_bounds = true, never_below_min = true;
        uint64_t lo_seen = UINT64_MAX, hi_seen = 0;

        for (unsigned round = 0; round < 200; round++) {
                Backoff b;

                backoff_init(&b, 1 * SEC, 300 * SEC);
                for (unsigned k = 0; k < 40; k++) {
                        uint64_t d = backoff_next(&b, test_rng(&state));
                        uint64_t w = k >= 9 ? 300 * SEC : MIN(300 * SEC, SEC << (k + 1));

                        if (d < MAX(w / 2, SEC) || d > w)
                                in_bounds = false;
                        if (d < SEC || d > 300 * SEC)
                                never_below_min = false;
                        if (k >= 12) {
                                lo_seen = MIN(lo_seen, d);
                                hi_seen = MAX(hi_seen, d);
                        }
                }
                CHECK_INT(backoff_attempts(&b), 40);
        }
        /* At the cap the draws still spread over [max/2, max]. */
        CHECK(lo_seen < 151 * SEC);
        CHECK(hi_seen > 299 * SEC);
        CHECK(in_bounds);
        CHECK(never_below_min);
}

static void test_growth(void) {
        Backoff b;

        /* The extremes of the randomness give the edges of each window. */
        backoff_init(&b, 1 * SEC, 60 * SEC);
        CHECK_INT(backoff_next(&b, 0), 1 * SEC);
        CHECK_INT(backoff_next(&b, 0), 2 * SEC);
        CHECK_INT(backoff_next(&b, 0), 4 * SEC);
        CHECK_INT(backoff_next(&b, 0), 8 * SEC);
        CHECK_INT(backoff_next(&b, 0), 16 * SEC);
        CHECK_INT(backoff_next(&b, 0), 30 * SEC);
        CHECK_INT(backoff_next(&b, 0), 30 * SEC);
        CHECK_INT(backoff_attempts(&b), 7);

        backoff_reset(&b);
        CHECK_INT(backoff_attempts(&b), 0);
        CHECK_INT(backoff_next(&b, 1 * SEC), 2 * SEC);
        CHECK_INT(backoff_next(&b, 2 * SEC), 4 * SEC);
        CHECK_INT(backoff_next(&b, 4 * SEC), 8 * SEC);
        CHECK_INT(backoff_next(&b, 8 * SEC), 16 * SEC);
        CHECK_INT(backoff_next(&b, 16 * SEC), 32 * SEC);
        CHECK_INT(backoff_next(&b, 30 * SEC), 60 * SEC);
        CHECK_INT(backoff_next(&b, 30 * SEC + 1), 30 * SEC); /* wraps around the window */
        CHECK_INT(backoff_next(&b, UINT64_MAX), 30 * SEC + UINT64_MAX % (30 * SEC + 1));

        /* Mean delay doubles per attempt until the cap. */
        {
                uint64_t state = 42, prev = 0;

                for (unsigned k = 0; k < 6; k++) {
                        uint64_t sum = 0;

                        for (unsigned i = 0; i < 1000; i++) {
                                Backoff c;

                                backoff_init(&c, 1 * SEC, 3600 * SEC);
                                for (unsigned j = 0; j < k; j++)
                                        backoff_next(&c, 0);
                                sum += backoff_next(&c, test_rng(&state));
                        }
                        if (k > 0)
                                CHECK(sum > prev * 19 / 10 && sum < prev * 21 / 10);
                        prev = sum;
                }
        }
}

static void test_edges(void) {
        Backoff b;

        /* Many attempts: no overflow, stays at the cap. */
        backoff_init(&b, 1, UINT64_MAX);
        for (unsigned i = 0; i < 200; i++)
                (void) backoff_next(&b, 0);
        CHECK(backoff_next(&b, 0) == UINT64_MAX / 2);
        CHECK(backoff_next(&b, UINT64_MAX) >= UINT64_MAX / 2);

        /* Degenerate ranges. */
        backoff_init(&b, 5 * SEC, 1 * SEC);
        CHECK_INT(backoff_next(&b, 12345), 5 * SEC);
        CHECK_INT(backoff_next(&b, 99), 5 * SEC);
        backoff_init(&b, 0, 0);
        CHECK_INT(backoff_next(&b, 7), 1);

        /* min == max: always that. */
        backoff_init(&b, 3 * SEC, 3 * SEC);
        for (unsigned i = 0; i < 10; i++)
                CHECK_INT(backoff_next(&b, i * 77777), 3 * SEC);
}

int main(void) {
        test_bounds();
        test_growth();
        test_edges();
        return TESTS_DONE();
}
