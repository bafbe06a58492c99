/* SPDX-License-Identifier: MIT */
#ifndef LODEV_H
#define LODEV_H

/* liblodev: the client library on-device applications link to talk to
 * lodevd over D-Bus. See liblodev(3). Every function returning int answers
 * >= 0 on success and a negative errno on failure; lodev_strerror() and
 * lodev_last_error() turn that into text. */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lodev lodev;

typedef struct lodev_status {
        char *state;      /* unprovisioned, provisioning, connecting, online, offline */
        char *thing_name; /* empty before provisioning */
        char *endpoint;
        char *last_error;
        uint32_t queued_observations;
        uint32_t queued_transfers;
        char *job_id, *job_status, *job_percent; /* empty when no job runs */
} lodev_status;

typedef struct lodev_observation {
        const char *code;         /* required */
        const char *code_system;  /* required */
        const char *code_display; /* may be NULL */
        double value;             /* finite */
        const char *unit;         /* may be empty */
        const char *patient_id;   /* may be NULL */
} lodev_observation;

/* Connects to lodevd on the system bus ($DBUS_SYSTEM_BUS_ADDRESS is honoured). */
int lodev_open(lodev **ret);
/* Closes the connection; pending asynchronous calls are dropped without
 * their callbacks. Accepts NULL; returns NULL. */
lodev *lodev_close(lodev *l);

/* For callers with their own event loop: poll lodev_get_fd() for
 * lodev_get_events(), wake after lodev_get_timeout() (UINT64_MAX: none, an
 * absolute CLOCK_MONOTONIC time in microseconds otherwise) and call
 * lodev_dispatch(), which never blocks. */
int lodev_get_fd(lodev *l);
int lodev_get_events(lodev *l);
int lodev_get_timeout(lodev *l, uint64_t *ret_usec);
int lodev_dispatch(lodev *l);
/* Blocks until there is something to dispatch, at most timeout_usec
 * (UINT64_MAX: no limit). */
int lodev_wait(lodev *l, uint64_t timeout_usec);
/* Number of asynchronous calls still waiting for their reply. */
unsigned lodev_pending_calls(lodev *l);

/* Timeout of each method call in microseconds (default 25 s, 0 = default). */
int lodev_set_call_timeout(lodev *l, uint64_t usec);

/* Text for an error returned by any lodev_ call. */
const char *lodev_strerror(int error);
/* The daemon's message for the last failed call on l (names the bad field
 * for -EINVAL, for instance), or NULL. Valid until the next call on l. */
const char *lodev_last_error(lodev *l);

int lodev_get_status(lodev *l, lodev_status **ret);
lodev_status *lodev_status_free(lodev_status *s);

/* Submits an observation and waits for its id (free() it). Returns once the
 * reading is on lodevd's disk: -EINVAL for a bad field, -ENOSPC when the
 * spool is full. */
int lodev_submit_observation(lodev *l, const lodev_observation *o, char **ret_id);

/* The same without waiting: the callback runs from lodev_dispatch() with
 * error 0 and the id, or a negative errno and NULL. Many
 * calls may be outstanding, which lets lodevd share one disk sync among them. */
typedef void (*lodev_submit_callback)(lodev *l, int error, const char *id, void *userdata);
int lodev_submit_observation_async(lodev *l, const lodev_observation *o,
                                   lodev_submit_callback callback, void *userdata);

/* Calls callback with the id of every observation the platform acknowledged
 * from now on (the ObservationDelivered signal), from lodev_dispatch().
 * One callback per handle; NULL removes it. */
typedef void (*lodev_delivered_callback)(lodev *l, const char *id, void *userdata);
int lodev_set_delivered_callback(lodev *l, lodev_delivered_callback callback, void *userdata);

/* Provisions (force != 0: again, with a new identity) and returns the thing
 * name once done (free() it). Uses a call timeout of at least 5 minutes. */
int lodev_provision(lodev *l, int force, char **ret_thing_name);

/* Waits until State is "online"; -ETIMEDOUT after timeout_usec (UINT64_MAX: forever). */
int lodev_wait_online(lodev *l, uint64_t timeout_usec);

/* --- File uploads --- */

/* Queues the content of fd (open for reading; a regular file) for upload as
 * file_name and returns the transfer id (free() it) once lodevd holds a
 * durable copy: the caller may close and delete its file right after. An
 * empty or NULL content_type is derived from file_name by lodevd. Waits as
 * long as the copy takes (a call timeout of at least an hour). -EINVAL for a
 * bad name, fd or type, -ENOSPC when the transfer queue is full;
 * lodev_last_error() says which. */
int lodev_upload_file(lodev *l, int fd, const char *file_name, const char *content_type,
                      char **ret_id);

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
void lodev_transfers_free(lodev_transfer *t, size_t n);

/* Called from lodev_dispatch() for the TransferProgress (at most once a
 * second per transfer) and TransferFinished signals of every transfer; ok is
 * 0 with a reason in message when it failed or was canceled. Either may be
 * NULL; both NULL removes them. Set them before lodev_upload_file() to see
 * every signal of the new transfer. */
typedef void (*lodev_transfer_progress_callback)(lodev *l, const char *id, uint64_t done,
                                                 uint64_t total, void *userdata);
typedef void (*lodev_transfer_finished_callback)(lodev *l, const char *id, int ok,
                                                 const char *message, void *userdata);
int lodev_set_transfer_callbacks(lodev *l, lodev_transfer_progress_callback progress,
                                 lodev_transfer_finished_callback finished, void *userdata);

/* --- Every signal, for monitors --- */

typedef struct lodev_event {
        /* ObservationDelivered, TransferProgress, TransferFinished, JobUpdated,
         * PropertiesChanged (one event per property), or another signal's name. */
        const char *name;
        const char *id;       /* observation, transfer or job id; NULL otherwise */
        uint64_t done, total; /* TransferProgress */
        int ok;               /* TransferFinished */
        const char *status;   /* JobUpdated */
        uint32_t percent;     /* JobUpdated */
        const char *message;  /* TransferFinished, JobUpdated */
        const char *property; /* PropertiesChanged: its name */
        const char *value;    /* PropertiesChanged: the new value as text (fields joined by
                               * spaces for a structure), NULL when not sent */
} lodev_event;

/* Calls callback for every signal lodevd emits, from lodev_dispatch(). NULL
 * removes it. Strings are valid while the callback runs. */
typedef void (*lodev_event_callback)(lodev *l, const lodev_event *event, void *userdata);
int lodev_set_event_callback(lodev *l, lodev_event_callback callback, void *userdata);
/* Firmware jobs. Asks the platform for pending jobs now and returns once the
 * list arrived and lodevd acted on it; -EIO when the device is offline or the
 * platform did not answer. The current job is in lodev_status. */
int lodev_check_jobs(lodev *l);

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

/* The current reboot inhibitors; free with lodev_inhibitors_free(). */
int lodev_get_reboot_inhibitors(lodev *l, lodev_inhibitor **ret, size_t *ret_n);
lodev_inhibitor *lodev_inhibitors_free(lodev_inhibitor *a, size_t n);

#ifdef __cplusplus
}
#endif
#endif
