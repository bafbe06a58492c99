/* SPDX-License-Identifier: MIT */
#include <assert.h>

#include "backoff.h"

void backoff_init(Backoff *b, uint64_t min_usec, uint64_t max_usec) {
        assert(b);

        if (min_usec == 0)
                min_usec = 1;
        *b = (Backoff) {
                .min_usec = min_usec,
                .max_usec = max_usec < min_usec ? min_usec : max_usec,
        };
}

/* min * 2^(k+1), saturating at max without overflowing on the way. */
static uint64_t backoff_window(const Backoff *b) {
        uint64_t w = b->min_usec;

        for (unsigned i = 0; i <= b->attempts && w < b->max_usec; i++)
                w = w > b->max_usec / 2 ? b->max_usec : w * 2;
        return w < b->max_usec ? w : b->max_usec;
}

uint64_t backoff_next(Backoff *b, uint64_t random) {
        uint64_t w, lo, span;

        assert(b);

        w = backoff_window(b);
        lo = w / 2 > b->min_usec ? w / 2 : b->min_usec;
        span = w - lo; /* lo <= w since min <= w */

        if (b->attempts < UINT32_MAX)
                b->attempts++;
        /* The modulo bias over 64 random bits is far below anything a timer can tell. */
        return span == UINT64_MAX ? random : lo + random % (span + 1);
}

void backoff_reset(Backoff *b) {
        assert(b);
        b->attempts = 0;
}

unsigned backoff_attempts(const Backoff *b) {
        assert(b);
        return b->attempts;
}
