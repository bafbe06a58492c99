/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "message.h"
#include "ratelimit.h"
#include "spool.h"

/* AWS IoT Core: at most 100 unacknowledged QoS 1 publishes per connection. */
#define DELIVERY_INFLIGHT_MAX 100

typedef struct InFlight {
        int mid;
        uint64_t seq;
} InFlight;

typedef struct PendingSubmit {
        sd_bus_message *msg;
        uint64_t seq;
} PendingSubmit;

/* Payloads appended by this process and not yet published, oldest first: the
 * publish after the commit then needs no read back from the spool. Bounded;
 * anything not here is read from the spool. */
#define RECENT_MAX 4096
#define RECENT_BYTES_MAX (4U * 1024U * 1024U)

typedef struct Recent {
        uint64_t seq;
        char *data;
        size_t len;
} Recent;

typedef struct Delivery {
        Spool *spool;
        char *topic;
        uint64_t cursor; /* last spool record handed to the connection */
        InFlight inflight[DELIVERY_INFLIGHT_MAX];
        size_t n_inflight;
        unsigned unflushed_acks;
        PendingSubmit *pending; /* replies waiting for the next fsync */
        size_t n_pending, n_pending_alloc;
        TokenBucket messages, bytes;
        Recent recent[RECENT_MAX]; /* a ring: recent_head, n_recent */
        size_t recent_head, n_recent, recent_bytes;
        sd_event_source *commit_event;
        sd_event_source *commit_timer;
        sd_event_source *pace_timer;
        sd_event_source *ack_timer;
        sd_event_source *queued_timer;
} Delivery;

typedef struct Manager Manager;

int delivery_open(Manager *m);
void delivery_close(Manager *m);
void delivery_configure(Manager *m);
/* Appends o and queues the reply to msg for the next commit; returns 1 when
 * the reply is pending, or a D-Bus error set in *error. */
int delivery_submit(Manager *m, sd_bus_message *msg, const Observation *o, sd_bus_error *error);
void delivery_kick(Manager *m);
void delivery_published(Manager *m, int mid);
void delivery_online(Manager *m);
void delivery_reset(Manager *m);
