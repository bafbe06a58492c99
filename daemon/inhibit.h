/* SPDX-License-Identifier: MIT */
#pragma once

/* Reboot inhibitors (InhibitReboot(), SPEC §4), as logind's: the holder gets one end of a
 * pipe, lodevd keeps the other; when every copy of the holder's end is closed (the holder
 * closed it or exited) lodevd's end reports a hang-up and the hold is gone. Bounded per owner
 * (a bus name) and in all, so a caller cannot make lodevd hold descriptors without limit. */

#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#define INHIBITORS_PER_OWNER_MAX 16U
#define INHIBITORS_MAX 256U
/* who and why, in bytes. */
#define INHIBITOR_TEXT_MAX 256U

typedef struct Inhibitors Inhibitors;

typedef struct Inhibitor {
        char *who;
        char *why;
        char *owner;         /* the caller's unique bus name, or "" */
        uint64_t since_usec; /* CLOCK_REALTIME */
} Inhibitor;

/* changed() runs after a holder was added or released. */
int inhibitors_new(sd_event *event, void (*changed)(void *userdata), void *userdata,
                   Inhibitors **ret);
Inhibitors *inhibitors_free(Inhibitors *i);

/* A new hold; *ret_fd is the caller's end (the caller owns it). -EINVAL for empty or over-
 * long texts or ones with control characters, -EUSERS past the bounds. */
int inhibitors_add(Inhibitors *i, const char *who, const char *why, const char *owner,
                   int *ret_fd);
size_t inhibitors_count(const Inhibitors *i);
/* NULL past the end. */
const Inhibitor *inhibitors_get(const Inhibitors *i, size_t index);
