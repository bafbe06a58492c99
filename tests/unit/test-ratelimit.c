/* SPDX-License-Identifier: MIT */

/* Token bucket over simulated time: the sliding-window bound, waits that are exact, takes
 * larger than the burst, the unlimited mode. */

#include <math.h>
#include <stdint.h>

#include "ratelimit.h"
#include "tests.h"
#include "util.h"

#define SEC 1000000ULL

/* The most takes in any half-open window [t, t + w) over sorted times. */
static unsigned max_in_window(const uint64_t *t, size_t n, uint64_t w) {
        unsigned best = 0;

        for (size_t i = 0, j = 0; i < n; i++) {
                while (j < n && t[j] < t[i] + w)
                        j++;
                best = MAX(best, (unsigned) (j - i));
        }
        return best;
}

/* A greedy sender: at every tick (random 1..2000 us apart) it takes as long as it may. */
static size_t greedy(double rate, double burst, uint64_t duration, uint64_t *times, size_t max,
                     uint64_t seed) {
        TokenBucket tb;
        uint64_t state = seed, now = 5 * SEC;
        size_t n = 0;

        token_bucket_init(&tb, rate, burst, now);
        while (now < 5 * SEC + duration) {
                while (n < max && token_bucket_take(&tb, 1, now))
                        times[n++] = now;
                now += 1 + test_rng(&state) % 2000;
        }
        return n;
}

static void test_window(void) {
        static uint64_t times[4000];
        size_t n;

        /* 100 per second with a burst of 1: never more than 100 in any one-second window.
         * Polling at random ticks loses the time between a token's arrival and the next tick
         * (the bucket cannot hold more), hence only "most" of the rate. */
        for (uint64_t seed = 1; seed <= 5; seed++) {
                n = greedy(100, 1, 10 * SEC, times, ELEMENTSOF(times), seed);
                CHECK(max_in_window(times, n, SEC) <= 100);
                CHECK(n >= 880 && n <= 1001);
        }

        /* A sender that sleeps exactly token_bucket_wait_usec(), as the daemon's timer does,
         * gets the full rate and still never more than 100 in a window. */
        {
                TokenBucket tb;
                uint64_t now = 3 * SEC;

                n = 0;
                token_bucket_init(&tb, 100, 1, now);
                while (now < 13 * SEC) {
                        now += token_bucket_wait_usec(&tb, 1, now);
                        if (now >= 13 * SEC || !token_bucket_take(&tb, 1, now))
                                break;
                        times[n++] = now;
                }
                CHECK_INT(n, 1000);
                CHECK_INT(max_in_window(times, n, SEC), 100);
        }

        /* 90/s with a burst of 10 also keeps every window at 100, and the burst is there. */
        n = greedy(90, 10, 10 * SEC, times, ELEMENTSOF(times), 7);
        CHECK(max_in_window(times, n, SEC) <= 100);
        CHECK(max_in_window(times, n, 1) == 10);
        CHECK(n >= 905 && n <= 911);

        /* A burst of 100 allows burst + rate in the first window, no more; later windows
         * settle at the rate. */
        n = greedy(100, 100, 10 * SEC, times, ELEMENTSOF(times), 9);
        CHECK(max_in_window(times, n, SEC) <= 200);
        CHECK(max_in_window(times, n, SEC) > 100);
        CHECK(n >= 1095 && n <= 1101);
        {
                size_t i = 0;

                while (i < n && times[i] < 7 * SEC)
                        i++;
                CHECK(max_in_window(times + i, n - i, SEC) <= 101);
        }
}

static void test_wait(void) {
        TokenBucket tb;
        uint64_t now = 1000, state = 3, w;

        token_bucket_init(&tb, 100, 1, now);
        CHECK_INT(token_bucket_wait_usec(&tb, 1, now), 0);
        CHECK(token_bucket_take(&tb, 1, now));
        CHECK_INT(token_bucket_wait_usec(&tb, 1, now), 10000);
        CHECK(!token_bucket_take(&tb, 1, now + 9999));
        CHECK_INT(token_bucket_wait_usec(&tb, 1, now + 9999), 1);
        CHECK(token_bucket_take(&tb, 1, now + 10000));

        /* Whatever the rate and sizes, a take after the wait succeeds and not before. */
        {
                bool exact = true;

                for (unsigned i = 0; i < 20000; i++) {
                        double rate = 1 + (double) (test_rng(&state) % 100000) / 7;
                        double burst = 1 + (double) (test_rng(&state) % 500);
                        double n = 1 + (double) (test_rng(&state) % 700);

                        if (i % 500 == 0)
                                token_bucket_init(&tb, rate, burst, now);
                        w = token_bucket_wait_usec(&tb, n, now);
                        if (w > 1 && token_bucket_take(&tb, n, now + w - 2))
                                exact = false;
                        now += w;
                        if (!token_bucket_take(&tb, n, now))
                                exact = false;
                        now += test_rng(&state) % 3000;
                }
                CHECK(exact);
        }

        /* Time going backwards adds nothing and breaks nothing. */
        token_bucket_init(&tb, 10, 1, 10 * SEC);
        CHECK(token_bucket_take(&tb, 1, 10 * SEC));
        CHECK(!token_bucket_take(&tb, 1, 5 * SEC));
        CHECK_INT(token_bucket_wait_usec(&tb, 1, 5 * SEC), 100000);
        CHECK(token_bucket_take(&tb, 1, 10 * SEC + 100000));
}

static void test_bytes(void) {
        TokenBucket tb;
        uint64_t now = 0, state = 11, total = 0, start;

        /* 512 KiB/s with a 128 KiB burst; a 200 KiB message still goes, as debt. */
        token_bucket_init(&tb, 512 * 1024, 128 * 1024, now);
        CHECK(token_bucket_take(&tb, 200 * 1024, now));
        CHECK_INT(token_bucket_wait_usec(&tb, 1, now),
                  (uint64_t) ceil((72.0 * 1024 + 1) * 1e6 / (512 * 1024)));
        CHECK(!token_bucket_take(&tb, 1, now + 140000));

        /* Over sizable messages the long-run rate holds. */
        now = start = 10 * SEC;
        token_bucket_init(&tb, 512 * 1024, 128 * 1024, now);
        while (now < start + 10 * SEC) {
                double n = 1 + (double) (test_rng(&state) % (256 * 1024));

                now += token_bucket_wait_usec(&tb, n, now);
                if (now >= start + 10 * SEC)
                        break;
                CHECK(token_bucket_take(&tb, n, now));
                total += (uint64_t) n;
        }
        /* Within the burst (plus at most one oversized message's debt) of rate * time. */
        CHECK(total <= 128 * 1024 + 10ULL * 512 * 1024 + 256 * 1024);
        CHECK(total >= 10ULL * 512 * 1024 - 256 * 1024);

        /* n larger than the burst needs a full bucket. */
        token_bucket_init(&tb, 10, 10, 0);
        CHECK(token_bucket_take(&tb, 10, 0));
        CHECK_INT(token_bucket_wait_usec(&tb, 25, 0), SEC);
        CHECK(!token_bucket_take(&tb, 25, SEC - 1));
        CHECK(token_bucket_take(&tb, 25, SEC));
        CHECK_INT(token_bucket_wait_usec(&tb, 1, SEC), (uint64_t) 16 * SEC / 10);
}

static void test_unlimited(void) {
        TokenBucket tb;
        bool all = true;

        token_bucket_init(&tb, 0, 0, 0);
        for (unsigned i = 0; i < 100000; i++)
                if (!token_bucket_take(&tb, 1e9, 0) || token_bucket_wait_usec(&tb, 1e9, 0) != 0)
                        all = false;
        CHECK(all);
        token_bucket_init(&tb, NAN, 5, 0);
        CHECK(token_bucket_take(&tb, 1e12, 0));
        token_bucket_init(&tb, -3, 5, 0);
        CHECK_INT(token_bucket_wait_usec(&tb, 1e12, 0), 0);

        /* Burst below one is one; taking nothing always works. */
        token_bucket_init(&tb, 1, 0, 0);
        CHECK(token_bucket_take(&tb, 1, 0));
        CHECK(!token_bucket_take(&tb, 1, 0));
        CHECK(token_bucket_take(&tb, 0, 0));
        CHECK_INT(token_bucket_wait_usec(&tb, 0, 0), 0);
}

int main(void) {
        test_window();
        test_wait();
        test_bytes();
        test_unlimited();
        return TESTS_DONE();
}
