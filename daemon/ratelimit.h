/* SPDX-License-Identifier: MIT */
#pragma once

/* Token bucket for pacing publishes (one bucket for messages per second, one for bytes per
 * second), so lodevd stays under the AWS IoT Core per-connection quotas instead of having
 * messages dropped or the connection closed.
 *
 * The bucket holds up to `burst` tokens and gains `rate` per second. A take of n tokens
 * succeeds when n are there, or, for n larger than the burst, when the bucket is full; in
 * that case the bucket goes into debt (negative) and later takes wait until the debt is paid
 * off, so the long-run rate holds for any message size. Over any window of W seconds at most
 * burst + rate * W tokens are taken: to stay under "100 per second" in every one-second
 * window, use for instance rate 90 and burst 10 (or rate 100 and burst 1).
 *
 * Times are CLOCK_MONOTONIC microseconds passed by the caller; a time earlier than one seen
 * before adds no tokens. */

#include <stdbool.h>
#include <stdint.h>

typedef struct TokenBucket {
        double rate;   /* tokens per second; 0 = unlimited */
        double burst;  /* capacity */
        double tokens; /* below zero while a take larger than the burst is paid off */
        uint64_t last_usec;
} TokenBucket;

/* rate 0 (or negative, or not finite) means unlimited. A burst below 1 (or not finite) is
 * taken as 1. The bucket starts full. */
void token_bucket_init(TokenBucket *tb, double rate_per_sec, double burst, uint64_t now_usec);

/* Takes n tokens if they are available now (see above for n > burst). n <= 0 always
 * succeeds and takes nothing. */
bool token_bucket_take(TokenBucket *tb, double n, uint64_t now_usec);

/* 0 if token_bucket_take(n) would succeed now, else the microseconds after which it will
 * (rounded up; a take at now_usec + the result succeeds). */
uint64_t token_bucket_wait_usec(const TokenBucket *tb, double n, uint64_t now_usec);
