/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <math.h>

#include "ratelimit.h"

/* Tokens are doubles added up in small steps; this much rounding may not turn a take that
 * token_bucket_wait_usec() promised into a refusal. */
#define TOKEN_EPSILON 1e-9

void token_bucket_init(TokenBucket *tb, double rate_per_sec, double burst, uint64_t now_usec) {
        assert(tb);

        if (!isfinite(rate_per_sec) || rate_per_sec < 0)
                rate_per_sec = 0;
        if (!isfinite(burst) || burst < 1)
                burst = 1;
        *tb = (TokenBucket) {
                .rate = rate_per_sec,
                .burst = burst,
                .tokens = burst,
                .last_usec = now_usec,
        };
}

static double tokens_at(const TokenBucket *tb, uint64_t now_usec) {
        double t;

        if (now_usec <= tb->last_usec)
                return tb->tokens;
        t = tb->tokens + (double) (now_usec - tb->last_usec) * tb->rate / 1e6;
        return t < tb->burst ? t : tb->burst;
}

/* What must be in the bucket before n can be taken. */
static double tokens_needed(const TokenBucket *tb, double n) {
        return n < tb->burst ? n : tb->burst;
}

bool token_bucket_take(TokenBucket *tb, double n, uint64_t now_usec) {
        double t;

        assert(tb);

        if (tb->rate == 0 || !(n > 0))
                return true;

        t = tokens_at(tb, now_usec);
        if (now_usec > tb->last_usec) {
                tb->tokens = t;
                tb->last_usec = now_usec;
        }
        if (t + TOKEN_EPSILON < tokens_needed(tb, n))
                return false;
        tb->tokens = t - n;
        return true;
}

uint64_t token_bucket_wait_usec(const TokenBucket *tb, double n, uint64_t now_usec) {
        double missing, usec;

        assert(tb);

        if (tb->rate == 0 || !(n > 0))
                return 0;
        missing = tokens_needed(tb, n) - tokens_at(tb, now_usec);
        if (missing <= TOKEN_EPSILON)
                return 0;
        usec = ceil(missing * 1e6 / tb->rate);
        if (usec >= 18446744073709551615.0)
                return UINT64_MAX;
        return usec < 1 ? 1 : (uint64_t) usec;
}
