/* SPDX-License-Identifier: MIT */
#pragma once

/* Capped exponential backoff with "equal jitter", for reconnects and retries.
 *
 * Attempt k (counting from 0 after init or reset) waits a time drawn uniformly from
 * [W/2, W] where W = min(max, min * 2^(k+1)), and never less than min:
 *
 *     k = 0: [min, 2 min]    k = 1: [2 min, 4 min]    ...    later: [max/2, max]
 *
 * Half of each window is fixed, so the delay really grows and a fleet of gateways that lost
 * the broker at the same moment spreads out from the first retry on; the random half keeps
 * them from coming back in lockstep. Every result lies in [min, max]. lodevd uses min = 1 s,
 * as AWS IoT allows one CONNECT per second per client id.
 *
 * The caller passes the randomness (any 64-bit value, e.g. from random_u64()), so the
 * arithmetic here is deterministic and testable. */

#include <stdint.h>

typedef struct Backoff {
        uint64_t min_usec;
        uint64_t max_usec;
        unsigned attempts;
} Backoff;

/* min_usec 0 is taken as 1; max_usec below min_usec as min_usec. */
void backoff_init(Backoff *b, uint64_t min_usec, uint64_t max_usec);

/* The delay before the next attempt, and counts the attempt. */
uint64_t backoff_next(Backoff *b, uint64_t random);

/* Back to the first window, after a success. */
void backoff_reset(Backoff *b);

/* backoff_next() calls since init or reset. */
unsigned backoff_attempts(const Backoff *b);
