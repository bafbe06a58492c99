/* SPDX-License-Identifier: MIT */
#pragma once

/* The upload service: files from UploadFile() to the platform (SPEC §2, file upload).
 *
 * A caller's open file is copied into the transfer store in chunks from the event loop
 * (copy_file_range(), so a large file neither sits in memory nor stalls the loop) and
 * confirmed once it is durable. Committed transfers go out one at a time, oldest first: a link
 * request on a control channel of the connection (the answer on <thing> carries no
 * correlation id, so only one is ever outstanding), then an HTTP PUT of the spooled file over
 * its own TCP connection, so uploads never hold up observations. Network errors and 5xx are
 * retried with capped backoff, 403 (an expired link) asks for a fresh link a bounded number of
 * times, any other answer fails the transfer. Transfers survive restarts and ask for a fresh
 * link after one. Knows nothing of D-Bus: results come back through callbacks. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "connection.h"
#include "http.h"

typedef struct Uploads Uploads;

/* error 0: the file is durable as transfer id; otherwise it was not stored, and reason (may
 * be NULL) says why in words fit for the caller. */
typedef void (*UploadsAdded)(const char *id, int error, const char *reason, void *userdata);

typedef struct UploadsCallbacks {
        /* Bytes sent of the running PUT; at most once a second per transfer. */
        void (*progress)(const char *id, uint64_t done, uint64_t total, void *userdata);
        /* The transfer is gone from the queue: uploaded, failed or canceled. */
        void (*finished)(const char *id, bool ok, const char *message, void *userdata);
        /* uploads_queued() changed. */
        void (*queued_changed)(void *userdata);
} UploadsCallbacks;

/* A transfer as ListTransfers() shows it. Strings are valid until the queue changes. */
typedef struct UploadInfo {
        const char *id;
        const char *file_name;
        const char *state; /* "queued", "uploading", "waiting" (to retry) */
        uint64_t done, total;
} UploadInfo;

/* Opens the transfer store in STATE_DIR/transfers and recovers what it holds. The http
 * client must outlive the service. */
int uploads_new(sd_event *event, HttpClient *http, const char *state_dir, uint64_t max_bytes,
                const UploadsCallbacks *callbacks, void *userdata, Uploads **ret);
/* Stops the running upload (it starts again at the next start) and fails the copies in
 * progress (their done() runs with -ESHUTDOWN). NULL-safe. */
Uploads *uploads_free(Uploads *u);

/* Starts asking for links on c; the service subscribes to what it needs. */
int uploads_attach(Uploads *u, Connection *c);
/* Before the connection goes away. A running PUT goes on; a link asked for is asked again. */
void uploads_detach(Uploads *u);

/* Starts copying fd (any open file descriptor; duplicated, never its offset) into the store.
 * An empty content_type is derived from file_name through /etc/mime.types. Returns 0 when
 * done() will be called, or a negative errno with *ret_reason (static text, may be NULL) and
 * no call: -EINVAL (file name, content type, not a regular file), -EBADF (not open for
 * reading), -EFBIG (larger than 5 GiB or than the whole budget), -ENOSPC (the queue is full
 * now). */
int uploads_add(Uploads *u, int fd, const char *file_name, const char *content_type,
                UploadsAdded done, void *userdata, const char **ret_reason);

/* Stops the transfer at once and frees its space; finished() runs with ok false. -ENOENT
 * when there is no such transfer. */
int uploads_cancel(Uploads *u, const char *id);

/* Committed transfers not finished yet. */
unsigned uploads_queued(const Uploads *u);
/* The i-th transfer in queue order; false past the end. */
bool uploads_nth(const Uploads *u, size_t i, UploadInfo *ret);
uint64_t uploads_used_bytes(const Uploads *u);
uint64_t uploads_max_bytes(const Uploads *u);
