/* SPDX-License-Identifier: MIT */
#pragma once

/* Small sd-event helpers shared by the services. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

/* The current CLOCK_MONOTONIC time of the loop's iteration. */
uint64_t event_now(sd_event *e);

/* How long ago this iteration began: relative times count from there, so a delay meant from
 * the present, after a long dispatch, adds this. */
uint64_t event_lag(sd_event *e);

/* Arms the one-shot timer *s to fire delay µs from now, creating it on first use (with
 * description, which may be NULL). With coalesce, a timer already armed is left as it is, so
 * several events within the delay share one firing. accuracy 0 is sd-event's default (it may
 * coalesce wake-ups by up to 250 ms). */
int event_arm_timer(sd_event *e, sd_event_source **s, uint64_t delay, uint64_t accuracy,
                    bool coalesce, sd_event_time_handler_t handler, void *userdata,
                    const char *description);

/* A defer source at idle priority, created disabled: work done in bounded steps when nothing
 * else is waiting (copying a file in, hashing one back, a group commit). Enable it with
 * SD_EVENT_ONESHOT for one step or SD_EVENT_ON until the work is done. */
int event_add_idle(sd_event *e, sd_event_source **ret, sd_event_handler_t handler, void *userdata,
                   const char *description);

/* Disarms *s if set. */
void event_disarm(sd_event_source *s);
