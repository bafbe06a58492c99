/* SPDX-License-Identifier: MIT */
#pragma once

/* The upload service: files from UploadFile() to the platform (SPEC §2, file upload).
 *
 * A caller's open file is copied into the transfer store in chunks from the event loop
 * (copy_file_range(), so a large file neither sits in memory nor stalls the loop) and
 * confirmed once it is durable. Committed transfers go out one at a time, oldest first: a link
 * request on a control channel of the connection (the answer on <thing> carries no
 * correlation id, so only one is ever outstanding, and its answer must name the file asked
 * for), then an HTTP PUT of the spooled file over its own TCP connection, so uploads never
 * hold up observations. What the storage service answers is classified by s3-answer.c:
 * answers that may pass are retried with the transfer's own capped backoff, while the queue
 * moves on to the transfers behind it; an expired link gets a fresh one a bounded number of
 * times in a row; an unknown answer a few tries; only an answer that can never pass fails the
 * transfer at once. A transfer whose removal fails is never uploaded again; its removal is
 * retried. Transfers survive restarts and ask for a fresh link after one. The spool is read
 * again with backoff while it cannot be read. Knows nothing of D-Bus: results come back
 * through callbacks. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "connection.h"
#include "http.h"
#include "state-dir.h"

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
        const char *state; /* "queued", "uploading", "waiting" (its backoff before the next
                            * try), "finished" (done, its files not yet removed) */
        uint64_t done, total;
} UploadInfo;

/* Opens the transfer store in STATE_DIR/transfers and recovers what it holds; when it cannot
 * be read now (an error that may pass), the service starts without it and reads it again with
 * backoff, logging under LODEV_MESSAGE_TRANSFERS_UNREADABLE. The http client must outlive the
 * service. */
int uploads_new(sd_event *event, HttpClient *http, const char *state_dir, uint64_t max_bytes,
                const UploadsCallbacks *callbacks, void *userdata, Uploads **ret);
/* Stops the running upload (it starts again at the next start) and fails the copies in
 * progress (their done() runs with -ESHUTDOWN). NULL-safe. */
Uploads *uploads_free(Uploads *u);

/* Starts asking for links on c; the service subscribes to what it needs. */
int uploads_attach(Uploads *u, Connection *c);
/* Before the connection goes away. A running PUT goes on; a link asked for is asked again. */
void uploads_detach(Uploads *u);

/* Starts copying fd (any open file descriptor; duplicated, never its offset) into the store,
 * for the user uid. An empty content_type is derived from file_name through /etc/mime.types.
 * Returns 0 when done() will be called, or a negative errno with *ret_reason (static text, may
 * be NULL) and no call: -EINVAL (file name, content type, not a regular file), -EBADF (not
 * open for reading), -EFBIG (larger than 5 GiB), -E2BIG (larger than the whole budget),
 * -EDQUOT (the queue is full now), -ENOSPC (the disk is full), -EAGAIN (the spool cannot be
 * read now). done() gets the errors of transfer_copy_step() and transfer_copy_commit(). */
int uploads_add(Uploads *u, int fd, const char *file_name, const char *content_type, uid_t uid,
                UploadsAdded done, void *userdata, const char **ret_reason);

/* Stops the transfer at once and frees its space; finished() runs with ok false. Only the
 * user who spooled it or root (uid 0) may: -EPERM otherwise. -ENOENT when there is no such
 * transfer. */
int uploads_cancel(Uploads *u, const char *id, uid_t uid);

/* Committed transfers not finished yet. */
unsigned uploads_queued(const Uploads *u);
/* The i-th transfer in queue order; false past the end. */
bool uploads_nth(const Uploads *u, size_t i, UploadInfo *ret);
uint64_t uploads_used_bytes(const Uploads *u);
uint64_t uploads_max_bytes(const Uploads *u);
/* The spool directory and its file system, for messages about a full disk. */
const char *uploads_dir(const Uploads *u);
int uploads_space(const Uploads *u, StateDirSpace *ret);
