/* SPDX-License-Identifier: MIT */
#ifndef LODEV_H
#define LODEV_H

/* liblodev: the client library on-device applications link to talk to
 * lodevd over D-Bus. See liblodev(3).
 *
 * Conventions, the same for every function:
 * - int returns: >= 0 on success, a negative errno on failure; results go to
 *   ret_ parameters, untouched on failure. lodev_strerror() and
 *   lodev_last_error() turn a failure into text.
 * - Destructors accept NULL and return NULL: x = lodev_x_free(x).
 * - Every callback gets the lodev handle first and the caller's userdata
 *   last, runs from lodev_dispatch() only, and sees strings and structures
 *   that are valid while it runs.
 * - Whatever runs a callback later (an asynchronous call, a signal
 *   subscription) takes a lodev_slot **ret_slot. NULL: the slot belongs to
 *   the handle and lives until the call answered or the handle is closed.
 *   Otherwise the caller owns the slot; lodev_slot_free() cancels (the
 *   callback never runs after it) and must be called even after the
 *   callback ran.
 * - Percentages are unsigned integers from 0 to 100. */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lodev lodev;
typedef struct lodev_slot lodev_slot;

/* Connects to lodevd on the system bus ($DBUS_SYSTEM_BUS_ADDRESS is honoured). */
int lodev_open(lodev **ret);
/* Closes the connection. Callbacks never run again: pending asynchronous
 * calls are dropped, slots the caller owns are detached (free them still).
 * May be called from a callback. */
lodev *lodev_close(lodev *l);

/* Cancels what the slot stands for: the answer of a call is ignored, a
 * subscription ends. lodevd still carries out a request it received. */
lodev_slot *lodev_slot_free(lodev_slot *slot);

/* For callers with their own event loop: poll lodev_get_fd() for
 * lodev_get_events() (POLLIN, POLLOUT), wake at lodev_get_timeout()
 * (UINT64_MAX: none; else an absolute CLOCK_MONOTONIC time in microseconds,
 * 0 meaning at once) and call lodev_dispatch(), which never blocks. Ask for
 * the events and the timeout again before every wait. */
int lodev_get_fd(lodev *l);
int lodev_get_events(lodev *l);
int lodev_get_timeout(lodev *l, uint64_t *ret_usec);
int lodev_dispatch(lodev *l);
/* Blocks until there is something to dispatch, at most timeout_usec
 * (UINT64_MAX: no limit). Runs no callback. */
int lodev_wait(lodev *l, uint64_t timeout_usec);
/* Number of asynchronous calls still waiting for their answer. */
unsigned lodev_pending_calls(lodev *l);

/* Timeout of each method call in microseconds (default 25 s, 0 = default). */
int lodev_set_call_timeout(lodev *l, uint64_t usec);

/* Text for an error returned by any lodev_ call. */
const char *lodev_strerror(int error);
/* The daemon's message for the last failed call on l (names the bad field
 * for -EINVAL, for instance), or NULL. Valid until the next call on l. */
const char *lodev_last_error(lodev *l);

/* The answer of an asynchronous call: error 0 and the result (the id, the
 * thing name; NULL for calls that return nothing), or a negative errno and
 * NULL. */
typedef void (*lodev_reply_callback)(lodev *l, int error, const char *result, void *userdata);

/* --- Status --- */

typedef struct lodev_status {
        char *state;      /* unprovisioned, provisioning, connecting, online, offline */
        char *thing_name; /* empty before provisioning */
        char *endpoint;
        char *last_error;
        uint32_t queued_observations;
        uint32_t queued_transfers;
        char *job_id, *job_status; /* empty when no job runs */
        unsigned job_percent;      /* 0 to 100; 0 when none was reported */
} lodev_status;

int lodev_get_status(lodev *l, lodev_status **ret);
typedef void (*lodev_status_callback)(lodev *l, int error, const lodev_status *status,
                                      void *userdata);
int lodev_get_status_async(lodev *l, lodev_slot **ret_slot, lodev_status_callback callback,
                           void *userdata);
lodev_status *lodev_status_free(lodev_status *s);

/* Waits until State is "online"; -ETIMEDOUT after timeout_usec (UINT64_MAX:
 * forever). Runs the callbacks of other calls and signals while it waits. */
int lodev_wait_online(lodev *l, uint64_t timeout_usec);
/* The callback runs once State is "online" (at once if it is); drop the slot
 * to stop waiting, from a timer of the caller's loop for instance. */
int lodev_wait_online_async(lodev *l, lodev_slot **ret_slot, lodev_reply_callback callback,
                            void *userdata);

/* --- Observations --- */

typedef struct lodev_observation {
        const char *code;         /* required */
        const char *code_system;  /* required */
        const char *code_display; /* may be NULL */
        double value;             /* finite */
        const char *unit;         /* may be empty */
        const char *patient_id;   /* may be NULL */
} lodev_observation;

/* Submits an observation and waits for its id (free() it). Returns once the
 * reading is on lodevd's disk: -EINVAL for a bad field, -EDQUOT when the
 * spool is full (spool.max_bytes), -ENOSPC when the disk is. */
int lodev_submit_observation(lodev *l, const lodev_observation *o, char **ret_id);
/* Many calls may be outstanding, which lets lodevd share one disk sync among them. */
int lodev_submit_observation_async(lodev *l, lodev_slot **ret_slot, const lodev_observation *o,
                                   lodev_reply_callback callback, void *userdata);

/* --- Provisioning --- */

/* Provisions (force != 0: again, with a new identity) and returns the thing
 * name once done (free() it). Waits at least 5 minutes. */
int lodev_provision(lodev *l, int force, char **ret_thing_name);
int lodev_provision_async(lodev *l, lodev_slot **ret_slot, int force,
                          lodev_reply_callback callback, void *userdata);

/* --- File uploads --- */

/* Queues the content of fd (open for reading; a regular file) for upload as
 * file_name and returns the transfer id (free() it) once lodevd holds a
 * durable copy: the caller may delete its file then. An empty or NULL
 * content_type is derived from file_name by lodevd. Waits as long as the copy
 * takes (at least an hour). -EINVAL for a bad name, fd or type, -EDQUOT when
 * the transfer queue is full (transfers.max_bytes), -ENOSPC when the disk is;
 * lodev_last_error() says which. */
int lodev_upload_file(lodev *l, int fd, const char *file_name, const char *content_type,
                      char **ret_id);
/* The request holds its own copy of fd: the caller may close fd at once. */
int lodev_upload_file_async(lodev *l, lodev_slot **ret_slot, int fd, const char *file_name,
                            const char *content_type, lodev_reply_callback callback,
                            void *userdata);

/* Stops a transfer and frees its space; -ENOENT for an unknown id. */
int lodev_cancel_transfer(lodev *l, const char *id);

typedef struct lodev_transfer {
        char *id;
        char *file_name;
        char *state; /* queued, uploading, waiting (to retry) */
        uint64_t done, total;
} lodev_transfer;

/* The transfers not finished yet, in queue order. */
int lodev_list_transfers(lodev *l, lodev_transfer **ret, size_t *ret_n);
lodev_transfer *lodev_transfers_free(lodev_transfer *t, size_t n);

/* --- Firmware jobs --- */

/* Asks the platform for pending jobs now and returns once the list arrived
 * and lodevd acted on it; -EIO when the device is offline or the platform did
 * not answer. The current job is in lodev_status. Waits at least a minute. */
int lodev_check_jobs(lodev *l);
int lodev_check_jobs_async(lodev *l, lodev_slot **ret_slot, lodev_reply_callback callback,
                           void *userdata);

/* Holds off the reboot that follows a firmware install while the returned
 * descriptor (close-on-exec; the caller owns it) stays open, at most
 * firmware.max_reboot_delay seconds; closing it, or exiting, releases the
 * hold. who and why: 1 to 256 bytes of text. -EUSERS past the limits. */
int lodev_inhibit_reboot(lodev *l, const char *who, const char *why, int *ret_fd);

typedef struct lodev_inhibitor {
        char *who;
        char *why;
        char *owner;         /* the holder's unique bus name */
        uint64_t since_usec; /* CLOCK_REALTIME */
} lodev_inhibitor;

/* The current reboot inhibitors. */
int lodev_get_reboot_inhibitors(lodev *l, lodev_inhibitor **ret, size_t *ret_n);
lodev_inhibitor *lodev_inhibitors_free(lodev_inhibitor *a, size_t n);

/* --- Signals ---
 * Each lodev_add_*_callback() subscribes one callback; any number may be
 * added. Once it returned, no later signal is missed. */

/* ObservationDelivered: the platform acknowledged this observation (of any
 * client: compare the ids with your own). */
typedef void (*lodev_delivered_callback)(lodev *l, const char *id, void *userdata);
int lodev_add_delivered_callback(lodev *l, lodev_slot **ret_slot,
                                 lodev_delivered_callback callback, void *userdata);

/* TransferProgress, at most once a second per transfer. */
typedef void (*lodev_transfer_progress_callback)(lodev *l, const char *id, uint64_t done,
                                                 uint64_t total, void *userdata);
int lodev_add_transfer_progress_callback(lodev *l, lodev_slot **ret_slot,
                                         lodev_transfer_progress_callback callback,
                                         void *userdata);

/* TransferFinished: ok is 0 with the reason in message when the transfer
 * failed or was canceled. */
typedef void (*lodev_transfer_finished_callback)(lodev *l, const char *id, int ok,
                                                 const char *message, void *userdata);
int lodev_add_transfer_finished_callback(lodev *l, lodev_slot **ret_slot,
                                         lodev_transfer_finished_callback callback,
                                         void *userdata);

typedef struct lodev_event {
        /* ObservationDelivered, TransferProgress, TransferFinished, JobUpdated,
         * PropertiesChanged (one event per property), or another signal's name. */
        const char *name;
        const char *id;       /* observation, transfer or job id; NULL otherwise */
        uint64_t done, total; /* TransferProgress */
        int ok;               /* TransferFinished */
        const char *status;   /* JobUpdated */
        unsigned percent;     /* JobUpdated: 0 to 100 */
        const char *message;  /* TransferFinished, JobUpdated */
        const char *property; /* PropertiesChanged: its name */
        const char *value;    /* PropertiesChanged: the new value as text (fields joined by
                               * spaces for a structure), NULL when not sent */
} lodev_event;

/* Every signal lodevd emits, for monitors. */
typedef void (*lodev_event_callback)(lodev *l, const lodev_event *event, void *userdata);
int lodev_add_event_callback(lodev *l, lodev_slot **ret_slot, lodev_event_callback callback,
                             void *userdata);

#ifdef __cplusplus
}
#endif
#endif
