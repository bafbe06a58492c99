/* SPDX-License-Identifier: MIT */
#include "event-util.h"

#include <time.h>

uint64_t event_now(sd_event *e) {
        uint64_t now = 0;

        (void) sd_event_now(e, CLOCK_MONOTONIC, &now);
        return now;
}

uint64_t event_lag(sd_event *e) {
        struct timespec ts;
        uint64_t now, begun;

        /* Before the first iteration there is no start to be late on. */
        if (sd_event_now(e, CLOCK_MONOTONIC, &begun) < 0 ||
            clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
                return 0;
        now = (uint64_t) ts.tv_sec * UINT64_C(1000000) + (uint64_t) ts.tv_nsec / 1000;
        return now > begun ? now - begun : 0;
}

int event_arm_timer(sd_event *e, sd_event_source **s, uint64_t delay, uint64_t accuracy,
                    bool coalesce, sd_event_time_handler_t handler, void *userdata,
                    const char *description) {
        int enabled = SD_EVENT_OFF, r;

        if (!*s) {
                r = sd_event_add_time_relative(e, s, CLOCK_MONOTONIC, delay, accuracy, handler,
                                               userdata);
                if (r < 0)
                        return r;
                if (description)
                        (void) sd_event_source_set_description(*s, description);
                return 0;
        }
        (void) sd_event_source_get_enabled(*s, &enabled);
        if (coalesce && enabled != SD_EVENT_OFF)
                return 0;
        r = sd_event_source_set_time_relative(*s, delay);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(*s, SD_EVENT_ONESHOT);
}

int event_add_idle(sd_event *e, sd_event_source **ret, sd_event_handler_t handler, void *userdata,
                   const char *description) {
        sd_event_source *s = NULL;
        int r;

        r = sd_event_add_defer(e, &s, handler, userdata);
        if (r < 0)
                return r;
        r = sd_event_source_set_priority(s, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_OFF);
        if (r < 0) {
                sd_event_source_disable_unref(s);
                return r;
        }
        if (description)
                (void) sd_event_source_set_description(s, description);
        *ret = s;
        return 0;
}

void event_disarm(sd_event_source *s) {
        if (s)
                (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
}
