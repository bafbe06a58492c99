/* SPDX-License-Identifier: MIT */
#pragma once

/* The delivery service: observations from SubmitObservation() to $aws/rules/FHIRIngest.
 * Appended to the spool and confirmed only after the fsync that makes them durable (shared
 * by every submission that arrived meanwhile: group commit), then handed to the connection
 * oldest first on a bulk channel and removed from the spool on PUBACK. Knows nothing of
 * D-Bus: results come back through callbacks. */

#include <stdint.h>
#include <systemd/sd-event.h>

#include "connection.h"
#include "message.h"
#include "state-dir.h"

typedef struct Delivery Delivery;

/* error 0: the observation is durable and has the id seq; otherwise it was not stored. */
typedef void (*DeliverySubmitted)(uint64_t seq, int error, void *userdata);

typedef struct DeliveryCallbacks {
        void (*delivered)(uint64_t seq, void *userdata);
        /* delivery_queued() changed; at most four times a second. */
        void (*queued_changed)(void *userdata);
        /* The platform answered on <thing>/FHIRIngest/rejected (texts already escaped). */
        void (*rejected)(const char *code, const char *message, void *userdata);
} DeliveryCallbacks;

/* Opens the spool in STATE_DIR/spool; when it cannot be opened now for an error that may pass
 * (EIO, EACCES, EMFILE, ...), the service starts without it and opens it again with backoff
 * (LODEV_MESSAGE_SPOOL_UNREADABLE), refusing submissions with -EAGAIN meanwhile. Fails with
 * -EBUSY when another process holds the spool. */
int delivery_new(sd_event *event, const char *state_dir, uint64_t max_bytes,
                 const DeliveryCallbacks *callbacks, void *userdata, Delivery **ret);
/* Confirms what is appended first (a confirmation promises durability), then closes the
 * spool. NULL-safe. */
Delivery *delivery_free(Delivery *d);

/* Starts sending on c; the service subscribes to what it needs. */
int delivery_attach(Delivery *d, Connection *c);
/* Before the connection goes away: what was in flight is sent again on the next one. */
void delivery_detach(Delivery *d);

/* Appends o (already validated) and calls done() after the commit. Returns 0 when done()
 * will be called, or without calling it: -E2BIG (the encoded observation is too large),
 * -EDQUOT (spool.max_bytes reached), -ENOSPC (the file system is full), -EAGAIN (the spool
 * is not open yet), another negative errno. done() may also get -ENOSPC. */
int delivery_submit(Delivery *d, const Observation *o, DeliverySubmitted done, void *userdata);

unsigned delivery_queued(const Delivery *d);
uint64_t delivery_used_bytes(const Delivery *d);
/* The spool directory, and its file system (for error messages). */
const char *delivery_dir(const Delivery *d);
int delivery_space(const Delivery *d, StateDirSpace *ret);
